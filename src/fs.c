/* fs.c - the FUSE low-level handlers. Each one asks the FUSE-free core and replies exactly once;
 * mutations get EROFS. Sources are immutable while mounted, so the kernel may cache for long. */
#include "qv_fs.h"
#include "qv_util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#define CACHE_TIMEOUT 86400.0
#define READ_BUF_MIN (1u << 20)
#define SPLICE_MIN (2u * 4096)

/* What a worker thread keeps between requests: nothing is allocated per read. */
struct qv_thread {
	struct qv_io *io;
	struct qv_rdscratch sc;
	char *buf;
	size_t cap;
};

static void thread_free(void *p)
{
	struct qv_thread *t = p;

	qv_io_free(t->io);
	free(t->sc.ops);
	free(t->buf);
	free(t);
}

static struct qv_fs *fs_of(fuse_req_t req)
{
	return fuse_req_userdata(req);
}

static int thread_get(struct qv_fs *fs, size_t need, struct qv_thread **out)
{
	struct qv_thread *t = pthread_getspecific(fs->tkey);
	int rc;

	if (!t) {
		t = calloc(1, sizeof(*t));
		if (!t)
			return -ENOMEM;
		rc = qv_io_new(&fs->m->o.io, &t->io);
		if (rc || pthread_setspecific(fs->tkey, t)) {
			free(t);
			return rc ? rc : -ENOMEM;
		}
	}
	if (t->cap < need) {
		size_t cap = need < READ_BUF_MIN ? READ_BUF_MIN : need;
		char *b = realloc(t->buf, cap);

		if (!b)
			return -ENOMEM;
		t->buf = b;
		t->cap = cap;
	}
	*out = t;
	return 0;
}

static void fill_attr(const struct qv_node *n, struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = n->ino;
	/* the sources' owner, group and modes (tree.c): default_permissions checks these */
	st->st_mode = (n->dir ? S_IFDIR : S_IFREG) | n->mode;
	st->st_nlink = n->dir ? 2 : n->nlink ? n->nlink : 1;
	st->st_uid = n->uid;
	st->st_gid = n->gid;
	st->st_size = (off_t)n->vf.size;
	st->st_blksize = 1 << 20; /* hint: read in large requests */
	st->st_blocks = (blkcnt_t)((n->vf.size + 511) / 512);
	st->st_atim = st->st_mtim = st->st_ctim = n->mtime;
}

static void fill_entry(const struct qv_node *n, struct fuse_entry_param *e)
{
	memset(e, 0, sizeof(*e));
	e->ino = n->ino;
	e->generation = n->fgen; /* a reused inode number is another file */
	e->attr_timeout = e->entry_timeout = CACHE_TIMEOUT;
	fill_attr(n, &e->attr);
}

/* Fault injection (tests): the next *left replies of a kind are refused the way the kernel
 * refuses the reply to a request that was interrupted meanwhile, so the handler must undo.
 * The caller sees ECANCELED (not EINTR, which libraries retry). */
static bool refuse_reply(fuse_req_t req, atomic_int *left)
{
	if (atomic_load(left) <= 0 || atomic_fetch_sub(left, 1) <= 0)
		return false;
	fuse_reply_err(req, ECANCELED);
	return true;
}

/* A lookup's reply; nonzero when the kernel did not take it (the lookup then does not count). */
static int reply_entry(struct qv_fs *fs, fuse_req_t req, const struct fuse_entry_param *e)
{
	return refuse_reply(req, &fs->fail_entry) ? -ENOENT : fuse_reply_entry(req, e);
}

/* An open's reply; nonzero when the kernel did not take it: no release will come. */
static int reply_open(struct qv_fs *fs, fuse_req_t req, const struct fuse_file_info *fi)
{
	return refuse_reply(req, &fs->fail_open) ? -ENOENT : fuse_reply_open(req, fi);
}

