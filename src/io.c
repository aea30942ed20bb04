/* io.c - reads for one worker thread: every extent of a request goes out as one io_uring batch;
 * short reads and -EAGAIN/-EINTR are resubmitted for the rest; pread when no ring can be had. */
#include "qv_io.h"
#include "qv_util.h"

#include <errno.h>
#include <liburing.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The kernel fills io_uring buffers behind valgrind's back; tell it those bytes are defined. */
#if defined(__has_include) && __has_include(<valgrind/memcheck.h>)
#include <valgrind/memcheck.h>
#define MARK_DEFINED(p, n) VALGRIND_MAKE_MEM_DEFINED(p, n)
#else
#define MARK_DEFINED(p, n) ((void)(p), (void)(n))
#endif

struct qv_io {
	struct qv_io_cfg cfg;
	enum qv_io_backend backend;
	struct io_uring ring;
	unsigned completions; /* for the eagain_every test knob */
	unsigned submits;     /* for the fail_submit_nth test knob */
};

static uint64_t clamp_len(const struct qv_io *io, uint64_t len)
{
	/* one SQE reads at most 2 GiB - 4 KiB on Linux anyway; keep lengths well inside u32 */
	uint64_t cap = 1ULL << 30;

	if (io->cfg.max_chunk && io->cfg.max_chunk < cap)
		cap = io->cfg.max_chunk;
	return len < cap ? len : cap;
}

int qv_io_new(const struct qv_io_cfg *cfg, struct qv_io **out)
{
	struct qv_io *io = calloc(1, sizeof(*io));
	int rc;

	if (!io)
		return -ENOMEM;
	io->cfg = *cfg;
	if (!io->cfg.entries)
		io->cfg.entries = 64;
	io->backend = cfg->backend;
	if (io->backend == QV_IO_URING) {
		rc = cfg->fail_setup_errno ? -cfg->fail_setup_errno :
					     io_uring_queue_init(io->cfg.entries, &io->ring, 0);
		if (rc) {
			/* a ring is an fd too: out of descriptors, this thread reads with pread */
			if (rc != -EPERM && rc != -ENOSYS && rc != -ENOMEM && rc != -EACCES &&
			    rc != -EINVAL && rc != -EMFILE && rc != -ENFILE) {
				free(io);
				return rc;
			}
			io->backend = QV_IO_PREAD;
			if (!cfg->fallback_logged || !atomic_exchange(cfg->fallback_logged, 1))
				qv_log("io_uring unavailable (%s): falling back to pread", strerror(-rc));
		}
	}
	*out = io;
	return 0;
}

enum qv_io_backend qv_io_backend_of(const struct qv_io *io)
{
	return io->backend;
}

void qv_io_free(struct qv_io *io)
{
	if (!io)
		return;
	if (io->backend == QV_IO_URING)
		io_uring_queue_exit(&io->ring);
	free(io);
}

static int run_pread(struct qv_io *io, struct qv_iop *ops, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		uint64_t done = 0;

		while (done < ops[i].len) {
			ssize_t r = pread(ops[i].fd, ops[i].dst + done,
					  clamp_len(io, ops[i].len - done), (off_t)(ops[i].off + done));
			if (r < 0 && (errno == EINTR || errno == EAGAIN))
				continue;
			if (r < 0)
				return -errno;
			if (r == 0)
				return -EIO; /* the source shrank under us */
			done += (uint64_t)r;
		}
	}
	return 0;
}

/* Queue the unread rest of op i; 0, or -EBUSY when the SQ has no room even after submitting
 * what it holds (in-flight ops never exceed the ring, so this is a bug guard). */
static int queue_op(struct qv_io *io, struct qv_iop *op, size_t i)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&io->ring);
	uint64_t done = op->done;

	if (!sqe) {
		io_uring_submit(&io->ring);
		sqe = io_uring_get_sqe(&io->ring);
	}
	if (!sqe)
		return -EBUSY;
	io_uring_prep_read(sqe, op->fd, op->dst + done, (unsigned)clamp_len(io, op->len - done),
			   op->off + done);
	io_uring_sqe_set_data64(sqe, i);
	return 0;
}

