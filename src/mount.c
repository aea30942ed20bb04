/* mount.c - the mount context: load every generation of the source, have the views built into
 * its tree (lazily for rank folders and .qvlmoefs/), serve opens and reads. */
#include "qv_mount.h"
#include "qv_inspect.h"
#include "qv_util.h"
#include "qv_view.h"
#include "qv_view_dcp.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

static int folder_name(const struct qv_mount *m, const struct qv_plan_opts *po, char *buf,
		       size_t len)
{
	if (m->o.gen.shard_size > 1 && !m->o.gen.shard_rank_set)
		return snprintf(buf, len, "ep-rank-%u-shard-%u", po->ep_rank, po->shard_rank);
	return snprintf(buf, len, "ep-rank-%u", po->ep_rank);
}

/* A view's root folder dn in tree t: the source tree converted, and a sharded save's
 * consolidation. */
static int build_root(struct qv_tree *t, struct qv_gen *g, const struct qv_plan *p,
		      struct qv_node *dn, char *err, size_t errlen)
{
	int rc = qv_view_build(t, g, p, 0, dn, err, errlen);

	return !rc && g->sharded ? qv_view_dcp(t, g, p, dn, err, errlen) : rc;
}

/* Build plan p's view into a scratch tree and drop it. Only the expert cuts differ between
 * rank folders (checked per plan by qv_view_validate); whatever else would fail a folder's first
 * use (a header, an index, two tensors for one key) fails here for all of them. */
static int dry_build(struct qv_gen *g, const struct qv_plan *p, char *err, size_t errlen)
{
	struct qv_tree t;
	struct qv_node *dn;
	int rc = qv_tree_init(&t);

	dn = rc ? NULL : qv_tree_new(&t, "", 0, true, &g->scan.n[0].st.st_mtim);
	if (!dn) {
		qv_tree_fini(&t);
		return qv_err(err, errlen, -ENOMEM, "out of memory");
	}
	dn->gen = g;
	rc = build_root(&t, g, p, dn, err, errlen);
	qv_tree_fini(&t);
	return rc;
}

/* One folder per rank (and shard) at the root, each built on first use. */
static int make_rank_folders(struct qv_mount *m, struct qv_gen *g, struct qv_node *root,
			     char *err, size_t errlen)
{
	int rc;

	/* the folders are built on first use: what would fail one must stop the mount now
	 * (g->shared is not made yet, so the scratch build has the plain layout; its checks are
	 * those of -o ep_shared's too) */
	rc = qv_view_validate(g, g->plans, g->nplans, err, errlen);
	if (!rc)
		rc = dry_build(g, &g->plans[0], err, errlen);
	if (!rc && g->sharded)
		rc = qv_view_dcp_check(g, err, errlen);
	if (!rc && m->o.ep_shared && g->sharded)
		rc = qv_err(err, errlen, -EINVAL, "%s: -o ep_shared: a sharded save is shown "
			    "consolidated, and its rank folders cannot share files yet", m->source);
	/* built once, before the folders that list them (with plan 0: the dense part is alike
	 * under every rank's plan) */
	if (!rc && m->o.ep_shared)
		rc = qv_view_shared(&m->tree, g, &g->plans[0], root, (uint32_t)g->nplans, err,
				    errlen);
	for (size_t i = 0; !rc && i < g->nplans; i++) {
		char name[64];
		struct qv_node *n;

		folder_name(m, &g->plans[i].o, name, sizeof(name));
		n = qv_tree_add(&m->tree, root, name, true, &root->mtime);
		rc = n ? 0 : -ENOMEM;
		if (!rc) {
			n->lazy = (int32_t)i;
			n->gen = g;
		}
	}
	if (rc == -ENOMEM)
		qv_err(err, errlen, rc, "out of memory");
	if (!rc)
		qv_tree_sort(&m->tree, root);
	return rc;
}

