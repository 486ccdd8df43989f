/*
 * moed bench -m FILE [--gpu N] [-p 512[,2048,...]] [-n 64] [-r 3] [...]
 *
 * Throughput of the forward pass, after llama-bench:
 *
 *   - ppN (prompt processing): N random token ids (seeded, the whole
 *     vocabulary) fed to an empty KV cache in steps of --batch tokens,
 *     logits for the last token only;
 *   - tgN (text generation): from an empty cache, N decode steps of one
 *     token each with logits, the next token the argmax of the last logits
 *     (deterministic; the argmax is timed with the step).
 *
 * Every test runs once untimed (page-in, caches; on the GPU the first
 * decode step captures its CUDA graph), then --reps timed times; the table
 * gives the mean tokens per second over the repetitions and their standard
 * deviation.  One KV cache of max(ppN, tgN) positions is allocated at the
 * start and emptied (kv_seq_truncate) before each run; nothing is allocated
 * per step.
 *
 * With --gpu and --expert-budget the routed experts run hybrid
 * (sched/hybrid.h): a budget of GPU slots, the other experts on CPU workers
 * (-t, default one pinned per physical core); the executor's counters are
 * reset after each test's warm-up, so each test's hybrid line covers its
 * timed runs only.
 *
 * stdout: the Markdown table, then per tg test the weight bytes one decode
 * token reads (fwd_gpu_decode_bytes: dense weights, the used experts of
 * every layer, the output matrix) and the bandwidth that makes, per test the
 * hybrid line (cli_hybrid_print) when hybrid, and the backend's details.
 * stderr: the set-up and one line per test as it ends.
 * Exit status 0, 1 for a runtime error (one line), 2 for a usage error.
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/cli.h"
#include "daemon/cmds.h"
#include "kernels/cpu/isa.h"
#include "kernels/cpu/types.h"
#include "kernels/cuda/kc.h"
#include "kernels/cuda/kcuda.h"
#include "model/forward.h"
#include "model/fwd_gpu.h"
#include "model/kv.h"
#include "model/model.h"
#include "sched/hybrid.h"
#include "sched/pool.h"

static const char usage[] =
    "usage: moed bench -m FILE [options]\n"
    "\n"
    "Forward-pass throughput, like llama-bench: ppN feeds N random tokens to an empty KV\n"
    "cache in steps of --batch tokens; tgN decodes N tokens one per step (greedy). Each test\n"
    "runs once untimed, then -r times; prints a Markdown table of mean tok/s +- standard\n"
    "deviation, then the weight bytes a decode token reads and the bandwidth that makes.\n"
    "With --gpu and --expert-budget the experts run hybrid (part in GPU slots, the rest on\n"
    "the CPU), and a line per test says how (plan mix, cache hits, loads, PCIe, host time).\n"
    "\n"
    "  -m, --model FILE     GGUF model\n"
    "  -p, --n-prompt N,... prompt lengths to test, comma-separated; 0: none (default 512)\n"
    "  -n, --n-gen N        tokens to generate in the tg test; 0: none (default 64)\n"
    "  -r, --reps N         timed repetitions of each test (default 3)\n"
    "  --gpu N              run on CUDA device N (default: the CPU)\n"
    "  --no-graph           with --gpu: never replay decode steps as CUDA graphs\n"
    "  -t, --threads N      CPU threads (default: online CPUs; hybrid: one pinned per physical\n"
    "                       core)\n"
    "  -b, --batch N        prompt tokens per step (default 512)\n"
    "  --kv-type f32|f16    KV cache storage (default: f32 on the CPU, f16 on the GPU)\n"
    "  --seed S             seed of the random prompt tokens (default 1)\n";

#define MAX_PP 16
#define MAX_TESTS (MAX_PP + 1)
#define MAX_LEN (1L << 20)

struct bench_args {
    const char *model;
    long pp[MAX_PP];
    int n_pp;
    long tg, reps, threads, batch, gpu;
    int kv_type; /* -1: the backend's default */
    bool no_graph;
    uint64_t seed;
    struct cli_hybrid hy; /* --expert-budget and the other hybrid flags */
};

