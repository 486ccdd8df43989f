/*
 * GGUF writer (see gguf.h).
 *
 * The writer keeps its own copies of every key and value (arrays of arrays
 * included) and of the tensor infos, never of tensor data.  Nothing is
 * written until gguf_writer_begin: it fixes the layout (each tensor's offset
 * is the previous one's end rounded up to general.alignment, default 32),
 * then writes header, metadata and tensor infos, and pads to the data
 * section.  gguf_writer_write_data then takes the tensors' bytes in the
 * order they were added, in pieces of any size that do not cross a tensor's
 * end, padding after each tensor; gguf_writer_end checks that every tensor
 * got all its bytes.  The same code writes to a FILE (streaming a 17 GB
 * model one tensor at a time) or to a growing buffer (write_mem).
 *
 * Everything the writer accepts, the reader accepts: keys and names are
 * any bytes, general.alignment must be a u32 power of two, bools are 0 or
 * 1, arrays nest at most GGUF_MAX_NEST deep, tensor shapes obey the same
 * rules as in the reader.  A file without tensors gets no padding after
 * its tensor infos (as llama.cpp's vocabulary files have none).
 *
 * Errors: a setter or gguf_writer_add_tensor that fails returns its code
 * and records the message (gguf_writer_error); the first such failure is
 * sticky: gguf_writer_begin, _write_file and _write_mem refuse to write a
 * file that misses a value the caller asked for.  A stream that fails or
 * ends with tensors missing removes its partial file.
 */
#include <assert.h>
#include <errno.h>
#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "model/gguf.h"
#include "model/gguf_internal.h"

struct wtensor {
    struct gguf_str name; /* owned copy, NUL-terminated */
    uint32_t n_dims;
    int64_t ne[GGUF_MAX_DIMS];
    uint32_t type;
    uint64_t nbytes;
    uint64_t offset; /* set by begin */
    const void *data;
};

enum wstate { W_BUILD, W_STREAM };

struct gguf_writer {
    uint32_t version;
    struct gguf_kv *kv; /* values own their memory (unlike the reader's) */
    size_t n_kv, cap_kv;
    struct wtensor *t;
    size_t n_t, cap_t;
    struct gguf_index kix, tix;
    struct moed_err err; /* first setter / add_tensor failure */

    enum wstate state;
    uint32_t alignment;
    FILE *f; /* file sink, or NULL for the memory sink */
    char *path;
    uint8_t *mem;
    size_t mem_len, mem_cap;
    uint64_t pos;  /* bytes written so far */
    uint64_t data_start;
    size_t cur;        /* tensor whose data comes next */
    uint64_t cur_done; /* bytes of it written */
};

static struct gguf_str wkey_of(const void *ctx, uint64_t i)
{
    return ((const struct gguf_writer *)ctx)->kv[i].key;
}

static struct gguf_str wtensor_name_of(const void *ctx, uint64_t i)
{
    return ((const struct gguf_writer *)ctx)->t[i].name;
}

struct gguf_writer *gguf_writer_new(uint32_t version)
{
    if (version != 2 && version != 3)
        return NULL;
    struct gguf_writer *w = calloc(1, sizeof *w);
    if (!w)
        return NULL;
    w->version = version;
    gguf_index_init(&w->kix, wkey_of, w);
    gguf_index_init(&w->tix, wtensor_name_of, w);
    return w;
}

/* Frees what an owned value holds (not the value itself). */
static void wvalue_free(struct gguf_value *v)
{
    if (v->type == GGUF_STRING) {
        free((void *)v->v.str.ptr);
    } else if (v->type == GGUF_ARRAY) {
        free((void *)v->v.arr.raw);
        if (v->v.arr.items) {
            for (uint64_t i = 0; i < v->v.arr.n; i++)
                wvalue_free(&v->v.arr.items[i]);
            free(v->v.arr.items);
        }
    }
    memset(v, 0, sizeof *v);
}

static void stream_abort(struct gguf_writer *w);

void gguf_writer_free(struct gguf_writer *w)
{
    if (!w)
        return;
    if (w->state == W_STREAM)
        stream_abort(w);
    for (size_t i = 0; i < w->n_kv; i++) {
        free((void *)w->kv[i].key.ptr);
        wvalue_free(&w->kv[i].val);
    }
    free(w->kv);
    for (size_t i = 0; i < w->n_t; i++)
        free((void *)w->t[i].name.ptr);
    free(w->t);
    gguf_index_free(&w->kix);
    gguf_index_free(&w->tix);
    free(w);
}

const char *gguf_writer_error(const struct gguf_writer *w)
{
    return w->err.code ? w->err.msg : NULL;
}

