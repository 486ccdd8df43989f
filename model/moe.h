/*
 * The expert executor: the one place where the forward pass hands work to
 * whatever runs experts.
 *
 * After routing, the MoE layer of one step knows, for each of its n_tok
 * tokens, n_used experts and their weights.  It passes that as a struct
 * moe_work ("these tokens need these experts with these weights") to an
 * executor, which must write
 *
 *     out[t] = sum_j weights[t][j] * down_e(silu(gate_e x[t]) * up_e x[t]),  e = ids[t][j]
 *
 * for every token.  Where an expert runs (CPU workers, a GPU cache slot,
 * loaded on demand) is the executor's business: the CPU executor below
 * runs them all on the thread pool; the hybrid scheduler (sched/) will
 * implement the same interface and split the layer's experts between CPU
 * and GPU.  The forward pass does not know which one it has.
 *
 * Expert weights are described by struct moe_experts: three stacked GGUF
 * tensors of one layer, expert e being slab e (pointers into the mapped
 * file), plus the layer index so an executor with a cache can key on
 * (layer, expert).
 */
#ifndef MOED_MODEL_MOE_H
#define MOED_MODEL_MOE_H

#include <stddef.h>
#include <stdint.h>

#include "common/err.h"
#include "sched/pool.h"

/* One stacked matrix: n_expert slabs of `rows` rows of `n` elements. */
struct moe_mat {
    uint32_t type;        /* enum kern_type */
    const uint8_t *data;  /* expert 0, row 0 */
    size_t row_size;      /* bytes per row */
    size_t expert_stride; /* bytes per expert: rows * row_size */
};

/* One layer's routed experts. */
struct moe_experts {
    int32_t layer;
    int32_t n_expert;
    int32_t n_embd;          /* input and output width */
    int32_t n_ff;            /* hidden width of one expert */
    struct moe_mat gate, up; /* rows n_ff, n = n_embd */
    struct moe_mat down;     /* rows n_embd, n = n_ff */
};

/* Layer il's stacked experts of a model (its *_exps tensors, which the
 * loader checked): pointers into the mapping. */
struct model;
void moe_experts_of_layer(const struct model *m, int32_t il, struct moe_experts *out);

/* The routed work of one layer in one step. */
struct moe_work {
    const struct moe_experts *experts;
    int32_t n_tok;
    int32_t n_used;       /* experts per token */
    const float *x;       /* [n_tok][n_embd]: the normalised hidden states */
    const int32_t *ids;   /* [n_tok][n_used]: expert of each slot, < n_expert */
    const float *weights; /* [n_tok][n_used]: its routing weight */
    float *out;           /* [n_tok][n_embd]: written (not accumulated) */
};

struct moe_exec {
    const char *name;
    /* Compute w->out; returns 0 or a MOED_E* code with e filled. */
    int (*run)(struct moe_exec *ex, const struct moe_work *w, struct moed_err *e);
    void (*free)(struct moe_exec *ex);
};

static inline int moe_exec_run(struct moe_exec *ex, const struct moe_work *w, struct moed_err *e)
{
    return ex->run(ex, w, e);
}

static inline void moe_exec_free(struct moe_exec *ex)
{
    if (ex)
        ex->free(ex);
}

/*
 * The CPU executor.  Per layer: the step's (token, slot) pairs are grouped
 * by expert; each token's x is quantized once to the experts' activation
 * type and copied to its experts' groups; gate and up run as one matmul
 * per active expert over all its tokens (weights read once per step),
 * then SwiGLU, then down; results are summed back per token with the
 * routing weights in slot order (so the result does not depend on how
 * threads split the work).  Every phase runs on the pool's threads
 * (pool may be NULL: the calling thread alone).
 *
 * Buffers are allocated once for max_tok tokens of n_used experts and
 * widths n_embd, n_ff (the largest over the model's layers).
 */
struct moe_cpu_opts {
    struct sched_pool *pool;
    int32_t max_tok;
    int32_t n_expert; /* experts per layer (0: sized on first use) */
    int32_t n_used;
    int32_t n_embd;
    int32_t n_ff;
};

int moe_cpu_new(struct moe_exec **out, const struct moe_cpu_opts *o, struct moed_err *e);

/*
 * Part of a layer on the CPU executor's pool, for an executor that splits a
 * layer (sched/hybrid.h): rows already grouped by expert, group i being
 * rows first .. first + n - 1 of expert `expert` (groups in row order, each
 * run of rows right after the last), row r reading token row_tok[r] of xin
 * ([n_tok][n_embd]); writes each row's unweighted output
 *     y[r] = down_e(silu(gate_e xin[row_tok[r]]) * up_e xin[row_tok[r]])
 * (stride n_embd), with the numerics of the executor's run.  ex must come
 * from moe_cpu_new; n_rows <= max_tok * n_used.  MOED_EINVAL names a bad
 * group or row.
 */
struct moe_rows_group {
    int32_t expert, first, n;
};
int moe_cpu_rows(struct moe_exec *ex, const struct moe_experts *x, const float *xin,
                 int32_t n_tok, const int32_t *row_tok, int32_t n_rows,
                 const struct moe_rows_group *groups, int32_t n_groups, float *y,
                 struct moed_err *e);

#endif
