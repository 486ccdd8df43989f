/*
 * conf.c: the option table made real.  conf_options[] is generated from
 * CONF_OPTIONS (options.h); every other function here walks it: setting a
 * value parses it with its type's parser and checks the row's bounds; the
 * file, environment and command-line loaders only find the row and call
 * conf_set_value; help, the example file and the effective-config listing
 * print rows.  conf/parse.c holds the value parsers and formatters,
 * conf/print.c the help and the example file.
 */
#include "conf/conf.h"
#include "conf/conf_internal.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sched/cost.h"

extern char **environ;

/* ---- the table ---- */

#define CONF_ENUM_NAME_(id, name) name,
static const char *const conf_cache_policy_names[] = {CONF_CACHE_POLICIES(CONF_ENUM_NAME_) NULL};
static const char *const conf_log_level_names[] = {CONF_LOG_LEVELS(CONF_ENUM_NAME_) NULL};
#undef CONF_ENUM_NAME_

const char *const conf_section_names[CONF_N_SECTIONS] = {
#define CONF_SECTION_NAME_(name, desc) #name,
    CONF_SECTIONS(CONF_SECTION_NAME_)
#undef CONF_SECTION_NAME_
};

const char *const conf_section_help[CONF_N_SECTIONS] = {
#define CONF_SECTION_HELP_(name, desc) desc,
    CONF_SECTIONS(CONF_SECTION_HELP_)
#undef CONF_SECTION_HELP_
};

/* The metavar a type shows in help when its row names none. */
#define CONF_MV_BOOL NULL
#define CONF_MV_INT "N"
#define CONF_MV_SIZE "SIZE"
#define CONF_MV_FLOAT "X"
#define CONF_MV_STRING "TEXT"
#define CONF_MV_PATH "PATH"
#define CONF_MV_ENUM NULL
#define CONF_MV_DURATION "TIME"
#define CONF_MV_BUDGET "FRACTION|SIZE"

const struct conf_option conf_options[CONF_N_OPTIONS] = {
#define CONF_ROW_(name_, env_, flag_, short_, type_, sec_, def_, min_, max_, choices_, flags_,     \
                  metavar_, help_)                                                                 \
    {                                                                                              \
        .name = #name_,                                                                            \
        .env = #env_,                                                                              \
        .flag = flag_,                                                                             \
        .short_flag = short_,                                                                      \
        .type = CONF_##type_,                                                                      \
        .section = CONF_SEC_##sec_,                                                                \
        .def = def_,                                                                               \
        .min = min_,                                                                               \
        .max = max_,                                                                               \
        .choices = choices_,                                                                       \
        .flags = flags_,                                                                           \
        .metavar = metavar_ ? metavar_ : CONF_MV_##type_,                                          \
        .help = help_,                                                                             \
        .offset = offsetof(struct moed_config, name_),                                             \
    },
    CONF_OPTIONS(CONF_ROW_)
#undef CONF_ROW_
};

int conf_option_find(const char *name)
{
    for (int i = 0; i < CONF_N_OPTIONS; i++)
        if (!strcmp(conf_options[i].name, name))
            return i;
    return -1;
}

/* Typed access to an option's field by id. */
#define FIELD(c, opt, T) ((T *)((char *)(c) + conf_options[opt].offset))
#define CFIELD(c, opt, T) ((const T *)((const char *)(c) + conf_options[opt].offset))

/* ---- diagnostics ---- */

void conf_diag_free(struct conf_diag *d)
{
    if (!d)
        return;
    free(d->msgs);
    memset(d, 0, sizeof *d);
}

void conf_diag_print(FILE *f, const struct conf_diag *d)
{
    for (size_t i = 0; d && i < d->n; i++)
        fprintf(f, "%s%s\n", d->msgs[i].error ? "" : "warning: ", d->msgs[i].text);
}

static void diag_vadd(struct conf_diag *d, bool error, int code, const char *fmt, va_list ap)
{
    if (!d)
        return;
    if (error)
        d->errors++;
    else
        d->warnings++;
    if (d->n == d->cap) {
        size_t cap = d->cap ? 2 * d->cap : 16;
        struct conf_msg *m = realloc(d->msgs, cap * sizeof *m);
        if (!m)
            return; /* counted, not kept */
        d->msgs = m;
        d->cap = cap;
    }
    struct conf_msg *m = &d->msgs[d->n++];
    m->error = error;
    m->code = code;
    vsnprintf(m->text, sizeof m->text, fmt, ap);
}

int conf_diag_error(struct conf_diag *d, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    diag_vadd(d, true, code, fmt, ap);
    va_end(ap);
    return code;
}

void conf_diag_warn(struct conf_diag *d, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    diag_vadd(d, false, 0, fmt, ap);
    va_end(ap);
}

/* ---- origins ---- */

void conf_format_origin(const struct moed_config *c, int opt, char *buf, size_t n)
{
    const struct conf_origin *o = &c->origin[opt];
    const struct conf_option *r = &conf_options[opt];
    switch (o->src) {
    case CONF_SRC_FILE: snprintf(buf, n, "%s:%d", c->file ? c->file : "?", o->line); break;
    case CONF_SRC_ENV: snprintf(buf, n, "env %s", r->env); break;
    case CONF_SRC_CLI:
        if (o->short_flag)
            snprintf(buf, n, "command line -%c", r->short_flag);
        else
            snprintf(buf, n, "command line %s", r->flag);
        break;
    default: snprintf(buf, n, "default"); break;
    }
}

