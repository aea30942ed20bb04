/* qv_dcp.h - NeMo Automodel's per-rank sharded saves (shard-NNNNN-model-*.safetensors with
 * DCP_SHARDING_INFO): every tensor assembled from its chunks, with the coverage checked.
 * FUSE-free. */
#ifndef QV_DCP_H
#define QV_DCP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "qv_scan.h"
#include "qv_st.h"

/* One rank's piece of a tensor: a box of the global tensor at off, of shape shape. */
struct qv_chunk {
	uint32_t src;  /* source index (in the generation's source table) */
	uint64_t soff; /* where the chunk's bytes start in that file */
	uint64_t off[QV_ST_MAX_DIMS], shape[QV_ST_MAX_DIMS];
};

/* A consolidated tensor. */
struct qv_dtensor {
	char *name;
	enum qv_dtype dtype;
	uint32_t ndim;
	uint64_t shape[QV_ST_MAX_DIMS]; /* max(offset + chunk shape) per dimension */
	struct qv_chunk *c;
	size_t nc;
	uint32_t file; /* consolidated file index, 1-based */
};

struct qv_dcp {
	struct qv_dtensor *t; /* sorted by name */
	size_t nt;
	uint32_t nfiles;
	uint32_t map_node; /* scan node of .hf_metadata/fqn_to_file_index_mapping.json, or 0 */
	char **absent;	   /* names the mapping has and no rank file holds (for qv_dcpcheck) */
	size_t nabsent;
};

/* True when file name (no folder) is a rank file: shard-NNNNN-model-NNNNN-of-NNNNN.safetensors. */
bool qv_dcp_is_rank_file(const char *name);

/* The highest rank file number at the scan's root (0: none); into next (when not NULL) the
 * name of the rank file that would come after it, for "likely missing" messages. */
unsigned qv_dcp_rank_files(const struct qv_scan *sc, char *next, size_t len);

/* Whether the scan's root holds a sharded save (a rank file whose metadata has
 * DCP_SHARDING_INFO). */
bool qv_dcp_detect(const struct qv_scan *sc, struct qv_st *const *st_of);

/* Assemble every tensor from the root's rank files (src_of maps scan nodes to sources) and
 * check that its chunks tile it with one dtype; name files from .hf_metadata's mapping, else
 * pack in name order into files of at most max_file bytes. 0 or -errno with one line in err
 * naming the file or tensor and the region. */
int qv_dcp_build(const struct qv_scan *sc, struct qv_st *const *st_of, const uint32_t *src_of,
		 uint64_t max_file, struct qv_dcp *out, char *err, size_t errlen);

/* Free what qv_dcp_build allocated. */
void qv_dcp_free(struct qv_dcp *d);

#endif
