/*
 * The built-in chat formats: one function per family, each written to read
 * like the published Jinja template it replaces (the template's lines are
 * quoted where the C is not obvious).  The message list has been validated
 * (chat.c), so a renderer only renders.  Literal markers go out with
 * chat_lit, message text with chat_text (which records its span).
 */
#include <stdio.h>
#include <string.h>

#include "model/chat_impl.h"

#define DS_USER CHAT_DS_USER
#define DS_ASSISTANT CHAT_DS_ASSISTANT
#define DS_EOS CHAT_DS_EOS
#define THINK_LEN (sizeof "<think>" - 1)
#define END_THINK_LEN (sizeof "</think>" - 1)

static void bos(const struct chat_template *t, struct chat_out *o)
{
    if (t->emit_bos)
        chat_put(o, t->bos, t->bos_len);
}

static void eos(const struct chat_template *t, struct chat_out *o)
{
    chat_put(o, t->eos, t->eos_len);
}

static void content(const struct chat_msg *m, size_t i, struct chat_out *o)
{
    chat_text(o, m[i].content, m[i].content_len, i);
}

/* ---- ChatML and Qwen3 ------------------------------------------------------- */

/* Qwen's tool results: consecutive tool messages share one user turn. */
static void qwen_tool(const struct chat_msg *m, size_t n, size_t i, struct chat_out *o)
{
    if (i == 0 || m[i - 1].role != CHAT_ROLE_TOOL)
        chat_lit(o, "<|im_start|>user");
    chat_lit(o, "\n<tool_response>\n");
    content(m, i, o);
    chat_lit(o, "\n</tool_response>");
    if (i == n - 1 || m[i + 1].role != CHAT_ROLE_TOOL)
        chat_lit(o, "<|im_end|>\n");
}

static void chatml_turn(const char *role, const struct chat_msg *m, size_t i, struct chat_out *o)
{
    chat_lit(o, "<|im_start|>");
    chat_lit(o, role);
    chat_lit(o, "\n");
    content(m, i, o);
    chat_lit(o, "<|im_end|>\n");
}

static void render_chatml(const struct chat_template *t, const struct chat_msg *m, size_t n,
                          const struct chat_opts *opt, struct chat_out *o)
{
    bos(t, o);
    if (t->default_system && m[0].role != CHAT_ROLE_SYSTEM) {
        chat_lit(o, "<|im_start|>system\n");
        chat_put(o, t->default_system, t->default_system_len);
        chat_lit(o, "<|im_end|>\n");
    }
    for (size_t i = 0; i < n; i++) {
        if (m[i].role == CHAT_ROLE_TOOL && t->tool_groups)
            qwen_tool(m, n, i, o);
        else
            chatml_turn(chat_role_name(m[i].role), m, i, o);
    }
    if (opt->add_generation_prompt)
        chat_lit(o, "<|im_start|>assistant\n");
}

static bool has_prefix(const char *s, size_t n, const char *p)
{
    size_t k = strlen(p);
    return n >= k && !memcmp(s, p, k);
}

static bool has_suffix(const char *s, size_t n, const char *p)
{
    size_t k = strlen(p);
    return n >= k && !memcmp(s + n - k, p, k);
}

/*
 * Qwen3.  The template keeps an assistant message's reasoning only after
 * the last real user query (a user message that is not a wrapped
 * <tool_response>), and there only for the last message or one that has
 * reasoning:
 *   content = message.content; reasoning_content = message.reasoning_content
 *   or, when content holds '</think>':
 *     content = content.split('</think>')[-1].lstrip('\n')
 *     reasoning = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n')
 *   after the last query, if loop.last or reasoning:
 *     '<|im_start|>assistant\n<think>\n' + reasoning.strip('\n') + '\n</think>\n\n'
 *     + content.lstrip('\n')
 */
