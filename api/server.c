/*
 * api/server.c: the server object: limits, the route table, the API key, the
 * listening socket, the id -> request map, drain and stop.  Connections live
 * in conn.c, responses in respond.c, cross-thread messages in post.c.
 *
 * Stop closes every handle the server opened and counts their close
 * callbacks; when the count reaches zero the caller's done callback runs and
 * the memory may be freed.  Nothing is freed from inside a libuv callback
 * that might still reference it.
 */
#include "api/http_priv.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

void api_limits_default(struct api_limits *l)
{
    *l = (struct api_limits){
        .max_connections = 1024,
        .max_header_bytes = 16 * 1024,
        .max_headers = 100,
        .max_body_bytes = 8 * 1024 * 1024,
        .header_timeout_ms = 10000,
        .body_timeout_ms = 30000,
        .idle_timeout_ms = 60000,
        .send_timeout_ms = 60000,
        .linger_ms = 2000,
        .write_high_water = 256 * 1024,
        .max_write_queue = 8 * 1024 * 1024,
        .max_pipeline = 16,
    };
}

void api__log(struct api_server *s, int level, const char *fmt, ...)
{
    if (!s->log)
        return;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    s->log(s->log_ud, level, msg);
}

void api_server_set_logger(struct api_server *s, api_log_fn fn, void *ud)
{
    s->log = fn;
    s->log_ud = ud;
}

