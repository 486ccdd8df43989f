/*
 * moed-mkmodel: the tensors and metadata of a spec, named, shaped, typed and
 * ordered exactly as tools/hf2gguf.py writes a converted checkpoint of the
 * same architecture (tools/README.md has the table), and the tokenizer.
 *
 * Order: token_embd.weight, then each layer's blk.N.* sorted by name, then
 * output.weight and output_norm.weight; keys: general.architecture,
 * general.name, the <arch>.* hyper-parameters in hf2gguf's order,
 * general.file_type, general.quantization_version, tokenizer.*.
 *
 * The header's size is counted while it is built, so that --dry-run can
 * give the file's exact size without writing it.
 */
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/types.h"
#include "tools/mkmodel_impl.h"

/* ---- tensors ------------------------------------------------------------- */

/* llama.cpp's fallback for k-quants on rows that are not a multiple of 256
 * (llama_tensor_get_type; IQ4_NL, its choice for Q2_K/Q3_K, is not a type
 * moed generates: Q4_0, its fallback before IQ4_NL existed). */
static uint32_t fallback_type(uint32_t type, int64_t ne0)
{
    const struct kern_type_traits *tr = kern_type_traits(type);
    if (ne0 % tr->blck == 0)
        return type;
    switch (type) {
    case KT_Q2_K: case KT_Q3_K: type = KT_Q4_0; break;
    case KT_Q4_K: type = KT_Q5_0; break;
    case KT_Q5_K: type = KT_Q5_1; break;
    case KT_Q6_K: type = KT_Q8_0; break;
    default: type = KT_F16; break;
    }
    return ne0 % kern_type_traits(type)->blck == 0 ? type : KT_F16;
}

struct warned {
    uint32_t from, to;
    int64_t ne0;
};

static int add(struct mkm_plan *p, const struct mkm_spec *s, struct warned *wd, size_t *n_wd,
               const char *name, uint32_t n_dims, int64_t ne0, int64_t ne1, int64_t ne2,
               enum mkm_group g, enum mkm_fill fill, double sigma, struct moed_err *e)
{
    if (p->n == p->cap) {
        size_t cap = p->cap ? 2 * p->cap : 64;
        struct mkm_tensor *nt = realloc(p->t, cap * sizeof *nt);
        if (!nt)
            return moed_err_set(e, MOED_ENOMEM, "tensor plan: out of memory");
        p->t = nt;
        p->cap = cap;
    }
    struct mkm_tensor *t = &p->t[p->n];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->n_dims = n_dims;
    t->ne[0] = ne0;
    t->ne[1] = ne1;
    t->ne[2] = ne2;
    uint32_t want = (uint32_t)s->type[g];
    t->type = fallback_type(want, ne0);
    if (t->type != want && s->log) {
        bool seen = false;
        for (size_t i = 0; i < *n_wd; i++)
            seen |= wd[i].from == want && wd[i].to == t->type && wd[i].ne0 == ne0;
        if (!seen) {
            fprintf(s->log, "moed-mkmodel: warning: %s: rows of %" PRId64 " are not a multiple "
                    "of %s's %u: %s instead (and for the other tensors like it)\n", name, ne0,
                    kern_type_name(want), kern_type_traits(want)->blck, kern_type_name(t->type));
            if (*n_wd < 16)
                wd[(*n_wd)++] = (struct warned){want, t->type, ne0};
        }
    }
    t->fill = fill;
    t->sigma = (float)sigma;
    t->seed = mkm_mix(mkm_hash(name) ^ mkm_mix(s->seed + 0x9E3779B97F4A7C15ull));
    t->nrows = (uint64_t)ne1 * (uint64_t)ne2;
    t->row_bytes = kern_row_size(t->type, ne0);
    if (!t->row_bytes || __builtin_mul_overflow(t->nrows, (uint64_t)t->row_bytes, &t->nbytes))
        return moed_err_set(e, MOED_EINVAL, "%s: %s tensor of {%" PRId64 ", %" PRId64 ", %" PRId64
                            "} has no valid size", name, kern_type_name(t->type), ne0, ne1, ne2);
    p->n++;
    return 0;
}

static int cmp_name(const void *a, const void *b)
{
    return strcmp(((const struct mkm_tensor *)a)->name, ((const struct mkm_tensor *)b)->name);
}

