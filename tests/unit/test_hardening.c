/* test_hardening.c - hostile inputs and unlucky timing: sharded saves whose sizes would
 * overflow and consolidated headers the strict parser would reject refuse the mount with one
 * line; files swapped for links, FIFOs or other files after the scan are never opened as the
 * scanned ones, and a FIFO never blocks an open. */
#include "unit.h"
#include "view_fixture.h"

#include "qv_scan.h"
#include "qv_vfile.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Rank file r of a save holding one BF16 tensor "w" of shape shape at offsets off (3 dims). */
static void put_rank(const char *dir, int r, const char *shape, const char *off)
{
	char name[64], json[512];

	snprintf(name, sizeof(name), "shard-%05d-model-00001-of-00001.safetensors", r + 1);
	snprintf(json, sizeof(json),
		 "{\"__metadata__\":{\"format\":\"pt\",\"DCP_SHARDING_INFO\":"
		 "\"{\\\"w\\\": {\\\"saved_offsets\\\": [%s]}}\"},"
		 "\"w\":{\"dtype\":\"BF16\",\"shape\":[%s],\"data_offsets\":[0,0]}}",
		 off, shape);
	vt_put_st(dir, name, json, 0, 1);
}

static void expect_fail(const char *dir_in, const char *want1, const char *want2)
{
	struct qv_mount_opts o = { 0 };
	struct vt v;
	int rc = vt_mount(&v, (char *)dir_in, &o);

	CHECK_MSG(rc == -EINVAL, "mount rc %d (%s)", rc, v.err);
	CHECK_HAS(v.err, want1);
	CHECK_HAS(v.err, want2);
	CHECK_MSG(!strchr(v.err, '\n'), "more than one line: %s", v.err);
	vt_fini(&v);
}

/* Zero-size chunks at 2^43 in three dims: the volume 2^129 wrapped to 0 in 128 bits, equal to
 * the chunks' sum, and the view served a [2^43, 2^43, 2^43] tensor over no data. */
TEST(dcp_volume_overflow_refused)
{
	char *dir = ut_tmpdir();

	put_rank(dir, 0, "0,0,0", "0,0,0");
	put_rank(dir, 1, "0,0,0", "8796093022208,8796093022208,8796093022208");
	expect_fail(dir, "tensor \"w\"", "overflows 64 bits");
}

/* Nothing overflows, but a dimension of 2^54 is more than a header can say: the consolidated
 * header would be one the strict parser rejects, so it is not served. */
TEST(dcp_header_past_2_53_refused)
{
	char *dir = ut_tmpdir();

	put_rank(dir, 0, "0,0,9007199254740992", "0,0,9007199254740992");
	put_rank(dir, 1, "0,0,0", "0,0,0");
	expect_fail(dir, "model-00001-of-00001.safetensors", "fails the strict parser");
}

/* ---- files swapped between the scan and the open ---- */

/* Scan dir, then replace dir/name by what swap does (a rename, as an attacker would). */
static const struct qv_snode *scan_then_swap(const char *dir, struct qv_scan *sc,
					     void (*swap)(const char *path, const char *dir))
{
	char err[QV_ERRLEN] = "", *p = ut_path(dir, "f.json");

	if (!CHECK_MSG(qv_scan_tree(dir, sc, err, sizeof(err)) == 0, "%s", err)) {
		free(p);
		return NULL;
	}
	swap(p, dir);
	free(p);
	return sc->nn == 2 ? &sc->n[1] : NULL;
}

static void by_link(const char *path, const char *dir)
{
	char *tmp = ut_path(dir, "tmp"), *out = ut_path(dir, "../outside.json");

	CHECK(ut_write_file(out, "{}", 2) == 0);
	CHECK(symlink(out, tmp) == 0 && rename(tmp, path) == 0);
	free(tmp);
	free(out);
}

static void by_fifo(const char *path, const char *dir)
{
	char *tmp = ut_path(dir, "tmp");

	CHECK(mkfifo(tmp, 0644) == 0 && rename(tmp, path) == 0);
	free(tmp);
}

static void by_file(const char *path, const char *dir)
{
	char *tmp = ut_path(dir, "tmp");

	CHECK(ut_write_file(tmp, "{\"x\":1}", 7) == 0 && rename(tmp, path) == 0);
	free(tmp);
}

