/*
 * Hostile GGUF files: each case builds a file byte by byte (or damages a
 * valid one) and checks that the reader refuses it with a message that
 * names the problem; a substring of the message is checked so that a case
 * cannot pass by failing for another reason.  Every parse runs on an
 * exact-size heap copy, so under ASan a read one byte past the end fails.
 * The sweeps at the end cut a valid file at every length and flip every
 * byte: no crash, and every refusal has a one-line message.
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "model/gguf.h"
#include "tests/unit/harness.h"

/* ---- a byte builder ---------------------------------------------------------- */

struct bb {
    uint8_t *p;
    size_t n, cap;
};

static void bb_put(struct bb *b, const void *d, size_t n)
{
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n)
            cap *= 2;
        b->p = realloc(b->p, cap);
        if (!b->p)
            abort();
        b->cap = cap;
    }
    memcpy(b->p + b->n, d, n);
    b->n += n;
}

static void bb_u8(struct bb *b, uint8_t v) { bb_put(b, &v, 1); }
static void bb_u32(struct bb *b, uint32_t v) { bb_put(b, &v, 4); }
static void bb_u64(struct bb *b, uint64_t v) { bb_put(b, &v, 8); }
static void bb_str(struct bb *b, const char *s)
{
    bb_u64(b, strlen(s));
    bb_put(b, s, strlen(s));
}
static void bb_hdr(struct bb *b, uint32_t version, uint64_t n_tensors, uint64_t n_kv)
{
    b->n = 0;
    bb_put(b, "GGUF", 4);
    bb_u32(b, version);
    bb_u64(b, n_tensors);
    bb_u64(b, n_kv);
}
static void bb_kv_u32(struct bb *b, const char *key, uint32_t v)
{
    bb_str(b, key);
    bb_u32(b, GGUF_U32);
    bb_u32(b, v);
}
static void bb_tensor(struct bb *b, const char *name, uint32_t n_dims, const uint64_t *ne,
                      uint32_t type, uint64_t offset)
{
    bb_str(b, name);
    bb_u32(b, n_dims);
    for (uint32_t d = 0; d < n_dims; d++)
        bb_u64(b, ne[d]);
    bb_u32(b, type);
    bb_u64(b, offset);
}
static void bb_pad(struct bb *b, size_t align, size_t data_bytes)
{
    while (b->n % align)
        bb_u8(b, 0);
    for (size_t i = 0; i < data_bytes; i++)
        bb_u8(b, (uint8_t)i);
}

static int n_cases;

/* Parses an exact-size copy of buf[0..n); the file must be refused with a
 * one-line message containing sub. */
static void check_bad(const char *file, int line, const void *buf, size_t n, const char *sub)
{
    n_cases++;
    uint8_t *copy = malloc(n ? n : 1);
    if (n)
        memcpy(copy, buf, n);
    struct gguf g;
    struct moed_err e = {0};
    int rc = gguf_open_mem(&g, copy, n, &e);
    if (rc == 0) {
        test_fail(file, line, "corrupt file accepted (wanted an error with '%s')", sub);
        gguf_close(&g);
    } else {
        if (rc != MOED_EFORMAT && rc != MOED_EUNSUPPORTED)
            test_fail(file, line, "code %s, wanted EFORMAT (%s)", moed_strerror(rc), e.msg);
        if (!strstr(e.msg, sub))
            test_fail(file, line, "message '%s' lacks '%s'", e.msg, sub);
        if (strchr(e.msg, '\n'))
            test_fail(file, line, "message has a newline: '%s'", e.msg);
        if (g.kv || g.tensors || g.priv || g.n_kv || g.n_tensors)
            test_fail(file, line, "struct not left closed after an error");
    }
    free(copy);
}
#define BAD(b, sub) check_bad(__FILE__, __LINE__, (b)->p, (b)->n, sub)
#define BAD_N(b, n, sub) check_bad(__FILE__, __LINE__, (b)->p, (n), sub)

