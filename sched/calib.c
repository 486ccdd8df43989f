/*
 * sched/calib: the cost model's measurements (calib.h says what and how).
 */
#include "sched/calib.h"

#include <ctype.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cache/gpu_slots.h"
#include "kernels/cpu/types.h"
#include "kernels/cuda/kc.h"
#include "model/model.h"
#include "model/moe.h"

const int calib_ntok[CALIB_NTOK] = {1, 2, 4, 8, 16, 32, 64};
const int calib_nload[CALIB_NLOAD] = {1, 2, 4, 8, 16};
const int calib_ntok_mma[CALIB_NTOK_MMA] = {16, 32, 64, 128, 256};

#define MAX_TOK 64
#define MMA_TILE 64
#define MMA_MAX_NTOK 256 /* the largest of calib_ntok_mma */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static void logf_(FILE *log, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void logf_(FILE *log, const char *fmt, ...)
{
    if (!log)
        return;
    va_list ap;
    va_start(ap, fmt);
    vfprintf(log, fmt, ap);
    va_end(ap);
    fflush(log);
}

/* ---- fit ------------------------------------------------------------------------ */

int calib_fit_affine(const double *x, const double *y, int n, struct calib_fit *f,
                     struct moed_err *e)
{
    memset(f, 0, sizeof *f);
    if (n < 2)
        return moed_err_set(e, MOED_EINVAL, "calibration fit: %d points (need 2)", n);
    double sw = 0, swx = 0, swy = 0, swxx = 0, swxy = 0;
    for (int i = 0; i < n; i++) {
        if (!isfinite(x[i]) || !isfinite(y[i]) || y[i] <= 0)
            return moed_err_set(e, MOED_EINVAL, "calibration fit: point %d (%g, %g)", i, x[i],
                                y[i]);
        double w = 1.0 / (y[i] * y[i]);
        sw += w;
        swx += w * x[i];
        swy += w * y[i];
        swxx += w * x[i] * x[i];
        swxy += w * x[i] * y[i];
    }
    double det = sw * swxx - swx * swx;
    double a = 0, b = 0;
    if (det > 1e-12 * sw * swxx) {
        a = (swy * swxx - swx * swxy) / det;
        b = (sw * swxy - swx * swy) / det;
    } else {
        a = swy / sw; /* all x equal: a constant */
    }
    if (a < 0) {
        a = 0;
        b = swxx > 0 ? swxy / swxx : 0;
    }
    if (b < 0) {
        b = 0;
        a = swy / sw;
    }
    f->a = a;
    f->b = b;
    for (int i = 0; i < n; i++) {
        double r = fabs(a + b * x[i] - y[i]) / y[i];
        if (r > f->worst) {
            f->worst = r;
            f->worst_i = i;
        }
    }
    return 0;
}

/* ---- expert types ----------------------------------------------------------------- */

static void lower_into(char *dst, size_t n, const char *src)
{
    size_t l = strlen(dst);
    for (; *src && l + 1 < n; src++)
        dst[l++] = (char)tolower((unsigned char)*src);
    dst[l] = 0;
}

void calib_type_name(uint32_t tg, uint32_t tu, uint32_t td, char *out, size_t n)
{
    if (!n)
        return;
    out[0] = 0;
    lower_into(out, n, kern_type_name(tg));
    if (tu != tg) {
        lower_into(out, n, "_");
        lower_into(out, n, kern_type_name(tu));
    }
    if (td != tu) {
        lower_into(out, n, "_");
        lower_into(out, n, kern_type_name(td));
    }
}

static int find_triple(const struct calib_result *r, uint32_t tg, uint32_t tu, uint32_t td)
{
    for (int i = 0; i < r->ntypes; i++)
        if (r->type[i].tg == tg && r->type[i].tu == tu && r->type[i].td == td)
            return i;
    return -1;
}

/* Type of layer il (-1 when it has none). */
static int layer_type(const struct model *m, const struct calib_result *r, int32_t il)
{
    const struct model_layer *L = &m->layers[il];
    return find_triple(r, L->gate_exps->type, L->up_exps->type, L->down_exps->type);
}

int calib_types(const struct model *m, struct calib_result *r, struct moed_err *e)
{
    memset(r, 0, sizeof *r);
    const struct model_hparams *hp = &m->hp;
    r->n_embd = hp->n_embd;
    r->n_ff = hp->n_ff_exp;
    r->dev = -1;
    if (hp->n_layer <= 0 || hp->n_expert <= 0)
        return moed_err_set(e, MOED_EINVAL, "model has %d layers of %d experts",
                            (int)hp->n_layer, (int)hp->n_expert);
    for (int32_t il = 0; il < hp->n_layer; il++) {
        const void *src[3];
        uint64_t b[3];
        int rc = gpu_slots_expert_src(m, il, 0, src, b, e);
        if (rc)
            return rc;
        const struct model_layer *L = &m->layers[il];
        uint32_t tg = L->gate_exps->type, tu = L->up_exps->type, td = L->down_exps->type;
        int t = find_triple(r, tg, tu, td);
        if (t < 0) {
            if (r->ntypes == SCHED_COST_MAX_TYPES)
                return moed_err_set(e, MOED_EINVAL, "more than %d expert types",
                                    SCHED_COST_MAX_TYPES);
            t = r->ntypes++;
            struct calib_type *ty = &r->type[t];
            ty->tg = tg;
            ty->tu = tu;
            ty->td = td;
            ty->bytes = b[0] + b[1] + b[2];
            calib_type_name(tg, tu, td, ty->name, sizeof ty->name);
        }
        r->type[t].n_layer++;
    }
    for (int t = 1; t < r->ntypes; t++)
        if (r->type[t].n_layer > r->type[r->dom].n_layer)
            r->dom = t;
    /* tile 64: as fwd_gpu's expert_mma, off for the whole model when any
     * expert matrix is F32 or F16; the fused gate_up needs gate == up */
    r->mma_applies = true;
    for (int t = 0; t < r->ntypes && r->mma_applies; t++) {
        const struct calib_type *ty = &r->type[t];
        const uint32_t k[3] = {ty->tg, ty->tu, ty->td};
        for (int j = 0; j < 3; j++)
            if (k[j] == KT_F32 || k[j] == KT_F16) {
                r->mma_applies = false;
                snprintf(r->mma_note, sizeof r->mma_note,
                         "%s experts: the forward pass keeps them off tile 64",
                         kern_type_name(k[j]));
                break;
            }
        if (r->mma_applies && ty->tg != ty->tu) {
            r->mma_applies = false;
            snprintf(r->mma_note, sizeof r->mma_note, "type %s: gate and up of different types",
                     ty->name);
        }
    }
    return 0;
}

/* ---- CPU ---------------------------------------------------------------------------- */

/* One type's experts on the CPU executor, cycling through a working set. */
struct cpu_bench {
    const struct model *m;
    struct moe_exec *ex;
    struct moe_experts *experts; /* [n_layer] */
    int32_t *layers;             /* this type's layers */
    int32_t n_layers, ws, next;
    float *x, *w, *out;
    int32_t *ids;
};

