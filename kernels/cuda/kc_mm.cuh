// Matrix kernels shared by kc_matmul.cu and kc_moe_ffn.cu: the matvec dot
// (f32, decode-sized batches) and the tensor-core tile (bf16 WMMA, f32
// accumulation).  Weight rows are decoded through kc_quant.cuh's slices.
#ifndef MOED_KERNELS_KC_MM_CUH
#define MOED_KERNELS_KC_MM_CUH

#include <mma.h>
#include <stdint.h>

#include "kernels/cuda/kc.h"
#include "kernels/cuda/kc_quant.cuh"

namespace kcm {

// ---- matvec -------------------------------------------------------------------
//
// A group of G lanes (G = 8 .. 128, a power of two) owns one weight row (or
// NW rows that share the activations, e.g. gate and up); lane g of the
// group takes slices g, g + G, g + 2G, ... of the row, in batches of UNR
// loaded before any is decoded.  Each slice is dotted with T activation
// rows (float4 loads, L1/L2-resident), two accumulators per (row, token)
// to halve the FMA dependency chains.  The caller reduces the G partial
// sums (group_sum, group_sum_cta).

// Slices per lane and batch: 2 of 16 elements or 4 of 8 for one row; with
// NW rows (NW = 2 or 4, each activation float4 feeding NW rows' FMAs) 2
// slices of each row, so a batch keeps 4 to 8 independent loads per lane.
// Two batches are in flight: the next one's loads are issued before the
// current one is decoded (software pipelining).  KCM_UNR_A and
// KCM_FORCE_LG (mv_lanes_log2) are build-time tuning knobs.
#ifndef KCM_UNR_A
#define KCM_UNR_A 4
#endif
template <int TY, int NW> struct MvUnroll {
    static constexpr int value = NW == 1 ? (kcq::Q<TY>::SE == 16 ? 2 : KCM_UNR_A) : NW >= 4 ? 1 : 2;
};

// Loads the batch of slices u0, u0 + G, ... (those < U).
template <int TY, int NW, int UNR>
__device__ __forceinline__ void mv_load(typename kcq::Q<TY>::Raw (&raw)[NW][UNR],
                                        const uint8_t *const (&wr)[NW], int u0, int U, int G)
{
    using QT = kcq::Q<TY>;
#pragma unroll
    for (int k = 0; k < UNR; k++) {
        const int u = u0 + k * G;
        if (u < U) {
            const unsigned b = (unsigned)u / QT::NS, j = (unsigned)u % QT::NS;
#pragma unroll
            for (int m = 0; m < NW; m++)
                QT::load(wr[m] + (size_t)b * QT::BYTES, (int)j, raw[m][k]);
        }
    }
}

// Decodes a loaded batch and accumulates its dots with the T activations.
template <int TY, int T, int NW, int UNR, bool XS = false>
__device__ __forceinline__ void mv_dot(const typename kcq::Q<TY>::Raw (&raw)[NW][UNR],
                                       const float *const (&xr)[T], int u0, int U, int G,
                                       float (&acc)[NW][T][2])
{
    using QT = kcq::Q<TY>;
#pragma unroll
    for (int k = 0; k < UNR; k++) {
        const int u = u0 + k * G;
        if (u < U) {
            const unsigned b = (unsigned)u / QT::NS, j = (unsigned)u % QT::NS;
            float w[NW][QT::SE];
#pragma unroll
            for (int m = 0; m < NW; m++)
                QT::template decode<false>(raw[m][k], (int)j, w[m]);
            const int e0 = (int)b * QT::BLK;
#pragma unroll
            for (int r = 0; r < QT::NR; r++) {
                const int o = e0 + QT::off((int)j, r);
#pragma unroll
                for (int t = 0; t < T; t++) {
                    // XS: the activations are in shared memory (no read-only path)
                    const float4 xv = XS ? *(const float4 *)(xr[t] + o)
                                         : __ldg((const float4 *)(xr[t] + o));
#pragma unroll
                    for (int m = 0; m < NW; m++) {
                        float a = acc[m][t][r & 1];
                        a = fmaf(w[m][4 * r + 0], xv.x, a);
                        a = fmaf(w[m][4 * r + 1], xv.y, a);
                        a = fmaf(w[m][4 * r + 2], xv.z, a);
                        a = fmaf(w[m][4 * r + 3], xv.w, a);
                        acc[m][t][r & 1] = a;
                    }
                }
            }
        }
    }
}

template <int TY, int T, int NW, bool XS = false>
__device__ __forceinline__ void mv_rows(const uint8_t *const (&wr)[NW], int nb,
                                        const float *const (&xr)[T], int g, int G,
                                        float (&acc)[NW][T][2])
{
    using QT = kcq::Q<TY>;
    constexpr int UNR = MvUnroll<TY, NW>::value;
    const int U = nb * QT::NS; // slices in a row
    const int step = G * UNR;  // slices of the group per batch
    typename QT::Raw ra[NW][UNR], rb[NW][UNR];
    int u0 = g;
    mv_load<TY, NW, UNR>(ra, wr, u0, U, G);
    while (u0 < U) {
        mv_load<TY, NW, UNR>(rb, wr, u0 + step, U, G); // next batch (no-op past U)
        mv_dot<TY, T, NW, UNR, XS>(ra, xr, u0, U, G, acc);
        u0 += step;
        if (u0 >= U)
            break;
        mv_load<TY, NW, UNR>(ra, wr, u0 + step, U, G);
        mv_dot<TY, T, NW, UNR, XS>(rb, xr, u0, U, G, acc);
        u0 += step;
    }
}

// Sum of a lane group's partial sums (every lane of the warp must call it,
// with the same G <= 32); lane 0 of each group ends with the total.
template <int T>
__device__ __forceinline__ void group_sum(float (&v)[T], int G)
{
    for (int o = G >> 1; o > 0; o >>= 1) {
#pragma unroll
        for (int t = 0; t < T; t++)
            v[t] += __shfl_xor_sync(0xFFFFFFFFu, v[t], o);
    }
}

constexpr int MV_THREADS = 128; // 4 warps

// The same over a group of G = 64 or 128 lanes (2 or 4 warps of a CTA of
// MV_THREADS), through shared memory; every thread of the CTA must call
// it.  Thread g == 0 of each group (lane 0 of its first warp) ends with
// the total.
template <int T>
__device__ __forceinline__ void group_sum_cta(float (&v)[T], int G)
{
    __shared__ float red[MV_THREADS / 32][T];
    group_sum<T>(v, 32);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (lane == 0) {
#pragma unroll
        for (int t = 0; t < T; t++)
            red[warp][t] = v[t];
    }
    __syncthreads();
    if ((threadIdx.x & (G - 1)) == 0) {
        for (int w = 1; w < G / 32; w++) {
#pragma unroll
            for (int t = 0; t < T; t++)
                v[t] += red[warp + w][t];
        }
    }
}

// Lanes per row (log2), from 8 to 128.  A decode step's matrices are
// small, so a launch is bound by latency unless it has many warps in
// flight: 32 lanes per row, and up to 128 (a row over 4 warps) while the
// launch would have fewer than ~4096 warps and each lane keeps >= 2
// slices; 8 for the k-quants of tall matrices (4 rows per warp share each
// activation load); never more than the row has slices.  max_lg caps it
// (the MoE kernels reduce within a warp only).
static inline int mv_lanes_log2(int ns_per_block, int nb, int rows, int max_lg)
{
    const long u = (long)nb * ns_per_block; // slices per row
#ifdef KCM_FORCE_LG
    if (KCM_FORCE_LG)
        return KCM_FORCE_LG < max_lg ? KCM_FORCE_LG : max_lg;
#endif
    int lg = ns_per_block == 16 && rows >= 16384 ? 3 : 5;
    while (lg < max_lg && ((long)rows << lg) / 32 < 4096 && u >= (4L << lg))
        lg++;
    while (lg > 3 && (1L << (lg - 1)) >= u)
        lg--;
    return lg;
}

// Rows per lane group (NW) and lanes per group (log2) for a matvec of
// `rows` rows: NW = 4 on matrices tall enough to keep >= ~2048 warps with
// it (each activation load then feeds 4 rows), 2 or 1 below (max_nw caps
// it); lanes per group from mv_lanes_log2 on the row groups.  H200, Q8_0,
// 1 token: 4096 x 2048 8.1 -> 6.4 us, 2048 x 4096 8.1 -> 6.5, 151936 x
// 2048 203 -> 134 (4 tokens: 21.6 -> 9.6, 492 -> 213); 512 x 2048 stays
// at 1 row on 128 lanes (3.1).  mv_tune (a translation
// unit's own copy) overrides both for tests and microbenchmarks.
struct MvPlan {
    int nw, lg;
};
static MvPlan mv_tune = {0, 0};

static inline MvPlan mv_plan(int ns_per_block, int nb, int rows, int max_lg, int max_nw)
{
    MvPlan p;
    p.nw = rows >= 2048 ? 4 : rows >= 1024 ? 2 : 1;
    if (mv_tune.nw)
        p.nw = mv_tune.nw;
    if (p.nw > max_nw)
        p.nw = max_nw;
    p.lg = mv_lanes_log2(ns_per_block, nb, (rows + p.nw - 1) / p.nw, max_lg);
    // k-quants of tall matrices: narrow groups.  Warp-reduced kernels
    // (max_lg 5: MoE, kc_matmul_multi; H200, 8 Q4_K experts, 1 token): down 2048 x 768 x 9 tiles, 4 rows on
    // 8 lanes 9.0 us, on 16 9.3, on 32 13.3, 1 row on 8 lanes 9.8;
    // gate_up 2 x 768 x 2048 x 9 tiles, gate + up on 8 lanes 15.2, on 32
    // 16.2.  kc_matmul: 8 lanes for 1 row, 16 for 4.
    const bool moe = max_lg <= 5;
    if (ns_per_block == 16 && rows >= (moe ? 12288 : 16384)) {
        const int cap = moe || p.nw < 4 ? 3 : 4;
        if (p.lg > cap)
            p.lg = cap;
    }
    if (mv_tune.lg)
        p.lg = mv_tune.lg < max_lg ? mv_tune.lg : max_lg;
    return p;
}

// ---- tensor-core tile -----------------------------------------------------------
//
// A CTA computes a 64 (weight rows) x 64 (tokens) tile with 4 warps, each a
// 32 x 32 quarter as 2 x 2 WMMA bf16 16x16x16 fragments (f32 accumulators).
// Per K step of 128: all 128 threads decode the 64 x 128 weight tile from
// the rows in wrow[] into bf16 shared memory (SE-element slices, the same
// decoders as the matvec; the raw bytes were loaded into registers during
// the previous step's MMAs), and load the 64 x 128 activation tile from
// the rows in xrow[] (f32 float4, rounded to bf16); NULL rows are zeros.  The
// accumulators then go through shared memory, token-major, for the
// caller's epilogue.

constexpr int TC_M = 64, TC_N = 64, TC_K = 128;
constexpr int TC_LD = TC_K + 8;  // bf16 row stride of the tiles (conflict-free fragment loads)
constexpr int TC_LDC = TC_M + 4; // float stride of the token-major result tile
constexpr int TC_THREADS = 128;

struct __align__(128) TcSmem {
    union {
        struct {
            uint16_t w[TC_M * TC_LD]; // bf16 bits, [row][k]
            uint16_t x[TC_N * TC_LD]; // bf16 bits, [token][k]
        } ab;
        float c[TC_N * TC_LDC]; // [token][row]
    } u;
    const uint8_t *wrow[TC_M];
    const float *xrow[TC_N];
};

__device__ __forceinline__ uint32_t pack_bf16(float a, float b)
{
    union {
        __nv_bfloat162 h;
        uint32_t u;
    } v;
    v.h = __floats2bfloat162_rn(a, b); // a in the low half
    return v.u;
}

// Needs sm.wrow / sm.xrow set and a __syncthreads() after that; ends with
// the result in sm.u.c[token * TC_LDC + row] and a __syncthreads().  n: the
// row width (a multiple of the type's block); n_valid: the tokens of the
// tile (xrow[t] non-NULL for t < n_valid): 16-token fragments past it skip
// their MMAs (MoE tiles are often half full), their results being zeros.
template <int TY>
__device__ __forceinline__ void tc_tile(TcSmem &sm, int n, int n_valid)
{
    using namespace nvcuda;
    using QT = kcq::Q<TY>;
    constexpr int SPK = TC_K / QT::SE; // slices per row per K step (16 or 8)
    constexpr int RPP = TC_THREADS / SPK; // rows per pass of the threads
    constexpr int NP = TC_M / RPP;     // passes
    static_assert(TC_K % QT::BLK == 0 || QT::BLK % TC_K == 0, "K step vs block");
    static_assert(NP * RPP == TC_M, "tile rows");

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int q = tid % SPK, rr = tid / SPK;
    const int wr = warp & 1, wc = warp >> 1; // warp's quarter: rows 32wr.., tokens 32wc..
    const int nb = n / QT::BLK;
    const int nk = (n + TC_K - 1) / TC_K;
    const int mine = n_valid - 32 * wc; // tokens in this warp's half
    const int jn = mine <= 0 ? 0 : mine <= 16 ? 1 : 2; // fragments with tokens

    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 2; j++)
            wmma::fill_fragment(acc[i][j], 0.0f);

