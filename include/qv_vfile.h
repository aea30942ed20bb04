/* qv_vfile.h - a virtual file is a list of segments: bytes in memory, or (strided) runs of a
 * source file. Serving a read = copy the memory parts, issue the runs as one batch. FUSE-free. */
#ifndef QV_VFILE_H
#define QV_VFILE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>

#include "qv_comp.h"
#include "qv_io.h"
#include "qv_util.h"

#define QV_TILE_DIMS 16 /* = QV_ST_MAX_DIMS */

/* A source file as scanned; fd is opened lazily and kept for the mount's life. */
struct qv_source {
	char *path; /* absolute */
	char *rel;  /* relative to the source root, for messages */
	atomic_int fd;
	dev_t dev;
	ino_t ino;
	off_t size;
	struct timespec mtime;
	uid_t uid; /* owner, group and mode as scanned: what the view lets others read */
	gid_t gid;
	mode_t mode;
	atomic_int stale_logged;
	pthread_mutex_t mu; /* serializes opening and closing fd (zeroed = initialized) */
	int users;	    /* open virtual files reading it; the fd closes at the last release */
	bool pinned;	    /* safetensors sources: opened at mount, kept until unmount */
};

#define QV_SEG_MEM UINT32_MAX
#define QV_SEG_TILED (UINT32_MAX - 1)
#define QV_SEG_COMPUTED (UINT32_MAX - 2)

struct qv_chunk;

/* A tensor assembled from chunks (a sharded save), shown through a window (a rank's slice):
 * reads map each virtual byte to the chunk that holds it. Shapes are in elements. */
struct qv_tile {
	uint32_t ndim;
	unsigned es; /* bytes per element */
	uint64_t gshape[QV_TILE_DIMS];
	uint64_t woff[QV_TILE_DIMS], wshape[QV_TILE_DIMS];
	const struct qv_chunk *c;
	size_t nc;
};

/* count = len / run runs of run bytes, the k-th at source offset soff + k * stride. */
struct qv_seg {
	uint64_t voff, len;
	uint32_t src; /* QV_SEG_MEM: bytes at mem; QV_SEG_TILED: see tile */
	const char *mem;
	const struct qv_tile *tile;
	const struct qv_comp *comp; /* QV_SEG_COMPUTED: the blocks its bytes are made in */
	uint64_t soff, run, stride;
};

struct qv_vfile {
	uint64_t size;
	struct qv_seg *seg;
	size_t nseg;
	char *mem;	/* owned memory the segments point into */
	struct qv_tile *tiles; /* owned, for tiled segments */
	struct qv_comp **comps; /* owned, for computed segments */
	size_t ncomps;
	struct qv_source *base; /* the source table segments' src index into */
	uint32_t *srcs;		/* distinct sources read, for staleness checks */
	size_t nsrcs;
};

/* Per-thread scratch for reads, grown rarely, never freed per request: the reads of a
 * request's source runs; for computed blocks, their reads and input bytes apart, and the
 * mount's cache of made blocks (NULL: each read makes its blocks afresh). */
struct qv_rdscratch {
	struct qv_iop *ops;
	size_t cap;
	struct qv_iop *xops;
	size_t xcap;
	struct qv_buf xin;
	struct qv_xcache *xc;
	bool skip_compute; /* benchmarks only: blocks are read but not computed (wrong bytes) */
};

/* What a worker thread keeps between reads: its io ring (and splice pipe), the scratch of
 * its batches and the buffer of its copied replies; nothing is allocated per read. */
struct qv_reader {
	struct qv_io *io;
	struct qv_rdscratch sc;
	struct qv_buf out; /* kept empty (len 0): only its capacity is used */
	struct qv_xslot *held; /* the computed block the last reply points into, until sent */
};

/* The answer to one read: len bytes at p (in the reader's buffer), or, when fd >= 0, len bytes
 * held in the reader's pipe whose read end fd is; from_src of them came from sources, through
 * backend (the reader's io backend, or QV_REPLY_SPLICED). */
#define QV_REPLY_SPLICED 2
struct qv_reply {
	const char *p;
	int fd;
	size_t len;
	uint64_t from_src;
	int backend;
};

/* Take over b's bytes (b is left empty) as vf's memory and append them as a segment at the
 * end of vf (a file's synthesized header or whole generated content); 0, -ENOMEM, or -EEXIST
 * when vf already has its memory (b is then left as it was). */
int qv_vfile_add_mem(struct qv_vfile *vf, struct qv_buf *b);

/* Append a segment; contiguous plain runs of one source merge into the previous one. */
int qv_vfile_add(struct qv_vfile *vf, const struct qv_seg *s);

