/*
 * The CPU worker pool: N threads (the caller counts as thread 0) that run
 * one function at a time on all threads, fn(arg, ith, nth), and return when
 * every thread is done.  Made for the hybrid engine's per-layer work, where
 * a whole layer takes ~100-300 us: a run wakes spinning workers through one
 * shared generation counter (no system call), and each worker reports
 * completion in its own cache line, which the caller polls.  A worker that
 * has spun spin_us without work sleeps on a futex; a run that finds
 * sleepers wakes them (the next run after an idle period pays the wake-up,
 * ~10-50 us, the hot path does not).
 *
 * Pinning takes a plain list of CPU numbers for now (the hwloc placement of
 * DESIGN.md builds that list).  One thread at a time may call
 * sched_pool_run, and fn must not call it.
 */
#ifndef MOED_SCHED_POOL_H
#define MOED_SCHED_POOL_H

#include <stdbool.h>

#include "common/err.h"

struct sched_pool;

typedef void (*sched_pool_fn)(void *arg, int ith, int nth);

struct sched_pool_opts {
    int nthreads;    /* threads including the caller; 0: online CPUs (or ncpus) */
    const int *cpus; /* optional: thread i runs on cpus[i % ncpus] */
    int ncpus;
    bool pin_caller; /* pin the thread calling init (thread 0) as well; its
                        affinity is restored by sched_pool_free, to be called
                        while that thread lives */
    int spin_us;     /* idle spin before sleeping; 0: 1000 us, < 0: sleep at once */
};

/* Start the workers.  Returns 0, or MOED_EINVAL (bad count or CPU, named in
 * err), MOED_ENOMEM, MOED_EIO (thread creation or pinning failed). */
int sched_pool_init(struct sched_pool **pool, const struct sched_pool_opts *opts,
                    struct moed_err *err);

/* Stop and join the workers, free everything; NULL is a no-op. */
void sched_pool_free(struct sched_pool *pool);

/* nth: the number of threads fn runs on. */
int sched_pool_size(const struct sched_pool *pool);

/* fn(arg, ith, nth) on every thread, ith = 0 on the caller; returns when all
 * calls have returned, with their writes visible to the caller. */
void sched_pool_run(struct sched_pool *pool, sched_pool_fn fn, void *arg);

#endif