/* Records a setter failure (the first one sticks) and returns code. */
__attribute__((format(printf, 3, 4))) static int fail(struct gguf_writer *w, int code,
                                                      const char *fmt, ...)
{
    if (w->err.code == 0) {
        va_list ap;
        va_start(ap, fmt);
        w->err.code = code;
        vsnprintf(w->err.msg, sizeof w->err.msg, fmt, ap);
        va_end(ap);
    }
    return code;
}

/* ---- values ------------------------------------------------------------------ */

static bool int_fits(uint32_t t, const struct gguf_value *v)
{
    switch (t) {
    case GGUF_U8: return v->v.u64 <= UINT8_MAX;
    case GGUF_U16: return v->v.u64 <= UINT16_MAX;
    case GGUF_U32: return v->v.u64 <= UINT32_MAX;
    case GGUF_I8: return v->v.i64 >= INT8_MIN && v->v.i64 <= INT8_MAX;
    case GGUF_I16: return v->v.i64 >= INT16_MIN && v->v.i64 <= INT16_MAX;
    case GGUF_I32: return v->v.i64 >= INT32_MIN && v->v.i64 <= INT32_MAX;
    case GGUF_BOOL: return v->v.u64 <= 1;
    default: return true;
    }
}

/* Deep copy of src into dst, checked as the reader would check it; the
 * message (in e) says what was wrong, the caller adds the key. */
static int value_copy(struct gguf_value *dst, const struct gguf_value *src, int level,
                      struct moed_err *e)
{
    memset(dst, 0, sizeof *dst);
    uint32_t t = src->type;
    if (t >= GGUF_VTYPE_COUNT)
        return moed_err_set(e, MOED_EINVAL, "unknown value type %" PRIu32, t);
    if (gguf_vtype_size(t)) {
        if (!int_fits(t, src))
            return moed_err_set(e, MOED_EINVAL, "value %" PRIu64 " does not fit %s", src->v.u64,
                                gguf_vtype_name(t));
        if (t == GGUF_F32 && isfinite(src->v.f64) && fabs(src->v.f64) > FLT_MAX)
            return moed_err_set(e, MOED_EINVAL, "value %g does not fit f32", src->v.f64);
        *dst = *src;
        return 0;
    }
    if (t == GGUF_STRING) {
        uint64_t len = src->v.str.len;
        if (len && !src->v.str.ptr)
            return moed_err_set(e, MOED_EINVAL, "string of %" PRIu64 " bytes at NULL", len);
        if (len >= SIZE_MAX)
            return moed_err_set(e, MOED_ENOMEM, "string of %" PRIu64 " bytes", len);
        char *p = malloc((size_t)len + 1);
        if (!p)
            return moed_err_set(e, MOED_ENOMEM, "string of %" PRIu64 " bytes: out of memory",
                                len);
        if (len)
            memcpy(p, src->v.str.ptr, (size_t)len);
        p[len] = '\0';
        dst->type = GGUF_STRING;
        dst->v.str = (struct gguf_str){p, len};
        return 0;
    }
    assert(t == GGUF_ARRAY);
    if (level + 1 > GGUF_MAX_NEST)
        return moed_err_set(e, MOED_EINVAL, "arrays nested more than %d levels deep",
                            GGUF_MAX_NEST);
    uint32_t elem = src->v.arr.elem;
    uint64_t n = src->v.arr.n;
    if (elem >= GGUF_VTYPE_COUNT)
        return moed_err_set(e, MOED_EINVAL, "array of unknown element type %" PRIu32, elem);
    dst->type = GGUF_ARRAY;
    dst->v.arr.elem = (enum gguf_vtype)elem;
    size_t esize = gguf_vtype_size(elem);
    if (esize) {
        if (n > SIZE_MAX / esize)
            return moed_err_set(e, MOED_ENOMEM, "array of %" PRIu64 " %s is too large", n,
                                gguf_vtype_name(elem));
        size_t bytes = (size_t)n * esize;
        if (bytes && !src->v.arr.raw)
            return moed_err_set(e, MOED_EINVAL, "array of %" PRIu64 " %s at NULL", n,
                                gguf_vtype_name(elem));
        const uint8_t *raw = src->v.arr.raw;
        if (elem == GGUF_BOOL)
            for (uint64_t i = 0; i < n; i++)
                if (raw[i] > 1)
                    return moed_err_set(e, MOED_EINVAL,
                                        "element %" PRIu64 ": bool value %u (must be 0 or 1)", i,
                                        raw[i]);
        void *copy = malloc(bytes ? bytes : 1);
        if (!copy)
            return moed_err_set(e, MOED_ENOMEM, "array of %" PRIu64 " %s: out of memory", n,
                                gguf_vtype_name(elem));
        if (bytes)
            memcpy(copy, raw, bytes);
        dst->v.arr.raw = copy;
        dst->v.arr.n = n;
        return 0;
    }
    if (n && !src->v.arr.items)
        return moed_err_set(e, MOED_EINVAL, "array of %" PRIu64 " %s without items", n,
                            gguf_vtype_name(elem));
    if (n > SIZE_MAX / sizeof(struct gguf_value))
        return moed_err_set(e, MOED_ENOMEM, "array of %" PRIu64 " %s is too large", n,
                            gguf_vtype_name(elem));
    if (n) {
        dst->v.arr.items = calloc((size_t)n, sizeof *dst->v.arr.items);
        if (!dst->v.arr.items)
            return moed_err_set(e, MOED_ENOMEM, "array of %" PRIu64 " %s: out of memory", n,
                                gguf_vtype_name(elem));
    }
    dst->v.arr.n = n;
    for (uint64_t i = 0; i < n; i++) {
        const struct gguf_value *it = &src->v.arr.items[i];
        if (it->type != elem)
            return moed_err_set(e, MOED_EINVAL, "element %" PRIu64 " has type %s in an array "
                                "of %s", i, gguf_vtype_name(it->type), gguf_vtype_name(elem));
        int rc = value_copy(&dst->v.arr.items[i], it, level + 1, e);
        if (rc)
            return moed_err_wrap(e, "element %" PRIu64, i);
    }
    return 0;
}

