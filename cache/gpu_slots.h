/*
 * Expert sources and GPU slots for one model: the device memory behind the
 * expert cache, and the copies that fill it.
 *
 * The split with cache/cache.h: the cache decides (which (layer, expert)
 * holds which slot index, what to evict, pins, LOADING/READY, per-layer
 * hit/miss/eviction statistics) and never touches memory; gpu_slots holds
 * the memory (slot i at base + i * slot_bytes, all slots in one kc_malloc)
 * and runs the copies.  Slot indices are the same on both sides: create the
 * cache with cache_opts.n_slot = gpu_slots_n_slot() (or the same budget and
 * slot_bytes = gpu_slots_slot_bytes(): both round down with
 * cache_slots_for_budget), and pass what cache_admit/cache_prefetch return
 * to gpu_slots_load.  gpu_slots trusts the cache: it does not check that a
 * slot it is asked to overwrite is unpinned.
 *
 * Host sources: the expert bytes are read straight from the model's
 * mapping.  At creation the GGUF's tensor data region is registered
 * read-only (kc_host_register), so copies run at PCIe speed (DEVICE.md:
 * 51 GiB/s registered vs 7 GiB/s from a plain mmap).  Registration pins the
 * whole region (it pages the file in first: seconds for a large model, and
 * the RAM must hold it).  When registration fails (or opts.force_staging),
 * loads go through a small ring of pinned staging buffers, each one slot
 * big: the host memcpy's the expert into the next buffer, then one H2D
 * copies it; an event per buffer keeps a buffer from being refilled before
 * its copy has finished (the host waits for it; counted in staging_waits).
 *
 * Layout of a slot (struct gpu_slot_layout): gate, up, down, each at a
 * 256-byte aligned offset; the offsets belong to the layer (layers may mix
 * types); slot_bytes is the largest layer's slot, rounded to 256.
 *
 * Stream protocol, per slot (two events):
 *   gpu_slots_load(gs, s, layer, expert, copy)  on the copy stream: waits for
 *       the slot's last use (below), copies, records "loaded";
 *   gpu_slots_wait_loaded(gs, s, compute)       the compute stream waits for it;
 *   ... kernels that read the slot (pointer tables from gpu_slots_expert_ptrs) ...
 *   gpu_slots_mark_used(gs, s, compute)         after enqueuing them: the next
 *       load into s waits for this point of the compute stream.
 * gpu_slots_loaded() tells the host whether the copy has landed (for
 * cache_ready).  Unpinning in the cache happens on the host as soon as the
 * work is enqueued; mark_used is what keeps the GPU from overwriting a slot
 * a kernel still reads.
 *
 * Thread-safety: none (the engine thread owns it, as it owns the cache).
 * Uses the current device (kc_set_device first).
 */
#ifndef MOED_CACHE_GPU_SLOTS_H
#define MOED_CACHE_GPU_SLOTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"
#include "kernels/cuda/kc.h"
#include "model/model.h"

#define GPU_SLOT_ALIGN 256
#define GPU_SLOTS_STAGING_DEFAULT 4

/* ---- geometry (host arithmetic only: no CUDA) ------------------------------- */

enum { GPU_SLOT_GATE, GPU_SLOT_UP, GPU_SLOT_DOWN };

/* One expert's three matrices inside a slot. */
struct gpu_slot_layout {
    uint64_t off[3];   /* gate, up, down: 256-byte aligned offsets */
    uint64_t bytes[3]; /* their sizes (one expert's slab of each stacked tensor) */
    uint64_t span;     /* off[2] + bytes[2]: bytes a load writes */
    uint64_t size;     /* span rounded up to 256 */
};

void gpu_slot_layout_make(struct gpu_slot_layout *l, uint64_t gate, uint64_t up, uint64_t down);

/*
 * The per-layer layouts of a model (layouts: n_layer entries, may be NULL)
 * and the slot size (the largest layout's size).  MOED_EINVAL for a model
 * whose layers lack stacked experts.
 */
int gpu_slots_geometry(const struct model *m, struct gpu_slot_layout *layouts,
                       uint64_t *slot_bytes, struct moed_err *e);

/* Slots for a byte budget: budget / slot_bytes (cache_slots_for_budget). */
int32_t gpu_slots_for_budget(uint64_t budget_bytes, uint64_t slot_bytes);

