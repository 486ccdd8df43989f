/*
 * GGUF reader (see gguf.h for the layout and the API).
 *
 * gguf_open maps the file read-only and hands the bytes to the same parser
 * that gguf_open_mem uses.  The parser walks the file once with a cursor
 * that knows how many bytes are left; every read asks the cursor first, so
 * no count, length or offset from the file is used before it has been
 * compared with what the file can hold.  Counts are bounded by the smallest
 * encoding of one element (a key-value pair takes at least 13 bytes, a
 * tensor info 32, an array element its fixed size, 8 for a string, 12 for an
 * array), so a hostile count fails at once instead of driving a huge
 * allocation.  Tensor shapes are multiplied with overflow checks, sizes come
 * from the type table (kernels/cpu/types.h), and after the infos every
 * tensor's data range is checked against the file and against the others.
 *
 * Parsed values point into the file (strings, fixed-size array data); only
 * arrays of strings and arrays of arrays get heap-allocated item lists.
 * Keys and tensor names are indexed by hash (priv) so that the loaders'
 * thousands of lookups stay cheap.
 *
 * Error messages are built inside out: the innermost reader says what was
 * wrong ("string of 900 bytes at offset 77 runs past the end of the file"),
 * callers prefix where ("key 3 'tokenizer.ggml.tokens': element 12: ").
 */
#include "model/gguf.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "model/gguf_internal.h"

/* Smallest encodings, used to bound counts before allocating. */
#define MIN_KV_BYTES (8 + 4 + 1)             /* empty key, type, a u8 */
#define MIN_TENSOR_BYTES (8 + 4 + 8 + 4 + 8) /* empty name, 1 dim, type, offset */
#define MIN_STR_BYTES 8
#define MIN_ARR_BYTES (4 + 8)

/* The indexes reach names through kv/tensors copied here (not through the
 * struct gguf, which callers may move). */
struct gguf_priv {
    struct gguf_index keys;
    struct gguf_index tensors;
    const struct gguf_kv *kv;
    const struct gguf_tensor *tensors_arr;
};

/* ---- shared helpers (also used by the writer) ----------------------------- */

size_t gguf_vtype_size(uint32_t t)
{
    switch (t) {
    case GGUF_U8: case GGUF_I8: case GGUF_BOOL: return 1;
    case GGUF_U16: case GGUF_I16: return 2;
    case GGUF_U32: case GGUF_I32: case GGUF_F32: return 4;
    case GGUF_U64: case GGUF_I64: case GGUF_F64: return 8;
    default: return 0;
    }
}

int gguf_vtype_is_int(uint32_t t)
{
    switch (t) {
    case GGUF_U8: case GGUF_I8: case GGUF_U16: case GGUF_I16:
    case GGUF_U32: case GGUF_I32: case GGUF_U64: case GGUF_I64: return 1;
    default: return 0;
    }
}

int gguf_vtype_is_signed(uint32_t t)
{
    return t == GGUF_I8 || t == GGUF_I16 || t == GGUF_I32 || t == GGUF_I64;
}

const char *gguf_vtype_name(uint32_t t)
{
    static const char *const names[GGUF_VTYPE_COUNT] = {
        [GGUF_U8] = "u8",     [GGUF_I8] = "i8",         [GGUF_U16] = "u16",
        [GGUF_I16] = "i16",   [GGUF_U32] = "u32",       [GGUF_I32] = "i32",
        [GGUF_F32] = "f32",   [GGUF_BOOL] = "bool",     [GGUF_STRING] = "string",
        [GGUF_ARRAY] = "array", [GGUF_U64] = "u64",     [GGUF_I64] = "i64",
        [GGUF_F64] = "f64",
    };
    return t < GGUF_VTYPE_COUNT ? names[t] : "?";
}

bool gguf_str_eq(struct gguf_str s, const char *c)
{
    size_t n = strlen(c);
    return s.len == n && (n == 0 || memcmp(s.ptr, c, n) == 0);
}

const char *gguf_quote(char *buf, size_t size, const char *p, uint64_t len)
{
    static const char hex[] = "0123456789abcdef";
    assert(size >= 8);
    size_t o = 0;
    for (uint64_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)p[i];
        size_t need = (c >= 0x20 && c < 0x7f && c != '\\' && c != '\'') ? 1 : 4;
        if (o + need + 4 > size) { /* room for "..." and the NUL */
            memcpy(buf + o, "...", 3);
            o += 3;
            break;
        }
        if (need == 1) {
            buf[o++] = (char)c;
        } else {
            buf[o++] = '\\';
            buf[o++] = 'x';
            buf[o++] = hex[c >> 4];
            buf[o++] = hex[c & 15];
        }
    }
    buf[o] = '\0';
    return buf;
}

/* FNV-1a, then murmur3's 64-bit finalizer so that the bucket (the low bits)
 * depends on every input bit: names that differ only in high bits of their
 * bytes would otherwise share buckets and turn probing quadratic. */
static uint64_t name_hash(const char *p, size_t len)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)p[i]) * 0x100000001b3ull;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 33;
    return h;
}

