/* Small pieces the one-shot commands (moed run, perplexity, tokenize) share. */
#ifndef MOED_DAEMON_CLI_H
#define MOED_DAEMON_CLI_H

#include <stddef.h>
#include <stdio.h>

struct model;
struct tok;

/* Seconds on the monotonic clock. */
double cli_now_s(void);

/* A decimal integer in lo..hi given to flag; on error prints
 * "moed CMD: FLAG 'S': expected an integer in LO..HI" and returns -1. */
int cli_parse_long(const char *cmd, const char *flag, const char *s, long lo, long hi, long *out);

/* Read all of f (NUL-terminated; *len excludes the NUL); NULL with errno set
 * on failure. */
char *cli_read_all(FILE *f, size_t *len);

/* Open the model at path and its tokenizer; print any tokenizer warning.
 * On failure print "moed CMD: ..." and return 1: what was opened is left for
 * the caller's cleanup (model_close and tok_free accept what is zeroed). */
int cli_model_open(const char *cmd, const char *path, struct model *m, struct tok **tok);

/* "GPU N: NAME, sm_XY, N SMs, X GiB" and ", no CUDA graphs" / ", CUDA
 * graphs for decode": which device --gpu runs on (the error when the device
 * cannot be queried). */
void cli_describe_gpu(int dev, int no_graph, char *buf, size_t n);

#endif
