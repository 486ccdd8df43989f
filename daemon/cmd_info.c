/*
 * moed info FILE [--tensors]: what a GGUF file holds, without loading it.
 *
 * Opens the file with the GGUF reader (so every check the daemon would make
 * runs here too) and prints: file size, GGUF version, alignment,
 * architecture and name; every metadata key as `key = value` (strings
 * quoted and cut when long, arrays as "[N x type]" unless numeric and short
 * enough to show whole); a summary of the tokenizer; the tensor count and
 * a table of bytes by tensor type with the average bits per weight.
 * --tensors adds one line per tensor.
 *
 * Exit status: 0, 1 when the file cannot be read (one line on stderr:
 * "moed info: PATH: message"), 2 for a usage error.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "daemon/cmds.h"
#include "model/gguf.h"

#define STR_SHOW_MAX 80 /* bytes of a string value shown before "..." */
#define ARR_SHOW_MAX 16 /* numeric arrays up to this length are shown whole */

static void usage(FILE *f)
{
    fprintf(f, "usage: moed info FILE [--tensors]\n"
               "\n"
               "Show a GGUF file's version, metadata, tokenizer summary and tensor sizes by type.\n"
               "\n"
               "  --tensors   also list every tensor: name, type, shape, bytes, offset\n"
               "  -h, --help  this text\n");
}

/* Bytes of a string from the file, quoted: control bytes, quote and
 * backslash escaped; cut after max bytes (0: no limit). */
static void put_str(FILE *f, const char *p, uint64_t len, uint64_t max)
{
    uint64_t n = max && len > max ? max : len;
    fputc('"', f);
    for (uint64_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c == '\n')
            fputs("\\n", f);
        else if (c == '\t')
            fputs("\\t", f);
        else if (c < 0x20 || c == 0x7f)
            fprintf(f, "\\x%02x", c);
        else
            fputc(c, f);
    }
    fputc('"', f);
    if (n < len)
        fprintf(f, "... (%" PRIu64 " bytes)", len);
}