/* ---- set, copy, free ---- */

static bool is_string_type(enum conf_type t)
{
    return t == CONF_STRING || t == CONF_PATH;
}

void conf_free(struct moed_config *c)
{
    if (!c)
        return;
    for (int i = 0; i < CONF_N_OPTIONS; i++)
        if (is_string_type(conf_options[i].type)) {
            free(*FIELD(c, i, char *));
            *FIELD(c, i, char *) = NULL;
        }
    free(c->file);
    c->file = NULL;
}

/* Range text for messages and help: "1..65535", "1K..1G", "100ms..10m". */
void conf_range_text(int opt, char *buf, size_t n)
{
    const struct conf_option *r = &conf_options[opt];
    char a[32], b[32];
    switch (r->type) {
    case CONF_INT: snprintf(buf, n, "%lld..%lld", (long long)r->min, (long long)r->max); break;
    case CONF_FLOAT: snprintf(buf, n, "%g..%g", r->min, r->max); break;
    case CONF_SIZE:
        conf_format_size((uint64_t)r->min, a, sizeof a);
        conf_format_size((uint64_t)r->max, b, sizeof b);
        snprintf(buf, n, "%s..%s", a, b);
        break;
    case CONF_DURATION:
        conf_format_duration((int64_t)r->min, a, sizeof a);
        conf_format_duration((int64_t)r->max, b, sizeof b);
        snprintf(buf, n, "%s..%s", a, b);
        break;
    case CONF_BUDGET:
        conf_format_size((uint64_t)r->max, b, sizeof b);
        snprintf(buf, n, "a fraction 0..1, a percentage 0%%..100%% or a size up to %s", b);
        break;
    case CONF_ENUM: {
        size_t k = 0;
        buf[0] = 0;
        for (const char *const *ch = r->choices; *ch && k < n; ch++)
            k += (size_t)snprintf(buf + k, n - k, "%s%s", ch == r->choices ? "" : ", ", *ch);
        break;
    }
    case CONF_BOOL: snprintf(buf, n, "true, false, yes, no, on, off, 1, 0"); break;
    default: buf[0] = 0; break;
    }
}

/* A host: an IPv4 or IPv6 literal (IPv6 also in brackets), or a DNS name
 * (RFC 1123 labels). */
static const char *check_hostname(const char *s)
{
    unsigned char addr[16];
    if (inet_pton(AF_INET, s, addr) == 1 || inet_pton(AF_INET6, s, addr) == 1)
        return NULL;
    size_t len = strlen(s);
    if (s[0] == '[') { /* "[::1]", as in URLs */
        char inner[64];
        if (len < 3 || len - 2 >= sizeof inner || s[len - 1] != ']')
            return "not an IP address or a valid host name";
        memcpy(inner, s + 1, len - 2);
        inner[len - 2] = 0;
        return inet_pton(AF_INET6, inner, addr) == 1 ? NULL : "not an IPv6 address in brackets";
    }
    if (len > 253)
        return "host name longer than 253 characters";
    size_t label = 0;
    for (size_t i = 0; i <= len; i++) {
        char ch = s[i];
        if (ch == '.' || ch == 0) {
            if (label == 0 || label > 63 || s[i - 1] == '-' || s[i - label] == '-')
                return "not an IP address or a valid host name";
            label = 0;
        } else if (isalnum((unsigned char)ch) || ch == '-') {
            label++;
        } else {
            return "not an IP address or a valid host name";
        }
    }
    return NULL;
}

/* Store the value v of the option's type; strings are copied. */
static int store(struct moed_config *c, int opt, const union conf_value *v)
{
    switch (conf_options[opt].type) {
    case CONF_BOOL: *FIELD(c, opt, bool) = v->b; break;
    case CONF_INT: *FIELD(c, opt, int64_t) = v->i; break;
    case CONF_SIZE: *FIELD(c, opt, uint64_t) = v->u; break;
    case CONF_FLOAT: *FIELD(c, opt, double) = v->f; break;
    case CONF_ENUM: *FIELD(c, opt, int) = (int)v->i; break;
    case CONF_DURATION: *FIELD(c, opt, int64_t) = v->i; break;
    case CONF_BUDGET: *FIELD(c, opt, struct conf_budget) = v->budget; break;
    case CONF_STRING:
    case CONF_PATH: {
        char *s = strdup(v->s);
        if (!s)
            return MOED_ENOMEM;
        free(*FIELD(c, opt, char *));
        *FIELD(c, opt, char *) = s;
        break;
    }
    }
    return 0;
}

/* Parse text as the option's type and check its bounds.  On error *why
 * says what is wrong and what is allowed (in whybuf when composed). */
