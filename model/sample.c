/*
 * Sampling (see sample.h).  Candidates are (token, logit) pairs; each stage
 * narrows the set.  Sorting the whole vocabulary every step would cost
 * milliseconds at 150k tokens, so stages that need order select the best k
 * with a quickselect and sort only those, widening k only when the nucleus
 * is not inside them.
 */
#include "model/sample.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

struct sample_params sample_params_default(void)
{
    return (struct sample_params){
        .temperature = 0.0f,
        .top_k = 0,
        .top_p = 1.0f,
        .min_p = 0.0f,
        .repeat_penalty = 1.0f,
        .presence_penalty = 0.0f,
        .frequency_penalty = 0.0f,
        .penalty_last_n = 64,
        .seed = 0,
        .n_logprobs = 0,
        .logprobs = false,
    };
}

int sample_params_check(const struct sample_params *p, struct moed_err *e)
{
    if (!(p->temperature >= 0.0f && p->temperature <= 100.0f))
        return moed_err_set(e, MOED_ERANGE, "temperature %g: must be in [0, 100]",
                            (double)p->temperature);
    if (!(p->top_p > 0.0f && p->top_p <= 1.0f))
        return moed_err_set(e, MOED_ERANGE, "top_p %g: must be in (0, 1]", (double)p->top_p);
    if (!(p->min_p >= 0.0f && p->min_p <= 1.0f))
        return moed_err_set(e, MOED_ERANGE, "min_p %g: must be in [0, 1]", (double)p->min_p);
    if (p->top_k < 0)
        return moed_err_set(e, MOED_ERANGE, "top_k %d: must be >= 0", p->top_k);
    if (!(p->repeat_penalty > 0.0f && p->repeat_penalty <= 10.0f))
        return moed_err_set(e, MOED_ERANGE, "repeat_penalty %g: must be in (0, 10]",
                            (double)p->repeat_penalty);
    if (!(p->presence_penalty >= -2.0f && p->presence_penalty <= 2.0f))
        return moed_err_set(e, MOED_ERANGE, "presence_penalty %g: must be in [-2, 2]",
                            (double)p->presence_penalty);
    if (!(p->frequency_penalty >= -2.0f && p->frequency_penalty <= 2.0f))
        return moed_err_set(e, MOED_ERANGE, "frequency_penalty %g: must be in [-2, 2]",
                            (double)p->frequency_penalty);
    if (p->n_logprobs < 0 || p->n_logprobs > SAMPLE_MAX_LOGPROBS)
        return moed_err_set(e, MOED_ERANGE, "logprobs %d: must be in [0, %d]", p->n_logprobs,
                            SAMPLE_MAX_LOGPROBS);
    return 0;
}

/* splitmix64 expands the seed; xoshiro256** is the generator (Blackman & Vigna). */
static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t rng_next(uint64_t s[4])
{
    uint64_t r = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return r;
}

float sampler_uniform(struct sampler *s)
{
    return (float)(rng_next(s->rng) >> 40) * 0x1.0p-24f; /* 24 bits: exact in a float */
}

int sampler_init(struct sampler *s, const struct sample_params *p, int32_t n_vocab,
                 struct moed_err *e)
{
    memset(s, 0, sizeof *s);
    int rc = sample_params_check(p, e);
    if (rc)
        return rc;
    if (n_vocab <= 0)
        return moed_err_set(e, MOED_EINVAL, "sampler: vocabulary size %d", n_vocab);
    s->p = *p;
    s->n_vocab = n_vocab;
    uint64_t x = p->seed;
    for (int i = 0; i < 4; i++)
        s->rng[i] = splitmix64(&x);
    s->cand = malloc((size_t)n_vocab * sizeof *s->cand);
    s->seen = calloc((size_t)n_vocab, sizeof *s->seen);
    if (!s->cand || !s->seen) {
        sampler_free(s);
        return moed_err_set(e, MOED_ENOMEM, "sampler: no memory for %d candidates", n_vocab);
    }
    return 0;
}

