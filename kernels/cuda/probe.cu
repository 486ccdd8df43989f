// Device discovery and a self-test kernel (see kcuda.h).
#include "kernels/cuda/kcuda.h"

#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int cuda_fail(struct moed_err *e, const char *what, cudaError_t rc)
{
    return moed_err_set(e, MOED_EUNSUPPORTED, "CUDA %s: %s (%s)", what, cudaGetErrorString(rc),
                        cudaGetErrorName(rc));
}

extern "C" bool kcuda_built(void) { return true; }

extern "C" int kcuda_device_count(struct moed_err *e)
{
    int n = 0;
    cudaError_t rc = cudaGetDeviceCount(&n);
    if (rc != cudaSuccess)
        return cuda_fail(e, "device count", rc);
    return n;
}

extern "C" int kcuda_device_info(int dev, struct kcuda_device *out, struct moed_err *e)
{
    cudaDeviceProp p;
    cudaError_t rc = cudaGetDeviceProperties(&p, dev);
    if (rc != cudaSuccess)
        return cuda_fail(e, "device properties", rc);
    memset(out, 0, sizeof *out);
    snprintf(out->name, sizeof out->name, "%s", p.name);
    out->cc_major = p.major;
    out->cc_minor = p.minor;
    out->sm_count = p.multiProcessorCount;
    if ((rc = cudaSetDevice(dev)) != cudaSuccess)
        return cuda_fail(e, "set device", rc);
    if ((rc = cudaMemGetInfo(&out->mem_free, &out->mem_total)) != cudaSuccess)
        return cuda_fail(e, "memory info", rc);
    return 0;
}

__global__ static void saxpy(int n, float a, const float *x, float *y)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        y[i] = a * x[i] + y[i];
}

extern "C" int kcuda_selftest(int dev, struct moed_err *e)
{
    const int n = 4097;
    float *hx = (float *)malloc(n * sizeof(float)), *hy = (float *)malloc(n * sizeof(float));
    float *dx = NULL, *dy = NULL;
    int ret = 0;
    cudaError_t rc;
    if (!hx || !hy) {
        ret = moed_err_set(e, MOED_ENOMEM, "CUDA self-test: out of host memory");
        goto out;
    }
    for (int i = 0; i < n; i++) {
        hx[i] = (float)i;
        hy[i] = 1.0f;
    }
    if ((rc = cudaSetDevice(dev)) != cudaSuccess ||
        (rc = cudaMalloc(&dx, n * sizeof(float))) != cudaSuccess ||
        (rc = cudaMalloc(&dy, n * sizeof(float))) != cudaSuccess ||
        (rc = cudaMemcpy(dx, hx, n * sizeof(float), cudaMemcpyHostToDevice)) != cudaSuccess ||
        (rc = cudaMemcpy(dy, hy, n * sizeof(float), cudaMemcpyHostToDevice)) != cudaSuccess) {
        ret = cuda_fail(e, "self-test setup", rc);
        goto out;
    }
    saxpy<<<(n + 255) / 256, 256>>>(n, 2.0f, dx, dy);
    if ((rc = cudaGetLastError()) != cudaSuccess ||
        (rc = cudaMemcpy(hy, dy, n * sizeof(float), cudaMemcpyDeviceToHost)) != cudaSuccess) {
        ret = cuda_fail(e, "self-test kernel", rc);
        goto out;
    }
    for (int i = 0; i < n; i++)
        if (hy[i] != 2.0f * i + 1.0f) {
            ret = moed_err_set(e, MOED_EIO, "CUDA self-test: y[%d] = %g, expected %g", i,
                               (double)hy[i], 2.0 * i + 1.0);
            break;
        }
out:
    cudaFree(dx);
    cudaFree(dy);
    free(hx);
    free(hy);
    return ret;
}
