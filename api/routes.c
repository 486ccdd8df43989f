/*
 * api/routes.c: moed's routes (routes.h).
 *
 * A generation request is a struct gen.  Its life:
 *   loop thread    h_completions / h_chat: parse (400), engine_reserve (429/503),
 *                  uv_queue_work -> gen_prepare on libuv's pool: chat template,
 *                  tokenize -> gen_prepared on the loop: context check (400),
 *                  oai_resp_init, engine_submit.  The struct then belongs to
 *                  the engine thread.
 *   engine thread  sink_admitted (stream: api_post_start, the role chunk, the
 *                  echo), sink_keepalive (stream, before the first token:
 *                  ": keepalive" comments every sse_keepalive), sink_text
 *                  (stream: a chunk per text event; else the text and
 *                  logprobs are collected), sink_finish (the finish
 *                  and usage chunks and [DONE], or the whole body; errors;
 *                  frees the struct).
 * While the request is on the pool its on_cancel hook marks it gone (the
 * after-work callback then only frees it); once submitted, the hook is
 * engine_cancel by request id, so the loop thread never touches a struct
 * that the engine owns.
 */
#include "api/routes.h"

#include <cjson/cJSON.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "api/openai.h"
#include "daemon/engine.h"
#include "model/chat.h"
#include "model/model.h"
#include "model/tok.h"

struct routes {
    uv_loop_t *loop;
    struct api_server *srv;
    struct engine *eng;
    char *model_id;
    int64_t created;
    atomic_llong default_max_tokens; /* read when a request is prepared */
    bool metrics, draining;
    void (*metrics_extra)(void *ud, struct api_buf *out);
    void *ud;
    unsigned pending;
};

/* ---- small helpers ---------------------------------------------------------- */

static uint64_t random_seed(void)
{
    uint64_t s;
    if (getrandom(&s, sizeof s, GRND_NONBLOCK) == (ssize_t)sizeof s)
        return s;
    static atomic_uint_fast64_t ctr;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return ((uint64_t)ts.tv_sec * 1000000007ull) ^ (uint64_t)ts.tv_nsec ^
           (atomic_fetch_add(&ctr, 1) * 0x9e3779b97f4a7c15ull);
}

static void respond_retry(struct api_req *req, int status, const char *retry_after,
                          const char *code, const char *msg)
{
    api_req_add_header(req, "Retry-After", retry_after);
    api_respond_error(req, status, NULL, code, "%s", msg);
}

static void respond_oai_error(struct api_req *req, const struct oai_error *err)
{
    api_respond_error(req, err->status, err->param[0] ? err->param : NULL,
                      err->code[0] ? err->code : NULL, "%s", err->message);
}

/* 503 while the model loads or the daemon stops; true when answered. */
static bool not_ready(struct routes *rt, struct api_req *req)
{
    enum engine_state st = engine_state(rt->eng);
    if (st == ENGINE_READY && !rt->draining)
        return false;
    if (st == ENGINE_READY)
        respond_retry(req, 503, "5", NULL, "The server is shutting down.");
    else
        respond_retry(req, 503, "5", "model_loading", "The model is still loading; retry shortly.");
    return true;
}

/* A JSON string must be valid UTF-8: invalid bytes become U+FFFD. */
static char *utf8_sanitize(const char *s, size_t n, size_t *out_len)
{
    if (n > (SIZE_MAX - 1) / 3)
        return NULL;
    char *o = malloc(3 * n + 1), *p = o;
    if (!o)
        return NULL;
    size_t i = 0;
    while (i < n) {
        int k = utf8_next((const unsigned char *)s + i, n - i);
        if (k > 0) {
            memcpy(p, s + i, (size_t)k);
            p += k;
            i += (size_t)k;
        } else {
            memcpy(p, "\xef\xbf\xbd", 3);
            p += 3;
            i += k < 0 ? (size_t)-k : n - i;
        }
    }
    *p = '\0';
    if (out_len)
        *out_len = (size_t)(p - o);
    return o;
}

/* ---- generation requests ------------------------------------------------------ */

struct gen {
    struct routes *rt;
    struct api_server *srv;
    struct api_req *req; /* loop thread, until submitted; NULL once the client is gone */
    uint64_t id;
    bool gone;
    double t_arrival;
    struct oai_request rq;
    uv_work_t work;
    /* set by gen_prepare */
    struct tok_ids ids;
    struct oai_error err;
    bool failed;
    char *echo;
    size_t echo_len;
    /* the engine thread's, after submission */
    const struct tok *tok;
    struct oai_resp resp;
    bool resp_ok, admitted, started;
    struct api_buf text;     /* stream = false: the text so far */
    struct oai_logprob *lps; /* stream = false, logprobs: one per token */
    size_t n_lp, cap_lp;
    struct oai_logprob *lp_tmp; /* stream: a chunk's logprobs */
    size_t cap_tmp;
};

