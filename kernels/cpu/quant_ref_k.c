/*
 * Scalar reference of the k-quants: 256-element super-blocks split into
 * sub-blocks (16 of 16 or 8 of 32) whose scales are themselves quantized
 * against one or two fp16 super-block factors d and dmin.
 *
 * Element order (ggml's dequantize_row_q*_K): the 2- and 3-bit formats take
 * a 128-element half from 32 bytes of qs, element 32*k + l of the half
 * sitting at bits 2k..2k+1 of qs[l]; Q3_K's third bit of element e is bit
 * e / 32 of hmask[e % 32] (set means "no -4").  Q4_K/Q5_K take a 64-element
 * chunk from 32 bytes, the low nibbles first, then the high nibbles; Q5_K's
 * fifth bit of chunk c (0..3) is bit 2c (low half) or 2c+1 (high half) of
 * qh[l].  Q6_K takes a 128-element half from 64 bytes of ql and 32 of qh:
 * elements l, l+32, l+64, l+96 are the low nibbles of ql[l], ql[l+32], then
 * the high nibbles of the same, with 2-bit tops from qh[l] bits 0,2,4,6.
 *
 * Quantization (round to nearest, no importance matrix) fits each
 * sub-block's scale (and min) by a small search over candidate scales with
 * weighted least squares, then quantizes the sub-block scales against the
 * largest one, then requantizes the elements with the scales as they will
 * be decoded.  This is the approach of ggml's reference quantizers.
 */
#include <stdbool.h>

#include "kernels/cpu/quant_ref_impl.h"

/* ---- dequantize ------------------------------------------------------- */

/* w = d * (scales[s] & 15) * q - dmin * (scales[s] >> 4), q in 0..3 */
void ref_dequant_q2_K(const block_q2_K *x, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++) {
        float d = kern_f16_to_f32(x[i].d), dmin = kern_f16_to_f32(x[i].dmin);
        for (int e = 0; e < QK_K; e++) {
            int half = e / 128, k = e % 128 / 32, l = e % 32;
            uint8_t sc = x[i].scales[e / 16];
            float dl = d * (float)(sc & 0xF), ml = dmin * (float)(sc >> 4);
            int q = x[i].qs[32 * half + l] >> (2 * k) & 3;
            y[QK_K * i + e] = dl * (float)q - ml;
        }
    }
}

/* w = d * scale * (q - 4 * !hbit), q in 0..3, scale in -32..31 */
void ref_dequant_q3_K(const block_q3_K *x, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++) {
        float d = kern_f16_to_f32(x[i].d);
        for (int e = 0; e < QK_K; e++) {
            int half = e / 128, k = e % 128 / 32, l = e % 32;
            float dl = d * (float)kern_q3_K_scale(e / 16, x[i].scales);
            int q = x[i].qs[32 * half + l] >> (2 * k) & 3;
            if (!(x[i].hmask[l] >> (e / 32) & 1))
                q -= 4;
            y[QK_K * i + e] = dl * (float)q;
        }
    }
}

/* w = d * sc[s] * q - dmin * m[s], q in 0..15, 6-bit sc and m */
void ref_dequant_q4_K(const block_q4_K *x, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++) {
        float d = kern_f16_to_f32(x[i].d), dmin = kern_f16_to_f32(x[i].dmin);
        for (int e = 0; e < QK_K; e++) {
            int chunk = e / 64, hi = e % 64 / 32, l = e % 32;
            uint8_t sc, m;
            kern_q4_K_scale_min(e / 32, x[i].scales, &sc, &m);
            float d1 = d * (float)sc, m1 = dmin * (float)m;
            int q = x[i].qs[32 * chunk + l] >> (4 * hi) & 0xF;
            y[QK_K * i + e] = d1 * (float)q - m1;
        }
    }
}

