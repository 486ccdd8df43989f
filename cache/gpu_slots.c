/* Expert sources and GPU slots (gpu_slots.h). */
#include "cache/gpu_slots.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache/cache.h"
#include "kernels/cpu/types.h"

/* ---- geometry ------------------------------------------------------------------- */

static uint64_t al(uint64_t n)
{
    return (n + (GPU_SLOT_ALIGN - 1)) & ~(uint64_t)(GPU_SLOT_ALIGN - 1);
}

void gpu_slot_layout_make(struct gpu_slot_layout *l, uint64_t gate, uint64_t up, uint64_t down)
{
    l->bytes[GPU_SLOT_GATE] = gate;
    l->bytes[GPU_SLOT_UP] = up;
    l->bytes[GPU_SLOT_DOWN] = down;
    l->off[GPU_SLOT_GATE] = 0;
    l->off[GPU_SLOT_UP] = al(gate);
    l->off[GPU_SLOT_DOWN] = al(gate) + al(up);
    l->span = l->off[GPU_SLOT_DOWN] + down;
    l->size = al(l->span);
}

/* One expert's slab of a stacked tensor {n, rows, n_expert}. */
static int slab(const struct gguf_tensor *t, int32_t n_expert, int32_t layer, uint64_t *bytes,
                struct moed_err *e)
{
    if (!t || t->n_dims != 3 || t->ne[2] != n_expert || t->ne[1] <= 0)
        return moed_err_set(e, MOED_EINVAL, "gpu slots: layer %d has no stacked experts (%.*s)",
                            (int)layer, t ? (int)t->name.len : 4, t ? t->name.ptr : "none");
    *bytes = (uint64_t)kern_row_size(t->type, t->ne[0]) * (uint64_t)t->ne[1];
    return 0;
}

int gpu_slots_expert_src(const struct model *m, int32_t layer, int32_t expert,
                         const void *src[3], uint64_t bytes[3], struct moed_err *e)
{
    const struct model_hparams *hp = &m->hp;
    if (layer < 0 || layer >= hp->n_layer || expert < 0 || expert >= hp->n_expert)
        return moed_err_set(e, MOED_EINVAL,
                            "gpu slots: (layer %d, expert %d) out of range (%d layers, %d experts)",
                            (int)layer, (int)expert, (int)hp->n_layer, (int)hp->n_expert);
    const struct model_layer *L = &m->layers[layer];
    const struct gguf_tensor *t[3] = {L->gate_exps, L->up_exps, L->down_exps};
    for (int j = 0; j < 3; j++) {
        int rc = slab(t[j], hp->n_expert, layer, &bytes[j], e);
        if (rc)
            return rc;
        src[j] = (const uint8_t *)t[j]->data + (uint64_t)expert * bytes[j];
    }
    return 0;
}

int gpu_slots_geometry(const struct model *m, struct gpu_slot_layout *layouts,
                       uint64_t *slot_bytes, struct moed_err *e)
{
    const struct model_hparams *hp = &m->hp;
    uint64_t best = 0;
    if (hp->n_layer <= 0 || hp->n_expert <= 0)
        return moed_err_set(e, MOED_EINVAL, "gpu slots: model has %d layers of %d experts",
                            (int)hp->n_layer, (int)hp->n_expert);
    for (int32_t il = 0; il < hp->n_layer; il++) {
        const void *src[3];
        uint64_t b[3];
        int rc = gpu_slots_expert_src(m, il, 0, src, b, e);
        if (rc)
            return rc;
        struct gpu_slot_layout l;
        gpu_slot_layout_make(&l, b[0], b[1], b[2]);
        if (layouts)
            layouts[il] = l;
        best = l.size > best ? l.size : best;
    }
    *slot_bytes = best;
    return 0;
}

int32_t gpu_slots_for_budget(uint64_t budget_bytes, uint64_t slot_bytes)
{
    return cache_slots_for_budget(budget_bytes, slot_bytes);
}

int gpu_slots_pool_bytes(int32_t n_slot, uint64_t slot_bytes, size_t *out, struct moed_err *e)
{
    *out = 0;
    if (n_slot < 0)
        return moed_err_set(e, MOED_EINVAL, "gpu slots: %d slots", (int)n_slot);
    if (slot_bytes && (uint64_t)n_slot > (uint64_t)SIZE_MAX / slot_bytes)
        return moed_err_set(e, MOED_ENOMEM, "gpu slots: %d slots of %llu bytes overflow",
                            (int)n_slot, (unsigned long long)slot_bytes);
    *out = (size_t)((uint64_t)n_slot * slot_bytes);
    return 0;
}