static void gen_free(struct gen *g)
{
    if (!g)
        return;
    oai_request_free(&g->rq);
    tok_ids_free(&g->ids);
    free(g->echo);
    if (g->resp_ok)
        oai_resp_free(&g->resp);
    api_buf_free(&g->text);
    free(g->lps);
    free(g->lp_tmp);
    free(g);
}

static void lp_fill(const struct tok *t, const struct sample_result *r, struct oai_logprob *lp)
{
    size_t len = 0;
    const char *p = tok_piece(t, r->token, &len);
    lp->text = p ? p : "";
    lp->len = p ? len : 0;
    lp->logprob = r->logprob;
    lp->n_top = r->n_top;
    for (int32_t k = 0; k < r->n_top && k < SAMPLE_MAX_LOGPROBS; k++) {
        const char *q = tok_piece(t, r->top[k].token, &len);
        lp->top[k].text = q ? q : "";
        lp->top[k].len = q ? len : 0;
        lp->top[k].logprob = r->top[k].logprob;
    }
}

static void post_json(struct gen *g, char *json)
{
    if (json) {
        api_post_event(g->srv, g->id, json, strlen(json));
        free(json);
    }
}

/* An error answer from the engine thread: a complete response (with
 * Retry-After for 503) when nothing was sent yet, else an error event and
 * the end of the stream without [DONE]. */
struct post_err {
    int status;
    char retry_after[16];
    char msg[256];
};

static void post_err_call(struct api_req *req, void *arg)
{
    struct post_err *pe = arg;
    if (pe->retry_after[0])
        api_req_add_header(req, "Retry-After", pe->retry_after);
    api_respond_error(req, pe->status, NULL, NULL, "%s", pe->msg);
    free(pe);
}

static void gen_post_error(struct gen *g, int status, const char *retry_after, const char *msg)
{
    if (g->started) {
        char *json = api_error_json(status, NULL, msg, NULL, NULL);
        post_json(g, json);
        api_post_end(g->srv, g->id, false);
        return;
    }
    struct post_err *pe = calloc(1, sizeof *pe);
    if (!pe) {
        api_post_error(g->srv, g->id, status, NULL, NULL, msg);
        return;
    }
    pe->status = status;
    snprintf(pe->retry_after, sizeof pe->retry_after, "%s", retry_after ? retry_after : "");
    snprintf(pe->msg, sizeof pe->msg, "%s", msg);
    api_post_call(g->srv, g->id, post_err_call, pe, free);
}

static void sink_admitted(void *ud)
{
    struct gen *g = ud;
    g->admitted = true;
    if (!g->rq.stream) {
        if (g->echo_len)
            api_buf_append(&g->text, g->echo, g->echo_len);
        return;
    }
    api_post_start(g->srv, g->id);
    g->started = true;
    char *json = NULL;
    if (!oai_chunk_begin(&g->resp, &json))
        post_json(g, json);
    if (g->echo_len && !oai_chunk_text(&g->resp, g->echo, g->echo_len, NULL, 0, &json))
        post_json(g, json);
}

static void sink_text(void *ud, const char *text, size_t len, const struct sample_result *toks,
                      size_t n_toks)
{
    struct gen *g = ud;
    size_t n_lp = g->rq.logprobs ? n_toks : 0;
    if (!g->rq.stream) {
        if (len)
            api_buf_append(&g->text, text, len);
        if (n_lp && g->n_lp + n_lp > g->cap_lp) {
            size_t cap = g->cap_lp ? 2 * g->cap_lp : 16;
            while (cap < g->n_lp + n_lp)
                cap *= 2;
            struct oai_logprob *p = realloc(g->lps, cap * sizeof *p);
            if (!p)
                return; /* the body is built without these (oom) */
            g->lps = p;
            g->cap_lp = cap;
        }
        for (size_t i = 0; i < n_lp; i++)
            lp_fill(g->tok, &toks[i], &g->lps[g->n_lp++]);
        return;
    }
    if (n_lp > g->cap_tmp) {
        struct oai_logprob *p = realloc(g->lp_tmp, n_lp * sizeof *p);
        if (!p)
            n_lp = 0;
        else {
            g->lp_tmp = p;
            g->cap_tmp = n_lp;
        }
    }
    for (size_t i = 0; i < n_lp; i++)
        lp_fill(g->tok, &toks[i], &g->lp_tmp[i]);
    char *json = NULL;
    if (!oai_chunk_text(&g->resp, text, len, g->lp_tmp, n_lp, &json))
        post_json(g, json);
}

