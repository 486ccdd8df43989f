/* The expert cache (cache/cache.h) and trace replay (cache/replay.h):
 * hand-made sequences with known outcomes per policy, pinning, bypass,
 * prefetch, the score rule, the global pool, and a trace written by
 * model/trace.h's recorder replayed against a reference simulator (a port
 * of tools/trace_summary.py's simulate()). */
#include <stdlib.h>
#include <string.h>

#include "cache/cache.h"
#include "cache/replay.h"
#include "model/trace.h"
#include "tests/unit/harness.h"

static struct cache *mk(int32_t n_layer, int32_t n_expert, int32_t n_slot, int32_t quota,
                        enum cache_policy p)
{
    struct cache *c = NULL;
    struct moed_err e = {0};
    struct cache_opts o = {.n_layer = n_layer, .n_expert = n_expert, .n_slot = n_slot,
                           .layer_quota = quota, .policy = p};
    if (cache_init(&c, &o, &e))
        test_fail(__FILE__, __LINE__, "cache_init: %s", e.msg);
    return c;
}

/* One layer step over a sorted request set, as cache_replay does; returns
 * its hits. */
static int use(struct cache *c, int32_t layer, const int32_t *R, int n)
{
    int32_t pinned[64], missed[64];
    int np = 0, nm = 0, hits = 0;
    cache_layer_begin(c, layer);
    for (int i = 0; i < n; i++) {
        int32_t s = cache_access(c, layer, R[i]);
        if (s >= 0) {
            pinned[np++] = s;
            hits++;
        } else {
            missed[nm++] = R[i];
        }
    }
    for (int i = 0; i < nm; i++) {
        int32_t s = cache_admit(c, layer, missed[i]);
        if (s >= 0) {
            cache_ready(c, s);
            pinned[np++] = s;
        }
    }
    for (int i = 0; i < np; i++)
        cache_unpin(c, pinned[i]);
    return hits;
}

static int use1(struct cache *c, int32_t layer, int32_t x) { return use(c, layer, &x, 1); }

static bool cached(struct cache *c, int32_t layer, int32_t x) { return cache_lookup(c, layer, x) >= 0; }

TEST(cache_lru)
{
    struct cache *c = mk(1, 4, 2, 0, CACHE_LRU);
    REQUIRE(c);
    CHECK_EQ(use1(c, 0, 0), 0);
    CHECK_EQ(use1(c, 0, 1), 0);
    CHECK_EQ(use1(c, 0, 0), 1);
    CHECK_EQ(use1(c, 0, 2), 0); /* evicts 1, used longest ago */
    CHECK(!cached(c, 0, 1) && cached(c, 0, 0) && cached(c, 0, 2));
    CHECK_EQ(use1(c, 0, 1), 0); /* evicts 0 */
    CHECK(!cached(c, 0, 0));
    const struct cache_layer_stats *s = cache_stats(c, 0);
    CHECK_EQ(s->hits, 1);
    CHECK_EQ(s->misses, 4);
    CHECK_EQ(s->loads, 4);
    CHECK_EQ(s->evictions, 2);
    CHECK_EQ(s->bypasses, 0);
    cache_free(c);
}

TEST(cache_lfu)
{
    struct cache *c = mk(1, 4, 2, 0, CACHE_LFU);
    REQUIRE(c);
    use1(c, 0, 0);
    use1(c, 0, 0);
    use1(c, 0, 1);
    use1(c, 0, 2); /* 1 (once) goes, not 0 (twice) though 0 is older */
    CHECK(cached(c, 0, 0) && !cached(c, 0, 1) && cached(c, 0, 2));
    use1(c, 0, 3); /* 2 (once) goes */
    CHECK(cached(c, 0, 0) && cached(c, 0, 3));
    /* counts span the cache's life: 1 was evicted but keeps its count */
    use1(c, 0, 1); /* 1 now 2 requests; victim 3 (1 request) */
    CHECK(cached(c, 0, 0) && cached(c, 0, 1) && !cached(c, 0, 3));
    use1(c, 0, 2); /* 0 and 1 both 2, ties by recency: 0 goes */
    CHECK(!cached(c, 0, 0) && cached(c, 0, 1) && cached(c, 0, 2));
    cache_free(c);
}