static void op_init(void *userdata, struct fuse_conn_info *conn)
{
	struct qv_fs *fs = userdata;

	conn->max_read = fs->max_read; /* libfuse wants the mount option's value again here */
	/* INIT may only lower the mount's readahead, which main() has already set (as root):
	 * do not cap it here */
	conn->max_readahead = 1u << 30;
	if (conn->max_background < 64)
		conn->max_background = 64;
	if (conn->congestion_threshold < 48)
		conn->congestion_threshold = 48;
	conn->want &= ~(unsigned)FUSE_CAP_AUTO_INVAL_DATA; /* immutable: keep the page cache */
	if (conn->capable & FUSE_CAP_READDIRPLUS)
		conn->want |= FUSE_CAP_READDIRPLUS;
	if (conn->capable & FUSE_CAP_SPLICE_WRITE)
		conn->want |= FUSE_CAP_SPLICE_WRITE;
}

/* Handlers hold the generation of the node they work on until they have replied (for the
 * root, a rescan may otherwise free it under them); read and release need no hold of their
 * own, the open file has one. */
static void put(struct qv_fs *fs, struct qv_node *n)
{
	if (n)
		qv_mount_drop(fs->m, n, 1);
}

/* The folder ino, held, with its entries built (rank folders are built on first use); 0 or
 * -errno. *out is set (and must be put) whenever the node exists. */
static int dir_get(struct qv_fs *fs, fuse_ino_t ino, struct qv_node **out)
{
	struct qv_node *d = *out = qv_mount_get(fs->m, ino);

	if (!d)
		return -ENOENT;
	if (!d->dir)
		return -ENOTDIR;
	return qv_mount_ready(fs->m, d);
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct qv_fs *fs = fs_of(req);
	struct qv_node *d, *n;
	struct fuse_entry_param e;
	int rc = dir_get(fs, parent, &d);

	if (rc) {
		fuse_reply_err(req, -rc);
		put(fs, d);
		return;
	}
	/* A generation never changes, so its entries may be cached for long, negative ones too.
	 * A folder of a generation a rescan has replaced gives the kernel no entry at all (any
	 * entry, even one with no timeout, would stay cached and hold the old generation): a
	 * path walk that met it starts again from the root, where the new generation answers.
	 * A lookup in flight during a rescan holds its folder's inode lock, which the rescan's
	 * invalidation of that folder's names waits for: what it caches is dropped at once. */
	if (!qv_mount_current(fs->m, d)) {
		fuse_reply_err(req, ESTALE);
	} else {
		if (fs->slow_lookup_ms)
			nanosleep(&(struct timespec){ fs->slow_lookup_ms / 1000,
						      fs->slow_lookup_ms % 1000 * 1000000L }, NULL);
		if (!(n = qv_tree_lookup(&fs->m->tree, d, name))) {
			memset(&e, 0, sizeof(e));
			e.entry_timeout = CACHE_TIMEOUT;
			fuse_reply_entry(req, &e);
		} else {
			fill_entry(n, &e);
			qv_mount_hold(fs->m, n, 1); /* the kernel's lookup, until it forgets n */
			if (reply_entry(fs, req, &e))
				qv_mount_drop(fs->m, n, 1);
		}
	}
	put(fs, d);
}

/* The kernel forgets nlookup lookups of ino; the root's are never counted. */
static void forget_one(struct qv_fs *fs, fuse_ino_t ino, uint64_t nlookup)
{
	struct qv_node *n = ino == FUSE_ROOT_ID ? NULL : qv_tree_node(&fs->m->tree, ino);

	if (n)
		qv_mount_drop(fs->m, n, nlookup);
}

static void op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
	forget_one(fs_of(req), ino, nlookup);
	fuse_reply_none(req);
}