static void sink_finish(void *ud, enum engine_finish fin, const struct oai_usage *u,
                        const char *msg)
{
    struct gen *g = ud;
    if (fin == ENGINE_FIN_TIMEOUT && !g->admitted) {
        gen_post_error(g, 503, "1", "The request waited longer than request_timeout in the queue.");
        goto out;
    }
    switch (fin) {
    case ENGINE_FIN_CANCELLED: goto out; /* nobody to tell */
    case ENGINE_FIN_SHUTDOWN:
        gen_post_error(g, 503, "1", "The server is shutting down; the request was cancelled.");
        goto out;
    case ENGINE_FIN_ERROR: gen_post_error(g, 500, NULL, msg ? msg : "internal error"); goto out;
    default: break;
    }
    /* stop, length, or the deadline of a running request (reported as length) */
    enum oai_finish of = fin == ENGINE_FIN_STOP ? OAI_FINISH_STOP : OAI_FINISH_LENGTH;
    char *json = NULL;
    if (g->rq.stream) {
        if (!oai_chunk_finish(&g->resp, of, &json))
            post_json(g, json);
        json = NULL;
        if (!oai_chunk_usage(&g->resp, u, &json))
            post_json(g, json);
        api_post_end(g->srv, g->id, true);
    } else {
        if (g->text.oom ||
            oai_resp_body(&g->resp, g->text.data ? g->text.data : "", g->text.len, of, u, g->lps,
                          g->n_lp, &json) ||
            !json) {
            gen_post_error(g, 500, NULL, "out of memory building the response");
            goto out;
        }
        api_post_respond(g->srv, g->id, 200, "application/json", json, strlen(json));
        free(json);
    }
out:
    gen_free(g);
}

/* A long prefill: an SSE comment so that clients and proxies see the stream
 * is alive (only once the stream has started; the engine stops calling
 * this at the first token). */
static void sink_keepalive(void *ud)
{
    struct gen *g = ud;
    if (g->rq.stream && g->started)
        api_post_comment(g->srv, g->id, "keepalive");
}

static const struct engine_sink gen_sink = {sink_admitted, sink_text, sink_finish};

/* libuv's pool: chat template and tokenizer (both safe on several threads). */
static void gen_prepare(uv_work_t *w)
{
    struct gen *g = w->data;
    const struct tok *t = engine_tok(g->rt->eng);
    struct moed_err e = {0};
    int rc = 0;
    if (g->rq.kind == OAI_CHAT) {
        const struct chat_template *ct = engine_chat(g->rt->eng);
        struct chat_msg *msgs = calloc(g->rq.n_messages, sizeof *msgs);
        if (!msgs) {
            oai_error_set(&g->err, 500, NULL, NULL, "out of memory");
            g->failed = true;
            return;
        }
        for (size_t i = 0; i < g->rq.n_messages; i++) {
            const struct oai_message *m = &g->rq.messages[i];
            enum chat_role role = m->role == OAI_ROLE_SYSTEM      ? CHAT_ROLE_SYSTEM
                                  : m->role == OAI_ROLE_USER      ? CHAT_ROLE_USER
                                  : m->role == OAI_ROLE_ASSISTANT ? CHAT_ROLE_ASSISTANT
                                                                  : CHAT_ROLE_TOOL;
            msgs[i] = (struct chat_msg){.role = role, .content = m->content, .content_len = m->len};
        }
        struct chat_prompt p = {0};
        struct chat_opts co = CHAT_OPTS_DEFAULT;
        co.enable_thinking = g->rq.enable_thinking;
        rc = chat_render(ct, msgs, g->rq.n_messages, &co, &p, &e);
        free(msgs);
        if (rc) {
            if (rc == MOED_ENOMEM)
                oai_error_set(&g->err, 500, NULL, NULL, "out of memory rendering the chat");
            else
                oai_error_set(&g->err, 400, "messages", "invalid_value", "%s (chat template %s)",
                              e.msg, chat_template_name(ct));
            chat_prompt_free(&p);
            g->failed = true;
            return;
        }
        unsigned flags = TOK_ENC_SPECIAL;
        if (tok_wants_bos(t) && !chat_template_adds_bos(ct) && tok_bos(t) != TOK_NULL)
            flags |= TOK_ENC_BOS;
        rc = tok_encode(t, p.text, p.len, flags, &g->ids, &e);
        chat_prompt_free(&p);
    } else if (g->rq.prompt) {
        unsigned flags = tok_enc_defaults(t) | TOK_ENC_SPECIAL;
        rc = tok_encode(t, g->rq.prompt, g->rq.prompt_len, flags, &g->ids, &e);
        if (!rc && g->rq.echo && g->rq.prompt_len) {
            g->echo = malloc(g->rq.prompt_len);
            if (g->echo) {
                memcpy(g->echo, g->rq.prompt, g->rq.prompt_len);
                g->echo_len = g->rq.prompt_len;
            }
        }
    } else {
        g->ids.v = malloc(g->rq.n_prompt_ids * sizeof *g->ids.v);
        if (!g->ids.v) {
            rc = moed_err_set(&e, MOED_ENOMEM, "out of memory");
        } else {
            memcpy(g->ids.v, g->rq.prompt_ids, g->rq.n_prompt_ids * sizeof *g->ids.v);
            g->ids.n = g->ids.cap = g->rq.n_prompt_ids;
        }
        if (!rc && g->rq.echo) {
            struct tok_bytes b = {0};
            if (!tok_decode(t, g->ids.v, g->ids.n, 0, &b, NULL))
                g->echo = utf8_sanitize(b.p ? b.p : "", b.n, &g->echo_len);
            tok_bytes_free(&b);
        }
    }
    if (rc) {
        if (rc == MOED_ENOMEM)
            oai_error_set(&g->err, 500, NULL, NULL, "out of memory tokenizing the prompt");
        else
            oai_error_set(&g->err, 400, g->rq.kind == OAI_CHAT ? "messages" : "prompt",
                          "invalid_value", "The prompt cannot be tokenized: %s", e.msg);
        g->failed = true;
    }
}

