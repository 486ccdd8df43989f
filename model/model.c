/*
 * Loading a model (model.h): the architecture table, hyper-parameters from
 * <arch>.* metadata, and tensor binding.
 *
 * Every hyper-parameter is range-checked before it sizes anything, and
 * every tensor is checked for presence, shape and type, so that the forward
 * pass can index weights without further checks.  Messages name the key or
 * tensor and both the value found and the value wanted.
 */
#include "model/model.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/quant.h"
#include "model/ops.h"

/* What differs between the architectures (model.h's table). */
struct arch_info {
    const char *name;
    bool rope_neox;
    enum model_qk_norm qk_norm;
    bool qkv_bias;
    bool shared_expert;
    bool norm_topk;    /* when <arch>.expert_weights_norm is absent: llama.cpp's choice */
    bool ff_exp_split; /* no expert_feed_forward_length: feed_forward_length / n_expert_used */
};

static const struct arch_info archs[MODEL_ARCH_COUNT] = {
    [MODEL_ARCH_QWEN3MOE] = {"qwen3moe", true, MODEL_QK_NORM_HEAD, false, false, true, true},
    [MODEL_ARCH_QWEN2MOE] = {"qwen2moe", true, MODEL_QK_NORM_NONE, true, true, false, true},
    [MODEL_ARCH_LLAMA] = {"llama", false, MODEL_QK_NORM_NONE, false, false, true, false},
    [MODEL_ARCH_OLMOE] = {"olmoe", true, MODEL_QK_NORM_FULL, false, false, false, false},
};

/* Upper bounds that keep every size product of the forward pass in range. */
#define MAX_DIM (1 << 20)
#define MAX_LAYERS 4096
#define MAX_EXPERTS 4096

const char *model_arch_name(enum model_arch arch)
{
    return (unsigned)arch < MODEL_ARCH_COUNT ? archs[arch].name : "?";
}

/* ---- hyper-parameters ----------------------------------------------------- */

/* <arch>.<name> as a u32 in [lo, hi]; *out keeps its default when absent and
 * not required. */
static int get_hp(const struct gguf *g, const char *arch, const char *name, bool required,
                  int64_t lo, int64_t hi, int32_t *out, struct moed_err *e)
{
    char key[128];
    snprintf(key, sizeof key, "%s.%s", arch, name);
    uint32_t v;
    int rc = gguf_get_u32(g, key, &v, e);
    if (rc == MOED_ENOTFOUND && !required)
        return 0;
    if (rc == MOED_ENOTFOUND)
        return moed_err_set(e, MOED_ENOTFOUND, "missing key '%s'", key);
    if (rc)
        return rc;
    if ((int64_t)v < lo || (int64_t)v > hi)
        return moed_err_set(e, MOED_ERANGE,
                            "%s = %" PRIu32 " is out of range %" PRId64 "..%" PRId64, key, v, lo,
                            hi);
    *out = (int32_t)v;
    return 0;
}

static int get_hp_f32(const struct gguf *g, const char *arch, const char *name, bool required,
                      float lo, float hi, float *out, struct moed_err *e)
{
    char key[128];
    snprintf(key, sizeof key, "%s.%s", arch, name);
    float v;
    int rc = gguf_get_f32(g, key, &v, e);
    if (rc == MOED_ENOTFOUND && !required)
        return 0;
    if (rc == MOED_ENOTFOUND)
        return moed_err_set(e, MOED_ENOTFOUND, "missing key '%s'", key);
    if (rc)
        return rc;
    if (!(v >= lo && v <= hi))
        return moed_err_set(e, MOED_ERANGE, "%s = %g is out of range %g..%g", key, v, lo, hi);
    *out = v;
    return 0;
}

