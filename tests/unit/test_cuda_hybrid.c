/*
 * The hybrid executor (sched/hybrid.h) inside the GPU forward pass, against
 * exact math and the all-GPU path, at expert budgets 0 (the minimum pool),
 * 25%, 50% and 100% (forced hybrid), under every cache policy, with static
 * placement, without prefetch, through the staging ring, and with cost
 * models that push every miss to the CPU or to loads.
 *
 * Runs of test_cuda.h's cuda_model_run: two sequences' prompts in one step
 * (tensor-core tiles of 64 on the GPU side), then batched decode (tiles of
 * 8).  The oracle is the CPU path on the dequantized file.  Hybrid logits
 * mix GPU experts (f32 activations) with CPU experts (Q8 activations), so
 * the bound is the prefill bound of test_cuda_model.c: no further from exact
 * math than twice the quantized CPU path (or 2%), and the same top token
 * wherever the oracle's margin is clear.  At 100% with every expert cached
 * and the plan sending all of them to the GPU, the grouping is the device's
 * own, so the logits must equal the all-GPU path's bit for bit (a cost
 * model where the CPU is slow makes the plan do that).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/types.h"
#include "model/forward.h"
#include "model/model.h"
#include "sched/hybrid.h"
#include "sched/pool.h"
#include "tests/unit/test_cuda.h"
#include "tests/unit/test_forward_tiny.h"
#include "tools/mkmodel.h"

enum { C_DEFAULT, C_CPU_CHEAP, C_LOADS_CHEAP };

struct hcase {
    const char *name;
    double frac;
    enum cache_policy policy;
    bool static_layers, no_prefetch, staging, force;
    int cost;
};

static void cost_make(struct sched_cost *c, int kind)
{
    sched_cost_default(c);
    if (kind == C_CPU_CHEAP) { /* the CPU wins every expert */
        c->type[0].cpu_us = 0.1;
        c->type[0].cpu_us_tok = 0.01;
        c->type[0].gpu_us = c->type[0].gpu_mma_us = 1000;
        c->load_us = 1000;
    } else if (kind == C_LOADS_CHEAP) { /* loading beats the CPU */
        c->type[0].cpu_us = 5000;
        c->type[0].cpu_us_tok = 500;
        c->type[0].gpu_us = c->type[0].gpu_mma_us = 1;
        c->type[0].gpu_us_tok = c->type[0].gpu_mma_us_tok = 0.1;
        c->load_us = 0.1;
        c->h2d_gbs = c->h2d_shared_gbs = 1000;
    }
}