    // this thread's weight slices of K step kt: slice index kt * SPK + q of
    // rows rr + RPP * p; loaded one K step ahead (before the MMAs of the
    // step before), decoded into shared memory at the top of the step
    typename QT::Raw raw[NP];
    auto wload = [&](int kt) {
        const int t = kt * SPK + q;
        const int b = t / QT::NS, j = t % QT::NS;
        if (b < nb) {
#pragma unroll
            for (int p = 0; p < NP; p++) {
                const uint8_t *wp = sm.wrow[rr + RPP * p];
                if (wp)
                    QT::load(wp + (size_t)b * QT::BYTES, j, raw[p]);
            }
        }
    };
    wload(0);
    for (int kt = 0; kt < nk; kt++) {
        // weights
        {
            const int t = kt * SPK + q; // slice index in the row
            const int b = t / QT::NS, j = t % QT::NS;
            const bool kin = b < nb;
#pragma unroll
            for (int p = 0; p < NP; p++) {
                const int i = rr + RPP * p;
                float w[QT::SE];
                if (kin && sm.wrow[i]) {
                    QT::template decode<false>(raw[p], j, w);
                } else {
#pragma unroll
                    for (int k = 0; k < QT::SE; k++)
                        w[k] = 0.0f;
                }
#pragma unroll
                for (int r = 0; r < QT::NR; r++) {
                    // column in the K step: always in [0, TC_K) by construction of t
                    const int col = b * QT::BLK + QT::off(j, r) - kt * TC_K;
                    uint2 v;
                    v.x = pack_bf16(w[4 * r + 0], w[4 * r + 1]);
                    v.y = pack_bf16(w[4 * r + 2], w[4 * r + 3]);
                    *(uint2 *)&sm.u.ab.w[i * TC_LD + col] = v;
                }
            }
        }
        // activations: warp w takes tokens w, w + 4, ...; lane the 4 floats at 4 * lane
        {
            const int col = kt * TC_K + 4 * lane;
#pragma unroll
            for (int p0 = 0; p0 < TC_N / 4; p0 += 8) {
                float4 v[8];
#pragma unroll
                for (int s = 0; s < 8; s++) {
                    const float *xp = sm.xrow[warp + 4 * (p0 + s)];
                    v[s] = (xp && col < n) ? __ldg((const float4 *)(xp + col))
                                           : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
                }
#pragma unroll
                for (int s = 0; s < 8; s++) {
                    uint2 pk;
                    pk.x = pack_bf16(v[s].x, v[s].y);
                    pk.y = pack_bf16(v[s].z, v[s].w);
                    *(uint2 *)&sm.u.ab.x[(warp + 4 * (p0 + s)) * TC_LD + 4 * lane] = pk;
                }
            }
        }
        __syncthreads();
        if (kt + 1 < nk)
            wload(kt + 1); // in flight during the MMAs
        if (jn > 0) { // warp-uniform
#pragma unroll
            for (int kk = 0; kk < TC_K / 16; kk++) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a[2];
                wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> bf[2];
#pragma unroll
                for (int i = 0; i < 2; i++)
                    wmma::load_matrix_sync(
                        a[i],
                        (const __nv_bfloat16 *)&sm.u.ab.w[(32 * wr + 16 * i) * TC_LD + 16 * kk],
                        TC_LD);
#pragma unroll
                for (int j = 0; j < 2; j++)
                    if (j < jn)
                        wmma::load_matrix_sync(
                            bf[j],
                            (const __nv_bfloat16 *)&sm.u.ab.x[(32 * wc + 16 * j) * TC_LD + 16 * kk],
                            TC_LD);
#pragma unroll
                for (int i = 0; i < 2; i++)
#pragma unroll
                    for (int j = 0; j < 2; j++)
                        if (j < jn)
                            wmma::mma_sync(acc[i][j], a[i], bf[j], acc[i][j]);
            }
        }
        __syncthreads();
    }
    // element (m, n) of a fragment lands at c[(token0 + n) * TC_LDC + row0 + m]
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 2; j++)
            wmma::store_matrix_sync(&sm.u.c[(32 * wc + 16 * j) * TC_LDC + 32 * wr + 16 * i],
                                    acc[i][j], TC_LDC, wmma::mem_col_major);
    __syncthreads();
}

