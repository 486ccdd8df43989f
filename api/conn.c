/*
 * api/conn.c: one client connection: reading and parsing with llhttp,
 * limits, timeouts, the pipeline of parsed requests, dispatch to handlers,
 * the output queue and closing.
 *
 * A connection handles one request at a time ("active"): the next parsed
 * request is dispatched only after the active one's final bytes have been
 * taken by the kernel (write callback), so responses go out in request order
 * and a handler never runs inside another's response call.  Reading goes on
 * while a request is active, so a client that leaves is seen at once; parsed
 * requests wait in a queue of at most max_pipeline, after which the parser is
 * paused, the rest of the input kept, and reading stopped.
 *
 * Errors found while parsing (400, 408, 413, 417, 431) become a "fatal"
 * request queued behind the others: it is answered in its turn and the
 * connection then closes.  Errors known from the headers alone (404, 405,
 * 401) are answered in turn and the connection lives on; their body is read
 * and dropped.
 *
 * Closing is either hard (uv_close now: client gone, write error, stall,
 * server stop; an unfinished active request gets on_cancel) or graceful
 * (after a response that says Connection: close: shut down our side, then
 * read and drop input for up to linger_ms so that the client's kernel does
 * not answer our close with a reset that would destroy the response).
 *
 * One timer per connection; which timeout it measures follows from the state
 * (conn_arm_timer).
 */
#include "api/http_priv.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static void conn_arm_timer(struct api_conn *c);
static void conn_pump(struct api_conn *c);
static void conn_close_graceful(struct api_conn *c);
static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf);
static const llhttp_settings_t conn_settings;

/* ---- requests --------------------------------------------------------------- */

static struct api_req *req_new(struct api_conn *c)
{
    struct api_req *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->conn = c;
    r->id = c->srv->next_id++;
    r->method = "";
    return r;
}

static void req_free(struct api_req *r)
{
    if (!r)
        return;
    free(r->txt);
    free(r->hdrs);
    free(r->body);
    free(r->err_msg);
    free(r->err_allow);
    free(r->extra);
    free(r);
}

static int txt_append(struct api_req *r, const char *p, size_t n)
{
    if (r->txt_len + n + 1 > r->txt_cap) {
        size_t cap = r->txt_cap ? r->txt_cap : 256;
        while (cap < r->txt_len + n + 1)
            cap *= 2;
        char *t = realloc(r->txt, cap);
        if (!t)
            return -1;
        r->txt = t;
        r->txt_cap = cap;
    }
    memcpy(r->txt + r->txt_len, p, n);
    r->txt_len += n;
    r->txt[r->txt_len] = '\0';
    return 0;
}

static void pend_push(struct api_conn *c, struct api_req *r)
{
    r->held = r->txt_cap + r->body_cap;
    c->pend_bytes += r->held;
    r->next = NULL;
    if (c->pend_tail)
        c->pend_tail->next = r;
    else
        c->pend_head = r;
    c->pend_tail = r;
    c->n_pending++;
}

static struct api_req *pend_pop(struct api_conn *c)
{
    struct api_req *r = c->pend_head;
    if (r) {
        c->pend_head = r->next;
        if (!c->pend_head)
            c->pend_tail = NULL;
        r->next = NULL;
        c->n_pending--;
        c->pend_bytes -= r->held;
    }
    return r;
}

static void pend_clear(struct api_conn *c)
{
    struct api_req *r;
    while ((r = pend_pop(c)))
        req_free(r);
    req_free(c->parsing);
    c->parsing = NULL;
    free(c->leftover);
    c->leftover = NULL;
    c->leftover_len = 0;
}

/* Mark r (or a new request when none is being parsed) as an error that ends
 * the connection, queue it, and stop parsing. */
