/*
 * libFuzzer target for the OpenAI request path (api/openai.h).
 *
 * The first byte picks options (bit 0: chat, else completions; bit 1: the
 * server names its model "tiny"; bit 2: a vocabulary of 1000 tokens; bit 3:
 * echo allowed; bits 4-7: the piece size for the stop matcher), the rest is
 * the request body, any bytes at all.  Checks:
 *   - a refused body gets a 4xx (or 500) error whose message is valid UTF-8
 *     and whose JSON object cJSON reads back with the four keys;
 *   - an accepted body gives strings that are valid UTF-8 with the stated
 *     lengths, 0..4 non-empty stop strings, in-range sampling values and
 *     token ids;
 *   - the request's text (prompt or messages) fed to the stop matcher in
 *     small pieces comes out as whole characters, as a prefix of the text
 *     (all of it unless a stop string matched), and never with a stop string
 *     inside;
 *   - the response builders turn that text into JSON that cJSON reads back
 *     to the same text.
 *
 * Build and run: make fuzz FUZZ_SECONDS=60.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "api/openai.h"

#define FUZZ_CHECK(c)                                                                              \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            fprintf(stderr, "fuzz_oai: check failed: %s (line %d)\n", #c, __LINE__);               \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static void check_error(const struct oai_error *e)
{
    FUZZ_CHECK(e->status == 400 || e->status == 404 || e->status == 500);
    FUZZ_CHECK(e->message[0] != '\0');
    FUZZ_CHECK(utf8_valid(e->message, strlen(e->message), NULL));
    char *j = oai_error_json(e);
    if (!j)
        return; /* out of memory */
    cJSON *back = cJSON_Parse(j);
    FUZZ_CHECK(back);
    cJSON *err = cJSON_GetObjectItemCaseSensitive(back, "error");
    FUZZ_CHECK(cJSON_IsObject(err) && cJSON_GetArraySize(err) == 4);
    FUZZ_CHECK(cJSON_IsString(cJSON_GetObjectItemCaseSensitive(err, "message")));
    cJSON_Delete(back);
    free(j);
}

static void check_string(const char *s, size_t len)
{
    FUZZ_CHECK(s && strlen(s) == len);
    FUZZ_CHECK(utf8_valid(s, len, NULL));
}

/* The text through the stop matcher, in pieces of `step` bytes. */
static void check_stops(const struct oai_request *rq, const char *text, size_t len, size_t step)
{
    struct oai_stop m;
    if (oai_stop_init_request(&m, rq) != 0)
        return; /* out of memory: every stop string here is valid */
    char *out = malloc(len + 4);
    size_t n_out = 0;
    int rc = 0;
    for (size_t at = 0; out && at < len && rc == 0; at += step) {
        size_t k = len - at < step ? len - at : step, n;
        const char *e;
        rc = oai_stop_push(&m, text + at, k, &e, &n);
        if (rc < 0)
            break;
        FUZZ_CHECK(utf8_valid(e, n, NULL));
        FUZZ_CHECK(n_out + n <= len);
        memcpy(out + n_out, e, n);
        n_out += n;
    }
    if (out && rc == 0) {
        const char *e;
        size_t n;
        rc = oai_stop_flush(&m, &e, &n);
        if (rc >= 0) {
            FUZZ_CHECK(n_out + n <= len);
            memcpy(out + n_out, e, n);
            n_out += n;
        }
    }
    if (out && rc >= 0) {
        /* the text is valid UTF-8, so nothing is replaced: a prefix */
        FUZZ_CHECK(memcmp(out, text, n_out) == 0);
        FUZZ_CHECK(rc == 1 || n_out == len);
        for (int i = 0; i < rq->n_stop; i++)
            FUZZ_CHECK(!memmem(out, n_out, rq->stop[i], rq->stop_len[i]));
    }
    free(out);
    oai_stop_free(&m);
}

