/*
 * AVX2+FMA+F16C dot products of one weight row with 1..4 activation rows.
 *
 * Every kernel is one always-inline "tile" function taking the number of
 * tokens nt as a compile-time constant; it loads and unpacks each weight
 * block once and multiplies it into nt activation rows.  nt = 1 is the
 * kern_vec_dot_fn; nt = 2..4 serve the matmul driver (matmul.c).
 *
 * Integer formats: the weight quants are unpacked to bytes, multiplied with
 * the int8 activation quants by vpmaddubsw (u8 x s8 -> pairs summed in
 * i16), then by the sub-block scales with vpmaddwd (-> i32), and the i32
 * sums of a block are scaled by d_w * d_a in float.  Offsets are handled
 * without per-element work: a signed code (q - 8, q - 16) uses the sign
 * trick |x| * sign(y, x); an unsigned code with an offset (Q3_K's -4,
 * Q6_K's -32) or a min (Q2_K, Q4_K, Q5_K) uses the activation's bsums:
 * sum(sc * (q - o) * a) = sum(sc * q * a) - o * sum(sc_g * bsum_g).
 * No i16 step can saturate: |pair| <= 2 * 63 * 127 for the u8 forms and
 * 2 * 128 * 127 for the sign trick, given activations in [-127, 127].
 */
#include <immintrin.h>
#include <string.h>

#include "kernels/cpu/dot_impl.h"
#include "kernels/cpu/quant.h"

#define INLINE static inline __attribute__((always_inline))
#define FOR_T(t) _Pragma("GCC unroll 4") for (int t = 0; t < nt; t++)
#define ACT(T, a, as, t) ((const T *)((const char *)(a) + (size_t)(t) * (as)))

INLINE float hsum8(__m256 v)
{
    __m128 r = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}

INLINE float f16(kern_f16 h) { return _cvtsh_ss(h); }

INLINE __m256i loadu256(const void *p) { return _mm256_loadu_si256((const __m256i *)p); }

/* sum over pairs of x*y into 8 i32; x any int8, y in [-127, 127]. */
INLINE __m256i mul_sum_i8(__m256i x, __m256i y)
{
    const __m256i p = _mm256_maddubs_epi16(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
    return _mm256_madd_epi16(p, _mm256_set1_epi16(1));
}

/* The same for x unsigned (0..255 with x*y pairs within i16). */
INLINE __m256i mul_sum_u8(__m256i x, __m256i y)
{
    return _mm256_madd_epi16(_mm256_maddubs_epi16(x, y), _mm256_set1_epi16(1));
}

/* 16 bytes of nibbles -> 32 bytes: low nibbles (elements 0..15) then high. */
INLINE __m256i nibbles32(const uint8_t *qs)
{
    const __m128i t = _mm_loadu_si128((const __m128i *)qs);
    return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(t, 4), t), _mm256_set1_epi8(0x0F));
}

/* 32 bits (little-endian) -> 32 bytes, 0xFF where the bit is set. */
INLINE __m256i bits32(const uint8_t *qh)
{
    uint32_t x;
    memcpy(&x, qh, sizeof x);
    const __m256i shuf = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202,
                                           0x0101010101010101, 0);
    __m256i b = _mm256_shuffle_epi8(_mm256_set1_epi32((int)x), shuf);
    b = _mm256_or_si256(b, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
    return _mm256_cmpeq_epi8(b, _mm256_set1_epi64x(-1));
}

/* pshufb controls on a vector holding 8 i16 scales in each 128-bit lane:
 * k_one(k) broadcasts scale k to all 16 lanes; k_two(a, b) puts scale a in
 * the low 128 bits and b in the high ones. */
INLINE __m256i k_one(int k) { return _mm256_set1_epi16((short)(2 * k | (2 * k + 1) << 8)); }
INLINE __m256i k_two(int a, int b)
{
    return _mm256_set_m128i(_mm_set1_epi16((short)(2 * b | (2 * b + 1) << 8)),
                            _mm_set1_epi16((short)(2 * a | (2 * a + 1) << 8)));
}

/* Move bit `from` of every byte to bit `to` (other bits must be clear). */
INLINE __m256i bit_move(__m256i v, int from, int to)
{
    if (from > to)
        return _mm256_srli_epi16(v, from - to);
    if (from < to)
        return _mm256_slli_epi16(v, to - from);
    return v;
}

