/*
 * moed run -m FILE -p PROMPT [-n N] [sampling flags] [--threads N] ...
 *
 * One-shot generation, on the CPU or (--gpu N) all on one CUDA device:
 * tokenize the prompt, prefill it in batches, then decode one token per
 * step, streaming the text to stdout as it comes (the streaming detokenizer
 * keeps UTF-8 characters whole), until N tokens or an end-of-generation
 * token.  On stderr: the model and the backend, then the prefill and decode
 * speeds.  With --gpu and --expert-budget the routed experts run hybrid
 * (sched/hybrid.h: a budget of GPU slots, the rest on CPU workers, by default
 * one pinned per physical core); then a summary line of the executor's
 * counters for prefill and one for decode follow on stderr.
 *
 * Exit status: 0, 1 for a runtime error (one line on stderr), 2 for a
 * usage error.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "daemon/cli.h"
#include "daemon/cmds.h"
#include "kernels/cpu/isa.h"
#include "kernels/cpu/types.h"
#include "kernels/cuda/kc.h"
#include "kernels/cuda/kcuda.h"
#include "model/forward.h"
#include "model/model.h"
#include "model/sample.h"
#include "model/tok.h"
#include "model/trace.h"
#include "sched/hybrid.h"
#include "sched/predict.h"
#include "sched/pool.h"

static const char usage[] =
    "usage: moed run -m FILE -p PROMPT [-n N] [options]\n"
    "\n"
    "Generate text from a prompt on the CPU, or all on one CUDA device with --gpu (with\n"
    "--expert-budget: hybrid, part of the experts on the CPU); prints the text on stdout and\n"
    "the backend, the prefill and the decode speeds on stderr (hybrid: and its counters).\n"
    "\n"
    "  -m, --model FILE          GGUF model\n"
    "  -p, --prompt TEXT         prompt\n"
    "  -n, --n-predict N         tokens to generate (default 64)\n"
    "  --temp X                  temperature; 0 is greedy (default 0.8)\n"
    "  --top-k N                 keep the N most likely tokens; 0 off (default 40)\n"
    "  --top-p X                 nucleus sampling; 1 off (default 0.95)\n"
    "  --min-p X                 drop tokens below X times the best; 0 off (default 0.05)\n"
    "  --repeat-penalty X        penalise repeats of the last 64 tokens; 1 off (default 1)\n"
    "  --presence-penalty X      OpenAI presence penalty (default 0)\n"
    "  --frequency-penalty X     OpenAI frequency penalty (default 0)\n"
    "  --seed N                  random seed (default: from the clock; printed)\n"
    "  --gpu N                   run on CUDA device N (weights, activations and KV cache on the\n"
    "                            GPU; default: the CPU)\n"
    "  --no-graph                with --gpu: never replay decode steps as CUDA graphs\n"
    "  --threads N               CPU threads (default: online CPUs; hybrid: one pinned per\n"
    "                            physical core)\n"
    "  --ctx N                   KV cache positions (default: prompt + N)\n"
    "  --batch N                 prompt tokens per prefill step (default 256)\n"
    "  --kv-type f32|f16         KV cache storage (default f32; f16 halves the memory)\n"
    "  --special                 match control tokens (<|im_start|> ...) written in the prompt\n"
    "  --echo                    print the prompt before the generated text\n"
    "  --profile                 print where the time of prefill and decode went\n"
    "  --routing-trace FILE      write every layer's routing (token, experts, weights) to FILE\n"
    "                            (format: model/trace.h; summary: tools/trace_summary.py);\n"
    "                            CPU only\n"
    "  --predict-stats           measure how well each layer's router, applied to the layer\n"
    "                            before's hidden rows, predicts its experts (vs the most-used\n"
    "                            experts so far); printed on stderr at the end; CPU only\n";

static int parse_float(const char *flag, const char *s, float *out)
{
    char *end;
    errno = 0;
    float v = strtof(s, &end);
    if (errno || end == s || *end) {
        fprintf(stderr, "moed run: %s '%s': expected a number\n", flag, s);
        return -1;
    }
    *out = v;
    return 0;
}

struct run_args {
    const char *model, *prompt;
    const char *trace_path; /* --routing-trace */
    long n_predict, threads, n_ctx, batch;
    long gpu; /* --gpu: CUDA device, -1: the CPU */
    uint32_t kv_type;
    bool special, echo, seed_given, profile, no_graph;
    bool predict_stats; /* --predict-stats */
    struct sample_params sp;
    struct cli_hybrid hy; /* --expert-budget and the other hybrid flags */
};

