/* mount.c - the mount context: parse every source at mount, own the node table, serve lookups
 * and reads. Views are built by view.c, lazily for multi-rank folders. */
#include "qv_mount.h"
#include "qv_util.h"
#include "qv_view.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct qv_node *qv_mount_node(struct qv_mount *m, uint64_t ino)
{
	size_t i = ino - 1;

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

static int parse_sources(struct qv_mount *m, char *err, size_t errlen)
{
	char why[QV_ERRLEN];

	for (size_t i = 0; i < m->scan.nn; i++) {
		const struct qv_snode *c = &m->scan.n[i];
		struct qv_source *s;
		struct stat st;
		int rc, fd;

		if (S_ISDIR(c->st.st_mode))
			continue;
		s = &m->src[m->nsrc];
		m->src_of[i] = (uint32_t)m->nsrc++;
		*s = (struct qv_source){ .rel = c->rel, .path = c->path, .dev = c->st.st_dev,
					 .ino = c->st.st_ino, .size = c->st.st_size,
					 .mtime = c->st.st_mtim };
		atomic_init(&s->fd, -1);
		if (!qv_ends_with(c->name, ".safetensors"))
			continue;
		fd = open(c->path, O_RDONLY | O_CLOEXEC);
		if (fd < 0 || fstat(fd, &st))
			return qv_err(err, errlen, -errno, "%s: %s", c->rel, strerror(errno));
		atomic_store(&s->fd, fd);
		s->dev = st.st_dev, s->ino = st.st_ino, s->size = st.st_size, s->mtime = st.st_mtim;
		m->st_of[i] = calloc(1, sizeof(struct qv_st));
		if (!m->st_of[i])
			return qv_err(err, errlen, -ENOMEM, "%s: out of memory", c->rel);
		rc = qv_st_read_fd(fd, (uint64_t)st.st_size, m->st_of[i], why, sizeof(why));
		if (rc)
			return qv_err(err, errlen, rc, "%s: %s", c->rel, why);
	}
	return 0;
}

/* Naming, the {P} prefix and the expert count, from all keys of the checkpoint (DESIGN §1). */
static void detect(struct qv_mount *m)
{
	struct qv_plan probe = { .o = { .src = QV_NAMING_HF, .view = QV_NAMING_HF } };

	for (size_t i = 0; i < m->scan.nn; i++) {
		const struct qv_st *st = m->st_of[i];

		for (size_t k = 0; st && k < st->nt; k++) {
			const char *key = st->t[k].name;

			m->model_prefix |= qv_starts_with(key, "model.");
			if (qv_plan_key_is_native(key))
				m->src_naming = QV_NAMING_NATIVE;
		}
	}
	probe.o.src = probe.o.view = m->src_naming;
	for (size_t i = 0; i < m->scan.nn && !m->n_experts; i++) {
		const struct qv_st *st = m->st_of[i];

		for (size_t k = 0; st && k < st->nt && !m->n_experts; k++) {
			char *key;
			bool expert;

			if (qv_plan_map_key(&probe, st->t[k].name, &key, &expert) == 1 && expert &&
			    st->t[k].ndim)
				m->n_experts = st->t[k].shape[0];
			free(key);
		}
	}
}

/* Plan options for folder or view number i: ranks (and shards) not fixed by the user are
 * enumerated, one folder each. */
static void plan_opts(const struct qv_mount *m, size_t i, struct qv_plan_opts *po)
{
	const struct qv_mount_opts *o = &m->o;
	uint32_t nshards = o->shard_size > 1 && !o->shard_rank_set ? o->shard_size : 1;

	*po = (struct qv_plan_opts){ .src = m->src_naming,
				     .view = o->view_set ? o->view : !m->src_naming,
				     .model_prefix = m->model_prefix, .exclude = o->exclude,
				     .ep_size = o->ep_size, .shard_size = o->shard_size };
	po->ep_rank = o->ep_rank_set ? o->ep_rank : (uint32_t)(i / nshards);
	po->shard_rank = nshards > 1 ? (uint32_t)(i % nshards) : o->shard_rank;
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

	return strcmp(qv_mount_node(m, *(const uint64_t *)a)->name,
		      qv_mount_node(m, *(const uint64_t *)b)->name);
}

/* One folder per rank (and shard) at the root, each built on first use. */
static int make_rank_folders(struct qv_mount *m, struct qv_node *root, char *err, size_t errlen)
{
	int rc = qv_view_validate(m, &m->plans[0], err, errlen);

	for (size_t i = 0; !rc && i < m->nplans; i++) {
		char name[64];
		struct qv_node *n;

		folder_name(m, &m->plans[i].o, name, sizeof(name));
		n = qv_mount_node_new(m, name, root->ino, true, &root->mtime);
		rc = n ? qv_node_add_kid(root, n->ino) : -ENOMEM;
		if (!rc)
			n->lazy = (int32_t)i;
	}
	if (rc == -ENOMEM)
		qv_err(err, errlen, rc, "out of memory");
	if (!rc)
		qsort_r(root->kids, root->nkids, sizeof(*root->kids), cmp_node_name, m);
	return rc;
}

int qv_mount_init(struct qv_mount *m, const char *src, const struct qv_mount_opts *o, char *err,
		  size_t errlen)
{
	struct qv_plan_opts po;
	struct qv_node *root;
	bool multi = o->ep_size && (!o->ep_rank_set || (o->shard_size > 1 && !o->shard_rank_set));
	int rc;

	memset(m, 0, sizeof(*m));
	m->o = *o;
	err[0] = '\0';
	pthread_mutex_init(&m->lock, NULL);
	m->chunk = calloc(QV_MAX_CHUNKS, sizeof(*m->chunk));
	if (!m->chunk)
		return qv_err(err, errlen, -ENOMEM, "out of memory");
	rc = qv_scan_tree(src, &m->scan, err, errlen);
	if (rc)
		return rc;
	m->src = calloc(m->scan.nn, sizeof(*m->src));
	m->src_of = malloc(m->scan.nn * sizeof(*m->src_of));
	m->st_of = calloc(m->scan.nn, sizeof(*m->st_of));
	if (!m->src || !m->src_of || !m->st_of)
		return qv_err(err, errlen, -ENOMEM, "out of memory");
	memset(m->src_of, 0xff, m->scan.nn * sizeof(*m->src_of));
	rc = parse_sources(m, err, errlen);
	if (rc)
		return rc;
	detect(m);
	if (o->ep_size && !m->n_experts)
		return qv_err(err, errlen, -EINVAL, "%s: ep_size given but no expert tensors found",
			      src);
	if (o->ep_size && m->n_experts % o->ep_size)
		qv_log("%llu experts do not divide by ep_size=%u: the first %llu ranks hold one more",
		       (unsigned long long)m->n_experts, o->ep_size,
		       (unsigned long long)(m->n_experts % o->ep_size));
	m->nplans = 1;
	if (multi)
		m->nplans = (o->ep_rank_set ? 1 : o->ep_size) *
			    (o->shard_size > 1 && !o->shard_rank_set ? o->shard_size : 1);
	m->plans = calloc(m->nplans, sizeof(*m->plans));
	if (!m->plans)
		return qv_err(err, errlen, -ENOMEM, "out of memory");
	for (size_t i = 0; i < m->nplans; i++) {
		plan_opts(m, i, &po);
		rc = qv_plan_init(&m->plans[i], &po, err, errlen);
		if (rc)
			return rc;
	}
	root = qv_mount_node_new(m, "", 0, true, &m->scan.n[0].st.st_mtim);
	if (!root)
		return qv_err(err, errlen, -ENOMEM, "out of memory");
	if (multi)
		return make_rank_folders(m, root, err, errlen);
	return qv_view_build(m, &m->plans[0], 0, root, err, errlen);
}

int qv_mount_ready(struct qv_mount *m, struct qv_node *dir)
{
	char err[QV_ERRLEN] = "";
	int rc = 0;

	if (dir->lazy < 0 || atomic_load_explicit(&dir->ready, memory_order_acquire))
		return 0;
	pthread_mutex_lock(&m->lock);
	if (!atomic_load(&dir->ready)) {
		rc = qv_view_build(m, &m->plans[dir->lazy], 0, dir, err, sizeof(err));
		if (rc) {
			qv_log("%s: %s", dir->name, err);
			dir->nkids = 0; /* a later call tries again from scratch */
		} else {
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
		struct qv_node *n = qv_mount_node(m, i + 1);

		free(n->name);
		free(n->kids);
		qv_vfile_fini(&n->vf);
	}
	for (size_t c = 0; m->chunk && c < QV_MAX_CHUNKS && m->chunk[c]; c++)
		free(m->chunk[c]);
	free(m->chunk);
	for (size_t i = 0; i < m->nsrc; i++)
		if (atomic_load(&m->src[i].fd) >= 0)
			close(atomic_load(&m->src[i].fd));
	for (size_t i = 0; m->st_of && i < m->scan.nn; i++) {
		if (m->st_of[i])
			qv_st_free(m->st_of[i]);
		free(m->st_of[i]);
	}
	free(m->st_of);
	free(m->src_of);
	free(m->src);
	for (size_t i = 0; i < m->nplans; i++)
		qv_plan_free(&m->plans[i]);
	free(m->plans);
	qv_scan_free(&m->scan);
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

int qv_mount_open_file(struct qv_mount *m, struct qv_node *n)
{
	atomic_fetch_add(&m->stats.opens, 1);
	for (size_t i = 0; i < n->vf.nsrcs; i++) {
		int rc = qv_source_check(&m->src[n->vf.srcs[i]]);

		if (rc) {
			atomic_fetch_add(&m->stats.errors, 1);
			return rc;
		}
	}
	return 0;
}

int qv_mount_read(struct qv_mount *m, struct qv_node *n, uint64_t off, size_t len, char *buf,
		  struct qv_io *io, struct qv_rdscratch *sc, size_t *got)
{
	uint64_t from_src = 0;
	int rc = qv_vfile_read(&n->vf, m->src, off, len, buf, io, sc, got, &from_src);

	atomic_fetch_add(&m->stats.reads, 1);
	if (rc) {
		atomic_fetch_add(&m->stats.errors, 1);
		return rc;
	}
	atomic_fetch_add(&m->stats.bytes_served, *got);
	atomic_fetch_add(&m->stats.bytes_src, from_src);
	return 0;
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

	return qv_buf_printf(out,
			     "{\"reads\":%llu,\"bytes_served\":%llu,\"bytes_from_sources\":%llu,"
			     "\"errors\":%llu,\"opens\":%llu,\"nodes\":%zu}\n",
			     (unsigned long long)atomic_load(&s->reads),
			     (unsigned long long)atomic_load(&s->bytes_served),
			     (unsigned long long)atomic_load(&s->bytes_src),
			     (unsigned long long)atomic_load(&s->errors),
			     (unsigned long long)atomic_load(&s->opens), atomic_load(&m->nnodes));
}
