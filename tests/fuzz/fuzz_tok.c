/*
 * libFuzzer target for the tokenizer.
 *
 * Loads one real vocabulary once (env MOED_FUZZ_VOCAB, default
 * ../shared/vocab/ggml-vocab-gpt-2.gguf), then for every input: the first
 * byte picks options (bit 0: match control tokens, bit 1: render them on
 * decode, bit 2: BOS/EOS), the rest is the text, any bytes at all
 * (invalid UTF-8, NULs).  Checks:
 *   - encoding never fails (except for memory) and yields valid ids;
 *   - decoding gives the input back byte for byte, less the bytes the
 *     vocabulary has no token for (as the unit tests define it), whenever
 *     that is well defined (control tokens rendered, no BOS/EOS, and for
 *     SentencePiece no U+2581 in the text: it decodes as a space);
 *   - the streaming detokenizer emits only whole, valid UTF-8 in every
 *     chunk, and its output equals the decoded bytes when those are valid
 *     UTF-8.
 *
 * Build and run: make fuzz FUZZ_SECONDS=60.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/gguf.h"
#include "common/utf8.h"
#include "model/tok.h"

#define FUZZ_CHECK(c)                                                                              \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            fprintf(stderr, "fuzz_tok: check failed: %s (line %d)\n", #c, __LINE__);               \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static struct tok *tok;
static bool has_byte[256]; /* the byte encodes to itself and decodes back */

static size_t gpt2_char(unsigned b, char u[2])
{
    unsigned cp = ((b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE)
                      ? b
                      : 256 + (b <= 0x20   ? b
                               : b <= 0xA0 ? 33 + b - 0x7F
                                           : 67);
    if (cp < 0x80) {
        u[0] = (char)cp;
        return 1;
    }
    u[0] = (char)(0xC0 | cp >> 6);
    u[1] = (char)(0x80 | (cp & 0x3F));
    return 2;
}

static void load_once(void)
{
    if (tok)
        return;
    const char *path = getenv("MOED_FUZZ_VOCAB");
    if (!path || !*path)
        path = "../shared/vocab/ggml-vocab-gpt-2.gguf";
    struct moed_err e = {0};
    struct gguf g;
    if (gguf_open(&g, path, &e) || tok_load(&tok, &g, &e)) {
        fprintf(stderr, "fuzz_tok: cannot load the vocabulary (set MOED_FUZZ_VOCAB): %s\n", e.msg);
        exit(2);
    }
    gguf_close(&g);
    for (unsigned b = 0; b < 256; b++) {
        if (tok_model(tok) == TOK_MODEL_SPM) {
            char name[8];
            snprintf(name, sizeof name, "<0x%02X>", b);
            has_byte[b] = tok_find(tok, name, 6) >= 0;
        } else {
            char u[2];
            size_t n = gpt2_char(b, u);
            has_byte[b] = tok_type(tok, tok_find(tok, u, n)) == TOK_TYPE_NORMAL;
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    load_once();
    if (size == 0)
        return 0;
    unsigned opt = data[0];
    const char *text = (const char *)data + 1;
    size_t len = size - 1;
    unsigned eflags =
        (opt & 1 ? TOK_ENC_SPECIAL : 0) | (opt & 4 ? tok_enc_defaults(tok) | TOK_ENC_EOS : 0);
    if (tok_eos(tok) < 0)
        eflags &= ~(unsigned)TOK_ENC_EOS;
    unsigned dflags = (opt & 2 ? TOK_DEC_SPECIAL : 0) |
                      (tok_model(tok) == TOK_MODEL_SPM ? TOK_DEC_STRIP_SPACE : 0);

    struct moed_err e = {0};
    struct tok_ids ids = {0};
    int rc = tok_encode(tok, text, len, eflags, &ids, &e);
    FUZZ_CHECK(rc == 0);
    for (size_t i = 0; i < ids.n; i++)
        FUZZ_CHECK(ids.v[i] >= 0 && (uint32_t)ids.v[i] < tok_n_vocab(tok));

    struct tok_bytes dec = {0};
    FUZZ_CHECK(tok_decode(tok, ids.v, ids.n, dflags, &dec, &e) == 0);
    /* The round trip is exact when nothing is added or hidden: no BOS/EOS,
     * and control tokens either not matched or rendered back.  (SPM's
     * <unk> matched as text is left out: its space rule is ambiguous.) */
    bool exact = !(opt & 4) && (!(opt & 1) || ((opt & 2) && tok_model(tok) == TOK_MODEL_BPE));
    /* SentencePiece writes spaces as U+2581, so a U+2581 in the text comes
     * back as a space. */
    if (tok_model(tok) == TOK_MODEL_SPM && memmem(text, len, "\xe2\x96\x81", 3))
        exact = false;
    /* A byte without a token becomes <unk> (rendered with TOK_DEC_SPECIAL)
     * or nothing. */
    for (size_t i = 0; i < len && exact; i++)
        if (!has_byte[(unsigned char)text[i]] && (opt & 2) && tok_unk(tok) >= 0)
            exact = false;
    if (exact) {
        size_t k = 0;
        bool same = true;
        for (size_t i = 0; i < len && same; i++) {
            if (!has_byte[(unsigned char)text[i]])
                continue;
            same = k < dec.n && dec.p[k] == text[i];
            k++;
        }
        if (!same || k != dec.n) {
            fprintf(stderr, "fuzz_tok: round trip differs (%zu bytes in, %zu out)\n", len, dec.n);
            abort();
        }
    }

    struct tok_stream st;
    FUZZ_CHECK(tok_stream_init(&st, tok, dflags, &e) == 0);
    char *acc = malloc(3 * dec.n + 16);
    FUZZ_CHECK(acc);
    size_t an = 0;
    for (size_t i = 0; i <= ids.n; i++) {
        const char *p;
        size_t n;
        if (i < ids.n)
            FUZZ_CHECK(tok_stream_feed(&st, ids.v[i], &p, &n, &e) == 0);
        else
            tok_stream_flush(&st, &p, &n);
        FUZZ_CHECK(utf8_valid(p, n, NULL));
        FUZZ_CHECK(an + n <= 3 * dec.n + 16);
        memcpy(acc + an, p, n);
        an += n;
    }
    if (utf8_valid(dec.p, dec.n, NULL))
        FUZZ_CHECK(an == dec.n && !memcmp(acc, dec.p, an));
    free(acc);
    tok_stream_free(&st);
    tok_bytes_free(&dec);
    tok_ids_free(&ids);
    return 0;
}
