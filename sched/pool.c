/*
 * Thread pool (pool.h).  Protocol, with gen the generation counter:
 *
 *   caller:  fn, arg = ...; gen = g (seq_cst); if sleepers: futex_wake(gen);
 *            fn(arg, 0, n); wait until every worker's done == g (acquire)
 *   worker:  wait until gen != seen (acquire: fn and arg are visible);
 *            fn(arg, ith, n); done = g (release)
 *
 * A worker gives up spinning after spin_us and sleeps: sleepers++ then
 * re-check gen, then futex_wait(gen, seen), which re-checks atomically.
 * With both sides seq_cst, either the worker sees the new gen or the caller
 * sees sleepers > 0 and wakes it; no wake-up is lost.
 *
 * Spinning loops back off to sched_yield() after a few thousand pauses, so
 * a pool larger than the machine (tests on 2 cores, a busy CI host) still
 * makes progress instead of burning whole time slices.
 */
#include "sched/pool.h"

#include <assert.h>
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define SPIN_DEFAULT_US 1000
#define SPIN_BEFORE_YIELD 4096 /* pauses before sched_yield() in a wait loop */
#define CACHE_LINE 64

struct worker {
    alignas(CACHE_LINE) _Atomic uint32_t done; /* last generation finished */
    struct sched_pool *pool;
    pthread_t th;
    int ith;
    bool started;
};

struct sched_pool {
    alignas(CACHE_LINE) _Atomic uint32_t gen; /* futex word */
    alignas(CACHE_LINE) _Atomic int sleepers;
    /* read by every worker on every run, written by the caller before gen */
    alignas(CACHE_LINE) sched_pool_fn fn;
    void *arg;
    _Atomic bool stop;
    int n;
    int spin_us;
    struct worker *w; /* n - 1 workers, w[i].ith = i + 1 */
    /* the caller's own */
    alignas(CACHE_LINE) uint32_t next; /* the generation of the next run */
    _Atomic int running;
    bool caller_pinned;
    pthread_t caller;
    cpu_set_t caller_mask; /* the caller's affinity before pinning */
};

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static void backoff(unsigned *spins)
{
    if (++*spins < SPIN_BEFORE_YIELD)
        cpu_relax();
    else
        sched_yield();
}

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void futex_wait(_Atomic uint32_t *addr, uint32_t val)
{
    syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAIT_PRIVATE, val, NULL, NULL, 0);
}

static void futex_wake_all(_Atomic uint32_t *addr)
{
    syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
}

/* Wait until gen differs from seen; returns the new generation. */
static uint32_t wait_gen(struct sched_pool *p, uint32_t seen)
{
    unsigned spins = 0;
    int64_t t0 = -1;
    for (;;) {
        uint32_t g = atomic_load_explicit(&p->gen, memory_order_acquire);
        if (g != seen)
            return g;
        if (p->spin_us < 0)
            break;
        if ((spins & 255) == 255) {
            int64_t t = now_us();
            if (t0 < 0)
                t0 = t;
            else if (t - t0 >= p->spin_us)
                break;
        }
        backoff(&spins);
    }
    atomic_fetch_add(&p->sleepers, 1);
    uint32_t g;
    while ((g = atomic_load(&p->gen)) == seen)
        futex_wait(&p->gen, seen);
    atomic_fetch_sub(&p->sleepers, 1);
    return g;
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    struct sched_pool *p = w->pool;
    uint32_t seen = 0;
    for (;;) {
        seen = wait_gen(p, seen);
        if (atomic_load_explicit(&p->stop, memory_order_acquire))
            break;
        p->fn(p->arg, w->ith, p->n);
        atomic_store_explicit(&w->done, seen, memory_order_release);
    }
    return NULL;
}

