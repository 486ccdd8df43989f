/*
 * Tests of api/ (the HTTP transport): a server runs on 127.0.0.1 port 0 in a
 * loop thread inside the test, and the test talks to it through real
 * sockets, writing raw requests and parsing responses with llhttp.  Engine
 * threads are played by producer threads that post events by request id.
 * Timeouts are tens of milliseconds so the whole file runs in about a second.
 */
#include "tests/unit/harness.h"

#include "api/http.h"
#include "api/http_priv.h"
#include "llhttp.h"

#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* ---- the server under test, on its own loop thread --------------------------- */

struct ts;

struct producer {
    struct ts *t;
    uint64_t id;
    int n, delay_us, mode;
    atomic_bool stop;
    pthread_t th;
};

#define MAX_PROD 16

struct ts {
    uv_loop_t loop;
    struct api_server *srv;
    uv_thread_t th;
    uv_async_t ctl;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    void (*fn)(struct ts *, void *);
    void *arg;
    bool pending;
    int port;
    bool stopped;
    /* What handlers saw (under mu). */
    int n_cancel, n_congested, n_uncongested, n_flood_err;
    uint64_t cancel_id;
    size_t max_queued;
    bool flood_stop_when_congested;
    struct producer *prod[MAX_PROD];
    int n_prod;
};

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
}

static void loop_main(void *arg)
{
    struct ts *t = arg;
    uv_run(&t->loop, UV_RUN_DEFAULT);
}

static void ctl_cb(uv_async_t *a)
{
    struct ts *t = a->data;
    pthread_mutex_lock(&t->mu);
    void (*fn)(struct ts *, void *) = t->fn;
    void *arg = t->arg;
    bool run = t->pending;
    pthread_mutex_unlock(&t->mu);
    if (!run)
        return;
    fn(t, arg);
    pthread_mutex_lock(&t->mu);
    t->pending = false;
    pthread_cond_broadcast(&t->cv);
    pthread_mutex_unlock(&t->mu);
}

/* Run fn(t, arg) on the loop thread and wait for it. */
static void ts_call(struct ts *t, void (*fn)(struct ts *, void *), void *arg)
{
    pthread_mutex_lock(&t->mu);
    while (t->pending)
        pthread_cond_wait(&t->cv, &t->mu);
    t->fn = fn;
    t->arg = arg;
    t->pending = true;
    uv_async_send(&t->ctl);
    while (t->pending)
        pthread_cond_wait(&t->cv, &t->mu);
    pthread_mutex_unlock(&t->mu);
}

static void add_producer(struct ts *t, struct producer *p)
{
    pthread_mutex_lock(&t->mu);
    if (t->n_prod < MAX_PROD)
        t->prod[t->n_prod++] = p;
    pthread_mutex_unlock(&t->mu);
}

/* ---- handlers ------------------------------------------------------------------ */

static void h_hello(struct api_req *r, void *ud)
{
    api_respond(r, 200, "text/plain", "hello", 5);
}

static void h_info(struct api_req *r, void *ud)
{
    cJSON *o = cJSON_CreateObject();
    size_t blen;
    api_req_body(r, &blen);
    cJSON_AddStringToObject(o, "method", api_req_method(r));
    cJSON_AddStringToObject(o, "path", api_req_path(r));
    cJSON_AddStringToObject(o, "query", api_req_query(r));
    cJSON_AddStringToObject(o, "route", api_req_route(r));
    const char *x = api_req_header(r, "x-TEST");
    if (x)
        cJSON_AddStringToObject(o, "xtest", x);
    cJSON_AddNumberToObject(o, "headers", (double)api_req_header_count(r));
    cJSON_AddNumberToObject(o, "body_len", (double)blen);
    api_respond_json(r, 200, o);
    cJSON_Delete(o);
}

static void h_echo(struct api_req *r, void *ud)
{
    size_t n;
    const char *b = api_req_body(r, &n);
    api_respond(r, 200, "application/octet-stream", b, n);
}

static void on_cancel(struct api_req *r, void *ud)
{
    struct ts *t = ud;
    pthread_mutex_lock(&t->mu);
    t->n_cancel++;
    t->cancel_id = api_req_id(r);
    for (int i = 0; i < t->n_prod; i++)
        if (t->prod[i]->id == api_req_id(r))
            atomic_store(&t->prod[i]->stop, true);
    pthread_mutex_unlock(&t->mu);
}

static void on_backpressure(struct api_req *r, void *ud, bool congested)
{
    struct ts *t = ud;
    pthread_mutex_lock(&t->mu);
    if (congested)
        t->n_congested++;
    else
        t->n_uncongested++;
    pthread_mutex_unlock(&t->mu);
}

static void set_hooks(struct api_req *r, struct ts *t)
{
    struct api_req_hooks h = {.on_cancel = on_cancel, .on_backpressure = on_backpressure, .ud = t};
    api_req_set_hooks(r, &h);
}

enum { PROD_STREAM, PROD_HANG, PROD_DEFER, PROD_CALL, PROD_ERROR };

static void call_respond(struct api_req *r, void *arg)
{
    int *v = arg;
    char body[32];
    int n = snprintf(body, sizeof body, "{\"called\":%d}", *v);
    api_respond(r, 200, "application/json", body, (size_t)n);
    free(v);
}

/* The engine stand-in: posts to request p->id from its own thread. */
static void *producer_main(void *arg)
{
    struct producer *p = arg;
    struct api_server *s = p->t->srv;
    char buf[64];
    switch (p->mode) {
    case PROD_STREAM:
        for (int i = 0; i < p->n; i++) {
            int n = snprintf(buf, sizeof buf, "{\"i\":%d}", i);
            api_post_event(s, p->id, buf, (size_t)n);
            if (p->delay_us)
                usleep((useconds_t)p->delay_us);
        }
        api_post_end(s, p->id, true);
        break;
    case PROD_HANG:
        /* Until the handler's cancel hook says stop; posts after the client
         * has gone must be dropped harmlessly. */
        for (int i = 0; i < 3000 && !atomic_load(&p->stop); i++) {
            int n = snprintf(buf, sizeof buf, "{\"tick\":%d}", i);
            if (api_post_event(s, p->id, buf, (size_t)n) == MOED_EIO)
                break;
            usleep(1000);
        }
        for (int i = 0; i < 20; i++) /* stragglers after the cancel */
            api_post_event(s, p->id, "late", 4);
        break;
    case PROD_DEFER:
        usleep(5000);
        api_post_respond(s, p->id, 201, "text/plain", "deferred", 8);
        api_post_event(s, p->id, "after the end", 13); /* dropped */
        break;
    case PROD_CALL: {
        int *v = malloc(sizeof *v);
        *v = 42;
        api_post_call(s, p->id, call_respond, v, free);
        int *w = malloc(sizeof *w);
        *w = 7;
        api_post_call(s, p->id, call_respond, w, free); /* request done: dropped, freed */
        break;
    }
    case PROD_ERROR:
        api_post_error(s, p->id, 400, "max_tokens", "invalid_value", "max_tokens must be > 0");
        break;
    }
    return NULL;
}

static void start_producer(struct api_req *r, struct ts *t, int mode, int n, int delay_us)
{
    struct producer *p = calloc(1, sizeof *p);
    p->t = t;
    p->id = api_req_id(r);
    p->n = n;
    p->delay_us = delay_us;
    p->mode = mode;
    add_producer(t, p);
    pthread_create(&p->th, NULL, producer_main, p);
}

static int query_int(struct api_req *r, const char *key, int def)
{
    const char *q = strstr(api_req_query(r), key);
    return q ? atoi(q + strlen(key)) : def;
}

static void h_stream(struct api_req *r, void *ud)
{
    struct ts *t = ud;
    set_hooks(r, t);
    if (api_stream_start(r) == 0)
        start_producer(r, t, PROD_STREAM, query_int(r, "n=", 10), query_int(r, "us=", 0));
}

static void h_sse(struct api_req *r, void *ud)
{
    api_stream_start(r);
    api_stream_comment(r, ": keepalive");
    api_stream_send_event(r, "a\nb", 3);
    api_stream_send_event(r, "{\"x\":1}", 7);
    api_stream_end(r, true);
}

static void h_hang(struct api_req *r, void *ud)
{
    struct ts *t = ud;
    set_hooks(r, t);
    if (api_stream_start(r) == 0)
        start_producer(r, t, PROD_HANG, 0, 0);
}

static void h_wait(struct api_req *r, void *ud)
{
    set_hooks(r, ud); /* answers never: only a cancel ends it */
}

static void h_defer(struct api_req *r, void *ud)
{
    start_producer(r, ud, PROD_DEFER, 0, 0);
}

static void h_call(struct api_req *r, void *ud)
{
    start_producer(r, ud, PROD_CALL, 0, 0);
}

static void h_error(struct api_req *r, void *ud)
{
    start_producer(r, ud, PROD_ERROR, 0, 0);
}

/* A slow reader: big events until the transport refuses (or until it
 * reports congestion, when flood_stop_when_congested). */
