// kc_moe_gate_up and kc_moe_down (kc.h): the routed experts' FFN over a
// grouping of (token, slot) pairs by expert.
//
// The grid is fixed, (row blocks, max_tiles): a CTA reads its tile
// (expert e, first pair p0, pairs c) from the grouping and returns at once
// when its tile index is >= *n_tiles, so the launch can be captured in a
// CUDA graph while the grouping changes from step to step.  Expert e's
// matrices are found through the device pointer tables ex->gate[e] etc.
//
//   tile <= 8 (decode): the matvec of kc_mm.cuh, T = c tokens chosen at run
//     time among compile-time bodies 1..4 (two passes for c > 4), the
//     expert's rows read once per pass for all its pairs (F32 and F16
//     experts take it for tile 64 too, 4 pairs a pass, as kc_matmul keeps
//     them off the tensor cores).  gate_up dots the gate and up rows of the
//     same index together (one pass over the activations) and writes
//     silu(g) * u; down gives a lane group up to 4 rows (kc_mm.cuh's
//     mv_plan), each activation load feeding all of them.
//   tile == 64 (prefill): kc_mm.cuh's tensor-core tile with the activation
//     rows gathered through pair_tok.  For gate_up the 64 weight rows of a
//     CTA are 32 gate rows and the same 32 up rows, so the SwiGLU is applied
//     in the epilogue.
#include "kernels/cuda/kc.h"
#include "kernels/cuda/kc_mm.cuh"

#include <cuda_runtime.h>

using namespace kcm;

