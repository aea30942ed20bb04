/* comp.c - computed tensors: the input layout of a block, the kernels that make it (xf), and
 * the bounded cache of made blocks shared by a mount's worker threads. */
#include "qv_comp.h"
#include "qv_xf.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define XCACHE_SLOTS 32
/* Buffers made before made blocks are reused: 8, or as many of the biggest block as fit in 24
 * MiB. A reader going front to back has the kernel's readahead window (4 MiB, two when it
 * reads ahead asynchronously) in flight, and a block made ahead: 8 of 30B-A3B's 3 and 6 MiB
 * blocks cover a few readers, and small blocks need more than 8 for one. */
#define XCACHE_KEEP 8
#define XCACHE_KEEP_BYTES (24u << 20)

static atomic_uint_least64_t next_id = 1;

struct qv_comp *qv_comp_new(uint64_t nblk, uint64_t blen, uint32_t nops)
{
	struct qv_comp *c = calloc(1, sizeof(*c));

	if (!c)
		return NULL;
	c->ops = calloc(nblk * nops + 1, sizeof(*c->ops)); /* +1: never a zero-size call */
	if (!c->ops) {
		free(c);
		return NULL;
	}
	c->id = atomic_fetch_add(&next_id, 1);
	c->nblk = nblk;
	c->blen = blen;
	c->len = nblk * blen;
	c->nops = nops;
	return c;
}

void qv_comp_free(struct qv_comp *c)
{
	if (!c)
		return;
	free(c->ops);
	free(c);
}

static uint64_t align8(uint64_t n)
{
	return (n + 7) & ~(uint64_t)7;
}

static bool is_fp8(const struct qv_xop *op)
{
	return op->kind == QV_XOP_DQ || op->kind == QV_XOP_DQ_T;
}

static uint64_t elem(const struct qv_xop *op)
{
	return is_fp8(op) ? 1 : 2;
}

/* Block-rows and block-columns of an FP8 op's scales. */
static void scale_dims(const struct qv_xop *op, uint64_t *sr, uint64_t *sc)
{
	*sr = is_fp8(op) ? (op->rows + op->block - 1) / op->block : 0;
	*sc = is_fp8(op) ? (op->cols + op->block - 1) / op->block : 0;
}

static uint64_t op_in_len(const struct qv_xop *op)
{
	uint64_t sr, sc;

	scale_dims(op, &sr, &sc);
	return align8(op->rows * op->cols * elem(op)) + align8(sr * sc * 4);
}

uint64_t qv_comp_in_len(const struct qv_comp *c, uint64_t b)
{
	uint64_t n = 0;

	for (uint32_t k = 0; k < c->nops; k++)
		n += op_in_len(&c->ops[b * c->nops + k]);
	return n;
}

/* rows runs of len bytes, the r-th at off + r * stride, packed at in_off: one run when they
 * are contiguous in the source too. */
static int rows_of(uint32_t src, uint64_t off, uint64_t rows, uint64_t len, uint64_t stride,
		   uint64_t in_off,
		   int (*fn)(void *, uint32_t, uint64_t, uint64_t, uint64_t), void *arg)
{
	int rc = 0;

	if (stride == len || rows <= 1)
		return rows && len ? fn(arg, src, off, rows * len, in_off) : 0;
	for (uint64_t r = 0; r < rows && !rc; r++)
		rc = fn(arg, src, off + r * stride, len, in_off + r * len);
	return rc;
}

int qv_comp_runs(const struct qv_comp *c, uint64_t b,
		 int (*fn)(void *arg, uint32_t src, uint64_t soff, uint64_t len, uint64_t in_off),
		 void *arg)
{
	uint64_t in = 0;
	int rc = 0;

	for (uint32_t k = 0; k < c->nops && !rc; k++) {
		const struct qv_xop *op = &c->ops[b * c->nops + k];
		uint64_t sr, sc;

		scale_dims(op, &sr, &sc);
		rc = rows_of(op->src, op->soff, op->rows, op->cols * elem(op), op->sstride, in, fn,
			     arg);
		in += align8(op->rows * op->cols * elem(op));
		if (!rc && sr)
			rc = rows_of(op->scale_src, op->scale_off, sr, sc * 4, op->scale_stride, in,
				     fn, arg);
		in += align8(sr * sc * 4);
	}
	return rc;
}