void gguf_index_init(struct gguf_index *ix, struct gguf_str (*name_of)(const void *, uint64_t),
                     const void *ctx)
{
    memset(ix, 0, sizeof *ix);
    ix->name_of = name_of;
    ix->ctx = ctx;
}

void gguf_index_free(struct gguf_index *ix)
{
    free(ix->slot);
    ix->slot = NULL;
    ix->cap = ix->n = 0;
}

int64_t gguf_index_find(const struct gguf_index *ix, const char *name, size_t len)
{
    if (ix->cap == 0)
        return -1;
    size_t mask = ix->cap - 1;
    for (size_t s = name_hash(name, len) & mask;; s = (s + 1) & mask) {
        uint64_t v = ix->slot[s];
        if (v == 0)
            return -1;
        struct gguf_str n = ix->name_of(ix->ctx, v - 1);
        if (n.len == len && (len == 0 || memcmp(n.ptr, name, len) == 0))
            return (int64_t)(v - 1);
    }
}

static void index_put(uint64_t *slot, size_t cap, uint64_t h, uint64_t v)
{
    size_t mask = cap - 1;
    size_t s = h & mask;
    while (slot[s] != 0)
        s = (s + 1) & mask;
    slot[s] = v;
}

int gguf_index_add(struct gguf_index *ix, uint64_t i, uint64_t *dup)
{
    struct gguf_str name = ix->name_of(ix->ctx, i);
    int64_t found = gguf_index_find(ix, name.ptr, name.len);
    if (found >= 0) {
        if (dup)
            *dup = (uint64_t)found;
        return 1;
    }
    if ((ix->n + 1) * 2 > ix->cap) { /* keep the load under one half */
        size_t cap = ix->cap ? ix->cap * 2 : 16;
        if (cap < ix->cap || cap > SIZE_MAX / sizeof(uint64_t))
            return MOED_ENOMEM;
        uint64_t *slot = calloc(cap, sizeof *slot);
        if (!slot)
            return MOED_ENOMEM;
        for (size_t s = 0; s < ix->cap; s++) {
            if (ix->slot[s]) {
                struct gguf_str n = ix->name_of(ix->ctx, ix->slot[s] - 1);
                index_put(slot, cap, name_hash(n.ptr, n.len), ix->slot[s]);
            }
        }
        free(ix->slot);
        ix->slot = slot;
        ix->cap = cap;
    }
    index_put(ix->slot, ix->cap, name_hash(name.ptr, name.len), i + 1);
    ix->n++;
    return 0;
}

/* ---- the cursor ------------------------------------------------------------ */

struct rd {
    const uint8_t *p;
    size_t size;
    size_t pos;
};

static size_t rd_left(const struct rd *r) { return r->size - r->pos; }

static int rd_bytes(struct rd *r, void *out, size_t n, const char *what, struct moed_err *e)
{
    if (n > rd_left(r))
        return moed_err_set(e, MOED_EFORMAT,
                            "truncated: %s at offset %zu needs %zu bytes, file has %zu left",
                            what, r->pos, n, rd_left(r));
    memcpy(out, r->p + r->pos, n);
    r->pos += n;
    return 0;
}

static int rd_u32(struct rd *r, uint32_t *v, const char *what, struct moed_err *e)
{
    return rd_bytes(r, v, sizeof *v, what, e);
}

static int rd_u64(struct rd *r, uint64_t *v, const char *what, struct moed_err *e)
{
    return rd_bytes(r, v, sizeof *v, what, e);
}

static int rd_str(struct rd *r, struct gguf_str *s, const char *what, struct moed_err *e)
{
    /* Hot for vocabularies (150k strings): no formatting unless it fails. */
    if (rd_left(r) < sizeof s->len)
        return moed_err_set(e, MOED_EFORMAT,
                            "truncated: %s length at offset %zu needs 8 bytes, file has %zu left",
                            what, r->pos, rd_left(r));
    memcpy(&s->len, r->p + r->pos, sizeof s->len);
    r->pos += sizeof s->len;
    if (s->len > rd_left(r))
        return moed_err_set(e, MOED_EFORMAT,
                            "truncated: %s of %" PRIu64 " bytes at offset %zu, file has %zu left",
                            what, s->len, r->pos, rd_left(r));
    s->ptr = (const char *)r->p + r->pos;
    r->pos += (size_t)s->len;
    return 0;
}

/* ---- values ---------------------------------------------------------------- */

static void value_free(struct gguf_value *v)
{
    if (v->type == GGUF_ARRAY && v->v.arr.items) {
        for (uint64_t i = 0; i < v->v.arr.n; i++)
            value_free(&v->v.arr.items[i]);
        free(v->v.arr.items);
        v->v.arr.items = NULL;
    }
}

