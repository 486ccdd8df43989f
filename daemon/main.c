/*
 * moed: one binary, one subcommand per user task.  main() only dispatches;
 * each command parses its own flags and returns an exit status.
 */
#include <stdio.h>
#include <string.h>

#include "daemon/cmds.h"

static const struct {
    const char *name;
    int (*fn)(int, char **);
    const char *help;
} commands[] = {
    {"serve", cmd_serve, "serve -m FILE [...]       serve a model over HTTP (OpenAI-compatible API)"},
    {"info", cmd_info, "info FILE                 show a GGUF model's metadata, tensors and sizes"},
    {"tokenize", cmd_tokenize, "tokenize -m FILE [...]    read text on stdin, print token ids"},
    {"run", cmd_run, "run -m FILE -p PROMPT [...] generate text from a prompt (CPU or --gpu), print speeds"},
    {"perplexity", cmd_perplexity, "perplexity -m FILE -f TEXT [...] perplexity over a text file in fixed windows"},
    {"bench", cmd_bench, "bench -m FILE [...]       prompt and generation throughput (tok/s), like llama-bench"},
    {"bench-kernels", cmd_bench_kernels, "bench-kernels [...]       CPU matvec/matmul throughput per type"},
    {"version", cmd_version, "version                   build, CPU ISA and CUDA status"},
    {"check-config", cmd_check_config, "check-config [FILE] [...] check a configuration, print the effective one"},
    {"config", cmd_config, "config --help|--example   every option's help; the example moed.conf"},
    {"cache-sim", cmd_cache_sim, "cache-sim TRACE [...]     replay a routing trace through the expert cache policies"},
    {"calibrate", cmd_calibrate, "calibrate -m FILE [...]   measure the hybrid engine's cost model (CPU, --gpu)"},
    {"topology", cmd_topology, "topology [...]            CPU packages, NUMA nodes, cores; worker placement"},
};

static void usage(FILE *f)
{
    fprintf(f, "usage: moed COMMAND [ARGS]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  %s\n", commands[i].help);
    fprintf(f, "\n`moed COMMAND --help` describes a command's options.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "--version"))
        return cmd_version(argc - 1, argv + 1);
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(argv[1], commands[i].name))
            return commands[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "moed: unknown command '%s' (try `moed --help`)\n", argv[1]);
    return 2;
}
