/*
 * daemon/engine.c: the engine thread and continuous batching (engine.h).
 *
 * Shared state (the queue, the counters, the cancel list, the limits) lives
 * under one mutex, held only to move pointers and add numbers; everything a
 * step touches (the running sequences, their KV caches, samplers and
 * detokenizers, the batch arrays) belongs to the engine thread alone.  The
 * sink callbacks are always called with the mutex released, since they post
 * to the HTTP server's own queue.
 *
 * One loop iteration:
 *   1. under the mutex: wait while there is nothing to do; take the cancel
 *      list; drop queued requests that are cancelled or past their deadline;
 *      pop the queue's head while a sequence and its KV positions are free;
 *   2. end running sequences that are cancelled or past their deadline;
 *      set up the popped ones (KV cache, sampler, detokenizer, stop matcher);
 *   3. build the batch (decoders first, then prompt chunks), fwd_step,
 *      sample each sequence that has logits, detokenize, match stops, emit,
 *      end the finished ones.
 */
#include "daemon/engine.h"

#include <hwloc.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cache/gpu_slots.h"
#include "kernels/cpu/types.h"
#include "kernels/cuda/kc.h"
#include "kernels/cuda/kcuda.h"
#include "model/chat.h"
#include "model/fwd_gpu.h"
#include "model/kv.h"
#include "model/model.h"
#include "model/tok.h"
#include "sched/calib.h"
#include "sched/cost.h"
#include "sched/pool.h"
#include "sched/topo.h"

/* A request waiting in the queue (owned by the engine once submitted). */
struct job {
    struct job *next;
    uint64_t id;
    int32_t *prompt;
    int32_t n_prompt, max_new;
    struct sample_params sample;
    bool logprobs;
    int n_stop;
    char *stop[OAI_MAX_STOP];
    size_t stop_len[OAI_MAX_STOP];
    double t_arrival, deadline; /* deadline 0: none */
    const struct engine_sink *sink;
    void *ud;
    void (*keepalive)(void *ud);
};

/* A running sequence (engine thread only). */
struct seq {
    struct job *job;
    struct kv_seq kv;
    struct sampler smp;
    bool smp_ok;
    struct tok_stream ts;
    bool ts_ok;
    struct oai_stop stop;
    bool stop_ok;
    int32_t *toks; /* prompt, then sampled tokens; room for n_prompt + max_new */
    int32_t n_toks, n_gen;
    int64_t kv_pos; /* positions counted against the pool */
    double t_admit, t_first, t_last;
    double t_keepalive; /* admission or the last keepalive call */
    struct sample_result *pend; /* sampled tokens whose text has not been emitted */
    size_t n_pend, cap_pend;
    bool done;
    enum engine_finish fin;
    const char *fin_msg;
};

struct engine {
    /* options, fixed at start */
    char *model_path, *chat_name;
    int32_t ctx_opt, max_seqs, prefill_chunk;
    uint64_t kv_budget;
    int threads_opt;
    bool gpu_opt;
    int gpu_dev_opt;
    double xbud_frac;
    uint64_t xbud_bytes;
    enum cache_policy policy;
    struct sched_cost cost; /* cost_path's, or sched_cost_default() */
    char cost_path[512];
    void (*on_state)(void *ud, enum engine_state st);
    void (*logf)(void *ud, int level, const char *msg);
    void *ud;

    pthread_t th;
    bool th_started;

    /* written by the engine thread before state becomes READY, then fixed */
    struct model model;
    bool model_ok;
    struct tok *tok;
    struct chat_template *chat;
    struct sched_pool *pool;
    struct fwd *fwd;
    int32_t ctx_size, max_batch, n_vocab, n_vocab_tok;
    int threads;
    int64_t kv_total;
    uint64_t kv_bpp;
    uint32_t kv_type; /* KT_F16 on the GPU, KT_F32 on the CPU */
    bool on_gpu;
    char gpu_name[256];
    char gpu_fallback[MOED_ERR_MSG];
    struct hybrid *hy; /* fwd_hybrid(fwd): the engine thread's alone */
    bool hy_on;
    int32_t hy_slots;
    uint64_t hy_pool_bytes;
    double load_s;
    char err[MOED_ERR_MSG];
    atomic_int state;

    /* shared, under mu */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool stop, draining, cancel_all;
    struct job *q_head, *q_tail;
    int32_t n_queued, n_reserved, n_active, n_prefilling;
    int32_t max_queued;
    int64_t timeout_ms;
    uint64_t *cancels;
    size_t n_cancels, cap_cancels;
    int64_t kv_reserved, kv_used;
    uint64_t prompt_tokens, gen_tokens, step_tokens, admitted;
    uint64_t finished[ENGINE_FIN_COUNT];
    struct api_hist hist[ENGINE_N_HIST];
    struct fwd_stats fwd_stats;
    struct hybrid_stats hy_stats;         /* as of the last step (hy_on) */
    struct hybrid_layer_stats *hy_layers; /* [n_layer], the same */
    atomic_uint_fast64_t steps;
    atomic_llong busy_since_ns; /* 0: not in a step */
    atomic_llong keepalive_ms;  /* engine_req.keepalive period; 0: off */

    /* engine thread only */
    struct seq **run;
    int32_t n_run;
    int32_t *b_tok, *b_pos, *b_seq;
    bool *b_want;
    int32_t *row_seq;
    struct kv_seq **kvs;
    float *logits;
    size_t logits_rows;
    struct hybrid_layer_stats *hy_tmp; /* [n_layer]: hybrid_stats_get's, before the copy */
};

static const char *const fin_names[ENGINE_FIN_COUNT] = {"stop",    "length",   "cancelled",
                                                        "timeout", "shutdown", "error"};

const char *engine_finish_name(enum engine_finish f)
{
    return (unsigned)f < ENGINE_FIN_COUNT ? fin_names[f] : "?";
}

double engine_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void elog(struct engine *eng, int level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void elog(struct engine *eng, int level, const char *fmt, ...)
{
    if (!eng->logf)
        return;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    eng->logf(eng->ud, level, msg);
}

/* ---- histograms ------------------------------------------------------------ */

static const double b_latency[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                   1,     2.5,    5,     10,   30,    60,   120, 300};
static const double b_itl[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06,
                               0.08,   0.1,   0.15,   0.2,   0.3,  0.5,  1,    2.5};
static const double b_count[] = {1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144};
static const double b_step[] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192};

#define NB(a) (sizeof(a) / sizeof((a)[0]))

static void hists_init(struct engine *eng)
{
    api_hist_init(&eng->hist[ENGINE_HIST_TTFT], b_latency, NB(b_latency));
    api_hist_init(&eng->hist[ENGINE_HIST_ITL], b_itl, NB(b_itl));
    api_hist_init(&eng->hist[ENGINE_HIST_QUEUE], b_latency, NB(b_latency));
    api_hist_init(&eng->hist[ENGINE_HIST_E2E], b_latency, NB(b_latency));
    api_hist_init(&eng->hist[ENGINE_HIST_PROMPT], b_count, NB(b_count));
    api_hist_init(&eng->hist[ENGINE_HIST_GEN], b_count, NB(b_count));
    api_hist_init(&eng->hist[ENGINE_HIST_STEP], b_step, NB(b_step));
}

/* ---- jobs ------------------------------------------------------------------ */

static void job_free(struct job *j)
{
    if (!j)
        return;
    free(j->prompt);
    for (int i = 0; i < j->n_stop; i++)
        free(j->stop[i]);
    free(j);
}

