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
    calib_to_cost(r, &c);
    CHECK(!c.calibrated);
    CHECK(sched_cost_validate(&c, &e) == 0);
    CHECK(c.cpu_shared_gbs <= c.cpu_alone_gbs);
    char path[512];
    snprintf(path, sizeof path, "%s/calib_tiny.txt", test_tmp_dir());
    CHECK(sched_cost_save(&c, path, &e) == 0);
    struct sched_cost d;
    CHECK(sched_cost_load(&d, path, &e) == 0);
    CHECK_EQ(sched_cost_find_type(&d, "q8_0"), 0);
    CHECK_NEAR(d.type[0].cpu_us_tok, c.type[0].cpu_us_tok, 1e-12);
    free(r);
    model_close(&m);
    gguf_close(&g);
    free(buf);
}
