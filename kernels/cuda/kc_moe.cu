// Mixture-of-experts glue of kc.h: routing (softmax + top-k), grouping of the
// (token, slot) pairs by expert, and the weighted combine into the residual.
//
// The CPU reference is model/forward.c's moe() with ops_softmax and ops_topk
// (model/ops.c) and model/moe_cpu.c's combine.  exp is computed in double and
// rounded to float, which is the correctly rounded expf: the probabilities
// (and so the top-k order) then match the CPU's except in the rarest cases.
#include "kernels/cuda/kc.h"
#include "kernels/cuda/kc_launch.cuh"

#include <cuda_runtime.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include <atomic>


#define MOE_MAX_EXPERT 1024
#define MOE_MAX_K 32
#define ROUTE_WARPS 4
#define GROUP_WARPS 8
#define GROUP_THREADS (GROUP_WARPS * 32)
#define GROUP_BATCH 8 // rounds of 32 pairs whose ids a warp loads at once


// ---- routing ----------------------------------------------------------------------

// Unsigned keys ordered as the floats (NaN aside): larger float, larger key.
__device__ static inline unsigned ordered(float f)
{
    const unsigned u = __float_as_uint(f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// The routing of one token by one warp.  The token's n_expert logits x are
// staged in p (n_expert floats of shared memory), turned into probabilities
// as ops_softmax does (max, exp(x - max), the sum in double, times
// (float)(1 / sum)), then k rounds of a warp arg-max (largest value, ties:
// lower id; __reduce_max/min_sync) pick the top k as ops_topk does; a picked
// expert is marked NaN, which no later round takes.  Lane j < k gets the
// j-th pick (its id and weight); the other lanes get id 0, weight 0.
__device__ static void route_warp(const float *x, int n_expert, int k, int norm, float *p,
                                  int *id_out, float *v_out)
{
    const int lane = threadIdx.x % 32;
    float mx = -INFINITY;
    for (int e = lane; e < n_expert; e += 32) {
        const float v = x[e];
        p[e] = v;
        mx = v > mx ? v : mx; // NaN never wins, as in ops_softmax
    }
    for (int o = 16; o > 0; o >>= 1) {
        const float y = __shfl_xor_sync(0xffffffffu, mx, o);
        mx = y > mx ? y : mx;
    }
    double sum = 0;
    for (int e = lane; e < n_expert; e += 32) {
        const float ev = (float)exp((double)(p[e] - mx));
        p[e] = ev;
        sum += (double)ev;
    }
    for (int o = 16; o > 0; o >>= 1)
        sum += __shfl_xor_sync(0xffffffffu, sum, o);
    const float inv = (float)(1.0 / sum);
    for (int e = lane; e < n_expert; e += 32) {
        const float v = __fmul_rn(p[e], inv);
        p[e] = isnan(v) ? -INFINITY : v; // ops_topk ranks NaN as -inf
    }
    __syncwarp();

    float my_v = 0.0f;
    int my_id = 0;
    for (int j = 0; j < k; j++) {
        float bv = -INFINITY;
        int bi = -1; // none yet
        for (int e = lane; e < n_expert; e += 32) {
            const float v = p[e];
            if (isnan(v)) // picked already
                continue;
            if (bi < 0 || v > bv) { // ascending e: ties keep the lower id
                bv = v;
                bi = e;
            }
        }
        // the largest value over the warp, then the lowest id holding it
        const unsigned key = bi < 0 ? 0u : ordered(bv);
        const unsigned kmax = __reduce_max_sync(0xffffffffu, key);
        const unsigned best =
            __reduce_min_sync(0xffffffffu, bi >= 0 && key == kmax ? (unsigned)bi : 0xffffffffu);
        const float val = __shfl_sync(0xffffffffu, bv, (int)(best & 31u)); // its owner lane
        if (lane == j) {
            my_v = val;
            my_id = (int)best;
        }
        __syncwarp();
        if (lane == 0 && best < (unsigned)n_expert)
            p[best] = NAN;
        __syncwarp();
    }
    if (norm) { // forward.c: a float sum in slot order, then each weight divided by it
        float s = 0.0f;
        for (int j = 0; j < k; j++)
            s = __fadd_rn(s, __shfl_sync(0xffffffffu, my_v, j));
        my_v = __fdiv_rn(my_v, s);
    }
    __syncwarp(); // p may be reused by the warp
    *id_out = my_id;
    *v_out = my_v;
}

// One warp per token (route_warp), its logits staged in the warp's slice of
// shared memory.
__global__ static void __launch_bounds__(ROUTE_WARPS * 32)
    route_k(const float *logits, int n_tok, int n_expert, int k, int norm, int32_t *ids, float *wts)
{
    extern __shared__ float route_p[]; // [ROUTE_WARPS][n_expert]
    pdl_wait();
    const int w = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int t = blockIdx.x * ROUTE_WARPS + w;
    if (t >= n_tok) // whole warps leave; no block barrier below
        return;
    int id;
    float v;
    route_warp(logits + (size_t)t * n_expert, n_expert, k, norm, route_p + (size_t)w * n_expert,
               &id, &v);
    if (lane < k) {
        ids[(size_t)t * k + lane] = id;
        wts[(size_t)t * k + lane] = v;
    }
}

extern "C" int kc_moe_route(kc_stream s, const float *logits, int32_t n_tok, int32_t n_expert,
                            int32_t k, bool norm, int32_t *ids, float *wts, struct moed_err *e)
{
    if (n_expert < 1 || n_expert > MOE_MAX_EXPERT)
        return moed_err_set(e, MOED_EUNSUPPORTED, "kc_moe_route: %d experts (1..%d)", n_expert,
                            MOE_MAX_EXPERT);
    if (k < 1 || k > MOE_MAX_K || k > n_expert)
        return moed_err_set(e, MOED_EUNSUPPORTED, "kc_moe_route: top %d of %d experts (k <= %d)",
                            k, n_expert, MOE_MAX_K);
    if (n_tok < 0)
        return moed_err_set(e, MOED_EINVAL, "kc_moe_route: %d tokens", n_tok);
    if (n_tok == 0)
        return 0;
    unsigned blocks = (unsigned)((n_tok + ROUTE_WARPS - 1) / ROUTE_WARPS);
    size_t smem = (size_t)ROUTE_WARPS * (size_t)n_expert * sizeof(float);
    cudaError_t lr = launch_k(route_k, dim3(blocks), dim3(ROUTE_WARPS * 32), smem, s, logits,
                              n_tok, n_expert, k, norm ? 1 : 0, ids, wts);
    return launched_rc(lr, e, "moe route");
}

// ---- grouping ---------------------------------------------------------------------

// Exclusive prefix sum of a[0..n) (n <= 4 * GROUP_THREADS) in place, by the
// whole block; returns the total to every thread.  Thread i takes items
// 4i .. 4i + 3.
__device__ static int block_scan(int *a, int n, int *s_warp)
{
    const int tid = threadIdx.x, lane = tid % 32, w = tid / 32;
    int loc[4], sum = 0;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int idx = tid * 4 + i;
        loc[i] = sum;
        sum += idx < n ? a[idx] : 0;
    }
    int inc = sum;
    for (int o = 1; o < 32; o <<= 1) {
        const int y = __shfl_up_sync(0xffffffffu, inc, o);
        if (lane >= o)
            inc += y;
    }
    if (lane == 31)
        s_warp[w] = inc;
    __syncthreads();
    int wbase = 0, total = 0;
    for (int i = 0; i < GROUP_WARPS; i++) {
        if (i < w)
            wbase += s_warp[i];
        total += s_warp[i];
    }
    const int excl = wbase + inc - sum;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int idx = tid * 4 + i;
        if (idx < n)
            a[idx] = excl + loc[i];
    }
    __syncthreads(); // a[] final; s_warp free again
    return total;
}

