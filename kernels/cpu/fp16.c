/*
 * IEEE half and bfloat16 <-> float, in integer arithmetic so the result does
 * not depend on the compiler, the FPU's rounding mode or F16C.
 *
 * Both directions round to nearest, ties to even, keep the sign of zero,
 * map overflow to inf, keep inf, and keep NaN a (quiet) NaN.  Subnormals
 * are converted exactly in both directions (no flush to zero).
 *
 * half:     s eeeee mmmmmmmmmm, bias 15; subnormal value = m * 2^-24.
 * float:    s eeeeeeee m(23),   bias 127.
 * bfloat16: the upper 16 bits of a float.
 */
#include "kernels/cpu/quant.h"

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float f32_from_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

float kern_f16_to_f32(kern_f16 h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t e = (h >> 10) & 0x1fu;
    uint32_t m = h & 0x3ffu;

    if (e == 0x1f) /* inf, NaN: the payload moves up unchanged */
        return f32_from_bits(sign | 0x7f800000u | (m << 13));
    if (e != 0) /* normal: rebias 15 -> 127 */
        return f32_from_bits(sign | ((e + 112) << 23) | (m << 13));
    if (m == 0)
        return f32_from_bits(sign);
    /* subnormal m * 2^-24: shift the leading 1 up to bit 10, where it
     * becomes the implicit bit of a normal float; each shift lowers the
     * exponent by one, starting from that of 2^-14 (113). */
    e = 113;
    while (!(m & 0x400u)) {
        m <<= 1;
        e--;
    }
    return f32_from_bits(sign | (e << 23) | ((m & 0x3ffu) << 13));
}

/* Round (sig >> shift) to nearest even, 1 <= shift <= 31. */
static uint32_t shift_rne(uint32_t sig, unsigned shift)
{
    uint32_t q = sig >> shift;
    uint32_t rem = sig & ((1u << shift) - 1);
    uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1)))
        q++;
    return q;
}

kern_f16 kern_f32_to_f16(float f)
{
    uint32_t u = f32_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t a = u & 0x7fffffffu;

    if (a > 0x7f800000u) /* NaN: quiet it (bit 9), as ggml and F16C do */
        return (kern_f16)(sign | 0x7e00u | ((a >> 13) & 0x3ffu));
    /* 65520 = 0x477ff000 is halfway between 65504 (the largest half) and
     * 2^16; the tie goes to the even neighbour, which is inf. */
    if (a >= 0x477ff000u)
        return (kern_f16)(sign | 0x7c00u);
    if (a >= 0x38800000u) { /* >= 2^-14: normal half */
        /* Rebias the exponent (127 -> 15) in place, then drop 13 mantissa
         * bits with rounding; a carry out of the mantissa correctly bumps
         * the exponent. */
        return (kern_f16)(sign | shift_rne(a - (112u << 23), 13));
    }
    uint32_t e = a >> 23;
    if (e < 102) /* below 2^-25: rounds to zero (2^-25 itself is a tie to 0) */
        return sign;
    /* Subnormal half: value = m * 2^(e-150) with the implicit bit set in m,
     * wanted in units of 2^-24, i.e. m >> (126 - e), shift in [14, 24]. */
    uint32_t m = (a & 0x7fffffu) | 0x800000u;
    return (kern_f16)(sign | shift_rne(m, 126 - e));
}

float kern_bf16_to_f32(kern_bf16 h)
{
    return f32_from_bits((uint32_t)h << 16);
}

kern_bf16 kern_f32_to_bf16(float f)
{
    uint32_t u = f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) /* NaN: keep it NaN, quiet */
        return (kern_bf16)((u >> 16) | 0x40u);
    /* Round to nearest even on the dropped 16 bits: add just under half,
     * plus one more when the kept part is odd.  Overflow carries into the
     * exponent and yields inf, as it should. */
    return (kern_bf16)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