static void op_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets)
{
	for (size_t i = 0; i < count; i++)
		forget_one(fs_of(req), forgets[i].ino, forgets[i].nlookup);
	fuse_reply_none(req);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct qv_fs *fs = fs_of(req);
	struct qv_node *n = qv_mount_get(fs->m, ino);
	struct stat st;

	(void)fi;
	if (!n) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	fill_attr(n, &st);
	fuse_reply_attr(req, &st, CACHE_TIMEOUT);
	put(fs, n);
}

static void op_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct qv_fs *fs = fs_of(req);
	struct qv_node *d;
	int rc = dir_get(fs, ino, &d);

	if (rc) {
		fuse_reply_err(req, -rc);
	} else {
		fi->cache_readdir = 1;
		fi->keep_cache = 1;
		fuse_reply_open(req, fi); /* nothing to undo: a folder handle holds nothing */
	}
	put(fs, d);
}

/* Entries of d from index off into buf (at most size bytes); *used bytes, *counted entries
 * that carry a lookup (readdirplus, past "." and "..", when d's generation is current: see
 * op_lookup). Offsets: 0 ".", 1 "..", then kids; an entry's offset is the next one's index. */
static void fill_dir(fuse_req_t req, struct qv_fs *fs, struct qv_node *d, char *buf, size_t size,
		     off_t off, bool plus, bool current, size_t *used, uint64_t *counted)
{
	for (size_t i = (size_t)off; i < d->nkids + 2; i++) {
		struct qv_node *n = i == 0 ? d : qv_tree_node(&fs->m->tree, i == 1 ? d->parent : d->kids[i - 2]);
		const char *name = i == 0 ? "." : i == 1 ? ".." : n ? n->name : NULL;
		struct fuse_entry_param e;
		size_t len;

		/* .qvlmoefs/ is found by name, not listed (unless asked): walkers see each byte once */
		if (!n || (i >= 2 && n->inspect && !fs->m->o.inspect_visible))
			continue;
		fill_entry(n, &e);
		if (plus && i >= 2 && current)
			len = fuse_add_direntry_plus(req, buf + *used, size - *used, name, &e,
						     (off_t)i + 1);
		else if (plus) /* no lookup count for "." and ".." (the kernel skips them), nor for
				* an entry without a node id, of which the kernel makes none */
			len = fuse_add_direntry_plus(req, buf + *used, size - *used, name,
						     &(struct fuse_entry_param){ .attr = e.attr },
						     (off_t)i + 1);
		else
			len = fuse_add_direntry(req, buf + *used, size - *used, name, &e.attr,
						(off_t)i + 1);
		if (len > size - *used)
			break;
		*used += len;
		*counted += plus && i >= 2 && current;
	}
}

static void do_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, bool plus)
{
	struct qv_fs *fs = fs_of(req);
	struct qv_node *d;
	char *buf = NULL;
	size_t used = 0;
	uint64_t counted = 0;
	int rc = dir_get(fs, ino, &d);

	if (!rc && !(buf = malloc(size)))
		rc = -ENOMEM;
	if (rc) {
		fuse_reply_err(req, -rc);
		put(fs, d);
		return;
	}
	fill_dir(req, fs, d, buf, size, off, plus, qv_mount_current(fs->m, d), &used, &counted);
	/* each entry with attributes is a lookup the kernel takes (or forgets at once): entries
	 * are d's, of d's generation */
	qv_mount_hold(fs->m, d, counted);
	if (fuse_reply_buf(req, buf, used) && counted)
		qv_mount_drop(fs->m, d, counted);
	free(buf);
	put(fs, d);
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		       struct fuse_file_info *fi)
{
	(void)fi;
	do_readdir(req, ino, size, off, false);
}

static void op_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
			   struct fuse_file_info *fi)
{
	(void)fi;
	do_readdir(req, ino, size, off, true);
}

/* A .qvlmoefs/ file: its bytes are made now and kept with the open file; direct_io, since
 * its size (0 in getattr, like /proc) says nothing. */