static void cpu_bench_free(struct cpu_bench *b)
{
    moe_exec_free(b->ex);
    free(b->experts);
    free(b->layers);
    free(b->x);
    free(b->w);
    free(b->out);
    free(b->ids);
    memset(b, 0, sizeof *b);
}

static struct moe_mat mat_of(const struct gguf_tensor *t)
{
    size_t rs = kern_row_size(t->type, t->ne[0]);
    return (struct moe_mat){t->type, t->data, rs, rs * (size_t)t->ne[1]};
}

static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static int cpu_bench_init(struct cpu_bench *b, const struct model *m, const struct calib_result *r,
                          int t, struct sched_pool *pool, struct moed_err *e)
{
    const struct model_hparams *hp = &m->hp;
    memset(b, 0, sizeof *b);
    b->m = m;
    b->experts = calloc((size_t)hp->n_layer, sizeof *b->experts);
    b->layers = malloc((size_t)hp->n_layer * sizeof *b->layers);
    b->x = malloc((size_t)MAX_TOK * (size_t)hp->n_embd * sizeof *b->x);
    b->out = malloc((size_t)MAX_TOK * (size_t)hp->n_embd * sizeof *b->out);
    b->w = malloc(MAX_TOK * sizeof *b->w);
    b->ids = malloc(MAX_TOK * sizeof *b->ids);
    if (!b->experts || !b->layers || !b->x || !b->out || !b->w || !b->ids) {
        cpu_bench_free(b);
        return moed_err_set(e, MOED_ENOMEM, "calibration: out of memory");
    }
    for (int32_t il = 0; il < hp->n_layer; il++) {
        const struct model_layer *L = &m->layers[il];
        b->experts[il] = (struct moe_experts){.layer = il,
                                              .n_expert = hp->n_expert,
                                              .n_embd = hp->n_embd,
                                              .n_ff = hp->n_ff_exp,
                                              .gate = mat_of(L->gate_exps),
                                              .up = mat_of(L->up_exps),
                                              .down = mat_of(L->down_exps)};
        if (layer_type(m, r, il) == t)
            b->layers[b->n_layers++] = il;
    }
    uint64_t all = (uint64_t)b->n_layers * (uint64_t)hp->n_expert;
    uint64_t want = CALIB_WS_BYTES / r->type[t].bytes + 1;
    want = want < 8 ? 8 : want;
    b->ws = (int32_t)(want < all ? want : all);
    uint64_t seed = 12345;
    for (size_t i = 0; i < (size_t)MAX_TOK * (size_t)hp->n_embd; i++)
        b->x[i] = (float)((double)(splitmix64(&seed) >> 11) / 9007199254740992.0 * 2.0 - 1.0);
    for (int i = 0; i < MAX_TOK; i++)
        b->w[i] = 1.0f;
    struct moe_cpu_opts co = {.pool = pool,
                              .max_tok = MAX_TOK,
                              .n_expert = hp->n_expert,
                              .n_used = 1,
                              .n_embd = hp->n_embd,
                              .n_ff = hp->n_ff_exp};
    int rc = moe_cpu_new(&b->ex, &co, e);
    if (rc)
        cpu_bench_free(b);
    return rc;
}

/* The working set's k-th pair: layers alternate, experts advance per round. */
static void ws_pair(const struct cpu_bench *b, int32_t k, int32_t *layer, int32_t *expert)
{
    *layer = b->layers[k % b->n_layers];
    *expert = k / b->n_layers;
}

/* The next expert of the working set with n tokens. */
static int cpu_bench_run(struct cpu_bench *b, int n, struct moed_err *e)
{
    int32_t layer, expert;
    ws_pair(b, b->next, &layer, &expert);
    b->next = (b->next + 1) % b->ws;
    for (int i = 0; i < n; i++)
        b->ids[i] = expert;
    struct moe_work w = {&b->experts[layer], n, 1, b->x, b->ids, b->w, b->out};
    return moe_exec_run(b->ex, &w, e);
}

/* Median us of one run with n tokens, in about budget_s. */
static int cpu_time(struct cpu_bench *b, int n, double budget_s, double *samples, double *us,
                    int *reps, struct moed_err *e)
{
    int rc;
    for (int i = 0; i < 3; i++) /* untimed */
        if ((rc = cpu_bench_run(b, n, e)))
            return rc;
    double start = now_s();
    int k = 0;
    while (k < CALIB_MAX_REPS && (k < 3 || now_s() - start < budget_s)) {
        double t0 = now_s();
        if ((rc = cpu_bench_run(b, n, e)))
            return rc;
        samples[k++] = (now_s() - t0) * 1e6;
    }
    *reps = k;
    *us = median(samples, k);
    return 0;
}

int calib_cpu(const struct model *m, struct sched_pool *pool, double seconds,
              struct calib_result *r, FILE *log, struct moed_err *e)
{
    double *samples = malloc(CALIB_MAX_REPS * sizeof *samples);
    if (!samples)
        return moed_err_set(e, MOED_ENOMEM, "calibration: out of memory");
    r->threads = pool ? sched_pool_size(pool) : 1;
    int rc = 0;
    for (int t = 0; t < r->ntypes && !rc; t++) {
        struct calib_type *ty = &r->type[t];
        struct cpu_bench b;
        if ((rc = cpu_bench_init(&b, m, r, t, pool, e)))
            break;
        ty->ws = b.ws;
        double t0 = now_s();
        for (int32_t k = 0; k < b.ws && !rc; k++) /* page-in */
            rc = cpu_bench_run(&b, 1, e);
        logf_(log, "calibrate: cpu %s: working set %d experts (%.0f MiB) paged in in %.2f s\n",
              ty->name, (int)b.ws, (double)b.ws * (double)ty->bytes / 1048576.0, now_s() - t0);
        double budget = seconds / r->ntypes / CALIB_NTOK;
        for (int i = 0; i < CALIB_NTOK && !rc; i++)
            rc = cpu_time(&b, calib_ntok[i], budget, samples, &ty->cpu_us[i], &ty->cpu_reps[i],
                          e);
        cpu_bench_free(&b);
        if (rc)
            break;
        double x[CALIB_NTOK];
        for (int i = 0; i < CALIB_NTOK; i++)
            x[i] = calib_ntok[i];
        rc = calib_fit_affine(x, ty->cpu_us, CALIB_NTOK, &ty->cpu, e);
        logf_(log, "calibrate: cpu %s: %.2f + %.3f n us\n", ty->name, ty->cpu.a, ty->cpu.b);
    }
    free(samples);
    if (rc)
        return moed_err_wrap(e, "calibration (CPU)");
    const struct calib_type *d = &r->type[r->dom];
    r->cpu_alone_gbs = (double)d->bytes / (d->cpu_us[0] * 1e3);
    r->cpu_done = true;
    return 0;
}

/* ---- GPU ---------------------------------------------------------------------------- */

struct gpu_ctx {
    int dev;
    struct gpu_slots *gs;
    kc_stream comp, copy;
    kc_event ev0, ev1, evs;
    float *dx, *dact, *dy;          /* device */
    const void **dtab;              /* device: [3][n_slot] pointers */
    void *gws[CALIB_NTOK];          /* device groupings */
    void *gws_mma[CALIB_NTOK_MMA];  /* device groupings, tile 64, n_slot experts */
    int32_t mt_mma[CALIB_NTOK_MMA]; /* their max_tiles */
    float *hrow, *hrow2;            /* pinned rows */
};

