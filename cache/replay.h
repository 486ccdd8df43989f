/*
 * Routing-trace replay through the expert cache: the simulator behind
 * `moed cache-sim` and the cache tests.
 *
 * A trace (model/trace.h) is read into events, one per (step, layer) in
 * record order (decode order): the tokens' routing and the set R of
 * distinct experts they chose, sorted.  Replaying an event is one layer
 * using the cache as the engine will (cache.h): begin, route, access every
 * expert of R (hits are pinned), admit each miss in ascending expert order
 * (pinned, or bypass), mark loads ready, unpin.  For BELADY each expert's
 * next access (the index of the next event that requests it) is hinted
 * before it is accessed.
 *
 * With layer_quota = C and C * n_layer slots this is exactly the per-layer
 * simulation of tools/trace_summary.py (same pinning, bypass, LFU counts
 * and tie rules).  One difference in what is read: the Python tool merges
 * every record of a (step, layer) into one request even where they are not
 * adjacent; here a (step, layer) that comes back after another layer forms
 * a second event.  moed's recorder never writes such a file.
 */
#ifndef MOED_CACHE_REPLAY_H
#define MOED_CACHE_REPLAY_H

#include <stdint.h>

#include "cache/cache.h"
#include "common/err.h"

struct cache_event {
    int32_t step, layer, n_tok;
    int64_t tok_off; /* into cache_trace.ids / weights, n_tok * n_used entries */
    int32_t n_req;
    int64_t req_off; /* into cache_trace.req / req_next */
};

struct cache_trace {
    int32_t n_layer, n_expert, n_used;
    int64_t n_records, n_event;
    int64_t truncated_bytes; /* a partial last record, dropped */
    struct cache_event *ev;
    int32_t *ids;      /* [n_records][n_used] */
    float *weights;    /* [n_records][n_used] */
    int32_t *req;      /* distinct experts of each event, ascending */
    int64_t *req_next; /* the next event requesting the same (layer, expert), CACHE_NEVER */
};

/* MOED_EIO, MOED_EFORMAT (names the file and what is wrong), MOED_ENOMEM. */
int cache_trace_load(struct cache_trace *t, const char *path, struct moed_err *e);
void cache_trace_free(struct cache_trace *t);

/* Replay every event through c (made for t's n_layer and n_expert).
 * occ_mean (may be NULL): [n_layer] the layer's slots averaged over the
 * events, measured after each. */
void cache_replay(const struct cache_trace *t, struct cache *c, double *occ_mean);

#endif
