/* scan.c - walk the source once at mount: regular files and folders, links per DESIGN §2. */
#include "qv_scan.h"
#include "qv_perm.h"
#include "qv_util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_DEPTH 64

/* Inside dir (a realpath): equal to it or below it, on a path boundary. */
static bool path_within(const char *p, const char *dir)
{
	size_t n = strlen(dir);

	return strncmp(p, dir, n) == 0 && (p[n] == '\0' || p[n] == '/' || (n == 1 && dir[0] == '/'));
}

/* A snapshot .../models--X/snapshots/REV links into .../models--X/blobs: allow that repository. */
static char *allow_root_of(const char *root)
{
	const char *s = strstr(root, "/snapshots/");
	const char *base;
	char *repo;

	if (!s || strchr(s + 11, '/') || !s[11])
		return strdup(root);
	repo = strndup(root, (size_t)(s - root));
	if (!repo)
		return NULL;
	base = strrchr(repo, '/');
	if (base && qv_starts_with(base + 1, "models--"))
		return repo;
	free(repo);
	return strdup(root);
}

static int add_node(struct qv_scan *s, uint32_t parent, const char *name, const char *path,
		    const char *rel, const struct stat *st, uint32_t *idx)
{
	struct qv_snode *n;

	if ((s->nn & (s->nn - 1)) == 0) {
		n = realloc(s->n, (s->nn ? s->nn * 2 : 16) * sizeof(*n));
		if (!n)
			return -ENOMEM;
		s->n = n;
	}
	n = &s->n[s->nn];
	memset(n, 0, sizeof(*n));
	n->name = strdup(name);
	n->path = strdup(path);
	n->rel = strdup(rel);
	n->st = *st;
	if (!n->name || !n->path || !n->rel) {
		free(n->name), free(n->path), free(n->rel);
		return -ENOMEM;
	}
	n->parent = parent;
	*idx = (uint32_t)s->nn++;
	return 0;
}

/* Narrow *mode (of a file owned by uid, gid) by every folder above path, from "/" down: a
 * caller that cannot search one of them cannot reach the file at all. A folder that cannot
 * be examined lets nobody through. */
static void narrow_by_folders(const char *path, uid_t uid, gid_t gid, mode_t *mode)
{
	char p[PATH_MAX];
	size_t len = strlen(path);
	struct stat a;

	for (size_t i = 0; i < len; i++) {
		size_t plen = i ? i : 1; /* the folder ending before this slash ("/" for the first) */

		if (path[i] != '/' || plen >= len)
			continue;
		memcpy(p, path, plen);
		p[plen] = '\0';
		if (stat(p, &a) == 0)
			*mode = qv_perm_and(uid, gid, *mode, a.st_uid, a.st_gid,
					    qv_perm_search(a.st_mode));
		else
			*mode = 0;
	}
}

/* What the view may grant on node idx: its mode, narrowed by its folder in the source (which
 * is narrowed in turn) or, for the root, by every folder above it; a link's target also by
 * every folder above the target, which the link's own path does not pass. */
static void set_vmode(struct qv_scan *s, uint32_t idx, bool link)
{
	struct qv_snode *n = &s->n[idx];
	const struct qv_snode *up = &s->n[n->parent];

	n->vmode = n->st.st_mode & QV_PERM_BITS;
	if (idx == 0 || link)
		narrow_by_folders(n->path, n->st.st_uid, n->st.st_gid, &n->vmode);
	if (idx != 0)
		n->vmode = qv_perm_and(n->st.st_uid, n->st.st_gid, n->vmode, up->st.st_uid,
				       up->st.st_gid, qv_perm_search(up->vmode));
}

