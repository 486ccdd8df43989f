/* Shared by the GPU tests (test_cuda.h). */
#include "tests/unit/test_cuda.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/types.h"
#include "model/forward.h"
#include "sched/hybrid.h"

const char *test_gpu_unavailable(void)
{
    static char why[MOED_ERR_MSG + 64];
    static int state; /* 0 unknown, 1 usable, 2 not */
    if (state == 1)
        return NULL;
    if (state == 2)
        return why;
    struct moed_err e = {0};
    int n = kcuda_device_count(&e);
    if (n < 0) {
        snprintf(why, sizeof why, "no CUDA device: %s", e.msg);
    } else if (n == 0) {
        snprintf(why, sizeof why, "no CUDA device: the driver reports none");
    } else if (kc_set_device(0, &e)) {
        snprintf(why, sizeof why, "no CUDA device: %s", e.msg);
    } else {
        state = 1;
        return NULL;
    }
    state = 2;
    return why;
}

void grouping_free(struct grouping *g)
{
    free(g->pair_tok);
    free(g->pair_of);
    free(g->pair_exp);
    free(g->tiles);
    memset(g, 0, sizeof *g);
}

bool grouping_make(struct grouping *g, const int32_t *ids, int n_tok, int k, int n_expert,
                   int tile)
{
    memset(g, 0, sizeof *g);
    g->n_pairs = n_tok * k;
    g->max_tiles = kc_moe_max_tiles(n_tok, k, n_expert, tile);
    g->pair_tok = malloc(sizeof(int32_t) * (size_t)g->n_pairs);
    g->pair_of = malloc(sizeof(int32_t) * (size_t)g->n_pairs);
    g->pair_exp = malloc(sizeof(int32_t) * (size_t)g->n_pairs);
    g->tiles = malloc(sizeof(int32_t) * 3 * (size_t)g->max_tiles);
    if (!g->pair_tok || !g->pair_of || !g->pair_exp || !g->tiles) {
        grouping_free(g);
        return false;
    }
    int i = 0, nt = 0;
    for (int ex = 0; ex < n_expert; ex++) {
        const int start = i;
        for (int t = 0; t < n_tok; t++)
            for (int j = 0; j < k; j++)
                if (ids[t * k + j] == ex) {
                    g->pair_tok[i] = t;
                    g->pair_exp[i] = ex;
                    g->pair_of[t * k + j] = i;
                    i++;
                }
        for (int p = start; p < i; p += tile) {
            if (nt == g->max_tiles) {
                grouping_free(g);
                return false;
            }
            g->tiles[3 * nt] = ex;
            g->tiles[3 * nt + 1] = p;
            g->tiles[3 * nt + 2] = i - p < tile ? i - p : tile;
            nt++;
        }
    }
    g->n_tiles = nt;
    for (int x = nt; x < g->max_tiles; x++) { /* unused: must not be read */
        g->tiles[3 * x] = 1 << 30;
        g->tiles[3 * x + 1] = 1 << 30;
        g->tiles[3 * x + 2] = 1 << 30;
    }
    return true;
}

/* ---- model runs (test_cuda_model.c, test_cuda_hybrid.c) ---- */

#define P_LEN CM_P_LEN
#define N_DEC CM_N_DEC
#define N_SEQ CM_N_SEQ

/* All logits of the run: the prompts' (P_LEN per sequence, sequence-major),
 * then N_DEC steps x N_SEQ.  Decode feeds fixed tokens so both paths see
 * the same history. */
