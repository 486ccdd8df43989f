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

#define P_LEN 40
#define N_DEC 8
#define N_SEQ 2

/* All logits of the run: the prompts' (P_LEN per sequence, sequence-major),
 * then N_DEC steps x N_SEQ.  Decode feeds fixed tokens so both paths see
 * the same history. */
static int run(const struct model *m, bool gpu, bool no_graph, bool stepwise, float *out,
               struct moed_err *e)
{
    int V = m->hp.n_vocab, rc;
    struct fwd *f = NULL;
    struct kv_seq kv[N_SEQ];
    memset(kv, 0, sizeof kv);
    struct kv_seq *kvp[N_SEQ] = {&kv[0], &kv[1]};
    if ((rc = fwd_init(&f, m,
                       &(struct fwd_opts){.max_batch = N_SEQ * P_LEN, .gpu = gpu,
                                          .gpu_no_graph = no_graph},
                       e)))
        return rc;
    for (int s = 0; s < N_SEQ; s++)
        if ((rc = fwd_kv_init(f, &kv[s], P_LEN + N_DEC, KT_F32, e)))
            goto out;
    int32_t tok[N_SEQ * P_LEN], pos[N_SEQ * P_LEN], seq[N_SEQ * P_LEN];
    bool want[N_SEQ * P_LEN];
    for (int s = 0; s < N_SEQ; s++)
        for (int p = 0; p < P_LEN; p++) {
            int i = s * P_LEN + p;
            tok[i] = (int32_t)((uint32_t)(i * 2654435761u + 17u) % (uint32_t)V);
            pos[i] = p;
            seq[i] = s;
            want[i] = true;
        }
    if (stepwise) { /* one token of each sequence per step; logits kept sequence-major */
        float *tmp = malloc((size_t)N_SEQ * V * sizeof(float));
        for (int p = 0; p < P_LEN && !rc; p++) {
            int32_t t2[N_SEQ], p2[N_SEQ], s2[N_SEQ];
            bool w2[N_SEQ];
            for (int s = 0; s < N_SEQ; s++) {
                t2[s] = tok[s * P_LEN + p];
                p2[s] = p;
                s2[s] = s;
                w2[s] = true;
            }
            struct fwd_batch b1 = {N_SEQ, t2, p2, s2, w2};
            rc = fwd_step(f, &b1, kvp, N_SEQ, tmp, e);
            for (int s = 0; s < N_SEQ && !rc; s++)
                memcpy(out + ((size_t)s * P_LEN + p) * V, tmp + (size_t)s * V,
                       (size_t)V * sizeof(float));
        }
        free(tmp);
        if (rc)
            goto out;
    } else {
        struct fwd_batch b = {N_SEQ * P_LEN, tok, pos, seq, want};
        if ((rc = fwd_step(f, &b, kvp, N_SEQ, out, e)))
            goto out;
    }
    out += (size_t)N_SEQ * P_LEN * V;
    for (int step = 0; step < N_DEC; step++) {
        for (int s = 0; s < N_SEQ; s++) {
            tok[s] = (int32_t)((uint32_t)((step + 1) * 40503u + s * 977u) % (uint32_t)V);
            pos[s] = P_LEN + step;
            seq[s] = s;
            want[s] = true;
        }
        struct fwd_batch bd = {N_SEQ, tok, pos, seq, want};
        if ((rc = fwd_step(f, &bd, kvp, N_SEQ, out, e)))
            goto out;
        out += (size_t)N_SEQ * V;
    }
out:
    for (int s = 0; s < N_SEQ; s++)
        kv_seq_free(&kv[s]);
    fwd_free(f);
    return rc;
}

static int argmax2(const float *x, int n, float *margin)
{
    int b = 0, c = -1;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b])
            b = i;
    for (int i = 0; i < n; i++)
        if (i != b && (c < 0 || x[i] > x[c]))
            c = i;
    *margin = c < 0 ? 0 : x[b] - x[c];
    return b;
}

static double rel_rms(const float *a, const float *ref, size_t n)
{
    double d2 = 0, l2 = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - ref[i];
        d2 += d * d;
        l2 += (double)ref[i] * ref[i];
    }
    return sqrt(d2 / fmax(l2, 1e-30));
}

static double logit_range(const float *x, size_t n)
{
    float lo = INFINITY, hi = -INFINITY;
    for (size_t i = 0; i < n; i++) {
        lo = fminf(lo, x[i]);
        hi = fmaxf(hi, x[i]);
    }
    return (double)hi - lo;
}

static const char *arg_after(const char *const *args, const char *flag)
{
    for (; *args && args[1]; args++)
        if (!strcmp(*args, flag))
            return args[1];
    return "?";
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
            double step_rel = rel_rms(L[1], L[0], n_rows * V);
            double cpu_rel = rel_rms(L[3], L[2], n_rows * V);
            double gpu_rel = rel_rms(L[4], L[2], n_rows * V);
            int checked = 0, bad = 0;
            double range = logit_range(L[2], n_rows * V);
            for (size_t r = 0; r < n_rows; r++) {
                float mo, mg;
                int to = argmax2(L[2] + r * V, V, &mo), tg = argmax2(L[4] + r * V, V, &mg);
                if (mo > 0.1 * range) {
                    checked++;
                    bad += to != tg;
                }
            }
            fprintf(stderr,
                    "    %s (experts %s, attn %s, output %s): vs exact math: GPU stepwise %.2e, "
                    "GPU prefill %.3g, CPU prefill %.3g (relative rms); top-1 %d/%d on clear "
                    "margins\n",
                    cfg[c][1], arg_after(cfg[c], "--type-experts"),
                    arg_after(cfg[c], "--type-attn"), arg_after(cfg[c], "--type-output"),
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