static void conn_fatal(struct api_conn *c, int status, const char *code, const char *msg)
{
    struct api_req *r = c->parsing;
    c->parsing = NULL;
    if (!r)
        r = req_new(c);
    c->parse_dead = true;
    free(c->leftover);
    c->leftover = NULL;
    c->leftover_len = 0;
    if (!r) {
        api__conn_close(c);
        return;
    }
    free(r->body);
    r->body = NULL;
    r->body_len = r->body_cap = 0;
    r->err_status = status;
    r->err_code = code;
    r->err_param = NULL;
    free(r->err_msg);
    r->err_msg = strdup(msg);
    r->err_fatal = true;
    r->keep_alive = false;
    pend_push(c, r);
}

/* A rejection known at header time; the connection survives it. */
static void req_reject(struct api_req *r, int status, const char *code, const char *msg)
{
    if (r->err_status)
        return;
    r->err_status = status;
    r->err_code = code;
    r->err_msg = strdup(msg);
    r->discard_body = true;
}

static int parser_fail(struct api_conn *c, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int parser_fail(struct api_conn *c, int status, const char *code, const char *fmt, ...)
{
    c->fatal_status = status;
    c->fatal_code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->fatal_msg, sizeof c->fatal_msg, fmt, ap);
    va_end(ap);
    llhttp_set_error_reason(&c->parser, "moed limit");
    return HPE_USER;
}

/* ---- llhttp callbacks -------------------------------------------------------- */

static struct api_conn *P(llhttp_t *p)
{
    return p->data;
}

static int hdr_bytes(struct api_conn *c, size_t n)
{
    struct api_req *r = c->parsing;
    r->hdr_bytes += n;
    if (r->hdr_bytes > c->srv->lim.max_header_bytes)
        return parser_fail(c, 431, "headers_too_large",
                           "request headers are larger than the limit of %zu bytes",
                           c->srv->lim.max_header_bytes);
    return 0;
}

static int oom(struct api_conn *c)
{
    return parser_fail(c, 503, "out_of_memory", "server out of memory");
}

static int on_message_begin(llhttp_t *p)
{
    struct api_conn *c = P(p);
    req_free(c->parsing);
    c->parsing = req_new(c);
    if (!c->parsing)
        return oom(c);
    c->msg_start = uv_now(c->srv->loop);
    return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t n)
{
    struct api_conn *c = P(p);
    int rc = hdr_bytes(c, n);
    if (rc)
        return rc;
    return txt_append(c->parsing, at, n) ? oom(c) : 0;
}

static int on_url_complete(llhttp_t *p)
{
    struct api_conn *c = P(p);
    return txt_append(c->parsing, "", 1) ? oom(c) : 0; /* keeps the NUL after the url */
}

static int hdr_begin(struct api_conn *c)
{
    struct api_req *r = c->parsing;
    if (r->n_hdrs >= c->srv->lim.max_headers)
        return parser_fail(c, 431, "headers_too_large", "more than %u request headers",
                           c->srv->lim.max_headers);
    if (r->n_hdrs == r->cap_hdrs) {
        size_t cap = r->cap_hdrs ? 2 * r->cap_hdrs : 16;
        struct api_hdr *h = realloc(r->hdrs, cap * sizeof *h);
        if (!h)
            return oom(c);
        r->hdrs = h;
        r->cap_hdrs = cap;
    }
    r->hdrs[r->n_hdrs++] = (struct api_hdr){.name_off = r->txt_len, .val_off = r->txt_len};
    r->hdr_state = 1;
    return hdr_bytes(c, 4); /* ": " and CRLF */
}

/* RFC 9110 5.1: a field name is a token; Debian's llhttp 8 lets spaces and
 * other separators through ("X-Test : y"), which proxies would parse
 * differently (request smuggling), so they are refused here. */
static bool is_tchar(unsigned char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           (ch && strchr("!#$%&'*+-.^_`|~", ch) != NULL);
}

