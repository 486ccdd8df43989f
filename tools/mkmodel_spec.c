/*
 * moed-mkmodel: presets, the command line and the checks of a spec.
 *
 * Presets hold the shapes of the released checkpoints (their config.json
 * values: Qwen3-30B-A3B, Mixtral-8x7B-v0.1, OLMoE-1B-7B-0924,
 * Qwen1.5-MoE-A2.7B) and tiny shapes with every quirk of their arch for
 * tests.  Every option is one row of `options` below; the usage text comes
 * from that table.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "kernels/cpu/types.h"
#include "tools/mkmodel_impl.h"

struct preset {
    const char *name;
    enum mkm_arch arch;
    uint32_t n_layer, n_embd, n_head, n_head_kv, head_dim; /* head_dim 0: derived */
    uint32_t n_expert, n_expert_used, n_ff, n_ff_exp, n_ff_shexp, n_vocab, n_ctx;
    float rope_theta, rms_eps;
    bool norm_topk;
    enum kern_type t_exp, t_attn, t_embd, t_out;
    enum mkm_init init;
};

/* n_vocab 0: the tokenizer's size rounded up to 128, or 512 without one. */
static const struct preset presets[] = {
    /* Qwen3-30B-A3B: config.json norm_topk_prob true, head_dim 128 */
    {"qwen3-30b-a3b", MKM_QWEN3MOE, 48, 2048, 32, 4, 128, 128, 8, 6144, 768, 0, 151936, 40960,
     1e6f, 1e-6f, true, KT_Q4_K, KT_Q8_0, KT_Q8_0, KT_Q8_0, MKM_INIT_BLOCKS},
    {"mixtral-8x7b", MKM_LLAMA, 32, 4096, 32, 8, 0, 8, 2, 14336, 14336, 0, 32000, 32768,
     1e6f, 1e-5f, true, KT_Q4_K, KT_Q8_0, KT_Q8_0, KT_Q8_0, MKM_INIT_BLOCKS},
    {"olmoe-1b-7b", MKM_OLMOE, 16, 2048, 16, 16, 0, 64, 8, 1024, 1024, 0, 50304, 4096,
     1e4f, 1e-5f, false, KT_Q4_K, KT_Q8_0, KT_Q8_0, KT_Q8_0, MKM_INIT_BLOCKS},
    {"qwen1.5-moe-a2.7b", MKM_QWEN2MOE, 24, 2048, 16, 16, 0, 60, 4, 5632, 1408, 5632, 151936,
     8192, 1e6f, 1e-6f, false, KT_Q4_K, KT_Q8_0, KT_Q8_0, KT_Q8_0, MKM_INIT_BLOCKS},
    /* tiny: head_dim set for qwen3moe so n_head * head_dim != n_embd, as in Qwen3 */
    {"tiny-qwen3moe", MKM_QWEN3MOE, 3, 128, 8, 2, 32, 16, 4, 384, 64, 0, 0, 4096,
     1e6f, 1e-6f, true, KT_Q4_0, KT_Q8_0, KT_Q8_0, KT_Q8_0, MKM_INIT_GAUSS},
    {"tiny-qwen2moe", MKM_QWEN2MOE, 2, 128, 4, 2, 0, 8, 2, 256, 64, 128, 0, 4096,
     1e6f, 1e-6f, false, KT_Q8_0, KT_F16, KT_F16, KT_F16, MKM_INIT_GAUSS},
    {"tiny-mixtral", MKM_LLAMA, 2, 64, 4, 2, 0, 8, 2, 128, 128, 0, 0, 4096,
     1e6f, 1e-5f, true, KT_Q4_0, KT_F16, KT_F16, KT_F16, MKM_INIT_GAUSS},
    {"tiny-olmoe", MKM_OLMOE, 2, 64, 4, 4, 0, 8, 2, 64, 64, 0, 0, 4096,
     1e4f, 1e-5f, false, KT_F32, KT_F32, KT_F32, KT_F32, MKM_INIT_GAUSS},
};
#define N_PRESETS (sizeof presets / sizeof presets[0])

