/*
 * api/http.h: moed's HTTP/1.1 server on libuv + llhttp.  It knows nothing of
 * OpenAI or models: the daemon registers (method, path) routes, and handlers
 * answer with a complete response or an SSE stream.  The transport owns
 * connections, limits, timeouts, framing, auth, error objects and counters.
 *
 * Threads.  Every function here runs on the loop thread (the thread that
 * runs the uv_loop given to api_server_init), except the api_post_*
 * functions, which any thread may call: they queue a message for a request
 * named by its id and wake the loop with uv_async_send.  Ids are never reused,
 * so a message for a request whose client has gone is dropped, never
 * delivered to freed memory.
 *
 * Life of a request.  The transport parses it, checks limits, route and API
 * key (before reading the body), then calls the route's handler with a
 * struct api_req.  The handler answers now or later, but always on the loop
 * thread: api_respond*() once, or api_stream_start(), any number of
 * api_stream_send_*(), then api_stream_end().  That final call ends the
 * handler's part even if it returns an error (the client may already have
 * gone): the handler must not touch req again and gets no on_cancel.  If the
 * client goes away before the final call (EOF or half-close, reset, write
 * error, write stall, output over max_write_queue, server stop), the
 * on_cancel hook runs from a later loop callback (never from inside an api_
 * call) and is the last call the handler gets for that req; req is freed
 * when it returns.  Pipelined requests on one connection are handled one at
 * a time, in order: the next is dispatched once the previous response has
 * been handed to the kernel.
 *
 * Errors follow common/err.h: 0 or a negative MOED_E* code.
 */
#ifndef MOED_API_HTTP_H
#define MOED_API_HTTP_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "common/err.h"

struct cJSON;
struct api_server;
struct api_req;

/* ---- limits --------------------------------------------------------------- */

/* Every field must be > 0; api_limits_default() fills sensible values and the
 * daemon overrides them from the config. */
struct api_limits {
    unsigned max_connections; /* open client connections; one more gets 503 and close */
    size_t max_header_bytes;  /* request line + headers; above: 431 and close */
    unsigned max_headers;     /* header lines; above: 431 and close */
    size_t max_body_bytes; /* from Content-Length before reading, or while reading chunked: 413 and
                              close */
    unsigned header_timeout_ms; /* from a request's first byte (or the accept) to its last header:
                                   408 and close */
    unsigned body_timeout_ms;   /* longest pause between two reads of a body: 408 and close */
    unsigned idle_timeout_ms;   /* keep-alive connection with nothing to do: closed quietly */
    unsigned
        send_timeout_ms; /* queued output that makes no progress this long: close (and cancel) */
    unsigned
        linger_ms; /* after a closing response, read and discard this long so the client sees it */
    size_t write_high_water; /* queued output above this reports backpressure to the handler */
    size_t max_write_queue;  /* queued output above this: the client is not reading; close (and
                                cancel) */
    unsigned
        max_pipeline; /* parsed requests waiting behind the one being handled; more: stop reading */
};

void api_limits_default(struct api_limits *l);

/* ---- server --------------------------------------------------------------- */

/* Allocate a server on loop (not yet listening).  Copies *limits (NULL: the
 * defaults).  Fails with EINVAL naming a limit that is zero. */
int api_server_init(struct api_server **out, uv_loop_t *loop, const struct api_limits *limits,
                    struct moed_err *e);

/* Replace the limits of a running (or not yet started) server; loop thread
 * only.  *l is validated as api_server_init does (nothing changes on error)
 * and copied.  The new values apply to connections accepted and requests
 * begun from now on.  Open connections stay open, even above a lower
 * max_connections (they count toward it, so new ones get 503 until enough
 * close).  For open ones the transport reads each limit when it next uses
 * it: a request whose headers are still arriving, and a body still being
 * read, are checked against the new max_header_bytes, max_headers and
 * max_body_bytes (a body over a lowered limit gets 413); a timer already
 * running keeps its deadline until it is next armed (at the next read,
 * write or request), and then uses the new timeouts.  A request already
 * dispatched to its handler, and its response, are not affected. */
int api_server_set_limits(struct api_server *s, const struct api_limits *l, struct moed_err *e);

typedef void (*api_handler_fn)(struct api_req *req, void *ud);

enum {
    API_ROUTE_AUTH = 1u << 0, /* needs the API key when one is set */
};

/* Register handler fn for an exact method ("GET", "POST") and path ("/v1/models";
 * the query string is not part of the match).  A known path with another method
 * gets 405 with Allow; an unknown path gets 404.  Strings are copied. */
int api_server_route(struct api_server *s, const char *method, const char *path, unsigned flags,
                     api_handler_fn fn, void *ud, struct moed_err *e);

