/*
 * Text made from the option table: the effective-config listing, the
 * option help (`moed config --help`, later `moed serve --help`) and
 * moed.conf.example.  The example file in the repository is this output;
 * tests/unit/test_conf.c compares them byte for byte.
 */
#include "conf/conf_internal.h"

#include <string.h>

/* Print text wrapped at width columns, each line starting with prefix. */
static void wrap(FILE *f, const char *prefix, const char *text, int width)
{
    int room = width - (int)strlen(prefix);
    const char *p = text;
    while (*p) {
        while (*p == ' ')
            p++;
        const char *line = p, *brk = NULL;
        int len = 0;
        while (p[len] && len <= room) {
            if (p[len] == ' ')
                brk = p + len;
            len++;
        }
        const char *stop;
        if (!p[len] && len <= room)
            stop = p + len;
        else if (brk)
            stop = brk;
        else /* one word longer than the line */
            for (stop = p + len; *stop && *stop != ' '; stop++)
                ;
        fprintf(f, "%s%.*s\n", prefix, (int)(stop - line), line);
        p = stop;
    }
}

void conf_print_effective(FILE *f, const struct moed_config *c)
{
    for (int i = 0; i < CONF_N_OPTIONS; i++) {
        char val[600], where[300];
        conf_format_value(c, i, val, sizeof val);
        conf_format_origin(c, i, where, sizeof where);
        fprintf(f, "%s = %s (%s)\n", conf_options[i].name, val, where);
    }
}

/* "--port N", "--metrics, --no-metrics", "-m, --model FILE". */
static void flag_text(const struct conf_option *r, char *buf, size_t n)
{
    size_t k = 0;
    if (r->short_flag)
        k += (size_t)snprintf(buf, n, "-%c, ", r->short_flag);
    if (r->type == CONF_BOOL)
        snprintf(buf + k, n - k, "%s, --no-%s", r->flag, r->flag + 2);
    else if (r->type == CONF_ENUM) {
        char range[160];
        conf_range_text((int)(r - conf_options), range, sizeof range);
        for (char *p = range; *p; p++) /* "a, b, c" -> "a|b|c" */
            if (*p == ',') {
                memmove(p, p + 1, strlen(p + 1) + 1);
                *p = '|';
            }
        snprintf(buf + k, n - k, "%s %s", r->flag, range);
    } else
        snprintf(buf + k, n - k, "%s %s", r->flag, r->metavar);
}

/* "key port, env MOED_PORT; default 8080; 1..65535; restart to change" */
static void facts_text(const struct moed_config *def, int opt, char *buf, size_t n)
{
    const struct conf_option *r = &conf_options[opt];
    char val[200] = "?";
    if (def)
        conf_format_value(def, opt, val, sizeof val);
    size_t k = (size_t)snprintf(buf, n, "key %s, env %s; default %s", r->name, r->env, val);
    if (k < n && (r->type == CONF_INT || r->type == CONF_SIZE || r->type == CONF_FLOAT ||
                  r->type == CONF_DURATION)) {
        char range[160];
        conf_range_text(opt, range, sizeof range);
        k += (size_t)snprintf(buf + k, n - k, "; %s", range);
    }
    if (k < n)
        snprintf(buf + k, n - k, "; %s",
                 r->flags & CONF_F_RELOAD ? "reloadable" : "restart to change");
}

void conf_print_help(FILE *f)
{
    fprintf(f, "Options.  Each is a moed.conf key, an environment variable and a flag; a flag\n"
               "beats the variable, which beats the file given with -c/--config FILE.\n"
               "Sizes take K, M, G, T suffixes (powers of 1024); durations ms, s, m, h.\n");
    struct moed_config def;
    bool have_def = conf_init_defaults(&def) == 0;
    for (int s = 0; s < CONF_N_SECTIONS; s++) {
        fprintf(f, "\n[%s] %s\n", conf_section_names[s], conf_section_help[s]);
        for (int i = 0; i < CONF_N_OPTIONS; i++) {
            const struct conf_option *r = &conf_options[i];
            if ((int)r->section != s)
                continue;
            char flags[200], facts[400];
            flag_text(r, flags, sizeof flags);
            facts_text(have_def ? &def : NULL, i, facts, sizeof facts);
            fprintf(f, "  %s\n", flags);
            wrap(f, "      ", r->help, 79);
            wrap(f, "      ", facts, 79);
        }
    }
    if (have_def)
        conf_free(&def);
}

void conf_write_example(FILE *f)
{
    static const char *const head =
        "# moed.conf: the configuration of moed, the MoE LLM server.\n"
        "#\n"
        "# This example lists every option, commented out at its default.  It is\n"
        "# generated from the option table (conf/options.h) by\n"
        "# `moed config --example`, and a unit test fails when the two differ.\n"
        "# Copy it to /etc/moed/moed.conf and uncomment what you change;\n"
        "# `moed check-config /etc/moed/moed.conf` checks the result and prints the\n"
        "# effective configuration.\n"
        "#\n"
        "# Syntax: `key = value`, one per line.  Lines starting with # or ; are\n"
        "# comments, and so is the rest of a line after a blank and # or ;.\n"
        "# Values may be quoted: \"...\" with \\\" \\\\ \\n \\t \\r \\xHH escapes, or\n"
        "# '...' taken literally.  [section] lines only group keys for readers.\n"
        "# Sizes take K, M, G, T suffixes (powers of 1024; KiB and KB mean the same);\n"
        "# durations take ms, s, m, h (1m30s works; a bare number is seconds).\n"
        "# Relative paths are relative to this file's folder.\n"
        "#\n"
        "# Every option can also be set by an environment variable MOED_<KEY>\n"
        "# (MOED_PORT=8081) or a command-line flag (--port 8081): a flag beats the\n"
        "# environment, which beats this file.  On SIGHUP (systemctl reload moed)\n"
        "# moed reads this file again and applies the options marked reloadable;\n"
        "# the others keep their value until a restart.\n";
    fputs(head, f);
    struct moed_config def;
    bool have_def = conf_init_defaults(&def) == 0;
    for (int s = 0; s < CONF_N_SECTIONS; s++) {
        fprintf(f, "\n[%s]\n", conf_section_names[s]);
        for (int i = 0; i < CONF_N_OPTIONS; i++) {
            const struct conf_option *r = &conf_options[i];
            if ((int)r->section != s)
                continue;
            char flags[200], val[300] = "", meta[400];
            fputc('\n', f);
            wrap(f, "# ", r->help, 78);
            flag_text(r, flags, sizeof flags);
            size_t k = (size_t)snprintf(meta, sizeof meta, "env %s, flag %s", r->env, flags);
            if (r->type == CONF_INT || r->type == CONF_SIZE || r->type == CONF_FLOAT ||
                r->type == CONF_DURATION) {
                char range[160];
                conf_range_text(i, range, sizeof range);
                k += (size_t)snprintf(meta + k, sizeof meta - k, "; %s", range);
            }
            snprintf(meta + k, sizeof meta - k, "; %s",
                     r->flags & CONF_F_RELOAD ? "reloadable" : "restart to change");
            wrap(f, "# ", meta, 78);
            if (have_def)
                conf_format_value(&def, i, val, sizeof val);
            fprintf(f, "#%s = %s\n", r->name, val);
        }
    }
    if (have_def)
        conf_free(&def);
}
