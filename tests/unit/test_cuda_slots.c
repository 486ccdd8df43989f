/*
 * Expert slots (cache/gpu_slots.h) on small random models written by
 * moed-mkmodel:
 *   gpu_slots_layout (no GPU): slot layout and byte-budget arithmetic, and
 *     the per-layer geometry and host sources of a model;
 *   cuda_slots_registered / cuda_slots_staging: experts loaded into slots
 *     (registered mapping, and the forced staging ring with 2 buffers so it
 *     wraps) copy back equal to the file's bytes; kc_moe_gate_up /
 *     kc_moe_down with pointer tables where the loaded experts point at
 *     their slots give bit for bit the results of tables pointing at a
 *     stacked upload of the layer;
 *   cuda_slots_errors: bad indices, empty slots, host registration errors
 *     leave the CUDA error state clean.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache/cache.h"
#include "cache/gpu_slots.h"
#include "kernels/cpu/types.h"
#include "model/model.h"
#include "tests/unit/test_cuda.h"
#include "tests/unit/test_forward_tiny.h"
#include "tools/mkmodel.h"

/* [0] k-quant experts whose matrices are multiples of 256 bytes; [1] Q8_0
 * experts of 16320-byte matrices, so every offset in a slot is padded. */
static const char *const configs[2][16] = {
    {"--preset", "tiny-qwen3moe", "--type-experts", "Q4_K", "--d-model", "256", "--ff-exp", "256",
     "--experts", "8", "--experts-used", "2", NULL},
    {"--preset", "tiny-qwen3moe", "--type-experts", "Q8_0", "--d-model", "160", "--ff-exp", "96",
     "--experts", "8", "--experts-used", "2", NULL},
};

static bool open_config(int c, char *path, size_t pn, struct model *m)
{
    snprintf(path, pn, "%s/slots-%d.gguf", test_tmp_dir(), c);
    struct moed_err e = {0};
    int rc = tiny_mkmodel(path, configs[c], &e);
    CHECK_MSG(rc == 0, "mkmodel config %d: %s", c, e.msg);
    if (rc)
        return false;
    rc = model_open(m, path, &e);
    CHECK_MSG(rc == 0, "open config %d: %s", c, e.msg);
    if (rc)
        remove(path);
    return rc == 0;
}

