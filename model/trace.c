/* The routing-trace recorder (trace.h). */
#include "model/trace.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct trace {
    struct moe_exec ex; /* first: the executor is a struct trace */
    FILE *f;
    struct moe_exec *inner;
    bool own_inner;
    int32_t n_layer, n_expert, n_used;
    uint32_t rec_size;
    uint8_t *rec; /* one record being assembled */

    /* the current step */
    int32_t step;       /* -1 before the first */
    int32_t last_layer; /* layer of the last run in this step, -1 none */
    int32_t n;          /* batch size given by trace_step, -1 unknown */
    const int32_t *token, *seq, *pos;

    int64_t records;
    int werr; /* errno of the first failed write, 0 none */
};

static void put_u32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static void put_i32(uint8_t *p, int32_t v) { put_u32(p, (uint32_t)v); }

static void put_f32(uint8_t *p, float v)
{
    uint32_t u;
    memcpy(&u, &v, sizeof u);
    put_u32(p, u);
}

/* ---- metadata: a small JSON object ------------------------------------------- */

struct sbuf {
    char *p;
    size_t n, cap;
    bool oom;
};

static void sb_put(struct sbuf *b, const char *s, size_t len)
{
    if (b->oom)
        return;
    if (b->n + len + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (b->n + len + 1 > cap)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, len);
    b->n += len;
    b->p[b->n] = 0;
}

static void sb_str(struct sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

/* s as a JSON string: quotes, backslashes and control bytes escaped; other
 * bytes (UTF-8 or not) copied. */
static void sb_json(struct sbuf *b, const char *s)
{
    sb_put(b, "\"", 1);
    for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
        char esc[8];
        if (*c == '"' || *c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)*c;
            sb_put(b, esc, 2);
        } else if (*c < 0x20 || *c == 0x7f) {
            snprintf(esc, sizeof esc, "\\u%04x", *c);
            sb_put(b, esc, 6);
        } else {
            sb_put(b, (const char *)c, 1);
        }
    }
    sb_put(b, "\"", 1);
}

static void sb_field(struct sbuf *b, const char *key, const char *val)
{
    if (!val)
        return;
    sb_str(b, ", ");
    sb_json(b, key);
    sb_str(b, ": ");
    sb_json(b, val);
}

/* ---- the executor ------------------------------------------------------------ */

static void write_bytes(struct trace *t, const void *p, size_t n)
{
    if (t->werr)
        return;
    errno = 0;
    /* ferror too: a buffered stream may accept the bytes of a record after
     * its flush failed */
    if (fwrite(p, 1, n, t->f) != n || ferror(t->f))
        t->werr = errno ? errno : EIO;
}

static int trace_run(struct moe_exec *ex, const struct moe_work *w, struct moed_err *e)
{
    struct trace *t = (struct trace *)ex;
    int32_t layer = w->experts ? w->experts->layer : -1;
    if (w->n_used != t->n_used)
        return moed_err_set(e, MOED_EINVAL,
                            "routing trace: layer %d has %d experts per token, the trace %d", layer,
                            w->n_used, t->n_used);
    if (layer < 0 || layer >= t->n_layer)
        return moed_err_set(e, MOED_EINVAL, "routing trace: layer %d of a trace of %d layers",
                            layer, t->n_layer);
    /* no trace_step for this step: a layer that does not increase starts one */
    if (t->step < 0 || layer <= t->last_layer) {
        t->step++;
        t->n = -1;
        t->token = t->seq = t->pos = NULL;
    }
    t->last_layer = layer;
    bool known = t->n == w->n_tok;
    size_t k = (size_t)t->n_used;
    for (int32_t i = 0; i < w->n_tok && !t->werr; i++) {
        uint8_t *r = t->rec;
        put_i32(r + 0, t->step);
        put_i32(r + 4, i);
        put_i32(r + 8, known && t->seq ? t->seq[i] : -1);
        put_i32(r + 12, known && t->pos ? t->pos[i] : -1);
        put_i32(r + 16, known && t->token ? t->token[i] : -1);
        put_i32(r + 20, layer);
        const int32_t *ids = w->ids + (size_t)i * k;
        const float *wt = w->weights + (size_t)i * k;
        for (size_t j = 0; j < k; j++) {
            put_i32(r + TRACE_RECORD_FIXED + 4 * j, ids[j]);
            put_f32(r + TRACE_RECORD_FIXED + 4 * (k + j), wt[j]);
        }
        write_bytes(t, r, t->rec_size);
        if (!t->werr)
            t->records++;
    }
    return moe_exec_run(t->inner, w, e);
}

