/*
 * The all-GPU forward pass against the CPU forward pass on mid-size random
 * models written by moed-mkmodel (k-quant, legacy-quant and BF16 weights
 * over all four architectures): two sequences, prompts of P_LEN tokens then
 * N_DEC decode steps with both sequences batched.
 *
 * The oracle is the CPU path on the same file with every quantized tensor
 * dequantized to F32 (exact math on exactly the weights the file holds):
 *   - fed one token per sequence per step (every GPU step on the f32
 *     matvec path), the GPU must agree with it to float rounding: relative
 *     rms of the logits' difference <= 1e-4;
 *   - with the prompts prefilled in one step (bf16 tensor cores on the GPU,
 *     Q8_0/Q8_K activations on the quantized CPU path), the GPU must be no
 *     further from it than twice the quantized CPU path is (or 2%), and
 *     agree on the top token wherever the oracle's margin exceeds 10% of
 *     the logits' range.  Random-weight models amplify small differences
 *     where routing flips, which is why the bound is relative to the CPU's
 *     own rounding.
 * Also: decode replayed from a CUDA graph gives exactly the logits of the
 * same steps launched one kernel at a time.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/types.h"
#include "model/forward.h"
#include "model/model.h"
#include "tests/unit/test_cuda.h"
#include "tests/unit/test_forward_tiny.h"
#include "tools/mkmodel.h"

#define P_LEN CM_P_LEN
#define N_DEC CM_N_DEC
#define N_SEQ CM_N_SEQ

static int run(const struct model *m, bool gpu, bool no_graph, bool stepwise, float *out,
               struct moed_err *e)
{
    return cuda_model_run(m, &(struct fwd_opts){.gpu = gpu, .gpu_no_graph = no_graph}, stepwise,
                          out, NULL, e);
}

TEST(cuda_model_vs_cpu)
{
    GPU_OR_SKIP();
    static const char *const cfg[][24] = {
        {"--preset", "tiny-qwen3moe", "--layers", "6", "--d-model", "512", "--heads", "8",
         "--kv-heads", "2", "--head-dim", "128", "--experts", "32", "--experts-used", "4",
         "--ff-exp", "256", "--type-experts", "Q4_K", "--type-attn", "Q8_0", NULL},
        {"--preset", "tiny-qwen2moe", "--layers", "4", "--d-model", "256", "--experts", "16",
         "--experts-used", "4", "--ff-exp", "256", "--ff-shexp", "512", "--type-experts", "Q5_K",
         "--type-attn", "Q6_K", "--type-output", "Q8_0", NULL},
        {"--preset", "tiny-mixtral", "--layers", "4", "--d-model", "256", "--experts", "8",
         "--experts-used", "2", "--ff", "512", "--type-experts", "Q3_K", "--type-attn", "Q4_0",
         "--type-output", "Q5_0", NULL},
        {"--preset", "tiny-mixtral", "--layers", "4", "--d-model", "256", "--experts", "8",
         "--experts-used", "2", "--ff", "512", "--type-experts", "Q3_K", "--type-attn", "Q8_0",
         "--type-output", "Q8_0", NULL},
        {"--preset", "tiny-mixtral", "--layers", "4", "--d-model", "256", "--experts", "8",
         "--experts-used", "2", "--ff", "512", "--type-experts", "Q4_K", "--type-attn", "Q4_0",
         "--type-output", "Q5_0", NULL},
        {"--preset", "tiny-olmoe", "--layers", "4", "--d-model", "256", "--experts", "16",
         "--experts-used", "4", "--ff", "256", "--type-experts", "Q2_K", "--type-attn", "Q4_1",
         "--type-embd", "Q5_1", "--type-output", "BF16", NULL},
    };
    for (size_t c = 0; c < sizeof cfg / sizeof cfg[0]; c++) {
        char path[512];
        snprintf(path, sizeof path, "%s/cuda-mid-%zu.gguf", test_tmp_dir(), c);
        struct moed_err e = {0};
        int rc = tiny_mkmodel(path, cfg[c], &e);
        CHECK_MSG(rc == 0, "mkmodel %s: %s", cfg[c][1], e.msg);
        if (rc)
            return;
        struct model m, mf;
        struct gguf gf;
        uint8_t *buf = NULL;
        rc = model_open(&m, path, &e);
        CHECK_MSG(rc == 0, "%s: %s", cfg[c][1], e.msg);
        if (rc)
            return;
        rc = tiny_load_dequantized(path, &buf, &gf, &mf, &e);
        CHECK_MSG(rc == 0, "%s dequantized: %s", cfg[c][1], e.msg);
        if (rc) {
            model_close(&m);
            free(buf);
            return;
        }
        int V = m.hp.n_vocab;
        size_t n_rows = (size_t)N_SEQ * P_LEN + (size_t)N_DEC * N_SEQ, nb = n_rows * V * sizeof(float);
        /* [0] oracle stepwise, [1] GPU stepwise, [2] oracle prefill, [3] CPU quantized prefill,
         * [4] GPU prefill, [5] GPU prefill without graphs */
        float *L[6];
        for (int i = 0; i < 6; i++)
            L[i] = malloc(nb);
        const char *what[6] = {"CPU F32 stepwise", "GPU stepwise", "CPU F32", "CPU", "GPU",
                               "GPU without graphs"};
        rc = 0;
        for (int i = 0; i < 6 && !rc; i++) {
            const struct model *mm = (i == 0 || i == 2) ? &mf : &m;
            bool gpu = i == 1 || i >= 4;
            rc = run(mm, gpu, i == 5, i < 2, L[i], &e);
            CHECK_MSG(rc == 0, "%s %s: %s", cfg[c][1], what[i], e.msg);
        }
        if (!rc) {
            double step_rel = cm_rel_rms(L[1], L[0], n_rows * V);
            double cpu_rel = cm_rel_rms(L[3], L[2], n_rows * V);
            double gpu_rel = cm_rel_rms(L[4], L[2], n_rows * V);
            int checked = 0, bad = 0;
            double range = cm_logit_range(L[2], n_rows * V);
            for (size_t r = 0; r < n_rows; r++) {
                float mo, mg;
                int to = cm_argmax2(L[2] + r * V, V, &mo), tg = cm_argmax2(L[4] + r * V, V, &mg);
                if (mo > 0.1 * range) {
                    checked++;
                    bad += to != tg;
                }
            }
            fprintf(stderr,
                    "    %s (experts %s, attn %s, output %s): vs exact math: GPU stepwise %.2e, "
                    "GPU prefill %.3g, CPU prefill %.3g (relative rms); top-1 %d/%d on clear "
                    "margins\n",
                    cfg[c][1], cm_arg_after(cfg[c], "--type-experts"),
                    cm_arg_after(cfg[c], "--type-attn"), cm_arg_after(cfg[c], "--type-output"),
                    step_rel, gpu_rel, cpu_rel, checked - bad, checked);
            CHECK_MSG(step_rel <= 1e-4, "%s: GPU stepwise vs exact math: relative rms %.3g",
                      cfg[c][1], step_rel);
            CHECK_MSG(gpu_rel <= fmax(2 * cpu_rel, 0.02),
                      "%s: GPU prefill vs exact math %.3g, the CPU's %.3g", cfg[c][1], gpu_rel,
                      cpu_rel);
            CHECK_MSG(bad == 0, "%s: %d clear top-1 choices differ", cfg[c][1], bad);
            size_t first_dec = (size_t)N_SEQ * P_LEN * V;
            CHECK_MSG(!memcmp(L[4] + first_dec, L[5] + first_dec,
                              (n_rows * V - first_dec) * sizeof(float)),
                      "%s: decode logits differ between graph replay and direct launches",
                      cfg[c][1]);
        }
        for (int i = 0; i < 6; i++)
            free(L[i]);
        model_close(&mf);
        gguf_close(&gf);
        free(buf);
        model_close(&m);
        remove(path);
    }
}

