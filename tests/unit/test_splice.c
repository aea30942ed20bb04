/* test_splice.c - the splice read path: which requests are one run of one source (every offset
 * and length of a file of memory, a plain extent and strided runs), and the thread's pipe:
 * exactly the run's bytes, EIO (and an empty pipe) when the source ends early, nothing left
 * over from a reply that was not taken. */
#include "unit.h"
#include "util_test.h"

#include "qv_io.h"
#include "qv_vfile.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#define SEED 5
#define SRC_SIZE (64 * 1024)

/* mem [0, 13) + source [20, 20+30000) at [13, 30013) + 4 runs of 3000 bytes every 10000 from
 * source 32000, at [30013, 42013) */
static int make_vf(struct qv_vfile *vf, char *mem)
{
	int rc = qv_vfile_add(vf, &(struct qv_seg){ .voff = 0, .len = 13, .src = QV_SEG_MEM,
						    .mem = mem });

	if (!rc)
		rc = qv_vfile_add(vf, &(struct qv_seg){ .voff = 13, .len = 30000, .src = 0,
							.soff = 20, .run = 30000, .stride = 30000 });
	if (!rc)
		rc = qv_vfile_add(vf, &(struct qv_seg){ .voff = 30013, .len = 12000, .src = 0,
							.soff = 32000, .run = 3000, .stride = 10000 });
	return rc;
}

/* The run [off, off+len) is, worked out from the layout above: 0 and where, or -EINVAL. */
static int want_run(uint64_t off, uint64_t len, uint64_t *soff, uint64_t *n)
{
	uint64_t end = off + len < 42013 ? off + len : 42013;

	if (off >= 42013 || len == 0 || off < 13)
		return -EINVAL;
	*n = end - off;
	if (off < 30013) {
		*soff = 20 + (off - 13);
		return end <= 30013 ? 0 : -EINVAL;
	}
	*soff = 32000 + (off - 30013) / 3000 * 10000 + (off - 30013) % 3000;
	return (off - 30013) % 3000 + *n <= 3000 ? 0 : -EINVAL;
}

TEST(splice_run_every_range)
{
	static const uint64_t lens[] = { 0, 1, 2, 999, 1000, 2999, 3000, 3001, 29987, 29988,
					 29999, 30000, 50000 };
	static const uint64_t offs[] = { 0, 1, 12, 13, 14, 1000, 30000, 30012, 30013, 30014,
					 33012, 33013, 36012, 39013, 42012, 42013, 50000 };
	struct qv_vfile vf = { 0 };
	char mem[13] = "HEADERBYTES!";

	if (!CHECK_EQ_INT(make_vf(&vf, mem), 0))
		goto out;
	for (size_t i = 0; i < sizeof(offs) / sizeof(offs[0]); i++) {
		for (size_t k = 0; k < sizeof(lens) / sizeof(lens[0]); k++) {
			uint64_t ws = 0, wn = 0, soff = 7;
			size_t n = 7;
			uint32_t src = 9;
			int want = want_run(offs[i], lens[k], &ws, &wn);
			int rc = qv_vfile_run(&vf, offs[i], lens[k], &src, &soff, &n);

			if (!CHECK_MSG(rc == want && (rc || (src == 0 && soff == ws && n == wn)),
				       "off %llu len %llu: rc %d src %u soff %llu n %zu, want rc %d "
				       "soff %llu n %llu",
				       (unsigned long long)offs[i], (unsigned long long)lens[k], rc,
				       src, (unsigned long long)soff, n, want,
				       (unsigned long long)ws, (unsigned long long)wn))
				goto out;
		}
	}
out:
	free(vf.seg);
}

struct sfix {
	char *dir, *path;
	int fd;
	struct qv_io *io;
	char *expect;
};

static bool sfix_open(struct sfix *f)
{
	struct qv_io_cfg cfg = { .backend = QV_IO_URING };

	memset(f, 0, sizeof(*f));
	f->fd = -1;
	f->dir = ut_tmpdir();
	if (!CHECK(f->dir))
		return false;
	f->path = ut_path(f->dir, "src.bin");
	f->expect = malloc(SRC_SIZE);
	if (!CHECK(f->expect) || !CHECK_EQ_INT(ut_write_pattern(f->path, SEED, SRC_SIZE), 0))
		return false;
	ut_fill(f->expect, SEED, 0, SRC_SIZE);
	f->fd = open(f->path, O_RDONLY);
	return CHECK(f->fd >= 0) && CHECK_EQ_INT(qv_io_new(&cfg, &f->io), 0);
}

