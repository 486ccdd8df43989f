/*
 * AVX-512 (F/BW/VL/DQ) dot products of one weight row with 1..4 activation
 * rows; the same structure and arithmetic as dot_avx2.c (read that file's
 * comment first), twice as wide:
 *
 * - 32-element formats: two blocks per zmm, each half scaled by its own
 *   d_w * d_a (a two-valued blend).  An odd last block runs with the upper
 *   half zero.
 * - k-quants: one 64-element chunk (two 32-element sub-blocks, or four of
 *   16) per zmm; the per-sub-block scales become an i16 vector by vpermw
 *   from a constant index table.
 * - float formats: 16 lanes per vector, a masked load for the tail (no
 *   scalar loop).
 *
 * With VNNI, the u8 x s8 products of the 32-element formats are summed by
 * vpdpbusd (no i16 step), and the k-quants' scale multiply-add
 * (vpmaddwd + vpaddd) becomes one vpdpwssd.  Without VNNI the AVX2 pair is
 * used at zmm width.  With AVX512_BF16, BF16 dots use vdpbf16ps (products
 * of bf16 are exact in f32; DAZ applies to bf16 subnormal inputs, which
 * changes a result by less than 2^-126 per term).
 *
 * -128 never reaches a multiply: weights go through |x| (as u8, 128 is
 * fine) and the sign moves to the activation, which is in [-127, 127].
 */
#include <immintrin.h>
#include <string.h>

#include "kernels/cpu/dot_impl.h"
#include "kernels/cpu/quant.h"

#define INLINE static inline __attribute__((always_inline))
#define FOR_T(t) _Pragma("GCC unroll 4") for (int t = 0; t < nt; t++)
#define ACT(T, a, as, t) ((const T *)((const char *)(a) + (size_t)(t) * (as)))

#define UPPER32 ((__mmask32)0xFFFF0000u)             /* i16 lanes 16..31 */
#define UPPER64 ((__mmask64)0xFFFFFFFF00000000ull)   /* bytes 32..63 */

INLINE float hsum4(__m128 r)
{
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}

INLINE float f16(kern_f16 h) { return _cvtsh_ss(h); }

INLINE __m256i loadu256(const void *p) { return _mm256_loadu_si256((const __m256i *)p); }
INLINE __m512i loadu512(const void *p) { return _mm512_loadu_si512(p); }

/* [lo | hi] */
INLINE __m512i join256(__m256i lo, __m256i hi)
{
    return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}

/* [v | 0] (a plain cast would leave the upper half undefined). */
static inline __attribute__((always_inline)) __m512i zext256(__m256i v) { return _mm512_inserti64x4(_mm512_setzero_si512(), v, 0); }

/* The same 32 bytes in both halves. */
INLINE __m512i bcast256(const void *p) { return _mm512_broadcast_i64x4(loadu256(p)); }

/* u8 x s8 products summed in fours into i32 (32 bytes of pairs fit i16). */
INLINE __m512i dot_u8s8(__m512i acc, __m512i u, __m512i s, const bool vnni)
{
    if (vnni)
        return _mm512_dpbusd_epi32(acc, u, s);
    const __m512i p = _mm512_maddubs_epi16(u, s);
    return _mm512_add_epi32(acc, _mm512_madd_epi16(p, _mm512_set1_epi16(1)));
}

/* acc += pairs of (scale16 * maddubs(q, y)) as i32. */
INLINE __m512i dot_scaled(__m512i acc, __m512i sc16, __m512i q, __m512i y, const bool vnni)
{
    const __m512i p = _mm512_maddubs_epi16(q, y);
    if (vnni)
        return _mm512_dpwssd_epi32(acc, sc16, p);
    return _mm512_add_epi32(acc, _mm512_madd_epi16(sc16, p));
}

/* ---- float formats ---------------------------------------------------- */

enum { FK_F32, FK_F16, FK_BF16 };

