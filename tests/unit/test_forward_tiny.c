/* Tiny random models for tests (test_forward_tiny.h). */
#include "tests/unit/test_forward_tiny.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/quant.h"
#include "tools/mkmodel.h"

struct tiny_spec tiny_default(enum model_arch arch, uint32_t wtype)
{
    return (struct tiny_spec){.arch = arch,
                              .wtype = wtype,
                              .n_layer = 2,
                              .n_embd = 64,
                              .n_head = 4,
                              .n_head_kv = 2,
                              .head_dim = 16,
                              .n_expert = 8,
                              .n_used = 2,
                              .n_ff = 32,
                              .n_ff_shexp = arch == MODEL_ARCH_QWEN2MOE ? 64 : 0,
                              .n_vocab = 96,
                              .norm_topk = -1,
                              .seed = 1};
}

struct builder {
    const struct tiny_spec *s;
    struct gguf_writer *w;
    uint64_t rng;
    void *bufs[512];
    int n_bufs;
    int rc;
};

static float frand(struct builder *b) /* uniform in [-1, 1) */
{
    b->rng ^= b->rng << 13;
    b->rng ^= b->rng >> 7;
    b->rng ^= b->rng << 17;
    return (float)((b->rng >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

/* A tensor of n_dims dims; vec: F32 values around center +- amp; otherwise
 * a matrix of the spec's type with values +- 1/sqrt(ne0). */
static void add(struct builder *b, const char *name, int n_dims, int64_t ne0, int64_t ne1,
                int64_t ne2, float center, float amp)
{
    if (b->rc || (b->s->skip && !strcmp(name, b->s->skip)))
        return;
    int64_t ne[3] = {ne0, ne1, ne2};
    bool vec = n_dims == 1 || amp > 0;
    uint32_t type = vec ? KT_F32 : b->s->wtype;
    if (!vec)
        amp = 1.0f / sqrtf((float)ne0);
    if (b->s->reshape && !strcmp(name, b->s->reshape))
        ne[0] *= 2;
    int64_t rows = 1;
    for (int i = 1; i < n_dims; i++)
        rows *= ne[i];
    float *f = malloc(sizeof(float) * (size_t)(ne[0] * rows));
    size_t rs = kern_row_size(type, ne[0]);
    uint8_t *data = malloc(rs * (size_t)rows);
    for (int64_t i = 0; i < ne[0] * rows; i++)
        f[i] = center + amp * frand(b);
    for (int64_t r = 0; r < rows; r++)
        kern_quant_row_ref(type, f + r * ne[0], data + (size_t)r * rs, ne[0]);
    free(f);
    b->bufs[b->n_bufs++] = data;
    b->rc = gguf_writer_add_tensor(b->w, name, type, (uint32_t)n_dims, ne, data);
}

static void key_u32(struct builder *b, const char *name, uint32_t v)
{
    char k[96];
    snprintf(k, sizeof k, "%s.%s", model_arch_name(b->s->arch), name);
    if (!(b->s->skip_key && !strcmp(name, b->s->skip_key)))
        gguf_writer_set_u32(b->w, k, v);
}

int tiny_build(const struct tiny_spec *s, uint8_t **buf, size_t *size)
{
    struct builder b = {.s = s, .rng = s->seed * 0x9e3779b97f4a7c15ull + 7};
    b.w = gguf_writer_new(3);
    if (!b.w)
        return MOED_ENOMEM;
    const char *a = model_arch_name(s->arch);
    gguf_writer_set_str(b.w, "general.architecture", a);
    key_u32(&b, "block_count", (uint32_t)s->n_layer);
    key_u32(&b, "context_length", 256);
    key_u32(&b, "embedding_length", (uint32_t)s->n_embd);
    key_u32(&b, "attention.head_count", (uint32_t)s->n_head);
    key_u32(&b, "attention.head_count_kv", (uint32_t)s->n_head_kv);
    key_u32(&b, "attention.key_length", (uint32_t)s->head_dim);
    key_u32(&b, "attention.value_length", (uint32_t)s->head_dim);
    key_u32(&b, "expert_count", (uint32_t)s->n_expert);
    key_u32(&b, "expert_used_count", (uint32_t)s->n_used);
    key_u32(&b, "expert_feed_forward_length", (uint32_t)s->n_ff);
    key_u32(&b, "feed_forward_length", (uint32_t)s->n_ff);
    if (s->n_ff_shexp)
        key_u32(&b, "expert_shared_feed_forward_length", (uint32_t)s->n_ff_shexp);
    char k[96];
    snprintf(k, sizeof k, "%s.attention.layer_norm_rms_epsilon", a);
    gguf_writer_set_f32(b.w, k, 1e-6f);
    snprintf(k, sizeof k, "%s.rope.freq_base", a);
    gguf_writer_set_f32(b.w, k, 10000.0f);
    if (s->norm_topk >= 0) {
        snprintf(k, sizeof k, "%s.expert_weights_norm", a);
        gguf_writer_set_bool(b.w, k, s->norm_topk);
    }

    int64_t d = s->n_embd, qd = (int64_t)s->n_head * s->head_dim,
            kvd = (int64_t)s->n_head_kv * s->head_dim, E = s->n_expert, ff = s->n_ff;
    add(&b, "token_embd.weight", 2, d, s->n_vocab, 0, 0, 0);
    char nm[96];
    for (int il = 0; il < s->n_layer; il++) {
#define T(suffix, n, a0, a1, a2, c, amp)                                                           \
    do {                                                                                           \
        snprintf(nm, sizeof nm, "blk.%d.%s", il, suffix);                                          \
        add(&b, nm, n, a0, a1, a2, c, amp);                                                        \
    } while (0)
        T("attn_norm.weight", 1, d, 0, 0, 1.0f, 0.1f);
        T("attn_q.weight", 2, d, qd, 0, 0, 0);
        T("attn_k.weight", 2, d, kvd, 0, 0, 0);
        T("attn_v.weight", 2, d, kvd, 0, 0, 0);
        T("attn_output.weight", 2, qd, d, 0, 0, 0);
        if (s->arch == MODEL_ARCH_QWEN2MOE) {
            T("attn_q.bias", 1, qd, 0, 0, 0, 0.1f);
            T("attn_k.bias", 1, kvd, 0, 0, 0, 0.1f);
            T("attn_v.bias", 1, kvd, 0, 0, 0, 0.1f);
        }
        if (s->arch == MODEL_ARCH_QWEN3MOE) {
            T("attn_q_norm.weight", 1, s->head_dim, 0, 0, 1.0f, 0.1f);
            T("attn_k_norm.weight", 1, s->head_dim, 0, 0, 1.0f, 0.1f);
        }
        if (s->arch == MODEL_ARCH_OLMOE) {
            T("attn_q_norm.weight", 1, qd, 0, 0, 1.0f, 0.1f);
            T("attn_k_norm.weight", 1, kvd, 0, 0, 1.0f, 0.1f);
        }
        T("ffn_norm.weight", 1, d, 0, 0, 1.0f, 0.1f);
        T("ffn_gate_inp.weight", 2, d, E, 0, 0, 0);
        T("ffn_gate_exps.weight", 3, d, ff, E, 0, 0);
        T("ffn_up_exps.weight", 3, d, ff, E, 0, 0);
        T("ffn_down_exps.weight", 3, ff, d, E, 0, 0);
        if (s->n_ff_shexp) {
            T("ffn_gate_inp_shexp.weight", 1, d, 0, 0, 0, 0.2f);
            T("ffn_gate_shexp.weight", 2, d, s->n_ff_shexp, 0, 0, 0);
            T("ffn_up_shexp.weight", 2, d, s->n_ff_shexp, 0, 0, 0);
            T("ffn_down_shexp.weight", 2, s->n_ff_shexp, d, 0, 0, 0);
        }
#undef T
    }
    add(&b, "output_norm.weight", 1, d, 0, 0, 1.0f, 0.1f);
    if (!s->tied)
        add(&b, "output.weight", 2, d, s->n_vocab, 0, 0, 0);

    struct moed_err e = {0};
    int rc = b.rc ? b.rc : gguf_writer_write_mem(b.w, buf, size, &e);
    gguf_writer_free(b.w);
    for (int i = 0; i < b.n_bufs; i++)
        free(b.bufs[i]);
    return rc;
}

int tiny_load(const struct tiny_spec *s, uint8_t **buf, struct gguf *g, struct model *m,
              struct moed_err *e)
{
    size_t size;
    *buf = NULL;
    int rc = tiny_build(s, buf, &size);
    if (rc)
        return moed_err_set(e, rc, "tiny_build failed");
    if ((rc = gguf_open_mem(g, *buf, size, e)))
        return rc;
    rc = model_init(m, g, e);
    if (rc)
        gguf_close(g);
    return rc;
}

/*
 * A copy of the GGUF at path in memory, every quantized tensor dequantized
 * to F32: the same weights, multiplied with F32 activations.  *buf holds
 * the file (free it after closing g).
 */
int tiny_load_dequantized(const char *path, uint8_t **buf, struct gguf *g, struct model *m,
                            struct moed_err *e)
{
    struct gguf src;
    int rc = gguf_open(&src, path, e);
    if (rc)
        return rc;
    struct gguf_writer *w = gguf_writer_new(3);
    float **data = calloc(src.n_tensors, sizeof *data);
    for (uint64_t i = 0; i < src.n_kv; i++)
        gguf_writer_set_kv(w, &src.kv[i]);
    for (uint64_t i = 0; i < src.n_tensors; i++) {
        const struct gguf_tensor *t = &src.tensors[i];
        char name[256];
        snprintf(name, sizeof name, "%.*s", (int)t->name.len, t->name.ptr);
        int64_t n = t->ne[0], rows = t->ne[1] * t->ne[2] * t->ne[3];
        data[i] = malloc(sizeof(float) * (size_t)(n * rows));
        size_t rs = kern_row_size(t->type, n);
        for (int64_t r = 0; r < rows; r++)
            kern_dequant_row_ref(t->type, (const uint8_t *)t->data + (size_t)r * rs,
                                 data[i] + r * n, n);
        gguf_writer_add_tensor(w, name, KT_F32, t->n_dims, t->ne, data[i]);
    }
    size_t size;
    rc = gguf_writer_write_mem(w, buf, &size, e);
    gguf_writer_free(w);
    for (uint64_t i = 0; i < src.n_tensors; i++)
        free(data[i]);
    free(data);
    gguf_close(&src);
    if (rc)
        return rc;
    if ((rc = gguf_open_mem(g, *buf, size, e)))
        return rc;
    if ((rc = model_init(m, g, e)))
        gguf_close(g);
    return rc;
}

int tiny_mkmodel(const char *path, const char *const *args, struct moed_err *e)
{
    char *argv[64];
    int argc = 0;
    argv[argc++] = "moed-mkmodel";
    argv[argc++] = "-o";
    argv[argc++] = (char *)path;
    argv[argc++] = "--quiet";
    for (; *args && argc < 62; args++)
        argv[argc++] = (char *)*args;
    argv[argc] = NULL;
    struct mkm_spec s;
    memset(&s, 0, sizeof s);
    int rc = mkm_parse_args(&s, argc, argv, stdout, e);
    if (rc)
        return rc;
    struct mkm_stats st;
    return mkm_write(&s, &st, e);
}