/* ---- the pool --------------------------------------------------------------------- */

struct gpu_slots {
    const struct model *m;
    int32_t n_slot;
    uint64_t slot_bytes;
    size_t pool_bytes;
    struct gpu_slot_layout *layouts; /* [n_layer] */
    uint8_t *pool;                   /* device */
    int32_t *owner;                  /* [n_slot][2]: layer, expert (-1: none) */
    kc_event *loaded, *used;         /* [n_slot] */

    void *reg_ptr; /* registered span (kc_host_register's p), NULL when not */
    uint64_t reg_bytes;
    char note[MOED_ERR_MSG];

    int32_t n_staging, next_staging;
    uint8_t **staging;     /* [n_staging] pinned host buffers of slot_bytes */
    kc_event *staging_ev;  /* [n_staging]: its last copy */

    struct gpu_slots_stats st;
};

void gpu_slots_free(struct gpu_slots *gs)
{
    if (!gs)
        return;
    /* copies in flight read the registration and the staging buffers */
    for (int32_t s = 0; gs->loaded && s < gs->n_slot; s++)
        if (gs->loaded[s])
            (void)kc_event_sync(gs->loaded[s], NULL);
    for (int32_t i = 0; gs->staging_ev && i < gs->n_staging; i++)
        if (gs->staging_ev[i])
            (void)kc_event_sync(gs->staging_ev[i], NULL);
    if (gs->reg_ptr)
        kc_host_unregister(gs->reg_ptr);
    for (int32_t i = 0; gs->staging && i < gs->n_staging; i++)
        kc_host_free(gs->staging[i]);
    for (int32_t i = 0; gs->staging_ev && i < gs->n_staging; i++)
        kc_event_free(gs->staging_ev[i]);
    for (int32_t s = 0; s < gs->n_slot; s++) {
        if (gs->loaded)
            kc_event_free(gs->loaded[s]);
        if (gs->used)
            kc_event_free(gs->used[s]);
    }
    kc_free(gs->pool);
    free(gs->staging);
    free(gs->staging_ev);
    free(gs->loaded);
    free(gs->used);
    free(gs->owner);
    free(gs->layouts);
    free(gs);
}

static int staging_new(struct gpu_slots *gs, int32_t n, struct moed_err *e)
{
    gs->staging = calloc((size_t)n, sizeof *gs->staging);
    gs->staging_ev = calloc((size_t)n, sizeof *gs->staging_ev);
    if (!gs->staging || !gs->staging_ev)
        return moed_err_set(e, MOED_ENOMEM, "out of memory");
    gs->n_staging = n;
    for (int32_t i = 0; i < n; i++) {
        int rc = kc_host_alloc((void **)&gs->staging[i], (size_t)gs->slot_bytes, e);
        if (!rc)
            rc = kc_event_new_sync(&gs->staging_ev[i], e);
        if (rc)
            return moed_err_wrap(e, "gpu slots: staging buffer %d of %llu bytes", (int)i,
                                 (unsigned long long)gs->slot_bytes);
        memset(gs->staging[i], 0, (size_t)gs->slot_bytes); /* the padding goes up too */
    }
    return 0;
}