static void gpu_ctx_free(struct gpu_ctx *g)
{
    if (g->comp)
        kc_sync(g->comp, &(struct moed_err){0});
    if (g->copy)
        kc_sync(g->copy, &(struct moed_err){0});
    for (int i = 0; i < CALIB_NTOK; i++)
        kc_free(g->gws[i]);
    for (int i = 0; i < CALIB_NTOK_MMA; i++)
        kc_free(g->gws_mma[i]);
    kc_free(g->dtab);
    kc_free(g->dx);
    kc_free(g->dact);
    kc_free(g->dy);
    kc_host_free(g->hrow);
    kc_host_free(g->hrow2);
    if (g->ev0)
        kc_event_free(g->ev0);
    if (g->ev1)
        kc_event_free(g->ev1);
    if (g->evs)
        kc_event_free(g->evs);
    gpu_slots_free(g->gs);
    if (g->comp)
        kc_stream_free(g->comp);
    if (g->copy)
        kc_stream_free(g->copy);
    memset(g, 0, sizeof *g);
}

/* The (layer, expert) pairs of type t loaded by the GPU part: as the CPU's
 * working set (layers alternate). */
struct pairs {
    int32_t *layers, n_layers, n_expert, next;
};

static int pairs_init(struct pairs *p, const struct model *m, const struct calib_result *r, int t)
{
    p->layers = malloc((size_t)m->hp.n_layer * sizeof *p->layers);
    if (!p->layers)
        return -1;
    p->n_layers = 0;
    p->next = 0;
    p->n_expert = m->hp.n_expert;
    for (int32_t il = 0; il < m->hp.n_layer; il++)
        if (layer_type(m, r, il) == t)
            p->layers[p->n_layers++] = il;
    return 0;
}

static void pairs_next(struct pairs *p, int32_t *layer, int32_t *expert)
{
    int32_t k = p->next;
    *layer = p->layers[k % p->n_layers];
    *expert = (k / p->n_layers) % p->n_expert;
    p->next = (k + 1) % (p->n_layers * p->n_expert);
}

static int event_us(struct gpu_ctx *g, double *us, struct moed_err *e)
{
    float ms = 0;
    int rc = kc_event_sync(g->ev1, e);
    if (!rc)
        rc = kc_event_ms(g->ev0, g->ev1, &ms, e);
    *us = (double)ms * 1e3;
    return rc;
}

/* H2D bursts of the dominant type. */
static int gpu_h2d(struct gpu_ctx *g, const struct model *m, struct calib_result *r,
                   double budget_s, double *samples, FILE *log, struct moed_err *e)
{
    struct pairs p;
    if (pairs_init(&p, m, r, r->dom))
        return moed_err_set(e, MOED_ENOMEM, "calibration: out of memory");
    int rc = 0, slot = 0;
    for (int i = -1; i < CALIB_NLOAD && !rc; i++) { /* i = -1: warm-up */
        int nl = i < 0 ? 16 : calib_nload[i];
        double start = now_s();
        int k = 0;
        while (!rc && k < CALIB_MAX_REPS &&
               (k < 3 || (i >= 0 && now_s() - start < budget_s / CALIB_NLOAD))) {
            rc = kc_event_record(g->ev0, g->copy, e);
            for (int j = 0; j < nl && !rc; j++) {
                int32_t layer, expert;
                pairs_next(&p, &layer, &expert);
                rc = gpu_slots_load(g->gs, slot, layer, expert, g->copy, e);
                slot = (slot + 1) % r->n_slot;
            }
            if (!rc)
                rc = kc_event_record(g->ev1, g->copy, e);
            if (!rc)
                rc = event_us(g, &samples[k++], e);
        }
        if (!rc && i >= 0) {
            r->load_reps[i] = k;
            r->load_us[i] = median(samples, k);
        }
    }
    free(p.layers);
    if (rc)
        return moed_err_wrap(e, "H2D");
    double x[CALIB_NLOAD];
    uint64_t bytes = r->type[r->dom].bytes;
    for (int i = 0; i < CALIB_NLOAD; i++)
        x[i] = (double)calib_nload[i] * (double)bytes;
    if ((rc = calib_fit_affine(x, r->load_us, CALIB_NLOAD, &r->load, e)))
        return moed_err_wrap(e, "H2D");
    if (r->load.b > 0) {
        r->h2d_gbs = 1.0 / (r->load.b * 1e3);
    } else { /* flat: take the largest burst's rate, no latency */
        r->h2d_gbs = x[CALIB_NLOAD - 1] / (r->load_us[CALIB_NLOAD - 1] * 1e3);
        r->load.a = 0;
    }
    logf_(log, "calibrate: h2d (%s): %.2f us + %.2f GB/s\n",
          r->registered ? "registered" : "staged", r->load.a, r->h2d_gbs);
    return 0;
}

/* The grouping of n tokens all on expert 0, uploaded into g->gws[i]. */
static int upload_grouping(struct gpu_ctx *g, int i, int tile, int32_t *ht, int32_t *hp,
                           struct kc_moe_groups *dg, int32_t *max_tiles, struct moed_err *e)
{
    int n = calib_ntok[i];
    int32_t mt = kc_moe_max_tiles(n, 1, 1, tile);
    int rc = kc_malloc(&g->gws[i], kc_moe_groups_size(n, 1, 1, tile), e);
    if (rc)
        return rc;
    kc_moe_groups_at(dg, g->gws[i], n, 1, 1, tile);
    for (int t = 0; t < n; t++)
        hp[t] = t;
    int32_t nt = 0;
    for (int p = 0; p < n; p += tile, nt++) {
        ht[3 * nt] = 0;
        ht[3 * nt + 1] = p;
        ht[3 * nt + 2] = n - p < tile ? n - p : tile;
    }
    for (int32_t x = nt; x < mt; x++) /* unused: never read */
        ht[3 * x] = ht[3 * x + 1] = ht[3 * x + 2] = 1 << 30;
    /* pageable sources: the copies are done when the stream is synchronised */
    if ((rc = kc_h2d(dg->pair_tok, hp, sizeof(int32_t) * (size_t)n, g->comp, e)) ||
        (rc = kc_h2d(dg->pair_of, hp, sizeof(int32_t) * (size_t)n, g->comp, e)) ||
        (rc = kc_h2d(dg->tiles, ht, sizeof(int32_t) * 3 * (size_t)mt, g->comp, e)) ||
        (rc = kc_h2d(dg->n_tiles, &nt, sizeof(int32_t), g->comp, e)) ||
        (rc = kc_sync(g->comp, e)))
        return rc;
    *max_tiles = mt;
    return 0;
}

/* One timed launch of gate_up + down; with ns > 0 each launch takes the
 * next slot's expert (the pointer table's entries 0..ns-1). */
struct launch {
    struct gpu_ctx *g;
    struct kc_experts ex;
    const struct kc_moe_groups *dg;
    int32_t tile, mt;
    int ns, it;
};