/* Stores a copy of v under key (len bytes), replacing an existing key. */
static int put_kv(struct gguf_writer *w, const char *key, uint64_t klen,
                  const struct gguf_value *v)
{
    char q[GGUF_QUOTE_MAX];
    if (w->state != W_BUILD)
        return fail(w, MOED_EINVAL, "key '%s': set while the file is being written",
                    key ? gguf_quote(q, sizeof q, key, klen) : "(null)");
    if (!key || klen >= SIZE_MAX)
        return fail(w, MOED_EINVAL, "NULL key");
    gguf_quote(q, sizeof q, key, klen);
    if (klen == strlen("general.alignment") && memcmp(key, "general.alignment", klen) == 0) {
        if (v->type != GGUF_U32)
            return fail(w, MOED_EINVAL, "general.alignment has type %s, must be u32",
                        gguf_vtype_name(v->type));
        uint64_t a = v->v.u64;
        if (a == 0 || a > UINT32_MAX || (a & (a - 1)) != 0)
            return fail(w, MOED_EINVAL,
                        "general.alignment = %" PRIu64 ": must be a non-zero power of two", a);
    }
    struct moed_err e = {0};
    struct gguf_value copy;
    int rc = value_copy(&copy, v, 0, &e);
    if (rc) {
        wvalue_free(&copy);
        return fail(w, rc, "key '%s': %s", q, e.msg);
    }
    int64_t at = gguf_index_find(&w->kix, key, (size_t)klen);
    if (at >= 0) {
        wvalue_free(&w->kv[at].val);
        w->kv[at].val = copy;
        return 0;
    }
    char *k = malloc((size_t)klen + 1);
    if (!k || (w->n_kv == w->cap_kv && w->cap_kv > SIZE_MAX / 2 / sizeof *w->kv)) {
        free(k);
        wvalue_free(&copy);
        return fail(w, MOED_ENOMEM, "key '%s': out of memory", q);
    }
    if (w->n_kv == w->cap_kv) {
        size_t cap = w->cap_kv ? 2 * w->cap_kv : 16;
        struct gguf_kv *nk = realloc(w->kv, cap * sizeof *nk);
        if (!nk) {
            free(k);
            wvalue_free(&copy);
            return fail(w, MOED_ENOMEM, "key '%s': out of memory", q);
        }
        w->kv = nk;
        w->cap_kv = cap;
    }
    if (klen)
        memcpy(k, key, (size_t)klen);
    k[klen] = '\0';
    w->kv[w->n_kv] = (struct gguf_kv){{k, klen}, copy};
    rc = gguf_index_add(&w->kix, w->n_kv, NULL);
    if (rc) {
        free(k);
        wvalue_free(&w->kv[w->n_kv].val);
        return fail(w, MOED_ENOMEM, "key '%s': out of memory", q);
    }
    w->n_kv++;
    return 0;
}

