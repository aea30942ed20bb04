/* st_agree.c - the parser-agreement driver of tests/real/st_agree.py (`make fuzz-diff`).
 *
 * Validates safetensors files exactly the way a mount validates a source (gen.c's
 * parse_sources: fstat for the size, then qv_st_read_fd on the open file: length prefix,
 * header JSON, data size against file size) and prints one line per file:
 *
 *   A <TAB> nt <TAB> tensors <TAB> metadata     accepted
 *   R <TAB> errno <TAB> reason                  rejected
 *
 * tensors: "name:DTYPE:d0,d1,...:begin-end" joined by ';' in data order, the name in hex;
 * metadata: '-' when the header has none, else 'm' and "key=value" pairs (hex) joined by ';'.
 *
 * With no arguments the files come on stdin as records (8-byte little-endian length, then
 * that many bytes), each written into one memfd that is then parsed like an opened source;
 * with arguments, each is a path, opened and parsed as gen.c does. */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "qv_st.h"
#include "qv_util.h"

static void put_hex(const char *s, FILE *out)
{
	for (const unsigned char *p = (const unsigned char *)s; *p; p++)
		fprintf(out, "%02x", *p);
}

/* The mount's check of one open source, and its line. */
static int check_fd(int fd, FILE *out)
{
	char why[QV_ERRLEN] = "";
	struct qv_st st;
	struct stat sb;
	int rc;

	if (fstat(fd, &sb))
		return -errno;
	rc = qv_st_read_fd(fd, (uint64_t)sb.st_size, &st, why, sizeof(why));
	if (rc) {
		for (char *p = why; *p; p++)
			if (*p == '\n' || *p == '\t' || *p == '\r')
				*p = ' ';
		fprintf(out, "R\t%d\t%s\n", -rc, why[0] ? why : "(no reason given)");
		return 0;
	}
	fprintf(out, "A\t%zu\t", st.nt);
	for (size_t i = 0; i < st.nt; i++) {
		const struct qv_tensor *t = &st.t[i];

		if (i)
			fputc(';', out);
		put_hex(t->name, out);
		fprintf(out, ":%s:", qv_dtype_name(t->dtype));
		for (uint32_t d = 0; d < t->ndim; d++)
			fprintf(out, "%s%llu", d ? "," : "", (unsigned long long)t->shape[d]);
		fprintf(out, ":%llu-%llu", (unsigned long long)t->begin, (unsigned long long)t->end);
	}
	fputs(st.meta ? "\tm" : "\t-", out);
	for (size_t i = 0; st.meta && i < st.nmeta; i++) {
		if (i)
			fputc(';', out);
		put_hex(st.meta[i].key, out);
		fputc('=', out);
		put_hex(st.meta[i].val, out);
	}
	fputc('\n', out);
	qv_st_free(&st);
	return 0;
}

static int read_full(FILE *in, void *buf, size_t n)
{
	return fread(buf, 1, n, in) == n ? 0 : -1;
}

static int write_full(int fd, const char *p, size_t n)
{
	size_t done = 0;

	while (done < n) {
		ssize_t w = pwrite(fd, p + done, n - done, (off_t)done);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		done += (size_t)w;
	}
	return 0;
}

static int run_records(FILE *in, FILE *out)
{
	int fd = memfd_create("st_agree", MFD_CLOEXEC);
	unsigned char pre[8];
	char *buf = NULL;
	size_t cap = 0;

	if (fd < 0) {
		perror("st_agree: memfd_create");
		return 1;
	}
	while (fread(pre, 1, 8, in) == 8) {
		uint64_t n = 0;

		for (int i = 7; i >= 0; i--)
			n = n << 8 | pre[i];
		if (n > (1ULL << 32)) {
			fprintf(stderr, "st_agree: record of %llu bytes\n", (unsigned long long)n);
			return 1;
		}
		if (n > cap) {
			free(buf);
			cap = n;
			buf = malloc(cap);
			if (!buf) {
				perror("st_agree");
				return 1;
			}
		}
		if (read_full(in, buf, n) || ftruncate(fd, 0) || write_full(fd, buf, n)) {
			fprintf(stderr, "st_agree: short record or memfd write failed\n");
			return 1;
		}
		if (check_fd(fd, out)) {
			perror("st_agree: fstat");
			return 1;
		}
		fflush(out);
	}
	free(buf);
	close(fd);
	return ferror(in) ? 1 : 0;
}

int main(int argc, char **argv)
{
	int bad = 0;

	if (argc < 2)
		return run_records(stdin, stdout);
	for (int i = 1; i < argc; i++) {
		int fd = open(argv[i], O_RDONLY | O_CLOEXEC);

		if (fd < 0 || check_fd(fd, stdout)) {
			fprintf(stderr, "st_agree: %s: %s\n", argv[i], strerror(errno));
			bad = 1;
		}
		if (fd >= 0)
			close(fd);
	}
	return bad;
}
