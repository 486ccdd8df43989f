/*
 * Dot products of a weight row with an activation row, and the matrix
 * products built on them.
 *
 * A weight row of type t pairs with an activation row already converted to
 * kern_vec_dot_type(t) (quant.h): for the integer formats the activation is
 * quantized once per token (Q8_0, Q8_1 or Q8_K) and the inner loop is an
 * integer dot; F32/F16 weights take F32 activations, BF16 takes BF16.
 *
 * kern_vec_dot_ref is the scalar reference: it follows the format's
 * definition step by step, and every SIMD path is tested against it.
 */
#ifndef MOED_KERNELS_DOT_H
#define MOED_KERNELS_DOT_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/cpu/isa.h"
#include "kernels/cpu/types.h"

/* *s = dot(w, a) over n elements (n a multiple of the block size). */
typedef void (*kern_vec_dot_fn)(int64_t n, float *s, const void *w, const void *a);

/* Scalar reference; returns 0 or MOED_EUNSUPPORTED for a type without a dot. */
int kern_vec_dot_ref(uint32_t wtype, int64_t n, float *s, const void *w, const void *a);

/* ---- dispatched kernels, matvec and matmul (kernels/cpu/dot.c) ---- */

#endif
