/* Sampling: each stage of the chain on small hand-made distributions,
 * determinism of the seeded generator, and log-probabilities. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model/sample.h"
#include "tests/unit/harness.h"

static int draw_counts(struct sample_params p, const float *logits, int n, int draws, int *count,
                       const int32_t *hist, int n_hist)
{
    struct sampler s;
    struct moed_err e = {0};
    if (sampler_init(&s, &p, n, &e))
        return -1;
    memset(count, 0, (size_t)n * sizeof *count);
    struct sample_result r;
    for (int i = 0; i < draws; i++) {
        sampler_sample(&s, logits, hist, n_hist, &r);
        count[r.token]++;
    }
    sampler_free(&s);
    return 0;
}

TEST(sample_greedy_argmax_and_ties)
{
    float l[5] = {0.1f, 3.0f, -1.0f, 3.0f, 2.9f};
    int c[5];
    REQUIRE(draw_counts(sample_params_default(), l, 5, 3, c, NULL, 0) == 0);
    CHECK_EQ(c[1], 3); /* tie between 1 and 3 goes to the lower id */
}

TEST(sample_distribution_matches_softmax)
{
    float l[3] = {logf(0.5f), logf(0.3f), logf(0.2f)};
    struct sample_params p = sample_params_default();
    p.temperature = 1.0f;
    p.seed = 42;
    int c[3], n = 40000;
    REQUIRE(draw_counts(p, l, 3, n, c, NULL, 0) == 0);
    /* 5 sigma of a binomial with n = 40000 is < 0.013 */
    CHECK_NEAR(c[0] / (double)n, 0.5, 0.013);
    CHECK_NEAR(c[1] / (double)n, 0.3, 0.013);
    CHECK_NEAR(c[2] / (double)n, 0.2, 0.013);
}

TEST(sample_temperature_sharpens)
{
    float l[2] = {logf(0.6f), logf(0.4f)};
    struct sample_params p = sample_params_default();
    p.temperature = 0.5f; /* p ~ 0.6^2 : 0.4^2 = 0.692 : 0.308 */
    p.seed = 7;
    int c[2], n = 40000;
    REQUIRE(draw_counts(p, l, 2, n, c, NULL, 0) == 0);
    CHECK_NEAR(c[0] / (double)n, 0.36 / 0.52, 0.013);
}

TEST(sample_top_k_top_p_min_p)
{
    float l[4] = {logf(0.5f), logf(0.3f), logf(0.15f), logf(0.05f)};
    struct sample_params p = sample_params_default();
    p.temperature = 1.0f;
    p.seed = 1;
    int c[4], n = 20000;
    p.top_k = 1;
    REQUIRE(draw_counts(p, l, 4, 200, c, NULL, 0) == 0);
    CHECK_EQ(c[0], 200);
    p.top_k = 0;
    p.top_p = 0.7f; /* 0.5 < 0.7 <= 0.8: keeps {0, 1} */
    REQUIRE(draw_counts(p, l, 4, n, c, NULL, 0) == 0);
    CHECK_EQ(c[2] + c[3], 0);
    CHECK_NEAR(c[0] / (double)n, 0.5 / 0.8, 0.02);
    p.top_p = 1.0f;
    p.min_p = 0.35f; /* keeps p >= 0.175: {0, 1} */
    REQUIRE(draw_counts(p, l, 4, n, c, NULL, 0) == 0);
    CHECK_EQ(c[2] + c[3], 0);
    CHECK(c[1] > 0);
    p.min_p = 0.0f;
    p.top_k = 3;
    p.top_p = 0.9f; /* after top-k the mass is 0.95; 0.9*0.95 = 0.855 > 0.8: keeps 3 */
    REQUIRE(draw_counts(p, l, 4, n, c, NULL, 0) == 0);
    CHECK_EQ(c[3], 0);
    CHECK(c[2] > 0);
}

TEST(sample_wide_nucleus_widens_window)
{
    /* a flat distribution over 4000 tokens: the nucleus of 0.5 is 2000
     * tokens, far beyond the first 256-wide window; equal logits rank by id */
    int n = 4000;
    float *l = malloc(n * sizeof *l);
    int *c = malloc(n * sizeof *c);
    for (int i = 0; i < n; i++)
        l[i] = 1.0f;
    struct sample_params p = sample_params_default();
    p.temperature = 1.0f;
    p.top_p = 0.5f;
    p.seed = 3;
    REQUIRE(draw_counts(p, l, n, 3000, c, NULL, 0) == 0);
    int above = 0, hi = 0;
    for (int i = 0; i < n; i++) {
        if (c[i] && i >= 2000)
            above++;
        if (c[i] && i > hi)
            hi = i;
    }
    CHECK_EQ(above, 0);
    CHECK(hi > 1700); /* the whole nucleus is reachable, not just the window */
    free(l);
    free(c);
}

