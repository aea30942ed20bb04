/* fs.c - the FUSE low-level handlers. Each one asks the FUSE-free core and replies exactly once;
 * mutations get EROFS. Sources are immutable while mounted, so the kernel may cache for long. */
#include "qv_fs.h"
#include "qv_perm.h"
#include "qv_util.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <time.h>

#define CACHE_TIMEOUT 86400.0
#define SPLICE_MIN (2u * 4096)

static struct qv_fs *fs_of(fuse_req_t req)
{
	return fuse_req_userdata(req);
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

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct qv_fs *fs = fs_of(req);
	struct qv_node *n, *d;
	struct fuse_entry_param e = { .entry_timeout = CACHE_TIMEOUT };
	int rc = qv_mount_lookup(fs->m, parent, name, &n, &d);

	if (!rc && fs->slow_lookup_ms) { /* tests: said first, so a test knows it is held */
		qv_log("test: lookup of %s held %d ms", name, fs->slow_lookup_ms);
		nanosleep(&(struct timespec){ fs->slow_lookup_ms / 1000,
					      fs->slow_lookup_ms % 1000 * 1000000L }, NULL);
	}
	if (rc) {
		fuse_reply_err(req, -rc);
	} else if (!n) { /* a generation never changes: a negative entry may be cached too */
		fuse_reply_entry(req, &e);
	} else {
		fill_entry(n, &e);
		if (reply_entry(fs, req, &e)) /* not taken: the lookup does not count */
			qv_mount_drop(fs->m, n, 1);
	}
	/* A rescan that replaced the answering generation while this lookup ran may have dropped
	 * the folder's entries before this one landed, which then holds the old generation for
	 * the entry's timeout (a negative one too, through its folder): drop it as well. The
	 * kernel takes the folder's lock for this, so it lands after the lookup's entry. */
	if (d && !qv_mount_current(fs->m, d) && fs->se)
		fuse_lowlevel_notify_inval_entry(fs->se, parent, name, strlen(name));
	put(fs, d);
}

static void op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
	qv_mount_forget(fs_of(req)->m, ino, nlookup);
	fuse_reply_none(req);
}

static void op_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets)
{
	for (size_t i = 0; i < count; i++)
		qv_mount_forget(fs_of(req)->m, forgets[i].ino, forgets[i].nlookup);
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
	int rc = qv_mount_dir(fs->m, ino, &d);

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
		const char *name;
		struct qv_node *n = qv_mount_entry(fs->m, d, i, &name);
		struct fuse_entry_param e;
		bool counts = plus && i >= 2 && current;
		size_t len;

		if (!n)
			continue;
		fill_entry(n, &e);
		if (counts)
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
		*counted += counts;
	}
}

static void do_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, bool plus)
{
	struct qv_fs *fs = fs_of(req);
	struct qv_node *d;
	char *buf = NULL;
	size_t used = 0;
	uint64_t counted = 0;
	int rc = qv_mount_dir(fs->m, ino, &d);

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

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct qv_fs *fs = fs_of(req);
	struct qv_node *n = qv_mount_get(fs->m, ino);
	bool dyn;
	int rc = n ? qv_mount_open(fs->m, n, fi->flags, &fi->fh, &dyn) : -ENOENT;

	if (rc) {
		fuse_reply_err(req, -rc);
	} else {
		/* a .qvlmoefs/ file's size (0 in getattr, like /proc) says nothing: direct_io */
		fi->keep_cache = !dyn;
		fi->direct_io = dyn || fs->direct_io;
		/* no release comes for an open whose reply was not taken: give back what it took */
		if (reply_open(fs, req, fi))
			qv_mount_release(fs->m, ino, fi->fh);
	}
	put(fs, n);
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		    struct fuse_file_info *fi)
{
	struct qv_fs *fs = fs_of(req);
	struct fuse_bufvec bv = FUSE_BUFVEC_INIT(0);
	struct qv_reply r;
	/* below two pages libfuse copies a spliced reply anyway, through a buffer of its own */
	int rc = qv_mount_reply(fs->m, ino, (const struct qv_buf *)(uintptr_t)fi->fh,
				(uint64_t)off, size, fs->splice && size >= SPLICE_MIN, &r);

	if (rc) {
		fuse_reply_err(req, -rc); /* EIO, never a short reply before EOF */
	} else if (r.fd < 0) {
		fuse_reply_buf(req, r.p, r.len);
	} else {
		bv.buf[0].size = r.len;
		bv.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_RETRY;
		bv.buf[0].fd = r.fd;
		/* libfuse moves the pipe's pages on to /dev/fuse after the reply header (its
		 * FUSE_CAP_SPLICE_WRITE path), or reads them back and writes them when it cannot */
		if (fuse_reply_data(req, &bv, 0))
			qv_mount_unsent(fs->m);
	}
	qv_mount_done(fs->m); /* a reply made from a computed block is sent: the block is free */
	if (!rc)
		qv_mount_ahead(fs->m, ino, (uint64_t)off, size);
}

