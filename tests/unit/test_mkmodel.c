/*
 * moed-mkmodel (tools/mkmodel*.c), through the same entry points as the
 * command line (mkm_parse_args + mkm_write): every tiny preset writes a file
 * that the GGUF reader and the model loader accept, with exactly the
 * tensors (names, order, shapes, types) and keys tools/README.md lists for
 * its arch; same options give the same bytes for any thread count; random
 * blocks and quantized floats have the intended mean and spread for every
 * type; a deep model's forward pass stays finite; --vocab-from copies and
 * pads a tokenizer; bad options fail with messages naming them.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/quant.h"
#include "kernels/cpu/types.h"
#include "model/forward.h"
#include "model/gguf.h"
#include "model/model.h"
#include "model/tok.h"
#include "tests/unit/harness.h"
#include "tools/mkmodel.h"

#define MAXARGS 64

#define REQUIRE_ARGS(c)                                                                   \
    do {                                                                                      \
        if (!(c))                                                                             \
            return moed_err_set(e, MOED_EINVAL, "test: too many arguments");                  \
    } while (0)

/* mkm_parse_args + mkm_write on "moed-mkmodel [-o tmp/NAME] ARGS...". */
static int mk(const char *out_name, char *path, size_t path_size, struct mkm_stats *st,
              struct moed_err *e, const char *const *args)
{
    char *argv[MAXARGS];
    int argc = 0;
    argv[argc++] = "moed-mkmodel";
    if (out_name) {
        snprintf(path, path_size, "%s/%s", test_tmp_dir(), out_name);
        argv[argc++] = "-o";
        argv[argc++] = path;
    }
    for (; *args; args++) {
        REQUIRE_ARGS(argc < MAXARGS - 1);
        argv[argc++] = (char *)*args;
    }
    argv[argc] = NULL;
    struct mkm_spec s;
    memset(&s, 0, sizeof s);
    int rc = mkm_parse_args(&s, argc, argv, stdout, e);
    if (rc)
        return rc;
    struct mkm_stats st0;
    return mkm_write(&s, st ? st : &st0, e);
}

#define MK(name, path, st, e, ...)                                                           \
    mk(name, path, sizeof path, st, e, (const char *const[]){__VA_ARGS__, NULL})

static uint32_t get_u32(const struct gguf *g, const char *key)
{
    uint32_t v = 0;
    struct moed_err e = {0};
    const struct gguf_kv *kv = gguf_find(g, key);
    CHECK_MSG(kv && kv->val.type == GGUF_U32, "%s: missing or not u32", key);
    gguf_get_u32(g, key, &v, &e);
    return v;
}

static float get_f32(const struct gguf *g, const char *key)
{
    float v = 0;
    struct moed_err e = {0};
    const struct gguf_kv *kv = gguf_find(g, key);
    CHECK_MSG(kv && kv->val.type == GGUF_F32, "%s: missing or not f32", key);
    gguf_get_f32(g, key, &v, &e);
    return v;
}

/* ---- the expected layout, written independently of the generator ---------- */

struct want {
    char name[64];
    uint32_t n_dims;
    int64_t ne[3];
    uint32_t type;
};

struct arch_want {
    const char *preset, *arch;
    int layers, d, heads, kv, hd, experts, used, ff, ff_exp, shexp, ctx;
    bool norm, key_length;
    uint32_t t_exp, t_attn, t_embd, t_out;
};

static const struct arch_want tiny[] = {
    {"tiny-qwen3moe", "qwen3moe", 3, 128, 8, 2, 32, 16, 4, 384, 64, 0, 4096, true, true,
     KT_Q4_0, KT_Q8_0, KT_Q8_0, KT_Q8_0},
    {"tiny-qwen2moe", "qwen2moe", 2, 128, 4, 2, 32, 8, 2, 256, 64, 128, 4096, false, false,
     KT_Q8_0, KT_F16, KT_F16, KT_F16},
    {"tiny-mixtral", "llama", 2, 64, 4, 2, 16, 8, 2, 128, 128, 0, 4096, true, false,
     KT_Q4_0, KT_F16, KT_F16, KT_F16},
    {"tiny-olmoe", "olmoe", 2, 64, 4, 4, 16, 8, 2, 64, 64, 0, 4096, false, false,
     KT_F32, KT_F32, KT_F32, KT_F32},
};

static void push(struct want *w, size_t *n, const char *name, uint32_t nd, int64_t a, int64_t b,
                 int64_t c, uint32_t type)
{
    w[*n] = (struct want){"", nd, {a, b, c}, type};
    snprintf(w[*n].name, sizeof w[*n].name, "%s", name);
    (*n)++;
}

static int cmp_want(const void *a, const void *b)
{
    return strcmp(((const struct want *)a)->name, ((const struct want *)b)->name);
}

