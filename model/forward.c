/*
 * The forward pass of the MoE transformers of model.h, one step over a
 * batch (forward.h).  For each token t of the step, with x its residual
 * stream:
 *
 *   x = token_embd[token]
 *   for each layer:
 *       h = rmsnorm(x) * attn_norm
 *       q, k, v = Wq h (+bq), Wk h (+bk), Wv h (+bv)
 *       q, k = qk_norm(q), qk_norm(k)                    qwen3moe, olmoe
 *       q, k = rope(q, pos), rope(k, pos)                NEOX or normal
 *       cache[seq][layer][pos] = k, v
 *       x += Wo concat_h softmax(q_h . K_kvh / sqrt(hd)) V_kvh   (GQA, causal)
 *       h = rmsnorm(x) * ffn_norm
 *       p = softmax(W_router h); (e_j, w_j) = top_k(p); w /= sum w if norm_topk
 *       x += sum_j w_j expert_e_j(h)                     the expert executor
 *          + sigmoid(g_sh . h) ffn_sh(h)                 qwen2moe
 *   logits = W_out (rmsnorm(x) * output_norm)            flagged tokens only
 *
 * Each line operates on all the step's tokens at once: the matrix products
 * are kern_matmul over the batch (weights read once per step), attention is
 * split over (token, KV head) items across the pool's threads (kernels/cpu/attn.h).
 */
#include "model/forward.h"

#include <assert.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/cpu/dot.h"
#include "kernels/cpu/quant.h"
#include "model/fwd_gpu.h"
#include "model/ops.h"
#include "sched/hybrid.h"

struct fwd {
    const struct model *m;
    struct fwd_gpu *gpu; /* set: every step runs there (fwd_gpu.h) */
    struct sched_pool *pool;
    struct moe_exec *exec;
    bool owns_exec;
    int32_t max_batch;
    struct moe_experts *experts; /* [n_layer] */

