/*
 * Tokenizer tests.
 *
 * The oracle is ../shared/vocab: real vocabularies with the ids their Hugging
 * Face tokenizers give for 46 test strings (README there).  Every string
 * must give exactly its ids (no BOS/EOS, control tokens not parsed), and
 * decoding must give the string back byte for byte (SentencePiece with
 * TOK_DEC_STRIP_SPACE, which drops the space encoding added), whole and
 * streamed.  The qwen2 and llama-bpe vectors come without vocabularies: the
 * tests build those with tools/hf2gguf.py --vocab-only from
 * ../shared/hf-tokenizers.  The rest: added/control tokens, BOS/EOS,
 * invalid UTF-8, the streaming detokenizer's handling of split and
 * ill-formed characters, and malformed metadata.
 */
#include <dirent.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "model/gguf.h"
#include "common/utf8.h"
#include "model/tok.h"
#include "tests/unit/harness.h"

static struct tok *load_path(const char *path)
{
    struct moed_err e = {0};
    struct gguf g;
    if (gguf_open(&g, path, &e)) {
        test_fail(__FILE__, __LINE__, "%s: %s", path, e.msg);
        return NULL;
    }
    struct tok *t = NULL;
    if (tok_load(&t, &g, &e))
        test_fail(__FILE__, __LINE__, "%s: %s", path, e.msg);
    gguf_close(&g); /* the tokenizer must not need the file any more */
    return t;
}

static struct tok *load_vocab(const char *name)
{
    char path[512];
    snprintf(path, sizeof path, "%s/vocab/ggml-vocab-%s.gguf", test_shared_dir(), name);
    return load_path(path);
}

/* Ids as " 1 2 3" (at most ~40 of them) into buf. */
static const char *ids_str(const int32_t *v, size_t n, char *buf, size_t cap)
{
    size_t k = 0;
    buf[0] = 0;
    for (size_t i = 0; i < n && k + 16 < cap; i++)
        k += (size_t)snprintf(buf + k, cap - k, " %d", v[i]);
    if (k + 16 >= cap)
        snprintf(buf + k, cap - k, " ...");
    return buf;
}

/* Streams ids one by one; checks every chunk is whole UTF-8 and returns
 * the concatenation (caller frees). */
static char *stream_all(const struct tok *t, const int32_t *ids, size_t n, unsigned flags,
                        size_t *outlen)
{
    struct tok_stream s;
    struct moed_err e = {0};
    if (tok_stream_init(&s, t, flags, &e))
        return NULL;
    char *acc = calloc(1, 1), *ret = NULL;
    size_t an = 0;
    for (size_t i = 0; acc && i <= n; i++) {
        const char *p;
        size_t len;
        if (i < n) {
            if (tok_stream_feed(&s, ids[i], &p, &len, &e)) {
                test_fail(__FILE__, __LINE__, "stream: %s", e.msg);
                goto out;
            }
        } else {
            tok_stream_flush(&s, &p, &len);
        }
        if (!utf8_valid(p, len, NULL)) {
            test_fail(__FILE__, __LINE__, "stream chunk %zu is not whole UTF-8", i);
            goto out;
        }
        char *q = realloc(acc, an + len + 1);
        if (!q)
            goto out;
        acc = q;
        memcpy(acc + an, p, len);
        an += len;
        acc[an] = 0;
    }
    ret = acc;
    acc = NULL;
    *outlen = an;
out:
    free(acc);
    tok_stream_free(&s);
    return ret;
}

/*
 * The vectors: strings separated by "\n__ggml_vocab_test__\n" (the file
 * ends with one), and one line of ids per string.  Returns the number of
 * strings checked; fails the test with one summary line per vocabulary.
 */
