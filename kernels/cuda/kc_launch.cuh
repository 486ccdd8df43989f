// Launch helpers shared by the elementwise, attention and routing kernels
// (kc_ops.cu, kc_attn.cu, kc_moe.cu): launch error reporting and
// programmatic dependent launch.
#ifndef MOED_KERNELS_KC_LAUNCH_CUH
#define MOED_KERNELS_KC_LAUNCH_CUH

#include <cuda_runtime.h>
#include <stdlib.h>

#include <atomic>

#include "kernels/cuda/kc.h"

#define S(s) ((cudaStream_t)(s))

static int launched(struct moed_err *e, const char *what)
{
    cudaError_t rc = cudaGetLastError();
    if (rc == cudaSuccess)
        return 0;
    return moed_err_set(e, MOED_EIO, "CUDA %s launch: %s (%s)", what, cudaGetErrorString(rc),
                        cudaGetErrorName(rc));
}

// As launched(), for a launch that returned lr.
static int launched_rc(cudaError_t lr, struct moed_err *e, const char *what)
{
    if (lr == cudaSuccess)
        return launched(e, what);
    (void)cudaGetLastError();
    return moed_err_set(e, MOED_EIO, "CUDA %s launch: %s (%s)", what, cudaGetErrorString(lr),
                        cudaGetErrorName(lr));
}

// Programmatic dependent launch (sm_90): the decode kernels are launched
// with cudaLaunchAttributeProgrammaticStreamSerialization, so their CTAs
// may be scheduled while the previous kernel of the stream drains; each
// kernel waits for it (griddepcontrol.wait: the previous grids complete and
// their writes visible) before touching global memory, in every CTA.  A
// kernel launched without the attribute waits for nothing there.  MOED_KC_PDL=0
// in the environment launches them the ordinary way.
static bool pdl_on(void)
{
    static std::atomic<int> v(-1);
    int x = v.load();
    if (x < 0) {
        const char *s = getenv("MOED_KC_PDL");
        x = s && s[0] == '0' ? 0 : 1;
        v.store(x);
    }
    return x == 1;
}

template <typename... KA, typename... A>
static cudaError_t launch_k(void (*k)(KA...), dim3 grid, dim3 block, size_t smem, kc_stream s,
                            A... args)
{
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = S(s);
    cudaLaunchAttribute at[1];
    at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = at;
    cfg.numAttrs = pdl_on() ? 1 : 0;
    return cudaLaunchKernelEx(&cfg, k, ((KA)args)...);
}

// Waits for the previous kernel of the stream (see launch_k) and lets the
// next one, if launched so, be scheduled.
__device__ static inline void pdl_wait()
{
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
}

#endif
