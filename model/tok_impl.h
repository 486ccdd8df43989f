/*
 * Tokenizer internals shared by model/tok*.c; not for other parts (they use
 * model/tok.h).  One file per idea: tok.c loads and answers queries,
 * tok_enc.c matches added tokens and drives encoding, tok_dec.c decodes and
 * streams, tok_pre.c splits text into words (PCRE2), tok_bpe.c and
 * tok_spm.c merge, tok_map.c holds the hash maps, tok_utf8.c the UTF-8 and
 * GPT-2 byte-mapping helpers.
 */
#ifndef MOED_MODEL_TOK_IMPL_H
#define MOED_MODEL_TOK_IMPL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"
#include "model/tok.h"

/* ---- UTF-8 and the GPT-2 byte mapping (tok_utf8.c) ------------------------ */

/* Decode one character of s[0..n) (n >= 1): returns its length (1..4) and
 * sets *cp, or returns 1 with *cp = -1 for a byte that does not start a
 * well-formed sequence (overlong, surrogate, > U+10FFFF, truncated). */
size_t tok_utf8_next(const uint8_t *s, size_t n, int32_t *cp);
/* Encode cp (<= U+10FFFF) into out[4]; returns the length. */
size_t tok_utf8_put(uint32_t cp, uint8_t *out);

/* GPT-2's byte -> printable character: bytes 0x21-0x7E, 0xA1-0xAC and
 * 0xAE-0xFF stand for themselves, the other 68 become U+0100.. in order. */
uint32_t tok_gpt2_char(uint8_t b);
/* The inverse: the byte a character stands for, or -1. */
int tok_gpt2_byte(uint32_t cp);
/* UTF-8 of tok_gpt2_char(b): 1 or 2 bytes in out, returns the length. */
size_t tok_gpt2_utf8(uint8_t b, uint8_t out[2]);

/* ---- hash maps (tok_map.c) ------------------------------------------------ */

/* Vocabulary text -> id, over the strings in struct tok's text arena. */
struct tok_strmap_slot {
    int32_t id;    /* -1: empty */
    uint32_t hash; /* high bits of the text's hash: most misses skip memcmp */
};
struct tok_strmap {
    struct tok_strmap_slot *slot;
    uint32_t mask;
};

/* BPE merges: (left id, right id) -> rank and the merged token's id. */
struct tok_merge {
    uint64_t key; /* left << 32 | right; UINT64_MAX = empty */
    uint32_t rank;
    int32_t id;
};
struct tok_mergemap {
    struct tok_merge *slot;
    uint32_t mask;
    uint32_t n;
};

/* Trie over the added tokens' texts (for matching them in input). */
struct tok_trie_node {
    int32_t child;   /* first child or -1 */
    int32_t sibling; /* next sibling or -1 */
    int32_t id;      /* token ending here or -1 */
    uint8_t byte;
    uint8_t control; /* 1: matched only with TOK_ENC_SPECIAL */
};
struct tok_trie {
    struct tok_trie_node *node; /* node[0] is the root */
    uint32_t n, cap;
    int32_t root[256]; /* root's child per first byte (fast first step) */
};

/* ---- pre-tokenizer (tok_pre.c) -------------------------------------------- */

struct tok_pre; /* compiled regex stages */

/* A byte range of the input. */
struct tok_span {
    size_t off, len;
};
struct tok_spans {
    struct tok_span *v;
    size_t n, cap;
};

/* ---- the tokenizer -------------------------------------------------------- */

struct tok {
    enum tok_model model;
    uint32_t n_vocab;

    /* Vocabulary texts, NUL-terminated, in one arena. */
    char *text;
    uint32_t *text_off, *text_len;
    /* Decoded pieces (what each token stands for), in one arena. */
    char *piece;
    uint32_t *piece_off, *piece_len;
    uint32_t max_piece;
    uint8_t *type;
    float *score; /* NULL for BPE without scores */

    struct tok_strmap map;
    struct tok_mergemap merges;
    struct tok_trie added;
    bool have_added; /* any USER_DEFINED token */
    bool have_control;

    /* BPE: the token of each byte's GPT-2 character; SPM: the <0xXX>
     * token of each byte.  -1 where the vocabulary has none. */
    int32_t byte_tok[256];
    bool all_bytes; /* every byte has a token */

    struct tok_pre *pre;
    char pre_name[48];
    bool ignore_merges;  /* a word that is a token is taken whole (Llama 3) */
    bool spm_word_split; /* no NORMAL piece has '▁' after another character */

    int32_t bos, eos, eot, unk, pad, sep;
    bool add_bos, add_eos, add_space_prefix;
    char *chat_template;

    char warning[256];
};

