/* view.c - build the virtual tree: one node per shown folder or file; safetensors files become
 * a synthesized header plus extents of their source, everything else passes through. */
#include "qv_view.h"
#include "qv_cfg.h"
#include "qv_hdr.h"
#include "qv_vcomp.h"
#include "qv_util.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_INDEX_BYTES (64u << 20)


static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

const char *qv_view_dup_key(char **keys, size_t n)
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

/* Spaces to add to a header of hdr_len bytes (a multiple of 8, under 4096) that put the most
 * bytes of the segments sg (laid out after it in order) at the same offset within a page as in
 * their source. The kernel copies a read's reply into the reader's pages: page to page, one
 * copy per page, when the offsets agree; two, and up to three times slower, when the view runs
 * a few bytes ahead of the source (measured on x86: the copy's loads wait on its own stores to
 * the same offsets in another page). */
static size_t page_pad(const struct qv_seg *sg, size_t n, uint64_t hdr_len)
{
	uint64_t bytes[4096 / 8] = { 0 }, voff = hdr_len, best = 0;
	size_t pad = 0;

	for (size_t i = 0; i < n; i++) {
		uint64_t shift = (sg[i].soff - voff) % 4096;

		if (sg[i].comp) { /* made in memory: copied whatever its offset */
			voff += sg[i].len;
			continue;
		}

		/* every run of a strided segment keeps the first one's shift only when the stride
		 * moves the source by whole pages more than the view */
		if (shift % 8 == 0 && (sg[i].stride - sg[i].run) % 4096 == 0)
			bytes[shift / 8] += sg[i].len;
		voff += sg[i].len;
	}
	for (size_t k = 0; k < 4096 / 8; k++)
		if (bytes[k] > best) {
			best = bytes[k];
			pad = k * 8;
		}
	return pad;
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
		s->run = s->stride = s->len; /* contiguous after all: one run, one read */
	if (s->run == 0)
		s->len = 0;
	vt->size = s->len;
}

size_t qv_view_ep_meta(uint64_t n_experts, const struct qv_plan *p, struct qv_meta *x,
		       char buf[6][24])
{
	static const char *const names[6] = { "qvlmoefs.ep_size",	"qvlmoefs.ep_rank",
					      "qvlmoefs.expert_start",	"qvlmoefs.expert_end",
					      "qvlmoefs.ep_shard_size", "qvlmoefs.ep_shard_rank" };
	const struct qv_plan_opts *o = &p->o;
	uint64_t start, count, v[6];
	size_t n;

	if (!o->ep_size)
		return 0;
	qv_plan_ep_range(n_experts, o->ep_size, o->ep_rank, &start, &count);
	v[0] = o->ep_size, v[1] = o->ep_rank, v[2] = start, v[3] = start + count;
	v[4] = o->shard_size, v[5] = o->shard_rank;
	n = o->shard_size > 1 ? 6 : 4;
	for (size_t i = 0; i < n; i++) {
		snprintf(buf[i], 24, "%llu", (unsigned long long)v[i]);
		x[i] = (struct qv_meta){ (char *)names[i], buf[i] };
	}
	return n;
}

/* Record every source a computed tensor's operations read in vf (staleness, permissions). */
int qv_view_comp_srcs(struct qv_vfile *vf, const struct qv_comp *c)
{
	int rc = 0;

	for (uint64_t i = 0; i < c->nblk * c->nops && !rc; i++) {
		if (qv_xop_empty(&c->ops[i]))
			continue;
		rc = qv_vfile_use_src(vf, c->ops[i].src);
		if (!rc && c->ops[i].kind != QV_XOP_T16)
			rc = qv_vfile_use_src(vf, c->ops[i].scale_src);
	}
	return rc;
}

