/*
 * The engine thread (daemon/engine.c) in-process, on a tiny random model
 * written with the mkmodel API (2 layers, d 128, 8 experts top 2, the
 * built-in byte-level tokenizer: one token per byte).  Requests go in with
 * engine_submit and come back through a recording sink:
 *   - greedy requests batched together give the same tokens as each alone;
 *   - stop strings end the text before them, max_new ends with "length";
 *   - a cancelled sequence (running or queued) is freed, its KV positions
 *     given back;
 *   - a full queue refuses (MOED_ERANGE), draining refuses (MOED_EIO);
 *   - a long prompt is prefilled in prefill_chunk pieces while another
 *     sequence decodes a token in every one of those steps;
 *   - a request past its deadline in the queue ends with TIMEOUT;
 *   - a cost_model file that does not load fails engine_start naming its
 *     line; the CPU backend reports no hybrid executor and no counters.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "daemon/engine.h"
#include "model/tok.h"
#include "tests/unit/harness.h"
#include "tools/mkmodel.h"

/* ---- the model ------------------------------------------------------------------- */

static const char *model_path(void)
{
    static char path[512];
    static bool made;
    if (made)
        return path;
    snprintf(path, sizeof path, "%s/engine-tiny.gguf", test_tmp_dir());
    struct mkm_spec s;
    struct moed_err e = {0};
    if (mkm_preset(&s, "tiny-qwen3moe", &e))
        return NULL;
    s.n_layer = 2;
    s.n_expert = 8;
    s.n_expert_used = 2;
    s.n_ctx = 512;
    s.seed = 7;
    s.threads = 1;
    s.out = path;
    if (mkm_spec_finish(&s, &e) || mkm_write(&s, NULL, &e)) {
        fprintf(stderr, "    mkmodel: %s\n", e.msg);
        return NULL;
    }
    made = true;
    return path;
}

/* ---- a recording sink ---------------------------------------------------------------- */

#define REC_MAX 512

struct rec {
    struct engine *eng;
    pthread_mutex_t *mu;
    pthread_cond_t *cv;
    int32_t toks[REC_MAX];
    int n_toks;
    char text[4 * REC_MAX];
    size_t n_text;
    bool admitted, done;
    uint64_t admit_step, finish_step; /* engine_steps() then: the step index */
    enum engine_finish fin;
    struct oai_usage u;
    int n_lp; /* tokens that came with alternatives */
};

static pthread_mutex_t rec_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t rec_cv = PTHREAD_COND_INITIALIZER;

static void rec_admitted(void *ud)
{
    struct rec *r = ud;
    pthread_mutex_lock(&rec_mu);
    r->admitted = true;
    r->admit_step = engine_steps(r->eng);
    pthread_cond_broadcast(&rec_cv);
    pthread_mutex_unlock(&rec_mu);
}

static void rec_text(void *ud, const char *text, size_t len, const struct sample_result *toks,
                     size_t n_toks)
{
    struct rec *r = ud;
    pthread_mutex_lock(&rec_mu);
    for (size_t i = 0; i < n_toks && r->n_toks < REC_MAX; i++) {
        r->toks[r->n_toks++] = toks[i].token;
        if (toks[i].n_top > 0)
            r->n_lp++;
    }
    if (r->n_text + len < sizeof r->text) {
        memcpy(r->text + r->n_text, text, len);
        r->n_text += len;
    }
    pthread_cond_broadcast(&rec_cv);
    pthread_mutex_unlock(&rec_mu);
}

static void rec_finish(void *ud, enum engine_finish fin, const struct oai_usage *u, const char *msg)
{
    struct rec *r = ud;
    (void)msg;
    pthread_mutex_lock(&rec_mu);
    r->done = true;
    r->finish_step = engine_steps(r->eng);
    r->fin = fin;
    r->u = *u;
    pthread_cond_broadcast(&rec_cv);
    pthread_mutex_unlock(&rec_mu);
}

static const struct engine_sink rec_sink = {rec_admitted, rec_text, rec_finish};

/* Wait (10 s at most) until pred(r, arg) holds; false on timeout. */
static bool rec_wait(struct rec *r, bool (*pred)(struct rec *, int), int arg)
{
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += 10;
    pthread_mutex_lock(&rec_mu);
    bool ok = true;
    while (!pred(r, arg))
        if (pthread_cond_timedwait(&rec_cv, &rec_mu, &dl)) {
            ok = pred(r, arg);
            break;
        }
    pthread_mutex_unlock(&rec_mu);
    return ok;
}

static bool p_done(struct rec *r, int arg)
{
    (void)arg;
    return r->done;
}

