/* Shared pieces of the one-shot commands (see cli.h). */
#include "daemon/cli.h"
#include "kernels/cuda/kcuda.h"

#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cache/cache.h"
#include "conf/conf.h"
#include "model/model.h"
#include "model/tok.h"
#include "sched/topo.h"

double cli_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int cli_parse_long(const char *cmd, const char *flag, const char *s, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) {
        fprintf(stderr, "moed %s: %s '%s': expected an integer in %ld..%ld\n", cmd, flag, s, lo,
                hi);
        return -1;
    }
    *out = v;
    return 0;
}

char *cli_read_all(FILE *f, size_t *len)
{
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap + 1);
    while (buf) {
        n += fread(buf + n, 1, cap - n, f);
        if (n < cap)
            break;
        char *nb = cap <= SIZE_MAX / 2 - 1 ? realloc(buf, cap * 2 + 1) : NULL;
        if (!nb) {
            free(buf);
            errno = ENOMEM;
            return NULL;
        }
        buf = nb;
        cap *= 2;
    }
    if (!buf) {
        errno = ENOMEM;
        return NULL;
    }
    if (ferror(f)) {
        int err = errno ? errno : EIO;
        free(buf);
        errno = err;
        return NULL;
    }
    buf[n] = 0;
    *len = n;
    return buf;
}

int cli_model_open(const char *cmd, const char *path, struct model *m, struct tok **tok)
{
    struct moed_err e = {0};
    if (model_open(m, path, &e)) {
        fprintf(stderr, "moed %s: %s\n", cmd, e.msg);
        return 1;
    }
    if (tok_load(tok, m->gguf, &e)) {
        fprintf(stderr, "moed %s: %s: tokenizer: %s\n", cmd, path, e.msg);
        return 1;
    }
    if (*tok_warning(*tok))
        fprintf(stderr, "moed %s: %s: tokenizer: %s\n", cmd, path, tok_warning(*tok));
    return 0;
}

void cli_describe_gpu(int dev, int no_graph, char *buf, size_t n)
{
    struct kcuda_device d;
    struct moed_err e = {0};
    const char *g = no_graph ? ", no CUDA graphs" : ", CUDA graphs for decode";
    if (kcuda_device_info(dev, &d, &e))
        snprintf(buf, n, "GPU %d (%s)%s", dev, e.msg, g);
    else
        snprintf(buf, n, "GPU %d: %s, sm_%d%d, %d SMs, %.1f GiB%s", dev, d.name, d.cc_major,
                 d.cc_minor, d.sm_count, d.mem_total / 1073741824.0, g);
}

/* ---- the hybrid flags ---- */

void cli_hybrid_init(struct cli_hybrid *h)
{
    memset(h, 0, sizeof *h);
    h->o.policy = CACHE_SCORE;
}

static void hybrid_seen(struct cli_hybrid *h, const char *flag, bool needs_budget)
{
    if (!h->first)
        h->first = flag;
    if (needs_budget && !h->needs)
        h->needs = flag;
}

int cli_hybrid_arg(const char *cmd, int argc, char **argv, int *i, struct cli_hybrid *h)
{
    const char *f = argv[*i];
    bool *sw = NULL;
    if (!strcmp(f, "--static-placement"))
        sw = &h->o.static_layers;
    else if (!strcmp(f, "--no-prefetch"))
        sw = &h->o.no_prefetch;
    else if (!strcmp(f, "--no-plan"))
        sw = &h->o.no_plan;
    else if (!strcmp(f, "--force-hybrid"))
        sw = &h->o.force;
    else if (!strcmp(f, "--staging"))
        sw = &h->o.force_staging;
    if (sw) {
        *sw = true;
        hybrid_seen(h, f, true);
        return 1;
    }
    bool budget = !strcmp(f, "--expert-budget"), policy = !strcmp(f, "--cache-policy"),
         cost = !strcmp(f, "--cost");
    if (!budget && !policy && !cost)
        return 0;
    if (*i + 1 >= argc) {
        fprintf(stderr, "moed %s: %s needs a value (try --help)\n", cmd, f);
        return 2;
    }
    const char *v = argv[++*i];
    if (budget) {
        struct conf_budget b;
        const char *why = "not a budget";
        if (conf_parse_budget(v, &b, &why)) {
            fprintf(stderr,
                    "moed %s: --expert-budget '%s': %s; expected a share of all the model's "
                    "experts (25%%, 0.25) or bytes of GPU slots (12G, 512M)\n",
                    cmd, v, why);
            return 2;
        }
        h->on = true;
        h->budget = v;
        h->o.budget_frac = b.is_fraction ? b.fraction : 0;
        h->o.budget_bytes = b.is_fraction ? 0 : b.bytes;
        hybrid_seen(h, f, false);
    } else if (policy) {
        enum cache_policy p = CACHE_SCORE;
        int bad = cache_policy_parse(v, &p);
        if (bad || p == CACHE_BELADY) {
            fprintf(stderr, "moed %s: --cache-policy '%s': expected lru, lfu or score%s\n", cmd, v,
                    bad ? "" : " (belady needs the future: moed cache-sim only)");
            return 2;
        }
        h->o.policy = p;
        hybrid_seen(h, f, true);
    } else {
        if (!*v) {
            fprintf(stderr, "moed %s: --cost: empty file name\n", cmd);
            return 2;
        }
        h->cost_path = v;
        hybrid_seen(h, f, true);
    }
    return 1;
}

