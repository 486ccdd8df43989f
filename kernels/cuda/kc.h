/*
 * The GPU kernels and the small runtime around them, as a C API.
 *
 * Everything CUDA lives in the .cu files of kernels/cuda/ behind this header (extern
 * "C"); kernels/cuda/nocuda.c gives a build without CUDA the same symbols,
 * each failing with "built without CUDA".  Pointers named "device" below
 * are device memory (kc_malloc); host pointers are said to be so.
 *
 * Conventions shared by every kernel entry point:
 *   - launches are asynchronous on the given stream; the return value is 0,
 *     or a MOED_E* code with e filled when the arguments are refused
 *     before launching (an unsupported weight type, a size out of range) or
 *     when the launch itself fails.  Errors of the running kernel show up
 *     at kc_sync.
 *   - activations are f32, row-major: a matrix of n_tok rows of width n is
 *     n_tok * n contiguous floats.
 *   - weights are exactly the GGUF bytes (struct kc_mat): `rows` rows of
 *     `n` elements, each row row_size bytes (types.h's kern_row_size).
 *   - entry points never allocate; workspaces are sized by the *_ws_size
 *     functions and passed in, so a step can be captured as a CUDA graph.
 */
#ifndef MOED_KERNELS_KC_H
#define MOED_KERNELS_KC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- runtime (kernels/cuda/kc_rt.cu) ---------------------------------------- */

typedef void *kc_stream; /* a cudaStream_t */
typedef void *kc_graph;  /* a cudaGraphExec_t */
typedef void *kc_event;  /* a cudaEvent_t */

int kc_set_device(int dev, struct moed_err *e);
int kc_malloc(void **p, size_t n, struct moed_err *e); /* device memory */
void kc_free(void *p);                                 /* NULL is fine */
int kc_host_alloc(void **p, size_t n, struct moed_err *e); /* pinned host memory */
void kc_host_free(void *p);
int kc_stream_new(kc_stream *s, struct moed_err *e);
void kc_stream_free(kc_stream s);
/* Asynchronous copies (host memory should be pinned for real overlap). */
int kc_h2d(void *dst, const void *src, size_t n, kc_stream s, struct moed_err *e);
int kc_d2h(void *dst, const void *src, size_t n, kc_stream s, struct moed_err *e);
int kc_d2d(void *dst, const void *src, size_t n, kc_stream s, struct moed_err *e);
int kc_memset(void *dst, int byte, size_t n, kc_stream s, struct moed_err *e);
/* Wait for the stream; reports the first error of its work, naming it. */
int kc_sync(kc_stream s, struct moed_err *e);
/* Device memory free/total of the current device. */
int kc_mem_info(size_t *free_b, size_t *total_b, struct moed_err *e);
/* Stream capture into a graph, then replay. */
int kc_capture_begin(kc_stream s, struct moed_err *e);
int kc_capture_end(kc_stream s, kc_graph *g, struct moed_err *e);
int kc_graph_launch(kc_graph g, kc_stream s, struct moed_err *e);
void kc_graph_free(kc_graph g);
/* Events: timing and joins across streams. */
int kc_event_new(kc_event *ev, struct moed_err *e);
void kc_event_free(kc_event ev);
int kc_event_record(kc_event ev, kc_stream s, struct moed_err *e);
int kc_event_wait(kc_stream s, kc_event ev, struct moed_err *e); /* s waits for ev */
int kc_event_ms(kc_event a, kc_event b, float *ms, struct moed_err *e);

/* ---- weights -------------------------------------------------------------- */

/* One weight matrix in device memory, GGUF layout. */
struct kc_mat {
    uint32_t type;   /* enum kern_type */
    const void *data; /* device */
    size_t row_size; /* bytes per row */
    int32_t n;       /* elements per row (input width) */
    int32_t rows;    /* output width */
};

/* True when the GPU kernels can read weights of this type: F32, F16, BF16,
 * Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K. */
