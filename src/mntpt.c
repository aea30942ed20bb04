/* mntpt.c - the mount point's checks, by device and inode number rather than by path text, so
 * a bind mount, a symlink or a relative path reaches the same verdict as the plain path. */
#include "qv_mntpt.h"
#include "qv_util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* Is folder inner the folder outer or below it? Walks inner's ".." chain up to the root;
 * 1 when below, 2 when the same, 0 when not, -errno when a folder cannot be read. */
static int below(const char *inner, const struct stat *outer)
{
	char *p = realpath(inner, NULL);
	int rc = 0, depth = 0;
	struct stat st;

	if (!p)
		return -errno;
	for (;;) {
		char *s;

		if (stat(p, &st)) {
			rc = -errno;
			break;
		}
		if (st.st_dev == outer->st_dev && st.st_ino == outer->st_ino) {
			rc = depth ? 1 : 2;
			break;
		}
		s = strrchr(p, '/');
		if (!s || (s == p && !p[1]))
			break; /* "/" was the last */
		s[s == p] = '\0'; /* "/a/b" -> "/a" -> "/" */
		depth++;
	}
	free(p);
	return rc;
}

/* The kernel says whether a path is the root of a mount (Linux 5.8); older kernels do not
 * say, and then the mount goes ahead as it did before. */
static bool mount_root(const char *path)
{
	struct statx sx;

	if (statx(AT_FDCWD, path, AT_NO_AUTOMOUNT, STATX_BASIC_STATS, &sx))
		return false;
	return (sx.stx_attributes_mask & STATX_ATTR_MOUNT_ROOT) &&
	       (sx.stx_attributes & STATX_ATTR_MOUNT_ROOT);
}

int qv_mntpt_check(const char *source, const char *mountpoint, bool overmount, char *err,
		   size_t errlen)
{
	struct stat ms, ss;
	int rc;

	if (!strncmp(mountpoint, "/dev/fd/", 8))
		return 0;
	if (stat(mountpoint, &ms))
		return qv_err(err, errlen, -errno, "mount point %s: %s", mountpoint, strerror(errno));
	if (!S_ISDIR(ms.st_mode))
		return qv_err(err, errlen, -ENOTDIR,
			      "mount point %s is not a folder: a view is a folder, mount it on one",
			      mountpoint);
	if (stat(source, &ss))
		return qv_err(err, errlen, -errno, "%s: %s", source, strerror(errno));
	rc = below(mountpoint, &ss);
	if (rc == 2)
		return qv_err(err, errlen, -EINVAL,
			      "mount point %s is the source folder itself: the view would hide the "
			      "files it reads; mount it on another folder", mountpoint);
	if (rc == 1)
		return qv_err(err, errlen, -EINVAL,
			      "mount point %s is inside the source %s: the view would show (and a "
			      "rescan read) its own mount; mount it outside the source",
			      mountpoint, source);
	rc = rc < 0 ? rc : below(source, &ms);
	if (rc > 0)
		return qv_err(err, errlen, -EINVAL,
			      "mount point %s holds the source %s: the view would hide the files it "
			      "reads; mount it on a folder outside", mountpoint, source);
	if (rc < 0)
		return qv_err(err, errlen, rc, "%s: %s", mountpoint, strerror(-rc));
	if (!overmount && mount_root(mountpoint))
		return qv_err(err, errlen, -EBUSY,
			      "mount point %s is already a mount point (mounted twice?): unmount it "
			      "first (fusermount3 -u %s), or pass -o overmount to mount over it",
			      mountpoint, mountpoint);
	return 0;
}
