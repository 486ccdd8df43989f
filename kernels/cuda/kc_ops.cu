// Elementwise kernels of kc.h: RMSNorm, SwiGLU, add.
//
// kc_rmsnorm mirrors model/ops.c's ops_rmsnorm: the sum of squares in double,
// r = (float)(1 / sqrt(ss / n + eps)), out = (x * r) * w in float (products
// rounded one by one, as the C code does without FMA contraction).
#include "kernels/cuda/kc.h"
#include "kernels/cuda/kc_launch.cuh"

#include <cuda_runtime.h>
#include <stdint.h>
#include <stdlib.h>

#include <atomic>



// Sum of v over the block (NT threads, a multiple of 32); every thread gets it.
template <int NT>
__device__ static double block_sum_d(double v)
{
    __shared__ double part[NT / 32];
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    const int w = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0)
        part[w] = v;
    __syncthreads();
    double s = 0;
    for (int i = 0; i < NT / 32; i++) // the same order in every thread
        s += part[i];
    return s;
}

// One block per output row.
template <int NT>
__global__ static void __launch_bounds__(NT)
    rmsnorm_k(const float *x, const int32_t *rows, int32_t n, const float *w, float eps, float *out)
{
    pdl_wait();
    const int32_t i = blockIdx.x;
    const int64_t r = rows ? (int64_t)rows[i] : (int64_t)i;
    const float *xr = x + (size_t)r * (size_t)n;
    float *o = out + (size_t)i * (size_t)n;
    double ss = 0;
    for (int32_t j = threadIdx.x; j < n; j += NT) {
        double v = (double)xr[j];
        ss += v * v;
    }
    ss = block_sum_d<NT>(ss);
    // every read of xr above is done before any write below (the barrier in
    // block_sum_d), and each thread rewrites only the elements it read: out == x is fine
    const float rr = (float)(1.0 / sqrt(ss / (double)n + (double)eps));
    for (int32_t j = threadIdx.x; j < n; j += NT)
        o[j] = __fmul_rn(__fmul_rn(xr[j], rr), w[j]);
}

extern "C" int kc_rmsnorm(kc_stream s, const float *x, const int32_t *rows, int32_t n_tok,
                          int32_t n, const float *w, float eps, float *out, struct moed_err *e)
{
    if (n_tok < 0 || n < 1)
        return moed_err_set(e, MOED_EINVAL, "kc_rmsnorm: %d rows of width %d", n_tok, n);
    if (n_tok == 0)
        return 0;
    cudaError_t lr =
        n > 4096 ? launch_k(rmsnorm_k<1024>, dim3((unsigned)n_tok), dim3(1024), 0, s, x, rows, n,
                            w, eps, out)
                 : launch_k(rmsnorm_k<256>, dim3((unsigned)n_tok), dim3(256), 0, s, x, rows, n, w,
                            eps, out);
    return launched_rc(lr, e, "rmsnorm");
}

__global__ static void swiglu_k(float *g, const float *u, int64_t n)
{
    pdl_wait();
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        float a = g[i];
        // ops_swiglu: g / (1 + expf(-g)) * u
        g[i] = __fmul_rn(__fdiv_rn(a, __fadd_rn(1.0f, expf(-a))), u[i]);
    }
}

__global__ static void add_k(float *x, const float *y, int64_t n)
{
    pdl_wait();
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        x[i] = __fadd_rn(x[i], y[i]);
}

static unsigned grid_for(int64_t n)
{
    int64_t b = (n + 255) / 256;
    const int64_t cap = 16384; // grid-stride beyond that
    return (unsigned)(b < cap ? b : cap);
}

extern "C" int kc_swiglu(kc_stream s, float *g, const float *u, int64_t n, struct moed_err *e)
{
    if (n < 0)
        return moed_err_set(e, MOED_EINVAL, "kc_swiglu: %lld elements", (long long)n);
    if (n == 0)
        return 0;
    cudaError_t lr = launch_k(swiglu_k, dim3(grid_for(n)), dim3(256), 0, s, g, u, n);
    return launched_rc(lr, e, "swiglu");
}

extern "C" int kc_add(kc_stream s, float *x, const float *y, int64_t n, struct moed_err *e)
{
    if (n < 0)
        return moed_err_set(e, MOED_EINVAL, "kc_add: %lld elements", (long long)n);
    if (n == 0)
        return 0;
    cudaError_t lr = launch_k(add_k, dim3(grid_for(n)), dim3(256), 0, s, x, y, n);
    return launched_rc(lr, e, "add");
}