static int load_hparams(struct model *m, const struct gguf *g, struct moed_err *e)
{
    struct model_hparams *hp = &m->hp;
    struct gguf_str s;
    int rc = gguf_get_str(g, "general.architecture", &s, e);
    if (rc)
        return rc;
    int arch = -1;
    for (int a = 0; a < MODEL_ARCH_COUNT; a++)
        if (gguf_str_eq(s, archs[a].name))
            arch = a;
    if (arch < 0)
        return moed_err_set(e, MOED_EUNSUPPORTED,
                            "general.architecture '%.*s' is not supported (moed runs qwen3moe, "
                            "qwen2moe, llama with experts, olmoe)",
                            (int)(s.len > 64 ? 64 : s.len), s.ptr);
    const struct arch_info *ai = &archs[arch];
    const char *a = ai->name;
    hp->arch = (enum model_arch)arch;
    hp->rope_neox = ai->rope_neox;
    hp->qk_norm = ai->qk_norm;
    hp->qkv_bias = ai->qkv_bias;

    if ((rc = get_hp(g, a, "block_count", true, 1, MAX_LAYERS, &hp->n_layer, e)) ||
        (rc = get_hp(g, a, "embedding_length", true, 1, MAX_DIM, &hp->n_embd, e)) ||
        (rc = get_hp(g, a, "attention.head_count", true, 1, MAX_DIM, &hp->n_head, e)))
        return rc;
    hp->n_head_kv = hp->n_head;
    if ((rc = get_hp(g, a, "attention.head_count_kv", false, 1, hp->n_head, &hp->n_head_kv, e)))
        return rc;
    if (hp->n_head % hp->n_head_kv)
        return moed_err_set(e, MOED_EFORMAT,
                            "%s.attention.head_count_kv = %d does not divide attention.head_count "
                            "= %d",
                            a, hp->n_head_kv, hp->n_head);
    hp->head_dim = 0;
    if ((rc = get_hp(g, a, "attention.key_length", false, 1, ATTN_MAX_HD, &hp->head_dim, e)))
        return rc;
    if (!hp->head_dim) {
        if (hp->n_embd % hp->n_head)
            return moed_err_set(e, MOED_EFORMAT,
                                "%s.attention.head_count = %d does not divide embedding_length = "
                                "%d and attention.key_length is absent",
                                a, hp->n_head, hp->n_embd);
        hp->head_dim = hp->n_embd / hp->n_head;
        if (hp->head_dim > ATTN_MAX_HD)
            return moed_err_set(e, MOED_EUNSUPPORTED, "%s: head size %d is more than %d", a,
                                hp->head_dim, ATTN_MAX_HD);
    }
    int32_t v_len = hp->head_dim;
    if ((rc = get_hp(g, a, "attention.value_length", false, 1, MAX_DIM, &v_len, e)))
        return rc;
    if (v_len != hp->head_dim)
        return moed_err_set(e, MOED_EUNSUPPORTED,
                            "%s.attention.value_length = %d differs from key_length = %d", a, v_len,
                            hp->head_dim);
    hp->n_rot = hp->head_dim;
    if ((rc = get_hp(g, a, "rope.dimension_count", false, 2, hp->head_dim, &hp->n_rot, e)))
        return rc;
    if (hp->n_rot % 2)
        return moed_err_set(e, MOED_EFORMAT, "%s.rope.dimension_count = %d is odd", a, hp->n_rot);
    hp->rope_base = 10000.0f;
    hp->rope_scale = 1.0f;
    if ((rc = get_hp_f32(g, a, "rope.freq_base", false, 1e-3f, 1e12f, &hp->rope_base, e)))
        return rc;
    char key[128];
    snprintf(key, sizeof key, "%s.rope.scaling.type", a);
    if (gguf_get_str(g, key, &s, NULL) == 0 && !gguf_str_eq(s, "none")) {
        if (!gguf_str_eq(s, "linear"))
            return moed_err_set(e, MOED_EUNSUPPORTED,
                                "%s = '%.*s': only linear RoPE scaling is supported", key,
                                (int)(s.len > 32 ? 32 : s.len), s.ptr);
        if ((rc = get_hp_f32(g, a, "rope.scaling.factor", true, 1e-3f, 1e6f, &hp->rope_scale, e)))
            return rc;
    }
    if ((rc = get_hp_f32(g, a, "attention.layer_norm_rms_epsilon", true, 0.0f, 1.0f, &hp->rms_eps,
                         e)))
        return rc;
    if ((rc = get_hp(g, a, "context_length", false, 0, INT32_MAX, &hp->n_ctx_train, e)))
        return rc;

    /* experts */
    rc = get_hp(g, a, "expert_count", true, 1, MAX_EXPERTS, &hp->n_expert, e);
    if (rc == MOED_ENOTFOUND)
        return moed_err_wrap(e, "moed runs mixture-of-experts models only");
    if (rc ||
        (rc = get_hp(g, a, "expert_used_count", true, 1, hp->n_expert, &hp->n_expert_used, e)))
        return rc;
    int32_t n_ff = 0;
    if ((rc = get_hp(g, a, "feed_forward_length", false, 1, MAX_DIM, &n_ff, e)))
        return rc;
    if (ai->ff_exp_split)
        hp->n_ff_exp = n_ff / hp->n_expert_used;
    else
        hp->n_ff_exp = n_ff;
    if ((rc = get_hp(g, a, "expert_feed_forward_length", false, 1, MAX_DIM, &hp->n_ff_exp, e)))
        return rc;
    if (hp->n_ff_exp <= 0)
        return moed_err_set(e, MOED_ENOTFOUND,
                            "missing key '%s.expert_feed_forward_length' (and no "
                            "feed_forward_length to derive it from)",
                            a);
    if (ai->shared_expert) {
        hp->n_ff_shexp = n_ff;
        if ((rc = get_hp(g, a, "expert_shared_feed_forward_length", false, 1, MAX_DIM,
                         &hp->n_ff_shexp, e)))
            return rc;
        if (hp->n_ff_shexp <= 0)
            return moed_err_set(e, MOED_ENOTFOUND,
                                "missing key '%s.expert_shared_feed_forward_length'", a);
    }
    hp->norm_topk = ai->norm_topk;
    snprintf(key, sizeof key, "%s.expert_weights_norm", a);
    rc = gguf_get_bool(g, key, &hp->norm_topk, e);
    if (rc && rc != MOED_ENOTFOUND)
        return rc;
    return 0;
}

