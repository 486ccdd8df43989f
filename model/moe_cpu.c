/*
 * The CPU expert executor (moe.h).
 *
 * One layer of one step, with "rows" the (token, slot) pairs grouped by
 * expert (a counting sort: expert e owns rows start[e] .. start[e+1]-1):
 *
 *   1. gather   xg[r] = quant(x[token(r)])          each token quantized once,
 *                                                   copied to its other rows
 *   2. gate/up  g[r] = W_gate,e xg[r], u[r] = W_up,e xg[r]   one matmul per
 *                                                   active expert over its rows
 *   3. swiglu   hq[r] = quant(silu(g[r]) * u[r])
 *   4. down     y[r] = W_down,e hq[r]
 *   5. combine  out[t] = sum_j weights[t][j] * y[row(t, j)], j in slot order
 *
 * Each step is one run of the thread pool; in 2 and 4 every thread takes
 * its slice of rows of every active expert's matrix (kern_matmul's split),
 * so all threads stream disjoint weight bytes whatever the routing.
 */
#include "model/moe.h"

#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/dot.h"
#include "kernels/cpu/quant.h"
#include "model/ops.h"

struct moe_cpu {
    struct moe_exec ex; /* first: the executor is a struct moe_cpu */
    struct moe_cpu_opts o;
    int32_t cap_expert;     /* size of the per-expert arrays */
    int32_t *start;         /* [cap_expert + 1] first row of each expert */
    int32_t *fill;          /* [cap_expert] rows placed so far (during the sort) */
    int32_t *active;        /* [cap_expert] experts with rows, in expert order */
    struct moe_rows_group *groups; /* [cap_expert] the run's groups */
    int32_t *row_of;        /* [max_rows] row of each (token, slot) */
    struct kern_matmul *mm; /* [2 * cap_expert] */
    void *xg;               /* [max_rows] activation rows for gate/up */
    float *g, *u;           /* [max_rows][n_ff] */
    void *hq;               /* [max_rows] activation rows for down */
    float *y;               /* [max_rows][n_embd] */
};

/* State of one run, shared by the phase functions. */
struct moe_run {
    struct moe_cpu *c;
    const struct moe_work *w;
    const struct moe_experts *x;
    size_t xrs, hrs; /* bytes per row of xg, hq */
    uint32_t xtype, htype;
    int32_t n_active;
    int32_t n_rows;
    const int32_t *row_tok; /* moe_cpu_rows: the token of each row (else NULL) */
    int32_t n_mm; /* matmuls in c->mm for phase_matmuls */
};

static void phase_gather(void *arg, int ith, int nth)
{
    struct moe_run *r = arg;
    const struct moe_work *w = r->w;
    kern_quant_row_fn q = kern_quant_act_get(r->xtype, kern_isa_active());
    int64_t n_embd = r->x->n_embd;
    int32_t t0 = (int32_t)((int64_t)w->n_tok * ith / nth);
    int32_t t1 = (int32_t)((int64_t)w->n_tok * (ith + 1) / nth);
    for (int32_t t = t0; t < t1; t++) {
        const int32_t *rows = r->c->row_of + (size_t)t * w->n_used;
        char *first = (char *)r->c->xg + (size_t)rows[0] * r->xrs;
        q(w->x + (size_t)t * n_embd, first, n_embd);
        for (int32_t j = 1; j < w->n_used; j++)
            memcpy((char *)r->c->xg + (size_t)rows[j] * r->xrs, first, r->xrs);
    }
}

/* moe_cpu_rows: each row quantizes its token's x (a token shared by rows
 * is quantized once per row; the rows API serves the few rows of a split layer). */
static void phase_gather_rows(void *arg, int ith, int nth)
{
    struct moe_run *r = arg;
    kern_quant_row_fn q = kern_quant_act_get(r->xtype, kern_isa_active());
    int64_t n_embd = r->x->n_embd;
    int32_t r0 = (int32_t)((int64_t)r->n_rows * ith / nth);
    int32_t r1 = (int32_t)((int64_t)r->n_rows * (ith + 1) / nth);
    for (int32_t i = r0; i < r1; i++)
        q(r->w->x + (size_t)r->row_tok[i] * n_embd, (char *)r->c->xg + (size_t)i * r->xrs, n_embd);
}

