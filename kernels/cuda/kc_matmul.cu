// kc_matmul and kc_embed (kc.h): dense weights times activations, and
// embedding rows, on the GPU.
//
// kc_matmul takes one of two kernels:
//   - matvec (n_tok <= 8, and F32/F16 weights at any n_tok, 8 tokens per
//     launch): a group of 8 to 128 lanes per weight row (kc_mm.cuh's
//     mv_lanes_log2), 4 warps per CTA, f32 throughout; T tokens a
//     compile-time constant so the accumulators stay in registers.
//   - tensor cores (n_tok > 8, the other types): 64 x 64 tiles of
//     kc_mm.cuh's tc_tile, grid (token tiles, row tiles) with the token
//     tiles of one row tile adjacent so its weights are reused from L2.
#include "kernels/cuda/kc.h"
#include "kernels/cuda/kc_mm.cuh"

#include <cuda_runtime.h>

using namespace kcm;

namespace {

// ---- kernels ------------------------------------------------------------------

template <int TY, int T>
__global__ void __launch_bounds__(MV_THREADS)
    k_mv(const uint8_t *__restrict__ W, size_t row_size, int nb, int rows,
         const float *__restrict__ x, int n, float *__restrict__ out,
         const float *__restrict__ bias, int accumulate, int lg)
{
    const int G = 1 << lg, g = threadIdx.x & (G - 1);
    const int row = blockIdx.x * (MV_THREADS >> lg) + (threadIdx.x >> lg);
    const float *xr[T];
#pragma unroll
    for (int t = 0; t < T; t++)
        xr[t] = x + (size_t)t * n;
    float acc[1][T][2];
#pragma unroll
    for (int t = 0; t < T; t++)
        acc[0][t][0] = acc[0][t][1] = 0.0f;
    if (row < rows) {
        const uint8_t *wr[1] = {W + (size_t)row * row_size};
        mv_rows<TY, T, 1>(wr, nb, xr, g, G, acc);
    }
    float v[T];
#pragma unroll
    for (int t = 0; t < T; t++)
        v[t] = acc[0][t][0] + acc[0][t][1];
    if (G <= 32)
        group_sum<T>(v, G);
    else
        group_sum_cta<T>(v, G);
    if (row < rows && g == 0) {
        const float b = bias ? bias[row] : 0.0f;
#pragma unroll
        for (int t = 0; t < T; t++) {
            float *po = out + (size_t)t * rows + row;
            *po = ((accumulate ? *po : 0.0f) + b) + v[t];
        }
    }
}

template <int TY>
__global__ void __launch_bounds__(TC_THREADS)
    k_tc(const uint8_t *__restrict__ W, size_t row_size, int n, int rows,
         const float *__restrict__ x, int n_tok, float *__restrict__ out,
         const float *__restrict__ bias, int accumulate)
{
    __shared__ TcSmem sm;
    const int tok0 = blockIdx.x * TC_N, row0 = blockIdx.y * TC_M, tid = threadIdx.x;
    static_assert(TC_THREADS == TC_M + TC_N, "row tables");
    if (tid < TC_M) {
        const int r = row0 + tid;
        sm.wrow[tid] = r < rows ? W + (size_t)r * row_size : nullptr;
    } else {
        const int t = tok0 + tid - TC_M;
        sm.xrow[tid - TC_M] = t < n_tok ? x + (size_t)t * n : nullptr;
    }
    __syncthreads();
    tc_tile<TY>(sm, n, n_tok - tok0 < TC_N ? n_tok - tok0 : TC_N);
    for (int idx = tid; idx < TC_N * TC_M; idx += TC_THREADS) {
        const int t = idx / TC_M, i = idx % TC_M;
        const int tok = tok0 + t, r = row0 + i;
        if (tok < n_tok && r < rows) {
            float *po = out + (size_t)tok * rows + r;
            *po = ((accumulate ? *po : 0.0f) + (bias ? bias[r] : 0.0f)) + sm.u.c[t * TC_LDC + i];
        }
    }
}

// out[t][:] = row tok[t] of the table, decoded exactly; CTA (t, chunk).
template <int TY>
__global__ void __launch_bounds__(128)
    k_embed(const uint8_t *__restrict__ W, size_t row_size, int rows, int nb,
            const int32_t *__restrict__ tok, float *__restrict__ out, int n)
{
    using QT = kcq::Q<TY>;
    const int t = blockIdx.x;
    const int id = tok[t];
    const bool ok = id >= 0 && id < rows; // a bad id gives a row of zeros
    const uint8_t *row = W + (size_t)(ok ? id : 0) * row_size;
    float *o = out + (size_t)t * n;
    const int U = nb * QT::NS;
    for (int u = blockIdx.y * blockDim.x + threadIdx.x; u < U; u += gridDim.y * blockDim.x) {
        const int b = u / QT::NS, j = u % QT::NS;
        float w[QT::SE];
        if (ok) {
            typename QT::Raw raw;
            QT::load(row + (size_t)b * QT::BYTES, j, raw);
            QT::template decode<true>(raw, j, w);
        } else {
#pragma unroll
            for (int k = 0; k < QT::SE; k++)
                w[k] = 0.0f;
        }
#pragma unroll
        for (int r = 0; r < QT::NR; r++)
            *(float4 *)(o + b * QT::BLK + QT::off(j, r)) =
                make_float4(w[4 * r], w[4 * r + 1], w[4 * r + 2], w[4 * r + 3]);
    }
}

// ---- launches -----------------------------------------------------------------

template <int TY>
void mv_launch(cudaStream_t st, const uint8_t *W, size_t rs, int nb, int rows, const float *x,
               int n, int n_tok, float *out, const float *bias, bool acc)
{
    const int lg = mv_lanes_log2(kcq::Q<TY>::NS, nb, rows, 7);
    const int rpc = MV_THREADS >> lg; // rows per CTA
    const dim3 grid((unsigned)((rows + rpc - 1) / rpc));
    for (int t0 = 0; t0 < n_tok; t0 += 8) {
        const int T = n_tok - t0 < 8 ? n_tok - t0 : 8;
        const float *xt = x + (size_t)t0 * n;
        float *ot = out + (size_t)t0 * rows;
        const int a = acc ? 1 : 0;
        switch (T) {
#define KC_MV_T(TT)                                                                               \
    case TT: k_mv<TY, TT><<<grid, MV_THREADS, 0, st>>>(W, rs, nb, rows, xt, n, ot, bias, a, lg); break;
            KC_MV_T(1) KC_MV_T(2) KC_MV_T(3) KC_MV_T(4) KC_MV_T(5) KC_MV_T(6) KC_MV_T(7) KC_MV_T(8)
#undef KC_MV_T
        }
    }
}

template <int TY>
void tc_launch(cudaStream_t st, const uint8_t *W, size_t rs, int n, int rows, const float *x,
               int n_tok, float *out, const float *bias, bool acc)
{
    const dim3 grid((unsigned)((n_tok + TC_N - 1) / TC_N), (unsigned)((rows + TC_M - 1) / TC_M));
    k_tc<TY><<<grid, TC_THREADS, 0, st>>>(W, rs, n, rows, x, n_tok, out, bias, acc ? 1 : 0);
}

template <int TY>
void embed_launch(cudaStream_t st, const uint8_t *W, size_t rs, int rows, int n,
                  const int32_t *tok, int n_tok, float *out)
{
    using QT = kcq::Q<TY>;
    const int nb = n / QT::BLK, U = nb * QT::NS;
    int chunks = (U + 127) / 128;
    if (chunks > 64)
        chunks = 64;
    const dim3 grid((unsigned)n_tok, (unsigned)chunks);
    k_embed<TY><<<grid, 128, 0, st>>>(W, rs, rows, nb, tok, out, n);
}

} // namespace

