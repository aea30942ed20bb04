/* qv_view_dcp.h - the consolidated view of a NeMo Automodel per-rank sharded save: whole
 * tensors assembled from the ranks' chunks, built beside the rest of a view. FUSE-free. */
#ifndef QV_VIEW_DCP_H
#define QV_VIEW_DCP_H

#include <stddef.h>

#include "qv_gen.h"
#include "qv_plan.h"
#include "qv_tree.h"

/* Into tree t, the consolidated view of a sharded save at folder dn: model-0000k-of-0000N
 * .safetensors assembled from the rank files' chunks, their index, and .hf_metadata's files. */
int qv_view_dcp(struct qv_tree *t, struct qv_gen *g, const struct qv_plan *p, struct qv_node *dn,
		char *err, size_t errlen);

/* -EEXIST, naming both, when a file beside the rank files of g's sharded save has the name of
 * a consolidated file (every folder of a view has unique names); else 0. */
int qv_view_dcp_check(const struct qv_gen *g, char *err, size_t errlen);

#endif
