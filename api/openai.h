/*
 * api/openai.h: the OpenAI protocol, apart from the engine and the HTTP
 * transport.  Four pieces, all plain functions of their inputs (no threads,
 * no I/O, no global state):
 *
 *   1. Requests: the body of POST /v1/completions or /v1/chat/completions,
 *      bytes in, a struct oai_request out (prompt or messages, limits,
 *      struct sample_params, stops, stream flags), or a struct oai_error
 *      naming the field and the value that was wrong.  Everything a client
 *      can get wrong is found here, before any 200 header is sent.
 *   2. Responses: the completion / chat.completion objects and the streaming
 *      chunks, byte for byte in OpenAI's shape (key order included), as
 *      malloc'd JSON text ready for api_respond / api_stream_send_event.
 *   3. Text out: a streaming matcher that takes detokenized pieces as they
 *      come and returns what is safe to send now: never a stop string, never
 *      a piece of one that might still complete, never half a UTF-8 char.
 *   4. Errors: the OpenAI error object ({"error": {"message", "type",
 *      "param", "code"}}, the same shape as api_error_json), with OpenAI's
 *      codes where OpenAI has one (invalid_type, context_length_exceeded,
 *      model_not_found, ...).
 *
 * A handler's life, roughly:
 *
 *   struct oai_request rq; struct oai_error err;
 *   if (oai_request_parse(&rq, OAI_CHAT, body, len, &opts, &err))
 *       -> api_respond_error(req, err.status, param or NULL, code or NULL, "%s", err.message)
 *   template + tokenize; oai_check_context(&rq, n_prompt, n_ctx, &max_new, &err) -> same
 *   oai_resp_init(&rs, &rq, model_name, NULL); oai_stop_init(&st, rq.stop, ...);
 *   stream: oai_chunk_begin, then per token oai_stop_push -> oai_chunk_text,
 *           at the end oai_stop_flush -> oai_chunk_text, oai_chunk_finish,
 *           oai_chunk_usage, api_stream_end(req, true)
 *   else:   collect the text the same way, then oai_resp_body.
 */
#ifndef MOED_API_OPENAI_H
#define MOED_API_OPENAI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/utf8.h"
#include "model/sample.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- errors ------------------------------------------------------------------ */

#define OAI_ERR_PARAM 64
#define OAI_ERR_CODE 48
#define OAI_ERR_MSG 512

/* One OpenAI error, ready for api_respond_error(req, status, param or NULL,
 * code or NULL, "%s", message).  An empty param or code stands for JSON
 * null.  The message names the field and the value that was wrong. */
struct oai_error {
    int status; /* HTTP status: 400, 404, 500 ... */
    char param[OAI_ERR_PARAM];
    char code[OAI_ERR_CODE];
    char message[OAI_ERR_MSG];
};

