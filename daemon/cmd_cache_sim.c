/*
 * moed cache-sim TRACE [--slots-per-layer C[,C...] | --budget-frac F[,F...]]
 *                      [--policy lru,lfu,score,belady] [--alpha A] [--top-p P]
 *
 * Replays a routing trace (model/trace.h; `moed run --routing-trace`)
 * through the expert cache (cache/) with each policy and prints hit rates
 * per layer and overall.  --slots-per-layer C gives each layer its own C
 * slots (the model of tools/trace_summary.py, whose LRU/LFU/Belady figures
 * these equal); --budget-frac F one global pool of F * layers * experts
 * slots, where hot layers may take more, and the slots each layer held.
 * Default: --slots-per-layer k,2k,4k (as trace_summary.py).
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache/cache.h"
#include "cache/replay.h"
#include "daemon/cmds.h"

#define MAX_LIST 16

static void usage(FILE *f)
{
    fprintf(f, "usage: moed cache-sim TRACE [--slots-per-layer C[,C...] | --budget-frac F[,F...]]\n"
               "                       [--policy lru,lfu,score,belady] [--alpha A] [--top-p P]\n");
}

static int parse_list(const char *s, double *out, int *n, const char *opt)
{
    char *buf = strdup(s), *save = NULL;
    *n = 0;
    for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        char *end;
        errno = 0;
        double v = strtod(tok, &end);
        if (errno || *end || !(v > 0) || *n == MAX_LIST) {
            fprintf(stderr, "moed cache-sim: %s: bad value '%s'\n", opt, tok);
            free(buf);
            return -1;
        }
        out[(*n)++] = v;
    }
    free(buf);
    return *n ? 0 : -1;
}

/* One run: the layers' hit rates, pooled rate, occupancy. */
struct run_result {
    double *rate, *occ; /* [n_layer] */
    double mean, pooled;
    uint64_t bypasses, evictions;
};

static int run_one(const struct cache_trace *t, enum cache_policy pol, int32_t n_slot, int32_t quota,
                   double alpha, int32_t top_p, struct run_result *r)
{
    struct cache *c;
    struct moed_err e = {0};
    struct cache_opts o = {.n_layer = t->n_layer, .n_expert = t->n_expert, .n_slot = n_slot,
                           .layer_quota = quota, .policy = pol, .score_alpha = alpha,
                           .score_top_p = top_p};
    if (n_slot == 0)
        o.budget_bytes = 0, o.slot_bytes = 1;
    if (cache_init(&c, &o, &e)) {
        fprintf(stderr, "moed cache-sim: %s\n", e.msg);
        return -1;
    }
    cache_replay(t, c, r->occ);
    uint64_t h = 0, a = 0;
    int nl = 0;
    r->mean = 0;
    r->bypasses = r->evictions = 0;
    for (int32_t l = 0; l < t->n_layer; l++) {
        const struct cache_layer_stats *s = cache_stats(c, l);
        uint64_t acc = s->hits + s->misses;
        r->rate[l] = acc ? (double)s->hits / (double)acc : NAN;
        if (acc) {
            r->mean += r->rate[l];
            nl++;
        }
        h += s->hits;
        a += acc;
        r->bypasses += s->bypasses;
        r->evictions += s->evictions;
    }
    r->mean = nl ? r->mean / nl : NAN;
    r->pooled = a ? (double)h / (double)a : NAN;
    cache_free(c);
    return 0;
}