static int put_scalar(struct gguf_writer *w, const char *key, enum gguf_vtype t, uint64_t u,
                      int64_t i, double f)
{
    struct gguf_value v = {.type = t};
    if (t == GGUF_F32 || t == GGUF_F64)
        v.v.f64 = f;
    else if (gguf_vtype_is_signed(t))
        v.v.i64 = i;
    else
        v.v.u64 = u;
    return put_kv(w, key, key ? strlen(key) : 0, &v);
}

int gguf_writer_set_u8(struct gguf_writer *w, const char *key, uint8_t v) { return put_scalar(w, key, GGUF_U8, v, 0, 0); }
int gguf_writer_set_i8(struct gguf_writer *w, const char *key, int8_t v) { return put_scalar(w, key, GGUF_I8, 0, v, 0); }
int gguf_writer_set_u16(struct gguf_writer *w, const char *key, uint16_t v) { return put_scalar(w, key, GGUF_U16, v, 0, 0); }
int gguf_writer_set_i16(struct gguf_writer *w, const char *key, int16_t v) { return put_scalar(w, key, GGUF_I16, 0, v, 0); }
int gguf_writer_set_u32(struct gguf_writer *w, const char *key, uint32_t v) { return put_scalar(w, key, GGUF_U32, v, 0, 0); }
int gguf_writer_set_i32(struct gguf_writer *w, const char *key, int32_t v) { return put_scalar(w, key, GGUF_I32, 0, v, 0); }
int gguf_writer_set_u64(struct gguf_writer *w, const char *key, uint64_t v) { return put_scalar(w, key, GGUF_U64, v, 0, 0); }
int gguf_writer_set_i64(struct gguf_writer *w, const char *key, int64_t v) { return put_scalar(w, key, GGUF_I64, 0, v, 0); }
int gguf_writer_set_f32(struct gguf_writer *w, const char *key, float v) { return put_scalar(w, key, GGUF_F32, 0, 0, v); }
int gguf_writer_set_f64(struct gguf_writer *w, const char *key, double v) { return put_scalar(w, key, GGUF_F64, 0, 0, v); }
int gguf_writer_set_bool(struct gguf_writer *w, const char *key, bool v) { return put_scalar(w, key, GGUF_BOOL, v ? 1 : 0, 0, 0); }

int gguf_writer_set_str(struct gguf_writer *w, const char *key, const char *v)
{
    if (!v) {
        char q[GGUF_QUOTE_MAX];
        return fail(w, MOED_EINVAL, "key '%s': NULL string",
                    key ? gguf_quote(q, sizeof q, key, strlen(key)) : "(null)");
    }
    struct gguf_value val = {.type = GGUF_STRING, .v.str = {v, strlen(v)}};
    return put_kv(w, key, key ? strlen(key) : 0, &val);
}

int gguf_writer_set_arr(struct gguf_writer *w, const char *key, enum gguf_vtype elem,
                        const void *data, uint64_t n)
{
    if (!gguf_vtype_size(elem)) {
        char q[GGUF_QUOTE_MAX];
        return fail(w, MOED_EINVAL, "key '%s': gguf_writer_set_arr takes fixed-size elements, "
                    "not %s (use gguf_writer_set_arr_str or gguf_writer_set_kv)",
                    key ? gguf_quote(q, sizeof q, key, strlen(key)) : "(null)",
                    gguf_vtype_name(elem));
    }
    struct gguf_value val = {.type = GGUF_ARRAY};
    val.v.arr.elem = elem;
    val.v.arr.n = n;
    val.v.arr.raw = data;
    return put_kv(w, key, key ? strlen(key) : 0, &val);
}

int gguf_writer_set_arr_str(struct gguf_writer *w, const char *key, const char *const *v,
                            uint64_t n)
{
    char q[GGUF_QUOTE_MAX];
    if (n && !v)
        return fail(w, MOED_EINVAL, "key '%s': NULL string array of %" PRIu64,
                    key ? gguf_quote(q, sizeof q, key, strlen(key)) : "(null)", n);
    if (n > SIZE_MAX / sizeof(struct gguf_value))
        return fail(w, MOED_ENOMEM, "key '%s': %" PRIu64 " strings is too many",
                    key ? gguf_quote(q, sizeof q, key, strlen(key)) : "(null)", n);
    /* Views of the caller's strings; put_kv copies them. */
    struct gguf_value *items = n ? calloc((size_t)n, sizeof *items) : NULL;
    if (n && !items)
        return fail(w, MOED_ENOMEM, "key '%s': out of memory",
                    key ? gguf_quote(q, sizeof q, key, strlen(key)) : "(null)");
    for (uint64_t i = 0; i < n; i++) {
        if (!v[i]) {
            free(items);
            return fail(w, MOED_EINVAL, "key '%s': string %" PRIu64 " is NULL",
                        key ? gguf_quote(q, sizeof q, key, strlen(key)) : "(null)", i);
        }
        items[i].type = GGUF_STRING;
        items[i].v.str = (struct gguf_str){v[i], strlen(v[i])};
    }
    struct gguf_value val = {.type = GGUF_ARRAY};
    val.v.arr.elem = GGUF_STRING;
    val.v.arr.n = n;
    val.v.arr.items = items;
    int rc = put_kv(w, key, key ? strlen(key) : 0, &val);
    free(items);
    return rc;
}

