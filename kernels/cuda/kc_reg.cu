// Host memory registration and the event calls the expert slots need (kc.h,
// "host sources and slot events").
#include "kernels/cuda/kc.h"

#include <cuda_runtime.h>
#include <stdint.h>
#include <unistd.h>

namespace {

int fail(struct moed_err *e, const char *what, cudaError_t rc)
{
    (void)cudaGetLastError(); // clear it, so a later check does not report it again
    return moed_err_set(e, rc == cudaErrorMemoryAllocation ? MOED_ENOMEM : MOED_EIO,
                        "CUDA %s: %s (%s)", what, cudaGetErrorString(rc), cudaGetErrorName(rc));
}

uintptr_t page_size()
{
    long p = sysconf(_SC_PAGESIZE);
    return p > 0 ? (uintptr_t)p : 4096;
}

// The page-aligned span covering [p, p + n).
void page_span(const void *p, size_t n, uintptr_t *lo, uintptr_t *hi)
{
    const uintptr_t pg = page_size();
    *lo = (uintptr_t)p & ~(pg - 1);
    *hi = ((uintptr_t)p + n + pg - 1) & ~(pg - 1);
}

} // namespace

extern "C" int kc_host_register(void *p, size_t n, bool read_only, struct moed_err *e)
{
    if (!p || !n)
        return moed_err_set(e, MOED_EINVAL, "CUDA host register: empty range (%p, %zu bytes)", p, n);
    int dev = 0, sup = 0, ro = 0;
    cudaError_t rc = cudaGetDevice(&dev);
    if (rc == cudaSuccess)
        rc = cudaDeviceGetAttribute(&sup, cudaDevAttrHostRegisterSupported, dev);
    if (rc == cudaSuccess && read_only)
        rc = cudaDeviceGetAttribute(&ro, cudaDevAttrHostRegisterReadOnlySupported, dev);
    if (rc != cudaSuccess)
        return fail(e, "host register (device attributes)", rc);
    if (!sup)
        return moed_err_set(e, MOED_EUNSUPPORTED,
                            "CUDA host register: device %d does not support cudaHostRegister", dev);
    if (read_only && !ro)
        return moed_err_set(e, MOED_EUNSUPPORTED,
                            "CUDA host register: device %d does not support "
                            "cudaHostRegisterReadOnly (read-only registration)",
                            dev);
    uintptr_t lo, hi;
    page_span(p, n, &lo, &hi);
    const unsigned flags = read_only ? cudaHostRegisterReadOnly : cudaHostRegisterDefault;
    rc = cudaHostRegister((void *)lo, (size_t)(hi - lo), flags);
    if (rc != cudaSuccess) {
        (void)cudaGetLastError();
        return moed_err_set(e,
                            rc == cudaErrorMemoryAllocation      ? MOED_ENOMEM
                            : rc == cudaErrorNotSupported        ? MOED_EUNSUPPORTED
                                                                 : MOED_EIO,
                            "CUDA host register%s of %zu bytes at %p (page span of %zu bytes at "
                            "%p): %s (%s)",
                            read_only ? " (read-only)" : "", n, p, (size_t)(hi - lo), (void *)lo,
                            cudaGetErrorString(rc), cudaGetErrorName(rc));
    }
    return 0;
}

extern "C" void kc_host_unregister(void *p)
{
    if (!p)
        return;
    uintptr_t lo, hi;
    page_span(p, 1, &lo, &hi);
    if (cudaHostUnregister((void *)lo) != cudaSuccess)
        (void)cudaGetLastError();
}

extern "C" int kc_event_new_sync(kc_event *ev, struct moed_err *e)
{
    cudaEvent_t x;
    *ev = NULL;
    cudaError_t rc = cudaEventCreateWithFlags(&x, cudaEventDisableTiming);
    if (rc != cudaSuccess)
        return fail(e, "event create", rc);
    *ev = x;
    return 0;
}

extern "C" int kc_event_sync(kc_event ev, struct moed_err *e)
{
    cudaError_t rc = cudaEventSynchronize((cudaEvent_t)ev);
    return rc == cudaSuccess ? 0 : fail(e, "event wait (host)", rc);
}

extern "C" int kc_event_query(kc_event ev, bool *done, struct moed_err *e)
{
    cudaError_t rc = cudaEventQuery((cudaEvent_t)ev);
    *done = rc == cudaSuccess;
    if (rc == cudaSuccess || rc == cudaErrorNotReady) {
        // not an error: clear it if the runtime recorded it, and nothing else
        if (rc == cudaErrorNotReady && cudaPeekAtLastError() == cudaErrorNotReady)
            (void)cudaGetLastError();
        return 0;
    }
    return fail(e, "event query", rc);
}
