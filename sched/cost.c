/*
 * sched/cost: the cost model's defaults, evaluation, validation and its
 * key = value file.  See cost.h for the model and its limits.
 */
#include "sched/cost.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void sched_cost_default(struct sched_cost *c)
{
    memset(c, 0, sizeof *c);
    /* Q4_K expert of the reference shape: 3 matrices 768x2048 at 4.5 bits. */
    struct sched_cost_type *t = &c->type[0];
    snprintf(t->name, sizeof t->name, "q4_k");
    t->bytes = 2654208;
    /* bench/README.md: 78 GB/s matvec (34 us for 1 token) and 750 GFLOP/s
     * at 8 tokens (9.4 MFLOP a token: 100 us for 8), so 24.6 + 9.4 n. */
    t->cpu_us = 24.6;
    t->cpu_us_tok = 9.4;
    /* Guesses until calibration: launch + 2.65 MB at ~2 TB/s, then
     * ~20 TFLOP/s effective for quantized small-batch matmul. */
    t->gpu_us = 6.0;
    t->gpu_us_tok = 0.5;
    /* ESTIMATE, not a measurement: the tile-64 (prefill) segment from the
     * all-GPU prefill benchmark (bench/README.md: pp512 7414 tok/s on the
     * H100, 69 ms for 48 layers, 1.44 ms a layer).  A layer's 512 x 8 pairs
     * over 128 experts are 32 tokens an expert; taking about 80% of the
     * layer for the experts leaves ~9 us an expert at 32 tokens: 3 + 0.2 n. */
    t->gpu_mma_us = 3.0;
    t->gpu_mma_us_tok = 0.2;
    c->ntypes = 1;
    /* DESIGN.md, "Speed": H2D 54 GB/s alone, 34 with the CPU streaming;
     * CPU 72 alone, 44 with copies running. 2.65 MB loads in ~54 us. */
    c->load_us = 5.0;
    c->h2d_gbs = 54.0;
    c->h2d_shared_gbs = 34.0;
    c->cpu_alone_gbs = 72.0;
    c->cpu_shared_gbs = 44.0;
    c->cpu_side_us = 10.0; /* guess: D2H + H2D of a few KB, pool wake, join */
    c->gpu_side_us = 4.0;  /* guess */
    c->calibrated = false;
}

void sched_cost_for_tile(const struct sched_cost *c, bool mma, struct sched_cost *out)
{
    if (out != c)
        *out = *c;
    if (!mma)
        return;
    for (int t = 0; t < out->ntypes && t < SCHED_COST_MAX_TYPES; t++) {
        struct sched_cost_type *ty = &out->type[t];
        if (ty->gpu_mma_us != 0 || ty->gpu_mma_us_tok != 0) {
            ty->gpu_us = ty->gpu_mma_us;
            ty->gpu_us_tok = ty->gpu_mma_us_tok;
        }
    }
}

double sched_cost_cpu_us(const struct sched_cost *c, int type, int n_tok)
{
    const struct sched_cost_type *t = &c->type[type];
    return t->cpu_us + t->cpu_us_tok * n_tok;
}

double sched_cost_gpu_us(const struct sched_cost *c, int type, int n_tok)
{
    const struct sched_cost_type *t = &c->type[type];
    return t->gpu_us + t->gpu_us_tok * n_tok;
}

double sched_cost_load_us(const struct sched_cost *c, uint64_t bytes)
{
    return c->load_us + (double)bytes / (c->h2d_gbs * 1e3);
}

double sched_cost_cpu_factor(const struct sched_cost *c)
{
    return c->cpu_alone_gbs / c->cpu_shared_gbs;
}

double sched_cost_h2d_factor(const struct sched_cost *c)
{
    return c->h2d_gbs / c->h2d_shared_gbs;
}

int sched_cost_find_type(const struct sched_cost *c, const char *name)
{
    for (int i = 0; i < c->ntypes; i++)
        if (strcmp(c->type[i].name, name) == 0)
            return i;
    return -1;
}

static bool name_ok(const char *s)
{
    if (!*s)
        return false;
    for (; *s; s++)
        if (!(islower((unsigned char)*s) || isdigit((unsigned char)*s) || *s == '_'))
            return false;
    return true;
}

/* One table for the scalar keys: save, load and validation come from it. */
struct key {
    const char *name;
    size_t off;
    bool positive; /* > 0, else >= 0 */
    bool optional; /* type keys: may be absent (0); saved only when the
                      type's optional keys are not all 0 */
};

#define K(f, p) {#f, offsetof(struct sched_cost, f), p, false}
static const struct key keys[] = {
    K(load_us, false),       K(h2d_gbs, true),     K(h2d_shared_gbs, true),
    K(cpu_alone_gbs, true),  K(cpu_shared_gbs, true), K(cpu_side_us, false),
    K(gpu_side_us, false),
};
#undef K