/* Build generation g's root folder top (pending): the view or the rank folders, and .qvlmoefs. */
static int build_top(struct qv_mount *m, struct qv_gen *g, struct qv_node *top, char *err,
		     size_t errlen)
{
	int rc;

	top->ino = top->parent = 1;
	top->gen = g;
	/* the source folder's, narrowed by the folders above it (the scan's vmode) */
	qv_tree_perm_set(top, g->scan.n[0].st.st_uid, g->scan.n[0].st.st_gid, g->scan.n[0].vmode);
	rc = qv_gen_multi(&m->o.gen) ? make_rank_folders(m, g, top, err, errlen) :
				       build_root(&m->tree, g, &g->plans[0], top, err, errlen);
	if (!rc)
		rc = qv_inspect_folder(&m->tree, g, qv_gen_multi(&m->o.gen) ? NULL : &g->plans[0],
				       top, err, errlen);
	return rc;
}

/* Load a generation, build its root folder and make it the newest (the root gets inode 1
 * whatever its slot); the generation it replaces into *old. Caller holds m->lock. */
static int load_view(struct qv_mount *m, struct qv_gen **old, char *err, size_t errlen)
{
	struct qv_gen *g = calloc(1, sizeof(*g));
	struct qv_node *top = NULL;
	int rc;

	if (!g)
		return qv_err(err, errlen, -ENOMEM, "out of memory");
	rc = qv_gen_load(g, m->source, &m->o.gen, err, errlen);
	if (!rc && !(top = qv_tree_new(&m->tree, "", 0, true, &g->scan.n[0].st.st_mtim)))
		rc = qv_err(err, errlen, -ENOMEM, "out of memory");
	if (!rc)
		rc = build_top(m, g, top, err, errlen);
	if (rc) { /* nothing of a failed build stays: the old view is untouched */
		qv_tree_abort(&m->tree);
		qv_gen_free(g);
		free(g);
		return rc;
	}
	qv_tree_commit(&m->tree);
	atomic_init(&g->refs, 1); /* the newest generation's own hold */
	g->prev = m->gen;
	m->gen = g;
	atomic_store(&m->newest, g);
	atomic_fetch_add(&m->ngens, 1);
	pthread_mutex_lock(&m->root_lock);
	top = atomic_exchange(&m->tree.top, top);
	pthread_mutex_unlock(&m->root_lock);
	*old = top ? top->gen : NULL;
	return 0;
}

/* Free generation g, which nothing holds any more: its nodes, sources and plans. */
static void gen_free(struct qv_mount *m, struct qv_gen *g)
{
	pthread_mutex_lock(&m->lock);
	qv_tree_free_owned(&m->tree, g);
	for (struct qv_gen **pp = &m->gen; *pp; pp = &(*pp)->prev)
		if (*pp == g) {
			*pp = g->prev;
			break;
		}
	pthread_mutex_unlock(&m->lock);
	atomic_fetch_sub(&m->ngens, 1);
	qv_gen_free(g);
	free(g);
}

static void gen_drop(struct qv_mount *m, struct qv_gen *g, uint64_t count)
{
	/* acq_rel: whoever frees sees every other holder's last use of the generation */
	if (atomic_fetch_sub_explicit(&g->refs, count, memory_order_acq_rel) == count)
		gen_free(m, g);
}

struct qv_node *qv_mount_get(struct qv_mount *m, uint64_t ino)
{
	struct qv_node *n;

	if (ino != 1) {
		n = qv_tree_node(&m->tree, ino);
		if (n)
			atomic_fetch_add(&n->gen->refs, 1);
		return n;
	}
	/* the newest root holds its generation until a rescan swaps it under this lock */
	pthread_mutex_lock(&m->root_lock);
	n = atomic_load(&m->tree.top);
	if (n)
		atomic_fetch_add(&n->gen->refs, 1);
	pthread_mutex_unlock(&m->root_lock);
	return n;
}

void qv_mount_hold(struct qv_mount *m, struct qv_node *n, uint64_t count)
{
	(void)m;
	atomic_fetch_add(&n->gen->refs, count);
}

void qv_mount_drop(struct qv_mount *m, struct qv_node *n, uint64_t count)
{
	gen_drop(m, n->gen, count);
}

/* A daemon holds a descriptor per safetensors source of each generation still in use, so it
 * may use what the administrator allows (the hard limit), not the shell's default soft one. */
static void raise_nofile(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
}