INLINE __m512 fload16(const void *p, int64_t i, __mmask16 m, const int kind)
{
    if (kind == FK_F16)
        return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, (const kern_f16 *)p + i));
    if (kind == FK_BF16) {
        const __m256i h = _mm256_maskz_loadu_epi16(m, (const kern_bf16 *)p + i);
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    return _mm512_maskz_loadu_ps(m, (const float *)p + i);
}

INLINE void float_tile(int64_t n, const void *w, const void *a, size_t as, float *s, int64_t ss,
                       const int nt, const int wk, const int ak)
{
    const char *y[KERN_TILE_T];
    __m512 acc0[KERN_TILE_T], acc1[KERN_TILE_T];
    FOR_T(t)
    {
        y[t] = (const char *)a + (size_t)t * as;
        acc0[t] = acc1[t] = _mm512_setzero_ps();
    }
    const __mmask16 all = 0xFFFF;
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        const __m512 w0 = fload16(w, i, all, wk), w1 = fload16(w, i + 16, all, wk);
        FOR_T(t)
        {
            acc0[t] = _mm512_fmadd_ps(w0, fload16(y[t], i, all, ak), acc0[t]);
            acc1[t] = _mm512_fmadd_ps(w1, fload16(y[t], i + 16, all, ak), acc1[t]);
        }
    }
    for (; i < n; i += 16) {
        const __mmask16 m = n - i >= 16 ? all : (__mmask16)((1u << (n - i)) - 1);
        const __m512 w0 = fload16(w, i, m, wk);
        FOR_T(t) { acc0[t] = _mm512_fmadd_ps(w0, fload16(y[t], i, m, ak), acc0[t]); }
    }
    FOR_T(t) { s[t * ss] = _mm512_reduce_add_ps(_mm512_add_ps(acc0[t], acc1[t])); }
}

/* BF16 x BF16 with vdpbf16ps: 32 pairs per instruction. */
INLINE void bf16dp_tile(int64_t n, const void *w, const void *a, size_t as, float *s, int64_t ss,
                        const int nt)
{
    const kern_bf16 *x = w;
    const kern_bf16 *y[KERN_TILE_T];
    __m512 acc0[KERN_TILE_T], acc1[KERN_TILE_T];
    FOR_T(t)
    {
        y[t] = ACT(kern_bf16, a, as, t);
        acc0[t] = acc1[t] = _mm512_setzero_ps();
    }
    int64_t i = 0;
    for (; i + 64 <= n; i += 64) {
        const __m512i w0 = loadu512(x + i), w1 = loadu512(x + i + 32);
        FOR_T(t)
        {
            acc0[t] = _mm512_dpbf16_ps(acc0[t], (__m512bh)w0, (__m512bh)loadu512(y[t] + i));
            acc1[t] = _mm512_dpbf16_ps(acc1[t], (__m512bh)w1, (__m512bh)loadu512(y[t] + i + 32));
        }
    }
    for (; i < n; i += 32) {
        const __mmask32 m = n - i >= 32 ? (__mmask32)0xFFFFFFFFu : (__mmask32)((1u << (n - i)) - 1);
        const __m512i w0 = _mm512_maskz_loadu_epi16(m, x + i);
        FOR_T(t)
        {
            const __m512i y0 = _mm512_maskz_loadu_epi16(m, y[t] + i);
            acc0[t] = _mm512_dpbf16_ps(acc0[t], (__m512bh)w0, (__m512bh)y0);
        }
    }
    FOR_T(t) { s[t * ss] = _mm512_reduce_add_ps(_mm512_add_ps(acc0[t], acc1[t])); }
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

/* ---- 32-element blocks, two per zmm ------------------------------------ */

enum { B_Q8_0, B_Q4_0, B_Q5_0, B_Q4_1, B_Q5_1 };

static const size_t blk_size[] = {
    [B_Q8_0] = sizeof(block_q8_0), [B_Q4_0] = sizeof(block_q4_0), [B_Q5_0] = sizeof(block_q5_0),
    [B_Q4_1] = sizeof(block_q4_1), [B_Q5_1] = sizeof(block_q5_1),
};

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
    return _mm256_movm_epi8((__mmask32)x);
}

