/*
 * Chat templates: the format table, recognition of a Jinja template by its
 * markers, validation of a message list against a format, and the output
 * buffer.  The renderers themselves are in chat_fmt.c.
 *
 * Recognition never interprets the Jinja.  It looks for text only one
 * family writes (<|im_start|>, <|start_header_id|>, [INST], <｜User｜>, ...)
 * and, inside a family, for the few literals that tell its published
 * variants apart.  Matching is tolerant of how the source was written:
 * either quote character, "\n" written as an escape or as a real newline,
 * and any run of whitespace where the pattern has '~' (see has()).
 */
#include "model/chat_impl.h"

#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "model/tok.h"

/* ---- the format table ---------------------------------------------------- */

struct chat_format {
    const char *name;
    enum chat_family family;
    bool emit_bos;   /* its template writes {{ bos_token }} */
    const char *bos; /* default texts when the caller has no vocabulary */
    const char *eos;
};

static const struct chat_format formats[CHAT_V_COUNT] = {
    [CHAT_V_CHATML] = {"chatml", CHAT_FAMILY_CHATML, false, "", "<|im_end|>"},
    [CHAT_V_QWEN3] = {"qwen3", CHAT_FAMILY_QWEN3, false, "", "<|im_end|>"},
    [CHAT_V_QWEN3_THINKING] = {"qwen3-thinking", CHAT_FAMILY_QWEN3, false, "", "<|im_end|>"},
    [CHAT_V_LLAMA3] = {"llama3", CHAT_FAMILY_LLAMA3, true, "<|begin_of_text|>", "<|eot_id|>"},
    [CHAT_V_LLAMA31] = {"llama3.1", CHAT_FAMILY_LLAMA3, true, "<|begin_of_text|>", "<|eot_id|>"},
    [CHAT_V_MISTRAL_V1] = {"mistral", CHAT_FAMILY_MISTRAL, true, "<s>", "</s>"},
    [CHAT_V_MISTRAL_LEGACY] = {"mistral-legacy", CHAT_FAMILY_MISTRAL, true, "<s>", "</s>"},
    [CHAT_V_MISTRAL_V3] = {"mistral-v3", CHAT_FAMILY_MISTRAL, true, "<s>", "</s>"},
    [CHAT_V_MISTRAL_V3_TEKKEN] = {"mistral-v3-tekken", CHAT_FAMILY_MISTRAL, true, "<s>", "</s>"},
    [CHAT_V_MISTRAL_V7] = {"mistral-v7", CHAT_FAMILY_MISTRAL, true, "<s>", "</s>"},
    [CHAT_V_MISTRAL_V7_TEKKEN] = {"mistral-v7-tekken", CHAT_FAMILY_MISTRAL, true, "<s>", "</s>"},
    [CHAT_V_DEEPSEEK2] = {"deepseek2", CHAT_FAMILY_DEEPSEEK2, true, CHAT_DS_BOS, CHAT_DS_EOS},
    [CHAT_V_DEEPSEEK3] = {"deepseek3", CHAT_FAMILY_DEEPSEEK3, true, CHAT_DS_BOS, CHAT_DS_EOS},
    [CHAT_V_DEEPSEEK_R1] = {"deepseek-r1", CHAT_FAMILY_DEEPSEEK3, true, CHAT_DS_BOS, CHAT_DS_EOS},
    [CHAT_V_DEEPSEEK31] = {"deepseek3.1", CHAT_FAMILY_DEEPSEEK3, true, CHAT_DS_BOS, CHAT_DS_EOS},
    [CHAT_V_TULU] = {"tulu", CHAT_FAMILY_TULU, true, "<|endoftext|>", "<|endoftext|>"},
    [CHAT_V_GPT_OSS] = {"gpt-oss", CHAT_FAMILY_GPT_OSS, false, "<|startoftext|>", "<|return|>"},
};

const char *chat_template_names(void)
{
    return "chatml, qwen3, qwen3-thinking, llama3, llama3.1, mistral, mistral-legacy, "
           "mistral-v3, mistral-v3-tekken, mistral-v7, mistral-v7-tekken, deepseek2, "
           "deepseek3, deepseek-r1, deepseek3.1, tulu, gpt-oss";
}

/* ---- roles ------------------------------------------------------------------ */

