/* sched/calib: the weighted affine fit, the expert types of a model, and a
 * tiny CPU calibration whose cost model validates and round-trips. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/types.h"
#include "sched/calib.h"
#include "tests/unit/harness.h"
#include "tests/unit/test_forward_tiny.h"

TEST(calib_fit_exact)
{
    double x[5] = {1, 2, 4, 8, 16}, y[5];
    for (int i = 0; i < 5; i++)
        y[i] = 25.0 + 9.5 * x[i];
    struct calib_fit f;
    struct moed_err e = {0};
    REQUIRE(calib_fit_affine(x, y, 5, &f, &e) == 0);
    CHECK_NEAR(f.a, 25.0, 1e-9);
    CHECK_NEAR(f.b, 9.5, 1e-9);
    CHECK(f.worst < 1e-12);
}

TEST(calib_fit_relative_and_clamped)
{
    /* one outlier at the small end: relative weights keep it from being ignored */
    double x[4] = {1, 2, 4, 64}, y[4] = {12, 12, 14, 140};
    struct calib_fit f;
    struct moed_err e = {0};
    REQUIRE(calib_fit_affine(x, y, 4, &f, &e) == 0);
    CHECK(f.a >= 0 && f.b >= 0);
    CHECK(f.worst >= 0 && f.worst < 0.5);
    /* decreasing data: slope clamped to 0, the intercept refitted */
    double yd[4] = {50, 40, 30, 20};
    REQUIRE(calib_fit_affine(x, yd, 4, &f, &e) == 0);
    CHECK(f.b == 0 && f.a > 20 && f.a < 50);
    /* steep through the origin: intercept clamped to 0 */
    double ys[4] = {1, 3, 7, 127};
    REQUIRE(calib_fit_affine(x, ys, 4, &f, &e) == 0);
    CHECK(f.a >= 0 && f.b > 1);
    /* bad input */
    double yb[2] = {1, 0};
    CHECK(calib_fit_affine(x, yb, 2, &f, &e) == MOED_EINVAL);
    CHECK(calib_fit_affine(x, y, 1, &f, &e) == MOED_EINVAL);
}

TEST(calib_cpu_tiny)
{
    struct tiny_spec s = tiny_default(MODEL_ARCH_QWEN3MOE, KT_Q8_0);
    uint8_t *buf = NULL;
    struct gguf g;
    struct model m;
    struct moed_err e = {0};
    REQUIRE(tiny_load(&s, &buf, &g, &m, &e) == 0);
    struct calib_result *r = calloc(1, sizeof *r);
    REQUIRE(r);
    CHECK(calib_types(&m, r, &e) == 0);
    CHECK_EQ(r->ntypes, 1);
    CHECK(strcmp(r->type[0].name, "q8_0") == 0);
    CHECK_EQ(r->type[0].n_layer, s.n_layer);
    CHECK_EQ(r->type[0].bytes, 3 * kern_row_size(KT_Q8_0, s.n_embd) * (uint64_t)s.n_ff);
    CHECK(calib_cpu(&m, NULL, 0.02, r, NULL, &e) == 0);
    CHECK_MSG(r->cpu_alone_gbs > 0 && isfinite(r->cpu_alone_gbs), "%g", r->cpu_alone_gbs);
    for (int i = 0; i < CALIB_NTOK; i++)
        CHECK(r->type[0].cpu_us[i] > 0 && r->type[0].cpu_reps[i] >= 3);
    struct sched_cost c;
    CHECK(r->mma_applies); /* Q8_0 experts take tile 64 */
    calib_to_cost(r, &c);
    CHECK(!c.calibrated);
    CHECK(sched_cost_validate(&c, &e) == 0);
    CHECK(c.cpu_shared_gbs <= c.cpu_alone_gbs);
    /* no GPU: the defaults' tile-64 estimate scaled to the shape */
    CHECK(c.type[0].gpu_mma_us > 0 && c.type[0].gpu_mma_us_tok > 0);
    CHECK(c.type[0].gpu_mma_us < c.type[0].gpu_us); /* bytes scale both alike */
    char path[512];
    snprintf(path, sizeof path, "%s/calib_tiny.txt", test_tmp_dir());
    CHECK(sched_cost_save(&c, path, &e) == 0);
    struct sched_cost d;
    CHECK(sched_cost_load(&d, path, &e) == 0);
    CHECK_EQ(sched_cost_find_type(&d, "q8_0"), 0);
    CHECK_NEAR(d.type[0].cpu_us_tok, c.type[0].cpu_us_tok, 1e-12);
    CHECK(d.type[0].gpu_mma_us == c.type[0].gpu_mma_us);
    CHECK(d.type[0].gpu_mma_us_tok == c.type[0].gpu_mma_us_tok);
    free(r);
    model_close(&m);
    gguf_close(&g);
    free(buf);
}

