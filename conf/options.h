/*
 * The table of every moed option: one row each, after Redis's config.c.
 *
 * Everything else about options is generated from these rows: the typed
 * fields of struct moed_config (conf.h), the parsers' range checks, the
 * environment variables and command-line flags, `moed config --help`, and
 * moed.conf.example (tests/unit/test_conf.c fails when the committed example
 * and the table differ: regenerate it with `bin/moed config --example >
 * moed.conf.example`).  To add an option, add a row here, then regenerate the
 * example; nothing else has to change for it to be parsed, checked, printed
 * and documented.
 *
 * Columns of CONF_OPTION(name, ENV, flag, short, TYPE, section, default,
 *                        min, max, choices, flags, metavar, help):
 *   name     moed.conf key (snake_case) and the struct moed_config field
 *   ENV      environment variable: MOED_ + the name in upper case
 *   flag     long command-line flag: "--" + the name with '-' for '_'
 *   short    one-letter flag or 0
 *   TYPE     BOOL, INT (int64_t), SIZE (bytes, uint64_t), FLOAT (double),
 *            STRING, PATH (char *, never NULL), ENUM (int: index into
 *            choices), DURATION (int64_t milliseconds), BUDGET (struct
 *            conf_budget: a fraction or bytes)
 *   section  CONF_SECTIONS name; groups options in help and the example
 *   default  text, parsed by the same parser as user input
 *   min, max bounds (inclusive) for INT, SIZE (bytes), FLOAT, DURATION (ms)
 *            and the byte form of BUDGET; ignored for the other types
 *   choices  for ENUM: a NULL-terminated name list (conf.c); else NULL
 *   flags    CONF_F_*, ORed
 *   metavar  the value's name in help, or NULL for the type's
 *   help     what the option does, what 0 or empty means, units
 */
#ifndef MOED_CONF_OPTIONS_H
#define MOED_CONF_OPTIONS_H

/* Option flags. */
#define CONF_F_RELOAD 0x01u   /* SIGHUP applies a new value without a restart */
#define CONF_F_NONEMPTY 0x02u /* an empty value is an error */
#define CONF_F_REQUIRED 0x04u /* must be set to serve (conf_check_files) */
#define CONF_F_READABLE 0x08u /* PATH: if set, a readable file (conf_check_files) */
#define CONF_F_WRITABLE 0x10u /* PATH: if set, its folder exists and is writable */
#define CONF_F_HOSTNAME 0x20u /* STRING: an IP literal or a DNS name */

/* Bounds in the units the parsers return. */
#define CONF_KIB 1024.0
#define CONF_MIB (1024.0 * 1024)
#define CONF_GIB (1024.0 * 1024 * 1024)
#define CONF_TIB (1024.0 * 1024 * 1024 * 1024)
#define CONF_SEC 1000.0
#define CONF_MINUTE 60000.0
#define CONF_HOUR 3600000.0

/* Sections, in the order help and the example list them. */
#define CONF_SECTIONS(S)                                                                           \
    S(server, "listening socket, authentication, metrics")                                         \
    S(limits, "connection and request limits, timeouts")                                           \
    S(model, "the model and how requests use it")                                                  \
    S(engine, "CPU threads, GPU and the expert cache")                                             \
    S(logging, "log level and destination")

