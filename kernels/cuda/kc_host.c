/* The host-only parts of kc.h (sizes and layouts), the same with or
 * without CUDA so the caller's arithmetic is testable everywhere. */
#include "kernels/cuda/kc.h"

#include "kernels/cpu/types.h"

bool kc_type_supported(uint32_t type)
{
    switch (type) {
    case KT_F32: case KT_F16: case KT_BF16:
    case KT_Q4_0: case KT_Q4_1: case KT_Q5_0: case KT_Q5_1: case KT_Q8_0:
    case KT_Q2_K: case KT_Q3_K: case KT_Q4_K: case KT_Q5_K: case KT_Q6_K:
        return true;
    default:
        return false;
    }
}

/* Partial results of the split attention: for each (token, head, split),
 * head_dim accumulated values, then the running max and the sum of exps. */
size_t kc_attention_ws_size(const struct kc_attn_shape *sh, int32_t max_tok, int32_t n_split)
{
    if (n_split < 1)
        n_split = 1;
    return (size_t)max_tok * (size_t)sh->n_head * (size_t)n_split * ((size_t)sh->head_dim + 2) *
           sizeof(float);
}

int32_t kc_moe_max_tiles(int32_t n_tok, int32_t k, int32_t n_expert, int32_t tile)
{
    int32_t pairs = n_tok * k;
    return (pairs + tile - 1) / tile + (n_expert < pairs ? n_expert : pairs);
}

static size_t align256(size_t n)
{
    return (n + 255) & ~(size_t)255;
}

size_t kc_moe_groups_size(int32_t max_tok, int32_t k, int32_t n_expert, int32_t tile)
{
    size_t pairs = (size_t)max_tok * (size_t)k;
    size_t tiles = (size_t)kc_moe_max_tiles(max_tok, k, n_expert, tile);
    return 2 * align256(pairs * sizeof(int32_t)) + align256(tiles * 3 * sizeof(int32_t)) +
           align256(sizeof(int32_t));
}

void kc_moe_groups_at(struct kc_moe_groups *g, void *ws, int32_t max_tok, int32_t k,
                      int32_t n_expert, int32_t tile)
{
    size_t pairs = (size_t)max_tok * (size_t)k;
    size_t tiles = (size_t)kc_moe_max_tiles(max_tok, k, n_expert, tile);
    char *p = ws;
    g->pair_tok = (int32_t *)p;
    p += align256(pairs * sizeof(int32_t));
    g->pair_of = (int32_t *)p;
    p += align256(pairs * sizeof(int32_t));
    g->tiles = (int32_t *)p;
    p += align256(tiles * 3 * sizeof(int32_t));
    g->n_tiles = (int32_t *)p;
}
