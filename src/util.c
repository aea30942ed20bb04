/* util.c - logging, growable buffers and JSON string escaping shared by all modules. */
#include "qv_util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <unistd.h>

/* Process-wide by nature: stderr and syslog are process-wide too. */
static bool log_syslog;

void qv_log_use_syslog(void)
{
	openlog("qvlmoefs", LOG_PID, LOG_DAEMON);
	log_syslog = true;
}

void qv_log(const char *fmt, ...)
{
	char line[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (log_syslog)
		syslog(LOG_NOTICE, "%s", line);
	else
		fprintf(stderr, "qvlmoefs: %s\n", line);
}

int qv_err(char *err, size_t errlen, int err_code, const char *fmt, ...)
{
	va_list ap;

	if (err && errlen) {
		va_start(ap, fmt);
		vsnprintf(err, errlen, fmt, ap);
		va_end(ap);
	}
	return err_code;
}

int qv_buf_reserve(struct qv_buf *b, size_t extra)
{
	size_t need, cap;
	char *p;

	if (__builtin_add_overflow(b->len, extra, &need))
		return -ENOMEM;
	if (need + 1 <= b->cap)
		return 0;
	cap = b->cap ? b->cap : 256;
	while (cap < need + 1) {
		if (__builtin_mul_overflow(cap, 2, &cap))
			return -ENOMEM;
	}
	p = realloc(b->p, cap);
	if (!p)
		return -ENOMEM;
	b->p = p;
	b->cap = cap;
	return 0;
}

int qv_buf_add(struct qv_buf *b, const void *data, size_t n)
{
	int rc = qv_buf_reserve(b, n);

	if (rc)
		return rc;
	memcpy(b->p + b->len, data, n);
	b->len += n;
	b->p[b->len] = '\0'; /* keep it usable as a C string */
	return 0;
}

int qv_buf_adds(struct qv_buf *b, const char *s)
{
	return qv_buf_add(b, s, strlen(s));
}

int qv_buf_printf(struct qv_buf *b, const char *fmt, ...)
{
	va_list ap;
	int n, rc;

	va_start(ap, fmt);
	n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n < 0)
		return -EINVAL;
	rc = qv_buf_reserve(b, (size_t)n);
	if (rc)
		return rc;
	va_start(ap, fmt);
	vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
	va_end(ap);
	b->len += (size_t)n;
	return 0;
}

int qv_buf_json_str(struct qv_buf *b, const char *s, size_t n)
{
	static const char hex[] = "0123456789abcdef";
	size_t i;
	int rc = qv_buf_add(b, "\"", 1);

	for (i = 0; !rc && i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		char esc[6] = { '\\', 'u', '0', '0', hex[c >> 4], hex[c & 15] };

		if (c == '"' || c == '\\') {
			char two[2] = { '\\', (char)c };
			rc = qv_buf_add(b, two, 2);
		} else if (c < 0x20) {
			rc = qv_buf_add(b, esc, 6);
		} else {
			rc = qv_buf_add(b, &s[i], 1);
		}
	}
	return rc ? rc : qv_buf_add(b, "\"", 1);
}

void qv_buf_free(struct qv_buf *b)
{
	free(b->p);
	b->p = NULL;
	b->len = b->cap = 0;
}

bool qv_utf8_valid(const char *s, size_t n)
{
	const unsigned char *p = (const unsigned char *)s, *end = p + n;

	while (p < end) {
		unsigned c = *p, need, cp, min;

		if (c < 0x80) {
			p++;
			continue;
		}
		if ((c & 0xe0) == 0xc0) {
			need = 1, cp = c & 0x1f, min = 0x80;
		} else if ((c & 0xf0) == 0xe0) {
			need = 2, cp = c & 0x0f, min = 0x800;
		} else if ((c & 0xf8) == 0xf0) {
			need = 3, cp = c & 0x07, min = 0x10000;
		} else {
			return false;
		}
		if ((size_t)(end - p) <= need)
			return false;
		for (unsigned i = 1; i <= need; i++) {
			if ((p[i] & 0xc0) != 0x80)
				return false;
			cp = (cp << 6) | (p[i] & 0x3f);
		}
		if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
			return false;
		p += need + 1;
	}
	return true;
}

int qv_read_fd(int fd, size_t max, struct qv_buf *out)
{
	char chunk[65536];
	ssize_t r;
	int rc = 0;

	while (!rc && (r = read(fd, chunk, sizeof(chunk))) != 0) {
		if (r < 0)
			rc = errno == EINTR ? 0 : -errno;
		else if (out->len + (size_t)r > max)
			rc = -EFBIG;
		else
			rc = qv_buf_add(out, chunk, (size_t)r);
	}
	return rc;
}

char *qv_path_join(const char *dir, const char *name)
{
	size_t a = strlen(dir), b = strlen(name);
	char *p = malloc(a + b + 2);

	if (!p)
		return NULL;
	memcpy(p, dir, a);
	p[a] = '/';
	memcpy(p + a + 1, name, b + 1);
	return p;
}

bool qv_ends_with(const char *s, const char *suffix)
{
	size_t a = strlen(s), b = strlen(suffix);

	return a >= b && memcmp(s + a - b, suffix, b) == 0;
}