static bool p_tokens(struct rec *r, int n)
{
    return r->n_toks >= n || r->done;
}

/* ---- the engine ---------------------------------------------------------------------- */

static struct engine *start(int32_t max_seqs, int32_t max_queued, int32_t prefill_chunk)
{
    const char *path = model_path();
    if (!path)
        return NULL;
    struct engine_opts o = {
        .model_path = path,
        .ctx_size = 512,
        .max_seqs = max_seqs,
        .max_queued = max_queued,
        .prefill_chunk = prefill_chunk,
        .threads = 1,
    };
    struct engine *eng;
    struct moed_err e = {0};
    if (engine_start(&eng, &o, &e)) {
        fprintf(stderr, "    engine_start: %s\n", e.msg);
        return NULL;
    }
    for (int i = 0; i < 2000 && engine_state(eng) == ENGINE_LOADING; i++)
        nanosleep(&(struct timespec){0, 5000000}, NULL);
    if (engine_state(eng) != ENGINE_READY) {
        fprintf(stderr, "    engine: %s\n", engine_error(eng));
        engine_free(eng);
        return NULL;
    }
    return eng;
}

/* Tokenize text with the engine's (byte-level) tokenizer. */
static int32_t encode(struct engine *eng, const char *text, int32_t *out, int32_t cap)
{
    struct tok_ids ids = {0};
    struct moed_err e = {0};
    if (tok_encode(engine_tok(eng), text, strlen(text), 0, &ids, &e))
        return 0;
    int32_t n = (int32_t)ids.n < cap ? (int32_t)ids.n : cap;
    memcpy(out, ids.v, (size_t)n * sizeof *out);
    tok_ids_free(&ids);
    return n;
}

static int submit(struct engine *eng, struct rec *r, uint64_t id, const char *prompt,
                  int32_t max_new, const char *stop)
{
    int32_t toks[600];
    int32_t n = encode(eng, prompt, toks, 600);
    memset(r, 0, sizeof *r);
    r->eng = eng;
    struct sample_params sp = sample_params_default(); /* greedy */
    const char *stops[1] = {stop};
    struct engine_req rq = {
        .id = id,
        .prompt = toks,
        .n_prompt = n,
        .max_new = max_new,
        .sample = sp,
        .stop = stops,
        .n_stop = stop ? 1 : 0,
        .sink = &rec_sink,
        .ud = r,
    };
    struct moed_err e = {0};
    return engine_submit(eng, &rq, false, &e);
}

static const char *const prompts[] = {
    "The quick brown fox",
    "To be, or not to be, that is the question:",
    "a",
    "Whether 'tis nobler in the mind to suffer the slings and arrows",
};
#define N_PROMPTS 4

TEST(engine_batched_equals_alone)
{
    struct engine *eng = start(4, 8, 16);
    REQUIRE(eng);
    static struct rec alone[N_PROMPTS], together[N_PROMPTS];
    uint64_t steps0 = engine_steps(eng);
    for (int i = 0; i < N_PROMPTS; i++) {
        REQUIRE(submit(eng, &alone[i], (uint64_t)i + 1, prompts[i], 24, NULL) == 0);
        REQUIRE(rec_wait(&alone[i], p_done, 0));
    }
    uint64_t steps_alone = engine_steps(eng) - steps0;
    steps0 = engine_steps(eng);
    for (int i = 0; i < N_PROMPTS; i++)
        REQUIRE(submit(eng, &together[i], (uint64_t)i + 11, prompts[i], 24, NULL) == 0);
    for (int i = 0; i < N_PROMPTS; i++)
        REQUIRE(rec_wait(&together[i], p_done, 0));
    uint64_t steps_together = engine_steps(eng) - steps0;
    for (int i = 0; i < N_PROMPTS; i++) {
        CHECK(alone[i].fin == ENGINE_FIN_STOP || alone[i].fin == ENGINE_FIN_LENGTH);
        CHECK_EQ(together[i].fin, alone[i].fin);
        CHECK_EQ(together[i].n_toks, alone[i].n_toks);
        CHECK_EQ(together[i].u.completion_tokens, alone[i].u.completion_tokens);
        CHECK_EQ(together[i].u.prompt_tokens, alone[i].u.prompt_tokens);
        CHECK_MSG(!memcmp(together[i].toks, alone[i].toks, sizeof alone[i].toks),
                  "prompt %d: batched tokens differ from the tokens alone", i);
        CHECK_EQ(together[i].n_text, alone[i].n_text);
        CHECK(!memcmp(together[i].text, alone[i].text, alone[i].n_text));
        if (alone[i].fin == ENGINE_FIN_LENGTH)
            CHECK_EQ(alone[i].u.completion_tokens, 24);
    }
    /* batching shares steps: far fewer than one after the other (not half:
     * on a loaded 2-core machine with pinned workers the engine may start on
     * the first prompt before the test thread has submitted the last) */
    CHECK_MSG(steps_together * 4 < steps_alone * 3, "steps together %llu, alone %llu",
              (unsigned long long)steps_together, (unsigned long long)steps_alone);
    struct engine_stats st;
    engine_stats_get(eng, &st);
    CHECK_EQ(st.running, 0);
    CHECK_EQ(st.queued, 0);
    CHECK_EQ(st.kv_positions_reserved, 0);
    CHECK_EQ(st.kv_positions_used, 0);
    CHECK_EQ(st.requests_admitted, 2 * N_PROMPTS);
    CHECK(st.hist[ENGINE_HIST_TTFT].count == 2 * N_PROMPTS);
    engine_free(eng);
}

