/*
 * The tokenizer's lookup structures: text -> id (open addressing over the
 * vocabulary arena), (left, right) -> merge (open addressing on a 64-bit
 * key), and a byte trie of the added tokens for matching them in input.
 * Linear probing; tables are at most half (strings) or two-thirds (merges)
 * full, so probes stay short.
 */
#include <stdlib.h>
#include <string.h>

#include "model/tok_impl.h"

/* FNV-1a, then a multiply-shift finaliser so that the low bits mix too. */
static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (uint8_t)s[i]) * 0x100000001b3ull;
    h ^= h >> 29;
    h *= 0xbf58476d1ce4e5b9ull;
    return h ^ (h >> 32);
}

static uint64_t hash_u64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    return x ^ (x >> 33);
}

/* Smallest power of two >= 2n (and >= 16); 0 on overflow. */
static uint32_t table_size(uint32_t n)
{
    uint64_t c = 16;
    while (c < 2ull * n)
        c <<= 1;
    return c > (1ull << 31) ? 0 : (uint32_t)c;
}

int tok_map_build(struct tok *t, struct moed_err *e)
{
    uint32_t size = table_size(t->n_vocab);
    if (!size)
        return moed_err_set(e, MOED_ENOMEM, "tokenizer: %u tokens is too many", t->n_vocab);
    t->map.slot = malloc((size_t)size * sizeof *t->map.slot);
    if (!t->map.slot)
        return moed_err_set(e, MOED_ENOMEM, "tokenizer: out of memory for the token map");
    for (uint32_t i = 0; i < size; i++)
        t->map.slot[i] = (struct tok_strmap_slot){-1, 0};
    t->map.mask = size - 1;
    /* A text that occurs twice maps to the later id (as llama.cpp does). */
    for (uint32_t id = 0; id < t->n_vocab; id++) {
        const char *s = t->text + t->text_off[id];
        uint32_t len = t->text_len[id];
        uint64_t h = hash_bytes(s, len);
        uint32_t tag = (uint32_t)(h >> 32);
        uint32_t i = (uint32_t)h & t->map.mask;
        for (;;) {
            struct tok_strmap_slot *sl = &t->map.slot[i];
            if (sl->id < 0 || (sl->hash == tag && t->text_len[sl->id] == len &&
                               !memcmp(t->text + t->text_off[sl->id], s, len))) {
                *sl = (struct tok_strmap_slot){(int32_t)id, tag};
                break;
            }
            i = (i + 1) & t->map.mask;
        }
    }
    return 0;
}

int32_t tok_map_find(const struct tok *t, const char *s, size_t len)
{
    if (!t->map.slot || len > UINT32_MAX)
        return TOK_NULL;
    uint64_t h = hash_bytes(s, len);
    uint32_t tag = (uint32_t)(h >> 32);
    uint32_t i = (uint32_t)h & t->map.mask;
    for (;;) {
        const struct tok_strmap_slot *sl = &t->map.slot[i];
        if (sl->id < 0)
            return TOK_NULL;
        if (sl->hash == tag && t->text_len[sl->id] == len &&
            !memcmp(t->text + t->text_off[sl->id], s, len))
            return sl->id;
        i = (i + 1) & t->map.mask;
    }
}

int tok_merge_init(struct tok_mergemap *m, uint32_t n_expected)
{
    /* at least 1.5 slots per merge: 16-byte slots, so keep the table small */
    uint32_t size = table_size(n_expected - n_expected / 4);
    if (!size)
        return MOED_ENOMEM;
    m->slot = malloc((size_t)size * sizeof *m->slot);
    if (!m->slot)
        return MOED_ENOMEM;
    for (uint32_t i = 0; i < size; i++)
        m->slot[i].key = UINT64_MAX;
    m->mask = size - 1;
    m->n = 0;
    return 0;
}

void tok_merge_free(struct tok_mergemap *m)
{
    free(m->slot);
    m->slot = NULL;
    m->mask = m->n = 0;
}

static uint64_t pair_key(int32_t l, int32_t r)
{
    return (uint64_t)(uint32_t)l << 32 | (uint32_t)r;
}