/* Fill e (param and code may be NULL) and return MOED_EINVAL. */
int oai_error_set(struct oai_error *e, int status, const char *param, const char *code,
                  const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* {"error": {"message": M, "type": T, "param": P|null, "code": C|null}}, as
 * malloc'd text (NULL when out of memory).  type is "invalid_request_error"
 * for 4xx and "server_error" for 5xx, as api_error_type() says. */
char *oai_error_json(const struct oai_error *e);

/* 400 context_length_exceeded, param "messages", in OpenAI's words:
 * "This model's maximum context length is N tokens. However, you requested
 * M tokens (P in the messages, C in the completion). Please reduce the
 * length of the messages or completion."  max_tokens <= 0 (not given):
 * "However, your messages resulted in P tokens. Please reduce the length
 * of the messages."  Returns MOED_EINVAL. */
int oai_error_context_length(struct oai_error *e, int64_t n_prompt, int64_t max_tokens,
                             int64_t n_ctx);

/* ---- requests ---------------------------------------------------------------- */

enum oai_kind {
    OAI_COMPLETION, /* POST /v1/completions: "prompt" */
    OAI_CHAT,       /* POST /v1/chat/completions: "messages" */
};

enum oai_role {
    OAI_ROLE_SYSTEM, /* "developer" maps here */
    OAI_ROLE_USER,
    OAI_ROLE_ASSISTANT,
    OAI_ROLE_TOOL,
};

/* "system", "user", "assistant", "tool". */
const char *oai_role_name(enum oai_role role);

struct oai_message {
    enum oai_role role;
    char *content; /* NUL-terminated valid UTF-8 without NULs; never NULL ("" for null) */
    size_t len;
};

#define OAI_MAX_STOP 4
#define OAI_MAX_STOP_LEN 1024 /* bytes per stop string: bounds the matcher's state */

/* Which sampling fields the request gave (the others hold the defaults). */
enum {
    OAI_SET_TEMPERATURE = 1u << 0,
    OAI_SET_TOP_P = 1u << 1,
    OAI_SET_TOP_K = 1u << 2,
    OAI_SET_MIN_P = 1u << 3,
    OAI_SET_REPEAT_PENALTY = 1u << 4,
    OAI_SET_PRESENCE_PENALTY = 1u << 5,
    OAI_SET_FREQUENCY_PENALTY = 1u << 6,
    OAI_SET_SEED = 1u << 7,
};

struct oai_request {
    enum oai_kind kind;
    char *model; /* as the client wrote it; NULL when absent */

    /* OAI_COMPLETION: exactly one of these is set. */
    char *prompt; /* text (may be ""), NUL-terminated valid UTF-8 */
    size_t prompt_len;
    int32_t *prompt_ids; /* token ids, each in [0, n_vocab) when opts gave n_vocab */
    size_t n_prompt_ids; /* >= 1 when prompt_ids is set */

    /* OAI_CHAT: at least one message; text parts joined with "\n". */
    struct oai_message *messages;
    size_t n_messages;

    int32_t max_tokens; /* max_completion_tokens, else max_tokens; 0: not given */
    struct sample_params sample;
    unsigned set; /* OAI_SET_* */

    int n_stop; /* 0..OAI_MAX_STOP, each non-empty valid UTF-8 */
    char *stop[OAI_MAX_STOP];
    size_t stop_len[OAI_MAX_STOP];

    bool stream;
    bool include_usage; /* stream_options.include_usage */
    bool logprobs;      /* report log-probabilities, sample.n_logprobs alternatives each */
    bool echo;          /* completions: send the prompt before the completion */
    /* chat: chat_template_kwargs.enable_thinking, for chat_opts: -1 not
     * given (the template's default), 0 false, 1 true. */
    int enable_thinking;
};

struct oai_parse_opts {
    /* Sampling values for fields the request leaves out (the daemon's config,
     * with a fresh random seed).  NULL: sample_params_default() with OpenAI's
     * temperature 1 (seed 0). */
    const struct sample_params *defaults;
    /* Non-NULL: a request naming another model gets 404 model_not_found.
     * NULL: any name (or none) is accepted. */
    const char *model;
    /* > 0: prompt token ids must be below it. */
    int32_t n_vocab;
    /* false: echo=true is 400 unsupported (set it once the daemon sends the
     * prompt back). */
    bool allow_echo;
};

/*
 * Parse and validate a request body of kind.  opts may be NULL.  Returns 0
 * and fills *rq (free it with oai_request_free), or MOED_EINVAL / MOED_ENOMEM
 * with *err filled (400 for client mistakes, 404 for an unknown model, 500
 * for memory) and *rq zeroed.  Unknown fields are ignored; null counts as
 * absent; a known field given twice is an error.  Accepted:
 *
 *   model                  string
 *   prompt                 completions, required: string, [string], [int...], [[int...]]
 *   messages               chat, required: [{role, content}] with role system, developer
 *                          (as system), user, assistant, tool and content a string, null
 *                          (assistant) or [{"type": "text", "text": s}...]
 *   max_tokens, max_completion_tokens   integer >= 1
 *   temperature [0, 2]  top_p (0, 1]  top_k int >= 0 (-1: off, as vLLM)  min_p [0, 1]
 *   presence_penalty, frequency_penalty [-2, 2]  repetition_penalty (0, 10]
 *   seed                   integer in [-2^63, 2^64), two's complement into uint64;
 *                          beyond 2^53 JSON numbers are doubles, so nearby seeds may collide
 *   stop                   string or array of up to 4 non-empty strings of at most
 *                          OAI_MAX_STOP_LEN bytes
 *   stream                 boolean; stream_options {include_usage: boolean} only with stream
 *   logprobs               completions: integer 0..20; chat: boolean, with top_logprobs 0..20
 *   n, best_of             1 (more: 400 unsupported)
 *   echo                   completions, boolean (true needs opts->allow_echo)
 *   chat_template_kwargs   chat: an object; its enable_thinking, a boolean, goes to the
 *                          chat template (as vLLM and llama.cpp's server do); other keys
 *                          are ignored
 *   user                   ignored
 *   logit_bias, suffix, tools, functions, response_format other than text: 400 unsupported
 */
int oai_request_parse(struct oai_request *rq, enum oai_kind kind, const char *body, size_t len,
                      const struct oai_parse_opts *opts, struct oai_error *err);
void oai_request_free(struct oai_request *rq);

/*
 * After templating and tokenizing: check that n_prompt tokens plus the
 * completion fit n_ctx, and give the completion's length in *max_new (the
 * request's max_tokens, or what is left of the context when it gave none).
 * A prompt of 0 tokens is 400 (param "prompt"/"messages"), one that leaves
 * no room or a max_tokens beyond the context is 400 context_length_exceeded.
 */
int oai_check_context(const struct oai_request *rq, int64_t n_prompt, int64_t n_ctx,
                      int32_t *max_new, struct oai_error *err);

/* ---- responses --------------------------------------------------------------- */

enum oai_finish {
    OAI_FINISH_STOP,   /* "stop": end of sequence or a stop string */
    OAI_FINISH_LENGTH, /* "length": max_tokens or the context */
};
const char *oai_finish_name(enum oai_finish f);

struct oai_usage {
    int64_t prompt_tokens, completion_tokens;
};

/* One generated token's log-probability and its most likely alternatives
 * (model/sample.h's struct sample_result after detokenizing each id).
 * Texts are the tokens' raw bytes and may be partial UTF-8: the JSON shows
 * such a token as "bytes:\xe4\xbd" (valid characters as themselves). */
struct oai_logprob_alt {
    const char *text;
    size_t len;
    float logprob;
};
struct oai_logprob {
    const char *text;
    size_t len;
    float logprob; /* -inf (and NaN) are sent as -9999, as OpenAI does */
    int32_t n_top; /* 0..SAMPLE_MAX_LOGPROBS */
    struct oai_logprob_alt top[SAMPLE_MAX_LOGPROBS];
};

struct oai_resp_opts {
    const char *id;          /* NULL: "chatcmpl-" / "cmpl-" and 24 random letters and digits */
    int64_t created;         /* 0: now (unix seconds) */
    const char *fingerprint; /* NULL: no system_fingerprint key */
};

/* What every object of one response shares. */
struct oai_resp {
    enum oai_kind kind;
    char id[64];
    int64_t created;
    char *model;
    char *fingerprint;   /* NULL: omitted */
    bool include_usage;  /* streaming: "usage": null in every chunk, then a usage chunk */
    bool logprobs;       /* logprobs objects (else "logprobs": null) */
    int64_t text_offset; /* completions logprobs: characters sent so far (echo: set it) */
};

/* kind, include_usage and logprobs come from rq; model is the name to
 * report (NULL: rq->model, or "moed" when the request had none); o may be
 * NULL.  MOED_ENOMEM or 0. */
int oai_resp_init(struct oai_resp *r, const struct oai_request *rq, const char *model,
                  const struct oai_resp_opts *o);
void oai_resp_free(struct oai_resp *r);

/*
 * Builders.  Each returns 0 and a malloc'd NUL-terminated JSON text in *out
 * (free()), or MOED_ENOMEM; *out NULL with 0 means nothing to send.
 *
 * Non-streaming: oai_resp_body, the whole "text_completion" or
 * "chat.completion" object with the text, finish_reason, usage and (when
 * r->logprobs) the n_lp tokens' logprobs.
 *
 * Streaming ("text_completion" / "chat.completion.chunk" objects, one per
 * SSE event):
 *   oai_chunk_begin   chat: delta {"role": "assistant", "content": ""};
 *                     completions: nothing (*out NULL)
 *   oai_chunk_text    text (and the logprobs of the tokens it completes);
 *                     len 0 with no logprobs: nothing (*out NULL)
 *   oai_chunk_finish  chat: empty delta; completions: text ""; with finish_reason
 *   oai_chunk_usage   "choices": [] and usage, when include_usage (else *out NULL)
 * With include_usage every chunk but the last carries "usage": null, as
 * OpenAI sends it.
 */
int oai_resp_body(const struct oai_resp *r, const char *text, size_t len, enum oai_finish fin,
                  const struct oai_usage *u, const struct oai_logprob *lp, size_t n_lp, char **out);
int oai_chunk_begin(const struct oai_resp *r, char **out);
int oai_chunk_text(struct oai_resp *r, const char *text, size_t len, const struct oai_logprob *lp,
                   size_t n_lp, char **out);
int oai_chunk_finish(const struct oai_resp *r, enum oai_finish fin, char **out);
int oai_chunk_usage(const struct oai_resp *r, const struct oai_usage *u, char **out);

/* ---- text out: stop strings and whole characters ----------------------------- */

/*
 * Feed the detokenized pieces in order; get back the text that is safe to
 * send.  Two stages:
 *   - UTF-8: a character split across pieces is held until complete; bytes
 *     that cannot be part of a valid character become U+FFFD, one per
 *     maximal invalid subpart (as tok_stream does), so output is always
 *     valid UTF-8 and never ends inside a character;
 *   - stops: the longest tail that could be the start of a stop string is
 *     held (KMP automaton per stop string, O(1) amortized per byte).  The
 *     first stop string to complete ends the text: what precedes it is
 *     emitted, the stop string and everything after it never is.  "First"
 *     means the earliest end (for ties: the longest), so the result depends
 *     only on the text, never on how it was cut into pieces.
 */
struct oai_stop {
    int n_stop;
    char *stop[OAI_MAX_STOP];
    size_t stop_len[OAI_MAX_STOP];
    size_t *fail[OAI_MAX_STOP]; /* KMP failure function of each stop */
    size_t state[OAI_MAX_STOP]; /* matched prefix length of each stop */
    char *buf;                  /* pending text; [0, n_emit) was returned last call */
    size_t n_buf, cap, n_emit;
    unsigned char u8[4]; /* an incomplete character */
    size_t n_u8;
    int matched; /* index of the stop string that matched, or -1 */
};

/* stops: n (0..OAI_MAX_STOP) non-empty strings of lens[i] bytes (lens NULL:
 * strlen), copied.  EINVAL for an empty one or n out of range, ENOMEM. */
int oai_stop_init(struct oai_stop *m, const char *const *stops, const size_t *lens, int n);
/* The same with the request's stop strings. */
int oai_stop_init_request(struct oai_stop *m, const struct oai_request *rq);
void oai_stop_free(struct oai_stop *m);

/* Feed one piece.  *emit / *n_emit: the text to send now (possibly none),
 * valid until the next call.  Returns 1 once a stop string has matched
 * (this call's emit is the text before it; later calls emit nothing and
 * return 1 again), 0 otherwise, MOED_ENOMEM. */
int oai_stop_push(struct oai_stop *m, const char *piece, size_t len, const char **emit,
                  size_t *n_emit);
/* End of generation: everything still held (an incomplete character as
 * U+FFFD), nothing after a match.  Returns as oai_stop_push. */
int oai_stop_flush(struct oai_stop *m, const char **emit, size_t *n_emit);


#ifdef __cplusplus
}
#endif

#endif