int qv_view_file(const struct qv_gen *g, const struct qv_plan *p, uint32_t si, enum qv_part part,
		 struct qv_vfile *vf, struct qv_fkeys *fk, char *err, size_t errlen)
{
	const struct qv_st *st = g->st_of[si];
	const char *rel = g->scan.n[si].rel;
	uint32_t src = g->src_of[si];
	struct qv_vtensor *vt = calloc(st->nt ? st->nt : 1, sizeof(*vt));
	struct qv_seg *sg = calloc(st->nt ? st->nt : 1, sizeof(*sg));
	struct qv_meta extra[6];
	char ebuf[6][24], why[QV_ERRLEN];
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
		struct qv_vcsrc vs;
		struct qv_cut cut = { 0 };
		char *key;
		bool expert;

		rc = qv_vcomp_key(g, p, si, t, &vs, &key, &expert);
		if (rc <= 0)
			continue; /* dropped (or inside another's computation), or out of memory */
		if ((part == QV_PART_DENSE && expert) || (part == QV_PART_EXPERTS && !expert)) {
			free(key); /* in the other part's file */
			rc = 0;
			continue;
		}
		rc = expert ? qv_plan_cut(p, &vs.shown, &cut, why, sizeof(why)) : 0;
		if (!rc && vs.how != QV_VC_STORED)
			rc = qv_vcomp_build(g, &vs, si, expert ? &cut : NULL, &vt[fk->n], &sg[fk->n],
					    why, sizeof(why));
		else if (!rc)
			tensor_extent(st, t, &cut, &vt[fk->n], &sg[fk->n]);
		if (rc) {
			qv_err(err, errlen, rc, "%s: %s", rel, why);
			free(key);
			break;
		}
		vt[fk->n].name = key;
		fk->total += vt[fk->n].size;
		fk->keys[fk->n++] = key;
	}
	if (rc)
		goto out;
	dup = qv_view_dup_key(fk->keys, fk->n);
	if (dup) {
		rc = qv_err(err, errlen, -EINVAL, "%s: two tensors map to the view key \"%s\"", rel,
			    dup);
		goto out;
	}
	/* the dense part is every rank's: it names none */
	nextra = part == QV_PART_DENSE ? 0 : qv_view_ep_meta(g->n_experts, p, extra, ebuf);
	rc = qv_hdr_build(st->meta, st->nmeta, extra, nextra, vt, fk->n, &hdr, why, sizeof(why));
	if (rc) {
		qv_err(err, errlen, rc, "%s: %s", rel, why);
		goto out;
	}
	rc = qv_hdr_pad(&hdr, page_pad(sg, fk->n, hdr.len));
	if (!rc)
		rc = qv_vfile_add_mem(vf, &hdr);
	voff = vf->size;
	for (size_t i = 0; i < fk->n && !rc; i++) {
		sg[i].voff = voff;
		voff += sg[i].len;
		if (sg[i].comp) {
			struct qv_comp *c = (struct qv_comp *)sg[i].comp;

			sg[i].comp = NULL; /* vf's now, even on failure */
			rc = qv_vfile_add_comp(vf, c);
			if (!rc)
				rc = qv_view_comp_srcs(vf, c);
			continue;
		}
		sg[i].src = src;
		rc = qv_vfile_add(vf, &sg[i]);
	}
	if (!rc)
		rc = qv_vfile_use_src(vf, src);
out:
	if (rc == -ENOMEM)
		qv_err(err, errlen, rc, "%s: out of memory", rel);
	qv_buf_free(&hdr);
	free(vt);
	for (size_t i = 0; sg && i < st->nt; i++)
		qv_comp_free((struct qv_comp *)sg[i].comp); /* those not handed to vf */
	free(sg);
	return rc;
}

void qv_view_perm_of_sources(struct qv_node *n)
{
	for (size_t i = 0; i < n->vf.nsrcs; i++) {
		const struct qv_source *s = &n->vf.base[n->vf.srcs[i]];

		if (i == 0)
			qv_tree_perm_set(n, s->uid, s->gid, s->mode);
		else
			qv_tree_perm_and(n, s->uid, s->gid, s->mode);
	}
}

