/*
 * The all-GPU forward pass (fwd_gpu.h): the same step as forward.c, line by
 * line, as kernels of kernels/cuda/kc.h on one stream:
 *
 *   x = embed(tokens)
 *   per layer:
 *     h = rmsnorm(x) * attn_norm; q, k, v = Wq h + bq, Wk h + bk, Wv h + bv  (one launch)
 *     q, k = rope(qk_norm(q, k)); caches[seq][layer][pos] = k, v
 *     x += Wo attention(q)                       (kc_matmul accumulates)
 *     h = rmsnorm(x) * ffn_norm; route(W_router h) -> ids, weights, and
 *     group the (token, slot) pairs by expert (one launch); act = swiglu(gate/up); y = down act
 *     x += sum_j w_j y_j (+ sigmoid(g . h) shared(h), qwen2moe)
 *   logits = W_out (rmsnorm(x[rows]) * output_norm)
 *
 * Weights are uploaded once, as the GGUF bytes, into one device allocation;
 * each layer's experts are reached through pointer tables (kc_experts), so
 * the hybrid engine can point them at cache slots instead.
 */
#include "model/fwd_gpu.h"

#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/types.h"
#include "kernels/cuda/kc.h"
#include "cache/gpu_slots.h"
#include "sched/hybrid.h"

struct gpu_layer {
    const float *attn_norm, *ffn_norm;
    struct kc_mat wq, wk, wv, wo, router;
    const float *bq, *bk, *bv, *q_norm, *k_norm;
    struct kc_experts ex;
    bool shexp;
    struct kc_mat gate_sh, up_sh, down_sh, gate_inp_sh;
};

/* What goes up each step, in one copy. */
struct step_in {
    int32_t *tok;  /* [max_batch] */
    int32_t *rows; /* [max_batch]: tokens that want logits */
    struct kc_tok *meta;
};

struct fwd_gpu {
    const struct model *m;
    int32_t max_batch;
    bool no_graph;
    kc_stream st;
    void *wmem; /* all weights */
    uint64_t wbytes, wsbytes;
    void **ptr_tables; /* device: [n_layer][3][n_expert] */
    struct gpu_layer *L;
    struct kc_mat embd, output;
    const float *output_norm;
    bool expert_mma; /* expert types that may use the tensor-core path */

    /* device workspace */
    void *ws;
    float *x, *h, *q, *k, *v, *att, *rl, *wts, *act, *ypair, *sh_g, *sh_u, *sh_y, *sh_logit,
        *logits, *rl_next;
    int32_t *ids;
    void *groups_ws;
    void *attn_ws;
    void *din; /* device copy of step_in */
    struct step_in d;
    /* pinned host */
    void *hin;
    struct step_in hs;
    size_t in_bytes;
    float *hlogits;

    uint32_t kv_type_cur;   /* the KV type of the step being enqueued */
    uint32_t kv_type_graph; /* 1 + the KV type the graphs were captured for; 0: none yet */
    kc_graph graph[FWD_GPU_GRAPH_MAX + 1];
    bool graph_failed;
    struct hybrid *hy; /* set: experts run hybrid (sched/hybrid.h), not from wmem */
};

static size_t al(size_t n)
{
    return (n + 255) & ~(size_t)255;
}

static bool is_vec(const struct gguf_tensor *t)
{
    return t->n_dims == 1 || (t->n_dims == 2 && t->ne[1] == 1);
}

/* ---- sizes -------------------------------------------------------------------- */

/* Splits of each token's positions in attention: decode steps (one token
 * per sequence) spread the few (token, KV head) items over the SMs; prefill
 * steps of many tokens use the tiled kernel (kc_attention with 1 split). */
static int32_t attn_split(const struct model_hparams *hp, int32_t n, bool decode)
{
    int64_t items = (int64_t)n * hp->n_head_kv;
    if (!decode)
        return items >= 128 ? 1 : (int32_t)(128 / items > 16 ? 16 : 128 / items);
    int64_t s = 256 / items;
    return s < 2 ? 2 : s > 32 ? 32 : (int32_t)s;
}

static int32_t moe_tile(const struct fwd_gpu *g, int32_t n)
{
    const struct model_hparams *hp = &g->m->hp;
    if (g->expert_mma && n > 8 && (int64_t)n * hp->n_expert_used >= 2 * (int64_t)hp->n_expert)
        return 64;
    return 8;
}

