/*
 * AVX-512 activation quantizers; the arithmetic of act_avx2.c (read its
 * comment for why each step equals kern_quant_row_ref bit for bit) at zmm
 * width.  Narrowing uses vpmovsdb / vpmovdw, which keep element order.
 * BF16 is converted in integer arithmetic, not with vcvtneps2bf16, whose
 * DAZ would flush subnormal inputs the reference keeps.
 */
#include <immintrin.h>
#include <string.h>

#include "kernels/cpu/dot_impl.h"
#include "kernels/cpu/quant.h"

#define INLINE static inline __attribute__((always_inline))

INLINE __m512 absf(__m512 v) { return _mm512_andnot_ps(_mm512_set1_ps(-0.0f), v); }

/* NaN skipped: vmaxps returns its second operand when either is NaN. */
INLINE __m512 amax_acc(__m512 acc, __m512 v) { return _mm512_max_ps(absf(v), acc); }

INLINE __m512 clamp127(__m512 v)
{
    return _mm512_min_ps(_mm512_max_ps(v, _mm512_set1_ps(-127.0f)), _mm512_set1_ps(127.0f));
}

INLINE __m512i round_away(__m512 v)
{
    const __m512 t = _mm512_roundscale_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __m512 f = absf(_mm512_sub_ps(v, t));
    const __m512 one = _mm512_or_ps(_mm512_and_ps(v, _mm512_set1_ps(-0.0f)), _mm512_set1_ps(1.0f));
    const __mmask16 m = _mm512_cmp_ps_mask(f, _mm512_set1_ps(0.5f), _CMP_GE_OQ);
    return _mm512_cvttps_epi32(_mm512_mask_add_ps(t, m, t, one));
}

INLINE __m512i round_even(__m512 v)
{
    return _mm512_cvttps_epi32(_mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

INLINE kern_f16 to_f16(float d) { return (kern_f16)_cvtss_sh(d, _MM_FROUND_TO_NEAREST_INT); }

/* One 32-element block as Q8_0/Q8_1; returns sum(q). */
INLINE int q8_block(const float *x, kern_f16 *dstd, int8_t *qs, float *dout)
{
    const __m512 v0 = _mm512_loadu_ps(x), v1 = _mm512_loadu_ps(x + 16);
    const __m512 am = amax_acc(amax_acc(_mm512_setzero_ps(), v0), v1);
    const float d = _mm512_reduce_max_ps(am) / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    const __m512 vid = _mm512_set1_ps(id);
    const __m512i q0 = round_away(clamp127(_mm512_mul_ps(v0, vid)));
    const __m512i q1 = round_away(clamp127(_mm512_mul_ps(v1, vid)));
    _mm_storeu_si128((__m128i *)qs, _mm512_cvtsepi32_epi8(q0));
    _mm_storeu_si128((__m128i *)(qs + 16), _mm512_cvtsepi32_epi8(q1));
    *dstd = to_f16(d);
    *dout = d;
    return _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
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
        __m512 am = _mm512_setzero_ps();
        for (int j = 0; j < QK_K / 16; j++)
            am = amax_acc(am, _mm512_loadu_ps(x + 16 * j));
        const __m512 amax = _mm512_set1_ps(_mm512_reduce_max_ps(am));
        float max = 0.0f;
        for (int j = 0; j < QK_K / 16; j++) {
            __mmask16 m = _mm512_cmp_ps_mask(absf(_mm512_loadu_ps(x + 16 * j)), amax, _CMP_EQ_OQ);
            if (m) {
                max = x[16 * j + __builtin_ctz((unsigned)m)];
                break;
            }
        }
        if (max == 0.0f) {
            memset(&y[i], 0, sizeof y[i]);
            continue;
        }
        const float is = -127.0f / max;
        const __m512 vis = _mm512_set1_ps(is);
        for (int j = 0; j < QK_K / 16; j++) {
            const __m512i q = round_even(clamp127(_mm512_mul_ps(vis, _mm512_loadu_ps(x + 16 * j))));
            _mm_storeu_si128((__m128i *)(y[i].qs + 16 * j), _mm512_cvtsepi32_epi8(q));
            y[i].bsums[j] = (int16_t)_mm512_reduce_add_epi32(q);
        }
        y[i].d = 1.0f / is;
    }
}

static void quant_bf16(const float *x, void *vy, int64_t n)
{
    kern_bf16 *y = vy;
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = n - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - i)) - 1);
        const __m512 v = _mm512_maskz_loadu_ps(m, x + i);
        const __m512i u = _mm512_castps_si512(v);
        const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
        const __m512i rne = _mm512_srli_epi32(
            _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), lsb), 16);
        const __m512i nanv = _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
        const __mmask16 isnan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
        const __m512i r = _mm512_mask_blend_epi32(isnan, rne, nanv);
        _mm256_mask_storeu_epi16(y + i, m, _mm512_cvtepi32_epi16(r));
    }
}

static void quant_f32(const float *x, void *y, int64_t n)
{
    if (n > 0)
        memcpy(y, x, (size_t)n * sizeof(float));
}

kern_quant_row_fn kern_quant_act_avx512(uint32_t t)
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