static int check_vectors(const char *label, struct tok *t, const char *inp_path,
                         const char *out_path)
{
    size_t inp_len, out_len;
    char *inp = test_read_file(inp_path, &inp_len);
    char *out = test_read_file(out_path, &out_len);
    if (!inp || !out) {
        test_fail(__FILE__, __LINE__, "%s: cannot read %s / %s", label, inp_path, out_path);
        free(inp);
        free(out);
        return 0;
    }
    static const char sep[] = "\n__ggml_vocab_test__\n";
    const size_t seplen = sizeof sep - 1;
    bool spm = tok_model(t) == TOK_MODEL_SPM;
    int n_str = 0, n_ok = 0, n_rt = 0;
    char first[1024] = "";
    char *s = inp, *line = out;
    while (s < inp + inp_len) {
        char *end = strstr(s, sep);
        size_t slen = end ? (size_t)(end - s) : strlen(s);
        char *nl = line ? strchr(line, '\n') : NULL;
        if (!line || !*line) {
            snprintf(first, sizeof first, "fewer id lines than strings");
            break;
        }
        if (nl)
            *nl = 0;
        /* expected ids */
        int32_t want[1024];
        size_t nw = 0;
        for (char *p = line; *p && nw < 1024;) {
            char *q;
            long v = strtol(p, &q, 10);
            if (q == p)
                break;
            want[nw++] = (int32_t)v;
            p = q;
        }
        struct tok_ids got = {0};
        struct moed_err e = {0};
        int rc = tok_encode(t, s, slen, 0, &got, &e);
        bool ids_ok = !rc && got.n == nw && (!nw || !memcmp(got.v, want, nw * sizeof *want));
        n_str++;
        n_ok += ids_ok;
        /* round trip: whole and streamed */
        struct tok_bytes dec = {0};
        unsigned dflags = spm ? TOK_DEC_STRIP_SPACE : 0;
        bool rt_ok = !rc && !tok_decode(t, got.v, got.n, dflags, &dec, &e) && dec.n == slen &&
                     !memcmp(dec.p ? dec.p : "", s, slen);
        size_t sl = 0;
        char *st = rc ? NULL : stream_all(t, got.v, got.n, dflags, &sl);
        rt_ok = rt_ok && st && sl == slen && !memcmp(st, s, slen);
        n_rt += rt_ok;
        if ((!ids_ok || !rt_ok) && !first[0]) {
            char gb[400], wb[400];
            snprintf(first, sizeof first, "string %d '%.*s': %s; got [%s] want [%s]%s%s", n_str - 1,
                     (int)(slen > 60 ? 60 : slen), s, !ids_ok ? "ids differ" : "round trip differs",
                     ids_str(got.v, got.n, gb, sizeof gb), ids_str(want, nw, wb, sizeof wb),
                     rc ? " error: " : "", rc ? e.msg : "");
        }
        free(st);
        tok_bytes_free(&dec);
        tok_ids_free(&got);
        line = nl ? nl + 1 : NULL;
        if (!end)
            break;
        s = end + seplen;
    }
    if (line && *line && !first[0])
        snprintf(first, sizeof first, "more id lines than strings");
    if (n_str != 46 && !first[0])
        snprintf(first, sizeof first, "%d strings (expected 46)", n_str);
    if (first[0])
        test_fail(__FILE__, __LINE__, "%s: %d/%d ids, %d/%d round trips; first failure: %s", label,
                  n_ok, n_str, n_rt, n_str, first);
    free(inp);
    free(out);
    return n_str;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

TEST(tok_vectors_all_vocabs)
{
    char dir[512];
    snprintf(dir, sizeof dir, "%s/vocab", test_shared_dir());
    DIR *d = opendir(dir);
    if (!d)
        SKIP("no ../shared/vocab (set MOED_SHARED)");
    char *names[64];
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)) && n < 64) {
        size_t l = strlen(de->d_name);
        if (l > 5 && !strcmp(de->d_name + l - 5, ".gguf"))
            names[n++] = strdup(de->d_name);
    }
    closedir(d);
    qsort(names, (size_t)n, sizeof *names, cmp_str);
    CHECK(n >= 9);
    for (int i = 0; i < n; i++) {
        char path[1024], inp[1100], out[1100];
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        snprintf(inp, sizeof inp, "%s.inp", path);
        snprintf(out, sizeof out, "%s.out", path);
        struct tok *t = load_path(path);
        if (t) {
            CHECK_MSG(!tok_warning(t)[0], "%s: warning: %s", names[i], tok_warning(t));
            check_vectors(names[i], t, inp, out);
        }
        tok_free(t);
        free(names[i]);
    }
}

/* Modification time of path, 0 if it does not exist. */
static double mtime(const char *path)
{
    struct stat st;
    if (stat(path, &st))
        return 0;
    return (double)st.st_mtim.tv_sec + st.st_mtim.tv_nsec * 1e-9;
}

/* A vocabulary built from a Hugging Face tokenizer by tools/hf2gguf.py,
 * reused while it is newer than the tool and the tokenizer files. */
