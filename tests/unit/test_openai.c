/*
 * Tests of api/openai.h, the request side: a table of malformed and hostile
 * bodies, each with the status, param and code it must get; good bodies
 * and exactly what they map to; the context-length check and the error
 * object.  (Builders: test_oai_resp.c; the stop matcher: test_oai_stop.c.)
 */
#include "tests/unit/harness.h"

#include "api/http.h"
#include "api/openai.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int parse_n(enum oai_kind k, const char *body, size_t len, const struct oai_parse_opts *o,
                   struct oai_request *rq, struct oai_error *e)
{
    memset(e, 0, sizeof *e);
    return oai_request_parse(rq, k, body, len, o, e);
}

static int parse(enum oai_kind k, const char *body, struct oai_request *rq, struct oai_error *e)
{
    return parse_n(k, body, strlen(body), NULL, rq, e);
}

/* ---- the hostile table ---------------------------------------------------------- */

#define C OAI_COMPLETION
#define H OAI_CHAT
#define P "{\"prompt\":\"hi\","                                     /* a valid completions prefix */
#define M "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]," /* a valid chat prefix */

struct bad_case {
    enum oai_kind kind;
    const char *body;
    int status;
    const char *param; /* "" : null */
    const char *code;  /* "" : null */
    const char *msg;   /* a substring of the message, or NULL */
};

