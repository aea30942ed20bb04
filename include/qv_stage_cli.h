/* qv_stage_cli.h - `qvlmoefs stage`: mount a view in-process and stage its tensors on a
 * CUDA device, with progress and the pinned-copy peak beside it. */
#ifndef QV_STAGE_CLI_H
#define QV_STAGE_CLI_H

/* `qvlmoefs stage ...` (argv[0] = "stage"): the exit status. */
int qv_stage_main(int argc, char **argv);

#endif
