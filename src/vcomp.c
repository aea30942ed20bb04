/* vcomp.c - the computed tensors of a view: which source tensors go into them, and the
 * operations (comp) that make each block (an expert of the rank's cut, or a band of rows)
 * from the source matrices that hold it. */
#include "qv_vcomp.h"
#include "qv_comp.h"

#include <errno.h>
#include <string.h>

/* Bytes a band of rows of a dequantized weight aims at: whole scale rows, about this much. */
#define BAND_BYTES (2u << 20)

void qv_vcomp_how(const struct qv_gen *g, const struct qv_plan *p, uint32_t si,
		  const struct qv_tensor *t, struct qv_vcsrc *vs)
{
	const struct qv_quant *q = &g->quant;
	const struct qv_qkey *qk = q->nk ? qv_quant_find(q, t->name, si) : NULL;
	struct qv_tensor tr;

	*vs = (struct qv_vcsrc){ .how = QV_VC_STORED, .shown = *t, .t = t };
	vs->qk = qk && qk->t == t ? qk : NULL; /* a name twice: the other file's is not this */
	qk = vs->qk;
	if (p->o.stack && qk && (qk->role == QV_Q_STACK || qk->role == QV_Q_STACKED)) {
		const struct qv_qgroup *gr = &q->g[qk->group];

		vs->how = qk->role == QV_Q_STACK ? QV_VC_STACK : QV_VC_SKIP;
		vs->shown.name = qk->down ? gr->fused_down : gr->fused_gate_up;
		vs->shown.dtype = gr->fp8 ? QV_DT_BF16 : t->dtype;
		vs->shown.ndim = 3;
		vs->shown.shape[0] = gr->E;
		vs->shown.shape[1] = qk->down ? gr->I : gr->H;
		vs->shown.shape[2] = qk->down ? gr->H : 2 * gr->I;
		return;
	}
	if (p->o.dequant && qk && qk->role == QV_Q_SCALE) {
		vs->how = QV_VC_SKIP;
		return;
	}
	if (p->o.dequant && qk && qk->scale >= 0) {
		vs->how = QV_VC_DEQUANT;
		vs->shown.dtype = QV_DT_BF16;
	}
	qv_plan_view_tensor(&p->o, &vs->shown, &tr, &vs->transpose);
	if (vs->transpose) {
		vs->shown = tr;
		if (vs->how == QV_VC_STORED)
			vs->how = QV_VC_TRANSPOSE;
	}
}

int qv_vcomp_key(const struct qv_gen *g, const struct qv_plan *p, uint32_t si,
		 const struct qv_tensor *t, struct qv_vcsrc *vs, char **key, bool *expert)
{
	qv_vcomp_how(g, p, si, t, vs);
	if (vs->how == QV_VC_SKIP) {
		*key = NULL;
		*expert = false;
		return 0;
	}
	return qv_plan_map_tensor(p, &vs->shown, key, expert);
}

/* Where a tensor's bytes start in its source file. */
static uint64_t data_off(const struct qv_gen *g, uint32_t node, const struct qv_tensor *t)
{
	return 8 + g->st_of[node]->hdr_len + t->begin;
}

/* One matrix operation: rows [r0, r0 + rows) x columns [c0, c0 + cols) of matrix mat of
 * weight w (node, tensor t; its last two dims are each matrix; FP8 with its scale entry sk,
 * 16-bit without), into the block at dst_off with row stride dst_stride, transposed or not
 * (16-bit: always). -EINVAL when an FP8 window does not start on a scale block. */
static int mat_op(const struct qv_gen *g, uint32_t node, const struct qv_tensor *t,
		  const struct qv_qkey *sk, bool transpose, uint64_t mat, uint64_t r0, uint64_t rows,
		  uint64_t c0, uint64_t cols, uint64_t dst_off, uint64_t dst_stride,
		  struct qv_xop *op)
{
	uint64_t R = t->shape[t->ndim - 2], C = t->shape[t->ndim - 1], es = sk ? 1 : 2;
	unsigned b = g->quant.block;

	*op = (struct qv_xop){ .kind = sk ? (transpose ? QV_XOP_DQ_T : QV_XOP_DQ) : QV_XOP_T16,
			       .src = g->src_of[node],
			       .soff = data_off(g, node, t) + ((mat * R + r0) * C + c0) * es,
			       .sstride = C * es, .rows = rows, .cols = cols, .dst_off = dst_off,
			       .dst_stride = dst_stride };
	if (sk) {
		uint64_t sr = (R + b - 1) / b, sc = (C + b - 1) / b;

		if (r0 % b || c0 % b)
			return -EINVAL;
		op->block = b;
		op->scale_src = g->src_of[sk->node];
		op->scale_off = data_off(g, sk->node, sk->t) + ((mat * sr + r0 / b) * sc + c0 / b) * 4;
		op->scale_stride = sc * 4;
	}
	return 0;
}

