/*
 * The forward pass: one step over a batch of tokens from several sequences.
 *
 * A step takes n tokens, each with the sequence it belongs to and its
 * position there.  Some sequences may be in prefill (many consecutive
 * positions in this step), others decoding (one); every token attends to
 * positions 0..pos of its own sequence's KV cache, its own included, and
 * the MoE layers see all n tokens at once (each expert runs once over all
 * the step's tokens routed to it).  Logits are computed only for tokens
 * flagged as wanting them.
 *
 * A struct fwd holds what a step needs besides the weights: the activation
 * workspace (sized for max_batch tokens at init, nothing allocated per
 * step), the thread pool and the expert executor.  One thread at a time
 * may call fwd_step on a given struct fwd.
 */
#ifndef MOED_MODEL_FORWARD_H
#define MOED_MODEL_FORWARD_H

#include <stdbool.h>
#include <stdint.h>

#include "common/err.h"
#include "model/kv.h"
#include "model/model.h"
#include "model/moe.h"
#include "sched/pool.h"

struct hybrid;
struct hybrid_opts;

struct fwd_opts {
    int32_t max_batch;       /* tokens per step */
    struct sched_pool *pool; /* NULL: the calling thread alone */
    struct moe_exec *exec;   /* NULL: a CPU executor on pool (owned by the fwd) */
    bool gpu;                /* run everything on CUDA device gpu_device (model/fwd_gpu.h) */
    int gpu_device;
    bool gpu_no_graph;       /* GPU: never replay decode steps as CUDA graphs */
    /* GPU: run the routed experts hybrid (sched/hybrid.h, copied; its pool
     * defaults to pool above) when the budget does not hold them all */
    const struct hybrid_opts *hybrid;
};

struct fwd;

int fwd_init(struct fwd **out, const struct model *m, const struct fwd_opts *o, struct moed_err *e);
void fwd_free(struct fwd *f);
/* True when f runs on the GPU. */
bool fwd_on_gpu(const struct fwd *f);
/* The hybrid expert executor of a GPU fwd (NULL: none, all experts on the
 * GPU or the CPU path). */
struct hybrid *fwd_hybrid(const struct fwd *f);
/* A KV cache where f's steps can use it: host memory for the CPU path,
 * device memory for the GPU path (kv_seq_init / kv_seq_init_dev). */
int fwd_kv_init(const struct fwd *f, struct kv_seq *kv, int32_t n_ctx, uint32_t type,
                struct moed_err *e);

struct fwd_batch {
    int32_t n;            /* tokens, 1..max_batch */
    const int32_t *token; /* [n] */
    const int32_t *pos;   /* [n] position in its sequence */
    const int32_t *seq;   /* [n] index into the seqs array of fwd_step */
    const bool *logits;   /* [n] want logits; NULL: none */
};

/*
 * Run one step.  seqs[0..n_seqs) are the sequences' KV caches.  A
 * sequence's tokens must come in order of consecutive positions, the first
 * at most its cache's current length (a position below it rewrites the
 * cache from there on, dropping what followed); each token's K and V are
 * stored at its position, and afterwards the cache holds positions up to
 * the sequence's last token of the step.  logits receives n_vocab floats
 * per flagged token, in batch order.
 *
 * Everything is checked before anything changes: a bad token id, sequence
 * index or position, a position past the cache's n_ctx ("KV cache
 * full"), or a cache in the other kind of memory fails with the caches
 * untouched.
 */
int fwd_step(struct fwd *f, const struct fwd_batch *b, struct kv_seq *const *seqs, int32_t n_seqs,
             float *logits, struct moed_err *e);

/* Where the steps' time goes: wall-clock seconds per phase, summed over the
 * steps since fwd_init or the last reset (a few clock reads per layer). */
enum fwd_phase {
    FWD_PH_EMBED,     /* embedding rows, batch checks */
    FWD_PH_ATTN_PROJ, /* attn_norm, Q/K/V and output projections */
    FWD_PH_ATTN,      /* QK-norm, RoPE, KV cache, attention itself, residual */
    FWD_PH_ROUTER,    /* ffn_norm, router, softmax, top-k */
    FWD_PH_EXPERTS,   /* the expert executor */
    FWD_PH_SHARED,    /* qwen2moe's shared expert, residual */
    FWD_PH_OUTPUT,    /* output_norm and logits */
    FWD_PH_COUNT
};
struct fwd_stats {
    double seconds[FWD_PH_COUNT];
    int64_t steps, tokens;
};
void fwd_stats_get(const struct fwd *f, struct fwd_stats *out);
void fwd_stats_reset(struct fwd *f);
const char *fwd_phase_name(enum fwd_phase ph);

#endif