static int launch_one(struct launch *l, struct moed_err *e)
{
    struct gpu_ctx *g = l->g;
    if (l->ns > 0) {
        int s = l->it++ % l->ns;
        l->ex.gate = g->dtab + s;
        l->ex.up = g->dtab + l->ns + s;
        l->ex.down = g->dtab + 2 * l->ns + s;
    }
    int rc = kc_moe_gate_up(g->comp, &l->ex, g->dx, l->dg, l->tile, l->mt, g->dact, e);
    return rc ? rc : kc_moe_down(g->comp, &l->ex, g->dact, l->dg, l->tile, l->mt, g->dy, e);
}

/* Warm-up launches, a probe batch that sizes the timed batches to about
 * budget_us each (reps within lo..hi; a launch counted as at least per_min
 * us), then 5 timed batches: the median time of one launch. */
static int time_launches(struct launch *l, int warm, int probe, double budget_us, double per_min,
                         int lo, int hi, double *us, int *reps_out, struct moed_err *e)
{
    struct gpu_ctx *g = l->g;
    int rc = 0;
    for (int k = 0; k < warm && !rc; k++)
        rc = launch_one(l, e);
    double probe_us = 0;
    if (!rc)
        rc = kc_event_record(g->ev0, g->comp, e);
    for (int k = 0; k < probe && !rc; k++)
        rc = launch_one(l, e);
    if (!rc)
        rc = kc_event_record(g->ev1, g->comp, e);
    if (!rc)
        rc = event_us(g, &probe_us, e);
    if (rc)
        return rc;
    double per = probe_us / probe;
    double want = budget_us / (per > per_min ? per : per_min);
    int reps = want < lo ? lo : want > hi ? hi : (int)want;
    double bm[5];
    for (int b = 0; b < 5 && !rc; b++) {
        rc = kc_event_record(g->ev0, g->comp, e);
        for (int k = 0; k < reps && !rc; k++)
            rc = launch_one(l, e);
        if (!rc)
            rc = kc_event_record(g->ev1, g->comp, e);
        if (!rc)
            rc = event_us(g, &bm[b], e);
        bm[b] /= reps;
    }
    if (rc)
        return rc;
    *us = median(bm, 5);
    *reps_out = 5 * reps;
    return 0;
}

/* Kernels of type t on every slot, n tokens each. */
static int gpu_kernels(struct gpu_ctx *g, const struct model *m, struct calib_result *r, int t,
                       double budget_s, FILE *log, struct moed_err *e)
{
    struct calib_type *ty = &r->type[t];
    if (!kc_type_supported(ty->tg) || !kc_type_supported(ty->tu) || !kc_type_supported(ty->td)) {
        logf_(log, "calibrate: gpu %s: the GPU kernels do not read this type; defaults kept\n",
              ty->name);
        return 0;
    }
    const int ns = r->n_slot;
    struct pairs p;
    if (pairs_init(&p, m, r, t))
        return moed_err_set(e, MOED_ENOMEM, "calibration: out of memory");
    const void **htab = malloc(3 * (size_t)ns * sizeof *htab);
    int rc = htab ? 0 : moed_err_set(e, MOED_ENOMEM, "calibration: out of memory");
    for (int s = 0; s < ns && !rc; s++) {
        int32_t layer, expert;
        pairs_next(&p, &layer, &expert);
        rc = gpu_slots_load(g->gs, s, layer, expert, g->copy, e);
    }
    if (!rc)
        rc = kc_sync(g->copy, e);
    for (int s = 0; s < ns && !rc; s++)
        rc = gpu_slots_expert_ptrs(g->gs, s, &htab[s], &htab[ns + s], &htab[2 * ns + s], e);
    if (!rc)
        rc = kc_h2d((void *)g->dtab, htab, 3 * (size_t)ns * sizeof *htab, g->comp, e);
    if (!rc)
        rc = kc_sync(g->comp, e);
    free(htab);
    free(p.layers);
    const int64_t d = r->n_embd, ff = r->n_ff;
    struct kc_experts ex = {ty->tg, ty->tu, ty->td,
                            kern_row_size(ty->tg, d), kern_row_size(ty->tu, d),
                            kern_row_size(ty->td, ff), NULL, NULL, NULL, 1, (int32_t)d,
                            (int32_t)ff};
    int32_t ht[3 * 64], hp[MAX_TOK];
    for (int i = 0; i < CALIB_NTOK && !rc; i++) {
        const int n = calib_ntok[i], tile = n <= 8 ? 8 : 64;
        struct kc_moe_groups dg;
        int32_t mt = 0;
        if (!g->gws[i] && (rc = upload_grouping(g, i, tile, ht, hp, &dg, &mt, e)))
            break;
        if (g->gws[i]) { /* the layout again (uploaded for an earlier type) */
            kc_moe_groups_at(&dg, g->gws[i], n, 1, 1, tile);
            mt = kc_moe_max_tiles(n, 1, 1, tile);
        }
        struct launch l = {.g = g, .ex = ex, .dg = &dg, .tile = tile, .mt = mt, .ns = ns};
        rc = time_launches(&l, 2 * ns, 20, budget_s / r->ntypes / CALIB_NTOK / 5 * 1e6, 0.1, 10,
                           20000, &ty->gpu_us[i], &ty->gpu_reps[i], e);
    }
    if (rc)
        return moed_err_wrap(e, "GPU kernels (%s)", ty->name);
    double x[CALIB_NTOK];
    for (int i = 0; i < CALIB_NTOK; i++)
        x[i] = calib_ntok[i];
    if ((rc = calib_fit_affine(x, ty->gpu_us, CALIB_NTOK, &ty->gpu, e)))
        return moed_err_wrap(e, "GPU kernels (%s)", ty->name);
    ty->gpu_ok = true;
    logf_(log, "calibrate: gpu %s: %.2f + %.3f n us\n", ty->name, ty->gpu.a, ty->gpu.b);
    return 0;
}

/* The tile-64 grouping of calib_ntok_mma[i]: m experts (expert x is slot x)
 * with n tokens each, M n pairs; expert x's pairs are x n .. x n + n - 1 in
 * tiles of at most MMA_TILE, pair p reads input row p % CALIB_MMA_ROWS.
 * Uploaded into g->gws_mma[i], its max_tiles into g->mt_mma[i]. */
