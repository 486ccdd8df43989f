/*
 * sched/topo: hwloc discovery, the worker plan, row splits and memory
 * binding (see topo.h for the why).
 *
 * The topology object stays loaded for the life of struct sched_topo,
 * since binding memory needs its NUMA nodes' nodesets.  Everything else is
 * copied into plain arrays so that callers (the engine, `moed topology`,
 * the tests) never touch hwloc.
 */
#include <errno.h>
#include <hwloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sched/topo.h"

#include "sched/pool.h"

/* Row counts beyond this are not a weight matrix; it keeps the products in
 * split_rows (blocks * workers) well inside int64_t. */
#define TOPO_MAX_ROWS ((int64_t)1 << 40)

static int core_cmp(const void *a, const void *b)
{
    const struct sched_topo_core *x = a, *y = b;
    if (x->node != y->node)
        return x->node < y->node ? -1 : 1;
    return (x->index > y->index) - (x->index < y->index);
}

static int node_of(hwloc_topology_t hw, hwloc_const_cpuset_t set)
{
    int n = hwloc_get_nbobjs_by_type(hw, HWLOC_OBJ_NUMANODE);
    for (int i = 0; i < n; i++) {
        hwloc_obj_t o = hwloc_get_obj_by_type(hw, HWLOC_OBJ_NUMANODE, i);
        if (o && o->cpuset && hwloc_bitmap_intersects(o->cpuset, set))
            return i;
    }
    return 0;
}

static int package_of(hwloc_topology_t hw, hwloc_obj_t o)
{
    hwloc_obj_t p = hwloc_get_ancestor_obj_by_type(hw, HWLOC_OBJ_PACKAGE, o);
    return p ? (int)p->logical_index : -1;
}

static const char *from_name(enum sched_topo_from f)
{
    return f == SCHED_TOPO_SYNTHETIC ? "synthetic topology"
           : f == SCHED_TOPO_XML     ? "topology XML"
                                     : "this machine's topology";
}

static int open_hwloc(hwloc_topology_t *out, const struct sched_topo_opts *o, struct moed_err *err)
{
    hwloc_topology_t hw;
    if (hwloc_topology_init(&hw) < 0)
        return moed_err_set(err, MOED_ENOMEM, "hwloc_topology_init failed: %s", strerror(errno));
    int rc = 0;
    if (o->from == SCHED_TOPO_SYNTHETIC) {
        if (!o->arg || hwloc_topology_set_synthetic(hw, o->arg) < 0)
            rc = moed_err_set(err, MOED_EINVAL, "synthetic topology '%s' is not valid for hwloc",
                              o->arg ? o->arg : "(null)");
    } else if (o->from == SCHED_TOPO_XML) {
        if (!o->arg || hwloc_topology_set_xml(hw, o->arg) < 0)
            rc = moed_err_set(err, MOED_EINVAL, "topology XML '%s': cannot be read: %s",
                              o->arg ? o->arg : "(null)", strerror(errno));
    } else if (o->from != SCHED_TOPO_SYSTEM) {
        rc = moed_err_set(err, MOED_EINVAL,
                          "topology source %d is not one of system, synthetic, xml", (int)o->from);
    }
    if (!rc && hwloc_topology_load(hw) < 0)
        rc = moed_err_set(err, o->from == SCHED_TOPO_SYSTEM ? MOED_EIO : MOED_EINVAL,
                          "%s '%s': hwloc cannot load it: %s", from_name(o->from),
                          o->arg ? o->arg : "", strerror(errno));
    if (rc) {
        hwloc_topology_destroy(hw);
        return rc;
    }
    *out = hw;
    return 0;
}

/* The PUs workers may use: hwloc's allowed set (the cgroup cpuset), on
 * this machine also the process's affinity, and the caller's list. */
static int allowed_pus(hwloc_topology_t hw, const struct sched_topo_opts *o, bool this_system,
                       hwloc_bitmap_t set, struct moed_err *err)
{
    if (hwloc_bitmap_copy(set, hwloc_topology_get_allowed_cpuset(hw)) < 0)
        return moed_err_set(err, MOED_ENOMEM, "cannot copy the allowed cpuset");
    if (this_system) {
        hwloc_bitmap_t bind = hwloc_bitmap_alloc();
        if (!bind)
            return moed_err_set(err, MOED_ENOMEM, "cannot allocate a cpuset");
        /* if the binding cannot be read, assume everything is allowed */
        if (hwloc_get_cpubind(hw, bind, HWLOC_CPUBIND_PROCESS) == 0 && !hwloc_bitmap_iszero(bind))
            hwloc_bitmap_and(set, set, bind);
        hwloc_bitmap_free(bind);
    }
    if (o->allow) {
        hwloc_const_cpuset_t all = hwloc_topology_get_complete_cpuset(hw);
        hwloc_bitmap_t list = hwloc_bitmap_alloc();
        if (!list)
            return moed_err_set(err, MOED_ENOMEM, "cannot allocate a cpuset");
        for (int i = 0; i < o->nallow; i++) {
            int c = o->allow[i];
            if (c < 0 || !hwloc_bitmap_isset(all, (unsigned)c)) {
                hwloc_bitmap_free(list);
                return moed_err_set(err, MOED_EINVAL, "cpu %d is not in the %s", c,
                                    from_name(o->from));
            }
            hwloc_bitmap_set(list, (unsigned)c);
        }
        hwloc_bitmap_and(set, set, list);
        hwloc_bitmap_free(list);
    }
    return 0;
}

