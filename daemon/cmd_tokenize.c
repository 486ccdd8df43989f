/*
 * moed tokenize -m FILE [--special] [--bos] [--pieces] < text
 *
 * Reads all of stdin and prints its token ids, space-separated on one line;
 * with --pieces, one token per line: the id, a tab, and the bytes it stands
 * for in double quotes (C escapes for control characters, quotes,
 * backslashes and bytes that are not valid UTF-8).  Any error is one line on
 * stderr and exit status 1.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/utf8.h"
#include "daemon/cli.h"
#include "daemon/cmds.h"
#include "model/gguf.h"
#include "model/tok.h"

static const char usage[] =
    "usage: moed tokenize -m FILE [--special] [--bos] [--pieces] < text\n"
    "  -m, --model FILE  GGUF file whose tokenizer to use (a vocabulary-only file will do)\n"
    "  --special         match control tokens (<|im_start|>, <s>, ...) written in the text\n"
    "  --bos             put the BOS token first\n"
    "  --pieces          one token per line: id, tab, the bytes it stands for (quoted)\n";

/* Length of the valid UTF-8 character at s, 0 if there is none. */
static size_t utf8_char_len(const unsigned char *s, size_t n)
{
    int r = utf8_next(s, n);
    return r > 0 ? (size_t)r : 0;
}

static void print_quoted(const char *p, size_t n)
{
    const unsigned char *s = (const unsigned char *)p;
    putchar('"');
    for (size_t i = 0; i < n;) {
        unsigned char c = s[i];
        size_t l;
        if (c == '\n')
            fputs("\\n", stdout);
        else if (c == '\t')
            fputs("\\t", stdout);
        else if (c == '\r')
            fputs("\\r", stdout);
        else if (c == '"' || c == '\\')
            printf("\\%c", c);
        else if (c >= 0x20 && c < 0x7f)
            putchar(c);
        else if (c >= 0x80 && (l = utf8_char_len(s + i, n - i))) {
            fwrite(s + i, 1, l, stdout);
            i += l;
            continue;
        } else
            printf("\\x%02x", c);
        i++;
    }
    putchar('"');
}

int cmd_tokenize(int argc, char **argv)
{
    const char *path = NULL;
    unsigned flags = 0;
    bool pieces = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fputs(usage, stdout);
            return 0;
        } else if (!strcmp(a, "-m") || !strcmp(a, "--model")) {
            if (i + 1 >= argc) {
                fprintf(stderr, "moed tokenize: %s needs a file name\n", a);
                return 1;
            }
            path = argv[++i];
        } else if (!strcmp(a, "--special")) {
            flags |= TOK_ENC_SPECIAL;
        } else if (!strcmp(a, "--bos")) {
            flags |= TOK_ENC_BOS;
        } else if (!strcmp(a, "--pieces")) {
            pieces = true;
        } else {
            fprintf(stderr, "moed tokenize: unknown argument '%s' (try --help)\n", a);
            return 1;
        }
    }
    if (!path) {
        fprintf(stderr, "moed tokenize: -m FILE is required (try --help)\n");
        return 1;
    }

    struct moed_err e = {0};
    struct gguf g;
    if (gguf_open(&g, path, &e)) {
        fprintf(stderr, "moed tokenize: %s\n", e.msg); /* names the path */
        return 1;
    }
    struct tok *t;
    int rc = tok_load(&t, &g, &e);
    gguf_close(&g);
    if (rc) {
        fprintf(stderr, "moed tokenize: %s: %s\n", path, e.msg);
        return 1;
    }
    if (tok_warning(t)[0])
        fprintf(stderr, "moed tokenize: warning: %s\n", tok_warning(t));

    size_t len;
    char *text = cli_read_all(stdin, &len);
    if (!text) {
        fprintf(stderr, "moed tokenize: cannot read standard input\n");
        tok_free(t);
        return 1;
    }
    struct tok_ids ids = {0};
    rc = tok_encode(t, text, len, flags, &ids, &e);
    free(text);
    if (rc) {
        fprintf(stderr, "moed tokenize: %s\n", e.msg);
        tok_free(t);
        return 1;
    }
    for (size_t i = 0; i < ids.n; i++) {
        if (pieces) {
            size_t n;
            const char *p = tok_piece(t, ids.v[i], &n);
            printf("%d\t", ids.v[i]);
            print_quoted(p, n);
            putchar('\n');
        } else {
            printf(i ? " %d" : "%d", ids.v[i]);
        }
    }
    if (!pieces)
        putchar('\n');
    tok_ids_free(&ids);
    tok_free(t);
    if (fflush(stdout) || ferror(stdout)) {
        fprintf(stderr, "moed tokenize: cannot write standard output\n");
        return 1;
    }
    return 0;
}
