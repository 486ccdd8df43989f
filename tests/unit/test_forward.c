/*
 * The forward pass on tiny random models of every architecture (no
 * fixtures needed): batching must not change the numbers (two sequences
 * in one step = each alone, token by token = one sequence continuing while
 * the other prefills in the same step; with and without a thread pool),
 * and a step that does not fit the KV cache or breaks the position
 * rules fails before it changes anything.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/types.h"
#include "model/forward.h"
#include "tests/unit/harness.h"
#include "tests/unit/test_forward_tiny.h"

static const int32_t prompt_a[] = {5, 17, 3, 88, 42, 9, 60};
static const int32_t prompt_b[] = {71, 2, 33, 14};
#define LEN_A 7
#define LEN_B 4

/*
 * All prompt logits of A and B (rows in A-then-B order), in `split`
 * positions of A alone and then one step with the rest of A and all of B:
 * split 0 is both prompts in one step; split 4 is A in prefill, then A
 * continuing (3 tokens) while B prefills in the same step.
 */
static int run_together(const struct model *m, struct sched_pool *pool, uint32_t kvtype, int split,
                        float *logits)
{
    struct moed_err e = {0};
    struct fwd *f;
    struct kv_seq kv[2];
    if (fwd_init(&f, m, &(struct fwd_opts){.max_batch = 16, .pool = pool}, &e))
        return -1;
    kv_seq_init(&kv[0], m, 32, kvtype, &e);
    kv_seq_init(&kv[1], m, 32, kvtype, &e);
    int32_t tok[LEN_A + LEN_B], pos[LEN_A + LEN_B], seq[LEN_A + LEN_B];
    bool want[LEN_A + LEN_B];
    for (int i = 0; i < LEN_A + LEN_B; i++) {
        bool a = i < LEN_A;
        tok[i] = a ? prompt_a[i] : prompt_b[i - LEN_A];
        pos[i] = a ? i : i - LEN_A;
        seq[i] = a ? 0 : 1;
        want[i] = true;
    }
    struct kv_seq *seqs[2] = {&kv[0], &kv[1]};
    int rc = 0;
    if (split) {
        struct fwd_batch b1 = {split, tok, pos, seq, want};
        rc = fwd_step(f, &b1, seqs, 2, logits, &e);
    }
    struct fwd_batch b2 = {LEN_A + LEN_B - split, tok + split, pos + split, seq + split,
                           want + split};
    if (!rc)
        rc = fwd_step(f, &b2, seqs, 2, logits + (size_t)split * m->hp.n_vocab, &e);
    if (rc)
        fprintf(stderr, "    fwd_step: %s\n", e.msg);
    kv_seq_free(&kv[0]);
    kv_seq_free(&kv[1]);
    fwd_free(f);
    return rc;
}

/* The same logits, each sequence alone and one token per step. */
static int run_one_by_one(const struct model *m, uint32_t kvtype, float *logits)
{
    struct moed_err e = {0};
    struct fwd *f;
    if (fwd_init(&f, m, &(struct fwd_opts){.max_batch = 1}, &e))
        return -1;
    int rc = 0, nv = m->hp.n_vocab;
    for (int s = 0; s < 2 && !rc; s++) {
        struct kv_seq kv;
        kv_seq_init(&kv, m, 32, kvtype, &e);
        struct kv_seq *seqs[1] = {&kv};
        int len = s ? LEN_B : LEN_A;
        for (int i = 0; i < len && !rc; i++) {
            int32_t tok = s ? prompt_b[i] : prompt_a[i], pos = i, seq = 0;
            bool want = true;
            struct fwd_batch b = {1, &tok, &pos, &seq, &want};
            rc = fwd_step(f, &b, seqs, 1, logits + (size_t)((s ? LEN_A : 0) + i) * nv, &e);
        }
        kv_seq_free(&kv);
    }
    fwd_free(f);
    return rc;
}

static double max_abs_diff(const float *a, const float *b, size_t n)
{
    double mx = 0;
    for (size_t i = 0; i < n; i++)
        mx = fmax(mx, fabs((double)a[i] - b[i]));
    return mx;
}