#define TK(f, o) {#f, offsetof(struct sched_cost_type, f), false, o}
static const struct key tkeys[] = {TK(cpu_us, false),    TK(cpu_us_tok, false),
                                   TK(gpu_us, false),    TK(gpu_us_tok, false),
                                   TK(gpu_mma_us, true), TK(gpu_mma_us_tok, true)};
#undef TK

#define NKEYS(a) (sizeof(a) / sizeof((a)[0]))

static int check(double v, const struct key *k, const char *pre, struct moed_err *err)
{
    if (!isfinite(v) || v < 0 || (k->positive && v <= 0))
        return moed_err_set(err, MOED_ERANGE, "cost model: %s%s = %g out of range (%s)", pre,
                            k->name, v, k->positive ? "> 0" : ">= 0");
    return 0;
}

int sched_cost_validate(const struct sched_cost *c, struct moed_err *err)
{
    for (size_t i = 0; i < NKEYS(keys); i++) {
        int rc = check(*(const double *)((const char *)c + keys[i].off), &keys[i], "", err);
        if (rc)
            return rc;
    }
    if (c->h2d_shared_gbs > c->h2d_gbs)
        return moed_err_set(err, MOED_ERANGE,
                            "cost model: h2d_shared_gbs = %g above h2d_gbs = %g",
                            c->h2d_shared_gbs, c->h2d_gbs);
    if (c->cpu_shared_gbs > c->cpu_alone_gbs)
        return moed_err_set(err, MOED_ERANGE,
                            "cost model: cpu_shared_gbs = %g above cpu_alone_gbs = %g",
                            c->cpu_shared_gbs, c->cpu_alone_gbs);
    if (c->ntypes < 1 || c->ntypes > SCHED_COST_MAX_TYPES)
        return moed_err_set(err, MOED_ERANGE, "cost model: %d expert types (1..%d)",
                            c->ntypes, SCHED_COST_MAX_TYPES);
    for (int t = 0; t < c->ntypes; t++) {
        const struct sched_cost_type *ty = &c->type[t];
        char pre[SCHED_COST_NAME + 8];
        snprintf(pre, sizeof pre, "type.%s.", ty->name);
        if (!name_ok(ty->name))
            return moed_err_set(err, MOED_EINVAL, "cost model: type name '%s' (want [a-z0-9_]+)",
                                ty->name);
        if (sched_cost_find_type(c, ty->name) != t)
            return moed_err_set(err, MOED_EINVAL, "cost model: type '%s' given twice", ty->name);
        if (ty->bytes == 0)
            return moed_err_set(err, MOED_ERANGE, "cost model: %sbytes = 0", pre);
        for (size_t i = 0; i < NKEYS(tkeys); i++) {
            int rc = check(*(const double *)((const char *)ty + tkeys[i].off), &tkeys[i], pre,
                           err);
            if (rc)
                return rc;
        }
    }
    return 0;
}

int sched_cost_save(const struct sched_cost *c, const char *path, struct moed_err *err)
{
    int rc = sched_cost_validate(c, err);
    if (rc)
        return rc;
    FILE *f = fopen(path, "w");
    if (!f)
        return moed_err_set(err, MOED_EIO, "%s: %s", path, strerror(errno));
    fprintf(f, "# moed cost model (sched/cost.h); times in us, bandwidths in GB/s\n");
    fprintf(f, "calibrated = %d\n", c->calibrated ? 1 : 0);
    for (size_t i = 0; i < NKEYS(keys); i++)
        fprintf(f, "%s = %.17g\n", keys[i].name, *(const double *)((const char *)c + keys[i].off));
    for (int t = 0; t < c->ntypes; t++) {
        const struct sched_cost_type *ty = &c->type[t];
        fprintf(f, "type.%s.bytes = %llu\n", ty->name, (unsigned long long)ty->bytes);
        bool opt = false; /* any optional key non-zero: write them all */
        for (size_t i = 0; i < NKEYS(tkeys); i++)
            if (tkeys[i].optional && *(const double *)((const char *)ty + tkeys[i].off) != 0)
                opt = true;
        for (size_t i = 0; i < NKEYS(tkeys); i++)
            if (!tkeys[i].optional || opt)
                fprintf(f, "type.%s.%s = %.17g\n", ty->name, tkeys[i].name,
                        *(const double *)((const char *)ty + tkeys[i].off));
    }
    if (fclose(f) != 0)
        return moed_err_set(err, MOED_EIO, "%s: write failed", path);
    return 0;
}

static char *trim(char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    char *e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1]))
        *--e = 0;
    return s;
}