static void open_dyn(fuse_req_t req, struct qv_fs *fs, struct qv_node *n,
		     struct fuse_file_info *fi)
{
	struct qv_buf *b = calloc(1, sizeof(*b));
	int rc = b ? qv_mount_dyn_content(fs->m, n, b) : -ENOMEM;

	if (!rc) {
		fi->fh = (uint64_t)(uintptr_t)b;
		fi->direct_io = 1;
		if (reply_open(fs, req, fi) == 0)
			return;
	} else {
		fuse_reply_err(req, -rc);
	}
	if (b) /* no release comes for an open that failed or whose reply was not taken */
		qv_buf_free(b);
	free(b);
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct qv_fs *fs = fs_of(req);
	struct qv_node *n = qv_mount_get(fs->m, ino);
	int rc = !n ? -ENOENT : n->dir ? -EISDIR : 0;

	if (!rc && ((fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC)))
		rc = -EROFS;
	if (!rc && n->dyn) {
		open_dyn(req, fs, n, fi);
	} else if (!rc && !(rc = qv_mount_open_file(fs->m, n))) {
		fi->keep_cache = 1;
		fi->direct_io = fs->direct_io;
		/* an interrupted open gets no release: give back what it took now */
		if (reply_open(fs, req, fi))
			qv_mount_release_file(fs->m, n);
	}
	if (rc)
		fuse_reply_err(req, -rc);
	put(fs, n);
}

/* Reply to a read of file n with the source's pages themselves when the request is one run of
 * one source: 0 when replied (the bytes, or the error), -EAGAIN when it must be copied. */
static int reply_splice(struct qv_fs *fs, fuse_req_t req, struct qv_node *n, size_t size,
			off_t off, struct qv_thread *t)
{
	struct fuse_bufvec bv = FUSE_BUFVEC_INIT(0);
	size_t got;
	int rd, rc = qv_mount_splice(fs->m, n, (uint64_t)off, size, t->io, &rd, &got);

	if (rc == -EAGAIN)
		return rc;
	if (rc) {
		fuse_reply_err(req, -rc);
		return 0;
	}
	bv.buf[0].size = got;
	bv.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_RETRY;
	bv.buf[0].fd = rd;
	/* libfuse moves the pipe's pages on to /dev/fuse after the reply header (its
	 * FUSE_CAP_SPLICE_WRITE path), or reads them back and writes them when it cannot */
	if (fuse_reply_data(req, &bv, 0))
		qv_io_splice_reset(t->io); /* not taken (an interrupted request): drop the rest */
	return 0;
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		    struct fuse_file_info *fi)
{
	struct qv_fs *fs = fs_of(req);
	struct qv_node *n = qv_tree_node(&fs->m->tree, ino);
	struct qv_thread *t;
	size_t got;
	int rc;

	if (!n || n->dir) {
		fuse_reply_err(req, n ? EISDIR : ENOENT);
		return;
	}
	/* below two pages libfuse copies a spliced reply anyway, through a buffer of its own */
	if (fs->splice && !n->dyn && size >= SPLICE_MIN) {
		rc = thread_get(fs, 0, &t);
		if (!rc && reply_splice(fs, req, n, size, off, t) == 0)
			return;
	}
	rc = thread_get(fs, size, &t);
	if (!rc && n->dyn) {
		struct qv_buf *b = (struct qv_buf *)(uintptr_t)fi->fh;
		size_t o = (uint64_t)off < b->len ? (size_t)off : b->len;

		/* reply from the thread's own buffer: once the kernel has the reply, the file's
		 * release (on another thread) may free b before fuse_reply_buf has returned */
		got = size < b->len - o ? size : b->len - o;
		if (got)
			memcpy(t->buf, b->p + o, got);
	} else if (!rc) {
		rc = qv_mount_read(fs->m, n, (uint64_t)off, size, t->buf, t->io, &t->sc, &got);
	}
	if (rc)
		fuse_reply_err(req, -rc); /* EIO, never a short reply before EOF */
	else
		fuse_reply_buf(req, t->buf, got);
}

