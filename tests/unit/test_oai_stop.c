/*
 * Tests of the streaming stop-string matcher (api/oai_text.c): stop strings
 * split across pieces, overlapping prefixes, several stops, a stop at the
 * start, Unicode, whole characters in every chunk, no false holdback at the
 * end, and a randomized comparison with a plain reference: for every way of
 * cutting a text into pieces the output is the same, and is what searching
 * the whole text gives.
 */
#include "tests/unit/harness.h"

#include "api/openai.h"

#include <stdlib.h>
#include <string.h>

/* Run pieces (NULL-terminated) through a matcher with stops; collect the
 * output, check each chunk is whole UTF-8, return the last push/flush code. */
struct run {
    char out[4096];
    size_t n;
    int rc;
    int n_chunks;      /* non-empty emits */
    int first_emit_at; /* index of the push that first emitted, -1 */
};

static void run_pieces(struct run *r, const char *const *stops, int n_stop,
                       const char *const *pieces, bool flush)
{
    struct oai_stop m;
    memset(r, 0, sizeof *r);
    r->first_emit_at = -1;
    if (oai_stop_init(&m, stops, NULL, n_stop) != 0) {
        r->rc = -100;
        return;
    }
    for (int i = 0; pieces[i]; i++) {
        const char *e;
        size_t n;
        r->rc = oai_stop_push(&m, pieces[i], strlen(pieces[i]), &e, &n);
        CHECK_MSG(utf8_valid(e, n, NULL), "piece %d: emitted a split character", i);
        if (n && r->first_emit_at < 0)
            r->first_emit_at = i;
        if (n)
            r->n_chunks++;
        if (r->n + n < sizeof r->out) {
            memcpy(r->out + r->n, e, n);
            r->n += n;
        }
    }
    if (flush) {
        const char *e;
        size_t n;
        r->rc = oai_stop_flush(&m, &e, &n);
        CHECK(utf8_valid(e, n, NULL));
        if (n)
            r->n_chunks++;
        if (r->n + n < sizeof r->out) {
            memcpy(r->out + r->n, e, n);
            r->n += n;
        }
    }
    r->out[r->n] = '\0';
    oai_stop_free(&m);
}

#define PIECES(...) ((const char *const[]){__VA_ARGS__, NULL})

TEST(oai_stop_split_across_pieces)
{
    struct run r;
    const char *end[] = {"END"};
    run_pieces(&r, end, 1, PIECES("abc EN", "D more"), true);
    CHECK_EQ(r.rc, 1);
    CHECK(strcmp(r.out, "abc ") == 0);

    const char *im[] = {"<|im_end|>"};
    run_pieces(&r, im, 1, PIECES("xx<", "|im_", "end|>yy"), true);
    CHECK_EQ(r.rc, 1);
    CHECK(strcmp(r.out, "xx") == 0);

    /* three pieces, each one byte of the stop */
    run_pieces(&r, end, 1, PIECES("hello E", "N", "D", "never"), true);
    CHECK_EQ(r.rc, 1);
    CHECK(strcmp(r.out, "hello ") == 0);

    /* what is emitted when: "abc " at once, the held "EN" never */
    struct oai_stop m;
    const char *e;
    size_t n;
    REQUIRE(oai_stop_init(&m, end, NULL, 1) == 0);
    CHECK_EQ(oai_stop_push(&m, "abc EN", 6, &e, &n), 0);
    CHECK(n == 4 && memcmp(e, "abc ", 4) == 0);
    CHECK_EQ(oai_stop_push(&m, "D more", 6, &e, &n), 1);
    CHECK_EQ(n, 0);
    CHECK_EQ(m.matched, 0);
    CHECK_EQ(oai_stop_push(&m, "later", 5, &e, &n), 1); /* nothing after a match */
    CHECK_EQ(n, 0);
    CHECK_EQ(oai_stop_flush(&m, &e, &n), 1);
    CHECK_EQ(n, 0);
    oai_stop_free(&m);
}

