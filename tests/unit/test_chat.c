/*
 * Chat templates (model/chat.h).
 *
 * Qwen3 and Llama 3: byte-exact against the real Jinja templates, through
 * tests/fixtures/chat/{qwen3,llama3}.json (rendered by jinja2 with
 * tools/mkchatfixtures.py from ../shared/hf-tokenizers; each file carries a
 * copy of its template, checked against ../shared when that is there).
 * The other formats: expected strings written by hand from their published
 * templates (Mixtral-8x7B-Instruct, Mistral v0.3 / Nemo / Large 2411 /
 * Small 3, DeepSeek-V2-Lite-Chat, DeepSeek-V3 / R1 / V3.1, OLMoE / OLMo-2,
 * gpt-oss, Llama 3.1).  Recognition is tested on short template excerpts
 * carrying each family's markers, written with the quoting and spacing
 * variations real files show.
 */
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "model/chat.h"
#include "model/gguf.h"
#include "model/tok.h"
#include "tests/unit/harness.h"

/* The strings are split where a hex escape must end before a letter. */
/* clang-format off */
#define DS_BOS "<\xef\xbd\x9c" "begin\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>"
#define DS_EOS "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>"
#define DS_USER "<\xef\xbd\x9cUser\xef\xbd\x9c>"
#define DS_ASSISTANT "<\xef\xbd\x9c" "Assistant\xef\xbd\x9c>"
/* clang-format on */

static const struct tm fixed_day = {.tm_year = 2025 - 1900, .tm_mon = 7, .tm_mday = 5};

static struct chat_msg msg(enum chat_role r, const char *text)
{
    return (struct chat_msg){.role = r, .content = text, .content_len = strlen(text)};
}
#define SYS(s) msg(CHAT_ROLE_SYSTEM, s)
#define USR(s) msg(CHAT_ROLE_USER, s)
#define AST(s) msg(CHAT_ROLE_ASSISTANT, s)
#define TOOL(s) msg(CHAT_ROLE_TOOL, s)
#define N(a) (sizeof(a) / sizeof(a)[0])

/* Print a string with C escapes, for failure messages. */
static const char *esc(const char *s, size_t n, char *buf, size_t cap)
{
    size_t k = 0;
    for (size_t i = 0; i < n && k + 8 < cap; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\n')
            k += (size_t)snprintf(buf + k, cap - k, "\\n");
        else if (c == '\t')
            k += (size_t)snprintf(buf + k, cap - k, "\\t");
        else if (c < 0x20 || c == 0x7f)
            k += (size_t)snprintf(buf + k, cap - k, "\\x%02x", c);
        else
            buf[k++] = (char)c;
    }
    buf[k] = 0;
    return buf;
}

static struct chat_template *by_name(const char *name)
{
    struct chat_template *t = NULL;
    struct moed_err e = {0};
    if (chat_template_from_name(&t, name, NULL, NULL, &e))
        test_fail(__FILE__, __LINE__, "from_name(%s): %s", name, e.msg);
    return t;
}

static struct chat_template *detect(const char *text)
{
    struct chat_template *t = NULL;
    struct moed_err e = {0};
    if (chat_template_detect(&t, text, NULL, NULL, &e))
        test_fail(__FILE__, __LINE__, "detect: %s", e.msg);
    return t;
}

/* Every span holds bytes of its message's content or reasoning. */
static void check_spans(const struct chat_prompt *p, const struct chat_msg *m, size_t n, int line)
{
    for (size_t i = 0; i < p->n_spans; i++) {
        const struct chat_span *s = &p->spans[i];
        bool ok = s->msg < n && s->off + s->len <= p->len;
        if (ok) {
            const char *a = m[s->msg].content, *r = m[s->msg].reasoning;
            size_t an = m[s->msg].content_len, rn = m[s->msg].reasoning_len;
            ok = (s->len <= an && memmem(a, an, p->text + s->off, s->len)) ||
                 (r && s->len <= rn && memmem(r, rn, p->text + s->off, s->len));
        }
        if (!ok)
            test_fail(__FILE__, line, "span %zu (msg %zu, off %zu, len %zu) is not message text", i,
                      s->msg, s->off, s->len);
    }
}

static bool render_is(const struct chat_template *t, const struct chat_msg *m, size_t n,
                      struct chat_opts o, const char *want, int line)
{
    bool ok = false;
    if (!t)
        return false;
    struct chat_prompt p = {0};
    struct moed_err e = {0};
    if (!o.today)
        o.today = &fixed_day;
    int rc = chat_render(t, m, n, &o, &p, &e);
    if (rc) {
        test_fail(__FILE__, line, "%s: render failed: %s", chat_template_name(t), e.msg);
    } else if (p.len != strlen(want) || memcmp(p.text, want, p.len) || p.text[p.len]) {
        static char a[4096], b[4096];
        test_fail(__FILE__, line, "%s:\n      got  \"%s\"\n      want \"%s\"",
                  chat_template_name(t), esc(p.text, p.len, a, sizeof a),
                  esc(want, strlen(want), b, sizeof b));
    } else {
        check_spans(&p, m, n, line);
        ok = true;
    }
    chat_prompt_free(&p);
    return ok;
}

static void render_fails(const struct chat_template *t, const struct chat_msg *m, size_t n,
                         struct chat_opts o, const char *needle, int line)
{
    if (!t)
        return;
    struct chat_prompt p = {0};
    struct moed_err e = {0};
    o.today = &fixed_day;
    int rc = chat_render(t, m, n, &o, &p, &e);
    if (rc != MOED_EINVAL)
        test_fail(__FILE__, line, "%s: want EINVAL, got %d (%s)", chat_template_name(t), rc,
                  rc ? e.msg : p.text);
    else if (!strstr(e.msg, needle))
        test_fail(__FILE__, line, "%s: message \"%s\" lacks \"%s\"", chat_template_name(t), e.msg,
                  needle);
    chat_prompt_free(&p);
}