TEST(cache_belady)
{
    struct cache *c = mk(1, 4, 2, 0, CACHE_BELADY);
    REQUIRE(c);
    /* future: 0 1 2 0 1 ; at 2, 0 is needed at t=3, 1 at t=4: evict 1 */
    int32_t seq[] = {0, 1, 2, 0, 1};
    int hits = 0;
    for (int t = 0; t < 5; t++) {
        int64_t nx = CACHE_NEVER;
        for (int u = t + 1; u < 5; u++)
            if (seq[u] == seq[t]) {
                nx = u;
                break;
            }
        cache_hint_next(c, 0, seq[t], nx);
        hits += use1(c, 0, seq[t]);
        if (t == 2)
            CHECK(cached(c, 0, 0) && !cached(c, 0, 1));
    }
    CHECK_EQ(hits, 1); /* LRU would get 0 */
    cache_free(c);
}

TEST(cache_pin_bypass)
{
    struct cache *c = mk(2, 4, 2, 0, CACHE_LRU);
    REQUIRE(c);
    int32_t R[] = {0, 1, 2};
    CHECK_EQ(use(c, 0, R, 3), 0); /* 0, 1 loaded; 2 finds both pinned */
    const struct cache_layer_stats *s = cache_stats(c, 0);
    CHECK_EQ(s->misses, 3);
    CHECK_EQ(s->loads, 2);
    CHECK_EQ(s->bypasses, 1);
    CHECK_EQ(s->evictions, 0);
    /* a pinned slot survives another layer's miss; a LOADING one too */
    cache_layer_begin(c, 0);
    int32_t s0 = cache_access(c, 0, 0);
    REQUIRE(s0 >= 0);
    cache_layer_begin(c, 1);
    CHECK_EQ(cache_access(c, 1, 3), CACHE_MISS);
    int32_t s1 = cache_admit(c, 1, 3); /* evicts (0, 1), the only unpinned */
    REQUIRE(s1 >= 0);
    CHECK(cached(c, 0, 0) && !cached(c, 0, 1));
    struct cache_slot_info in;
    cache_slot_get(c, s1, &in);
    CHECK(in.state == CACHE_LOADING && in.layer == 1 && in.expert == 3 && in.pins == 1);
    cache_unpin(c, s1); /* still LOADING: not evictable */
    cache_layer_begin(c, 1);
    CHECK_EQ(cache_access(c, 1, 2), CACHE_MISS);
    CHECK_EQ(cache_admit(c, 1, 2), CACHE_BYPASS);
    CHECK_EQ(cache_stats(c, 1)->bypasses, 1);
    cache_ready(c, s1);
    CHECK(cache_admit(c, 1, 2) >= 0); /* now (1, 3) can go */
    CHECK_EQ(cache_stats(c, 1)->evictions, 1);
    CHECK_EQ(cache_stats(c, 0)->evictions, 1);
    cache_free(c);
    /* zero slots: every miss bypasses */
    c = mk(1, 4, 0, 0, CACHE_LRU);
    REQUIRE(c);
    CHECK_EQ(use1(c, 0, 1), 0);
    CHECK_EQ(cache_stats(c, 0)->bypasses, 1);
    cache_free(c);
}

TEST(cache_prefetch_hits)
{
    struct cache *c = mk(2, 4, 2, 0, CACHE_LRU);
    REQUIRE(c);
    int32_t s = cache_prefetch(c, 1, 3);
    REQUIRE(s >= 0);
    CHECK_EQ(cache_prefetch(c, 1, 3), s); /* already there */
    cache_ready(c, s);
    CHECK_EQ(cache_prefetch(c, 1, 2) >= 0, 1);
    cache_ready(c, cache_lookup(c, 1, 2));
    CHECK_EQ(use1(c, 1, 3), 1);
    CHECK_EQ(use1(c, 1, 3), 1); /* counted once */
    const struct cache_layer_stats *st = cache_stats(c, 1);
    CHECK_EQ(st->misses, 0);
    CHECK_EQ(st->hits, 2);
    CHECK_EQ(st->prefetches, 2);
    CHECK_EQ(st->loads, 2);
    CHECK_EQ(st->prefetch_hits, 1);
    use1(c, 0, 0); /* evicts (1, 2), never hit */
    CHECK(!cached(c, 1, 2));
    CHECK_EQ(st->prefetch_hits, 1);
    CHECK_EQ(st->evictions, 1);
    cache_stats_reset(c);
    CHECK_EQ(cache_stats(c, 0)->misses, 0);
    cache_free(c);
}

