/*
 * The expert cache (cache.h): a key table over every (layer, expert) --
 * its slot, its access count (LFU), its score (SCORE) and its next access
 * (BELADY) -- and a slot table -- owner, state, pins, last use.  Lookups
 * are one index into the key table; victims are found by a scan of the
 * slots with one comparison per policy (slot_worse).
 */
#include "cache/cache.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

struct slot {
    int32_t key; /* layer * n_expert + expert, -1 when FREE */
    int32_t pins;
    int64_t last; /* clock of its last access or load */
    enum cache_slot_state state;
    bool prefetched; /* loaded by cache_prefetch and not yet hit */
};

struct cache {
    int32_t n_layer, n_expert, n_slot, quota, top_p;
    enum cache_policy policy;
    double alpha;
    int64_t clock;
    int32_t *map;     /* [key] slot or -1 */
    int64_t *freq;    /* [key] cache_access calls */
    int64_t *next;    /* [key] BELADY: next access */
    double *score;    /* [key] SCORE */
    struct slot *slots;
    int32_t *free_stack, n_free; /* FREE slots; the lowest index on top */
    int32_t *occ;                /* [layer] slots held */
    struct cache_layer_stats *stats;
    double *route_w; /* [n_expert] scratch for cache_route */
    bool *route_top;
};

static const char *const policy_names[] = {"lru", "lfu", "score", "belady"};

const char *cache_policy_name(enum cache_policy p)
{
    return (unsigned)p < sizeof policy_names / sizeof *policy_names ? policy_names[p] : "?";
}

int cache_policy_parse(const char *s, enum cache_policy *out)
{
    for (size_t i = 0; i < sizeof policy_names / sizeof *policy_names; i++)
        if (strcmp(s, policy_names[i]) == 0) {
            *out = (enum cache_policy)i;
            return 0;
        }
    return MOED_EINVAL;
}

int32_t cache_slots_for_budget(uint64_t budget_bytes, uint64_t slot_bytes)
{
    if (slot_bytes == 0)
        return 0;
    uint64_t n = budget_bytes / slot_bytes;
    return n > INT32_MAX ? INT32_MAX : (int32_t)n;
}

int cache_init(struct cache **out, const struct cache_opts *o, struct moed_err *e)
{
    *out = NULL;
    if (o->n_layer < 1 || o->n_expert < 1 || (int64_t)o->n_layer * o->n_expert > INT32_MAX)
        return moed_err_set(e, MOED_EINVAL, "cache: bad key space (%d layers x %d experts)",
                            o->n_layer, o->n_expert);
    int32_t n_slot = o->n_slot ? o->n_slot : cache_slots_for_budget(o->budget_bytes, o->slot_bytes);
    if (n_slot < 0 || o->layer_quota < 0)
        return moed_err_set(e, MOED_EINVAL, "cache: bad slot count %d or layer quota %d", n_slot,
                            o->layer_quota);
    if ((unsigned)o->policy > CACHE_BELADY)
        return moed_err_set(e, MOED_EINVAL, "cache: unknown policy %d", (int)o->policy);
    double alpha = o->score_alpha ? o->score_alpha : CACHE_SCORE_ALPHA_DEFAULT;
    if (!(alpha > 0 && alpha <= 1) || o->score_top_p < 0 || o->score_top_p > o->n_expert)
        return moed_err_set(e, MOED_EINVAL, "cache: score a = %g (0 < a <= 1), p = %d (0..%d)",
                            alpha, o->score_top_p, o->n_expert);
    struct cache *c = calloc(1, sizeof *c);
    if (!c)
        return moed_err_set(e, MOED_ENOMEM, "cache: out of memory");
    size_t nk = (size_t)o->n_layer * (size_t)o->n_expert;
    c->n_layer = o->n_layer;
    c->n_expert = o->n_expert;
    c->n_slot = n_slot;
    c->quota = o->layer_quota;
    c->policy = o->policy;
    c->alpha = alpha;
    c->top_p = o->score_top_p;
    c->map = malloc(nk * sizeof *c->map);
    c->freq = calloc(nk, sizeof *c->freq);
    c->next = malloc(nk * sizeof *c->next);
    c->score = calloc(nk, sizeof *c->score);
    c->slots = calloc((size_t)n_slot + 1, sizeof *c->slots);
    c->free_stack = malloc(((size_t)n_slot + 1) * sizeof *c->free_stack);
    c->occ = calloc((size_t)o->n_layer, sizeof *c->occ);
    c->stats = calloc((size_t)o->n_layer, sizeof *c->stats);
    c->route_w = calloc((size_t)o->n_expert, sizeof *c->route_w);
    c->route_top = calloc((size_t)o->n_expert, sizeof *c->route_top);
    if (!c->map || !c->freq || !c->next || !c->score || !c->slots || !c->free_stack || !c->occ ||
        !c->stats || !c->route_w || !c->route_top) {
        cache_free(c);
        return moed_err_set(e, MOED_ENOMEM, "cache: out of memory for %d slots, %zu keys", n_slot,
                            nk);
    }
    for (size_t k = 0; k < nk; k++) {
        c->map[k] = -1;
        c->next[k] = CACHE_NEVER;
    }
    for (int32_t s = 0; s < n_slot; s++) {
        c->slots[s] = (struct slot){.key = -1, .state = CACHE_FREE};
        c->free_stack[s] = n_slot - 1 - s;
    }
    c->n_free = n_slot;
    *out = c;
    return 0;
}