int conf_parse_option(int opt, const char *text, union conf_value *v, const char **why,
                      char *whybuf, size_t whylen)
{
    const struct conf_option *r = &conf_options[opt];
    char range[160];
    int rc = 0;
    *why = NULL;
    switch (r->type) {
    case CONF_BOOL: rc = conf_parse_bool(text, &v->b, why); break;
    case CONF_INT:
        rc = conf_parse_int(text, &v->i, why);
        if (!rc && (v->i < (int64_t)r->min || v->i > (int64_t)r->max))
            rc = MOED_ERANGE;
        break;
    case CONF_SIZE:
        rc = conf_parse_size(text, &v->u, why);
        if (!rc && ((double)v->u < r->min || (double)v->u > r->max))
            rc = MOED_ERANGE;
        break;
    case CONF_FLOAT:
        rc = conf_parse_float(text, &v->f, why);
        if (!rc && (v->f < r->min || v->f > r->max))
            rc = MOED_ERANGE;
        break;
    case CONF_DURATION:
        rc = conf_parse_duration(text, &v->i, why);
        if (!rc && ((double)v->i < r->min || (double)v->i > r->max))
            rc = MOED_ERANGE;
        break;
    case CONF_BUDGET:
        rc = conf_parse_budget(text, &v->budget, why);
        if (!rc && !v->budget.is_fraction && (double)v->budget.bytes > r->max)
            rc = MOED_ERANGE;
        break;
    case CONF_ENUM:
        rc = MOED_EINVAL;
        for (int k = 0; r->choices[k]; k++)
            if (!strcasecmp(text, r->choices[k])) {
                v->i = k;
                rc = 0;
            }
        if (rc) {
            conf_range_text(opt, range, sizeof range);
            snprintf(whybuf, whylen, "not one of %s", range);
            *why = whybuf;
        }
        return rc;
    case CONF_STRING:
    case CONF_PATH:
        v->s = text;
        if ((r->flags & CONF_F_NONEMPTY) && !*text) {
            *why = "empty value";
            return MOED_EINVAL;
        }
        for (const char *p = text; *p; p++)
            if ((unsigned char)*p < 0x20 && *p != '\t') {
                *why = "control character in value";
                return MOED_EINVAL;
            }
        if ((r->flags & CONF_F_HOSTNAME) && (*why = check_hostname(text)) != NULL)
            return MOED_EINVAL;
        return 0;
    }
    if (rc && !*why) { /* in syntax but out of the row's bounds */
        conf_range_text(opt, range, sizeof range);
        snprintf(whybuf, whylen, "out of range (%s)", range);
        *why = whybuf;
    } else if (rc && r->type == CONF_BUDGET) {
        conf_range_text(opt, range, sizeof range);
        snprintf(whybuf, whylen, "%s; allowed: %s", *why, range);
        *why = whybuf;
    }
    return rc;
}

int conf_set_value(struct moed_config *c, int opt, const char *value, const struct conf_origin *o,
                   struct conf_diag *d)
{
    if (opt < 0 || opt >= CONF_N_OPTIONS || !value)
        return conf_diag_error(d, MOED_EINVAL, "conf_set_value: bad option %d", opt);
    const struct conf_option *r = &conf_options[opt];
    /* Blanks around a number are a typing accident; around a string they
     * may be meant (and only quoting gets them through a file). */
    char *trimmed = NULL;
    const char *text = value;
    if (!is_string_type(r->type)) {
        size_t a = 0, b = strlen(value);
        while (value[a] == ' ' || value[a] == '\t')
            a++;
        while (b > a && (value[b - 1] == ' ' || value[b - 1] == '\t'))
            b--;
        trimmed = strndup(value + a, b - a);
        if (!trimmed)
            return conf_diag_error(d, MOED_ENOMEM, "%s: out of memory", r->name);
        text = trimmed;
    }
    union conf_value v;
    const char *why;
    char whybuf[256];
    int rc = conf_parse_option(opt, text, &v, &why, whybuf, sizeof whybuf);
    if (!rc)
        rc = store(c, opt, &v);
    if (!rc) {
        c->origin[opt] = o ? *o : (struct conf_origin){CONF_SRC_DEFAULT, 0, false};
    } else {
        struct moed_config tmp = *c; /* for the origin text only */
        tmp.origin[opt] = o ? *o : (struct conf_origin){CONF_SRC_DEFAULT, 0, false};
        char where[200], shown[100];
        conf_format_origin(&tmp, opt, where, sizeof where);
        conf_quote_for_message(value, shown, sizeof shown);
        conf_diag_error(d, rc, "%s: %s = %s: %s", where, r->name, shown,
                        rc == MOED_ENOMEM ? "out of memory" : why);
    }
    free(trimmed);
    return rc;
}

int conf_init_defaults(struct moed_config *c)
{
    memset(c, 0, sizeof *c);
    struct conf_diag d = {0};
    int rc = 0;
    for (int i = 0; i < CONF_N_OPTIONS && !rc; i++)
        rc = conf_set_value(c, i, conf_options[i].def, NULL, &d);
    conf_diag_free(&d);
    if (rc)
        conf_free(c);
    return rc;
}

int conf_copy(struct moed_config *dst, const struct moed_config *src)
{
    *dst = *src;
    dst->file = NULL;
    for (int i = 0; i < CONF_N_OPTIONS; i++)
        if (is_string_type(conf_options[i].type))
            *FIELD(dst, i, char *) = NULL;
    int rc = 0;
    if (src->file && !(dst->file = strdup(src->file)))
        rc = MOED_ENOMEM;
    for (int i = 0; i < CONF_N_OPTIONS && !rc; i++)
        if (is_string_type(conf_options[i].type) &&
            !(*FIELD(dst, i, char *) = strdup(*CFIELD(src, i, char *))))
            rc = MOED_ENOMEM;
    if (rc)
        conf_free(dst);
    return rc;
}

