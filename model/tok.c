/*
 * Loading a tokenizer from GGUF metadata, and the queries on it.
 *
 * Everything is copied out of the file into arenas owned by struct tok, and
 * validated on the way: array types and lengths, token types, special ids,
 * merges.  What each token decodes to (its "piece") is computed once here,
 * so decoding is a table lookup.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/gguf.h"
#include "model/tok_impl.h"

#define KEY_MODEL "tokenizer.ggml.model"
#define KEY_TOKENS "tokenizer.ggml.tokens"
#define KEY_TYPES "tokenizer.ggml.token_type"
#define KEY_SCORES "tokenizer.ggml.scores"
#define KEY_MERGES "tokenizer.ggml.merges"
#define KEY_PRE "tokenizer.ggml.pre"

/* At most this many tokens: ids are int32 and the tables index with uint32. */
#define MAX_VOCAB (1u << 28)

/* Up to 40 printable characters of s, for messages about file contents. */
static const char *shown(const char *s, size_t n, char out[48])
{
    size_t k = n > 40 ? 40 : n;
    for (size_t i = 0; i < k; i++)
        out[i] = ((unsigned char)s[i] >= 0x20 && (unsigned char)s[i] < 0x7f) ? s[i] : '?';
    strcpy(out + k, n > 40 ? "..." : "");
    return out;
}

static bool is_int_type(uint32_t t)
{
    return t == GGUF_U8 || t == GGUF_I8 || t == GGUF_U16 || t == GGUF_I16 || t == GGUF_U32 ||
           t == GGUF_I32 || t == GGUF_U64 || t == GGUF_I64;
}

/* An array kv of n_vocab elements, or NULL when absent. */
static int get_vocab_array(const struct gguf *g, const char *key, uint32_t n_vocab, bool ints,
                           const struct gguf_value **out, struct moed_err *e)
{
    *out = NULL;
    const struct gguf_kv *kv = gguf_find(g, key);
    if (!kv)
        return 0;
    if (kv->val.type != GGUF_ARRAY)
        return moed_err_set(e, MOED_ETYPE, "%s has type %s, want an array", key,
                            gguf_vtype_name(kv->val.type));
    uint32_t el = kv->val.v.arr.elem;
    if (ints ? !is_int_type(el) : (el != GGUF_F32 && el != GGUF_F64))
        return moed_err_set(e, MOED_ETYPE, "%s is an array of %s, want %s", key,
                            gguf_vtype_name(el), ints ? "integers" : "floats");
    if (kv->val.v.arr.n != n_vocab)
        return moed_err_set(e, MOED_EFORMAT, "%s has %llu entries but %s has %u", key,
                            (unsigned long long)kv->val.v.arr.n, KEY_TOKENS, n_vocab);
    *out = &kv->val;
    return 0;
}

/* A special token id: TOK_NULL when absent or -1 (some converters write
 * -1 or 0xFFFFFFFF for "none"); otherwise it must be a valid id. */
static int get_id(const struct gguf *g, const char *key, uint32_t n_vocab, int32_t *out,
                  struct moed_err *e)
{
    *out = TOK_NULL;
    const struct gguf_kv *kv = gguf_find(g, key);
    if (!kv)
        return 0;
    uint32_t ty = kv->val.type;
    if (ty == GGUF_U8 || ty == GGUF_U16 || ty == GGUF_U32 || ty == GGUF_U64) {
        uint64_t u = kv->val.v.u64;
        if (u == UINT32_MAX || u == UINT64_MAX)
            return 0;
        if (u >= n_vocab)
            return moed_err_set(e, MOED_ERANGE, "%s = %llu is not a token id (vocabulary has %u)",
                                key, (unsigned long long)u, n_vocab);
        *out = (int32_t)u;
        return 0;
    }
    if (ty == GGUF_I8 || ty == GGUF_I16 || ty == GGUF_I32 || ty == GGUF_I64) {
        int64_t v = kv->val.v.i64;
        if (v == -1)
            return 0;
        if (v < 0 || v >= (int64_t)n_vocab)
            return moed_err_set(e, MOED_ERANGE, "%s = %lld is not a token id (vocabulary has %u)",
                                key, (long long)v, n_vocab);
        *out = (int32_t)v;
        return 0;
    }
    return moed_err_set(e, MOED_ETYPE, "%s has type %s, want an integer", key, gguf_vtype_name(ty));
}