int gguf_writer_set_kv(struct gguf_writer *w, const struct gguf_kv *kv)
{
    if (!kv || (kv->key.len && !kv->key.ptr))
        return fail(w, MOED_EINVAL, "gguf_writer_set_kv: NULL kv or key");
    return put_kv(w, kv->key.len ? kv->key.ptr : "", kv->key.len, &kv->val);
}

/* ---- tensors ------------------------------------------------------------------ */

int gguf_writer_add_tensor(struct gguf_writer *w, const char *name, uint32_t type,
                           uint32_t n_dims, const int64_t *ne, const void *data)
{
    char q[GGUF_QUOTE_MAX];
    if (!name)
        return fail(w, MOED_EINVAL, "tensor with NULL name");
    size_t len = strlen(name);
    gguf_quote(q, sizeof q, name, len);
    if (w->state != W_BUILD)
        return fail(w, MOED_EINVAL, "tensor '%s': added while the file is being written", q);
    if (gguf_index_find(&w->tix, name, len) >= 0)
        return fail(w, MOED_EINVAL, "tensor '%s': duplicate name", q);
    const struct kern_type_traits *tt = kern_type_traits(type);
    if (!tt)
        return fail(w, MOED_EINVAL, "tensor '%s': unknown tensor type %" PRIu32, q, type);
    if (n_dims < 1 || n_dims > GGUF_MAX_DIMS)
        return fail(w, MOED_EINVAL, "tensor '%s': n_dims %" PRIu32 " not in 1..%d", q, n_dims,
                    GGUF_MAX_DIMS);
    if (!ne)
        return fail(w, MOED_EINVAL, "tensor '%s': NULL shape", q);
    struct wtensor t = {.n_dims = n_dims, .type = type, .data = data};
    int64_t nel = 1;
    for (uint32_t d = 0; d < GGUF_MAX_DIMS; d++)
        t.ne[d] = d < n_dims ? ne[d] : 1;
    for (uint32_t d = 0; d < n_dims; d++) {
        if (ne[d] < 0)
            return fail(w, MOED_EINVAL, "tensor '%s': ne[%" PRIu32 "] = %" PRId64
                        " is negative", q, d, ne[d]);
        if (__builtin_mul_overflow(nel, ne[d], &nel))
            return fail(w, MOED_EINVAL, "tensor '%s': more than 2^63 elements", q);
    }
    if (ne[0] % tt->blck != 0)
        return fail(w, MOED_EINVAL, "tensor '%s': ne[0] = %" PRId64 " is not a multiple of "
                    "the %s block size %" PRIu32, q, ne[0], tt->name, tt->blck);
    uint64_t nbytes = (uint64_t)(ne[0] / tt->blck);
    bool ovf = __builtin_mul_overflow(nbytes, (uint64_t)tt->size, &nbytes);
    for (uint32_t d = 1; d < n_dims && !ovf; d++)
        ovf = __builtin_mul_overflow(nbytes, (uint64_t)ne[d], &nbytes);
    if (ovf)
        return fail(w, MOED_EINVAL, "tensor '%s': byte size overflows 64 bits", q);
    t.nbytes = nbytes;

    char *copy = malloc(len + 1);
    if (!copy || (w->n_t == w->cap_t && w->cap_t > SIZE_MAX / 2 / sizeof *w->t)) {
        free(copy);
        return fail(w, MOED_ENOMEM, "tensor '%s': out of memory", q);
    }
    if (w->n_t == w->cap_t) {
        size_t cap = w->cap_t ? 2 * w->cap_t : 64;
        struct wtensor *nt = realloc(w->t, cap * sizeof *nt);
        if (!nt) {
            free(copy);
            return fail(w, MOED_ENOMEM, "tensor '%s': out of memory", q);
        }
        w->t = nt;
        w->cap_t = cap;
    }
    memcpy(copy, name, len + 1);
    t.name = (struct gguf_str){copy, len};
    w->t[w->n_t] = t;
    if (gguf_index_add(&w->tix, w->n_t, NULL) != 0) {
        free(copy);
        return fail(w, MOED_ENOMEM, "tensor '%s': out of memory", q);
    }
    w->n_t++;
    return 0;
}