/*
 * Scheduling fence for the compiler only (emits nothing): v may not be used
 * for the next sub-block before this sub-block's sums exist.  Without it
 * GCC hoists the unpacking of every sub-block of a super-block ahead of the
 * token loop and spills most of it in the 2..4-token tiles.
 */
#define FENCE1(v, sumi) __asm__("" : "+x"(v) : "x"(sumi[0]), "x"(sumi[1]), "x"(sumi[2]), "x"(sumi[3]))
#define FENCEP(p, sumi) __asm__("" : "+r"(p) : "x"(sumi[0]), "x"(sumi[1]), "x"(sumi[2]), "x"(sumi[3]))

/* ---- float formats ---------------------------------------------------- */

enum { FK_F32, FK_F16, FK_BF16 };

INLINE __m256 fload8(const void *p, int64_t i, const int kind)
{
    if (kind == FK_F16)
        return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const kern_f16 *)p + i)));
    if (kind == FK_BF16) {
        const __m128i h = _mm_loadu_si128((const __m128i *)((const kern_bf16 *)p + i));
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
    return _mm256_loadu_ps((const float *)p + i);
}

INLINE float fload1(const void *p, int64_t i, const int kind)
{
    if (kind == FK_F16)
        return f16(((const kern_f16 *)p)[i]);
    if (kind == FK_BF16) {
        uint32_t u = (uint32_t)((const kern_bf16 *)p)[i] << 16;
        float f;
        memcpy(&f, &u, sizeof f);
        return f;
    }
    return ((const float *)p)[i];
}

INLINE void float_tile(int64_t n, const void *w, const void *a, size_t as, float *s, int64_t ss,
                       const int nt, const int wk, const int ak)
{
    const char *y[KERN_TILE_T];
    __m256 acc0[KERN_TILE_T], acc1[KERN_TILE_T];
    FOR_T(t)
    {
        y[t] = (const char *)a + (size_t)t * as;
        acc0[t] = acc1[t] = _mm256_setzero_ps();
    }
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m256 w0 = fload8(w, i, wk), w1 = fload8(w, i + 8, wk);
        FOR_T(t)
        {
            acc0[t] = _mm256_fmadd_ps(w0, fload8(y[t], i, ak), acc0[t]);
            acc1[t] = _mm256_fmadd_ps(w1, fload8(y[t], i + 8, ak), acc1[t]);
        }
    }
    if (i + 8 <= n) {
        const __m256 w0 = fload8(w, i, wk);
        FOR_T(t) { acc0[t] = _mm256_fmadd_ps(w0, fload8(y[t], i, ak), acc0[t]); }
        i += 8;
    }
    FOR_T(t)
    {
        float r = hsum8(_mm256_add_ps(acc0[t], acc1[t]));
        for (int64_t j = i; j < n; j++)
            r += fload1(w, j, wk) * fload1(y[t], j, ak);
        s[t * ss] = r;
    }
}

INLINE void f32_tile(int64_t n, const void *w, const void *a, size_t as, float *s, int64_t ss,
                     const int nt)
{
    float_tile(n, w, a, as, s, ss, nt, FK_F32, FK_F32);
}

INLINE void f16_tile(int64_t n, const void *w, const void *a, size_t as, float *s, int64_t ss,
                     const int nt)
{
    float_tile(n, w, a, as, s, ss, nt, FK_F16, FK_F32);
}

INLINE void bf16_tile(int64_t n, const void *w, const void *a, size_t as, float *s, int64_t ss,
                      const int nt)
{
    float_tile(n, w, a, as, s, ss, nt, FK_BF16, FK_BF16);
}

/* ---- 32-element blocks -------------------------------------------------- */

/* Q8_0 x Q8_0: d_w d_a sum(qw * qa) */
INLINE void q8_0_tile(int64_t n, const void *w, const void *a, size_t as, float *s, int64_t ss,
                      const int nt)
{
    const block_q8_0 *x = w;
    const int64_t nb = n / 32;
    __m256 acc[KERN_TILE_T];
    FOR_T(t) { acc[t] = _mm256_setzero_ps(); }
    for (int64_t i = 0; i < nb; i++) {
        const __m256i qx = loadu256(x[i].qs);
        const __m256i ax = _mm256_sign_epi8(qx, qx);
        const float dx = f16(x[i].d);
        FOR_T(t)
        {
            const block_q8_0 *yb = ACT(block_q8_0, a, as, t) + i;
            const __m256i sy = _mm256_sign_epi8(loadu256(yb->qs), qx);
            const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(ax, sy), _mm256_set1_epi16(1));
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(dx * f16(yb->d)), _mm256_cvtepi32_ps(p), acc[t]);
        }
    }
    FOR_T(t) { s[t * ss] = hsum8(acc[t]); }
}

