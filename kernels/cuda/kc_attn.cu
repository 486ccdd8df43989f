// Attention kernels of kc.h: QK-norm + RoPE + KV-cache store, and causal GQA
// attention over the caches (flash decoding with a merge, and a tiled
// flash-attention kernel for prefill).
//
// The CPU reference is model/forward.c with model/ops.c and kernels/cpu/attn*.
// Rounding choices that keep the GPU within a few ulp of it:
//   - RMSNorm: the sum of squares in double, r = (float)(1 / sqrt(ss/n + eps)),
//     (x * r) * w with each product rounded (no FMA contraction).
//   - RoPE: the inverse frequencies are computed on the host with the same
//     powf as ops_rope and passed in the kernel's parameters; the angle
//     pos / scale * inv_freq is rounded in float as ops_rope does; cos and sin
//     are computed in double and rounded (the correctly rounded float values).
//   - attention: f32 math throughout, scores scale * (q . k), online softmax
//     with expf; only the summation order differs from the CPU.
#include "kernels/cuda/kc.h"
#include "kernels/cuda/kc_launch.cuh"

#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <atomic>

#include "kernels/cpu/types.h"


#define KC_MAX_HD 256    // head_dim limit
#define KC_MAX_GROUP 16  // query heads per KV head
#define SPLIT_TILE 64    // positions per tile of the split (decode) kernel
#define TILE_ROWS 64     // query rows (token, head) per CTA of the tiled kernel
#define TILE_POS 32      // positions per K/V tile of the tiled kernel
#define TILE_THREADS 256
#define TILE_PS 36       // row stride of the tiled kernel's probabilities (floats)


// Lets kernel fn use `bytes` of dynamic shared memory (above the default 48 KiB),
// once per size increase.  The call is made in relaxed capture mode, so it is
// harmless while the stream is being captured into a graph.
static int smem_limit(const void *fn, std::atomic<int> *have, int bytes, struct moed_err *e)
{
    if (bytes <= 48 * 1024 || bytes <= have->load())
        return 0;
    cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed;
    cudaThreadExchangeStreamCaptureMode(&mode);
    cudaError_t rc = cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
    cudaThreadExchangeStreamCaptureMode(&mode);
    if (rc != cudaSuccess) {
        (void)cudaGetLastError();
        return moed_err_set(e, MOED_EUNSUPPORTED, "CUDA: %d bytes of shared memory: %s", bytes,
                            cudaGetErrorString(rc));
    }
    int cur = have->load();
    while (cur < bytes && !have->compare_exchange_weak(cur, bytes)) {
    }
    return 0;
}

__device__ static inline float warp_max(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

__device__ static inline float warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ static inline double warp_sum_d(double v)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// ---- QK-norm, RoPE, cache store ------------------------------------------------

struct rope_params {
    int32_t n_head, n_head_kv, hd, n_rot;
    int32_t qk_norm, layer;
    int32_t neox, f16;
    float eps, scale;
    float inv_freq[KC_MAX_HD / 2]; // 1 / powf(base, 2i / n_rot), as ops_rope
};

// Blocks (token, b), one warp per head: of the q heads then the k heads,
// warp w of block b takes head b * n_warps + w (and every n_warps *
// gridDim.y-th after it).  KC_QK_FULL has one block per token (its norms
// read the whole of q and k before any head is rewritten).  Each warp
// stages its head in shared memory (hd floats), normalises it, rotates the
// pairs (each pair by one lane), and writes q in place or k (and v) to the
// caches; a position outside its cache (pos < 0 or >= n_ctx) is not stored.
__global__ static void qk_rope_store_k(const struct rope_params P, float *q, const float *k,
                                       const float *v, const float *qn, const float *kn,
                                       const struct kc_tok *tok)
{
    extern __shared__ float rope_buf[]; // [n_warps][hd]
    __shared__ float s_cos[KC_MAX_HD / 2], s_sin[KC_MAX_HD / 2];
    __shared__ double s_red[2][32];
    __shared__ float s_r[2];
    pdl_wait();
    const int hd = P.hd, half = P.n_rot / 2;
    const int nw = blockDim.x / 32, w = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int t = blockIdx.x;
    const int32_t pos = tok[t].pos, n_ctx = tok[t].n_ctx;
    const size_t qd = (size_t)P.n_head * hd, kvd = (size_t)P.n_head_kv * hd;
    float *qt = q + (size_t)t * qd;
    const float *kt = k + (size_t)t * kvd, *vt = v + (size_t)t * kvd;
    float *buf = rope_buf + (size_t)w * hd;

    // the angles of this position, shared by every head
    const float p = __fdiv_rn((float)pos, P.scale);
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        float a = __fmul_rn(p, P.inv_freq[i]);
        double sd, cd;
        sincos((double)a, &sd, &cd);
        s_cos[i] = (float)cd;
        s_sin[i] = (float)sd;
    }
    if (P.qk_norm == KC_QK_FULL) { // one RMSNorm over all of q, one over all of k
        double sq = 0, sk = 0;
        for (size_t i = threadIdx.x; i < qd; i += blockDim.x) {
            double x = (double)qt[i];
            sq += x * x;
        }
        for (size_t i = threadIdx.x; i < kvd; i += blockDim.x) {
            double x = (double)kt[i];
            sk += x * x;
        }
        sq = warp_sum_d(sq);
        sk = warp_sum_d(sk);
        if (lane == 0) {
            s_red[0][w] = sq;
            s_red[1][w] = sk;
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            double a = 0, b = 0;
            for (int i = 0; i < nw; i++) {
                a += s_red[0][i];
                b += s_red[1][i];
            }
            s_r[0] = (float)(1.0 / sqrt(a / (double)qd + (double)P.eps));
            s_r[1] = (float)(1.0 / sqrt(b / (double)kvd + (double)P.eps));
        }
    }
    // angles and norms are ready; every read of q for the full norm is done
    // before any head of q is rewritten below
    __syncthreads();

    const int n_all = P.n_head + P.n_head_kv;
    for (int h = blockIdx.y * nw + w; h < n_all; h += nw * gridDim.y) {
        const bool isq = h < P.n_head;
        const int hh = isq ? h : h - P.n_head;
        const float *src = isq ? qt + (size_t)hh * hd : kt + (size_t)hh * hd;
        double ss = 0;
        for (int i = lane; i < hd; i += 32) {
            float x = src[i];
            buf[i] = x;
            ss += (double)x * (double)x;
        }
        if (P.qk_norm == KC_QK_HEAD) {
            ss = warp_sum_d(ss);
            const float r = (float)(1.0 / sqrt(ss / (double)hd + (double)P.eps));
            const float *wn = isq ? qn : kn;
            for (int i = lane; i < hd; i += 32)
                buf[i] = __fmul_rn(__fmul_rn(buf[i], r), wn[i]);
        } else if (P.qk_norm == KC_QK_FULL) {
            const float r = s_r[isq ? 0 : 1];
            const float *wn = (isq ? qn : kn) + (size_t)hh * hd;
            for (int i = lane; i < hd; i += 32)
                buf[i] = __fmul_rn(__fmul_rn(buf[i], r), wn[i]);
        }
        __syncwarp();
        for (int i = lane; i < half; i += 32) {
            const int i0 = P.neox ? i : 2 * i, i1 = P.neox ? i + half : 2 * i + 1;
            const float x0 = buf[i0], x1 = buf[i1], c = s_cos[i], s = s_sin[i];
            buf[i0] = __fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, s));
            buf[i1] = __fadd_rn(__fmul_rn(x1, c), __fmul_rn(x0, s));
        }
        __syncwarp();
        if (isq) {
            for (int i = lane; i < hd; i += 32)
                qt[(size_t)hh * hd + i] = buf[i];
        } else if (pos >= 0 && pos < n_ctx) {
            const size_t off = ((size_t)P.layer * (size_t)n_ctx + (size_t)pos) * kvd + (size_t)hh * hd;
            const float *vh = vt + (size_t)hh * hd;
            if (P.f16) {
                __half *kc = (__half *)tok[t].k + off, *vc = (__half *)tok[t].v + off;
                for (int i = lane; i < hd; i += 32) {
                    kc[i] = __float2half_rn(buf[i]);
                    vc[i] = __float2half_rn(vh[i]);
                }
            } else {
                float *kc = (float *)tok[t].k + off, *vc = (float *)tok[t].v + off;
                for (int i = lane; i < hd; i += 32) {
                    kc[i] = buf[i];
                    vc[i] = vh[i];
                }
            }
        }
        __syncwarp(); // buf is reused by this warp's next head
    }
}

