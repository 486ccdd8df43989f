/*
 * Private to the scalar reference (quant_ref.c, quant_ref_k.c, dot_ref.c):
 * per-type row converters and the rounding helpers they share.  Every row
 * function takes nb whole blocks; the public entry points in quant_ref.c
 * check n and dispatch.
 */
#ifndef MOED_KERNELS_QUANT_REF_IMPL_H
#define MOED_KERNELS_QUANT_REF_IMPL_H

#include <math.h>

#include "kernels/cpu/quant.h"

/*
 * Quantizers turn a float into a small integer.  The float may be NaN or
 * huge when the input row is (an int cast of those is undefined), so every
 * helper clamps first: NaN goes to lo.
 */

/* Round to nearest, ties to even (rintf in the default rounding mode). */
static inline int ref_round_even(float v, int lo, int hi)
{
    if (!(v > (float)lo))
        return lo;
    if (!(v < (float)hi))
        return hi;
    return (int)rintf(v);
}

/* Round to nearest, ties away from zero (roundf), as Q8_0/Q8_1 define. */
static inline int ref_round_away(float v, int lo, int hi)
{
    if (!(v > (float)lo))
        return lo;
    if (!(v < (float)hi))
        return hi;
    return (int)roundf(v);
}

/* Truncate toward zero; Q4_0..Q5_1 round by truncating v + 0.5. */
static inline int ref_trunc(float v, int lo, int hi)
{
    if (!(v > (float)lo))
        return lo;
    if (!(v < (float)hi))
        return hi;
    return (int)v;
}

void ref_dequant_q2_K(const block_q2_K *x, float *y, int64_t nb);
void ref_dequant_q3_K(const block_q3_K *x, float *y, int64_t nb);
void ref_dequant_q4_K(const block_q4_K *x, float *y, int64_t nb);
void ref_dequant_q5_K(const block_q5_K *x, float *y, int64_t nb);
void ref_dequant_q6_K(const block_q6_K *x, float *y, int64_t nb);
void ref_dequant_q8_K(const block_q8_K *x, float *y, int64_t nb);

void ref_quant_q2_K(const float *x, block_q2_K *y, int64_t nb);
void ref_quant_q3_K(const float *x, block_q3_K *y, int64_t nb);
void ref_quant_q4_K(const float *x, block_q4_K *y, int64_t nb);
void ref_quant_q5_K(const float *x, block_q5_K *y, int64_t nb);
void ref_quant_q6_K(const float *x, block_q6_K *y, int64_t nb);
void ref_quant_q8_K(const float *x, block_q8_K *y, int64_t nb);

#endif
