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

/* Tear down the reader. */
void qv_io_free(struct qv_io *io);

#endif