static int check_shape(const struct kc_attn_shape *sh, const char *fn, struct moed_err *e)
{
    if (sh->kv_type != KT_F32 && sh->kv_type != KT_F16)
        return moed_err_set(e, MOED_EUNSUPPORTED, "%s: KV cache type %u (F32 or F16 only)", fn,
                            sh->kv_type);
    if (sh->head_dim < 8 || sh->head_dim > KC_MAX_HD || sh->head_dim % 8)
        return moed_err_set(e, MOED_EUNSUPPORTED,
                            "%s: head_dim %d (a multiple of 8 up to %d only)", fn, sh->head_dim,
                            KC_MAX_HD);
    if (sh->n_head < 1 || sh->n_head_kv < 1 || sh->n_head % sh->n_head_kv)
        return moed_err_set(e, MOED_EINVAL, "%s: %d query heads over %d KV heads", fn, sh->n_head,
                            sh->n_head_kv);
    if (sh->n_head / sh->n_head_kv > KC_MAX_GROUP)
        return moed_err_set(e, MOED_EUNSUPPORTED, "%s: %d query heads per KV head (%d at most)", fn,
                            sh->n_head / sh->n_head_kv, KC_MAX_GROUP);
    if (sh->layer < 0)
        return moed_err_set(e, MOED_EINVAL, "%s: layer %d", fn, sh->layer);
    return 0;
}

extern "C" int kc_qk_rope_store(kc_stream s, const struct kc_attn_shape *sh, float *q,
                                const float *k, const float *v, const float *q_norm,
                                const float *k_norm, const struct kc_tok *tok, int32_t n_tok,
                                struct moed_err *e)
{
    int rc = check_shape(sh, "kc_qk_rope_store", e);
    if (rc)
        return rc;
    if (sh->n_rot < 0 || sh->n_rot > sh->head_dim || sh->n_rot % 2)
        return moed_err_set(e, MOED_EINVAL, "kc_qk_rope_store: n_rot %d with head_dim %d",
                            sh->n_rot, sh->head_dim);
    if (sh->qk_norm != KC_QK_NONE && sh->qk_norm != KC_QK_HEAD && sh->qk_norm != KC_QK_FULL)
        return moed_err_set(e, MOED_EINVAL, "kc_qk_rope_store: QK-norm kind %d", sh->qk_norm);
    if (sh->qk_norm != KC_QK_NONE && (!q_norm || !k_norm))
        return moed_err_set(e, MOED_EINVAL, "kc_qk_rope_store: QK-norm without its weights");
    if (!(sh->rope_scale > 0) || !(sh->rope_base > 0))
        return moed_err_set(e, MOED_EINVAL, "kc_qk_rope_store: RoPE base %g, scale %g",
                            (double)sh->rope_base, (double)sh->rope_scale);
    if (n_tok < 0)
        return moed_err_set(e, MOED_EINVAL, "kc_qk_rope_store: %d tokens", n_tok);
    if (n_tok == 0)
        return 0;
    struct rope_params P;
    memset(&P, 0, sizeof P);
    P.n_head = sh->n_head;
    P.n_head_kv = sh->n_head_kv;
    P.hd = sh->head_dim;
    P.n_rot = sh->n_rot;
    P.qk_norm = sh->qk_norm;
    P.layer = sh->layer;
    P.neox = sh->rope_neox ? 1 : 0;
    P.f16 = sh->kv_type == KT_F16;
    P.eps = sh->eps;
    P.scale = sh->rope_scale;
    for (int i = 0; i < sh->n_rot / 2; i++) // exactly ops_rope's expression (host libm)
        P.inv_freq[i] = 1.0f / powf(sh->rope_base, (float)(2 * i) / (float)sh->n_rot);
    int n_all = sh->n_head + sh->n_head_kv;
    int cap = sh->qk_norm == KC_QK_FULL ? 32 : 8; // warps per block
    int nw = n_all < cap ? n_all : cap;
    int nb = sh->qk_norm == KC_QK_FULL ? 1 : (n_all + nw - 1) / nw;
    size_t smem = (size_t)nw * (size_t)sh->head_dim * sizeof(float);
    cudaError_t lr = launch_k(qk_rope_store_k, dim3((unsigned)n_tok, (unsigned)nb),
                              dim3((unsigned)(nw * 32)), smem, s, P, q, k, v, q_norm, k_norm, tok);
    return launched_rc(lr, e, "qk_rope_store");
}

// ---- attention: common pieces --------------------------------------------------

template <typename KV> struct kv_traits;
template <> struct kv_traits<float> {
    // 4 values at element offset c4 * 4 of a row in shared memory
    __device__ static inline float4 load4(const unsigned char *row, int c4)
    {
        return *(const float4 *)(row + (size_t)c4 * 16);
    }
};

__device__ static inline float2 h2f(unsigned int u)
{
    __half2 h = *reinterpret_cast<const __half2 *>(&u);
    return __half22float2(h);
}

template <> struct kv_traits<__half> {
    __device__ static inline float4 load4(const unsigned char *row, int c4)
    {
        uint2 u = *(const uint2 *)(row + (size_t)c4 * 8);
        float2 a = h2f(u.x), b = h2f(u.y);
        return make_float4(a.x, a.y, b.x, b.y);
    }
};

__device__ static inline void cp_async16(void *smem, const void *gmem)
{
    unsigned int sa = (unsigned int)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(sa), "l"(gmem) : "memory");
}

__device__ static inline void cp_async_commit()
{
    asm volatile("cp.async.commit_group;\n" ::: "memory");
}