/* A scalar of fixed-size type t at p (little-endian) into v. */
static void scalar_load(struct gguf_value *v, uint32_t t, const uint8_t *p)
{
    v->type = (enum gguf_vtype)t;
    switch (t) {
    case GGUF_U8: case GGUF_BOOL: v->v.u64 = p[0]; break;
    case GGUF_I8: { int8_t x; memcpy(&x, p, 1); v->v.i64 = x; break; }
    case GGUF_U16: { uint16_t x; memcpy(&x, p, 2); v->v.u64 = x; break; }
    case GGUF_I16: { int16_t x; memcpy(&x, p, 2); v->v.i64 = x; break; }
    case GGUF_U32: { uint32_t x; memcpy(&x, p, 4); v->v.u64 = x; break; }
    case GGUF_I32: { int32_t x; memcpy(&x, p, 4); v->v.i64 = x; break; }
    case GGUF_U64: memcpy(&v->v.u64, p, 8); break;
    case GGUF_I64: memcpy(&v->v.i64, p, 8); break;
    case GGUF_F32: { float x; memcpy(&x, p, 4); v->v.f64 = x; break; }
    case GGUF_F64: memcpy(&v->v.f64, p, 8); break;
    default: assert(!"not a fixed-size type");
    }
}

/* level: how many arrays enclose this value (0 for a key's own value). */
static int parse_value(struct rd *r, uint32_t type, int level, struct gguf_value *out,
                       struct moed_err *e)
{
    memset(out, 0, sizeof *out);
    if (type >= GGUF_VTYPE_COUNT)
        return moed_err_set(e, MOED_EFORMAT, "unknown value type %" PRIu32, type);
    out->type = (enum gguf_vtype)type;
    size_t fixed = gguf_vtype_size(type);
    if (fixed) {
        uint8_t buf[8] = {0};
        int rc = rd_bytes(r, buf, fixed, gguf_vtype_name(type), e);
        if (rc)
            return rc;
        if (type == GGUF_BOOL && buf[0] > 1)
            return moed_err_set(e, MOED_EFORMAT, "bool value %u (must be 0 or 1)", buf[0]);
        scalar_load(out, type, buf);
        return 0;
    }
    if (type == GGUF_STRING)
        return rd_str(r, &out->v.str, "string", e);

    assert(type == GGUF_ARRAY);
    if (level + 1 > GGUF_MAX_NEST)
        return moed_err_set(e, MOED_EFORMAT, "arrays nested more than %d levels deep",
                            GGUF_MAX_NEST);
    uint32_t elem = 0;
    uint64_t n = 0;
    int rc = rd_u32(r, &elem, "array element type", e);
    if (!rc)
        rc = rd_u64(r, &n, "array length", e);
    if (rc)
        return rc;
    if (elem >= GGUF_VTYPE_COUNT)
        return moed_err_set(e, MOED_EFORMAT, "array of unknown element type %" PRIu32, elem);
    out->v.arr.elem = (enum gguf_vtype)elem;
    size_t esize = gguf_vtype_size(elem);
    size_t emin = esize ? esize : elem == GGUF_STRING ? MIN_STR_BYTES : MIN_ARR_BYTES;
    if (n > rd_left(r) / emin)
        return moed_err_set(e, MOED_EFORMAT,
                            "array of %" PRIu64 " %s at offset %zu runs past the end of the "
                            "file (%zu bytes left, at least %zu per element)",
                            n, gguf_vtype_name(elem), r->pos, rd_left(r), emin);
    if (esize) {
        const uint8_t *raw = r->p + r->pos;
        if (elem == GGUF_BOOL) {
            for (uint64_t i = 0; i < n; i++)
                if (raw[i] > 1)
                    return moed_err_set(e, MOED_EFORMAT,
                                        "element %" PRIu64 ": bool value %u (must be 0 or 1)", i,
                                        raw[i]);
        }
        out->v.arr.n = n;
        out->v.arr.raw = raw;
        r->pos += (size_t)(n * esize); /* n * esize <= left, checked above */
        return 0;
    }
    /* n <= left / 8, so n * sizeof(struct gguf_value) cannot overflow a
     * 64-bit size_t for any mappable file. */
    if (n) {
        out->v.arr.items = calloc((size_t)n, sizeof *out->v.arr.items);
        if (!out->v.arr.items)
            return moed_err_set(e, MOED_ENOMEM, "array of %" PRIu64 " %s: out of memory", n,
                                gguf_vtype_name(elem));
    }
    out->v.arr.n = n;
    for (uint64_t i = 0; i < n; i++) {
        rc = parse_value(r, elem, level + 1, &out->v.arr.items[i], e);
        if (rc)
            return moed_err_wrap(e, "element %" PRIu64, i);
    }
    return 0;
}

/* ---- header, metadata, tensor infos ----------------------------------------- */

static struct gguf_str key_of(const void *ctx, uint64_t i)
{
    return ((const struct gguf_priv *)ctx)->kv[i].key;
}

static struct gguf_str tensor_name_of(const void *ctx, uint64_t i)
{
    return ((const struct gguf_priv *)ctx)->tensors_arr[i].name;
}