TEST(calib_types_f32_no_mma)
{
    /* F32 experts never take tile 64 (fwd_gpu's expert_mma): 0 and 0 */
    struct tiny_spec s = tiny_default(MODEL_ARCH_QWEN3MOE, KT_F32);
    uint8_t *buf = NULL;
    struct gguf g;
    struct model m;
    struct moed_err e = {0};
    REQUIRE(tiny_load(&s, &buf, &g, &m, &e) == 0);
    struct calib_result *r = calloc(1, sizeof *r);
    REQUIRE(r);
    CHECK(calib_types(&m, r, &e) == 0);
    CHECK(!r->mma_applies);
    CHECK_MSG(strstr(r->mma_note, "F32") != NULL, "%s", r->mma_note);
    r->cpu_done = true; /* figures as if measured */
    r->cpu_alone_gbs = 10;
    r->type[0].cpu.a = 1;
    r->type[0].cpu.b = 2;
    struct sched_cost c;
    calib_to_cost(r, &c);
    CHECK(c.type[0].gpu_mma_us == 0 && c.type[0].gpu_mma_us_tok == 0);
    CHECK(c.type[0].gpu_us > 0);
    CHECK(sched_cost_validate(&c, &e) == 0);
    free(r);
    model_close(&m);
    gguf_close(&g);
    free(buf);
}

/* ---- the tile-64 segment of the cost model (sched/cost.h) ---- */

static char *read_text(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *buf = calloc(1, 65536);
    if (buf)
        buf[fread(buf, 1, 65535, f)] = 0;
    fclose(f);
    return buf;
}

TEST(cost_mma_default_and_round_trip)
{
    struct sched_cost c, d;
    sched_cost_default(&c);
    CHECK_NEAR(c.type[0].gpu_mma_us, 3.0, 0);
    CHECK_NEAR(c.type[0].gpu_mma_us_tok, 0.2, 0);
    CHECK_EQ(sched_cost_validate(&c, NULL), 0);
    /* a second type without the tile-64 figures, a third with only a slope */
    c.ntypes = 3;
    c.type[1] = c.type[0];
    snprintf(c.type[1].name, sizeof c.type[1].name, "q6_k");
    c.type[1].gpu_mma_us = c.type[1].gpu_mma_us_tok = 0;
    c.type[2] = c.type[0];
    snprintf(c.type[2].name, sizeof c.type[2].name, "q8_0");
    c.type[2].gpu_mma_us = 0;
    c.type[2].gpu_mma_us_tok = 1.0 / 3;
    c.type[0].gpu_mma_us = 2.0 / 7;
    char path[512];
    snprintf(path, sizeof path, "%s/cost_mma_round_trip.txt", test_tmp_dir());
    struct moed_err err = {0};
    REQUIRE(sched_cost_save(&c, path, &err) == 0);
    memset(&d, 0, sizeof d);
    REQUIRE(sched_cost_load(&d, path, &err) == 0);
    CHECK(memcmp(&c, &d, sizeof c) == 0);
    char *text = read_text(path);
    REQUIRE(text);
    CHECK(strstr(text, "type.q4_k.gpu_mma_us = ") != NULL);
    CHECK(strstr(text, "type.q4_k.gpu_mma_us_tok = 0.2") != NULL);
    CHECK(strstr(text, "type.q6_k.gpu_mma") == NULL); /* 0 and 0: not written */
    CHECK(strstr(text, "type.q8_0.gpu_mma_us = 0\n") != NULL); /* one non-zero: both */
    CHECK(strstr(text, "type.q8_0.gpu_mma_us_tok = ") != NULL);
    free(text);
}

