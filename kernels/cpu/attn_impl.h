/*
 * The tile loop of kern_attn_group, shared by every level (attn.c,
 * attn_avx2.c, attn_avx512.c).  The including file defines, before
 * including this header (no intrinsics here):
 *
 *   ATTN_FN            the function's name
 *   attn_row(base, type, off, hd, buf)   -> const float *: row off of a
 *                      KT_F32 cache itself, or a KT_F16 row converted into buf
 *   attn_dot(a, b, n)  -> float: sum a[d] b[d]
 *   attn_vacc(out, r, rows, e, nt, n)    out[d] = r out[d] + sum_j e[j] rows[j][d]
 *                      (j in order 0..nt-1)
 *   attn_scale(out, a, n)                out[d] *= a
 *
 * Per tile of nt positions: the nt K rows give the n_q x nt scores; each
 * head's maximum m and sum l move to the tile's maximum (one expf(m_old -
 * m_new) per head and tile, 0 on the first tile since m starts at -inf),
 * the scores become expf(s - m); then the nt V rows are accumulated into
 * each head's output, rescaled in the same pass.  The output is divided by
 * l at the end.
 */
#include <math.h>
#include <stddef.h>

#include "kernels/cpu/attn.h"
#include "kernels/cpu/types.h"

/* f32 values of a tile of F16 V rows (nt * head_dim <= this). */
#define ATTN_VBUF 8192

void ATTN_FN(const struct kern_attn_group *g)
{
    const int nq = g->n_q, hd = g->head_dim;
    const int tile = hd * KERN_ATTN_TILE <= ATTN_VBUF ? KERN_ATTN_TILE : ATTN_VBUF / hd;
    float m[KERN_ATTN_MAX_Q], l[KERN_ATTN_MAX_Q], r[KERN_ATTN_MAX_Q];
    float s[KERN_ATTN_MAX_Q][KERN_ATTN_TILE];
    _Alignas(64) float kbuf[KERN_ATTN_MAX_HD];
    _Alignas(64) float vbuf[ATTN_VBUF];
    const float *vrows[KERN_ATTN_TILE];

    for (int i = 0; i < nq; i++) {
        m[i] = -INFINITY;
        l[i] = 0;
        float *o = g->out + (size_t)i * g->out_stride;
        for (int d = 0; d < hd; d++)
            o[d] = 0;
    }
    for (int32_t p0 = 0; p0 < g->n_pos; p0 += tile) {
        const int nt = g->n_pos - p0 < tile ? (int)(g->n_pos - p0) : tile;
        /* scores: each K row once for the group */
        for (int j = 0; j < nt; j++) {
            const float *kr = attn_row(g->k, g->kv_type, (size_t)(p0 + j) * g->kv_stride, hd, kbuf);
            for (int i = 0; i < nq; i++)
                s[i][j] = g->scale * attn_dot(g->q + (size_t)i * g->q_stride, kr, hd);
        }
        /* online softmax, once per head and tile */
        for (int i = 0; i < nq; i++) {
            float mx = m[i];
            for (int j = 0; j < nt; j++)
                mx = s[i][j] > mx ? s[i][j] : mx;
            r[i] = 1.0f;
            if (mx > m[i]) {
                r[i] = expf(m[i] - mx); /* 0 on the first tile */
                l[i] *= r[i];
                m[i] = mx;
            }
            float sum = 0;
            for (int j = 0; j < nt; j++) {
                s[i][j] = expf(s[i][j] - m[i]);
                sum += s[i][j];
            }
            l[i] += sum;
        }
        /* values: each V row once for the group (F16: the tile converted once) */
        for (int j = 0; j < nt; j++)
            vrows[j] = attn_row(g->v, g->kv_type, (size_t)(p0 + j) * g->kv_stride, hd,
                                vbuf + (size_t)j * hd);
        for (int i = 0; i < nq; i++)
            attn_vacc(g->out + (size_t)i * g->out_stride, r[i], vrows, s[i], nt, hd);
    }
    for (int i = 0; i < nq; i++)
        attn_scale(g->out + (size_t)i * g->out_stride, l[i] > 0 ? 1.0f / l[i] : 0.0f, hd);
}