static int on_header_field(llhttp_t *p, const char *at, size_t n)
{
    struct api_conn *c = P(p);
    struct api_req *r = c->parsing;
    int rc;
    for (size_t i = 0; i < n; i++)
        if (!is_tchar((unsigned char)at[i]))
            return parser_fail(c, 400, "invalid_header",
                               "invalid character 0x%02x in a header name",
                               (unsigned char)at[i]);
    if (r->headers_done) /* trailers of a chunked body: counted, not kept */
        return hdr_bytes(c, n + 4);
    if (r->hdr_state != 1 && (rc = hdr_begin(c)))
        return rc;
    if ((rc = hdr_bytes(c, n)))
        return rc;
    return txt_append(r, at, n) ? oom(c) : 0;
}

static int on_header_field_complete(llhttp_t *p)
{
    struct api_conn *c = P(p);
    struct api_req *r = c->parsing;
    int rc;
    if (r->headers_done)
        return 0;
    if (r->hdr_state != 1 && (rc = hdr_begin(c)))
        return rc;
    if (txt_append(r, "", 1))
        return oom(c);
    r->hdrs[r->n_hdrs - 1].val_off = r->txt_len;
    r->hdr_state = 2;
    return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t n)
{
    struct api_conn *c = P(p);
    struct api_req *r = c->parsing;
    int rc = hdr_bytes(c, n);
    if (rc || r->headers_done)
        return rc;
    return txt_append(r, at, n) ? oom(c) : 0;
}

static int on_header_value_complete(llhttp_t *p)
{
    struct api_conn *c = P(p);
    struct api_req *r = c->parsing;
    if (r->headers_done)
        return 0;
    size_t start = r->hdrs[r->n_hdrs - 1].val_off;
    while (r->txt_len > start && (r->txt[r->txt_len - 1] == ' ' || r->txt[r->txt_len - 1] == '\t'))
        r->txt_len--;
    if (txt_append(r, "", 1))
        return oom(c);
    r->hdr_state = 0;
    return 0;
}

