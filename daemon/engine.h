/*
 * daemon/engine.h: the engine thread.  It owns the model, the tokenizer,
 * the chat template, the CPU worker pool, the forward pass and every
 * sequence's KV cache and sampler, and runs continuous batching over the
 * requests handed to it.
 *
 * Threads.  engine_start spawns the engine thread, which loads the model
 * (state LOADING -> READY or FAILED; opts.on_state is told on the engine
 * thread) and then loops: admit queued requests, build one batch, run one
 * forward step, sample, emit.  The other functions may be called from any
 * thread (the daemon calls them from the libuv loop thread); they take the
 * engine's mutex for a few hundred nanoseconds and never wait for a step.
 * The engine never touches an object of the loop thread: what it produces
 * goes to the request's struct engine_sink callbacks, which run on the
 * engine thread and forward it (api_post_* in api/routes.c).
 *
 * Batching, per step (one fwd_step):
 *   - every running sequence that is decoding contributes its last sampled
 *     token (one token, logits wanted);
 *   - sequences still in their prompt share at most prefill_chunk prompt
 *     tokens, oldest admission first, so a long prompt is prefilled over
 *     several steps while the others keep decoding (logits only for a
 *     prompt's last token);
 *   - a step therefore holds at most max_seqs + prefill_chunk tokens.
 * Admission happens between steps, in arrival order: the queue's head joins
 * the batch when fewer than max_seqs sequences run and its KV cache fits the
 * pool (the head waits rather than letting later, smaller requests pass it).
 * A sequence's KV cache is allocated at admission for n_prompt + max_new
 * positions and counted against the pool: kv_budget bytes, or max_seqs *
 * ctx_size positions when kv_budget is 0; it is freed when the sequence ends.
 *
 * Backend.  With opts.gpu the engine runs the forward pass on
 * opts.gpu_device (model/fwd_gpu.h): dense weights, activations and the KV
 * caches (F16) in device memory, the pool capped to what the device has
 * free.  The routed experts go all on the GPU or hybrid (sched/hybrid.h):
 *   room   = device memory free at load - the dense weights - an estimate of
 *            the forward pass's workspace - the KV pool the engine wants
 *            (kv_budget or max_seqs * ctx_size positions, F16) - 512 MiB;
 *   budget = expert_budget_frac * room, or min(expert_budget_bytes, room);
 *   all on the GPU when that budget gives every expert a slot
 *   (hybrid_slots_for), else hybrid with that many bytes of slots (at least
 *   HYBRID_MIN_SLOTS x n_expert_used slots), cache_policy, the CPU experts
 *   on the engine's pool, the cost model of opts.cost_model.
 * When that fails for any reason (a build without CUDA, no such device, the
 * dense weights or one sequence's KV cache do not fit, a weight type without
 * a GPU kernel) it logs one warning saying why and runs on the CPU (KV
 * caches F32 in host memory).  The choice is made once, at load:
 * engine_info says which; engine_hybrid_stats gives the hybrid executor's
 * counters as of the last step.
 *
 * A request ends (sink->finish, its last callback) when it samples an
 * end-of-generation token or its text completes a stop string ("stop"),
 * when it has max_new tokens ("length"), when it is cancelled (the client
 * went away: engine_cancel; freed before the next step), at its deadline
 * (request_timeout), at engine_cancel_all (shutdown) or engine_free, or on
 * an internal error.  With nothing to do the thread sleeps on a condition
 * variable.
 *
 * Errors follow common/err.h.
 */
#ifndef MOED_DAEMON_ENGINE_H
#define MOED_DAEMON_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "api/http.h"
#include "api/openai.h"
#include "cache/cache.h"
#include "common/err.h"
#include "model/forward.h"
#include "model/sample.h"
#include "sched/hybrid.h"

struct engine;
struct model;
struct tok;
struct chat_template;

enum engine_state {
    ENGINE_LOADING,
    ENGINE_READY,
    ENGINE_FAILED, /* engine_error() says why; the thread waits for engine_free */
};