TEST(cuda_hybrid_vs_exact)
{
    GPU_OR_SKIP();
    static const char *const cfg[][24] = {
        {"--preset", "tiny-qwen3moe", "--layers", "6", "--d-model", "512", "--heads", "8",
         "--kv-heads", "2", "--head-dim", "128", "--experts", "32", "--experts-used", "4",
         "--ff-exp", "256", "--type-experts", "Q4_K", "--type-attn", "Q8_0", NULL},
        {"--preset", "tiny-qwen2moe", "--layers", "4", "--d-model", "256", "--experts", "16",
         "--experts-used", "4", "--ff-exp", "256", "--ff-shexp", "512", "--type-experts", "Q5_K",
         "--type-attn", "Q6_K", "--type-output", "Q8_0", NULL},
    };
    static const struct hcase cases[] = {
        {"0% score", 0, CACHE_SCORE, false, false, false, false, C_DEFAULT},
        {"25% lru", 0.25, CACHE_LRU, false, false, false, false, C_DEFAULT},
        {"25% lfu", 0.25, CACHE_LFU, false, false, false, false, C_DEFAULT},
        {"25% score", 0.25, CACHE_SCORE, false, false, false, false, C_DEFAULT},
        {"50% score", 0.5, CACHE_SCORE, false, false, false, false, C_DEFAULT},
        {"50% lru, loads cheap", 0.5, CACHE_LRU, false, false, false, false, C_LOADS_CHEAP},
        {"25% score, CPU cheap", 0.25, CACHE_SCORE, false, false, false, false, C_CPU_CHEAP},
        {"25% static", 0.25, CACHE_SCORE, true, false, false, false, C_DEFAULT},
        {"25% no prefetch", 0.25, CACHE_SCORE, false, true, false, false, C_DEFAULT},
        {"25% staging, loads cheap", 0.25, CACHE_LFU, false, false, true, false, C_LOADS_CHEAP},
        {"100% forced", 1.0, CACHE_SCORE, false, false, false, true, C_LOADS_CHEAP},
    };
    enum { NC = sizeof cases / sizeof cases[0] };
    struct sched_pool *pool = NULL;
    struct moed_err e = {0};
    REQUIRE(sched_pool_init(&pool, &(struct sched_pool_opts){.nthreads = 4}, &e) == 0);
    uint64_t placed[3] = {0, 0, 0};
    for (size_t c = 0; c < sizeof cfg / sizeof cfg[0]; c++) {
        char path[512];
        snprintf(path, sizeof path, "%s/cuda-hybrid-%zu.gguf", test_tmp_dir(), c);
        int rc = tiny_mkmodel(path, cfg[c], &e);
        CHECK_MSG(rc == 0, "mkmodel %s: %s", cfg[c][1], e.msg);
        if (rc)
            break;
        struct model m, mf;
        struct gguf gf;
        uint8_t *buf = NULL;
        if ((rc = model_open(&m, path, &e))) {
            CHECK_MSG(0, "%s: %s", cfg[c][1], e.msg);
            break;
        }
        if ((rc = tiny_load_dequantized(path, &buf, &gf, &mf, &e))) {
            CHECK_MSG(0, "%s dequantized: %s", cfg[c][1], e.msg);
            model_close(&m);
            free(buf);
            break;
        }
        int V = m.hp.n_vocab;
        size_t nv = (size_t)CM_ROWS * V;
        float *exact = malloc(nv * sizeof(float)), *cpu = malloc(nv * sizeof(float));
        float *gpu = malloc(nv * sizeof(float)), *hy = malloc(nv * sizeof(float));
        struct hybrid_stats hs;
        fprintf(stderr, "    %s: reference runs ...\n", cfg[c][1]);
        rc = cuda_model_run(&mf, &(struct fwd_opts){.pool = pool}, false, exact, NULL, &e) ||
             cuda_model_run(&m, &(struct fwd_opts){.pool = pool}, false, cpu, NULL, &e) ||
             cuda_model_run(&m, &(struct fwd_opts){.gpu = true}, false, gpu, NULL, &e);
        CHECK_MSG(rc == 0, "%s: reference runs: %s", cfg[c][1], e.msg);
        double cpu_rel = rc ? 0 : cm_rel_rms(cpu, exact, nv);
        double range = rc ? 0 : cm_logit_range(exact, nv);
        for (int k = 0; k < NC && !rc; k++) {
            const struct hcase *hc = &cases[k];
            struct sched_cost cost;
            cost_make(&cost, hc->cost);
            struct hybrid_opts ho = {.budget_frac = hc->frac,
                                     .policy = hc->policy,
                                     .static_layers = hc->static_layers,
                                     .no_prefetch = hc->no_prefetch,
                                     .force_staging = hc->staging,
                                     .force = hc->force || hc->frac < 1,
                                     .cost = &cost};
            if (hc->frac == 0)
                ho.budget_bytes = 0; /* the minimum pool */
            fprintf(stderr, "    %s %s ...\n", cfg[c][1], hc->name);
            rc = cuda_model_run(&m, &(struct fwd_opts){.gpu = true, .pool = pool, .hybrid = &ho},
                                false, hy, &hs, &e);
            CHECK_MSG(rc == 0, "%s %s: %s", cfg[c][1], hc->name, e.msg);
            if (rc)
                break;
            double rel = cm_rel_rms(hy, exact, nv);
            int checked = 0, bad = 0;
            for (size_t r = 0; r < CM_ROWS; r++) {
                float mo, mh;
                int to = cm_argmax2(exact + r * V, V, &mo), th = cm_argmax2(hy + r * V, V, &mh);
                if (mo > 0.1 * range) {
                    checked++;
                    bad += to != th;
                }
            }
            uint64_t act = hs.total.cpu + hs.total.gpu_cached + hs.total.gpu_loaded;
            fprintf(stderr,
                    "    %s %-26s slots %4d: vs exact %.3g (CPU %.3g), top-1 %d/%d; experts "
                    "cpu %llu cached %llu loaded %llu; hits %llu misses %llu prefetches %llu "
                    "(hit %llu)\n",
                    cfg[c][1], hc->name, hs.n_slot, rel, cpu_rel, checked - bad, checked,
                    (unsigned long long)hs.total.cpu, (unsigned long long)hs.total.gpu_cached,
                    (unsigned long long)hs.total.gpu_loaded, (unsigned long long)hs.total.hits,
                    (unsigned long long)hs.total.misses, (unsigned long long)hs.total.prefetches,
                    (unsigned long long)hs.total.prefetch_hits);
            CHECK_MSG(hs.layer_calls == (uint64_t)m.hp.n_layer * (1 + CM_N_DEC),
                      "%s %s: the hybrid executor ran %llu layer steps", cfg[c][1], hc->name,
                      (unsigned long long)hs.layer_calls);
            CHECK_MSG(act == hs.total.hits + hs.total.misses,
                      "%s %s: %llu experts placed, %llu looked up", cfg[c][1], hc->name,
                      (unsigned long long)act,
                      (unsigned long long)(hs.total.hits + hs.total.misses));
            CHECK_MSG(rel <= fmax(2 * cpu_rel, 0.02), "%s %s: vs exact math %.3g, the CPU's %.3g",
                      cfg[c][1], hc->name, rel, cpu_rel);
            CHECK_MSG(bad == 0, "%s %s: %d clear top-1 choices differ", cfg[c][1], hc->name, bad);
            if (hc->cost == C_CPU_CHEAP)
                CHECK_MSG(hs.total.gpu_loaded == 0 && hs.total.gpu_cached == 0,
                          "%s %s: the GPU ran experts the CPU was cheaper for", cfg[c][1],
                          hc->name);
            if (hc->cost == C_LOADS_CHEAP && hc->frac < 1)
                CHECK_MSG(hs.total.gpu_loaded > 0 && (hc->frac < 0.5 || hs.total.cpu == 0),
                          "%s %s: misses not loaded (loaded %llu, cpu %llu)", cfg[c][1],
                          hc->name, (unsigned long long)hs.total.gpu_loaded,
                          (unsigned long long)hs.total.cpu);
            if (hc->static_layers)
                CHECK_MSG(hs.total.gpu_loaded == 0 && hs.total.loads == 0,
                          "%s %s: static placement loaded experts", cfg[c][1], hc->name);
            if (hc->staging)
                CHECK_MSG(!hs.registered, "%s %s: not staged", cfg[c][1], hc->name);
            if (hc->frac == 1.0) {
                CHECK_MSG(hs.total.misses == 0 && hs.total.cpu == 0,
                          "%s %s: %llu misses, %llu CPU experts at 100%%", cfg[c][1], hc->name,
                          (unsigned long long)hs.total.misses, (unsigned long long)hs.total.cpu);
                CHECK_MSG(!memcmp(hy, gpu, nv * sizeof(float)),
                          "%s %s: logits differ from the all-GPU path (rel %.3g)", cfg[c][1],
                          hc->name, cm_rel_rms(hy, gpu, nv));
            }
            placed[0] += hs.total.cpu;
            placed[1] += hs.total.gpu_cached;
            placed[2] += hs.total.gpu_loaded;
        }
        free(exact);
        free(cpu);
        free(gpu);
        free(hy);
        model_close(&mf);
        gguf_close(&gf);
        free(buf);
        model_close(&m);
        remove(path);
        if (rc)
            break;
    }
    CHECK_MSG(placed[0] && placed[1] && placed[2],
              "not every placement was exercised (cpu %llu, cached %llu, loaded %llu)",
              (unsigned long long)placed[0], (unsigned long long)placed[1],
              (unsigned long long)placed[2]);
    sched_pool_free(pool);
}