/* Append computed tensor c (taken over: freed with vf, or here on failure) as a segment of
 * c->len bytes at the end of vf; 0 or -ENOMEM. */
int qv_vfile_add_comp(struct qv_vfile *vf, struct qv_comp *c);

/* Make dst (zeroed) the bytes [off, off+len) of src: its segments, trimmed, sharing src's
 * memory, tiles and computed tensors (src must outlive dst). -EINVAL when a cut falls inside
 * a strided, tiled or computed segment; 0 or -ENOMEM. */
int qv_vfile_slice(struct qv_vfile *dst, const struct qv_vfile *src, uint64_t off, uint64_t len);

/* Record that vf reads source i (kept unique). */
int qv_vfile_use_src(struct qv_vfile *vf, uint32_t i);

/* Free a virtual file's segments and memory (not the struct). */
void qv_vfile_fini(struct qv_vfile *vf);

/* Open source s if not yet open; 0 or -errno. */
int qv_source_open(struct qv_source *s);

/* Take a reference for an open file: check s is unchanged (else -EIO), open it if needed;
 * 0 or -errno. */
int qv_source_get(struct qv_source *s);

/* Drop a reference; the last one closes an unpinned source's fd, so a tree of many small
 * files does not hold a descriptor per file ever opened. */
void qv_source_put(struct qv_source *s);

/* 0 when source s still is the file scanned (inode, size, mtime), else -EIO (logged once). */
int qv_source_check(struct qv_source *s);

/* After a read: 0 when the open source's size and mtime are still the scanned ones, else -EIO. */
int qv_source_unchanged(struct qv_source *s);

/* Where [off, off+len) of vf lies when it is one run of one source (cut at EOF): 0 with the
 * source index *src, its offset *soff and *n bytes; -EINVAL when it is anything else (memory,
 * a tiled tensor, several runs, or past EOF). */
int qv_vfile_run(const struct qv_vfile *vf, uint64_t off, size_t len, uint32_t *src,
		 uint64_t *soff, size_t *n);

/* A reader for the calling thread, with an io ring of cfg; 0 or -errno. */
int qv_reader_new(const struct qv_io_cfg *cfg, struct qv_reader **out);

/* Free a reader (NULL is fine). */
void qv_reader_free(struct qv_reader *r);

/* Grow r's reply buffer to at least len bytes; 0 or -ENOMEM. */
int qv_reader_reserve(struct qv_reader *r, size_t len);

/* A reply r made was not taken (an interrupted request): drop what its pipe holds. */
void qv_reader_unsent(struct qv_reader *r);

/* The reply r made was sent (or dropped): let go of the computed block it pointed into. */
void qv_reader_done(struct qv_reader *r);

/* Serve [off, off+len) of vf as a pipe holding the source's own pages, when they are one run of
 * one source: 0 with *rep (exactly the whole reply); -EAGAIN when they are not (copy them
 * instead); -EIO when the source changed or ends early (the pipe is then empty). */
int qv_vfile_splice(const struct qv_vfile *vf, struct qv_source *srcs, uint64_t off, size_t len,
		    struct qv_reader *r, struct qv_reply *rep);

/* Serve [off, off+len) of vf: spliced when splice is set and qv_vfile_splice can; from the
 * computed block itself when it lies inside one (held until qv_reader_done); else copied into
 * r's buffer (short only at EOF); 0 with *rep, or -errno (never a short reply). */
int qv_vfile_reply(const struct qv_vfile *vf, struct qv_source *srcs, uint64_t off, size_t len,
		   bool splice, struct qv_reader *r, struct qv_reply *rep);

/* After a reply to [off, off+len) of vf that touched the first byte of a computed block, make
 * the block after it (the tensor's next, or the next segment's first) into the cache, unless
 * it is there or being made: a reader going front to back then finds it made while it copied
 * the last one. count(arg, bytes read) is called once it is made, before it is shared. 0 also
 * when there was nothing to make, else -errno (a later request makes the block again, and
 * reports). */
int qv_vfile_ahead(const struct qv_vfile *vf, struct qv_source *srcs, uint64_t off, size_t len,
		   struct qv_reader *r, void (*count)(void *arg, uint64_t src_bytes), void *arg);

/* Read [off, off+len) of vf into buf: *got bytes (short only at EOF), *src_bytes read from
 * sources (for computed bytes, the inputs of the blocks made, none for a cached block); 0 or
 * -errno. */
int qv_vfile_read(const struct qv_vfile *vf, struct qv_source *srcs, uint64_t off, size_t len,
		  char *buf, struct qv_io *io, struct qv_rdscratch *sc, size_t *got,
		  uint64_t *src_bytes);

#endif
