/*
 * api/oai_text.c: the text that leaves the server (see openai.h, "text
 * out"): UTF-8 checks, and the streaming stop-string matcher.
 *
 * The matcher keeps one buffer: the text not yet sent.  Each push first
 * appends the piece's complete characters (a character cut at the end of
 * the piece waits in u8[]), then runs every stop string's KMP automaton over
 * the new bytes.  An automaton's state is the length of the longest tail of
 * the text that is a prefix of its stop string, so the text that must be
 * held is the largest state: everything before it can never become part of
 * a match and is returned.  Stop strings are valid UTF-8, so a held tail
 * always starts at a character boundary and the returned text is whole
 * characters.  A state reaching the full length is a match; the first one
 * (by end position) ends the text.
 */
#include "api/openai.h"

#include <stdlib.h>
#include <string.h>

/* ---- the matcher ------------------------------------------------------------- */

static const char replacement[3] = {(char)0xEF, (char)0xBF, (char)0xBD}; /* U+FFFD */

void oai_stop_free(struct oai_stop *m)
{
    for (int i = 0; i < OAI_MAX_STOP; i++) {
        free(m->stop[i]);
        free(m->fail[i]);
    }
    free(m->buf);
    memset(m, 0, sizeof *m);
    m->matched = -1;
}

int oai_stop_init(struct oai_stop *m, const char *const *stops, const size_t *lens, int n)
{
    memset(m, 0, sizeof *m);
    m->matched = -1;
    if (n < 0 || n > OAI_MAX_STOP)
        return MOED_EINVAL;
    for (int i = 0; i < n; i++) {
        size_t len = !stops[i] ? 0 : lens ? lens[i] : strlen(stops[i]);
        /* A stop string that is not whole characters could never match
         * (the text is), and holding part of one could split a character. */
        if (!stops[i] || len == 0 || !utf8_valid(stops[i], len, NULL)) {
            oai_stop_free(m);
            return MOED_EINVAL;
        }
        m->stop[i] = malloc(len);
        m->fail[i] = malloc(len * sizeof(size_t));
        if (!m->stop[i] || !m->fail[i]) {
            oai_stop_free(m);
            return MOED_ENOMEM;
        }
        memcpy(m->stop[i], stops[i], len);
        m->stop_len[i] = len;
        m->n_stop = i + 1;
        /* fail[k]: length of the longest proper border of stop[0, k] */
        const char *s = m->stop[i];
        size_t *f = m->fail[i], k = 0;
        f[0] = 0;
        for (size_t j = 1; j < len; j++) {
            while (k > 0 && s[j] != s[k])
                k = f[k - 1];
            if (s[j] == s[k])
                k++;
            f[j] = k;
        }
    }
    return 0;
}

int oai_stop_init_request(struct oai_stop *m, const struct oai_request *rq)
{
    const char *stops[OAI_MAX_STOP];
    for (int i = 0; i < rq->n_stop && i < OAI_MAX_STOP; i++)
        stops[i] = rq->stop[i];
    return oai_stop_init(m, stops, rq->stop_len, rq->n_stop);
}

static int buf_append(struct oai_stop *m, const void *p, size_t n)
{
    if (n == 0)
        return 0;
    if (n > m->cap - m->n_buf) {
        size_t cap = m->cap ? m->cap : 256;
        while (cap - m->n_buf < n) {
            if (cap > SIZE_MAX / 2)
                return MOED_ENOMEM;
            cap *= 2;
        }
        char *nb = realloc(m->buf, cap);
        if (!nb)
            return MOED_ENOMEM;
        m->buf = nb;
        m->cap = cap;
    }
    memcpy(m->buf + m->n_buf, p, n);
    m->n_buf += n;
    return 0;
}

/* Append the complete characters of p[0, n) to buf; keep an incomplete tail
 * in u8[]; invalid bytes become U+FFFD. */