static int upload_grouping_mma(struct gpu_ctx *g, int i, int m, struct moed_err *e)
{
    const int n = calib_ntok_mma[i];
    const int32_t np = m * n;
    const int32_t mt = kc_moe_max_tiles(np, 1, m, MMA_TILE);
    int32_t *ptok = malloc(sizeof(int32_t) * (size_t)np);
    int32_t *pof = malloc(sizeof(int32_t) * (size_t)np);
    int32_t *ht = malloc(sizeof(int32_t) * 3 * (size_t)mt);
    int rc = ptok && pof && ht ? 0 : moed_err_set(e, MOED_ENOMEM, "calibration: out of memory");
    if (!rc)
        rc = kc_malloc(&g->gws_mma[i], kc_moe_groups_size(np, 1, m, MMA_TILE), e);
    if (!rc) {
        struct kc_moe_groups dg;
        kc_moe_groups_at(&dg, g->gws_mma[i], np, 1, m, MMA_TILE);
        for (int32_t p = 0; p < np; p++) {
            ptok[p] = p % CALIB_MMA_ROWS;
            pof[p] = p; /* k = 1: pair p is "token" p's; the FFN kernels do not read it */
        }
        int32_t nt = 0;
        for (int x = 0; x < m; x++)
            for (int q = 0; q < n; q += MMA_TILE, nt++) {
                ht[3 * nt] = x;
                ht[3 * nt + 1] = x * n + q;
                ht[3 * nt + 2] = n - q < MMA_TILE ? n - q : MMA_TILE;
            }
        /* m ceil(n / 64) <= ceil(m n / 64) + m = mt */
        for (int32_t x = nt; x < mt; x++) /* unused: never read */
            ht[3 * x] = ht[3 * x + 1] = ht[3 * x + 2] = 1 << 30;
        /* pageable sources: the copies are done when the stream is synchronised */
        if (!(rc = kc_h2d(dg.pair_tok, ptok, sizeof(int32_t) * (size_t)np, g->comp, e)) &&
            !(rc = kc_h2d(dg.pair_of, pof, sizeof(int32_t) * (size_t)np, g->comp, e)) &&
            !(rc = kc_h2d(dg.tiles, ht, sizeof(int32_t) * 3 * (size_t)mt, g->comp, e)) &&
            !(rc = kc_h2d(dg.n_tiles, &nt, sizeof(int32_t), g->comp, e)))
            rc = kc_sync(g->comp, e);
    }
    free(ptok);
    free(pof);
    free(ht);
    g->mt_mma[i] = mt;
    return rc;
}

/* Tile-64 launches of type t: r->n_slot experts a launch (the slots that
 * gpu_kernels just loaded with type t, through the same pointer tables),
 * n tokens each; per-expert time = launch time / r->n_slot. */
static int gpu_mma(struct gpu_ctx *g, struct calib_result *r, int t, double budget_s, FILE *log,
                   struct moed_err *e)
{
    struct calib_type *ty = &r->type[t];
    if (!r->mma_applies || !ty->gpu_ok)
        return 0;
    const int ns = r->n_slot, m = ns;
    r->n_mma = m;
    const int64_t d = r->n_embd, ff = r->n_ff;
    struct kc_experts ex = {ty->tg, ty->tu, ty->td,
                            kern_row_size(ty->tg, d), kern_row_size(ty->tu, d),
                            kern_row_size(ty->td, ff), NULL, NULL, NULL, m, (int32_t)d,
                            (int32_t)ff};
    ex.gate = g->dtab;
    ex.up = g->dtab + ns;
    ex.down = g->dtab + 2 * ns;
    int rc = 0;
    for (int i = 0; i < CALIB_NTOK_MMA && !rc; i++) {
        const int n = calib_ntok_mma[i];
        if (!g->gws_mma[i] && (rc = upload_grouping_mma(g, i, m, e)))
            break;
        struct kc_moe_groups dg;
        kc_moe_groups_at(&dg, g->gws_mma[i], m * n, 1, m, MMA_TILE);
        const int32_t mt = g->mt_mma[i];
        struct launch l = {.g = g, .ex = ex, .dg = &dg, .tile = MMA_TILE, .mt = mt};
        rc = time_launches(&l, 2, 3, budget_s / r->ntypes / CALIB_NTOK_MMA / 5 * 1e6, 1, 2, 2000,
                           &ty->mma_launch_us[i], &ty->mma_reps[i], e);
        if (rc)
            break;
        ty->mma_us[i] = ty->mma_launch_us[i] / m;
    }
    if (rc)
        return moed_err_wrap(e, "GPU kernels, tile 64 (%s, %d experts a launch)", ty->name, m);
    double x[CALIB_NTOK_MMA];
    for (int i = 0; i < CALIB_NTOK_MMA; i++)
        x[i] = calib_ntok_mma[i];
    if ((rc = calib_fit_affine(x, ty->mma_us, CALIB_NTOK_MMA, &ty->mma, e)))
        return moed_err_wrap(e, "GPU kernels, tile 64 (%s)", ty->name);
    ty->mma_ok = true;
    logf_(log, "calibrate: gpu %s, tile 64 (%d experts a launch): %.2f + %.4f n us an expert\n",
          ty->name, m, ty->mma.a, ty->mma.b);
    return 0;
}

/* The copy-stream side of the shared run: n loads back to back. */
struct loader {
    struct gpu_ctx *g;
    struct pairs p;
    int n_slot, n_load;
    atomic_int started, done;
    int rc;
    struct moed_err err;
};

static void *loader_main(void *arg)
{
    struct loader *l = arg;
    struct gpu_ctx *g = l->g;
    int rc = kc_set_device(g->dev, &l->err);
    if (!rc)
        rc = kc_event_record(g->ev0, g->copy, &l->err);
    for (int k = 0; k < l->n_load && !rc; k++) {
        int32_t layer, expert;
        pairs_next(&l->p, &layer, &expert);
        rc = gpu_slots_load(g->gs, k % l->n_slot, layer, expert, g->copy, &l->err);
        if (k == 0)
            atomic_store(&l->started, 1);
    }
    if (!rc)
        rc = kc_event_record(g->ev1, g->copy, &l->err);
    if (!rc)
        rc = kc_event_sync(g->ev1, &l->err);
    l->rc = rc;
    atomic_store(&l->started, 1);
    atomic_store(&l->done, 1);
    return NULL;
}

#define SHARED_TRIALS 3

static int gpu_shared(struct gpu_ctx *g, const struct model *m, struct sched_pool *pool,
                      struct calib_result *r, double budget_s, FILE *log, struct moed_err *e)
{
    const int t = r->dom;
    const uint64_t bytes = r->type[t].bytes;
    struct cpu_bench b;
    int rc = cpu_bench_init(&b, m, r, t, pool, e);
    if (rc)
        return rc;
    /* the CPU loop alone, for the ratio (the working set is paged in) */
    double t0 = now_s(), t1;
    uint64_t runs = 0;
    while (!rc && ((t1 = now_s()) - t0 < budget_s / 2 || runs < 3)) {
        rc = cpu_bench_run(&b, 1, e);
        runs++;
    }
    if (rc) {
        cpu_bench_free(&b);
        return rc;
    }
    r->shared_cpu_alone_gbs = (double)runs * (double)bytes / ((t1 - t0) * 1e9);