static int on_headers_complete(llhttp_t *p)
{
    struct api_conn *c = P(p);
    struct api_server *s = c->srv;
    struct api_req *r = c->parsing;
    r->headers_done = true;
    r->method = llhttp_method_name((llhttp_method_t)p->method);
    r->head_only = p->method == HTTP_HEAD;
    r->http_major = p->http_major;
    r->http_minor = p->http_minor;
    r->keep_alive = llhttp_should_keep_alive(p);
    if (!r->txt && txt_append(r, "", 1))
        return oom(c);

    /* Split the target into path and query. */
    char *q = strchr(r->txt, '?');
    r->path_off = 0;
    if (q) {
        *q = '\0';
        r->query_off = (size_t)(q + 1 - r->txt);
    } else {
        r->query_off = strlen(r->txt);
    }
    const char *path = r->txt;

    if (path[0] != '/') {
        req_reject(r, 400, "invalid_request", "request target must be a path starting with '/'");
    } else {
        char allow[128];
        size_t stats = 0;
        const struct api_route *rt = api__route_find(s, r->method, path, allow, sizeof allow);
        if (rt) {
            r->route = rt;
            r->rstats = rt->metrics;
            if ((rt->flags & API_ROUTE_AUTH) && s->api_key) {
                const char *auth = api_req_header(r, "Authorization");
                if (!api__auth_ok(s, auth))
                    req_reject(r, 401, "invalid_api_key",
                               auth ? "Incorrect API key provided."
                                    : "Missing API key: send 'Authorization: Bearer KEY'.");
            }
        } else if (allow[0]) {
            for (size_t i = 0; i < s->n_routes; i++)
                if (strcmp(s->routes[i].path, path) == 0)
                    stats = s->routes[i].metrics;
            r->rstats = stats;
            char msg[320];
            snprintf(msg, sizeof msg, "method %s is not allowed on %.64s (allowed: %.128s)",
                     r->method, path, allow);
            req_reject(r, 405, "method_not_allowed", msg);
            r->err_allow = strdup(allow);
        } else {
            char msg[120];
            snprintf(msg, sizeof msg, "no route for %.64s", path);
            req_reject(r, 404, "not_found", msg);
        }
    }

    bool chunked = (p->flags & F_CHUNKED) != 0;
    bool has_body = chunked || p->content_length > 0;
    const char *expect = api_req_header(r, "Expect");
    bool cont = false;
    if (expect && has_body) {
        if (strcasecmp(expect, "100-continue") != 0)
            return parser_fail(c, 417, "expectation_failed",
                               "unsupported Expect header (only 100-continue is)");
        cont = r->http_major == 1 && r->http_minor >= 1;
    }
    if (!chunked && p->content_length > s->lim.max_body_bytes) {
        if (r->err_status)
            return parser_fail(c, r->err_status, r->err_code, "%s", r->err_msg);
        return parser_fail(c, 413, "request_too_large",
                           "request body of %llu bytes is larger than the limit of %zu bytes",
                           (unsigned long long)p->content_length, s->lim.max_body_bytes);
    }
    if (r->err_status && cont) /* the client waits for our word: answer now and close */
        return parser_fail(c, r->err_status, r->err_code, "%s", r->err_msg);
    if (cont) {
        r->want_continue = true;
        if (!c->active && !c->pend_head) {
            r->want_continue = false;
            static const char k100[] = "HTTP/1.1 100 Continue\r\n\r\n";
            api__conn_write(c, k100, sizeof k100 - 1);
        }
    }
    if (!r->discard_body && !chunked && p->content_length > 0) {
        r->body = malloc((size_t)p->content_length + 1);
        if (!r->body)
            return oom(c);
        r->body_cap = (size_t)p->content_length + 1;
    }
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t n)
{
    struct api_conn *c = P(p);
    struct api_req *r = c->parsing;
    size_t max = c->srv->lim.max_body_bytes;
    if (n > max || r->body_len > max - n)
        return parser_fail(c, 413, "request_too_large",
                           "request body is larger than the limit of %zu bytes", max);
    if (r->discard_body) {
        r->body_len += n;
        return 0;
    }
    if (r->body_len + n + 1 > r->body_cap) {
        size_t cap = r->body_cap ? r->body_cap : 1024;
        while (cap < r->body_len + n + 1)
            cap *= 2;
        if (cap > max + 1)
            cap = max + 1;
        char *b = realloc(r->body, cap);
        if (!b)
            return oom(c);
        r->body = b;
        r->body_cap = cap;
    }
    memcpy(r->body + r->body_len, at, n);
    r->body_len += n;
    return 0;
}

/* Parsed requests waiting behind the active one are bounded in number and
 * in bytes, so a connection holds at most about three bodies (active,
 * waiting, being read) and max_pipeline heads. */
static bool pipeline_full(const struct api_conn *c)
{
    return c->n_pending >= c->srv->lim.max_pipeline || c->pend_bytes >= c->srv->lim.max_body_bytes;
}

static int on_message_complete(llhttp_t *p)
{
    struct api_conn *c = P(p);
    struct api_req *r = c->parsing;
    c->parsing = NULL;
    if (r->discard_body) {
        free(r->body);
        r->body = NULL;
        r->body_len = 0;
    }
    if (r->body)
        r->body[r->body_len] = '\0';
    pend_push(c, r);
    if (pipeline_full(c))
        return HPE_PAUSED;
    return 0;
}

static const llhttp_settings_t conn_settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_url_complete = on_url_complete,
    .on_header_field = on_header_field,
    .on_header_field_complete = on_header_field_complete,
    .on_header_value = on_header_value,
    .on_header_value_complete = on_header_value_complete,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* ---- input ------------------------------------------------------------------ */