static const char *const role_names[CHAT_ROLE_COUNT] = {"system", "user", "assistant", "tool"};

const char *chat_role_name(enum chat_role r)
{
    return (unsigned)r < CHAT_ROLE_COUNT ? role_names[r] : "?";
}

int chat_role_parse(const char *s, size_t len, size_t idx, enum chat_role *out, struct moed_err *e)
{
    for (int r = 0; r < CHAT_ROLE_COUNT; r++) {
        if (len == strlen(role_names[r]) && !memcmp(s, role_names[r], len)) {
            *out = (enum chat_role)r;
            return 0;
        }
    }
    if (len == 9 && !memcmp(s, "developer", 9)) {
        *out = CHAT_ROLE_SYSTEM;
        return 0;
    }
    /* Quote at most 40 bytes of a hostile string, escaping what is not printable. */
    char shown[4 * 40 + 4];
    size_t k = 0;
    for (size_t i = 0; i < len && i < 40; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\')
            shown[k++] = (char)c;
        else
            k += (size_t)snprintf(shown + k, sizeof shown - k, "\\x%02x", c);
    }
    if (len > 40) {
        memcpy(shown + k, "...", 3);
        k += 3;
    }
    shown[k] = 0;
    return moed_err_set(e, MOED_EINVAL,
                        "messages[%zu].role: unknown role \"%s\" (expected system, developer, "
                        "user, assistant or tool)",
                        idx, shown);
}

/* ---- output buffer ---------------------------------------------------------- */

void chat_prompt_free(struct chat_prompt *p)
{
    free(p->text);
    free(p->spans);
    *p = (struct chat_prompt){0};
}

void chat_put(struct chat_out *o, const char *s, size_t n)
{
    struct chat_prompt *p = o->p;
    if (o->oom || !n)
        return;
    if (!p->cap || n >= p->cap - p->len) { /* keep room for the NUL */
        if (n >= SIZE_MAX / 4 - p->len) {
            o->oom = true;
            return;
        }
        size_t cap = p->cap ? p->cap : 256;
        while (cap < p->len + n + 1)
            cap *= 2;
        char *t = realloc(p->text, cap);
        if (!t) {
            o->oom = true;
            return;
        }
        p->text = t;
        p->cap = cap;
    }
    memcpy(p->text + p->len, s, n);
    p->len += n;
    p->text[p->len] = 0;
}

void chat_lit(struct chat_out *o, const char *s)
{
    chat_put(o, s, strlen(s));
}

void chat_text(struct chat_out *o, const char *s, size_t n, size_t msg)
{
    struct chat_prompt *p = o->p;
    if (o->oom || !n)
        return;
    if (p->n_spans == p->cap_spans) {
        size_t cap = p->cap_spans ? 2 * p->cap_spans : 16;
        struct chat_span *sp =
            cap < SIZE_MAX / sizeof *sp ? realloc(p->spans, cap * sizeof *sp) : NULL;
        if (!sp) {
            o->oom = true;
            return;
        }
        p->spans = sp;
        p->cap_spans = cap;
    }
    size_t off = p->len;
    chat_put(o, s, n);
    if (!o->oom)
        p->spans[p->n_spans++] = (struct chat_span){off, n, msg};
}

/* ---- string helpers --------------------------------------------------------- */

const char *chat_find(const char *s, size_t n, const char *pat)
{
    size_t m = strlen(pat);
    if (m > n)
        return NULL;
    for (size_t i = 0; i + m <= n; i++)
        if (s[i] == pat[0] && !memcmp(s + i, pat, m))
            return s + i;
    return NULL;
}

const char *chat_rfind(const char *s, size_t n, const char *pat)
{
    size_t m = strlen(pat);
    if (m > n)
        return NULL;
    for (size_t i = n - m + 1; i-- > 0;)
        if (s[i] == pat[0] && !memcmp(s + i, pat, m))
            return s + i;
    return NULL;
}