int gpu_slots_new(struct gpu_slots **out, const struct model *m, const struct gpu_slots_opts *o,
                  struct moed_err *e)
{
    *out = NULL;
    const int32_t n_layer = m->hp.n_layer;
    if (o->n_slot < 0 || o->n_staging < 0)
        return moed_err_set(e, MOED_EINVAL, "gpu slots: %d slots, %d staging buffers",
                            (int)o->n_slot, (int)o->n_staging);
    struct gpu_slots *gs = calloc(1, sizeof *gs);
    if (!gs)
        return moed_err_set(e, MOED_ENOMEM, "out of memory");
    gs->m = m;
    int rc;
    if (n_layer > 0 && !(gs->layouts = calloc((size_t)n_layer, sizeof *gs->layouts))) {
        rc = moed_err_set(e, MOED_ENOMEM, "out of memory");
        goto fail;
    }
    if ((rc = gpu_slots_geometry(m, gs->layouts, &gs->slot_bytes, e)))
        goto fail;
    gs->n_slot = o->n_slot ? o->n_slot : gpu_slots_for_budget(o->budget_bytes, gs->slot_bytes);
    if ((rc = gpu_slots_pool_bytes(gs->n_slot, gs->slot_bytes, &gs->pool_bytes, e)))
        goto fail;
    gs->st.n_slot = gs->n_slot;
    gs->st.slot_bytes = gs->slot_bytes;
    gs->st.pool_bytes = gs->pool_bytes;
    if (gs->n_slot == 0) {
        snprintf(gs->note, sizeof gs->note, "no slots");
        *out = gs;
        return 0;
    }
    const size_t ns = (size_t)gs->n_slot;
    gs->owner = malloc(ns * 2 * sizeof *gs->owner);
    gs->loaded = calloc(ns, sizeof *gs->loaded);
    gs->used = calloc(ns, sizeof *gs->used);
    if (!gs->owner || !gs->loaded || !gs->used) {
        rc = moed_err_set(e, MOED_ENOMEM, "out of memory");
        goto fail;
    }
    for (size_t s = 0; s < 2 * ns; s++)
        gs->owner[s] = -1;
    if ((rc = kc_malloc((void **)&gs->pool, gs->pool_bytes, e))) {
        moed_err_wrap(e, "gpu slots: %d slots of %.2f MiB (%.2f GiB)", (int)gs->n_slot,
                      gs->slot_bytes / 1048576.0, gs->pool_bytes / 1073741824.0);
        goto fail;
    }
    for (size_t s = 0; s < ns; s++)
        if ((rc = kc_event_new_sync(&gs->loaded[s], e)) || (rc = kc_event_new_sync(&gs->used[s], e)))
            goto fail;

    /* host source: the tensor data region of the mapping, registered read-only */
    const struct gguf *g = m->gguf;
    if (o->force_staging) {
        snprintf(gs->note, sizeof gs->note, "registration not tried (staging forced)");
    } else if (!g || !g->base || g->size <= g->data_offset) {
        snprintf(gs->note, sizeof gs->note, "no mapped file to register");
    } else {
        struct moed_err re = {0};
        void *p = (void *)(uintptr_t)(g->base + g->data_offset);
        uint64_t n = (uint64_t)g->size - g->data_offset;
        if (kc_host_register(p, (size_t)n, true, &re) == 0) {
            gs->reg_ptr = p;
            gs->reg_bytes = n;
        } else {
            snprintf(gs->note, sizeof gs->note, "%s", re.msg);
        }
    }
    if (!gs->reg_ptr) {
        int32_t nst = o->n_staging ? o->n_staging : GPU_SLOTS_STAGING_DEFAULT;
        if ((rc = staging_new(gs, nst, e)))
            goto fail;
    }
    gs->st.registered = gs->reg_ptr != NULL;
    gs->st.registered_bytes = gs->reg_bytes;
    gs->st.n_staging = gs->n_staging;
    *out = gs;
    return 0;
fail:
    gpu_slots_free(gs);
    return rc;
}

int32_t gpu_slots_n_slot(const struct gpu_slots *gs)
{
    return gs->n_slot;
}

uint64_t gpu_slots_slot_bytes(const struct gpu_slots *gs)
{
    return gs->slot_bytes;
}

const struct gpu_slot_layout *gpu_slots_layout(const struct gpu_slots *gs, int32_t layer)
{
    return layer >= 0 && layer < gs->m->hp.n_layer ? &gs->layouts[layer] : NULL;
}

void *gpu_slots_slot_base(const struct gpu_slots *gs, int32_t slot)
{
    if (slot < 0 || slot >= gs->n_slot)
        return NULL;
    return gs->pool + (size_t)slot * (size_t)gs->slot_bytes;
}

const char *gpu_slots_host_note(const struct gpu_slots *gs)
{
    return gs->note;
}

static int bad_slot(const struct gpu_slots *gs, int32_t slot, struct moed_err *e)
{
    return moed_err_set(e, MOED_EINVAL, "gpu slots: slot %d out of range (%d slots)", (int)slot,
                        (int)gs->n_slot);
}