static int parse_header(struct rd *r, struct gguf *g, struct moed_err *e)
{
    uint8_t magic[4];
    int rc = rd_bytes(r, magic, 4, "magic", e);
    if (rc)
        return rc;
    if (memcmp(magic, "FUGG", 4) == 0)
        return moed_err_set(e, MOED_EFORMAT, "big-endian GGUF not supported (magic \"FUGG\")");
    if (memcmp(magic, "GGUF", 4) != 0) {
        char q[GGUF_QUOTE_MAX];
        return moed_err_set(e, MOED_EFORMAT, "not a GGUF file: magic '%s' (expected 'GGUF')",
                            gguf_quote(q, sizeof q, (const char *)magic, 4));
    }
    uint32_t version = 0;
    if ((rc = rd_u32(r, &version, "version", e)))
        return rc;
    if (version != 2 && version != 3) {
        uint32_t swapped = __builtin_bswap32(version);
        if (swapped >= 1 && swapped <= 3)
            return moed_err_set(e, MOED_EFORMAT,
                                "big-endian GGUF not supported (version field 0x%08" PRIx32
                                " is version %" PRIu32 " byte-swapped)",
                                version, swapped);
        return moed_err_set(e, MOED_EUNSUPPORTED,
                            "GGUF version %" PRIu32 " not supported (moed reads v2 and v3)",
                            version);
    }
    g->version = version;
    if ((rc = rd_u64(r, &g->n_tensors, "tensor count", e)) ||
        (rc = rd_u64(r, &g->n_kv, "metadata count", e)))
        return rc;
    size_t left = rd_left(r);
    if (g->n_kv > left / MIN_KV_BYTES)
        return moed_err_set(e, MOED_EFORMAT,
                            "metadata count %" PRIu64 " is impossible: %zu bytes left hold at "
                            "most %zu key-value pairs",
                            g->n_kv, left, left / MIN_KV_BYTES);
    if (g->n_tensors > left / MIN_TENSOR_BYTES)
        return moed_err_set(e, MOED_EFORMAT,
                            "tensor count %" PRIu64 " is impossible: %zu bytes left hold at "
                            "most %zu tensor infos",
                            g->n_tensors, left, left / MIN_TENSOR_BYTES);
    return 0;
}

static int parse_kvs(struct rd *r, struct gguf *g, struct gguf_priv *pv, struct moed_err *e)
{
    uint64_t n = g->n_kv;
    g->n_kv = 0; /* counts parsed pairs, so gguf_close frees exactly those */
    if (n) {
        g->kv = calloc((size_t)n, sizeof *g->kv);
        if (!g->kv)
            return moed_err_set(e, MOED_ENOMEM, "%" PRIu64 " key-value pairs: out of memory", n);
    }
    pv->kv = g->kv;
    char q[GGUF_QUOTE_MAX];
    for (uint64_t i = 0; i < n; i++) {
        struct gguf_kv *kv = &g->kv[i];
        int rc = rd_str(r, &kv->key, "key", e);
        if (rc)
            return moed_err_wrap(e, "key %" PRIu64, i);
        gguf_quote(q, sizeof q, kv->key.ptr, kv->key.len);
        uint32_t type = 0;
        if ((rc = rd_u32(r, &type, "value type", e)))
            return moed_err_wrap(e, "key %" PRIu64 " '%s'", i, q);
        rc = parse_value(r, type, 0, &kv->val, e);
        g->n_kv = i + 1; /* the value may hold items even when it failed */
        if (rc)
            return moed_err_wrap(e, "key %" PRIu64 " '%s'", i, q);
        uint64_t dup = 0;
        rc = gguf_index_add(&pv->keys, i, &dup);
        if (rc == 1)
            return moed_err_set(e, MOED_EFORMAT, "key %" PRIu64 " '%s': duplicate of key %" PRIu64,
                                i, q, dup);
        if (rc)
            return moed_err_set(e, rc, "key index: out of memory");
    }
    return 0;
}

static int check_alignment(struct gguf *g, struct moed_err *e)
{
    g->alignment = GGUF_DEFAULT_ALIGNMENT;
    const struct gguf_kv *kv = gguf_find(g, "general.alignment");
    if (!kv)
        return 0;
    if (kv->val.type != GGUF_U32)
        return moed_err_set(e, MOED_EFORMAT, "general.alignment has type %s, must be u32",
                            gguf_vtype_name(kv->val.type));
    uint64_t a = kv->val.v.u64;
    if (a == 0 || (a & (a - 1)) != 0)
        return moed_err_set(e, MOED_EFORMAT,
                            "general.alignment = %" PRIu64 ": must be a non-zero power of two", a);
    g->alignment = (uint32_t)a;
    return 0;
}

static void shape_str(char *buf, size_t size, const struct gguf_tensor *t, uint32_t n_dims)
{
    size_t o = 0;
    o += (size_t)snprintf(buf, size, "[");
    for (uint32_t d = 0; d < n_dims && o < size; d++)
        o += (size_t)snprintf(buf + o, size - o, "%s%" PRId64, d ? ", " : "", t->ne[d]);
    if (o < size)
        snprintf(buf + o, size - o, "]");
}

