/* The CUDA entry points of kcuda.h for a build without CUDA (MOED_CUDA=0
 * or no nvcc): each says so instead of failing obscurely. */
#include "kernels/cuda/kcuda.h"

#ifndef MOED_HAVE_CUDA
static int no_cuda(struct moed_err *e)
{
    return moed_err_set(e, MOED_EUNSUPPORTED, "built without CUDA (MOED_CUDA=0 or no nvcc)");
}

bool kcuda_built(void) { return false; }
int kcuda_device_count(struct moed_err *e) { return no_cuda(e); }

int kcuda_device_info(int dev, struct kcuda_device *out, struct moed_err *e)
{
    (void)dev;
    (void)out;
    return no_cuda(e);
}

int kcuda_selftest(int dev, struct moed_err *e)
{
    (void)dev;
    return no_cuda(e);
}
#else
typedef int moed_nocuda_unused; /* ISO C wants a non-empty unit */
#endif