/* ---- output ---------------------------------------------------------------------- */

static int out_write(struct gguf_writer *w, const void *p, size_t n, struct moed_err *e)
{
    if (n == 0)
        return 0;
    if (w->f) {
        if (fwrite(p, 1, n, w->f) != n)
            return moed_err_set(e, MOED_EIO, "%s: write failed at offset %" PRIu64 ": %s",
                                w->path, w->pos, strerror(errno));
    } else {
        if (n > SIZE_MAX - w->mem_len)
            return moed_err_set(e, MOED_ENOMEM, "file larger than memory");
        if (w->mem_len + n > w->mem_cap) {
            size_t cap = w->mem_cap ? w->mem_cap : 4096;
            while (cap < w->mem_len + n) {
                if (cap > SIZE_MAX / 2)
                    return moed_err_set(e, MOED_ENOMEM, "file larger than memory");
                cap *= 2;
            }
            uint8_t *m = realloc(w->mem, cap);
            if (!m)
                return moed_err_set(e, MOED_ENOMEM, "out of memory for a %zu-byte file", cap);
            w->mem = m;
            w->mem_cap = cap;
        }
        memcpy(w->mem + w->mem_len, p, n);
        w->mem_len += n;
    }
    w->pos += n;
    return 0;
}

static int out_u32(struct gguf_writer *w, uint32_t v, struct moed_err *e) { return out_write(w, &v, 4, e); }
static int out_u64(struct gguf_writer *w, uint64_t v, struct moed_err *e) { return out_write(w, &v, 8, e); }

static int out_str(struct gguf_writer *w, struct gguf_str s, struct moed_err *e)
{
    int rc = out_u64(w, s.len, e);
    return rc ? rc : out_write(w, s.ptr, (size_t)s.len, e);
}

static int out_pad(struct gguf_writer *w, struct moed_err *e)
{
    static const uint8_t zeros[4096];
    uint64_t a = w->alignment;
    uint64_t pad = (a - w->pos % a) % a;
    while (pad) {
        size_t n = pad < sizeof zeros ? (size_t)pad : sizeof zeros;
        int rc = out_write(w, zeros, n, e);
        if (rc)
            return rc;
        pad -= n;
    }
    return 0;
}

/* A value's payload (no type tag: a kv writes it, an array names it once). */
static int out_value(struct gguf_writer *w, const struct gguf_value *v, struct moed_err *e)
{
    switch (v->type) {
    case GGUF_U8: case GGUF_BOOL: { uint8_t x = (uint8_t)v->v.u64; return out_write(w, &x, 1, e); }
    case GGUF_I8: { int8_t x = (int8_t)v->v.i64; return out_write(w, &x, 1, e); }
    case GGUF_U16: { uint16_t x = (uint16_t)v->v.u64; return out_write(w, &x, 2, e); }
    case GGUF_I16: { int16_t x = (int16_t)v->v.i64; return out_write(w, &x, 2, e); }
    case GGUF_U32: { uint32_t x = (uint32_t)v->v.u64; return out_write(w, &x, 4, e); }
    case GGUF_I32: { int32_t x = (int32_t)v->v.i64; return out_write(w, &x, 4, e); }
    case GGUF_U64: return out_write(w, &v->v.u64, 8, e);
    case GGUF_I64: return out_write(w, &v->v.i64, 8, e);
    case GGUF_F32: { float x = (float)v->v.f64; return out_write(w, &x, 4, e); }
    case GGUF_F64: return out_write(w, &v->v.f64, 8, e);
    case GGUF_STRING: return out_str(w, v->v.str, e);
    case GGUF_ARRAY: {
        int rc = out_u32(w, v->v.arr.elem, e);
        if (!rc)
            rc = out_u64(w, v->v.arr.n, e);
        size_t esize = gguf_vtype_size(v->v.arr.elem);
        if (esize)
            return rc ? rc : out_write(w, v->v.arr.raw, (size_t)(v->v.arr.n * esize), e);
        for (uint64_t i = 0; i < v->v.arr.n && !rc; i++)
            rc = out_value(w, &v->v.arr.items[i], e);
        return rc;
    }
    default: assert(!"value type checked when stored"); return MOED_EINVAL;
    }
}