void cache_free(struct cache *c)
{
    if (!c)
        return;
    free(c->map);
    free(c->freq);
    free(c->next);
    free(c->score);
    free(c->slots);
    free(c->free_stack);
    free(c->occ);
    free(c->stats);
    free(c->route_w);
    free(c->route_top);
    free(c);
}

int32_t cache_n_slot(const struct cache *c) { return c->n_slot; }
enum cache_policy cache_get_policy(const struct cache *c) { return c->policy; }

static int32_t key_of(const struct cache *c, int32_t layer, int32_t expert)
{
    assert(layer >= 0 && layer < c->n_layer && expert >= 0 && expert < c->n_expert);
    return layer * c->n_expert + expert;
}

void cache_layer_begin(struct cache *c, int32_t layer)
{
    (void)layer;
    c->clock++;
}

void cache_route(struct cache *c, int32_t layer, int32_t n_tok, int32_t n_used,
                 const int32_t *ids, const float *weights)
{
    if (c->policy != CACHE_SCORE || n_tok <= 0)
        return;
    int32_t E = c->n_expert;
    double *w = c->route_w;
    bool *top = c->route_top;
    for (int32_t x = 0; x < E; x++) {
        w[x] = 0;
        top[x] = false;
    }
    for (int32_t i = 0; i < n_tok * n_used; i++)
        if (ids[i] >= 0 && ids[i] < E)
            w[ids[i]] += (double)weights[i] / n_tok;
    /* top-p by weight among the chosen experts; ties to the lower id */
    int32_t p = c->top_p ? c->top_p : n_used;
    for (int32_t j = 0; j < p; j++) {
        int32_t best = -1;
        for (int32_t x = 0; x < E; x++)
            if (!top[x] && w[x] > 0 && (best < 0 || w[x] > w[best]))
                best = x;
        if (best < 0)
            break;
        top[best] = true;
    }
    double a = c->alpha;
    double *sc = c->score + (size_t)layer * (size_t)E;
    for (int32_t x = 0; x < E; x++)
        sc[x] = top[x] ? a * w[x] + (1 - a) * sc[x] : (1 - a) * sc[x];
}

int32_t cache_lookup(const struct cache *c, int32_t layer, int32_t expert)
{
    int32_t s = c->map[key_of(c, layer, expert)];
    return s >= 0 ? s : CACHE_MISS;
}

int32_t cache_access(struct cache *c, int32_t layer, int32_t expert)
{
    int32_t k = key_of(c, layer, expert);
    struct cache_layer_stats *st = &c->stats[layer];
    c->freq[k]++;
    int32_t s = c->map[k];
    if (s < 0) {
        st->misses++;
        return CACHE_MISS;
    }
    struct slot *sl = &c->slots[s];
    st->hits++;
    if (sl->prefetched) {
        st->prefetch_hits++;
        sl->prefetched = false;
    }
    sl->pins++;
    sl->last = c->clock;
    return s;
}

/* Is slot a a better victim than slot b (both evictable)? */
static bool slot_worse(const struct cache *c, const struct slot *a, const struct slot *b)
{
    switch (c->policy) {
    case CACHE_LFU:
        if (c->freq[a->key] != c->freq[b->key])
            return c->freq[a->key] < c->freq[b->key];
        break;
    case CACHE_SCORE:
        if (c->score[a->key] != c->score[b->key])
            return c->score[a->key] < c->score[b->key];
        break;
    case CACHE_BELADY:
        if (c->next[a->key] != c->next[b->key])
            return c->next[a->key] > c->next[b->key];
        return a->key < b->key; /* no recency for the oracle: trace_summary.py's rule */
    case CACHE_LRU:
        break;
    }
    if (a->last != b->last)
        return a->last < b->last;
    return a->key < b->key;
}

