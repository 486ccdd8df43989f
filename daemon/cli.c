/* Shared pieces of the one-shot commands (see cli.h). */
#include "daemon/cli.h"
#include "kernels/cuda/kcuda.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#include "model/model.h"
#include "model/tok.h"

double cli_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int cli_parse_long(const char *cmd, const char *flag, const char *s, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) {
        fprintf(stderr, "moed %s: %s '%s': expected an integer in %ld..%ld\n", cmd, flag, s, lo,
                hi);
        return -1;
    }
    *out = v;
    return 0;
}

char *cli_read_all(FILE *f, size_t *len)
{
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap + 1);
    while (buf) {
        n += fread(buf + n, 1, cap - n, f);
        if (n < cap)
            break;
        char *nb = cap <= SIZE_MAX / 2 - 1 ? realloc(buf, cap * 2 + 1) : NULL;
        if (!nb) {
            free(buf);
            errno = ENOMEM;
            return NULL;
        }
        buf = nb;
        cap *= 2;
    }
    if (!buf) {
        errno = ENOMEM;
        return NULL;
    }
    if (ferror(f)) {
        int err = errno ? errno : EIO;
        free(buf);
        errno = err;
        return NULL;
    }
    buf[n] = 0;
    *len = n;
    return buf;
}

int cli_model_open(const char *cmd, const char *path, struct model *m, struct tok **tok)
{
    struct moed_err e = {0};
    if (model_open(m, path, &e)) {
        fprintf(stderr, "moed %s: %s\n", cmd, e.msg);
        return 1;
    }
    if (tok_load(tok, m->gguf, &e)) {
        fprintf(stderr, "moed %s: %s: tokenizer: %s\n", cmd, path, e.msg);
        return 1;
    }
    if (*tok_warning(*tok))
        fprintf(stderr, "moed %s: %s: tokenizer: %s\n", cmd, path, tok_warning(*tok));
    return 0;
}

void cli_describe_gpu(int dev, int no_graph, char *buf, size_t n)
{
    struct kcuda_device d;
    struct moed_err e = {0};
    const char *g = no_graph ? ", no CUDA graphs" : ", CUDA graphs for decode";
    if (kcuda_device_info(dev, &d, &e))
        snprintf(buf, n, "GPU %d (%s)%s", dev, e.msg, g);
    else
        snprintf(buf, n, "GPU %d: %s, sm_%d%d, %d SMs, %.1f GiB%s", dev, d.name, d.cc_major,
                 d.cc_minor, d.sm_count, d.mem_total / 1073741824.0, g);
}
