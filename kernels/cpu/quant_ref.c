/*
 * Scalar reference of the 32-element block formats (Q4_0 .. Q8_1) and of the
 * plain float types, plus the public row entry points that dispatch to
 * these and to the k-quants (quant_ref_k.c).
 *
 * Layouts and element order are GGUF's (ggml's dequantize_row_*), so rows
 * written by llama.cpp decode identically.  In a 32-element block, byte
 * qs[j] (j < 16) holds element j in its low nibble and element j + 16 in
 * its high nibble; for Q5 the fifth bit of element j is bit j of the
 * little-endian 32-bit word qh.
 *
 * Quantizers use the scales ggml's reference quantizers use (no importance
 * matrix): symmetric formats put the element of largest magnitude at the
 * most negative code (d = max / -8 for Q4_0) so the asymmetric code range
 * is used in full; the _1 formats spread [min, max] over all codes.  The
 * output of Q4_0 .. Q8_0 is byte-identical to ggml's, and every decoder
 * matches llama.cpp's bit for bit (tests/unit/test_quant_golden.c).
 */
#include "common/err.h"
#include "kernels/cpu/quant_ref_impl.h"

#define QK 32

/* ---- dequantize ------------------------------------------------------- */

/* w = d * (q - 8) */
static void dequant_q4_0(const block_q4_0 *x, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, y += QK) {
        float d = kern_f16_to_f32(x[i].d);
        for (int j = 0; j < QK / 2; j++) {
            y[j] = (float)((x[i].qs[j] & 0xF) - 8) * d;
            y[j + QK / 2] = (float)((x[i].qs[j] >> 4) - 8) * d;
        }
    }
}

/* w = d * q + m */
static void dequant_q4_1(const block_q4_1 *x, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, y += QK) {
        float d = kern_f16_to_f32(x[i].d), m = kern_f16_to_f32(x[i].m);
        for (int j = 0; j < QK / 2; j++) {
            y[j] = (float)(x[i].qs[j] & 0xF) * d + m;
            y[j + QK / 2] = (float)(x[i].qs[j] >> 4) * d + m;
        }
    }
}

static uint32_t load_qh(const uint8_t qh[4])
{
    return (uint32_t)qh[0] | (uint32_t)qh[1] << 8 | (uint32_t)qh[2] << 16 | (uint32_t)qh[3] << 24;
}

/* 5-bit code of element j of a Q5 block: nibble plus bit j of qh as bit 4. */
static int q5_code(const uint8_t *qs, uint32_t qh, int j)
{
    int lo = j < QK / 2 ? (qs[j] & 0xF) : (qs[j - QK / 2] >> 4);
    return lo | (int)((qh >> j) & 1u) << 4;
}

/* w = d * (q - 16) */
static void dequant_q5_0(const block_q5_0 *x, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, y += QK) {
        float d = kern_f16_to_f32(x[i].d);
        uint32_t qh = load_qh(x[i].qh);
        for (int j = 0; j < QK; j++)
            y[j] = (float)(q5_code(x[i].qs, qh, j) - 16) * d;
    }
}

/* w = d * q + m */
static void dequant_q5_1(const block_q5_1 *x, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, y += QK) {
        float d = kern_f16_to_f32(x[i].d), m = kern_f16_to_f32(x[i].m);
        uint32_t qh = load_qh(x[i].qh);
        for (int j = 0; j < QK; j++)
            y[j] = (float)q5_code(x[i].qs, qh, j) * d + m;
    }
}

static void dequant_q8_0(const block_q8_0 *x, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, y += QK) {
        float d = kern_f16_to_f32(x[i].d);
        for (int j = 0; j < QK; j++)
            y[j] = (float)x[i].qs[j] * d;
    }
}

/* s is only a cached d * sum(q) for dot products; values are d * q. */
static void dequant_q8_1(const block_q8_1 *x, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, y += QK) {
        float d = kern_f16_to_f32(x[i].d);
        for (int j = 0; j < QK; j++)
            y[j] = (float)x[i].qs[j] * d;
    }
}

/* ---- quantize --------------------------------------------------------- */

/* Value of largest magnitude (with its sign); the first one on ties. */
static float signed_absmax(const float *x, int n)
{
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < n; j++)
        if (fabsf(x[j]) > amax) {
            amax = fabsf(x[j]);
            max = x[j];
        }
    return max;
}

static void min_max(const float *x, int n, float *mn, float *mx)
{
    *mn = INFINITY;
    *mx = -INFINITY;
    for (int j = 0; j < n; j++) {
        if (x[j] < *mn)
            *mn = x[j];
        if (x[j] > *mx)
            *mx = x[j];
    }
}