__device__ static inline void cp_async_wait1()
{
    asm volatile("cp.async.wait_group 1;\n" ::: "memory");
}

__device__ static inline void cp_async_wait0()
{
    asm volatile("cp.async.wait_group 0;\n" ::: "memory");
}

// Positions per split of a token with n_pos positions: equal chunks, whole tiles.
__device__ static inline int32_t split_chunk(int32_t n_pos, int n_split)
{
    const int32_t chunk = (n_pos + n_split - 1) / n_split;
    return (chunk + SPLIT_TILE - 1) / SPLIT_TILE * SPLIT_TILE;
}

// Positions 0..lim-1 of a token: pos + 1, within its cache.
__device__ static inline int32_t token_limit(const struct kc_tok &tk)
{
    int32_t n = tk.pos + 1;
    n = n < tk.n_ctx ? n : tk.n_ctx;
    return n > 0 ? n : 0;
}

// ---- attention: split kernel (flash decoding) --------------------------------------

// Shared memory of the split kernel (byte offsets), for head_dim hd, group G,
// KV element size es and ns pipeline stages.
struct split_smem {
    int kv;    // [ns][K, V][SPLIT_TILE][rb]: the staged tiles; after the loop, the
               // per-position-group partial outputs [jg][G][hd] floats
    int q;     // [G][hd] the group's queries
    int sp;    // [SPLIT_DS][G][SPLIT_TILE] partial scores, one per slice of head_dim
    int p;     // [G][SPLIT_TILE] probabilities of the tile
    int m, l, r; // [G] running maximum, running sum, rescale of the tile
    int total;
};

#define SPLIT_THREADS 256
#define SPLIT_DS 8 // slices of head_dim for the scores (at most; one per warp)

__host__ __device__ static inline int split_jg(int hd)
{
    int jg = SPLIT_THREADS / (hd / 4); // position groups of the value phase
    return jg < SPLIT_TILE ? jg : SPLIT_TILE;
}

__host__ __device__ static inline struct split_smem split_layout(int hd, int G, int es, int ns)
{
    struct split_smem L;
    const int rb = hd * es + 16;
    int kv = ns * 2 * SPLIT_TILE * rb, red = split_jg(hd) * G * hd * 4;
    kv = kv > red ? kv : red;
    L.kv = 0;
    L.q = (kv + 15) / 16 * 16;
    L.sp = L.q + G * hd * 4;
    L.p = L.sp + SPLIT_DS * G * SPLIT_TILE * 4;
    L.m = L.p + G * SPLIT_TILE * 4;
    L.l = L.m + G * 4;
    L.r = L.l + G * 4;
    L.total = L.r + G * 4;
    return L;
}

// 8 values of a K row in shared memory from element 8 c on.
__device__ static inline void kchunk8(const float *, const unsigned char *row, int c, float *k)
{
    const float4 a = *(const float4 *)(row + (size_t)c * 32), b = *(const float4 *)(row + (size_t)c * 32 + 16);
    k[0] = a.x; k[1] = a.y; k[2] = a.z; k[3] = a.w;
    k[4] = b.x; k[5] = b.y; k[6] = b.z; k[7] = b.w;
}

__device__ static inline void kchunk8(const __half *, const unsigned char *row, int c, float *k)
{
    const uint4 u = *(const uint4 *)(row + (size_t)c * 16);
    const float2 a = h2f(u.x), b = h2f(u.y), d = h2f(u.z), e = h2f(u.w);
    k[0] = a.x; k[1] = a.y; k[2] = b.x; k[3] = b.y;
    k[4] = d.x; k[5] = d.y; k[6] = e.x; k[7] = e.y;
}

