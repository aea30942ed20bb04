/* test_opts.c - the command-line parser shared by the mount, `inspect` and `stage`: exclude=
 * keeps its backslashes, numbers are checked with their range, unknown options fail; what a
 * mount's command line means for each layer, and the faults tests inject. */
#include "unit.h"
#include "util_test.h"
#include "view_fixture.h"

#include "qv_opts.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* One parse of argv (NULL-terminated, argv[0] first) into p->o, with what was logged in *log
 * (malloc'd) and the arguments left for the FUSE session in p->left. */
struct parsed {
	struct qv_cmdline cl;
	struct qv_options *o;
	struct fuse_cmdline_opts *c;
	struct fuse_args *left;
	char *log;
	int rc;
};

static void parse(struct parsed *p, const char *const *argv)
{
	struct ut_capture cap;

	memset(p, 0, sizeof(*p));
	p->o = &p->cl.o, p->c = &p->cl.fuse, p->left = &p->cl.args;
	for (; *argv; argv++)
		fuse_opt_add_arg(p->left, *argv);
	ut_stderr_begin(&cap);
	p->rc = qv_opts_parse(p->left, p->o, p->c);
	p->log = ut_stderr_end(&cap);
}

static void parsed_free(struct parsed *p)
{
	qv_opts_free(&p->cl);
	free(p->log);
}

/* The arguments left after parsing, joined by spaces. */
static char *left_text(const struct parsed *p)
{
	struct qv_buf b = { 0 };

	qv_buf_adds(&b, "");
	for (int i = 0; i < p->left->argc; i++)
		qv_buf_printf(&b, i ? " %s" : "%s", p->left->argv[i]);
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
	CHECK_STR(p.o->exclude, ".*\\d+\\.x{1,3}\\[a]\\(.*");
	CHECK_STR(p.o->view, "hf");
	CHECK_STR(p.o->source, "SRC");
	CHECK_STR(p.c->mountpoint, "/");
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
	CHECK_STR(p.o->exclude, "b,c");
	CHECK_STR(left = left_text(&p), "qvlmoefs -osubtype=qvlmoefs");
	free(left);
	parsed_free(&p);
	parse(&p, dash);
	CHECK(p.o->exclude == NULL);
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
		rc = qv_opts_check(p.o, &mo, &gpu);
		log = ut_stderr_end(&cap);
		CHECK_MSG(rc == -EINVAL, "%s accepted", bad_check[i]);
		CHECK_MSG(strstr(log, "expected a whole number from"), "%s: %s", bad_check[i], log);
		free(log);
		parsed_free(&p);
	}
	parse(&p, zero); /* 0 means no readahead, not the default */
	CHECK_EQ_INT(p.rc, 0);
	CHECK(p.o->readahead_set);
	CHECK_EQ_U64(p.o->readahead_kb, 0);
	CHECK_EQ_U64(p.o->max_file, 7);
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
	CHECK_EQ_INT(qv_opts_known(p.left), -1);
	log = ut_stderr_end(&cap);
	CHECK_HAS(log, "unknown option(s): `-o veiw=hf'");
	free(log);
	parsed_free(&p);
	parse(&p, fuse);
	CHECK_EQ_INT(p.rc, 0);
	CHECK_EQ_INT(qv_opts_known(p.left), 0);
	CHECK(p.o->fsname_set && p.o->allow_other);
	CHECK_STR(p.o->log, "/dev/null");
	parsed_free(&p);
}

/* One qv_opts_mount of argv (argv[0] first) into *cl, with what was logged in *log. */
static int mount_line(struct qv_cmdline *cl, int argc, const char **argv, char **log)
{
	struct ut_capture cap;
	int rc;

	ut_stderr_begin(&cap);
	rc = qv_opts_mount(argc, (char **)argv, cl);
	*log = ut_stderr_end(&cap);
	return rc;
}

/* Whether the session's arguments hold arg. */
static bool has_arg(const struct fuse_args *a, const char *arg)
{
	for (int i = 0; i < a->argc; i++)
		if (!strcmp(a->argv[i], arg))
			return true;
	return false;
}

