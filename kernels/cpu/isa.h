/*
 * Runtime ISA dispatch.  The kernels are built for three levels: scalar
 * (the reference), AVX2+FMA+F16C, and AVX-512 (F, BW, VL, DQ, plus VNNI and
 * BF16 where the CPU has them).  kern_isa_active() is what the dispatchers
 * use: the best level the CPU and OS support, lowered by the environment
 * variable MOED_ISA=scalar|avx2|avx512 or by kern_isa_set() (tests compare
 * every level against the scalar reference this way).
 */
#ifndef MOED_KERNELS_ISA_H
#define MOED_KERNELS_ISA_H

#include <stdbool.h>

enum kern_isa { KERN_ISA_SCALAR = 0, KERN_ISA_AVX2 = 1, KERN_ISA_AVX512 = 2 };

struct kern_cpu_features {
    bool avx2, fma, f16c;
    bool avx512f, avx512bw, avx512vl, avx512dq, avx512vnni, avx512bf16;
    bool amx_tile, amx_int8, amx_bf16;
};

const struct kern_cpu_features *kern_cpu_features(void);
enum kern_isa kern_isa_best(void);
enum kern_isa kern_isa_active(void);
/* Force a level (<= best); returns 0 or MOED_EUNSUPPORTED. */
int kern_isa_set(enum kern_isa isa);
const char *kern_isa_name(enum kern_isa isa);
/* "avx512 (vnni bf16)" style summary of the active level. */
const char *kern_isa_describe(void);

#endif