static void check_hf(const char *family, const char *vectors)
{
    if (access("tools/hf2gguf.py", R_OK))
        SKIP("tools/hf2gguf.py missing");
    char src[512], gg[512], cmd[3072], f[700];
    snprintf(src, sizeof src, "%s/hf-tokenizers/%s", test_shared_dir(), family);
    struct stat st;
    if (stat(src, &st))
        SKIP("no ../shared/hf-tokenizers (set MOED_SHARED)");
    snprintf(gg, sizeof gg, "%s/tok-%s-vocab.gguf", test_tmp_dir(), family);
    double newest = mtime("tools/hf2gguf.py");
    if (mtime("tools/gguf.py") > newest)
        newest = mtime("tools/gguf.py");
    snprintf(f, sizeof f, "%s/tokenizer.json", src);
    if (mtime(f) > newest)
        newest = mtime(f);
    snprintf(f, sizeof f, "%s/tokenizer_config.json", src);
    if (mtime(f) > newest)
        newest = mtime(f);
    if (mtime(gg) <= newest) {
        if (system("command -v python3 >/dev/null 2>&1"))
            SKIP("python3 not found (needed to run tools/hf2gguf.py)");
        snprintf(cmd, sizeof cmd,
                 "python3 tools/hf2gguf.py --vocab-only '%s' '%s.tmp' >'%s.log' 2>&1 && "
                 "mv '%s.tmp' '%s'",
                 src, gg, gg, gg, gg);
        int rc = system(cmd);
        if (rc) {
            test_fail(__FILE__, __LINE__, "%s failed (status %d; see %s.log)", cmd, rc, gg);
            return;
        }
    }
    struct tok *t = load_path(gg);
    if (!t)
        return;
    CHECK_MSG(!tok_warning(t)[0], "%s: warning: %s", family, tok_warning(t));
    char inp[600], out[600];
    snprintf(inp, sizeof inp, "%s/vocab/vectors-only/ggml-vocab-%s.gguf.inp", test_shared_dir(),
             vectors);
    snprintf(out, sizeof out, "%s/vocab/vectors-only/ggml-vocab-%s.gguf.out", test_shared_dir(),
             vectors);
    check_vectors(vectors, t, inp, out);

    /* chat markers: control tokens, matched on request, ending turns */
    const char *end = !strcmp(family, "qwen3") ? "<|im_end|>" : "<|eot_id|>";
    const char *start = !strcmp(family, "qwen3") ? "<|im_start|>" : "<|start_header_id|>";
    int32_t end_id = tok_find(t, end, strlen(end)), start_id = tok_find(t, start, strlen(start));
    CHECK(end_id >= 0 && start_id >= 0);
    CHECK(tok_is_control(t, end_id) && tok_is_eog(t, end_id) && !tok_is_eog(t, start_id));
    CHECK(tok_chat_template(t) != NULL);
    char text[128];
    snprintf(text, sizeof text, "%shi%s", start, end);
    struct tok_ids ids = {0};
    struct moed_err e = {0};
    CHECK(!tok_encode(t, text, strlen(text), TOK_ENC_SPECIAL, &ids, &e) && ids.n == 3 &&
          ids.v[0] == start_id && ids.v[2] == end_id);
    tok_ids_free(&ids);
    CHECK(!tok_encode(t, text, strlen(text), 0, &ids, &e) && ids.n > 3);
    tok_ids_free(&ids);
    tok_free(t);
}

TEST(tok_vectors_qwen2_from_hf)
{
    check_hf("qwen3", "qwen2");
}
TEST(tok_vectors_llama_bpe_from_hf)
{
    check_hf("llama3", "llama-bpe");
}

/* ---- added tokens, BOS/EOS ------------------------------------------------ */

static bool encode_is(const struct tok *t, const char *s, unsigned flags, const int32_t *want,
                      size_t nw, int line)
{
    struct tok_ids got = {0};
    struct moed_err e = {0};
    int rc = tok_encode(t, s, strlen(s), flags, &got, &e);
    bool ok = !rc && got.n == nw && (!nw || !memcmp(got.v, want, nw * sizeof *want));
    if (!ok) {
        char gb[400], wb[400];
        test_fail(__FILE__, line, "encode '%s' flags %u: got [%s] want [%s] %s", s, flags,
                  ids_str(got.v, got.n, gb, sizeof gb), ids_str(want, nw, wb, sizeof wb),
                  rc ? e.msg : "");
    }
    tok_ids_free(&got);
    return ok;
}
#define ENCODE_IS(t, s, flags, ...)                                                                \
    do {                                                                                           \
        const int32_t want_[] = {__VA_ARGS__};                                                     \
        encode_is(t, s, flags, want_, sizeof want_ / sizeof want_[0], __LINE__);                   \
    } while (0)