/* A completion for op i: account progress; returns 1 if it must be queued again, 0 if
 * finished, -errno on failure. */
static int reap_one(struct qv_io *io, int res, struct qv_iop *op)
{
	if (io->cfg.eagain_every && ++io->completions % io->cfg.eagain_every == 0 && res >= 0)
		return 1; /* injected -EAGAIN: pretend nothing was read, resubmit */
	if (res == -EAGAIN || res == -EINTR)
		return 1;
	if (res < 0)
		return res;
	if (res == 0)
		return -EIO;
	MARK_DEFINED(op->dst + op->done, (size_t)res);
	op->done += (uint64_t)res;
	return op->done < op->len ? 1 : 0;
}

/* io_uring_submit_and_wait, or the test knob's failure with the reads really submitted. */
static int submit_wait(struct qv_io *io)
{
	if (io->cfg.fail_submit_nth && ++io->submits == io->cfg.fail_submit_nth) {
		io_uring_submit(&io->ring);
		return -EIO;
	}
	return io_uring_submit_and_wait(&io->ring, 1);
}

/* The ring failed with reads in flight: the kernel may still write into their buffers, which
 * the caller is about to reply with or reuse, and their completions would be taken by the
 * next request. Reap every read the kernel took, then rebuild the ring, which drops what it
 * never took; when it cannot even be waited on (or rebuilt), this thread reads with pread. */
static int recover(struct qv_io *io, unsigned inflight, int err)
{
	unsigned unsent = io_uring_sq_ready(&io->ring);
	unsigned held = inflight > unsent ? inflight - unsent : 0;
	struct io_uring_cqe *cqe;
	int rc = 0;

	while (held) {
		rc = io_uring_wait_cqe(&io->ring, &cqe); /* submits nothing */
		if (rc == -EINTR || rc == -EAGAIN)
			continue;
		if (rc)
			break;
		io_uring_cqe_seen(&io->ring, cqe);
		held--;
	}
	io_uring_queue_exit(&io->ring);
	rc = held ? rc : io_uring_queue_init(io->cfg.entries, &io->ring, 0);
	if (rc) {
		io->backend = QV_IO_PREAD;
		qv_log("io_uring failed (%s) and could not be %s: this thread reads with pread",
		       strerror(-err), held ? "drained" : "rebuilt");
	}
	return err;
}

static int run_uring(struct qv_io *io, struct qv_iop *ops, size_t n)
{
	size_t next = 0, left = n;
	unsigned inflight = 0;
	int err = 0;

	while (left) {
		struct io_uring_cqe *cqe;
		size_t i;
		int rc;

		/* keep the ring full but never past its size: a request may hold many extents */
		while (!err && next < n && inflight < io->cfg.entries) {
			if (ops[next].len == 0) { /* nothing to read; a 0 result would mean EOF */
				next++;
				left--;
				continue;
			}
			err = queue_op(io, &ops[next], next);
			next++;
			inflight += err ? 0 : 1;
		}
		if (inflight == 0)
			break;
		rc = submit_wait(io);
		if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY)
			return recover(io, inflight, err ? err : rc);
		while (io_uring_peek_cqe(&io->ring, &cqe) == 0) {
			i = (size_t)io_uring_cqe_get_data64(cqe);
			rc = reap_one(io, cqe->res, &ops[i]);
			io_uring_cqe_seen(&io->ring, cqe);
			if (rc == 1 && !err && (rc = queue_op(io, &ops[i], i)) == 0)
				continue; /* still in flight */
			inflight--;
			left--;
			if (rc < 0 && !err)
				err = rc; /* drain what is in flight before returning */
		}
		if (err && inflight == 0)
			break;
	}
	return err;
}

int qv_io_run(struct qv_io *io, struct qv_iop *ops, size_t n)
{
	for (size_t i = 0; i < n; i++)
		ops[i].done = 0;
	return io->backend == QV_IO_PREAD ? run_pread(io, ops, n) : run_uring(io, ops, n);
}
