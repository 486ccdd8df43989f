/* moed version: what this binary was built with and what it finds here. */
#include <stdio.h>

#include "daemon/cmds.h"
#include "kernels/cpu/isa.h"
#include "kernels/cuda/kcuda.h"

#ifndef MOED_VERSION
#define MOED_VERSION "dev"
#endif

int cmd_version(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    printf("moed %s\n", MOED_VERSION);
    printf("cpu isa: %s\n", kern_isa_describe());
    if (!kcuda_built()) {
        printf("cuda: not built in\n");
        return 0;
    }
    struct moed_err e = {0};
    int n = kcuda_device_count(&e);
    if (n < 0) {
        printf("cuda: built in; no usable device: %s\n", e.msg);
        return 0;
    }
    printf("cuda: built in; %d device(s)\n", n);
    for (int d = 0; d < n; d++) {
        struct kcuda_device info;
        if (kcuda_device_info(d, &info, &e) < 0) {
            printf("  [%d] %s\n", d, e.msg);
            continue;
        }
        int st = kcuda_selftest(d, &e);
        printf("  [%d] %s, sm_%d%d, %d SMs, %.1f/%.1f GiB free, self-test %s%s\n", d, info.name,
               info.cc_major, info.cc_minor, info.sm_count, info.mem_free / 1073741824.0,
               info.mem_total / 1073741824.0, st == 0 ? "ok" : "FAILED: ", st == 0 ? "" : e.msg);
    }
    return 0;
}
