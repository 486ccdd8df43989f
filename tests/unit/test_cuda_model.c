/*
 * The all-GPU forward pass against the CPU forward pass on mid-size random
 * models written by moed-mkmodel (k-quant experts, Q8_0/Q6_K attention,
 * several architectures): two sequences prefilled together in one step,
 * then decode steps with both sequences batched.
 *
 * The two paths round differently: the CPU quantizes activations to Q8_0 /
 * Q8_K before quantized matmuls, the GPU keeps them f32 in decode and rounds
 * them to bf16 for the tensor-core prefill.  Bounds, relative to the CPU's
 * logits: rms of the difference <= 5% of the logits' rms, and the GPU's
 * top token equal to the CPU's wherever the CPU's margin between its first
 * and second token exceeds 10% of the logits' range (random-weight models
 * have many near-ties; greedy equality on trained-like weights is checked by
 * cuda_model_fixtures against transformers).
 *
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
#include "tools/mkmodel.h"

#define P_LEN 40
#define N_DEC 8
#define N_SEQ 2

static int mk(const char *path, const char *const *args, struct moed_err *e)
{
    char *argv[64];
    int argc = 0;
    argv[argc++] = "moed-mkmodel";
    argv[argc++] = "-o";
    argv[argc++] = (char *)path;
    argv[argc++] = "--quiet";
    for (; *args && argc < 62; args++)
        argv[argc++] = (char *)*args;
    argv[argc] = NULL;
    struct mkm_spec s;
    memset(&s, 0, sizeof s);
    int rc = mkm_parse_args(&s, argc, argv, stdout, e);
    if (rc)
        return rc;
    struct mkm_stats st;
    return mkm_write(&s, &st, e);
}

/* All logits of the run: the prompts' (P_LEN per sequence, sequence-major),
 * then N_DEC steps x N_SEQ.  Decode feeds fixed tokens so both paths see
 * the same history. */
static int run(const struct model *m, bool gpu, bool no_graph, float *out, struct moed_err *e)
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
    struct fwd_batch b = {N_SEQ * P_LEN, tok, pos, seq, want};
    if ((rc = fwd_step(f, &b, kvp, N_SEQ, out, e)))
        goto out;
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
        int rc = mk(path, cfg[c], &e);
        CHECK_MSG(rc == 0, "mkmodel %s: %s", cfg[c][1], e.msg);
        if (rc)
            return;
        struct model m;
        rc = model_open(&m, path, &e);
        CHECK_MSG(rc == 0, "%s: %s", cfg[c][1], e.msg);
        if (rc)
            return;
        int V = m.hp.n_vocab;
        size_t n_rows = (size_t)N_SEQ * P_LEN + (size_t)N_DEC * N_SEQ;
        float *cpu = malloc(n_rows * V * sizeof(float)), *gpu = malloc(n_rows * V * sizeof(float)),
              *gpu2 = malloc(n_rows * V * sizeof(float));
        rc = run(&m, false, false, cpu, &e);
        CHECK_MSG(rc == 0, "%s CPU: %s", cfg[c][1], e.msg);
        if (!rc) {
            rc = run(&m, true, false, gpu, &e);
            CHECK_MSG(rc == 0, "%s GPU: %s", cfg[c][1], e.msg);
        }
        if (!rc) {
            rc = run(&m, true, true, gpu2, &e);
            CHECK_MSG(rc == 0, "%s GPU without graphs: %s", cfg[c][1], e.msg);
        }
        if (!rc) {
            /* relative rms of the difference: prompt rows, then decode rows */
            double d2[2] = {0, 0}, l2[2] = {0, 0}, lo = INFINITY, hi = -INFINITY, dmax = 0;
            int top_same = 0, top_checked = 0, top_bad = 0;
            for (size_t r = 0; r < n_rows; r++) {
                const float *a = cpu + r * V, *g = gpu + r * V;
                int ph = r >= (size_t)N_SEQ * P_LEN;
                for (int v = 0; v < V; v++) {
                    double d = (double)g[v] - a[v];
                    d2[ph] += d * d;
                    l2[ph] += (double)a[v] * a[v];
                    dmax = fmax(dmax, fabs(d));
                    lo = fmin(lo, a[v]);
                    hi = fmax(hi, a[v]);
                }
            }
            double range = hi - lo;
            for (size_t r = 0; r < n_rows; r++) {
                float mc, mg;
                int tc = argmax2(cpu + r * V, V, &mc), tg = argmax2(gpu + r * V, V, &mg);
                if (mc > 0.1 * range) {
                    top_checked++;
                    top_same += tc == tg;
                    top_bad += tc != tg;
                }
            }
            double relp = sqrt(d2[0] / fmax(l2[0], 1e-30)), reld = sqrt(d2[1] / fmax(l2[1], 1e-30));
            double rel = fmax(relp, reld);
            fprintf(stderr,
                    "    %s (experts %s, attn %s, output %s): GPU vs CPU rms %.3g (prompt) %.3g "
                    "(decode) of the logits' rms, max |diff| %.3g (range %.3g); top-1 %d/%d where "
                    "the CPU's margin > 10%% of the range\n",
                    cfg[c][1], arg_after(cfg[c], "--type-experts"), arg_after(cfg[c], "--type-attn"),
                    arg_after(cfg[c], "--type-output"), relp, reld, dmax, range, top_same,
                    top_checked);
            CHECK_MSG(rel <= 0.05, "%s: GPU vs CPU relative rms %.3g > 0.05", cfg[c][1], rel);
            CHECK_MSG(top_bad == 0, "%s: %d clear top-1 choices differ", cfg[c][1], top_bad);
            /* a graph replays exactly the kernels it captured */
            size_t first_dec = (size_t)N_SEQ * P_LEN * V;
            CHECK_MSG(!memcmp(gpu + first_dec, gpu2 + first_dec,
                              (n_rows * V - first_dec) * sizeof(float)),
                      "%s: decode logits differ between graph replay and direct launches",
                      cfg[c][1]);
        }
        free(cpu);
        free(gpu);
        free(gpu2);
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
    REQUIRE(mk(path, (const char *const[]){"--preset", "tiny-olmoe", NULL}, &e) == 0);
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