static void check_good(const char *file, int line, const void *buf, size_t n)
{
    uint8_t *copy = malloc(n ? n : 1);
    memcpy(copy, buf, n);
    struct gguf g;
    struct moed_err e = {0};
    if (gguf_open_mem(&g, copy, n, &e) != 0)
        test_fail(file, line, "valid file refused: %s", e.msg);
    else
        gguf_close(&g);
    free(copy);
}
#define GOOD(b) check_good(__FILE__, __LINE__, (b)->p, (b)->n)

/* ---- header ---------------------------------------------------------------------- */

TEST(gguf_corrupt_header)
{
    struct bb b = {0};
    bb_hdr(&b, 3, 0, 0);
    GOOD(&b);
    BAD_N(&b, 0, "truncated: magic at offset 0 needs 4 bytes, file has 0 left");
    BAD_N(&b, 2, "truncated: magic");
    BAD_N(&b, 6, "truncated: version at offset 4");
    BAD_N(&b, 12, "truncated: tensor count at offset 8");
    BAD_N(&b, 20, "truncated: metadata count at offset 16");

    memcpy(b.p, "GGUX", 4);
    BAD(&b, "not a GGUF file: magic 'GGUX'");
    memcpy(b.p, "\x00\x01\n\x7f", 4);
    BAD(&b, "not a GGUF file: magic '\\x00\\x01\\x0a\\x7f'");
    memcpy(b.p, "FUGG", 4);
    BAD(&b, "big-endian GGUF not supported");

    bb_hdr(&b, 1, 0, 0);
    BAD(&b, "GGUF version 1 not supported");
    bb_hdr(&b, 4, 0, 0);
    BAD(&b, "GGUF version 4 not supported");
    bb_hdr(&b, 0, 0, 0);
    BAD(&b, "GGUF version 0 not supported");
    bb_hdr(&b, 0x03000000u, 0, 0); /* a big-endian v3 file */
    BAD(&b, "big-endian GGUF not supported (version field 0x03000000");
    bb_hdr(&b, 0x02000000u, 0, 0);
    BAD(&b, "big-endian GGUF not supported");

    /* Counts the file cannot possibly hold fail before any allocation. */
    bb_hdr(&b, 3, 0, UINT64_MAX);
    BAD(&b, "metadata count 18446744073709551615 is impossible: 0 bytes left");
    bb_hdr(&b, 3, 0, 2);
    bb_kv_u32(&b, "a", 1); /* 17 bytes: room for one pair, not two */
    BAD(&b, "metadata count 2 is impossible");
    bb_hdr(&b, 3, 1ull << 60, 0);
    BAD(&b, "tensor count 1152921504606846976 is impossible");
    bb_hdr(&b, 3, 1, 0);
    for (int i = 0; i < 31; i++)
        bb_u8(&b, 0);
    BAD(&b, "tensor count 1 is impossible: 31 bytes left hold at most 0 tensor infos");
    free(b.p);
}

/* ---- metadata ------------------------------------------------------------------ */