/* tools/README.md's table for one arch, in hf2gguf.py's order. */
static size_t expected(const struct arch_want *a, int vocab, struct want *w)
{
    size_t n = 0;
    char nm[64];
    int64_t d = a->d, q = (int64_t)a->heads * a->hd, k = (int64_t)a->kv * a->hd;
    bool q2 = !strcmp(a->arch, "qwen2moe"), q3 = !strcmp(a->arch, "qwen3moe"),
         ol = !strcmp(a->arch, "olmoe");
    push(w, &n, "token_embd.weight", 2, d, vocab, 1, a->t_embd);
    for (int l = 0; l < a->layers; l++) {
        size_t first = n;
#define P(s, nd, x, y, z, t)                                                                  \
    do {                                                                                      \
        snprintf(nm, sizeof nm, "blk.%d.%s", l, s);                                           \
        push(w, &n, nm, nd, x, y, z, t);                                                      \
    } while (0)
        P("attn_norm.weight", 1, d, 1, 1, KT_F32);
        P("ffn_norm.weight", 1, d, 1, 1, KT_F32);
        P("attn_q.weight", 2, d, q, 1, a->t_attn);
        P("attn_k.weight", 2, d, k, 1, a->t_attn);
        P("attn_v.weight", 2, d, k, 1, a->t_attn);
        P("attn_output.weight", 2, q, d, 1, a->t_attn);
        if (q2) {
            P("attn_q.bias", 1, q, 1, 1, KT_F32);
            P("attn_k.bias", 1, k, 1, 1, KT_F32);
            P("attn_v.bias", 1, k, 1, 1, KT_F32);
            P("ffn_gate_inp_shexp.weight", 1, d, 1, 1, KT_F32);
            P("ffn_gate_shexp.weight", 2, d, a->shexp, 1, a->t_exp);
            P("ffn_up_shexp.weight", 2, d, a->shexp, 1, a->t_exp);
            P("ffn_down_shexp.weight", 2, a->shexp, d, 1, a->t_exp);
        }
        if (q3) {
            P("attn_q_norm.weight", 1, a->hd, 1, 1, KT_F32);
            P("attn_k_norm.weight", 1, a->hd, 1, 1, KT_F32);
        }
        if (ol) {
            P("attn_q_norm.weight", 1, q, 1, 1, KT_F32);
            P("attn_k_norm.weight", 1, k, 1, 1, KT_F32);
        }
        P("ffn_gate_inp.weight", 2, d, a->experts, 1, KT_F32);
        P("ffn_gate_exps.weight", 3, d, a->ff_exp, a->experts, a->t_exp);
        P("ffn_up_exps.weight", 3, d, a->ff_exp, a->experts, a->t_exp);
        P("ffn_down_exps.weight", 3, a->ff_exp, d, a->experts, a->t_exp);
#undef P
        qsort(w + first, n - first, sizeof *w, cmp_want);
    }
    push(w, &n, "output.weight", 2, d, vocab, 1, a->t_out);
    push(w, &n, "output_norm.weight", 1, d, 1, 1, KT_F32);
    return n;
}

static void check_layout(const struct gguf *g, const struct arch_want *a, int vocab)
{
    static struct want w[256];
    size_t n = expected(a, vocab, w);
    CHECK_EQ(g->n_tensors, n);
    for (size_t i = 0; i < n && i < g->n_tensors; i++) {
        const struct gguf_tensor *t = &g->tensors[i];
        CHECK_MSG(gguf_str_eq(t->name, w[i].name), "%s: tensor %zu is '%.*s', expected '%s'",
                  a->preset, i, (int)t->name.len, t->name.ptr, w[i].name);
        CHECK_MSG(t->n_dims == w[i].n_dims && t->ne[0] == w[i].ne[0] && t->ne[1] == w[i].ne[1] &&
                      t->ne[2] == w[i].ne[2] && t->type == w[i].type,
                  "%s: %s: {%lld, %lld, %lld} %s, expected {%lld, %lld, %lld} %s", a->preset,
                  w[i].name, (long long)t->ne[0], (long long)t->ne[1], (long long)t->ne[2],
                  kern_type_name(t->type), (long long)w[i].ne[0], (long long)w[i].ne[1],
                  (long long)w[i].ne[2], kern_type_name(w[i].type));
    }
}