static char *decode_str(const struct tok *t, const int32_t *ids, size_t n, unsigned flags)
{
    struct tok_bytes b = {0};
    struct moed_err e = {0};
    if (tok_decode(t, ids, n, flags, &b, &e)) {
        test_fail(__FILE__, __LINE__, "decode: %s", e.msg);
        return NULL;
    }
    return b.p;
}

TEST(tok_special_tokens_gpt2)
{
    struct tok *t = load_vocab("gpt-2");
    REQUIRE(t);
    CHECK_EQ(tok_n_vocab(t), 50257);
    CHECK_EQ(tok_bos(t), 50256);
    CHECK_EQ(tok_eos(t), 50256);
    CHECK(tok_is_control(t, 50256));
    CHECK(tok_is_eog(t, 50256));
    CHECK(!tok_is_eog(t, 15496));
    CHECK(!strcmp(tok_pre_name(t), "gpt-2"));
    CHECK_EQ(tok_find(t, "<|endoftext|>", 13), 50256);
    CHECK_EQ(tok_find(t, "Hello", 5), 15496);
    size_t n;
    CHECK(!strcmp(tok_text(t, 18435, &n), "\xc4\xa0Hello") && n == 7); /* "ĠHello" */
    CHECK(!strcmp(tok_piece(t, 18435, &n), " Hello") && n == 6);
    CHECK(tok_text(t, -1, NULL) == NULL && tok_text(t, 50257, NULL) == NULL);

    /* control tokens only with TOK_ENC_SPECIAL */
    ENCODE_IS(t, "Hello<|endoftext|>", TOK_ENC_SPECIAL, 15496, 50256);
    struct tok_ids ids = {0};
    struct moed_err e = {0};
    REQUIRE(!tok_encode(t, "Hello<|endoftext|>", 18, 0, &ids, &e));
    CHECK(ids.n > 2);
    for (size_t i = 0; i < ids.n; i++)
        CHECK(ids.v[i] != 50256);
    char *d = decode_str(t, ids.v, ids.n, 0);
    CHECK(d && !strcmp(d, "Hello<|endoftext|>"));
    free(d);
    tok_ids_free(&ids);

    /* BOS/EOS flags, and rendering of control tokens on decode */
    ENCODE_IS(t, "Hello", TOK_ENC_BOS | TOK_ENC_EOS, 50256, 15496, 50256);
    CHECK_EQ(tok_enc_defaults(t), 0); /* no add_bos_token in this file */
    const int32_t seq[] = {50256, 15496, 50256};
    d = decode_str(t, seq, 3, 0);
    CHECK(d && !strcmp(d, "Hello"));
    free(d);
    d = decode_str(t, seq, 3, TOK_DEC_SPECIAL);
    CHECK(d && !strcmp(d, "<|endoftext|>Hello<|endoftext|>"));
    free(d);

    /* bad ids are errors, and leave the output as it was */
    struct tok_bytes b = {0};
    const int32_t bad[] = {15496, 50257};
    CHECK_EQ(tok_decode(t, bad, 2, 0, &b, &e), MOED_EINVAL);
    CHECK(strstr(e.msg, "50257") != NULL);
    CHECK_EQ(b.n, 0);
    tok_bytes_free(&b);
    tok_free(t);
}

TEST(tok_user_defined_tokens)
{
    /* deepseek-coder: <|EOT|> is USER_DEFINED (matched always), the
     * begin/end-of-sentence tokens are CONTROL. */
    struct tok *t = load_vocab("deepseek-coder");
    REQUIRE(t);
    ENCODE_IS(t, "a<|EOT|>b", 0, 64, 32021, 65);
    ENCODE_IS(t, "<｜begin▁of▁sentence｜>", TOK_ENC_SPECIAL, 32013);
    CHECK(tok_wants_bos(t));
    CHECK_EQ(tok_enc_defaults(t), TOK_ENC_BOS);
    ENCODE_IS(t, "a", tok_enc_defaults(t), 32013, 64);
    CHECK(tok_is_eog(t, 32014));
    tok_free(t);

    /* mpt: runs of spaces are added tokens; leftmost-longest matching */
    t = load_vocab("mpt");
    REQUIRE(t);
    int32_t sp24 = tok_find(t, "                        ", 24), sp2 = tok_find(t, "  ", 2);
    int32_t sp4 = tok_find(t, "    ", 4);
    CHECK(sp24 >= 0 && sp2 >= 0 && sp4 >= 0);
    char spaces[29];
    memset(spaces, ' ', 28);
    spaces[28] = 0;
    ENCODE_IS(t, spaces, 0, sp24, sp4);
    tok_free(t);
}

