/* sched/pool: every thread runs once per run, writes are visible after
 * run returns, runs stay ordered, workers wake from sleep, pinning lands on
 * the listed CPUs, bad CPUs are refused, and init/free leak nothing. */
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "sched/pool.h"
#include "tests/unit/harness.h"

#define MAXT 16

struct count_arg {
    _Atomic int calls[MAXT];
    int nth_seen[MAXT];
    long gen[MAXT]; /* plain writes: checked for visibility after run */
    long cur;
};

static void count_fn(void *arg, int ith, int nth)
{
    struct count_arg *c = arg;
    atomic_fetch_add(&c->calls[ith], 1);
    c->nth_seen[ith] = nth;
    c->gen[ith] = c->cur;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

TEST(pool_runs_every_thread_once)
{
    static const int sizes[] = {1, 2, 3, 5, 8};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        int n = sizes[k];
        struct sched_pool *p;
        struct moed_err e = {0};
        struct sched_pool_opts o = {.nthreads = n};
        REQUIRE(sched_pool_init(&p, &o, &e) == 0);
        CHECK_EQ(sched_pool_size(p), n);
        struct count_arg *c = calloc(1, sizeof *c);
        REQUIRE(c);
        const int runs = n > 4 ? 100 : 300;
        for (int r = 1; r <= runs; r++) {
            c->cur = r;
            sched_pool_run(p, count_fn, c);
            /* every thread's plain write of this run is visible now */
            for (int i = 0; i < n; i++)
                CHECK_MSG(c->gen[i] == r, "n=%d run %d: thread %d wrote %ld", n, r, i, c->gen[i]);
            if (test_failed_now())
                break;
        }
        for (int i = 0; i < n; i++) {
            CHECK_EQ(atomic_load(&c->calls[i]), runs);
            CHECK_EQ(c->nth_seen[i], n);
        }
        for (int i = n; i < MAXT; i++)
            CHECK_EQ(atomic_load(&c->calls[i]), 0);
        free(c);
        sched_pool_free(p);
    }
}

/* Runs that depend on the previous run's results (a running prefix). */
struct chain_arg {
    unsigned long *v;
    int len;
};

static void chain_fn(void *arg, int ith, int nth)
{
    struct chain_arg *c = arg;
    for (int i = ith; i < c->len; i += nth)
        c->v[i] = c->v[i] * 3 + i;
}

TEST(pool_runs_are_ordered)
{
    struct sched_pool *p;
    struct sched_pool_opts o = {.nthreads = 4};
    REQUIRE(sched_pool_init(&p, &o, NULL) == 0);
    unsigned long v[37] = {0}, ref[37] = {0};
    struct chain_arg c = {v, 37};
    for (int r = 0; r < 200; r++) {
        sched_pool_run(p, chain_fn, &c);
        for (int i = 0; i < 37; i++)
            ref[i] = ref[i] * 3 + i;
    }
    CHECK(memcmp(v, ref, sizeof v) == 0);
    sched_pool_free(p);
}

TEST(pool_wakes_sleeping_workers)
{
    /* spin briefly, then sleep: runs after idle gaps must still complete */
    struct sched_pool *p;
    struct sched_pool_opts o = {.nthreads = 3, .spin_us = 50};
    REQUIRE(sched_pool_init(&p, &o, NULL) == 0);
    struct count_arg *c = calloc(1, sizeof *c);
    REQUIRE(c);
    for (int r = 1; r <= 5; r++) {
        sleep_ms(5);
        c->cur = r;
        sched_pool_run(p, count_fn, c);
        for (int i = 0; i < 3; i++)
            CHECK_EQ(c->gen[i], r);
    }
    sched_pool_free(p);
    /* never spin: every run wakes the workers from the futex */
    o.spin_us = -1;
    REQUIRE(sched_pool_init(&p, &o, NULL) == 0);
    for (int r = 6; r <= 50; r++) {
        c->cur = r;
        sched_pool_run(p, count_fn, c);
        for (int i = 0; i < 3; i++)
            CHECK_EQ(c->gen[i], r);
    }
    sched_pool_free(p);
    for (int i = 0; i < 3; i++)
        CHECK_EQ(atomic_load(&c->calls[i]), 50);
    free(c);
}

TEST(pool_free_without_runs)
{
    for (int k = 0; k < 20; k++) {
        struct sched_pool *p;
        struct sched_pool_opts o = {.nthreads = 1 + k % 6, .spin_us = k % 2 ? -1 : 0};
        REQUIRE(sched_pool_init(&p, &o, NULL) == 0);
        sched_pool_free(p);
    }
    sched_pool_free(NULL);
    /* default size: the machine's CPUs */
    struct sched_pool *p;
    REQUIRE(sched_pool_init(&p, NULL, NULL) == 0);
    CHECK_EQ(sched_pool_size(p), (int)sysconf(_SC_NPROCESSORS_ONLN));
    sched_pool_free(p);
}

static void cpu_fn(void *arg, int ith, int nth)
{
    int *cpu = arg;
    cpu[ith] = sched_getcpu();
}

TEST(pool_pins_workers)
{
    cpu_set_t allowed;
    REQUIRE(sched_getaffinity(0, sizeof allowed, &allowed) == 0);
    int list[4], nl = 0;
    for (int c = 0; c < CPU_SETSIZE && nl < 2; c++)
        if (CPU_ISSET(c, &allowed))
            list[nl++] = c;
    REQUIRE(nl >= 1);
    /* threads 1..4 on list[i % nl]; thread 0 (this one) left alone */
    struct sched_pool *p;
    struct sched_pool_opts o = {.nthreads = 5, .cpus = list, .ncpus = nl};
    REQUIRE(sched_pool_init(&p, &o, NULL) == 0);
    int cpu[5];
    for (int r = 0; r < 3; r++) {
        sched_pool_run(p, cpu_fn, cpu);
        for (int i = 1; i < 5; i++)
            CHECK_MSG(cpu[i] == list[i % nl], "thread %d ran on cpu %d, pinned to %d", i, cpu[i],
                      list[i % nl]);
    }
    sched_pool_free(p);
}

TEST(pool_rejects_bad_options)
{
    struct sched_pool *p = (struct sched_pool *)1;
    struct moed_err e = {0};
    int bad[] = {0, 100000};
    struct sched_pool_opts o = {.nthreads = 2, .cpus = bad, .ncpus = 2};
    CHECK_EQ(sched_pool_init(&p, &o, &e), MOED_EINVAL);
    CHECK(p == NULL);
    CHECK(strstr(e.msg, "100000") != NULL);
    struct sched_pool_opts o2 = {.nthreads = -3};
    CHECK_EQ(sched_pool_init(&p, &o2, &e), MOED_EINVAL);
    CHECK(strstr(e.msg, "-3") != NULL);
    struct sched_pool_opts o3 = {.nthreads = 2, .ncpus = 1};
    CHECK_EQ(sched_pool_init(&p, &o3, &e), MOED_EINVAL);
}