static void check_builders(const struct oai_request *rq, const char *text, size_t len)
{
    struct oai_resp r;
    struct oai_resp_opts o = {.id = "x-1", .created = 1};
    if (oai_resp_init(&r, rq, NULL, &o) != 0)
        return;
    struct oai_usage u = {1, 2};
    struct oai_logprob lp = {.text = text,
                             .len = len < 8 ? len : 8,
                             .logprob = -1.0f,
                             .n_top = 1,
                             .top = {{text, len < 3 ? len : 3, -2.0f}}};
    char *s = NULL;
    if (oai_resp_body(&r, text, len, OAI_FINISH_STOP, &u, &lp, 1, &s) == 0) {
        cJSON *back = cJSON_Parse(s);
        FUZZ_CHECK(back);
        cJSON *c = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(back, "choices"), 0);
        if (rq->kind == OAI_CHAT)
            c = cJSON_GetObjectItemCaseSensitive(c, "message");
        c = cJSON_GetObjectItemCaseSensitive(c, rq->kind == OAI_CHAT ? "content" : "text");
        FUZZ_CHECK(cJSON_IsString(c) && strlen(c->valuestring) == len &&
                   memcmp(c->valuestring, text, len) == 0);
        cJSON_Delete(back);
        free(s);
    }
    if (oai_chunk_text(&r, text, len, &lp, 1, &s) == 0 && s) {
        cJSON *back = cJSON_Parse(s);
        FUZZ_CHECK(back);
        cJSON_Delete(back);
        free(s);
    }
    oai_resp_free(&r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    unsigned flags = data[0];
    struct oai_parse_opts opts = {
        .model = flags & 2 ? "tiny" : NULL,
        .n_vocab = flags & 4 ? 1000 : 0,
        .allow_echo = (flags & 8) != 0,
    };
    enum oai_kind kind = flags & 1 ? OAI_CHAT : OAI_COMPLETION;
    struct oai_request rq;
    struct oai_error e;
    /* a copy without a terminating NUL, so ASan sees any read past the end */
    size_t len = size - 1;
    char *body = malloc(len ? len : 1);
    if (!body)
        return 0;
    memcpy(body, data + 1, len);
    int rc = oai_request_parse(&rq, kind, body, len, &opts, &e);
    free(body);
    if (rc) {
        check_error(&e);
        return 0;
    }
    FUZZ_CHECK(rq.kind == kind);
    if (rq.model)
        FUZZ_CHECK(utf8_valid(rq.model, strlen(rq.model), NULL));
    FUZZ_CHECK(rq.max_tokens >= 0);
    FUZZ_CHECK(sample_params_check(&rq.sample, NULL) == 0);
    FUZZ_CHECK(rq.n_stop >= 0 && rq.n_stop <= OAI_MAX_STOP);
    for (int i = 0; i < rq.n_stop; i++) {
        check_string(rq.stop[i], rq.stop_len[i]);
        FUZZ_CHECK(rq.stop_len[i] > 0 && rq.stop_len[i] <= OAI_MAX_STOP_LEN);
    }
    const char *text = "";
    size_t text_len = 0;
    char *joined = NULL;
    if (kind == OAI_COMPLETION) {
        FUZZ_CHECK((rq.prompt != NULL) != (rq.prompt_ids != NULL));
        if (rq.prompt) {
            check_string(rq.prompt, rq.prompt_len);
            text = rq.prompt;
            text_len = rq.prompt_len;
        }
        for (size_t i = 0; i < rq.n_prompt_ids; i++)
            FUZZ_CHECK(rq.prompt_ids[i] >= 0 && (!opts.n_vocab || rq.prompt_ids[i] < 1000));
    } else {
        FUZZ_CHECK(rq.n_messages >= 1 && rq.messages);
        size_t total = 0;
        for (size_t i = 0; i < rq.n_messages; i++) {
            check_string(rq.messages[i].content, rq.messages[i].len);
            FUZZ_CHECK(strcmp(oai_role_name(rq.messages[i].role), "?") != 0);
            total += rq.messages[i].len;
        }
        joined = malloc(total + 1);
        if (joined) {
            size_t at = 0;
            for (size_t i = 0; i < rq.n_messages; i++) {
                memcpy(joined + at, rq.messages[i].content, rq.messages[i].len);
                at += rq.messages[i].len;
            }
            joined[at] = '\0';
            text = joined;
            text_len = at;
        }
    }
    check_stops(&rq, text, text_len, 1 + (flags >> 4));
    check_builders(&rq, text, text_len);
    free(joined);
    oai_request_free(&rq);
    return 0;
}
