/*
 * Value parsers and formatters for the option types (syntax in conf.h).
 * Each parser takes the whole text: anything left over is an error, and so
 * is overflow, rather than a silently clamped or truncated value.  Each
 * formatter writes text its parser reads back to the same value.
 */
#include "conf/conf_internal.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static int fail(const char **why, const char *msg, int code)
{
    if (why)
        *why = msg;
    return code;
}

int conf_parse_bool(const char *s, bool *out, const char **why)
{
    static const char *const yes[] = {"true", "yes", "on", "1"};
    static const char *const no[] = {"false", "no", "off", "0"};
    for (int i = 0; i < 4; i++) {
        if (!strcasecmp(s, yes[i])) {
            *out = true;
            return 0;
        }
        if (!strcasecmp(s, no[i])) {
            *out = false;
            return 0;
        }
    }
    return fail(why, *s ? "not a boolean (true/false, yes/no, on/off, 1/0)" : "empty value",
                MOED_EINVAL);
}

int conf_parse_int(const char *s, int64_t *out, const char **why)
{
    if (!*s)
        return fail(why, "empty value", MOED_EINVAL);
    const char *p = s + (*s == '+' || *s == '-');
    if (!*p)
        return fail(why, "not an integer", MOED_EINVAL);
    for (const char *q = p; *q; q++)
        if (!isdigit((unsigned char)*q))
            return fail(why, "not an integer", MOED_EINVAL);
    errno = 0;
    long long v = strtoll(s, NULL, 10);
    if (errno == ERANGE)
        return fail(why, "out of range (too large)", MOED_ERANGE);
    *out = v;
    return 0;
}

/* Decimal number "123" or "1.25" at *pp: integer part (no overflow past
 * UINT64_MAX) and fraction (as a long double in [0,1)); advances *pp.
 * Returns false when there are no digits before the point. */
static bool scan_number(const char **pp, uint64_t *ip, long double *frac, bool *has_point,
                        bool *overflow)
{
    const char *p = *pp;
    uint64_t v = 0;
    *overflow = false;
    if (!isdigit((unsigned char)*p))
        return false;
    for (; isdigit((unsigned char)*p); p++) {
        unsigned dgt = (unsigned)(*p - '0');
        if (v > (UINT64_MAX - dgt) / 10)
            *overflow = true;
        else
            v = v * 10 + dgt;
    }
    long double f = 0, scale = 0.1L;
    *has_point = false;
    if (*p == '.' && isdigit((unsigned char)p[1])) {
        *has_point = true;
        for (p++; isdigit((unsigned char)*p); p++, scale /= 10)
            f += (long double)(*p - '0') * scale;
    }
    *pp = p;
    *ip = v;
    *frac = f;
    return true;
}

/* K, KB, KiB ... any case; "" and "B" are bytes.  0 when unknown. */
static uint64_t size_multiplier(const char *u)
{
    static const char letters[] = "kmgt";
    if (!*u || !strcasecmp(u, "b"))
        return 1;
    const char *l = strchr(letters, tolower((unsigned char)u[0]));
    if (!l || !u[0])
        return 0;
    const char *r = u + 1;
    if (*r && strcasecmp(r, "b") && strcasecmp(r, "ib"))
        return 0;
    return (uint64_t)1 << (10 * (l - letters + 1));
}

int conf_parse_size(const char *s, uint64_t *out, const char **why)
{
    if (!*s)
        return fail(why, "empty value", MOED_EINVAL);
    const char *p = s;
    if (*p == '-')
        return fail(why, "negative size", MOED_ERANGE);
    if (*p == '+')
        p++;
    uint64_t ip;
    long double frac;
    bool point, overflow;
    static const char *const syntax =
        "not a size (a number of bytes with an optional K, M, G or T suffix, e.g. 4M)";
    if (!scan_number(&p, &ip, &frac, &point, &overflow))
        return fail(why, syntax, MOED_EINVAL);
    while (*p == ' ' || *p == '\t')
        p++;
    uint64_t mult = size_multiplier(p);
    if (!mult)
        return fail(why, syntax, MOED_EINVAL);
    if (point && mult == 1)
        return fail(why, "a byte count must be whole (or give a suffix: 1.5G)", MOED_EINVAL);
    if (overflow || ip > UINT64_MAX / mult)
        return fail(why, "out of range (too large)", MOED_ERANGE);
    uint64_t v = ip * mult;
    uint64_t extra = (uint64_t)(frac * (long double)mult);
    if (v > UINT64_MAX - extra)
        return fail(why, "out of range (too large)", MOED_ERANGE);
    *out = v + extra;
    return 0;
}

