/* conf/: the option table, the value parsers, the three sources and their
 * precedence, the messages, the example file, reload. */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "conf/conf.h"
#include "conf/conf_internal.h"
#include "tests/unit/harness.h"

/* ---- helpers ---- */

static bool diag_has(const struct conf_diag *d, bool error, const char *sub)
{
    for (size_t i = 0; i < d->n; i++)
        if (d->msgs[i].error == error && strstr(d->msgs[i].text, sub))
            return true;
    return false;
}

static void diag_dump(const struct conf_diag *d)
{
    for (size_t i = 0; i < d->n; i++)
        fprintf(stderr, "      [%s] %s\n", d->msgs[i].error ? "error" : "warn", d->msgs[i].text);
}

#define CHECK_DIAG(d, error, sub)                                                                  \
    do {                                                                                           \
        if (!diag_has((d), (error), (sub))) {                                                      \
            test_fail(__FILE__, __LINE__,                                                          \
                      "no %s containing \"%s\"; got:", (error) ? "error" : "warning", (sub));      \
            diag_dump(d);                                                                          \
        }                                                                                          \
    } while (0)

/* Defaults, then text as "moed.conf". */
static int load_text(struct moed_config *c, struct conf_diag *d, const char *text)
{
    memset(d, 0, sizeof *d);
    if (conf_init_defaults(c))
        return MOED_ENOMEM;
    return conf_load_text(c, "moed.conf", text, strlen(text), d);
}

/* Set or unset an environment variable, remembering the old value. */
struct env_save {
    char name[64];
    char *old;
    bool had;
};

static void env_set(struct env_save *s, const char *name, const char *value)
{
    snprintf(s->name, sizeof s->name, "%s", name);
    const char *o = getenv(name);
    s->had = o != NULL;
    s->old = o ? strdup(o) : NULL;
    if (value)
        setenv(name, value, 1);
    else
        unsetenv(name);
}

static void env_restore(struct env_save *s)
{
    if (s->had)
        setenv(s->name, s->old, 1);
    else
        unsetenv(s->name);
    free(s->old);
    s->old = NULL;
}

static char *write_tmp(const char *name, const char *text)
{
    static char path[512];
    snprintf(path, sizeof path, "%s/%s", test_tmp_dir(), name);
    FILE *f = fopen(path, "wb");
    if (!f)
        return NULL;
    fputs(text, f);
    fclose(f);
    return path;
}

/* ---- the table ---- */

TEST(conf_defaults)
{
    struct moed_config c;
    REQUIRE(conf_init_defaults(&c) == 0);
    CHECK(!strcmp(c.host, "127.0.0.1"));
    CHECK_EQ(c.port, 8080);
    CHECK(!strcmp(c.model, ""));
    CHECK(!strcmp(c.api_key_file, ""));
    CHECK(c.metrics == true);
    CHECK_EQ(c.max_body_size, 4u << 20);
    CHECK_EQ(c.max_header_size, 16u << 10);
    CHECK_EQ(c.header_timeout, 10000);
    CHECK_EQ(c.idle_timeout, 60000);
    CHECK_EQ(c.request_timeout, 600000);
    CHECK_EQ(c.drain_timeout, 30000);
    CHECK_EQ(c.threads, 0);
    CHECK_EQ(c.gpu_device, 0);
    CHECK(c.expert_cache_budget.is_fraction);
    CHECK_NEAR(c.expert_cache_budget.fraction, 0.8, 1e-12);
    CHECK_EQ(c.cache_policy, CONF_CACHE_SCORE);
    CHECK_EQ(c.log_level, CONF_LOG_INFO);
    CHECK_EQ(c.ctx_size, 4096);
    CHECK_EQ(c.max_seqs, 16);
    CHECK_EQ(c.kv_budget, 0);
    CHECK(c.file == NULL);
    for (int i = 0; i < CONF_N_OPTIONS; i++)
        CHECK_EQ(c.origin[i].src, CONF_SRC_DEFAULT);
    CHECK_EQ(conf_validate(&c, NULL), 0);
    conf_free(&c);
}

TEST(conf_table_selfcheck)
{
    int last_section = 0;
    for (int i = 0; i < CONF_N_OPTIONS; i++) {
        const struct conf_option *r = &conf_options[i];
        char env[80] = "MOED_", flag[80] = "--";
        for (const char *p = r->name; *p; p++) {
            CHECK_MSG(islower((unsigned char)*p) || isdigit((unsigned char)*p) || *p == '_',
                      "%s: key is not snake_case", r->name);
            size_t k = strlen(env), f = strlen(flag);
            env[k] = (char)toupper((unsigned char)*p);
            env[k + 1] = 0;
            flag[f] = *p == '_' ? '-' : *p;
            flag[f + 1] = 0;
        }
        CHECK_MSG(!strcmp(r->env, env), "%s: env %s, expected %s", r->name, r->env, env);
        CHECK_MSG(!strcmp(r->flag, flag), "%s: flag %s, expected %s", r->name, r->flag, flag);
        CHECK_MSG(r->help && strlen(r->help) > 10, "%s: no help", r->name);
        CHECK_MSG(r->help[strlen(r->help) - 1] == '.', "%s: help should end with '.'", r->name);
        CHECK_MSG(r->short_flag != 'c' && r->short_flag != 'h' && r->short_flag != 'q',
                  "%s: short flag -%c is taken", r->name, r->short_flag);
        CHECK_MSG((int)r->section >= last_section, "%s: section out of order", r->name);
        last_section = (int)r->section;
        CHECK_MSG((r->type == CONF_ENUM) == (r->choices != NULL), "%s: choices", r->name);
        CHECK_MSG(r->metavar || r->type == CONF_BOOL || r->type == CONF_ENUM, "%s: metavar",
                  r->name);
        if (r->type == CONF_INT || r->type == CONF_SIZE || r->type == CONF_FLOAT ||
            r->type == CONF_DURATION)
            CHECK_MSG(r->min <= r->max && r->max > 0, "%s: bounds", r->name);
        CHECK_MSG(!(r->flags & (CONF_F_READABLE | CONF_F_WRITABLE)) || r->type == CONF_PATH,
                  "%s: file flags on a non-path", r->name);
        CHECK_EQ(conf_option_find(r->name), i);
        for (int j = 0; j < i; j++) {
            const struct conf_option *o = &conf_options[j];
            CHECK_MSG(strcmp(r->name, o->name), "duplicate key %s", r->name);
            CHECK_MSG(strcmp(r->flag, o->flag), "duplicate flag %s", r->flag);
            CHECK_MSG(!r->short_flag || r->short_flag != o->short_flag, "duplicate -%c",
                      r->short_flag);
            CHECK_MSG(r->offset != o->offset, "%s and %s share a field", r->name, o->name);
        }
    }
    CHECK_EQ(last_section, CONF_N_SECTIONS - 1);
    /* The C enums and the names the table accepts agree. */
    const struct conf_option *cp = &conf_options[CONF_OPT_cache_policy];
    CHECK(!strcmp(cp->choices[CONF_CACHE_LRU], "lru"));
    CHECK(!strcmp(cp->choices[CONF_CACHE_LFU], "lfu"));
    CHECK(!strcmp(cp->choices[CONF_CACHE_SCORE], "score"));
    const struct conf_option *ll = &conf_options[CONF_OPT_log_level];
    CHECK(!strcmp(ll->choices[CONF_LOG_ERROR], "error"));
    CHECK(!strcmp(ll->choices[CONF_LOG_DEBUG], "debug"));

    /* Every default parses, is in range, and formats to text that parses
     * back to the same value. */
    struct moed_config a, b;
    REQUIRE(conf_init_defaults(&a) == 0);
    REQUIRE(conf_init_defaults(&b) == 0);
    struct conf_diag d = {0};
    for (int i = 0; i < CONF_N_OPTIONS; i++) {
        char v[256];
        conf_format_value(&a, i, v, sizeof v);
        char line[400];
        snprintf(line, sizeof line, "%s = %s\n", conf_options[i].name, v);
        CHECK_MSG(conf_load_text(&b, "x", line, strlen(line), &d) == 0, "round trip: %s", line);
        CHECK_MSG(conf_value_equal(&a, &b, i), "round trip changed %s", line);
    }
    CHECK_EQ(d.errors, 0);
    conf_diag_free(&d);
    conf_free(&a);
    conf_free(&b);
}