static void on_cancel_engine(struct api_req *req, void *ud)
{
    struct routes *rt = ud;
    engine_cancel(rt->eng, api_req_id(req));
}

static void on_cancel_early(struct api_req *req, void *ud)
{
    struct gen *g = ud;
    (void)req;
    g->gone = true;
    g->req = NULL;
}

static void gen_prepared(uv_work_t *w, int status)
{
    struct gen *g = w->data;
    struct routes *rt = g->rt;
    rt->pending--;
    if (g->gone || status) {
        engine_unreserve(rt->eng);
        if (!g->gone && g->req)
            api_respond_error(g->req, 503, NULL, NULL, "The request was cancelled.");
        gen_free(g);
        return;
    }
    struct api_req *req = g->req;
    api_req_set_hooks(req, NULL);
    if (g->failed) {
        engine_unreserve(rt->eng);
        respond_oai_error(req, &g->err);
        gen_free(g);
        return;
    }
    struct engine_info info;
    engine_info(rt->eng, &info);
    int32_t max_new = 0;
    struct oai_error err;
    if (oai_check_context(&g->rq, (int64_t)g->ids.n, info.ctx_size, &max_new, &err)) {
        engine_unreserve(rt->eng);
        respond_oai_error(req, &err);
        gen_free(g);
        return;
    }
    int64_t dflt = atomic_load(&rt->default_max_tokens);
    if (g->rq.max_tokens == 0 && dflt > 0 && max_new > dflt)
        max_new = (int32_t)dflt;
    if (oai_resp_init(&g->resp, &g->rq, rt->model_id, NULL)) {
        engine_unreserve(rt->eng);
        api_respond_error(req, 500, NULL, NULL, "out of memory");
        gen_free(g);
        return;
    }
    g->resp_ok = true;
    g->tok = engine_tok(rt->eng);
    struct engine_req er = {
        .id = g->id,
        .prompt = g->ids.v,
        .n_prompt = (int32_t)g->ids.n,
        .max_new = max_new,
        .sample = g->rq.sample,
        .logprobs = g->rq.logprobs,
        .stop = (const char *const *)g->rq.stop,
        .stop_len = g->rq.stop_len,
        .n_stop = g->rq.n_stop,
        .t_arrival = g->t_arrival,
        .sink = &gen_sink,
        .ud = g,
        .keepalive = sink_keepalive,
    };
    /* The engine may call the sink (and free g) as soon as this returns 0:
     * set the hook first, and touch g only on failure. */
    api_req_set_hooks(req, &(struct api_req_hooks){.on_cancel = on_cancel_engine, .ud = rt});
    struct moed_err e = {0};
    int rc = engine_submit(rt->eng, &er, true, &e);
    if (!rc)
        return;
    api_req_set_hooks(req, NULL);
    if (rc == MOED_ERANGE)
        respond_retry(req, 429, "1", "rate_limit_exceeded", "Too many requests are queued.");
    else if (rc == MOED_EIO)
        respond_retry(req, 503, "5", NULL, "The server is not accepting requests.");
    else if (rc == MOED_ENOMEM)
        api_respond_error(req, 500, NULL, NULL, "%s", e.msg);
    else
        api_respond_error(req, 400, NULL, "invalid_value", "%s", e.msg);
    gen_free(g);
}

static void h_generate(struct api_req *req, struct routes *rt, enum oai_kind kind)
{
    double t_arrival = engine_now();
    if (not_ready(rt, req))
        return;
    const struct model *m = engine_model(rt->eng);
    const struct tok *t = engine_tok(rt->eng);
    struct gen *g = calloc(1, sizeof *g);
    if (!g) {
        api_respond_error(req, 500, NULL, NULL, "out of memory");
        return;
    }
    g->rt = rt;
    g->srv = rt->srv;
    g->req = req;
    g->id = api_req_id(req);
    g->t_arrival = t_arrival;
    api_buf_init(&g->text);

    struct sample_params dflt = sample_params_default();
    dflt.temperature = 1.0f; /* OpenAI's default */
    dflt.seed = random_seed();
    int32_t n_vocab =
        m->hp.n_vocab < (int32_t)tok_n_vocab(t) ? m->hp.n_vocab : (int32_t)tok_n_vocab(t);
    struct oai_parse_opts po = {
        .defaults = &dflt, .model = rt->model_id, .n_vocab = n_vocab, .allow_echo = true};
    size_t len;
    const char *body = api_req_body(req, &len);
    struct oai_error err;
    if (oai_request_parse(&g->rq, kind, body, len, &po, &err)) {
        respond_oai_error(req, &err);
        gen_free(g);
        return;
    }
    int rc = engine_reserve(rt->eng);
    if (rc) {
        if (rc == MOED_ERANGE)
            respond_retry(req, 429, "1", "rate_limit_exceeded",
                          "Too many requests are queued; retry shortly.");
        else
            respond_retry(req, 503, "5", NULL, "The server is not accepting requests.");
        gen_free(g);
        return;
    }
    api_req_set_hooks(req, &(struct api_req_hooks){.on_cancel = on_cancel_early, .ud = g});
    g->work.data = g;
    rc = uv_queue_work(rt->loop, &g->work, gen_prepare, gen_prepared);
    if (rc) {
        api_req_set_hooks(req, NULL);
        engine_unreserve(rt->eng);
        api_respond_error(req, 500, NULL, NULL, "cannot queue the request: %s", uv_strerror(rc));
        gen_free(g);
        return;
    }
    rt->pending++;
}

