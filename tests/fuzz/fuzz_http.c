/*
 * libFuzzer target for the raw HTTP connection path (api/conn.c with
 * api/server.c, api/respond.c, api/post.c): llhttp callbacks, limits,
 * pipelining, chunked bodies, Expect, header validation, closing.
 *
 * The server runs once, on a private uv loop in this thread, bound to
 * 127.0.0.1 port 0 with small limits and a few routes: POST /echo (the body
 * back as JSON), GET /sse (a stream of three events), GET /error (a 500),
 * GET /defer (answered through the cross-thread queue, api_post_*), POST
 * /v1/secret (needs the API key), GET /health.
 *
 * Input: the first two bytes (little endian, top bit cleared, modulo the
 * rest's length + 1) pick where the rest is split in two writes; the loop
 * runs between them.  The top bit of the second byte half-closes at once
 * after the last write (the server cancels unfinished work); without it the
 * half-close waits until neither side makes progress (pipelined and
 * deferred requests finish).  Per input: connect a fresh TCP socket to
 * 127.0.0.1, write the bytes (as far as the server reads them, draining its
 * answer as we go), half-close, and run the loop until the server has
 * closed its side.  Checks:
 *   - the server always ends the exchange: it closes (within a few seconds
 *     of loop time; its own timeouts are under one second here);
 *   - once our socket is reset, the server frees the connection (no request
 *     or connection is left open between inputs);
 *   - what the server sent parses as a sequence of HTTP/1.1 responses
 *     (skipped when the input could be a HEAD request, whose responses have
 *     a Content-Length and no body);
 *   - every 64 inputs, GET /health on a fresh connection gets 200: the
 *     server still accepts and answers;
 *   - at exit, the server stops and frees cleanly (ASan reports leaks).
 *
 * FUZZ_HTTP_DEBUG=1 in the environment prints each exchange.
 *
 * Build and run: make fuzz FUZZ_SECONDS=60.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <uv.h>

#include "api/http.h"
#include "llhttp.h"

#define FUZZ_CHECK(c)                                                                              \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            fprintf(stderr, "fuzz_http: check failed: %s (line %d)\n", #c, __LINE__);              \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static uv_loop_t g_loop;
static struct api_server *g_srv;
static int g_port;
static unsigned long g_inputs;

/* ---- routes ------------------------------------------------------------------ */

static void h_health(struct api_req *r, void *ud)
{
    api_respond(r, 200, "text/plain", "ok\n", 3);
}

static void h_echo(struct api_req *r, void *ud)
{
    size_t n;
    const char *body = api_req_body(r, &n);
    FUZZ_CHECK(body && body[n] == '\0');
    cJSON *j = cJSON_CreateObject();
    if (!j) {
        api_respond_error(r, 503, NULL, NULL, "out of memory");
        return;
    }
    cJSON_AddNumberToObject(j, "len", (double)n);
    cJSON_AddStringToObject(j, "query", api_req_query(r));
    const char *ct = api_req_header(r, "Content-Type");
    if (ct)
        cJSON_AddStringToObject(j, "ct", ct);
    api_respond_json(r, 200, j);
    cJSON_Delete(j);
}

static void h_sse(struct api_req *r, void *ud)
{
    if (api_stream_start(r))
        return; /* final: the client went away */
    api_stream_comment(r, "hello");
    api_stream_send_event(r, "one", 3);
    api_stream_send_event(r, "two\nlines", 9);
    api_stream_end(r, true);
}

static void h_error(struct api_req *r, void *ud)
{
    api_req_add_header(r, "Retry-After", "1");
    api_respond_error(r, 500, "x", "boom", "handler failed on %s", api_req_path(r));
}

static void defer_cancel(struct api_req *r, void *ud)
{
}

static void h_defer(struct api_req *r, void *ud)
{
    struct api_req_hooks hk = {.on_cancel = defer_cancel};
    api_req_set_hooks(r, &hk);
    uint64_t id = api_req_id(r);
    api_post_start(g_srv, id);
    api_post_event(g_srv, id, "later", 5);
    api_post_end(g_srv, id, false);
}

static void h_secret(struct api_req *r, void *ud)
{
    api_respond(r, 200, "text/plain", "secret\n", 7);
}