bool qv_xop_empty(const struct qv_xop *op)
{
	return op->kind == QV_XOP_T16 && op->rows == 0 && op->cols == 0;
}

void qv_comp_run(const struct qv_comp *c, uint64_t b, const char *in, char *out)
{
	uint16_t *dst = (uint16_t *)(void *)out;

	for (uint32_t k = 0; k < c->nops; k++) {
		const struct qv_xop *op = &c->ops[b * c->nops + k];
		uint64_t sr, sc;

		scale_dims(op, &sr, &sc);
		if (op->kind == QV_XOP_T16) {
			qv_xf_transpose16((const uint16_t *)(const void *)in, op->rows, op->cols,
					  op->cols, dst + op->dst_off, op->dst_stride);
		} else {
			struct qv_xf_fp8 m = {
				.src = (const uint8_t *)in, .rows = op->rows, .cols = op->cols,
				.src_stride = op->cols,
				.scale = (const float *)(const void *)(in + align8(op->rows * op->cols)),
				.scale_stride = sc, .block = op->block,
			};

			qv_xf_dequant(&m, op->kind == QV_XOP_DQ_T, dst + op->dst_off, op->dst_stride);
		}
		in += op_in_len(op);
	}
}

int qv_comp_check(const struct qv_comp *c)
{
	if (c->len > c->nblk * c->blen || (c->nblk && c->len <= (c->nblk - 1) * c->blen))
		return -EINVAL; /* the last block holds some of the tensor, and no more */
	for (uint64_t i = 0; i < c->nblk * c->nops; i++) {
		const struct qv_xop *op = &c->ops[i];
		bool t = op->kind != QV_XOP_DQ;
		uint64_t r = t ? op->cols : op->rows, w = t ? op->rows : op->cols;

		if (qv_xop_empty(op))
			continue;
		if (op->kind > QV_XOP_DQ_T || (is_fp8(op) && !op->block) || !op->rows || !op->cols ||
		    w > op->dst_stride ||
		    (op->dst_off + (r - 1) * op->dst_stride + w) * 2 > c->blen)
			return -EINVAL;
	}
	return 0;
}

/* ---- the cache ---- */

enum { SLOT_EMPTY, SLOT_MAKING, SLOT_READY };

struct qv_xslot {
	uint64_t id, b, tick;
	char *buf;
	size_t cap;
	int state, holds;
	bool own;    /* the caller's own, outside the cache: freed at put */
	bool unread; /* made ahead, no request has used it yet */
};

struct qv_xcache {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	size_t budget, bytes, maxlen; /* maxlen: the biggest block asked for yet */
	uint64_t clock, hits, made, ahead;
	struct qv_xslot s[XCACHE_SLOTS];
};

int qv_xcache_new(size_t budget, struct qv_xcache **out)
{
	struct qv_xcache *xc = calloc(1, sizeof(*xc));

	if (!xc)
		return -ENOMEM;
	pthread_mutex_init(&xc->mu, NULL);
	pthread_cond_init(&xc->cv, NULL);
	xc->budget = budget;
	*out = xc;
	return 0;
}

void qv_xcache_free(struct qv_xcache *xc)
{
	if (!xc)
		return;
	for (size_t i = 0; i < XCACHE_SLOTS; i++)
		free(xc->s[i].buf);
	pthread_cond_destroy(&xc->cv);
	pthread_mutex_destroy(&xc->mu);
	free(xc);
}

#define HUGE_PAGE (2u << 20)

/* A block buffer: line-aligned, so the transposing kernel writes whole lines (qv_xf); one of
 * a huge page or more is in huge pages where the kernel has them (THP "madvise" is Debian's
 * default): a fresh mount's first blocks otherwise take a page fault per 4 KiB, which cost a
 * sixth of making them. */
