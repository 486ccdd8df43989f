/*
 * Tests of the response builders (api/oai_resp.c): exact JSON for fixed
 * inputs, streaming sequences with and without include_usage, logprobs in
 * both formats, awkward text (quotes, control characters, NUL, bytes that
 * are not UTF-8), ids.  The same objects are written as files for the
 * Python check against the openai package's types (oai_shapes_write).
 */
#include "tests/unit/harness.h"

#include "api/openai.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static struct oai_request req(enum oai_kind k, const char *body)
{
    struct oai_request rq;
    struct oai_error e;
    if (oai_request_parse(&rq, k, body, strlen(body), NULL, &e) != 0)
        test_fail(__FILE__, __LINE__, "parse: %s", e.message);
    return rq;
}

#define CHECK_JSON(got, want)                                                                      \
    do {                                                                                           \
        char *g_ = (got);                                                                          \
        const char *w_ = (want);                                                                   \
        if (!g_ || strcmp(g_, w_) != 0)                                                            \
            test_fail(__FILE__, __LINE__, "JSON differs:\n      got  %s\n      want %s",           \
                      g_ ? g_ : "(null)", w_);                                                     \
    } while (0)

static const struct oai_resp_opts fixed_chat = {"chatcmpl-abc", 1700000000, "fp_moed"};
static const struct oai_resp_opts fixed_cmpl = {"cmpl-xyz", 1700000000, NULL};

#define CHAT_HEAD(obj)                                                                             \
    "{\"id\":\"chatcmpl-abc\",\"object\":\"" obj "\",\"created\":1700000000,\"model\":\"tiny\","   \
    "\"system_fingerprint\":\"fp_moed\","
#define CMPL_HEAD                                                                                  \
    "{\"id\":\"cmpl-xyz\",\"object\":\"text_completion\",\"created\":1700000000,"                  \
    "\"model\":\"tiny\","

TEST(oai_resp_chat_stream_with_usage)
{
    struct oai_request rq = req(OAI_CHAT, "{\"model\":\"client-name\",\"messages\":[{\"role\":"
                                          "\"user\",\"content\":\"hi\"}],\"stream\":true,"
                                          "\"stream_options\":{\"include_usage\":true}}");
    struct oai_resp r;
    REQUIRE(oai_resp_init(&r, &rq, "tiny", &fixed_chat) == 0);
    char *s = NULL;
    CHECK_EQ(oai_chunk_begin(&r, &s), 0);
    CHECK_JSON(s, CHAT_HEAD("chat.completion.chunk") "\"choices\":[{\"index\":0,\"delta\":{"
                                                     "\"role\":\"assistant\",\"content\":\"\"},"
                                                     "\"logprobs\":null,\"finish_reason\":null}],"
                                                     "\"usage\":null}");
    free(s);
    CHECK_EQ(oai_chunk_text(&r, "Hel\"lo\n", 7, NULL, 0, &s), 0);
    CHECK_JSON(s, CHAT_HEAD("chat.completion.chunk") "\"choices\":[{\"index\":0,\"delta\":{"
                                                     "\"content\":\"Hel\\\"lo\\n\"},\"logprobs\":"
                                                     "null,\"finish_reason\":null}],\"usage\":"
                                                     "null}");
    free(s);
    /* nothing to say: nothing sent */
    s = (char *)1;
    CHECK_EQ(oai_chunk_text(&r, "", 0, NULL, 0, &s), 0);
    CHECK(s == NULL);
    CHECK_EQ(oai_chunk_finish(&r, OAI_FINISH_LENGTH, &s), 0);
    CHECK_JSON(s, CHAT_HEAD("chat.completion.chunk") "\"choices\":[{\"index\":0,\"delta\":{},"
                                                     "\"logprobs\":null,\"finish_reason\":"
                                                     "\"length\"}],\"usage\":null}");
    free(s);
    struct oai_usage u = {3, 4};
    CHECK_EQ(oai_chunk_usage(&r, &u, &s), 0);
    CHECK_JSON(s, CHAT_HEAD("chat.completion.chunk") "\"choices\":[],\"usage\":{"
                                                     "\"prompt_tokens\":3,\"completion_tokens\":"
                                                     "4,\"total_tokens\":7}}");
    free(s);
    oai_resp_free(&r);
    oai_request_free(&rq);
}