namespace {

struct Tile {
    int e, p0, c;
};

// The CTA's tile (blockIdx.y); false when it is past the tiles in use.
__device__ __forceinline__ bool read_tile(const int32_t *tiles, const int32_t *n_tiles, Tile &t)
{
    const int i = (int)blockIdx.y;
    if (i >= *n_tiles)
        return false;
    t.e = tiles[3 * i];
    t.p0 = tiles[3 * i + 1];
    t.c = tiles[3 * i + 2];
    return true;
}

// ---- matvec (tile <= 8) ----------------------------------------------------------

// Pairs per pass: one kernel holds the bodies for 1..MOE_MV_T pairs and
// registers are allocated for the largest, so 8 would cost the common
// decode case (1 or 2 pairs per expert) occupancy; a tile of 5..8 pairs
// makes two passes, the second reading the expert's rows from L2.
constexpr int MOE_MV_T = 4;

// NG gate rows and the same NG up rows per lane group (row .. row + NG - 1;
// those past n_ff read the last row and write nothing).
template <int TY, int T, int NG>
__device__ __forceinline__ void gu_mv(const uint8_t *gw, const uint8_t *uw, size_t rs, int nb,
                                      int n_ff, int row, int g, int G, const float *x, int n_embd,
                                      const int32_t *pair_tok, int p0, float *act)
{
    const float *xr[T];
#pragma unroll
    for (int t = 0; t < T; t++)
        xr[t] = x + (size_t)pair_tok[p0 + t] * n_embd;
    float acc[2 * NG][T][2];
#pragma unroll
    for (int m = 0; m < 2 * NG; m++)
#pragma unroll
        for (int t = 0; t < T; t++)
            acc[m][t][0] = acc[m][t][1] = 0.0f;
    if (row < n_ff) {
        const uint8_t *wr[2 * NG];
#pragma unroll
        for (int m = 0; m < NG; m++) {
            const size_t r = (size_t)(row + m < n_ff ? row + m : n_ff - 1);
            wr[m] = gw + r * rs;
            wr[NG + m] = uw + r * rs;
        }
        mv_rows<TY, T, 2 * NG>(wr, nb, xr, g, G, acc);
    }
    float v[2 * NG * T];
#pragma unroll
    for (int m = 0; m < 2 * NG; m++)
#pragma unroll
        for (int t = 0; t < T; t++)
            v[m * T + t] = acc[m][t][0] + acc[m][t][1];
    group_sum<2 * NG * T>(v, G);
    if (g == 0) {
#pragma unroll
        for (int m = 0; m < NG; m++) {
            if (row + m < n_ff) {
#pragma unroll
                for (int t = 0; t < T; t++)
                    act[(size_t)(p0 + t) * n_ff + row + m] =
                        silu(v[m * T + t]) * v[(NG + m) * T + t];
            }
        }
    }
}

template <int TY, int NG>
__global__ void __launch_bounds__(MV_THREADS)
    k_gu_mv(const void *const *gate, const void *const *up, size_t rs, int nb, int n_ff,
            const float *__restrict__ x, int n_embd, const int32_t *__restrict__ pair_tok,
            const int32_t *__restrict__ tiles, const int32_t *__restrict__ n_tiles,
            float *__restrict__ act, int lg)
{
    Tile tl;
    if (!read_tile(tiles, n_tiles, tl))
        return;
    const int G = 1 << lg, lane = threadIdx.x & 31, g = lane & (G - 1);
    const int row =
        ((blockIdx.x * (MV_THREADS / 32) + (threadIdx.x >> 5)) * (32 >> lg) + (lane >> lg)) * NG;
    const uint8_t *gw = (const uint8_t *)gate[tl.e], *uw = (const uint8_t *)up[tl.e];
    for (int t0 = 0; t0 < tl.c; t0 += MOE_MV_T) {
        const int p = tl.p0 + t0;
        switch (tl.c - t0 < MOE_MV_T ? tl.c - t0 : MOE_MV_T) { // uniform over the CTA
#define KC_GU_T(TT)                                                                               \
    case TT: gu_mv<TY, TT, NG>(gw, uw, rs, nb, n_ff, row, g, G, x, n_embd, pair_tok, p, act); break;
            KC_GU_T(1) KC_GU_T(2) KC_GU_T(3) KC_GU_T(4)
#undef KC_GU_T
        default: break;
        }
    }
}

// NW rows per lane group, as gu_mv.
template <int TY, int T, int NW>
__device__ __forceinline__ void down_mv(const uint8_t *W, size_t rs, int nb, int n_embd, int row,
                                        int g, int G, const float *act, int n_ff, int p0, float *y)
{
    const float *xr[T];
#pragma unroll
    for (int t = 0; t < T; t++)
        xr[t] = act + (size_t)(p0 + t) * n_ff;
    float acc[NW][T][2];
#pragma unroll
    for (int m = 0; m < NW; m++)
#pragma unroll
        for (int t = 0; t < T; t++)
            acc[m][t][0] = acc[m][t][1] = 0.0f;
    if (row < n_embd) {
        const uint8_t *wr[NW];
#pragma unroll
        for (int m = 0; m < NW; m++)
            wr[m] = W + (size_t)(row + m < n_embd ? row + m : n_embd - 1) * rs;
        mv_rows<TY, T, NW>(wr, nb, xr, g, G, acc);
    }
    float v[NW * T];
#pragma unroll
    for (int m = 0; m < NW; m++)
#pragma unroll
        for (int t = 0; t < T; t++)
            v[m * T + t] = acc[m][t][0] + acc[m][t][1];
    group_sum<NW * T>(v, G);
    if (g == 0) {
#pragma unroll
        for (int m = 0; m < NW; m++) {
            if (row + m < n_embd) {
#pragma unroll
                for (int t = 0; t < T; t++)
                    y[(size_t)(p0 + t) * n_embd + row + m] = v[m * T + t];
            }
        }
    }
}

template <int TY, int NW>
__global__ void __launch_bounds__(MV_THREADS)
    k_down_mv(const void *const *down, size_t rs, int nb, int n_embd,
              const float *__restrict__ act, int n_ff, const int32_t *__restrict__ tiles,
              const int32_t *__restrict__ n_tiles, float *__restrict__ y, int lg)
{
    Tile tl;
    if (!read_tile(tiles, n_tiles, tl))
        return;
    const int G = 1 << lg, lane = threadIdx.x & 31, g = lane & (G - 1);
    const int row =
        ((blockIdx.x * (MV_THREADS / 32) + (threadIdx.x >> 5)) * (32 >> lg) + (lane >> lg)) * NW;
    const uint8_t *W = (const uint8_t *)down[tl.e];
    for (int t0 = 0; t0 < tl.c; t0 += MOE_MV_T) {
        const int p = tl.p0 + t0;
        switch (tl.c - t0 < MOE_MV_T ? tl.c - t0 : MOE_MV_T) {
#define KC_DN_T(TT)                                                                               \
    case TT: down_mv<TY, TT, NW>(W, rs, nb, n_embd, row, g, G, act, n_ff, p, y); break;
            KC_DN_T(1) KC_DN_T(2) KC_DN_T(3) KC_DN_T(4)
#undef KC_DN_T
        default: break;
        }
    }
}

// ---- tensor cores (tile == 64) ---------------------------------------------------

constexpr int GU_ROWS = TC_M / 2; // act columns per CTA: 32 gate rows + the same 32 up rows

template <int TY>
__global__ void __launch_bounds__(TC_THREADS)
    k_gu_tc(const void *const *gate, const void *const *up, size_t rs, int n_embd, int n_ff,
            const float *__restrict__ x, const int32_t *__restrict__ pair_tok,
            const int32_t *__restrict__ tiles, const int32_t *__restrict__ n_tiles,
            float *__restrict__ act)
{
    Tile tl;
    if (!read_tile(tiles, n_tiles, tl))
        return;
    __shared__ TcSmem sm;
    const int r0 = blockIdx.x * GU_ROWS, tid = threadIdx.x;
    const int c = tl.c < TC_N ? tl.c : TC_N;
    if (tid < TC_M) {
        const int r = r0 + (tid % GU_ROWS);
        const uint8_t *base = (const uint8_t *)(tid < GU_ROWS ? gate[tl.e] : up[tl.e]);
        sm.wrow[tid] = r < n_ff ? base + (size_t)r * rs : nullptr;
    } else {
        const int t = tid - TC_M;
        sm.xrow[t] = t < c ? x + (size_t)pair_tok[tl.p0 + t] * n_embd : nullptr;
    }
    __syncthreads();
    tc_tile<TY>(sm, n_embd, c);
    for (int idx = tid; idx < TC_N * GU_ROWS; idx += TC_THREADS) {
        const int t = idx / GU_ROWS, i = idx % GU_ROWS;
        if (t < c && r0 + i < n_ff) {
            const float gv = sm.u.c[t * TC_LDC + i], uv = sm.u.c[t * TC_LDC + GU_ROWS + i];
            act[(size_t)(tl.p0 + t) * n_ff + r0 + i] = silu(gv) * uv;
        }
    }
}

template <int TY>
__global__ void __launch_bounds__(TC_THREADS)
    k_down_tc(const void *const *down, size_t rs, int n_embd, int n_ff,
              const float *__restrict__ act, const int32_t *__restrict__ tiles,
              const int32_t *__restrict__ n_tiles, float *__restrict__ y)
{
    Tile tl;
    if (!read_tile(tiles, n_tiles, tl))
        return;
    __shared__ TcSmem sm;
    const int row0 = blockIdx.x * TC_M, tid = threadIdx.x;
    const int c = tl.c < TC_N ? tl.c : TC_N;
    if (tid < TC_M) {
        const int r = row0 + tid;
        sm.wrow[tid] = r < n_embd ? (const uint8_t *)down[tl.e] + (size_t)r * rs : nullptr;
    } else {
        const int t = tid - TC_M;
        sm.xrow[t] = t < c ? act + (size_t)(tl.p0 + t) * n_ff : nullptr;
    }
    __syncthreads();
    tc_tile<TY>(sm, n_ff, c);
    for (int idx = tid; idx < TC_N * TC_M; idx += TC_THREADS) {
        const int t = idx / TC_M, i = idx % TC_M;
        if (t < c && row0 + i < n_embd)
            y[(size_t)(tl.p0 + t) * n_embd + row0 + i] = sm.u.c[t * TC_LDC + i];
    }
}

// ---- launches -----------------------------------------------------------------

template <int TY> constexpr bool tc_type = TY != KT_F32 && TY != KT_F16;

template <int TY>
void gu_launch(cudaStream_t st, const struct kc_experts *ex, const float *x,
               const struct kc_moe_groups *g, int tile, int max_tiles, float *act)
{
    const int n_embd = ex->n_embd, n_ff = ex->n_ff;
    if (tile <= 8 || !tc_type<TY>) {
        const int nb = n_embd / kcq::Q<TY>::BLK;
        // one gate and one up row per group: 2 + 2 measured slower (H200, 8
        // Q4_K experts 768 x 2048, 1 token: 17.6 us vs 16.1)
        const MvPlan p = mv_plan(kcq::Q<TY>::NS, nb, 2 * n_ff * max_tiles, 5, 2);
        const int rpc = MV_THREADS >> p.lg;
        const dim3 grid((unsigned)((n_ff + rpc - 1) / rpc), (unsigned)max_tiles);
        k_gu_mv<TY, 1><<<grid, MV_THREADS, 0, st>>>(ex->gate, ex->up, ex->row_gate, nb, n_ff, x,
                                                     n_embd, g->pair_tok, g->tiles, g->n_tiles, act,
                                                     p.lg);
    } else if constexpr (tc_type<TY>) {
        const dim3 grid((unsigned)((n_ff + GU_ROWS - 1) / GU_ROWS), (unsigned)max_tiles);
        k_gu_tc<TY><<<grid, TC_THREADS, 0, st>>>(ex->gate, ex->up, ex->row_gate, n_embd, n_ff, x,
                                                  g->pair_tok, g->tiles, g->n_tiles, act);
    }
}

template <int TY>
void down_launch(cudaStream_t st, const struct kc_experts *ex, const float *act,
                 const struct kc_moe_groups *g, int tile, int max_tiles, float *y)
{
    const int n_embd = ex->n_embd, n_ff = ex->n_ff;
    if (tile <= 8 || !tc_type<TY>) {
        const int nb = n_ff / kcq::Q<TY>::BLK;
        const MvPlan p = mv_plan(kcq::Q<TY>::NS, nb, n_embd * max_tiles, 5, 4);
        const int rpc = (MV_THREADS >> p.lg) * p.nw;
        const dim3 grid((unsigned)((n_embd + rpc - 1) / rpc), (unsigned)max_tiles);
        switch (p.nw) {
#define KC_DN_NW(NW)                                                                              \
    case NW:                                                                                      \
        k_down_mv<TY, NW><<<grid, MV_THREADS, 0, st>>>(ex->down, ex->row_down, nb, n_embd, act,   \
                                                        n_ff, g->tiles, g->n_tiles, y, p.lg);     \
        break;
            KC_DN_NW(1) KC_DN_NW(2) KC_DN_NW(4)
#undef KC_DN_NW
        }
    } else if constexpr (tc_type<TY>) {
        const dim3 grid((unsigned)((n_embd + TC_M - 1) / TC_M), (unsigned)max_tiles);
        k_down_tc<TY><<<grid, TC_THREADS, 0, st>>>(ex->down, ex->row_down, n_embd, n_ff, act,
                                                    g->tiles, g->n_tiles, y);
    }
}

// Arguments shared by both entry points.
int check_common(const char *fn, const struct kc_experts *ex, const struct kc_moe_groups *g,
                 int32_t tile, int32_t max_tiles, const float *in, const float *out,
                 struct moed_err *e)
{
    if (!ex || !ex->gate || !ex->up || !ex->down || ex->n_expert <= 0)
        return moed_err_set(e, MOED_EINVAL, "%s: no experts", fn);
    if (!g || !g->pair_tok || !g->tiles || !g->n_tiles)
        return moed_err_set(e, MOED_EINVAL, "%s: no grouping", fn);
    if (tile < 1 || (tile > 8 && tile != 64))
        return moed_err_set(e, MOED_EINVAL,
                            "%s: tile %d: the kernels take tiles of 1..8 pairs (decode) or 64 "
                            "(prefill)",
                            fn, (int)tile);
    if (max_tiles > 65535)
        return moed_err_set(e, MOED_EINVAL, "%s: %d tiles is too many", fn, (int)max_tiles);
    if (!in || !out || !aligned16(in))
        return moed_err_set(e, MOED_EINVAL,
                            "%s: activations must be device pointers, the input 16-byte aligned", fn);
    return 0;
}

} // namespace

