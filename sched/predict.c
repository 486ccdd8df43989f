/* Expert prediction, prefetch scoring and prediction accuracy (predict.h). */
#include "sched/predict.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/quant.h"
#include "kernels/cpu/types.h"
#include "model/ops.h"

struct predictor {
    int32_t n_layer, n_expert, n_embd, k, max_tok;
    float *router; /* [n_layer][n_expert][n_embd] */
    float *probs;  /* [n_expert] scratch */
    float *topv;   /* [k] scratch */
    float *logits; /* [max_tok][n_expert] */
};

/* With routers: dequantized for predict_run; without: predict_from_logits only. */
static int predictor_new(struct predictor **out, const struct model *m, int32_t max_tok,
                         bool routers, struct moed_err *e)
{
    *out = NULL;
    const struct model_hparams *hp = &m->hp;
    if (max_tok < 1 || hp->n_layer < 1 || hp->n_expert < 1 || hp->n_expert_used < 1 ||
        hp->n_expert_used > hp->n_expert || hp->n_embd < 1)
        return moed_err_set(e, MOED_EINVAL, "predict: bad sizes");
    struct predictor *p = calloc(1, sizeof *p);
    if (!p)
        return moed_err_set(e, MOED_ENOMEM, "predict: out of memory");
    p->n_layer = hp->n_layer;
    p->n_expert = hp->n_expert;
    p->n_embd = hp->n_embd;
    p->k = hp->n_expert_used;
    p->max_tok = max_tok;
    size_t per = (size_t)hp->n_expert * (size_t)hp->n_embd;
    p->router = routers ? malloc(sizeof(float) * per * (size_t)hp->n_layer) : NULL;
    p->probs = malloc(sizeof(float) * (size_t)hp->n_expert);
    p->topv = malloc(sizeof(float) * (size_t)p->k);
    p->logits = malloc(sizeof(float) * (size_t)hp->n_expert * (size_t)max_tok);
    if ((routers && !p->router) || !p->probs || !p->topv || !p->logits) {
        predict_free(p);
        return moed_err_set(e, MOED_ENOMEM, "predict: out of memory");
    }
    for (int32_t l = 0; l < hp->n_layer && routers; l++) {
        const struct gguf_tensor *t = m->layers[l].router;
        if (!t || t->ne[0] != hp->n_embd || t->ne[1] != hp->n_expert) {
            predict_free(p);
            return moed_err_set(e, MOED_EINVAL, "predict: layer %d has no router of %d x %d", l,
                                hp->n_embd, hp->n_expert);
        }
        size_t rs = kern_row_size(t->type, hp->n_embd);
        for (int32_t x = 0; x < hp->n_expert; x++) {
            int rc = kern_dequant_row_ref(t->type, (const uint8_t *)t->data + rs * (size_t)x,
                                          p->router + per * (size_t)l + (size_t)x * hp->n_embd,
                                          hp->n_embd);
            if (rs == 0 || rc) {
                predict_free(p);
                return moed_err_set(e, rc ? rc : MOED_EINVAL,
                                    "predict: layer %d router of type %s: cannot dequantize", l,
                                    kern_type_name(t->type));
            }
        }
    }
    *out = p;
    return 0;
}

int predict_new(struct predictor **out, const struct model *m, int32_t max_tok,
                struct moed_err *e)
{
    return predictor_new(out, m, max_tok, true, e);
}

int predict_new_logits(struct predictor **out, const struct model *m, int32_t max_tok,
                       struct moed_err *e)
{
    return predictor_new(out, m, max_tok, false, e);
}

void predict_free(struct predictor *p)
{
    if (!p)
        return;
    free(p->router);
    free(p->probs);
    free(p->topv);
    free(p->logits);
    free(p);
}

int predict_result_alloc(const struct predictor *p, struct predict_result *r, struct moed_err *e)
{
    memset(r, 0, sizeof *r);
    r->layer = -1;
    r->k = p->k;
    r->n_expert = p->n_expert;
    r->ids = malloc(sizeof(int32_t) * (size_t)p->max_tok * (size_t)p->k);
    r->tokens = malloc(sizeof(float) * (size_t)p->n_expert);
    r->mass = malloc(sizeof(float) * (size_t)p->n_expert);
    r->p_used = malloc(sizeof(float) * (size_t)p->n_expert);
    if (!r->ids || !r->tokens || !r->mass || !r->p_used) {
        predict_result_free(r);
        return moed_err_set(e, MOED_ENOMEM, "predict: out of memory");
    }
    return 0;
}

void predict_result_free(struct predict_result *r)
{
    free(r->ids);
    free(r->tokens);
    free(r->mass);
    free(r->p_used);
    memset(r, 0, sizeof *r);
    r->layer = -1;
}

