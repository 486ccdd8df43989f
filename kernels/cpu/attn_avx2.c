/*
 * AVX2+FMA+F16C attention of one query row group (attn.h): attn_impl.h's
 * tile loop with 8-lane helpers.  F16 rows convert with vcvtph2ps (exact,
 * as kern_f16_to_f32); dots use four accumulators of 8 lanes (32 values
 * per step), then 8, then a scalar tail; the V pass keeps 32 output values
 * in four registers over the tile's rows (one FMA chain per register).
 * attn_avx512.c has the same structure at 16 lanes.
 */
#include <immintrin.h>

#include "kernels/cpu/attn.h"
#include "kernels/cpu/quant.h"

#define INLINE static inline __attribute__((always_inline))

INLINE float hsum8(__m256 v)
{
    __m128 r = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}

INLINE const float *attn_row(const void *base, uint32_t type, size_t off, int hd, float *buf)
{
    if (type != KT_F16)
        return (const float *)base + off;
    const kern_f16 *h = (const kern_f16 *)base + off;
    int d = 0;
    for (; d + 8 <= hd; d += 8)
        _mm256_storeu_ps(buf + d, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + d))));
    for (; d < hd; d++)
        buf[d] = kern_f16_to_f32(h[d]);
    return buf;
}

INLINE float attn_dot(const float *a, const float *b, int n)
{
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    int d = 0;
    for (; d + 32 <= n; d += 32) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + d), _mm256_loadu_ps(b + d), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + d + 8), _mm256_loadu_ps(b + d + 8), s1);
        s2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + d + 16), _mm256_loadu_ps(b + d + 16), s2);
        s3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + d + 24), _mm256_loadu_ps(b + d + 24), s3);
    }
    for (; d + 8 <= n; d += 8)
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + d), _mm256_loadu_ps(b + d), s0);
    float s = hsum8(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
    for (; d < n; d++)
        s += a[d] * b[d];
    return s;
}

INLINE void attn_vacc(float *out, float r, const float *const *rows, const float *e, int nt,
                      int n)
{
    const __m256 vr = _mm256_set1_ps(r);
    int d = 0;
    for (; d + 32 <= n; d += 32) {
        __m256 a0 = _mm256_mul_ps(vr, _mm256_loadu_ps(out + d));
        __m256 a1 = _mm256_mul_ps(vr, _mm256_loadu_ps(out + d + 8));
        __m256 a2 = _mm256_mul_ps(vr, _mm256_loadu_ps(out + d + 16));
        __m256 a3 = _mm256_mul_ps(vr, _mm256_loadu_ps(out + d + 24));
        for (int j = 0; j < nt; j++) {
            const __m256 ej = _mm256_broadcast_ss(e + j);
            const float *v = rows[j] + d;
            a0 = _mm256_fmadd_ps(ej, _mm256_loadu_ps(v), a0);
            a1 = _mm256_fmadd_ps(ej, _mm256_loadu_ps(v + 8), a1);
            a2 = _mm256_fmadd_ps(ej, _mm256_loadu_ps(v + 16), a2);
            a3 = _mm256_fmadd_ps(ej, _mm256_loadu_ps(v + 24), a3);
        }
        _mm256_storeu_ps(out + d, a0);
        _mm256_storeu_ps(out + d + 8, a1);
        _mm256_storeu_ps(out + d + 16, a2);
        _mm256_storeu_ps(out + d + 24, a3);
    }
    for (; d + 8 <= n; d += 8) {
        __m256 a0 = _mm256_mul_ps(vr, _mm256_loadu_ps(out + d));
        for (int j = 0; j < nt; j++)
            a0 = _mm256_fmadd_ps(_mm256_broadcast_ss(e + j), _mm256_loadu_ps(rows[j] + d), a0);
        _mm256_storeu_ps(out + d, a0);
    }
    for (; d < n; d++) {
        float acc = r * out[d];
        for (int j = 0; j < nt; j++)
            acc += e[j] * rows[j][d];
        out[d] = acc;
    }
}

INLINE void attn_scale(float *out, float a, int n)
{
    const __m256 va = _mm256_set1_ps(a);
    int d = 0;
    for (; d + 8 <= n; d += 8)
        _mm256_storeu_ps(out + d, _mm256_mul_ps(va, _mm256_loadu_ps(out + d)));
    for (; d < n; d++)
        out[d] *= a;
}

#define ATTN_FN kern_attn_group_avx2
#include "kernels/cpu/attn_impl.h"
