/*
 * Matrix-vector and matrix-matrix products over quantized weights (dot.h).
 *
 * Plain C: the arithmetic is in the per-ISA tile kernels (dot_impl.h).  What
 * this file decides is the order in which weight bytes come from memory:
 *
 * - ntok == 1 (decode matvec): the thread's rows are streamed once, in
 *   order, with software prefetch a fixed distance ahead (on top of the
 *   hardware streamers, which need a few lines of each new stream to ramp
 *   up; an expert slice is only ~50 KB per thread).
 * - ntok > 1 (prefill, batched decode): rows in L2-sized chunks; for each
 *   chunk, tokens in groups of KERN_TILE_T, so a weight row is read from
 *   DRAM once, unpacked once per group, and the group's activation rows stay
 *   in L1 while the chunk's rows go by.
 */
#include "kernels/cpu/dot.h"

#include "common/err.h"
#include "kernels/cpu/dot_impl.h"
#include "kernels/cpu/quant.h"

#define ROW_ALIGN 16             /* rows per unit of the thread split */
#define CHUNK_BYTES (96 * 1024)  /* weight bytes per row chunk (L2-resident) */
#define PREFETCH_DEFAULT 2048    /* bytes ahead for the matvec stream */
#define LINE 64

void kern_matmul_slice(int64_t rows, int ith, int nth, int64_t *r0, int64_t *r1)
{
    int64_t units = (rows + ROW_ALIGN - 1) / ROW_ALIGN;
    int64_t u0 = units * ith / nth, u1 = units * (ith + 1) / nth;
    *r0 = u0 * ROW_ALIGN < rows ? u0 * ROW_ALIGN : rows;
    *r1 = u1 * ROW_ALIGN < rows ? u1 * ROW_ALIGN : rows;
}

static void prefetch_row(const char *p, size_t bytes)
{
    for (size_t o = 0; o < bytes; o += LINE)
        __builtin_prefetch(p + o, 0, 3);
}

static void matvec(const struct kern_matmul *mm, kern_vec_dot_fn dot, size_t ws, size_t rs,
                   int64_t r0, int64_t r1)
{
    const char *w = (const char *)mm->w;
    int64_t ahead = 0;
    if (mm->prefetch >= 0) {
        size_t dist = mm->prefetch ? (size_t)mm->prefetch : PREFETCH_DEFAULT;
        ahead = (int64_t)((dist + ws - 1) / ws);
        for (int64_t r = r0; r < r0 + ahead && r < r1; r++)
            prefetch_row(w + (size_t)r * ws, rs);
    }
    for (int64_t r = r0; r < r1; r++) {
        if (ahead && r + ahead < r1)
            prefetch_row(w + (size_t)(r + ahead) * ws, rs);
        dot(mm->n, mm->out + r, w + (size_t)r * ws, mm->act);
    }
}

static void matmul_blocked(const struct kern_matmul *mm, struct kern_dot_kernels k, size_t ws,
                           size_t rs, size_t as, int64_t os, int64_t r0, int64_t r1)
{
    const char *w = (const char *)mm->w;
    const char *act = (const char *)mm->act;
    int64_t chunk = (int64_t)(CHUNK_BYTES / (rs ? rs : 1));
    if (chunk < 4)
        chunk = 4;
    for (int64_t rc = r0; rc < r1; rc += chunk) {
        int64_t re = rc + chunk < r1 ? rc + chunk : r1;
        for (int64_t t0 = 0; t0 < mm->ntok; t0 += KERN_TILE_T) {
            int nt = mm->ntok - t0 < KERN_TILE_T ? (int)(mm->ntok - t0) : KERN_TILE_T;
            const char *ap = act + (size_t)t0 * as;
            float *op = mm->out + t0 * os;
            for (int64_t r = rc; r < re; r++) {
                const char *wr = w + (size_t)r * ws;
                if (k.tile) {
                    k.tile(mm->n, wr, ap, as, op + r, os, nt);
                } else {
                    for (int t = 0; t < nt; t++)
                        k.dot(mm->n, op + t * os + r, wr, ap + (size_t)t * as);
                }
            }
        }
    }
}

int kern_matmul(const struct kern_matmul *mm, int ith, int nth)
{
    int atype = kern_vec_dot_type(mm->wtype);
    if (atype < 0)
        return MOED_EUNSUPPORTED;
    if (nth < 1 || ith < 0 || ith >= nth || mm->rows < 0 || mm->ntok < 0 || mm->n <= 0)
        return MOED_EINVAL;
    size_t rs = kern_row_size(mm->wtype, mm->n);
    size_t ars = kern_row_size((uint32_t)atype, mm->n);
    if (rs == 0 || ars == 0)
        return MOED_EINVAL;
    size_t ws = mm->w_stride ? mm->w_stride : rs;
    size_t as = mm->a_stride ? mm->a_stride : ars;
    int64_t os = mm->out_stride ? mm->out_stride : mm->rows;
    if (ws < rs || as < ars || os < mm->rows)
        return MOED_EINVAL;
    int64_t r0, r1;
    kern_matmul_slice(mm->rows, ith, nth, &r0, &r1);
    if (r0 >= r1 || mm->ntok == 0)
        return 0;
    struct kern_dot_kernels k = kern_dot_kernels_get(mm->wtype, kern_isa_active());
    if (mm->ntok == 1)
        matvec(mm, k.dot, ws, rs, r0, r1);
    else
        matmul_blocked(mm, k, ws, rs, as, os, r0, r1);
    return 0;
}

size_t kern_matmul_scratch_size(uint32_t wtype, int64_t n, int64_t ntok)
{
    int atype = kern_vec_dot_type(wtype);
    if (atype < 0 || ntok < 0)
        return 0;
    return kern_row_size((uint32_t)atype, n) * (size_t)ntok;
}

int kern_matmul_f32(const struct kern_matmul *mm, void *scratch, size_t scratch_size, int ith,
                    int nth)
{
    int atype = kern_vec_dot_type(mm->wtype);
    if (atype < 0)
        return MOED_EUNSUPPORTED;
    size_t ars = kern_row_size((uint32_t)atype, mm->n);
    if (ars == 0 || mm->ntok < 0 || scratch_size < ars * (size_t)mm->ntok)
        return MOED_EINVAL;
    if (nth < 1 || ith < 0 || ith >= nth || mm->rows < 0)
        return MOED_EINVAL;
    int64_t r0, r1;
    kern_matmul_slice(mm->rows, ith, nth, &r0, &r1);
    if (r0 >= r1) /* nothing to compute: skip the quantization too */
        return 0;
    kern_quant_row_fn q = kern_quant_act_get((uint32_t)atype, kern_isa_active());
    size_t xs = mm->a_stride ? mm->a_stride : (size_t)mm->n * sizeof(float);
    for (int64_t t = 0; t < mm->ntok; t++)
        q((const float *)((const char *)mm->act + (size_t)t * xs), (char *)scratch + (size_t)t * ars,
          mm->n);
    struct kern_matmul m2 = *mm;
    m2.act = scratch;
    m2.a_stride = ars;
    return kern_matmul(&m2, ith, nth);
}
