// Device-side decoding of GGUF weight rows (kc_matmul.cu, kc_moe_ffn.cu).
//
// Every supported type is cut into "slices": a slice is the part of one
// block that one thread loads and decodes at once, as NR runs of 4
// consecutive elements (so its activations load as float4).  Two families:
//
//   A: 32-element blocks (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0): 4 slices of 8
//      elements; slice j holds elements 4j..4j+3 and 16+4j..16+4j+3 (for the
//      4-bit formats that is exactly the low and high nibbles of qs[4j..4j+3]).
//      The float types (F32, F16, BF16) use pseudo-blocks of 8 elements: one
//      slice of two runs, elements 0..3 and 4..7.
//   K: 256-element super-blocks (Q2_K .. Q6_K): 16 slices of 16 elements;
//      slice j = 8h + s (h = 0, 1 the 128-element half, s = 0..7) holds runs
//      r = 0..3 at 128h + 32r + 4s.  For every k-quant that is one 32-bit
//      word of each packed array (qs/ql/qh/hmask) per run group, and the
//      16 slices of a half are interleaved word by word, so the 8 slices of
//      a half read consecutive words and consecutive activation float4s.
//
// Loads respect the block's alignment (block sizes 18, 20, 22, 34, 84, 110,
// 210 are not multiples of 16): assuming the matrix starts 16-byte aligned,
// a block starts at a multiple of gcd(16, block bytes), and each load below
// is no wider than that.  All weight loads go through the read-only cache.
//
// decode<EXACT>: EXACT=true reproduces kernels/cpu/quant_ref*.c bit for bit
// (same products and sums in the same order, each rounded, no FMA
// contraction), for kc_embed; EXACT=false lets d * q - m fuse into one FMA
// (matmul paths, where the result is summed anyway).
#ifndef MOED_KERNELS_KC_QUANT_CUH
#define MOED_KERNELS_KC_QUANT_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

extern "C" {
#include "kernels/cpu/types.h"
}

