/* inspect.c - the hidden .qvlmoefs/ folder and the xattrs. Everything here is made from the
 * view itself (its synthesized headers and segments), so what it shows is what is served. */
#include "qv_inspect.h"
#include "qv_gpu.h"
#include "qv_st.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define X_SOURCE "user.qvlmoefs.source"
#define X_EXTENTS "user.qvlmoefs.extents"
#define X_DTYPE "user.qvlmoefs.dtype"
#define X_SHAPE "user.qvlmoefs.shape"
#define X_FILE "user.qvlmoefs.file"

/* A child of dir: a folder, or a file of memory bytes (taken over) / dynamic content. */
static struct qv_node *child(struct qv_tree *t, struct qv_node *dir, const char *name, bool isdir)
{
	struct qv_node *n = qv_tree_lookup_unsorted(t, dir, name);

	return n ? n : qv_tree_add(t, dir, name, isdir, &dir->mtime);
}

static int mem_file(struct qv_tree *t, struct qv_node *dir, const char *name, struct qv_buf *b)
{
	struct qv_node *n = child(t, dir, name, false);

	return n ? qv_vfile_add_mem(&n->vf, b) : -ENOMEM;
}

static int view_json(const struct qv_gen_opts *o, enum qv_io_backend io, struct qv_gen *g,
		     const struct qv_plan *p, struct qv_buf *b)
{
	static const char *const naming[] = { "hf", "native" };
	uint64_t start = 0, count = g->n_experts;
	int rc;

	if (p && p->o.ep_size)
		qv_plan_ep_range(g->n_experts, p->o.ep_size, p->o.ep_rank, &start, &count);
	rc = qv_buf_adds(b, "{\n  \"source\": ");
	if (!rc)
		rc = qv_buf_json_str(b, g->scan.root, strlen(g->scan.root));
	if (!rc)
		rc = qv_buf_printf(b,
				   ",\n  \"source_naming\": \"%s\",\n  \"view_naming\": \"%s\","
				   "\n  \"sharded_save\": %s,\n  \"experts\": %llu,",
				   naming[g->src_naming], p ? naming[p->o.view] : "(rank folders)",
				   g->sharded ? "true" : "false", (unsigned long long)g->n_experts);
	if (!rc && p && p->o.ep_size)
		rc = qv_buf_printf(b,
				   "\n  \"ep_size\": %u,\n  \"ep_rank\": %u,\n  \"expert_start\": %llu,"
				   "\n  \"expert_end\": %llu,\n  \"ep_shard_size\": %u,"
				   "\n  \"ep_shard_rank\": %u,",
				   p->o.ep_size, p->o.ep_rank, (unsigned long long)start,
				   (unsigned long long)(start + count),
				   p->o.shard_size ? p->o.shard_size : 1, p->o.shard_rank);
	if (!rc && !p && o->ep_size)
		rc = qv_buf_printf(b, "\n  \"ep_size\": %u,", o->ep_size);
	if (!rc)
		rc = qv_buf_printf(b,
				   "\n  \"io\": \"%s\",\n  \"build\": {\"version\": \"%s\", \"gpu\": \"%s\"},"
				   "\n  \"features\": [\"hf-native\", \"expert-parallel\", "
				   "\"sharded-saves\", \"rescan\", \"gpu-staging\"]\n}\n",
				   io == QV_IO_URING ? "uring" : "pread", QV_VERSION,
				   qv_gpu_build());
	return rc;
}

/* The virtual header of vf, parsed; 0 or -EINVAL. */
static int vheader(const struct qv_vfile *vf, struct qv_st *st, const char **json, uint64_t *n)
{
	char why[QV_ERRLEN];

	*n = 0;
	if (vf->nseg == 0 || vf->seg[0].src != QV_SEG_MEM || vf->seg[0].len < 8)
		return -EINVAL;
	for (int i = 7; i >= 0; i--)
		*n = *n << 8 | (unsigned char)vf->seg[0].mem[i];
	*json = vf->seg[0].mem + 8;
	return qv_st_parse(*json, *n, vf->size, st, why, sizeof(why));
}

/* A name a file may have: not empty, "." or "..", at most NAME_MAX bytes, no '/' (NUL cannot
 * occur: names are C strings). */
static bool file_name_ok(const char *name)
{
	return name[0] && strcmp(name, ".") && strcmp(name, "..") && strlen(name) <= NAME_MAX &&
	       !strchr(name, '/');
}