TEST(gpu_slots_layout)
{
    struct gpu_slot_layout l;
    gpu_slot_layout_make(&l, 100, 300, 256);
    CHECK_EQ(l.off[GPU_SLOT_GATE], 0);
    CHECK_EQ(l.off[GPU_SLOT_UP], 256);
    CHECK_EQ(l.off[GPU_SLOT_DOWN], 768);
    CHECK_EQ(l.span, 1024);
    CHECK_EQ(l.size, 1024);
    gpu_slot_layout_make(&l, 512, 512, 1);
    CHECK_EQ(l.off[GPU_SLOT_UP], 512);
    CHECK_EQ(l.off[GPU_SLOT_DOWN], 1024);
    CHECK_EQ(l.span, 1025);
    CHECK_EQ(l.size, 1280);
    CHECK_EQ(l.bytes[GPU_SLOT_DOWN], 1);

    /* budget -> slots, as the cache counts them */
    CHECK_EQ(gpu_slots_for_budget(10 * 1280 + 1279, 1280), 10);
    CHECK_EQ(gpu_slots_for_budget(1279, 1280), 0);
    CHECK_EQ(gpu_slots_for_budget(1 << 20, 0), 0);
    CHECK_EQ(gpu_slots_for_budget(UINT64_MAX, 1), INT32_MAX);
    for (uint64_t b = 0; b < 5000; b += 97)
        CHECK_EQ(gpu_slots_for_budget(b, 1280), cache_slots_for_budget(b, 1280));
    size_t pb = 1;
    struct moed_err e = {0};
    CHECK_EQ(gpu_slots_pool_bytes(3, 1280, &pb, &e), 0);
    CHECK_EQ(pb, 3840);
    CHECK_EQ(gpu_slots_pool_bytes(0, 1280, &pb, &e), 0);
    CHECK_EQ(pb, 0);
    CHECK_EQ(gpu_slots_pool_bytes(INT32_MAX, UINT64_MAX / 2, &pb, &e), MOED_ENOMEM);
    CHECK_EQ(gpu_slots_pool_bytes(-1, 1280, &pb, &e), MOED_EINVAL);

    /* a model's geometry: slabs of the stacked tensors, the largest layer's slot */
    for (int c = 0; c < 2; c++) {
        char path[512];
        struct model m;
        if (!open_config(c, path, sizeof path, &m))
            return;
        const int32_t nl = m.hp.n_layer, ne = m.hp.n_expert;
        struct gpu_slot_layout *ls = calloc((size_t)nl, sizeof *ls);
        uint64_t sb = 0;
        REQUIRE(ls);
        int rc = gpu_slots_geometry(&m, ls, &sb, &e);
        CHECK_MSG(rc == 0, "geometry: %s", e.msg);
        uint64_t biggest = 0;
        for (int32_t il = 0; rc == 0 && il < nl; il++) {
            const struct model_layer *L = &m.layers[il];
            const struct gguf_tensor *t[3] = {L->gate_exps, L->up_exps, L->down_exps};
            for (int j = 0; j < 3; j++) {
                CHECK_EQ(ls[il].bytes[j], t[j]->nbytes / (uint64_t)ne);
                CHECK_EQ(ls[il].off[j] % GPU_SLOT_ALIGN, 0);
                if (j)
                    CHECK(ls[il].off[j] >= ls[il].off[j - 1] + ls[il].bytes[j - 1]);
                if (j)
                    CHECK(ls[il].off[j] < ls[il].off[j - 1] + ls[il].bytes[j - 1] + GPU_SLOT_ALIGN);
            }
            CHECK_EQ(ls[il].size % GPU_SLOT_ALIGN, 0);
            biggest = ls[il].size > biggest ? ls[il].size : biggest;
            const void *src[3];
            uint64_t b[3];
            for (int32_t x = 0; x < ne; x++) {
                REQUIRE(gpu_slots_expert_src(&m, il, x, src, b, &e) == 0);
                for (int j = 0; j < 3; j++) {
                    CHECK(src[j] == (const uint8_t *)t[j]->data + (uint64_t)x * b[j]);
                    CHECK_EQ(b[j], ls[il].bytes[j]);
                }
            }
        }
        CHECK_EQ(sb, biggest);
        if (c == 1) { /* Q8_0, d 160, ff 96: 16320-byte matrices, each padded to 16384 */
            CHECK_EQ(ls[0].bytes[GPU_SLOT_GATE], 16320);
            CHECK_EQ(ls[0].off[GPU_SLOT_UP], 16384);
            CHECK_EQ(ls[0].off[GPU_SLOT_DOWN], 32768);
            CHECK_EQ(sb, 49152);
        }
        const void *src[3];
        uint64_t b[3];
        CHECK_EQ(gpu_slots_expert_src(&m, nl, 0, src, b, &e), MOED_EINVAL);
        CHECK_EQ(gpu_slots_expert_src(&m, 0, ne, src, b, &e), MOED_EINVAL);
        CHECK_EQ(gpu_slots_expert_src(&m, 0, -1, src, b, &e), MOED_EINVAL);
        free(ls);
        model_close(&m);
        remove(path);
    }
}

/* ---- GPU ----------------------------------------------------------------------- */

static uint64_t rng_s = 0x9E3779B97F4A7C15ull;

