/*
 * The hybrid expert executor (issue 7; DESIGN.md, "The hybrid engine"): the
 * MoE layers of model/fwd_gpu.c when the GPU holds only part of the experts.
 *
 * The dense part of every layer (attention, router, shared expert, combine)
 * runs on the GPU as in the all-GPU path; the routed experts live in the
 * mmap'd GGUF (registered for full-speed copies, cache/gpu_slots.h) and in
 * a pool of GPU slots managed by the expert cache (cache/cache.h).  Per MoE
 * layer, hybrid_moe:
 *
 *   1. copies the step's expert ids, weights and normalised hidden rows to
 *      pinned host memory (one D2H each, one event) and waits for them;
 *   2. counts tokens per expert, asks the cache which are in slots (hits
 *      pin their slots) and plans the layer (sched/plan.h) on the cost model:
 *      each activated expert runs GPU_CACHED, LOAD_GPU (cache_admit, copy on
 *      the copy stream, the compute stream waits for it) or CPU;
 *   3. builds the grouping on the host: the GPU experts' (token, slot)
 *      pairs first, in tiles, then the CPU experts' pairs, and uploads it with
 *      the layer's expert pointer table (slot addresses); the expert kernels
 *      run over the GPU tiles only;
 *   4. meanwhile computes the CPU experts' pairs on the worker pool
 *      (moe_cpu_rows) into pinned memory and uploads them into the pairs'
 *      rows of the device's per-pair output, so kc_moe_combine sums every
 *      token's experts in slot order as in the all-GPU path;
 *   5. prefetch (decode steps of at most HYBRID_PREDICT_MAX_TOK tokens):
 *      the forward pass also applies the next layer's router to h on the GPU
 *      (next_logits, one small matvec); from those logits (sched/predict.h)
 *      the next layer's uncached experts that some token is predicted to
 *      choose, those worth most first (expected time saved per load-us), are
 *      loaded into slots behind this layer's own loads, within the copy
 *      engine's expected idle window (the last wait for the routing, i.e.
 *      the next layer's attention, less the copies still queued);
 *   6. admission behind the CPU (decode, with a cache of at least
 *      n_layer x n_expert_used slots): misses the CPU ran are loaded
 *      into the cache while the copy engine idles through the next layer's
 *      attention (the plan of one layer cannot see that a load also serves
 *      the next steps; without this a large cache whose misses all go to
 *      the CPU never learns the working set);
 *
 * Budgets: n_slot slots of gpu_slots_slot_bytes; at least HYBRID_MIN_SLOTS
 * x the experts per token (so one layer's loads of a decode step fit).
 * Besides the cache, a streaming area of n_expert slots (one layer's
 * experts; 340 MB for the reference shape): the loads a prefill step
 * (tile 64) plans go there first, so a prompt can stream a whole layer to
 * the GPU at any budget without evicting what decode keeps in the cache;
 * its slots are reused layer after layer (a load waits for the kernels
 * that read the slot last).
 * The slots start filled (round-robin over layers; by whole layers for
 * static placement), so a step at budget B finds about B of its experts
 * cached from the start.
 *
 * Cost model: the one given (calibrated by `moed calibrate`, or built in)
 * plans prefill steps (with its tile-64 GPU figures); decode steps plan on a
 * copy corrected online: every decode layer with loads times them on the
 * copy stream (two events) and its CPU experts on the host, and moving
 * averages (weight 0.05 a layer, within 0.5x..4x) of measured / modelled
 * scale the CPU's expert times and the copy rates; a correction that is
 * no longer measured (the plans stopped giving the CPU experts) drifts back
 * towards 1 by 0.2% a layer, so the plans try that side again.  Shared host DRAM and
 * the kernels' real behaviour in the pipeline differ from the calibration's
 * isolated loops; this closes the gap without a second calibration.
 *
 * Static placement (the peer's way, an ablation): slots hold whole layers
 * in layer order, never change; cached experts run on the GPU, the others
 * on the CPU; no loads, no prefetch.
 *
 * One thread at a time (the forward pass's).  Uses the current device.
 * MOED_HYBRID_TRACE=1 in the environment prints one line per layer step
 * (experts, pairs, the plan's makespan, the wait, the host time).
 */
#ifndef MOED_SCHED_HYBRID_H
#define MOED_SCHED_HYBRID_H

#include <stdbool.h>
#include <stdint.h>

#include "cache/cache.h"
#include "common/err.h"
#include "kernels/cuda/kc.h"
#include "model/model.h"
#include "sched/cost.h"
#include "sched/pool.h"

#define HYBRID_MIN_SLOTS 2 /* x n_expert_used */
/* Steps of at most this many tokens predict the next layer (decode). */
#define HYBRID_PREDICT_MAX_TOK 8

