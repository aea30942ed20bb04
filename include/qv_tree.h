/* qv_tree.h - the virtual tree: nodes, folder entries, lookup, sorting, inode numbers,
 * permissions. It knows nothing of safetensors: the builders above it (view, view_dcp, inspect)
 * fill a tree they are handed, and the mount context owns it. FUSE-free.
 *
 * Nodes are made in batches: every node made since the last qv_tree_commit is private to the
 * builder (the owner's lock held) until the commit publishes the batch, complete, or
 * qv_tree_abort frees it. Only published nodes are found by inode number, so a reader never
 * sees a node half filled in. The nodes of one owner (a generation of the source) are freed
 * together once nothing refers to them; their slots are reused later with a new FUSE
 * generation number, and until then answer as absent. */
#ifndef QV_TREE_H
#define QV_TREE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#include "qv_vfile.h"

struct qv_gen;
struct qv_plan;
struct qv_tinfo;

#define QV_CHUNK_SHIFT 10
#define QV_MAX_CHUNKS (1u << 16) /* 64M inodes */

enum qv_node_state { QV_NODE_FREE, QV_NODE_PENDING, QV_NODE_LIVE };

struct qv_node {
	char *name;
	uint64_t ino, parent;
	struct qv_node *up; /* the folder it was added to (every root's inode number is 1) */
	uint64_t fgen;	    /* FUSE generation: (ino, fgen) names this node and no later one */
	atomic_int state;   /* enum qv_node_state; LIVE is stored with release once complete */
	bool dir;
	struct timespec mtime;
	/* owner, group and permission bits (never write bits) as the view shows them */
	uid_t uid;
	gid_t gid;
	mode_t mode;
	uint64_t *kids; /* directory entries, sorted by name */
	size_t nkids;
	struct qv_vfile vf; /* regular files: vf.size is the file size */
	/* What the builders above keep in a node for later: the tree only stores these. */
	struct qv_gen *gen; /* owner: the generation that built it (an entry takes its folder's) */
	int32_t lazy;	    /* folder of one rank's view, built on first use: its plan, else -1 */
	int32_t folder;	    /* the rank folder (plan) it lies in, else -1: whom its reads count for */
	uint32_t nlink;	    /* a file listed in several folders (one inode: a hard link), else 0 */
	atomic_bool ready;  /* a lazy folder's entries exist */
	int dyn;	    /* a file of .qvlmoefs/ made when opened (QV_DYN_* of qv_inspect.h), else 0 */
	bool inspect;	    /* a .qvlmoefs/ folder, filled on first use (from gen, hplan) */
	bool uncounted;	    /* its bytes repeat others' (inspection files): not in the totals;
			     * an entry added to such a folder is uncounted too */
	const struct qv_plan *hplan;
	struct qv_tinfo *ti; /* .qvlmoefs/tensors/ files: one allocation, freed with the node */
	uint64_t link;	     /* slot + 1 of the next node in the pending batch or the free list */
};

/* Nodes live in fixed chunks that never move and are never freed before the tree, so a node
 * pointer never dangles: a freed node is a tombstone (state FREE) until its slot is reused.
 * Growth, commits, aborts and frees need the owner's lock; reads of published nodes need none. */
struct qv_tree {
	_Atomic(struct qv_node *) top; /* the root folder, inode 1, whatever its slot */
	struct qv_node **chunk;
	atomic_size_t nnodes;		/* slots ever used */
	atomic_size_t nlive;		/* published nodes */
	atomic_uint_least64_t bytes;	/* sum of the published files' sizes */
	uint64_t pending;		/* the batch being built (slot + 1, newest first) */
	uint64_t free_head, free_tail;	/* reusable slots, oldest freed first */
	size_t fail_in; /* fault injection (tests): the fail_in-th qv_tree_new from now fails */
};

/* An empty tree; 0 or -ENOMEM. */
int qv_tree_init(struct qv_tree *t);

/* Free every node and the tree's tables; safe on a zeroed or half-built tree. */
void qv_tree_fini(struct qv_tree *t);

/* A new node of the pending batch, filled in, with no owner and modes 0555 / 0444 (the
 * caller's to set); NULL when out of memory or inodes. parent 0 makes the node its own parent. */
struct qv_node *qv_tree_new(struct qv_tree *t, const char *name, uint64_t parent, bool dir,
			    const struct timespec *mtime);

/* A new entry name of folder dir (a node, added to dir's entries), owned by dir's owner and
 * with dir's permissions (read bits only for a file); NULL when out of memory. */
struct qv_node *qv_tree_add(struct qv_tree *t, struct qv_node *dir, const char *name, bool isdir,
			    const struct timespec *mtime);

/* Publish the pending batch: its nodes become visible by inode number and count in the totals. */
void qv_tree_commit(struct qv_tree *t);

/* Free the pending batch (a build that failed); entries of published folders that name its
 * nodes are the caller's to drop. */
void qv_tree_abort(struct qv_tree *t);

/* Free every published node owned by owner; its slots answer as absent until reused. */
void qv_tree_free_owned(struct qv_tree *t, const struct qv_gen *owner);

/* The published node with inode number ino (1: the current root), or NULL. */
struct qv_node *qv_tree_node(struct qv_tree *t, uint64_t ino);

/* The node with inode number ino, published or in the pending batch (for builders), or NULL. */
struct qv_node *qv_tree_slot(struct qv_tree *t, uint64_t ino);

/* Append entry ino to folder dir; 0 or -ENOMEM. */
int qv_tree_add_kid(struct qv_node *dir, uint64_t ino);

/* Sort folder dir's entries by name, equal names in creation order (lookups bisect them);
 * the later of two entries with one name, or NULL when every name is unique. */
struct qv_node *qv_tree_sort(struct qv_tree *t, struct qv_node *dir);

/* The entry name of folder dir once sorted, or NULL. */
struct qv_node *qv_tree_lookup(struct qv_tree *t, const struct qv_node *dir, const char *name);

/* The entry name of folder dir while it is being built (entries not yet sorted), or NULL. */
struct qv_node *qv_tree_lookup_unsorted(struct qv_tree *t, const struct qv_node *dir,
					const char *name);

/* Give n the owner, group and permission bits of a source (write, set-id and sticky bits
 * dropped). */
void qv_tree_perm_set(struct qv_node *n, uid_t uid, gid_t gid, mode_t mode);

/* Narrow n's permissions to what a source (uid, gid, mode) also allows: n then grants a caller
 * no more than both did. n keeps its owner and group; when the source's differ, each class of
 * n keeps only the bits the source grants to every caller that class may hold (whose group
 * membership the tree cannot know): see qv_perm_and. */
void qv_tree_perm_and(struct qv_node *n, uid_t uid, gid_t gid, mode_t mode);

/* Sum of the sizes of the published files that are not uncounted, for statfs. */
uint64_t qv_tree_bytes(struct qv_tree *t);

/* Number of published nodes. */
size_t qv_tree_count(struct qv_tree *t);

#endif