TEST(oai_resp_chat_stream_without_usage)
{
    struct oai_request rq = req(OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],"
                                          "\"stream\":true}");
    struct oai_resp r;
    REQUIRE(oai_resp_init(&r, &rq, "tiny", &fixed_chat) == 0);
    char *s = NULL;
    CHECK_EQ(oai_chunk_text(&r, "x", 1, NULL, 0, &s), 0);
    CHECK_JSON(s, CHAT_HEAD("chat.completion.chunk") "\"choices\":[{\"index\":0,\"delta\":{"
                                                     "\"content\":\"x\"},\"logprobs\":null,"
                                                     "\"finish_reason\":null}]}");
    free(s);
    struct oai_usage u = {1, 1};
    s = (char *)1;
    CHECK_EQ(oai_chunk_usage(&r, &u, &s), 0);
    CHECK(s == NULL);
    oai_resp_free(&r);
    oai_request_free(&rq);
}

TEST(oai_resp_chat_body)
{
    struct oai_request rq =
        req(OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}");
    struct oai_resp r;
    REQUIRE(oai_resp_init(&r, &rq, "tiny", &fixed_chat) == 0);
    struct oai_usage u = {3, 4};
    char *s = NULL;
    CHECK_EQ(oai_resp_body(&r, "Hi!", 3, OAI_FINISH_STOP, &u, NULL, 0, &s), 0);
    CHECK_JSON(s, CHAT_HEAD("chat.completion") "\"choices\":[{\"index\":0,\"message\":{\"role\":"
                                               "\"assistant\",\"content\":\"Hi!\",\"refusal\":"
                                               "null},\"logprobs\":null,\"finish_reason\":"
                                               "\"stop\"}],\"usage\":{\"prompt_tokens\":3,"
                                               "\"completion_tokens\":4,\"total_tokens\":7}}");
    free(s);
    oai_resp_free(&r);
    oai_request_free(&rq);
}

TEST(oai_resp_chat_logprobs)
{
    struct oai_request rq = req(OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],"
                                          "\"logprobs\":true,\"top_logprobs\":2}");
    struct oai_resp r;
    REQUIRE(oai_resp_init(&r, &rq, "tiny", &fixed_chat) == 0);
    struct oai_logprob lp[2] = {
        {.text = "Hi",
         .len = 2,
         .logprob = -0.25f,
         .n_top = 2,
         .top = {{"Hi", 2, -0.25f}, {"Hey", 3, -1.5f}}},
        {.text = "\xe4\xbd", .len = 2, .logprob = -0.1f, .n_top = 0},
    };
    struct oai_usage u = {3, 2};
    char *s = NULL;
    CHECK_EQ(oai_resp_body(&r, "Hi\xe4\xbd\xa0", 5, OAI_FINISH_LENGTH, &u, lp, 2, &s), 0);
    CHECK_JSON(
        s, CHAT_HEAD(
               "chat.completion") "\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\","
                                  "\"content\":"
                                  "\"Hi\xe4\xbd\xa0\",\"refusal\":null},\"logprobs\":{\"content\":["
                                  "{\"token\":\"Hi\",\"logprob\":-0.25,\"bytes\":[72,105],\"top_"
                                  "logprobs\":["
                                  "{\"token\":\"Hi\",\"logprob\":-0.25,\"bytes\":[72,105]},"
                                  "{\"token\":\"Hey\",\"logprob\":-1.5,\"bytes\":[72,101,121]}]},"
                                  "{\"token\":\"bytes:\\\\xe4\\\\xbd\",\"logprob\":-0.1,\"bytes\":["
                                  "228,189],"
                                  "\"top_logprobs\":[]}],\"refusal\":null},\"finish_reason\":"
                                  "\"length\"}],"
                                  "\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2,\"total_"
                                  "tokens\":5}}");
    free(s);
    /* streaming: logprobs ride with the text; a chunk without tokens has null */
    CHECK_EQ(oai_chunk_text(&r, "Hi", 2, lp, 1, &s), 0);
    CHECK_JSON(s, CHAT_HEAD("chat.completion.chunk") "\"choices\":[{\"index\":0,\"delta\":{"
                                                     "\"content\":\"Hi\"},\"logprobs\":{"
                                                     "\"content\":[{\"token\":\"Hi\",\"logprob\":-"
                                                     "0.25,\"bytes\":[72,105],"
                                                     "\"top_logprobs\":[{\"token\":\"Hi\","
                                                     "\"logprob\":-0.25,\"bytes\":[72,105]},"
                                                     "{\"token\":\"Hey\",\"logprob\":-1.5,"
                                                     "\"bytes\":[72,101,121]}]}],\"refusal\":null}"
                                                     ",\"finish_reason\":null}]}");
    free(s);
    /* tokens whose text is still held back: a chunk with an empty delta content */
    CHECK_EQ(oai_chunk_text(&r, "", 0, lp + 1, 1, &s), 0);
    CHECK(s && strstr(s, "\"delta\":{\"content\":\"\"}") != NULL);
    free(s);
    oai_resp_free(&r);
    oai_request_free(&rq);
}