TEST(tok_spm_special_and_space)
{
    struct tok *t = load_vocab("llama-spm");
    REQUIRE(t);
    CHECK_EQ(tok_model(t), TOK_MODEL_SPM);
    CHECK_EQ(tok_bos(t), 1);
    CHECK_EQ(tok_eos(t), 2);
    CHECK_EQ(tok_unk(t), 0);
    CHECK_EQ(tok_enc_defaults(t), TOK_ENC_BOS);
    int32_t hello = tok_find(t, "\xe2\x96\x81Hello", 8); /* "▁Hello" */
    REQUIRE(hello >= 0);
    ENCODE_IS(t, "Hello", TOK_ENC_BOS, 1, hello);
    /* after a control token the text gets its own leading space */
    ENCODE_IS(t, "<s>Hello", TOK_ENC_SPECIAL, 1, hello);
    const int32_t ids[] = {1, hello, 2};
    char *d = decode_str(t, ids, 3, TOK_DEC_SPECIAL | TOK_DEC_STRIP_SPACE);
    CHECK(d && !strcmp(d, "<s>Hello</s>"));
    free(d);
    d = decode_str(t, ids, 3, 0);
    CHECK(d && !strcmp(d, " Hello"));
    free(d);
    /* byte fallback: <0x0A> decodes to a newline */
    int32_t nl = tok_find(t, "<0x0A>", 6);
    CHECK(nl >= 0 && tok_type(t, nl) == TOK_TYPE_BYTE);
    size_t n;
    CHECK(!strcmp(tok_piece(t, nl, &n), "\n") && n == 1);
    tok_free(t);
}

/* ---- invalid UTF-8 input ------------------------------------------------- */

/* The GPT-2 character of byte b (see tok_utf8.c), as UTF-8 in u; length. */
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

/* Encode any bytes and decode them back: the same bytes, less those the
 * vocabulary has no token for (BPE: whose byte character is not a NORMAL
 * token; they encode as <unk> or nothing, and <unk> renders as nothing). */
static void roundtrip_bytes(const struct tok *t, const char *s, size_t len, unsigned dflags)
{
    struct tok_ids ids = {0};
    struct tok_bytes b = {0};
    struct moed_err e = {0};
    char want[256];
    size_t nw = 0;
    for (size_t i = 0; i < len && nw < sizeof want; i++) {
        char u[2];
        size_t ul = gpt2_char((unsigned char)s[i], u);
        int32_t id = tok_find(t, u, ul);
        if (tok_model(t) == TOK_MODEL_SPM || tok_type(t, id) == TOK_TYPE_NORMAL)
            want[nw++] = s[i];
    }
    int rc = tok_encode(t, s, len, 0, &ids, &e);
    CHECK_MSG(!rc, "encode: %s", e.msg);
    rc = tok_decode(t, ids.v, ids.n, dflags, &b, &e);
    CHECK_MSG(!rc && b.n == nw && !memcmp(b.p, want, nw),
              "invalid UTF-8 does not round-trip (%zu bytes back, want %zu)", b.n, nw);
    /* the stream turns the ill-formed parts into U+FFFD and stays whole UTF-8 */
    size_t sl;
    char *st = stream_all(t, ids.v, ids.n, dflags, &sl);
    CHECK(st && utf8_valid(st, sl, NULL));
    free(st);
    tok_bytes_free(&b);
    tok_ids_free(&ids);
}

TEST(tok_invalid_utf8_input)
{
    static const char junk[] =
        "\xff\xfe abc \xc3 caf\xc3\xa9 \xed\xa0\x80 \xf0\x9f\x98 x\x80\x80 \xe2\x82";
    const char *names[] = {"gpt-2", "llama-spm", "falcon", "deepseek-llm", "starcoder", "mpt"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        struct tok *t = load_vocab(names[i]);
        if (!t)
            continue;
        unsigned dflags = tok_model(t) == TOK_MODEL_SPM ? TOK_DEC_STRIP_SPACE : 0;
        roundtrip_bytes(t, junk, sizeof junk - 1, dflags);
        char zero[5] = {'a', 0, 'b', 0, 0};
        roundtrip_bytes(t, zero, 4, dflags);
        tok_free(t);
    }
}

