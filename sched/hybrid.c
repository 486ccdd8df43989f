/*
 * The hybrid expert executor (hybrid.h).
 */
#include "sched/hybrid.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cache/gpu_slots.h"
#include "kernels/cpu/types.h"
#include "model/moe.h"
#include "sched/calib.h"
#include "sched/plan.h"
#include "sched/predict.h"

struct hybrid {
    const struct model *m;
    struct hybrid_opts o;
    struct sched_cost base;     /* as given (calibrated or built in) */
    struct sched_cost cost;     /* decode steps: base with the measured corrections */
    struct sched_cost cost_mma; /* prefill steps (tile 64): the GPU's tensor-core costs */
    /* online correction of the decode cost model: each decode layer's copy
     * time (two timing events around its loads on the copy stream) and CPU
     * time against what the model predicted; moving averages scale the
     * CPU's expert times and the copy rates of `cost` */
    kc_event ev_c0, ev_c1;
    bool copy_pending;
    double copy_pred_us;        /* the pending loads' modelled time */
    double r_cpu, r_h2d;        /* measured / modelled, averaged */
    int32_t n_layer, E, K, d, B;
    int *cost_type;                /* [n_layer] row of cost.type */
    struct gpu_slots *gs;
    struct cache *cache;
    kc_stream copy;
    kc_event ev_d2h;
    struct moe_exec *cpu;
    struct moe_experts *mx;        /* [n_layer] host experts (the mapping) */
    struct kc_experts *kx;         /* [n_layer] types; tables at d_table */
    void **d_table;                /* device [3][E] */
    void **h_table;                /* pinned [3][E] */
    size_t groups_bytes[2];        /* bytes of the grouping to upload (tile 8, tile 64) */
    void *h_groups;                /* pinned mirror of the grouping workspace */
    int32_t *h_ids;                /* pinned [B][K] */
    float *h_wts;                  /* pinned [B][K] */
    float *h_x;                    /* pinned [B][d]: the layer's normalised rows */
    float *h_y;                    /* pinned [B*K][d]: CPU experts' rows */
    float *h_next;                 /* pinned [HYBRID_PREDICT_MAX_TOK][E]: next router's logits */
    /* host scratch, per expert */
    int32_t *cnt, *first, *fill, *slot_of, *place_of, *act;
    struct sched_plan_expert *pex;
    struct moe_rows_group *groups;
    int32_t *row_tok;              /* [B*K] */
    int32_t *pinned;               /* [E] slots pinned by this layer */
    int32_t n_cache;               /* cache slots: 0 .. n_cache - 1 */
    int32_t n_stream;              /* then the streaming area: n_cache .. + n_stream - 1 */
    int32_t next_stream;           /* streaming slots handed out in this layer */
    int32_t *loading;              /* [n_slot] slots whose load may not have landed */
    int32_t n_loading;
    bool *in_loading;              /* [n_slot] */
    /* prefetch */
    struct predictor *pred;
    struct predict_result pres;
    int32_t pres_layer;            /* layer pres predicts for this step, -1: none */
    struct predict_pick *picks;    /* [E] */
    bool *cached_map;              /* [E] */
    double copy_free_at;           /* host clock when the copy engine runs dry (s) */
    double last_wait_us;
    struct sched_plan plan;
    int trace; /* MOED_HYBRID_TRACE: 1 one stderr line per layer step, 2 each stage */
    /* statistics */
    struct hybrid_stats st;
    struct hybrid_layer_stats *ls; /* [n_layer], cache counters filled on get */
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int32_t max_i(int32_t a, int32_t b)
{
    return a > b ? a : b;
}

int32_t hybrid_slots_for(const struct model *m, const struct hybrid_opts *o)
{
    const struct model_hparams *hp = &m->hp;
    int64_t all = (int64_t)hp->n_layer * hp->n_expert, n;
    if (o->budget_frac > 0) {
        n = (int64_t)(o->budget_frac * (double)all + 0.5);
    } else {
        uint64_t sb = 0;
        struct moed_err e;
        if (gpu_slots_geometry(m, NULL, &sb, &e))
            return 0;
        n = gpu_slots_for_budget(o->budget_bytes, sb);
    }
    int64_t lo = (int64_t)HYBRID_MIN_SLOTS * hp->n_expert_used;
    if (n < lo)
        n = lo;
    if (n > all)
        n = all;
    return (int32_t)n;
}

void hybrid_free(struct hybrid *hy)
{
    if (!hy)
        return;
    if (hy->copy) {
        struct moed_err e;
        kc_sync(hy->copy, &e);
    }
    gpu_slots_free(hy->gs);
    cache_free(hy->cache);
    kc_stream_free(hy->copy);
    kc_event_free(hy->ev_d2h);
    kc_event_free(hy->ev_c0);
    kc_event_free(hy->ev_c1);
    moe_exec_free(hy->cpu);
    predict_result_free(&hy->pres);
    predict_free(hy->pred);
    kc_free(hy->d_table);
    kc_host_free(hy->h_table);
    kc_host_free(hy->h_groups);
    kc_host_free(hy->h_ids);
    kc_host_free(hy->h_wts);
    kc_host_free(hy->h_x);
    kc_host_free(hy->h_y);
    kc_host_free(hy->h_next);
    free(hy->cost_type);
    free(hy->mx);
    free(hy->kx);
    free(hy->cnt);
    free(hy->first);
    free(hy->fill);
    free(hy->slot_of);
    free(hy->place_of);
    free(hy->act);
    free(hy->pex);
    free(hy->groups);
    free(hy->row_tok);
    free(hy->pinned);
    free(hy->loading);
    free(hy->in_loading);
    free(hy->picks);
    free(hy->cached_map);
    free(hy->ls);
    free(hy);
}

/* The cost row of a layer's experts: calibration's name for the types,
 * else the first row (the defaults' q4_k), which the log should mention. */
static int cost_row(const struct sched_cost *c, const struct model_layer *L)
{
    char name[SCHED_COST_NAME];
    calib_type_name(L->gate_exps->type, L->up_exps->type, L->down_exps->type, name, sizeof name);
    int t = sched_cost_find_type(c, name);
    return t >= 0 ? t : 0;
}

static void track_loading(struct hybrid *hy, int32_t slot)
{
    if (!hy->in_loading[slot]) {
        hy->in_loading[slot] = true;
        hy->loading[hy->n_loading++] = slot;
    }
}

/* Load (layer, expert) into slot on the copy stream; the copy engine's
 * host-clock horizon moves by the load's modelled time. */
static int load_slot(struct hybrid *hy, int32_t slot, int32_t layer, int32_t expert,
                     struct moed_err *e)
{
    int rc = gpu_slots_load(hy->gs, slot, layer, expert, hy->copy, e);
    if (rc)
        return rc;
    track_loading(hy, slot);
    uint64_t b = hy->cost.type[hy->cost_type[layer]].bytes;
    double t = now_s();
    if (hy->copy_free_at < t)
        hy->copy_free_at = t;
    hy->copy_free_at += sched_cost_load_us(&hy->cost, b) * 1e-6;
    hy->ls[layer].load_bytes += gpu_slots_layout(hy->gs, layer)->span;
    return 0;
}

/* Slots whose copies have landed become READY. */
static int poll_loaded(struct hybrid *hy, struct moed_err *e)
{
    int32_t k = 0;
    for (int32_t i = 0; i < hy->n_loading; i++) {
        int32_t s = hy->loading[i];
        bool done = false;
        int rc = gpu_slots_loaded(hy->gs, s, &done, e);
        if (rc)
            return rc;
        if (done) {
            struct cache_slot_info info = {.state = CACHE_READY};
            if (s < hy->n_cache)
                cache_slot_get(hy->cache, s, &info);
            if (info.state == CACHE_LOADING)
                cache_ready(hy->cache, s);
            hy->in_loading[s] = false;
        } else {
            hy->loading[k++] = s;
        }
    }
    hy->n_loading = k;
    return 0;
}

/* The counters at zero, the description of the executor filled in. */
static void stats_clear(struct hybrid *hy)
{
    struct gpu_slots_stats gst;
    gpu_slots_get_stats(hy->gs, &gst);
    hy->st = (struct hybrid_stats){.n_layer = hy->n_layer,
                                   .n_slot = hy->n_cache,
                                   .n_stream = hy->n_stream,
                                   .slot_bytes = gst.slot_bytes,
                                   .pool_bytes = gst.pool_bytes,
                                   .registered = gst.registered,
                                   .policy = hy->o.policy,
                                   .static_layers = hy->o.static_layers,
                                   .prefetch = hy->pred != NULL};
}

int hybrid_new(struct hybrid **out, const struct model *m, const struct hybrid_opts *o,
               struct moed_err *e)
{
    const struct model_hparams *hp = &m->hp;
    *out = NULL;
    if (o->max_batch < 1 || o->policy == CACHE_BELADY || o->budget_frac < 0 ||
        o->budget_frac > 1)
        return moed_err_set(e, MOED_EINVAL,
                            "hybrid: bad options (max_batch %d, policy %s, budget fraction %g)",
                            o->max_batch, cache_policy_name(o->policy), o->budget_frac);
    struct hybrid *hy = calloc(1, sizeof *hy);
    if (!hy)
        return moed_err_set(e, MOED_ENOMEM, "out of memory");
    hy->m = m;
    hy->o = *o;
    if (o->cost)
        hy->cost = *o->cost;
    else
        sched_cost_default(&hy->cost);
    hy->base = hy->cost;
    hy->r_cpu = hy->r_h2d = 1;
    hy->n_layer = hp->n_layer;
    hy->E = hp->n_expert;
    hy->K = hp->n_expert_used;
    hy->d = hp->n_embd;
    hy->B = o->max_batch;
    hy->pres_layer = -1;
    hy->trace = getenv("MOED_HYBRID_TRACE") ? atoi(getenv("MOED_HYBRID_TRACE")) : 0;
    int rc;
    size_t E = (size_t)hy->E, K = (size_t)hy->K, B = (size_t)hy->B, d = (size_t)hy->d;
    if (hy->E > SCHED_PLAN_MAX) {
        rc = moed_err_set(e, MOED_EUNSUPPORTED, "hybrid: %d experts per layer (at most %d)",
                          hy->E, SCHED_PLAN_MAX);
        goto fail;
    }
    if ((rc = sched_cost_validate(&hy->cost, e)))
        goto fail;
    sched_cost_for_tile(&hy->cost, true, &hy->cost_mma);

