/* view.c - build the virtual tree: one node per shown folder or file; safetensors files become
 * a synthesized header plus extents of their source, everything else passes through. */
#include "qv_view.h"
#include "qv_hdr.h"
#include "qv_util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_INDEX_BYTES (64u << 20)

/* Keys of one built safetensors file, kept until its folder's index is made. */
struct fkeys {
	const char *file;
	char **keys;
	size_t n;
	uint64_t total;
};

struct qv_node *qv_mount_node(struct qv_mount *m, uint64_t ino)
{
	size_t i = ino - 1;

	if (ino == 0 || i >= atomic_load(&m->nnodes))
		return NULL;
	return &m->chunk[i >> QV_CHUNK_SHIFT][i & ((1u << QV_CHUNK_SHIFT) - 1)];
}

/* A new node; pointers stay valid because chunks never move. Caller holds m->lock or is the
 * only thread (mount time). */
static struct qv_node *node_new(struct qv_mount *m, const char *name, uint64_t parent, bool dir,
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
	atomic_store(&m->nnodes, i + 1); /* publish only once filled in */
	return n;
}

static int add_kid(struct qv_node *dir, uint64_t ino)
{
	uint64_t *k = realloc(dir->kids, (dir->nkids + 1) * sizeof(*k));

	if (!k)
		return -ENOMEM;
	dir->kids = k;
	k[dir->nkids++] = ino;
	return 0;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Two tensors of one file (or of one index) may not end up with the same view key. */
static const char *dup_key(char **keys, size_t n)
{
	char **v = malloc((n ? n : 1) * sizeof(*v));
	const char *dup = NULL;

	if (!v)
		return NULL;
	memcpy(v, keys, n * sizeof(*v));
	qsort(v, n, sizeof(*v), cmp_str);
	for (size_t i = 1; i < n && !dup; i++)
		if (strcmp(v[i - 1], v[i]) == 0)
			dup = v[i];
	free(v);
	return dup;
}

/* The extent of tensor t under cut c: one run (dim 0) or one strided run per expert (dim 1). */
static void tensor_extent(const struct qv_st *st, const struct qv_tensor *t, const struct qv_cut *c,
			  struct qv_vtensor *vt, struct qv_seg *s)
{
	uint64_t row = qv_dtype_size(t->dtype), d1 = t->ndim > 1 ? t->shape[1] : 1;

	*vt = (struct qv_vtensor){ .dtype = t->dtype, .ndim = t->ndim };
	memcpy(vt->shape, t->shape, sizeof(vt->shape));
	s->soff = 8 + st->hdr_len + t->begin;
	s->len = s->run = s->stride = t->end - t->begin;
	vt->size = s->len;
	if (!c->sliced)
		return;
	for (uint32_t d = 2; d < t->ndim; d++)
		row *= t->shape[d];
	vt->shape[0] = c->count;
	vt->shape[1] = c->d1_count;
	s->soff += c->start * d1 * row + c->d1_start * row;
	s->run = c->d1_count * row;
	s->stride = d1 * row;
	s->len = c->count * s->run;
	if (s->run == s->stride || c->count <= 1)
		s->stride = s->run; /* contiguous after all */
	if (s->run == 0)
		s->len = 0;
	vt->size = s->len;
}

/* The __metadata__ entries that say which slice a rank's shard holds. */
static size_t ep_meta(const struct qv_mount *m, struct qv_meta *x, char buf[6][24])
{
	static const char *const names[6] = { "qvlmoefs.ep_size",	"qvlmoefs.ep_rank",
					      "qvlmoefs.expert_start",	"qvlmoefs.expert_end",
					      "qvlmoefs.ep_shard_size", "qvlmoefs.ep_shard_rank" };
	const struct qv_plan_opts *o = &m->plan.o;
	uint64_t start, count, v[6];
	size_t n;

	if (!o->ep_size)
		return 0;
	qv_plan_ep_range(m->n_experts, o->ep_size, o->ep_rank, &start, &count);
	v[0] = o->ep_size, v[1] = o->ep_rank, v[2] = start, v[3] = start + count;
	v[4] = o->shard_size, v[5] = o->shard_rank;
	n = o->shard_size > 1 ? 6 : 4;
	for (size_t i = 0; i < n; i++) {
		snprintf(buf[i], 24, "%llu", (unsigned long long)v[i]);
		x[i] = (struct qv_meta){ (char *)names[i], buf[i] };
	}
	return n;
}

/* Build the virtual safetensors file of scan node si into node n; its keys go to fk. */
static int build_st(struct qv_mount *m, uint32_t si, struct qv_node *n, struct fkeys *fk, char *err,
		    size_t errlen)
{
	const struct qv_st *st = m->st_of[si];
	const char *rel = m->scan.n[si].rel;
	struct qv_vtensor *vt = calloc(st->nt ? st->nt : 1, sizeof(*vt));
	struct qv_seg *sg = calloc(st->nt ? st->nt : 1, sizeof(*sg));
	struct qv_meta extra[6];
	char ebuf[6][24];
	struct qv_buf hdr = { 0 };
	uint64_t voff;
	const char *dup;
	size_t nextra;
	int rc = 0;

	fk->keys = calloc(st->nt ? st->nt : 1, sizeof(char *));
	if (!vt || !sg || !fk->keys) {
		rc = -ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < st->nt && !rc; i++) {
		const struct qv_tensor *t = &st->t[i];
		struct qv_cut cut = { 0 };
		char *key;
		bool expert;

		rc = qv_plan_map_key(&m->plan, t->name, &key, &expert);
		if (rc <= 0)
			continue; /* dropped, or out of memory */
		rc = expert ? qv_plan_cut(&m->plan, t, &cut, err, errlen) : 0;
		if (rc) {
			free(key);
			break;
		}
		tensor_extent(st, t, &cut, &vt[fk->n], &sg[fk->n]);
		vt[fk->n].name = key;
		fk->total += vt[fk->n].size;
		fk->keys[fk->n++] = key;
	}
	if (rc)
		goto out;
	dup = dup_key(fk->keys, fk->n);
	if (dup) {
		rc = qv_err(err, errlen, -EINVAL, "%s: two tensors map to the view key \"%s\"", rel,
			    dup);
		goto out;
	}
	nextra = ep_meta(m, extra, ebuf);
	rc = qv_hdr_build(st->meta, st->nmeta, extra, nextra, vt, fk->n, &hdr);
	if (rc)
		goto out;
	n->vf.mem = hdr.p;
	hdr.p = NULL;
	rc = qv_vfile_add(&n->vf, &(struct qv_seg){ .voff = 0, .len = hdr.len, .src = QV_SEG_MEM,
						   .mem = n->vf.mem });
	voff = hdr.len;
	for (size_t i = 0; i < fk->n && !rc; i++) {
		sg[i].voff = voff;
		sg[i].src = m->src_of[si];
		voff += sg[i].len;
		rc = qv_vfile_add(&n->vf, &sg[i]);
	}
	if (!rc)
		rc = qv_vfile_use_src(&n->vf, m->src_of[si]);
out:
	if (rc == -ENOMEM)
		qv_err(err, errlen, rc, "%s: out of memory", rel);
	qv_buf_free(&hdr);
	free(vt);
	free(sg);
	return rc;
}

static int read_small_file(const char *path, struct qv_buf *b)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	char chunk[65536];
	ssize_t r;
	int rc = 0;

	if (fd < 0)
		return -errno;
	while (!rc && (r = read(fd, chunk, sizeof(chunk))) != 0) {
		if (r < 0)
			rc = errno == EINTR ? 0 : -errno;
		else if (b->len + (size_t)r > MAX_INDEX_BYTES)
			rc = -EFBIG;
		else
			rc = qv_buf_add(b, chunk, (size_t)r);
	}
	close(fd);
	return rc;
}

