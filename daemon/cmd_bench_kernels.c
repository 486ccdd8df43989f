/* Placeholder while this command is being written; replaced in this series. */
#include <stdio.h>

#include "daemon/cmds.h"

int cmd_bench_kernels(int argc, char **argv)
{
    (void)argc;
    fprintf(stderr, "moed %s: not built yet\n", argv[0]);
    return 1;
}
