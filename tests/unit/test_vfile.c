/* test_vfile.c - virtual files as segment lists: every (offset, length) of a small file made of a
 * memory segment, a plain extent and a strided run; extent merging; stale-source detection. */
#include "unit.h"
#include "util_test.h"

#include "qv_vfile.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define SEED 11
#define SRC_SIZE 256

struct vfix {
	char *dir, *path;
	struct qv_source src[2];
	struct qv_vfile vf;
	char *expect; /* the file's bytes, computed independently */
	struct qv_io *io;
	struct qv_rdscratch sc;
};

static bool source_init(struct qv_source *s, const char *path)
{
	struct stat st;

	memset(s, 0, sizeof(*s));
	atomic_init(&s->fd, -1);
	if (!CHECK_EQ_INT(stat(path, &st), 0))
		return false;
	s->path = strdup(path);
	s->rel = strdup(strrchr(path, '/') + 1);
	s->dev = st.st_dev;
	s->ino = st.st_ino;
	s->size = st.st_size;
	s->mtime = st.st_mtim;
	return s->path && s->rel;
}

static void source_fini(struct qv_source *s)
{
	if (atomic_load(&s->fd) >= 0)
		close(atomic_load(&s->fd));
	free(s->path);
	free(s->rel);
}

static const char HDR[] = "HEADERBYTES!!"; /* 13 bytes held in memory */

/* mem "HEADERBYTES!!" (13) + source[20..50) (30) + strided: 4 runs of 3 bytes at 100 + 10k (12) */
static bool vfix_open(struct vfix *f, enum qv_io_backend be)
{
	struct qv_io_cfg cfg = { .backend = be, .entries = 4 };
	size_t pos = 0;

	memset(f, 0, sizeof(*f));
	atomic_init(&f->src[0].fd, -1);
	atomic_init(&f->src[1].fd, -1);
	f->dir = ut_tmpdir();
	if (!CHECK(f->dir))
		return false;
	f->path = ut_path(f->dir, "src.bin");
	if (!CHECK_EQ_INT(ut_write_pattern(f->path, SEED, SRC_SIZE), 0) ||
	    !source_init(&f->src[0], f->path))
		return false;
	f->vf.mem = strdup(HDR);
	CHECK_EQ_INT(qv_vfile_add(&f->vf, &(struct qv_seg){ .voff = 0, .len = 13,
							    .src = QV_SEG_MEM, .mem = f->vf.mem }),
		     0);
	CHECK_EQ_INT(qv_vfile_add(&f->vf, &(struct qv_seg){ .voff = 13, .len = 30, .src = 0,
							    .soff = 20, .run = 30, .stride = 30 }),
		     0);
	CHECK_EQ_INT(qv_vfile_add(&f->vf, &(struct qv_seg){ .voff = 43, .len = 12, .src = 0,
							    .soff = 100, .run = 3, .stride = 10 }),
		     0);
	CHECK_EQ_INT(qv_vfile_use_src(&f->vf, 0), 0);
	f->expect = malloc(55);
	memcpy(f->expect, HDR, 13);
	pos = 13;
	ut_fill(f->expect + pos, SEED, 20, 30);
	pos += 30;
	for (int k = 0; k < 4; k++, pos += 3)
		ut_fill(f->expect + pos, SEED, 100 + 10 * (uint64_t)k, 3);
	if (!CHECK_EQ_U64(f->vf.size, 55) || !CHECK_EQ_U64(f->vf.nseg, 3))
		return false;
	return CHECK_EQ_INT(qv_io_new(&cfg, &f->io), 0);
}

static void vfix_close(struct vfix *f)
{
	qv_io_free(f->io);
	free(f->sc.ops);
	qv_vfile_fini(&f->vf);
	source_fini(&f->src[0]);
	source_fini(&f->src[1]);
	free(f->expect);
	ut_rmtree(f->dir);
	free(f->dir);
	free(f->path);
}

/* Count the bytes of [off, off+len) that lie in source segments (not memory). */
static uint64_t src_bytes_in(uint64_t off, uint64_t len)
{
	uint64_t a = off, b = off + len, n = 0;

	if (b > 55)
		b = 55;
	for (uint64_t p = a; p < b; p++)
		n += p >= 13;
	return n;
}