int sched_topo_load(struct sched_topo *t, const struct sched_topo_opts *o, struct moed_err *err)
{
    memset(t, 0, sizeof *t);
    if (!o)
        return moed_err_set(err, MOED_EINVAL, "topology options are NULL");
    if (o->nallow < 0 || (o->nallow > 0 && !o->allow))
        return moed_err_set(err, MOED_EINVAL, "cpu list of %d entries is not valid", o->nallow);
    hwloc_topology_t hw = NULL;
    int rc = open_hwloc(&hw, o, err);
    if (rc)
        return rc;
    t->hw = hw;
    t->this_system = hwloc_topology_is_thissystem(hw) && o->from == SCHED_TOPO_SYSTEM;

    hwloc_bitmap_t allowed = hwloc_bitmap_alloc(), inter = hwloc_bitmap_alloc();
    if (!allowed || !inter) {
        rc = moed_err_set(err, MOED_ENOMEM, "cannot allocate a cpuset");
        goto out;
    }
    if ((rc = allowed_pus(hw, o, t->this_system, allowed, err)))
        goto out;

    t->npackages = hwloc_get_nbobjs_by_type(hw, HWLOC_OBJ_PACKAGE);
    if (t->npackages < 1)
        t->npackages = 1;
    int nnodes = hwloc_get_nbobjs_by_type(hw, HWLOC_OBJ_NUMANODE);
    if (nnodes < 1)
        nnodes = 1; /* hwloc 2 always has one; stay safe with odd XML */
    t->nodes = calloc((size_t)nnodes, sizeof *t->nodes);
    if (!t->nodes) {
        rc = moed_err_set(err, MOED_ENOMEM, "cannot allocate %d NUMA nodes", nnodes);
        goto out;
    }
    t->nnodes = nnodes;
    for (int i = 0; i < nnodes; i++) {
        hwloc_obj_t n = hwloc_get_obj_by_type(hw, HWLOC_OBJ_NUMANODE, i);
        t->nodes[i].os_index = n ? (int)n->os_index : 0;
        t->nodes[i].package = n ? package_of(hw, n) : -1;
        t->nodes[i].memory = n ? n->attr->numanode.local_memory : 0;
    }

    /* a core per worker; with smt (or an odd topology without cores) a PU */
    hwloc_obj_type_t unit =
        o->smt || hwloc_get_nbobjs_by_type(hw, HWLOC_OBJ_CORE) < 1 ? HWLOC_OBJ_PU : HWLOC_OBJ_CORE;
    int nunits = hwloc_get_nbobjs_by_type(hw, unit);
    t->cores = calloc(nunits > 0 ? (size_t)nunits : 1, sizeof *t->cores);
    if (!t->cores) {
        rc = moed_err_set(err, MOED_ENOMEM, "cannot allocate %d cores", nunits);
        goto out;
    }
    for (int i = 0; i < nunits; i++) {
        hwloc_obj_t c = hwloc_get_obj_by_type(hw, unit, i);
        if (!c || !c->cpuset)
            continue;
        hwloc_bitmap_and(inter, c->cpuset, allowed);
        if (hwloc_bitmap_iszero(inter))
            continue;
        struct sched_topo_core *k = &t->cores[t->ncores++];
        k->os_cpu = hwloc_bitmap_first(inter);
        k->npus = hwloc_bitmap_weight(inter);
        k->index = (int)c->logical_index;
        k->node = node_of(hw, inter);
        k->package = package_of(hw, c);
        if (k->package < 0)
            k->package = 0;
        t->npus += k->npus;
        t->nodes[k->node].ncores++;
    }
    if (t->ncores == 0) {
        rc = moed_err_set(err, MOED_ENOTFOUND, "%s has no core this process may run on",
                          from_name(o->from));
        goto out;
    }
    qsort(t->cores, (size_t)t->ncores, sizeof *t->cores, core_cmp);
out:
    hwloc_bitmap_free(allowed);
    hwloc_bitmap_free(inter);
    if (rc)
        sched_topo_free(t);
    return rc;
}