/* Wrong-memory caches and unsupported setups fail with a message, not a crash. */
TEST(cuda_model_errors)
{
    GPU_OR_SKIP();
    char path[512];
    snprintf(path, sizeof path, "%s/cuda-err.gguf", test_tmp_dir());
    struct moed_err e = {0};
    REQUIRE(tiny_mkmodel(path, (const char *const[]){"--preset", "tiny-olmoe", NULL}, &e) == 0);
    struct model m;
    REQUIRE(model_open(&m, path, &e) == 0);
    struct fwd *f = NULL;
    REQUIRE(fwd_init(&f, &m, &(struct fwd_opts){.max_batch = 4, .gpu = true}, &e) == 0);
    struct kv_seq host;
    REQUIRE(kv_seq_init(&host, &m, 8, KT_F32, &e) == 0);
    struct kv_seq *seqs[1] = {&host};
    int32_t tok = 1, pos = 0, seq = 0;
    bool want = true;
    float *logits = malloc((size_t)m.hp.n_vocab * sizeof(float));
    struct fwd_batch b = {1, &tok, &pos, &seq, &want};
    int rc = fwd_step(f, &b, seqs, 1, logits, &e);
    CHECK_EQ(rc, MOED_EINVAL);
    CHECK_MSG(strstr(e.msg, "host memory") != NULL, "message: %s", e.msg);
    kv_seq_free(&host);
    /* a device that does not exist */
    struct fwd *f2 = NULL;
    rc = fwd_init(&f2, &m, &(struct fwd_opts){.max_batch = 4, .gpu = true, .gpu_device = 63}, &e);
    CHECK(rc != 0);
    CHECK_MSG(strstr(e.msg, "CUDA") != NULL, "message: %s", e.msg);
    fwd_free(f2);
    free(logits);
    fwd_free(f);
    model_close(&m);
    remove(path);
}