/* "16.75 GiB" */
static const char *fmt_bytes(char *buf, size_t size, uint64_t b)
{
    static const char *const unit[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
    double x = (double)b;
    int u = 0;
    while (x >= 1024 && u < 5) {
        x /= 1024;
        u++;
    }
    if (u == 0)
        snprintf(buf, size, "%" PRIu64 " B", b);
    else
        snprintf(buf, size, "%.2f %s", x, unit[u]);
    return buf;
}

static bool is_numeric(enum gguf_vtype t)
{
    return t != GGUF_STRING && t != GGUF_ARRAY && t < GGUF_VTYPE_COUNT;
}

static void put_scalar(FILE *f, const struct gguf_value *v)
{
    switch (v->type) {
    case GGUF_U8: case GGUF_U16: case GGUF_U32: case GGUF_U64:
        fprintf(f, "%" PRIu64, v->v.u64);
        break;
    case GGUF_I8: case GGUF_I16: case GGUF_I32: case GGUF_I64:
        fprintf(f, "%" PRId64, v->v.i64);
        break;
    case GGUF_F32: fprintf(f, "%.9g", v->v.f64); break;
    case GGUF_F64: fprintf(f, "%.17g", v->v.f64); break;
    case GGUF_BOOL: fputs(v->v.u64 ? "true" : "false", f); break;
    case GGUF_STRING: put_str(f, v->v.str.ptr, v->v.str.len, STR_SHOW_MAX); break;
    default: fputs("?", f); break;
    }
}

static void put_value(FILE *f, const struct gguf_value *v)
{
    if (v->type != GGUF_ARRAY) {
        put_scalar(f, v);
        return;
    }
    enum gguf_vtype el = v->v.arr.elem;
    uint64_t n = v->v.arr.n;
    if (!is_numeric(el) || n > ARR_SHOW_MAX) {
        fprintf(f, "[%" PRIu64 " x %s]", n, gguf_vtype_name(el));
        return;
    }
    fputc('[', f);
    for (uint64_t i = 0; i < n; i++) {
        if (i)
            fputs(", ", f);
        if (el == GGUF_F32)
            fprintf(f, "%.9g", gguf_arr_float(v, i));
        else if (el == GGUF_F64)
            fprintf(f, "%.17g", gguf_arr_float(v, i));
        else if (el == GGUF_BOOL)
            fputs(gguf_arr_int(v, i) ? "true" : "false", f);
        else if (el == GGUF_U64)
            fprintf(f, "%" PRIu64, (uint64_t)gguf_arr_int(v, i));
        else
            fprintf(f, "%" PRId64, gguf_arr_int(v, i));
    }
    fputc(']', f);
}

static void put_key_str(FILE *f, const struct gguf *g, const char *label, const char *key)
{
    struct gguf_str s;
    fprintf(f, "%-14s", label);
    if (gguf_get_str(g, key, &s, NULL) == 0)
        put_str(f, s.ptr, s.len, STR_SHOW_MAX);
    else
        fputs("-", f);
    fputc('\n', f);
}

static void put_tokenizer(FILE *f, const struct gguf *g)
{
    struct gguf_str s;
    const struct gguf_value *a;
    uint32_t id;
    if (!gguf_find(g, "tokenizer.ggml.model") && !gguf_find(g, "tokenizer.ggml.tokens"))
        return;
    fprintf(f, "%-14s", "tokenizer:");
    fputs("model ", f);
    if (gguf_get_str(g, "tokenizer.ggml.model", &s, NULL) == 0)
        put_str(f, s.ptr, s.len, 40);
    else
        fputs("-", f);
    fputs(", pre ", f);
    if (gguf_get_str(g, "tokenizer.ggml.pre", &s, NULL) == 0)
        put_str(f, s.ptr, s.len, 40);
    else
        fputs("-", f);
    if (gguf_get_arr(g, "tokenizer.ggml.tokens", GGUF_STRING, &a, NULL) == 0)
        fprintf(f, ", %" PRIu64 " tokens", a->v.arr.n);
    else
        fputs(", no token list", f);
    if (gguf_get_arr(g, "tokenizer.ggml.merges", GGUF_STRING, &a, NULL) == 0)
        fprintf(f, ", %" PRIu64 " merges", a->v.arr.n);
    if (gguf_get_u32(g, "tokenizer.ggml.bos_token_id", &id, NULL) == 0)
        fprintf(f, ", bos %" PRIu32, id);
    if (gguf_get_u32(g, "tokenizer.ggml.eos_token_id", &id, NULL) == 0)
        fprintf(f, ", eos %" PRIu32, id);
    fputc('\n', f);
}

static void put_types(FILE *f, const struct gguf *g)
{
    uint64_t bytes[KT_COUNT] = {0}, count[KT_COUNT] = {0};
    double elems[KT_COUNT] = {0};
    uint64_t total = 0;
    double total_el = 0;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const struct gguf_tensor *t = &g->tensors[i];
        double n = 1;
        for (uint32_t d = 0; d < t->n_dims; d++)
            n *= (double)t->ne[d];
        bytes[t->type] += t->nbytes; /* the reader checked type < KT_COUNT */
        count[t->type]++;
        elems[t->type] += n;
        total += t->nbytes;
        total_el += n;
    }
    fprintf(f, "%-14s%" PRIu64 "\n", "tensors:", g->n_tensors);
    if (g->n_tensors == 0)
        return;
    char hb[32];
    fprintf(f, "  %-8s %8s %16s %12s %7s %6s\n", "type", "tensors", "bytes", "", "share", "bpw");
    for (int t = 0; t < KT_COUNT; t++) {
        if (!count[t])
            continue;
        fprintf(f, "  %-8s %8" PRIu64 " %16" PRIu64 " %12s %6.1f%% %6.2f\n",
                kern_type_name((uint32_t)t), count[t], bytes[t], fmt_bytes(hb, sizeof hb, bytes[t]),
                total ? 100.0 * (double)bytes[t] / (double)total : 0.0,
                elems[t] > 0 ? 8.0 * (double)bytes[t] / elems[t] : 0.0);
    }
    fprintf(f, "  %-8s %8" PRIu64 " %16" PRIu64 " %12s %6.1f%% %6.2f\n", "total", g->n_tensors,
            total, fmt_bytes(hb, sizeof hb, total), 100.0,
            total_el > 0 ? 8.0 * (double)total / total_el : 0.0);
    fprintf(f, "%-14s%.0f\n", "weights:", total_el);
    fprintf(f, "%-14s%.3f\n", "bits/weight:", total_el > 0 ? 8.0 * (double)total / total_el : 0.0);
}