/* The 32 codes of one block as bytes: signed (q - offset) for the _0
 * formats, unsigned q for the _1 formats; d and m (m = 0 for _0). */
INLINE __m256i blk_codes(const char *b, const int fmt, float *d, float *m)
{
    switch (fmt) {
    case B_Q8_0: {
        const block_q8_0 *x = (const block_q8_0 *)b;
        *d = f16(x->d);
        *m = 0.0f;
        return loadu256(x->qs);
    }
    case B_Q4_0: {
        const block_q4_0 *x = (const block_q4_0 *)b;
        *d = f16(x->d);
        *m = 0.0f;
        return _mm256_sub_epi8(nibbles32(x->qs), _mm256_set1_epi8(8));
    }
    case B_Q5_0: {
        const block_q5_0 *x = (const block_q5_0 *)b;
        *d = f16(x->d);
        *m = 0.0f;
        const __m256i hi = _mm256_andnot_si256(bits32(x->qh), _mm256_set1_epi8((char)0xF0));
        return _mm256_or_si256(nibbles32(x->qs), hi);
    }
    case B_Q4_1: {
        const block_q4_1 *x = (const block_q4_1 *)b;
        *d = f16(x->d);
        *m = f16(x->m);
        return nibbles32(x->qs);
    }
    default: {
        const block_q5_1 *x = (const block_q5_1 *)b;
        *d = f16(x->d);
        *m = f16(x->m);
        return _mm256_or_si256(nibbles32(x->qs),
                               _mm256_and_si256(bits32(x->qh), _mm256_set1_epi8(0x10)));
    }
    }
}

/* Activation block i of token row y: quants, d, and s (Q8_1 only). */
INLINE __m256i act_codes(const void *y, int64_t i, const bool q81, float *d, float *s)
{
    if (q81) {
        const block_q8_1 *b = (const block_q8_1 *)y + i;
        *d = f16(b->d);
        *s = f16(b->s);
        return loadu256(b->qs);
    }
    const block_q8_0 *b = (const block_q8_0 *)y + i;
    *d = f16(b->d);
    *s = 0.0f;
    return loadu256(b->qs);
}

/* Blocks i and i+1 (two = true) or block i alone (upper half zero). */
INLINE void blk32_step(const char *w, const void *a, size_t as, int64_t i, const int nt,
                       const int fmt, const bool vnni, const bool two, __m512 *acc, float *summ)
{
    const bool sgn = fmt == B_Q8_0 || fmt == B_Q4_0 || fmt == B_Q5_0;
    const bool q81 = !sgn;
    float d0, m0, d1 = 0.0f, m1 = 0.0f;
    const __m256i c0 = blk_codes(w + (size_t)i * blk_size[fmt], fmt, &d0, &m0);
    const __m256i c1 = two ? blk_codes(w + (size_t)(i + 1) * blk_size[fmt], fmt, &d1, &m1)
                           : _mm256_setzero_si256();
    const __m512i qx = join256(c0, c1);
    const __m512i ux = sgn ? _mm512_abs_epi8(qx) : qx;
    const __mmask64 neg = sgn ? _mm512_movepi8_mask(qx) : 0;
    FOR_T(t)
    {
        const void *y = ACT(char, a, as, t);
        float e0, s0, e1 = 0.0f, s1 = 0.0f;
        const __m256i y0 = act_codes(y, i, q81, &e0, &s0);
        const __m256i y1 = two ? act_codes(y, i + 1, q81, &e1, &s1) : _mm256_setzero_si256();
        __m512i qy = join256(y0, y1);
        if (sgn)
            qy = _mm512_mask_sub_epi8(qy, neg, _mm512_setzero_si512(), qy);
        const __m512i p = dot_u8s8(_mm512_setzero_si512(), ux, qy, vnni);
        const __m512 dv = _mm512_mask_blend_ps((__mmask16)0xFF00, _mm512_set1_ps(d0 * e0),
                                               _mm512_set1_ps(d1 * e1));
        acc[t] = _mm512_fmadd_ps(dv, _mm512_cvtepi32_ps(p), acc[t]);
        if (!sgn)
            summ[t] += m0 * s0 + m1 * s1;
    }
}