bool kc_type_supported(uint32_t type);

/* ---- dense matmul (kernels/cuda/kc_matmul.cu) ------------------------------ */

/*
 * out[t][r] = (accumulate ? out[t][r] : 0) + (bias ? bias[r] : 0)
 *             + sum_k W[r][k] * x[t][k]          for t < n_tok, r < W->rows
 * x is [n_tok][W->n], out [n_tok][W->rows] (device).  Decode-sized batches
 * (n_tok <= 8) and F32/F16 weights use a matvec kernel with f32 math
 * throughout; larger batches of other types use tensor cores (weights
 * dequantized to bf16 in shared memory, activations rounded to bf16, f32
 * accumulation).
 */
int kc_matmul(kc_stream s, const struct kc_mat *w, const float *x, int32_t n_tok, float *out,
              const float *bias, bool accumulate, struct moed_err *e);

/*
 * Up to KC_MULTI_MAX matrices over the same input in one launch (decode:
 * Q, K and V), with the RMSNorm of x folded in:
 *   out[i][t][r] = (bias[i] ? bias[i][r] : 0) + sum_k W_i[r][k] * x'[t][k]
 *   x'[t] = norm_w ? rmsnorm(x[t]) * norm_w (eps) : x[t]
 * for i < n_mat; every W_i has the same n.  Same numerics as kc_matmul's
 * matvec path for n_tok <= 8; larger batches may run as an RMSNorm into
 * norm_out (device, [n_tok][n], required when norm_w is set) followed by
 * one kc_matmul per matrix.
 */
#define KC_MULTI_MAX 4
int kc_matmul_multi(kc_stream s, int n_mat, const struct kc_mat *w, const float *x, int32_t n_tok,
                    float *const *out, const float *const *bias, const float *norm_w, float eps,
                    float *norm_out, struct moed_err *e);

/* Row r of a weight matrix dequantized to f32 for each token id:
 * out[t][:] = dequant(table row tok[t]) (tok device, [n_tok]). */
int kc_embed(kc_stream s, const struct kc_mat *table, const int32_t *tok, int32_t n_tok,
             float *out, struct moed_err *e);

/* ---- elementwise (kernels/cuda/kc_ops.cu) --------------------------------- */

/* out[i] = rmsnorm(x[rows ? rows[i] : i]) * w for i < n_tok, width n
 * (out may equal x when rows is NULL). */
int kc_rmsnorm(kc_stream s, const float *x, const int32_t *rows, int32_t n_tok, int32_t n,
               const float *w, float eps, float *out, struct moed_err *e);
/* g[i] = silu(g[i]) * u[i] for i < n. */
int kc_swiglu(kc_stream s, float *g, const float *u, int64_t n, struct moed_err *e);
/* x[i] += y[i] for i < n. */
int kc_add(kc_stream s, float *x, const float *y, int64_t n, struct moed_err *e);

/* ---- attention (kernels/cuda/kc_attn.cu) ---------------------------------- */

/* Per token of a step (device array, uploaded by the host each step). */
struct kc_tok {
    int32_t pos;   /* its position: it attends to 0..pos of its sequence */
    int32_t n_ctx; /* positions its sequence's cache holds */
    void *k, *v;   /* device: its sequence's cache, [n_layer][n_ctx][n_head_kv * head_dim] */
};

enum kc_qk_norm { KC_QK_NONE, KC_QK_HEAD, KC_QK_FULL }; /* as model.h's model_qk_norm */

struct kc_attn_shape {
    int32_t n_head, n_head_kv, head_dim;
    int32_t n_rot;       /* leading dims of a head that rotate */
    float rope_base;     /* rope.freq_base */
    float rope_scale;    /* positions are divided by it */
    bool rope_neox;      /* NEOX pairs (i, i + n_rot/2), else adjacent pairs (2i, 2i+1) */
    int32_t qk_norm;     /* enum kc_qk_norm */
    float eps;           /* of the QK RMSNorm */
    uint32_t kv_type;    /* KT_F32 or KT_F16 */
    int32_t layer;       /* which layer of the caches */
};