static void sfix_close(struct sfix *f)
{
	qv_io_free(f->io);
	if (f->fd >= 0)
		close(f->fd);
	ut_rmtree(f->dir);
	free(f->dir);
	free(f->path);
	free(f->expect);
}

/* The pipe rd holds exactly the source's bytes [off, off+n): read them all, then nothing. */
static bool pipe_holds(struct sfix *f, int rd, uint64_t off, size_t n)
{
	char *buf = malloc(n + 1);
	size_t got = 0;
	int left = -1;
	bool ok;

	while (buf && got < n) {
		ssize_t r = read(rd, buf + got, n - got);

		if (r <= 0)
			break;
		got += (size_t)r;
	}
	ok = CHECK_MSG(buf && got == n && memcmp(buf, f->expect + off, n) == 0,
		       "off %llu n %zu: got %zu bytes, %s", (unsigned long long)off, n, got,
		       buf && got == n ? "wrong ones" : "short");
	ok = CHECK(ioctl(rd, FIONREAD, &left) == 0 && left == 0) && ok;
	free(buf);
	return ok;
}

TEST(splice_exact_bytes)
{
	static const struct { uint64_t off; size_t n; } cases[] = {
		{ 0, 1 }, { 0, 4096 }, { 1, 4096 }, { 4095, 8193 }, { 100, 60000 }, { 0, SRC_SIZE },
		{ SRC_SIZE - 1, 1 },
	};
	struct sfix f;
	int rd;

	if (!sfix_open(&f))
		goto out;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		int rc = qv_io_splice(f.io, f.fd, cases[i].off, cases[i].n, &rd);

		if (!CHECK_MSG(rc == 0, "off %llu n %zu: rc %d", (unsigned long long)cases[i].off,
			       cases[i].n, rc) ||
		    !pipe_holds(&f, rd, cases[i].off, cases[i].n))
			goto out;
	}
out:
	sfix_close(&f);
}

/* A source shorter than the run: EIO, never a short pipe (a short reply would read as EOF),
 * and the pipe is empty for the next request. */
TEST(splice_past_eof_is_eio)
{
	struct sfix f;
	int rd = -1;

	if (!sfix_open(&f))
		goto out;
	CHECK_EQ_INT(qv_io_splice(f.io, f.fd, SRC_SIZE - 100, 200, &rd), -EIO);
	CHECK_EQ_INT(qv_io_splice(f.io, f.fd, SRC_SIZE, 10, &rd), -EIO);
	CHECK_EQ_INT(truncate(f.path, 5000), 0);
	CHECK_EQ_INT(qv_io_splice(f.io, f.fd, 4000, 8192, &rd), -EIO);
	if (CHECK_EQ_INT(qv_io_splice(f.io, f.fd, 10, 4000, &rd), 0))
		pipe_holds(&f, rd, 10, 4000);
out:
	sfix_close(&f);
}

/* Bytes a reply left in the pipe never go out with the next one; a run the pipe cannot
 * hold whole is -EAGAIN (the caller copies it). */
TEST(splice_leftover_dropped)
{
	struct sfix f;
	size_t max = qv_io_splice_max();
	int rd;

	if (!sfix_open(&f))
		goto out;
	CHECK(max >= 8192);
	CHECK_EQ_INT(qv_io_splice(f.io, f.fd, 0, 5000, &rd), 0);
	if (CHECK_EQ_INT(qv_io_splice(f.io, f.fd, 7000, 3000, &rd), 0))
		pipe_holds(&f, rd, 7000, 3000);
	CHECK_EQ_INT(qv_io_splice(f.io, f.fd, 0, 4 << 20, &rd), -EAGAIN);
	CHECK_EQ_INT(qv_io_splice(f.io, f.fd, 0, 0, &rd), -EAGAIN);
	qv_io_splice_reset(f.io);
	if (CHECK_EQ_INT(qv_io_splice(f.io, f.fd, 3, 9000, &rd), 0))
		pipe_holds(&f, rd, 3, 9000);
out:
	sfix_close(&f);
}