// ---- entry points ---------------------------------------------------------------

// As kc_matmul_tune, for the decode kernels (nw: down's rows per group;
// gate_up always takes 1 gate + 1 up row).
extern "C" void kc_moe_ffn_tune(int nw, int lg)
{
    mv_tune.nw = nw == 1 || nw == 2 || nw == 4 ? nw : 0;
    mv_tune.lg = lg >= 3 && lg <= 5 ? lg : 0;
}

extern "C" int kc_moe_gate_up(kc_stream s, const struct kc_experts *ex, const float *x,
                              const struct kc_moe_groups *g, int32_t tile, int32_t max_tiles,
                              float *act, struct moed_err *e)
{
    static const char fn[] = "kc_moe_gate_up";
    int rc = check_common(fn, ex, g, tile, max_tiles, x, act, e);
    if (rc)
        return rc;
    if ((rc = check_shape(fn, "expert gate", ex->type_gate, ex->n_embd, ex->n_ff, ex->row_gate, e)) ||
        (rc = check_shape(fn, "expert up", ex->type_up, ex->n_embd, ex->n_ff, ex->row_up, e)))
        return rc;
    if (ex->type_gate != ex->type_up)
        return moed_err_set(e, MOED_EUNSUPPORTED,
                            "%s: expert gate (%s) and up (%s) of different types: the fused kernel "
                            "needs one type",
                            fn, kern_type_name(ex->type_gate), kern_type_name(ex->type_up));
    if (max_tiles <= 0 || ex->n_ff == 0)
        return 0;
    const cudaStream_t st = (cudaStream_t)s;
    switch (ex->type_gate) {
#define KC_GU(TY) case TY: gu_launch<TY>(st, ex, x, g, tile, max_tiles, act); break;
        KCM_TYPES_ALL(KC_GU)
#undef KC_GU
    }
    return launch_check(fn, e);
}

extern "C" int kc_moe_down(kc_stream s, const struct kc_experts *ex, const float *act,
                           const struct kc_moe_groups *g, int32_t tile, int32_t max_tiles, float *y,
                           struct moed_err *e)
{
    static const char fn[] = "kc_moe_down";
    int rc = check_common(fn, ex, g, tile, max_tiles, act, y, e);
    if (rc)
        return rc;
    if ((rc = check_shape(fn, "expert down", ex->type_down, ex->n_ff, ex->n_embd, ex->row_down, e)))
        return rc;
    if (max_tiles <= 0 || ex->n_embd == 0)
        return 0;
    const cudaStream_t st = (cudaStream_t)s;
    switch (ex->type_down) {
#define KC_DN(TY) case TY: down_launch<TY>(st, ex, act, g, tile, max_tiles, y); break;
        KCM_TYPES_ALL(KC_DN)
#undef KC_DN
    }
    return launch_check(fn, e);
}
