/*
 * sched/plan: the per-layer planner and its timeline simulator.  See plan.h
 * for the model, the search and why a plan is placement + Johnson order.
 */
#include "sched/plan.h"

#include <math.h>
#include <string.h>

/* Everything the search needs, precomputed once per call (on the stack). */
struct ctx {
    int n;
    double tc[SCHED_PLAN_MAX], tg[SCHED_PLAN_MAX], tl[SCHED_PLAN_MAX];
    uint16_t jord[SCHED_PLAN_MAX]; /* uncached experts in Johnson order */
    int nu;
    double fc, fl, cpu_side, gpu_side;
    struct sched_plan_busy busy;
};

struct ends {
    double cpu, copy, gpu, makespan;
    int n_gpu_cached, n_cpu, n_load;
};

const char *sched_place_name(int place)
{
    switch (place) {
    case SCHED_PLACE_GPU_CACHED: return "gpu";
    case SCHED_PLACE_LOAD_GPU: return "load";
    case SCHED_PLACE_CPU: return "cpu";
    default: return "?";
    }
}

/* a before b: lower id, then lower index. */
static bool id_less(const struct sched_plan_expert *ex, int a, int b)
{
    return ex[a].id != ex[b].id ? ex[a].id < ex[b].id : a < b;
}

/* Johnson's rule: group 1 (load <= gpu) by load ascending, then group 2 by
 * gpu descending. */
static bool johnson_less(const double *tl, const double *tg, const struct sched_plan_expert *ex,
                         int a, int b)
{
    bool g1a = tl[a] <= tg[a], g1b = tl[b] <= tg[b];
    if (g1a != g1b)
        return g1a;
    if (g1a && tl[a] != tl[b])
        return tl[a] < tl[b];
    if (!g1a && tg[a] != tg[b])
        return tg[a] > tg[b];
    /* ties on the rule's key go by the other time, so experts of equal
     * cost sit next to each other and only then by id (the exact planner
     * relies on equal experts being interchangeable) */
    if (tg[a] != tg[b])
        return tg[a] > tg[b];
    if (tl[a] != tl[b])
        return tl[a] < tl[b];
    return id_less(ex, a, b);
}

static void johnson_sort(const double *tl, const double *tg, const struct sched_plan_expert *ex,
                         uint16_t *v, int m)
{
    for (int i = 1; i < m; i++) {
        uint16_t x = v[i];
        int j = i;
        for (; j > 0 && johnson_less(tl, tg, ex, x, v[j - 1]); j--)
            v[j] = v[j - 1];
        v[j] = x;
    }
}

/* The timeline of plan.h.  loads lists the LOAD_GPU experts in copy order. */
static void sim(const struct ctx *x, const uint8_t *place, const uint16_t *loads, int nl,
                struct ends *o)
{
    double wc = 0, gc = 0;
    int ncpu = 0, ncached = 0;
    for (int i = 0; i < x->n; i++) {
        if (place[i] == SCHED_PLACE_CPU) {
            wc += x->tc[i];
            ncpu++;
        } else if (place[i] == SCHED_PLACE_GPU_CACHED) {
            gc += x->tg[i];
            ncached++;
        }
    }
    if (ncpu)
        wc += x->cpu_side;
    bool gpu_any = ncached + nl > 0;
    double gpu = x->busy.gpu_us + (gpu_any ? x->gpu_side : 0) + gc;