/* The device workspace for batches of max_batch tokens: sizes[WS_N] in the
 * order fwd_gpu_new carves them (x, h, q, k, v, att, router logits, weights,
 * act, per-pair outputs, shared gate/up/out/logit, output logits, ids,
 * grouping, attention, step inputs, next router's logits); returns the sum
 * with each part 256-byte aligned. */
#define WS_N 20
static size_t ws_sizes(const struct model_hparams *hp, int32_t max_batch, size_t *sizes)
{
    size_t B = (size_t)max_batch, d = (size_t)hp->n_embd, hd = (size_t)hp->head_dim;
    size_t qd = (size_t)hp->n_head * hd, kvd = (size_t)hp->n_head_kv * hd;
    size_t E = (size_t)hp->n_expert, K = (size_t)hp->n_expert_used, ff = (size_t)hp->n_ff_exp;
    size_t sf = hp->n_ff_shexp ? (size_t)hp->n_ff_shexp : 1;
    size_t gs8 = kc_moe_groups_size(max_batch, (int32_t)K, (int32_t)E, 8);
    size_t gs64 = kc_moe_groups_size(max_batch, (int32_t)K, (int32_t)E, 64);
    struct kc_attn_shape sh0 = {.n_head = hp->n_head, .n_head_kv = hp->n_head_kv,
                                .head_dim = hp->head_dim};
    size_t attn_ws = 0;
    for (int32_t n = 1; n <= max_batch; n++)
        for (int dec = 0; dec < 2; dec++) {
            size_t s = kc_attention_ws_size(&sh0, n, attn_split(hp, n, dec));
            attn_ws = s > attn_ws ? s : attn_ws;
        }
    size_t in_bytes = al(B * 4) * 2 + al(B * sizeof(struct kc_tok));
    size_t f4 = sizeof(float);
    const size_t all[WS_N] = {B * d * f4,      B * d * f4,       B * qd * f4,      B * kvd * f4,
                              B * kvd * f4,    B * qd * f4,      B * E * f4,       B * K * f4,
                              B * K * ff * f4, B * K * d * f4,   B * sf * f4,      B * sf * f4,
                              B * d * f4,      B * f4,           B * (size_t)hp->n_vocab * f4,
                              B * K * 4,       gs8 > gs64 ? gs8 : gs64, attn_ws,   in_bytes,
                              (size_t)HYBRID_PREDICT_MAX_TOK * E * f4};
    size_t sum = 0;
    for (size_t i = 0; i < WS_N; i++) {
        sizes[i] = all[i];
        sum += al(all[i]);
    }
    return sum;
}

uint64_t fwd_gpu_workspace_bytes(const struct model *m, int32_t max_batch)
{
    size_t sizes[WS_N];
    return ws_sizes(&m->hp, max_batch, sizes);
}

uint64_t fwd_gpu_decode_bytes(const struct model *m)
{
    const struct model_hparams *hp = &m->hp;
    uint64_t b = 0;
    for (int32_t il = 0; il < hp->n_layer; il++) {
        const struct model_layer *L = &m->layers[il];
        const struct gguf_tensor *dense[] = {L->attn_norm, L->wq,      L->wk,         L->wv,
                                             L->wo,        L->bq,      L->bk,         L->bv,
                                             L->q_norm,    L->k_norm,  L->ffn_norm,   L->router,
                                             L->gate_inp_shexp, L->gate_shexp, L->up_shexp,
                                             L->down_shexp};
        for (size_t i = 0; i < sizeof dense / sizeof dense[0]; i++)
            if (dense[i])
                b += dense[i]->nbytes;
        const struct gguf_tensor *ex[] = {L->gate_exps, L->up_exps, L->down_exps};
        for (int i = 0; i < 3; i++)
            b += ex[i]->nbytes / (uint64_t)hp->n_expert * (uint64_t)hp->n_expert_used;
    }
    b += m->output_norm->nbytes + m->output->nbytes;
    return b;
}

uint64_t fwd_gpu_bytes(const struct fwd_gpu *g)
{
    return g->wbytes + g->wsbytes;
}

