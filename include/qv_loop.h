/* qv_loop.h - running a FUSE session with the project's worker setup. */
#ifndef QV_LOOP_H
#define QV_LOOP_H

#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>

/* Serve se until it is unmounted or signalled, one thread or libfuse's worker pool as o says
 * (16 idle workers kept unless o->max_idle_threads is given); 0 when it ended cleanly
 * (unmounted, SIGTERM, SIGINT), else -errno. */
int qv_loop_run(struct fuse_session *se, const struct fuse_cmdline_opts *o);

#endif