TEST(engine_stop_string_and_length)
{
    struct engine *eng = start(2, 4, 64);
    REQUIRE(eng);
    static struct rec a, b;
    REQUIRE(submit(eng, &a, 1, prompts[1], 40, NULL) == 0);
    REQUIRE(rec_wait(&a, p_done, 0));
    /* characters 3 and 4 of its text (whole UTF-8 characters, U+FFFD for
     * bytes the byte-level model got wrong) as a stop string */
    size_t off[8];
    int nc = 0;
    for (size_t i = 0; i < a.n_text && nc < 8; i++)
        if (((unsigned char)a.text[i] & 0xc0) != 0x80)
            off[nc++] = i;
    if (nc < 6) {
        engine_free(eng);
        SKIP("the model's text is too short to stop in");
    }
    char stop[16] = {0};
    memcpy(stop, a.text + off[3], off[5] - off[3]);
    const char *first = memmem(a.text, a.n_text, stop, strlen(stop));
    REQUIRE(first);
    REQUIRE(submit(eng, &b, 2, prompts[1], 40, stop) == 0);
    REQUIRE(rec_wait(&b, p_done, 0));
    CHECK_EQ(b.fin, ENGINE_FIN_STOP);
    CHECK_EQ(b.n_text, (size_t)(first - a.text));
    CHECK(!memcmp(b.text, a.text, b.n_text));
    CHECK(b.u.completion_tokens < a.u.completion_tokens);
    engine_free(eng);
}

TEST(engine_cancel_frees_sequence)
{
    struct engine *eng = start(1, 4, 64);
    REQUIRE(eng);
    static struct rec a, b;
    REQUIRE(submit(eng, &a, 1, prompts[0], 400, NULL) == 0);
    REQUIRE(submit(eng, &b, 2, prompts[1], 400, NULL) == 0);
    REQUIRE(rec_wait(&a, p_tokens, 3));
    REQUIRE(!a.done);
    struct engine_stats st;
    engine_stats_get(eng, &st);
    CHECK_EQ(st.running, 1);
    CHECK_EQ(st.queued, 1);
    CHECK(st.kv_positions_reserved > 0);
    /* the queued one first: it ends without ever being admitted */
    engine_cancel(eng, 2);
    REQUIRE(rec_wait(&b, p_done, 0));
    CHECK_EQ(b.fin, ENGINE_FIN_CANCELLED);
    CHECK(!b.admitted);
    CHECK_EQ(b.n_toks, 0);
    /* then the running one: freed before the next step */
    engine_cancel(eng, 1);
    engine_cancel(eng, 99); /* unknown: ignored */
    REQUIRE(rec_wait(&a, p_done, 0));
    CHECK_EQ(a.fin, ENGINE_FIN_CANCELLED);
    CHECK(a.n_toks < 400);
    engine_stats_get(eng, &st);
    CHECK_EQ(st.running, 0);
    CHECK_EQ(st.queued, 0);
    CHECK_EQ(st.kv_positions_reserved, 0);
    CHECK_EQ(st.finished[ENGINE_FIN_CANCELLED], 2);
    /* idle: no step runs while nothing is queued */
    uint64_t s0 = engine_steps(eng);
    nanosleep(&(struct timespec){0, 50000000}, NULL);
    CHECK_EQ(engine_steps(eng), s0);
    CHECK(engine_idle(eng));
    engine_free(eng);
}