static struct chat_opts opts(bool gen)
{
    struct chat_opts o = CHAT_OPTS_DEFAULT;
    o.add_generation_prompt = gen;
    return o;
}

/* ---- the real templates, rendered by jinja2 ------------------------------- */

static char *shared_template(const char *family)
{
    char path[512];
    snprintf(path, sizeof path, "%s/hf-tokenizers/%s/tokenizer_config.json", test_shared_dir(),
             family);
    char *txt = test_read_file(path, NULL);
    if (!txt)
        return NULL;
    cJSON *doc = cJSON_Parse(txt);
    free(txt);
    const char *s = cJSON_GetStringValue(cJSON_GetObjectItem(doc, "chat_template"));
    char *out = s ? strdup(s) : NULL;
    cJSON_Delete(doc);
    return out;
}

static void check_fixture(const char *family, const char *want_name, size_t min_cases)
{
    char path[256];
    snprintf(path, sizeof path, "tests/fixtures/chat/%s.json", family);
    char *txt = test_read_file(path, NULL);
    if (!txt) {
        test_fail(__FILE__, __LINE__, "cannot read %s (run from the repository root)", path);
        return;
    }
    cJSON *doc = cJSON_Parse(txt);
    free(txt);
    if (!doc) {
        test_fail(__FILE__, __LINE__, "%s: bad JSON", path);
        return;
    }
    const char *tmpl = cJSON_GetStringValue(cJSON_GetObjectItem(doc, "template"));
    const char *bos = cJSON_GetStringValue(cJSON_GetObjectItem(doc, "bos_token"));
    const char *eos = cJSON_GetStringValue(cJSON_GetObjectItem(doc, "eos_token"));
    CHECK(tmpl != NULL);
    char *real = shared_template(family);
    if (real)
        CHECK_MSG(tmpl && !strcmp(real, tmpl),
                  "%s: template differs from ../shared; rerun tools/mkchatfixtures.py", path);
    free(real);

    struct chat_template *t = NULL;
    struct moed_err e = {0};
    if (chat_template_detect(&t, tmpl, bos ? bos : "", eos ? eos : "", &e)) {
        test_fail(__FILE__, __LINE__, "%s: %s", path, e.msg);
        cJSON_Delete(doc);
        return;
    }
    CHECK_MSG(!strcmp(chat_template_name(t), want_name), "%s: recognised as %s", path,
              chat_template_name(t));
    CHECK_MSG(!chat_template_warning(t)[0], "%s: warning %s", path, chat_template_warning(t));
    CHECK_EQ(chat_template_adds_bos(t), bos != NULL); /* llama3 writes <|begin_of_text|> */

    size_t n_cases = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(doc, "cases"))
    {
        const char *name = cJSON_GetStringValue(cJSON_GetObjectItem(c, "name"));
        const cJSON *ms = cJSON_GetObjectItem(c, "messages");
        size_t n = (size_t)cJSON_GetArraySize(ms), i = 0;
        struct chat_msg *m = calloc(n ? n : 1, sizeof *m);
        const cJSON *jm;
        cJSON_ArrayForEach(jm, ms)
        {
            const char *role = cJSON_GetStringValue(cJSON_GetObjectItem(jm, "role"));
            const char *content = cJSON_GetStringValue(cJSON_GetObjectItem(jm, "content"));
            const char *reasoning =
                cJSON_GetStringValue(cJSON_GetObjectItem(jm, "reasoning_content"));
            CHECK(!chat_role_parse(role, strlen(role), i, &m[i].role, &e));
            m[i].content = content;
            m[i].content_len = strlen(content);
            if (reasoning) {
                m[i].reasoning = reasoning;
                m[i].reasoning_len = strlen(reasoning);
            }
            i++;
        }
        struct chat_opts o = opts(cJSON_IsTrue(cJSON_GetObjectItem(c, "add_generation_prompt")));
        const cJSON *et = cJSON_GetObjectItem(c, "enable_thinking");
        if (et)
            o.enable_thinking = cJSON_IsTrue(et);
        const char *want = cJSON_GetStringValue(cJSON_GetObjectItem(c, "expected"));
        if (want) {
            if (!render_is(t, m, n, o, want, __LINE__))
                fprintf(stderr, "    (%s case %s)\n", family, name);
        } else {
            struct chat_prompt p = {0};
            CHECK_MSG(chat_render(t, m, n, &o, &p, &e) == MOED_EINVAL,
                      "%s case %s: the template raises, moed rendered", family, name);
            chat_prompt_free(&p);
        }
        free(m);
        n_cases++;
    }
    CHECK_MSG(n_cases >= min_cases, "%s: only %zu cases", path, n_cases);
    chat_template_free(t);
    cJSON_Delete(doc);
}

TEST(chat_qwen3_matches_jinja)
{
    check_fixture("qwen3", "qwen3", 40);
}
TEST(chat_llama3_matches_jinja)
{
    check_fixture("llama3", "llama3", 16);
}

/* ---- formats by name: hand-written expectations ----------------------------- */

/* The conversations most tests share. */
static const struct chat_msg *conv_a(size_t *n)
{
    static struct chat_msg m[4];
    m[0] = SYS("You are terse.");
    m[1] = USR("Hi");
    m[2] = AST(" Hello! ");
    m[3] = USR("Bye");
    *n = 4;
    return m;
}

static const struct chat_msg *conv_c(size_t *n) /* ends with the assistant */
{
    static struct chat_msg m[2];
    m[0] = USR("Q");
    m[1] = AST("A");
    *n = 2;
    return m;
}

