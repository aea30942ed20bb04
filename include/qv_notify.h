/* qv_notify.h - the kernel's caches after the view changes: a rescan and the invalidations
 * that make the kernel forget the old generation. FUSE-facing. */
#ifndef QV_NOTIFY_H
#define QV_NOTIFY_H

#include "qv_mount.h"

struct fuse_session;

/* Rescan the source (SIGHUP) and make the kernel forget the old tree's names at every folder
 * level; 0 or -errno (logged; the old view then stays). Not from inside a request handler. */
int qv_notify_rescan(struct qv_mount *m, struct fuse_session *se);

#endif