static const struct bad_case bad_cases[] = {
    /* the body as a whole */
    {C, "", 400, "", "", "empty"},
    {C, "{", 400, "", "", "could not parse"},
    {C, "{\"prompt\":\"a\",}", 400, "", "", "could not parse"},
    {C, "[1,2]", 400, "", "invalid_type", "an array"},
    {C, "\"prompt\"", 400, "", "invalid_type", "a string"},
    {C, "null", 400, "", "invalid_type", "null"},
    {C, "{\"prompt\":\"a\"} {}", 400, "", "", "after the JSON value at byte 15"},
    {C, "{\"prompt\":\"a\"}x", 400, "", "", "after the JSON value"},
    {C, "{\"prompt\": NaN}", 400, "", "", "could not parse"},
    {C, P "\"temperature\": Infinity}", 400, "", "", "could not parse"},
    {C, P "\"temperature\": -Infinity}", 400, "", "", "could not parse"},
    {C, "{\"prompt\":\"a\\u0000b\"}", 400, "", "", "U+0000"},
    {C, P "\"temperature\":1,\"temperature\":9}", 400, "temperature", "invalid_value",
     "more than once"},
    /* invalid UTF-8 in strings */
    {C, "{\"prompt\":\"a\xff\"}", 400, "prompt", "invalid_value", "not valid UTF-8"},
    {C, "{\"prompt\":\"\xc0\xaf\"}", 400, "prompt", "invalid_value", "UTF-8"},     /* overlong */
    {C, "{\"prompt\":\"\xed\xa0\x80\"}", 400, "prompt", "invalid_value", "UTF-8"}, /* surrogate */
    {C, "{\"prompt\":\"\xf4\x90\x80\x80\"}", 400, "prompt", "invalid_value", "UTF-8"},
    {C, "{\"prompt\":\"\xe4\xbd\"}", 400, "prompt", "invalid_value", "UTF-8"}, /* truncated */
    {C, "{\"prompt\":[\"\x80\"]}", 400, "prompt[0]", "invalid_value", "UTF-8"},
    {H, "{\"messages\":[{\"role\":\"user\",\"content\":\"\xfe\"}]}", 400, "messages[0].content",
     "invalid_value", "UTF-8"},
    {H, "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"\xff\"}]}]}",
     400, "messages[0].content[0].text", "invalid_value", "UTF-8"},
    {C, P "\"stop\":[\"ok\",\"\xff\"]}", 400, "stop[1]", "invalid_value", "UTF-8"},
    {C, "{\"model\":\"\xff\",\"prompt\":\"a\"}", 400, "model", "invalid_value", "UTF-8"},
    {C, "{\"prompt\":\"\\ud800\"}", 400, "", "", "could not parse"}, /* lone surrogate escape */
    /* completions: prompt */
    {C, "{}", 400, "prompt", "missing_required_parameter", "'prompt'"},
    {C, "{\"prompt\":null}", 400, "prompt", "missing_required_parameter", NULL},
    {C, "{\"prompt\":5}", 400, "prompt", "invalid_type", "got a number"},
    {C, "{\"prompt\":{}}", 400, "prompt", "invalid_type", "got an object"},
    {C, "{\"prompt\":[]}", 400, "prompt", "empty_array", NULL},
    {C, "{\"prompt\":[\"a\",\"b\"]}", 400, "prompt", "unsupported_value", "Batched prompts"},
    {C, "{\"prompt\":[[1],[2]]}", 400, "prompt", "unsupported_value", "Batched prompts"},
    {C, "{\"prompt\":[[]]}", 400, "prompt[0]", "empty_array", NULL},
    {C, "{\"prompt\":[1,\"a\"]}", 400, "prompt[1]", "invalid_type", "got a string"},
    {C, "{\"prompt\":[1,2.5]}", 400, "prompt[1]", "invalid_type", "got 2.5"},
    {C, "{\"prompt\":[-1]}", 400, "prompt[0]", "integer_below_min_value", "-1 is below"},
    {C, "{\"prompt\":[4294967296]}", 400, "prompt[0]", "integer_above_max_value", NULL},
    {C, "{\"prompt\":[[1,1e300]]}", 400, "prompt[0][1]", "integer_above_max_value", NULL},
    {C, "{\"prompt\":[true]}", 400, "prompt[0]", "invalid_type", "got a boolean"},
    {C, "{\"prompt\":[null]}", 400, "prompt[0]", "invalid_type", "got null"},
    /* chat: messages */
    {H, "{}", 400, "messages", "missing_required_parameter", "'messages'"},
    {H, "{\"messages\":\"hi\"}", 400, "messages", "invalid_type", "expected an array"},
    {H, "{\"messages\":[]}", 400, "messages", "empty_array", NULL},
    {H, "{\"messages\":[1]}", 400, "messages[0]", "invalid_type", "expected an object"},
    {H, "{\"messages\":[{\"content\":\"x\"}]}", 400, "messages[0].role",
     "missing_required_parameter", NULL},
    {H, "{\"messages\":[{\"role\":5,\"content\":\"x\"}]}", 400, "messages[0].role", "invalid_type",
     NULL},
    {H, "{\"messages\":[{\"role\":\"wizard\",\"content\":\"x\"}]}", 400, "messages[0].role",
     "invalid_value", "'system'"},
    {H, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"},{\"role\":\"user\"}]}", 400,
     "messages[1].content", "missing_required_parameter", NULL},
    {H, "{\"messages\":[{\"role\":\"user\",\"content\":5}]}", 400, "messages[0].content",
     "invalid_type", NULL},
    {H, "{\"messages\":[{\"role\":\"user\",\"content\":[]}]}", 400, "messages[0].content",
     "empty_array", NULL},
    {H,
     "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"},"
     "{\"type\":\"image_url\",\"image_url\":{\"url\":\"http://x/y.png\"}}]}]}",
     400, "messages[0].content[1].type", "unsupported_value", "text only"},
    {H, "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"input_audio\"}]}]}", 400,
     "messages[0].content[0].type", "unsupported_value", NULL},
    {H, "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"blob\"}]}]}", 400,
     "messages[0].content[0].type", "invalid_value", NULL},
    {H, "{\"messages\":[{\"role\":\"user\",\"content\":[{\"text\":\"a\"}]}]}", 400,
     "messages[0].content[0].type", "missing_required_parameter", NULL},
    {H, "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":5}]}]}", 400,
     "messages[0].content[0].text", "invalid_type", NULL},
    {H, "{\"messages\":[{\"role\":\"user\",\"content\":[\"a\"]}]}", 400, "messages[0].content[0]",
     "invalid_type", NULL},
    {H,
     "{\"messages\":[{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"id\":\"1\"}]}]}",
     400, "messages[0].tool_calls", "unsupported_parameter", NULL},
    /* limits */
    {C, P "\"max_tokens\":0}", 400, "max_tokens", "integer_below_min_value", "0 is below"},
    {C, P "\"max_tokens\":-5}", 400, "max_tokens", "integer_below_min_value", "-5"},
    {C, P "\"max_tokens\":3.5}", 400, "max_tokens", "invalid_type", "got 3.5"},
    {C, P "\"max_tokens\":1e300}", 400, "max_tokens", "integer_above_max_value", "1e+300"},
    {C, P "\"max_tokens\":1e999}", 400, "max_tokens", "integer_above_max_value", NULL},
    {C, P "\"max_tokens\":-1e999}", 400, "max_tokens", "integer_below_min_value", NULL},
    {C, P "\"max_tokens\":2147483648}", 400, "max_tokens", "integer_above_max_value", NULL},
    {C, P "\"max_tokens\":\"10\"}", 400, "max_tokens", "invalid_type", "got a string"},
    {C, P "\"max_tokens\":true}", 400, "max_tokens", "invalid_type", "got a boolean"},
    {H, M "\"max_completion_tokens\":0}", 400, "max_completion_tokens", "integer_below_min_value",
     NULL},
    {C, P "\"n\":2}", 400, "n", "unsupported_value", "n > 1 is not supported"},
    {C, P "\"n\":1e300}", 400, "n", "unsupported_value", "n > 1 is not supported"},
    {H, M "\"n\":0}", 400, "n", "integer_below_min_value", NULL},
    {C, P "\"n\":\"2\"}", 400, "n", "invalid_type", NULL},
    {C, P "\"best_of\":3}", 400, "best_of", "unsupported_value", NULL},
    /* sampling */
    {C, P "\"temperature\":\"0.5\"}", 400, "temperature", "invalid_type",
     "Invalid type for 'temperature': expected a number, but got a string instead."},
    {C, P "\"temperature\":2.5}", 400, "temperature", "decimal_above_max_value",
     "Invalid 'temperature': 2.5 is not in [0, 2]."},
    {C, P "\"temperature\":-0.1}", 400, "temperature", "decimal_below_min_value", "-0.1"},
    {C, P "\"temperature\":1e400}", 400, "temperature", "decimal_above_max_value", NULL},
    {C, P "\"temperature\":[]}", 400, "temperature", "invalid_type", "got an array"},
    {C, P "\"top_p\":0}", 400, "top_p", "decimal_below_min_value", "0 is not in (0, 1]"},
    {C, P "\"top_p\":1.5}", 400, "top_p", "decimal_above_max_value", NULL},
    {C, P "\"top_k\":3.5}", 400, "top_k", "invalid_type", NULL},
    {C, P "\"top_k\":-2}", 400, "top_k", "integer_below_min_value", NULL},
    {C, P "\"top_k\":\"5\"}", 400, "top_k", "invalid_type", NULL},
    {C, P "\"min_p\":1.1}", 400, "min_p", "decimal_above_max_value", NULL},
    {C, P "\"min_p\":-0.5}", 400, "min_p", "decimal_below_min_value", NULL},
    {C, P "\"presence_penalty\":3}", 400, "presence_penalty", "decimal_above_max_value", NULL},
    {C, P "\"frequency_penalty\":-2.5}", 400, "frequency_penalty", "decimal_below_min_value", NULL},
    {C, P "\"repetition_penalty\":0}", 400, "repetition_penalty", "decimal_below_min_value", NULL},
    {C, P "\"repetition_penalty\":11}", 400, "repetition_penalty", "decimal_above_max_value", NULL},
    {C, P "\"seed\":\"42\"}", 400, "seed", "invalid_type", NULL},
    {C, P "\"seed\":1.5}", 400, "seed", "invalid_type", NULL},
    {C, P "\"seed\":1e30}", 400, "seed", "integer_above_max_value", NULL},
    {C, P "\"seed\":18446744073709551616}", 400, "seed", "integer_above_max_value", NULL},
    {C, P "\"seed\":-1e19}", 400, "seed", "integer_below_min_value", NULL},
    /* stop */
    {C, P "\"stop\":\"\"}", 400, "stop", "invalid_value", "empty string"},
    {C, P "\"stop\":[\"a\",\"\"]}", 400, "stop[1]", "invalid_value", "empty string"},
    {C, P "\"stop\":[\"a\",\"b\",\"c\",\"d\",\"e\"]}", 400, "stop", "array_above_max_length",
     "maximum length 4"},
    {C, P "\"stop\":[1]}", 400, "stop[0]", "invalid_type", NULL},
    {C, P "\"stop\":{}}", 400, "stop", "invalid_type", NULL},
    {C, P "\"stop\":5}", 400, "stop", "invalid_type", NULL},
    /* stream */
    {C, P "\"stream\":\"yes\"}", 400, "stream", "invalid_type", NULL},
    {C, P "\"stream\":1}", 400, "stream", "invalid_type", NULL},
    {C, P "\"stream_options\":{\"include_usage\":true}}", 400, "stream_options", "invalid_value",
     "only allowed when 'stream' is enabled"},
    {C, P "\"stream\":true,\"stream_options\":5}", 400, "stream_options", "invalid_type", NULL},
    {C, P "\"stream\":true,\"stream_options\":{\"include_usage\":\"y\"}}", 400,
     "stream_options.include_usage", "invalid_type", NULL},
    /* logprobs */
    {C, P "\"logprobs\":21}", 400, "logprobs", "integer_above_max_value", NULL},
    {C, P "\"logprobs\":-1}", 400, "logprobs", "integer_below_min_value", NULL},
    {C, P "\"logprobs\":true}", 400, "logprobs", "invalid_type", NULL},
    {H, M "\"logprobs\":5}", 400, "logprobs", "invalid_type", NULL},
    {H, M "\"top_logprobs\":3}", 400, "top_logprobs", "invalid_value", "'logprobs' must be"},
    {H, M "\"logprobs\":true,\"top_logprobs\":21}", 400, "top_logprobs", "integer_above_max_value",
     NULL},
    /* fields moed does not implement */
    {C, P "\"echo\":true}", 400, "echo", "unsupported_value", NULL},
    {C, P "\"echo\":\"no\"}", 400, "echo", "invalid_type", NULL},
    {C, P "\"suffix\":\"x\"}", 400, "suffix", "unsupported_parameter", NULL},
    {C, P "\"logit_bias\":{\"50256\":-100}}", 400, "logit_bias", "unsupported_parameter", NULL},
    {C, P "\"logit_bias\":[1]}", 400, "logit_bias", "invalid_type", NULL},
    {H, M "\"tools\":[{\"type\":\"function\"}]}", 400, "tools", "unsupported_parameter", NULL},
    {H, M "\"response_format\":{\"type\":\"json_object\"}}", 400, "response_format.type",
     "unsupported_value", NULL},
    {C, "{\"model\":5,\"prompt\":\"a\"}", 400, "model", "invalid_type", NULL},
};