static void phase_matmuls(void *arg, int ith, int nth)
{
    struct moe_run *r = arg;
    for (int32_t i = 0; i < r->n_mm; i++)
        kern_matmul(&r->c->mm[i], ith, nth); /* shapes checked by the loader */
}

static void phase_swiglu(void *arg, int ith, int nth)
{
    struct moe_run *r = arg;
    int64_t rows = r->n_rows, n_ff = r->x->n_ff;
    kern_quant_row_fn q = kern_quant_act_get(r->htype, kern_isa_active());
    for (int64_t i = rows * ith / nth; i < rows * (ith + 1) / nth; i++) {
        float *g = r->c->g + i * n_ff;
        ops_swiglu(g, g, r->c->u + i * n_ff, n_ff);
        q(g, (char *)r->c->hq + (size_t)i * r->hrs, n_ff);
    }
}

static void phase_combine(void *arg, int ith, int nth)
{
    struct moe_run *r = arg;
    const struct moe_work *w = r->w;
    int64_t n = r->x->n_embd;
    /* split the columns, so one token (decode) spreads over all threads */
    int64_t c0 = n * ith / nth, c1 = n * (ith + 1) / nth;
    for (int32_t t = 0; t < w->n_tok; t++) {
        float *o = w->out + (size_t)t * n;
        for (int64_t i = c0; i < c1; i++)
            o[i] = 0;
        for (int32_t j = 0; j < w->n_used; j++) {
            size_t slot = (size_t)t * w->n_used + j;
            const float *y = r->c->y + (size_t)r->c->row_of[slot] * n;
            float wt = w->weights[slot];
            for (int64_t i = c0; i < c1; i++)
                o[i] += wt * y[i];
        }
    }
}

static int grow_experts(struct moe_cpu *c, int32_t n_expert, struct moed_err *e)
{
    if (n_expert <= c->cap_expert)
        return 0;
    int32_t *start = realloc(c->start, sizeof(int32_t) * (size_t)(n_expert + 1));
    if (start)
        c->start = start;
    int32_t *fill = realloc(c->fill, sizeof(int32_t) * (size_t)n_expert);
    if (fill)
        c->fill = fill;
    int32_t *active = realloc(c->active, sizeof(int32_t) * (size_t)n_expert);
    if (active)
        c->active = active;
    struct kern_matmul *mm = realloc(c->mm, sizeof *mm * 2 * (size_t)n_expert);
    if (mm)
        c->mm = mm;
    struct moe_rows_group *groups = realloc(c->groups, sizeof *groups * (size_t)n_expert);
    if (groups)
        c->groups = groups;
    if (!start || !fill || !active || !mm || !groups)
        return moed_err_set(e, MOED_ENOMEM, "moe_cpu: out of memory for %d experts", n_expert);
    c->cap_expert = n_expert;
    return 0;
}

/*
 * Steps 1-4 over groups of rows: gate/up of each group's expert over its
 * rows, SwiGLU, down into y[row] (row stride n_embd).  r->w, r->x, r->n_rows
 * set; r->row_tok selects the per-row gather (else the token gather of
 * moe_cpu_run through c->row_of).
 */
