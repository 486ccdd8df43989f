/* sched/topo: discovery, worker plans and row splits on hwloc synthetic
 * topologies with one, two and four NUMA nodes; an XML round trip; the
 * real machine's topology (sanity only); memory binding as a no-op on one
 * node and a named error where it cannot apply. */
#include <hwloc.h>
#include <stdlib.h>
#include <string.h>

#include "sched/topo.h"
#include "tests/unit/harness.h"

static int load_syn(struct sched_topo *t, const char *desc, bool smt)
{
    struct moed_err e = {0};
    struct sched_topo_opts o = {.from = SCHED_TOPO_SYNTHETIC, .arg = desc, .smt = smt};
    int rc = sched_topo_load(t, &o, &e);
    if (rc)
        test_fail(__FILE__, __LINE__, "load '%s': %s", desc, e.msg);
    return rc;
}

/* every worker on a distinct core (distinct OS CPU, and no two on SMT
 * siblings: in these topologies a core's PUs are 2c, 2c+1) */
static void check_distinct(const struct sched_topo_plan *p, int smt_width)
{
    for (int a = 0; a < p->nworkers; a++)
        for (int b = a + 1; b < p->nworkers; b++)
            CHECK_MSG(p->cpus[a] / smt_width != p->cpus[b] / smt_width,
                      "workers %d and %d share a core (cpus %d, %d)", a, b, p->cpus[a], p->cpus[b]);
}

/* row split: covers [0, nrows) in order, node shares aligned and within
 * one block of proportional, per-worker ranges tile their node's rows */
static void check_split(const struct sched_topo_plan *p, int64_t nrows, int align)
{
    struct sched_topo_rows nr[16], wr[256];
    struct moed_err e = {0};
    if (p->nnodes > 16 || p->nworkers > 256) {
        test_fail(__FILE__, __LINE__, "test arrays too small");
        return;
    }
    if (sched_topo_split_rows(p, nrows, align, nr, wr, &e) != 0) {
        test_fail(__FILE__, __LINE__, "split %lld: %s", (long long)nrows, e.msg);
        return;
    }
    int64_t at = 0, sum = 0;
    for (int i = 0; i < p->nnodes; i++) {
        CHECK_EQ(nr[i].begin, at);
        CHECK(nr[i].end >= nr[i].begin);
        CHECK_MSG(nr[i].begin % align == 0 || nr[i].begin == nrows, "node %d begins at %lld", i,
                  (long long)nr[i].begin);
        CHECK_MSG(nr[i].end % align == 0 || nr[i].end == nrows, "node %d ends at %lld", i,
                  (long long)nr[i].end);
        double exact = (double)nrows * p->node_workers[i] / p->nworkers;
        CHECK_MSG(fabs((double)(nr[i].end - nr[i].begin) - exact) <= align + 1e-9,
                  "node %d: %lld rows, proportional share %.1f", i,
                  (long long)(nr[i].end - nr[i].begin), exact);
        if (p->node_workers[i] == 0)
            CHECK_EQ(nr[i].end, nr[i].begin);
        int64_t wat = nr[i].begin;
        for (int j = 0; j < p->node_workers[i]; j++) {
            const struct sched_topo_rows *r = &wr[p->node_first[i] + j];
            CHECK_EQ(r->begin, wat);
            CHECK(r->end >= r->begin);
            CHECK(r->begin % align == 0 || r->begin == nrows);
            wat = r->end;
        }
        if (p->node_workers[i])
            CHECK_EQ(wat, nr[i].end);
        sum += nr[i].end - nr[i].begin;
        at = nr[i].end;
    }
    CHECK_EQ(at, nrows);
    CHECK_EQ(sum, nrows);
}

