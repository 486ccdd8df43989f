/*
 * moed calibrate -m FILE [--gpu N] [--threads N] [-o cost.txt] [--seconds S]
 * moed calibrate --show FILE
 *
 * Measures the hybrid engine's cost model (sched/cost.h) on this machine
 * with sched/calib.h: per expert type the CPU executor's time against the
 * token count on a pool of --threads workers, and with --gpu the kernels'
 * time against the token count (one expert a launch, the decode segment
 * gpu_us/_tok; and an expert's share of tile-64 launches of many experts,
 * the prefill segment gpu_mma_us/_tok), H2D loads against bytes, CPU and
 * H2D rates while both run, and the per-side overheads.  The model goes to -o FILE
 * (sched_cost_save's format) or stdout; every measurement and fit is printed
 * on stderr.  --show loads a file (sched_cost_load) and prints it.
 * Exit status 0, 1 for a runtime error (one line), 2 for a usage error.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "daemon/cli.h"
#include "daemon/cmds.h"
#include "kernels/cpu/isa.h"
#include "model/model.h"
#include "sched/calib.h"
#include "sched/cost.h"
#include "sched/pool.h"

static const char usage[] =
    "usage: moed calibrate -m FILE [options]\n"
    "       moed calibrate --show FILE\n"
    "\n"
    "Measure the hybrid engine's cost model on this machine: per expert type, the CPU\n"
    "executor's time for one expert against the token count (1..64) on the worker pool;\n"
    "with --gpu also the GPU kernels' time (one expert a launch, and per expert in tile-64\n"
    "launches of many experts, as prefill runs them), H2D loads against bytes, CPU and H2D\n"
    "rates while both run, and the per-layer side overheads. Writes the model (moed's cost\n"
    "file format) to -o FILE or stdout, and every measurement and fit on stderr. Without\n"
    "--gpu the GPU figures keep the built-in defaults and the file says calibrated = 0.\n"
    "\n"
    "  -m, --model FILE     GGUF model whose expert types are measured\n"
    "  --gpu N              also measure CUDA device N\n"
    "  -t, --threads N      CPU worker threads (default: online CPUs)\n"
    "  -o FILE              write the cost model here (default: stdout)\n"
    "  --seconds S          time budget of the CPU sweep; the GPU part takes about as long\n"
    "                       (default 6; page-in and GPU set-up not counted)\n"
    "  --show FILE          load a cost model file and print it\n"
    "  -h, --help           this text\n";

struct cal_args {
    const char *model, *out, *show;
    long gpu, threads;
    double seconds;
};

/* 0, 2 (usage error printed), -1 after --help. */
static int parse_args(int argc, char **argv, struct cal_args *a)
{
    a->gpu = -1;
    a->seconds = 6;
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i];
        if (!strcmp(f, "-h") || !strcmp(f, "--help")) {
            fputs(usage, stdout);
            return -1;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "moed calibrate: %s needs a value (try --help)\n", f);
            return 2;
        }
        const char *v = argv[++i];
        int rc = 0;
        if (!strcmp(f, "-m") || !strcmp(f, "--model"))
            a->model = v;
        else if (!strcmp(f, "-o"))
            a->out = v;
        else if (!strcmp(f, "--show"))
            a->show = v;
        else if (!strcmp(f, "-t") || !strcmp(f, "--threads"))
            rc = cli_parse_long("calibrate", f, v, 1, 4096, &a->threads);
        else if (!strcmp(f, "--gpu"))
            rc = cli_parse_long("calibrate", f, v, 0, 63, &a->gpu);
        else if (!strcmp(f, "--seconds")) {
            char *end;
            errno = 0;
            a->seconds = strtod(v, &end);
            if (errno || end == v || *end || !isfinite(a->seconds) || a->seconds < 0.01 ||
                a->seconds > 600) {
                fprintf(stderr, "moed calibrate: --seconds '%s': expected a number in 0.01..600\n",
                        v);
                rc = -1;
            }
        } else {
            fprintf(stderr, "moed calibrate: unknown argument '%s' (try --help)\n", f);
            return 2;
        }
        if (rc)
            return 2;
    }
    if (a->show && (a->model || a->out || a->gpu >= 0 || a->threads)) {
        fprintf(stderr, "moed calibrate: --show FILE takes no other option\n");
        return 2;
    }
    if (!a->show && !a->model) {
        fprintf(stderr, "moed calibrate: -m FILE (or --show FILE) is required (try --help)\n");
        return 2;
    }
    return 0;
}

