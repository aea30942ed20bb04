/* view_dcp.c - the consolidated view of a sharded save: model-0000k-of-0000N.safetensors whose
 * tensors are tiled segments over the rank files' chunks (one per tensor, never one per row),
 * seen through the plan's window when slicing, plus the index and .hf_metadata's files. */
#include "qv_hdr.h"
#include "qv_plan.h"
#include "qv_util.h"
#include "qv_vcomp.h"
#include "qv_view.h"
#include "qv_view_dcp.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The segment of tensor x under cut c: a plain extent when one chunk is the whole window,
 * else a tiled segment over all of x's chunks. */
static void tensor_seg(const struct qv_dtensor *x, const struct qv_cut *c, struct qv_tile *tile,
		       struct qv_vtensor *vt, struct qv_seg *sg)
{
	uint64_t bytes = qv_dtype_size(x->dtype);

	*vt = (struct qv_vtensor){ .name = x->name, .dtype = x->dtype, .ndim = x->ndim };
	*tile = (struct qv_tile){ .ndim = x->ndim, .es = qv_dtype_size(x->dtype), .c = x->c,
				  .nc = x->nc };
	for (uint32_t k = 0; k < x->ndim; k++) {
		tile->gshape[k] = tile->wshape[k] = x->shape[k];
		if (c->sliced && k == 0)
			tile->woff[0] = c->start, tile->wshape[0] = c->count;
		if (c->sliced && k == 1)
			tile->woff[1] = c->d1_start, tile->wshape[1] = c->d1_count;
		vt->shape[k] = tile->wshape[k];
		bytes *= tile->wshape[k];
	}
	vt->size = bytes;
	*sg = (struct qv_seg){ .len = bytes, .src = QV_SEG_TILED, .tile = tile };
	if (x->nc == 1 && !c->sliced) /* written whole by one rank: read it as it lies */
		*sg = (struct qv_seg){ .len = bytes, .src = x->c[0].src, .soff = x->c[0].soff,
				       .run = bytes, .stride = bytes };
}

/* Consolidated file k (1-based) under plan p into node n; its keys into fk. */
static int build_file(struct qv_gen *g, const struct qv_plan *p, uint32_t k, struct qv_node *n,
		      struct qv_fkeys *fk, char *err, size_t errlen)
{
	const struct qv_dcp *d = &g->dcp;
	struct qv_vtensor *vt = calloc(d->nt ? d->nt : 1, sizeof(*vt));
	struct qv_seg *sg = calloc(d->nt ? d->nt : 1, sizeof(*sg));
	struct qv_meta extra[7], fmt = { "format", "pt" };
	char ebuf[6][24], why[QV_ERRLEN];
	struct qv_buf hdr = { 0 };
	uint64_t voff;
	size_t nextra;
	int rc = 0;

	n->vf.tiles = calloc(d->nt ? d->nt : 1, sizeof(*n->vf.tiles));
	fk->keys = calloc(d->nt ? d->nt : 1, sizeof(char *));
	if (!vt || !sg || !n->vf.tiles || !fk->keys)
		rc = -ENOMEM;
	for (size_t i = 0; i < d->nt && !rc; i++) {
		const struct qv_dtensor *x = &d->t[i];
		struct qv_tensor t = { .name = x->name, .dtype = x->dtype, .ndim = x->ndim };
		struct qv_vcsrc vs;
		struct qv_cut cut = { 0 };
		bool expert;
		char *key;

		if (x->file != k)
			continue;
		memcpy(t.shape, x->shape, sizeof(t.shape));
		rc = qv_vcomp_key(g, p, 0, &t, &vs, &key, &expert);
		if (rc <= 0)
			continue;
		/* the cut is taken on the view's shape (§14) */
		rc = expert ? qv_plan_cut(p, &vs.shown, &cut, why, sizeof(why)) : 0;
		if (!rc && vs.transpose)
			rc = qv_vcomp_chunks(x, &cut, &vt[fk->n], &sg[fk->n], why, sizeof(why));
		else if (!rc)
			tensor_seg(x, &cut, &n->vf.tiles[fk->n], &vt[fk->n], &sg[fk->n]);
		if (rc) {
			free(key);
			qv_err(err, errlen, rc, "%s", why);
			break;
		}
		vt[fk->n].name = fk->keys[fk->n] = key;
		fk->total += vt[fk->n].size;
		for (size_t c = 0; c < x->nc && !rc; c++)
			rc = qv_vfile_use_src(&n->vf, x->c[c].src);
		fk->n++;
	}
	nextra = rc ? 0 : qv_view_ep_meta(g->n_experts, p, extra, ebuf);
	if (!rc && (rc = qv_hdr_build(&fmt, 1, extra, nextra, vt, fk->n, &hdr, why, sizeof(why))))
		qv_err(err, errlen, rc, "%s: %s", fk->file, why);
	if (!rc)
		rc = qv_vfile_add_mem(&n->vf, &hdr);
	voff = n->vf.size;
	for (size_t i = 0; i < fk->n && !rc; i++) {
		struct qv_comp *c = (struct qv_comp *)sg[i].comp;

		sg[i].voff = voff;
		voff += sg[i].len;
		sg[i].comp = NULL; /* the vfile's now, even on failure */
		rc = c ? qv_vfile_add_comp(&n->vf, c) : qv_vfile_add(&n->vf, &sg[i]);
		if (!rc && c)
			rc = qv_view_comp_srcs(&n->vf, c);
	}
	if (rc == -ENOMEM)
		qv_err(err, errlen, rc, "out of memory");
	qv_buf_free(&hdr);
	free(vt);
	for (size_t i = 0; sg && i < d->nt; i++)
		qv_comp_free((struct qv_comp *)sg[i].comp); /* those not handed to the vfile */
	free(sg);
	return rc;
}

