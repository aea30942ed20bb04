/* main.c - runs every registered unit test (or those whose name contains argv[1]), prints one
 * line per test and one closing summary line; exit status 1 when any test failed. */
#include "unit.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_TESTS 512

struct unit_test {
	const char *name, *file;
	int line;
	void (*fn)(void);
};

/* The registry and the counters of the running test: the harness's only state. */
static struct unit_test tests[MAX_TESTS];
static size_t ntests;
static const char *cur_name;
static unsigned cur_failures;

void unit_register(const char *name, void (*fn)(void), const char *file, int line)
{
	if (ntests == MAX_TESTS) {
		fprintf(stderr, "unit: more than %d tests, raise MAX_TESTS\n", MAX_TESTS);
		exit(2);
	}
	tests[ntests++] = (struct unit_test){ name, file, line, fn };
}

static bool report(const char *file, int line, const char *what)
{
	if (cur_failures++ == 0)
		printf("FAIL - %s: %s:%d: %s\n", cur_name, file, line, what);
	else
		printf("       also %s:%d: %s\n", file, line, what);
	fflush(stdout);
	return false;
}

bool unit_check(bool ok, const char *file, int line, const char *fmt, ...)
{
	char what[1024];
	va_list ap;

	if (ok)
		return true;
	va_start(ap, fmt);
	vsnprintf(what, sizeof(what), fmt, ap);
	va_end(ap);
	return report(file, line, what);
}

bool unit_check_u64(uint64_t a, uint64_t b, const char *file, int line, const char *ea,
		    const char *eb)
{
	return a == b || unit_check(false, file, line, "%s == %s: %" PRIu64 " != %" PRIu64, ea,
				    eb, a, b);
}

bool unit_check_i64(int64_t a, int64_t b, const char *file, int line, const char *ea,
		    const char *eb)
{
	return a == b || unit_check(false, file, line, "%s == %s: %" PRId64 " != %" PRId64, ea,
				    eb, a, b);
}

bool unit_check_str(const char *a, const char *b, const char *file, int line, const char *ea,
		    const char *eb)
{
	if (a && b && strcmp(a, b) == 0)
		return true;
	if (!a && !b)
		return true;
	return unit_check(false, file, line, "%s == %s: \"%s\" != \"%s\"", ea, eb,
			  a ? a : "(null)", b ? b : "(null)");
}

bool unit_check_has(const char *hay, const char *needle, const char *file, int line,
		    const char *ea)
{
	if (hay && strcasestr(hay, needle))
		return true;
	return unit_check(false, file, line, "%s = \"%s\" does not mention \"%s\"", ea,
			  hay ? hay : "(null)", needle);
}

bool unit_check_mem(const void *a, const void *b, size_t n, const char *file, int line,
		    const char *ea, const char *eb)
{
	const unsigned char *x = a, *y = b;

	for (size_t i = 0; i < n; i++)
		if (x[i] != y[i])
			return unit_check(false, file, line,
					  "%s == %s (%zu bytes): first difference at byte %zu: "
					  "0x%02x != 0x%02x",
					  ea, eb, n, i, x[i], y[i]);
	return true;
}

/* Constructors run in an order the toolchain picks: sort by file, then line, for a stable log. */
static int cmp_test(const void *a, const void *b)
{
	const struct unit_test *x = a, *y = b;
	int c = strcmp(x->file, y->file);

	return c ? c : (x->line > y->line) - (x->line < y->line);
}

int main(int argc, char **argv)
{
	const char *filter = argc > 1 ? argv[1] : NULL;
	unsigned passed = 0, failed = 0;

	setvbuf(stdout, NULL, _IOLBF, 0);
	qsort(tests, ntests, sizeof(tests[0]), cmp_test);
	for (size_t i = 0; i < ntests; i++) {
		if (filter && !strstr(tests[i].name, filter))
			continue;
		cur_name = tests[i].name;
		cur_failures = 0;
		tests[i].fn();
		if (cur_failures) {
			failed++;
		} else {
			passed++;
			printf("ok - %s\n", tests[i].name);
		}
	}
	printf("%u passed, %u failed\n", passed, failed);
	return failed ? 1 : 0;
}