TEST(chat_mistral_formats)
{
    size_t na, nc;
    const struct chat_msg *a = conv_a(&na), *c = conv_c(&nc);
    struct chat_template *t = by_name("mistral"); /* Mixtral-8x7B-Instruct's template */
    render_is(t, a, na, opts(true),
              "<s> [INST] You are terse.\n\nHi [/INST]  Hello! </s> [INST] Bye [/INST]", __LINE__);
    render_is(t, c, nc, opts(false), "<s> [INST] Q [/INST] A</s>", __LINE__);
    render_is(t, a + 1, 1, opts(true), "<s> [INST] Hi [/INST]", __LINE__);
    CHECK(chat_template_adds_bos(t));
    chat_template_free(t);

    t = by_name("mistral-legacy"); /* system folded in (the template raises) */
    render_is(t, a, na, opts(true),
              "<s>[INST] You are terse.\n\nHi [/INST] Hello! </s>[INST] Bye [/INST]", __LINE__);
    render_is(t, c, nc, opts(false), "<s>[INST] Q [/INST]A</s>", __LINE__);
    chat_template_free(t);

    /* v3: the system prompt joins the LAST user message, and is dropped
     * when the conversation ends with the assistant; answers trimmed */
    t = by_name("mistral-v3");
    render_is(t, a, na, opts(true),
              "<s>[INST] Hi[/INST] Hello!</s>[INST] You are terse.\n\nBye[/INST]", __LINE__);
    struct chat_msg sc[] = {SYS("S"), USR("Q"), AST(" A ")};
    render_is(t, sc, N(sc), opts(false), "<s>[INST] Q[/INST] A</s>", __LINE__);
    chat_template_free(t);

    t = by_name("mistral-v3-tekken");
    render_is(t, a, na, opts(true),
              "<s>[INST]Hi[/INST] Hello! </s>[INST]You are terse.\n\nBye[/INST]", __LINE__);
    chat_template_free(t);

    t = by_name("mistral-v7");
    render_is(t, a, na, opts(true),
              "<s>[SYSTEM_PROMPT] You are terse.[/SYSTEM_PROMPT][INST] Hi[/INST]  Hello! </s>"
              "[INST] Bye[/INST]",
              __LINE__);
    struct chat_msg mid[] = {USR("a"), SYS("b"), USR("c")}; /* v7 keeps systems in place */
    render_is(t, mid, N(mid), opts(true),
              "<s>[INST] a[/INST][SYSTEM_PROMPT] b[/SYSTEM_PROMPT][INST] c[/INST]", __LINE__);
    chat_template_free(t);

    t = by_name("mistral-v7-tekken");
    render_is(t, a, na, opts(true),
              "<s>[SYSTEM_PROMPT]You are terse.[/SYSTEM_PROMPT][INST]Hi[/INST] Hello! </s>"
              "[INST]Bye[/INST]",
              __LINE__);
    chat_template_free(t);
}

TEST(chat_deepseek_formats)
{
    size_t na, nc;
    const struct chat_msg *a = conv_a(&na), *c = conv_c(&nc);
    struct chat_template *t = by_name("deepseek2"); /* DeepSeek-V2-Lite-Chat */
    render_is(t, a, na, opts(true),
              DS_BOS "You are terse.\n\nUser: Hi\n\nAssistant:  Hello! " DS_EOS
                     "User: Bye\n\nAssistant:",
              __LINE__);
    render_is(t, c, nc, opts(false), DS_BOS "User: Q\n\nAssistant: A" DS_EOS, __LINE__);
    CHECK(chat_template_adds_bos(t));
    chat_template_free(t);

    t = by_name("deepseek3");
    render_is(t, a, na, opts(true),
              DS_BOS "You are terse." DS_USER "Hi" DS_ASSISTANT " Hello! " DS_EOS DS_USER
                     "Bye" DS_ASSISTANT,
              __LINE__);
    /* every system message goes first, joined by a blank line */
    struct chat_msg spread[] = {SYS("S1"), USR("U"), AST("A"), SYS("S2"), USR("U2")};
    render_is(t, spread, N(spread), opts(true),
              DS_BOS "S1\n\nS2" DS_USER "U" DS_ASSISTANT "A" DS_EOS DS_USER "U2" DS_ASSISTANT,
              __LINE__);
    struct chat_msg think[] = {USR("Q"), AST("<think>r</think>\nAns"), USR("Q2")};
    render_is(t, think, N(think), opts(true),
              DS_BOS DS_USER "Q" DS_ASSISTANT "<think>r</think>\nAns" DS_EOS DS_USER
                             "Q2" DS_ASSISTANT,
              __LINE__);
    chat_template_free(t);

    t = by_name("deepseek-r1"); /* reasoning dropped from history; <think> opens */
    render_is(t, think, N(think), opts(true),
              DS_BOS DS_USER "Q" DS_ASSISTANT "\nAns" DS_EOS DS_USER "Q2" DS_ASSISTANT "<think>\n",
              __LINE__);
    chat_template_free(t);

    t = by_name("deepseek3.1");
    struct chat_msg t31[] = {SYS("S"), USR("Q"), AST("r</think>Ans</think>x"), USR("Q2")};
    render_is(t, t31, N(t31), opts(true),
              DS_BOS "S" DS_USER "Q" DS_ASSISTANT "</think>Ans</think>x" DS_EOS DS_USER
                     "Q2" DS_ASSISTANT "</think>",
              __LINE__);
    struct chat_opts think_on = opts(true);
    think_on.enable_thinking = 1;
    render_is(t, t31 + 1, 1, think_on, DS_BOS DS_USER "Q" DS_ASSISTANT "<think>", __LINE__);
    /* no generation prompt after an assistant message */
    render_is(t, c, nc, opts(true), DS_BOS DS_USER "Q" DS_ASSISTANT "</think>A" DS_EOS, __LINE__);
    chat_template_free(t);
}