// One block: a stable counting sort of the pairs q = t * k + j by expert.
// Warp w owns the contiguous segment w of the pairs: it counts its pairs
// per expert; the counts give every (warp, expert) its first place; then
// each warp walks its segment in order, 32 pairs at a time, placing pairs
// of equal expert by their lane order (__match_any_sync).  Pairs thus keep
// their order q within an expert: by token, then slot.
// (ids may be in shared memory: kc_moe_route_group.)
struct group_smem {
    int wh[GROUP_WARPS][MOE_MAX_EXPERT]; // per warp: count, then next place
    int cnt[MOE_MAX_EXPERT];             // pairs per expert
    int off[MOE_MAX_EXPERT];             // first pair of each expert
    int toff[MOE_MAX_EXPERT];            // first tile of each expert
    int warp[GROUP_WARPS];
};

__device__ static void group_block(const int32_t *ids, int n_pairs, int k, int n_expert, int tile,
                                   int32_t *pair_tok, int32_t *pair_of, int32_t *tiles,
                                   int32_t *n_tiles, struct group_smem &sm)
{
    int(*wh)[MOE_MAX_EXPERT] = sm.wh;
    int *s_cnt = sm.cnt, *s_off = sm.off, *s_toff = sm.toff, *s_warp = sm.warp;
    const int tid = threadIdx.x, lane = tid % 32, w = tid / 32;

    for (int i = tid; i < GROUP_WARPS * n_expert; i += GROUP_THREADS)
        wh[i / n_expert][i % n_expert] = 0;
    __syncthreads();
    const int seg = (n_pairs + GROUP_WARPS - 1) / GROUP_WARPS;
    const int b0 = min(n_pairs, w * seg), b1 = min(n_pairs, b0 + seg);
#pragma unroll 8
    for (int q = b0 + lane; q < b1; q += 32) {
        const int e = ids[q];
        if ((unsigned)e < (unsigned)n_expert)
            atomicAdd(&wh[w][e], 1);
    }
    __syncthreads();
    for (int e = tid; e < n_expert; e += GROUP_THREADS) {
        int run = 0;
        for (int i = 0; i < GROUP_WARPS; i++) {
            const int c = wh[i][e];
            wh[i][e] = run; // place within the expert of warp i's first pair
            run += c;
        }
        s_cnt[e] = run;
        s_off[e] = run;
        s_toff[e] = (run + tile - 1) / tile;
    }
    __syncthreads();
    block_scan(s_off, n_expert, s_warp);
    const int total_tiles = block_scan(s_toff, n_expert, s_warp);

    for (int e = tid; e < n_expert; e += GROUP_THREADS) {
        const int c = s_cnt[e], first = s_off[e];
        int ti = s_toff[e];
        for (int x = 0; x < c; x += tile, ti++) {
            tiles[3 * (size_t)ti] = e;
            tiles[3 * (size_t)ti + 1] = first + x;
            tiles[3 * (size_t)ti + 2] = min(tile, c - x);
        }
        for (int i = 0; i < GROUP_WARPS; i++)
            wh[i][e] += first;
    }
    if (tid == 0)
        *n_tiles = total_tiles;
    __syncthreads();

    const unsigned lt = (1u << lane) - 1u; // lanes below this one
    for (int base = b0; base < b1; base += 32 * GROUP_BATCH) {
        int eb[GROUP_BATCH]; // the ids of GROUP_BATCH rounds, loaded together
#pragma unroll
        for (int u = 0; u < GROUP_BATCH; u++) {
            const int q = base + u * 32 + lane;
            eb[u] = q < b1 ? ids[q] : -1;
        }
#pragma unroll
        for (int u = 0; u < GROUP_BATCH; u++) { // rounds of 32 pairs, in order
            const int q = base + u * 32 + lane;
            const bool valid = q < b1;
            const int e = eb[u];
            const bool ok = valid && (unsigned)e < (unsigned)n_expert;
            const unsigned same = __match_any_sync(0xffffffffu, ok ? e : -1);
            const int rank = __popc(same & lt);
            int dst = -1;
            if (ok) {
                dst = wh[w][e] + rank;
                pair_tok[dst] = q / k;
            }
            if (valid)
                pair_of[q] = dst; // -1: an expert id out of range, left out
            __syncwarp();
            if (ok && rank == 0)
                wh[w][e] += __popc(same);
            __syncwarp();
        }
    }
}