// One CTA (8 warps) per (token, KV head, split): the G query heads of the
// group over the split's chunk of positions, in tiles of 64 positions staged
// with cp.async, ns - 1 tiles ahead (ns = 3 stages, fewer where shared memory
// is short: f32 with head_dim 256 has one), each warp copying whole rows.
// Per tile:
//   scores: warp w = (slice sl = w % DS, head set hs = w / DS) with DS =
//     min(8, hd / 8): lane j (positions j and j + 32) reads the 8-value
//     chunks sl, sl + DS, ... of its K rows once and accumulates them against
//     each of its heads g = hs, hs + 8 / DS, ...; the slices' partial dots
//     go to shared memory.
//   softmax: warp w takes heads w, w + 8, ...: lane j sums the partials of
//     positions j and j + 32, then the online softmax update (max, rescale,
//     exp, sum).
//   values: thread (c4 = tid % (hd / 4), jg = tid / (hd / 4)) keeps 4
//     columns of every head and accumulates positions jg, jg + JG, ... .
// After the last tile the JG partial outputs are summed in a fixed order.
// n_split == 1, or all positions in split 0: out gets the normalised output
// (from split 0); else ws gets the unnormalised sums, the maximum and the
// sum of exponentials.
// EXACT: the group is MAXG (no guards); else G <= MAXG is read at run time.
template <typename KV, int MAXG, bool EXACT>
__global__ static void __launch_bounds__(SPLIT_THREADS, 1)
    attn_split_k(const float *q, const struct kc_tok *tok, int n_head, int n_head_kv, int hd,
                 int layer, int n_split, int ns, float scale, float *ws, float *out)
{
    extern __shared__ __align__(16) unsigned char smem[];
    typedef kv_traits<KV> T;
    const int t = blockIdx.x, g = blockIdx.y, sp = blockIdx.z;
    const int G = EXACT ? MAXG : n_head / n_head_kv;
    const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
    const struct split_smem L = split_layout(hd, G, (int)sizeof(KV), ns);
    const int rb = hd * (int)sizeof(KV) + 16;
    const int cpr = hd * (int)sizeof(KV) / 16; // 16-byte chunks per row
    unsigned char *kvbuf = smem + L.kv;
    float *qs = (float *)(smem + L.q), *sps = (float *)(smem + L.sp), *ps = (float *)(smem + L.p);
    float *ms = (float *)(smem + L.m), *ls = (float *)(smem + L.l), *rs = (float *)(smem + L.r);

    pdl_wait();
    const struct kc_tok tk = tok[t];
    const int32_t n_pos = token_limit(tk);
    const int32_t chunk = split_chunk(n_pos, n_split);
    int32_t p_begin = sp * chunk, p_end = p_begin + chunk;
    p_end = p_end < n_pos ? p_end : n_pos;
    p_begin = p_begin < p_end ? p_begin : p_end; // empty split
    // all positions in split 0 (short contexts): it writes the output, the
    // other splits nothing, and the merge skips the token (attn_merge_k)
    const bool direct = n_split == 1 || n_pos <= chunk;
    if (direct && sp > 0)
        return;
    const size_t n_kv = (size_t)n_head_kv * hd;
    const size_t base = (size_t)layer * (size_t)tk.n_ctx * n_kv + (size_t)g * hd;
    const KV *kbase = (const KV *)tk.k + base, *vbase = (const KV *)tk.v + base;
    const int ntiles = (p_end - p_begin + SPLIT_TILE - 1) / SPLIT_TILE;

    // the copies of a warp: rpi rows at a time when a row is at most 32
    // chunks and 32 is a multiple of them (lane = row lr, chunk lc), else one
    // row at a time with chunks lane, lane + 32, ...
    const int rpi = (cpr <= 32 && 32 % cpr == 0) ? 32 / cpr : 1;
    const int lr = rpi > 1 ? lane / cpr : 0, lc = rpi > 1 ? lane % cpr : lane;
    const int cstep = rpi > 1 ? cpr : 32;
    auto load_tile = [&](int it) { // tile it of this split -> stage it % ns
        if (it >= ntiles)
            return;
        const int p0 = p_begin + it * SPLIT_TILE;
        const int nt = min(SPLIT_TILE, p_end - p0);
        unsigned char *dst = kvbuf + (size_t)(it % ns) * 2 * SPLIT_TILE * rb;
        for (int j = w * rpi + lr; j < nt; j += (SPLIT_THREADS / 32) * rpi) {
            const char *ksrc = (const char *)(kbase + (size_t)(p0 + j) * n_kv);
            const char *vsrc = (const char *)(vbase + (size_t)(p0 + j) * n_kv);
            unsigned char *kd = dst + (size_t)j * rb, *vd = kd + (size_t)SPLIT_TILE * rb;
            for (int cc = lc; cc < cpr; cc += cstep) {
                cp_async16(kd + cc * 16, ksrc + cc * 16);
                cp_async16(vd + cc * 16, vsrc + cc * 16);
            }
        }
    };
    for (int it = 0; it < ns - 1; it++) { // the prologue: ns - 1 groups, some maybe empty
        load_tile(it);
        cp_async_commit();
    }

    for (int i = tid; i < G * hd; i += SPLIT_THREADS)
        qs[i] = q[((size_t)t * n_head + (size_t)g * G) * hd + i];
    for (int i = tid; i < G; i += SPLIT_THREADS) {
        ms[i] = -INFINITY;
        ls[i] = 0.0f;
    }

    const int ch8 = hd / 8;
    const int DS = ch8 < SPLIT_DS ? ch8 : SPLIT_DS;
    const int NHS = SPLIT_DS / DS; // head sets
    const int sl = w % DS, hs = w / DS;
    const int hd4 = hd / 4, JG = split_jg(hd);
    const int c4 = tid % hd4, jg = tid / hd4;
    float4 acc[MAXG];
#pragma unroll
    for (int i = 0; i < MAXG; i++)
        acc[i] = make_float4(0.f, 0.f, 0.f, 0.f);

    for (int it = 0; it < ntiles; it++) {
        if (ns == 1) { // one stage: refilled once everyone is done with tile it - 1
            __syncthreads();
            load_tile(it);
            cp_async_commit();
        }
        // groups committed so far: ns - 1 + it (+ 1 with one stage); tile it is group it
        if (ns == 3)
            cp_async_wait1();
        else
            cp_async_wait0();
        __syncthreads(); // tile it is in for everyone; tile it - 1's stage is free; qs, ms, ls
        if (ns > 1) {
            load_tile(it + ns - 1);
            cp_async_commit();
        }
        const int p0 = p_begin + it * SPLIT_TILE;
        const int nt = min(SPLIT_TILE, p_end - p0);
        const unsigned char *ks = kvbuf + (size_t)(it % ns) * 2 * SPLIT_TILE * rb;
        const unsigned char *vs = ks + (size_t)SPLIT_TILE * rb;

        // partial scores of slice sl for the heads of set hs, positions lane and
        // lane + 32 (rows past nt hold stale values: their sums are never used)
        if (hs < NHS) {
            float sa[MAXG], sb[MAXG];
#pragma unroll
            for (int i = 0; i < MAXG; i++)
                sa[i] = sb[i] = 0.0f;
            const unsigned char *ka = ks + (size_t)lane * rb, *kb = ka + (size_t)32 * rb;
            for (int c = sl; c < ch8; c += DS) {
                float fa[8], fb[8];
                kchunk8((const KV *)0, ka, c, fa);
                kchunk8((const KV *)0, kb, c, fb);
#pragma unroll
                for (int i = 0; i < MAXG; i++) {
                    // no branch here (the heads' chains interleave): a head past G
                    // (head sets with fewer heads) recomputes head G - 1, never stored
                    const int gg = min(hs + i * NHS, G - 1);
                    {
                        const float4 qa = *(const float4 *)(qs + gg * hd + c * 8);
                        const float4 qb = *(const float4 *)(qs + gg * hd + c * 8 + 4);
                        float a = sa[i], b = sb[i];
                        a = fmaf(qa.x, fa[0], a);
                        b = fmaf(qa.x, fb[0], b);
                        a = fmaf(qa.y, fa[1], a);
                        b = fmaf(qa.y, fb[1], b);
                        a = fmaf(qa.z, fa[2], a);
                        b = fmaf(qa.z, fb[2], b);
                        a = fmaf(qa.w, fa[3], a);
                        b = fmaf(qa.w, fb[3], b);
                        a = fmaf(qb.x, fa[4], a);
                        b = fmaf(qb.x, fb[4], b);
                        a = fmaf(qb.y, fa[5], a);
                        b = fmaf(qb.y, fb[5], b);
                        a = fmaf(qb.z, fa[6], a);
                        b = fmaf(qb.z, fb[6], b);
                        a = fmaf(qb.w, fa[7], a);
                        b = fmaf(qb.w, fb[7], b);
                        sa[i] = a;
                        sb[i] = b;
                    }
                }
            }
#pragma unroll
            for (int i = 0; i < MAXG; i++) {
                const int gg = hs + i * NHS;
                if (gg < G) {
                    sps[(sl * G + gg) * SPLIT_TILE + lane] = sa[i];
                    sps[(sl * G + gg) * SPLIT_TILE + lane + 32] = sb[i];
                }
            }
        }
        __syncthreads();

        // online softmax: warp per head, lane per positions lane and lane + 32
        for (int gg = w; gg < G; gg += SPLIT_THREADS / 32) {
            float s0 = -INFINITY, s1 = -INFINITY;
            if (lane < nt) {
                float d = 0.0f;
                for (int i = 0; i < DS; i++)
                    d += sps[(i * G + gg) * SPLIT_TILE + lane];
                s0 = scale * d;
            }
            if (lane + 32 < nt) {
                float d = 0.0f;
                for (int i = 0; i < DS; i++)
                    d += sps[(i * G + gg) * SPLIT_TILE + lane + 32];
                s1 = scale * d;
            }
            const float mx = warp_max(fmaxf(s0, s1));
            const float m_old = ms[gg];
            float r = 1.0f, m_new = m_old;
            if (mx > m_old) {
                r = expf(m_old - mx); // 0 on the first tile
                m_new = mx;
            }
            const float e0 = lane < nt ? expf(s0 - m_new) : 0.0f;
            const float e1 = lane + 32 < nt ? expf(s1 - m_new) : 0.0f;
            const float sum = warp_sum(e0 + e1);
            ps[gg * SPLIT_TILE + lane] = e0;
            ps[gg * SPLIT_TILE + lane + 32] = e1;
            __syncwarp();
            if (lane == 0) {
                ms[gg] = m_new;
                ls[gg] = ls[gg] * r + sum;
                rs[gg] = r;
            }
        }
        __syncthreads();

        // values: 4 columns of every head, positions jg, jg + JG, ...
        if (jg < JG) {
#pragma unroll
            for (int i = 0; i < MAXG; i++)
                if (i < G) {
                    const float r = rs[i];
                    acc[i].x *= r;
                    acc[i].y *= r;
                    acc[i].z *= r;
                    acc[i].w *= r;
                }
#pragma unroll 2
            for (int j = jg; j < nt; j += JG) {
                const float4 vv = T::load4(vs + (size_t)j * rb, c4);
#pragma unroll
                for (int i = 0; i < MAXG; i++)
                    if (i < G) {
                        const float pj = ps[i * SPLIT_TILE + j];
                        acc[i].x = fmaf(pj, vv.x, acc[i].x);
                        acc[i].y = fmaf(pj, vv.y, acc[i].y);
                        acc[i].z = fmaf(pj, vv.z, acc[i].z);
                        acc[i].w = fmaf(pj, vv.w, acc[i].w);
                    }
            }
        }
    }

    // the position groups' partial outputs, summed in group order
    __syncthreads(); // every read of the stages is done (and ms, ls are final)
    float *red = (float *)(smem + L.kv);
    if (jg < JG) {
#pragma unroll
        for (int i = 0; i < MAXG; i++)
            if (i < G)
                *(float4 *)(red + ((size_t)jg * G + i) * hd + (size_t)c4 * 4) = acc[i];
    }
    __syncthreads();
    for (int o = tid; o < G * hd4; o += SPLIT_THREADS) {
        const int gg = o / hd4, cc = o - gg * hd4;
        float4 a = *(const float4 *)(red + (size_t)gg * hd + (size_t)cc * 4);
        for (int i = 1; i < JG; i++) {
            const float4 b = *(const float4 *)(red + ((size_t)i * G + gg) * hd + (size_t)cc * 4);
            a.x += b.x;
            a.y += b.y;
            a.z += b.z;
            a.w += b.w;
        }
        const size_t h = (size_t)g * G + gg;
        float *o4;
        if (direct) {
            const float l = ls[gg];
            const float inv = l > 0 ? 1.0f / l : 0.0f;
            a.x *= inv;
            a.y *= inv;
            a.z *= inv;
            a.w *= inv;
            o4 = out + ((size_t)t * n_head + h) * hd + (size_t)cc * 4;
        } else {
            o4 = ws + (((size_t)t * n_head + h) * n_split + sp) * (size_t)(hd + 2) + (size_t)cc * 4;
        }
        o4[0] = a.x;
        o4[1] = a.y;
        o4[2] = a.z;
        o4[3] = a.w;
    }
    if (!direct) {
        for (int i = tid; i < G; i += SPLIT_THREADS) {
            const size_t h = (size_t)g * G + i;
            float *o = ws + (((size_t)t * n_head + h) * n_split + sp) * (size_t)(hd + 2);
            o[hd] = ms[i];
            o[hd + 1] = ls[i];
        }
    }
}