/* Set (or with NULL or "" clear) the key that API_ROUTE_AUTH routes require as
 * "Authorization: Bearer KEY".  Copied; compared in constant time; wiped on
 * free; never logged or echoed. */
int api_server_set_api_key(struct api_server *s, const char *key, struct moed_err *e);

/* Optional log sink (level: 0 error, 1 warning, 2 info, 3 debug). */
typedef void (*api_log_fn)(void *ud, int level, const char *msg);
void api_server_set_logger(struct api_server *s, api_log_fn fn, void *ud);

/* Bind and listen.  host: numeric IPv4 or IPv6 ("127.0.0.1", "::1", "[::1]",
 * "0.0.0.0", "::" which on Linux also takes IPv4) or a name resolved once
 * now; port 0 picks a free port (see api_server_port).  Sets SIGPIPE to
 * ignored if it is at its default (a client hanging up must not kill the
 * process).  On failure, stop and free the server. */
int api_server_start(struct api_server *s, const char *host, int port, struct moed_err *e);

/* The bound port (useful after port 0), or -1 when not listening. */
int api_server_port(const struct api_server *s);

/* Stop accepting; close idle connections; busy ones close after their
 * current response (which then says Connection: close). */
void api_server_drain(struct api_server *s);

/* Connections with a request being read, handled or written. */
unsigned api_server_busy(const struct api_server *s);

/* Close everything now: the listener, the cross-thread queue (later posts are
 * refused) and every connection (handlers of unfinished requests get
 * on_cancel).  done(s, ud) runs on the loop thread once the last handle has
 * closed (at once, from inside this call, when nothing was open); then
 * api_server_free may be called.  Keep running the loop until then. */
void api_server_stop(struct api_server *s, void (*done)(struct api_server *s, void *ud), void *ud);

/* Free a server that never started, or whose stop has completed.  Producer
 * threads must not post to s after this. */
void api_server_free(struct api_server *s);

/* ---- requests (loop thread) ---------------------------------------------- */

uint64_t api_req_id(const struct api_req *r); /* unique for the server's life, never 0 */
struct api_server *api_req_server(const struct api_req *r);
const char *api_req_method(const struct api_req *r);
const char *api_req_path(const struct api_req *r);  /* without the query */
const char *api_req_query(const struct api_req *r); /* after '?', "" when none */
const char *api_req_route(const struct api_req *r); /* the route's path, "" when none */
/* First header named name (case-insensitive), NULL if absent. */
const char *api_req_header(const struct api_req *r, const char *name);
size_t api_req_header_count(const struct api_req *r);
void api_req_header_at(const struct api_req *r, size_t i, const char **name, const char **value);
/* The body, NUL-terminated (the NUL is not counted in *len); "" when none. */
const char *api_req_body(const struct api_req *r, size_t *len);
/* Remote address as "1.2.3.4:5678" or "[::1]:5678" for logs. */
void api_req_peer(const struct api_req *r, char *buf, size_t n);

struct api_req_hooks {
    /* The client went away before the handler's final response call.  Last
     * call for this req: it is freed after this returns.  Here the handler
     * tells the engine to drop the sequence. */
    void (*on_cancel)(struct api_req *r, void *ud);
    /* Queued output crossed write_high_water (congested = true) or fell back
     * below a quarter of it (false).  The handler may pause its producer. */
    void (*on_backpressure)(struct api_req *r, void *ud, bool congested);
    void *ud;
};
void api_req_set_hooks(struct api_req *r, const struct api_req_hooks *hooks);

/* Bytes written to this request's connection but not yet taken by the kernel. */
size_t api_req_queued_bytes(const struct api_req *r);

/* Add a response header (e.g. "Retry-After") before the response starts.
 * Name and value must not contain CR or LF (EINVAL). */
int api_req_add_header(struct api_req *r, const char *name, const char *value);

/* ---- complete responses (loop thread) ------------------------------------- */

/* Send status, Content-Type and body (copied) with Content-Length.  Final. */
int api_respond(struct api_req *r, int status, const char *content_type, const void *body,
                size_t len);
/* Same with json printed unformatted, Content-Type application/json. */
int api_respond_json(struct api_req *r, int status, const struct cJSON *json);
/* An OpenAI error object (see api_error_json) with the type that status
 * implies.  param and code may be NULL (JSON null). */