static void every_range(enum qv_io_backend be)
{
	static const size_t lens[] = { 0, 1, 2, 3, 4, 5, 7, 10, 12, 13, 30, 31, 42, 55, 56, 100 };
	struct vfix f;
	char buf[128];

	if (!vfix_open(&f, be))
		goto out;
	for (uint64_t off = 0; off <= 57; off++) {
		for (size_t li = 0; li < sizeof(lens) / sizeof(lens[0]); li++) {
			size_t len = lens[li], got = 999, want;
			uint64_t sb = 999;
			int rc;

			memset(buf, 0x5a, sizeof(buf));
			rc = qv_vfile_read(&f.vf, f.src, off, len, buf, f.io, &f.sc, &got, &sb);
			want = off >= 55 ? 0 : (len < 55 - off ? len : 55 - off);
			if (!CHECK_MSG(rc == 0 && got == want,
				       "off %llu len %zu: rc %d got %zu want %zu",
				       (unsigned long long)off, len, rc, got, want))
				goto out;
			if (!CHECK_MSG(memcmp(buf, f.expect + (off < 55 ? off : 0), want) == 0,
				       "off %llu len %zu: wrong bytes", (unsigned long long)off,
				       len))
				goto out;
			if (!CHECK_MSG((unsigned char)buf[want] == 0x5a,
				       "off %llu len %zu: wrote past the bytes it returned",
				       (unsigned long long)off, len))
				goto out;
			if (!CHECK_MSG(sb == (off >= 55 ? 0 : src_bytes_in(off, len)),
				       "off %llu len %zu: src_bytes %llu", (unsigned long long)off,
				       len, (unsigned long long)sb))
				goto out;
		}
	}
out:
	vfix_close(&f);
}

TEST(vfile_every_range_uring)
{
	every_range(QV_IO_URING);
}

TEST(vfile_every_range_pread)
{
	every_range(QV_IO_PREAD);
}

TEST(vfile_source_opened_lazily)
{
	struct vfix f;
	char buf[16];
	size_t got;
	uint64_t sb;

	if (!vfix_open(&f, QV_IO_URING))
		goto out;
	CHECK_EQ_INT(atomic_load(&f.src[0].fd), -1);
	/* the header alone needs no source */
	CHECK_EQ_INT(qv_vfile_read(&f.vf, f.src, 0, 13, buf, f.io, &f.sc, &got, &sb), 0);
	CHECK_EQ_INT(atomic_load(&f.src[0].fd), -1);
	CHECK_EQ_U64(sb, 0);
	CHECK_EQ_INT(qv_vfile_read(&f.vf, f.src, 10, 10, buf, f.io, &f.sc, &got, &sb), 0);
	CHECK(atomic_load(&f.src[0].fd) >= 0);
out:
	vfix_close(&f);
}

TEST(vfile_merge_adjacent_extents)
{
	struct qv_vfile vf = { 0 };

	CHECK_EQ_INT(qv_vfile_add(&vf, &(struct qv_seg){ .voff = 0, .len = 10, .src = 1,
							 .soff = 100, .run = 10, .stride = 10 }),
		     0);
	CHECK_EQ_INT(qv_vfile_add(&vf, &(struct qv_seg){ .voff = 10, .len = 5, .src = 1,
							 .soff = 110, .run = 5, .stride = 5 }),
		     0);
	CHECK_EQ_INT(qv_vfile_add(&vf, &(struct qv_seg){ .voff = 15, .len = 7, .src = 1,
							 .soff = 115, .run = 7, .stride = 7 }),
		     0);
	if (CHECK_EQ_U64(vf.nseg, 1)) {
		CHECK_EQ_U64(vf.seg[0].len, 22);
		CHECK_EQ_U64(vf.seg[0].run, 22);
		CHECK_EQ_U64(vf.seg[0].soff, 100);
	}
	CHECK_EQ_U64(vf.size, 22);
	/* zero-length segments add nothing */
	CHECK_EQ_INT(qv_vfile_add(&vf, &(struct qv_seg){ .voff = 22, .len = 0, .src = 1,
							 .soff = 500 }),
		     0);
	CHECK_EQ_U64(vf.nseg, 1);
	CHECK_EQ_U64(vf.size, 22);
	qv_vfile_fini(&vf);
	CHECK(vf.seg == NULL && vf.nseg == 0 && vf.size == 0);
}