const char *const *mkm_preset_names(void)
{
    static const char *names[N_PRESETS + 1];
    for (size_t i = 0; i < N_PRESETS; i++)
        names[i] = presets[i].name;
    names[N_PRESETS] = NULL;
    return names;
}

const char *mkm_arch_name(enum mkm_arch a)
{
    switch (a) {
    case MKM_QWEN3MOE: return "qwen3moe";
    case MKM_QWEN2MOE: return "qwen2moe";
    case MKM_LLAMA: return "llama";
    case MKM_OLMOE: return "olmoe";
    }
    return "?";
}

int mkm_preset(struct mkm_spec *s, const char *name, struct moed_err *e)
{
    const struct preset *p = NULL;
    for (size_t i = 0; i < N_PRESETS; i++)
        if (!strcmp(presets[i].name, name))
            p = &presets[i];
    if (!p) {
        char list[256] = "";
        for (size_t i = 0; i < N_PRESETS; i++) {
            strncat(list, i ? ", " : "", sizeof list - strlen(list) - 1);
            strncat(list, presets[i].name, sizeof list - strlen(list) - 1);
        }
        return moed_err_set(e, MOED_EINVAL, "--preset '%s': unknown (presets: %s)", name, list);
    }
    memset(s, 0, sizeof *s);
    s->preset = p->name;
    s->arch = p->arch;
    snprintf(s->name, sizeof s->name, "%s", p->name);
    s->n_layer = p->n_layer;
    s->n_embd = p->n_embd;
    s->n_head = p->n_head;
    s->n_head_kv = p->n_head_kv;
    s->head_dim = p->head_dim;
    s->explicit_head_dim = p->arch == MKM_QWEN3MOE; /* Qwen3 configs carry head_dim */
    s->n_expert = p->n_expert;
    s->n_expert_used = p->n_expert_used;
    s->n_ff = p->n_ff;
    s->n_ff_exp = p->n_ff_exp;
    s->n_ff_shexp = p->n_ff_shexp;
    s->n_vocab = p->n_vocab;
    s->n_ctx = p->n_ctx;
    s->rope_theta = p->rope_theta;
    s->rms_eps = p->rms_eps;
    s->expert_weights_norm = p->norm_topk;
    s->type[MKM_G_EXPERTS] = p->t_exp;
    s->type[MKM_G_SHEXP] = p->t_exp;
    s->type[MKM_G_ATTN] = p->t_attn;
    s->type[MKM_G_EMBD] = p->t_embd;
    s->type[MKM_G_OUTPUT] = p->t_out;
    s->type[MKM_G_NORM] = KT_F32;
    s->type[MKM_G_ROUTER] = KT_F32;
    s->seed = 1;
    s->init = p->init;
    return 0;
}

/* ---- the command line ------------------------------------------------------ */

enum opt_id {
    O_PRESET, O_OUT, O_NAME, O_LAYERS, O_D_MODEL, O_HEADS, O_KV_HEADS, O_HEAD_DIM, O_EXPERTS,
    O_EXPERTS_USED, O_FF, O_FF_EXP, O_FF_SHEXP, O_VOCAB, O_CTX, O_ROPE_THETA, O_RMS_EPS,
    O_NORM_TOPK, O_TIED, O_SEED, O_INIT, O_TYPE_EXPERTS, O_TYPE_SHEXP, O_TYPE_ATTN, O_TYPE_EMBD,
    O_TYPE_OUTPUT, O_TYPE_NORM, O_TYPE_ROUTER, O_THREADS, O_VOCAB_FROM, O_NO_VOCAB, O_ALIGNMENT, O_DRY_RUN,
    O_QUIET, O_PROGRESS, O_LIST, O_HELP,
};

enum opt_kind { K_U32, K_U64, K_F32, K_STR, K_TYPE, K_FLAG };