/* Softmax and top-k of each token's logits ([n_tok][n_expert]) into r. */
static void from_logits(struct predictor *p, int32_t layer, const float *logits, int32_t n_tok,
                        struct predict_result *r)
{
    int32_t E = p->n_expert, k = p->k;
    for (int32_t i = 0; i < E; i++) {
        r->tokens[i] = 0;
        r->mass[i] = 0;
        r->p_used[i] = 1; /* prod_t (1 - q_t(e)) until the end */
    }
    for (int32_t t = 0; t < n_tok; t++) {
        memcpy(p->probs, logits + (size_t)t * E, sizeof(float) * (size_t)E);
        ops_softmax(p->probs, E);
        int32_t *ids = r->ids + (size_t)t * k;
        ops_topk(p->probs, E, k, ids, p->topv);
        for (int32_t j = 0; j < k; j++)
            r->tokens[ids[j]] += 1;
        for (int32_t i = 0; i < E; i++) {
            float q = (float)k * p->probs[i];
            r->mass[i] += p->probs[i];
            r->p_used[i] *= 1 - (q < 1 ? q : 1);
        }
    }
    for (int32_t i = 0; i < E; i++)
        r->p_used[i] = 1 - r->p_used[i];
    r->layer = layer;
    r->n_tok = n_tok;
}

static int check_args(const struct predictor *p, int32_t layer, int32_t n_tok,
                      const struct predict_result *r, struct moed_err *e)
{
    if (layer < 0 || layer >= p->n_layer || n_tok < 1 || n_tok > p->max_tok ||
        r->n_expert != p->n_expert || r->k != p->k)
        return moed_err_set(e, MOED_EINVAL, "predict: layer %d, %d tokens (of %d layers, max %d)",
                            layer, n_tok, p->n_layer, p->max_tok);
    return 0;
}

int predict_run(struct predictor *p, int32_t layer, const float *x, int32_t n_tok,
                struct predict_result *r, struct moed_err *e)
{
    int rc = check_args(p, layer, n_tok, r, e);
    if (rc)
        return rc;
    if (!p->router)
        return moed_err_set(e, MOED_EINVAL, "predict: made without routers (logits only)");
    int32_t E = p->n_expert, d = p->n_embd;
    const float *W = p->router + (size_t)layer * (size_t)E * (size_t)d;
    for (int32_t t = 0; t < n_tok; t++)
        for (int32_t i = 0; i < E; i++) {
            const float *w = W + (size_t)i * d, *h = x + (size_t)t * d;
            float sum = 0;
            for (int32_t c = 0; c < d; c++)
                sum += w[c] * h[c];
            p->logits[(size_t)t * E + i] = sum;
        }
    from_logits(p, layer, p->logits, n_tok, r);
    return 0;
}

int predict_from_logits(struct predictor *p, int32_t layer, const float *logits, int32_t n_tok,
                        struct predict_result *r, struct moed_err *e)
{
    int rc = check_args(p, layer, n_tok, r, e);
    if (rc)
        return rc;
    from_logits(p, layer, logits, n_tok, r);
    return 0;
}

/* ---- scoring ---------------------------------------------------------------- */

struct cand {
    int32_t expert;
    double saved, load, ratio;
};

static int cand_cmp(const void *a, const void *b)
{
    const struct cand *x = a, *y = b;
    if (x->ratio != y->ratio)
        return x->ratio > y->ratio ? -1 : 1;
    if (x->saved != y->saved)
        return x->saved > y->saved ? -1 : 1;
    return (x->expert > y->expert) - (x->expert < y->expert);
}

int predict_score(const struct predict_score_in *in, struct predict_pick *out,
                  struct moed_err *e)
{
    const struct sched_cost *c = in->cost;
    if (!c || in->type < 0 || in->type >= c->ntypes || in->n_expert < 0 || !in->p_used ||
        !in->tokens || !(in->budget_us >= 0))
        return moed_err_set(e, MOED_EINVAL, "predict: bad scoring input");
    if (in->n_expert == 0)
        return 0;
    struct cand *v = malloc(sizeof *v * (size_t)in->n_expert);
    if (!v)
        return moed_err_set(e, MOED_ENOMEM, "predict: out of memory");
    double load = sched_cost_load_us(c, c->type[in->type].bytes);
    int n = 0;
    for (int32_t i = 0; i < in->n_expert; i++) {
        if (in->cached && in->cached[i])
            continue;
        float pu = in->p_used[i];
        if (!(pu > 0))
            continue;
        if (pu > 1)
            pu = 1;
        double tk = ceil((double)in->tokens[i]);
        int ntok = tk < 1 ? 1 : tk > INT32_MAX ? INT32_MAX : (int)tk;
        double saved = pu * (sched_cost_cpu_us(c, in->type, ntok) -
                             sched_cost_gpu_us(c, in->type, ntok));
        if (!(saved > 0))
            continue;
        v[n++] = (struct cand){i, saved, load, load > 0 ? saved / load : INFINITY};
    }
    qsort(v, (size_t)n, sizeof *v, cand_cmp);
    int np = 0;
    double used = 0;
    for (int i = 0; i < n; i++) {
        if (used + v[i].load > in->budget_us)
            continue;
        used += v[i].load;
        out[np++] = (struct predict_pick){v[i].expert, v[i].saved, v[i].load};
    }
    free(v);
    return np;
}