TEST(oai_resp_completion_body_and_logprobs)
{
    struct oai_request rq = req(OAI_COMPLETION, "{\"prompt\":\"x\",\"logprobs\":2}");
    struct oai_resp r;
    REQUIRE(oai_resp_init(&r, &rq, "tiny", &fixed_cmpl) == 0);
    struct oai_logprob lp[3] = {
        {.text = "Hel",
         .len = 3,
         .logprob = -0.5f,
         .n_top = 2,
         .top = {{"Hel", 3, -0.5f}, {"He", 2, -1.25f}}},
        {.text = "\xe4\xbd", .len = 2, .logprob = -0.1f, .n_top = 1, .top = {{"x", 1, -2.0f}}},
        {.text = "\xa0", .len = 1, .logprob = -INFINITY, .n_top = 0},
    };
    struct oai_usage u = {2, 3};
    char *s = NULL;
    CHECK_EQ(oai_resp_body(&r, "Hel\xe4\xbd\xa0", 6, OAI_FINISH_LENGTH, &u, lp, 3, &s), 0);
    CHECK_JSON(s, CMPL_HEAD
               "\"choices\":[{\"text\":\"Hel\xe4\xbd\xa0\",\"index\":0,\"logprobs\":{"
               "\"tokens\":[\"Hel\",\"bytes:\\\\xe4\\\\xbd\",\"bytes:\\\\xa0\"],"
               "\"token_logprobs\":[-0.5,-0.1,-9999],"
               "\"top_logprobs\":[{\"Hel\":-0.5,\"He\":-1.25},{\"x\":-2,"
               "\"bytes:\\\\xe4\\\\xbd\":-0.1},{\"bytes:\\\\xa0\":-9999}],"
               "\"text_offset\":[0,3,4]},\"finish_reason\":\"length\"}],"
               "\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":3,\"total_tokens\":5}}");
    free(s);
    /* streaming: text_offset runs on across chunks */
    CHECK_EQ(oai_chunk_text(&r, "Hel", 3, lp, 1, &s), 0);
    CHECK_JSON(s, CMPL_HEAD "\"choices\":[{\"text\":\"Hel\",\"index\":0,\"logprobs\":{\"tokens\":"
                            "[\"Hel\"],\"token_logprobs\":[-0.5],\"top_logprobs\":[{\"Hel\":-0.5,"
                            "\"He\":-1.25}],\"text_offset\":[0]},\"finish_reason\":null}]}");
    free(s);
    struct oai_logprob two = {.text = "lo", .len = 2, .logprob = -0.75f, .n_top = 0};
    CHECK_EQ(oai_chunk_text(&r, "lo", 2, &two, 1, &s), 0);
    CHECK(s && strstr(s, "\"text_offset\":[3]") != NULL);
    CHECK(s && strstr(s, "\"top_logprobs\":[{\"lo\":-0.75}]") != NULL);
    free(s);
    CHECK_EQ(r.text_offset, 5);
    oai_resp_free(&r);
    oai_request_free(&rq);
}