/* A mount's command line for each layer: the session read-only, fsname the source's absolute
 * path escaped for libfuse, default_permissions with allow_other; the glue's options; the
 * core's; the readahead. */
TEST(opts_mount_session_and_glue)
{
	char *dir = ut_tmpdir(), *src = ut_path(dir, "a,b\\c"), *abs, *log, *fsname = NULL;
	const char *argv[] = { "qvlmoefs", "-o", "allow_other,direct_io,nosplice,view=native",
			       NULL, "/mnt", NULL };
	struct qv_cmdline cl;
	struct qv_buf want = { 0 };

	if (!CHECK(dir && mkdir(src, 0755) == 0) || !CHECK((abs = realpath(src, NULL)) != NULL))
		return;
	argv[3] = src;
	CHECK_EQ_INT(mount_line(&cl, 5, argv, &log), 0);
	CHECK_STR(log, "");
	CHECK(has_arg(&cl.args, "-oro") && has_arg(&cl.args, "-odefault_permissions"));
	qv_buf_adds(&want, "-osubtype=qvlmoefs,fsname=");
	for (const char *c = abs; *c; c++)
		qv_buf_printf(&want, *c == ',' || *c == '\\' ? "\\%c" : "%c", *c);
	CHECK_MSG(has_arg(&cl.args, want.p), "no %s", want.p);
	CHECK(cl.glue.direct_io && !cl.glue.splice);
	CHECK_EQ_U64(cl.glue.max_read, 0);
	CHECK_EQ_U64(cl.readahead_kb, 4096);
	CHECK(cl.mount.gen.view_set && cl.mount.gen.view == QV_NAMING_NATIVE);
	CHECK_EQ_INT(cl.gpu, -1);
	CHECK_STR(cl.fuse.mountpoint, "/mnt");
	qv_opts_free(&cl);
	free(log);
	/* fsname= and max_read= given are kept, and no other is added; the readahead follows
	 * the request size (4 requests), or readahead_kb= */
	argv[2] = "fsname=x,max_read=65536";
	CHECK_EQ_INT(mount_line(&cl, 5, argv, &log), 0);
	for (int i = 0; i < cl.args.argc; i++) {
		if (strstr(cl.args.argv[i], "fsname="))
			CHECK_MSG(!fsname, "two fsname: %s", cl.args.argv[i]), fsname = cl.args.argv[i];
		CHECK_MSG(!strstr(cl.args.argv[i], "-omax_read"), "added: %s", cl.args.argv[i]);
	}
	CHECK_STR(fsname, "fsname=x,max_read=65536");
	CHECK(!has_arg(&cl.args, "-odefault_permissions"));
	CHECK(cl.glue.splice && !cl.glue.direct_io);
	CHECK_EQ_U64(cl.glue.max_read, 65536);
	CHECK_EQ_U64(cl.readahead_kb, 256);
	qv_opts_free(&cl);
	free(log);
	argv[2] = "readahead_kb=0";
	CHECK_EQ_INT(mount_line(&cl, 5, argv, &log), 0);
	CHECK_EQ_U64(cl.readahead_kb, 0);
	qv_opts_free(&cl);
	free(log);
	qv_buf_free(&want);
	free(abs);
	free(src);
	ut_rmtree(dir);
	free(dir);
}

/* A mount's command line refused before anything is scanned: no mount point (the usage line),
 * an unknown option (libfuse's line), a bad value (its range). */
TEST(opts_mount_refused)
{
	const char *none[] = { "qvlmoefs", "SRC", NULL };
	const char *typo[] = { "qvlmoefs", "-o", "veiw=hf", "SRC", "/mnt", NULL };
	const char *bad[] = { "qvlmoefs", "-o", "ep_size=-1", "SRC", "/mnt", NULL };
	struct qv_cmdline cl;
	char *log;

	CHECK_EQ_INT(mount_line(&cl, 2, none, &log), -1);
	CHECK_HAS(log, "usage: qvlmoefs [options] SOURCE MOUNTPOINT");
	qv_opts_free(&cl);
	free(log);
	CHECK_EQ_INT(mount_line(&cl, 5, typo, &log), -1);
	CHECK_HAS(log, "unknown option(s): `-o veiw=hf'");
	qv_opts_free(&cl);
	free(log);
	CHECK_EQ_INT(mount_line(&cl, 5, bad, &log), -1);
	CHECK_HAS(log, "ep_size=-1: expected a whole number from 1 to");
	qv_opts_free(&cl);
	free(log);
}