static int parse_tensor(struct rd *r, struct gguf *g, uint64_t i, struct moed_err *e)
{
    struct gguf_tensor *t = &g->tensors[i];
    char q[GGUF_QUOTE_MAX], sh[128];
    int rc = rd_str(r, &t->name, "tensor name", e);
    if (rc)
        return moed_err_wrap(e, "tensor %" PRIu64, i);
    gguf_quote(q, sizeof q, t->name.ptr, t->name.len);
    if ((rc = rd_u32(r, &t->n_dims, "n_dims", e)))
        return moed_err_wrap(e, "tensor %" PRIu64 " '%s'", i, q);
    if (t->n_dims < 1 || t->n_dims > GGUF_MAX_DIMS)
        return moed_err_set(e, MOED_EFORMAT, "tensor %" PRIu64 " '%s': n_dims %" PRIu32
                            " not in 1..%d", i, q, t->n_dims, GGUF_MAX_DIMS);
    for (uint32_t d = 0; d < GGUF_MAX_DIMS; d++)
        t->ne[d] = 1;
    for (uint32_t d = 0; d < t->n_dims; d++) {
        uint64_t ne = 0;
        if ((rc = rd_u64(r, &ne, "dimension", e)))
            return moed_err_wrap(e, "tensor %" PRIu64 " '%s'", i, q);
        if (ne > INT64_MAX)
            return moed_err_set(e, MOED_EFORMAT, "tensor %" PRIu64 " '%s': ne[%" PRIu32
                                "] = %" PRId64 " is negative", i, q, d, (int64_t)ne);
        t->ne[d] = (int64_t)ne;
    }
    shape_str(sh, sizeof sh, t, t->n_dims);
    /* Element count must fit int64 (kernels index with int64). */
    int64_t nel = 1;
    for (uint32_t d = 0; d < t->n_dims; d++) {
        if (__builtin_mul_overflow(nel, t->ne[d], &nel))
            return moed_err_set(e, MOED_EFORMAT, "tensor %" PRIu64 " '%s': shape %s has more "
                                "than 2^63 elements", i, q, sh);
    }
    if ((rc = rd_u32(r, &t->type, "tensor type", e)))
        return moed_err_wrap(e, "tensor %" PRIu64 " '%s'", i, q);
    const struct kern_type_traits *tt = kern_type_traits(t->type);
    if (!tt)
        return moed_err_set(e, MOED_EFORMAT, "tensor %" PRIu64 " '%s': unknown tensor type %"
                            PRIu32, i, q, t->type);
    if (t->ne[0] % tt->blck != 0)
        return moed_err_set(e, MOED_EFORMAT, "tensor %" PRIu64 " '%s': ne[0] = %" PRId64
                            " is not a multiple of the %s block size %" PRIu32,
                            i, q, t->ne[0], tt->name, tt->blck);
    /* nbytes = (ne0 / blck) * block bytes * rows; the element count fits
     * int64, but the byte count of a wide block type may not. */
    uint64_t nbytes = (uint64_t)(t->ne[0] / tt->blck);
    bool ovf = __builtin_mul_overflow(nbytes, (uint64_t)tt->size, &nbytes);
    for (uint32_t d = 1; d < t->n_dims && !ovf; d++)
        ovf = __builtin_mul_overflow(nbytes, (uint64_t)t->ne[d], &nbytes);
    if (ovf)
        return moed_err_set(e, MOED_EFORMAT, "tensor %" PRIu64 " '%s': byte size of %s %s "
                            "overflows 64 bits", i, q, tt->name, sh);
    t->nbytes = nbytes;
    if ((rc = rd_u64(r, &t->offset, "tensor data offset", e)))
        return moed_err_wrap(e, "tensor %" PRIu64 " '%s'", i, q);
    if (t->offset % g->alignment != 0)
        return moed_err_set(e, MOED_EFORMAT, "tensor %" PRIu64 " '%s': data offset %" PRIu64
                            " is not a multiple of the alignment %" PRIu32,
                            i, q, t->offset, g->alignment);
    return 0;
}

struct span {
    uint64_t off, end, i;
};

static int span_cmp(const void *a, const void *b)
{
    const struct span *x = a, *y = b;
    if (x->off != y->off)
        return x->off < y->off ? -1 : 1;
    return x->i < y->i ? -1 : x->i > y->i;
}