/* Bytes served per rank folder, and for the files every folder lists (-o ep_shared). The
 * folders are the same in every generation (they follow from the options alone). */
static int folder_counters(struct qv_mount *m, char *err, size_t errlen)
{
	m->nfolders = m->gen->nplans;
	m->folder_names = calloc(m->nfolders, sizeof(*m->folder_names));
	m->folder_bytes = calloc(m->nfolders + 1, sizeof(*m->folder_bytes));
	if (!m->folder_names || !m->folder_bytes)
		return qv_err(err, errlen, -ENOMEM, "out of memory");
	for (size_t i = 0; i < m->nfolders; i++)
		folder_name(m, &m->gen->plans[i].o, m->folder_names[i], sizeof(m->folder_names[i]));
	return 0;
}

/* The calling thread's reader, made on its first read (with the mount's io settings) and freed
 * when the thread ends; NULL when out of memory or io could not be set up (*rc says). */
static struct qv_reader *reader_of(struct qv_mount *m, int *rc)
{
	struct qv_reader *r = pthread_getspecific(m->reader_key);

	*rc = 0;
	if (r)
		return r;
	*rc = qv_reader_new(&m->o.io, &r);
	if (!*rc) {
		r->sc.xc = m->xc;
		r->sc.skip_compute = m->o.skip_compute;
	}
	if (!*rc && pthread_setspecific(m->reader_key, r)) {
		qv_reader_free(r);
		*rc = -ENOMEM;
	}
	return *rc ? NULL : r;
}

static void reader_free(void *r)
{
	qv_reader_free(r);
}

int qv_mount_init(struct qv_mount *m, const char *src, const struct qv_mount_opts *o, char *err,
		  size_t errlen)
{
	struct qv_gen *old;
	int rc;

	memset(m, 0, sizeof(*m));
	m->o = *o;
	err[0] = '\0';
	clock_gettime(CLOCK_MONOTONIC, &m->stats.start);
	pthread_mutex_init(&m->lock, NULL);
	pthread_mutex_init(&m->root_lock, NULL);
	if (pthread_key_create(&m->reader_key, reader_free))
		return qv_err(err, errlen, -EAGAIN, "no thread-specific key left");
	m->reader_key_made = true;
	raise_nofile();
	if (qv_xcache_new(QV_MOUNT_XCACHE_BYTES, &m->xc) || qv_tree_init(&m->tree))
		return qv_err(err, errlen, -ENOMEM, "out of memory");
	/* absolute, since the daemon's working folder changes when it detaches */
	m->source = realpath(src, NULL);
	if (!m->source)
		return qv_err(err, errlen, -errno, "%s: %s", src, strerror(errno));
	pthread_mutex_lock(&m->lock);
	rc = load_view(m, &old, err, errlen);
	pthread_mutex_unlock(&m->lock);
	if (!rc && qv_gen_multi(&m->o.gen))
		rc = folder_counters(m, err, errlen);
	return rc;
}

bool qv_mount_current(struct qv_mount *m, const struct qv_node *n)
{
	return n->gen == atomic_load(&m->newest);
}

/* Records of folder d's entries into out, each folder's own entries first (see
 * qv_mount_names); caller holds m->lock, so no lazy build changes an entry list meanwhile. */
static int names_of(struct qv_mount *m, const struct qv_node *d, struct qv_buf *out)
{
	int rc = 0;

	/* the recursion is as deep as the source's folders nest (the scan bounds that) */
	for (size_t i = 0; !rc && i < d->nkids; i++) {
		const struct qv_node *k = qv_tree_node(&m->tree, d->kids[i]);

		if (!k)
			continue;
		if (k->dir && k->up == d)
			rc = names_of(m, k, out);
		if (!rc)
			rc = qv_buf_add(out, &d->ino, sizeof(d->ino));
		if (!rc)
			rc = qv_buf_add(out, k->name, strlen(k->name) + 1);
	}
	return rc;
}

int qv_mount_names(struct qv_mount *m, const struct qv_node *top, struct qv_buf *out)
{
	int rc;

	pthread_mutex_lock(&m->lock);
	rc = names_of(m, top, out);
	pthread_mutex_unlock(&m->lock);
	return rc;
}