void qv_view_perm_and_node(struct qv_node *n, const struct qv_node *of)
{
	qv_tree_perm_and(n, of->uid, of->gid, of->mode);
}

/* Weight-map entries of the files an index (node n) names; -EINVAL when one is not in the
 * folder. The index shows their keys, so it lets read only whom may read them all. */
static int index_entries(struct qv_node *n, char **files, size_t nfiles, struct qv_fkeys *fk,
			 size_t nfk, struct qv_wentry **w, size_t *nw, uint64_t *total, char *why,
			 size_t wl)
{
	size_t cap = 0;

	/* a source file may be shown as two (-o ep_shared): each takes its keys */
	for (size_t f = 0; f < nfiles; f++) {
		bool found = false;

		for (size_t k = 0; k < nfk; k++) {
			if (strcmp(fk[k].src ? fk[k].src : fk[k].file, files[f]))
				continue;
			found = true;
			qv_view_perm_and_node(n, fk[k].node);
			cap += fk[k].n;
			*total += fk[k].total;
		}
		if (!found)
			return qv_err(why, wl, -EINVAL, "names %s, which is not in the folder",
				      files[f]);
	}
	*w = calloc(cap ? cap : 1, sizeof(**w));
	if (!*w)
		return -ENOMEM;
	for (size_t f = 0; f < nfiles; f++)
		for (size_t k = 0; k < nfk; k++)
			for (size_t i = 0; !strcmp(fk[k].src ? fk[k].src : fk[k].file, files[f]) &&
					   i < fk[k].n; i++)
				(*w)[(*nw)++] = (struct qv_wentry){ fk[k].keys[i], fk[k].file };
	return 0;
}

/* What an index's folder holds, for index_holds: the names of each entry's tensors, sorted
 * when first asked for. */
struct index_check {
	const struct qv_gen *g;
	const struct qv_snode *dir;
	char ***names; /* per entry of dir, or NULL until asked */
	char *why;
	size_t wl;
};

/* The position among folder d's entries (sorted by name) of the one named name, or -1. */
static long kid_named(const struct qv_gen *g, const struct qv_snode *d, const char *name)
{
	size_t lo = 0, hi = d->nkids;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int c = strcmp(g->scan.n[d->kids[mid]].name, name);

		if (c == 0)
			return (long)mid;
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return -1;
}

/* One weight_map entry: file must be a safetensors file of the folder that holds key. A key
 * its file lacks would vanish from the regenerated index, hiding the gap from loaders. */
static int index_holds(void *arg, const char *key, const char *file)
{
	struct index_check *c = arg;
	long k = kid_named(c->g, c->dir, file);
	const struct qv_st *st = k < 0 ? NULL : c->g->st_of[c->dir->kids[k]];

	if (k < 0)
		return qv_err(c->why, c->wl, -EINVAL, "names %s, which is not in the folder", file);
	if (!st)
		return qv_err(c->why, c->wl, -EINVAL, "names \"%s\" in %s, which is no safetensors "
			      "file", key, file);
	if (c->g->sharded && qv_dcp_is_rank_file(file))
		return 0; /* its tensor list was given back at load: the chunks are checked */
	if (!c->names[k]) {
		c->names[k] = malloc((st->nt ? st->nt : 1) * sizeof(char *));
		if (!c->names[k])
			return qv_err(c->why, c->wl, -ENOMEM, "out of memory");
		for (size_t i = 0; i < st->nt; i++)
			c->names[k][i] = st->t[i].name;
		qsort(c->names[k], st->nt, sizeof(char *), cmp_str);
	}
	if (!bsearch(&key, c->names[k], st->nt, sizeof(char *), cmp_str))
		return qv_err(c->why, c->wl, -EINVAL, "names \"%s\" in %s, which does not hold it",
			      key, file);
	return 0;
}

/* Every entry of index si (text src) names a file of its folder that holds the key; 0 or
 * -EINVAL with the first that does not in why. */
