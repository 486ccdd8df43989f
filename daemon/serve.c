/*
 * moed serve: the daemon's process life.
 *
 * Start:  the configuration (file < MOED_* < flags; every problem on its own
 *         line, exit 1), the log, the API key, then the HTTP server listens
 *         at once so that GET /health answers 503 {"status": "loading"}
 *         while the engine thread loads the model.  When the engine says
 *         READY: a summary in the log, sd_notify READY=1 and /health 200.
 *         A model that fails to load: one line saying why, exit 1.
 * Run:    everything below runs on the libuv loop thread; the engine thread
 *         (daemon/engine.c) reports back only through a uv_async.
 *         SIGHUP: reopen the log, load the configuration again and apply
 *         the options that can change without a restart (logging what
 *         changed and what was refused); new HTTP limits apply to new
 *         connections and requests (api_server_set_limits).  A timer sends WATCHDOG=1 while the
 *         loop turns and no engine step has hung, and keeps STATUS= fresh.
 * Stop:   SIGTERM or SIGINT: STOPPING=1, stop accepting (api_server_drain),
 *         let queued and running requests finish for drain_timeout, then
 *         cancel the rest, close the server, join the engine, exit 0.  A
 *         second signal cancels at once.
 */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <uv.h>

#include "api/http.h"
#include "api/routes.h"
#include "conf/conf.h"
#include "daemon/cmds.h"
#include "daemon/engine.h"
#include "daemon/log.h"
#include "daemon/notify.h"
#include "kernels/cpu/isa.h"
#include "model/chat.h"
#include "model/model.h"
#include "model/tok.h"

struct serve {
    uv_loop_t loop;
    int argc;
    char **argv;
    struct moed_config cfg;
    bool cfg_ok;
    char model_id[256];
    struct api_server *srv;
    struct engine *eng;
    struct routes *rt;

    uv_async_t eng_async; /* the engine's state changed */
    uv_signal_t sig_term, sig_int, sig_hup;
    uv_timer_t tick;  /* watchdog, STATUS=, EXTEND_TIMEOUT_USEC */
    uv_timer_t drain; /* polls while stopping */
    bool handles_open;
    uint64_t wd_usec;
    double t_start, t_last_wd, t_last_status;
    bool ready_seen, failed, wd_warned;

    bool stopping, cancelled, server_stopped;
    double drain_deadline, cancel_deadline;
    int exit_code;
    uint64_t reloads;
};

static void api_logger(void *ud, int level, const char *msg)
{
    (void)ud;
    log_msg(level, "%s", msg);
}

static void engine_logger(void *ud, int level, const char *msg)
{
    (void)ud;
    log_msg(level, "engine: %s", msg);
}

static void engine_state_cb(void *ud, enum engine_state st)
{
    struct serve *sv = ud;
    (void)st;
    uv_async_send(&sv->eng_async);
}

/* ---- API key ------------------------------------------------------------------ */

/* The first line of path, without surrounding whitespace, into *key (malloc'd). */
static int read_api_key(const char *path, char **key, struct moed_err *e)
{
    *key = NULL;
    FILE *f = fopen(path, "r");
    if (!f)
        return moed_err_set(e, MOED_EIO, "api_key_file %s: %s", path, strerror(errno));
    char buf[4096];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    int err = ferror(f);
    fclose(f);
    if (err)
        return moed_err_set(e, MOED_EIO, "api_key_file %s: cannot read it", path);
    buf[n] = '\0';
    char *p = buf;
    while (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n')
        p++;
    size_t len = strcspn(p, "\r\n");
    while (len && (p[len - 1] == ' ' || p[len - 1] == '\t'))
        len--;
    if (len == 0) {
        memset(buf, 0, sizeof buf);
        return moed_err_set(e, MOED_EINVAL, "api_key_file %s: the file holds no key (empty)", path);
    }
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)p[i] < 0x21 || (unsigned char)p[i] > 0x7e) {
            memset(buf, 0, sizeof buf);
            return moed_err_set(e, MOED_EINVAL,
                                "api_key_file %s: the key holds a blank or non-ASCII byte at "
                                "%zu (only printable ASCII can be sent in a header)",
                                path, i);
        }
    *key = malloc(len + 1);
    if (*key) {
        memcpy(*key, p, len);
        (*key)[len] = '\0';
    }
    memset(buf, 0, sizeof buf);
    return *key ? 0 : moed_err_set(e, MOED_ENOMEM, "out of memory");
}