bool conf_value_equal(const struct moed_config *a, const struct moed_config *b, int opt)
{
    switch (conf_options[opt].type) {
    case CONF_BOOL: return *CFIELD(a, opt, bool) == *CFIELD(b, opt, bool);
    case CONF_INT:
    case CONF_DURATION: return *CFIELD(a, opt, int64_t) == *CFIELD(b, opt, int64_t);
    case CONF_SIZE: return *CFIELD(a, opt, uint64_t) == *CFIELD(b, opt, uint64_t);
    case CONF_FLOAT: return *CFIELD(a, opt, double) == *CFIELD(b, opt, double);
    case CONF_ENUM: return *CFIELD(a, opt, int) == *CFIELD(b, opt, int);
    case CONF_STRING:
    case CONF_PATH: return !strcmp(*CFIELD(a, opt, char *), *CFIELD(b, opt, char *));
    case CONF_BUDGET: {
        const struct conf_budget *x = CFIELD(a, opt, struct conf_budget);
        const struct conf_budget *y = CFIELD(b, opt, struct conf_budget);
        return x->is_fraction == y->is_fraction &&
               (x->is_fraction ? x->fraction == y->fraction : x->bytes == y->bytes);
    }
    }
    return false;
}

void conf_format_value(const struct moed_config *c, int opt, char *buf, size_t n)
{
    const struct conf_option *r = &conf_options[opt];
    switch (r->type) {
    case CONF_BOOL: snprintf(buf, n, "%s", *CFIELD(c, opt, bool) ? "true" : "false"); break;
    case CONF_INT: snprintf(buf, n, "%lld", (long long)*CFIELD(c, opt, int64_t)); break;
    case CONF_SIZE: conf_format_size(*CFIELD(c, opt, uint64_t), buf, n); break;
    case CONF_FLOAT: conf_format_double(*CFIELD(c, opt, double), buf, n); break;
    case CONF_DURATION: conf_format_duration(*CFIELD(c, opt, int64_t), buf, n); break;
    case CONF_ENUM: snprintf(buf, n, "%s", r->choices[*CFIELD(c, opt, int)]); break;
    case CONF_BUDGET: conf_format_budget(CFIELD(c, opt, struct conf_budget), buf, n); break;
    case CONF_STRING:
    case CONF_PATH: conf_quote_value(*CFIELD(c, opt, char *), buf, n); break;
    }
}

/* ---- "did you mean" ---- */

/* Optimal string alignment distance (Levenshtein plus adjacent swaps),
 * comparing case-insensitively with '-' equal to '_'. */
static int fold(int ch)
{
    ch = tolower((unsigned char)ch);
    return ch == '-' ? '_' : ch;
}

int conf_edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 64 || lb > 64)
        return 1000;
    int d[65][65];
    for (size_t i = 0; i <= la; i++)
        d[i][0] = (int)i;
    for (size_t j = 0; j <= lb; j++)
        d[0][j] = (int)j;
    for (size_t i = 1; i <= la; i++)
        for (size_t j = 1; j <= lb; j++) {
            int cost = fold(a[i - 1]) != fold(b[j - 1]);
            int v = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < v)
                v = d[i][j - 1] + 1;
            if (d[i - 1][j - 1] + cost < v)
                v = d[i - 1][j - 1] + cost;
            if (i > 1 && j > 1 && fold(a[i - 1]) == fold(b[j - 2]) &&
                fold(a[i - 2]) == fold(b[j - 1]) && d[i - 2][j - 2] + 1 < v)
                v = d[i - 2][j - 2] + 1;
            d[i][j] = v;
        }
    return d[la][lb];
}

/* The option whose key is nearest to name, if near enough to be a typo:
 * at most 2 edits, or a third of the name's length for long names. */
int conf_suggest(const char *name)
{
    int best = -1, best_d = 1000;
    for (int i = 0; i < CONF_N_OPTIONS; i++) {
        int dist = conf_edit_distance(name, conf_options[i].name);
        if (dist < best_d) {
            best_d = dist;
            best = i;
        }
    }
    int limit = (int)strlen(name) / 3;
    if (limit < 2)
        limit = 2;
    return best_d <= limit ? best : -1;
}

/* ---- the file ---- */

#define CONF_FILE_MAX (1 << 20)

int conf_load_file(struct moed_config *c, const char *path, struct conf_diag *d)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return conf_diag_error(d, MOED_EIO, "%s: cannot open config file: %s", path,
                               strerror(errno));
    char *buf = malloc(CONF_FILE_MAX + 1);
    if (!buf) {
        fclose(f);
        return conf_diag_error(d, MOED_ENOMEM, "%s: out of memory", path);
    }
    size_t n = fread(buf, 1, CONF_FILE_MAX + 1, f);
    int rerr = ferror(f);
    fclose(f);
    int rc;
    if (rerr)
        rc = conf_diag_error(d, MOED_EIO, "%s: cannot read config file", path);
    else if (n > CONF_FILE_MAX)
        rc = conf_diag_error(d, MOED_EFORMAT, "%s: larger than %d bytes; not a config file?", path,
                             CONF_FILE_MAX);
    else
        rc = conf_load_text(c, path, buf, n, d);
    free(buf);
    return rc;
}