void sampler_free(struct sampler *s)
{
    free(s->cand);
    free(s->seen);
    s->cand = NULL;
    s->seen = NULL;
}

static inline bool better(struct sample_token_prob a, struct sample_token_prob b)
{
    /* higher logit first; ties by lower id, so results never depend on the
     * order quickselect left equal elements in */
    return a.logprob > b.logprob || (a.logprob == b.logprob && a.token < b.token);
}

/* Move the k best of c[0..n) to c[0..k) (unordered): Hoare-style quickselect. */
static void select_top(struct sample_token_prob *c, int32_t n, int32_t k)
{
    int32_t lo = 0, hi = n - 1;
    while (lo < hi) {
        struct sample_token_prob pivot = c[lo + (hi - lo) / 2];
        int32_t i = lo, j = hi;
        while (i <= j) {
            while (better(c[i], pivot))
                i++;
            while (better(pivot, c[j]))
                j--;
            if (i <= j) {
                struct sample_token_prob t = c[i];
                c[i++] = c[j];
                c[j--] = t;
            }
        }
        if (k - 1 <= j)
            hi = j;
        else if (k - 1 >= i)
            lo = i;
        else
            break;
    }
}

static int cmp_better(const void *a, const void *b)
{
    const struct sample_token_prob *x = a, *y = b;
    return better(*x, *y) ? -1 : better(*y, *x) ? 1 : 0;
}

/* The n_top most likely tokens of the raw logits and the chosen token's
 * log-probability, from one pass for the log-sum-exp and one for the top. */
static void model_logprobs(const float *logits, int32_t n_vocab, int32_t n_top,
                           struct sample_result *out)
{
    float mx = -INFINITY;
    for (int32_t i = 0; i < n_vocab; i++)
        mx = fmaxf(mx, logits[i]);
    double sum = 0.0;
    for (int32_t i = 0; i < n_vocab; i++)
        sum += exp((double)(logits[i] - mx));
    float lse = mx + (float)log(sum);
    out->logprob = logits[out->token] - lse;
    out->n_top = 0;
    for (int32_t i = 0; i < n_vocab && n_top > 0; i++) {
        struct sample_token_prob t = {i, logits[i]};
        int32_t m = out->n_top;
        if (m == n_top && !better(t, out->top[m - 1]))
            continue;
        if (m < n_top)
            out->n_top++;
        else
            m--;
        while (m > 0 && better(t, out->top[m - 1])) {
            out->top[m] = out->top[m - 1];
            m--;
        }
        out->top[m] = t;
    }
    for (int32_t i = 0; i < out->n_top; i++)
        out->top[i].logprob -= lse;
}

static void apply_penalties(struct sampler *s, const int32_t *hist, int32_t n_hist)
{
    const struct sample_params *p = &s->p;
    if (p->repeat_penalty == 1.0f && p->presence_penalty == 0.0f && p->frequency_penalty == 0.0f)
        return;
    int32_t start = p->penalty_last_n < 0 || p->penalty_last_n > n_hist ? 0
                                                                         : n_hist - p->penalty_last_n;
    for (int32_t i = start; i < n_hist; i++)
        if (hist[i] >= 0 && hist[i] < s->n_vocab && s->seen[hist[i]] < UINT16_MAX)
            s->seen[hist[i]]++;
    for (int32_t i = start; i < n_hist; i++) {
        int32_t t = hist[i];
        if (t < 0 || t >= s->n_vocab || s->seen[t] == 0)
            continue;
        float l = s->cand[t].logprob;
        /* CTRL's repetition penalty: shrink positive logits, grow negative ones */
        l = l > 0.0f ? l / p->repeat_penalty : l * p->repeat_penalty;
        l -= (float)s->seen[t] * p->frequency_penalty + p->presence_penalty;
        s->cand[t].logprob = l;
        s->seen[t] = 0; /* penalise each distinct token once; also clears the scratch */
    }
}