/* "512,2048": up to MAX_PP lengths in 0..MAX_LEN; 0s are dropped. */
static int parse_list(const char *flag, const char *v, struct bench_args *a)
{
    a->n_pp = 0;
    const char *s = v;
    for (;;) {
        char *end;
        errno = 0;
        long x = strtol(s, &end, 10);
        if (errno || end == s || (*end && *end != ',') || x < 0 || x > MAX_LEN) {
            fprintf(stderr, "moed bench: %s '%s': expected comma-separated integers in 0..%ld\n",
                    flag, v, MAX_LEN);
            return -1;
        }
        if (x > 0) {
            if (a->n_pp == MAX_PP) {
                fprintf(stderr, "moed bench: %s '%s': at most %d lengths\n", flag, v, MAX_PP);
                return -1;
            }
            a->pp[a->n_pp++] = x;
        }
        if (!*end)
            return 0;
        s = end + 1;
    }
}

/* 0, 2 (usage error printed), -1 after --help. */
static int parse_args(int argc, char **argv, struct bench_args *a)
{
    int rc;
    a->pp[0] = 512;
    a->n_pp = 1;
    a->tg = 64;
    a->reps = 3;
    a->batch = 512;
    a->gpu = -1;
    a->kv_type = -1;
    a->seed = 1;
    cli_hybrid_init(&a->hy);
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i];
        if (!strcmp(f, "-h") || !strcmp(f, "--help")) {
            fputs(usage, stdout);
            cli_hybrid_usage(stdout, 23);
            fputs("  -h, --help           this text\n", stdout);
            return -1;
        }
        if (!strcmp(f, "--no-graph")) {
            a->no_graph = true;
            continue;
        }
        int hr = cli_hybrid_arg("bench", argc, argv, &i, &a->hy);
        if (hr == 1)
            continue;
        if (hr)
            return hr;
        if (i + 1 >= argc) {
            fprintf(stderr, "moed bench: %s needs a value (try --help)\n", f);
            return 2;
        }
        const char *v = argv[++i];
        rc = 0;
        if (!strcmp(f, "-m") || !strcmp(f, "--model"))
            a->model = v;
        else if (!strcmp(f, "-p") || !strcmp(f, "--n-prompt"))
            rc = parse_list(f, v, a);
        else if (!strcmp(f, "-n") || !strcmp(f, "--n-gen"))
            rc = cli_parse_long("bench", f, v, 0, MAX_LEN, &a->tg);
        else if (!strcmp(f, "-r") || !strcmp(f, "--reps"))
            rc = cli_parse_long("bench", f, v, 1, 1000, &a->reps);
        else if (!strcmp(f, "-t") || !strcmp(f, "--threads"))
            rc = cli_parse_long("bench", f, v, 1, 4096, &a->threads);
        else if (!strcmp(f, "-b") || !strcmp(f, "--batch"))
            rc = cli_parse_long("bench", f, v, 1, 1 << 16, &a->batch);
        else if (!strcmp(f, "--gpu"))
            rc = cli_parse_long("bench", f, v, 0, 63, &a->gpu);
        else if (!strcmp(f, "--kv-type")) {
            if (!strcmp(v, "f16"))
                a->kv_type = KT_F16;
            else if (!strcmp(v, "f32"))
                a->kv_type = KT_F32;
            else {
                fprintf(stderr, "moed bench: --kv-type '%s': expected f16 or f32\n", v);
                rc = -1;
            }
        } else if (!strcmp(f, "--seed")) {
            char *end;
            errno = 0;
            a->seed = strtoull(v, &end, 10);
            if (errno || end == v || *end || *v == '-') {
                fprintf(stderr, "moed bench: --seed '%s': expected an unsigned integer\n", v);
                rc = -1;
            }
        } else {
            fprintf(stderr, "moed bench: unknown argument '%s' (try --help)\n", f);
            return 2;
        }
        if (rc)
            return 2;
    }
    if (!a->model) {
        fprintf(stderr, "moed bench: -m FILE is required (try --help)\n");
        return 2;
    }
    if (a->n_pp == 0 && a->tg == 0) {
        fprintf(stderr, "moed bench: nothing to run: -p and -n are both 0\n");
        return 2;
    }
    if (a->no_graph && a->gpu < 0) {
        fprintf(stderr, "moed bench: --no-graph needs --gpu N\n");
        return 2;
    }
    if ((rc = cli_hybrid_check("bench", &a->hy, a->gpu >= 0)))
        return rc;
    if (a->kv_type < 0)
        a->kv_type = a->gpu >= 0 ? KT_F16 : KT_F32;
    return 0;
}