static int apply_api_key(struct serve *sv, const char *path, struct moed_err *e)
{
    if (!path || !*path)
        return api_server_set_api_key(sv->srv, NULL, e);
    char *key;
    int rc = read_api_key(path, &key, e);
    if (rc)
        return rc;
    rc = api_server_set_api_key(sv->srv, key, e);
    memset(key, 0, strlen(key));
    free(key);
    return rc;
}

/* ---- start-up summary ---------------------------------------------------------- */

static uint64_t model_params(const struct model *m)
{
    uint64_t n = 0;
    for (uint64_t i = 0; i < m->gguf->n_tensors; i++) {
        const struct gguf_tensor *t = &m->gguf->tensors[i];
        uint64_t k = 1;
        for (uint32_t d = 0; d < t->n_dims; d++)
            k *= (uint64_t)t->ne[d];
        n += k;
    }
    return n;
}

static void log_summary(struct serve *sv)
{
    const struct model *m = engine_model(sv->eng);
    const struct model_hparams *hp = &m->hp;
    const struct tok *t = engine_tok(sv->eng);
    const struct chat_template *ct = engine_chat(sv->eng);
    struct engine_info info;
    engine_info(sv->eng, &info);
    uint64_t params = model_params(m);
    log_info("model %s (id \"%s\"): %s, %d layers, d %d, %d/%d heads x %d, %d experts top %d "
             "(ff %d%s), %.3g B params, %.2f GiB, vocab %d (tokenizer %u), trained ctx %d; "
             "loaded in %.2f s",
             sv->cfg.model, sv->model_id, model_arch_name(hp->arch), hp->n_layer, hp->n_embd,
             hp->n_head, hp->n_head_kv, hp->head_dim, hp->n_expert, hp->n_expert_used, hp->n_ff_exp,
             hp->n_ff_shexp ? ", shared expert" : "", (double)params / 1e9,
             (double)model_weight_bytes(m) / (1 << 30), hp->n_vocab, tok_n_vocab(t),
             hp->n_ctx_train, info.load_seconds);
    double kv_gib =
        (double)info.kv_total_positions * (double)info.kv_bytes_per_position / (1 << 30);
    char backend[400];
    if (info.gpu && info.hybrid)
        snprintf(backend, sizeof backend,
                 "GPU %d (%s), hybrid: %d expert slots (%.2f GiB, %.1f%% of the experts), the "
                 "other experts on the CPU",
                 info.gpu_device, info.gpu_name, info.hybrid_slots,
                 (double)info.hybrid_slot_bytes / (1 << 30),
                 info.n_experts ? 100.0 * info.hybrid_slots / (double)info.n_experts : 0.0);
    else if (info.gpu)
        snprintf(backend, sizeof backend, "GPU %d (%s), everything on the device", info.gpu_device,
                 info.gpu_name);
    else if (info.gpu_fallback[0])
        snprintf(backend, sizeof backend, "CPU (gpu_device %" PRId64 " unusable, see above)",
                 sv->cfg.gpu_device);
    else
        snprintf(backend, sizeof backend, "CPU (gpu_device -1)");
    log_info("engine: backend %s; %d CPU thread%s (%s), ctx_size %d, max_seqs %d, prefill_chunk "
             "%d, max %d tokens per step, KV pool %" PRId64 " positions (%.2f GiB %s in %s "
             "memory, %.1f KiB each), max_queued %" PRId64,
             backend, info.threads, info.threads == 1 ? "" : "s", kern_isa_describe(),
             info.ctx_size, info.max_seqs, info.prefill_chunk, info.max_batch,
             info.kv_total_positions, kv_gib, info.kv_f16 ? "F16" : "F32",
             info.gpu ? "GPU" : "host", (double)info.kv_bytes_per_position / 1024,
             sv->cfg.max_queued);
    log_info("chat template: %s%s", chat_template_name(ct),
             sv->cfg.chat_template[0] ? " (chat_template option)" : "");
    if (*chat_template_warning(ct))
        log_warn("chat template: %s", chat_template_warning(ct));
}

/* ---- stopping -------------------------------------------------------------------- */

static void close_cb(uv_handle_t *h)
{
    (void)h;
}

static void close_handles(struct serve *sv)
{
    if (!sv->handles_open)
        return;
    sv->handles_open = false;
    uv_close((uv_handle_t *)&sv->eng_async, close_cb);
    uv_close((uv_handle_t *)&sv->sig_term, close_cb);
    uv_close((uv_handle_t *)&sv->sig_int, close_cb);
    uv_close((uv_handle_t *)&sv->sig_hup, close_cb);
    uv_close((uv_handle_t *)&sv->tick, close_cb);
    uv_close((uv_handle_t *)&sv->drain, close_cb);
}