/* End a request that never got a sequence: tell its owner, count it. */
static void job_end(struct engine *eng, struct job *j, enum engine_finish fin, const char *msg)
{
    struct oai_usage u = {j->n_prompt, 0};
    double t = engine_now();
    pthread_mutex_lock(&eng->mu);
    eng->finished[fin]++;
    api_hist_observe(&eng->hist[ENGINE_HIST_E2E], t - j->t_arrival);
    pthread_mutex_unlock(&eng->mu);
    j->sink->finish(j->ud, fin, &u, msg);
    job_free(j);
}

/* ---- sequences ------------------------------------------------------------- */

static void seq_free(struct seq *s)
{
    if (!s)
        return;
    kv_seq_free(&s->kv);
    if (s->smp_ok)
        sampler_free(&s->smp);
    if (s->ts_ok)
        tok_stream_free(&s->ts);
    if (s->stop_ok)
        oai_stop_free(&s->stop);
    free(s->toks);
    free(s->pend);
    job_free(s->job);
    free(s);
}

static int seq_new(struct engine *eng, struct job *j, struct seq **out, struct moed_err *e)
{
    struct seq *s = calloc(1, sizeof *s);
    if (!s)
        return moed_err_set(e, MOED_ENOMEM, "out of memory for a sequence");
    s->job = j;
    s->kv_pos = (int64_t)j->n_prompt + j->max_new;
    int rc;
    size_t cap = (size_t)j->n_prompt + (size_t)j->max_new;
    s->toks = malloc(cap * sizeof *s->toks);
    if (!s->toks) {
        rc = moed_err_set(e, MOED_ENOMEM, "out of memory for %zu tokens", cap);
        goto fail;
    }
    memcpy(s->toks, j->prompt, (size_t)j->n_prompt * sizeof *s->toks);
    s->n_toks = j->n_prompt;
    if ((rc = fwd_kv_init(eng->fwd, &s->kv, (int32_t)s->kv_pos, eng->kv_type, e)))
        goto fail;
    struct sample_params sp = j->sample;
    sp.logprobs = j->logprobs;
    if (!j->logprobs)
        sp.n_logprobs = 0;
    if ((rc = sampler_init(&s->smp, &sp, eng->n_vocab, e)))
        goto fail;
    s->smp_ok = true;
    if ((rc = tok_stream_init(&s->ts, eng->tok, 0, e)))
        goto fail;
    s->ts_ok = true;
    rc = oai_stop_init(&s->stop, (const char *const *)j->stop, j->stop_len, j->n_stop);
    if (rc) {
        moed_err_set(e, rc, "stop strings: %s", moed_strerror(rc));
        goto fail;
    }
    s->stop_ok = true;
    *out = s;
    return 0;
fail:
    s->job = NULL; /* the caller still owns j */
    seq_free(s);
    return rc;
}

/* Give the sink the text and the tokens waiting for it. */
static void seq_emit(struct seq *s, const char *text, size_t len)
{
    struct job *j = s->job;
    if (j->sink->text)
        j->sink->text(j->ud, text, len, s->pend, s->n_pend);
    s->n_pend = 0;
}

/* End of generation: what the detokenizer and the stop matcher still hold. */
static void seq_flush(struct seq *s)
{
    const char *p, *em;
    size_t n, nem;
    tok_stream_flush(&s->ts, &p, &n);
    if (n && s->stop.matched < 0) {
        int rc = oai_stop_push(&s->stop, p, n, &em, &nem);
        if (rc >= 0 && nem)
            seq_emit(s, em, nem);
    }
    if (oai_stop_flush(&s->stop, &em, &nem) >= 0 && nem)
        seq_emit(s, em, nem);
    if (s->n_pend)
        seq_emit(s, "", 0);
}

static void seq_mark(struct seq *s, enum engine_finish fin, const char *msg)
{
    if (s->done)
        return;
    s->done = true;
    s->fin = fin;
    s->fin_msg = msg;
}

/* Tell the owner, count, give back the sequence and its KV positions. */
static void seq_end(struct engine *eng, struct seq *s)
{
    struct job *j = s->job;
    if (s->fin == ENGINE_FIN_STOP || s->fin == ENGINE_FIN_LENGTH || s->fin == ENGINE_FIN_TIMEOUT)
        seq_flush(s);
    struct oai_usage u = {j->n_prompt, s->n_gen};
    double t = engine_now();
    pthread_mutex_lock(&eng->mu);
    eng->finished[s->fin]++;
    eng->n_active--;
    eng->kv_reserved -= s->kv_pos;
    eng->kv_used -= s->kv.n;
    api_hist_observe(&eng->hist[ENGINE_HIST_E2E], t - j->t_arrival);
    api_hist_observe(&eng->hist[ENGINE_HIST_PROMPT], j->n_prompt);
    api_hist_observe(&eng->hist[ENGINE_HIST_GEN], s->n_gen);
    pthread_mutex_unlock(&eng->mu);
    double ttft = s->n_gen ? s->t_first - j->t_arrival : 0, dec = t - s->t_first;
    elog(eng, 3,
         "request %" PRIu64 ": %s; %d prompt + %d tokens; queued %.1f ms, first token %.1f ms, "
         "%.1f tok/s after it",
         j->id, engine_finish_name(s->fin), j->n_prompt, s->n_gen,
         (s->t_admit - j->t_arrival) * 1e3, ttft * 1e3,
         s->n_gen > 1 && dec > 0 ? (s->n_gen - 1) / dec : 0.0);
    j->sink->finish(j->ud, s->fin, &u, s->fin_msg);
    seq_free(s);
}

/* ---- loading --------------------------------------------------------------- */

static void fmt_bytes(uint64_t b, char *buf, size_t n)
{
    if (b >= (1ull << 30))
        snprintf(buf, n, "%.2f GiB", (double)b / (1ull << 30));
    else if (b >= (1ull << 20))
        snprintf(buf, n, "%.1f MiB", (double)b / (1ull << 20));
    else
        snprintf(buf, n, "%.1f KiB", (double)b / 1024);
}

/* K and V of every layer at one position. */
static uint64_t kv_bytes_per_position(const struct model_hparams *hp, uint32_t type)
{
    return 2ull * (uint64_t)hp->n_layer * (uint64_t)hp->n_head_kv * (uint64_t)hp->head_dim *
           (type == KT_F16 ? 2u : sizeof(float));
}

/* kv_total from kv_budget (or max_seqs * ctx_size) and kv_bpp. */
static int kv_pool_size(struct engine *eng, struct moed_err *e)
{
    if (eng->kv_budget) {
        uint64_t pos = eng->kv_budget / eng->kv_bpp;
        eng->kv_total = pos > INT64_MAX / 2 ? INT64_MAX / 2 : (int64_t)pos;
        if (eng->kv_total < eng->ctx_size) {
            char have[32], need[32];
            fmt_bytes(eng->kv_budget, have, sizeof have);
            fmt_bytes(eng->kv_bpp * (uint64_t)eng->ctx_size, need, sizeof need);
            return moed_err_set(e, MOED_EINVAL,
                                "kv_budget %s holds %" PRId64 " positions, fewer than one "
                                "sequence of ctx_size %d (needs %s)",
                                have, eng->kv_total, eng->ctx_size, need);
        }
    } else {
        eng->kv_total = (int64_t)eng->max_seqs * eng->ctx_size;
    }
    return 0;
}

