/* The subcommands of the one `moed` binary.  Each lives in daemon/cmd_*.c,
 * takes argc/argv after the command name (argv[0] is the command) and
 * returns the process exit status. */
#ifndef MOED_DAEMON_CMDS_H
#define MOED_DAEMON_CMDS_H

int cmd_serve(int argc, char **argv);         /* moed serve -m MODEL [options] */
int cmd_info(int argc, char **argv);          /* moed info FILE */
int cmd_tokenize(int argc, char **argv);      /* moed tokenize -m FILE < text */
int cmd_run(int argc, char **argv);           /* moed run -m FILE -p PROMPT [-n N] [...] */
int cmd_perplexity(int argc, char **argv);    /* moed perplexity -m FILE -f TEXT [...] */
int cmd_bench(int argc, char **argv);         /* moed bench -m FILE [-p N,...] [-n N] [...] */
int cmd_bench_kernels(int argc, char **argv); /* moed bench-kernels [...] */
int cmd_version(int argc, char **argv);       /* moed version */
int cmd_check_config(int argc, char **argv);  /* moed check-config [FILE] [flags] */
int cmd_config(int argc, char **argv);        /* moed config --help | --example */
int cmd_cache_sim(int argc, char **argv);     /* moed cache-sim TRACE [...] */
int cmd_topology(int argc, char **argv);      /* moed topology [--synthetic DESC] [--threads N] */
int cmd_calibrate(int argc, char **argv);     /* moed calibrate -m FILE [--gpu N] | --show FILE */

#endif
