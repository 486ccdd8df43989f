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

#endif