/* Device memory left free for the KV caches after the forward pass. */
#define GPU_KV_MARGIN (512ull << 20)
/* Device memory beside fwd_gpu_workspace_bytes that the forward pass may
 * still take (pointer tables, CUDA graphs, allocation rounding). */
#define GPU_WS_SLACK (64ull << 20)

/* Bytes of the routed experts (the *_exps tensors) of every layer. */
static uint64_t expert_bytes(const struct model *m)
{
    uint64_t n = 0;
    for (int32_t il = 0; il < m->hp.n_layer; il++) {
        const struct model_layer *L = &m->layers[il];
        const struct gguf_tensor *t[] = {L->gate_exps, L->up_exps, L->down_exps};
        for (int i = 0; i < 3; i++)
            n += t[i] ? t[i]->nbytes : 0;
    }
    return n;
}

/* Note why the GPU is not used (engine_load logs it); -1. */
static int gpu_unusable(struct engine *eng, const char *msg)
{
    snprintf(eng->gpu_fallback, sizeof eng->gpu_fallback, "%s", msg);
    return -1;
}

/* The cost model, for the log: its file or why it is only a guess. */
static void cost_describe(const struct engine *eng, char *buf, size_t n)
{
    if (!eng->cost_path[0])
        snprintf(buf, n,
                 "cost model: built-in defaults, not calibrated on this machine (run `moed "
                 "calibrate --gpu %d -o FILE` and set cost_model = FILE)",
                 eng->gpu_dev_opt);
    else if (!eng->cost.calibrated)
        snprintf(buf, n, "cost model %s (calibrated = 0: partly the built-in guesses)",
                 eng->cost_path);
    else
        snprintf(buf, n, "cost model %s (calibrated)", eng->cost_path);
}

/*
 * The GPU forward pass on gpu_dev_opt with F16 KV caches in device memory,
 * the pool capped to the device's free memory; the routed experts all on
 * the GPU or hybrid (engine.h, "Backend").  0, or -1 with gpu_fallback
 * saying why (nothing of the GPU kept); a kv_budget too small for one
 * sequence is a configuration error that the CPU path reports.
 */
static int try_gpu(struct engine *eng)
{
    const struct model *m = &eng->model;
    const struct model_hparams *hp = &m->hp;
    struct moed_err ge = {0};
    eng->kv_type = KT_F16;
    eng->kv_bpp = kv_bytes_per_position(hp, KT_F16);
    if (kv_pool_size(eng, &ge))
        return gpu_unusable(eng, ge.msg);
    size_t mfree = 0, mtotal = 0;
    if (kc_set_device(eng->gpu_dev_opt, &ge) || kc_mem_info(&mfree, &mtotal, &ge))
        return gpu_unusable(eng, ge.msg);

    /* the expert budget: a share of what the dense part and the KV pool leave */
    uint64_t xbytes = expert_bytes(m), wbytes = model_weight_bytes(m);
    uint64_t dense = wbytes > xbytes ? wbytes - xbytes : 0;
    uint64_t kvb = eng->kv_bpp * (uint64_t)eng->kv_total;
    uint64_t ws = fwd_gpu_workspace_bytes(m, eng->max_batch) + GPU_WS_SLACK;
    uint64_t used = dense + ws + kvb + GPU_KV_MARGIN;
    uint64_t room = mfree > used ? mfree - used : 0;
    uint64_t budget = eng->xbud_frac > 0       ? (uint64_t)(eng->xbud_frac * (double)room)
                      : eng->xbud_bytes < room ? eng->xbud_bytes
                                               : room;
    struct hybrid_opts ho = {
        .budget_bytes = budget, .policy = eng->policy, .cost = &eng->cost, .pool = eng->pool};
    int64_t n_exp = (int64_t)hp->n_layer * hp->n_expert;
    uint64_t sb = 0;
    bool hybrid =
        n_exp > 0 && gpu_slots_geometry(m, NULL, &sb, &ge) == 0 && hybrid_slots_for(m, &ho) < n_exp;
    uint64_t one_seq = eng->kv_bpp * (uint64_t)eng->ctx_size;
    if (hybrid && eng->xbud_frac > 0 && used - kvb + one_seq + xbytes <= mfree) {
        char kv[32];
        fmt_bytes(kvb, kv, sizeof kv);
        elog(eng, 1,
             "GPU %d: every expert would fit on the GPU with a smaller KV pool than the %s "
             "asked for (kv_budget, or max_seqs x ctx_size) or a larger expert_cache_budget; "
             "running hybrid",
             eng->gpu_dev_opt, kv);
    }
    if (hybrid && !eng->xbud_frac && eng->xbud_bytes > room) {
        char want[32], have[32];
        fmt_bytes(eng->xbud_bytes, want, sizeof want);
        fmt_bytes(room, have, sizeof have);
        elog(eng, 1,
             "GPU %d: expert_cache_budget %s is more than the %s left after the dense weights, "
             "the workspace and the KV pool: %s of expert slots",
             eng->gpu_dev_opt, want, have, have);
    }
    if (fwd_init(&eng->fwd, m,
                 &(struct fwd_opts){.max_batch = eng->max_batch,
                                    .pool = eng->pool,
                                    .gpu = true,
                                    .gpu_device = eng->gpu_dev_opt,
                                    .hybrid = hybrid ? &ho : NULL},
                 &ge)) {
        eng->fwd = NULL;
        if (hybrid)
            moed_err_wrap(&ge, "hybrid experts (%d slots)", hybrid_slots_for(m, &ho));
        return gpu_unusable(eng, ge.msg);
    }
    eng->hy = fwd_hybrid(eng->fwd);
    if (kc_mem_info(&mfree, &mtotal, &ge)) {
        gpu_unusable(eng, ge.msg);
        goto fail;
    }
    uint64_t avail = mfree > GPU_KV_MARGIN ? mfree - GPU_KV_MARGIN : 0;
    int64_t fit = (int64_t)(avail / eng->kv_bpp);
    if (fit < eng->ctx_size) {
        char have[32], need[32];
        fmt_bytes(mfree, have, sizeof have);
        fmt_bytes(eng->kv_bpp * (uint64_t)eng->ctx_size, need, sizeof need);
        snprintf(eng->gpu_fallback, sizeof eng->gpu_fallback,
                 "the KV cache of one sequence of ctx_size %d (%s F16) does not fit in the %s "
                 "left free after the weights%s",
                 eng->ctx_size, need, have, eng->hy ? " and the expert slots" : "");
        goto fail;
    }
    if (eng->kv_total > fit) {
        char pool[32], have[32];
        fmt_bytes(eng->kv_bpp * (uint64_t)eng->kv_total, pool, sizeof pool);
        fmt_bytes(eng->kv_bpp * (uint64_t)fit, have, sizeof have);
        elog(eng, 1,
             "GPU %d: a KV pool of %" PRId64 " positions (%s F16) does not fit; capped to %" PRId64
             " positions (%s)",
             eng->gpu_dev_opt, eng->kv_total, pool, fit, have);
        eng->kv_total = fit;
    }
    struct kcuda_device dv;
    if (kcuda_device_info(eng->gpu_dev_opt, &dv, &ge))
        snprintf(eng->gpu_name, sizeof eng->gpu_name, "CUDA device %d", eng->gpu_dev_opt);
    else
        snprintf(eng->gpu_name, sizeof eng->gpu_name, "%s", dv.name);
    if (!eng->hy)
        return 0;

    /* hybrid: the counters' snapshot (engine_hybrid_stats), the log line */
    size_t nl = (size_t)hp->n_layer;
    eng->hy_layers = calloc(nl, sizeof *eng->hy_layers);
    eng->hy_tmp = calloc(nl, sizeof *eng->hy_tmp);
    if (!eng->hy_layers || !eng->hy_tmp) {
        gpu_unusable(eng, "out of memory for the hybrid statistics");
        goto fail;
    }
    hybrid_stats_get(eng->hy, &eng->hy_stats, eng->hy_layers);
    eng->hy_on = true;
    eng->hy_slots = eng->hy_stats.n_slot;
    eng->hy_pool_bytes = eng->hy_stats.pool_bytes;
    char pool[32], left[32], kv[32], cost[800], bud[64];
    fmt_bytes(eng->hy_pool_bytes, pool, sizeof pool);
    fmt_bytes(room, left, sizeof left);
    fmt_bytes(kvb, kv, sizeof kv);
    if (eng->xbud_frac > 0)
        snprintf(bud, sizeof bud, "%.3g", eng->xbud_frac);
    else
        fmt_bytes(eng->xbud_bytes, bud, sizeof bud);
    cost_describe(eng, cost, sizeof cost);
    elog(eng, 2,
         "backend: GPU %d (%s), hybrid: %d expert slots (%s, %.1f%% of the %" PRId64
         " experts; expert_cache_budget %s of %s left after the dense weights and a KV pool of "
         "%s), cache_policy %s, %d CPU thread%s for the other experts, %s",
         eng->gpu_dev_opt, eng->gpu_name, eng->hy_slots, pool,
         100.0 * (double)eng->hy_slots / (double)n_exp, n_exp, bud, left, kv,
         cache_policy_name(eng->policy), eng->threads, eng->threads == 1 ? "" : "s", cost);
    char tname[SCHED_COST_NAME];
    const struct model_layer *L0 = &m->layers[0];
    calib_type_name(L0->gate_exps->type, L0->up_exps->type, L0->down_exps->type, tname,
                    sizeof tname);
    if (sched_cost_find_type(&eng->cost, tname) < 0)
        elog(eng, 1, "the cost model has no row for the model's experts (%s): planning with %s's",
             tname, eng->cost.type[0].name);
    return 0;
fail:
    fwd_free(eng->fwd);
    eng->fwd = NULL;
    eng->hy = NULL;
    eng->hy_on = false;
    free(eng->hy_layers);
    free(eng->hy_tmp);
    eng->hy_layers = eng->hy_tmp = NULL;
    return -1;
}