static int check_index(const struct qv_gen *g, uint32_t si, const struct qv_buf *src, char *why,
		       size_t wl)
{
	const struct qv_snode *d = &g->scan.n[g->scan.n[si].parent];
	struct index_check c = { .g = g, .dir = d, .why = why, .wl = wl };
	int rc;

	c.names = calloc(d->nkids ? d->nkids : 1, sizeof(*c.names));
	if (!c.names)
		return qv_err(why, wl, -ENOMEM, "out of memory");
	rc = qv_hdr_index_each(src->p, src->len, index_holds, &c, why, wl);
	for (size_t k = 0; k < d->nkids; k++)
		free(c.names[k]);
	free(c.names);
	return rc;
}

/* The index file si, regenerated from the virtual files of its folder (fk, nfk). */
static int build_index(struct qv_gen *g, uint32_t si, struct qv_node *n, struct qv_fkeys *fk,
		       size_t nfk, char *err, size_t errlen)
{
	struct qv_buf src = { 0 };
	struct qv_wentry *w = NULL;
	char **files = NULL;
	size_t nfiles = 0, nw = 0;
	uint64_t total = 0;
	char why[QV_ERRLEN] = "";
	int rc;

	rc = qv_scan_read(&g->scan.n[si], MAX_INDEX_BYTES, &src, why, sizeof(why));
	if (!rc)
		rc = qv_hdr_index_files(src.p, src.len, &files, &nfiles, why, sizeof(why));
	if (!rc)
		rc = check_index(g, si, &src, why, sizeof(why));
	qv_tree_perm_set(n, g->scan.n[si].st.st_uid, g->scan.n[si].st.st_gid, g->scan.n[si].vmode);
	if (!rc)
		rc = index_entries(n, files, nfiles, fk, nfk, &w, &nw, &total, why, sizeof(why));
	if (!rc)
		rc = qv_view_index(n, src.p, src.len, w, nw, total, why, sizeof(why));
	if (rc)
		qv_err(err, errlen, rc, "%s: %s", g->scan.n[si].rel, why[0] ? why : strerror(-rc));
	for (size_t i = 0; i < nfiles; i++)
		free(files[i]);
	free(files);
	free(w);
	qv_buf_free(&src);
	return rc;
}

int qv_view_index(struct qv_node *n, const char *src, size_t len, struct qv_wentry *w, size_t nw,
		  uint64_t total, char *why, size_t wl)
{
	char **keys = calloc(nw ? nw : 1, sizeof(*keys));
	struct qv_buf out = { 0 };
	const char *dup;
	int rc = keys ? 0 : -ENOMEM;

	for (size_t i = 0; !rc && i < nw; i++)
		keys[i] = (char *)w[i].key;
	if (!rc && (dup = qv_view_dup_key(keys, nw)))
		rc = qv_err(why, wl, -EINVAL, "view key \"%s\" is in more than one file", dup);
	if (!rc)
		rc = qv_hdr_index(src, len, w, nw, total, &out, why, wl);
	if (!rc)
		rc = qv_vfile_add_mem(&n->vf, &out);
	free(keys);
	qv_buf_free(&out);
	return rc;
}

static bool is_index_name(const char *name)
{
	return qv_ends_with(name, ".safetensors.index.json");
}

/* Build the view of scan folder sd under node dn: files first, then the folder's indexes. */
int qv_view_passthrough(struct qv_gen *g, uint32_t si, struct qv_node *n)
{
	uint64_t size = (uint64_t)g->scan.n[si].st.st_size;
	int rc = qv_vfile_add(&n->vf, &(struct qv_seg){ .len = size, .src = g->src_of[si],
						       .run = size, .stride = size });

	return rc ? rc : qv_vfile_use_src(&n->vf, g->src_of[si]);
}

/* A file that is no safetensors file, node n: as stored, but for the root's config.json in a
 * view that dequantizes, which loses its quantization_config (the weights are BF16 now);
 * 0 or -errno with one line in err. */
