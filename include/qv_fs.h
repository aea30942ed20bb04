/* qv_fs.h - FUSE low-level glue: thin handlers over the mount context, one reply each. */
#ifndef QV_FS_H
#define QV_FS_H

#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>
#include <pthread.h>
#include <stdatomic.h>

#include "qv_mount.h"
#include "qv_opts.h"

struct qv_fs {
	struct qv_mount *m;
	int direct_io; /* -o direct_io: read() bypasses the page cache */
	int splice;    /* single-run reads reply with the source's pages (off: -o nosplice) */
	unsigned max_read; /* the mount's max_read= (0: none), which INIT must repeat */
	struct fuse_session *se; /* set once the session exists: lookups' late invalidations */
	/* tests only (struct qv_glue_opts): replies still to refuse; each lookup's wait before
	 * its reply */
	atomic_int fail_open, fail_entry;
	int slow_lookup_ms;
};

/* Prepare the glue for mount m, answering as g says; 0 or -errno. */
int qv_fs_init(struct qv_fs *fs, struct qv_mount *m, const struct qv_glue_opts *g);

/* The operations table; userdata must be a struct qv_fs. */
const struct fuse_lowlevel_ops *qv_fs_ops(void);

#endif