static int engine_load(struct engine *eng, struct moed_err *e)
{
    double t0 = engine_now();
    int rc;
    if ((rc = model_open(&eng->model, eng->model_path, e)))
        return rc;
    eng->model_ok = true;
    const struct model_hparams *hp = &eng->model.hp;
    if ((rc = tok_load(&eng->tok, eng->model.gguf, e)))
        return moed_err_wrap(e, "%s: tokenizer", eng->model_path);
    if (*tok_warning(eng->tok))
        elog(eng, 1, "%s: tokenizer: %s", eng->model_path, tok_warning(eng->tok));
    if ((rc = chat_template_for_tok(&eng->chat, eng->tok, eng->chat_name, e)))
        return moed_err_wrap(e, "chat_template");
    eng->n_vocab = hp->n_vocab;
    eng->n_vocab_tok = (int32_t)tok_n_vocab(eng->tok);

    eng->ctx_size = eng->ctx_opt ? eng->ctx_opt : (hp->n_ctx_train > 0 ? hp->n_ctx_train : 4096);
    if (hp->n_ctx_train > 0 && eng->ctx_size > hp->n_ctx_train)
        elog(eng, 1, "ctx_size %d is longer than the %d tokens the model was trained for",
             eng->ctx_size, hp->n_ctx_train);

    /* one worker per physical core (or `threads`), pinned where the topology allows */
    char pdesc[96], pwhy[MOED_ERR_MSG + 64];
    if ((rc = sched_topo_pool(eng->threads_opt, false, &eng->pool, pdesc, sizeof pdesc, pwhy,
                              sizeof pwhy, e)))
        return moed_err_wrap(e, "thread pool of %d", eng->threads_opt);
    if (pwhy[0])
        elog(eng, 1, "CPU workers not pinned: %s", pwhy);
    eng->threads = sched_pool_size(eng->pool);
    eng->max_batch = eng->max_seqs + eng->prefill_chunk;

    /* the backend: the GPU when asked and it works, else the CPU */
    if (eng->gpu_opt && try_gpu(eng) == 0) {
        eng->on_gpu = true;
    } else {
        if (eng->gpu_opt)
            elog(eng, 1, "GPU %d: %s; running on the CPU", eng->gpu_dev_opt, eng->gpu_fallback);
        eng->kv_type = KT_F32;
        eng->kv_bpp = kv_bytes_per_position(hp, KT_F32);
        if ((rc = kv_pool_size(eng, e)))
            return rc;
        if ((rc = fwd_init(&eng->fwd, &eng->model,
                           &(struct fwd_opts){.max_batch = eng->max_batch, .pool = eng->pool}, e)))
            return rc;
    }
    if (eng->on_gpu && !eng->hy_on)
        elog(eng, 2,
             "backend: GPU %d (%s), KV caches F16 in device memory, every expert on the GPU",
             eng->gpu_dev_opt, eng->gpu_name);
    else if (!eng->on_gpu)
        elog(eng, 2, "backend: CPU, %d thread%s, KV caches F32%s", eng->threads,
             eng->threads == 1 ? "" : "s", eng->gpu_opt ? " (GPU fallback)" : "");
    size_t mb = (size_t)eng->max_batch, ms = (size_t)eng->max_seqs;
    eng->run = calloc(ms, sizeof *eng->run);
    eng->kvs = calloc(ms, sizeof *eng->kvs);
    eng->row_seq = calloc(ms, sizeof *eng->row_seq);
    eng->b_tok = calloc(mb, sizeof *eng->b_tok);
    eng->b_pos = calloc(mb, sizeof *eng->b_pos);
    eng->b_seq = calloc(mb, sizeof *eng->b_seq);
    eng->b_want = calloc(mb, sizeof *eng->b_want);
    if (!eng->run || !eng->kvs || !eng->row_seq || !eng->b_tok || !eng->b_pos || !eng->b_seq ||
        !eng->b_want)
        return moed_err_set(e, MOED_ENOMEM, "out of memory for a batch of %d tokens",
                            eng->max_batch);
    eng->load_s = engine_now() - t0;
    return 0;
}

/* ---- one step -------------------------------------------------------------- */

static int ensure_logits(struct engine *eng, size_t rows)
{
    if (rows <= eng->logits_rows)
        return 0;
    size_t want = eng->logits_rows ? eng->logits_rows : 1;
    while (want < rows)
        want *= 2;
    if (want > (size_t)eng->max_seqs)
        want = (size_t)eng->max_seqs;
    float *p = realloc(eng->logits, want * (size_t)eng->n_vocab * sizeof *p);
    if (!p)
        return MOED_ENOMEM;
    eng->logits = p;
    eng->logits_rows = want;
    return 0;
}

static int pend_push(struct seq *s, const struct sample_result *r)
{
    if (s->n_pend == s->cap_pend) {
        size_t cap = s->cap_pend ? 2 * s->cap_pend : 4;
        struct sample_result *p = realloc(s->pend, cap * sizeof *p);
        if (!p)
            return MOED_ENOMEM;
        s->pend = p;
        s->cap_pend = cap;
    }
    s->pend[s->n_pend++] = *r;
    return 0;
}