static void check_keys(const struct gguf *g, const struct arch_want *a, int vocab)
{
    char k[128];
    struct gguf_str s = {0};
    struct moed_err e = {0};
    CHECK(gguf_get_str(g, "general.architecture", &s, &e) == 0 && gguf_str_eq(s, a->arch));
    CHECK(gguf_get_str(g, "general.name", &s, &e) == 0 && gguf_str_eq(s, a->preset));
    CHECK(!gguf_find(g, "general.alignment")); /* default 32, not written */
    CHECK_EQ(g->alignment, 32);
#define K(suffix) (snprintf(k, sizeof k, "%s.%s", a->arch, suffix), k)
    CHECK_EQ(get_u32(g, K("block_count")), a->layers);
    CHECK_EQ(get_u32(g, K("context_length")), a->ctx);
    CHECK_EQ(get_u32(g, K("embedding_length")), a->d);
    CHECK_EQ(get_u32(g, K("feed_forward_length")), a->ff);
    CHECK_EQ(get_u32(g, K("attention.head_count")), a->heads);
    CHECK_EQ(get_u32(g, K("attention.head_count_kv")), a->kv);
    CHECK(get_f32(g, K("rope.freq_base")) > 0);
    CHECK(get_f32(g, K("attention.layer_norm_rms_epsilon")) > 0);
    CHECK_EQ(get_u32(g, K("expert_count")), a->experts);
    CHECK_EQ(get_u32(g, K("expert_used_count")), a->used);
    if (a->key_length) {
        CHECK_EQ(get_u32(g, K("attention.key_length")), a->hd);
        CHECK_EQ(get_u32(g, K("attention.value_length")), a->hd);
    } else {
        CHECK(!gguf_find(g, K("attention.key_length")));
    }
    bool qwen = !strncmp(a->arch, "qwen", 4);
    if (qwen)
        CHECK_EQ(get_u32(g, K("expert_feed_forward_length")), a->ff_exp);
    else
        CHECK(!gguf_find(g, K("expert_feed_forward_length")));
    if (a->shexp)
        CHECK_EQ(get_u32(g, K("expert_shared_feed_forward_length")), a->shexp);
    else
        CHECK(!gguf_find(g, K("expert_shared_feed_forward_length")));
    if (!strcmp(a->arch, "llama")) {
        CHECK_EQ(get_u32(g, K("vocab_size")), vocab);
        CHECK_EQ(get_u32(g, K("rope.dimension_count")), a->hd);
    }
    bool norm = !a->norm;
    CHECK(gguf_get_bool(g, K("expert_weights_norm"), &norm, &e) == 0 && norm == a->norm);
#undef K
    CHECK(gguf_find(g, "general.file_type") != NULL);
    CHECK_EQ(get_u32(g, "general.quantization_version"), 2);
}

TEST(mkmodel_tiny_presets)
{
    for (size_t i = 0; i < sizeof tiny / sizeof tiny[0]; i++) {
        const struct arch_want *a = &tiny[i];
        char path[512], out[64];
        snprintf(out, sizeof out, "mkm-%s.gguf", a->preset);
        struct moed_err e = {0};
        struct mkm_stats st;
        int rc = MK(out, path, &st, &e, "--preset", a->preset);
        CHECK_MSG(rc == 0, "%s: %s", a->preset, e.msg);
        if (rc)
            continue;
        struct gguf g;
        rc = gguf_open(&g, path, &e);
        CHECK_MSG(rc == 0, "%s", e.msg);
        if (rc)
            continue;
        CHECK_EQ(g.size, st.file_bytes);
        CHECK_EQ(st.n_tensors, g.n_tensors);
        check_keys(&g, a, 512);
        check_layout(&g, a, 512);
        /* the built-in byte tokenizer: every byte encodes as itself */
        struct tok *t = NULL;
        rc = tok_load(&t, &g, &e);
        CHECK_MSG(rc == 0, "%s: tok_load: %s", a->preset, e.msg);
        if (!rc) {
            CHECK_EQ(tok_n_vocab(t), 512);
            tok_free(t);
        }
        struct model m;
        rc = model_init(&m, &g, &e);
        CHECK_MSG(rc == 0, "%s: model_init: %s", a->preset, e.msg);
        if (!rc) {
            CHECK_EQ(m.hp.n_vocab, 512);
            CHECK_EQ(m.hp.head_dim, a->hd);
            CHECK_EQ(m.hp.n_ff_exp, a->ff_exp);
            CHECK_EQ(m.hp.norm_topk, a->norm);
            model_close(&m);
        }
        gguf_close(&g);
        remove(path);
    }
}

TEST(mkmodel_reference_size)
{
    /* DESIGN.md: the reference shape is 16.75 GiB */
    struct moed_err e = {0};
    struct mkm_stats st;
    char path[8];
    int rc = MK(NULL, path, &st, &e, "--preset", "qwen3-30b-a3b", "--dry-run");
    REQUIRE(rc == 0);
    CHECK_EQ(st.n_tensors, 3 + 48 * 12);
    double gib = (double)st.file_bytes / (1u << 30);
    CHECK_MSG(gib > 16.74 && gib < 16.76, "reference: %.4f GiB", gib);
    /* experts: 48 layers x 3 x 128 x (768 x 2048 Q4_K) */
    CHECK(st.data_bytes > 48ull * 3 * 128 * 768 * 2048 / 256 * 144);
    CHECK_NEAR((double)st.n_params / 1e9, 30.53, 0.01);
}

