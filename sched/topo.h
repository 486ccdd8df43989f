/*
 * sched/topo: where the CPU workers run and where the expert rows they read
 * live (DESIGN.md, "The hybrid engine": CPU workers, NUMA).
 *
 * Three steps:
 *   1. Discovery (sched_topo_load): hwloc describes the machine, a synthetic
 *      description ("pack:2 numa:2 core:4 pu:2", for tests of shapes no
 *      test machine has) or an lstopo XML file.  moed keeps the packages,
 *      the NUMA nodes and the physical cores the process may run on (the
 *      cgroup cpuset and the process's affinity, e.g. taskset or systemd's
 *      CPUAffinity=), with one PU per core for its worker: SMT siblings share
 *      the core's load/store units and its share of DRAM bandwidth, which is
 *      what expert matvecs are bound by, so by default they stay idle.
 *   2. A worker plan (sched_topo_plan_init): N workers (0: one per core)
 *      spread evenly over the NUMA nodes, nodes visited alternately from
 *      each package, and grouped by node, so the list of CPUs goes straight
 *      into sched_pool_opts.cpus and a worker's node and rank within it are
 *      a lookup.
 *   3. Rows and memory: moed keeps ONE copy of every weight (kTransformers
 *      first copied the weights onto every node; RAM x nodes was its users'
 *      top complaint).  Each expert's rows are split across the nodes in
 *      proportion to their workers (sched_topo_split_rows), each node's rows
 *      are bound to that node (sched_topo_membind), and each node's workers
 *      compute only their node's rows, so every worker streams from local
 *      DRAM.  On a single-node host the binding is a no-op.
 */
#ifndef MOED_SCHED_TOPO_H
#define MOED_SCHED_TOPO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/err.h"

struct hwloc_topology; /* hwloc_topology_t */

enum sched_topo_from {
    SCHED_TOPO_SYSTEM,    /* this machine */
    SCHED_TOPO_SYNTHETIC, /* arg: hwloc synthetic description */
    SCHED_TOPO_XML,       /* arg: path of an lstopo --of xml export */
};

struct sched_topo_opts {
    enum sched_topo_from from;
    const char *arg;
    bool smt;         /* every allowed PU counts as a core (SMT siblings too) */
    const int *allow; /* optional: OS CPU numbers the workers may use, */
    int nallow;       /* intersected with what the process may use */
};

struct sched_topo_core {
    int os_cpu;  /* OS number of the PU a worker on this core runs on */
    int node;    /* index into sched_topo.nodes */
    int package; /* logical package index (0 if hwloc reports none) */
    int index;   /* hwloc logical index of the core (or PU with smt) */
    int npus;    /* allowed PUs of the core (1 with smt) */
};

struct sched_topo_node {
    int os_index;    /* the OS's node number, as numactl and /sys show it */
    int package;     /* logical package index, -1 if the node spans several */
    int ncores;      /* allowed cores on the node (0: memory-only node) */
    uint64_t memory; /* local memory in bytes, 0 if unknown */
};

struct sched_topo {
    struct hwloc_topology *hw;
    bool this_system; /* memory binding works only on the running machine */
    int npackages;
    int nnodes;
    struct sched_topo_node *nodes; /* [nnodes], hwloc logical order */
    int ncores;
    struct sched_topo_core *cores; /* [ncores], allowed cores grouped by node */
    int npus;                      /* allowed PUs on those cores */
};

/* Discover a topology.  Returns 0, or MOED_EINVAL (bad description, file or
 * option, named in err), MOED_ENOTFOUND (no allowed core), MOED_ENOMEM,
 * MOED_EIO (hwloc failed).  On error t holds nothing to free. */
int sched_topo_load(struct sched_topo *t, const struct sched_topo_opts *opts, struct moed_err *err);

/* Free what load allocated; a zeroed t is a no-op. */
void sched_topo_free(struct sched_topo *t);

/* Workers, grouped by node: node n's are [node_first[n], node_first[n] +
 * node_workers[n]).  cpus[] is what sched_pool_opts.cpus takes (worker 0 is
 * the pool's calling thread). */
struct sched_topo_plan {
    int nworkers;
    int *cpus;         /* [nworkers] OS CPU numbers */
    int *node;         /* [nworkers] node index of each worker */
    int nnodes;        /* = the topology's nnodes */
    int *node_workers; /* [nnodes] */
    int *node_first;   /* [nnodes] */
};

/* Choose nthreads cores (0: every allowed core): round-robin over the nodes
 * that have cores, in package-interleaved order, each node capped at its
 * cores, so counts differ by at most one where cores allow (6 workers on 4
 * equal nodes: 2,2,1,1, three per package).  Within a node, the cores in
 * hwloc order.  Returns 0, or MOED_ERANGE (nthreads < 0 or more than the
 * allowed cores), MOED_ENOMEM. */
int sched_topo_plan_init(struct sched_topo_plan *p, const struct sched_topo *t, int nthreads,
                         struct moed_err *err);
void sched_topo_plan_free(struct sched_topo_plan *p);

/* Worker w's node and its rank within that node's workers (what a kernel
 * gets as (ith, nth) over the node's rows). */
void sched_topo_plan_local(const struct sched_topo_plan *p, int w, int *node, int *ith, int *nth);

struct sched_topo_rows {
    int64_t begin, end; /* [begin, end) */
};

/* Split nrows rows into per-node ranges in proportion to each node's
 * workers (node_rows[nnodes]) and, within each node, per-worker ranges
 * (worker_rows[nworkers], may be NULL).  Boundaries fall on multiples of
 * align (16 for the quantized kernels' row blocks) or on nrows itself;
 * cumulative rounding keeps every share within one block of exact.  Nodes
 * without workers get empty ranges.  Returns 0 or MOED_EINVAL. */
int sched_topo_split_rows(const struct sched_topo_plan *p, int64_t nrows, int align,
                          struct sched_topo_rows *node_rows, struct sched_topo_rows *worker_rows,
                          struct moed_err *err);

/* Bind [addr, addr + len) to node (an index into t->nodes) with
 * HWLOC_MEMBIND_BIND, migrating pages already touched.  The range is
 * widened to whole pages, so neighbouring ranges of two nodes share a page
 * that the later call decides.  A no-op returning 0 when the topology has
 * one node.  Returns MOED_EINVAL (bad node), MOED_EUNSUPPORTED (topology
 * not this machine's), MOED_EIO (the kernel refused; err names the range,
 * node and errno). */
int sched_topo_membind(const struct sched_topo *t, const void *addr, size_t len, int node,
                       struct moed_err *err);

/*
 * A worker pool of nthreads (0: one per physical core) pinned one worker per
 * physical core by the plan above (the caller pinned too when pin_caller).
 * When that cannot be done (no topology, more threads than cores, pinning
 * refused) the pool is made unpinned and *why says why (empty when pinned).
 * desc gets "N threads pinned one per physical core" or "N threads (not
 * pinned)".  Errors only when even the unpinned pool cannot start.
 */
struct sched_pool;
int sched_topo_pool(int nthreads, bool pin_caller, struct sched_pool **pool, char *desc,
                    size_t n, char *why, size_t wn, struct moed_err *e);

#endif