    /* activations, max_batch rows each */
    float *x;           /* residual stream [n_embd] */
    float *h;           /* normalised input of a sub-layer [n_embd] */
    float *q;           /* [n_head * hd] */
    float *k, *v;       /* [n_head_kv * hd] */
    float *att;         /* attention output, heads concatenated [n_head * hd] */
    float *y;           /* sub-layer output [n_embd] */
    float *y2;          /* shared expert output [n_embd] */
    float *sh_g, *sh_u; /* shared expert hidden [n_ff_shexp] */
    float *probs;       /* router probabilities [n_expert] */
    int32_t *ids;       /* chosen experts [n_used] */
    float *wts;         /* their weights [n_used] */
    void *qbuf;         /* activations quantized for a matmul */
    size_t qbuf_row;    /* bytes reserved per row of qbuf */
    int32_t *out_tok;   /* tokens that want logits */
    int32_t *seq_list;  /* validation scratch: sequences seen in the step */
    int32_t *seq_next;  /* ... and the position each expects next */
    int32_t n_seq_step; /* sequences in the step check_batch passed */
    struct fwd_stats stats;
    double t_lap; /* time of the last phase boundary */
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* The time since the last lap goes to phase ph. */
static void lap(struct fwd *f, enum fwd_phase ph)
{
    double t = now_s();
    f->stats.seconds[ph] += t - f->t_lap;
    f->t_lap = t;
}

/* ---- building blocks ------------------------------------------------------- */

struct lin {
    const struct gguf_tensor *w; /* {n, rows} */
    float *out;                  /* [n_tok][rows] */
};

/*
 * out = W x for each of n_lin matrices over n_tok rows of x (all of width
 * W->ne[0]): x is quantized once per activation type (F32 and F16 weights
 * take x as it is) and the products of one type run in one pool run.
 */
static void linear(struct fwd *f, const float *x, int32_t n_tok, const struct lin *l, int n_lin)
{
    int64_t n = l[0].w->ne[0];
    assert(n_lin <= 8);
    bool done[8] = {false};
    struct kern_matmul mm[8];
    for (int i = 0; i < n_lin; i++) {
        if (done[i])
            continue;
        uint32_t atype = (uint32_t)kern_vec_dot_type(l[i].w->type);
        const void *act = x;
        size_t as = (size_t)n * sizeof(float);
        if (atype != KT_F32) {
            as = kern_row_size(atype, n);
            ops_quant_rows(f->pool, atype, x, (size_t)n * sizeof(float), f->qbuf, as, n, n_tok);
            act = f->qbuf;
        }
        int n_mm = 0;
        for (int j = i; j < n_lin; j++) {
            if (done[j] || (uint32_t)kern_vec_dot_type(l[j].w->type) != atype)
                continue;
            done[j] = true;
            mm[n_mm++] = (struct kern_matmul){.wtype = l[j].w->type,
                                              .n = n,
                                              .rows = l[j].w->ne[1],
                                              .w = l[j].w->data,
                                              .ntok = n_tok,
                                              .act = act,
                                              .a_stride = as,
                                              .out = l[j].out};
        }
        int rc = ops_matmuls(f->pool, mm, n_mm);
        assert(rc == 0); /* shapes and types were checked by the loader */
        (void)rc;
    }
}

static void add_bias(float *x, const struct gguf_tensor *b, int32_t n_tok)
{
    if (!b)
        return;
    int64_t n = b->ne[0];
    const float *bv = b->data;
    for (int32_t t = 0; t < n_tok; t++)
        for (int64_t i = 0; i < n; i++)
            x[(size_t)t * n + i] += bv[i];
}

static void rmsnorm_rows(float *out, const float *x, const struct gguf_tensor *w, int32_t n_tok,
                         int64_t n, float eps)
{
    for (int32_t t = 0; t < n_tok; t++)
        ops_rmsnorm(out + (size_t)t * n, x + (size_t)t * n, w->data, n, eps);
}

/* ---- attention -------------------------------------------------------------- */

struct attn_job {
    struct fwd *f;
    const struct fwd_batch *b;
    struct kv_seq *const *seqs;
    int32_t il;
};

static void attn_fn(void *arg, int ith, int nth)
{
    struct attn_job *j = arg;
    const struct model_hparams *hp = &j->f->m->hp;
    int32_t hd = hp->head_dim, group = hp->n_head / hp->n_head_kv;
    float scale = 1.0f / sqrtf((float)hd);
    /* items are (token, KV head, slice of its query heads): a whole group
     * reads each K and V row once, so a group is split only when there are
     * fewer (token, KV head) pairs than threads (decode): into the fewest
     * equal slices that give every thread an item.  Each head's result does
     * not depend on the slicing. */
    int64_t n_pairs = (int64_t)j->b->n * hp->n_head_kv;
    int32_t n_slice = 1;
    for (int32_t c = 1; c <= group; c++) {
        if (group % c)
            continue;
        n_slice = c;
        if (n_pairs * c >= nth)
            break;
    }
    int32_t per = group / n_slice;
    int64_t n_items = n_pairs * n_slice;
    /* items round-robin: with causal attention later tokens cost more, and
     * contiguous ranges would leave the last thread with most of the work */
    for (int64_t it = ith; it < n_items; it += nth) {
        int32_t sl = (int32_t)(it % n_slice);
        int64_t pair = it / n_slice;
        int32_t t = (int32_t)(pair / hp->n_head_kv), g = (int32_t)(pair % hp->n_head_kv);
        int32_t h = g * group + sl * per; /* first query head of the item */
        const struct kv_seq *kv = j->seqs[j->b->seq[t]];
        size_t off = (size_t)g * hd * kv_elem_size(kv); /* this KV head */
        size_t qo = ((size_t)t * hp->n_head + h) * hd;
        ops_attn_group(j->f->att + qo, j->f->q + qo, per, (const char *)kv_k(kv, j->il, 0) + off,
                       (const char *)kv_v(kv, j->il, 0) + off, kv->type, (size_t)kv->n_kv,
                       j->b->pos[t] + 1, hd, scale);
    }
}

/* x += attention(rmsnorm(x)) for layer il. */
static void attention(struct fwd *f, int32_t il, const struct fwd_batch *b,
                      struct kv_seq *const *seqs)
{
    const struct model_hparams *hp = &f->m->hp;
    const struct model_layer *L = &f->m->layers[il];
    int32_t n = b->n, hd = hp->head_dim;
    int64_t qd = (int64_t)hp->n_head * hd, kvd = (int64_t)hp->n_head_kv * hd;