/* ---- tensors -------------------------------------------------------------- */

enum tkind {
    T_VEC, /* F32 only: norms, biases, gates */
    T_MAT, /* any type with a dot product */
};

static void shape_str(char *buf, size_t size, const int64_t *ne, int n)
{
    size_t o = (size_t)snprintf(buf, size, "{");
    for (int i = 0; i < n && o < size; i++)
        o += (size_t)snprintf(buf + o, size - o, i ? ", %" PRId64 : "%" PRId64, ne[i]);
    if (o < size)
        snprintf(buf + o, size - o, "}");
}

/*
 * The tensor called name with shape {ne0[, ne1[, ne2]]} (n dims; unused
 * trailing dims of the file's shape must be 1).  A missing tensor is an
 * error when required, else *out = NULL.
 */
static int bind(const struct model *m, const struct gguf_tensor **out, const char *name,
                bool required, enum tkind kind, int n, int64_t ne0, int64_t ne1, int64_t ne2,
                struct moed_err *e)
{
    const int64_t want[GGUF_MAX_DIMS] = {ne0, n > 1 ? ne1 : 1, n > 2 ? ne2 : 1, 1};
    char ws[96], hs[96];
    const struct gguf_tensor *t = gguf_find_tensor(m->gguf, name);
    *out = NULL;
    if (!t) {
        if (!required)
            return 0;
        shape_str(ws, sizeof ws, want, n);
        return moed_err_set(e, MOED_ENOTFOUND, "tensor '%s' not found (%s needs it, shape %s)",
                            name, model_arch_name(m->hp.arch), ws);
    }
    bool ok = true;
    for (int i = 0; i < GGUF_MAX_DIMS; i++)
        ok &= t->ne[i] == want[i];
    if (!ok) {
        shape_str(ws, sizeof ws, want, n);
        shape_str(hs, sizeof hs, t->ne, (int)t->n_dims);
        return moed_err_set(e, MOED_EFORMAT, "tensor '%s' has shape %s, expected %s", name, hs, ws);
    }
    if (kind == T_VEC && t->type != KT_F32)
        return moed_err_set(e, MOED_EUNSUPPORTED, "tensor '%s' has type %s, expected F32", name,
                            kern_type_name(t->type));
    if (kind == T_MAT && kern_vec_dot_type(t->type) < 0)
        return moed_err_set(e, MOED_EUNSUPPORTED,
                            "tensor '%s' has type %s, which moed cannot multiply yet", name,
                            kern_type_name(t->type));
    *out = t;
    return 0;
}

