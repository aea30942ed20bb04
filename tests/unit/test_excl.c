/* test_excl.c - exclude= out of an -o option group: its backslashes as written, "\," its one
 * escape, the other options untouched, and the mistakes that escape invites refused. */
#include "unit.h"
#include "util_test.h"

#include "qv_excl.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* qv_excl_take of g: its result, *rest and *pattern (malloc'd or NULL), and what was logged. */
static int take(const char *g, char **rest, char **pattern, char **log)
{
	struct ut_capture cap;
	int rc;

	ut_stderr_begin(&cap);
	rc = qv_excl_take(g, rest, pattern);
	*log = ut_stderr_end(&cap);
	return rc;
}

TEST(excl_splits_the_group)
{
	static const struct {
		const char *g, *rest, *pattern; /* pattern NULL: none */
	} cases[] = {
		{ "ro,allow_other", "ro,allow_other", NULL },
		{ "exclude=a", "", "a" },
		{ "ro,exclude=.*\\d+\\.x{1\\,3}\\[a]\\(.*,view=hf", "ro,view=hf", ".*\\d+\\.x{1,3}\\[a]\\(.*" },
		{ "exclude=a\\,b,exclude=c", "", "c" },		 /* the last wins */
		{ "exclude=", "", "" },				 /* an empty pattern is one */
		{ "noexclude=x,fsname=a\\,b", "noexclude=x,fsname=a\\,b", NULL }, /* others as given */
		{ "exclude=x\\", "", "x\\" },			 /* a last lone backslash stays */
		{ ",exclude=y,", ",", "y" },			 /* empty options stay libfuse's */
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char *rest, *pat, *log;
		int rc = take(cases[i].g, &rest, &pat, &log);

		if (!CHECK_MSG(rc == 0, "%s: rc %d, %s", cases[i].g, rc, log))
			goto next;
		CHECK_STR(rest, cases[i].rest);
		if (cases[i].pattern)
			CHECK_STR(pat, cases[i].pattern);
		else
			CHECK_MSG(pat == NULL, "%s: pattern %s", cases[i].g, pat);
		CHECK_STR(log, "");
next:
		free(rest);
		free(pat);
		free(log);
	}
}

/* A comma that cuts a bracket, group or brace, and libfuse's doubled backslash, are refused
 * with one line that says how to write the pattern; nothing is returned. */
TEST(excl_mistakes_refused)
{
	static const struct {
		const char *g, *says;
	} cases[] = {
		{ "exclude=.*x{1,3}.*,ro", "exclude=.*x{1\\,3}.*)" },
		{ "exclude=[a,b]", "exclude=[a\\,b])" },
		{ "ro,exclude=(a,b)", "exclude=(a\\,b))" },
		{ "exclude=[],]x,ro", "exclude=[]\\,]x)" }, /* "]" first in a class is literal */
		{ "exclude=.*\\\\d", "write \\d, not \\\\d" },
		{ "exclude=a\\\\,ro", "write \\d, not \\\\d" },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char *rest = (char *)1, *pat = (char *)1, *log;
		int rc = take(cases[i].g, &rest, &pat, &log);

		CHECK_MSG(rc == -EINVAL, "%s: rc %d", cases[i].g, rc);
		CHECK_MSG(rest == NULL && pat == NULL, "%s: something returned", cases[i].g);
		CHECK_HAS(log, cases[i].says);
		CHECK_EQ_U64(ut_count(log, "\n"), 1);
		free(log);
	}
}

/* Escaped brackets, and those closed before the comma, are no cut. */
TEST(excl_closed_or_escaped_is_no_cut)
{
	static const char *const ok[] = { "exclude=\\[a,ro", "exclude=\\(x,ro", "exclude=\\{1,ro",
					  "exclude=(a)[b]{2},ro", "exclude=x}),ro" };

	for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
		char *rest, *pat, *log;
		int rc = take(ok[i], &rest, &pat, &log);

		CHECK_MSG(rc == 0, "%s: %s", ok[i], log);
		CHECK_STR(rest, "ro");
		free(rest);
		free(pat);
		free(log);
	}
}