TEST(chat_tulu_gpt_oss_llama31_chatml)
{
    size_t na, nc;
    const struct chat_msg *a = conv_a(&na), *c = conv_c(&nc);
    struct chat_template *t = by_name("tulu"); /* OLMoE-1B-7B-0924-Instruct */
    render_is(t, a, na, opts(true),
              "<|endoftext|><|system|>\nYou are terse.\n<|user|>\nHi\n<|assistant|>\n Hello! "
              "<|endoftext|>\n<|user|>\nBye\n<|assistant|>\n",
              __LINE__);
    render_is(t, c, nc, opts(false), "<|endoftext|><|user|>\nQ\n<|assistant|>\nA<|endoftext|>",
              __LINE__);
    render_is(t, c, nc, opts(true),
              "<|endoftext|><|user|>\nQ\n<|assistant|>\nA<|endoftext|><|assistant|>\n", __LINE__);
    chat_template_free(t);

    t = by_name("gpt-oss");
    CHECK(!chat_template_adds_bos(t));
#define OSS_SYS(effort)                                                                            \
    "<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\n"       \
    "Knowledge cutoff: 2024-06\nCurrent date: 2025-08-05\n\nReasoning: " effort "\n\n"             \
    "# Valid channels: analysis, commentary, final. Channel must be included for every "           \
    "message.<|end|>"
    render_is(t, a, na, opts(true),
              OSS_SYS("medium") "<|start|>developer<|message|># Instructions\n\nYou are terse.\n\n"
                                "<|end|><|start|>user<|message|>Hi<|end|><|start|>assistant"
                                "<|channel|>final<|message|> Hello! <|end|><|start|>user<|message|>"
                                "Bye<|end|><|start|>assistant",
              __LINE__);
    struct chat_msg r[] = {USR("Q"), AST("A")};
    r[1].reasoning = "R";
    r[1].reasoning_len = 1;
    struct chat_opts hi = opts(false);
    hi.reasoning_effort = "high";
    render_is(t, r, N(r), hi,
              OSS_SYS("high") "<|start|>user<|message|>Q<|end|><|start|>assistant<|channel|>"
                              "analysis<|message|>R<|end|><|start|>assistant<|channel|>final"
                              "<|message|>A<|return|>",
              __LINE__);
    /* reasoning is dropped from history; an empty developer message is not written */
    struct chat_msg h[] = {SYS(""), USR("Q"), AST("A"), USR("Q2")};
    h[2].reasoning = "R";
    h[2].reasoning_len = 1;
    render_is(t, h, N(h), opts(true),
              OSS_SYS("medium") "<|start|>user<|message|>Q<|end|><|start|>assistant<|channel|>"
                                "final<|message|>A<|end|><|start|>user<|message|>Q2<|end|>"
                                "<|start|>assistant",
              __LINE__);
    chat_template_free(t);

    t = by_name("llama3.1"); /* by name: today's date, as Llama 3.2/3.3 */
    render_is(t, a, na, opts(true),
              "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge "
              "Date: December 2023\nToday Date: 05 Aug 2025\n\nYou are terse.<|eot_id|>"
              "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>"
              "assistant<|end_header_id|>\n\nHello!<|eot_id|><|start_header_id|>user"
              "<|end_header_id|>\n\nBye<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
              __LINE__);
    render_is(t, c, nc, opts(false),
              "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge "
              "Date: December 2023\nToday Date: 05 Aug 2025\n\n<|eot_id|><|start_header_id|>user"
              "<|end_header_id|>\n\nQ<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
              "A<|eot_id|>",
              __LINE__);
    chat_template_free(t);

    t = by_name("llama3"); /* by name: the generation prompt only when asked */
    render_is(t, c, nc, opts(false),
              "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nQ<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\nA<|eot_id|>",
              __LINE__);
    chat_template_free(t);

    t = by_name("chatml");
    struct chat_msg tool[] = {USR("Q"), TOOL("R")};
    render_is(t, tool, N(tool), opts(true),
              "<|im_start|>user\nQ<|im_end|>\n<|im_start|>tool\nR<|im_end|>\n<|im_start|>"
              "assistant\n",
              __LINE__);
    CHECK(!chat_template_adds_bos(t));
    chat_template_free(t);

    t = by_name("qwen3-thinking");
    render_is(t, a + 1, 1, opts(true),
              "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n", __LINE__);
    chat_template_free(t);
}

TEST(chat_names)
{
    /* every listed name round-trips, case-insensitively */
    char names[512];
    snprintf(names, sizeof names, "%s", chat_template_names());
    int count = 0;
    for (char *save = NULL, *nm = strtok_r(names, ", ", &save); nm;
         nm = strtok_r(NULL, ", ", &save)) {
        struct chat_template *t = by_name(nm);
        if (t)
            CHECK_MSG(!strcmp(chat_template_name(t), nm), "%s -> %s", nm, chat_template_name(t));
        chat_template_free(t);
        count++;
    }
    CHECK(count >= 16);
    struct chat_template *t = by_name("ChatML");
    CHECK(t && chat_template_family(t) == CHAT_FAMILY_CHATML);
    chat_template_free(t);
    t = by_name("GPT-OSS");
    CHECK(t && chat_template_family(t) == CHAT_FAMILY_GPT_OSS);
    chat_template_free(t);

    struct moed_err e = {0};
    t = (struct chat_template *)1;
    CHECK_EQ(chat_template_from_name(&t, "vicuna", NULL, NULL, &e), MOED_EINVAL);
    CHECK(t == NULL);
    CHECK_MSG(strstr(e.msg, "\"vicuna\"") && strstr(e.msg, "chatml") && strstr(e.msg, "gpt-oss") &&
                  strstr(e.msg, "mistral"),
              "%s", e.msg);
    CHECK_EQ(chat_template_from_name(&t, "bad\nname\x01", NULL, NULL, &e), MOED_EINVAL);
    CHECK(!strchr(e.msg, '\n') && !strchr(e.msg, '\x01'));
    CHECK_EQ(chat_template_from_name(&t, "", NULL, NULL, &e), MOED_EINVAL);
}

