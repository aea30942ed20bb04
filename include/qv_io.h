/* qv_io.h - batched positional reads from source files: io_uring, or pread as a fallback. */
#ifndef QV_IO_H
#define QV_IO_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

enum qv_io_backend { QV_IO_URING = 0, QV_IO_PREAD = 1 };

/* One read: len bytes of fd at off into dst. */
struct qv_iop {
	int fd;
	uint64_t off;
	uint64_t len;
	char *dst;
	uint64_t done; /* progress, owned by qv_io_run */
	uint32_t tag;  /* the caller's, untouched (the read path: which source) */
};

struct qv_io_cfg {
	enum qv_io_backend backend; /* wanted; uring falls back to pread when it cannot be set up */
	unsigned entries;	    /* ring size (0 = 64) */
	/* test knobs: clamp each submitted read (forces short reads), turn every Nth completion
	 * into -EAGAIN, refuse ring setup as a sandbox would, make the Nth submission fail with
	 * -EIO after its reads went to the kernel (an unexpected error with reads in flight) */
	uint64_t max_chunk;
	unsigned eagain_every;
	int fail_setup_errno;
	unsigned fail_submit_nth;
	atomic_int *fallback_logged; /* shared flag so the fallback is logged once per mount */
};

struct qv_io;

/* Set up a reader for the calling thread; 0 or -errno. Falls back to pread (logged once). */
int qv_io_new(const struct qv_io_cfg *cfg, struct qv_io **out);

/* The backend actually in use. */
enum qv_io_backend qv_io_backend_of(const struct qv_io *io);

/* Perform all n reads completely; 0, or -EIO when a source ends early, or -errno. */
int qv_io_run(struct qv_io *io, struct qv_iop *ops, size_t n);

/* Put exactly bytes [off, off+len) of fd into the thread's pipe, by reference to fd's page
 * cache: 0 and *rd its read end, holding just those bytes for the caller to pass on (or
 * qv_io_splice_reset); -EAGAIN when the pipe cannot hold them or fd cannot splice (read
 * instead); -EIO when fd ends before off+len; or -errno. On failure the pipe is empty. */
int qv_io_splice(struct qv_io *io, int fd, uint64_t off, size_t len, int *rd);

/* The largest request (a multiple of 4 KiB) qv_io_splice takes in this process: what a pipe
 * can be grown to here, less the room libfuse's own pipe needs for the reply header; 0: none. */
size_t qv_io_splice_max(void);

/* Drop whatever the thread's pipe holds (a reply that did not take it); it is remade on use. */
void qv_io_splice_reset(struct qv_io *io);

/* Tear down the reader. */
void qv_io_free(struct qv_io *io);

#endif
