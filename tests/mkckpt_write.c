/*
 * mkckpt_write.c - qvlmoefs-mkckpt's safetensors writer: tensor bytes, headers with the writer
 * quirks the filesystem must survive (unpadded headers, shuffled keys, no __metadata__, other
 * data orders, sparse files), text files, and the normal mode's shards plus their index.
 * Byte i of tensor KEY is byte i % 8 (little-endian) of splitmix64(seed ^ fnv1a64(KEY) ^ i / 8),
 * so a test can recompute any byte without reading the generator's output.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mkckpt.h"

#define WBUF_SIZE (4u << 20)

/* Names and element sizes of enum dtype, in its order. */
static const char *const dt_name[] = { "BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "I16", "U16",
				       "F16", "BF16", "I32", "U32", "F32", "F64", "I64", "U64" };
const unsigned char dt_size[] = { 1, 1, 1, 1, 1, 2, 2, 2, 2, 4, 4, 4, 8, 8, 8 };

/* Output buffer for one file: tensor bytes are generated into it and written in big runs. */
struct wbuf {
	int fd;
	unsigned char *p;
	size_t len;
};

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
/* What wb_bytes' random words become: raw bytes, FP8 E4M3 normal values (magnitude codes 8 to
 * 126: no subnormal, no NaN, as block-quantized weights nearly always are), or F32 block
 * scales (positive, from 2^-7 to 2), so dequantized fixtures hold finite values. */
enum fill { FILL_RAW, FILL_FP8, FILL_SCALE };

static void fill_fix(unsigned char *p, size_t n, enum fill f)
{
	if (f == FILL_FP8)
		for (size_t i = 0; i < n; i++)
			p[i] = (unsigned char)((p[i] & 0x80) | (8 + (p[i] & 0x7f) % 119));
	if (f == FILL_SCALE)
		for (size_t i = 0; i + 4 <= n; i += 4) {
			uint32_t v;

			memcpy(&v, p + i, 4);
			v = (v & 0x007fffffu) | ((120u + ((v >> 23) & 7u)) << 23);
			memcpy(p + i, &v, 4);
		}
}

static int wb_bytes(struct wbuf *wb, uint64_t base, uint64_t from, uint64_t len, enum fill f)
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
		fill_fix(dst, n, f); /* whole elements: runs start and end on them */
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
	size_t nl = strlen(t->name);
	enum fill f = t->dtype == DT_F8_E4M3 ? FILL_FP8 :
		      t->dtype == DT_F32 && nl > 10 && !strcmp(t->name + nl - 10, "_scale_inv") ?
							       FILL_SCALE : FILL_RAW;

	while (cut >= 0 && t->shape[cut] == t->whole[cut])
		cut--;
	if (cut < 0 || !t->nbytes)
		return wb_bytes(wb, base, 0, t->nbytes, f);
	stride[t->ndim - 1] = dt_size[t->dtype];
	for (d = (int)t->ndim - 1; d > 0; d--)
		stride[d - 1] = stride[d] * t->whole[d];
	do {
		uint64_t at = 0;
		int err;

		for (d = 0; d <= cut; d++)
			at += (t->start[d] + idx[d]) * stride[d];
		err = wb_bytes(wb, base, at, t->shape[cut] * stride[cut], f);
		if (err)
			return err;
		for (d = cut - 1; d >= 0 && ++idx[d] == t->shape[d]; d--)
			idx[d] = 0;
	} while (d >= 0);
	return 0;
}

/*
 * Cut the walk into n runs of roughly total/n bytes: a tensor moves to the next shard when
 * its midpoint passes the next boundary, or when only one tensor per shard is left, so no
 * shard is ever empty.
 */
void assign_shards(struct tlist *tl, uint64_t n, uint64_t total)
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

/* Name order (bytewise), for qsort over struct tensor pointers. */
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

/* Shards, then the index, then the pass-through files; any failure has been reported. */
int write_checkpoint(int dirfd, struct tlist *tl, uint64_t total, const struct opts *o)
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
	err = write_config(dirfd, o);
	return err ? err : write_static_files(dirfd);
}