int mkm_plan_build(struct mkm_plan *p, const struct mkm_spec *s, struct moed_err *e)
{
    memset(p, 0, sizeof *p);
    struct warned wd[16];
    size_t n_wd = 0;
    const int64_t d = s->n_embd, hd = s->head_dim, nq = (int64_t)s->n_head * hd,
                  nkv = (int64_t)s->n_head_kv * hd, ne = s->n_expert, ff = s->n_ff_exp,
                  fs = s->n_ff_shexp, nv = s->n_vocab;
    const double sd = 1 / sqrt((double)d);
    char nm[MKM_NAME_MAX];
    int rc = add(p, s, wd, &n_wd, "token_embd.weight", 2, d, nv, 1, MKM_G_EMBD, MKM_FILL_MATRIX,
                 sd, e);
    for (uint32_t l = 0; l < s->n_layer && !rc; l++) {
        size_t first = p->n;
#define T(suffix, nd, a, b, c, g, fill, sigma)                                                \
    do {                                                                                      \
        snprintf(nm, sizeof nm, "blk.%u." suffix, l);                                         \
        if (!rc)                                                                              \
            rc = add(p, s, wd, &n_wd, nm, nd, a, b, c, g, fill, sigma, e);                    \
    } while (0)
        T("attn_norm.weight", 1, d, 1, 1, MKM_G_NORM, MKM_FILL_NORM, 0);
        T("attn_q.weight", 2, d, nq, 1, MKM_G_ATTN, MKM_FILL_MATRIX, sd);
        T("attn_k.weight", 2, d, nkv, 1, MKM_G_ATTN, MKM_FILL_MATRIX, sd);
        T("attn_v.weight", 2, d, nkv, 1, MKM_G_ATTN, MKM_FILL_MATRIX, sd);
        T("attn_output.weight", 2, nq, d, 1, MKM_G_ATTN, MKM_FILL_MATRIX, 1 / sqrt((double)nq));
        if (s->arch == MKM_QWEN2MOE) {
            T("attn_q.bias", 1, nq, 1, 1, MKM_G_NORM, MKM_FILL_MATRIX, MKM_BIAS_STD);
            T("attn_k.bias", 1, nkv, 1, 1, MKM_G_NORM, MKM_FILL_MATRIX, MKM_BIAS_STD);
            T("attn_v.bias", 1, nkv, 1, 1, MKM_G_NORM, MKM_FILL_MATRIX, MKM_BIAS_STD);
        }
        if (s->arch == MKM_QWEN3MOE) {
            T("attn_q_norm.weight", 1, hd, 1, 1, MKM_G_NORM, MKM_FILL_NORM, 0);
            T("attn_k_norm.weight", 1, hd, 1, 1, MKM_G_NORM, MKM_FILL_NORM, 0);
        } else if (s->arch == MKM_OLMOE) {
            T("attn_q_norm.weight", 1, nq, 1, 1, MKM_G_NORM, MKM_FILL_NORM, 0);
            T("attn_k_norm.weight", 1, nkv, 1, 1, MKM_G_NORM, MKM_FILL_NORM, 0);
        }
        T("ffn_norm.weight", 1, d, 1, 1, MKM_G_NORM, MKM_FILL_NORM, 0);
        T("ffn_gate_inp.weight", 2, d, ne, 1, MKM_G_ROUTER, MKM_FILL_MATRIX, sd);
        T("ffn_gate_exps.weight", 3, d, ff, ne, MKM_G_EXPERTS, MKM_FILL_MATRIX, sd);
        T("ffn_up_exps.weight", 3, d, ff, ne, MKM_G_EXPERTS, MKM_FILL_MATRIX, sd);
        T("ffn_down_exps.weight", 3, ff, d, ne, MKM_G_EXPERTS, MKM_FILL_MATRIX,
          1 / sqrt((double)ff));
        if (s->arch == MKM_QWEN2MOE) {
            T("ffn_gate_inp_shexp.weight", 1, d, 1, 1, MKM_G_NORM, MKM_FILL_MATRIX, sd);
            T("ffn_gate_shexp.weight", 2, d, fs, 1, MKM_G_SHEXP, MKM_FILL_MATRIX, sd);
            T("ffn_up_shexp.weight", 2, d, fs, 1, MKM_G_SHEXP, MKM_FILL_MATRIX, sd);
            T("ffn_down_shexp.weight", 2, fs, d, 1, MKM_G_SHEXP, MKM_FILL_MATRIX,
              1 / sqrt((double)fs));
        }
#undef T
        if (!rc)
            qsort(p->t + first, p->n - first, sizeof *p->t, cmp_name);
    }
    if (!rc && !s->tied)
        rc = add(p, s, wd, &n_wd, "output.weight", 2, d, nv, 1, MKM_G_OUTPUT, MKM_FILL_MATRIX, sd,
                 e);
    if (!rc)
        rc = add(p, s, wd, &n_wd, "output_norm.weight", 1, d, 1, 1, MKM_G_NORM, MKM_FILL_NORM, 0,
                 e);
    if (rc)
        mkm_plan_free(p);
    return rc;
}