TEST(topo_one_node_smt)
{
    struct sched_topo t;
    REQUIRE(load_syn(&t, "pack:1 core:8 pu:2", false) == 0);
    CHECK_EQ(t.npackages, 1);
    CHECK_EQ(t.nnodes, 1);
    CHECK_EQ(t.ncores, 8);
    CHECK_EQ(t.npus, 16);
    for (int i = 0; i < t.ncores; i++) {
        CHECK_EQ(t.cores[i].npus, 2);
        CHECK_EQ(t.cores[i].os_cpu, 2 * i); /* first PU of each core */
        CHECK_EQ(t.cores[i].node, 0);
    }
    struct sched_topo_plan p;
    struct moed_err e = {0};
    REQUIRE(sched_topo_plan_init(&p, &t, 0, &e) == 0);
    CHECK_EQ(p.nworkers, 8);
    CHECK_EQ(p.node_workers[0], 8);
    check_distinct(&p, 2);
    check_split(&p, 768, 16);
    int node, ith, nth;
    sched_topo_plan_local(&p, 5, &node, &ith, &nth);
    CHECK_EQ(node, 0);
    CHECK_EQ(ith, 5);
    CHECK_EQ(nth, 8);
    sched_topo_plan_free(&p);

    /* too many: SMT siblings are not offered unless asked for */
    CHECK_EQ(sched_topo_plan_init(&p, &t, 9, &e), MOED_ERANGE);
    CHECK(strstr(e.msg, "9 worker threads") != NULL);
    CHECK_EQ(sched_topo_plan_init(&p, &t, -1, &e), MOED_ERANGE);
    sched_topo_free(&t);

    REQUIRE(load_syn(&t, "pack:1 core:8 pu:2", true) == 0);
    CHECK_EQ(t.ncores, 16);
    REQUIRE(sched_topo_plan_init(&p, &t, 16, &e) == 0);
    CHECK_EQ(p.nworkers, 16);
    sched_topo_plan_free(&p);
    sched_topo_free(&t);
}

TEST(topo_two_nodes)
{
    struct sched_topo t;
    REQUIRE(load_syn(&t, "pack:2 numa:1 core:8 pu:2", false) == 0);
    CHECK_EQ(t.npackages, 2);
    CHECK_EQ(t.nnodes, 2);
    CHECK_EQ(t.ncores, 16);
    CHECK_EQ(t.npus, 32);
    for (int i = 0; i < t.ncores; i++) {
        CHECK_EQ(t.cores[i].node, i / 8);
        CHECK_EQ(t.cores[i].package, i / 8);
    }
    for (int n = 0; n < 2; n++) {
        CHECK_EQ(t.nodes[n].ncores, 8);
        CHECK_EQ(t.nodes[n].package, n);
    }
    struct moed_err e = {0};
    struct sched_topo_plan p;
    REQUIRE(sched_topo_plan_init(&p, &t, 0, &e) == 0);
    CHECK_EQ(p.nworkers, 16);
    CHECK_EQ(p.node_workers[0], 8);
    CHECK_EQ(p.node_workers[1], 8);
    check_distinct(&p, 2);
    for (int w = 0; w < p.nworkers; w++) /* each worker's CPU is on its node */
        CHECK_EQ(p.node[w], p.cpus[w] / 16);
    check_split(&p, 768, 16);
    sched_topo_plan_free(&p);

    /* 3 workers: 2 + 1; 1 worker: node 0 only, node 1 gets no rows */
    REQUIRE(sched_topo_plan_init(&p, &t, 3, &e) == 0);
    CHECK_EQ(p.node_workers[0], 2);
    CHECK_EQ(p.node_workers[1], 1);
    CHECK_EQ(p.node_first[1], 2);
    CHECK_EQ(p.cpus[2], 16);
    check_split(&p, 768, 16);
    check_split(&p, 770, 16); /* not a multiple of the alignment */
    check_split(&p, 5, 16);   /* fewer rows than one block */
    sched_topo_plan_free(&p);
    REQUIRE(sched_topo_plan_init(&p, &t, 1, &e) == 0);
    CHECK_EQ(p.node_workers[0], 1);
    CHECK_EQ(p.node_workers[1], 0);
    check_split(&p, 768, 16);
    sched_topo_plan_free(&p);
    sched_topo_free(&t);
}

