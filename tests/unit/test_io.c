/* test_io.c - batched positional reads: io_uring (ring smaller than the batch, short reads,
 * injected -EAGAIN), the pread fallback, and reads past the end of a source. */
#include "unit.h"
#include "util_test.h"

#include "qv_io.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SRC_SIZE (3u << 20) /* 3 MiB of known bytes */
#define SEED 7

struct fix {
	char *dir, *path;
	int fd;
};

static bool fix_open(struct fix *f)
{
	f->fd = -1;
	f->path = NULL;
	f->dir = ut_tmpdir();
	if (!CHECK(f->dir))
		return false;
	f->path = ut_path(f->dir, "src.bin");
	if (!CHECK_EQ_INT(ut_write_pattern(f->path, SEED, SRC_SIZE), 0))
		return false;
	f->fd = open(f->path, O_RDONLY | O_CLOEXEC);
	return CHECK(f->fd >= 0);
}

static void fix_close(struct fix *f)
{
	if (f->fd >= 0)
		close(f->fd);
	ut_rmtree(f->dir);
	free(f->dir);
	free(f->path);
}

/* n reads of varied offsets and lengths (some large, some 1 byte), each into its own buffer. */
static struct qv_iop *make_ops(int fd, size_t n, uint64_t max_len)
{
	struct qv_iop *ops = calloc(n, sizeof(*ops));
	uint64_t x = 88172645463325252ULL;

	if (!ops)
		abort();
	for (size_t i = 0; i < n; i++) {
		x ^= x << 13, x ^= x >> 7, x ^= x << 17;
		ops[i].fd = fd;
		ops[i].len = i % 7 == 0 ? 1 : 1 + x % max_len;
		ops[i].off = (x >> 20) % (SRC_SIZE - ops[i].len + 1);
		ops[i].dst = malloc(ops[i].len);
		if (!ops[i].dst)
			abort();
		memset(ops[i].dst, 0xa5, ops[i].len);
	}
	return ops;
}

static void free_ops(struct qv_iop *ops, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(ops[i].dst);
	free(ops);
}

/* Every op's buffer holds the source bytes; reports the first wrong op only. */
static bool ops_right(const struct qv_iop *ops, size_t n)
{
	char *want = NULL;
	size_t cap = 0;
	bool ok = true;

	for (size_t i = 0; i < n && ok; i++) {
		if (ops[i].len > cap) {
			free(want);
			cap = ops[i].len;
			want = malloc(cap);
			if (!want)
				abort();
		}
		ut_fill(want, SEED, ops[i].off, ops[i].len);
		ok = CHECK_MSG(memcmp(want, ops[i].dst, ops[i].len) == 0,
			       "op %zu (off %llu len %llu) read wrong bytes", i,
			       (unsigned long long)ops[i].off, (unsigned long long)ops[i].len);
	}
	free(want);
	return ok;
}

/* Run n varied ops with cfg on a fresh reader; checks backend, result and bytes. */
static void run_case(const struct qv_io_cfg *cfg, enum qv_io_backend want_backend, size_t n,
		     uint64_t max_len)
{
	struct fix f;
	struct qv_io *io = NULL;
	struct qv_iop *ops;

	if (!fix_open(&f))
		goto out;
	if (!CHECK_EQ_INT(qv_io_new(cfg, &io), 0))
		goto out;
	CHECK_EQ_INT(qv_io_backend_of(io), want_backend);
	ops = make_ops(f.fd, n, max_len);
	if (CHECK_EQ_INT(qv_io_run(io, ops, n), 0))
		ops_right(ops, n);
	/* the same reader again: state left by the first batch must not matter */
	for (size_t i = 0; i < n; i++)
		memset(ops[i].dst, 0, ops[i].len);
	if (CHECK_EQ_INT(qv_io_run(io, ops, n), 0))
		ops_right(ops, n);
	free_ops(ops, n);
out:
	qv_io_free(io);
	fix_close(&f);
}

TEST(io_uring_many_ops_small_ring)
{
	struct qv_io_cfg cfg = { .backend = QV_IO_URING, .entries = 8 };

	run_case(&cfg, QV_IO_URING, 500, 20000);
}