struct engine_opts {
    const char *model_path;
    int32_t ctx_size;      /* positions per sequence; 0: the model's (4096 if unknown) */
    int32_t max_seqs;      /* sequences in the batch at most (>= 1) */
    int32_t max_queued;    /* requests waiting for a place at most (>= 0) */
    int32_t prefill_chunk; /* prompt tokens per step at most (>= 1) */
    uint64_t kv_budget;    /* bytes for all KV caches; 0: max_seqs * ctx_size positions */
    int threads;           /* CPU threads; 0: one per physical core */
    bool gpu;              /* try the GPU forward pass on gpu_device (else the CPU) */
    int gpu_device;        /* CUDA device index */
    /* GPU memory for expert slots (see Backend above): expert_budget_frac > 0:
     * that fraction of the room; else expert_budget_bytes (both 0: the
     * minimum of slots, the experts mostly on the CPU) */
    double expert_budget_frac;
    uint64_t expert_budget_bytes;
    enum cache_policy cache_policy; /* hybrid: not CACHE_BELADY */
    /* the planner's cost model: a `moed calibrate -o` file, loaded by
     * engine_start (an error naming its line fails it); NULL or "": the
     * built-in sched_cost_default() */
    const char *cost_model;
    const char *chat_template;  /* a built-in format's name, or NULL/"": the model's */
    int64_t request_timeout_ms; /* from arrival to the last token; 0: none */
    int64_t keepalive_ms;       /* engine_req.keepalive period; 0: never */
    /* Optional, called on the engine thread: the state changed (READY or
     * FAILED); a log line (levels as api_log_fn: 0 error .. 3 debug). */
    void (*on_state)(void *ud, enum engine_state st);
    void (*log)(void *ud, int level, const char *msg);
    void *ud;
};

/* Why a request ended. */
enum engine_finish {
    ENGINE_FIN_STOP,      /* end-of-generation token or stop string: "stop" */
    ENGINE_FIN_LENGTH,    /* max_new tokens: "length" */
    ENGINE_FIN_CANCELLED, /* engine_cancel: the client is gone */
    ENGINE_FIN_TIMEOUT,   /* request_timeout passed (queued or running) */
    ENGINE_FIN_SHUTDOWN,  /* engine_cancel_all or engine_free */
    ENGINE_FIN_ERROR,     /* the forward pass or an allocation failed */
    ENGINE_FIN_COUNT
};
const char *engine_finish_name(enum engine_finish f); /* "stop", "length", "cancelled" ... */

/*
 * What a request's owner is told, on the engine thread, in this order:
 * admitted once (when it got a sequence; not for a request that ends while
 * queued), text any number of times, finish exactly once (then ud is not
 * used again).  text: characters safe to show (whole UTF-8, never a stop
 * string or a prefix of one that may still complete), and the sampled
 * tokens it completes, in order (their top alternatives when the request
 * asked for logprobs); len may be 0 with tokens, tokens may be 0 with text.
 * Across all calls the tokens are every sampled token but a final
 * end-of-generation one.  finish: u counts the prompt and every sampled
 * token (an end-of-generation one included); msg is set for ERROR.
 */
struct engine_sink {
    void (*admitted)(void *ud);
    void (*text)(void *ud, const char *text, size_t len, const struct sample_result *toks,
                 size_t n_toks);
    void (*finish)(void *ud, enum engine_finish fin, const struct oai_usage *u, const char *msg);
};

struct engine_req {
    uint64_t id;                 /* for engine_cancel; unique among live requests (not 0) */
    const int32_t *prompt;       /* copied */
    int32_t n_prompt;            /* >= 1 */
    int32_t max_new;             /* >= 1; n_prompt + max_new <= ctx_size */
    struct sample_params sample; /* n_logprobs > 0 or logprobs: alternatives in text() */
    bool logprobs;
    const char *const *stop; /* n_stop strings (copied), lengths in stop_len (NULL: strlen) */
    const size_t *stop_len;
    int n_stop;
    double t_arrival; /* engine_now() when the request arrived; 0: now */
    const struct engine_sink *sink;
    void *ud;
    /* Optional, on the engine thread, with ud: between admitted and the
     * first sampled token (a long prefill), once every keepalive_ms
     * (engine_opts), checked between steps (one step longer than the
     * period delays it); never after the first token or finish. */
    void (*keepalive)(void *ud);
};

/* Spawn the engine thread, which loads o->model_path.  o's strings are
 * copied.  Fails only for bad options or when the thread cannot start. */
int engine_start(struct engine **out, const struct engine_opts *o, struct moed_err *e);
/* Stop the thread (unfinished requests get SHUTDOWN), join it, free all.
 * May be called in any state; NULL is a no-op. */
void engine_free(struct engine *eng);

enum engine_state engine_state(const struct engine *eng);
/* The load error once FAILED ("" otherwise). */
const char *engine_error(const struct engine *eng);