/* Sample the next token of s from its logits row and act on it. */
static void seq_sample(struct engine *eng, struct seq *s, const float *logits)
{
    struct job *j = s->job;
    struct sample_result res;
    if (sampler_sample(&s->smp, logits, s->toks, s->n_toks, &res)) {
        seq_mark(s, ENGINE_FIN_ERROR, "sampling failed");
        return;
    }
    if (!j->logprobs)
        res.n_top = 0;
    double t = engine_now();
    pthread_mutex_lock(&eng->mu);
    if (s->n_gen == 0)
        api_hist_observe(&eng->hist[ENGINE_HIST_TTFT], t - j->t_arrival);
    else
        api_hist_observe(&eng->hist[ENGINE_HIST_ITL], t - s->t_last);
    eng->gen_tokens++;
    pthread_mutex_unlock(&eng->mu);
    if (s->n_gen == 0)
        s->t_first = t;
    s->t_last = t;
    s->toks[s->n_toks++] = res.token;
    s->n_gen++;

    if (tok_is_eog(eng->tok, res.token)) {
        seq_mark(s, ENGINE_FIN_STOP, NULL);
        return;
    }
    if (pend_push(s, &res)) {
        seq_mark(s, ENGINE_FIN_ERROR, "out of memory");
        return;
    }
    const char *piece = "";
    size_t n = 0;
    if (res.token < eng->n_vocab_tok && tok_stream_feed(&s->ts, res.token, &piece, &n, NULL))
        n = 0;
    const char *em = NULL;
    size_t nem = 0;
    int rc = n ? oai_stop_push(&s->stop, piece, n, &em, &nem) : 0;
    if (rc < 0) {
        seq_mark(s, ENGINE_FIN_ERROR, "out of memory");
        return;
    }
    if (nem)
        seq_emit(s, em, nem);
    if (rc == 1)
        seq_mark(s, ENGINE_FIN_STOP, NULL);
    else if (s->n_gen >= j->max_new || s->n_toks >= s->kv.n_ctx)
        seq_mark(s, ENGINE_FIN_LENGTH, NULL);
}

static void engine_step(struct engine *eng)
{
    int32_t n = 0, rows = 0, n_prompt_tok = 0, n_prefilling = 0;
    /* decoders: their last sampled token */
    for (int32_t i = 0; i < eng->n_run; i++) {
        struct seq *s = eng->run[i];
        eng->kvs[i] = &s->kv;
        if (s->n_gen == 0)
            continue;
        eng->b_tok[n] = s->toks[s->n_toks - 1];
        eng->b_pos[n] = s->n_toks - 1;
        eng->b_seq[n] = i;
        eng->b_want[n] = true;
        eng->row_seq[rows++] = i;
        n++;
    }
    /* prompts: up to prefill_chunk tokens in all, oldest first */
    int32_t budget = eng->prefill_chunk;
    for (int32_t i = 0; i < eng->n_run; i++) {
        struct seq *s = eng->run[i];
        if (s->n_gen != 0)
            continue;
        n_prefilling++;
        if (budget == 0)
            continue;
        int32_t from = s->kv.n, rem = s->job->n_prompt - from;
        int32_t take = rem < budget ? rem : budget;
        for (int32_t k = 0; k < take; k++) {
            eng->b_tok[n] = s->toks[from + k];
            eng->b_pos[n] = from + k;
            eng->b_seq[n] = i;
            eng->b_want[n] = from + k == s->job->n_prompt - 1;
            if (eng->b_want[n])
                eng->row_seq[rows++] = i;
            n++;
        }
        budget -= take;
        n_prompt_tok += take;
    }
    if (n == 0)
        return;

    struct moed_err e = {0};
    int rc = ensure_logits(eng, (size_t)rows);
    if (rc)
        moed_err_set(&e, rc, "out of memory for %d rows of logits", rows);
    else {
        atomic_store(&eng->busy_since_ns, now_ns());
        struct fwd_batch b = {n, eng->b_tok, eng->b_pos, eng->b_seq, eng->b_want};
        rc = fwd_step(eng->fwd, &b, eng->kvs, eng->n_run, eng->logits, &e);
    }
    if (rc) {
        /* a bug or memory: the step's sequences end, the others carry on */
        elog(eng, 0, "forward step of %d tokens failed: %s", n, e.msg);
        for (int32_t k = 0; k < n; k++)
            seq_mark(eng->run[eng->b_seq[k]], ENGINE_FIN_ERROR,
                     "internal error in the forward pass");
        atomic_store(&eng->busy_since_ns, 0);
        return;
    }
    int64_t used = 0;
    for (int32_t r = 0; r < rows; r++)
        seq_sample(eng, eng->run[eng->row_seq[r]], eng->logits + (size_t)r * (size_t)eng->n_vocab);
    for (int32_t i = 0; i < eng->n_run; i++)
        used += eng->run[i]->kv.n;
    struct fwd_stats fs;
    fwd_stats_get(eng->fwd, &fs);
    struct hybrid_stats hs;
    if (eng->hy_on)
        hybrid_stats_get(eng->hy, &hs, eng->hy_tmp);
    pthread_mutex_lock(&eng->mu);
    if (eng->hy_on) {
        eng->hy_stats = hs;
        memcpy(eng->hy_layers, eng->hy_tmp, (size_t)hs.n_layer * sizeof *eng->hy_layers);
    }
    eng->step_tokens += (uint64_t)n;
    eng->prompt_tokens += (uint64_t)n_prompt_tok;
    eng->kv_used = used;
    eng->fwd_stats = fs;
    eng->n_prefilling = n_prefilling;
    api_hist_observe(&eng->hist[ENGINE_HIST_STEP], n);
    pthread_mutex_unlock(&eng->mu);
    atomic_fetch_add(&eng->steps, 1);
    atomic_store(&eng->busy_since_ns, 0);
}

/* Sequences still in their prompt tell their owner, once a period, that
 * they are alive (SSE comments during a long prefill). */
static void keepalives(struct engine *eng)
{
    long long ms = atomic_load(&eng->keepalive_ms);
    if (ms <= 0)
        return;
    double now = engine_now(), period = (double)ms / 1000.0;
    for (int32_t i = 0; i < eng->n_run; i++) {
        struct seq *s = eng->run[i];
        if (s->done || s->n_gen != 0 || !s->job->keepalive ||
            now - s->t_keepalive < period)
            continue;
        s->t_keepalive = now;
        s->job->keepalive(s->job->ud);
    }
}

/* End the marked sequences and close the gaps in run[]. */
static void reap(struct engine *eng)
{
    int32_t k = 0;
    for (int32_t i = 0; i < eng->n_run; i++) {
        struct seq *s = eng->run[i];
        if (s->done)
            seq_end(eng, s);
        else
            eng->run[k++] = s;
    }
    eng->n_run = k;
}

/* ---- the thread ------------------------------------------------------------ */

static void set_state(struct engine *eng, enum engine_state st)
{
    atomic_store(&eng->state, (int)st);
    if (eng->on_state)
        eng->on_state(eng->ud, st);
}

static bool id_in(const uint64_t *ids, size_t n, uint64_t id)
{
    for (size_t i = 0; i < n; i++)
        if (ids[i] == id)
            return true;
    return false;
}