/* ---- recognition ------------------------------------------------------------- */

static void detects(const char *text, const char *want, bool bos, int line)
{
    struct chat_template *t = detect(text);
    if (!t)
        return;
    if (strcmp(chat_template_name(t), want) || chat_template_adds_bos(t) != bos ||
        chat_template_warning(t)[0])
        test_fail(__FILE__, line, "recognised as %s (adds_bos %d, warning \"%s\"), want %s (%d)",
                  chat_template_name(t), chat_template_adds_bos(t), chat_template_warning(t), want,
                  bos);
    chat_template_free(t);
}

static void unknown(const char *text, int line)
{
    struct chat_template *t = detect(text);
    if (!t)
        return;
    const char *w = chat_template_warning(t);
    if (strcmp(chat_template_name(t), "chatml") || !strstr(w, "\"chatml\"") ||
        !strstr(w, "chat_template") || strchr(w, '\n'))
        test_fail(__FILE__, line, "fallback %s, warning \"%s\"", chat_template_name(t), w);
    chat_template_free(t);
}

TEST(chat_detect_families)
{
    detects("{{- \"<|start|>system<|message|>\" }}{{- \"<|start|>assistant<|channel|>final"
            "<|message|>\" + message.content + \"<|end|>\" }}",
            "gpt-oss", false, __LINE__);
    detects("{%- for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
            "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}",
            "chatml", false, __LINE__);
    detects("{%- if '</think>' in message.content %}{%- set content = "
            "message.content.split('</think>')[-1] %}{%- endif %}{{- '<|im_start|>' + "
            "message.role + '\\n<think>\\n' }}",
            "qwen3", false, __LINE__);
    /* the generation prompt opening <think>: escaped or real newline, either quote */
    detects("{{- '<|im_start|>' + message.role }}</think>{%- if add_generation_prompt %}"
            "{{- '<|im_start|>assistant\\n<think>\\n' }}{%- endif %}",
            "qwen3-thinking", false, __LINE__);
    detects("{{- \"<|im_start|>assistant\n<think>\n\" }}", "qwen3-thinking", false, __LINE__);
    detects("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content "
            "= '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ "
            "message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = "
            "bos_token + content %}{% endif %}{{ content }}{% endfor %}",
            "llama3", true, __LINE__);
    detects("{{- bos_token }}{%- if not date_string is defined %}{%- set date_string = \"26 Jul "
            "2024\" %}{%- endif %}{{- \"<|start_header_id|>system<|end_header_id|>\\n\\n\" }}{{- "
            "\"Cutting Knowledge Date: December 2023\\n\" }}",
            "llama3.1", true, __LINE__);
    detects("{%- if messages[0]['role'] == 'system' %}{%- set system_message = "
            "messages[0]['content'] %}{%- endif %}{{- bos_token }}{{- ' [INST] ' + system_message "
            "+ '\\n\\n' + message['content'] + ' [/INST]' }}{{- ' ' + message['content'] + "
            "eos_token}}",
            "mistral", true, __LINE__);
    detects("{{- bos_token }}{{- \" [INST] \"\n      +   system_message + \"\\n\\n\" }}", "mistral",
            true, __LINE__);
    detects("{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}{{ "
            "'[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' "
            "%}{{ message['content'] + eos_token}}{% endif %}{% endfor %}",
            "mistral-legacy", true, __LINE__);
    detects("{{- bos_token }}{{- \"[AVAILABLE_TOOLS] [\" }}{{- \"[INST] \" + message[\"content\"] "
            "+ \"[/INST]\" }}{{- \" \" + message[\"content\"]|trim + eos_token}}",
            "mistral-v3", true, __LINE__);
    detects("{{- bos_token }}{{- \"[AVAILABLE_TOOLS][\" }}{{- \"[INST]\" + message[\"content\"] + "
            "\"[/INST]\" }}",
            "mistral-v3-tekken", true, __LINE__);
    detects("{{ bos_token }}{{ '[INST] ' + message['content'] + '[/INST]' }}{{ '[SYSTEM_PROMPT] ' "
            "+ message['content'] + '[/SYSTEM_PROMPT]' }}",
            "mistral-v7", true, __LINE__);
    detects("{{- bos_token }}{{- '[INST]' + message['content'] + '[/INST]' }}{{- "
            "'[SYSTEM_PROMPT]' + message['content'] + '[/SYSTEM_PROMPT]' }}",
            "mistral-v7-tekken", true, __LINE__);
    detects("{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}{{ "
            "'User: ' + message['content'] + '\\n\\n' }}{% elif message['role'] == 'assistant' "
            "%}{{ 'Assistant: ' + message['content'] + eos_token }}{% endif %}{% endfor %}{% if "
            "add_generation_prompt %}{{ 'Assistant:' }}{% endif %}",
            "deepseek2", true, __LINE__);
    detects("{% set ns = namespace(is_first=false, system_prompt='', is_first_sp=true) %}{{ "
            "bos_token }}{{ ns.system_prompt }}{{'" DS_USER
            "' + message['content']}}{{'" DS_ASSISTANT "' + message['content'] + '" DS_EOS "'}}",
            "deepseek3", true, __LINE__);
    detects("{{bos_token}}{{'" DS_USER "' + message['content']}}{% if '</think>' in content %}{% "
            "set content = content.split('</think>')[-1] %}{% endif %}{{'" DS_ASSISTANT
            "<think>\\n'}}",
            "deepseek-r1", true, __LINE__);
    detects(
        "{%- set ns = namespace(is_first_sp=true, is_last_user=false) -%}{{ bos_token }}{{'" DS_USER
        "' + message['content']}}{{'" DS_ASSISTANT "</think>'}}",
        "deepseek3.1", true, __LINE__);
    detects("{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}{{ "
            "'<|user|>\\n' + message['content'] + '\\n' }}{% elif message['role'] == 'assistant' "
            "%}{{ '<|assistant|>\\n'  + message['content'] + eos_token }}{% endif %}{% endfor %}",
            "tulu", true, __LINE__);
    detects("{{- \"<|user|>\n\" +\n message.content + \"\n\" }}{{- \"<|assistant|>\n\" }}", "tulu",
            false, __LINE__);

    unknown(NULL, __LINE__);
    unknown("", __LINE__);
    unknown("{{ messages }}", __LINE__);
    unknown("{% for m in messages %}<|im_start|>{{ m.role }}<|im_sep|>{{ m.content }}{% endfor %}",
            __LINE__);                                                            /* Phi-4 */
    unknown("{{ bos_token }}[INST] <<SYS>>\\n{{ system }}\\n<</SYS>>", __LINE__); /* Llama 2 */
    unknown("{{ '<|user|>\\n' + message['content'] + eos_token }}<|assistant|>",
            __LINE__);                          /* Zephyr */
    unknown("<start_of_turn>user\n", __LINE__); /* Gemma */

    struct chat_template *t = detect(NULL);
    CHECK(t && strstr(chat_template_warning(t), "no tokenizer.chat_template"));
    chat_template_free(t);
}

