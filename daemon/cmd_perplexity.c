/*
 * moed perplexity -m FILE -f TEXT [--ctx W] [--batch B] [--threads N] [--gpu N] [--first-half]
 *
 * Perplexity of a model over a text file, the way tools/train_default.py
 * computes the figure in model/default/heldout.json:
 *
 *   - the whole file is tokenized as one stream: no BOS, no EOS, control
 *     tokens not matched (as `moed tokenize` without flags);
 *   - it is cut into n = floor(n_tokens / W) non-overlapping windows of W
 *     tokens, window k = ids[kW .. (k+1)W); the tail is not used;
 *   - each window is evaluated on its own from position 0 (no earlier
 *     context, an empty KV cache);
 *   - every token of a window but its first is scored: the logits at
 *     positions 0..W-2 predict the tokens at 1..W-1, n (W-1) tokens in all;
 *     with --first-half only the second half is scored, as llama.cpp's
 *     perplexity does: the tokens at positions W/2+1 .. W-1;
 *   - nll = mean of -ln softmax(logits)[next token] (log-softmax in double,
 *     over the full vocabulary), ppl = exp(nll).
 *
 * The forward pass runs on the CPU, or with --gpu N all on one CUDA device
 * (the KV caches too; the log-softmax scoring stays on the CPU threads).
 *
 * Windows are packed into steps of B tokens: a step holds the next B
 * positions of the window-major stream, so one step may finish one window
 * and start the next few, each window its own sequence (its own KV cache),
 * and a window longer than B spans several steps.  Batching does not change
 * the numbers (the forward pass is batch-invariant).
 *
 * stdout: "ppl = X (nll Y over N tokens, W-token windows)"; stderr: the
 * set-up, progress, the speed, and (without --first-half) the second-half
 * figure of the same run, which --first-half would print.  Exit status 0, 1 for a runtime error,
 * 2 for a usage error.
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "daemon/cli.h"
#include "daemon/cmds.h"
#include "kernels/cpu/isa.h"
#include "kernels/cpu/types.h"
#include "kernels/cuda/kcuda.h"
#include "model/forward.h"
#include "model/kv.h"
#include "model/model.h"
#include "model/tok.h"
#include "sched/pool.h"

static const char usage[] =
    "usage: moed perplexity -m FILE -f TEXT [options]\n"
    "\n"
    "Perplexity of a model over a text file, on the CPU or (--gpu) one CUDA device.  The file\n"
    "is tokenized as one stream (no BOS) and cut into non-overlapping windows of W tokens (the\n"
    "tail is dropped); each window is evaluated alone from position 0 and scored on every\n"
    "token but its first.\n"
    "Prints `ppl = X (nll Y over N tokens, W-token windows)` on stdout; on stderr, progress,\n"
    "the speed and llama.cpp's second-half figure of the same run.\n"
    "\n"
    "  -m, --model FILE     GGUF model\n"
    "  -f, --file TEXT      text file\n"
    "  -c, --ctx W          window length in tokens (default: 512, or the model's context\n"
    "                       when smaller)\n"
    "  -b, --batch B        tokens per forward step; windows are packed into steps, several\n"
    "                       sequences per step (default: 4 windows, at most 2048 tokens\n"
    "                       and 256 MiB of logits)\n"
    "  -t, --threads N      CPU threads (default: online CPUs)\n"
    "  --gpu N              run the forward pass on CUDA device N (default: the CPU)\n"
    "  --no-graph           with --gpu: never replay steps as CUDA graphs\n"
    "  --first-half         llama.cpp's convention: score only the second half of each\n"
    "                       window (positions W/2+1 .. W-1)\n"
    "  --chunks N           use only the first N windows\n"
    "  -h, --help           this text\n";

struct ppl_args {
    const char *model, *file;
    long ctx, batch, threads, chunks;
    long gpu; /* -1: the CPU */
    bool first_half, no_graph;
};

