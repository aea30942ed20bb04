/* notify.c - what the kernel is told when the view changes under it: after a rescan, every
 * name the old generation gave it is dropped, so it forgets the old nodes (which frees them)
 * and looks the new ones up. FUSE-facing, beside fs.c, which answers requests. */
#define FUSE_USE_VERSION 312
#include "qv_notify.h"
#include "qv_util.h"

#include <fuse_lowlevel.h>
#include <string.h>

/* Drop the kernel's entries for every name of folder top, so lookups reach the new tree
 * (after a rescan: the cached negative entries of the new root). */
static void inval_names(struct qv_mount *m, struct fuse_session *se, const struct qv_node *top)
{
	for (size_t i = 0; top && i < top->nkids; i++) {
		const struct qv_node *n = qv_tree_node(&m->tree, top->kids[i]);

		if (n)
			fuse_lowlevel_notify_inval_entry(se, FUSE_ROOT_ID, n->name, strlen(n->name));
	}
}

/* Drop every entry the kernel may hold of old root top's generation, at every folder level,
 * deepest first: an entry in use (an open file, a working folder) is then unhashed, so the
 * kernel forgets it, and the generation is freed, as soon as it is closed. Only the root's
 * names would leave the entries below them cached for a day behind their open files. */
static void inval_generation(struct qv_mount *m, struct fuse_session *se, const struct qv_node *top)
{
	struct qv_buf b = { 0 };
	uint64_t dir;

	if (qv_mount_names(m, top, &b)) {
		qv_buf_free(&b); /* its last record may be cut short */
		qv_log("rescan: out of memory listing the old view's names; the kernel forgets "
		       "those below the root only when it needs the memory");
		inval_names(m, se, top);
	}
	for (size_t at = 0; at < b.len;) {
		const char *name = b.p + at + sizeof(dir);
		size_t len = strlen(name);

		memcpy(&dir, b.p + at, sizeof(dir));
		/* -ENOENT for the many the kernel never looked up: nothing to drop */
		fuse_lowlevel_notify_inval_entry(se, dir, name, len);
		at += sizeof(dir) + len + 1;
	}
	qv_buf_free(&b);
}

int qv_notify_rescan(struct qv_mount *m, struct fuse_session *se)
{
	struct qv_node *old = qv_mount_get(m, FUSE_ROOT_ID), *now; /* held while its names go */
	char err[QV_ERRLEN];
	int rc = qv_mount_rescan(m, err, sizeof(err));

	if (rc) {
		qv_log("rescan failed, the view stays as it was: %s", err);
	} else {
		inval_generation(m, se, old);
		now = qv_mount_get(m, FUSE_ROOT_ID);
		inval_names(m, se, now); /* cached negative entries */
		qv_mount_drop(m, now, 1);
		fuse_lowlevel_notify_inval_inode(se, FUSE_ROOT_ID, 0, 0);
		qv_log("rescanned the source: the view shows it as it is now");
	}
	if (old)
		qv_mount_drop(m, old, 1);
	return rc;
}