TEST(cache_score_rule)
{
    struct cache *c = mk(1, 4, 2, 0, CACHE_SCORE); /* a = 0.5, p = k = 2 */
    REQUIRE(c);
    int32_t ids1[] = {1, 2};
    float w1[] = {0.7f, 0.3f};
    cache_route(c, 0, 1, 2, ids1, w1);
    CHECK_NEAR(cache_score(c, 0, 1), 0.35, 1e-7);
    CHECK_NEAR(cache_score(c, 0, 2), 0.15, 1e-7);
    CHECK_NEAR(cache_score(c, 0, 0), 0.0, 0);
    int32_t R1[] = {1, 2};
    use(c, 0, R1, 2);
    int32_t ids2[] = {1, 3};
    float w2[] = {0.6f, 0.4f};
    cache_route(c, 0, 1, 2, ids2, w2);
    CHECK_NEAR(cache_score(c, 0, 1), 0.5 * 0.6 + 0.5 * 0.35, 1e-7);
    CHECK_NEAR(cache_score(c, 0, 2), 0.5 * 0.15, 1e-7);
    CHECK_NEAR(cache_score(c, 0, 3), 0.5 * 0.4, 1e-7);
    int32_t R2[] = {1, 3};
    use(c, 0, R2, 2); /* 3 misses: 2 has the lowest score and goes */
    CHECK(cached(c, 0, 1) && !cached(c, 0, 2) && cached(c, 0, 3));
    /* two tokens: weights averaged; top-p = 2 of the 3 chosen */
    int32_t ids3[] = {0, 1, 0, 3};
    float w3[] = {0.5f, 0.5f, 0.9f, 0.1f};
    double s3 = cache_score(c, 0, 3), s1 = cache_score(c, 0, 1);
    cache_route(c, 0, 2, 2, ids3, w3);
    CHECK_NEAR(cache_score(c, 0, 0), 0.5 * 0.7, 1e-7);
    CHECK_NEAR(cache_score(c, 0, 1), 0.5 * 0.25 + 0.5 * s1, 1e-7);
    CHECK_NEAR(cache_score(c, 0, 3), 0.5 * s3, 1e-7); /* 0.05 is third: decays only */
    cache_free(c);
    struct cache *bad = NULL;
    struct moed_err e = {0};
    struct cache_opts o = {.n_layer = 1, .n_expert = 4, .n_slot = 2, .policy = CACHE_SCORE,
                           .score_alpha = 1.5};
    CHECK_EQ(cache_init(&bad, &o, &e), MOED_EINVAL);
    CHECK(bad == NULL);
}

TEST(cache_global_pool)
{
    /* layer 0 cycles over 3 experts, layer 1 always uses one: a global
     * pool of 4 gives layer 0 three slots; quotas of 2 would not */
    struct cache *g = mk(2, 4, 4, 0, CACHE_LRU), *q = mk(2, 4, 4, 2, CACHE_LRU);
    REQUIRE(g && q);
    int hg = 0, hq = 0;
    for (int t = 0; t < 30; t++) {
        hg += use1(g, 0, t % 3) + use1(g, 1, 0);
        hq += use1(q, 0, t % 3) + use1(q, 1, 0);
    }
    CHECK_EQ(cache_occupancy(g, 0), 3);
    CHECK_EQ(cache_occupancy(g, 1), 1);
    CHECK_EQ(cache_occupancy(q, 0), 2);
    CHECK_EQ(cache_stats(g, 0)->hits, 27);
    CHECK_EQ(cache_stats(q, 0)->hits, 0); /* LRU with 2 slots over a cycle of 3 */
    CHECK(hg > hq);
    CHECK_EQ(cache_n_slot(g), 4);
    cache_free(g);
    cache_free(q);
    CHECK_EQ(cache_slots_for_budget(10 << 20, 3 << 20), 3);
    CHECK_EQ(cache_slots_for_budget(10, 0), 0);
    enum cache_policy p;
    CHECK(cache_policy_parse("belady", &p) == 0 && p == CACHE_BELADY);
    CHECK(cache_policy_parse("fifo", &p) == MOED_EINVAL);
}

/* ---- trace replay against a reference simulator ---- */

static int nop_run(struct moe_exec *ex, const struct moe_work *w, struct moed_err *e) { return 0; }
static void nop_free(struct moe_exec *ex) { (void)ex; }

#define TL 3
#define TE 6
#define TK 2
#define TSTEPS 120

/* trace_summary.py's simulate(): hits of a cache of C over request sets
 * (bitmasks over TE experts), policy 0 lru, 1 lfu, 2 belady. */