TEST(oai_stop_overlapping_prefixes)
{
    struct run r;
    const char *abab[] = {"abab"};
    run_pieces(&r, abab, 1, PIECES("aba", "abab"), true);
    CHECK_EQ(r.rc, 1);
    CHECK(strcmp(r.out, "aba") == 0);
    /* byte by byte */
    run_pieces(&r, abab, 1, PIECES("a", "b", "a", "a", "b", "a", "b", "z"), true);
    CHECK_EQ(r.rc, 1);
    CHECK(strcmp(r.out, "aba") == 0);
    /* "aab" within "aaab": the automaton must fall back, not restart */
    const char *aab[] = {"aab"};
    run_pieces(&r, aab, 1, PIECES("xa", "a", "a", "b"), true);
    CHECK_EQ(r.rc, 1);
    CHECK(strcmp(r.out, "xa") == 0);
    /* a near miss is released in full */
    run_pieces(&r, abab, 1, PIECES("ab", "ab", "a"), true); /* "ababa": matches */
    CHECK_EQ(r.rc, 1);
    CHECK(strcmp(r.out, "") == 0);
    run_pieces(&r, abab, 1, PIECES("ab", "aX", "ab"), true);
    CHECK_EQ(r.rc, 0);
    CHECK(strcmp(r.out, "abaXab") == 0);
}

TEST(oai_stop_multiple_strings)
{
    struct run r;
    const char *fb[] = {"foo", "bar"};
    run_pieces(&r, fb, 2, PIECES("xba", "rfoo"), true);
    CHECK_EQ(r.rc, 1);
    CHECK(strcmp(r.out, "x") == 0);
    /* the first to complete wins: "bc" ends before "abcd" */
    const char *ov[] = {"abcd", "bc"};
    run_pieces(&r, ov, 2, PIECES("abcd"), true);
    CHECK(r.rc == 1 && strcmp(r.out, "a") == 0);
    /* same end: the longer one (earlier start) wins */
    const char *tie[] = {"cd", "bcd"};
    run_pieces(&r, tie, 2, PIECES("ab", "cd"), true);
    CHECK(r.rc == 1 && strcmp(r.out, "a") == 0);
    /* the hold is the longest of the candidates */
    struct oai_stop m;
    const char *e;
    size_t n;
    const char *hold[] = {"xyz1", "yz2", "z3", "q"};
    REQUIRE(oai_stop_init(&m, hold, NULL, 4) == 0);
    CHECK_EQ(oai_stop_push(&m, "abcxyz", 6, &e, &n), 0);
    CHECK(n == 3 && memcmp(e, "abc", 3) == 0);
    CHECK_EQ(oai_stop_push(&m, "2", 1, &e, &n), 1);
    CHECK(n == 1 && memcmp(e, "x", 1) == 0);
    CHECK_EQ(m.matched, 1);
    oai_stop_free(&m);
}

TEST(oai_stop_at_the_beginning)
{
    struct run r;
    const char *s[] = {"STOP"};
    run_pieces(&r, s, 1, PIECES("STOP and more"), true);
    CHECK(r.rc == 1 && r.n == 0);
    run_pieces(&r, s, 1, PIECES("ST", "OP"), true);
    CHECK(r.rc == 1 && r.n == 0);
    const char *nl[] = {"\n"};
    run_pieces(&r, nl, 1, PIECES("\n"), false);
    CHECK(r.rc == 1 && r.n == 0);
}

TEST(oai_stop_unicode)
{
    struct run r;
    const char *full_stop[] = {"\xe3\x80\x82"}; /* 。 */
    /* 你好。再见, cut inside characters */
    run_pieces(&r, full_stop, 1,
               PIECES("\xe4\xbd", "\xa0\xe5\xa5\xbd\xe3", "\x80", "\x82\xe5\x86\x8d\xe8\xa7\x81"),
               true);
    CHECK_EQ(r.rc, 1);
    CHECK(strcmp(r.out, "\xe4\xbd\xa0\xe5\xa5\xbd") == 0);
    /* a stop that shares its first character with the text: é then b */
    const char *ea[] = {"\xc3\xa9"
                        "a"};
    run_pieces(&r, ea, 1, PIECES("\xc3", "\xa9", "b"), true);
    CHECK_EQ(r.rc, 0);
    CHECK(strcmp(r.out, "\xc3\xa9"
                        "b") == 0);
    /* emoji stop split into single bytes */
    const char *emo[] = {"\xf0\x9f\x98\x80"};
    run_pieces(&r, emo, 1, PIECES("ok ", "\xf0", "\x9f", "\x98", "\x80", "after"), true);
    CHECK(r.rc == 1 && strcmp(r.out, "ok ") == 0);
    /* a different emoji with the same first three bytes goes out */
    run_pieces(&r, emo, 1, PIECES("ok ", "\xf0\x9f\x98", "\x81"), true);
    CHECK(r.rc == 0 && strcmp(r.out, "ok \xf0\x9f\x98\x81") == 0);
}