int cmd_cache_sim(int argc, char **argv)
{
    const char *path = NULL;
    double sizes[MAX_LIST], fracs[MAX_LIST];
    int n_sizes = 0, n_fracs = 0, n_pol = 4;
    enum cache_policy pols[MAX_LIST] = {CACHE_LRU, CACHE_LFU, CACHE_SCORE, CACHE_BELADY};
    double alpha = 0;
    int32_t top_p = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--slots-per-layer") && v) {
            if (parse_list(v, sizes, &n_sizes, a))
                return 2;
            for (int j = 0; j < n_sizes; j++)
                if (sizes[j] != floor(sizes[j])) {
                    fprintf(stderr, "moed cache-sim: %s: %g is not a whole number\n", a, sizes[j]);
                    return 2;
                }
            i++;
        } else if (!strcmp(a, "--budget-frac") && v) {
            if (parse_list(v, fracs, &n_fracs, a))
                return 2;
            for (int j = 0; j < n_fracs; j++)
                if (fracs[j] > 1) {
                    fprintf(stderr, "moed cache-sim: %s: %g is above 1\n", a, fracs[j]);
                    return 2;
                }
            i++;
        } else if (!strcmp(a, "--policy") && v) {
            char *buf = strdup(v), *save = NULL;
            n_pol = 0;
            for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save))
                if (n_pol == MAX_LIST || cache_policy_parse(tok, &pols[n_pol++])) {
                    fprintf(stderr, "moed cache-sim: --policy: '%s' (lru, lfu, score, belady)\n", tok);
                    free(buf);
                    return 2;
                }
            free(buf);
            if (!n_pol)
                return 2;
            i++;
        } else if (!strcmp(a, "--alpha") && v) {
            alpha = strtod(v, NULL);
            i++;
        } else if (!strcmp(a, "--top-p") && v) {
            top_p = (int32_t)strtol(v, NULL, 10);
            i++;
        } else if (a[0] != '-' && !path) {
            path = a;
        } else {
            fprintf(stderr, "moed cache-sim: unknown or incomplete option '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (!path) {
        usage(stderr);
        return 2;
    }
    if (n_sizes && n_fracs) {
        fprintf(stderr, "moed cache-sim: --slots-per-layer and --budget-frac exclude each other\n");
        return 2;
    }
    struct cache_trace t;
    struct moed_err e = {0};
    if (cache_trace_load(&t, path, &e)) {
        fprintf(stderr, "moed cache-sim: %s\n", e.msg);
        return 1;
    }
    int32_t L = t.n_layer, E = t.n_expert, k = t.n_used;
    if (!n_sizes && !n_fracs) {
        sizes[0] = k, sizes[1] = 2 * k, sizes[2] = 4 * k;
        n_sizes = 3;
    }
    printf("trace: %lld records; %d layers, %d experts, top-%d; %lld layer-steps\n",
           (long long)t.n_records, L, E, k, (long long)t.n_event);
    if (t.truncated_bytes)
        printf("note: the file ends with %lld bytes of a partial record (ignored)\n",
               (long long)t.truncated_bytes);
    int rc = 0;
    struct run_result r;
    r.rate = calloc((size_t)L, sizeof *r.rate);
    r.occ = calloc((size_t)L, sizeof *r.occ);
    if (!r.rate || !r.occ) {
        rc = 1;
        goto out;
    }
    int n_cfg = n_sizes ? n_sizes : n_fracs;
    for (int ci = 0; ci < n_cfg; ci++) {
        int32_t quota, n_slot;
        double rand_rate;
        if (n_sizes) {
            quota = (int32_t)sizes[ci];
            quota = quota > E ? E : quota;
            n_slot = quota * L;
            rand_rate = (double)quota / E;
            printf("\n%d slots per layer (%d in all, a pool per layer); hit rate %%\n", quota, n_slot);
        } else {
            quota = 0;
            n_slot = (int32_t)lround(fracs[ci] * L * E);
            rand_rate = (double)n_slot / ((double)L * E);
            printf("\nbudget %.3g of all experts: %d slots in one pool across layers; hit rate %%"
                   " (slots: each layer's mean slots over the replay)\n",
                   fracs[ci], n_slot);
        }
        printf("%8s", "policy");
        for (int32_t l = 0; l < L; l++)
            printf(" %7s%-3d", "layer ", l);
        printf(" %8s %8s %9s %9s\n", "mean", "all", "evict", "bypass");
        for (int pi = 0; pi < n_pol; pi++) {
            if (run_one(&t, pols[pi], n_slot, quota, alpha, top_p, &r)) {
                rc = 1;
                goto out;
            }
            printf("%8s", cache_policy_name(pols[pi]));
            for (int32_t l = 0; l < L; l++)
                printf(" %10.1f", 100 * r.rate[l]);
            printf(" %8.1f %8.1f %9llu %9llu\n", 100 * r.mean, 100 * r.pooled,
                   (unsigned long long)r.evictions, (unsigned long long)r.bypasses);
            if (!n_sizes) {
                printf("%8s", "slots");
                for (int32_t l = 0; l < L; l++)
                    printf(" %10.2f", r.occ[l]);
                printf("\n");
            }
        }
        printf("%8s %10.1f (C/E)\n", "random", 100 * rand_rate);
    }
out:
    free(r.rate);
    free(r.occ);
    cache_trace_free(&t);
    return rc;
}
