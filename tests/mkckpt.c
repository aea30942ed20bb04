/*
 * mkckpt.c - qvlmoefs-mkckpt: write a synthetic Qwen3-VL-MoE safetensors checkpoint with the
 * real key schema and shapes, plus the writer quirks the filesystem must survive (unpadded
 * headers, shuffled keys, no __metadata__, other data orders, sparse files).
 * Byte i of tensor KEY is byte i % 8 (little-endian) of splitmix64(seed ^ fnv1a64(KEY) ^ i / 8),
 * so a test can recompute any byte without reading the generator's output.
 * --sharded-save writes the same tensors as a NeMo Automodel per-rank save (mkckpt_sharded.c).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mkckpt.h"

#define WBUF_SIZE (4u << 20)
#define POS_EMBED_ROWS 2304	/* 48 x 48 learned grid, as in the real vision tower */
#define MERGE 4			/* spatial_merge_size 2, squared */
#define DIM_MAX UINT32_MAX	/* products of two dimensions (q_proj rows) then fit in 64 bits */

static const char *const dt_name[] = { "BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "I16", "U16",
				       "F16", "BF16", "I32", "U32", "F32", "F64", "I64", "U64" };
static const unsigned char dt_size[] = { 1, 1, 1, 1, 1, 2, 2, 2, 2, 4, 4, 4, 8, 8, 8 };

/* --preset values, in the same order as presets[]. */
static const char *const preset_names[] = { "tiny", "30b-a3b", "235b-a22b", NULL };
static const struct model presets[] = {
	{ .hidden = 48, .layers = 2, .heads = 4, .kv_heads = 2, .head_dim = 16, .experts = 8,
	  .moe_inter = 40, .vocab = 256, .vdepth = 2, .vhidden = 32, .vinter = 64, .vheads = 2,
	  .patch = 16, .shards = 2, .deepstack = { 0, 1 }, .n_deepstack = 2 },
	{ .hidden = 2048, .layers = 48, .heads = 32, .kv_heads = 4, .head_dim = 128, .experts = 128,
	  .moe_inter = 768, .vocab = 151936, .vdepth = 27, .vhidden = 1152, .vinter = 4304,
	  .vheads = 16, .patch = 16, .shards = 13, .deepstack = { 8, 16, 24 }, .n_deepstack = 3 },
	{ .hidden = 4096, .layers = 94, .heads = 64, .kv_heads = 4, .head_dim = 128, .experts = 128,
	  .moe_inter = 1536, .vocab = 151936, .vdepth = 27, .vhidden = 1152, .vinter = 4304,
	  .vheads = 16, .patch = 16, .shards = 96, .deepstack = { 8, 16, 24 }, .n_deepstack = 3 },
};

/* Command-line options that map straight onto a field: name -> offset. */
struct field_opt {
	const char *opt;
	size_t off;
};

#define DIM(o, f) { o, offsetof(struct model, f) }
static const struct field_opt dim_opts[] = {
	DIM("layers", layers), DIM("hidden", hidden), DIM("experts", experts),
	DIM("moe-inter", moe_inter), DIM("vocab", vocab), DIM("heads", heads),
	DIM("kv-heads", kv_heads), DIM("head-dim", head_dim), DIM("vision-depth", vdepth),
	DIM("vision-hidden", vhidden), DIM("vision-inter", vinter), DIM("shards", shards),
};

#define FLAG(o, f) { o, offsetof(struct opts, f) }
static const struct field_opt flag_opts[] = {
	FLAG("no-prefix", no_prefix), FLAG("sparse", sparse), FLAG("unpadded", unpadded),
	FLAG("shuffle-keys", shuffle), FLAG("no-metadata", no_metadata),
	FLAG("scale-inv", scale_inv), FLAG("extra-state", extra_state), FLAG("no-index", no_index),
	FLAG("dense-split", dense_split),
};

/* Output buffer for one file: tensor bytes are generated into it and written in big runs. */
struct wbuf {
	int fd;
	unsigned char *p;
	size_t len;
};

/* Print the one-line error and hand err back, so callers can "return fail(...)". */
int fail(const char *what, int err)
{
	fprintf(stderr, PROG ": %s: %s\n", what, strerror(-err));
	return err;
}

/* Report a usage error and exit: bad options leave nothing to clean up. */
void __attribute__((noreturn)) usage_error(const char *what, const char *why)
{
	fprintf(stderr, PROG ": %s: %s (see --help)\n", what, why);
	exit(1);
}

