/* test_scan.c - the source tree after the symlink policy (DESIGN §2): links resolving inside are
 * followed, escaping/dangling/looping links and special files are left out (and logged), and a
 * Hugging Face cache snapshot may link into its repository's blobs/. */
#include "unit.h"
#include "util_test.h"

#include "qv_scan.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const struct qv_snode *find(const struct qv_scan *s, const char *rel)
{
	for (size_t i = 0; i < s->nn; i++)
		if (strcmp(s->n[i].rel, rel) == 0)
			return &s->n[i];
	return NULL;
}

/* Names of node n's kids joined with ',' into out. */
static const char *kid_names(const struct qv_scan *s, const struct qv_snode *n, char *out,
			     size_t outlen)
{
	size_t pos = 0;

	out[0] = '\0';
	for (size_t k = 0; n && k < n->nkids && pos < outlen; k++)
		pos += (size_t)snprintf(out + pos, outlen - pos, "%s%s", k ? "," : "",
					s->n[n->kids[k]].name);
	return out;
}

static void mkfile(const char *dir, const char *rel, const char *text)
{
	char *p = ut_path(dir, rel);

	CHECK_MSG(ut_write_file(p, text, strlen(text)) == 0, "write %s", p);
	free(p);
}

static void mkdirs(const char *dir, const char *rel)
{
	char *p = ut_path(dir, rel);

	CHECK_MSG(mkdir(p, 0755) == 0, "mkdir %s", p);
	free(p);
}

static void mklink(const char *dir, const char *rel, const char *target)
{
	char *p = ut_path(dir, rel);

	CHECK_MSG(symlink(target, p) == 0, "symlink %s", p);
	free(p);
}

/* base/src is the source; base/src2 and base/outside lie next to it. */
static char *build_tree(const char *base)
{
	char *src = ut_path(base, "src"), *abs_target;

	mkdirs(base, "src");
	mkdirs(base, "src2");
	mkdirs(base, "outside");
	mkfile(base, "src2/f.txt", "not mine");
	mkfile(base, "outside/secret.txt", "secret");
	mkfile(src, "a.txt", "aaa");
	mkdirs(src, "sub");
	mkfile(src, "sub/b.txt", "bbbb");
	mkdirs(src, "sub/deeper");
	mkfile(src, "sub/deeper/c.txt", "c");
	mkdirs(src, "sub/.qvlmoefs"); /* reserved only at the root */
	mkfile(src, "sub/.qvlmoefs/kept.txt", "k");
	mkdirs(src, ".qvlmoefs");
	mkfile(src, ".qvlmoefs/hidden.txt", "h");
	mklink(src, "sub/up", "..");
	mklink(src, "link_in", "sub/b.txt");
	mklink(src, "link_dir", "sub/deeper");
	mklink(src, "link_chain", "link_in");
	abs_target = ut_path(src, "a.txt");
	mklink(src, "abs_in", abs_target);
	free(abs_target);
	mklink(src, "escape", "../outside/secret.txt");
	mklink(src, "escape_dir", "../outside");
	mklink(src, "escape_prefix", "../src2/f.txt"); /* shares the prefix "src" */
	mklink(src, "dangling", "no/such/file");
	mklink(src, "loop", ".");
	mklink(src, "pair_a", "pair_b");
	mklink(src, "pair_b", "pair_a");
	{
		char *fifo = ut_path(src, "fifo");

		CHECK_EQ_INT(mkfifo(fifo, 0644), 0);
		free(fifo);
	}
	return src;
}