TEST(gguf_corrupt_metadata)
{
    struct bb b = {0};
    /* Truncation in each part of a pair: key length, key, type, value. */
    bb_hdr(&b, 3, 0, 1);
    bb_str(&b, "general.name");
    bb_u32(&b, GGUF_STRING);
    bb_str(&b, "a model name");
    GOOD(&b);
    size_t full = b.n;
    /* Two pairs promised, the second cut in its key length. */
    struct bb c = {0};
    bb_put(&c, b.p, b.n);
    c.p[16] = 2;
    bb_put(&c, "\x05\0\0\0", 4);
    BAD(&c, "key 1: truncated: key length at offset 68 needs 8 bytes, file has 4 left");
    free(c.p);
    /* 13 bytes of pair needed for the count check: cut inside the key. */
    bb_hdr(&b, 3, 0, 1);
    bb_u64(&b, 40);
    bb_put(&b, "general.", 8);
    BAD(&b, "key 0: truncated: key of 40 bytes at offset 32, file has 8 left");
    bb_hdr(&b, 3, 0, 1);
    bb_str(&b, "general.name");
    bb_u32(&b, GGUF_STRING);
    bb_str(&b, "a model name");
    BAD_N(&b, 24 + 8 + 12 + 2, "key 0 'general.name': truncated: value type at offset 44");
    BAD_N(&b, 24 + 8 + 12 + 4 + 5, "key 0 'general.name': truncated: string length");
    BAD_N(&b, full - 3, "key 0 'general.name': truncated: string of 12 bytes at offset 56, "
                        "file has 9 left");

    /* A huge string length. */
    bb_hdr(&b, 3, 0, 1);
    bb_str(&b, "k");
    bb_u32(&b, GGUF_STRING);
    bb_u64(&b, UINT64_MAX);
    bb_put(&b, "xyz", 3);
    BAD(&b, "key 0 'k': truncated: string of 18446744073709551615 bytes");
    /* A huge key length. */
    bb_hdr(&b, 3, 0, 1);
    bb_u64(&b, 1ull << 63);
    bb_put(&b, "abcdefgh", 8);
    BAD(&b, "key 0: truncated: key of 9223372036854775808 bytes");

    /* A scalar cut short. */
    bb_hdr(&b, 3, 0, 1);
    bb_str(&b, "k64");
    bb_u32(&b, GGUF_U64);
    bb_put(&b, "\1\2\3", 3);
    BAD(&b, "key 0 'k64': truncated: u64 at offset 39 needs 8 bytes, file has 3 left");

    /* Unknown value types. */
    bb_hdr(&b, 3, 0, 1);
    bb_str(&b, "k");
    bb_u32(&b, 13);
    bb_u32(&b, 0);
    BAD(&b, "key 0 'k': unknown value type 13");
    b.p[24 + 9] = 0xff;
    BAD(&b, "unknown value type");

    /* A bool that is not 0 or 1. */
    bb_hdr(&b, 3, 0, 1);
    bb_str(&b, "flag");
    bb_u32(&b, GGUF_BOOL);
    bb_u8(&b, 2);
    BAD(&b, "key 0 'flag': bool value 2 (must be 0 or 1)");

    /* Duplicate keys, also when the types differ. */
    bb_hdr(&b, 3, 0, 3);
    bb_kv_u32(&b, "a.b", 1);
    bb_kv_u32(&b, "a.c", 2);
    bb_str(&b, "a.b");
    bb_u32(&b, GGUF_STRING);
    bb_str(&b, "again");
    BAD(&b, "key 2 'a.b': duplicate of key 0");

    /* Names from the file are quoted: no newline reaches the message. */
    bb_hdr(&b, 3, 0, 1);
    bb_str(&b, "evil\nkey\x1b[31m");
    bb_u32(&b, 99);
    BAD(&b, "key 0 'evil\\x0akey\\x1b[31m': unknown value type 99");
    free(b.p);
}

/* ---- arrays ---------------------------------------------------------------------- */

static void arr_hdr(struct bb *b, const char *key)
{
    bb_hdr(b, 3, 0, 1);
    bb_str(b, key);
    bb_u32(b, GGUF_ARRAY);
}

