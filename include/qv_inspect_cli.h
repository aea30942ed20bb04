/* qv_inspect_cli.h - `qvlmoefs inspect`: build a view in-process, without mounting, and print
 * its tree, keys and where each key's bytes come from. */
#ifndef QV_INSPECT_CLI_H
#define QV_INSPECT_CLI_H

/* `qvlmoefs inspect ...` (argv[0] = "inspect"): the exit status. */
int qv_inspect_main(int argc, char **argv);

#endif