static void server_stopped(struct api_server *s, void *ud)
{
    struct serve *sv = ud;
    (void)s;
    sv->server_stopped = true;
    close_handles(sv);
}

static void stop_now(struct serve *sv)
{
    uv_timer_stop(&sv->drain);
    api_server_stop(sv->srv, server_stopped, sv);
}

static void cancel_all(struct serve *sv, const char *why)
{
    struct engine_stats st;
    engine_stats_get(sv->eng, &st);
    log_warn("%s: cancelling %d running and %d queued request%s", why, st.running, st.queued,
             st.running + st.queued == 1 ? "" : "s");
    engine_cancel_all(sv->eng);
    sv->cancelled = true;
    sv->cancel_deadline = engine_now() + 5.0;
}

static void drain_poll(uv_timer_t *t)
{
    struct serve *sv = t->data;
    double now = engine_now();
    bool idle = engine_idle(sv->eng) && routes_pending(sv->rt) == 0;
    if (idle && api_server_busy(sv->srv) == 0) {
        log_info("stopped: every request has ended");
        stop_now(sv);
        return;
    }
    if (!sv->cancelled && now >= sv->drain_deadline) {
        cancel_all(sv, "drain_timeout passed");
        return;
    }
    if (sv->cancelled && now >= sv->cancel_deadline) {
        log_warn("requests still open %.0f s after cancelling; closing their connections",
                 now - sv->cancel_deadline + 5.0);
        stop_now(sv);
    }
}

static void begin_stop(struct serve *sv, const char *why)
{
    if (sv->stopping) {
        if (!sv->cancelled && engine_state(sv->eng) == ENGINE_READY) {
            char msg[64];
            snprintf(msg, sizeof msg, "%s again", why);
            cancel_all(sv, msg);
        }
        return;
    }
    sv->stopping = true;
    notify_send(NULL, "STOPPING=1\nSTATUS=stopping (%s)", why);
    routes_set_draining(sv->rt, true);
    api_server_drain(sv->srv);
    engine_drain(sv->eng);
    if (sv->failed || engine_state(sv->eng) != ENGINE_READY) {
        stop_now(sv);
        return;
    }
    struct engine_stats st;
    engine_stats_get(sv->eng, &st);
    double drain_s = (double)sv->cfg.drain_timeout / 1000.0;
    log_info("%s: stopping; no new connections; %d running and %d queued request%s may finish "
             "within drain_timeout %.1f s",
             why, st.running, st.queued + st.reserved,
             st.running + st.queued + st.reserved == 1 ? "" : "s", drain_s);
    /* systemd's TimeoutStopSec should exceed drain_timeout; ask for it anyway */
    notify_send(NULL, "EXTEND_TIMEOUT_USEC=%" PRIu64, (uint64_t)((drain_s + 15.0) * 1e6));
    sv->drain_deadline = engine_now() + drain_s;
    uv_timer_start(&sv->drain, drain_poll, 0, 50);
}

static void on_signal(uv_signal_t *h, int signum)
{
    struct serve *sv = h->data;
    begin_stop(sv, signum == SIGTERM ? "SIGTERM" : "SIGINT");
}

/* ---- SIGHUP ------------------------------------------------------------------------ */

/* The transport's limits from the configuration (the rest stay at their defaults). */
static void limits_from_conf(const struct moed_config *c, struct api_limits *lim)
{
    api_limits_default(lim);
    lim->max_connections = (unsigned)c->max_connections;
    lim->max_body_bytes = (size_t)c->max_body_size;
    lim->max_header_bytes = (size_t)c->max_header_size;
    lim->header_timeout_ms = (unsigned)c->header_timeout;
    lim->idle_timeout_ms = (unsigned)c->idle_timeout;
}

/* Give the HTTP server the reloaded limits; on failure keep the running ones
 * (and say so in nw, which becomes the running configuration). */
static void apply_http_limits(struct serve *sv, struct moed_config *nw)
{
    struct api_limits lim;
    limits_from_conf(nw, &lim);
    struct moed_err e = {0};
    if (api_server_set_limits(sv->srv, &lim, &e)) {
        log_err("SIGHUP: %s; keeping the HTTP limits in use", e.msg);
        nw->max_connections = sv->cfg.max_connections;
        nw->max_body_size = sv->cfg.max_body_size;
        nw->max_header_size = sv->cfg.max_header_size;
        nw->header_timeout = sv->cfg.header_timeout;
        nw->idle_timeout = sv->cfg.idle_timeout;
    }
}

static void log_diag(const struct conf_diag *d)
{
    for (size_t i = 0; i < d->n; i++)
        log_msg(d->msgs[i].error ? LOG_ERR : LOG_WARN, "reload: %s", d->msgs[i].text);
}