static uint64_t rnd(void) /* splitmix64 */
{
    uint64_t z = (rng_s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

#define LAYER 1
#define N_LOADED 3
static const int32_t loaded_experts[N_LOADED] = {5, 2, 7};

/* Everything one comparison run needs on the device. */
struct moe_run {
    kc_stream st;
    void *stacked[3];  /* the layer's stacked gate, up, down */
    void *tab_ref;     /* [3][E] device pointers: all stacked */
    void *tab_slot;    /* [3][E]: loaded experts in their slots */
    float *dx, *dact[2], *dy[2];
    void *ws;
};

/* act and y of the layer over a random routing of n_tok tokens, with the
 * stacked tables and with the slot tables; true when bit-identical. */
static void compare_moe(struct moe_run *r, const struct model *m, int tile, int n_tok,
                        const char *what)
{
    const int32_t E = m->hp.n_expert, K = m->hp.n_expert_used, d = m->hp.n_embd,
                  ff = m->hp.n_ff_exp;
    const struct model_layer *L = &m->layers[LAYER];
    struct moed_err e = {0};
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)n_tok * K);
    float *x = malloc(sizeof(float) * (size_t)n_tok * d);
    size_t np = (size_t)n_tok * K;
    float *h[4] = {malloc(sizeof(float) * np * ff), malloc(sizeof(float) * np * ff),
                   malloc(sizeof(float) * np * d), malloc(sizeof(float) * np * d)};
    struct grouping g = {0};
    if (!ids || !x || !h[0] || !h[1] || !h[2] || !h[3]) {
        test_fail(__FILE__, __LINE__, "out of memory");
        goto out;
    }
    for (int t = 0; t < n_tok; t++)
        for (int j = 0; j < K; j++) {
            int32_t ex;
            bool dup;
            do {
                /* the first tokens use the loaded experts, so each surely appears */
                ex = t * K + j < N_LOADED ? loaded_experts[t * K + j] : (int32_t)(rnd() % (uint64_t)E);
                dup = false;
                for (int jj = 0; jj < j; jj++)
                    dup |= ids[t * K + jj] == ex;
            } while (dup);
            ids[t * K + j] = ex;
        }
    for (size_t i = 0; i < (size_t)n_tok * d; i++)
        x[i] = (float)((double)(rnd() >> 11) / 9007199254740992.0 * 2.0 - 1.0);
    if (!grouping_make(&g, ids, n_tok, K, E, tile)) {
        test_fail(__FILE__, __LINE__, "grouping");
        goto out;
    }
    struct kc_moe_groups dg;
    kc_moe_groups_at(&dg, r->ws, n_tok, K, E, tile);
    if (kc_h2d(dg.pair_tok, g.pair_tok, sizeof(int32_t) * np, r->st, &e) ||
        kc_h2d(dg.pair_of, g.pair_of, sizeof(int32_t) * np, r->st, &e) ||
        kc_h2d(dg.tiles, g.tiles, sizeof(int32_t) * 3 * (size_t)g.max_tiles, r->st, &e) ||
        kc_h2d(dg.n_tiles, &g.n_tiles, sizeof(int32_t), r->st, &e) ||
        kc_h2d(r->dx, x, sizeof(float) * (size_t)n_tok * d, r->st, &e)) {
        test_fail(__FILE__, __LINE__, "%s: upload: %s", what, e.msg);
        goto out;
    }
    for (int v = 0; v < 2; v++) {
        const void *const *tab = (const void *const *)(v ? r->tab_slot : r->tab_ref);
        struct kc_experts ex = {
            .type_gate = L->gate_exps->type,
            .type_up = L->up_exps->type,
            .type_down = L->down_exps->type,
            .row_gate = kern_row_size(L->gate_exps->type, L->gate_exps->ne[0]),
            .row_up = kern_row_size(L->up_exps->type, L->up_exps->ne[0]),
            .row_down = kern_row_size(L->down_exps->type, L->down_exps->ne[0]),
            .gate = tab,
            .up = tab + E,
            .down = tab + 2 * E,
            .n_expert = E,
            .n_embd = d,
            .n_ff = ff};
        if (kc_memset(r->dact[v], 0xFF, sizeof(float) * np * ff, r->st, &e) ||
            kc_memset(r->dy[v], 0xFF, sizeof(float) * np * d, r->st, &e)) {
            test_fail(__FILE__, __LINE__, "%s: memset: %s", what, e.msg);
            goto out;
        }
        int rc = kc_moe_gate_up(r->st, &ex, r->dx, &dg, tile, g.max_tiles, r->dact[v], &e);
        CHECK_MSG(rc == 0, "%s: kc_moe_gate_up tile %d: %s", what, tile, e.msg);
        if (!rc) {
            rc = kc_moe_down(r->st, &ex, r->dact[v], &dg, tile, g.max_tiles, r->dy[v], &e);
            CHECK_MSG(rc == 0, "%s: kc_moe_down tile %d: %s", what, tile, e.msg);
        }
        if (rc)
            goto out;
        if (kc_d2h(h[v], r->dact[v], sizeof(float) * np * ff, r->st, &e) ||
            kc_d2h(h[2 + v], r->dy[v], sizeof(float) * np * d, r->st, &e)) {
            test_fail(__FILE__, __LINE__, "%s: copy back: %s", what, e.msg);
            goto out;
        }
    }
    if (kc_sync(r->st, &e)) {
        test_fail(__FILE__, __LINE__, "%s: tile %d n_tok %d: %s", what, tile, n_tok, e.msg);
        goto out;
    }
    CHECK_MSG(!memcmp(h[0], h[1], sizeof(float) * np * ff),
              "%s: tile %d n_tok %d: gate/up results differ between slot and stacked weights",
              what, tile, n_tok);
    CHECK_MSG(!memcmp(h[2], h[3], sizeof(float) * np * d),
              "%s: tile %d n_tok %d: down results differ between slot and stacked weights", what,
              tile, n_tok);
    bool finite = true; /* the results were written at all (the buffers started as NaN) */
    for (size_t i = 0; i < np * (size_t)d; i++)
        finite &= h[2][i] == h[2][i];
    CHECK_MSG(finite, "%s: tile %d n_tok %d: NaN in the results", what, tile, n_tok);
out:
    grouping_free(&g);
    free(ids);
    free(x);
    for (int i = 0; i < 4; i++)
        free(h[i]);
}

