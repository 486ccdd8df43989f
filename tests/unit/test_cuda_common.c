/* Shared by the GPU tests (test_cuda.h). */
#include "tests/unit/test_cuda.h"

#include <stdio.h>

const char *test_gpu_unavailable(void)
{
    static char why[MOED_ERR_MSG + 64];
    static int state; /* 0 unknown, 1 usable, 2 not */
    if (state == 1)
        return NULL;
    if (state == 2)
        return why;
    struct moed_err e = {0};
    int n = kcuda_device_count(&e);
    if (n < 0) {
        snprintf(why, sizeof why, "no CUDA device: %s", e.msg);
    } else if (n == 0) {
        snprintf(why, sizeof why, "no CUDA device: the driver reports none");
    } else if (kc_set_device(0, &e)) {
        snprintf(why, sizeof why, "no CUDA device: %s", e.msg);
    } else {
        state = 1;
        return NULL;
    }
    state = 2;
    return why;
}