static void on_hup(uv_signal_t *h, int signum)
{
    struct serve *sv = h->data;
    (void)signum;
    sv->reloads++;
    struct moed_err e = {0};
    struct moed_config nw;
    struct conf_diag d = {0};
    int rc = conf_load(&nw, sv->argc, sv->argv, NULL, NULL, &d);
    if (!rc)
        rc = conf_check_files(&nw, &d);
    if (rc || d.errors) {
        log_diag(&d);
        log_err("SIGHUP: the new configuration has %d error%s; keeping the running one", d.errors,
                d.errors == 1 ? "" : "s");
        conf_free(&nw);
        conf_diag_free(&d);
        if (log_reopen(sv->cfg.log_file, &e))
            log_err("SIGHUP: %s", e.msg);
        return;
    }
    struct conf_change ch[CONF_N_OPTIONS];
    size_t n_ch = 0;
    conf_reload(&sv->cfg, &nw, ch, &n_ch, &d);

    /* the log first, so the lines below go where the new config says */
    if (log_reopen(nw.log_file, &e)) {
        log_err("SIGHUP: %s; keeping the old log destination", e.msg);
        free(nw.log_file);
        nw.log_file = strdup(sv->cfg.log_file);
        if (!nw.log_file)
            nw.log_file = calloc(1, 1);
    }
    log_set_level(nw.log_level);
    log_info("SIGHUP: log reopened, configuration reloaded");
    log_diag(&d);
    size_t applied = 0;
    for (size_t i = 0; i < n_ch; i++) {
        if (!ch[i].applied)
            continue;
        applied++;
        char a[128], b[128];
        conf_format_value(&sv->cfg, ch[i].opt, a, sizeof a);
        conf_format_value(&nw, ch[i].opt, b, sizeof b);
        log_info("reload: %s = %s -> %s", conf_options[ch[i].opt].name, a, b);
    }
    /* the key file is read again even when its name did not change (rotation) */
    if (apply_api_key(sv, nw.api_key_file, &e)) {
        log_err("SIGHUP: %s; keeping the previous API key", e.msg);
        free(nw.api_key_file);
        nw.api_key_file = strdup(sv->cfg.api_key_file);
        if (!nw.api_key_file)
            nw.api_key_file = calloc(1, 1);
    }
    /* open connections keep going; new connections and requests get these */
    apply_http_limits(sv, &nw);
    routes_set_metrics(sv->rt, nw.metrics);
    routes_set_default_max_tokens(sv->rt, nw.default_max_tokens);
    engine_set_limits(sv->eng, (int32_t)nw.max_queued, nw.request_timeout);
    engine_set_keepalive(sv->eng, nw.sse_keepalive);
    conf_free(&sv->cfg);
    sv->cfg = nw;
    log_info("SIGHUP: %zu option%s changed, %zu applied", n_ch, n_ch == 1 ? "" : "s", applied);
    conf_diag_free(&d);
}

/* ---- engine state, ticks ------------------------------------------------------------ */

static void on_engine(uv_async_t *a)
{
    struct serve *sv = a->data;
    enum engine_state st = engine_state(sv->eng);
    if (st == ENGINE_READY && !sv->ready_seen) {
        sv->ready_seen = true;
        log_summary(sv);
        log_info("ready: serving on http://%s:%d (%.2f s after start)", sv->cfg.host,
                 api_server_port(sv->srv), engine_now() - sv->t_start);
        notify_send(NULL, "READY=1\nSTATUS=serving %s on %s port %d", sv->model_id, sv->cfg.host,
                    api_server_port(sv->srv));
    } else if (st == ENGINE_FAILED && !sv->failed) {
        sv->failed = true;
        sv->exit_code = 1;
        log_err("cannot load the model: %s", engine_error(sv->eng));
        if (sv->cfg.log_file[0])
            fprintf(stderr, "moed serve: cannot load the model: %s\n", engine_error(sv->eng));
        notify_send(NULL, "STATUS=failed to load the model\nERRNO=22");
        begin_stop(sv, "load failure");
    }
}

