// kc_matmul and kc_embed (kc.h): dense weights times activations, and
// embedding rows, on the GPU.
//
// kc_matmul takes one of two kernels:
//   - matvec (n_tok <= 8, and F32/F16 weights at any n_tok, 8 tokens per
//     launch): a group of 8 to 128 lanes per 1, 2 or 4 weight rows that
//     share each activation load (kc_mm.cuh's mv_plan; several rows only
//     for n_tok <= 4), 4 warps per CTA, f32 throughout; T tokens a
//     compile-time constant so the accumulators stay in registers.
//   - tensor cores (n_tok > 8, the other types): 64 x 64 tiles of
//     kc_mm.cuh's tc_tile, grid (token tiles, row tiles) with the token
//     tiles of one row tile adjacent so its weights are reused from L2.
//
// kc_matmul_multi (n_tok * n <= 8192 floats, n_tok <= 8, one weight type):
// one launch over the rows of all its
// matrices (a CTA belongs to one matrix); each CTA stages its T activation
// rows in shared memory, RMS-normalised there exactly as kc_rmsnorm does
// (the same double sums in the same order), then runs the matvec on them
// (1 or 2 rows per lane group).
#include "kernels/cuda/kc.h"
#include "kernels/cuda/kc_mm.cuh"

#include <cuda_runtime.h>
#include <stdio.h>

using namespace kcm;