static void op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct qv_fs *fs = fs_of(req);
	struct qv_node *n = qv_tree_node(&fs->m->tree, ino);

	if (n && n->dyn) {
		struct qv_buf *b = (struct qv_buf *)(uintptr_t)fi->fh;

		qv_buf_free(b);
		free(b);
	} else if (n && !n->dir) {
		qv_mount_release_file(fs->m, n);
	}
	fuse_reply_err(req, 0);
}

static void op_statfs(fuse_req_t req, fuse_ino_t ino)
{
	struct qv_fs *fs = fs_of(req);
	struct statvfs sv = { 0 };

	(void)ino;
	sv.f_bsize = sv.f_frsize = 4096;
	/* totals kept as nodes are published: no walk over nodes still being built */
	sv.f_blocks = (qv_tree_bytes(&fs->m->tree) + 4095) / 4096;
	sv.f_files = qv_tree_count(&fs->m->tree);
	sv.f_namemax = 255;
	sv.f_flag = ST_RDONLY;
	fuse_reply_statfs(req, &sv);
}

/* Reply with value (len bytes) to a get/listxattr call: its size when asked, else the bytes.
 * A value that changes between calls (max > 0) answers size queries with a bound it never
 * exceeds, so the buffer a caller sizes by it always holds the value it fetches next. */
static void reply_xattr(fuse_req_t req, const char *value, size_t len, size_t max, size_t size)
{
	if (size == 0)
		fuse_reply_xattr(req, len > max ? len : max);
	else if (size < len)
		fuse_reply_err(req, ERANGE);
	else
		fuse_reply_buf(req, value, len);
}

static void op_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size)
{
	struct qv_fs *fs = fs_of(req);
	struct qv_node *n = qv_mount_get(fs->m, ino);
	struct qv_buf b = { 0 };
	int rc = n ? qv_mount_xattr(fs->m, n, name, &b) : -ENOENT;

	if (rc)
		fuse_reply_err(req, -rc);
	else
		reply_xattr(req, b.p ? b.p : "", b.len, qv_mount_xattr_max(fs->m, n, name), size);
	qv_buf_free(&b);
	put(fs, n);
}

static void op_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
	struct qv_fs *fs = fs_of(req);
	struct qv_node *n = qv_mount_get(fs->m, ino);
	struct qv_buf b = { 0 };
	int rc = n ? qv_mount_xattr_names(fs->m, n, &b) : -ENOENT;

	if (rc)
		fuse_reply_err(req, -rc);
	else
		reply_xattr(req, b.p ? b.p : "", b.len, 0, size);
	qv_buf_free(&b);
	put(fs, n);
}

/* True when the caller of req is in group gid (its own or a supplementary one). */
static bool in_group(fuse_req_t req, gid_t gid)
{
	gid_t small[64], *list = small;
	bool found = false;
	int n;

	if (fuse_req_ctx(req)->gid == gid)
		return true;
	n = fuse_req_getgroups(req, 64, small); /* reads /proc: only when the gid is not it */
	if (n > 64 && (list = malloc((size_t)n * sizeof(*list))))
		n = fuse_req_getgroups(req, n, list);
	for (int i = 0; i < n && list && !found; i++)
		found = list[i] == gid;
	if (list != small)
		free(list);
	return found;
}

/* What the kernel's default_permissions check decides for the caller of req (only asked
 * without that option): the class of the caller picks the bits; root reads everything and
 * executes what anyone may; writes are refused (read-only). */