TEST(io_uring_default_ring)
{
	struct qv_io_cfg cfg = { .backend = QV_IO_URING };

	run_case(&cfg, QV_IO_URING, 300, 65536);
}

TEST(io_uring_ring_of_one)
{
	struct qv_io_cfg cfg = { .backend = QV_IO_URING, .entries = 1 };

	run_case(&cfg, QV_IO_URING, 50, 10000);
}

TEST(io_uring_short_reads)
{
	struct qv_io_cfg cfg = { .backend = QV_IO_URING, .entries = 8, .max_chunk = 4096 };

	run_case(&cfg, QV_IO_URING, 200, 200000);
}

TEST(io_uring_whole_file_one_op)
{
	struct qv_io_cfg cfg = { .backend = QV_IO_URING, .entries = 4, .max_chunk = 4096 };
	struct fix f;
	struct qv_io *io = NULL;
	struct qv_iop op;
	char *buf = malloc(SRC_SIZE), *want = malloc(SRC_SIZE);

	if (!buf || !want)
		abort();
	if (fix_open(&f) && CHECK_EQ_INT(qv_io_new(&cfg, &io), 0)) {
		op = (struct qv_iop){ .fd = f.fd, .off = 0, .len = SRC_SIZE, .dst = buf };
		if (CHECK_EQ_INT(qv_io_run(io, &op, 1), 0)) {
			ut_fill(want, SEED, 0, SRC_SIZE);
			CHECK_MEM(buf, want, SRC_SIZE);
			CHECK_EQ_U64(op.done, SRC_SIZE);
		}
	}
	qv_io_free(io);
	fix_close(&f);
	free(buf);
	free(want);
}

TEST(io_uring_injected_eagain)
{
	struct qv_io_cfg cfg = { .backend = QV_IO_URING, .entries = 8, .eagain_every = 3 };

	run_case(&cfg, QV_IO_URING, 300, 30000);
}

TEST(io_uring_eagain_and_short_reads)
{
	struct qv_io_cfg cfg = { .backend = QV_IO_URING, .entries = 2, .max_chunk = 1000,
				 .eagain_every = 2 };

	run_case(&cfg, QV_IO_URING, 60, 9000);
}

TEST(io_pread_backend)
{
	struct qv_io_cfg cfg = { .backend = QV_IO_PREAD };

	run_case(&cfg, QV_IO_PREAD, 300, 65536);
}

TEST(io_pread_short_chunks)
{
	struct qv_io_cfg cfg = { .backend = QV_IO_PREAD, .max_chunk = 777 };

	run_case(&cfg, QV_IO_PREAD, 100, 20000);
}

TEST(io_fallback_on_eperm_logged_once)
{
	atomic_int logged = 0;
	struct qv_io_cfg cfg = { .backend = QV_IO_URING, .entries = 8, .fail_setup_errno = EPERM,
				 .fallback_logged = &logged };
	struct qv_io *a = NULL, *b = NULL;
	struct ut_capture cap;
	char *text;

	CHECK_EQ_INT(ut_stderr_begin(&cap), 0);
	CHECK_EQ_INT(qv_io_new(&cfg, &a), 0);
	CHECK_EQ_INT(qv_io_new(&cfg, &b), 0);
	text = ut_stderr_end(&cap);
	CHECK_EQ_INT(atomic_load(&logged), 1);
	CHECK_MSG(ut_count(text, "pread") == 1, "fallback logged %zu times: \"%s\"",
		  ut_count(text, "pread"), text);
	free(text);
	if (a)
		CHECK_EQ_INT(qv_io_backend_of(a), QV_IO_PREAD);
	if (b)
		CHECK_EQ_INT(qv_io_backend_of(b), QV_IO_PREAD);
	qv_io_free(a);
	qv_io_free(b);
	/* and the fallback reads right */
	run_case(&cfg, QV_IO_PREAD, 100, 20000);
}