/* As Q4_K with a fifth bit: q in 0..31 */
void ref_dequant_q5_K(const block_q5_K *x, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++) {
        float d = kern_f16_to_f32(x[i].d), dmin = kern_f16_to_f32(x[i].dmin);
        for (int e = 0; e < QK_K; e++) {
            int chunk = e / 64, hi = e % 64 / 32, l = e % 32;
            uint8_t sc, m;
            kern_q4_K_scale_min(e / 32, x[i].scales, &sc, &m);
            float d1 = d * (float)sc, m1 = dmin * (float)m;
            int q = (x[i].qs[32 * chunk + l] >> (4 * hi) & 0xF) |
                    (x[i].qh[l] >> (2 * chunk + hi) & 1) << 4;
            y[QK_K * i + e] = d1 * (float)q - m1;
        }
    }
}

/* w = d * scales[s] * (q - 32), q in 0..63, int8 scales over 16 elements */
void ref_dequant_q6_K(const block_q6_K *x, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++) {
        float d = kern_f16_to_f32(x[i].d);
        for (int e = 0; e < QK_K; e++) {
            int half = e / 128, k = e % 128 / 32, l = e % 32;
            int lo = x[i].ql[64 * half + 32 * (k & 1) + l] >> (4 * (k >> 1)) & 0xF;
            int hi = x[i].qh[32 * half + l] >> (2 * k) & 3;
            int q = (lo | hi << 4) - 32;
            y[QK_K * i + e] = d * (float)x[i].scales[e / 16] * (float)q;
        }
    }
}

void ref_dequant_q8_K(const block_q8_K *x, float *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++)
        for (int e = 0; e < QK_K; e++)
            y[QK_K * i + e] = x[i].d * (float)x[i].qs[e];
}

/* ---- sub-block fits --------------------------------------------------- */

/* Below this a group counts as all zero (ggml's GROUP_MAX_EPS). */
#define GROUP_EPS 1e-15f

/*
 * Fit x[i] ~ scale * L[i] - mn with codes L in [0, nmax] and an offset
 * mn >= 0, minimizing sum w[i] * err[i]^2 (or |err[i]| with use_mad).
 *
 * For a candidate inverse scale the codes are round((x - lo) * iscale);
 * given the codes, the best (scale, -mn) solves the 2x2 weighted
 * least-squares normal equations
 *     [Sll Sl][s]   [Slx]
 *     [Sl  S1][m] = [Sx ]     (S = sums weighted by w)
 * with m clamped to <= 0 (then s = Slx / Sll).  Candidates are
 * iscale = (nmax + rmin + rdelta * k) / (hi - lo), k = 0..nstep, and the
 * plain spread nmax / (hi - lo); the one of least error wins.
 */
static float fit_scale_min(int n, int nmax, const float *x, const float *w, uint8_t *L, float *mn,
                           float rmin, float rdelta, int nstep, bool use_mad)
{
    float lo = x[0], hi = x[0], s1 = 0.0f, sx = 0.0f;
    for (int i = 0; i < n; i++) {
        lo = fminf(lo, x[i]);
        hi = fmaxf(hi, x[i]);
        s1 += w[i];
        sx += w[i] * x[i];
    }
    /* mn only shifts values down: a positive lower end is coded from 0. */
    if (lo > 0.0f)
        lo = 0.0f;
    if (hi == lo) {
        memset(L, 0, (size_t)n);
        *mn = -lo;
        return 0.0f;
    }

    float scale = (hi - lo) / (float)nmax, off = lo, best = 0.0f;
    for (int i = 0; i < n; i++) {
        L[i] = (uint8_t)ref_round_even((x[i] - lo) / scale, 0, nmax);
        float err = scale * (float)L[i] + off - x[i];
        best += w[i] * (use_mad ? fabsf(err) : err * err);
    }

    uint8_t cand[32];
    assert(n <= 32);
    for (int k = 0; k <= nstep; k++) {
        float iscale = ((float)nmax + rmin + rdelta * (float)k) / (hi - lo);
        float sl = 0.0f, sll = 0.0f, slx = 0.0f;
        for (int i = 0; i < n; i++) {
            int l = ref_round_even(iscale * (x[i] - lo), 0, nmax);
            cand[i] = (uint8_t)l;
            sl += w[i] * (float)l;
            sll += w[i] * (float)(l * l);
            slx += w[i] * (float)l * x[i];
        }
        float det = s1 * sll - sl * sl;
        if (!(det > 0.0f))
            continue;
        float s = (s1 * slx - sx * sl) / det;
        float m = (sll * sx - sl * slx) / det;
        if (m > 0.0f) {
            m = 0.0f;
            s = slx / sll;
        }
        float cur = 0.0f;
        for (int i = 0; i < n; i++) {
            float err = s * (float)cand[i] + m - x[i];
            cur += w[i] * (use_mad ? fabsf(err) : err * err);
        }
        if (cur < best) {
            best = cur;
            scale = s;
            off = m;
            memcpy(L, cand, (size_t)n);
        }
    }
    *mn = -off;
    return scale;
}