/* Everything a run owns, freed by bench_free whatever was set up. */
struct bench {
    struct model m;
    bool m_ok;
    struct sched_pool *pool;
    struct fwd *fwd;
    struct kv_seq kv;
    int32_t max_batch, n_ctx;
    int32_t *toks; /* [max(max pp, 1)] the random prompt */
    int32_t *pos, *seq;
    bool *want;
    float *logits; /* [n_vocab] */
};

static void bench_free(struct bench *b)
{
    free(b->logits);
    free(b->want);
    free(b->seq);
    free(b->pos);
    free(b->toks);
    kv_seq_free(&b->kv);
    fwd_free(b->fwd);
    sched_pool_free(b->pool);
    if (b->m_ok)
        model_close(&b->m);
}

static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static int32_t argmax(const float *x, int32_t n)
{
    int32_t best = 0;
    for (int32_t i = 1; i < n; i++)
        if (x[i] > x[best])
            best = i;
    return best;
}

/* ppN: the first n random tokens from an empty cache, logits for the last. */
static int run_pp(struct bench *b, int32_t n, double *sec, struct moed_err *e)
{
    struct kv_seq *seqs[1] = {&b->kv};
    kv_seq_truncate(&b->kv, 0);
    double t0 = cli_now_s();
    for (int32_t i0 = 0; i0 < n; i0 += b->max_batch) {
        int32_t k = n - i0 < b->max_batch ? n - i0 : b->max_batch;
        for (int32_t i = 0; i < k; i++) {
            b->pos[i] = i0 + i;
            b->want[i] = i0 + i == n - 1;
        }
        struct fwd_batch fb = {k, b->toks + i0, b->pos, b->seq, b->want};
        int rc = fwd_step(b->fwd, &fb, seqs, 1, b->logits, e);
        if (rc)
            return rc;
    }
    *sec = cli_now_s() - t0;
    return 0;
}

/* tgN: n greedy decode steps from an empty cache. */
static int run_tg(struct bench *b, int32_t n, double *sec, struct moed_err *e)
{
    struct kv_seq *seqs[1] = {&b->kv};
    kv_seq_truncate(&b->kv, 0);
    int32_t tok = b->toks[0], p = 0, s = 0;
    bool w = true;
    double t0 = cli_now_s();
    for (int32_t i = 0; i < n; i++) {
        p = i;
        struct fwd_batch fb = {1, &tok, &p, &s, &w};
        int rc = fwd_step(b->fwd, &fb, seqs, 1, b->logits, e);
        if (rc)
            return rc;
        tok = argmax(b->logits, b->m.hp.n_vocab);
    }
    *sec = cli_now_s() - t0;
    return 0;
}

struct result {
    char test[32];
    bool tg;
    int32_t n;
    double mean, sd;        /* tok/s */
    struct hybrid_stats hs; /* hybrid: the timed runs' counters */
};

static int run_test(struct bench *b, struct result *r, long reps, struct moed_err *e)
{
    double sec, sum = 0, sum2 = 0;
    int rc = r->tg ? run_tg(b, r->n, &sec, e) : run_pp(b, r->n, &sec, e); /* warm-up */
    if (rc)
        return moed_err_wrap(e, "%s (warm-up)", r->test);
    struct hybrid *hy = fwd_hybrid(b->fwd);
    if (hy)
        hybrid_stats_reset(hy);
    for (long i = 0; i < reps; i++) {
        if ((rc = r->tg ? run_tg(b, r->n, &sec, e) : run_pp(b, r->n, &sec, e)))
            return moed_err_wrap(e, "%s", r->test);
        double ts = r->n / (sec > 0 ? sec : 1e-9);
        sum += ts;
        sum2 += ts * ts;
    }
    r->mean = sum / (double)reps;
    double var = reps > 1 ? (sum2 - sum * r->mean) / (double)(reps - 1) : 0;
    r->sd = var > 0 ? sqrt(var) : 0;
    if (hy)
        hybrid_stats_get(hy, &r->hs, NULL);
    return 0;
}

