/*
 * GGUF reader and writer: round trips through the writer and the reader
 * (every value type, nested arrays, both versions, several alignments,
 * tensors of plain and quantized types checked byte for byte), the
 * streaming writer on a real file, the typed getters and their errors,
 * the real vocabulary files in ../shared/vocab, and `moed info`.
 * Corrupt files are in test_gguf_corrupt.c.
 */
#include <inttypes.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "model/gguf.h"
#include "tests/unit/harness.h"

/* Deterministic bytes for tensor data. */
static void fill(uint8_t *p, size_t n, uint64_t seed)
{
    uint64_t x = seed * 0x9e3779b97f4a7c15ull + 1;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        p[i] = (uint8_t)x;
    }
}

static bool value_eq(const struct gguf_value *a, const struct gguf_value *b)
{
    if (a->type != b->type)
        return false;
    switch (a->type) {
    case GGUF_STRING:
        return a->v.str.len == b->v.str.len &&
               (a->v.str.len == 0 || !memcmp(a->v.str.ptr, b->v.str.ptr, a->v.str.len));
    case GGUF_F32: case GGUF_F64:
        return !memcmp(&a->v.f64, &b->v.f64, sizeof(double)) || a->v.f64 == b->v.f64;
    case GGUF_ARRAY: {
        if (a->v.arr.elem != b->v.arr.elem || a->v.arr.n != b->v.arr.n)
            return false;
        if (a->v.arr.elem == GGUF_STRING || a->v.arr.elem == GGUF_ARRAY) {
            for (uint64_t i = 0; i < a->v.arr.n; i++)
                if (!value_eq(&a->v.arr.items[i], &b->v.arr.items[i]))
                    return false;
            return true;
        }
        size_t sz = a->v.arr.elem == GGUF_U8 || a->v.arr.elem == GGUF_I8 || a->v.arr.elem == GGUF_BOOL ? 1
                  : a->v.arr.elem == GGUF_U16 || a->v.arr.elem == GGUF_I16 ? 2
                  : a->v.arr.elem == GGUF_U32 || a->v.arr.elem == GGUF_I32 || a->v.arr.elem == GGUF_F32 ? 4 : 8;
        return a->v.arr.n == 0 || !memcmp(a->v.arr.raw, b->v.arr.raw, a->v.arr.n * sz);
    }
    default:
        return a->v.u64 == b->v.u64;
    }
}

/* ---- round trip of every value type ------------------------------------------ */

static struct gguf_value str_val(const char *s)
{
    struct gguf_value v = {.type = GGUF_STRING};
    v.v.str = (struct gguf_str){s, strlen(s)};
    return v;
}

static void set_all_values(struct gguf_writer *w)
{
    CHECK_EQ(gguf_writer_set_str(w, "general.architecture", "qwen3moe"), 0);
    CHECK_EQ(gguf_writer_set_str(w, "general.name", "round trip"), 0);
    CHECK_EQ(gguf_writer_set_u8(w, "t.u8", 250), 0);
    CHECK_EQ(gguf_writer_set_i8(w, "t.i8", -128), 0);
    CHECK_EQ(gguf_writer_set_u16(w, "t.u16", 65535), 0);
    CHECK_EQ(gguf_writer_set_i16(w, "t.i16", -32768), 0);
    CHECK_EQ(gguf_writer_set_u32(w, "t.u32", 4000000000u), 0);
    CHECK_EQ(gguf_writer_set_i32(w, "t.i32", INT32_MIN), 0);
    CHECK_EQ(gguf_writer_set_u64(w, "t.u64", UINT64_MAX), 0);
    CHECK_EQ(gguf_writer_set_i64(w, "t.i64", INT64_MIN), 0);
    CHECK_EQ(gguf_writer_set_f32(w, "t.f32", 1.5e-30f), 0);
    CHECK_EQ(gguf_writer_set_f64(w, "t.f64", -1.0 / 3.0), 0);
    CHECK_EQ(gguf_writer_set_bool(w, "t.bool", true), 0);
    CHECK_EQ(gguf_writer_set_bool(w, "t.false", false), 0);
    CHECK_EQ(gguf_writer_set_str(w, "t.empty", ""), 0);
    CHECK_EQ(gguf_writer_set_str(w, "t.utf8", "caf\xc3\xa9 \xe6\x97\xa5\n\t"), 0);
    CHECK_EQ(gguf_writer_set_i64(w, "t.small_i64", 7), 0);
    CHECK_EQ(gguf_writer_set_i32(w, "t.neg", -1), 0);
    /* Replacing a key keeps one copy, with the new value. */
    CHECK_EQ(gguf_writer_set_u32(w, "t.replaced", 1), 0);
    CHECK_EQ(gguf_writer_set_str(w, "t.replaced", "second"), 0);

    uint8_t u8s[] = {0, 1, 255};
    int8_t i8s[] = {-128, 0, 127};
    uint16_t u16s[] = {0, 65535};
    int16_t i16s[] = {-32768, 32767};
    uint32_t u32s[] = {0, 1, 4294967295u};
    int32_t i32s[] = {INT32_MIN, -1, 0, INT32_MAX};
    uint64_t u64s[] = {0, UINT64_MAX};
    int64_t i64s[] = {INT64_MIN, INT64_MAX};
    float f32s[] = {0.0f, -0.0f, 3.25f, 1e30f};
    double f64s[] = {1e-300, -2.5};
    uint8_t bools[] = {1, 0, 1};
    CHECK_EQ(gguf_writer_set_arr(w, "a.u8", GGUF_U8, u8s, 3), 0);
    CHECK_EQ(gguf_writer_set_arr(w, "a.i8", GGUF_I8, i8s, 3), 0);
    CHECK_EQ(gguf_writer_set_arr(w, "a.u16", GGUF_U16, u16s, 2), 0);
    CHECK_EQ(gguf_writer_set_arr(w, "a.i16", GGUF_I16, i16s, 2), 0);
    CHECK_EQ(gguf_writer_set_arr(w, "a.u32", GGUF_U32, u32s, 3), 0);
    CHECK_EQ(gguf_writer_set_arr(w, "a.i32", GGUF_I32, i32s, 4), 0);
    CHECK_EQ(gguf_writer_set_arr(w, "a.u64", GGUF_U64, u64s, 2), 0);
    CHECK_EQ(gguf_writer_set_arr(w, "a.i64", GGUF_I64, i64s, 2), 0);
    CHECK_EQ(gguf_writer_set_arr(w, "a.f32", GGUF_F32, f32s, 4), 0);
    CHECK_EQ(gguf_writer_set_arr(w, "a.f64", GGUF_F64, f64s, 2), 0);
    CHECK_EQ(gguf_writer_set_arr(w, "a.bool", GGUF_BOOL, bools, 3), 0);
    CHECK_EQ(gguf_writer_set_arr(w, "a.empty_u32", GGUF_U32, NULL, 0), 0);
    const char *strs[] = {"hello", "", "\xe2\x96\x81the", "a b"};
    CHECK_EQ(gguf_writer_set_arr_str(w, "a.str", strs, 4), 0);
    CHECK_EQ(gguf_writer_set_arr_str(w, "a.empty_str", NULL, 0), 0);

    /* [["x", ""], [], ["yz"]]: an array of arrays of strings. */
    struct gguf_value s1[2] = {str_val("x"), str_val("")}, s3[1] = {str_val("yz")};
    struct gguf_value inner[3] = {{.type = GGUF_ARRAY}, {.type = GGUF_ARRAY}, {.type = GGUF_ARRAY}};
    inner[0].v.arr.elem = GGUF_STRING, inner[0].v.arr.n = 2, inner[0].v.arr.items = s1;
    inner[1].v.arr.elem = GGUF_STRING, inner[1].v.arr.n = 0;
    inner[2].v.arr.elem = GGUF_STRING, inner[2].v.arr.n = 1, inner[2].v.arr.items = s3;
    struct gguf_kv nested = {{"a.nested", 8}, {.type = GGUF_ARRAY}};
    nested.val.v.arr.elem = GGUF_ARRAY, nested.val.v.arr.n = 3, nested.val.v.arr.items = inner;
    CHECK_EQ(gguf_writer_set_kv(w, &nested), 0);

    /* An empty array of arrays, and arrays of u16 arrays. */
    struct gguf_kv none = {{"a.empty_nested", 14}, {.type = GGUF_ARRAY}};
    none.val.v.arr.elem = GGUF_ARRAY;
    CHECK_EQ(gguf_writer_set_kv(w, &none), 0);
    struct gguf_value numarr[2] = {{.type = GGUF_ARRAY}, {.type = GGUF_ARRAY}};
    numarr[0].v.arr.elem = GGUF_U16, numarr[0].v.arr.n = 2, numarr[0].v.arr.raw = u16s;
    numarr[1].v.arr.elem = GGUF_U16, numarr[1].v.arr.n = 0;
    struct gguf_kv nums = {{"a.nested_u16", 12}, {.type = GGUF_ARRAY}};
    nums.val.v.arr.elem = GGUF_ARRAY, nums.val.v.arr.n = 2, nums.val.v.arr.items = numarr;
    CHECK_EQ(gguf_writer_set_kv(w, &nums), 0);
    /* A key that is not a C string: embedded NUL, set through set_kv. */
    struct gguf_kv odd = {{"odd\0key", 7}, {.type = GGUF_U8}};
    odd.val.v.u64 = 9;
    CHECK_EQ(gguf_writer_set_kv(w, &odd), 0);
}

