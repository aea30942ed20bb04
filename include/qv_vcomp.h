/* qv_vcomp.h - what a view computes (DESIGN §14): for each source tensor, whether the view
 * shows it as stored, leaves it out (a scale or per-expert weight that went into a computed
 * tensor), or computes it (transposed to the view's expert layout, FP8 dequantized to BF16,
 * per-expert weights stacked into the Hub's fused tensors), and the computed segment that
 * makes it under a rank's cut. FUSE-free. */
#ifndef QV_VCOMP_H
#define QV_VCOMP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "qv_gen.h"
#include "qv_hdr.h"
#include "qv_plan.h"
#include "qv_quant.h"
#include "qv_st.h"
#include "qv_vfile.h"

enum qv_vhow {
	QV_VC_STORED,	 /* bytes as stored (renamed, sliced) */
	QV_VC_SKIP,	 /* not in the view: it is inside another tensor's computation */
	QV_VC_TRANSPOSE, /* a 16-bit fused expert tensor in the other layout */
	QV_VC_DEQUANT,	 /* an FP8 weight (fused experts: and maybe transposed) */
	QV_VC_STACK,	 /* expert 0's weight: the layer's fused tensor */
};

/* How one source tensor is shown. */
struct qv_vcsrc {
	enum qv_vhow how;
	struct qv_tensor shown; /* its name before renaming (the Hub's fused name for a stack),
				 * dtype and shape in the view, before any cut */
	const struct qv_tensor *t;
	const struct qv_qkey *qk; /* its entry in g->quant, or NULL */
	bool transpose;		  /* each expert's matrix transposed */
};

/* How tensor t of scan node si is shown under plan p (of generation g). */
void qv_vcomp_how(const struct qv_gen *g, const struct qv_plan *p, uint32_t si,
		  const struct qv_tensor *t, struct qv_vcsrc *vs);

/* How tensor t of scan node si (0: a sharded save's consolidated tensor) is shown under plan
 * p, and its view key: 1 with *vs, *key (malloc'd) and *expert (plan's expert rule); 0 when
 * the view leaves it out (its key dropped, or inside another tensor's computation); -ENOMEM. */
int qv_vcomp_key(const struct qv_gen *g, const struct qv_plan *p, uint32_t si,
		 const struct qv_tensor *t, struct qv_vcsrc *vs, char **key, bool *expert);

/* The computed segment *s (src QV_SEG_COMPUTED, its comp the caller's to free or hand to a
 * vfile; len 0 and no comp for an empty cut) and view tensor *vt (name left NULL) of vs, a
 * computed one, under cut c of vs->shown (for a non-expert tensor: c zeroed); 0, -ENOMEM, or
 * -EINVAL with the reason in why (a cut the scale blocks cannot follow). */
int qv_vcomp_build(const struct qv_gen *g, const struct qv_vcsrc *vs, uint32_t si,
		   const struct qv_cut *c, struct qv_vtensor *vt, struct qv_seg *s, char *why,
		   size_t wl);

/* A sharded save's consolidated fused expert tensor x ([E, A, B] per expert across the ranks'
 * chunks, 16-bit) shown transposed ([E, B, A]) under cut c of the view's shape: *vt (name left
 * NULL) and a computed segment *s of one block per expert of the cut, an operation per chunk
 * holding part of that expert (its rows of A, the cut's columns of B). 0, -ENOMEM, or -EINVAL
 * with the reason in why. */
int qv_vcomp_chunks(const struct qv_dtensor *x, const struct qv_cut *c, struct qv_vtensor *vt,
		    struct qv_seg *s, char *why, size_t wl);

#endif