/* Weight-map entries of the files an index names; -EINVAL when one is not in the folder. */
static int index_entries(char **files, size_t nfiles, struct fkeys *fk, size_t nfk,
			 struct qv_wentry **w, size_t *nw, uint64_t *total, char *why, size_t wl)
{
	size_t cap = 0;

	for (size_t f = 0; f < nfiles; f++) {
		size_t k;

		for (k = 0; k < nfk && strcmp(fk[k].file, files[f]); k++)
			;
		if (k == nfk)
			return qv_err(why, wl, -EINVAL, "names %s, which is not in the folder",
				      files[f]);
		cap += fk[k].n;
		*total += fk[k].total;
	}
	*w = calloc(cap ? cap : 1, sizeof(**w));
	if (!*w)
		return -ENOMEM;
	for (size_t f = 0; f < nfiles; f++)
		for (size_t k = 0; k < nfk; k++)
			for (size_t i = 0; !strcmp(fk[k].file, files[f]) && i < fk[k].n; i++)
				(*w)[(*nw)++] = (struct qv_wentry){ fk[k].keys[i], fk[k].file };
	return 0;
}

/* The index file si, regenerated from the virtual files of its folder (fk, nfk). */
static int build_index(struct qv_mount *m, uint32_t si, struct qv_node *n, struct fkeys *fk,
		       size_t nfk, char *err, size_t errlen)
{
	struct qv_buf src = { 0 }, out = { 0 };
	struct qv_wentry *w = NULL;
	char **files = NULL, **keys = NULL;
	size_t nfiles = 0, nw = 0;
	uint64_t total = 0;
	const char *dup = NULL;
	char why[QV_ERRLEN] = "";
	int rc;

	rc = read_small_file(m->scan.n[si].path, &src);
	if (!rc)
		rc = qv_hdr_index_files(src.p, src.len, &files, &nfiles, why, sizeof(why));
	if (!rc)
		rc = index_entries(files, nfiles, fk, nfk, &w, &nw, &total, why, sizeof(why));
	keys = rc ? NULL : calloc(nw ? nw : 1, sizeof(*keys));
	if (!rc && !keys)
		rc = -ENOMEM;
	for (size_t i = 0; !rc && i < nw; i++)
		keys[i] = (char *)w[i].key;
	if (!rc && (dup = dup_key(keys, nw)))
		rc = qv_err(why, sizeof(why), -EINVAL, "view key \"%s\" is in more than one file",
			    dup);
	if (!rc)
		rc = qv_hdr_index(src.p, src.len, w, nw, total, &out, why, sizeof(why));
	if (!rc) {
		n->vf.mem = out.p;
		out.p = NULL;
		rc = qv_vfile_add(&n->vf, &(struct qv_seg){ .len = out.len, .src = QV_SEG_MEM,
							   .mem = n->vf.mem });
	}
	if (rc)
		qv_err(err, errlen, rc, "%s: %s", m->scan.n[si].rel, why[0] ? why : strerror(-rc));
	for (size_t i = 0; i < nfiles; i++)
		free(files[i]);
	free(files);
	free(w);
	free(keys);
	qv_buf_free(&src);
	qv_buf_free(&out);
	return rc;
}