    hy->cost_type = calloc((size_t)hy->n_layer, sizeof(int));
    hy->mx = calloc((size_t)hy->n_layer, sizeof *hy->mx);
    hy->kx = calloc((size_t)hy->n_layer, sizeof *hy->kx);
    hy->ls = calloc((size_t)hy->n_layer, sizeof *hy->ls);
    hy->cnt = calloc(E, sizeof(int32_t));
    hy->first = calloc(E, sizeof(int32_t));
    hy->fill = calloc(E, sizeof(int32_t));
    hy->slot_of = calloc(E, sizeof(int32_t));
    hy->place_of = calloc(E, sizeof(int32_t));
    hy->act = calloc(E, sizeof(int32_t));
    hy->pinned = calloc(E, sizeof(int32_t));
    hy->pex = calloc(E, sizeof *hy->pex);
    hy->groups = calloc(E, sizeof *hy->groups);
    hy->row_tok = calloc(B * K, sizeof(int32_t));
    hy->picks = calloc(E, sizeof *hy->picks);
    hy->cached_map = calloc(E, sizeof(bool));
    if (!hy->cost_type || !hy->mx || !hy->kx || !hy->ls || !hy->cnt || !hy->first ||
        !hy->fill || !hy->slot_of || !hy->place_of || !hy->act || !hy->pinned || !hy->pex ||
        !hy->groups || !hy->row_tok || !hy->picks || !hy->cached_map) {
        rc = moed_err_set(e, MOED_ENOMEM, "out of memory");
        goto fail;
    }
    int32_t max_ff = 0;
    for (int32_t il = 0; il < hy->n_layer; il++) {
        const struct model_layer *L = &m->layers[il];
        if (!L->gate_exps || !L->up_exps || !L->down_exps) {
            rc = moed_err_set(e, MOED_EINVAL, "hybrid: layer %d has no stacked experts", il);
            goto fail;
        }
        const struct gguf_tensor *xs[3] = {L->gate_exps, L->up_exps, L->down_exps};
        for (int j = 0; j < 3; j++)
            if (!kc_type_supported(xs[j]->type)) {
                rc = moed_err_set(e, MOED_EUNSUPPORTED,
                                  "tensor %.*s: type %s has no GPU kernel", (int)xs[j]->name.len,
                                  xs[j]->name.ptr, kern_type_name(xs[j]->type));
                goto fail;
            }
        hy->cost_type[il] = cost_row(&hy->cost, L);
        moe_experts_of_layer(m, il, &hy->mx[il]);
        max_ff = max_i(max_ff, hp->n_ff_exp);
    }