TEST(oai_req_hostile_table)
{
    size_t n = sizeof bad_cases / sizeof bad_cases[0];
    CHECK(n >= 30);
    for (size_t i = 0; i < n; i++) {
        const struct bad_case *c = &bad_cases[i];
        struct oai_request rq;
        struct oai_error e;
        int rc = parse(c->kind, c->body, &rq, &e);
        CHECK_MSG(rc == MOED_EINVAL, "case %zu (%s): rc %d", i, c->body, rc);
        CHECK_MSG(e.status == c->status, "case %zu (%s): status %d, want %d", i, c->body, e.status,
                  c->status);
        CHECK_MSG(strcmp(e.param, c->param) == 0, "case %zu (%s): param '%s', want '%s'", i,
                  c->body, e.param, c->param);
        CHECK_MSG(strcmp(e.code, c->code) == 0, "case %zu (%s): code '%s', want '%s'", i, c->body,
                  e.code, c->code);
        CHECK_MSG(!c->msg || strstr(e.message, c->msg), "case %zu (%s): message '%s' lacks '%s'", i,
                  c->body, e.message, c->msg);
        CHECK_MSG(e.message[0] != '\0', "case %zu: empty message", i);
        CHECK_MSG(utf8_valid(e.message, strlen(e.message), NULL), "case %zu: message not UTF-8",
                  i);
        /* the request is left empty (nothing to free, nothing dangling) */
        CHECK(rq.model == NULL && rq.prompt == NULL && rq.prompt_ids == NULL &&
              rq.messages == NULL && rq.stop[0] == NULL);
        oai_request_free(&rq);
    }
}