static const struct opt {
    const char *name;
    enum opt_id id;
    enum opt_kind kind;
    uint64_t min, max; /* K_U32 / K_U64 bounds */
    const char *arg, *help;
} options[] = {
    {"--preset", O_PRESET, K_STR, 0, 0, "NAME", "shape and defaults to start from (required)"},
    {"-o", O_OUT, K_STR, 0, 0, "FILE", "output GGUF (required unless --dry-run)"},
    {"--name", O_NAME, K_STR, 0, 0, "TEXT", "general.name (default: the preset's name)"},
    {"--layers", O_LAYERS, K_U32, 1, 1024, "N", "block_count"},
    {"--d-model", O_D_MODEL, K_U32, 1, 1 << 16, "N", "embedding_length"},
    {"--heads", O_HEADS, K_U32, 1, 1024, "N", "attention.head_count"},
    {"--kv-heads", O_KV_HEADS, K_U32, 1, 1024, "N", "attention.head_count_kv (divides --heads)"},
    {"--head-dim", O_HEAD_DIM, K_U32, 2, 4096, "N", "head size, even (default: d-model / heads; qwen3moe presets: 128 or 32)"},
    {"--experts", O_EXPERTS, K_U32, 1, 4096, "N", "expert_count"},
    {"--experts-used", O_EXPERTS_USED, K_U32, 1, 4096, "N", "expert_used_count (top-k)"},
    {"--ff", O_FF, K_U32, 1, 1 << 20, "N", "feed_forward_length (llama, olmoe: also the experts' FFN)"},
    {"--ff-exp", O_FF_EXP, K_U32, 1, 1 << 20, "N", "expert FFN size (qwen*: expert_feed_forward_length)"},
    {"--ff-shexp", O_FF_SHEXP, K_U32, 1, 1 << 20, "N", "shared expert FFN size (qwen2moe)"},
    {"--vocab", O_VOCAB, K_U32, 1, 1 << 24, "N", "vocabulary size (tokenizer padded to it)"},
    {"--ctx", O_CTX, K_U32, 1, 1u << 30, "N", "context_length"},
    {"--rope-theta", O_ROPE_THETA, K_F32, 0, 0, "X", "rope.freq_base"},
    {"--rms-eps", O_RMS_EPS, K_F32, 0, 0, "X", "attention.layer_norm_rms_epsilon"},
    {"--norm-topk", O_NORM_TOPK, K_U32, 0, 1, "0|1", "expert_weights_norm: renormalise the top-k weights"},
    {"--tied", O_TIED, K_FLAG, 0, 0, NULL, "no output.weight (tied to token_embd)"},
    {"--seed", O_SEED, K_U64, 0, UINT64_MAX, "N", "random seed (default 1)"},
    {"--init", O_INIT, K_STR, 0, 0, "gauss|blocks", "weights: quantized floats, or random quantized blocks (fast)"},
    {"--type-experts", O_TYPE_EXPERTS, K_TYPE, 0, 0, "TYPE", "routed experts' type"},
    {"--type-shexp", O_TYPE_SHEXP, K_TYPE, 0, 0, "TYPE", "shared expert's type (default: --type-experts)"},
    {"--type-attn", O_TYPE_ATTN, K_TYPE, 0, 0, "TYPE", "attn_q/k/v/output type"},
    {"--type-embd", O_TYPE_EMBD, K_TYPE, 0, 0, "TYPE", "token_embd type"},
    {"--type-output", O_TYPE_OUTPUT, K_TYPE, 0, 0, "TYPE", "output type"},
    {"--type-norm", O_TYPE_NORM, K_TYPE, 0, 0, "F32", "norms, biases, shared expert gate: F32 only (llama.cpp, moed)"},
    {"--type-router", O_TYPE_ROUTER, K_TYPE, 0, 0, "TYPE", "ffn_gate_inp (default F32)"},
    {"--threads", O_THREADS, K_U32, 1, 1024, "N", "generator threads (default: online CPUs)"},
    {"--vocab-from", O_VOCAB_FROM, K_STR, 0, 0, "FILE", "copy tokenizer.* from a vocabulary GGUF"},
    {"--no-vocab", O_NO_VOCAB, K_FLAG, 0, 0, NULL, "tokenizer.ggml.model \"none\" (default: a byte-level BPE, 257 tokens)"},
    {"--alignment", O_ALIGNMENT, K_U32, 1, 1u << 30, "N", "general.alignment (power of two, default 32)"},
    {"--dry-run", O_DRY_RUN, K_FLAG, 0, 0, NULL, "print the plan and sizes, write nothing"},
    {"--quiet", O_QUIET, K_FLAG, 0, 0, NULL, "print nothing but errors"},
    {"--progress", O_PROGRESS, K_FLAG, 0, 0, NULL, "print progress while writing"},
    {"--list-presets", O_LIST, K_FLAG, 0, 0, NULL, "list the presets and exit"},
    {"--help", O_HELP, K_FLAG, 0, 0, NULL, "this text"},
};
#define N_OPTIONS (sizeof options / sizeof options[0])