/* 0, 1 (error printed) or 2 (usage error printed); -1 after --help. */
static int parse_args(int argc, char **argv, struct run_args *a)
{
    a->n_predict = 64;
    a->batch = 256;
    a->gpu = -1;
    a->kv_type = KT_F32;
    a->sp = sample_params_default();
    a->sp.temperature = 0.8f;
    a->sp.top_k = 40;
    a->sp.top_p = 0.95f;
    a->sp.min_p = 0.05f;
    cli_hybrid_init(&a->hy);
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i];
        if (!strcmp(f, "-h") || !strcmp(f, "--help")) {
            fputs(usage, stdout);
            cli_hybrid_usage(stdout, 28);
            fputs("  -h, --help                this text\n", stdout);
            return -1;
        }
        int hr = cli_hybrid_arg("run", argc, argv, &i, &a->hy);
        if (hr == 1)
            continue;
        if (hr)
            return hr;
        if (!strcmp(f, "--special")) {
            a->special = true;
            continue;
        }
        if (!strcmp(f, "--echo")) {
            a->echo = true;
            continue;
        }
        if (!strcmp(f, "--profile")) {
            a->profile = true;
            continue;
        }
        if (!strcmp(f, "--predict-stats")) {
            a->predict_stats = true;
            continue;
        }
        if (!strcmp(f, "--no-graph")) {
            a->no_graph = true;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "moed run: %s needs a value (try --help)\n", f);
            return 2;
        }
        const char *v = argv[++i];
        long l;
        int rc = 0;
        if (!strcmp(f, "-m") || !strcmp(f, "--model"))
            a->model = v;
        else if (!strcmp(f, "-p") || !strcmp(f, "--prompt"))
            a->prompt = v;
        else if (!strcmp(f, "--routing-trace"))
            a->trace_path = v;
        else if (!strcmp(f, "-n") || !strcmp(f, "--n-predict"))
            rc = cli_parse_long("run", f, v, 0, 1 << 24, &a->n_predict);
        else if (!strcmp(f, "--temp"))
            rc = parse_float(f, v, &a->sp.temperature);
        else if (!strcmp(f, "--top-k")) {
            if (!(rc = cli_parse_long("run", f, v, 0, INT32_MAX, &l)))
                a->sp.top_k = (int32_t)l;
        } else if (!strcmp(f, "--top-p"))
            rc = parse_float(f, v, &a->sp.top_p);
        else if (!strcmp(f, "--min-p"))
            rc = parse_float(f, v, &a->sp.min_p);
        else if (!strcmp(f, "--repeat-penalty"))
            rc = parse_float(f, v, &a->sp.repeat_penalty);
        else if (!strcmp(f, "--presence-penalty"))
            rc = parse_float(f, v, &a->sp.presence_penalty);
        else if (!strcmp(f, "--frequency-penalty"))
            rc = parse_float(f, v, &a->sp.frequency_penalty);
        else if (!strcmp(f, "--seed")) {
            char *end;
            errno = 0;
            a->sp.seed = strtoull(v, &end, 10);
            if (errno || end == v || *end || *v == '-') {
                fprintf(stderr, "moed run: --seed '%s': expected an unsigned integer\n", v);
                rc = -1;
            }
            a->seed_given = true;
        } else if (!strcmp(f, "--threads"))
            rc = cli_parse_long("run", f, v, 1, 4096, &a->threads);
        else if (!strcmp(f, "--gpu"))
            rc = cli_parse_long("run", f, v, 0, 63, &a->gpu);
        else if (!strcmp(f, "--ctx"))
            rc = cli_parse_long("run", f, v, 1, INT32_MAX, &a->n_ctx);
        else if (!strcmp(f, "--batch"))
            rc = cli_parse_long("run", f, v, 1, 1 << 16, &a->batch);
        else if (!strcmp(f, "--kv-type")) {
            if (!strcmp(v, "f16"))
                a->kv_type = KT_F16;
            else if (!strcmp(v, "f32"))
                a->kv_type = KT_F32;
            else {
                fprintf(stderr, "moed run: --kv-type '%s': expected f16 or f32\n", v);
                rc = -1;
            }
        } else {
            fprintf(stderr, "moed run: unknown argument '%s' (try --help)\n", f);
            return 2;
        }
        if (rc)
            return 2;
    }
    if (!a->model || !a->prompt) {
        fprintf(stderr, "moed run: -m FILE and -p PROMPT are required (try --help)\n");
        return 2;
    }
    if (a->trace_path && a->gpu >= 0) {
        fprintf(stderr, "moed run: --routing-trace records the CPU expert executor: it cannot be "
                        "used with --gpu\n");
        return 2;
    }
    if (a->predict_stats && a->gpu >= 0) {
        fprintf(stderr, "moed run: --predict-stats wraps the CPU expert executor: it cannot be "
                        "used with --gpu\n");
        return 2;
    }
    if (a->no_graph && a->gpu < 0) {
        fprintf(stderr, "moed run: --no-graph needs --gpu N\n");
        return 2;
    }
    int hrc = cli_hybrid_check("run", &a->hy, a->gpu >= 0);
    if (hrc)
        return hrc;
    struct moed_err e = {0};
    if (sample_params_check(&a->sp, &e)) {
        fprintf(stderr, "moed run: %s\n", e.msg);
        return 2;
    }
    if (!a->seed_given)
        a->sp.seed = (uint64_t)time(NULL) ^ ((uint64_t)clock() << 32);
    return 0;
}