/* Q4_0 x Q8_0: d_w d_a sum((q - 8) * qa) */
INLINE void q4_0_tile(int64_t n, const void *w, const void *a, size_t as, float *s, int64_t ss,
                      const int nt)
{
    const block_q4_0 *x = w;
    const int64_t nb = n / 32;
    __m256 acc[KERN_TILE_T];
    FOR_T(t) { acc[t] = _mm256_setzero_ps(); }
    for (int64_t i = 0; i < nb; i++) {
        const __m256i qx = _mm256_sub_epi8(nibbles32(x[i].qs), _mm256_set1_epi8(8));
        const float dx = f16(x[i].d);
        FOR_T(t)
        {
            const block_q8_0 *yb = ACT(block_q8_0, a, as, t) + i;
            const __m256i p = mul_sum_i8(qx, loadu256(yb->qs));
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(dx * f16(yb->d)), _mm256_cvtepi32_ps(p), acc[t]);
        }
    }
    FOR_T(t) { s[t * ss] = hsum8(acc[t]); }
}

/* Q5_0 x Q8_0: d_w d_a sum((q - 16) * qa), q = nibble | bit << 4 */
INLINE void q5_0_tile(int64_t n, const void *w, const void *a, size_t as, float *s, int64_t ss,
                      const int nt)
{
    const block_q5_0 *x = w;
    const int64_t nb = n / 32;
    __m256 acc[KERN_TILE_T];
    FOR_T(t) { acc[t] = _mm256_setzero_ps(); }
    for (int64_t i = 0; i < nb; i++) {
        /* q - 16 = nibble - 16 (that is, nibble | 0xF0) where the bit is clear */
        const __m256i hi = _mm256_andnot_si256(bits32(x[i].qh), _mm256_set1_epi8((char)0xF0));
        const __m256i qx = _mm256_or_si256(nibbles32(x[i].qs), hi);
        const float dx = f16(x[i].d);
        FOR_T(t)
        {
            const block_q8_0 *yb = ACT(block_q8_0, a, as, t) + i;
            const __m256i p = mul_sum_i8(qx, loadu256(yb->qs));
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(dx * f16(yb->d)), _mm256_cvtepi32_ps(p), acc[t]);
        }
    }
    FOR_T(t) { s[t * ss] = hsum8(acc[t]); }
}

/* Q4_1/Q5_1 x Q8_1: d_w d_a sum(q * qa) + m_w s_a (s_a = d_a sum(qa)) */
INLINE void q_1_tile(int64_t n, const void *w, const void *a, size_t as, float *s, int64_t ss,
                     const int nt, const bool five)
{
    const int64_t nb = n / 32;
    const size_t bsz = five ? sizeof(block_q5_1) : sizeof(block_q4_1);
    __m256 acc[KERN_TILE_T];
    float summ[KERN_TILE_T];
    FOR_T(t)
    {
        acc[t] = _mm256_setzero_ps();
        summ[t] = 0.0f;
    }
    for (int64_t i = 0; i < nb; i++) {
        const char *blk = (const char *)w + (size_t)i * bsz;
        float dx, mx;
        __m256i qx;
        if (five) {
            const block_q5_1 *b = (const block_q5_1 *)blk;
            dx = f16(b->d);
            mx = f16(b->m);
            qx = _mm256_or_si256(nibbles32(b->qs),
                                 _mm256_and_si256(bits32(b->qh), _mm256_set1_epi8(0x10)));
        } else {
            const block_q4_1 *b = (const block_q4_1 *)blk;
            dx = f16(b->d);
            mx = f16(b->m);
            qx = nibbles32(b->qs);
        }
        FOR_T(t)
        {
            const block_q8_1 *yb = ACT(block_q8_1, a, as, t) + i;
            const __m256i p = mul_sum_u8(qx, loadu256(yb->qs));
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(dx * f16(yb->d)), _mm256_cvtepi32_ps(p), acc[t]);
            summ[t] += mx * f16(yb->s);
        }
    }
    FOR_T(t) { s[t * ss] = hsum8(acc[t]) + summ[t]; }
}