static int plain_file(struct qv_gen *g, const struct qv_plan *p, uint32_t si, struct qv_node *n,
		      char *err, size_t errlen)
{
	const struct qv_snode *c = &g->scan.n[si];
	struct qv_buf src = { 0 }, out = { 0 };
	char why[QV_ERRLEN] = "";
	int rc;

	if (!p->o.dequant || c->parent != 0 || strcmp(c->name, "config.json"))
		return qv_view_passthrough(g, si, n);
	rc = qv_scan_read(c, MAX_INDEX_BYTES, &src, why, sizeof(why));
	if (!rc)
		rc = qv_cfg_unquantized(src.p, src.len, &out);
	if (rc == -EINVAL)
		snprintf(why, sizeof(why), "not a JSON object: its quantization_config cannot be "
			 "dropped from the view of dequantized weights");
	if (!rc)
		rc = qv_vfile_add_mem(&n->vf, &out);
	if (!rc)
		rc = qv_vfile_use_src(&n->vf, g->src_of[si]);
	if (rc)
		qv_err(err, errlen, rc, "%s: %s", c->rel, why[0] ? why : strerror(-rc));
	qv_buf_free(&src);
	qv_buf_free(&out);
	return rc;
}

/* In a sharded save's root the rank files and .hf_metadata are shown consolidated instead. */
static bool consolidated_away(const struct qv_gen *g, uint32_t sd, const struct qv_snode *c)
{
	return sd == 0 && g->sharded &&
	       (qv_dcp_is_rank_file(c->name) || !strcmp(c->name, ".hf_metadata") ||
		is_index_name(c->name));
}

/* Whether source file si has a tensor of part under plan p (a key the view keeps); 0/1 or
 * -ENOMEM. */
static int has_part(const struct qv_gen *g, const struct qv_plan *p, uint32_t si,
		    enum qv_part part)
{
	const struct qv_st *st = g->st_of[si];

	for (size_t i = 0; i < st->nt; i++) {
		struct qv_vcsrc vs;
		char *key;
		bool expert;
		int rc = qv_vcomp_key(g, p, si, &st->t[i], &vs, &key, &expert);

		free(key);
		if (rc < 0)
			return rc;
		if (rc == 1 && expert == (part == QV_PART_EXPERTS))
			return 1;
	}
	return 0;
}

int qv_view_shared(struct qv_tree *t, struct qv_gen *g, const struct qv_plan *p,
		   struct qv_node *top, uint32_t nlink, char *err, size_t errlen)
{
	int rc = 0;

	g->shared = calloc(g->scan.nn ? g->scan.nn : 1, sizeof(*g->shared));
	if (!g->shared)
		return qv_err(err, errlen, -ENOMEM, "out of memory");
	for (uint32_t si = 1; si < g->scan.nn && !rc; si++) {
		const struct qv_snode *c = &g->scan.n[si];
		const struct qv_st *st = g->st_of[si];
		struct qv_fkeys fk = { 0 };
		struct qv_node *n;

		if (S_ISDIR(c->st.st_mode) || (!st && is_index_name(c->name)))
			continue; /* folders are per rank; an index names the rank's files */
		rc = st ? has_part(g, p, si, QV_PART_DENSE) : 1;
		if (rc <= 0)
			continue;
		n = qv_tree_new(t, c->name, top->ino, false, &c->st.st_mtim);
		if (!n)
			return qv_err(err, errlen, -ENOMEM, "out of memory");
		n->up = top;
		n->gen = g;
		n->nlink = nlink;
		n->vf.base = g->src;
		qv_tree_perm_set(n, c->st.st_uid, c->st.st_gid, c->vmode);
		rc = st ? qv_view_file(g, p, si, QV_PART_DENSE, &n->vf, &fk, err, errlen) :
			  plain_file(g, p, si, n, err, errlen);
		qv_fkeys_fini(&fk);
		if (!rc)
			qv_view_perm_of_sources(n);
		g->shared[si] = n->ino;
	}
	if (rc == -ENOMEM)
		qv_err(err, errlen, rc, "out of memory");
	return rc;
}

