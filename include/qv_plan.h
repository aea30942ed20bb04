/* qv_plan.h - the conversion contract (DESIGN §1): key renaming both ways, exclusion, EP slicing. */
#ifndef QV_PLAN_H
#define QV_PLAN_H

#include <regex.h>
#include <stdbool.h>
#include <stdint.h>

#include "qv_st.h"

enum qv_naming { QV_NAMING_HF = 0, QV_NAMING_NATIVE = 1 };

/* How a fused expert tensor [E, ...] holds each expert (DESIGN §14): the Hub's [H, 2I] /
 * [I, H] (Automodel's native layout too), or nn.Linear's [2I, H] / [H, I], which transformers
 * 5 saves. QV_LAYOUT_ASIS: not known, or (a view's) as the source has it. */
enum qv_layout { QV_LAYOUT_ASIS = 0, QV_LAYOUT_HUB = 1, QV_LAYOUT_LINEAR = 2 };

#define QV_DEFAULT_EXCLUDE ".*_extra_state.*"
#define QV_PLAN_MAX_EP 65536	  /* ep_size and ep_shard_size, before the checkpoint bounds them */
#define QV_PLAN_MAX_FOLDERS 65536 /* rank (and shard) folders of one mount */

/* What the user asked for; ep_size 0 means no slicing. */
struct qv_plan_opts {
	enum qv_naming src, view;
	bool model_prefix;   /* some source key starts with "model." ({P} of §1) */
	const char *exclude; /* Python-style regex, re.match semantics; NULL = default */
	uint32_t ep_size, ep_rank;
	uint32_t shard_size, shard_rank; /* shard_size 0 or 1: no dim-1 cut */
	/* a model other than Qwen3-VL-MoE with stacked experts: its config's expert count E, and
	 * every tensor of 2 or more dimensions named ".mlp.experts.X" (X not an index) whose dim 0
	 * is E is an expert tensor; 0: only the Qwen3-VL-MoE rule */
	uint64_t generic_experts;
	uint64_t hidden, inter;	   /* the config's H and moe I: what tells a layout (0: unstated) */
	enum qv_layout src_layout;  /* for tensors whose shape cannot tell: stated or the writer's */
	enum qv_layout view_layout; /* the view's experts (ASIS: as each source tensor is) */
	bool dequant; /* FP8 weights with block scales shown as BF16, their scales dropped */
	bool stack;   /* a layer's per-expert weights shown as the Hub's two fused tensors */
};

struct qv_plan {
	struct qv_plan_opts o;
	regex_t exclude;
	bool has_exclude;
};

/* A source tensor's cut in the view: dim 0 [start, start+count), dim 1 [d1_start, d1_start+d1_count). */
struct qv_cut {
	uint64_t start, count;
	uint64_t d1_start, d1_count;
	bool sliced;
};

/* True when key names an expert tensor in native naming (drives naming detection). */
bool qv_plan_key_is_native(const char *key);

/* True when key names one of a layer's two expert tensors in the given naming. */
bool qv_plan_expert_in(enum qv_naming naming, const char *key);

/* True when key names one of a layer's two expert tensors, in either naming. */
bool qv_plan_key_is_expert(const char *key);

/* Compile the exclude pattern (Python's re, translated to POSIX ERE; what ERE cannot say, such
 * as \b or look-arounds, is refused) and check the options; 0 or -EINVAL with a reason in err. */
int qv_plan_init(struct qv_plan *p, const struct qv_plan_opts *o, char *err, size_t errlen);

/* Release what qv_plan_init allocated. */
void qv_plan_free(struct qv_plan *p);

/* Map one source key: 1 = kept (*out is a malloc'd view key), 0 = dropped, -ENOMEM.
 * *expert tells whether the tensor is one of a layer's two expert tensors. */
int qv_plan_map_key(const struct qv_plan *p, const char *key, char **out, bool *expert);

/* qv_plan_map_key for tensor t, with the generic stacked-expert rule (generic_experts) too. */
int qv_plan_map_tensor(const struct qv_plan *p, const struct qv_tensor *t, char **out,
		       bool *expert);

/* True when key is a stacked expert tensor's name under the generic rule: it holds
 * ".mlp.experts." followed by a name, not by an expert index. */
bool qv_plan_generic_name(const char *key);

/* Whether expert tensor t's shape fits the Hub's layout and nn.Linear's with H and I
 * (o->hidden, o->inter): both false when it is no 3-dimensional Qwen3-VL-MoE expert tensor
 * or H or I is unstated; both true when H == 2I (gate_up) or H == I (down). */
void qv_plan_layout_fits(const struct qv_plan_opts *o, const struct qv_tensor *t, bool *hub,
			 bool *lin);

/* The layout expert tensor t's shape tells with H and I (o->hidden, o->inter): ASIS when it
 * is no 3-dimensional expert tensor, when H or I is unstated, or when it fits both layouts
 * (H == 2I for gate_up, H == I for down) or neither. */
enum qv_layout qv_plan_layout_told(const struct qv_plan_opts *o, const struct qv_tensor *t);

/* The layout expert tensor t is read in: told by its shape; o->src_layout when the shape fits
 * both; ASIS when it fits neither (shown as stored). */
enum qv_layout qv_plan_layout(const struct qv_plan_opts *o, const struct qv_tensor *t);

/* Expert tensor t as the view shows it into *vt (name and dtype kept): its two last dims
 * swapped, and *transpose set, when its layout and the view's differ. */
void qv_plan_view_tensor(const struct qv_plan_opts *o, const struct qv_tensor *t,
			 struct qv_tensor *vt, bool *transpose);

/* NeMo Automodel's expert range of rank r out of w for n experts. */
void qv_plan_ep_range(uint64_t n, uint32_t w, uint32_t r, uint64_t *start, uint64_t *count);

/* How many plans (rank and shard folders; 1 for one view) the slicing options make: ranks not
 * fixed (all_ranks) and shards not fixed (all_shards) are enumerated. Computed in 64 bits; -EINVAL
 * with the bound in err past QV_PLAN_MAX_FOLDERS. (qv_plan_cut bounds ep_size by the experts.) */
int qv_plan_count(uint32_t ep_size, bool all_ranks, uint32_t shard_size, bool all_shards,
		  size_t *n, char *err, size_t errlen);

/* The cut of an expert tensor t under the plan; 0 or -EINVAL with a reason naming t in err. */
int qv_plan_cut(const struct qv_plan *p, const struct qv_tensor *t, struct qv_cut *c, char *err,
		size_t errlen);

#endif