TEST(chat_detect_variant_details)
{
    struct chat_msg c[] = {USR("Q"), AST("A")};
    /* Llama 3's first template writes the generation prompt whatever the flag */
    struct chat_template *t = detect("{{ bos_token }}<|start_header_id|>{{ m }}<|end_header_id|>"
                                     "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}");
    render_is(t, c, N(c), opts(false),
              "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nQ<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\nA<|eot_id|><|start_header_id|>"
              "assistant<|end_header_id|>\n\n",
              __LINE__);
    chat_template_free(t);
    t = detect("{{ bos_token }}<|start_header_id|><|end_header_id|>{% if add_generation_prompt %}");
    render_is(t, c, N(c), opts(false),
              "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nQ<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\nA<|eot_id|>",
              __LINE__);
    chat_template_free(t);

    /* Llama 3.1: the date the template defaults to, unless it asks for today's */
    const char *l31 = "{{- bos_token }}{%- set date_string = \"26 Jul 2024\" %}<|start_header_id|>"
                      "<|end_header_id|>Cutting Knowledge Date";
    t = detect(l31);
    struct chat_msg u[] = {USR(" Q ")};
    render_is(t, u, 1, opts(true),
              "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge "
              "Date: December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|><|start_header_id|>user"
              "<|end_header_id|>\n\nQ<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
              __LINE__);
    chat_template_free(t);
    t = detect("{{- bos_token }}{%- set date_string = strftime_now(\"%d %b %Y\") %}"
               "<|start_header_id|><|end_header_id|>Cutting Knowledge Date");
    struct tm jan = {.tm_year = 2026 - 1900, .tm_mon = 0, .tm_mday = 9};
    struct chat_opts o = opts(false);
    o.today = &jan;
    render_is(t, u, 1, o,
              "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge "
              "Date: December 2023\nToday Date: 09 Jan 2026\n\n<|eot_id|><|start_header_id|>user"
              "<|end_header_id|>\n\nQ<|eot_id|>",
              __LINE__);
    chat_template_free(t);

    /* ChatML with a default system prompt in the template (Qwen2/2.5), with
     * escapes; a given system message replaces it */
    t = detect("{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + "
               "messages[0]['content'] + '<|im_end|>\\n' }}{%- else %}{{- '<|im_start|>system\\n"
               "You are Qwen, a \\'helpful\\' \\\"bot\\\".<|im_end|>\\n' }}{%- endif %}"
               "{{- '\\n<tool_response>\\n' }}");
    struct chat_msg q[] = {USR("Hi"), TOOL("r1"), TOOL("r2")};
    render_is(t, q, N(q), opts(true),
              "<|im_start|>system\nYou are Qwen, a 'helpful' \"bot\".<|im_end|>\n<|im_start|>user\n"
              "Hi<|im_end|>\n<|im_start|>user\n<tool_response>\nr1\n</tool_response>\n"
              "<tool_response>\nr2\n</tool_response><|im_end|>\n<|im_start|>assistant\n",
              __LINE__);
    struct chat_msg qs[] = {SYS("Mine."), USR("Hi")};
    render_is(t, qs, N(qs), opts(true),
              "<|im_start|>system\nMine.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
              "<|im_start|>assistant\n",
              __LINE__);
    chat_template_free(t);
    /* no default: a literal that ends before <|im_end|> is not one */
    t = detect("{{ '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}");
    render_is(t, q, 1, opts(true), "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
              __LINE__);
    chat_template_free(t);

    /* the vocabulary's BOS/EOS texts, and a template without {{ bos_token }} */
    struct moed_err e = {0};
    REQUIRE(!chat_template_detect(&t,
                                  "{{ '<|user|>\\n' + message['content'] + '\\n' }}"
                                  "<|assistant|>",
                                  "<B>", "<E>", &e));
    CHECK(!chat_template_adds_bos(t));
    render_is(t, c, N(c), opts(false), "<|user|>\nQ\n<|assistant|>\nA<E>", __LINE__);
    chat_template_free(t);
    REQUIRE(!chat_template_from_name(&t, "mistral", "", "</s>", &e));
    CHECK(!chat_template_adds_bos(t)); /* no BOS text: nothing written, nothing to skip */
    render_is(t, c, N(c), opts(false), " [INST] Q [/INST] A</s>", __LINE__);
    chat_template_free(t);
}