/* ---- set-up ------------------------------------------------------------------- */

void fwd_gpu_free(struct fwd_gpu *g)
{
    if (!g)
        return;
    for (int i = 0; i <= FWD_GPU_GRAPH_MAX; i++)
        kc_graph_free(g->graph[i]);
    hybrid_free(g->hy);
    kc_free(g->wmem);
    kc_free(g->ptr_tables);
    kc_free(g->ws);
    kc_host_free(g->hin);
    kc_host_free(g->hlogits);
    kc_stream_free(g->st);
    free(g->L);
    free(g);
}

/* Where each tensor goes in the weight allocation. */
struct upload {
    const struct gguf_tensor *t;
    size_t off;
};

static int check_mat(const struct gguf_tensor *t, struct moed_err *e)
{
    if (!kc_type_supported(t->type))
        return moed_err_set(e, MOED_EUNSUPPORTED,
                            "tensor %.*s: type %s has no GPU kernel (GPU types: F32, F16, BF16, "
                            "Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K..Q6_K)",
                            (int)t->name.len, t->name.ptr, kern_type_name(t->type));
    return 0;
}

static size_t find_off(const struct upload *up, size_t n_up, const struct gguf_tensor *t)
{
    for (size_t i = 0; i < n_up; i++)
        if (up[i].t == t)
            return up[i].off;
    return 0; /* not reached: every bound tensor was added */
}

static struct kc_mat mat_at(const struct gguf_tensor *t, const char *base, size_t off)
{
    return (struct kc_mat){.type = t->type,
                           .data = base + off,
                           .row_size = kern_row_size(t->type, t->ne[0]),
                           .n = (int32_t)t->ne[0],
                           .rows = (int32_t)(t->n_dims >= 2 ? t->ne[1] : 1)};
}

int fwd_gpu_new(struct fwd_gpu **out, const struct model *m, const struct fwd_gpu_opts *o,
                struct moed_err *e)
{
    const struct model_hparams *hp = &m->hp;
    int rc;
    *out = NULL;
    struct fwd_gpu *g = calloc(1, sizeof *g);
    if (!g)
        return moed_err_set(e, MOED_ENOMEM, "out of memory");
    g->m = m;
    g->max_batch = o->max_batch;
    g->no_graph = o->no_graph;
    struct upload *up = NULL;
    /* hybrid: the experts stay in host memory and a slot pool; unless every
     * expert gets a slot and the caller did not insist */
    bool hybrid = o->hybrid &&
                  (o->hybrid->force || hybrid_slots_for(m, o->hybrid) <
                                           (int64_t)hp->n_layer * hp->n_expert);
    if ((rc = kc_set_device(o->device, e)))
        goto fail;

    /* every tensor the model binds, once (output may be token_embd) */
    size_t n_up = 0, cap = (size_t)hp->n_layer * 20 + 4;
    up = calloc(cap, sizeof *up);
    g->L = calloc((size_t)hp->n_layer, sizeof *g->L);
    if (!up || !g->L) {
        rc = moed_err_set(e, MOED_ENOMEM, "out of memory");
        goto fail;
    }
    size_t total = 0;
#define ADD(T)                                                                                     \
    do {                                                                                           \
        const struct gguf_tensor *t_ = (T);                                                        \
        if (t_) {                                                                                  \
            bool seen_ = false;                                                                    \
            for (size_t i_ = 0; i_ < n_up; i_++)                                                   \
                seen_ |= up[i_].t == t_;                                                           \
            if (!seen_) {                                                                          \
                up[n_up].t = t_;                                                                   \
                up[n_up++].off = total;                                                            \
                total += al(t_->nbytes);                                                             \
            }                                                                                      \
        }                                                                                          \
    } while (0)
    ADD(m->tok_embd);
    ADD(m->output_norm);
    ADD(m->output);
    for (int32_t il = 0; il < hp->n_layer; il++) {
        const struct model_layer *L = &m->layers[il];
        const struct gguf_tensor *all[] = {
            L->attn_norm,    L->wq,         L->wk,        L->wv,       L->wo,
            L->bq,           L->bk,         L->bv,        L->q_norm,   L->k_norm,
            L->ffn_norm,     L->router,     L->gate_exps, L->up_exps,  L->down_exps,
            L->gate_inp_shexp, L->gate_shexp, L->up_shexp, L->down_shexp};
        for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
            if (!all[i] || (hybrid && i >= 12 && i <= 14))
                continue;
            if (!is_vec(all[i]) && (rc = check_mat(all[i], e)))
                goto fail;
            ADD(all[i]);
        }
    }