static int limits_check(const struct api_limits *l, struct moed_err *e)
{
#define NONZERO(f)                                                                                 \
    if (l->f == 0)                                                                                 \
        return moed_err_set(e, MOED_EINVAL, "api limits: %s must be > 0", #f);
    NONZERO(max_connections)
    NONZERO(max_header_bytes)
    NONZERO(max_headers)
    NONZERO(max_body_bytes)
    NONZERO(header_timeout_ms)
    NONZERO(body_timeout_ms)
    NONZERO(idle_timeout_ms)
    NONZERO(send_timeout_ms)
    NONZERO(linger_ms)
    NONZERO(write_high_water)
    NONZERO(max_write_queue)
    NONZERO(max_pipeline)
#undef NONZERO
    if (l->max_write_queue < l->write_high_water)
        return moed_err_set(e, MOED_EINVAL,
                            "api limits: max_write_queue %zu is below write_high_water %zu",
                            l->max_write_queue, l->write_high_water);
    if (l->max_body_bytes > SIZE_MAX / 2)
        return moed_err_set(e, MOED_ERANGE, "api limits: max_body_bytes %zu is too large",
                            l->max_body_bytes);
    return 0;
}

int api_server_init(struct api_server **out, uv_loop_t *loop, const struct api_limits *limits,
                    struct moed_err *e)
{
    *out = NULL;
    struct api_limits lim;
    if (limits)
        lim = *limits;
    else
        api_limits_default(&lim);
    int rc = limits_check(&lim, e);
    if (rc)
        return rc;
    struct api_server *s = calloc(1, sizeof *s);
    if (!s)
        return moed_err_set(e, MOED_ENOMEM, "api server: out of memory");
    s->loop = loop;
    s->lim = lim;
    s->port = -1;
    s->next_id = 1;
    size_t other;
    if (api__stats_add_route(s, "other", &other) || api__mq_init(s)) {
        api__stats_free(s);
        free(s);
        return moed_err_set(e, MOED_ENOMEM, "api server: out of memory");
    }
    *out = s;
    return 0;
}

int api_server_set_limits(struct api_server *s, const struct api_limits *l, struct moed_err *e)
{
    int rc = limits_check(l, e);
    if (rc)
        return rc;
    /* conn.c reads s->lim when it decides, so the new values take effect at
     * the next accept, parse step or timer arming (see http.h). */
    s->lim = *l;
    return 0;
}

void api_server_free(struct api_server *s)
{
    if (!s)
        return;
    /* A started server must have been stopped and seen its done callback. */
    if (s->started && s->handles_open > 0)
        abort();
    for (size_t i = 0; i < s->n_routes; i++) {
        free(s->routes[i].method);
        free(s->routes[i].path);
    }
    free(s->routes);
    api__stats_free(s);
    if (s->api_key) {
        explicit_bzero(s->api_key, s->api_key_len);
        free(s->api_key);
    }
    free(s->map);
    api__mq_destroy(s);
    free(s);
}

/* ---- routes and auth ------------------------------------------------------ */

static bool token_ok(const char *t)
{
    if (!*t)
        return false;
    for (; *t; t++)
        if (*t <= ' ' || *t >= 127)
            return false;
    return true;
}

int api_server_route(struct api_server *s, const char *method, const char *path, unsigned flags,
                     api_handler_fn fn, void *ud, struct moed_err *e)
{
    if (!method || !token_ok(method) || strlen(method) >= 12)
        return moed_err_set(e, MOED_EINVAL, "api route: bad method '%s'", method ? method : "");
    if (!path || path[0] != '/' || !token_ok(path) || strchr(path, '?'))
        return moed_err_set(e, MOED_EINVAL, "api route: bad path '%s' (must start with '/')",
                            path ? path : "");
    if (!fn)
        return moed_err_set(e, MOED_EINVAL, "api route %s %s: no handler", method, path);
    size_t metrics = s->n_rstats;
    for (size_t i = 0; i < s->n_routes; i++) {
        if (strcmp(s->routes[i].path, path) != 0)
            continue;
        if (strcmp(s->routes[i].method, method) == 0)
            return moed_err_set(e, MOED_EINVAL, "api route %s %s: registered twice", method, path);
        metrics = s->routes[i].metrics;
    }
    struct api_route *nr = realloc(s->routes, (s->n_routes + 1) * sizeof *nr);
    if (!nr)
        return moed_err_set(e, MOED_ENOMEM, "api route: out of memory");
    s->routes = nr;
    if (metrics == s->n_rstats && api__stats_add_route(s, path, &metrics))
        return moed_err_set(e, MOED_ENOMEM, "api route: out of memory");
    struct api_route *r = &s->routes[s->n_routes];
    *r = (struct api_route){.method = strdup(method),
                            .path = strdup(path),
                            .flags = flags,
                            .fn = fn,
                            .ud = ud,
                            .metrics = metrics};
    if (!r->method || !r->path) {
        free(r->method);
        free(r->path);
        return moed_err_set(e, MOED_ENOMEM, "api route: out of memory");
    }
    s->n_routes++;
    return 0;
}

/* The route for (method, path); NULL when none, with the methods the path
 * does take written to allow ("GET, HEAD, POST"; "" when the path is
 * unknown).  HEAD falls back to the GET route (the body is not sent). */
const struct api_route *api__route_find(const struct api_server *s, const char *method,
                                        const char *path, char *allow, size_t allow_n)
{
    size_t used = 0;
    const struct api_route *get = NULL;
    allow[0] = '\0';
    for (size_t i = 0; i < s->n_routes; i++) {
        const struct api_route *r = &s->routes[i];
        if (strcmp(r->path, path) != 0)
            continue;
        if (strcmp(r->method, method) == 0)
            return r;
        if (strcmp(r->method, "GET") == 0)
            get = r;
        int w = snprintf(allow + used, allow_n - used, "%s%s%s", used ? ", " : "", r->method,
                         strcmp(r->method, "GET") == 0 ? ", HEAD" : "");
        if (w > 0 && (size_t)w < allow_n - used)
            used += (size_t)w;
    }
    if (get && strcmp(method, "HEAD") == 0)
        return get;
    return NULL;
}

int api_server_set_api_key(struct api_server *s, const char *key, struct moed_err *e)
{
    if (s->api_key) {
        explicit_bzero(s->api_key, s->api_key_len);
        free(s->api_key);
        s->api_key = NULL;
        s->api_key_len = 0;
    }
    if (!key || !*key)
        return 0;
    for (const char *p = key; *p; p++)
        if (*p <= ' ' || *p >= 127)
            return moed_err_set(e, MOED_EINVAL,
                                "api key: contains a space or control character at offset %zu",
                                (size_t)(p - key));
    s->api_key_len = strlen(key);
    s->api_key = malloc(s->api_key_len + 1);
    if (!s->api_key)
        return moed_err_set(e, MOED_ENOMEM, "api key: out of memory");
    memcpy(s->api_key, key, s->api_key_len + 1);
    return 0;
}

/* "Bearer KEY" against the configured key.  The comparison touches every
 * byte of the configured key whatever the input, so its time tells nothing
 * about how much of a guess was right (only the guess's own length). */
bool api__auth_ok(const struct api_server *s, const char *authorization)
{
    if (!s->api_key)
        return true;
    if (!authorization || strncasecmp(authorization, "Bearer ", 7) != 0)
        return false;
    const char *given = authorization + 7;
    while (*given == ' ')
        given++;
    size_t glen = strlen(given);
    while (glen && (given[glen - 1] == ' ' || given[glen - 1] == '\t'))
        glen--;
    volatile unsigned char diff = (unsigned char)(glen != s->api_key_len);
    for (size_t i = 0; i < s->api_key_len; i++) {
        unsigned char g = i < glen ? (unsigned char)given[i] : 0;
        diff |= (unsigned char)(g ^ (unsigned char)s->api_key[i]);
    }
    return diff == 0;
}

/* ---- id -> request map ----------------------------------------------------- */

static size_t map_slot(uint64_t id, size_t cap)
{
    /* Fibonacci hashing; ids are sequential. */
    return (size_t)((id * 0x9E3779B97F4A7C15ull) >> 17) & (cap - 1);
}

int api__map_put(struct api_server *s, struct api_req *r)
{
    if ((s->map_n + 1) * 2 > s->map_cap) {
        size_t ncap = s->map_cap ? s->map_cap * 2 : 64;
        struct api_req **nm = calloc(ncap, sizeof *nm);
        if (!nm)
            return MOED_ENOMEM;
        for (size_t i = 0; i < s->map_cap; i++) {
            struct api_req *q = s->map[i];
            if (!q)
                continue;
            size_t j = map_slot(q->id, ncap);
            while (nm[j])
                j = (j + 1) & (ncap - 1);
            nm[j] = q;
        }
        free(s->map);
        s->map = nm;
        s->map_cap = ncap;
    }
    size_t j = map_slot(r->id, s->map_cap);
    while (s->map[j])
        j = (j + 1) & (s->map_cap - 1);
    s->map[j] = r;
    s->map_n++;
    r->in_map = true;
    return 0;
}

struct api_req *api__map_get(struct api_server *s, uint64_t id)
{
    if (!s->map_cap)
        return NULL;
    for (size_t j = map_slot(id, s->map_cap);; j = (j + 1) & (s->map_cap - 1)) {
        struct api_req *q = s->map[j];
        if (!q)
            return NULL;
        if (q->id == id)
            return q;
    }
}

/* Linear-probing delete with backward shift (no tombstones). */
void api__map_del(struct api_server *s, struct api_req *r)
{
    if (!r->in_map)
        return;
    r->in_map = false;
    size_t mask = s->map_cap - 1, i = map_slot(r->id, s->map_cap);
    while (s->map[i] != r)
        i = (i + 1) & mask;
    s->map[i] = NULL;
    s->map_n--;
    for (size_t j = (i + 1) & mask; s->map[j]; j = (j + 1) & mask) {
        size_t home = map_slot(s->map[j]->id, s->map_cap);
        /* Move j back to i unless its home lies cyclically in (i, j]. */
        bool stays = (i <= j) ? (i < home && home <= j) : (i < home || home <= j);
        if (!stays) {
            s->map[i] = s->map[j];
            s->map[j] = NULL;
            i = j;
        }
    }
}

/* ---- listening ------------------------------------------------------------- */

static void on_connection(uv_stream_t *server, int status)
{
    struct api_server *s = server->data;
    if (status < 0) {
        api__log(s, 1, "http: accept: %s", uv_strerror(status));
        return;
    }
    api__conn_accept(s);
}

static int resolve(const char *host, int port, struct sockaddr_storage *ss, struct moed_err *e)
{
    char h[256];
    size_t n = strlen(host);
    if (n >= sizeof h)
        return moed_err_set(e, MOED_EINVAL, "http: listen address '%.40s...' is too long", host);
    if (n >= 2 && host[0] == '[' && host[n - 1] == ']') {
        memcpy(h, host + 1, n - 2);
        h[n - 2] = '\0';
    } else {
        memcpy(h, host, n + 1);
    }
    if (uv_ip4_addr(h, port, (struct sockaddr_in *)ss) == 0)
        return 0;
    if (uv_ip6_addr(h, port, (struct sockaddr_in6 *)ss) == 0)
        return 0;
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE},
                    *res = NULL;
    int rc = getaddrinfo(h, NULL, &hints, &res);
    if (rc != 0 || !res)
        return moed_err_set(e, MOED_EINVAL, "http: cannot resolve listen address '%s': %s", host,
                            gai_strerror(rc));
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    if (ss->ss_family == AF_INET)
        ((struct sockaddr_in *)ss)->sin_port = htons((uint16_t)port);
    else
        ((struct sockaddr_in6 *)ss)->sin6_port = htons((uint16_t)port);
    freeaddrinfo(res);
    return 0;
}