/* ---- accuracy --------------------------------------------------------------- */

struct predict_stats {
    struct moe_exec ex; /* first: the executor is a struct predict_stats */
    struct moe_exec *inner;
    bool own_inner;
    struct predictor *pred;
    int32_t n_layer, n_expert, k, ahead;
    int32_t last_layer; /* in this step, -1: none */
    /* pending[d - 1][layer]: prediction of `layer` made d layers earlier in
     * this step (r.layer == -1: none) */
    struct predict_result *pending;
    struct predict_acc *acc; /* [ahead][n_layer] */
    uint64_t *freq;          /* [n_layer][n_expert]: actual uses so far */
    int32_t *freq_top;       /* [k] scratch */
    float *freq_val;         /* [n_expert] scratch */
    float *topv;             /* [k] scratch */
};

static struct predict_result *pending(struct predict_stats *s, int32_t d, int32_t layer)
{
    return &s->pending[(size_t)(d - 1) * (size_t)s->n_layer + (size_t)layer];
}

/* |a ∩ b| for two sets of k ids */
static int32_t overlap(const int32_t *a, const int32_t *b, int32_t k)
{
    int32_t n = 0;
    for (int32_t i = 0; i < k; i++)
        for (int32_t j = 0; j < k; j++)
            if (a[i] == b[j]) {
                n++;
                break;
            }
    return n;
}

static int stats_run(struct moe_exec *ex, const struct moe_work *w, struct moed_err *e)
{
    struct predict_stats *s = (struct predict_stats *)ex;
    int32_t layer = w->experts ? w->experts->layer : -1;
    if (layer < 0 || layer >= s->n_layer || w->n_used != s->k)
        return moed_err_set(e, MOED_EINVAL, "predict stats: layer %d with %d experts per token",
                            layer, w->n_used);
    if (layer <= s->last_layer) /* a new step: forget the last one's predictions */
        for (int32_t i = 0; i < s->ahead * s->n_layer; i++)
            s->pending[i].layer = -1;
    s->last_layer = layer;
    int32_t k = s->k, E = s->n_expert;
    uint64_t *fq = s->freq + (size_t)layer * (size_t)E;

    /* the baseline: the k experts most used so far in this layer */
    for (int32_t i = 0; i < E; i++)
        s->freq_val[i] = (float)fq[i];
    ops_topk(s->freq_val, E, k, s->freq_top, s->topv);

    for (int32_t d = 1; d <= s->ahead; d++) {
        struct predict_result *r = pending(s, d, layer);
        if (r->layer != layer || r->n_tok != w->n_tok)
            continue;
        struct predict_acc *a = &s->acc[(size_t)(d - 1) * (size_t)s->n_layer + (size_t)layer];
        for (int32_t t = 0; t < w->n_tok; t++) {
            const int32_t *act = w->ids + (size_t)t * k;
            a->tokens++;
            a->hits += (uint64_t)overlap(r->ids + (size_t)t * k, act, k);
            a->freq_hits += (uint64_t)overlap(s->freq_top, act, k);
        }
        r->layer = -1;
    }
    for (int32_t t = 0; t < w->n_tok; t++)
        for (int32_t j = 0; j < k; j++) {
            int32_t id = w->ids[(size_t)t * k + j];
            if (id >= 0 && id < E)
                fq[id]++;
        }

    /* predict the next layers from this layer's rows (n_tok fits: checked) */
    for (int32_t d = 1; d <= s->ahead && layer + d < s->n_layer; d++)
        if (w->n_tok <= s->pred->max_tok &&
            predict_run(s->pred, layer + d, w->x, w->n_tok, pending(s, d, layer + d), NULL))
            pending(s, d, layer + d)->layer = -1;
    return moe_exec_run(s->inner, w, e);
}

static void stats_free_exec(struct moe_exec *ex) { predict_stats_close((struct predict_stats *)ex); }