TEST(topo_four_nodes_uneven)
{
    struct sched_topo t;
    REQUIRE(load_syn(&t, "pack:2 numa:2 core:4 pu:2", false) == 0);
    CHECK_EQ(t.npackages, 2);
    CHECK_EQ(t.nnodes, 4);
    CHECK_EQ(t.ncores, 16);
    for (int n = 0; n < 4; n++) {
        CHECK_EQ(t.nodes[n].ncores, 4);
        CHECK_EQ(t.nodes[n].package, n / 2);
    }
    struct moed_err e = {0};
    struct sched_topo_plan p;
    REQUIRE(sched_topo_plan_init(&p, &t, 6, &e) == 0);
    CHECK_EQ(p.nworkers, 6);
    /* 2,2,1,1 over the nodes, 3 per package */
    int counts[3] = {0}, pkg[2] = {0};
    for (int n = 0; n < 4; n++) {
        REQUIRE(p.node_workers[n] >= 1 && p.node_workers[n] <= 2);
        counts[p.node_workers[n]]++;
        pkg[n / 2] += p.node_workers[n];
    }
    CHECK_EQ(counts[2], 2);
    CHECK_EQ(counts[1], 2);
    CHECK_EQ(pkg[0], 3);
    CHECK_EQ(pkg[1], 3);
    check_distinct(&p, 2);
    for (int w = 0; w < p.nworkers; w++) {
        CHECK_EQ(p.node[w], p.cpus[w] / 8);
        CHECK(w == 0 || p.node[w] >= p.node[w - 1]); /* grouped by node */
    }
    check_split(&p, 768, 16);
    check_split(&p, 2048, 16);
    sched_topo_plan_free(&p);

    /* 2 workers: one per package, not both on package 0's two nodes */
    REQUIRE(sched_topo_plan_init(&p, &t, 2, &e) == 0);
    CHECK_EQ(p.node_workers[0] + p.node_workers[1], 1);
    CHECK_EQ(p.node_workers[2] + p.node_workers[3], 1);
    sched_topo_plan_free(&p);

    /* all 16: 4 per node, 768 rows -> 192 per node, 48 per worker */
    REQUIRE(sched_topo_plan_init(&p, &t, 0, &e) == 0);
    struct sched_topo_rows nr[4], wr[16];
    REQUIRE(sched_topo_split_rows(&p, 768, 16, nr, wr, &e) == 0);
    for (int n = 0; n < 4; n++) {
        CHECK_EQ(nr[n].begin, 192 * n);
        CHECK_EQ(nr[n].end, 192 * (n + 1));
    }
    for (int w = 0; w < 16; w++)
        CHECK_EQ(wr[w].end - wr[w].begin, 48);
    CHECK_EQ(sched_topo_split_rows(&p, 768, 0, nr, wr, &e), MOED_EINVAL);
    CHECK_EQ(sched_topo_split_rows(&p, -1, 16, nr, wr, &e), MOED_EINVAL);
    sched_topo_plan_free(&p);
    sched_topo_free(&t);
}

TEST(topo_allowed_cpus)
{
    /* as if taskset gave node 1 only two cores (CPUs 16..19 are its
     * cores 0 and 1) and node 0 all its PUs */
    int allow[20];
    for (int i = 0; i < 16; i++)
        allow[i] = i;
    for (int i = 0; i < 4; i++)
        allow[16 + i] = 16 + i;
    struct moed_err e = {0};
    struct sched_topo t;
    struct sched_topo_opts o = {.from = SCHED_TOPO_SYNTHETIC,
                                .arg = "pack:2 numa:1 core:8 pu:2",
                                .allow = allow,
                                .nallow = 20};
    REQUIRE(sched_topo_load(&t, &o, &e) == 0);
    CHECK_EQ(t.ncores, 10);
    CHECK_EQ(t.nodes[0].ncores, 8);
    CHECK_EQ(t.nodes[1].ncores, 2);
    struct sched_topo_plan p;
    REQUIRE(sched_topo_plan_init(&p, &t, 8, &e) == 0);
    CHECK_EQ(p.node_workers[0], 6); /* node 1 capped at its 2 cores */
    CHECK_EQ(p.node_workers[1], 2);
    check_split(&p, 768, 16);
    sched_topo_plan_free(&p);
    sched_topo_free(&t);

    /* only the second PU of core 0: that PU is the worker's */
    int one = 1;
    o.allow = &one;
    o.nallow = 1;
    REQUIRE(sched_topo_load(&t, &o, &e) == 0);
    CHECK_EQ(t.ncores, 1);
    CHECK_EQ(t.cores[0].os_cpu, 1);
    CHECK_EQ(t.cores[0].npus, 1);
    sched_topo_free(&t);

    int bad = 999;
    o.allow = &bad;
    CHECK_EQ(sched_topo_load(&t, &o, &e), MOED_EINVAL);
    CHECK(strstr(e.msg, "999") != NULL);
}

