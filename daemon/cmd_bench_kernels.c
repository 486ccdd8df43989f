/*
 * moed bench-kernels: CPU matvec/matmul throughput per weight type and
 * thread count, in GB/s of weight bytes read and effective GFLOP/s
 * (2 * rows * n * ntok per product).
 *
 * What it measures, in the order a MoE decode step exercises it:
 *   - DRAM read bandwidth: every thread sums its slice of one large buffer
 *     (the reference for the "% read" columns, at the same thread count);
 *   - matvec on expert-sized matrices (768 x 2048, Qwen3-30B-A3B's FFN)
 *     one after another, each one sched_pool_run over all threads, cycling
 *     through --mb MiB of distinct experts so every expert comes from DRAM;
 *   - matvec on 14336 x 4096 matrices, cycling the same way;
 *   - batched matmul (--ntok, default 8 and 64 tokens) over the experts.
 * Each figure is the median of --repeats timed runs of about
 * --seconds / --repeats each, after a warm-up run; threads are pinned.
 */
#include <errno.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "common/err.h"
#include "daemon/cli.h"
#include "daemon/cmds.h"
#include "kernels/cpu/dot.h"
#include "kernels/cpu/isa.h"
#include "kernels/cpu/quant.h"
#include "sched/pool.h"

#define MAXLIST 32

struct bench_opts {
    int types[MAXLIST], ntypes;
    int threads[MAXLIST], nthreads;
    int ntoks[MAXLIST], nntok;
    int cpus[1024], ncpus;
    double seconds;
    int repeats;
    long mb;
    int prefetch;
    bool pin;
};

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* ---- option parsing ---------------------------------------------------- */

static int parse_ints(const char *s, int *out, int max, const char *what)
{
    int n = 0;
    while (*s) {
        char *end;
        long a = strtol(s, &end, 10), b = a;
        if (end == s || a < 0)
            goto bad;
        if (*end == '-') { /* a range, for --cpus */
            s = end + 1;
            b = strtol(s, &end, 10);
            if (end == s || b < a)
                goto bad;
        }
        for (long v = a; v <= b; v++) {
            if (n == max) {
                fprintf(stderr, "moed bench-kernels: too many values for %s\n", what);
                return -1;
            }
            out[n++] = (int)v;
        }
        s = end;
        if (*s == ',')
            s++;
        else if (*s)
            goto bad;
    }
    return n;
bad:
    fprintf(stderr, "moed bench-kernels: bad %s list at '%s'\n", what, s);
    return -1;
}

static int parse_types(const char *s, int *out, int max)
{
    int n = 0;
    char buf[256];
    snprintf(buf, sizeof buf, "%s", s);
    for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
        int t = kern_type_from_name(tok);
        if (t < 0 || kern_vec_dot_type((uint32_t)t) < 0) {
            fprintf(stderr, "moed bench-kernels: --types: '%s' is not a weight type with a dot "
                            "(F32 F16 BF16 Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q2_K Q3_K Q4_K Q5_K Q6_K)\n", tok);
            return -1;
        }
        if (n == max)
            return -1;
        out[n++] = t;
    }
    return n;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: moed bench-kernels [options]\n"
            "  --types LIST     weight types (default Q4_K,Q6_K,Q8_0)\n"
            "  --threads LIST   thread counts (default 1, nproc/2, nproc)\n"
            "  --ntok LIST      tokens of the batched matmuls (default 8,64)\n"
            "  --seconds S      time per measurement (default 1)\n"
            "  --repeats N      timed runs per measurement, median reported (default 5)\n"
            "  --mb MIB         weights working set, far above the LLC (default 2048,\n"
            "                   at most a quarter of available memory)\n"
            "  --isa LEVEL      scalar|avx2|avx512 (default: the best, or MOED_ISA)\n"
            "  --cpus LIST      CPUs to pin thread i to (default: the allowed CPUs in order)\n"
            "  --no-pin         do not pin\n"
            "  --prefetch B     matvec software prefetch distance in bytes (0 default, -1 off)\n");
}

static long mem_available_mb(void)
{
    FILE *f = fopen("/proc/meminfo", "r");
    char line[256];
    long kb = -1;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "MemAvailable: %ld kB", &kb) == 1)
            break;
    if (f)
        fclose(f);
    return kb > 0 ? kb / 1024 : 4096;
}

