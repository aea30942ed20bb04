/* qv_scan.h - the source tree as the view will show it, after the symlink policy. FUSE-free. */
#ifndef QV_SCAN_H
#define QV_SCAN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>

#include "qv_util.h"

/* One directory or regular file; kids are indexes into qv_scan.n, sorted by name. */
struct qv_snode {
	char *name;
	char *path; /* absolute, links resolved */
	char *rel;  /* relative to the source root ("" for the root) */
	struct stat st;
	/* st_mode narrowed by the search bits of every folder on the way to the file (for a link,
	 * on the way to its target as well): what the view may grant, relative to st_uid/st_gid */
	mode_t vmode;
	uint32_t parent; /* the root is its own parent */
	uint32_t *kids;
	size_t nkids;
};

struct qv_scan {
	char *root;	  /* realpath of the source */
	char *allow_root; /* links may resolve under this: root, or the HF cache repository */
	struct qv_snode *n;
	size_t nn;
};

/* Walk src; links are followed when they resolve inside the source (or its Hugging Face cache
 * repository), anything else is left out and logged once. 0 or -errno with a reason in err. */
int qv_scan_tree(const char *src, struct qv_scan *out, char *err, size_t errlen);

/* Open scan node n's file for reading as the file the scan saw: never through a link swapped
 * in since (O_NOFOLLOW), never blocking on a FIFO, and only when it is still a regular file
 * with the scanned device and inode. The fd (O_CLOEXEC, blocking) with its fstat in st, or
 * -ESTALE / -errno with a reason in why. */
int qv_scan_open(const struct qv_snode *n, struct stat *st, char *why, size_t wl);

/* Read scan node n's file whole (at most max bytes) into out, opened as qv_scan_open does;
 * 0 or -errno with a reason in why. */
int qv_scan_read(const struct qv_snode *n, size_t max, struct qv_buf *out, char *why, size_t wl);

/* The node whose path relative to the root is rel, or 0 (the root) when there is none. */
uint32_t qv_scan_find(const struct qv_scan *s, const char *rel);

/* Free a scan. */
void qv_scan_free(struct qv_scan *s);

#endif
