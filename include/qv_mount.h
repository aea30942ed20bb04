/* qv_mount.h - the mount context: scanned source, parsed headers and the virtual tree built
 * from them (inodes, virtual files). FUSE-free: src/fs.c is its only FUSE-facing user. */
#ifndef QV_MOUNT_H
#define QV_MOUNT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include "qv_gen.h"
#include "qv_io.h"
#include "qv_plan.h"
#include "qv_scan.h"
#include "qv_st.h"
#include "qv_util.h"
#include "qv_vfile.h"

#define QV_CHUNK_SHIFT 10
#define QV_MAX_CHUNKS (1u << 16) /* 64M inodes */

struct qv_node {
	char *name;
	uint64_t ino, parent;
	bool dir;
	struct timespec mtime;
	uint64_t *kids; /* directory entries, sorted by name */
	size_t nkids;
	struct qv_vfile vf; /* regular files: vf.size is the file size */
	struct qv_gen *gen; /* lazy folders: the generation whose plan builds them */
	int32_t lazy;	    /* folder of one rank's view, built on first use: its plan, else -1 */
	atomic_bool ready;  /* a lazy folder's entries exist */
	int dyn;	    /* a file of .qvlmoefs/ made when opened: QV_DYN_*, else 0 */
	bool inspect;	    /* a .qvlmoefs/ folder, filled on first use (from gen, hplan) */
	const struct qv_plan *hplan;
	struct qv_tinfo *ti; /* .qvlmoefs/tensors/ files: what the tensor is */
};

/* A tensor of a view, as .qvlmoefs/tensors/<key> and `inspect --keys` describe it. */
struct qv_tinfo {
	char *file;	/* its virtual safetensors file, relative to the view root */
	char *dtype;	/* e.g. "BF16" */
	char *shape;	/* e.g. "[16,2048,1536]" */
	const struct qv_vfile *in; /* the virtual file, for the source of its extents */
};

enum { QV_DYN_STATS = 1, QV_DYN_GPU = 2 };

#define QV_HIDDEN ".qvlmoefs"

struct qv_stats {
	atomic_uint_least64_t reads, bytes_served, bytes_src, errors, opens, releases;
	atomic_uint_least64_t bytes_uring, bytes_pread; /* bytes_src by backend */
	struct timespec start;
};

struct qv_mount {
	struct qv_mount_opts o;
	char *source;	     /* realpath of the source, for rescans */
	struct qv_gen *gen;  /* the newest generation; ->prev the older ones */
	_Atomic(struct qv_node *) top; /* the root folder (inode 1) of the newest generation */
	pthread_mutex_t lock; /* serializes growth of the node table */
	struct qv_node **chunk;
	atomic_size_t nnodes;
	struct qv_stats stats;
	atomic_int fallback_logged;
};

/* Scan src, parse and check every safetensors header, build the view; 0 or -errno with one
 * line in err naming the file or tensor and the reason. */
int qv_mount_init(struct qv_mount *m, const char *src, const struct qv_mount_opts *o, char *err,
		  size_t errlen);

/* Scan the source again and switch the root to a view of what is there now; files already
 * open keep reading the generation they came from. 0 or -errno with a reason in err (the old
 * view then stays). */
int qv_mount_rescan(struct qv_mount *m, char *err, size_t errlen);

/* Free everything qv_mount_init built (closes source files). */
void qv_mount_fini(struct qv_mount *m);

/* A new node (mount time, or under m->lock); NULL when out of memory or inodes. */
struct qv_node *qv_mount_node_new(struct qv_mount *m, const char *name, uint64_t parent, bool dir,
				  const struct timespec *mtime);

/* Append entry ino to folder dir; 0 or -ENOMEM. */
int qv_node_add_kid(struct qv_node *dir, uint64_t ino);

/* Sort folder dir's entries by name (lookups bisect them). */
void qv_mount_sort_kids(struct qv_mount *m, struct qv_node *dir);

/* Make sure folder dir's entries exist (rank folders are built on first use); 0 or -errno. */
int qv_mount_ready(struct qv_mount *m, struct qv_node *dir);

/* The node with inode number ino, or NULL. */
struct qv_node *qv_mount_node(struct qv_mount *m, uint64_t ino);

/* The entry name of folder dir (which must be ready), or NULL. */
struct qv_node *qv_mount_lookup(struct qv_mount *m, const struct qv_node *dir, const char *name);

/* The entry name of folder dir while it is being built (entries not yet sorted), or NULL. */
struct qv_node *qv_mount_lookup_unsorted(struct qv_mount *m, const struct qv_node *dir,
					 const char *name);

/* Called on open: 0, or -EIO when a source of the file changed since the mount. */
int qv_mount_open_file(struct qv_mount *m, struct qv_node *n);

/* Called on release: undo what a successful qv_mount_open_file took. */
void qv_mount_release_file(struct qv_mount *m, struct qv_node *n);

/* Read from a file node into buf; *got short only at EOF; 0 or -errno; counts in stats. */
int qv_mount_read(struct qv_mount *m, struct qv_node *n, uint64_t off, size_t len, char *buf,
		  struct qv_io *io, struct qv_rdscratch *sc, size_t *got);

/* The daemon's counters as one line of JSON; 0 or -ENOMEM. */
int qv_mount_stats_json(struct qv_mount *m, struct qv_buf *out);

/* The bytes of a .qvlmoefs/ file, made now (counters change); 0 or -errno. */
int qv_mount_dyn_content(struct qv_mount *m, const struct qv_node *n, struct qv_buf *out);

/* Sum of the sizes of all virtual files, for statfs. */
uint64_t qv_mount_bytes(struct qv_mount *m);

#endif