TEST(engine_queue_full_and_drain)
{
    struct engine *eng = start(1, 1, 64);
    REQUIRE(eng);
    static struct rec a, b, c;
    REQUIRE(submit(eng, &a, 1, prompts[0], 400, NULL) == 0);
    REQUIRE(submit(eng, &b, 2, prompts[0], 400, NULL) == 0);
    CHECK_EQ(submit(eng, &c, 3, prompts[0], 4, NULL), MOED_ERANGE);
    CHECK_EQ(engine_reserve(eng), MOED_ERANGE);
    /* a reservation held earlier is honoured even when the queue filled since */
    engine_cancel(eng, 2);
    REQUIRE(rec_wait(&b, p_done, 0));
    CHECK_EQ(engine_reserve(eng), 0);
    CHECK_EQ(engine_reserve(eng), MOED_ERANGE);
    engine_unreserve(eng);
    CHECK_EQ(engine_reserve(eng), 0);
    struct engine_stats st;
    engine_stats_get(eng, &st);
    CHECK_EQ(st.reserved, 1);
    memset(&c, 0, sizeof c);
    c.eng = eng;
    int32_t toks[8];
    int32_t n = encode(eng, "hi", toks, 8);
    struct engine_req rq = {.id = 3,
                            .prompt = toks,
                            .n_prompt = n,
                            .max_new = 2,
                            .sample = sample_params_default(),
                            .sink = &rec_sink,
                            .ud = &c};
    struct moed_err e = {0};
    CHECK_EQ(engine_submit(eng, &rq, true, &e), 0);
    /* bad requests are refused with a message, and never call the sink */
    static struct rec d;
    memset(&d, 0, sizeof d);
    struct engine_req bad = rq;
    bad.id = 4;
    bad.ud = &d;
    bad.max_new = 600; /* beyond ctx_size 512 */
    CHECK_EQ(engine_submit(eng, &bad, false, &e), MOED_EINVAL);
    bad.max_new = 2;
    toks[0] = 1 << 20;
    CHECK_EQ(engine_submit(eng, &bad, false, &e), MOED_EINVAL);
    /* drain: nothing new, what is in keeps going until cancelled */
    engine_drain(eng);
    CHECK_EQ(engine_reserve(eng), MOED_EIO);
    engine_cancel_all(eng);
    REQUIRE(rec_wait(&a, p_done, 0));
    REQUIRE(rec_wait(&c, p_done, 0));
    CHECK_EQ(a.fin, ENGINE_FIN_SHUTDOWN);
    CHECK_EQ(c.fin, ENGINE_FIN_SHUTDOWN);
    CHECK(!d.done);
    CHECK(engine_idle(eng));
    engine_free(eng);
}

TEST(engine_prefill_chunks_interleave)
{
    enum { CHUNK = 16, LONG = 100 };
    struct engine *eng = start(2, 4, CHUNK);
    REQUIRE(eng);
    static struct rec a, b;
    REQUIRE(submit(eng, &a, 1, "Hi", 200, NULL) == 0);
    REQUIRE(rec_wait(&a, p_tokens, 1));
    char longp[LONG + 1];
    for (int i = 0; i < LONG; i++)
        longp[i] = (char)('a' + i % 26);
    longp[LONG] = '\0';
    REQUIRE(submit(eng, &b, 2, longp, 2, NULL) == 0);
    REQUIRE(rec_wait(&b, p_done, 0));
    engine_cancel(eng, 1);
    REQUIRE(rec_wait(&a, p_done, 0));
    /* Tokens sampled by a sequence = steps from its admission to its end when
     * it took part in every step (the text callback may lag behind tokens
     * while a UTF-8 character is incomplete, so count with usage). */
    CHECK(b.admitted);
    CHECK_EQ(b.u.prompt_tokens, LONG);
    int64_t prefill_steps = (LONG + CHUNK - 1) / CHUNK;
    CHECK_MSG((int64_t)(b.finish_step - b.admit_step) == prefill_steps + b.u.completion_tokens - 1,
              "b: admitted at step %llu, ended at %llu, %lld tokens",
              (unsigned long long)b.admit_step, (unsigned long long)b.finish_step,
              (long long)b.u.completion_tokens);
    /* a decoded one token in every step, b's prefill steps included (unless
     * the random model ended a with an end-of-generation token first) */
    if (a.fin == ENGINE_FIN_CANCELLED) {
        CHECK_MSG(a.admit_step < b.admit_step && a.finish_step >= b.finish_step,
                  "a %llu..%llu, b %llu..%llu", (unsigned long long)a.admit_step,
                  (unsigned long long)a.finish_step, (unsigned long long)b.admit_step,
                  (unsigned long long)b.finish_step);
        CHECK_MSG((int64_t)(a.finish_step - a.admit_step) == a.u.completion_tokens,
                  "a: admitted at step %llu, ended at %llu, %lld tokens",
                  (unsigned long long)a.admit_step, (unsigned long long)a.finish_step,
                  (long long)a.u.completion_tokens);
    }
    struct engine_stats st;
    engine_stats_get(eng, &st);
    /* no step held more than max_seqs + prefill_chunk tokens */
    const struct api_hist *h = &st.hist[ENGINE_HIST_STEP];
    uint64_t above = 0;
    for (size_t k = 0; k <= h->n; k++)
        if (k == h->n || h->le[k] > 32)
            above += h->counts[k];
    CHECK_EQ(above, 0);
    CHECK_EQ(st.prompt_tokens, 2 + LONG);
    engine_free(eng);
}

