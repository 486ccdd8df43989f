/*
 * The expert cache: which (layer, expert) pairs hold one of N slots, and
 * which one to give up when another must come in.
 *
 * Device-agnostic.  The cache hands out slot indices 0..N-1 and never
 * touches memory: the GPU layer that owns the pool maps slot i to device
 * memory (base + i * slot_bytes) and runs the copies.  The same code serves
 * the simulator (`moed cache-sim`) and, later, the hybrid engine.
 *
 * One global pool across layers (DESIGN.md, "The hybrid engine"): a hot
 * layer may hold more slots than a cold one.  With cache_opts.layer_quota
 * set, each layer owns at most that many slots and evicts only its own
 * (HybriMoE's fixed slots per layer, and tools/trace_summary.py's model).
 *
 * Life of a slot: FREE -> (cache_admit | cache_prefetch) -> LOADING ->
 * (cache_ready) -> READY -> (evicted) -> LOADING for another expert.
 * A slot is pinned (a count) while a layer uses it; pinned and LOADING
 * slots are never evicted (the copy engine is writing a LOADING slot).  When
 * every slot that could be given up is pinned or loading, a miss bypasses
 * the cache (the expert runs from host memory) and is counted as such.
 *
 * Use by one layer of one step:
 *     cache_layer_begin(c, layer);               clock tick
 *     cache_route(c, layer, ...);                score policy: new routing
 *     for each activated expert:  s = cache_access(c, layer, e);   hit: pinned
 *     for each miss:              s = cache_admit(c, layer, e);    pinned or bypass
 *     ... compute; cache_ready() when a load lands ...
 *     cache_unpin(c, s) for every slot pinned above
 * Access every activated expert before admitting any miss: a layer's own
 * experts are pinned, so its misses never evict each other or its hits.
 *
 * Policies (victim = an unpinned READY slot; over the whole pool, or over
 * the layer's own slots when it is at its quota):
 *   LRU    least recently used (last cache_layer_begin tick that accessed it)
 *   LFU    fewest cache_access calls for that (layer, expert) over the
 *          cache's life, cached or not; ties by LRU
 *   SCORE  HybriMoE's "Minus Recent Score": after each routing of layer l
 *          (cache_route), for l's top-p experts by routing weight
 *            score = a * w + (1 - a) * score,  the others  score = (1 - a) * score;
 *          evict the lowest score; ties by LRU.  Every layer is routed
 *          once per step, so every score decays at the same rate per step
 *          and scores of different layers are comparable: the global pool
 *          evicts the lowest score among all unpinned slots.
 *   BELADY the expert whose next access is farthest in the future (never
 *          again = infinitely far), the optimal bound; the caller tells
 *          the future with cache_hint_next.  Simulation only.
 * Ties left after these rules go to the lower (layer, expert), so runs are
 * deterministic.  Victim search is a scan over the slots: O(N) per miss,
 * a few microseconds for thousands of slots; a heap can come later.
 *
 * Thread-safety: none.  The engine thread owns the cache (every call comes
 * from it); the CPU workers and the copy stream never call in.
 */
#ifndef MOED_CACHE_CACHE_H
#define MOED_CACHE_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

enum cache_policy {
    CACHE_LRU,
    CACHE_LFU,
    CACHE_SCORE,
    CACHE_BELADY,
};

enum cache_slot_state {
    CACHE_FREE,
    CACHE_LOADING,
    CACHE_READY,
};

/* Negative returns of cache_access / cache_admit / cache_prefetch. */
#define CACHE_MISS (-1)   /* not cached */
#define CACHE_BYPASS (-2) /* no slot could be given up: run from host memory */

/* moed's defaults (not taken from HybriMoE's code): a = 0.5 weighs the new routing as much as the past;
 * p = 0 means the layer's top-k (experts per token). */
#define CACHE_SCORE_ALPHA_DEFAULT 0.5
#define CACHE_SCORE_TOP_P_DEFAULT 0

#define CACHE_NEVER INT64_MAX /* cache_hint_next: no further access */