TEST(cost_mma_old_file_loads)
{
    /* a file from before the tile-64 keys */
    static const char old[] = "calibrated = 1\n"
                              "load_us = 2.245\nh2d_gbs = 46.7\nh2d_shared_gbs = 44.5\n"
                              "cpu_alone_gbs = 64.4\ncpu_shared_gbs = 57.2\n"
                              "cpu_side_us = 17.1\ngpu_side_us = 8.8\n"
                              "type.q4_k.bytes = 2654208\ntype.q4_k.cpu_us = 32.7\n"
                              "type.q4_k.cpu_us_tok = 10.3\ntype.q4_k.gpu_us = 10.3\n"
                              "type.q4_k.gpu_us_tok = 1.12\n";
    struct sched_cost c;
    struct moed_err err = {0};
    REQUIRE(sched_cost_parse(&c, old, "old.cost", &err) == 0);
    CHECK(c.calibrated);
    CHECK_EQ(c.ntypes, 1);
    CHECK(c.type[0].gpu_mma_us == 0 && c.type[0].gpu_mma_us_tok == 0);
    CHECK_NEAR(c.type[0].gpu_us_tok, 1.12, 0);
    /* the prefill model of an old file is the one-expert model */
    struct sched_cost p;
    sched_cost_for_tile(&c, true, &p);
    CHECK(memcmp(&c, &p, sizeof c) == 0);
    /* and the keys parse when present */
    char text[1024];
    snprintf(text, sizeof text, "%stype.q4_k.gpu_mma_us = 2.5\ntype.q4_k.gpu_mma_us_tok = 0.125\n",
             old);
    REQUIRE(sched_cost_parse(&c, text, "new.cost", &err) == 0);
    CHECK_NEAR(c.type[0].gpu_mma_us, 2.5, 0);
    CHECK_NEAR(c.type[0].gpu_mma_us_tok, 0.125, 0);
}

TEST(cost_mma_bad_values)
{
    static const struct {
        const char *text, *want;
        int code;
    } cases[] = {
        {"type.a.bytes = 5\ntype.a.gpu_mma_us = -1\n", "type.a.gpu_mma_us", MOED_ERANGE},
        {"type.a.bytes = 5\ntype.a.gpu_mma_us_tok = -0.5\n", "type.a.gpu_mma_us_tok", MOED_ERANGE},
        {"type.a.bytes = 5\ntype.a.gpu_mma_us = inf\n", "type.a.gpu_mma_us", MOED_ERANGE},
        {"type.a.bytes = 5\ntype.a.gpu_mma_us_tok = nan\n", "type.a.gpu_mma_us_tok", MOED_ERANGE},
        {"type.a.bytes = 5\ntype.a.gpu_mma_us = fast\n", "type.a.gpu_mma_us", MOED_EINVAL},
        {"type.a.bytes = 5\ntype.a.gpu_mma_us_tok = 1x\n", "type.a.gpu_mma_us_tok", MOED_EINVAL},
        {"type.a.bytes = 5\ntype.a.gpu_mma = 1\n", "type.a.gpu_mma", MOED_ENOTFOUND},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct sched_cost c;
        sched_cost_default(&c);
        struct sched_cost before = c;
        struct moed_err err = {0};
        int rc = sched_cost_parse(&c, cases[i].text, "t.cost", &err);
        CHECK_MSG(rc == cases[i].code, "case %zu: rc %d want %d (%s)", i, rc, cases[i].code,
                  err.msg);
        CHECK_MSG(strstr(err.msg, cases[i].want) != NULL, "case %zu: '%s' lacks '%s'", i,
                  err.msg, cases[i].want);
        CHECK(memcmp(&c, &before, sizeof c) == 0);
    }
    /* validate catches them in a struct too */
    struct sched_cost c;
    struct moed_err err = {0};
    sched_cost_default(&c);
    c.type[0].gpu_mma_us_tok = -1;
    CHECK_EQ(sched_cost_validate(&c, &err), MOED_ERANGE);
    CHECK_MSG(strstr(err.msg, "type.q4_k.gpu_mma_us_tok") != NULL, "%s", err.msg);
    sched_cost_default(&c);
    c.type[0].gpu_mma_us = INFINITY;
    CHECK_EQ(sched_cost_validate(&c, &err), MOED_ERANGE);
    CHECK_MSG(strstr(err.msg, "type.q4_k.gpu_mma_us") != NULL, "%s", err.msg);
}

