/*
 * Cross-check against llama.cpp's own decoder: FNV-1a hashes of the output
 * of gguf-py 0.19.0 (PyPI "gguf", gguf.quants.dequantize / quantize, the
 * numpy port of ggml's reference code) on the deterministic inputs built
 * below.  Dequantization is pinned for every GGUF file type the reference
 * reads, on random raw blocks (f16 fields made finite); quantization for
 * the types gguf-py quantizes (F16 via numpy's astype, BF16, Q4_0 .. Q8_0),
 * where our reference is byte-identical to ggml's.  The k-quant quantizers
 * have no such oracle (gguf-py does not implement them); their contract is
 * the error bounds in test_quant.c.
 *
 * To regenerate: write the rows built here to files, run gguf-py on them,
 * hash float32 output / quantized bytes with the same FNV-1a.
 */
#include <stddef.h>

#include "kernels/cpu/quant.h"
#include "tests/unit/harness.h"

static uint64_t golden_rng(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* Offsets of the f16 fields of a block (-1: none). */
static void golden_f16_fields(uint32_t t, int off[2])
{
    off[0] = off[1] = -1;
    switch (t) {
    case KT_F16:
    case KT_Q4_0:
    case KT_Q5_0:
    case KT_Q8_0: off[0] = 0; break;
    case KT_Q4_1:
    case KT_Q5_1:
    case KT_Q4_K:
    case KT_Q5_K:
        off[0] = 0;
        off[1] = 2;
        break;
    case KT_Q2_K:
        off[0] = offsetof(block_q2_K, d);
        off[1] = offsetof(block_q2_K, dmin);
        break;
    case KT_Q3_K: off[0] = offsetof(block_q3_K, d); break;
    case KT_Q6_K: off[0] = offsetof(block_q6_K, d); break;
    }
}

/* Random bytes for a row of n elements of t, f16 fields made finite. */
static void golden_blocks(uint32_t t, uint8_t *q, int64_t n)
{
    uint64_t s = 0x5EED0000u + t;
    size_t bytes = kern_row_size(t, n), bs = kern_type_traits(t)->size;
    int off[2];
    for (size_t i = 0; i < bytes; i++)
        q[i] = (uint8_t)(golden_rng(&s) >> 32);
    golden_f16_fields(t, off);
    for (size_t b = 0; b < bytes / bs; b++)
        for (int k = 0; k < 2; k++)
            if (off[k] >= 0 && (q[b * bs + off[k] + 1] & 0x7C) == 0x7C)
                q[b * bs + off[k] + 1] &= 0xBF;
    if (t == KT_BF16)
        for (size_t i = 1; i < bytes; i += 2)
            if ((q[i] & 0x7F) == 0x7F && (q[i - 1] & 0x80))
                q[i] &= 0xBF;
}

/* x[i] = a 24-bit integer / 2^23 (exact in float), in [-1, 1). */
static void golden_row(float *x, int64_t n)
{
    uint64_t s = 0xC0FFEE;
    for (int64_t i = 0; i < n; i++)
        x[i] = (float)(int32_t)(golden_rng(&s) >> 40 & 0xFFFFFF) / 8388608.0f - 1.0f;
}

static uint64_t fnv1a(const void *p, size_t len)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < len; i++)
        h = (h ^ ((const uint8_t *)p)[i]) * 0x100000001b3ull;
    return h;
}

enum { GOLDEN_N = 1024 };

static const struct {
    uint32_t t;
    uint64_t dequant, quant;
} golden[] = {
    {KT_F16, 0xdff0b70ce25bf858ull, 0x7e5d85e2ffc88666ull},
    {KT_BF16, 0x1db36185e5cb938cull, 0xe47bcc63759f6125ull},
    {KT_Q4_0, 0x7bf2de8c096358b3ull, 0x414b21941e10e65aull},
    {KT_Q4_1, 0x1f0f2cc34e4448d2ull, 0x948c1adf7a2982deull},
    {KT_Q5_0, 0xaccefd06787580c6ull, 0x5d085804266e7d9aull},
    {KT_Q5_1, 0x547975d318c2139cull, 0xaa4e12602e894724ull},
    {KT_Q8_0, 0xd4a8e6110a3765fdull, 0x89c8def1030c96f1ull},
    {KT_Q2_K, 0x7e20433b70a05d26ull, 0},
    {KT_Q3_K, 0x11e955596a26c4c1ull, 0},
    {KT_Q4_K, 0x41d831bef3ffff04ull, 0},
    {KT_Q5_K, 0x507690ebcb51ba00ull, 0},
    {KT_Q6_K, 0x54d25bd99315c5c1ull, 0},
};

TEST(quant_golden_gguf_py)
{
    static uint8_t q[GOLDEN_N * 4];
    static float x[GOLDEN_N], y[GOLDEN_N];
    golden_row(x, GOLDEN_N);
    for (size_t k = 0; k < sizeof golden / sizeof golden[0]; k++) {
        uint32_t t = golden[k].t;
        golden_blocks(t, q, GOLDEN_N);
        REQUIRE(kern_dequant_row_ref(t, q, y, GOLDEN_N) == 0);
        uint64_t h = fnv1a(y, sizeof y);
        CHECK_MSG(h == golden[k].dequant, "%s dequant hash %016llx, gguf-py %016llx",
                  kern_type_name(t), (unsigned long long)h, (unsigned long long)golden[k].dequant);
        if (!golden[k].quant)
            continue;
        REQUIRE(kern_quant_row_ref(t, x, q, GOLDEN_N) == 0);
        h = fnv1a(q, kern_row_size(t, GOLDEN_N));
        CHECK_MSG(h == golden[k].quant, "%s quant hash %016llx, gguf-py %016llx", kern_type_name(t),
                  (unsigned long long)h, (unsigned long long)golden[k].quant);
    }
}
