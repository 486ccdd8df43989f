/*
 * AVX-512 (F, plus VL for the 8-lane tails) attention of one query row
 * group (attn.h): the structure of attn_avx2.c at 16 lanes.  F16 rows
 * convert with vcvtph2ps on zmm (exact); dots use four accumulators of 16
 * lanes (64 values per step), then 16, then 8 (ymm), then a scalar tail;
 * the V pass keeps 64 output values in four registers over the tile's rows.
 * Not run on the development machine (AVX2 only): tests/unit/test_attn.c
 * checks it against the reference where the CPU has AVX-512.
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

INLINE float hsum16(__m512 v)
{
    return hsum8(_mm256_add_ps(_mm512_castps512_ps256(v),
                               _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1))));
}

INLINE const float *attn_row(const void *base, uint32_t type, size_t off, int hd, float *buf)
{
    if (type != KT_F16)
        return (const float *)base + off;
    const kern_f16 *h = (const kern_f16 *)base + off;
    int d = 0;
    for (; d + 16 <= hd; d += 16)
        _mm512_storeu_ps(buf + d, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(h + d))));
    for (; d + 8 <= hd; d += 8)
        _mm256_storeu_ps(buf + d, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + d))));
    for (; d < hd; d++)
        buf[d] = kern_f16_to_f32(h[d]);
    return buf;
}

INLINE float attn_dot(const float *a, const float *b, int n)
{
    __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    int d = 0;
    for (; d + 64 <= n; d += 64) {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + d), _mm512_loadu_ps(b + d), s0);
        s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + d + 16), _mm512_loadu_ps(b + d + 16), s1);
        s2 = _mm512_fmadd_ps(_mm512_loadu_ps(a + d + 32), _mm512_loadu_ps(b + d + 32), s2);
        s3 = _mm512_fmadd_ps(_mm512_loadu_ps(a + d + 48), _mm512_loadu_ps(b + d + 48), s3);
    }
    for (; d + 16 <= n; d += 16)
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + d), _mm512_loadu_ps(b + d), s0);
    __m256 t = _mm256_setzero_ps();
    for (; d + 8 <= n; d += 8)
        t = _mm256_fmadd_ps(_mm256_loadu_ps(a + d), _mm256_loadu_ps(b + d), t);
    float s = hsum16(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3))) + hsum8(t);
    for (; d < n; d++)
        s += a[d] * b[d];
    return s;
}

INLINE void attn_vacc(float *out, float r, const float *const *rows, const float *e, int nt,
                      int n)
{
    const __m512 vr = _mm512_set1_ps(r);
    int d = 0;
    for (; d + 64 <= n; d += 64) {
        __m512 a0 = _mm512_mul_ps(vr, _mm512_loadu_ps(out + d));
        __m512 a1 = _mm512_mul_ps(vr, _mm512_loadu_ps(out + d + 16));
        __m512 a2 = _mm512_mul_ps(vr, _mm512_loadu_ps(out + d + 32));
        __m512 a3 = _mm512_mul_ps(vr, _mm512_loadu_ps(out + d + 48));
        for (int j = 0; j < nt; j++) {
            const __m512 ej = _mm512_set1_ps(e[j]);
            const float *v = rows[j] + d;
            a0 = _mm512_fmadd_ps(ej, _mm512_loadu_ps(v), a0);
            a1 = _mm512_fmadd_ps(ej, _mm512_loadu_ps(v + 16), a1);
            a2 = _mm512_fmadd_ps(ej, _mm512_loadu_ps(v + 32), a2);
            a3 = _mm512_fmadd_ps(ej, _mm512_loadu_ps(v + 48), a3);
        }
        _mm512_storeu_ps(out + d, a0);
        _mm512_storeu_ps(out + d + 16, a1);
        _mm512_storeu_ps(out + d + 32, a2);
        _mm512_storeu_ps(out + d + 48, a3);
    }
    for (; d + 16 <= n; d += 16) {
        __m512 a0 = _mm512_mul_ps(vr, _mm512_loadu_ps(out + d));
        for (int j = 0; j < nt; j++)
            a0 = _mm512_fmadd_ps(_mm512_set1_ps(e[j]), _mm512_loadu_ps(rows[j] + d), a0);
        _mm512_storeu_ps(out + d, a0);
    }
    for (; d + 8 <= n; d += 8) {
        __m256 a0 = _mm256_mul_ps(_mm256_set1_ps(r), _mm256_loadu_ps(out + d));
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
    const __m512 va = _mm512_set1_ps(a);
    int d = 0;
    for (; d + 16 <= n; d += 16)
        _mm512_storeu_ps(out + d, _mm512_mul_ps(va, _mm512_loadu_ps(out + d)));
    for (; d < n; d++)
        out[d] *= a;
}

#define ATTN_FN kern_attn_group_avx512
#include "kernels/cpu/attn_impl.h"