static void on_tick(uv_timer_t *t)
{
    struct serve *sv = t->data;
    double now = engine_now();
    enum engine_state st = engine_state(sv->eng);
    if (sv->wd_usec && now - sv->t_last_wd >= (double)sv->wd_usec / 2e6 - 0.05) {
        /* a step running longer than the watchdog period means a hung engine:
         * stop petting the dog and let systemd restart us */
        double busy = engine_busy_seconds(sv->eng);
        if (busy < (double)sv->wd_usec / 1e6) {
            notify_send(NULL, "WATCHDOG=1");
            sv->t_last_wd = now;
            sv->wd_warned = false;
        } else if (!sv->wd_warned) {
            sv->wd_warned = true;
            log_err("the engine has been in one step for %.1f s: not sending WATCHDOG=1", busy);
        }
    }
    if (now - sv->t_last_status < 5.0)
        return;
    sv->t_last_status = now;
    if (st == ENGINE_LOADING) {
        notify_send(NULL, "EXTEND_TIMEOUT_USEC=30000000\nSTATUS=loading %s (%.0f s)", sv->cfg.model,
                    now - sv->t_start);
    } else if (st == ENGINE_READY && !sv->stopping) {
        struct engine_stats es;
        engine_stats_get(sv->eng, &es);
        notify_send(NULL, "STATUS=serving %s: %d running, %d queued, %" PRIu64 " tokens generated",
                    sv->model_id, es.running, es.queued, es.generation_tokens);
    }
}

/* A Prometheus label value: backslash, quote and newline escaped. */
static void label_value(char *out, size_t n, const char *s)
{
    size_t k = 0;
    for (; *s && k + 3 < n; s++) {
        if (*s == '\\' || *s == '"') {
            out[k++] = '\\';
            out[k++] = *s;
        } else if (*s == '\n') {
            out[k++] = '\\';
            out[k++] = 'n';
        } else {
            out[k++] = *s;
        }
    }
    out[k] = 0;
}

/* One counter per layer of the hybrid executor's per-layer statistics. */
static void metric_layers(struct api_buf *b, const char *name, const char *help,
                          const struct hybrid_layer_stats *ls, int32_t n, size_t off)
{
    api_buf_printf(b, "# HELP %s %s\n# TYPE %s counter\n", name, help, name);
    for (int32_t l = 0; l < n; l++) {
        uint64_t v;
        memcpy(&v, (const char *)&ls[l] + off, sizeof v);
        api_buf_printf(b, "%s{layer=\"%d\"} %" PRIu64 "\n", name, l, v);
    }
}

/* The hybrid expert executor: the engine's copy of its counters after the
 * last step (engine_hybrid_stats; the executor itself is the engine
 * thread's). */