static bool is_index_name(const char *name)
{
	return qv_ends_with(name, ".safetensors.index.json");
}

/* Build the view of scan folder sd under node dn: files first, then the folder's indexes. */
static int build_dir(struct qv_mount *m, uint32_t sd, struct qv_node *dn, char *err, size_t errlen)
{
	const struct qv_snode *s = &m->scan.n[sd];
	struct fkeys *fk = calloc(s->nkids ? s->nkids : 1, sizeof(*fk));
	size_t nfk = 0;
	int rc = fk ? 0 : -ENOMEM;

	for (size_t k = 0; k < s->nkids && !rc; k++) {
		uint32_t si = s->kids[k];
		const struct qv_snode *c = &m->scan.n[si];
		bool dir = S_ISDIR(c->st.st_mode);
		struct qv_node *n = node_new(m, c->name, dn->ino, dir, &c->st.st_mtim);

		rc = n ? add_kid(dn, n->ino) : -ENOMEM;
		if (rc)
			break;
		if (dir) {
			rc = build_dir(m, si, n, err, errlen);
		} else if (m->st_of[si]) {
			fk[nfk].file = c->name;
			rc = build_st(m, si, n, &fk[nfk++], err, errlen);
		} else if (!is_index_name(c->name)) {
			rc = qv_vfile_add(&n->vf, &(struct qv_seg){ .len = (uint64_t)c->st.st_size,
								   .src = m->src_of[si],
								   .run = (uint64_t)c->st.st_size,
								   .stride = (uint64_t)c->st.st_size });
			if (!rc)
				rc = qv_vfile_use_src(&n->vf, m->src_of[si]);
		}
	}
	for (size_t k = 0; k < s->nkids && !rc; k++) {
		uint32_t si = s->kids[k];

		if (!S_ISDIR(m->scan.n[si].st.st_mode) && !m->st_of[si] &&
		    is_index_name(m->scan.n[si].name))
			rc = build_index(m, si, qv_mount_node(m, dn->kids[k]), fk, nfk, err,
					 errlen);
	}
	if (rc == -ENOMEM)
		qv_err(err, errlen, rc, "%s: out of memory", s->rel[0] ? s->rel : m->scan.root);
	for (size_t i = 0; fk && i < nfk; i++) {
		for (size_t j = 0; j < fk[i].n; j++)
			free(fk[i].keys[j]);
		free(fk[i].keys);
	}
	free(fk);
	return rc;
}

/* Open and strictly parse every *.safetensors source; the fd stays open for reads. */
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

int qv_mount_init(struct qv_mount *m, const char *src, const struct qv_mount_opts *o, char *err,
		  size_t errlen)
{
	struct qv_plan_opts po;
	struct qv_node *root;
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
	po = (struct qv_plan_opts){ .src = m->src_naming,
				    .view = o->view_set ? o->view : !m->src_naming,
				    .model_prefix = m->model_prefix, .exclude = o->exclude,
				    .ep_size = o->ep_size, .ep_rank = o->ep_rank,
				    .shard_size = o->shard_size, .shard_rank = o->shard_rank };
	rc = qv_plan_init(&m->plan, &po, err, errlen);
	if (rc)
		return rc;
	root = node_new(m, "", 0, true, &m->scan.n[0].st.st_mtim);
	if (!root)
		return qv_err(err, errlen, -ENOMEM, "out of memory");
	return build_dir(m, 0, root, err, errlen);
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
	qv_plan_free(&m->plan);
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