/*
 * Fit x[i] ~ scale * l[i] with l in [-nmax, nmax - 1] (stored as
 * L = l + nmax), weights x^2 so large elements count most.  For fixed codes
 * the best scale is Slx / Sll and leaves error Sxx - Slx^2 / Sll, so the
 * candidate (iscale = -(nmax + 0.1 k) / max, k = -9..9) with the largest
 * Slx^2 / Sll wins.  The negative iscale sends the extreme element to
 * -nmax, which has no positive twin.
 */
static float fit_symmetric(int n, int nmax, const float *x, uint8_t *L)
{
    float max = 0.0f;
    for (int i = 0; i < n; i++)
        if (fabsf(x[i]) > fabsf(max))
            max = x[i];
    if (fabsf(max) < GROUP_EPS) {
        memset(L, nmax, (size_t)n);
        return 0.0f;
    }
    float scale = 0.0f, best_num = 0.0f, best_den = 0.0f;
    for (int k = 0; k <= 18; k++) {
        int step = k == 0 ? 0 : (k <= 9 ? k : 9 - k); /* 0 first, then +-1..9 */
        float iscale = -((float)nmax + 0.1f * (float)step) / max;
        float slx = 0.0f, sll = 0.0f;
        for (int i = 0; i < n; i++) {
            int l = ref_round_even(iscale * x[i], -nmax, nmax - 1);
            float w = x[i] * x[i];
            slx += w * x[i] * (float)l;
            sll += w * (float)(l * l);
        }
        if (!(sll > 0.0f))
            continue;
        if (best_den == 0.0f || slx * slx * best_den > best_num * sll) {
            best_num = slx * slx;
            best_den = sll;
            scale = slx / sll;
            for (int i = 0; i < n; i++)
                L[i] = (uint8_t)(ref_round_even(iscale * x[i], -nmax, nmax - 1) + nmax);
        }
    }
    if (best_den == 0.0f) /* weights underflowed: code everything as 0 */
        memset(L, nmax, (size_t)n);
    return scale;
}

/* Largest-magnitude entry of v[n], with its sign. */
static float signed_max(const float *v, int n)
{
    float m = 0.0f;
    for (int i = 0; i < n; i++)
        if (fabsf(v[i]) > fabsf(m))
            m = v[i];
    return m;
}

static float max_of(const float *v, int n)
{
    float m = 0.0f;
    for (int i = 0; i < n; i++)
        m = fmaxf(m, v[i]);
    return m;
}

/* ---- quantize: Q2_K ------------------------------------------------------ */

/*
 * Sub-blocks of 16 fit (scale, min) with 2-bit codes; scales and mins are
 * then coded in 4 bits each against d = max scale / 15 and
 * dmin = max min / 15.  Absolute-error fit weighted by |x| (ggml's choice
 * for 2 bits, where squared error is dominated by a few outliers).
 */
