/*
 * The routing-trace recorder (model/trace.h): the file holds exactly what
 * the executor it wraps was handed (checked against a spy between the
 * recorder and the CPU executor), the forward pass's logits are
 * bit-identical with and without it, steps are numbered with or without
 * trace_step, and a failing write fails trace_close, never the step.
 */
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/types.h"
#include "model/forward.h"
#include "model/trace.h"
#include "tests/unit/harness.h"
#include "tests/unit/test_forward_tiny.h"

/* What the executor below the recorder saw: one entry per (call, token). */
struct seen {
    int32_t call, layer, index;
    int32_t ids[8];
    float w[8];
};

struct spy {
    struct moe_exec ex;
    struct moe_exec *inner;
    struct seen *v;
    int n, cap, calls;
};

static int spy_run(struct moe_exec *ex, const struct moe_work *w, struct moed_err *e)
{
    struct spy *s = (struct spy *)ex;
    for (int32_t t = 0; t < w->n_tok; t++) {
        if (s->n == s->cap) {
            s->cap = s->cap ? 2 * s->cap : 64;
            s->v = realloc(s->v, sizeof *s->v * (size_t)s->cap);
            if (!s->v)
                abort();
        }
        struct seen *r = &s->v[s->n++];
        memset(r, 0, sizeof *r);
        r->call = s->calls;
        r->layer = w->experts->layer;
        r->index = t;
        for (int32_t j = 0; j < w->n_used && j < 8; j++) {
            r->ids[j] = w->ids[(size_t)t * w->n_used + j];
            r->w[j] = w->weights[(size_t)t * w->n_used + j];
        }
    }
    s->calls++;
    return moe_exec_run(s->inner, w, e);
}

static void spy_free(struct moe_exec *ex) { (void)ex; }

