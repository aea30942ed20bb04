/* util.c - logging, growable buffers and JSON string escaping shared by all modules. */
#include "qv_util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

/* Process-wide by nature: stderr, syslog and the log file are process-wide too. Lines go to
 * stderr while the process has one, to log_fd whenever it is open, and to syslog only when
 * the detached daemon has no log_fd. */
static bool log_stderr = true, log_syslog;
static int log_fd = -1;

/* Why path could not be opened for the log (open's errno e): a link or a file that is not a
 * regular one says so, rather than "Too many levels of symbolic links" or "No such device". */
static int log_open_error(const char *path, int e, char *err, size_t errlen)
{
	struct stat st;
	bool there = lstat(path, &st) == 0;

	if (there && S_ISLNK(st.st_mode))
		return qv_err(err, errlen, -ELOOP, "a symbolic link, not followed (name the file "
			      "itself)");
	if (there && !S_ISREG(st.st_mode))
		return qv_err(err, errlen, -EINVAL, "not a regular file");
	return qv_err(err, errlen, -e, "%s", strerror(e));
}

int qv_log_open(const char *path, char *err, size_t errlen)
{
	/* the daemon runs as root: a link planted where the log goes (a world-writable folder)
	 * must not send its appends to another file, and a FIFO there must not block the open
	 * (O_NONBLOCK, which a regular file ignores) */
	int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK,
		      0644);
	struct stat st;

	if (fd < 0)
		return log_open_error(path, errno, err, errlen);
	if (fstat(fd, &st) || !S_ISREG(st.st_mode)) {
		close(fd);
		return qv_err(err, errlen, -EINVAL, "not a regular file");
	}
	if (log_fd >= 0)
		close(log_fd);
	log_fd = fd;
	return 0;
}

/* Whether a syslog daemon listens on /dev/log: glibc's syslog() drops lines silently when
 * none does (containers), so the daemon must know before it relies on it. */
static bool syslog_listens(void)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX, .sun_path = "/dev/log" };
	int types[] = { SOCK_DGRAM, SOCK_STREAM };

	for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
		int fd = socket(AF_UNIX, types[i] | SOCK_CLOEXEC, 0), ok;

		if (fd < 0)
			continue;
		ok = connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
		close(fd);
		if (ok)
			return true;
	}
	return false;
}

/* The stderr of before detaching, kept when it is a regular file (a `2>>file` redirect):
 * a terminal or pipe is not kept, since holding it open would hold up whoever reads it. */
static int saved_stderr = -1;

const char *qv_log_before_detach(void)
{
	struct stat st;

	if (log_fd >= 0)
		return "the log file";
	if (syslog_listens())
		return "syslog";
	if (fstat(STDERR_FILENO, &st) == 0 && S_ISREG(st.st_mode) &&
	    (saved_stderr = fcntl(STDERR_FILENO, F_DUPFD_CLOEXEC, 3)) >= 0)
		return "stderr";
	return NULL;
}

void qv_log_detached(void)
{
	log_stderr = false;
	if (log_fd >= 0) {
		if (saved_stderr >= 0)
			close(saved_stderr);
	} else if (saved_stderr >= 0) {
		log_fd = saved_stderr;
	} else {
		openlog("qvlmoefs", LOG_PID, LOG_DAEMON);
		log_syslog = true;
	}
	saved_stderr = -1;
}

#define LOG_LINE 1024 /* bytes of one formatted line, before its escapes */

/* One line to the log file in one write(), so lines of several threads (and of several
 * daemons sharing the file, O_APPEND) never interleave. */
static void log_file_line(const char *line)
{
	char buf[4 * LOG_LINE + 64], stamp[32];
	struct timespec ts;
	struct tm tm;
	int n;

	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%SZ", &tm);
	n = snprintf(buf, sizeof(buf), "%s qvlmoefs[%d]: %s\n", stamp, (int)getpid(), line);
	if (n < 0)
		return;
	if ((size_t)n >= sizeof(buf)) { /* a cut line still ends with its newline */
		n = sizeof(buf) - 1;
		buf[n - 1] = '\n';
	}
	if (write(log_fd, buf, (size_t)n) < 0) {
		/* nowhere left to say so: the line is lost */
	}
}

/* in with its control bytes written out (\n, \r, \t, else \xNN) into out, which holds
 * 4 * strlen(in) + 1: a name from a file that holds a newline cannot forge a second line. */
static void escape_controls(char *out, const char *in)
{
	static const char hex[] = "0123456789abcdef";

	for (; *in; in++) {
		unsigned char c = (unsigned char)*in;

		if (c >= 0x20 && c != 0x7f) {
			*out++ = (char)c;
			continue;
		}
		*out++ = '\\';
		if (c == '\n' || c == '\r' || c == '\t') {
			*out++ = c == '\n' ? 'n' : c == '\r' ? 'r' : 't';
		} else {
			*out++ = 'x';
			*out++ = hex[c >> 4];
			*out++ = hex[c & 15];
		}
	}
	*out = '\0';
}

void qv_log(const char *fmt, ...)
{
	char raw[LOG_LINE], line[4 * LOG_LINE];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(raw, sizeof(raw), fmt, ap);
	va_end(ap);
	escape_controls(line, raw);
	if (log_fd >= 0)
		log_file_line(line);
	if (log_syslog && log_fd < 0)
		syslog(LOG_NOTICE, "%s", line);
	if (log_stderr)
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