static void h_flood(struct api_req *r, void *ud)
{
    struct ts *t = ud;
    set_hooks(r, t);
    if (api_stream_start(r))
        return;
    size_t n = 64 * 1024;
    char *ev = malloc(n);
    memset(ev, 'x', n);
    for (int i = 0; i < 2000; i++) {
        int rc = api_stream_send_event(r, ev, n);
        size_t q = api_req_queued_bytes(r);
        pthread_mutex_lock(&t->mu);
        if (q > t->max_queued)
            t->max_queued = q;
        bool stop_now = t->flood_stop_when_congested && t->n_congested > 0;
        if (rc)
            t->n_flood_err++;
        pthread_mutex_unlock(&t->mu);
        if (rc || stop_now)
            break;
    }
    free(ev);
}

static void h_secret(struct api_req *r, void *ud)
{
    api_respond(r, 200, "text/plain", "ok", 2);
}

static void h_metrics(struct api_req *r, void *ud)
{
    struct api_buf b;
    api_buf_init(&b);
    api_metrics_render(api_req_server(r), &b);
    api_respond(r, 200, "text/plain; version=0.0.4", b.data, b.len);
    api_buf_free(&b);
}

/* ---- start and stop ----------------------------------------------------------------- */

static struct api_limits test_limits(void)
{
    struct api_limits l;
    api_limits_default(&l);
    l.max_connections = 16;
    l.max_header_bytes = 4096;
    l.max_headers = 32;
    l.max_body_bytes = 64 * 1024;
    l.header_timeout_ms = 2000;
    l.body_timeout_ms = 2000;
    l.idle_timeout_ms = 2000;
    l.send_timeout_ms = 2000;
    l.linger_ms = 50;
    return l;
}

static int ts_start_at(struct ts *t, const struct api_limits *lim, const char *key,
                       const char *host)
{
    memset(t, 0, sizeof *t);
    pthread_mutex_init(&t->mu, NULL);
    pthread_cond_init(&t->cv, NULL);
    uv_loop_init(&t->loop);
    struct moed_err e = {0};
    struct api_limits l = lim ? *lim : test_limits();
    if (api_server_init(&t->srv, &t->loop, &l, &e))
        return -1;
    struct {
        const char *m, *p;
        unsigned f;
        api_handler_fn fn;
    } routes[] = {
        {"GET", "/hello", 0, h_hello},
        {"GET", "/info", 0, h_info},
        {"POST", "/info", 0, h_info},
        {"POST", "/echo", 0, h_echo},
        {"POST", "/stream", 0, h_stream},
        {"GET", "/sse", 0, h_sse},
        {"GET", "/hang", 0, h_hang},
        {"GET", "/wait", 0, h_wait},
        {"GET", "/defer", 0, h_defer},
        {"GET", "/call", 0, h_call},
        {"GET", "/error", 0, h_error},
        {"GET", "/flood", 0, h_flood},
        {"POST", "/v1/secret", API_ROUTE_AUTH, h_secret},
        {"GET", "/metrics", 0, h_metrics},
    };
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++)
        if (api_server_route(t->srv, routes[i].m, routes[i].p, routes[i].f, routes[i].fn, t, &e))
            return -1;
    if (key && api_server_set_api_key(t->srv, key, &e))
        return -1;
    if (api_server_start(t->srv, host, 0, &e)) {
        fprintf(stderr, "    %s\n", e.msg);
        return -2;
    }
    t->port = api_server_port(t->srv);
    uv_async_init(&t->loop, &t->ctl, ctl_cb);
    t->ctl.data = t;
    uv_thread_create(&t->th, loop_main, t);
    return 0;
}

static int ts_start(struct ts *t, const struct api_limits *lim, const char *key)
{
    return ts_start_at(t, lim, key, "127.0.0.1");
}

static void on_stopped(struct api_server *s, void *ud)
{
    struct ts *t = ud;
    t->stopped = true;
}

static void do_stop(struct ts *t, void *arg)
{
    api_server_stop(t->srv, on_stopped, t);
    uv_close((uv_handle_t *)&t->ctl, NULL);
}

/* Stop the server with whatever is still open, and check that every handle
 * closed (ASan checks the memory). */
static void ts_stop(struct ts *t)
{
    ts_call(t, do_stop, NULL);
    uv_thread_join(&t->th);
    CHECK(t->stopped);
    for (int i = 0; i < t->n_prod; i++) {
        atomic_store(&t->prod[i]->stop, true);
        pthread_join(t->prod[i]->th, NULL);
        free(t->prod[i]);
    }
    api_server_free(t->srv);
    CHECK_EQ(uv_loop_close(&t->loop), 0);
    pthread_mutex_destroy(&t->mu);
    pthread_cond_destroy(&t->cv);
}

static int ts_get(struct ts *t, int *field)
{
    pthread_mutex_lock(&t->mu);
    int v = *field;
    pthread_mutex_unlock(&t->mu);
    return v;
}

/* Wait up to ms for *field >= want. */
static bool ts_wait(struct ts *t, int *field, int want, int ms)
{
    long long end = now_ms() + ms;
    while (now_ms() < end) {
        if (ts_get(t, field) >= want)
            return true;
        usleep(1000);
    }
    return ts_get(t, field) >= want;
}

/* ---- the client side ---------------------------------------------------------------- */

struct tresp {
    int status;
    int n_hdr, hstate;
    char names[32][64], values[32][512];
    char *body;
    size_t body_len, body_cap;
    bool done;
};

struct tc {
    int fd;
    char buf[1 << 16];
    size_t len;
    bool eof;
    llhttp_t p;
    llhttp_settings_t set;
};

static void add_text(char *dst, size_t cap, const char *at, size_t n)
{
    size_t l = strlen(dst);
    if (l + n >= cap)
        n = cap - 1 - l;
    memcpy(dst + l, at, n);
    dst[l + n] = '\0';
}

static int rp_field(llhttp_t *p, const char *at, size_t n)
{
    struct tresp *r = p->data;
    if (r->hstate != 1) {
        if (r->n_hdr == 32)
            return 0;
        r->n_hdr++;
        r->hstate = 1;
    }
    add_text(r->names[r->n_hdr - 1], 64, at, n);
    return 0;
}

static int rp_value(llhttp_t *p, const char *at, size_t n)
{
    struct tresp *r = p->data;
    r->hstate = 2;
    add_text(r->values[r->n_hdr - 1], 512, at, n);
    return 0;
}

static int rp_headers(llhttp_t *p)
{
    ((struct tresp *)p->data)->status = llhttp_get_status_code(p);
    return 0;
}

static int rp_body(llhttp_t *p, const char *at, size_t n)
{
    struct tresp *r = p->data;
    if (r->body_len + n + 1 > r->body_cap) {
        r->body_cap = (r->body_len + n + 1) * 2;
        r->body = realloc(r->body, r->body_cap);
    }
    memcpy(r->body + r->body_len, at, n);
    r->body_len += n;
    r->body[r->body_len] = '\0';
    return 0;
}

static int rp_done(llhttp_t *p)
{
    ((struct tresp *)p->data)->done = true;
    return HPE_PAUSED;
}

/* Tests only ever connect to 127.0.0.1. */
static int tcp_connect_to(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    struct timeval tv = {.tv_sec = 3};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    if (connect(fd, (struct sockaddr *)&a, sizeof a)) {
        close(fd);
        return -1;
    }
    return fd;
}

static struct tc *tc_open(struct ts *t)
{
    struct tc *c = calloc(1, sizeof *c);
    c->fd = tcp_connect_to(t->port);
    if (c->fd < 0) {
        free(c);
        return NULL;
    }
    llhttp_settings_init(&c->set);
    c->set.on_header_field = rp_field;
    c->set.on_header_value = rp_value;
    c->set.on_headers_complete = rp_headers;
    c->set.on_body = rp_body;
    c->set.on_message_complete = rp_done;
    llhttp_init(&c->p, HTTP_RESPONSE, &c->set);
    return c;
}

static void tc_close(struct tc *c)
{
    if (!c)
        return;
    close(c->fd);
    free(c);
}

static int tc_send(struct tc *c, const char *data, size_t n)
{
    while (n) {
        ssize_t w = send(c->fd, data, n, MSG_NOSIGNAL);
        if (w <= 0)
            return -1;
        data += w;
        n -= (size_t)w;
    }
    return 0;
}

static int tc_sends(struct tc *c, const char *s)
{
    return tc_send(c, s, strlen(s));
}

/* Read more input (up to timeout ms); 0 on data, 1 on EOF, -1 on timeout or error. */
static int tc_fill(struct tc *c, int ms)
{
    if (c->eof)
        return 1;
    struct pollfd pfd = {.fd = c->fd, .events = POLLIN};
    if (poll(&pfd, 1, ms) <= 0)
        return -1;
    ssize_t n = recv(c->fd, c->buf + c->len, sizeof c->buf - c->len, 0);
    if (n == 0 || (n < 0 && errno == ECONNRESET)) {
        c->eof = true;
        return 1;
    }
    if (n < 0)
        return -1;
    c->len += (size_t)n;
    return 0;
}

static void tresp_free(struct tresp *r)
{
    free(r->body);
    memset(r, 0, sizeof *r);
}