/* After READY, until engine_free: immutable, safe on any thread. */
const struct model *engine_model(const struct engine *eng);
const struct tok *engine_tok(const struct engine *eng);
const struct chat_template *engine_chat(const struct engine *eng);
struct engine_info {
    int32_t ctx_size, max_seqs, prefill_chunk, max_batch;
    int threads;
    int64_t kv_total_positions;
    uint64_t kv_bytes_per_position;
    bool kv_f16; /* KV caches store F16 (else F32) */
    double load_seconds;
    bool gpu;                        /* the forward pass runs on CUDA device gpu_device */
    int gpu_device;                  /* -1 on the CPU */
    char gpu_name[256];              /* the device's name ("" on the CPU) */
    char gpu_fallback[MOED_ERR_MSG]; /* opts.gpu was set but the CPU runs: why ("" otherwise) */
    /* the hybrid expert executor (gpu and hybrid; zeros otherwise) */
    bool hybrid;
    int32_t n_layer;            /* entries of engine_hybrid_stats' per_layer */
    int32_t hybrid_slots;       /* expert slots on the GPU */
    int64_t n_experts;          /* routed experts of the model, all layers */
    uint64_t hybrid_slot_bytes; /* the slot pool's bytes */
    enum cache_policy cache_policy;
    bool cost_calibrated; /* the cost model says calibrated = 1 */
    char cost_model[512]; /* its file ("": the built-in defaults) */
};
void engine_info(const struct engine *eng, struct engine_info *out);

/* Monotonic clock, seconds. */
double engine_now(void);

/*
 * Admission control, decided before a request's prompt is tokenized:
 * engine_reserve takes a place if running + queued + reserved < max_seqs +
 * max_queued (0), else MOED_ERANGE (queue full: 429); MOED_EIO when the
 * engine is not READY or is draining (503).  A reservation is given back
 * with engine_unreserve or consumed by engine_submit(..., reserved = true).
 */
int engine_reserve(struct engine *eng);
void engine_unreserve(struct engine *eng);

/*
 * Queue a request.  reserved: it holds a place from engine_reserve (always
 * consumed, success or not); else the same check is made here.  Returns 0
 * (the sink will be called), MOED_ERANGE (full), MOED_EIO (not ready or
 * draining) or MOED_EINVAL / MOED_ENOMEM with e saying why; on error the
 * sink is never called.
 */
int engine_submit(struct engine *eng, const struct engine_req *rq, bool reserved,
                  struct moed_err *e);

/* The request's client is gone: drop it before the next step (finish with
 * CANCELLED).  Unknown ids are ignored. */
void engine_cancel(struct engine *eng, uint64_t id);
/* Refuse new requests from now on: engine_reserve and unreserved submits
 * give MOED_EIO; a request that reserved its place before still goes in. */
void engine_drain(struct engine *eng);
/* End every queued and running request with SHUTDOWN before the next step. */
void engine_cancel_all(struct engine *eng);
/* Nothing queued, reserved or running. */
bool engine_idle(const struct engine *eng);
/* Seconds the current step has been running (0 when not in a step): the
 * watchdog's view of a hung engine. */
double engine_busy_seconds(const struct engine *eng);
/* Reloadable limits (SIGHUP). */
void engine_set_limits(struct engine *eng, int32_t max_queued, int64_t request_timeout_ms);
/* The keepalive period of sequences still in their prompt (SIGHUP); 0: off. */
void engine_set_keepalive(struct engine *eng, int64_t keepalive_ms);

/* Counters for /metrics and tests: a consistent copy. */
#define ENGINE_HIST_TTFT 0   /* arrival to first sampled token, seconds */
#define ENGINE_HIST_ITL 1    /* between two sampled tokens of a sequence */
#define ENGINE_HIST_QUEUE 2  /* arrival to admission */
#define ENGINE_HIST_E2E 3    /* arrival to finish */
#define ENGINE_HIST_PROMPT 4 /* prompt tokens per request */
#define ENGINE_HIST_GEN 5    /* sampled tokens per request */
#define ENGINE_HIST_STEP 6   /* tokens per step */
#define ENGINE_N_HIST 7
struct engine_stats {
    enum engine_state state;
    bool draining;
    int32_t running, queued, reserved, prefilling;
    int32_t max_seqs, max_queued;
    uint64_t prompt_tokens, generation_tokens; /* prefilled prompt tokens, sampled tokens */
    uint64_t steps, step_tokens;
    uint64_t requests_admitted;
    uint64_t finished[ENGINE_FIN_COUNT];
    int64_t kv_positions_total, kv_positions_reserved, kv_positions_used;
    uint64_t kv_bytes_per_position;
    struct api_hist hist[ENGINE_N_HIST];
    struct fwd_stats fwd;
};
void engine_stats_get(const struct engine *eng, struct engine_stats *out);
/* The hybrid executor's counters (hybrid_stats_get) as the engine thread
 * copied them after its last step; per_layer: engine_info's n_layer entries
 * or NULL.  False (out zeroed) when the engine is not READY or not hybrid. */
bool engine_hybrid_stats(const struct engine *eng, struct hybrid_stats *out,
                         struct hybrid_layer_stats *per_layer);
/* Steps run so far (cheap: an atomic read). */
uint64_t engine_steps(const struct engine *eng);

#endif