static int may_access(fuse_req_t req, const struct qv_node *n, int mask)
{
	const struct fuse_ctx *c = fuse_req_ctx(req);
	unsigned want = (mask & R_OK ? 4u : 0) | (mask & X_OK ? 1u : 0), have;

	if (mask & W_OK)
		return -EROFS;
	if (c->uid == 0)
		return (mask & X_OK) && !n->dir && !(n->mode & 0111) ? -EACCES : 0;
	if (c->uid == n->uid)
		have = (n->mode >> 6) & 7;
	else if (in_group(req, n->gid))
		have = (n->mode >> 3) & 7;
	else
		have = n->mode & 7;
	return (have & want) == want ? 0 : -EACCES;
}

static void op_access(fuse_req_t req, fuse_ino_t ino, int mask)
{
	struct qv_fs *fs = fs_of(req);
	struct qv_node *n = qv_mount_get(fs->m, ino);

	fuse_reply_err(req, n ? -may_access(req, n, mask) : ENOENT);
	put(fs, n);
}

/* Every mutating call: the view is read-only by contract. */
static void erofs(fuse_req_t req)
{
	fuse_reply_err(req, EROFS);
}

static void op_setattr(fuse_req_t r, fuse_ino_t i, struct stat *a, int s, struct fuse_file_info *f)
{
	(void)i, (void)a, (void)s, (void)f;
	erofs(r);
}
static void op_mknod(fuse_req_t r, fuse_ino_t p, const char *n, mode_t m, dev_t d)
{
	(void)p, (void)n, (void)m, (void)d;
	erofs(r);
}
static void op_mkdir(fuse_req_t r, fuse_ino_t p, const char *n, mode_t m)
{
	(void)p, (void)n, (void)m;
	erofs(r);
}
static void op_unlink(fuse_req_t r, fuse_ino_t p, const char *n)
{
	(void)p, (void)n;
	erofs(r);
}
static void op_symlink(fuse_req_t r, const char *l, fuse_ino_t p, const char *n)
{
	(void)l, (void)p, (void)n;
	erofs(r);
}
static void op_rename(fuse_req_t r, fuse_ino_t p, const char *n, fuse_ino_t np, const char *nn,
		      unsigned int f)
{
	(void)p, (void)n, (void)np, (void)nn, (void)f;
	erofs(r);
}
static void op_link(fuse_req_t r, fuse_ino_t i, fuse_ino_t np, const char *nn)
{
	(void)i, (void)np, (void)nn;
	erofs(r);
}
static void op_write(fuse_req_t r, fuse_ino_t i, const char *b, size_t s, off_t o,
		     struct fuse_file_info *f)
{
	(void)i, (void)b, (void)s, (void)o, (void)f;
	erofs(r);
}
static void op_create(fuse_req_t r, fuse_ino_t p, const char *n, mode_t m, struct fuse_file_info *f)
{
	(void)p, (void)n, (void)m, (void)f;
	erofs(r);
}
static void op_setxattr(fuse_req_t r, fuse_ino_t i, const char *n, const char *v, size_t s, int f)
{
	(void)i, (void)n, (void)v, (void)s, (void)f;
	erofs(r);
}
static void op_removexattr(fuse_req_t r, fuse_ino_t i, const char *n)
{
	(void)i, (void)n;
	erofs(r);
}
static void op_fallocate(fuse_req_t r, fuse_ino_t i, int m, off_t o, off_t l,
			 struct fuse_file_info *f)
{
	(void)i, (void)m, (void)o, (void)l, (void)f;
	erofs(r);
}

static const struct fuse_lowlevel_ops ops = {
	.init = op_init,
	.lookup = op_lookup,
	.forget = op_forget,
	.forget_multi = op_forget_multi,
	.getattr = op_getattr,
	.setattr = op_setattr,
	.mknod = op_mknod,
	.mkdir = op_mkdir,
	.unlink = op_unlink,
	.rmdir = op_unlink,
	.symlink = op_symlink,
	.rename = op_rename,
	.link = op_link,
	.open = op_open,
	.read = op_read,
	.write = op_write,
	.release = op_release,
	.opendir = op_opendir,
	.readdir = op_readdir,
	.readdirplus = op_readdirplus,
	.statfs = op_statfs,
	.setxattr = op_setxattr,
	.getxattr = op_getxattr,
	.listxattr = op_listxattr,
	.removexattr = op_removexattr,
	.access = op_access,
	.create = op_create,
	.fallocate = op_fallocate,
};

