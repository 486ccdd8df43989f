/*
 * Dot products of a weight row with an activation row, and the matrix
 * products built on them.
 *
 * A weight row of type t pairs with an activation row already converted to
 * kern_vec_dot_type(t) (quant.h): for the integer formats the activation is
 * quantized once per token (Q8_0, Q8_1 or Q8_K) and the inner loop is an
 * integer dot; F32/F16 weights take F32 activations, BF16 takes BF16.
 *
 * kern_vec_dot_ref is the scalar reference: it follows the format's
 * definition step by step, and every SIMD path is tested against it.
 */
#ifndef MOED_KERNELS_DOT_H
#define MOED_KERNELS_DOT_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/cpu/isa.h"
#include "kernels/cpu/types.h"

/* *s = dot(w, a) over n elements (n a multiple of the block size). */
typedef void (*kern_vec_dot_fn)(int64_t n, float *s, const void *w, const void *a);

/* Scalar reference; returns 0 or MOED_EUNSUPPORTED for a type without a dot. */
int kern_vec_dot_ref(uint32_t wtype, int64_t n, float *s, const void *w, const void *a);

/* ---- dispatched kernels, matvec and matmul (kernels/cpu/dot.c) ---- */

/*
 * Dispatch.  Every type with a dot has a kernel at every level: AVX2+FMA+F16C
 * and AVX-512 (F/BW/VL/DQ; vpdpbusd/vpdpwssd where the CPU has VNNI, the
 * same arithmetic with vpmaddubsw/vpmaddwd where it has not; vdpbf16ps
 * where it has AVX512_BF16).  A level that lacks a kernel for a type falls
 * back to the next lower one, down to the scalar reference.
 *
 * Integer kernels require activation quants in [-127, 127], which every
 * quantizer (reference or fast) produces (-128 would overflow the sign
 * trick), and Q8_K bsums equal to the sums of their 16 quants (the k-quant
 * kernels take the offsets and mins from them).
 */

/* Kernel for weight type wtype at level isa (clamped to kern_isa_best()),
 * with fallback; NULL when the type has no dot. */
kern_vec_dot_fn kern_vec_dot_get(uint32_t wtype, enum kern_isa isa);
/* The level whose kernel kern_vec_dot_get(wtype, isa) returns. */
enum kern_isa kern_vec_dot_level(uint32_t wtype, enum kern_isa isa);

/*
 * Fast activation quantization: f32 row -> row of atype (F32, BF16, Q8_0,
 * Q8_1, Q8_K; the types kern_vec_dot_type returns).  Bit-exact with
 * kern_quant_row_ref for every input, NaN and inf included: same scales
 * (d = amax / 127 for Q8_0/Q8_1, -127 / max for Q8_K), same rounding (ties
 * away from zero for Q8_0/Q8_1, to even for Q8_K), same clamping.
 */
typedef void (*kern_quant_row_fn)(const float *x, void *y, int64_t n);
/* Quantizer for atype at level isa with fallback; NULL for other types. */
kern_quant_row_fn kern_quant_act_get(uint32_t atype, enum kern_isa isa);
/* Quantize n elements at the active level; 0, MOED_EUNSUPPORTED or
 * MOED_EINVAL (n not a multiple of the block size). */
int kern_quant_act(uint32_t atype, const float *x, void *y, int64_t n);

/*
 * Matrix products (kernels/cpu/matmul.c):
 *     out[t * out_stride + r] = dot(W row r, act row t)
 * for rows r < rows and tokens t < ntok.  W row r starts w_stride bytes
 * after row r - 1 (kern_row_size(wtype, n) for a packed matrix); act rows
 * are of kern_vec_dot_type(wtype), a_stride bytes apart.
 *
 * Threading: call with (ith, nth) on nth threads (0 <= ith < nth); thread
 * ith computes a contiguous slice of rows (multiples of 16 rows, so no two
 * threads write one cache line of an output row), and the calls together
 * cover every row.  Nothing is allocated and no thread is created.
 *
 * ntok == 1 streams the slice's rows with software prefetch `prefetch`
 * bytes ahead.  ntok > 1 walks the slice in chunks of rows that fit in L2,
 * and for each chunk the tokens in groups of 4, so each weight block read
 * from DRAM serves every token and is unpacked once per 4 tokens.
 */
struct kern_matmul {
    uint32_t wtype;
    int64_t n;       /* elements per row (a multiple of the block size) */
    int64_t rows;    /* weight rows = outputs per token */
    const void *w;
    size_t w_stride; /* bytes; 0 means kern_row_size(wtype, n) */
    int64_t ntok;
    const void *act; /* kern_matmul: rows of kern_vec_dot_type(wtype);
                        kern_matmul_f32: f32 rows */
    size_t a_stride; /* bytes; 0 means packed rows */
    float *out;
    int64_t out_stride; /* floats between tokens' outputs; 0 means rows */
    int prefetch;       /* ntok == 1: bytes ahead; 0 default, < 0 none */
};

/* Returns 0, MOED_EUNSUPPORTED (no dot for wtype) or MOED_EINVAL. */
int kern_matmul(const struct kern_matmul *mm, int ith, int nth);

/*
 * Same with f32 activations: each thread quantizes all ntok rows into its
 * own scratch (at least kern_matmul_scratch_size bytes, 64-byte aligned
 * preferred; threads must not share one) and then computes its slice.  For
 * large ntok, quantize once with kern_quant_act and call kern_matmul.
 */
size_t kern_matmul_scratch_size(uint32_t wtype, int64_t n, int64_t ntok);
int kern_matmul_f32(const struct kern_matmul *mm, void *scratch, size_t scratch_size, int ith,
                    int nth);

/* Rows [*r0, *r1) of thread ith of nth for a matrix of `rows` rows. */
void kern_matmul_slice(int64_t rows, int ith, int nth, int64_t *r0, int64_t *r1);

#endif