    /* Both at once, SHARED_TRIALS times; the best CPU rate wins.  The copy
     * thread feeding the stream takes a core from the pinned pool now and
     * then, and a pool run waits for its slowest thread, so a trial can read
     * the CPU several times slower than sharing DRAM makes it; interference
     * only ever lowers the rate. */
    r->shared_cpu_gbs = 0;
    for (int trial = 0; trial < SHARED_TRIALS && !rc; trial++) {
        struct loader l = {.g = g, .n_slot = r->n_slot};
        double n = budget_s / SHARED_TRIALS * r->h2d_gbs * 1e9 / (double)bytes;
        l.n_load = n < 16 ? 16 : n > 1e6 ? 1000000 : (int)n;
        if (pairs_init(&l.p, m, r, t)) {
            rc = moed_err_set(e, MOED_ENOMEM, "calibration: out of memory");
            break;
        }
        pthread_t th;
        if (pthread_create(&th, NULL, loader_main, &l)) {
            free(l.p.layers);
            rc = moed_err_set(e, MOED_EIO, "calibration: cannot start the copy thread");
            break;
        }
        while (!atomic_load(&l.started))
            ;
        t0 = now_s();
        runs = 0;
        while (!rc && !atomic_load(&l.done)) {
            rc = cpu_bench_run(&b, 1, e);
            runs++;
        }
        t1 = now_s();
        pthread_join(th, NULL);
        free(l.p.layers);
        if (rc) {
            moed_err_wrap(e, "shared run (CPU)");
            break;
        }
        if (l.rc) {
            *e = l.err;
            rc = moed_err_wrap(e, "shared run (copies)");
            break;
        }
        double us;
        if ((rc = event_us(g, &us, e))) {
            moed_err_wrap(e, "shared run");
            break;
        }
        double cpu = (double)runs * (double)bytes / ((t1 - t0) * 1e9);
        logf_(log, "calibrate: shared trial %d: cpu %.1f GB/s, h2d %.1f GB/s\n", trial + 1, cpu,
              (double)l.n_load * (double)bytes / (us * 1e3));
        if (cpu > r->shared_cpu_gbs) {
            r->shared_s = t1 - t0;
            r->shared_cpu_gbs = cpu;
            r->shared_h2d_gbs = (double)l.n_load * (double)bytes / (us * 1e3);
        }
    }
    cpu_bench_free(&b);
    if (rc)
        return rc;
    logf_(log, "calibrate: shared %.2f s: cpu %.1f GB/s (alone %.1f), h2d %.1f GB/s\n",
          r->shared_s, r->shared_cpu_gbs, r->shared_cpu_alone_gbs, r->shared_h2d_gbs);
    return 0;
}

static void empty_job(void *arg, int ith, int nth)
{
    (void)arg;
    (void)ith;
    (void)nth;
}

static int gpu_sides(struct gpu_ctx *g, struct sched_pool *pool, struct calib_result *r,
                     double budget_s, double *samples, struct moed_err *e)
{
    const size_t row = (size_t)r->n_embd * sizeof(float);
    int rc = 0;
    for (int side = 0; side < 2 && !rc; side++) {
        double start = now_s();
        int k = 0;
        for (int w = -10; !rc && k < CALIB_MAX_REPS && (k < 20 || now_s() - start < budget_s / 2);
             w++) {
            double t0 = now_s();
            if (side == 0) {
                rc = kc_d2h(g->hrow, g->dx, row, g->comp, e);
                if (!rc)
                    rc = kc_sync(g->comp, e);
                if (!rc) {
                    if (pool)
                        sched_pool_run(pool, empty_job, NULL);
                    rc = kc_h2d(g->dy, g->hrow2, row, g->comp, e);
                }
                if (!rc)
                    rc = kc_sync(g->comp, e);
            } else {
                rc = kc_add(g->comp, g->dy, g->dy + 1, 1, e);
                if (!rc)
                    rc = kc_event_record(g->evs, g->comp, e);
                if (!rc)
                    rc = kc_event_sync(g->evs, e);
            }
            if (w >= 0) /* the first ten are untimed */
                samples[k++] = (now_s() - t0) * 1e6;
        }
        if (!rc)
            *(side == 0 ? &r->cpu_side_us : &r->gpu_side_us) = median(samples, k);
    }
    return rc ? moed_err_wrap(e, "side overheads") : 0;
}

int calib_gpu(const struct model *m, int dev, struct sched_pool *pool, double seconds,
              struct calib_result *r, FILE *log, struct moed_err *e)
{
    struct gpu_ctx g = {.dev = dev};
    r->dev = dev;
    double *samples = malloc(CALIB_MAX_REPS * sizeof *samples);
    if (!samples)
        return moed_err_set(e, MOED_ENOMEM, "calibration: out of memory");
    int rc = kc_set_device(dev, e);
    uint64_t slot_bytes = 0;
    if (!rc)
        rc = gpu_slots_geometry(m, NULL, &slot_bytes, e);
    if (!rc) {
        uint64_t want = (256ull << 20) / slot_bytes;
        r->n_slot = want < 16 ? 16 : want > 64 ? 64 : (int)want;
        double t0 = now_s();
        rc = gpu_slots_new(&g.gs, m, &(struct gpu_slots_opts){.n_slot = r->n_slot}, e);
        if (!rc) {
            struct gpu_slots_stats st;
            gpu_slots_get_stats(g.gs, &st);
            r->registered = st.registered;
            snprintf(r->host_note, sizeof r->host_note, "%s", gpu_slots_host_note(g.gs));
            logf_(log, "calibrate: gpu %d: %d slots of %llu bytes, sources %s (%.2f s)%s%s\n",
                  dev, r->n_slot, (unsigned long long)slot_bytes,
                  r->registered ? "registered" : "staged", now_s() - t0,
                  r->host_note[0] ? ": " : "", r->host_note);
        }
    }
    /* outputs and activations are per pair: MAX_TOK for one expert, n_slot
     * experts of MMA_MAX_NTOK tokens for the tile-64 launches; the inputs
     * CALIB_MMA_ROWS rows */
    size_t pairs = MAX_TOK;
    if (r->mma_applies && (size_t)r->n_slot * MMA_MAX_NTOK > pairs)
        pairs = (size_t)r->n_slot * MMA_MAX_NTOK;
    const size_t xrows = CALIB_MMA_ROWS > MAX_TOK ? CALIB_MMA_ROWS : MAX_TOK;
    const size_t act = pairs * (size_t)(r->n_ff > r->n_embd ? r->n_ff : r->n_embd);
    if (!rc)
        rc = kc_stream_new(&g.comp, e);
    if (!rc)
        rc = kc_stream_new(&g.copy, e);
    if (!rc)
        rc = kc_event_new(&g.ev0, e);
    if (!rc)
        rc = kc_event_new(&g.ev1, e);
    if (!rc)
        rc = kc_event_new_sync(&g.evs, e);
    if (!rc)
        rc = kc_malloc((void **)&g.dx, xrows * (size_t)r->n_embd * sizeof(float), e);
    if (!rc)
        rc = kc_malloc((void **)&g.dy, pairs * (size_t)r->n_embd * sizeof(float), e);
    if (!rc)
        rc = kc_malloc((void **)&g.dact, act * sizeof(float), e);
    if (!rc)
        rc = kc_malloc((void **)&g.dtab, 3 * (size_t)r->n_slot * sizeof(void *), e);
    if (!rc)
        rc = kc_host_alloc((void **)&g.hrow, (size_t)r->n_embd * sizeof(float), e);
    if (!rc)
        rc = kc_host_alloc((void **)&g.hrow2, (size_t)r->n_embd * sizeof(float), e);
    if (!rc) { /* inputs: small values, so no kernel sees infinities */
        for (int32_t i = 0; i < r->n_embd; i++)
            g.hrow[i] = g.hrow2[i] = (float)((i % 17) - 8) / 64.0f;
        for (size_t t = 0; t < xrows && !rc; t++)
            rc = kc_h2d(g.dx + t * (size_t)r->n_embd, g.hrow, (size_t)r->n_embd * sizeof(float),
                        g.comp, e);
        if (!rc)
            rc = kc_memset(g.dy, 0, pairs * (size_t)r->n_embd * sizeof(float), g.comp, e);
        if (!rc)
            rc = kc_sync(g.comp, e);
    }
    if (!rc)
        rc = gpu_h2d(&g, m, r, seconds / 6, samples, log, e);
    const double mma_s = seconds / 6 < CALIB_MMA_MAX_S ? seconds / 6 : CALIB_MMA_MAX_S;
    for (int t = 0; t < r->ntypes && !rc; t++) {
        rc = gpu_kernels(&g, m, r, t, seconds / 2, log, e);
        if (!rc) /* on the slots gpu_kernels loaded with type t */
            rc = gpu_mma(&g, r, t, mma_s, log, e);
    }
    if (!rc)
        rc = gpu_shared(&g, m, pool, r, seconds / 6, log, e);
    if (!rc)
        rc = gpu_sides(&g, pool, r, seconds / 20, samples, e);
    gpu_ctx_free(&g);
    free(samples);
    if (rc)
        return moed_err_wrap(e, "calibration (GPU %d)", dev);
    r->gpu = true;
    return 0;
}