/* headers/<name>.json for virtual file vnode, with vnode's permissions. */
static int header_file(struct qv_tree *t, struct qv_node *dir, const struct qv_node *vnode,
		       const char *json, uint64_t n)
{
	cJSON *j = cJSON_ParseWithLength(json, n);
	char *pretty = j ? cJSON_Print(j) : NULL;
	struct qv_buf b = { 0 }, fname = { 0 };
	struct qv_node *f;
	int rc = pretty ? qv_buf_adds(&b, pretty) : -ENOMEM;

	if (!rc)
		rc = qv_buf_adds(&b, "\n");
	if (!rc)
		rc = qv_buf_printf(&fname, "%s.json", vnode->name);
	if (!rc)
		rc = (f = child(t, dir, fname.p, false)) ? qv_vfile_add_mem(&f->vf, &b) : -ENOMEM;
	if (!rc)
		qv_tree_perm_set(f, vnode->uid, vnode->gid, vnode->mode);
	qv_buf_free(&b);
	qv_buf_free(&fname);
	cJSON_free(pretty);
	cJSON_Delete(j);
	return rc;
}

/* The description of a tensor file in one allocation, so the tree frees it without knowing it. */
static struct qv_tinfo *tinfo_new(const char *file, const char *dtype, const char *shape,
				  const struct qv_vfile *in)
{
	size_t lf = strlen(file) + 1, ld = strlen(dtype) + 1, ls = strlen(shape) + 1;
	struct qv_tinfo *ti = malloc(sizeof(*ti) + lf + ld + ls);

	if (!ti)
		return NULL;
	ti->file = memcpy((char *)(ti + 1), file, lf);
	ti->dtype = memcpy(ti->file + lf, dtype, ld);
	ti->shape = memcpy(ti->dtype + ld, shape, ls);
	ti->in = in;
	return ti;
}

static int tensor_file(struct qv_tree *tr, struct qv_node *dir, const struct qv_node *vnode,
		       const char *rel, const struct qv_st *st, const struct qv_tensor *t)
{
	struct qv_node *n;
	struct qv_buf shape = { 0 };
	int rc = 0;

	/* no lookup here (quadratic in tensors): duplicates are dropped once sorted */
	n = qv_tree_add(tr, dir, t->name, false, &dir->mtime);
	if (!n)
		return -ENOMEM;
	/* its bytes are the virtual file's: so are its permissions; listing tensors/ shows every
	 * file's keys, so it may be listed only by whom may read every file */
	qv_tree_perm_set(n, vnode->uid, vnode->gid, vnode->mode);
	qv_tree_perm_and(dir, vnode->uid, vnode->gid, (vnode->mode & 0444) | 0111);
	rc = qv_vfile_slice(&n->vf, &vnode->vf, 8 + st->hdr_len + t->begin, t->end - t->begin);
	for (uint32_t d = 0; d < t->ndim && !rc; d++)
		rc = qv_buf_printf(&shape, d ? ",%llu" : "[%llu", (unsigned long long)t->shape[d]);
	if (!rc)
		rc = qv_buf_adds(&shape, t->ndim ? "]" : "[]");
	n->ti = rc ? NULL : tinfo_new(rel, qv_dtype_name(t->dtype), shape.p, &vnode->vf);
	qv_buf_free(&shape);
	return rc ? rc : n->ti ? 0 : -ENOMEM;
}

/* What walk leaves out: names that no file may have, per .qvlmoefs/ folder, for one log line. */
struct skipped {
	size_t keys, headers;
};

/* tensors/<key> for each tensor of virtual file n (header st, at rel) that a file may be named. */
static int tensor_files(struct qv_tree *t, struct qv_node *tens, const struct qv_node *n,
			const char *rel, const struct qv_st *st, struct skipped *sk)
{
	int rc = 0;

	for (size_t k = 0; k < st->nt && !rc; k++) {
		if (file_name_ok(st->t[k].name))
			rc = tensor_file(t, tens, n, rel, st, &st->t[k]);
		else
			sk->keys++;
	}
	return rc;
}

/* headers/<rel>.json and tensors/<key> for every virtual safetensors file below dir. */
static int walk(struct qv_tree *t, struct qv_node *dir, const char *prefix, struct qv_node *hdrs,
		struct qv_node *tens, struct skipped *sk)
{
	int rc = 0;