/* The slot to give up, or -1; only layer's own slots when layer >= 0. */
static int32_t victim(const struct cache *c, int32_t layer)
{
    int32_t best = -1;
    for (int32_t s = 0; s < c->n_slot; s++) {
        const struct slot *sl = &c->slots[s];
        if (sl->state != CACHE_READY || sl->pins > 0)
            continue;
        if (layer >= 0 && sl->key / c->n_expert != layer)
            continue;
        if (best < 0 || slot_worse(c, sl, &c->slots[best]))
            best = s;
    }
    return best;
}

/* A slot for (layer, expert), filled and LOADING, or CACHE_BYPASS. */
static int32_t fill(struct cache *c, int32_t layer, int32_t expert)
{
    int32_t k = key_of(c, layer, expert);
    bool at_quota = c->quota > 0 && c->occ[layer] >= c->quota;
    int32_t s;
    if (!at_quota && c->n_free > 0) {
        s = c->free_stack[--c->n_free];
    } else {
        s = victim(c, at_quota ? layer : -1);
        if (s < 0)
            return CACHE_BYPASS;
        struct slot *v = &c->slots[s];
        int32_t vl = v->key / c->n_expert;
        c->map[v->key] = -1;
        c->occ[vl]--;
        c->stats[vl].evictions++;
    }
    c->slots[s] = (struct slot){.key = k, .state = CACHE_LOADING, .last = c->clock};
    c->map[k] = s;
    c->occ[layer]++;
    c->stats[layer].loads++;
    return s;
}

int32_t cache_admit(struct cache *c, int32_t layer, int32_t expert)
{
    int32_t s = c->map[key_of(c, layer, expert)];
    if (s < 0) {
        s = fill(c, layer, expert);
        if (s < 0) {
            c->stats[layer].bypasses++;
            return s;
        }
    }
    c->slots[s].pins++;
    return s;
}

int32_t cache_prefetch(struct cache *c, int32_t layer, int32_t expert)
{
    int32_t s = c->map[key_of(c, layer, expert)];
    if (s >= 0)
        return s;
    s = fill(c, layer, expert);
    if (s >= 0) {
        c->slots[s].prefetched = true;
        c->stats[layer].prefetches++;
    }
    return s;
}

void cache_ready(struct cache *c, int32_t slot)
{
    assert(slot >= 0 && slot < c->n_slot && c->slots[slot].state == CACHE_LOADING);
    c->slots[slot].state = CACHE_READY;
}

void cache_pin(struct cache *c, int32_t slot)
{
    assert(slot >= 0 && slot < c->n_slot && c->slots[slot].state != CACHE_FREE);
    c->slots[slot].pins++;
}

void cache_unpin(struct cache *c, int32_t slot)
{
    assert(slot >= 0 && slot < c->n_slot && c->slots[slot].pins > 0);
    c->slots[slot].pins--;
}

void cache_hint_next(struct cache *c, int32_t layer, int32_t expert, int64_t next)
{
    c->next[key_of(c, layer, expert)] = next;
}

void cache_slot_get(const struct cache *c, int32_t slot, struct cache_slot_info *out)
{
    assert(slot >= 0 && slot < c->n_slot);
    const struct slot *sl = &c->slots[slot];
    out->state = sl->state;
    out->pins = sl->pins;
    out->layer = sl->key < 0 ? -1 : sl->key / c->n_expert;
    out->expert = sl->key < 0 ? -1 : sl->key % c->n_expert;
    out->score = sl->key < 0 ? 0 : c->score[sl->key];
}

double cache_score(const struct cache *c, int32_t layer, int32_t expert)
{
    return c->score[key_of(c, layer, expert)];
}

const struct cache_layer_stats *cache_stats(const struct cache *c, int32_t layer)
{
    assert(layer >= 0 && layer < c->n_layer);
    return &c->stats[layer];
}

int32_t cache_occupancy(const struct cache *c, int32_t layer)
{
    assert(layer >= 0 && layer < c->n_layer);
    return c->occ[layer];
}

void cache_stats_reset(struct cache *c)
{
    memset(c->stats, 0, (size_t)c->n_layer * sizeof *c->stats);
}