#undef ADD
    if ((rc = check_mat(m->tok_embd, e)) || (rc = check_mat(m->output, e)))
        goto fail;

    /* workspace */
    size_t B = (size_t)o->max_batch, d = (size_t)hp->n_embd, E = (size_t)hp->n_expert;
    size_t f4 = sizeof(float);
    size_t sizes[WS_N], wsb = ws_sizes(hp, o->max_batch, sizes);
    g->in_bytes = sizes[WS_N - 2];
    size_t ptrb = hybrid ? 0 : (size_t)hp->n_layer * 3 * E * sizeof(void *);

    size_t mfree = 0, mtotal = 0;
    if ((rc = kc_mem_info(&mfree, &mtotal, e)))
        goto fail;
    uint64_t need = total + wsb + ptrb;
    if (need + (256u << 20) > mfree) {
        rc = moed_err_set(e, MOED_ENOMEM,
                          "the model needs %.2f GiB of GPU memory (weights %.2f GiB, workspace "
                          "%.2f GiB for batches of %d), the device has %.2f GiB free",
                          need / 1073741824.0, total / 1073741824.0, wsb / 1073741824.0,
                          o->max_batch, mfree / 1073741824.0);
        goto fail;
    }
    g->wbytes = total + ptrb;
    g->wsbytes = wsb;
    if ((rc = kc_stream_new(&g->st, e)) || (rc = kc_malloc(&g->wmem, total, e)) ||
        (ptrb && (rc = kc_malloc((void **)&g->ptr_tables, ptrb, e))) ||
        (rc = kc_malloc(&g->ws, wsb, e)) ||
        (rc = kc_host_alloc(&g->hin, g->in_bytes, e)) ||
        (rc = kc_host_alloc((void **)&g->hlogits, B * (size_t)hp->n_vocab * f4, e)))
        goto fail;

    /* weights up (the file is mapped: the copies page it in) */
    for (size_t i = 0; i < n_up; i++)
        if ((rc = kc_h2d((char *)g->wmem + up[i].off, up[i].t->data, up[i].t->nbytes, g->st, e)))
            goto fail;
    const char *wb = g->wmem;
