/*
 * api/oai_req.c: OpenAI request bodies -> struct oai_request (see openai.h).
 *
 * The body is hostile input.  Before cJSON sees it, one pass refuses NUL
 * bytes and "\u0000" escapes (cJSON's strings are C strings: a NUL would
 * silently cut a prompt).  cJSON then parses it (nesting is capped at
 * CJSON_NESTING_LIMIT; NaN and Infinity are not JSON and fail there) and
 * must consume all of it.  One pass over the top-level keys indexes the
 * known fields (and refuses one given twice), so reading a field never
 * scans a body of a million keys again.  Every field is then read by a
 * helper that checks the JSON type, that a number is finite, that an
 * integer field holds an integer, and the range, all on the double before
 * any conversion, so a 1e300 never reaches a cast.  Strings are checked for valid UTF-8 (cJSON
 * does not).  Error messages follow OpenAI's wording and codes
 * ("Invalid type for 'temperature': expected a number, but got a string
 * instead.", code invalid_type) and always name the field in param.
 *
 * The request owns copies of everything it keeps, so the cJSON tree is
 * freed before returning.
 */
#include "api/openai.h"

#include <assert.h>
#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- helpers ----------------------------------------------------------------- */

static int oom(struct oai_error *e)
{
    oai_error_set(e, 500, NULL, NULL, "The server ran out of memory while reading the request.");
    return MOED_ENOMEM;
}

static const char *a_type(const cJSON *v)
{
    if (cJSON_IsString(v))
        return "a string";
    if (cJSON_IsNumber(v))
        return "a number";
    if (cJSON_IsBool(v))
        return "a boolean";
    if (cJSON_IsArray(v))
        return "an array";
    if (cJSON_IsObject(v))
        return "an object";
    if (cJSON_IsNull(v))
        return "null";
    return "something else";
}

static int bad_type(struct oai_error *e, const char *param, const char *want, const cJSON *v)
{
    return oai_error_set(e, 400, param, "invalid_type",
                         "Invalid type for '%s': expected %s, but got %s instead.", param, want,
                         a_type(v));
}

/* The shortest "%g" that reads back as d. */
static void fmt_num(char *buf, size_t n, double d)
{
    snprintf(buf, n, "%.15g", d);
    if (strtod(buf, NULL) != d)
        snprintf(buf, n, "%.17g", d);
}

/* A field path such as "messages[3].content[1].text"; indices are bounded
 * by the body size, and a path cut at OAI_ERR_PARAM is still a useful name. */