static void metrics_hybrid(struct serve *sv, struct api_buf *b, const struct engine_info *info)
{
    struct hybrid_stats st;
    struct hybrid_layer_stats *ls = calloc((size_t)info->n_layer, sizeof *ls);
    if (!ls || !engine_hybrid_stats(sv->eng, &st, ls)) {
        free(ls);
        return;
    }
    int32_t n = st.n_layer < info->n_layer ? st.n_layer : info->n_layer;
    char cost[600];
    label_value(cost, sizeof cost, info->cost_model);
    api_buf_printf(b,
                   "# HELP moed_hybrid_info The hybrid expert executor: cache policy, prefetch, "
                   "whether loads read the registered model file, the cost model's file (\"\": "
                   "built-in) and whether it was calibrated.\n"
                   "# TYPE moed_hybrid_info gauge\n"
                   "moed_hybrid_info{policy=\"%s\",prefetch=\"%s\",registered=\"%s\","
                   "cost_model=\"%s\",calibrated=\"%s\"} 1\n",
                   cache_policy_name(st.policy), st.prefetch ? "true" : "false",
                   st.registered ? "true" : "false", cost,
                   info->cost_calibrated ? "true" : "false");
    api_buf_printf(b,
                   "# HELP moed_expert_cache_slots Expert slots in GPU memory.\n"
                   "# TYPE moed_expert_cache_slots gauge\nmoed_expert_cache_slots %d\n"
                   "# HELP moed_expert_cache_bytes GPU memory of the expert slots.\n"
                   "# TYPE moed_expert_cache_bytes gauge\nmoed_expert_cache_bytes %" PRIu64 "\n",
                   st.n_slot, st.pool_bytes);
#define LAYERS(name, field, help)                                                                  \
    metric_layers(b, name, help, ls, n, offsetof(struct hybrid_layer_stats, field))
    LAYERS("moed_expert_cache_hits_total", hits,
           "Activated experts found in a GPU slot, per layer.");
    LAYERS("moed_expert_cache_misses_total", misses,
           "Activated experts not in a GPU slot, per layer.");
    LAYERS("moed_expert_cache_loads_total", loads,
           "Experts copied into a GPU slot (on demand and prefetched), per layer.");
    LAYERS("moed_expert_cache_evictions_total", evictions,
           "GPU slots a layer's experts lost to another expert.");
    LAYERS("moed_expert_cache_prefetches_total", prefetches,
           "Experts loaded ahead of their layer on a prediction, per layer.");
    LAYERS("moed_expert_cache_prefetch_hits_total", prefetch_hits,
           "Prefetched experts used before their eviction, per layer.");
    LAYERS("moed_expert_cache_behind_loads_total", behind,
           "Misses run on the CPU then loaded into the cache for later steps, per layer.");
    LAYERS("moed_expert_stream_loads_total", streamed,
           "Experts a prefill step copied into the streaming area (not cached), per layer.");
#undef LAYERS
    api_buf_printf(b, "# HELP moed_experts_run_total Activated experts by where they ran: on the "
                      "CPU, on the GPU from a slot, on the GPU after a load.\n"
                      "# TYPE moed_experts_run_total counter\n");
    for (int32_t l = 0; l < n; l++)
        api_buf_printf(b,
                       "moed_experts_run_total{layer=\"%d\",place=\"cpu\"} %" PRIu64 "\n"
                       "moed_experts_run_total{layer=\"%d\",place=\"gpu_cached\"} %" PRIu64 "\n"
                       "moed_experts_run_total{layer=\"%d\",place=\"gpu_loaded\"} %" PRIu64 "\n",
                       l, ls[l].cpu, l, ls[l].gpu_cached, l, ls[l].gpu_loaded);
    api_buf_printf(b, "# HELP moed_pcie_bytes_total Bytes over PCIe: experts copied to GPU slots, "
                      "hidden rows down and CPU experts' results up.\n"
                      "# TYPE moed_pcie_bytes_total counter\n");
    for (int32_t l = 0; l < n; l++)
        api_buf_printf(b,
                       "moed_pcie_bytes_total{layer=\"%d\",kind=\"experts\"} %" PRIu64 "\n"
                       "moed_pcie_bytes_total{layer=\"%d\",kind=\"activations\"} %" PRIu64 "\n",
                       l, ls[l].load_bytes, l, ls[l].act_bytes);
    api_buf_printf(b,
                   "# HELP moed_expert_prediction_tokens_total Prefetch predictions: token x "
                   "experts-per-token chances.\n"
                   "# TYPE moed_expert_prediction_tokens_total counter\n"
                   "moed_expert_prediction_tokens_total %" PRIu64 "\n"
                   "# HELP moed_expert_prediction_hits_total Predicted experts the tokens then "
                   "chose.\n"
                   "# TYPE moed_expert_prediction_hits_total counter\n"
                   "moed_expert_prediction_hits_total %" PRIu64 "\n",
                   st.pred_tokens, st.pred_hits);
    api_buf_printf(b,
                   "# HELP moed_hybrid_host_seconds_total Host time in the hybrid MoE layers: all "
                   "of it, waiting for the GPU's routing, computing CPU experts, predicting "
                   "and issuing prefetches.\n"
                   "# TYPE moed_hybrid_host_seconds_total counter\n"
                   "moed_hybrid_host_seconds_total{part=\"all\"} %.6f\n"
                   "moed_hybrid_host_seconds_total{part=\"wait\"} %.6f\n"
                   "moed_hybrid_host_seconds_total{part=\"cpu\"} %.6f\n"
                   "moed_hybrid_host_seconds_total{part=\"predict\"} %.6f\n",
                   st.host_s, st.wait_s, st.cpu_s, st.predict_s);
    api_buf_printf(b,
                   "# HELP moed_hybrid_cost_scale The decode cost model's online corrections: "
                   "measured / modelled CPU expert time and copy time (1: as calibrated).\n"
                   "# TYPE moed_hybrid_cost_scale gauge\n"
                   "moed_hybrid_cost_scale{part=\"cpu\"} %.4f\n"
                   "moed_hybrid_cost_scale{part=\"h2d\"} %.4f\n",
                   st.cpu_scale, st.h2d_scale);
    free(ls);
}

static void metrics_extra(void *ud, struct api_buf *b)
{
    struct serve *sv = ud;
    if (engine_state(sv->eng) == ENGINE_READY) {
        struct engine_info info;
        engine_info(sv->eng, &info);
        char name[300];
        label_value(name, sizeof name, info.gpu ? info.gpu_name : "");
        api_buf_printf(b,
                       "# HELP moed_backend_info Where the forward pass runs (fixed at start; "
                       "gpu_device needs a restart).\n"
                       "# TYPE moed_backend_info gauge\n"
                       "moed_backend_info{backend=\"%s\",device=\"%d\",name=\"%s\"} 1\n",
                       info.gpu ? "gpu" : "cpu", info.gpu_device, name);
        if (info.hybrid)
            metrics_hybrid(sv, b, &info);
    }
    api_buf_printf(b,
                   "# HELP moed_reloads_total SIGHUP reloads.\n"
                   "# TYPE moed_reloads_total counter\nmoed_reloads_total %" PRIu64 "\n",
                   sv->reloads);
    api_buf_printf(b,
                   "# HELP moed_uptime_seconds Seconds since moed serve started.\n"
                   "# TYPE moed_uptime_seconds gauge\nmoed_uptime_seconds %.3f\n",
                   engine_now() - sv->t_start);
}