static void check_all_values(const struct gguf *g)
{
    struct moed_err e = {0};
    struct gguf_str s;
    uint32_t u32;
    uint64_t u64;
    int32_t i32;
    int64_t i64;
    float f;
    double d;
    bool b;
    CHECK_EQ(gguf_get_str(g, "general.architecture", &s, &e), 0);
    CHECK(gguf_str_eq(s, "qwen3moe"));
    CHECK_EQ(gguf_get_u32(g, "t.u8", &u32, &e), 0);
    CHECK_EQ(u32, 250);
    CHECK_EQ(gguf_get_i32(g, "t.i8", &i32, &e), 0);
    CHECK_EQ(i32, -128);
    CHECK_EQ(gguf_get_u32(g, "t.u16", &u32, &e), 0);
    CHECK_EQ(u32, 65535);
    CHECK_EQ(gguf_get_i32(g, "t.i16", &i32, &e), 0);
    CHECK_EQ(i32, -32768);
    CHECK_EQ(gguf_get_u32(g, "t.u32", &u32, &e), 0);
    CHECK(u32 == 4000000000u);
    CHECK_EQ(gguf_get_i32(g, "t.i32", &i32, &e), 0);
    CHECK_EQ(i32, INT32_MIN);
    CHECK_EQ(gguf_get_u64(g, "t.u64", &u64, &e), 0);
    CHECK(u64 == UINT64_MAX);
    CHECK_EQ(gguf_get_i64(g, "t.i64", &i64, &e), 0);
    CHECK(i64 == INT64_MIN);
    CHECK_EQ(gguf_get_f32(g, "t.f32", &f, &e), 0);
    CHECK(f == 1.5e-30f);
    CHECK_EQ(gguf_get_f64(g, "t.f64", &d, &e), 0);
    CHECK(d == -1.0 / 3.0);
    CHECK_EQ(gguf_get_f32(g, "t.f64", &f, &e), 0); /* f32 getter takes f64 */
    CHECK(f == (float)(-1.0 / 3.0));
    CHECK_EQ(gguf_get_bool(g, "t.bool", &b, &e), 0);
    CHECK(b);
    CHECK_EQ(gguf_get_bool(g, "t.false", &b, &e), 0);
    CHECK(!b);
    CHECK_EQ(gguf_get_str(g, "t.empty", &s, &e), 0);
    CHECK_EQ(s.len, 0);
    CHECK_EQ(gguf_get_str(g, "t.utf8", &s, &e), 0);
    CHECK(gguf_str_eq(s, "caf\xc3\xa9 \xe6\x97\xa5\n\t"));
    CHECK_EQ(gguf_get_u32(g, "t.small_i64", &u32, &e), 0); /* an i64 of 7 fits */
    CHECK_EQ(u32, 7);
    CHECK_EQ(gguf_get_str(g, "t.replaced", &s, &e), 0);
    CHECK(gguf_str_eq(s, "second"));

    const struct gguf_value *a;
    REQUIRE(gguf_get_arr(g, "a.u8", GGUF_U8, &a, &e) == 0);
    CHECK_EQ(a->v.arr.n, 3);
    CHECK_EQ(gguf_arr_int(a, 2), 255);
    REQUIRE(gguf_get_arr(g, "a.i8", GGUF_I8, &a, &e) == 0);
    CHECK_EQ(gguf_arr_int(a, 0), -128);
    REQUIRE(gguf_get_arr(g, "a.u16", GGUF_U16, &a, &e) == 0);
    CHECK_EQ(gguf_arr_int(a, 1), 65535);
    REQUIRE(gguf_get_arr(g, "a.i16", GGUF_I16, &a, &e) == 0);
    CHECK_EQ(gguf_arr_int(a, 0), -32768);
    REQUIRE(gguf_get_arr(g, "a.u32", GGUF_U32, &a, &e) == 0);
    CHECK_EQ(gguf_arr_int(a, 2), 4294967295ll);
    REQUIRE(gguf_get_arr(g, "a.i32", GGUF_I32, &a, &e) == 0);
    CHECK_EQ(a->v.arr.n, 4);
    CHECK_EQ(gguf_arr_int(a, 0), INT32_MIN);
    CHECK_EQ(gguf_arr_int(a, 3), INT32_MAX);
    REQUIRE(gguf_get_arr(g, "a.u64", GGUF_U64, &a, &e) == 0);
    CHECK((uint64_t)gguf_arr_int(a, 1) == UINT64_MAX);
    REQUIRE(gguf_get_arr(g, "a.i64", GGUF_I64, &a, &e) == 0);
    CHECK(gguf_arr_int(a, 0) == INT64_MIN);
    REQUIRE(gguf_get_arr(g, "a.f32", GGUF_F32, &a, &e) == 0);
    CHECK(gguf_arr_float(a, 2) == 3.25);
    CHECK(gguf_arr_float(a, 3) == (double)1e30f);
    CHECK(signbit(gguf_arr_float(a, 1)));
    REQUIRE(gguf_get_arr(g, "a.f64", GGUF_F64, &a, &e) == 0);
    CHECK(gguf_arr_float(a, 0) == 1e-300);
    REQUIRE(gguf_get_arr(g, "a.bool", GGUF_BOOL, &a, &e) == 0);
    CHECK_EQ(gguf_arr_int(a, 0), 1);
    CHECK_EQ(gguf_arr_int(a, 1), 0);
    REQUIRE(gguf_get_arr(g, "a.empty_u32", GGUF_U32, &a, &e) == 0);
    CHECK_EQ(a->v.arr.n, 0);
    REQUIRE(gguf_get_arr(g, "a.str", GGUF_STRING, &a, &e) == 0);
    CHECK_EQ(a->v.arr.n, 4);
    CHECK(gguf_str_eq(gguf_arr_str(a, 0), "hello"));
    CHECK_EQ(gguf_arr_str(a, 1).len, 0);
    CHECK(gguf_str_eq(gguf_arr_str(a, 2), "\xe2\x96\x81the"));
    REQUIRE(gguf_get_arr(g, "a.empty_str", GGUF_STRING, &a, &e) == 0);
    CHECK_EQ(a->v.arr.n, 0);

    REQUIRE(gguf_get_arr(g, "a.nested", GGUF_ARRAY, &a, &e) == 0);
    REQUIRE(a->v.arr.n == 3);
    const struct gguf_value *in0 = gguf_arr_item(a, 0), *in1 = gguf_arr_item(a, 1),
                            *in2 = gguf_arr_item(a, 2);
    CHECK(in0->type == GGUF_ARRAY && in0->v.arr.elem == GGUF_STRING && in0->v.arr.n == 2);
    CHECK(gguf_str_eq(gguf_arr_str(in0, 0), "x"));
    CHECK(gguf_str_eq(gguf_arr_str(in0, 1), ""));
    CHECK(in1->v.arr.n == 0 && in1->v.arr.elem == GGUF_STRING);
    CHECK(gguf_str_eq(gguf_arr_str(in2, 0), "yz"));
    REQUIRE(gguf_get_arr(g, "a.empty_nested", GGUF_ARRAY, &a, &e) == 0);
    CHECK_EQ(a->v.arr.n, 0);
    REQUIRE(gguf_get_arr(g, "a.nested_u16", GGUF_ARRAY, &a, &e) == 0);
    REQUIRE(a->v.arr.n == 2);
    CHECK_EQ(gguf_arr_int(gguf_arr_item(a, 0), 1), 65535);
    CHECK_EQ(gguf_arr_item(a, 1)->v.arr.n, 0);

    /* The key with a NUL inside is there, and not under its C prefix. */
    bool found = false;
    for (uint64_t i = 0; i < g->n_kv; i++)
        found |= g->kv[i].key.len == 7 && !memcmp(g->kv[i].key.ptr, "odd\0key", 7) &&
                 g->kv[i].val.v.u64 == 9;
    CHECK(found);
    CHECK(gguf_find(g, "odd") == NULL);
}

