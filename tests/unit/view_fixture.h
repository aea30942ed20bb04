/* view_fixture.h - a tiny hand-written Qwen3-VL-MoE checkpoint and a mount of it, for the view
 * tests: two HF shards, an index, a config and a nested README; reading virtual files back and
 * checking them tensor by tensor against the source bytes. */
#ifndef VIEW_FIXTURE_H
#define VIEW_FIXTURE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "qv_mount.h"
#include "qv_view.h"
#include "util_test.h"

#define F1 "model-00001-of-00002.safetensors"
#define F2 "model-00002-of-00002.safetensors"
#define IDX "model.safetensors.index.json"
#define LAYER "model.language_model.layers.0."
#define E 4 /* experts */
#define CKPT_CONFIG "{\"num_experts\": 4, \"hidden_size\": 4}\n"
#define CKPT_README "# tiny\npassed through byte for byte\n"

/* One tensor a virtual file should hold: where its bytes come from and how it is cut. */
struct want {
	const char *name;
	enum qv_dtype dtype;
	unsigned dsize;
	uint32_t ndim;
	uint64_t shape[3]; /* source shape */
	uint64_t seed, src_begin;
	bool expert;
};

struct vt {
	char *dir;
	struct qv_mount m;
	bool up;
	struct qv_io *io;
	struct qv_rdscratch sc;
	char err[QV_ERRLEN];
};

/* Write text / a safetensors file (data bytes from seed) as dir/name; failures are CHECKs. */
void vt_put(const char *dir, const char *name, const char *text);
void vt_put_st(const char *dir, const char *name, const char *json, uint64_t data, uint64_t seed);
/* Write dir/qwen.safetensors, one Qwen3-VL-MoE expert tensor (U8 [2, 1, 1]): the adapter's
 * rules (renames, dropped *_scale_inv) apply only to a folder that holds one. */
void vt_put_qwen(const char *dir);

/* The standard checkpoint in a fresh temp folder (malloc'd path). File 1 (seed 1): embed
 * [0,60), gate_up [4,4,4] BF16 [60,188), down [4,2,4] BF16 [188,252). File 2 (seed 2): lm_head
 * [0,60), visual [60,68), a _scale_inv [68,72). */
char *vt_make_ckpt(void);

/* Mount dir (taken over: removed by vt_fini) with o; 0 or the qv_mount_init error. */
int vt_mount(struct vt *v, char *dir, const struct qv_mount_opts *o);
void vt_fini(struct vt *v);

/* The node at path ("a/b"), making folders ready on the way; NULL when absent. */
struct qv_node *vt_get(struct vt *v, const char *path);

/* [off, off+len) of file n into buf through qv_mount_reply (copied, never spliced): *got
 * bytes; 0 or -errno. */
int vt_pread(struct vt *v, struct qv_node *n, uint64_t off, size_t len, char *buf, size_t *got);

/* A whole file through qv_mount_reply (at once and in 13-byte pieces, which must agree). */
char *vt_read_all(struct vt *v, struct qv_node *n, size_t *len);

/* Check virtual safetensors file path against want[]: framing, strict parse, names, dtypes,
 * shapes and bytes under slicing (W ranks, rank r; K shards, shard s; W == 0: none). The parse
 * goes to *meta_out when non-NULL (caller frees), else is freed. */
void vt_check_vst(struct vt *v, const char *path, const struct want *want, size_t nwant,
		  uint32_t W, uint32_t r, uint32_t K, uint32_t s, struct qv_st *meta_out);

/* Value of __metadata__ key in st, or NULL. */
const char *vt_meta_get(const struct qv_st *st, const char *key);

/* The root's entry names joined with ','. */
void vt_root_names(struct vt *v, char *out, size_t len);

#endif
