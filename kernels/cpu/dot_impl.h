/*
 * Private to the dispatched dot kernels (dot.c, matmul.c and the per-ISA
 * files dot_avx2.c, dot_avx512.c, act_avx2.c, act_avx512.c).
 *
 * Each ISA file offers, per weight type, two entry points:
 *   dot   the kern_vec_dot_fn of dot.h (one weight row, one activation row);
 *   tile  one weight row against nt (1..KERN_TILE_T) activation rows, so a
 *         weight block is loaded and unpacked once for several tokens.
 * The matmul driver (matmul.c) is plain C and calls these through pointers.
 */
#ifndef MOED_KERNELS_DOT_IMPL_H
#define MOED_KERNELS_DOT_IMPL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels/cpu/dot.h"

/* Most activation rows a tile kernel takes at once. */
#define KERN_TILE_T 4

/*
 * s[t * s_stride] = dot(w, row t of a) for t < nt (1 <= nt <= KERN_TILE_T);
 * activation row t starts a_stride bytes after row t - 1.
 */
typedef void (*kern_dot_tile_fn)(int64_t n, const void *w, const void *a, size_t a_stride,
                                 float *s, int64_t s_stride, int nt);

struct kern_dot_kernels {
    kern_vec_dot_fn dot;   /* NULL: this level has no kernel for the type */
    kern_dot_tile_fn tile; /* NULL: loop over dot */
};

/* Kernels of one level for weight type t (zeroed struct when absent). */
struct kern_dot_kernels kern_dot_avx2(uint32_t t);
/* vnni/bf16: use vpdpbusd/vpdpwssd and vdpbf16ps (the caller checks the CPU). */
struct kern_dot_kernels kern_dot_avx512(uint32_t t, bool vnni, bool bf16);

/* Activation quantizers of one level for activation type t, or NULL. */
kern_quant_row_fn kern_quant_act_avx2(uint32_t t);
kern_quant_row_fn kern_quant_act_avx512(uint32_t t);

/* Kernels for (type, isa) after the fallback described in dot.h, with the
 * AVX-512 extensions chosen explicitly (tests exercise both settings). */
struct kern_dot_kernels kern_dot_kernels_ex(uint32_t wtype, enum kern_isa isa, bool vnni,
                                            bool bf16);
/* The same with the extensions the CPU has. */
struct kern_dot_kernels kern_dot_kernels_get(uint32_t wtype, enum kern_isa isa);

#endif