int sampler_sample(struct sampler *s, const float *logits, const int32_t *history,
                   int32_t n_history, struct sample_result *out)
{
    const struct sample_params *p = &s->p;
    int32_t n = s->n_vocab;
    memset(out, 0, sizeof *out);
    for (int32_t i = 0; i < n; i++)
        s->cand[i] = (struct sample_token_prob){i, logits[i]};
    apply_penalties(s, history, n_history);
    struct sample_token_prob *c = s->cand;

    if (p->temperature <= 0.0f) {
        int32_t best = 0;
        for (int32_t i = 1; i < n; i++)
            if (better(c[i], c[best]))
                best = i;
        out->token = c[best].token;
        if (p->logprobs || p->n_logprobs > 0)
            model_logprobs(logits, s->n_vocab, p->n_logprobs, out);
        return 0;
    }

    bool need_order = p->top_k > 0 || p->top_p < 1.0f || p->min_p > 0.0f;
    if (need_order) {
        /* top-k, or a window wide enough for the nucleus: widen until the
         * sorted prefix holds top_p of the mass (softmax at temperature 1) */
        int32_t k = p->top_k > 0 && p->top_k < n ? p->top_k : n;
        bool narrow = p->top_p < 1.0f || p->min_p > 0.0f;
        /* with top-k the set is small: sort it whole; without, start from a
         * window of 256 and widen */
        int32_t w = narrow && k == n && k > 256 ? 256 : k;
        double total = 0.0;
        float mx = -INFINITY;
        if (narrow && w < k) {
            for (int32_t i = 0; i < n; i++)
                mx = fmaxf(mx, c[i].logprob);
            for (int32_t i = 0; i < n; i++)
                total += exp((double)(c[i].logprob - mx));
        }
        for (;;) {
            if (w < n)
                select_top(c, n, w);
            qsort(c, (size_t)w, sizeof *c, cmp_better);
            if (w == k)
                break;
            /* the window suffices when it holds the nucleus and everything
             * min-p would keep */
            bool ok_p = true, ok_min = true;
            if (p->top_p < 1.0f) {
                double mass = 0.0;
                for (int32_t i = 0; i < w; i++)
                    mass += exp((double)(c[i].logprob - mx));
                ok_p = mass >= p->top_p * total;
            }
            if (p->min_p > 0.0f)
                ok_min = c[w - 1].logprob < c[0].logprob + logf(p->min_p);
            if (ok_p && ok_min)
                break;
            w = w < k / 4 ? w * 4 : k;
        }
        n = w;
        mx = c[0].logprob;
        if (p->top_p < 1.0f) {
            /* nucleus relative to the current candidates (after top-k) */
            double z = 0.0, acc = 0.0;
            /* the mass of all candidates: the window when it holds all of
             * top-k, else the whole vocabulary */
            int32_t m = w == k ? w : s->n_vocab;
            for (int32_t i = 0; i < m; i++)
                z += exp((double)(c[i].logprob - mx));
            int32_t keep = n;
            for (int32_t i = 0; i < n; i++) {
                acc += exp((double)(c[i].logprob - mx));
                if (acc >= p->top_p * z) {
                    keep = i + 1;
                    break;
                }
            }
            n = keep;
        }
        if (p->min_p > 0.0f) {
            float cut = mx + logf(p->min_p);
            int32_t keep = 1;
            while (keep < n && c[keep].logprob >= cut)
                keep++;
            n = keep;
        }
    }

    /* temperature, then one draw over the survivors */
    float mx = -INFINITY;
    for (int32_t i = 0; i < n; i++)
        mx = fmaxf(mx, c[i].logprob);
    double z = 0.0;
    for (int32_t i = 0; i < n; i++)
        z += exp((double)((c[i].logprob - mx) / p->temperature));
    double u = (double)sampler_uniform(s) * z, acc = 0.0;
    int32_t pick = n - 1;
    for (int32_t i = 0; i < n; i++) {
        acc += exp((double)((c[i].logprob - mx) / p->temperature));
        if (u < acc) {
            pick = i;
            break;
        }
    }
    out->token = c[pick].token;
    if (p->logprobs || p->n_logprobs > 0)
        model_logprobs(logits, s->n_vocab, p->n_logprobs, out);
    return 0;
}
