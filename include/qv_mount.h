/* qv_mount.h - the mount context: owns the generations of the source, the virtual tree built
 * from them and the options; calls only downward (view, inspect, tree). FUSE-free: src/fs.c
 * is its FUSE-facing user. */
#ifndef QV_MOUNT_H
#define QV_MOUNT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include "qv_gen.h"
#include "qv_io.h"
#include "qv_tree.h"
#include "qv_util.h"
#include "qv_vfile.h"

struct qv_stats {
	atomic_uint_least64_t reads, bytes_served, bytes_src, errors, opens, releases;
	atomic_uint_least64_t bytes_uring, bytes_pread; /* bytes_src by backend */
	atomic_uint_least64_t bytes_spliced;		/* bytes_src handed on by splice */
	struct timespec start;
};

struct qv_mount {
	struct qv_mount_opts o;
	char *source;	     /* realpath of the source, for rescans */
	struct qv_gen *gen;  /* the newest generation; ->prev the older ones still held */
	struct qv_tree tree; /* every held generation's nodes; tree.top is the newest root */
	pthread_mutex_t lock; /* serializes changes of the tree and of the generations' list */
	pthread_mutex_t root_lock; /* taking a hold on the newest root vs a rescan replacing it */
	_Atomic(struct qv_gen *) newest; /* m->gen, for readers that take no lock */
	atomic_size_t ngens;	   /* generations held */
	struct qv_stats stats;
	size_t nfolders;	      /* rank folders (one per plan), 0 for one view */
	char (*folder_names)[64];     /* their names */
	atomic_uint_least64_t *folder_bytes; /* bytes served per folder; [nfolders]: shared files */
	atomic_int fallback_logged;
};

/* Scan src, parse and check every safetensors header, build the view; 0 or -errno with one
 * line in err naming the file or tensor and the reason. */
int qv_mount_init(struct qv_mount *m, const char *src, const struct qv_mount_opts *o, char *err,
		  size_t errlen);

/* Scan the source again and switch the root to a view of what is there now; files already
 * open keep reading the generation they came from, which is freed once nothing holds it.
 * 0 or -errno with a reason in err (the old view then stays). */
int qv_mount_rescan(struct qv_mount *m, char *err, size_t errlen);

/* Is node n's (held) generation the newest, or has a rescan replaced it? */
bool qv_mount_current(struct qv_mount *m, const struct qv_node *n);

/* The names the kernel may hold of root top's generation (top held): one record per entry of
 * every folder built, the entries of a folder before the entry naming that folder, each
 * record a uint64_t folder inode number followed by the name and a NUL; 0 or -ENOMEM. */
int qv_mount_names(struct qv_mount *m, const struct qv_node *top, struct qv_buf *out);

/* Free everything qv_mount_init built (closes source files). */
void qv_mount_fini(struct qv_mount *m);

/* The published node with inode number ino and one hold on its generation (ino 1: the newest
 * root, held against a rescan replacing it), or NULL; give the hold back with qv_mount_drop.
 * A node other than a root must be held already (the kernel knows it). */
struct qv_node *qv_mount_get(struct qv_mount *m, uint64_t ino);

/* count more holds on node n's generation (the kernel's lookups of n); n must be held. */
void qv_mount_hold(struct qv_mount *m, struct qv_node *n, uint64_t count);

/* Give back count holds on n's generation (a forget, a request's end); the last hold on a
 * replaced generation frees it, its nodes and its source descriptors. */
void qv_mount_drop(struct qv_mount *m, struct qv_node *n, uint64_t count);

/* Make sure folder dir's entries exist (rank folders are built on first use); 0 or -errno. */
int qv_mount_ready(struct qv_mount *m, struct qv_node *dir);

/* Called on open (n held): takes the file's sources and a hold on its generation; 0, or -EIO
 * when a source of the file changed since the mount. */
int qv_mount_open_file(struct qv_mount *m, struct qv_node *n);

/* Called on release, or when the open could not be replied: undo what a successful
 * qv_mount_open_file took. */
void qv_mount_release_file(struct qv_mount *m, struct qv_node *n);

/* Read from a file node into buf; *got short only at EOF; 0 or -errno; counts in stats. */
int qv_mount_read(struct qv_mount *m, struct qv_node *n, uint64_t off, size_t len, char *buf,
		  struct qv_io *io, struct qv_rdscratch *sc, size_t *got);

/* The daemon's counters as one line of JSON; 0 or -ENOMEM. */
/* Serve [off, off+len) of file node n as a pipe holding the source's bytes, when they are one
 * run of one source: 0 with *rd (exactly *got bytes, the whole reply); -EAGAIN when they are not
 * (qv_mount_read them instead); -EIO when the source changed or shrank. Counts in stats. */
int qv_mount_splice(struct qv_mount *m, struct qv_node *n, uint64_t off, size_t len,
		    struct qv_io *io, int *rd, size_t *got);

int qv_mount_stats_json(struct qv_mount *m, struct qv_buf *out);

/* A length that the value of xattr name of node n never exceeds, for size queries of values
 * that change between calls; 0 for a value that does not change. */
size_t qv_mount_xattr_max(const struct qv_mount *m, const struct qv_node *n, const char *name);

/* The bytes of a .qvlmoefs/ file, made now (counters change); 0 or -errno. */
int qv_mount_dyn_content(struct qv_mount *m, const struct qv_node *n, struct qv_buf *out);

/* The value of xattr name of node n (the root's stats, or a per-file one) into out; 0,
 * -ENODATA or -ENOMEM. */
int qv_mount_xattr(struct qv_mount *m, const struct qv_node *n, const char *name,
		   struct qv_buf *out);

/* The names of n's xattrs, each NUL-terminated, into out; 0 or -ENOMEM. */
int qv_mount_xattr_names(struct qv_mount *m, const struct qv_node *n, struct qv_buf *out);

#endif