int gpu_slots_load(struct gpu_slots *gs, int32_t slot, int32_t layer, int32_t expert,
                   kc_stream copy_stream, struct moed_err *e)
{
    if (slot < 0 || slot >= gs->n_slot)
        return bad_slot(gs, slot, e);
    const void *src[3];
    uint64_t b[3];
    int rc = gpu_slots_expert_src(gs->m, layer, expert, src, b, e);
    if (rc)
        return rc;
    const struct gpu_slot_layout *l = &gs->layouts[layer];
    uint8_t *dst = gs->pool + (size_t)slot * (size_t)gs->slot_bytes;
    /* the slot is about to change hands: forget the old owner whatever happens next */
    gs->owner[2 * slot] = gs->owner[2 * slot + 1] = -1;
    if ((rc = kc_event_wait(copy_stream, gs->used[slot], e)))
        return rc;
    if (gs->reg_ptr) {
        for (int j = 0; j < 3; j++)
            if ((rc = kc_h2d(dst + l->off[j], src[j], (size_t)b[j], copy_stream, e)))
                return rc;
    } else {
        const int32_t r = gs->next_staging;
        gs->next_staging = (r + 1) % gs->n_staging;
        bool done = true;
        if ((rc = kc_event_query(gs->staging_ev[r], &done, e)))
            return rc;
        if (!done) {
            gs->st.staging_waits++;
            if ((rc = kc_event_sync(gs->staging_ev[r], e)))
                return rc;
        }
        uint8_t *buf = gs->staging[r];
        for (int j = 0; j < 3; j++)
            memcpy(buf + l->off[j], src[j], (size_t)b[j]);
        if ((rc = kc_h2d(dst, buf, (size_t)l->span, copy_stream, e)) ||
            (rc = kc_event_record(gs->staging_ev[r], copy_stream, e)))
            return rc;
        gs->st.staged_loads++;
    }
    if ((rc = kc_event_record(gs->loaded[slot], copy_stream, e)))
        return rc;
    gs->owner[2 * slot] = layer;
    gs->owner[2 * slot + 1] = expert;
    gs->st.loads++;
    gs->st.bytes += b[0] + b[1] + b[2];
    return 0;
}

int gpu_slots_expert_ptrs(const struct gpu_slots *gs, int32_t slot, const void **gate,
                          const void **up, const void **down, struct moed_err *e)
{
    if (slot < 0 || slot >= gs->n_slot)
        return bad_slot(gs, slot, e);
    const int32_t layer = gs->owner[2 * slot];
    if (layer < 0)
        return moed_err_set(e, MOED_EINVAL, "gpu slots: slot %d holds no expert", (int)slot);
    const struct gpu_slot_layout *l = &gs->layouts[layer];
    const uint8_t *base = gs->pool + (size_t)slot * (size_t)gs->slot_bytes;
    *gate = base + l->off[GPU_SLOT_GATE];
    *up = base + l->off[GPU_SLOT_UP];
    *down = base + l->off[GPU_SLOT_DOWN];
    return 0;
}

void gpu_slots_owner(const struct gpu_slots *gs, int32_t slot, int32_t *layer, int32_t *expert)
{
    *layer = *expert = -1;
    if (slot >= 0 && slot < gs->n_slot) {
        *layer = gs->owner[2 * slot];
        *expert = gs->owner[2 * slot + 1];
    }
}

int gpu_slots_wait_loaded(struct gpu_slots *gs, int32_t slot, kc_stream stream, struct moed_err *e)
{
    if (slot < 0 || slot >= gs->n_slot)
        return bad_slot(gs, slot, e);
    return kc_event_wait(stream, gs->loaded[slot], e);
}

int gpu_slots_loaded(struct gpu_slots *gs, int32_t slot, bool *done, struct moed_err *e)
{
    *done = false;
    if (slot < 0 || slot >= gs->n_slot)
        return bad_slot(gs, slot, e);
    return kc_event_query(gs->loaded[slot], done, e);
}

int gpu_slots_mark_used(struct gpu_slots *gs, int32_t slot, kc_stream stream, struct moed_err *e)
{
    if (slot < 0 || slot >= gs->n_slot)
        return bad_slot(gs, slot, e);
    return kc_event_record(gs->used[slot], stream, e);
}

void gpu_slots_get_stats(const struct gpu_slots *gs, struct gpu_slots_stats *out)
{
    *out = gs->st;
}