/* ---- main ---------------------------------------------------------------------------- */

static void usage(FILE *f)
{
    fprintf(f, "usage: moed serve -m MODEL [--host ADDR] [--port N] [-c moed.conf] [OPTIONS]\n"
               "\n"
               "Serve MODEL with an OpenAI-compatible HTTP API: POST /v1/completions,\n"
               "/v1/chat/completions, /tokenize, /detokenize; GET /v1/models, /health, /metrics.\n"
               "Options come from the -c file, then MOED_* variables, then these flags.\n"
               "SIGTERM/SIGINT drain and stop; SIGHUP reopens the log and reloads options.\n"
               "\n");
}

/* The model id: model_name, or the file's name without .gguf. */
static void model_id_from(const struct moed_config *c, char *buf, size_t n)
{
    if (c->model_name[0]) {
        snprintf(buf, n, "%s", c->model_name);
        return;
    }
    const char *base = strrchr(c->model, '/');
    base = base ? base + 1 : c->model;
    size_t len = strlen(base);
    if (len > 5 && !strcmp(base + len - 5, ".gguf"))
        len -= 5;
    snprintf(buf, n, "%.*s", (int)len, base);
}

static enum cache_policy cache_policy_of(int conf_policy)
{
    switch (conf_policy) {
    case CONF_CACHE_LRU: return CACHE_LRU;
    case CONF_CACHE_LFU: return CACHE_LFU;
    default: return CACHE_SCORE;
    }
}

static int64_t file_mtime(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (int64_t)st.st_mtime : (int64_t)time(NULL);
}