TEST(oai_resp_completion_stream)
{
    struct oai_request rq = req(OAI_COMPLETION, "{\"prompt\":\"x\",\"stream\":true,"
                                                "\"stream_options\":{\"include_usage\":true}}");
    struct oai_resp r;
    REQUIRE(oai_resp_init(&r, &rq, "tiny", &fixed_cmpl) == 0);
    char *s = (char *)1;
    CHECK_EQ(oai_chunk_begin(&r, &s), 0);
    CHECK(s == NULL); /* completions have no role chunk */
    CHECK_EQ(oai_chunk_text(&r, "Hi", 2, NULL, 0, &s), 0);
    CHECK_JSON(s, CMPL_HEAD "\"choices\":[{\"text\":\"Hi\",\"index\":0,\"logprobs\":null,"
                            "\"finish_reason\":null}],\"usage\":null}");
    free(s);
    CHECK_EQ(oai_chunk_finish(&r, OAI_FINISH_STOP, &s), 0);
    CHECK_JSON(s, CMPL_HEAD "\"choices\":[{\"text\":\"\",\"index\":0,\"logprobs\":null,"
                            "\"finish_reason\":\"stop\"}],\"usage\":null}");
    free(s);
    struct oai_usage u = {1, 2};
    CHECK_EQ(oai_chunk_usage(&r, &u, &s), 0);
    CHECK_JSON(s, CMPL_HEAD "\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":"
                            "2,\"total_tokens\":3}}");
    free(s);
    oai_resp_free(&r);
    oai_request_free(&rq);
}

TEST(oai_resp_awkward_text)
{
    struct oai_request rq = req(OAI_COMPLETION, "{\"prompt\":\"x\"}");
    struct oai_resp r;
    REQUIRE(oai_resp_init(&r, &rq, "m\"q", &fixed_cmpl) == 0);
    char *s = NULL;
    static const char t[] = "a\0b\x01\t\\\x7f\xff\xe2\x82";
    CHECK_EQ(oai_resp_body(&r, t, sizeof t - 1, OAI_FINISH_STOP, NULL, NULL, 0, &s), 0);
    CHECK_JSON(s, "{\"id\":\"cmpl-xyz\",\"object\":\"text_completion\",\"created\":1700000000,"
                  "\"model\":\"m\\\"q\",\"choices\":[{\"text\":\"a\\u0000b\\u0001\\t\\\\\x7f"
                  "\xef\xbf\xbd\xef\xbf\xbd\",\"index\":0,\"logprobs\":null,\"finish_reason\":"
                  "\"stop\"}],\"usage\":{\"prompt_tokens\":0,\"completion_tokens\":0,"
                  "\"total_tokens\":0}}");
    /* and it is JSON that cJSON reads back to the same text (less the bad bytes) */
    cJSON *back = s ? cJSON_Parse(s) : NULL;
    REQUIRE(back);
    cJSON *text = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(back, "choices"), 0), "text");
    CHECK(cJSON_IsString(text) && strcmp(text->valuestring, "a") == 0); /* cJSON stops at NUL */
    cJSON_Delete(back);
    free(s);
    oai_resp_free(&r);
    oai_request_free(&rq);
}