/* "NAME.safetensors" -> "NAME-experts.safetensors", or NULL when out of memory. */
static char *experts_name(const char *name)
{
	size_t stem = strlen(name) - strlen(".safetensors");
	char *s = malloc(stem + sizeof("-experts.safetensors"));

	if (s)
		sprintf(s, "%.*s-experts.safetensors", (int)stem, name);
	return s;
}

/* -o ep_shared: list source file si in rank folder dn as the node every rank folder lists
 * (pass-through, or the dense part) and, for a safetensors file with expert tensors, a file of
 * this rank's expert slices beside it; their keys into fk[*nfk...] for the folder's index. */
static int link_shared(struct qv_tree *t, struct qv_gen *g, const struct qv_plan *p, uint32_t si,
		       struct qv_node *dn, struct qv_fkeys *fk, size_t *nfk, char *err,
		       size_t errlen)
{
	const struct qv_snode *c = &g->scan.n[si];
	const struct qv_st *st = g->st_of[si];
	struct qv_node *sh = g->shared[si] ? qv_tree_slot(t, g->shared[si]) : NULL, *n;
	char *name;
	int rc = sh ? qv_tree_add_kid(dn, sh->ino) : 0;

	if (!rc && sh && st) { /* the dense keys again, for the index; the file is built */
		struct qv_vfile vf = { .base = g->src };

		fk[*nfk] = (struct qv_fkeys){ .file = c->name, .src = c->name, .node = sh };
		rc = qv_view_file(g, p, si, QV_PART_DENSE, &vf, &fk[(*nfk)++], err, errlen);
		qv_vfile_fini(&vf);
	}
	if (!rc && st)
		rc = has_part(g, p, si, QV_PART_EXPERTS);
	if (rc == 0 && st && !sh) /* nothing of it shown (its weights went into another file's
				    * computed tensors): the index names it, and finds no key */
		fk[(*nfk)++] = (struct qv_fkeys){ .file = c->name, .src = c->name, .node = dn };
	if (rc <= 0)
		return rc;
	name = experts_name(c->name);
	n = name ? qv_tree_add(t, dn, name, false, &c->st.st_mtim) : NULL;
	free(name);
	if (!n)
		return -ENOMEM;
	n->vf.base = g->src;
	qv_tree_perm_set(n, c->st.st_uid, c->st.st_gid, c->vmode);
	fk[*nfk] = (struct qv_fkeys){ .file = n->name, .src = c->name, .node = n };
	rc = qv_view_file(g, p, si, QV_PART_EXPERTS, &n->vf, &fk[(*nfk)++], err, errlen);
	if (!rc)
		qv_view_perm_of_sources(n);
	return rc;
}

int qv_view_build(struct qv_tree *t, struct qv_gen *g, const struct qv_plan *p, uint32_t sd,
		  struct qv_node *dn, char *err, size_t errlen)
{
	const struct qv_snode *s = &g->scan.n[sd];
	/* two per file: -o ep_shared shows a safetensors file as a dense and an experts file */
	struct qv_fkeys *fk = calloc(s->nkids ? 2 * s->nkids : 1, sizeof(*fk));
	struct qv_node **made = calloc(s->nkids ? s->nkids : 1, sizeof(*made));
	size_t nfk = 0;
	int rc = fk && made ? 0 : -ENOMEM;