/* A hostile template costs one pass, whatever it repeats. */
TEST(chat_detect_hostile)
{
    size_t n = 1 << 20;
    char *s = malloc(n + 1);
    REQUIRE(s);
    static const char *const pieces[] = {"<|im_start|>system\\n", "date_string   ", "'  ", "\\"};
    for (size_t p = 0; p < N(pieces); p++) {
        size_t k = strlen(pieces[p]), i = 0;
        for (; i + k <= n; i += k)
            memcpy(s + i, pieces[p], k);
        memset(s + i, ' ', n - i);
        s[n] = 0;
        struct chat_template *t = detect(s);
        CHECK(t != NULL);
        chat_template_free(t);
    }
    /* date_string again, behind a Llama 3.1 header */
    static const char head[] = "<|start_header_id|><|end_header_id|>Cutting Knowledge Date";
    for (size_t i = 0; i + 14 <= n; i += 14)
        memcpy(s + i, "date_string   ", 14);
    memcpy(s, head, strlen(head));
    struct chat_template *t = detect(s);
    CHECK(t && !strcmp(chat_template_name(t), "llama3.1"));
    chat_template_free(t);
    free(s);
}

/* ---- validation ---------------------------------------------------------------- */

TEST(chat_validation)
{
    struct chat_template *t = by_name("mistral");
    struct chat_opts o = opts(true);
    render_fails(t, NULL, 0, o, "messages: empty list", __LINE__);
    struct chat_msg two_users[] = {SYS("S"), USR("a"), USR("b")};
    render_fails(t, two_users, N(two_users), o, "messages[2]:", __LINE__);
    render_fails(t, two_users, N(two_users), o, "expected assistant, got user", __LINE__);
    struct chat_msg ast_first[] = {AST("a"), USR("b")};
    render_fails(t, ast_first, N(ast_first), o, "messages[0]:", __LINE__);
    struct chat_msg sys_mid[] = {USR("a"), AST("b"), SYS("c"), USR("d")};
    render_fails(t, sys_mid, N(sys_mid), o,
                 "messages[2]: the mistral chat template accepts a "
                 "system message only as the first message",
                 __LINE__);
    struct chat_msg sys_only[] = {SYS("S")};
    render_fails(t, sys_only, 1, o, "needs a user message", __LINE__);
    struct chat_msg tool[] = {USR("a"), TOOL("b")};
    render_fails(t, tool, N(tool), o, "messages[1]: role \"tool\" is not supported", __LINE__);
    struct chat_msg bad_role[] = {USR("a"),
                                  {.role = (enum chat_role)7, .content = "x", .content_len = 1}};
    render_fails(t, bad_role, N(bad_role), o, "messages[1].role: unknown role 7", __LINE__);
    struct chat_msg null_text[] = {{.role = CHAT_ROLE_USER, .content = NULL, .content_len = 3}};
    render_fails(t, null_text, 1, o, "messages[0]", __LINE__);
    chat_template_free(t);

    t = by_name("gpt-oss");
    render_fails(t, sys_mid, N(sys_mid), o,
                 "messages[2]: the gpt-oss chat template accepts a "
                 "system message only as the first message",
                 __LINE__);
    struct chat_msg tagged[] = {USR("a"), AST("x<|channel|>final<|message|>y"), USR("b")};
    render_fails(t, tagged, N(tagged), o, "messages[1]: assistant text holds", __LINE__);
    tagged[1] = AST("ok");
    tagged[1].reasoning = "<|channel|>analysis<|message|>";
    tagged[1].reasoning_len = strlen(tagged[1].reasoning);
    render_fails(t, tagged, N(tagged), o, "messages[1]", __LINE__);
    struct chat_msg fine[] = {USR("a")};
    o.reasoning_effort = "extreme";
    render_fails(t, fine, 1, o, "reasoning_effort", __LINE__);
    o = opts(true);
    o.enable_thinking = 2;
    render_fails(t, fine, 1, o, "enable_thinking", __LINE__);
    o = opts(true);
    struct tm bad = {.tm_mon = 12, .tm_mday = 1};
    o.today = &bad;
    struct chat_prompt p = {0};
    struct moed_err e = {0};
    CHECK_EQ(chat_render(t, fine, 1, &o, &p, &e), MOED_EINVAL);
    o.today = NULL; /* today, local time */
    CHECK_EQ(chat_render(t, fine, 1, &o, &p, &e), 0);
    CHECK(p.text && strstr(p.text, "Current date: 2"));
    chat_prompt_free(&p);
    chat_template_free(t);

    static const char *const no_tool[] = {"deepseek2", "deepseek3",  "tulu",
                                          "llama3.1",  "mistral-v7", "gpt-oss"};
    for (size_t i = 0; i < N(no_tool); i++) {
        t = by_name(no_tool[i]);
        render_fails(t, tool, N(tool), opts(true), "role \"tool\" is not supported", __LINE__);
        chat_template_free(t);
    }
    /* formats that can express these orders render them */
    static const char *const lenient[] = {"chatml", "qwen3", "llama3", "deepseek2", "tulu"};
    for (size_t i = 0; i < N(lenient); i++) {
        t = by_name(lenient[i]);
        struct chat_prompt q = {0};
        CHECK_MSG(!chat_render(t, sys_mid, N(sys_mid), &o, &q, &e), "%s: %s", lenient[i], e.msg);
        CHECK_MSG(!chat_render(t, two_users, N(two_users), &o, &q, &e), "%s: %s", lenient[i],
                  e.msg);
        chat_prompt_free(&q);
        chat_template_free(t);
    }
}