static void pfmt(char *p, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void pfmt(char *p, size_t n, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    if (vsnprintf(p, n, fmt, ap) < 0)
        p[0] = '\0';
    va_end(ap);
}

/* obj[key], with JSON null read as absent. */
static const cJSON *field(const cJSON *obj, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    return v && !cJSON_IsNull(v) ? v : NULL;
}

/* A number within [lo, hi] (an end excluded when its *_open is set). */
static int check_decimal(struct oai_error *e, const char *param, const cJSON *v, double lo,
                         bool lo_open, double hi, bool hi_open, double *out)
{
    if (!cJSON_IsNumber(v))
        return bad_type(e, param, "a number", v);
    double d = v->valuedouble;
    char got[40], a[40], b[40];
    if (!isfinite(d))
        return oai_error_set(e, 400, param,
                             d < 0 ? "decimal_below_min_value" : "decimal_above_max_value",
                             "Invalid '%s': the number is out of range.", param);
    bool below = lo_open ? !(d > lo) : !(d >= lo);
    bool above = hi_open ? !(d < hi) : !(d <= hi);
    if (below || above) {
        fmt_num(got, sizeof got, d);
        fmt_num(a, sizeof a, lo);
        fmt_num(b, sizeof b, hi);
        return oai_error_set(e, 400, param,
                             below ? "decimal_below_min_value" : "decimal_above_max_value",
                             "Invalid '%s': %s is not in %c%s, %s%c.", param, got,
                             lo_open ? '(' : '[', a, b, hi_open ? ')' : ']');
    }
    *out = d;
    return 0;
}

/* A whole number within [lo, hi], as a double: callers convert only after
 * this, so no out-of-range value ever reaches a cast. */
static int check_whole(struct oai_error *e, const char *param, const cJSON *v, double lo, double hi,
                       double *out)
{
    if (!cJSON_IsNumber(v))
        return bad_type(e, param, "an integer", v);
    double d = v->valuedouble;
    char got[40], lim[40];
    if (!isfinite(d))
        return oai_error_set(e, 400, param,
                             d < 0 ? "integer_below_min_value" : "integer_above_max_value",
                             "Invalid '%s': the number is out of range.", param);
    if (d != floor(d)) {
        fmt_num(got, sizeof got, d);
        return oai_error_set(e, 400, param, "invalid_type",
                             "Invalid type for '%s': expected an integer, but got %s instead.",
                             param, got);
    }
    if (d < lo || d > hi) {
        fmt_num(got, sizeof got, d);
        fmt_num(lim, sizeof lim, d < lo ? lo : hi);
        return oai_error_set(e, 400, param,
                             d < lo ? "integer_below_min_value" : "integer_above_max_value",
                             "Invalid '%s': %s is %s the %s of %s.", param, got,
                             d < lo ? "below" : "above", d < lo ? "minimum" : "maximum", lim);
    }
    *out = d;
    return 0;
}

/* An integer within [lo, hi] (both well inside int64). */
static int check_int(struct oai_error *e, const char *param, const cJSON *v, int64_t lo, int64_t hi,
                     int64_t *out)
{
    double d;
    int rc = check_whole(e, param, v, (double)lo, (double)hi, &d);
    if (!rc)
        *out = (int64_t)d;
    return rc;
}

static int check_bool(struct oai_error *e, const char *param, const cJSON *v, bool *out)
{
    if (!cJSON_IsBool(v))
        return bad_type(e, param, "a boolean", v);
    *out = cJSON_IsTrue(v);
    return 0;
}

/* A copy of a string value, checked for valid UTF-8.  NUL-free: the body
 * scan refused NUL bytes and \u0000. */
static int copy_string(struct oai_error *e, const char *param, const cJSON *v, char **out,
                       size_t *len)
{
    if (!cJSON_IsString(v) || !v->valuestring)
        return bad_type(e, param, "a string", v);
    size_t n = strlen(v->valuestring), bad;
    if (!utf8_valid(v->valuestring, n, &bad))
        return oai_error_set(e, 400, param, "invalid_value",
                             "Invalid '%s': the string is not valid UTF-8 (bad byte at offset "
                             "%zu).",
                             param, bad);
    *out = malloc(n + 1);
    if (!*out)
        return oom(e);
    memcpy(*out, v->valuestring, n + 1);
    if (len)
        *len = n;
    return 0;
}

/* ---- the body as a whole -------------------------------------------------------- */

/* NUL bytes, and NULs written as \u0000 inside strings. */
static int scan_nul(struct oai_error *e, const char *b, size_t n)
{
    bool in_str = false;
    for (size_t i = 0; i < n; i++) {
        char ch = b[i];
        if (ch == '\0')
            return oai_error_set(e, 400, NULL, NULL,
                                 "The request body contains a NUL byte (at byte %zu).", i);
        if (!in_str) {
            in_str = ch == '"';
        } else if (ch == '"') {
            in_str = false;
        } else if (ch == '\\' && i + 1 < n) {
            if (b[i + 1] == 'u' && n - i >= 6 && memcmp(b + i + 2, "0000", 4) == 0)
                return oai_error_set(e, 400, NULL, NULL,
                                     "Strings must not contain U+0000 (\\u0000 at byte %zu).", i);
            i++; /* the escaped character */
        }
    }
    return 0;
}

/* Every field this parser knows; one given twice is refused (cJSON would keep
 * the first, a proxy in front of us might read the last). */
static const char *const known_keys[] = {
    "model",
    "prompt",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "stop",
    "stream",
    "stream_options",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "seed",
    "logprobs",
    "top_logprobs",
    "n",
    "best_of",
    "echo",
    "suffix",
    "logit_bias",
    "tools",
    "functions",
    "response_format",
    "chat_template_kwargs",
};
#define N_KNOWN (sizeof known_keys / sizeof known_keys[0])

struct pctx {
    struct oai_request *rq;
    struct oai_error *e;
    const struct oai_parse_opts *opts;
    const cJSON *top[N_KNOWN]; /* the body's known fields */
};

/* One pass over the body's keys: each known field's item into c->top (a
 * lookup is then a scan of this short table, not of the body, whatever its
 * size), and a known field given twice refused. */
static int index_fields(struct pctx *c, const cJSON *root)
{
    for (const cJSON *it = root->child; it; it = it->next) {
        if (!it->string)
            continue;
        for (size_t k = 0; k < N_KNOWN; k++) {
            if (strcmp(it->string, known_keys[k]) != 0)
                continue;
            if (c->top[k])
                return oai_error_set(c->e, 400, known_keys[k], "invalid_value",
                                     "Invalid request: '%s' is given more than once.",
                                     known_keys[k]);
            c->top[k] = it;
            break;
        }
    }
    return 0;
}

/* The body's field key (one of known_keys), with JSON null read as absent. */
static const cJSON *get(const struct pctx *c, const char *key)
{
    for (size_t k = 0; k < N_KNOWN; k++)
        if (strcmp(key, known_keys[k]) == 0)
            return c->top[k] && !cJSON_IsNull(c->top[k]) ? c->top[k] : NULL;
    assert(!"get: not a known key");
    return NULL;
}

/* ---- fields ---------------------------------------------------------------------- */

static int parse_model(struct pctx *c)
{
    const cJSON *v = get(c, "model");
    if (!v)
        return 0;
    int rc = copy_string(c->e, "model", v, &c->rq->model, NULL);
    if (rc)
        return rc;
    const char *want = c->opts ? c->opts->model : NULL;
    if (want && strcmp(want, c->rq->model) != 0) {
        /* echo at most 100 bytes of the name, cut at a character boundary */
        size_t n = strlen(c->rq->model);
        if (n > 100) {
            n = 100;
            while (n > 0 && ((unsigned char)c->rq->model[n] & 0xC0) == 0x80)
                n--;
        }
        return oai_error_set(c->e, 404, "model", "model_not_found",
                             "The model `%.*s%s` does not exist or you do not have access to it.",
                             (int)n, c->rq->model, n < strlen(c->rq->model) ? "..." : "");
    }
    return 0;
}

static int parse_ids(struct pctx *c, const cJSON *arr, const char *param)
{
    int n = cJSON_GetArraySize(arr);
    if (n <= 0)
        return oai_error_set(c->e, 400, param, "empty_array",
                             "Invalid '%s': empty array. Expected at least one token id.", param);
    int32_t *ids = malloc((size_t)n * sizeof *ids);
    if (!ids)
        return oom(c->e);
    c->rq->prompt_ids = ids;
    int64_t hi = c->opts && c->opts->n_vocab > 0 ? (int64_t)c->opts->n_vocab - 1 : INT32_MAX;
    int i = 0;
    for (const cJSON *it = arr->child; it; it = it->next, i++) {
        char p[OAI_ERR_PARAM];
        int64_t id;
        pfmt(p, sizeof p, "%s[%d]", param, i);
        int rc = check_int(c->e, p, it, 0, hi, &id);
        if (rc)
            return rc;
        ids[i] = (int32_t)id;
    }
    c->rq->n_prompt_ids = (size_t)n;
    return 0;
}

static int parse_prompt(struct pctx *c)
{
    const cJSON *v = get(c, "prompt");
    struct oai_request *rq = c->rq;
    if (!v)
        return oai_error_set(c->e, 400, "prompt", "missing_required_parameter",
                             "Missing required parameter: 'prompt'.");
    if (cJSON_IsString(v))
        return copy_string(c->e, "prompt", v, &rq->prompt, &rq->prompt_len);
    if (!cJSON_IsArray(v))
        return bad_type(c->e, "prompt", "a string or an array", v);
    int n = cJSON_GetArraySize(v);
    if (n == 0)
        return oai_error_set(c->e, 400, "prompt", "empty_array",
                             "Invalid 'prompt': empty array. Expected a string, an array of token "
                             "ids, or an array of one of these.");
    const cJSON *first = v->child;
    if (cJSON_IsNumber(first))
        return parse_ids(c, v, "prompt");
    if (!cJSON_IsString(first) && !cJSON_IsArray(first))
        return bad_type(c->e, "prompt[0]", "a string, a token id or an array of token ids", first);
    if (n > 1)
        return oai_error_set(c->e, 400, "prompt", "unsupported_value",
                             "Batched prompts are not supported: 'prompt' holds %d prompts; send "
                             "one request per prompt.",
                             n);
    if (cJSON_IsString(first))
        return copy_string(c->e, "prompt[0]", first, &rq->prompt, &rq->prompt_len);
    return parse_ids(c, first, "prompt[0]");
}

static const char *const media_types[] = {"image_url", "input_image", "image",      "input_audio",
                                          "audio",     "file",        "input_file", "video_url"};

/* content: a string, or an array of {"type": "text", "text": s} parts joined
 * with "\n" (as vLLM joins them). */
static int parse_content(struct pctx *c, const cJSON *v, const char *param, struct oai_message *m)
{
    if (cJSON_IsString(v))
        return copy_string(c->e, param, v, &m->content, &m->len);
    if (!cJSON_IsArray(v))
        return bad_type(c->e, param, "a string or an array of content parts", v);
    if (!v->child)
        return oai_error_set(c->e, 400, param, "empty_array",
                             "Invalid '%s': empty array. Expected at least one content part.",
                             param);
    size_t total = 0;
    int j = 0;
    char p[OAI_ERR_PARAM];
    for (const cJSON *it = v->child; it; it = it->next, j++) {
        pfmt(p, sizeof p, "%s[%d]", param, j);
        if (!cJSON_IsObject(it))
            return bad_type(c->e, p, "an object", it);
        const cJSON *type = field(it, "type");
        pfmt(p, sizeof p, "%s[%d].type", param, j);
        if (!type)
            return oai_error_set(c->e, 400, p, "missing_required_parameter",
                                 "Missing required parameter: '%s'.", p);
        if (!cJSON_IsString(type))
            return bad_type(c->e, p, "a string", type);
        if (strcmp(type->valuestring, "text") != 0) {
            for (size_t k = 0; k < sizeof media_types / sizeof media_types[0]; k++)
                if (strcmp(type->valuestring, media_types[k]) == 0)
                    return oai_error_set(c->e, 400, p, "unsupported_value",
                                         "Content parts of type '%s' are not supported: this "
                                         "model reads text only.",
                                         media_types[k]);
            return oai_error_set(c->e, 400, p, "invalid_value",
                                 "Invalid value for '%s': expected 'text'.", p);
        }
        const cJSON *text = field(it, "text");
        pfmt(p, sizeof p, "%s[%d].text", param, j);
        if (!text)
            return oai_error_set(c->e, 400, p, "missing_required_parameter",
                                 "Missing required parameter: '%s'.", p);
        if (!cJSON_IsString(text))
            return bad_type(c->e, p, "a string", text);
        size_t n = strlen(text->valuestring), bad;
        if (!utf8_valid(text->valuestring, n, &bad))
            return oai_error_set(c->e, 400, p, "invalid_value",
                                 "Invalid '%s': the string is not valid UTF-8 (bad byte at "
                                 "offset %zu).",
                                 p, bad);
        total += n + (j > 0); /* bounded by the body's size: no overflow */
    }
    char *s = malloc(total + 1), *w = s;
    if (!s)
        return oom(c->e);
    j = 0;
    for (const cJSON *it = v->child; it; it = it->next, j++) {
        const char *t = field(it, "text")->valuestring;
        size_t n = strlen(t);
        if (j > 0)
            *w++ = '\n';
        memcpy(w, t, n);
        w += n;
    }
    *w = '\0';
    m->content = s;
    m->len = total;
    return 0;
}

static int parse_message(struct pctx *c, const cJSON *it, int i, struct oai_message *m)
{
    char p[OAI_ERR_PARAM];
    pfmt(p, sizeof p, "messages[%d]", i);
    if (!cJSON_IsObject(it))
        return bad_type(c->e, p, "an object", it);
    const cJSON *role = field(it, "role");
    pfmt(p, sizeof p, "messages[%d].role", i);
    if (!role)
        return oai_error_set(c->e, 400, p, "missing_required_parameter",
                             "Missing required parameter: '%s'.", p);
    if (!cJSON_IsString(role))
        return bad_type(c->e, p, "a string", role);
    static const struct {
        const char *name;
        enum oai_role role;
    } roles[] = {{"system", OAI_ROLE_SYSTEM},
                 {"developer", OAI_ROLE_SYSTEM},
                 {"user", OAI_ROLE_USER},
                 {"assistant", OAI_ROLE_ASSISTANT},
                 {"tool", OAI_ROLE_TOOL}};
    size_t k = 0;
    while (k < sizeof roles / sizeof roles[0] && strcmp(role->valuestring, roles[k].name) != 0)
        k++;
    if (k == sizeof roles / sizeof roles[0])
        return oai_error_set(c->e, 400, p, "invalid_value",
                             "Invalid value for '%s': expected one of 'system', 'developer', "
                             "'user', 'assistant', 'tool'.",
                             p);
    m->role = roles[k].role;

    const cJSON *calls = field(it, "tool_calls");
    if (calls && (!cJSON_IsArray(calls) || calls->child)) {
        pfmt(p, sizeof p, "messages[%d].tool_calls", i);
        return oai_error_set(c->e, 400, p, "unsupported_parameter",
                             "Tool calls are not supported.");
    }
    const cJSON *content = field(it, "content");
    pfmt(p, sizeof p, "messages[%d].content", i);
    if (!content) {
        if (m->role != OAI_ROLE_ASSISTANT)
            return oai_error_set(c->e, 400, p, "missing_required_parameter",
                                 "Missing required parameter: '%s'.", p);
        m->content = calloc(1, 1);
        return m->content ? 0 : oom(c->e);
    }
    return parse_content(c, content, p, m);
}

static int parse_messages(struct pctx *c)
{
    const cJSON *v = get(c, "messages");
    if (!v)
        return oai_error_set(c->e, 400, "messages", "missing_required_parameter",
                             "Missing required parameter: 'messages'.");
    if (!cJSON_IsArray(v))
        return bad_type(c->e, "messages", "an array", v);
    int n = cJSON_GetArraySize(v);
    if (n <= 0)
        return oai_error_set(c->e, 400, "messages", "empty_array",
                             "Invalid 'messages': empty array. Expected an array with minimum "
                             "length 1, but got an empty array instead.");
    c->rq->messages = calloc((size_t)n, sizeof *c->rq->messages);
    if (!c->rq->messages)
        return oom(c->e);
    int i = 0;
    for (const cJSON *it = v->child; it; it = it->next, i++) {
        c->rq->n_messages = (size_t)i + 1; /* so that free sees a partial message */
        int rc = parse_message(c, it, i, &c->rq->messages[i]);
        if (rc)
            return rc;
    }
    return 0;
}

static int stop_too_long(struct pctx *c, const char *param, const cJSON *v)
{
    if (!cJSON_IsString(v) || strlen(v->valuestring) <= OAI_MAX_STOP_LEN)
        return 0;
    return oai_error_set(c->e, 400, param, "string_above_max_length",
                         "Invalid '%s': string too long. Expected a string with maximum length "
                         "%d bytes, but got a string with length %zu instead.",
                         param, OAI_MAX_STOP_LEN, strlen(v->valuestring));
}

static int parse_stop(struct pctx *c)
{
    const cJSON *v = get(c, "stop");
    struct oai_request *rq = c->rq;
    if (!v)
        return 0;
    if (cJSON_IsString(v)) {
        if (!v->valuestring[0])
            return oai_error_set(c->e, 400, "stop", "invalid_value",
                                 "Invalid 'stop': empty string. Stop strings must not be empty.");
        int rc = stop_too_long(c, "stop", v);
        if (rc)
            return rc;
        rq->n_stop = 1;
        return copy_string(c->e, "stop", v, &rq->stop[0], &rq->stop_len[0]);
    }
    if (!cJSON_IsArray(v))
        return bad_type(c->e, "stop", "a string or an array of strings", v);
    int n = cJSON_GetArraySize(v);
    if (n > OAI_MAX_STOP)
        return oai_error_set(c->e, 400, "stop", "array_above_max_length",
                             "Invalid 'stop': array too long. Expected an array with maximum "
                             "length %d, but got an array with length %d instead.",
                             OAI_MAX_STOP, n);
    int i = 0;
    for (const cJSON *it = v->child; it; it = it->next, i++) {
        char p[OAI_ERR_PARAM];
        pfmt(p, sizeof p, "stop[%d]", i);
        if (cJSON_IsString(it) && !it->valuestring[0])
            return oai_error_set(c->e, 400, p, "invalid_value",
                                 "Invalid '%s': empty string. Stop strings must not be empty.", p);
        int rc = stop_too_long(c, p, it);
        if (rc || (rc = copy_string(c->e, p, it, &rq->stop[i], &rq->stop_len[i])))
            return rc;
        rq->n_stop = i + 1;
    }
    return 0;
}

static int parse_stream(struct pctx *c)
{
    const cJSON *v = get(c, "stream");
    int rc;
    if (v && (rc = check_bool(c->e, "stream", v, &c->rq->stream)))
        return rc;
    const cJSON *so = get(c, "stream_options");
    if (!so)
        return 0;
    if (!cJSON_IsObject(so))
        return bad_type(c->e, "stream_options", "an object", so);
    if (!c->rq->stream)
        return oai_error_set(c->e, 400, "stream_options", "invalid_value",
                             "The 'stream_options' parameter is only allowed when 'stream' is "
                             "enabled.");
    v = field(so, "include_usage");
    if (v && (rc = check_bool(c->e, "stream_options.include_usage", v, &c->rq->include_usage)))
        return rc;
    return 0;
}

/* chat_template_kwargs: {"enable_thinking": bool}; other keys are the
 * template's business and ignored (moed's templates are built in). */
static int parse_template_kwargs(struct pctx *c)
{
    if (c->rq->kind != OAI_CHAT)
        return 0;
    const cJSON *kw = get(c, "chat_template_kwargs");
    if (!kw)
        return 0;
    if (!cJSON_IsObject(kw))
        return bad_type(c->e, "chat_template_kwargs", "an object", kw);
    const cJSON *v = field(kw, "enable_thinking");
    if (!v)
        return 0;
    bool on;
    int rc = check_bool(c->e, "chat_template_kwargs.enable_thinking", v, &on);
    if (rc)
        return rc;
    c->rq->enable_thinking = on ? 1 : 0;
    return 0;
}

/* A sampling field in [lo, hi] (ends excluded as *_open say) into *dst. */
static int sample_decimal(struct pctx *c, const char *key, double lo, bool lo_open, double hi,
                          bool hi_open, float *dst, unsigned bit)
{
    const cJSON *v = get(c, key);
    double d = 0;
    if (!v)
        return 0;
    int rc = check_decimal(c->e, key, v, lo, lo_open, hi, hi_open, &d);
    if (rc)
        return rc;
    *dst = (float)d;
    c->rq->set |= bit;
    return 0;
}

static int parse_sampling(struct pctx *c)
{
    struct sample_params *sp = &c->rq->sample;
    int rc;
    if ((rc = sample_decimal(c, "temperature", 0, false, 2, false, &sp->temperature,
                             OAI_SET_TEMPERATURE)) ||
        (rc = sample_decimal(c, "top_p", 0, true, 1, false, &sp->top_p, OAI_SET_TOP_P)) ||
        (rc = sample_decimal(c, "min_p", 0, false, 1, false, &sp->min_p, OAI_SET_MIN_P)) ||
        (rc = sample_decimal(c, "presence_penalty", -2, false, 2, false, &sp->presence_penalty,
                             OAI_SET_PRESENCE_PENALTY)) ||
        (rc = sample_decimal(c, "frequency_penalty", -2, false, 2, false, &sp->frequency_penalty,
                             OAI_SET_FREQUENCY_PENALTY)) ||
        (rc = sample_decimal(c, "repetition_penalty", 0, true, 10, false, &sp->repeat_penalty,
                             OAI_SET_REPEAT_PENALTY)))
        return rc;

    const cJSON *v;
    int64_t i64;
    if ((v = get(c, "top_k"))) {
        /* -1 means off, as vLLM clients send it */
        if ((rc = check_int(c->e, "top_k", v, -1, INT32_MAX, &i64)))
            return rc;
        sp->top_k = i64 < 0 ? 0 : (int32_t)i64;
        c->rq->set |= OAI_SET_TOP_K;
    }
    if ((v = get(c, "seed"))) {
        /* Any int64, or uint64, into uint64 (two's complement).  JSON numbers
         * are doubles here: beyond 2^53 neighbouring seeds may collide. */
        double d;
        if ((rc = check_whole(c->e, "seed", v, -INFINITY, INFINITY, &d)))
            return rc;
        if (d < -9223372036854775808.0 || d >= 18446744073709551616.0) {
            char got[40];
            fmt_num(got, sizeof got, d);
            return oai_error_set(c->e, 400, "seed",
                                 d < 0 ? "integer_below_min_value" : "integer_above_max_value",
                                 "Invalid 'seed': %s is out of range; a seed is a 64-bit "
                                 "integer.",
                                 got);
        }
        sp->seed = d >= 9223372036854775808.0 ? (uint64_t)d : (uint64_t)(int64_t)d;
        c->rq->set |= OAI_SET_SEED;
    }
    return 0;
}

static int parse_counts(struct pctx *c)
{
    struct oai_request *rq = c->rq;
    const cJSON *v;
    int64_t i64;
    int rc;
    /* max_completion_tokens replaced max_tokens in chat; either is read, the
     * newer wins; both are checked. */
    if ((v = get(c, "max_tokens"))) {
        if ((rc = check_int(c->e, "max_tokens", v, 1, INT32_MAX, &i64)))
            return rc;
        rq->max_tokens = (int32_t)i64;
    }
    if ((v = get(c, "max_completion_tokens"))) {
        if ((rc = check_int(c->e, "max_completion_tokens", v, 1, INT32_MAX, &i64)))
            return rc;
        rq->max_tokens = (int32_t)i64;
    }
    static const char *const ones[] = {"n", "best_of"};
    for (size_t k = 0; k < 2; k++) {
        if (!(v = get(c, ones[k])))
            continue;
        double d;
        if ((rc = check_whole(c->e, ones[k], v, 1, INFINITY, &d)))
            return rc;
        if (d > 1)
            return oai_error_set(c->e, 400, ones[k], "unsupported_value",
                                 "%s > 1 is not supported: ask for one choice per request.",
                                 ones[k]);
    }
    return 0;
}

static int parse_logprobs(struct pctx *c)
{
    struct oai_request *rq = c->rq;
    const cJSON *v = get(c, "logprobs");
    int64_t i64;
    int rc;
    if (rq->kind == OAI_COMPLETION) {
        if (!v)
            return 0;
        if ((rc = check_int(c->e, "logprobs", v, 0, SAMPLE_MAX_LOGPROBS, &i64)))
            return rc;
        rq->logprobs = true;
        rq->sample.n_logprobs = (int32_t)i64;
        return 0;
    }
    if (v && (rc = check_bool(c->e, "logprobs", v, &rq->logprobs)))
        return rc;
    const cJSON *top = get(c, "top_logprobs");
    if (!top)
        return 0;
    if ((rc = check_int(c->e, "top_logprobs", top, 0, SAMPLE_MAX_LOGPROBS, &i64)))
        return rc;
    if (i64 > 0 && !rq->logprobs)
        return oai_error_set(c->e, 400, "top_logprobs", "invalid_value",
                             "Invalid 'top_logprobs': 'logprobs' must be set to true when "
                             "'top_logprobs' is used.");
    rq->sample.n_logprobs = (int32_t)i64;
    return 0;
}

/* Fields OpenAI has and moed does not implement: refused rather than
 * ignored when they would change the answer. */
static int parse_unsupported(struct pctx *c)
{
    const cJSON *v;
    int rc;
    if (c->rq->kind == OAI_COMPLETION) {
        if ((v = get(c, "echo"))) {
            if ((rc = check_bool(c->e, "echo", v, &c->rq->echo)))
                return rc;
            if (c->rq->echo && !(c->opts && c->opts->allow_echo))
                return oai_error_set(c->e, 400, "echo", "unsupported_value",
                                     "echo is not supported.");
            if (c->rq->echo && c->rq->logprobs)
                return oai_error_set(c->e, 400, "echo", "unsupported_value",
                                     "echo together with logprobs is not supported.");
        }
        if ((v = get(c, "suffix"))) {
            if (!cJSON_IsString(v))
                return bad_type(c->e, "suffix", "a string", v);
            if (v->valuestring[0])
                return oai_error_set(c->e, 400, "suffix", "unsupported_parameter",
                                     "suffix is not supported.");
        }
    }
    if ((v = get(c, "logit_bias"))) {
        if (!cJSON_IsObject(v))
            return bad_type(c->e, "logit_bias", "an object", v);
        if (v->child)
            return oai_error_set(c->e, 400, "logit_bias", "unsupported_parameter",
                                 "logit_bias is not supported.");
    }
    static const char *const tool_keys[] = {"tools", "functions"};
    for (size_t k = 0; k < 2; k++) {
        if (!(v = get(c, tool_keys[k])))
            continue;
        if (!cJSON_IsArray(v))
            return bad_type(c->e, tool_keys[k], "an array", v);
        if (v->child)
            return oai_error_set(c->e, 400, tool_keys[k], "unsupported_parameter",
                                 "Tool calling ('%s') is not supported.", tool_keys[k]);
    }
    if ((v = get(c, "response_format"))) {
        if (!cJSON_IsObject(v))
            return bad_type(c->e, "response_format", "an object", v);
        const cJSON *t = field(v, "type");
        if (t && !cJSON_IsString(t))
            return bad_type(c->e, "response_format.type", "a string", t);
        if (t && strcmp(t->valuestring, "text") != 0)
            return oai_error_set(c->e, 400, "response_format.type", "unsupported_value",
                                 "response_format of a type other than 'text' is not "
                                 "supported.");
    }
    return 0;
}

/* ---- entry points ---------------------------------------------------------------- */

const char *oai_role_name(enum oai_role role)
{
    switch (role) {
    case OAI_ROLE_SYSTEM: return "system";
    case OAI_ROLE_USER: return "user";
    case OAI_ROLE_ASSISTANT: return "assistant";
    case OAI_ROLE_TOOL: return "tool";
    }
    return "user";
}

void oai_request_free(struct oai_request *rq)
{
    if (!rq)
        return;
    free(rq->model);
    free(rq->prompt);
    free(rq->prompt_ids);
    for (size_t i = 0; i < rq->n_messages; i++)
        free(rq->messages[i].content);
    free(rq->messages);
    for (int i = 0; i < OAI_MAX_STOP; i++)
        free(rq->stop[i]);
    memset(rq, 0, sizeof *rq);
}

static int parse_root(struct pctx *c, const cJSON *root)
{
    int rc;
    if ((rc = index_fields(c, root)) || (rc = parse_model(c)))
        return rc;
    if (c->rq->kind == OAI_COMPLETION)
        rc = parse_prompt(c);
    else
        rc = parse_messages(c);
    if (rc || (rc = parse_counts(c)) || (rc = parse_sampling(c)) || (rc = parse_stop(c)) ||
        (rc = parse_stream(c)) || (rc = parse_logprobs(c)) || (rc = parse_template_kwargs(c)) ||
        (rc = parse_unsupported(c)))
        return rc;
    struct moed_err me = {0};
    if (sample_params_check(&c->rq->sample, &me))
        return oai_error_set(c->e, 400, NULL, "invalid_value", "Invalid sampling parameters: %s",
                             me.msg);
    return 0;
}

int oai_request_parse(struct oai_request *rq, enum oai_kind kind, const char *body, size_t len,
                      const struct oai_parse_opts *opts, struct oai_error *err)
{
    struct oai_error scratch;
    struct pctx c = {.rq = rq, .e = err ? err : &scratch, .opts = opts};
    memset(rq, 0, sizeof *rq);
    rq->kind = kind;
    rq->enable_thinking = -1;
    if (opts && opts->defaults) {
        rq->sample = *opts->defaults;
    } else {
        rq->sample = sample_params_default();
        rq->sample.temperature = 1.0f; /* OpenAI's default */
    }
    if (!body)
        len = 0;
    if (len == 0)
        return oai_error_set(c.e, 400, NULL, NULL,
                             "The request body is empty; expected a JSON object.");
    int rc = scan_nul(c.e, body, len);
    if (rc)
        return rc;
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(body, len, &end, 0);
    if (!root) {
        size_t at = end && end >= body && end <= body + len ? (size_t)(end - body) : 0;
        return oai_error_set(c.e, 400, NULL, NULL,
                             "We could not parse the JSON body of your request: invalid JSON at "
                             "byte %zu (or nested deeper than %d levels).",
                             at, CJSON_NESTING_LIMIT);
    }
    while (end < body + len && (*end == ' ' || *end == '\t' || *end == '\n' || *end == '\r'))
        end++;
    if (end != body + len) {
        rc = oai_error_set(c.e, 400, NULL, NULL,
                           "We could not parse the JSON body of your request: unexpected data "
                           "after the JSON value at byte %zu.",
                           (size_t)(end - body));
    } else if (!cJSON_IsObject(root)) {
        rc = oai_error_set(c.e, 400, NULL, "invalid_type",
                           "The request body must be a JSON object, but it is %s.", a_type(root));
    } else {
        rc = parse_root(&c, root);
    }
    cJSON_Delete(root);
    if (rc) {
        oai_request_free(rq);
        rq->kind = kind;
    }
    return rc;
}

int oai_check_context(const struct oai_request *rq, int64_t n_prompt, int64_t n_ctx,
                      int32_t *max_new, struct oai_error *err)
{
    const char *what = rq->kind == OAI_CHAT ? "messages" : "prompt";
    if (n_prompt <= 0)
        return oai_error_set(err, 400, what, "invalid_value",
                             "Invalid '%s': the prompt is empty (0 tokens).", what);
    if (n_prompt >= n_ctx || (rq->max_tokens > 0 && n_prompt + rq->max_tokens > n_ctx)) {
        oai_error_context_length(err, n_prompt, rq->max_tokens, n_ctx);
        if (rq->kind == OAI_COMPLETION)
            snprintf(err->param, sizeof err->param, "prompt");
        return MOED_EINVAL;
    }
    int64_t left = n_ctx - n_prompt;
    *max_new = rq->max_tokens > 0 ? rq->max_tokens : (int32_t)(left > INT32_MAX ? INT32_MAX : left);
    return 0;
}