TEST(gguf_corrupt_arrays)
{
    struct bb b = {0};
    arr_hdr(&b, "arr");
    bb_u32(&b, GGUF_U32);
    bb_u64(&b, 3);
    bb_u32(&b, 1);
    bb_u32(&b, 2);
    bb_u32(&b, 3);
    GOOD(&b);
    size_t at_elem = 24 + 8 + 3 + 4;
    BAD_N(&b, at_elem + 2, "key 0 'arr': truncated: array element type");
    BAD_N(&b, at_elem + 4 + 5, "key 0 'arr': truncated: array length");
    BAD_N(&b, b.n - 1, "key 0 'arr': array of 3 u32 at offset 51 runs past the end of the file "
                       "(11 bytes left, at least 4 per element)");

    /* Huge counts for each kind of element. */
    arr_hdr(&b, "arr");
    bb_u32(&b, GGUF_U64);
    bb_u64(&b, (1ull << 61) + 1); /* x 8 bytes wraps to 8 */
    bb_u64(&b, 0);
    BAD(&b, "array of 2305843009213693953 u64");
    arr_hdr(&b, "arr");
    bb_u32(&b, GGUF_STRING);
    bb_u64(&b, UINT64_MAX);
    bb_u64(&b, 0);
    BAD(&b, "array of 18446744073709551615 string");
    arr_hdr(&b, "arr");
    bb_u32(&b, GGUF_ARRAY);
    bb_u64(&b, 1ull << 40);
    bb_u64(&b, 0);
    BAD(&b, "array of 1099511627776 array");

    /* Unknown element type. */
    arr_hdr(&b, "arr");
    bb_u32(&b, 77);
    bb_u64(&b, 0);
    BAD(&b, "key 0 'arr': array of unknown element type 77");

    /* Strings: one cut short inside the array, one with a huge length. */
    arr_hdr(&b, "tokenizer.ggml.tokens");
    bb_u32(&b, GGUF_STRING);
    bb_u64(&b, 3);
    bb_str(&b, "a");
    bb_str(&b, "bc");
    bb_u64(&b, 5);
    bb_put(&b, "def", 3);
    BAD(&b, "key 0 'tokenizer.ggml.tokens': element 2: truncated: string of 5 bytes");
    arr_hdr(&b, "tokens");
    bb_u32(&b, GGUF_STRING);
    bb_u64(&b, 2);
    bb_u64(&b, 1ull << 62);
    bb_u64(&b, 0);
    BAD(&b, "key 0 'tokens': element 0: truncated: string of 4611686018427387904 bytes");

    /* A bool array with a 7 in it. */
    arr_hdr(&b, "flags");
    bb_u32(&b, GGUF_BOOL);
    bb_u64(&b, 3);
    bb_put(&b, "\1\0\7", 3);
    BAD(&b, "key 0 'flags': element 2: bool value 7");

    /* Arrays of arrays: an inner array cut in its length; an inner one
     * of an unknown type. */
    arr_hdr(&b, "nest");
    bb_u32(&b, GGUF_ARRAY);
    bb_u64(&b, 2);
    bb_u32(&b, GGUF_STRING);
    bb_u64(&b, 1);
    bb_str(&b, "ab");
    bb_u32(&b, GGUF_U8);
    bb_put(&b, "\1\0\0\0\0\0", 6);
    BAD(&b, "key 0 'nest': element 1: truncated: array length");
    arr_hdr(&b, "nest");
    bb_u32(&b, GGUF_ARRAY);
    bb_u64(&b, 1);
    bb_u32(&b, 42);
    bb_u64(&b, 0);
    BAD(&b, "key 0 'nest': element 0: array of unknown element type 42");

    /* Nesting: 8 levels are fine, 9 are refused. */
    for (int depth = 8; depth <= 9; depth++) {
        arr_hdr(&b, "deep");
        for (int i = 0; i < depth - 1; i++) {
            bb_u32(&b, GGUF_ARRAY);
            bb_u64(&b, 1);
        }
        bb_u32(&b, GGUF_U8);
        bb_u64(&b, 1);
        bb_u8(&b, 5);
        if (depth == 8)
            GOOD(&b);
        else
            BAD(&b, "key 0 'deep': element 0: element 0: element 0: element 0: element 0: "
                    "element 0: element 0: element 0: arrays nested more than 8 levels deep");
    }
    /* A long chain of arrays is refused at level 9, not after thousands. */
    arr_hdr(&b, "deeper");
    for (int i = 0; i < 5000; i++) {
        bb_u32(&b, GGUF_ARRAY);
        bb_u64(&b, 1);
    }
    BAD(&b, "arrays nested more than 8 levels deep");
    free(b.p);
}