int qv_mount_rescan(struct qv_mount *m, char *err, size_t errlen)
{
	struct qv_gen *old = NULL;
	int rc;

	err[0] = '\0';
	pthread_mutex_lock(&m->lock);
	rc = load_view(m, &old, err, errlen);
	pthread_mutex_unlock(&m->lock);
	if (old) /* no longer the newest: freed now, or when its last open file or lookup goes */
		gen_drop(m, old, 1);
	return rc;
}

int qv_mount_dir(struct qv_mount *m, uint64_t ino, struct qv_node **out)
{
	struct qv_node *d = *out = qv_mount_get(m, ino);

	if (!d)
		return -ENOENT;
	if (!d->dir)
		return -ENOTDIR;
	return qv_mount_ready(m, d);
}

int qv_mount_lookup(struct qv_mount *m, uint64_t parent, const char *name, struct qv_node **out,
		    struct qv_node **dir)
{
	struct qv_node *d;
	int rc = qv_mount_dir(m, parent, &d);

	*out = *dir = NULL;
	/* A folder of a generation a rescan has replaced gives the kernel no entry at all (any
	 * entry, even one with no timeout, would stay cached and hold the old generation): a
	 * path walk that met it starts again from the root, where the new generation answers.
	 * A lookup in flight during a rescan holds its folder's inode lock, which the rescan's
	 * invalidation of that folder's names waits for: what it caches is dropped at once; and
	 * fs drops, after its reply, the entry of a lookup whose folder a rescan replaced while
	 * it ran (*dir says which folder answered). */
	if (!rc && !qv_mount_current(m, d))
		rc = -ESTALE;
	if (!rc && (*out = qv_tree_lookup(&m->tree, d, name)))
		qv_mount_hold(m, *out, 1);
	if (!rc)
		*dir = d;
	else if (d)
		qv_mount_drop(m, d, 1);
	return rc;
}

void qv_mount_forget(struct qv_mount *m, uint64_t ino, uint64_t nlookup)
{
	struct qv_node *n = ino == 1 ? NULL : qv_tree_node(&m->tree, ino);

	if (n)
		qv_mount_drop(m, n, nlookup);
}

struct qv_node *qv_mount_entry(struct qv_mount *m, const struct qv_node *d, size_t i,
			       const char **name)
{
	struct qv_node *n = i == 0 ? (struct qv_node *)d :
			    qv_tree_node(&m->tree, i == 1 ? d->parent : d->kids[i - 2]);

	*name = i == 0 ? "." : i == 1 ? ".." : n ? n->name : NULL;
	/* .qvlmoefs/ is found by name, not listed (unless asked): walkers see each byte once */
	return n && (i < 2 || !n->inspect || m->o.inspect_visible) ? n : NULL;
}

/* Fill lazy folder dir (a rank's view, or .qvlmoefs/); caller holds m->lock. */
static int fill(struct qv_mount *m, struct qv_node *dir, char *err, size_t errlen)
{
	int rc;

	if (dir->inspect)
		return qv_inspect_fill(&m->tree, &m->o.gen, m->o.io.backend, m->o.gpu_json != NULL,
				       dir, err, errlen);
	rc = build_root(&m->tree, dir->gen, &dir->gen->plans[dir->lazy], dir, err, errlen);
	if (!rc)
		rc = qv_inspect_folder(&m->tree, dir->gen, &dir->gen->plans[dir->lazy], dir, err,
				       errlen);
	return rc;
}

int qv_mount_ready(struct qv_mount *m, struct qv_node *dir)
{
	char err[QV_ERRLEN] = "";
	int rc = 0;

	if ((dir->lazy < 0 && !dir->inspect) ||
	    atomic_load_explicit(&dir->ready, memory_order_acquire))
		return 0;
	pthread_mutex_lock(&m->lock);
	if (!atomic_load(&dir->ready)) {
		rc = fill(m, dir, err, sizeof(err));
		if (rc) {
			qv_log("%s: %s", dir->inspect ? QV_HIDDEN : dir->name, err);
			/* nothing of the failed build stays, so a later call starts from scratch */
			qv_tree_abort(&m->tree);
			free(dir->kids);
			dir->kids = NULL;
			dir->nkids = 0;
		} else {
			qv_tree_commit(&m->tree); /* the entries are complete: publish, then say so */
			atomic_store_explicit(&dir->ready, true, memory_order_release);
		}
	}
	pthread_mutex_unlock(&m->lock);
	return rc ? -EIO : 0;
}

