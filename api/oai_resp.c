/*
 * api/oai_resp.c: response objects in OpenAI's shape (see openai.h).
 *
 * Keys come in the order OpenAI sends them, so a test can compare bytes.
 * Texts are written as raw JSON strings by str_item() rather than by
 * cJSON_CreateString: the text handed to a builder is (pointer, length), not
 * a C string, and may hold a NUL (written \u0000) that cJSON would cut at.
 * Escaping matches cJSON's for everything else.  Bytes that are not valid
 * UTF-8 are written as U+FFFD so the JSON is always valid UTF-8.
 *
 * Log-probabilities are floats; each is printed with the fewest digits that
 * read back as the same float (-0.1f as -0.1, not -0.10000000149011612).
 */
#include "api/openai.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

/* ---- a growable string -------------------------------------------------------------- */

struct sbuf {
    char *p;
    size_t n, cap;
    bool oom;
};

static void sb_put(struct sbuf *b, const void *s, size_t n)
{
    if (b->oom)
        return;
    if (n + 1 > b->cap - b->n) {
        size_t cap = b->cap ? b->cap : 64;
        while (n + 1 > cap - b->n) {
            if (cap > SIZE_MAX / 2) {
                b->oom = true;
                return;
            }
            cap *= 2;
        }
        char *np = realloc(b->p, cap);
        if (!np) {
            b->oom = true;
            return;
        }
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}

static void sb_ch(struct sbuf *b, char c)
{
    sb_put(b, &c, 1);
}

/* ---- strings ------------------------------------------------------------------------ */

/* Append s[0, n) as a quoted JSON string (cJSON's escapes, plus \u0000;
 * invalid UTF-8 as U+FFFD). */
static void sb_json_string(struct sbuf *b, const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0, run = 0;
    sb_ch(b, '"');
    while (i < n) {
        unsigned c = p[i];
        if (c >= 0x20 && c != '"' && c != '\\' && c < 0x80) {
            i++;
            continue;
        }
        if (c >= 0x80) {
            int r = utf8_next(p + i, n - i);
            if (r > 0) {
                i += (size_t)r;
                continue;
            }
            sb_put(b, s + run, i - run);
            sb_put(b, "\xEF\xBF\xBD", 3);
            i += r < 0 ? (size_t)-r : n - i; /* r == 0: truncated at the end */
            run = i;
            continue;
        }
        sb_put(b, s + run, i - run);
        char esc[8];
        switch (c) {
        case '"': sb_put(b, "\\\"", 2); break;
        case '\\': sb_put(b, "\\\\", 2); break;
        case '\b': sb_put(b, "\\b", 2); break;
        case '\f': sb_put(b, "\\f", 2); break;
        case '\n': sb_put(b, "\\n", 2); break;
        case '\r': sb_put(b, "\\r", 2); break;
        case '\t': sb_put(b, "\\t", 2); break;
        default: snprintf(esc, sizeof esc, "\\u%04x", c); sb_put(b, esc, 6);
        }
        i++;
        run = i;
    }
    sb_put(b, s + run, n - run);
    sb_ch(b, '"');
}

/* A cJSON item holding the string s[0, n). */
static cJSON *str_item(const char *s, size_t n)
{
    struct sbuf b = {0};
    sb_json_string(&b, s, n);
    cJSON *it = b.oom ? NULL : cJSON_CreateRaw(b.p);
    free(b.p);
    return it;
}

static bool add(cJSON *obj, const char *key, cJSON *item)
{
    if (!item)
        return false;
    cJSON_AddItemToObject(obj, key, item);
    return true;
}

/* A token's text as OpenAI shows it: itself when valid UTF-8, else
 * "bytes:" and its characters with each stray byte as \xNN. */
static void token_text(struct sbuf *t, const char *s, size_t n)
{
    if (utf8_valid(s, n, NULL)) {
        sb_put(t, s, n);
        return;
    }
    const unsigned char *p = (const unsigned char *)s;
    sb_put(t, "bytes:", 6);
    for (size_t i = 0; i < n;) {
        int r = utf8_next(p + i, n - i);
        if (r > 0) {
            sb_put(t, s + i, (size_t)r);
            i += (size_t)r;
        } else {
            char hex[8];
            snprintf(hex, sizeof hex, "\\x%02x", p[i]);
            sb_put(t, hex, 4);
            i++;
        }
    }
}

static cJSON *token_item(const char *s, size_t n)
{
    struct sbuf t = {0};
    token_text(&t, s, n);
    cJSON *it = t.oom ? NULL : str_item(t.p ? t.p : "", t.n);
    free(t.p);
    return it;
}

/* The same text as a C string, for an object key (malloc'd). */
static char *token_key(const char *s, size_t n)
{
    struct sbuf t = {0};
    token_text(&t, s, n);
    sb_put(&t, "", 0);
    if (t.oom) {
        free(t.p);
        return NULL;
    }
    return t.p;
}

/* ---- numbers ------------------------------------------------------------------------ */

/* The shortest decimal that reads back as f, as a double, so cJSON prints
 * those digits.  -inf and NaN: -9999 (OpenAI's "very unlikely"). */
static cJSON *logprob_item(float f)
{
    if (!(f >= -9999.0f))
        f = -9999.0f;
    char buf[32];
    for (int prec = 6; prec <= 9; prec++) {
        snprintf(buf, sizeof buf, "%.*g", prec, (double)f);
        if (strtof(buf, NULL) == f)
            break;
    }
    return cJSON_CreateNumber(strtod(buf, NULL));
}

static cJSON *bytes_item(const char *s, size_t n)
{
    cJSON *a = cJSON_CreateArray();
    for (size_t i = 0; a && i < n; i++) {
        cJSON *x = cJSON_CreateNumber((unsigned char)s[i]);
        if (!x) {
            cJSON_Delete(a);
            return NULL;
        }
        cJSON_AddItemToArray(a, x);
    }
    return a;
}

/* Characters in s (code points, as Python's len; a partial character
 * counts at its first byte). */
static int64_t n_chars(const char *s, size_t n)
{
    int64_t k = 0;
    for (size_t i = 0; i < n; i++)
        k += ((unsigned char)s[i] & 0xC0) != 0x80;
    return k;
}

/* ---- logprobs objects --------------------------------------------------------------- */

static int32_t n_top(const struct oai_logprob *t)
{
    return t->n_top < 0 ? 0 : t->n_top > SAMPLE_MAX_LOGPROBS ? SAMPLE_MAX_LOGPROBS : t->n_top;
}

/* {"token", "logprob", "bytes"} (+ "top_logprobs") as in chat logprobs. */
static cJSON *chat_token(const char *s, size_t n, float lp)
{
    cJSON *o = cJSON_CreateObject();
    if (!o || !add(o, "token", token_item(s, n)) || !add(o, "logprob", logprob_item(lp)) ||
        !add(o, "bytes", bytes_item(s, n))) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

/* {"content": [...], "refusal": null} */
static cJSON *chat_logprobs(const struct oai_logprob *lp, size_t n_lp)
{
    cJSON *o = cJSON_CreateObject(), *content = cJSON_CreateArray();
    if (!o || !content)
        goto fail;
    cJSON_AddItemToObject(o, "content", content);
    for (size_t i = 0; i < n_lp; i++) {
        const struct oai_logprob *t = &lp[i];
        cJSON *e = chat_token(t->text, t->len, t->logprob), *top = cJSON_CreateArray();
        if (!e || !top) {
            cJSON_Delete(e);
            cJSON_Delete(top);
            goto fail;
        }
        cJSON_AddItemToArray(content, e);
        cJSON_AddItemToObject(e, "top_logprobs", top);
        for (int32_t k = 0; k < n_top(t); k++) {
            cJSON *a = chat_token(t->top[k].text, t->top[k].len, t->top[k].logprob);
            if (!a)
                goto fail;
            cJSON_AddItemToArray(top, a);
        }
    }
    if (!cJSON_AddNullToObject(o, "refusal"))
        goto fail;
    return o;
fail:
    cJSON_Delete(o);
    return NULL;
}

/* {tok: logprob, ...}: the alternatives, then the chosen token when it is
 * not among them ("up to logprobs + 1 elements"); a text seen already (two
 * ids, one text) keeps its first value. */
static cJSON *completion_top(const struct oai_logprob *t)
{
    cJSON *d = cJSON_CreateObject();
    for (int32_t k = 0; d && k <= n_top(t); k++) {
        const char *s = k < n_top(t) ? t->top[k].text : t->text;
        size_t n = k < n_top(t) ? t->top[k].len : t->len;
        float v = k < n_top(t) ? t->top[k].logprob : t->logprob;
        char *key = token_key(s, n);
        if (!key)
            goto fail;
        if (!cJSON_GetObjectItemCaseSensitive(d, key)) {
            cJSON *x = logprob_item(v);
            if (!x) {
                free(key);
                goto fail;
            }
            cJSON_AddItemToObject(d, key, x);
        }
        free(key);
    }
    return d;
fail:
    cJSON_Delete(d);
    return NULL;
}

/* {"tokens", "token_logprobs", "top_logprobs", "text_offset"} from offset. */
static cJSON *completion_logprobs(const struct oai_logprob *lp, size_t n_lp, int64_t offset)
{
    cJSON *o = cJSON_CreateObject(), *toks = cJSON_CreateArray(), *lps = cJSON_CreateArray(),
          *tops = cJSON_CreateArray(), *offs = cJSON_CreateArray();
    if (!o || !toks || !lps || !tops || !offs) {
        cJSON_Delete(o);
        cJSON_Delete(toks);
        cJSON_Delete(lps);
        cJSON_Delete(tops);
        cJSON_Delete(offs);
        return NULL;
    }
    cJSON_AddItemToObject(o, "tokens", toks);
    cJSON_AddItemToObject(o, "token_logprobs", lps);
    cJSON_AddItemToObject(o, "top_logprobs", tops);
    cJSON_AddItemToObject(o, "text_offset", offs);
    for (size_t i = 0; i < n_lp; i++) {
        cJSON *a = token_item(lp[i].text, lp[i].len), *b = logprob_item(lp[i].logprob),
              *c = completion_top(&lp[i]), *d = cJSON_CreateNumber((double)offset);
        if (!a || !b || !c || !d) {
            cJSON_Delete(a);
            cJSON_Delete(b);
            cJSON_Delete(c);
            cJSON_Delete(d);
            cJSON_Delete(o);
            return NULL;
        }
        cJSON_AddItemToArray(toks, a);
        cJSON_AddItemToArray(lps, b);
        cJSON_AddItemToArray(tops, c);
        cJSON_AddItemToArray(offs, d);
        offset += n_chars(lp[i].text, lp[i].len);
    }
    return o;
}

/* ---- the response ------------------------------------------------------------------- */

const char *oai_finish_name(enum oai_finish f)
{
    return f == OAI_FINISH_LENGTH ? "length" : "stop";
}

static void random_id(char *out, size_t cap, const char *prefix)
{
    static const char alnum[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    unsigned char rnd[24];
    if (getrandom(rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd) {
        /* no entropy source: time and address, mixed (ids need only be unique-ish) */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        uint64_t x = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 30) ^ (uintptr_t)out;
        for (size_t i = 0; i < sizeof rnd; i++) {
            x ^= x >> 33;
            x *= 0xff51afd7ed558ccdull;
            x ^= x >> 29;
            rnd[i] = (unsigned char)x;
        }
    }
    size_t n = (size_t)snprintf(out, cap, "%s", prefix);
    for (size_t i = 0; i < sizeof rnd && n + 1 < cap; i++)
        out[n++] = alnum[rnd[i] % 62];
    out[n] = '\0';
}

int oai_resp_init(struct oai_resp *r, const struct oai_request *rq, const char *model,
                  const struct oai_resp_opts *o)
{
    memset(r, 0, sizeof *r);
    r->kind = rq->kind;
    r->include_usage = rq->stream && rq->include_usage;
    r->logprobs = rq->logprobs;
    if (o && o->id)
        snprintf(r->id, sizeof r->id, "%s", o->id);
    else
        random_id(r->id, sizeof r->id, rq->kind == OAI_CHAT ? "chatcmpl-" : "cmpl-");
    r->created = o && o->created ? o->created : (int64_t)time(NULL);
    if (!model)
        model = rq->model ? rq->model : "moed";
    r->model = strdup(model);
    r->fingerprint = o && o->fingerprint ? strdup(o->fingerprint) : NULL;
    if (!r->model || (o && o->fingerprint && !r->fingerprint)) {
        oai_resp_free(r);
        return MOED_ENOMEM;
    }
    return 0;
}

void oai_resp_free(struct oai_resp *r)
{
    free(r->model);
    free(r->fingerprint);
    r->model = r->fingerprint = NULL;
}

/* id, object, created, model, system_fingerprint: the head of every object. */
static cJSON *head(const struct oai_resp *r, const char *object)
{
    cJSON *o = cJSON_CreateObject();
    if (!o || !add(o, "id", str_item(r->id, strlen(r->id))) ||
        !cJSON_AddStringToObject(o, "object", object) ||
        !cJSON_AddNumberToObject(o, "created", (double)r->created) ||
        !add(o, "model", str_item(r->model, strlen(r->model))) ||
        (r->fingerprint &&
         !add(o, "system_fingerprint", str_item(r->fingerprint, strlen(r->fingerprint))))) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

static cJSON *usage_item(const struct oai_usage *u)
{
    cJSON *o = cJSON_CreateObject();
    int64_t p = u ? u->prompt_tokens : 0, c = u ? u->completion_tokens : 0;
    if (!o || !cJSON_AddNumberToObject(o, "prompt_tokens", (double)p) ||
        !cJSON_AddNumberToObject(o, "completion_tokens", (double)c) ||
        !cJSON_AddNumberToObject(o, "total_tokens", (double)(p + c))) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

/* Print and free root; ok false (a failed add) or a failed print: ENOMEM. */
static int finish(cJSON *root, bool ok, char **out)
{
    *out = ok && root ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    return *out ? 0 : MOED_ENOMEM;
}

/* One choice object; takes logprobs (NULL: "logprobs": null).  Chat:
 * "message" (stream false) or "delta": the assistant role (role), the text
 * (has_text) or nothing. */
static cJSON *choice(const struct oai_resp *r, bool stream, bool role, const char *text, size_t len,
                     bool has_text, cJSON *logprobs, const char *finish_reason)
{
    cJSON *c = cJSON_CreateObject();
    bool ok = c != NULL;
    if (r->kind == OAI_COMPLETION) {
        ok = ok && add(c, "text", str_item(text ? text : "", text ? len : 0)) &&
             cJSON_AddNumberToObject(c, "index", 0);
    } else {
        cJSON *m = NULL;
        ok = ok && cJSON_AddNumberToObject(c, "index", 0) &&
             add(c, stream ? "delta" : "message", m = cJSON_CreateObject());
        if (!stream)
            ok = ok && cJSON_AddStringToObject(m, "role", "assistant") &&
                 add(m, "content", str_item(text, len)) && cJSON_AddNullToObject(m, "refusal");
        else if (role)
            ok = ok && cJSON_AddStringToObject(m, "role", "assistant") &&
                 cJSON_AddStringToObject(m, "content", "");
        else if (has_text)
            ok = ok && add(m, "content", str_item(text, len));
    }
    if (ok && logprobs) {
        cJSON_AddItemToObject(c, "logprobs", logprobs);
        logprobs = NULL;
    } else {
        ok = ok && cJSON_AddNullToObject(c, "logprobs");
    }
    ok = ok && (finish_reason ? cJSON_AddStringToObject(c, "finish_reason", finish_reason)
                              : cJSON_AddNullToObject(c, "finish_reason"));
    cJSON_Delete(logprobs);
    if (!ok) {
        cJSON_Delete(c);
        return NULL;
    }
    return c;
}

/* A streaming object: one choice c (taken), or "choices": [] and the usage u. */
static int chunk(const struct oai_resp *r, cJSON *c, const struct oai_usage *u, char **out)
{
    cJSON *root = head(r, r->kind == OAI_CHAT ? "chat.completion.chunk" : "text_completion");
    cJSON *choices = cJSON_CreateArray();
    bool ok = root && choices && (c || u);
    if (ok) {
        cJSON_AddItemToObject(root, "choices", choices);
        if (c)
            cJSON_AddItemToArray(choices, c);
        choices = c = NULL;
        if (u)
            ok = add(root, "usage", usage_item(u));
        else if (r->include_usage)
            ok = cJSON_AddNullToObject(root, "usage") != NULL;
    }
    cJSON_Delete(choices);
    cJSON_Delete(c);
    return finish(root, ok, out);
}

int oai_resp_body(const struct oai_resp *r, const char *text, size_t len, enum oai_finish fin,
                  const struct oai_usage *u, const struct oai_logprob *lp, size_t n_lp, char **out)
{
    *out = NULL;
    cJSON *root = head(r, r->kind == OAI_CHAT ? "chat.completion" : "text_completion");
    cJSON *lpo = NULL, *choices = cJSON_CreateArray(), *c = NULL;
    bool ok = root && choices;
    if (ok && r->logprobs) {
        lpo = r->kind == OAI_CHAT ? chat_logprobs(lp, n_lp)
                                  : completion_logprobs(lp, n_lp, r->text_offset);
        ok = lpo != NULL;
    }
    if (ok) {
        c = choice(r, false, false, text ? text : "", text ? len : 0, true, lpo,
                   oai_finish_name(fin));
        lpo = NULL; /* choice() owns it */
        ok = c != NULL;
    }
    if (ok) {
        cJSON_AddItemToArray(choices, c);
        cJSON_AddItemToObject(root, "choices", choices);
        choices = NULL;
        ok = add(root, "usage", usage_item(u));
    }
    cJSON_Delete(choices);
    return finish(root, ok, out);
}

int oai_chunk_begin(const struct oai_resp *r, char **out)
{
    *out = NULL;
    if (r->kind != OAI_CHAT)
        return 0;
    return chunk(r, choice(r, true, true, NULL, 0, false, NULL, NULL), NULL, out);
}

int oai_chunk_text(struct oai_resp *r, const char *text, size_t len, const struct oai_logprob *lp,
                   size_t n_lp, char **out)
{
    *out = NULL;
    if (len == 0 && (n_lp == 0 || !r->logprobs))
        return 0;
    cJSON *lpo = NULL;
    if (r->logprobs && n_lp > 0) {
        lpo = r->kind == OAI_CHAT ? chat_logprobs(lp, n_lp)
                                  : completion_logprobs(lp, n_lp, r->text_offset);
        if (!lpo)
            return MOED_ENOMEM;
        for (size_t i = 0; i < n_lp; i++)
            r->text_offset += n_chars(lp[i].text, lp[i].len);
    }
    return chunk(r, choice(r, true, false, text, len, true, lpo, NULL), NULL, out);
}

int oai_chunk_finish(const struct oai_resp *r, enum oai_finish fin, char **out)
{
    *out = NULL;
    return chunk(r, choice(r, true, false, "", 0, false, NULL, oai_finish_name(fin)), NULL, out);
}

int oai_chunk_usage(const struct oai_resp *r, const struct oai_usage *u, char **out)
{
    *out = NULL;
    if (!r->include_usage)
        return 0;
    struct oai_usage zero = {0, 0};
    return chunk(r, NULL, u ? u : &zero, out);
}
