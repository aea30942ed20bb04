/* mount.c - the mount context: parse every source at mount, own the node table, serve lookups
 * and reads. Views are built by view.c, lazily for multi-rank folders. */
#include "qv_mount.h"
#include "qv_util.h"
#include "qv_view.h"
#include "qv_inspect.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct qv_node *qv_mount_node(struct qv_mount *m, uint64_t ino)
{
	size_t i = ino - 1;

	if (ino == 1)
		return atomic_load(&m->top);
	if (ino == 0 || i >= atomic_load(&m->nnodes))
		return NULL;
	return &m->chunk[i >> QV_CHUNK_SHIFT][i & ((1u << QV_CHUNK_SHIFT) - 1)];
}

/* Pointers stay valid because chunks never move. */
struct qv_node *qv_mount_node_new(struct qv_mount *m, const char *name, uint64_t parent, bool dir,
				const struct timespec *mtime)
{
	size_t i = atomic_load(&m->nnodes), c = i >> QV_CHUNK_SHIFT;
	struct qv_node *n;

	if (c >= QV_MAX_CHUNKS)
		return NULL;
	if (!m->chunk[c]) {
		m->chunk[c] = calloc(1u << QV_CHUNK_SHIFT, sizeof(struct qv_node));
		if (!m->chunk[c])
			return NULL;
	}
	n = &m->chunk[c][i & ((1u << QV_CHUNK_SHIFT) - 1)];
	n->name = strdup(name);
	if (!n->name)
		return NULL;
	n->ino = i + 1;
	n->parent = parent ? parent : n->ino;
	n->dir = dir;
	n->mtime = *mtime;
	n->lazy = -1;
	atomic_store(&m->nnodes, i + 1); /* publish only once filled in */
	return n;
}

int qv_node_add_kid(struct qv_node *dir, uint64_t ino)
{
	uint64_t *k = realloc(dir->kids, (dir->nkids + 1) * sizeof(*k));

	if (!k)
		return -ENOMEM;
	dir->kids = k;
	k[dir->nkids++] = ino;
	return 0;
}

static int folder_name(const struct qv_mount *m, const struct qv_plan_opts *po, char *buf,
		       size_t len)
{
	if (m->o.shard_size > 1 && !m->o.shard_rank_set)
		return snprintf(buf, len, "ep-rank-%u-shard-%u", po->ep_rank, po->shard_rank);
	return snprintf(buf, len, "ep-rank-%u", po->ep_rank);
}

static int cmp_node_name(const void *a, const void *b, void *mp)
{
	struct qv_mount *m = mp;

	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	int c = strcmp(qv_mount_node(m, x)->name, qv_mount_node(m, y)->name);

	return c ? c : (x > y) - (x < y); /* equal names: the earlier node first */
}

void qv_mount_sort_kids(struct qv_mount *m, struct qv_node *dir)
{
	if (dir->nkids > 1) /* an empty folder has no array at all */
		qsort_r(dir->kids, dir->nkids, sizeof(*dir->kids), cmp_node_name, m);
}

/* One folder per rank (and shard) at the root, each built on first use. */
static int make_rank_folders(struct qv_mount *m, struct qv_gen *g, struct qv_node *root,
			     char *err, size_t errlen)
{
	int rc = qv_view_validate(g, &g->plans[0], err, errlen);

	for (size_t i = 0; !rc && i < g->nplans; i++) {
		char name[64];
		struct qv_node *n;

		folder_name(m, &g->plans[i].o, name, sizeof(name));
		n = qv_mount_node_new(m, name, root->ino, true, &root->mtime);
		rc = n ? qv_node_add_kid(root, n->ino) : -ENOMEM;
		if (!rc) {
			n->lazy = (int32_t)i;
			n->gen = g;
		}
	}
	if (rc == -ENOMEM)
		qv_err(err, errlen, rc, "out of memory");
	if (!rc)
		qv_mount_sort_kids(m, root);
	return rc;
}