int32_t tok_map_find(const struct tok *t, const char *s, size_t len);
int tok_map_build(struct tok *t, struct moed_err *e);
const struct tok_merge *tok_merge_find(const struct tok_mergemap *m, int32_t l, int32_t r);
/* Adds (l, r) -> id at rank unless the pair is present (first wins). */
int tok_merge_add(struct tok_mergemap *m, int32_t l, int32_t r, uint32_t rank, int32_t id);
int tok_merge_init(struct tok_mergemap *m, uint32_t n_expected);
void tok_merge_free(struct tok_mergemap *m);
int tok_trie_add(struct tok_trie *tr, const char *s, size_t len, int32_t id, bool control);
void tok_trie_free(struct tok_trie *tr);
/* Longest added token starting at s[0..n): its length, and *id; 0 if none. */
size_t tok_trie_match(const struct tok_trie *tr, const uint8_t *s, size_t n, bool special,
                      int32_t *id);

/* Choose and compile the stages for tokenizer.ggml.pre = name (NULL when
 * absent); sets t->pre, t->pre_name, t->ignore_merges and, for an unknown
 * name, t->warning. */
int tok_pre_init(struct tok *t, const char *name, size_t name_len, struct moed_err *e);
void tok_pre_free(struct tok_pre *p);
/* Split text[0..len) into words (appended to out, in order, covering every
 * byte).  scratch is reused between calls; free with tok_pre_scratch_free. */
struct tok_pre_scratch;
int tok_pre_split(const struct tok_pre *p, const char *text, size_t len, struct tok_spans *out,
                  struct tok_pre_scratch **scratch, struct moed_err *e);
void tok_pre_scratch_free(struct tok_pre_scratch *s);

int tok_spans_push(struct tok_spans *s, size_t off, size_t len);
int tok_ids_push(struct tok_ids *ids, int32_t id);

/* Scratch for merging, reused across words within one encode call. */
struct tok_work {
    void *sym;
    size_t sym_cap; /* bytes */
    void *heap;
    size_t heap_cap; /* bytes */
    void *buf;
    size_t buf_cap;
};
/* Make *p hold at least need bytes (doubling); MOED_ENOMEM on failure. */
int tok_grow(void **p, size_t *cap, size_t need);

/* Merge one word / one SentencePiece fragment and append the ids.
 * Scratch buffers live in ws (zero-initialised; free with tok_work_free). */
int tok_bpe_word(const struct tok *t, const uint8_t *w, size_t n, struct tok_ids *out,
                 struct tok_work *ws);
int tok_spm_text(const struct tok *t, const uint8_t *s, size_t n, bool prefix_space,
                 struct tok_ids *out, struct tok_work *ws);
void tok_work_free(struct tok_work *ws);

/*
 * A binary heap of merge candidates, T ordered by FIRST(&a, &b) ("a comes out
 * before b"), kept in the work area's heap buffer.  Both merge loops (BPE by
 * rank, SentencePiece by score) instantiate it with their own candidate type:
 *     TOK_HEAP_DEFINE(struct cand, cand_less)
 * defines struct heap, heap_push(ws, h, c) and heap_pop(h).
 */
#define TOK_HEAP_DEFINE(T, FIRST)                                                                  \
    struct heap {                                                                                  \
        T *v;                                                                                      \
        size_t n;                                                                                  \
    };                                                                                             \
                                                                                                   \
    static int heap_push(struct tok_work *ws, struct heap *h, T c)                                 \
    {                                                                                              \
        if (tok_grow(&ws->heap, &ws->heap_cap, (h->n + 1) * sizeof(T)))                            \
            return MOED_ENOMEM;                                                                    \
        h->v = ws->heap;                                                                           \
        size_t i = h->n++;                                                                         \
        while (i > 0) {                                                                            \
            size_t p = (i - 1) / 2;                                                                \
            if (!FIRST(&c, &h->v[p]))                                                              \
                break;                                                                             \
            h->v[i] = h->v[p];                                                                     \
            i = p;                                                                                 \
        }                                                                                          \
        h->v[i] = c;                                                                               \
        return 0;                                                                                  \
    }                                                                                              \
                                                                                                   \
    static T heap_pop(struct heap *h)                                                              \
    {                                                                                              \
        T top = h->v[0];                                                                           \
        T last = h->v[--h->n];                                                                     \
        size_t i = 0;                                                                              \
        for (;;) {                                                                                 \
            size_t c = 2 * i + 1;                                                                  \
            if (c >= h->n)                                                                         \
                break;                                                                             \
            if (c + 1 < h->n && FIRST(&h->v[c + 1], &h->v[c]))                                     \
                c++;                                                                               \
            if (!FIRST(&h->v[c], &last))                                                           \
                break;                                                                             \
            h->v[i] = h->v[c];                                                                     \
            i = c;                                                                                 \
        }                                                                                          \
        if (h->n)                                                                                  \
            h->v[i] = last;                                                                        \
        return top;                                                                                \
    }

#endif
