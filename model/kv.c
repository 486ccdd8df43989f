/* Per-sequence KV cache (kv.h). */
#include "model/kv.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/quant.h"
#include "kernels/cuda/kc.h"
#include "model/model.h"

size_t kv_elem_size(const struct kv_seq *kv)
{
    return kv->type == KT_F16 ? sizeof(kern_f16) : sizeof(float);
}

static int kv_setup(struct kv_seq *kv, const struct model *m, int32_t n_ctx, uint32_t type,
                    size_t *bytes, struct moed_err *e)
{
    memset(kv, 0, sizeof *kv);
    if (type != KT_F32 && type != KT_F16)
        return moed_err_set(e, MOED_EINVAL, "KV cache type %s: only F32 and F16 are supported",
                            kern_type_name(type));
    if (n_ctx < 1)
        return moed_err_set(e, MOED_EINVAL, "KV cache of %d positions", n_ctx);
    kv->n_ctx = n_ctx;
    kv->type = type;
    kv->n_layer = m->hp.n_layer;
    kv->n_kv = m->hp.n_head_kv * m->hp.head_dim;
    size_t per = (size_t)kv->n_layer * (size_t)kv->n_kv * kv_elem_size(kv);
    if ((size_t)n_ctx > SIZE_MAX / 2 / per)
        return moed_err_set(e, MOED_ENOMEM, "KV cache of %d positions is too large", n_ctx);
    *bytes = per * (size_t)n_ctx;
    return 0;
}

int kv_seq_init(struct kv_seq *kv, const struct model *m, int32_t n_ctx, uint32_t type,
                struct moed_err *e)
{
    size_t bytes;
    int rc = kv_setup(kv, m, n_ctx, type, &bytes, e);
    if (rc)
        return rc;
    kv->k = malloc(bytes);
    kv->v = malloc(bytes);
    if (!kv->k || !kv->v) {
        kv_seq_free(kv);
        return moed_err_set(e, MOED_ENOMEM,
                            "out of memory for a KV cache of %d positions (%zu MiB)", n_ctx,
                            2 * bytes >> 20);
    }
    return 0;
}

int kv_seq_init_dev(struct kv_seq *kv, const struct model *m, int32_t n_ctx, uint32_t type,
                    struct moed_err *e)
{
    size_t bytes;
    int rc = kv_setup(kv, m, n_ctx, type, &bytes, e);
    if (rc)
        return rc;
    kv->dev = true;
    if ((rc = kc_malloc(&kv->k, bytes, e)) || (rc = kc_malloc(&kv->v, bytes, e))) {
        kv_seq_free(kv);
        return moed_err_wrap(e, "GPU KV cache of %d positions (%zu MiB)", n_ctx, 2 * bytes >> 20);
    }
    return 0;
}

void kv_seq_free(struct kv_seq *kv)
{
    if (kv->dev) {
        kc_free(kv->k);
        kc_free(kv->v);
    } else {
        free(kv->k);
        free(kv->v);
    }
    memset(kv, 0, sizeof *kv);
}

void kv_seq_truncate(struct kv_seq *kv, int32_t n)
{
    assert(n >= 0 && n <= kv->n);
    kv->n = n;
}

static size_t offset(const struct kv_seq *kv, int32_t il, int32_t pos)
{
    assert(!kv->dev && il >= 0 && il < kv->n_layer && pos >= 0 && pos < kv->n_ctx);
    return (((size_t)il * (size_t)kv->n_ctx + (size_t)pos) * (size_t)kv->n_kv) * kv_elem_size(kv);
}

void *kv_k(const struct kv_seq *kv, int32_t il, int32_t pos)
{
    return (char *)kv->k + offset(kv, il, pos);
}

void *kv_v(const struct kv_seq *kv, int32_t il, int32_t pos)
{
    return (char *)kv->v + offset(kv, il, pos);
}

void kv_put(struct kv_seq *kv, int32_t il, int32_t pos, const float *k, const float *v)
{
    void *kd = kv_k(kv, il, pos), *vd = kv_v(kv, il, pos);
    if (kv->type == KT_F16) {
        for (int32_t i = 0; i < kv->n_kv; i++) {
            ((kern_f16 *)kd)[i] = kern_f32_to_f16(k[i]);
            ((kern_f16 *)vd)[i] = kern_f32_to_f16(v[i]);
        }
    } else {
        memcpy(kd, k, (size_t)kv->n_kv * sizeof(float));
        memcpy(vd, v, (size_t)kv->n_kv * sizeof(float));
    }
}