__device__ __forceinline__ float silu(float g)
{
    return g / (1.0f + expf(-g));
}

// Elements per (pseudo-)block of a type's family, on the host (0: unsupported).
static inline int type_blk(uint32_t type)
{
    switch (type) {
    case KT_F32: case KT_F16: case KT_BF16: return 8;
    case KT_Q4_0: case KT_Q4_1: case KT_Q5_0: case KT_Q5_1: case KT_Q8_0: return 32;
    case KT_Q2_K: case KT_Q3_K: case KT_Q4_K: case KT_Q5_K: case KT_Q6_K: return 256;
    default: return 0;
    }
}

// Slices per block of a type's family, on the host.
static inline int type_ns(uint32_t type)
{
    switch (type_blk(type)) {
    case 8: return 1;
    case 32: return 4;
    default: return 16;
    }
}

static inline bool aligned16(const void *p)
{
    return ((uintptr_t)p & 15u) == 0;
}

// Checks a weight matrix's shape against what the kernels read.
static inline int check_shape(const char *fn, const char *what, uint32_t type, int32_t n,
                              int32_t rows, size_t row_size, struct moed_err *e)
{
    const int blk = type_blk(type);
    if (!kc_type_supported(type) || !blk)
        return moed_err_set(e, MOED_EUNSUPPORTED, "%s: %s of type %s (%u): not supported on the GPU",
                            fn, what, kern_type_name(type), (unsigned)type);
    if (n <= 0 || rows < 0)
        return moed_err_set(e, MOED_EINVAL, "%s: %s of %d x %d elements", fn, what, (int)rows,
                            (int)n);
    if (n % blk)
        return moed_err_set(e, blk == 8 ? MOED_EUNSUPPORTED : MOED_EINVAL,
                            "%s: %s of type %s: rows of %d elements, not a multiple of %d", fn, what,
                            kern_type_name(type), (int)n, blk);
    if (row_size != kern_row_size(type, n))
        return moed_err_set(e, MOED_EINVAL, "%s: %s of type %s, %d wide: row size %zu, expected %zu",
                            fn, what, kern_type_name(type), (int)n, row_size,
                            kern_row_size(type, n));
    return 0;
}