static void swapped_open(void (*swap)(const char *, const char *), const char *want)
{
	char *dir = ut_tmpdir(), *f = ut_path(dir, "f.json"), *out = ut_path(dir, "../outside.json");
	char why[QV_ERRLEN] = "";
	struct qv_buf b = { 0 };
	struct qv_scan sc;
	const struct qv_snode *n;
	struct stat st;
	int fd;

	CHECK(ut_write_file(f, "{}", 2) == 0);
	n = scan_then_swap(dir, &sc, swap);
	if (n) {
		fd = qv_scan_open(n, &st, why, sizeof(why)); /* a FIFO would block here before */
		CHECK_EQ_INT(fd, -ESTALE);
		CHECK_HAS(why, want);
		if (fd >= 0)
			close(fd);
		CHECK_EQ_INT(qv_scan_read(n, 1024, &b, why, sizeof(why)), -ESTALE);
		CHECK_EQ_U64(b.len, 0);
		qv_scan_free(&sc);
	}
	unlink(out);
	ut_rmtree(dir);
	free(dir);
	free(f);
	free(out);
}

TEST(scan_open_refuses_a_link_swapped_in)
{
	swapped_open(by_link, "now a symlink");
}

TEST(scan_open_refuses_a_fifo_swapped_in_without_blocking)
{
	swapped_open(by_fifo, "not a regular file");
}

TEST(scan_open_refuses_another_file)
{
	swapped_open(by_file, "another file");
}

TEST(scan_open_gives_a_blocking_fd_of_the_scanned_file)
{
	char *dir = ut_tmpdir(), *f = ut_path(dir, "f.json");
	char why[QV_ERRLEN] = "", err[QV_ERRLEN] = "";
	struct qv_buf b = { 0 };
	struct qv_scan sc;
	struct stat st;
	int fd;

	CHECK(ut_write_file(f, "{\"a\":2}", 7) == 0);
	if (CHECK_MSG(qv_scan_tree(dir, &sc, err, sizeof(err)) == 0, "%s", err)) {
		fd = qv_scan_open(&sc.n[1], &st, why, sizeof(why));
		if (CHECK_MSG(fd >= 0, "%s", why)) {
			CHECK_EQ_INT(fcntl(fd, F_GETFL) & O_NONBLOCK, 0); /* io_uring must wait */
			CHECK_EQ_U64(st.st_ino, sc.n[1].st.st_ino);
			close(fd);
		}
		CHECK_EQ_INT(qv_scan_read(&sc.n[1], 1024, &b, why, sizeof(why)), 0);
		CHECK_EQ_U64(b.len, 7);
		qv_buf_free(&b);
		qv_scan_free(&sc);
	}
	ut_rmtree(dir);
	free(dir);
	free(f);
}

struct opener {
	struct qv_source *s;
	atomic_int done;
	int rc;
};

static void *open_source(void *arg)
{
	struct opener *o = arg;

	o->rc = qv_source_open(o->s);
	atomic_store(&o->done, 1);
	return NULL;
}

/* A pass-through source whose path became a FIFO: opening it fails at once (it blocked the
 * worker until a writer came), and what opens is blocking again for io_uring. */
TEST(source_open_does_not_block_on_a_fifo)
{
	char *dir = ut_tmpdir(), *p = ut_path(dir, "config.json");
	struct qv_source s = { .path = p, .rel = (char *)"config.json", .dev = 1, .ino = 1 };
	struct opener o = { .s = &s };
	struct ut_capture cap;
	pthread_t th;

	atomic_init(&s.fd, -1);
	CHECK(mkfifo(p, 0644) == 0);
	ut_stderr_begin(&cap);
	CHECK(pthread_create(&th, NULL, open_source, &o) == 0);
	for (int i = 0; i < 200 && !atomic_load(&o.done); i++)
		usleep(10000);
	if (!CHECK_MSG(atomic_load(&o.done), "qv_source_open blocked on a FIFO")) {
		int w = open(p, O_WRONLY | O_NONBLOCK); /* let it go */

		if (w >= 0)
			close(w);
	}
	pthread_join(th, NULL);
	free(ut_stderr_end(&cap));
	CHECK_EQ_INT(o.rc, -EIO);
	if (atomic_load(&s.fd) >= 0)
		close(atomic_load(&s.fd));
	ut_rmtree(dir);
	free(dir);
	free(p);
}