/* Tensors of plain and quantized types; sizes from the type table. */
struct tspec {
    const char *name;
    uint32_t type;
    uint32_t n_dims;
    int64_t ne[4];
};

static const struct tspec tspecs[] = {
    {"token_embd.weight", KT_Q8_0, 2, {64, 3, 1, 1}},
    {"blk.0.attn_norm.weight", KT_F32, 1, {17, 1, 1, 1}},
    {"blk.0.ffn_gate_exps.weight", KT_Q4_K, 3, {256, 2, 4, 1}},
    {"blk.0.ffn_down_exps.weight", KT_Q6_K, 3, {512, 1, 2, 1}},
    {"blk.0.attn_q.weight", KT_F16, 2, {8, 5, 1, 1}},
    {"blk.0.bf16", KT_BF16, 4, {2, 3, 2, 2}},
    {"blk.0.q4_0", KT_Q4_0, 1, {96, 1, 1, 1}},
    {"blk.0.q5_k", KT_Q5_K, 2, {256, 1, 1, 1}},
    {"blk.0.iq4_xs", KT_IQ4_XS, 1, {256, 1, 1, 1}},
    {"blk.0.mxfp4", KT_MXFP4, 2, {32, 3, 1, 1}},
    {"blk.0.i32", KT_I32, 1, {3, 1, 1, 1}},
    {"empty", KT_F32, 2, {0, 4, 1, 1}},
    {"output.weight", KT_Q2_K, 2, {256, 2, 1, 1}},
};
#define N_TSPECS (sizeof tspecs / sizeof tspecs[0])