static void h_completions(struct api_req *req, void *ud)
{
    h_generate(req, ud, OAI_COMPLETION);
}

static void h_chat(struct api_req *req, void *ud)
{
    h_generate(req, ud, OAI_CHAT);
}

/* ---- /v1/models, /health ------------------------------------------------------- */

static void h_models(struct api_req *req, void *ud)
{
    struct routes *rt = ud;
    cJSON *root = cJSON_CreateObject(), *data = cJSON_CreateArray(), *m = cJSON_CreateObject();
    if (!root || !data || !m) {
        cJSON_Delete(root);
        cJSON_Delete(data);
        cJSON_Delete(m);
        api_respond_error(req, 500, NULL, NULL, "out of memory");
        return;
    }
    cJSON_AddStringToObject(root, "object", "list");
    cJSON_AddItemToObject(root, "data", data);
    cJSON_AddItemToArray(data, m);
    cJSON_AddStringToObject(m, "id", rt->model_id);
    cJSON_AddStringToObject(m, "object", "model");
    cJSON_AddNumberToObject(m, "created", (double)rt->created);
    cJSON_AddStringToObject(m, "owned_by", "moed");
    struct engine_info info;
    engine_info(rt->eng, &info);
    if (info.ctx_size)
        cJSON_AddNumberToObject(m, "max_model_len", info.ctx_size);
    api_respond_json(req, 200, root);
    cJSON_Delete(root);
}

static void h_health(struct api_req *req, void *ud)
{
    struct routes *rt = ud;
    enum engine_state st = engine_state(rt->eng);
    const char *body = st != ENGINE_READY ? "{\"status\":\"loading\"}"
                       : rt->draining     ? "{\"status\":\"stopping\"}"
                                          : "{\"status\":\"ok\"}";
    int status = st == ENGINE_READY && !rt->draining ? 200 : 503;
    if (status == 503)
        api_req_add_header(req, "Retry-After", "5");
    api_respond(req, status, "application/json", body, strlen(body));
}

/* ---- /tokenize, /detokenize (llama.cpp's server shapes) -------------------------- */

struct tokw {
    struct routes *rt;
    struct api_req *req;
    bool gone;
    uv_work_t work;
    char *content;
    size_t len;
    bool add_special, parse_special, with_pieces;
    struct tok_ids ids;
    int rc;
    struct moed_err e;
};

static void tokw_cancel(struct api_req *req, void *ud)
{
    struct tokw *w = ud;
    (void)req;
    w->gone = true;
    w->req = NULL;
}

static void tokw_run(uv_work_t *uw)
{
    struct tokw *w = uw->data;
    const struct tok *t = engine_tok(w->rt->eng);
    unsigned flags =
        (w->add_special ? tok_enc_defaults(t) : 0) | (w->parse_special ? TOK_ENC_SPECIAL : 0);
    w->rc = tok_encode(t, w->content, w->len, flags, &w->ids, &w->e);
}

static cJSON *piece_json(const struct tok *t, int32_t id)
{
    size_t len = 0;
    const char *p = tok_piece(t, id, &len);
    if (!p)
        return cJSON_CreateString("");
    if (utf8_valid(p, len, NULL)) {
        char *s = malloc(len + 1);
        if (!s)
            return NULL;
        memcpy(s, p, len);
        s[len] = '\0';
        cJSON *j = cJSON_CreateString(s);
        free(s);
        return j;
    }
    cJSON *a = cJSON_CreateArray();
    for (size_t i = 0; a && i < len; i++)
        cJSON_AddItemToArray(a, cJSON_CreateNumber((unsigned char)p[i]));
    return a;
}