/* Python's str.isspace() code points (what Jinja's |trim strips). */
static bool py_space(uint32_t c)
{
    return (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x20) || c == 0x85 || c == 0xa0 ||
           c == 0x1680 || (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 ||
           c == 0x202f || c == 0x205f || c == 0x3000;
}

/* Decode the well-formed UTF-8 character of exactly len bytes at s (the
 * whitespace set needs 1 to 3 bytes); UINT32_MAX if it is not one. */
static uint32_t utf8_at(const unsigned char *s, size_t len)
{
    if (len == 1)
        return s[0] < 0x80 ? s[0] : UINT32_MAX;
    if (len == 2 && s[0] >= 0xc2 && s[0] <= 0xdf && (s[1] & 0xc0) == 0x80)
        return (uint32_t)(s[0] & 0x1f) << 6 | (s[1] & 0x3f);
    if (len == 3 && (s[0] & 0xf0) == 0xe0 && (s[1] & 0xc0) == 0x80 && (s[2] & 0xc0) == 0x80) {
        uint32_t c = (uint32_t)(s[0] & 0x0f) << 12 | (uint32_t)(s[1] & 0x3f) << 6 | (s[2] & 0x3f);
        return c >= 0x800 && (c < 0xd800 || c > 0xdfff) ? c : UINT32_MAX;
    }
    return UINT32_MAX;
}

/* Length of the UTF-8 sequence a lead byte announces (1 for anything odd). */
static size_t utf8_len(unsigned char c)
{
    return c < 0xc0 ? 1 : c < 0xe0 ? 2 : c < 0xf0 ? 3 : 4;
}

void chat_trim(const char **sp, size_t *np)
{
    const unsigned char *s = (const unsigned char *)*sp;
    size_t n = *np;
    while (n) {
        size_t l = utf8_len(s[0]);
        if (l > n || !py_space(utf8_at(s, l)))
            break;
        s += l;
        n -= l;
    }
    while (n) {
        /* the last character starts at most 3 continuation bytes back */
        size_t l = 1;
        while (l < 4 && l < n && (s[n - l] & 0xc0) == 0x80)
            l++;
        if (!py_space(utf8_at(s + n - l, l)))
            break;
        n -= l;
    }
    *sp = (const char *)s;
    *np = n;
}

void chat_lstrip_ch(const char **s, size_t *n, char c)
{
    while (*n && **s == c) {
        (*s)++;
        (*n)--;
    }
}

void chat_rstrip_ch(const char **s, size_t *n, char c)
{
    while (*n && (*s)[*n - 1] == c)
        (*n)--;
}

/* ---- recognition ------------------------------------------------------------- */

/*
 * Does pattern p occur in text t?  In p, '\'' matches either quote, '\n'
 * matches a newline or the two characters \n (an escape inside a Jinja
 * string), and '~' matches any run of whitespace, empty included; every
 * other character matches itself.  Patterns are short and fixed, so the
 * backtracking over '~' stays cheap even on a hostile template.
 */
static bool match_at(const char *t, const char *end, const char *p, const char **after)
{
    for (; *p; p++) {
        if (*p == '~') {
            const char *q = t;
            while (q < end && (*q == ' ' || *q == '\t' || *q == '\n' || *q == '\r'))
                q++;
            for (;; q--) { /* longest run first */
                if (match_at(q, end, p + 1, after))
                    return true;
                if (q == t)
                    return false;
            }
        }
        if (t >= end)
            return false;
        if (*p == '\'') {
            if (*t != '\'' && *t != '"')
                return false;
            t++;
        } else if (*p == '\n') {
            if (*t == '\n')
                t++;
            else if (*t == '\\' && t + 1 < end && t[1] == 'n')
                t += 2;
            else
                return false;
        } else if (*t++ != *p) {
            return false;
        }
    }
    if (after)
        *after = t;
    return true;
}

/* First match of p in [t, end): its end in *after; NULL when none. */
static const char *find_fuzzy(const char *t, const char *end, const char *p, const char **after)
{
    for (const char *s = t; s < end; s++)
        if ((*s == *p || *p == '\'' || *p == '\n' || *p == '~') && match_at(s, end, p, after))
            return s;
    return NULL;
}

static bool has(const char *t, size_t n, const char *p)
{
    return find_fuzzy(t, t + n, p, NULL) != NULL;
}

/* Either spelling of a message's content in Jinja. */
static bool has_content_expr(const char *t, size_t n, const char *before, const char *after)
{
    char p[160];
    snprintf(p, sizeof p, "%smessage['content']%s", before, after);
    if (has(t, n, p))
        return true;
    snprintf(p, sizeof p, "%smessage.content%s", before, after);
    return has(t, n, p);
}

/*
 * The text of a Jinja string literal that follows "<|im_start|>system\n"
 * directly and ends with "<|im_end|>" (Qwen1.5/2/2.5's default system
 * prompt: '<|im_start|>system\nYou are ...<|im_end|>\n').  Escapes are
 * decoded; a literal that ends (an unescaped quote) or holds template
 * syntax before <|im_end|> is not one.  Returns a malloc'd copy or NULL.
 */
static char *default_system(const char *t, size_t n, size_t *len, bool *oom)
{
    const char *end = t + n, *after, *at = t;
    while ((at = find_fuzzy(at, end, "<|im_start|>system\n", &after)) != NULL) {
        /* One pass from after: decode until <|im_end|>, or stop at the first
         * character no such literal holds and search on from there (so a
         * hostile template costs one pass over its text). */
        const char *q = after;
        size_t k = 0;
        char *out = NULL;
        for (; q < end; q++) {
            if (*q == '<' && (size_t)(end - q) >= 10 && !memcmp(q, "<|im_end|>", 10))
                break;
            if (*q == '\'' || *q == '"' || *q == '{' || *q == '}' || *q == '\n')
                break;
            if (*q == '\\' && q + 1 < end)
                q++;
        }
        if (q == end)
            return NULL;
        if (*q != '<' || q == after) {
            at = q > at ? q : at + 1;
            continue;
        }
        out = malloc((size_t)(q - after) + 1);
        if (!out) {
            *oom = true;
            return NULL;
        }
        for (const char *c = after; c < q; c++) {
            if (*c == '\\' && c + 1 < q) {
                c++;
                out[k++] = *c == 'n' ? '\n' : *c == 't' ? '\t' : *c;
            } else {
                out[k++] = *c;
            }
        }
        out[k] = 0;
        *len = k;
        return out;
    }
    return NULL;
}

/* Llama 3.1's `set date_string = "26 Jul 2024"` default. */
static void date_literal(const char *t, size_t n, char *out, size_t cap)
{
    const char *after;
    snprintf(out, cap, "26 Jul 2024");
    if (!find_fuzzy(t, t + n, "date_string~=~'", &after))
        return;
    const char *end = t + n;
    size_t k = 0;
    while (after < end && *after != '\'' && *after != '"' && k + 1 < cap && *after != '\\' &&
           *after != '\n')
        out[k++] = *after++;
    if (after < end && (*after == '\'' || *after == '"') && k > 0)
        out[k] = 0;
    else
        snprintf(out, cap, "26 Jul 2024");
}

/* Set t->v and the variant's flags from the template text; false: unknown. */
static bool recognise(struct chat_template *t, const char *s, size_t n, bool *oom)
{
    if (has(s, n, "<|start|>") && has(s, n, "<|message|>") && has(s, n, "<|channel|>")) {
        t->v = CHAT_V_GPT_OSS;
        return true;
    }
    if (has(s, n, "<|im_start|>")) {
        if (has(s, n, "<|im_sep|>")) /* Phi-4: same markers, another format */
            return false;
        if (has(s, n, "<think>")) {
            t->v = has(s, n, "'<|im_start|>assistant\n<think>\n'") ? CHAT_V_QWEN3_THINKING
                                                                   : CHAT_V_QWEN3;
            return true;
        }
        t->v = CHAT_V_CHATML;
        t->tool_groups = has(s, n, "<tool_response>");
        t->default_system = default_system(s, n, &t->default_system_len, oom);
        return true;
    }
    if (has(s, n, "<|start_header_id|>") && has(s, n, "<|end_header_id|>")) {
        if (has(s, n, "Cutting Knowledge Date")) {
            t->v = CHAT_V_LLAMA31;
            t->date_today = has(s, n, "strftime_now");
            date_literal(s, n, t->date_literal, sizeof t->date_literal);
        } else {
            t->v = CHAT_V_LLAMA3;
            t->gen_always = !has(s, n, "add_generation_prompt");
        }
        return true;
    }
    if (has(s, n, "[INST]")) {
        bool inst_space = has(s, n, "[INST] '"); /* '[INST] ' + ...: a space inside */
        if (has(s, n, "[SYSTEM_PROMPT]"))
            t->v = inst_space ? CHAT_V_MISTRAL_V7 : CHAT_V_MISTRAL_V7_TEKKEN;
        else if (has(s, n, "[AVAILABLE_TOOLS]") || has(s, n, "' [INST] '~+~system_message"))
            t->v = has(s, n, "' [INST]") ? CHAT_V_MISTRAL_V1
                   : inst_space          ? CHAT_V_MISTRAL_V3
                                         : CHAT_V_MISTRAL_V3_TEKKEN;
        else if (has(s, n, "<<SYS>>")) /* Llama 2: not built in */
            return false;
        else
            t->v = CHAT_V_MISTRAL_LEGACY;
        return true;
    }
    if (has(s, n, CHAT_DS_USER) && has(s, n, CHAT_DS_ASSISTANT)) {
        t->ds_join_system = has(s, n, "is_first_sp");
        if (has(s, n, "is_last_user")) { /* V3.1: </think> opens non-thinking answers */
            t->v = CHAT_V_DEEPSEEK31;
            return true;
        }
        t->ds_strip_think = has(s, n, "</think>");
        t->ds_gen_think = has(s, n, CHAT_DS_ASSISTANT "<think>\n'");
        t->v = t->ds_gen_think ? CHAT_V_DEEPSEEK_R1 : CHAT_V_DEEPSEEK3;
        return true;
    }
    if (has(s, n, "'User: '") && has(s, n, "'Assistant:")) {
        t->v = CHAT_V_DEEPSEEK2;
        return true;
    }
    if (has(s, n, "<|user|>") && has(s, n, "<|assistant|>") && !has(s, n, "<|end|>") &&
        has_content_expr(s, n, "'<|user|>\n'~+~", "~+~'\n'")) {
        t->v = CHAT_V_TULU;
        return true;
    }
    return false;
}

/* ---- construction -------------------------------------------------------------- */

static char *dup_or_default(const char *s, const char *def, size_t *len)
{
    const char *src = s ? s : def;
    *len = strlen(src);
    char *d = malloc(*len + 1);
    if (d)
        memcpy(d, src, *len + 1);
    return d;
}

/* The variant's defaults, for a name given by the user. */
static void set_defaults(struct chat_template *t)
{
    t->family = formats[t->v].family;
    t->emit_bos = formats[t->v].emit_bos;
    snprintf(t->date_literal, sizeof t->date_literal, "26 Jul 2024");
    switch (t->v) {
    case CHAT_V_LLAMA31:
        t->date_today = true; /* Llama 3.2/3.3 print today's date */
        break;
    case CHAT_V_DEEPSEEK3:
    case CHAT_V_DEEPSEEK31: t->ds_join_system = true; break;
    case CHAT_V_DEEPSEEK_R1: t->ds_join_system = t->ds_strip_think = t->ds_gen_think = true; break;
    default: break;
    }
}

static int finish(struct chat_template *t, const char *bos, const char *eos,
                  struct chat_template **out, struct moed_err *e)
{
    t->family = formats[t->v].family;
    t->bos = dup_or_default(bos, formats[t->v].bos, &t->bos_len);
    t->eos = dup_or_default(eos, formats[t->v].eos, &t->eos_len);
    if (!t->bos || !t->eos) {
        chat_template_free(t);
        return moed_err_set(e, MOED_ENOMEM, "chat template: out of memory");
    }
    *out = t;
    return 0;
}

int chat_template_from_name(struct chat_template **out, const char *name, const char *bos,
                            const char *eos, struct moed_err *e)
{
    *out = NULL;
    for (int v = 0; v < CHAT_V_COUNT; v++) {
        if (name && !strcasecmp(name, formats[v].name)) {
            struct chat_template *t = calloc(1, sizeof *t);
            if (!t)
                return moed_err_set(e, MOED_ENOMEM, "chat template: out of memory");
            t->v = (enum chat_variant)v;
            set_defaults(t);
            return finish(t, bos, eos, out, e);
        }
    }
    char shown[64];
    snprintf(shown, sizeof shown, "%s", name ? name : "(null)");
    for (char *c = shown; *c; c++)
        if (!isprint((unsigned char)*c))
            *c = '?';
    return moed_err_set(e, MOED_EINVAL, "chat_template \"%s\": unknown name (valid: %s)", shown,
                        chat_template_names());
}

int chat_template_detect(struct chat_template **out, const char *text, const char *bos,
                         const char *eos, struct moed_err *e)
{
    *out = NULL;
    struct chat_template *t = calloc(1, sizeof *t);
    if (!t)
        return moed_err_set(e, MOED_ENOMEM, "chat template: out of memory");
    size_t n = text ? strlen(text) : 0;
    bool oom = false;
    if (n && recognise(t, text, n, &oom)) {
        /* a variant's own flags were set by recognise(); BOS as the text says */
        t->emit_bos = has(text, n, "bos_token");
        if (t->v == CHAT_V_GPT_OSS)
            t->emit_bos = false;
    } else {
        free(t->default_system);
        *t = (struct chat_template){.v = CHAT_V_CHATML};
        set_defaults(t);
        if (n)
            snprintf(t->warning, sizeof t->warning,
                     "tokenizer.chat_template (%zu bytes) is not a format moed knows; using the "
                     "built-in \"chatml\" format (<|im_start|>role ... <|im_end|>); set "
                     "chat_template to one of: %s",
                     n, chat_template_names());
        else
            snprintf(t->warning, sizeof t->warning,
                     "the model has no tokenizer.chat_template; using the built-in \"chatml\" "
                     "format (<|im_start|>role ... <|im_end|>); set chat_template to one of: %s",
                     chat_template_names());
    }
    if (oom) {
        chat_template_free(t);
        return moed_err_set(e, MOED_ENOMEM, "chat template: out of memory");
    }
    if (!t->date_literal[0])
        snprintf(t->date_literal, sizeof t->date_literal, "26 Jul 2024");
    return finish(t, bos, eos, out, e);
}

int chat_template_for_tok(struct chat_template **out, const struct tok *tk, const char *name,
                          struct moed_err *e)
{
    int32_t b = tok_bos(tk), s = tok_eos(tk);
    const char *bos = b != TOK_NULL ? tok_text(tk, b, NULL) : "";
    const char *eos = s != TOK_NULL ? tok_text(tk, s, NULL) : "";
    if (name && *name)
        return chat_template_from_name(out, name, bos, eos, e);
    return chat_template_detect(out, tok_chat_template(tk), bos, eos, e);
}

void chat_template_free(struct chat_template *t)
{
    if (!t)
        return;
    free(t->default_system);
    free(t->bos);
    free(t->eos);
    free(t);
}

const char *chat_template_name(const struct chat_template *t)
{
    return formats[t->v].name;
}
enum chat_family chat_template_family(const struct chat_template *t)
{
    return t->family;
}
bool chat_template_adds_bos(const struct chat_template *t)
{
    return t->emit_bos && t->bos_len;
}
const char *chat_template_warning(const struct chat_template *t)
{
    return t->warning;
}

/* ---- validation ---------------------------------------------------------------- */

static bool is_mistral_alternating(enum chat_variant v)
{
    return v == CHAT_V_MISTRAL_V1 || v == CHAT_V_MISTRAL_LEGACY || v == CHAT_V_MISTRAL_V3 ||
           v == CHAT_V_MISTRAL_V3_TEKKEN;
}

/* Formats whose templates have no plain-text tool turn (they drop such a
 * message, render it as JSON, or need the assistant's tool_calls). */
static bool rejects_tool(enum chat_variant v)
{
    return !(v == CHAT_V_CHATML || v == CHAT_V_QWEN3 || v == CHAT_V_QWEN3_THINKING ||
             v == CHAT_V_LLAMA3);
}

int chat_validate(const struct chat_template *t, const struct chat_msg *m, size_t n,
                  struct moed_err *e)
{
    const char *name = formats[t->v].name;
    if (!n)
        return moed_err_set(e, MOED_EINVAL, "messages: empty list (at least one message needed)");
    for (size_t i = 0; i < n; i++) {
        if ((unsigned)m[i].role >= CHAT_ROLE_COUNT)
            return moed_err_set(e, MOED_EINVAL, "messages[%zu].role: unknown role %d", i,
                                (int)m[i].role);
        if ((!m[i].content && m[i].content_len) || (!m[i].reasoning && m[i].reasoning_len))
            return moed_err_set(e, MOED_EINVAL, "messages[%zu]: text pointer is NULL", i);
        if (m[i].role == CHAT_ROLE_TOOL && rejects_tool(t->v))
            return moed_err_set(e, MOED_EINVAL,
                                "messages[%zu]: role \"tool\" is not supported by the %s chat "
                                "template",
                                i, name);
    }
    if (is_mistral_alternating(t->v)) {
        size_t first = m[0].role == CHAT_ROLE_SYSTEM;
        if (first == n)
            return moed_err_set(e, MOED_EINVAL,
                                "messages: the %s chat template needs a user message after the "
                                "system message",
                                name);
        for (size_t i = first; i < n; i++) {
            enum chat_role want = (i - first) % 2 ? CHAT_ROLE_ASSISTANT : CHAT_ROLE_USER;
            if (m[i].role == CHAT_ROLE_SYSTEM)
                return moed_err_set(e, MOED_EINVAL,
                                    "messages[%zu]: the %s chat template accepts a system "
                                    "message only as the first message",
                                    i, name);
            if (m[i].role != want)
                return moed_err_set(e, MOED_EINVAL,
                                    "messages[%zu]: the %s chat template needs user and "
                                    "assistant messages to alternate, starting with user, after "
                                    "an optional first system message (expected %s, got %s)",
                                    i, name, role_names[want], role_names[m[i].role]);
        }
    }
    if (t->v == CHAT_V_GPT_OSS) {
        for (size_t i = 0; i < n; i++) {
            if (m[i].role == CHAT_ROLE_SYSTEM && i > 0)
                return moed_err_set(e, MOED_EINVAL,
                                    "messages[%zu]: the gpt-oss chat template accepts a system "
                                    "message only as the first message",
                                    i);
            if (m[i].role != CHAT_ROLE_ASSISTANT)
                continue;
            /* the template raises on these: channels belong in fields, not text */
            static const char *const tags[] = {"<|channel|>analysis<|message|>",
                                               "<|channel|>final<|message|>"};
            for (int k = 0; k < 2; k++)
                if (chat_find(m[i].content, m[i].content_len, tags[k]) ||
                    (m[i].reasoning && chat_find(m[i].reasoning, m[i].reasoning_len, tags[k])))
                    return moed_err_set(e, MOED_EINVAL,
                                        "messages[%zu]: assistant text holds \"%s\"; the "
                                        "gpt-oss chat template takes the final answer in "
                                        "content and the analysis in reasoning, without "
                                        "channel tags",
                                        i, tags[k]);
        }
    }
    return 0;
}

/* ---- rendering ----------------------------------------------------------------- */

int chat_render(const struct chat_template *t, const struct chat_msg *m, size_t n,
                const struct chat_opts *opt, struct chat_prompt *p, struct moed_err *e)
{
    p->len = 0;
    p->n_spans = 0;
    if (p->text)
        p->text[0] = 0;
    int rc = chat_validate(t, m, n, e);
    if (rc)
        return rc;
    if (opt->enable_thinking < -1 || opt->enable_thinking > 1)
        return moed_err_set(e, MOED_EINVAL, "enable_thinking: %d is not -1, 0 or 1",
                            opt->enable_thinking);
    if (opt->reasoning_effort && strcmp(opt->reasoning_effort, "low") &&
        strcmp(opt->reasoning_effort, "medium") && strcmp(opt->reasoning_effort, "high"))
        return moed_err_set(e, MOED_EINVAL,
                            "reasoning_effort: expected low, medium or high (got \"%.32s\")",
                            opt->reasoning_effort);
    struct tm today;
    if (opt->today) {
        today = *opt->today;
    } else {
        time_t now = time(NULL);
        if (!localtime_r(&now, &today))
            return moed_err_set(e, MOED_EINVAL, "chat template: cannot read the local date");
    }
    if (today.tm_mon < 0 || today.tm_mon > 11 || today.tm_mday < 1 || today.tm_mday > 31 ||
        today.tm_year < -1900 || today.tm_year > 9999 - 1900)
        return moed_err_set(e, MOED_EINVAL, "chat template: date out of range");
    struct chat_out o = {p, false};
    chat_fmt_render(t, m, n, opt, &today, &o);
    if (!o.oom && !p->text) { /* every format writes something; keep the promise anyway */
        p->text = calloc(1, 1);
        p->cap = p->text ? 1 : 0;
        o.oom = !p->text;
    }
    if (o.oom)
        return moed_err_set(e, MOED_ENOMEM, "chat template: out of memory rendering %zu messages",
                            n);
    return 0;
}