// One CTA per (head, token): out = sum_s acc_s e^(m_s - M) / sum_s l_s e^(m_s - M).
// The splits' maxima and sums are read once into shared memory (dynamic:
// 2 (n_split + 4) floats, the 4 beyond n_split padding that unrolled reads
// may touch); warp 0 reduces them; the weights e^(m_s - M) replace the
// maxima; empty splits (l = 0) weigh 0.
__global__ static void attn_merge_k(const float *ws, const struct kc_tok *tok, int n_head, int hd,
                                    int n_split, float *out)
{
    extern __shared__ float mw[]; // [n_split + 4] maxima, then weights; [n_split + 4] sums
    __shared__ float s_m, s_inv;
    pdl_wait();
    const int h = blockIdx.x, t = blockIdx.y, tid = threadIdx.x;
    const int32_t n_pos = token_limit(tok[t]);
    if (n_pos <= split_chunk(n_pos, n_split)) // written by split 0 (attn_split_k)
        return;
    const int np = n_split + 4;
    float *lw = mw + np;
    const size_t stride = (size_t)hd + 2;
    const float *part = ws + ((size_t)t * n_head + h) * n_split * stride;
    for (int s = tid; s < np; s += blockDim.x) {
        float m = -INFINITY, l = 0.0f;
        if (s < n_split) {
            l = part[s * stride + hd + 1];
            m = l > 0 ? part[s * stride + hd] : -INFINITY;
        }
        mw[s] = m;
        lw[s] = l > 0 ? l : 0.0f;
    }
    __syncthreads();
    if (tid < 32) {
        float M = -INFINITY;
        for (int s = tid; s < n_split; s += 32)
            M = fmaxf(M, mw[s]);
        M = warp_max(M);
        float L = 0.0f;
        for (int s = tid; s < n_split; s += 32)
            if (mw[s] != -INFINITY)
                L += lw[s] * expf(mw[s] - M);
        L = warp_sum(L);
        if (tid == 0) {
            s_m = M;
            s_inv = L > 0 ? 1.0f / L : 0.0f;
        }
    }
    __syncthreads();
    const float M = s_m, inv = s_inv;
    for (int s = tid; s < np; s += blockDim.x) // each thread its own entries
        mw[s] = mw[s] == -INFINITY ? 0.0f : expf(mw[s] - M);
    __syncthreads();
    for (int d = tid; d < hd; d += blockDim.x) {
        float o = 0.0f;
#pragma unroll 4
        for (int s = 0; s < n_split; s++)
            o += part[s * stride + d] * mw[s];
        out[((size_t)t * n_head + h) * hd + d] = o * inv;
    }
}

// ---- attention: tiled kernel (prefill) ------------------------------------------

// Tile-kernel shared memory: Q [64][hd+4], then per warp-group K and V
// [32][hd+4] and P [64][36] floats.
static inline int tile_smem_bytes(int hd, int ng)
{
    return (TILE_ROWS * (hd + 4) + ng * (2 * TILE_POS * (hd + 4) + TILE_ROWS * TILE_PS)) * 4;
}

// The barrier of warp-group wg alone (256 threads; id 0 is __syncthreads').
__device__ static inline void group_sync(int wg)
{
    asm volatile("bar.sync %0, %1;\n" ::"r"(1 + wg), "r"(TILE_THREADS) : "memory");
}