/* model.safetensors.index.json over every consolidated file. */
static int build_index(struct qv_fkeys *fk, uint32_t nfiles, struct qv_node *n, char *err,
		       size_t errlen)
{
	static const char src[] = "{\"metadata\":{},\"weight_map\":{}}";
	struct qv_wentry *w;
	size_t nw = 0, cap = 0;
	uint64_t total = 0;
	int rc;

	for (uint32_t f = 0; f < nfiles; f++)
		cap += fk[f].n, total += fk[f].total;
	w = calloc(cap ? cap : 1, sizeof(*w));
	if (!w)
		return -ENOMEM;
	for (uint32_t f = 0; f < nfiles; f++)
		for (size_t i = 0; i < fk[f].n; i++)
			w[nw++] = (struct qv_wentry){ fk[f].keys[i], fk[f].file };
	for (uint32_t f = 0; f < nfiles; f++) /* it shows every file's keys */
		qv_view_perm_and_node(n, fk[f].node);
	rc = qv_view_index(n, src, sizeof(src) - 1, w, nw, total, err, errlen);
	free(w);
	return rc;
}

/* .hf_metadata's files appear at the root, as Automodel's consolidated/ has them: all but its
 * two helper mappings (file indexes, original dtypes), which it leaves out too. */
static int metadata_files(struct qv_tree *t, struct qv_gen *g, struct qv_node *dn)
{
	const struct qv_snode *root = &g->scan.n[0];
	int rc = 0;

	for (size_t k = 0; k < root->nkids && !rc; k++) {
		const struct qv_snode *d = &g->scan.n[root->kids[k]];

		if (!S_ISDIR(d->st.st_mode) || strcmp(d->name, ".hf_metadata"))
			continue;
		for (size_t j = 0; j < d->nkids && !rc; j++) {
			uint32_t si = d->kids[j];
			const struct qv_snode *f = &g->scan.n[si];
			struct qv_node *n;

			if (S_ISDIR(f->st.st_mode) || si == g->dcp.map_node ||
			    !strcmp(f->name, "fqn_to_dtype_mapping.json"))
				continue;
			if (qv_tree_lookup_unsorted(t, dn, f->name)) {
				qv_log("%s: the root has a file of that name; it wins", f->rel);
				continue;
			}
			n = qv_tree_add(t, dn, f->name, false, &f->st.st_mtim);
			rc = n ? 0 : -ENOMEM;
			if (!rc) {
				n->vf.base = g->src;
				rc = qv_view_passthrough(g, si, n);
			}
			if (!rc)
				qv_view_perm_of_sources(n);
		}
	}
	return rc;
}

/* Consolidated file k (1-based) of nf: its name, into buf (64 bytes). */
static void file_name(char *buf, uint32_t k, uint32_t nf)
{
	snprintf(buf, 64, "model-%05u-of-%05u.safetensors", k, nf);
}

int qv_view_dcp_check(const struct qv_gen *g, char *err, size_t errlen)
{
	const struct qv_snode *root = &g->scan.n[0];
	char name[64];

	for (uint32_t k = 1; k <= g->dcp.nfiles; k++) {
		file_name(name, k, g->dcp.nfiles);
		for (size_t i = 0; i < root->nkids; i++)
			if (!strcmp(g->scan.n[root->kids[i]].name, name))
				return qv_err(err, errlen, -EEXIST,
					      "%s (a file in the sharded save's folder) and the "
					      "consolidated %s assembled from its rank files would have "
					      "one name: move the file away", name, name);
	}
	return 0;
}

int qv_view_dcp(struct qv_tree *t, struct qv_gen *g, const struct qv_plan *p, struct qv_node *dn,
		char *err, size_t errlen)
{
	uint32_t nf = g->dcp.nfiles;
	struct qv_fkeys *fk = calloc(nf ? nf : 1, sizeof(*fk));
	char (*names)[64] = calloc(nf ? nf : 1, sizeof(*names));
	struct qv_node *n;
	int rc = fk && names ? 0 : -ENOMEM;

	if (!rc && (rc = qv_view_dcp_check(g, err, errlen)))
		goto out;
	for (uint32_t k = 1; k <= nf && !rc; k++) {
		file_name(names[k - 1], k, nf);
		n = qv_tree_add(t, dn, names[k - 1], false, &dn->mtime);
		rc = n ? 0 : -ENOMEM;
		if (rc)
			break;
		n->vf.base = g->src;
		fk[k - 1].file = names[k - 1];
		fk[k - 1].node = n;
		rc = build_file(g, p, k, n, &fk[k - 1], err, errlen);
		if (!rc) /* every rank file that holds one of its chunks */
			qv_view_perm_of_sources(n);
	}
	if (!rc) {
		n = qv_tree_add(t, dn, "model.safetensors.index.json", false, &dn->mtime);
		rc = n ? 0 : -ENOMEM;
		if (!rc)
			rc = build_index(fk, nf, n, err, errlen);
	}
	if (!rc)
		rc = metadata_files(t, g, dn);
	if (!rc)
		qv_tree_sort(t, dn);
	if (rc == -ENOMEM)
		qv_err(err, errlen, rc, "out of memory");
out:
	for (uint32_t k = 0; fk && k < nf; k++)
		qv_fkeys_fini(&fk[k]);
	free(fk);
	free(names);
	return rc;
}
