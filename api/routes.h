/*
 * api/routes.h: the routes moed serves, between the HTTP transport
 * (api/http.h), the OpenAI protocol layer (api/openai.h) and the engine
 * (daemon/engine.h):
 *
 *   POST /v1/completions, POST /v1/chat/completions   (API key when set)
 *   GET  /v1/models                                   (API key when set)
 *   POST /tokenize, POST /detokenize                  (API key when set; llama.cpp's shapes)
 *   GET  /health                                      503 {"status": "loading"} until the
 *                                                     model is loaded, then 200 {"status": "ok"};
 *                                                     503 {"status": "stopping"} while draining
 *   GET  /metrics                                     Prometheus text (when enabled)
 *
 * A generation request, on the loop thread: parse and validate the body
 * (400 with an OpenAI error object), take a place in the engine's queue
 * (429 with Retry-After when full, 503 while loading or draining), then
 * render the chat template and tokenize on libuv's worker pool (long
 * prompts never block the loop), check the context (400
 * context_length_exceeded) and hand the request to the engine.  Nothing is
 * sent before all of that passed.  From then on the engine thread drives the
 * response through api_post_*: the SSE stream starts when the request gets
 * its sequence (chunks exactly as api/openai.h builds them, the usage chunk
 * when asked, data: [DONE]), or the whole JSON body is posted at the end.
 * A client that goes away cancels its sequence (engine_cancel).
 *
 * Everything here runs on the loop thread except the engine sink callbacks
 * (engine thread) and the tokenizing work (libuv's pool), which touch only
 * their own request's state.
 */
#ifndef MOED_API_ROUTES_H
#define MOED_API_ROUTES_H

#include <stdbool.h>
#include <stdint.h>

#include <uv.h>

#include "api/http.h"
#include "common/err.h"

struct engine;
struct routes;

struct routes_opts {
    struct engine *engine;
    const char *model_id;       /* what /v1/models lists and responses carry (copied) */
    int64_t created;            /* /v1/models "created", unix seconds */
    int64_t default_max_tokens; /* for requests without max_tokens; 0: to the context's end */
    bool metrics;               /* serve GET /metrics */
    /* Extra Prometheus text for /metrics (the daemon's own series); may be NULL. */
    void (*metrics_extra)(void *ud, struct api_buf *out);
    void *ud;
};

/* Register every route on srv (before api_server_start). */
int routes_init(struct routes **out, uv_loop_t *loop, struct api_server *srv,
                const struct routes_opts *o, struct moed_err *e);
/* After the server has stopped and no tokenizing work is left
 * (routes_pending() == 0). */
void routes_free(struct routes *rt);

/* Reloadable settings (SIGHUP). */
void routes_set_default_max_tokens(struct routes *rt, int64_t n);
void routes_set_metrics(struct routes *rt, bool on);
/* Stopping: /health answers 503 {"status": "stopping"}. */
void routes_set_draining(struct routes *rt, bool on);
/* Requests being tokenized on the worker pool right now. */
unsigned routes_pending(const struct routes *rt);

#endif