/* ---- determinism ---------------------------------------------------------- */

static bool same_file(const char *a, const char *b)
{
    size_t na, nb;
    char *pa = test_read_file(a, &na), *pb = test_read_file(b, &nb);
    bool same = pa && pb && na == nb && memcmp(pa, pb, na) == 0;
    free(pa);
    free(pb);
    return same;
}

TEST(mkmodel_deterministic)
{
    static const char *const inits[] = {"gauss", "blocks"};
    for (int k = 0; k < 2; k++) {
        char p1[512], p2[512], p3[512];
        struct moed_err e = {0};
        REQUIRE(MK("mkm-det1.gguf", p1, NULL, &e, "--preset", "tiny-qwen2moe", "--init", inits[k],
                   "--threads", "1", "--seed", "7") == 0);
        REQUIRE(MK("mkm-det2.gguf", p2, NULL, &e, "--preset", "tiny-qwen2moe", "--init", inits[k],
                   "--threads", "3", "--seed", "7") == 0);
        REQUIRE(MK("mkm-det3.gguf", p3, NULL, &e, "--preset", "tiny-qwen2moe", "--init", inits[k],
                   "--threads", "2", "--seed", "8") == 0);
        CHECK_MSG(same_file(p1, p2), "--init %s: 1 and 3 threads differ", inits[k]);
        CHECK_MSG(!same_file(p1, p3), "--init %s: seeds 7 and 8 give the same file", inits[k]);
        remove(p1);
        remove(p2);
        remove(p3);
    }
    /* a tensor's data depends on its name and the seed, not on what else
     * the model holds: layer 0 of a 1-layer and a 2-layer model agree */
    char p1[512], p2[512];
    struct moed_err e = {0};
    REQUIRE(MK("mkm-det1.gguf", p1, NULL, &e, "--preset", "tiny-mixtral", "--layers", "1") == 0);
    REQUIRE(MK("mkm-det2.gguf", p2, NULL, &e, "--preset", "tiny-mixtral", "--layers", "2") == 0);
    struct gguf g1, g2;
    REQUIRE(gguf_open(&g1, p1, &e) == 0);
    REQUIRE(gguf_open(&g2, p2, &e) == 0);
    const struct gguf_tensor *a = gguf_find_tensor(&g1, "blk.0.ffn_up_exps.weight"),
                             *b = gguf_find_tensor(&g2, "blk.0.ffn_up_exps.weight");
    REQUIRE(a && b && a->nbytes == b->nbytes);
    CHECK(memcmp(a->data, b->data, a->nbytes) == 0);
    gguf_close(&g1);
    gguf_close(&g2);
    remove(p1);
    remove(p2);
}

/* ---- values ------------------------------------------------------------------ */

/* Mean and std of a whole tensor, dequantized. */
static void tensor_stats(const struct gguf_tensor *t, double *mean, double *sd)
{
    int64_t n = t->ne[0], rows = t->ne[1] * t->ne[2];
    size_t rb = kern_row_size(t->type, n);
    float *x = malloc((size_t)n * sizeof *x);
    double s = 0, s2 = 0;
    for (int64_t r = 0; r < rows; r++) {
        kern_dequant_row_ref(t->type, (const uint8_t *)t->data + r * rb, x, n);
        for (int64_t i = 0; i < n; i++) {
            s += x[i];
            s2 += (double)x[i] * x[i];
        }
    }
    free(x);
    double cnt = (double)n * (double)rows;
    *mean = s / cnt;
    *sd = sqrt(s2 / cnt - *mean * *mean);
}

