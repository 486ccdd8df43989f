/*
 * The forward pass on one CUDA device, everything on the GPU: weights,
 * activations and the KV caches (kv_seq_init_dev).  forward.c dispatches
 * to it when fwd_opts.gpu is set; the step's semantics are forward.h's.
 *
 * Per step: the token ids, positions, cache addresses and the rows that
 * want logits go up in one copy, the kernels of kernels/cuda/kc.h run on one
 * stream, the logits come back in one copy.  A step whose tokens all want
 * logits and number at most FWD_GPU_GRAPH_MAX (decode) replays a CUDA graph
 * captured the first time that batch size is seen (decode steps only: one token per sequence): the kernels read
 * positions and cache addresses from device memory, so one graph serves
 * every step of that size.
 */
#ifndef MOED_MODEL_FWD_GPU_H
#define MOED_MODEL_FWD_GPU_H

#include <stdbool.h>
#include <stdint.h>

#include "common/err.h"
#include "model/forward.h"
#include "model/kv.h"
#include "model/model.h"

#define FWD_GPU_GRAPH_MAX 64

struct fwd_gpu;
struct hybrid;
struct hybrid_opts;

struct fwd_gpu_opts {
    int device;
    int32_t max_batch;
    bool no_graph; /* never capture graphs (ablation, debugging) */
    /* set: the routed experts run hybrid (sched/hybrid.h) unless the budget
     * gives every expert a slot (then all on the GPU; hybrid->force: hybrid
     * anyway).  The slot pool is clipped to the memory left after the rest. */
    const struct hybrid_opts *hybrid;
};

/* Uploads the model; fails with MOED_ENOMEM (naming both sizes) when it does
 * not fit in the device's free memory, MOED_EUNSUPPORTED for a weight type
 * the GPU kernels lack (naming the tensor). */
int fwd_gpu_new(struct fwd_gpu **out, const struct model *m, const struct fwd_gpu_opts *o,
                struct moed_err *e);
void fwd_gpu_free(struct fwd_gpu *g);
/* The batch was checked by fwd_step; caches are device caches.  decode:
 * every token belongs to a different sequence. */
int fwd_gpu_step(struct fwd_gpu *g, const struct fwd_batch *b, struct kv_seq *const *seqs,
                 bool decode, float *logits, struct moed_err *e);
/* The hybrid executor, or NULL when every expert lives on the GPU. */
struct hybrid *fwd_gpu_hybrid(const struct fwd_gpu *g);
/* Device bytes of the forward pass's workspace for batches of max_batch
 * tokens (what fwd_gpu_new allocates besides the weights). */
uint64_t fwd_gpu_workspace_bytes(const struct model *m, int32_t max_batch);
/* Device bytes held: weights, workspaces (KV caches not included). */
uint64_t fwd_gpu_bytes(const struct fwd_gpu *g);
/* Bytes of weights one token reads in decode (dense weights, the n_used
 * experts of every layer, the output matrix): for bandwidth figures. */
uint64_t fwd_gpu_decode_bytes(const struct model *m);

#endif