void mkm_usage(FILE *f)
{
    fprintf(f, "usage: moed-mkmodel --preset NAME -o FILE [options]\n\n"
               "Write a GGUF model of a real MoE shape with seeded random weights.\n\n");
    for (size_t i = 0; i < N_OPTIONS; i++) {
        const struct opt *o = &options[i];
        char head[48];
        snprintf(head, sizeof head, "%s%s%s", o->name, o->arg ? " " : "", o->arg ? o->arg : "");
        fprintf(f, "  %-26s %s\n", head, o->help);
    }
    fprintf(f, "\nTYPE: F32 F16 BF16 Q8_0 Q4_0 Q4_1 Q5_0 Q5_1 Q2_K Q3_K Q4_K Q5_K Q6_K "
               "(a k-quant on rows that are not a multiple of 256 falls back as llama.cpp "
               "does: Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, Q2_K/Q3_K -> Q4_0).\n"
               "Presets:");
    for (size_t i = 0; i < N_PRESETS; i++)
        fprintf(f, " %s", presets[i].name);
    fprintf(f, "\n");
}

bool mkm_type_ok(uint32_t type)
{
    switch (type) {
    case KT_F32: case KT_F16: case KT_BF16: case KT_Q8_0: case KT_Q4_0: case KT_Q4_1:
    case KT_Q5_0: case KT_Q5_1: case KT_Q2_K: case KT_Q3_K: case KT_Q4_K: case KT_Q5_K:
    case KT_Q6_K:
        return true;
    default:
        return false;
    }
}

static const struct opt *find_opt(const char *arg, const char **inline_val)
{
    *inline_val = NULL;
    const char *eq = strchr(arg, '=');
    size_t len = eq ? (size_t)(eq - arg) : strlen(arg);
    if (!strcmp(arg, "-h"))
        return &options[N_OPTIONS - 1];
    if (len == strlen("--output") && !strncmp(arg, "--output", len))
        arg = "-o", len = 2;
    for (size_t i = 0; i < N_OPTIONS; i++)
        if (strlen(options[i].name) == len && !strncmp(options[i].name, arg, len)) {
            if (eq)
                *inline_val = eq + 1;
            return &options[i];
        }
    return NULL;
}

static int parse_u64(const struct opt *o, const char *v, uint64_t *out, struct moed_err *e)
{
    const char *p = v;
    while (*p == ' ')
        p++;
    if (*p < '0' || *p > '9')
        return moed_err_set(e, MOED_EINVAL, "%s '%s': not a non-negative integer", o->name, v);
    errno = 0;
    char *end;
    unsigned long long x = strtoull(p, &end, 10);
    if (*end || errno == ERANGE)
        return moed_err_set(e, MOED_EINVAL, "%s '%s': not a non-negative integer%s", o->name, v,
                            errno == ERANGE ? " that fits 64 bits" : "");
    if (x < o->min || x > o->max)
        return moed_err_set(e, MOED_ERANGE, "%s %llu: out of range [%" PRIu64 ", %" PRIu64 "]",
                            o->name, x, o->min, o->max);
    *out = x;
    return 0;
}