/* ---- alignment --------------------------------------------------------------------- */

TEST(gguf_corrupt_alignment)
{
    struct bb b = {0};
    uint64_t ne[1] = {8};
    static const uint32_t bad[] = {0, 3, 48, 0x80000001u};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        bb_hdr(&b, 3, 1, 1);
        bb_kv_u32(&b, "general.alignment", bad[i]);
        bb_tensor(&b, "t", 1, ne, KT_F32, 0);
        bb_pad(&b, 64, 32);
        char want[96];
        snprintf(want, sizeof want, "general.alignment = %u: must be a non-zero power of two",
                 bad[i]);
        BAD(&b, want);
    }
    /* Wrong types: a string, a u64 of 32, an i32 of 32. */
    bb_hdr(&b, 3, 0, 1);
    bb_str(&b, "general.alignment");
    bb_u32(&b, GGUF_STRING);
    bb_str(&b, "32");
    BAD(&b, "general.alignment has type string, must be u32");
    bb_hdr(&b, 3, 0, 1);
    bb_str(&b, "general.alignment");
    bb_u32(&b, GGUF_U64);
    bb_u64(&b, 32);
    BAD(&b, "general.alignment has type u64, must be u32");
    bb_hdr(&b, 3, 0, 1);
    bb_str(&b, "general.alignment");
    bb_u32(&b, GGUF_I32);
    bb_u32(&b, 32);
    BAD(&b, "general.alignment has type i32, must be u32");

    /* A valid one is honoured: offsets must be multiples of 64. */
    bb_hdr(&b, 3, 2, 1);
    bb_kv_u32(&b, "general.alignment", 64);
    bb_tensor(&b, "a", 1, ne, KT_F32, 0);
    bb_tensor(&b, "b", 1, ne, KT_F32, 32);
    bb_pad(&b, 64, 128);
    BAD(&b, "tensor 1 'b': data offset 32 is not a multiple of the alignment 64");
    free(b.p);
}

/* ---- tensor infos ------------------------------------------------------------------- */

