/*
 * moed topology [--synthetic DESC | --xml FILE] [--threads N] [--smt]
 *               [--rows R]
 *
 * What the CPU workers would use here (sched/topo.h): packages, NUMA nodes
 * and the cores this process may run on, the worker CPUs and their nodes,
 * and how an expert's rows (768 by default, Qwen3-30B-A3B's FFN width)
 * split across nodes and workers.  --synthetic shows the plan for a shape
 * this machine does not have, e.g. "pack:2 numa:2 core:4 pu:2".
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/cmds.h"
#include "sched/topo.h"

static void usage(FILE *f)
{
    fprintf(
        f, "usage: moed topology [--synthetic DESC | --xml FILE] [--threads N] [--smt] [--rows R]\n"
           "  --synthetic DESC  an hwloc synthetic topology, e.g. \"pack:2 numa:2 core:4 pu:2\"\n"
           "  --xml FILE        a topology exported by `lstopo --of xml`\n"
           "  --threads N       worker threads (default 0: one per physical core)\n"
           "  --smt             let workers use SMT siblings as well\n"
           "  --rows R          rows of the example expert matrix (default 768)\n");
}

static int parse_long(const char *opt, const char *s, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) {
        fprintf(stderr, "moed topology: %s '%s': expected an integer in [%ld, %ld]\n", opt, s, lo,
                hi);
        return -1;
    }
    *out = v;
    return 0;
}

static void print_cpus(const int *cpus, int n)
{
    for (int i = 0; i < n; i++)
        printf("%s%d", i ? "," : "", cpus[i]);
}

int cmd_topology(int argc, char **argv)
{
    struct sched_topo_opts o = {.from = SCHED_TOPO_SYSTEM};
    long threads = 0, rows = 768;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool more = i + 1 < argc;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--synthetic") && more) {
            o.from = SCHED_TOPO_SYNTHETIC;
            o.arg = argv[++i];
        } else if (!strcmp(a, "--xml") && more) {
            o.from = SCHED_TOPO_XML;
            o.arg = argv[++i];
        } else if (!strcmp(a, "--threads") && more) {
            if (parse_long(a, argv[++i], 0, 1 << 16, &threads))
                return 2;
        } else if (!strcmp(a, "--rows") && more) {
            if (parse_long(a, argv[++i], 1, 1L << 30, &rows))
                return 2;
        } else if (!strcmp(a, "--smt")) {
            o.smt = true;
        } else {
            fprintf(stderr, "moed topology: unknown or incomplete option '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }

    struct moed_err e = {0};
    struct sched_topo t;
    if (sched_topo_load(&t, &o, &e)) {
        fprintf(stderr, "moed topology: %s\n", e.msg);
        return 1;
    }
    struct sched_topo_plan p;
    if (sched_topo_plan_init(&p, &t, (int)threads, &e)) {
        fprintf(stderr, "moed topology: %s\n", e.msg);
        sched_topo_free(&t);
        return 1;
    }
    int rc = 0;
    struct sched_topo_rows *nr = calloc((size_t)p.nnodes, sizeof *nr);
    struct sched_topo_rows *wr = calloc((size_t)p.nworkers, sizeof *wr);
    int *list = calloc((size_t)t.ncores, sizeof *list);
    if (!nr || !wr || !list || sched_topo_split_rows(&p, rows, 16, nr, wr, &e)) {
        fprintf(stderr, "moed topology: %s\n", nr && wr && list ? e.msg : "out of memory");
        rc = 1;
        goto out;
    }

    printf("topology: %s%s%s\n",
           o.from == SCHED_TOPO_SYNTHETIC ? "synthetic "
           : o.from == SCHED_TOPO_XML     ? "xml "
                                          : "this machine",
           o.arg ? o.arg : "", t.this_system ? "" : " (memory binding not applicable)");
    printf("packages: %d, NUMA nodes: %d, %s: %d (%d PUs) allowed\n", t.npackages, t.nnodes,
           o.smt ? "PUs as cores" : "physical cores", t.ncores, t.npus);
    for (int n = 0; n < t.nnodes; n++) {
        int k = 0;
        for (int c = 0; c < t.ncores; c++)
            if (t.cores[c].node == n)
                list[k++] = t.cores[c].os_cpu;
        printf("  node %d (os %d, package %d, %.1f GiB): %d cores, cpus ", n, t.nodes[n].os_index,
               t.nodes[n].package, t.nodes[n].memory / 1073741824.0, k);
        print_cpus(list, k);
        printf("\n");
    }
    printf("workers: %d%s\n  cpus:  ", p.nworkers, threads ? "" : " (one per core)");
    print_cpus(p.cpus, p.nworkers);
    printf("\n  nodes: ");
    print_cpus(p.node, p.nworkers);
    printf("\n");
    printf("row split of a %ld-row expert (16-row aligned; one copy, node n's rows bound to node "
           "n%s):\n",
           rows, t.nnodes > 1 ? "" : ": single node, binding is a no-op");
    for (int n = 0; n < p.nnodes; n++) {
        printf("  node %d: rows [%lld, %lld) %lld rows, %d workers:", n, (long long)nr[n].begin,
               (long long)nr[n].end, (long long)(nr[n].end - nr[n].begin), p.node_workers[n]);
        for (int j = 0; j < p.node_workers[n]; j++) {
            const struct sched_topo_rows *r = &wr[p.node_first[n] + j];
            printf(" [%lld,%lld)", (long long)r->begin, (long long)r->end);
        }
        printf("\n");
    }
out:
    free(nr);
    free(wr);
    free(list);
    sched_topo_plan_free(&p);
    sched_topo_free(&t);
    return rc;
}