static void tokw_done(uv_work_t *uw, int status)
{
    struct tokw *w = uw->data;
    w->rt->pending--;
    if (!w->gone && w->req) {
        struct api_req *req = w->req;
        api_req_set_hooks(req, NULL);
        if (status || w->rc) {
            int st = status || w->rc == MOED_ENOMEM ? 500 : 400;
            api_respond_error(req, st, "content", NULL, "cannot tokenize: %s",
                              status ? uv_strerror(status) : w->e.msg);
        } else {
            const struct tok *t = engine_tok(w->rt->eng);
            cJSON *root = cJSON_CreateObject(), *arr = cJSON_CreateArray();
            if (root && arr) {
                cJSON_AddItemToObject(root, "tokens", arr);
                for (size_t i = 0; i < w->ids.n; i++) {
                    if (!w->with_pieces) {
                        cJSON_AddItemToArray(arr, cJSON_CreateNumber(w->ids.v[i]));
                        continue;
                    }
                    cJSON *o = cJSON_CreateObject();
                    if (!o)
                        break;
                    cJSON_AddNumberToObject(o, "id", w->ids.v[i]);
                    cJSON_AddItemToObject(o, "piece", piece_json(t, w->ids.v[i]));
                    cJSON_AddItemToArray(arr, o);
                }
                api_respond_json(req, 200, root);
            } else {
                cJSON_Delete(arr);
                api_respond_error(req, 500, NULL, NULL, "out of memory");
            }
            cJSON_Delete(root);
        }
    }
    free(w->content);
    tok_ids_free(&w->ids);
    free(w);
}

/* Parse a JSON object body; 400 and NULL on failure. */
static cJSON *body_object(struct api_req *req)
{
    size_t len;
    const char *body = api_req_body(req, &len);
    if (!len) {
        api_respond_error(req, 400, NULL, NULL,
                          "The request body is empty; expected a JSON object.");
        return NULL;
    }
    cJSON *root = cJSON_ParseWithLength(body, len);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        api_respond_error(req, 400, NULL, NULL,
                          "We could not parse the JSON body of your request: expected a JSON "
                          "object.");
        return NULL;
    }
    return root;
}

/* Optional boolean field: true when absent-or-boolean (400 sent otherwise). */
static bool opt_bool(struct api_req *req, const cJSON *root, const char *name, bool dflt, bool *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, name);
    *out = dflt;
    if (!v || cJSON_IsNull(v))
        return true;
    if (!cJSON_IsBool(v)) {
        api_respond_error(req, 400, name, "invalid_type",
                          "Invalid type for '%s': expected a boolean.", name);
        return false;
    }
    *out = cJSON_IsTrue(v);
    return true;
}

static void h_tokenize(struct api_req *req, void *ud)
{
    struct routes *rt = ud;
    if (not_ready(rt, req))
        return;
    cJSON *root = body_object(req);
    if (!root)
        return;
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(root, "content");
    struct tokw *w = NULL;
    if (!cJSON_IsString(c)) {
        api_respond_error(req, 400, "content", c ? "invalid_type" : "missing_required_parameter",
                          c ? "Invalid type for 'content': expected a string."
                            : "Missing required parameter: 'content'.");
        goto out;
    }
    w = calloc(1, sizeof *w);
    if (!w) {
        api_respond_error(req, 500, NULL, NULL, "out of memory");
        goto out;
    }
    if (!opt_bool(req, root, "add_special", false, &w->add_special) ||
        !opt_bool(req, root, "parse_special", true, &w->parse_special) ||
        !opt_bool(req, root, "with_pieces", false, &w->with_pieces))
        goto out;
    w->len = strlen(c->valuestring);
    if (!utf8_valid(c->valuestring, w->len, NULL)) {
        api_respond_error(req, 400, "content", "invalid_value", "'content' is not valid UTF-8.");
        goto out;
    }
    w->content = malloc(w->len + 1);
    if (!w->content) {
        api_respond_error(req, 500, NULL, NULL, "out of memory");
        goto out;
    }
    memcpy(w->content, c->valuestring, w->len + 1);
    w->rt = rt;
    w->req = req;
    w->work.data = w;
    if (uv_queue_work(rt->loop, &w->work, tokw_run, tokw_done)) {
        api_respond_error(req, 500, NULL, NULL, "cannot queue the request");
        goto out;
    }
    rt->pending++;
    api_req_set_hooks(req, &(struct api_req_hooks){.on_cancel = tokw_cancel, .ud = w});
    w = NULL;
out:
    if (w) {
        free(w->content);
        free(w);
    }
    cJSON_Delete(root);
}