void qv_mount_fini(struct qv_mount *m)
{
	if (m->reader_key_made) { /* workers' readers went with them; this thread's goes now */
		qv_reader_free(pthread_getspecific(m->reader_key));
		pthread_key_delete(m->reader_key);
	}
	qv_tree_fini(&m->tree);
	qv_xcache_free(m->xc);
	while (m->gen) {
		struct qv_gen *g = m->gen;

		m->gen = g->prev;
		qv_gen_free(g);
		free(g);
	}
	free(m->source);
	free(m->folder_names);
	free(m->folder_bytes);
	pthread_mutex_destroy(&m->lock);
	pthread_mutex_destroy(&m->root_lock);
	memset(m, 0, sizeof(*m));
}

int qv_mount_open_file(struct qv_mount *m, struct qv_node *n)
{
	for (size_t i = 0; i < n->vf.nsrcs; i++) {
		/* checks the source is unchanged, and opens it now, so running out of descriptors
		 * fails open(), not a read */
		int rc = qv_source_get(&n->vf.base[n->vf.srcs[i]]);

		if (rc) {
			while (i--)
				qv_source_put(&n->vf.base[n->vf.srcs[i]]);
			atomic_fetch_add(&m->stats.errors, 1);
			return rc;
		}
	}
	atomic_fetch_add(&m->stats.opens, 1);
	qv_mount_hold(m, n, 1);
	return 0;
}

void qv_mount_release_file(struct qv_mount *m, struct qv_node *n)
{
	for (size_t i = 0; i < n->vf.nsrcs; i++)
		qv_source_put(&n->vf.base[n->vf.srcs[i]]);
	/* counted after the puts: open_files 0 in the stats means no source is held by a file */
	atomic_fetch_add(&m->stats.releases, 1);
	qv_mount_drop(m, n, 1);
}

int qv_mount_open(struct qv_mount *m, struct qv_node *n, int flags, uint64_t *fh, bool *dyn)
{
	struct qv_buf *b;
	int rc;

	*fh = 0;
	*dyn = false;
	if (n->dir)
		return -EISDIR;
	if ((flags & O_ACCMODE) != O_RDONLY || (flags & O_TRUNC))
		return -EROFS;
	if (!n->dyn)
		return qv_mount_open_file(m, n);
	b = calloc(1, sizeof(*b));
	rc = b ? qv_mount_dyn_content(m, n, b) : -ENOMEM;
	if (rc) {
		if (b)
			qv_buf_free(b);
		free(b);
		return rc;
	}
	*fh = (uint64_t)(uintptr_t)b;
	*dyn = true;
	return 0;
}

void qv_mount_release(struct qv_mount *m, uint64_t ino, uint64_t fh)
{
	struct qv_node *n = qv_tree_node(&m->tree, ino);
	struct qv_buf *b = (struct qv_buf *)(uintptr_t)fh;

	if (n && n->dyn) {
		qv_buf_free(b);
		free(b);
	} else if (n && !n->dir) {
		qv_mount_release_file(m, n);
	}
}

/* A request of node n served: got bytes, from_src of them from sources, counted in by (the
 * backend's counter). */
static void count_served(struct qv_mount *m, const struct qv_node *n, size_t got,
			 uint64_t from_src, atomic_uint_least64_t *by)
{
	atomic_fetch_add(&m->stats.bytes_served, got);
	if (m->folder_bytes && n->folder >= 0 && (size_t)n->folder < m->nfolders)
		atomic_fetch_add(&m->folder_bytes[n->folder], got);
	else if (m->folder_bytes && n->nlink)
		atomic_fetch_add(&m->folder_bytes[m->nfolders], got);
	atomic_fetch_add(&m->stats.bytes_src, from_src);
	atomic_fetch_add(by, from_src);
}