// ---- entry points ---------------------------------------------------------------

extern "C" int kc_matmul(kc_stream s, const struct kc_mat *w, const float *x, int32_t n_tok,
                         float *out, const float *bias, bool accumulate, struct moed_err *e)
{
    static const char fn[] = "kc_matmul";
    if (!w)
        return moed_err_set(e, MOED_EINVAL, "%s: no weight matrix", fn);
    int rc = check_mat(fn, "weights", w->type, w->data, w->n, w->rows, w->row_size, e);
    if (rc)
        return rc;
    if (n_tok < 0)
        return moed_err_set(e, MOED_EINVAL, "%s: n_tok %d < 0", fn, (int)n_tok);
    if (n_tok == 0 || w->rows == 0)
        return 0;
    if (!x || !out || !aligned16(x))
        return moed_err_set(e, MOED_EINVAL, "%s: x and out must be device pointers, x 16-byte aligned",
                            fn);
    if ((long)w->rows > 65535L * TC_M)
        return moed_err_set(e, MOED_EINVAL, "%s: %d rows is too many", fn, (int)w->rows);
    const cudaStream_t st = (cudaStream_t)s;
    const uint8_t *W = (const uint8_t *)w->data;
    const int n = w->n, rows = w->rows, nb = n / type_blk(w->type);
    const bool tc = n_tok > 8 && w->type != KT_F32 && w->type != KT_F16;
    if (tc) {
        switch (w->type) {
#define KC_TC(TY)                                                                                 \
    case TY: tc_launch<TY>(st, W, w->row_size, n, rows, x, n_tok, out, bias, accumulate); break;
            KCM_TYPES_TC(KC_TC)
#undef KC_TC
        }
    } else {
        switch (w->type) {
#define KC_MV(TY)                                                                                 \
    case TY: mv_launch<TY>(st, W, w->row_size, nb, rows, x, n, n_tok, out, bias, accumulate); break;
            KCM_TYPES_ALL(KC_MV)
#undef KC_MV
        }
    }
    return launch_check(fn, e);
}

extern "C" int kc_embed(kc_stream s, const struct kc_mat *table, const int32_t *tok, int32_t n_tok,
                        float *out, struct moed_err *e)
{
    static const char fn[] = "kc_embed";
    if (!table)
        return moed_err_set(e, MOED_EINVAL, "%s: no table", fn);
    int rc = check_mat(fn, "table", table->type, table->data, table->n, table->rows,
                       table->row_size, e);
    if (rc)
        return rc;
    if (n_tok < 0)
        return moed_err_set(e, MOED_EINVAL, "%s: n_tok %d < 0", fn, (int)n_tok);
    if (n_tok == 0)
        return 0;
    if (!tok || !out || !aligned16(out))
        return moed_err_set(e, MOED_EINVAL,
                            "%s: tok and out must be device pointers, out 16-byte aligned", fn);
    const cudaStream_t st = (cudaStream_t)s;
    const uint8_t *W = (const uint8_t *)table->data;
    switch (table->type) {
#define KC_EMB(TY)                                                                                \
    case TY: embed_launch<TY>(st, W, table->row_size, table->rows, table->n, tok, n_tok, out); break;
        KCM_TYPES_ALL(KC_EMB)
#undef KC_EMB
    }
    return launch_check(fn, e);
}