TEST(io_fallback_errnos)
{
	static const int fall[] = { EPERM, ENOSYS, ENOMEM };

	for (size_t i = 0; i < 3; i++) {
		atomic_int logged = 0;
		struct qv_io_cfg cfg = { .backend = QV_IO_URING, .fail_setup_errno = fall[i],
					 .fallback_logged = &logged };
		struct qv_io *io = NULL;
		struct ut_capture cap;

		ut_stderr_begin(&cap);
		CHECK_MSG(qv_io_new(&cfg, &io) == 0, "errno %d did not fall back", fall[i]);
		free(ut_stderr_end(&cap));
		if (io)
			CHECK_EQ_INT(qv_io_backend_of(io), QV_IO_PREAD);
		qv_io_free(io);
	}
	/* without a shared flag it still falls back */
	{
		struct qv_io_cfg cfg = { .backend = QV_IO_URING, .fail_setup_errno = EPERM };
		struct qv_io *io = NULL;
		struct ut_capture cap;

		ut_stderr_begin(&cap);
		CHECK_EQ_INT(qv_io_new(&cfg, &io), 0);
		free(ut_stderr_end(&cap));
		if (io)
			CHECK_EQ_INT(qv_io_backend_of(io), QV_IO_PREAD);
		qv_io_free(io);
	}
}

TEST(io_pread_wanted_never_logs)
{
	atomic_int logged = 0;
	struct qv_io_cfg cfg = { .backend = QV_IO_PREAD, .fallback_logged = &logged };
	struct qv_io *io = NULL;

	CHECK_EQ_INT(qv_io_new(&cfg, &io), 0);
	CHECK_EQ_INT(atomic_load(&logged), 0);
	qv_io_free(io);
}

/* A read crossing or starting past EOF is an error for both backends, never a short success. */
static void past_eof(enum qv_io_backend be, unsigned entries)
{
	struct qv_io_cfg cfg = { .backend = be, .entries = entries };
	struct fix f;
	struct qv_io *io = NULL;
	char buf[64];

	if (!fix_open(&f) || !CHECK_EQ_INT(qv_io_new(&cfg, &io), 0))
		goto out;
	struct qv_iop cross = { .fd = f.fd, .off = SRC_SIZE - 10, .len = 20, .dst = buf };
	struct qv_iop beyond = { .fd = f.fd, .off = SRC_SIZE + 100, .len = 8, .dst = buf };
	struct qv_iop good = { .fd = f.fd, .off = 5, .len = 20, .dst = buf };

	CHECK_MSG(qv_io_run(io, &cross, 1) == -EIO, "backend %d: crossing EOF", be);
	CHECK_MSG(qv_io_run(io, &beyond, 1) == -EIO, "backend %d: past EOF", be);
	/* the reader stays usable afterwards */
	if (CHECK_EQ_INT(qv_io_run(io, &good, 1), 0)) {
		char want[20];

		ut_fill(want, SEED, 5, 20);
		CHECK_MEM(buf, want, 20);
	}
out:
	qv_io_free(io);
	fix_close(&f);
}

TEST(io_uring_past_eof_is_eio)
{
	past_eof(QV_IO_URING, 8);
}

TEST(io_pread_past_eof_is_eio)
{
	past_eof(QV_IO_PREAD, 0);
}

/* One bad op among many in a batch larger than the ring: -EIO, nothing left in flight. */
TEST(io_uring_error_in_big_batch_drains)
{
	struct qv_io_cfg cfg = { .backend = QV_IO_URING, .entries = 8, .max_chunk = 4096 };
	struct fix f;
	struct qv_io *io = NULL;
	struct qv_iop *ops;

	if (!fix_open(&f) || !CHECK_EQ_INT(qv_io_new(&cfg, &io), 0))
		goto out;
	ops = make_ops(f.fd, 100, 30000);
	free(ops[40].dst);
	ops[40].dst = malloc(100);
	ops[40].off = SRC_SIZE - 50;
	ops[40].len = 100;
	CHECK_EQ_INT(qv_io_run(io, ops, 100), -EIO);
	/* a later batch on the same ring sees no stale completions */
	ops[40].off = 0;
	if (CHECK_EQ_INT(qv_io_run(io, ops, 100), 0))
		ops_right(ops, 100);
	free_ops(ops, 100);
out:
	qv_io_free(io);
	fix_close(&f);
}

