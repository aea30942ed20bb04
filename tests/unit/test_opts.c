/* test_opts.c - the command-line parser shared by the mount, `inspect` and `stage`: exclude=
 * keeps its backslashes, numbers are checked with their range, unknown options fail. */
#include "unit.h"
#include "util_test.h"

#include "qv_opts.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* One parse of argv (NULL-terminated, argv[0] first) into o, with what was logged in *log
 * (malloc'd) and the arguments left for the FUSE session in *left. */
struct parsed {
	struct qv_options o;
	struct fuse_cmdline_opts c;
	struct fuse_args left;
	char *log;
	int rc;
};

static void parse(struct parsed *p, const char *const *argv)
{
	struct ut_capture cap;

	memset(p, 0, sizeof(*p));
	p->left = (struct fuse_args)FUSE_ARGS_INIT(0, NULL);
	for (; *argv; argv++)
		fuse_opt_add_arg(&p->left, *argv);
	ut_stderr_begin(&cap);
	p->rc = qv_opts_parse(&p->left, &p->o, &p->c);
	p->log = ut_stderr_end(&cap);
}

static void parsed_free(struct parsed *p)
{
	free(p->c.mountpoint);
	qv_opts_free(&p->o);
	fuse_opt_free_args(&p->left);
	free(p->log);
}

/* The arguments left after parsing, joined by spaces. */
static char *left_text(const struct parsed *p)
{
	struct qv_buf b = { 0 };

	qv_buf_adds(&b, "");
	for (int i = 0; i < p->left.argc; i++)
		qv_buf_printf(&b, i ? " %s" : "%s", p->left.argv[i]);
	return b.p;
}

/* exclude= as written: every backslash reaches the regex, "\," is its comma, and the other
 * options of the same -o stay for libfuse in their order. */
TEST(opts_exclude_keeps_backslashes)
{
	static const char *const argv[] = { "qvlmoefs", "-o",
					    "ro,exclude=.*\\d+\\.x{1\\,3}\\[a]\\(.*,view=hf,allow_other",
					    "SRC", "/", NULL };
	struct parsed p;
	char *left;

	parse(&p, argv);
	CHECK_EQ_INT(p.rc, 0);
	CHECK_STR(p.o.exclude, ".*\\d+\\.x{1,3}\\[a]\\(.*");
	CHECK_STR(p.o.view, "hf");
	CHECK_STR(p.o.source, "SRC");
	CHECK_STR(p.c.mountpoint, "/");
	/* fuse_parse_cmdline adds the subtype */
	CHECK_STR(left = left_text(&p), "qvlmoefs -o ro,allow_other -osubtype=qvlmoefs");
	free(left);
	parsed_free(&p);
}

/* -oX as well as -o X; an -o with nothing else goes; the last exclude= wins; after "--"
 * nothing is an option. */
TEST(opts_exclude_forms)
{
	static const char *const argv[] = { "qvlmoefs", "-oexclude=a\\d", "-o", "exclude=b\\,c",
					    "SRC", NULL };
	static const char *const dash[] = { "qvlmoefs", "SRC", "--", "-oexclude=x", NULL };
	struct parsed p;
	char *left;

	parse(&p, argv);
	CHECK_EQ_INT(p.rc, 0);
	CHECK_STR(p.o.exclude, "b,c");
	CHECK_STR(left = left_text(&p), "qvlmoefs -osubtype=qvlmoefs");
	free(left);
	parsed_free(&p);
	parse(&p, dash);
	CHECK(p.o.exclude == NULL);
	parsed_free(&p);
}

/* A pattern cut at a comma, or with libfuse's doubled backslash, is refused with a line that
 * shows how to write it. */
TEST(opts_exclude_mistakes_refused)
{
	static const char *const cut[] = { "qvlmoefs", "-o", "exclude=.*x{1,3}.*,ro", "SRC", NULL };
	static const char *const cls[] = { "qvlmoefs", "-o", "exclude=[,;]", "SRC", NULL };
	static const char *const dbl[] = { "qvlmoefs", "-o", "exclude=.*\\\\d", "SRC", NULL };
	struct parsed p;

	parse(&p, cut);
	CHECK_EQ_INT(p.rc, -1);
	CHECK_HAS(p.log, "exclude=.*x{1\\,3}.*)");
	CHECK_EQ_U64(ut_count(p.log, "\n"), 1);
	parsed_free(&p);
	parse(&p, cls);
	CHECK_EQ_INT(p.rc, -1);
	CHECK_HAS(p.log, "exclude=[\\,;]");
	parsed_free(&p);
	parse(&p, dbl);
	CHECK_EQ_INT(p.rc, -1);
	CHECK_HAS(p.log, "write \\d, not \\\\d");
	parsed_free(&p);
}

TEST(opts_number_ranges)
{
	static const struct {
		const char *s;
		uint64_t lo, hi, want;
		bool ok;
	} cases[] = {
		{ "0", 0, 10, 0, true },	   { "10", 0, 10, 10, true },
		{ "11", 0, 10, 0, false },	   { "-1", 0, 10, 0, false },
		{ "+1", 0, 10, 0, false },	   { "", 0, 10, 0, false },
		{ "2x", 0, 10, 0, false },	   { " 1", 0, 10, 0, false },
		{ "0", 1, 10, 0, false },	   { "4294967296", 0, UINT32_MAX, 0, false },
		{ "18446744073709551615", 1, UINT64_MAX, UINT64_MAX, true },
		{ "18446744073709551616", 1, UINT64_MAX, 0, false },
		{ "99999999999999999999999", 1, UINT64_MAX, 0, false },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct ut_capture cap;
		uint64_t v = 12345;
		int rc;
		char *log;

		ut_stderr_begin(&cap);
		rc = qv_opts_number("n", cases[i].s, cases[i].lo, cases[i].hi, &v);
		log = ut_stderr_end(&cap);
		CHECK_MSG(rc == (cases[i].ok ? 0 : -EINVAL), "n=%s: rc %d", cases[i].s, rc);
		if (cases[i].ok)
			CHECK_EQ_U64(v, cases[i].want);
		else
			CHECK_MSG(strstr(log, "expected a whole number from") && v == 12345,
				  "n=%s: %s", cases[i].s, log);
		free(log);
	}
}

/* The numeric -o options: a sign, a suffix or a value out of range fails with the range, at
 * parse (readahead_kb, shard_size) or check time (ep_*, gpu). */
TEST(opts_numeric_options_checked)
{
	static const char *const bad_parse[] = { "readahead_kb=-5", "readahead_kb=1048577",
						 "readahead_kb=4k", "shard_size=-1", "shard_size=0" };
	static const char *const bad_check[] = { "ep_size=-1", "ep_size=4294967296", "ep_size=0",
						 "ep_size=4,ep_rank=-1", "gpu=-1", "gpu=1025",
						 "ep_size=2,ep_shard_size=-3" };
	static const char *const zero[] = { "qvlmoefs", "-o", "readahead_kb=0,shard_size=7",
					    "SRC", NULL };
	const char *argv[] = { "qvlmoefs", "-o", NULL, "SRC", NULL };
	struct qv_mount_opts mo;
	struct parsed p;
	int gpu;

	for (size_t i = 0; i < sizeof(bad_parse) / sizeof(bad_parse[0]); i++) {
		argv[2] = bad_parse[i];
		parse(&p, argv);
		CHECK_MSG(p.rc == -1, "%s accepted", bad_parse[i]);
		CHECK_MSG(strstr(p.log, "expected a whole number from"), "%s: %s", bad_parse[i], p.log);
		parsed_free(&p);
	}
	for (size_t i = 0; i < sizeof(bad_check) / sizeof(bad_check[0]); i++) {
		struct ut_capture cap;
		char *log;
		int rc;

		argv[2] = bad_check[i];
		parse(&p, argv);
		CHECK_EQ_INT(p.rc, 0);
		ut_stderr_begin(&cap);
		rc = qv_opts_check(&p.o, &mo, &gpu);
		log = ut_stderr_end(&cap);
		CHECK_MSG(rc == -EINVAL, "%s accepted", bad_check[i]);
		CHECK_MSG(strstr(log, "expected a whole number from"), "%s: %s", bad_check[i], log);
		free(log);
		parsed_free(&p);
	}
	parse(&p, zero); /* 0 means no readahead, not the default */
	CHECK_EQ_INT(p.rc, 0);
	CHECK(p.o.readahead_set);
	CHECK_EQ_U64(p.o.readahead_kb, 0);
	CHECK_EQ_U64(p.o.max_file, 7);
	parsed_free(&p);
}

/* What neither qvlmoefs nor libfuse knows fails, as the mount fails; FUSE's own options pass;
 * a user's fsname= is noted (main then adds none of its own). */
TEST(opts_unknown_options_fail)
{
	static const char *const typo[] = { "qvlmoefs", "-o", "veiw=hf", "SRC", NULL };
	static const char *const fuse[] = { "qvlmoefs", "-o", "ro,allow_other,fsname=x,max_read=4096",
					    "-o", "log=/dev/null", "SRC", NULL };
	struct ut_capture cap;
	struct parsed p;
	char *log;

	parse(&p, typo);
	CHECK_EQ_INT(p.rc, 0);
	ut_stderr_begin(&cap);
	CHECK_EQ_INT(qv_opts_known(&p.left), -1);
	log = ut_stderr_end(&cap);
	CHECK_HAS(log, "unknown option(s): `-o veiw=hf'");
	free(log);
	parsed_free(&p);
	parse(&p, fuse);
	CHECK_EQ_INT(p.rc, 0);
	CHECK_EQ_INT(qv_opts_known(&p.left), 0);
	CHECK(p.o.fsname_set && p.o.allow_other);
	CHECK_STR(p.o.log, "/dev/null");
	parsed_free(&p);
}