/* 0, 2 (usage error printed), -1 after --help. */
static int parse_args(int argc, char **argv, struct ppl_args *a)
{
    a->gpu = -1;
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i];
        if (!strcmp(f, "-h") || !strcmp(f, "--help")) {
            fputs(usage, stdout);
            return -1;
        }
        if (!strcmp(f, "--first-half")) {
            a->first_half = true;
            continue;
        }
        if (!strcmp(f, "--no-graph")) {
            a->no_graph = true;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "moed perplexity: %s needs a value (try --help)\n", f);
            return 2;
        }
        const char *v = argv[++i];
        int rc = 0;
        if (!strcmp(f, "-m") || !strcmp(f, "--model"))
            a->model = v;
        else if (!strcmp(f, "-f") || !strcmp(f, "--file"))
            a->file = v;
        else if (!strcmp(f, "-c") || !strcmp(f, "--ctx"))
            rc = cli_parse_long("perplexity", f, v, 2, 1 << 20, &a->ctx);
        else if (!strcmp(f, "-b") || !strcmp(f, "--batch"))
            rc = cli_parse_long("perplexity", f, v, 1, 1 << 16, &a->batch);
        else if (!strcmp(f, "-t") || !strcmp(f, "--threads"))
            rc = cli_parse_long("perplexity", f, v, 1, 4096, &a->threads);
        else if (!strcmp(f, "--gpu"))
            rc = cli_parse_long("perplexity", f, v, 0, 63, &a->gpu);
        else if (!strcmp(f, "--chunks"))
            rc = cli_parse_long("perplexity", f, v, 1, INT32_MAX, &a->chunks);
        else {
            fprintf(stderr, "moed perplexity: unknown argument '%s' (try --help)\n", f);
            return 2;
        }
        if (rc)
            return 2;
    }
    if (!a->model || !a->file) {
        fprintf(stderr, "moed perplexity: -m FILE and -f TEXT are required (try --help)\n");
        return 2;
    }
    if (a->no_graph && a->gpu < 0) {
        fprintf(stderr, "moed perplexity: --no-graph needs --gpu N\n");
        return 2;
    }
    return 0;
}

/* -ln softmax(logits)[target], in double. */
static double token_nll(const float *logits, int32_t n_vocab, int32_t target)
{
    double mx = logits[0];
    for (int32_t i = 1; i < n_vocab; i++)
        if (logits[i] > mx)
            mx = logits[i];
    double sum = 0;
    for (int32_t i = 0; i < n_vocab; i++)
        sum += exp((double)logits[i] - mx);
    return log(sum) - ((double)logits[target] - mx);
}

/* The scored rows of one step, split over the pool's threads: row r's
 * logits predict target[r]; nll[r] receives -ln p. */
struct score_job {
    const float *logits;
    const int32_t *target;
    double *nll;
    size_t n_rows;
    int32_t n_vocab;
};

static void score_rows(void *arg, int ith, int nth)
{
    const struct score_job *j = arg;
    size_t per = (j->n_rows + (size_t)nth - 1) / (size_t)nth;
    size_t r0 = per * (size_t)ith, r1 = r0 + per < j->n_rows ? r0 + per : j->n_rows;
    for (size_t r = r0; r < r1; r++)
        j->nll[r] = token_nll(j->logits + r * (size_t)j->n_vocab, j->n_vocab, j->target[r]);
}

struct ppl {
    struct model m;
    struct tok *tok;
    struct sched_pool *pool;
    struct fwd *fwd;
    struct kv_seq *kv; /* n_slots */
    int32_t n_slots;
    struct tok_ids ids;
    char *text;
    int32_t *btok, *pos, *seq; /* the step's batch */
    bool *want;
    int32_t *target; /* [B] the token each scored row predicts */
    double *nll;     /* [B] and its -ln p */
    float *logits;
};