/* ---- parsers ---- */

TEST(conf_parse_bool_values)
{
    const char *yes[] = {"true", "TRUE", "yes", "On", "1"};
    const char *no[] = {"false", "no", "OFF", "0"};
    const char *bad[] = {"", "2", "truee", "y", "enable", " true"};
    bool b;
    const char *why;
    for (size_t i = 0; i < sizeof yes / sizeof *yes; i++)
        CHECK(conf_parse_bool(yes[i], &b, &why) == 0 && b);
    for (size_t i = 0; i < sizeof no / sizeof *no; i++)
        CHECK(conf_parse_bool(no[i], &b, &why) == 0 && !b);
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        CHECK_MSG(conf_parse_bool(bad[i], &b, &why) == MOED_EINVAL, "bool '%s'", bad[i]);
}

TEST(conf_parse_int_values)
{
    static const struct {
        const char *s;
        int rc;
        int64_t v;
    } cases[] = {
        {"0", 0, 0},
        {"8080", 0, 8080},
        {"+7", 0, 7},
        {"-1", 0, -1},
        {"007", 0, 7},
        {"9223372036854775807", 0, INT64_MAX},
        {"-9223372036854775808", 0, INT64_MIN},
        {"9223372036854775808", MOED_ERANGE, 0},
        {"99999999999999999999999", MOED_ERANGE, 0},
        {"", MOED_EINVAL, 0},
        {"-", MOED_EINVAL, 0},
        {"12abc", MOED_EINVAL, 0},
        {"1.5", MOED_EINVAL, 0},
        {"0x10", MOED_EINVAL, 0},
        {" 1", MOED_EINVAL, 0},
        {"1 ", MOED_EINVAL, 0},
        {"1e3", MOED_EINVAL, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        int64_t v = 0;
        const char *why = NULL;
        int rc = conf_parse_int(cases[i].s, &v, &why);
        CHECK_MSG(rc == cases[i].rc, "int '%s': rc %d, want %d", cases[i].s, rc, cases[i].rc);
        if (!rc && !cases[i].rc)
            CHECK_MSG(v == cases[i].v, "int '%s' = %lld", cases[i].s, (long long)v);
        if (rc)
            CHECK_MSG(why && *why, "int '%s': no reason", cases[i].s);
    }
}

TEST(conf_parse_size_values)
{
    static const struct {
        const char *s;
        int rc;
        uint64_t v;
    } cases[] = {
        {"0", 0, 0},
        {"512", 0, 512},
        {"512B", 0, 512},
        {"1K", 0, 1024},
        {"1k", 0, 1024},
        {"1KB", 0, 1024},
        {"1KiB", 0, 1024},
        {"1kib", 0, 1024},
        {"4M", 0, 4u << 20},
        {"4 MiB", 0, 4u << 20},
        {"12G", 0, 12ull << 30},
        {"1.5G", 0, 3ull << 29},
        {"0.5K", 0, 512},
        {"2T", 0, 2ull << 40},
        {"16777215T", 0, 16777215ull << 40},
        {"16777216T", MOED_ERANGE, 0},
        {"18446744073709551615", 0, UINT64_MAX},
        {"18446744073709551616", MOED_ERANGE, 0},
        {"-1", MOED_ERANGE, 0},
        {"-1K", MOED_ERANGE, 0},
        {"", MOED_EINVAL, 0},
        {"K", MOED_EINVAL, 0},
        {"1.5", MOED_EINVAL, 0},
        {"1X", MOED_EINVAL, 0},
        {"1KK", MOED_EINVAL, 0},
        {"1Kb2", MOED_EINVAL, 0},
        {"1P", MOED_EINVAL, 0},
        {".5G", MOED_EINVAL, 0},
        {"1e3", MOED_EINVAL, 0},
        {"12G!", MOED_EINVAL, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        uint64_t v = 0;
        const char *why = NULL;
        int rc = conf_parse_size(cases[i].s, &v, &why);
        CHECK_MSG(rc == cases[i].rc, "size '%s': rc %d, want %d", cases[i].s, rc, cases[i].rc);
        if (!rc && !cases[i].rc)
            CHECK_MSG(v == cases[i].v, "size '%s' = %llu", cases[i].s, (unsigned long long)v);
        if (rc)
            CHECK_MSG(why && *why, "size '%s': no reason", cases[i].s);
    }
    const char *why;
    uint64_t v;
    CHECK(conf_parse_size("-3", &v, &why) == MOED_ERANGE && strstr(why, "negative"));
}

TEST(conf_parse_float_values)
{
    static const struct {
        const char *s;
        int rc;
        double v;
    } cases[] = {
        {"0", 0, 0},
        {"0.8", 0, 0.8},
        {"-2.5", 0, -2.5},
        {"1e-3", 0, 1e-3},
        {"1.", 0, 1},
        {"+3E2", 0, 300},
        {"1e999", MOED_ERANGE, 0},
        {"", MOED_EINVAL, 0},
        {"inf", MOED_EINVAL, 0},
        {"nan", MOED_EINVAL, 0},
        {"0x1p3", MOED_EINVAL, 0},
        {".5", MOED_EINVAL, 0},
        {"1e", MOED_EINVAL, 0},
        {"1.2.3", MOED_EINVAL, 0},
        {"1f", MOED_EINVAL, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        double v = 0;
        const char *why = NULL;
        int rc = conf_parse_float(cases[i].s, &v, &why);
        CHECK_MSG(rc == cases[i].rc, "float '%s': rc %d, want %d", cases[i].s, rc, cases[i].rc);
        if (!rc && !cases[i].rc)
            CHECK_NEAR(v, cases[i].v, 1e-12);
    }
}

TEST(conf_parse_duration_values)
{
    static const struct {
        const char *s;
        int rc;
        int64_t ms;
    } cases[] = {
        {"0", 0, 0},
        {"10", 0, 10000},
        {"10s", 0, 10000},
        {"500ms", 0, 500},
        {"500MS", 0, 500},
        {"5m", 0, 300000},
        {"1h", 0, 3600000},
        {"1m30s", 0, 90000},
        {"1m 30s", 0, 90000},
        {"1h2m3s4ms", 0, 3723004},
        {"1.5s", 0, 1500},
        {"0.25", 0, 250},
        {"10 s", 0, 10000},
        {"", MOED_EINVAL, 0},
        {"s", MOED_EINVAL, 0},
        {"10x", MOED_EINVAL, 0},
        {"10sec", MOED_EINVAL, 0},
        {"1m30", MOED_EINVAL, 0},
        {"-5s", MOED_ERANGE, 0},
        {"0.5ms", MOED_ERANGE, 0},
        {"99999999999999999999h", MOED_ERANGE, 0},
        {"9999999999999999h", MOED_ERANGE, 0},
        {"1d", MOED_EINVAL, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        int64_t v = -1;
        const char *why = NULL;
        int rc = conf_parse_duration(cases[i].s, &v, &why);
        CHECK_MSG(rc == cases[i].rc, "duration '%s': rc %d, want %d", cases[i].s, rc, cases[i].rc);
        if (!rc && !cases[i].rc)
            CHECK_MSG(v == cases[i].ms, "duration '%s' = %lld ms", cases[i].s, (long long)v);
        if (rc)
            CHECK_MSG(why && *why, "duration '%s': no reason", cases[i].s);
    }
    char buf[64];
    conf_format_duration(90000, buf, sizeof buf);
    CHECK(!strcmp(buf, "1m30s"));
    conf_format_duration(1500, buf, sizeof buf);
    CHECK(!strcmp(buf, "1s500ms"));
    conf_format_duration(0, buf, sizeof buf);
    CHECK(!strcmp(buf, "0"));
    conf_format_size(4u << 20, buf, sizeof buf);
    CHECK(!strcmp(buf, "4M"));
    conf_format_size(1000, buf, sizeof buf);
    CHECK(!strcmp(buf, "1000"));
    conf_format_size(1536, buf, sizeof buf);
    CHECK(!strcmp(buf, "1536"));
}

TEST(conf_parse_budget_values)
{
    struct conf_budget b;
    const char *why;
    CHECK(conf_parse_budget("0.8", &b, &why) == 0 && b.is_fraction && b.fraction == 0.8);
    CHECK(conf_parse_budget("1", &b, &why) == 0 && b.is_fraction && b.fraction == 1);
    CHECK(conf_parse_budget("0", &b, &why) == 0 && b.is_fraction && b.fraction == 0);
    CHECK(conf_parse_budget("80%", &b, &why) == 0 && b.is_fraction &&
          fabs(b.fraction - 0.8) < 1e-12);
    CHECK(conf_parse_budget("100 %", &b, &why) == 0 && b.is_fraction && b.fraction == 1);
    CHECK(conf_parse_budget("12G", &b, &why) == 0 && !b.is_fraction && b.bytes == 12ull << 30);
    CHECK(conf_parse_budget("1.5g", &b, &why) == 0 && !b.is_fraction && b.bytes == 3ull << 29);
    CHECK(conf_parse_budget("1000B", &b, &why) == 0 && !b.is_fraction && b.bytes == 1000);
    CHECK(conf_parse_budget("0G", &b, &why) == 0 && b.is_fraction && b.fraction == 0);
    CHECK(conf_parse_budget("12", &b, &why) == MOED_ERANGE && strstr(why, "suffix"));
    CHECK(conf_parse_budget("1.01", &b, &why) == MOED_ERANGE);
    CHECK(conf_parse_budget("-0.5", &b, &why) == MOED_ERANGE);
    CHECK(conf_parse_budget("101%", &b, &why) == MOED_ERANGE);
    CHECK(conf_parse_budget("%", &b, &why) == MOED_EINVAL);
    CHECK(conf_parse_budget("", &b, &why) == MOED_EINVAL);
    CHECK(conf_parse_budget("lots", &b, &why) == MOED_EINVAL);
    CHECK(conf_parse_budget("12Q", &b, &why) == MOED_EINVAL);
    CHECK(conf_parse_budget("0.8x", &b, &why) == MOED_EINVAL);

    /* Through the table: the byte form has the row's upper bound. */
    struct moed_config c;
    struct conf_diag d;
    CHECK(load_text(&c, &d, "expert_cache_budget = 99999T\n") == MOED_ERANGE);
    CHECK_DIAG(&d, true, "moed.conf:1: expert_cache_budget = 99999T: out of range");
    conf_diag_free(&d);
    conf_free(&c);
    CHECK(load_text(&c, &d, "expert_cache_budget = 12\n") == MOED_ERANGE);
    CHECK_DIAG(&d, true, "expert_cache_budget = 12: a bare number is a fraction");
    conf_diag_free(&d);
    conf_free(&c);
}

/* ---- messages ---- */

TEST(conf_error_messages)
{
    struct moed_config c;
    struct conf_diag d;
    int rc = load_text(&c, &d,
                       "# a comment\n"
                       "port = 70000\n"
                       "threads = 8x\n"
                       "max_body_size = -1\n"
                       "header_timeout = 50ms\n"
                       "cache_policy = fifo\n"
                       "log_level = verbose\n"
                       "metrics = maybe\n"
                       "host = \"\"\n"
                       "host = [1.2.3.4]\n"
                       "max_header_size = 1G\n");
    CHECK_EQ(rc, MOED_ERANGE);
    CHECK_EQ(d.errors, 10);
    CHECK_DIAG(&d, true, "moed.conf:2: port = 70000: out of range (1..65535)");
    CHECK_DIAG(&d, true, "moed.conf:3: threads = 8x: not an integer");
    CHECK_DIAG(&d, true, "moed.conf:4: max_body_size = -1: negative size");
    CHECK_DIAG(&d, true, "moed.conf:5: header_timeout = 50ms: out of range (100ms..10m)");
    CHECK_DIAG(&d, true, "moed.conf:6: cache_policy = fifo: not one of lru, lfu, score");
    CHECK_DIAG(&d, true, "moed.conf:7: log_level = verbose: not one of error, warn, info, debug");
    CHECK_DIAG(&d, true, "moed.conf:8: metrics = maybe: not a boolean");
    CHECK_DIAG(&d, true, "moed.conf:9: host = \"\": empty value");
    CHECK_DIAG(&d, true, "moed.conf:10: host = [1.2.3.4]: not an IPv6 address in brackets");
    CHECK_DIAG(&d, true, "moed.conf:11: max_header_size = 1G: out of range (1K..1M)");
    /* The bad values left the defaults in place. */
    CHECK_EQ(c.port, 8080);
    CHECK_EQ(c.threads, 0);
    CHECK(!strcmp(c.host, "127.0.0.1"));
    conf_diag_free(&d);
    conf_free(&c);

    /* Long or odd values are quoted and cut in the middle in messages (the
     * end of a long path, its file name, stays visible). */
    char text[400] = "port = ";
    memset(text + 7, '9', 200);
    strcpy(text + 207, "\n");
    load_text(&c, &d, text);
    CHECK_DIAG(&d, true, "port = 999999999999999999999999...9999");
    CHECK_DIAG(&d, true, "9999: out of range (too large)");
    REQUIRE(d.n == 1);
    CHECK(strlen(d.msgs[0].text) < 120);
    conf_diag_free(&d);
    conf_free(&c);
    load_text(&c, &d, "port = \"80\\t80\"\n");
    CHECK_DIAG(&d, true, "port = \"80\\t80\": not an integer");
    conf_diag_free(&d);
    conf_free(&c);

    /* Hosts. */
    const char *good_hosts[] = {"0.0.0.0",        "::", "::1", "[::1]", "fe80::1", "localhost",
                                "a-b.example.com"};
    const char *bad_hosts[] = {"-a.com",   "a..b", "a b", "a_b", "1.2.3.4:80",
                               "http://x", "[::1", "[]",  "[x]"};
    for (size_t i = 0; i < sizeof good_hosts / sizeof *good_hosts; i++) {
        char t[80];
        snprintf(t, sizeof t, "host = %s\n", good_hosts[i]);
        CHECK_MSG(load_text(&c, &d, t) == 0, "host %s refused", good_hosts[i]);
        conf_diag_free(&d);
        conf_free(&c);
    }
    for (size_t i = 0; i < sizeof bad_hosts / sizeof *bad_hosts; i++) {
        char t[80];
        snprintf(t, sizeof t, "host = \"%s\"\n", bad_hosts[i]);
        CHECK_MSG(load_text(&c, &d, t) == MOED_EINVAL, "host %s accepted", bad_hosts[i]);
        conf_diag_free(&d);
        conf_free(&c);
    }
}

/* ---- the file ---- */

TEST(conf_file_syntax)
{
    struct moed_config c;
    struct conf_diag d;
    int rc = load_text(&c, &d,
                       "\xEF\xBB\xBF"
                       "; semicolon comment\r\n"
                       "  # indented comment\n"
                       "\n"
                       "[server]\n"
                       "port=9000   # inline comment\n"
                       "\thost = 0.0.0.0 ; also a comment\n"
                       "[model]\n"
                       "chat_template = \"chat#ml ; x\"  # quoted keeps # and ;\n"
                       "model_name = 'say \"hi\" \\n'\n"
                       "[logging]\n"
                       "log_level = DEBUG\r\n"
                       "[engine]\n"
                       "expert_cache_budget = 12G\n"
                       "threads = 0\n"
                       "cache_policy = lru\n"
                       "[limits]\n"
                       "max_body_size = 8 M\n"
                       "header_timeout = 1m30s\n");
    if (rc)
        diag_dump(&d);
    CHECK_EQ(rc, 0);
    CHECK_EQ(d.errors, 0);
    CHECK_EQ(d.warnings, 0);
    CHECK_EQ(c.port, 9000);
    CHECK(!strcmp(c.host, "0.0.0.0"));
    CHECK(!strcmp(c.chat_template, "chat#ml ; x"));
    CHECK(!strcmp(c.model_name, "say \"hi\" \\n")); /* single quotes: literal */
    CHECK_EQ(c.log_level, CONF_LOG_DEBUG);
    CHECK(!c.expert_cache_budget.is_fraction);
    CHECK_EQ(c.expert_cache_budget.bytes, 12ull << 30);
    CHECK_EQ(c.cache_policy, CONF_CACHE_LRU);
    CHECK_EQ(c.max_body_size, 8u << 20);
    CHECK_EQ(c.header_timeout, 90000);
    CHECK_EQ(c.origin[CONF_OPT_port].src, CONF_SRC_FILE);
    CHECK_EQ(c.origin[CONF_OPT_port].line, 5);
    CHECK_EQ(c.origin[CONF_OPT_header_timeout].line, 18);
    CHECK(c.file && !strcmp(c.file, "moed.conf"));
    char where[64];
    conf_format_origin(&c, CONF_OPT_port, where, sizeof where);
    CHECK(!strcmp(where, "moed.conf:5"));
    conf_diag_free(&d);
    conf_free(&c);

    /* Escapes in double quotes; a bare value keeps inner blanks and a # not
     * preceded by a blank. */
    rc = load_text(&c, &d,
                   "model_name = \"a\\\"b\\\\c\\x41\"\n"
                   "chat_template = my tpl#1\n");
    CHECK_EQ(rc, 0);
    CHECK(!strcmp(c.model_name, "a\"b\\cA"));
    CHECK(!strcmp(c.chat_template, "my tpl#1"));
    conf_diag_free(&d);
    conf_free(&c);

    /* Empty values: fine for strings, an error for numbers. */
    rc = load_text(&c, &d, "model =\nport =\n");
    CHECK_EQ(rc, MOED_EINVAL);
    CHECK(!strcmp(c.model, ""));
    CHECK_DIAG(&d, true, "moed.conf:2: port = \"\": empty value");
    conf_diag_free(&d);
    conf_free(&c);

    /* Malformed lines. */
    rc = load_text(&c, &d,
                   "port 8080\n"
                   "= 5\n"
                   "model_name = \"open\n"
                   "model_name = \"a\" b\n"
                   "model_name = \"\\q\"\n"
                   "[server\n"
                   "[servr]\n"
                   "model_name = x\x01y\n"
                   "port = 1\n");
    CHECK(rc != 0);
    CHECK_DIAG(&d, true, "moed.conf:1: expected `key = value`, found \"port 8080\"");
    CHECK_DIAG(&d, true, "moed.conf:2: missing key");
    CHECK_DIAG(&d, true, "moed.conf:3: model_name: missing closing \"");
    CHECK_DIAG(&d, true, "moed.conf:4: model_name: text after the closing quote");
    CHECK_DIAG(&d, true, "moed.conf:5: model_name: unknown escape");
    CHECK_DIAG(&d, true, "moed.conf:6: malformed section line");
    CHECK_DIAG(&d, false, "moed.conf:7: unknown section [servr]");
    CHECK_DIAG(&d, true, "moed.conf:8: control character");
    CHECK_EQ(d.errors, 7);
    CHECK_EQ(c.port, 1); /* later lines still read */
    conf_diag_free(&d);
    conf_free(&c);

    /* A NUL byte (binary file). */
    REQUIRE(conf_init_defaults(&c) == 0);
    memset(&d, 0, sizeof d);
    CHECK_EQ(conf_load_text(&c, "bin.conf", "port = 1\0\n", 10, &d), MOED_EFORMAT);
    CHECK_DIAG(&d, true, "bin.conf:1: control character (byte 0x00)");
    conf_diag_free(&d);
    conf_free(&c);
}

TEST(conf_file_unknown_and_duplicates)
{
    struct moed_config c;
    struct conf_diag d;
    int rc = load_text(&c, &d,
                       "prot = 1\n"
                       "max_body = 1M\n"
                       "Max-Body-Size = 1M\n"
                       "completely_unrelated = 3\n"
                       "port = 1000\n"
                       "[model]\n"
                       "port = 2000\n");
    CHECK_EQ(rc, MOED_ENOTFOUND);
    CHECK_DIAG(&d, true, "moed.conf:1: unknown key 'prot'; did you mean 'port'?");
    CHECK_DIAG(&d, true, "moed.conf:3: unknown key 'Max-Body-Size'; did you mean 'max_body_size'?");
    CHECK_DIAG(&d, true, "moed.conf:4: unknown key 'completely_unrelated' (`moed config --help`");
    CHECK_DIAG(&d, false, "moed.conf:7: port set again (first on line 5); the last value wins");
    CHECK_DIAG(&d, false, "moed.conf:7: port belongs in [server], found in [model]");
    CHECK_EQ(c.port, 2000);
    conf_diag_free(&d);
    conf_free(&c);
    CHECK_EQ(conf_edit_distance("port", "prot"), 1);
}

TEST(conf_file_paths)
{
    struct moed_config c;
    struct conf_diag d = {0};
    REQUIRE(conf_init_defaults(&c) == 0);
    const char *t = "model = models/tiny.gguf\nlog_file = /var/log/moed/moed.log\n";
    CHECK_EQ(conf_load_text(&c, "/etc/moed/moed.conf", t, strlen(t), &d), 0);
    CHECK(!strcmp(c.model, "/etc/moed/models/tiny.gguf"));
    CHECK(!strcmp(c.log_file, "/var/log/moed/moed.log"));
    CHECK_EQ(conf_load_text(&c, "moed.conf", t, strlen(t), &d), 0);
    CHECK(!strcmp(c.model, "models/tiny.gguf"));
    conf_free(&c);
    conf_diag_free(&d);

    /* Missing file. */
    REQUIRE(conf_init_defaults(&c) == 0);
    CHECK_EQ(conf_load_file(&c, "/nonexistent/moed.conf", &d), MOED_EIO);
    CHECK_DIAG(&d, true, "/nonexistent/moed.conf: cannot open config file");
    conf_free(&c);
    conf_diag_free(&d);
}

/* ---- environment and command line ---- */

TEST(conf_env_values)
{
    struct env_save s1, s2, s3, s4;
    env_set(&s1, "MOED_PORT", "9001");
    env_set(&s2, "MOED_LOG_LEVEL", ""); /* empty: as if unset */
    env_set(&s3, "MOED_PROT", "1");     /* typo: a warning */
    env_set(&s4, "MOED_ISA", "avx2");   /* another part's: silent */
    struct moed_config c;
    struct conf_diag d = {0};
    REQUIRE(conf_init_defaults(&c) == 0);
    CHECK_EQ(conf_load_env(&c, &d), 0);
    CHECK_EQ(c.port, 9001);
    CHECK_EQ(c.origin[CONF_OPT_port].src, CONF_SRC_ENV);
    CHECK_EQ(c.log_level, CONF_LOG_INFO);
    CHECK_DIAG(&d, false, "env MOED_PROT: not a moed option (ignored); did you mean MOED_PORT?");
    CHECK(!diag_has(&d, false, "MOED_ISA"));
    CHECK_EQ(d.errors, 0);
    conf_diag_free(&d);

    setenv("MOED_PORT", "80x", 1);
    CHECK_EQ(conf_load_env(&c, &d), MOED_EINVAL);
    CHECK_DIAG(&d, true, "env MOED_PORT: port = 80x: not an integer");
    CHECK_EQ(c.port, 9001);
    conf_diag_free(&d);
    setenv("MOED_PORT", " 8082 ", 1); /* blanks around a number are fine */
    CHECK_EQ(conf_load_env(&c, &d), 0);
    CHECK_EQ(c.port, 8082);
    conf_diag_free(&d);
    conf_free(&c);
    env_restore(&s4);
    env_restore(&s3);
    env_restore(&s2);
    env_restore(&s1);
}

TEST(conf_args_values)
{
    struct moed_config c;
    struct conf_diag d = {0};
    REQUIRE(conf_init_defaults(&c) == 0);
    char *argv[] = {"serve",
                    "--port=1234",
                    "-m",
                    "a.gguf",
                    "--host",
                    "::1",
                    "--no-metrics",
                    "-t8",
                    "pos1",
                    "--gpu-device",
                    "-1",
                    "--config",
                    "skipped.conf",
                    "-c",
                    "x.conf",
                    "--log-level=debug",
                    "--",
                    "--port",
                    NULL};
    int argc = (int)(sizeof argv / sizeof *argv) - 1;
    char *rest[20];
    int n_rest = -1;
    int rc = conf_load_args(&c, argc, argv, rest, &n_rest, &d);
    if (rc)
        diag_dump(&d);
    CHECK_EQ(rc, 0);
    CHECK_EQ(c.port, 1234);
    CHECK(!strcmp(c.model, "a.gguf"));
    CHECK(!strcmp(c.host, "::1"));
    CHECK(!c.metrics);
    CHECK_EQ(c.threads, 8);
    CHECK_EQ(c.gpu_device, -1);
    CHECK_EQ(c.log_level, CONF_LOG_DEBUG);
    REQUIRE(n_rest == 2);
    CHECK(!strcmp(rest[0], "pos1"));
    CHECK(!strcmp(rest[1], "--port"));
    CHECK_EQ(c.origin[CONF_OPT_model].src, CONF_SRC_CLI);
    CHECK(c.origin[CONF_OPT_model].short_flag);
    char where[64];
    conf_format_origin(&c, CONF_OPT_model, where, sizeof where);
    CHECK(!strcmp(where, "command line -m"));
    conf_format_origin(&c, CONF_OPT_port, where, sizeof where);
    CHECK(!strcmp(where, "command line --port"));
    conf_diag_free(&d);

    char *argv2[] = {"serve", "--metrics", "--metrics=no", "--metrics=on", NULL};
    CHECK_EQ(conf_load_args(&c, 4, argv2, NULL, NULL, &d), 0);
    CHECK(c.metrics);

    char *bad[] = {"serve",          "--prot", "1",     "--ctx-size",      "-5",
                   "--no-metrics=1", "-x",     "extra", "--max-body-size", "1Q",
                   "--no-port",      "--port", NULL};
    int nbad = (int)(sizeof bad / sizeof *bad) - 1;
    rc = conf_load_args(&c, nbad, bad, NULL, NULL, &d);
    CHECK(rc != 0);
    CHECK_DIAG(&d, true, "command line: unknown flag --prot; did you mean --port?");
    CHECK_DIAG(&d, true, "command line --ctx-size: ctx_size = -5: out of range (0..1048576)");
    CHECK_DIAG(&d, true, "command line --no-metrics: takes no value");
    CHECK_DIAG(&d, true, "command line: unknown flag -x");
    CHECK_DIAG(&d, true, "command line: unexpected argument '1'");
    CHECK_DIAG(&d, true, "command line: unexpected argument 'extra'");
    CHECK_DIAG(&d, true, "command line --max-body-size: max_body_size = 1Q: not a size");
    CHECK_DIAG(&d, true, "command line: unknown flag --no-port");
    CHECK_DIAG(&d, true, "command line --port: needs a value");
    conf_diag_free(&d);
    conf_free(&c);
}

TEST(conf_precedence)
{
    const char *path = write_tmp("prec.conf", "port = 1111\n"
                                              "threads = 3\n"
                                              "max_seqs = 5\n"
                                              "log_level = warn\n");
    REQUIRE(path);
    char pathbuf[512];
    snprintf(pathbuf, sizeof pathbuf, "%s", path);
    struct env_save s1, s2;
    env_set(&s1, "MOED_PORT", "2222");
    env_set(&s2, "MOED_THREADS", "4");
    char *argv[] = {"serve", "--port", "3333", "-c", pathbuf, NULL};
    struct moed_config c;
    struct conf_diag d = {0};
    int rc = conf_load(&c, 5, argv, NULL, NULL, &d);
    if (rc)
        diag_dump(&d);
    CHECK_EQ(rc, 0);
    CHECK_EQ(c.port, 3333);     /* file < env < CLI */
    CHECK_EQ(c.threads, 4);     /* file < env */
    CHECK_EQ(c.max_seqs, 5);    /* file */
    CHECK_EQ(c.ctx_size, 4096); /* default */
    CHECK_EQ(c.log_level, CONF_LOG_WARN);
    CHECK_EQ(c.origin[CONF_OPT_port].src, CONF_SRC_CLI);
    CHECK_EQ(c.origin[CONF_OPT_threads].src, CONF_SRC_ENV);
    CHECK_EQ(c.origin[CONF_OPT_max_seqs].src, CONF_SRC_FILE);
    CHECK_EQ(c.origin[CONF_OPT_ctx_size].src, CONF_SRC_DEFAULT);
    CHECK(c.file && !strcmp(c.file, pathbuf));

    /* The effective listing names each source. */
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    REQUIRE(f);
    conf_print_effective(f, &c);
    fclose(f);
    char want[600];
    CHECK(strstr(text, "port = 3333 (command line --port)\n"));
    CHECK(strstr(text, "threads = 4 (env MOED_THREADS)\n"));
    snprintf(want, sizeof want, "max_seqs = 5 (%s:3)\n", pathbuf);
    CHECK_MSG(strstr(text, want), "no '%s' in:\n%s", want, text);
    CHECK(strstr(text, "ctx_size = 4096 (default)\n"));
    CHECK(strstr(text, "model = \"\" (default)\n"));
    CHECK(strstr(text, "max_body_size = 4M (default)\n"));
    free(text);
    conf_free(&c);
    conf_diag_free(&d);

    /* Errors from every source are all reported, each with its source. */
    write_tmp("prec.conf", "port = 0\n");
    setenv("MOED_THREADS", "-2", 1);
    char *argv2[] = {"serve", "-c", pathbuf, "--max-seqs", "0", NULL};
    rc = conf_load(&c, 5, argv2, NULL, NULL, &d);
    CHECK(rc != 0);
    CHECK_EQ(d.errors, 3);
    snprintf(want, sizeof want, "%s:1: port = 0: out of range (1..65535)", pathbuf);
    CHECK_DIAG(&d, true, want);
    CHECK_DIAG(&d, true, "env MOED_THREADS: threads = -2: out of range (0..4096)");
    CHECK_DIAG(&d, true, "command line --max-seqs: max_seqs = 0: out of range (1..1024)");
    conf_free(&c);
    conf_diag_free(&d);

    /* A missing -c file is an error, not a silent default. */
    char *argv3[] = {"serve", "--config=/nonexistent/x.conf", NULL};
    CHECK_EQ(conf_load(&c, 2, argv3, NULL, NULL, &d), MOED_EIO);
    conf_free(&c);
    conf_diag_free(&d);
    env_restore(&s2);
    env_restore(&s1);
}

TEST(conf_validate_and_files)
{
    struct moed_config c;
    struct conf_diag d;
    load_text(&c, &d, "ctx_size = 1024\ndefault_max_tokens = 1024\n");
    CHECK_EQ(conf_validate(&c, &d), MOED_ERANGE);
    CHECK_DIAG(&d, true,
               "moed.conf:2: default_max_tokens = 1024: must be below ctx_size = 1024 "
               "(moed.conf:1)");
    conf_diag_free(&d);
    conf_free(&c);
    load_text(&c, &d, "ctx_size = 0\ndefault_max_tokens = 100000\n");
    CHECK_EQ(conf_validate(&c, &d), 0);

    /* Serving needs the model. */
    CHECK_EQ(conf_check_files(&c, &d), MOED_EINVAL);
    CHECK_DIAG(&d, true,
               "model: not set; it is required (give model = FILE in the config file, "
               "MOED_MODEL or --model or -m)");
    conf_diag_free(&d);
    conf_free(&c);

    load_text(&c, &d,
              "model = /nonexistent/m.gguf\napi_key_file = /nonexistent/key\n"
              "log_file = /nonexistent/dir/moed.log\n");
    CHECK_EQ(conf_check_files(&c, &d), MOED_EIO);
    CHECK_DIAG(&d, true, "moed.conf:1: model = /nonexistent/m.gguf: cannot read: No such file");
    CHECK_DIAG(&d, true, "moed.conf:2: api_key_file = /nonexistent/key: cannot read");
    CHECK_DIAG(&d, true,
               "moed.conf:3: log_file = /nonexistent/dir/moed.log: cannot create it in "
               "/nonexistent/dir");
    conf_diag_free(&d);
    conf_free(&c);

    char model[512], text[1200];
    snprintf(model, sizeof model, "%s", write_tmp("m.gguf", "GGUF"));
    snprintf(text, sizeof text, "model = %s\nlog_file = %s/moed-test.log\n", model, test_tmp_dir());
    load_text(&c, &d, text);
    CHECK_EQ(conf_check_files(&c, &d), 0);
    conf_diag_free(&d);
    conf_free(&c);
    snprintf(text, sizeof text, "model = %s\n", test_tmp_dir());
    load_text(&c, &d, text);
    CHECK_EQ(conf_check_files(&c, &d), MOED_EIO);
    CHECK_DIAG(&d, true, "is a folder");
    conf_diag_free(&d);
    conf_free(&c);
    unlink(model);
}

/* cost_model: empty is fine (the built-in figures); a file must be readable
 * and load as a cost model, an error naming its line otherwise. */
TEST(conf_cost_model_file)
{
    struct moed_config c;
    struct conf_diag d;
    char model[512], good[512], bad[512], text[2000];
    snprintf(model, sizeof model, "%s", write_tmp("cm.gguf", "GGUF"));
    snprintf(good, sizeof good, "%s",
             write_tmp("good.cost", "# moed cost model\ncalibrated = 1\nload_us = 5\n"
                                    "type.q4_k.bytes = 2654208\ntype.q4_k.cpu_us = 3\n"
                                    "type.q4_k.cpu_us_tok = 30\ntype.q4_k.gpu_us = 4\n"
                                    "type.q4_k.gpu_us_tok = 0.5\n"));
    snprintf(bad, sizeof bad, "%s", write_tmp("bad.cost", "load_us = 5\nh2d_gbs = fast\n"));

    load_text(&c, &d, "");
    CHECK(!strcmp(c.cost_model, ""));
    conf_diag_free(&d);
    conf_free(&c);

    snprintf(text, sizeof text, "model = %s\ncost_model = %s\n", model, good);
    load_text(&c, &d, text);
    CHECK_EQ(conf_check_files(&c, &d), 0);
    CHECK_EQ(d.errors, 0);
    conf_diag_free(&d);
    conf_free(&c);

    snprintf(text, sizeof text, "model = %s\ncost_model = %s\n", model, bad);
    load_text(&c, &d, text);
    CHECK(conf_check_files(&c, &d) != 0);
    char want[700];
    snprintf(want, sizeof want, "moed.conf:2: cost_model = %s: not a cost model", bad);
    CHECK_DIAG(&d, true, want);
    snprintf(want, sizeof want, "%s:2:", bad);
    CHECK_DIAG(&d, true, want);
    CHECK_DIAG(&d, true, "h2d_gbs");
    conf_diag_free(&d);
    conf_free(&c);

    snprintf(text, sizeof text, "model = %s\ncost_model = /nonexistent/cost.txt\n", model);
    load_text(&c, &d, text);
    CHECK_EQ(conf_check_files(&c, &d), MOED_EIO);
    CHECK_DIAG(&d, true, "moed.conf:2: cost_model = /nonexistent/cost.txt: cannot read");
    conf_diag_free(&d);
    conf_free(&c);

    /* not reloadable */
    CHECK(!(conf_options[CONF_OPT_cost_model].flags & CONF_F_RELOAD));
    unlink(model);
    unlink(good);
    unlink(bad);
}

/* ---- reload ---- */

TEST(conf_reload_classification)
{
    struct moed_config old, nw;
    struct conf_diag d;
    REQUIRE(load_text(&old, &d, "port = 8080\nlog_level = info\nmodel = a.gguf\n") == 0);
    conf_diag_free(&d);

    /* Only reloadable options changed: everything applies. */
    REQUIRE(load_text(&nw, &d,
                      "port = 8080\nlog_level = debug\nmodel = a.gguf\n"
                      "max_body_size = 1M\n") == 0);
    struct conf_change ch[CONF_N_OPTIONS];
    size_t n = 99;
    CHECK_EQ(conf_reload(&old, &nw, ch, &n, &d), 0);
    CHECK_EQ(n, 2);
    CHECK_EQ(ch[0].opt, CONF_OPT_max_body_size);
    CHECK(ch[0].applied);
    CHECK_EQ(ch[1].opt, CONF_OPT_log_level);
    CHECK(ch[1].applied);
    CHECK_EQ(d.warnings, 0);
    conf_diag_free(&d);
    conf_free(&nw);

    /* A restart-only option changed too: refused, named, reverted. */
    REQUIRE(load_text(&nw, &d, "port = 9090\nlog_level = debug\nmodel = b.gguf\n") == 0);
    CHECK_EQ(conf_reload(&old, &nw, ch, &n, &d), MOED_EUNSUPPORTED);
    CHECK_EQ(n, 3);
    CHECK_EQ(ch[0].opt, CONF_OPT_port);
    CHECK(!ch[0].applied);
    CHECK_EQ(ch[1].opt, CONF_OPT_model);
    CHECK(!ch[1].applied);
    CHECK_EQ(ch[2].opt, CONF_OPT_log_level);
    CHECK(ch[2].applied);
    CHECK_DIAG(&d, false,
               "moed.conf:1: port = 9090: not reloadable; keeping 8080 until moed is "
               "restarted");
    CHECK_DIAG(&d, false, "moed.conf:3: model = b.gguf: not reloadable; keeping a.gguf");
    CHECK_EQ(nw.port, 8080);
    CHECK(!strcmp(nw.model, "a.gguf"));
    CHECK_EQ(nw.log_level, CONF_LOG_DEBUG);
    /* After the revert, a second comparison finds only applied changes. */
    conf_diag_free(&d);
    CHECK_EQ(conf_reload(&old, &nw, NULL, &n, &d), 0);
    CHECK_EQ(n, 1);
    conf_diag_free(&d);
    conf_free(&nw);

    /* copy is deep and equal. */
    REQUIRE(conf_copy(&nw, &old) == 0);
    for (int i = 0; i < CONF_N_OPTIONS; i++)
        CHECK(conf_value_equal(&old, &nw, i));
    CHECK(nw.model != old.model && nw.file != old.file);
    conf_free(&nw);
    conf_free(&old);
}

/* ---- generated text ---- */

TEST(conf_example_file_matches_table)
{
    char *gen = NULL;
    size_t glen = 0;
    FILE *f = open_memstream(&gen, &glen);
    REQUIRE(f);
    conf_write_example(f);
    fclose(f);
    size_t flen = 0;
    char *file = test_read_file("moed.conf.example", &flen);
    CHECK_MSG(file, "moed.conf.example not found (run from the repository root)");
    if (file && (flen != glen || memcmp(file, gen, glen))) {
        size_t k = 0;
        while (k < flen && k < glen && file[k] == gen[k])
            k++;
        size_t line = 1;
        for (size_t j = 0; j < k; j++)
            line += gen[j] == '\n';
        test_fail(__FILE__, __LINE__,
                  "moed.conf.example differs from the table from line %zu; "
                  "regenerate: bin/moed config --example > moed.conf.example",
                  line);
    }
    free(file);

    /* The example reads back cleanly, to the defaults, and names every key. */
    struct moed_config c, def;
    struct conf_diag d;
    REQUIRE(load_text(&c, &d, gen) == 0);
    CHECK_EQ(d.errors + d.warnings, 0);
    REQUIRE(conf_init_defaults(&def) == 0);
    for (int i = 0; i < CONF_N_OPTIONS; i++) {
        char want[128];
        snprintf(want, sizeof want, "\n#%s = ", conf_options[i].name);
        CHECK_MSG(strstr(gen, want), "example lacks %s", conf_options[i].name);
        CHECK_MSG(strstr(gen, conf_options[i].env), "example lacks %s", conf_options[i].env);
        CHECK(conf_value_equal(&c, &def, i));
    }
    /* Uncommenting every line gives a valid file equal to the defaults. */
    for (char *p = gen; (p = strstr(p, "\n#")); p++) {
        char *q = p + 2;
        while (*q && *q != '\n' && *q != ' ')
            q++;
        if (!strncmp(q, " = ", 3))
            p[1] = ' ';
    }
    conf_diag_free(&d);
    conf_free(&c);
    REQUIRE(load_text(&c, &d, gen) == 0);
    CHECK_EQ(d.errors + d.warnings, 0);
    for (int i = 0; i < CONF_N_OPTIONS; i++) {
        CHECK_MSG(c.origin[i].src == CONF_SRC_FILE, "uncommented example does not set %s",
                  conf_options[i].name);
        CHECK(conf_value_equal(&c, &def, i));
    }
    /* No line longer than 80 columns. */
    for (char *p = gen, *nl; *p; p = nl + 1) {
        nl = strchr(p, '\n');
        if (!nl)
            break;
        CHECK_MSG(nl - p <= 80, "long example line: %.*s", (int)(nl - p), p);
    }
    conf_diag_free(&d);
    conf_free(&c);
    conf_free(&def);
    free(gen);
}

TEST(conf_help_lists_every_option)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    REQUIRE(f);
    conf_print_help(f);
    fclose(f);
    for (int i = 0; i < CONF_N_OPTIONS; i++) {
        const struct conf_option *r = &conf_options[i];
        CHECK_MSG(strstr(text, r->flag), "help lacks %s", r->flag);
        CHECK_MSG(strstr(text, r->env), "help lacks %s", r->env);
    }
    CHECK(strstr(text, "-m, --model FILE"));
    CHECK(strstr(text, "--metrics, --no-metrics"));
    CHECK(strstr(text, "--cache-policy lru|lfu|score"));
    CHECK(strstr(text, "key port, env MOED_PORT; default 8080; 1..65535; restart to change"));
    for (char *p = text, *nl; *p; p = nl + 1) {
        nl = strchr(p, '\n');
        if (!nl)
            break;
        CHECK_MSG(nl - p <= 80, "long help line: %.*s", (int)(nl - p), p);
    }
    free(text);
}
