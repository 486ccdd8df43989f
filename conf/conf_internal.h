/* Shared by the files of conf/ only; the rest of the tree uses conf/conf.h. */
#ifndef MOED_CONF_INTERNAL_H
#define MOED_CONF_INTERNAL_H

#include "conf/conf.h"

/* A parsed value of any option type (s points into the parsed text). */
union conf_value {
    bool b;
    int64_t i; /* INT, DURATION (ms), ENUM (index) */
    uint64_t u;
    double f;
    struct conf_budget budget;
    const char *s;
};

int conf_diag_error(struct conf_diag *d, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void conf_diag_warn(struct conf_diag *d, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

int conf_parse_option(int opt, const char *text, union conf_value *v, const char **why,
                      char *whybuf, size_t whylen);
void conf_range_text(int opt, char *buf, size_t n);

/* s in moed.conf syntax: bare when it reads back the same, else "quoted". */
void conf_quote_value(const char *s, char *buf, size_t n);
/* The same, cut to fit a message (with "..."). */
void conf_quote_for_message(const char *s, char *buf, size_t n);
void conf_format_double(double x, char *buf, size_t n);
void conf_format_budget(const struct conf_budget *b, char *buf, size_t n);

int conf_edit_distance(const char *a, const char *b);
int conf_suggest(const char *name);

#endif