/* Loaded bytes equal the file's; returns false (after failing) on a mismatch. */
static bool check_slot_bytes(struct gpu_slots *gs, const struct model *m, int32_t slot,
                             int32_t layer, int32_t expert, kc_stream st, const char *what)
{
    struct moed_err e = {0};
    const uint64_t sb = gpu_slots_slot_bytes(gs);
    uint8_t *buf = malloc((size_t)sb);
    if (!buf) {
        test_fail(__FILE__, __LINE__, "out of memory");
        return false;
    }
    bool ok = false;
    int32_t ol, oe;
    gpu_slots_owner(gs, slot, &ol, &oe);
    CHECK_MSG(ol == layer && oe == expert, "%s: slot %d owner (%d, %d), expected (%d, %d)", what,
              (int)slot, (int)ol, (int)oe, (int)layer, (int)expert);
    const void *src[3];
    uint64_t b[3];
    const struct gpu_slot_layout *l = gpu_slots_layout(gs, layer);
    if (gpu_slots_expert_src(m, layer, expert, src, b, &e) ||
        kc_d2h(buf, gpu_slots_slot_base(gs, slot), (size_t)sb, st, &e) || kc_sync(st, &e)) {
        test_fail(__FILE__, __LINE__, "%s: slot %d: %s", what, (int)slot, e.msg);
        goto out;
    }
    ok = true;
    for (int j = 0; j < 3; j++)
        if (memcmp(buf + l->off[j], src[j], (size_t)b[j])) {
            test_fail(__FILE__, __LINE__,
                      "%s: slot %d, (layer %d, expert %d), matrix %d: bytes differ from the file",
                      what, (int)slot, (int)layer, (int)expert, j);
            ok = false;
        }
out:
    free(buf);
    return ok;
}