/* The scale entry of quant entry k (NULL: not FP8). */
static const struct qv_qkey *scale_of(const struct qv_gen *g, const struct qv_qkey *k)
{
	return k && k->scale >= 0 ? &g->quant.k[k->scale] : NULL;
}

/* A fused expert tensor [E, A, B] (16-bit, or FP8), per expert of the cut: the view's rows
 * [d1_start, +d1_count) of [A, B], or, transposed, of [B, A] (columns of the source). */
static int fused(const struct qv_gen *g, const struct qv_vcsrc *vs, uint32_t si,
		 const struct qv_cut *c, struct qv_comp *cp)
{
	const struct qv_tensor *t = vs->t;
	const struct qv_qkey *sk = vs->how == QV_VC_DEQUANT ? scale_of(g, vs->qk) : NULL;
	uint64_t A = t->shape[1], B = t->shape[2];
	int rc = 0;

	for (uint64_t k = 0; k < c->count && !rc; k++)
		rc = vs->transpose ?
			     mat_op(g, si, t, sk, true, c->start + k, 0, A, c->d1_start, c->d1_count, 0,
				    A, &cp->ops[k]) :
			     mat_op(g, si, t, sk, false, c->start + k, c->d1_start, c->d1_count, 0, B,
				    0, B, &cp->ops[k]);
	return rc;
}

/* A weight of no expert [R, C] (or [N, R, C], a matrix per block), FP8: bands of whole scale
 * rows. */
static int bands(const struct qv_gen *g, const struct qv_vcsrc *vs, uint32_t si, uint64_t rpb,
		 struct qv_comp *cp)
{
	const struct qv_tensor *t = vs->t;
	uint64_t R = t->shape[t->ndim - 2], C = t->shape[t->ndim - 1];
	int rc = 0;

	for (uint64_t k = 0; k < cp->nblk && !rc; k++) {
		uint64_t mat = t->ndim == 3 ? k : 0, r0 = t->ndim == 3 ? 0 : k * rpb;
		uint64_t rows = t->ndim == 3 ? R : (R - r0 < rpb ? R - r0 : rpb);

		rc = mat_op(g, si, t, scale_of(g, vs->qk), false, mat, r0, rows, 0, C, 0, C,
			    &cp->ops[k]);
	}
	return rc;
}

/* A layer's per-expert weights stacked, per expert of the cut: gate_up [H, 2I] from gateᵀ and
 * upᵀ ([I, H] each), the view's rows [d1_start, +d1_count) of H; down [I, H] from downᵀ
 * ([H, I]), rows of I. */
static int stacked(const struct qv_gen *g, const struct qv_vcsrc *vs, const struct qv_cut *c,
		   struct qv_comp *cp)
{
	const struct qv_quant *q = &g->quant;
	const struct qv_qgroup *gr = &q->g[vs->qk->group];
	int rc = 0;

	for (uint64_t k = 0; k < c->count && !rc; k++) {
		uint64_t j = c->start + k;
		const struct qv_qkey *w[2] = { &q->k[vs->qk->down ? gr->down[j] : gr->gate[j]],
					       vs->qk->down ? NULL : &q->k[gr->up[j]] };

		for (uint32_t h = 0; h < cp->nops && !rc; h++)
			rc = mat_op(g, w[h]->node, w[h]->t, scale_of(g, w[h]), true, 0, 0,
				    vs->qk->down ? gr->H : gr->I, c->d1_start, c->d1_count, h * gr->I,
				    vs->shown.shape[2], &cp->ops[k * cp->nops + h]);
	}
	return rc;
}

