/*
 * Weight formats: block layouts byte-identical to GGUF's, the scalar
 * reference dequantize/quantize for each, and f16/bf16 conversions.
 *
 * The scalar functions here are the definition every SIMD path is tested
 * against; they favour clarity over speed.  A row of n elements must have n
 * a multiple of the type's block size (types.h).
 */
#ifndef MOED_KERNELS_QUANT_H
#define MOED_KERNELS_QUANT_H

#include <assert.h>
#include <stdint.h>
#include <string.h>

#include "kernels/cpu/types.h"

typedef uint16_t kern_f16;  /* IEEE half, raw bits */
typedef uint16_t kern_bf16; /* bfloat16, raw bits */

/* 32-element blocks */
typedef struct { kern_f16 d; uint8_t qs[16]; } block_q4_0;                  /* w = d * (q - 8) */
typedef struct { kern_f16 d, m; uint8_t qs[16]; } block_q4_1;               /* w = d * q + m */
typedef struct { kern_f16 d; uint8_t qh[4]; uint8_t qs[16]; } block_q5_0;   /* w = d * (q - 16) */
typedef struct { kern_f16 d, m; uint8_t qh[4]; uint8_t qs[16]; } block_q5_1; /* w = d * q + m */
typedef struct { kern_f16 d; int8_t qs[32]; } block_q8_0;                   /* w = d * q */
typedef struct { kern_f16 d, s; int8_t qs[32]; } block_q8_1;                /* s = d * sum(q) */

/* 256-element super-blocks (k-quants) */
typedef struct { uint8_t scales[QK_K / 16]; uint8_t qs[QK_K / 4]; kern_f16 d, dmin; } block_q2_K;
typedef struct { uint8_t hmask[QK_K / 8]; uint8_t qs[QK_K / 4]; uint8_t scales[12]; kern_f16 d; } block_q3_K;
typedef struct { kern_f16 d, dmin; uint8_t scales[12]; uint8_t qs[QK_K / 2]; } block_q4_K;
typedef struct { kern_f16 d, dmin; uint8_t scales[12]; uint8_t qh[QK_K / 8]; uint8_t qs[QK_K / 2]; } block_q5_K;
typedef struct { uint8_t ql[QK_K / 2]; uint8_t qh[QK_K / 4]; int8_t scales[QK_K / 16]; kern_f16 d; } block_q6_K;
/* Activations for k-quant dot products: bsums[j] = sum of qs[16j..16j+15]. */
typedef struct { float d; int8_t qs[QK_K]; int16_t bsums[QK_K / 16]; } block_q8_K;

static_assert(sizeof(block_q4_0) == 18, "q4_0");
static_assert(sizeof(block_q4_1) == 20, "q4_1");
static_assert(sizeof(block_q5_0) == 22, "q5_0");
static_assert(sizeof(block_q5_1) == 24, "q5_1");
static_assert(sizeof(block_q8_0) == 34, "q8_0");
static_assert(sizeof(block_q8_1) == 36, "q8_1");
static_assert(sizeof(block_q2_K) == 84, "q2_K");
static_assert(sizeof(block_q3_K) == 110, "q3_K");
static_assert(sizeof(block_q4_K) == 144, "q4_K");
static_assert(sizeof(block_q5_K) == 176, "q5_K");
static_assert(sizeof(block_q6_K) == 210, "q6_K");
static_assert(sizeof(block_q8_K) == 292, "q8_K");

/* f16 <-> f32 (round to nearest even; inf/nan preserved), bf16 likewise. */
float kern_f16_to_f32(kern_f16 h);
kern_f16 kern_f32_to_f16(float f);
float kern_bf16_to_f32(kern_bf16 h);
kern_bf16 kern_f32_to_bf16(float f);

/*
 * Scalar reference conversions of one row.  Return 0, or MOED_EUNSUPPORTED
 * for a type without that direction, MOED_EINVAL when n is not a multiple
 * of the block size.
 * Dequantize: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, Q2_K,
 *   Q3_K, Q4_K, Q5_K, Q6_K, Q8_K.
 * Quantize: at least F32, F16, BF16, Q8_0, Q8_1, Q8_K, Q4_0, Q4_1, Q5_0,
 *   Q5_1, Q4_K, Q5_K, Q6_K, Q2_K, Q3_K (round-to-nearest, no importance matrix).
 */
int kern_dequant_row_ref(uint32_t type, const void *src, float *dst, int64_t n);
int kern_quant_row_ref(uint32_t type, const float *src, void *dst, int64_t n);

/*
 * The activation type a weight type's dot product pairs with:
 * F32, F16 -> F32; BF16 -> BF16; Q4_0, Q5_0, Q8_0 -> Q8_0;
 * Q4_1, Q5_1 -> Q8_1; Q2_K..Q6_K -> Q8_K.  -1 for types without a dot.
 */
int kern_vec_dot_type(uint32_t type);

/*
 * Sub-block scales of the k-quants, shared by the reference and the SIMD
 * kernels so the bit layout is written down once.
 *
 * Q4_K/Q5_K: eight 6-bit scales sc[j] and mins m[j] in 12 bytes q[]:
 *   j < 4:  sc = q[j] & 63,                     m = q[j+4] & 63
 *   j >= 4: sc = (q[j+4] & 15) | (q[j-4] >> 6) << 4,
 *           m  = (q[j+4] >> 4) | (q[j]   >> 6) << 4
 * (ggml's get_scale_min_k4).
 */
static inline void kern_q4_K_scale_min(int j, const uint8_t *q, uint8_t *sc, uint8_t *m)
{
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

/*
 * Q3_K: sixteen 6-bit scales stored with a bias of 32 in 12 bytes q[]:
 * low 4 bits in q[j] (j < 8) or q[j-8] >> 4 (j >= 8), high 2 bits in
 * bits 2*(j/4) of q[8 + j%4].  Returns the signed scale, -32..31.
 */
static inline int kern_q3_K_scale(int j, const uint8_t *q)
{
    int lo = j < 8 ? (q[j] & 0xF) : (q[j - 8] >> 4);
    int hi = (q[8 + (j & 3)] >> (2 * (j >> 2))) & 3;
    return (lo | (hi << 4)) - 32;
}

#endif