/* A .qvlmoefs/ file's read: from the bytes made when it was opened (dyn), copied into the
 * thread's buffer, since the file's release (on another thread) may free them as soon as the
 * kernel has the reply. Not counted: its bytes repeat others'. */
static int reply_dyn(struct qv_reader *r, const struct qv_buf *dyn, uint64_t off, size_t len,
		     struct qv_reply *rep)
{
	size_t o = off < dyn->len ? (size_t)off : dyn->len;
	size_t n = len < dyn->len - o ? len : dyn->len - o;
	int rc = qv_reader_reserve(r, n);

	if (rc)
		return rc;
	if (n)
		memcpy(r->out.p, dyn->p + o, n);
	*rep = (struct qv_reply){ .p = r->out.p, .fd = -1, .len = n };
	return 0;
}

int qv_mount_reply(struct qv_mount *m, uint64_t ino, const struct qv_buf *dyn, uint64_t off,
		   size_t len, bool splice, struct qv_reply *rep)
{
	struct qv_node *n = qv_tree_node(&m->tree, ino);
	struct qv_reader *r;
	int rc;

	if (!n || n->dir)
		return n ? -EISDIR : -ENOENT;
	r = reader_of(m, &rc);
	if (r && n->dyn)
		return dyn ? reply_dyn(r, dyn, off, len, rep) : -EBADF;
	if (r)
		rc = qv_vfile_reply(&n->vf, n->vf.base, off, len, splice, r, rep);
	atomic_fetch_add(&m->stats.reads, 1);
	if (rc) {
		atomic_fetch_add(&m->stats.errors, 1);
		return rc;
	}
	count_served(m, n, rep->len, rep->from_src,
		     rep->backend == QV_REPLY_SPLICED ? &m->stats.bytes_spliced :
		     rep->backend == QV_IO_URING      ? &m->stats.bytes_uring :
							&m->stats.bytes_pread);
	return 0;
}

void qv_mount_done(struct qv_mount *m)
{
	struct qv_reader *r = pthread_getspecific(m->reader_key);

	if (r)
		qv_reader_done(r);
}

struct ahead_count {
	struct qv_mount *m;
	atomic_uint_least64_t *by; /* the reader's backend's counter */
};

static void count_ahead(void *arg, uint64_t from)
{
	struct ahead_count *a = arg;

	atomic_fetch_add(&a->m->stats.bytes_src, from);
	atomic_fetch_add(a->by, from);
}

void qv_mount_ahead(struct qv_mount *m, uint64_t ino, uint64_t off, size_t len)
{
	struct qv_node *n = qv_tree_node(&m->tree, ino);
	struct qv_reader *r = pthread_getspecific(m->reader_key);
	struct ahead_count a = { .m = m };

	if (!r || !n || n->dir || n->dyn || !n->vf.ncomps)
		return;
	a.by = qv_io_backend_of(r->io) == QV_IO_URING ? &m->stats.bytes_uring :
							 &m->stats.bytes_pread;
	/* an error is not this reply's: the request that needs the block makes it and reports */
	(void)qv_vfile_ahead(&n->vf, n->vf.base, off, len, r, count_ahead, &a);
}

void qv_mount_unsent(struct qv_mount *m)
{
	struct qv_reader *r = pthread_getspecific(m->reader_key);

	if (r)
		qv_reader_unsent(r);
}

int qv_mount_dyn_content(struct qv_mount *m, const struct qv_node *n, struct qv_buf *out)
{
	if (n->dyn == QV_DYN_STATS)
		return qv_mount_stats_json(m, out);
	if (n->dyn == QV_DYN_GPU && m->o.gpu_json)
		return m->o.gpu_json(m->o.gpu_arg, out);
	return -ENOENT;
}

enum { STATS_N = 14 };

/* The counters v (in the order of the names below) and the uptime as one line of JSON. Every
 * value is an integer, so a line of UINT64_MAX values is the longest there can be. */