static void conn_feed(struct api_conn *c, const char *data, size_t n)
{
    llhttp_errno_t err = llhttp_execute(&c->parser, data, n);
    if (err == HPE_OK)
        return;
    if (err == HPE_PAUSED) {
        /* Pipeline full: keep what was not parsed, stop reading. */
        const char *pos = llhttp_get_error_pos(&c->parser);
        size_t used = pos ? (size_t)(pos - data) : n;
        char *keep = NULL;
        if (used < n) {
            keep = malloc(n - used);
            if (!keep) {
                api__conn_close(c);
                return;
            }
            memcpy(keep, data + used, n - used);
        }
        free(c->leftover);
        c->leftover = keep;
        c->leftover_len = n - used;
        if (!c->read_paused) {
            c->read_paused = true;
            uv_read_stop((uv_stream_t *)&c->tcp);
        }
        return;
    }
    if (err == HPE_PAUSED_UPGRADE) {
        /* A protocol switch we do not offer: answer the request, then close. */
        c->parse_dead = true;
        if (c->pend_tail)
            c->pend_tail->keep_alive = false;
        return;
    }
    if (c->fatal_status) {
        conn_fatal(c, c->fatal_status, c->fatal_code, c->fatal_msg);
    } else {
        char msg[200];
        snprintf(msg, sizeof msg, "malformed HTTP request: %s",
                 llhttp_get_error_reason(&c->parser));
        conn_fatal(c, 400, "invalid_request", msg);
    }
}

/* Continue parsing kept input once the pipeline has room. */
static void conn_resume(struct api_conn *c)
{
    if (!c->read_paused || c->closing || c->shutting || pipeline_full(c))
        return;
    c->read_paused = false;
    if (!c->parse_dead) {
        llhttp_resume(&c->parser);
        char *lo = c->leftover;
        size_t n = c->leftover_len;
        c->leftover = NULL;
        c->leftover_len = 0;
        if (lo) {
            conn_feed(c, lo, n);
            free(lo);
        }
        if (c->closing)
            return;
    }
    if (!c->read_paused)
        uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct api_conn *c = h->data;
    buf->base = c->srv->rbuf;
    buf->len = sizeof c->srv->rbuf;
}

static void conn_on_eof(struct api_conn *c, ssize_t err)
{
    if (c->lingering || c->reject || err != UV_EOF) {
        api__conn_close(c);
        return;
    }
    /* The client has stopped sending.  Unfinished work is cancelled; a
     * response already queued is still delivered. */
    if (c->active && !c->active->finished) {
        api__conn_close(c);
        return;
    }
    if (c->active) {
        c->active->close_after = true;
        pend_clear(c);
        c->parse_dead = true;
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->read_paused = true;
        return;
    }
    api__conn_close(c);
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    struct api_conn *c = st->data;
    if (nread == 0 || c->closing)
        return;
    if (nread < 0) {
        conn_on_eof(c, nread);
        return;
    }
    c->srv->stats.bytes_in += (uint64_t)nread;
    if (c->lingering || c->reject || c->parse_dead)
        return;
    if (c->read_paused) {
        /* libuv stops calling after uv_read_stop; should a read slip in,
         * keep it behind the kept input rather than feed a paused parser. */
        char *lo = realloc(c->leftover, c->leftover_len + (size_t)nread);
        if (!lo) {
            api__conn_close(c);
            return;
        }
        memcpy(lo + c->leftover_len, buf->base, (size_t)nread);
        c->leftover = lo;
        c->leftover_len += (size_t)nread;
        return;
    }
    conn_feed(c, buf->base, (size_t)nread);
    if (c->closing)
        return;
    conn_pump(c);
    conn_arm_timer(c);
}

/* ---- output ----------------------------------------------------------------- */

struct wreq {
    uv_write_t req;
    size_t len;
    char data[];
};

static void conn_release_active(struct api_conn *c);