static void run_config(int c, bool force_staging)
{
    char path[512], what[96];
    struct model m;
    if (!open_config(c, path, sizeof path, &m))
        return;
    snprintf(what, sizeof what, "config %d (%s experts), %s", c, configs[c][3],
             force_staging ? "staging" : "registered");
    const int32_t E = m.hp.n_expert, K = m.hp.n_expert_used;
    const struct model_layer *L = &m.layers[LAYER];
    const struct gguf_tensor *xs[3] = {L->gate_exps, L->up_exps, L->down_exps};
    struct moed_err e = {0};
    struct gpu_slots *gs = NULL;
    struct moe_run r;
    memset(&r, 0, sizeof r);
    kc_stream copy = NULL;
    void **htab = NULL;
    int rc;

    /* a budget of 3 slots and a bit */
    uint64_t sb = 0;
    REQUIRE(gpu_slots_geometry(&m, NULL, &sb, &e) == 0);
    struct gpu_slots_opts o = {.budget_bytes = 3 * sb + sb / 2, .force_staging = force_staging,
                               .n_staging = force_staging ? 2 : 0};
    rc = gpu_slots_new(&gs, &m, &o, &e);
    CHECK_MSG(rc == 0, "%s: gpu_slots_new: %s", what, e.msg);
    if (rc)
        goto out;
    CHECK_EQ(gpu_slots_n_slot(gs), N_LOADED);
    CHECK_EQ(gpu_slots_slot_bytes(gs), sb);
    struct gpu_slots_stats s0;
    gpu_slots_get_stats(gs, &s0);
    fprintf(stderr, "    %s: %d slots of %llu bytes, registered %d (%s)\n", what, (int)s0.n_slot,
            (unsigned long long)s0.slot_bytes, (int)s0.registered, gpu_slots_host_note(gs));
    CHECK_MSG(s0.registered == !force_staging, "%s: registered %d: %s", what, (int)s0.registered,
              gpu_slots_host_note(gs));
    CHECK_EQ(s0.n_staging, s0.registered ? 0 : 2);
    CHECK_EQ(s0.pool_bytes, N_LOADED * sb);

    if ((rc = kc_stream_new(&copy, &e)) || (rc = kc_stream_new(&r.st, &e))) {
        test_fail(__FILE__, __LINE__, "stream: %s", e.msg);
        goto out;
    }
    /* loads on the copy stream; then a reload of slot 0 with another layer's expert
     * (4 loads: the 2-buffer staging ring wraps) and back */
    uint64_t want_bytes = 0;
    for (int i = 0; i < N_LOADED; i++) {
        rc = gpu_slots_load(gs, i, LAYER, loaded_experts[i], copy, &e);
        CHECK_MSG(rc == 0, "%s: load %d: %s", what, i, e.msg);
        if (rc)
            goto out;
        want_bytes += gpu_slots_layout(gs, LAYER)->bytes[0] +
                      gpu_slots_layout(gs, LAYER)->bytes[1] + gpu_slots_layout(gs, LAYER)->bytes[2];
    }
    for (int i = 0; i < N_LOADED; i++)
        check_slot_bytes(gs, &m, i, LAYER, loaded_experts[i], copy, what);
    bool done = false;
    CHECK(gpu_slots_loaded(gs, 0, &done, &e) == 0 && done);
    REQUIRE(gpu_slots_load(gs, 0, 2, 3, copy, &e) == 0);
    REQUIRE(gpu_slots_load(gs, 1, 0, 0, copy, &e) == 0);
    check_slot_bytes(gs, &m, 0, 2, 3, copy, what);
    check_slot_bytes(gs, &m, 1, 0, 0, copy, what);
    for (int i = 0; i < 2; i++) {
        want_bytes += gpu_slots_layout(gs, i ? 0 : 2)->bytes[0] +
                      gpu_slots_layout(gs, i ? 0 : 2)->bytes[1] +
                      gpu_slots_layout(gs, i ? 0 : 2)->bytes[2];
        REQUIRE(gpu_slots_load(gs, i, LAYER, loaded_experts[i], copy, &e) == 0);
        want_bytes += gpu_slots_layout(gs, LAYER)->bytes[0] +
                      gpu_slots_layout(gs, LAYER)->bytes[1] + gpu_slots_layout(gs, LAYER)->bytes[2];
    }

    /* the layer's stacked upload and the two pointer tables */
    for (int j = 0; j < 3; j++) {
        if ((rc = kc_malloc(&r.stacked[j], xs[j]->nbytes, &e)) ||
            (rc = kc_h2d(r.stacked[j], xs[j]->data, xs[j]->nbytes, r.st, &e))) {
            test_fail(__FILE__, __LINE__, "stacked upload: %s", e.msg);
            goto out;
        }
    }
    htab = calloc((size_t)6 * E, sizeof *htab);
    REQUIRE(htab);
    for (int j = 0; j < 3; j++) {
        const size_t stride = xs[j]->nbytes / (size_t)E;
        for (int32_t x = 0; x < E; x++)
            htab[(size_t)j * E + x] = htab[(size_t)(3 + j) * E + x] =
                (char *)r.stacked[j] + (size_t)x * stride;
    }
    for (int i = 0; i < N_LOADED; i++) {
        const void *p[3];
        rc = gpu_slots_expert_ptrs(gs, i, &p[0], &p[1], &p[2], &e);
        CHECK_MSG(rc == 0, "%s: expert_ptrs %d: %s", what, i, e.msg);
        if (rc)
            goto out;
        for (int j = 0; j < 3; j++) {
            CHECK_EQ((uintptr_t)p[j] % GPU_SLOT_ALIGN, 0);
            CHECK(p[j] == (const char *)gpu_slots_slot_base(gs, i) +
                              gpu_slots_layout(gs, LAYER)->off[j]);
            htab[(size_t)(3 + j) * E + loaded_experts[i]] = (void *)(uintptr_t)p[j];
        }
    }
    const int32_t max_tok = 48;
    const size_t tb = (size_t)3 * E * sizeof(void *);
    size_t wsb = kc_moe_groups_size(max_tok, K, E, 8), w64 = kc_moe_groups_size(max_tok, K, E, 64);
    wsb = wsb > w64 ? wsb : w64;
    const size_t np = (size_t)max_tok * K, fl = sizeof(float);
    if ((rc = kc_malloc(&r.tab_ref, tb, &e)) || (rc = kc_malloc(&r.tab_slot, tb, &e)) ||
        (rc = kc_malloc(&r.ws, wsb, &e)) ||
        (rc = kc_malloc((void **)&r.dx, (size_t)max_tok * m.hp.n_embd * fl, &e)) ||
        (rc = kc_h2d(r.tab_ref, htab, tb, r.st, &e)) ||
        (rc = kc_h2d(r.tab_slot, htab + (size_t)3 * E, tb, r.st, &e))) {
        test_fail(__FILE__, __LINE__, "tables: %s", e.msg);
        goto out;
    }
    for (int v = 0; v < 2; v++)
        if ((rc = kc_malloc((void **)&r.dact[v], np * m.hp.n_ff_exp * fl, &e)) ||
            (rc = kc_malloc((void **)&r.dy[v], np * m.hp.n_embd * fl, &e))) {
            test_fail(__FILE__, __LINE__, "workspace: %s", e.msg);
            goto out;
        }
    /* the compute stream waits for the slots' loads, and marks them used after */
    for (int i = 0; i < N_LOADED; i++)
        if ((rc = gpu_slots_wait_loaded(gs, i, r.st, &e))) {
            test_fail(__FILE__, __LINE__, "wait: %s", e.msg);
            goto out;
        }
    compare_moe(&r, &m, 8, 1, what);
    compare_moe(&r, &m, 8, 5, what);
    if (c == 0)
        compare_moe(&r, &m, 64, max_tok, what);
    for (int i = 0; i < N_LOADED; i++)
        if ((rc = gpu_slots_mark_used(gs, i, r.st, &e))) {
            test_fail(__FILE__, __LINE__, "mark used: %s", e.msg);
            goto out;
        }
    /* a load after the use: ordered after the compute stream's work */
    REQUIRE(gpu_slots_load(gs, 2, 2, 1, copy, &e) == 0);
    want_bytes += gpu_slots_layout(gs, 2)->bytes[0] + gpu_slots_layout(gs, 2)->bytes[1] +
                  gpu_slots_layout(gs, 2)->bytes[2];
    check_slot_bytes(gs, &m, 2, 2, 1, copy, what);

    struct gpu_slots_stats s1;
    gpu_slots_get_stats(gs, &s1);
    CHECK_EQ(s1.loads, N_LOADED + 5);
    CHECK_EQ(s1.bytes, want_bytes);
    CHECK_EQ(s1.staged_loads, force_staging ? N_LOADED + 5 : 0);
    if (force_staging)
        fprintf(stderr, "    %s: %llu staging waits\n", what, (unsigned long long)s1.staging_waits);
out:
    if (r.st)
        (void)kc_sync(r.st, NULL);
    if (copy)
        (void)kc_sync(copy, NULL);
    gpu_slots_free(gs);
    for (int j = 0; j < 3; j++)
        kc_free(r.stacked[j]);
    kc_free(r.tab_ref);
    kc_free(r.tab_slot);
    kc_free(r.ws);
    kc_free(r.dx);
    for (int v = 0; v < 2; v++) {
        kc_free(r.dact[v]);
        kc_free(r.dy[v]);
    }
    kc_stream_free(r.st);
    kc_stream_free(copy);
    free(htab);
    model_close(&m);
    remove(path);
}

