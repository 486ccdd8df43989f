/*
 * Pre-tokenizers: split text into the words that byte-level BPE merges
 * within.  Each model family's Hugging Face tokenizer.json describes its
 * pre-tokenizer as a sequence of splits; each split applies a regex to every
 * piece left by the previous one and keeps both the matches and the text
 * between them as pieces ("isolated" behaviour).  Digits(individual) is the
 * regex \p{N}, Digits(contiguous) \p{N}+, Punctuation(contiguous)
 * [\p{P}$+<=>^`|~]+ (Unicode punctuation plus ASCII's symbols), and
 * ByteLevel(use_regex) the GPT-2 regex.
 *
 * A split that comes after the ByteLevel step in tokenizer.json sees the
 * byte-mapped text, not the input (falcon: its Digits step splits "Ġ4"
 * into "Ġ" and "4", and the byte characters ², ³, ¹, ¼, ½, ¾ count as
 * digits there, so "½" = "Â½" splits too); such stages are marked `mapped`
 * and run on the mapped text, with offsets mapped back to input bytes.
 *
 * Regexes are compiled once with PCRE2 (UTF, UCP so that \s \p{..} are
 * Unicode-aware, MATCH_INVALID_UTF so that invalid input bytes simply never
 * match and end up as pieces of their own), JIT-compiled when available.
 * Each regex runs on one piece as its whole subject, so `$` and lookaheads
 * see that piece's end, as in tokenizers.
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/tok_impl.h"

#define MAX_STAGES 8

/* GPT-2's regex (tokenizers' ByteLevel with use_regex). */
#define RE_GPT2 "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"
/* Llama 3 and Qwen2: as in their tokenizer.json (case-insensitive
 * contractions; PCRE2 folds case the Unicode way, like Oniguruma). */
#define RE_LLAMA3                                                                                  \
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}"                       \
    "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
#define RE_QWEN2                                                                                   \
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}"                            \
    "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
/* DeepSeek LLM's letter class: the cased letters (Lu, Ll, Lt) as its
 * tokenizer.json lists them, written as code points. */
#define RE_DEEPSEEK_LETTERS                                                                        \
    "A-Za-z\\x{B5}\\x{C0}-\\x{D6}\\x{D8}-\\x{F6}\\x{F8}-\\x{1BA}\\x{1BC}-\\x{1BF}"                 \
    "\\x{1C4}-\\x{293}\\x{295}-\\x{2AF}\\x{370}-\\x{373}\\x{376}\\x{377}"                          \
    "\\x{37B}-\\x{37D}\\x{37F}\\x{386}\\x{388}-\\x{38A}\\x{38C}\\x{38E}-\\x{3A1}"                  \
    "\\x{3A3}-\\x{3F5}\\x{3F7}-\\x{481}\\x{48A}-\\x{52F}\\x{531}-\\x{556}"                         \
    "\\x{10A0}-\\x{10C5}\\x{13A0}-\\x{13F5}\\x{13F8}-\\x{13FD}\\x{1C90}-\\x{1CBA}"                 \
    "\\x{1CBD}-\\x{1CBF}\\x{1D00}-\\x{1D2B}\\x{1D6B}-\\x{1D77}\\x{1D79}-\\x{1D9A}"                 \
    "\\x{1E00}-\\x{1F15}\\x{1F18}-\\x{1F1D}\\x{1F20}-\\x{1F45}\\x{1F48}-\\x{1F4D}"                 \
    "\\x{1F50}-\\x{1F57}\\x{1F59}\\x{1F5B}\\x{1F5D}\\x{1F5F}-\\x{1F7D}"                            \
    "\\x{1F80}-\\x{1FB4}\\x{1FB6}-\\x{1FBC}\\x{1FBE}\\x{1FC2}-\\x{1FC4}"                           \
    "\\x{1FC6}-\\x{1FCC}\\x{1FD0}-\\x{1FD3}\\x{1FD6}-\\x{1FDB}\\x{1FE0}-\\x{1FEC}"                 \
    "\\x{1FF2}-\\x{1FF4}\\x{1FF6}-\\x{1FFC}\\x{2102}\\x{2107}\\x{210A}-\\x{2113}"                  \
    "\\x{2115}\\x{2119}-\\x{211D}\\x{2124}\\x{2126}\\x{2128}\\x{212A}-\\x{212D}"                   \
    "\\x{212F}-\\x{2134}\\x{2139}\\x{213C}-\\x{213F}\\x{2145}-\\x{2149}\\x{214E}"                  \
    "\\x{2183}\\x{2184}\\x{2C00}-\\x{2C7B}\\x{2C7E}-\\x{2CE4}\\x{2CEB}-\\x{2CEE}"                  \
    "\\x{2CF2}\\x{2CF3}\\x{A640}-\\x{A66D}\\x{A680}-\\x{A69B}\\x{A722}-\\x{A76F}"                  \
    "\\x{A771}-\\x{A787}\\x{A78B}-\\x{A78E}\\x{AB70}-\\x{ABBF}\\x{FB00}-\\x{FB06}"                 \
    "\\x{FB13}-\\x{FB17}\\x{FF21}-\\x{FF3A}\\x{FF41}-\\x{FF5A}\\x{10400}-\\x{1044F}"               \
    "\\x{104B0}-\\x{104D3}\\x{104D8}-\\x{104FB}\\x{10C80}-\\x{10CB2}"                              \
    "\\x{10CC0}-\\x{10CF2}\\x{118A0}-\\x{118DF}\\x{1E900}-\\x{1E943}"