static void on_handle_closed(uv_handle_t *h)
{
    api__handle_closed(h->data);
}

int api_server_start(struct api_server *s, const char *host, int port, struct moed_err *e)
{
    if (s->started)
        return moed_err_set(e, MOED_EINVAL, "http: server already started");
    if (port < 0 || port > 65535)
        return moed_err_set(e, MOED_ERANGE, "http: port %d is out of range 0..65535", port);
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    int rc = resolve(host ? host : "127.0.0.1", port, &ss, e);
    if (rc)
        return rc;
    /* A write to a socket whose peer has gone raises SIGPIPE, which by
     * default kills the process: a client hanging up must never do that. */
    struct sigaction sa;
    if (sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_DFL)
        signal(SIGPIPE, SIG_IGN);
    rc = api__mq_start(s);
    if (rc)
        return moed_err_set(e, MOED_EIO, "http: uv_async_init: %s", uv_strerror(rc));
    s->started = true;

    uv_tcp_init(s->loop, &s->listener);
    s->listener.data = s;
    s->listener_open = true;
    s->handles_open++;
    rc = uv_tcp_bind(&s->listener, (const struct sockaddr *)&ss, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&s->listener, 511, on_connection);
    if (rc) {
        /* The caller stops the server (closing the handles) and frees it. */
        return moed_err_set(e, MOED_EIO, "http: cannot listen on %s port %d: %s", host, port,
                            uv_strerror(rc));
    }
    struct sockaddr_storage bound;
    int blen = sizeof bound;
    uv_tcp_getsockname(&s->listener, (struct sockaddr *)&bound, &blen);
    s->port = ntohs(bound.ss_family == AF_INET ? ((struct sockaddr_in *)&bound)->sin_port
                                               : ((struct sockaddr_in6 *)&bound)->sin6_port);
    s->listening = true;
    api__log(s, 2, "http: listening on %s port %d", host, s->port);
    return 0;
}