static int online_cpus(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

static int check_cpus(const struct sched_pool_opts *o, struct moed_err *err)
{
    cpu_set_t allowed;
    CPU_ZERO(&allowed);
    if (sched_getaffinity(0, sizeof allowed, &allowed) != 0)
        return moed_err_set(err, MOED_EIO, "sched_pool: sched_getaffinity: %s", strerror(errno));
    for (int i = 0; i < o->ncpus; i++) {
        int c = o->cpus[i];
        if (c < 0 || c >= CPU_SETSIZE || !CPU_ISSET(c, &allowed))
            return moed_err_set(err, MOED_EINVAL,
                                "sched_pool: cpu %d (entry %d of the cpu list) is not one this "
                                "process may run on (%d allowed)",
                                c, i, CPU_COUNT(&allowed));
    }
    return 0;
}

int sched_pool_init(struct sched_pool **pool, const struct sched_pool_opts *opts,
                    struct moed_err *err)
{
    static const struct sched_pool_opts defaults = {0};
    const struct sched_pool_opts *o = opts ? opts : &defaults;
    *pool = NULL;
    if (o->ncpus < 0 || (o->ncpus > 0 && !o->cpus))
        return moed_err_set(err, MOED_EINVAL, "sched_pool: ncpus %d without a cpu list", o->ncpus);
    int n = o->nthreads;
    if (n == 0)
        n = o->ncpus > 0 ? o->ncpus : online_cpus();
    if (n < 1 || n > 4096)
        return moed_err_set(err, MOED_EINVAL, "sched_pool: nthreads %d out of range 1..4096",
                            o->nthreads);
    int rc = check_cpus(o, err);
    if (rc)
        return rc;

    struct sched_pool *p = aligned_alloc(CACHE_LINE, sizeof *p);
    if (!p)
        return moed_err_set(err, MOED_ENOMEM, "sched_pool: out of memory");
    memset(p, 0, sizeof *p);
    p->n = n;
    p->spin_us = o->spin_us == 0 ? SPIN_DEFAULT_US : o->spin_us;
    p->next = 1;
    size_t wbytes = sizeof(struct worker) * (size_t)(n > 1 ? n - 1 : 1);
    p->w = aligned_alloc(CACHE_LINE, wbytes);
    if (!p->w) {
        free(p);
        return moed_err_set(err, MOED_ENOMEM, "sched_pool: out of memory for %d workers", n);
    }
    memset(p->w, 0, wbytes);

    if (o->pin_caller && o->ncpus > 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(o->cpus[0], &set);
        p->caller = pthread_self();
        if (pthread_getaffinity_np(p->caller, sizeof p->caller_mask, &p->caller_mask) == 0)
            p->caller_pinned = true;
        if ((rc = pthread_setaffinity_np(p->caller, sizeof set, &set)) != 0) {
            sched_pool_free(p);
            return moed_err_set(err, MOED_EIO, "sched_pool: pinning the caller to cpu %d: %s",
                                o->cpus[0], strerror(rc));
        }
    }
    for (int i = 0; i < n - 1; i++) {
        struct worker *w = &p->w[i];
        w->pool = p;
        w->ith = i + 1;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        int cpu = -1;
        if (o->ncpus > 0) {
            cpu_set_t set;
            cpu = o->cpus[(i + 1) % o->ncpus];
            CPU_ZERO(&set);
            CPU_SET(cpu, &set);
            pthread_attr_setaffinity_np(&attr, sizeof set, &set);
        }
        rc = pthread_create(&w->th, &attr, worker_main, w);
        pthread_attr_destroy(&attr);
        if (rc != 0) {
            sched_pool_free(p);
            return moed_err_set(err, MOED_EIO, "sched_pool: starting worker %d (cpu %d): %s",
                                i + 1, cpu, strerror(rc));
        }
        w->started = true;
    }
    *pool = p;
    return 0;
}

void sched_pool_free(struct sched_pool *p)
{
    if (!p)
        return;
    atomic_store(&p->stop, true);
    atomic_fetch_add(&p->gen, 1);
    futex_wake_all(&p->gen);
    for (int i = 0; i < p->n - 1; i++)
        if (p->w[i].started)
            pthread_join(p->w[i].th, NULL);
    if (p->caller_pinned)
        pthread_setaffinity_np(p->caller, sizeof p->caller_mask, &p->caller_mask);
    free(p->w);
    free(p);
}

int sched_pool_size(const struct sched_pool *p) { return p->n; }

void sched_pool_run(struct sched_pool *p, sched_pool_fn fn, void *arg)
{
    if (p->n == 1) {
        fn(arg, 0, 1);
        return;
    }
    int was = atomic_exchange_explicit(&p->running, 1, memory_order_relaxed);
    assert(!was && "sched_pool_run: one submitter at a time, never from inside fn");
    (void)was;
    uint32_t g = p->next++;
    if (g == 0) /* 0 is the workers' initial "seen" */
        g = p->next++;
    p->fn = fn;
    p->arg = arg;
    atomic_store(&p->gen, g);
    if (atomic_load(&p->sleepers) > 0)
        futex_wake_all(&p->gen);
    fn(arg, 0, p->n);
    /* Poll every pending worker in one pass, so that the cache misses on
     * their done lines overlap instead of following one another. */
    unsigned spins = 0;
    for (int first = 0, nw = p->n - 1; first < nw;) {
        int pending = 0;
        for (int i = first; i < nw; i++)
            pending += atomic_load_explicit(&p->w[i].done, memory_order_acquire) != g;
        if (!pending)
            break;
        while (first < nw && atomic_load_explicit(&p->w[first].done, memory_order_acquire) == g)
            first++;
        backoff(&spins);
    }
    atomic_store_explicit(&p->running, 0, memory_order_relaxed);
}