/* CJK ideographs, U+0800..U+4E00 and Hangul, as DeepSeek's tokenizer.json
 * writes it ([一-龥ࠀ-一가-퟿]). */
#define RE_DEEPSEEK_CJK "[\\x{4E00}-\\x{9FA5}\\x{800}-\\x{4E00}\\x{AC00}-\\x{D7FF}]+"

struct stage_def {
    const char *re;
    bool mapped; /* runs on the byte-mapped text (after ByteLevel) */
};

struct pre_def {
    const char *name;        /* canonical name, reported by tok_pre_name */
    const char *aliases[10]; /* other tokenizer.ggml.pre values */
    bool ignore_merges;
    struct stage_def st[MAX_STAGES];
};

static const struct pre_def pre_defs[] = {
    /* ByteLevel(use_regex) alone: GPT-2, GPT-NeoX (mpt), OLMo. */
    {"gpt-2", {"gpt2", "default", "mpt", "olmo", "jais", NULL}, false, {{RE_GPT2, false}}},
    /* Split(regex) + ByteLevel: Llama 3 takes a word that is a token whole
     * (tokenizer.json "ignore_merges": true). */
    {"llama-bpe", {"llama3", "llama-v3", "falcon3", NULL}, true, {{RE_LLAMA3, false}}},
    {"dbrx", {"smaug-bpe", NULL}, false, {{RE_LLAMA3, false}}},
    {"qwen2",
     {"stablelm2", "deepseek-r1-qwen", "megrez", "hunyuan", NULL},
     false,
     {{RE_QWEN2, false}}},
    /* Split x5 + Digits(contiguous) + ByteLevel(no regex). */
    {"deepseek-llm",
     {NULL},
     false,
     {{"[\\r\\n]", false},
      {"\\s?[" RE_DEEPSEEK_LETTERS "]+", false},
      {"\\s?[!-/:-~\\x{FF01}-\\x{FF0F}\\x{FF1A}-\\x{FF5E}\\x{2018}-\\x{201F}\\x{3000}-\\x{3002}]+",
       false},
      {"\\s+$", false},
      {RE_DEEPSEEK_CJK, false},
      {"\\p{N}+", false}}},
    /* Split x4 + Digits(individual) + ByteLevel(no regex). */
    {"deepseek-coder",
     {NULL},
     false,
     {{"[\\r\\n]", false},
      {"\\s?\\p{L}+", false},
      {"\\s?\\p{P}+", false},
      {RE_DEEPSEEK_CJK, false},
      {"\\p{N}", false}}},
    /* DeepSeek V3 / R1: Split x3 + ByteLevel(no regex). */
    {"deepseek-v3",
     {"deepseek3-llm", NULL},
     false,
     {{"\\p{N}{1,3}", false},
      {"[\\x{4E00}-\\x{9FA5}\\x{3040}-\\x{309F}\\x{30A0}-\\x{30FF}]+", false},
      {"[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\\r\\n\\p{L}\\p{P}\\p{S}]?"
       "[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
       false}}},
    /* Punctuation(contiguous) + ByteLevel(use_regex) + Digits(contiguous)
     * + Split([0-9]{3}): the last two come after ByteLevel. */
    {"falcon",
     {NULL},
     false,
     {{"[\\p{P}$+<=>^`|~]+", false},
      {RE_GPT2, false},
      {"\\p{N}+", true},
      {"[0-9][0-9][0-9]", true}}},
    /* Digits(individual) + ByteLevel(use_regex). */
    {"starcoder",
     {"refact", "command-r", "smollm", "codeshell", "exaone", "minerva", NULL},
     false,
     {{"\\p{N}", false}, {RE_GPT2, false}}},
};

