/* bdi.c - raise the mount's readahead. The kernel sizes buffered FUSE reads by the readahead
 * window (128 KiB by default, and the daemon may only lower it at INIT); 1 MiB requests and a
 * deeper window for mmap readers need /sys/class/bdi/MAJ:MIN/read_ahead_kb, which only root
 * may write. The device number comes from /proc/self/mountinfo: a stat() of the mount point
 * would need this very daemon to answer, and it is not serving yet. */
#include "qv_bdi.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int qv_bdi_set_readahead(const char *mountpoint, unsigned kb)
{
	char line[8192], dev[64] = "", path[PATH_MAX], *real = realpath(mountpoint, NULL);
	FILE *f;
	int rc = -ENOENT;

	if (!real)
		return -errno;
	f = fopen("/proc/self/mountinfo", "r");
	if (!f) {
		free(real);
		return -errno;
	}
	/* "ID PARENT MAJ:MIN ROOT MOUNTPOINT ..."; the last match is the newest mount there */
	while (fgets(line, sizeof(line), f)) {
		char d[64], mp[PATH_MAX];

		if (sscanf(line, "%*u %*u %63s %*s %4095s", d, mp) == 2 && strcmp(mp, real) == 0)
			snprintf(dev, sizeof(dev), "%s", d);
	}
	fclose(f);
	free(real);
	if (!dev[0])
		return rc;
	snprintf(path, sizeof(path), "/sys/class/bdi/%s/read_ahead_kb", dev);
	f = fopen(path, "w");
	if (!f)
		return -errno;
	rc = fprintf(f, "%u\n", kb) < 0 ? -EIO : 0;
	if (fclose(f) && !rc)
		rc = -errno;
	return rc;
}
