/*
 * conf: moed's options, read from moed.conf, the environment and the command
 * line, checked, and handed to the rest of the daemon as one typed struct.
 *
 * Every option is one row of CONF_OPTIONS in conf/options.h; struct
 * moed_config's fields, the descriptor table conf_options[], the help text
 * and moed.conf.example are generated from those rows.  Nothing else in the
 * tree reads options (no getenv("MOED_...") for options elsewhere).
 *
 * Loading, in order of precedence (a later source overrides an earlier one):
 *   1. the table's defaults                       conf_init_defaults
 *   2. the file named by -c/--config FILE         conf_load_file
 *   3. environment variables MOED_<KEY>           conf_load_env
 *   4. command-line flags --key-name VALUE        conf_load_args
 * conf_load() does all four and the cross-option checks (conf_validate);
 * conf_check_files() then checks what must exist to serve (the model file).
 *
 * The file: `key = value` lines, UTF-8 (a BOM is skipped), LF or CRLF.
 *   - Blank lines and lines whose first non-blank character is # or ; are
 *     comments; in an unquoted value, whitespace followed by # or ; starts a
 *     comment too.  Whitespace around keys and values is ignored.
 *   - Values may be quoted: "..." with the escapes \" \\ \n \t \r \xHH, or
 *     '...' taken literally.  Quote a value that starts or ends with blanks
 *     or contains # or ;.
 *   - [section] lines group keys for readers (moed.conf.example uses them);
 *     a key means the same option under any section.  An unknown section,
 *     or a key under another section than its own, gets a warning.
 *   - An unknown key is an error with a "did you mean" suggestion; a key set
 *     twice is a warning, and the last value wins.
 *   - A relative PATH value is taken relative to the file's folder.
 * Environment: an empty MOED_* variable counts as unset.  A MOED_* variable
 * that is not an option but is close to one gets a warning; others
 * (MOED_ISA, MOED_SHARED, ...) belong to other parts and are left alone.
 * Command line: `--key-name VALUE`, `--key-name=VALUE`, short `-m VALUE`
 * or `-mVALUE`; BOOL flags take no separate value (`--metrics`,
 * `--no-metrics`, `--metrics=false`); `--` ends the flags.
 *
 * Value syntax per type (all parsers reject trailing garbage, overflow and
 * values outside the row's min..max):
 *   BOOL      true/false, yes/no, on/off, 1/0 (any case)
 *   INT       decimal, optional sign
 *   SIZE      bytes: a number with an optional K, M, G or T suffix (also
 *             KB/KiB ..., any case, all powers of 1024 as in systemd and
 *             nginx); a fraction such as 1.5G is allowed with a suffix;
 *             negative sizes are errors
 *   FLOAT     decimal, optional exponent; no inf/nan/hex
 *   DURATION  one or more number+unit pieces, units ms, s, m, h (1m30s,
 *             1.5s); a bare number is seconds; kept in whole milliseconds
 *   BUDGET    a fraction 0..1 (0.8), a percentage (80%) or a size with a
 *             suffix (12G, or 1000B for exact bytes)
 *   ENUM      one of the row's names (any case)
 *   STRING, PATH  any text; empty means "not set" where the help says so
 *
 * Errors and warnings go to a struct conf_diag, all of them, so that
 * `moed check-config` can list every mistake in one run.  Each message names
 * where the value came from, the key and the value, and what is allowed:
 *   "moed.conf:12: port = 70000: out of range (1..65535)"
 *   "env MOED_PORT: port = 80x: not an integer"
 *   "command line --ctx-size: ctx_size = -5: out of range (0..1048576)"
 * Functions return 0 or the negative MOED_E* code of the first error.
 *
 * Threads: a struct moed_config is plain data.  Load it on one thread; on
 * SIGHUP load a new one (conf_load with the same argv; if that fails, log
 * its errors and keep running on the old one), call conf_reload to keep the
 * non-reloadable options as they are, then hand the new struct to the
 * threads that use it (and free the old one when none does).
 */
#ifndef MOED_CONF_CONF_H
#define MOED_CONF_CONF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "common/err.h"
#include "conf/options.h"

