/*
 * api/metrics.c: growable text buffers, Prometheus histograms, and the
 * transport's counters (requests by route, method and status; latency per
 * route; connections; bytes) rendered as Prometheus text exposition format
 * 0.0.4.  Counters are plain integers: they are only touched on the loop
 * thread.
 */
#include "api/http_priv.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- api_buf ------------------------------------------------------------------- */

void api_buf_init(struct api_buf *b)
{
    *b = (struct api_buf){0};
}

void api_buf_free(struct api_buf *b)
{
    free(b->data);
    *b = (struct api_buf){0};
}

static int buf_reserve(struct api_buf *b, size_t add)
{
    if (b->oom)
        return MOED_ENOMEM;
    if (add > SIZE_MAX / 2 - b->len)
        goto fail;
    if (b->len + add + 1 <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + add + 1)
        cap *= 2;
    char *d = realloc(b->data, cap);
    if (!d)
        goto fail;
    b->data = d;
    b->cap = cap;
    return 0;
fail:
    b->oom = true;
    return MOED_ENOMEM;
}

int api_buf_append(struct api_buf *b, const void *data, size_t len)
{
    if (buf_reserve(b, len))
        return MOED_ENOMEM;
    if (len)
        memcpy(b->data + b->len, data, len);
    b->len += len;
    b->data[b->len] = '\0';
    return 0;
}

int api_buf_vprintf(struct api_buf *b, const char *fmt, va_list ap)
{
    va_list ap2;
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap2);
    va_end(ap2);
    if (n < 0) {
        b->oom = true;
        return MOED_EINVAL;
    }
    if (buf_reserve(b, (size_t)n))
        return MOED_ENOMEM;
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    b->len += (size_t)n;
    return 0;
}

int api_buf_printf(struct api_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = api_buf_vprintf(b, fmt, ap);
    va_end(ap);
    return rc;
}

/* ---- histograms ------------------------------------------------------------------ */

static const double default_bounds[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
                                        2.5,   5,    10,    30,   60,  120,  300};

int api_hist_init(struct api_hist *h, const double *bounds, size_t n)
{
    if (!bounds) {
        bounds = default_bounds;
        n = sizeof default_bounds / sizeof default_bounds[0];
    }
    memset(h, 0, sizeof *h);
    if (n > API_HIST_MAX)
        return MOED_ERANGE;
    for (size_t i = 0; i < n; i++)
        if (!isfinite(bounds[i]) || (i && bounds[i] <= bounds[i - 1]))
            return MOED_EINVAL;
    h->n = n;
    memcpy(h->le, bounds, n * sizeof *bounds);
    return 0;
}

void api_hist_observe(struct api_hist *h, double v)
{
    size_t i = 0;
    while (i < h->n && v > h->le[i])
        i++;
    h->counts[i]++;
    h->count++;
    h->sum += v;
}

int api_hist_render(struct api_buf *b, const char *name, const char *labels,
                    const struct api_hist *h)
{
    const char *l = labels ? labels : "";
    const char *sep = *l ? "," : "";
    uint64_t cum = 0;
    for (size_t i = 0; i <= h->n; i++) {
        cum += h->counts[i];
        if (i < h->n)
            api_buf_printf(b, "%s_bucket{%s%sle=\"%g\"} %llu\n", name, l, sep, h->le[i],
                           (unsigned long long)cum);
        else
            api_buf_printf(b, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", name, l, sep,
                           (unsigned long long)cum);
    }
    api_buf_printf(b, "%s_sum%s%s%s %.9g\n", name, *l ? "{" : "", l, *l ? "}" : "", h->sum);
    api_buf_printf(b, "%s_count%s%s%s %llu\n", name, *l ? "{" : "", l, *l ? "}" : "",
                   (unsigned long long)h->count);
    return b->oom ? MOED_ENOMEM : 0;
}

/* ---- per-route counters ------------------------------------------------------------ */

int api__stats_add_route(struct api_server *s, const char *path, size_t *idx)
{
    struct api_route_stats *n = realloc(s->rstats, (s->n_rstats + 1) * sizeof *n);
    if (!n)
        return MOED_ENOMEM;
    s->rstats = n;
    struct api_route_stats *st = &n[s->n_rstats];
    memset(st, 0, sizeof *st);
    st->label = strdup(path);
    if (!st->label)
        return MOED_ENOMEM;
    api_hist_init(&st->latency, NULL, 0);
    *idx = s->n_rstats++;
    return 0;
}

void api__stats_free(struct api_server *s)
{
    for (size_t i = 0; i < s->n_rstats; i++)
        free(s->rstats[i].label);
    free(s->rstats);
    s->rstats = NULL;
    s->n_rstats = 0;
}