/* Data ranges inside the file and disjoint from each other. */
static int check_data(struct gguf *g, struct moed_err *e)
{
    char q[GGUF_QUOTE_MAX], q2[GGUF_QUOTE_MAX];
    assert(g->data_offset <= g->size);
    uint64_t avail = g->size - g->data_offset;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        struct gguf_tensor *t = &g->tensors[i];
        if (t->offset > avail || t->nbytes > avail - t->offset)
            return moed_err_set(e, MOED_EFORMAT, "tensor %" PRIu64 " '%s': data [offset %"
                                PRIu64 ", %" PRIu64 " bytes] beyond end of file (%" PRIu64
                                " data bytes from offset %" PRIu64 ", file %zu bytes)",
                                i, gguf_quote(q, sizeof q, t->name.ptr, t->name.len), t->offset,
                                t->nbytes, avail, g->data_offset, g->size);
        t->data = g->base + g->data_offset + t->offset;
    }
    if (g->n_tensors < 2)
        return 0;
    struct span *sp = malloc((size_t)g->n_tensors * sizeof *sp);
    if (!sp)
        return moed_err_set(e, MOED_ENOMEM, "tensor overlap check: out of memory");
    size_t n = 0;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const struct gguf_tensor *t = &g->tensors[i];
        if (t->nbytes) /* empty tensors hold no bytes to share */
            sp[n++] = (struct span){t->offset, t->offset + t->nbytes, i};
    }
    qsort(sp, n, sizeof *sp, span_cmp);
    int rc = 0;
    for (size_t k = 1; k < n; k++) {
        /* Sorted by start: each range only needs checking against the
         * previous one, as that one ends last among those before it or
         * an earlier overlap would have been found. */
        if (sp[k].off < sp[k - 1].end) {
            const struct gguf_tensor *a = &g->tensors[sp[k - 1].i], *b = &g->tensors[sp[k].i];
            rc = moed_err_set(e, MOED_EFORMAT, "tensor %" PRIu64 " '%s': data [offset %" PRIu64
                              ", %" PRIu64 " bytes] overlaps tensor %" PRIu64 " '%s' [offset %"
                              PRIu64 ", %" PRIu64 " bytes]",
                              sp[k].i, gguf_quote(q, sizeof q, b->name.ptr, b->name.len),
                              b->offset, b->nbytes, sp[k - 1].i,
                              gguf_quote(q2, sizeof q2, a->name.ptr, a->name.len), a->offset,
                              a->nbytes);
            break;
        }
    }
    free(sp);
    return rc;
}

static int parse(struct gguf *g, struct moed_err *e)
{
    struct gguf_priv *pv = calloc(1, sizeof *pv);
    if (!pv)
        return moed_err_set(e, MOED_ENOMEM, "out of memory");
    g->priv = pv;
    gguf_index_init(&pv->keys, key_of, pv);
    gguf_index_init(&pv->tensors, tensor_name_of, pv);

    struct rd r = {g->base, g->size, 0};
    int rc = parse_header(&r, g, e);
    if (!rc)
        rc = parse_kvs(&r, g, pv, e);
    if (!rc)
        rc = check_alignment(g, e);
    if (rc)
        return rc;

    uint64_t n = g->n_tensors;
    g->n_tensors = 0;
    if (n) {
        g->tensors = calloc((size_t)n, sizeof *g->tensors);
        if (!g->tensors)
            return moed_err_set(e, MOED_ENOMEM, "%" PRIu64 " tensor infos: out of memory", n);
    }
    pv->tensors_arr = g->tensors;
    for (uint64_t i = 0; i < n; i++) {
        g->n_tensors = i + 1;
        if ((rc = parse_tensor(&r, g, i, e)))
            return rc;
        uint64_t dup = 0;
        rc = gguf_index_add(&pv->tensors, i, &dup);
        if (rc == 1) {
            char q[GGUF_QUOTE_MAX];
            const struct gguf_tensor *t = &g->tensors[i];
            return moed_err_set(e, MOED_EFORMAT, "tensor %" PRIu64 " '%s': duplicate name "
                                "(also tensor %" PRIu64 ")",
                                i, gguf_quote(q, sizeof q, t->name.ptr, t->name.len), dup);
        }
        if (rc)
            return moed_err_set(e, rc, "tensor index: out of memory");
    }

    /* The data section starts at the next multiple of the alignment.  pos
     * <= size and alignment <= 2^31, so the sum cannot wrap. */
    uint64_t a = g->alignment;
    g->data_offset = ((uint64_t)r.pos + a - 1) / a * a;
    if (g->n_tensors == 0) {
        /* No data section: the padding may be absent (llama.cpp's vocab
         * files have none); keep data_offset inside the file. */
        if (g->data_offset > g->size)
            g->data_offset = g->size;
        return 0;
    }
    if (g->data_offset > g->size)
        return moed_err_set(e, MOED_EFORMAT, "truncated: data section starts at offset %" PRIu64
                            " (tensor infos end at %zu, alignment %" PRIu32 "), beyond end of "
                            "file (%zu bytes)", g->data_offset, r.pos, g->alignment, g->size);
    return check_data(g, e);
}

/* ---- open and close ------------------------------------------------------------ */

int gguf_open_mem(struct gguf *g, const void *buf, size_t size, struct moed_err *e)
{
    memset(g, 0, sizeof *g);
    if (!buf && size)
        return moed_err_set(e, MOED_EINVAL, "gguf_open_mem: NULL buffer of %zu bytes", size);
    g->base = buf ? buf : (const uint8_t *)"";
    g->size = size;
    int rc = parse(g, e);
    if (rc)
        gguf_close(g);
    return rc;
}