TEST(oai_stop_utf8_holdback)
{
    struct oai_stop m;
    const char *e;
    size_t n;
    REQUIRE(oai_stop_init(&m, NULL, NULL, 0) == 0);
    CHECK_EQ(oai_stop_push(&m, "a\xe4\xbd", 3, &e, &n), 0);
    CHECK(n == 1 && e[0] == 'a');
    CHECK_EQ(oai_stop_push(&m, "\xa0", 1, &e, &n), 0);
    CHECK(n == 3 && memcmp(e, "\xe4\xbd\xa0", 3) == 0);
    /* invalid bytes: one U+FFFD per maximal subpart */
    CHECK_EQ(oai_stop_push(&m, "\xff", 1, &e, &n), 0);
    CHECK(n == 3 && memcmp(e, "\xef\xbf\xbd", 3) == 0);
    CHECK_EQ(oai_stop_push(&m, "\xe4", 1, &e, &n), 0);
    CHECK_EQ(n, 0);
    CHECK_EQ(oai_stop_push(&m, "A", 1, &e, &n), 0);
    CHECK(n == 4 && memcmp(e,
                           "\xef\xbf\xbd"
                           "A",
                           4) == 0);
    CHECK_EQ(oai_stop_push(&m, "\xe2\x82\x41\x80", 4, &e, &n), 0);
    CHECK(n == 7 && memcmp(e,
                           "\xef\xbf\xbd"
                           "A"
                           "\xef\xbf\xbd",
                           7) == 0);
    /* an incomplete character at the end becomes U+FFFD on flush */
    CHECK_EQ(oai_stop_push(&m, "z\xf0\x9f", 3, &e, &n), 0);
    CHECK(n == 1 && e[0] == 'z');
    CHECK_EQ(oai_stop_flush(&m, &e, &n), 0);
    CHECK(n == 3 && memcmp(e, "\xef\xbf\xbd", 3) == 0);
    /* a NUL is a character like any other */
    CHECK_EQ(oai_stop_push(&m, "a\0b", 3, &e, &n), 0);
    CHECK(n == 3 && memcmp(e, "a\0b", 3) == 0);
    oai_stop_free(&m);
}

TEST(oai_stop_no_false_holdback_at_end)
{
    struct run r;
    const char *end[] = {"END"};
    run_pieces(&r, end, 1, PIECES("the EN"), true);
    CHECK(r.rc == 0 && strcmp(r.out, "the EN") == 0);
    run_pieces(&r, end, 1, PIECES("E"), true);
    CHECK(r.rc == 0 && strcmp(r.out, "E") == 0);
    /* released as soon as it diverges, before any flush */
    run_pieces(&r, end, 1, PIECES("the EN", "X"), false);
    CHECK(r.rc == 0 && strcmp(r.out, "the ENX") == 0);
    /* text without any stop prefix is never held */
    struct oai_stop m;
    const char *e;
    size_t n;
    REQUIRE(oai_stop_init(&m, end, NULL, 1) == 0);
    CHECK_EQ(oai_stop_push(&m, "hello", 5, &e, &n), 0);
    CHECK_EQ(n, 5);
    CHECK_EQ(oai_stop_push(&m, "", 0, &e, &n), 0);
    CHECK_EQ(n, 0);
    CHECK_EQ(oai_stop_flush(&m, &e, &n), 0);
    CHECK_EQ(n, 0);
    /* usable again after a flush */
    CHECK_EQ(oai_stop_push(&m, "E", 1, &e, &n), 0);
    CHECK_EQ(n, 0);
    CHECK_EQ(oai_stop_push(&m, "ND", 2, &e, &n), 1);
    oai_stop_free(&m);
}