TEST(mkmodel_weight_stats)
{
    static const char *const types[] = {"F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0",
                                        "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"};
    static const char *const inits[] = {"blocks", "gauss"};
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++)
        for (int ii = 0; ii < 2; ii++) {
            /* gauss goes through kern_quant_row_ref, tested on its own and
             * slow for k-quants: one type of each kind is enough here */
            if (ii == 1 && strcmp(types[ti], "BF16") && strcmp(types[ti], "Q8_0") &&
                strcmp(types[ti], "Q4_K"))
                continue;
            char path[512];
            struct moed_err e = {0};
            /* rows of 256 (k-quants) for gate/up (d) and down (ff) */
            int rc = MK("mkm-stats.gguf", path, NULL, &e, "--preset", "tiny-qwen3moe",
                        "--layers", "1", "--d-model", "256", "--ff-exp", "512", "--experts", "2",
                        "--experts-used", "2", "--type-experts", types[ti], "--type-attn",
                        types[ti], "--init", inits[ii], "--threads", "2");
            CHECK_MSG(rc == 0, "%s: %s", types[ti], e.msg);
            if (rc)
                continue;
            struct gguf g;
            REQUIRE(gguf_open(&g, path, &e) == 0);
            static const struct {
                const char *name;
                double sd;
            } ck[] = {{"blk.0.ffn_gate_exps.weight", 0.0625}, /* 1/sqrt(256) */
                      {"blk.0.ffn_down_exps.weight", 0.0441942}, /* 1/sqrt(512) */
                      {"blk.0.attn_output.weight", 0.0625},      /* 1/sqrt(8 * 32) */
                      {"blk.0.attn_q.weight", 0.0625}};
            for (size_t c = 0; c < sizeof ck / sizeof ck[0]; c++) {
                const struct gguf_tensor *t = gguf_find_tensor(&g, ck[c].name);
                REQUIRE(t);
                CHECK_MSG(t->type == (uint32_t)kern_type_from_name(types[ti]), "%s: %s is %s",
                          types[ti], ck[c].name, kern_type_name(t->type));
                double mean, sd;
                tensor_stats(t, &mean, &sd);
                /* measured: within 2% (blocks and gauss alike) */
                CHECK_MSG(sd > 0.95 * ck[c].sd && sd < 1.05 * ck[c].sd && fabs(mean) < 0.02 * ck[c].sd,
                          "--init %s %s %s: mean %.5f std %.5f, expected 0 and %.5f", inits[ii],
                          types[ti], ck[c].name, mean, sd, ck[c].sd);
            }
            /* Q8_0 quants stay in -127..127 (some SIMD dot products rely on it) */
            const struct gguf_tensor *t = gguf_find_tensor(&g, "blk.0.ffn_up_exps.weight");
            if (t->type == KT_Q8_0) {
                const block_q8_0 *b = t->data;
                bool any = false;
                for (uint64_t i = 0; i < t->nbytes / sizeof *b; i++)
                    for (int j = 0; j < 32; j++)
                        any |= b[i].qs[j] == -128;
                CHECK(!any);
            }
            /* norms ~1 */
            double mean, sd;
            tensor_stats(gguf_find_tensor(&g, "blk.0.attn_norm.weight"), &mean, &sd);
            CHECK_NEAR(mean, 1.0, 0.02);
            CHECK(sd > 0.01 && sd < 0.1);
            gguf_close(&g);
            remove(path);
        }
}

/* The forward pass of a deep random model stays finite and tame. */
TEST(mkmodel_forward_finite)
{
    static const char *const cfg[][2] = {
        {"tiny-qwen3moe", "blocks"}, {"tiny-qwen2moe", "gauss"}, {"tiny-mixtral", "blocks"},
        {"tiny-olmoe", "gauss"}, {"tiny-qwen3moe", "k-quants"}};
    for (size_t i = 0; i < sizeof cfg / sizeof cfg[0]; i++) {
        char path[512];
        struct moed_err e = {0};
        int rc;
        if (!strcmp(cfg[i][1], "k-quants")) /* the reference's types, on rows of 256 */
            rc = MK("mkm-fwd.gguf", path, NULL, &e, "--preset", cfg[i][0], "--layers", "16",
                    "--d-model", "256", "--ff-exp", "256", "--experts", "4", "--experts-used",
                    "2", "--type-experts", "Q4_K", "--type-attn", "Q6_K", "--init", "blocks",
                    "--threads", "2");
        else
            rc = MK("mkm-fwd.gguf", path, NULL, &e, "--preset", cfg[i][0], "--layers", "48",
                    "--init", cfg[i][1], "--threads", "2");
        REQUIRE(rc == 0);
        struct model m;
        rc = model_open(&m, path, &e);
        CHECK_MSG(rc == 0, "%s: %s", cfg[i][0], e.msg);
        if (rc)
            continue;
        struct fwd *f;
        struct kv_seq kv;
        REQUIRE(fwd_init(&f, &m, &(struct fwd_opts){.max_batch = 8}, &e) == 0);
        REQUIRE(kv_seq_init(&kv, &m, 16, KT_F32, &e) == 0);
        int32_t tok[8] = {72, 101, 108, 108, 111, 32, 256, 500}, pos[8], seq[8] = {0};
        bool want[8];
        for (int k = 0; k < 8; k++) {
            pos[k] = k;
            want[k] = true;
        }
        int nv = m.hp.n_vocab;
        float *logits = malloc((size_t)8 * nv * sizeof *logits);
        struct kv_seq *seqs[1] = {&kv};
        struct fwd_batch b = {8, tok, pos, seq, want};
        rc = fwd_step(f, &b, seqs, 1, logits, &e);
        CHECK_MSG(rc == 0, "%s: %s", cfg[i][0], e.msg);
        double mx = 0, s2 = 0;
        bool finite = true;
        for (size_t k = 0; k < (size_t)8 * nv; k++) {
            finite &= isfinite(logits[k]) != 0;
            mx = fmax(mx, fabs(logits[k]));
            s2 += (double)logits[k] * logits[k];
        }
        double rms = sqrt(s2 / (8.0 * nv));
        CHECK_MSG(finite && mx < 50 && rms > 0.05 && rms < 10,
                  "%s, 48 layers: logits max %.3g rms %.3g (finite %d)", cfg[i][0], mx, rms,
                  finite);
        free(logits);
        kv_seq_free(&kv);
        fwd_free(f);
        model_close(&m);
        remove(path);
    }
}