/* Bodies that need explicit lengths or are built at run time. */
TEST(oai_req_hostile_bytes)
{
    struct oai_request rq;
    struct oai_error e;
    /* a raw NUL byte inside a string, and outside */
    static const char nul1[] = "{\"prompt\":\"a\0b\"}";
    CHECK_EQ(parse_n(C, nul1, sizeof nul1 - 1, NULL, &rq, &e), MOED_EINVAL);
    CHECK(strstr(e.message, "NUL byte (at byte 12)") != NULL);
    static const char nul2[] = "{\"prompt\":\"ab\"}\0";
    CHECK_EQ(parse_n(C, nul2, sizeof nul2 - 1, NULL, &rq, &e), MOED_EINVAL);
    /* an escaped backslash before u0000 is just text */
    CHECK_EQ(parse(C, "{\"prompt\":\"a\\\\u0000\"}", &rq, &e), 0);
    CHECK(rq.prompt && strcmp(rq.prompt, "a\\u0000") == 0);
    oai_request_free(&rq);
    /* a body cut short, and body NULL */
    CHECK_EQ(parse_n(C, "{\"prompt\":\"abc\"}", 8, NULL, &rq, &e), MOED_EINVAL);
    CHECK_EQ(e.status, 400);
    CHECK_EQ(parse_n(C, NULL, 5, NULL, &rq, &e), MOED_EINVAL);

    /* deep nesting: 100000 arrays is refused (cJSON stops at 1000), without
     * recursion trouble */
    size_t depth = 100000;
    char *deep = malloc(2 * depth + 64);
    REQUIRE(deep);
    size_t k = (size_t)sprintf(deep, "{\"prompt\":\"a\",\"x\":");
    memset(deep + k, '[', depth);
    memset(deep + k + depth, ']', depth);
    strcpy(deep + k + 2 * depth, "}");
    CHECK_EQ(parse(C, deep, &rq, &e), MOED_EINVAL);
    CHECK(e.param[0] == '\0' && strstr(e.message, "could not parse") != NULL);
    /* 500 levels in an unknown field is valid JSON, and ignored */
    k = (size_t)sprintf(deep, "{\"prompt\":\"a\",\"x\":");
    memset(deep + k, '[', 500);
    memset(deep + k + 500, ']', 500);
    strcpy(deep + k + 1000, "}");
    CHECK_EQ(parse(C, deep, &rq, &e), 0);
    oai_request_free(&rq);
    free(deep);

    /* a long number: cJSON reads at most 63 characters of it */
    char num[300];
    k = (size_t)sprintf(num, "{\"prompt\":\"a\",\"max_tokens\":");
    memset(num + k, '9', 200);
    strcpy(num + k + 200, "}");
    CHECK_EQ(parse(C, num, &rq, &e), MOED_EINVAL);

    /* a stop string over OAI_MAX_STOP_LEN bytes; exactly that many is fine */
    char *longstop = malloc(OAI_MAX_STOP_LEN + 64);
    REQUIRE(longstop);
    for (int extra = 0; extra <= 1; extra++) {
        k = (size_t)sprintf(longstop, "{\"prompt\":\"a\",\"stop\":[\"x\",\"");
        memset(longstop + k, 'z', OAI_MAX_STOP_LEN + extra);
        strcpy(longstop + k + OAI_MAX_STOP_LEN + extra, "\"]}");
        int rc = parse(C, longstop, &rq, &e);
        if (extra) {
            CHECK_EQ(rc, MOED_EINVAL);
            CHECK(strcmp(e.param, "stop[1]") == 0 &&
                  strcmp(e.code, "string_above_max_length") == 0);
        } else {
            CHECK_EQ(rc, 0);
            CHECK_EQ(rq.stop_len[1], OAI_MAX_STOP_LEN);
            oai_request_free(&rq);
        }
    }
    free(longstop);

    /* a model name over 100 bytes is cut (at a character) in the 404 */
    struct oai_parse_opts o = {.model = "tiny"};
    char body[600];
    k = (size_t)sprintf(body, "{\"prompt\":\"a\",\"model\":\"");
    for (int i = 0; i < 60; i++)
        k += (size_t)sprintf(body + k, "\xc3\xa9"); /* é, 2 bytes */
    strcpy(body + k, "\"}");
    CHECK_EQ(parse_n(C, body, strlen(body), &o, &rq, &e), MOED_EINVAL);
    CHECK_EQ(e.status, 404);
    CHECK(strcmp(e.code, "model_not_found") == 0 && strcmp(e.param, "model") == 0);
    CHECK(utf8_valid(e.message, strlen(e.message), NULL));
    CHECK(strstr(e.message, "...` does not exist") != NULL);
}