static int stats_format(const struct qv_mount *m, bool max, struct qv_buf *out,
			const uint64_t v[STATS_N], uint64_t uptime_ms)
{
	int rc = qv_buf_printf(out,
			     "{\"requests\":%llu,\"bytes_served\":%llu,\"bytes_from_sources\":%llu,"
			     "\"bytes_from_sources_uring\":%llu,\"bytes_from_sources_pread\":%llu,"
			     "\"bytes_spliced\":%llu,"
			     "\"errors\":%llu,\"opens\":%llu,\"open_files\":%llu,\"nodes\":%llu,"
			     "\"generations\":%llu,\"blocks_computed\":%llu,"
			     "\"blocks_from_cache\":%llu,\"blocks_ahead\":%llu,\"uptime_s\":%llu.%03llu",
			     (unsigned long long)v[0], (unsigned long long)v[1],
			     (unsigned long long)v[2], (unsigned long long)v[3],
			     (unsigned long long)v[4], (unsigned long long)v[5],
			     (unsigned long long)v[6], (unsigned long long)v[7],
			     (unsigned long long)v[8], (unsigned long long)v[9],
			     (unsigned long long)v[10], (unsigned long long)v[11],
			     (unsigned long long)v[12], (unsigned long long)v[13],
			     (unsigned long long)(uptime_ms / 1000),
			     (unsigned long long)(uptime_ms % 1000));

	/* rank folders: the bytes each served ("shared": the files all of them list) */
	for (size_t i = 0; !rc && m->folder_bytes && i <= m->nfolders; i++)
		rc = qv_buf_printf(out, "%s\"%s\":%llu", i ? "," : ",\"bytes_served_by_folder\":{",
				   i < m->nfolders ? m->folder_names[i] : "shared",
				   (unsigned long long)(max ? UINT64_MAX :
							      atomic_load(&m->folder_bytes[i])));
	if (!rc && m->folder_bytes)
		rc = qv_buf_adds(out, "}");
	return rc ? rc : qv_buf_adds(out, "}\n");
}

int qv_mount_stats_json(struct qv_mount *m, struct qv_buf *out)
{
	struct qv_stats *s = &m->stats;
	struct timespec now;
	uint64_t opens = atomic_load(&s->opens), releases = atomic_load(&s->releases);
	uint64_t v[STATS_N] = { atomic_load(&s->reads),	      atomic_load(&s->bytes_served),
				atomic_load(&s->bytes_src),   atomic_load(&s->bytes_uring),
				atomic_load(&s->bytes_pread), atomic_load(&s->bytes_spliced),
				atomic_load(&s->errors),
				opens,			      opens > releases ? opens - releases : 0,
				qv_tree_count(&m->tree),      atomic_load(&m->ngens), 0, 0 };

	qv_xcache_counts(m->xc, &v[12], &v[11], &v[13]);
	clock_gettime(CLOCK_MONOTONIC, &now);
	return stats_format(m, false, out, v,
			    (uint64_t)(now.tv_sec - s->start.tv_sec) * 1000 +
				    (uint64_t)(now.tv_nsec / 1000000) -
				    (uint64_t)(s->start.tv_nsec / 1000000));
}

#define X_STATS "user.qvlmoefs.stats"

/* The daemon's counters hang off the root; the rest are the inspection module's. */
int qv_mount_xattr(struct qv_mount *m, const struct qv_node *n, const char *name,
		   struct qv_buf *out)
{
	if (n->ino == 1 && !strcmp(name, X_STATS))
		return qv_mount_stats_json(m, out);
	return qv_inspect_xattr(n, name, out);
}

size_t qv_mount_xattr_max(const struct qv_mount *m, const struct qv_node *n, const char *name)
{
	uint64_t v[STATS_N];
	struct qv_buf b = { 0 };
	size_t len;

	if (n->ino != 1 || strcmp(name, X_STATS))
		return 0; /* the other values are fixed once built */
	memset(v, 0xff, sizeof(v));
	len = stats_format(m, true, &b, v, UINT64_MAX) ? 4096 : b.len;
	qv_buf_free(&b);
	return len;
}

int qv_mount_xattr_names(struct qv_mount *m, const struct qv_node *n, struct qv_buf *out)
{
	int rc = n->ino == 1 ? qv_buf_add(out, X_STATS, sizeof(X_STATS)) : 0;

	(void)m;
	return rc ? rc : qv_inspect_xattr_names(n, out);
}