TEST(topo_bad_sources)
{
    struct moed_err e = {0};
    struct sched_topo t;
    struct sched_topo_opts o = {.from = SCHED_TOPO_SYNTHETIC, .arg = "pack:two"};
    CHECK_EQ(sched_topo_load(&t, &o, &e), MOED_EINVAL);
    CHECK(strstr(e.msg, "pack:two") != NULL);
    CHECK(t.hw == NULL && t.cores == NULL);
    sched_topo_free(&t);
    o = (struct sched_topo_opts){.from = SCHED_TOPO_XML, .arg = "/nonexistent/topo.xml"};
    CHECK_EQ(sched_topo_load(&t, &o, &e), MOED_EINVAL);
    CHECK(strstr(e.msg, "/nonexistent/topo.xml") != NULL);
}

TEST(topo_xml_round_trip)
{
    struct sched_topo t;
    REQUIRE(load_syn(&t, "pack:2 numa:2 core:4 pu:2", false) == 0);
    char path[512];
    snprintf(path, sizeof path, "%s/topo-4node.xml", test_tmp_dir());
    REQUIRE(hwloc_topology_export_xml(t.hw, path, 0) == 0);
    sched_topo_free(&t);
    struct moed_err e = {0};
    struct sched_topo_opts o = {.from = SCHED_TOPO_XML, .arg = path};
    REQUIRE(sched_topo_load(&t, &o, &e) == 0);
    CHECK_EQ(t.nnodes, 4);
    CHECK_EQ(t.ncores, 16);
    CHECK_EQ(t.npackages, 2);
    CHECK(!t.this_system);
    sched_topo_free(&t);
}

TEST(topo_this_machine)
{
    struct moed_err e = {0};
    struct sched_topo t;
    struct sched_topo_opts o = {.from = SCHED_TOPO_SYSTEM};
    REQUIRE(sched_topo_load(&t, &o, &e) == 0);
    CHECK(t.this_system);
    CHECK(t.npackages >= 1);
    CHECK(t.nnodes >= 1);
    CHECK(t.ncores >= 1);
    CHECK(t.npus >= t.ncores);
    int sum = 0;
    for (int n = 0; n < t.nnodes; n++)
        sum += t.nodes[n].ncores;
    CHECK_EQ(sum, t.ncores);
    struct sched_topo_plan p;
    REQUIRE(sched_topo_plan_init(&p, &t, 0, &e) == 0);
    CHECK_EQ(p.nworkers, t.ncores);
    check_split(&p, 768, 16);
    sched_topo_plan_free(&p);

    /* binding: works (or is a no-op on one node) for each node's rows of
     * a page-aligned buffer split like an expert */
    size_t len = 1 << 20;
    void *buf = aligned_alloc(4096, len);
    REQUIRE(buf);
    memset(buf, 0, len);
    for (int n = 0; n < t.nnodes; n++) {
        if (t.nodes[n].ncores == 0)
            continue;
        int rc = sched_topo_membind(&t, (char *)buf + (len / t.nnodes) * n, len / t.nnodes, n, &e);
        CHECK_MSG(rc == 0, "bind to node %d: %s", n, e.msg);
    }
    free(buf);
    sched_topo_free(&t);
}

TEST(topo_membind)
{
    struct moed_err e = {0};
    struct sched_topo t;
    static char area[8192];
    /* one node: a no-op that succeeds, even for a synthetic topology */
    REQUIRE(load_syn(&t, "pack:1 core:8 pu:2", false) == 0);
    CHECK_EQ(sched_topo_membind(&t, area, sizeof area, 0, &e), 0);
    CHECK_EQ(sched_topo_membind(&t, area, sizeof area, 1, &e), MOED_EINVAL);
    CHECK(strstr(e.msg, "node 1") != NULL);
    sched_topo_free(&t);
    /* several nodes, not this machine: refused, naming range and node */
    REQUIRE(load_syn(&t, "pack:2 numa:1 core:8 pu:2", false) == 0);
    CHECK_EQ(sched_topo_membind(&t, area, sizeof area, 1, &e), MOED_EUNSUPPORTED);
    CHECK(strstr(e.msg, "+8192") != NULL && strstr(e.msg, "node 1") != NULL);
    sched_topo_free(&t);
}
