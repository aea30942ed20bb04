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

/* The mount's options (struct qv_mount's o, filled by opts from the command line): gen holds
 * what gen reads, below mount; the rest only mount and the modules above it read (inspect gets
 * the io backend and whether gpu.json exists as arguments). */
struct qv_mount_opts {
	struct qv_gen_opts gen; /* what each generation's scan and plans read */
	struct qv_io_cfg io;	/* each reader's (inspect names its backend in view.json) */
	bool inspect_visible;	/* -o inspect_dir=visible: folder listings show .qvlmoefs/ */
	bool ep_shared; /* rank folders list the bytes all ranks share as one inode each */
	/* benchmarks only (QVLMOEFS_TEST_FAULTS=skip_compute): computed blocks are read from
	 * their sources and served, but not computed: the ceiling of the computed path */
	bool skip_compute;
	/* .qvlmoefs/gpu.json, when a GPU stage runs (-o gpu): writes its status */
	int (*gpu_json)(void *arg, struct qv_buf *out);
	void *gpu_arg;
};

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
	pthread_key_t reader_key; /* each worker thread's struct qv_reader */
	bool reader_key_made;
	atomic_size_t ngens;	   /* generations held */
	struct qv_stats stats;
	size_t nfolders;	      /* rank folders (one per plan), 0 for one view */
	char (*folder_names)[64];     /* their names */
	atomic_uint_least64_t *folder_bytes; /* bytes served per folder; [nfolders]: shared files */
	atomic_int fallback_logged;
	struct qv_xcache *xc; /* computed blocks, shared by the worker threads' readers */
};

/* The bytes of computed blocks a mount keeps (DESIGN §14): a few experts of the largest
 * released models (an expert of Qwen3-VL-235B-A22B's gate_and_up_projs is 24 MiB). */
#define QV_MOUNT_XCACHE_BYTES (192u << 20)

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

/* The folder ino with one hold on its generation (give it back with qv_mount_drop) and its
 * entries built; 0 or -errno (ENOENT, ENOTDIR, EIO). *out is set whenever the node exists. */
int qv_mount_dir(struct qv_mount *m, uint64_t ino, struct qv_node **out);

/* Entry name of folder parent for the kernel: 0 with *out held once (the kernel's lookup,
 * until it forgets it) or NULL (no such entry), and *dir the folder that answered, held once
 * (give it back with qv_mount_drop; NULL on error); -ESTALE when a rescan has replaced
 * parent's generation (the kernel then walks again from the root), or what qv_mount_dir
 * says. */
int qv_mount_lookup(struct qv_mount *m, uint64_t parent, const char *name, struct qv_node **out,
		    struct qv_node **dir);

/* The kernel forgets nlookup lookups of ino (the root's are never counted). */
void qv_mount_forget(struct qv_mount *m, uint64_t ino, uint64_t nlookup);

/* Entry i of folder d (held) as listed: 0 ".", 1 "..", then d's entries; the node and *name,
 * or NULL for an index that lists nothing (a hidden .qvlmoefs/, a node gone). i < nkids + 2. */
struct qv_node *qv_mount_entry(struct qv_mount *m, const struct qv_node *d, size_t i,
			       const char **name);

/* Make sure folder dir's entries exist (rank folders are built on first use); 0 or -errno. */
int qv_mount_ready(struct qv_mount *m, struct qv_node *dir);

/* An open of node n (held) with open(2) flags: 0 with *fh, the handle its reads and release
 * take (a .qvlmoefs/ file's bytes, made now), and *dyn (such a file: its size says nothing, so
 * read it with direct_io); -EISDIR, -EROFS for any write, -EIO when a source changed. */
int qv_mount_open(struct qv_mount *m, struct qv_node *n, int flags, uint64_t *fh, bool *dyn);

/* Undo a successful qv_mount_open of file ino with handle fh (its release, or an open whose
 * reply the kernel did not take). */
void qv_mount_release(struct qv_mount *m, uint64_t ino, uint64_t fh);

/* Called on open (n held): takes the file's sources and a hold on its generation; 0, or -EIO
 * when a source of the file changed since the mount. */
int qv_mount_open_file(struct qv_mount *m, struct qv_node *n);

/* Called on release, or when the open could not be replied: undo what a successful
 * qv_mount_open_file took. */
void qv_mount_release_file(struct qv_mount *m, struct qv_node *n);

/* Answer a read of [off, off+len) of file ino (held by its open file) for the calling thread:
 * 0 with *rep, bytes in the thread's buffer or (splice set, one run of one source) a pipe of
 * the source's own pages; -errno (EIO, never a short reply before EOF). A .qvlmoefs/ file
 * answers from dyn, the bytes made when it was opened. Counts in the stats. */
int qv_mount_reply(struct qv_mount *m, uint64_t ino, const struct qv_buf *dyn, uint64_t off,
		   size_t len, bool splice, struct qv_reply *rep);

/* The reply qv_mount_reply made was sent (or not): what it pointed into is let go. */
void qv_mount_done(struct qv_mount *m);

/* After a reply to [off, off+len) of file ino is sent: make the computed block a reader going
 * front to back asks for next (qv_vfile_ahead), on this thread, while the reader copies. */
void qv_mount_ahead(struct qv_mount *m, uint64_t ino, uint64_t off, size_t len);

/* The calling thread's last reply was not taken (an interrupted request): drop its pipe. */
void qv_mount_unsent(struct qv_mount *m);

/* The daemon's counters as one line of JSON; 0 or -ENOMEM. */
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