TEST(gguf_corrupt_tensor_infos)
{
    struct bb b = {0};
    uint64_t ne2[2] = {32, 2};

    /* A valid two-tensor file, then truncated inside each field. */
    bb_hdr(&b, 3, 2, 0);
    bb_tensor(&b, "blk.0.attn_q.weight", 2, ne2, KT_F32, 0);
    size_t t1 = b.n;
    bb_tensor(&b, "blk.0.attn_k.weight", 2, ne2, KT_Q8_0, 256);
    size_t infos_end = b.n;
    bb_pad(&b, 32, 256 + 68);
    GOOD(&b);
    size_t full = b.n;
    /* The count check needs 32 bytes per info: pad the cut files. */
    struct bb c = {0};
    struct {
        size_t cut;
        const char *msg;
    } cuts[] = {
        {t1 + 5, "tensor 1: truncated: tensor name length at offset 83 needs 8 bytes, file "
                 "has 5 left"},
        {t1 + 8 + 5, "tensor 1: truncated: tensor name of 19 bytes"},
        {t1 + 8 + 19 + 2, "tensor 1 'blk.0.attn_k.weight': truncated: n_dims"},
        {t1 + 8 + 19 + 4 + 12, "tensor 1 'blk.0.attn_k.weight': truncated: dimension"},
        {t1 + 8 + 19 + 4 + 16 + 1, "tensor 1 'blk.0.attn_k.weight': truncated: tensor type"},
        {t1 + 8 + 19 + 4 + 16 + 4 + 3,
         "tensor 1 'blk.0.attn_k.weight': truncated: tensor data offset"},
    };
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        /* Keep the header's promise plausible: the count check passes
         * when the cut file still has 64 bytes after the header. */
        c.n = 0;
        bb_put(&c, b.p, cuts[i].cut);
        if (c.n < 24 + 64) {
            test_fail(__FILE__, __LINE__, "cut %zu too short for the count check", i);
            continue;
        }
        BAD(&c, cuts[i].msg);
    }
    free(c.p);
    BAD_N(&b, infos_end + 3, "truncated: data section starts at offset 160 (tensor infos end at 142, "
                                "alignment 32), beyond end of file (145 bytes)");
    BAD_N(&b, full - 1, "tensor 1 'blk.0.attn_k.weight': data [offset 256, 68 bytes] beyond "
                        "end of file (323 data bytes from offset 160, file 483 bytes)");

    /* n_dims 0 and 5. */
    bb_hdr(&b, 3, 1, 0);
    bb_str(&b, "t");
    bb_u32(&b, 0);
    bb_pad(&b, 32, 64);
    BAD(&b, "tensor 0 't': n_dims 0 not in 1..4");
    bb_hdr(&b, 3, 1, 0);
    uint64_t ne5[5] = {1, 1, 1, 1, 1};
    bb_tensor(&b, "t", 5, ne5, KT_F32, 0);
    bb_pad(&b, 32, 32);
    BAD(&b, "tensor 0 't': n_dims 5 not in 1..4");

    /* Negative and overflowing shapes. */
    uint64_t neg[2] = {32, (uint64_t)-3};
    bb_hdr(&b, 3, 1, 0);
    bb_tensor(&b, "t", 2, neg, KT_F32, 0);
    bb_pad(&b, 32, 32);
    BAD(&b, "tensor 0 't': ne[1] = -3 is negative");
    uint64_t big[4] = {1ull << 32, 1ull << 32, 1, 1};
    bb_hdr(&b, 3, 1, 0);
    bb_tensor(&b, "t", 4, big, KT_F32, 0);
    bb_pad(&b, 32, 32);
    BAD(&b, "tensor 0 't': shape [4294967296, 4294967296, 1, 1] has more than 2^63 elements");
    uint64_t wide[2] = {1ull << 31, 1ull << 31}; /* 2^62 elements, 2^65 bytes of F64 */
    bb_hdr(&b, 3, 1, 0);
    bb_tensor(&b, "t", 2, wide, KT_F64, 0);
    bb_pad(&b, 32, 32);
    BAD(&b, "tensor 0 't': byte size of F64 [2147483648, 2147483648] overflows 64 bits");
    uint64_t huge_ok[1] = {1ull << 40}; /* fits the arithmetic, not the file */
    bb_hdr(&b, 3, 1, 0);
    bb_tensor(&b, "t", 1, huge_ok, KT_F32, 0);
    bb_pad(&b, 32, 32);
    BAD(&b, "tensor 0 't': data [offset 0, 4398046511104 bytes] beyond end of file");

    /* Unknown types: a removed number, one past the table, a huge one. */
    uint64_t ne1[1] = {32};
    static const uint32_t types[] = {4, 31, KT_COUNT, 0xffffffffu};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        bb_hdr(&b, 3, 1, 0);
        bb_tensor(&b, "t", 1, ne1, types[i], 0);
        bb_pad(&b, 32, 128);
        char want[64];
        snprintf(want, sizeof want, "tensor 0 't': unknown tensor type %u", types[i]);
        BAD(&b, want);
    }

    /* ne[0] not a multiple of the block size. */
    uint64_t odd[2] = {100, 2};
    bb_hdr(&b, 3, 1, 0);
    bb_tensor(&b, "blk.3.ffn_down.weight", 2, odd, KT_Q4_K, 0);
    bb_pad(&b, 32, 2048);
    BAD(&b, "tensor 0 'blk.3.ffn_down.weight': ne[0] = 100 is not a multiple of the Q4_K "
            "block size 256");
    uint64_t odd2[1] = {48};
    bb_hdr(&b, 3, 1, 0);
    bb_tensor(&b, "t", 1, odd2, KT_Q8_0, 0);
    bb_pad(&b, 32, 64);
    BAD(&b, "ne[0] = 48 is not a multiple of the Q8_0 block size 32");

    /* Misaligned offset (default alignment 32). */
    bb_hdr(&b, 3, 1, 0);
    bb_tensor(&b, "t", 1, ne1, KT_F32, 16);
    bb_pad(&b, 32, 256);
    BAD(&b, "tensor 0 't': data offset 16 is not a multiple of the alignment 32");

    /* Offset beyond the file, and one that would wrap around. */
    bb_hdr(&b, 3, 1, 0);
    bb_tensor(&b, "t", 1, ne1, KT_F32, 4096);
    bb_pad(&b, 32, 128);
    BAD(&b, "tensor 0 't': data [offset 4096, 128 bytes] beyond end of file");
    bb_hdr(&b, 3, 1, 0);
    bb_tensor(&b, "t", 1, ne1, KT_F32, UINT64_MAX - 31);
    bb_pad(&b, 32, 128);
    BAD(&b, "tensor 0 't': data [offset 18446744073709551584, 128 bytes] beyond end of file");

    /* Overlapping tensors, listed in either order. */
    bb_hdr(&b, 3, 3, 0);
    bb_tensor(&b, "a", 1, ne1, KT_F32, 0);
    bb_tensor(&b, "b", 1, ne1, KT_F32, 256);
    bb_tensor(&b, "c", 1, ne1, KT_F32, 96);
    bb_pad(&b, 32, 384);
    BAD(&b, "tensor 2 'c': data [offset 96, 128 bytes] overlaps tensor 0 'a' [offset 0, "
            "128 bytes]");
    bb_hdr(&b, 3, 2, 0);
    bb_tensor(&b, "late", 1, ne1, KT_F32, 128);
    bb_tensor(&b, "same", 1, ne1, KT_F32, 128);
    bb_pad(&b, 32, 256);
    BAD(&b, "tensor 1 'same': data [offset 128, 128 bytes] overlaps tensor 0 'late'");
    /* Touching is not overlapping; empty tensors share offsets freely. */
    uint64_t none[2] = {0, 5};
    bb_hdr(&b, 3, 3, 0);
    bb_tensor(&b, "a", 1, ne1, KT_F32, 0);
    bb_tensor(&b, "b", 1, ne1, KT_F32, 128);
    bb_tensor(&b, "empty", 2, none, KT_F32, 128);
    bb_pad(&b, 32, 256);
    GOOD(&b);

    /* Duplicate tensor names. */
    bb_hdr(&b, 3, 2, 0);
    bb_tensor(&b, "output.weight", 1, ne1, KT_F32, 0);
    bb_tensor(&b, "output.weight", 1, ne1, KT_F32, 128);
    bb_pad(&b, 32, 256);
    BAD(&b, "tensor 1 'output.weight': duplicate name (also tensor 0)");
    free(b.p);
}