static int cmp_name(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Resolve one directory entry by the link policy: 1 = show it (st, real filled), 0 = skip. */
static int resolve(const struct qv_scan *s, const char *full, const char *rel, struct stat *st,
		   char *real)
{
	if (lstat(full, st))
		return 0;
	if (S_ISLNK(st->st_mode)) {
		if (!realpath(full, real)) {
			qv_log("%s: dangling symlink, left out of the view", rel);
			return 0;
		}
		if (!path_within(real, s->allow_root)) {
			qv_log("%s: symlink points outside the source (%s), left out of the view", rel,
			       real);
			return 0;
		}
		if (stat(real, st))
			return 0;
	} else {
		if (strlen(full) >= PATH_MAX)
			return 0;
		strcpy(real, full);
	}
	if (!S_ISREG(st->st_mode) && !S_ISDIR(st->st_mode)) {
		qv_log("%s: not a regular file or folder, left out of the view", rel);
		return 0;
	}
	return 1;
}

/* Names of a directory's entries, sorted so inode numbers are stable across mounts. */
static int list_dir(const char *path, char ***names, size_t *n)
{
	DIR *d = opendir(path);
	struct dirent *e;
	size_t cap = 0;
	char **v = NULL, **p;

	*n = 0;
	if (!d)
		return -errno;
	while ((e = readdir(d))) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		if (*n == cap) {
			cap = cap ? cap * 2 : 16;
			p = realloc(v, cap * sizeof(*v));
			if (!p)
				goto oom;
			v = p;
		}
		if (!(v[*n] = strdup(e->d_name)))
			goto oom;
		(*n)++;
	}
	closedir(d);
	if (*n)
		qsort(v, *n, sizeof(*v), cmp_name);
	*names = v;
	return 0;
oom:
	closedir(d);
	while (*n)
		free(v[--*n]);
	free(v);
	return -ENOMEM;
}

static int walk(struct qv_scan *s, uint32_t dir, int depth, char *err, size_t errlen);

/* A folder reached again through a link would make the tree infinite. */
static bool is_ancestor(const struct qv_scan *s, uint32_t dir, const struct stat *st)
{
	for (uint32_t a = dir;; a = s->n[a].parent) {
		if (s->n[a].st.st_dev == st->st_dev && s->n[a].st.st_ino == st->st_ino)
			return true;
		if (a == 0)
			return false;
	}
}

static int walk_entry(struct qv_scan *s, uint32_t dir, const char *name, int depth, char *err,
		      size_t errlen)
{
	char real[PATH_MAX];
	char *full, *rel;
	struct stat st;
	uint32_t idx, *kids;
	int rc = 0;

	full = qv_path_join(s->n[dir].path, name);
	rel = s->n[dir].rel[0] ? qv_path_join(s->n[dir].rel, name) : strdup(name);
	if (!full || !rel) {
		rc = -ENOMEM;
		goto out;
	}
	if (depth == 0 && strcmp(name, ".qvlmoefs") == 0) {
		qv_log("%s: reserved for the view's own inspection folder, left out", rel);
		goto out;
	}
	if (resolve(s, full, rel, &st, real) != 1)
		goto out;
	if (S_ISDIR(st.st_mode) && is_ancestor(s, dir, &st)) {
		qv_log("%s: link to one of its own parent folders, left out of the view", rel);
		goto out;
	}
	rc = add_node(s, dir, name, real, rel, &st, &idx);
	if (rc)
		goto out;
	set_vmode(s, idx, strcmp(real, full) != 0);
	kids = realloc(s->n[dir].kids, (s->n[dir].nkids + 1) * sizeof(*kids));
	if (!kids) {
		rc = -ENOMEM;
		goto out;
	}
	s->n[dir].kids = kids;
	kids[s->n[dir].nkids++] = idx;
	if (S_ISDIR(st.st_mode))
		rc = walk(s, idx, depth + 1, err, errlen);
out:
	free(full);
	free(rel);
	return rc;
}