/* Everything a run owns, freed by run_free whatever was set up. */
struct run {
    struct model m;
    struct tok *tok;
    struct sched_pool *pool;
    struct fwd *fwd;
    struct kv_seq kv;
    struct sampler smp;
    bool smp_ok;
    struct tok_stream ts;
    bool ts_ok;
    struct tok_ids ids; /* prompt, then generated tokens */
    float *logits;
    FILE *trace_f;       /* --routing-trace */
    struct trace *trace; /* wraps the CPU executor the fwd uses */
    struct predict_stats *pstats; /* --predict-stats: wraps the trace or a CPU executor */
};

static void run_free(struct run *r)
{
    free(r->logits);
    tok_ids_free(&r->ids);
    if (r->ts_ok)
        tok_stream_free(&r->ts);
    if (r->smp_ok)
        sampler_free(&r->smp);
    kv_seq_free(&r->kv);
    fwd_free(r->fwd);
    predict_stats_close(r->pstats);
    trace_close(r->trace, NULL);
    if (r->trace_f)
        fclose(r->trace_f);
    sched_pool_free(r->pool);
    tok_free(r->tok);
    model_close(&r->m);
}

static int push_id(struct tok_ids *ids, int32_t id)
{
    if (ids->n == ids->cap) {
        size_t cap = ids->cap ? 2 * ids->cap : 64;
        int32_t *v = realloc(ids->v, cap * sizeof *v);
        if (!v)
            return -1;
        ids->v = v;
        ids->cap = cap;
    }
    ids->v[ids->n++] = id;
    return 0;
}

/* One line: each phase's share of a part's time. */
static void print_profile(const char *part, const struct fwd *f, double total)
{
    struct fwd_stats st;
    fwd_stats_get(f, &st);
    fprintf(stderr, "moed run: %s profile (%" PRId64 " steps):", part, st.steps);
    for (int ph = 0; ph < FWD_PH_COUNT; ph++)
        fprintf(stderr, " %s %.1f ms", fwd_phase_name((enum fwd_phase)ph), st.seconds[ph] * 1e3);
    double sum = 0;
    for (int ph = 0; ph < FWD_PH_COUNT; ph++)
        sum += st.seconds[ph];
    fprintf(stderr, "; outside steps %.1f ms\n", (total - sum) * 1e3);
}

