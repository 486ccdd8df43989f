/*
 * Pieces shared by the GGUF reader (gguf.c) and writer (gguf_write.c), not
 * part of the public API: value-type sizes, a string index (open addressing
 * over (ptr, len) names, used for keys and tensor names), and the quoting of
 * names from a file for error messages (a hostile name could hold newlines
 * or be megabytes long; a message is one short line).
 */
#ifndef MOED_MODEL_GGUF_INTERNAL_H
#define MOED_MODEL_GGUF_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "model/gguf.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "moed's GGUF code reads little-endian files with memcpy: little-endian hosts only"
#endif

/* Arrays nested inside arrays: at most this many levels (an array of
 * arrays of strings is depth 2). */
#define GGUF_MAX_NEST 8

/* Bytes of a fixed-size value type; 0 for STRING, ARRAY and unknown types. */
size_t gguf_vtype_size(uint32_t t);

/* Integer value types (BOOL is not one). */
int gguf_vtype_is_int(uint32_t t);
int gguf_vtype_is_signed(uint32_t t);

/*
 * Name index: maps a (ptr, len) name to the caller's index of it.  Slots
 * hold indices only; names are read back through name_of(ctx, i), so the
 * caller's array may move (realloc) as long as ctx still reaches it.
 */
struct gguf_index {
    size_t cap;     /* power of two, or 0 */
    size_t n;
    uint64_t *slot; /* 0 = empty, else caller index + 1 */
    /* Reaches the name of index i (the caller's array). */
    struct gguf_str (*name_of)(const void *ctx, uint64_t i);
    const void *ctx;
};

void gguf_index_init(struct gguf_index *ix, struct gguf_str (*name_of)(const void *, uint64_t),
                     const void *ctx);
void gguf_index_free(struct gguf_index *ix);
/* Index of the name or -1. */
int64_t gguf_index_find(const struct gguf_index *ix, const char *name, size_t len);
/* Adds i under its name: 0, 1 when the name is already present (*dup set to
 * the other index), or MOED_ENOMEM. */
int gguf_index_add(struct gguf_index *ix, uint64_t i, uint64_t *dup);

/* Quote a name for a message: printable ASCII kept, other bytes as \xNN,
 * long names cut with "..."; always NUL-terminated in buf. Returns buf. */
const char *gguf_quote(char *buf, size_t size, const char *p, uint64_t len);
#define GGUF_QUOTE_MAX 96

#endif