/* ---- the cost model and the tables ----------------------------------------------------- */

void calib_to_cost(const struct calib_result *r, struct sched_cost *c)
{
    struct sched_cost d;
    sched_cost_default(&d);
    *c = d;
    c->ntypes = r->ntypes;
    memset(c->type, 0, sizeof c->type);
    const struct sched_cost_type *q = &d.type[0];
    const double ref_flop = 3.0 * 768 * 2048; /* the defaults' shape (cost.c) */
    bool all = r->cpu_done && r->gpu;
    for (int t = 0; t < r->ntypes; t++) {
        const struct calib_type *ty = &r->type[t];
        struct sched_cost_type *o = &c->type[t];
        snprintf(o->name, sizeof o->name, "%s", ty->name);
        o->bytes = ty->bytes;
        o->cpu_us = ty->cpu.a;
        o->cpu_us_tok = ty->cpu.b;
        if (r->gpu && ty->gpu_ok) {
            o->gpu_us = ty->gpu.a;
            o->gpu_us_tok = ty->gpu.b;
        } else {
            o->gpu_us = q->gpu_us * (double)ty->bytes / (double)q->bytes;
            o->gpu_us_tok = q->gpu_us_tok * 3.0 * r->n_embd * r->n_ff / ref_flop;
            all = false;
        }
        if (!r->mma_applies) { /* tile 64 never runs: 0 and 0, "unknown" */
            o->gpu_mma_us = o->gpu_mma_us_tok = 0;
        } else if (r->gpu && ty->mma_ok) {
            o->gpu_mma_us = ty->mma.a;
            o->gpu_mma_us_tok = ty->mma.b;
        } else {
            o->gpu_mma_us = q->gpu_mma_us * (double)ty->bytes / (double)q->bytes;
            o->gpu_mma_us_tok = q->gpu_mma_us_tok * 3.0 * r->n_embd * r->n_ff / ref_flop;
            all = false;
        }
    }
    if (r->cpu_done)
        c->cpu_alone_gbs = r->cpu_alone_gbs;
    if (r->gpu) {
        c->load_us = r->load.a;
        c->h2d_gbs = r->h2d_gbs;
        c->h2d_shared_gbs = r->shared_h2d_gbs < r->h2d_gbs ? r->shared_h2d_gbs : r->h2d_gbs;
        double f = r->shared_cpu_alone_gbs > 0 ? r->shared_cpu_gbs / r->shared_cpu_alone_gbs : 1;
        c->cpu_shared_gbs = c->cpu_alone_gbs * (f < 1 ? f : 1);
        c->cpu_side_us = r->cpu_side_us;
        c->gpu_side_us = r->gpu_side_us;
    } else {
        c->cpu_shared_gbs = c->cpu_alone_gbs * d.cpu_shared_gbs / d.cpu_alone_gbs;
    }
    c->calibrated = all;
}