int conf_parse_float(const char *s, double *out, const char **why)
{
    static const char *const syntax = "not a number (e.g. 0.5, 1e-3)";
    if (!*s)
        return fail(why, "empty value", MOED_EINVAL);
    /* [+-]digits[.digits][(e|E)[+-]digits]: no inf, nan, hex or ".5". */
    const char *p = s + (*s == '+' || *s == '-');
    if (!isdigit((unsigned char)*p))
        return fail(why, syntax, MOED_EINVAL);
    while (isdigit((unsigned char)*p))
        p++;
    if (*p == '.') {
        p++;
        while (isdigit((unsigned char)*p))
            p++;
    }
    if (*p == 'e' || *p == 'E') {
        p++;
        p += (*p == '+' || *p == '-');
        if (!isdigit((unsigned char)*p))
            return fail(why, syntax, MOED_EINVAL);
        while (isdigit((unsigned char)*p))
            p++;
    }
    if (*p)
        return fail(why, syntax, MOED_EINVAL);
    errno = 0;
    double v = strtod(s, NULL);
    if (errno == ERANGE && fabs(v) == HUGE_VAL)
        return fail(why, "out of range (too large)", MOED_ERANGE);
    *out = v;
    return 0;
}

int conf_parse_duration(const char *s, int64_t *ms, const char **why)
{
    static const char *const syntax =
        "not a duration (e.g. 500ms, 10s, 5m, 1h, 1m30s; a bare number is seconds)";
    if (!*s)
        return fail(why, "empty value", MOED_EINVAL);
    const char *p = s;
    if (*p == '-')
        return fail(why, "negative duration", MOED_ERANGE);
    if (*p == '+')
        p++;
    long double total = 0;
    int pieces = 0;
    bool bare = false;
    while (*p) {
        uint64_t ip;
        long double frac;
        bool point, overflow;
        if (!scan_number(&p, &ip, &frac, &point, &overflow))
            return fail(why, syntax, MOED_EINVAL);
        if (overflow)
            return fail(why, "out of range (too large)", MOED_ERANGE);
        while (*p == ' ' || *p == '\t')
            p++;
        long double unit;
        if (!strncasecmp(p, "ms", 2)) {
            unit = 1;
            p += 2;
        } else if (*p == 's' || *p == 'S') {
            unit = 1000;
            p++;
        } else if (*p == 'm' || *p == 'M') {
            unit = 60000;
            p++;
        } else if (*p == 'h' || *p == 'H') {
            unit = 3600000;
            p++;
        } else if (!*p) {
            unit = 1000; /* a bare number: seconds */
            bare = true;
        } else {
            return fail(why, syntax, MOED_EINVAL);
        }
        pieces++;
        if (bare && pieces > 1)
            return fail(why, "every part after the first needs a unit (1m30s)", MOED_EINVAL);
        total += ((long double)ip + frac) * unit;
        while (*p == ' ' || *p == '\t')
            p++;
    }
    if (total >= 9.2e18L)
        return fail(why, "out of range (too large)", MOED_ERANGE);
    int64_t v = (int64_t)total;
    if (v == 0 && total > 0)
        return fail(why, "shorter than a millisecond (the finest unit)", MOED_ERANGE);
    *ms = v;
    return 0;
}

int conf_parse_budget(const char *s, struct conf_budget *out, const char **why)
{
    static const char *const syntax =
        "not a budget (a fraction such as 0.8, a percentage such as 80%, or a size such as 12G)";
    if (!*s)
        return fail(why, "empty value", MOED_EINVAL);
    if (*s == '-')
        return fail(why, "negative budget", MOED_ERANGE);
    size_t n = strlen(s);
    const char *last = s + n - 1;
    if (*last == '%') {
        char num[64];
        size_t k = n - 1;
        while (k > 0 && (s[k - 1] == ' ' || s[k - 1] == '\t'))
            k--;
        if (k == 0 || k >= sizeof num)
            return fail(why, syntax, MOED_EINVAL);
        memcpy(num, s, k);
        num[k] = 0;
        double pct;
        if (conf_parse_float(num, &pct, NULL))
            return fail(why, syntax, MOED_EINVAL);
        if (pct < 0 || pct > 100)
            return fail(why, "percentage out of range", MOED_ERANGE);
        *out = (struct conf_budget){true, pct / 100, 0};
        return 0;
    }
    if (isalpha((unsigned char)*last)) {
        uint64_t bytes;
        int rc = conf_parse_size(s, &bytes, why);
        if (rc)
            return rc;
        *out = bytes ? (struct conf_budget){false, 0, bytes} : (struct conf_budget){true, 0, 0};
        return 0;
    }
    double f;
    if (conf_parse_float(s, &f, NULL))
        return fail(why, syntax, MOED_EINVAL);
    if (f < 0 || f > 1)
        return fail(why,
                    "a bare number is a fraction and must be in 0..1; for bytes give a suffix "
                    "(12G, or 1000B for exact bytes)",
                    MOED_ERANGE);
    *out = (struct conf_budget){true, f, 0};
    return 0;
}

