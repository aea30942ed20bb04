/* qv_perm.h - the permission rules of the view as pure functions of owners and modes: how a
 * source's folders narrow what a view node may grant, and what a caller may do with a node.
 * No I/O, no FUSE: the layers above decide where the owners and modes come from. */
#ifndef QV_PERM_H
#define QV_PERM_H

#include <stdbool.h>
#include <sys/types.h>

/* The read and search bits (0555) a view may show: never write, set-id or sticky bits. */
#define QV_PERM_BITS 0555

/* A node owned by (uid, gid) with mode, narrowed to what a source owned by (s_uid, s_gid) with
 * s_mode also allows: the result grants no caller more than both did. The node keeps its
 * owner and group; when the source's differ, each class keeps only the bits the source grants
 * to every caller that class may hold (whose group membership is unknown here). */
mode_t qv_perm_and(uid_t uid, gid_t gid, mode_t mode, uid_t s_uid, gid_t s_gid, mode_t s_mode);

/* What a folder on the way to a source lets through: every bit of each class that may search
 * it (a class that cannot search it reaches nothing below it), nothing of the others. */
mode_t qv_perm_search(mode_t folder_mode);

/* What the kernel's default_permissions check decides for a caller (uid caller, in_group: in
 * the node's group) asking mask (R_OK, W_OK, X_OK) of a node owned by uid with mode: 0,
 * -EACCES, or -EROFS for any write (the view is read-only). Root reads everything and
 * executes what anyone may. */
int qv_perm_access(uid_t uid, mode_t mode, bool dir, uid_t caller, bool in_group, int mask);

#endif