static void on_write(uv_write_t *req, int status)
{
    struct wreq *w = (struct wreq *)req;
    struct api_conn *c = req->handle->data;
    c->queued -= w->len;
    if (status == 0)
        c->srv->stats.bytes_out += w->len;
    free(w);
    if (c->closing)
        return;
    if (status < 0) {
        api__conn_close(c);
        return;
    }
    if (c->active) {
        api__req_check_backpressure(c->active);
        if (c->active->finished && c->queued == 0) {
            conn_release_active(c);
            return;
        }
    } else if (c->reject && c->queued == 0) {
        conn_close_graceful(c);
        return;
    }
    conn_arm_timer(c); /* progress: restart the send timeout */
}

int api__conn_write(struct api_conn *c, const void *data, size_t len)
{
    if (c->closing || c->shutting)
        return MOED_EIO;
    if (len > UINT32_MAX)
        return MOED_ERANGE; /* uv_buf_t lengths are unsigned int */
    struct wreq *w = malloc(sizeof *w + len);
    if (!w) {
        api__conn_close(c);
        return MOED_ENOMEM;
    }
    w->len = len;
    memcpy(w->data, data, len);
    uv_buf_t b = uv_buf_init(w->data, (unsigned)len);
    int rc = uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, on_write);
    if (rc) {
        free(w);
        api__conn_close(c);
        return MOED_EIO;
    }
    bool was_idle = c->queued == 0;
    c->queued += len;
    if (was_idle)
        conn_arm_timer(c);
    return 0;
}

void api__req_check_backpressure(struct api_req *r)
{
    struct api_conn *c = r->conn;
    if (!c || r->finished)
        return;
    size_t q = uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp);
    bool now =
        r->congested ? q >= c->srv->lim.write_high_water / 4 : q > c->srv->lim.write_high_water;
    if (now != r->congested) {
        r->congested = now;
        if (r->hooks.on_backpressure)
            r->hooks.on_backpressure(r, r->hooks.ud, now);
    }
}

void api__req_finished(struct api_req *r)
{
    r->finished = true;
    if (r->conn)
        api__map_del(r->conn->srv, r);
    if (r->streaming)
        r->conn->srv->stats.streams_active--;
}

/* ---- dispatch ----------------------------------------------------------------- */

static void req_dispatch(struct api_conn *c, struct api_req *r)
{
    struct api_server *s = c->srv;
    r->t_dispatch = uv_hrtime();
    s->stats.requests_active++;
    if (c->close_after_current || s->draining)
        r->keep_alive = false;
    if (r->err_status) {
        if (r->err_status == 405 && r->err_allow)
            api_req_add_header(r, "Allow", r->err_allow);
        if (r->err_status == 401)
            api_req_add_header(r, "WWW-Authenticate", "Bearer");
        api_respond_error(r, r->err_status, r->err_param, r->err_code, "%s",
                          r->err_msg ? r->err_msg : api_status_reason(r->err_status));
        return;
    }
    if (api__map_put(s, r)) {
        api_respond_error(r, 503, NULL, "out_of_memory", "server out of memory");
        return;
    }
    r->route->fn(r, r->route->ud);
}

static void conn_pump(struct api_conn *c)
{
    if (c->closing || c->shutting)
        return;
    if (!c->active && c->pend_head) {
        struct api_req *r = pend_pop(c);
        c->active = r;
        req_dispatch(c, r);
        if (c->closing || c->shutting)
            return;
    }
    if (!c->active && !c->pend_head && c->parsing && c->parsing->want_continue) {
        static const char k100[] = "HTTP/1.1 100 Continue\r\n\r\n";
        c->parsing->want_continue = false;
        api__conn_write(c, k100, sizeof k100 - 1);
    }
    conn_resume(c);
}

static void conn_release_active(struct api_conn *c)
{
    struct api_server *s = c->srv;
    struct api_req *r = c->active;
    c->active = NULL;
    s->stats.requests_active--;
    api__stats_record(s, r, r->status, (double)(uv_hrtime() - r->t_dispatch) * 1e-9);
    bool close = !r->keep_alive || r->close_after || r->err_fatal || c->close_after_current;
    req_free(r);
    c->n_served++;
    if (close) {
        conn_close_graceful(c);
        return;
    }
    c->idle_start = uv_now(s->loop);
    if (c->parsing)
        c->msg_start = c->idle_start; /* its header clock starts now */
    conn_pump(c);
    conn_arm_timer(c);
}