	for (size_t i = 0; i < dir->nkids && !rc; i++) {
		struct qv_node *n = qv_tree_slot(t, dir->kids[i]);
		char *rel = prefix[0] ? qv_path_join(prefix, n->name) : strdup(n->name);
		const char *json;
		struct qv_st st;
		uint64_t len;

		if (!rel)
			return -ENOMEM;
		if (n->dir && strcmp(n->name, QV_HIDDEN) && n->lazy < 0) {
			struct qv_node *sub = child(t, hdrs, n->name, true);

			if (sub)
				qv_tree_perm_set(sub, n->uid, n->gid, n->mode);
			rc = sub ? walk(t, n, rel, sub, tens, sk) : -ENOMEM;
		} else if (!n->dir && qv_ends_with(n->name, ".safetensors") &&
			   vheader(&n->vf, &st, &json, &len) == 0) {
			if (strlen(n->name) + 5 <= NAME_MAX)
				rc = header_file(t, hdrs, n, json, len);
			else
				sk->headers++; /* <name>.json would be longer than a name may be */
			if (!rc)
				rc = tensor_files(t, tens, n, rel, &st, sk);
			qv_st_free(&st);
		}
		free(rel);
	}
	/* a folder "x.safetensors.json" beside a file "x.safetensors" would make two entries */
	if (!rc && qv_tree_sort(t, hdrs))
		rc = -EEXIST;
	return rc;
}

/* Sort a folder and keep the first of equal names (one file per view key). */
static void dedupe(struct qv_tree *t, struct qv_node *dir)
{
	size_t out = 0;

	qv_tree_sort(t, dir);
	for (size_t i = 0; i < dir->nkids; i++)
		if (!out || strcmp(qv_tree_slot(t, dir->kids[out - 1])->name,
				   qv_tree_slot(t, dir->kids[i])->name))
			dir->kids[out++] = dir->kids[i];
	dir->nkids = out;
}

int qv_inspect_folder(struct qv_tree *t, struct qv_gen *g, const struct qv_plan *p,
		      struct qv_node *dir, char *err, size_t errlen)
{
	struct qv_node *h, *dup;

	if (qv_tree_lookup_unsorted(t, dir, QV_HIDDEN))
		return qv_err(err, errlen, -EEXIST,
			      "%s%s%s in the source has the name of the inspection folder %s/ the view "
			      "adds there: rename it", dir->name, dir->name[0] ? "/" : "", QV_HIDDEN,
			      QV_HIDDEN);
	h = qv_tree_add(t, dir, QV_HIDDEN, true, &dir->mtime);
	if (!h)
		return qv_err(err, errlen, -ENOMEM, "%s: out of memory", QV_HIDDEN);
	/* filled on first use: a mount whose inspection folder nobody opens pays nothing */
	h->inspect = true;
	h->uncounted = true; /* its files show the view's bytes again: statfs counts them once */
	h->gen = g;
	h->hplan = p;
	/* the builders below keep names unique: this is the last word on the folder */
	dup = qv_tree_sort(t, dir);
	if (dup)
		return qv_err(err, errlen, -EEXIST, "%s%stwo entries are named %s", dir->name,
			      dir->name[0] ? ": " : "", dup->name);
	return 0;
}

int qv_inspect_fill(struct qv_tree *t, const struct qv_gen_opts *o, enum qv_io_backend io,
		    bool gpu, struct qv_node *h, char *err, size_t errlen)
{
	struct qv_node *dir = h->up, *f, *hdrs, *tens;
	struct skipped sk = { 0 };
	struct qv_buf b = { 0 };
	int rc = 0;

	if ((f = child(t, h, "stats", false)))
		f->dyn = QV_DYN_STATS;
	else
		rc = -ENOMEM;
	if (!rc && gpu && (f = child(t, h, "gpu.json", false)))
		f->dyn = QV_DYN_GPU;
	else if (!rc && gpu)
		rc = -ENOMEM;
	if (!rc)
		rc = view_json(o, io, h->gen, h->hplan, &b);
	if (!rc)
		rc = mem_file(t, h, "view.json", &b);
	if (!rc && h->hplan) {
		hdrs = child(t, h, "headers", true);
		tens = child(t, h, "tensors", true);
		rc = hdrs && tens ? walk(t, dir, "", hdrs, tens, &sk) : -ENOMEM;
		if (!rc)
			dedupe(t, tens);
	}
	if (!rc && qv_tree_sort(t, h))
		rc = -EEXIST;
	qv_buf_free(&b);
	if (rc)
		return qv_err(err, errlen, rc, "%s: %s", QV_HIDDEN, strerror(-rc));
	if (sk.keys || sk.headers)
		qv_log("%s%s%s: left out %zu tensor names and %zu header files whose names no file "
		       "may have (empty, \".\", \"..\", over %d bytes, or with '/')",
		       dir->name, dir->name[0] ? "/" : "", QV_HIDDEN, sk.keys, sk.headers, NAME_MAX);
	return 0;
}

/* A computed tensor's inputs, one line per operation of each block: "FILE OFFSET RUN every
 * STRIDE x ROWS OPERATION block B", and its scales "... scales of block B". */