INLINE void q4_1_tile(int64_t n, const void *w, const void *a, size_t as, float *s, int64_t ss,
                      const int nt)
{
    q_1_tile(n, w, a, as, s, ss, nt, false);
}

INLINE void q5_1_tile(int64_t n, const void *w, const void *a, size_t as, float *s, int64_t ss,
                      const int nt)
{
    q_1_tile(n, w, a, as, s, ss, nt, true);
}

/* ---- k-quants (x Q8_K) ------------------------------------------------ */

/* The 16-bit bsums of a Q8_K block as 16 lanes. */
INLINE __m256i bsums16(const block_q8_K *y) { return loadu256(y->bsums); }

/*
 * Q2_K: w = d sc q - dmin m (4-bit sc and m per 16 elements, q in 0..3).
 * dot = d_a (d sum_g sc_g sum(q a) - dmin sum_g m_g bsum_g).
 */
INLINE void q2_K_tile(int64_t n, const void *w, const void *a, size_t as, float *s, int64_t ss,
                      const int nt)
{
    const block_q2_K *x = w;
    const int64_t nb = n / QK_K;
    const __m256i m3 = _mm256_set1_epi8(3);
    __m256 acc[KERN_TILE_T];
    FOR_T(t) { acc[t] = _mm256_setzero_ps(); }
    for (int64_t i = 0; i < nb; i++) {
        const __m128i sm = _mm_loadu_si128((const __m128i *)x[i].scales);
        const __m128i m4 = _mm_set1_epi8(0xF);
        const __m256i sc16 = _mm256_cvtepu8_epi16(_mm_and_si128(sm, m4));
        const __m256i mn16 = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(sm, 4), m4));
        const float dx = f16(x[i].d), mx = f16(x[i].dmin);
        __m256i sumi[KERN_TILE_T] = {0};
        __m256i sc_lo = _mm256_permute2x128_si256(sc16, sc16, 0x00);
        __m256i sc_hi = _mm256_permute2x128_si256(sc16, sc16, 0x11);
        for (int h = 0; h < 2; h++) {
            __m256i bits = loadu256(x[i].qs + 32 * h);
#pragma GCC unroll 4
            for (int k = 0; k < 4; k++) {
                const int g = 4 * h + k; /* 32-element group: scales 2g, 2g+1 */
                const __m256i q = _mm256_and_si256(_mm256_srli_epi16(bits, 2 * k), m3);
                const __m256i sc = _mm256_shuffle_epi8(h ? sc_hi : sc_lo, k_two(2 * k, 2 * k + 1));
                FOR_T(t)
                {
                    const int8_t *q8 = (ACT(block_q8_K, a, as, t) + i)->qs + 32 * g;
                    const __m256i p = _mm256_madd_epi16(sc, _mm256_maddubs_epi16(q, loadu256(q8)));
                    sumi[t] = _mm256_add_epi32(sumi[t], p);
                }
                FENCE1(bits, sumi);
                FENCE1(sc_lo, sumi);
                FENCE1(sc_hi, sumi);
            }
        }
        FOR_T(t)
        {
            const block_q8_K *yb = ACT(block_q8_K, a, as, t) + i;
            const __m256i pm = _mm256_madd_epi16(mn16, bsums16(yb));
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(dx * yb->d), _mm256_cvtepi32_ps(sumi[t]), acc[t]);
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(-mx * yb->d), _mm256_cvtepi32_ps(pm), acc[t]);
        }
    }
    FOR_T(t) { s[t * ss] = hsum8(acc[t]); }
}

/* Q3_K's sixteen signed 6-bit scales (-32..31) as 16 bytes (ggml's order). */
INLINE __m128i q3_K_scales(const uint8_t *q)
{
    const uint32_t k2 = 0x0f0f0f0f, k1 = 0x03030303;
    uint32_t aux[3];
    memcpy(aux, q, 12);
    const __m128i sc = _mm_set_epi32((int)(((aux[1] >> 4) & k2) | (((aux[2] >> 6) & k1) << 4)),
                                     (int)(((aux[0] >> 4) & k2) | (((aux[2] >> 4) & k1) << 4)),
                                     (int)((aux[1] & k2) | (((aux[2] >> 2) & k1) << 4)),
                                     (int)((aux[0] & k2) | (((aux[2] >> 0) & k1) << 4)));
    return _mm_sub_epi8(sc, _mm_set1_epi8(32));
}