int cmd_serve(int argc, char **argv)
{
    for (int i = 1; i < argc && strcmp(argv[i], "--"); i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            conf_print_help(stdout);
            return 0;
        }

    struct serve *sv = calloc(1, sizeof *sv);
    if (!sv) {
        fprintf(stderr, "moed serve: out of memory\n");
        return 1;
    }
    sv->t_start = engine_now();
    sv->argc = argc;
    sv->argv = argv;
    struct conf_diag d = {0};
    int rc = conf_load(&sv->cfg, argc, argv, NULL, NULL, &d);
    sv->cfg_ok = true;
    if (!rc)
        rc = conf_check_files(&sv->cfg, &d);
    conf_diag_print(stderr, &d);
    if (rc || d.errors) {
        fprintf(stderr, "moed serve: %d configuration error%s (see `moed serve --help`)\n",
                d.errors, d.errors == 1 ? "" : "s");
        conf_diag_free(&d);
        conf_free(&sv->cfg);
        free(sv);
        return 1;
    }
    conf_diag_free(&d);
    struct moed_config *c = &sv->cfg;

    struct moed_err e = {0};
    if (log_open(c->log_file, c->log_level, &e)) {
        fprintf(stderr, "moed serve: %s\n", e.msg);
        conf_free(c);
        free(sv);
        return 1;
    }
    if (notify_init(&e))
        log_warn("sd_notify: %s (notifications off)", e.msg);
    sv->wd_usec = notify_watchdog_usec();
    model_id_from(c, sv->model_id, sizeof sv->model_id);
    log_info("moed serve: pid %d, model %s, config %s", (int)getpid(), c->model,
             c->file ? c->file : "(none)");

    int status = 1;
    uv_loop_init(&sv->loop);
    struct api_limits lim;
    limits_from_conf(c, &lim);
    if (api_server_init(&sv->srv, &sv->loop, &lim, &e)) {
        log_err("%s", e.msg);
        goto out_loop;
    }
    api_server_set_logger(sv->srv, api_logger, sv);
    if (apply_api_key(sv, c->api_key_file, &e)) {
        log_err("%s", e.msg);
        if (c->log_file[0])
            fprintf(stderr, "moed serve: %s\n", e.msg);
        api_server_free(sv->srv);
        goto out_loop;
    }
    if (api_server_start(sv->srv, c->host, (int)c->port, &e)) {
        log_err("%s", e.msg);
        if (c->log_file[0])
            fprintf(stderr, "moed serve: %s\n", e.msg);
        api_server_stop(sv->srv, NULL, NULL);
        uv_run(&sv->loop, UV_RUN_DEFAULT);
        api_server_free(sv->srv);
        goto out_loop;
    }
    if (!strcmp(c->host, "0.0.0.0") || !strcmp(c->host, "::") || !strcmp(c->host, "[::]"))
        if (!c->api_key_file[0])
            log_warn("listening on every interface (%s) without an API key (api_key_file)",
                     c->host);

    uv_async_init(&sv->loop, &sv->eng_async, on_engine);
    sv->eng_async.data = sv;
    uv_signal_init(&sv->loop, &sv->sig_term);
    uv_signal_init(&sv->loop, &sv->sig_int);
    uv_signal_init(&sv->loop, &sv->sig_hup);
    sv->sig_term.data = sv->sig_int.data = sv->sig_hup.data = sv;
    uv_signal_start(&sv->sig_term, on_signal, SIGTERM);
    uv_signal_start(&sv->sig_int, on_signal, SIGINT);
    uv_signal_start(&sv->sig_hup, on_hup, SIGHUP);
    uv_timer_init(&sv->loop, &sv->tick);
    uv_timer_init(&sv->loop, &sv->drain);
    sv->tick.data = sv->drain.data = sv;
    sv->handles_open = true;

    struct engine_opts eo = {
        .model_path = c->model,
        .ctx_size = (int32_t)c->ctx_size,
        .max_seqs = (int32_t)c->max_seqs,
        .max_queued = (int32_t)c->max_queued,
        .prefill_chunk = (int32_t)c->prefill_chunk,
        .kv_budget = c->kv_budget,
        .threads = (int)c->threads,
        .gpu = c->gpu_device >= 0,
        .gpu_device = (int)c->gpu_device,
        .expert_budget_frac =
            c->expert_cache_budget.is_fraction ? c->expert_cache_budget.fraction : 0,
        .expert_budget_bytes =
            c->expert_cache_budget.is_fraction ? 0 : c->expert_cache_budget.bytes,
        .cache_policy = cache_policy_of(c->cache_policy),
        .cost_model = c->cost_model,
        .chat_template = c->chat_template,
        .request_timeout_ms = c->request_timeout,
        .keepalive_ms = c->sse_keepalive,
        .on_state = engine_state_cb,
        .log = engine_logger,
        .ud = sv,
    };
    notify_send(NULL, "STATUS=loading %s", c->model);
    if (engine_start(&sv->eng, &eo, &e)) {
        log_err("%s", e.msg);
        close_handles(sv);
        api_server_stop(sv->srv, NULL, NULL);
        uv_run(&sv->loop, UV_RUN_DEFAULT);
        api_server_free(sv->srv);
        goto out_loop;
    }
    struct routes_opts ro = {
        .engine = sv->eng,
        .model_id = sv->model_id,
        .created = file_mtime(c->model),
        .default_max_tokens = c->default_max_tokens,
        .metrics = c->metrics,
        .metrics_extra = metrics_extra,
        .ud = sv,
    };
    if (routes_init(&sv->rt, &sv->loop, sv->srv, &ro, &e)) {
        log_err("%s", e.msg);
        close_handles(sv);
        api_server_stop(sv->srv, NULL, NULL);
        uv_run(&sv->loop, UV_RUN_DEFAULT);
        engine_free(sv->eng);
        api_server_free(sv->srv);
        goto out_loop;
    }
    /* the tick runs at 1 s, or faster when the watchdog asks for it */
    uint64_t tick_ms = 1000;
    if (sv->wd_usec && sv->wd_usec / 4000 < tick_ms)
        tick_ms = sv->wd_usec / 4000 ? sv->wd_usec / 4000 : 1;
    if (sv->wd_usec)
        notify_send(NULL, "WATCHDOG=1");
    sv->t_last_wd = engine_now();
    uv_timer_start(&sv->tick, on_tick, tick_ms, tick_ms);
    /* the engine may have finished loading before the async existed to tell */
    if (engine_state(sv->eng) != ENGINE_LOADING)
        uv_async_send(&sv->eng_async);

    uv_run(&sv->loop, UV_RUN_DEFAULT);

    engine_free(sv->eng); /* joins; what is left ends with SHUTDOWN */
    routes_free(sv->rt);
    api_server_free(sv->srv);
    status = sv->exit_code;
    if (status == 0)
        log_info("exit 0");
out_loop:
    uv_loop_close(&sv->loop);
    notify_close();
    conf_free(&sv->cfg);
    log_close();
    free(sv);
    return status;
}