static void h_detokenize(struct api_req *req, void *ud)
{
    struct routes *rt = ud;
    if (not_ready(rt, req))
        return;
    cJSON *root = body_object(req);
    if (!root)
        return;
    const struct tok *t = engine_tok(rt->eng);
    int32_t n_vocab = (int32_t)tok_n_vocab(t);
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(root, "tokens");
    int32_t *ids = NULL;
    struct tok_bytes b = {0};
    char *text = NULL;
    if (!cJSON_IsArray(a)) {
        api_respond_error(req, 400, "tokens", a ? "invalid_type" : "missing_required_parameter",
                          a ? "Invalid type for 'tokens': expected an array of token ids."
                            : "Missing required parameter: 'tokens'.");
        goto out;
    }
    int n = cJSON_GetArraySize(a);
    ids = malloc((size_t)(n > 0 ? n : 1) * sizeof *ids);
    if (!ids) {
        api_respond_error(req, 500, NULL, NULL, "out of memory");
        goto out;
    }
    int i = 0;
    for (const cJSON *v = a->child; v; v = v->next, i++) {
        double d = cJSON_IsNumber(v) ? v->valuedouble : -1;
        if (!cJSON_IsNumber(v) || !(d >= 0 && d < n_vocab) || d != (double)(int64_t)d) {
            api_respond_error(req, 400, "tokens", "invalid_value",
                              "Invalid 'tokens[%d]': expected a token id in 0..%d.", i,
                              n_vocab - 1);
            goto out;
        }
        ids[i] = (int32_t)d;
    }
    struct moed_err e = {0};
    if (tok_decode(t, ids, (size_t)n, TOK_DEC_SPECIAL, &b, &e)) {
        api_respond_error(req, 400, "tokens", "invalid_value", "%s", e.msg);
        goto out;
    }
    size_t tlen = 0;
    text = utf8_sanitize(b.p ? b.p : "", b.n, &tlen);
    cJSON *o = text ? cJSON_CreateObject() : NULL;
    if (!o || !cJSON_AddStringToObject(o, "content", text)) {
        cJSON_Delete(o);
        api_respond_error(req, 500, NULL, NULL, "out of memory");
        goto out;
    }
    api_respond_json(req, 200, o);
    cJSON_Delete(o);
out:
    free(text);
    tok_bytes_free(&b);
    free(ids);
    cJSON_Delete(root);
}

/* ---- /metrics -------------------------------------------------------------------- */