TEST(cost_for_tile)
{
    struct sched_cost c, o;
    sched_cost_default(&c);
    c.ntypes = 3;
    c.type[1] = c.type[0];
    snprintf(c.type[1].name, sizeof c.type[1].name, "q6_k");
    c.type[1].gpu_mma_us = c.type[1].gpu_mma_us_tok = 0; /* unknown */
    c.type[2] = c.type[0];
    snprintf(c.type[2].name, sizeof c.type[2].name, "q8_0");
    c.type[2].gpu_mma_us = 0; /* a slope only: counts as known */
    c.type[2].gpu_mma_us_tok = 0.25;
    /* decode: a plain copy */
    memset(&o, 0xa5, sizeof o);
    sched_cost_for_tile(&c, false, &o);
    CHECK(memcmp(&c, &o, sizeof c) == 0);
    /* prefill */
    sched_cost_for_tile(&c, true, &o);
    CHECK_NEAR(o.type[0].gpu_us, 3.0, 0);
    CHECK_NEAR(o.type[0].gpu_us_tok, 0.2, 0);
    CHECK_NEAR(sched_cost_gpu_us(&o, 0, 32), 3.0 + 0.2 * 32, 1e-12);
    CHECK_NEAR(o.type[1].gpu_us, c.type[1].gpu_us, 0); /* unknown: one-expert figures */
    CHECK_NEAR(o.type[1].gpu_us_tok, c.type[1].gpu_us_tok, 0);
    CHECK(o.type[2].gpu_us == 0);
    CHECK_NEAR(o.type[2].gpu_us_tok, 0.25, 0);
    /* everything else unchanged, the mma fields included */
    for (int t = 0; t < 3; t++) {
        CHECK(o.type[t].gpu_mma_us == c.type[t].gpu_mma_us);
        CHECK(o.type[t].gpu_mma_us_tok == c.type[t].gpu_mma_us_tok);
        CHECK(o.type[t].cpu_us == c.type[t].cpu_us && o.type[t].bytes == c.type[t].bytes);
    }
    CHECK(o.load_us == c.load_us && o.gpu_side_us == c.gpu_side_us && o.ntypes == 3);
    CHECK_EQ(sched_cost_validate(&o, NULL), 0);
    CHECK_NEAR(sched_cost_gpu_us(&c, 0, 32), 6.0 + 0.5 * 32, 1e-12); /* c untouched */
    /* in place, and twice is the same as once */
    struct sched_cost p = c;
    sched_cost_for_tile(&p, true, &p);
    sched_cost_for_tile(&p, true, &p);
    CHECK(memcmp(&p, &o, sizeof p) == 0);
}