/* QVLMOEFS_TEST_FAULTS, the one variable: the core's faults into the mount's options, the
 * glue's into the glue's; nothing without it. */
TEST(opts_faults_split_by_layer)
{
	struct qv_mount_opts mo = { 0 };
	struct qv_glue_opts g = { 0 };
	struct ut_capture cap;
	char *log;

	ut_stderr_begin(&cap);
	qv_opts_faults("setup=EPERM,chunk=7,eagain=3,submit_fail=2,scan_pause_ms=15,open=3,"
		       "entry=2,slow_lookup=600", &mo, &g);
	log = ut_stderr_end(&cap);
	CHECK_HAS(log, "test fault injection on");
	CHECK_EQ_INT(mo.io.fail_setup_errno, EPERM);
	CHECK_EQ_U64(mo.io.max_chunk, 7);
	CHECK_EQ_U64(mo.io.eagain_every, 3);
	CHECK_EQ_U64(mo.io.fail_submit_nth, 2);
	CHECK_EQ_U64(mo.gen.scan_pause_ms, 15);
	CHECK_EQ_INT(g.fail_open, 3);
	CHECK_EQ_INT(g.fail_entry, 2);
	CHECK_EQ_INT(g.slow_lookup_ms, 600);
	free(log);
	memset(&mo, 0, sizeof(mo));
	memset(&g, 0, sizeof(g));
	qv_opts_faults(NULL, &mo, &g);
	CHECK(!mo.io.max_chunk && !mo.gen.scan_pause_ms && !g.fail_open && !g.slow_lookup_ms);
}

static int checked_calls;

/* qv_opts_view's hook: counts its calls, refuses one folder per rank. */
static int refuse_multi(void *arg, const struct qv_mount_opts *mo)
{
	(void)arg;
	checked_calls++;
	return qv_gen_multi(&mo->gen) ? -EINVAL : 0;
}

/* inspect's and stage's view: the mount's parser and checks, the hook before the scan, then
 * the view built; a refusal at any step builds nothing. */
TEST(opts_view_as_the_mount)
{
	char *dir = vt_make_ckpt(), *none = ut_path(dir, "missing"), *log;
	char *typo[] = { "veiw=hf" }, *multi[] = { "ep_size=2" }, *one[] = { "ep_size=2,ep_rank=1" };
	static struct qv_mount m;
	struct qv_cmdline cl;
	struct ut_capture cap;

	checked_calls = 0;
	ut_stderr_begin(&cap);
	CHECK_EQ_INT(qv_opts_view(dir, typo, 1, &cl, &m, refuse_multi, NULL), -1);
	qv_opts_free(&cl);
	CHECK_EQ_INT(checked_calls, 0);
	CHECK_EQ_INT(qv_opts_view(dir, multi, 1, &cl, &m, refuse_multi, NULL), -1);
	qv_opts_free(&cl);
	CHECK_EQ_INT(checked_calls, 1);
	CHECK_EQ_INT(qv_opts_view(none, one, 1, &cl, &m, refuse_multi, NULL), -1);
	qv_opts_free(&cl);
	log = ut_stderr_end(&cap);
	CHECK_HAS(log, "unknown option(s): `-o veiw=hf'");
	CHECK_HAS(log, "missing");
	free(log);
	if (CHECK_EQ_INT(qv_opts_view(dir, one, 1, &cl, &m, refuse_multi, NULL), 0)) {
		CHECK(m.o.gen.ep_size == 2 && m.o.gen.ep_rank == 1 && m.o.gen.ep_rank_set);
		qv_mount_fini(&m);
	}
	qv_opts_free(&cl);
	free(none);
	ut_rmtree(dir);
	free(dir);
}
