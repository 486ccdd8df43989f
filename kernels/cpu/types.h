/*
 * Tensor element types, numbered exactly as GGUF (ggml_type) numbers them,
 * with their block geometry.  The GGUF reader uses this table to check that
 * a tensor's byte size matches its shape; the kernels use it to walk rows.
 *
 * A "block" holds blck elements in type_size bytes; a row of n elements
 * (n a multiple of blck) is n / blck * type_size bytes.
 */
#ifndef MOED_KERNELS_TYPES_H
#define MOED_KERNELS_TYPES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum kern_type {
    KT_F32 = 0,
    KT_F16 = 1,
    KT_Q4_0 = 2,
    KT_Q4_1 = 3,
    /* 4, 5: removed Q4_2, Q4_3 */
    KT_Q5_0 = 6,
    KT_Q5_1 = 7,
    KT_Q8_0 = 8,
    KT_Q8_1 = 9,
    KT_Q2_K = 10,
    KT_Q3_K = 11,
    KT_Q4_K = 12,
    KT_Q5_K = 13,
    KT_Q6_K = 14,
    KT_Q8_K = 15,
    KT_IQ2_XXS = 16,
    KT_IQ2_XS = 17,
    KT_IQ3_XXS = 18,
    KT_IQ1_S = 19,
    KT_IQ4_NL = 20,
    KT_IQ3_S = 21,
    KT_IQ2_S = 22,
    KT_IQ4_XS = 23,
    KT_I8 = 24,
    KT_I16 = 25,
    KT_I32 = 26,
    KT_I64 = 27,
    KT_F64 = 28,
    KT_IQ1_M = 29,
    KT_BF16 = 30,
    /* 31..33: removed Q4_0_4_4, Q4_0_4_8, Q4_0_8_8 */
    KT_TQ1_0 = 34,
    KT_TQ2_0 = 35,
    /* 36..38: removed IQ4_NL_4_4, IQ4_NL_4_8, IQ4_NL_8_8 */
    KT_MXFP4 = 39,
    KT_COUNT = 40,
};

#define QK_K 256 /* super-block size of the k-quants */

struct kern_type_traits {
    const char *name; /* "Q4_K"; NULL for numbers no type uses */
    uint32_t blck;    /* elements per block */
    uint32_t size;    /* bytes per block */
    bool quantized;
};

/* Traits of t, or NULL when t is not a known GGUF type number. */
const struct kern_type_traits *kern_type_traits(uint32_t t);

/* "Q4_K", or "?" for an unknown number. */
const char *kern_type_name(uint32_t t);

/* Type with that name (case-insensitive), or -1. */
int kern_type_from_name(const char *name);

/*
 * Bytes of a row of n elements of type t; 0 when t is unknown or n is not a
 * multiple of the block size (callers treat 0 as an error).
 */
size_t kern_row_size(uint32_t t, int64_t n);

#endif