void ref_quant_q2_K(const float *x, block_q2_K *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, x += QK_K) {
        uint8_t L[QK_K];
        float w[16], scales[16], mins[16];
        for (int j = 0; j < 16; j++) {
            for (int l = 0; l < 16; l++)
                w[l] = fabsf(x[16 * j + l]);
            scales[j] =
                fit_scale_min(16, 3, x + 16 * j, w, L + 16 * j, &mins[j], -0.5f, 0.1f, 15, true);
        }
        float max_scale = max_of(scales, 16), max_min = max_of(mins, 16);
        float is = max_scale > 0.0f ? 15.0f / max_scale : 0.0f;
        float im = max_min > 0.0f ? 15.0f / max_min : 0.0f;
        for (int j = 0; j < 16; j++) {
            int ls = ref_round_even(is * scales[j], 0, 15);
            int lm = ref_round_even(im * mins[j], 0, 15);
            y[i].scales[j] = (uint8_t)(ls | lm << 4);
        }
        y[i].d = kern_f32_to_f16(max_scale / 15.0f);
        y[i].dmin = kern_f32_to_f16(max_min / 15.0f);

        float d = kern_f16_to_f32(y[i].d), dmin = kern_f16_to_f32(y[i].dmin);
        for (int j = 0; j < 16; j++) {
            float dl = d * (float)(y[i].scales[j] & 0xF);
            if (dl == 0.0f)
                continue;
            float ml = dmin * (float)(y[i].scales[j] >> 4);
            for (int l = 0; l < 16; l++)
                L[16 * j + l] = (uint8_t)ref_round_even((x[16 * j + l] + ml) / dl, 0, 3);
        }
        for (int h = 0; h < 2; h++)
            for (int l = 0; l < 32; l++) {
                const uint8_t *c = L + 128 * h + l;
                y[i].qs[32 * h + l] = (uint8_t)(c[0] | c[32] << 2 | c[64] << 4 | c[96] << 6);
            }
    }
}

/* ---- quantize: Q3_K ------------------------------------------------------ */

/* Sub-blocks of 16 fit a signed scale for codes -4..3; the scales are coded
 * in 6 bits (biased by 32) against d = -(max scale) / 32. */
void ref_quant_q3_K(const float *x, block_q3_K *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, x += QK_K) {
        uint8_t L[QK_K];
        float scales[16];
        for (int j = 0; j < 16; j++)
            scales[j] = fit_symmetric(16, 4, x + 16 * j, L + 16 * j);

        memset(y[i].scales, 0, sizeof y[i].scales);
        float max_scale = signed_max(scales, 16);
        if (fabsf(max_scale) >= GROUP_EPS) {
            float is = -32.0f / max_scale;
            for (int j = 0; j < 16; j++) {
                int l = ref_round_even(is * scales[j], -32, 31) + 32;
                if (j < 8)
                    y[i].scales[j] = (uint8_t)(l & 0xF);
                else
                    y[i].scales[j - 8] |= (uint8_t)((l & 0xF) << 4);
                y[i].scales[8 + j % 4] |= (uint8_t)((l >> 4) << (2 * (j / 4)));
            }
            y[i].d = kern_f32_to_f16(1.0f / is);
        } else {
            y[i].d = 0;
        }

        float d = kern_f16_to_f32(y[i].d);
        for (int j = 0; j < 16; j++) {
            float dl = d * (float)kern_q3_K_scale(j, y[i].scales);
            if (dl == 0.0f)
                continue;
            for (int l = 0; l < 16; l++)
                L[16 * j + l] = (uint8_t)(ref_round_even(x[16 * j + l] / dl, -4, 3) + 4);
        }
        /* Code c in 0..7: bit 2 goes to hmask (set = c >= 4), bits 0..1 to qs. */
        memset(y[i].hmask, 0, sizeof y[i].hmask);
        for (int e = 0; e < QK_K; e++)
            if (L[e] > 3) {
                y[i].hmask[e % 32] |= (uint8_t)(1u << (e / 32));
                L[e] -= 4;
            }
        for (int h = 0; h < 2; h++)
            for (int l = 0; l < 32; l++) {
                const uint8_t *c = L + 128 * h + l;
                y[i].qs[32 * h + l] = (uint8_t)(c[0] | c[32] << 2 | c[64] << 4 | c[96] << 6);
            }
    }
}