__global__ static void __launch_bounds__(GROUP_THREADS)
    group_k(const int32_t *ids, int n_pairs, int k, int n_expert, int tile, int32_t *pair_tok,
            int32_t *pair_of, int32_t *tiles, int32_t *n_tiles)
{
    __shared__ struct group_smem sm;
    pdl_wait();
    group_block(ids, n_pairs, k, n_expert, tile, pair_tok, pair_of, tiles, n_tiles, sm);
}

// Routing and grouping of a small step in one block: warp w routes tokens
// w, w + GROUP_WARPS, ... (route_warp, its logits staged in the grouping's
// per-warp counts, not yet in use), writing ids and wts and a copy of the
// ids in shared memory, which group_block then sorts.  n_tok * k <= RG_MAX_PAIRS.
#define RG_MAX_PAIRS 512
static_assert(GROUP_WARPS * MOE_MAX_EXPERT * sizeof(int) >= GROUP_WARPS * MOE_MAX_EXPERT * sizeof(float),
              "route buffers fit in the counts");

__global__ static void __launch_bounds__(GROUP_THREADS)
    route_group_k(const float *logits, int n_tok, int n_expert, int k, int norm, int32_t *ids,
                  float *wts, int tile, int32_t *pair_tok, int32_t *pair_of, int32_t *tiles,
                  int32_t *n_tiles)
{
    __shared__ struct group_smem sm;
    __shared__ int32_t s_ids[RG_MAX_PAIRS];
    pdl_wait();
    const int w = threadIdx.x / 32, lane = threadIdx.x % 32;
    float *p = (float *)&sm.wh[w][0]; // n_expert <= MOE_MAX_EXPERT floats
    for (int t = w; t < n_tok; t += GROUP_WARPS) {
        int id;
        float v;
        route_warp(logits + (size_t)t * n_expert, n_expert, k, norm, p, &id, &v);
        if (lane < k) {
            ids[(size_t)t * k + lane] = id;
            wts[(size_t)t * k + lane] = v;
            s_ids[t * k + lane] = id;
        }
    }
    __syncthreads(); // s_ids complete; the route buffers are free
    group_block(s_ids, n_tok * k, k, n_expert, tile, pair_tok, pair_of, tiles, n_tiles, sm);
}