static char *block_alloc(size_t len)
{
	size_t a = len >= HUGE_PAGE ? HUGE_PAGE : 64;
	char *p = aligned_alloc(a, (len + a - 1) / a * a + (len ? 0 : a));

	if (p && a == HUGE_PAGE)
		(void)madvise(p, (len + a - 1) / a * a, MADV_HUGEPAGE); /* a hint: EINVAL is fine */
	return p;
}

static int own_slot(size_t len, struct qv_xslot **slot)
{
	struct qv_xslot *s = calloc(1, sizeof(*s));

	if (s)
		s->buf = block_alloc(len);
	if (!s || !s->buf) {
		free(s);
		return -ENOMEM;
	}
	s->own = true;
	*slot = s;
	return 0;
}

/* Drop slot s's buffer (it is not held). */
static void slot_drop(struct qv_xcache *xc, struct qv_xslot *s)
{
	xc->bytes -= s->cap;
	free(s->buf);
	s->buf = NULL;
	s->cap = 0;
	s->state = SLOT_EMPTY;
}

/* The unheld slot to reuse for a block of len bytes: an empty slot whose buffer is big enough;
 * while fewer slots than XCACHE_KEEP (or XCACHE_KEEP_BYTES of the biggest block) have buffers
 * and the budget has room, a new one; else the least recently used made block that a
 * request has used, its buffer replaced if too small; else the least recently made of those
 * made ahead and not yet used (its reader is still on the blocks before it, whose late
 * requests keep them recent); else (every made block held) an empty slot. New buffers are
 * kept few: each costs its pages' faults and zeroing, and a cold buffer a memory read per line
 * written. (Preferring a made block whose buffer is big enough evicted blocks still being
 * read when blocks of two sizes alternate: remaking one costs more than a new buffer.) NULL
 * when every slot is held. */
static struct qv_xslot *victim(struct qv_xcache *xc, size_t len)
{
	struct qv_xslot *best[5] = { NULL, NULL, NULL, NULL, NULL };
	size_t with = 0;
	bool room;

	for (size_t i = 0; i < XCACHE_SLOTS; i++)
		with += xc->s[i].cap > 0;
	room = (with < XCACHE_KEEP || with < XCACHE_KEEP_BYTES / (xc->maxlen ? xc->maxlen : 1)) &&
	       xc->bytes + len <= xc->budget;

	for (size_t i = 0; i < XCACHE_SLOTS; i++) {
		struct qv_xslot *s = &xc->s[i];
		bool empty = s->state == SLOT_EMPTY, big = s->cap >= len;

		if (s->holds)
			continue;
		if (empty && big && !best[0])
			best[0] = s;
		if (empty && room && !best[1])
			best[1] = s;
		if (!empty && !s->unread && (!best[2] || s->tick < best[2]->tick))
			best[2] = s;
		if (!empty && s->unread && (!best[3] || s->tick < best[3]->tick))
			best[3] = s;
		if (empty && !best[4])
			best[4] = s;
	}
	for (int k = 0; k < 5; k++)
		if (best[k])
			return best[k];
	return NULL;
}

/* Give slot v (unheld) a buffer of len bytes within the budget, dropping the least recently
 * used unheld blocks to make room; 0 or -ENOMEM. A new buffer is as big as the biggest block
 * asked for yet, so that blocks of two sizes (gate_up's and down's) do not replace each
 * other's buffers over and over, each time in fresh memory. */
static int slot_room(struct qv_xcache *xc, struct qv_xslot *v, size_t len)
{
	if (v->cap >= len)
		return 0;
	len = xc->maxlen;
	slot_drop(xc, v);
	while (xc->bytes + len > xc->budget) {
		struct qv_xslot *o = NULL;

		for (size_t i = 0; i < XCACHE_SLOTS; i++) {
			struct qv_xslot *s = &xc->s[i];

			if (s != v && !s->holds && s->cap && (!o || s->tick < o->tick))
				o = s;
		}
		if (!o)
			break; /* only held blocks left: go over, by this one */
		slot_drop(xc, o);
	}
	v->buf = block_alloc(len);
	if (!v->buf)
		return -ENOMEM;
	v->cap = len;
	xc->bytes += len;
	return 0;
}