TEST(oai_req_options)
{
    struct oai_request rq;
    struct oai_error e;
    struct oai_parse_opts o = {.model = "tiny", .n_vocab = 100};
    const char *b = "{\"model\":\"tiny\",\"prompt\":[0,99]}";
    CHECK_EQ(parse_n(C, b, strlen(b), &o, &rq, &e), 0);
    CHECK_EQ(rq.n_prompt_ids, 2);
    oai_request_free(&rq);
    b = "{\"model\":\"tiny\",\"prompt\":[0,100]}";
    CHECK_EQ(parse_n(C, b, strlen(b), &o, &rq, &e), MOED_EINVAL);
    CHECK(strcmp(e.param, "prompt[1]") == 0 && strcmp(e.code, "integer_above_max_value") == 0);
    /* no model named: accepted even when opts names one */
    b = "{\"prompt\":\"x\"}";
    CHECK_EQ(parse_n(C, b, strlen(b), &o, &rq, &e), 0);
    CHECK(rq.model == NULL);
    oai_request_free(&rq);
    b = "{\"model\":\"gpt-4o\",\"prompt\":\"x\"}";
    CHECK_EQ(parse_n(C, b, strlen(b), &o, &rq, &e), MOED_EINVAL);
    CHECK_EQ(e.status, 404);
    CHECK(strcmp(e.message, "The model `gpt-4o` does not exist or you do not have access to "
                            "it.") == 0);
    /* echo when the daemon allows it, but not with logprobs */
    o = (struct oai_parse_opts){.allow_echo = true};
    b = "{\"prompt\":\"x\",\"echo\":true}";
    CHECK_EQ(parse_n(C, b, strlen(b), &o, &rq, &e), 0);
    CHECK(rq.echo);
    oai_request_free(&rq);
    b = "{\"prompt\":\"x\",\"echo\":true,\"logprobs\":1}";
    CHECK_EQ(parse_n(C, b, strlen(b), &o, &rq, &e), MOED_EINVAL);
    CHECK(strcmp(e.param, "echo") == 0);
    /* defaults come from opts, the set mask says what the request gave */
    struct sample_params d = sample_params_default();
    d.temperature = 0.7f;
    d.top_k = 20;
    d.seed = 12345;
    o = (struct oai_parse_opts){.defaults = &d};
    b = "{\"prompt\":\"x\",\"top_k\":5}";
    CHECK_EQ(parse_n(C, b, strlen(b), &o, &rq, &e), 0);
    CHECK(rq.sample.temperature == 0.7f);
    CHECK_EQ(rq.sample.top_k, 5);
    CHECK_EQ(rq.sample.seed, 12345);
    CHECK_EQ(rq.set, OAI_SET_TOP_K);
    oai_request_free(&rq);
}

/* ---- good requests ----------------------------------------------------------------- */

TEST(oai_req_completion_maps_every_field)
{
    const char *b = "{\"model\":\"m\",\"prompt\":\"Hello\",\"max_tokens\":7,\"temperature\":0.5,"
                    "\"top_p\":0.9,\"top_k\":40,\"min_p\":0.05,\"stop\":[\"\\n\",\"END\"],"
                    "\"stream\":true,\"stream_options\":{\"include_usage\":true},"
                    "\"presence_penalty\":0.5,\"frequency_penalty\":-0.5,"
                    "\"repetition_penalty\":1.1,\"seed\":-1,\"logprobs\":3,\"n\":1,"
                    "\"best_of\":1,\"echo\":false,\"user\":{\"any\":\"thing\"},"
                    "\"suffix\":\"\",\"logit_bias\":{},\"unknown\":{\"x\":[1,2,NaNx]}}";
    struct oai_request rq;
    struct oai_error e;
    /* unknown fields are ignored but must still be JSON */
    CHECK_EQ(parse(C, b, &rq, &e), MOED_EINVAL);
    b = "{\"model\":\"m\",\"prompt\":\"Hello\",\"max_tokens\":7,\"temperature\":0.5,"
        "\"top_p\":0.9,\"top_k\":40,\"min_p\":0.05,\"stop\":[\"\\n\",\"END\"],"
        "\"stream\":true,\"stream_options\":{\"include_usage\":true},"
        "\"presence_penalty\":0.5,\"frequency_penalty\":-0.5,"
        "\"repetition_penalty\":1.1,\"seed\":-1,\"logprobs\":3,\"n\":1,"
        "\"best_of\":1,\"echo\":false,\"user\":{\"any\":\"thing\"},"
        "\"suffix\":\"\",\"logit_bias\":{},\"unknown\":{\"x\":[1,2,\"\\u00e9\"]}}";
    REQUIRE(parse(C, b, &rq, &e) == 0);
    CHECK_EQ(rq.kind, OAI_COMPLETION);
    CHECK(rq.model && strcmp(rq.model, "m") == 0);
    CHECK(rq.prompt && strcmp(rq.prompt, "Hello") == 0 && rq.prompt_len == 5);
    CHECK(rq.prompt_ids == NULL && rq.messages == NULL);
    CHECK_EQ(rq.max_tokens, 7);
    CHECK(rq.sample.temperature == 0.5f);
    CHECK(rq.sample.top_p == 0.9f);
    CHECK_EQ(rq.sample.top_k, 40);
    CHECK(rq.sample.min_p == 0.05f);
    CHECK(rq.sample.presence_penalty == 0.5f);
    CHECK(rq.sample.frequency_penalty == -0.5f);
    CHECK(rq.sample.repeat_penalty == 1.1f);
    CHECK(rq.sample.seed == UINT64_MAX); /* -1, two's complement */
    CHECK_EQ(rq.sample.n_logprobs, 3);
    CHECK_EQ(rq.set, OAI_SET_TEMPERATURE | OAI_SET_TOP_P | OAI_SET_TOP_K | OAI_SET_MIN_P |
                         OAI_SET_REPEAT_PENALTY | OAI_SET_PRESENCE_PENALTY |
                         OAI_SET_FREQUENCY_PENALTY | OAI_SET_SEED);
    CHECK_EQ(rq.n_stop, 2);
    CHECK(strcmp(rq.stop[0], "\n") == 0 && rq.stop_len[0] == 1);
    CHECK(strcmp(rq.stop[1], "END") == 0 && rq.stop_len[1] == 3);
    CHECK(rq.stream && rq.include_usage && rq.logprobs && !rq.echo);
    oai_request_free(&rq);
}

