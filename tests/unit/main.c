/* Runs every registered unit test (see harness.h).
 * Usage: moed-tests [SUBSTRING...]  runs the tests whose name contains any. */
#include "tests/unit/harness.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

struct test_case {
    const char *name, *file;
    void (*fn)(void);
};

static struct test_case *cases;
static size_t n_cases, cap_cases;
static int cur_failures;
static const char *cur_skip;

void test_register(const char *name, const char *file, void (*fn)(void))
{
    if (n_cases == cap_cases) {
        cap_cases = cap_cases ? 2 * cap_cases : 64;
        cases = realloc(cases, cap_cases * sizeof *cases);
        if (!cases)
            abort();
    }
    cases[n_cases++] = (struct test_case){name, file, fn};
}

void test_fail(const char *file, int line, const char *fmt, ...)
{
    if (cur_failures < 20) {
        va_list ap;
        va_start(ap, fmt);
        fprintf(stderr, "    %s:%d: ", file, line);
        vfprintf(stderr, fmt, ap);
        fputc('\n', stderr);
        va_end(ap);
    }
    cur_failures++;
}

void test_skip(const char *why) { cur_skip = why; }
bool test_failed_now(void) { return cur_failures > 0; }

const char *test_shared_dir(void)
{
    const char *s = getenv("MOED_SHARED");
    return s && *s ? s : "../shared";
}

const char *test_tmp_dir(void)
{
    const char *s = getenv("MOED_TEST_TMP");
    s = s && *s ? s : "build/test-tmp";
    mkdir(s, 0755);
    return s;
}

char *test_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap + 1);
    size_t r;
    while (buf && (r = fread(buf + n, 1, cap - n, f)) > 0) {
        n += r;
        if (n == cap) {
            char *nb = realloc(buf, 2 * cap + 1);
            if (!nb) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = nb;
            cap *= 2;
        }
    }
    fclose(f);
    if (!buf)
        return NULL;
    buf[n] = 0;
    if (len)
        *len = n;
    return buf;
}

static int cmp_case(const void *a, const void *b)
{
    const struct test_case *x = a, *y = b;
    int c = strcmp(x->file, y->file);
    return c ? c : strcmp(x->name, y->name);
}

int main(int argc, char **argv)
{
    qsort(cases, n_cases, sizeof *cases, cmp_case);
    int passed = 0, failed = 0, skipped = 0;
    for (size_t i = 0; i < n_cases; i++) {
        if (argc > 1) {
            bool want = false;
            for (int a = 1; a < argc; a++)
                want |= strstr(cases[i].name, argv[a]) != NULL;
            if (!want)
                continue;
        }
        cur_failures = 0;
        cur_skip = NULL;
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        cases[i].fn();
        clock_gettime(CLOCK_MONOTONIC, &t1);
        double ms = (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6;
        if (cur_failures) {
            failed++;
            fprintf(stderr, "FAIL %s (%s, %d checks failed)\n", cases[i].name, cases[i].file,
                    cur_failures);
        } else if (cur_skip) {
            skipped++;
            printf("skip %s: skipped: %s\n", cases[i].name, cur_skip);
        } else {
            passed++;
            printf("ok   %s (%.1f ms)\n", cases[i].name, ms);
        }
        fflush(stdout);
    }
    free(cases);
    printf("unit: %d passed, %d failed, %d skipped\n", passed, failed, skipped);
    return failed ? 1 : 0;
}