/* Read one response (a 100 Continue counts as one). 0 ok, -1 error/timeout. */
static int tc_read(struct tc *c, struct tresp *r, int ms)
{
    memset(r, 0, sizeof *r);
    c->p.data = r;
    long long end = now_ms() + ms;
    for (;;) {
        if (c->len) {
            llhttp_errno_t err = llhttp_execute(&c->p, c->buf, c->len);
            if (err == HPE_PAUSED) {
                size_t used = (size_t)(llhttp_get_error_pos(&c->p) - c->buf);
                memmove(c->buf, c->buf + used, c->len - used);
                c->len -= used;
                llhttp_resume(&c->p);
                return 0;
            }
            if (err != HPE_OK)
                return -1;
            c->len = 0;
        }
        if (c->eof) {
            llhttp_errno_t err = llhttp_finish(&c->p);
            if ((err == HPE_OK || err == HPE_PAUSED) && r->done) {
                llhttp_resume(&c->p);
                return 0;
            }
            return -1;
        }
        long long left = end - now_ms();
        if (left <= 0 || tc_fill(c, (int)left) < 0)
            return -1;
    }
}

/* Wait for the server to close: true if EOF comes within ms with no more
 * bytes than the ones already buffered. */
static bool tc_wait_eof(struct tc *c, int ms)
{
    long long end = now_ms() + ms;
    while (!c->eof) {
        long long left = end - now_ms();
        if (left <= 0)
            return false;
        size_t before = c->len;
        int rc = tc_fill(c, (int)left);
        if (rc < 0)
            return false;
        if (rc == 0 && c->len > before)
            c->len = before; /* drop unexpected bytes but keep waiting */
    }
    return true;
}

static const char *hdr(const struct tresp *r, const char *name)
{
    for (int i = 0; i < r->n_hdr; i++)
        if (strcasecmp(r->names[i], name) == 0)
            return r->values[i];
    return NULL;
}

/* The body is an OpenAI error object with this code. */
static bool is_error(const struct tresp *r, const char *code)
{
    if (!r->body)
        return false;
    cJSON *j = cJSON_Parse(r->body);
    cJSON *e = cJSON_GetObjectItem(j, "error");
    cJSON *m = cJSON_GetObjectItem(e, "message");
    cJSON *ty = cJSON_GetObjectItem(e, "type");
    cJSON *p = cJSON_GetObjectItem(e, "param");
    cJSON *c = cJSON_GetObjectItem(e, "code");
    bool ok = cJSON_IsString(m) && *m->valuestring && cJSON_IsString(ty) && p &&
              (cJSON_IsNull(p) || cJSON_IsString(p)) && cJSON_IsString(c) &&
              strcmp(c->valuestring, code) == 0;
    if (!ok)
        fprintf(stderr, "    not an error with code %s: %s\n", code, r->body);
    cJSON_Delete(j);
    return ok;
}

#define GET(path) "GET " path " HTTP/1.1\r\nHost: t\r\n\r\n"

/* ---- tests ------------------------------------------------------------------------------ */

TEST(http_keepalive_two_gets)
{
    struct ts t;
    REQUIRE(ts_start(&t, NULL, NULL) == 0);
    struct tc *c = tc_open(&t);
    REQUIRE(c);
    struct tresp r;
    for (int i = 0; i < 2; i++) {
        CHECK(tc_sends(c, GET("/hello")) == 0);
        REQUIRE(tc_read(c, &r, 2000) == 0);
        CHECK_EQ(r.status, 200);
        CHECK(r.body && strcmp(r.body, "hello") == 0);
        CHECK(hdr(&r, "Connection") && strcmp(hdr(&r, "Connection"), "keep-alive") == 0);
        CHECK(hdr(&r, "Content-Length") && strcmp(hdr(&r, "Content-Length"), "5") == 0);
        tresp_free(&r);
    }
    tc_close(c);
    ts_stop(&t);
}

TEST(http_request_fields)
{
    struct ts t;
    REQUIRE(ts_start(&t, NULL, NULL) == 0);
    struct tc *c = tc_open(&t);
    REQUIRE(c);
    struct tresp r;
    CHECK(tc_sends(c, "GET /info?a=1&b=2 HTTP/1.1\r\nHost: t\r\nX-tEsT:   v 1  \r\n\r\n") == 0);
    REQUIRE(tc_read(c, &r, 2000) == 0);
    CHECK_EQ(r.status, 200);
    CHECK(hdr(&r, "Content-Type") && strcmp(hdr(&r, "Content-Type"), "application/json") == 0);
    cJSON *j = cJSON_Parse(r.body);
    REQUIRE(j);
    CHECK(strcmp(cJSON_GetObjectItem(j, "method")->valuestring, "GET") == 0);
    CHECK(strcmp(cJSON_GetObjectItem(j, "path")->valuestring, "/info") == 0);
    CHECK(strcmp(cJSON_GetObjectItem(j, "query")->valuestring, "a=1&b=2") == 0);
    CHECK(strcmp(cJSON_GetObjectItem(j, "route")->valuestring, "/info") == 0);
    cJSON *x = cJSON_GetObjectItem(j, "xtest");
    CHECK(cJSON_IsString(x) && strcmp(x->valuestring, "v 1") == 0);
    CHECK_EQ(cJSON_GetObjectItem(j, "headers")->valuedouble, 2);
    cJSON_Delete(j);
    tresp_free(&r);
    tc_close(c);
    ts_stop(&t);
}

TEST(http_pipelining_in_order)
{
    struct api_limits l = test_limits();
    l.max_pipeline = 2; /* forces the pause-and-keep path */
    struct ts t;
    REQUIRE(ts_start(&t, &l, NULL) == 0);
    struct tc *c = tc_open(&t);
    REQUIRE(c);
    char reqs[8192] = "";
    for (int i = 0; i < 12; i++) {
        char one[200];
        if (i % 3 == 1)
            snprintf(one, sizeof one,
                     "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 6\r\n\r\nbody%02d", i);
        else
            snprintf(one, sizeof one, "GET /info?i=%d HTTP/1.1\r\nHost: t\r\n\r\n", i);
        strcat(reqs, one);
    }
    CHECK(tc_sends(c, reqs) == 0);
    for (int i = 0; i < 12; i++) {
        struct tresp r;
        REQUIRE(tc_read(c, &r, 2000) == 0);
        CHECK_EQ(r.status, 200);
        char want[32];
        if (i % 3 == 1) {
            snprintf(want, sizeof want, "body%02d", i);
            CHECK_MSG(r.body && strcmp(r.body, want) == 0, "response %d: %s", i, r.body);
        } else {
            snprintf(want, sizeof want, "\"query\":\"i=%d\"", i);
            CHECK_MSG(r.body && strstr(r.body, want), "response %d: %s", i, r.body);
        }
        tresp_free(&r);
    }
    tc_close(c);
    ts_stop(&t);
}