int tok_merge_add(struct tok_mergemap *m, int32_t l, int32_t r, uint32_t rank, int32_t id)
{
    /* keep an empty slot so that probes end (n_expected sized the table) */
    if (m->n >= m->mask)
        return MOED_ERANGE;
    uint64_t key = pair_key(l, r);
    uint32_t i = (uint32_t)hash_u64(key) & m->mask;
    while (m->slot[i].key != UINT64_MAX) {
        if (m->slot[i].key == key)
            return 0; /* duplicate: the earlier (lower) rank stays */
        i = (i + 1) & m->mask;
    }
    m->slot[i] = (struct tok_merge){key, rank, id};
    m->n++;
    return 0;
}

const struct tok_merge *tok_merge_find(const struct tok_mergemap *m, int32_t l, int32_t r)
{
    if (!m->slot || l < 0 || r < 0)
        return NULL;
    uint64_t key = pair_key(l, r);
    uint32_t i = (uint32_t)hash_u64(key) & m->mask;
    for (;;) {
        const struct tok_merge *s = &m->slot[i];
        if (s->key == key)
            return s;
        if (s->key == UINT64_MAX)
            return NULL;
        i = (i + 1) & m->mask;
    }
}

/* ---- added-token trie ----------------------------------------------------- */

static int32_t trie_new_node(struct tok_trie *tr, uint8_t byte)
{
    if (tr->n == tr->cap) {
        uint32_t cap = tr->cap ? tr->cap * 2 : 256;
        if (cap > (1u << 30))
            return -1;
        struct tok_trie_node *nn = realloc(tr->node, (size_t)cap * sizeof *nn);
        if (!nn)
            return -1;
        tr->node = nn;
        tr->cap = cap;
    }
    tr->node[tr->n] = (struct tok_trie_node){-1, -1, -1, byte, 0};
    return (int32_t)tr->n++;
}

int tok_trie_add(struct tok_trie *tr, const char *s, size_t len, int32_t id, bool control)
{
    if (!len)
        return 0; /* an empty text can never be matched */
    if (!tr->n) {
        if (trie_new_node(tr, 0) < 0)
            return MOED_ENOMEM;
        for (int i = 0; i < 256; i++)
            tr->root[i] = -1;
    }
    int32_t cur = 0;
    for (size_t k = 0; k < len; k++) {
        uint8_t b = (uint8_t)s[k];
        int32_t c = cur == 0 ? tr->root[b] : tr->node[cur].child;
        if (cur != 0)
            while (c >= 0 && tr->node[c].byte != b)
                c = tr->node[c].sibling;
        if (c < 0) {
            c = trie_new_node(tr, b);
            if (c < 0)
                return MOED_ENOMEM;
            if (cur == 0) {
                tr->root[b] = c;
            } else {
                tr->node[c].sibling = tr->node[cur].child;
                tr->node[cur].child = c;
            }
        }
        cur = c;
    }
    tr->node[cur].id = id;
    tr->node[cur].control = control;
    return 0;
}

void tok_trie_free(struct tok_trie *tr)
{
    free(tr->node);
    tr->node = NULL;
    tr->n = tr->cap = 0;
}

size_t tok_trie_match(const struct tok_trie *tr, const uint8_t *s, size_t n, bool special,
                      int32_t *id)
{
    if (!tr->n || !n)
        return 0;
    size_t best = 0;
    int32_t c = tr->root[s[0]];
    for (size_t k = 0; c >= 0;) {
        const struct tok_trie_node *nd = &tr->node[c];
        if (nd->id >= 0 && (special || !nd->control)) {
            best = k + 1;
            *id = nd->id;
        }
        if (++k == n)
            break;
        c = nd->child;
        while (c >= 0 && tr->node[c].byte != s[k])
            c = tr->node[c].sibling;
    }
    return best;
}

/* ---- scratch ------------------------------------------------------------- */

int tok_grow(void **p, size_t *cap, size_t need)
{
    if (need <= *cap)
        return 0;
    size_t c = *cap ? *cap : 256;
    while (c < need) {
        if (c > SIZE_MAX / 2)
            return MOED_ENOMEM;
        c *= 2;
    }
    void *q = realloc(*p, c);
    if (!q)
        return MOED_ENOMEM;
    *p = q;
    *cap = c;
    return 0;
}

void tok_work_free(struct tok_work *ws)
{
    free(ws->sym);
    free(ws->heap);
    free(ws->buf);
    *ws = (struct tok_work){0};
}
