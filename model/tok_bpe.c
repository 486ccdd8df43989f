/*
 * Byte-level BPE on one word (Sennrich et al. 2016; GPT-2's byte variant).
 *
 * The word starts as one symbol per byte, each the token of that byte's
 * GPT-2 character.  Repeatedly, the adjacent pair with the lowest merge
 * rank (leftmost on ties) is replaced by the merged token, until no
 * adjacent pair has a merge.  Symbols form a linked list; candidate pairs
 * sit in a binary min-heap keyed (rank, left position).  A merge changes
 * only its neighbours, so it pushes at most two new pairs, and entries made
 * stale by earlier merges are recognised (the ids or the link no longer
 * match) and dropped when popped: O(n log n) per word instead of rescanning.
 * Merges are looked up by (left id, right id), so no strings are built.
 */
#include <string.h>

#include "model/tok_impl.h"

struct sym {
    int32_t id;   /* token id, -1 (byte without token) or DEAD */
    int32_t next; /* -1 at the end */
    int32_t prev;
};
#define DEAD (-2)

struct cand {
    uint32_t rank;
    int32_t l, r;     /* positions */
    int32_t lid, rid; /* ids when pushed: detects stale entries */
    int32_t id;       /* merged token */
};

static bool cand_less(const struct cand *a, const struct cand *b)
{
    return a->rank < b->rank || (a->rank == b->rank && a->l < b->l);
}

TOK_HEAP_DEFINE(struct cand, cand_less)

static int try_pair(const struct tok *t, struct tok_work *ws, struct heap *h, const struct sym *s,
                    int32_t l)
{
    if (l < 0 || s[l].next < 0)
        return 0;
    int32_t r = s[l].next;
    const struct tok_merge *m = tok_merge_find(&t->merges, s[l].id, s[r].id);
    if (!m)
        return 0;
    return heap_push(ws, h, (struct cand){m->rank, l, r, s[l].id, s[r].id, m->id});
}

/* A byte with no token of its own: <unk> when there is one, else nothing
 * (the vocabulary cannot express it; tok_load warned). */
static int push_missing(const struct tok *t, struct tok_ids *out)
{
    return t->unk >= 0 ? tok_ids_push(out, t->unk) : 0;
}

int tok_bpe_word(const struct tok *t, const uint8_t *w, size_t n, struct tok_ids *out,
                 struct tok_work *ws)
{
    if (n == 0)
        return 0;
    if (n > INT32_MAX / 2)
        return MOED_ENOMEM;
    if (n == 1)
        return t->byte_tok[w[0]] >= 0 ? tok_ids_push(out, t->byte_tok[w[0]]) : push_missing(t, out);

    if (t->ignore_merges) {
        /* Llama 3: a word that is itself a token is not merged up. */
        if (tok_grow(&ws->buf, &ws->buf_cap, 2 * n))
            return MOED_ENOMEM;
        uint8_t *m = ws->buf;
        size_t k = 0;
        for (size_t i = 0; i < n; i++)
            k += tok_gpt2_utf8(w[i], m + k);
        int32_t id = tok_map_find(t, (const char *)m, k);
        if (id >= 0 && t->type[id] == TOK_TYPE_NORMAL)
            return tok_ids_push(out, id);
    }

    if (tok_grow(&ws->sym, &ws->sym_cap, n * sizeof(struct sym)))
        return MOED_ENOMEM;
    struct sym *s = ws->sym;
    for (size_t i = 0; i < n; i++)
        s[i] = (struct sym){t->byte_tok[w[i]], i + 1 < n ? (int32_t)(i + 1) : -1, (int32_t)i - 1};

    struct heap h = {ws->heap, 0};
    for (int32_t i = 0; i + 1 < (int32_t)n; i++)
        if (try_pair(t, ws, &h, s, i))
            return MOED_ENOMEM;

    while (h.n) {
        struct cand c = heap_pop(&h);
        if (s[c.l].id != c.lid || s[c.l].next != c.r || s[c.r].id != c.rid)
            continue; /* stale: one side merged since */
        s[c.l].id = c.id;
        s[c.l].next = s[c.r].next;
        if (s[c.r].next >= 0)
            s[s[c.r].next].prev = c.l;
        s[c.r].id = DEAD;
        if (try_pair(t, ws, &h, s, s[c.l].prev) || try_pair(t, ws, &h, s, c.l))
            return MOED_ENOMEM;
    }

    for (int32_t i = 0; i >= 0; i = s[i].next) {
        int rc = s[i].id >= 0 ? tok_ids_push(out, s[i].id) : push_missing(t, out);
        if (rc)
            return rc;
    }
    return 0;
}