int predict_stats_open(struct predict_stats **out, const struct predict_stats_opts *o,
                       struct moed_err *e)
{
    *out = NULL;
    if (!o->inner || !o->m || o->ahead < 1 || o->ahead > PREDICT_MAX_AHEAD)
        return moed_err_set(e, MOED_EINVAL, "predict stats: no executor, no model or bad ahead");
    struct predict_stats *s = calloc(1, sizeof *s);
    if (!s)
        return moed_err_set(e, MOED_ENOMEM, "predict stats: out of memory");
    s->ex = (struct moe_exec){.name = "predict-stats", .run = stats_run, .free = stats_free_exec};
    int rc = predict_new(&s->pred, o->m, o->max_tok, e);
    if (rc) {
        free(s);
        return rc;
    }
    s->n_layer = o->m->hp.n_layer;
    s->n_expert = o->m->hp.n_expert;
    s->k = o->m->hp.n_expert_used;
    s->ahead = o->ahead;
    s->last_layer = -1;
    size_t np = (size_t)s->ahead * (size_t)s->n_layer;
    s->pending = calloc(np, sizeof *s->pending);
    s->acc = calloc(np, sizeof *s->acc);
    s->freq = calloc((size_t)s->n_layer * (size_t)s->n_expert, sizeof *s->freq);
    s->freq_top = malloc(sizeof(int32_t) * (size_t)s->k);
    s->freq_val = malloc(sizeof(float) * (size_t)s->n_expert);
    s->topv = malloc(sizeof(float) * (size_t)s->k);
    if (!s->pending || !s->acc || !s->freq || !s->freq_top || !s->freq_val || !s->topv) {
        predict_stats_close(s);
        return moed_err_set(e, MOED_ENOMEM, "predict stats: out of memory");
    }
    for (size_t i = 0; i < np; i++) {
        rc = predict_result_alloc(s->pred, &s->pending[i], e);
        if (rc) {
            predict_stats_close(s);
            return rc;
        }
    }
    s->inner = o->inner;
    s->own_inner = o->own_inner;
    *out = s;
    return 0;
}

struct moe_exec *predict_stats_exec(struct predict_stats *s) { return &s->ex; }

struct predict_acc predict_stats_get(const struct predict_stats *s, int32_t d, int32_t layer)
{
    struct predict_acc sum = {0};
    if (d < 1 || d > s->ahead || layer >= s->n_layer)
        return sum;
    for (int32_t l = 0; l < s->n_layer; l++) {
        if (layer >= 0 && l != layer)
            continue;
        const struct predict_acc *a = &s->acc[(size_t)(d - 1) * (size_t)s->n_layer + (size_t)l];
        sum.tokens += a->tokens;
        sum.hits += a->hits;
        sum.freq_hits += a->freq_hits;
    }
    return sum;
}

double predict_acc_rate(const struct predict_acc *a, int32_t k)
{
    return a->tokens && k > 0 ? (double)a->hits / ((double)a->tokens * k) : 0;
}

double predict_acc_freq_rate(const struct predict_acc *a, int32_t k)
{
    return a->tokens && k > 0 ? (double)a->freq_hits / ((double)a->tokens * k) : 0;
}

void predict_stats_print(const struct predict_stats *s, FILE *f, const char *prefix)
{
    for (int32_t d = 1; d <= s->ahead; d++) {
        for (int32_t l = 0; l < s->n_layer; l++) {
            struct predict_acc a = predict_stats_get(s, d, l);
            if (!a.tokens)
                continue;
            fprintf(f, "%s+%d layer %d: router %.3f, frequency %.3f (%llu tokens)\n", prefix, d, l,
                    predict_acc_rate(&a, s->k), predict_acc_freq_rate(&a, s->k),
                    (unsigned long long)a.tokens);
        }
        struct predict_acc a = predict_stats_get(s, d, -1);
        fprintf(f,
                "%s+%d overall: router %.3f, frequency %.3f, chance %.3f (%llu token-layers, "
                "top-%d of %d)\n",
                prefix, d, predict_acc_rate(&a, s->k), predict_acc_freq_rate(&a, s->k),
                (double)s->k / s->n_expert, (unsigned long long)a.tokens, s->k, s->n_expert);
    }
}

void predict_stats_close(struct predict_stats *s)
{
    if (!s)
        return;
    if (s->pending)
        for (size_t i = 0; i < (size_t)s->ahead * (size_t)s->n_layer; i++)
            predict_result_free(&s->pending[i]);
    free(s->pending);
    free(s->acc);
    free(s->freq);
    free(s->freq_top);
    free(s->freq_val);
    free(s->topv);
    predict_free(s->pred);
    if (s->own_inner)
        moe_exec_free(s->inner);
    free(s);
}