TEST(io_bad_fd)
{
	static const enum qv_io_backend be[] = { QV_IO_URING, QV_IO_PREAD };

	for (size_t i = 0; i < 2; i++) {
		struct qv_io_cfg cfg = { .backend = be[i] };
		struct qv_io *io = NULL;
		char buf[8];
		struct qv_iop op = { .fd = 1000000, .off = 0, .len = 8, .dst = buf };

		if (!CHECK_EQ_INT(qv_io_new(&cfg, &io), 0))
			continue;
		CHECK_MSG(qv_io_run(io, &op, 1) == -EBADF, "backend %d", be[i]);
		qv_io_free(io);
	}
}

TEST(io_empty_batch)
{
	static const enum qv_io_backend be[] = { QV_IO_URING, QV_IO_PREAD };

	for (size_t i = 0; i < 2; i++) {
		struct qv_io_cfg cfg = { .backend = be[i] };
		struct qv_io *io = NULL;

		if (!CHECK_EQ_INT(qv_io_new(&cfg, &io), 0))
			continue;
		CHECK_EQ_INT(qv_io_run(io, NULL, 0), 0);
		qv_io_free(io);
	}
}

/* "Perform all n reads completely": a zero-length read is complete at once, in both backends. */
TEST(io_zero_length_op)
{
	static const enum qv_io_backend be[] = { QV_IO_URING, QV_IO_PREAD };

	for (size_t i = 0; i < 2; i++) {
		struct qv_io_cfg cfg = { .backend = be[i] };
		struct fix f;
		struct qv_io *io = NULL;
		char buf[8];

		if (fix_open(&f) && CHECK_EQ_INT(qv_io_new(&cfg, &io), 0)) {
			struct qv_iop ops[2] = { { .fd = f.fd, .off = 10, .len = 0, .dst = buf },
						 { .fd = f.fd, .off = 10, .len = 8, .dst = buf } };

			CHECK_MSG(qv_io_run(io, ops, 2) == 0, "backend %d: zero-length op failed",
				  be[i]);
		}
		qv_io_free(io);
		fix_close(&f);
	}
}

TEST(io_free_null)
{
	qv_io_free(NULL);
	CHECK(1);
}

/* A submission that fails unexpectedly while reads are in flight: the run reports the error
 * only once the kernel is done with every buffer, and the ring holds nothing stale. Before,
 * the run returned at once; the next batch took the old batch's completions as its own (op i
 * of the old batch counted as progress of op i of the new) and left bytes unread. */
TEST(io_uring_submit_failure_drains_the_ring)
{
	struct qv_io_cfg cfg = { .backend = QV_IO_URING, .entries = 8, .fail_submit_nth = 2 };
	struct fix f;
	struct qv_io *io = NULL;
	struct qv_iop *ops, *again;

	if (!fix_open(&f) || !CHECK_EQ_INT(qv_io_new(&cfg, &io), 0))
		goto out;
	ops = make_ops(f.fd, 64, 20000);
	again = make_ops(f.fd, 64, 20000);
	for (size_t i = 0; i < 64; i++) { /* longer than the first batch's: stale results would
					    * look like partial progress, not like completion */
		free(again[i].dst);
		again[i].len = ops[i].len + 4096;
		again[i].off = ops[i].off < SRC_SIZE - again[i].len ? ops[i].off : SRC_SIZE - again[i].len;
		again[i].dst = malloc(again[i].len);
		if (!again[i].dst)
			abort();
		memset(again[i].dst, 0xa5, again[i].len);
	}
	CHECK_EQ_INT(qv_io_run(io, ops, 64), -EIO);
	for (size_t i = 0; i < 64; i++)
		memset(ops[i].dst, 0x5a, ops[i].len);
	if (CHECK_EQ_INT(qv_io_run(io, again, 64), 0))
		ops_right(again, 64);
	for (size_t i = 0; i < 64; i++) /* nothing wrote into the first batch after it returned */
		for (size_t k = 0; k < ops[i].len; k++)
			if (!CHECK_MSG((unsigned char)ops[i].dst[k] == 0x5a,
				       "op %zu of the failed batch written after the run returned", i))
				k = ops[i].len, i = 64;
	CHECK_EQ_INT(qv_io_backend_of(io), QV_IO_URING); /* the ring was rebuilt, not given up */
	free_ops(ops, 64);
	free_ops(again, 64);
out:
	qv_io_free(io);
	fix_close(&f);
}
