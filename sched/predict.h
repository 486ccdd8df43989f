/*
 * Expert prediction for impact-driven prefetch (issue 7, item 6): the
 * predictor half, CPU only.
 *
 * Prediction.  At MoE layer l the executor sees x, the layer's normalised
 * hidden rows (moe.h, struct moe_work).  predict_run applies the router of
 * a later layer l + d (d = 1, 2) to x directly, with the forward pass's
 * routing rule (model/forward.c, moe(): softmax over all experts, top k;
 * norm_topk only rescales the weights, so it does not change the ids).
 * This is an approximation: the true input of layer l + d is its own
 * ffn_norm of the residual after l's (and more) updates.
 *
 * Per predicted layer and expert e it gives
 *   tokens[e]  tokens whose predicted top-k holds e (the expected count)
 *   mass[e]    sum over tokens of the softmax probability p_t(e)
 *   p_used[e]  P(some token uses e) = 1 - prod_t (1 - min(1, k p_t(e))):
 *              a heuristic (k p_t(e) is exact for a uniform router and
 *              saturates for a dominant expert), independent tokens assumed.
 *
 * Scoring.  predict_score takes such per-expert figures, the cost model
 * (sched/cost.h), which experts are cached, and the copy engine's idle time
 * in us; for every uncached expert
 *     saved = p_used(e) * (t_cpu(n) - t_gpu(n)),  n = max(1, ceil(tokens[e]))
 * (running it on the GPU instead of the CPU, the load itself being done in
 * idle copy time, so it costs 0 on the critical path), and the load cost
 * t_load(bytes of the type).  Experts with saved <= 0 are dropped; the rest
 * are taken greedily by saved / load_us (then saved, then the lower id)
 * while their loads fit the budget (one that does not fit is skipped and
 * the next tried).  Deterministic.
 *
 * Accuracy.  predict_stats is an expert executor (like model/trace.h) that
 * runs the executor it wraps unchanged and, at each MoE layer, compares the
 * actual top-k of every token with (a) the router-based prediction made at
 * layer l - d from the same step, and (b) a baseline: the k experts most
 * used so far in that layer (ties: lower id; counted from every earlier
 * call, any token).  Hit rate = |predicted ∩ actual| / k, per layer and
 * overall.  Chance level is k / n_expert.
 *
 * One thread at a time (the one calling fwd_step).
 */
#ifndef MOED_SCHED_PREDICT_H
#define MOED_SCHED_PREDICT_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "common/err.h"
#include "model/model.h"
#include "model/moe.h"
#include "sched/cost.h"

#define PREDICT_MAX_AHEAD 2

/* ---- prediction ------------------------------------------------------------- */

struct predictor;

/* Dequantize every layer's router to F32 (n_layer * n_expert * n_embd
 * floats) and size buffers for max_tok rows.  MOED_EINVAL, MOED_ENOMEM, or
 * the dequantizer's MOED_EUNSUPPORTED. */
int predict_new(struct predictor **out, const struct model *m, int32_t max_tok,
                struct moed_err *e);
void predict_free(struct predictor *p); /* NULL is a no-op */

/* The same without the routers (no dequantized copy, nothing read from the
 * model at creation): for predict_from_logits only; predict_run refuses. */
int predict_new_logits(struct predictor **out, const struct model *m, int32_t max_tok,
                       struct moed_err *e);

/* One predicted layer, caller-owned (predict_result_alloc). */
struct predict_result {
    int32_t layer; /* the predicted layer, -1 before predict_run */
    int32_t n_tok, k, n_expert;
    int32_t *ids;  /* [n_tok][k]: each token's predicted top-k, descending p */
    float *tokens; /* [n_expert] */
    float *mass;   /* [n_expert] */
    float *p_used; /* [n_expert] */
};

int predict_result_alloc(const struct predictor *p, struct predict_result *r, struct moed_err *e);
void predict_result_free(struct predict_result *r);

/* The same from the router logits of layer `layer` for each token
 * ([n_tok][n_expert]), computed elsewhere (the hybrid engine applies the
 * next layer's router on the GPU). */
int predict_from_logits(struct predictor *p, int32_t layer, const float *logits, int32_t n_tok,
                        struct predict_result *r, struct moed_err *e);

/* Predict layer `layer` from rows x ([n_tok][n_embd], 1 <= n_tok <= max_tok). */
int predict_run(struct predictor *p, int32_t layer, const float *x, int32_t n_tok,
                struct predict_result *r, struct moed_err *e);

/* ---- scoring ---------------------------------------------------------------- */

struct predict_score_in {
    const struct sched_cost *cost;
    int type;             /* cost->type row of this layer's experts */
    int32_t n_expert;
    const bool *cached;   /* [n_expert]: true = already on the GPU (never picked) */
    const float *p_used;  /* [n_expert] in [0, 1] */
    const float *tokens;  /* [n_expert] expected tokens (>= 0) */
    double budget_us;     /* copy engine idle time */
};

struct predict_pick {
    int32_t expert;
    double saved_us; /* p_used * (t_cpu(n) - t_gpu(n)) */
    double load_us;
};

/* Fill out (room for n_expert) with the picks in greedy order; returns
 * their number, or MOED_EINVAL for bad input (e filled). */
int predict_score(const struct predict_score_in *in, struct predict_pick *out,
                  struct moed_err *e);

/* ---- accuracy --------------------------------------------------------------- */

struct predict_stats_opts {
    struct moe_exec *inner; /* the executor that computes the experts */
    bool own_inner;         /* predict_stats_close frees inner as well */
    const struct model *m;  /* routers and sizes; must outlive the stats */
    int32_t max_tok;
    int32_t ahead; /* 1 or 2: predict l+1 (and l+2) */
};

struct predict_acc {
    uint64_t tokens;    /* tokens compared (each k slots) */
    uint64_t hits;      /* router-based prediction: |pred ∩ actual| summed */
    uint64_t freq_hits; /* frequency baseline, same tokens */
};

struct predict_stats;

int predict_stats_open(struct predict_stats **out, const struct predict_stats_opts *o,
                       struct moed_err *e);
/* The executor to give the forward pass; its free() is predict_stats_close. */
struct moe_exec *predict_stats_exec(struct predict_stats *s);
/* Counts of layer `layer` predicted d layers ahead (layer -1: all layers). */
struct predict_acc predict_stats_get(const struct predict_stats *s, int32_t d, int32_t layer);
/* Hit rates of a: hits / (tokens * k); 0 when nothing was compared. */
double predict_acc_rate(const struct predict_acc *a, int32_t k);
double predict_acc_freq_rate(const struct predict_acc *a, int32_t k);
/* Lines "PREFIX +d layer L: router R (N tok), frequency F" and an overall line. */
void predict_stats_print(const struct predict_stats *s, FILE *f, const char *prefix);
void predict_stats_close(struct predict_stats *s); /* NULL is a no-op */

#endif
