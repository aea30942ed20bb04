/* unit.h - a tiny test harness: TEST(name) registers a test, CHECK*() record failures with
 * file:line and the values seen, and keep going (each returns whether it held, so a test can
 * stop early with `if (!CHECK(...)) return;`). */
#ifndef UNIT_H
#define UNIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Add a test to the registry (called from constructors, before main). */
void unit_register(const char *name, void (*fn)(void), const char *file, int line);

/* Record the outcome of one check; returns ok. */
bool unit_check(bool ok, const char *file, int line, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

bool unit_check_u64(uint64_t a, uint64_t b, const char *file, int line, const char *ea,
		    const char *eb);
bool unit_check_i64(int64_t a, int64_t b, const char *file, int line, const char *ea,
		    const char *eb);
bool unit_check_str(const char *a, const char *b, const char *file, int line, const char *ea,
		    const char *eb);
bool unit_check_has(const char *hay, const char *needle, const char *file, int line,
		    const char *ea);
bool unit_check_mem(const void *a, const void *b, size_t n, const char *file, int line,
		    const char *ea, const char *eb);

#define TEST(name)                                                                   \
	static void name(void);                                                      \
	__attribute__((constructor)) static void name##_register(void)               \
	{                                                                            \
		unit_register(#name, name, __FILE__, __LINE__);                      \
	}                                                                            \
	static void name(void)

#define CHECK(cond) unit_check(!!(cond), __FILE__, __LINE__, "%s", #cond)
#define CHECK_MSG(cond, ...) unit_check(!!(cond), __FILE__, __LINE__, __VA_ARGS__)
#define CHECK_EQ_U64(a, b) unit_check_u64((uint64_t)(a), (uint64_t)(b), __FILE__, __LINE__, #a, #b)
#define CHECK_EQ_INT(a, b) unit_check_i64((int64_t)(a), (int64_t)(b), __FILE__, __LINE__, #a, #b)
#define CHECK_STR(a, b) unit_check_str((a), (b), __FILE__, __LINE__, #a, #b)
/* Substring, case-insensitive: error reasons must mention the problem. */
#define CHECK_HAS(hay, needle) unit_check_has((hay), (needle), __FILE__, __LINE__, #hay)
#define CHECK_MEM(a, b, n) unit_check_mem((a), (b), (n), __FILE__, __LINE__, #a, #b)

#endif