static void stream_abort(struct gguf_writer *w)
{
    if (w->f) {
        fclose(w->f);
        unlink(w->path);
    }
    w->f = NULL;
    free(w->path);
    w->path = NULL;
    w->state = W_BUILD;
}

/* Skips tensors that are complete (those of zero bytes included). */
static int next_tensor(struct gguf_writer *w, struct moed_err *e)
{
    while (w->cur < w->n_t && w->cur_done == w->t[w->cur].nbytes) {
        int rc = out_pad(w, e);
        if (rc)
            return rc;
        w->cur++;
        w->cur_done = 0;
    }
    return 0;
}

/* Layout, header, metadata, tensor infos, padding: shared by both sinks. */
static int stream_start(struct gguf_writer *w, struct moed_err *e)
{
    if (w->err.code)
        return moed_err_set(e, w->err.code, "earlier error: %s", w->err.msg);
    if (w->state != W_BUILD)
        return moed_err_set(e, MOED_EINVAL, "a file is already being written");
    w->alignment = GGUF_DEFAULT_ALIGNMENT;
    int64_t ai = gguf_index_find(&w->kix, "general.alignment", strlen("general.alignment"));
    if (ai >= 0)
        w->alignment = (uint32_t)w->kv[ai].val.v.u64; /* checked when set */
    uint64_t off = 0, a = w->alignment;
    for (size_t i = 0; i < w->n_t; i++) {
        w->t[i].offset = off;
        uint64_t end;
        if (__builtin_add_overflow(off, w->t[i].nbytes, &end) ||
            __builtin_add_overflow(end, a - 1, &end)) {
            char q[GGUF_QUOTE_MAX];
            return moed_err_set(e, MOED_EINVAL, "tensor '%s': data section exceeds 2^64 bytes",
                                gguf_quote(q, sizeof q, w->t[i].name.ptr, w->t[i].name.len));
        }
        off = end / a * a;
    }
    w->pos = 0;
    w->cur = 0;
    w->cur_done = 0;
    w->state = W_STREAM;
    int rc = out_write(w, "GGUF", 4, e);
    if (!rc) rc = out_u32(w, w->version, e);
    if (!rc) rc = out_u64(w, w->n_t, e);
    if (!rc) rc = out_u64(w, w->n_kv, e);
    for (size_t i = 0; i < w->n_kv && !rc; i++) {
        rc = out_str(w, w->kv[i].key, e);
        if (!rc) rc = out_u32(w, w->kv[i].val.type, e);
        if (!rc) rc = out_value(w, &w->kv[i].val, e);
    }
    for (size_t i = 0; i < w->n_t && !rc; i++) {
        const struct wtensor *t = &w->t[i];
        rc = out_str(w, t->name, e);
        if (!rc) rc = out_u32(w, t->n_dims, e);
        for (uint32_t d = 0; d < t->n_dims && !rc; d++)
            rc = out_u64(w, (uint64_t)t->ne[d], e);
        if (!rc) rc = out_u32(w, t->type, e);
        if (!rc) rc = out_u64(w, t->offset, e);
    }
    if (!rc && w->n_t)
        rc = out_pad(w, e);
    w->data_start = w->pos;
    if (!rc)
        rc = next_tensor(w, e);
    return rc;
}

int gguf_writer_begin(struct gguf_writer *w, const char *path, struct moed_err *e)
{
    if (w->state != W_BUILD)
        return moed_err_set(e, MOED_EINVAL, "%s: a file is already being written", path);
    if (w->err.code)
        return moed_err_set(e, w->err.code, "%s: earlier error: %s", path, w->err.msg);
    FILE *f = fopen(path, "wb");
    if (!f)
        return moed_err_set(e, MOED_EIO, "%s: cannot create: %s", path, strerror(errno));
    w->path = strdup(path);
    if (!w->path) {
        fclose(f);
        unlink(path);
        return moed_err_set(e, MOED_ENOMEM, "%s: out of memory", path);
    }
    setvbuf(f, NULL, _IOFBF, 1 << 20);
    w->f = f;
    int rc = stream_start(w, e);
    if (rc)
        stream_abort(w);
    return rc;
}