namespace {

// ---- kernels ------------------------------------------------------------------

// A group of G = 2^lg lanes owns NW consecutive rows (those past `rows`
// read the last row and write nothing).
template <int TY, int T, int NW>
__global__ void __launch_bounds__(MV_THREADS)
    k_mv(const uint8_t *__restrict__ W, size_t row_size, int nb, int rows,
         const float *__restrict__ x, int n, float *__restrict__ out,
         const float *__restrict__ bias, int accumulate, int lg)
{
    const int G = 1 << lg, g = threadIdx.x & (G - 1);
    const int row = (blockIdx.x * (MV_THREADS >> lg) + (threadIdx.x >> lg)) * NW;
    const float *xr[T];
#pragma unroll
    for (int t = 0; t < T; t++)
        xr[t] = x + (size_t)t * n;
    float acc[NW][T][2];
#pragma unroll
    for (int m = 0; m < NW; m++)
#pragma unroll
        for (int t = 0; t < T; t++)
            acc[m][t][0] = acc[m][t][1] = 0.0f;
    if (row < rows) {
        const uint8_t *wr[NW];
#pragma unroll
        for (int m = 0; m < NW; m++)
            wr[m] = W + (size_t)(row + m < rows ? row + m : rows - 1) * row_size;
        mv_rows<TY, T, NW>(wr, nb, xr, g, G, acc);
    }
    float v[NW * T];
#pragma unroll
    for (int m = 0; m < NW; m++)
#pragma unroll
        for (int t = 0; t < T; t++)
            v[m * T + t] = acc[m][t][0] + acc[m][t][1];
    if (G <= 32)
        group_sum<NW * T>(v, G);
    else
        group_sum_cta<NW * T>(v, G);
    if (g == 0) {
#pragma unroll
        for (int m = 0; m < NW; m++) {
            const int r = row + m;
            if (r < rows) {
                const float b = bias ? bias[r] : 0.0f;
#pragma unroll
                for (int t = 0; t < T; t++) {
                    float *po = out + (size_t)t * rows + r;
                    *po = ((accumulate ? *po : 0.0f) + b) + v[m * T + t];
                }
            }
        }
    }
}

// ---- kc_matmul_multi ------------------------------------------------------------

constexpr int MM_THREADS = 256; // 8 warps; a row's lanes stay within a warp (lg <= 5)

struct MultiArgs {
    const uint8_t *W[KC_MULTI_MAX];
    size_t rs[KC_MULTI_MAX];
    int rows[KC_MULTI_MAX];
    const float *bias[KC_MULTI_MAX];
    float *out[KC_MULTI_MAX];
    int cta0[KC_MULTI_MAX]; // first CTA of each matrix
    int n_mat;
};

// kc_rmsnorm's threads per row for a width (kc_ops.cu)
__host__ __device__ static inline int rms_threads(int n)
{
    return n > 4096 ? 1024 : 256;
}

// 1 / rms of the row xr (shared memory) as kc_rmsnorm computes it with ntr
// threads: thread vt sums the squares of elements vt, vt + ntr, ... in
// double, each warp of them reduces by xor shuffles, and the ntr / 32 warp
// sums are added in order.  Here the MM_THREADS threads play those ntr
// (thread i the virtual threads i, i + MM_THREADS, ...), which gives the
// same sums bit for bit.  Every thread gets r; all must call it.
__device__ __forceinline__ float mm_rms_r(const float *xr, int n, float eps, int ntr,
                                          double *part)
{
    constexpr int V = 1024 / MM_THREADS;
    const int w = threadIdx.x >> 5, lane = threadIdx.x & 31;
#pragma unroll
    for (int v = 0; v < V; v++) {
        const int vt = threadIdx.x + v * MM_THREADS;
        if (v * MM_THREADS < ntr) { // uniform over the CTA
            double ss = 0;
            for (int j = vt; j < n; j += ntr) {
                const double d = (double)xr[j];
                ss += d * d;
            }
            for (int o = 16; o > 0; o >>= 1)
                ss += __shfl_xor_sync(0xFFFFFFFFu, ss, o);
            if (lane == 0)
                part[v * (MM_THREADS / 32) + w] = ss;
        }
    }
    __syncthreads();
    double s = 0;
    for (int i = 0; i < ntr / 32; i++)
        s += part[i];
    return (float)(1.0 / sqrt(s / (double)n + (double)eps));
}

template <int TY, int T, int NW>
__global__ void __launch_bounds__(MM_THREADS)
    k_mv_multi(const MultiArgs a, const float *__restrict__ x, int n, int nb,
               const float *__restrict__ norm_w, float eps, int lg)
{
    extern __shared__ float4 mm_xs4[];
    __shared__ double part[1024 / 32];
    float *xs = (float *)mm_xs4;
    int mi = 0;
#pragma unroll
    for (int i = 1; i < KC_MULTI_MAX; i++)
        if (i < a.n_mat && (int)blockIdx.x >= a.cta0[i])
            mi = i;
    // the activations (float4 copies: n is a multiple of 8)
    {
        const float4 *x4 = (const float4 *)x;
        for (int i = threadIdx.x; i < T * n / 4; i += MM_THREADS)
            mm_xs4[i] = __ldg(x4 + i);
    }
    __syncthreads();
    if (norm_w) { // uniform
        const int ntr = rms_threads(n);
#pragma unroll 1
        for (int t = 0; t < T; t++) {
            float *xt = xs + (size_t)t * n;
            const float r = mm_rms_r(xt, n, eps, ntr, part);
            __syncthreads(); // every thread has read part and xt's squares
            for (int j = threadIdx.x; j < n; j += MM_THREADS)
                xt[j] = __fmul_rn(__fmul_rn(xt[j], r), __ldg(norm_w + j));
        }
        __syncthreads();
    }
    const float *xr[T];
#pragma unroll
    for (int t = 0; t < T; t++)
        xr[t] = xs + (size_t)t * n;
    const int G = 1 << lg, g = threadIdx.x & (G - 1);
    const int rows = a.rows[mi];
    const int row = (((int)blockIdx.x - a.cta0[mi]) * (MM_THREADS >> lg) + (threadIdx.x >> lg)) * NW;
    float acc[NW][T][2];
#pragma unroll
    for (int m = 0; m < NW; m++)
#pragma unroll
        for (int t = 0; t < T; t++)
            acc[m][t][0] = acc[m][t][1] = 0.0f;
    if (row < rows) {
        const uint8_t *wr[NW];
#pragma unroll
        for (int m = 0; m < NW; m++)
            wr[m] = a.W[mi] + (size_t)(row + m < rows ? row + m : rows - 1) * a.rs[mi];
        mv_rows<TY, T, NW, true>(wr, nb, xr, g, G, acc);
    }
    float v[NW * T];
#pragma unroll
    for (int m = 0; m < NW; m++)
#pragma unroll
        for (int t = 0; t < T; t++)
            v[m * T + t] = acc[m][t][0] + acc[m][t][1];
    group_sum<NW * T>(v, G);
    if (g == 0) {
        const float *bias = a.bias[mi];
        float *out = a.out[mi];
#pragma unroll
        for (int m = 0; m < NW; m++) {
            const int r = row + m;
            if (r < rows) {
                const float b = bias ? bias[r] : 0.0f;
#pragma unroll
                for (int t = 0; t < T; t++)
                    out[(size_t)t * rows + r] = (0.0f + b) + v[m * T + t];
            }
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

template <int TY, int NW>
void mv_launch_nw(cudaStream_t st, const uint8_t *W, size_t rs, int nb, int rows, const float *x,
                  int n, int n_tok, float *out, const float *bias, bool acc, int lg)
{
    const int rpc = (MV_THREADS >> lg) * NW; // rows per CTA
    const dim3 grid((unsigned)((rows + rpc - 1) / rpc));
    for (int t0 = 0; t0 < n_tok; t0 += 8) {
        const int T = n_tok - t0 < 8 ? n_tok - t0 : 8;
        const float *xt = x + (size_t)t0 * n;
        float *ot = out + (size_t)t0 * rows;
        const int a = acc ? 1 : 0;
        switch (T) {
#define KC_MV_T(TT)                                                                               \
    case TT:                                                                                      \
        if constexpr (NW == 1 || TT <= 4)                                                         \
            k_mv<TY, TT, NW><<<grid, MV_THREADS, 0, st>>>(W, rs, nb, rows, xt, n, ot, bias, a, lg); \
        break;
            KC_MV_T(1) KC_MV_T(2) KC_MV_T(3) KC_MV_T(4) KC_MV_T(5) KC_MV_T(6) KC_MV_T(7) KC_MV_T(8)
#undef KC_MV_T
        }
    }
}

// NW rows per lane group while the tokens are few (T <= 4 keeps the NW * T
// accumulators in registers); 8 tokens, F32/F16 at any count, one row.
template <int TY>
void mv_launch(cudaStream_t st, const uint8_t *W, size_t rs, int nb, int rows, const float *x,
               int n, int n_tok, float *out, const float *bias, bool acc)
{
    const MvPlan p = mv_plan(kcq::Q<TY>::NS, nb, rows, 7, n_tok <= 4 ? 4 : 1);
    switch (p.nw) {
    case 4: mv_launch_nw<TY, 4>(st, W, rs, nb, rows, x, n, n_tok, out, bias, acc, p.lg); break;
    case 2: mv_launch_nw<TY, 2>(st, W, rs, nb, rows, x, n, n_tok, out, bias, acc, p.lg); break;
    default: mv_launch_nw<TY, 1>(st, W, rs, nb, rows, x, n, n_tok, out, bias, acc, p.lg); break;
    }
}

template <int TY>
void tc_launch(cudaStream_t st, const uint8_t *W, size_t rs, int n, int rows, const float *x,
               int n_tok, float *out, const float *bias, bool acc)
{
    const dim3 grid((unsigned)((n_tok + TC_N - 1) / TC_N), (unsigned)((rows + TC_M - 1) / TC_M));
    k_tc<TY><<<grid, TC_THREADS, 0, st>>>(W, rs, n, rows, x, n_tok, out, bias, acc ? 1 : 0);
}

template <int TY, int NW>
int multi_launch(cudaStream_t st, const MultiArgs &a, int grid, const float *x, int n, int n_tok,
                 const float *norm_w, float eps, int lg)
{
    const int nb = n / kcq::Q<TY>::BLK;
    const size_t smem = sizeof(float) * (size_t)n_tok * (size_t)n;
    switch (n_tok) {
#define KC_MM_T(TT)                                                                               \
    case TT:                                                                                      \
        if constexpr (NW == 1 || (NW == 2 && TT <= 4)) {                                                       \
            if (smem > 48 * 1024 &&                                                               \
                cudaFuncSetAttribute(k_mv_multi<TY, TT, NW>,                                      \
                                     cudaFuncAttributeMaxDynamicSharedMemorySize,                 \
                                     (int)smem) != cudaSuccess)                                   \
                return -1;                                                                        \
            k_mv_multi<TY, TT, NW><<<grid, MM_THREADS, smem, st>>>(a, x, n, nb, norm_w, eps, lg); \
        }                                                                                         \
        break;
        KC_MM_T(1) KC_MM_T(2) KC_MM_T(3) KC_MM_T(4) KC_MM_T(5) KC_MM_T(6) KC_MM_T(7) KC_MM_T(8)
#undef KC_MM_T
    }
    return 0;
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

// Tests and microbenchmarks (not in kc.h): forces the matvec's rows per lane
// group (1, 2, 4; kc_matmul_multi takes at most 2) and lanes per group
// (log2) of kc_matmul and kc_matmul_multi; 0 restores the heuristic.
extern "C" void kc_matmul_tune(int nw, int lg)
{
    mv_tune.nw = nw == 1 || nw == 2 || nw == 4 ? nw : 0;
    mv_tune.lg = lg >= 3 && lg <= 7 ? lg : 0;
}

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

extern "C" int kc_matmul_multi(kc_stream s, int n_mat, const struct kc_mat *w, const float *x,
                               int32_t n_tok, float *const *out, const float *const *bias,
                               const float *norm_w, float eps, float *norm_out,
                               struct moed_err *e)
{
    static const char fn[] = "kc_matmul_multi";
    if (n_mat < 1 || n_mat > KC_MULTI_MAX || !w || !out)
        return moed_err_set(e, MOED_EINVAL, "%s: %d matrices (1..%d, with their outputs)", fn,
                            n_mat, KC_MULTI_MAX);
    if (n_tok < 0)
        return moed_err_set(e, MOED_EINVAL, "%s: n_tok %d < 0", fn, (int)n_tok);
    const int n = w[0].n;
    long total_rows = 0;
    for (int i = 0; i < n_mat; i++) {
        char what[32];
        snprintf(what, sizeof what, "weights %d", i);
        int rc = check_mat(fn, what, w[i].type, w[i].data, w[i].n, w[i].rows, w[i].row_size, e);
        if (rc)
            return rc;
        if (w[i].n != n)
            return moed_err_set(e, MOED_EINVAL, "%s: matrix %d is %d wide, matrix 0 %d", fn, i,
                                (int)w[i].n, n);
        if (w[i].rows > 0 && !out[i])
            return moed_err_set(e, MOED_EINVAL, "%s: no output for matrix %d", fn, i);
        total_rows += w[i].rows;
    }
    if (n_tok == 0 || total_rows == 0)
        return 0;
    if (!x || !aligned16(x))
        return moed_err_set(e, MOED_EINVAL, "%s: x must be a 16-byte aligned device pointer", fn);
    const cudaStream_t st = (cudaStream_t)s;
    const size_t smem = sizeof(float) * (size_t)n_tok * (size_t)n;
    // one launch while the staged activations stay small: at 64 KB (8 tokens
    // of 2048) the CTAs per SM drop so far that the separate kernels win
    // (H200: 60.7 us fused vs 39.4 us for Q+K+V 4096+512+512 x 2048 Q8_0)
    bool one = n_tok <= 8 && smem <= 32 * 1024;
    for (int i = 1; i < n_mat; i++)
        one = one && w[i].type == w[0].type;
    if (!one) {
        // an RMSNorm into norm_out, then one kc_matmul per matrix
        const float *xin = x;
        if (norm_w) {
            if (!norm_out)
                return moed_err_set(e, MOED_EINVAL, "%s: norm_w needs norm_out for %d tokens", fn,
                                    (int)n_tok);
            int rc = kc_rmsnorm(s, x, NULL, n_tok, n, norm_w, eps, norm_out, e);
            if (rc)
                return rc;
            xin = norm_out;
        }
        for (int i = 0; i < n_mat; i++) {
            int rc = kc_matmul(s, &w[i], xin, n_tok, out[i], bias ? bias[i] : NULL, false, e);
            if (rc)
                return rc;
        }
        return 0;
    }
    const uint32_t type = w[0].type;
    // a CTA's rows are all of one matrix; a group's rows past its end are
    // read as its last row and not written
    // (H200, Q+K+V 4096+512+512 x 2048 Q8_0, 1 token: 2 rows per group
    // 11.8 us, 1 or 4 rows 17.5)
    MvPlan p = mv_plan(type_ns(type), n / type_blk(type), (int)total_rows, 5, n_tok <= 4 ? 2 : 1);
    const int rpc = (MM_THREADS >> p.lg) * p.nw;
    MultiArgs a = {};
    a.n_mat = n_mat;
    long grid = 0;
    for (int i = 0; i < n_mat; i++) {
        a.W[i] = (const uint8_t *)w[i].data;
        a.rs[i] = w[i].row_size;
        a.rows[i] = w[i].rows;
        a.bias[i] = bias ? bias[i] : NULL;
        a.out[i] = out[i];
        a.cta0[i] = (int)grid;
        grid += (w[i].rows + rpc - 1) / rpc;
    }
    for (int i = n_mat; i < KC_MULTI_MAX; i++)
        a.cta0[i] = (int)grid;
    if (grid > 0x7FFFFFFFL)
        return moed_err_set(e, MOED_EINVAL, "%s: too many rows", fn);
    int rc = 0;
    switch (type) {
#define KC_MMU(TY)                                                                                \
    case TY:                                                                                      \
        rc = p.nw == 2 ? multi_launch<TY, 2>(st, a, (int)grid, x, n, n_tok, norm_w, eps, p.lg)    \
                       : multi_launch<TY, 1>(st, a, (int)grid, x, n, n_tok, norm_w, eps, p.lg);   \
        break;
        KCM_TYPES_ALL(KC_MMU)
#undef KC_MMU
    }
    if (rc)
        return moed_err_set(e, MOED_EIO, "%s: cannot give the kernel %zu bytes of shared memory", fn,
                            smem);
    return launch_check(fn, e);
}