namespace kcq {

// ---- loads (read-only path) -------------------------------------------------

__device__ __forceinline__ uint32_t ld16(const uint8_t *p)
{
    return __ldg((const unsigned short *)p);
}
__device__ __forceinline__ uint32_t ld32(const uint8_t *p)
{
    return __ldg((const unsigned int *)p);
}
// 4 bytes at a 2-byte aligned address, little-endian
__device__ __forceinline__ uint32_t ld32_a2(const uint8_t *p)
{
    return ld16(p) | (ld16(p + 2) << 16);
}

// ---- small conversions --------------------------------------------------------

__device__ __forceinline__ float f16f(uint32_t h)
{
    return __half2float(__ushort_as_half((unsigned short)(h & 0xFFFFu)));
}
__device__ __forceinline__ float bf16f(uint32_t h)
{
    return __uint_as_float((h & 0xFFFFu) << 16);
}
// (float)(c - off) for an integer 0 <= c < 2^23 and a small off, exactly:
// 0x4B000000 | c is the float 2^23 + c, and the subtraction is exact.
__device__ __forceinline__ float u2f(uint32_t c, float off)
{
    return __uint_as_float(0x4B000000u | c) - (8388608.0f + off);
}
// (float)(byte b of w - off), exactly; b is a compile-time constant in use.
__device__ __forceinline__ float bytef(uint32_t w, int b, float off)
{
    return __uint_as_float(__byte_perm(w, 0x4B000000u, 0x7440u | (uint32_t)b)) -
           (8388608.0f + off);
}
// byte b of w (0..255)
__device__ __forceinline__ uint32_t byteu(uint32_t w, int b)
{
    return (w >> (8 * b)) & 0xFFu;
}

template <bool EX> __device__ __forceinline__ float mul(float a, float b)
{
    return EX ? __fmul_rn(a, b) : a * b;
}
// a * b + c: rounded twice when exact (as the C reference), one FMA otherwise
template <bool EX> __device__ __forceinline__ float mad(float a, float b, float c)
{
    return EX ? __fadd_rn(__fmul_rn(a, b), c) : fmaf(a, b, c);
}

// ---- families ---------------------------------------------------------------

struct FamA { // 32-element blocks
    static constexpr int BLK = 32, NS = 4, SE = 8, NR = 2;
    __device__ static __forceinline__ int off(int j, int r) { return 4 * j + 16 * r; }
};
struct FamF { // float pseudo-blocks of 8
    static constexpr int BLK = 8, NS = 1, SE = 8, NR = 2;
    __device__ static __forceinline__ int off(int j, int r) { return 4 * r + 0 * j; }
};
struct FamK { // 256-element super-blocks
    static constexpr int BLK = 256, NS = 16, SE = 16, NR = 4;
    __device__ static __forceinline__ int off(int j, int r)
    {
        return 128 * (j >> 3) + 32 * r + 4 * (j & 7);
    }
};

template <int TY> struct Q;

// ---- float types --------------------------------------------------------------

template <> struct Q<KT_F32> : FamF {
    static constexpr int BYTES = 32;
    struct Raw { float4 a, b; };
    __device__ static __forceinline__ void load(const uint8_t *blk, int, Raw &r)
    {
        r.a = __ldg((const float4 *)blk);
        r.b = __ldg((const float4 *)(blk + 16));
    }
    template <bool EX> __device__ static __forceinline__ void decode(const Raw &r, int, float *w)
    {
        w[0] = r.a.x; w[1] = r.a.y; w[2] = r.a.z; w[3] = r.a.w;
        w[4] = r.b.x; w[5] = r.b.y; w[6] = r.b.z; w[7] = r.b.w;
    }
};

template <> struct Q<KT_F16> : FamF {
    static constexpr int BYTES = 16;
    struct Raw { uint4 v; };
    __device__ static __forceinline__ void load(const uint8_t *blk, int, Raw &r)
    {
        r.v = __ldg((const uint4 *)blk);
    }
    template <bool EX> __device__ static __forceinline__ void decode(const Raw &r, int, float *w)
    {
        const uint32_t u[4] = {r.v.x, r.v.y, r.v.z, r.v.w};
#pragma unroll
        for (int k = 0; k < 4; k++) {
            w[2 * k] = f16f(u[k]);
            w[2 * k + 1] = f16f(u[k] >> 16);
        }
    }
};

template <> struct Q<KT_BF16> : FamF {
    static constexpr int BYTES = 16;
    struct Raw { uint4 v; };
    __device__ static __forceinline__ void load(const uint8_t *blk, int, Raw &r)
    {
        r.v = __ldg((const uint4 *)blk);
    }
    template <bool EX> __device__ static __forceinline__ void decode(const Raw &r, int, float *w)
    {
        const uint32_t u[4] = {r.v.x, r.v.y, r.v.z, r.v.w};
#pragma unroll
        for (int k = 0; k < 4; k++) {
            w[2 * k] = bf16f(u[k]);
            w[2 * k + 1] = bf16f(u[k] >> 16);
        }
    }
};

// ---- 32-element blocks --------------------------------------------------------
// Slice j: bytes qs[4j..4j+3]; element 4j+i is the low nibble of qs[4j+i]
// (or qs[4j+i] itself for Q8_0), element 16+4j+i the high nibble (Q8_0:
// qs[16+4j+i]).  w[i] and w[4+i].

// d @0, qs[16] @2; w = (q - 8) * d
template <> struct Q<KT_Q4_0> : FamA {
    static constexpr int BYTES = 18;
    struct Raw { uint32_t d, q; };
    __device__ static __forceinline__ void load(const uint8_t *blk, int j, Raw &r)
    {
        r.d = ld16(blk);
        r.q = ld32_a2(blk + 2 + 4 * j);
    }
    template <bool EX> __device__ static __forceinline__ void decode(const Raw &r, int, float *w)
    {
        const float d = f16f(r.d);
        const uint32_t lo = r.q & 0x0F0F0F0Fu, hi = (r.q >> 4) & 0x0F0F0F0Fu;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            w[i] = mul<EX>(bytef(lo, i, 8.0f), d);
            w[4 + i] = mul<EX>(bytef(hi, i, 8.0f), d);
        }
    }
};