TEST(chat_roles)
{
    enum chat_role r;
    struct moed_err e = {0};
    CHECK(!chat_role_parse("assistant", 9, 0, &r, &e) && r == CHAT_ROLE_ASSISTANT);
    CHECK(!chat_role_parse("developer", 9, 0, &r, &e) && r == CHAT_ROLE_SYSTEM);
    CHECK(!chat_role_parse("tool", 4, 0, &r, &e) && r == CHAT_ROLE_TOOL);
    CHECK(!chat_role_parse("systemX", 6, 0, &r, &e) && r == CHAT_ROLE_SYSTEM);
    CHECK_EQ(chat_role_parse("function", 8, 5, &r, &e), MOED_EINVAL);
    CHECK_MSG(strstr(e.msg, "messages[5].role") && strstr(e.msg, "\"function\""), "%s", e.msg);
    CHECK_EQ(chat_role_parse("User", 4, 0, &r, &e), MOED_EINVAL);
    CHECK_EQ(chat_role_parse("", 0, 0, &r, &e), MOED_EINVAL);
    char hostile[200];
    memset(hostile, '\n', sizeof hostile);
    hostile[3] = '"';
    CHECK_EQ(chat_role_parse(hostile, sizeof hostile, 1, &r, &e), MOED_EINVAL);
    CHECK(!strchr(e.msg, '\n') && strlen(e.msg) < 300);
    CHECK(!strcmp(chat_role_name(CHAT_ROLE_USER), "user"));
    CHECK(!strcmp(chat_role_name((enum chat_role)9), "?"));
}

/* Jinja's |trim on bytes that are not UTF-8, and reuse of one prompt. */
TEST(chat_trim_and_reuse)
{
    struct chat_template *t = by_name("llama3");
    struct chat_msg m[] = {USR("\xa0 x \xc2"), AST("\xe2\x80\xa8\t\xe3\x80\x80y\xe2\x80")};
    render_is(t, m, N(m), opts(false),
              "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n\xa0 x \xc2<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\ny\xe2\x80<|eot_id|>",
              __LINE__);
    struct chat_prompt p = {0};
    struct moed_err e = {0};
    struct chat_opts o = opts(true);
    o.today = &fixed_day;
    struct chat_msg big[] = {USR("")};
    size_t n = 100000;
    char *s = malloc(n);
    REQUIRE(s);
    memset(s, 'x', n);
    big[0].content = s;
    big[0].content_len = n;
    CHECK(!chat_render(t, big, 1, &o, &p, &e) && p.len > n && p.n_spans == 1 &&
          p.spans[0].len == n);
    CHECK(!chat_render(t, m, 1, &o, &p, &e) && p.len < 200 && p.n_spans == 1 &&
          strlen(p.text) == p.len);
    free(s);
    chat_prompt_free(&p);
    chat_template_free(t);
}

/* ---- the daemon's entry: a GGUF's tokenizer ------------------------------------ */

static struct tok *vocab_with_template(const char *tmpl)
{
    static const char *toks[] = {"<unk>", "<s>", "</s>",
                                 "\xe2\x96\x81"
                                 "a",
                                 "a"};
    static const int32_t types[] = {2, 3, 3, 1, 1};
    static const float scores[] = {0, 0, 0, -1, -2};
    struct gguf_writer *w = gguf_writer_new(3);
    if (!w)
        return NULL;
    gguf_writer_set_str(w, "tokenizer.ggml.model", "llama");
    gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", toks, 5);
    gguf_writer_set_arr(w, "tokenizer.ggml.token_type", GGUF_I32, types, 5);
    gguf_writer_set_arr(w, "tokenizer.ggml.scores", GGUF_F32, scores, 5);
    gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", 1);
    gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", 2);
    if (tmpl)
        gguf_writer_set_str(w, "tokenizer.chat_template", tmpl);
    uint8_t *buf = NULL;
    size_t size = 0;
    struct moed_err e = {0};
    struct tok *t = NULL;
    if (!gguf_writer_write_mem(w, &buf, &size, &e)) {
        struct gguf g;
        if (!gguf_open_mem(&g, buf, size, &e)) {
            if (tok_load(&t, &g, &e))
                t = NULL;
            gguf_close(&g);
        }
    }
    if (!t)
        test_fail(__FILE__, __LINE__, "synthetic vocabulary: %s", e.msg);
    gguf_writer_free(w);
    free(buf);
    return t;
}

TEST(chat_for_tok)
{
    struct tok *tk = vocab_with_template("{{ bos_token }}{% for message in messages %}{% if "
                                         "message['role'] == 'user' %}{{ '[INST] ' "
                                         "+ message['content'] + ' [/INST]' }}{% else %}{{ "
                                         "message['content'] + eos_token }}{% endif "
                                         "%}{% endfor %}");
    REQUIRE(tk);
    struct chat_template *t = NULL;
    struct moed_err e = {0};
    REQUIRE(!chat_template_for_tok(&t, tk, NULL, &e));
    CHECK(!strcmp(chat_template_name(t), "mistral-legacy") && chat_template_adds_bos(t));
    struct chat_msg c[] = {USR("Q"), AST("A"), USR("R")};
    render_is(t, c, N(c), opts(true), "<s>[INST] Q [/INST]A</s>[INST] R [/INST]", __LINE__);
    chat_template_free(t);

    /* the option wins over the file's template */
    REQUIRE(!chat_template_for_tok(&t, tk, "chatml", &e));
    CHECK(!strcmp(chat_template_name(t), "chatml") && !chat_template_adds_bos(t));
    chat_template_free(t);
    REQUIRE(!chat_template_for_tok(&t, tk, "tulu", &e));
    render_is(t, c, 2, opts(false), "<s><|user|>\nQ\n<|assistant|>\nA</s>", __LINE__);
    chat_template_free(t);
    t = NULL;
    CHECK_EQ(chat_template_for_tok(&t, tk, "llama2", &e), MOED_EINVAL);
    CHECK(t == NULL && strstr(e.msg, "llama2") && strstr(e.msg, "valid:"));
    REQUIRE(!chat_template_for_tok(&t, tk, "", &e)); /* empty: the file's */
    CHECK(!strcmp(chat_template_name(t), "mistral-legacy"));
    chat_template_free(t);
    tok_free(tk);

    tk = vocab_with_template(NULL);
    REQUIRE(tk);
    REQUIRE(!chat_template_for_tok(&t, tk, NULL, &e));
    CHECK(!strcmp(chat_template_name(t), "chatml") && chat_template_warning(t)[0]);
    chat_template_free(t);
    tok_free(tk);
}