static int apply(struct mkm_spec *s, const struct opt *o, const char *v, struct moed_err *e)
{
    uint64_t u = 0;
    float f = 0;
    int type = -1;
    int rc = 0;
    switch (o->kind) {
    case K_U32:
    case K_U64:
        rc = parse_u64(o, v, &u, e);
        break;
    case K_F32: {
        char *end;
        errno = 0;
        f = strtof(v, &end);
        if (!*v || *end || errno == ERANGE || !(f > 0) || f > 1e30f)
            return moed_err_set(e, MOED_EINVAL, "%s '%s': not a positive number", o->name, v);
        break;
    }
    case K_TYPE:
        type = kern_type_from_name(v);
        if (type < 0 || !mkm_type_ok((uint32_t)type))
            return moed_err_set(e, MOED_EINVAL, "%s '%s': %s (use F32, F16, BF16, Q8_0, Q4_0, "
                                "Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K or Q6_K)", o->name, v,
                                type < 0 ? "unknown type" : "cannot generate this type");
        break;
    default:
        break;
    }
    if (rc)
        return rc;
    switch (o->id) {
    case O_PRESET: break; /* applied first */
    case O_OUT: s->out = v; break;
    case O_NAME:
        if (strlen(v) >= sizeof s->name)
            return moed_err_set(e, MOED_EINVAL, "--name: longer than %zu bytes", sizeof s->name - 1);
        snprintf(s->name, sizeof s->name, "%s", v);
        break;
    case O_LAYERS: s->n_layer = (uint32_t)u; break;
    case O_D_MODEL: s->n_embd = (uint32_t)u; break;
    case O_HEADS: s->n_head = (uint32_t)u; break;
    case O_KV_HEADS: s->n_head_kv = (uint32_t)u; break;
    case O_HEAD_DIM: s->head_dim = (uint32_t)u; s->set_head_dim = true; break;
    case O_EXPERTS: s->n_expert = (uint32_t)u; break;
    case O_EXPERTS_USED: s->n_expert_used = (uint32_t)u; break;
    case O_FF: s->n_ff = (uint32_t)u; s->set_ff = true; break;
    case O_FF_EXP: s->n_ff_exp = (uint32_t)u; s->set_ff_exp = true; break;
    case O_FF_SHEXP:
        if (s->arch != MKM_QWEN2MOE)
            return moed_err_set(e, MOED_EINVAL, "--ff-shexp: %s has no shared expert (qwen2moe "
                                "presets only)", mkm_arch_name(s->arch));
        s->n_ff_shexp = (uint32_t)u;
        break;
    case O_VOCAB: s->n_vocab = (uint32_t)u; s->set_vocab = true; break;
    case O_CTX: s->n_ctx = (uint32_t)u; break;
    case O_ROPE_THETA: s->rope_theta = f; break;
    case O_RMS_EPS: s->rms_eps = f; break;
    case O_NORM_TOPK: s->expert_weights_norm = u != 0; break;
    case O_TIED: s->tied = true; break;
    case O_SEED: s->seed = u; break;
    case O_INIT:
        if (!strcmp(v, "gauss"))
            s->init = MKM_INIT_GAUSS;
        else if (!strcmp(v, "blocks"))
            s->init = MKM_INIT_BLOCKS;
        else
            return moed_err_set(e, MOED_EINVAL, "--init '%s': must be gauss or blocks", v);
        break;
    case O_TYPE_EXPERTS:
        s->type[MKM_G_EXPERTS] = type;
        s->set_type[MKM_G_EXPERTS] = true;
        if (!s->set_type[MKM_G_SHEXP])
            s->type[MKM_G_SHEXP] = type;
        break;
    case O_TYPE_SHEXP:
        if (s->arch != MKM_QWEN2MOE)
            return moed_err_set(e, MOED_EINVAL, "--type-shexp: %s has no shared expert "
                                "(qwen2moe presets only)", mkm_arch_name(s->arch));
        s->type[MKM_G_SHEXP] = type;
        s->set_type[MKM_G_SHEXP] = true;
        break;
    case O_TYPE_ATTN: s->type[MKM_G_ATTN] = type; break;
    case O_TYPE_EMBD: s->type[MKM_G_EMBD] = type; break;
    case O_TYPE_OUTPUT: s->type[MKM_G_OUTPUT] = type; break;
    case O_TYPE_NORM:
        if (type != KT_F32)
            return moed_err_set(e, MOED_EINVAL, "--type-norm '%s': norms and biases must be F32 "
                                "(llama.cpp and moed load no other type for them)", v);
        s->type[MKM_G_NORM] = type;
        break;
    case O_TYPE_ROUTER: s->type[MKM_G_ROUTER] = type; break;
    case O_THREADS: s->threads = (int)u; break;
    case O_VOCAB_FROM: s->vocab_from = v; break;
    case O_NO_VOCAB: s->no_vocab = true; break;
    case O_ALIGNMENT:
        if (u & (u - 1))
            return moed_err_set(e, MOED_EINVAL, "--alignment %" PRIu64 ": not a power of two", u);
        s->alignment = (uint32_t)u;
        break;
    case O_DRY_RUN: s->dry_run = true; break;
    case O_QUIET: s->log = NULL; break;
    case O_PROGRESS: s->progress = true; break;
    case O_LIST: case O_HELP: break;
    }
    return 0;
}