void mkm_plan_free(struct mkm_plan *p)
{
    free(p->t);
    memset(p, 0, sizeof *p);
}

/* ---- seeds ----------------------------------------------------------------- */

uint64_t mkm_hash(const char *s) /* FNV-1a, mixed */
{
    uint64_t h = 0xCBF29CE484222325ull;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 0x100000001B3ull;
    return mkm_mix(h);
}

/* ---- metadata -------------------------------------------------------------- */

/* The writer plus the header bytes counted so far. */
struct meta {
    struct gguf_writer *w;
    uint64_t bytes;
};

static size_t elem_size(enum gguf_vtype t)
{
    switch (t) {
    case GGUF_U8: case GGUF_I8: case GGUF_BOOL: return 1;
    case GGUF_U16: case GGUF_I16: return 2;
    case GGUF_U32: case GGUF_I32: case GGUF_F32: return 4;
    case GGUF_U64: case GGUF_I64: case GGUF_F64: return 8;
    default: return 0;
    }
}

/* Serialised size of a value (without its type tag). */
static uint64_t value_size(const struct gguf_value *v)
{
    if (v->type == GGUF_STRING)
        return 8 + v->v.str.len;
    if (v->type != GGUF_ARRAY)
        return elem_size(v->type);
    uint64_t n = 4 + 8;
    size_t es = elem_size(v->v.arr.elem);
    if (es)
        return n + v->v.arr.n * es;
    for (uint64_t i = 0; i < v->v.arr.n; i++)
        n += value_size(&v->v.arr.items[i]);
    return n;
}

static void count_key(struct meta *m, size_t klen, uint64_t vbytes)
{
    m->bytes += 8 + klen + 4 + vbytes;
}

static void put_u32(struct meta *m, const char *key, uint32_t v)
{
    gguf_writer_set_u32(m->w, key, v);
    count_key(m, strlen(key), 4);
}

static void put_f32(struct meta *m, const char *key, float v)
{
    gguf_writer_set_f32(m->w, key, v);
    count_key(m, strlen(key), 4);
}

static void put_bool(struct meta *m, const char *key, bool v)
{
    gguf_writer_set_bool(m->w, key, v);
    count_key(m, strlen(key), 1);
}

static void put_str(struct meta *m, const char *key, const char *v)
{
    gguf_writer_set_str(m->w, key, v);
    count_key(m, strlen(key), 8 + strlen(v));
}

static void put_kv(struct meta *m, const struct gguf_kv *kv)
{
    gguf_writer_set_kv(m->w, kv);
    count_key(m, (size_t)kv->key.len, value_size(&kv->val));
}

/* llama_ftype of the bulk (the experts' type): informative only. */
static uint32_t file_type(uint32_t t)
{
    switch (t) {
    case KT_F32: return 0;
    case KT_F16: return 1;
    case KT_Q4_0: return 2;
    case KT_Q4_1: return 3;
    case KT_Q8_0: return 7;
    case KT_Q5_0: return 8;
    case KT_Q5_1: return 9;
    case KT_Q2_K: return 10;
    case KT_Q3_K: return 12; /* Q3_K_M */
    case KT_Q4_K: return 15; /* Q4_K_M */
    case KT_Q5_K: return 17; /* Q5_K_M */
    case KT_Q6_K: return 18;
    case KT_BF16: return 32;
    default: return 0;
    }
}

/* Arrays indexed by token id, and what a padding token gets in them. */
enum pad_kind { PAD_NONE, PAD_TOKENS, PAD_TYPE, PAD_SCORE };

static enum pad_kind pad_kind_of(struct gguf_str key)
{
    if (gguf_str_eq(key, "tokenizer.ggml.tokens"))
        return PAD_TOKENS;
    if (gguf_str_eq(key, "tokenizer.ggml.token_type"))
        return PAD_TYPE;
    if (gguf_str_eq(key, "tokenizer.ggml.scores"))
        return PAD_SCORE;
    return PAD_NONE;
}

