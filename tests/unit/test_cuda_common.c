/* Shared by the GPU tests (test_cuda.h). */
#include "tests/unit/test_cuda.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