INLINE void blk32_tile(int64_t n, const void *w, const void *a, size_t as, float *s, int64_t ss,
                       const int nt, const int fmt, const bool vnni)
{
    const int64_t nb = n / 32;
    __m512 acc[KERN_TILE_T];
    float summ[KERN_TILE_T];
    FOR_T(t)
    {
        acc[t] = _mm512_setzero_ps();
        summ[t] = 0.0f;
    }
    int64_t i = 0;
    for (; i + 2 <= nb; i += 2)
        blk32_step(w, a, as, i, nt, fmt, vnni, true, acc, summ);
    if (i < nb)
        blk32_step(w, a, as, i, nt, fmt, vnni, false, acc, summ);
    FOR_T(t) { s[t * ss] = _mm512_reduce_add_ps(acc[t]) + summ[t]; }
}

#define BLK32(name, fmt)                                                                      \
    INLINE void name##_v_tile(int64_t n, const void *w, const void *a, size_t as, float *s,   \
                              int64_t ss, const int nt)                                       \
    {                                                                                         \
        blk32_tile(n, w, a, as, s, ss, nt, fmt, true);                                        \
    }                                                                                         \
    INLINE void name##_tile(int64_t n, const void *w, const void *a, size_t as, float *s,     \
                            int64_t ss, const int nt)                                         \
    {                                                                                         \
        blk32_tile(n, w, a, as, s, ss, nt, fmt, false);                                       \
    }
BLK32(q8_0, B_Q8_0)
BLK32(q4_0, B_Q4_0)
BLK32(q5_0, B_Q5_0)
BLK32(q4_1, B_Q4_1)
BLK32(q5_1, B_Q5_1)

/* ---- k-quants (x Q8_K), one 64-element chunk per zmm -------------------- */

/* vpermw index tables: chunk c (0..3), i16 lane l covers elements
 * 64c + 2l, 64c + 2l + 1: per-16 scales 4c + l / 8, per-32 ones 2c + l / 16. */
#define IDX16(c)                                                                                \
    {4 * c, 4 * c, 4 * c, 4 * c, 4 * c, 4 * c, 4 * c, 4 * c,                                     \
     4 * c + 1, 4 * c + 1, 4 * c + 1, 4 * c + 1, 4 * c + 1, 4 * c + 1, 4 * c + 1, 4 * c + 1,     \
     4 * c + 2, 4 * c + 2, 4 * c + 2, 4 * c + 2, 4 * c + 2, 4 * c + 2, 4 * c + 2, 4 * c + 2,     \
     4 * c + 3, 4 * c + 3, 4 * c + 3, 4 * c + 3, 4 * c + 3, 4 * c + 3, 4 * c + 3, 4 * c + 3}
#define IDX32(c)                                                                                \
    {2 * c, 2 * c, 2 * c, 2 * c, 2 * c, 2 * c, 2 * c, 2 * c,                                     \
     2 * c, 2 * c, 2 * c, 2 * c, 2 * c, 2 * c, 2 * c, 2 * c,                                     \
     2 * c + 1, 2 * c + 1, 2 * c + 1, 2 * c + 1, 2 * c + 1, 2 * c + 1, 2 * c + 1, 2 * c + 1,     \
     2 * c + 1, 2 * c + 1, 2 * c + 1, 2 * c + 1, 2 * c + 1, 2 * c + 1, 2 * c + 1, 2 * c + 1}