struct tok_pre {
    int n;
    struct {
        pcre2_code *re;
        bool mapped;
    } st[MAX_STAGES];
};

struct tok_pre_scratch {
    pcre2_match_data *md;
    pcre2_match_context *mctx; /* with a big JIT stack, made on first need */
    pcre2_jit_stack *jstack;
    struct tok_spans a, b;
    uint8_t *map; /* mapped text of one piece */
    size_t *m2r;  /* mapped offset -> raw offset */
    size_t map_cap;
};

void tok_pre_free(struct tok_pre *p)
{
    if (!p)
        return;
    for (int i = 0; i < p->n; i++)
        pcre2_code_free(p->st[i].re);
    free(p);
}

static bool name_is(const char *a, const char *b, size_t blen)
{
    return strlen(a) == blen && !memcmp(a, b, blen);
}

static const struct pre_def *find_def(const char *name, size_t len)
{
    for (size_t i = 0; i < sizeof pre_defs / sizeof pre_defs[0]; i++) {
        if (name_is(pre_defs[i].name, name, len))
            return &pre_defs[i];
        for (int k = 0; pre_defs[i].aliases[k]; k++)
            if (name_is(pre_defs[i].aliases[k], name, len))
                return &pre_defs[i];
    }
    return NULL;
}

int tok_pre_init(struct tok *t, const char *name, size_t name_len, struct moed_err *e)
{
    const struct pre_def *d = name ? find_def(name, name_len) : NULL;
    if (!d) {
        d = &pre_defs[0];
        if (name) {
            int shown = name_len > 40 ? 40 : (int)name_len;
            /* keep the message printable whatever the file holds */
            char clean[41];
            for (int i = 0; i < shown; i++)
                clean[i] = (name[i] >= 0x20 && name[i] < 0x7f) ? name[i] : '?';
            clean[shown] = 0;
            snprintf(t->warning, sizeof t->warning,
                     "tokenizer.ggml.pre '%s%s' is not known: using the gpt-2 pre-tokenizer; "
                     "tokenization may differ from the model's",
                     clean, name_len > 40 ? "..." : "");
        } else {
            snprintf(t->warning, sizeof t->warning,
                     "tokenizer.ggml.pre is missing: using the gpt-2 pre-tokenizer");
        }
    }
    snprintf(t->pre_name, sizeof t->pre_name, "%s", d->name);
    t->ignore_merges = d->ignore_merges;

    struct tok_pre *p = calloc(1, sizeof *p);
    if (!p)
        return moed_err_set(e, MOED_ENOMEM, "tokenizer: out of memory");
    for (int i = 0; i < MAX_STAGES && d->st[i].re; i++) {
        int err;
        PCRE2_SIZE erroff;
        pcre2_code *re =
            pcre2_compile((PCRE2_SPTR)d->st[i].re, PCRE2_ZERO_TERMINATED,
                          PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &err, &erroff, NULL);
        if (!re) {
            PCRE2_UCHAR msg[120];
            pcre2_get_error_message(err, msg, sizeof msg);
            tok_pre_free(p);
            /* a bug in the table above, not in the file */
            return moed_err_set(e, MOED_EINVAL, "tokenizer: pre-tokenizer '%s' regex %d: %s at %zu",
                                d->name, i, (const char *)msg, (size_t)erroff);
        }
        /* JIT is an optimisation: without it (no JIT support) the
         * interpreter gives the same answers. */
        (void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
        p->st[i].re = re;
        p->st[i].mapped = d->st[i].mapped;
        p->n = i + 1;
    }
    t->pre = p;
    return 0;
}

void tok_pre_scratch_free(struct tok_pre_scratch *s)
{
    if (!s)
        return;
    pcre2_match_data_free(s->md);
    pcre2_match_context_free(s->mctx);
    pcre2_jit_stack_free(s->jstack);
    free(s->a.v);
    free(s->b.v);
    free(s->map);
    free(s->m2r);
    free(s);
}

int tok_spans_push(struct tok_spans *s, size_t off, size_t len)
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 64;
        struct tok_span *v = realloc(s->v, cap * sizeof *v);
        if (!v)
            return MOED_ENOMEM;
        s->v = v;
        s->cap = cap;
    }
    s->v[s->n++] = (struct tok_span){off, len};
    return 0;
}