#define OFF(T) find_off(up, n_up, (T))
    g->embd = mat_at(m->tok_embd, wb, OFF(m->tok_embd));
    g->output = mat_at(m->output, wb, OFF(m->output));
    g->output_norm = (const float *)(wb + OFF(m->output_norm));
    void **tables = calloc((size_t)hp->n_layer * 3 * E, sizeof(void *));
    if (!tables) {
        rc = moed_err_set(e, MOED_ENOMEM, "out of memory");
        goto fail;
    }
    g->expert_mma = true;
    for (int32_t il = 0; il < hp->n_layer; il++) {
        const struct model_layer *L = &m->layers[il];
        struct gpu_layer *G = &g->L[il];
#define VEC(T) ((T) ? (const float *)(wb + OFF(T)) : NULL)
        G->attn_norm = VEC(L->attn_norm);
        G->ffn_norm = VEC(L->ffn_norm);
        G->bq = VEC(L->bq);
        G->bk = VEC(L->bk);
        G->bv = VEC(L->bv);
        G->q_norm = VEC(L->q_norm);
        G->k_norm = VEC(L->k_norm);
#undef VEC
        G->wq = mat_at(L->wq, wb, OFF(L->wq));
        G->wk = mat_at(L->wk, wb, OFF(L->wk));
        G->wv = mat_at(L->wv, wb, OFF(L->wv));
        G->wo = mat_at(L->wo, wb, OFF(L->wo));
        G->router = mat_at(L->router, wb, OFF(L->router));
        const struct gguf_tensor *xs[3] = {L->gate_exps, L->up_exps, L->down_exps};
        void **tab = tables + (size_t)il * 3 * E;
        for (int j = 0; j < 3; j++) {
            size_t rs = kern_row_size(xs[j]->type, xs[j]->ne[0]);
            size_t stride = rs * (size_t)xs[j]->ne[1];
            for (size_t x = 0; x < E && !hybrid; x++)
                tab[j * E + x] = (char *)g->wmem + OFF(xs[j]) + x * stride;
            if (xs[j]->type == KT_F32 || xs[j]->type == KT_F16)
                g->expert_mma = false;
        }
        void **dtab = hybrid ? NULL : g->ptr_tables + (size_t)il * 3 * E;
        G->ex = (struct kc_experts){
            .type_gate = L->gate_exps->type,
            .type_up = L->up_exps->type,
            .type_down = L->down_exps->type,
            .row_gate = kern_row_size(L->gate_exps->type, L->gate_exps->ne[0]),
            .row_up = kern_row_size(L->up_exps->type, L->up_exps->ne[0]),
            .row_down = kern_row_size(L->down_exps->type, L->down_exps->ne[0]),
            .gate = (const void *const *)dtab,
            .up = dtab ? (const void *const *)(dtab + E) : NULL,
            .down = dtab ? (const void *const *)(dtab + 2 * E) : NULL,
            .n_expert = hp->n_expert,
            .n_embd = hp->n_embd,
            .n_ff = hp->n_ff_exp};
        if (L->gate_inp_shexp) {
            G->shexp = true;
            G->gate_sh = mat_at(L->gate_shexp, wb, OFF(L->gate_shexp));
            G->up_sh = mat_at(L->up_shexp, wb, OFF(L->up_shexp));
            G->down_sh = mat_at(L->down_shexp, wb, OFF(L->down_shexp));
            G->gate_inp_sh = (struct kc_mat){.type = KT_F32,
                                             .data = wb + OFF(L->gate_inp_shexp),
                                             .row_size = d * sizeof(float),
                                             .n = (int32_t)d,
                                             .rows = 1};
        }
    }
#undef OFF
    rc = ptrb ? kc_h2d(g->ptr_tables, tables, ptrb, g->st, e) : 0;
    if (!rc)
        rc = kc_sync(g->st, e); /* tables (host) must outlive the copy */
    free(tables);
    if (rc)
        goto fail;

    /* carve the workspace */
    char *p = g->ws;
    void **dst[] = {(void **)&g->x,     (void **)&g->h,     (void **)&g->q,     (void **)&g->k,
                    (void **)&g->v,     (void **)&g->att,   (void **)&g->rl,    (void **)&g->wts,
                    (void **)&g->act,   (void **)&g->ypair, (void **)&g->sh_g,  (void **)&g->sh_u,
                    (void **)&g->sh_y,  (void **)&g->sh_logit, (void **)&g->logits,
                    (void **)&g->ids,   &g->groups_ws,      &g->attn_ws,        &g->din,
                    (void **)&g->rl_next};
    _Static_assert(sizeof dst / sizeof dst[0] == WS_N, "one destination per workspace part");
    for (size_t i = 0; i < WS_N; i++) {
        *dst[i] = p;
        p += al(sizes[i]);
    }
    char *hp8 = g->hin, *dp8 = g->din;
    g->hs.tok = (int32_t *)hp8;
    g->d.tok = (int32_t *)dp8;
    g->hs.rows = (int32_t *)(hp8 + al(B * 4));
    g->d.rows = (int32_t *)(dp8 + al(B * 4));
    g->hs.meta = (struct kc_tok *)(hp8 + 2 * al(B * 4));
    g->d.meta = (struct kc_tok *)(dp8 + 2 * al(B * 4));
    free(up);
    up = NULL;
    if (hybrid) {
        /* the slot pool takes what the budget asks, within what is left */
        struct hybrid_opts ho = *o->hybrid;
        ho.max_batch = o->max_batch;
        uint64_t sb = 0;
        if ((rc = kc_mem_info(&mfree, &mtotal, e)) || (rc = gpu_slots_geometry(m, NULL, &sb, e)))
            goto fail;
        uint64_t room = mfree > (512u << 20) ? mfree - (512u << 20) : 0;
        if ((uint64_t)hybrid_slots_for(m, &ho) * sb > room) {
            ho.budget_frac = 0;
            ho.budget_bytes = room;
        }
        if ((rc = hybrid_new(&g->hy, m, &ho, e)))
            goto fail;
        g->no_graph = true; /* every MoE layer returns to the host */
    }
    *out = g;
    return 0;