/* d = max / -8 maps the extreme element to code 0 (value -8 d); the others
 * fall in [-8, 8] * d and round by truncating q + 8.5, clamped to 15. */
static void quant_q4_0(const float *x, block_q4_0 *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, x += QK) {
        float d = signed_absmax(x, QK) / -8.0f;
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = kern_f32_to_f16(d);
        for (int j = 0; j < QK / 2; j++) {
            int q0 = ref_trunc(x[j] * id + 8.5f, 0, 15);
            int q1 = ref_trunc(x[j + QK / 2] * id + 8.5f, 0, 15);
            y[i].qs[j] = (uint8_t)(q0 | q1 << 4);
        }
    }
}

/* d = (max - min) / 15, m = min; q = trunc((x - min) / d + 0.5). */
static void quant_q4_1(const float *x, block_q4_1 *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, x += QK) {
        float mn, mx;
        min_max(x, QK, &mn, &mx);
        float d = (mx - mn) / 15.0f;
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = kern_f32_to_f16(d);
        y[i].m = kern_f32_to_f16(mn);
        for (int j = 0; j < QK / 2; j++) {
            int q0 = ref_trunc((x[j] - mn) * id + 0.5f, 0, 15);
            int q1 = ref_trunc((x[j + QK / 2] - mn) * id + 0.5f, 0, 15);
            y[i].qs[j] = (uint8_t)(q0 | q1 << 4);
        }
    }
}

/* Split 5-bit codes q[32] into nibbles qs and the bit-4 word qh. */
static void pack_q5(const int *q, uint8_t qs[16], uint8_t qh[4])
{
    uint32_t h = 0;
    for (int j = 0; j < QK / 2; j++)
        qs[j] = (uint8_t)((q[j] & 0xF) | (q[j + QK / 2] & 0xF) << 4);
    for (int j = 0; j < QK; j++)
        h |= (uint32_t)(q[j] >> 4 & 1) << j;
    for (int k = 0; k < 4; k++)
        qh[k] = (uint8_t)(h >> (8 * k));
}

/* As Q4_0 with 32 levels: d = max / -16. */
static void quant_q5_0(const float *x, block_q5_0 *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, x += QK) {
        float d = signed_absmax(x, QK) / -16.0f;
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        int q[QK];
        y[i].d = kern_f32_to_f16(d);
        for (int j = 0; j < QK; j++)
            q[j] = ref_trunc(x[j] * id + 16.5f, 0, 31);
        pack_q5(q, y[i].qs, y[i].qh);
    }
}

/* As Q4_1 with 32 levels: d = (max - min) / 31. */
static void quant_q5_1(const float *x, block_q5_1 *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, x += QK) {
        float mn, mx;
        min_max(x, QK, &mn, &mx);
        float d = (mx - mn) / 31.0f;
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        int q[QK];
        y[i].d = kern_f32_to_f16(d);
        y[i].m = kern_f32_to_f16(mn);
        for (int j = 0; j < QK; j++)
            q[j] = ref_trunc((x[j] - mn) * id + 0.5f, 0, 31);
        pack_q5(q, y[i].qs, y[i].qh);
    }
}

/* d = amax / 127, q = round(x / d) (ties away from zero). */
static void quant_q8_0(const float *x, block_q8_0 *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, x += QK) {
        float d = fabsf(signed_absmax(x, QK)) / 127.0f;
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = kern_f32_to_f16(d);
        for (int j = 0; j < QK; j++)
            y[i].qs[j] = (int8_t)ref_round_away(x[j] * id, -127, 127);
    }
}

/* As Q8_0, plus s = d * sum(q) with the unrounded d (as ggml writes it);
 * a dot with a Q4_1/Q5_1 weight uses s for the min term m * sum(a). */
static void quant_q8_1(const float *x, block_q8_1 *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, x += QK) {
        float d = fabsf(signed_absmax(x, QK)) / 127.0f;
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        int sum = 0;
        y[i].d = kern_f32_to_f16(d);
        for (int j = 0; j < QK; j++) {
            y[i].qs[j] = (int8_t)ref_round_away(x[j] * id, -127, 127);
            sum += y[i].qs[j];
        }
        y[i].s = kern_f32_to_f16((float)sum * d);
    }
}

/* ---- public entry points ---------------------------------------------- */

/* Types the reference converts, both ways (quant.h lists them). */
static int has_ref(uint32_t type)
{
    switch (type) {
    case KT_F32:
    case KT_F16:
    case KT_BF16:
    case KT_Q4_0:
    case KT_Q4_1:
    case KT_Q5_0:
    case KT_Q5_1:
    case KT_Q8_0:
    case KT_Q8_1:
    case KT_Q2_K:
    case KT_Q3_K:
    case KT_Q4_K:
    case KT_Q5_K:
    case KT_Q6_K:
    case KT_Q8_K: return 1;
    default: return 0;
    }
}