// One CTA per (tile of TPC = 64 / G consecutive tokens of the step, KV head):
// its rows are the (token, query head) pairs, row r = token r / G, head
// g * G + r % G.  The tokens are grouped by cache (equal k, v, n_ctx; in
// the usual case one group); for each group, K/V tiles of 32 positions up
// to the group's largest limit are loaded into shared memory (as f32) once
// for all the CTA's rows; rows of other groups, and positions past a row's
// own pos, are masked.  NG warp-groups of 256 threads take alternate K/V
// tiles (group wg: tiles wg, wg + NG, ...), each with its own softmax state,
// merged at the end.  In a group, thread (tr, tc) = (tid / 16, tid % 16)
// owns rows 4 tr .. 4 tr + 3: scores of positions tc and tc + 16, and
// output columns 4 (tc + 16 c) .. + 3 for c < CH; a row's softmax state is
// kept (the same) in its 16 threads, reduced with shuffles within the half
// warp.
template <typename KV, int CH, int NG>
__global__ static void __launch_bounds__(TILE_THREADS * NG, 1)
    attn_tile_k(const float *q, const struct kc_tok *tok, int n_tok, int n_head, int n_head_kv,
                int hd, int layer, float scale, float *out)
{
    extern __shared__ __align__(16) float tsm[];
    __shared__ int32_t s_lim[TILE_ROWS], s_lead[TILE_ROWS], s_nctx[TILE_ROWS];
    __shared__ const void *s_k[TILE_ROWS];
    __shared__ const void *s_v[TILE_ROWS];
    const int G = n_head / n_head_kv, TPC = TILE_ROWS / G, R = TPC * G;
    const int g = blockIdx.y;
    const int t0 = (gridDim.x - 1 - blockIdx.x) * TPC; // the longest rows first
    const int wg = threadIdx.x / TILE_THREADS, tid = threadIdx.x % TILE_THREADS;
    const int tr = tid >> 4, tc = tid & 15;
    const int QS = hd + 4, hd4 = hd / 4;
    float *Qs = tsm;
    float *Ks = Qs + TILE_ROWS * QS + wg * (2 * TILE_POS * QS + TILE_ROWS * TILE_PS);
    float *Vs = Ks + TILE_POS * QS, *Ps = Vs + TILE_POS * QS;
    const size_t n_kv = (size_t)n_head_kv * hd;

    if (threadIdx.x < TPC) {
        const int i = threadIdx.x, t = t0 + i;
        if (t < n_tok) {
            const struct kc_tok tk = tok[t];
            s_lim[i] = token_limit(tk);
            s_k[i] = tk.k;
            s_v[i] = tk.v;
            s_nctx[i] = tk.n_ctx;
        } else {
            s_lim[i] = 0;
            s_k[i] = s_v[i] = NULL;
            s_nctx[i] = 0;
        }
    }
    for (int i = threadIdx.x; i < TILE_ROWS * hd; i += TILE_THREADS * NG) {
        const int r = i / hd, d = i - r * hd;
        const int t = t0 + r / G;
        float x = 0.0f;
        if (r < R && t < n_tok)
            x = q[((size_t)t * n_head + (size_t)g * G + r % G) * hd + d];
        Qs[r * QS + d] = x;
    }
    __syncthreads();
    if (threadIdx.x < TPC) { // the group of token i: the first token with its cache
        const int i = threadIdx.x;
        int lead = -1;
        if (s_lim[i] > 0) {
            lead = i;
            for (int j = 0; j < i; j++)
                if (s_lim[j] > 0 && s_k[j] == s_k[i] && s_v[j] == s_v[i] && s_nctx[j] == s_nctx[i]) {
                    lead = j;
                    break;
                }
        }
        s_lead[i] = lead;
    }
    __syncthreads();

    int rtok[4]; // local token of each of this thread's rows, -1 for none
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int r = tr * 4 + i;
        rtok[i] = (r < R && t0 + r / G < n_tok) ? r / G : -1;
    }
    float m[4], l[4];
    float4 acc[4][CH];