static int generate(struct run *r, const struct run_args *a)
{
    struct moed_err e = {0};
    int32_t n_prompt = (int32_t)r->ids.n;
    int32_t *pos = malloc(sizeof(int32_t) * (size_t)a->batch);
    int32_t *seq = calloc((size_t)a->batch, sizeof(int32_t));
    bool *want = malloc(sizeof(bool) * (size_t)a->batch);
    if (!pos || !seq || !want) {
        fprintf(stderr, "moed run: out of memory\n");
        free(pos);
        free(seq);
        free(want);
        return 1;
    }

    /* prefill: the prompt in batches, logits for its last token only */
    struct hybrid *hy = fwd_hybrid(r->fwd);
    if (hy) /* the slots' initial fill is not the prefill's */
        hybrid_stats_reset(hy);
    double t0 = cli_now_s();
    for (int32_t i0 = 0; i0 < n_prompt; i0 += (int32_t)a->batch) {
        int32_t n = n_prompt - i0 < a->batch ? n_prompt - i0 : (int32_t)a->batch;
        for (int32_t i = 0; i < n; i++) {
            pos[i] = i0 + i;
            want[i] = i0 + i == n_prompt - 1;
        }
        struct kv_seq *seqs[1] = {&r->kv};
        struct fwd_batch b = {n, r->ids.v + i0, pos, seq, want};
        if (r->trace)
            trace_step(r->trace, b.n, b.token, b.seq, b.pos);
        if (fwd_step(r->fwd, &b, seqs, 1, r->logits, &e)) {
            fprintf(stderr, "moed run: prefill: %s\n", e.msg);
            free(pos);
            free(seq);
            free(want);
            return 1;
        }
    }
    free(pos);
    free(seq);
    free(want);
    double t_prefill = cli_now_s() - t0;
    struct hybrid_stats hs_prefill = {0};
    if (hy) { /* printed at the end, after the text */
        hybrid_stats_get(hy, &hs_prefill, NULL);
        hybrid_stats_reset(hy);
    }
    if (a->profile) {
        print_profile("prefill", r->fwd, t_prefill);
        fwd_stats_reset(r->fwd);
    }

    /* decode: sample from the last logits, show the token, feed it back */
    double t1 = cli_now_s();
    int32_t n_steps = 0, n_gen = 0;
    const char *eos_note = "";
    while (n_gen < a->n_predict) {
        struct sample_result res;
        if (sampler_sample(&r->smp, r->logits, r->ids.v, (int32_t)r->ids.n, &res)) {
            fprintf(stderr, "\nmoed run: sampling failed\n");
            return 1;
        }
        if (tok_is_eog(r->tok, res.token)) {
            eos_note = " (end of generation)";
            break;
        }
        if (push_id(&r->ids, res.token)) {
            fprintf(stderr, "\nmoed run: out of memory\n");
            return 1;
        }
        n_gen++;
        const char *text;
        size_t len;
        if (res.token < (int32_t)tok_n_vocab(r->tok) &&
            !tok_stream_feed(&r->ts, res.token, &text, &len, &e)) {
            fwrite(text, 1, len, stdout);
            fflush(stdout);
        }
        if (n_gen >= a->n_predict)
            break;
        int32_t p = (int32_t)r->ids.n - 1, s = 0;
        bool w = true;
        struct kv_seq *seqs[1] = {&r->kv};
        struct fwd_batch b = {1, &res.token, &p, &s, &w};
        if (r->trace)
            trace_step(r->trace, b.n, b.token, b.seq, b.pos);
        if (fwd_step(r->fwd, &b, seqs, 1, r->logits, &e)) {
            fprintf(stderr, "\nmoed run: decode: %s\n", e.msg);
            return 1;
        }
        n_steps++;
    }
    double t_decode = cli_now_s() - t1;
    if (a->profile)
        print_profile("decode", r->fwd, t_decode);
    const char *text;
    size_t len;
    tok_stream_flush(&r->ts, &text, &len);
    fwrite(text, 1, len, stdout);
    fputc('\n', stdout);
    fflush(stdout);

    fprintf(stderr, "moed run: prefill %d tokens in %.1f ms: %.1f tok/s\n", n_prompt,
            t_prefill * 1e3, n_prompt / (t_prefill > 0 ? t_prefill : 1e-9));
    fprintf(stderr, "moed run: decode %d tokens in %.1f ms: %.1f tok/s (%d steps)%s\n", n_gen,
            t_decode * 1e3, n_steps ? n_steps / t_decode : 0.0, n_steps, eos_note);
    if (hy) { /* decode: the steps after the prefill (the last token is not fed back) */
        struct hybrid_stats hs_decode;
        hybrid_stats_get(hy, &hs_decode, NULL);
        cli_hybrid_print(stderr, "moed run: hybrid prefill: ", &a->hy, &hs_prefill, &r->m.hp,
                         (uint64_t)n_prompt);
        cli_hybrid_print(stderr, "moed run: hybrid decode: ", &a->hy, &hs_decode, &r->m.hp,
                         (uint64_t)n_steps);
    }
    return 0;
}