static void *engine_main(void *arg)
{
    struct engine *eng = arg;
    struct moed_err e = {0};
    if (engine_load(eng, &e)) {
        snprintf(eng->err, sizeof eng->err, "%s", e.msg);
        if (eng->on_gpu) { /* on this thread, as at the end below */
            fwd_free(eng->fwd);
            eng->fwd = NULL;
        }
        set_state(eng, ENGINE_FAILED);
        pthread_mutex_lock(&eng->mu);
        while (!eng->stop)
            pthread_cond_wait(&eng->cv, &eng->mu);
        pthread_mutex_unlock(&eng->mu);
        return NULL;
    }
    set_state(eng, ENGINE_READY);

    uint64_t *cancels = NULL;
    size_t n_cancels = 0, cap_cancels = 0;
    for (;;) {
        struct job *ended = NULL, *admit = NULL, **admit_tail = &admit;
        bool all = false;
        pthread_mutex_lock(&eng->mu);
        while (!eng->stop && eng->n_run == 0 && !eng->q_head && !eng->n_cancels && !eng->cancel_all)
            pthread_cond_wait(&eng->cv, &eng->mu);
        if (eng->stop) {
            pthread_mutex_unlock(&eng->mu);
            break;
        }
        /* take the cancel list (swap buffers: no allocation under the lock) */
        uint64_t *tmp = cancels;
        size_t tcap = cap_cancels;
        cancels = eng->cancels;
        n_cancels = eng->n_cancels;
        cap_cancels = eng->cap_cancels;
        eng->cancels = tmp;
        eng->cap_cancels = tcap;
        eng->n_cancels = 0;
        all = eng->cancel_all;
        eng->cancel_all = false;
        /* queued: cancelled, shut down or past the deadline */
        double now = engine_now();
        struct job **pp = &eng->q_head, *last = NULL;
        while (*pp) {
            struct job *j = *pp;
            bool drop =
                all || id_in(cancels, n_cancels, j->id) || (j->deadline > 0 && now >= j->deadline);
            if (drop) {
                *pp = j->next;
                eng->n_queued--;
                j->next = ended;
                ended = j;
            } else {
                last = j;
                pp = &j->next;
            }
        }
        eng->q_tail = last;
        /* admission: the head while a sequence and its positions are free */
        while (eng->q_head && eng->n_active < eng->max_seqs &&
               eng->kv_reserved + eng->q_head->n_prompt + eng->q_head->max_new <= eng->kv_total) {
            struct job *j = eng->q_head;
            eng->q_head = j->next;
            if (!eng->q_head)
                eng->q_tail = NULL;
            eng->n_queued--;
            eng->n_active++;
            eng->admitted++;
            eng->kv_reserved += (int64_t)j->n_prompt + j->max_new;
            api_hist_observe(&eng->hist[ENGINE_HIST_QUEUE], now - j->t_arrival);
            j->next = NULL;
            *admit_tail = j;
            admit_tail = &j->next;
        }
        pthread_mutex_unlock(&eng->mu);

        while (ended) {
            struct job *j = ended;
            ended = j->next;
            enum engine_finish fin = all                                ? ENGINE_FIN_SHUTDOWN
                                     : id_in(cancels, n_cancels, j->id) ? ENGINE_FIN_CANCELLED
                                                                        : ENGINE_FIN_TIMEOUT;
            job_end(eng, j, fin, NULL);
        }
        for (int32_t i = 0; i < eng->n_run; i++) {
            struct seq *s = eng->run[i];
            if (all)
                seq_mark(s, ENGINE_FIN_SHUTDOWN, NULL);
            else if (id_in(cancels, n_cancels, s->job->id))
                seq_mark(s, ENGINE_FIN_CANCELLED, NULL);
            else if (s->job->deadline > 0 && now >= s->job->deadline)
                seq_mark(s, ENGINE_FIN_TIMEOUT, NULL);
        }
        reap(eng);
        while (admit) {
            struct job *j = admit;
            admit = j->next;
            j->next = NULL;
            struct seq *s = NULL;
            if (seq_new(eng, j, &s, &e)) {
                elog(eng, 0, "request %" PRIu64 ": %s", j->id, e.msg);
                pthread_mutex_lock(&eng->mu);
                eng->n_active--;
                eng->kv_reserved -= (int64_t)j->n_prompt + j->max_new;
                pthread_mutex_unlock(&eng->mu);
                job_end(eng, j, ENGINE_FIN_ERROR, "out of memory for the sequence");
                continue;
            }
            s->t_admit = s->t_keepalive = now;
            eng->run[eng->n_run++] = s;
            if (j->sink->admitted)
                j->sink->admitted(j->ud);
        }
        engine_step(eng);
        keepalives(eng);
        reap(eng);
    }
    free(cancels);

    /* stopping: nobody is left to be served */
    for (int32_t i = 0; i < eng->n_run; i++)
        seq_mark(eng->run[i], ENGINE_FIN_SHUTDOWN, NULL);
    reap(eng);
    pthread_mutex_lock(&eng->mu);
    struct job *q = eng->q_head;
    eng->q_head = eng->q_tail = NULL;
    eng->n_queued = 0;
    pthread_mutex_unlock(&eng->mu);
    while (q) {
        struct job *j = q;
        q = j->next;
        job_end(eng, j, ENGINE_FIN_SHUTDOWN, NULL);
    }
    /* the GPU's objects go on the thread whose CUDA device they were made on */
    if (eng->on_gpu) {
        fwd_free(eng->fwd);
        eng->fwd = NULL;
    }
    return NULL;
}

/* ---- public ---------------------------------------------------------------- */

int engine_start(struct engine **out, const struct engine_opts *o, struct moed_err *e)
{
    *out = NULL;
    if (!o->model_path || !*o->model_path)
        return moed_err_set(e, MOED_EINVAL, "engine: no model file");
    if (o->max_seqs < 1 || o->prefill_chunk < 1 || o->max_queued < 0 || o->ctx_size < 0 ||
        o->threads < 0 || (o->gpu && o->gpu_device < 0) || !(o->expert_budget_frac >= 0) ||
        o->expert_budget_frac > 1 || o->cache_policy == CACHE_BELADY)
        return moed_err_set(e, MOED_EINVAL,
                            "engine: bad limits (max_seqs %d, prefill_chunk %d, max_queued %d, "
                            "ctx_size %d, threads %d, gpu_device %d, expert budget %g, cache "
                            "policy %s)",
                            o->max_seqs, o->prefill_chunk, o->max_queued, o->ctx_size, o->threads,
                            o->gpu ? o->gpu_device : -1, o->expert_budget_frac,
                            cache_policy_name(o->cache_policy));
    struct engine *eng = calloc(1, sizeof *eng);
    if (!eng)
        return moed_err_set(e, MOED_ENOMEM, "engine: out of memory");
    eng->model_path = strdup(o->model_path);
    eng->chat_name = strdup(o->chat_template ? o->chat_template : "");
    if (!eng->model_path || !eng->chat_name) {
        free(eng->model_path);
        free(eng->chat_name);
        free(eng);
        return moed_err_set(e, MOED_ENOMEM, "engine: out of memory");
    }
    eng->ctx_opt = o->ctx_size;
    eng->max_seqs = o->max_seqs;
    eng->prefill_chunk = o->prefill_chunk;
    eng->kv_budget = o->kv_budget;
    eng->threads_opt = o->threads;
    eng->gpu_opt = o->gpu;
    eng->gpu_dev_opt = o->gpu_device;
    eng->xbud_frac = o->expert_budget_frac;
    eng->xbud_bytes = o->expert_budget_bytes;
    eng->policy = o->cache_policy;
    if (o->cost_model && *o->cost_model) {
        /* a file that does not load is a configuration error, here rather
         * than a GPU fallback later (the message names the file and line) */
        struct moed_err ce = {0};
        if (strlen(o->cost_model) >= sizeof eng->cost_path ||
            sched_cost_load(&eng->cost, o->cost_model, &ce)) {
            if (!ce.code)
                moed_err_set(&ce, MOED_EINVAL, "%s: path too long", o->cost_model);
            free(eng->model_path);
            free(eng->chat_name);
            free(eng);
            moed_err_set(e, ce.code, "cost_model: %s", ce.msg);
            return e->code;
        }
        snprintf(eng->cost_path, sizeof eng->cost_path, "%s", o->cost_model);
    } else {
        sched_cost_default(&eng->cost);
    }
    eng->on_state = o->on_state;
    eng->logf = o->log;
    eng->ud = o->ud;
    eng->max_queued = o->max_queued;
    eng->timeout_ms = o->request_timeout_ms;
    atomic_init(&eng->state, ENGINE_LOADING);
    atomic_init(&eng->steps, 0);
    atomic_init(&eng->busy_since_ns, 0);
    atomic_init(&eng->keepalive_ms, o->keepalive_ms > 0 ? o->keepalive_ms : 0);
    hists_init(eng);
    pthread_mutex_init(&eng->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&eng->cv, &ca);
    pthread_condattr_destroy(&ca);
    /* The engine thread (and the pool workers it starts) leave the process's
     * signals to the loop thread (uv_signal there): block them around the
     * create, which the new thread inherits. */
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGHUP);
    sigaddset(&block, SIGQUIT);
    sigaddset(&block, SIGCHLD);
    sigaddset(&block, SIGUSR1);
    sigaddset(&block, SIGUSR2);
    pthread_sigmask(SIG_BLOCK, &block, &old);
    int rc = pthread_create(&eng->th, NULL, engine_main, eng);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc) {
        engine_free(eng);
        return moed_err_set(e, MOED_EIO, "engine: cannot start its thread: %s", strerror(rc));
    }
    eng->th_started = true;
    *out = eng;
    return 0;
}