#ifdef __cplusplus
extern "C" {
#endif

enum conf_type {
    CONF_BOOL,
    CONF_INT,
    CONF_SIZE,
    CONF_FLOAT,
    CONF_STRING,
    CONF_PATH,
    CONF_ENUM,
    CONF_DURATION,
    CONF_BUDGET,
};

/* The C type of each option type's field. */
#define CONF_CTYPE_BOOL bool
#define CONF_CTYPE_INT int64_t
#define CONF_CTYPE_SIZE uint64_t
#define CONF_CTYPE_FLOAT double
#define CONF_CTYPE_STRING char *
#define CONF_CTYPE_PATH char *
#define CONF_CTYPE_ENUM int
#define CONF_CTYPE_DURATION int64_t
#define CONF_CTYPE_BUDGET struct conf_budget

/* A GPU memory budget: a fraction of what is free, or bytes.  0 in either
 * form is stored as the fraction 0. */
struct conf_budget {
    bool is_fraction;
    double fraction; /* 0..1, when is_fraction */
    uint64_t bytes;  /* when !is_fraction */
};

#define CONF_ENUM_ID_(id, name) id,
enum conf_cache_policy { CONF_CACHE_POLICIES(CONF_ENUM_ID_) };
enum conf_log_level { CONF_LOG_LEVELS(CONF_ENUM_ID_) };
#undef CONF_ENUM_ID_

/* clang-format off */
enum conf_section {
#define CONF_SECTION_ID_(name, desc) CONF_SEC_##name,
    CONF_SECTIONS(CONF_SECTION_ID_)
#undef CONF_SECTION_ID_
    CONF_N_SECTIONS
};

/* Option ids: CONF_OPT_port etc., indexes into conf_options[]. */
enum conf_opt {
#define CONF_OPT_ID_(name, ...) CONF_OPT_##name,
    CONF_OPTIONS(CONF_OPT_ID_)
#undef CONF_OPT_ID_
    CONF_N_OPTIONS
};
/* clang-format on */

enum conf_source { CONF_SRC_DEFAULT, CONF_SRC_FILE, CONF_SRC_ENV, CONF_SRC_CLI };

/* Where an option's value came from. */
struct conf_origin {
    enum conf_source src;
    int line;        /* CONF_SRC_FILE: 1-based line in moed_config.file */
    bool short_flag; /* CONF_SRC_CLI: given as -m rather than --model */
};

/* The effective configuration: one typed field per option (DURATION fields
 * are milliseconds, SIZE fields bytes, ENUM fields the conf_* enums above;
 * STRING and PATH fields are never NULL and are owned by the struct). */
struct moed_config {
#define CONF_FIELD_(name, env, flag, sh, type, ...) CONF_CTYPE_##type name;
    CONF_OPTIONS(CONF_FIELD_)
#undef CONF_FIELD_
    struct conf_origin origin[CONF_N_OPTIONS];
    char *file; /* the config file read (as given), or NULL */
};

/* One row of the table, for help, introspection and tests. */
struct conf_option {
    const char *name; /* "max_body_size" */
    const char *env;  /* "MOED_MAX_BODY_SIZE" */
    const char *flag; /* "--max-body-size" */
    char short_flag;  /* 'm' or 0 */
    enum conf_type type;
    enum conf_section section;
    const char *def; /* default, as text */
    double min, max;
    const char *const *choices; /* ENUM: NULL-terminated */
    unsigned flags;             /* CONF_F_* */
    const char *metavar;        /* never NULL here (the type's when the row has none) */
    const char *help;
    size_t offset; /* of the field in struct moed_config */
};

extern const struct conf_option conf_options[CONF_N_OPTIONS];
extern const char *const conf_section_names[CONF_N_SECTIONS];
extern const char *const conf_section_help[CONF_N_SECTIONS];

/* Index of the option with this key, or -1. */
int conf_option_find(const char *name);

/* ---- diagnostics ---- */

struct conf_msg {
    bool error; /* else a warning */
    int code;   /* MOED_E* for errors */
    char text[MOED_ERR_MSG];
};

struct conf_diag {
    struct conf_msg *msgs;
    size_t n, cap;
    int errors, warnings;
};

void conf_diag_free(struct conf_diag *d);
/* Prints each message on its own line: errors as they are, warnings with
 * "warning: " in front. */
void conf_diag_print(FILE *f, const struct conf_diag *d);

/* ---- the config struct ---- */

/* Sets every field to the table's default; on failure (ENOMEM) c is freed. */
int conf_init_defaults(struct moed_config *c);
void conf_free(struct moed_config *c);
/* dst (uninitialised) becomes a deep copy of src. */
int conf_copy(struct moed_config *dst, const struct moed_config *src);

/* Parse and set one option from text; o says where it came from (for
 * messages and conf_print_effective).  Strings are copied. */
int conf_set_value(struct moed_config *c, int opt, const char *value, const struct conf_origin *o,
                   struct conf_diag *d);

/* ---- loading ---- */

/* Read a moed.conf file over c (c->file becomes path). */
int conf_load_file(struct moed_config *c, const char *path, struct conf_diag *d);
/* The same from memory; name is used in messages and as c->file. */
int conf_load_text(struct moed_config *c, const char *name, const char *text, size_t len,
                   struct conf_diag *d);
/* Apply MOED_* environment variables. */
int conf_load_env(struct moed_config *c, struct conf_diag *d);
/* Apply command-line flags; argv[0] is the command name and is skipped.
 * -c/--config FILE is accepted and skipped (conf_load reads it).  Arguments
 * that are not flags go to rest (room for argc pointers) and *n_rest; with
 * rest NULL they are errors. */
int conf_load_args(struct moed_config *c, int argc, char **argv, char **rest, int *n_rest,
                   struct conf_diag *d);
/* Checks between options (e.g. default_max_tokens below ctx_size). */
int conf_validate(const struct moed_config *c, struct conf_diag *d);
/* Checks against the machine what serving needs: required options set,
 * files readable (model, api_key_file), log_file's folder writable. */
int conf_check_files(const struct moed_config *c, struct conf_diag *d);

/* Everything in order: defaults, the -c/--config file named in argv (if
 * any), the environment, the flags, conf_validate.  c is initialised even
 * on error (conf_free it either way); every problem is in d. */
int conf_load(struct moed_config *c, int argc, char **argv, char **rest, int *n_rest,
              struct conf_diag *d);

/* ---- reload (SIGHUP) ---- */

struct conf_change {
    int opt;      /* CONF_OPT_* */
    bool applied; /* reloadable: nw's value is to be used; else refused */
};

/* Compares the running config old with a freshly loaded nw.  Each changed
 * option is listed in changes (room for CONF_N_OPTIONS; may be NULL) with
 * *n_changes set.  Changed options that are not reloadable are refused: nw
 * gets old's value back, and d a warning naming the option, both values and
 * "restart".  Returns 0 when every change applies, MOED_EUNSUPPORTED when
 * some were refused; nw is the config to run with in both cases. */
int conf_reload(const struct moed_config *old, struct moed_config *nw, struct conf_change *changes,
                size_t *n_changes, struct conf_diag *d);

/* true when the option has the same value in a and b. */
bool conf_value_equal(const struct moed_config *a, const struct moed_config *b, int opt);

/* ---- value parsers (exposed for tests and for api/ to reuse) ----
 * On failure they return MOED_EINVAL (syntax) or MOED_ERANGE (overflow,
 * negative) and set *why to a short reason ("not an integer"). */

int conf_parse_bool(const char *s, bool *out, const char **why);
int conf_parse_int(const char *s, int64_t *out, const char **why);
int conf_parse_size(const char *s, uint64_t *out, const char **why);
int conf_parse_float(const char *s, double *out, const char **why);
int conf_parse_duration(const char *s, int64_t *ms, const char **why);
int conf_parse_budget(const char *s, struct conf_budget *out, const char **why);

/* ---- printing ---- */

/* Value in moed.conf syntax ("4M", "10s", "0.8", "\"\"", "score"). */
void conf_format_value(const struct moed_config *c, int opt, char *buf, size_t n);
/* "moed.conf:12", "env MOED_PORT", "command line --port", "default". */
void conf_format_origin(const struct moed_config *c, int opt, char *buf, size_t n);
void conf_format_size(uint64_t bytes, char *buf, size_t n); /* "16K", "1000" */
void conf_format_duration(int64_t ms, char *buf, size_t n); /* "1m30s", "0" */

/* "key = value (source)", one line per option, in table order. */
void conf_print_effective(FILE *f, const struct moed_config *c);
/* Every option's flag, key, env var, default, range and help, by section
 * (for `moed serve --help` and `moed config --help`). */
void conf_print_help(FILE *f);
/* moed.conf.example: every option commented out at its default. */
void conf_write_example(FILE *f);

#ifdef __cplusplus
}
#endif

#endif
