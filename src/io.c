/* io.c - reads for one worker thread: every extent of a request goes out as one io_uring batch;
 * short reads and -EAGAIN/-EINTR are resubmitted for the rest; pread when no ring can be had.
 * And a pipe per thread that a single-run request is spliced into, so its bytes reach the
 * reader without a copy through this process. */
#include "qv_io.h"
#include "qv_util.h"

#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
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
	int pipe[2];	      /* for qv_io_splice, made on first use; -1 when none */
	size_t pipe_cap;      /* its size in bytes */
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
	io->pipe[0] = io->pipe[1] = -1;
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
	qv_io_splice_reset(io);
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

/* The largest request one splice reply may carry: the pipe less libfuse's margin (its own pipe
 * takes a page for the reply header and two of slack besides the bytes, and grows only as far
 * as ours did, under the same limits), so its pipe takes all of ours in one move. */
#define SPLICE_SLACK (3 * 4096 + 64)

/* Make pipe p as large as the process may (2 MiB holds a 1 MiB request at any alignment;
 * without CAP_SYS_RESOURCE, fs.pipe-max-size caps it, 1 MiB by default); its size in bytes,
 * or -errno. */
static int pipe_make(int p[2])
{
	int sz;

	if (pipe2(p, O_CLOEXEC | O_NONBLOCK))
		return p[0] = p[1] = -1, -errno;
	if (fcntl(p[1], F_SETPIPE_SZ, 2 << 20) < 0)
		fcntl(p[1], F_SETPIPE_SZ, 1 << 20);
	sz = fcntl(p[1], F_GETPIPE_SZ);
	return sz > 0 ? sz : 0;
}

/* The thread's pipe, made now; 0 or -EAGAIN (no descriptor left: copy instead) or -errno. */
static int io_pipe(struct qv_io *io)
{
	int sz = pipe_make(io->pipe);

	if (sz < 0)
		return sz == -EMFILE || sz == -ENFILE ? -EAGAIN : sz;
	io->pipe_cap = (size_t)sz;
	return 0;
}

size_t qv_io_splice_max(void)
{
	int p[2], sz = pipe_make(p);

	if (sz < 0)
		return 0;
	close(p[0]);
	close(p[1]);
	return (size_t)sz > SPLICE_SLACK + 4096 ? ((size_t)sz - SPLICE_SLACK) & ~(size_t)4095 : 0;
}

void qv_io_splice_reset(struct qv_io *io)
{
	/* closing is simpler than draining and costs only on the rare failure */
	if (io->pipe[0] >= 0) {
		close(io->pipe[0]);
		close(io->pipe[1]);
	}
	io->pipe[0] = io->pipe[1] = -1;
	io->pipe_cap = 0;
}

int qv_io_splice(struct qv_io *io, int fd, uint64_t off, size_t len, int *rd)
{
	uint64_t pages = ((off & 4095) + len + 4095) / 4096, done = 0;
	int left = 0, rc;

	if (io->pipe[0] < 0 && (rc = io_pipe(io)))
		return rc;
	/* never append to bytes a failed reply left: they would go out as this request's */
	if (ioctl(io->pipe[0], FIONREAD, &left) || left) {
		qv_io_splice_reset(io);
		if ((rc = io_pipe(io)))
			return rc;
	}
	/* one pipe slot per source page touched: a request the pipe cannot hold whole is copied */
	if (len == 0 || len + SPLICE_SLACK > io->pipe_cap || pages > io->pipe_cap / 4096)
		return -EAGAIN;
	while (done < len) {
		loff_t pos = (loff_t)(off + done);
		/* non-blocking on the pipe only: a full pipe must not hang this worker */
		ssize_t r = splice(fd, &pos, io->pipe[1], NULL, clamp_len(io, len - done),
				   SPLICE_F_NONBLOCK);

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			/* EOF: the source shrank; EINVAL: a source that cannot splice (copied) */
			rc = r == 0 ? -EIO : errno == EINVAL || errno == EAGAIN ? -EAGAIN : -errno;
			qv_io_splice_reset(io);
			return rc;
		}
		done += (uint64_t)r;
	}
	*rd = io->pipe[0];
	return 0;
}