/* One match of re in subj[0..len) at or after start. 1: found (ms, me),
 * 0: none, <0: error. */
static int match_once(struct tok_pre_scratch *s, const pcre2_code *re, const uint8_t *subj,
                      size_t len, size_t start, size_t *ms, size_t *me)
{
    for (;;) {
        int rc = pcre2_match(re, subj, len, start, 0, s->md, s->mctx);
        if (rc == PCRE2_ERROR_NOMATCH)
            return 0;
        if (rc == PCRE2_ERROR_JIT_STACKLIMIT && !s->jstack) {
            /* Long pieces can need more than the default 32 KiB. */
            s->jstack = pcre2_jit_stack_create(64 * 1024, 8 * 1024 * 1024, NULL);
            s->mctx = pcre2_match_context_create(NULL);
            if (!s->jstack || !s->mctx)
                return MOED_ENOMEM;
            pcre2_jit_stack_assign(s->mctx, NULL, s->jstack);
            continue;
        }
        if (rc < 0)
            return rc;
        const PCRE2_SIZE *ov = pcre2_get_ovector_pointer(s->md);
        *ms = ov[0];
        *me = ov[1];
        return 1;
    }
}

/* Split one piece subj[0..len) with re; pieces go to out as offsets into
 * the raw text: base + (m2r ? m2r[x] : x). */