static int parse_opts(int argc, char **argv, struct bench_opts *o)
{
    memset(o, 0, sizeof *o);
    o->seconds = 1.0;
    o->repeats = 5;
    o->mb = 2048;
    o->pin = true;
    cpu_set_t allowed;
    CPU_ZERO(&allowed);
    sched_getaffinity(0, sizeof allowed, &allowed);
    for (int c = 0; c < CPU_SETSIZE && o->ncpus < 1024; c++)
        if (CPU_ISSET(c, &allowed))
            o->cpus[o->ncpus++] = c;
    if (o->ncpus == 0)
        o->cpus[o->ncpus++] = 0;
    bool mb_set = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 1;
        }
        if (!strcmp(a, "--no-pin")) {
            o->pin = false;
            continue;
        }
        if (!v) {
            fprintf(stderr, "moed bench-kernels: %s needs a value (try --help)\n", a);
            return -1;
        }
        i++;
        int n = 0;
        char *end = NULL;
        if (!strcmp(a, "--types")) {
            if ((n = parse_types(v, o->types, MAXLIST)) < 0)
                return -1;
            o->ntypes = n;
        } else if (!strcmp(a, "--threads")) {
            if ((n = parse_ints(v, o->threads, MAXLIST, "--threads")) < 0)
                return -1;
            o->nthreads = n;
        } else if (!strcmp(a, "--ntok")) {
            if ((n = parse_ints(v, o->ntoks, MAXLIST, "--ntok")) < 0)
                return -1;
            o->nntok = n;
        } else if (!strcmp(a, "--cpus")) {
            if ((n = parse_ints(v, o->cpus, 1024, "--cpus")) <= 0)
                return -1;
            o->ncpus = n;
        } else if (!strcmp(a, "--seconds")) {
            o->seconds = strtod(v, &end);
            if (*end || !(o->seconds > 0 && o->seconds <= 600)) {
                fprintf(stderr, "moed bench-kernels: --seconds %s: want 0 < S <= 600\n", v);
                return -1;
            }
        } else if (!strcmp(a, "--repeats")) {
            o->repeats = (int)strtol(v, &end, 10);
            if (*end || o->repeats < 1 || o->repeats > 1000) {
                fprintf(stderr, "moed bench-kernels: --repeats %s: want 1..1000\n", v);
                return -1;
            }
        } else if (!strcmp(a, "--mb")) {
            o->mb = strtol(v, &end, 10);
            mb_set = true;
            if (*end || o->mb < 64) {
                fprintf(stderr, "moed bench-kernels: --mb %s: want at least 64\n", v);
                return -1;
            }
        } else if (!strcmp(a, "--prefetch")) {
            o->prefetch = (int)strtol(v, &end, 10);
            if (*end) {
                fprintf(stderr, "moed bench-kernels: --prefetch %s: want a byte count\n", v);
                return -1;
            }
        } else if (!strcmp(a, "--isa")) {
            int lvl = -1;
            for (int l = KERN_ISA_SCALAR; l <= KERN_ISA_AVX512; l++)
                if (!strcmp(v, kern_isa_name((enum kern_isa)l)))
                    lvl = l;
            if (lvl < 0 || kern_isa_set((enum kern_isa)lvl) != 0) {
                fprintf(stderr, "moed bench-kernels: --isa %s: not a level this CPU has (best: %s)\n",
                        v, kern_isa_name(kern_isa_best()));
                return -1;
            }
        } else {
            fprintf(stderr, "moed bench-kernels: unknown option '%s' (try --help)\n", a);
            return -1;
        }
    }
    if (!o->ntypes) {
        o->types[0] = KT_Q4_K;
        o->types[1] = KT_Q6_K;
        o->types[2] = KT_Q8_0;
        o->ntypes = 3;
    }
    if (!o->nthreads) {
        int np = o->ncpus;
        o->threads[o->nthreads++] = 1;
        if (np / 2 > 1)
            o->threads[o->nthreads++] = np / 2;
        if (np > 1)
            o->threads[o->nthreads++] = np;
    }
    if (!o->nntok) {
        o->ntoks[0] = 8;
        o->ntoks[1] = 64;
        o->nntok = 2;
    }
    long cap = mem_available_mb() / 4;
    if (!mb_set && o->mb > cap)
        o->mb = cap < 64 ? 64 : cap;
    for (int i = 0; i < o->nthreads; i++)
        if (o->threads[i] < 1) {
            fprintf(stderr, "moed bench-kernels: --threads: 0 threads\n");
            return -1;
        }
    return 0;
}

/* ---- work run on the pool ---------------------------------------------- */

struct sum_job {
    const uint64_t *buf;
    size_t words;
    uint64_t sums[1024];
};

/* Streaming read: eight independent chains so the loads, not the adds, set
 * the pace (the compiler may vectorize this too). */