/* ---- streaming detokenizer ----------------------------------------------- */

TEST(tok_stream_never_splits_characters)
{
    struct tok *t = load_vocab("gpt-2");
    REQUIRE(t);
    /* emoji (4 bytes, ZWJ sequences) and CJK span several byte tokens */
    const char *s = "\xf0\x9f\xa6\x99 \xe6\x88\x91\xe6\x83\xb3 "
                    "\xf0\x9f\x98\xb6\xe2\x80\x8d\xf0\x9f\x8c\xab\xef\xb8\x8f ok";
    struct tok_ids ids = {0};
    struct moed_err e = {0};
    REQUIRE(!tok_encode(t, s, strlen(s), 0, &ids, &e));
    CHECK(ids.n > 8); /* really split across tokens */
    struct tok_stream st;
    REQUIRE(!tok_stream_init(&st, t, 0, &e));
    char acc[256];
    size_t k = 0;
    int held = 0;
    for (size_t i = 0; i < ids.n; i++) {
        const char *p;
        size_t len;
        REQUIRE(!tok_stream_feed(&st, ids.v[i], &p, &len, &e));
        CHECK(utf8_valid(p, len, NULL));
        held += len == 0;
        REQUIRE(k + len < sizeof acc);
        memcpy(acc + k, p, len);
        k += len;
    }
    CHECK(held > 0); /* some tokens ended mid-character */
    const char *p;
    size_t len;
    tok_stream_flush(&st, &p, &len);
    CHECK_EQ(len, 0);
    CHECK(k == strlen(s) && !memcmp(acc, s, k));
    /* a bad id is refused and changes nothing */
    CHECK_EQ(tok_stream_feed(&st, -5, &p, &len, &e), MOED_EINVAL);
    tok_stream_free(&st);
    tok_ids_free(&ids);
    tok_free(t);
}

/* Feed raw bytes as gpt-2 byte tokens; compare the whole stream output. */
static void stream_bytes_is(const struct tok *t, const char *in, size_t n, const char *want,
                            int line)
{
    int32_t ids[32];
    for (size_t i = 0; i < n; i++) {
        char u[2];
        size_t ul = gpt2_char((unsigned char)in[i], u);
        ids[i] = tok_find(t, u, ul);
    }
    size_t len;
    char *got = stream_all(t, ids, n, 0, &len);
    if (!got || len != strlen(want) || memcmp(got, want, len))
        test_fail(__FILE__, line, "stream of %zu bytes: got '%s' want '%s'", n, got ? got : "",
                  want);
    free(got);
}

TEST(tok_stream_invalid_sequences)
{
    struct tok *t = load_vocab("gpt-2");
    REQUIRE(t);
#define FFFD "\xef\xbf\xbd"
    stream_bytes_is(t,
                    "\xf0\x9f\x98"
                    "A",
                    4, FFFD "A", __LINE__);                          /* truncated 4-byte */
    stream_bytes_is(t, "\xe0\x80", 2, FFFD FFFD, __LINE__);          /* overlong lead */
    stream_bytes_is(t, "\xed\xa0\x80", 3, FFFD FFFD FFFD, __LINE__); /* surrogate */
    stream_bytes_is(t,
                    "\xff"
                    "a\x80",
                    3, FFFD "a" FFFD, __LINE__); /* never-valid bytes */
    stream_bytes_is(t, "\xf4\x90\x80\x80", 4, FFFD FFFD FFFD FFFD, __LINE__); /* > U+10FFFF */
    stream_bytes_is(t, "\xe2\x82", 2, FFFD, __LINE__);                        /* cut at the end */
    stream_bytes_is(t, "\xe2\x82\xac", 3, "\xe2\x82\xac", __LINE__);          /* whole: euro sign */
#undef FFFD
    tok_free(t);
}

/* ---- synthetic vocabularies: merging and malformed metadata -------------- */

struct kvset {
    const char *model;   /* NULL: leave out */
    const char **tokens; /* NULL: leave out */
    size_t n_tokens;
    const int32_t *types; /* NULL: leave out */
    size_t n_types;
    const float *scores;
    size_t n_scores;
    const char **merges;
    size_t n_merges;
    const char *pre;
};