int mkm_parse_args(struct mkm_spec *s, int argc, char **argv, FILE *out, struct moed_err *e)
{
    FILE *log = s->log;
    const char *preset = NULL;
    /* pass 1: --help, --list-presets and --preset, so that options may come
     * in any order and override the preset */
    for (int i = 1; i < argc; i++) {
        const char *iv;
        const struct opt *o = find_opt(argv[i], &iv);
        if (!o)
            return moed_err_set(e, MOED_EINVAL, "unknown option '%s' (try --help)", argv[i]);
        if (o->id == O_HELP) {
            mkm_usage(out);
            return 1;
        }
        if (o->id == O_LIST) {
            for (size_t k = 0; k < N_PRESETS; k++) {
                const struct preset *p = &presets[k];
                char v[48];
                snprintf(v, sizeof v, p->n_vocab ? "%u" : "512 (or the tokenizer's)", p->n_vocab);
                fprintf(out, "%-20s %-9s %u layers, d %u, %u/%u heads, %u experts top-%u, "
                        "ff %u, vocab %s\n", p->name, mkm_arch_name(p->arch), p->n_layer,
                        p->n_embd, p->n_head, p->n_head_kv, p->n_expert, p->n_expert_used,
                        p->n_ff_exp, v);
            }
            return 1;
        }
        if (o->kind != K_FLAG && !iv) {
            if (i + 1 >= argc)
                return moed_err_set(e, MOED_EINVAL, "%s: needs a value (%s)", o->name, o->arg);
            iv = argv[++i];
        } else if (o->kind == K_FLAG && iv) {
            return moed_err_set(e, MOED_EINVAL, "%s takes no value", o->name);
        }
        if (o->id == O_PRESET)
            preset = iv;
    }
    if (!preset)
        return moed_err_set(e, MOED_EINVAL, "--preset NAME is required (try --list-presets)");
    int rc = mkm_preset(s, preset, e);
    if (rc)
        return rc;
    s->log = log;
    for (int i = 1; i < argc; i++) {
        const char *iv;
        const struct opt *o = find_opt(argv[i], &iv);
        if (o->kind != K_FLAG && !iv)
            iv = argv[++i];
        if ((rc = apply(s, o, iv, e)))
            return rc;
    }
    if (!s->out && !s->dry_run)
        return moed_err_set(e, MOED_EINVAL, "-o FILE is required");
    return mkm_spec_finish(s, e);
}

/* ---- derived values and checks --------------------------------------------- */