static int comp_extents(const struct qv_vfile *vf, const struct qv_comp *c, struct qv_buf *out)
{
	static const char *const op[] = { "transpose", "dequantize", "dequantize+transpose" };
	int rc = 0;

	for (uint64_t i = 0; i < c->nblk * c->nops && !rc; i++) {
		const struct qv_xop *o = &c->ops[i];
		unsigned es = o->kind == QV_XOP_T16 ? 2 : 1;

		if (qv_xop_empty(o))
			continue;

		rc = qv_buf_printf(out, "%s %llu %llu every %llu x %llu %s block %llu\n",
				   vf->base[o->src].rel, (unsigned long long)o->soff,
				   (unsigned long long)(o->cols * es), (unsigned long long)o->sstride,
				   (unsigned long long)o->rows, op[o->kind],
				   (unsigned long long)(i / c->nops));
		if (!rc && o->kind != QV_XOP_T16)
			rc = qv_buf_printf(out, "%s %llu %llu every %llu x %llu scales of block %llu\n",
					   vf->base[o->scale_src].rel, (unsigned long long)o->scale_off,
					   (unsigned long long)((o->cols + o->block - 1) / o->block * 4),
					   (unsigned long long)o->scale_stride,
					   (unsigned long long)((o->rows + o->block - 1) / o->block),
					   (unsigned long long)(i / c->nops));
	}
	return rc;
}

/* One line per run the tensor file's bytes come from: "FILE OFFSET LENGTH", strided runs as
 * "FILE OFFSET RUN every STRIDE x COUNT", tiled ones per chunk. */
static int extents(const struct qv_node *n, struct qv_buf *out)
{
	int rc = 0;

	for (size_t i = 0; i < n->vf.nseg && !rc; i++) {
		const struct qv_seg *s = &n->vf.seg[i];

		if (s->src == QV_SEG_MEM)
			continue;
		if (s->src == QV_SEG_COMPUTED) {
			rc = comp_extents(&n->vf, s->comp, out);
			continue;
		}
		if (s->src == QV_SEG_TILED) {
			for (size_t c = 0; c < s->tile->nc && !rc; c++)
				rc = qv_buf_printf(out, "%s %llu chunk\n",
						   n->vf.base[s->tile->c[c].src].rel,
						   (unsigned long long)s->tile->c[c].soff);
			continue;
		}
		if (s->run == s->len)
			rc = qv_buf_printf(out, "%s %llu %llu\n", n->vf.base[s->src].rel,
					   (unsigned long long)s->soff, (unsigned long long)s->len);
		else
			rc = qv_buf_printf(out, "%s %llu %llu every %llu x %llu\n",
					   n->vf.base[s->src].rel, (unsigned long long)s->soff,
					   (unsigned long long)s->run, (unsigned long long)s->stride,
					   (unsigned long long)(s->len / s->run));
	}
	return rc;
}

int qv_inspect_xattr(const struct qv_node *n, const char *name, struct qv_buf *out)
{
	int rc = 0;

	if (n->ti && !strcmp(name, X_DTYPE))
		return qv_buf_adds(out, n->ti->dtype);
	if (n->ti && !strcmp(name, X_SHAPE))
		return qv_buf_adds(out, n->ti->shape);
	if (n->ti && !strcmp(name, X_FILE))
		return qv_buf_adds(out, n->ti->file);
	if (n->ti && !strcmp(name, X_EXTENTS))
		return extents(n, out);
	if (!n->dir && !n->dyn && !strcmp(name, X_SOURCE)) {
		if (n->vf.nsrcs == 0)
			return qv_buf_adds(out, "(generated)");
		for (size_t i = 0; i < n->vf.nsrcs && !rc; i++)
			rc = qv_buf_printf(out, i ? ",%s" : "%s", n->vf.base[n->vf.srcs[i]].rel);
		return rc;
	}
	return -ENODATA;
}

int qv_inspect_xattr_names(const struct qv_node *n, struct qv_buf *out)
{
	int rc = 0;

	if (!n->dir && !n->dyn)
		rc = qv_buf_add(out, X_SOURCE, sizeof(X_SOURCE));
	if (!rc && n->ti) {
		rc = qv_buf_add(out, X_DTYPE, sizeof(X_DTYPE));
		if (!rc)
			rc = qv_buf_add(out, X_SHAPE, sizeof(X_SHAPE));
		if (!rc)
			rc = qv_buf_add(out, X_FILE, sizeof(X_FILE));
		if (!rc)
			rc = qv_buf_add(out, X_EXTENTS, sizeof(X_EXTENTS));
	}
	return rc;
}