    int32_t n_cache = hybrid_slots_for(m, o);
    /* prefill streams the experts it loads through one layer's worth of
     * slots outside the cache, so a long prompt does not evict what decode
     * uses (static placement never loads) */
    int32_t n_stream = o->static_layers || o->no_plan ? 0 : hy->E;
    int32_t n_slot = n_cache + n_stream;
    hy->n_cache = n_cache;
    hy->n_stream = n_stream;
    if (hy->trace > 1)
        fprintf(stderr, "hybrid: new: %d cache slots, %d streaming\n", n_cache, n_stream);
    if ((rc = kc_stream_new(&hy->copy, e)) || (rc = kc_event_new_sync(&hy->ev_d2h, e)) ||
        (rc = kc_event_new(&hy->ev_c0, e)) || (rc = kc_event_new(&hy->ev_c1, e)))
        goto fail;
    if (hy->trace > 1)
        fprintf(stderr, "hybrid: new: streams\n");
    if ((rc = gpu_slots_new(&hy->gs, m,
                            &(struct gpu_slots_opts){.n_slot = n_slot,
                                                     .force_staging = o->force_staging},
                            e)))
        goto fail;
    if (hy->trace > 1)
        fprintf(stderr, "hybrid: new: slots\n");
    if ((rc = cache_init(&hy->cache,
                         &(struct cache_opts){.n_layer = hy->n_layer,
                                              .n_expert = hy->E,
                                              .n_slot = n_cache,
                                              .policy = o->policy},
                         e)))
        goto fail;
    hy->loading = calloc((size_t)n_slot, sizeof(int32_t));
    hy->in_loading = calloc((size_t)n_slot, sizeof(bool));
    if (!hy->loading || !hy->in_loading) {
        rc = moed_err_set(e, MOED_ENOMEM, "out of memory");
        goto fail;
    }