static void ppl_free(struct ppl *p)
{
    free(p->logits);
    free(p->btok);
    free(p->target);
    free(p->nll);
    free(p->pos);
    free(p->seq);
    free(p->want);
    if (p->kv)
        for (int32_t i = 0; i < p->n_slots; i++)
            kv_seq_free(&p->kv[i]);
    free(p->kv);
    fwd_free(p->fwd);
    sched_pool_free(p->pool);
    tok_ids_free(&p->ids);
    free(p->text);
    tok_free(p->tok);
    model_close(&p->m);
}

int cmd_perplexity(int argc, char **argv)
{
    struct ppl_args a = {0};
    int rc = parse_args(argc, argv, &a);
    if (rc)
        return rc < 0 ? 0 : rc;

    struct ppl p = {0};
    struct moed_err e = {0};
    double t_load = cli_now_s();
    rc = 1;
    if (cli_model_open("perplexity", a.model, &p.m, &p.tok))
        goto out;
    const struct model_hparams *hp = &p.m.hp;
    size_t len;
    FILE *tf = fopen(a.file, "rb");
    p.text = tf ? cli_read_all(tf, &len) : NULL;
    if (tf) {
        int err = errno;
        fclose(tf);
        errno = err;
    }
    if (!p.text) {
        fprintf(stderr, "moed perplexity: %s: %s\n", a.file, strerror(errno));
        goto out;
    }
    /* one stream, no BOS or EOS, no control-token matching */
    if (tok_encode(p.tok, p.text, len, 0, &p.ids, &e)) {
        fprintf(stderr, "moed perplexity: %s: %s\n", a.file, e.msg);
        goto out;
    }

    long W = a.ctx;
    if (!W)
        W = hp->n_ctx_train > 0 && hp->n_ctx_train < 512 ? hp->n_ctx_train : 512;
    else if (hp->n_ctx_train > 0 && W > hp->n_ctx_train)
        fprintf(stderr, "moed perplexity: note: windows of %ld tokens are longer than the model's "
                        "context of %d\n",
                W, hp->n_ctx_train);
    long first = a.first_half ? W / 2 : 0; /* logits at positions first .. W-2 are scored */
    long per_win = W - 1 - first;
    if (per_win < 1) {
        fprintf(stderr, "moed perplexity: --ctx %ld scores no token with --first-half\n", W);
        rc = 2;
        goto out;
    }
    long n_win = (long)(p.ids.n / (size_t)W);
    if (n_win == 0) {
        fprintf(stderr, "moed perplexity: %s has %zu tokens, fewer than one window of %ld\n",
                a.file, p.ids.n, W);
        goto out;
    }
    long n_win_all = n_win;
    if (a.chunks && a.chunks < n_win)
        n_win = a.chunks;
    int64_t total = (int64_t)n_win * W; /* tokens run through the model */
    int64_t n_scored = (int64_t)n_win * per_win;

    long B = a.batch;
    if (!B) {
        long k = 2048 / W > 4 ? 4 : 2048 / W;
        B = k > 0 ? k * W : W < 2048 ? W : 2048;
        /* and at most 256 MiB of logits */
        long cap = (long)((256u << 20) / sizeof(float) / (size_t)hp->n_vocab);
        if (B > cap)
            B = cap > 0 ? cap : 1;
    }
    if (B > total)
        B = (long)total;
    /* windows a step can touch: one continued + the ones it starts */
    long slots = (B + W - 1) / W + 1;
    if (slots > n_win)
        slots = n_win;
    p.n_slots = (int32_t)slots;

    size_t nv = (size_t)hp->n_vocab;
    if ((size_t)B > SIZE_MAX / sizeof(float) / nv) {
        fprintf(stderr, "moed perplexity: --batch %ld is too large for a vocabulary of %zu\n", B,
                nv);
        goto out;
    }
    p.btok = malloc(sizeof(int32_t) * (size_t)B);
    p.pos = malloc(sizeof(int32_t) * (size_t)B);
    p.seq = malloc(sizeof(int32_t) * (size_t)B);
    p.want = malloc(sizeof(bool) * (size_t)B);
    p.target = malloc(sizeof(int32_t) * (size_t)B);
    p.nll = malloc(sizeof(double) * (size_t)B);
    p.logits = malloc(sizeof(float) * (size_t)B * nv);
    p.kv = calloc((size_t)slots, sizeof *p.kv);
    if (!p.btok || !p.pos || !p.seq || !p.want || !p.target || !p.nll || !p.logits || !p.kv) {
        fprintf(stderr, "moed perplexity: out of memory for a batch of %ld tokens\n", B);
        goto out;
    }
    if (sched_pool_init(&p.pool, &(struct sched_pool_opts){.nthreads = (int)a.threads}, &e)) {
        fprintf(stderr, "moed perplexity: %s\n", e.msg);
        goto out;
    }
    if (fwd_init(&p.fwd, &p.m,
                 &(struct fwd_opts){.max_batch = (int32_t)B,
                                    .pool = p.pool,
                                    .gpu = a.gpu >= 0,
                                    .gpu_device = (int)a.gpu,
                                    .gpu_no_graph = a.no_graph},
                 &e)) {
        if (a.gpu >= 0)
            fprintf(stderr, "moed perplexity: --gpu %ld: %s\n", a.gpu, e.msg);
        else
            fprintf(stderr, "moed perplexity: %s\n", e.msg);
        goto out;
    }
    for (int32_t i = 0; i < p.n_slots; i++)
        if (fwd_kv_init(p.fwd, &p.kv[i], (int32_t)W, KT_F32, &e)) {
            fprintf(stderr, "moed perplexity: %s\n", e.msg);
            goto out;
        }

    char backend[512];
    if (fwd_on_gpu(p.fwd)) {
        char gd[400];
        cli_describe_gpu((int)a.gpu, a.no_graph, gd, sizeof gd);
        snprintf(backend, sizeof backend, "%.300s; scoring on %d thread%s", gd,
                 sched_pool_size(p.pool), sched_pool_size(p.pool) == 1 ? "" : "s");
    } else {
        snprintf(backend, sizeof backend, "%d thread%s, %s", sched_pool_size(p.pool),
                 sched_pool_size(p.pool) == 1 ? "" : "s", kern_isa_describe());
    }
    fprintf(stderr,
            "moed perplexity: %s: %s, %d layers, d %d, %d experts top %d, vocab %d, loaded in "
            "%.0f ms; %s\n",
            a.model, model_arch_name(hp->arch), hp->n_layer, hp->n_embd, hp->n_expert,
            hp->n_expert_used, hp->n_vocab, (cli_now_s() - t_load) * 1e3, backend);
    fprintf(stderr,
            "moed perplexity: %s: %zu tokens (one stream, no BOS); %ld windows of %ld tokens%s "
            "(%zu tail tokens unused); scoring %s: %" PRId64 " tokens; %ld tokens per step\n",
            a.file, p.ids.n, n_win_all, W,
            n_win < n_win_all ? " (--chunks: using the first ones)" : "",
            p.ids.n - (size_t)n_win_all * (size_t)W,
            a.first_half ? "positions W/2+1..W-1 of each window (llama.cpp)"
                         : "all but each window's first token",
            n_scored, B);
    if (n_win < n_win_all)
        fprintf(stderr, "moed perplexity: --chunks %ld: %ld of %ld windows\n", a.chunks, n_win,
                n_win_all);

    const int32_t *ids = p.ids.v;
    struct kv_seq **seqs = malloc(sizeof(struct kv_seq *) * (size_t)p.n_slots);
    if (!seqs) {
        fprintf(stderr, "moed perplexity: out of memory\n");
        goto out;
    }
    for (int32_t i = 0; i < p.n_slots; i++)
        seqs[i] = &p.kv[i];

    double sum = 0, sum_half = 0;
    int64_t counted = 0, n_half = 0;
    double t0 = cli_now_s(), t_print = t0, t_score = 0;
    for (int64_t g0 = 0; g0 < total; g0 += B) {
        int32_t n = (int32_t)(total - g0 < B ? total - g0 : B);
        for (int32_t i = 0; i < n; i++) {
            int64_t g = g0 + i;
            int64_t w = g / W;
            int32_t ps = (int32_t)(g % W);
            p.btok[i] = ids[g];
            p.pos[i] = ps;
            p.seq[i] = (int32_t)(w % p.n_slots);
            p.want[i] = ps >= first && ps <= W - 2;
            if (ps == 0)
                kv_seq_truncate(&p.kv[p.seq[i]], 0);
        }
        struct fwd_batch b = {n, p.btok, p.pos, p.seq, p.want};
        if (fwd_step(p.fwd, &b, seqs, p.n_slots, p.logits, &e)) {
            fprintf(stderr, "moed perplexity: step at token %" PRId64 ": %s\n", g0, e.msg);
            free(seqs);
            goto out;
        }
        double ts = cli_now_s();
        /* the logits at a flagged position predict the window's next token */
        size_t rows = 0;
        for (int32_t i = 0; i < n; i++)
            if (p.want[i])
                p.target[rows++] = ids[g0 + i + 1];
        struct score_job job = {p.logits, p.target, p.nll, rows, hp->n_vocab};
        sched_pool_run(p.pool, score_rows, &job);
        /* in order: the same sums whatever the threads */
        for (int32_t i = 0, r = 0; i < n; i++) {
            if (!p.want[i])
                continue;
            sum += p.nll[r];
            if (p.pos[i] >= W / 2) { /* llama.cpp's half too */
                sum_half += p.nll[r];
                n_half++;
            }
            r++;
        }
        counted += (int64_t)rows;
        double t = cli_now_s();
        t_score += t - ts;
        int64_t done = g0 + n;
        if (counted && (t - t_print >= 2.0 || done == total)) {
            t_print = t;
            fprintf(stderr,
                    "moed perplexity: [%" PRId64 "/%ld windows] ppl %.4f so far (%" PRId64
                    " tokens scored), %.0f tok/s\n",
                    done / W, n_win, exp(sum / (double)counted), counted,
                    (double)done / (t - t0 > 0 ? t - t0 : 1e-9));
        }
    }
    free(seqs);
    double dt = cli_now_s() - t0;
    if (counted != n_scored) {
        fprintf(stderr, "moed perplexity: internal error: scored %" PRId64 " tokens, expected %" PRId64 "\n",
                counted, n_scored);
        goto out;
    }
    double nll = sum / (double)counted;
    printf("ppl = %.4f (nll %.6f over %" PRId64 " tokens, %ld-token windows%s)\n", exp(nll), nll,
           counted, W, a.first_half ? ", second half of each" : "");
    fflush(stdout);
    if (!a.first_half && n_half)
        fprintf(stderr,
                "moed perplexity: llama.cpp's convention (--first-half: positions W/2+1..W-1 "
                "only) on the same run: ppl = %.4f (nll %.6f over %" PRId64 " tokens)\n",
                exp(sum_half / (double)n_half), sum_half / (double)n_half, n_half);
    fprintf(stderr,
            "moed perplexity: %" PRId64 " tokens through the model in %.2f s: %.1f tok/s (%ld per "
            "step, %d thread%s; log-softmax %.2f s)\n",
            total, dt, (double)total / (dt > 0 ? dt : 1e-9), B, sched_pool_size(p.pool),
            sched_pool_size(p.pool) == 1 ? "" : "s", t_score);
    rc = 0;
out:
    ppl_free(&p);
    return rc;
}
