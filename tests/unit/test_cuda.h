/*
 * GPU tests: each starts with GPU_OR_SKIP(), which skips it with the
 * reason ("no CUDA device: ...") on machines without one (CI) and makes
 * device 0 current otherwise.  make test-gpu runs the tests named cuda_*.
 */
#ifndef MOED_TESTS_TEST_CUDA_H
#define MOED_TESTS_TEST_CUDA_H

#include "kernels/cuda/kc.h"
#include "kernels/cuda/kcuda.h"
#include "tests/unit/harness.h"

/* NULL when a device is usable (and now current), else why not. */
const char *test_gpu_unavailable(void);

#define GPU_OR_SKIP()                                                       \
    do {                                                                    \
        const char *why_ = test_gpu_unavailable();                          \
        if (why_) {                                                         \
            SKIP(why_);                                                     \
        }                                                                   \
    } while (0)

/* The grouping of kc.h (struct kc_moe_groups) built on the host, for the
 * expert kernels' tests: pairs by expert, then token; tiles of at most
 * `tile` pairs; unused tile entries poisoned.  pair_exp: each pair's expert. */
struct grouping {
    int n_pairs, n_tiles, max_tiles;
    int32_t *pair_tok, *pair_of, *pair_exp, *tiles;
};
bool grouping_make(struct grouping *g, const int32_t *ids, int n_tok, int k, int n_expert,
                   int tile);
void grouping_free(struct grouping *g);

/*
 * Model runs for the forward-pass tests: N_SEQ sequences, prompts of P_LEN
 * tokens (one step, or one token per sequence per step when stepwise),
 * then N_DEC decode steps with the sequences batched; all logits, the
 * prompts' sequence-major, into out ((N_SEQ * P_LEN + N_DEC * N_SEQ) rows).
 * o is used with max_batch set; hst (may be NULL) gets the hybrid
 * executor's counters at the end (zeros when not hybrid).
 */
#define CM_P_LEN 40
#define CM_N_DEC 8
#define CM_N_SEQ 2
#define CM_ROWS (CM_N_SEQ * CM_P_LEN + CM_N_DEC * CM_N_SEQ)
struct fwd_opts;
struct hybrid_stats;
struct model;
int cuda_model_run(const struct model *m, const struct fwd_opts *o, bool stepwise, float *out,
                   struct hybrid_stats *hst, struct moed_err *e);
/* argmax and the gap to the runner-up; relative rms of a - ref; max - min. */
int cm_argmax2(const float *x, int n, float *margin);
double cm_rel_rms(const float *a, const float *ref, size_t n);
double cm_logit_range(const float *x, size_t n);
/* The argument after flag in a NULL-terminated list, "?" if none. */
const char *cm_arg_after(const char *const *args, const char *flag);

#endif
