/*
 * AVX2 activation quantizers: f32 rows -> Q8_0, Q8_1, Q8_K, BF16, F32.
 *
 * Bit-exact with kern_quant_row_ref (quant_ref.c, quant_ref_k.c) for every
 * input: the scale is computed in scalar float exactly as the reference
 * does (d = amax / 127, id = 1 / d; Q8_K: is = -127 / max, d = 1 / is), the
 * products x * id are the same IEEE multiplications, and the rounding
 * helpers are reproduced: clamp to [lo, hi] first with NaN going to lo
 * (vmaxps returns its second operand when either is NaN), then round half
 * away from zero (Q8_0/Q8_1: trunc plus the sign where |fraction| >= 0.5,
 * all exact) or half to even (Q8_K: vroundps in nearest mode).  amax skips
 * NaN the same way (vmaxps(|x|, acc) keeps acc), and Q8_K's signed max is
 * the first element whose magnitude equals amax, as in the reference loop.
 * The fp16 scale is stored with vcvtps2ph in round-to-nearest-even mode,
 * which equals kern_f32_to_f16 for every non-NaN value (d is never NaN).
 */
#include <immintrin.h>
#include <string.h>

#include "kernels/cpu/dot_impl.h"
#include "kernels/cpu/quant.h"

#define INLINE static inline __attribute__((always_inline))

INLINE float hmax8(__m256 v)
{
    __m128 r = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    r = _mm_max_ps(r, _mm_movehl_ps(r, r));
    r = _mm_max_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}

INLINE int hsum_i32x8(__m256i v)
{
    __m128i r = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    r = _mm_add_epi32(r, _mm_shuffle_epi32(r, 0x4e));
    r = _mm_add_epi32(r, _mm_shuffle_epi32(r, 0xb1));
    return _mm_cvtsi128_si32(r);
}

INLINE __m256 absf(__m256 v) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), v); }

/* max(|x|) over 32 floats, NaN skipped (starting from 0, as the reference). */
INLINE __m256 amax_acc(__m256 acc, __m256 v) { return _mm256_max_ps(absf(v), acc); }

/* Clamp to [-127, 127], NaN -> -127. */
INLINE __m256 clamp127(__m256 v)
{
    return _mm256_min_ps(_mm256_max_ps(v, _mm256_set1_ps(-127.0f)), _mm256_set1_ps(127.0f));
}

/* roundf (ties away from zero) of clamped values, as i32. */
INLINE __m256i round_away(__m256 v)
{
    const __m256 t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __m256 f = absf(_mm256_sub_ps(v, t)); /* exact */
    const __m256 one = _mm256_or_ps(_mm256_and_ps(v, _mm256_set1_ps(-0.0f)), _mm256_set1_ps(1.0f));
    const __m256 adj = _mm256_and_ps(_mm256_cmp_ps(f, _mm256_set1_ps(0.5f), _CMP_GE_OQ), one);
    return _mm256_cvttps_epi32(_mm256_add_ps(t, adj));
}

INLINE __m256i round_even(__m256 v)
{
    return _mm256_cvttps_epi32(_mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

/* Four vectors of 8 i32 in [-127, 127] -> 32 int8 in element order. */
INLINE void store_q8x32(int8_t *dst, __m256i i0, __m256i i1, __m256i i2, __m256i i3)
{
    const __m256i a = _mm256_packs_epi32(i0, i1), b = _mm256_packs_epi32(i2, i3);
    const __m256i c = _mm256_packs_epi16(a, b);
    const __m256i r = _mm256_permutevar8x32_epi32(c, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256((__m256i *)dst, r);
}

INLINE kern_f16 to_f16(float d) { return (kern_f16)_cvtss_sh(d, _MM_FROUND_TO_NEAREST_INT); }

/* One 32-element block as Q8_0/Q8_1; returns sum(q). */
INLINE int q8_block(const float *x, kern_f16 *dstd, int8_t *qs, float *dout)
{
    __m256 v[4], am = _mm256_setzero_ps();
    for (int j = 0; j < 4; j++) {
        v[j] = _mm256_loadu_ps(x + 8 * j);
        am = amax_acc(am, v[j]);
    }
    const float d = hmax8(am) / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    const __m256 vid = _mm256_set1_ps(id);
    __m256i q[4];
    for (int j = 0; j < 4; j++)
        q[j] = round_away(clamp127(_mm256_mul_ps(v[j], vid)));
    store_q8x32(qs, q[0], q[1], q[2], q[3]);
    *dstd = to_f16(d);
    *dout = d;
    return hsum_i32x8(_mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3])));
}