void engine_free(struct engine *eng)
{
    if (!eng)
        return;
    if (eng->th_started) {
        pthread_mutex_lock(&eng->mu);
        eng->stop = true;
        pthread_cond_signal(&eng->cv);
        pthread_mutex_unlock(&eng->mu);
        pthread_join(eng->th, NULL);
    }
    free(eng->cancels);
    free(eng->run);
    free(eng->kvs);
    free(eng->row_seq);
    free(eng->b_tok);
    free(eng->b_pos);
    free(eng->b_seq);
    free(eng->b_want);
    free(eng->logits);
    free(eng->hy_layers);
    free(eng->hy_tmp);
    fwd_free(eng->fwd);
    sched_pool_free(eng->pool);
    chat_template_free(eng->chat);
    tok_free(eng->tok);
    if (eng->model_ok)
        model_close(&eng->model);
    pthread_cond_destroy(&eng->cv);
    pthread_mutex_destroy(&eng->mu);
    free(eng->model_path);
    free(eng->chat_name);
    free(eng);
}

enum engine_state engine_state(const struct engine *eng)
{
    return (enum engine_state)atomic_load(&((struct engine *)eng)->state);
}

const char *engine_error(const struct engine *eng)
{
    return engine_state(eng) == ENGINE_FAILED ? eng->err : "";
}

const struct model *engine_model(const struct engine *eng)
{
    return engine_state(eng) == ENGINE_READY ? &eng->model : NULL;
}

const struct tok *engine_tok(const struct engine *eng)
{
    return engine_state(eng) == ENGINE_READY ? eng->tok : NULL;
}

const struct chat_template *engine_chat(const struct engine *eng)
{
    return engine_state(eng) == ENGINE_READY ? eng->chat : NULL;
}

void engine_info(const struct engine *eng, struct engine_info *out)
{
    memset(out, 0, sizeof *out);
    out->max_seqs = eng->max_seqs;
    out->prefill_chunk = eng->prefill_chunk;
    out->gpu_device = -1;
    if (engine_state(eng) != ENGINE_READY)
        return;
    out->gpu = eng->on_gpu;
    out->gpu_device = eng->on_gpu ? eng->gpu_dev_opt : -1;
    snprintf(out->gpu_name, sizeof out->gpu_name, "%s", eng->gpu_name);
    snprintf(out->gpu_fallback, sizeof out->gpu_fallback, "%s", eng->gpu_fallback);
    out->kv_f16 = eng->kv_type == KT_F16;
    out->ctx_size = eng->ctx_size;
    out->max_batch = eng->max_batch;
    out->threads = eng->threads;
    out->kv_total_positions = eng->kv_total;
    out->kv_bytes_per_position = eng->kv_bpp;
    out->load_seconds = eng->load_s;
    out->n_layer = eng->model.hp.n_layer;
    out->n_experts = (int64_t)eng->model.hp.n_layer * eng->model.hp.n_expert;
    out->cache_policy = eng->policy;
    out->cost_calibrated = eng->cost.calibrated;
    snprintf(out->cost_model, sizeof out->cost_model, "%s", eng->cost_path);
    out->hybrid = eng->hy_on;
    if (eng->hy_on) {
        out->hybrid_slots = eng->hy_slots;
        out->hybrid_slot_bytes = eng->hy_pool_bytes;
    }
}

static int capacity_locked(const struct engine *eng)
{
    if (engine_state(eng) != ENGINE_READY || eng->draining || eng->stop)
        return MOED_EIO;
    if ((int64_t)eng->n_active + eng->n_queued + eng->n_reserved >=
        (int64_t)eng->max_seqs + eng->max_queued)
        return MOED_ERANGE;
    return 0;
}

int engine_reserve(struct engine *eng)
{
    pthread_mutex_lock(&eng->mu);
    int rc = capacity_locked(eng);
    if (!rc)
        eng->n_reserved++;
    pthread_mutex_unlock(&eng->mu);
    return rc;
}

void engine_unreserve(struct engine *eng)
{
    pthread_mutex_lock(&eng->mu);
    if (eng->n_reserved > 0)
        eng->n_reserved--;
    pthread_mutex_unlock(&eng->mu);
}

static int submit_check(const struct engine *eng, const struct engine_req *rq, struct moed_err *e)
{
    if (engine_state(eng) != ENGINE_READY)
        return moed_err_set(e, MOED_EIO, "the model is not loaded");
    if (!rq->sink || !rq->sink->finish)
        return moed_err_set(e, MOED_EINVAL, "request without a sink");
    if (rq->n_prompt < 1 || !rq->prompt)
        return moed_err_set(e, MOED_EINVAL, "empty prompt");
    if (rq->max_new < 1)
        return moed_err_set(e, MOED_EINVAL, "max_new %d: must be >= 1", rq->max_new);
    if ((int64_t)rq->n_prompt + rq->max_new > eng->ctx_size)
        return moed_err_set(e, MOED_EINVAL, "%d prompt + %d new tokens exceed ctx_size %d",
                            rq->n_prompt, rq->max_new, eng->ctx_size);
    for (int32_t i = 0; i < rq->n_prompt; i++)
        if (rq->prompt[i] < 0 || rq->prompt[i] >= eng->n_vocab)
            return moed_err_set(e, MOED_EINVAL, "prompt[%d] = %d: not a token id (0..%d)", i,
                                rq->prompt[i], eng->n_vocab - 1);
    if (rq->n_stop < 0 || rq->n_stop > OAI_MAX_STOP)
        return moed_err_set(e, MOED_EINVAL, "%d stop strings (0..%d)", rq->n_stop, OAI_MAX_STOP);
    for (int i = 0; i < rq->n_stop; i++) {
        size_t len = rq->stop_len ? rq->stop_len[i] : strlen(rq->stop[i]);
        if (len == 0 || len > OAI_MAX_STOP_LEN)
            return moed_err_set(e, MOED_EINVAL, "stop[%d]: %zu bytes (1..%d)", i, len,
                                OAI_MAX_STOP_LEN);
    }
    return sample_params_check(&rq->sample, e);
}