#define TOKEN_TYPE_UNUSED 5 /* llama.cpp's padding tokens: "[PAD<id>]", unused */
#define TOKEN_TYPE_NORMAL 1
#define TOKEN_TYPE_CONTROL 3

/* kv padded from n to n_vocab entries. */
static int put_padded(struct meta *m, const char *path, const struct gguf_kv *kv, uint64_t n,
                      uint32_t n_vocab, struct moed_err *e)
{
    enum pad_kind pk = pad_kind_of(kv->key);
    const struct gguf_value *v = &kv->val;
    if (v->type != GGUF_ARRAY || v->v.arr.n != n)
        return moed_err_set(e, MOED_EFORMAT, "--vocab-from %s: %.*s is not an array of the %"
                            PRIu64 " tokens", path, (int)kv->key.len, kv->key.ptr, n);
    struct gguf_kv nk = {kv->key, {.type = GGUF_ARRAY}};
    nk.val.v.arr.elem = v->v.arr.elem;
    nk.val.v.arr.n = n_vocab;
    if (pk == PAD_TOKENS) {
        if (v->v.arr.elem != GGUF_STRING)
            return moed_err_set(e, MOED_EFORMAT, "--vocab-from %s: tokenizer.ggml.tokens is not "
                                "an array of strings", path);
        struct gguf_value *items = calloc(n_vocab, sizeof *items);
        char *names = malloc((size_t)(n_vocab - n) * 16 + 1);
        if (!items || !names) {
            free(items);
            free(names);
            return moed_err_set(e, MOED_ENOMEM, "tokenizer: out of memory");
        }
        memcpy(items, v->v.arr.items, (size_t)n * sizeof *items);
        char *q = names;
        for (uint64_t i = n; i < n_vocab; i++) {
            int len = sprintf(q, "[PAD%" PRIu64 "]", i);
            items[i] = (struct gguf_value){.type = GGUF_STRING, .v.str = {q, (uint64_t)len}};
            q += len;
        }
        nk.val.v.arr.items = items;
        put_kv(m, &nk);
        free(items);
        free(names);
        return 0;
    }
    size_t es = elem_size(v->v.arr.elem);
    bool is_float = v->v.arr.elem == GGUF_F32 || v->v.arr.elem == GGUF_F64;
    if (!es || (pk == PAD_TYPE) == is_float || v->v.arr.elem == GGUF_BOOL)
        return moed_err_set(e, MOED_EFORMAT, "--vocab-from %s: %.*s is an array of %s",
                            path, (int)kv->key.len, kv->key.ptr,
                            gguf_vtype_name(v->v.arr.elem));
    uint8_t *raw = malloc((size_t)n_vocab * es);
    if (!raw)
        return moed_err_set(e, MOED_ENOMEM, "tokenizer: out of memory");
    memcpy(raw, v->v.arr.raw, (size_t)n * es);
    for (uint64_t i = n; i < n_vocab; i++) {
        uint8_t *p = raw + i * es;
        if (v->v.arr.elem == GGUF_F32) {
            float x = -1000.0f; /* llama.cpp's score of a padding token */
            memcpy(p, &x, 4);
        } else if (v->v.arr.elem == GGUF_F64) {
            double x = -1000.0;
            memcpy(p, &x, 8);
        } else {
            uint64_t x = TOKEN_TYPE_UNUSED; /* little-endian: the low es bytes */
            memcpy(p, &x, es);
        }
    }
    nk.val.v.arr.raw = raw;
    put_kv(m, &nk);
    free(raw);
    return 0;
}

int mkm_vocab_count(const char *path, uint32_t *n_tok, struct moed_err *e)
{
    struct gguf g;
    int rc = gguf_open(&g, path, e);
    if (rc)
        return moed_err_wrap(e, "--vocab-from");
    const struct gguf_value *tokens;
    rc = gguf_get_arr(&g, "tokenizer.ggml.tokens", GGUF_STRING, &tokens, e);
    if (rc == 0 && !gguf_find(&g, "tokenizer.ggml.model"))
        rc = moed_err_set(e, MOED_EFORMAT, "no tokenizer.ggml.model");
    if (rc == 0 && (tokens->v.arr.n == 0 || tokens->v.arr.n > (1u << 24)))
        rc = moed_err_set(e, MOED_EFORMAT, "tokenizer.ggml.tokens has %" PRIu64 " tokens",
                          tokens->v.arr.n);
    if (rc == 0)
        *n_tok = (uint32_t)tokens->v.arr.n;
    gguf_close(&g);
    if (rc)
        return moed_err_wrap(e, "--vocab-from %s", path);
    return 0;
}

