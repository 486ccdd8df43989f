/*
 * SentencePiece BPE (the "llama" vocabularies: Llama 2, Mistral, Mixtral,
 * Phi-3) on one stretch of text between added tokens.
 *
 * Spaces become U+2581 '▁' and, with add_space_prefix, one is prepended.
 * The text starts as one symbol per UTF-8 character (an invalid byte is a
 * symbol of its own).  Repeatedly, the adjacent pair whose concatenation is
 * the vocabulary piece with the highest score (leftmost on ties) is merged,
 * until no adjacent pair forms a piece.  As in SentencePiece, only NORMAL
 * pieces are merge targets: control, unused and byte pieces never come out
 * of plain text.  A final symbol that is not a piece (a character outside
 * the vocabulary, an invalid byte) is emitted as its <0xXX> byte tokens
 * ("byte fallback"), or as <unk> when the vocabulary lacks some of them.
 * Pairs sit in a max-heap keyed (score, -left position); stale entries are
 * dropped on pop, as in tok_bpe.c.
 */
#include <string.h>

#include "model/tok_impl.h"

struct sym {
    uint32_t off, len; /* bytes in the escaped text; len 0 = merged away */
    int32_t prev, next;
};

struct cand {
    float score;
    int32_t l, r;
    uint32_t len; /* combined length when pushed: detects stale entries */
};

/* a comes out of the heap before b */
static bool cand_first(const struct cand *a, const struct cand *b)
{
    return a->score > b->score || (a->score == b->score && a->l < b->l);
}

TOK_HEAP_DEFINE(struct cand, cand_first)

static bool mergeable(const struct tok *t, int32_t id)
{
    return id >= 0 && (t->type[id] == TOK_TYPE_NORMAL || t->type[id] == TOK_TYPE_UNDEFINED);
}

static int try_pair(const struct tok *t, struct tok_work *ws, struct heap *h, const struct sym *s,
                    const uint8_t *text, int32_t l)
{
    if (l < 0 || s[l].next < 0)
        return 0;
    int32_t r = s[l].next;
    uint32_t len = s[l].len + s[r].len; /* r follows l in the text */
    int32_t id = tok_map_find(t, (const char *)text + s[l].off, len);
    if (!mergeable(t, id))
        return 0;
    return heap_push(ws, h, (struct cand){t->score[id], l, r, len});
}

/* A symbol that is no piece: its bytes' <0xXX> tokens, or one <unk>. */
static int emit_fallback(const struct tok *t, const uint8_t *p, uint32_t len, struct tok_ids *out)
{
    bool bytes = true;
    for (uint32_t i = 0; i < len; i++)
        bytes = bytes && t->byte_tok[p[i]] >= 0;
    if (!bytes)
        return t->unk >= 0 ? tok_ids_push(out, t->unk) : 0;
    for (uint32_t i = 0; i < len; i++)
        if (tok_ids_push(out, t->byte_tok[p[i]]))
            return MOED_ENOMEM;
    return 0;
}

/* Merge text[0..len) (escaped) and append its ids. */
static int merge_segment(const struct tok *t, const uint8_t *text, size_t len, struct tok_ids *out,
                         struct tok_work *ws)
{
    /* One symbol per character. */
    if (tok_grow(&ws->sym, &ws->sym_cap, len * sizeof(struct sym)))
        return MOED_ENOMEM;
    struct sym *s = ws->sym;
    int32_t ns = 0;
    for (size_t i = 0; i < len;) {
        int32_t cp;
        size_t cl = tok_utf8_next(text + i, len - i, &cp);
        s[ns] = (struct sym){(uint32_t)i, (uint32_t)cl, ns - 1, -1};
        if (ns > 0)
            s[ns - 1].next = ns;
        ns++;
        i += cl;
    }

    struct heap h = {ws->heap, 0};
    for (int32_t i = 0; i + 1 < ns; i++)
        if (try_pair(t, ws, &h, s, text, i))
            return MOED_ENOMEM;

    while (h.n) {
        struct cand c = heap_pop(&h);
        struct sym *l = &s[c.l], *r = &s[c.r];
        if (!l->len || !r->len || l->next != c.r || l->len + r->len != c.len)
            continue; /* stale */
        l->len += r->len;
        l->next = r->next;
        if (r->next >= 0)
            s[r->next].prev = c.l;
        r->len = 0;
        if (try_pair(t, ws, &h, s, text, l->prev) || try_pair(t, ws, &h, s, text, c.l))
            return MOED_ENOMEM;
    }

    for (int32_t i = 0; i >= 0; i = s[i].next) {
        int32_t id = tok_map_find(t, (const char *)text + s[i].off, s[i].len);
        int rc = mergeable(t, id) ? tok_ids_push(out, id)
                                  : emit_fallback(t, text + s[i].off, s[i].len, out);
        if (rc)
            return rc;
    }
    return 0;
}

static bool is_lower_one_eighth(const uint8_t *p)
{
    return p[0] == 0xE2 && p[1] == 0x96 && p[2] == 0x81;
}

int tok_spm_text(const struct tok *t, const uint8_t *in, size_t n, bool prefix_space,
                 struct tok_ids *out, struct tok_work *ws)
{
    if (n == 0)
        return 0;
    /* Escape: ' ' -> U+2581 (3 bytes), maybe one in front. */
    if (n > (UINT32_MAX - 3) / 3)
        return MOED_ENOMEM;
    if (tok_grow(&ws->buf, &ws->buf_cap, 3 * n + 3))
        return MOED_ENOMEM;
    uint8_t *text = ws->buf;
    size_t len = 0;
    static const uint8_t lower_one_eighth[3] = {0xE2, 0x96, 0x81};
    if (prefix_space) {
        memcpy(text, lower_one_eighth, 3);
        len = 3;
    }
    for (size_t i = 0; i < n; i++) {
        if (in[i] == ' ') {
            memcpy(text + len, lower_one_eighth, 3);
            len += 3;
        } else {
            text[len++] = in[i];
        }
    }
    if (!t->spm_word_split)
        return merge_segment(t, text, len, out, ws);

    /* No piece holds '▁' after another character (tok_load checked), so
     * no merge crosses the start of a run of '▁': merging word by word
     * gives the same result, with small heaps instead of one huge one. */
    size_t start = 0;
    for (size_t i = 3; i + 3 <= len; i++) {
        if (is_lower_one_eighth(text + i) && !is_lower_one_eighth(text + i - 3)) {
            int rc = merge_segment(t, text + start, i - start, out, ws);
            if (rc)
                return rc;
            start = i;
            i += 2;
        }
    }
    return merge_segment(t, text + start, len - start, out, ws);
}
