/* qv_comp.h - computed tensors (DESIGN §14): how each block of a computed view tensor is made
 * from source matrices (the operations, and where their input bytes lie), and the bounded
 * per-mount cache of made blocks, which lets sequential requests compute each block once.
 * FUSE-free and I/O-free: vfile reads the inputs, comp turns them into the block. */
#ifndef QV_COMP_H
#define QV_COMP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum qv_xop_kind {
	QV_XOP_T16,  /* a matrix of 16-bit elements, transposed */
	QV_XOP_DQ,   /* an FP8 E4M3 block-scaled matrix, dequantized to BF16 */
	QV_XOP_DQ_T, /* ... and transposed */
};

/* One operation of a block: the rows x cols matrix of source src whose row k starts at byte
 * soff + k * sstride (2-byte elements for T16, 1-byte ones for DQ) becomes 16-bit elements of
 * the block: (r, c) at element dst_off + r * dst_stride + c, or, transposed, dst_off +
 * c * dst_stride + r. FP8 only: its scales are F32, one per block x block elements, the
 * ceil(cols / block) of block-row j at byte scale_off + j * scale_stride of source scale_src;
 * the matrix starts on a block boundary of its scale grid. */
struct qv_xop {
	uint32_t kind, src, scale_src, block;
	uint64_t soff, sstride, rows, cols;
	uint64_t scale_off, scale_stride;
	uint64_t dst_off, dst_stride;
};

/* An operation that does nothing (T16, no rows, no columns): blocks whose parts come from
 * fewer source matrices than others' pad their operations with it. */
bool qv_xop_empty(const struct qv_xop *op);

/* A computed tensor of len bytes: nblk blocks of blen bytes (whole experts of the view, or
 * bands of rows; the last may be cut short by len), block b made by the nops operations
 * ops[b * nops ...]. */
struct qv_comp {
	uint64_t id; /* unique in the process: the cache's key, never reused by a later view */
	uint64_t blen, nblk, len;
	uint32_t nops;
	struct qv_xop *ops;
};

/* A computed tensor of nblk blocks of blen bytes (len nblk * blen, which the caller may
 * lower) with nops operations each (zeroed, to be filled by the caller), a fresh id; NULL
 * when out of memory. */
struct qv_comp *qv_comp_new(uint64_t nblk, uint64_t blen, uint32_t nops);

/* Free c (NULL is fine). */
void qv_comp_free(struct qv_comp *c);

/* Bytes of input block b needs: each op's matrix rows packed, then its scale rows packed,
 * each part starting 8-byte aligned. */
uint64_t qv_comp_in_len(const struct qv_comp *c, uint64_t b);

/* Call fn(arg, src, soff, len, in_off) for each source run block b reads, in_off being where
 * its bytes go in the input buffer; stops at and returns fn's first non-zero result, else 0. */
int qv_comp_runs(const struct qv_comp *c, uint64_t b,
		 int (*fn)(void *arg, uint32_t src, uint64_t soff, uint64_t len, uint64_t in_off),
		 void *arg);

/* Make block b (blen bytes at out) from its input (qv_comp_runs' layout, 8-byte aligned). */
void qv_comp_run(const struct qv_comp *c, uint64_t b, const char *in, char *out);

/* Check c's operations against its block size: every op writes inside blen bytes, scales
 * only for FP8 ops. 0 or -EINVAL (a bug in the view that made it, never served). */
int qv_comp_check(const struct qv_comp *c);

/* The cache. Blocks are found by (comp id, block); a block being made by one thread is waited
 * for by the others, so concurrent requests for one expert read its source bytes once. */
struct qv_xcache;
struct qv_xslot;

/* A cache holding at most budget bytes of blocks (always room for one); 0 or -ENOMEM. */
int qv_xcache_new(size_t budget, struct qv_xcache **out);

/* Free the cache (no slot may be held); NULL is fine. */
void qv_xcache_free(struct qv_xcache *xc);

/* Block b of comp c: 1 with *slot holding it, made; 0 with *slot claimed for the caller to
 * make (then qv_xcache_made); -ENOMEM. Either way *slot is held until qv_xcache_put. With xc
 * NULL, or every slot held, the slot is the caller's own and never shared. */
int qv_xcache_get(struct qv_xcache *xc, const struct qv_comp *c, uint64_t b,
		  struct qv_xslot **slot);

/* A slot to make block b of c in ahead of its requests: 0 with *slot claimed and held, as
 * qv_xcache_get's 0; 1 when there is nothing to make (the block is there or being made, every
 * slot is held, or xc is NULL); -ENOMEM. Never waits. */
int qv_xcache_claim(struct qv_xcache *xc, const struct qv_comp *c, uint64_t b,
		    struct qv_xslot **slot);

/* The bytes of a held slot (the comp's blen). */
char *qv_xslot_data(struct qv_xslot *s);

/* The caller's making of a claimed slot ended: rc 0 shares it, else it is dropped (waiters
 * then make it themselves). */
void qv_xcache_made(struct qv_xcache *xc, struct qv_xslot *s, int rc);

/* Let go of a held slot. */
void qv_xcache_put(struct qv_xcache *xc, struct qv_xslot *s);

/* Blocks served from the cache, blocks made, and those of them made ahead (qv_xcache_claim). */
void qv_xcache_counts(struct qv_xcache *xc, uint64_t *hits, uint64_t *made, uint64_t *ahead);

#endif