TEST(vfile_no_merge_when_not_contiguous)
{
	struct qv_vfile vf = { 0 };
	static char mem[4] = "abcd";

	qv_vfile_add(&vf, &(struct qv_seg){ .voff = 0, .len = 10, .src = 1, .soff = 100, .run = 10,
					    .stride = 10 });
	/* other source */
	qv_vfile_add(&vf, &(struct qv_seg){ .voff = 10, .len = 10, .src = 2, .soff = 110,
					    .run = 10, .stride = 10 });
	/* gap in the source */
	qv_vfile_add(&vf, &(struct qv_seg){ .voff = 20, .len = 10, .src = 2, .soff = 121,
					    .run = 10, .stride = 10 });
	/* strided after plain */
	qv_vfile_add(&vf, &(struct qv_seg){ .voff = 30, .len = 6, .src = 2, .soff = 131, .run = 3,
					    .stride = 8 });
	/* plain after strided */
	qv_vfile_add(&vf, &(struct qv_seg){ .voff = 36, .len = 4, .src = 2, .soff = 147, .run = 4,
					    .stride = 4 });
	/* memory in between */
	qv_vfile_add(&vf, &(struct qv_seg){ .voff = 40, .len = 4, .src = QV_SEG_MEM, .mem = mem });
	qv_vfile_add(&vf, &(struct qv_seg){ .voff = 44, .len = 4, .src = 2, .soff = 151, .run = 4,
					    .stride = 4 });
	CHECK_EQ_U64(vf.nseg, 7);
	CHECK_EQ_U64(vf.size, 48);
	free(vf.seg);
}

TEST(vfile_many_segments_grow)
{
	struct qv_vfile vf = { 0 };

	/* alternate sources so nothing merges */
	for (uint64_t i = 0; i < 1000; i++)
		if (!CHECK_EQ_INT(qv_vfile_add(&vf, &(struct qv_seg){ .voff = i * 3, .len = 3,
								     .src = (uint32_t)(i & 1),
								     .soff = i * 3, .run = 3,
								     .stride = 3 }),
				  0))
			break;
	CHECK_EQ_U64(vf.nseg, 1000);
	CHECK_EQ_U64(vf.size, 3000);
	for (uint64_t i = 0; i < vf.nseg; i++)
		if (!CHECK_EQ_U64(vf.seg[i].voff, i * 3))
			break;
	qv_vfile_fini(&vf);
}

TEST(vfile_use_src_unique)
{
	struct qv_vfile vf = { 0 };

	qv_vfile_use_src(&vf, 3);
	qv_vfile_use_src(&vf, 1);
	qv_vfile_use_src(&vf, 3);
	qv_vfile_use_src(&vf, 1);
	qv_vfile_use_src(&vf, 0);
	if (CHECK_EQ_U64(vf.nsrcs, 3)) {
		CHECK_EQ_U64(vf.srcs[0], 3);
		CHECK_EQ_U64(vf.srcs[1], 1);
		CHECK_EQ_U64(vf.srcs[2], 0);
	}
	qv_vfile_fini(&vf);
}

/* Segments that do not tile the file must never produce a short or made-up reply. */
TEST(vfile_gap_is_eio)
{
	struct qv_io_cfg cfg = { .backend = QV_IO_PREAD };
	struct qv_vfile vf = { 0 };
	struct qv_rdscratch sc = { 0 };
	struct qv_io *io = NULL;
	/* the second segment points into the middle of a larger buffer, so a reader that
	 * miscomputes its start stays in bounds and the test fails instead of crashing */
	static char mem[32] = "0123456789abcdefghijklmnopqrstu";
	char buf[32];
	size_t got = 7;
	uint64_t sb;

	qv_vfile_add(&vf, &(struct qv_seg){ .voff = 0, .len = 4, .src = QV_SEG_MEM, .mem = mem });
	qv_vfile_add(&vf, &(struct qv_seg){ .voff = 8, .len = 4, .src = QV_SEG_MEM,
					    .mem = mem + 16 });
	CHECK_EQ_U64(vf.size, 12);
	if (CHECK_EQ_INT(qv_io_new(&cfg, &io), 0)) {
		CHECK_EQ_INT(qv_vfile_read(&vf, NULL, 0, 12, buf, io, &sc, &got, &sb), -EIO);
		CHECK_EQ_U64(got, 0);
		CHECK_EQ_INT(qv_vfile_read(&vf, NULL, 0, 4, buf, io, &sc, &got, &sb), 0);
		CHECK_EQ_U64(got, 4);
	}
	qv_io_free(io);
	free(vf.seg);
	free(sc.ops);
}

/* The source shrank after the mount: reading what is gone is EIO, not a short reply. */
TEST(vfile_source_shrunk_is_eio)
{
	struct vfix f;
	char buf[64];
	size_t got;
	uint64_t sb;

	if (!vfix_open(&f, QV_IO_URING))
		goto out;
	CHECK_EQ_INT(truncate(f.path, 105), 0);
	CHECK_EQ_INT(qv_vfile_read(&f.vf, f.src, 0, 55, buf, f.io, &f.sc, &got, &sb), -EIO);
	CHECK_EQ_U64(got, 0);
out:
	vfix_close(&f);
}