static void op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	qv_mount_release(fs_of(req)->m, ino, fi->fh);
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

/* A getxattr (name) or listxattr (name NULL) call: the value's size when asked (size 0), else
 * the bytes. A value that changes between calls answers size queries with a bound it never
 * exceeds, so the buffer a caller sizes by it always holds the value it fetches next. */
static void do_xattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size)
{
	struct qv_fs *fs = fs_of(req);
	struct qv_node *n = qv_mount_get(fs->m, ino);
	struct qv_buf b = { 0 };
	size_t max = n && name ? qv_mount_xattr_max(fs->m, n, name) : 0;
	int rc = !n ? -ENOENT : name ? qv_mount_xattr(fs->m, n, name, &b) :
					qv_mount_xattr_names(fs->m, n, &b);

	if (rc)
		fuse_reply_err(req, -rc);
	else if (size == 0)
		fuse_reply_xattr(req, b.len > max ? b.len : max);
	else if (size < b.len)
		fuse_reply_err(req, ERANGE);
	else
		fuse_reply_buf(req, b.p ? b.p : "", b.len);
	qv_buf_free(&b);
	put(fs, n);
}

static void op_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size)
{
	do_xattr(req, ino, name, size);
}

static void op_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
	do_xattr(req, ino, NULL, size);
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

static void op_access(fuse_req_t req, fuse_ino_t ino, int mask)
{
	struct qv_fs *fs = fs_of(req);
	struct qv_node *n = qv_mount_get(fs->m, ino);
	const struct fuse_ctx *c = fuse_req_ctx(req);

	/* only asked without default_permissions; the group list is read only when it matters */
	fuse_reply_err(req, !n ? ENOENT :
			    -qv_perm_access(n->uid, n->mode, n->dir, c->uid,
					    c->uid && c->uid != n->uid && in_group(req, n->gid),
					    mask));
	put(fs, n);
}

/* Every mutating call: the view is read-only by contract. The mount is read-only too, so
 * these answer only after a remount made it writable; their arguments are unused on purpose. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-parameter"
static void op_setattr(fuse_req_t r, fuse_ino_t i, struct stat *a, int s, struct fuse_file_info *f)
{ fuse_reply_err(r, EROFS); }
static void op_mknod(fuse_req_t r, fuse_ino_t p, const char *n, mode_t m, dev_t d)
{ fuse_reply_err(r, EROFS); }
static void op_mkdir(fuse_req_t r, fuse_ino_t p, const char *n, mode_t m)
{ fuse_reply_err(r, EROFS); }
static void op_unlink(fuse_req_t r, fuse_ino_t p, const char *n)
{ fuse_reply_err(r, EROFS); }
static void op_symlink(fuse_req_t r, const char *l, fuse_ino_t p, const char *n)
{ fuse_reply_err(r, EROFS); }
static void op_rename(fuse_req_t r, fuse_ino_t p, const char *n, fuse_ino_t np, const char *nn,
		      unsigned int f)
{ fuse_reply_err(r, EROFS); }
static void op_link(fuse_req_t r, fuse_ino_t i, fuse_ino_t np, const char *nn)
{ fuse_reply_err(r, EROFS); }
static void op_write(fuse_req_t r, fuse_ino_t i, const char *b, size_t s, off_t o,
		     struct fuse_file_info *f)
{ fuse_reply_err(r, EROFS); }
static void op_create(fuse_req_t r, fuse_ino_t p, const char *n, mode_t m, struct fuse_file_info *f)
{ fuse_reply_err(r, EROFS); }
static void op_setxattr(fuse_req_t r, fuse_ino_t i, const char *n, const char *v, size_t s, int f)
{ fuse_reply_err(r, EROFS); }
static void op_removexattr(fuse_req_t r, fuse_ino_t i, const char *n)
{ fuse_reply_err(r, EROFS); }
static void op_fallocate(fuse_req_t r, fuse_ino_t i, int m, off_t o, off_t l,
			 struct fuse_file_info *f)
{ fuse_reply_err(r, EROFS); }
#pragma GCC diagnostic pop

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

const struct fuse_lowlevel_ops *qv_fs_ops(void)
{
	return &ops;
}

int qv_fs_init(struct qv_fs *fs, struct qv_mount *m, const struct qv_glue_opts *g)
{
	memset(fs, 0, sizeof(*fs));
	fs->m = m;
	fs->direct_io = g->direct_io;
	fs->splice = g->splice;
	fs->max_read = g->max_read;
	atomic_init(&fs->fail_open, g->fail_open);
	atomic_init(&fs->fail_entry, g->fail_entry);
	fs->slow_lookup_ms = g->slow_lookup_ms;
	return 0;
}