static void phases(struct moe_cpu *c, struct moe_run *r, const struct moe_rows_group *groups,
                   int32_t n_groups, float *y)
{
    const struct moe_experts *x = r->x;
    r->xtype = (uint32_t)kern_vec_dot_type(x->gate.type);
    r->htype = (uint32_t)kern_vec_dot_type(x->down.type);
    r->xrs = kern_row_size(r->xtype, x->n_embd);
    r->hrs = kern_row_size(r->htype, x->n_ff);

    ops_par(c->o.pool, r->row_tok ? phase_gather_rows : phase_gather, r);

    for (int32_t i = 0; i < n_groups; i++) {
        int32_t id = groups[i].expert, r0 = groups[i].first, nt = groups[i].n;
        for (int k = 0; k < 2; k++) {
            const struct moe_mat *m = k ? &x->up : &x->gate;
            c->mm[2 * i + k] = (struct kern_matmul){
                .wtype = m->type,
                .n = x->n_embd,
                .rows = x->n_ff,
                .w = m->data + (size_t)id * m->expert_stride,
                .w_stride = m->row_size,
                .ntok = nt,
                .act = (const char *)c->xg + (size_t)r0 * r->xrs,
                .a_stride = r->xrs,
                .out = (k ? c->u : c->g) + (size_t)r0 * x->n_ff,
                .out_stride = x->n_ff,
            };
        }
    }
    r->n_mm = 2 * n_groups;
    ops_par(c->o.pool, phase_matmuls, r);
    ops_par(c->o.pool, phase_swiglu, r);

    /* down: one matmul per group */
    for (int32_t i = 0; i < n_groups; i++) {
        int32_t id = groups[i].expert, r0 = groups[i].first, nt = groups[i].n;
        c->mm[i] = (struct kern_matmul){
            .wtype = x->down.type,
            .n = x->n_ff,
            .rows = x->n_embd,
            .w = x->down.data + (size_t)id * x->down.expert_stride,
            .w_stride = x->down.row_size,
            .ntok = nt,
            .act = (const char *)c->hq + (size_t)r0 * r->hrs,
            .a_stride = r->hrs,
            .out = y + (size_t)r0 * x->n_embd,
            .out_stride = x->n_embd,
        };
    }
    r->n_mm = n_groups;
    ops_par(c->o.pool, phase_matmuls, r);
}

static int moe_cpu_run(struct moe_exec *ex, const struct moe_work *w, struct moed_err *e)
{
    struct moe_cpu *c = (struct moe_cpu *)ex;
    const struct moe_experts *x = w->experts;
    if (w->n_tok < 0 || w->n_tok > c->o.max_tok || w->n_used != c->o.n_used ||
        x->n_embd > c->o.n_embd || x->n_ff > c->o.n_ff)
        return moed_err_set(e, MOED_EINVAL,
                            "moe_cpu: layer %d: %d tokens x %d experts of %d x %d exceed the "
                            "executor's %d x %d of %d x %d",
                            x->layer, w->n_tok, w->n_used, x->n_embd, x->n_ff, c->o.max_tok,
                            c->o.n_used, c->o.n_embd, c->o.n_ff);
    if (w->n_tok == 0)
        return 0;
    int rc = grow_experts(c, x->n_expert, e);
    if (rc)
        return rc;

    /* group the (token, slot) pairs by expert: counting sort, stable in token order */
    int32_t n_rows = w->n_tok * w->n_used;
    memset(c->fill, 0, sizeof(int32_t) * (size_t)x->n_expert);
    for (int32_t s = 0; s < n_rows; s++) {
        int32_t id = w->ids[s];
        if (id < 0 || id >= x->n_expert)
            return moed_err_set(e, MOED_EINVAL,
                                "moe_cpu: layer %d: token %d routed to expert %d of %d", x->layer,
                                s / w->n_used, id, x->n_expert);
        c->fill[id]++;
    }
    struct moe_run r = {.c = c, .w = w, .x = x};
    c->start[0] = 0;
    for (int32_t id = 0; id < x->n_expert; id++) {
        c->start[id + 1] = c->start[id] + c->fill[id];
        if (c->fill[id])
            c->active[r.n_active++] = id;
        c->fill[id] = 0;
    }
    for (int32_t s = 0; s < n_rows; s++) {
        int32_t id = w->ids[s];
        c->row_of[s] = c->start[id] + c->fill[id]++;
    }

    for (int32_t i = 0; i < r.n_active; i++) {
        int32_t id = c->active[i];
        c->groups[i] = (struct moe_rows_group){
            .expert = id, .first = c->start[id], .n = c->start[id + 1] - c->start[id]};
    }
    r.n_rows = n_rows;
    phases(c, &r, c->groups, r.n_active, c->y);
    ops_par(c->o.pool, phase_combine, &r);
    return 0;
}