int gguf_open(struct gguf *g, const char *path, struct moed_err *e)
{
    memset(g, 0, sizeof *g);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return moed_err_set(e, MOED_EIO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int err = errno;
        close(fd);
        return moed_err_set(e, MOED_EIO, "%s: cannot stat: %s", path, strerror(err));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return moed_err_set(e, MOED_EIO, "%s: not a regular file", path);
    }
    if (st.st_size == 0) { /* mmap refuses length 0 */
        close(fd);
        gguf_open_mem(g, NULL, 0, e);
        return moed_err_wrap(e, "%s", path);
    }
    size_t size = (size_t)st.st_size;
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    int err = errno;
    close(fd);
    if (map == MAP_FAILED)
        return moed_err_set(e, MOED_EIO, "%s: cannot map %zu bytes: %s", path, size,
                            strerror(err));
    int rc = gguf_open_mem(g, map, size, e);
    if (rc) {
        munmap(map, size);
        return moed_err_wrap(e, "%s", path);
    }
    g->mapped = true;
    return 0;
}

void gguf_close(struct gguf *g)
{
    if (!g)
        return;
    for (uint64_t i = 0; g->kv && i < g->n_kv; i++)
        value_free(&g->kv[i].val);
    free(g->kv);
    free(g->tensors);
    struct gguf_priv *pv = g->priv;
    if (pv) {
        gguf_index_free(&pv->keys);
        gguf_index_free(&pv->tensors);
        free(pv);
    }
    if (g->mapped && g->base)
        munmap((void *)g->base, g->size);
    memset(g, 0, sizeof *g);
}

/* ---- lookups and getters -------------------------------------------------------- */

const struct gguf_kv *gguf_find(const struct gguf *g, const char *key)
{
    const struct gguf_priv *pv = g->priv;
    if (!pv)
        return NULL;
    int64_t i = gguf_index_find(&pv->keys, key, strlen(key));
    return i < 0 ? NULL : &g->kv[i];
}

const struct gguf_tensor *gguf_find_tensor(const struct gguf *g, const char *name)
{
    const struct gguf_priv *pv = g->priv;
    if (!pv)
        return NULL;
    int64_t i = gguf_index_find(&pv->tensors, name, strlen(name));
    return i < 0 ? NULL : &g->tensors[i];
}

static int get_kv(const struct gguf *g, const char *key, const struct gguf_kv **kv,
                  struct moed_err *e)
{
    *kv = gguf_find(g, key);
    if (!*kv) {
        char q[GGUF_QUOTE_MAX];
        return moed_err_set(e, MOED_ENOTFOUND, "key '%s' not found",
                            gguf_quote(q, sizeof q, key, strlen(key)));
    }
    return 0;
}

static int type_error(const char *key, const char *want, const struct gguf_value *v,
                      struct moed_err *e)
{
    char q[GGUF_QUOTE_MAX];
    gguf_quote(q, sizeof q, key, strlen(key));
    if (v->type == GGUF_ARRAY)
        return moed_err_set(e, MOED_ETYPE, "key '%s' has type array of %s, wanted %s", q,
                            gguf_vtype_name(v->v.arr.elem), want);
    return moed_err_set(e, MOED_ETYPE, "key '%s' has type %s, wanted %s", q,
                        gguf_vtype_name(v->type), want);
}

/* Any integer value into [lo, hi] (hi as u64 so that u64 fits). */
static int get_int(const struct gguf *g, const char *key, const char *want, int64_t lo,
                   uint64_t hi, int64_t *is, uint64_t *us, struct moed_err *e)
{
    const struct gguf_kv *kv;
    int rc = get_kv(g, key, &kv, e);
    if (rc)
        return rc;
    const struct gguf_value *v = &kv->val;
    if (!gguf_vtype_is_int(v->type))
        return type_error(key, want, v, e);
    char q[GGUF_QUOTE_MAX];
    if (gguf_vtype_is_signed(v->type)) {
        int64_t x = v->v.i64;
        if (x < lo || (x >= 0 && (uint64_t)x > hi))
            return moed_err_set(e, MOED_ERANGE, "key '%s' = %" PRId64 " (%s) out of range for %s",
                                gguf_quote(q, sizeof q, key, strlen(key)), x,
                                gguf_vtype_name(v->type), want);
        *is = x;
        *us = (uint64_t)x;
    } else {
        uint64_t x = v->v.u64;
        if (x > hi)
            return moed_err_set(e, MOED_ERANGE, "key '%s' = %" PRIu64 " (%s) out of range for %s",
                                gguf_quote(q, sizeof q, key, strlen(key)), x,
                                gguf_vtype_name(v->type), want);
        *is = (int64_t)x;
        *us = x;
    }
    return 0;
}

int gguf_get_u32(const struct gguf *g, const char *key, uint32_t *out, struct moed_err *e)
{
    int64_t is;
    uint64_t us;
    int rc = get_int(g, key, "u32", 0, UINT32_MAX, &is, &us, e);
    if (!rc)
        *out = (uint32_t)us;
    return rc;
}

int gguf_get_u64(const struct gguf *g, const char *key, uint64_t *out, struct moed_err *e)
{
    int64_t is;
    uint64_t us;
    int rc = get_int(g, key, "u64", 0, UINT64_MAX, &is, &us, e);
    if (!rc)
        *out = us;
    return rc;
}