static void qwen3_assistant(const struct chat_msg *m, size_t n, size_t i, size_t last_query,
                            struct chat_out *o)
{
    const char *c = m[i].content, *r = "";
    size_t cn = m[i].content_len, rn = 0;
    if (m[i].reasoning) {
        r = m[i].reasoning;
        rn = m[i].reasoning_len;
    } else if (chat_find(c, cn, "</think>")) {
        const char *last = chat_rfind(c, cn, "</think>");
        const char *first = chat_find(c, cn, "</think>");
        r = c;
        rn = (size_t)(first - c);
        chat_rstrip_ch(&r, &rn, '\n');
        const char *open = chat_rfind(r, rn, "<think>");
        if (open) {
            rn -= (size_t)(open + THINK_LEN - r);
            r = open + THINK_LEN;
        }
        chat_lstrip_ch(&r, &rn, '\n');
        cn -= (size_t)(last + END_THINK_LEN - c);
        c = last + END_THINK_LEN;
        chat_lstrip_ch(&c, &cn, '\n');
    }
    chat_lit(o, "<|im_start|>assistant\n");
    if (i > last_query && (i == n - 1 || rn > 0)) {
        chat_lstrip_ch(&r, &rn, '\n');
        chat_rstrip_ch(&r, &rn, '\n');
        chat_lit(o, "<think>\n");
        chat_text(o, r, rn, i);
        chat_lit(o, "\n</think>\n\n");
        chat_lstrip_ch(&c, &cn, '\n');
    }
    chat_text(o, c, cn, i);
    chat_lit(o, "<|im_end|>\n");
}

static void render_qwen3(const struct chat_template *t, const struct chat_msg *m, size_t n,
                         const struct chat_opts *opt, struct chat_out *o)
{
    size_t last_query = n - 1;
    for (size_t i = n; i-- > 0;) {
        if (m[i].role == CHAT_ROLE_USER &&
            !(has_prefix(m[i].content, m[i].content_len, "<tool_response>") &&
              has_suffix(m[i].content, m[i].content_len, "</tool_response>"))) {
            last_query = i;
            break;
        }
    }
    if (m[0].role == CHAT_ROLE_SYSTEM)
        chatml_turn("system", m, 0, o);
    for (size_t i = 0; i < n; i++) {
        switch (m[i].role) {
        case CHAT_ROLE_SYSTEM:
            if (i > 0)
                chatml_turn("system", m, i, o);
            break;
        case CHAT_ROLE_USER: chatml_turn("user", m, i, o); break;
        case CHAT_ROLE_ASSISTANT: qwen3_assistant(m, n, i, last_query, o); break;
        default: qwen_tool(m, n, i, o); break;
        }
    }
    if (opt->add_generation_prompt) {
        chat_lit(o, "<|im_start|>assistant\n");
        if (t->v == CHAT_V_QWEN3_THINKING)
            chat_lit(o, "<think>\n");
        else if (opt->enable_thinking == 0)
            chat_lit(o, "<think>\n\n</think>\n\n");
    }
}

/* ---- Llama 3 ----------------------------------------------------------------- */

static void llama3_turn(const char *role, const struct chat_msg *m, size_t i, struct chat_out *o)
{
    /* '<|start_header_id|>' + role + '<|end_header_id|>\n\n' + content | trim + '<|eot_id|>' */
    const char *c = m[i].content;
    size_t cn = m[i].content_len;
    chat_trim(&c, &cn);
    chat_lit(o, "<|start_header_id|>");
    chat_lit(o, role);
    chat_lit(o, "<|end_header_id|>\n\n");
    chat_text(o, c, cn, i);
    chat_lit(o, "<|eot_id|>");
}