// check_shape, and the data a 16-byte aligned device pointer.
static inline int check_mat(const char *fn, const char *what, uint32_t type, const void *data,
                            int32_t n, int32_t rows, size_t row_size, struct moed_err *e)
{
    const int rc = check_shape(fn, what, type, n, rows, row_size, e);
    if (rc)
        return rc;
    if (rows > 0 && (!data || !aligned16(data)))
        return moed_err_set(e, MOED_EINVAL, "%s: %s data must be a 16-byte aligned device pointer",
                            fn, what);
    return 0;
}

// After the launches of an entry point.
static inline int launch_check(const char *fn, struct moed_err *e)
{
    const cudaError_t rc = cudaGetLastError();
    if (rc == cudaSuccess)
        return 0;
    return moed_err_set(e, rc == cudaErrorMemoryAllocation ? MOED_ENOMEM : MOED_EIO,
                        "%s: CUDA launch: %s (%s)", fn, cudaGetErrorString(rc),
                        cudaGetErrorName(rc));
}

} // namespace kcm

// X(type) for every type the kernels read, and for those the tensor-core
// path takes (F32 and F16 weights always use the matvec).
#define KCM_TYPES_TC(X)                                                                           \
    X(KT_BF16) X(KT_Q4_0) X(KT_Q4_1) X(KT_Q5_0) X(KT_Q5_1) X(KT_Q8_0) X(KT_Q2_K) X(KT_Q3_K)        \
    X(KT_Q4_K) X(KT_Q5_K) X(KT_Q6_K)
#define KCM_TYPES_ALL(X) X(KT_F32) X(KT_F16) KCM_TYPES_TC(X)

#endif