static uint64_t tspec_bytes(const struct tspec *t)
{
    uint64_t n = kern_row_size(t->type, t->ne[0]);
    for (uint32_t d = 1; d < t->n_dims; d++)
        n *= (uint64_t)t->ne[d];
    return n;
}

static uint8_t *tensor_data[N_TSPECS];

static void make_tensor_data(void)
{
    for (size_t i = 0; i < N_TSPECS; i++) {
        if (!tensor_data[i]) {
            size_t n = (size_t)tspec_bytes(&tspecs[i]);
            tensor_data[i] = malloc(n ? n : 1);
            fill(tensor_data[i], n, i + 1);
        }
    }
}

static void add_tensors(struct gguf_writer *w)
{
    make_tensor_data();
    for (size_t i = 0; i < N_TSPECS; i++)
        CHECK_EQ(gguf_writer_add_tensor(w, tspecs[i].name, tspecs[i].type, tspecs[i].n_dims,
                                        tspecs[i].ne, tensor_data[i]),
                 0);
}

static void check_tensors(const struct gguf *g)
{
    REQUIRE(g->n_tensors == N_TSPECS);
    for (size_t i = 0; i < N_TSPECS; i++) {
        const struct tspec *s = &tspecs[i];
        const struct gguf_tensor *t = gguf_find_tensor(g, s->name);
        REQUIRE(t != NULL);
        CHECK(t == &g->tensors[i]); /* kept in the order added */
        CHECK_EQ(t->type, s->type);
        CHECK_EQ(t->n_dims, s->n_dims);
        for (uint32_t d = 0; d < 4; d++)
            CHECK_EQ(t->ne[d], d < s->n_dims ? s->ne[d] : 1);
        CHECK_EQ(t->nbytes, tspec_bytes(s));
        CHECK_EQ(t->offset % g->alignment, 0);
        CHECK_EQ(((const uint8_t *)t->data - g->base) % g->alignment, 0);
        CHECK_EQ(g->data_offset % g->alignment, 0);
        CHECK_MSG(t->nbytes == 0 || !memcmp(t->data, tensor_data[i], t->nbytes),
                  "tensor '%s' data differs", s->name);
    }
    CHECK(gguf_find_tensor(g, "missing") == NULL);
    CHECK(gguf_find_tensor(g, "blk.0") == NULL);
}

TEST(gguf_round_trip_versions_and_alignments)
{
    static const uint32_t aligns[] = {0 /* default */, 1, 8, 64, 4096};
    for (uint32_t version = 2; version <= 3; version++) {
        for (size_t ai = 0; ai < sizeof aligns / sizeof aligns[0]; ai++) {
            struct gguf_writer *w = gguf_writer_new(version);
            REQUIRE(w);
            set_all_values(w);
            if (aligns[ai])
                CHECK_EQ(gguf_writer_set_u32(w, "general.alignment", aligns[ai]), 0);
            add_tensors(w);
            CHECK(gguf_writer_error(w) == NULL);
            uint8_t *buf = NULL;
            size_t size = 0;
            struct moed_err e = {0};
            int rc = gguf_writer_write_mem(w, &buf, &size, &e);
            CHECK_MSG(rc == 0, "write_mem: %s", e.msg);
            gguf_writer_free(w);
            REQUIRE(rc == 0);

            struct gguf g;
            rc = gguf_open_mem(&g, buf, size, &e);
            CHECK_MSG(rc == 0, "v%u align %u: %s", version, aligns[ai], e.msg);
            if (rc == 0) {
                CHECK_EQ(g.version, version);
                CHECK_EQ(g.alignment, aligns[ai] ? aligns[ai] : GGUF_DEFAULT_ALIGNMENT);
                check_all_values(&g);
                check_tensors(&g);
                /* The writer pads after each tensor, the last included. */
                CHECK_EQ(size % g.alignment, 0);
                gguf_close(&g);
            }
            free(buf);
        }
    }
}

TEST(gguf_round_trip_set_kv_copies_everything)
{
    struct gguf_writer *w = gguf_writer_new(3);
    set_all_values(w);
    uint8_t *buf, *buf2;
    size_t size, size2;
    struct moed_err e = {0};
    REQUIRE(gguf_writer_write_mem(w, &buf, &size, &e) == 0);
    gguf_writer_free(w);
    struct gguf g, g2;
    REQUIRE(gguf_open_mem(&g, buf, size, &e) == 0);
    CHECK_EQ(g.n_tensors, 0);

    /* Copy every kv, write, read again: the same values, byte for byte. */
    w = gguf_writer_new(3);
    for (uint64_t i = 0; i < g.n_kv; i++)
        CHECK_EQ(gguf_writer_set_kv(w, &g.kv[i]), 0);
    REQUIRE(gguf_writer_write_mem(w, &buf2, &size2, &e) == 0);
    gguf_writer_free(w);
    REQUIRE(gguf_open_mem(&g2, buf2, size2, &e) == 0);
    CHECK_EQ(g2.n_kv, g.n_kv);
    for (uint64_t i = 0; i < g.n_kv && i < g2.n_kv; i++) {
        CHECK(g.kv[i].key.len == g2.kv[i].key.len &&
              !memcmp(g.kv[i].key.ptr, g2.kv[i].key.ptr, g.kv[i].key.len));
        CHECK_MSG(value_eq(&g.kv[i].val, &g2.kv[i].val), "kv %" PRIu64 " differs", i);
    }
    CHECK_EQ(size, size2);
    CHECK(size == size2 && !memcmp(buf, buf2, size));
    gguf_close(&g2);
    gguf_close(&g);
    free(buf);
    free(buf2);
}