/* ---- formatting ---- */

void conf_format_size(uint64_t bytes, char *buf, size_t n)
{
    static const char units[] = "KMGT";
    int u = -1;
    uint64_t v = bytes;
    while (v && v % 1024 == 0 && u < 3) {
        v /= 1024;
        u++;
    }
    if (u < 0)
        snprintf(buf, n, "%llu", (unsigned long long)bytes);
    else
        snprintf(buf, n, "%llu%c", (unsigned long long)v, units[u]);
}

void conf_format_duration(int64_t ms, char *buf, size_t n)
{
    if (ms <= 0) {
        snprintf(buf, n, "%lld", (long long)ms);
        return;
    }
    static const struct {
        int64_t ms;
        const char *unit;
    } units[] = {{3600000, "h"}, {60000, "m"}, {1000, "s"}, {1, "ms"}};
    size_t k = 0;
    buf[0] = 0;
    for (int i = 0; i < 4 && ms; i++) {
        if (ms < units[i].ms)
            continue;
        int64_t q = ms / units[i].ms;
        ms -= q * units[i].ms;
        if (k < n)
            k += (size_t)snprintf(buf + k, n - k, "%lld%s", (long long)q, units[i].unit);
    }
}

void conf_format_double(double x, char *buf, size_t n)
{
    /* The shortest of %.15g .. %.17g that reads back exactly. */
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(buf, n, "%.*g", prec, x);
        if (strtod(buf, NULL) == x)
            break;
    }
}

void conf_format_budget(const struct conf_budget *b, char *buf, size_t n)
{
    if (b->is_fraction) {
        conf_format_double(b->fraction, buf, n);
        return;
    }
    conf_format_size(b->bytes, buf, n);
    if (b->bytes % 1024) /* a bare number would read as a fraction */
        snprintf(buf + strlen(buf), n - strlen(buf), "B");
}

static bool needs_quotes(const char *s)
{
    if (!*s)
        return true;
    if (s[0] == ' ' || s[0] == '\t' || s[0] == '"' || s[0] == '\'')
        return true;
    size_t len = strlen(s);
    if (s[len - 1] == ' ' || s[len - 1] == '\t')
        return true;
    for (const char *p = s; *p; p++)
        if (*p == '#' || *p == ';' || (unsigned char)*p < 0x20 || *p == 0x7f)
            return true;
    return false;
}

void conf_quote_value(const char *s, char *buf, size_t n)
{
    if (!n)
        return;
    if (!needs_quotes(s)) {
        snprintf(buf, n, "%s", s);
        return;
    }
    size_t k = 0;
    buf[k++] = '"';
    for (const char *p = s; *p && k + 5 < n; p++) {
        unsigned char ch = (unsigned char)*p;
        if (ch == '"' || ch == '\\') {
            buf[k++] = '\\';
            buf[k++] = (char)ch;
        } else if (ch == '\n') {
            buf[k++] = '\\';
            buf[k++] = 'n';
        } else if (ch == '\t') {
            buf[k++] = '\\';
            buf[k++] = 't';
        } else if (ch == '\r') {
            buf[k++] = '\\';
            buf[k++] = 'r';
        } else if (ch < 0x20 || ch == 0x7f) {
            k += (size_t)snprintf(buf + k, n - k, "\\x%02x", ch);
        } else {
            buf[k++] = (char)ch;
        }
    }
    if (k + 1 < n)
        buf[k++] = '"';
    buf[k < n ? k : n - 1] = 0;
}

void conf_quote_for_message(const char *s, char *buf, size_t n)
{
    /* A long value is shown as its first 24 and last 32 bytes around "...":
     * the end of a path (the file name) is what the reader needs to see. */
    char cut[64];
    size_t len = strlen(s);
    if (len > 60) {
        size_t head = 24, tail = len - 32;
        while (head > 0 && ((unsigned char)s[head] & 0xC0) == 0x80) /* not inside a character */
            head--;
        while (tail < len && ((unsigned char)s[tail] & 0xC0) == 0x80)
            tail++;
        memcpy(cut, s, head);
        memcpy(cut + head, "...", 3);
        memcpy(cut + head + 3, s + tail, len - tail + 1);
        s = cut;
    }
    conf_quote_value(s, buf, n);
}