    /* CPU and copy engine: piecewise-constant rates, event by event. */
    double t = 0, cr = wc, pc = x->busy.cpu_us, pl = x->busy.copy_us;
    double cpu_end = 0, copy_end = 0;
    int k = 0;
    double lr = nl ? x->tl[loads[0]] : 0;
    while (cr > 0 || k < nl) {
        bool cpu_busy = t < pc || cr > 0, copy_busy = t < pl || k < nl;
        bool cpu_work = t >= pc && cr > 0, copy_work = t >= pl && k < nl;
        double mc = copy_busy ? x->fc : 1.0, ml = cpu_busy ? x->fl : 1.0;
        double dt = INFINITY;
        int ev = -1;
        if (t < pc)
            dt = pc - t, ev = 0;
        if (t < pl && pl - t < dt)
            dt = pl - t, ev = 1;
        if (cpu_work && cr * mc < dt)
            dt = cr * mc, ev = 2;
        if (copy_work && lr * ml < dt)
            dt = lr * ml, ev = 3;
        t += dt;
        if (cpu_work)
            cr -= dt / mc;
        if (copy_work)
            lr -= dt / ml;
        if (ev == 2 || (cpu_work && cr <= 1e-12 * wc)) {
            cr = 0;
            cpu_end = t;
        }
        if (ev == 3 || (copy_work && lr <= 1e-12 * x->tl[loads[k]])) {
            int e = loads[k];
            gpu = fmax(gpu, t) + x->tg[e];
            copy_end = t;
            if (++k < nl)
                lr = x->tl[loads[k]];
        }
    }
    o->cpu = ncpu ? cpu_end : 0;
    o->copy = copy_end;
    o->gpu = gpu_any ? gpu : 0;
    o->makespan = fmax(o->cpu, o->gpu);
    o->n_cpu = ncpu;
    o->n_gpu_cached = ncached;
    o->n_load = nl;
}

/* Makespan of a placement with its Johnson load order. */
static double eval(const struct ctx *x, const uint8_t *place, struct ends *o)
{
    uint16_t loads[SCHED_PLAN_MAX];
    int nl = 0;
    for (int j = 0; j < x->nu; j++)
        if (place[x->jord[j]] == SCHED_PLACE_LOAD_GPU)
            loads[nl++] = x->jord[j];
    sim(x, place, loads, nl, o);
    /* the other side's end breaks ties: makespan alone has plateaus where
     * the non-binding side could still shed work */
    return o->makespan + 1e-6 * (o->cpu + o->gpu);
}

static uint8_t gpu_side_place(const struct sched_plan_expert *ex, int i)
{
    return ex[i].cached ? SCHED_PLACE_GPU_CACHED : SCHED_PLACE_LOAD_GPU;
}

static int setup(struct ctx *x, const struct sched_cost *c, const struct sched_plan_expert *ex,
                 int n, const struct sched_plan_busy *busy, struct moed_err *err)
{
    if (n < 0 || n > SCHED_PLAN_MAX)
        return moed_err_set(err, MOED_EINVAL, "plan: %d experts (0..%d)", n, SCHED_PLAN_MAX);
    x->n = n;
    x->nu = 0;
    x->fc = sched_cost_cpu_factor(c);
    x->fl = sched_cost_h2d_factor(c);
    x->cpu_side = c->cpu_side_us;
    x->gpu_side = c->gpu_side_us;
    if (busy)
        x->busy = *busy;
    else
        x->busy = (struct sched_plan_busy){0, 0, 0};
    if (!(x->busy.cpu_us >= 0 && x->busy.copy_us >= 0 && x->busy.gpu_us >= 0) ||
        !isfinite(x->busy.cpu_us + x->busy.copy_us + x->busy.gpu_us))
        return moed_err_set(err, MOED_EINVAL, "plan: busy times %g/%g/%g us", x->busy.cpu_us,
                            x->busy.copy_us, x->busy.gpu_us);
    for (int i = 0; i < n; i++) {
        if (ex[i].type < 0 || ex[i].type >= c->ntypes)
            return moed_err_set(err, MOED_EINVAL, "plan: expert %d: type %d (have %d)", ex[i].id,
                                ex[i].type, c->ntypes);
        if (ex[i].n_tok < 0)
            return moed_err_set(err, MOED_EINVAL, "plan: expert %d: %d tokens", ex[i].id,
                                ex[i].n_tok);
        uint64_t b = ex[i].bytes ? ex[i].bytes : c->type[ex[i].type].bytes;
        x->tc[i] = sched_cost_cpu_us(c, ex[i].type, ex[i].n_tok);
        x->tg[i] = sched_cost_gpu_us(c, ex[i].type, ex[i].n_tok);
        x->tl[i] = sched_cost_load_us(c, b);
        if (!ex[i].cached)
            x->jord[x->nu++] = (uint16_t)i;
    }
    johnson_sort(x->tl, x->tg, ex, x->jord, x->nu);
    return 0;
}