/* The executor refuses what it cannot run, with a message. */
TEST(cuda_hybrid_errors)
{
    GPU_OR_SKIP();
    char path[512];
    snprintf(path, sizeof path, "%s/cuda-hybrid-err.gguf", test_tmp_dir());
    static const char *const args[] = {"--preset", "tiny-qwen3moe", "--layers", "2", NULL};
    struct moed_err e = {0};
    REQUIRE(tiny_mkmodel(path, args, &e) == 0);
    struct model m;
    REQUIRE(model_open(&m, path, &e) == 0);
    struct fwd *f = NULL;
    struct hybrid_opts ho = {.budget_frac = 0.5, .policy = CACHE_BELADY, .force = true};
    CHECK(fwd_init(&f, &m, &(struct fwd_opts){.max_batch = 4, .gpu = true, .hybrid = &ho}, &e) ==
          MOED_EINVAL);
    CHECK(strstr(e.msg, "belady") != NULL);
    ho = (struct hybrid_opts){.budget_frac = 1.5, .force = true};
    CHECK(fwd_init(&f, &m, &(struct fwd_opts){.max_batch = 4, .gpu = true, .hybrid = &ho}, &e) ==
          MOED_EINVAL);
    /* not forced and the budget holds every expert: the all-GPU path */
    ho = (struct hybrid_opts){.budget_frac = 1.0};
    REQUIRE(fwd_init(&f, &m, &(struct fwd_opts){.max_batch = 4, .gpu = true, .hybrid = &ho}, &e) ==
            0);
    CHECK(fwd_hybrid(f) == NULL);
    fwd_free(f);
    ho = (struct hybrid_opts){.budget_frac = 0.5};
    REQUIRE(fwd_init(&f, &m, &(struct fwd_opts){.max_batch = 4, .gpu = true, .hybrid = &ho}, &e) ==
            0);
    CHECK(fwd_hybrid(f) != NULL);
    fwd_free(f);
    model_close(&m);
    remove(path);
}
