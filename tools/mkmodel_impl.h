/* moed-mkmodel internals shared by tools/mkmodel_*.c (see mkmodel.h). */
#ifndef MOED_TOOLS_MKMODEL_IMPL_H
#define MOED_TOOLS_MKMODEL_IMPL_H

#include <stddef.h>
#include <stdint.h>

#include "model/gguf.h"
#include "tools/mkmodel.h"

#define MKM_NAME_MAX 64

/* How a tensor's values are drawn. */
enum mkm_fill {
    MKM_FILL_MATRIX, /* mean 0, std sigma */
    MKM_FILL_NORM,   /* mean 1, std MKM_NORM_STD */
};

#define MKM_NORM_STD 0.05f
#define MKM_BIAS_STD 0.1f

struct mkm_tensor {
    char name[MKM_NAME_MAX];
    uint32_t n_dims;
    int64_t ne[3];
    uint32_t type;   /* enum kern_type, after any fallback */
    enum mkm_fill fill;
    float sigma;
    uint64_t seed;   /* from (spec seed, name) */
    uint64_t nrows;  /* ne[1] * ne[2] */
    size_t row_bytes;
    uint64_t nbytes;
};

struct mkm_plan {
    struct mkm_tensor *t;
    size_t n, cap;
};

/* Tensors of the spec in file order (token_embd, blk.N.* by layer then
 * name, output*), with types resolved (fallbacks warned on s->log). */
int mkm_plan_build(struct mkm_plan *p, const struct mkm_spec *s, struct moed_err *e);
void mkm_plan_free(struct mkm_plan *p);

/* Metadata (general.*, <arch>.*, tokenizer.*) and tensor infos into w;
 * *n_tok: the tokenizer's own tokens; *header_bytes: the file's bytes
 * before the tensor data (padding included). */
int mkm_meta_set(struct gguf_writer *w, const struct mkm_spec *s, const struct mkm_plan *p,
                 uint32_t *n_tok, uint64_t *header_bytes, struct moed_err *e);

/* Tokens of a vocabulary GGUF (its tokenizer.ggml.tokens). */
int mkm_vocab_count(const char *path, uint32_t *n_tok, struct moed_err *e);

/* The weight types mkmodel can generate; MKM_BUILTIN_TOKENS tokens in the
 * built-in byte-level tokenizer. */
bool mkm_type_ok(uint32_t type);
#define MKM_BUILTIN_TOKENS 257u

/* The 64-bit mixer the seeds and random streams are built from
 * (splitmix64's finaliser), and a hash of a name. */
static inline uint64_t mkm_mix(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xBF58476D1CE4E5B9ull;
    x ^= x >> 27;
    x *= 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}
uint64_t mkm_hash(const char *s);

/* Fill rows [row0, row0 + nrows) of t into dst (nrows * row_bytes bytes);
 * scratch holds ne[0] floats. */
void mkm_fill_rows(const struct mkm_tensor *t, enum mkm_init init, uint64_t row0,
                   uint64_t nrows, void *dst, float *scratch);

#endif