static void metric(struct api_buf *b, const char *name, const char *type, const char *help)
{
    api_buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void h_metrics(struct api_req *req, void *ud)
{
    struct routes *rt = ud;
    if (!rt->metrics) {
        api_respond_error(req, 404, NULL, NULL, "Metrics are turned off (metrics = false).");
        return;
    }
    struct engine_stats *st = malloc(sizeof *st);
    if (!st) {
        api_respond_error(req, 500, NULL, NULL, "out of memory");
        return;
    }
    engine_stats_get(rt->eng, st);
    struct api_buf b;
    api_buf_init(&b);
    api_metrics_render(rt->srv, &b);

    metric(&b, "moed_model_loaded", "gauge", "1 once the model is loaded and requests are served.");
    api_buf_printf(&b, "moed_model_loaded %d\n", st->state == ENGINE_READY ? 1 : 0);
    metric(&b, "moed_prompt_tokens_total", "counter", "Prompt tokens prefilled.");
    api_buf_printf(&b, "moed_prompt_tokens_total %" PRIu64 "\n", st->prompt_tokens);
    metric(&b, "moed_generation_tokens_total", "counter", "Tokens sampled.");
    api_buf_printf(&b, "moed_generation_tokens_total %" PRIu64 "\n", st->generation_tokens);
    metric(&b, "moed_requests_running", "gauge", "Sequences in the batch.");
    api_buf_printf(&b, "moed_requests_running %d\n", st->running);
    metric(&b, "moed_requests_prefilling", "gauge",
           "Sequences in the batch still in their prompt.");
    api_buf_printf(&b, "moed_requests_prefilling %d\n", st->prefilling);
    metric(&b, "moed_requests_queued", "gauge", "Requests waiting for a place in the batch.");
    api_buf_printf(&b, "moed_requests_queued %d\n", st->queued);
    metric(&b, "moed_requests_preparing", "gauge",
           "Requests holding a queue place while their prompt is tokenized.");
    api_buf_printf(&b, "moed_requests_preparing %d\n", st->reserved);
    metric(&b, "moed_requests_max_running", "gauge", "max_seqs.");
    api_buf_printf(&b, "moed_requests_max_running %d\n", st->max_seqs);
    metric(&b, "moed_requests_max_queued", "gauge", "max_queued.");
    api_buf_printf(&b, "moed_requests_max_queued %d\n", st->max_queued);
    metric(&b, "moed_requests_admitted_total", "counter", "Requests that got a sequence.");
    api_buf_printf(&b, "moed_requests_admitted_total %" PRIu64 "\n", st->requests_admitted);
    metric(&b, "moed_requests_finished_total", "counter", "Requests ended, by reason.");
    for (int f = 0; f < ENGINE_FIN_COUNT; f++)
        api_buf_printf(&b, "moed_requests_finished_total{reason=\"%s\"} %" PRIu64 "\n",
                       engine_finish_name((enum engine_finish)f), st->finished[f]);
    metric(&b, "moed_kv_cache_positions", "gauge",
           "KV cache positions: total in the pool, reserved by running sequences, filled.");
    api_buf_printf(&b, "moed_kv_cache_positions{state=\"total\"} %" PRId64 "\n",
                   st->kv_positions_total);
    api_buf_printf(&b, "moed_kv_cache_positions{state=\"reserved\"} %" PRId64 "\n",
                   st->kv_positions_reserved);
    api_buf_printf(&b, "moed_kv_cache_positions{state=\"used\"} %" PRId64 "\n",
                   st->kv_positions_used);
    metric(&b, "moed_kv_cache_usage_ratio", "gauge",
           "Share of the KV pool reserved by running sequences (0..1).");
    api_buf_printf(&b, "moed_kv_cache_usage_ratio %.6f\n",
                   st->kv_positions_total
                       ? (double)st->kv_positions_reserved / (double)st->kv_positions_total
                       : 0.0);
    metric(&b, "moed_kv_cache_bytes_per_position", "gauge", "KV cache bytes of one position.");
    api_buf_printf(&b, "moed_kv_cache_bytes_per_position %" PRIu64 "\n", st->kv_bytes_per_position);
    metric(&b, "moed_engine_steps_total", "counter", "Forward steps run.");
    api_buf_printf(&b, "moed_engine_steps_total %" PRIu64 "\n", st->steps);
    metric(&b, "moed_engine_step_tokens_total", "counter", "Tokens in all forward steps.");
    api_buf_printf(&b, "moed_engine_step_tokens_total %" PRIu64 "\n", st->step_tokens);

    static const struct {
        int h;
        const char *name, *help;
    } hists[] = {
        {ENGINE_HIST_TTFT, "moed_time_to_first_token_seconds",
         "From a request's arrival to its first sampled token."},
        {ENGINE_HIST_ITL, "moed_inter_token_latency_seconds",
         "Between two sampled tokens of a sequence."},
        {ENGINE_HIST_QUEUE, "moed_request_queue_seconds",
         "From a request's arrival to its admission into the batch."},
        {ENGINE_HIST_E2E, "moed_request_seconds", "From a request's arrival to its end."},
        {ENGINE_HIST_PROMPT, "moed_request_prompt_tokens", "Prompt tokens per request."},
        {ENGINE_HIST_GEN, "moed_request_generation_tokens", "Sampled tokens per request."},
        {ENGINE_HIST_STEP, "moed_engine_step_tokens", "Tokens per forward step."},
    };
    for (size_t i = 0; i < sizeof hists / sizeof hists[0]; i++) {
        metric(&b, hists[i].name, "histogram", hists[i].help);
        api_hist_render(&b, hists[i].name, NULL, &st->hist[hists[i].h]);
    }
    metric(&b, "moed_forward_phase_seconds_total", "counter",
           "Wall-clock seconds of the forward steps, by phase.");
    for (int ph = 0; ph < FWD_PH_COUNT; ph++)
        api_buf_printf(&b, "moed_forward_phase_seconds_total{phase=\"%s\"} %.6f\n",
                       fwd_phase_name((enum fwd_phase)ph), st->fwd.seconds[ph]);
    if (rt->metrics_extra)
        rt->metrics_extra(rt->ud, &b);
    free(st);
    if (b.oom)
        api_respond_error(req, 500, NULL, NULL, "out of memory");
    else
        api_respond(req, 200, "text/plain; version=0.0.4; charset=utf-8", b.data, b.len);
    api_buf_free(&b);
}

/* ---- set-up ---------------------------------------------------------------------- */

int routes_init(struct routes **out, uv_loop_t *loop, struct api_server *srv,
                const struct routes_opts *o, struct moed_err *e)
{
    *out = NULL;
    struct routes *rt = calloc(1, sizeof *rt);
    if (!rt || !(rt->model_id = strdup(o->model_id ? o->model_id : "moed"))) {
        free(rt);
        return moed_err_set(e, MOED_ENOMEM, "routes: out of memory");
    }
    rt->loop = loop;
    rt->srv = srv;
    rt->eng = o->engine;
    rt->created = o->created ? o->created : (int64_t)time(NULL);
    atomic_init(&rt->default_max_tokens, o->default_max_tokens);
    rt->metrics = o->metrics;
    rt->metrics_extra = o->metrics_extra;
    rt->ud = o->ud;
    static const struct {
        const char *method, *path;
        unsigned flags;
        api_handler_fn fn;
    } table[] = {
        {"POST", "/v1/completions", API_ROUTE_AUTH, h_completions},
        {"POST", "/v1/chat/completions", API_ROUTE_AUTH, h_chat},
        {"GET", "/v1/models", API_ROUTE_AUTH, h_models},
        {"POST", "/tokenize", API_ROUTE_AUTH, h_tokenize},
        {"POST", "/detokenize", API_ROUTE_AUTH, h_detokenize},
        {"GET", "/health", 0, h_health},
        {"GET", "/metrics", 0, h_metrics},
    };
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
        int rc = api_server_route(srv, table[i].method, table[i].path, table[i].flags, table[i].fn,
                                  rt, e);
        if (rc) {
            routes_free(rt);
            return rc;
        }
    }
    *out = rt;
    return 0;
}

void routes_free(struct routes *rt)
{
    if (!rt)
        return;
    free(rt->model_id);
    free(rt);
}

void routes_set_default_max_tokens(struct routes *rt, int64_t n)
{
    atomic_store(&rt->default_max_tokens, n);
}

void routes_set_metrics(struct routes *rt, bool on)
{
    rt->metrics = on;
}

void routes_set_draining(struct routes *rt, bool on)
{
    rt->draining = on;
}

unsigned routes_pending(const struct routes *rt)
{
    return rt->pending;
}