/* ---- timers --------------------------------------------------------------------- */

static void on_timer(uv_timer_t *t)
{
    struct api_conn *c = t->data;
    if (c->closing)
        return;
    if (c->lingering || c->reject) {
        api__conn_close(c);
    } else if (c->active) {
        api__log(c->srv, 2, "http: %s: output stalled for %u ms, closing", c->peer,
                 c->srv->lim.send_timeout_ms);
        api__conn_close(c);
    } else if (c->parsing) {
        bool in_body = c->parsing->headers_done;
        conn_fatal(c, 408, "request_timeout",
                   in_body ? "timed out reading the request body"
                           : "timed out reading the request headers");
        conn_pump(c);
    } else {
        api__conn_close(c); /* idle keep-alive connection */
    }
}

static void conn_arm_timer(struct api_conn *c)
{
    if (c->closing || c->lingering)
        return;
    const struct api_limits *L = &c->srv->lim;
    uint64_t ms;
    if (c->reject) {
        ms = L->send_timeout_ms;
    } else if (c->active) {
        if (c->queued == 0) {
            uv_timer_stop(&c->timer);
            return;
        }
        ms = L->send_timeout_ms;
    } else if (c->parsing && !c->parsing->headers_done) {
        uint64_t el = uv_now(c->srv->loop) - c->msg_start;
        ms = el >= L->header_timeout_ms ? 1 : L->header_timeout_ms - el;
    } else if (c->parsing) {
        ms = L->body_timeout_ms;
    } else {
        /* Measured from when the connection went idle: bytes that start no
         * request (stray CRLFs) do not buy time. */
        uint64_t lim = c->n_served ? L->idle_timeout_ms : L->header_timeout_ms;
        uint64_t el = uv_now(c->srv->loop) - c->idle_start;
        ms = el >= lim ? 1 : lim - el;
    }
    uv_timer_start(&c->timer, on_timer, ms, 0);
}

/* ---- open and close --------------------------------------------------------------- */

static void conn_free(struct api_conn *c)
{
    struct api_server *s = c->srv;
    struct api_req *r = c->active;
    c->active = NULL;
    if (r) {
        s->stats.requests_active--;
        if (!r->finished || !r->started) {
            /* Counted as nginx does, 499: the client closed the request. */
            s->stats.cancelled_total++;
            api__stats_record(s, r, 499, (double)(uv_hrtime() - r->t_dispatch) * 1e-9);
        }
        if (!r->finished) {
            if (r->streaming)
                s->stats.streams_active--;
            if (r->hooks.on_cancel)
                r->hooks.on_cancel(r, r->hooks.ud);
        } else if (r->started) {
            api__stats_record(s, r, r->status, (double)(uv_hrtime() - r->t_dispatch) * 1e-9);
        }
        req_free(r);
    }
    pend_clear(c);
    if (c->prev)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    if (c->reject) {
        s->n_rejecting--;
    } else {
        s->n_conns--;
        s->stats.connections_open--;
    }
    free(c);
}

static void on_conn_closed(uv_handle_t *h)
{
    struct api_conn *c = h->data;
    struct api_server *s = c->srv;
    if (--c->closes_left == 0)
        conn_free(c);
    api__handle_closed(s); /* last: it may run the server's stop callback */
}

void api__conn_close(struct api_conn *c)
{
    if (c->closing)
        return;
    c->closing = true;
    if (c->active)
        api__map_del(c->srv, c->active);
    uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
    uv_close((uv_handle_t *)&c->timer, on_conn_closed);
}