static int bind_layer(struct model *m, int il, struct moed_err *e)
{
    const struct model_hparams *hp = &m->hp;
    struct model_layer *L = &m->layers[il];
    int64_t d = hp->n_embd, qd = (int64_t)hp->n_head * hp->head_dim,
            kvd = (int64_t)hp->n_head_kv * hp->head_dim, E = hp->n_expert, ff = hp->n_ff_exp;
    char nm[96];
    int rc;
#define B(field, suffix, req, kind, n, a0, a1, a2)                                                 \
    do {                                                                                           \
        snprintf(nm, sizeof nm, "blk.%d.%s", il, suffix);                                          \
        if ((rc = bind(m, &L->field, nm, req, kind, n, a0, a1, a2, e)))                            \
            return rc;                                                                             \
    } while (0)
    B(attn_norm, "attn_norm.weight", true, T_VEC, 1, d, 0, 0);
    B(wq, "attn_q.weight", true, T_MAT, 2, d, qd, 0);
    B(wk, "attn_k.weight", true, T_MAT, 2, d, kvd, 0);
    B(wv, "attn_v.weight", true, T_MAT, 2, d, kvd, 0);
    B(wo, "attn_output.weight", true, T_MAT, 2, qd, d, 0);
    if (hp->qkv_bias) {
        B(bq, "attn_q.bias", true, T_VEC, 1, qd, 0, 0);
        B(bk, "attn_k.bias", true, T_VEC, 1, kvd, 0, 0);
        B(bv, "attn_v.bias", true, T_VEC, 1, kvd, 0, 0);
    }
    if (hp->qk_norm == MODEL_QK_NORM_HEAD) {
        B(q_norm, "attn_q_norm.weight", true, T_VEC, 1, hp->head_dim, 0, 0);
        B(k_norm, "attn_k_norm.weight", true, T_VEC, 1, hp->head_dim, 0, 0);
    } else if (hp->qk_norm == MODEL_QK_NORM_FULL) {
        B(q_norm, "attn_q_norm.weight", true, T_VEC, 1, qd, 0, 0);
        B(k_norm, "attn_k_norm.weight", true, T_VEC, 1, kvd, 0, 0);
    }
    B(ffn_norm, "ffn_norm.weight", true, T_VEC, 1, d, 0, 0);
    B(router, "ffn_gate_inp.weight", true, T_MAT, 2, d, E, 0);
    B(gate_exps, "ffn_gate_exps.weight", true, T_MAT, 3, d, ff, E);
    B(up_exps, "ffn_up_exps.weight", true, T_MAT, 3, d, ff, E);
    B(down_exps, "ffn_down_exps.weight", true, T_MAT, 3, ff, d, E);
    if (hp->n_ff_shexp) {
        int64_t sf = hp->n_ff_shexp;
        B(gate_inp_shexp, "ffn_gate_inp_shexp.weight", true, T_VEC, 1, d, 0, 0);
        B(gate_shexp, "ffn_gate_shexp.weight", true, T_MAT, 2, d, sf, 0);
        B(up_shexp, "ffn_up_shexp.weight", true, T_MAT, 2, d, sf, 0);
        B(down_shexp, "ffn_down_shexp.weight", true, T_MAT, 2, sf, d, 0);
    }
#undef B
    /* The expert executor walks gate/up with one activation row per token,
     * so gate and up must pair with the same activation type. */
    if (kern_vec_dot_type(L->gate_exps->type) != kern_vec_dot_type(L->up_exps->type))
        return moed_err_set(e, MOED_EUNSUPPORTED,
                            "blk.%d: ffn_gate_exps (%s) and ffn_up_exps (%s) need different "
                            "activation types",
                            il, kern_type_name(L->gate_exps->type),
                            kern_type_name(L->up_exps->type));
    return 0;
}