static const int16_t idx16[4][32] __attribute__((aligned(64))) = {IDX16(0), IDX16(1), IDX16(2),
                                                                  IDX16(3)};
static const int16_t idx32[4][32] __attribute__((aligned(64))) = {IDX32(0), IDX32(1), IDX32(2),
                                                                  IDX32(3)};

/* i16 scale vector for chunk c from up to 16 i16 scales in the low lanes. */
INLINE __m512i chunk_scales16(__m512i sc, int c) { return _mm512_permutexvar_epi16(loadu512(idx16[c]), sc); }
INLINE __m512i chunk_scales32(__m512i sc, int c) { return _mm512_permutexvar_epi16(loadu512(idx32[c]), sc); }

/* Bytes: bit b_lo in the low 32, bit b_hi in the high 32. */
INLINE __m512i bit_sel(int b_lo, int b_hi)
{
    return _mm512_mask_blend_epi8(UPPER64, _mm512_set1_epi8((char)(1 << b_lo)),
                                  _mm512_set1_epi8((char)(1 << b_hi)));
}

/* Two-bit fields of 32 bytes of qs: field k in the low half, k + 1 in the high. */
INLINE __m512i crumbs(const uint8_t *qs, int k)
{
    __m512i b = _mm512_srli_epi16(bcast256(qs), 2 * k);
    b = _mm512_mask_srli_epi16(b, UPPER32, b, 2);
    return _mm512_and_si512(b, _mm512_set1_epi8(3));
}

INLINE __m256i bsums16(const block_q8_K *y) { return loadu256(y->bsums); }

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

/* Q2_K: as dot_avx2.c; chunk c = groups 2c, 2c+1 = crumbs k, k+1 of half c/2. */
INLINE void q2_K_tile_x(int64_t n, const void *w, const void *a, size_t as, float *s, int64_t ss,
                        const int nt, const bool vnni)
{
    const block_q2_K *x = w;
    const int64_t nb = n / QK_K;
    __m512 acc[KERN_TILE_T];
    __m256 accm[KERN_TILE_T];
    FOR_T(t)
    {
        acc[t] = _mm512_setzero_ps();
        accm[t] = _mm256_setzero_ps();
    }
    for (int64_t i = 0; i < nb; i++) {
        const __m128i sm = _mm_loadu_si128((const __m128i *)x[i].scales);
        const __m128i m4 = _mm_set1_epi8(0xF);
        const __m256i sc16 = _mm256_cvtepu8_epi16(_mm_and_si128(sm, m4));
        const __m256i mn16 = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(sm, 4), m4));
        const __m512i scz = zext256(sc16);
        const float dx = f16(x[i].d), mx = f16(x[i].dmin);
        __m512i sumi[KERN_TILE_T];
        FOR_T(t) { sumi[t] = _mm512_setzero_si512(); }
#pragma GCC unroll 4
        for (int c = 0; c < 4; c++) {
            const __m512i q = crumbs(x[i].qs + 32 * (c / 2), 2 * (c % 2));
            const __m512i sc = chunk_scales16(scz, c);
            FOR_T(t)
            {
                const int8_t *q8 = (ACT(block_q8_K, a, as, t) + i)->qs + 64 * c;
                sumi[t] = dot_scaled(sumi[t], sc, q, loadu512(q8), vnni);
            }
        }
        FOR_T(t)
        {
            const block_q8_K *yb = ACT(block_q8_K, a, as, t) + i;
            const __m256i pm = _mm256_madd_epi16(mn16, bsums16(yb));
            acc[t] = _mm512_fmadd_ps(_mm512_set1_ps(dx * yb->d), _mm512_cvtepi32_ps(sumi[t]), acc[t]);
            accm[t] = _mm256_fmadd_ps(_mm256_set1_ps(-mx * yb->d), _mm256_cvtepi32_ps(pm), accm[t]);
        }
    }
    FOR_T(t)
    {
        const __m256 m = accm[t];
        s[t * ss] = _mm512_reduce_add_ps(acc[t]) +
                    hsum4(_mm_add_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1)));
    }
}