int cuda_model_run(const struct model *m, const struct fwd_opts *o, bool stepwise, float *out,
                   struct hybrid_stats *hst, struct moed_err *e)
{
    int V = m->hp.n_vocab, rc;
    struct fwd *f = NULL;
    struct kv_seq kv[N_SEQ];
    memset(kv, 0, sizeof kv);
    struct kv_seq *kvp[N_SEQ] = {&kv[0], &kv[1]};
    struct fwd_opts fo = *o;
    fo.max_batch = N_SEQ * P_LEN;
    if ((rc = fwd_init(&f, m, &fo, e)))
        return rc;
    for (int s = 0; s < N_SEQ; s++)
        if ((rc = fwd_kv_init(f, &kv[s], P_LEN + N_DEC, KT_F32, e)))
            goto out;
    int32_t tok[N_SEQ * P_LEN], pos[N_SEQ * P_LEN], seq[N_SEQ * P_LEN];
    bool want[N_SEQ * P_LEN];
    for (int s = 0; s < N_SEQ; s++)
        for (int p = 0; p < P_LEN; p++) {
            int i = s * P_LEN + p;
            tok[i] = (int32_t)((uint32_t)(i * 2654435761u + 17u) % (uint32_t)V);
            pos[i] = p;
            seq[i] = s;
            want[i] = true;
        }
    if (stepwise) { /* one token of each sequence per step; logits kept sequence-major */
        float *tmp = malloc((size_t)N_SEQ * V * sizeof(float));
        for (int p = 0; p < P_LEN && !rc; p++) {
            int32_t t2[N_SEQ], p2[N_SEQ], s2[N_SEQ];
            bool w2[N_SEQ];
            for (int s = 0; s < N_SEQ; s++) {
                t2[s] = tok[s * P_LEN + p];
                p2[s] = p;
                s2[s] = s;
                w2[s] = true;
            }
            struct fwd_batch b1 = {N_SEQ, t2, p2, s2, w2};
            rc = fwd_step(f, &b1, kvp, N_SEQ, tmp, e);
            for (int s = 0; s < N_SEQ && !rc; s++)
                memcpy(out + ((size_t)s * P_LEN + p) * V, tmp + (size_t)s * V,
                       (size_t)V * sizeof(float));
        }
        free(tmp);
        if (rc)
            goto out;
    } else {
        struct fwd_batch b = {N_SEQ * P_LEN, tok, pos, seq, want};
        if ((rc = fwd_step(f, &b, kvp, N_SEQ, out, e)))
            goto out;
    }
    out += (size_t)N_SEQ * P_LEN * V;
    for (int step = 0; step < N_DEC; step++) {
        for (int s = 0; s < N_SEQ; s++) {
            tok[s] = (int32_t)((uint32_t)((step + 1) * 40503u + s * 977u) % (uint32_t)V);
            pos[s] = P_LEN + step;
            seq[s] = s;
            want[s] = true;
        }
        struct fwd_batch bd = {N_SEQ, tok, pos, seq, want};
        if ((rc = fwd_step(f, &bd, kvp, N_SEQ, out, e)))
            goto out;
        out += (size_t)N_SEQ * V;
    }
out:
    if (hst && !rc) {
        if (fwd_hybrid(f))
            hybrid_stats_get(fwd_hybrid(f), hst, NULL);
        else
            memset(hst, 0, sizeof *hst);
    }
    for (int s = 0; s < N_SEQ; s++)
        kv_seq_free(&kv[s]);
    fwd_free(f);
    return rc;
}

int cm_argmax2(const float *x, int n, float *margin)
{
    int b = 0, c = -1;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b])
            b = i;
    for (int i = 0; i < n; i++)
        if (i != b && (c < 0 || x[i] > x[c]))
            c = i;
    *margin = c < 0 ? 0 : x[b] - x[c];
    return b;
}

double cm_rel_rms(const float *a, const float *ref, size_t n)
{
    double d2 = 0, l2 = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - ref[i];
        d2 += d * d;
        l2 += (double)ref[i] * ref[i];
    }
    return sqrt(d2 / fmax(l2, 1e-30));
}

double cm_logit_range(const float *x, size_t n)
{
    float lo = INFINITY, hi = -INFINITY;
    for (size_t i = 0; i < n; i++) {
        lo = fminf(lo, x[i]);
        hi = fmaxf(hi, x[i]);
    }
    return (double)hi - lo;
}

const char *cm_arg_after(const char *const *args, const char *flag)
{
    for (; *args && args[1]; args++)
        if (!strcmp(*args, flag))
            return args[1];
    return "?";
}