TEST(gguf_writer_stream_to_file)
{
    char path[512];
    snprintf(path, sizeof path, "%s/gguf_stream.gguf", test_tmp_dir());
    struct gguf_writer *w = gguf_writer_new(3);
    CHECK_EQ(gguf_writer_set_str(w, "general.architecture", "llama"), 0);
    CHECK_EQ(gguf_writer_set_u32(w, "general.alignment", 64), 0);
    make_tensor_data();
    for (size_t i = 0; i < N_TSPECS; i++) /* data streamed, not given */
        CHECK_EQ(gguf_writer_add_tensor(w, tspecs[i].name, tspecs[i].type, tspecs[i].n_dims,
                                        tspecs[i].ne, NULL), 0);
    struct moed_err e = {0};
    int rc = gguf_writer_begin(w, path, &e);
    CHECK_MSG(rc == 0, "begin: %s", e.msg);
    for (size_t i = 0; i < N_TSPECS && rc == 0; i++) {
        /* In uneven pieces: 1 byte, then the rest in 7-byte chunks. */
        size_t n = (size_t)tspec_bytes(&tspecs[i]), off = 0;
        while (off < n && rc == 0) {
            size_t k = off == 0 ? 1 : (n - off < 7 ? n - off : 7);
            rc = gguf_writer_write_data(w, tensor_data[i] + off, k, &e);
            off += k;
        }
        CHECK_MSG(rc == 0, "write_data %zu: %s", i, e.msg);
    }
    if (rc == 0) {
        rc = gguf_writer_end(w, &e);
        CHECK_MSG(rc == 0, "end: %s", e.msg);
    }
    gguf_writer_free(w);
    REQUIRE(rc == 0);

    struct gguf g;
    rc = gguf_open(&g, path, &e);
    CHECK_MSG(rc == 0, "open: %s", e.msg);
    REQUIRE(rc == 0);
    CHECK(g.mapped);
    CHECK_EQ(g.alignment, 64);
    check_tensors(&g);
    gguf_close(&g);
    unlink(path);
}

TEST(gguf_writer_stream_errors)
{
    char path[512];
    snprintf(path, sizeof path, "%s/gguf_stream_bad.gguf", test_tmp_dir());
    int64_t ne[2] = {32, 2};
    uint8_t data[512] = {0};
    struct moed_err e = {0};
    struct stat st;

    /* Too much data for the tensor: refused, partial file removed. */
    struct gguf_writer *w = gguf_writer_new(3);
    CHECK_EQ(gguf_writer_add_tensor(w, "a", KT_F32, 2, ne, NULL), 0);
    REQUIRE(gguf_writer_begin(w, path, &e) == 0);
    CHECK_EQ(gguf_writer_write_data(w, data, 100, &e), 0);
    CHECK_EQ(gguf_writer_write_data(w, data, 200, &e), MOED_EINVAL);
    CHECK_MSG(strstr(e.msg, "tensor 0 'a': 200 bytes of data given, only 156 of its 256 bytes "
                            "left"), "msg: %s", e.msg);
    CHECK(stat(path, &st) != 0);
    CHECK_EQ(gguf_writer_end(w, &e), MOED_EINVAL); /* no stream left */
    gguf_writer_free(w);

    /* Ending with a tensor short of data: refused, file removed. */
    w = gguf_writer_new(3);
    CHECK_EQ(gguf_writer_add_tensor(w, "a", KT_F32, 2, ne, NULL), 0);
    CHECK_EQ(gguf_writer_add_tensor(w, "b", KT_F32, 1, ne, NULL), 0);
    REQUIRE(gguf_writer_begin(w, path, &e) == 0);
    CHECK_EQ(gguf_writer_write_data(w, data, 128, &e), 0);
    CHECK_EQ(gguf_writer_write_data(w, data, 128, &e), 0);
    CHECK_EQ(gguf_writer_end(w, &e), MOED_EINVAL);
    CHECK_MSG(strstr(e.msg, "tensor 1 'b' has 0 of its 128 bytes"), "msg: %s", e.msg);
    CHECK(stat(path, &st) != 0);
    gguf_writer_free(w);

    /* Freed mid-stream: the partial file goes too. */
    w = gguf_writer_new(2);
    CHECK_EQ(gguf_writer_add_tensor(w, "a", KT_F32, 2, ne, NULL), 0);
    REQUIRE(gguf_writer_begin(w, path, &e) == 0);
    CHECK(stat(path, &st) == 0);
    CHECK_EQ(gguf_writer_set_u32(w, "late", 1), MOED_EINVAL); /* not while streaming */
    gguf_writer_free(w);
    CHECK(stat(path, &st) != 0);

    /* write_file without data for a tensor. */
    w = gguf_writer_new(3);
    CHECK_EQ(gguf_writer_add_tensor(w, "nodata", KT_F32, 2, ne, NULL), 0);
    CHECK_EQ(gguf_writer_write_file(w, path, &e), MOED_EINVAL);
    CHECK_MSG(strstr(e.msg, "'nodata': no data"), "msg: %s", e.msg);
    CHECK(stat(path, &st) != 0);
    gguf_writer_free(w);

    /* A directory that does not exist. */
    w = gguf_writer_new(3);
    CHECK_EQ(gguf_writer_begin(w, "/nonexistent-dir/x.gguf", &e), MOED_EIO);
    CHECK(strstr(e.msg, "/nonexistent-dir/x.gguf") != NULL);
    gguf_writer_free(w);
}