/* ---- the client side ---------------------------------------------------------- */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Only ever 127.0.0.1. */
static int connect_local(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    FUZZ_CHECK(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)g_port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int rc = connect(fd, (struct sockaddr *)&a, sizeof a);
    FUZZ_CHECK(rc == 0 || errno == EINPROGRESS);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

/* Close with a reset: no TIME_WAIT, so ports are not used up. */
static void close_reset(int fd)
{
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(fd);
}

/* Wait for the client socket or the loop, then run the loop once without
 * blocking.  At most max_ms. */
static void step(int fd, short events, int max_ms)
{
    int t = uv_backend_timeout(&g_loop);
    if (t < 0 || t > max_ms)
        t = max_ms;
    struct pollfd p[2] = {{.fd = uv_backend_fd(&g_loop), .events = POLLIN},
                          {.fd = fd, .events = events}};
    poll(p, fd >= 0 ? 2 : 1, t);
    uv_run(&g_loop, UV_RUN_NOWAIT);
}

struct out {
    char *data;
    size_t len, cap;
};

static void out_add(struct out *o, const char *p, size_t n)
{
    if (o->len + n > o->cap) {
        size_t cap = o->cap ? o->cap : 4096;
        while (cap < o->len + n)
            cap *= 2;
        o->data = realloc(o->data, cap);
        FUZZ_CHECK(o->data);
        o->cap = cap;
    }
    memcpy(o->data + o->len, p, n);
    o->len += n;
}

static uint64_t progress_mark(const struct out *o)
{
    struct api_stats st;
    api_server_stats(g_srv, &st);
    return st.bytes_in + st.bytes_out + st.connections_total + o->len;
}

/* Send d[0, split), let the server run, send the rest; half-close at once
 * (early: cancels what is unfinished) or once neither side makes progress
 * (lets pipelined and deferred requests finish); read until the server
 * closes.  Returns what the server sent in *o. */
static void exchange(const uint8_t *d, size_t n, size_t split, bool early, struct out *o)
{
    int fd = connect_local();
    size_t off = 0;
    bool shut = false, eof = false;
    int settle = 0, quiet = 0;
    uint64_t mark = 0;
    double t0 = now_s();
    while (!eof) {
        FUZZ_CHECK(now_s() - t0 < 5.0); /* the server must end the exchange */
        if (off < split) {
            while (off < split) {
                ssize_t w = send(fd, d + off, split - off, MSG_NOSIGNAL);
                if (w <= 0)
                    break;
                off += (size_t)w;
            }
            if (off == split)
                settle = 4;
        } else if (settle > 0) {
            settle--;
        } else {
            while (off < n) {
                ssize_t w = send(fd, d + off, n - off, MSG_NOSIGNAL);
                if (w <= 0)
                    break;
                off += (size_t)w;
            }
        }
        if (off == n && !shut && settle == 0) {
            uint64_t m = progress_mark(o);
            quiet = m == mark ? quiet + 1 : 0;
            mark = m;
            if (early || quiet >= 4) {
                shutdown(fd, SHUT_WR);
                shut = true;
            }
        }
        for (;;) {
            char buf[16384];
            ssize_t r = recv(fd, buf, sizeof buf, 0);
            if (r > 0) {
                out_add(o, buf, (size_t)r);
                continue;
            }
            if (r == 0 || (errno != EAGAIN && errno != EINTR && errno != EINPROGRESS &&
                           errno != ENOTCONN)) {
                eof = true; /* closed or reset by the server */
            }
            break;
        }
        if (eof)
            break;
        short ev = POLLIN;
        if (off < n)
            ev |= POLLOUT;
        step(fd, ev, shut || settle || off < n ? 50 : 0);
    }
    close_reset(fd);
}

/* Run the loop until the server holds no connection. */
static void settle_server(void)
{
    double t0 = now_s();
    for (;;) {
        struct api_stats st;
        api_server_stats(g_srv, &st);
        if (st.connections_open == 0 && api_server_busy(g_srv) == 0)
            break;
        if (now_s() - t0 > 5.0) {
            fprintf(stderr, "fuzz_http: %llu connections, %llu requests still open\n",
                    (unsigned long long)st.connections_open,
                    (unsigned long long)st.requests_active);
            abort();
        }
        step(-1, 0, 20);
    }
    struct api_stats st;
    api_server_stats(g_srv, &st);
    FUZZ_CHECK(st.requests_active == 0);
    FUZZ_CHECK(st.streams_active == 0);
}

/* ---- response checking ------------------------------------------------------- */

struct rcheck {
    int n_final;
    int last_status;
};

static int rc_on_headers_complete(llhttp_t *p)
{
    struct rcheck *c = p->data;
    c->last_status = p->status_code;
    FUZZ_CHECK(p->status_code >= 100 && p->status_code <= 599);
    if (p->status_code >= 200)
        c->n_final++;
    return 0;
}

static void check_responses(const struct out *o, struct rcheck *c)
{
    llhttp_settings_t set;
    llhttp_settings_init(&set);
    set.on_headers_complete = rc_on_headers_complete;
    llhttp_t p;
    llhttp_init(&p, HTTP_RESPONSE, &set);
    p.data = c;
    memset(c, 0, sizeof *c);
    if (!o->len)
        return;
    llhttp_errno_t err = llhttp_execute(&p, o->data, o->len);
    if (err != HPE_OK) {
        fprintf(stderr, "fuzz_http: bad response stream (%s: %s) in:\n%.*s\n",
                llhttp_errno_name(err), llhttp_get_error_reason(&p),
                (int)(o->len < 2000 ? o->len : 2000), o->data);
        abort();
    }
}

static void health(void)
{
    static const char req[] = "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    struct out o = {0};
    exchange((const uint8_t *)req, sizeof req - 1, sizeof req - 1, false, &o);
    settle_server();
    FUZZ_CHECK(o.len >= 12 && memcmp(o.data, "HTTP/1.1 200", 12) == 0);
    free(o.data);
}

/* ---- set-up ---------------------------------------------------------------------- */

static void on_stopped(struct api_server *s, void *ud)
{
    *(bool *)ud = true;
}

static void fuzz_fini(void)
{
    bool done = false;
    api_server_stop(g_srv, on_stopped, &done);
    for (int i = 0; i < 1000 && !done; i++)
        uv_run(&g_loop, UV_RUN_ONCE);
    FUZZ_CHECK(done);
    api_server_free(g_srv);
    uv_run(&g_loop, UV_RUN_DEFAULT);
    FUZZ_CHECK(uv_loop_close(&g_loop) == 0);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    FUZZ_CHECK(uv_loop_init(&g_loop) == 0);
    struct api_limits l;
    api_limits_default(&l);
    l.max_connections = 4;
    l.max_header_bytes = 1024;
    l.max_headers = 16;
    l.max_body_bytes = 4096;
    l.header_timeout_ms = 500;
    l.body_timeout_ms = 500;
    l.idle_timeout_ms = 500;
    l.send_timeout_ms = 500;
    l.linger_ms = 100;
    l.write_high_water = 1024;
    l.max_write_queue = 64 * 1024;
    l.max_pipeline = 3;
    struct moed_err e = {0};
    FUZZ_CHECK(api_server_init(&g_srv, &g_loop, &l, &e) == 0);
    struct {
        const char *m, *p;
        unsigned f;
        api_handler_fn fn;
    } routes[] = {
        {"GET", "/health", 0, h_health},
        {"POST", "/echo", 0, h_echo},
        {"GET", "/sse", 0, h_sse},
        {"GET", "/error", 0, h_error},
        {"GET", "/defer", 0, h_defer},
        {"POST", "/v1/secret", API_ROUTE_AUTH, h_secret},
    };
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++)
        FUZZ_CHECK(api_server_route(g_srv, routes[i].m, routes[i].p, routes[i].f, routes[i].fn,
                                    NULL, &e) == 0);
    FUZZ_CHECK(api_server_set_api_key(g_srv, "k3y", &e) == 0);
    if (api_server_start(g_srv, "127.0.0.1", 0, &e)) {
        fprintf(stderr, "fuzz_http: %s\n", e.msg);
        abort();
    }
    g_port = api_server_port(g_srv);
    FUZZ_CHECK(g_port > 0);
    atexit(fuzz_fini);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    size_t n = size - 2;
    size_t split = ((size_t)data[0] | (size_t)(data[1] & 0x7f) << 8) % (n + 1);
    bool early = (data[1] & 0x80) != 0;
    struct out o = {0};
    exchange(data + 2, n, split, early, &o);
    settle_server();
    if (getenv("FUZZ_HTTP_DEBUG"))
        fprintf(stderr, "fuzz_http: %zu bytes in, %zu out:\n%.*s\n", n, o.len,
                (int)(o.len < 600 ? o.len : 600), o.data ? o.data : "");
    if (!memmem(data + 2, n, "HEAD", 4)) {
        struct rcheck rc;
        check_responses(&o, &rc);
    }
    free(o.data);
    if (++g_inputs % 64 == 0)
        health();
    return 0;
}