/* ---- quantize: Q4_K, Q5_K ---------------------------------------------- */

/* Pack eight 6-bit scales and mins as kern_q4_K_scale_min reads them. */
static void pack_scale_min_k4(const uint8_t ls[8], const uint8_t lm[8], uint8_t q[12])
{
    for (int j = 0; j < 4; j++) {
        q[j] = (uint8_t)(ls[j] | (ls[j + 4] >> 4) << 6);
        q[j + 4] = (uint8_t)(lm[j] | (lm[j + 4] >> 4) << 6);
        q[j + 8] = (uint8_t)((ls[j + 4] & 0xF) | (lm[j + 4] & 0xF) << 4);
    }
}

/*
 * Shared by Q4_K (nmax 15) and Q5_K (nmax 31): sub-blocks of 32 fit
 * (scale, min) weighted by rms(sub-block) + |x| (favours large elements
 * without ignoring small ones); scales and mins are coded in 6 bits against
 * d = max scale / 63 and dmin = max min / 63.  Writes d, dmin, scales and
 * the codes L (0..nmax) of the 256 elements.
 */
static void quant_k4_common(const float *x, int nmax, float rmin, float rdelta, int nstep,
                            kern_f16 *d_out, kern_f16 *dmin_out, uint8_t q[12], uint8_t L[QK_K])
{
    float w[32], scales[8], mins[8];
    for (int j = 0; j < 8; j++) {
        const float *xs = x + 32 * j;
        float sum_x2 = 0.0f;
        for (int l = 0; l < 32; l++)
            sum_x2 += xs[l] * xs[l];
        float av_x = sqrtf(sum_x2 / 32.0f);
        for (int l = 0; l < 32; l++)
            w[l] = av_x + fabsf(xs[l]);
        scales[j] =
            fit_scale_min(32, nmax, xs, w, L + 32 * j, &mins[j], rmin, rdelta, nstep, false);
    }
    float max_scale = max_of(scales, 8), max_min = max_of(mins, 8);
    float is = max_scale > 0.0f ? 63.0f / max_scale : 0.0f;
    float im = max_min > 0.0f ? 63.0f / max_min : 0.0f;
    uint8_t ls[8], lm[8];
    for (int j = 0; j < 8; j++) {
        ls[j] = (uint8_t)ref_round_even(is * scales[j], 0, 63);
        lm[j] = (uint8_t)ref_round_even(im * mins[j], 0, 63);
    }
    pack_scale_min_k4(ls, lm, q);
    *d_out = kern_f32_to_f16(max_scale / 63.0f);
    *dmin_out = kern_f32_to_f16(max_min / 63.0f);

    float d = kern_f16_to_f32(*d_out), dmin = kern_f16_to_f32(*dmin_out);
    for (int j = 0; j < 8; j++) {
        uint8_t sc, m;
        kern_q4_K_scale_min(j, q, &sc, &m);
        float d1 = d * (float)sc;
        if (d1 == 0.0f)
            continue;
        float m1 = dmin * (float)m;
        for (int l = 0; l < 32; l++)
            L[32 * j + l] = (uint8_t)ref_round_even((x[32 * j + l] + m1) / d1, 0, nmax);
    }
}

void ref_quant_q4_K(const float *x, block_q4_K *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, x += QK_K) {
        uint8_t L[QK_K];
        quant_k4_common(x, 15, -1.0f, 0.1f, 20, &y[i].d, &y[i].dmin, y[i].scales, L);
        for (int c = 0; c < 4; c++)
            for (int l = 0; l < 32; l++)
                y[i].qs[32 * c + l] = (uint8_t)(L[64 * c + l] | L[64 * c + 32 + l] << 4);
    }
}