/* The slot holding or making block b of c; NULL when neither. Called locked. */
static struct qv_xslot *find(struct qv_xcache *xc, const struct qv_comp *c, uint64_t b)
{
	for (size_t i = 0; i < XCACHE_SLOTS; i++)
		if (xc->s[i].state != SLOT_EMPTY && xc->s[i].id == c->id && xc->s[i].b == b)
			return &xc->s[i];
	return NULL;
}

/* Claim a slot for block b of c (absent from the cache), ahead of its requests or not: 0 with
 * *slot held and SLOT_MAKING; 1 when every slot is held; -ENOMEM. Called locked. */
static int claim(struct qv_xcache *xc, const struct qv_comp *c, uint64_t b, bool ahead,
		 struct qv_xslot **slot)
{
	struct qv_xslot *v;
	int rc;

	if (c->blen > xc->maxlen)
		xc->maxlen = c->blen;
	v = victim(xc, c->blen);
	if (!v)
		return 1;
	rc = slot_room(xc, v, c->blen);
	if (rc) {
		v->state = SLOT_EMPTY;
		return rc;
	}
	v->id = c->id;
	v->b = b;
	v->unread = ahead;
	v->state = SLOT_MAKING;
	v->holds = 1;
	v->tick = ++xc->clock;
	xc->made++;
	*slot = v;
	return 0;
}

int qv_xcache_get(struct qv_xcache *xc, const struct qv_comp *c, uint64_t b,
		  struct qv_xslot **slot)
{
	struct qv_xslot *s;
	int rc;

	if (!xc)
		return own_slot(c->blen, slot);
	pthread_mutex_lock(&xc->mu);
	while ((s = find(xc, c, b)) && s->state != SLOT_READY)
		pthread_cond_wait(&xc->cv, &xc->mu); /* another thread is making it */
	if (s) {
		s->holds++;
		s->tick = ++xc->clock;
		s->unread = false;
		xc->hits++;
		pthread_mutex_unlock(&xc->mu);
		*slot = s;
		return 1;
	}
	rc = claim(xc, c, b, false, slot);
	pthread_mutex_unlock(&xc->mu);
	return rc == 1 ? own_slot(c->blen, slot) : rc;
}

int qv_xcache_claim(struct qv_xcache *xc, const struct qv_comp *c, uint64_t b,
		    struct qv_xslot **slot)
{
	int rc = 1;

	if (!xc)
		return 1;
	pthread_mutex_lock(&xc->mu);
	if (!find(xc, c, b))
		rc = claim(xc, c, b, true, slot);
	xc->ahead += rc == 0;
	pthread_mutex_unlock(&xc->mu);
	return rc;
}

char *qv_xslot_data(struct qv_xslot *s)
{
	return s->buf;
}

void qv_xcache_made(struct qv_xcache *xc, struct qv_xslot *s, int rc)
{
	if (s->own)
		return;
	pthread_mutex_lock(&xc->mu);
	s->state = rc ? SLOT_EMPTY : SLOT_READY;
	pthread_cond_broadcast(&xc->cv);
	pthread_mutex_unlock(&xc->mu);
}

void qv_xcache_put(struct qv_xcache *xc, struct qv_xslot *s)
{
	if (s->own) {
		free(s->buf);
		free(s);
		return;
	}
	pthread_mutex_lock(&xc->mu);
	s->holds--;
	pthread_mutex_unlock(&xc->mu);
}

void qv_xcache_counts(struct qv_xcache *xc, uint64_t *hits, uint64_t *made, uint64_t *ahead)
{
	*hits = *made = *ahead = 0;
	if (!xc)
		return;
	pthread_mutex_lock(&xc->mu);
	*hits = xc->hits;
	*made = xc->made;
	*ahead = xc->ahead;
	pthread_mutex_unlock(&xc->mu);
}