    if (hy->trace > 1)
        fprintf(stderr, "hybrid: new: cache\n");
    /* device table, pinned buffers */
    size_t gb8 = kc_moe_groups_size(hy->B, hy->K, hy->E, 8);
    size_t gb64 = kc_moe_groups_size(hy->B, hy->K, hy->E, 64);
    for (int i = 0; i < 2; i++) {
        struct kc_moe_groups g;
        int32_t tile = i ? 64 : 8;
        kc_moe_groups_at(&g, (void *)(uintptr_t)256, hy->B, hy->K, hy->E, tile);
        hy->groups_bytes[i] = (size_t)((uintptr_t)g.n_tiles - 256) + sizeof(int32_t);
    }
    if ((rc = kc_malloc((void **)&hy->d_table, 3 * E * sizeof(void *), e)) ||
        (rc = kc_host_alloc((void **)&hy->h_table, 3 * E * sizeof(void *), e)) ||
        (rc = kc_host_alloc(&hy->h_groups, gb8 > gb64 ? gb8 : gb64, e)) ||
        (rc = kc_host_alloc((void **)&hy->h_ids, B * K * sizeof(int32_t), e)) ||
        (rc = kc_host_alloc((void **)&hy->h_wts, B * K * sizeof(float), e)) ||
        (rc = kc_host_alloc((void **)&hy->h_x, B * d * sizeof(float), e)) ||
        (rc = kc_host_alloc((void **)&hy->h_y, B * K * d * sizeof(float), e)) ||
        (rc = kc_host_alloc((void **)&hy->h_next, HYBRID_PREDICT_MAX_TOK * E * sizeof(float), e)))
        goto fail;
    if (hy->trace > 1)
        fprintf(stderr, "hybrid: new: buffers\n");
    memset(hy->h_table, 0, 3 * E * sizeof(void *));
    for (int32_t il = 0; il < hy->n_layer; il++) {
        const struct model_layer *L = &m->layers[il];
        hy->kx[il] = (struct kc_experts){
            .type_gate = L->gate_exps->type,
            .type_up = L->up_exps->type,
            .type_down = L->down_exps->type,
            .row_gate = kern_row_size(L->gate_exps->type, L->gate_exps->ne[0]),
            .row_up = kern_row_size(L->up_exps->type, L->up_exps->ne[0]),
            .row_down = kern_row_size(L->down_exps->type, L->down_exps->ne[0]),
            .gate = (const void *const *)hy->d_table,
            .up = (const void *const *)(hy->d_table + E),
            .down = (const void *const *)(hy->d_table + 2 * E),
            .n_expert = hp->n_expert,
            .n_embd = hp->n_embd,
            .n_ff = hp->n_ff_exp};
    }
    if ((rc = moe_cpu_new(&hy->cpu,
                          &(struct moe_cpu_opts){.pool = o->pool,
                                                 .max_tok = hy->B,
                                                 .n_expert = hy->E,
                                                 .n_used = hy->K,
                                                 .n_embd = hy->d,
                                                 .n_ff = max_ff},
                          e)))
        goto fail;
    if (hy->trace > 1)
        fprintf(stderr, "hybrid: new: cpu executor\n");
    if (!o->no_prefetch && !o->static_layers && !o->no_plan) {
        if ((rc = predict_new_logits(&hy->pred, m, hy->B, e)) ||
            (rc = predict_result_alloc(hy->pred, &hy->pres, e)))
            goto fail;
    }

    if (hy->trace > 1)
        fprintf(stderr, "hybrid: new: buffers, executor, predictor ready\n");
    /* the initial fill: round-robin over layers, or whole layers in order */
    for (int32_t s = 0; s < n_cache; s++) {
        int32_t il = o->static_layers ? s / hy->E : s % hy->n_layer;
        int32_t ex = o->static_layers ? s % hy->E : s / hy->n_layer;
        int32_t got = cache_admit(hy->cache, il, ex); /* counted, then reset below */
        if (got < 0)
            break;
        cache_unpin(hy->cache, got);
        if ((rc = gpu_slots_load(hy->gs, got, il, ex, hy->copy, e)))
            goto fail;
    }
    if ((rc = kc_sync(hy->copy, e)))
        goto fail;
    for (int32_t s = 0; s < n_cache; s++) {
        struct cache_slot_info info;
        cache_slot_get(hy->cache, s, &info);
        if (info.state == CACHE_LOADING)
            cache_ready(hy->cache, s);
    }
    cache_stats_reset(hy->cache);
    if (hy->trace > 1)
        fprintf(stderr, "hybrid: new: slots filled\n");