static void check_batching(enum model_arch arch, uint32_t wtype, uint32_t kvtype)
{
    struct tiny_spec s = tiny_default(arch, wtype);
    uint8_t *buf;
    struct gguf g;
    struct model m;
    struct moed_err e = {0};
    int rc = tiny_load(&s, &buf, &g, &m, &e);
    CHECK_MSG(rc == 0, "%s: %s", model_arch_name(arch), e.msg);
    if (rc) {
        free(buf);
        return;
    }
    size_t n = (size_t)(LEN_A + LEN_B) * m.hp.n_vocab;
    float *l1 = malloc(n * sizeof(float)), *l2 = malloc(n * sizeof(float)),
          *l3 = malloc(n * sizeof(float)), *l4 = malloc(n * sizeof(float));
    struct sched_pool *pool = NULL;
    sched_pool_init(&pool, &(struct sched_pool_opts){.nthreads = 3, .spin_us = -1}, &e);
    CHECK_EQ(run_together(&m, NULL, kvtype, 0, l1), 0);
    CHECK_EQ(run_one_by_one(&m, kvtype, l2), 0);
    CHECK_EQ(run_together(&m, pool, kvtype, 0, l3), 0);
    CHECK_EQ(run_together(&m, pool, kvtype, 4, l4), 0);
    double range = 0;
    for (size_t i = 0; i < n; i++)
        range = fmax(range, fabs(l1[i]));
    double d12 = max_abs_diff(l1, l2, n), d13 = max_abs_diff(l1, l3, n),
           d14 = max_abs_diff(l1, l4, n);
    CHECK_MSG(d14 <= 1e-4 * fmax(range, 1.0), "%s %s: mixed prefill + decode step: %g",
              model_arch_name(arch), kern_type_name(wtype), d14);
    /* Batched and one-by-one may differ only in summation order (kern_matmul's
     * tiled vs streamed paths): measured 0 with the AVX2 and scalar kernels,
     * which sum in the same order; the bound leaves room for kernels that
     * do not. */
    CHECK_MSG(d12 <= 1e-4 * fmax(range, 1.0), "%s %s: batched vs one by one: %g (range %g)",
              model_arch_name(arch), kern_type_name(wtype), d12, range);
    /* Threads split rows, never a sum: identical. */
    CHECK_MSG(d13 == 0, "%s %s: 1 vs 3 threads: %g", model_arch_name(arch), kern_type_name(wtype),
              d13);
    CHECK(range > 0.01); /* the model does something */
    if (getenv("MOED_TEST_VERBOSE"))
        printf("    %s %s kv %s: batched vs one by one %.3g, range %.3g\n", model_arch_name(arch),
               kern_type_name(wtype), kern_type_name(kvtype), d12, range);
    sched_pool_free(pool);
    free(l1);
    free(l2);
    free(l3);
    free(l4);
    model_close(&m);
    gguf_close(&g);
    free(buf);
}

TEST(forward_batching_f32)
{
    for (int a = 0; a < MODEL_ARCH_COUNT; a++)
        check_batching((enum model_arch)a, KT_F32, KT_F32);
}

TEST(forward_batching_q8_0)
{
    for (int a = 0; a < MODEL_ARCH_COUNT; a++)
        check_batching((enum model_arch)a, KT_Q8_0, KT_F32);
}

TEST(forward_batching_kv_f16)
{
    for (int a = 0; a < MODEL_ARCH_COUNT; a++)
        check_batching((enum model_arch)a, KT_F32, KT_F16);
}

TEST(forward_kv_full)
{
    struct tiny_spec s = tiny_default(MODEL_ARCH_QWEN3MOE, KT_F32);
    uint8_t *buf;
    struct gguf g;
    struct model m;
    struct moed_err e = {0};
    REQUIRE(tiny_load(&s, &buf, &g, &m, &e) == 0);
    struct fwd *f;
    REQUIRE(fwd_init(&f, &m, &(struct fwd_opts){.max_batch = 8}, &e) == 0);
    struct kv_seq kv;
    REQUIRE(kv_seq_init(&kv, &m, 4, KT_F32, &e) == 0);
    struct kv_seq *seqs[1] = {&kv};
    int32_t tok[5] = {1, 2, 3, 4, 5}, pos[5] = {0, 1, 2, 3, 4}, seq[5] = {0};
    float *logits = malloc(sizeof(float) * 5 * (size_t)m.hp.n_vocab);
    bool want[5] = {0, 0, 0, 1, 1};

    /* five positions into a cache of four: refused, cache untouched */
    struct fwd_batch b = {5, tok, pos, seq, want};
    CHECK_EQ(fwd_step(f, &b, seqs, 1, logits, &e), MOED_ERANGE);
    CHECK_MSG(strstr(e.msg, "KV cache full") != NULL, "message: %s", e.msg);
    CHECK_EQ(kv.n, 0);
    /* four fit; the fifth, alone, does not */
    b.n = 4;
    CHECK_EQ(fwd_step(f, &b, seqs, 1, logits, &e), 0);
    CHECK_EQ(kv.n, 4);
    struct fwd_batch b5 = {1, &tok[4], &pos[4], seq, &want[4]};
    CHECK_EQ(fwd_step(f, &b5, seqs, 1, logits, &e), MOED_ERANGE);
    CHECK_MSG(strstr(e.msg, "KV cache full") != NULL, "message: %s", e.msg);
    CHECK_EQ(kv.n, 4);

    /* position rules: a gap, a repeat, a bad token id, a bad sequence */
    kv_seq_truncate(&kv, 2);
    int32_t gap = 3;
    struct fwd_batch bg = {1, tok, &gap, seq, NULL};
    CHECK_EQ(fwd_step(f, &bg, seqs, 1, NULL, &e), MOED_EINVAL);
    int32_t rep[2] = {1, 1};
    struct fwd_batch br = {2, tok, rep, seq, NULL};
    CHECK_EQ(fwd_step(f, &br, seqs, 1, NULL, &e), MOED_EINVAL);
    int32_t badtok = m.hp.n_vocab, p2 = 2;
    struct fwd_batch bt = {1, &badtok, &p2, seq, NULL};
    CHECK_EQ(fwd_step(f, &bt, seqs, 1, NULL, &e), MOED_EINVAL);
    int32_t badseq = 1;
    struct fwd_batch bs = {1, tok, &p2, &badseq, NULL};
    CHECK_EQ(fwd_step(f, &bs, seqs, 1, NULL, &e), MOED_EINVAL);
    CHECK_EQ(kv.n, 2);
    /* rewriting from position 1 is allowed and drops what followed */
    int32_t p1 = 1;
    struct fwd_batch bw = {1, tok, &p1, seq, NULL};
    CHECK_EQ(fwd_step(f, &bw, seqs, 1, NULL, &e), 0);
    CHECK_EQ(kv.n, 2);

    free(logits);
    kv_seq_free(&kv);
    fwd_free(f);
    model_close(&m);
    gguf_close(&g);
    free(buf);
}

