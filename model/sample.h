/*
 * Sampling: turn one row of logits into the next token.
 *
 * The chain, in llama.cpp's order: repetition / presence / frequency
 * penalties over the recent history -> top-k -> top-p (nucleus) -> min-p
 * -> temperature -> a draw from a seeded generator.  temperature <= 0 is
 * greedy (argmax after penalties).  The same seed, logits and history give
 * the same token on every machine: the generator is xoshiro256** seeded by
 * splitmix64, and the draw uses float arithmetic in a fixed order.
 *
 * Log-probabilities are those of the model: log-softmax of the raw logits
 * (before penalties and temperature), as the OpenAI API reports them.
 */
#ifndef MOED_MODEL_SAMPLE_H
#define MOED_MODEL_SAMPLE_H

#include <stdbool.h>
#include <stdint.h>

#include "common/err.h"

#define SAMPLE_MAX_LOGPROBS 20

struct sample_params {
    float temperature;       /* <= 0: greedy */
    int32_t top_k;           /* <= 0: off */
    float top_p;             /* >= 1: off */
    float min_p;             /* <= 0: off */
    float repeat_penalty;    /* 1: off; > 1 discourages repeats (CTRL-style divide/multiply) */
    float presence_penalty;  /* OpenAI: subtract once if the token occurred */
    float frequency_penalty; /* OpenAI: subtract count * penalty */
    int32_t penalty_last_n;  /* history window for penalties; < 0: whole history */
    uint64_t seed;
    int32_t n_logprobs; /* top alternatives to report, 0..SAMPLE_MAX_LOGPROBS */
    bool logprobs;      /* fill sample_result.logprob (implied by n_logprobs > 0): a pass
                           over the whole vocabulary, skipped when nobody asked */
};

/* Greedy, no penalties, seed 0. */
struct sample_params sample_params_default(void);
/* Checks ranges; the message names the field and the value. */
int sample_params_check(const struct sample_params *p, struct moed_err *e);

struct sample_token_prob {
    int32_t token;
    float logprob;
};

struct sample_result {
    int32_t token;
    float logprob; /* of token under the model's distribution (0 unless asked) */
    int32_t n_top;
    struct sample_token_prob top[SAMPLE_MAX_LOGPROBS]; /* most likely first */
};

struct sampler {
    struct sample_params p;
    uint64_t rng[4];
    int32_t n_vocab;
    /* scratch, n_vocab entries each */
    struct sample_token_prob *cand;
    uint16_t *seen; /* penalty counts (saturating) */
};

int sampler_init(struct sampler *s, const struct sample_params *p, int32_t n_vocab,
                 struct moed_err *e);
void sampler_free(struct sampler *s);

/*
 * Choose the next token.  logits (n_vocab) are not modified.  history is
 * the sequence so far (prompt and generated), used for penalties.
 */
int sampler_sample(struct sampler *s, const float *logits, const int32_t *history,
                   int32_t n_history, struct sample_result *out);

/* Uniform float in [0, 1) from the sampler's generator (exposed for tests). */
float sampler_uniform(struct sampler *s);

#endif
