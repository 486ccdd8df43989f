/*
 * The scalar reference of the weight formats (kernels/cpu/quant_ref*.c,
 * fp16.c): f16/bf16 conversion edge cases, known-answer blocks built byte
 * by byte from GGUF's definitions, quantize round-trip error bounds, and
 * the argument checks.  Dot products are in test_quant_dot.c.
 */
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "kernels/cpu/quant.h"
#include "tests/unit/harness.h"

static uint32_t bits_of(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float float_of(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* xorshift64; fixed seeds keep failures reproducible. */
static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static double rng_gauss(uint64_t *s)
{
    double u1 = ((double)(rng_next(s) >> 11) + 0.5) / 9007199254740992.0;
    double u2 = ((double)(rng_next(s) >> 11) + 0.5) / 9007199254740992.0;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

/* ---- f16 / bf16 -------------------------------------------------------- */

TEST(quant_f16_edges)
{
    /* clang-format off */
    static const struct { float f; uint16_t h; } to16[] = {
        {0.0f, 0x0000},
        {-0.0f, 0x8000},
        {1.0f, 0x3C00},
        {-2.0f, 0xC000},
        {65504.0f, 0x7BFF},           /* largest half */
        {65519.0f, 0x7BFF},           /* below the halfway point 65520 */
        {65520.0f, 0x7C00},           /* tie between 65504 (odd) and 2^16: inf */
        {1e6f, 0x7C00},
        {-1e6f, 0xFC00},
        {INFINITY, 0x7C00},
        {-INFINITY, 0xFC00},
        {6.103515625e-05f, 0x0400},   /* 2^-14, smallest normal */
        {6.0975551605224609375e-05f, 0x03FF}, /* 1023 * 2^-24, largest subnormal */
        {5.9604644775390625e-08f, 0x0001},    /* 2^-24, smallest subnormal */
        {2.98023223876953125e-08f, 0x0000},   /* 2^-25: tie between 0 and 2^-24 -> 0 */
        {2.98023259404089e-08f, 0x0001},      /* just above 2^-25 */
        {8.94069671630859375e-08f, 0x0002},   /* 1.5 * 2^-24: tie -> 2 (even) */
        {1.490116119384765625e-07f, 0x0002},  /* 2.5 * 2^-24: tie -> 2 (even) */
        {1.00048828125f, 0x3C00},     /* 1 + 2^-11: tie -> 1.0 */
        {1.00146484375f, 0x3C02},     /* 1 + 3 * 2^-11: tie -> 1 + 2^-9 */
        {1.00048840045928955078125f, 0x3C01}, /* 1 + 2^-11 + 2^-23: above the tie */
        {0.333333333f, 0x3555},
        {-1e-10f, 0x8000},            /* underflow keeps the sign */
    };
    /* clang-format on */
    for (size_t i = 0; i < sizeof to16 / sizeof to16[0]; i++)
        CHECK_MSG(kern_f32_to_f16(to16[i].f) == to16[i].h, "f32_to_f16(%.9g) = 0x%04x, want 0x%04x",
                  (double)to16[i].f, kern_f32_to_f16(to16[i].f), to16[i].h);

    CHECK(kern_f16_to_f32(0x3555) == 0.333251953125f);
    CHECK(kern_f16_to_f32(0x0001) == 5.9604644775390625e-08f);
    CHECK(kern_f16_to_f32(0x03FF) == 6.0975551605224609375e-05f);
    CHECK(kern_f16_to_f32(0x7BFF) == 65504.0f);
    CHECK(bits_of(kern_f16_to_f32(0x8000)) == 0x80000000u);
    CHECK(kern_f16_to_f32(0x7C00) == INFINITY);
    CHECK(kern_f16_to_f32(0xFC00) == -INFINITY);
    CHECK(isnan(kern_f16_to_f32(0x7E00)));
    CHECK(isnan(kern_f16_to_f32(0x7C01))); /* signalling NaN stays NaN */
    uint16_t hn = kern_f32_to_f16(NAN);
    CHECK((hn & 0x7C00) == 0x7C00 && (hn & 0x3FF) != 0);
    hn = kern_f32_to_f16(float_of(0xFF800001u)); /* sNaN, payload only in low bits */
    CHECK((hn & 0xFC00) == 0xFC00 && (hn & 0x3FF) != 0);

    /* Every half survives the round trip; NaNs stay NaN. */
    for (uint32_t h = 0; h < 0x10000; h++) {
        float f = kern_f16_to_f32((kern_f16)h);
        if ((h & 0x7C00) == 0x7C00 && (h & 0x3FF)) {
            CHECK_MSG(isnan(f), "0x%04x not NaN", h);
            continue;
        }
        uint16_t back = kern_f32_to_f16(f);
        CHECK_MSG(back == h, "0x%04x -> %g -> 0x%04x", h, (double)f, back);
    }

    /* Random finite floats: the result is the nearest half (ties even).
     * Neighbour values are compared in double, where they are exact. */
    uint64_t s = 12345;
    for (int i = 0; i < 20000; i++) {
        uint32_t u = (uint32_t)rng_next(&s);
        u = (u & 0x807fffffu) | (100u + (u >> 23) % 44u) << 23; /* 2^-27 .. 2^16 */
        float f = float_of(u);
        uint16_t h = kern_f32_to_f16(f);
        double a = fabs((double)f), v = fabs((double)kern_f16_to_f32(h));
        if ((h & 0x7FFF) == 0x7C00) {
            CHECK_MSG(a >= 65520.0, "%.9g -> inf", (double)f);
            continue;
        }
        CHECK((h >> 15) == (u >> 31));
        uint16_t m = h & 0x7FFF;
        double up = m < 0x7BFF ? (double)kern_f16_to_f32((kern_f16)(m + 1)) : 65536.0;
        double dn = m > 0 ? (double)kern_f16_to_f32((kern_f16)(m - 1)) : -1.0;
        double e = fabs(a - v);
        CHECK_MSG(e <= up - a && (dn < 0 || e <= a - dn), "%.9g -> 0x%04x not nearest", (double)f,
                  h);
        if (e == up - a || (dn >= 0 && e == a - dn))
            CHECK_MSG((m & 1) == 0, "%.9g -> 0x%04x tie not even", (double)f, h);
    }
}

TEST(quant_bf16_edges)
{
    /* clang-format off */
    static const struct { uint32_t f; uint16_t h; } to16[] = {
        {0x00000000u, 0x0000},
        {0x80000000u, 0x8000},
        {0x3F800000u, 0x3F80}, /* 1.0 */
        {0x3F808000u, 0x3F80}, /* 1 + 2^-8: tie -> even 0x3F80 */
        {0x3F818000u, 0x3F82}, /* 1 + 3 * 2^-8: tie -> even 0x3F82 */
        {0x3F808001u, 0x3F81}, /* just above the tie */
        {0x7F7FFFFFu, 0x7F80}, /* FLT_MAX rounds past the largest bf16 to inf */
        {0x7F7F7FFFu, 0x7F7F}, /* just below the halfway point */
        {0x7F800000u, 0x7F80},
        {0xFF800000u, 0xFF80},
        {0x00018000u, 0x0002}, /* subnormal tie, odd -> up */
        {0x00008000u, 0x0000}, /* subnormal tie, even -> down */
        {0x00008001u, 0x0001},
        {0x80010000u, 0x8001}, /* exact negative subnormal */
    };
    /* clang-format on */
    for (size_t i = 0; i < sizeof to16 / sizeof to16[0]; i++)
        CHECK_MSG(kern_f32_to_bf16(float_of(to16[i].f)) == to16[i].h,
                  "f32_to_bf16(0x%08x) = 0x%04x, want 0x%04x", to16[i].f,
                  kern_f32_to_bf16(float_of(to16[i].f)), to16[i].h);
    uint16_t hn = kern_f32_to_bf16(float_of(0x7F800001u)); /* sNaN with low payload */
    CHECK((hn & 0x7F80) == 0x7F80 && (hn & 0x7F) != 0);
    CHECK(isnan(kern_bf16_to_f32(0x7FC0)));
    CHECK(kern_bf16_to_f32(0xC040) == -3.0f);
    CHECK(bits_of(kern_bf16_to_f32(0x8000)) == 0x80000000u);
    for (uint32_t h = 0; h < 0x10000; h++) {
        float f = kern_bf16_to_f32((kern_bf16)h);
        CHECK(bits_of(f) == h << 16);
        if (!isnan(f))
            CHECK(kern_f32_to_bf16(f) == h);
    }
}

/* ---- known-answer blocks ----------------------------------------------- */

/* Dequantize one block of type t and compare with want[0..n). */
static void check_block(uint32_t t, const void *blk, const float *want, int n)
{
    float got[QK_K];
    REQUIRE(kern_dequant_row_ref(t, blk, got, n) == 0);
    for (int i = 0; i < n; i++)
        CHECK_MSG(got[i] == want[i], "%s element %d: %.9g, want %.9g", kern_type_name(t), i,
                  (double)got[i], (double)want[i]);
}

/* qs[j] = j | (15 - j) << 4: element j reads nibble j, element 16 + j
 * reads 15 - j, so a swapped nibble order or a j/j+16 mix-up shows. */
static void fill_nibbles(uint8_t qs[16])
{
    for (int j = 0; j < 16; j++)
        qs[j] = (uint8_t)(j | (15 - j) << 4);
}

TEST(quant_known_q4_q5_q8)
{
    /* Q4_0, d = 0.5 (0x3800): w = 0.5 * (q - 8). */
    block_q4_0 b40 = {.d = 0x3800};
    fill_nibbles(b40.qs);
    /* clang-format off */
    static const float w40[32] = {
        -4, -3.5, -3, -2.5, -2, -1.5, -1, -0.5, 0, 0.5, 1, 1.5, 2, 2.5, 3, 3.5,
        3.5, 3, 2.5, 2, 1.5, 1, 0.5, 0, -0.5, -1, -1.5, -2, -2.5, -3, -3.5, -4};
    /* clang-format on */
    check_block(KT_Q4_0, &b40, w40, 32);

    /* Q4_1, d = 0.25 (0x3400), m = -1 (0xBC00): w = 0.25 q - 1. */
    block_q4_1 b41 = {.d = 0x3400, .m = 0xBC00};
    fill_nibbles(b41.qs);
    /* clang-format off */
    static const float w41[32] = {
        -1, -0.75, -0.5, -0.25, 0, 0.25, 0.5, 0.75, 1, 1.25, 1.5, 1.75, 2, 2.25, 2.5, 2.75,
        2.75, 2.5, 2.25, 2, 1.75, 1.5, 1.25, 1, 0.75, 0.5, 0.25, 0, -0.25, -0.5, -0.75, -1};
    /* clang-format on */
    check_block(KT_Q4_1, &b41, w41, 32);

    /* Q5_0, d = 1 (0x3C00), qh = 0xAAAA0001 (little-endian bytes 01 00 AA AA):
     * bit 0 and the odd bits 17..31 set.  Codes: element 0 is 0 | 16;
     * elements 1..15 are j; element 16 + j is 15 - j, plus 16 for odd j.
     * w = q - 16. */
    block_q5_0 b50 = {.d = 0x3C00, .qh = {0x01, 0x00, 0xAA, 0xAA}};
    fill_nibbles(b50.qs);
    /* clang-format off */
    static const float w50[32] = {
        0, -15, -14, -13, -12, -11, -10, -9, -8, -7, -6, -5, -4, -3, -2, -1,
        -1, 14, -3, 12, -5, 10, -7, 8, -9, 6, -11, 4, -13, 2, -15, 0};
    /* clang-format on */
    check_block(KT_Q5_0, &b50, w50, 32);

    /* Q5_1, same codes, d = 0.5 (0x3800), m = 2 (0x4000): w = 0.5 q + 2. */
    block_q5_1 b51 = {.d = 0x3800, .m = 0x4000, .qh = {0x01, 0x00, 0xAA, 0xAA}};
    fill_nibbles(b51.qs);
    /* clang-format off */
    static const float w51[32] = {
        10, 2.5, 3, 3.5, 4, 4.5, 5, 5.5, 6, 6.5, 7, 7.5, 8, 8.5, 9, 9.5,
        9.5, 17, 8.5, 16, 7.5, 15, 6.5, 14, 5.5, 13, 4.5, 12, 3.5, 11, 2.5, 10};
    /* clang-format on */
    check_block(KT_Q5_1, &b51, w51, 32);

    /* Q8_0, d = -2 (0xC000), q[j] = j - 16 except q[0] = -128, q[31] = 127:
     * w = -2 q = 32 - 2j, w[0] = 256, w[31] = -254. */
    block_q8_0 b80 = {.d = 0xC000};
    float w80[32];
    for (int j = 0; j < 32; j++) {
        b80.qs[j] = (int8_t)(j - 16);
        w80[j] = (float)(32 - 2 * j);
    }
    b80.qs[0] = -128;
    b80.qs[31] = 127;
    w80[0] = 256;
    w80[31] = -254;
    check_block(KT_Q8_0, &b80, w80, 32);

    /* Q8_1, d = 0.125 (0x3000), q[j] = 3j - 50; s does not enter the values:
     * w = 0.125 (3j - 50), e.g. w[0] = -6.25, w[31] = 5.375. */
    block_q8_1 b81 = {.d = 0x3000, .s = 0x7BFF};
    float w81[32];
    for (int j = 0; j < 32; j++) {
        b81.qs[j] = (int8_t)(3 * j - 50);
        w81[j] = 0.125f * (float)(3 * j - 50);
    }
    CHECK(w81[0] == -6.25f && w81[31] == 5.375f);
    check_block(KT_Q8_1, &b81, w81, 32);
}

TEST(quant_known_float_types)
{
    static const uint16_t h[6] = {0x3C00, 0xC000, 0x7BFF, 0x0001, 0x8000, 0x3555};
    static const float wh[6] = {1, -2, 65504, 5.9604644775390625e-08f, -0.0f, 0.333251953125f};
    check_block(KT_F16, h, wh, 6);
    static const uint16_t b[4] = {0x3F80, 0xC040, 0x7F7F, 0x0001};
    static const float wb[4] = {1, -3, 3.38953138925153547590470800371487867e38f,
                                9.18354961579912115600575419704879436e-41f};
    check_block(KT_BF16, b, wb, 4);
    static const float f[3] = {1.5f, -0.0f, 1e-45f};
    check_block(KT_F32, f, f, 3);
}

/* 2-bit code bytes for the 2/3-bit k-quants: 0xE4 holds codes 0,1,2,3 at
 * bit pairs 0..3, 0x1B holds 3,2,1,0.  With even l -> 0xE4, odd l -> 0x1B,
 * element 32k + l of a half has code k (l even) or 3 - k (l odd). */
static void fill_2bit(uint8_t qs[64])
{
    for (int b = 0; b < 64; b++)
        qs[b] = (b % 32) % 2 == 0 ? 0xE4 : 0x1B;
}

static int code_2bit(int e)
{
    int k = e % 128 / 32, l = e % 32;
    return l % 2 == 0 ? k : 3 - k;
}

TEST(quant_known_q2_K)
{
    /* d = 0.5, dmin = 0.25, scales[s] = s | (15 - s) << 4:
     * w[e] = 0.5 * s * code - 0.25 * (15 - s), s = e / 16. */
    block_q2_K b = {.d = 0x3800, .dmin = 0x3400};
    for (int s = 0; s < 16; s++)
        b.scales[s] = (uint8_t)(s | (15 - s) << 4);
    fill_2bit(b.qs);
    float w[QK_K];
    for (int e = 0; e < QK_K; e++)
        w[e] = 0.5f * (float)(e / 16) * (float)code_2bit(e) - 0.25f * (float)(15 - e / 16);
    /* by hand: e=0: -0.25*15; e=33: s=2, code 2: 2 - 3.25; e=130: s=8, code 0;
     * e=161: s=10, code 2: 10 - 1.25; e=200: s=12, code 2: 12 - 0.75; e=255: 0 */
    CHECK(w[0] == -3.75f && w[33] == -1.25f && w[130] == -1.75f && w[161] == 8.75f &&
          w[200] == 11.25f && w[255] == 0.0f);
    check_block(KT_Q2_K, &b, w, QK_K);
}

TEST(quant_known_q3_K)
{
    /* d = 0.5; biased scales 4s + 3 (s = 0..15), i.e. scale 4s - 29:
     * low nibbles 3,7,11,15 repeating, high bit pairs s / 4, so bytes 0..7
     * are 33 77 BB FF 33 77 BB FF and bytes 8..11 are all 0xE4.
     * hmask[l] = 0xFF for l < 16, 0x0F after: elements with e >= 128 and
     * e % 32 >= 16 have their bit clear and take code - 4.
     * w[e] = 0.5 * (4s - 29) * (code - 4 * !bit). */
    block_q3_K b = {
        .d = 0x3800,
        .scales = {0x33, 0x77, 0xBB, 0xFF, 0x33, 0x77, 0xBB, 0xFF, 0xE4, 0xE4, 0xE4, 0xE4}};
    for (int l = 0; l < 32; l++)
        b.hmask[l] = l < 16 ? 0xFF : 0x0F;
    fill_2bit(b.qs);
    for (int s = 0; s < 16; s++)
        CHECK_EQ(kern_q3_K_scale(s, b.scales), 4 * s - 29);
    float w[QK_K];
    for (int e = 0; e < QK_K; e++) {
        int q = code_2bit(e) - (e >= 128 && e % 32 >= 16 ? 4 : 0);
        w[e] = 0.5f * (float)(4 * (e / 16) - 29) * (float)q;
    }
    /* by hand: e=1: -29 * 3 / 2; e=48: -17 * 1 / 2; e=141: 3 * 3 / 2;
     * e=150: 7 * (0 - 4) / 2; e=200: 19 * 2 / 2; e=255: 31 * (0 - 4) / 2 */
    CHECK(w[1] == -43.5f && w[48] == -8.5f && w[141] == 4.5f && w[150] == -14.0f &&
          w[200] == 19.0f && w[255] == -62.0f);
    check_block(KT_Q3_K, &b, w, QK_K);
}

/* Q4_K/Q5_K scales sc = {1,2,3,63,10,20,33,63}, mins m = {0,5,7,9,40,50,63,1}
 * packed by hand: bytes 0..3 = sc[0..3] | (sc[4..7] >> 4) << 6,
 * bytes 4..7 = m[0..3] | (m[4..7] >> 4) << 6, bytes 8..11 = (sc[4..7] & 15) |
 * (m[4..7] & 15) << 4. */
static const uint8_t k4_scales[12] = {0x01, 0x42, 0x83, 0xFF, 0x80, 0xC5,
                                      0xC7, 0x09, 0x8A, 0x24, 0xF1, 0x1F};
static const int k4_sc[8] = {1, 2, 3, 63, 10, 20, 33, 63};
static const int k4_m[8] = {0, 5, 7, 9, 40, 50, 63, 1};

/* qs[32c + l]: low nibble (l + c) & 15, high nibble 15 - (l & 15). */
static void fill_k4_nibbles(uint8_t qs[128])
{
    for (int c = 0; c < 4; c++)
        for (int l = 0; l < 32; l++)
            qs[32 * c + l] = (uint8_t)(((l + c) & 15) | (15 - (l & 15)) << 4);
}

static int code_k4(int e)
{
    int c = e / 64, hi = e % 64 / 32, l = e % 32;
    return hi ? 15 - (l & 15) : (l + c) & 15;
}

TEST(quant_known_q4_K)
{
    block_q4_K b = {.d = 0x3800, .dmin = 0x3C00}; /* d = 0.5, dmin = 1 */
    memcpy(b.scales, k4_scales, 12);
    fill_k4_nibbles(b.qs);
    for (int j = 0; j < 8; j++) {
        uint8_t sc, m;
        kern_q4_K_scale_min(j, b.scales, &sc, &m);
        CHECK_EQ(sc, k4_sc[j]);
        CHECK_EQ(m, k4_m[j]);
    }
    /* w[e] = 0.5 * sc[e/32] * code - m[e/32] */
    float w[QK_K];
    for (int e = 0; e < QK_K; e++)
        w[e] = 0.5f * (float)k4_sc[e / 32] * (float)code_k4(e) - (float)k4_m[e / 32];
    /* by hand: e=5: 0.5*1*5; e=40: 0.5*2*7 - 5; e=100: 0.5*63*11 - 9;
     * e=130: 0.5*10*4 - 40; e=180: 0.5*20*11 - 50; e=200: 0.5*33*11 - 63; e=255: -1 */
    CHECK(w[5] == 2.5f && w[40] == 2.0f && w[100] == 337.5f && w[130] == -20.0f &&
          w[180] == 60.0f && w[200] == 118.5f && w[255] == -1.0f);
    check_block(KT_Q4_K, &b, w, QK_K);
}

TEST(quant_known_q5_K)
{
    /* As Q4_K plus qh[l] = 0xA5 (bits 0,2,5,7) for l < 16, 0x5A (bits
     * 1,3,4,6) after; element e takes bit 2 * (e / 64) + (e % 64 / 32). */
    block_q5_K b = {.d = 0x3800, .dmin = 0x3C00};
    memcpy(b.scales, k4_scales, 12);
    fill_k4_nibbles(b.qs);
    for (int l = 0; l < 32; l++)
        b.qh[l] = l < 16 ? 0xA5 : 0x5A;
    float w[QK_K];
    for (int e = 0; e < QK_K; e++) {
        int bit = (e % 32 < 16 ? 0xA5 : 0x5A) >> (2 * (e / 64) + e % 64 / 32) & 1;
        w[e] = 0.5f * (float)k4_sc[e / 32] * (float)(code_k4(e) + 16 * bit) - (float)k4_m[e / 32];
    }
    /* by hand: e=0: code 0 + 16 -> 0.5*1*16; e=52: 11 + 16 -> 0.5*2*27 - 5;
     * e=150: 8 + 16 -> 0.5*10*24 - 40; e=229: 10 + 16 -> 0.5*63*26 - 1;
     * e=100: bit clear -> 337.5 as in Q4_K */
    CHECK(w[0] == 8.0f && w[52] == 22.0f && w[150] == 80.0f && w[229] == 818.0f &&
          w[100] == 337.5f);
    check_block(KT_Q5_K, &b, w, QK_K);
}

TEST(quant_known_q6_K)
{
    /* d = 0.25, scales[s] = 16 s - 128, ql[i] = i, qh[i] = 0xE4 (top bits of
     * the four quarter-elements are 0,1,2,3).  Element e = 128h + 32k + l:
     * nibble = ql[64h + 32(k & 1) + l] >> 4(k >> 1), code = nibble | k << 4,
     * w = 0.25 * scale[e/16] * (code - 32). */
    block_q6_K b = {.d = 0x3400};
    for (int i = 0; i < 128; i++)
        b.ql[i] = (uint8_t)i;
    memset(b.qh, 0xE4, sizeof b.qh);
    for (int s = 0; s < 16; s++)
        b.scales[s] = (int8_t)(16 * s - 128);
    float w[QK_K];
    for (int e = 0; e < QK_K; e++) {
        int h = e / 128, k = e % 128 / 32, l = e % 32;
        int nib = (64 * h + 32 * (k & 1) + l) >> (4 * (k >> 1)) & 15;
        w[e] = 0.25f * (float)(16 * (e / 16) - 128) * (float)((nib | k << 4) - 32);
    }
    /* by hand: e=0: -128 * -32 / 4; e=37: ql[37] & 15 = 5, code 21, scale -96;
     * e=70: ql[6] >> 4 = 0, code 32 -> 0; e=100: ql[36] >> 4 = 2, code 50,
     * scale -32; e=150: ql[86] & 15 = 6, code 6, scale 16; e=200: ql[72] >> 4
     * = 4, code 36, scale 64; e=255: ql[127] >> 4 = 7, code 55, scale 112 */
    CHECK(w[0] == 1024.0f && w[37] == 264.0f && w[70] == 0.0f && w[100] == -144.0f &&
          w[150] == -104.0f && w[200] == 64.0f && w[255] == 644.0f);
    check_block(KT_Q6_K, &b, w, QK_K);
}

TEST(quant_known_q8_K)
{
    /* d = 0.5 (a float here), q[e] = e - 128: w = 0.5 (e - 128), -64 .. 63.5 */
    block_q8_K b = {.d = 0.5f};
    float w[QK_K];
    for (int e = 0; e < QK_K; e++) {
        b.qs[e] = (int8_t)(e - 128);
        w[e] = 0.5f * (float)(e - 128);
    }
    CHECK(w[0] == -64.0f && w[255] == 63.5f);
    check_block(KT_Q8_K, &b, w, QK_K);
}

/* ---- quantize ------------------------------------------------------------ */

static const uint32_t all_types[] = {KT_F32,  KT_F16,  KT_BF16, KT_Q4_0, KT_Q4_1,
                                     KT_Q5_0, KT_Q5_1, KT_Q8_0, KT_Q8_1, KT_Q2_K,
                                     KT_Q3_K, KT_Q4_K, KT_Q5_K, KT_Q6_K, KT_Q8_K};

/*
 * Relative RMS error sqrt(sum (x - dq(q(x)))^2 / sum x^2) on Gaussian rows.
 * Measured while writing this (7 sigmas from 0.005 to 300, 20 x 4096
 * elements each; worst row):
 *   F16 0.00021  BF16 0.0017  Q8_0 0.0056  Q8_1 0.0055  Q8_K 0.0074
 *   Q6_K 0.0186  Q5_1 0.039   Q5_K 0.038   Q5_0 0.045   Q4_K 0.074
 *   Q4_1 0.081   Q4_0 0.090   Q3_K 0.159   Q2_K 0.308
 * These match the step size of each format: 4 bits with a min over a
 * 32-element Gaussian range of ~4.2 sigma give 4.2 / 15 / sqrt(12) = 8%.
 * Bounds below are the worst measured plus ~10-20% for small-row noise.
 */
static const struct {
    uint32_t t;
    double bound;
} rms_bounds[] = {
    {KT_F32, 0.0},     {KT_F16, 0.0003}, {KT_BF16, 0.002}, {KT_Q8_0, 0.0065}, {KT_Q8_1, 0.0065},
    {KT_Q8_K, 0.0085}, {KT_Q6_K, 0.021}, {KT_Q5_1, 0.044}, {KT_Q5_K, 0.043},  {KT_Q5_0, 0.050},
    {KT_Q4_K, 0.082},  {KT_Q4_1, 0.090}, {KT_Q4_0, 0.100}, {KT_Q3_K, 0.175},  {KT_Q2_K, 0.34},
};

TEST(quant_roundtrip_error)
{
    /* 7 rows (odd) of 768 = 3 super-blocks, one sigma per row. */
    enum { ROWS = 7, N = 768 };
    static const double sigma[ROWS] = {1.0, 0.02, 7.0, 0.1, 300.0, 0.005, 1.0};
    float *x = malloc(sizeof(float) * ROWS * N), *y = malloc(sizeof(float) * ROWS * N);
    uint8_t *q = malloc(sizeof(float) * ROWS * N);
    REQUIRE(x && y && q);
    uint64_t s = 0x9E3779B97F4A7C15ull;
    for (size_t k = 0; k < sizeof rms_bounds / sizeof rms_bounds[0]; k++) {
        uint32_t t = rms_bounds[k].t;
        size_t rs = kern_row_size(t, N);
        for (int r = 0; r < ROWS; r++)
            for (int i = 0; i < N; i++)
                x[r * N + i] = (float)(sigma[r] * rng_gauss(&s));
        for (int r = 0; r < ROWS; r++)
            CHECK(kern_quant_row_ref(t, x + r * N, q + r * rs, N) == 0);
        /* a whole matrix at once must equal row by row */
        REQUIRE(kern_dequant_row_ref(t, q, y, (int64_t)ROWS * N) == 0);
        double worst = 0.0;
        for (int r = 0; r < ROWS; r++) {
            double e2 = 0.0, x2 = 0.0;
            for (int i = 0; i < N; i++) {
                double d = (double)x[r * N + i] - (double)y[r * N + i];
                e2 += d * d;
                x2 += (double)x[r * N + i] * x[r * N + i];
            }
            worst = fmax(worst, sqrt(e2 / x2));
        }
        CHECK_MSG(worst <= rms_bounds[k].bound, "%s: relative RMS error %.5f > %.5f",
                  kern_type_name(t), worst, rms_bounds[k].bound);
    }
    free(x);
    free(y);
    free(q);
}

TEST(quant_zero_and_constant_rows)
{
    enum { N = 512 };
    float x[N], y[N];
    uint8_t q[N * 4];
    for (size_t k = 0; k < sizeof all_types / sizeof all_types[0]; k++) {
        uint32_t t = all_types[k];
        memset(x, 0, sizeof x);
        REQUIRE(kern_quant_row_ref(t, x, q, N) == 0);
        REQUIRE(kern_dequant_row_ref(t, q, y, N) == 0);
        for (int i = 0; i < N; i++)
            CHECK_MSG(y[i] == 0.0f, "%s zero row: y[%d] = %g", kern_type_name(t), i, (double)y[i]);
        /* Constant rows come back within the format's scale precision:
         * fp16 d (2^-11) times a 6-bit scale step for the k-quants; bf16
         * has 2^-8. */
        static const float cs[] = {1.0f, -1.0f, 0.37f, -1234.5f};
        for (size_t c = 0; c < sizeof cs / sizeof cs[0]; c++) {
            for (int i = 0; i < N; i++)
                x[i] = cs[c];
            REQUIRE(kern_quant_row_ref(t, x, q, N) == 0);
            REQUIRE(kern_dequant_row_ref(t, q, y, N) == 0);
            double tol = fabs(cs[c]) * (t == KT_BF16 ? 0.004 : 0.02);
            for (int i = 0; i < N; i++)
                CHECK_MSG(fabs(y[i] - cs[c]) <= tol, "%s constant %g: y[%d] = %.9g",
                          kern_type_name(t), (double)cs[c], i, (double)y[i]);
        }
    }
}

TEST(quant_q8_K_bsums_and_q8_1_s)
{
    enum { N = 1024 };
    float x[N];
    block_q8_K qk[N / QK_K];
    block_q8_1 q1[N / 32];
    uint64_t s = 777;
    for (int i = 0; i < N; i++)
        x[i] = (float)rng_gauss(&s) * (i < 512 ? 1.0f : 0.001f);
    REQUIRE(kern_quant_row_ref(KT_Q8_K, x, qk, N) == 0);
    for (int b = 0; b < N / QK_K; b++) {
        int maxq = 0;
        for (int j = 0; j < QK_K / 16; j++) {
            int sum = 0;
            for (int l = 0; l < 16; l++)
                sum += qk[b].qs[16 * j + l];
            CHECK_EQ(qk[b].bsums[j], sum);
        }
        for (int e = 0; e < QK_K; e++)
            maxq = abs(qk[b].qs[e]) > maxq ? abs(qk[b].qs[e]) : maxq;
        CHECK_EQ(maxq, 127); /* the extreme element uses the full range */
    }
    /* Q8_1: s = f16(d * sum(q)) with the unrounded d, while the values use
     * f16(d); each rounding is at most 2^-11 relative, or 2^-25 absolute
     * where the half is subnormal (the 0.001-scaled blocks, d ~ 2e-5). */
    REQUIRE(kern_quant_row_ref(KT_Q8_1, x, q1, N) == 0);
    for (int b = 0; b < N / 32; b++) {
        int sum = 0;
        for (int j = 0; j < 32; j++)
            sum += q1[b].qs[j];
        double want = (double)kern_f16_to_f32(q1[b].d) * sum;
        CHECK_NEAR(kern_f16_to_f32(q1[b].s), want, fabs(want) * 0x1p-10 + 0x1p-25 * (1 + abs(sum)));
    }
}

/* ---- argument checks ----------------------------------------------------- */

TEST(quant_bad_arguments)
{
    float x[512] = {0}, y[512];
    uint8_t q[4096];
    /* n not a multiple of the block */
    static const struct {
        uint32_t t;
        int64_t n;
    } bad[] = {
        {KT_Q4_0, 33}, {KT_Q8_0, 16},  {KT_Q8_1, 31}, {KT_Q4_K, 128}, {KT_Q6_K, 257},
        {KT_Q8_K, 32}, {KT_Q2_K, 255}, {KT_F32, -1},  {KT_Q5_1, -32},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CHECK_EQ(kern_quant_row_ref(bad[i].t, x, q, bad[i].n), MOED_EINVAL);
        CHECK_EQ(kern_dequant_row_ref(bad[i].t, q, y, bad[i].n), MOED_EINVAL);
    }
    CHECK_EQ(kern_quant_row_ref(KT_F16, x, q, 7), 0);
    CHECK_EQ(kern_quant_row_ref(KT_Q4_K, x, q, 0), 0);
    /* types without a reference conversion, and numbers that are no type */
    static const uint32_t unsup[] = {KT_IQ2_XXS, KT_IQ4_NL, KT_IQ4_XS, KT_I8, KT_I32,   KT_F64,
                                     KT_TQ2_0,   KT_MXFP4,  4,         31,    KT_COUNT, 1000000};
    for (size_t i = 0; i < sizeof unsup / sizeof unsup[0]; i++) {
        CHECK_EQ(kern_quant_row_ref(unsup[i], x, q, 256), MOED_EUNSUPPORTED);
        CHECK_EQ(kern_dequant_row_ref(unsup[i], q, y, 256), MOED_EUNSUPPORTED);
        CHECK_EQ(kern_dequant_row_ref(unsup[i], q, y, 3), MOED_EUNSUPPORTED);
    }
}