static int64_t ref_sim(const unsigned *req, int n, int C, int pol)
{
    int64_t last[TE], freq[TE] = {0}, nx[TE];
    unsigned cache = 0;
    int64_t hits = 0;
    for (int i = 0; i < n; i++) {
        unsigned R = req[i];
        for (int x = 0; x < TE; x++)
            freq[x] += R >> x & 1;
        hits += __builtin_popcount(R & cache);
        for (int x = 0; x < TE; x++) {
            if (!(R >> x & 1) || (cache >> x & 1))
                continue;
            if (__builtin_popcount(cache) >= C) {
                int v = -1;
                for (int y = 0; y < TE; y++) {
                    if (!(cache >> y & 1) || (R >> y & 1))
                        continue;
                    bool better;
                    if (v < 0)
                        better = true;
                    else if (pol == 0)
                        better = last[y] < last[v];
                    else if (pol == 1)
                        better = freq[y] < freq[v] || (freq[y] == freq[v] && last[y] < last[v]);
                    else
                        better = nx[y] > nx[v];
                    if (better)
                        v = y;
                }
                if (v < 0)
                    continue;
                cache &= ~(1u << v);
            }
            cache |= 1u << x;
        }
        for (int x = 0; x < TE; x++)
            if (R >> x & 1) {
                last[x] = i;
                nx[x] = INT64_MAX;
                for (int u = i + 1; u < n; u++)
                    if (req[u] >> x & 1) {
                        nx[x] = u;
                        break;
                    }
            }
    }
    return hits;
}

TEST(cache_trace_replay)
{
    char path[512];
    snprintf(path, sizeof path, "%s/cache_replay.trace", test_tmp_dir());
    FILE *f = fopen(path, "wb");
    REQUIRE(f);
    struct moe_exec inner = {.name = "nop", .run = nop_run, .free = nop_free};
    struct trace_opts to = {.f = f, .inner = &inner, .n_layer = TL, .n_expert = TE, .n_used = TK};
    struct trace *tr;
    struct moed_err e = {0};
    REQUIRE(trace_open(&tr, &to, &e) == 0);
    unsigned req[TL][TSTEPS];
    memset(req, 0, sizeof req);
    uint32_t rng = 12345;
    int32_t prev[TL] = {0};
    struct moe_experts ex[TL];
    for (int step = 0; step < TSTEPS; step++) {
        int32_t n_tok = step % 17 == 0 ? 3 : 1;
        trace_step(tr, n_tok, NULL, NULL, NULL);
        for (int l = 0; l < TL; l++) {
            int32_t ids[3 * TK];
            float w[3 * TK];
            for (int i = 0; i < n_tok; i++) {
                rng = rng * 1664525u + 1013904223u;
                /* locality: often the previous first expert again */
                int32_t a = (rng >> 8) % 4 ? prev[l] : (int32_t)((rng >> 12) % TE);
                int32_t b = (a + 1 + (int32_t)((rng >> 20) % (TE - 1))) % TE;
                prev[l] = a;
                ids[i * TK] = a, ids[i * TK + 1] = b;
                w[i * TK] = 0.6f, w[i * TK + 1] = 0.4f;
                req[l][step] |= 1u << a | 1u << b;
            }
            ex[l] = (struct moe_experts){.layer = l, .n_expert = TE};
            struct moe_work mw = {.experts = &ex[l], .n_tok = n_tok, .n_used = TK, .ids = ids,
                                  .weights = w};
            REQUIRE(moe_exec_run(trace_exec(tr), &mw, &e) == 0);
        }
    }
    REQUIRE(trace_close(tr, &e) == 0);
    fclose(f);

    struct cache_trace t;
    REQUIRE(cache_trace_load(&t, path, &e) == 0);
    CHECK_EQ(t.n_layer, TL);
    CHECK_EQ(t.n_event, TL * TSTEPS);
    const enum cache_policy pols[] = {CACHE_LRU, CACHE_LFU, CACHE_BELADY};
    for (int C = 1; C <= TE; C++)
        for (int p = 0; p < 3; p++) {
            struct cache *c = mk(TL, TE, C * TL, C, pols[p]);
            REQUIRE(c);
            cache_replay(&t, c, NULL);
            for (int l = 0; l < TL; l++) {
                int64_t want = ref_sim(req[l], TSTEPS, C, p);
                CHECK_MSG((int64_t)cache_stats(c, l)->hits == want,
                          "C=%d %s layer %d: %llu hits, reference %lld", C,
                          cache_policy_name(pols[p]), l,
                          (unsigned long long)cache_stats(c, l)->hits, (long long)want);
                if (C == 1)
                    CHECK(cache_stats(c, l)->bypasses > 0);
            }
            cache_free(c);
        }
    cache_trace_free(&t);
    /* a damaged file is an error, not a crash */
    f = fopen(path, "r+b");
    REQUIRE(f);
    fseek(f, 16, SEEK_SET);
    fputc(0, f), fputc(0, f), fputc(0, f), fputc(0, f); /* n_layer 0 */
    fclose(f);
    CHECK_EQ(cache_trace_load(&t, path, &e), MOED_EFORMAT);
    remove(path);
}