static int walk(struct qv_scan *s, uint32_t dir, int depth, char *err, size_t errlen)
{
	char **names = NULL;
	size_t n;
	int rc;

	if (depth > MAX_DEPTH) {
		qv_log("%s: folders nested deeper than %d (a link loop?), left out", s->n[dir].rel,
		       MAX_DEPTH);
		return 0;
	}
	rc = list_dir(s->n[dir].path, &names, &n);
	if (rc)
		return qv_err(err, errlen, rc, "%s: cannot list folder: %s",
			      s->n[dir].rel[0] ? s->n[dir].rel : s->root, strerror(-rc));
	for (size_t i = 0; i < n; i++) {
		if (!rc)
			rc = walk_entry(s, dir, names[i], depth, err, errlen);
		free(names[i]);
	}
	free(names);
	return rc;
}

int qv_scan_tree(const char *src, struct qv_scan *out, char *err, size_t errlen)
{
	struct stat st;
	uint32_t root;
	int rc;

	memset(out, 0, sizeof(*out));
	out->root = realpath(src, NULL);
	if (!out->root)
		return qv_err(err, errlen, -errno, "%s: %s", src, strerror(errno));
	if (stat(out->root, &st) || !S_ISDIR(st.st_mode)) {
		rc = qv_err(err, errlen, -ENOTDIR, "%s: not a folder", src);
		goto fail;
	}
	out->allow_root = allow_root_of(out->root);
	rc = out->allow_root ? add_node(out, 0, "", out->root, "", &st, &root) : -ENOMEM;
	if (!rc) {
		set_vmode(out, root, false);
		rc = walk(out, root, 0, err, errlen);
	}
	if (!rc)
		return 0;
	if (rc == -ENOMEM)
		qv_err(err, errlen, rc, "%s: out of memory while scanning", src);
fail:
	qv_scan_free(out);
	return rc;
}

int qv_scan_open(const struct qv_snode *n, struct stat *st, char *why, size_t wl)
{
	/* the scan resolved every link, so the path's last component is never a link: one now
	 * means a swap; O_NONBLOCK keeps a FIFO swapped in from blocking the open */
	int fd = open(n->path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK), e;
	const char *now;

	if (fd < 0) {
		e = errno;
		return e == ELOOP ? qv_err(why, wl, -ESTALE, "changed since the scan: now a symlink") :
				    qv_err(why, wl, -e, "%s", strerror(e));
	}
	if (fstat(fd, st)) {
		e = errno;
		close(fd);
		return qv_err(why, wl, -e, "%s", strerror(e));
	}
	now = !S_ISREG(st->st_mode) ? "not a regular file any more" :
	      st->st_dev != n->st.st_dev || st->st_ino != n->st.st_ino ? "another file" : NULL;
	/* O_NONBLOCK must go: io_uring would return -EAGAIN for uncached reads instead of
	 * waiting for them */
	if (!now && fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK) == 0)
		return fd;
	e = errno;
	close(fd);
	return now ? qv_err(why, wl, -ESTALE, "changed since the scan: %s", now) :
		     qv_err(why, wl, -e, "%s", strerror(e));
}

int qv_scan_read(const struct qv_snode *n, size_t max, struct qv_buf *out, char *why, size_t wl)
{
	struct stat st;
	int fd = qv_scan_open(n, &st, why, wl), rc;

	if (fd < 0)
		return fd;
	rc = qv_read_fd(fd, max, out);
	close(fd);
	return rc ? qv_err(why, wl, rc, "%s", strerror(-rc)) : 0;
}

uint32_t qv_scan_find(const struct qv_scan *s, const char *rel)
{
	for (size_t i = 1; i < s->nn; i++)
		if (strcmp(s->n[i].rel, rel) == 0)
			return (uint32_t)i;
	return 0;
}

void qv_scan_free(struct qv_scan *s)
{
	for (size_t i = 0; i < s->nn; i++) {
		free(s->n[i].name);
		free(s->n[i].path);
		free(s->n[i].rel);
		free(s->n[i].kids);
	}
	free(s->n);
	free(s->root);
	free(s->allow_root);
	memset(s, 0, sizeof(*s));
}