TEST(scan_tree_policy)
{
	char *base = ut_tmpdir(), *src, *log, names[512], real[PATH_MAX];
	struct ut_capture cap;
	struct qv_scan s;
	char err[QV_ERRLEN] = "";
	const struct qv_snode *n;
	int rc;

	if (!CHECK(base))
		return;
	src = build_tree(base);
	ut_stderr_begin(&cap);
	rc = qv_scan_tree(src, &s, err, sizeof(err));
	log = ut_stderr_end(&cap);
	if (!CHECK_MSG(rc == 0, "%d %s", rc, err))
		goto out;
	CHECK_STR(s.root, realpath(src, real));
	CHECK_STR(s.allow_root, s.root);
	CHECK_STR(s.n[0].rel, "");
	CHECK_EQ_U64(s.n[0].parent, 0);
	CHECK_STR(kid_names(&s, &s.n[0], names, sizeof(names)),
		  "a.txt,abs_in,link_chain,link_dir,link_in,sub");
	CHECK_STR(kid_names(&s, find(&s, "sub"), names, sizeof(names)), ".qvlmoefs,b.txt,deeper");
	CHECK_STR(kid_names(&s, find(&s, "sub/.qvlmoefs"), names, sizeof(names)), "kept.txt");
	CHECK_STR(kid_names(&s, find(&s, "link_dir"), names, sizeof(names)), "c.txt");
	/* links show as what they point to, with the resolved path */
	n = find(&s, "link_in");
	if (CHECK(n)) {
		CHECK(S_ISREG(n->st.st_mode));
		CHECK_EQ_U64(n->st.st_size, 4);
		snprintf(real, sizeof(real), "%s/sub/b.txt", s.root);
		CHECK_STR(n->path, real);
	}
	n = find(&s, "link_chain");
	CHECK(n && S_ISREG(n->st.st_mode) && n->st.st_size == 4);
	n = find(&s, "abs_in");
	CHECK(n && S_ISREG(n->st.st_mode) && n->st.st_size == 3);
	n = find(&s, "link_dir");
	CHECK(n && S_ISDIR(n->st.st_mode));
	n = find(&s, "link_dir/c.txt");
	if (CHECK(n)) {
		snprintf(real, sizeof(real), "%s/sub/deeper/c.txt", s.root);
		CHECK_STR(n->path, real);
		CHECK_STR(n->name, "c.txt");
		CHECK_STR(s.n[n->parent].rel, "link_dir");
	}
	n = find(&s, "sub/deeper/c.txt");
	CHECK(n && strcmp(s.n[n->parent].rel, "sub/deeper") == 0);
	/* every left-out entry, and nothing else */
	CHECK(!find(&s, ".qvlmoefs") && !find(&s, ".qvlmoefs/hidden.txt"));
	CHECK(!find(&s, "escape") && !find(&s, "escape_dir") && !find(&s, "escape_prefix"));
	CHECK(!find(&s, "dangling") && !find(&s, "fifo") && !find(&s, "loop"));
	CHECK(!find(&s, "pair_a") && !find(&s, "pair_b") && !find(&s, "sub/up"));
	CHECK_EQ_U64(s.nn, 13);
	/* each logged once */
	{
		static const char *const out[] = { "escape: ", "escape_dir: ", "escape_prefix: ",
						   "dangling: ", "fifo: ", "loop: ", "sub/up: " };

		for (size_t i = 0; i < sizeof(out) / sizeof(out[0]); i++)
			CHECK_MSG(ut_count(log, out[i]) == 1, "\"%s\" logged %zu times in \"%s\"",
				  out[i], ut_count(log, out[i]), log);
	}
	qv_scan_free(&s);
	CHECK(s.n == NULL && s.nn == 0);
out:
	free(log);
	ut_rmtree(base);
	free(base);
	free(src);
}

TEST(scan_hf_cache_snapshot)
{
	char *base = ut_tmpdir(), *repo, *snap, *log, names[256], real[PATH_MAX];
	struct ut_capture cap;
	struct qv_scan s;
	char err[QV_ERRLEN] = "";
	const struct qv_snode *n;
	int rc;

	if (!CHECK(base))
		return;
	repo = ut_path(base, "models--Qwen--Qwen3-VL-30B-A3B-Instruct");
	mkdirs(base, "models--Qwen--Qwen3-VL-30B-A3B-Instruct");
	mkdirs(repo, "blobs");
	mkdirs(repo, "snapshots");
	mkdirs(repo, "snapshots/0123abcd");
	mkdirs(repo, "snapshots/0123abcd/sub");
	mkdirs(repo, "snapshots/old");
	mkfile(repo, "blobs/1111", "{\"config\":1}");
	mkfile(repo, "blobs/2222", "weights!");
	mkfile(repo, "snapshots/old/x.txt", "old");
	mkfile(base, "outside.txt", "no");
	mklink(repo, "snapshots/0123abcd/config.json", "../../blobs/1111");
	mklink(repo, "snapshots/0123abcd/sub/w.safetensors", "../../../blobs/2222");
	mklink(repo, "snapshots/0123abcd/older.txt", "../old/x.txt");
	mklink(repo, "snapshots/0123abcd/escape.txt", "../../../outside.txt");
	snap = ut_path(repo, "snapshots/0123abcd");
	ut_stderr_begin(&cap);
	rc = qv_scan_tree(snap, &s, err, sizeof(err));
	log = ut_stderr_end(&cap);
	if (!CHECK_MSG(rc == 0, "%d %s", rc, err))
		goto out;
	CHECK_STR(s.allow_root, realpath(repo, real));
	CHECK_STR(kid_names(&s, &s.n[0], names, sizeof(names)), "config.json,older.txt,sub");
	n = find(&s, "config.json");
	if (CHECK(n)) {
		CHECK(S_ISREG(n->st.st_mode));
		CHECK_EQ_U64(n->st.st_size, 12);
		snprintf(real, sizeof(real), "%s/blobs/1111", s.allow_root);
		CHECK_STR(n->path, real);
	}
	n = find(&s, "sub/w.safetensors");
	CHECK(n && S_ISREG(n->st.st_mode) && n->st.st_size == 8);
	CHECK(!find(&s, "escape.txt"));
	CHECK_EQ_U64(ut_count(log, "escape.txt"), 1);
	qv_scan_free(&s);
out:
	free(log);
	ut_rmtree(base);
	free(base);
	free(repo);
	free(snap);
}