fail:
    free(up);
    fwd_gpu_free(g);
    return rc;
}

/* ---- the step ----------------------------------------------------------------- */

static int layer(struct fwd_gpu *g, int32_t il, int32_t n, bool decode, struct moed_err *e)
{
    const struct model_hparams *hp = &g->m->hp;
    const struct gpu_layer *G = &g->L[il];
    kc_stream st = g->st;
    int32_t d = hp->n_embd, K = hp->n_expert_used, E = hp->n_expert;
    int rc;
    struct kc_attn_shape sh = {.n_head = hp->n_head,
                               .n_head_kv = hp->n_head_kv,
                               .head_dim = hp->head_dim,
                               .n_rot = hp->n_rot,
                               .rope_base = hp->rope_base,
                               .rope_scale = hp->rope_scale,
                               .rope_neox = hp->rope_neox,
                               .qk_norm = hp->qk_norm == MODEL_QK_NORM_HEAD   ? KC_QK_HEAD
                                          : hp->qk_norm == MODEL_QK_NORM_FULL ? KC_QK_FULL
                                                                              : KC_QK_NONE,
                               .eps = hp->rms_eps,
                               .kv_type = g->kv_type_cur,
                               .layer = il};
    const struct kc_mat qkv[3] = {G->wq, G->wk, G->wv};
    float *const qkv_out[3] = {g->q, g->k, g->v};
    const float *const qkv_bias[3] = {G->bq, G->bk, G->bv};
    if ((rc = kc_matmul_multi(st, 3, qkv, g->x, n, qkv_out, qkv_bias, G->attn_norm, hp->rms_eps,
                              g->h, e)) ||
        (rc = kc_qk_rope_store(st, &sh, g->q, g->k, g->v, G->q_norm, G->k_norm, g->d.meta, n, e)) ||
        (rc = kc_attention(st, &sh, g->q, g->d.meta, n, attn_split(hp, n, decode), g->attn_ws, g->att,
                           e)) ||
        (rc = kc_matmul(st, &G->wo, g->att, n, g->x, NULL, true, e)))
        return rc;

    if ((rc = kc_rmsnorm(st, g->x, NULL, n, d, G->ffn_norm, hp->rms_eps, g->h, e)) ||
        (rc = kc_matmul(st, &G->router, g->h, n, g->rl, NULL, false, e)))
        return rc;
    int32_t tile = moe_tile(g, n);
    int32_t max_tiles = kc_moe_max_tiles(n, K, E, tile);
    struct kc_moe_groups grp;
    kc_moe_groups_at(&grp, g->groups_ws, g->max_batch, K, E, tile);
    if (g->hy) {
        struct hybrid_io io = {.layer = il, .n_tok = n, .tile = tile, .h = g->h, .ids = g->ids,
                               .wts = g->wts, .groups_ws = g->groups_ws, .act = g->act,
                               .ypair = g->ypair};
        if ((rc = kc_moe_route(st, g->rl, n, E, K, hp->norm_topk, g->ids, g->wts, e)))
            return rc;
        /* the next layer's router on these rows: what the prefetcher predicts from */
        if (il + 1 < hp->n_layer && n <= HYBRID_PREDICT_MAX_TOK) {
            if ((rc = kc_matmul(st, &g->L[il + 1].router, g->h, n, g->rl_next, NULL, false, e)))
                return rc;
            io.next_logits = g->rl_next;
        }
        if ((rc = hybrid_moe(g->hy, st, &io, e)))
            return rc;
    } else if ((rc = kc_moe_route_group(st, g->rl, n, E, K, hp->norm_topk, g->ids, g->wts, tile,
                                        &grp, e)) ||
               (rc = kc_moe_gate_up(st, &G->ex, g->h, &grp, tile, max_tiles, g->act, e)) ||
               (rc = kc_moe_down(st, &G->ex, g->act, &grp, tile, max_tiles, g->ypair, e))) {
        return rc;
    }
    if (G->shexp) {
        int64_t sf = hp->n_ff_shexp;
        if ((rc = kc_matmul(st, &G->gate_sh, g->h, n, g->sh_g, NULL, false, e)) ||
            (rc = kc_matmul(st, &G->up_sh, g->h, n, g->sh_u, NULL, false, e)) ||
            (rc = kc_swiglu(st, g->sh_g, g->sh_u, (int64_t)n * sf, e)) ||
            (rc = kc_matmul(st, &G->down_sh, g->sh_g, n, g->sh_y, NULL, false, e)) ||
            (rc = kc_matmul(st, &G->gate_inp_sh, g->h, n, g->sh_logit, NULL, false, e)))
            return rc;
    }
    return kc_moe_combine(st, g->x, g->ypair, grp.pair_of, g->wts, n, K, d,
                          G->shexp ? g->sh_logit : NULL, G->shexp ? g->sh_y : NULL, e);
}