	for (size_t k = 0; k < s->nkids && !rc; k++) {
		uint32_t si = s->kids[k];
		const struct qv_snode *c = &g->scan.n[si];
		bool dir = S_ISDIR(c->st.st_mode);
		struct qv_node *n;

		if (consolidated_away(g, sd, c))
			continue;
		if (g->shared && !dir && (g->st_of[si] || !is_index_name(c->name))) {
			rc = link_shared(t, g, p, si, dn, fk, &nfk, err, errlen);
			continue;
		}
		n = made[k] = qv_tree_add(t, dn, c->name, dir, &c->st.st_mtim);
		rc = n ? 0 : -ENOMEM;
		if (rc)
			break;
		n->vf.base = g->src;
		/* what the source lets a caller read, the view does too, and no more */
		qv_tree_perm_set(n, c->st.st_uid, c->st.st_gid, c->vmode);
		if (dir) {
			rc = qv_view_build(t, g, p, si, n, err, errlen);
		} else if (g->st_of[si]) {
			fk[nfk].file = c->name;
			fk[nfk].node = n;
			rc = qv_view_file(g, p, si, QV_PART_ALL, &n->vf, &fk[nfk++], err, errlen);
		} else if (!is_index_name(c->name)) {
			rc = plain_file(g, p, si, n, err, errlen);
		}
		if (!rc && !dir)
			qv_view_perm_of_sources(n);
	}
	for (size_t k = 0; k < s->nkids && !rc; k++) {
		uint32_t si = s->kids[k];

		if (made[k] && !made[k]->dir && !g->st_of[si] && is_index_name(g->scan.n[si].name))
			rc = build_index(g, si, made[k], fk, nfk, err, errlen);
	}
	if (rc == -ENOMEM)
		qv_err(err, errlen, rc, "%s: out of memory", s->rel[0] ? s->rel : g->scan.root);
	for (size_t i = 0; fk && i < nfk; i++)
		qv_fkeys_fini(&fk[i]);
	free(fk);
	free(made);
	return rc;
}

/* What qv_view_validate checks each tensor against. */
struct validation {
	const struct qv_gen *g;
	const struct qv_plan *p;
	size_t np;
	char *err;
	size_t errlen;
};

/* Tensor t of scan node si (0: a consolidated one) under plans p[0..np): an expert tensor, as
 * the view shows it, must be cut by each, and a computed FP8 one on a boundary of its scale
 * blocks. The plans differ only in their slice, so one of them maps the key for all. */
static int validate_tensor(void *arg, const struct qv_tensor *t, uint32_t si)
{
	const struct validation *v = arg;
	struct qv_vcsrc vs;
	struct qv_cut cut;
	char *key, why[QV_ERRLEN];
	bool expert, fp8;
	int rc = qv_vcomp_key(v->g, &v->p[0], si, t, &vs, &key, &expert);

	if (rc < 0)
		return qv_err(v->err, v->errlen, rc, "out of memory");
	fp8 = vs.shown.dtype != t->dtype; /* dequantized: its cut follows the scale blocks */
	for (size_t i = 0; rc == 1 && expert && i < v->np; i++) {
		int bad = qv_plan_cut(&v->p[i], &vs.shown, &cut, why, sizeof(why));

		if (!bad && fp8 && cut.d1_start % v->g->quant.block)
			bad = qv_err(why, sizeof(why), -EINVAL, "tensor \"%s\": ep_shard_rank=%u "
				     "cuts dim 1 at %llu, not on a %u-element boundary of its FP8 "
				     "scale blocks", key, v->p[i].o.shard_rank,
				     (unsigned long long)cut.d1_start, v->g->quant.block);
		if (!bad)
			continue;
		free(key);
		return si ? qv_err(v->err, v->errlen, -EINVAL, "%s: %s", v->g->scan.n[si].rel, why) :
			    qv_err(v->err, v->errlen, -EINVAL, "%s", why);
	}
	free(key);
	return 0;
}

int qv_view_validate(struct qv_gen *g, const struct qv_plan *p, size_t np, char *err,
		     size_t errlen)
{
	struct validation v = { .g = g, .p = p, .np = np, .err = err, .errlen = errlen };

	return qv_gen_each_tensor(g, validate_tensor, &v);
}

void qv_fkeys_fini(struct qv_fkeys *fk)
{
	for (size_t j = 0; j < fk->n; j++)
		free(fk->keys[j]);
	free(fk->keys);
	memset(fk, 0, sizeof(*fk));
}