/* Drop the kernel's entries for every name of folder top, so lookups reach the new tree
 * (after a rescan: the cached negative entries of the new root). */
static void inval_names(struct qv_fs *fs, struct fuse_session *se, const struct qv_node *top)
{
	for (size_t i = 0; top && i < top->nkids; i++) {
		const struct qv_node *n = qv_tree_node(&fs->m->tree, top->kids[i]);

		if (n)
			fuse_lowlevel_notify_inval_entry(se, FUSE_ROOT_ID, n->name, strlen(n->name));
	}
}

/* Drop every entry the kernel may hold of old root top's generation, at every folder level,
 * deepest first: an entry in use (an open file, a working folder) is then unhashed, so the
 * kernel forgets it, and the generation is freed, as soon as it is closed. Only the root's
 * names would leave the entries below them cached for a day behind their open files. */
static void inval_generation(struct qv_fs *fs, struct fuse_session *se, const struct qv_node *top)
{
	struct qv_buf b = { 0 };
	uint64_t dir;

	if (qv_mount_names(fs->m, top, &b)) {
		qv_log("rescan: out of memory listing the old view's names; the kernel forgets "
		       "those below the root only when it needs the memory");
		inval_names(fs, se, top);
	}
	for (size_t at = 0; at < b.len;) {
		const char *name = b.p + at + sizeof(dir);
		size_t len = strlen(name);

		memcpy(&dir, b.p + at, sizeof(dir));
		/* -ENOENT for the many the kernel never looked up: nothing to drop */
		fuse_lowlevel_notify_inval_entry(se, dir, name, len);
		at += sizeof(dir) + len + 1;
	}
	qv_buf_free(&b);
}

int qv_fs_rescan(struct qv_fs *fs, struct fuse_session *se)
{
	struct qv_node *old = qv_mount_get(fs->m, FUSE_ROOT_ID), *now; /* held while its names go */
	char err[QV_ERRLEN];
	int rc = qv_mount_rescan(fs->m, err, sizeof(err));

	if (rc) {
		qv_log("rescan failed, the view stays as it was: %s", err);
	} else {
		inval_generation(fs, se, old);
		now = qv_mount_get(fs->m, FUSE_ROOT_ID);
		inval_names(fs, se, now); /* cached negative entries */
		put(fs, now);
		fuse_lowlevel_notify_inval_inode(se, FUSE_ROOT_ID, 0, 0);
		qv_log("rescanned the source: the view shows it as it is now");
	}
	put(fs, old);
	return rc;
}

const struct fuse_lowlevel_ops *qv_fs_ops(void)
{
	return &ops;
}

int qv_fs_init(struct qv_fs *fs, struct qv_mount *m)
{
	/* "open=N,entry=N,slow_lookup=MS" (tests) */
	const char *f = getenv("QVLMOEFS_TEST_FAIL_REPLIES");
	const char *at;

	memset(fs, 0, sizeof(*fs));
	fs->m = m;
	if (f && (at = strstr(f, "open=")))
		atomic_init(&fs->fail_open, atoi(at + 5));
	if (f && (at = strstr(f, "entry=")))
		atomic_init(&fs->fail_entry, atoi(at + 6));
	if (f && (at = strstr(f, "slow_lookup=")))
		fs->slow_lookup_ms = atoi(at + 12);
	return -pthread_key_create(&fs->tkey, thread_free);
}

void qv_fs_fini(struct qv_fs *fs)
{
	struct qv_thread *t = pthread_getspecific(fs->tkey);

	if (t) /* the main thread served requests itself in single-threaded mode */
		thread_free(t);
	pthread_key_delete(fs->tkey);
}