int api_respond_error(struct api_req *r, int status, const char *param, const char *code,
                      const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* {"error": {"message": M, "type": T, "param": P|null, "code": C|null}} as a
 * malloc'd NUL-terminated string (NULL on allocation failure).  type NULL:
 * api_error_type(status). */
char *api_error_json(int status, const char *type, const char *message, const char *param,
                     const char *code);
/* "invalid_request_error" for 4xx (401 included, as OpenAI does),
 * "server_error" for 5xx. */
const char *api_error_type(int status);
/* "Not Found" etc.; "Unknown" for codes moed never sends. */
const char *api_status_reason(int status);

/* ---- server-sent events (loop thread) ------------------------------------- */

/* 200 with Content-Type: text/event-stream, Cache-Control: no-cache and
 * chunked framing (HTTP/1.1) or close-delimited (HTTP/1.0). */
int api_stream_start(struct api_req *r);
/* "data: DATA\n\n"; a newline inside data starts another "data: " line. */
int api_stream_send_event(struct api_req *r, const char *data, size_t len);
int api_stream_send_json(struct api_req *r, const struct cJSON *json);
/* ": TEXT\n\n", a comment that clients skip (keep-alive during long prefills). */
int api_stream_comment(struct api_req *r, const char *text);
/* Optionally "data: [DONE]\n\n", then the end of the response.  Final. */
int api_stream_end(struct api_req *r, bool send_done);
/* Output above write_high_water right now. */
bool api_stream_congested(const struct api_req *r);

/* ---- from other threads --------------------------------------------------- */

/* Each queues a message for request id and returns 0, or EIO once the server
 * is stopping (the message is dropped).  On the loop thread the message turns
 * into the loop-thread call of the same name, in the order posted; messages
 * for a request that has finished or gone are dropped silently.  Data is
 * copied. */
int api_post_start(struct api_server *s, uint64_t id);
int api_post_event(struct api_server *s, uint64_t id, const char *data, size_t len);
int api_post_comment(struct api_server *s, uint64_t id, const char *text);
int api_post_end(struct api_server *s, uint64_t id, bool send_done);
int api_post_respond(struct api_server *s, uint64_t id, int status, const char *content_type,
                     const char *body, size_t len);
int api_post_error(struct api_server *s, uint64_t id, int status, const char *param,
                   const char *code, const char *message);
/* Run fn(req, arg) on the loop thread (fn owns arg).  If the request is gone
 * or the server stopping, drop(arg) runs instead (drop may be NULL): on the
 * loop thread, or in the caller when this returns EIO. */
typedef void (*api_post_fn)(struct api_req *r, void *arg);
int api_post_call(struct api_server *s, uint64_t id, api_post_fn fn, void *arg,
                  void (*drop)(void *arg));

/* ---- text buffers and metrics (loop thread) ------------------------------- */

/* A growable string; oom latches on the first failed allocation. */
struct api_buf {
    char *data; /* NUL-terminated when non-NULL */
    size_t len, cap;
    bool oom;
};
void api_buf_init(struct api_buf *b);
void api_buf_free(struct api_buf *b);
int api_buf_append(struct api_buf *b, const void *data, size_t len);
int api_buf_printf(struct api_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int api_buf_vprintf(struct api_buf *b, const char *fmt, va_list ap);

/* A Prometheus histogram with fixed upper bounds (seconds, ascending). */
#define API_HIST_MAX 24
struct api_hist {
    size_t n;                          /* bounds in use */
    double le[API_HIST_MAX];           /* upper bounds; +Inf is implicit */
    uint64_t counts[API_HIST_MAX + 1]; /* per bucket, not cumulative; last is +Inf */
    uint64_t count;
    double sum;
};
/* bounds NULL: request latencies from 5 ms to 300 s. */
int api_hist_init(struct api_hist *h, const double *bounds, size_t n);
void api_hist_observe(struct api_hist *h, double v);
/* NAME_bucket{LABELS,le=".."}, NAME_sum, NAME_count (labels may be "" or NULL;
 * no HELP/TYPE lines). */
int api_hist_render(struct api_buf *b, const char *name, const char *labels,
                    const struct api_hist *h);

struct api_stats {
    uint64_t connections_open, connections_total, connections_rejected;
    uint64_t requests_active, streams_active;
    uint64_t cancelled_total; /* requests whose client left before the end */
    uint64_t bytes_in, bytes_out;
};
void api_server_stats(const struct api_server *s, struct api_stats *out);

/* Prometheus text (with HELP and TYPE) for what the transport knows:
 * moed_http_connections_* , moed_http_requests_total{route,method,code},
 * moed_http_request_duration_seconds{route} (dispatch to last byte queued
 * to the kernel; whole stream for SSE), moed_http_bytes_{received,sent}_total,
 * moed_http_streams_active, moed_http_requests_cancelled_total.  Routes that
 * matched nothing are counted as route="other". */
int api_metrics_render(const struct api_server *s, struct api_buf *out);

#endif