void api__stats_record(struct api_server *s, const struct api_req *r, int status, double seconds)
{
    struct api_route_stats *st = &s->rstats[r->rstats < s->n_rstats ? r->rstats : 0];
    const char *method = r->method && *r->method ? r->method : "UNKNOWN";
    size_t i;
    for (i = 0; i < st->n_codes; i++)
        if (st->codes[i].status == status && strcmp(st->codes[i].method, method) == 0)
            break;
    if (i == st->n_codes) {
        if (st->n_codes == API_MAX_CODES) {
            st->codes_overflow++;
            goto latency;
        }
        st->codes[i].status = status;
        snprintf(st->codes[i].method, sizeof st->codes[i].method, "%s", method);
        st->n_codes++;
    }
    st->codes[i].n++;
latency:
    api_hist_observe(&st->latency, seconds);
}

/* A label value with \, " and newline escaped. */
static void label_value(struct api_buf *b, const char *v)
{
    for (; *v; v++) {
        if (*v == '\\' || *v == '"')
            api_buf_printf(b, "\\%c", *v);
        else if (*v == '\n')
            api_buf_append(b, "\\n", 2);
        else
            api_buf_append(b, v, 1);
    }
}

static void metric_head(struct api_buf *b, const char *name, const char *type, const char *help)
{
    api_buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

int api_metrics_render(const struct api_server *s, struct api_buf *b)
{
    const struct api_stats *t = &s->stats;
    metric_head(b, "moed_http_connections_open", "gauge", "Client connections open.");
    api_buf_printf(b, "moed_http_connections_open %llu\n", (unsigned long long)t->connections_open);
    metric_head(b, "moed_http_connections_total", "counter", "Client connections accepted.");
    api_buf_printf(b, "moed_http_connections_total %llu\n",
                   (unsigned long long)t->connections_total);
    metric_head(b, "moed_http_connections_rejected_total", "counter",
                "Connections answered 503 because max_connections were open.");
    api_buf_printf(b, "moed_http_connections_rejected_total %llu\n",
                   (unsigned long long)t->connections_rejected);
    metric_head(b, "moed_http_requests_active", "gauge", "Requests being handled or written.");
    api_buf_printf(b, "moed_http_requests_active %llu\n", (unsigned long long)t->requests_active);
    metric_head(b, "moed_http_streams_active", "gauge", "Server-sent event streams open.");
    api_buf_printf(b, "moed_http_streams_active %llu\n", (unsigned long long)t->streams_active);
    metric_head(b, "moed_http_requests_cancelled_total", "counter",
                "Requests whose client went away before the response ended.");
    api_buf_printf(b, "moed_http_requests_cancelled_total %llu\n",
                   (unsigned long long)t->cancelled_total);
    metric_head(b, "moed_http_bytes_received_total", "counter", "Bytes read from clients.");
    api_buf_printf(b, "moed_http_bytes_received_total %llu\n", (unsigned long long)t->bytes_in);
    metric_head(b, "moed_http_bytes_sent_total", "counter", "Bytes written to clients.");
    api_buf_printf(b, "moed_http_bytes_sent_total %llu\n", (unsigned long long)t->bytes_out);

    metric_head(b, "moed_http_requests_total", "counter",
                "Requests answered, by route, method and status (499: client left first).");
    for (size_t i = 0; i < s->n_rstats; i++) {
        const struct api_route_stats *st = &s->rstats[i];
        for (size_t j = 0; j < st->n_codes; j++) {
            api_buf_append(b, "moed_http_requests_total{route=\"", 32);
            label_value(b, st->label);
            api_buf_printf(b, "\",method=\"%s\",code=\"%d\"} %llu\n", st->codes[j].method,
                           st->codes[j].status, (unsigned long long)st->codes[j].n);
        }
    }
    metric_head(b, "moed_http_request_duration_seconds", "histogram",
                "Time from dispatch to the last byte handed to the kernel, by route.");
    for (size_t i = 0; i < s->n_rstats; i++) {
        const struct api_route_stats *st = &s->rstats[i];
        if (!st->latency.count && i == 0)
            continue;
        struct api_buf l;
        api_buf_init(&l);
        api_buf_append(&l, "route=\"", 7);
        label_value(&l, st->label);
        api_buf_append(&l, "\"", 1);
        if (l.oom)
            b->oom = true;
        else
            api_hist_render(b, "moed_http_request_duration_seconds", l.data, &st->latency);
        api_buf_free(&l);
    }
    return b->oom ? MOED_ENOMEM : 0;
}