/* ---- sweeps ------------------------------------------------------------------------ */

static void sample_file(uint8_t **buf, size_t *size)
{
    struct gguf_writer *w = gguf_writer_new(3);
    gguf_writer_set_str(w, "general.architecture", "llama");
    gguf_writer_set_u32(w, "general.alignment", 16);
    gguf_writer_set_f32(w, "llama.rope.freq_base", 10000.0f);
    gguf_writer_set_bool(w, "b", true);
    const char *toks[] = {"<s>", "", "hello"};
    gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", toks, 3);
    int32_t types[] = {3, 1, 1};
    gguf_writer_set_arr(w, "tokenizer.ggml.token_type", GGUF_I32, types, 3);
    struct gguf_value inner[2] = {{.type = GGUF_ARRAY}, {.type = GGUF_ARRAY}};
    struct gguf_value strs[1] = {{.type = GGUF_STRING, .v.str = {"x", 1}}};
    inner[0].v.arr.elem = GGUF_STRING, inner[0].v.arr.n = 1, inner[0].v.arr.items = strs;
    inner[1].v.arr.elem = GGUF_F64, inner[1].v.arr.n = 0;
    struct gguf_kv kv = {{"nested", 6}, {.type = GGUF_ARRAY}};
    kv.val.v.arr.elem = GGUF_ARRAY, kv.val.v.arr.n = 2, kv.val.v.arr.items = inner;
    gguf_writer_set_kv(w, &kv);
    static uint8_t data[4096];
    for (size_t i = 0; i < sizeof data; i++)
        data[i] = (uint8_t)(i * 7);
    int64_t a[2] = {32, 2}, q[1] = {256};
    gguf_writer_add_tensor(w, "a", KT_F32, 2, a, data);
    gguf_writer_add_tensor(w, "q", KT_Q4_K, 1, q, data);
    gguf_writer_add_tensor(w, "h", KT_F16, 1, a, data);
    struct moed_err e = {0};
    if (gguf_writer_write_mem(w, buf, size, &e) != 0) {
        test_fail(__FILE__, __LINE__, "sample: %s", e.msg);
        *buf = NULL;
    }
    gguf_writer_free(w);
}

