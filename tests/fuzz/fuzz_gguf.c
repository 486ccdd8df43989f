/*
 * libFuzzer target for the GGUF reader and writer.
 *
 * Every input goes through gguf_open_mem.  A refusal must come with a
 * one-line message.  An accepted file is walked whole: every key through
 * gguf_find and every typed getter (whose answers must agree with the
 * value's type), every array element through the gguf_arr_* helpers, every
 * tensor through gguf_find_tensor and its first and last data byte.  Then
 * the file is copied through the writer (gguf_writer_set_kv for each key,
 * gguf_writer_add_tensor for each tensor) and written to memory: whatever
 * the reader accepts the writer must accept, and the copy must read back
 * with the same keys, values and tensor bytes.
 *
 * Build and run: make fuzz FUZZ_SECONDS=60 (seeds in tests/fuzz/seeds/).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/gguf.h"

#define FUZZ_CHECK(c)                                                                     \
    do {                                                                                  \
        if (!(c)) {                                                                       \
            fprintf(stderr, "fuzz_gguf: check failed: %s (line %d)\n", #c, __LINE__);     \
            abort();                                                                      \
        }                                                                                 \
    } while (0)

static volatile uint64_t sink;

/* Name as a C string, or NULL when it holds a NUL (then no lookup by C
 * string can reach it). Caller frees. */
static char *cstr(struct gguf_str s)
{
    if (s.len && memchr(s.ptr, 0, s.len))
        return NULL;
    char *p = malloc(s.len + 1);
    FUZZ_CHECK(p);
    if (s.len)
        memcpy(p, s.ptr, s.len);
    p[s.len] = '\0';
    return p;
}

static bool is_int(enum gguf_vtype t)
{
    return t == GGUF_U8 || t == GGUF_I8 || t == GGUF_U16 || t == GGUF_I16 || t == GGUF_U32 ||
           t == GGUF_I32 || t == GGUF_U64 || t == GGUF_I64;
}

static void walk_value(const struct gguf_value *v)
{
    if (v->type == GGUF_STRING) {
        if (v->v.str.len)
            sink += (uint8_t)v->v.str.ptr[0] + (uint8_t)v->v.str.ptr[v->v.str.len - 1];
        return;
    }
    if (v->type != GGUF_ARRAY)
        return;
    enum gguf_vtype el = v->v.arr.elem;
    for (uint64_t i = 0; i < v->v.arr.n; i++) {
        if (el == GGUF_STRING) {
            struct gguf_str s = gguf_arr_str(v, i);
            if (s.len)
                sink += (uint8_t)s.ptr[s.len - 1];
        } else if (el == GGUF_ARRAY) {
            walk_value(gguf_arr_item(v, i));
        } else if (el == GGUF_F32 || el == GGUF_F64) {
            sink += (uint64_t)(gguf_arr_float(v, i) != 0);
        } else {
            sink += (uint64_t)gguf_arr_int(v, i);
        }
    }
}

static void check_getters(const struct gguf *g, const char *key, const struct gguf_kv *kv)
{
    enum gguf_vtype t = kv->val.type;
    uint32_t u32;
    uint64_t u64;
    int32_t i32;
    int64_t i64;
    float f;
    double d;
    bool b;
    struct gguf_str s;
    const struct gguf_value *a;
    struct moed_err e;
    int rc;
    rc = gguf_get_u32(g, key, &u32, &e);
    FUZZ_CHECK(is_int(t) ? (rc == 0 || rc == MOED_ERANGE) : rc == MOED_ETYPE);
    rc = gguf_get_u64(g, key, &u64, &e);
    FUZZ_CHECK(is_int(t) ? (rc == 0 || rc == MOED_ERANGE) : rc == MOED_ETYPE);
    rc = gguf_get_i32(g, key, &i32, &e);
    FUZZ_CHECK(is_int(t) ? (rc == 0 || rc == MOED_ERANGE) : rc == MOED_ETYPE);
    rc = gguf_get_i64(g, key, &i64, &e);
    FUZZ_CHECK(is_int(t) ? (rc == 0 || rc == MOED_ERANGE) : rc == MOED_ETYPE);
    rc = gguf_get_f32(g, key, &f, &e);
    FUZZ_CHECK((t == GGUF_F32 || t == GGUF_F64) ? (rc == 0 || rc == MOED_ERANGE) : rc == MOED_ETYPE);
    rc = gguf_get_f64(g, key, &d, &e);
    FUZZ_CHECK((t == GGUF_F32 || t == GGUF_F64) == (rc == 0));
    rc = gguf_get_bool(g, key, &b, &e);
    FUZZ_CHECK((t == GGUF_BOOL) == (rc == 0));
    rc = gguf_get_str(g, key, &s, &e);
    FUZZ_CHECK((t == GGUF_STRING) == (rc == 0));
    for (int el = 0; el < GGUF_VTYPE_COUNT; el++) {
        rc = gguf_get_arr(g, key, (enum gguf_vtype)el, &a, &e);
        FUZZ_CHECK((t == GGUF_ARRAY && kv->val.v.arr.elem == (enum gguf_vtype)el) == (rc == 0));
        if (rc == 0)
            FUZZ_CHECK(a == &kv->val);
        else
            FUZZ_CHECK(e.msg[0] && !strchr(e.msg, '\n'));
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
        return !memcmp(&a->v.f64, &b->v.f64, sizeof(double)) || a->v.f64 == b->v.f64 ||
               (a->v.f64 != a->v.f64 && b->v.f64 != b->v.f64);
    case GGUF_ARRAY: {
        if (a->v.arr.elem != b->v.arr.elem || a->v.arr.n != b->v.arr.n)
            return false;
        enum gguf_vtype el = a->v.arr.elem;
        for (uint64_t i = 0; i < a->v.arr.n; i++) {
            if (el == GGUF_STRING || el == GGUF_ARRAY) {
                if (!value_eq(gguf_arr_item(a, i), gguf_arr_item(b, i)))
                    return false;
            }
        }
        if (el == GGUF_STRING || el == GGUF_ARRAY || a->v.arr.n == 0)
            return true;
        size_t sz = (el == GGUF_U8 || el == GGUF_I8 || el == GGUF_BOOL) ? 1
                  : (el == GGUF_U16 || el == GGUF_I16) ? 2
                  : (el == GGUF_U32 || el == GGUF_I32 || el == GGUF_F32) ? 4 : 8;
        return !memcmp(a->v.arr.raw, b->v.arr.raw, a->v.arr.n * sz);
    }
    default:
        return a->v.u64 == b->v.u64;
    }
}