// d @0, m @2, qs[16] @4; w = q * d + m
template <> struct Q<KT_Q4_1> : FamA {
    static constexpr int BYTES = 20;
    struct Raw { uint32_t dm, q; };
    __device__ static __forceinline__ void load(const uint8_t *blk, int j, Raw &r)
    {
        r.dm = ld32(blk);
        r.q = ld32(blk + 4 + 4 * j);
    }
    template <bool EX> __device__ static __forceinline__ void decode(const Raw &r, int, float *w)
    {
        const float d = f16f(r.dm), m = f16f(r.dm >> 16);
        const uint32_t lo = r.q & 0x0F0F0F0Fu, hi = (r.q >> 4) & 0x0F0F0F0Fu;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            w[i] = mad<EX>(bytef(lo, i, 0.0f), d, m);
            w[4 + i] = mad<EX>(bytef(hi, i, 0.0f), d, m);
        }
    }
};

// Fifth bits of a Q5 slice: element 4j+i takes bit 4j+i of qh, element
// 16+4j+i bit 16+4j+i; moved to bit 4 of byte i of the nibble words.
__device__ __forceinline__ uint32_t q5_spread(uint32_t bits4)
{
    // bits 0..3 -> bit 4 of bytes 0..3
    return ((bits4 & 1u) << 4) | ((bits4 & 2u) << 11) | ((bits4 & 4u) << 18) |
           ((bits4 & 8u) << 25);
}

// d @0, qh[4] @2, qs[16] @6; w = (q - 16) * d
template <> struct Q<KT_Q5_0> : FamA {
    static constexpr int BYTES = 22;
    struct Raw { uint32_t d, qh, q; };
    __device__ static __forceinline__ void load(const uint8_t *blk, int j, Raw &r)
    {
        r.d = ld16(blk);
        r.qh = ld32_a2(blk + 2);
        r.q = ld32_a2(blk + 6 + 4 * j);
    }
    template <bool EX> __device__ static __forceinline__ void decode(const Raw &r, int j, float *w)
    {
        const float d = f16f(r.d);
        const uint32_t lo = (r.q & 0x0F0F0F0Fu) | q5_spread((r.qh >> (4 * j)) & 0xFu);
        const uint32_t hi = ((r.q >> 4) & 0x0F0F0F0Fu) | q5_spread((r.qh >> (16 + 4 * j)) & 0xFu);
#pragma unroll
        for (int i = 0; i < 4; i++) {
            w[i] = mul<EX>(bytef(lo, i, 16.0f), d);
            w[4 + i] = mul<EX>(bytef(hi, i, 16.0f), d);
        }
    }
};

// d @0, m @2, qh[4] @4, qs[16] @8; w = q * d + m
template <> struct Q<KT_Q5_1> : FamA {
    static constexpr int BYTES = 24;
    struct Raw { uint2 h; uint32_t q; };
    __device__ static __forceinline__ void load(const uint8_t *blk, int j, Raw &r)
    {
        r.h = __ldg((const uint2 *)blk);
        r.q = ld32(blk + 8 + 4 * j);
    }
    template <bool EX> __device__ static __forceinline__ void decode(const Raw &r, int j, float *w)
    {
        const float d = f16f(r.h.x), m = f16f(r.h.x >> 16);
        const uint32_t qh = r.h.y;
        const uint32_t lo = (r.q & 0x0F0F0F0Fu) | q5_spread((qh >> (4 * j)) & 0xFu);
        const uint32_t hi = ((r.q >> 4) & 0x0F0F0F0Fu) | q5_spread((qh >> (16 + 4 * j)) & 0xFu);
#pragma unroll
        for (int i = 0; i < 4; i++) {
            w[i] = mad<EX>(bytef(lo, i, 0.0f), d, m);
            w[4 + i] = mad<EX>(bytef(hi, i, 0.0f), d, m);
        }
    }
};

