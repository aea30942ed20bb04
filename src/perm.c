/* perm.c - the view's permission rules, kept pure so that the scan, the tree and the FUSE
 * handlers share one definition. */
#include "qv_perm.h"

#include <errno.h>
#include <sys/stat.h>
#include <unistd.h>

/* The three bits of class c (0 owner, 1 group, 2 others) of mode. */
static unsigned cls(mode_t mode, int c)
{
	return (mode >> (6 - 3 * c)) & 7;
}

/* The rule: a caller is in exactly one class of the node (owner if its uid is the node's, else
 * group if it is in the node's group, else others) but may be in any class of the source whose
 * membership differs: a caller in the node's group is the source's owner when the owners
 * differ, and in or out of the source's group when the groups differ. Each class of the node
 * keeps the bits that every class of the source it may fall into grants. With one owner and
 * one group this is a plain AND. */
mode_t qv_perm_and(uid_t uid, gid_t gid, mode_t mode, uid_t s_uid, gid_t s_gid, mode_t s_mode)
{
	unsigned u = cls(s_mode, 0), g = cls(s_mode, 1), o = cls(s_mode, 2);
	bool su = s_uid == uid, sg = s_gid == gid;
	unsigned as_owner = su ? u : g & o;
	unsigned as_group = (su ? 7 : u) & g & (sg ? 7 : o);
	unsigned as_other = (su ? 7 : u) & (sg ? 7 : g) & o;

	return mode & (mode_t)(as_owner << 6 | as_group << 3 | as_other) & QV_PERM_BITS;
}

mode_t qv_perm_search(mode_t m)
{
	return (m & S_IXUSR ? 0700 : 0) | (m & S_IXGRP ? 0070 : 0) | (m & S_IXOTH ? 0007 : 0);
}

int qv_perm_access(uid_t uid, mode_t mode, bool dir, uid_t caller, bool in_group, int mask)
{
	unsigned want = (mask & R_OK ? 4u : 0) | (mask & X_OK ? 1u : 0), have;

	if (mask & W_OK)
		return -EROFS;
	if (caller == 0)
		return (mask & X_OK) && !dir && !(mode & 0111) ? -EACCES : 0;
	if (caller == uid)
		have = (mode >> 6) & 7;
	else if (in_group)
		have = (mode >> 3) & 7;
	else
		have = mode & 7;
	return (have & want) == want ? 0 : -EACCES;
}