/* Copy through the writer; the reader must take the copy back. */
static void round_trip(const struct gguf *g)
{
    struct gguf_writer *w = gguf_writer_new(g->version);
    FUZZ_CHECK(w);
    for (uint64_t i = 0; i < g->n_kv; i++)
        FUZZ_CHECK(gguf_writer_set_kv(w, &g->kv[i]) == 0);
    uint64_t n_t = 0;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const struct gguf_tensor *t = &g->tensors[i];
        char *name = cstr(t->name);
        if (!name)
            continue;
        FUZZ_CHECK(gguf_writer_add_tensor(w, name, t->type, t->n_dims, t->ne, t->data) == 0);
        n_t++;
        free(name);
    }
    FUZZ_CHECK(gguf_writer_error(w) == NULL);
    uint8_t *buf;
    size_t size;
    struct moed_err e;
    int rc = gguf_writer_write_mem(w, &buf, &size, &e);
    if (rc)
        fprintf(stderr, "fuzz_gguf: write_mem: %s\n", e.msg);
    FUZZ_CHECK(rc == 0);
    gguf_writer_free(w);

    struct gguf g2;
    rc = gguf_open_mem(&g2, buf, size, &e);
    if (rc)
        fprintf(stderr, "fuzz_gguf: reopen: %s\n", e.msg);
    FUZZ_CHECK(rc == 0);
    FUZZ_CHECK(g2.version == g->version && g2.n_kv == g->n_kv && g2.n_tensors == n_t);
    FUZZ_CHECK(g2.alignment == g->alignment);
    for (uint64_t i = 0; i < g->n_kv; i++) {
        FUZZ_CHECK(g2.kv[i].key.len == g->kv[i].key.len);
        FUZZ_CHECK(!g->kv[i].key.len || !memcmp(g2.kv[i].key.ptr, g->kv[i].key.ptr, g->kv[i].key.len));
        FUZZ_CHECK(value_eq(&g->kv[i].val, &g2.kv[i].val));
    }
    for (uint64_t i = 0, j = 0; i < g->n_tensors; i++) {
        const struct gguf_tensor *t = &g->tensors[i];
        if (t->name.len && memchr(t->name.ptr, 0, t->name.len))
            continue;
        const struct gguf_tensor *u = &g2.tensors[j++];
        FUZZ_CHECK(u->type == t->type && u->nbytes == t->nbytes && u->n_dims == t->n_dims);
        FUZZ_CHECK(!t->nbytes || !memcmp(u->data, t->data, t->nbytes));
    }
    gguf_close(&g2);
    free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct gguf g;
    struct moed_err e;
    memset(&e, 0, sizeof e);
    if (gguf_open_mem(&g, data, size, &e) != 0) {
        FUZZ_CHECK(e.msg[0] != '\0');
        FUZZ_CHECK(strchr(e.msg, '\n') == NULL);
        FUZZ_CHECK(g.kv == NULL && g.tensors == NULL && g.priv == NULL);
        return 0;
    }
    FUZZ_CHECK(g.version == 2 || g.version == 3);
    FUZZ_CHECK(g.alignment && (g.alignment & (g.alignment - 1)) == 0);
    for (uint64_t i = 0; i < g.n_kv; i++) {
        const struct gguf_kv *kv = &g.kv[i];
        walk_value(&kv->val);
        char *key = cstr(kv->key);
        if (!key)
            continue;
        FUZZ_CHECK(gguf_find(&g, key) == kv); /* keys are unique */
        check_getters(&g, key, kv);
        free(key);
    }
    FUZZ_CHECK(gguf_find(&g, "moed.fuzz.absent.key") == NULL ||
               gguf_str_eq(gguf_find(&g, "moed.fuzz.absent.key")->key, "moed.fuzz.absent.key"));
    for (uint64_t i = 0; i < g.n_tensors; i++) {
        const struct gguf_tensor *t = &g.tensors[i];
        FUZZ_CHECK(t->n_dims >= 1 && t->n_dims <= GGUF_MAX_DIMS);
        FUZZ_CHECK(kern_type_traits(t->type) != NULL);
        FUZZ_CHECK(t->offset % g.alignment == 0);
        const uint8_t *p = t->data;
        FUZZ_CHECK(p >= g.base + g.data_offset && p <= g.base + g.size);
        FUZZ_CHECK(t->nbytes <= (uint64_t)(g.base + g.size - p));
        if (t->nbytes)
            sink += p[0] + p[t->nbytes - 1];
        char *name = cstr(t->name);
        if (name) {
            FUZZ_CHECK(gguf_find_tensor(&g, name) == t);
            free(name);
        }
    }
    round_trip(&g);
    gguf_close(&g);
    return 0;
}