void ref_quant_q5_K(const float *x, block_q5_K *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, x += QK_K) {
        uint8_t L[QK_K];
        quant_k4_common(x, 31, -0.5f, 0.1f, 15, &y[i].d, &y[i].dmin, y[i].scales, L);
        memset(y[i].qh, 0, sizeof y[i].qh);
        for (int c = 0; c < 4; c++)
            for (int l = 0; l < 32; l++) {
                int lo = L[64 * c + l], hi = L[64 * c + 32 + l];
                y[i].qs[32 * c + l] = (uint8_t)((lo & 0xF) | (hi & 0xF) << 4);
                y[i].qh[l] |= (uint8_t)((lo >> 4) << (2 * c) | (hi >> 4) << (2 * c + 1));
            }
    }
}

/* ---- quantize: Q6_K ------------------------------------------------------ */

/* Sub-blocks of 16 fit a signed scale for codes -32..31; the scales are
 * coded as int8 against d = -(max scale) / 128. */
void ref_quant_q6_K(const float *x, block_q6_K *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, x += QK_K) {
        uint8_t L[QK_K];
        float scales[16];
        for (int j = 0; j < 16; j++)
            scales[j] = fit_symmetric(16, 32, x + 16 * j, L + 16 * j);

        float max_scale = signed_max(scales, 16);
        if (fabsf(max_scale) < GROUP_EPS) {
            memset(&y[i], 0, sizeof y[i]);
            continue;
        }
        float is = -128.0f / max_scale;
        y[i].d = kern_f32_to_f16(1.0f / is);
        for (int j = 0; j < 16; j++)
            y[i].scales[j] = (int8_t)ref_round_even(is * scales[j], -128, 127);

        float d = kern_f16_to_f32(y[i].d);
        for (int j = 0; j < 16; j++) {
            float dl = d * (float)y[i].scales[j];
            if (dl == 0.0f)
                continue;
            for (int l = 0; l < 16; l++)
                L[16 * j + l] = (uint8_t)(ref_round_even(x[16 * j + l] / dl, -32, 31) + 32);
        }
        for (int h = 0; h < 2; h++)
            for (int l = 0; l < 32; l++) {
                const uint8_t *c = L + 128 * h + l;
                y[i].ql[64 * h + l] = (uint8_t)((c[0] & 0xF) | (c[64] & 0xF) << 4);
                y[i].ql[64 * h + 32 + l] = (uint8_t)((c[32] & 0xF) | (c[96] & 0xF) << 4);
                y[i].qh[32 * h + l] = (uint8_t)(c[0] >> 4 | (c[32] >> 4) << 2 | (c[64] >> 4) << 4 |
                                                (c[96] >> 4) << 6);
            }
    }
}

/* ---- quantize: Q8_K ------------------------------------------------------ */

/* d = -max / 127 (float, signed as ggml writes it), q = round(x / d), and
 * bsums[j] = sum of q over elements 16j..16j+15 for the k-quant dots'
 * min terms. */
void ref_quant_q8_K(const float *x, block_q8_K *y, int64_t nb)
{
    for (int64_t i = 0; i < nb; i++, x += QK_K) {
        float max = signed_max(x, QK_K);
        if (max == 0.0f) {
            memset(&y[i], 0, sizeof y[i]);
            continue;
        }
        float is = -127.0f / max;
        for (int e = 0; e < QK_K; e++)
            y[i].qs[e] = (int8_t)ref_round_even(is * x[e], -127, 127);
        for (int j = 0; j < QK_K / 16; j++) {
            int s = 0;
            for (int l = 0; l < 16; l++)
                s += y[i].qs[16 * j + l];
            y[i].bsums[j] = (int16_t)s;
        }
        y[i].d = 1.0f / is;
    }
}