/* Load a generation and build its root folder; the root gets inode 1 whatever its slot. */
static int load_view(struct qv_mount *m, char *err, size_t errlen)
{
	struct qv_gen *g = calloc(1, sizeof(*g));
	struct qv_node *top;
	int rc;

	if (!g)
		return qv_err(err, errlen, -ENOMEM, "out of memory");
	rc = qv_gen_load(g, m->source, &m->o, err, errlen);
	if (rc) {
		qv_gen_free(g);
		free(g);
		return rc;
	}
	/* from here on nodes may point into g: keep it even if the build fails */
	g->prev = m->gen;
	m->gen = g;
	top = qv_mount_node_new(m, "", 0, true, &g->scan.n[0].st.st_mtim);
	if (!top)
		return qv_err(err, errlen, -ENOMEM, "out of memory");
	top->ino = top->parent = 1;
	rc = qv_gen_multi(&m->o) ? make_rank_folders(m, g, top, err, errlen) :
				   qv_view_build(m, g, &g->plans[0], 0, top, err, errlen);
	if (!rc)
		rc = qv_inspect_folder(m, g, qv_gen_multi(&m->o) ? NULL : &g->plans[0], top, err,
				       errlen);
	if (!rc)
		atomic_store(&m->top, top);
	return rc;
}

int qv_mount_init(struct qv_mount *m, const char *src, const struct qv_mount_opts *o, char *err,
		  size_t errlen)
{
	memset(m, 0, sizeof(*m));
	m->o = *o;
	err[0] = '\0';
	clock_gettime(CLOCK_MONOTONIC, &m->stats.start);
	pthread_mutex_init(&m->lock, NULL);
	m->chunk = calloc(QV_MAX_CHUNKS, sizeof(*m->chunk));
	/* absolute, since the daemon's working folder changes when it detaches */
	m->source = realpath(src, NULL);
	if (!m->source)
		return qv_err(err, errlen, -errno, "%s: %s", src, strerror(errno));
	if (!m->chunk)
		return qv_err(err, errlen, -ENOMEM, "out of memory");
	return load_view(m, err, errlen);
}

int qv_mount_rescan(struct qv_mount *m, char *err, size_t errlen)
{
	int rc;

	err[0] = '\0';
	pthread_mutex_lock(&m->lock);
	rc = load_view(m, err, errlen);
	pthread_mutex_unlock(&m->lock);
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
	if (!atomic_load(&dir->ready) && dir->inspect) {
		rc = qv_inspect_fill(m, dir, err, sizeof(err));
		if (rc)
			qv_log("%s", err);
		else
			atomic_store_explicit(&dir->ready, true, memory_order_release);
	} else if (!atomic_load(&dir->ready)) {
		rc = qv_view_build(m, dir->gen, &dir->gen->plans[dir->lazy], 0, dir, err,
				   sizeof(err));
		if (rc) {
			qv_log("%s: %s", dir->name, err);
			dir->nkids = 0; /* a later call tries again from scratch */
		} else {
			rc = qv_inspect_folder(m, dir->gen, &dir->gen->plans[dir->lazy], dir, err,
					       sizeof(err));
			if (rc)
				qv_log("%s: %s", dir->name, err);
			else
				atomic_store_explicit(&dir->ready, true, memory_order_release);
		}
	}
	pthread_mutex_unlock(&m->lock);
	return rc ? -EIO : 0;
}

void qv_mount_fini(struct qv_mount *m)
{
	size_t nn = atomic_load(&m->nnodes);

	for (size_t i = 0; i < nn; i++) {
		struct qv_node *n = &m->chunk[i >> QV_CHUNK_SHIFT][i & ((1u << QV_CHUNK_SHIFT) - 1)];

		free(n->name);
		free(n->kids);
		qv_vfile_fini(&n->vf);
		if (n->ti) {
			free(n->ti->file);
			free(n->ti->dtype);
			free(n->ti->shape);
			free(n->ti);
		}
	}
	for (size_t c = 0; m->chunk && c < QV_MAX_CHUNKS && m->chunk[c]; c++)
		free(m->chunk[c]);
	free(m->chunk);
	while (m->gen) {
		struct qv_gen *g = m->gen;

		m->gen = g->prev;
		qv_gen_free(g);
		free(g);
	}
	free(m->source);
	pthread_mutex_destroy(&m->lock);
	memset(m, 0, sizeof(*m));
}

