/*
 * mkckpt.h - what the files of qvlmoefs-mkckpt share: the command line (mkckpt.c), the
 * Qwen3-VL-MoE schema (mkckpt_qwen.c), the safetensors writer (mkckpt_write.c) and the NeMo
 * Automodel sharded-save writer (mkckpt_sharded.c).
 */
#ifndef MKCKPT_H
#define MKCKPT_H

#include <stddef.h>
#include <stdint.h>

#define PROG "qvlmoefs-mkckpt"
#define NAME_MAX_LEN 128
#define MAX_DIMS 5
#define MAX_DEEPSTACK 8
#define NO_RANK UINT64_MAX	/* --sharded-drop-rank not given */
#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* safetensors dtype enum, in its declaration order: the writer sorts by it, descending. */
enum dtype { DT_BOOL, DT_U8, DT_I8, DT_F8_E5M2, DT_F8_E4M3, DT_I16, DT_U16, DT_F16,
	     DT_BF16, DT_I32, DT_U32, DT_F32, DT_F64, DT_I64, DT_U64 };

/* Everything that decides a tensor shape, plus the shard count. */
struct model {
	uint64_t hidden, layers, heads, kv_heads, head_dim, experts, moe_inter, vocab;
	uint64_t vdepth, vhidden, vinter, vheads, patch, shards;
	uint64_t deepstack[MAX_DEEPSTACK];
	unsigned n_deepstack;
};

enum data_order { ORDER_WRITER, ORDER_NAME, ORDER_REVERSE };

enum { FP8_NONE, FP8_PER_EXPERT, FP8_FUSED };

/* --arch: the model schema (mkckpt_qwen.c for Qwen3-VL-MoE, mkckpt_models.c the others). */
enum arch { ARCH_QWEN, ARCH_LLAMA, ARCH_MOE, ARCH_GPTOSS };

/* A shape as (ndim, dims): SHAPE(e, h, 2 * in). */
#define SHAPE(...) (unsigned)(sizeof((const uint64_t[]){ __VA_ARGS__ }) / sizeof(uint64_t)), \
	(const uint64_t[]){ __VA_ARGS__ }

struct opts {
	struct model m;
	uint64_t seed;
	const char *outdir;
	enum data_order order;
	int native, no_prefix, sparse, unpadded, shuffle, no_metadata;
	int scale_inv, extra_state, no_index;
	int linear; /* --linear-experts: nn.Linear's expert layout, as transformers 5 saves */
	int fp8;    /* --fp8: FP8_PER_EXPERT or FP8_FUSED (0: BF16) */
	/* --sharded-save W (0: a normal checkpoint), --save-shard-size K, --sharded-drop-rank */
	uint64_t save_ranks, save_shard, drop_rank;
	int dense_split, empty_chunks;
	uint64_t dense_dim;	/* --dense-dim: the dimension --dense-split cuts */
	enum arch arch;
};

/*
 * One tensor of the checkpoint, or one rank's chunk of it: shape is what the file holds,
 * whole and start place it in the whole tensor (whole == shape, start == 0 when not cut).
 */
struct tensor {
	char name[NAME_MAX_LEN];
	enum dtype dtype;
	unsigned ndim;
	uint64_t shape[MAX_DIMS];
	uint64_t whole[MAX_DIMS];
	uint64_t start[MAX_DIMS];
	uint64_t nbytes;
	uint64_t shard;		/* 0-based, in the normal mode's --shards cut */
	uint64_t offset;	/* within its file's data section */
};

/* Tensor list; the first failed append sticks in err, so builders need not check each one. */
struct tlist {
	struct tensor *v;
	size_t n, cap;
	int err;
};

/* Growable string; the first failed append sticks in err, checked once at the end. */
struct sbuf {
	char *p;
	size_t len, cap;
	int err;
};

/* mkckpt.c: the command line */
/* Print "PROG: what: strerror(-err)" and return err. */
int fail(const char *what, int err);
/* Print "PROG: what: why (see --help)" and exit 1. */
void __attribute__((noreturn)) usage_error(const char *what, const char *why);

/* mkckpt_qwen.c: the Qwen3-VL-MoE schema */
/* --preset names, NULL-terminated, and their dimensions at the same index. */
extern const char *const preset_names[];
extern const struct model presets[];
/* Usage error for dimensions no loader could use; fix up vision heads and deepstack taps. */
void check_model(struct model *m);
/* Append every tensor of the checkpoint to tl in module order; 0 or tl->err. */
int build_tensors(struct tlist *tl, const struct opts *o);
/* Attention and norms of decoder layer b, in module order (every architecture's layers). */
void add_attention(struct tlist *tl, const struct model *m, const char *b);
/* Write config.json for o's model into dirfd; failures are reported. */
int write_config(int dirfd, const struct opts *o);
/* Append a tensor with a printf-built name; shape x dtype size must fit in 64 bits. */
void __attribute__((format(printf, 5, 6)))
tl_add(struct tlist *tl, enum dtype dt, unsigned ndim, const uint64_t *shape, const char *fmt, ...);

/* mkckpt_models.c: --arch llama|moe|gptoss */
/* Append every tensor of o->arch's model to tl in module order; 0 or tl->err. */
int build_other(struct tlist *tl, const struct opts *o);
/* Write config.json of a model of arch a into dirfd; failures are reported. */
int write_config_other(int dirfd, const struct model *m, enum arch a);
/* Write the tokenizer and generation files into dirfd; failures are reported. */
int write_static_files(int dirfd);

/* mkckpt_write.c: the safetensors writer */
/* Bytes per element of each enum dtype. */
extern const unsigned char dt_size[DT_U64 + 1];
/* Append printf-formatted text to sb; a failure only sets sb->err. */
void __attribute__((format(printf, 2, 3))) sb_printf(struct sbuf *sb, const char *fmt, ...);
/* qsort comparator of struct tensor pointers by name, bytewise. */
int cmp_name(const void *a, const void *b);
/* Sort ts into the file's data order and set packed offsets from 0; returns the data length. */
uint64_t order_shard(struct tensor **ts, size_t n, enum data_order order);
/* Set each tensor's shard: n non-empty runs of the list of roughly total / n bytes each. */
void assign_shards(struct tlist *tl, uint64_t n, uint64_t total);
/* Write dirfd/fname holding ts[0..n) as ordered by order_shard; meta: extra __metadata__. */
int write_tensor_file(int dirfd, const char *fname, struct tensor **ts, size_t n,
		      uint64_t data_len, const char *meta, const struct opts *o);
/* Create or replace dirfd/fname holding sb's text; failures are reported. */
int write_text(int dirfd, const char *fname, const struct sbuf *sb);
/* Write the normal checkpoint: shards, index, config and static files; failures are reported. */
int write_checkpoint(int dirfd, struct tlist *tl, uint64_t total, const struct opts *o);

/* mkckpt_sharded.c: --sharded-save */
/* Usage error for sharded-save options that cannot describe a save. */
void check_sharded(const struct opts *o);
/* Write the per-rank files and .hf_metadata/; failures are reported. */
int write_sharded_save(int dirfd, const struct tlist *tl, const struct opts *o);

#endif