/*
 * For each token t: q[t] ([n_head * hd]) and k[t] ([n_head_kv * hd]) get
 * the QK-norm (q_norm/k_norm weights: {hd} for KC_QK_HEAD, the whole width
 * for KC_QK_FULL; NULL for KC_QK_NONE), then RoPE at tok[t].pos (q in
 * place); k[t] and v[t] are then stored in the caches at (layer, pos), as
 * f32 or f16 (k rotated, v as is).
 */
int kc_qk_rope_store(kc_stream s, const struct kc_attn_shape *sh, float *q, const float *k,
                     const float *v, const float *q_norm, const float *k_norm,
                     const struct kc_tok *tok, int32_t n_tok, struct moed_err *e);

/*
 * out[t][h*hd..] = softmax(q[t]_h . K[0..pos] / sqrt(hd)) V[0..pos] with the
 * KV head h / (n_head / n_head_kv), reading the caches of kc_qk_rope_store
 * (causal: token t sees positions 0..tok[t].pos of its own sequence; its own
 * K/V and those of earlier tokens of the step are already stored).
 * n_split > 1 splits each token's positions into n_split chunks computed
 * in parallel and merged (flash decoding); the result does not depend on
 * it beyond rounding.  ws: kc_attention_ws_size bytes of device memory.
 */
size_t kc_attention_ws_size(const struct kc_attn_shape *sh, int32_t max_tok, int32_t n_split);
int kc_attention(kc_stream s, const struct kc_attn_shape *sh, const float *q,
                 const struct kc_tok *tok, int32_t n_tok, int32_t n_split, void *ws, float *out,
                 struct moed_err *e);

/* ---- mixture of experts (kernels/cuda/kc_moe.cu) -------------------------- */

/*
 * Routing: for each token, p = softmax(logits[t][0..n_expert)); the k
 * largest (ties: lower expert id first) with their probabilities, in
 * descending order, renormalised to sum 1 when norm.  ids, wts: [n_tok][k].
 * n_expert <= 1024, k <= 32.
 */
int kc_moe_route(kc_stream s, const float *logits, int32_t n_tok, int32_t n_expert, int32_t k,
                 bool norm, int32_t *ids, float *wts, struct moed_err *e);

/*
 * Grouping of one step's (token, slot) pairs by expert, in device memory.
 * Pair i (0 <= i < n_tok * k) in grouped order: pairs of expert 0 first,
 * then expert 1, ...; within an expert by token.  Tiles split each expert's
 * pairs into runs of at most `tile` pairs.
 */
struct kc_moe_groups {
    int32_t *pair_tok; /* [n_tok * k]: the token of pair i */
    int32_t *pair_of;  /* [n_tok * k]: pair_of[t * k + j] = i of (token t, slot j) */
    int32_t *tiles;    /* [max_tiles][3]: expert, first pair i, pairs (1..tile) */
    int32_t *n_tiles;  /* [1]: tiles in use */
};
/* Upper bound on tiles: ceil(n_pairs / tile) + min(n_expert, n_pairs). */
int32_t kc_moe_max_tiles(int32_t n_tok, int32_t k, int32_t n_expert, int32_t tile);
/* Bytes for the four arrays; kc_moe_groups_at carves them out of ws. */
size_t kc_moe_groups_size(int32_t max_tok, int32_t k, int32_t n_expert, int32_t tile);
void kc_moe_groups_at(struct kc_moe_groups *g, void *ws, int32_t max_tok, int32_t k,
                      int32_t n_expert, int32_t tile);
int kc_moe_group(kc_stream s, const int32_t *ids, int32_t n_tok, int32_t k, int32_t n_expert,
                 int32_t tile, const struct kc_moe_groups *g, struct moed_err *e);