// d @0, qs[32] (int8) @2; w = q * d.  Bytes ^ 0x80 are q + 128.
template <> struct Q<KT_Q8_0> : FamA {
    static constexpr int BYTES = 34;
    struct Raw { uint32_t d, q0, q1; };
    __device__ static __forceinline__ void load(const uint8_t *blk, int j, Raw &r)
    {
        r.d = ld16(blk);
        r.q0 = ld32_a2(blk + 2 + 4 * j);
        r.q1 = ld32_a2(blk + 18 + 4 * j);
    }
    template <bool EX> __device__ static __forceinline__ void decode(const Raw &r, int, float *w)
    {
        const float d = f16f(r.d);
        const uint32_t a = r.q0 ^ 0x80808080u, b = r.q1 ^ 0x80808080u;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            w[i] = mul<EX>(bytef(a, i, 128.0f), d);
            w[4 + i] = mul<EX>(bytef(b, i, 128.0f), d);
        }
    }
};

// ---- k-quants -----------------------------------------------------------------
// Slice j = 8h + s, runs r = 0..3: element e = 128h + 32r + 4s + i (w[4r+i]).

// scales[16] @0, qs[64] @16, d @80, dmin @82.
// q = qs[32h + l] >> 2r & 3 (l = 4s + i), sub-block 8h + 2r + (s >> 2):
// w = d * (sc & 15) * q - dmin * (sc >> 4)
template <> struct Q<KT_Q2_K> : FamK {
    static constexpr int BYTES = 84;
    struct Raw { uint32_t q, s0, s1, dd; };
    __device__ static __forceinline__ void load(const uint8_t *blk, int j, Raw &r)
    {
        const int h = j >> 3, s = j & 7;
        r.q = ld32(blk + 16 + 32 * h + 4 * s);
        r.s0 = ld32(blk + 8 * h);     // scales[8h .. 8h+3]
        r.s1 = ld32(blk + 8 * h + 4); // scales[8h+4 .. 8h+7]
        r.dd = ld32(blk + 80);
    }
    template <bool EX> __device__ static __forceinline__ void decode(const Raw &r, int j, float *w)
    {
        const int p = (j & 7) >> 2;
        const float d = f16f(r.dd), dmin = f16f(r.dd >> 16);
#pragma unroll
        for (int k = 0; k < 4; k++) {
            // scale byte 8h + 2k + p: byte 2(k&1) + p of s0 (k < 2) or s1
            const uint32_t sc = ((k < 2 ? r.s0 : r.s1) >> (8 * (2 * (k & 1) + p))) & 0xFFu;
            const float dl = mul<EX>(d, u2f(sc & 0xFu, 0.0f));
            const float ml = mul<EX>(dmin, u2f(sc >> 4, 0.0f));
#pragma unroll
            for (int i = 0; i < 4; i++)
                w[4 * k + i] = mad<EX>(dl, u2f((r.q >> (8 * i + 2 * k)) & 3u, 0.0f), -ml);
        }
    }
};

// hmask[32] @0, qs[64] @32, scales[12] @96, d @108.
// q = (qs[32h + l] >> 2r & 3) - (hmask[l] bit 4h + r ? 0 : 4);
// scale J = 8h + 2r + (s >> 2): low 4 bits in nibble h of scales[2r + p],
// high 2 bits at 2 * (2h + (r >> 1)) of scales[8 + 2(r&1) + p]; minus 32.
template <> struct Q<KT_Q3_K> : FamK {
    static constexpr int BYTES = 110;
    struct Raw { uint32_t q, hm, s0, s1, s2, d; };
    __device__ static __forceinline__ void load(const uint8_t *blk, int j, Raw &r)
    {
        const int h = j >> 3, s = j & 7;
        r.q = ld32_a2(blk + 32 + 32 * h + 4 * s);
        r.hm = ld32_a2(blk + 4 * s);
        r.s0 = ld32_a2(blk + 96);
        r.s1 = ld32_a2(blk + 100);
        r.s2 = ld32_a2(blk + 104);
        r.d = ld16(blk + 108);
    }
    template <bool EX> __device__ static __forceinline__ void decode(const Raw &r, int j, float *w)
    {
        const int h = j >> 3, p = (j & 7) >> 2;
        const float d = f16f(r.d);
#pragma unroll
        for (int k = 0; k < 4; k++) {
            const int b = 2 * (k & 1) + p; // byte of s0/s1 (scales[2k+p]) and of s2
            const uint32_t lo = ((k < 2 ? r.s0 : r.s1) >> (8 * b + 4 * h)) & 0xFu;
            const uint32_t hi = (r.s2 >> (8 * b + 2 * (2 * h + (k >> 1)))) & 3u;
            const float dl = mul<EX>(d, u2f(lo | (hi << 4), 32.0f));
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const uint32_t q2 = (r.q >> (8 * i + 2 * k)) & 3u;
                const uint32_t hb = (r.hm >> (8 * i + 4 * h + k)) & 1u;
                w[4 * k + i] = mul<EX>(dl, u2f(q2 | (hb << 2), 4.0f));
            }
        }
    }
};