/* Q3_K: u = crumb | hbit << 2 in 0..7; dot = d d_a (sum sc u a - 4 sum sc_g bsum_g). */
INLINE void q3_K_tile_x(int64_t n, const void *w, const void *a, size_t as, float *s, int64_t ss,
                        const int nt, const bool vnni)
{
    const block_q3_K *x = w;
    const int64_t nb = n / QK_K;
    __m512 acc[KERN_TILE_T];
    FOR_T(t) { acc[t] = _mm512_setzero_ps(); }
    for (int64_t i = 0; i < nb; i++) {
        const __m256i sc16 = _mm256_cvtepi8_epi16(q3_K_scales(x[i].scales));
        const __m512i scz = zext256(sc16);
        const __m512i hb = bcast256(x[i].hmask);
        const float dx = f16(x[i].d);
        __m512i sumi[KERN_TILE_T];
        FOR_T(t) { sumi[t] = _mm512_setzero_si512(); }
#pragma GCC unroll 4
        for (int c = 0; c < 4; c++) {
            __m512i q = crumbs(x[i].qs + 32 * (c / 2), 2 * (c % 2));
            const __mmask64 hm = _mm512_test_epi8_mask(hb, bit_sel(2 * c, 2 * c + 1));
            q = _mm512_mask_add_epi8(q, hm, q, _mm512_set1_epi8(4));
            const __m512i sc = chunk_scales16(scz, c);
            FOR_T(t)
            {
                const int8_t *q8 = (ACT(block_q8_K, a, as, t) + i)->qs + 64 * c;
                sumi[t] = dot_scaled(sumi[t], sc, q, loadu512(q8), vnni);
            }
        }
        FOR_T(t)
        {
            const block_q8_K *yb = ACT(block_q8_K, a, as, t) + i;
            const __m256i corr = _mm256_slli_epi32(_mm256_madd_epi16(sc16, bsums16(yb)), 2);
            const __m512i si = _mm512_sub_epi32(sumi[t], zext256(corr));
            acc[t] = _mm512_fmadd_ps(_mm512_set1_ps(dx * yb->d), _mm512_cvtepi32_ps(si), acc[t]);
        }
    }
    FOR_T(t) { s[t * ss] = _mm512_reduce_add_ps(acc[t]); }
}