static void put_tensors(FILE *f, const struct gguf *g)
{
    fprintf(f, "\n%-48s %-8s %-28s %14s %14s\n", "name", "type", "shape", "bytes", "offset");
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const struct gguf_tensor *t = &g->tensors[i];
        char shape[96];
        size_t o = 0;
        o += (size_t)snprintf(shape, sizeof shape, "[");
        for (uint32_t d = 0; d < t->n_dims && o < sizeof shape; d++)
            o += (size_t)snprintf(shape + o, sizeof shape - o, "%s%" PRId64, d ? ", " : "",
                                  t->ne[d]);
        if (o < sizeof shape)
            snprintf(shape + o, sizeof shape - o, "]");
        /* Names are printed quoted only when they need escaping. */
        bool plain = t->name.len > 0 && t->name.len <= 200;
        for (uint64_t k = 0; plain && k < t->name.len; k++) {
            unsigned char c = (unsigned char)t->name.ptr[k];
            plain = c > 0x20 && c < 0x7f && c != '"' && c != '\\';
        }
        if (plain)
            fprintf(f, "%-48.*s", (int)t->name.len, t->name.ptr);
        else
            put_str(f, t->name.ptr, t->name.len, 60);
        fprintf(f, " %-8s %-28s %14" PRIu64 " %14" PRIu64 "\n", kern_type_name(t->type), shape,
                t->nbytes, t->offset);
    }
}

int cmd_info(int argc, char **argv)
{
    const char *path = NULL;
    bool tensors = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--tensors")) {
            tensors = true;
        } else if (!strcmp(a, "--")) {
            if (i + 1 < argc && !path && i + 2 == argc) {
                path = argv[i + 1];
                break;
            }
            usage(stderr);
            return 2;
        } else if (a[0] == '-' && a[1] != '\0') {
            fprintf(stderr, "moed info: unknown option '%s'\n", a);
            usage(stderr);
            return 2;
        } else if (path) {
            fprintf(stderr, "moed info: one FILE only ('%s' and '%s')\n", path, a);
            return 2;
        } else {
            path = a;
        }
    }
    if (!path) {
        usage(stderr);
        return 2;
    }

    struct gguf g;
    struct moed_err e = {0};
    if (gguf_open(&g, path, &e) != 0) {
        /* gguf_open's message starts with the path. */
        fprintf(stderr, "moed info: %s\n", e.msg);
        return 1;
    }
    FILE *f = stdout;
    fprintf(f, "%-14s%s\n", "file:", path);
    char hb[32];
    fprintf(f, "%-14s%zu bytes (%s)\n", "size:", g.size, fmt_bytes(hb, sizeof hb, g.size));
    fprintf(f, "%-14s%" PRIu32 "\n", "gguf version:", g.version);
    fprintf(f, "%-14s%" PRIu32 "\n", "alignment:", g.alignment);
    put_key_str(f, &g, "architecture:", "general.architecture");
    put_key_str(f, &g, "name:", "general.name");
    fprintf(f, "%-14s%" PRIu64 " keys\n", "metadata:", g.n_kv);
    for (uint64_t i = 0; i < g.n_kv; i++) {
        const struct gguf_kv *kv = &g.kv[i];
        fputs("  ", f);
        bool plain = kv->key.len > 0 && kv->key.len <= 200;
        for (uint64_t k = 0; plain && k < kv->key.len; k++) {
            unsigned char c = (unsigned char)kv->key.ptr[k];
            plain = c > 0x20 && c < 0x7f && c != '"' && c != '\\' && c != '=';
        }
        if (plain)
            fprintf(f, "%.*s", (int)kv->key.len, kv->key.ptr);
        else
            put_str(f, kv->key.ptr, kv->key.len, 60);
        fputs(" = ", f);
        put_value(f, &kv->val);
        fputc('\n', f);
    }
    put_tokenizer(f, &g);
    put_types(f, &g);
    if (tensors)
        put_tensors(f, &g);
    gguf_close(&g);
    if (fflush(f) != 0 || ferror(f)) {
        fprintf(stderr, "moed info: %s: cannot write the output\n", path);
        return 1;
    }
    return 0;
}