static uint32_t rd_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static int32_t rd_i32(const uint8_t *p) { return (int32_t)rd_u32(p); }
static float rd_f32(const uint8_t *p)
{
    uint32_t u = rd_u32(p);
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* The whole of a FILE written so far. */
static uint8_t *slurp(FILE *f, size_t *len)
{
    fflush(f);
    long end = ftell(f);
    if (end < 0)
        return NULL;
    uint8_t *buf = malloc((size_t)end + 1);
    rewind(f);
    *len = fread(buf, 1, (size_t)end, f);
    return buf;
}

/* Two sequences: A (4 tokens) and B (3) prefilled in one step, then one
 * decode step of both, then one of A alone. */
static const int32_t tok1[] = {5, 17, 3, 88, 71, 2, 33};
static const int32_t pos1[] = {0, 1, 2, 3, 0, 1, 2};
static const int32_t seq1[] = {0, 0, 0, 0, 1, 1, 1};
static const int32_t tok2[] = {42, 9};
static const int32_t pos2[] = {4, 3};
static const int32_t seq2[] = {0, 1};
static const int32_t tok3[] = {60};
static const int32_t pos3[] = {5};
static const int32_t seq3[] = {0};
static const struct {
    int32_t n;
    const int32_t *tok, *pos, *seq;
} steps[] = {{7, tok1, pos1, seq1}, {2, tok2, pos2, seq2}, {1, tok3, pos3, seq3}};
#define N_STEPS 3
#define N_TOKENS 10

/* Run the three steps; logits of every token into out ([N_TOKENS][n_vocab]).
 * tr: call trace_step before each step (NULL: don't). */
static int run_steps(const struct model *m, struct fwd *f, struct trace *tr, float *out)
{
    struct moed_err e = {0};
    struct kv_seq kv[2];
    if (kv_seq_init(&kv[0], m, 16, KT_F32, &e) || kv_seq_init(&kv[1], m, 16, KT_F32, &e))
        return -1;
    struct kv_seq *seqs[2] = {&kv[0], &kv[1]};
    bool want[8] = {true, true, true, true, true, true, true, true};
    int rc = 0;
    size_t row = 0;
    for (int s = 0; s < N_STEPS && !rc; s++) {
        struct fwd_batch b = {steps[s].n, steps[s].tok, steps[s].pos, steps[s].seq, want};
        if (tr)
            trace_step(tr, b.n, b.token, b.seq, b.pos);
        rc = fwd_step(f, &b, seqs, 2, out + row * (size_t)m->hp.n_vocab, &e);
        if (rc)
            fprintf(stderr, "    fwd_step: %s\n", e.msg);
        row += (size_t)b.n;
    }
    kv_seq_free(&kv[0]);
    kv_seq_free(&kv[1]);
    return rc;
}

struct fixture {
    uint8_t *buf;
    struct gguf g;
    struct model m;
    struct moe_exec *cpu;
    struct spy spy;
};

static int fixture_init(struct fixture *fx)
{
    memset(fx, 0, sizeof *fx);
    struct tiny_spec s = tiny_default(MODEL_ARCH_QWEN3MOE, KT_Q8_0);
    s.n_used = 3; /* top-3 of 8: records of 24 + 24 bytes */
    struct moed_err e = {0};
    if (tiny_load(&s, &fx->buf, &fx->g, &fx->m, &e)) {
        fprintf(stderr, "    tiny_load: %s\n", e.msg);
        return -1;
    }
    struct moe_cpu_opts co = {.max_tok = 16,
                              .n_expert = fx->m.hp.n_expert,
                              .n_used = fx->m.hp.n_expert_used,
                              .n_embd = fx->m.hp.n_embd,
                              .n_ff = fx->m.hp.n_ff_exp};
    if (moe_cpu_new(&fx->cpu, &co, &e))
        return -1;
    fx->spy = (struct spy){.ex = {.name = "spy", .run = spy_run, .free = spy_free},
                           .inner = fx->cpu};
    return 0;
}

static void fixture_free(struct fixture *fx)
{
    free(fx->spy.v);
    moe_exec_free(fx->cpu);
    model_close(&fx->m);
    gguf_close(&fx->g);
    free(fx->buf);
}

static struct trace_opts opts_for(const struct model *m, FILE *f, struct moe_exec *inner)
{
    static char *argv[] = {"run", "-p", "say \"hi\"\n"};
    return (struct trace_opts){.f = f,
                               .inner = inner,
                               .n_layer = m->hp.n_layer,
                               .n_expert = m->hp.n_expert,
                               .n_used = m->hp.n_expert_used,
                               .model = "tiny.gguf",
                               .arch = "qwen3moe",
                               .argc = 3,
                               .argv = argv};
}

TEST(trace_records_what_the_executor_saw)
{
    struct fixture fx;
    REQUIRE(fixture_init(&fx) == 0);
    const struct model *m = &fx.m;
    int32_t L = m->hp.n_layer, k = m->hp.n_expert_used;
    FILE *f = tmpfile();
    REQUIRE(f);
    struct moed_err e = {0};
    struct trace *tr;
    struct trace_opts to = opts_for(m, f, &fx.spy.ex);
    REQUIRE(trace_open(&tr, &to, &e) == 0);

    struct fwd *ft, *fp;
    REQUIRE(fwd_init(&ft, m, &(struct fwd_opts){.max_batch = 16, .exec = trace_exec(tr)}, &e) == 0);
    REQUIRE(fwd_init(&fp, m, &(struct fwd_opts){.max_batch = 16}, &e) == 0);
    size_t nl = (size_t)N_TOKENS * (size_t)m->hp.n_vocab;
    float *lt = malloc(sizeof(float) * nl), *lp = malloc(sizeof(float) * nl);
    CHECK_EQ(run_steps(m, ft, tr, lt), 0);
    CHECK_EQ(run_steps(m, fp, NULL, lp), 0);
    /* delegating changes nothing */
    CHECK(memcmp(lt, lp, sizeof(float) * nl) == 0);
    CHECK_EQ(trace_records(tr), (int64_t)N_TOKENS * L);
    CHECK_EQ(fx.spy.n, N_TOKENS * L);
    CHECK_EQ(fx.spy.calls, N_STEPS * L);

    size_t len;
    uint8_t *d = slurp(f, &len);
    REQUIRE(d);
    REQUIRE(len >= TRACE_FIXED_HEADER);
    CHECK(memcmp(d, TRACE_MAGIC, 8) == 0);
    CHECK_EQ(rd_u32(d + 8), 1);
    uint32_t hsize = rd_u32(d + 12), rsize = rd_u32(d + 28), mlen = rd_u32(d + 32);
    CHECK_EQ(hsize % 8, 0);
    CHECK(hsize >= TRACE_FIXED_HEADER + mlen);
    CHECK_EQ(rd_i32(d + 16), L);
    CHECK_EQ(rd_i32(d + 20), m->hp.n_expert);
    CHECK_EQ(rd_i32(d + 24), k);
    CHECK_EQ(rsize, 24 + 8 * k);
    CHECK_EQ(rd_u32(d + 36), 0);
    /* the metadata: JSON with the strings escaped */
    char *meta = calloc(1, mlen + 1);
    memcpy(meta, d + TRACE_FIXED_HEADER, mlen);
    CHECK_MSG(strstr(meta, "\"format\": \"moed routing trace\"") != NULL, "meta: %s", meta);
    CHECK_MSG(strstr(meta, "\"model\": \"tiny.gguf\"") != NULL, "meta: %s", meta);
    CHECK_MSG(strstr(meta, "\"argv\": [\"run\", \"-p\", \"say \\\"hi\\\"\\u000a\"]") != NULL,
              "meta: %s", meta);
    CHECK(meta[0] == '{' && meta[mlen - 1] == '}');
    free(meta);
    for (uint32_t i = TRACE_FIXED_HEADER + mlen; i < hsize; i++)
        CHECK_EQ(d[i], 0);
    REQUIRE(len == hsize + (size_t)rsize * N_TOKENS * (size_t)L);

    /* record by record: the spy's view, plus step, sequence, position, token */
    int r = 0;
    for (int s = 0; s < N_STEPS; s++)
        for (int32_t l = 0; l < L; l++)
            for (int32_t i = 0; i < steps[s].n; i++, r++) {
                const uint8_t *p = d + hsize + (size_t)r * rsize;
                const struct seen *sv = &fx.spy.v[r];
                CHECK_EQ(rd_i32(p + 0), s);
                CHECK_EQ(rd_i32(p + 4), i);
                CHECK_EQ(rd_i32(p + 8), steps[s].seq[i]);
                CHECK_EQ(rd_i32(p + 12), steps[s].pos[i]);
                CHECK_EQ(rd_i32(p + 16), steps[s].tok[i]);
                CHECK_EQ(rd_i32(p + 20), l);
                CHECK_EQ(sv->layer, l);
                CHECK_EQ(sv->index, i);
                CHECK_EQ(sv->call, s * L + l);
                float wsum = 0;
                for (int32_t j = 0; j < k; j++) {
                    CHECK_EQ(rd_i32(p + 24 + 4 * j), sv->ids[j]);
                    float w = rd_f32(p + 24 + 4 * (k + j));
                    CHECK(memcmp(&w, &sv->w[j], sizeof w) == 0);
                    wsum += w;
                }
                CHECK_NEAR(wsum, 1.0, 1e-5); /* qwen3moe renormalises */
            }
    free(d);
    CHECK_EQ(trace_close(tr, &e), 0);
    fclose(f);
    free(lt);
    free(lp);
    fwd_free(ft);
    fwd_free(fp);
    fixture_free(&fx);
}

TEST(trace_steps_without_batch_info)
{
    struct fixture fx;
    REQUIRE(fixture_init(&fx) == 0);
    const struct model *m = &fx.m;
    int32_t L = m->hp.n_layer, k = m->hp.n_expert_used;
    FILE *f = tmpfile();
    REQUIRE(f);
    struct moed_err e = {0};
    struct trace *tr;
    struct trace_opts to = opts_for(m, f, &fx.spy.ex);
    to.argc = 0;
    to.argv = NULL;
    to.model = to.arch = NULL;
    REQUIRE(trace_open(&tr, &to, &e) == 0);
    struct fwd *ft;
    REQUIRE(fwd_init(&ft, m, &(struct fwd_opts){.max_batch = 16, .exec = trace_exec(tr)}, &e) == 0);
    float *lt = malloc(sizeof(float) * (size_t)N_TOKENS * (size_t)m->hp.n_vocab);
    CHECK_EQ(run_steps(m, ft, NULL, lt), 0);
    size_t len;
    uint8_t *d = slurp(f, &len);
    REQUIRE(d);
    uint32_t hsize = rd_u32(d + 12), rsize = rd_u32(d + 28), mlen = rd_u32(d + 32);
    CHECK(mlen > 0 && memcmp(d + TRACE_FIXED_HEADER, "{\"format\"", 9) == 0);
    REQUIRE(len == hsize + (size_t)rsize * N_TOKENS * (size_t)L);
    int r = 0;
    for (int s = 0; s < N_STEPS; s++)
        for (int32_t l = 0; l < L; l++)
            for (int32_t i = 0; i < steps[s].n; i++, r++) {
                const uint8_t *p = d + hsize + (size_t)r * rsize;
                CHECK_EQ(rd_i32(p + 0), s); /* a new step when the layer goes back to 0 */
                CHECK_EQ(rd_i32(p + 4), i);
                CHECK_EQ(rd_i32(p + 8), -1);
                CHECK_EQ(rd_i32(p + 12), -1);
                CHECK_EQ(rd_i32(p + 16), -1);
                CHECK_EQ(rd_i32(p + 20), l);
                CHECK_EQ(rd_i32(p + 24), fx.spy.v[r].ids[0]);
                CHECK_EQ(rd_i32(p + 24 + 4 * (k - 1)), fx.spy.v[r].ids[k - 1]);
            }
    free(d);
    CHECK_EQ(trace_close(tr, &e), 0);
    fclose(f);
    free(lt);
    fwd_free(ft);
    fixture_free(&fx);
}

TEST(trace_write_failure)
{
    FILE *f = fopen("/dev/full", "w");
    if (!f)
        SKIP("no /dev/full");
    struct fixture fx;
    REQUIRE(fixture_init(&fx) == 0);
    const struct model *m = &fx.m;
    struct moed_err e = {0};
    struct trace *tr;
    /* an owned inner executor: freed by trace_close */
    struct moe_exec *cpu;
    struct moe_cpu_opts co = {.max_tok = 16,
                              .n_expert = m->hp.n_expert,
                              .n_used = m->hp.n_expert_used,
                              .n_embd = m->hp.n_embd,
                              .n_ff = m->hp.n_ff_exp};
    REQUIRE(moe_cpu_new(&cpu, &co, &e) == 0);
    struct trace_opts to = opts_for(m, f, cpu);
    to.own_inner = true;
    /* a small buffer (the header fits): fail within the steps, not only at the flush */
    static char vbuf[256];
    setvbuf(f, vbuf, _IOFBF, sizeof vbuf);
    int rc = trace_open(&tr, &to, &e);
    if (rc) { /* the header did not fit the buffer: failed at once, as it should */
        CHECK_EQ(rc, MOED_EIO);
        moe_exec_free(cpu);
    } else {
        struct fwd *ft;
        REQUIRE(fwd_init(&ft, m, &(struct fwd_opts){.max_batch = 16, .exec = trace_exec(tr)},
                         &e) == 0);
        float *lt = malloc(sizeof(float) * (size_t)N_TOKENS * (size_t)m->hp.n_vocab);
        CHECK_EQ(run_steps(m, ft, tr, lt), 0); /* the forward pass goes on */
        CHECK(trace_records(tr) < (int64_t)N_TOKENS * m->hp.n_layer);
        CHECK_EQ(trace_close(tr, &e), MOED_EIO);
        CHECK_MSG(strstr(e.msg, "write failed") != NULL, "%s", e.msg);
        free(lt);
        fwd_free(ft);
    }
    fclose(f);
    fixture_free(&fx);
}

TEST(trace_bad_options)
{
    struct fixture fx;
    REQUIRE(fixture_init(&fx) == 0);
    FILE *f = tmpfile();
    REQUIRE(f);
    struct moed_err e = {0};
    struct trace *tr = (struct trace *)1;
    struct trace_opts to = opts_for(&fx.m, f, &fx.spy.ex);
    to.n_used = to.n_expert + 1;
    CHECK_EQ(trace_open(&tr, &to, &e), MOED_EINVAL);
    CHECK(tr == NULL);
    to = opts_for(&fx.m, f, NULL);
    CHECK_EQ(trace_open(&tr, &to, &e), MOED_EINVAL);
    CHECK_EQ(ftell(f), 0); /* nothing written */
    /* a work item of another top-k is refused, before anything is written */
    to = opts_for(&fx.m, f, &fx.spy.ex);
    to.n_used = to.n_used + 1;
    REQUIRE(trace_open(&tr, &to, &e) == 0);
    long hdr = ftell(f);
    struct fwd *ft;
    REQUIRE(fwd_init(&ft, &fx.m, &(struct fwd_opts){.max_batch = 16, .exec = trace_exec(tr)},
                     &e) == 0);
    struct kv_seq kv;
    REQUIRE(kv_seq_init(&kv, &fx.m, 16, KT_F32, &e) == 0);
    struct kv_seq *seqs[1] = {&kv};
    int32_t t = 5, p = 0, s = 0;
    struct fwd_batch b = {1, &t, &p, &s, NULL};
    CHECK(fwd_step(ft, &b, seqs, 1, NULL, &e) != 0);
    CHECK_MSG(strstr(e.msg, "routing trace") != NULL, "%s", e.msg);
    CHECK_EQ(trace_records(tr), 0);
    CHECK_EQ(trace_close(tr, &e), 0);
    CHECK_EQ(ftell(f), hdr);
    CHECK_EQ(trace_close(NULL, &e), 0);
    kv_seq_free(&kv);
    fwd_free(ft);
    fclose(f);
    fixture_free(&fx);
}
