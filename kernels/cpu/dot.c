/*
 * Dispatch of the dot kernels and activation quantizers by (type, ISA level).
 *
 * Levels fall back one at a time: AVX-512 -> AVX2 -> scalar reference.  The
 * AVX-512 file decides per type which extensions it needs (dot_avx512.c);
 * VNNI and AVX512_BF16 are taken from kern_cpu_features() here, so a Xeon
 * without VNNI still gets AVX-512 kernels where a non-VNNI form exists and
 * AVX2 ones elsewhere.
 */
#include "kernels/cpu/dot.h"

#include "common/err.h"
#include "kernels/cpu/dot_impl.h"
#include "kernels/cpu/quant.h"

/* ---- the scalar level: the reference behind kern_vec_dot_fn ---------- */

#define REF_DOT(T, name)                                                     \
    static void ref_dot_##name(int64_t n, float *s, const void *w, const void *a) \
    {                                                                        \
        kern_vec_dot_ref(T, n, s, w, a);                                     \
    }
REF_DOT(KT_F32, f32)
REF_DOT(KT_F16, f16)
REF_DOT(KT_BF16, bf16)
REF_DOT(KT_Q4_0, q4_0)
REF_DOT(KT_Q4_1, q4_1)
REF_DOT(KT_Q5_0, q5_0)
REF_DOT(KT_Q5_1, q5_1)
REF_DOT(KT_Q8_0, q8_0)
REF_DOT(KT_Q2_K, q2_K)
REF_DOT(KT_Q3_K, q3_K)
REF_DOT(KT_Q4_K, q4_K)
REF_DOT(KT_Q5_K, q5_K)
REF_DOT(KT_Q6_K, q6_K)

static kern_vec_dot_fn ref_dot(uint32_t t)
{
    switch (t) {
    case KT_F32: return ref_dot_f32;
    case KT_F16: return ref_dot_f16;
    case KT_BF16: return ref_dot_bf16;
    case KT_Q4_0: return ref_dot_q4_0;
    case KT_Q4_1: return ref_dot_q4_1;
    case KT_Q5_0: return ref_dot_q5_0;
    case KT_Q5_1: return ref_dot_q5_1;
    case KT_Q8_0: return ref_dot_q8_0;
    case KT_Q2_K: return ref_dot_q2_K;
    case KT_Q3_K: return ref_dot_q3_K;
    case KT_Q4_K: return ref_dot_q4_K;
    case KT_Q5_K: return ref_dot_q5_K;
    case KT_Q6_K: return ref_dot_q6_K;
    default: return NULL;
    }
}

#define REF_QUANT(T, name)                                                   \
    static void ref_quant_##name(const float *x, void *y, int64_t n)         \
    {                                                                        \
        kern_quant_row_ref(T, x, y, n);                                      \
    }
REF_QUANT(KT_F32, f32)
REF_QUANT(KT_BF16, bf16)
REF_QUANT(KT_Q8_0, q8_0)
REF_QUANT(KT_Q8_1, q8_1)
REF_QUANT(KT_Q8_K, q8_K)

static kern_quant_row_fn ref_quant(uint32_t t)
{
    switch (t) {
    case KT_F32: return ref_quant_f32;
    case KT_BF16: return ref_quant_bf16;
    case KT_Q8_0: return ref_quant_q8_0;
    case KT_Q8_1: return ref_quant_q8_1;
    case KT_Q8_K: return ref_quant_q8_K;
    default: return NULL;
    }
}

/* ---- dispatch ---------------------------------------------------------- */

static enum kern_isa clamp_isa(enum kern_isa isa)
{
    enum kern_isa best = kern_isa_best();
    return isa > best ? best : isa;
}

struct kern_dot_kernels kern_dot_kernels_ex(uint32_t wtype, enum kern_isa isa, bool vnni, bool bf16)
{
    struct kern_dot_kernels k = {0};
    isa = clamp_isa(isa);
    if (isa >= KERN_ISA_AVX512) {
        k = kern_dot_avx512(wtype, vnni, bf16);
        if (k.dot)
            return k;
    }
    if (isa >= KERN_ISA_AVX2) {
        k = kern_dot_avx2(wtype);
        if (k.dot)
            return k;
    }
    k.dot = ref_dot(wtype);
    k.tile = NULL;
    return k;
}

struct kern_dot_kernels kern_dot_kernels_get(uint32_t wtype, enum kern_isa isa)
{
    const struct kern_cpu_features *f = kern_cpu_features();
    return kern_dot_kernels_ex(wtype, isa, f->avx512vnni, f->avx512bf16);
}

kern_vec_dot_fn kern_vec_dot_get(uint32_t wtype, enum kern_isa isa)
{
    return kern_dot_kernels_get(wtype, isa).dot;
}

enum kern_isa kern_vec_dot_level(uint32_t wtype, enum kern_isa isa)
{
    const struct kern_cpu_features *f = kern_cpu_features();
    isa = clamp_isa(isa);
    if (isa >= KERN_ISA_AVX512 && kern_dot_avx512(wtype, f->avx512vnni, f->avx512bf16).dot)
        return KERN_ISA_AVX512;
    if (isa >= KERN_ISA_AVX2 && kern_dot_avx2(wtype).dot)
        return KERN_ISA_AVX2;
    return KERN_ISA_SCALAR;
}

kern_quant_row_fn kern_quant_act_get(uint32_t atype, enum kern_isa isa)
{
    kern_quant_row_fn q = NULL;
    isa = clamp_isa(isa);
    if (isa >= KERN_ISA_AVX512 && (q = kern_quant_act_avx512(atype)))
        return q;
    if (isa >= KERN_ISA_AVX2 && (q = kern_quant_act_avx2(atype)))
        return q;
    return ref_quant(atype);
}

int kern_quant_act(uint32_t atype, const float *x, void *y, int64_t n)
{
    kern_quant_row_fn q = kern_quant_act_get(atype, kern_isa_active());
    if (!q)
        return MOED_EUNSUPPORTED;
    if (n < 0 || (n > 0 && kern_row_size(atype, n) == 0))
        return MOED_EINVAL;
    q(x, y, n);
    return 0;
}