static int enqueue(struct fwd_gpu *g, int32_t n, int32_t n_out, bool decode, struct moed_err *e)
{
    const struct model_hparams *hp = &g->m->hp;
    int rc;
    if (g->hy)
        hybrid_step_begin(g->hy);
    if ((rc = kc_embed(g->st, &g->embd, g->d.tok, n, g->x, e)))
        return rc;
    for (int32_t il = 0; il < hp->n_layer; il++)
        if ((rc = layer(g, il, n, decode, e)))
            return moed_err_wrap(e, "layer %d", il);
    if (!n_out)
        return 0;
    if ((rc = kc_rmsnorm(g->st, g->x, g->d.rows, n_out, hp->n_embd, g->output_norm, hp->rms_eps,
                         g->h, e)) ||
        (rc = kc_matmul(g->st, &g->output, g->h, n_out, g->logits, NULL, false, e)))
        return rc;
    return 0;
}

int fwd_gpu_step(struct fwd_gpu *g, const struct fwd_batch *b, struct kv_seq *const *seqs,
                 bool decode, float *logits, struct moed_err *e)
{
    const struct model_hparams *hp = &g->m->hp;
    int32_t n = b->n, n_out = 0;
    uint32_t kv_type = seqs[b->seq[0]]->type;

    for (int32_t t = 0; t < n; t++) {
        const struct kv_seq *kv = seqs[b->seq[t]];
        if (kv->type != kv_type)
            return moed_err_set(e, MOED_EINVAL,
                                "sequences of one GPU step must share a KV cache type");
        g->hs.tok[t] = b->token[t];
        g->hs.meta[t] = (struct kc_tok){.pos = b->pos[t], .n_ctx = kv->n_ctx, .k = kv->k, .v = kv->v};
        if (b->logits && b->logits[t])
            g->hs.rows[n_out++] = t;
    }
    int rc;
    /* graphs are captured for one KV type: the first one seen */
    if (g->kv_type_graph == 0)
        g->kv_type_graph = kv_type + 1;
    g->kv_type_cur = kv_type;
    if ((rc = kc_h2d(g->din, g->hin, g->in_bytes, g->st, e)))
        return rc;
    bool graph = !g->no_graph && !g->graph_failed && decode && n_out == n &&
                 n <= FWD_GPU_GRAPH_MAX && g->kv_type_graph == kv_type + 1;
    if (graph && !g->graph[n]) {
        if ((rc = kc_capture_begin(g->st, e)))
            return rc;
        rc = enqueue(g, n, n_out, decode, e);
        kc_graph gr = NULL;
        int rc2 = kc_capture_end(g->st, &gr, rc ? NULL : e);
        if (rc)
            return rc;
        if (rc2) {
            g->graph_failed = true; /* run eagerly from now on */
            graph = false;
        } else {
            g->graph[n] = gr;
        }
    }
    if (graph)
        rc = kc_graph_launch(g->graph[n], g->st, e);
    else
        rc = enqueue(g, n, n_out, decode, e);
    if (rc)
        return rc;
    size_t lb = (size_t)n_out * (size_t)hp->n_vocab * sizeof(float);
    if ((rc = kc_d2h(g->hlogits, g->logits, lb, g->st, e)) || (rc = kc_sync(g->st, e)))
        return rc;
    if (n_out)
        memcpy(logits, g->hlogits, lb);
    return 0;
}

struct hybrid *fwd_gpu_hybrid(const struct fwd_gpu *g)
{
    return g->hy;
}