void calib_print(const struct calib_result *r, FILE *f)
{
    fprintf(f, "# calibration: %d expert type%s, n_embd %d, n_ff %d; CPU %d thread%s\n",
            r->ntypes, r->ntypes == 1 ? "" : "s", (int)r->n_embd, (int)r->n_ff, r->threads,
            r->threads == 1 ? "" : "s");
    for (int t = 0; t < r->ntypes; t++) {
        const struct calib_type *ty = &r->type[t];
        fprintf(f, "\ntype %s: gate %s, up %s, down %s; %d layer%s; %llu bytes/expert%s\n",
                ty->name, kern_type_name(ty->tg), kern_type_name(ty->tu), kern_type_name(ty->td),
                (int)ty->n_layer, ty->n_layer == 1 ? "" : "s", (unsigned long long)ty->bytes,
                t == r->dom ? " (dominant)" : "");
        fprintf(f, "  CPU (working set %d experts, %.0f MiB), median of reps:\n", (int)ty->ws,
                (double)ty->ws * (double)ty->bytes / 1048576.0);
        fprintf(f, "    %4s %6s %10s %10s %8s %8s\n", "n", "reps", "us", "fit us", "resid",
                "GB/s");
        for (int i = 0; i < CALIB_NTOK; i++) {
            double fit = ty->cpu.a + ty->cpu.b * calib_ntok[i];
            fprintf(f, "    %4d %6d %10.2f %10.2f %+7.1f%% %8.2f\n", calib_ntok[i],
                    ty->cpu_reps[i], ty->cpu_us[i], fit,
                    100.0 * (fit - ty->cpu_us[i]) / ty->cpu_us[i],
                    (double)ty->bytes / (ty->cpu_us[i] * 1e3));
        }
        fprintf(f, "  CPU fit: t_cpu(n) = %.3f + %.4f n us; worst residual %.1f%% at n=%d\n",
                ty->cpu.a, ty->cpu.b, 100.0 * ty->cpu.worst, calib_ntok[ty->cpu.worst_i]);
        if (!r->gpu)
            continue;
        if (!ty->gpu_ok) {
            fprintf(f, "  GPU: not measured (the kernels do not read this type)\n");
            continue;
        }
        fprintf(f, "  GPU kernels (gate_up + down, tile 8 for n <= 8, else 64), median of "
                   "5 batch means:\n");
        fprintf(f, "    %4s %6s %10s %10s %8s\n", "n", "reps", "us", "fit us", "resid");
        for (int i = 0; i < CALIB_NTOK; i++) {
            double fit = ty->gpu.a + ty->gpu.b * calib_ntok[i];
            fprintf(f, "    %4d %6d %10.2f %10.2f %+7.1f%%\n", calib_ntok[i], ty->gpu_reps[i],
                    ty->gpu_us[i], fit, 100.0 * (fit - ty->gpu_us[i]) / ty->gpu_us[i]);
        }
        fprintf(f, "  GPU fit: t_gpu(n) = %.3f + %.4f n us; worst residual %.1f%% at n=%d\n",
                ty->gpu.a, ty->gpu.b, 100.0 * ty->gpu.worst, calib_ntok[ty->gpu.worst_i]);
        if (!r->mma_applies) {
            fprintf(f, "  GPU kernels, tile 64: not measured (%s); gpu_mma 0\n", r->mma_note);
            continue;
        }
        if (!ty->mma_ok) {
            fprintf(f, "  GPU kernels, tile 64: not measured\n");
            continue;
        }
        fprintf(f, "  GPU kernels, tile 64, %d experts per launch (gate_up + down, n tokens "
                   "each), median of 5 batch means:\n",
                r->n_mma);
        fprintf(f, "    %4s %6s %10s %10s %10s %8s\n", "n", "reps", "launch us", "us/expert",
                "fit us", "resid");
        for (int i = 0; i < CALIB_NTOK_MMA; i++) {
            double fit = ty->mma.a + ty->mma.b * calib_ntok_mma[i];
            fprintf(f, "    %4d %6d %10.2f %10.3f %10.3f %+7.1f%%\n", calib_ntok_mma[i],
                    ty->mma_reps[i], ty->mma_launch_us[i], ty->mma_us[i], fit,
                    100.0 * (fit - ty->mma_us[i]) / ty->mma_us[i]);
        }
        fprintf(f, "  GPU tile-64 fit: t_mma(n) = %.3f + %.4f n us an expert; worst residual "
                   "%.1f%% at n=%d\n",
                ty->mma.a, ty->mma.b, 100.0 * ty->mma.worst, calib_ntok_mma[ty->mma.worst_i]);
    }
    const struct calib_type *d = &r->type[r->dom];
    fprintf(f, "\nCPU alone: %.2f GB/s (type %s, 1 token)\n", r->cpu_alone_gbs, d->name);
    if (!r->gpu) {
        fprintf(f, "GPU: not measured (no --gpu): load_us, h2d_gbs, h2d_shared_gbs, "
                   "cpu_side_us, gpu_side_us and the types' gpu_us/gpu_us_tok and "
                   "gpu_mma_us/gpu_mma_us_tok are defaults, cpu_shared_gbs scales cpu_alone_gbs "
                   "by the defaults' 44/72; calibrated = 0\n");
        return;
    }
    fprintf(f, "\nH2D on GPU %d (%s sources%s%s), %d slots, bursts of %s experts:\n", r->dev,
            r->registered ? "registered" : "staged", r->host_note[0] ? ": " : "", r->host_note,
            r->n_slot, d->name);
    fprintf(f, "    %4s %6s %10s %10s %8s %8s\n", "loads", "reps", "us", "fit us", "resid",
            "GB/s");
    for (int i = 0; i < CALIB_NLOAD; i++) {
        double b = (double)calib_nload[i] * (double)d->bytes;
        double fit = r->load.a + r->load.b * b;
        fprintf(f, "    %4d %6d %10.2f %10.2f %+7.1f%% %8.2f\n", calib_nload[i], r->load_reps[i],
                r->load_us[i], fit, 100.0 * (fit - r->load_us[i]) / r->load_us[i],
                b / (r->load_us[i] * 1e3));
    }
    fprintf(f, "  H2D fit: t_load(b) = %.3f us + b / (%.2f GB/s); worst residual %.1f%% at %d\n",
            r->load.a, r->h2d_gbs, 100.0 * r->load.worst, calib_nload[r->load.worst_i]);
    fprintf(f, "Shared (%.2f s, CPU 1-token experts while the copy stream loads): CPU %.2f GB/s "
               "(alone in the same loop %.2f), H2D %.2f GB/s (alone %.2f)\n",
            r->shared_s, r->shared_cpu_gbs, r->shared_cpu_alone_gbs, r->shared_h2d_gbs,
            r->h2d_gbs);
    fprintf(f, "Sides: cpu_side_us %.2f (D2H row + empty pool run + H2D row), gpu_side_us %.2f "
               "(1 launch + event sync)\n",
            r->cpu_side_us, r->gpu_side_us);
}

void calib_print_cost(const struct sched_cost *c, FILE *f)
{
    fprintf(f, "calibrated      %s\n", c->calibrated ? "yes" : "no (built-in or partly measured)");
    fprintf(f, "load_us         %10.3f   H2D latency per copy\n", c->load_us);
    fprintf(f, "h2d_gbs         %10.3f   H2D alone, GB/s\n", c->h2d_gbs);
    fprintf(f, "h2d_shared_gbs  %10.3f   H2D while the CPU streams (x%.2f slower)\n",
            c->h2d_shared_gbs, sched_cost_h2d_factor(c));
    fprintf(f, "cpu_alone_gbs   %10.3f   CPU expert streaming alone, GB/s\n", c->cpu_alone_gbs);
    fprintf(f, "cpu_shared_gbs  %10.3f   CPU while copies run (x%.2f slower)\n",
            c->cpu_shared_gbs, sched_cost_cpu_factor(c));
    fprintf(f, "cpu_side_us     %10.3f   per layer with a CPU expert\n", c->cpu_side_us);
    fprintf(f, "gpu_side_us     %10.3f   per layer with a GPU expert\n", c->gpu_side_us);
    fprintf(f, "\n%-16s %10s %9s %10s %9s %10s %10s %14s %9s %9s %9s\n", "type", "bytes",
            "cpu_us", "cpu_us_tok", "gpu_us", "gpu_us_tok", "gpu_mma_us", "gpu_mma_us_tok",
            "load_us", "cpu(1)", "cpu(64)");
    bool unknown = false;
    for (int t = 0; t < c->ntypes; t++) {
        const struct sched_cost_type *ty = &c->type[t];
        char mma[2][32];
        if (ty->gpu_mma_us != 0 || ty->gpu_mma_us_tok != 0) {
            snprintf(mma[0], sizeof mma[0], "%.3f", ty->gpu_mma_us);
            snprintf(mma[1], sizeof mma[1], "%.4f", ty->gpu_mma_us_tok);
        } else {
            snprintf(mma[0], sizeof mma[0], "-");
            snprintf(mma[1], sizeof mma[1], "-");
            unknown = true;
        }
        fprintf(f, "%-16s %10llu %9.3f %10.4f %9.3f %10.4f %10s %14s %9.2f %9.2f %9.2f\n",
                ty->name, (unsigned long long)ty->bytes, ty->cpu_us, ty->cpu_us_tok, ty->gpu_us,
                ty->gpu_us_tok, mma[0], mma[1], sched_cost_load_us(c, ty->bytes),
                sched_cost_cpu_us(c, t, 1), sched_cost_cpu_us(c, t, 64));
    }
    fprintf(f, "gpu_us/_tok: one expert a launch (decode); gpu_mma_us/_tok: an expert's share of "
               "a tile-64 launch of many (prefill)%s\n",
            unknown ? "; -: unknown, the one-expert figures stand for it" : "");
}
