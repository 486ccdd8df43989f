/*
 * The hybrid engine's cost model (DESIGN.md, "The hybrid engine"): what the
 * per-layer planner (sched/plan.h) believes one expert costs on each side.
 *
 * Per expert type (one row per GGUF quant type / expert shape in use):
 *   t_cpu(n)   = cpu_us + cpu_us_tok * n        whole CPU worker pool, n tokens
 *   t_gpu(n)   = gpu_us + gpu_us_tok * n        one expert on the GPU compute stream
 *   t_mma(n)   = gpu_mma_us + gpu_mma_us_tok * n
 *                one expert's share of a tile-64 (tensor-core, prefill)
 *                launch of many experts; 0 and 0: unknown
 * Per copy:
 *   t_load(b)  = load_us + b / (h2d_gbs * 1e3)  us, host -> device on the copy stream
 * Per side, once per layer when that side has any expert (the "intercepts when
 * a side's queue is empty" of HybriMoE's HSS):
 *   cpu_side_us  hidden states D2H, pool wake-up, results H2D and the join
 *   gpu_side_us  the GPU side's launch/join overhead
 *
 * Two GPU segments: gpu_us/gpu_us_tok is one expert per launch, as decode
 * runs it (tile 8, matvec kernels; calibration times one expert with 1..64
 * tokens).  In prefill a tile-64 launch holds tens to a hundred experts with
 * many tokens each on the tensor cores, and the GPU's marginal cost per
 * expert there is far below the one-expert figure; gpu_mma_us/_tok is that
 * marginal cost (calibration: a launch of M experts with n tokens each,
 * divided by M).  sched_cost_gpu_us reads only gpu_us/gpu_us_tok: a user
 * of the prefill segment makes a second model with sched_cost_for_tile and
 * plans tile-64 layers with it.
 *
 * Shared host DRAM: the CPU workers and the copy engine read the same DRAM
 * (DESIGN.md, "Speed": CPU 72 GB/s alone, H2D 54 alone, 44 + 34 together).
 * Model: while both are busy, CPU work progresses at cpu_shared_gbs /
 * cpu_alone_gbs of its solo rate and copies at h2d_shared_gbs / h2d_gbs of
 * theirs; each alone runs at full speed.  Limits: the slowdown is applied to
 * the whole CPU expert time, including its compute-bound part (prefill with
 * many tokens per expert is slowed less in reality), and the prior busy
 * periods in the planner's input count as "busy" for the other side at the
 * full factor; the figures are per machine, not per thread count.
 *
 * The built-in defaults are NOT measured on the running machine: they are
 * DESIGN.md's and bench/README.md's figures for the GPU machine (Q4_K expert
 * of the reference shape, 3 x 768x2048 = 2.65 MB, 78 GB/s matvec on 16
 * threads, 750 GFLOP/s at 8 tokens) plus guesses for the GPU side (the
 * tile-64 segment an estimate from the all-GPU prefill benchmark), and
 * `calibrated = 0` says so.  Calibration (issue 7, item 2) writes a file in
 * the format of sched_cost_save.
 */
#ifndef MOED_SCHED_COST_H
#define MOED_SCHED_COST_H

#include <stdbool.h>
#include <stdint.h>

#include "common/err.h"

#define SCHED_COST_MAX_TYPES 8
#define SCHED_COST_NAME 24

struct sched_cost_type {
    char name[SCHED_COST_NAME]; /* e.g. "q4_k" ([a-z0-9_]+) */
    uint64_t bytes;             /* bytes of one expert (gate + up + down) */
    double cpu_us, cpu_us_tok;  /* t_cpu(n) = cpu_us + cpu_us_tok * n */
    double gpu_us, gpu_us_tok;  /* t_gpu(n) = gpu_us + gpu_us_tok * n */
    /* Per expert in a tile-64 launch of many experts (prefill); both 0:
     * unknown, the one-expert segment above stands for it. */
    double gpu_mma_us, gpu_mma_us_tok;
};

struct sched_cost {
    int ntypes;
    struct sched_cost_type type[SCHED_COST_MAX_TYPES];
    double load_us;        /* per-copy latency */
    double h2d_gbs;        /* H2D alone, GB/s (1e9 bytes) */
    double h2d_shared_gbs; /* H2D while the CPU workers stream experts */
    double cpu_alone_gbs;  /* CPU expert streaming alone */
    double cpu_shared_gbs; /* CPU expert streaming while H2D copies run */
    double cpu_side_us;    /* once per layer with any CPU expert */
    double gpu_side_us;    /* once per layer with any GPU expert */
    bool calibrated;       /* false: built-in defaults */
};

/* Fill c with the built-in defaults (one type, "q4_k"). */
void sched_cost_default(struct sched_cost *c);

/* *out = *c; with mma (a cost model for tile-64 launches, i.e. prefill),
 * every type whose gpu_mma_us or gpu_mma_us_tok is non-zero gets
 * gpu_us = gpu_mma_us and gpu_us_tok = gpu_mma_us_tok (types with both 0
 * keep their one-expert figures).  The mma fields are copied unchanged, so
 * applying it twice is harmless.  out may be c. */
void sched_cost_for_tile(const struct sched_cost *c, bool mma, struct sched_cost *out);

/* Check ranges (all finite, >= 0, bandwidths > 0, shared <= alone, types
 * named and sized).  MOED_ERANGE or MOED_EINVAL naming the key. */
int sched_cost_validate(const struct sched_cost *c, struct moed_err *err);

/* Costs in microseconds. */
double sched_cost_cpu_us(const struct sched_cost *c, int type, int n_tok);
double sched_cost_gpu_us(const struct sched_cost *c, int type, int n_tok);
double sched_cost_load_us(const struct sched_cost *c, uint64_t bytes);
/* Slowdown factors (>= 1) while both CPU and copy engine are busy. */
double sched_cost_cpu_factor(const struct sched_cost *c);
double sched_cost_h2d_factor(const struct sched_cost *c);

/* Type index by name, or -1. */
int sched_cost_find_type(const struct sched_cost *c, const char *name);

/* Text file, one "key = value" a line, '#' comments; type rows are
 * "type.<name>.<field>".  Load starts from the defaults' scalars with no
 * types, so a file must name every type it uses; unknown keys, bad numbers
 * and out-of-range values are errors naming the file, line and key.
 * type.<name>.gpu_mma_us and type.<name>.gpu_mma_us_tok are optional (files
 * from before them load with 0 and 0, "unknown"); save writes them only
 * for a type where either is non-zero. */
int sched_cost_save(const struct sched_cost *c, const char *path, struct moed_err *err);
int sched_cost_load(struct sched_cost *c, const char *path, struct moed_err *err);
/* Same, from a NUL-terminated string (name is used in messages). */
int sched_cost_parse(struct sched_cost *c, const char *text, const char *name,
                     struct moed_err *err);

#endif