/* Every tokenizer.* key of path, the per-token arrays padded to n_vocab. */
static int copy_vocab(struct meta *m, const char *path, uint32_t n_vocab, uint32_t *n_tok,
                      struct moed_err *e)
{
    int rc = mkm_vocab_count(path, n_tok, e);
    if (rc)
        return rc;
    if (*n_tok > n_vocab)
        return moed_err_set(e, MOED_EINVAL, "--vocab-from %s: the tokenizer has %u tokens, more "
                            "than the model's vocabulary of %u", path, *n_tok, n_vocab);
    struct gguf g;
    if ((rc = gguf_open(&g, path, e)))
        return moed_err_wrap(e, "--vocab-from");
    for (uint64_t i = 0; i < g.n_kv && !rc; i++) {
        const struct gguf_kv *kv = &g.kv[i];
        if (kv->key.len < 10 || memcmp(kv->key.ptr, "tokenizer.", 10) != 0)
            continue;
        if (pad_kind_of(kv->key) != PAD_NONE)
            rc = put_padded(m, path, kv, *n_tok, n_vocab, e);
        else
            put_kv(m, kv);
    }
    gguf_close(&g);
    return rc;
}

/* Byte-level BPE with no merges: GPT-2's 256 byte characters (id = byte)
 * and <|endoftext|>, so that every text encodes and decodes. */
static int builtin_vocab(struct meta *m, uint32_t n_vocab, uint32_t *n_tok, struct moed_err *e)
{
    *n_tok = MKM_BUILTIN_TOKENS;
    char **tok = calloc(n_vocab, sizeof *tok);
    char *text = malloc((size_t)n_vocab * 16);
    int32_t *type = malloc((size_t)n_vocab * sizeof *type);
    if (!tok || !text || !type) {
        free(tok);
        free(text);
        free(type);
        return moed_err_set(e, MOED_ENOMEM, "tokenizer: out of memory");
    }
    char *q = text;
    uint32_t extra = 0;
    for (uint32_t b = 0; b < 256; b++) {
        /* GPT-2's bytes_to_unicode: printable Latin-1 maps to itself,
         * the other bytes to U+0100 onwards in byte order */
        bool keep = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
        uint32_t cp = keep ? b : 256 + extra++;
        tok[b] = q;
        if (cp < 0x80) {
            *q++ = (char)cp;
        } else {
            *q++ = (char)(0xC0 | (cp >> 6));
            *q++ = (char)(0x80 | (cp & 0x3F));
        }
        *q++ = '\0';
        type[b] = TOKEN_TYPE_NORMAL;
    }
    tok[256] = "<|endoftext|>";
    type[256] = TOKEN_TYPE_CONTROL;
    for (uint32_t i = MKM_BUILTIN_TOKENS; i < n_vocab; i++) {
        tok[i] = q;
        q += sprintf(q, "[PAD%u]", i) + 1;
        type[i] = TOKEN_TYPE_UNUSED;
    }
    put_str(m, "tokenizer.ggml.model", "gpt2");
    put_str(m, "tokenizer.ggml.pre", "gpt-2");
    gguf_writer_set_arr_str(m->w, "tokenizer.ggml.tokens", (const char *const *)tok, n_vocab);
    uint64_t bytes = 4 + 8;
    for (uint32_t i = 0; i < n_vocab; i++)
        bytes += 8 + strlen(tok[i]);
    count_key(m, strlen("tokenizer.ggml.tokens"), bytes);
    gguf_writer_set_arr(m->w, "tokenizer.ggml.token_type", GGUF_I32, type, n_vocab);
    count_key(m, strlen("tokenizer.ggml.token_type"), 4 + 8 + 4ull * n_vocab);
    gguf_writer_set_arr_str(m->w, "tokenizer.ggml.merges", NULL, 0);
    count_key(m, strlen("tokenizer.ggml.merges"), 4 + 8);
    put_u32(m, "tokenizer.ggml.bos_token_id", 256);
    put_u32(m, "tokenizer.ggml.eos_token_id", 256);
    put_bool(m, "tokenizer.ggml.add_bos_token", false);
    put_bool(m, "tokenizer.ggml.add_eos_token", false);
    free(tok);
    free(text);
    free(type);
    return 0;
}