TEST(engine_timeout_in_queue_and_logprobs)
{
    struct engine *eng = start(1, 4, 64);
    REQUIRE(eng);
    engine_set_limits(eng, 4, 1000);
    static struct rec a, b;
    /* arrived 10 s ago with a 1 s request_timeout: ends in the queue */
    memset(&a, 0, sizeof a);
    a.eng = eng;
    int32_t toks[8];
    int32_t n = encode(eng, "hi", toks, 8);
    struct engine_req rq = {.id = 1,
                            .prompt = toks,
                            .n_prompt = n,
                            .max_new = 4,
                            .sample = sample_params_default(),
                            .t_arrival = engine_now() - 10,
                            .sink = &rec_sink,
                            .ud = &a};
    struct moed_err e = {0};
    REQUIRE(engine_submit(eng, &rq, false, &e) == 0);
    REQUIRE(rec_wait(&a, p_done, 0));
    CHECK_EQ(a.fin, ENGINE_FIN_TIMEOUT);
    CHECK(!a.admitted);
    /* logprobs: every token comes with its alternatives */
    memset(&b, 0, sizeof b);
    b.eng = eng;
    rq.t_arrival = 0;
    rq.id = 2;
    rq.ud = &b;
    rq.logprobs = true;
    rq.sample.n_logprobs = 3;
    rq.sample.temperature = 0.8f;
    rq.sample.seed = 42;
    REQUIRE(engine_submit(eng, &rq, false, &e) == 0);
    REQUIRE(rec_wait(&b, p_done, 0));
    CHECK(b.admitted);
    CHECK(b.n_toks > 0);
    CHECK_EQ(b.n_lp, b.n_toks);
    engine_free(eng);
}

/* The cost model is read at engine_start: a bad file fails it, naming the
 * file and line; the CPU backend has no hybrid executor and no hybrid
 * counters; Belady (an offline bound) is not a policy to run. */
TEST(engine_cost_model_and_no_hybrid_on_cpu)
{
    const char *path = model_path();
    REQUIRE(path);
    char bad[512];
    snprintf(bad, sizeof bad, "%s/engine-bad.cost", test_tmp_dir());
    FILE *f = fopen(bad, "w");
    REQUIRE(f);
    fputs("load_us = 5\nno equals sign here\n", f);
    fclose(f);
    struct engine_opts o = {.model_path = path,
                            .ctx_size = 512,
                            .max_seqs = 1,
                            .prefill_chunk = 64,
                            .threads = 1,
                            .cost_model = bad};
    struct engine *eng = NULL;
    struct moed_err e = {0};
    CHECK(engine_start(&eng, &o, &e) != 0);
    CHECK(eng == NULL);
    char want[600];
    snprintf(want, sizeof want, "cost_model: %s:2:", bad);
    CHECK_MSG(strstr(e.msg, want), "got: %s", e.msg);
    remove(bad);

    o.cost_model = NULL;
    o.cache_policy = CACHE_BELADY;
    CHECK_EQ(engine_start(&eng, &o, &e), MOED_EINVAL);
    o.cache_policy = CACHE_SCORE;
    o.expert_budget_frac = 1.5;
    CHECK_EQ(engine_start(&eng, &o, &e), MOED_EINVAL);

    eng = start(1, 0, 64);
    REQUIRE(eng);
    struct engine_info info;
    engine_info(eng, &info);
    CHECK(!info.gpu && !info.hybrid);
    CHECK_EQ(info.hybrid_slots, 0);
    CHECK_EQ(info.n_layer, 2);
    CHECK_EQ(info.n_experts, 16);
    CHECK(!info.cost_calibrated && info.cost_model[0] == 0);
    struct hybrid_stats hs;
    struct hybrid_layer_stats ls[2];
    CHECK(!engine_hybrid_stats(eng, &hs, ls));
    CHECK_EQ(hs.n_slot, 0);
    engine_free(eng);
}