TEST(cuda_slots_registered)
{
    GPU_OR_SKIP();
    for (int c = 0; c < 2; c++)
        run_config(c, false);
}

TEST(cuda_slots_staging)
{
    GPU_OR_SKIP();
    for (int c = 0; c < 2; c++)
        run_config(c, true);
}

TEST(cuda_slots_errors)
{
    GPU_OR_SKIP();
    char path[512];
    struct model m;
    if (!open_config(0, path, sizeof path, &m))
        return;
    struct moed_err e = {0};
    struct gpu_slots *gs = NULL;
    kc_stream st = NULL;
    REQUIRE(kc_stream_new(&st, &e) == 0);

    /* no slots: valid, nothing registered */
    REQUIRE(gpu_slots_new(&gs, &m, &(struct gpu_slots_opts){.budget_bytes = 1}, &e) == 0);
    CHECK_EQ(gpu_slots_n_slot(gs), 0);
    CHECK_EQ(gpu_slots_load(gs, 0, 0, 0, st, &e), MOED_EINVAL);
    gpu_slots_free(gs);
    gs = NULL;
    CHECK_EQ(gpu_slots_new(&gs, &m, &(struct gpu_slots_opts){.n_slot = -1}, &e), MOED_EINVAL);
    CHECK(gs == NULL);

    REQUIRE(gpu_slots_new(&gs, &m, &(struct gpu_slots_opts){.n_slot = 2}, &e) == 0);
    const void *p[3];
    CHECK_EQ(gpu_slots_expert_ptrs(gs, 0, &p[0], &p[1], &p[2], &e), MOED_EINVAL);
    CHECK_MSG(strstr(e.msg, "no expert") != NULL, "message: %s", e.msg);
    CHECK_EQ(gpu_slots_expert_ptrs(gs, 2, &p[0], &p[1], &p[2], &e), MOED_EINVAL);
    CHECK_EQ(gpu_slots_load(gs, 2, 0, 0, st, &e), MOED_EINVAL);
    CHECK_EQ(gpu_slots_load(gs, -1, 0, 0, st, &e), MOED_EINVAL);
    CHECK_EQ(gpu_slots_load(gs, 0, m.hp.n_layer, 0, st, &e), MOED_EINVAL);
    CHECK_EQ(gpu_slots_load(gs, 0, 0, m.hp.n_expert, st, &e), MOED_EINVAL);
    CHECK_MSG(strstr(e.msg, "out of range") != NULL, "message: %s", e.msg);
    CHECK(gpu_slots_slot_base(gs, 2) == NULL);
    bool done = false;
    CHECK_EQ(gpu_slots_loaded(gs, 5, &done, &e), MOED_EINVAL);
    CHECK(gpu_slots_loaded(gs, 1, &done, &e) == 0 && done); /* never loaded: nothing pending */
    struct gpu_slots_stats s;
    gpu_slots_get_stats(gs, &s);
    CHECK_EQ(s.loads, 0);

    /* registering the mapping again (gs holds it): refused with a message, CUDA state clean */
    const struct gguf *g = m.gguf;
    void *mp = (void *)(uintptr_t)(g->base + g->data_offset);
    if (s.registered) {
        int rc = kc_host_register(mp, g->size - g->data_offset, true, &e);
        CHECK(rc != 0);
        CHECK_MSG(strstr(e.msg, "register") != NULL, "message: %s", e.msg);
    }
    CHECK_EQ(kc_host_register(NULL, 10, true, &e), MOED_EINVAL);
    void *d = NULL;
    CHECK(kc_malloc(&d, 1024, &e) == 0);
    CHECK(kc_memset(d, 0, 1024, st, &e) == 0);
    CHECK_MSG(kc_sync(st, &e) == 0, "after a failed registration: %s", e.msg);
    kc_free(d);
    gpu_slots_free(gs);

    /* plain host memory, registered writable, used for a copy, unregistered */
    size_t n = 3 * 4096 + 100;
    uint8_t *h = aligned_alloc(4096, 4 * 4096), *back = malloc(n);
    REQUIRE(h && back);
    for (size_t i = 0; i < n; i++)
        h[i] = (uint8_t)(i * 7 + 3);
    int rc = kc_host_register(h + 1, n - 1, false, &e);
    CHECK_MSG(rc == 0, "kc_host_register: %s", e.msg);
    if (rc == 0) {
        REQUIRE(kc_malloc(&d, n, &e) == 0);
        CHECK(kc_h2d(d, h + 1, n - 1, st, &e) == 0);
        CHECK(kc_d2h(back, d, n - 1, st, &e) == 0);
        CHECK(kc_sync(st, &e) == 0);
        CHECK(!memcmp(back, h + 1, n - 1));
        kc_free(d);
        kc_host_unregister(h + 1);
        /* unregistered: registering again works */
        CHECK(kc_host_register(h, n, false, &e) == 0);
        kc_host_unregister(h);
    }
    free(h);
    free(back);
    kc_event ev = NULL;
    REQUIRE(kc_event_new_sync(&ev, &e) == 0);
    CHECK(kc_event_query(ev, &done, &e) == 0 && done);
    CHECK(kc_event_record(ev, st, &e) == 0);
    CHECK(kc_event_sync(ev, &e) == 0);
    CHECK(kc_event_query(ev, &done, &e) == 0 && done);
    kc_event_free(ev);
    kc_stream_free(st);
    model_close(&m);
    remove(path);
}