#pragma unroll
    for (int i = 0; i < 4; i++) {
        m[i] = -INFINITY;
        l[i] = 0.0f;
#pragma unroll
        for (int c = 0; c < CH; c++)
            acc[i][c] = make_float4(0.f, 0.f, 0.f, 0.f);
    }

    for (int lead = 0; lead < TPC; lead++) {
        if (s_lead[lead] != lead) // uniform: shared memory
            continue;
        int maxlim = 0;
        for (int i = 0; i < TPC; i++)
            if (s_lead[i] == lead)
                maxlim = max(maxlim, s_lim[i]);
        int rlim[4];
#pragma unroll
        for (int i = 0; i < 4; i++)
            rlim[i] = (rtok[i] >= 0 && s_lead[rtok[i]] == lead) ? s_lim[rtok[i]] : 0;
        const size_t base = (size_t)layer * (size_t)s_nctx[lead] * n_kv + (size_t)g * hd;
        const KV *kbase = (const KV *)s_k[lead] + base, *vbase = (const KV *)s_v[lead] + base;

        for (int p0 = wg * TILE_POS; p0 < maxlim; p0 += NG * TILE_POS) {
            const int nt = min(TILE_POS, maxlim - p0);
            // this thread's share of the tile (TILE_POS * hd4 <= LD_IT * TILE_THREADS
            // groups of 4 values), all loads in flight at once; rows past nt are zeros
            constexpr int LD_IT = TILE_POS * 16 * CH / TILE_THREADS;
            group_sync(wg); // the group's previous tile's readers are done
            if constexpr (sizeof(KV) == 4) { // f32: copied as is
#pragma unroll
                for (int u = 0; u < LD_IT; u++) {
                    const int i = tid + u * TILE_THREADS;
                    const int j = i / hd4, c4 = i - j * hd4;
                    if (i < TILE_POS * hd4) {
                        float *dk = Ks + j * QS + c4 * 4, *dv = Vs + j * QS + c4 * 4;
                        if (j < nt) {
                            const size_t o = (size_t)(p0 + j) * n_kv + (size_t)c4 * 4;
                            cp_async16(dk, kbase + o);
                            cp_async16(dv, vbase + o);
                        } else {
                            *(float4 *)dk = make_float4(0.f, 0.f, 0.f, 0.f);
                            *(float4 *)dv = make_float4(0.f, 0.f, 0.f, 0.f);
                        }
                    }
                }
                cp_async_commit();
                cp_async_wait0();
            } else { // f16: through registers, converted on the way
                uint2 kr[LD_IT], vr[LD_IT];
#pragma unroll
                for (int u = 0; u < LD_IT; u++) {
                    const int i = tid + u * TILE_THREADS;
                    const int j = i / hd4, c4 = i - j * hd4;
                    kr[u] = vr[u] = make_uint2(0u, 0u); // f16 zeros
                    if (i < TILE_POS * hd4 && j < nt) {
                        const size_t o = (size_t)(p0 + j) * n_kv + (size_t)c4 * 4;
                        kr[u] = *(const uint2 *)(kbase + o);
                        vr[u] = *(const uint2 *)(vbase + o);
                    }
                }
#pragma unroll
                for (int u = 0; u < LD_IT; u++) {
                    const int i = tid + u * TILE_THREADS;
                    const int j = i / hd4, c4 = i - j * hd4;
                    if (i < TILE_POS * hd4) {
                        const float2 k0 = h2f(kr[u].x), k1 = h2f(kr[u].y);
                        const float2 v0 = h2f(vr[u].x), v1 = h2f(vr[u].y);
                        *(float4 *)(Ks + j * QS + c4 * 4) = make_float4(k0.x, k0.y, k1.x, k1.y);
                        *(float4 *)(Vs + j * QS + c4 * 4) = make_float4(v0.x, v0.y, v1.x, v1.y);
                    }
                }
            }
            group_sync(wg);

            float sc[4][2];
#pragma unroll
            for (int i = 0; i < 4; i++)
                sc[i][0] = sc[i][1] = 0.0f;
#pragma unroll 2
            for (int d4 = 0; d4 < hd4; d4++) {
                float4 qv[4], kv[2];
#pragma unroll
                for (int i = 0; i < 4; i++)
                    qv[i] = *(const float4 *)(Qs + (tr * 4 + i) * QS + d4 * 4);
#pragma unroll
                for (int c = 0; c < 2; c++)
                    kv[c] = *(const float4 *)(Ks + (tc + 16 * c) * QS + d4 * 4);
#pragma unroll
                for (int i = 0; i < 4; i++)
#pragma unroll
                    for (int c = 0; c < 2; c++) {
                        float a = sc[i][c];
                        a = fmaf(qv[i].x, kv[c].x, a);
                        a = fmaf(qv[i].y, kv[c].y, a);
                        a = fmaf(qv[i].z, kv[c].z, a);
                        a = fmaf(qv[i].w, kv[c].w, a);
                        sc[i][c] = a;
                    }
            }
            float rr[4];
#pragma unroll
            for (int i = 0; i < 4; i++) {
#pragma unroll
                for (int c = 0; c < 2; c++) {
                    const int p = p0 + tc + 16 * c;
                    sc[i][c] = p < rlim[i] ? scale * sc[i][c] : -INFINITY;
                }
                float mx = fmaxf(sc[i][0], sc[i][1]);
                for (int o = 8; o > 0; o >>= 1) // the 16 threads of the row
                    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
                float r = 1.0f;
                if (mx > m[i]) {
                    r = expf(m[i] - mx);
                    m[i] = mx;
                }
                float pe[2];
#pragma unroll
                for (int c = 0; c < 2; c++)
                    pe[c] = sc[i][c] == -INFINITY ? 0.0f : expf(sc[i][c] - m[i]);
                float sum = pe[0] + pe[1];
                for (int o = 8; o > 0; o >>= 1)
                    sum += __shfl_xor_sync(0xffffffffu, sum, o);
                l[i] = l[i] * r + sum;
                rr[i] = r;
#pragma unroll
                for (int c = 0; c < 2; c++)
                    Ps[(tr * 4 + i) * TILE_PS + tc + 16 * c] = pe[c];
            }
            group_sync(wg);

#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int c = 0; c < CH; c++) {
                    acc[i][c].x *= rr[i];
                    acc[i][c].y *= rr[i];
                    acc[i][c].z *= rr[i];
                    acc[i][c].w *= rr[i];
                }
            // positions nt..: probabilities 0 and V rows zero, so whole groups of 4 are fine
            const int jn = (nt + 3) & ~3;
            for (int j = 0; j < jn; j += 4) {
                float4 pv[4];
#pragma unroll
                for (int i = 0; i < 4; i++)
                    pv[i] = *(const float4 *)(Ps + (tr * 4 + i) * TILE_PS + j);
#pragma unroll
                for (int jj = 0; jj < 4; jj++) {
#pragma unroll
                    for (int c = 0; c < CH; c++) {
                        const int c4 = tc + 16 * c;
                        if (c4 < hd4) {
                            const float4 vv = *(const float4 *)(Vs + (j + jj) * QS + c4 * 4);
#pragma unroll
                            for (int i = 0; i < 4; i++) {
                                const float pj = jj == 0 ? pv[i].x : jj == 1 ? pv[i].y
                                                 : jj == 2 ? pv[i].z : pv[i].w;
                                acc[i][c].x = fmaf(pj, vv.x, acc[i][c].x);
                                acc[i][c].y = fmaf(pj, vv.y, acc[i][c].y);
                                acc[i][c].z = fmaf(pj, vv.z, acc[i][c].z);
                                acc[i][c].w = fmaf(pj, vv.w, acc[i][c].w);
                            }
                        }
                    }
                }
            }
        }
    }

    if constexpr (NG == 2) {
        // group 1 hands its state over through its own tile buffers (64 rows of
        // hd floats fit in K and V: 2 * 32 * (hd + 4) >= 64 * hd), m and l through
        // its P buffer; group 0 merges the two
        __syncthreads(); // everyone is done with the tiles
        if (wg == 1) {
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const int r = tr * 4 + i;
#pragma unroll
                for (int c = 0; c < CH; c++) {
                    const int c4 = tc + 16 * c;
                    if (c4 < hd4)
                        *(float4 *)(Ks + r * hd + c4 * 4) = acc[i][c];
                }
                if (tc == 0) {
                    Ps[2 * r] = m[i];
                    Ps[2 * r + 1] = l[i];
                }
            }
        }
        __syncthreads();
        if (wg == 1)
            return;
        const float *Ko = Ks + 2 * TILE_POS * QS + TILE_ROWS * TILE_PS; // group 1's buffers
        const float *Po = Ko + 2 * TILE_POS * QS;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int r = tr * 4 + i;
            const float m1 = Po[2 * r], l1 = Po[2 * r + 1];
            const float M = fmaxf(m[i], m1);
            const float a0 = m[i] == -INFINITY ? 0.0f : expf(m[i] - M);
            const float a1 = m1 == -INFINITY ? 0.0f : expf(m1 - M);
            l[i] = l[i] * a0 + l1 * a1;
#pragma unroll
            for (int c = 0; c < CH; c++) {
                const int c4 = tc + 16 * c;
                if (c4 < hd4) {
                    const float4 b = *(const float4 *)(Ko + r * hd + c4 * 4);
                    acc[i][c].x = acc[i][c].x * a0 + b.x * a1;
                    acc[i][c].y = acc[i][c].y * a0 + b.y * a1;
                    acc[i][c].z = acc[i][c].z * a0 + b.z * a1;
                    acc[i][c].w = acc[i][c].w * a0 + b.w * a1;
                }
            }
        }
    }

#pragma unroll
    for (int i = 0; i < 4; i++) {
        if (rtok[i] < 0)
            continue;
        const int r = tr * 4 + i;
        const size_t t = (size_t)t0 + rtok[i], h = (size_t)g * G + r % G;
        const float inv = l[i] > 0 ? 1.0f / l[i] : 0.0f;
#pragma unroll
        for (int c = 0; c < CH; c++) {
            const int c4 = tc + 16 * c;
            if (c4 < hd4) {
                float *o = out + (t * n_head + h) * hd + (size_t)c4 * 4;
                o[0] = acc[i][c].x * inv;
                o[1] = acc[i][c].y * inv;
                o[2] = acc[i][c].z * inv;
                o[3] = acc[i][c].w * inv;
            }
        }
    }
}

// ---- attention: entry point -----------------------------------------------------