    rmsnorm_rows(f->h, f->x, L->attn_norm, n, hp->n_embd, hp->rms_eps);
    struct lin qkv[] = {{L->wq, f->q}, {L->wk, f->k}, {L->wv, f->v}};
    linear(f, f->h, n, qkv, 3);
    add_bias(f->q, L->bq, n);
    add_bias(f->k, L->bk, n);
    add_bias(f->v, L->bv, n);
    lap(f, FWD_PH_ATTN_PROJ);

    for (int32_t t = 0; t < n; t++) {
        float *q = f->q + (size_t)t * qd, *k = f->k + (size_t)t * kvd;
        if (hp->qk_norm == MODEL_QK_NORM_HEAD) { /* qwen3moe: each head on its own */
            for (int32_t h = 0; h < hp->n_head; h++)
                ops_rmsnorm(q + (size_t)h * hd, q + (size_t)h * hd, L->q_norm->data, hd,
                            hp->rms_eps);
            for (int32_t h = 0; h < hp->n_head_kv; h++)
                ops_rmsnorm(k + (size_t)h * hd, k + (size_t)h * hd, L->k_norm->data, hd,
                            hp->rms_eps);
        } else if (hp->qk_norm == MODEL_QK_NORM_FULL) { /* olmoe: all heads together */
            ops_rmsnorm(q, q, L->q_norm->data, qd, hp->rms_eps);
            ops_rmsnorm(k, k, L->k_norm->data, kvd, hp->rms_eps);
        }
        ops_rope(q, hp->n_head, hd, hp->n_rot, b->pos[t], hp->rope_base, hp->rope_scale,
                 hp->rope_neox);
        ops_rope(k, hp->n_head_kv, hd, hp->n_rot, b->pos[t], hp->rope_base, hp->rope_scale,
                 hp->rope_neox);
        kv_put(seqs[b->seq[t]], il, b->pos[t], k, f->v + (size_t)t * kvd);
    }

    /* every token's K and V are in the caches: now each query attends */
    struct attn_job job = {f, b, seqs, il};
    ops_par(f->pool, attn_fn, &job);
    lap(f, FWD_PH_ATTN);