int gguf_writer_write_data(struct gguf_writer *w, const void *data, size_t n, struct moed_err *e)
{
    if (w->state != W_STREAM)
        return moed_err_set(e, MOED_EINVAL, "gguf_writer_write_data: no file is being written");
    char q[GGUF_QUOTE_MAX];
    if (w->cur >= w->n_t) {
        if (n == 0)
            return 0;
        int rc = moed_err_set(e, MOED_EINVAL, "%s: %zu bytes of data after the last of %zu "
                              "tensors", w->path ? w->path : "(memory)", n, w->n_t);
        stream_abort(w);
        return rc;
    }
    const struct wtensor *t = &w->t[w->cur];
    uint64_t left = t->nbytes - w->cur_done;
    if (n > left || (n && !data)) {
        int rc = moed_err_set(e, MOED_EINVAL, "tensor %zu '%s': %zu bytes of data %s, only %"
                              PRIu64 " of its %" PRIu64 " bytes left", w->cur,
                              gguf_quote(q, sizeof q, t->name.ptr, t->name.len), n,
                              data ? "given" : "at NULL", left, t->nbytes);
        stream_abort(w);
        return rc;
    }
    int rc = out_write(w, data, n, e);
    if (!rc) {
        w->cur_done += n;
        rc = next_tensor(w, e);
    }
    if (rc)
        stream_abort(w);
    return rc;
}

static int stream_finish(struct gguf_writer *w, struct moed_err *e)
{
    if (w->state != W_STREAM)
        return moed_err_set(e, MOED_EINVAL, "gguf_writer_end: no file is being written");
    if (w->cur < w->n_t) {
        char q[GGUF_QUOTE_MAX];
        const struct wtensor *t = &w->t[w->cur];
        int rc = moed_err_set(e, MOED_EINVAL, "%s: tensor %zu '%s' has %" PRIu64 " of its %"
                              PRIu64 " bytes (%zu tensors, data given for %zu)",
                              w->path ? w->path : "(memory)", w->cur,
                              gguf_quote(q, sizeof q, t->name.ptr, t->name.len), w->cur_done,
                              t->nbytes, w->n_t, w->cur);
        stream_abort(w);
        return rc;
    }
    if (w->f) {
        bool bad = fflush(w->f) != 0 || ferror(w->f);
        int err = errno;
        if (fclose(w->f) != 0 && !bad) {
            bad = true;
            err = errno;
        }
        w->f = NULL;
        if (bad) {
            int rc = moed_err_set(e, MOED_EIO, "%s: write failed: %s", w->path, strerror(err));
            unlink(w->path);
            stream_abort(w);
            return rc;
        }
    }
    free(w->path);
    w->path = NULL;
    w->state = W_BUILD;
    return 0;
}

int gguf_writer_end(struct gguf_writer *w, struct moed_err *e) { return stream_finish(w, e); }

/* Data of every tensor from the pointers given to add_tensor. */
static int write_all_data(struct gguf_writer *w, struct moed_err *e)
{
    for (size_t i = 0; i < w->n_t; i++) {
        const struct wtensor *t = &w->t[i];
        if (t->nbytes && !t->data) {
            char q[GGUF_QUOTE_MAX];
            int rc = moed_err_set(e, MOED_EINVAL, "tensor %zu '%s': no data (give it to "
                                  "gguf_writer_add_tensor or stream it)", i,
                                  gguf_quote(q, sizeof q, t->name.ptr, t->name.len));
            stream_abort(w);
            return rc;
        }
        /* One tensor may exceed size_t on no 64-bit host, but be safe. */
        const uint8_t *p = t->data;
        uint64_t left = t->nbytes;
        while (left) {
            size_t n = left > (1u << 30) ? (size_t)(1u << 30) : (size_t)left;
            int rc = gguf_writer_write_data(w, p, n, e);
            if (rc)
                return rc;
            p += n;
            left -= n;
        }
    }
    return 0;
}

int gguf_writer_write_file(struct gguf_writer *w, const char *path, struct moed_err *e)
{
    int rc = gguf_writer_begin(w, path, e);
    if (!rc)
        rc = write_all_data(w, e);
    if (!rc)
        rc = stream_finish(w, e);
    return rc;
}

int gguf_writer_write_mem(struct gguf_writer *w, uint8_t **out, size_t *size, struct moed_err *e)
{
    *out = NULL;
    *size = 0;
    if (w->state != W_BUILD)
        return moed_err_set(e, MOED_EINVAL, "gguf_writer_write_mem: a file is being written");
    w->mem = NULL;
    w->mem_len = w->mem_cap = 0;
    int rc = stream_start(w, e);
    if (rc)
        stream_abort(w);
    if (!rc)
        rc = write_all_data(w, e);
    if (!rc)
        rc = stream_finish(w, e);
    if (rc) {
        free(w->mem);
    } else {
        *out = w->mem ? w->mem : malloc(1);
        *size = w->mem_len;
        if (!*out)
            rc = moed_err_set(e, MOED_ENOMEM, "out of memory");
    }
    w->mem = NULL;
    w->mem_len = w->mem_cap = 0;
    return rc;
}