void sched_topo_free(struct sched_topo *t)
{
    if (!t)
        return;
    if (t->hw)
        hwloc_topology_destroy(t->hw);
    free(t->nodes);
    free(t->cores);
    memset(t, 0, sizeof *t);
}

/* ---- the worker plan ------------------------------------------------------ */

struct node_key {
    int node, rank, pkg;
};

static int node_key_cmp(const void *a, const void *b)
{
    const struct node_key *x = a, *y = b;
    if (x->rank != y->rank)
        return x->rank < y->rank ? -1 : 1;
    if (x->pkg != y->pkg)
        return x->pkg < y->pkg ? -1 : 1;
    return (x->node > y->node) - (x->node < y->node);
}

void sched_topo_plan_free(struct sched_topo_plan *p)
{
    if (!p)
        return;
    free(p->cpus);
    free(p->node);
    free(p->node_workers);
    free(p->node_first);
    memset(p, 0, sizeof *p);
}

int sched_topo_plan_init(struct sched_topo_plan *p, const struct sched_topo *t, int nthreads,
                         struct moed_err *err)
{
    memset(p, 0, sizeof *p);
    if (nthreads < 0 || nthreads > t->ncores)
        return moed_err_set(err, MOED_ERANGE,
                            "%d worker threads: the topology offers 1 to %d cores (SMT siblings "
                            "only when asked for)",
                            nthreads, t->ncores);
    int n = nthreads ? nthreads : t->ncores;
    int nn = t->nnodes;
    p->cpus = calloc((size_t)n, sizeof *p->cpus);
    p->node = calloc((size_t)n, sizeof *p->node);
    p->node_workers = calloc((size_t)nn, sizeof *p->node_workers);
    p->node_first = calloc((size_t)nn, sizeof *p->node_first);
    struct node_key *order = calloc((size_t)nn, sizeof *order);
    int *pkg_seen = calloc((size_t)t->npackages + (size_t)nn, sizeof *pkg_seen);
    if (!p->cpus || !p->node || !p->node_workers || !p->node_first || !order || !pkg_seen) {
        free(order);
        free(pkg_seen);
        sched_topo_plan_free(p);
        return moed_err_set(err, MOED_ENOMEM, "cannot allocate a plan of %d workers", n);
    }
    p->nworkers = n;
    p->nnodes = nn;

    /* Visit nodes as pack0's first, pack1's first, ..., pack0's second, ...
     * so a small worker count still uses every package's memory channels.
     * A node spanning packages gets a package key of its own. */
    int no = 0;
    for (int i = 0; i < nn; i++) {
        if (t->nodes[i].ncores == 0)
            continue;
        int pkg = t->nodes[i].package >= 0 ? t->nodes[i].package : t->npackages + i;
        order[no++] = (struct node_key){.node = i, .rank = pkg_seen[pkg]++, .pkg = pkg};
    }
    qsort(order, (size_t)no, sizeof *order, node_key_cmp);
    for (int left = n; left > 0;)
        for (int k = 0; k < no && left > 0; k++) {
            int i = order[k].node;
            if (p->node_workers[i] < t->nodes[i].ncores) {
                p->node_workers[i]++;
                left--;
            }
        }

    /* cores are grouped by node: take each node's first node_workers[i] */
    int w = 0, c = 0;
    for (int i = 0; i < nn; i++) {
        p->node_first[i] = w;
        while (c < t->ncores && t->cores[c].node < i)
            c++;
        for (int k = 0; k < p->node_workers[i]; k++, c++, w++) {
            p->cpus[w] = t->cores[c].os_cpu;
            p->node[w] = i;
        }
    }
    free(order);
    free(pkg_seen);
    return 0;
}

void sched_topo_plan_local(const struct sched_topo_plan *p, int w, int *node, int *ith, int *nth)
{
    int n = p->node[w];
    *node = n;
    *ith = w - p->node_first[n];
    *nth = p->node_workers[n];
}

/* ---- rows ---------------------------------------------------------------- */

/* begin + round(nblocks * num / den) blocks, clamped to end */
static int64_t boundary(int64_t begin, int64_t end, int64_t nblocks, int64_t num, int64_t den,
                        int align)
{
    int64_t b = (2 * nblocks * num + den) / (2 * den);
    int64_t r = begin + b * align;
    return r < end ? r : end;
}