// Q4_K/Q5_K six-bit scales and mins of the four sub-blocks 4h..4h+3 of
// half h, one per byte (kern_q4_K_scale_min), from the 12 scale bytes
// packed as words w0 (bytes 0..3), w1 (4..7), w2 (8..11).
__device__ __forceinline__ void k4_scales(uint32_t w0, uint32_t w1, uint32_t w2, int h,
                                          uint32_t &sc, uint32_t &mn)
{
    if (h == 0) {
        sc = w0 & 0x3F3F3F3Fu;
        mn = w1 & 0x3F3F3F3Fu;
    } else {
        sc = (w2 & 0x0F0F0F0Fu) | ((w0 >> 2) & 0x30303030u);
        mn = ((w2 >> 4) & 0x0F0F0F0Fu) | ((w1 >> 2) & 0x30303030u);
    }
}

// d @0, dmin @2, scales[12] @4, qs[128] @16 (blocks 16-byte aligned).
// Run r of half h: chunk c = 2h + (r >> 1), nibble r & 1 of
// qs[32c + l]; sub-block 4h + r.  w = d * sc * q - dmin * m
template <> struct Q<KT_Q4_K> : FamK {
    static constexpr int BYTES = 144;
    struct Raw { uint4 hd; uint32_t q0, q1; };
    __device__ static __forceinline__ void load(const uint8_t *blk, int j, Raw &r)
    {
        const int h = j >> 3, s = j & 7;
        r.hd = __ldg((const uint4 *)blk);
        r.q0 = ld32(blk + 16 + 64 * h + 4 * s);      // chunk 2h
        r.q1 = ld32(blk + 16 + 64 * h + 32 + 4 * s); // chunk 2h + 1
    }
    template <bool EX> __device__ static __forceinline__ void decode(const Raw &r, int j, float *w)
    {
        const int h = j >> 3;
        const float d = f16f(r.hd.x), dmin = f16f(r.hd.x >> 16);
        uint32_t sc, mn;
        k4_scales(r.hd.y, r.hd.z, r.hd.w, h, sc, mn);
        const uint32_t n0 = r.q0 & 0x0F0F0F0Fu, n1 = (r.q0 >> 4) & 0x0F0F0F0Fu;
        const uint32_t n2 = r.q1 & 0x0F0F0F0Fu, n3 = (r.q1 >> 4) & 0x0F0F0F0Fu;
        const uint32_t nib[4] = {n0, n1, n2, n3};
#pragma unroll
        for (int k = 0; k < 4; k++) {
            const float d1 = mul<EX>(d, bytef(sc, k, 0.0f));
            const float m1 = mul<EX>(dmin, bytef(mn, k, 0.0f));
#pragma unroll
            for (int i = 0; i < 4; i++)
                w[4 * k + i] = mad<EX>(d1, bytef(nib[k], i, 0.0f), -m1);
        }
    }
};

