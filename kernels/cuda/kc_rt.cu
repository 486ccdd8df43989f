// The small CUDA runtime layer of kc.h: memory, streams, copies, graphs, events.
#include "kernels/cuda/kc.h"

#include <cuda_runtime.h>

static int fail(struct moed_err *e, const char *what, cudaError_t rc)
{
    (void)cudaGetLastError(); /* clear it, so a later check does not report it again */
    return moed_err_set(e, rc == cudaErrorMemoryAllocation ? MOED_ENOMEM : MOED_EIO,
                        "CUDA %s: %s (%s)", what, cudaGetErrorString(rc), cudaGetErrorName(rc));
}

#define S(s) ((cudaStream_t)(s))

extern "C" int kc_set_device(int dev, struct moed_err *e)
{
    cudaError_t rc = cudaSetDevice(dev);
    return rc == cudaSuccess ? 0 : fail(e, "set device", rc);
}

extern "C" int kc_malloc(void **p, size_t n, struct moed_err *e)
{
    *p = NULL;
    cudaError_t rc = cudaMalloc(p, n ? n : 1);
    if (rc != cudaSuccess) {
        (void)cudaGetLastError();
        *p = NULL;
        return moed_err_set(e, MOED_ENOMEM, "CUDA malloc of %zu bytes: %s", n,
                            cudaGetErrorString(rc));
    }
    return 0;
}

extern "C" void kc_free(void *p)
{
    if (p)
        cudaFree(p);
}

extern "C" int kc_host_alloc(void **p, size_t n, struct moed_err *e)
{
    *p = NULL;
    cudaError_t rc = cudaHostAlloc(p, n ? n : 1, cudaHostAllocDefault);
    if (rc != cudaSuccess) {
        (void)cudaGetLastError();
        *p = NULL;
        return moed_err_set(e, MOED_ENOMEM, "CUDA pinned host allocation of %zu bytes: %s", n,
                            cudaGetErrorString(rc));
    }
    return 0;
}

extern "C" void kc_host_free(void *p)
{
    if (p)
        cudaFreeHost(p);
}

extern "C" int kc_stream_new(kc_stream *s, struct moed_err *e)
{
    cudaStream_t st;
    cudaError_t rc = cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking);
    if (rc != cudaSuccess)
        return fail(e, "stream create", rc);
    *s = st;
    return 0;
}

extern "C" void kc_stream_free(kc_stream s)
{
    if (s)
        cudaStreamDestroy(S(s));
}

static int copy(void *dst, const void *src, size_t n, cudaMemcpyKind k, kc_stream s,
                struct moed_err *e, const char *what)
{
    if (!n)
        return 0;
    cudaError_t rc = cudaMemcpyAsync(dst, src, n, k, S(s));
    return rc == cudaSuccess ? 0 : fail(e, what, rc);
}

extern "C" int kc_h2d(void *dst, const void *src, size_t n, kc_stream s, struct moed_err *e)
{
    return copy(dst, src, n, cudaMemcpyHostToDevice, s, e, "copy to device");
}

extern "C" int kc_d2h(void *dst, const void *src, size_t n, kc_stream s, struct moed_err *e)
{
    return copy(dst, src, n, cudaMemcpyDeviceToHost, s, e, "copy to host");
}

extern "C" int kc_d2d(void *dst, const void *src, size_t n, kc_stream s, struct moed_err *e)
{
    return copy(dst, src, n, cudaMemcpyDeviceToDevice, s, e, "copy on device");
}

extern "C" int kc_memset(void *dst, int byte, size_t n, kc_stream s, struct moed_err *e)
{
    if (!n)
        return 0;
    cudaError_t rc = cudaMemsetAsync(dst, byte, n, S(s));
    return rc == cudaSuccess ? 0 : fail(e, "memset", rc);
}

extern "C" int kc_sync(kc_stream s, struct moed_err *e)
{
    cudaError_t rc = cudaStreamSynchronize(S(s));
    if (rc == cudaSuccess)
        rc = cudaGetLastError();
    return rc == cudaSuccess ? 0 : fail(e, "stream work", rc);
}

extern "C" int kc_mem_info(size_t *free_b, size_t *total_b, struct moed_err *e)
{
    cudaError_t rc = cudaMemGetInfo(free_b, total_b);
    return rc == cudaSuccess ? 0 : fail(e, "memory info", rc);
}

extern "C" int kc_capture_begin(kc_stream s, struct moed_err *e)
{
    cudaError_t rc = cudaStreamBeginCapture(S(s), cudaStreamCaptureModeThreadLocal);
    return rc == cudaSuccess ? 0 : fail(e, "begin graph capture", rc);
}

extern "C" int kc_capture_end(kc_stream s, kc_graph *g, struct moed_err *e)
{
    cudaGraph_t graph = NULL;
    cudaGraphExec_t ex = NULL;
    *g = NULL;
    cudaError_t rc = cudaStreamEndCapture(S(s), &graph);
    if (rc != cudaSuccess) {
        (void)cudaGetLastError();
        return fail(e, "end graph capture", rc);
    }
    rc = cudaGraphInstantiate(&ex, graph, 0);
    cudaGraphDestroy(graph);
    if (rc != cudaSuccess) {
        (void)cudaGetLastError();
        return fail(e, "graph instantiate", rc);
    }
    *g = ex;
    return 0;
}

extern "C" int kc_graph_launch(kc_graph g, kc_stream s, struct moed_err *e)
{
    cudaError_t rc = cudaGraphLaunch((cudaGraphExec_t)g, S(s));
    return rc == cudaSuccess ? 0 : fail(e, "graph launch", rc);
}

extern "C" void kc_graph_free(kc_graph g)
{
    if (g)
        cudaGraphExecDestroy((cudaGraphExec_t)g);
}

extern "C" int kc_event_new(kc_event *ev, struct moed_err *e)
{
    cudaEvent_t x;
    cudaError_t rc = cudaEventCreate(&x);
    if (rc != cudaSuccess)
        return fail(e, "event create", rc);
    *ev = x;
    return 0;
}

extern "C" void kc_event_free(kc_event ev)
{
    if (ev)
        cudaEventDestroy((cudaEvent_t)ev);
}

extern "C" int kc_event_record(kc_event ev, kc_stream s, struct moed_err *e)
{
    cudaError_t rc = cudaEventRecord((cudaEvent_t)ev, S(s));
    return rc == cudaSuccess ? 0 : fail(e, "event record", rc);
}

extern "C" int kc_event_wait(kc_stream s, kc_event ev, struct moed_err *e)
{
    cudaError_t rc = cudaStreamWaitEvent(S(s), (cudaEvent_t)ev, 0);
    return rc == cudaSuccess ? 0 : fail(e, "event wait", rc);
}

extern "C" int kc_event_ms(kc_event a, kc_event b, float *ms, struct moed_err *e)
{
    cudaError_t rc = cudaEventElapsedTime(ms, (cudaEvent_t)a, (cudaEvent_t)b);
    return rc == cudaSuccess ? 0 : fail(e, "event time", rc);
}