/* kc_moe_route then kc_moe_group, in one launch where the step is small
 * (decode); same results as the two calls. */
int kc_moe_route_group(kc_stream s, const float *logits, int32_t n_tok, int32_t n_expert,
                       int32_t k, bool norm, int32_t *ids, float *wts, int32_t tile,
                       const struct kc_moe_groups *g, struct moed_err *e);

/*
 * One layer's routed experts on the device.  Expert e's three matrices are
 * at gate[e], up[e], down[e] (device arrays of n_expert device pointers), so
 * they may live anywhere (stacked, or in cache slots).  gate/up: n_ff rows
 * of n_embd; down: n_embd rows of n_ff.
 */
struct kc_experts {
    uint32_t type_gate, type_up, type_down;
    size_t row_gate, row_up, row_down; /* bytes per row */
    const void *const *gate, *const *up, *const *down;
    int32_t n_expert, n_embd, n_ff;
};

/*
 * act[i][0..n_ff) = silu(gate_e x[pair_tok[i]]) * (up_e x[pair_tok[i]])
 * for every pair i of the grouping (e its expert); x is [n_tok][n_embd].
 * tile must be the grouping's: tile <= 8 selects the matvec kernels (f32
 * math; decode), tile 64 the tensor-core kernels (bf16 operands, f32
 * accumulation; prefill).  max_tiles bounds the grid (kc_moe_max_tiles).
 */
int kc_moe_gate_up(kc_stream s, const struct kc_experts *ex, const float *x,
                   const struct kc_moe_groups *g, int32_t tile, int32_t max_tiles, float *act,
                   struct moed_err *e);
/* y[i][0..n_embd) = down_e act[i] for every pair i. */
int kc_moe_down(kc_stream s, const struct kc_experts *ex, const float *act,
                const struct kc_moe_groups *g, int32_t tile, int32_t max_tiles, float *y,
                struct moed_err *e);

/*
 * x[t] += sum_j wts[t][j] * y[pair_of[t * k + j]]   (j ascending)
 *         + (sh_y ? sigmoid(sh_logit[t]) * sh_y[t] : 0)
 * for t < n_tok, width n_embd: the weighted sum of a token's experts (and
 * qwen2moe's gated shared expert; sh_logit [n_tok], sh_y [n_tok][n_embd]),
 * added to the residual stream.
 */
int kc_moe_combine(kc_stream s, float *x, const float *y, const int32_t *pair_of,
                   const float *wts, int32_t n_tok, int32_t k, int32_t n_embd,
                   const float *sh_logit, const float *sh_y, struct moed_err *e);

/* ---- host sources and slot events (kernels/cuda/kc_reg.cu) ---------------- */

/*
 * Page-lock host memory for full-speed copies: registers the page-aligned
 * span covering [p, p + n) (cudaHostRegister), read_only with
 * cudaHostRegisterReadOnly, which a read-only mapping (the mmap'd GGUF)
 * needs.  Failure (device without support, memory that cannot be locked,
 * a span overlapping one already registered) returns MOED_EUNSUPPORTED,
 * MOED_ENOMEM or MOED_EIO with the CUDA error named, and leaves the CUDA
 * error state cleared.  Registration pins every page: it faults the whole
 * span in first.  kc_host_unregister takes the same p (NULL is fine).
 */
int kc_host_register(void *p, size_t n, bool read_only, struct moed_err *e);
void kc_host_unregister(void *p);
/* An event without timing (cheaper; for joins and kc_event_sync/query). */
int kc_event_new_sync(kc_event *ev, struct moed_err *e);
/* The host waits for the event's work (an event never recorded: at once). */
int kc_event_sync(kc_event ev, struct moed_err *e);
/* *done: the event's work has finished (never recorded: true). */
int kc_event_query(kc_event ev, bool *done, struct moed_err *e);

#ifdef __cplusplus
}
#endif

#endif