TEST(oai_resp_ids_and_model)
{
    struct oai_request rq = req(OAI_CHAT, "{\"model\":\"asked\",\"messages\":[{\"role\":\"user\","
                                          "\"content\":\"hi\"}]}");
    struct oai_resp a, b;
    REQUIRE(oai_resp_init(&a, &rq, NULL, NULL) == 0);
    REQUIRE(oai_resp_init(&b, &rq, NULL, NULL) == 0);
    CHECK(strncmp(a.id, "chatcmpl-", 9) == 0);
    CHECK_EQ(strlen(a.id), 9 + 24);
    for (size_t i = 9; i < strlen(a.id); i++)
        CHECK(isalnum((unsigned char)a.id[i]));
    CHECK(strcmp(a.id, b.id) != 0);
    CHECK(a.created > 1600000000);
    CHECK(strcmp(a.model, "asked") == 0); /* the request's name when the daemon gives none */
    CHECK(a.fingerprint == NULL);
    char *s = NULL;
    CHECK_EQ(oai_resp_body(&a, "", 0, OAI_FINISH_STOP, NULL, NULL, 0, &s), 0);
    CHECK(s && strstr(s, "system_fingerprint") == NULL);
    free(s);
    oai_resp_free(&a);
    oai_resp_free(&b);
    oai_request_free(&rq);

    rq = req(OAI_COMPLETION, "{\"prompt\":\"x\"}");
    REQUIRE(oai_resp_init(&a, &rq, NULL, NULL) == 0);
    CHECK(strncmp(a.id, "cmpl-", 5) == 0 && strlen(a.id) == 5 + 24);
    CHECK(strcmp(a.model, "moed") == 0);
    oai_resp_free(&a);
    oai_request_free(&rq);
    CHECK(strcmp(oai_finish_name(OAI_FINISH_STOP), "stop") == 0);
    CHECK(strcmp(oai_finish_name(OAI_FINISH_LENGTH), "length") == 0);
}

/* ---- files for tests/py/test_openai_shapes.py ------------------------------------ */

static FILE *open_out(const char *dir, const char *name)
{
    char path[2048];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    if (!f)
        test_fail(__FILE__, __LINE__, "cannot write %s", path);
    return f;
}

static void put(FILE *f, char *json)
{
    if (f && json)
        fprintf(f, "%s\n", json);
    if (!json)
        test_fail(__FILE__, __LINE__, "a builder returned NULL");
    free(json);
}

/*
 * A whole exchange as the daemon would run it: pieces from the detokenizer
 * through the stop matcher into chunks.  One JSON object per line.
 */
static void write_stream(const char *dir, const char *name, enum oai_kind kind, bool logprobs)
{
    const char *body =
        kind == OAI_CHAT
            ? (logprobs ? "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"stream\":true,"
                          "\"stream_options\":{\"include_usage\":true},\"stop\":[\"END\"],"
                          "\"logprobs\":true,\"top_logprobs\":2}"
                        : "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"stream\":true,"
                          "\"stream_options\":{\"include_usage\":true},\"stop\":[\"END\"]}")
            : (logprobs ? "{\"prompt\":\"hi\",\"stream\":true,\"stream_options\":{"
                          "\"include_usage\":true},\"stop\":\"END\",\"logprobs\":2}"
                        : "{\"prompt\":\"hi\",\"stream\":true,\"stream_options\":{"
                          "\"include_usage\":true},\"stop\":\"END\"}");
    struct oai_request rq = req(kind, body);
    struct oai_resp r;
    struct oai_stop st;
    if (oai_resp_init(&r, &rq, "tiny", NULL) || oai_stop_init_request(&st, &rq)) {
        test_fail(__FILE__, __LINE__, "init");
        oai_request_free(&rq);
        return;
    }
    FILE *f = open_out(dir, name);
    char *s;
    oai_chunk_begin(&r, &s);
    if (s)
        put(f, s);
    static const char *const pieces[] = {"Hello", ",", " w\xc3", "\xb6rld", " E", "ND", "!"};
    int n_tok = 0, i = 0, rc = 0;
    for (; i < 7 && rc == 0; i++) {
        struct oai_logprob lp = {.text = pieces[i],
                                 .len = strlen(pieces[i]),
                                 .logprob = -0.5f,
                                 .n_top = 2,
                                 .top = {{pieces[i], strlen(pieces[i]), -0.5f}, {"alt", 3, -2.5f}}};
        const char *e;
        size_t n;
        rc = oai_stop_push(&st, pieces[i], strlen(pieces[i]), &e, &n);
        n_tok++;
        oai_chunk_text(&r, e, n, &lp, 1, &s);
        if (s)
            put(f, s);
    }
    if (rc == 0) {
        const char *e;
        size_t n;
        rc = oai_stop_flush(&st, &e, &n);
        oai_chunk_text(&r, e, n, NULL, 0, &s);
        if (s)
            put(f, s);
    }
    oai_chunk_finish(&r, rc == 1 ? OAI_FINISH_STOP : OAI_FINISH_LENGTH, &s);
    put(f, s);
    struct oai_usage u = {2, n_tok};
    oai_chunk_usage(&r, &u, &s);
    put(f, s);
    if (f)
        fclose(f);
    oai_stop_free(&st);
    oai_resp_free(&r);
    oai_request_free(&rq);
}