TEST(oai_req_defaults_and_nulls)
{
    struct oai_request rq;
    struct oai_error e;
    REQUIRE(parse(C,
                  "{\"prompt\":\"a\",\"temperature\":null,\"stop\":null,\"max_tokens\":null,"
                  "\"stream\":null,\"stream_options\":null,\"seed\":null,\"logprobs\":null,"
                  "\"n\":null,\"model\":null}",
                  &rq, &e) == 0);
    struct sample_params d = sample_params_default();
    CHECK(rq.sample.temperature == 1.0f); /* OpenAI's default */
    CHECK(rq.sample.top_p == d.top_p && rq.sample.top_k == d.top_k && rq.sample.min_p == d.min_p &&
          rq.sample.repeat_penalty == d.repeat_penalty && rq.sample.seed == d.seed &&
          rq.sample.n_logprobs == 0);
    CHECK_EQ(rq.set, 0);
    CHECK_EQ(rq.max_tokens, 0);
    CHECK_EQ(rq.n_stop, 0);
    CHECK(!rq.stream && !rq.include_usage && !rq.logprobs && rq.model == NULL);
    oai_request_free(&rq);
    /* an empty stop array is no stops; stream with stream_options false */
    REQUIRE(parse(C,
                  "{\"prompt\":\"\",\"stop\":[],\"stream\":true,"
                  "\"stream_options\":{\"include_usage\":false}}",
                  &rq, &e) == 0);
    CHECK(rq.prompt && rq.prompt_len == 0);
    CHECK(rq.stream && !rq.include_usage && rq.n_stop == 0);
    oai_request_free(&rq);
    /* whitespace around the body; a single stop string; top_k -1 means off */
    REQUIRE(parse(C, " \r\n\t{\"prompt\":\"a\",\"stop\":\"\\u3002\",\"top_k\":-1} \n", &rq, &e) ==
            0);
    CHECK_EQ(rq.n_stop, 1);
    CHECK(strcmp(rq.stop[0], "\xe3\x80\x82") == 0 && rq.stop_len[0] == 3);
    CHECK_EQ(rq.sample.top_k, 0);
    CHECK(rq.set & OAI_SET_TOP_K);
    oai_request_free(&rq);
    /* range ends are inclusive where OpenAI's are */
    REQUIRE(parse(C,
                  "{\"prompt\":\"a\",\"temperature\":2,\"top_p\":1,\"min_p\":0,"
                  "\"presence_penalty\":-2,\"frequency_penalty\":2,\"repetition_penalty\":10,"
                  "\"max_tokens\":2147483647,\"logprobs\":20,\"seed\":9223372036854775807}",
                  &rq, &e) == 0);
    CHECK(rq.sample.temperature == 2.0f && rq.sample.top_p == 1.0f);
    CHECK_EQ(rq.max_tokens, INT32_MAX);
    CHECK_EQ(rq.sample.n_logprobs, 20);
    CHECK(rq.sample.seed == 9223372036854775808ull); /* the double nearest 2^63 - 1 */
    oai_request_free(&rq);
    REQUIRE(parse(C, "{\"prompt\":\"a\",\"seed\":-9223372036854775808}", &rq, &e) == 0);
    CHECK(rq.sample.seed == 9223372036854775808ull);
    oai_request_free(&rq);
    REQUIRE(parse(C, "{\"prompt\":\"a\",\"seed\":42}", &rq, &e) == 0);
    CHECK(rq.sample.seed == 42);
    oai_request_free(&rq);
}

TEST(oai_req_prompt_forms)
{
    struct oai_request rq;
    struct oai_error e;
    REQUIRE(parse(C, "{\"prompt\":[\"Hi \\\"you\\\"\"]}", &rq, &e) == 0);
    CHECK(rq.prompt && strcmp(rq.prompt, "Hi \"you\"") == 0 && rq.prompt_len == 8);
    oai_request_free(&rq);
    REQUIRE(parse(C, "{\"prompt\":[1,2,2147483647]}", &rq, &e) == 0);
    REQUIRE(rq.prompt_ids && rq.n_prompt_ids == 3 && !rq.prompt);
    CHECK(rq.prompt_ids[0] == 1 && rq.prompt_ids[1] == 2 && rq.prompt_ids[2] == INT32_MAX);
    oai_request_free(&rq);
    REQUIRE(parse(C, "{\"prompt\":[[5,6.0]]}", &rq, &e) == 0);
    REQUIRE(rq.prompt_ids && rq.n_prompt_ids == 2);
    CHECK(rq.prompt_ids[0] == 5 && rq.prompt_ids[1] == 6);
    oai_request_free(&rq);
}