/* clang-format off */
#define CONF_OPTIONS(X)                                                                            \
    /* ---- server ---- */                                                                         \
    X(host, MOED_HOST, "--host", 0, STRING, server, "127.0.0.1", 0, 0, NULL,                       \
      CONF_F_NONEMPTY | CONF_F_HOSTNAME, "ADDR",                                                   \
      "Address to listen on: an IPv4 or IPv6 literal or a host name. 0.0.0.0 or :: listens "      \
      "on every interface (set api_key_file first).")                                              \
    X(port, MOED_PORT, "--port", 0, INT, server, "8080", 1, 65535, NULL, 0, NULL,                  \
      "TCP port to listen on.")                                                                    \
    X(api_key_file, MOED_API_KEY_FILE, "--api-key-file", 0, PATH, server, "", 0, 0, NULL,          \
      CONF_F_RELOAD | CONF_F_READABLE, "FILE",                                                     \
      "File whose first line is the API key clients must send as `Authorization: Bearer KEY` "    \
      "(surrounding whitespace ignored). Empty: no authentication. Re-read on SIGHUP, so a key "   \
      "can be rotated without a restart. Keep the file readable by moed only.")                   \
    X(metrics, MOED_METRICS, "--metrics", 0, BOOL, server, "true", 0, 0, NULL, CONF_F_RELOAD,      \
      NULL, "Serve Prometheus metrics at GET /metrics (--no-metrics turns them off).")            \
    /* ---- limits ---- */                                                                         \
    X(max_connections, MOED_MAX_CONNECTIONS, "--max-connections", 0, INT, limits, "256", 1,        \
      100000, NULL, CONF_F_RELOAD, NULL,                                                           \
      "Client connections open at once at most; further connections are refused until one "       \
      "closes. The unit file's LimitNOFILE must be higher.")                                      \
    X(max_queued, MOED_MAX_QUEUED, "--max-queued", 0, INT, limits, "64", 0, 100000, NULL,          \
      CONF_F_RELOAD, NULL,                                                                         \
      "Requests waiting for a place in the batch at most; when the queue is full, new requests "  \
      "get 429 with Retry-After. 0: no queue, only max_seqs requests at a time.")                 \
    X(max_body_size, MOED_MAX_BODY_SIZE, "--max-body-size", 0, SIZE, limits, "4M", 1 * CONF_KIB,   \
      1 * CONF_GIB, NULL, CONF_F_RELOAD, NULL,                                                     \
      "Largest request body accepted; a larger one gets 413.")                                     \
    X(max_header_size, MOED_MAX_HEADER_SIZE, "--max-header-size", 0, SIZE, limits, "16K",          \
      1 * CONF_KIB, 1 * CONF_MIB, NULL, CONF_F_RELOAD, NULL,                                       \
      "Largest request head (request line and headers) accepted; a larger one gets 431.")         \
    X(header_timeout, MOED_HEADER_TIMEOUT, "--header-timeout", 0, DURATION, limits, "10s",         \
      100, 10 * CONF_MINUTE, NULL, CONF_F_RELOAD, NULL,                                            \
      "Time a client has to send a complete request head, counted from its first byte; guards "   \
      "against slow (slowloris) clients.")                                                         \
    X(idle_timeout, MOED_IDLE_TIMEOUT, "--idle-timeout", 0, DURATION, limits, "60s", 1 * CONF_SEC, \
      1 * CONF_HOUR, NULL, CONF_F_RELOAD, NULL,                                                    \
      "A keep-alive connection with no request in progress is closed after this long.")           \
    X(request_timeout, MOED_REQUEST_TIMEOUT, "--request-timeout", 0, DURATION, limits, "10m", 0,   \
      24 * CONF_HOUR, NULL, CONF_F_RELOAD, NULL,                                                   \
      "Longest a request may take from arrival to its last token, time in the queue included; "   \
      "then its sequence is cancelled. 0: no limit.")                                              \
    X(sse_keepalive, MOED_SSE_KEEPALIVE, "--sse-keepalive", 0, DURATION, limits, "5s", 0,          \
      10 * CONF_MINUTE, NULL, CONF_F_RELOAD, NULL,                                                 \
      "A streaming request whose first token has not come yet (a long prompt being prefilled) "   \
      "gets an SSE comment line `: keepalive` this often, so that proxies and clients do not "    \
      "time it out. 0: never.")                                                                    \
    X(drain_timeout, MOED_DRAIN_TIMEOUT, "--drain-timeout", 0, DURATION, limits, "30s", 0,         \
      10 * CONF_MINUTE, NULL, CONF_F_RELOAD, NULL,                                                 \
      "On SIGTERM moed stops accepting and lets requests in progress finish for this long, then " \
      "cancels the rest and exits. Keep it below the unit's TimeoutStopSec (90s).")               \
    /* ---- model ---- */                                                                          \
    X(model, MOED_MODEL, "--model", 'm', PATH, model, "", 0, 0, NULL,                              \
      CONF_F_REQUIRED | CONF_F_READABLE, "FILE",                                                   \
      "GGUF model file to serve (required). Relative paths in a config file are relative to "     \
      "the file's folder.")                                                                        \
    X(model_name, MOED_MODEL_NAME, "--model-name", 0, STRING, model, "", 0, 0, NULL, 0, "NAME",    \
      "Model id that GET /v1/models lists and responses carry. Empty: the model file's name "     \
      "without .gguf.")                                                                            \
    X(chat_template, MOED_CHAT_TEMPLATE, "--chat-template", 0, STRING, model, "", 0, 0, NULL, 0,   \
      "NAME",                                                                                      \
      "Built-in chat template to use instead of the model file's, by name (e.g. chatml, llama3, " \
      "mistral). Empty: recognise the model's own tokenizer.chat_template.")                      \
    X(ctx_size, MOED_CTX_SIZE, "--ctx-size", 0, INT, model, "4096", 0, 1048576, NULL, 0, "TOKENS", \
      "Context length of each sequence in tokens, prompt and output together; longer requests "   \
      "get 400 context_length_exceeded. 0: the length the model was trained for.")               \
    X(default_max_tokens, MOED_DEFAULT_MAX_TOKENS, "--default-max-tokens", 0, INT, model, "0", 0,  \
      1048576, NULL, CONF_F_RELOAD, "TOKENS",                                                      \
      "Tokens to generate for a request that gives no max_tokens. 0: until a stop or the end of " \
      "the context.")                                                                              \
    X(max_seqs, MOED_MAX_SEQS, "--max-seqs", 0, INT, model, "16", 1, 1024, NULL, 0, NULL,          \
      "Sequences decoded together in one batch at most (continuous batching); more requests "     \
      "wait in the queue.")                                                                        \
    X(prefill_chunk, MOED_PREFILL_CHUNK, "--prefill-chunk", 0, INT, model, "512", 16, 65536, NULL, \
      0, "TOKENS",                                                                                 \
      "Prompt tokens prefilled per step at most; longer prompts are prefilled in chunks so that " \
      "running sequences keep decoding meanwhile.")                                                \
    X(kv_budget, MOED_KV_BUDGET, "--kv-budget", 0, SIZE, model, "0", 0, 16 * CONF_TIB, NULL, 0,    \
      NULL,                                                                                        \
      "Memory for the KV cache of all sequences together; a request waits in the queue while it " \
      "is full. 0: enough for max_seqs sequences of ctx_size tokens.")                             \
    /* ---- engine ---- */                                                                         \
    X(threads, MOED_THREADS, "--threads", 't', INT, engine, "0", 0, 4096, NULL, 0, "N",            \
      "CPU worker threads for expert computation, each pinned to a core. 0: one per physical "    \
      "core.")                                                                                     \
    X(gpu_device, MOED_GPU_DEVICE, "--gpu-device", 0, INT, engine, "0", -1, 63, NULL, 0, "INDEX",  \
      "CUDA device to use, numbered as CUDA does (CUDA_VISIBLE_DEVICES applies). -1: the CPU "    \
      "only.")                                                                                     \
    X(expert_cache_budget, MOED_EXPERT_CACHE_BUDGET, "--expert-cache-budget", 0, BUDGET, engine,   \
      "0.8", 0, 16 * CONF_TIB, NULL, 0, NULL,                                                      \
      "GPU memory for cached experts: a fraction (0.8 or 80%) of the memory left free after the " \
      "dense weights and the KV cache, or a size (12G). 0: no expert cache.")                      \
    X(cache_policy, MOED_CACHE_POLICY, "--cache-policy", 0, ENUM, engine, "score", 0, 0,           \
      conf_cache_policy_names, 0, NULL,                                                            \
      "Which cached expert makes room for a new one: lru (least recently used), lfu (least "      \
      "frequently used) or score (lowest decayed routing score, as in HybriMoE).")                \
    X(cost_model, MOED_COST_MODEL, "--cost-model", 0, PATH, engine, "", 0, 0, NULL,                \
      CONF_F_READABLE, "FILE",                                                                     \
      "Cost model of the hybrid engine's planner: a file written on this machine by `moed "       \
      "calibrate --gpu N -o FILE`. Empty: built-in figures not measured here (the start-up log "  \
      "says so).")                                                                                 \
    /* ---- logging ---- */                                                                        \
    X(log_level, MOED_LOG_LEVEL, "--log-level", 0, ENUM, logging, "info", 0, 0,                    \
      conf_log_level_names, CONF_F_RELOAD, NULL,                                                   \
      "Least severe messages logged: error, warn, info or debug.")                                 \
    X(log_file, MOED_LOG_FILE, "--log-file", 0, PATH, logging, "", 0, 0, NULL,                     \
      CONF_F_RELOAD | CONF_F_WRITABLE, "FILE",                                                     \
      "File the log is appended to; reopened on SIGHUP (after logrotate). Empty: standard "       \
      "error, which systemd sends to the journal. Under the unit, use a path in "                 \
      "/var/log/moed/.")
/* clang-format on */

/* Names of ENUM options' values, in the order of the C enums in conf.h. */
#define CONF_CACHE_POLICIES(V)                                                                     \
    V(CONF_CACHE_LRU, "lru") V(CONF_CACHE_LFU, "lfu") V(CONF_CACHE_SCORE, "score")
#define CONF_LOG_LEVELS(V)                                                                         \
    V(CONF_LOG_ERROR, "error")                                                                     \
    V(CONF_LOG_WARN, "warn") V(CONF_LOG_INFO, "info") V(CONF_LOG_DEBUG, "debug")

#endif