/* Q4_K/Q5_K: chunk c = sub-blocks 2c (low nibbles) and 2c+1 (high nibbles). */
INLINE void q45_K_tile_x(int64_t n, const void *w, const void *a, size_t as, float *s, int64_t ss,
                         const int nt, const bool five, const bool vnni)
{
    const int64_t nb = n / QK_K;
    const size_t bsz = five ? sizeof(block_q5_K) : sizeof(block_q4_K);
    const __m512i m4 = _mm512_set1_epi8(0xF);
    __m512 acc[KERN_TILE_T];
    __m128 accm[KERN_TILE_T];
    FOR_T(t)
    {
        acc[t] = _mm512_setzero_ps();
        accm[t] = _mm_setzero_ps();
    }
    for (int64_t i = 0; i < nb; i++) {
        const char *blk = (const char *)w + (size_t)i * bsz;
        const block_q4_K *b4 = (const block_q4_K *)blk;
        const uint8_t *qs = five ? ((const block_q5_K *)blk)->qs : b4->qs;
        const __m256i ms = _mm256_cvtepu8_epi16(q4_K_scales_mins(b4->scales));
        const __m128i mins = _mm256_extracti128_si256(ms, 1);
        const __m512i scz = zext256(ms); /* scales in lanes 0..7 */
        const __m512i qh = five ? bcast256(((const block_q5_K *)blk)->qh) : _mm512_setzero_si512();
        const float dx = f16(b4->d), mx = f16(b4->dmin);
        __m512i sumi[KERN_TILE_T];
        FOR_T(t) { sumi[t] = _mm512_setzero_si512(); }
#pragma GCC unroll 4
        for (int c = 0; c < 4; c++) {
            const __m512i b = bcast256(qs + 32 * c);
            __m512i q = _mm512_and_si512(_mm512_mask_srli_epi16(b, UPPER32, b, 4), m4);
            if (five) {
                const __mmask64 hm = _mm512_test_epi8_mask(qh, bit_sel(2 * c, 2 * c + 1));
                q = _mm512_mask_add_epi8(q, hm, q, _mm512_set1_epi8(16));
            }
            const __m512i sc = chunk_scales32(scz, c);
            FOR_T(t)
            {
                const int8_t *q8 = (ACT(block_q8_K, a, as, t) + i)->qs + 64 * c;
                sumi[t] = dot_scaled(sumi[t], sc, q, loadu512(q8), vnni);
            }
        }
        FOR_T(t)
        {
            const block_q8_K *yb = ACT(block_q8_K, a, as, t) + i;
            const __m256i bs = bsums16(yb);
            const __m128i bs32 = _mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1));
            const __m128i pm = _mm_madd_epi16(mins, bs32);
            acc[t] = _mm512_fmadd_ps(_mm512_set1_ps(dx * yb->d), _mm512_cvtepi32_ps(sumi[t]), acc[t]);
            accm[t] = _mm_fmadd_ps(_mm_set1_ps(-mx * yb->d), _mm_cvtepi32_ps(pm), accm[t]);
        }
    }
    FOR_T(t) { s[t * ss] = _mm512_reduce_add_ps(acc[t]) + hsum4(accm[t]); }
}

/* Q6_K: half h = chunks 2h (low nibbles of ql[0..63], tops bits 0-1 | 2-3)
 * and 2h+1 (high nibbles, tops bits 4-5 | 6-7). */
INLINE void q6_K_tile_x(int64_t n, const void *w, const void *a, size_t as, float *s, int64_t ss,
                        const int nt, const bool vnni)
{
    const block_q6_K *x = w;
    const int64_t nb = n / QK_K;
    const __m512i m4 = _mm512_set1_epi8(0xF), m3 = _mm512_set1_epi8(3);
    __m512 acc[KERN_TILE_T];
    FOR_T(t) { acc[t] = _mm512_setzero_ps(); }
    for (int64_t i = 0; i < nb; i++) {
        const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)x[i].scales));
        const __m512i scz = zext256(sc16);
        const float dx = f16(x[i].d);
        __m512i sumi[KERN_TILE_T];
        FOR_T(t) { sumi[t] = _mm512_setzero_si512(); }
