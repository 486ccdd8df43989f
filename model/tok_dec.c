/*
 * Decoding ids to bytes, whole or streamed.
 *
 * Each token's bytes were computed at load (tok.c: make_pieces), so
 * decoding concatenates pieces, leaving out CONTROL/UNKNOWN/UNUSED tokens
 * unless asked to render them, and with TOK_DEC_STRIP_SPACE dropping the
 * space SentencePiece encoding put in front of each stretch of text (at the
 * start and after each added token).
 *
 * The stream runs the same pieces through a UTF-8 assembler that releases
 * only complete characters.  Well-formedness follows Unicode table 3-7
 * (no overlongs, no surrogates, nothing above U+10FFFF); an ill-formed
 * stretch becomes one U+FFFD per maximal subpart, i.e. the longest prefix
 * of a well-formed sequence that was cut short, or a single byte that
 * cannot start one.
 */
#include <stdlib.h>
#include <string.h>

#include "model/tok_impl.h"

static const uint8_t replacement[3] = {0xEF, 0xBF, 0xBD}; /* U+FFFD */

/* The bytes id contributes under flags; *at_start tracks the boundary the
 * SentencePiece space was added after. */
static const char *render(const struct tok *t, int32_t id, unsigned flags, bool *at_start,
                          size_t *len)
{
    uint8_t ty = t->type[id];
    const char *p = t->piece + t->piece_off[id];
    size_t n = t->piece_len[id];
    if (ty == TOK_TYPE_CONTROL || ty == TOK_TYPE_USER_DEFINED) {
        *at_start = true; /* encoding starts a new stretch after these */
    } else {
        if ((flags & TOK_DEC_STRIP_SPACE) && t->model == TOK_MODEL_SPM && t->add_space_prefix &&
            *at_start && n && p[0] == ' ') {
            p++;
            n--;
        }
        *at_start = false;
    }
    if (!(flags & TOK_DEC_SPECIAL) &&
        (ty == TOK_TYPE_CONTROL || ty == TOK_TYPE_UNKNOWN || ty == TOK_TYPE_UNUSED))
        n = 0;
    *len = n;
    return p;
}

static int bytes_append(struct tok_bytes *b, const char *p, size_t n)
{
    if (n > SIZE_MAX - b->n - 1)
        return MOED_ENOMEM;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->n + n + 1)
            cap = cap > SIZE_MAX / 2 ? b->n + n + 1 : 2 * cap;
        char *q = realloc(b->p, cap);
        if (!q)
            return MOED_ENOMEM;
        b->p = q;
        b->cap = cap;
    }
    if (n)
        memcpy(b->p + b->n, p, n);
    b->n += n;
    b->p[b->n] = 0;
    return 0;
}

void tok_bytes_free(struct tok_bytes *b)
{
    free(b->p);
    *b = (struct tok_bytes){0};
}

int tok_decode(const struct tok *t, const int32_t *ids, size_t n, unsigned flags,
               struct tok_bytes *out, struct moed_err *e)
{
    size_t n0 = out->n;
    bool at_start = true;
    if (bytes_append(out, "", 0))
        return moed_err_set(e, MOED_ENOMEM, "detokenize: out of memory");
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || (uint32_t)ids[i] >= t->n_vocab) {
            out->n = n0;
            out->p[n0] = 0;
            return moed_err_set(e, MOED_EINVAL,
                                "token %zu: id %d is out of range (vocabulary has %u)", i, ids[i],
                                t->n_vocab);
        }
        size_t len;
        const char *p = render(t, ids[i], flags, &at_start, &len);
        if (bytes_append(out, p, len)) {
            out->n = n0;
            out->p[n0] = 0;
            return moed_err_set(e, MOED_ENOMEM, "detokenize: out of memory");
        }
    }
    return 0;
}

/* ---- streaming ------------------------------------------------------------ */

int tok_stream_init(struct tok_stream *s, const struct tok *t, unsigned flags, struct moed_err *e)
{
    *s = (struct tok_stream){.t = t, .flags = flags, .at_start = true};
    /* worst case: 3 held bytes + a piece, every byte becoming U+FFFD */
    s->cap = 3 * ((size_t)t->max_piece + 4) + 8;
    s->buf = malloc(s->cap);
    if (!s->buf)
        return moed_err_set(e, MOED_ENOMEM, "detokenize: out of memory");
    return 0;
}

void tok_stream_free(struct tok_stream *s)
{
    free(s->buf);
    s->buf = NULL;
    s->cap = 0;
}

/* Allowed range of the byte after lead byte b (the later ones: 80..BF). */
static void second_range(uint8_t b, uint8_t *lo, uint8_t *hi)
{
    *lo = 0x80;
    *hi = 0xBF;
    if (b == 0xE0)
        *lo = 0xA0;
    else if (b == 0xED)
        *hi = 0x9F;
    else if (b == 0xF0)
        *lo = 0x90;
    else if (b == 0xF4)
        *hi = 0x8F;
}

static size_t put_replacement(char *out, size_t k)
{
    memcpy(out + k, replacement, 3);
    return k + 3;
}

/* Push one byte through the assembler, writing completed output at out+k. */
static size_t stream_byte(struct tok_stream *s, uint8_t b, char *out, size_t k)
{
    for (;;) {
        if (s->npend == 0) {
            if (b < 0x80) {
                out[k++] = (char)b;
            } else if (b >= 0xC2 && b <= 0xDF) {
                s->need = 2;
                s->pend[s->npend++] = b;
            } else if (b >= 0xE0 && b <= 0xEF) {
                s->need = 3;
                s->pend[s->npend++] = b;
            } else if (b >= 0xF0 && b <= 0xF4) {
                s->need = 4;
                s->pend[s->npend++] = b;
            } else {
                k = put_replacement(out, k); /* cannot start a character */
            }
            return k;
        }
        uint8_t lo = 0x80, hi = 0xBF;
        if (s->npend == 1)
            second_range(s->pend[0], &lo, &hi);
        if (b >= lo && b <= hi) {
            s->pend[s->npend++] = b;
            if (s->npend == s->need) {
                memcpy(out + k, s->pend, s->npend);
                k += s->npend;
                s->npend = 0;
            }
            return k;
        }
        /* the held bytes are a maximal subpart: one U+FFFD, then b afresh */
        k = put_replacement(out, k);
        s->npend = 0;
    }
}

int tok_stream_feed(struct tok_stream *s, int32_t id, const char **out, size_t *len,
                    struct moed_err *e)
{
    const struct tok *t = s->t;
    *out = s->buf;
    *len = 0;
    if (id < 0 || (uint32_t)id >= t->n_vocab)
        return moed_err_set(e, MOED_EINVAL, "detokenize: id %d is out of range (vocabulary has %u)",
                            id, t->n_vocab);
    size_t n;
    const uint8_t *p = (const uint8_t *)render(t, id, s->flags, &s->at_start, &n);
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        k = stream_byte(s, p[i], s->buf, k);
    *len = k;
    return 0;
}

void tok_stream_flush(struct tok_stream *s, const char **out, size_t *len)
{
    size_t k = 0;
    if (s->npend)
        k = put_replacement(s->buf, k);
    s->npend = 0;
    s->at_start = true;
    *out = s->buf;
    *len = k;
}
