/*
 * moed-mkmodel: GGUF files of real MoE architecture shapes with seeded
 * random weights, for benchmarks (full-size presets) and tests (tiny ones).
 *
 * A model is described by a struct mkm_spec: a preset fills it, options
 * override fields, mkm_spec_finish derives what was left open and checks
 * the whole; mkm_write then plans the tensors (names, shapes and GGUF keys
 * exactly as tools/hf2gguf.py writes them, see tools/README.md), copies a
 * tokenizer, and streams the weights through the GGUF writer: worker
 * threads fill fixed chunks of rows into a ring of buffers while the
 * calling thread writes them in file order, so memory stays at a few
 * buffers per thread whatever the model's size.
 *
 * Reproducibility: every row's random stream is seeded from (seed, tensor
 * name, row index) alone, so the same spec gives the same bytes for any
 * thread count or chunking.
 *
 * Weights:
 *   gauss   floats ~ N(0, sigma) (sum of four uniforms), norms ~ 1, then
 *           kern_quant_row_ref for quantized types.
 *   blocks  quantized types only: random quants with block scales chosen
 *           so the dequantized values have mean ~0 and std sigma, written
 *           directly (no quantizer: the speed of a memory fill).
 * sigma is 1/sqrt(fan_in) for every matrix (down-projections and output
 * included) and 1/sqrt(n_embd) for the embeddings, so each layer adds O(1)
 * to the residual stream, RMSNorm bounds the rest, and a 48-layer forward
 * pass stays finite (tests/unit/test_mkmodel.c runs one).  gauss goes
 * through the reference quantizers, slow for k-quants (~250 ns a weight):
 * it is the tiny presets' default; blocks is the full-size presets'.
 *
 * Tokenizer: --vocab-from copies every tokenizer.* key of a vocabulary
 * GGUF and pads the per-token arrays to the model's vocabulary with
 * "[PAD<id>]" tokens of type unused (score -1000), as llama.cpp's converter
 * does; without it a 257-token byte-level BPE (GPT-2's byte characters,
 * no merges, <|endoftext|>) is written, so any text encodes; --no-vocab
 * writes tokenizer.ggml.model "none" and <arch>.vocab_size, as hf2gguf.py
 * does for a checkpoint without tokenizer files.
 *
 * Measured (blocks, reference preset): 1.2-1.35 GB/s of tensor data per
 * generator thread; the whole 16.75 GiB reference file in 5.5 s with 16
 * threads on the GPU machine (page cache; sync 4.6 s more), peak RSS
 * 149 MB.
 */
#ifndef MOED_TOOLS_MKMODEL_H
#define MOED_TOOLS_MKMODEL_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "common/err.h"

enum mkm_arch { MKM_QWEN3MOE, MKM_QWEN2MOE, MKM_LLAMA, MKM_OLMOE };
enum mkm_init { MKM_INIT_DEFAULT, MKM_INIT_GAUSS, MKM_INIT_BLOCKS };

/* Tensor groups that share one --type-* option. */
enum mkm_group {
    MKM_G_EXPERTS, /* ffn_{gate,up,down}_exps */
    MKM_G_SHEXP,   /* qwen2moe's ffn_{gate,up,down}_shexp */
    MKM_G_ATTN,    /* attn_q, attn_k, attn_v, attn_output */
    MKM_G_EMBD,    /* token_embd */
    MKM_G_OUTPUT,  /* output */
    MKM_G_NORM,    /* vectors: norms, biases, ffn_gate_inp_shexp (F32 only) */
    MKM_G_ROUTER,  /* ffn_gate_inp */
    MKM_G_COUNT
};

struct mkm_spec {
    const char *preset;   /* name of the preset it started from */
    enum mkm_arch arch;
    char name[96];        /* general.name (default: the preset's name) */
    uint32_t n_layer, n_embd, n_head, n_head_kv;
    uint32_t head_dim;    /* 0: n_embd / n_head */
    uint32_t n_expert, n_expert_used;
    uint32_t n_ff;        /* <arch>.feed_forward_length (llama, olmoe: the experts' size) */
    uint32_t n_ff_exp;    /* expert FFN (qwen*: expert_feed_forward_length) */
    uint32_t n_ff_shexp;  /* qwen2moe's shared expert */
    uint32_t n_vocab;     /* 0: the tokenizer's size rounded up to 128, or 512 */
    uint32_t n_ctx;
    float rope_theta, rms_eps;
    bool expert_weights_norm;
    bool tied;            /* omit output.weight (tied embeddings) */
    bool explicit_head_dim; /* write attention.key_length / value_length */
    int32_t type[MKM_G_COUNT]; /* enum kern_type */
    uint64_t seed;
    enum mkm_init init;
    int threads;          /* 0: online CPUs */
    uint32_t alignment;   /* general.alignment; 0 or 32: default (not written) */
    const char *vocab_from; /* tokenizer source GGUF; NULL: built-in byte tokenizer */
    bool no_vocab;        /* no vocabulary: tokenizer.ggml.model "none" (as hf2gguf.py) */
    const char *out;
    bool dry_run;         /* plan and print, write nothing */
    FILE *log;            /* warnings and the summary; NULL: silent */
    bool progress;        /* periodic progress lines on log */

    /* which fields an option set (mkm_spec_finish derives the others) */
    bool set_head_dim, set_ff, set_ff_exp, set_vocab, set_type[MKM_G_COUNT];
};

struct mkm_stats {
    uint64_t file_bytes;  /* whole file */
    uint64_t data_bytes;  /* tensor data with its padding */
    uint64_t n_params;
    uint32_t n_tensors;
    uint32_t n_vocab_tok; /* tokens the tokenizer had before padding */
    int threads;
    double seconds;       /* generating and writing the data */
};

/* Fill s with the preset's shape and defaults (s is cleared first). */
int mkm_preset(struct mkm_spec *s, const char *name, struct moed_err *e);
/* Names of the presets, NULL-terminated. */
const char *const *mkm_preset_names(void);
const char *mkm_arch_name(enum mkm_arch a);

/*
 * Parse the command line (argv[0] is the program): --preset first, then
 * every other option in order.  Returns 0, 1 when --help or
 * --list-presets was handled (printed on out), or an error naming the
 * option and the bad value.  Calls mkm_spec_finish.
 */
int mkm_parse_args(struct mkm_spec *s, int argc, char **argv, FILE *out, struct moed_err *e);
void mkm_usage(FILE *f);

/* Derive open fields (head_dim, vocab, init ...) and check the spec. */
int mkm_spec_finish(struct mkm_spec *s, struct moed_err *e);

/* Plan, write s->out (or only plan when dry_run), fill st (may be NULL). */
int mkm_write(const struct mkm_spec *s, struct mkm_stats *st, struct moed_err *e);

#endif