int api_server_port(const struct api_server *s)
{
    return s->listening ? s->port : -1;
}

static void close_listener(struct api_server *s)
{
    if (!s->listener_open)
        return;
    s->listener_open = false;
    s->listening = false;
    uv_close((uv_handle_t *)&s->listener, on_handle_closed);
}

void api_server_drain(struct api_server *s)
{
    if (s->stopping)
        return;
    s->draining = true;
    close_listener(s);
    for (struct api_conn *c = s->conns, *next; c; c = next) {
        next = c->next;
        c->close_after_current = true;
        api__conn_close_idle(c);
    }
}

unsigned api_server_busy(const struct api_server *s)
{
    unsigned n = 0;
    for (const struct api_conn *c = s->conns; c; c = c->next)
        if (!c->closing && (c->active || c->parsing || c->pend_head))
            n++;
    return n;
}

void api__handle_closed(struct api_server *s)
{
    s->handles_open--;
    if (s->stopping && s->handles_open == 0 && s->stopped_cb) {
        void (*cb)(struct api_server *, void *) = s->stopped_cb;
        s->stopped_cb = NULL;
        cb(s, s->stopped_ud);
    }
}

void api_server_stop(struct api_server *s, void (*done)(struct api_server *s, void *ud), void *ud)
{
    if (s->stopping)
        return;
    s->stopping = true;
    s->draining = true;
    s->stopped_cb = done;
    s->stopped_ud = ud;
    /* One extra count held until the end of this function, so that done runs
     * once, from a close callback, even if nothing is open. */
    s->handles_open++;
    close_listener(s);
    api__mq_close(s);
    for (struct api_conn *c = s->conns; c; c = c->next)
        api__conn_close(c);
    if (s->handles_open == 1) {
        /* Nothing to wait for: still call done from the loop. */
        s->handles_open--;
        if (done)
            done(s, ud);
        s->stopped_cb = NULL;
        return;
    }
    s->handles_open--;
}

void api_server_stats(const struct api_server *s, struct api_stats *out)
{
    *out = s->stats;
}