int sched_topo_split_rows(const struct sched_topo_plan *p, int64_t nrows, int align,
                          struct sched_topo_rows *node_rows, struct sched_topo_rows *worker_rows,
                          struct moed_err *err)
{
    if (nrows < 0 || nrows > TOPO_MAX_ROWS)
        return moed_err_set(err, MOED_EINVAL, "row split: %lld rows is out of range",
                            (long long)nrows);
    if (align < 1 || align > 1 << 20)
        return moed_err_set(err, MOED_EINVAL, "row split: alignment %d is out of range", align);
    if (p->nworkers < 1 || !node_rows)
        return moed_err_set(err, MOED_EINVAL, "row split: the plan has no workers");
    int64_t nblocks = (nrows + align - 1) / align;
    int64_t cum = 0;
    for (int i = 0; i < p->nnodes; i++) {
        node_rows[i].begin = boundary(0, nrows, nblocks, cum, p->nworkers, align);
        cum += p->node_workers[i];
        node_rows[i].end = boundary(0, nrows, nblocks, cum, p->nworkers, align);
        if (!worker_rows)
            continue;
        int64_t b = node_rows[i].begin, e = node_rows[i].end;
        int64_t nb = (e - b + align - 1) / align;
        int k = p->node_workers[i];
        for (int j = 0; j < k; j++) {
            worker_rows[p->node_first[i] + j].begin = boundary(b, e, nb, j, k, align);
            worker_rows[p->node_first[i] + j].end = boundary(b, e, nb, j + 1, k, align);
        }
    }
    return 0;
}

/* ---- memory -------------------------------------------------------------- */

int sched_topo_membind(const struct sched_topo *t, const void *addr, size_t len, int node,
                       struct moed_err *err)
{
    if (node < 0 || node >= t->nnodes)
        return moed_err_set(err, MOED_EINVAL,
                            "bind %p+%zu: node %d is not one of the %d NUMA nodes", addr, len, node,
                            t->nnodes);
    if (t->nnodes == 1 || len == 0)
        return 0;
    if (!t->this_system)
        return moed_err_set(err, MOED_EUNSUPPORTED,
                            "bind %p+%zu to NUMA node %d: the topology is not this machine's "
                            "(synthetic or XML)",
                            addr, len, t->nodes[node].os_index);
    hwloc_obj_t n = hwloc_get_obj_by_type(t->hw, HWLOC_OBJ_NUMANODE, (unsigned)node);
    if (!n || !n->nodeset)
        return moed_err_set(err, MOED_EINVAL, "bind %p+%zu: hwloc has no NUMA node %d", addr, len,
                            node);
    long pg = sysconf(_SC_PAGESIZE);
    uintptr_t mask = (uintptr_t)(pg > 0 ? pg : 4096) - 1;
    uintptr_t lo = (uintptr_t)addr & ~mask;
    uintptr_t hi = ((uintptr_t)addr + len + mask) & ~mask;
    if (hwloc_set_area_membind(t->hw, (const void *)lo, hi - lo, n->nodeset, HWLOC_MEMBIND_BIND,
                               HWLOC_MEMBIND_BYNODESET | HWLOC_MEMBIND_MIGRATE) < 0)
        return moed_err_set(err, MOED_EIO, "bind %p+%zu to NUMA node %d: %s", addr, len,
                            t->nodes[node].os_index, strerror(errno));
    return 0;
}

int sched_topo_pool(int nthreads, bool pin_caller, struct sched_pool **pool, char *desc,
                    size_t n, char *why, size_t wn, struct moed_err *e)
{
    struct sched_topo t = {0};
    struct sched_topo_plan p = {0};
    struct moed_err te = {0};
    *pool = NULL;
    if (wn)
        why[0] = 0;
    if (sched_topo_load(&t, &(struct sched_topo_opts){.from = SCHED_TOPO_SYSTEM}, &te))
        snprintf(why, wn, "topology: %s", te.msg);
    else if (nthreads > t.ncores)
        snprintf(why, wn, "%d threads, %d physical core%s", nthreads, t.ncores,
                 t.ncores == 1 ? "" : "s");
    else if (sched_topo_plan_init(&p, &t, nthreads, &te) ||
             sched_pool_init(pool,
                             &(struct sched_pool_opts){.nthreads = p.nworkers,
                                                       .cpus = p.cpus,
                                                       .ncpus = p.nworkers,
                                                       .pin_caller = pin_caller},
                             &te))
        snprintf(why, wn, "%s", te.msg);
    int ncores = t.ncores;
    sched_topo_plan_free(&p);
    sched_topo_free(&t);
    if (*pool) {
        int nt = sched_pool_size(*pool);
        snprintf(desc, n, "%d thread%s pinned one per physical core", nt, nt == 1 ? "" : "s");
        return 0;
    }
    int rc = sched_pool_init(
        pool, &(struct sched_pool_opts){.nthreads = nthreads > 0 ? nthreads : ncores}, e);
    if (rc)
        return rc;
    int nt = sched_pool_size(*pool);
    snprintf(desc, n, "%d thread%s (not pinned)", nt, nt == 1 ? "" : "s");
    return 0;
}