static void trace_free_exec(struct moe_exec *ex) { trace_close((struct trace *)ex, NULL); }

int trace_open(struct trace **out, const struct trace_opts *o, struct moed_err *e)
{
    *out = NULL;
    if (!o->f || !o->inner)
        return moed_err_set(e, MOED_EINVAL, "routing trace: no file or no executor to wrap");
    if (o->n_layer < 1 || o->n_expert < 1 || o->n_used < 1 || o->n_used > o->n_expert ||
        o->n_used > (INT32_MAX - (int32_t)TRACE_RECORD_FIXED) / 8)
        return moed_err_set(e, MOED_EINVAL,
                            "routing trace: bad sizes (%d layers, %d experts, %d per token)",
                            o->n_layer, o->n_expert, o->n_used);
    struct trace *t = calloc(1, sizeof *t);
    if (!t)
        return moed_err_set(e, MOED_ENOMEM, "routing trace: out of memory");
    t->ex = (struct moe_exec){.name = "trace", .run = trace_run, .free = trace_free_exec};
    t->f = o->f;
    t->n_layer = o->n_layer;
    t->n_expert = o->n_expert;
    t->n_used = o->n_used;
    t->rec_size = TRACE_RECORD_FIXED + 8u * (uint32_t)o->n_used;
    t->step = -1;
    t->last_layer = -1;
    t->n = -1;
    t->rec = malloc(t->rec_size);

    struct sbuf meta = {0};
    sb_str(&meta, "{\"format\": \"moed routing trace\", \"version\": 1");
    sb_field(&meta, "model", o->model);
    sb_field(&meta, "arch", o->arch);
    if (o->argv && o->argc > 0) {
        sb_str(&meta, ", \"argv\": [");
        for (int i = 0; i < o->argc; i++) {
            if (i)
                sb_str(&meta, ", ");
            sb_json(&meta, o->argv[i] ? o->argv[i] : "");
        }
        sb_str(&meta, "]");
    }
    sb_str(&meta, "}");
    if (!t->rec || meta.oom || meta.n > UINT32_MAX - 64) {
        free(meta.p);
        free(t->rec);
        free(t);
        return moed_err_set(e, MOED_ENOMEM, "routing trace: out of memory");
    }
    uint32_t meta_len = (uint32_t)meta.n;
    uint32_t hsize = (TRACE_FIXED_HEADER + meta_len + 7u) & ~7u;
    uint8_t *h = calloc(1, hsize);
    if (!h) {
        free(meta.p);
        free(t->rec);
        free(t);
        return moed_err_set(e, MOED_ENOMEM, "routing trace: out of memory");
    }
    memcpy(h, TRACE_MAGIC, 8);
    put_u32(h + 8, TRACE_VERSION);
    put_u32(h + 12, hsize);
    put_i32(h + 16, o->n_layer);
    put_i32(h + 20, o->n_expert);
    put_i32(h + 24, o->n_used);
    put_u32(h + 28, t->rec_size);
    put_u32(h + 32, meta_len);
    memcpy(h + TRACE_FIXED_HEADER, meta.p, meta_len);
    free(meta.p);
    write_bytes(t, h, hsize);
    free(h);
    if (t->werr) {
        int err = t->werr;
        free(t->rec);
        free(t);
        return moed_err_set(e, MOED_EIO, "routing trace: writing the header: %s", strerror(err));
    }
    t->inner = o->inner;
    t->own_inner = o->own_inner;
    *out = t;
    return 0;
}

struct moe_exec *trace_exec(struct trace *t) { return &t->ex; }

void trace_step(struct trace *t, int32_t n, const int32_t *token, const int32_t *seq,
                const int32_t *pos)
{
    t->step++;
    t->last_layer = -1;
    t->n = n;
    t->token = token;
    t->seq = seq;
    t->pos = pos;
}

int64_t trace_records(const struct trace *t) { return t->records; }

int trace_close(struct trace *t, struct moed_err *e)
{
    if (!t)
        return 0;
    errno = 0;
    if (!t->werr && fflush(t->f))
        t->werr = errno ? errno : EIO;
    if (!t->werr && ferror(t->f))
        t->werr = EIO;
    int rc = 0;
    if (t->werr)
        rc = moed_err_set(e, MOED_EIO, "routing trace: write failed: %s; the file is incomplete",
                          strerror(t->werr));
    if (t->own_inner)
        moe_exec_free(t->inner);
    free(t->rec);
    free(t);
    return rc;
}