/* An executor that checks what the forward pass hands over, then lets the
 * CPU executor do the work: the seam the hybrid scheduler will use. */
struct spy_exec {
    struct moe_exec ex;
    struct moe_exec *inner;
    int calls, max_layer, tokens_seen;
    bool bad;
};

static int spy_run(struct moe_exec *ex, const struct moe_work *w, struct moed_err *e)
{
    struct spy_exec *s = (struct spy_exec *)ex;
    s->calls++;
    s->tokens_seen += w->n_tok;
    if (w->experts->layer > s->max_layer)
        s->max_layer = w->experts->layer;
    for (int32_t t = 0; t < w->n_tok; t++) {
        float sum = 0;
        for (int32_t j = 0; j < w->n_used; j++) {
            int32_t id = w->ids[t * w->n_used + j];
            s->bad |= id < 0 || id >= w->experts->n_expert;
            for (int32_t q = 0; q < j; q++) /* distinct experts, by falling weight */
                s->bad |= w->ids[t * w->n_used + q] == id ||
                          w->weights[t * w->n_used + q] < w->weights[t * w->n_used + j];
            sum += w->weights[t * w->n_used + j];
        }
        s->bad |= fabsf(sum - 1.0f) > 1e-5f; /* qwen3moe renormalises */
    }
    return moe_exec_run(s->inner, w, e);
}

static void spy_free(struct moe_exec *ex)
{
    (void)ex;
}

TEST(forward_custom_executor)
{
    struct tiny_spec s = tiny_default(MODEL_ARCH_QWEN3MOE, KT_Q8_0);
    uint8_t *buf;
    struct gguf g;
    struct model m;
    struct moed_err e = {0};
    REQUIRE(tiny_load(&s, &buf, &g, &m, &e) == 0);
    struct spy_exec spy = {.ex = {.name = "spy", .run = spy_run, .free = spy_free}};
    struct moe_cpu_opts co = {.max_tok = 16,
                              .n_used = m.hp.n_expert_used,
                              .n_embd = m.hp.n_embd,
                              .n_ff = m.hp.n_ff_exp}; /* n_expert 0: sized on first use */
    REQUIRE(moe_cpu_new(&spy.inner, &co, &e) == 0);
    struct fwd *f1, *f2;
    REQUIRE(fwd_init(&f1, &m, &(struct fwd_opts){.max_batch = 16, .exec = &spy.ex}, &e) == 0);
    REQUIRE(fwd_init(&f2, &m, &(struct fwd_opts){.max_batch = 16}, &e) == 0);
    float *l1 = malloc(sizeof(float) * LEN_A * (size_t)m.hp.n_vocab);
    float *l2 = malloc(sizeof(float) * LEN_A * (size_t)m.hp.n_vocab);
    int32_t pos[LEN_A], seq[LEN_A] = {0};
    bool want[LEN_A];
    for (int i = 0; i < LEN_A; i++) {
        pos[i] = i;
        want[i] = true;
    }
    struct fwd_batch b = {LEN_A, prompt_a, pos, seq, want};
    for (int k = 0; k < 2; k++) {
        struct kv_seq kv;
        REQUIRE(kv_seq_init(&kv, &m, 16, KT_F32, &e) == 0);
        struct kv_seq *seqs[1] = {&kv};
        CHECK_EQ(fwd_step(k ? f2 : f1, &b, seqs, 1, k ? l2 : l1, &e), 0);
        kv_seq_free(&kv);
    }
    CHECK_EQ(spy.calls, m.hp.n_layer);
    CHECK_EQ(spy.max_layer, m.hp.n_layer - 1);
    CHECK_EQ(spy.tokens_seen, LEN_A * m.hp.n_layer);
    CHECK(!spy.bad);
    CHECK(memcmp(l1, l2, sizeof(float) * LEN_A * (size_t)m.hp.n_vocab) == 0);
    free(l1);
    free(l2);
    fwd_free(f1); /* does not free an executor it was given */
    fwd_free(f2);
    moe_exec_free(spy.inner);
    model_close(&m);
    gguf_close(&g);
    free(buf);
}