void api__conn_close_idle(struct api_conn *c)
{
    if (!c->closing && !c->reject && !c->active && !c->pend_head && !c->parsing)
        api__conn_close(c);
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    struct api_conn *c = req->handle->data;
    if (!c->closing && status < 0)
        api__conn_close(c);
}

static void conn_close_graceful(struct api_conn *c)
{
    if (c->closing || c->shutting)
        return;
    c->shutting = true;
    pend_clear(c);
    if (uv_shutdown(&c->shutdown_req, (uv_stream_t *)&c->tcp, on_shutdown)) {
        api__conn_close(c);
        return;
    }
    c->lingering = true;
    if (c->read_paused) {
        c->read_paused = false;
        uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    }
    uv_timer_start(&c->timer, on_timer, c->srv->lim.linger_ms, 0);
}

static void peer_name(struct api_conn *c)
{
    struct sockaddr_storage ss;
    int len = sizeof ss;
    char ip[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) == 0) {
        if (ss.ss_family == AF_INET) {
            uv_ip4_name((struct sockaddr_in *)&ss, ip, sizeof ip);
            port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
        } else if (ss.ss_family == AF_INET6) {
            uv_ip6_name((struct sockaddr_in6 *)&ss, ip, sizeof ip);
            port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
        }
    }
    snprintf(c->peer, sizeof c->peer, ss.ss_family == AF_INET6 ? "[%s]:%d" : "%s:%d", ip, port);
}

/* Connections being answered 503 at once; beyond this many, new ones over
 * the limit are closed without an answer. */
#define API_MAX_REJECTING 64

void api__conn_accept(struct api_server *s)
{
    struct api_conn *c = calloc(1, sizeof *c);
    if (!c) {
        api__log(s, 0, "http: out of memory accepting a connection");
        return;
    }
    c->srv = s;
    uv_tcp_init(s->loop, &c->tcp);
    uv_timer_init(s->loop, &c->timer);
    c->tcp.data = c->timer.data = c;
    c->closes_left = 2;
    s->handles_open += 2;
    c->next = s->conns;
    if (s->conns)
        s->conns->prev = c;
    s->conns = c;
    bool over = s->n_conns >= s->lim.max_connections || s->draining;
    if (over) {
        c->reject = true;
        s->n_rejecting++;
    } else {
        s->n_conns++;
        s->stats.connections_open++;
    }
    if (uv_accept((uv_stream_t *)&s->listener, (uv_stream_t *)&c->tcp)) {
        api__conn_close(c);
        return;
    }
    s->stats.connections_total++;
    c->idle_start = uv_now(s->loop);
    uv_tcp_nodelay(&c->tcp, 1);
    peer_name(c);
    if (over) {
        s->stats.connections_rejected++;
        if (s->n_rejecting > API_MAX_REJECTING) {
            api__conn_close(c);
            return;
        }
        api__log(s, 1, "http: %s: over max_connections (%u), answering 503", c->peer,
                 s->lim.max_connections);
        char *body =
            api_error_json(503, NULL, "too many connections; retry later", NULL, "server_busy");
        char head[256];
        int n = snprintf(head, sizeof head,
                         "HTTP/1.1 503 Service Unavailable\r\nServer: moed\r\n"
                         "Content-Type: application/json\r\nContent-Length: %zu\r\n"
                         "Retry-After: 1\r\nConnection: close\r\n\r\n",
                         body ? strlen(body) : 0);
        struct api_buf b;
        api_buf_init(&b);
        api_buf_append(&b, head, (size_t)n);
        if (body)
            api_buf_append(&b, body, strlen(body));
        free(body);
        if (b.oom || api__conn_write(c, b.data, b.len)) {
            api_buf_free(&b);
            api__conn_close(c);
            return;
        }
        api_buf_free(&b);
        uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
        conn_arm_timer(c);
        return;
    }
    llhttp_init(&c->parser, HTTP_REQUEST, &conn_settings);
    c->parser.data = c;
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    conn_arm_timer(c);
}
