/*
 * moe_cpu_rows (model/moe.h): the CPU executor's part of a split layer.
 * Its per-row outputs, weighted and summed per token in slot order, must
 * give exactly what the executor's own run gives for the whole layer; a
 * subset of the experts (the hybrid engine's CPU share) must give exactly
 * those experts' rows; bad groups and rows are refused with a message.
 */
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/types.h"
#include "model/moe.h"
#include "sched/pool.h"
#include "tests/unit/harness.h"
#include "tests/unit/test_forward_tiny.h"

static uint32_t rnd(uint64_t *s)
{
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(*s >> 33);
}

TEST(moe_cpu_rows_match_run)
{
    struct tiny_spec sp = tiny_default(MODEL_ARCH_QWEN3MOE, KT_Q8_0);
    sp.n_expert = 16;
    sp.n_used = 4;
    sp.n_embd = 128;
    sp.n_ff = 64;
    uint8_t *buf = NULL;
    struct gguf g;
    struct model m;
    struct moed_err e = {0};
    REQUIRE(tiny_load(&sp, &buf, &g, &m, &e) == 0);
    struct moe_experts x;
    moe_experts_of_layer(&m, 1, &x);
    enum { T = 7, K = 4 };
    int32_t d = sp.n_embd, E = sp.n_expert;
    struct sched_pool *pool = NULL;
    REQUIRE(sched_pool_init(&pool, &(struct sched_pool_opts){.nthreads = 2}, &e) == 0);
    struct moe_exec *ex = NULL;
    REQUIRE(moe_cpu_new(&ex, &(struct moe_cpu_opts){.pool = pool, .max_tok = T, .n_expert = E,
                                                    .n_used = K, .n_embd = d, .n_ff = sp.n_ff},
                        &e) == 0);
    float *xin = malloc(sizeof(float) * T * d), *out = malloc(sizeof(float) * T * d);
    float *y = malloc(sizeof(float) * T * K * d), *sum = malloc(sizeof(float) * T * d);
    int32_t ids[T * K], row_tok[T * K], row_of[T * K];
    float w[T * K];
    uint64_t s = 42;
    for (int i = 0; i < T * d; i++)
        xin[i] = (float)((int)(rnd(&s) % 2001) - 1000) / 500.0f;
    for (int t = 0; t < T; t++)
        for (int j = 0; j < K; j++) {
            int32_t id;
            bool dup;
            do { /* distinct experts per token, as routing gives */
                id = (int32_t)(rnd(&s) % (uint32_t)E);
                dup = false;
                for (int q = 0; q < j; q++)
                    dup |= ids[t * K + q] == id;
            } while (dup);
            ids[t * K + j] = id;
            w[t * K + j] = (float)(rnd(&s) % 1000) / 1000.0f;
        }
    struct moe_work wk = {.experts = &x, .n_tok = T, .n_used = K, .x = xin, .ids = ids,
                          .weights = w, .out = out};
    REQUIRE(moe_exec_run(ex, &wk, &e) == 0);

    /* every pair, grouped by expert then token (as the executor groups them) */
    struct moe_rows_group grp[16];
    int ng = 0, r = 0;
    for (int32_t id = 0; id < E; id++) {
        int first = r;
        for (int t = 0; t < T; t++)
            for (int j = 0; j < K; j++)
                if (ids[t * K + j] == id) {
                    row_tok[r] = t;
                    row_of[t * K + j] = r++;
                }
        if (r > first)
            grp[ng++] = (struct moe_rows_group){.expert = id, .first = first, .n = r - first};
    }
    REQUIRE(moe_cpu_rows(ex, &x, xin, T, row_tok, r, grp, ng, y, &e) == 0);
    for (int t = 0; t < T; t++)
        for (int c = 0; c < d; c++) {
            float o = 0;
            for (int j = 0; j < K; j++)
                o += w[t * K + j] * y[(size_t)row_of[t * K + j] * d + c];
            sum[t * d + c] = o;
        }
    CHECK_MSG(!memcmp(sum, out, sizeof(float) * T * d),
              "rows weighted and summed differ from the executor's run");

    /* a subset: the odd experts only, rows renumbered from 0 */
    float *y2 = malloc(sizeof(float) * T * K * d);
    struct moe_rows_group g2[16];
    int32_t tok2[T * K], map2[T * K];
    int ng2 = 0, r2 = 0;
    for (int i = 0; i < ng; i++) {
        if (!(grp[i].expert & 1))
            continue;
        g2[ng2++] = (struct moe_rows_group){.expert = grp[i].expert, .first = r2, .n = grp[i].n};
        for (int q = 0; q < grp[i].n; q++) {
            tok2[r2] = row_tok[grp[i].first + q];
            map2[r2++] = grp[i].first + q;
        }
    }
    REQUIRE(moe_cpu_rows(ex, &x, xin, T, tok2, r2, g2, ng2, y2, &e) == 0);
    bool same = true;
    for (int i = 0; i < r2; i++)
        same &= !memcmp(y2 + (size_t)i * d, y + (size_t)map2[i] * d, sizeof(float) * d);
    CHECK_MSG(same, "a subset of the experts gives other rows than the whole layer");

    /* refused: a gap between groups, a token out of range, an expert out of range */
    struct moe_rows_group bad[2] = {{.expert = 1, .first = 0, .n = 1},
                                    {.expert = 2, .first = 2, .n = 1}};
    int32_t tk[3] = {0, 0, 0};
    CHECK(moe_cpu_rows(ex, &x, xin, T, tk, 3, bad, 2, y2, &e) == MOED_EINVAL);
    CHECK(strstr(e.msg, "group 1") != NULL);
    struct moe_rows_group one = {.expert = 1, .first = 0, .n = 1};
    int32_t tbad = T;
    CHECK(moe_cpu_rows(ex, &x, xin, T, &tbad, 1, &one, 1, y2, &e) == MOED_EINVAL);
    CHECK(strstr(e.msg, "token") != NULL);
    struct moe_rows_group ebad = {.expert = E, .first = 0, .n = 1};
    CHECK(moe_cpu_rows(ex, &x, xin, T, tk, 1, &ebad, 1, y2, &e) == MOED_EINVAL);

    free(y2);
    free(xin);
    free(out);
    free(y);
    free(sum);
    moe_exec_free(ex);
    sched_pool_free(pool);
    model_close(&m);
    gguf_close(&g);
    free(buf);
}