int mkm_spec_finish(struct mkm_spec *s, struct moed_err *e)
{
    if (!s->n_layer || !s->n_embd || !s->n_head || !s->n_head_kv || !s->n_expert ||
        !s->n_expert_used || !s->n_ctx)
        return moed_err_set(e, MOED_EINVAL, "spec has a zero dimension");
    if (s->n_head % s->n_head_kv)
        return moed_err_set(e, MOED_EINVAL, "--kv-heads %u does not divide --heads %u",
                            s->n_head_kv, s->n_head);
    if (s->n_expert_used > s->n_expert)
        return moed_err_set(e, MOED_EINVAL, "--experts-used %u is more than --experts %u",
                            s->n_expert_used, s->n_expert);
    if (!s->set_head_dim && !s->explicit_head_dim)
        s->head_dim = 0;
    if (s->set_head_dim && s->head_dim != s->n_embd / s->n_head)
        s->explicit_head_dim = true;
    if (!s->head_dim) {
        if (s->n_embd % s->n_head)
            return moed_err_set(e, MOED_EINVAL, "--d-model %u is not a multiple of --heads %u "
                                "(give --head-dim)", s->n_embd, s->n_head);
        s->head_dim = s->n_embd / s->n_head;
    }
    if (s->head_dim % 2)
        return moed_err_set(e, MOED_EINVAL, "head dim %u is odd (RoPE rotates pairs)",
                            s->head_dim);
    if (s->arch == MKM_LLAMA || s->arch == MKM_OLMOE) {
        /* one FFN size: feed_forward_length is the experts' size */
        if (s->set_ff && s->set_ff_exp && s->n_ff != s->n_ff_exp)
            return moed_err_set(e, MOED_EINVAL, "--ff %u and --ff-exp %u differ: %s has one "
                                "FFN size (the experts')", s->n_ff, s->n_ff_exp,
                                mkm_arch_name(s->arch));
        if (s->set_ff_exp)
            s->n_ff = s->n_ff_exp;
        s->n_ff_exp = s->n_ff;
    }
    if (!s->n_ff || !s->n_ff_exp || (s->arch == MKM_QWEN2MOE && !s->n_ff_shexp))
        return moed_err_set(e, MOED_EINVAL, "spec has a zero FFN size");
    if (s->arch != MKM_QWEN2MOE)
        s->n_ff_shexp = 0;
    if (s->init == MKM_INIT_DEFAULT)
        s->init = MKM_INIT_GAUSS;
    for (int g = 0; g < MKM_G_COUNT; g++)
        if (!mkm_type_ok((uint32_t)s->type[g]))
            return moed_err_set(e, MOED_EINVAL, "type %s cannot be generated",
                                kern_type_name((uint32_t)s->type[g]));
    if (s->vocab_from && s->no_vocab)
        return moed_err_set(e, MOED_EINVAL, "--vocab-from and --no-vocab exclude each other");
    uint32_t n_tok = 0;
    if (s->vocab_from) {
        int rc = mkm_vocab_count(s->vocab_from, &n_tok, e);
        if (rc)
            return rc;
    } else if (!s->no_vocab) {
        n_tok = MKM_BUILTIN_TOKENS;
    }
    if (!s->n_vocab)
        s->n_vocab = s->vocab_from ? (n_tok + 127) / 128 * 128 : 512;
    if (n_tok > s->n_vocab) {
        if (s->vocab_from)
            return moed_err_set(e, MOED_EINVAL, "--vocab-from %s: the tokenizer has %u tokens, "
                                "more than the model's vocabulary of %u (give --vocab %u or more)",
                                s->vocab_from, n_tok, s->n_vocab, n_tok);
        return moed_err_set(e, MOED_EINVAL, "--vocab %u: the built-in byte tokenizer needs %u "
                            "tokens (give --no-vocab for a model without a vocabulary)",
                            s->n_vocab, n_tok);
    }
    if (s->threads <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        s->threads = n > 0 ? (int)(n > 256 ? 256 : n) : 1;
    }
    return 0;
}