static int parse_line(struct sched_cost *c, char *key, char *val, const char *where,
                      struct moed_err *err)
{
    char *end;
    errno = 0;
    if (strcmp(key, "calibrated") == 0) {
        if (strcmp(val, "0") && strcmp(val, "1"))
            return moed_err_set(err, MOED_EINVAL, "%s: calibrated = '%s' (want 0 or 1)", where,
                                val);
        c->calibrated = val[0] == '1';
        return 0;
    }
    if (strncmp(key, "type.", 5) != 0) {
        for (size_t i = 0; i < NKEYS(keys); i++) {
            if (strcmp(key, keys[i].name))
                continue;
            double v = strtod(val, &end);
            if (end == val || *end || errno)
                return moed_err_set(err, MOED_EINVAL, "%s: %s = '%s' is not a number", where,
                                    key, val);
            *(double *)((char *)c + keys[i].off) = v;
            return 0;
        }
        return moed_err_set(err, MOED_ENOTFOUND, "%s: unknown key '%s'", where, key);
    }
    char *tname = key + 5, *field = strchr(tname, '.');
    if (!field)
        return moed_err_set(err, MOED_EINVAL, "%s: key '%s' (want type.<name>.<field>)", where,
                            key);
    *field++ = 0;
    if (!name_ok(tname) || strlen(tname) >= SCHED_COST_NAME)
        return moed_err_set(err, MOED_EINVAL, "%s: type name '%s'", where, tname);
    int t = sched_cost_find_type(c, tname);
    if (t < 0) {
        if (c->ntypes == SCHED_COST_MAX_TYPES)
            return moed_err_set(err, MOED_ERANGE, "%s: type '%s': more than %d types", where,
                                tname, SCHED_COST_MAX_TYPES);
        t = c->ntypes++;
        memset(&c->type[t], 0, sizeof c->type[t]);
        snprintf(c->type[t].name, sizeof c->type[t].name, "%s", tname);
    }
    struct sched_cost_type *ty = &c->type[t];
    if (strcmp(field, "bytes") == 0) {
        if (val[0] == '-')
            return moed_err_set(err, MOED_EINVAL, "%s: type.%s.bytes = '%s'", where, tname, val);
        unsigned long long v = strtoull(val, &end, 10);
        if (end == val || *end || errno)
            return moed_err_set(err, MOED_EINVAL, "%s: type.%s.bytes = '%s' is not a count",
                                where, tname, val);
        ty->bytes = v;
        return 0;
    }
    for (size_t i = 0; i < NKEYS(tkeys); i++) {
        if (strcmp(field, tkeys[i].name))
            continue;
        double v = strtod(val, &end);
        if (end == val || *end || errno)
            return moed_err_set(err, MOED_EINVAL, "%s: type.%s.%s = '%s' is not a number", where,
                                tname, field, val);
        *(double *)((char *)ty + tkeys[i].off) = v;
        return 0;
    }
    return moed_err_set(err, MOED_ENOTFOUND, "%s: unknown key 'type.%s.%s'", where, tname, field);
}

int sched_cost_parse(struct sched_cost *c, const char *text, const char *name,
                     struct moed_err *err)
{
    struct sched_cost tmp;
    sched_cost_default(&tmp);
    tmp.ntypes = 0;
    memset(tmp.type, 0, sizeof tmp.type);
    tmp.calibrated = false;
    int lineno = 0;
    const char *p = text;
    while (*p) {
        const char *nl = strchr(p, '\n');
        size_t len = nl ? (size_t)(nl - p) : strlen(p);
        lineno++;
        char line[256], where[128];
        snprintf(where, sizeof where, "%s:%d", name, lineno);
        if (len >= sizeof line)
            return moed_err_set(err, MOED_EFORMAT, "%s: line too long", where);
        memcpy(line, p, len);
        line[len] = 0;
        p += len + (nl ? 1 : 0);
        char *hash = strchr(line, '#');
        if (hash)
            *hash = 0;
        char *s = trim(line);
        if (!*s)
            continue;
        char *eq = strchr(s, '=');
        if (!eq)
            return moed_err_set(err, MOED_EFORMAT, "%s: '%s' (want key = value)", where, s);
        *eq = 0;
        int rc = parse_line(&tmp, trim(s), trim(eq + 1), where, err);
        if (rc)
            return rc;
    }
    int rc = sched_cost_validate(&tmp, err);
    if (rc)
        return moed_err_wrap(err, "%s", name);
    *c = tmp;
    return 0;
}

int sched_cost_load(struct sched_cost *c, const char *path, struct moed_err *err)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return moed_err_set(err, MOED_EIO, "%s: %s", path, strerror(errno));
    char buf[16384];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    bool more = !feof(f);
    fclose(f);
    if (more)
        return moed_err_set(err, MOED_EFORMAT, "%s: larger than %zu bytes", path, sizeof buf - 1);
    buf[n] = 0;
    if (strlen(buf) != n)
        return moed_err_set(err, MOED_EFORMAT, "%s: NUL byte in text", path);
    return sched_cost_parse(c, buf, path, err);
}
