/* qv_fs.h - FUSE low-level glue: thin handlers over the mount context, one reply each. */
#ifndef QV_FS_H
#define QV_FS_H

#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>
#include <pthread.h>
#include <stdatomic.h>

#include "qv_mount.h"

struct qv_fs {
	struct qv_mount *m;
	pthread_key_t tkey; /* per worker thread: its io_uring, scratch and read buffer */
	int direct_io; /* -o direct_io: read() bypasses the page cache */
	int splice;    /* single-run reads reply with the source's pages (off: -o nosplice) */
	unsigned max_read; /* the mount's max_read= (0: none), which INIT must repeat */
	/* fault injection (QVLMOEFS_TEST_FAIL_REPLIES=open=N,entry=N): replies to refuse; and
	 * slow_lookup=MS: each lookup waits that long before its reply (a rescan then comes
	 * while lookups are in flight) */
	atomic_int fail_open, fail_entry;
	int slow_lookup_ms;
};

/* Prepare the glue for mount m; 0 or -errno. */
int qv_fs_init(struct qv_fs *fs, struct qv_mount *m);

/* Undo qv_fs_init (after the session loop has ended). */
void qv_fs_fini(struct qv_fs *fs);

/* Rescan the source (SIGHUP) and make the kernel forget the old tree's names; 0 or -errno
 * (logged; the old view then stays). Not from inside a request handler. */
int qv_fs_rescan(struct qv_fs *fs, struct fuse_session *se);

/* The operations table; userdata must be a struct qv_fs. */
const struct fuse_lowlevel_ops *qv_fs_ops(void);

#endif
