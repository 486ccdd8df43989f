/*
 * The C face of the CUDA kernels.  Everything CUDA lives in .cu files
 * behind this header (extern "C"), so the daemon builds and runs with
 * MOED_CUDA=0, and a CUDA build still runs on a machine with no GPU: every
 * entry point then fails cleanly with a message.
 */
#ifndef MOED_KERNELS_KCUDA_H
#define MOED_KERNELS_KCUDA_H

#include <stdbool.h>
#include <stddef.h>

#include "common/err.h"

#ifdef __cplusplus
extern "C" {
#endif

struct kcuda_device {
    char name[256];
    int cc_major, cc_minor;
    int sm_count;
    size_t mem_total, mem_free;
};

/* True when this binary was built with CUDA. */
bool kcuda_built(void);
/* Number of usable devices (0 ok), or a negative code with e saying why
 * (built without CUDA, no driver, ...). */
int kcuda_device_count(struct moed_err *e);
int kcuda_device_info(int dev, struct kcuda_device *out, struct moed_err *e);
/* Runs a tiny kernel (y = a*x + y on n floats) on dev and checks the
 * result on the host: proves that the toolchain, driver and device agree. */
int kcuda_selftest(int dev, struct moed_err *e);

#ifdef __cplusplus
}
#endif

#endif