/*
 * Q3_K: w = d sc (q - 4 (1 - hbit)), q the 2 low bits.  With u = q | hbit << 2
 * in 0..7, w = d sc (u - 4): dot = d d_a (sum sc u a - 4 sum_g sc_g bsum_g).
 */
INLINE void q3_K_tile(int64_t n, const void *w, const void *a, size_t as, float *s, int64_t ss,
                      const int nt)
{
    const block_q3_K *x = w;
    const int64_t nb = n / QK_K;
    const __m256i m3 = _mm256_set1_epi8(3);
    __m256 acc[KERN_TILE_T];
    FOR_T(t) { acc[t] = _mm256_setzero_ps(); }
    for (int64_t i = 0; i < nb; i++) {
        const __m256i sc16 = _mm256_cvtepi8_epi16(q3_K_scales(x[i].scales));
        __m256i sc_lo = _mm256_permute2x128_si256(sc16, sc16, 0x00);
        __m256i sc_hi = _mm256_permute2x128_si256(sc16, sc16, 0x11);
        __m256i hbits = loadu256(x[i].hmask);
        const float dx = f16(x[i].d);
        __m256i sumi[KERN_TILE_T] = {0};
        for (int h = 0; h < 2; h++) {
            __m256i bits = loadu256(x[i].qs + 32 * h);
#pragma GCC unroll 4
            for (int k = 0; k < 4; k++) {
                const int g = 4 * h + k;
                const __m256i hb = _mm256_and_si256(hbits, _mm256_set1_epi8((char)(1 << g)));
                const __m256i q = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(bits, 2 * k), m3),
                                                  bit_move(hb, g, 2));
                const __m256i sc = _mm256_shuffle_epi8(h ? sc_hi : sc_lo, k_two(2 * k, 2 * k + 1));
                FOR_T(t)
                {
                    const int8_t *q8 = (ACT(block_q8_K, a, as, t) + i)->qs + 32 * g;
                    const __m256i p = _mm256_madd_epi16(sc, _mm256_maddubs_epi16(q, loadu256(q8)));
                    sumi[t] = _mm256_add_epi32(sumi[t], p);
                }
                FENCE1(bits, sumi);
                FENCE1(hbits, sumi);
                FENCE1(sc_lo, sumi);
                FENCE1(sc_hi, sumi);
            }
        }
        FOR_T(t)
        {
            const block_q8_K *yb = ACT(block_q8_K, a, as, t) + i;
            const __m256i corr = _mm256_madd_epi16(sc16, bsums16(yb));
            const __m256i si = _mm256_sub_epi32(sumi[t], _mm256_slli_epi32(corr, 2));
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(dx * yb->d), _mm256_cvtepi32_ps(si), acc[t]);
        }
    }
    FOR_T(t) { s[t * ss] = hsum8(acc[t]); }
}

/* Q4_K/Q5_K's 8 scales (bytes 0..7) and 8 mins (bytes 8..15), 6 bits each. */
INLINE __m128i q4_K_scales_mins(const uint8_t *q)
{
    const uint32_t k1 = 0x3f3f3f3f, k2 = 0x0f0f0f0f, k3 = 0x03030303;
    uint32_t u[4];
    memcpy(u, q, 12);
    u[3] = ((u[2] >> 4) & k2) | (((u[1] >> 6) & k3) << 4);
    const uint32_t mins_lo = u[1] & k1;
    u[1] = (u[2] & k2) | (((u[0] >> 6) & k3) << 4);
    u[2] = mins_lo;
    u[0] &= k1;
    return _mm_set_epi32((int)u[3], (int)u[2], (int)u[1], (int)u[0]);
}

/*
 * Q4_K/Q5_K: w = d sc q - dmin m per 32 elements, q in 0..15 (0..31 with
 * Q5_K's fifth bit).  dot = d_a (d sum sc q a - dmin sum_j m_j bsum_j),
 * bsum_j over 32 elements = the sum of two 16-element bsums.
 */
