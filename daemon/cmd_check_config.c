/*
 * moed check-config [FILE] [flags]: load a configuration the way `moed
 * serve` would (FILE, then MOED_* variables, then the flags), check it, and
 * print either "FILE: ok" and the effective configuration, or every error.
 *
 * moed config --help | --example: the option help and moed.conf.example,
 * both printed from the option table.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conf/conf.h"
#include "daemon/cmds.h"

static void check_usage(FILE *f)
{
    fprintf(f, "usage: moed check-config [FILE] [-c FILE] [--syntax-only] [-q] [OPTION FLAGS]\n"
               "\n"
               "Loads FILE (or the -c FILE), then MOED_* environment variables, then the\n"
               "option flags, as `moed serve` does, and checks every value.  Unless\n"
               "--syntax-only is given it also checks that the model and the other files\n"
               "named exist and can be used by this user.  Prints \"FILE: ok\" and the\n"
               "effective configuration (key = value (source)), or each error and exits 1.\n"
               "  --syntax-only  do not look at the files the options name\n"
               "  -q, --quiet    print only \"FILE: ok\" or the errors\n"
               "\n");
}

int cmd_check_config(int argc, char **argv)
{
    bool syntax_only = false, quiet = false;
    /* Take out this command's own flags; the rest are options. */
    char **args = calloc((size_t)argc + 3, sizeof *args);
    char **rest = calloc((size_t)argc + 3, sizeof *rest);
    if (!args || !rest) {
        free(args);
        free(rest);
        fprintf(stderr, "moed check-config: out of memory\n");
        return 1;
    }
    int n = 0;
    args[n++] = argv[0];
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--"))
            break;
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            check_usage(stdout);
            conf_print_help(stdout);
            free(args);
            free(rest);
            return 0;
        }
    }
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--syntax-only"))
            syntax_only = true;
        else if (!strcmp(argv[i], "-q") || !strcmp(argv[i], "--quiet"))
            quiet = true;
        else
            args[n++] = argv[i];
    }

    struct moed_config c;
    struct conf_diag d = {0};
    int n_rest = 0;
    int rc = conf_load(&c, n, args, rest, &n_rest, &d);
    const char *file = c.file;
    if (n_rest > 1 || (n_rest == 1 && file)) {
        fprintf(stderr, "moed check-config: give one config file (found %s%s%s)\n",
                file ? file : rest[0], file ? " and " : ", ", file ? rest[0] : rest[1]);
        conf_free(&c);
        conf_diag_free(&d);
        free(args);
        free(rest);
        return 2;
    }
    if (n_rest == 1) {
        /* A positional FILE: load again with it as -c FILE so that the
         * file comes first and env and flags override it. */
        conf_free(&c);
        conf_diag_free(&d);
        memmove(args + 3, args + 1, (size_t)(n - 1) * sizeof *args);
        args[1] = "--config";
        args[2] = rest[0];
        for (int i = 3; i < n + 2; i++)
            if (args[i] == rest[0]) { /* drop it from the positionals */
                memmove(args + i, args + i + 1, (size_t)(n + 2 - i - 1) * sizeof *args);
                break;
            }
        n += 1;
        rc = conf_load(&c, n, args, rest, &n_rest, &d);
        file = c.file;
    }
    if (!rc && !syntax_only)
        rc = conf_check_files(&c, &d);
    const char *name = file ? file : "(no config file)";
    conf_diag_print(stderr, &d);
    if (rc || d.errors) {
        fprintf(stderr, "%s: %d error%s\n", name, d.errors, d.errors == 1 ? "" : "s");
    } else {
        printf("%s: ok\n", name);
        if (!quiet)
            conf_print_effective(stdout, &c);
    }
    int status = rc || d.errors ? 1 : 0;
    conf_free(&c);
    conf_diag_free(&d);
    free(args);
    free(rest);
    return status;
}

int cmd_config(int argc, char **argv)
{
    if (argc == 2 && !strcmp(argv[1], "--example")) {
        conf_write_example(stdout);
        return 0;
    }
    if (argc == 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        printf("usage: moed config --help | --example\n"
               "  --help     every option: flag, key, environment variable, default, help\n"
               "  --example  moed.conf.example: every option commented out at its default\n"
               "`moed check-config FILE` checks a configuration.\n\n");
        conf_print_help(stdout);
        return 0;
    }
    fprintf(stderr, "usage: moed config --help | --example\n");
    return 2;
}