static void quant_q8_0(const float *x, void *vy, int64_t n)
{
    block_q8_0 *y = vy;
    for (int64_t i = 0; i < n / 32; i++) {
        float d;
        q8_block(x + 32 * i, &y[i].d, y[i].qs, &d);
    }
}

static void quant_q8_1(const float *x, void *vy, int64_t n)
{
    block_q8_1 *y = vy;
    for (int64_t i = 0; i < n / 32; i++) {
        float d;
        const int sum = q8_block(x + 32 * i, &y[i].d, y[i].qs, &d);
        y[i].s = to_f16((float)sum * d);
    }
}

static void quant_q8_K(const float *x, void *vy, int64_t n)
{
    block_q8_K *y = vy;
    for (int64_t i = 0; i < n / QK_K; i++, x += QK_K) {
        __m256 am = _mm256_setzero_ps();
        for (int j = 0; j < QK_K / 8; j++)
            am = amax_acc(am, _mm256_loadu_ps(x + 8 * j));
        const __m256 amax = _mm256_set1_ps(hmax8(am));
        float max = 0.0f;
        for (int j = 0; j < QK_K / 8; j++) {
            int m = _mm256_movemask_ps(_mm256_cmp_ps(absf(_mm256_loadu_ps(x + 8 * j)), amax, _CMP_EQ_OQ));
            if (m) {
                max = x[8 * j + __builtin_ctz((unsigned)m)];
                break;
            }
        }
        if (max == 0.0f) {
            memset(&y[i], 0, sizeof y[i]);
            continue;
        }
        const float is = -127.0f / max;
        const __m256 vis = _mm256_set1_ps(is);
        __m256i s16[QK_K / 16];
        for (int j = 0; j < QK_K / 32; j++) {
            __m256i q[4];
            for (int k = 0; k < 4; k++)
                q[k] = round_even(clamp127(_mm256_mul_ps(vis, _mm256_loadu_ps(x + 32 * j + 8 * k))));
            store_q8x32(y[i].qs + 32 * j, q[0], q[1], q[2], q[3]);
            s16[2 * j] = _mm256_add_epi32(q[0], q[1]);
            s16[2 * j + 1] = _mm256_add_epi32(q[2], q[3]);
        }
        /* 16 horizontal sums: hadd trees, four groups of four vectors */
        for (int g = 0; g < 4; g++) {
            const __m256i h01 = _mm256_hadd_epi32(s16[4 * g], s16[4 * g + 1]);
            const __m256i h23 = _mm256_hadd_epi32(s16[4 * g + 2], s16[4 * g + 3]);
            const __m256i h = _mm256_hadd_epi32(h01, h23);
            const __m128i r = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
            const __m128i p = _mm_packs_epi32(r, r);
            memcpy(&y[i].bsums[4 * g], &p, 4 * sizeof(int16_t));
        }
        y[i].d = 1.0f / is;
    }
}

/* bf16 = round to nearest even of the top half; NaN -> (u >> 16) | 0x40. */
static void quant_bf16(const float *x, void *vy, int64_t n)
{
    kern_bf16 *y = vy;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256i r[2];
        for (int k = 0; k < 2; k++) {
            const __m256 v = _mm256_loadu_ps(x + i + 8 * k);
            const __m256i u = _mm256_castps_si256(v);
            const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
            const __m256i rne = _mm256_srli_epi32(
                _mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), lsb), 16);
            const __m256i nanv = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40));
            const __m256i isnan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
            r[k] = _mm256_blendv_epi8(rne, nanv, isnan);
        }
        const __m256i p = _mm256_permute4x64_epi64(_mm256_packus_epi32(r[0], r[1]), 0xd8);
        _mm256_storeu_si256((__m256i *)(y + i), p);
    }
    for (; i < n; i++)
        y[i] = kern_f32_to_bf16(x[i]);
}

static void quant_f32(const float *x, void *y, int64_t n)
{
    if (n > 0)
        memcpy(y, x, (size_t)n * sizeof(float));
}

kern_quant_row_fn kern_quant_act_avx2(uint32_t t)
{
    switch (t) {
    case KT_F32: return quant_f32;
    case KT_BF16: return quant_bf16;
    case KT_Q8_0: return quant_q8_0;
    case KT_Q8_1: return quant_q8_1;
    case KT_Q8_K: return quant_q8_K;
    default: return NULL;
    }
}
