/* qv_dcpcheck.h - is a consolidated sharded save complete? The chunks' tiling (qv_dcp_build)
 * cannot see a missing last rank: its tensors just look smaller. These are the other signals a
 * save carries: the tensors .hf_metadata/fqn_to_file_index_mapping.json and
 * fqn_to_dtype_mapping.json name, and the dimensions .hf_metadata/config.json fixes.
 * FUSE-free. */
#ifndef QV_DCPCHECK_H
#define QV_DCPCHECK_H

#include <stddef.h>

#include "qv_cfg.h"
#include "qv_dcp.h"
#include "qv_scan.h"

/* 0 when every signal agrees with the consolidated tensors of d, else -EINVAL with one line
 * in err naming the missing or short tensor, the expected and found size and the rank file
 * that is likely missing; a fqn_to_dtype_mapping.json that is there but cannot be read or is
 * no JSON object fails too (-errno or -EINVAL, the line naming it and why). */
int qv_dcpcheck(const struct qv_dcp *d, const struct qv_scan *sc, const struct qv_cfg *c,
		char *err, size_t errlen);

#endif
