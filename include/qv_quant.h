/* qv_quant.h - what a checkpoint's weights are beyond their names (DESIGN §14): FP8 E4M3
 * weights with block scales (weight_scale_inv) that a view can dequantize, the forms no view
 * computes (named, so a view that would need them refuses), and the per-expert keys of each
 * layer that a view can stack into fused expert tensors. Works on parsed headers; FUSE-free. */
#ifndef QV_QUANT_H
#define QV_QUANT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "qv_cfg.h"
#include "qv_scan.h"
#include "qv_st.h"
#include "qv_util.h"

enum qv_qrole {
	QV_Q_PLAIN = 0, /* shown as stored (renamed, sliced, transposed) */
	QV_Q_FP8,	/* an FP8 weight with block scales: dequantized where the view asks */
	QV_Q_SCALE,	/* the scales of one: dropped with its weight's dequantization */
	QV_Q_STACK,	/* expert 0's gate (or down) weight of a layer: where the fused tensor goes */
	QV_Q_STACKED,	/* another per-expert weight of a layer: inside the fused tensor */
};

/* One tensor of the checkpoint. */
struct qv_qkey {
	const char *name;
	uint32_t node; /* scan node of its file */
	const struct qv_tensor *t;
	enum qv_qrole role;
	int64_t scale; /* QV_Q_FP8 (and per-expert FP8 weights): its scale's entry, else -1 */
	int64_t group; /* per-expert weights: their layer's group, else -1 */
	bool down;     /* per-expert weights: a down_proj (else gate_proj or up_proj) */
};

/* One layer's per-expert weights: entries of E experts' gate_proj, up_proj and down_proj. */
struct qv_qgroup {
	char *fused_gate_up, *fused_down; /* the Hub's names of the fused tensors they make */
	uint64_t E, I, H;
	size_t *gate, *up, *down;
	bool fp8; /* FP8 weights (each has its scale entry) */
};

struct qv_quant {
	struct qv_qkey *k; /* sorted by name, then node */
	size_t nk;
	struct qv_qgroup *g;
	size_t ng;
	unsigned block;	     /* the scales' block edge (128) */
	bool fp8;	     /* some weight is FP8 with block scales */
	char problem[QV_ERRLEN]; /* the first FP8 form no view computes, "" when none */
	char stack_problem[QV_ERRLEN]; /* the first reason the experts cannot be stacked */
};

/* Classify the tensors of the safetensors files st_of[node] (NULL: none) with config c; 0 or
 * -ENOMEM. What cannot be computed is not an error here: q->problem says it, and the view
 * that needs it refuses. */
int qv_quant_load(struct qv_quant *q, const struct qv_scan *sc, struct qv_st *const *st_of,
		  const struct qv_cfg *c);

/* The entry of tensor name (the one in node's file when there are several), or NULL. */
const struct qv_qkey *qv_quant_find(const struct qv_quant *q, const char *name, uint32_t node);

/* Free what qv_quant_load made; safe on a zeroed one. */
void qv_quant_free(struct qv_quant *q);

#endif