/* n_slot * slot_bytes, MOED_ENOMEM when it overflows size_t (or n_slot < 0). */
int gpu_slots_pool_bytes(int32_t n_slot, uint64_t slot_bytes, size_t *out, struct moed_err *e);

/* Where (layer, expert)'s matrices are in the model's mapping (host
 * pointers) and their sizes; MOED_EINVAL for indices out of range. */
int gpu_slots_expert_src(const struct model *m, int32_t layer, int32_t expert,
                         const void *src[3], uint64_t bytes[3], struct moed_err *e);

/* ---- the pool (CUDA) ------------------------------------------------------------- */

struct gpu_slots_opts {
    int32_t n_slot;        /* > 0: this many slots; 0: budget_bytes / slot_bytes */
    uint64_t budget_bytes;
    bool force_staging;    /* do not register the file: load through the staging ring */
    int32_t n_staging;     /* staging buffers; 0: GPU_SLOTS_STAGING_DEFAULT */
};

struct gpu_slots_stats {
    int32_t n_slot;
    uint64_t slot_bytes, pool_bytes; /* device memory: n_slot * slot_bytes */
    bool registered;          /* loads copy straight from the registered mapping */
    uint64_t registered_bytes; /* the span registered (0 when not) */
    int32_t n_staging;        /* staging buffers (0 when registered) */
    uint64_t loads;           /* gpu_slots_load calls that enqueued a copy */
    uint64_t bytes;           /* expert bytes they copy (not the padding) */
    uint64_t staged_loads;    /* loads through the staging ring */
    uint64_t staging_waits;   /* times the host waited for a staging buffer */
};

struct gpu_slots;

/*
 * Slots for model m (which must outlive them): MOED_EINVAL for bad
 * options, MOED_ENOMEM (the message gives the bytes) or a CUDA error.  A
 * failed registration is not an error: it selects the staging ring, and
 * gpu_slots_host_note says why.  0 slots is valid (nothing is allocated,
 * registered or staged).
 */
int gpu_slots_new(struct gpu_slots **out, const struct model *m, const struct gpu_slots_opts *o,
                  struct moed_err *e);
/* Waits for the slots' copies, unregisters, frees (NULL is a no-op).  The
 * caller's streams must no longer read the slots. */
void gpu_slots_free(struct gpu_slots *gs);

int32_t gpu_slots_n_slot(const struct gpu_slots *gs);
uint64_t gpu_slots_slot_bytes(const struct gpu_slots *gs);
/* The layout of a layer's experts in a slot. */
const struct gpu_slot_layout *gpu_slots_layout(const struct gpu_slots *gs, int32_t layer);
/* Device address of slot s (NULL when out of range). */
void *gpu_slots_slot_base(const struct gpu_slots *gs, int32_t slot);
/* Empty when the mapping is registered; else why the staging ring is used. */
const char *gpu_slots_host_note(const struct gpu_slots *gs);

/*
 * Enqueue on copy_stream the copy of (layer, expert)'s gate, up and down
 * into the slot (after the slot's last gpu_slots_mark_used point), and
 * record the slot's "loaded" event.  The slot then belongs to (layer,
 * expert).  Staging: may block until a staging buffer's earlier copy ends.
 */
int gpu_slots_load(struct gpu_slots *gs, int32_t slot, int32_t layer, int32_t expert,
                   kc_stream copy_stream, struct moed_err *e);

/* Device addresses of the slot's expert (for a kc_experts pointer table);
 * MOED_EINVAL when the slot is out of range or was never loaded. */
int gpu_slots_expert_ptrs(const struct gpu_slots *gs, int32_t slot, const void **gate,
                          const void **up, const void **down, struct moed_err *e);
/* The (layer, expert) last loaded into the slot (-1, -1: none). */
void gpu_slots_owner(const struct gpu_slots *gs, int32_t slot, int32_t *layer, int32_t *expert);

/* stream waits for the slot's last load. */
int gpu_slots_wait_loaded(struct gpu_slots *gs, int32_t slot, kc_stream stream, struct moed_err *e);
/* *done: the slot's last load has landed (host query, no wait). */
int gpu_slots_loaded(struct gpu_slots *gs, int32_t slot, bool *done, struct moed_err *e);
/* The work enqueued on stream so far may read the slot: the next load waits for it. */
int gpu_slots_mark_used(struct gpu_slots *gs, int32_t slot, kc_stream stream, struct moed_err *e);

void gpu_slots_get_stats(const struct gpu_slots *gs, struct gpu_slots_stats *out);

#endif