int mkm_meta_set(struct gguf_writer *w, const struct mkm_spec *s, const struct mkm_plan *p,
                 uint32_t *n_tok, uint64_t *header_bytes, struct moed_err *e)
{
    struct meta m = {w, 4 + 4 + 8 + 8};
    const char *a = mkm_arch_name(s->arch);
    char k[128], desc[160];
#define KEY(suffix) (snprintf(k, sizeof k, "%s." suffix, a), k)
    put_str(&m, "general.architecture", a);
    put_str(&m, "general.name", s->name);
    snprintf(desc, sizeof desc, "random weights: moed-mkmodel --preset %s --seed %" PRIu64
             " --init %s", s->preset, s->seed, s->init == MKM_INIT_BLOCKS ? "blocks" : "gauss");
    put_str(&m, "general.description", desc);
    uint32_t align = s->alignment ? s->alignment : GGUF_DEFAULT_ALIGNMENT;
    if (align != GGUF_DEFAULT_ALIGNMENT)
        put_u32(&m, "general.alignment", align);
    /* the order of hf2gguf.py's set_model_params */
    put_u32(&m, KEY("block_count"), s->n_layer);
    put_u32(&m, KEY("context_length"), s->n_ctx);
    put_u32(&m, KEY("embedding_length"), s->n_embd);
    put_u32(&m, KEY("feed_forward_length"), s->n_ff);
    put_u32(&m, KEY("attention.head_count"), s->n_head);
    put_u32(&m, KEY("attention.head_count_kv"), s->n_head_kv);
    put_f32(&m, KEY("rope.freq_base"), s->rope_theta);
    put_f32(&m, KEY("attention.layer_norm_rms_epsilon"), s->rms_eps);
    put_u32(&m, KEY("expert_count"), s->n_expert);
    put_u32(&m, KEY("expert_used_count"), s->n_expert_used);
    if (s->explicit_head_dim) {
        put_u32(&m, KEY("attention.key_length"), s->head_dim);
        put_u32(&m, KEY("attention.value_length"), s->head_dim);
    }
    if (s->arch == MKM_QWEN2MOE || s->arch == MKM_QWEN3MOE)
        put_u32(&m, KEY("expert_feed_forward_length"), s->n_ff_exp);
    if (s->arch == MKM_QWEN2MOE)
        put_u32(&m, KEY("expert_shared_feed_forward_length"), s->n_ff_shexp);
    if (s->arch == MKM_LLAMA) {
        put_u32(&m, KEY("vocab_size"), s->n_vocab);
        put_u32(&m, KEY("rope.dimension_count"), s->head_dim);
    }
    put_bool(&m, KEY("expert_weights_norm"), s->expert_weights_norm);
#undef KEY
    put_u32(&m, "general.file_type", file_type((uint32_t)s->type[MKM_G_EXPERTS]));
    put_u32(&m, "general.quantization_version", 2);
    int rc = 0;
    *n_tok = 0;
    if (s->vocab_from) {
        rc = copy_vocab(&m, s->vocab_from, s->n_vocab, n_tok, e);
    } else if (!s->no_vocab) {
        rc = builtin_vocab(&m, s->n_vocab, n_tok, e);
    } else {
        /* hf2gguf.py's checkpoint without tokenizer files: llama.cpp's vocab
         * type NONE, the size in <arch>.vocab_size (llama has it already) */
        if (s->arch != MKM_LLAMA) {
            snprintf(k, sizeof k, "%s.vocab_size", a);
            put_u32(&m, k, s->n_vocab);
        }
        put_str(&m, "tokenizer.ggml.model", "none");
    }
    if (rc)
        return rc;
    for (size_t i = 0; i < p->n; i++) {
        const struct mkm_tensor *t = &p->t[i];
        gguf_writer_add_tensor(w, t->name, t->type, t->n_dims, t->ne, NULL);
        m.bytes += 8 + strlen(t->name) + 4 + 8ull * t->n_dims + 4 + 8;
    }
    const char *werr = gguf_writer_error(w);
    if (werr)
        return moed_err_set(e, MOED_EINVAL, "%s", werr);
    if (p->n)
        m.bytes = (m.bytes + align - 1) / align * align;
    *header_bytes = m.bytes;
    return 0;
}