int gguf_get_i32(const struct gguf *g, const char *key, int32_t *out, struct moed_err *e)
{
    int64_t is;
    uint64_t us;
    int rc = get_int(g, key, "i32", INT32_MIN, INT32_MAX, &is, &us, e);
    if (!rc)
        *out = (int32_t)is;
    return rc;
}

int gguf_get_i64(const struct gguf *g, const char *key, int64_t *out, struct moed_err *e)
{
    int64_t is;
    uint64_t us;
    int rc = get_int(g, key, "i64", INT64_MIN, INT64_MAX, &is, &us, e);
    if (!rc)
        *out = is;
    return rc;
}

int gguf_get_f32(const struct gguf *g, const char *key, float *out, struct moed_err *e)
{
    const struct gguf_kv *kv;
    int rc = get_kv(g, key, &kv, e);
    if (rc)
        return rc;
    if (kv->val.type != GGUF_F32 && kv->val.type != GGUF_F64)
        return type_error(key, "f32", &kv->val, e);
    double x = kv->val.v.f64;
    if (isfinite(x) && fabs(x) > FLT_MAX) {
        char q[GGUF_QUOTE_MAX];
        return moed_err_set(e, MOED_ERANGE, "key '%s' = %g (f64) out of range for f32",
                            gguf_quote(q, sizeof q, key, strlen(key)), x);
    }
    *out = (float)x;
    return 0;
}

int gguf_get_f64(const struct gguf *g, const char *key, double *out, struct moed_err *e)
{
    const struct gguf_kv *kv;
    int rc = get_kv(g, key, &kv, e);
    if (rc)
        return rc;
    if (kv->val.type != GGUF_F32 && kv->val.type != GGUF_F64)
        return type_error(key, "f64", &kv->val, e);
    *out = kv->val.v.f64;
    return 0;
}

int gguf_get_bool(const struct gguf *g, const char *key, bool *out, struct moed_err *e)
{
    const struct gguf_kv *kv;
    int rc = get_kv(g, key, &kv, e);
    if (rc)
        return rc;
    if (kv->val.type != GGUF_BOOL)
        return type_error(key, "bool", &kv->val, e);
    *out = kv->val.v.u64 != 0;
    return 0;
}

int gguf_get_str(const struct gguf *g, const char *key, struct gguf_str *out, struct moed_err *e)
{
    const struct gguf_kv *kv;
    int rc = get_kv(g, key, &kv, e);
    if (rc)
        return rc;
    if (kv->val.type != GGUF_STRING)
        return type_error(key, "string", &kv->val, e);
    *out = kv->val.v.str;
    return 0;
}

int gguf_get_arr(const struct gguf *g, const char *key, enum gguf_vtype elem,
                 const struct gguf_value **out, struct moed_err *e)
{
    const struct gguf_kv *kv;
    int rc = get_kv(g, key, &kv, e);
    if (rc)
        return rc;
    if (kv->val.type != GGUF_ARRAY || kv->val.v.arr.elem != elem) {
        char want[32];
        snprintf(want, sizeof want, "array of %s", gguf_vtype_name(elem));
        return type_error(key, want, &kv->val, e);
    }
    *out = &kv->val;
    return 0;
}

struct gguf_str gguf_arr_str(const struct gguf_value *arr, uint64_t i)
{
    assert(arr->type == GGUF_ARRAY && arr->v.arr.elem == GGUF_STRING);
    assert(i < arr->v.arr.n);
    return arr->v.arr.items[i].v.str;
}

int64_t gguf_arr_int(const struct gguf_value *arr, uint64_t i)
{
    assert(arr->type == GGUF_ARRAY);
    assert(gguf_vtype_is_int(arr->v.arr.elem) || arr->v.arr.elem == GGUF_BOOL);
    assert(i < arr->v.arr.n);
    size_t sz = gguf_vtype_size(arr->v.arr.elem);
    struct gguf_value v;
    scalar_load(&v, arr->v.arr.elem, (const uint8_t *)arr->v.arr.raw + i * sz);
    return gguf_vtype_is_signed(v.type) ? v.v.i64 : (int64_t)v.v.u64;
}

double gguf_arr_float(const struct gguf_value *arr, uint64_t i)
{
    assert(arr->type == GGUF_ARRAY);
    assert(arr->v.arr.elem == GGUF_F32 || arr->v.arr.elem == GGUF_F64);
    assert(i < arr->v.arr.n);
    size_t sz = gguf_vtype_size(arr->v.arr.elem);
    struct gguf_value v;
    scalar_load(&v, arr->v.arr.elem, (const uint8_t *)arr->v.arr.raw + i * sz);
    return v.v.f64;
}

const struct gguf_value *gguf_arr_item(const struct gguf_value *arr, uint64_t i)
{
    assert(arr->type == GGUF_ARRAY);
    assert(arr->v.arr.elem == GGUF_STRING || arr->v.arr.elem == GGUF_ARRAY);
    assert(i < arr->v.arr.n);
    return &arr->v.arr.items[i];
}
