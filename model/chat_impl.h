/* Internals shared by model/chat.c (names, detection, validation) and
 * model/chat_fmt.c (the renderers).  Not part of the API. */
#ifndef MOED_MODEL_CHAT_IMPL_H
#define MOED_MODEL_CHAT_IMPL_H

#include "model/chat.h"

/* DeepSeek's markers (U+FF5C fullwidth bars, U+2581 lower one-eighth blocks). */
/* The strings are split where a hex escape must end before a letter. */
/* clang-format off */
#define CHAT_DS_BOS "<\xef\xbd\x9c" "begin\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>"
#define CHAT_DS_EOS "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>"
#define CHAT_DS_USER "<\xef\xbd\x9cUser\xef\xbd\x9c>"
#define CHAT_DS_ASSISTANT "<\xef\xbd\x9c" "Assistant\xef\xbd\x9c>"
/* clang-format on */

/* One row of chat.c's format table per variant, in this order. */
enum chat_variant {
    CHAT_V_CHATML,
    CHAT_V_QWEN3,
    CHAT_V_QWEN3_THINKING,
    CHAT_V_LLAMA3,
    CHAT_V_LLAMA31,
    CHAT_V_MISTRAL_V1,
    CHAT_V_MISTRAL_LEGACY,
    CHAT_V_MISTRAL_V3,
    CHAT_V_MISTRAL_V3_TEKKEN,
    CHAT_V_MISTRAL_V7,
    CHAT_V_MISTRAL_V7_TEKKEN,
    CHAT_V_DEEPSEEK2,
    CHAT_V_DEEPSEEK3,
    CHAT_V_DEEPSEEK_R1,
    CHAT_V_DEEPSEEK31,
    CHAT_V_TULU,
    CHAT_V_GPT_OSS,
    CHAT_V_COUNT
};

struct chat_template {
    enum chat_variant v;
    enum chat_family family;
    bool emit_bos; /* the template writes {{ bos_token }} first */
    /* chatml */
    bool tool_groups;     /* tool results as Qwen's <tool_response> inside a user turn */
    char *default_system; /* used when messages[0] is not a system message; NULL: none */
    size_t default_system_len;
    /* llama3 */
    bool gen_always; /* Llama 3.0's first template: generation prompt whatever the flag */
    bool date_today; /* llama3.1: strftime_now("%d %b %Y"), else date_literal */
    char date_literal[32];
    /* deepseek3 */
    bool ds_join_system; /* all system messages, joined by "\n\n" (else the last one) */
    bool ds_strip_think; /* assistant content after its last </think> only */
    bool ds_gen_think;   /* generation prompt opens <think>\n */
    char *bos, *eos;
    size_t bos_len, eos_len;
    char warning[512];
};

/* Output with a sticky out-of-memory flag, so renderers read as templates. */
struct chat_out {
    struct chat_prompt *p;
    bool oom;
};
void chat_put(struct chat_out *o, const char *s, size_t n);
void chat_lit(struct chat_out *o, const char *s); /* NUL-terminated literal */
/* Message text: copied and recorded as a span of message msg. */
void chat_text(struct chat_out *o, const char *s, size_t n, size_t msg);

/* Jinja's |trim (Python str.strip(): Unicode whitespace, UTF-8 aware). */
void chat_trim(const char **s, size_t *n);
/* str.lstrip / rstrip of one ASCII character. */
void chat_lstrip_ch(const char **s, size_t *n, char c);
void chat_rstrip_ch(const char **s, size_t *n, char c);
/* memmem that accepts n == 0; first / last occurrence or NULL. */
const char *chat_find(const char *s, size_t n, const char *pat);
const char *chat_rfind(const char *s, size_t n, const char *pat);

/* Render msgs (already validated); date is the formatted "today" for the
 * formats that print one. */
void chat_fmt_render(const struct chat_template *t, const struct chat_msg *m, size_t n,
                     const struct chat_opts *opt, const struct tm *today, struct chat_out *o);

#endif