static int load_synth(const struct kvset *k, void (*extra)(struct gguf_writer *), struct tok **out,
                      struct moed_err *e)
{
    struct gguf_writer *w = gguf_writer_new(3);
    if (!w)
        return MOED_ENOMEM;
    if (k->model)
        gguf_writer_set_str(w, "tokenizer.ggml.model", k->model);
    if (k->tokens)
        gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", k->tokens, k->n_tokens);
    if (k->types)
        gguf_writer_set_arr(w, "tokenizer.ggml.token_type", GGUF_I32, k->types, k->n_types);
    if (k->scores)
        gguf_writer_set_arr(w, "tokenizer.ggml.scores", GGUF_F32, k->scores, k->n_scores);
    if (k->merges)
        gguf_writer_set_arr_str(w, "tokenizer.ggml.merges", k->merges, k->n_merges);
    if (k->pre)
        gguf_writer_set_str(w, "tokenizer.ggml.pre", k->pre);
    if (extra)
        extra(w);
    uint8_t *buf = NULL;
    size_t size = 0;
    int rc = gguf_writer_write_mem(w, &buf, &size, e);
    gguf_writer_free(w);
    if (rc)
        return rc;
    struct gguf g;
    rc = gguf_open_mem(&g, buf, size, e);
    if (!rc) {
        rc = tok_load(out, &g, e);
        gguf_close(&g);
    }
    free(buf);
    return rc;
}

/* A byte-level vocabulary: the 256 byte characters, then extra tokens. */
static const char **byte_vocab(const char *const *extra, size_t n_extra, size_t *n)
{
    static char chars[256][3];
    const char **v = malloc((256 + n_extra) * sizeof *v);
    for (unsigned b = 0; b < 256; b++) {
        size_t l = gpt2_char(b, chars[b]);
        chars[b][l] = 0;
        v[b] = chars[b];
    }
    for (size_t i = 0; i < n_extra; i++)
        v[256 + i] = extra[i];
    *n = 256 + n_extra;
    return v;
}

TEST(tok_bpe_merge_order_and_long_words)
{
    static const char *const extra[] = {"aa", "aaaa", "ab", "abab"};
    static const char *merges[] = {"a b", "a a", "aa aa", "ab ab"};
    size_t n;
    const char **v = byte_vocab(extra, 4, &n);
    struct kvset k = {.model = "gpt2",
                      .tokens = v,
                      .n_tokens = n,
                      .merges = merges,
                      .n_merges = 4,
                      .pre = "gpt-2"};
    struct tok *t = NULL;
    struct moed_err e = {0};
    int rc = load_synth(&k, NULL, &t, &e);
    free(v);
    REQUIRE(!rc);
    CHECK_MSG(!tok_warning(t)[0], "%s", tok_warning(t));
    ENCODE_IS(t, "aaaaaaa", 0, 257, 256, 'a');
    /* rank decides, not position: "aab" -> a + ab (a b ranks before a a) */
    ENCODE_IS(t, "aab", 0, 'a', 258);
    ENCODE_IS(t, "abab", 0, 259);
    /* a 256 KiB word merges in n log n, not n^2 */
    size_t big = 1 << 18;
    char *s = malloc(big + 1);
    memset(s, 'a', big);
    s[big] = 0;
    struct tok_ids ids = {0};
    REQUIRE(!tok_encode(t, s, big, 0, &ids, &e));
    CHECK_EQ(ids.n, big / 4);
    struct tok_bytes b = {0};
    CHECK(!tok_decode(t, ids.v, ids.n, 0, &b, &e) && b.n == big && !memcmp(b.p, s, big));
    tok_bytes_free(&b);
    tok_ids_free(&ids);
    free(s);
    tok_free(t);
}

static void add_bad_bos(struct gguf_writer *w)
{
    gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", 999);
}
static void add_str_eos(struct gguf_writer *w)
{
    gguf_writer_set_str(w, "tokenizer.ggml.eos_token_id", "2");
}
static void add_u32_flag(struct gguf_writer *w)
{
    gguf_writer_set_u32(w, "tokenizer.ggml.add_bos_token", 1);
}
static void add_neg_pad(struct gguf_writer *w)
{
    gguf_writer_set_i32(w, "tokenizer.ggml.padding_token_id", -1);
}
static void add_u32_tokens(struct gguf_writer *w)
{
    const uint32_t v[3] = {1, 2, 3};
    gguf_writer_set_arr(w, "tokenizer.ggml.tokens", GGUF_U32, v, 3);
}