struct hybrid_opts {
    int32_t max_batch;
    /* the slot pool: budget_frac > 0: that fraction of all the model's
     * experts; else budget_bytes of device memory; at least
     * HYBRID_MIN_SLOTS * n_expert_used slots, at most all experts */
    double budget_frac;
    uint64_t budget_bytes;
    enum cache_policy policy; /* not CACHE_BELADY */
    bool static_layers;       /* ablation: the peer's placement by layer */
    bool no_prefetch;         /* ablation */
    bool force_staging;       /* load through pinned staging buffers */
    bool no_plan;             /* ablation: every miss on the CPU (no loads) */
    bool force;               /* fwd_gpu: hybrid even when every expert gets a slot */
    const struct sched_cost *cost; /* NULL: sched_cost_default(); copied */
    struct sched_pool *pool;  /* the CPU workers (not owned; NULL: this thread) */
};

/* Per layer (and summed): the cache's counters and the plan mix. */
struct hybrid_layer_stats {
    uint64_t hits, misses, loads, evictions, prefetches, prefetch_hits;
    uint64_t gpu_cached, gpu_loaded, cpu; /* activated experts by where they ran */
    uint64_t gpu_pairs, cpu_pairs;        /* (token, expert) pairs */
    uint64_t load_bytes;                  /* expert bytes copied H2D (loads + prefetches) */
    uint64_t streamed;                    /* loads of prefill into the streaming area */
    uint64_t behind;                      /* CPU-run misses loaded into the cache after */
    uint64_t act_bytes;                   /* hidden rows down, CPU results up */
};

struct hybrid_stats {
    int32_t n_layer, n_slot; /* n_slot: the cache's */
    int32_t n_stream;        /* prefill's streaming slots, after the cache's */
    uint64_t slot_bytes, pool_bytes; /* pool_bytes: cache and streaming slots */
    bool registered; /* loads read the registered mapping (else staging) */
    enum cache_policy policy;
    bool static_layers, prefetch;
    uint64_t layer_calls;  /* hybrid_moe calls */
    double host_s;         /* time in hybrid_moe, all of it */
    double wait_s;         /* ... waiting for the routing (GPU attention in flight) */
    double cpu_s;          /* ... computing CPU experts */
    double predict_s;      /* ... predicting and issuing prefetches */
    uint64_t pred_tokens, pred_hits; /* prefetch predictions: |pred ∩ actual| over tokens * k */
    double cpu_scale, h2d_scale; /* the decode cost model's online corrections (1: as given) */
    struct hybrid_layer_stats total;
};

struct hybrid;

/*
 * For model m (must outlive it): slots, cache, pinned buffers, the CPU
 * executor, the predictor; the initial fill of the slots is enqueued on the
 * copy stream.  MOED_EINVAL for bad options, MOED_ENOMEM naming the bytes,
 * MOED_EUNSUPPORTED for an expert type without GPU kernels.
 */
int hybrid_new(struct hybrid **out, const struct model *m, const struct hybrid_opts *o,
               struct moed_err *e);
void hybrid_free(struct hybrid *hy); /* NULL is a no-op; waits for its copies */

/* The slots a budget gives (the arithmetic of hybrid_new, no allocation). */
int32_t hybrid_slots_for(const struct model *m, const struct hybrid_opts *o);

/* One MoE layer of a step, enqueued on stream st (see the top).  Device
 * buffers are the forward pass's: h [n][n_embd] the normalised rows, ids and
 * wts [n][k] from kc_moe_route, groups_ws the grouping workspace laid out by
 * kc_moe_groups_at(max_batch, k, n_expert, tile), act and ypair the per-pair
 * buffers of the expert kernels.  On return grp (the device grouping) is
 * ready for kc_moe_combine once st reaches it. */
struct hybrid_io {
    int32_t layer, n_tok, tile;
    const float *h;
    const int32_t *ids;
    const float *wts;
    /* [n][n_expert]: the next layer's router applied to h (for prefetch;
     * NULL: none, e.g. the last layer or n > HYBRID_PREDICT_MAX_TOK) */
    const float *next_logits;
    void *groups_ws;
    float *act, *ypair;
};
int hybrid_moe(struct hybrid *hy, kc_stream st, const struct hybrid_io *io, struct moed_err *e);

/* A new step begins (the prediction of layer 0 has no previous layer). */
void hybrid_step_begin(struct hybrid *hy);

/* Counters since creation or the last reset; per_layer: n_layer entries or NULL. */
void hybrid_stats_get(const struct hybrid *hy, struct hybrid_stats *out,
                      struct hybrid_layer_stats *per_layer);
void hybrid_stats_reset(struct hybrid *hy);

#endif