/* Parse the value part of a line (after '='): quoted or bare, with an
 * optional trailing comment.  Writes the value to out (room for len+1).
 * Returns NULL or why it is malformed. */
static const char *parse_line_value(const char *p, const char *end, char *out)
{
    while (p < end && (*p == ' ' || *p == '\t'))
        p++;
    char *o = out;
    if (p < end && (*p == '"' || *p == '\'')) {
        char q = *p++;
        for (;;) {
            if (p >= end)
                return q == '"' ? "missing closing \"" : "missing closing '";
            char ch = *p++;
            if (ch == q)
                break;
            if (ch == '\\' && q == '"') {
                if (p >= end)
                    return "missing closing \"";
                char e = *p++;
                switch (e) {
                case '"': *o++ = '"'; break;
                case '\\': *o++ = '\\'; break;
                case 'n': *o++ = '\n'; break;
                case 't': *o++ = '\t'; break;
                case 'r': *o++ = '\r'; break;
                case 'x': {
                    int v = 0;
                    for (int k = 0; k < 2; k++) {
                        if (p >= end || !isxdigit((unsigned char)*p))
                            return "\\x needs two hex digits";
                        char h = *p++;
                        v = v * 16 + (isdigit((unsigned char)h) ? h - '0' : tolower(h) - 'a' + 10);
                    }
                    if (v == 0)
                        return "\\x00 is not allowed";
                    *o++ = (char)v;
                    break;
                }
                default: return "unknown escape (use \\\" \\\\ \\n \\t \\r \\xHH)";
                }
            } else {
                *o++ = ch;
            }
        }
        while (p < end && (*p == ' ' || *p == '\t'))
            p++;
        if (p < end && *p != '#' && *p != ';')
            return "text after the closing quote";
        *o = 0;
        return NULL;
    }
    const char *start = p, *stop = end;
    for (const char *s = p; s < end; s++)
        if ((*s == '#' || *s == ';') && s > start && (s[-1] == ' ' || s[-1] == '\t')) {
            stop = s;
            break;
        }
    while (stop > start && (stop[-1] == ' ' || stop[-1] == '\t'))
        stop--;
    memcpy(o, start, (size_t)(stop - start));
    o[stop - start] = 0;
    return NULL;
}

/* "dir/" + value for a relative PATH read from a file in another folder. */
static char *resolve_path(const char *file, const char *value)
{
    const char *slash = strrchr(file, '/');
    if (!*value || value[0] == '/' || !slash)
        return strdup(value);
    size_t dl = (size_t)(slash - file) + 1, vl = strlen(value);
    char *s = malloc(dl + vl + 1);
    if (s) {
        memcpy(s, file, dl);
        memcpy(s + dl, value, vl + 1);
    }
    return s;
}

int conf_load_text(struct moed_config *c, const char *name, const char *text, size_t len,
                   struct conf_diag *d)
{
    char *nm = strdup(name);
    if (!nm)
        return conf_diag_error(d, MOED_ENOMEM, "%s: out of memory", name);
    free(c->file);
    c->file = nm;