TEST(gguf_corrupt_every_truncation)
{
    uint8_t *buf;
    size_t size;
    sample_file(&buf, &size);
    REQUIRE(buf);
    check_good(__FILE__, __LINE__, buf, size);
    /* Every shorter prefix is refused (the last tensor is padded: the
     * prefixes that only lose padding are whole files). */
    struct gguf g;
    REQUIRE(gguf_open_mem(&g, buf, size, NULL) == 0);
    const struct gguf_tensor *last = &g.tensors[g.n_tensors - 1];
    size_t need = (size_t)(g.data_offset + last->offset + last->nbytes);
    gguf_close(&g);
    int refused = 0;
    for (size_t n = 0; n < need; n++) {
        uint8_t *copy = malloc(n ? n : 1);
        memcpy(copy, buf, n);
        struct moed_err e = {0};
        int rc = gguf_open_mem(&g, copy, n, &e);
        CHECK_MSG(rc != 0, "prefix of %zu bytes accepted", n);
        if (rc == 0)
            gguf_close(&g);
        CHECK_MSG(e.msg[0] && !strchr(e.msg, '\n'), "prefix %zu: bad message '%s'", n, e.msg);
        refused += rc != 0;
        free(copy);
    }
    CHECK_EQ(refused, (int)need);
    free(buf);
}

TEST(gguf_corrupt_every_byte_flip)
{
    uint8_t *buf;
    size_t size;
    sample_file(&buf, &size);
    REQUIRE(buf);
    struct gguf g;
    REQUIRE(gguf_open_mem(&g, buf, size, NULL) == 0);
    size_t infos = (size_t)g.data_offset; /* flips in data are harmless */
    gguf_close(&g);
    static const uint8_t masks[] = {0x01, 0x80, 0xff};
    uint8_t *copy = malloc(size);
    for (size_t i = 0; i < infos; i++) {
        for (size_t m = 0; m < sizeof masks; m++) {
            memcpy(copy, buf, size);
            copy[i] ^= masks[m];
            struct moed_err e = {0};
            int rc = gguf_open_mem(&g, copy, size, &e);
            if (rc == 0)
                gguf_close(&g);
            else
                CHECK_MSG(e.msg[0] && !strchr(e.msg, '\n'), "flip %zu: bad message", i);
        }
    }
    free(copy);
    free(buf);
}