#pragma GCC unroll 2
        for (int h = 0; h < 2; h++) {
            const __m512i ql = loadu512(x[i].ql + 64 * h);
            const __m512i hb = bcast256(x[i].qh + 32 * h);
            const __m512i h4 = _mm512_srli_epi16(hb, 4);
            const __m512i t01 = _mm512_and_si512(_mm512_mask_srli_epi16(hb, UPPER32, hb, 2), m3);
            const __m512i t23 = _mm512_and_si512(_mm512_mask_srli_epi16(h4, UPPER32, h4, 2), m3);
            const __m512i q0 = _mm512_or_si512(_mm512_and_si512(ql, m4), _mm512_slli_epi16(t01, 4));
            const __m512i q1 = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(ql, 4), m4),
                                               _mm512_slli_epi16(t23, 4));
            const __m512i sc0 = chunk_scales16(scz, 2 * h), sc1 = chunk_scales16(scz, 2 * h + 1);
            FOR_T(t)
            {
                const int8_t *q8 = (ACT(block_q8_K, a, as, t) + i)->qs + 128 * h;
                sumi[t] = dot_scaled(sumi[t], sc0, q0, loadu512(q8), vnni);
                sumi[t] = dot_scaled(sumi[t], sc1, q1, loadu512(q8 + 64), vnni);
            }
        }
        FOR_T(t)
        {
            const block_q8_K *yb = ACT(block_q8_K, a, as, t) + i;
            const __m256i corr = _mm256_slli_epi32(_mm256_madd_epi16(sc16, bsums16(yb)), 5);
            const __m512i si = _mm512_sub_epi32(sumi[t], zext256(corr));
            acc[t] = _mm512_fmadd_ps(_mm512_set1_ps(dx * yb->d), _mm512_cvtepi32_ps(si), acc[t]);
        }
    }
    FOR_T(t) { s[t * ss] = _mm512_reduce_add_ps(acc[t]); }
}

#define KQ(name, call)                                                                        \
    INLINE void name##_v_tile(int64_t n, const void *w, const void *a, size_t as, float *s,   \
                              int64_t ss, const int nt)                                       \
    {                                                                                         \
        call(n, w, a, as, s, ss, nt, true);                                                   \
    }                                                                                         \
    INLINE void name##_tile(int64_t n, const void *w, const void *a, size_t as, float *s,     \
                            int64_t ss, const int nt)                                         \
    {                                                                                         \
        call(n, w, a, as, s, ss, nt, false);                                                  \
    }

INLINE void q4_K_x(int64_t n, const void *w, const void *a, size_t as, float *s, int64_t ss,
                   const int nt, const bool vnni)
{
    q45_K_tile_x(n, w, a, as, s, ss, nt, false, vnni);
}

INLINE void q5_K_x(int64_t n, const void *w, const void *a, size_t as, float *s, int64_t ss,
                   const int nt, const bool vnni)
{
    q45_K_tile_x(n, w, a, as, s, ss, nt, true, vnni);
}

KQ(q2_K, q2_K_tile_x)
KQ(q3_K, q3_K_tile_x)
KQ(q4_K, q4_K_x)
KQ(q5_K, q5_K_x)
KQ(q6_K, q6_K_tile_x)

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
TILES(bf16dp)
TILES(q8_0)
TILES(q8_0_v)
TILES(q4_0)
TILES(q4_0_v)
TILES(q5_0)
TILES(q5_0_v)
TILES(q4_1)
TILES(q4_1_v)
TILES(q5_1)
TILES(q5_1_v)
TILES(q2_K)
TILES(q2_K_v)
TILES(q3_K)
TILES(q3_K_v)
TILES(q4_K)
TILES(q4_K_v)
TILES(q5_K)
TILES(q5_K_v)
TILES(q6_K)
TILES(q6_K_v)

#define K(name) ((struct kern_dot_kernels){name##_dot, name##_tilen})
#define KV(name) (vnni ? K(name##_v) : K(name))

struct kern_dot_kernels kern_dot_avx512(uint32_t t, bool vnni, bool bf16)
{
    switch (t) {
    case KT_F32: return K(f32);
    case KT_F16: return K(f16);
    case KT_BF16: return bf16 ? K(bf16dp) : K(bf16);
    case KT_Q8_0: return KV(q8_0);
    case KT_Q4_0: return KV(q4_0);
    case KT_Q5_0: return KV(q5_0);
    case KT_Q4_1: return KV(q4_1);
    case KT_Q5_1: return KV(q5_1);
    case KT_Q2_K: return KV(q2_K);
    case KT_Q3_K: return KV(q3_K);
    case KT_Q4_K: return KV(q4_K);
    case KT_Q5_K: return KV(q5_K);
    case KT_Q6_K: return KV(q6_K);
    default: return (struct kern_dot_kernels){0};
    }
}