TEST(scan_snapshot_layout_without_models_prefix)
{
	char *base = ut_tmpdir(), *root, *log;
	struct ut_capture cap;
	struct qv_scan s;
	char err[QV_ERRLEN] = "";
	int rc;

	if (!CHECK(base))
		return;
	mkdirs(base, "notcache");
	mkdirs(base, "notcache/blobs");
	mkdirs(base, "notcache/snapshots");
	mkdirs(base, "notcache/snapshots/rev");
	mkfile(base, "notcache/blobs/h", "x");
	mklink(base, "notcache/snapshots/rev/f", "../../blobs/h");
	mkfile(base, "notcache/snapshots/rev/g", "y");
	root = ut_path(base, "notcache/snapshots/rev");
	ut_stderr_begin(&cap);
	rc = qv_scan_tree(root, &s, err, sizeof(err));
	log = ut_stderr_end(&cap);
	if (CHECK_MSG(rc == 0, "%s", err)) {
		CHECK_STR(s.allow_root, s.root);
		CHECK(!find(&s, "f"));
		CHECK(find(&s, "g"));
		qv_scan_free(&s);
	}
	free(log);
	free(root);
	ut_rmtree(base);
	free(base);
}

TEST(scan_source_via_symlink)
{
	char *base = ut_tmpdir(), *via, *log, real[PATH_MAX], *src;
	struct ut_capture cap;
	struct qv_scan s;
	char err[QV_ERRLEN] = "";

	if (!CHECK(base))
		return;
	mkdirs(base, "real");
	mkfile(base, "real/a", "1");
	mklink(base, "real/self_abs", "a");
	mklink(base, "via", "real");
	via = ut_path(base, "via");
	src = ut_path(base, "real");
	ut_stderr_begin(&cap);
	if (CHECK_EQ_INT(qv_scan_tree(via, &s, err, sizeof(err)), 0)) {
		CHECK_STR(s.root, realpath(src, real));
		CHECK(find(&s, "a") && find(&s, "self_abs"));
		qv_scan_free(&s);
	}
	log = ut_stderr_end(&cap);
	free(log);
	free(via);
	free(src);
	ut_rmtree(base);
	free(base);
}

TEST(scan_errors)
{
	char *base = ut_tmpdir(), *file, *missing;
	struct qv_scan s;
	char err[QV_ERRLEN] = "";

	if (!CHECK(base))
		return;
	missing = ut_path(base, "missing");
	file = ut_path(base, "file");
	mkfile(base, "file", "x");
	CHECK_EQ_INT(qv_scan_tree(missing, &s, err, sizeof(err)), -ENOENT);
	CHECK_HAS(err, "missing");
	CHECK(s.n == NULL && s.root == NULL);
	err[0] = '\0';
	CHECK_EQ_INT(qv_scan_tree(file, &s, err, sizeof(err)), -ENOTDIR);
	CHECK_HAS(err, "file");
	CHECK(s.n == NULL && s.root == NULL);
	qv_scan_free(&s);
	free(missing);
	free(file);
	ut_rmtree(base);
	free(base);
}

TEST(scan_empty_folder)
{
	char *base = ut_tmpdir();
	struct qv_scan s;
	char err[QV_ERRLEN] = "";

	if (!CHECK(base))
		return;
	if (CHECK_EQ_INT(qv_scan_tree(base, &s, err, sizeof(err)), 0)) {
		CHECK_EQ_U64(s.nn, 1);
		CHECK_EQ_U64(s.n[0].nkids, 0);
		CHECK(S_ISDIR(s.n[0].st.st_mode));
		qv_scan_free(&s);
	}
	ut_rmtree(base);
	free(base);
}

TEST(scan_kids_sorted_bytewise)
{
	static const char *const names[] = { "b", "B", "a", "_", "a.b", "a-b", "ab", "0" };
	char *base = ut_tmpdir(), buf[256];
	struct qv_scan s;
	char err[QV_ERRLEN] = "";

	if (!CHECK(base))
		return;
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		mkfile(base, names[i], names[i]);
	if (CHECK_EQ_INT(qv_scan_tree(base, &s, err, sizeof(err)), 0)) {
		CHECK_STR(kid_names(&s, &s.n[0], buf, sizeof(buf)), "0,B,_,a,a-b,a.b,ab,b");
		qv_scan_free(&s);
	}
	ut_rmtree(base);
	free(base);
}