/* HybriMoE's HSS greedy with the model's costs (sharing ignored here; the
 * simulator judges the result). */
static void hss(const struct ctx *x, const struct sched_plan_expert *ex, uint8_t *place)
{
    uint16_t q[SCHED_PLAN_MAX];
    int m = 0;
    for (int pass = 0; pass < 2; pass++) {
        int start = m;
        for (int i = 0; i < x->n; i++)
            if (ex[i].cached == (pass == 0))
                q[m++] = (uint16_t)i;
        /* token count descending, ties by id */
        for (int i = start + 1; i < m; i++) {
            uint16_t v = q[i];
            int j = i;
            for (; j > start && (ex[v].n_tok > ex[q[j - 1]].n_tok ||
                                 (ex[v].n_tok == ex[q[j - 1]].n_tok && id_less(ex, v, q[j - 1])));
                 j--)
                q[j] = q[j - 1];
            q[j] = v;
        }
    }
    double gpu_total = x->busy.gpu_us, move_total = x->busy.copy_us, cpu_total = x->busy.cpu_us;
    bool gpu_empty = true, cpu_empty = true;
    int f = 0, b = m - 1;
    while (f <= b) {
        int i = q[f], j = q[b];
        double gf = gpu_total + (gpu_empty ? x->gpu_side : 0), mv = move_total;
        if (!ex[i].cached) {
            mv += x->tl[i];
            gf = fmax(gf, mv);
        }
        gf += x->tg[i];
        double cf = cpu_total + (cpu_empty ? x->cpu_side : 0) + x->tc[j];
        if (gf <= cf) {
            place[i] = gpu_side_place(ex, i);
            gpu_total = gf;
            move_total = mv;
            gpu_empty = false;
            f++;
        } else {
            place[j] = SCHED_PLACE_CPU;
            cpu_total = cf;
            cpu_empty = false;
            b--;
        }
    }
}

static uint8_t flip(const struct sched_plan_expert *ex, int i, uint8_t p)
{
    return p == SCHED_PLACE_CPU ? gpu_side_place(ex, i) : SCHED_PLACE_CPU;
}

/* Best-improvement local search over moves and swaps. */
static double improve(const struct ctx *x, const struct sched_plan_expert *ex, uint8_t *place,
                      double best, int max_iter, bool swaps)
{
    struct ends o;
    int n = x->n;
    for (int iter = 0; iter < max_iter; iter++) {
        double cand = best;
        int bi = -1, bj = -1;
        for (int i = 0; i < n; i++) {
            uint8_t pi = place[i];
            place[i] = flip(ex, i, pi);
            double v = eval(x, place, &o);
            if (v < cand * (1 - 1e-12))
                cand = v, bi = i, bj = -1;
            if (swaps && pi == SCHED_PLACE_CPU) {
                for (int j = 0; j < n; j++) {
                    if (j == i || place[j] == SCHED_PLACE_CPU)
                        continue;
                    uint8_t pj = place[j];
                    place[j] = SCHED_PLACE_CPU;
                    v = eval(x, place, &o);
                    if (v < cand * (1 - 1e-12))
                        cand = v, bi = i, bj = j;
                    place[j] = pj;
                }
            }
            place[i] = pi;
        }
        /* stuck: try two experts moving the same way (crosses a side's
         * intercept that one move alone cannot pay for) */
        bool pair = false;
        for (int i = 0; bi < 0 && swaps && i < n; i++) {
            for (int j = i + 1; j < n; j++) {
                if ((place[i] == SCHED_PLACE_CPU) != (place[j] == SCHED_PLACE_CPU))
                    continue;
                uint8_t pi = place[i], pj = place[j];
                place[i] = flip(ex, i, pi);
                place[j] = flip(ex, j, pj);
                double v = eval(x, place, &o);
                if (v < cand * (1 - 1e-12))
                    cand = v, bi = i, bj = j, pair = true;
                place[i] = pi;
                place[j] = pj;
            }
        }
        if (bi < 0)
            break;
        if (pair) {
            place[bi] = flip(ex, bi, place[bi]);
            place[bj] = flip(ex, bj, place[bj]);
        } else {
            place[bi] = flip(ex, bi, place[bi]);
            if (bj >= 0)
                place[bj] = SCHED_PLACE_CPU;
        }
        best = cand;
    }
    return best;
}

