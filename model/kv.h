/*
 * The KV cache of one sequence: for every layer, the keys and values of the
 * positions seen so far, n_head_kv * head_dim values per position each,
 * stored as F32 or F16.  Allocated whole for n_ctx positions when the
 * sequence starts; a step that would go past n_ctx fails with a clear
 * error instead of growing it.
 *
 * Layout: k[layer][pos][n_head_kv * head_dim] (v likewise), so attention of
 * one head walks positions with a fixed stride.
 */
#ifndef MOED_MODEL_KV_H
#define MOED_MODEL_KV_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

struct model;

struct kv_seq {
    int32_t n_ctx; /* positions it can hold */
    int32_t n;     /* positions 0..n-1 are filled */
    uint32_t type; /* KT_F32 or KT_F16 */
    int32_t n_layer;
    int32_t n_kv; /* values per position per layer: n_head_kv * head_dim */
    void *k, *v;
    bool dev; /* k and v are GPU memory (kv_seq_init_dev): only the GPU forward pass reads them */
};

/* Allocate for n_ctx positions of model m; type KT_F32 or KT_F16. */
int kv_seq_init(struct kv_seq *kv, const struct model *m, int32_t n_ctx, uint32_t type,
                struct moed_err *e);
/* The same in GPU memory of the current CUDA device (kernels/cuda/kc.h);
 * kv_k, kv_v and kv_put are then not for the host. */
int kv_seq_init_dev(struct kv_seq *kv, const struct model *m, int32_t n_ctx, uint32_t type,
                    struct moed_err *e);
void kv_seq_free(struct kv_seq *kv);
/* Forget positions n.. (0 empties the sequence); n <= kv->n. */
void kv_seq_truncate(struct kv_seq *kv, int32_t n);
/* Bytes per element of the storage type. */
size_t kv_elem_size(const struct kv_seq *kv);
/* Address of layer il's keys (values) at position pos. */
void *kv_k(const struct kv_seq *kv, int32_t il, int32_t pos);
void *kv_v(const struct kv_seq *kv, int32_t il, int32_t pos);
/* Store n_kv f32 values as the keys (values) of layer il at position pos. */
void kv_put(struct kv_seq *kv, int32_t il, int32_t pos, const float *k, const float *v);

#endif