int cli_hybrid_check(const char *cmd, struct cli_hybrid *h, bool gpu)
{
    if (h->first && !gpu) {
        fprintf(stderr,
                "moed %s: %s needs --gpu N (the hybrid engine runs the dense layers on the GPU)\n",
                cmd, h->first);
        return 2;
    }
    if (h->needs && !h->on) {
        fprintf(stderr, "moed %s: %s needs --expert-budget B (it tunes the hybrid engine)\n", cmd,
                h->needs);
        return 2;
    }
    if (h->cost_path) {
        struct moed_err e = {0};
        if (sched_cost_load(&h->cost, h->cost_path, &e)) {
            if (strstr(e.msg, h->cost_path))
                fprintf(stderr, "moed %s: --cost: %s\n", cmd, e.msg);
            else
                fprintf(stderr, "moed %s: --cost %s: %s\n", cmd, h->cost_path, e.msg);
            return 2;
        }
        h->o.cost = &h->cost;
    }
    return 0;
}

void cli_hybrid_usage(FILE *f, int col)
{
    static const char *const rows[][2] = {
        {"--expert-budget B", "with --gpu: run the routed experts hybrid, B of them in GPU"},
        {"", "slots: a share of all the model's experts (25%, 0.25; 0: the"},
        {"", "smallest pool) or bytes of slots (12G, 512M); the others run"},
        {"", "on the CPU workers (one pinned per physical core unless"},
        {"", "--threads says otherwise)"},
        {"--cache-policy P", "lru, lfu or score: which cached expert makes room (default"},
        {"", "score); the flags below need --expert-budget too"},
        {"--static-placement", "ablation: slots hold whole layers, fixed; misses on the CPU"},
        {"--no-prefetch", "ablation: no loads of predicted experts"},
        {"--no-plan", "ablation: every cache miss on the CPU (no loads)"},
        {"--force-hybrid", "hybrid even when the budget holds every expert"},
        {"--staging", "load experts through pinned staging buffers"},
        {"--cost FILE", "cost model from moed calibrate -o (default: built-in)"},
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++)
        fprintf(f, "  %-*s%s\n", col - 2, rows[i][0], rows[i][1]);
}

int cli_hybrid_pool(const char *cmd, int nthreads, struct sched_pool **pool, char *desc, size_t n,
                    struct moed_err *e)
{
    char why[MOED_ERR_MSG + 64];
    int rc = sched_topo_pool(nthreads, true, pool, desc, n, why, sizeof why, e);
    if (!rc && why[0])
        fprintf(stderr, "moed %s: note: CPU workers not pinned: %s\n", cmd, why);
    return rc;
}

static double pct(double a, double b)
{
    return b > 0 ? 100.0 * a / b : 0;
}

static void fmt_gib(uint64_t b, char *buf, size_t n)
{
    if (b >= (1ull << 30))
        snprintf(buf, n, "%.2f GiB", (double)b / (1ull << 30));
    else
        snprintf(buf, n, "%.1f MiB", (double)b / (1ull << 20));
}