static int show(const char *path)
{
    struct sched_cost c;
    struct moed_err e = {0};
    if (sched_cost_load(&c, path, &e)) {
        fprintf(stderr, "moed calibrate: %s\n", e.msg);
        return 1;
    }
    printf("cost model %s: %d expert type%s\n", path, c.ntypes, c.ntypes == 1 ? "" : "s");
    calib_print_cost(&c, stdout);
    return 0;
}

/* sched_cost_save into a temporary file, copied to stdout. */
static int save_stdout(const struct sched_cost *c, struct moed_err *e)
{
    char tmp[] = "/tmp/moed-calibrate-XXXXXX";
    int fd = mkstemp(tmp);
    if (fd < 0)
        return moed_err_set(e, MOED_EIO, "temporary file: %s", strerror(errno));
    close(fd);
    int rc = sched_cost_save(c, tmp, e);
    FILE *f = rc ? NULL : fopen(tmp, "rb");
    if (!rc && !f)
        rc = moed_err_set(e, MOED_EIO, "%s: %s", tmp, strerror(errno));
    if (f) {
        char buf[4096];
        size_t n;
        while ((n = fread(buf, 1, sizeof buf, f)) > 0)
            if (fwrite(buf, 1, n, stdout) != n) {
                rc = moed_err_set(e, MOED_EIO, "stdout: write failed");
                break;
            }
        fclose(f);
        if (!rc && fflush(stdout) != 0)
            rc = moed_err_set(e, MOED_EIO, "stdout: write failed");
    }
    unlink(tmp);
    return rc;
}

int cmd_calibrate(int argc, char **argv)
{
    struct cal_args a = {0};
    int rc = parse_args(argc, argv, &a);
    if (rc)
        return rc < 0 ? 0 : rc;
    if (a.show)
        return show(a.show);

    struct model m = {0};
    struct sched_pool *pool = NULL;
    struct calib_result *r = calloc(1, sizeof *r);
    struct moed_err e = {0};
    rc = 1;
    if (!r) {
        fprintf(stderr, "moed calibrate: out of memory\n");
        return 1;
    }
    if (model_open(&m, a.model, &e)) {
        fprintf(stderr, "moed calibrate: %s\n", e.msg);
        goto out;
    }
    if (calib_types(&m, r, &e)) {
        fprintf(stderr, "moed calibrate: %s: %s\n", a.model, e.msg);
        goto out;
    }
    if (sched_pool_init(&pool, &(struct sched_pool_opts){.nthreads = (int)a.threads}, &e)) {
        fprintf(stderr, "moed calibrate: %s\n", e.msg);
        goto out;
    }
    fprintf(stderr, "calibrate: %s: %d layers x %d experts, %d expert type%s; CPU %d threads, %s%s\n",
            a.model, (int)m.hp.n_layer, (int)m.hp.n_expert, r->ntypes, r->ntypes == 1 ? "" : "s",
            sched_pool_size(pool), kern_isa_describe(), a.gpu >= 0 ? "" : "; no --gpu");
    double t0 = cli_now_s();
    if (calib_cpu(&m, pool, a.seconds, r, stderr, &e)) {
        fprintf(stderr, "moed calibrate: %s\n", e.msg);
        goto out;
    }
    double t1 = cli_now_s();
    if (a.gpu >= 0 && calib_gpu(&m, (int)a.gpu, pool, a.seconds, r, stderr, &e)) {
        /* the CUDA runtime's messages name CUDA; make sure ours do too */
        fprintf(stderr, "moed calibrate: --gpu %ld: %s%s\n", a.gpu,
                strstr(e.msg, "CUDA") ? "" : "CUDA: ", e.msg);
        goto out;
    }
    double t2 = cli_now_s();
    struct sched_cost c;
    calib_to_cost(r, &c);
    fprintf(stderr, "\n");
    calib_print(r, stderr);
    if (a.gpu >= 0)
        fprintf(stderr, "\ncost model (CPU part %.1f s, GPU part %.1f s):\n", t1 - t0, t2 - t1);
    else
        fprintf(stderr, "\ncost model (CPU part %.1f s):\n", t1 - t0);
    calib_print_cost(&c, stderr);
    if (a.out ? sched_cost_save(&c, a.out, &e) : save_stdout(&c, &e)) {
        fprintf(stderr, "moed calibrate: %s\n", e.msg);
        goto out;
    }
    if (a.out)
        fprintf(stderr, "calibrate: wrote %s (calibrated = %d)\n", a.out, c.calibrated ? 1 : 0);
    rc = 0;
out:
    sched_pool_free(pool);
    model_close(&m);
    free(r);
    return rc;
}