static void fill(struct sched_plan *plan, const struct ends *o)
{
    plan->cpu_end_us = o->cpu;
    plan->copy_end_us = o->copy;
    plan->gpu_end_us = o->gpu;
    plan->makespan_us = o->makespan;
    plan->n_cpu = o->n_cpu;
    plan->n_gpu_cached = o->n_gpu_cached;
    plan->n_load = o->n_load;
}

/* Fill plan from a placement: its Johnson load order and its timeline. */
static void finish(const struct ctx *x, const uint8_t *place, struct sched_plan *plan)
{
    struct ends o;
    memset(plan, 0, sizeof *plan);
    plan->n = x->n;
    memcpy(plan->place, place, (size_t)x->n);
    int nl = 0;
    for (int j = 0; j < x->nu; j++)
        if (plan->place[x->jord[j]] == SCHED_PLACE_LOAD_GPU)
            plan->load_order[nl++] = x->jord[j];
    sim(x, plan->place, plan->load_order, nl, &o);
    fill(plan, &o);
}

static void search(const struct ctx *x, const struct sched_plan_expert *ex, uint8_t *best_place)
{
    int n = x->n;
    uint8_t start[3][SCHED_PLAN_MAX];
    struct ends o;
    hss(x, ex, start[0]);
    for (int i = 0; i < n; i++) {
        start[1][i] = gpu_side_place(ex, i);
        start[2][i] = ex[i].cached ? SCHED_PLACE_GPU_CACHED : SCHED_PLACE_CPU;
    }
    /* local search from every start: the side intercepts make single
     * moves and swaps stall in different places from different starts */
    int bs = 0;
    double best = INFINITY;
    if (n > SCHED_PLAN_BIG) { /* prefill: the best start, a few moves (time-bounded) */
        for (int s = 0; s < 3; s++) {
            double v = eval(x, start[s], &o);
            if (v < best)
                best = v, bs = s;
        }
        improve(x, ex, start[bs], best, SCHED_PLAN_BIG_ITER, false);
    } else {
        for (int s = 0; s < 3; s++) {
            double v = improve(x, ex, start[s], eval(x, start[s], &o), 4 * n + 4,
                               n <= SCHED_PLAN_SWAP_MAX);
            if (v < best)
                best = v, bs = s;
        }
    }
    memcpy(best_place, start[bs], (size_t)n);
}

/* Every placement, up to symmetry: experts with the same type, token
 * count, bytes and cache state cost the same wherever they go, so only how
 * many of such a group run on the CPU matters (a single sequence's decode
 * step, 8 experts of one token, is at most 5 x 5 cases instead of 256).
 * A group's CPU share goes to its first members in input order; the first
 * best count vector in enumeration order wins, so the result is
 * deterministic. */
static void exact(const struct ctx *x, const struct sched_plan_expert *ex, uint8_t *best_place)
{
    int n = x->n, ng = 0;
    int group[SCHED_PLAN_EXACT_MAX], gsize[SCHED_PLAN_EXACT_MAX], cnt[SCHED_PLAN_EXACT_MAX];
    for (int i = 0; i < n; i++) {
        int g = 0;
        for (; g < ng; g++) {
            int r = group[g];
            if (ex[r].type == ex[i].type && ex[r].n_tok == ex[i].n_tok &&
                ex[r].cached == ex[i].cached && x->tl[r] == x->tl[i])
                break;
        }
        if (g == ng) {
            group[ng] = i;
            gsize[ng++] = 0;
        }
        gsize[g]++;
    }
    memset(cnt, 0, sizeof cnt);
    uint8_t place[SCHED_PLAN_EXACT_MAX];
    struct ends o;
    double best = INFINITY;
    for (;;) {
        int left[SCHED_PLAN_EXACT_MAX];
        memcpy(left, cnt, sizeof left);
        for (int i = 0; i < n; i++) {
            int g = 0;
            while (!(ex[group[g]].type == ex[i].type && ex[group[g]].n_tok == ex[i].n_tok &&
                     ex[group[g]].cached == ex[i].cached && x->tl[group[g]] == x->tl[i]))
                g++;
            place[i] = left[g] > 0 ? (left[g]--, SCHED_PLACE_CPU) : gpu_side_place(ex, i);
        }
        double v = eval(x, place, &o);
        if (v < best) {
            best = v;
            memcpy(best_place, place, (size_t)n);
        }
        int g = 0; /* next count vector, mixed radix gsize + 1 */
        while (g < ng && cnt[g] == gsize[g])
            cnt[g++] = 0;
        if (g == ng)
            break;
        cnt[g]++;
    }
}