/* --routing-trace: the CPU executor the fwd would make, wrapped by the
 * recorder (model/trace.h); nothing when the option is absent. */
static int open_trace(struct run *r, const struct run_args *a, int argc, char **argv,
                      struct moed_err *e)
{
    if (!a->trace_path)
        return 0;
    const struct model_hparams *hp = &r->m.hp;
    r->trace_f = fopen(a->trace_path, "wb");
    if (!r->trace_f)
        return moed_err_set(e, MOED_EIO, "--routing-trace %s: %s", a->trace_path,
                            strerror(errno));
    struct moe_exec *cpu;
    struct moe_cpu_opts co = {.pool = r->pool,
                              .max_tok = (int32_t)a->batch,
                              .n_expert = hp->n_expert,
                              .n_used = hp->n_expert_used,
                              .n_embd = hp->n_embd,
                              .n_ff = hp->n_ff_exp};
    int rc = moe_cpu_new(&cpu, &co, e);
    if (rc)
        return rc;
    struct trace_opts to = {.f = r->trace_f,
                            .inner = cpu,
                            .own_inner = true,
                            .n_layer = hp->n_layer,
                            .n_expert = hp->n_expert,
                            .n_used = hp->n_expert_used,
                            .model = a->model,
                            .arch = model_arch_name(hp->arch),
                            .argc = argc,
                            .argv = argv};
    rc = trace_open(&r->trace, &to, e);
    if (rc) {
        moe_exec_free(cpu);
        moed_err_wrap(e, "--routing-trace %s", a->trace_path);
    }
    return rc;
}

/* --predict-stats: the accuracy recorder (sched/predict.h) around the trace
 * recorder when there is one, else around a CPU executor of its own. */
static int open_pstats(struct run *r, const struct run_args *a, struct moed_err *e)
{
    if (!a->predict_stats)
        return 0;
    const struct model_hparams *hp = &r->m.hp;
    struct moe_exec *inner = r->trace ? trace_exec(r->trace) : NULL;
    if (!inner) {
        struct moe_cpu_opts co = {.pool = r->pool,
                                  .max_tok = (int32_t)a->batch,
                                  .n_expert = hp->n_expert,
                                  .n_used = hp->n_expert_used,
                                  .n_embd = hp->n_embd,
                                  .n_ff = hp->n_ff_exp};
        int rc = moe_cpu_new(&inner, &co, e);
        if (rc)
            return rc;
    }
    struct predict_stats_opts po = {.inner = inner,
                                    .own_inner = !r->trace,
                                    .m = &r->m,
                                    .max_tok = (int32_t)a->batch,
                                    .ahead = 2};
    int rc = predict_stats_open(&r->pstats, &po, e);
    if (rc) {
        if (!r->trace)
            moe_exec_free(inner);
        moed_err_wrap(e, "--predict-stats");
    }
    return rc;
}