    stats_clear(hy);
    *out = hy;
    return 0;
fail:
    hybrid_free(hy);
    return rc;
}

void hybrid_step_begin(struct hybrid *hy)
{
    hy->pres_layer = -1;
}

/* Prefetch for layer `layer` (the next one): its router's logits for this
 * step's rows came down with the routing; load the uncached experts worth
 * most into slots, within the copy engine's expected idle time before that
 * layer plans: budget_us from now. */
static int prefetch(struct hybrid *hy, int32_t layer, int32_t n, double budget_us,
                    struct moed_err *e)
{
    int rc = predict_from_logits(hy->pred, layer, hy->h_next, n, &hy->pres, e);
    if (rc)
        return rc;
    hy->pres_layer = layer;
    double busy_us = (hy->copy_free_at - now_s()) * 1e6;
    double budget = budget_us - (busy_us > 0 ? busy_us : 0);
    if (budget <= 0)
        return 0;
    /* only experts some token is predicted to choose: the heuristic P(used)
     * of the rest (k p summed over tokens) is too weak a reason to evict */
    for (int32_t i = 0; i < hy->E; i++) {
        hy->cached_map[i] = cache_lookup(hy->cache, layer, i) >= 0;
        if (hy->pres.tokens[i] < 1)
            hy->pres.p_used[i] = 0;
    }
    struct predict_score_in in = {.cost = &hy->cost,
                                  .type = hy->cost_type[layer],
                                  .n_expert = hy->E,
                                  .cached = hy->cached_map,
                                  .p_used = hy->pres.p_used,
                                  .tokens = hy->pres.tokens,
                                  .budget_us = budget};
    int np = predict_score(&in, hy->picks, e);
    if (np < 0)
        return np;
    for (int i = 0; i < np; i++) {
        int32_t s = cache_prefetch(hy->cache, layer, hy->picks[i].expert);
        if (s < 0)
            break; /* nothing left to give up */
        if ((rc = load_slot(hy, s, layer, hy->picks[i].expert, e)))
            return rc;
    }
    return 0;
}

#define R_ALPHA 0.05 /* weight of one layer's measurement */
#define R_MIN 0.5
#define R_MAX 4.0
#define R_DRIFT 0.002 /* per decode layer without a measurement, towards 1 */

static double clampd(double x, double lo, double hi)
{
    return x < lo ? lo : x > hi ? hi : x;
}

/* Apply r_cpu and r_h2d to the decode cost model. */
static void apply_corrections(struct hybrid *hy)
{
    struct sched_cost *c = &hy->cost;
    for (int t = 0; t < c->ntypes; t++) {
        c->type[t].cpu_us = hy->base.type[t].cpu_us * hy->r_cpu;
        c->type[t].cpu_us_tok = hy->base.type[t].cpu_us_tok * hy->r_cpu;
    }
    c->h2d_gbs = hy->base.h2d_gbs / hy->r_h2d;
    c->h2d_shared_gbs = hy->base.h2d_shared_gbs / hy->r_h2d;
}

/* The last decode layer's loads, once their copies have landed. */
static int measure_copies(struct hybrid *hy, struct moed_err *e)
{
    bool done = false;
    int rc = kc_event_query(hy->ev_c1, &done, e);
    if (rc || !done)
        return rc;
    float ms = 0;
    if ((rc = kc_event_ms(hy->ev_c0, hy->ev_c1, &ms, e)))
        return rc;
    hy->copy_pending = false;
    if (hy->copy_pred_us > 0 && ms > 0) {
        /* the model's time was for the corrected rate: undo it to compare */
        double r = (double)ms * 1e3 / (hy->copy_pred_us / hy->r_h2d);
        hy->r_h2d = clampd((1 - R_ALPHA) * hy->r_h2d + R_ALPHA * r, R_MIN, R_MAX);
        apply_corrections(hy);
    }
    return 0;
}

#define TRACE2(what)                                                                               \
    do {                                                                                           \
        if (hy->trace > 1)                                                                         \
            fprintf(stderr, "hybrid: layer %d: %s at %.0f us\n", L, what, (now_s() - t0) * 1e6); \
    } while (0)

int hybrid_moe(struct hybrid *hy, kc_stream st, const struct hybrid_io *io, struct moed_err *e)
{
    double t0 = now_s();
    int32_t L = io->layer, n = io->n_tok, K = hy->K, E = hy->E, d = hy->d;
    int rc;
    if (L < 0 || L >= hy->n_layer || n < 1 || n > hy->B || (io->tile != 8 && io->tile != 64))
        return moed_err_set(e, MOED_EINVAL, "hybrid: layer %d, %d tokens, tile %d", L, n,
                            io->tile);
    struct hybrid_layer_stats *ls = &hy->ls[L];
    size_t nk = (size_t)n * (size_t)K;

    /* 1. routing and hidden rows down (and the next router's logits) */
    bool predict = hy->pred && io->next_logits && n <= HYBRID_PREDICT_MAX_TOK;
    if ((rc = kc_d2h(hy->h_ids, io->ids, nk * sizeof(int32_t), st, e)) ||
        (rc = kc_d2h(hy->h_wts, io->wts, nk * sizeof(float), st, e)) ||
        (rc = kc_d2h(hy->h_x, io->h, (size_t)n * d * sizeof(float), st, e)) ||
        (predict &&
         (rc = kc_d2h(hy->h_next, io->next_logits, (size_t)n * E * sizeof(float), st, e))) ||
        (rc = kc_event_record(hy->ev_d2h, st, e)))
        return rc;
    ls->act_bytes += nk * 8 + (size_t)n * d * sizeof(float);

    TRACE2("d2h");
    double tw = now_s();
    TRACE2("prefetched");
    if ((rc = kc_event_sync(hy->ev_d2h, e)))
        return rc;
    double tr = now_s();
    hy->st.wait_s += tr - tw;
    hy->last_wait_us = (tr - tw) * 1e6;
    if ((rc = poll_loaded(hy, e)))
        return rc;
    if (hy->copy_pending && (rc = measure_copies(hy, e)))
        return rc;

    TRACE2("synced");
    /* 2. count, look up, plan */
    memset(hy->cnt, 0, sizeof(int32_t) * (size_t)E);
    for (size_t i = 0; i < nk; i++) {
        int32_t id = hy->h_ids[i];
        if (id < 0 || id >= E)
            return moed_err_set(e, MOED_EINVAL, "hybrid: layer %d: expert id %d of %d", L, id, E);
        hy->cnt[id]++;
    }
    if (hy->pres_layer == L) {
        for (int32_t t = 0; t < n; t++)
            for (int32_t j = 0; j < K; j++)
                for (int32_t q = 0; q < K; q++)
                    if (hy->pres.ids[(size_t)t * K + q] == hy->h_ids[(size_t)t * K + j]) {
                        hy->st.pred_hits++;
                        break;
                    }
        hy->st.pred_tokens += (uint64_t)n;
        hy->pres_layer = -1;
    }
    cache_layer_begin(hy->cache, L);
    cache_route(hy->cache, L, n, K, hy->h_ids, hy->h_wts);
    int32_t n_act = 0, n_pin = 0;
    for (int32_t x = 0; x < E; x++) {
        hy->place_of[x] = -1;
        if (!hy->cnt[x])
            continue;
        int32_t s = cache_access(hy->cache, L, x);
        hy->slot_of[x] = s;
        if (s >= 0)
            hy->pinned[n_pin++] = s;
        /* a hit whose copy is still in flight (a prefetch) is planned as a
         * load that has been paid for: LOAD_GPU waits for it, CPU ignores it */
        bool ready = s >= 0 && !hy->in_loading[s];
        hy->pex[n_act] = (struct sched_plan_expert){
            .id = x, .n_tok = hy->cnt[x], .type = hy->cost_type[L], .cached = ready};
        hy->act[n_act++] = x;
    }
    bool planned = !hy->o.static_layers && !hy->o.no_plan;
    hy->next_stream = 0;
    if (planned) {
        double busy = (hy->copy_free_at - now_s()) * 1e6;
        struct sched_plan_busy b = {.copy_us = busy > 0 ? busy : 0};
        const struct sched_cost *c = io->tile == 64 ? &hy->cost_mma : &hy->cost;
        if ((rc = sched_plan_layer(c, hy->pex, n_act, &b, &hy->plan, e)))
            goto out;
    }
    TRACE2("planned");
    /* placements; loads in the plan's order */
    for (int32_t i = 0; i < n_act; i++) {
        int32_t x = hy->act[i];
        hy->place_of[x] = planned ? hy->plan.place[i]
                          : hy->slot_of[x] >= 0 ? SCHED_PLACE_GPU_CACHED
                                                : SCHED_PLACE_CPU;
    }
    bool timed = planned && io->tile != 64 && hy->plan.n_load > 0 && !hy->copy_pending;
    double copy_pred = 0;
    if (timed && (rc = kc_event_record(hy->ev_c0, hy->copy, e)))
        goto out;
    if (planned)
        for (int q = 0; q < hy->plan.n_load; q++) {
            int32_t x = hy->act[hy->plan.load_order[q]];
            if (hy->slot_of[x] >= 0)
                continue; /* in flight already: the GPU waits for that copy */
            int32_t s;
            if (io->tile == 64 && hy->next_stream < hy->n_stream) {
                s = hy->n_cache + hy->next_stream++; /* prefill: the streaming area */
                ls->streamed++;
            } else {
                s = cache_admit(hy->cache, L, x);
                if (s < 0) {
                    hy->place_of[x] = SCHED_PLACE_CPU; /* no slot could be given up */
                    continue;
                }
                hy->pinned[n_pin++] = s;
            }
            hy->slot_of[x] = s;
            if ((rc = load_slot(hy, s, L, x, e)))
                goto out;
            copy_pred += sched_cost_load_us(&hy->cost, hy->cost.type[hy->cost_type[L]].bytes);
        }
    if (timed) {
        if ((rc = kc_event_record(hy->ev_c1, hy->copy, e)))
            goto out;
        /* the CPU streams experts meanwhile (when it has any) */
        bool cpu_busy = hy->plan.n_cpu > 0;
        hy->copy_pred_us = copy_pred * (cpu_busy ? sched_cost_h2d_factor(&hy->cost) : 1);
        hy->copy_pending = copy_pred > 0;
    }

    /* 5. prefetch the next layer's predicted experts behind this layer's loads */
    if (predict && L + 1 < hy->n_layer) {
        double tp = now_s();
        /* the copy engine's idle window: the next layer's attention, as long
         * as this layer's wait for its routing took */
        if ((rc = prefetch(hy, L + 1, n, hy->last_wait_us, e)))
            goto out;
        hy->st.predict_s += now_s() - tp;
    }
    TRACE2("loads");
    /* 3. the grouping: GPU experts' pairs first, then the CPU's */
    struct kc_moe_groups hg;
    kc_moe_groups_at(&hg, hy->h_groups, hy->B, K, E, io->tile);
    int32_t next = 0, n_tiles = 0, n_gpu_pairs = 0, n_cpu_groups = 0;
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 1)
            n_gpu_pairs = next;
        for (int32_t i = 0; i < n_act; i++) {
            int32_t x = hy->act[i];
            bool gpu = hy->place_of[x] != SCHED_PLACE_CPU;
            if (gpu == (pass == 1))
                continue;
            hy->first[x] = next;
            hy->fill[x] = 0;
            if (gpu) {
                for (int32_t p0 = 0; p0 < hy->cnt[x]; p0 += io->tile) {
                    int32_t *tl = hg.tiles + 3 * n_tiles++;
                    tl[0] = x;
                    tl[1] = next + p0;
                    tl[2] = hy->cnt[x] - p0 < io->tile ? hy->cnt[x] - p0 : io->tile;
                }
            } else {
                hy->groups[n_cpu_groups++] =
                    (struct moe_rows_group){.expert = x, .first = next - n_gpu_pairs,
                                            .n = hy->cnt[x]};
            }
            next += hy->cnt[x];
        }
    }
    *hg.n_tiles = n_tiles;
    for (int32_t t = 0; t < n; t++)
        for (int32_t j = 0; j < K; j++) {
            int32_t x = hy->h_ids[(size_t)t * K + j];
            int32_t i = hy->first[x] + hy->fill[x]++;
            hg.pair_tok[i] = t;
            hg.pair_of[(size_t)t * K + j] = i;
            if (i >= n_gpu_pairs)
                hy->row_tok[i - n_gpu_pairs] = t;
        }
    int32_t n_cpu_pairs = (int32_t)nk - n_gpu_pairs;
    if ((rc = kc_h2d(io->groups_ws, hy->h_groups, hy->groups_bytes[io->tile == 64], st, e)))
        goto out;

    TRACE2("grouped");
    /* GPU experts: pointer table, wait for loads, kernels */
    if (n_tiles) {
        for (int32_t i = 0; i < n_act; i++) {
            int32_t x = hy->act[i];
            if (hy->place_of[x] == SCHED_PLACE_CPU)
                continue;
            const void *g3[3];
            if ((rc = gpu_slots_expert_ptrs(hy->gs, hy->slot_of[x], &g3[0], &g3[1], &g3[2], e)))
                goto out;
            for (int j = 0; j < 3; j++)
                hy->h_table[(size_t)j * E + x] = (void *)g3[j];
            if (hy->in_loading[hy->slot_of[x]] &&
                (rc = gpu_slots_wait_loaded(hy->gs, hy->slot_of[x], st, e)))
                goto out;
        }
        if ((rc = kc_h2d(hy->d_table, hy->h_table, 3 * (size_t)E * sizeof(void *), st, e)))
            goto out;
        struct kc_moe_groups dg;
        kc_moe_groups_at(&dg, io->groups_ws, hy->B, K, E, io->tile);
        int32_t max_tiles = kc_moe_max_tiles(n, K, E, io->tile);
        if ((rc = kc_moe_gate_up(st, &hy->kx[L], io->h, &dg, io->tile, max_tiles, io->act, e)) ||
            (rc = kc_moe_down(st, &hy->kx[L], io->act, &dg, io->tile, max_tiles, io->ypair, e)))
            goto out;
        for (int32_t i = 0; i < n_act; i++) {
            int32_t x = hy->act[i];
            if (hy->place_of[x] != SCHED_PLACE_CPU &&
                (rc = gpu_slots_mark_used(hy->gs, hy->slot_of[x], st, e)))
                goto out;
        }
    }

    TRACE2("gpu enqueued");
    /* 4. CPU experts on the pool, while the GPU runs its own; results up */
    bool cpu_measured = false;
    if (n_cpu_pairs) {
        double tc = now_s();
        if ((rc = moe_cpu_rows(hy->cpu, &hy->mx[L], hy->h_x, n, hy->row_tok, n_cpu_pairs,
                               hy->groups, n_cpu_groups, hy->h_y, e)))
            goto out;
        double cpu_us = (now_s() - tc) * 1e6;
        hy->st.cpu_s += cpu_us * 1e-6;
        if (planned && io->tile != 64) { /* decode: correct the CPU's expert times */
            cpu_measured = true;
            double pred = 0;
            for (int32_t g = 0; g < n_cpu_groups; g++)
                pred += sched_cost_cpu_us(&hy->cost, hy->cost_type[L], hy->groups[g].n);
            if (hy->plan.n_load > 0)
                pred *= sched_cost_cpu_factor(&hy->cost);
            if (pred > 0) {
                double r = cpu_us / (pred / hy->r_cpu);
                hy->r_cpu = clampd((1 - R_ALPHA) * hy->r_cpu + R_ALPHA * r, R_MIN, R_MAX);
                apply_corrections(hy);
            }
        }
        size_t yb = (size_t)n_cpu_pairs * d * sizeof(float);
        if ((rc = kc_h2d(io->ypair + (size_t)n_gpu_pairs * d, hy->h_y, yb, st, e)))
            goto out;
        ls->act_bytes += yb;
    }

    /* a side the plans stopped using is not measured any more: its
     * correction drifts back towards the model, so the plans try it again */
    if (planned && io->tile != 64 && !cpu_measured && hy->r_cpu != 1) {
        hy->r_cpu += R_DRIFT * (1 - hy->r_cpu);
        apply_corrections(hy);
    }

    /* 6. admission behind the CPU (decode): a miss the CPU ran this step is
     * likely wanted again next step (routing is local in time), so it is
     * loaded into the cache while the copy engine would idle through the
     * next layer's attention: at most the window's worth, at least one
     * when the engine is idle.  The plan never pays for these copies. */
    /* (only with a cache of at least one decode step's experts per layer:
     * a smaller one cannot hold a working set, and the copies would only
     * take DRAM bandwidth from the CPU) */
    if (planned && io->tile != 64 &&
        hy->n_cache >= (int64_t)hy->n_layer * hy->K) {
        double busy = (hy->copy_free_at - now_s()) * 1e6;
        double budget = hy->last_wait_us - (busy > 0 ? busy : 0);
        double t1 = sched_cost_load_us(&hy->cost, hy->cost.type[hy->cost_type[L]].bytes);
        int max_n = busy <= 0 ? 1 : 0;
        if (budget > 0 && (int)(budget / t1) > max_n)
            max_n = (int)(budget / t1);
        for (int done = 0; done < max_n;) {
            int32_t best = -1; /* the CPU miss with the most tokens, then the lower id */
            for (int32_t i = 0; i < n_act; i++) {
                int32_t x = hy->act[i];
                if (hy->place_of[x] == SCHED_PLACE_CPU && hy->slot_of[x] < 0 &&
                    (best < 0 || hy->cnt[x] > hy->cnt[best]))
                    best = x;
            }
            if (best < 0)
                break;
            int32_t sl = cache_admit(hy->cache, L, best);
            hy->slot_of[best] = sl >= 0 ? sl : CACHE_BYPASS; /* not again this layer */
            if (sl < 0)
                break;
            hy->pinned[n_pin++] = sl;
            if ((rc = load_slot(hy, sl, L, best, e)))
                goto out;
            ls->behind++;
            done++;
        }
    }

    for (int32_t i = 0; i < n_act; i++) {
        int32_t x = hy->act[i];
        int p = hy->place_of[x];
        if (p == SCHED_PLACE_CPU) {
            ls->cpu++;
        } else if (p == SCHED_PLACE_LOAD_GPU) {
            ls->gpu_loaded++;
        } else {
            ls->gpu_cached++;
        }
    }
    ls->gpu_pairs += (uint64_t)n_gpu_pairs;
    ls->cpu_pairs += (uint64_t)n_cpu_pairs;
    if (hy->trace)
        fprintf(stderr,
                "hybrid: layer %d, %d tokens: %d experts (%d GPU tiles, pairs %d GPU / %d CPU), "
                "plan %.0f us, wait %.0f us, %.0f us in all\n",
                L, n, n_act, n_tiles, n_gpu_pairs, n_cpu_pairs, planned ? hy->plan.makespan_us : 0,
                (tr - tw) * 1e6, (now_s() - t0) * 1e6);