struct cache_opts {
    int32_t n_layer, n_expert; /* the key space */
    int32_t n_slot;            /* 0: budget_bytes / slot_bytes */
    uint64_t budget_bytes, slot_bytes;
    int32_t layer_quota;       /* > 0: at most this many slots per layer */
    enum cache_policy policy;
    double score_alpha;        /* SCORE: a in (0, 1]; 0 = the default */
    int32_t score_top_p;       /* SCORE: p, 0 = the default */
};

/* Per layer; evictions count against the layer that lost the slot. */
struct cache_layer_stats {
    uint64_t hits, misses;   /* cache_access */
    uint64_t loads;          /* slots filled for this layer (admits + prefetches) */
    uint64_t evictions;      /* slots this layer lost */
    uint64_t bypasses;       /* misses that found no slot */
    uint64_t prefetches;     /* loads by cache_prefetch */
    uint64_t prefetch_hits;  /* prefetched slots hit before their eviction */
};

struct cache;

/* Slots for a byte budget; 0 when slot_bytes is 0 or the budget is smaller. */
int32_t cache_slots_for_budget(uint64_t budget_bytes, uint64_t slot_bytes);

/* MOED_EINVAL for bad sizes or parameters, MOED_ENOMEM.  A cache of 0
 * slots is valid: every miss bypasses. */
int cache_init(struct cache **out, const struct cache_opts *o, struct moed_err *e);
void cache_free(struct cache *c); /* NULL is a no-op */

int32_t cache_n_slot(const struct cache *c);
enum cache_policy cache_get_policy(const struct cache *c);
const char *cache_policy_name(enum cache_policy p);
/* "lru", "lfu", "score", "belady" -> 0, or MOED_EINVAL. */
int cache_policy_parse(const char *s, enum cache_policy *out);

/* A layer begins using the cache (advances the recency clock). */
void cache_layer_begin(struct cache *c, int32_t layer);

/* The layer's routing for this step (SCORE policy; a no-op for the others):
 * n_tok tokens of n_used experts, ids and weights [n_tok][n_used] as in
 * moe_work.  An expert's weight w is its mean weight over the tokens (0
 * for a token that did not choose it). */
void cache_route(struct cache *c, int32_t layer, int32_t n_tok, int32_t n_used,
                 const int32_t *ids, const float *weights);

/* The slot of (layer, expert) or CACHE_MISS; no counting, no pin. */
int32_t cache_lookup(const struct cache *c, int32_t layer, int32_t expert);

/* A layer needs (layer, expert): counts a hit (and pins the slot: the slot
 * index is returned, its state may still be LOADING) or a miss (CACHE_MISS). */
int32_t cache_access(struct cache *c, int32_t layer, int32_t expert);

/* Bring a missed (layer, expert) in: a FREE slot, or the policy's victim.
 * The slot comes back pinned and LOADING; CACHE_BYPASS (counted) when no
 * slot can be given up.  Already cached: its slot, pinned, no load. */
int32_t cache_admit(struct cache *c, int32_t layer, int32_t expert);

/* Load (layer, expert) ahead of need: like cache_admit without a miss and
 * without a pin; a later hit on it counts as a prefetch hit.  Its recency
 * is now.  CACHE_BYPASS (not counted) when no slot can be given up. */
int32_t cache_prefetch(struct cache *c, int32_t layer, int32_t expert);

void cache_ready(struct cache *c, int32_t slot); /* LOADING -> READY */
void cache_pin(struct cache *c, int32_t slot);
void cache_unpin(struct cache *c, int32_t slot);

/* BELADY: (layer, expert)'s next access, on any clock that increases with
 * time (CACHE_NEVER: none). */
void cache_hint_next(struct cache *c, int32_t layer, int32_t expert, int64_t next);

/* A slot's state and owner (layer and expert -1 when FREE). */
struct cache_slot_info {
    enum cache_slot_state state;
    int32_t layer, expert, pins;
    double score;
};
void cache_slot_get(const struct cache *c, int32_t slot, struct cache_slot_info *out);

/* SCORE: the current score of (layer, expert), cached or not. */
double cache_score(const struct cache *c, int32_t layer, int32_t expert);

const struct cache_layer_stats *cache_stats(const struct cache *c, int32_t layer);
/* Slots held by the layer now (LOADING or READY). */
int32_t cache_occupancy(const struct cache *c, int32_t layer);
void cache_stats_reset(struct cache *c);

#endif