TEST(oai_req_chat_messages)
{
    const char *b =
        "{\"model\":\"m\",\"messages\":["
        "{\"role\":\"developer\",\"content\":\"Be brief.\"},"
        "{\"role\":\"system\",\"content\":\"S\",\"name\":\"x\"},"
        "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"one\"},"
        "{\"type\":\"text\",\"text\":\"two \\u00e9\"}]},"
        "{\"role\":\"assistant\",\"content\":null},"
        "{\"role\":\"assistant\",\"content\":\"ok\",\"tool_calls\":[]},"
        "{\"role\":\"tool\",\"content\":\"42\",\"tool_call_id\":\"c1\"}],"
        "\"max_tokens\":5,\"max_completion_tokens\":9,\"logprobs\":true,\"top_logprobs\":4,"
        "\"tools\":[],\"tool_choice\":\"none\",\"response_format\":{\"type\":\"text\"}}";
    struct oai_request rq;
    struct oai_error e;
    REQUIRE(parse(H, b, &rq, &e) == 0);
    CHECK_EQ(rq.kind, OAI_CHAT);
    REQUIRE(rq.n_messages == 6);
    CHECK(rq.messages[0].role == OAI_ROLE_SYSTEM &&
          strcmp(rq.messages[0].content, "Be brief.") == 0);
    CHECK(rq.messages[1].role == OAI_ROLE_SYSTEM && strcmp(rq.messages[1].content, "S") == 0);
    CHECK(rq.messages[2].role == OAI_ROLE_USER);
    CHECK(strcmp(rq.messages[2].content, "one\ntwo \xc3\xa9") == 0);
    CHECK_EQ(rq.messages[2].len, 10);
    CHECK(rq.messages[3].role == OAI_ROLE_ASSISTANT && rq.messages[3].content &&
          rq.messages[3].len == 0 && rq.messages[3].content[0] == '\0');
    CHECK(rq.messages[4].role == OAI_ROLE_ASSISTANT && strcmp(rq.messages[4].content, "ok") == 0);
    CHECK(rq.messages[5].role == OAI_ROLE_TOOL && strcmp(rq.messages[5].content, "42") == 0);
    CHECK_EQ(rq.max_tokens, 9); /* max_completion_tokens wins */
    CHECK(rq.logprobs);
    CHECK_EQ(rq.sample.n_logprobs, 4);
    CHECK(rq.prompt == NULL && rq.prompt_ids == NULL);
    CHECK(strcmp(oai_role_name(rq.messages[5].role), "tool") == 0);
    CHECK(strcmp(oai_role_name(OAI_ROLE_SYSTEM), "system") == 0);
    oai_request_free(&rq);
    /* chat ignores "prompt", completions ignore "messages" */
    REQUIRE(parse(H, "{\"prompt\":5,\"messages\":[{\"role\":\"user\",\"content\":\"a\"}]}", &rq,
                  &e) == 0);
    oai_request_free(&rq);
    REQUIRE(parse(C, "{\"messages\":5,\"prompt\":\"a\"}", &rq, &e) == 0);
    oai_request_free(&rq);
    /* top_logprobs 0 without logprobs is harmless */
    REQUIRE(parse(H, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],\"top_logprobs\":0}",
                  &rq, &e) == 0);
    CHECK(!rq.logprobs);
    oai_request_free(&rq);
}

TEST(oai_req_chat_template_kwargs)
{
    struct oai_request rq;
    struct oai_error e;
    /* absent, null, an empty object, a null value: the template's default */
    const char *dflt[] = {
        M "\"max_tokens\":1}",
        M "\"chat_template_kwargs\":null}",
        M "\"chat_template_kwargs\":{}}",
        M "\"chat_template_kwargs\":{\"enable_thinking\":null}}",
        M "\"chat_template_kwargs\":{\"other\":[1,2],\"x\":\"y\"}}",
    };
    for (size_t i = 0; i < sizeof dflt / sizeof dflt[0]; i++) {
        REQUIRE(parse(H, dflt[i], &rq, &e) == 0);
        CHECK_EQ(rq.enable_thinking, -1);
        oai_request_free(&rq);
    }
    REQUIRE(parse(H, M "\"chat_template_kwargs\":{\"enable_thinking\":false}}", &rq, &e) == 0);
    CHECK_EQ(rq.enable_thinking, 0);
    oai_request_free(&rq);
    REQUIRE(parse(H, M "\"chat_template_kwargs\":{\"enable_thinking\":true,\"z\":1}}", &rq, &e) ==
            0);
    CHECK_EQ(rq.enable_thinking, 1);
    oai_request_free(&rq);
    /* wrong types: 400 naming the field */
    const struct {
        const char *body, *param;
    } bad[] = {
        {M "\"chat_template_kwargs\":{\"enable_thinking\":\"no\"}}",
         "chat_template_kwargs.enable_thinking"},
        {M "\"chat_template_kwargs\":{\"enable_thinking\":0}}",
         "chat_template_kwargs.enable_thinking"},
        {M "\"chat_template_kwargs\":{\"enable_thinking\":[true]}}",
         "chat_template_kwargs.enable_thinking"},
        {M "\"chat_template_kwargs\":true}", "chat_template_kwargs"},
        {M "\"chat_template_kwargs\":[]}", "chat_template_kwargs"},
        {M "\"chat_template_kwargs\":\"enable_thinking\"}", "chat_template_kwargs"},
        {M "\"chat_template_kwargs\":{},\"chat_template_kwargs\":{}}", "chat_template_kwargs"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CHECK_EQ(parse(H, bad[i].body, &rq, &e), MOED_EINVAL);
        CHECK_EQ(e.status, 400);
        if (strcmp(e.param, bad[i].param) != 0)
            fprintf(stderr, "    %s: param '%s', want '%s'\n", bad[i].body, e.param,
                    bad[i].param);
        CHECK(strcmp(e.param, bad[i].param) == 0);
    }
    /* completions have no chat template: the field is ignored there */
    REQUIRE(parse(C, P "\"chat_template_kwargs\":5}", &rq, &e) == 0);
    CHECK_EQ(rq.enable_thinking, -1);
    oai_request_free(&rq);
}

/* ---- context and errors ------------------------------------------------------------ */

TEST(oai_req_context_length)
{
    struct oai_request rq;
    struct oai_error e;
    int32_t max_new = -1;
    REQUIRE(parse(H, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],\"max_tokens\":100}",
                  &rq, &e) == 0);
    CHECK_EQ(oai_check_context(&rq, 50, 150, &max_new, &e), 0);
    CHECK_EQ(max_new, 100);
    CHECK_EQ(oai_check_context(&rq, 51, 150, &max_new, &e), MOED_EINVAL);
    CHECK_EQ(e.status, 400);
    CHECK(strcmp(e.code, "context_length_exceeded") == 0 && strcmp(e.param, "messages") == 0);
    CHECK(strcmp(e.message,
                 "This model's maximum context length is 150 tokens. However, you requested 151 "
                 "tokens (51 in the messages, 100 in the completion). Please reduce the length of "
                 "the messages or completion.") == 0);
    CHECK_EQ(oai_check_context(&rq, 0, 150, &max_new, &e), MOED_EINVAL);
    CHECK(strcmp(e.param, "messages") == 0 && strcmp(e.code, "invalid_value") == 0);
    oai_request_free(&rq);

    REQUIRE(parse(C, "{\"prompt\":\"a\"}", &rq, &e) == 0);
    CHECK_EQ(oai_check_context(&rq, 100, 4096, &max_new, &e), 0);
    CHECK_EQ(max_new, 3996);
    CHECK_EQ(oai_check_context(&rq, 4095, 4096, &max_new, &e), 0);
    CHECK_EQ(max_new, 1);
    CHECK_EQ(oai_check_context(&rq, 4096, 4096, &max_new, &e), MOED_EINVAL);
    CHECK(strcmp(e.param, "prompt") == 0 && strcmp(e.code, "context_length_exceeded") == 0);
    CHECK(strcmp(e.message, "This model's maximum context length is 4096 tokens. However, your "
                            "messages resulted in 4096 tokens. Please reduce the length of the "
                            "messages.") == 0);
    oai_request_free(&rq);

    oai_error_context_length(&e, 8000, 1000, 8192);
    CHECK(strcmp(e.message, "This model's maximum context length is 8192 tokens. However, you "
                            "requested 9000 tokens (8000 in the messages, 1000 in the "
                            "completion). Please reduce the length of the messages or "
                            "completion.") == 0);
}