static struct job *job_copy(const struct engine_req *rq)
{
    struct job *j = calloc(1, sizeof *j);
    if (!j)
        return NULL;
    j->id = rq->id;
    j->n_prompt = rq->n_prompt;
    j->max_new = rq->max_new;
    j->sample = rq->sample;
    j->logprobs = rq->logprobs;
    j->sink = rq->sink;
    j->ud = rq->ud;
    j->keepalive = rq->keepalive;
    j->t_arrival = rq->t_arrival > 0 ? rq->t_arrival : engine_now();
    j->prompt = malloc((size_t)rq->n_prompt * sizeof *j->prompt);
    if (!j->prompt) {
        job_free(j);
        return NULL;
    }
    memcpy(j->prompt, rq->prompt, (size_t)rq->n_prompt * sizeof *j->prompt);
    for (int i = 0; i < rq->n_stop; i++) {
        size_t len = rq->stop_len ? rq->stop_len[i] : strlen(rq->stop[i]);
        j->stop[i] = malloc(len + 1);
        if (!j->stop[i]) {
            job_free(j);
            return NULL;
        }
        memcpy(j->stop[i], rq->stop[i], len);
        j->stop[i][len] = '\0';
        j->stop_len[i] = len;
        j->n_stop = i + 1;
    }
    return j;
}

int engine_submit(struct engine *eng, const struct engine_req *rq, bool reserved,
                  struct moed_err *e)
{
    int rc = submit_check(eng, rq, e);
    struct job *j = NULL;
    if (!rc && !(j = job_copy(rq)))
        rc = moed_err_set(e, MOED_ENOMEM, "out of memory for a request");
    pthread_mutex_lock(&eng->mu);
    if (reserved && eng->n_reserved > 0)
        eng->n_reserved--;
    if (!rc) {
        /* a reserved request was accepted before a drain began and holds its
         * place: only a stopping engine refuses it */
        if (reserved)
            rc = eng->stop ? MOED_EIO : 0;
        else
            rc = capacity_locked(eng);
        if (rc)
            moed_err_set(e, rc, rc == MOED_ERANGE ? "the queue is full" : "not accepting requests");
    }
    if (!rc) {
        if (eng->timeout_ms > 0)
            j->deadline = j->t_arrival + (double)eng->timeout_ms / 1000.0;
        if (eng->q_tail)
            eng->q_tail->next = j;
        else
            eng->q_head = j;
        eng->q_tail = j;
        eng->n_queued++;
        pthread_cond_signal(&eng->cv);
    }
    pthread_mutex_unlock(&eng->mu);
    if (rc)
        job_free(j);
    return rc;
}

void engine_cancel(struct engine *eng, uint64_t id)
{
    pthread_mutex_lock(&eng->mu);
    if (eng->n_cancels == eng->cap_cancels) {
        size_t cap = eng->cap_cancels ? 2 * eng->cap_cancels : 16;
        uint64_t *p = realloc(eng->cancels, cap * sizeof *p);
        if (!p) {
            /* cannot record it: the request runs to its end instead */
            pthread_mutex_unlock(&eng->mu);
            return;
        }
        eng->cancels = p;
        eng->cap_cancels = cap;
    }
    eng->cancels[eng->n_cancels++] = id;
    pthread_cond_signal(&eng->cv);
    pthread_mutex_unlock(&eng->mu);
}

void engine_drain(struct engine *eng)
{
    pthread_mutex_lock(&eng->mu);
    eng->draining = true;
    pthread_mutex_unlock(&eng->mu);
}

void engine_cancel_all(struct engine *eng)
{
    pthread_mutex_lock(&eng->mu);
    eng->cancel_all = true;
    pthread_cond_signal(&eng->cv);
    pthread_mutex_unlock(&eng->mu);
}

bool engine_idle(const struct engine *eng)
{
    struct engine *m = (struct engine *)eng;
    pthread_mutex_lock(&m->mu);
    bool idle = m->n_active == 0 && m->n_queued == 0 && m->n_reserved == 0;
    pthread_mutex_unlock(&m->mu);
    return idle;
}

double engine_busy_seconds(const struct engine *eng)
{
    long long t = atomic_load(&((struct engine *)eng)->busy_since_ns);
    if (!t)
        return 0;
    long long d = now_ns() - t;
    return d > 0 ? (double)d * 1e-9 : 0;
}

void engine_set_limits(struct engine *eng, int32_t max_queued, int64_t request_timeout_ms)
{
    pthread_mutex_lock(&eng->mu);
    eng->max_queued = max_queued < 0 ? 0 : max_queued;
    eng->timeout_ms = request_timeout_ms < 0 ? 0 : request_timeout_ms;
    pthread_mutex_unlock(&eng->mu);
}

void engine_set_keepalive(struct engine *eng, int64_t keepalive_ms)
{
    atomic_store(&eng->keepalive_ms, keepalive_ms > 0 ? keepalive_ms : 0);
}

void engine_stats_get(const struct engine *eng, struct engine_stats *out)
{
    struct engine *m = (struct engine *)eng;
    memset(out, 0, sizeof *out);
    out->state = engine_state(eng);
    pthread_mutex_lock(&m->mu);
    out->draining = m->draining;
    out->running = m->n_active;
    out->queued = m->n_queued;
    out->reserved = m->n_reserved;
    out->prefilling = m->n_prefilling;
    out->max_seqs = m->max_seqs;
    out->max_queued = m->max_queued;
    out->prompt_tokens = m->prompt_tokens;
    out->generation_tokens = m->gen_tokens;
    out->step_tokens = m->step_tokens;
    out->requests_admitted = m->admitted;
    memcpy(out->finished, m->finished, sizeof out->finished);
    out->kv_positions_total = out->state == ENGINE_READY ? m->kv_total : 0;
    out->kv_positions_reserved = m->kv_reserved;
    out->kv_positions_used = m->kv_used;
    out->kv_bytes_per_position = out->state == ENGINE_READY ? m->kv_bpp : 0;
    memcpy(out->hist, m->hist, sizeof out->hist);
    out->fwd = m->fwd_stats;
    pthread_mutex_unlock(&m->mu);
    out->steps = atomic_load(&m->steps);
}

bool engine_hybrid_stats(const struct engine *eng, struct hybrid_stats *out,
                         struct hybrid_layer_stats *per_layer)
{
    struct engine *m = (struct engine *)eng;
    memset(out, 0, sizeof *out);
    if (engine_state(eng) != ENGINE_READY || !m->hy_on)
        return false;
    pthread_mutex_lock(&m->mu);
    *out = m->hy_stats;
    if (per_layer)
        memcpy(per_layer, m->hy_layers, (size_t)out->n_layer * sizeof *per_layer);
    pthread_mutex_unlock(&m->mu);
    return true;
}

uint64_t engine_steps(const struct engine *eng)
{
    return atomic_load(&((struct engine *)eng)->steps);
}
