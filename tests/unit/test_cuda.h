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

#endif