static uint64_t splitmix64(uint64_t x)
{
	uint64_t z = x + 0x9e3779b97f4a7c15ULL;

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static uint64_t fnv1a64(const char *s)
{
	uint64_t h = 0xcbf29ce484222325ULL;

	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 0x100000001b3ULL;
	return h;
}

/* Store little-endian whatever the host is, as one unaligned store (the byte loop is not). */
static void put_le64(unsigned char *p, uint64_t v)
{
	v = htole64(v);
	memcpy(p, &v, sizeof(v));
}

/* Append formatted text (measure, grow, print); on failure only sb->err changes. */
void __attribute__((format(printf, 2, 3))) sb_printf(struct sbuf *sb, const char *fmt, ...)
{
	size_t cap = sb->cap ? sb->cap : 4096;
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (sb->err || n < 0)
		return (void)(sb->err = sb->err ? sb->err : -EINVAL);
	while (cap - sb->len <= (size_t)n)
		cap *= 2;
	if (cap != sb->cap) {
		char *p = realloc(sb->p, cap);

		if (!p)
			return (void)(sb->err = -ENOMEM);
		sb->p = p;
		sb->cap = cap;
	}
	va_start(ap, fmt);
	sb->len += (size_t)vsnprintf(sb->p + sb->len, cap - sb->len, fmt, ap);
	va_end(ap);
}

/* Write all of buf, riding out short writes and signals. */
static int write_full(int fd, const void *buf, size_t len)
{
	const char *p = buf;

	while (len) {
		ssize_t n = write(fd, p, len);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static int wb_flush(struct wbuf *wb)
{
	int err = write_full(wb->fd, wb->p, wb->len);

	wb->len = 0;
	return err;
}

/* Generate bytes [from, from + len) of the stream whose words are splitmix64(base ^ j). */
static int wb_bytes(struct wbuf *wb, uint64_t base, uint64_t from, uint64_t len)
{
	while (len) {
		size_t room = WBUF_SIZE - wb->len, head = (size_t)(from % 8), n;
		unsigned char *dst = wb->p + wb->len;
		uint64_t j = from / 8;

		if (room < 8) {
			int err = wb_flush(wb);

			if (err)
				return err;
			continue;
		}
		if (head || len < 8) {
			/* A partial word: only at the ends of a run. */
			unsigned char w[8];

			n = len < 8 - head ? (size_t)len : 8 - head;
			put_le64(w, splitmix64(base ^ j));
			memcpy(dst, w + head, n);
		} else {
			n = (len < room ? (size_t)len : room) & ~(size_t)7;
			for (size_t k = 0; k < n; k += 8)
				put_le64(dst + k, splitmix64(base ^ j++));
		}
		wb->len += n;
		from += n;
		len -= n;
	}
	return 0;
}

/*
 * Generate a tensor's bytes (see the top of the file), or a chunk's: the chunk's rows are runs
 * of the whole tensor's row-major bytes, one run per index of the dims before the last cut one.
 */
static int wb_tensor(struct wbuf *wb, const struct tensor *t, uint64_t seed)
{
	uint64_t base = seed ^ fnv1a64(t->name), stride[MAX_DIMS], idx[MAX_DIMS] = { 0 };
	int cut = (int)t->ndim - 1, d;

	while (cut >= 0 && t->shape[cut] == t->whole[cut])
		cut--;
	if (cut < 0 || !t->nbytes)
		return wb_bytes(wb, base, 0, t->nbytes);
	stride[t->ndim - 1] = dt_size[t->dtype];
	for (d = (int)t->ndim - 1; d > 0; d--)
		stride[d - 1] = stride[d] * t->whole[d];
	do {
		uint64_t at = 0;
		int err;

		for (d = 0; d <= cut; d++)
			at += (t->start[d] + idx[d]) * stride[d];
		err = wb_bytes(wb, base, at, t->shape[cut] * stride[cut]);
		if (err)
			return err;
		for (d = cut - 1; d >= 0 && ++idx[d] == t->shape[d]; d--)
			idx[d] = 0;
	} while (d >= 0);
	return 0;
}

/* A shape as (ndim, dims): SHAPE(e, h, 2 * in). */
#define SHAPE(...) (unsigned)(sizeof((const uint64_t[]){ __VA_ARGS__ }) / sizeof(uint64_t)), \
	(const uint64_t[]){ __VA_ARGS__ }

/* Append a tensor with a printf-built name; shape x dtype size must fit in 64 bits. */
static void __attribute__((format(printf, 5, 6)))
tl_add(struct tlist *tl, enum dtype dt, unsigned ndim, const uint64_t *shape, const char *fmt, ...)
{
	struct tensor *t;
	va_list ap;
	int n;

	if (!tl->err && tl->n == tl->cap) {
		size_t cap = tl->cap ? tl->cap * 2 : 256;
		struct tensor *v = realloc(tl->v, cap * sizeof(*v));

		tl->err = v ? 0 : -ENOMEM;
		tl->v = v ? v : tl->v;
		tl->cap = v ? cap : tl->cap;
	}
	if (tl->err)
		return;
	t = &tl->v[tl->n];
	memset(t, 0, sizeof(*t));
	va_start(ap, fmt);
	n = vsnprintf(t->name, sizeof(t->name), fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof(t->name))
		tl->err = -ENAMETOOLONG;
	t->dtype = dt;
	t->ndim = ndim;
	t->nbytes = dt_size[dt];
	for (unsigned i = 0; i < ndim; i++) {
		t->shape[i] = t->whole[i] = shape[i];
		if (__builtin_mul_overflow(t->nbytes, shape[i], &t->nbytes))
			tl->err = -EOVERFLOW;
	}
	tl->n++;
}

/* A vision module "<base>.{weight,bias}": weight [out, in], or [out] for a norm (in == 0). */
static void add_wb(struct tlist *tl, const char *base, uint64_t out, uint64_t in)
{
	if (in)
		tl_add(tl, DT_BF16, SHAPE(out, in), "%s.weight", base);
	else
		tl_add(tl, DT_BF16, SHAPE(out), "%s.weight", base);
	tl_add(tl, DT_BF16, SHAPE(out), "%s.bias", base);
}

/* One patch merger: norm, then two linears over 2x2-merged patches. */
static void add_merger(struct tlist *tl, const char *base, uint64_t norm, uint64_t vh,
		       uint64_t out)
{
	char name[NAME_MAX_LEN];

	snprintf(name, sizeof(name), "%s.norm", base);
	add_wb(tl, name, norm, 0);
	snprintf(name, sizeof(name), "%s.linear_fc1", base);
	add_wb(tl, name, MERGE * vh, MERGE * vh);
	snprintf(name, sizeof(name), "%s.linear_fc2", base);
	add_wb(tl, name, out, MERGE * vh);
}

/* One vision block, in module order. */
static void add_vision_block(struct tlist *tl, const struct model *m, const char *p, uint64_t i)
{
	static const char *const mods[] = { "norm1", "norm2", "attn.qkv", "attn.proj",
					    "mlp.linear_fc1", "mlp.linear_fc2" };
	uint64_t vh = m->vhidden, vi = m->vinter;
	const uint64_t out[] = { vh, vh, 3 * vh, vh, vi, vh }, in[] = { 0, 0, vh, vh, vh, vi };
	char base[NAME_MAX_LEN];

	for (size_t k = 0; k < ARRAY_SIZE(mods); k++) {
		snprintf(base, sizeof(base), "%svisual.blocks.%" PRIu64 ".%s", p, i, mods[k]);
		add_wb(tl, base, out[k], in[k]);
	}
}

/* The vision tower, in module order; p is the "model." prefix or "". */
static void add_vision(struct tlist *tl, const struct model *m, const char *p)
{
	uint64_t vh = m->vhidden;
	char base[NAME_MAX_LEN];

	tl_add(tl, DT_BF16, SHAPE(vh, 3, 2, m->patch, m->patch),
	       "%svisual.patch_embed.proj.weight", p);
	tl_add(tl, DT_BF16, SHAPE(vh), "%svisual.patch_embed.proj.bias", p);
	tl_add(tl, DT_BF16, SHAPE(POS_EMBED_ROWS, vh), "%svisual.pos_embed.weight", p);
	for (uint64_t i = 0; i < m->vdepth; i++)
		add_vision_block(tl, m, p, i);
	/* The final merger normalises before the 2x2 merge, the deepstack ones after it. */
	snprintf(base, sizeof(base), "%svisual.merger", p);
	add_merger(tl, base, vh, vh, m->hidden);
	for (unsigned k = 0; k < m->n_deepstack; k++) {
		snprintf(base, sizeof(base), "%svisual.deepstack_merger_list.%u", p, k);
		add_merger(tl, base, MERGE * vh, vh, m->hidden);
	}
}

/* One decoder layer, in module order, plus the optional quirk tensors. */
static void add_layer(struct tlist *tl, const struct opts *o, const char *p, uint64_t l)
{
	const struct model *m = &o->m;
	uint64_t h = m->hidden, q = m->heads * m->head_dim, kv = m->kv_heads * m->head_dim;
	uint64_t e = m->experts, in = m->moe_inter, hd = m->head_dim;
	char b[NAME_MAX_LEN];

	snprintf(b, sizeof(b), "%slanguage_model.layers.%" PRIu64, p, l);
	tl_add(tl, DT_BF16, SHAPE(h), "%s.input_layernorm.weight", b);
	tl_add(tl, DT_BF16, SHAPE(h), "%s.post_attention_layernorm.weight", b);
	tl_add(tl, DT_BF16, SHAPE(q, h), "%s.self_attn.q_proj.weight", b);
	tl_add(tl, DT_BF16, SHAPE(kv, h), "%s.self_attn.k_proj.weight", b);
	tl_add(tl, DT_BF16, SHAPE(kv, h), "%s.self_attn.v_proj.weight", b);
	tl_add(tl, DT_BF16, SHAPE(h, q), "%s.self_attn.o_proj.weight", b);
	tl_add(tl, DT_BF16, SHAPE(hd), "%s.self_attn.q_norm.weight", b);
	tl_add(tl, DT_BF16, SHAPE(hd), "%s.self_attn.k_norm.weight", b);
	tl_add(tl, DT_BF16, SHAPE(e, h), "%s.mlp.gate.weight", b);
	/* Same shapes in both namings: only the two expert keys are renamed, never transposed. */
	tl_add(tl, DT_BF16, SHAPE(e, h, 2 * in), "%s.mlp.experts.%s", b,
	       o->native ? "gate_and_up_projs" : "gate_up_proj");
	tl_add(tl, DT_BF16, SHAPE(e, in, h), "%s.mlp.experts.%s", b,
	       o->native ? "down_projs" : "down_proj");
	if (o->scale_inv)
		tl_add(tl, DT_F32, SHAPE(e), "%s.mlp.experts.gate_up_proj_scale_inv", b);
	if (o->extra_state)
		tl_add(tl, DT_U8, SHAPE(16), "%s.self_attn._extra_state", b);
}

/* All tensors in the order HF walks the module tree, which is also the sharding order. */
static int build_tensors(struct tlist *tl, const struct opts *o)
{
	const struct model *m = &o->m;
	const char *p = o->no_prefix ? "" : "model.";

	add_vision(tl, m, p);
	tl_add(tl, DT_BF16, SHAPE(m->vocab, m->hidden), "%slanguage_model.embed_tokens.weight", p);
	for (uint64_t l = 0; l < m->layers; l++)
		add_layer(tl, o, p, l);
	tl_add(tl, DT_BF16, SHAPE(m->hidden), "%slanguage_model.norm.weight", p);
	tl_add(tl, DT_BF16, SHAPE(m->vocab, m->hidden), "lm_head.weight");
	return tl->err;
}

/*
 * Cut the walk into n runs of roughly total/n bytes: a tensor moves to the next shard when
 * its midpoint passes the next boundary, or when only one tensor per shard is left, so no
 * shard is ever empty.
 */
static void assign_shards(struct tlist *tl, uint64_t n, uint64_t total)
{
	uint64_t cur = 0, cum = 0, in_cur = 0;

	for (size_t i = 0; i < tl->n; i++) {
		struct tensor *t = &tl->v[i];
		unsigned __int128 mid = (unsigned __int128)(cum + t->nbytes / 2) * n;
		int past = mid >= (unsigned __int128)(cur + 1) * total;
		int forced = tl->n - i == n - 1 - cur;

		if (in_cur && cur + 1 < n && (past || forced)) {
			cur++;
			in_cur = 0;
		}
		t->shard = cur;
		in_cur++;
		cum += t->nbytes;
	}
}

int cmp_name(const void *a, const void *b)
{
	const struct tensor *x = *(const struct tensor *const *)a;
	const struct tensor *y = *(const struct tensor *const *)b;

	return strcmp(x->name, y->name);
}

/* safetensors save_file: dtype descending in enum order, then name ascending (bytewise). */
static int cmp_writer(const void *a, const void *b)
{
	const struct tensor *x = *(const struct tensor *const *)a;
	const struct tensor *y = *(const struct tensor *const *)b;

	if (x->dtype != y->dtype)
		return x->dtype < y->dtype ? 1 : -1;
	return strcmp(x->name, y->name);
}

static int cmp_reverse(const void *a, const void *b)
{
	return cmp_writer(b, a);
}

/* Put one file's tensors in data order and give them packed offsets from 0. */
uint64_t order_shard(struct tensor **ts, size_t n, enum data_order order)
{
	static int (*const cmp[])(const void *, const void *) = {
		[ORDER_WRITER] = cmp_writer, [ORDER_NAME] = cmp_name, [ORDER_REVERSE] = cmp_reverse,
	};
	uint64_t off = 0;

	qsort(ts, n, sizeof(*ts), cmp[order]);
	for (size_t i = 0; i < n; i++) {
		ts[i]->offset = off;
		off += ts[i]->nbytes;
	}
	return off;
}

/* Deterministic Fisher-Yates, seeded per shard so every file gets its own order. */
static void shuffle(struct tensor **ts, size_t n, uint64_t seed)
{
	for (size_t i = n; i > 1; i--) {
		size_t j = (size_t)(splitmix64(seed ^ i) % i);
		struct tensor *t = ts[i - 1];

		ts[i - 1] = ts[j];
		ts[j] = t;
	}
}

static void header_tensor(struct sbuf *sb, const struct tensor *t)
{
	sb_printf(sb, "\"%s\":{\"dtype\":\"%s\",\"shape\":[", t->name, dt_name[t->dtype]);
	for (unsigned d = 0; d < t->ndim; d++)
		sb_printf(sb, "%s%" PRIu64, d ? "," : "", t->shape[d]);
	sb_printf(sb, "],\"data_offsets\":[%" PRIu64 ",%" PRIu64 "]}", t->offset,
		  t->offset + t->nbytes);
}

/*
 * Compact JSON header for tensors already in data order. keys[] is the key order, which is
 * the data order unless shuffled; __metadata__ goes first, or mid-object when shuffled so
 * readers that assume it leads get caught. meta is more __metadata__ members (",..." or "").
 */
static void build_header(struct sbuf *sb, struct tensor **keys, size_t n, const char *meta,
			 const struct opts *o)
{
	size_t meta_at = o->no_metadata ? (size_t)-1 : o->shuffle ? (n + 1) / 2 : 0;
	const char *sep = "";

	sb_printf(sb, "{");
	for (size_t i = 0; i <= n; i++) {
		if (i == meta_at) {
			sb_printf(sb, "%s\"__metadata__\":{\"format\":\"pt\"%s}", sep, meta);
			sep = ",";
		}
		if (i == n)
			break;
		sb_printf(sb, "%s", sep);
		header_tensor(sb, keys[i]);
		sep = ",";
	}
	sb_printf(sb, "}");
	/* 8 + N must be a multiple of 8, and 8 already is. */
	while (!o->unpadded && !sb->err && sb->len % 8)
		sb_printf(sb, " ");
}

/* Length prefix, header, then the data section (generated, or a hole with --sparse). */
static int write_shard_file(int fd, const struct sbuf *hdr, struct tensor **ts, size_t n,
			    uint64_t data_len, const struct opts *o)
{
	unsigned char len[8];
	struct wbuf wb = { .fd = fd };
	int err;

	put_le64(len, hdr->len);
	err = write_full(fd, len, sizeof(len));
	err = err ? err : write_full(fd, hdr->p, hdr->len);
	if (err)
		return err;
	if (o->sparse)
		return ftruncate(fd, (off_t)(8 + hdr->len + data_len)) ? -errno : 0;
	wb.p = malloc(WBUF_SIZE);
	if (!wb.p)
		return -ENOMEM;
	for (size_t i = 0; !err && i < n; i++)
		err = wb_tensor(&wb, ts[i], o->seed);
	err = err ? err : wb_flush(&wb);
	free(wb.p);
	return err;
}

/*
 * Write OUTDIR/fname holding ts[0..n), already in data order with packed offsets (see
 * order_shard) summing to data_len; meta as for build_header.
 */
int write_tensor_file(int dirfd, const char *fname, struct tensor **ts, size_t n,
		      uint64_t data_len, const char *meta, const struct opts *o)
{
	struct tensor **keys = calloc(n ? n : 1, sizeof(*keys));
	struct sbuf hdr = { 0 };
	int fd, err = -ENOMEM;

	if (!keys)
		goto out_free;
	memcpy(keys, ts, n * sizeof(*keys));
	if (o->shuffle)
		shuffle(keys, n, o->seed ^ fnv1a64(fname));
	build_header(&hdr, keys, n, meta, o);
	err = hdr.err;
	if (err)
		goto out_free;
	fd = openat(dirfd, fname, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0) {
		err = -errno;
		goto out_free;
	}
	err = write_shard_file(fd, &hdr, ts, n, data_len, o);
	if (close(fd) && !err)
		err = -errno;
out_free:
	free(hdr.p);
	free(keys);
	return err;
}

/* Write shard s (0-based) of the checkpoint as OUTDIR/fname. */
static int write_shard(int dirfd, const char *fname, struct tlist *tl, uint64_t s,
		       const struct opts *o)
{
	struct tensor **ts = calloc(tl->n, sizeof(*ts));
	size_t n = 0;
	int err;

	if (!ts)
		return -ENOMEM;
	for (size_t i = 0; i < tl->n; i++)
		if (tl->v[i].shard == s)
			ts[n++] = &tl->v[i];
	err = write_tensor_file(dirfd, fname, ts, n, order_shard(ts, n, o->order), "", o);
	free(ts);
	return err;
}

static void shard_name(char *buf, size_t len, uint64_t s, uint64_t n)
{
	snprintf(buf, len, "model-%05" PRIu64 "-of-%05" PRIu64 ".safetensors", s + 1, n);
}

/* Create-or-replace a small file holding sb's text. */
int write_text(int dirfd, const char *fname, const struct sbuf *sb)
{
	int fd, err;

	if (sb->err)
		return fail(fname, sb->err);
	fd = openat(dirfd, fname, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return fail(fname, -errno);
	err = write_full(fd, sb->p, sb->len);
	if (close(fd) && !err)
		err = -errno;
	return err ? fail(fname, err) : 0;
}

/* model.safetensors.index.json as transformers writes it: 2-space indent, keys sorted. */
static int write_index(int dirfd, struct tlist *tl, uint64_t total, const struct opts *o)
{
	struct tensor **ts = calloc(tl->n, sizeof(*ts));
	struct sbuf sb = { 0 };
	char fname[64];
	int err;

	if (!ts)
		return fail("model.safetensors.index.json", -ENOMEM);
	for (size_t i = 0; i < tl->n; i++)
		ts[i] = &tl->v[i];
	qsort(ts, tl->n, sizeof(*ts), cmp_name);
	sb_printf(&sb, "{\n  \"metadata\": {\n    \"total_size\": %" PRIu64 "\n  },\n"
		  "  \"weight_map\": {\n", total);
	for (size_t i = 0; i < tl->n; i++) {
		shard_name(fname, sizeof(fname), ts[i]->shard, o->m.shards);
		sb_printf(&sb, "    \"%s\": \"%s\"%s\n", ts[i]->name, fname,
			  i + 1 < tl->n ? "," : "");
	}
	sb_printf(&sb, "  }\n}\n");
	err = write_text(dirfd, "model.safetensors.index.json", &sb);
	free(sb.p);
	free(ts);
	return err;
}

/* config.json: the fields loaders read to rebuild shapes, mirroring the real checkpoints. */
int write_config(int dirfd, const struct model *m)
{
	uint64_t half = m->head_dim / 2, hw = half * 5 / 16;	/* mrope [24,20,20] at 128 */
	struct sbuf sb = { 0 };
	int err;

	sb_printf(&sb, "{\n  \"architectures\": [\"Qwen3VLMoeForConditionalGeneration\"],\n"
		  "  \"model_type\": \"qwen3_vl_moe\",\n  \"image_token_id\": 151655,\n"
		  "  \"video_token_id\": 151656,\n  \"vision_start_token_id\": 151652,\n"
		  "  \"vision_end_token_id\": 151653,\n  \"tie_word_embeddings\": false,\n"
		  "  \"torch_dtype\": \"bfloat16\",\n  \"text_config\": {\n"
		  "    \"model_type\": \"qwen3_vl_moe_text\",\n    \"hidden_act\": \"silu\",\n");
	sb_printf(&sb, "    \"hidden_size\": %" PRIu64 ",\n    \"num_hidden_layers\": %" PRIu64 ",\n"
		  "    \"num_attention_heads\": %" PRIu64 ",\n    \"num_key_value_heads\": %" PRIu64 ",\n"
		  "    \"head_dim\": %" PRIu64 ",\n    \"num_experts\": %" PRIu64 ",\n"
		  "    \"num_experts_per_tok\": %" PRIu64 ",\n    \"moe_intermediate_size\": %" PRIu64 ",\n"
		  "    \"vocab_size\": %" PRIu64 ",\n    \"intermediate_size\": %" PRIu64 ",\n",
		  m->hidden, m->layers, m->heads, m->kv_heads, m->head_dim, m->experts,
		  m->experts < 8 ? m->experts : 8, m->moe_inter, m->vocab, 3 * m->hidden);
	sb_printf(&sb, "    \"decoder_sparse_step\": 1,\n    \"mlp_only_layers\": [],\n"
		  "    \"attention_bias\": false,\n    \"rms_norm_eps\": 1e-06,\n"
		  "    \"rope_theta\": 5000000,\n    \"max_position_embeddings\": 262144,\n"
		  "    \"rope_scaling\": {\"rope_type\": \"default\", \"mrope_interleaved\": true, "
		  "\"mrope_section\": [%" PRIu64 ", %" PRIu64 ", %" PRIu64 "]},\n"
		  "    \"torch_dtype\": \"bfloat16\"\n  },\n", half - 2 * hw, hw, hw);
	sb_printf(&sb, "  \"vision_config\": {\n    \"model_type\": \"qwen3_vl_moe\",\n"
		  "    \"hidden_act\": \"gelu_pytorch_tanh\",\n    \"depth\": %" PRIu64 ",\n"
		  "    \"hidden_size\": %" PRIu64 ",\n    \"intermediate_size\": %" PRIu64 ",\n"
		  "    \"num_heads\": %" PRIu64 ",\n    \"patch_size\": %" PRIu64 ",\n"
		  "    \"temporal_patch_size\": 2,\n    \"in_channels\": 3,\n"
		  "    \"spatial_merge_size\": 2,\n    \"num_position_embeddings\": %d,\n"
		  "    \"out_hidden_size\": %" PRIu64 ",\n    \"deepstack_visual_indexes\": [",
		  m->vdepth, m->vhidden, m->vinter, m->vheads, m->patch, POS_EMBED_ROWS, m->hidden);
	for (unsigned k = 0; k < m->n_deepstack; k++)
		sb_printf(&sb, "%s%" PRIu64, k ? ", " : "", m->deepstack[k]);
	sb_printf(&sb, "]\n  }\n}\n");
	err = write_text(dirfd, "config.json", &sb);
	free(sb.p);
	return err;
}

/* Files that pass through the filesystem untouched; tiny but valid JSON. */
static const struct {
	const char *name;
	const char *text;
} static_files[] = {
	{ "generation_config.json",
	  "{\n  \"bos_token_id\": 151643,\n  \"pad_token_id\": 151643,\n  \"do_sample\": true,\n"
	  "  \"eos_token_id\": [151645, 151643],\n  \"top_k\": 20,\n  \"top_p\": 0.8,\n"
	  "  \"temperature\": 0.7\n}\n" },
	{ "tokenizer_config.json",
	  "{\n  \"tokenizer_class\": \"Qwen2Tokenizer\",\n  \"model_max_length\": 262144,\n"
	  "  \"bos_token\": null,\n  \"eos_token\": \"<|im_end|>\",\n"
	  "  \"pad_token\": \"<|endoftext|>\",\n  \"unk_token\": null\n}\n" },
	{ "tokenizer.json",
	  "{\"version\":\"1.0\",\"truncation\":null,\"padding\":null,\"added_tokens\":[],"
	  "\"normalizer\":null,\"pre_tokenizer\":{\"type\":\"Whitespace\"},"
	  "\"post_processor\":null,\"decoder\":null,\"model\":{\"type\":\"WordLevel\","
	  "\"vocab\":{\"<unk>\":0,\"<|endoftext|>\":1,\"<|im_end|>\":2},\"unk_token\":\"<unk>\"}}\n" },
	{ "chat_template.json",
	  "{\n  \"chat_template\": \"{% for message in messages %}<|im_start|>{{ message['role'] }}"
	  "\\n{{ message['content'] }}<|im_end|>\\n{% endfor %}"
	  "{% if add_generation_prompt %}<|im_start|>assistant\\n{% endif %}\"\n}\n" },
};

/* The pass-through files, into the directory dirfd. */
int write_static_files(int dirfd)
{
	for (size_t i = 0; i < ARRAY_SIZE(static_files); i++) {
		struct sbuf sb = { .p = (char *)static_files[i].text,
				   .len = strlen(static_files[i].text) };
		int err = write_text(dirfd, static_files[i].name, &sb);

		if (err)
			return err;
	}
	return 0;
}

/* Create OUTDIR (one level, 0755) if missing and open it for the *at() calls. */
static int open_outdir(const char *path)
{
	int fd;

	if (mkdir(path, 0755) && errno != EEXIST)
		return -errno;
	fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	return fd < 0 ? -errno : fd;
}

static void usage(void)
{
	printf("usage: " PROG " [options] OUTDIR\n"
	       "Write a synthetic Qwen3-VL-MoE safetensors checkpoint (real key schema,\n"
	       "deterministic pseudo-random BF16 bytes) into OUTDIR.\n\n"
	       "    --preset tiny|30b-a3b|235b-a22b   dimensions (default tiny)\n"
	       "    --layers N --hidden H --experts E --moe-inter I --vocab V --heads N\n"
	       "    --kv-heads N --head-dim D --vision-depth N --vision-hidden N\n"
	       "    --vision-inter N --shards N       override one dimension of the preset\n"
	       "    --seed S                          tensor bytes seed (default 1)\n"
	       "    --naming hf|native                expert key names (default hf)\n"
	       "    --no-prefix                       drop the leading \"model.\" from keys\n"
	       "    --sparse                          data as holes: headers only on disk\n"
	       "    --unpadded                        header not padded to 8 bytes\n"
	       "    --shuffle-keys                    header keys shuffled, __metadata__ mid-object\n"
	       "    --no-metadata                     no __metadata__ in headers\n"
	       "    --data-order writer|name|reverse  tensor data order (default writer)\n"
	       "    --scale-inv                       add per-layer F32 *_scale_inv tensors\n"
	       "    --extra-state                     add per-layer U8 _extra_state tensors\n"
	       "    --no-index                        no model.safetensors.index.json\n"
	       "    --sharded-save W                  a NeMo Automodel save by W ranks instead:\n"
	       "                                      shard-R-model-00001-of-00001.safetensors\n"
	       "                                      chunks, config files in .hf_metadata/\n"
	       "    --save-shard-size K               W/K expert-parallel groups x K: experts\n"
	       "                                      also cut on dim 1 (default 1)\n"
	       "    --dense-split                     cut dense tensors on dim 0 over all ranks\n"
	       "    --sharded-drop-rank R             leave rank R's file out\n"
	       "    -h, --help                        this text\n");
}

/* Decimal in [min, max] for option --opt, nothing around it; anything else is a usage error. */
static uint64_t parse_u64(const char *opt, const char *s, uint64_t min, uint64_t max)
{
	char what[32];
	char *end;
	unsigned long long v;

	errno = 0;
	v = strtoull(s, &end, 10);
	if (!*s || *s == '-' || *s == ' ' || *end || errno || v < min || v > max) {
		snprintf(what, sizeof(what), "--%s", opt);
		usage_error(what, "number out of range or malformed");
	}
	return v;
}

/* Index of arg in the NULL-terminated choices, or a usage error naming opt. */
static int parse_choice(const char *opt, const char *arg, const char *const *choices)
{
	for (int i = 0; choices[i]; i++)
		if (!strcmp(arg, choices[i]))
			return i;
	usage_error(opt, "unknown value");
}

enum { OPT_PRESET = 0x100, OPT_SEED, OPT_NAMING, OPT_ORDER, OPT_SAVE, OPT_SAVE_SHARD, OPT_DROP,
       OPT_FLAG = 0x200, OPT_DIM = 0x300 };
#define MAX_RANKS 99999		/* rank file names have five digits */

static const struct option fixed_opts[] = {
	{ "preset", required_argument, NULL, OPT_PRESET },
	{ "seed", required_argument, NULL, OPT_SEED },
	{ "naming", required_argument, NULL, OPT_NAMING },
	{ "data-order", required_argument, NULL, OPT_ORDER },
	{ "sharded-save", required_argument, NULL, OPT_SAVE },
	{ "save-shard-size", required_argument, NULL, OPT_SAVE_SHARD },
	{ "sharded-drop-rank", required_argument, NULL, OPT_DROP },
	{ "help", no_argument, NULL, 'h' },
};

/* Reject or fix up dimensions no loader could make sense of, before writing anything. */
static void check_model(struct model *m)
{
	unsigned n = 0;

	if (m->heads % m->kv_heads)
		usage_error("--kv-heads", "must divide --heads");
	if (m->vhidden % m->vheads)
		m->vheads = 1;	/* vision heads are not a tensor dimension; keep the config sane */
	/* Deepstack taps must name existing blocks: keep the preset's that still do. */
	for (unsigned k = 0; k < m->n_deepstack; k++)
		if (m->deepstack[k] < m->vdepth)
			m->deepstack[n++] = m->deepstack[k];
	m->n_deepstack = n;
}

/* Options to struct opts; the preset applies first, whatever the order on the command line. */
static void parse_args(int argc, char **argv, struct opts *o)
{
	static const char *const namings[] = { "hf", "native", NULL };
	static const char *const orders[] = { "writer", "name", "reverse", NULL };
	struct option lo[ARRAY_SIZE(fixed_opts) + ARRAY_SIZE(flag_opts) + ARRAY_SIZE(dim_opts) + 1];
	struct option *l = lo;
	uint64_t dims[ARRAY_SIZE(dim_opts)];
	int have[ARRAY_SIZE(dim_opts)] = { 0 }, preset = 0, c;

	for (size_t i = 0; i < ARRAY_SIZE(fixed_opts); i++)
		*l++ = fixed_opts[i];
	for (size_t i = 0; i < ARRAY_SIZE(flag_opts); i++)
		*l++ = (struct option){ flag_opts[i].opt, no_argument, NULL, OPT_FLAG + (int)i };
	for (size_t i = 0; i < ARRAY_SIZE(dim_opts); i++)
		*l++ = (struct option){ dim_opts[i].opt, required_argument, NULL, OPT_DIM + (int)i };
	*l = (struct option){ 0 };
	o->seed = 1;
	o->save_shard = 1;
	o->drop_rank = NO_RANK;
	opterr = 0;	/* one error line, ours */
	while ((c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
		if (c >= OPT_DIM) {
			dims[c - OPT_DIM] = parse_u64(dim_opts[c - OPT_DIM].opt, optarg, 1, DIM_MAX);
			have[c - OPT_DIM] = 1;
		} else if (c >= OPT_FLAG) {
			*(int *)((char *)o + flag_opts[c - OPT_FLAG].off) = 1;
		} else if (c == OPT_PRESET) {
			preset = parse_choice("--preset", optarg, preset_names);
		} else if (c == OPT_SEED) {
			o->seed = parse_u64("seed", optarg, 0, UINT64_MAX);
		} else if (c == OPT_NAMING) {
			o->native = parse_choice("--naming", optarg, namings);
		} else if (c == OPT_ORDER) {
			o->order = (enum data_order)parse_choice("--data-order", optarg, orders);
		} else if (c == OPT_SAVE) {
			o->save_ranks = parse_u64("sharded-save", optarg, 1, MAX_RANKS);
		} else if (c == OPT_SAVE_SHARD) {
			o->save_shard = parse_u64("save-shard-size", optarg, 1, MAX_RANKS);
		} else if (c == OPT_DROP) {
			o->drop_rank = parse_u64("sharded-drop-rank", optarg, 0, MAX_RANKS - 1);
		} else if (c == 'h') {
			usage();
			exit(0);
		} else {
			usage_error(argv[optind - 1], "unknown option or missing value");
		}
	}
	if (optind + 1 != argc)
		usage_error(optind < argc ? argv[argc - 1] : "OUTDIR", "expected one OUTDIR");
	o->outdir = argv[optind];
	o->m = presets[preset];
	for (size_t i = 0; i < ARRAY_SIZE(dim_opts); i++)
		if (have[i])
			*(uint64_t *)((char *)&o->m + dim_opts[i].off) = dims[i];
	check_model(&o->m);
	check_sharded(o);
}

/* Shards, then the index, then the pass-through files; any failure has been reported. */
static int write_checkpoint(int dirfd, struct tlist *tl, uint64_t total, const struct opts *o)
{
	char fname[64];
	int err;

	for (uint64_t s = 0; s < o->m.shards; s++) {
		shard_name(fname, sizeof(fname), s, o->m.shards);
		err = write_shard(dirfd, fname, tl, s, o);
		if (err)
			return fail(fname, err);
	}
	if (!o->no_index && (err = write_index(dirfd, tl, total, o)))
		return err;
	err = write_config(dirfd, &o->m);
	return err ? err : write_static_files(dirfd);
}

int main(int argc, char **argv)
{
	struct opts o = { 0 };
	struct tlist tl = { 0 };
	uint64_t total = 0;
	int dirfd, err;

	parse_args(argc, argv, &o);
	err = build_tensors(&tl, &o);
	for (size_t i = 0; !err && i < tl.n; i++)
		if (__builtin_add_overflow(total, tl.v[i].nbytes, &total))
			err = -EOVERFLOW;
	if (!err && o.m.shards > tl.n)
		usage_error("--shards", "more shards than tensors");
	if (err)
		goto out_fail;
	assign_shards(&tl, o.m.shards, total);
	dirfd = open_outdir(o.outdir);
	if (dirfd < 0) {
		err = dirfd;
		goto out_fail;
	}
	if (o.save_ranks)
		err = write_sharded_save(dirfd, &tl, &o);
	else
		err = write_checkpoint(dirfd, &tl, total, &o);
	close(dirfd);
	if (err)
		goto out_free;
	printf("wrote %s: %zu tensors, %" PRIu64 " bytes in %" PRIu64 " %s\n", o.outdir, tl.n,
	       total, o.save_ranks ? o.save_ranks : o.m.shards,
	       o.save_ranks ? "rank files" : "shards");
	free(tl.v);
	return 0;

out_fail:
	fail(o.outdir, err);
out_free:
	free(tl.v);
	return 1;
}
