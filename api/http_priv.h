/*
 * api/http_priv.h: the structures shared by the api/ sources.  Not for other parts:
 * they use api/http.h.
 *
 * Ownership: the server owns its connections (a doubly linked list), each
 * connection owns the request being parsed, the queue of parsed requests
 * waiting their turn, and the active one (dispatched to a handler, maybe
 * finished and still being written).  Active requests are also indexed by id
 * in a hash map so that cross-thread messages find them without pointers.
 */
#ifndef MOED_API_HTTP_PRIV_H
#define MOED_API_HTTP_PRIV_H

#include <pthread.h>

#include "llhttp.h"

#include "api/http.h"

#define API_MAX_CODES 16 /* distinct statuses counted per route */

struct api_route {
    char *method, *path;
    unsigned flags;
    api_handler_fn fn;
    void *ud;
    size_t metrics; /* index into server->rstats */
};

/* Counters for one route path (all its methods), or "other". */
struct api_route_stats {
    char *label;
    struct {
        int status;
        char method[12];
        uint64_t n;
    } codes[API_MAX_CODES];
    size_t n_codes;
    uint64_t codes_overflow;
    struct api_hist latency;
};

struct api_hdr {
    size_t name_off, val_off; /* into api_req.txt */
};

struct api_req {
    struct api_conn *conn; /* NULL once detached (being freed) */
    struct api_req *next;  /* in the connection's pending queue */
    uint64_t id;
    const struct api_route *route;
    size_t rstats;

    /* Parsed request: url, then header names and values, NUL-separated. */
    char *txt;
    size_t txt_len, txt_cap;
    size_t path_off, query_off;
    struct api_hdr *hdrs;
    size_t n_hdrs, cap_hdrs;
    int hdr_state; /* 0 between headers, 1 in a name, 2 in a value */
    size_t hdr_bytes;
    bool headers_done;
    const char *method;
    uint8_t http_major, http_minor;
    char *body;
    size_t body_len, body_cap;
    bool keep_alive;    /* client allows another request after this one */
    bool want_continue; /* Expect: 100-continue, not answered yet */
    bool discard_body;  /* rejected at header time: read the body, keep none */
    size_t held;        /* bytes counted in the connection's pend_bytes */

    /* An error answered instead of calling the handler. */
    int err_status;
    const char *err_code, *err_param;
    char *err_msg;
    char *err_allow; /* for 405 */
    bool err_fatal;  /* the connection closes after it */

    /* Response. */
    char *extra; /* "Name: value\r\n"... from api_req_add_header */
    size_t extra_len;
    int status;
    bool started;   /* status line written */
    bool streaming; /* SSE: chunked (or close-delimited) body in progress */
    bool chunked;
    bool head_only; /* HEAD: status line and headers, never a body */
    bool finished;  /* final call made */
    bool close_after;
    bool congested;
    bool in_map;
    struct api_req_hooks hooks;
    uint64_t t_dispatch; /* uv_hrtime() */
};

struct api_conn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_shutdown_t shutdown_req;
    struct api_server *srv;
    struct api_conn *prev, *next;
    llhttp_t parser;
    struct api_req *parsing; /* being parsed */
    struct api_req *pend_head, *pend_tail;
    unsigned n_pending;
    size_t pend_bytes;      /* text and body bytes held by the pending queue */
    struct api_req *active; /* dispatched; until its response is flushed */
    char *leftover;         /* unparsed input kept while the pipeline is full */
    size_t leftover_len;
    size_t queued;       /* bytes handed to uv_write, write_cb not yet run */
    uint64_t msg_start;  /* uv_now() when the current message began */
    uint64_t idle_start; /* uv_now() when the connection last became idle */
    unsigned n_served;
    int fatal_status; /* set by a parser callback before it fails */
    const char *fatal_code;
    char fatal_msg[160];
    int closes_left;          /* handles whose close_cb has not run */
    bool reject;              /* over max_connections: 503 and close */
    bool closing;             /* uv_close called */
    bool shutting;            /* uv_shutdown called */
    bool lingering;           /* discarding input before close */
    bool parse_dead;          /* parser stopped; input discarded */
    bool read_paused;         /* uv_read_stop for a full pipeline */
    bool close_after_current; /* set by drain */
    char peer[64];
};

/* One cross-thread message. */
enum api_msg_kind {
    API_MSG_START,
    API_MSG_EVENT,
    API_MSG_COMMENT,
    API_MSG_END,
    API_MSG_RESPOND,
    API_MSG_ERROR,
    API_MSG_CALL,
};

struct api_msg {
    struct api_msg *next;
    enum api_msg_kind kind;
    uint64_t id;
    int status;
    bool flag;
    api_post_fn fn;
    void *arg;
    void (*drop)(void *arg);
    char *ctype, *param, *code; /* RESPOND / ERROR */
    size_t len;
    char data[]; /* NUL-terminated */
};

struct api_server {
    uv_loop_t *loop;
    struct api_limits lim;
    uv_tcp_t listener;
    bool listening, listener_open;
    int port;
    bool started, stopping, draining;
    int handles_open; /* listener, async and connection handles not yet closed */
    void (*stopped_cb)(struct api_server *, void *);
    void *stopped_ud;

    struct api_route *routes;
    size_t n_routes;
    struct api_route_stats *rstats; /* [0] is "other" */
    size_t n_rstats;

    char *api_key;
    size_t api_key_len;

    api_log_fn log;
    void *log_ud;

    struct api_conn *conns;
    unsigned n_conns, n_rejecting;
    uint64_t next_id;

    /* id -> active request, open addressing with linear probing. */
    struct api_req **map;
    size_t map_cap, map_n;

    /* Cross-thread queue. */
    uv_async_t async;
    bool async_open;
    pthread_mutex_t mq_lock;
    struct api_msg *mq_head, *mq_tail;
    bool mq_closed;

    char rbuf[65536]; /* shared read buffer: reads never nest on one loop */

    struct api_stats stats;
};

/* server.c */
void api__log(struct api_server *s, int level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
int api__map_put(struct api_server *s, struct api_req *r);
void api__map_del(struct api_server *s, struct api_req *r);
struct api_req *api__map_get(struct api_server *s, uint64_t id);
void api__handle_closed(struct api_server *s);
const struct api_route *api__route_find(const struct api_server *s, const char *method,
                                        const char *path, char *allow, size_t allow_n);
bool api__auth_ok(const struct api_server *s, const char *authorization);

/* conn.c */
void api__conn_accept(struct api_server *s);
void api__conn_close(struct api_conn *c);
void api__conn_close_idle(struct api_conn *c);
/* Queue len bytes of data (copied) on r's connection. */
int api__conn_write(struct api_conn *c, const void *data, size_t len);
/* Called when r's final piece has been queued. */
void api__req_finished(struct api_req *r);
void api__req_check_backpressure(struct api_req *r);

/* post.c */
int api__mq_init(struct api_server *s);
int api__mq_start(struct api_server *s); /* opens the async handle; a uv error code */
void api__mq_close(struct api_server *s);
void api__mq_destroy(struct api_server *s);

/* metrics.c */
int api__stats_add_route(struct api_server *s, const char *path, size_t *idx);
void api__stats_record(struct api_server *s, const struct api_req *r, int status, double seconds);
void api__stats_free(struct api_server *s);

#endif