    struct lin o = {L->wo, f->y};
    linear(f, f->att, n, &o, 1);
    lap(f, FWD_PH_ATTN_PROJ);
    for (int64_t i = 0; i < (int64_t)n * hp->n_embd; i++)
        f->x[i] += f->y[i];
    lap(f, FWD_PH_ATTN);
}

/* ---- mixture of experts ----------------------------------------------------- */

/* x += moe(rmsnorm(x)) for layer il. */
static int moe(struct fwd *f, int32_t il, int32_t n, struct moed_err *e)
{
    const struct model_hparams *hp = &f->m->hp;
    const struct model_layer *L = &f->m->layers[il];
    int32_t d = hp->n_embd, k = hp->n_expert_used;

    rmsnorm_rows(f->h, f->x, L->ffn_norm, n, d, hp->rms_eps);

    /* routing: softmax over all experts, the top k, optionally renormalised */
    struct lin r = {L->router, f->probs};
    linear(f, f->h, n, &r, 1);
    for (int32_t t = 0; t < n; t++) {
        float *p = f->probs + (size_t)t * hp->n_expert;
        int32_t *ids = f->ids + (size_t)t * k;
        float *w = f->wts + (size_t)t * k;
        ops_softmax(p, hp->n_expert);
        ops_topk(p, hp->n_expert, k, ids, w);
        if (hp->norm_topk) {
            float sum = 0;
            for (int32_t j = 0; j < k; j++)
                sum += w[j];
            for (int32_t j = 0; j < k; j++)
                w[j] /= sum;
        }
    }
    lap(f, FWD_PH_ROUTER);

    struct moe_work work = {.experts = &f->experts[il],
                            .n_tok = n,
                            .n_used = k,
                            .x = f->h,
                            .ids = f->ids,
                            .weights = f->wts,
                            .out = f->y};
    int rc = moe_exec_run(f->exec, &work, e);
    if (rc)
        return rc;
    lap(f, FWD_PH_EXPERTS);

    if (L->gate_inp_shexp) { /* qwen2moe: y += sigmoid(g . h) * down(silu(gate h) * up h) */
        int64_t sf = hp->n_ff_shexp;
        struct lin gu[] = {{L->gate_shexp, f->sh_g}, {L->up_shexp, f->sh_u}};
        linear(f, f->h, n, gu, 2);
        ops_swiglu(f->sh_g, f->sh_g, f->sh_u, (int64_t)n * sf);
        struct lin dn = {L->down_shexp, f->y2};
        linear(f, f->sh_g, n, &dn, 1);
        const float *g = L->gate_inp_shexp->data;
        for (int32_t t = 0; t < n; t++) {
            const float *h = f->h + (size_t)t * d;
            float s = 0;
            for (int32_t i = 0; i < d; i++)
                s += g[i] * h[i];
            float gate = 1.0f / (1.0f + expf(-s));
            for (int32_t i = 0; i < d; i++)
                f->y[(size_t)t * d + i] += gate * f->y2[(size_t)t * d + i];
        }
    }

    for (int64_t i = 0; i < (int64_t)n * d; i++)
        f->x[i] += f->y[i];
    lap(f, FWD_PH_SHARED);
    return 0;
}

/* ---- the step --------------------------------------------------------------- */

/* Everything fwd_step promises to check before it changes anything. */
static int check_batch(struct fwd *f, const struct fwd_batch *b, struct kv_seq *const *seqs,
                       int32_t n_seqs, struct moed_err *e)
{
    if (b->n < 1 || b->n > f->max_batch)
        return moed_err_set(e, MOED_EINVAL, "batch of %d tokens (1..%d)", b->n, f->max_batch);
    int32_t n_list = 0;
    for (int32_t t = 0; t < b->n; t++) {
        int32_t tok = b->token[t], s = b->seq[t], pos = b->pos[t];
        if (tok < 0 || tok >= f->m->hp.n_vocab)
            return moed_err_set(e, MOED_EINVAL, "batch token %d: id %d is not in 0..%d", t, tok,
                                f->m->hp.n_vocab - 1);
        if (s < 0 || s >= n_seqs || !seqs[s])
            return moed_err_set(e, MOED_EINVAL, "batch token %d: sequence %d is not in 0..%d", t, s,
                                n_seqs - 1);
        const struct kv_seq *kv = seqs[s];
        if (kv->dev != (f->gpu != NULL))
            return moed_err_set(e, MOED_EINVAL,
                                "sequence %d: KV cache in %s memory, but this forward pass runs "
                                "on the %s",
                                s, kv->dev ? "GPU" : "host", f->gpu ? "GPU" : "CPU");
        if (kv->n_layer != f->m->hp.n_layer || kv->n_kv != f->m->hp.n_head_kv * f->m->hp.head_dim)
            return moed_err_set(e, MOED_EINVAL, "sequence %d: KV cache made for another model", s);
        int32_t li = 0;
        while (li < n_list && f->seq_list[li] != s)
            li++;
        int32_t want_lo = 0, want_hi = kv->n; /* first token of s: any position <= n */
        if (li < n_list)
            want_lo = want_hi = f->seq_next[li];
        if (pos < want_lo || pos > want_hi)
            return moed_err_set(e, MOED_EINVAL,
                                "batch token %d: position %d of sequence %d, expected %s%d", t, pos,
                                s, want_lo == want_hi ? "" : "at most ", want_hi);
        if (pos >= kv->n_ctx)
            return moed_err_set(e, MOED_ERANGE,
                                "KV cache full: sequence %d holds %d positions, position %d "
                                "does not fit",
                                s, kv->n_ctx, pos);
        if (li == n_list)
            f->seq_list[n_list++] = s;
        f->seq_next[li] = pos + 1;
    }
    f->n_seq_step = n_list;
    return 0;
}

int fwd_step(struct fwd *f, const struct fwd_batch *b, struct kv_seq *const *seqs, int32_t n_seqs,
             float *logits, struct moed_err *e)
{
    const struct model *m = f->m;
    const struct model_hparams *hp = &m->hp;
    f->t_lap = now_s();
    int rc = check_batch(f, b, seqs, n_seqs, e);
    if (rc)
        return rc;
    f->stats.steps++;
    f->stats.tokens += b->n;
    int32_t n = b->n, d = hp->n_embd;
    if (f->gpu) {
        if ((rc = fwd_gpu_step(f->gpu, b, seqs, f->n_seq_step == n, logits, e)))
            return rc;
        for (int32_t t = 0; t < n; t++)
            seqs[b->seq[t]]->n = b->pos[t] + 1;
        lap(f, FWD_PH_EXPERTS); /* the GPU step is not split into phases */
        return 0;
    }

    size_t erow = kern_row_size(m->tok_embd->type, d);
    for (int32_t t = 0; t < n; t++)
        kern_dequant_row_ref(m->tok_embd->type,
                             (const char *)m->tok_embd->data + erow * b->token[t],
                             f->x + (size_t)t * d, d);
    lap(f, FWD_PH_EMBED);

    for (int32_t il = 0; il < hp->n_layer; il++) {
        attention(f, il, b, seqs);
        if ((rc = moe(f, il, n, e)))
            return moed_err_wrap(e, "layer %d", il);
    }
    for (int32_t t = 0; t < n; t++)
        seqs[b->seq[t]]->n = b->pos[t] + 1; /* the last token of each sequence wins */

    int32_t n_out = 0;
    for (int32_t t = 0; t < n; t++)
        if (b->logits && b->logits[t])
            f->out_tok[n_out++] = t;
    if (!n_out)
        return 0;
    for (int32_t i = 0; i < n_out; i++)
        ops_rmsnorm(f->h + (size_t)i * d, f->x + (size_t)f->out_tok[i] * d, m->output_norm->data, d,
                    hp->rms_eps);
    struct lin out = {m->output, logits};
    linear(f, f->h, n_out, &out, 1);
    lap(f, FWD_PH_OUTPUT);
    return 0;
}

bool fwd_on_gpu(const struct fwd *f)
{
    return f->gpu != NULL;
}

struct hybrid *fwd_hybrid(const struct fwd *f)
{
    return f->gpu ? fwd_gpu_hybrid(f->gpu) : NULL;
}

int fwd_kv_init(const struct fwd *f, struct kv_seq *kv, int32_t n_ctx, uint32_t type,
                struct moed_err *e)
{
    return f->gpu ? kv_seq_init_dev(kv, f->m, n_ctx, type, e) : kv_seq_init(kv, f->m, n_ctx, type, e);
}

void fwd_stats_get(const struct fwd *f, struct fwd_stats *out)
{
    *out = f->stats;
}

void fwd_stats_reset(struct fwd *f)
{
    memset(&f->stats, 0, sizeof f->stats);
}

const char *fwd_phase_name(enum fwd_phase ph)
{
    static const char *const names[FWD_PH_COUNT] = {"embed",   "attn_proj", "attention", "router",
                                                    "experts", "shared",    "output"};
    return (unsigned)ph < FWD_PH_COUNT ? names[ph] : "?";
}

/* ---- set-up ----------------------------------------------------------------- */

static struct moe_mat moe_mat_of(const struct gguf_tensor *t)
{
    size_t rs = kern_row_size(t->type, t->ne[0]);
    return (struct moe_mat){t->type, t->data, rs, rs * (size_t)t->ne[1]};
}

void moe_experts_of_layer(const struct model *m, int32_t il, struct moe_experts *out)
{
    const struct model_hparams *hp = &m->hp;
    const struct model_layer *L = &m->layers[il];
    *out = (struct moe_experts){.layer = il,
                                .n_expert = hp->n_expert,
                                .n_embd = hp->n_embd,
                                .n_ff = hp->n_ff_exp,
                                .gate = moe_mat_of(L->gate_exps),
                                .up = moe_mat_of(L->up_exps),
                                .down = moe_mat_of(L->down_exps)};
}

void fwd_free(struct fwd *f)
{
    if (!f)
        return;
    if (f->owns_exec)
        moe_exec_free(f->exec);
    fwd_gpu_free(f->gpu);
    free(f->experts);
    free(f->x);
    free(f->h);
    free(f->q);
    free(f->k);
    free(f->v);
    free(f->att);
    free(f->y);
    free(f->y2);
    free(f->sh_g);
    free(f->sh_u);
    free(f->probs);
    free(f->ids);
    free(f->wts);
    free(f->qbuf);
    free(f->out_tok);
    free(f->seq_list);
    free(f->seq_next);
    free(f);
}

int fwd_init(struct fwd **out, const struct model *m, const struct fwd_opts *o, struct moed_err *e)
{
    const struct model_hparams *hp = &m->hp;
    *out = NULL;
    if (o->max_batch < 1 || o->max_batch > (1 << 20))
        return moed_err_set(e, MOED_EINVAL, "max_batch %d is not in 1..%d", o->max_batch, 1 << 20);
    struct fwd *f = calloc(1, sizeof *f);
    if (!f)
        return moed_err_set(e, MOED_ENOMEM, "out of memory");
    f->m = m;
    f->pool = o->pool;
    f->max_batch = o->max_batch;
    if (o->gpu) {
        struct fwd_gpu_opts go = {
            .device = o->gpu_device, .max_batch = o->max_batch, .no_graph = o->gpu_no_graph};
        struct hybrid_opts ho;
        if (o->hybrid) {
            ho = *o->hybrid;
            if (!ho.pool)
                ho.pool = o->pool;
            go.hybrid = &ho;
        }
        f->seq_list = malloc((size_t)o->max_batch * sizeof(int32_t));
        f->seq_next = malloc((size_t)o->max_batch * sizeof(int32_t));
        int rc = !f->seq_list || !f->seq_next ? moed_err_set(e, MOED_ENOMEM, "out of memory")
                                              : fwd_gpu_new(&f->gpu, m, &go, e);
        if (rc) {
            fwd_free(f);
            return rc;
        }
        *out = f;
        return 0;
    }
    size_t B = (size_t)o->max_batch, d = (size_t)hp->n_embd, hd = (size_t)hp->head_dim;
    size_t qd = (size_t)hp->n_head * hd, kvd = (size_t)hp->n_head_kv * hd;
    size_t sf = (size_t)hp->n_ff_shexp, k = (size_t)hp->n_expert_used;
    size_t widest = d > qd ? d : qd;
    widest = widest > sf ? widest : sf;
    f->qbuf_row = widest * sizeof(float); /* no activation type is wider than F32 */

    f->experts = calloc((size_t)hp->n_layer, sizeof *f->experts);
    f->x = malloc(B * d * sizeof(float));
    f->h = malloc(B * d * sizeof(float));
    f->q = malloc(B * qd * sizeof(float));
    f->k = malloc(B * kvd * sizeof(float));
    f->v = malloc(B * kvd * sizeof(float));
    f->att = malloc(B * qd * sizeof(float));
    f->y = malloc(B * d * sizeof(float));
    f->y2 = malloc(B * d * sizeof(float));
    f->sh_g = malloc(B * (sf ? sf : 1) * sizeof(float));
    f->sh_u = malloc(B * (sf ? sf : 1) * sizeof(float));
    f->probs = malloc(B * (size_t)hp->n_expert * sizeof(float));
    f->ids = malloc(B * k * sizeof(int32_t));
    f->wts = malloc(B * k * sizeof(float));
    f->qbuf = malloc(B * f->qbuf_row);
    f->out_tok = malloc(B * sizeof(int32_t));
    f->seq_list = malloc(B * sizeof(int32_t));
    f->seq_next = malloc(B * sizeof(int32_t));
    if (!f->experts || !f->x || !f->h || !f->q || !f->k || !f->v || !f->att || !f->y || !f->y2 ||
        !f->sh_g || !f->sh_u || !f->probs || !f->ids || !f->wts || !f->qbuf || !f->out_tok ||
        !f->seq_list || !f->seq_next) {
        fwd_free(f);
        return moed_err_set(e, MOED_ENOMEM, "out of memory for a workspace of %d tokens",
                            o->max_batch);
    }
    for (int32_t il = 0; il < hp->n_layer; il++)
        moe_experts_of_layer(m, il, &f->experts[il]);
    if (o->exec) {
        f->exec = o->exec;
    } else {
        struct moe_cpu_opts co = {.pool = o->pool,
                                  .max_tok = o->max_batch,
                                  .n_expert = hp->n_expert,
                                  .n_used = hp->n_expert_used,
                                  .n_embd = hp->n_embd,
                                  .n_ff = hp->n_ff_exp};
        int rc = moe_cpu_new(&f->exec, &co, e);
        if (rc) {
            fwd_free(f);
            return rc;
        }
        f->owns_exec = true;
    }
    *out = f;
    return 0;
}