static int model_bind(struct model *m, const struct gguf *g, struct moed_err *e)
{
    m->gguf = g;
    int rc = load_hparams(m, g, e);
    if (rc)
        return rc;
    struct model_hparams *hp = &m->hp;

    /* the vocabulary size comes from the embedding matrix */
    const struct gguf_tensor *te = gguf_find_tensor(g, "token_embd.weight");
    if (!te)
        return moed_err_set(e, MOED_ENOTFOUND, "tensor 'token_embd.weight' not found");
    if (te->ne[1] < 1 || te->ne[1] > INT32_MAX)
        return moed_err_set(e, MOED_EFORMAT, "tensor 'token_embd.weight' has %" PRId64 " rows",
                            te->ne[1]);
    hp->n_vocab = (int32_t)te->ne[1];
    if ((rc = bind(m, &m->tok_embd, "token_embd.weight", true, T_MAT, 2, hp->n_embd, hp->n_vocab, 0,
                   e)) ||
        (rc =
             bind(m, &m->output_norm, "output_norm.weight", true, T_VEC, 1, hp->n_embd, 0, 0, e)) ||
        (rc = bind(m, &m->output, "output.weight", false, T_MAT, 2, hp->n_embd, hp->n_vocab, 0, e)))
        return rc;
    if (!m->output) /* tied embeddings */
        m->output = m->tok_embd;

    m->layers = calloc((size_t)hp->n_layer, sizeof *m->layers);
    if (!m->layers)
        return moed_err_set(e, MOED_ENOMEM, "out of memory for %d layers", hp->n_layer);
    for (int il = 0; il < hp->n_layer; il++)
        if ((rc = bind_layer(m, il, e)))
            return rc;
    return 0;
}

int model_init(struct model *m, const struct gguf *g, struct moed_err *e)
{
    memset(m, 0, sizeof *m);
    int rc = model_bind(m, g, e);
    if (rc)
        model_close(m);
    return rc;
}

int model_open(struct model *m, const char *path, struct moed_err *e)
{
    memset(m, 0, sizeof *m);
    int rc = gguf_open(&m->own, path, e);
    if (rc)
        return rc;
    m->owns_gguf = true;
    rc = model_bind(m, &m->own, e);
    if (rc) {
        model_close(m);
        return moed_err_wrap(e, "%s", path);
    }
    return 0;
}

void model_close(struct model *m)
{
    free(m->layers);
    if (m->owns_gguf)
        gguf_close(&m->own);
    memset(m, 0, sizeof *m);
}

uint64_t model_weight_bytes(const struct model *m)
{
    uint64_t n = m->tok_embd->nbytes + m->output_norm->nbytes;
    if (m->output != m->tok_embd)
        n += m->output->nbytes;
    for (int il = 0; il < m->hp.n_layer; il++) {
        const struct model_layer *L = &m->layers[il];
        const struct gguf_tensor *t[] = {
            L->attn_norm,  L->wq,       L->wk,        L->wv,
            L->wo,         L->bq,       L->bk,        L->bv,
            L->q_norm,     L->k_norm,   L->ffn_norm,  L->router,
            L->gate_exps,  L->up_exps,  L->down_exps, L->gate_inp_shexp,
            L->gate_shexp, L->up_shexp, L->down_shexp};
        for (size_t i = 0; i < sizeof t / sizeof *t; i++)
            n += t[i] ? t[i]->nbytes : 0;
    }
    return n;
}
