/*
 * Calibration of the cost model (sched/cost.h; issue 7, item 2): the
 * measurements behind `moed calibrate`, on the running machine.
 *
 * Expert types (calib_types): the layers' (gate, up, down) weight types; one
 * row per distinct triple, named by the lower-case type name when all three
 * agree ("q4_k") and by the distinct names joined by '_' otherwise
 * ("q4_k_q6_k": gate/up Q4_K, down Q6_K; "q4_k_q5_k_q6_k").  bytes: one
 * expert's gate + up + down slabs.
 *
 * CPU (calib_cpu): the CPU executor (moe_cpu on the caller's pool, n_used 1)
 * runs ONE expert with n tokens, n in calib_ntok.  The (layer, expert) pairs
 * cycle through a working set of about CALIB_WS_BYTES of distinct experts of
 * the type (layers alternate, so consecutive runs read different memory and
 * every run finds its weights outside the LLC); each is run once untimed
 * first (page-in).  Each n runs until its share of the time budget is spent
 * (3 runs at least, CALIB_MAX_REPS at most); the median wall time is its
 * figure.  cpu_alone_gbs = bytes / t(1) of the dominant type (the one with
 * most layers).  Fits (calib_fit_affine) minimise the squared RELATIVE
 * residuals (weights 1/y^2), so the 1-token point counts as much as the
 * 64-token one; a negative intercept or slope is clamped to 0 and the other
 * coefficient refitted.  The worst relative residual is reported.
 *
 * GPU (calib_gpu; CUDA device dev, 16..64 gpu_slots):
 *   H2D     gpu_slots_load of 1, 2, 4, 8, 16 experts of the dominant type on
 *           a copy stream between two timing events, median per count; fit
 *           t = load_us + bytes / (h2d_gbs * 1e3) over the total bytes.  The
 *           per-copy overhead of back-to-back loads is part of the slope, the
 *           intercept is the latency of a burst.  Registered or staged
 *           sources (gpu_slots_host_note) are recorded.
 *   kernels kc_moe_gate_up + kc_moe_down on one expert (a slot) with n
 *           tokens (tile 8 for n <= 8, else 64), rotating over the slots;
 *           events around batches of repetitions, the median of 5 batch
 *           means; affine fit as on the CPU.  A type the kernels cannot read
 *           keeps the scaled defaults (below).
 *   tile 64 (the prefill segment gpu_mma_us/_tok, right after the type's
 *           kernels, on the same slots): ONE launch pair (kc_moe_gate_up +
 *           kc_moe_down, tile 64, max_tiles = kc_moe_max_tiles(M n, 1, M,
 *           64)) holds M = n_slot experts, expert i = slot i through the
 *           same pointer tables, each with n tokens, n in calib_ntok_mma;
 *           the grouping has M n pairs, expert i's are i n .. i n + n - 1 in
 *           tiles of at most 64, pair p reads row p % CALIB_MMA_ROWS of the
 *           input (distinct tokens within an expert, as in a real prefill).
 *           Per-expert time = launch time / M; events around batches, the
 *           median of 5 batch means; affine fit as on the CPU.  In about
 *           seconds / 6 (at most CALIB_MMA_MAX_S).  Skipped (gpu_mma 0 and
 *           0: "unknown") when any expert matrix of the model is F32 or F16
 *           (the forward pass then never takes tile 64: fwd_gpu's
 *           expert_mma) or a type's gate and up types differ.
 *   shared  a helper thread loads experts back to back on the copy stream
 *           (N loads, about a sixth of the budget at the measured H2D rate)
 *           while the caller runs 1-token CPU experts on the pool until the
 *           last load lands; both rates over that one interval.  The CPU
 *           figure is taken relative to the same loop run alone just before
 *           (means, not medians): cpu_shared_gbs = cpu_alone_gbs * shared /
 *           alone; h2d_shared_gbs is the copies' measured rate.  Both are
 *           clamped to their solo figures (sched_cost_validate wants that).
 *   sides   cpu_side_us: median wall time of a D2H of one hidden-state row,
 *           a pool run of an empty job and an H2D of one result row (pinned
 *           buffers, each copy synchronised); gpu_side_us: median of one
 *           one-element kernel launch + event record + host event sync.
 *
 * Without a GPU measurement (calib_to_cost with r->gpu false) the GPU fields
 * keep sched_cost_default's values: load_us, h2d_gbs, h2d_shared_gbs,
 * cpu_side_us, gpu_side_us; cpu_shared_gbs is the measured cpu_alone_gbs
 * times the defaults' shared/alone ratio (44/72), so the file stays valid;
 * per type, gpu_us and gpu_us_tok are the default q4_k row scaled by bytes
 * and by 3 * n_embd * n_ff (FLOPs) to the type's shape, and so are
 * gpu_mma_us and gpu_mma_us_tok (the defaults' estimate) where tile 64
 * applies (0 and 0 where it does not, as above).  `calibrated` is set
 * only when EVERYTHING was measured (CPU, GPU kernels for every type, H2D,
 * shared rates, sides): a half-measured model is still flagged as carrying
 * guesses.
 */
