/* util_test.h - helpers shared by the unit tests: temp folders, files, safetensors writers. */
#ifndef UTIL_TEST_H
#define UTIL_TEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "qv_st.h"
#include "qv_util.h"

/* The known byte at offset i of a test source (not periodic at small strides). */
uint8_t ut_byte(uint64_t seed, uint64_t i);

/* Fill dst[0..n) with ut_byte(seed, from + k). */
void ut_fill(char *dst, uint64_t seed, uint64_t from, size_t n);

/* A fresh folder /tmp/qvunit.XXXXXX (malloc'd path), or NULL. */
char *ut_tmpdir(void);

/* Remove a tree without following links; silently ignores what is already gone. */
void ut_rmtree(const char *path);

/* dir/name, malloc'd (aborts on out of memory: tests only). */
char *ut_path(const char *dir, const char *name);

/* Create (or truncate) path with len bytes of data; 0 or -errno. */
int ut_write_file(const char *path, const void *data, size_t len);

/* Write a file of n pattern bytes ut_byte(seed, i); 0 or -errno. */
int ut_write_pattern(const char *path, uint64_t seed, size_t n);

/* Write a safetensors file: 8-byte LE length of json, json, then data_len bytes where byte k of
 * the data section is ut_byte(seed, k). 0 or -errno. */
int ut_write_st(const char *path, const char *json, uint64_t data_len, uint64_t seed);

/* Read a whole file (malloc'd, NUL-terminated for convenience); NULL on error. */
char *ut_read_file(const char *path, size_t *len);

/* An exactly sized heap copy of s (no terminator), so ASan catches reads past the end. */
char *ut_exact(const char *s, size_t len);

/* qv_st_parse of json (as an exactly sized buffer) in a file with data_len data bytes. */
int ut_parse(const char *json, uint64_t data_len, struct qv_st *st, char *err, size_t errlen);

/* Same with an explicit length (json may hold NUL or invalid bytes). */
int ut_parse_n(const char *json, size_t len, uint64_t data_len, struct qv_st *st, char *err,
	       size_t errlen);

/* Redirect stderr into a temp file until ut_stderr_end(), which restores it and returns what
 * was written (malloc'd, NUL-terminated). */
struct ut_capture {
	int saved;
	FILE *f;
};
int ut_stderr_begin(struct ut_capture *c);
char *ut_stderr_end(struct ut_capture *c);

/* Number of non-overlapping occurrences of needle in hay. */
size_t ut_count(const char *hay, const char *needle);

#endif