extern "C" int kc_moe_group(kc_stream s, const int32_t *ids, int32_t n_tok, int32_t k,
                            int32_t n_expert, int32_t tile, const struct kc_moe_groups *g,
                            struct moed_err *e)
{
    if (n_expert < 1 || n_expert > MOE_MAX_EXPERT)
        return moed_err_set(e, MOED_EUNSUPPORTED, "kc_moe_group: %d experts (1..%d)", n_expert,
                            MOE_MAX_EXPERT);
    if (k < 1 || k > MOE_MAX_K)
        return moed_err_set(e, MOED_EUNSUPPORTED, "kc_moe_group: %d experts per token (1..%d)", k,
                            MOE_MAX_K);
    if (tile < 1)
        return moed_err_set(e, MOED_EINVAL, "kc_moe_group: tile %d", tile);
    if (n_tok < 0 || (int64_t)n_tok * k > INT_MAX / 2)
        return moed_err_set(e, MOED_EINVAL, "kc_moe_group: %d tokens", n_tok);
    cudaError_t lr = launch_k(group_k, dim3(1), dim3(GROUP_THREADS), 0, s, ids, n_tok * k, k,
                              n_expert, tile, g->pair_tok, g->pair_of, g->tiles, g->n_tiles);
    return launched_rc(lr, e, "moe group");
}