INLINE void q45_K_tile(int64_t n, const void *w, const void *a, size_t as, float *s, int64_t ss,
                       const int nt, const bool five)
{
    const int64_t nb = n / QK_K;
    const size_t bsz = five ? sizeof(block_q5_K) : sizeof(block_q4_K);
    const __m256i m4 = _mm256_set1_epi8(0xF);
    __m256 acc[KERN_TILE_T];
    FOR_T(t) { acc[t] = _mm256_setzero_ps(); }
    for (int64_t i = 0; i < nb; i++) {
        const char *blk = (const char *)w + (size_t)i * bsz;
        /* Q4_K and Q5_K share d, dmin, scales at the start of the block */
        const block_q4_K *b4 = (const block_q4_K *)blk;
        const uint8_t *qs = five ? ((const block_q5_K *)blk)->qs : b4->qs;
        const __m128i sm = q4_K_scales_mins(b4->scales);
        const __m256i ms = _mm256_cvtepu8_epi16(sm);
        /* each min twice, against the two 16-element bsums of its sub-block */
        const __m128i mins = _mm256_extracti128_si256(ms, 1);
        const __m256i mins2 = _mm256_set_m128i(_mm_unpackhi_epi16(mins, mins), _mm_unpacklo_epi16(mins, mins));
        __m256i sc = _mm256_permute2x128_si256(ms, ms, 0x00);
        __m256i hb = five ? loadu256(((const block_q5_K *)blk)->qh) : _mm256_setzero_si256();
        const float dx = f16(b4->d), mx = f16(b4->dmin);
        __m256i sumi[KERN_TILE_T] = {0};
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) {
            const __m256i bits = loadu256(qs + 32 * j);
            __m256i lo = _mm256_and_si256(bits, m4);
            __m256i hi = _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4);
            if (five) {
                const int bl = 2 * j, bh = 2 * j + 1;
                lo = _mm256_or_si256(
                    lo, bit_move(_mm256_and_si256(hb, _mm256_set1_epi8((char)(1 << bl))), bl, 4));
                hi = _mm256_or_si256(
                    hi, bit_move(_mm256_and_si256(hb, _mm256_set1_epi8((char)(1 << bh))), bh, 4));
            }
            const __m256i sl = _mm256_shuffle_epi8(sc, k_one(2 * j));
            const __m256i sh = _mm256_shuffle_epi8(sc, k_one(2 * j + 1));
            FOR_T(t)
            {
                const int8_t *q8 = (ACT(block_q8_K, a, as, t) + i)->qs + 64 * j;
                const __m256i pl = _mm256_madd_epi16(sl, _mm256_maddubs_epi16(lo, loadu256(q8)));
                const __m256i ph = _mm256_madd_epi16(sh, _mm256_maddubs_epi16(hi, loadu256(q8 + 32)));
                sumi[t] = _mm256_add_epi32(sumi[t], _mm256_add_epi32(pl, ph));
            }
            FENCEP(qs, sumi);
            FENCE1(sc, sumi);
            if (five)
                FENCE1(hb, sumi);
        }
        FOR_T(t)
        {
            const block_q8_K *yb = ACT(block_q8_K, a, as, t) + i;
            const __m256i pm = _mm256_madd_epi16(mins2, bsums16(yb));
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(dx * yb->d), _mm256_cvtepi32_ps(sumi[t]), acc[t]);
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(-mx * yb->d), _mm256_cvtepi32_ps(pm), acc[t]);
        }
    }
    FOR_T(t) { s[t * ss] = hsum8(acc[t]); }
}

INLINE void q4_K_tile(int64_t n, const void *w, const void *a, size_t as, float *s, int64_t ss,
                      const int nt)
{
    q45_K_tile(n, w, a, as, s, ss, nt, false);
}

INLINE void q5_K_tile(int64_t n, const void *w, const void *a, size_t as, float *s, int64_t ss,
                      const int nt)
{
    q45_K_tile(n, w, a, as, s, ss, nt, true);
}

/*
 * Q6_K: w = d sc (q - 32), q in 0..63, int8 sc per 16 elements.
 * dot = d d_a (sum sc q a - 32 sum_g sc_g bsum_g).
 */