int qv_vcomp_build(const struct qv_gen *g, const struct qv_vcsrc *vs, uint32_t si,
		   const struct qv_cut *c, struct qv_vtensor *vt, struct qv_seg *s, char *why,
		   size_t wl)
{
	const struct qv_tensor *sh = &vs->shown;
	bool experts = c && (vs->how != QV_VC_DEQUANT || sh->ndim == 3);
	uint64_t row = 2, rpb = 0, nblk;
	struct qv_comp *cp;
	int rc;

	*vt = (struct qv_vtensor){ .dtype = sh->dtype, .ndim = sh->ndim };
	memcpy(vt->shape, sh->shape, sizeof(vt->shape));
	if (c) {
		vt->shape[0] = c->count;
		vt->shape[1] = c->d1_count;
	}
	for (uint32_t d = 1; d < sh->ndim; d++)
		row *= vt->shape[d];
	vt->size = sh->ndim ? vt->shape[0] * row : 2;
	*s = (struct qv_seg){ .len = vt->size };
	if (!vt->size)
		return 0;
	if (experts || sh->ndim == 3) {
		nblk = vt->shape[0];
	} else { /* bands of rows of a 2-dimensional weight */
		rpb = BAND_BYTES / row / g->quant.block * g->quant.block;
		rpb = rpb ? rpb : g->quant.block;
		nblk = (vt->shape[0] + rpb - 1) / rpb;
		row *= rpb;
	}
	cp = qv_comp_new(nblk, row, vs->how == QV_VC_STACK && !vs->qk->down ? 2 : 1);
	if (!cp)
		return -ENOMEM;
	cp->len = vt->size;
	if (vs->how == QV_VC_STACK)
		rc = stacked(g, vs, c, cp);
	else if (experts)
		rc = fused(g, vs, si, c, cp);
	else
		rc = bands(g, vs, si, rpb, cp);
	if (rc) {
		qv_comp_free(cp);
		return qv_err(why, wl, rc, "tensor \"%s\": the cut at %llu of dim 1 is not on a "
			      "%u-element boundary of its FP8 scale blocks", sh->name,
			      (unsigned long long)(c ? c->d1_start : 0), g->quant.block);
	}
	s->src = QV_SEG_COMPUTED;
	s->comp = cp;
	rc = qv_comp_check(cp);
	return rc ? qv_err(why, wl, rc, "tensor \"%s\": computed blocks out of bounds (a bug)",
			   sh->name) : 0;
}

/* Whether chunk ch holds part of expert e and of columns [c0, c1) of B. */
static bool chunk_has(const struct qv_chunk *ch, uint64_t e, uint64_t c0, uint64_t c1)
{
	return e >= ch->off[0] && e < ch->off[0] + ch->shape[0] && ch->off[2] < c1 &&
	       ch->off[2] + ch->shape[2] > c0 && ch->shape[1];
}

int qv_vcomp_chunks(const struct qv_dtensor *x, const struct qv_cut *c, struct qv_vtensor *vt,
		    struct qv_seg *s, char *why, size_t wl)
{
	uint64_t A = x->shape[1], c0 = c->d1_start, c1 = c->d1_start + c->d1_count;
	uint32_t nops = 0;
	struct qv_comp *cp;

	if (x->ndim != 3 || qv_dtype_size(x->dtype) != 2)
		return qv_err(why, wl, -EINVAL, "tensor \"%s\": its layout differs from the view's, "
			      "and only 3-dimensional 16-bit tensors are transposed (it is %s)",
			      x->name, qv_dtype_name(x->dtype));
	*vt = (struct qv_vtensor){ .dtype = x->dtype, .ndim = 3,
				   .shape = { c->count, c->d1_count, A },
				   .size = c->count * c->d1_count * A * 2 };
	*s = (struct qv_seg){ .len = vt->size };
	if (!vt->size)
		return 0;
	for (uint64_t k = 0; k < c->count; k++) { /* the most chunks any expert is cut into */
		uint32_t n = 0;

		for (size_t i = 0; i < x->nc; i++)
			n += chunk_has(&x->c[i], c->start + k, c0, c1);
		nops = n > nops ? n : nops;
	}
	cp = qv_comp_new(c->count, c->d1_count * A * 2, nops);
	if (!cp)
		return -ENOMEM;
	for (uint64_t k = 0; k < c->count; k++) {
		uint64_t e = c->start + k;
		uint32_t j = 0;

		for (size_t i = 0; i < x->nc; i++) { /* the rest of the block's ops stay empty */
			const struct qv_chunk *ch = &x->c[i];
			uint64_t a = ch->off[2] > c0 ? ch->off[2] : c0;
			uint64_t b = ch->off[2] + ch->shape[2] < c1 ? ch->off[2] + ch->shape[2] : c1;

			if (!chunk_has(ch, e, c0, c1))
				continue;
			cp->ops[k * nops + j++] = (struct qv_xop){
				.kind = QV_XOP_T16, .src = ch->src,
				.soff = ch->soff + ((e - ch->off[0]) * ch->shape[1] * ch->shape[2] +
						    (a - ch->off[2])) * 2,
				.sstride = ch->shape[2] * 2, .rows = ch->shape[1], .cols = b - a,
				.dst_off = (a - c0) * A + ch->off[1], .dst_stride = A };
		}
	}
	s->src = QV_SEG_COMPUTED;
	s->comp = cp;
	if (qv_comp_check(cp)) {
		qv_comp_free(cp);
		*s = (struct qv_seg){ 0 };
		return qv_err(why, wl, -EINVAL, "tensor \"%s\": computed blocks out of bounds (a "
			      "bug)", x->name);
	}
	return 0;
}