int sched_plan_layer(const struct sched_cost *c, const struct sched_plan_expert *ex, int n,
                     const struct sched_plan_busy *busy, struct sched_plan *plan,
                     struct moed_err *err)
{
    struct ctx x;
    int rc = setup(&x, c, ex, n, busy, err);
    if (rc)
        return rc;
    uint8_t place[SCHED_PLAN_MAX];
    if (n <= SCHED_PLAN_EXACT_MAX)
        exact(&x, ex, place);
    else
        search(&x, ex, place);
    finish(&x, place, plan);
    return 0;
}

int sched_plan_layer_search(const struct sched_cost *c, const struct sched_plan_expert *ex, int n,
                            const struct sched_plan_busy *busy, struct sched_plan *plan,
                            struct moed_err *err)
{
    struct ctx x;
    int rc = setup(&x, c, ex, n, busy, err);
    if (rc)
        return rc;
    uint8_t place[SCHED_PLAN_MAX];
    search(&x, ex, place);
    finish(&x, place, plan);
    return 0;
}

void sched_plan_order_loads(const struct sched_cost *c, const struct sched_plan_expert *ex,
                            int n, struct sched_plan *plan)
{
    double tl[SCHED_PLAN_MAX], tg[SCHED_PLAN_MAX];
    int nl = 0;
    for (int i = 0; i < n && i < SCHED_PLAN_MAX; i++) {
        uint64_t b = ex[i].bytes ? ex[i].bytes : c->type[ex[i].type].bytes;
        tl[i] = sched_cost_load_us(c, b);
        tg[i] = sched_cost_gpu_us(c, ex[i].type, ex[i].n_tok);
        if (plan->place[i] == SCHED_PLACE_LOAD_GPU)
            plan->load_order[nl++] = (uint16_t)i;
    }
    johnson_sort(tl, tg, ex, plan->load_order, nl);
    plan->n_load = nl;
}

int sched_plan_simulate(const struct sched_cost *c, const struct sched_plan_expert *ex, int n,
                        const struct sched_plan_busy *busy, struct sched_plan *plan,
                        struct moed_err *err)
{
    struct ctx x;
    int rc = setup(&x, c, ex, n, busy, err);
    if (rc)
        return rc;
    int nload = 0;
    for (int i = 0; i < n; i++) {
        uint8_t p = plan->place[i];
        bool ok = p == SCHED_PLACE_CPU || (ex[i].cached ? p == SCHED_PLACE_GPU_CACHED
                                                        : p == SCHED_PLACE_LOAD_GPU);
        if (!ok)
            return moed_err_set(err, MOED_EINVAL, "plan: expert %d (%s) placed '%s'", ex[i].id,
                                ex[i].cached ? "cached" : "not cached", sched_place_name(p));
        nload += p == SCHED_PLACE_LOAD_GPU;
    }
    if (plan->n_load != nload)
        return moed_err_set(err, MOED_EINVAL, "plan: load order has %d entries, %d loads",
                            plan->n_load, nload);
    uint8_t seen[SCHED_PLAN_MAX] = {0};
    for (int k = 0; k < nload; k++) {
        int e = plan->load_order[k];
        if (e >= n || plan->place[e] != SCHED_PLACE_LOAD_GPU || seen[e]++)
            return moed_err_set(err, MOED_EINVAL, "plan: load order entry %d (index %d) is not "
                                "a single LOAD_GPU expert", k, e);
    }
    struct ends o;
    plan->n = n;
    sim(&x, plan->place, plan->load_order, nload, &o);
    fill(plan, &o);
    return 0;
}
