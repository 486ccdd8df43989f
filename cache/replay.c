/*
 * Trace reading and replay (replay.h).  The file is read whole (a decode
 * trace is ~56 bytes per token and layer), checked like
 * tools/trace_summary.py checks it, and cut into events.
 */
#include "cache/replay.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/trace.h"

static uint32_t get_u32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static int32_t get_i32(const unsigned char *p) { return (int32_t)get_u32(p); }

static float get_f32(const unsigned char *p)
{
    uint32_t u = get_u32(p);
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static int read_all(const char *path, unsigned char **out, size_t *len, struct moed_err *e)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return moed_err_set(e, MOED_EIO, "%s: cannot open", path);
    size_t cap = 1 << 16, n = 0;
    unsigned char *buf = malloc(cap);
    for (;;) {
        if (!buf) {
            fclose(f);
            return moed_err_set(e, MOED_ENOMEM, "%s: out of memory", path);
        }
        n += fread(buf + n, 1, cap - n, f);
        if (n < cap)
            break;
        unsigned char *nb = cap > SIZE_MAX / 2 ? NULL : realloc(buf, cap * 2);
        if (!nb)
            free(buf);
        buf = nb;
        cap *= 2;
    }
    bool bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        return moed_err_set(e, MOED_EIO, "%s: read failed", path);
    }
    *out = buf;
    *len = n;
    return 0;
}

