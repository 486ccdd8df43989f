/*
 * Tiny random models for the model and forward tests, written with the C
 * GGUF writer into memory: any of the four architectures, F32 or Q8_0
 * matrices, with a tensor left out or given a wrong shape on request (the
 * loader's error tests).
 */
#ifndef MOED_TESTS_TEST_FORWARD_TINY_H
#define MOED_TESTS_TEST_FORWARD_TINY_H

#include <stddef.h>
#include <stdint.h>

#include "model/gguf.h"
#include "model/model.h"

struct tiny_spec {
    enum model_arch arch;
    uint32_t wtype; /* matrices: KT_F32 or KT_Q8_0 (norms stay F32) */
    int n_layer, n_embd, n_head, n_head_kv, head_dim;
    int n_expert, n_used, n_ff, n_ff_shexp, n_vocab;
    int norm_topk; /* -1: no key */
    uint64_t seed;
    const char *skip;     /* tensor not to write */
    const char *reshape;  /* tensor written with ne[0] doubled */
    const char *skip_key; /* metadata key not to write */
    int tied;             /* no output tensor */
};

/* Defaults: 2 layers, d 64, 4 heads / 2 KV heads of 16, 8 experts top 2,
 * ff 32, shared ff 64 (qwen2moe), vocab 96. */
struct tiny_spec tiny_default(enum model_arch arch, uint32_t wtype);

/* The model as a GGUF in memory (caller frees *buf); 0 or a writer error. */
int tiny_build(const struct tiny_spec *s, uint8_t **buf, size_t *size);

/* tiny_build + gguf_open_mem + model_init; the caller closes both and frees
 * *buf.  Returns model_init's code, e filled. */
int tiny_load(const struct tiny_spec *s, uint8_t **buf, struct gguf *g, struct model *m,
              struct moed_err *e);

/*
 * The GGUF at path copied into memory with every quantized tensor
 * dequantized to F32: the same weights, for exact-math comparisons.  *buf
 * holds the file (free it after closing g); the model is bound on g.
 */
int tiny_load_dequantized(const char *path, uint8_t **buf, struct gguf *g, struct model *m,
                          struct moed_err *e);

/* moed-mkmodel (its library) writing path, quietly, with the given
 * arguments (NULL-terminated, e.g. "--preset", "tiny-olmoe", NULL). */
int tiny_mkmodel(const char *path, const char *const *args, struct moed_err *e);

#endif