extern "C" int kc_moe_route_group(kc_stream s, const float *logits, int32_t n_tok,
                                  int32_t n_expert, int32_t k, bool norm, int32_t *ids, float *wts,
                                  int32_t tile, const struct kc_moe_groups *g, struct moed_err *e)
{
    if (n_tok < 0 || (int64_t)n_tok * k > RG_MAX_PAIRS || tile < 1 || n_expert < 1 ||
        n_expert > MOE_MAX_EXPERT || k < 1 || k > MOE_MAX_K || k > n_expert) {
        // large steps, and every refusal (with its message): the two kernels
        int rc = kc_moe_route(s, logits, n_tok, n_expert, k, norm, ids, wts, e);
        return rc ? rc : kc_moe_group(s, ids, n_tok, k, n_expert, tile, g, e);
    }
    cudaError_t lr = launch_k(route_group_k, dim3(1), dim3(GROUP_THREADS), 0, s, logits, n_tok,
                              n_expert, k, norm ? 1 : 0, ids, wts, tile, g->pair_tok, g->pair_of,
                              g->tiles, g->n_tiles);
    return launched_rc(lr, e, "moe route+group");
}

// ---- combine ----------------------------------------------------------------------

// Blocks (token, column block of 256): x[t][i] += (sum_j w_j y[pair_of[t k + j]][i])
// + gate sh_y[t][i], the sum from 0 in slot order, each product and sum rounded
// as the C code does; thread i takes column blockIdx.y * 256 + i.
__global__ static void combine_k(float *x, const float *y, const int32_t *pair_of,
                                 const float *wts, int k, int n_embd, const float *sh_logit,
                                 const float *sh_y)
{
    __shared__ int s_row[MOE_MAX_K];
    __shared__ float s_w[MOE_MAX_K];
    __shared__ float s_gate;
    pdl_wait();
    const int t = blockIdx.x;
    if (threadIdx.x < k) {
        s_row[threadIdx.x] = pair_of[(size_t)t * k + threadIdx.x];
        s_w[threadIdx.x] = wts[(size_t)t * k + threadIdx.x];
    }
    if (threadIdx.x == 0 && sh_y) { // forward.c: 1 / (1 + expf(-s))
        const float ex = (float)exp((double)(-sh_logit[t]));
        s_gate = __fdiv_rn(1.0f, __fadd_rn(1.0f, ex));
    }
    __syncthreads();
    float *xt = x + (size_t)t * n_embd;
    const int i = blockIdx.y * blockDim.x + threadIdx.x;
    if (i < n_embd) {
        float acc = 0.0f;
#pragma unroll 8
        for (int j = 0; j < k; j++) {
            const int r = s_row[j];
            if (r >= 0)
                acc = __fadd_rn(acc, __fmul_rn(s_w[j], y[(size_t)r * n_embd + i]));
        }
        if (sh_y)
            acc = __fadd_rn(acc, __fmul_rn(s_gate, sh_y[(size_t)t * n_embd + i]));
        xt[i] = __fadd_rn(xt[i], acc);
    }
}

extern "C" int kc_moe_combine(kc_stream s, float *x, const float *y, const int32_t *pair_of,
                              const float *wts, int32_t n_tok, int32_t k, int32_t n_embd,
                              const float *sh_logit, const float *sh_y, struct moed_err *e)
{
    if (k < 1 || k > MOE_MAX_K)
        return moed_err_set(e, MOED_EUNSUPPORTED, "kc_moe_combine: %d experts per token (1..%d)",
                            k, MOE_MAX_K);
    if (n_tok < 0 || n_embd < 1 || n_embd > 65535 * 256)
        return moed_err_set(e, MOED_EINVAL, "kc_moe_combine: %d tokens of width %d", n_tok, n_embd);
    if (sh_y && !sh_logit)
        return moed_err_set(e, MOED_EINVAL, "kc_moe_combine: shared expert without its gate");
    if (n_tok == 0)
        return 0;
    dim3 grid((unsigned)n_tok, (unsigned)((n_embd + 255) / 256));
    cudaError_t lr = launch_k(combine_k, grid, dim3(256), 0, s, x, y, pair_of, wts, (int)k,
                              (int)n_embd, sh_logit, sh_y);
    return launched_rc(lr, e, "moe combine");
}