// d @0, dmin @2, scales[12] @4, qh[32] @16, qs[128] @48 (16-byte aligned).
// As Q4_K with a fifth bit: bit 4h + r of qh[l].
template <> struct Q<KT_Q5_K> : FamK {
    static constexpr int BYTES = 176;
    struct Raw { uint4 hd; uint32_t qh, q0, q1; };
    __device__ static __forceinline__ void load(const uint8_t *blk, int j, Raw &r)
    {
        const int h = j >> 3, s = j & 7;
        r.hd = __ldg((const uint4 *)blk);
        r.qh = ld32(blk + 16 + 4 * s);
        r.q0 = ld32(blk + 48 + 64 * h + 4 * s);
        r.q1 = ld32(blk + 48 + 64 * h + 32 + 4 * s);
    }
    template <bool EX> __device__ static __forceinline__ void decode(const Raw &r, int j, float *w)
    {
        const int h = j >> 3;
        const float d = f16f(r.hd.x), dmin = f16f(r.hd.x >> 16);
        uint32_t sc, mn;
        k4_scales(r.hd.y, r.hd.z, r.hd.w, h, sc, mn);
        const uint32_t nib[4] = {r.q0 & 0x0F0F0F0Fu, (r.q0 >> 4) & 0x0F0F0F0Fu,
                                 r.q1 & 0x0F0F0F0Fu, (r.q1 >> 4) & 0x0F0F0F0Fu};
#pragma unroll
        for (int k = 0; k < 4; k++) {
            // bit 4h + k of each byte of qh, moved to bit 4
            const uint32_t fifth = ((r.qh >> (4 * h + k)) & 0x01010101u) << 4;
            const uint32_t code = nib[k] | fifth;
            const float d1 = mul<EX>(d, bytef(sc, k, 0.0f));
            const float m1 = mul<EX>(dmin, bytef(mn, k, 0.0f));
#pragma unroll
            for (int i = 0; i < 4; i++)
                w[4 * k + i] = mad<EX>(d1, bytef(code, i, 0.0f), -m1);
        }
    }
};

// ql[128] @0, qh[64] @128, scales[16] (int8) @192, d @208.
// Run r of half h: low 4 bits = nibble (r >> 1) of ql[64h + 32(r&1) + l],
// high 2 bits = bits 2r of qh[32h + l]; q = code - 32;
// scale scales[8h + 2r + (s >> 2)]; w = d * scale * q.
template <> struct Q<KT_Q6_K> : FamK {
    static constexpr int BYTES = 210;
    struct Raw { uint32_t l0, l1, qh, sa, sb, d; };
    __device__ static __forceinline__ void load(const uint8_t *blk, int j, Raw &r)
    {
        const int h = j >> 3, s = j & 7;
        r.l0 = ld32_a2(blk + 64 * h + 4 * s);
        r.l1 = ld32_a2(blk + 64 * h + 32 + 4 * s);
        r.qh = ld32_a2(blk + 128 + 32 * h + 4 * s);
        r.sa = ld32_a2(blk + 192 + 8 * h);     // scales[8h .. 8h+3]
        r.sb = ld32_a2(blk + 192 + 8 * h + 4); // scales[8h+4 .. 8h+7]
        r.d = ld16(blk + 208);
    }
    template <bool EX> __device__ static __forceinline__ void decode(const Raw &r, int j, float *w)
    {
        const int p = (j & 7) >> 2;
        const float d = f16f(r.d);
#pragma unroll
        for (int k = 0; k < 4; k++) {
            const uint32_t lw = (k & 1) ? r.l1 : r.l0;
            const uint32_t lo = (lw >> (4 * (k >> 1))) & 0x0F0F0F0Fu;
            const uint32_t hi = ((r.qh >> (2 * k)) & 0x03030303u) << 4;
            const uint32_t code = lo | hi;
            // int8 scale: (byte ^ 0x80) - 128
            const uint32_t sc = (k < 2 ? r.sa : r.sb) >> (8 * (2 * (k & 1) + p));
            const float ds = mul<EX>(d, u2f((sc & 0xFFu) ^ 0x80u, 128.0f));
#pragma unroll
            for (int i = 0; i < 4; i++)
                w[4 * k + i] = mul<EX>(ds, bytef(code, i, 32.0f));
        }
    }
};

} // namespace kcq

#endif