/* Helper: a scanned source over a fresh file; returns false on setup trouble. */
static bool stale_setup(char **dir, char **path, struct qv_source *s)
{
	*path = NULL;
	atomic_init(&s->fd, -1);
	s->path = s->rel = NULL;
	*dir = ut_tmpdir();
	if (!CHECK(*dir))
		return false;
	*path = ut_path(*dir, "w.safetensors");
	if (!CHECK_EQ_INT(ut_write_pattern(*path, 3, 4096), 0) || !source_init(s, *path))
		return false;
	if (!CHECK_EQ_INT(qv_source_check(s), 0))
		return false;
	return CHECK_EQ_INT(qv_source_open(s), 0) && CHECK_EQ_INT(qv_source_check(s), 0);
}

static void stale_teardown(char *dir, char *path, struct qv_source *s)
{
	source_fini(s);
	ut_rmtree(dir);
	free(dir);
	free(path);
}

TEST(vfile_source_check_size_change)
{
	struct qv_source s;
	struct ut_capture cap;
	char *dir, *path, *log;

	if (stale_setup(&dir, &path, &s)) {
		struct timespec keep[2] = { s.mtime, s.mtime };

		ut_write_pattern(path, 3, 4000); /* rewrite in place, other size */
		utimensat(AT_FDCWD, path, keep, 0); /* same mtime: only the size tells */
		ut_stderr_begin(&cap);
		CHECK_EQ_INT(qv_source_check(&s), -EIO);
		CHECK_EQ_INT(qv_source_check(&s), -EIO);
		log = ut_stderr_end(&cap);
		CHECK_MSG(ut_count(log, "w.safetensors") == 1, "logged: \"%s\"", log);
		free(log);
	}
	stale_teardown(dir, path, &s);
}

TEST(vfile_source_check_mtime_change)
{
	struct qv_source s;
	struct ut_capture cap;
	char *dir, *path;

	if (stale_setup(&dir, &path, &s)) {
		struct timespec t[2] = { { 1000000000, 5 }, { 1000000000, 5 } };

		CHECK_EQ_INT(utimensat(AT_FDCWD, path, t, 0), 0);
		ut_stderr_begin(&cap);
		CHECK_EQ_INT(qv_source_check(&s), -EIO);
		free(ut_stderr_end(&cap));
	}
	stale_teardown(dir, path, &s);
}

TEST(vfile_source_check_replaced_by_rename)
{
	struct qv_source s;
	struct ut_capture cap;
	char *dir, *path, *tmp = NULL;

	if (stale_setup(&dir, &path, &s)) {
		struct timespec keep[2] = { s.mtime, s.mtime };

		tmp = ut_path(dir, "new.tmp");
		/* same bytes, same size, same mtime: only the inode differs */
		CHECK_EQ_INT(ut_write_pattern(tmp, 3, 4096), 0);
		CHECK_EQ_INT(utimensat(AT_FDCWD, tmp, keep, 0), 0);
		CHECK_EQ_INT(rename(tmp, path), 0);
		ut_stderr_begin(&cap);
		CHECK_EQ_INT(qv_source_check(&s), -EIO);
		free(ut_stderr_end(&cap));
	}
	free(tmp);
	stale_teardown(dir, path, &s);
}

TEST(vfile_source_check_deleted)
{
	struct qv_source s;
	struct ut_capture cap;
	char *dir, *path;

	if (stale_setup(&dir, &path, &s)) {
		CHECK_EQ_INT(unlink(path), 0);
		ut_stderr_begin(&cap);
		CHECK_EQ_INT(qv_source_check(&s), -EIO);
		free(ut_stderr_end(&cap));
	}
	stale_teardown(dir, path, &s);
}

TEST(vfile_source_check_unchanged_ok)
{
	struct qv_source s;
	char *dir, *path;
	char buf[16];
	int fd;

	if (stale_setup(&dir, &path, &s)) {
		/* reading does not change anything the check looks at */
		fd = open(path, O_RDONLY);
		CHECK(fd >= 0 && read(fd, buf, sizeof(buf)) == sizeof(buf));
		if (fd >= 0)
			close(fd);
		CHECK_EQ_INT(qv_source_check(&s), 0);
		CHECK_EQ_INT(atomic_load(&s.stale_logged), 0);
	}
	stale_teardown(dir, path, &s);
}

TEST(vfile_source_open_missing)
{
	struct qv_source s = { .path = (char *)"/nonexistent/qvunit/x" };

	atomic_init(&s.fd, -1);
	CHECK_EQ_INT(qv_source_open(&s), -ENOENT);
	CHECK_EQ_INT(atomic_load(&s.fd), -1);
}