static int cmp_i32(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

int cache_trace_load(struct cache_trace *t, const char *path, struct moed_err *e)
{
    memset(t, 0, sizeof *t);
    unsigned char *d = NULL;
    size_t len = 0;
    int rc = read_all(path, &d, &len, e);
    if (rc)
        return rc;
    rc = MOED_EFORMAT;
    if (len < TRACE_FIXED_HEADER || memcmp(d, TRACE_MAGIC, 8) != 0) {
        moed_err_set(e, rc, "%s: not a moed routing trace (no %s header)", path, TRACE_MAGIC);
        goto fail;
    }
    uint32_t version = get_u32(d + 8), hsize = get_u32(d + 12), rsize = get_u32(d + 28),
             mlen = get_u32(d + 32);
    int32_t L = get_i32(d + 16), E = get_i32(d + 20), k = get_i32(d + 24);
    if (version != TRACE_VERSION) {
        moed_err_set(e, rc, "%s: trace version %u, this reads %u", path, version, TRACE_VERSION);
        goto fail;
    }
    if (L < 1 || E < 1 || k < 1 || k > E || (int64_t)L * E > INT32_MAX) {
        moed_err_set(e, rc, "%s: bad sizes %d layers, %d experts, top-%d", path, L, E, k);
        goto fail;
    }
    if (rsize != TRACE_RECORD_FIXED + 8u * (uint32_t)k || (uint64_t)hsize < TRACE_FIXED_HEADER + (uint64_t)mlen ||
        hsize > len) {
        moed_err_set(e, rc, "%s: inconsistent header (record %u, header %u, meta %u)", path, rsize,
                     hsize, mlen);
        goto fail;
    }
    t->n_layer = L;
    t->n_expert = E;
    t->n_used = k;
    size_t body = len - hsize;
    size_t n = body / rsize;
    t->n_records = (int64_t)n;
    t->truncated_bytes = (int64_t)(body - n * rsize);
    /* at most one event and k requests per record */
    t->ev = malloc((n + 1) * sizeof *t->ev);
    t->ids = malloc((n * k + 1) * sizeof *t->ids);
    t->weights = malloc((n * k + 1) * sizeof *t->weights);
    t->req = malloc((n * k + 1) * sizeof *t->req);
    t->req_next = malloc((n * k + 1) * sizeof *t->req_next);
    int64_t *nxt = malloc((size_t)L * E * sizeof *nxt);
    if (!t->ev || !t->ids || !t->weights || !t->req || !t->req_next || !nxt) {
        free(nxt);
        rc = moed_err_set(e, MOED_ENOMEM, "%s: out of memory for %zu records", path, n);
        goto fail;
    }
    int64_t nreq = 0;
    struct cache_event *cur = NULL;
    for (size_t r = 0; r < n; r++) {
        const unsigned char *p = d + hsize + r * rsize;
        int32_t step = get_i32(p), layer = get_i32(p + 20);
        if (layer < 0 || layer >= L) {
            free(nxt);
            moed_err_set(e, rc, "%s: record %zu: layer %d of %d", path, r, layer, L);
            goto fail;
        }
        if (!cur || cur->step != step || cur->layer != layer) {
            cur = &t->ev[t->n_event++];
            *cur = (struct cache_event){.step = step, .layer = layer, .tok_off = (int64_t)r * k,
                                        .req_off = nreq};
        }
        cur->n_tok++;
        for (int32_t j = 0; j < k; j++) {
            int32_t x = get_i32(p + 24 + 4 * j);
            if (x < 0 || x >= E) {
                free(nxt);
                moed_err_set(e, rc, "%s: record %zu: expert %d of %d", path, r, x, E);
                goto fail;
            }
            t->ids[r * k + j] = x;
            t->weights[r * k + j] = get_f32(p + 24 + 4 * (size_t)k + 4 * j);
            bool seen = false;
            for (int32_t q = 0; q < cur->n_req; q++)
                seen |= t->req[cur->req_off + q] == x;
            if (!seen) {
                t->req[nreq++] = x;
                cur->n_req++;
            }
        }
    }
    for (int64_t i = 0; i < t->n_event; i++)
        qsort(t->req + t->ev[i].req_off, (size_t)t->ev[i].n_req, sizeof *t->req, cmp_i32);
    /* next use, backwards */
    for (size_t x = 0; x < (size_t)L * E; x++)
        nxt[x] = CACHE_NEVER;
    for (int64_t i = t->n_event - 1; i >= 0; i--) {
        const struct cache_event *ev = &t->ev[i];
        for (int32_t q = 0; q < ev->n_req; q++) {
            size_t key = (size_t)ev->layer * E + t->req[ev->req_off + q];
            t->req_next[ev->req_off + q] = nxt[key];
            nxt[key] = i;
        }
    }
    free(nxt);
    free(d);
    return 0;
fail:
    free(d);
    cache_trace_free(t);
    return rc;
}

void cache_trace_free(struct cache_trace *t)
{
    free(t->ev);
    free(t->ids);
    free(t->weights);
    free(t->req);
    free(t->req_next);
    memset(t, 0, sizeof *t);
}

void cache_replay(const struct cache_trace *t, struct cache *c, double *occ_mean)
{
    int32_t *pinned = malloc(((size_t)t->n_expert + 1) * sizeof *pinned);
    int32_t *missed = malloc(((size_t)t->n_expert + 1) * sizeof *missed);
    if (!pinned || !missed)
        abort(); /* n_expert ints */
    if (occ_mean)
        for (int32_t l = 0; l < t->n_layer; l++)
            occ_mean[l] = 0;
    for (int64_t i = 0; i < t->n_event; i++) {
        const struct cache_event *ev = &t->ev[i];
        const int32_t *R = t->req + ev->req_off;
        int32_t np = 0, nm = 0;
        cache_layer_begin(c, ev->layer);
        cache_route(c, ev->layer, ev->n_tok, t->n_used, t->ids + ev->tok_off,
                    t->weights + ev->tok_off);
        for (int32_t q = 0; q < ev->n_req; q++) {
            cache_hint_next(c, ev->layer, R[q], t->req_next[ev->req_off + q]);
            int32_t s = cache_access(c, ev->layer, R[q]);
            if (s >= 0)
                pinned[np++] = s;
            else
                missed[nm++] = R[q];
        }
        for (int32_t q = 0; q < nm; q++) {
            int32_t s = cache_admit(c, ev->layer, missed[q]);
            if (s >= 0) {
                cache_ready(c, s);
                pinned[np++] = s;
            }
        }
        for (int32_t q = 0; q < np; q++)
            cache_unpin(c, pinned[q]);
        if (occ_mean)
            for (int32_t l = 0; l < t->n_layer; l++)
                occ_mean[l] += cache_occupancy(c, l);
    }
    if (occ_mean && t->n_event > 0)
        for (int32_t l = 0; l < t->n_layer; l++)
            occ_mean[l] /= (double)t->n_event;
    free(pinned);
    free(missed);
}