TEST(oai_shapes_write)
{
    char dir[1024];
    if (snprintf(dir, sizeof dir, "%s/oai-shapes", test_tmp_dir()) >= (int)sizeof dir)
        SKIP("MOED_TEST_TMP is too long");
    if (mkdir(dir, 0755) != 0 && errno != EEXIST)
        SKIP("cannot create the output folder");
    struct oai_request cq = req(OAI_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],"
                                          "\"logprobs\":true,\"top_logprobs\":2}");
    struct oai_request pq = req(OAI_COMPLETION, "{\"prompt\":\"hi\",\"logprobs\":2}");
    struct oai_resp cr, pr;
    REQUIRE(oai_resp_init(&cr, &cq, "tiny", &fixed_chat) == 0);
    REQUIRE(oai_resp_init(&pr, &pq, "tiny", NULL) == 0);
    struct oai_logprob lp[2] = {
        {.text = "Hi",
         .len = 2,
         .logprob = -0.25f,
         .n_top = 2,
         .top = {{"Hi", 2, -0.25f}, {"Hey", 3, -1.5f}}},
        {.text = "\xe4\xbd", .len = 2, .logprob = -INFINITY, .n_top = 1, .top = {{"\xa0", 1, -3}}},
    };
    struct oai_usage u = {5, 2};
    char *s;

    FILE *f = open_out(dir, "chat.json");
    cr.logprobs = false;
    oai_resp_body(&cr, "Hi \xe4\xbd\xa0!", 7, OAI_FINISH_STOP, &u, NULL, 0, &s);
    put(f, s);
    fclose(f);
    f = open_out(dir, "chat_logprobs.json");
    cr.logprobs = true;
    oai_resp_body(&cr, "Hi\xe4\xbd", 4, OAI_FINISH_LENGTH, &u, lp, 2, &s);
    put(f, s);
    fclose(f);
    f = open_out(dir, "completion.json");
    pr.logprobs = false;
    oai_resp_body(&pr, "Hi there", 8, OAI_FINISH_LENGTH, &u, NULL, 0, &s);
    put(f, s);
    fclose(f);
    f = open_out(dir, "completion_logprobs.json");
    pr.logprobs = true;
    oai_resp_body(&pr, "Hi\xe4\xbd", 4, OAI_FINISH_STOP, &u, lp, 2, &s);
    put(f, s);
    fclose(f);
    f = open_out(dir, "error.json");
    struct oai_error e;
    oai_error_set(&e, 400, "temperature", "invalid_type", "Invalid type for 'temperature'.");
    put(f, oai_error_json(&e));
    fclose(f);
    f = open_out(dir, "error_context.json");
    oai_error_context_length(&e, 5000, 100, 4096);
    put(f, oai_error_json(&e));
    fclose(f);
    oai_resp_free(&cr);
    oai_resp_free(&pr);
    oai_request_free(&cq);
    oai_request_free(&pq);

    write_stream(dir, "chat_stream.jsonl", OAI_CHAT, false);
    write_stream(dir, "chat_stream_logprobs.jsonl", OAI_CHAT, true);
    write_stream(dir, "completion_stream.jsonl", OAI_COMPLETION, false);
    write_stream(dir, "completion_stream_logprobs.jsonl", OAI_COMPLETION, true);
}