/* ---- tokenizer --------------------------------------------------------------- */

TEST(mkmodel_vocab_from)
{
    char src[512], path[512];
    snprintf(src, sizeof src, "%s/vocab/ggml-vocab-gpt-2.gguf", test_shared_dir());
    FILE *fp = fopen(src, "rb");
    if (!fp)
        SKIP("no ../shared/vocab/ggml-vocab-gpt-2.gguf");
    fclose(fp);
    struct moed_err e = {0};
    struct mkm_stats st;
    int rc = MK("mkm-vocab.gguf", path, &st, &e, "--preset", "tiny-olmoe", "--vocab-from", src);
    REQUIRE(rc == 0);
    CHECK_EQ(st.n_vocab_tok, 50257);
    struct gguf g, v;
    REQUIRE(gguf_open(&g, path, &e) == 0);
    REQUIRE(gguf_open(&v, src, &e) == 0);
    /* the padded size: 50257 rounded up to 128 */
    const struct gguf_tensor *te = gguf_find_tensor(&g, "token_embd.weight");
    REQUIRE(te);
    CHECK_EQ(te->ne[1], 50304);
    CHECK_EQ(gguf_find_tensor(&g, "output.weight")->ne[1], 50304);
    struct gguf_str s;
    CHECK(gguf_get_str(&g, "general.architecture", &s, &e) == 0 && gguf_str_eq(s, "olmoe"));
    const struct gguf_value *tk, *tt, *vk, *mg;
    REQUIRE(gguf_get_arr(&g, "tokenizer.ggml.tokens", GGUF_STRING, &tk, &e) == 0);
    REQUIRE(gguf_get_arr(&g, "tokenizer.ggml.token_type", GGUF_I32, &tt, &e) == 0);
    REQUIRE(gguf_get_arr(&v, "tokenizer.ggml.tokens", GGUF_STRING, &vk, &e) == 0);
    CHECK_EQ(tk->v.arr.n, 50304);
    CHECK_EQ(tt->v.arr.n, 50304);
    for (uint64_t i = 0; i < vk->v.arr.n; i += 997) {
        struct gguf_str a = gguf_arr_str(tk, i), b = gguf_arr_str(vk, i);
        CHECK(a.len == b.len && memcmp(a.ptr, b.ptr, a.len) == 0);
    }
    CHECK(gguf_str_eq(gguf_arr_str(tk, 50256), "<|endoftext|>"));
    CHECK(gguf_str_eq(gguf_arr_str(tk, 50257), "[PAD50257]"));
    CHECK(gguf_str_eq(gguf_arr_str(tk, 50303), "[PAD50303]"));
    CHECK_EQ(gguf_arr_int(tt, 50256), gguf_arr_int(tt, 50256));
    CHECK_EQ(gguf_arr_int(tt, 50257), 5);
    CHECK_EQ(gguf_arr_int(tt, 50303), 5);
    REQUIRE(gguf_get_arr(&g, "tokenizer.ggml.merges", GGUF_STRING, &mg, &e) == 0);
    CHECK_EQ(mg->v.arr.n, 50000);
    CHECK_EQ(get_u32(&g, "tokenizer.ggml.bos_token_id"), 50256);
    CHECK(gguf_get_str(&g, "tokenizer.ggml.pre", &s, &e) == 0 && gguf_str_eq(s, "gpt-2"));
    /* no other key of the vocabulary file comes along */
    CHECK(!gguf_find(&g, "gpt2.block_count"));
    struct tok *t = NULL;
    rc = tok_load(&t, &g, &e);
    CHECK_MSG(rc == 0, "%s", e.msg);
    if (!rc) {
        CHECK_EQ(tok_n_vocab(t), 50304);
        tok_free(t);
    }
    gguf_close(&v);
    gguf_close(&g);
    remove(path);

    /* a vocabulary larger than the model's is refused */
    rc = MK("mkm-vocab.gguf", path, NULL, &e, "--preset", "tiny-olmoe", "--vocab-from", src,
            "--vocab", "50000");
    CHECK_EQ(rc, MOED_EINVAL);
    CHECK_MSG(strstr(e.msg, "50257 tokens") && strstr(e.msg, "50000"), "%s", e.msg);
    rc = MK("mkm-vocab.gguf", path, NULL, &e, "--preset", "mixtral-8x7b", "--vocab-from", src,
            "--dry-run");
    CHECK_EQ(rc, MOED_EINVAL);
    CHECK_MSG(strstr(e.msg, "32000"), "%s", e.msg);

    /* SentencePiece: scores padded with -1000 */
    snprintf(src, sizeof src, "%s/vocab/ggml-vocab-llama-spm.gguf", test_shared_dir());
    rc = MK("mkm-vocab.gguf", path, NULL, &e, "--preset", "tiny-mixtral", "--vocab-from", src,
            "--vocab", "32010");
    CHECK_MSG(rc == 0, "%s", e.msg);
    if (!rc) {
        REQUIRE(gguf_open(&g, path, &e) == 0);
        const struct gguf_value *sc;
        REQUIRE(gguf_get_arr(&g, "tokenizer.ggml.scores", GGUF_F32, &sc, &e) == 0);
        CHECK_EQ(sc->v.arr.n, 32010);
        CHECK_NEAR(gguf_arr_float(sc, 32005), -1000.0, 0);
        CHECK_EQ(get_u32(&g, "llama.vocab_size"), 32010);
        rc = tok_load(&t, &g, &e);
        CHECK_MSG(rc == 0, "%s", e.msg);
        if (!rc)
            tok_free(t);
        gguf_close(&g);
        remove(path);
    }

    /* --no-vocab: as hf2gguf.py writes a checkpoint without tokenizer files */
    rc = MK("mkm-vocab.gguf", path, NULL, &e, "--preset", "tiny-qwen3moe", "--no-vocab");
    REQUIRE(rc == 0);
    REQUIRE(gguf_open(&g, path, &e) == 0);
    CHECK(gguf_get_str(&g, "tokenizer.ggml.model", &s, &e) == 0 && gguf_str_eq(s, "none"));
    CHECK_EQ(get_u32(&g, "qwen3moe.vocab_size"), 512);
    CHECK(!gguf_find(&g, "tokenizer.ggml.tokens"));
    gguf_close(&g);
    remove(path);
}