TEST(gguf_writer_rejects_bad_input)
{
    int64_t ne[4] = {32, 2, 1, 1};
    struct moed_err e = {0};
    uint8_t *buf;
    size_t size;
    CHECK(gguf_writer_new(1) == NULL);
    CHECK(gguf_writer_new(4) == NULL);

    struct {
        const char *what, *msg;
    } cases[] = {
        {"dup tensor", "tensor 'a': duplicate name"},
        {"bad type", "tensor 'b': unknown tensor type 4"},
        {"ne0 block", "tensor 'c': ne[0] = 100 is not a multiple of the Q4_K block size 256"},
        {"n_dims", "tensor 'd': n_dims 5 not in 1..4"},
        {"negative", "tensor 'e': ne[1] = -2 is negative"},
        {"align 3", "general.alignment = 3: must be a non-zero power of two"},
        {"align 0", "general.alignment = 0: must be a non-zero power of two"},
        {"align type", "general.alignment has type string, must be u32"},
        {"bool arr", "key 'bools': element 1: bool value 2"},
        {"arr str", "key 'x': gguf_writer_set_arr takes fixed-size elements, not string"},
        {"null str", "key 's': NULL string"},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        struct gguf_writer *w = gguf_writer_new(3);
        int rc = 0;
        switch (c) {
        case 0:
            CHECK_EQ(gguf_writer_add_tensor(w, "a", KT_F32, 1, ne, NULL), 0);
            rc = gguf_writer_add_tensor(w, "a", KT_F16, 1, ne, NULL);
            break;
        case 1: rc = gguf_writer_add_tensor(w, "b", 4, 1, ne, NULL); break;
        case 2: {
            int64_t n2[1] = {100};
            rc = gguf_writer_add_tensor(w, "c", KT_Q4_K, 1, n2, NULL);
            break;
        }
        case 3: rc = gguf_writer_add_tensor(w, "d", KT_F32, 5, ne, NULL); break;
        case 4: {
            int64_t n2[2] = {32, -2};
            rc = gguf_writer_add_tensor(w, "e", KT_F32, 2, n2, NULL);
            break;
        }
        case 5: rc = gguf_writer_set_u32(w, "general.alignment", 3); break;
        case 6: rc = gguf_writer_set_u32(w, "general.alignment", 0); break;
        case 7: rc = gguf_writer_set_str(w, "general.alignment", "32"); break;
        case 8: {
            uint8_t bools[2] = {1, 2};
            rc = gguf_writer_set_arr(w, "bools", GGUF_BOOL, bools, 2);
            break;
        }
        case 9: rc = gguf_writer_set_arr(w, "x", GGUF_STRING, "abc", 1); break;
        case 10: rc = gguf_writer_set_str(w, "s", NULL); break;
        }
        CHECK_MSG(rc != 0, "%s accepted", cases[c].what);
        const char *m = gguf_writer_error(w);
        CHECK_MSG(m && strstr(m, cases[c].msg), "%s: message '%s' lacks '%s'", cases[c].what,
                  m ? m : "(none)", cases[c].msg);
        /* The first failure is sticky: no file is written. */
        CHECK(gguf_writer_write_mem(w, &buf, &size, &e) != 0);
        CHECK_MSG(strstr(e.msg, cases[c].msg), "write_mem: '%s'", e.msg);
        gguf_writer_free(w);
    }

    /* 9 levels of arrays are one too many (8 are fine). */
    struct gguf_value lv[10];
    memset(lv, 0, sizeof lv);
    for (int i = 0; i < 10; i++) {
        lv[i].type = GGUF_ARRAY;
        lv[i].v.arr.elem = i == 9 ? GGUF_U8 : GGUF_ARRAY;
        lv[i].v.arr.n = i == 9 ? 0 : 1;
        lv[i].v.arr.items = i == 9 ? NULL : &lv[i + 1];
    }
    struct gguf_writer *w = gguf_writer_new(3);
    struct gguf_kv deep = {{"deep", 4}, lv[2]}; /* 8 levels */
    CHECK_EQ(gguf_writer_set_kv(w, &deep), 0);
    REQUIRE(gguf_writer_write_mem(w, &buf, &size, &e) == 0);
    struct gguf g;
    CHECK_MSG(gguf_open_mem(&g, buf, size, &e) == 0, "8 levels: %s", e.msg);
    gguf_close(&g);
    free(buf);
    deep.val = lv[1]; /* 9 levels */
    CHECK(gguf_writer_set_kv(w, &deep) != 0);
    CHECK(gguf_writer_error(w) && strstr(gguf_writer_error(w), "nested more than 8"));
    gguf_writer_free(w);
}

/* ---- getters ------------------------------------------------------------------ */

static int open_values(struct gguf *g, uint8_t **buf)
{
    struct gguf_writer *w = gguf_writer_new(3);
    set_all_values(w);
    size_t size;
    struct moed_err e = {0};
    int rc = gguf_writer_write_mem(w, buf, &size, &e);
    gguf_writer_free(w);
    return rc ? rc : gguf_open_mem(g, *buf, size, &e);
}

TEST(gguf_getter_errors)
{
    struct gguf g;
    uint8_t *buf;
    REQUIRE(open_values(&g, &buf) == 0);
    struct moed_err e = {0};
    uint32_t u32;
    uint64_t u64;
    int32_t i32;
    float f;
    bool b;
    struct gguf_str s;
    const struct gguf_value *a;

    CHECK_EQ(gguf_get_u32(&g, "nope", &u32, &e), MOED_ENOTFOUND);
    CHECK(strstr(e.msg, "key 'nope' not found"));
    CHECK_EQ(gguf_get_u32(&g, "general.name", &u32, &e), MOED_ETYPE);
    CHECK_MSG(strstr(e.msg, "key 'general.name' has type string, wanted u32"), "%s", e.msg);
    CHECK_EQ(gguf_get_str(&g, "t.u32", &s, &e), MOED_ETYPE);
    CHECK_MSG(strstr(e.msg, "key 't.u32' has type u32, wanted string"), "%s", e.msg);
    CHECK_EQ(gguf_get_bool(&g, "t.u8", &b, &e), MOED_ETYPE);
    CHECK_MSG(strstr(e.msg, "has type u8, wanted bool"), "%s", e.msg);
    CHECK_EQ(gguf_get_f32(&g, "t.i32", &f, &e), MOED_ETYPE);
    CHECK_MSG(strstr(e.msg, "has type i32, wanted f32"), "%s", e.msg);
    CHECK_EQ(gguf_get_u32(&g, "t.f32", &u32, &e), MOED_ETYPE);
    CHECK_EQ(gguf_get_u32(&g, "t.bool", &u32, &e), MOED_ETYPE); /* bool is not an integer */
    CHECK_EQ(gguf_get_u32(&g, "a.u32", &u32, &e), MOED_ETYPE);
    CHECK_MSG(strstr(e.msg, "has type array of u32, wanted u32"), "%s", e.msg);
    CHECK_EQ(gguf_get_arr(&g, "a.u32", GGUF_I32, &a, &e), MOED_ETYPE);
    CHECK_MSG(strstr(e.msg, "key 'a.u32' has type array of u32, wanted array of i32"), "%s",
              e.msg);
    CHECK_EQ(gguf_get_arr(&g, "t.u32", GGUF_U32, &a, &e), MOED_ETYPE);
    CHECK_MSG(strstr(e.msg, "has type u32, wanted array of u32"), "%s", e.msg);

    /* Range: values that do not fit the target type. */
    CHECK_EQ(gguf_get_u32(&g, "t.neg", &u32, &e), MOED_ERANGE);
    CHECK_MSG(strstr(e.msg, "key 't.neg' = -1 (i32) out of range for u32"), "%s", e.msg);
    CHECK_EQ(gguf_get_u64(&g, "t.neg", &u64, &e), MOED_ERANGE);
    CHECK_EQ(gguf_get_u32(&g, "t.u64", &u32, &e), MOED_ERANGE);
    CHECK_MSG(strstr(e.msg, "18446744073709551615 (u64) out of range for u32"), "%s", e.msg);
    CHECK_EQ(gguf_get_i32(&g, "t.u32", &i32, &e), MOED_ERANGE);
    CHECK_EQ(gguf_get_i32(&g, "t.i64", &i32, &e), MOED_ERANGE);
    CHECK_EQ(gguf_get_u32(&g, "t.i8", &u32, &e), MOED_ERANGE);
    /* ... and values that do. */
    CHECK_EQ(gguf_get_u64(&g, "t.u8", &u64, &e), 0);
    CHECK_EQ(u64, 250);
    CHECK_EQ(gguf_get_i32(&g, "t.u16", &i32, &e), 0);
    CHECK_EQ(i32, 65535);
    CHECK_EQ(gguf_get_i32(&g, "t.neg", &i32, &e), 0);
    CHECK_EQ(i32, -1);
    /* A NULL error pointer is allowed. */
    CHECK_EQ(gguf_get_u32(&g, "nope", &u32, NULL), MOED_ENOTFOUND);
    gguf_close(&g);
    free(buf);
    /* gguf_close on a closed struct is harmless. */
    gguf_close(&g);
}