    int first = 0; /* first error code */
    int seen_line[CONF_N_OPTIONS] = {0};
    int section = -1;
    const char *p = text, *end = text + len;
    if (len >= 3 && !memcmp(p, "\xEF\xBB\xBF", 3))
        p += 3;
    char *val = malloc(len + 1);
    if (!val)
        return conf_diag_error(d, MOED_ENOMEM, "%s: out of memory", name);
    for (int line = 1; p < end; line++) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        const char *next = eol ? eol + 1 : end;
        if (!eol)
            eol = end;
        if (eol > p && eol[-1] == '\r')
            eol--;
        const char *s = p;
        p = next;
        int rc = 0;
        for (const char *q = s; q < eol; q++)
            if (*q == 0 || ((unsigned char)*q < 0x20 && *q != '\t')) {
                rc = conf_diag_error(d, MOED_EFORMAT,
                                     "%s:%d: control character (byte 0x%02x) "
                                     "in line; not a text file?",
                                     name, line, (unsigned char)*q);
                break;
            }
        if (rc) {
            first = first ? first : rc;
            continue;
        }
        while (s < eol && (*s == ' ' || *s == '\t'))
            s++;
        if (s == eol || *s == '#' || *s == ';')
            continue;
        if (*s == '[') {
            const char *close = memchr(s, ']', (size_t)(eol - s));
            const char *after = close ? close + 1 : eol;
            while (after < eol && (*after == ' ' || *after == '\t'))
                after++;
            if (!close || (after < eol && *after != '#' && *after != ';')) {
                rc = conf_diag_error(d, MOED_EFORMAT,
                                     "%s:%d: malformed section line (expected "
                                     "[name])",
                                     name, line);
                first = first ? first : rc;
                continue;
            }
            int sl = (int)(close - s - 1);
            section = -2;
            for (int k = 0; k < CONF_N_SECTIONS; k++)
                if ((int)strlen(conf_section_names[k]) == sl &&
                    !strncmp(s + 1, conf_section_names[k], (size_t)sl))
                    section = k;
            if (section == -2)
                conf_diag_warn(d,
                               "%s:%d: unknown section [%.*s] (sections only group keys; "
                               "known: server, limits, model, engine, logging)",
                               name, line, sl > 40 ? 40 : sl, s + 1);
            continue;
        }
        const char *eq = memchr(s, '=', (size_t)(eol - s));
        if (!eq) {
            int kl = (int)(eol - s);
            rc = conf_diag_error(d, MOED_EFORMAT, "%s:%d: expected `key = value`, found \"%.*s%s\"",
                                 name, line, kl > 40 ? 40 : kl, s, kl > 40 ? "..." : "");
            first = first ? first : rc;
            continue;
        }
        const char *ke = eq;
        while (ke > s && (ke[-1] == ' ' || ke[-1] == '\t'))
            ke--;
        char key[72];
        size_t kl = (size_t)(ke - s);
        if (kl == 0) {
            rc = conf_diag_error(d, MOED_EFORMAT, "%s:%d: missing key before '='", name, line);
            first = first ? first : rc;
            continue;
        }
        snprintf(key, sizeof key, "%.*s", (int)(kl > 64 ? 64 : kl), s);
        int opt = kl > 64 ? -1 : conf_option_find(key);
        if (opt < 0) {
            int sug = conf_suggest(key);
            if (sug >= 0)
                rc = conf_diag_error(d, MOED_ENOTFOUND,
                                     "%s:%d: unknown key '%s%s'; did you mean "
                                     "'%s'?",
                                     name, line, key, kl > 64 ? "..." : "", conf_options[sug].name);
            else
                rc = conf_diag_error(d, MOED_ENOTFOUND,
                                     "%s:%d: unknown key '%s%s' (`moed config "
                                     "--help` lists the options)",
                                     name, line, key, kl > 64 ? "..." : "");
            first = first ? first : rc;
            continue;
        }
        const char *why = parse_line_value(eq + 1, eol, val);
        if (why) {
            rc = conf_diag_error(d, MOED_EFORMAT, "%s:%d: %s: %s", name, line, key, why);
            first = first ? first : rc;
            continue;
        }
        if (seen_line[opt])
            conf_diag_warn(d, "%s:%d: %s set again (first on line %d); the last value wins", name,
                           line, key, seen_line[opt]);
        seen_line[opt] = line;
        if (section >= 0 && (int)conf_options[opt].section != section)
            conf_diag_warn(d, "%s:%d: %s belongs in [%s], found in [%s]; it is read all the same",
                           name, line, key, conf_section_names[conf_options[opt].section],
                           conf_section_names[section]);
        struct conf_origin o = {CONF_SRC_FILE, line, false};
        if (conf_options[opt].type == CONF_PATH) {
            char *full = resolve_path(name, val);
            if (!full) {
                rc = conf_diag_error(d, MOED_ENOMEM, "%s:%d: out of memory", name, line);
            } else {
                rc = conf_set_value(c, opt, full, &o, d);
                free(full);
            }
        } else {
            rc = conf_set_value(c, opt, val, &o, d);
        }
        first = first ? first : rc;
    }
    free(val);
    return first;
}

/* ---- environment ---- */

/* MOED_* variables that belong to other parts of moed, not to options. */
static const char *const env_not_options[] = {"MOED_ISA", "MOED_SHARED", "MOED_TEST_TMP",
                                              "MOED_CUDA", NULL};

int conf_load_env(struct moed_config *c, struct conf_diag *d)
{
    int first = 0;
    for (int i = 0; i < CONF_N_OPTIONS; i++) {
        const char *v = getenv(conf_options[i].env);
        if (!v || !*v)
            continue;
        struct conf_origin o = {CONF_SRC_ENV, 0, false};
        int rc = conf_set_value(c, i, v, &o, d);
        first = first ? first : rc;
    }
    /* A near miss (MOED_PROT) is almost certainly a typo: say so. */
    for (char **e = environ; e && *e; e++) {
        if (strncmp(*e, "MOED_", 5))
            continue;
        const char *eq = strchr(*e, '=');
        size_t nl = eq ? (size_t)(eq - *e) : strlen(*e);
        if (nl > 64)
            continue;
        char var[72], key[72];
        snprintf(var, sizeof var, "%.*s", (int)nl, *e);
        bool known = false;
        for (int i = 0; i < CONF_N_OPTIONS && !known; i++)
            known = !strcmp(var, conf_options[i].env);
        for (int k = 0; env_not_options[k] && !known; k++)
            known = !strcmp(var, env_not_options[k]);
        if (known)
            continue;
        size_t k = 0;
        for (const char *s = var + 5; *s; s++)
            key[k++] = (char)tolower((unsigned char)*s);
        key[k] = 0;
        int sug = conf_suggest(key);
        if (sug >= 0)
            conf_diag_warn(d, "env %s: not a moed option (ignored); did you mean %s?", var,
                           conf_options[sug].env);
    }
    return first;
}

/* ---- command line ---- */

/* One pass over argv.  With c == NULL it only finds the -c/--config value
 * (in *config) and says nothing; otherwise it applies flags to c. */