static int get_flag(const struct gguf *g, const char *key, bool *out, struct moed_err *e)
{
    bool v;
    int rc = gguf_get_bool(g, key, &v, e);
    if (rc == MOED_ENOTFOUND)
        return 0; /* keep the default */
    if (rc)
        return rc;
    *out = v;
    return 0;
}

static int load_tokens(struct tok *t, const struct gguf *g, struct moed_err *e)
{
    const struct gguf_value *arr;
    int rc = gguf_get_arr(g, KEY_TOKENS, GGUF_STRING, &arr, e);
    if (rc == MOED_ENOTFOUND)
        return moed_err_set(e, MOED_EFORMAT, "%s is missing", KEY_TOKENS);
    if (rc)
        return rc;
    uint64_t n = arr->v.arr.n;
    if (n == 0 || n > MAX_VOCAB)
        return moed_err_set(e, MOED_EFORMAT, "%s has %llu entries (want 1..%u)", KEY_TOKENS,
                            (unsigned long long)n, MAX_VOCAB);
    t->n_vocab = (uint32_t)n;
    uint64_t total = 0;
    for (uint64_t i = 0; i < n; i++)
        total += gguf_arr_str(arr, i).len + 1; /* each len is bounded by the file size */
    if (total > UINT32_MAX)
        return moed_err_set(e, MOED_EFORMAT, "%s: texts take %llu bytes (over 4 GiB)", KEY_TOKENS,
                            (unsigned long long)total);
    t->text = malloc(total);
    t->piece = malloc(total); /* a piece is never longer than its text */
    t->text_off = malloc(n * sizeof *t->text_off);
    t->text_len = malloc(n * sizeof *t->text_len);
    t->piece_off = malloc(n * sizeof *t->piece_off);
    t->piece_len = malloc(n * sizeof *t->piece_len);
    t->type = malloc(n);
    if (!t->text || !t->piece || !t->text_off || !t->text_len || !t->piece_off || !t->piece_len ||
        !t->type)
        return moed_err_set(e, MOED_ENOMEM, "%s: out of memory for %llu tokens", KEY_TOKENS,
                            (unsigned long long)n);
    uint32_t off = 0;
    for (uint64_t i = 0; i < n; i++) {
        struct gguf_str s = gguf_arr_str(arr, i);
        if (s.len)
            memcpy(t->text + off, s.ptr, s.len);
        t->text[off + s.len] = 0;
        t->text_off[i] = off;
        t->text_len[i] = (uint32_t)s.len;
        off += (uint32_t)s.len + 1;
    }
    return 0;
}