TEST(http_post_content_length_and_chunked)
{
    struct ts t;
    REQUIRE(ts_start(&t, NULL, NULL) == 0);
    struct tc *c = tc_open(&t);
    REQUIRE(c);
    size_t n = 5000;
    char *body = malloc(n + 1);
    for (size_t i = 0; i < n; i++)
        body[i] = (char)('a' + i % 26);
    body[n] = '\0';
    char head[128];
    snprintf(head, sizeof head, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: %zu\r\n\r\n", n);
    CHECK(tc_sends(c, head) == 0);
    CHECK(tc_send(c, body, 1000) == 0);
    usleep(2000);
    CHECK(tc_send(c, body + 1000, n - 1000) == 0);
    struct tresp r;
    REQUIRE(tc_read(c, &r, 2000) == 0);
    CHECK_EQ(r.status, 200);
    CHECK_EQ(r.body_len, n);
    CHECK(r.body && memcmp(r.body, body, n) == 0);
    tresp_free(&r);

    /* The same body in chunks of several sizes, written piecemeal. */
    CHECK(tc_sends(c, "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n") == 0);
    size_t off = 0, sizes[] = {1, 999, 3000, 1000};
    for (size_t i = 0; i < 4; i++) {
        char ch[32];
        snprintf(ch, sizeof ch, "%zx\r\n", sizes[i]);
        CHECK(tc_sends(c, ch) == 0);
        CHECK(tc_send(c, body + off, sizes[i]) == 0);
        CHECK(tc_sends(c, "\r\n") == 0);
        off += sizes[i];
        usleep(1000);
    }
    CHECK(tc_sends(c, "0\r\n\r\n") == 0);
    REQUIRE(tc_read(c, &r, 2000) == 0);
    CHECK_EQ(r.status, 200);
    CHECK_EQ(r.body_len, n);
    CHECK(r.body && memcmp(r.body, body, n) == 0);
    tresp_free(&r);
    free(body);
    tc_close(c);
    ts_stop(&t);
}

TEST(http_expect_100_continue)
{
    struct api_limits l = test_limits();
    l.max_body_bytes = 1000;
    struct ts t;
    REQUIRE(ts_start(&t, &l, NULL) == 0);
    struct tc *c = tc_open(&t);
    REQUIRE(c);
    struct tresp r;
    CHECK(tc_sends(c, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
                      "Expect: 100-continue\r\n\r\n") == 0);
    REQUIRE(tc_read(c, &r, 2000) == 0);
    CHECK_EQ(r.status, 100);
    tresp_free(&r);
    CHECK(tc_sends(c, "hello") == 0);
    REQUIRE(tc_read(c, &r, 2000) == 0);
    CHECK_EQ(r.status, 200);
    CHECK(r.body && strcmp(r.body, "hello") == 0);
    tresp_free(&r);
    tc_close(c);

    /* Too large: refused before the body, no 100. */
    c = tc_open(&t);
    REQUIRE(c);
    CHECK(tc_sends(c, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n"
                      "Expect: 100-continue\r\n\r\n") == 0);
    REQUIRE(tc_read(c, &r, 2000) == 0);
    CHECK_EQ(r.status, 413);
    CHECK(is_error(&r, "request_too_large"));
    tresp_free(&r);
    CHECK(tc_wait_eof(c, 2000));
    tc_close(c);

    /* An expectation we do not know. */
    c = tc_open(&t);
    REQUIRE(c);
    CHECK(tc_sends(c, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
                      "Expect: something-else\r\n\r\n") == 0);
    REQUIRE(tc_read(c, &r, 2000) == 0);
    CHECK_EQ(r.status, 417);
    tresp_free(&r);
    tc_close(c);
    ts_stop(&t);
}

TEST(http_body_too_large_413)
{
    struct api_limits l = test_limits();
    l.max_body_bytes = 1024;
    struct ts t;
    REQUIRE(ts_start(&t, &l, NULL) == 0);
    /* Decided from Content-Length, before any body byte is sent. */
    struct tc *c = tc_open(&t);
    REQUIRE(c);
    struct tresp r;
    CHECK(tc_sends(c, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1025\r\n\r\n") == 0);
    REQUIRE(tc_read(c, &r, 2000) == 0);
    CHECK_EQ(r.status, 413);
    CHECK(is_error(&r, "request_too_large"));
    CHECK(hdr(&r, "Connection") && strcmp(hdr(&r, "Connection"), "close") == 0);
    tresp_free(&r);
    CHECK(tc_wait_eof(c, 2000));
    tc_close(c);

    /* Chunked: enforced while reading. */
    c = tc_open(&t);
    REQUIRE(c);
    CHECK(tc_sends(c, "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n") == 0);
    char chunk[600];
    memset(chunk, 'z', sizeof chunk);
    for (int i = 0; i < 2; i++) {
        CHECK(tc_sends(c, "258\r\n") == 0); /* 600 */
        tc_send(c, chunk, sizeof chunk);
        tc_sends(c, "\r\n");
    }
    REQUIRE(tc_read(c, &r, 2000) == 0);
    CHECK_EQ(r.status, 413);
    tresp_free(&r);
    CHECK(tc_wait_eof(c, 2000));
    tc_close(c);

    /* Exactly the limit is fine. */
    c = tc_open(&t);
    REQUIRE(c);
    CHECK(tc_sends(c, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1024\r\n\r\n") == 0);
    char body[1024];
    memset(body, 'b', sizeof body);
    CHECK(tc_send(c, body, sizeof body) == 0);
    REQUIRE(tc_read(c, &r, 2000) == 0);
    CHECK_EQ(r.status, 200);
    CHECK_EQ(r.body_len, 1024);
    tresp_free(&r);
    tc_close(c);
    ts_stop(&t);
}

struct set_limits_arg {
    struct api_limits lim;
    int rc;
};

static void do_set_limits(struct ts *t, void *arg)
{
    struct set_limits_arg *a = arg;
    struct moed_err e = {0};
    a->rc = api_server_set_limits(t->srv, &a->lim, &e);
}

TEST(http_set_limits)
{
    struct ts t;
    REQUIRE(ts_start(&t, NULL, NULL) == 0);
    char body[2048];
    memset(body, 'b', sizeof body);
    /* An open keep-alive connection, and a body the old limit takes. */
    struct tc *c = tc_open(&t);
    REQUIRE(c);
    struct tresp r;
    CHECK(tc_sends(c, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2048\r\n\r\n") == 0);
    CHECK(tc_send(c, body, sizeof body) == 0);
    REQUIRE(tc_read(c, &r, 2000) == 0);
    CHECK_EQ(r.status, 200);
    tresp_free(&r);

    /* Invalid limits are refused and change nothing. */
    struct set_limits_arg a = {.lim = test_limits()};
    a.lim.max_body_bytes = 0;
    ts_call(&t, do_set_limits, &a);
    CHECK_EQ(a.rc, MOED_EINVAL);
    a.lim = test_limits();
    a.lim.write_high_water = a.lim.max_write_queue + 1;
    ts_call(&t, do_set_limits, &a);
    CHECK_EQ(a.rc, MOED_EINVAL);
    CHECK(tc_sends(c, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2048\r\n\r\n") == 0);
    CHECK(tc_send(c, body, sizeof body) == 0);
    REQUIRE(tc_read(c, &r, 2000) == 0);
    CHECK_EQ(r.status, 200);
    tresp_free(&r);

    /* A tighter max_body_bytes: the next request on the open connection gets
     * 413, and so does one on a new connection; one within the limit is fine. */
    a.lim = test_limits();
    a.lim.max_body_bytes = 1024;
    ts_call(&t, do_set_limits, &a);
    CHECK_EQ(a.rc, 0);
    CHECK(tc_sends(c, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2048\r\n\r\n") == 0);
    REQUIRE(tc_read(c, &r, 2000) == 0);
    CHECK_EQ(r.status, 413);
    CHECK(is_error(&r, "request_too_large"));
    tresp_free(&r);
    CHECK(tc_wait_eof(c, 2000));
    tc_close(c);
    c = tc_open(&t);
    REQUIRE(c);
    CHECK(tc_sends(c, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1025\r\n\r\n") == 0);
    REQUIRE(tc_read(c, &r, 2000) == 0);
    CHECK_EQ(r.status, 413);
    tresp_free(&r);
    tc_close(c);
    c = tc_open(&t);
    REQUIRE(c);
    CHECK(tc_sends(c, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1024\r\n\r\n") == 0);
    CHECK(tc_send(c, body, 1024) == 0);
    REQUIRE(tc_read(c, &r, 2000) == 0);
    CHECK_EQ(r.status, 200);
    CHECK_EQ(r.body_len, 1024);
    tresp_free(&r);
    tc_close(c);

    /* Raised again: the large body passes. */
    a.lim = test_limits();
    ts_call(&t, do_set_limits, &a);
    CHECK_EQ(a.rc, 0);
    c = tc_open(&t);
    REQUIRE(c);
    CHECK(tc_sends(c, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2048\r\n\r\n") == 0);
    CHECK(tc_send(c, body, sizeof body) == 0);
    REQUIRE(tc_read(c, &r, 2000) == 0);
    CHECK_EQ(r.status, 200);
    tresp_free(&r);
    tc_close(c);
    ts_stop(&t);
}

TEST(http_headers_too_large_431)
{
    struct ts t;
    REQUIRE(ts_start(&t, NULL, NULL) == 0); /* 4096 bytes, 32 headers */
    struct tc *c = tc_open(&t);
    REQUIRE(c);
    struct tresp r;
    char big[6000];
    memset(big, 'h', sizeof big);
    big[sizeof big - 1] = '\0';
    CHECK(tc_sends(c, "GET /hello HTTP/1.1\r\nHost: t\r\nX-Big: ") == 0);
    tc_sends(c, big);
    tc_sends(c, "\r\n\r\n");
    REQUIRE(tc_read(c, &r, 2000) == 0);
    CHECK_EQ(r.status, 431);
    CHECK(is_error(&r, "headers_too_large"));
    tresp_free(&r);
    CHECK(tc_wait_eof(c, 2000));
    tc_close(c);

    c = tc_open(&t);
    REQUIRE(c);
    CHECK(tc_sends(c, "GET /hello HTTP/1.1\r\n") == 0);
    for (int i = 0; i < 40; i++) {
        char h[32];
        snprintf(h, sizeof h, "X-H%d: v\r\n", i);
        tc_sends(c, h);
    }
    tc_sends(c, "\r\n");
    REQUIRE(tc_read(c, &r, 2000) == 0);
    CHECK_EQ(r.status, 431);
    tresp_free(&r);
    tc_close(c);
    ts_stop(&t);
}

TEST(http_malformed_400)
{
    struct ts t;
    REQUIRE(ts_start(&t, NULL, NULL) == 0);
    const char *bad[] = {
        "HELLO WORLD\r\n\r\n",
        "\x01\x02\x03\x04 / HTTP/1.1\r\n\r\n",
        "GET /hello HTTP/9.9\r\n\r\n",
        "GET /hello HTTP/1.1\r\nBad Header\r\n\r\n",
        "POST /echo HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello",
        "POST /echo HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
        "POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
        "POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        "GET http://example.com/hello HTTP/1.1\r\nHost: t\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct tc *c = tc_open(&t);
        REQUIRE(c);
        tc_sends(c, bad[i]);
        struct tresp r;
        REQUIRE(tc_read(c, &r, 2000) == 0);
        CHECK_MSG(r.status == 400, "request %zu: status %d", i, r.status);
        CHECK(is_error(&r, "invalid_request"));
        CHECK(hdr(&r, "Content-Type") && strcmp(hdr(&r, "Content-Type"), "application/json") == 0);
        tresp_free(&r);
        tc_close(c);
    }
    /* Still healthy. */
    struct tc *c = tc_open(&t);
    REQUIRE(c);
    tc_sends(c, GET("/hello"));
    struct tresp r;
    REQUIRE(tc_read(c, &r, 2000) == 0);
    CHECK_EQ(r.status, 200);
    tresp_free(&r);
    tc_close(c);
    ts_stop(&t);
}

TEST(http_404_405)
{
    struct ts t;
    REQUIRE(ts_start(&t, NULL, NULL) == 0);
    struct tc *c = tc_open(&t);
    REQUIRE(c);
    struct tresp r;
    tc_sends(c, GET("/nope"));
    REQUIRE(tc_read(c, &r, 2000) == 0);
    CHECK_EQ(r.status, 404);
    CHECK(is_error(&r, "not_found"));
    tresp_free(&r);

    tc_sends(c, "DELETE /hello HTTP/1.1\r\nHost: t\r\n\r\n");
    REQUIRE(tc_read(c, &r, 2000) == 0);
    CHECK_EQ(r.status, 405);
    CHECK(hdr(&r, "Allow") && strcmp(hdr(&r, "Allow"), "GET, HEAD") == 0);
    CHECK(is_error(&r, "method_not_allowed"));
    tresp_free(&r);

    /* A rejected request's body is read and dropped; the connection lives. */
    tc_sends(c, "PUT /info HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\nabcd");
    REQUIRE(tc_read(c, &r, 2000) == 0);
    CHECK_EQ(r.status, 405);
    CHECK(hdr(&r, "Allow") && strcmp(hdr(&r, "Allow"), "GET, HEAD, POST") == 0);
    tresp_free(&r);

    tc_sends(c, GET("/hello"));
    REQUIRE(tc_read(c, &r, 2000) == 0);
    CHECK_EQ(r.status, 200);
    tresp_free(&r);
    tc_close(c);
    ts_stop(&t);
}

TEST(http_connection_close_and_http10)
{
    struct ts t;
    REQUIRE(ts_start(&t, NULL, NULL) == 0);
    struct tc *c = tc_open(&t);
    REQUIRE(c);
    struct tresp r;
    tc_sends(c, "GET /hello HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    REQUIRE(tc_read(c, &r, 2000) == 0);
    CHECK_EQ(r.status, 200);
    CHECK(hdr(&r, "Connection") && strcmp(hdr(&r, "Connection"), "close") == 0);
    tresp_free(&r);
    CHECK(tc_wait_eof(c, 2000));
    tc_close(c);

    c = tc_open(&t);
    REQUIRE(c);
    tc_sends(c, "GET /hello HTTP/1.0\r\n\r\n");
    REQUIRE(tc_read(c, &r, 2000) == 0);
    CHECK_EQ(r.status, 200);
    CHECK(r.body && strcmp(r.body, "hello") == 0);
    CHECK(hdr(&r, "Connection") && strcmp(hdr(&r, "Connection"), "close") == 0);
    tresp_free(&r);
    CHECK(tc_wait_eof(c, 2000));
    tc_close(c);

    /* HTTP/1.0 keep-alive is honoured. */
    c = tc_open(&t);
    REQUIRE(c);
    for (int i = 0; i < 2; i++) {
        tc_sends(c, "GET /hello HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        REQUIRE(tc_read(c, &r, 2000) == 0);
        CHECK_EQ(r.status, 200);
        CHECK(hdr(&r, "Connection") && strcmp(hdr(&r, "Connection"), "keep-alive") == 0);
        tresp_free(&r);
    }
    tc_close(c);

    /* An SSE stream to HTTP/1.0 is delimited by the close, not chunked. */
    c = tc_open(&t);
    REQUIRE(c);
    tc_sends(c, "GET /sse HTTP/1.0\r\n\r\n");
    REQUIRE(tc_read(c, &r, 2000) == 0);
    CHECK_EQ(r.status, 200);
    CHECK(!hdr(&r, "Transfer-Encoding"));
    CHECK(r.body && strstr(r.body, "data: [DONE]\n\n"));
    CHECK(c->eof);
    tresp_free(&r);
    tc_close(c);
    ts_stop(&t);
}

TEST(http_slowloris_408)
{
    struct api_limits l = test_limits();
    l.header_timeout_ms = 60;
    l.body_timeout_ms = 60;
    struct ts t;
    REQUIRE(ts_start(&t, &l, NULL) == 0);
    struct tc *c = tc_open(&t);
    REQUIRE(c);
    long long t0 = now_ms();
    tc_sends(c, "GET /hello HTTP/1.1\r\nHost: t\r\n");
    /* Dribbling more header bytes does not extend the deadline. */
    for (int i = 0; i < 3; i++) {
        usleep(15000);
        tc_sends(c, "X-A: b\r\n");
    }
    struct tresp r;
    REQUIRE(tc_read(c, &r, 2000) == 0);
    long long took = now_ms() - t0;
    CHECK_EQ(r.status, 408);
    CHECK(is_error(&r, "request_timeout"));
    CHECK_MSG(took >= 55 && took < 1500, "408 after %lld ms", took);
    tresp_free(&r);
    CHECK(tc_wait_eof(c, 2000));
    tc_close(c);

    /* A stalled body. */
    c = tc_open(&t);
    REQUIRE(c);
    tc_sends(c, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc");
    REQUIRE(tc_read(c, &r, 2000) == 0);
    CHECK_EQ(r.status, 408);
    tresp_free(&r);
    tc_close(c);

    /* A connection that never says anything is closed without a word. */
    c = tc_open(&t);
    REQUIRE(c);
    CHECK(tc_wait_eof(c, 2000));
    CHECK_EQ(c->len, 0);
    tc_close(c);
    ts_stop(&t);
}

TEST(http_idle_keepalive_timeout)
{
    struct api_limits l = test_limits();
    l.idle_timeout_ms = 50;
    struct ts t;
    REQUIRE(ts_start(&t, &l, NULL) == 0);
    struct tc *c = tc_open(&t);
    REQUIRE(c);
    tc_sends(c, GET("/hello"));
    struct tresp r;
    REQUIRE(tc_read(c, &r, 2000) == 0);
    CHECK_EQ(r.status, 200);
    tresp_free(&r);
    long long t0 = now_ms();
    CHECK(tc_wait_eof(c, 2000));
    CHECK_EQ(c->len, 0); /* quietly */
    CHECK(now_ms() - t0 >= 40);
    tc_close(c);
    ts_stop(&t);
}

struct stats_out {
    struct api_stats st;
    char *metrics;
};

static void get_stats(struct ts *t, void *arg)
{
    struct stats_out *o = arg;
    api_server_stats(t->srv, &o->st);
    struct api_buf b;
    api_buf_init(&b);
    api_metrics_render(t->srv, &b);
    o->metrics = b.data;
}

static uint64_t open_conns(struct ts *t)
{
    struct stats_out o;
    ts_call(t, get_stats, &o);
    free(o.metrics);
    return o.st.connections_open;
}

TEST(http_max_connections_503)
{
    struct api_limits l = test_limits();
    l.max_connections = 2;
    struct ts t;
    REQUIRE(ts_start(&t, &l, NULL) == 0);
    struct tc *a = tc_open(&t), *b = tc_open(&t);
    REQUIRE(a && b);
    struct tresp r;
    tc_sends(a, GET("/hello"));
    REQUIRE(tc_read(a, &r, 2000) == 0);
    tresp_free(&r);
    tc_sends(b, GET("/hello"));
    REQUIRE(tc_read(b, &r, 2000) == 0);
    tresp_free(&r);

    struct tc *c = tc_open(&t);
    REQUIRE(c);
    tc_sends(c, GET("/hello"));
    REQUIRE(tc_read(c, &r, 2000) == 0);
    CHECK_EQ(r.status, 503);
    CHECK(is_error(&r, "server_busy"));
    CHECK(hdr(&r, "Retry-After"));
    tresp_free(&r);
    CHECK(tc_wait_eof(c, 2000));
    tc_close(c);

    /* The first two still work; once one leaves, a newcomer gets in. */
    tc_sends(a, GET("/hello"));
    REQUIRE(tc_read(a, &r, 2000) == 0);
    CHECK_EQ(r.status, 200);
    tresp_free(&r);
    tc_close(b);
    for (int i = 0; i < 200 && open_conns(&t) > 1; i++)
        usleep(2000);
    c = tc_open(&t);
    REQUIRE(c);
    tc_sends(c, GET("/hello"));
    REQUIRE(tc_read(c, &r, 2000) == 0);
    CHECK_EQ(r.status, 200);
    tresp_free(&r);
    tc_close(c);
    tc_close(a);

    struct stats_out o;
    ts_call(&t, get_stats, &o);
    CHECK_EQ(o.st.connections_rejected, 1);
    free(o.metrics);
    ts_stop(&t);
}

/* The expected SSE body for n events {"i":k} and [DONE]. */
static char *sse_expected(int n)
{
    struct api_buf b;
    api_buf_init(&b);
    for (int i = 0; i < n; i++)
        api_buf_printf(&b, "data: {\"i\":%d}\n\n", i);
    api_buf_printf(&b, "data: [DONE]\n\n");
    return b.data;
}

TEST(http_sse_from_producer_thread)
{
    struct ts t;
    REQUIRE(ts_start(&t, NULL, NULL) == 0);
    struct tc *c = tc_open(&t);
    REQUIRE(c);
    struct tresp r;
    tc_sends(c, "POST /stream?n=200&us=50 HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}");
    REQUIRE(tc_read(c, &r, 3000) == 0);
    CHECK_EQ(r.status, 200);
    CHECK(hdr(&r, "Content-Type") &&
          strncmp(hdr(&r, "Content-Type"), "text/event-stream", 17) == 0);
    CHECK(hdr(&r, "Cache-Control") && strcmp(hdr(&r, "Cache-Control"), "no-cache") == 0);
    CHECK(hdr(&r, "Transfer-Encoding") && strcmp(hdr(&r, "Transfer-Encoding"), "chunked") == 0);
    char *want = sse_expected(200);
    CHECK_MSG(r.body && strcmp(r.body, want) == 0, "stream body differs (%zu bytes)", r.body_len);
    free(want);
    tresp_free(&r);

    /* The connection is reusable after a stream. */
    tc_sends(c, GET("/hello"));
    REQUIRE(tc_read(c, &r, 2000) == 0);
    CHECK_EQ(r.status, 200);
    tresp_free(&r);
    tc_close(c);

    /* Several streams at once, each from its own thread. */
    struct tc *cs[6];
    for (int i = 0; i < 6; i++) {
        cs[i] = tc_open(&t);
        REQUIRE(cs[i]);
        tc_sends(cs[i], "POST /stream?n=50&us=100 HTTP/1.1\r\nHost: t\r\n\r\n");
    }
    want = sse_expected(50);
    for (int i = 0; i < 6; i++) {
        REQUIRE(tc_read(cs[i], &r, 3000) == 0);
        CHECK_EQ(r.status, 200);
        CHECK(r.body && strcmp(r.body, want) == 0);
        tresp_free(&r);
        tc_close(cs[i]);
    }
    free(want);
    ts_stop(&t);
}

TEST(http_sse_framing)
{
    struct ts t;
    REQUIRE(ts_start(&t, NULL, NULL) == 0);
    struct tc *c = tc_open(&t);
    REQUIRE(c);
    /* Raw bytes: chunk framing as well as the events. */
    tc_sends(c, GET("/sse"));
    struct api_buf raw;
    api_buf_init(&raw);
    long long end = now_ms() + 2000;
    while (!raw.data || !strstr(raw.data, "0\r\n\r\n")) {
        if (now_ms() > end || tc_fill(c, 200) < 0)
            break;
        api_buf_append(&raw, c->buf, c->len);
        c->len = 0;
    }
    REQUIRE(raw.data);
    const char *body = strstr(raw.data, "\r\n\r\n");
    REQUIRE(body);
    CHECK(strstr(raw.data, "X-Accel-Buffering: no\r\n"));
    CHECK_MSG(strcmp(body + 4, "d\r\n: keepalive\n\n\r\n"
                               "11\r\ndata: a\ndata: b\n\n\r\n"
                               "f\r\ndata: {\"x\":1}\n\n\r\n"
                               "e\r\ndata: [DONE]\n\n\r\n"
                               "0\r\n\r\n") == 0,
              "raw stream: %s", body + 4);
    api_buf_free(&raw);
    tc_close(c);
    ts_stop(&t);
}

TEST(http_disconnect_cancels)
{
    struct ts t;
    REQUIRE(ts_start(&t, NULL, NULL) == 0);
    struct tc *c = tc_open(&t);
    REQUIRE(c);
    tc_sends(c, GET("/hang"));
    /* Wait for the first event, then hang up mid-stream. */
    long long end = now_ms() + 2000;
    bool seen = false;
    while (!seen && now_ms() < end && tc_fill(c, 100) >= 0) {
        c->buf[c->len < sizeof c->buf ? c->len : sizeof c->buf - 1] = '\0';
        seen = strstr(c->buf, "data: {\"tick\"") != NULL;
    }
    CHECK(seen);
    tc_close(c);
    CHECK(ts_wait(&t, &t.n_cancel, 1, 2000));

    /* A deferred request (no bytes written yet) is cancelled too. */
    c = tc_open(&t);
    REQUIRE(c);
    tc_sends(c, GET("/wait"));
    usleep(20000);
    tc_close(c);
    CHECK(ts_wait(&t, &t.n_cancel, 2, 2000));

    struct stats_out o;
    ts_call(&t, get_stats, &o);
    CHECK_EQ(o.st.cancelled_total, 2);
    CHECK_EQ(o.st.streams_active, 0);
    CHECK_EQ(o.st.requests_active, 0);
    CHECK(o.metrics &&
          strstr(o.metrics,
                 "moed_http_requests_total{route=\"/hang\",method=\"GET\",code=\"499\"} 1"));
    free(o.metrics);
    ts_stop(&t);
}

TEST(http_post_from_threads)
{
    struct ts t;
    REQUIRE(ts_start(&t, NULL, NULL) == 0);
    struct tc *c = tc_open(&t);
    REQUIRE(c);
    struct tresp r;
    tc_sends(c, GET("/defer"));
    REQUIRE(tc_read(c, &r, 2000) == 0);
    CHECK_EQ(r.status, 201);
    CHECK(r.body && strcmp(r.body, "deferred") == 0);
    tresp_free(&r);

    tc_sends(c, GET("/call"));
    REQUIRE(tc_read(c, &r, 2000) == 0);
    CHECK_EQ(r.status, 200);
    CHECK(r.body && strcmp(r.body, "{\"called\":42}") == 0);
    tresp_free(&r);

    tc_sends(c, GET("/error"));
    REQUIRE(tc_read(c, &r, 2000) == 0);
    CHECK_EQ(r.status, 400);
    CHECK(is_error(&r, "invalid_value"));
    CHECK(r.body && strstr(r.body, "\"param\":\"max_tokens\""));
    tresp_free(&r);

    /* Ids that were never issued or are long gone: dropped. */
    CHECK_EQ(api_post_event(t.srv, 987654321, "x", 1), 0);
    int *v = malloc(sizeof *v);
    CHECK_EQ(api_post_call(t.srv, 1, call_respond, v, free), 0);
    tc_sends(c, GET("/hello"));
    REQUIRE(tc_read(c, &r, 2000) == 0);
    CHECK_EQ(r.status, 200);
    tresp_free(&r);
    tc_close(c);
    ts_stop(&t);
}

TEST(http_auth_bearer)
{
    struct ts t;
    REQUIRE(ts_start(&t, NULL, "sk-test-123") == 0);
    struct tc *c = tc_open(&t);
    REQUIRE(c);
    struct tresp r;
    tc_sends(c, "POST /v1/secret HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}");
    REQUIRE(tc_read(c, &r, 2000) == 0);
    CHECK_EQ(r.status, 401);
    CHECK(is_error(&r, "invalid_api_key"));
    CHECK(hdr(&r, "WWW-Authenticate") && strcmp(hdr(&r, "WWW-Authenticate"), "Bearer") == 0);
    tresp_free(&r);

    tc_sends(c, "POST /v1/secret HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer sk-wrong-999\r\n"
                "Content-Length: 2\r\n\r\n{}");
    REQUIRE(tc_read(c, &r, 2000) == 0);
    CHECK_EQ(r.status, 401);
    CHECK(r.body && !strstr(r.body, "sk-wrong") && !strstr(r.body, "sk-test"));
    tresp_free(&r);

    tc_sends(c, "POST /v1/secret HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer sk-test-1234\r\n"
                "Content-Length: 2\r\n\r\n{}");
    REQUIRE(tc_read(c, &r, 2000) == 0);
    CHECK_EQ(r.status, 401);
    tresp_free(&r);

    tc_sends(c, "POST /v1/secret HTTP/1.1\r\nHost: t\r\nAuthorization: bearer sk-test-123\r\n"
                "Content-Length: 2\r\n\r\n{}");
    REQUIRE(tc_read(c, &r, 2000) == 0);
    CHECK_EQ(r.status, 200);
    CHECK(r.body && strcmp(r.body, "ok") == 0);
    tresp_free(&r);

    /* Unprotected routes need no key. */
    tc_sends(c, GET("/hello"));
    REQUIRE(tc_read(c, &r, 2000) == 0);
    CHECK_EQ(r.status, 200);
    tresp_free(&r);
    tc_close(c);

    /* With Expect: 100-continue the refusal comes before the body. */
    c = tc_open(&t);
    REQUIRE(c);
    tc_sends(c, "POST /v1/secret HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n"
                "Expect: 100-continue\r\n\r\n");
    REQUIRE(tc_read(c, &r, 2000) == 0);
    CHECK_EQ(r.status, 401);
    tresp_free(&r);
    tc_close(c);
    ts_stop(&t);
}

TEST(http_auth_compare)
{
    struct api_server *s;
    struct moed_err e;
    uv_loop_t loop;
    uv_loop_init(&loop);
    REQUIRE(api_server_init(&s, &loop, NULL, &e) == 0);
    CHECK(api__auth_ok(s, NULL)); /* no key set: open */
    CHECK(api_server_set_api_key(s, "bad key", &e) == MOED_EINVAL);
    REQUIRE(api_server_set_api_key(s, "k3y", &e) == 0);
    CHECK(api__auth_ok(s, "Bearer k3y"));
    CHECK(api__auth_ok(s, "BEARER  k3y "));
    CHECK(!api__auth_ok(s, NULL));
    CHECK(!api__auth_ok(s, ""));
    CHECK(!api__auth_ok(s, "Bearer "));
    CHECK(!api__auth_ok(s, "Bearer k3"));
    CHECK(!api__auth_ok(s, "Bearer k3yy"));
    CHECK(!api__auth_ok(s, "Bearer K3Y"));
    CHECK(!api__auth_ok(s, "Basic k3y"));
    CHECK(!api__auth_ok(s, "k3y"));
    api_server_free(s);
    CHECK_EQ(uv_loop_close(&loop), 0);
}

TEST(http_backpressure_slow_reader)
{
    struct api_limits l = test_limits();
    l.write_high_water = 128 * 1024;
    l.max_write_queue = 1024 * 1024;
    struct ts t;
    REQUIRE(ts_start(&t, &l, NULL) == 0);
    struct tc *c = tc_open(&t);
    REQUIRE(c);
    int small = 4096;
    setsockopt(c->fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    tc_sends(c, GET("/flood")); /* and never read */
    CHECK(ts_wait(&t, &t.n_cancel, 1, 3000));
    CHECK(ts_get(&t, &t.n_congested) >= 1);
    CHECK(ts_get(&t, &t.n_flood_err) == 1);
    pthread_mutex_lock(&t.mu);
    CHECK_MSG(t.max_queued <= l.max_write_queue, "queued %zu > cap %zu", t.max_queued,
              l.max_write_queue);
    pthread_mutex_unlock(&t.mu);
    tc_close(c);
    ts_stop(&t);
}

TEST(http_send_stall_timeout)
{
    struct api_limits l = test_limits();
    l.write_high_water = 64 * 1024;
    l.max_write_queue = 64 * 1024 * 1024;
    l.send_timeout_ms = 60;
    struct ts t;
    REQUIRE(ts_start(&t, &l, NULL) == 0);
    t.flood_stop_when_congested = true;
    struct tc *c = tc_open(&t);
    REQUIRE(c);
    int small = 4096;
    setsockopt(c->fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    tc_sends(c, GET("/flood"));
    /* Output stops moving: the stall timeout closes and cancels. */
    CHECK(ts_wait(&t, &t.n_cancel, 1, 3000));
    CHECK(ts_get(&t, &t.n_congested) >= 1);
    CHECK_EQ(ts_get(&t, &t.n_flood_err), 0);
    tc_close(c);
    ts_stop(&t);
}

static void get_busy(struct ts *t, void *arg)
{
    *(unsigned *)arg = api_server_busy(t->srv);
}

static unsigned busy_count(struct ts *t)
{
    unsigned n;
    ts_call(t, get_busy, &n);
    return n;
}

TEST(http_stop_with_open_connections)
{
    struct ts t;
    REQUIRE(ts_start(&t, NULL, NULL) == 0);
    struct tc *idle = tc_open(&t), *partial = tc_open(&t), *stream = tc_open(&t),
              *waiting = tc_open(&t), *piped = tc_open(&t);
    REQUIRE(idle && partial && stream && waiting && piped);
    struct tresp r;
    tc_sends(idle, GET("/hello"));
    REQUIRE(tc_read(idle, &r, 2000) == 0);
    tresp_free(&r);
    tc_sends(partial, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nabc");
    tc_sends(stream, GET("/hang"));
    tc_sends(waiting, GET("/wait"));
    tc_sends(piped, GET("/wait") GET("/hello") GET("/hello"));
    for (int i = 0; i < 500 && busy_count(&t) < 4; i++)
        usleep(2000);
    CHECK_EQ(busy_count(&t), 4);
    CHECK_EQ(ts_get(&t, &t.n_cancel), 0);
    ts_stop(&t); /* frees everything; ASan checks */
    CHECK_EQ(t.n_cancel, 3);
    CHECK(tc_wait_eof(idle, 2000));
    CHECK(tc_wait_eof(partial, 2000));
    tc_close(idle);
    tc_close(partial);
    tc_close(stream);
    tc_close(waiting);
    tc_close(piped);
}

static void do_drain(struct ts *t, void *arg)
{
    api_server_drain(t->srv);
}

TEST(http_drain)
{
    struct ts t;
    REQUIRE(ts_start(&t, NULL, NULL) == 0);
    struct tc *idle = tc_open(&t), *busy = tc_open(&t);
    REQUIRE(idle && busy);
    struct tresp r;
    tc_sends(idle, GET("/hello"));
    REQUIRE(tc_read(idle, &r, 2000) == 0);
    tresp_free(&r);
    tc_sends(busy, "POST /stream?n=100&us=500 HTTP/1.1\r\nHost: t\r\n\r\n");
    usleep(10000);
    ts_call(&t, do_drain, NULL);
    CHECK(tc_wait_eof(idle, 2000));
    REQUIRE(tc_read(busy, &r, 3000) == 0);
    CHECK_EQ(r.status, 200);
    char *want = sse_expected(100);
    CHECK(r.body && strcmp(r.body, want) == 0);
    free(want);
    tresp_free(&r);
    CHECK(tc_wait_eof(busy, 2000));
    CHECK_EQ(api_server_port(t.srv), -1);
    tc_close(idle);
    tc_close(busy);
    ts_stop(&t);
}

TEST(http_metrics_text)
{
    struct ts t;
    REQUIRE(ts_start(&t, NULL, NULL) == 0);
    struct tc *c = tc_open(&t);
    REQUIRE(c);
    struct tresp r;
    for (int i = 0; i < 3; i++) {
        tc_sends(c, GET("/hello"));
        REQUIRE(tc_read(c, &r, 2000) == 0);
        tresp_free(&r);
    }
    tc_sends(c, GET("/missing"));
    REQUIRE(tc_read(c, &r, 2000) == 0);
    tresp_free(&r);
    tc_sends(c, "DELETE /hello HTTP/1.1\r\nHost: t\r\n\r\n");
    REQUIRE(tc_read(c, &r, 2000) == 0);
    tresp_free(&r);
    tc_sends(c, GET("/metrics"));
    REQUIRE(tc_read(c, &r, 2000) == 0);
    CHECK_EQ(r.status, 200);
    const char *m = r.body ? r.body : "";
    CHECK(strstr(m, "moed_http_requests_total{route=\"/hello\",method=\"GET\",code=\"200\"} 3\n"));
    CHECK(
        strstr(m, "moed_http_requests_total{route=\"/hello\",method=\"DELETE\",code=\"405\"} 1\n"));
    CHECK(strstr(m, "moed_http_requests_total{route=\"other\",method=\"GET\",code=\"404\"} 1\n"));
    CHECK(strstr(m, "moed_http_connections_open 1\n"));
    CHECK(strstr(m, "# TYPE moed_http_request_duration_seconds histogram\n"));
    CHECK(strstr(m, "moed_http_request_duration_seconds_bucket{route=\"/hello\",le=\"+Inf\"} 4\n"));
    CHECK(strstr(m, "moed_http_request_duration_seconds_count{route=\"/hello\"} 4\n"));
    CHECK(strstr(m, "moed_http_bytes_received_total "));
    CHECK(strstr(m, "moed_http_bytes_sent_total "));
    tresp_free(&r);
    tc_close(c);
    ts_stop(&t);
}

TEST(http_ipv6_listen)
{
    /* Binds the IPv6 loopback (bracketed form) and checks the socket; the
     * tests only ever connect to 127.0.0.1, so no request goes over it. */
    struct ts t;
    int rc = ts_start_at(&t, NULL, NULL, "[::1]");
    if (rc == -2) {
        /* No IPv6 here: undo and skip. */
        api_server_stop(t.srv, NULL, NULL);
        uv_run(&t.loop, UV_RUN_DEFAULT);
        api_server_free(t.srv);
        uv_loop_close(&t.loop);
        SKIP("no IPv6 loopback");
    }
    REQUIRE(rc == 0);
    CHECK(t.port > 0);
    struct sockaddr_storage ss;
    int len = sizeof ss;
    CHECK_EQ(uv_tcp_getsockname(&t.srv->listener, (struct sockaddr *)&ss, &len), 0);
    CHECK_EQ(ss.ss_family, AF_INET6);
    CHECK_EQ(ntohs(((struct sockaddr_in6 *)&ss)->sin6_port), t.port);
    ts_stop(&t);
}

TEST(http_error_json_and_helpers)
{
    char *j = api_error_json(400, NULL, "bad \"value\"", "temperature", "invalid_type");
    REQUIRE(j);
    CHECK(strcmp(j,
                 "{\"error\":{\"message\":\"bad \\\"value\\\"\",\"type\":\"invalid_request_error\","
                 "\"param\":\"temperature\",\"code\":\"invalid_type\"}}") == 0);
    free(j);
    j = api_error_json(500, NULL, "boom", NULL, NULL);
    CHECK(j && strcmp(j, "{\"error\":{\"message\":\"boom\",\"type\":\"server_error\","
                         "\"param\":null,\"code\":null}}") == 0);
    free(j);
    CHECK(strcmp(api_error_type(401), "invalid_request_error") == 0);
    CHECK(strcmp(api_error_type(503), "server_error") == 0);
    CHECK(strcmp(api_error_type(429), "invalid_request_error") == 0);
    CHECK(strcmp(api_status_reason(431), "Request Header Fields Too Large") == 0);

    struct api_hist h;
    double b[] = {0.1, 1, 10};
    REQUIRE(api_hist_init(&h, b, 3) == 0);
    api_hist_observe(&h, 0.05);
    api_hist_observe(&h, 0.1);
    api_hist_observe(&h, 5);
    api_hist_observe(&h, 50);
    struct api_buf out;
    api_buf_init(&out);
    api_hist_render(&out, "x", "a=\"1\"", &h);
    CHECK(out.data && strcmp(out.data, "x_bucket{a=\"1\",le=\"0.1\"} 2\n"
                                       "x_bucket{a=\"1\",le=\"1\"} 2\n"
                                       "x_bucket{a=\"1\",le=\"10\"} 3\n"
                                       "x_bucket{a=\"1\",le=\"+Inf\"} 4\n"
                                       "x_sum{a=\"1\"} 55.15\n"
                                       "x_count{a=\"1\"} 4\n") == 0);
    api_buf_free(&out);
    double bad[] = {1, 1};
    CHECK(api_hist_init(&h, bad, 2) == MOED_EINVAL);

    struct api_limits l;
    api_limits_default(&l);
    l.max_pipeline = 0;
    struct api_server *s;
    struct moed_err e;
    uv_loop_t loop;
    uv_loop_init(&loop);
    CHECK(api_server_init(&s, &loop, &l, &e) == MOED_EINVAL);
    CHECK(strstr(e.msg, "max_pipeline"));
    REQUIRE(api_server_init(&s, &loop, NULL, &e) == 0);
    CHECK(api_server_route(s, "GET", "nope", 0, h_hello, NULL, &e) == MOED_EINVAL);
    CHECK(api_server_route(s, "GET", "/a", 0, h_hello, NULL, &e) == 0);
    CHECK(api_server_route(s, "GET", "/a", 0, h_hello, NULL, &e) == MOED_EINVAL);
    CHECK(api_server_start(s, "127.0.0.1", 70000, &e) == MOED_ERANGE);
    api_server_free(s);
    CHECK_EQ(uv_loop_close(&loop), 0);
}

TEST(http_request_map)
{
    /* The id map's backward-shift deletion under collisions and wrap-around. */
    struct api_server *s;
    struct moed_err e;
    uv_loop_t loop;
    uv_loop_init(&loop);
    REQUIRE(api_server_init(&s, &loop, NULL, &e) == 0);
    enum { N = 3000 };
    struct api_req *rs = calloc(N, sizeof *rs);
    uint64_t x = 88172645463325252ull;
    for (int i = 0; i < N; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        rs[i].id = i % 2 ? (uint64_t)i + 1 : x | 1;
        REQUIRE(api__map_put(s, &rs[i]) == 0);
    }
    for (int i = 0; i < N; i += 3)
        api__map_del(s, &rs[i]);
    for (int i = 0; i < N; i++) {
        struct api_req *got = api__map_get(s, rs[i].id);
        CHECK_MSG(i % 3 == 0 ? got == NULL : got == &rs[i], "id %d", i);
        if (test_failed_now())
            break;
    }
    for (int i = 0; i < N; i++)
        api__map_del(s, &rs[i]);
    CHECK_EQ(s->map_n, 0);
    free(rs);
    api_server_free(s);
    CHECK_EQ(uv_loop_close(&loop), 0);
}

TEST(http_upgrade_and_half_close)
{
    struct ts t;
    REQUIRE(ts_start(&t, NULL, NULL) == 0);
    /* A protocol switch we do not offer: answered over HTTP/1.1, then closed. */
    struct tc *c = tc_open(&t);
    REQUIRE(c);
    struct tresp r;
    tc_sends(c, "GET /hello HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n");
    REQUIRE(tc_read(c, &r, 2000) == 0);
    CHECK_EQ(r.status, 200);
    CHECK(hdr(&r, "Connection") && strcmp(hdr(&r, "Connection"), "close") == 0);
    tresp_free(&r);
    CHECK(tc_wait_eof(c, 2000));
    tc_close(c);

    /* Request, then shutdown(SHUT_WR): the answer still arrives. */
    c = tc_open(&t);
    REQUIRE(c);
    tc_sends(c, GET("/hello"));
    shutdown(c->fd, SHUT_WR);
    REQUIRE(tc_read(c, &r, 2000) == 0);
    CHECK_EQ(r.status, 200);
    tresp_free(&r);
    CHECK(tc_wait_eof(c, 2000));
    tc_close(c);

    /* ... but work that is still pending is cancelled. */
    c = tc_open(&t);
    REQUIRE(c);
    tc_sends(c, GET("/wait"));
    usleep(10000);
    shutdown(c->fd, SHUT_WR);
    CHECK(ts_wait(&t, &t.n_cancel, 1, 2000));
    CHECK(tc_wait_eof(c, 2000));
    tc_close(c);

    /* An unknown path with a body too large to skip: answered, then closed. */
    c = tc_open(&t);
    REQUIRE(c);
    tc_sends(c, "POST /nope HTTP/1.1\r\nHost: t\r\nContent-Length: 100000000\r\n\r\n");
    REQUIRE(tc_read(c, &r, 2000) == 0);
    CHECK_EQ(r.status, 404);
    tresp_free(&r);
    CHECK(tc_wait_eof(c, 2000));
    tc_close(c);
    ts_stop(&t);
}

TEST(http_continue_behind_pipelined_request)
{
    struct ts t;
    REQUIRE(ts_start(&t, NULL, NULL) == 0);
    struct tc *c = tc_open(&t);
    REQUIRE(c);
    struct tresp r;
    /* The 100 may only follow the answer to the request before it. */
    tc_sends(c, GET("/defer") "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
                              "Expect: 100-continue\r\n\r\n");
    REQUIRE(tc_read(c, &r, 2000) == 0);
    CHECK_EQ(r.status, 201);
    tresp_free(&r);
    REQUIRE(tc_read(c, &r, 2000) == 0);
    CHECK_EQ(r.status, 100);
    tresp_free(&r);
    tc_sends(c, "hello");
    REQUIRE(tc_read(c, &r, 2000) == 0);
    CHECK_EQ(r.status, 200);
    CHECK(r.body && strcmp(r.body, "hello") == 0);
    tresp_free(&r);
    tc_close(c);
    ts_stop(&t);
}

TEST(http_stray_bytes_do_not_extend_idle)
{
    struct api_limits l = test_limits();
    l.header_timeout_ms = 60;
    struct ts t;
    REQUIRE(ts_start(&t, &l, NULL) == 0);
    struct tc *c = tc_open(&t);
    REQUIRE(c);
    long long t0 = now_ms();
    bool closed = false;
    for (int i = 0; i < 100 && !closed; i++) {
        if (send(c->fd, "\r\n", 2, MSG_NOSIGNAL) != 2)
            break;
        struct pollfd pfd = {.fd = c->fd, .events = POLLIN};
        if (poll(&pfd, 1, 15) > 0)
            closed = true; /* a 408 or the close itself */
    }
    CHECK(closed);
    CHECK_MSG(now_ms() - t0 < 1000, "closed after %lld ms", now_ms() - t0);
    tc_close(c);
    ts_stop(&t);
}

TEST(http_head_has_no_body)
{
    struct ts t;
    REQUIRE(ts_start(&t, NULL, NULL) == 0);
    struct tc *c = tc_open(&t);
    REQUIRE(c);
    /* HEAD is served by the GET route without the body; the next response
     * on the connection must follow the headers directly. */
    tc_sends(c, "HEAD /hello HTTP/1.1\r\nHost: t\r\n\r\n"
                "HEAD /sse HTTP/1.1\r\nHost: t\r\n\r\n" GET("/hello"));
    struct api_buf raw;
    api_buf_init(&raw);
    long long end = now_ms() + 2000;
    while (!raw.data || !strstr(raw.data, "\r\n\r\nhello")) {
        if (now_ms() > end || tc_fill(c, 200) < 0)
            break;
        api_buf_append(&raw, c->buf, c->len);
        c->len = 0;
    }
    REQUIRE(raw.data);
    int n = 0;
    for (const char *p = raw.data; (p = strstr(p, "HTTP/1.1 200 OK\r\n")); p++)
        n++;
    CHECK_EQ(n, 3);
    CHECK(strstr(raw.data, "Content-Length: 5\r\n"));
    CHECK(strstr(raw.data, "text/event-stream"));
    CHECK(!strstr(raw.data, "data:"));
    const char *first = strstr(raw.data, "hello");
    CHECK(first && strcmp(first, "hello") == 0); /* only the GET carries it */
    api_buf_free(&raw);
    tc_close(c);
    ts_stop(&t);
}