static int walk_args(struct moed_config *c, int argc, char **argv, char **rest, int *n_rest,
                     const char **config, struct conf_diag *d)
{
    int first = 0, nr = 0, n_config = 0;
#define ARG_ERR(code, ...)                                                                         \
    do {                                                                                           \
        int rc_ = (code);                                                                          \
        if (c)                                                                                     \
            conf_diag_error(d, rc_, __VA_ARGS__);                                                  \
        first = first ? first : rc_;                                                               \
    } while (0)
    bool flags_done = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (flags_done || a[0] != '-' || !a[1]) {
            if (c && rest)
                rest[nr++] = argv[i];
            else if (c)
                ARG_ERR(MOED_EINVAL, "command line: unexpected argument '%s'", a);
            continue;
        }
        if (!strcmp(a, "--")) {
            flags_done = true;
            continue;
        }
        int opt = -1;
        bool negated = false, is_short = false, is_config = false;
        const char *value = NULL;
        char shown[80];
        if (a[1] == '-') {
            const char *eq = strchr(a, '=');
            size_t fl = eq ? (size_t)(eq - a) : strlen(a);
            snprintf(shown, sizeof shown, "%.*s", (int)(fl > 64 ? 64 : fl), a);
            if (eq)
                value = eq + 1;
            if (!strcmp(shown, "--config")) {
                is_config = true;
            } else {
                for (int k = 0; k < CONF_N_OPTIONS && opt < 0; k++) {
                    const char *f = conf_options[k].flag;
                    if (!strcmp(shown, f))
                        opt = k;
                    else if (conf_options[k].type == CONF_BOOL && !strncmp(shown, "--no-", 5) &&
                             !strcmp(shown + 5, f + 2)) {
                        opt = k;
                        negated = true;
                    }
                }
            }
            if (opt < 0 && !is_config) {
                int sug = conf_suggest(shown + 2);
                if (sug >= 0)
                    ARG_ERR(MOED_ENOTFOUND, "command line: unknown flag %s; did you mean %s?",
                            shown, conf_options[sug].flag);
                else
                    ARG_ERR(MOED_ENOTFOUND,
                            "command line: unknown flag %s (`moed config --help` "
                            "lists the options)",
                            shown);
                continue;
            }
        } else {
            is_short = true;
            snprintf(shown, sizeof shown, "-%c", a[1]);
            if (a[1] == 'c')
                is_config = true;
            for (int k = 0; k < CONF_N_OPTIONS && opt < 0 && !is_config; k++)
                if (conf_options[k].short_flag == a[1])
                    opt = k;
            if (opt < 0 && !is_config) {
                ARG_ERR(MOED_ENOTFOUND, "command line: unknown flag %s", shown);
                continue;
            }
            if (a[2])
                value = a + 2;
        }
        bool is_bool = opt >= 0 && conf_options[opt].type == CONF_BOOL;
        if (negated && value) {
            ARG_ERR(MOED_EINVAL, "command line %s: takes no value", shown);
            continue;
        }
        if (!value && !is_bool) {
            if (i + 1 >= argc) {
                ARG_ERR(MOED_EINVAL, "command line %s: needs a value", shown);
                continue;
            }
            value = argv[++i];
        }
        if (is_config) {
            if (!c && config)
                *config = value;
            else if (c && ++n_config == 2)
                conf_diag_warn(d, "command line: -c/--config given more than once; the last "
                                  "one is read");
            continue;
        }
        if (!c)
            continue;
        struct conf_origin o = {CONF_SRC_CLI, 0, is_short};
        int rc = conf_set_value(c, opt, value ? value : negated ? "false" : "true", &o, d);
        first = first ? first : rc;
    }
#undef ARG_ERR
    if (n_rest)
        *n_rest = nr;
    return first;
}

int conf_load_args(struct moed_config *c, int argc, char **argv, char **rest, int *n_rest,
                   struct conf_diag *d)
{
    return walk_args(c, argc, argv, rest, n_rest, NULL, d);
}

/* ---- checks ---- */

int conf_validate(const struct moed_config *c, struct conf_diag *d)
{
    int first = 0;
    if (c->ctx_size > 0 && c->default_max_tokens >= c->ctx_size) {
        char w1[200], w2[200];
        conf_format_origin(c, CONF_OPT_default_max_tokens, w1, sizeof w1);
        conf_format_origin(c, CONF_OPT_ctx_size, w2, sizeof w2);
        first = conf_diag_error(d, MOED_ERANGE,
                                "%s: default_max_tokens = %lld: must be below "
                                "ctx_size = %lld (%s)",
                                w1, (long long)c->default_max_tokens, (long long)c->ctx_size, w2);
    }
    return first;
}

/* cost_model: the file must load as moed calibrate wrote it (its message
 * names the file, line and key). */
static int check_cost_model(struct conf_diag *d, const char *where, const char *shown,
                            const char *path)
{
    struct sched_cost sc;
    struct moed_err e = {0};
    if (!sched_cost_load(&sc, path, &e))
        return 0;
    return conf_diag_error(d, e.code ? e.code : MOED_EINVAL,
                           "%s: cost_model = %s: not a cost model (moed calibrate -o FILE): %s",
                           where, shown, e.msg);
}