TEST(gguf_many_lookups)
{
    /* Thousands of keys and tensors: found by hash, all distinct. */
    struct gguf_writer *w = gguf_writer_new(3);
    char name[64];
    int64_t ne[1] = {32};
    static uint8_t zero[32 * 4];
    for (int i = 0; i < 3000; i++) {
        snprintf(name, sizeof name, "k.%d", i);
        CHECK_EQ(gguf_writer_set_u32(w, name, (uint32_t)i * 3), 0);
        snprintf(name, sizeof name, "blk.%d.weight", i);
        CHECK_EQ(gguf_writer_add_tensor(w, name, KT_F32, 1, ne, zero), 0);
    }
    uint8_t *buf;
    size_t size;
    struct moed_err e = {0};
    REQUIRE(gguf_writer_write_mem(w, &buf, &size, &e) == 0);
    gguf_writer_free(w);
    struct gguf g;
    REQUIRE(gguf_open_mem(&g, buf, size, &e) == 0);
    for (int i = 0; i < 3000; i++) {
        uint32_t v = 0;
        snprintf(name, sizeof name, "k.%d", i);
        CHECK_EQ(gguf_get_u32(&g, name, &v, &e), 0);
        CHECK_EQ(v, (uint32_t)i * 3);
        snprintf(name, sizeof name, "blk.%d.weight", i);
        const struct gguf_tensor *t = gguf_find_tensor(&g, name);
        CHECK(t == &g.tensors[i]);
    }
    CHECK(gguf_find(&g, "k.3000") == NULL);
    CHECK(gguf_find(&g, "") == NULL);
    gguf_close(&g);
    free(buf);
}

/* ---- the real vocabulary files ------------------------------------------------ */

static const char *const vocabs[] = {
    "deepseek-coder", "deepseek-llm", "falcon", "gpt-2", "llama-spm",
    "mpt", "phi-3", "refact", "starcoder",
};

TEST(gguf_vocab_files_open)
{
    int opened = 0;
    for (size_t i = 0; i < sizeof vocabs / sizeof vocabs[0]; i++) {
        char path[512];
        snprintf(path, sizeof path, "%s/vocab/ggml-vocab-%s.gguf", test_shared_dir(), vocabs[i]);
        if (access(path, R_OK) != 0)
            continue;
        struct gguf g;
        struct moed_err e = {0};
        int rc = gguf_open(&g, path, &e);
        CHECK_MSG(rc == 0, "%s: %s", vocabs[i], e.msg);
        if (rc)
            continue;
        opened++;
        CHECK_EQ(g.version, 3);
        CHECK_EQ(g.n_tensors, 0);
        struct gguf_str s;
        CHECK_EQ(gguf_get_str(&g, "general.architecture", &s, &e), 0);
        CHECK(s.len > 0);
        CHECK_EQ(gguf_get_str(&g, "tokenizer.ggml.model", &s, &e), 0);
        CHECK(gguf_str_eq(s, "gpt2") || gguf_str_eq(s, "llama"));
        const struct gguf_value *tok, *tt;
        REQUIRE(gguf_get_arr(&g, "tokenizer.ggml.tokens", GGUF_STRING, &tok, &e) == 0);
        CHECK_MSG(tok->v.arr.n >= 32000 && tok->v.arr.n <= 200000, "%s: %" PRIu64 " tokens",
                  vocabs[i], tok->v.arr.n);
        CHECK(gguf_arr_str(tok, 0).len > 0);
        CHECK_EQ(gguf_get_arr(&g, "tokenizer.ggml.token_type", GGUF_I32, &tt, &e), 0);
        CHECK_EQ(tt->v.arr.n, tok->v.arr.n);
        const struct gguf_value *sc;
        if (gguf_get_arr(&g, "tokenizer.ggml.scores", GGUF_F32, &sc, NULL) == 0)
            CHECK_EQ(sc->v.arr.n, tok->v.arr.n);
        uint32_t eos;
        CHECK_EQ(gguf_get_u32(&g, "tokenizer.ggml.eos_token_id", &eos, &e), 0);
        CHECK(eos < tok->v.arr.n);
        if (!strcmp(vocabs[i], "llama-spm")) {
            CHECK(gguf_str_eq(gguf_arr_str(tok, 0), "<unk>"));
            CHECK(gguf_str_eq(gguf_arr_str(tok, 1), "<s>"));
            CHECK_EQ(tok->v.arr.n, 32000);
        }
        if (!strcmp(vocabs[i], "gpt-2")) {
            const struct gguf_value *m;
            CHECK_EQ(gguf_get_arr(&g, "tokenizer.ggml.merges", GGUF_STRING, &m, &e), 0);
            CHECK_EQ(tok->v.arr.n, 50257);
        }
        gguf_close(&g);
    }
    if (opened == 0)
        SKIP("no vocab GGUFs under MOED_SHARED/vocab");
}

