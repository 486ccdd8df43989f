/*
 * A loaded model: hyper-parameters read from GGUF metadata and the weights
 * bound by name, each checked for shape and type.  Weights are pointers into
 * the mapped file (struct gguf_tensor::data); nothing is copied.
 *
 * Architectures (general.architecture), all decoder-only transformers whose
 * feed-forward layer is a mixture of SwiGLU experts:
 *
 *   arch      RoPE     QK-norm                 QKV bias  shared expert       renormalise top-k
 *   qwen3moe  NEOX     per head ({head_dim})   no        no                  key, default yes
 *   qwen2moe  NEOX     no                      yes       sigmoid-gated       key, default no
 *   llama     normal   no                      no        no                  key, default yes
 *   olmoe     NEOX     whole projection        no        no                  key, default no
 *
 * "normal" RoPE rotates adjacent pairs (x[2i], x[2i+1]); llama GGUFs carry
 * Q/K rows permuted so that this equals HF's rotate-half.  NEOX rotates
 * (x[i], x[i + n_rot/2]).  The renormalisation flag is
 * <arch>.expert_weights_norm; files converted by llama.cpp lack it and get
 * llama.cpp's hard-coded behaviour (tools/README.md).
 *
 * Tensor names and shapes (ne fastest-first, E = n_expert):
 *   token_embd {n_embd, n_vocab}; output_norm {n_embd}; output {n_embd, n_vocab}
 *   (optional: token_embd is used when absent);
 *   blk.N.attn_norm, ffn_norm {n_embd}; attn_q {n_embd, n_head*hd};
 *   attn_k, attn_v {n_embd, n_head_kv*hd}; attn_output {n_head*hd, n_embd};
 *   attn_{q,k,v}.bias (qwen2moe); attn_q_norm, attn_k_norm (qwen3moe {hd},
 *   olmoe {n_head*hd} and {n_head_kv*hd}); ffn_gate_inp {n_embd, E};
 *   ffn_gate_exps, ffn_up_exps {n_embd, n_ff_exp, E}; ffn_down_exps
 *   {n_ff_exp, n_embd, E}; qwen2moe: ffn_gate_inp_shexp {n_embd},
 *   ffn_{gate,up}_shexp {n_embd, n_ff_shexp}, ffn_down_shexp {n_ff_shexp, n_embd}.
 * Vectors (norms, biases, ffn_gate_inp_shexp) must be F32; matrices may be
 * any type the CPU kernels have a dot product for.
 */
#ifndef MOED_MODEL_MODEL_H
#define MOED_MODEL_MODEL_H

#include <stdbool.h>
#include <stdint.h>

#include "common/err.h"
#include "model/gguf.h"

enum model_arch {
    MODEL_ARCH_QWEN3MOE,
    MODEL_ARCH_QWEN2MOE,
    MODEL_ARCH_LLAMA, /* with experts: Mixtral */
    MODEL_ARCH_OLMOE,
    MODEL_ARCH_COUNT
};

enum model_qk_norm {
    MODEL_QK_NORM_NONE,
    MODEL_QK_NORM_HEAD, /* RMSNorm of each head's head_dim values, one weight shared by heads */
    MODEL_QK_NORM_FULL, /* RMSNorm of the whole projection (all heads together) */
};

struct model_hparams {
    enum model_arch arch;
    int32_t n_layer;
    int32_t n_embd;
    int32_t n_vocab;     /* rows of token_embd */
    int32_t n_ctx_train; /* <arch>.context_length, 0 when absent */
    int32_t n_head, n_head_kv;
    int32_t head_dim; /* attention.key_length (= value_length), default n_embd / n_head */
    int32_t n_expert, n_expert_used;
    int32_t n_ff_exp;   /* rows of one expert's gate/up */
    int32_t n_ff_shexp; /* qwen2moe's shared expert; 0 without one */
    float rms_eps;
    float rope_base;  /* rope.freq_base, default 10000 */
    float rope_scale; /* linear position scaling: positions are divided by it (1: none) */
    int32_t n_rot;    /* rope.dimension_count: leading dims of a head that rotate */
    bool rope_neox;
    enum model_qk_norm qk_norm;
    bool qkv_bias;
    bool norm_topk; /* renormalise the top-k routing weights to sum 1 */
};

/* One layer's weights: tensors of the mapped file, NULL where the arch has none. */
struct model_layer {
    const struct gguf_tensor *attn_norm;
    const struct gguf_tensor *wq, *wk, *wv, *wo;
    const struct gguf_tensor *bq, *bk, *bv;
    const struct gguf_tensor *q_norm, *k_norm;
    const struct gguf_tensor *ffn_norm;
    const struct gguf_tensor *router; /* ffn_gate_inp */
    const struct gguf_tensor *gate_exps, *up_exps, *down_exps;
    const struct gguf_tensor *gate_inp_shexp, *gate_shexp, *up_shexp, *down_shexp;
};

struct model {
    struct model_hparams hp;
    const struct gguf_tensor *tok_embd, *output_norm;
    const struct gguf_tensor *output; /* tok_embd when the file has no output */
    struct model_layer *layers;       /* n_layer */
    const struct gguf *gguf;          /* the file the tensors point into */
    struct gguf own;                  /* model_open's mapping */
    bool owns_gguf;
};

/* Map a GGUF file and bind it.  Errors start with the path. */
int model_open(struct model *m, const char *path, struct moed_err *e);
/* Bind a GGUF the caller keeps open (it must outlive m). */
int model_init(struct model *m, const struct gguf *g, struct moed_err *e);
/* Free the layer table (and the mapping of model_open); m is zeroed. */
void model_close(struct model *m);

const char *model_arch_name(enum model_arch arch);
/* Bytes of all weights the model binds. */
uint64_t model_weight_bytes(const struct model *m);

#endif
