/* qv_util.h - small shared helpers: logging, growable buffers, JSON string output. */
#ifndef QV_UTIL_H
#define QV_UTIL_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define QV_ERRLEN 512

#ifndef QV_VERSION
#define QV_VERSION "0.1.0"
#endif

/* Log one line: "qvlmoefs: ..." to stderr until the daemon detaches, to the file of
 * qv_log_open() (with a UTC time and the pid) whenever one is open, else, detached, to syslog
 * (or to the stderr of before detaching, see qv_log_before_detach). Control bytes of the
 * formatted text are written out (\n, \r, \t, \xNN): one call is always one line. */
void qv_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Append every later line to path too (opened now: a relative path is resolved before the
 * daemon changes folder). A symbolic link or a file that is not a regular one is refused;
 * 0 or -errno with the reason in err. */
int qv_log_open(const char *path, char *err, size_t errlen);

/* Just before detaching: where lines will go once detached ("the log file", "syslog" when
 * /dev/log accepts them, else "stderr" when stderr is a regular file, kept), or NULL when
 * nowhere. */
const char *qv_log_before_detach(void);

/* Just after detaching: stop writing to stderr (now /dev/null), switch to what
 * qv_log_before_detach() chose. */
void qv_log_detached(void);

/* Format into a caller's error buffer; always NUL-terminates. Returns err_code unchanged. */
int qv_err(char *err, size_t errlen, int err_code, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

/* A growable byte buffer; all appends return 0 or -ENOMEM. */
struct qv_buf {
	char *p;
	size_t len;
	size_t cap;
};

/* Make room for extra more bytes. */
int qv_buf_reserve(struct qv_buf *b, size_t extra);
/* Append n bytes. */
int qv_buf_add(struct qv_buf *b, const void *data, size_t n);
/* Append a NUL-terminated string. */
int qv_buf_adds(struct qv_buf *b, const char *s);
/* Append printf-formatted text. */
int qv_buf_printf(struct qv_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Append s as a quoted, escaped JSON string (s is valid UTF-8 of length n). */
int qv_buf_json_str(struct qv_buf *b, const char *s, size_t n);
/* Release the buffer's memory and reset it. */
void qv_buf_free(struct qv_buf *b);

/* True when s (length n) is well-formed UTF-8 without overlongs or surrogates. */
bool qv_utf8_valid(const char *s, size_t n);

/* Read fd to its end (at most max bytes) into out; 0, -EFBIG or -errno. */
int qv_read_fd(int fd, size_t max, struct qv_buf *out);

/* Join a directory and a name with one '/'; returns malloc'd string or NULL. */
char *qv_path_join(const char *dir, const char *name);

/* True when s ends with suffix. */
bool qv_ends_with(const char *s, const char *suffix);

/* True when s starts with prefix. */
static inline bool qv_starts_with(const char *s, const char *prefix)
{
	while (*prefix)
		if (*s++ != *prefix++)
			return false;
	return true;
}

#endif