#ifndef MOED_SCHED_CALIB_H
#define MOED_SCHED_CALIB_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "common/err.h"
#include "sched/cost.h"
#include "sched/pool.h"

struct model;

#define CALIB_NTOK 7  /* token counts: 1 2 4 8 16 32 64 */
#define CALIB_NLOAD 5 /* experts per H2D burst: 1 2 4 8 16 */
#define CALIB_MAX_REPS 4096
#define CALIB_WS_BYTES (1ull << 30)
#define CALIB_NTOK_MMA 5    /* tokens per expert, tile 64: 16 32 64 128 256 */
#define CALIB_MMA_ROWS 512  /* input rows the tile-64 launches read (pp512) */
#define CALIB_MMA_MAX_S 4.0 /* the tile-64 timing's budget at most */

extern const int calib_ntok[CALIB_NTOK];
extern const int calib_nload[CALIB_NLOAD];
extern const int calib_ntok_mma[CALIB_NTOK_MMA];

/* y = a + b x, weighted by 1/y^2; worst = max |fit - y| / y at x[worst_i]. */
struct calib_fit {
    double a, b, worst;
    int worst_i;
};

/* MOED_EINVAL for n < 2 or a y <= 0 or not finite. */
int calib_fit_affine(const double *x, const double *y, int n, struct calib_fit *f,
                     struct moed_err *e);

struct calib_type {
    char name[SCHED_COST_NAME];
    uint32_t tg, tu, td;  /* gate, up, down types (enum kern_type) */
    int32_t n_layer;      /* layers with this triple */
    uint64_t bytes;       /* one expert */
    int32_t ws;           /* experts in the CPU working set */
    double cpu_us[CALIB_NTOK];
    int cpu_reps[CALIB_NTOK];
    struct calib_fit cpu;
    bool gpu_ok; /* kernels measured */
    double gpu_us[CALIB_NTOK];
    int gpu_reps[CALIB_NTOK];
    struct calib_fit gpu;
    bool mma_ok; /* tile 64 measured */
    double mma_launch_us[CALIB_NTOK_MMA]; /* one launch pair of n_mma experts */
    double mma_us[CALIB_NTOK_MMA];        /* per expert: launch / n_mma */
    int mma_reps[CALIB_NTOK_MMA];         /* launches timed */
    struct calib_fit mma;
};

struct calib_result {
    int ntypes, dom; /* dom: the type with most layers */
    struct calib_type type[SCHED_COST_MAX_TYPES];
    int32_t n_embd, n_ff;
    int threads;
    double cpu_alone_gbs;
    bool cpu_done;
    /* GPU (valid when gpu) */
    bool gpu;
    int dev, n_slot;
    bool registered;
    char host_note[160];
    double load_us[CALIB_NLOAD]; /* median burst time */
    int load_reps[CALIB_NLOAD];
    struct calib_fit load; /* a: us, b: us per byte */
    double h2d_gbs;
    double shared_s, shared_h2d_gbs, shared_cpu_gbs, shared_cpu_alone_gbs;
    double cpu_side_us, gpu_side_us;
    /* tile 64: whether it applies to the model (calib_types), and the
     * experts per launch of the measurement (n_slot) */
    bool mma_applies;
    char mma_note[96]; /* why not, when !mma_applies */
    int n_mma;
};

/* Fill r's types (and zero the rest of r) from the model's expert tensors.
 * MOED_EINVAL for a model without stacked experts or more than
 * SCHED_COST_MAX_TYPES triples. */
int calib_types(const struct model *m, struct calib_result *r, struct moed_err *e);

/* The CPU sweep of every type in about `seconds` (split over the types and
 * token counts; page-in not counted).  pool: the executor's workers (NULL:
 * the calling thread).  log: progress lines (NULL: none). */
int calib_cpu(const struct model *m, struct sched_pool *pool, double seconds,
              struct calib_result *r, FILE *log, struct moed_err *e);

/* The GPU part on CUDA device dev (after calib_cpu): kernels in about
 * seconds / 2, H2D, the tile-64 launches (at most CALIB_MMA_MAX_S) and the
 * shared run in about seconds / 6 each.  A build
 * or machine without CUDA fails with CUDA's (or "built without CUDA")
 * message. */
int calib_gpu(const struct model *m, int dev, struct sched_pool *pool, double seconds,
              struct calib_result *r, FILE *log, struct moed_err *e);

/* The cost model from r (see above for what is not measured). */
void calib_to_cost(const struct calib_result *r, struct sched_cost *c);

/* Every measurement and fit, as a readable table. */
void calib_print(const struct calib_result *r, FILE *f);

/* A cost model as a readable table (moed calibrate --show). */
void calib_print_cost(const struct sched_cost *c, FILE *f);

/* The cost-model name of an expert type triple (gate, up, down): "q4_k",
 * or "q4_k_q6_k" when down differs, ... (what calibration writes). */
void calib_type_name(uint32_t tg, uint32_t tu, uint32_t td, char *out, size_t n);

#endif