static void render_llama3(const struct chat_template *t, const struct chat_msg *m, size_t n,
                          const struct chat_opts *opt, const struct tm *today, struct chat_out *o)
{
    static const char *const mon[12] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                        "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    size_t start = 0;
    bos(t, o);
    if (t->v == CHAT_V_LLAMA31) {
        /* The system message, trimmed, goes into a system header that is
         * always written: knowledge cut-off and date first. */
        const char *s = "";
        size_t sn = 0;
        if (m[0].role == CHAT_ROLE_SYSTEM) {
            s = m[0].content;
            sn = m[0].content_len;
            chat_trim(&s, &sn);
            start = 1;
        }
        char date[40];
        if (t->date_today) /* strftime_now("%d %b %Y") */
            snprintf(date, sizeof date, "%02d %s %d", today->tm_mday, mon[today->tm_mon],
                     today->tm_year + 1900);
        else
            snprintf(date, sizeof date, "%s", t->date_literal);
        chat_lit(o, "<|start_header_id|>system<|end_header_id|>\n\n"
                    "Cutting Knowledge Date: December 2023\n"
                    "Today Date: ");
        chat_lit(o, date);
        chat_lit(o, "\n\n");
        chat_text(o, s, sn, 0);
        chat_lit(o, "<|eot_id|>");
    }
    for (size_t i = start; i < n; i++)
        llama3_turn(chat_role_name(m[i].role), m, i, o);
    if (opt->add_generation_prompt || t->gen_always)
        chat_lit(o, "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

/* ---- Mistral ------------------------------------------------------------------ */

/* Mistral's [INST] formats.  Their templates take an optional first system
 * message out of the list (validation made the rest alternate for all but
 * v7), and differ in spaces, in where the system text goes and in trimming. */
static void render_mistral(const struct chat_template *t, const struct chat_msg *m, size_t n,
                           struct chat_out *o)
{
    bool v7 = t->v == CHAT_V_MISTRAL_V7 || t->v == CHAT_V_MISTRAL_V7_TEKKEN;
    bool sys = !v7 && m[0].role == CHAT_ROLE_SYSTEM;
    size_t start = sys;
    bos(t, o);
    for (size_t i = start; i < n; i++) {
        bool first = i == start, last = i == n - 1;
        const char *c = m[i].content;
        size_t cn = m[i].content_len;
        switch (t->v) {
        case CHAT_V_MISTRAL_V1:
            /* ' [INST] ' + (first: system + '\n\n') + content + ' [/INST]';
             * ' ' + content + eos_token */
            if (m[i].role == CHAT_ROLE_USER) {
                chat_lit(o, " [INST] ");
                if (first && sys) {
                    content(m, 0, o);
                    chat_lit(o, "\n\n");
                }
                content(m, i, o);
                chat_lit(o, " [/INST]");
            } else {
                chat_lit(o, " ");
                content(m, i, o);
                eos(t, o);
            }
            break;
        case CHAT_V_MISTRAL_LEGACY:
            /* '[INST] ' + content + ' [/INST]'; content + eos_token.  The
             * template has no system message (it raises); moed folds it into
             * the first user message as the v1 template does. */
            if (m[i].role == CHAT_ROLE_USER) {
                chat_lit(o, "[INST] ");
                if (first && sys) {
                    content(m, 0, o);
                    chat_lit(o, "\n\n");
                }
                content(m, i, o);
                chat_lit(o, " [/INST]");
            } else {
                content(m, i, o);
                eos(t, o);
            }
            break;
        case CHAT_V_MISTRAL_V3:
        case CHAT_V_MISTRAL_V3_TEKKEN: {
            /* '[INST] ' + (loop.last and system: system + '\n\n') + content + '[/INST]';
             * v3: ' ' + content|trim + eos_token; tekken: no spaces, no trim */
            bool tekken = t->v == CHAT_V_MISTRAL_V3_TEKKEN;
            if (m[i].role == CHAT_ROLE_USER) {
                chat_lit(o, tekken ? "[INST]" : "[INST] ");
                if (last && sys) {
                    content(m, 0, o);
                    chat_lit(o, "\n\n");
                }
                content(m, i, o);
                chat_lit(o, "[/INST]");
            } else {
                if (!tekken) {
                    chat_trim(&c, &cn);
                    chat_lit(o, " ");
                }
                chat_text(o, c, cn, i);
                eos(t, o);
            }
            break;
        }
        default: { /* v7: system prompts stay where they are */
            bool tekken = t->v == CHAT_V_MISTRAL_V7_TEKKEN;
            if (m[i].role == CHAT_ROLE_SYSTEM) {
                chat_lit(o, tekken ? "[SYSTEM_PROMPT]" : "[SYSTEM_PROMPT] ");
                content(m, i, o);
                chat_lit(o, "[/SYSTEM_PROMPT]");
            } else if (m[i].role == CHAT_ROLE_USER) {
                chat_lit(o, tekken ? "[INST]" : "[INST] ");
                content(m, i, o);
                chat_lit(o, "[/INST]");
            } else {
                if (!tekken)
                    chat_lit(o, " ");
                content(m, i, o);
                eos(t, o);
            }
            break;
        }
        }
    }
}

/* ---- DeepSeek ------------------------------------------------------------------ */

static void render_deepseek2(const struct chat_template *t, const struct chat_msg *m, size_t n,
                             const struct chat_opts *opt, struct chat_out *o)
{
    bos(t, o);
    for (size_t i = 0; i < n; i++) {
        if (m[i].role == CHAT_ROLE_USER) {
            chat_lit(o, "User: ");
            content(m, i, o);
            chat_lit(o, "\n\n");
        } else if (m[i].role == CHAT_ROLE_ASSISTANT) {
            chat_lit(o, "Assistant: ");
            content(m, i, o);
            eos(t, o);
        } else {
            content(m, i, o);
            chat_lit(o, "\n\n");
        }
    }
    if (opt->add_generation_prompt)
        chat_lit(o, "Assistant:");
}

/*
 * DeepSeek-V3.1: the assistant marker is written only after a user message
 * and is followed by </think> (a non-thinking answer; <think> opens a
 * thinking one in the generation prompt when thinking is on, off by
 * default); history keeps what follows the first </think>; the generation
 * prompt comes only after a user message.
 */
static void render_deepseek31(const struct chat_msg *m, size_t n, const struct chat_opts *opt,
                              struct chat_out *o)
{
    bool after_user = false;
    for (size_t i = 0; i < n; i++) {
        if (m[i].role == CHAT_ROLE_USER) {
            chat_lit(o, DS_USER);
            content(m, i, o);
            after_user = true;
        } else if (m[i].role == CHAT_ROLE_ASSISTANT) {
            if (after_user)
                chat_lit(o, DS_ASSISTANT "</think>");
            after_user = false;
            const char *c = m[i].content;
            size_t cn = m[i].content_len;
            const char *end_think = chat_find(c, cn, "</think>");
            if (end_think) { /* content.split('</think>', 1)[1] */
                cn -= (size_t)(end_think + END_THINK_LEN - c);
                c = end_think + END_THINK_LEN;
            }
            chat_text(o, c, cn, i);
            chat_lit(o, DS_EOS);
        }
    }
    if (opt->add_generation_prompt && after_user)
        chat_lit(o, opt->enable_thinking == 1 ? DS_ASSISTANT "<think>" : DS_ASSISTANT "</think>");
}

static void render_deepseek3(const struct chat_template *t, const struct chat_msg *m, size_t n,
                             const struct chat_opts *opt, struct chat_out *o)
{
    /* {{ bos_token }}{{ ns.system_prompt }}: every system message, wherever
     * it stands, joined by '\n\n' (V3, R1), or only the last one (the
     * R1-Distill templates) */
    bos(t, o);
    size_t last_sys = n;
    for (size_t i = 0; i < n; i++)
        if (m[i].role == CHAT_ROLE_SYSTEM)
            last_sys = i;
    bool any = false;
    for (size_t i = 0; i < n; i++) {
        if (m[i].role != CHAT_ROLE_SYSTEM || (!t->ds_join_system && i != last_sys))
            continue;
        if (any)
            chat_lit(o, "\n\n");
        content(m, i, o);
        any = true;
    }
    if (t->v == CHAT_V_DEEPSEEK31) {
        render_deepseek31(m, n, opt, o);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        if (m[i].role == CHAT_ROLE_USER) {
            chat_lit(o, DS_USER);
            content(m, i, o);
        } else if (m[i].role == CHAT_ROLE_ASSISTANT) {
            const char *c = m[i].content;
            size_t cn = m[i].content_len;
            const char *end_think = t->ds_strip_think ? chat_rfind(c, cn, "</think>") : NULL;
            if (end_think) { /* content.split('</think>')[-1] */
                cn -= (size_t)(end_think + END_THINK_LEN - c);
                c = end_think + END_THINK_LEN;
            }
            chat_lit(o, DS_ASSISTANT);
            chat_text(o, c, cn, i);
            chat_lit(o, DS_EOS);
        }
    }
    if (opt->add_generation_prompt) {
        chat_lit(o, DS_ASSISTANT);
        if (t->ds_gen_think)
            chat_lit(o, "<think>\n");
    }
}

/* ---- Tulu (OLMoE, OLMo-2) ----------------------------------------------------- */

static void render_tulu(const struct chat_template *t, const struct chat_msg *m, size_t n,
                        const struct chat_opts *opt, struct chat_out *o)
{
    bos(t, o);
    for (size_t i = 0; i < n; i++) {
        bool last = i == n - 1;
        if (m[i].role == CHAT_ROLE_SYSTEM || m[i].role == CHAT_ROLE_USER) {
            chat_lit(o, m[i].role == CHAT_ROLE_SYSTEM ? "<|system|>\n" : "<|user|>\n");
            content(m, i, o);
            chat_lit(o, "\n");
        } else {
            /* '<|assistant|>\n' + content + eos_token (+ '\n' unless loop.last) */
            chat_lit(o, "<|assistant|>\n");
            content(m, i, o);
            eos(t, o);
            if (!last)
                chat_lit(o, "\n");
        }
        if (last && opt->add_generation_prompt) /* inside the loop in the template */
            chat_lit(o, "<|assistant|>\n");
    }
}

/* ---- gpt-oss (harmony) ----------------------------------------------------------- */

static void render_gpt_oss(const struct chat_msg *m, size_t n, const struct chat_opts *opt,
                           const struct tm *today, struct chat_out *o)
{
    char date[48];
    snprintf(date, sizeof date, "%04d-%02d-%02d", today->tm_year + 1900, today->tm_mon + 1,
             today->tm_mday);
    chat_lit(o, "<|start|>system<|message|>"
                "You are ChatGPT, a large language model trained by OpenAI.\n"
                "Knowledge cutoff: 2024-06\n"
                "Current date: ");
    chat_lit(o, date);
    chat_lit(o, "\n\nReasoning: ");
    chat_lit(o, opt->reasoning_effort ? opt->reasoning_effort : "medium");
    chat_lit(o, "\n\n# Valid channels: analysis, commentary, final. "
                "Channel must be included for every message.<|end|>");
    size_t start = 0;
    if (m[0].role == CHAT_ROLE_SYSTEM) { /* the developer message */
        start = 1;
        if (m[0].content_len) {
            chat_lit(o, "<|start|>developer<|message|># Instructions\n\n");
            content(m, 0, o);
            chat_lit(o, "\n\n<|end|>");
        }
    }
    for (size_t i = start; i < n; i++) {
        if (m[i].role == CHAT_ROLE_USER) {
            chat_lit(o, "<|start|>user<|message|>");
            content(m, i, o);
            chat_lit(o, "<|end|>");
            continue;
        }
        /* Reasoning is dropped from history; only a final assistant turn
         * without a generation prompt (training data) keeps it, and ends
         * with <|return|>. */
        bool final = i == n - 1 && !opt->add_generation_prompt;
        if (final && m[i].reasoning) {
            chat_lit(o, "<|start|>assistant<|channel|>analysis<|message|>");
            chat_text(o, m[i].reasoning, m[i].reasoning_len, i);
            chat_lit(o, "<|end|>");
        }
        chat_lit(o, "<|start|>assistant<|channel|>final<|message|>");
        content(m, i, o);
        chat_lit(o, final ? "<|return|>" : "<|end|>");
    }
    if (opt->add_generation_prompt)
        chat_lit(o, "<|start|>assistant");
}

void chat_fmt_render(const struct chat_template *t, const struct chat_msg *m, size_t n,
                     const struct chat_opts *opt, const struct tm *today, struct chat_out *o)
{
    switch (t->family) {
    case CHAT_FAMILY_CHATML: render_chatml(t, m, n, opt, o); break;
    case CHAT_FAMILY_QWEN3: render_qwen3(t, m, n, opt, o); break;
    case CHAT_FAMILY_LLAMA3: render_llama3(t, m, n, opt, today, o); break;
    case CHAT_FAMILY_MISTRAL: render_mistral(t, m, n, o); break;
    case CHAT_FAMILY_DEEPSEEK2: render_deepseek2(t, m, n, opt, o); break;
    case CHAT_FAMILY_DEEPSEEK3: render_deepseek3(t, m, n, opt, o); break;
    case CHAT_FAMILY_TULU: render_tulu(t, m, n, opt, o); break;
    case CHAT_FAMILY_GPT_OSS: render_gpt_oss(m, n, opt, today, o); break;
    }
}