/* load must fail with code, and the message must contain what */
static void rejects(const struct kvset *k, void (*extra)(struct gguf_writer *), int code,
                    const char *what, int line)
{
    struct tok *t = NULL;
    struct moed_err e = {0};
    int rc = load_synth(k, extra, &t, &e);
    if (rc != code || !strstr(e.msg, what))
        test_fail(__FILE__, line, "want %s naming '%s', got %s: %s", moed_strerror(code), what,
                  moed_strerror(rc), rc ? e.msg : "(loaded)");
    CHECK(rc || t);
    tok_free(t);
}

TEST(tok_malformed_metadata)
{
    static const char *toks[] = {"<unk>", "<s>", "</s>", "\u2581a", "a", "<0x41>"};
    static const int32_t types[] = {2, 3, 3, 1, 1, 6};
    static const int32_t bad_types[] = {2, 3, 3, 1, 9, 6};
    static const float scores[] = {0, 0, 0, -1, -2, 0};
    static const float scores7[] = {0, 0, 0, -1, -2, 0, 0};
    static const char *bad_byte[] = {"<unk>", "<s>", "</s>", "\u2581a", "a", "<0xZZ>"};
    struct kvset ok = {.model = "llama",
                       .tokens = toks,
                       .n_tokens = 6,
                       .types = types,
                       .n_types = 6,
                       .scores = scores,
                       .n_scores = 6};
    struct tok *t = NULL;
    struct moed_err e = {0};
    REQUIRE(!load_synth(&ok, add_neg_pad, &t, &e));
    CHECK_EQ(tok_pad(t), TOK_NULL); /* -1 means none */
    tok_free(t);

    struct kvset k = ok;
    k.model = NULL;
    rejects(&k, NULL, MOED_EFORMAT, "tokenizer.ggml.model", __LINE__);
    k = ok;
    k.model = "bert";
    rejects(&k, NULL, MOED_EUNSUPPORTED, "bert", __LINE__);
    k = ok;
    k.tokens = NULL;
    rejects(&k, NULL, MOED_EFORMAT, "tokenizer.ggml.tokens", __LINE__);
    k.tokens = NULL;
    rejects(&k, add_u32_tokens, MOED_ETYPE, "tokenizer.ggml.tokens", __LINE__);
    k = ok;
    k.n_types = 5;
    rejects(&k, NULL, MOED_EFORMAT, "tokenizer.ggml.token_type", __LINE__);
    k = ok;
    k.types = bad_types;
    rejects(&k, NULL, MOED_EFORMAT, "tokenizer.ggml.token_type[4]", __LINE__);
    k = ok;
    k.scores = NULL;
    rejects(&k, NULL, MOED_EFORMAT, "tokenizer.ggml.scores", __LINE__);
    k = ok;
    k.scores = scores7;
    k.n_scores = 7;
    rejects(&k, NULL, MOED_EFORMAT, "tokenizer.ggml.scores", __LINE__);
    k = ok;
    k.tokens = bad_byte;
    rejects(&k, NULL, MOED_EFORMAT, "tokenizer.ggml.tokens[5]", __LINE__);
    rejects(&ok, add_bad_bos, MOED_ERANGE, "tokenizer.ggml.bos_token_id", __LINE__);
    rejects(&ok, add_str_eos, MOED_ETYPE, "tokenizer.ggml.eos_token_id", __LINE__);
    rejects(&ok, add_u32_flag, MOED_ETYPE, "tokenizer.ggml.add_bos_token", __LINE__);

    /* byte-level BPE: merges required and well-formed */
    size_t n;
    const char **v = byte_vocab(NULL, 0, &n);
    static const char *bad_merges[] = {"a b", "ab"};
    struct kvset b = {.model = "gpt2", .tokens = v, .n_tokens = n, .pre = "gpt-2"};
    rejects(&b, NULL, MOED_EFORMAT, "tokenizer.ggml.merges", __LINE__);
    b.merges = bad_merges;
    b.n_merges = 2;
    rejects(&b, NULL, MOED_EFORMAT, "tokenizer.ggml.merges[1]", __LINE__);

    /* an unknown pre-tokenizer loads, with a warning, as gpt-2 */
    b.n_merges = 1;
    b.pre = "brand-new-model";
    REQUIRE(!load_synth(&b, NULL, &t, &e));
    CHECK(strstr(tok_warning(t), "brand-new-model") != NULL);
    CHECK(!strcmp(tok_pre_name(t), "gpt-2"));
    tok_free(t);
    free(v);
}