TEST(gguf_vocab_copy_round_trip)
{
    char path[512];
    snprintf(path, sizeof path, "%s/vocab/ggml-vocab-llama-spm.gguf", test_shared_dir());
    struct gguf g, g2;
    struct moed_err e = {0};
    if (gguf_open(&g, path, &e) != 0)
        SKIP("ggml-vocab-llama-spm.gguf not found");
    struct gguf_writer *w = gguf_writer_new(g.version);
    for (uint64_t i = 0; i < g.n_kv; i++)
        CHECK_EQ(gguf_writer_set_kv(w, &g.kv[i]), 0);
    uint8_t *buf;
    size_t size;
    REQUIRE(gguf_writer_write_mem(w, &buf, &size, &e) == 0);
    gguf_writer_free(w);
    /* The vocab files have no tensors, hence no padding: identical bytes. */
    CHECK_EQ(size, g.size);
    CHECK(size == g.size && !memcmp(buf, g.base, size));
    REQUIRE(gguf_open_mem(&g2, buf, size, &e) == 0);
    for (uint64_t i = 0; i < g.n_kv; i++)
        CHECK(value_eq(&g.kv[i].val, &g2.kv[i].val));
    gguf_close(&g2);
    gguf_close(&g);
    free(buf);
}

/* ---- moed info ------------------------------------------------------------------ */

/* bin/moed next to the running test binary (bin/moed-tests or
 * build-san/bin/moed-tests). */
static bool moed_binary(char *out, size_t size)
{
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0)
        return false;
    self[n] = '\0';
    char *slash = strrchr(self, '/');
    if (!slash)
        return false;
    *slash = '\0';
    snprintf(out, size, "%s/moed", self);
    return access(out, X_OK) == 0;
}

static int run_info(const char *moed, const char *args, const char *outp, const char *errp)
{
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "'%s' info %s >'%s' 2>'%s'", moed, args, outp, errp);
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

TEST(gguf_moed_info)
{
    char moed[PATH_MAX + 8];
    if (!moed_binary(moed, sizeof moed))
        SKIP("no moed binary next to the test binary");
    const char *tmp = test_tmp_dir();
    char good[512], bad[512], outp[512], errp[512];
    snprintf(good, sizeof good, "%s/info_good.gguf", tmp);
    snprintf(bad, sizeof bad, "%s/info_bad.gguf", tmp);
    snprintf(outp, sizeof outp, "%s/info.out", tmp);
    snprintf(errp, sizeof errp, "%s/info.err", tmp);

    struct gguf_writer *w = gguf_writer_new(3);
    set_all_values(w);
    CHECK_EQ(gguf_writer_set_str(w, "tokenizer.ggml.model", "gpt2"), 0);
    const char *toks[] = {"a", "b", "c"};
    CHECK_EQ(gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", toks, 3), 0);
    CHECK_EQ(gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", 2), 0);
    add_tensors(w);
    struct moed_err e = {0};
    REQUIRE(gguf_writer_write_file(w, good, &e) == 0);
    gguf_writer_free(w);

    char args[1100];
    snprintf(args, sizeof args, "'%s' --tensors", good);
    CHECK_EQ(run_info(moed, args, outp, errp), 0);
    char *out = test_read_file(outp, NULL), *err = test_read_file(errp, NULL);
    REQUIRE(out && err);
    CHECK_MSG(strstr(out, "architecture: \"qwen3moe\""), "output:\n%s", out);
    CHECK(strstr(out, "gguf version: 3"));
    CHECK(strstr(out, "t.u64 = 18446744073709551615"));
    CHECK(strstr(out, "a.i32 = [-2147483648, -1, 0, 2147483647]"));
    CHECK(strstr(out, "a.str = [4 x string]"));
    CHECK(strstr(out, "3 tokens"));
    CHECK(strstr(out, "eos 2"));
    CHECK(strstr(out, "Q4_K"));
    CHECK(strstr(out, "bits/weight:"));
    CHECK(strstr(out, "blk.0.ffn_gate_exps.weight"));
    CHECK_EQ(strlen(err), 0);
    free(out);
    free(err);

    /* A truncated copy: exit 1, exactly one line on stderr, nothing on stdout. */
    size_t n;
    char *bytes = test_read_file(good, &n);
    REQUIRE(bytes);
    FILE *f = fopen(bad, "wb");
    REQUIRE(f);
    fwrite(bytes, 1, n - 40, f);
    fclose(f);
    free(bytes);
    snprintf(args, sizeof args, "'%s'", bad);
    CHECK_EQ(run_info(moed, args, outp, errp), 1);
    out = test_read_file(outp, NULL);
    err = test_read_file(errp, NULL);
    REQUIRE(out && err);
    CHECK_EQ(strlen(out), 0);
    char prefix[600];
    snprintf(prefix, sizeof prefix, "moed info: %s: ", bad);
    CHECK_MSG(!strncmp(err, prefix, strlen(prefix)), "stderr: %s", err);
    CHECK_MSG(strstr(err, "beyond end of file"), "stderr: %s", err);
    char *nl = strchr(err, '\n');
    CHECK(nl && nl[1] == '\0');
    free(out);
    free(err);

    /* Usage errors: 2; --help: 0. */
    CHECK_EQ(run_info(moed, "", outp, errp), 2);
    CHECK_EQ(run_info(moed, "--bogus x", outp, errp), 2);
    CHECK_EQ(run_info(moed, "--help", outp, errp), 0);
    out = test_read_file(outp, NULL);
    CHECK(out && strstr(out, "usage: moed info"));
    free(out);
    unlink(good);
    unlink(bad);
    unlink(outp);
    unlink(errp);
}