/* Number of blocks in n elements of a converted type, or a negative code. */
static int64_t row_blocks(uint32_t type, int64_t n)
{
    if (!has_ref(type))
        return MOED_EUNSUPPORTED;
    uint32_t blck = kern_type_traits(type)->blck;
    if (n < 0 || n % blck != 0)
        return MOED_EINVAL;
    return n / blck;
}

int kern_dequant_row_ref(uint32_t type, const void *src, float *dst, int64_t n)
{
    int64_t nb = row_blocks(type, n);
    if (nb < 0)
        return (int)nb;
    switch (type) {
    case KT_F32:
        if (nb)
            memmove(dst, src, (size_t)nb * sizeof(float));
        return 0;
    case KT_F16:
        for (int64_t i = 0; i < nb; i++)
            dst[i] = kern_f16_to_f32(((const kern_f16 *)src)[i]);
        return 0;
    case KT_BF16:
        for (int64_t i = 0; i < nb; i++)
            dst[i] = kern_bf16_to_f32(((const kern_bf16 *)src)[i]);
        return 0;
    case KT_Q4_0: dequant_q4_0(src, dst, nb); return 0;
    case KT_Q4_1: dequant_q4_1(src, dst, nb); return 0;
    case KT_Q5_0: dequant_q5_0(src, dst, nb); return 0;
    case KT_Q5_1: dequant_q5_1(src, dst, nb); return 0;
    case KT_Q8_0: dequant_q8_0(src, dst, nb); return 0;
    case KT_Q8_1: dequant_q8_1(src, dst, nb); return 0;
    case KT_Q2_K: ref_dequant_q2_K(src, dst, nb); return 0;
    case KT_Q3_K: ref_dequant_q3_K(src, dst, nb); return 0;
    case KT_Q4_K: ref_dequant_q4_K(src, dst, nb); return 0;
    case KT_Q5_K: ref_dequant_q5_K(src, dst, nb); return 0;
    case KT_Q6_K: ref_dequant_q6_K(src, dst, nb); return 0;
    case KT_Q8_K: ref_dequant_q8_K(src, dst, nb); return 0;
    default: return MOED_EUNSUPPORTED;
    }
}

int kern_quant_row_ref(uint32_t type, const float *src, void *dst, int64_t n)
{
    int64_t nb = row_blocks(type, n);
    if (nb < 0)
        return (int)nb;
    switch (type) {
    case KT_F32:
        if (nb)
            memmove(dst, src, (size_t)nb * sizeof(float));
        return 0;
    case KT_F16:
        for (int64_t i = 0; i < nb; i++)
            ((kern_f16 *)dst)[i] = kern_f32_to_f16(src[i]);
        return 0;
    case KT_BF16:
        for (int64_t i = 0; i < nb; i++)
            ((kern_bf16 *)dst)[i] = kern_f32_to_bf16(src[i]);
        return 0;
    case KT_Q4_0: quant_q4_0(src, dst, nb); return 0;
    case KT_Q4_1: quant_q4_1(src, dst, nb); return 0;
    case KT_Q5_0: quant_q5_0(src, dst, nb); return 0;
    case KT_Q5_1: quant_q5_1(src, dst, nb); return 0;
    case KT_Q8_0: quant_q8_0(src, dst, nb); return 0;
    case KT_Q8_1: quant_q8_1(src, dst, nb); return 0;
    case KT_Q2_K: ref_quant_q2_K(src, dst, nb); return 0;
    case KT_Q3_K: ref_quant_q3_K(src, dst, nb); return 0;
    case KT_Q4_K: ref_quant_q4_K(src, dst, nb); return 0;
    case KT_Q5_K: ref_quant_q5_K(src, dst, nb); return 0;
    case KT_Q6_K: ref_quant_q6_K(src, dst, nb); return 0;
    case KT_Q8_K: ref_quant_q8_K(src, dst, nb); return 0;
    default: return MOED_EUNSUPPORTED;
    }
}

int kern_vec_dot_type(uint32_t type)
{
    switch (type) {
    case KT_F32:
    case KT_F16: return KT_F32;
    case KT_BF16: return KT_BF16;
    case KT_Q4_0:
    case KT_Q5_0:
    case KT_Q8_0: return KT_Q8_0;
    case KT_Q4_1:
    case KT_Q5_1: return KT_Q8_1;
    case KT_Q2_K:
    case KT_Q3_K:
    case KT_Q4_K:
    case KT_Q5_K:
    case KT_Q6_K: return KT_Q8_K;
    default: return -1;
    }
}