TEST(oai_err_json_matches_transport)
{
    struct oai_error e;
    oai_error_set(&e, 400, "temperature", "invalid_type", "bad \"%s\"", "x");
    char *a = oai_error_json(&e);
    char *b = api_error_json(400, NULL, e.message, "temperature", "invalid_type");
    REQUIRE(a && b);
    CHECK_MSG(strcmp(a, b) == 0, "%s vs %s", a, b);
    CHECK(strcmp(a, "{\"error\":{\"message\":\"bad \\\"x\\\"\",\"type\":\"invalid_request_error\","
                    "\"param\":\"temperature\",\"code\":\"invalid_type\"}}") == 0);
    free(a);
    free(b);
    oai_error_set(&e, 500, NULL, NULL, "oops");
    a = oai_error_json(&e);
    b = api_error_json(500, NULL, "oops", NULL, NULL);
    REQUIRE(a && b);
    CHECK(strcmp(a, b) == 0);
    CHECK(strcmp(a, "{\"error\":{\"message\":\"oops\",\"type\":\"server_error\",\"param\":null,"
                    "\"code\":null}}") == 0);
    free(a);
    free(b);
    /* a long message is cut at a character boundary */
    char big[2000];
    for (int i = 0; i < 666; i++)
        memcpy(big + 3 * i, "\xe2\x82\xac", 3); /* € */
    big[1998] = '\0';
    oai_error_set(&e, 400, NULL, NULL, "%s", big);
    CHECK(strlen(e.message) < OAI_ERR_MSG);
    CHECK(utf8_valid(e.message, strlen(e.message), NULL));
}

TEST(utf8_validation)
{
    static const struct {
        const char *s;
        bool ok;
    } v[] = {
        {"", true},
        {"plain ascii", true},
        {"\xc3\xa9", true},
        {"\xe2\x82\xac", true},
        {"\xf0\x9f\x98\x80", true},
        {"\xf4\x8f\xbf\xbf", true}, /* U+10FFFF */
        {"\xed\x9f\xbf", true},     /* U+D7FF */
        {"\xee\x80\x80", true},     /* U+E000 */
        {"\x80", false},
        {"\xc0\x80", false},
        {"\xc1\xbf", false},
        {"\xe0\x9f\xbf", false},     /* overlong */
        {"\xed\xa0\x80", false},     /* U+D800 */
        {"\xf0\x8f\xbf\xbf", false}, /* overlong */
        {"\xf4\x90\x80\x80", false}, /* U+110000 */
        {"\xf5\x80\x80\x80", false},
        {"\xff", false},
        {"\xe2\x82", false},
        {"a\xc3", false},
    };
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++)
        CHECK_MSG(utf8_valid(v[i].s, strlen(v[i].s), NULL) == v[i].ok, "case %zu", i);
    size_t bad = 0;
    CHECK(!utf8_valid("ab\xc3\xa9\xff", 5, &bad));
    CHECK_EQ(bad, 4);
    /* maximal subparts */
    CHECK_EQ(utf8_next((const unsigned char *)"\xe2\x82\x41", 3), -2);
    CHECK_EQ(utf8_next((const unsigned char *)"\xe2\x82", 2), 0);
    CHECK_EQ(utf8_next((const unsigned char *)"\xed\xa0", 2), -1);
    CHECK_EQ(utf8_next((const unsigned char *)"\xf0\x9f\x98\x80", 4), 4);
}