static int load_types_scores(struct tok *t, const struct gguf *g, struct moed_err *e)
{
    const struct gguf_value *types, *scores;
    int rc = get_vocab_array(g, KEY_TYPES, t->n_vocab, true, &types, e);
    if (rc)
        return rc;
    for (uint32_t i = 0; i < t->n_vocab; i++) {
        int64_t v = types ? gguf_arr_int(types, i) : TOK_TYPE_NORMAL;
        if (v < TOK_TYPE_UNDEFINED || v > TOK_TYPE_BYTE)
            return moed_err_set(e, MOED_EFORMAT, "%s[%u] = %lld is not a token type (0..6)",
                                KEY_TYPES, i, (long long)v);
        t->type[i] = (uint8_t)v;
    }
    rc = get_vocab_array(g, KEY_SCORES, t->n_vocab, false, &scores, e);
    if (rc)
        return rc;
    if (!scores) {
        if (t->model == TOK_MODEL_SPM)
            return moed_err_set(e, MOED_EFORMAT, "%s is missing (a \"llama\" vocabulary needs it)",
                                KEY_SCORES);
        return 0;
    }
    t->score = malloc((size_t)t->n_vocab * sizeof *t->score);
    if (!t->score)
        return moed_err_set(e, MOED_ENOMEM, "%s: out of memory", KEY_SCORES);
    for (uint32_t i = 0; i < t->n_vocab; i++) {
        double v = gguf_arr_float(scores, i);
        if (isnan(v))
            return moed_err_set(e, MOED_EFORMAT, "%s[%u] is NaN", KEY_SCORES, i);
        t->score[i] = (float)v;
    }
    return 0;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* "<0xAB>" -> 0xAB, else -1. */
static int byte_token_value(const char *s, size_t n)
{
    if (n != 6 || memcmp(s, "<0x", 3) || s[5] != '>')
        return -1;
    int hi = hexval(s[3]), lo = hexval(s[4]);
    return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

/* What each token stands for, into the piece arena. */
static int make_pieces(struct tok *t, struct moed_err *e)
{
    uint32_t off = 0;
    t->max_piece = 0;
    for (uint32_t id = 0; id < t->n_vocab; id++) {
        const uint8_t *s = (const uint8_t *)t->text + t->text_off[id];
        uint32_t n = t->text_len[id];
        uint8_t *p = (uint8_t *)t->piece + off;
        uint32_t k = 0;
        uint8_t ty = t->type[id];
        bool normal = ty == TOK_TYPE_NORMAL || ty == TOK_TYPE_UNDEFINED;
        if (t->model == TOK_MODEL_BPE && normal) {
            /* GPT-2 characters back to bytes; other characters as they are */
            for (uint32_t i = 0; i < n;) {
                int32_t cp;
                size_t cl = tok_utf8_next(s + i, n - i, &cp);
                int b = cp >= 0 ? tok_gpt2_byte((uint32_t)cp) : -1;
                if (b >= 0)
                    p[k++] = (uint8_t)b;
                else
                    for (size_t j = 0; j < cl; j++)
                        p[k++] = s[i + j];
                i += (uint32_t)cl;
            }
        } else if (t->model == TOK_MODEL_SPM && ty == TOK_TYPE_BYTE) {
            int b = byte_token_value((const char *)s, n);
            if (b < 0) {
                char buf[48];
                return moed_err_set(e, MOED_EFORMAT,
                                    "%s[%u] = '%s' has type BYTE but is not <0xXX>", KEY_TOKENS, id,
                                    shown((const char *)s, n, buf));
            }
            p[k++] = (uint8_t)b;
        } else if (t->model == TOK_MODEL_SPM && (normal || ty == TOK_TYPE_UNUSED)) {
            /* U+2581 -> ' ' */
            for (uint32_t i = 0; i < n;) {
                if (i + 3 <= n && s[i] == 0xE2 && s[i + 1] == 0x96 && s[i + 2] == 0x81) {
                    p[k++] = ' ';
                    i += 3;
                } else {
                    p[k++] = s[i++];
                }
            }
        } else {
            memcpy(p, s, n); /* added and control tokens: their text */
            k = n;
        }
        t->piece_off[id] = off;
        t->piece_len[id] = k;
        if (k > t->max_piece)
            t->max_piece = k;
        p[k] = 0;
        off += k + 1;
    }
    return 0;
}

static int load_merges(struct tok *t, const struct gguf *g, struct moed_err *e)
{
    const struct gguf_value *arr;
    int rc = gguf_get_arr(g, KEY_MERGES, GGUF_STRING, &arr, e);
    if (rc == MOED_ENOTFOUND)
        return moed_err_set(e, MOED_EFORMAT, "%s is missing (a \"gpt2\" vocabulary needs it)",
                            KEY_MERGES);
    if (rc)
        return rc;
    uint64_t n = arr->v.arr.n;
    if (n > (1u << 30))
        return moed_err_set(e, MOED_EFORMAT, "%s has %llu entries (too many)", KEY_MERGES,
                            (unsigned long long)n);
    if (tok_merge_init(&t->merges, (uint32_t)n))
        return moed_err_set(e, MOED_ENOMEM, "%s: out of memory", KEY_MERGES);
    char *cat = NULL;
    size_t cat_cap = 0;
    uint64_t skipped = 0;
    for (uint64_t i = 0; i < n; i++) {
        struct gguf_str s = gguf_arr_str(arr, i);
        /* "left right"; the left part may itself be " " (hence from 1) */
        const char *sp = s.len > 1 ? memchr(s.ptr + 1, ' ', s.len - 1) : NULL;
        if (!sp || sp + 1 == s.ptr + s.len) {
            char buf[48];
            free(cat);
            return moed_err_set(e, MOED_EFORMAT, "%s[%llu] = '%s' is not \"left right\"",
                                KEY_MERGES, (unsigned long long)i, shown(s.ptr, s.len, buf));
        }
        size_t ll = (size_t)(sp - s.ptr), rl = s.len - ll - 1;
        int32_t l = tok_map_find(t, s.ptr, ll);
        int32_t r = tok_map_find(t, sp + 1, rl);
        if (ll + rl > cat_cap) {
            char *c = realloc(cat, ll + rl);
            if (!c) {
                free(cat);
                return moed_err_set(e, MOED_ENOMEM, "%s: out of memory", KEY_MERGES);
            }
            cat = c;
            cat_cap = ll + rl;
        }
        memcpy(cat, s.ptr, ll);
        memcpy(cat + ll, sp + 1, rl);
        int32_t id = tok_map_find(t, cat, ll + rl);
        if (l < 0 || r < 0 || id < 0) {
            skipped++;
            continue;
        }
        if (tok_merge_add(&t->merges, l, r, (uint32_t)i, id)) {
            free(cat);
            return moed_err_set(e, MOED_ENOMEM, "%s: merge table full", KEY_MERGES);
        }
    }
    free(cat);
    if (skipped && !t->warning[0])
        snprintf(t->warning, sizeof t->warning,
                 "%s: %llu of %llu merges name texts that are not tokens (ignored)", KEY_MERGES,
                 (unsigned long long)skipped, (unsigned long long)n);
    return 0;
}

static void find_byte_tokens(struct tok *t)
{
    t->all_bytes = true;
    for (int b = 0; b < 256; b++) {
        int32_t id;
        if (t->model == TOK_MODEL_BPE) {
            /* Only a NORMAL token decodes back to the byte: DeepSeek's
             * vocabularies have added tokens spelled like byte characters
             * ("õ" for 0xF5), which decode as their text. */
            uint8_t u[2];
            size_t n = tok_gpt2_utf8((uint8_t)b, u);
            id = tok_map_find(t, (const char *)u, n);
            if (id >= 0 && t->type[id] != TOK_TYPE_NORMAL && t->type[id] != TOK_TYPE_UNDEFINED)
                id = TOK_NULL;
        } else {
            char name[8];
            snprintf(name, sizeof name, "<0x%02X>", b);
            id = tok_map_find(t, name, 6);
            if (id < 0) {
                char c = (char)b;
                id = tok_map_find(t, &c, 1);
            }
        }
        t->byte_tok[b] = id;
        if (id < 0)
            t->all_bytes = false;
    }
}

/* Whether any NORMAL piece holds U+2581 right after another character
 * ("a▁b"); SentencePiece vocabularies built with split_by_whitespace (the
 * default, and Llama's) have none, which lets tok_spm.c merge word by word. */
static bool spm_has_inner_space(const struct tok *t)
{
    for (uint32_t id = 0; id < t->n_vocab; id++) {
        if (t->type[id] != TOK_TYPE_NORMAL && t->type[id] != TOK_TYPE_UNDEFINED)
            continue;
        const uint8_t *s = (const uint8_t *)t->text + t->text_off[id];
        uint32_t n = t->text_len[id];
        for (uint32_t i = 1; i + 3 <= n; i++) {
            bool sp = s[i] == 0xE2 && s[i + 1] == 0x96 && s[i + 2] == 0x81;
            bool prev_sp = i >= 3 && s[i - 3] == 0xE2 && s[i - 2] == 0x96 && s[i - 1] == 0x81;
            if (sp && !prev_sp)
                return true;
        }
    }
    return false;
}

static int build_added(struct tok *t, struct moed_err *e)
{
    for (uint32_t id = 0; id < t->n_vocab; id++) {
        uint8_t ty = t->type[id];
        bool user = ty == TOK_TYPE_USER_DEFINED;
        bool control = ty == TOK_TYPE_CONTROL || ty == TOK_TYPE_UNKNOWN;
        if (!user && !control)
            continue;
        if (tok_trie_add(&t->added, t->text + t->text_off[id], t->text_len[id], (int32_t)id,
                         control))
            return moed_err_set(e, MOED_ENOMEM, "tokenizer: out of memory for added tokens");
        t->have_added |= user;
        t->have_control |= control;
    }
    return 0;
}

static int load(struct tok *t, const struct gguf *g, struct moed_err *e)
{
    struct gguf_str model;
    int rc = gguf_get_str(g, KEY_MODEL, &model, e);
    if (rc == MOED_ENOTFOUND)
        return moed_err_set(e, MOED_EFORMAT, "%s is missing", KEY_MODEL);
    if (rc)
        return rc;
    if (gguf_str_eq(model, "gpt2")) {
        t->model = TOK_MODEL_BPE;
    } else if (gguf_str_eq(model, "llama")) {
        t->model = TOK_MODEL_SPM;
        t->add_bos = true;
        t->add_space_prefix = true;
    } else {
        char buf[48];
        return moed_err_set(e, MOED_EUNSUPPORTED,
                            "%s = '%s' is not supported (moed knows \"gpt2\" and \"llama\")",
                            KEY_MODEL, shown(model.ptr, model.len, buf));
    }

    if ((rc = load_tokens(t, g, e)) || (rc = load_types_scores(t, g, e)) ||
        (rc = make_pieces(t, e)) || (rc = tok_map_build(t, e)))
        return rc;
    if (t->model == TOK_MODEL_BPE) {
        struct gguf_str pre;
        rc = gguf_get_str(g, KEY_PRE, &pre, e);
        if (rc && rc != MOED_ENOTFOUND)
            return rc;
        if ((rc = tok_pre_init(t, rc ? NULL : pre.ptr, rc ? 0 : pre.len, e)) ||
            (rc = load_merges(t, g, e)))
            return rc;
    }
    find_byte_tokens(t);
    if (t->model == TOK_MODEL_SPM)
        t->spm_word_split = !spm_has_inner_space(t);
    /* Real byte-level vocabularies lack a few bytes (C0, C1, F5-FF, which
     * valid UTF-8 never holds, and some controls); lacking printable ASCII
     * means a broken file. */
    int missing = 0;
    for (int b = 0x20; b < 0x7f; b++)
        missing += t->byte_tok[b] < 0;
    if (t->model == TOK_MODEL_BPE && missing && !t->warning[0])
        snprintf(t->warning, sizeof t->warning,
                 "vocabulary has no token for %d printable ASCII bytes: text using them "
                 "encodes as <unk> (or is dropped without one)",
                 missing);
    if ((rc = build_added(t, e)))
        return rc;

    static const struct {
        const char *key;
        size_t field;
    } ids[] = {
        {"tokenizer.ggml.bos_token_id", offsetof(struct tok, bos)},
        {"tokenizer.ggml.eos_token_id", offsetof(struct tok, eos)},
        {"tokenizer.ggml.eot_token_id", offsetof(struct tok, eot)},
        {"tokenizer.ggml.unknown_token_id", offsetof(struct tok, unk)},
        {"tokenizer.ggml.padding_token_id", offsetof(struct tok, pad)},
        {"tokenizer.ggml.seperator_token_id", offsetof(struct tok, sep)}, /* llama.cpp's spelling */
        {"tokenizer.ggml.separator_token_id", offsetof(struct tok, sep)},
    };
    t->sep = TOK_NULL;
    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++) {
        int32_t v;
        if ((rc = get_id(g, ids[i].key, t->n_vocab, &v, e)))
            return rc;
        int32_t *f = (int32_t *)((char *)t + ids[i].field);
        if (v != TOK_NULL || f != &t->sep)
            *f = v;
    }
    if (t->unk == TOK_NULL && t->model == TOK_MODEL_SPM) {
        /* SentencePiece's <unk> is id 0 when its type says so */
        if (t->type[0] == TOK_TYPE_UNKNOWN)
            t->unk = 0;
    }
    if ((rc = get_flag(g, "tokenizer.ggml.add_bos_token", &t->add_bos, e)) ||
        (rc = get_flag(g, "tokenizer.ggml.add_eos_token", &t->add_eos, e)) ||
        (rc = get_flag(g, "tokenizer.ggml.add_space_prefix", &t->add_space_prefix, e)))
        return rc;

    struct gguf_str tmpl;
    rc = gguf_get_str(g, "tokenizer.chat_template", &tmpl, e);
    if (rc && rc != MOED_ENOTFOUND)
        return rc;
    if (!rc) {
        t->chat_template = malloc(tmpl.len + 1);
        if (!t->chat_template)
            return moed_err_set(e, MOED_ENOMEM, "tokenizer.chat_template: out of memory");
        memcpy(t->chat_template, tmpl.ptr, tmpl.len);
        t->chat_template[tmpl.len] = 0;
    }
    return 0;
}

int tok_load(struct tok **out, const struct gguf *g, struct moed_err *e)
{
    *out = NULL;
    struct tok *t = calloc(1, sizeof *t);
    if (!t)
        return moed_err_set(e, MOED_ENOMEM, "tokenizer: out of memory");
    int rc = load(t, g, e);
    if (rc) {
        tok_free(t);
        return rc;
    }
    *out = t;
    return 0;
}

void tok_free(struct tok *t)
{
    if (!t)
        return;
    free(t->text);
    free(t->text_off);
    free(t->text_len);
    free(t->piece);
    free(t->piece_off);
    free(t->piece_len);
    free(t->type);
    free(t->score);
    free(t->map.slot);
    tok_merge_free(&t->merges);
    tok_trie_free(&t->added);
    tok_pre_free(t->pre);
    free(t->chat_template);
    free(t);
}

/* ---- queries ------------------------------------------------------------- */

static bool valid(const struct tok *t, int32_t id)
{
    return id >= 0 && (uint32_t)id < t->n_vocab;
}

const char *tok_warning(const struct tok *t)
{
    return t->warning;
}
enum tok_model tok_model(const struct tok *t)
{
    return t->model;
}
uint32_t tok_n_vocab(const struct tok *t)
{
    return t->n_vocab;
}
const char *tok_pre_name(const struct tok *t)
{
    return t->pre_name;
}
size_t tok_max_piece(const struct tok *t)
{
    return t->max_piece;
}
int32_t tok_bos(const struct tok *t)
{
    return t->bos;
}
int32_t tok_eos(const struct tok *t)
{
    return t->eos;
}
int32_t tok_eot(const struct tok *t)
{
    return t->eot;
}
int32_t tok_unk(const struct tok *t)
{
    return t->unk;
}
int32_t tok_pad(const struct tok *t)
{
    return t->pad;
}
int32_t tok_sep(const struct tok *t)
{
    return t->sep;
}
bool tok_wants_bos(const struct tok *t)
{
    return t->add_bos;
}
bool tok_wants_eos(const struct tok *t)
{
    return t->add_eos;
}
const char *tok_chat_template(const struct tok *t)
{
    return t->chat_template;
}

unsigned tok_enc_defaults(const struct tok *t)
{
    return (t->add_bos && t->bos >= 0 ? TOK_ENC_BOS : 0u) |
           (t->add_eos && t->eos >= 0 ? TOK_ENC_EOS : 0u);
}

const char *tok_text(const struct tok *t, int32_t id, size_t *len)
{
    if (!valid(t, id))
        return NULL;
    if (len)
        *len = t->text_len[id];
    return t->text + t->text_off[id];
}

const char *tok_piece(const struct tok *t, int32_t id, size_t *len)
{
    if (!valid(t, id))
        return NULL;
    if (len)
        *len = t->piece_len[id];
    return t->piece + t->piece_off[id];
}

enum tok_type tok_type(const struct tok *t, int32_t id)
{
    return valid(t, id) ? (enum tok_type)t->type[id] : TOK_TYPE_UNDEFINED;
}

float tok_score(const struct tok *t, int32_t id)
{
    return valid(t, id) && t->score ? t->score[id] : 0.0f;
}

int32_t tok_find(const struct tok *t, const char *text, size_t len)
{
    return tok_map_find(t, text, len);
}

bool tok_is_control(const struct tok *t, int32_t id)
{
    return valid(t, id) && (t->type[id] == TOK_TYPE_CONTROL || t->type[id] == TOK_TYPE_UNKNOWN);
}

bool tok_is_eog(const struct tok *t, int32_t id)
{
    if (!valid(t, id))
        return false;
    if (id == t->eos || id == t->eot)
        return true;
    if (t->type[id] != TOK_TYPE_CONTROL)
        return false;
    /* End-of-turn markers of the families moed serves, when the file does
     * not name them (tokenizer.ggml.eot_token_id is rarely set). */
    static const char *const names[] = {
        "<|eot_id|>",
        "<|im_end|>",
        "<|end|>",
        "<|endoftext|>",
        "<|end_of_text|>",
        "<|EOT|>",
        "<end_of_turn>",
        "<|eom_id|>",
        "<|return|>",
        "<|call|>",
        "</s>",
        "<\uff5cend\u2581of\u2581sentence\uff5c>", /* DeepSeek */
    };
    const char *s = t->text + t->text_off[id];
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (!strcmp(s, names[i]))
            return true;
    return false;
}

void tok_ids_free(struct tok_ids *ids)
{
    free(ids->v);
    *ids = (struct tok_ids){0};
}

int tok_ids_push(struct tok_ids *ids, int32_t id)
{
    if (ids->n == ids->cap) {
        size_t cap = ids->cap ? 2 * ids->cap : 64;
        if (cap > SIZE_MAX / sizeof *ids->v)
            return MOED_ENOMEM;
        int32_t *v = realloc(ids->v, cap * sizeof *v);
        if (!v)
            return MOED_ENOMEM;
        ids->v = v;
        ids->cap = cap;
    }
    ids->v[ids->n++] = id;
    return 0;
}
