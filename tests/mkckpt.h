/*
 * mkckpt.h - what qvlmoefs-mkckpt's checkpoint writer (mkckpt.c) shares with its NeMo
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

struct opts {
	struct model m;
	uint64_t seed;
	const char *outdir;
	enum data_order order;
	int native, no_prefix, sparse, unpadded, shuffle, no_metadata;
	int scale_inv, extra_state, no_index;
	/* --sharded-save W (0: a normal checkpoint), --save-shard-size K, --sharded-drop-rank */
	uint64_t save_ranks, save_shard, drop_rank;
	int dense_split;
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

/* mkckpt.c */
int fail(const char *what, int err);
void __attribute__((noreturn)) usage_error(const char *what, const char *why);
void __attribute__((format(printf, 2, 3))) sb_printf(struct sbuf *sb, const char *fmt, ...);
int cmp_name(const void *a, const void *b);
uint64_t order_shard(struct tensor **ts, size_t n, enum data_order order);
int write_tensor_file(int dirfd, const char *fname, struct tensor **ts, size_t n,
		      uint64_t data_len, const char *meta, const struct opts *o);
int write_text(int dirfd, const char *fname, const struct sbuf *sb);
int write_config(int dirfd, const struct model *m);
int write_static_files(int dirfd);

/* mkckpt_sharded.c */
void check_sharded(const struct opts *o);
int write_sharded_save(int dirfd, const struct tlist *tl, const struct opts *o);

#endif