// The largest dynamic shared memory a block may opt in to.
static int smem_optin(void)
{
    static std::atomic<int> v(0);
    int x = v.load();
    if (!x) {
        int dev = 0;
        cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed; // as smem_limit
        cudaThreadExchangeStreamCaptureMode(&mode);
        if (cudaGetDevice(&dev) != cudaSuccess ||
            cudaDeviceGetAttribute(&x, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess)
            x = 48 * 1024;
        (void)cudaGetLastError();
        cudaThreadExchangeStreamCaptureMode(&mode);
        v.store(x);
    }
    return x;
}

template <typename KV, int MAXG, bool EXACT>
static int run_split_g(kc_stream s, const struct kc_attn_shape *sh, const float *q,
                       const struct kc_tok *tok, int32_t n_tok, int32_t n_split, float *ws,
                       float *out, float scale, struct moed_err *e)
{
    static std::atomic<int> have(0);
    const int hd = sh->head_dim, G = sh->n_head / sh->n_head_kv;
    int ns = 3; // stages: two tiles in flight, or fewer where three do not fit
    struct split_smem L = split_layout(hd, G, (int)sizeof(KV), ns);
    while (ns > 1 && L.total > smem_optin()) {
        ns--;
        L = split_layout(hd, G, (int)sizeof(KV), ns);
    }
    int rc = smem_limit((const void *)attn_split_k<KV, MAXG, EXACT>, &have, L.total, e);
    if (rc)
        return rc;
    dim3 grid((unsigned)n_tok, (unsigned)sh->n_head_kv, (unsigned)n_split);
    cudaError_t lr = launch_k(attn_split_k<KV, MAXG, EXACT>, grid, dim3(SPLIT_THREADS),
                              (size_t)L.total, s, q, tok, sh->n_head, sh->n_head_kv, hd, sh->layer,
                              n_split, ns, scale, ws, out);
    if ((rc = launched_rc(lr, e, "attention")))
        return rc;
    if (n_split > 1) {
        // (returns at once for tokens split 0 wrote alone)
        lr = launch_k(attn_merge_k, dim3((unsigned)sh->n_head, (unsigned)n_tok), dim3(128),
                      2 * ((size_t)n_split + 4) * sizeof(float), s, (const float *)ws, tok,
                      sh->n_head, hd, (int)n_split, out);
        if ((rc = launched_rc(lr, e, "attention merge")))
            return rc;
    }
    return 0;
}

template <typename KV>
static int run_split(kc_stream s, const struct kc_attn_shape *sh, const float *q,
                     const struct kc_tok *tok, int32_t n_tok, int32_t n_split, float *ws,
                     float *out, float scale, struct moed_err *e)
{
#define RUN_SPLIT(MAXG, EXACT) \
    return run_split_g<KV, MAXG, EXACT>(s, sh, q, tok, n_tok, n_split, ws, out, scale, e)
    switch (sh->n_head / sh->n_head_kv) {
    case 1: RUN_SPLIT(1, true);
    case 2: RUN_SPLIT(2, true);
    case 3: RUN_SPLIT(4, false);
    case 4: RUN_SPLIT(4, true);
    case 5: case 6: case 7: RUN_SPLIT(8, false);
    case 8: RUN_SPLIT(8, true);
    case 16: RUN_SPLIT(16, true);
    default: RUN_SPLIT(16, false);
    }
#undef RUN_SPLIT
}

template <typename KV, int CH, int NG>
static int run_tile_ch(kc_stream s, const struct kc_attn_shape *sh, const float *q,
                       const struct kc_tok *tok, int32_t n_tok, float *out, float scale,
                       struct moed_err *e)
{
    static std::atomic<int> have(0);
    const int hd = sh->head_dim, G = sh->n_head / sh->n_head_kv;
    const int bytes = tile_smem_bytes(hd, NG);
    int rc = smem_limit((const void *)attn_tile_k<KV, CH, NG>, &have, bytes, e);
    if (rc)
        return rc;
    const int tpc = TILE_ROWS / G;
    dim3 grid((unsigned)((n_tok + tpc - 1) / tpc), (unsigned)sh->n_head_kv);
    attn_tile_k<KV, CH, NG><<<grid, TILE_THREADS * NG, bytes, S(s)>>>(
        q, tok, n_tok, sh->n_head, sh->n_head_kv, hd, sh->layer, scale, out);
    return launched(e, "attention (tiled)");
}

template <typename KV>
static int run_tile(kc_stream s, const struct kc_attn_shape *sh, const float *q,
                    const struct kc_tok *tok, int32_t n_tok, float *out, float scale,
                    struct moed_err *e)
{
    switch ((sh->head_dim + 63) / 64) {
    // two warp-groups where the registers allow (up to 128 a thread)
    case 1: return run_tile_ch<KV, 1, 2>(s, sh, q, tok, n_tok, out, scale, e);
    case 2: return run_tile_ch<KV, 2, 2>(s, sh, q, tok, n_tok, out, scale, e);
    case 3: return run_tile_ch<KV, 3, 1>(s, sh, q, tok, n_tok, out, scale, e);
    default: return run_tile_ch<KV, 4, 1>(s, sh, q, tok, n_tok, out, scale, e);
    }
}

// The tiled kernel takes steps of many tokens (n_tok >= 16) when no split
// is asked for; everything else (decode, and any n_split > 1) goes through
// the split kernel, whose CTAs are (token, KV head, split).  The tiled kernel
// shares K/V tiles among consecutive tokens of one sequence (prefill); a
// step of many tokens of different sequences (batched decode) runs faster
// through the split kernel, so pass n_split >= 2 for those.
#define TILE_MIN_TOK 16

extern "C" int kc_attention(kc_stream s, const struct kc_attn_shape *sh, const float *q,
                            const struct kc_tok *tok, int32_t n_tok, int32_t n_split, void *ws,
                            float *out, struct moed_err *e)
{
    int rc = check_shape(sh, "kc_attention", e);
    if (rc)
        return rc;
    if (n_tok < 0)
        return moed_err_set(e, MOED_EINVAL, "kc_attention: %d tokens", n_tok);
    if (n_split < 1)
        n_split = 1;
    if (n_split > 1024)
        return moed_err_set(e, MOED_EINVAL, "kc_attention: %d splits (1024 at most)", n_split);
    if (n_tok == 0)
        return 0;
    const float scale = 1.0f / sqrtf((float)sh->head_dim); // as forward.c
    const bool f16 = sh->kv_type == KT_F16;
    if (n_tok >= TILE_MIN_TOK && n_split == 1)
        return f16 ? run_tile<__half>(s, sh, q, tok, n_tok, out, scale, e)
                   : run_tile<float>(s, sh, q, tok, n_tok, out, scale, e);
    if (n_split > 1 && !ws)
        return moed_err_set(e, MOED_EINVAL, "kc_attention: %d splits without a workspace",
                            n_split);
    return f16 ? run_split<__half>(s, sh, q, tok, n_tok, n_split, (float *)ws, out, scale, e)
               : run_split<float>(s, sh, q, tok, n_tok, n_split, (float *)ws, out, scale, e);
}