/* ---- options ------------------------------------------------------------------ */

TEST(mkmodel_options)
{
    char path[512];
    struct moed_err e = {0};
    struct mkm_stats st;
    /* overrides, --opt=value, the head size derived or kept */
    REQUIRE(MK("mkm-opt.gguf", path, &st, &e, "--preset", "tiny-mixtral", "--layers=1",
               "--d-model", "128", "--heads", "8", "--kv-heads", "8", "--experts", "4",
               "--experts-used", "1", "--ff", "96", "--vocab", "1000", "--ctx", "64",
               "--type-experts", "q8_0", "--type-attn", "bf16", "--type-embd", "Q4_0",
               "--type-output", "F32", "--type-router", "F16", "--tied", "--alignment", "64",
               "--name", "x", "--rope-theta", "5e5", "--norm-topk", "0") == 0);
    struct gguf g;
    REQUIRE(gguf_open(&g, path, &e) == 0);
    CHECK_EQ(g.alignment, 64);
    CHECK_EQ(get_u32(&g, "general.alignment"), 64);
    CHECK_EQ(get_u32(&g, "llama.rope.dimension_count"), 16);
    CHECK_EQ(get_u32(&g, "llama.feed_forward_length"), 96);
    CHECK_NEAR(get_f32(&g, "llama.rope.freq_base"), 5e5, 0);
    CHECK(!gguf_find_tensor(&g, "output.weight"));
    CHECK_EQ(gguf_find_tensor(&g, "blk.0.ffn_down_exps.weight")->ne[0], 96);
    CHECK_EQ(gguf_find_tensor(&g, "blk.0.ffn_gate_inp.weight")->type, KT_F16);
    CHECK_EQ(gguf_find_tensor(&g, "blk.0.attn_q.weight")->type, KT_BF16);
    CHECK_EQ(gguf_find_tensor(&g, "token_embd.weight")->type, KT_Q4_0);
    CHECK_EQ(gguf_find_tensor(&g, "token_embd.weight")->ne[1], 1000);
    bool b = true;
    CHECK(gguf_get_bool(&g, "llama.expert_weights_norm", &b, &e) == 0 && !b);
    gguf_close(&g);
    remove(path);

    /* a k-quant on rows that are not a multiple of 256 falls back as in
     * llama.cpp (qwen1.5-moe-a2.7b's down-projection of 1408) */
    REQUIRE(MK("mkm-opt.gguf", path, &st, &e, "--preset", "tiny-qwen2moe", "--d-model", "256",
               "--ff-exp", "160", "--ff-shexp", "256", "--type-experts", "Q4_K",
               "--init", "blocks") == 0);
    REQUIRE(gguf_open(&g, path, &e) == 0);
    CHECK_EQ(gguf_find_tensor(&g, "blk.0.ffn_gate_exps.weight")->type, KT_Q4_K);
    CHECK_EQ(gguf_find_tensor(&g, "blk.0.ffn_down_exps.weight")->type, KT_Q5_0);
    CHECK_EQ(gguf_find_tensor(&g, "blk.0.ffn_down_shexp.weight")->type, KT_Q4_K);
    gguf_close(&g);
    remove(path);

    static const struct {
        const char *args[8];
        const char *msg; /* substring of the error */
    } bad[] = {
        {{"--preset", "nope"}, "unknown (presets: qwen3-30b-a3b"},
        {{"-o", "x.gguf"}, "--preset NAME is required"},
        {{"--preset", "tiny-olmoe"}, "-o FILE is required"},
        {{"--preset", "tiny-olmoe", "--bogus", "1"}, "unknown option '--bogus'"},
        {{"--preset", "tiny-olmoe", "--layers"}, "--layers: needs a value"},
        {{"--preset", "tiny-olmoe", "--layers", "0"}, "--layers 0: out of range"},
        {{"--preset", "tiny-olmoe", "--layers", "-3"}, "--layers '-3': not a non-negative"},
        {{"--preset", "tiny-olmoe", "--layers", "2x"}, "--layers '2x'"},
        {{"--preset", "tiny-olmoe", "--seed", "99999999999999999999999"}, "--seed"},
        {{"--preset", "tiny-olmoe", "--heads", "4", "--kv-heads", "3"}, "--kv-heads 3 does not divide --heads 4"},
        {{"--preset", "tiny-olmoe", "--experts-used", "9"}, "--experts-used 9 is more than --experts 8"},
        {{"--preset", "tiny-olmoe", "--type-experts", "Q7_K"}, "--type-experts 'Q7_K': unknown type"},
        {{"--preset", "tiny-olmoe", "--type-experts", "IQ4_XS"}, "cannot generate"},
        {{"--preset", "tiny-olmoe", "--type-norm", "F16"}, "--type-norm 'F16'"},
        {{"--preset", "tiny-olmoe", "--ff-shexp", "64"}, "--ff-shexp: olmoe has no shared expert"},
        {{"--preset", "tiny-olmoe", "--ff", "64", "--ff-exp", "32"}, "--ff 64 and --ff-exp 32 differ"},
        {{"--preset", "tiny-olmoe", "--init", "zeros"}, "--init 'zeros'"},
        {{"--preset", "tiny-olmoe", "--d-model", "100", "--heads", "3", "--kv-heads", "1"}, "not a multiple of --heads"},
        {{"--preset", "tiny-olmoe", "--head-dim", "15"}, "odd"},
        {{"--preset", "tiny-olmoe", "--alignment", "48"}, "--alignment 48: not a power of two"},
        {{"--preset", "tiny-olmoe", "--vocab", "100"}, "built-in byte tokenizer"},
        {{"--preset", "tiny-olmoe", "--vocab-from", "/nonexistent.gguf"}, "--vocab-from"},
        {{"--preset", "tiny-olmoe", "--rope-theta", "abc"}, "--rope-theta 'abc'"},
        {{"--preset", "tiny-olmoe", "--tied=1"}, "--tied takes no value"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const char *args[12];
        size_t n = 0;
        for (; n < 8 && bad[i].args[n]; n++)
            args[n] = bad[i].args[n];
        bool has_o = false;
        for (size_t k = 0; k < n; k++)
            has_o |= !strcmp(args[k], "-o");
        args[n] = NULL;
        memset(&e, 0, sizeof e);
        /* every case but the one about -o gets an output path */
        bool want_o = !has_o && strcmp(bad[i].msg, "-o FILE is required") != 0;
        if (want_o) {
            snprintf(path, sizeof path, "%s/mkm-bad.gguf", test_tmp_dir());
            remove(path);
        }
        int rc = mk(want_o ? "mkm-bad.gguf" : NULL, path, sizeof path, NULL, &e, args);
        CHECK_MSG(rc < 0 && strstr(e.msg, bad[i].msg), "case %zu: rc %d, message '%s', wanted '%s'",
                  i, rc, e.msg, bad[i].msg);
        FILE *f = fopen(path, "rb");
        CHECK_MSG(!want_o || !f, "case %zu left a file", i);
        if (f)
            fclose(f);
    }
    /* a path that cannot be created */
    int rc = mk(NULL, path, sizeof path, NULL, &e,
                (const char *const[]){"--preset", "tiny-olmoe", "-o", "/nonexistent/dir/x.gguf", NULL});
    CHECK_MSG(rc == MOED_EIO && strstr(e.msg, "/nonexistent/dir/x.gguf"), "%s", e.msg);
}