/* "score", "static", "lru (no prefetch, no plan, staging)" */
static void hybrid_policy(const struct cli_hybrid *h, const struct hybrid_stats *st, char *buf,
                          size_t n)
{
    const char *abl[3];
    int k = 0;
    if (h->o.no_plan && !st->static_layers)
        abl[k++] = "no plan"; /* no loads, no prefetch either */
    else if (!st->prefetch && !st->static_layers)
        abl[k++] = "no prefetch";
    if (!st->registered)
        abl[k++] = "staging";
    int w = snprintf(buf, n, "%s", st->static_layers ? "static" : cache_policy_name(st->policy));
    for (int i = 0; i < k && w >= 0 && (size_t)w < n; i++)
        w += snprintf(buf + w, n - (size_t)w, "%s%s%s", i ? ", " : " (", abl[i],
                      i == k - 1 ? ")" : "");
}

void cli_hybrid_describe(const struct cli_hybrid *h, const struct hybrid_stats *st,
                         const struct model_hparams *hp, bool brief, char *buf, size_t n)
{
    long long all = (long long)hp->n_layer * hp->n_expert;
    double share = pct(st->n_slot, (double)all);
    char pol[96], size[32];
    hybrid_policy(h, st, pol, sizeof pol);
    fmt_gib(st->pool_bytes, size, sizeof size);
    if (brief) {
        snprintf(buf, n, "hybrid %.1f%% %s", share, pol);
        return;
    }
    snprintf(buf, n,
             "hybrid: %d of %lld experts in GPU slots (+%d streaming; %s, %.1f%%), %s%s, loads %s, "
             "prefetch %s, planner %s, cost model %s",
             st->n_slot, all, st->n_stream, size, share,
             st->static_layers ? "static placement by layer" : "policy ",
             st->static_layers ? "" : cache_policy_name(st->policy),
             st->registered ? "from the registered mapping" : "through pinned staging",
             st->prefetch ? "on" : "off", h->o.no_plan || st->static_layers ? "off" : "on",
             h->cost_path ? h->cost_path : "built-in");
}

void cli_hybrid_print(FILE *f, const char *prefix, const struct cli_hybrid *h,
                      const struct hybrid_stats *st, const struct model_hparams *hp, uint64_t n_tok)
{
    const struct hybrid_layer_stats *t = &st->total;
    long long all = (long long)hp->n_layer * hp->n_expert;
    double act = (double)(t->cpu + t->gpu_cached + t->gpu_loaded);
    double tok = n_tok ? (double)n_tok : 1;
    double calls = st->layer_calls ? (double)st->layer_calls : 1;
    char pol[96], hit[16], pred[16], size[32];
    hybrid_policy(h, st, pol, sizeof pol);
    fmt_gib(st->pool_bytes, size, sizeof size);
    if (t->hits + t->misses)
        snprintf(hit, sizeof hit, "%.1f%%", pct((double)t->hits, (double)(t->hits + t->misses)));
    else
        snprintf(hit, sizeof hit, "-");
    if (st->pred_tokens)
        snprintf(pred, sizeof pred, "%.1f%%",
                 pct((double)st->pred_hits, (double)st->pred_tokens * hp->n_expert_used));
    else
        snprintf(pred, sizeof pred, "-");
    double us = 1e6 / calls;
    double over = st->host_s - st->wait_s - st->cpu_s - st->predict_s;
    fprintf(f,
            "%sbudget %d slots, %s, %.1f%% of experts; policy %s; plan cpu %.1f%% "
            "gpu-cached %.1f%% gpu-loaded %.1f%% of %.0f activated; hit rate %s; "
            "loads %.2f/token (+%.2f streamed; %.2f behind the CPU), evictions %.2f/token; "
            "prefetches %" PRIu64
            ", prefetch hits %" PRIu64
            "; prediction %s; PCIe %.3f MB/token (loads %.3f, "
            "activations %.3f); host/layer %.1f us, wait/layer %.1f us, cpu/layer %.1f us, "
            "predict/layer %.1f us, overhead/layer %.1f us; cost corrections cpu x%.2f, "
            "h2d x%.2f\n",
            prefix, st->n_slot, size, pct(st->n_slot, (double)all), pol, pct((double)t->cpu, act),
            pct((double)t->gpu_cached, act), pct((double)t->gpu_loaded, act), act, hit,
            (double)t->loads / tok, (double)t->streamed / tok, (double)t->behind / tok,
            (double)t->evictions / tok,
            t->prefetches, t->prefetch_hits,
            pred, (double)(t->load_bytes + t->act_bytes) / 1e6 / tok,
            (double)t->load_bytes / 1e6 / tok, (double)t->act_bytes / 1e6 / tok, st->host_s * us,
            st->wait_s * us, st->cpu_s * us, st->predict_s * us, over * us, st->cpu_scale,
            st->h2d_scale);
}