INLINE void q6_K_tile(int64_t n, const void *w, const void *a, size_t as, float *s, int64_t ss,
                      const int nt)
{
    const block_q6_K *x = w;
    const int64_t nb = n / QK_K;
    const __m256i m4 = _mm256_set1_epi8(0xF), m3 = _mm256_set1_epi8(3);
    __m256 acc[KERN_TILE_T];
    FOR_T(t) { acc[t] = _mm256_setzero_ps(); }
    for (int64_t i = 0; i < nb; i++) {
        const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)x[i].scales));
        __m256i sc_lo = _mm256_permute2x128_si256(sc16, sc16, 0x00);
        __m256i sc_hi = _mm256_permute2x128_si256(sc16, sc16, 0x11);
        const float dx = f16(x[i].d);
        __m256i sumi[KERN_TILE_T] = {0};
        for (int h = 0; h < 2; h++) {
            __m256i ql0 = loadu256(x[i].ql + 64 * h), ql1 = loadu256(x[i].ql + 64 * h + 32);
            __m256i qh = loadu256(x[i].qh + 32 * h);
#pragma GCC unroll 4
            for (int k = 0; k < 4; k++) {
                /* group k of the half: low (k < 2) or high nibbles of ql0/ql1,
                 * tops from bits 2k, 2k+1 of qh */
                const __m256i ql = k & 1 ? ql1 : ql0;
                const __m256i lo = _mm256_and_si256(k < 2 ? ql : _mm256_srli_epi16(ql, 4), m4);
                const __m256i top = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * k), m3), 4);
                const __m256i q = _mm256_or_si256(lo, top);
                const __m256i sc = _mm256_shuffle_epi8(h ? sc_hi : sc_lo, k_two(2 * k, 2 * k + 1));
                FOR_T(t)
                {
                    const int8_t *q8 = (ACT(block_q8_K, a, as, t) + i)->qs + 128 * h + 32 * k;
                    const __m256i p = _mm256_madd_epi16(sc, _mm256_maddubs_epi16(q, loadu256(q8)));
                    sumi[t] = _mm256_add_epi32(sumi[t], p);
                }
                FENCE1(ql0, sumi);
                FENCE1(ql1, sumi);
                FENCE1(qh, sumi);
                FENCE1(sc_lo, sumi);
                FENCE1(sc_hi, sumi);
            }
        }
        FOR_T(t)
        {
            const block_q8_K *yb = ACT(block_q8_K, a, as, t) + i;
            const __m256i corr = _mm256_madd_epi16(sc16, bsums16(yb));
            const __m256i si = _mm256_sub_epi32(sumi[t], _mm256_slli_epi32(corr, 5));
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(dx * yb->d), _mm256_cvtepi32_ps(si), acc[t]);
        }
    }
    FOR_T(t) { s[t * ss] = hsum8(acc[t]); }
}

/* ---- entry points ------------------------------------------------------ */

#define TILES(name)                                                                          \
    static void name##_dot(int64_t n, float *s, const void *w, const void *a)                \
    {                                                                                        \
        name##_tile(n, w, a, 0, s, 0, 1);                                                    \
    }                                                                                        \
    static void name##_tilen(int64_t n, const void *w, const void *a, size_t as, float *s,   \
                             int64_t ss, int nt)                                             \
    {                                                                                        \
        switch (nt) {                                                                        \
        case 1: name##_tile(n, w, a, as, s, ss, 1); break;                                   \
        case 2: name##_tile(n, w, a, as, s, ss, 2); break;                                   \
        case 3: name##_tile(n, w, a, as, s, ss, 3); break;                                   \
        default: name##_tile(n, w, a, as, s, ss, 4); break;                                  \
        }                                                                                    \
    }

TILES(f32)
TILES(f16)
TILES(bf16)
TILES(q8_0)
TILES(q4_0)
TILES(q5_0)
TILES(q4_1)
TILES(q5_1)
TILES(q2_K)
TILES(q3_K)
TILES(q4_K)
TILES(q5_K)
TILES(q6_K)

#define K(name) ((struct kern_dot_kernels){name##_dot, name##_tilen})

struct kern_dot_kernels kern_dot_avx2(uint32_t t)
{
    switch (t) {
    case KT_F32: return K(f32);
    case KT_F16: return K(f16);
    case KT_BF16: return K(bf16);
    case KT_Q8_0: return K(q8_0);
    case KT_Q4_0: return K(q4_0);
    case KT_Q5_0: return K(q5_0);
    case KT_Q4_1: return K(q4_1);
    case KT_Q5_1: return K(q5_1);
    case KT_Q2_K: return K(q2_K);
    case KT_Q3_K: return K(q3_K);
    case KT_Q4_K: return K(q4_K);
    case KT_Q5_K: return K(q5_K);
    case KT_Q6_K: return K(q6_K);
    default: return (struct kern_dot_kernels){0};
    }
}