static const char *base_name(const char *path)
{
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

static void fmt_size(uint64_t b, char *buf, size_t n)
{
    if (b >= (1ull << 30))
        snprintf(buf, n, "%.2f GiB", (double)b / (1ull << 30));
    else
        snprintf(buf, n, "%.2f MiB", (double)b / (1ull << 20));
}

int cmd_bench(int argc, char **argv)
{
    struct bench_args a = {0};
    int rc = parse_args(argc, argv, &a);
    if (rc)
        return rc < 0 ? 0 : rc;

    struct bench b = {0};
    struct moed_err e = {0};
    double t0 = cli_now_s();
    rc = 1;
    if (model_open(&b.m, a.model, &e)) {
        fprintf(stderr, "moed bench: %s\n", e.msg);
        goto out;
    }
    b.m_ok = true;
    const struct model_hparams *hp = &b.m.hp;

    long max_pp = 0;
    for (int i = 0; i < a.n_pp; i++)
        max_pp = a.pp[i] > max_pp ? a.pp[i] : max_pp;
    b.n_ctx = (int32_t)(max_pp > a.tg ? max_pp : a.tg);
    if (hp->n_ctx_train > 0 && b.n_ctx > hp->n_ctx_train)
        fprintf(stderr, "moed bench: note: %d positions is longer than the model's context of %d\n",
                b.n_ctx, hp->n_ctx_train);
    /* a step never holds more than the longest prompt */
    b.max_batch = (int32_t)(a.batch < max_pp ? a.batch : max_pp > 0 ? max_pp : 1);

    size_t ntok = max_pp > 0 ? (size_t)max_pp : 1;
    b.toks = malloc(ntok * sizeof *b.toks);
    b.pos = malloc((size_t)b.max_batch * sizeof *b.pos);
    b.seq = calloc((size_t)b.max_batch, sizeof *b.seq);
    b.want = malloc((size_t)b.max_batch * sizeof *b.want);
    b.logits = malloc((size_t)hp->n_vocab * sizeof *b.logits);
    if (!b.toks || !b.pos || !b.seq || !b.want || !b.logits) {
        fprintf(stderr, "moed bench: out of memory\n");
        goto out;
    }
    uint64_t st = a.seed;
    for (size_t i = 0; i < ntok; i++)
        b.toks[i] = (int32_t)((splitmix64(&st) >> 11) % (uint64_t)hp->n_vocab);

    /* GPU: device memory before and after fwd_init and the KV cache */
    bool gpu = a.gpu >= 0;
    size_t f0 = 0, f1 = 0, f2 = 0, mtotal = 0;
    bool mem_ok = false;
    char pool_desc[96] = "";
    if (gpu) {
        /* the device's context first: its threads keep the whole CPU mask */
        struct moed_err me = {0};
        mem_ok = !kc_set_device((int)a.gpu, &me) && !kc_mem_info(&f0, &mtotal, &me);
        if (a.hy.on &&
            cli_hybrid_pool("bench", (int)a.threads, &b.pool, pool_desc, sizeof pool_desc, &e)) {
            fprintf(stderr, "moed bench: CPU workers: %s\n", e.msg);
            goto out;
        }
    } else if (sched_pool_init(&b.pool, &(struct sched_pool_opts){.nthreads = (int)a.threads},
                               &e)) {
        fprintf(stderr, "moed bench: %s\n", e.msg);
        goto out;
    }
    if (fwd_init(&b.fwd, &b.m,
                 &(struct fwd_opts){.max_batch = b.max_batch,
                                    .pool = b.pool,
                                    .gpu = gpu,
                                    .gpu_device = (int)a.gpu,
                                    .gpu_no_graph = a.no_graph,
                                    .hybrid = a.hy.on ? &a.hy.o : NULL},
                 &e)) {
        if (gpu)
            fprintf(stderr, "moed bench: --gpu %ld: %s\n", a.gpu, e.msg);
        else
            fprintf(stderr, "moed bench: %s\n", e.msg);
        goto out;
    }
    if (mem_ok)
        mem_ok = !kc_mem_info(&f1, &mtotal, &e);
    if (fwd_kv_init(b.fwd, &b.kv, b.n_ctx, (uint32_t)a.kv_type, &e)) {
        fprintf(stderr, "moed bench: %s\n", e.msg);
        goto out;
    }
    if (mem_ok)
        mem_ok = !kc_mem_info(&f2, &mtotal, &e);

    struct hybrid *hy = fwd_hybrid(b.fwd);
    if (a.hy.on && !hy)
        fprintf(stderr,
                "moed bench: note: --expert-budget %s gives every expert a GPU slot: all on the "
                "GPU (--force-hybrid runs hybrid anyway)\n",
                a.hy.budget);
    char backend[128], detail[1024], wsize[32];
    fmt_size(model_weight_bytes(&b.m), wsize, sizeof wsize);
    if (gpu && hy) {
        struct hybrid_stats hs;
        char brief[112], full[512], gdesc[400];
        hybrid_stats_get(hy, &hs, NULL);
        cli_hybrid_describe(&a.hy, &hs, hp, true, brief, sizeof brief);
        cli_hybrid_describe(&a.hy, &hs, hp, false, full, sizeof full);
        /* hybrid steps return to the host every MoE layer: no CUDA graphs */
        cli_describe_gpu((int)a.gpu, true, gdesc, sizeof gdesc);
        snprintf(backend, sizeof backend, "CUDA %ld, %s", a.gpu, brief);
        snprintf(detail, sizeof detail, "%s; %s; CPU: %s, %s", gdesc, full, pool_desc,
                 kern_isa_describe());
    } else if (gpu) {
        snprintf(backend, sizeof backend, "CUDA %ld", a.gpu);
        cli_describe_gpu((int)a.gpu, a.no_graph, detail, sizeof detail);
    } else {
        int nt = sched_pool_size(b.pool);
        snprintf(backend, sizeof backend, "CPU %d thread%s", nt, nt == 1 ? "" : "s");
        snprintf(detail, sizeof detail, "CPU: %d thread%s, %s", nt, nt == 1 ? "" : "s",
                 kern_isa_describe());
    }
    uint64_t kv_bytes = 2ull * (uint64_t)b.kv.n_layer * (uint64_t)b.kv.n_kv * (uint64_t)b.n_ctx *
                        kv_elem_size(&b.kv);
    char kvsize[32];
    fmt_size(kv_bytes, kvsize, sizeof kvsize);
    fprintf(stderr,
            "moed bench: %s: %s, %d layers, d %d, %d experts top %d, vocab %d, %s, loaded in "
            "%.0f ms; %s; KV cache %d positions %s (%s); %d tokens per prompt step\n",
            a.model, model_arch_name(hp->arch), hp->n_layer, hp->n_embd, hp->n_expert,
            hp->n_expert_used, hp->n_vocab, wsize, (cli_now_s() - t0) * 1e3, detail, b.n_ctx,
            a.kv_type == KT_F16 ? "f16" : "f32", kvsize, b.max_batch);

    struct result res[MAX_TESTS];
    int n_res = 0;
    for (int i = 0; i < a.n_pp; i++) {
        struct result *r = &res[n_res++];
        memset(r, 0, sizeof *r);
        r->n = (int32_t)a.pp[i];
        snprintf(r->test, sizeof r->test, "pp%d", r->n);
    }
    if (a.tg > 0) {
        struct result *r = &res[n_res++];
        memset(r, 0, sizeof *r);
        r->n = (int32_t)a.tg;
        r->tg = true;
        snprintf(r->test, sizeof r->test, "tg%d", r->n);
    }
    for (int i = 0; i < n_res; i++) {
        if (run_test(&b, &res[i], a.reps, &e)) {
            fprintf(stderr, "moed bench: %s\n", e.msg);
            goto out;
        }
        fprintf(stderr, "moed bench: %s: %.2f +- %.2f tok/s over %ld run%s\n", res[i].test,
                res[i].mean, res[i].sd, a.reps, a.reps == 1 ? "" : "s");
    }

    /* the table, columns padded as llama-bench pads them */
    char model[256], cell[MAX_TESTS][64];
    const char *name = base_name(a.model);
    size_t nl = strlen(name);
    if (nl > 5 && !strcmp(name + nl - 5, ".gguf"))
        nl -= 5;
    snprintf(model, sizeof model, "%.*s (%s, %s)", (int)(nl > 160 ? 160 : nl), name,
             model_arch_name(hp->arch), wsize);
    int w_model = (int)strlen(model), w_back = (int)strlen(backend), w_test = 4, w_ts = 3;
    for (int i = 0; i < n_res; i++) {
        snprintf(cell[i], sizeof cell[i], "%.2f ± %.2f", res[i].mean, res[i].sd);
        int wt = (int)strlen(res[i].test), wc = (int)strlen(cell[i]) - 1; /* ± is 2 bytes */
        w_test = wt > w_test ? wt : w_test;
        w_ts = wc > w_ts ? wc : w_ts;
    }
    w_model = w_model < 5 ? 5 : w_model;
    w_back = w_back < 7 ? 7 : w_back;
    printf("| %-*s | %-*s | %*s | %*s |\n", w_model, "model", w_back, "backend", w_test, "test",
           w_ts, "t/s");
    printf("| %.*s | %.*s | %.*s: | %.*s: |\n", w_model,
           "------------------------------------------------------------------------------------"
           "------------------------------------------------------------------------------------",
           w_back, "----------------------------------------------------------------", w_test - 1,
           "--------------------------------", w_ts - 1, "--------------------------------");
    for (int i = 0; i < n_res; i++)
        printf("| %-*s | %-*s | %*s | %*s |\n", w_model, model, w_back, backend, w_test,
               res[i].test, w_ts + 1, cell[i]);
    printf("\n");

    uint64_t dbytes = fwd_gpu_decode_bytes(&b.m);
    for (int i = 0; i < n_res; i++)
        if (res[i].tg)
            printf("%s: %.2f MiB of weights read per decode token (dense weights, %d of %d experts "
                   "per layer, output): %.2f GB/s at %.2f t/s\n",
                   res[i].test, (double)dbytes / (1 << 20), hp->n_expert_used, hp->n_expert,
                   (double)dbytes * res[i].mean / 1e9, res[i].mean);
    for (int i = 0; hy && i < n_res; i++) {
        char prefix[48];
        snprintf(prefix, sizeof prefix, "%.31s hybrid: ", res[i].test);
        cli_hybrid_print(stdout, prefix, &a.hy, &res[i].hs, hp,
                         (uint64_t)res[i].n * (uint64_t)a.reps);
    }
    printf("%s\n", detail);
    if (gpu && mem_ok)
        printf("GPU memory: forward pass %.2f GiB (weights and workspaces), KV cache %.2f GiB "
               "%s; %.2f of %.2f GiB free after set-up\n",
               (double)(f0 > f1 ? f0 - f1 : 0) / 1073741824.0,
               (double)(f1 > f2 ? f1 - f2 : 0) / 1073741824.0, a.kv_type == KT_F16 ? "f16" : "f32",
               f2 / 1073741824.0, mtotal / 1073741824.0);
    printf("KV cache: %d positions, %s, %s; prompt steps of %d tokens; seed %" PRIu64 "; %ld "
           "timed run%s per test after one warm-up\n",
           b.n_ctx, a.kv_type == KT_F16 ? "f16" : "f32", kvsize, b.max_batch, a.seed, a.reps,
           a.reps == 1 ? "" : "s");
    fflush(stdout);
    rc = 0;
out:
    bench_free(&b);
    return rc;
}