/* Flush and close the trace; 0 or 1 (error printed). */
static int close_trace(struct run *r, const struct run_args *a)
{
    if (!r->trace)
        return 0;
    struct moed_err e = {0};
    int64_t n = trace_records(r->trace);
    int rc = trace_close(r->trace, &e);
    r->trace = NULL;
    if (!rc && fclose(r->trace_f))
        rc = moed_err_set(&e, MOED_EIO, "routing trace: closing: %s", strerror(errno));
    else if (rc)
        fclose(r->trace_f);
    r->trace_f = NULL;
    if (rc) {
        fprintf(stderr, "moed run: --routing-trace %s: %s\n", a->trace_path, e.msg);
        return 1;
    }
    fprintf(stderr, "moed run: routing trace: %lld records (token x layer) in %s\n", (long long)n,
            a->trace_path);
    return 0;
}

int cmd_run(int argc, char **argv)
{
    struct run_args a = {0};
    int rc = parse_args(argc, argv, &a);
    if (rc)
        return rc < 0 ? 0 : rc;

    struct run r = {0};
    struct moed_err e = {0};
    double t0 = cli_now_s();
    rc = 1;
    if (cli_model_open("run", a.model, &r.m, &r.tok))
        goto out;
    const struct model_hparams *hp = &r.m.hp;
    unsigned flags = tok_enc_defaults(r.tok) | (a.special ? TOK_ENC_SPECIAL : 0);
    if (tok_encode(r.tok, a.prompt, strlen(a.prompt), flags, &r.ids, &e)) {
        fprintf(stderr, "moed run: prompt: %s\n", e.msg);
        goto out;
    }
    if (r.ids.n == 0) {
        fprintf(stderr, "moed run: the prompt is empty and the vocabulary adds no BOS token\n");
        goto out;
    }
    long n_ctx = a.n_ctx ? a.n_ctx : (long)r.ids.n + a.n_predict;
    if ((long)r.ids.n + a.n_predict > n_ctx)
        fprintf(stderr,
                "moed run: note: --ctx %ld holds %zu prompt tokens + %ld: generation stops "
                "at the end of the cache\n",
                n_ctx, r.ids.n, a.n_predict);
    if (n_ctx > INT32_MAX) {
        fprintf(stderr, "moed run: context of %ld positions is too large\n", n_ctx);
        goto out;
    }
    if (hp->n_ctx_train && n_ctx > hp->n_ctx_train)
        fprintf(stderr, "moed run: note: context %ld is longer than the model's %d\n", n_ctx,
                hp->n_ctx_train);
    if ((long)r.ids.n > n_ctx) {
        fprintf(stderr, "moed run: the prompt has %zu tokens, more than --ctx %ld\n", r.ids.n,
                n_ctx);
        goto out;
    }
    /* the decode loop stops where the cache ends */
    if ((long)r.ids.n + a.n_predict > n_ctx)
        a.n_predict = n_ctx - (long)r.ids.n + 1;

    if (a.batch > (long)r.ids.n)
        a.batch = (long)r.ids.n;
    char pool_desc[96] = "";
    if (a.hy.on) {
        /* the device's context before the pinned workers, so that its threads keep the
         * whole CPU mask; an error here is fwd_init's to report */
        struct moed_err ce = {0};
        size_t mf, mt;
        if (!kc_set_device((int)a.gpu, &ce))
            kc_mem_info(&mf, &mt, &ce);
        if (cli_hybrid_pool("run", (int)a.threads, &r.pool, pool_desc, sizeof pool_desc, &e)) {
            fprintf(stderr, "moed run: CPU workers: %s\n", e.msg);
            goto out;
        }
    } else if (sched_pool_init(&r.pool, &(struct sched_pool_opts){.nthreads = (int)a.threads},
                               &e)) {
        fprintf(stderr, "moed run: %s\n", e.msg);
        goto out;
    }
    if (open_trace(&r, &a, argc, argv, &e) || open_pstats(&r, &a, &e)) {
        fprintf(stderr, "moed run: %s\n", e.msg);
        goto out;
    }
    if (fwd_init(&r.fwd, &r.m,
                 &(struct fwd_opts){.max_batch = (int32_t)a.batch,
                                    .pool = r.pool,
                                    .exec = r.pstats  ? predict_stats_exec(r.pstats)
                                            : r.trace ? trace_exec(r.trace)
                                                      : NULL,
                                    .gpu = a.gpu >= 0,
                                    .gpu_device = (int)a.gpu,
                                    .gpu_no_graph = a.no_graph,
                                    .hybrid = a.hy.on ? &a.hy.o : NULL},
                 &e)) {
        if (a.gpu >= 0)
            fprintf(stderr, "moed run: --gpu %ld: %s\n", a.gpu, e.msg);
        else
            fprintf(stderr, "moed run: %s\n", e.msg);
        goto out;
    }
    if (fwd_kv_init(r.fwd, &r.kv, (int32_t)n_ctx, a.kv_type, &e) ||
        sampler_init(&r.smp, &a.sp, hp->n_vocab, &e)) {
        fprintf(stderr, "moed run: %s\n", e.msg);
        goto out;
    }
    r.smp_ok = true;
    if (tok_stream_init(&r.ts, r.tok, 0, &e)) {
        fprintf(stderr, "moed run: %s\n", e.msg);
        goto out;
    }
    r.ts_ok = true;
    r.logits = malloc(sizeof(float) * (size_t)hp->n_vocab);
    if (!r.logits) {
        fprintf(stderr, "moed run: out of memory\n");
        goto out;
    }
    char backend[1024];
    struct hybrid *hy = fwd_hybrid(r.fwd);
    if (a.hy.on && !hy)
        fprintf(stderr,
                "moed run: note: --expert-budget %s gives every expert a GPU slot: all on the "
                "GPU (--force-hybrid runs hybrid anyway)\n",
                a.hy.budget);
    if (hy) {
        struct hybrid_stats hs;
        char gdesc[400], full[512];
        hybrid_stats_get(hy, &hs, NULL);
        cli_hybrid_describe(&a.hy, &hs, hp, false, full, sizeof full);
        /* hybrid steps return to the host every MoE layer: no CUDA graphs */
        cli_describe_gpu((int)a.gpu, true, gdesc, sizeof gdesc);
        snprintf(backend, sizeof backend, "%s; %s; CPU: %s, %s", gdesc, full, pool_desc,
                 kern_isa_describe());
    } else if (fwd_on_gpu(r.fwd))
        cli_describe_gpu((int)a.gpu, a.no_graph, backend, sizeof backend);
    else
        snprintf(backend, sizeof backend, "%d thread%s, %s", sched_pool_size(r.pool),
                 sched_pool_size(r.pool) == 1 ? "" : "s", kern_isa_describe());
    fprintf(stderr,
            "moed run: %s: %s, %d layers, d %d, %d experts top %d, %.2f GiB, loaded in %.0f ms; "
            "%s\n",
            a.model, model_arch_name(hp->arch), hp->n_layer, hp->n_embd, hp->n_expert,
            hp->n_expert_used, (double)model_weight_bytes(&r.m) / (1 << 30),
            (cli_now_s() - t0) * 1e3, backend);
    if (a.sp.temperature > 0)
        fprintf(stderr, "moed run: seed %" PRIu64 "\n", a.sp.seed);
    if (a.echo) {
        fputs(a.prompt, stdout);
        fflush(stdout);
    }
    rc = generate(&r, &a);
    if (r.pstats && !rc)
        predict_stats_print(r.pstats, stderr, "moed run: predict ");
    if (close_trace(&r, &a))
        rc = 1;
out:
    run_free(&r);
    return rc;
}