static int append_utf8(struct oai_stop *m, const unsigned char *p, size_t n)
{
    int rc;
    /* First complete the character held from the last piece.  Its bytes so
     * far are a valid incomplete start, so a bad byte can only be the one
     * just added: the held bytes become U+FFFD and that byte is looked at
     * again as the start of the next character. */
    while (m->n_u8 > 0 && n > 0) {
        m->u8[m->n_u8++] = *p++;
        n--;
        int r = utf8_next(m->u8, m->n_u8);
        if (r == 0)
            continue;
        if (r > 0) {
            rc = buf_append(m, m->u8, (size_t)r);
        } else {
            rc = buf_append(m, replacement, sizeof replacement);
            p--;
            n++;
        }
        m->n_u8 = 0;
        if (rc)
            return rc;
    }
    size_t i = 0, run = 0; /* p[run, i) is valid and not yet appended */
    while (i < n) {
        if (p[i] < 0x80) {
            i++;
            continue;
        }
        int r = utf8_next(p + i, n - i);
        if (r > 0) {
            i += (size_t)r;
            continue;
        }
        if ((rc = buf_append(m, p + run, i - run)))
            return rc;
        if (r == 0) { /* incomplete at the end of the piece: fewer than 4 bytes */
            memcpy(m->u8, p + i, n - i);
            m->n_u8 = n - i;
            return 0;
        }
        if ((rc = buf_append(m, replacement, sizeof replacement)))
            return rc;
        i += (size_t)-r;
        run = i;
    }
    return buf_append(m, p + run, n - run);
}

/* Run the automata over buf[from, n_buf); on a match cut buf at its start. */
static int scan(struct oai_stop *m, size_t from)
{
    for (size_t j = from; j < m->n_buf; j++) {
        char c = m->buf[j];
        int best = -1;
        for (int i = 0; i < m->n_stop; i++) {
            const char *s = m->stop[i];
            size_t k = m->state[i];
            while (k > 0 && s[k] != c)
                k = m->fail[i][k - 1];
            if (s[k] == c)
                k++;
            m->state[i] = k;
            if (k == m->stop_len[i] && (best < 0 || k > m->stop_len[best]))
                best = i;
        }
        if (best >= 0) {
            m->matched = best;
            m->n_buf = j + 1 - m->stop_len[best];
            return 1;
        }
    }
    return 0;
}

/* Drop what was returned last time: the held tail moves to the front. */
static void drop_emitted(struct oai_stop *m)
{
    if (m->n_emit) {
        memmove(m->buf, m->buf + m->n_emit, m->n_buf - m->n_emit);
        m->n_buf -= m->n_emit;
        m->n_emit = 0;
    }
}

int oai_stop_push(struct oai_stop *m, const char *piece, size_t len, const char **emit,
                  size_t *n_emit)
{
    *emit = "";
    *n_emit = 0;
    if (m->matched >= 0)
        return 1;
    drop_emitted(m);
    size_t from = m->n_buf;
    int rc = append_utf8(m, (const unsigned char *)piece, len);
    if (rc)
        return rc;
    if (scan(m, from)) {
        m->n_emit = m->n_buf;
        *emit = m->buf ? m->buf : "";
        *n_emit = m->n_buf;
        return 1;
    }
    size_t hold = 0;
    for (int i = 0; i < m->n_stop; i++)
        if (m->state[i] > hold)
            hold = m->state[i];
    m->n_emit = m->n_buf - hold;
    *emit = m->buf ? m->buf : "";
    *n_emit = m->n_emit;
    return 0;
}

int oai_stop_flush(struct oai_stop *m, const char **emit, size_t *n_emit)
{
    *emit = "";
    *n_emit = 0;
    if (m->matched >= 0)
        return 1;
    drop_emitted(m);
    if (m->n_u8) {
        /* An unfinished character: U+FFFD, which may still complete a stop
         * string that ends in U+FFFD. */
        m->n_u8 = 0;
        size_t from = m->n_buf;
        int rc = buf_append(m, replacement, sizeof replacement);
        if (rc)
            return rc;
        if (scan(m, from)) {
            m->n_emit = m->n_buf;
            *emit = m->buf;
            *n_emit = m->n_buf;
            return 1;
        }
    }
    for (int i = 0; i < m->n_stop; i++)
        m->state[i] = 0;
    m->n_emit = m->n_buf;
    *emit = m->buf ? m->buf : "";
    *n_emit = m->n_buf;
    return 0;
}
