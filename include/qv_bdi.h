/* qv_bdi.h - the mount's backing-device readahead, which FUSE caps at 128 KiB by default. */
#ifndef QV_BDI_H
#define QV_BDI_H

/* Set read_ahead_kb of the filesystem mounted at mountpoint (needs root); 0 or -errno. */
int qv_bdi_set_readahead(const char *mountpoint, unsigned kb);

#endif
