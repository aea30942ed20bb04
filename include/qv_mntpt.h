/* qv_mntpt.h - checks on the mount point before mounting: mistakes that would otherwise mount
 * with exit 0 and fail later (a file, a folder already mounted on, the source itself, a folder
 * inside the source or holding it) are refused with one line. FUSE-free. */
#ifndef QV_MNTPT_H
#define QV_MNTPT_H

#include <stdbool.h>
#include <stddef.h>

/* May a view of folder source be mounted on mountpoint? 0, or -errno with one line in err
 * naming the mount point and the reason. overmount allows a folder that is already a mount
 * point (the new view then hides the old). A mountpoint of the form /dev/fd/N (a descriptor
 * of /dev/fuse handed over by mount(8) or a container runtime) is not checked. */
int qv_mntpt_check(const char *source, const char *mountpoint, bool overmount, char *err,
		   size_t errlen);

#endif