TEST(oai_stop_init_errors)
{
    struct oai_stop m;
    const char *empty[] = {"a", ""};
    CHECK_EQ(oai_stop_init(&m, empty, NULL, 2), MOED_EINVAL);
    const char *five[] = {"a", "b", "c", "d", "e"};
    CHECK_EQ(oai_stop_init(&m, five, NULL, 5), MOED_EINVAL);
    CHECK_EQ(oai_stop_init(&m, five, NULL, -1), MOED_EINVAL);
    const char *bad[] = {"\xa9"};
    CHECK_EQ(oai_stop_init(&m, bad, NULL, 1), MOED_EINVAL);
    /* lengths given: a stop with a NUL inside */
    const char *withnul[] = {"a\0b"};
    size_t len = 3;
    REQUIRE(oai_stop_init(&m, withnul, &len, 1) == 0);
    const char *e;
    size_t n;
    CHECK_EQ(oai_stop_push(&m, "xa\0b", 4, &e, &n), 1);
    CHECK(n == 1 && e[0] == 'x');
    oai_stop_free(&m);
    oai_stop_free(&m); /* twice is harmless */
}

/* ---- randomized: any cut gives the reference answer ------------------------------ */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint32_t rnd(uint32_t n)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state % n);
}

/* The text up to the first stop (earliest end, longest on ties), searching
 * the whole text at once. */
static size_t reference(const char *t, size_t n, char stops[][16], int n_stop, bool *hit)
{
    for (size_t end = 1; end <= n; end++) {
        size_t best = 0;
        for (int i = 0; i < n_stop; i++) {
            size_t l = strlen(stops[i]);
            if (l <= end && memcmp(t + end - l, stops[i], l) == 0 && l > best)
                best = l;
        }
        if (best) {
            *hit = true;
            return end - best;
        }
    }
    *hit = false;
    return n;
}

TEST(oai_stop_random_cuts_match_reference)
{
    /* characters of 1 to 4 bytes from a small alphabet, so stops occur */
    static const char *const alpha[] = {"a", "b", "\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80"};
    for (int iter = 0; iter < 3000; iter++) {
        char text[256];
        size_t n = 0;
        int n_chars = 1 + (int)rnd(40);
        for (int i = 0; i < n_chars; i++) {
            const char *c = alpha[rnd(5)];
            memcpy(text + n, c, strlen(c));
            n += strlen(c);
        }
        char stops[OAI_MAX_STOP][16];
        const char *sp[OAI_MAX_STOP];
        int n_stop = (int)rnd(OAI_MAX_STOP + 1);
        for (int s = 0; s < n_stop; s++) {
            size_t k = 0;
            int len = 1 + (int)rnd(3);
            for (int i = 0; i < len; i++) {
                const char *c = alpha[rnd(rnd(2) ? 2 : 5)];
                memcpy(stops[s] + k, c, strlen(c));
                k += strlen(c);
            }
            stops[s][k] = '\0';
            sp[s] = stops[s];
        }
        bool hit;
        size_t want = reference(text, n, stops, n_stop, &hit);

        struct oai_stop m;
        REQUIRE(oai_stop_init(&m, sp, NULL, n_stop) == 0);
        char out[512];
        size_t got = 0;
        int rc = 0;
        for (size_t at = 0; at < n;) {
            size_t step = 1 + rnd(6);
            if (step > n - at)
                step = n - at;
            const char *e;
            size_t k;
            rc = oai_stop_push(&m, text + at, step, &e, &k);
            CHECK(utf8_valid(e, k, NULL));
            memcpy(out + got, e, k);
            got += k;
            at += step;
        }
        const char *e;
        size_t k;
        rc = oai_stop_flush(&m, &e, &k);
        memcpy(out + got, e, k);
        got += k;
        oai_stop_free(&m);
        CHECK_MSG(rc == (hit ? 1 : 0), "iter %d: rc %d, hit %d", iter, rc, hit);
        CHECK_MSG(got == want && memcmp(out, text, want) == 0, "iter %d: got %zu bytes, want %zu",
                  iter, got, want);
        if (test_failed_now())
            return;
    }
}