TEST(sample_penalties)
{
    float l[3] = {2.0f, 1.9f, -1.0f};
    int32_t hist[3] = {0, 0, 2};
    struct sample_params p = sample_params_default();
    int c[3];
    p.repeat_penalty = 1.1f; /* 2.0 / 1.1 = 1.82 < 1.9 */
    REQUIRE(draw_counts(p, l, 3, 1, c, hist, 3) == 0);
    CHECK_EQ(c[1], 1);
    p.repeat_penalty = 1.0f;
    p.frequency_penalty = 0.04f; /* 2.0 - 2 * 0.04 = 1.92 > 1.9 */
    REQUIRE(draw_counts(p, l, 3, 1, c, hist, 3) == 0);
    CHECK_EQ(c[0], 1);
    p.frequency_penalty = 0.06f; /* 2.0 - 0.12 = 1.88 < 1.9 */
    REQUIRE(draw_counts(p, l, 3, 1, c, hist, 3) == 0);
    CHECK_EQ(c[1], 1);
    p.frequency_penalty = 0.0f;
    p.presence_penalty = 0.11f; /* once, however often: 1.89 < 1.9 */
    REQUIRE(draw_counts(p, l, 3, 1, c, hist, 3) == 0);
    CHECK_EQ(c[1], 1);
    p.penalty_last_n = 1; /* only token 2 is in the window now */
    REQUIRE(draw_counts(p, l, 3, 1, c, hist, 3) == 0);
    CHECK_EQ(c[0], 1);
}

TEST(sample_seed_determinism)
{
    int n = 1000;
    float *l = malloc(n * sizeof *l);
    srand(5);
    for (int i = 0; i < n; i++)
        l[i] = (float)rand() / RAND_MAX * 4.0f;
    struct sample_params p = sample_params_default();
    p.temperature = 0.8f;
    p.top_p = 0.95f;
    p.seed = 1234;
    int32_t a[64], b[64], d[64];
    struct sampler s;
    struct sample_result r;
    for (int run = 0; run < 3; run++) {
        p.seed = run == 2 ? 999 : 1234;
        REQUIRE(sampler_init(&s, &p, n, NULL) == 0);
        for (int i = 0; i < 64; i++) {
            sampler_sample(&s, l, NULL, 0, &r);
            (run == 0 ? a : run == 1 ? b : d)[i] = r.token;
        }
        sampler_free(&s);
    }
    CHECK(memcmp(a, b, sizeof a) == 0);
    CHECK(memcmp(a, d, sizeof a) != 0);
    free(l);
}

TEST(sample_logprobs)
{
    float l[4] = {1.0f, 3.0f, 2.0f, 0.5f};
    struct sample_params p = sample_params_default();
    p.n_logprobs = 3;
    struct sampler s;
    struct sample_result r;
    REQUIRE(sampler_init(&s, &p, 4, NULL) == 0);
    sampler_sample(&s, l, NULL, 0, &r);
    sampler_free(&s);
    double z = exp(1.0) + exp(3.0) + exp(2.0) + exp(0.5);
    CHECK_EQ(r.token, 1);
    CHECK_NEAR(r.logprob, 3.0 - log(z), 1e-5);
    REQUIRE(r.n_top == 3);
    CHECK_EQ(r.top[0].token, 1);
    CHECK_EQ(r.top[1].token, 2);
    CHECK_EQ(r.top[2].token, 0);
    CHECK_NEAR(r.top[1].logprob, 2.0 - log(z), 1e-5);
}

TEST(sample_logprob_only_when_asked)
{
    float l[3] = {0.0f, 2.0f, 1.0f};
    double z = exp(0.0) + exp(2.0) + exp(1.0);
    struct sample_params p = sample_params_default();
    struct sampler s;
    struct sample_result r;
    REQUIRE(sampler_init(&s, &p, 3, NULL) == 0);
    sampler_sample(&s, l, NULL, 0, &r);
    sampler_free(&s);
    CHECK_EQ(r.token, 1);
    CHECK(r.logprob == 0.0f && r.n_top == 0); /* nobody asked: no vocabulary pass */
    p.logprobs = true;
    p.temperature = 0.5f;
    p.seed = 9;
    REQUIRE(sampler_init(&s, &p, 3, NULL) == 0);
    sampler_sample(&s, l, NULL, 0, &r);
    sampler_free(&s);
    CHECK_NEAR(r.logprob, l[r.token] - log(z), 1e-5);
    CHECK_EQ(r.n_top, 0);
}

TEST(sample_params_rejected)
{
    struct sample_params p = sample_params_default();
    struct moed_err e = {0};
    p.top_p = 0.0f;
    CHECK(sample_params_check(&p, &e) == MOED_ERANGE && strstr(e.msg, "top_p"));
    p = sample_params_default();
    p.temperature = NAN;
    CHECK(sample_params_check(&p, &e) == MOED_ERANGE && strstr(e.msg, "temperature"));
    p = sample_params_default();
    p.n_logprobs = 21;
    CHECK(sample_params_check(&p, &e) == MOED_ERANGE && strstr(e.msg, "logprobs"));
    p = sample_params_default();
    p.top_k = -1;
    CHECK(sample_params_check(&p, &e) == MOED_ERANGE && strstr(e.msg, "top_k"));
}