static void sum_fn(void *arg, int ith, int nth)
{
    struct sum_job *j = arg;
    size_t per = j->words / (size_t)nth / 8 * 8;
    const uint64_t *p = j->buf + per * (size_t)ith;
    uint64_t s[8] = {0};
    for (size_t i = 0; i < per; i += 8)
        for (int k = 0; k < 8; k++)
            s[k] += p[i + k];
    j->sums[ith % 1024] = s[0] + s[1] + s[2] + s[3] + s[4] + s[5] + s[6] + s[7];
}

struct mm_job {
    struct kern_matmul mm;
    int err;
};

static void mm_fn(void *arg, int ith, int nth)
{
    struct mm_job *j = arg;
    if (kern_matmul(&j->mm, ith, nth))
        j->err = 1;
}

static void *alloc_big(size_t bytes)
{
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

/* Items (experts or matrices) in a big buffer; each timed run does `count`
 * consecutive items, continuing where the previous one stopped. */
struct matset {
    uint8_t *base;
    size_t item_bytes;
    int64_t items, next;
    uint32_t t;
    int64_t rows, n;
};

struct measure {
    double gbs, gflops;
};

/* Median throughput of op over the pool: calibrate a count of items that
 * takes seconds / repeats, warm up once, then time repeats runs. */
static struct measure run_set(struct sched_pool *pool, struct matset *ms, const void *act,
                              int64_t ntok, float *out, const struct bench_opts *o)
{
    struct mm_job j = {.mm = {.wtype = ms->t, .n = ms->n, .rows = ms->rows, .ntok = ntok,
                              .act = act, .out = out, .prefetch = o->prefetch}};
    double target = o->seconds / o->repeats;
    int64_t count = 1;
    double t = 0;
    for (;;) { /* calibration, doubles as warm-up */
        double t0 = cli_now_s();
        for (int64_t k = 0; k < count; k++) {
            j.mm.w = ms->base + (size_t)(ms->next++ % ms->items) * ms->item_bytes;
            sched_pool_run(pool, mm_fn, &j);
        }
        t = cli_now_s() - t0;
        if (t >= target * 0.25 || count >= (int64_t)1 << 30)
            break;
        count *= 4;
    }
    count = (int64_t)((double)count * target / (t > 1e-9 ? t : 1e-9)) + 1;
    double gbs[1000], gfl[1000];
    for (int r = 0; r < o->repeats; r++) {
        double t0 = cli_now_s();
        for (int64_t k = 0; k < count; k++) {
            j.mm.w = ms->base + (size_t)(ms->next++ % ms->items) * ms->item_bytes;
            sched_pool_run(pool, mm_fn, &j);
        }
        double dt = cli_now_s() - t0;
        double bytes = (double)count * (double)kern_row_size(ms->t, ms->n) * (double)ms->rows;
        gbs[r] = bytes / dt * 1e-9;
        gfl[r] = 2.0 * (double)count * (double)ms->rows * (double)ms->n * (double)ntok / dt * 1e-9;
    }
    if (j.err)
        fprintf(stderr, "moed bench-kernels: kern_matmul failed\n");
    struct measure m = {median(gbs, o->repeats), median(gfl, o->repeats)};
    return m;
}

static double read_bw(struct sched_pool *pool, const uint8_t *buf, size_t bytes,
                      const struct bench_opts *o)
{
    struct sum_job *j = calloc(1, sizeof *j);
    if (!j)
        return 0;
    j->buf = (const uint64_t *)buf;
    j->words = bytes / 8;
    sched_pool_run(pool, sum_fn, j); /* warm-up */
    double v[1000];
    for (int r = 0; r < o->repeats; r++) {
        double t0 = cli_now_s(), dt;
        int passes = 0;
        do {
            sched_pool_run(pool, sum_fn, j);
            passes++;
            dt = cli_now_s() - t0;
        } while (dt < o->seconds / o->repeats);
        size_t per = j->words / (size_t)sched_pool_size(pool) / 8 * 8;
        v[r] = (double)passes * (double)(per * 8 * (size_t)sched_pool_size(pool)) / dt * 1e-9;
    }
    free(j);
    return median(v, o->repeats);
}

static void empty_fn(void *arg, int ith, int nth) {}

static double pool_overhead_us(struct sched_pool *pool)
{
    for (int i = 0; i < 1000; i++)
        sched_pool_run(pool, empty_fn, NULL);
    double t0 = cli_now_s();
    const int n = 20000;
    for (int i = 0; i < n; i++)
        sched_pool_run(pool, empty_fn, NULL);
    return (cli_now_s() - t0) / n * 1e6;
}

/* Fill a set: 64 rows quantized from random floats, repeated over the
 * first matrix, which is then copied to all items (distinct memory is what
 * matters for the cache, not distinct values). */
static int fill_set(struct matset *ms, uint8_t *base, size_t bytes, uint32_t t, int64_t rows,
                    int64_t n)
{
    enum { SEED_ROWS = 64 };
    size_t rs = kern_row_size(t, n);
    ms->base = base;
    ms->t = t;
    ms->rows = rows;
    ms->n = n;
    ms->item_bytes = rs * (size_t)rows;
    ms->items = (int64_t)(bytes / ms->item_bytes);
    ms->next = 0;
    if (ms->items < 1 || rows < SEED_ROWS)
        return -1;
    float *x = malloc(sizeof(float) * (size_t)n);
    if (!x)
        return -1;
    uint64_t s = 88172645463325252ull;
    for (int64_t r = 0; r < SEED_ROWS; r++) {
        for (int64_t i = 0; i < n; i++) {
            s ^= s << 13, s ^= s >> 7, s ^= s << 17;
            x[i] = (float)((double)(s >> 11) / 9007199254740992.0 - 0.5);
        }
        kern_quant_row_ref(t, x, base + (size_t)r * rs, n);
    }
    free(x);
    for (int64_t r = SEED_ROWS; r < rows; r++)
        memcpy(base + (size_t)r * rs, base + (size_t)(r % SEED_ROWS) * rs, rs);
    for (int64_t k = 1; k < ms->items; k++)
        memcpy(base + (size_t)k * ms->item_bytes, base, ms->item_bytes);
    return 0;
}

static void cpu_model(char *buf, size_t len)
{
    snprintf(buf, len, "?");
    FILE *f = fopen("/proc/cpuinfo", "r");
    char line[512];
    while (f && fgets(line, sizeof line, f)) {
        char *c = strchr(line, ':');
        if (!strncmp(line, "model name", 10) && c) {
            snprintf(buf, len, "%s", c + 2);
            buf[strcspn(buf, "\n")] = 0;
            break;
        }
    }
    if (f)
        fclose(f);
}

int cmd_bench_kernels(int argc, char **argv)
{
    struct bench_opts o;
    int rc = parse_opts(argc, argv, &o);
    if (rc)
        return rc > 0 ? 0 : 2;

    size_t bytes = (size_t)o.mb << 20;
    uint8_t *big = alloc_big(bytes);
    if (!big) {
        fprintf(stderr, "moed bench-kernels: cannot map %ld MiB: %s\n", o.mb, strerror(errno));
        return 1;
    }
    memset(big, 1, bytes); /* fault every page in now */
    int maxt = 1;
    for (int i = 0; i < o.nthreads; i++)
        maxt = o.threads[i] > maxt ? o.threads[i] : maxt;
    int maxtok = 1;
    for (int i = 0; i < o.nntok; i++)
        maxtok = o.ntoks[i] > maxtok ? o.ntoks[i] : maxtok;
    /* activations for up to maxtok tokens of n = 4096 and of n = 2048, any
     * dot type (f32 at most) */
    size_t act_bytes = (size_t)maxtok * (4096 + 2048) * 4 + 4096;
    uint8_t *act = aligned_alloc(64, act_bytes);
    float *out = aligned_alloc(64, sizeof(float) * 14336 * (size_t)(maxtok > 1 ? maxtok : 1) + 64);
    float *x = malloc(sizeof(float) * 4096);
    double *rbw = calloc((size_t)o.nthreads, sizeof(double));
    if (!act || !out || !x || !rbw) {
        fprintf(stderr, "moed bench-kernels: out of memory\n");
        return 1;
    }

    char model[128];
    cpu_model(model, sizeof model);
    printf("moed bench-kernels: %s, isa %s, %ld MiB working set, median of %d x %.2g s, %s\n",
           model, kern_isa_describe(), o.mb, o.repeats, o.seconds / o.repeats,
           o.pin ? "pinned" : "not pinned");

    /* pools, one per thread count, and the DRAM read bandwidth of each */
    struct sched_pool **pools = calloc((size_t)o.nthreads, sizeof *pools);
    if (!pools)
        return 1;
    printf("\nDRAM read (sum over %ld MiB) and empty pool run:\n", o.mb);
    for (int i = 0; i < o.nthreads; i++) {
        struct moed_err e = {0};
        struct sched_pool_opts po = {.nthreads = o.threads[i], .cpus = o.pin ? o.cpus : NULL,
                                     .ncpus = o.pin ? o.ncpus : 0, .pin_caller = o.pin};
        if (sched_pool_init(&pools[i], &po, &e)) {
            fprintf(stderr, "moed bench-kernels: %s\n", e.msg);
            return 1;
        }
        rbw[i] = read_bw(pools[i], big, bytes, &o);
        printf("  %3d threads: %7.1f GB/s   pool run %.2f us\n", o.threads[i], rbw[i],
               pool_overhead_us(pools[i]));
        fflush(stdout);
        if (i + 1 < o.nthreads) { /* keep one pool alive at a time: no idle spinners */
            sched_pool_free(pools[i]);
            pools[i] = NULL;
        }
    }
    sched_pool_free(pools[o.nthreads - 1]);
    pools[o.nthreads - 1] = NULL;

    printf("\n%-5s %3s | %-26s | %-26s", "type", "thr", "768x2048 experts, matvec",
           "14336x4096, matvec");
    for (int k = 0; k < o.nntok; k++) {
        char h[32];
        snprintf(h, sizeof h, "experts, %d tok", o.ntoks[k]);
        printf(" | %-20s", h);
    }
    printf("\n%-5s %3s | %7s %5s %10s | %7s %5s %10s", "", "", "GB/s", "%rd", "GFLOP/s", "GB/s",
           "%rd", "GFLOP/s");
    for (int k = 0; k < o.nntok; k++)
        printf(" | %7s %10s  ", "GB/s", "GFLOP/s");
    printf("\n");

    for (int ti = 0; ti < o.ntypes; ti++) {
        uint32_t t = (uint32_t)o.types[ti];
        uint32_t at = (uint32_t)kern_vec_dot_type(t);
        for (int k = 0; k < maxtok; k++) {
            for (int i = 0; i < 4096; i++)
                x[i] = (float)((i * 7919 + k * 104729) % 2001 - 1000) / 1000.0f;
            kern_quant_act(at, x, act + (size_t)k * kern_row_size(at, 4096), 4096);
        }
        /* the 2048-column experts read the first 2048 of each row: requantize */
        uint8_t *act2k = act + (size_t)maxtok * kern_row_size(at, 4096);
        if ((size_t)maxtok * (kern_row_size(at, 4096) + kern_row_size(at, 2048)) > act_bytes) {
            fprintf(stderr, "moed bench-kernels: activation buffer too small\n");
            return 1;
        }
        for (int k = 0; k < maxtok; k++)
            kern_quant_act(at, x, act2k + (size_t)k * kern_row_size(at, 2048), 2048);

        /* experts in one half of the buffer, big matrices in the other:
         * each half is far larger than any LLC */
        struct matset experts, bigm;
        if (fill_set(&experts, big, bytes / 2, t, 768, 2048)) {
            fprintf(stderr, "moed bench-kernels: --mb too small for one expert\n");
            return 1;
        }
        bool have_big = fill_set(&bigm, big + bytes / 2, bytes / 2, t, 14336, 4096) == 0;
        for (int i = 0; i < o.nthreads; i++) {
            struct sched_pool *pool;
            struct moed_err e = {0};
            struct sched_pool_opts po = {.nthreads = o.threads[i], .cpus = o.pin ? o.cpus : NULL,
                                         .ncpus = o.pin ? o.ncpus : 0, .pin_caller = o.pin};
            if (sched_pool_init(&pool, &po, &e)) {
                fprintf(stderr, "moed bench-kernels: %s\n", e.msg);
                return 1;
            }
            struct measure me = run_set(pool, &experts, act2k, 1, out, &o);
            printf("%-5s %3d | %7.1f %4.0f%% %10.1f |", kern_type_name(t), o.threads[i], me.gbs,
                   100 * me.gbs / rbw[i], me.gflops);
            fflush(stdout);
            if (have_big) {
                struct measure mb = run_set(pool, &bigm, act, 1, out, &o);
                printf(" %7.1f %4.0f%% %10.1f", mb.gbs, 100 * mb.gbs / rbw[i], mb.gflops);
            } else {
                printf(" %7s %5s %10s", "-", "-", "-");
            }
            fflush(stdout);
            for (int k = 0; k < o.nntok; k++) {
                struct measure mm = run_set(pool, &experts, act2k, o.ntoks[k], out, &o);
                printf(" | %7.1f %10.1f  ", mm.gbs, mm.gflops);
                fflush(stdout);
            }
            printf("\n");
            sched_pool_free(pool);
        }
    }
    printf("\nGB/s: weight bytes read per second; %%rd: of the DRAM read rate at the same thread "
           "count; GFLOP/s: 2 * rows * n * tokens per second.\n");
    munmap(big, bytes);
    free(act);
    free(out);
    free(x);
    free(rbw);
    free(pools);
    return 0;
}
