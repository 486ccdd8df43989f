/* Small pieces the one-shot commands (moed run, perplexity, tokenize) share. */
#ifndef MOED_DAEMON_CLI_H
#define MOED_DAEMON_CLI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "sched/cost.h"
#include "sched/hybrid.h"
#include "sched/pool.h"

struct model;
struct model_hparams;
struct tok;

/* Seconds on the monotonic clock. */
double cli_now_s(void);

/* A decimal integer in lo..hi given to flag; on error prints
 * "moed CMD: FLAG 'S': expected an integer in LO..HI" and returns -1. */
int cli_parse_long(const char *cmd, const char *flag, const char *s, long lo, long hi, long *out);

/* Read all of f (NUL-terminated; *len excludes the NUL); NULL with errno set
 * on failure. */
char *cli_read_all(FILE *f, size_t *len);

/* Open the model at path and its tokenizer; print any tokenizer warning.
 * On failure print "moed CMD: ..." and return 1: what was opened is left for
 * the caller's cleanup (model_close and tok_free accept what is zeroed). */
int cli_model_open(const char *cmd, const char *path, struct model *m, struct tok **tok);

/* "GPU N: NAME, sm_XY, N SMs, X GiB" and ", no CUDA graphs" / ", CUDA
 * graphs for decode": which device --gpu runs on (the error when the device
 * cannot be queried). */
void cli_describe_gpu(int dev, int no_graph, char *buf, size_t n);

/*
 * The hybrid flags of moed run and moed bench (sched/hybrid.h), each valid
 * only with --gpu N:
 *   --expert-budget B   hybrid on; B is a share of all the model's experts
 *                       ("25%", "0.25"; 0: the minimum pool) or bytes of GPU
 *                       slots ("12G", "512M"), conf_parse_budget's syntax
 *   --cache-policy P    lru, lfu or score (default score; not belady)
 *   --static-placement, --no-prefetch, --no-plan, --force-hybrid, --staging
 *                       hybrid_opts' static_layers, no_prefetch, no_plan,
 *                       force, force_staging
 *   --cost FILE         the cost model (sched_cost_load)
 * The flags other than --expert-budget need it.
 */
struct cli_hybrid {
    bool on;                /* --expert-budget given */
    const char *budget;     /* its text */
    const char *first;      /* the first hybrid flag given (for "needs --gpu") */
    const char *needs;      /* the first flag given that needs --expert-budget */
    const char *cost_path;  /* --cost */
    struct sched_cost cost; /* loaded by cli_hybrid_check */
    struct hybrid_opts o;   /* what fwd_opts.hybrid points at (pool: fwd_opts.pool) */
};

/* Defaults: off, policy score. */
void cli_hybrid_init(struct cli_hybrid *h);

/* If argv[*i] is a hybrid flag, take it (and its value: *i moves past it).
 * Returns 1 when taken, 0 when argv[*i] is not a hybrid flag, 2 after
 * printing "moed CMD: ..." for a bad or missing value. */
int cli_hybrid_arg(const char *cmd, int argc, char **argv, int *i, struct cli_hybrid *h);

/* After all flags: every hybrid flag needs --gpu (gpu), the others need
 * --expert-budget; loads --cost.  0, or 2 after printing "moed CMD: ...". */
int cli_hybrid_check(const char *cmd, struct cli_hybrid *h, bool gpu);

/* The --help lines of the hybrid flags, descriptions from column col. */
void cli_hybrid_usage(FILE *f, int col);

/* The CPU workers of a hybrid run: nthreads (0: one per physical core the
 * process may use, sched/topo.h), each pinned to its own physical core, the
 * calling thread (worker 0) too; when that cannot be (more threads than
 * cores, no topology, pinning refused) unpinned, with a note "moed CMD:
 * note: ..." on stderr.  desc receives "16 threads pinned one per physical
 * core" or "N threads (not pinned)".  0, or the error of sched_pool_init. */
int cli_hybrid_pool(const char *cmd, int nthreads, struct sched_pool **pool, char *desc, size_t n,
                    struct moed_err *e);

/* Where the slots are: brief "hybrid 25.0% score" (the backend column),
 * else "hybrid: 20 of 80 experts in GPU slots (0.05 GiB, 25.0%), policy
 * score, loads from the registered mapping, prefetch on, planner on, cost
 * model FILE". */
void cli_hybrid_describe(const struct cli_hybrid *h, const struct hybrid_stats *st,
                         const struct model_hparams *hp, bool brief, char *buf, size_t n);

/* One line (prefix, then the summary, then a newline) of what the executor
 * did over n_tok tokens (st from hybrid_stats_get after a reset): the budget,
 * the policy, the plan mix, the cache hit rate, loads and evictions per
 * token, prefetches and their hits, the prediction accuracy, PCIe MB per
 * token and the host's time per layer (in hybrid_moe; waiting for the
 * routing; CPU experts; prediction; the rest: "overhead/layer"). */
void cli_hybrid_print(FILE *f, const char *prefix, const struct cli_hybrid *h,
                      const struct hybrid_stats *st, const struct model_hparams *hp,
                      uint64_t n_tok);

#endif