int conf_check_files(const struct moed_config *c, struct conf_diag *d)
{
    int first = 0;
    for (int i = 0; i < CONF_N_OPTIONS; i++) {
        const struct conf_option *r = &conf_options[i];
        if (!is_string_type(r->type))
            continue;
        const char *v = *CFIELD(c, i, char *);
        char where[200], shown[100];
        conf_format_origin(c, i, where, sizeof where);
        conf_quote_for_message(v, shown, sizeof shown);
        int rc = 0;
        struct stat st;
        if (!*v) {
            if (r->flags & CONF_F_REQUIRED) {
                char sh[8] = "";
                if (r->short_flag)
                    snprintf(sh, sizeof sh, " or -%c", r->short_flag);
                rc = conf_diag_error(d, MOED_EINVAL,
                                     "%s: not set; it is required (give %s = "
                                     "%s in the config file, %s or %s%s)",
                                     r->name, r->name, r->metavar, r->env, r->flag, sh);
            }
        } else if (r->flags & CONF_F_READABLE) {
            if (stat(v, &st) != 0 || access(v, R_OK) != 0)
                rc = conf_diag_error(d, MOED_EIO, "%s: %s = %s: cannot read: %s", where, r->name,
                                     shown, strerror(errno));
            else if (S_ISDIR(st.st_mode))
                rc = conf_diag_error(d, MOED_EIO, "%s: %s = %s: is a folder, not a file", where,
                                     r->name, shown);
            else if (i == CONF_OPT_cost_model)
                rc = check_cost_model(d, where, shown, v);
        } else if (r->flags & CONF_F_WRITABLE) {
            if (stat(v, &st) == 0) {
                if (S_ISDIR(st.st_mode))
                    rc = conf_diag_error(d, MOED_EIO, "%s: %s = %s: is a folder, not a file", where,
                                         r->name, shown);
                else if (access(v, W_OK) != 0)
                    rc = conf_diag_error(d, MOED_EIO, "%s: %s = %s: cannot write: %s", where,
                                         r->name, shown, strerror(errno));
            } else {
                char *dir = strdup(v);
                if (!dir)
                    return conf_diag_error(d, MOED_ENOMEM, "%s: out of memory", r->name);
                char *slash = strrchr(dir, '/');
                const char *dn = slash ? (slash == dir ? "/" : (*slash = 0, dir)) : ".";
                if (access(dn, W_OK) != 0)
                    rc = conf_diag_error(d, MOED_EIO, "%s: %s = %s: cannot create it in %s: %s",
                                         where, r->name, shown, dn, strerror(errno));
                free(dir);
            }
        }
        first = first ? first : rc;
    }
    return first;
}

int conf_load(struct moed_config *c, int argc, char **argv, char **rest, int *n_rest,
              struct conf_diag *d)
{
    int rc = conf_init_defaults(c);
    if (rc)
        return conf_diag_error(d, rc, "config: out of memory");
    const char *config = NULL;
    walk_args(NULL, argc, argv, NULL, NULL, &config, NULL);
    int first = 0;
    if (config)
        first = conf_load_file(c, config, d);
    rc = conf_load_env(c, d);
    first = first ? first : rc;
    rc = conf_load_args(c, argc, argv, rest, n_rest, d);
    first = first ? first : rc;
    if (!first)
        first = conf_validate(c, d);
    return first;
}

/* ---- reload ---- */

int conf_reload(const struct moed_config *old, struct moed_config *nw, struct conf_change *changes,
                size_t *n_changes, struct conf_diag *d)
{
    size_t n = 0;
    int rc = 0;
    for (int i = 0; i < CONF_N_OPTIONS; i++) {
        if (conf_value_equal(old, nw, i))
            continue;
        bool ok = (conf_options[i].flags & CONF_F_RELOAD) != 0;
        if (changes)
            changes[n] = (struct conf_change){i, ok};
        n++;
        if (ok)
            continue;
        char where[200], was[128], want[128];
        conf_format_origin(nw, i, where, sizeof where);
        conf_format_value(old, i, was, sizeof was);
        conf_format_value(nw, i, want, sizeof want);
        conf_diag_warn(d, "%s: %s = %s: not reloadable; keeping %s until moed is restarted", where,
                       conf_options[i].name, want, was);
        union conf_value v;
        switch (conf_options[i].type) {
        case CONF_BOOL: v.b = *CFIELD(old, i, bool); break;
        case CONF_INT:
        case CONF_DURATION: v.i = *CFIELD(old, i, int64_t); break;
        case CONF_ENUM: v.i = *CFIELD(old, i, int); break;
        case CONF_SIZE: v.u = *CFIELD(old, i, uint64_t); break;
        case CONF_FLOAT: v.f = *CFIELD(old, i, double); break;
        case CONF_BUDGET: v.budget = *CFIELD(old, i, struct conf_budget); break;
        case CONF_STRING:
        case CONF_PATH: v.s = *CFIELD(old, i, char *); break;
        }
        if (store(nw, i, &v))
            return conf_diag_error(d, MOED_ENOMEM, "reload: out of memory");
        nw->origin[i] = old->origin[i];
        rc = MOED_EUNSUPPORTED;
    }
    if (n_changes)
        *n_changes = n;
    return rc;
}