out:
    for (int32_t i = 0; i < n_pin; i++)
        cache_unpin(hy->cache, hy->pinned[i]);
    hy->st.layer_calls++;
    hy->st.host_s += now_s() - t0;
    return rc;
}

void hybrid_stats_get(const struct hybrid *hy, struct hybrid_stats *out,
                      struct hybrid_layer_stats *per_layer)
{
    *out = hy->st;
    out->cpu_scale = hy->r_cpu;
    out->h2d_scale = hy->r_h2d;
    memset(&out->total, 0, sizeof out->total);
    struct gpu_slots_stats gst;
    gpu_slots_get_stats(hy->gs, &gst);
    out->registered = gst.registered;
    for (int32_t il = 0; il < hy->n_layer; il++) {
        struct hybrid_layer_stats l = hy->ls[il];
        const struct cache_layer_stats *c = cache_stats(hy->cache, il);
        l.hits = c->hits;
        l.misses = c->misses;
        l.loads = c->loads;
        l.evictions = c->evictions;
        l.prefetches = c->prefetches;
        l.prefetch_hits = c->prefetch_hits;
        if (per_layer)
            per_layer[il] = l;
        struct hybrid_layer_stats *t = &out->total;
        t->hits += l.hits;
        t->misses += l.misses;
        t->loads += l.loads;
        t->evictions += l.evictions;
        t->prefetches += l.prefetches;
        t->prefetch_hits += l.prefetch_hits;
        t->gpu_cached += l.gpu_cached;
        t->gpu_loaded += l.gpu_loaded;
        t->cpu += l.cpu;
        t->gpu_pairs += l.gpu_pairs;
        t->cpu_pairs += l.cpu_pairs;
        t->load_bytes += l.load_bytes;
        t->streamed += l.streamed;
        t->behind += l.behind;
        t->act_bytes += l.act_bytes;
    }
}

void hybrid_stats_reset(struct hybrid *hy)
{
    cache_stats_reset(hy->cache);
    memset(hy->ls, 0, sizeof *hy->ls * (size_t)hy->n_layer);
    stats_clear(hy);
}