int moe_cpu_rows(struct moe_exec *ex, const struct moe_experts *x, const float *xin,
                 int32_t n_tok, const int32_t *row_tok, int32_t n_rows,
                 const struct moe_rows_group *groups, int32_t n_groups, float *y,
                 struct moed_err *e)
{
    struct moe_cpu *c = (struct moe_cpu *)ex;
    if (ex->run != moe_cpu_run)
        return moed_err_set(e, MOED_EINVAL, "moe_cpu_rows: executor '%s' is not the CPU's",
                            ex->name);
    if (n_rows < 0 || n_rows > c->o.max_tok * c->o.n_used || n_tok < 0 ||
        x->n_embd > c->o.n_embd || x->n_ff > c->o.n_ff || n_groups < 0)
        return moed_err_set(e, MOED_EINVAL,
                            "moe_cpu_rows: layer %d: %d rows of %d x %d exceed the executor's "
                            "%d x %d of %d x %d",
                            x->layer, n_rows, x->n_embd, x->n_ff, c->o.max_tok, c->o.n_used,
                            c->o.n_embd, c->o.n_ff);
    if (n_rows == 0)
        return 0;
    int rc = grow_experts(c, n_groups > x->n_expert ? n_groups : x->n_expert, e);
    if (rc)
        return rc;
    int32_t next = 0;
    for (int32_t i = 0; i < n_groups; i++) {
        const struct moe_rows_group *g = &groups[i];
        if (g->expert < 0 || g->expert >= x->n_expert || g->first != next || g->n < 1)
            return moed_err_set(e, MOED_EINVAL,
                                "moe_cpu_rows: layer %d: group %d (expert %d, rows %d+%d) is "
                                "not the next run of rows %d..",
                                x->layer, i, g->expert, g->first, g->n, next);
        next += g->n;
    }
    if (next != n_rows)
        return moed_err_set(e, MOED_EINVAL, "moe_cpu_rows: groups cover %d of %d rows", next,
                            n_rows);
    for (int32_t i = 0; i < n_rows; i++)
        if (row_tok[i] < 0 || row_tok[i] >= n_tok)
            return moed_err_set(e, MOED_EINVAL, "moe_cpu_rows: row %d: token %d of %d", i,
                                row_tok[i], n_tok);
    struct moe_work w = {.experts = x, .n_tok = n_tok, .x = xin};
    struct moe_run r = {.c = c, .w = &w, .x = x, .n_rows = n_rows, .row_tok = row_tok};
    phases(c, &r, groups, n_groups, y);
    return 0;
}

static void moe_cpu_free(struct moe_exec *ex)
{
    struct moe_cpu *c = (struct moe_cpu *)ex;
    free(c->start);
    free(c->fill);
    free(c->active);
    free(c->row_of);
    free(c->mm);
    free(c->groups);
    free(c->xg);
    free(c->g);
    free(c->u);
    free(c->hq);
    free(c->y);
    free(c);
}

int moe_cpu_new(struct moe_exec **out, const struct moe_cpu_opts *o, struct moed_err *e)
{
    *out = NULL;
    if (o->max_tok < 1 || o->n_expert < 0 || o->n_used < 1 || o->n_embd < 1 || o->n_ff < 1 ||
        (int64_t)o->max_tok * o->n_used > INT32_MAX)
        return moed_err_set(e, MOED_EINVAL, "moe_cpu: bad sizes (%d tokens, %d experts, %d, %d)",
                            o->max_tok, o->n_used, o->n_embd, o->n_ff);
    struct moe_cpu *c = calloc(1, sizeof *c);
    if (!c)
        return moed_err_set(e, MOED_ENOMEM, "moe_cpu: out of memory");
    c->ex = (struct moe_exec){.name = "cpu", .run = moe_cpu_run, .free = moe_cpu_free};
    c->o = *o;
    size_t rows = (size_t)o->max_tok * (size_t)o->n_used;
    /* activation rows are at most 4 bytes an element (F32 for F32/F16 weights) */
    c->row_of = malloc(rows * sizeof(int32_t));
    c->xg = malloc(rows * (size_t)o->n_embd * sizeof(float));
    c->g = malloc(rows * (size_t)o->n_ff * sizeof(float));
    c->u = malloc(rows * (size_t)o->n_ff * sizeof(float));
    c->hq = malloc(rows * (size_t)o->n_ff * sizeof(float));
    c->y = malloc(rows * (size_t)o->n_embd * sizeof(float));
    struct moed_err ge;
    if (!c->row_of || !c->xg || !c->g || !c->u || !c->hq || !c->y ||
        (o->n_expert > 0 && grow_experts(c, o->n_expert, &ge))) {
        moe_cpu_free(&c->ex);
        return moed_err_set(e, MOED_ENOMEM, "moe_cpu: out of memory for %zu expert rows", rows);
    }
    *out = &c->ex;
    return 0;
}