struct qv_node *qv_mount_lookup(struct qv_mount *m, const struct qv_node *dir, const char *name)
{
	size_t lo = 0, hi = dir->nkids;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		struct qv_node *n = qv_mount_node(m, dir->kids[mid]);
		int c = strcmp(name, n->name);

		if (c == 0)
			return n;
		if (c < 0)
			hi = mid;
		else
			lo = mid + 1;
	}
	return NULL;
}

struct qv_node *qv_mount_lookup_unsorted(struct qv_mount *m, const struct qv_node *dir,
					 const char *name)
{
	for (size_t i = 0; i < dir->nkids; i++)
		if (strcmp(qv_mount_node(m, dir->kids[i])->name, name) == 0)
			return qv_mount_node(m, dir->kids[i]);
	return NULL;
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
	return 0;
}

void qv_mount_release_file(struct qv_mount *m, struct qv_node *n)
{
	atomic_fetch_add(&m->stats.releases, 1);
	for (size_t i = 0; i < n->vf.nsrcs; i++)
		qv_source_put(&n->vf.base[n->vf.srcs[i]]);
}

int qv_mount_read(struct qv_mount *m, struct qv_node *n, uint64_t off, size_t len, char *buf,
		  struct qv_io *io, struct qv_rdscratch *sc, size_t *got)
{
	uint64_t from_src = 0;
	int rc = qv_vfile_read(&n->vf, n->vf.base, off, len, buf, io, sc, got, &from_src);

	atomic_fetch_add(&m->stats.reads, 1);
	if (rc) {
		atomic_fetch_add(&m->stats.errors, 1);
		return rc;
	}
	atomic_fetch_add(&m->stats.bytes_served, *got);
	atomic_fetch_add(&m->stats.bytes_src, from_src);
	atomic_fetch_add(qv_io_backend_of(io) == QV_IO_URING ? &m->stats.bytes_uring :
							       &m->stats.bytes_pread,
			 from_src);
	return 0;
}

int qv_mount_dyn_content(struct qv_mount *m, const struct qv_node *n, struct qv_buf *out)
{
	if (n->dyn == QV_DYN_STATS)
		return qv_mount_stats_json(m, out);
	if (n->dyn == QV_DYN_GPU && m->o.gpu_json)
		return m->o.gpu_json(m->o.gpu_arg, out);
	return -ENOENT;
}

uint64_t qv_mount_bytes(struct qv_mount *m)
{
	size_t nn = atomic_load(&m->nnodes);
	uint64_t sum = 0;

	for (size_t i = 0; i < nn; i++)
		sum += qv_mount_node(m, i + 1)->vf.size;
	return sum;
}

int qv_mount_stats_json(struct qv_mount *m, struct qv_buf *out)
{
	struct qv_stats *s = &m->stats;
	struct timespec now;
	uint64_t opens = atomic_load(&s->opens), releases = atomic_load(&s->releases);

	clock_gettime(CLOCK_MONOTONIC, &now);
	return qv_buf_printf(out,
			     "{\"requests\":%llu,\"bytes_served\":%llu,\"bytes_from_sources\":%llu,"
			     "\"bytes_from_sources_uring\":%llu,\"bytes_from_sources_pread\":%llu,"
			     "\"errors\":%llu,\"opens\":%llu,\"open_files\":%llu,\"nodes\":%zu,"
			     "\"uptime_s\":%.3f}\n",
			     (unsigned long long)atomic_load(&s->reads),
			     (unsigned long long)atomic_load(&s->bytes_served),
			     (unsigned long long)atomic_load(&s->bytes_src),
			     (unsigned long long)atomic_load(&s->bytes_uring),
			     (unsigned long long)atomic_load(&s->bytes_pread),
			     (unsigned long long)atomic_load(&s->errors), (unsigned long long)opens,
			     (unsigned long long)(opens > releases ? opens - releases : 0),
			     atomic_load(&m->nnodes),
			     (double)(now.tv_sec - s->start.tv_sec) +
				     (double)(now.tv_nsec - s->start.tv_nsec) / 1e9);
}
