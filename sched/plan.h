/*
 * The per-layer planner of the hybrid engine (DESIGN.md, "HybriMoE as
 * published, and where moed goes further"; issue 7, item 3).  For each
 * activated expert of one MoE layer it picks GPU_CACHED (weights already in
 * a GPU slot), LOAD_GPU (copy H2D on the copy stream, then run on the GPU) or
 * CPU (the worker pool), minimising the layer's finish time with the CPU
 * workers, the copy engine and the GPU running at once.
 *
 * Timeline (sched_plan_simulate, exact under sched/cost.h's model):
 *   CPU   runs its experts back to back on the whole pool (+ cpu_side_us once);
 *   copy  loads the LOAD_GPU experts one after another in load_order;
 *   GPU   gpu_side_us once, then the cached experts, then each loaded expert
 *         as soon as both the GPU and its load are done;
 *   while the CPU and the copy engine are both busy they share host DRAM:
 *   CPU work runs cpu_factor times slower and copies h2d_factor times slower.
 *   makespan = the later of the CPU's and the GPU's end (sides with work).
 * Neither the CPU's order nor the cached experts' order changes any finish
 * time, so a plan is its placement plus its load order, which is Johnson's
 * rule for the two-machine flow shop copy -> GPU (optimal when the copy rate
 * is constant): loads shorter than their GPU run first by load time
 * ascending, then the rest by GPU time descending.
 *
 * Search: HybriMoE's HSS greedy with the model's costs (cached then uncached
 * queues by token count descending; the GPU takes the front, the CPU the
 * back, loads finish before their GPU run, side intercepts when a side is
 * empty), two more starts (all on the GPU; uncached on the CPU), the best of
 * the three by the simulator, then local improvement: the best single move
 * (an expert to the other side) or swap (one GPU-side and one CPU-side expert
 * trade sides) while the makespan drops.  Swaps are tried up to
 * SCHED_PLAN_SWAP_MAX experts.  No allocation; deterministic: ties go to the
 * lower expert id (then the lower input index).
 */
#ifndef MOED_SCHED_PLAN_H
#define MOED_SCHED_PLAN_H

#include <stdbool.h>
#include <stdint.h>

#include "common/err.h"
#include "sched/cost.h"

#define SCHED_PLAN_MAX 256      /* activated experts in one layer */
#define SCHED_PLAN_SWAP_MAX 64  /* above this, local search moves only */
/* Above SCHED_PLAN_BIG experts (prefill, big decode batches), the search
 * improves only the best of its three starts, by at most
 * SCHED_PLAN_BIG_ITER single moves: the plan is on the critical path of
 * every layer, and a full local search over 32 experts takes ~2-3 ms, over
 * 128 ~15 ms. */
#define SCHED_PLAN_BIG 16
#define SCHED_PLAN_BIG_ITER 8
/* Up to this many activated experts the planner tries every placement (at
 * most 2^10 timeline evaluations, each with its Johnson load order): a
 * single sequence's decode step (top-8) always gets the optimum.  Above it,
 * HybriMoE's greedy plus local search (sched_plan_layer_search). */
#define SCHED_PLAN_EXACT_MAX 10

enum sched_place {
    SCHED_PLACE_GPU_CACHED = 0,
    SCHED_PLACE_LOAD_GPU = 1,
    SCHED_PLACE_CPU = 2,
};

struct sched_plan_expert {
    int id;         /* expert id in the layer (tie-breaks) */
    int n_tok;      /* tokens routed to it in this step, >= 0 */
    int type;       /* index into sched_cost.type */
    bool cached;    /* in a GPU slot now */
    uint64_t bytes; /* bytes to copy if loaded; 0: the type's bytes */
};

/* When each engine becomes free for this layer's work (us from now); the
 * copy engine may still be busy with prefetches, the CPU with the last
 * layer.  A busy period counts as "busy" for the shared-DRAM slowdown. */
struct sched_plan_busy {
    double cpu_us, copy_us, gpu_us;
};

struct sched_plan {
    int n;
    uint8_t place[SCHED_PLAN_MAX];       /* enum sched_place, by input index */
    int n_load;
    uint16_t load_order[SCHED_PLAN_MAX]; /* input indices, copy order */
    int n_gpu_cached, n_cpu;
    double cpu_end_us;  /* CPU side done (0 when it has no expert) */
    double copy_end_us; /* last load done (0 without loads) */
    double gpu_end_us;  /* GPU side done (0 when it has no expert) */
    double makespan_us;
};

/* Plan one layer.  busy may be NULL (all free).  MOED_EINVAL names a bad
 * expert (type, token count, duplicate-free ids are not required).  Exact
 * for n <= SCHED_PLAN_EXACT_MAX, the search below otherwise. */
int sched_plan_layer(const struct sched_cost *c, const struct sched_plan_expert *ex, int n,
                     const struct sched_plan_busy *busy, struct sched_plan *plan,
                     struct moed_err *err);

/* The heuristic alone, at any n: HybriMoE's HSS greedy with model costs,
 * "all on the GPU side" and "uncached on the CPU" starts, each improved by
 * moves, swaps and pair moves.  Exposed so tests measure its quality. */
int sched_plan_layer_search(const struct sched_cost *c, const struct sched_plan_expert *ex, int n,
                            const struct sched_plan_busy *busy, struct sched_plan *plan,
                            struct moed_err *err);

/* Fill plan->load_order / n_load from plan->place by Johnson's rule. */
void sched_plan_order_loads(const struct sched_cost *c, const struct sched_plan_expert *ex,
                            int n, struct sched_plan *plan);

/* Replay plan->place and plan->load_order on the timeline above and fill the
 * end times and counts.  MOED_EINVAL if a cached/uncached expert has a place
 * it cannot have or the load order does not list exactly the LOAD_GPU ones. */
int sched_plan_simulate(const struct sched_cost *c, const struct sched_plan_expert *ex, int n,
                        const struct sched_plan_busy *busy, struct sched_plan *plan,
                        struct moed_err *err);

const char *sched_place_name(int place);

#endif