static int split_piece(struct tok_pre_scratch *s, const pcre2_code *re, const uint8_t *subj,
                       size_t len, size_t base, const size_t *m2r, struct tok_spans *out,
                       struct moed_err *e)
{
#define RAW(x) (base + (m2r ? m2r[x] : (x)))
    size_t last = 0, start = 0;
    while (start < len) {
        size_t ms, me;
        int rc = match_once(s, re, subj, len, start, &ms, &me);
        if (rc == 0)
            break;
        if (rc < 0) {
            if (rc == MOED_ENOMEM)
                return moed_err_set(e, MOED_ENOMEM, "tokenizer: out of memory");
            PCRE2_UCHAR msg[120];
            pcre2_get_error_message(rc, msg, sizeof msg);
            return moed_err_set(e, MOED_ERANGE,
                                "tokenizer: pre-tokenizer regex failed at input byte %zu: %s",
                                RAW(start), (const char *)msg);
        }
        if (me == ms) {
            /* empty match: tokenizers skips these; step one character */
            int32_t cp;
            start = ms + tok_utf8_next(subj + ms, len - ms, &cp);
            continue;
        }
        if (ms > last && tok_spans_push(out, RAW(last), RAW(ms) - RAW(last)))
            return moed_err_set(e, MOED_ENOMEM, "tokenizer: out of memory");
        if (tok_spans_push(out, RAW(ms), RAW(me) - RAW(ms)))
            return moed_err_set(e, MOED_ENOMEM, "tokenizer: out of memory");
        last = start = me;
    }
    if (len > last && tok_spans_push(out, RAW(last), RAW(len) - RAW(last)))
        return moed_err_set(e, MOED_ENOMEM, "tokenizer: out of memory");
    return 0;
#undef RAW
}

/* The GPT-2 characters of raw[0..n) into s->map, with s->m2r. */
static int map_piece(struct tok_pre_scratch *s, const uint8_t *raw, size_t n, size_t *mlen)
{
    if (n > (SIZE_MAX - 1) / 2)
        return MOED_ENOMEM;
    size_t need = 2 * n + 1;
    if (need > s->map_cap) {
        uint8_t *m = realloc(s->map, need);
        if (!m)
            return MOED_ENOMEM;
        s->map = m;
        size_t *r = realloc(s->m2r, need * sizeof *r);
        if (!r)
            return MOED_ENOMEM;
        s->m2r = r;
        s->map_cap = need;
    }
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        size_t l = tok_gpt2_utf8(raw[i], s->map + k);
        for (size_t j = 0; j < l; j++)
            s->m2r[k + j] = i; /* only character starts are ever asked */
        k += l;
    }
    s->m2r[k] = n;
    *mlen = k;
    return 0;
}

int tok_pre_split(const struct tok_pre *p, const char *text, size_t len, struct tok_spans *out,
                  struct tok_pre_scratch **scratch, struct moed_err *e)
{
    if (!len)
        return 0;
    struct tok_pre_scratch *s = *scratch;
    if (!s) {
        s = calloc(1, sizeof *s);
        if (!s)
            return moed_err_set(e, MOED_ENOMEM, "tokenizer: out of memory");
        *scratch = s;
        s->md = pcre2_match_data_create(1, NULL);
        if (!s->md)
            return moed_err_set(e, MOED_ENOMEM, "tokenizer: out of memory");
    }
    const uint8_t *raw = (const uint8_t *)text;
    struct tok_spans *cur = &s->a, *next = &s->b;
    cur->n = 0;
    if (tok_spans_push(cur, 0, len))
        return moed_err_set(e, MOED_ENOMEM, "tokenizer: out of memory");
    for (int st = 0; st < p->n; st++) {
        next->n = 0;
        for (size_t i = 0; i < cur->n; i++) {
            struct tok_span sp = cur->v[i];
            int rc;
            if (p->st[st].mapped) {
                size_t mlen;
                if (map_piece(s, raw + sp.off, sp.len, &mlen))
                    return moed_err_set(e, MOED_ENOMEM, "tokenizer: out of memory");
                rc = split_piece(s, p->st[st].re, s->map, mlen, sp.off, s->m2r, next, e);
            } else {
                rc = split_piece(s, p->st[st].re, raw + sp.off, sp.len, sp.off, NULL, next, e);
            }
            if (rc)
                return rc;
        }
        struct tok_spans *tmp = cur;
        cur = next;
        next = tmp;
    }
    for (size_t i = 0; i < cur->n; i++)
        if (tok_spans_push(out, cur->v[i].off, cur->v[i].len))
            return moed_err_set(e, MOED_ENOMEM, "tokenizer: out of memory");
    return 0;
}
