/* qv_gen.h - one generation of the source: what a scan and a strict parse of every header
 * yield, and the plans (naming, slicing) of the view built from it. FUSE-free. */
#ifndef QV_GEN_H
#define QV_GEN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "qv_cfg.h"
#include "qv_dcp.h"
#include "qv_plan.h"
#include "qv_quant.h"
#include "qv_scan.h"
#include "qv_st.h"
#include "qv_util.h"
#include "qv_vfile.h"

/* What one generation's scan and plans are made with: the mount's options that gen reads
 * (struct qv_mount_opts' gen, filled by opts from the command line). */
struct qv_gen_opts {
	bool view_set; /* else the other naming than the source's */
	enum qv_naming view;
	enum qv_layout expert_layout; /* the HF view's fused experts (ASIS: as the source's) */
	enum qv_layout source_layout; /* the source's, where shapes cannot tell (ASIS: not said) */
	bool dequant; /* -o dequant=bf16: an HF view of FP8 weights in BF16 (native: always) */
	const char *exclude;
	uint32_t ep_size, ep_rank;
	bool ep_rank_set;
	uint32_t shard_size, shard_rank;
	bool shard_rank_set;
	uint64_t max_file; /* -o shard_size: consolidated files of a sharded save (0: 5 GB) */
	bool allow_empty;  /* -o allow_empty: a source without *.safetensors is no mistake */
	/* tests only (QVLMOEFS_TEST_FAULTS scan_pause_ms=N): a pause after each scan, so a test
	 * can swap a file between the scan and the opens; here as only gen sees that moment */
	unsigned scan_pause_ms;
};

struct qv_gen {
	struct qv_scan scan;
	struct qv_source *src; /* one per scanned regular file: src[i] for scan node src_of[i] */
	size_t nsrc;
	uint32_t *src_of;     /* scan node -> source index (UINT32_MAX for folders) */
	struct qv_st **st_of; /* scan node -> parsed header for *.safetensors, else NULL */
	enum qv_naming src_naming;
	bool model_prefix;
	uint64_t n_experts;    /* dim 0 of the first expert tensor: the checkpoint's expert count */
	bool qwen_experts;     /* ... found by the Qwen3-VL-MoE rule */
	bool generic;	       /* ... found by the generic stacked-expert rule (config's count) */
	struct qv_cfg cfg;     /* config.json (.hf_metadata/'s for a sharded save) */
	uint64_t hidden, inter; /* H and moe I: the config's, else what a layer's shapes say */
	enum qv_layout writer;	/* the layout every told expert tensor has (ASIS: none, mixed) */
	struct qv_quant quant;	/* FP8 weights and per-expert keys (none for a sharded save) */
	bool sharded;	       /* the root is an Automodel per-rank sharded save ... */
	struct qv_dcp dcp;     /* ... and these are its consolidated tensors */
	struct qv_plan *plans; /* one view: plans[0]; one folder per rank: one plan per folder */
	uint64_t *shared; /* -o ep_shared: scan node -> inode of the file every rank folder lists
			   * (a pass-through file, the dense part of a safetensors file), else 0 */
	size_t nplans;
	struct qv_gen *prev; /* the next older generation still held */
	/* Holds on this generation: 1 while it is the newest, one per kernel lookup of one of its
	 * nodes, one per open file, one per request using it; freed (with its nodes) at 0. */
	atomic_uint_least64_t refs;
};

/* Scan src, open and strictly parse every safetensors header, detect the naming, make the
 * plans for options o; 0 or -errno with one line in err naming the file and the reason. */
int qv_gen_load(struct qv_gen *g, const char *src, const struct qv_gen_opts *o, char *err,
		size_t errlen);

/* Free a generation (closes its source files); safe on a zeroed or half-loaded one. */
void qv_gen_free(struct qv_gen *g);

/* Call fn(arg, t, si) for every tensor the view shows from g: a sharded save's consolidated
 * ones (si 0), then each safetensors file's (si its scan node; a sharded save's rank files
 * left out), until fn returns non-zero, which is returned; else 0. */
int qv_gen_each_tensor(const struct qv_gen *g,
		       int (*fn)(void *arg, const struct qv_tensor *t, uint32_t si), void *arg);

/* True when the options make one folder per rank (and shard) instead of one view. */
bool qv_gen_multi(const struct qv_gen_opts *o);

#endif
