/* util_test.c - helpers shared by the unit tests. */
#include "util_test.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

uint8_t ut_byte(uint64_t seed, uint64_t i)
{
	uint64_t x = (seed + 1) * 0x9e3779b97f4a7c15ULL ^ i;

	x ^= x >> 31;
	x *= 0xbf58476d1ce4e5b9ULL;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebULL;
	x ^= x >> 29;
	return (uint8_t)x;
}

void ut_fill(char *dst, uint64_t seed, uint64_t from, size_t n)
{
	for (size_t k = 0; k < n; k++)
		dst[k] = (char)ut_byte(seed, from + k);
}

char *ut_tmpdir(void)
{
	char tmpl[] = "/tmp/qvunit.XXXXXX";
	char *d = mkdtemp(tmpl);

	return d ? strdup(d) : NULL;
}

static int rm_one(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb, (void)ftw;
	if (flag == FTW_DP)
		rmdir(p);
	else
		unlink(p);
	return 0;
}

void ut_rmtree(const char *path)
{
	if (path)
		nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

char *ut_path(const char *dir, const char *name)
{
	char *p = qv_path_join(dir, name);

	if (!p)
		abort();
	return p;
}

static int write_all(int fd, const void *data, size_t len)
{
	const char *p = data;

	while (len) {
		ssize_t w = write(fd, p, len);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return w < 0 ? -errno : -EIO;
		p += w;
		len -= (size_t)w;
	}
	return 0;
}

int ut_write_file(const char *path, const void *data, size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	int rc;

	if (fd < 0)
		return -errno;
	rc = write_all(fd, data, len);
	if (close(fd) && !rc)
		rc = -errno;
	return rc;
}

static int write_pattern_fd(int fd, uint64_t seed, uint64_t n)
{
	char chunk[65536];
	uint64_t done = 0;
	int rc = 0;

	while (!rc && done < n) {
		size_t k = n - done < sizeof(chunk) ? (size_t)(n - done) : sizeof(chunk);

		ut_fill(chunk, seed, done, k);
		rc = write_all(fd, chunk, k);
		done += k;
	}
	return rc;
}

int ut_write_pattern(const char *path, uint64_t seed, size_t n)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	int rc;

	if (fd < 0)
		return -errno;
	rc = write_pattern_fd(fd, seed, n);
	if (close(fd) && !rc)
		rc = -errno;
	return rc;
}

int ut_write_st(const char *path, const char *json, uint64_t data_len, uint64_t seed)
{
	uint64_t n = strlen(json);
	unsigned char pre[8];
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	int rc;

	if (fd < 0)
		return -errno;
	for (int i = 0; i < 8; i++)
		pre[i] = (unsigned char)(n >> (8 * i));
	rc = write_all(fd, pre, 8);
	if (!rc)
		rc = write_all(fd, json, n);
	if (!rc)
		rc = write_pattern_fd(fd, seed, data_len);
	if (close(fd) && !rc)
		rc = -errno;
	return rc;
}

char *ut_read_file(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	struct qv_buf b = { 0 };
	char chunk[65536];
	size_t r;

	if (!f)
		return NULL;
	while ((r = fread(chunk, 1, sizeof(chunk), f)) > 0) {
		if (qv_buf_add(&b, chunk, r)) {
			fclose(f);
			qv_buf_free(&b);
			return NULL;
		}
	}
	fclose(f);
	if (!b.p && qv_buf_add(&b, "", 0))
		return NULL;
	*len = b.len;
	return b.p;
}

char *ut_exact(const char *s, size_t len)
{
	char *p = malloc(len ? len : 1);

	if (!p)
		abort();
	memcpy(p, s, len);
	return p;
}

int ut_parse_n(const char *json, size_t len, uint64_t data_len, struct qv_st *st, char *err,
	       size_t errlen)
{
	char *copy = ut_exact(json, len);
	int rc;

	err[0] = '\0';
	rc = qv_st_parse(copy, len, 8 + len + data_len, st, err, errlen);
	free(copy);
	return rc;
}

int ut_parse(const char *json, uint64_t data_len, struct qv_st *st, char *err, size_t errlen)
{
	return ut_parse_n(json, strlen(json), data_len, st, err, errlen);
}

int ut_stderr_begin(struct ut_capture *c)
{
	fflush(stderr);
	c->saved = -1;
	c->f = tmpfile();
	if (!c->f)
		return -errno;
	c->saved = dup(STDERR_FILENO);
	if (c->saved < 0 || dup2(fileno(c->f), STDERR_FILENO) < 0)
		return -errno;
	return 0;
}

char *ut_stderr_end(struct ut_capture *c)
{
	struct qv_buf b = { 0 };
	char chunk[4096];
	size_t r;

	fflush(stderr);
	if (c->saved >= 0) {
		dup2(c->saved, STDERR_FILENO);
		close(c->saved);
		c->saved = -1;
	}
	if (!c->f)
		return strdup("");
	rewind(c->f);
	while ((r = fread(chunk, 1, sizeof(chunk), c->f)) > 0)
		qv_buf_add(&b, chunk, r);
	fclose(c->f);
	c->f = NULL;
	return b.p ? b.p : strdup("");
}

size_t ut_count(const char *hay, const char *needle)
{
	size_t n = 0, l = strlen(needle);

	for (const char *p = hay; (p = strstr(p, needle)); p += l)
		n++;
	return n;
}
