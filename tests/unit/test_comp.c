/* test_comp.c - computed tensors: a block's input layout and runs, the operations against
 * element-by-element references (transposition by index, dequantization through qv_xf's
 * scalar element functions), the checks on operations, and the cache: a hit, one make for
 * concurrent requests, a failed make retried, a caller's own slot when every slot is held,
 * and the byte budget. */
#include "unit.h"

#include "qv_comp.h"
#include "qv_xf.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* A fake source: runs are served from this buffer (source index 0) or the scale buffer (1). */
struct fake {
	const char *src[2];
	char *in;
	uint64_t bytes;
	unsigned runs;
};

static int fake_run(void *arg, uint32_t src, uint64_t soff, uint64_t len, uint64_t in_off)
{
	struct fake *f = arg;

	memcpy(f->in + in_off, f->src[src] + soff, len);
	f->bytes += len;
	f->runs++;
	return 0;
}

/* Fill block b's input from f's buffers and make it into out. */
static void make(const struct qv_comp *c, uint64_t b, struct fake *f, char *out)
{
	f->in = aligned_alloc(8, (qv_comp_in_len(c, b) + 7) / 8 * 8 + 8);
	CHECK_EQ_INT(qv_comp_runs(c, b, fake_run, f), 0);
	qv_comp_run(c, b, f->in, out);
	free(f->in);
}

TEST(comp_transpose_columns_of_a_strided_slab)
{
	/* 3 experts of [A=5, B=7] 16-bit; the view takes columns [2, 6) of expert 1 and 2 */
	enum { E = 3, A = 5, B = 7, C0 = 2, NC = 4 };
	uint16_t src[E * A * B], out[2 * NC * A];
	struct qv_comp *c = qv_comp_new(2, NC * A * 2, 1);
	struct fake f = { .src = { (const char *)src, NULL } };

	for (unsigned i = 0; i < E * A * B; i++)
		src[i] = (uint16_t)(i * 7919u + 3);
	for (uint64_t k = 0; k < 2; k++)
		c->ops[k] = (struct qv_xop){ .kind = QV_XOP_T16, .soff = ((1 + k) * A * B + C0) * 2,
					     .sstride = B * 2, .rows = A, .cols = NC, .dst_stride = A };
	CHECK_EQ_INT(qv_comp_check(c), 0);
	CHECK_EQ_U64(qv_comp_in_len(c, 0), (uint64_t)A * NC * 2);
	for (uint64_t k = 0; k < 2; k++)
		make(c, k, &f, (char *)(out + k * NC * A));
	CHECK_EQ_U64(f.runs, 2 * A); /* a row each: the columns are strided */
	CHECK_EQ_U64(f.bytes, 2 * A * NC * 2);
	for (unsigned k = 0; k < 2; k++)
		for (unsigned col = 0; col < NC; col++)
			for (unsigned r = 0; r < A; r++)
				if (!CHECK_EQ_U64(out[k * NC * A + col * A + r],
						  src[(1 + k) * A * B + r * B + C0 + col]))
					goto done;
done:
	qv_comp_free(c);
}

TEST(comp_dequant_two_halves_of_one_block)
{
	/* per-expert FP8 gate and up [I=130, H=200] (edge blocks partial) into one [H, 2I] */
	enum { I = 130, H = 200, BL = 128 };
	size_t sr = (I + BL - 1) / BL, sc = (H + BL - 1) / BL;
	uint8_t *w = malloc(2 * I * H);
	float *s = malloc(2 * sr * sc * sizeof(float));
	uint16_t *out = calloc((size_t)H * 2 * I, 2);
	struct qv_comp *c = qv_comp_new(1, (uint64_t)H * 2 * I * 2, 2);
	struct fake f = { .src = { (const char *)w, (const char *)s } };
	unsigned bad = 0;

	for (size_t i = 0; i < 2 * (size_t)I * H; i++)
		w[i] = (uint8_t)((i * 131u + 17) & 0x7e); /* no NaN (0x7f) */
	for (size_t i = 0; i < 2 * sr * sc; i++)
		s[i] = 0.25f * (float)(i + 1);
	for (unsigned h = 0; h < 2; h++)
		c->ops[h] = (struct qv_xop){ .kind = QV_XOP_DQ_T, .src = 0, .scale_src = 1,
					     .block = BL, .soff = (uint64_t)h * I * H, .sstride = H,
					     .rows = I, .cols = H,
					     .scale_off = h * sr * sc * sizeof(float),
					     .scale_stride = sc * sizeof(float), .dst_off = h * I,
					     .dst_stride = 2 * I };
	CHECK_EQ_INT(qv_comp_check(c), 0);
	make(c, 0, &f, (char *)out);
	CHECK_EQ_U64(f.runs, 4); /* each weight and each scale grid: one contiguous run */
	for (unsigned h = 0; h < 2; h++)
		for (unsigned r = 0; r < I; r++)
			for (unsigned col = 0; col < H; col++) {
				float v = qv_xf_e4m3(w[(size_t)h * I * H + r * H + col]) *
					  s[h * sr * sc + (r / BL) * sc + col / BL];

				bad += out[(size_t)col * 2 * I + h * I + r] != qv_xf_bf16(v);
			}
	CHECK_EQ_U64(bad, 0);
	free(w);
	free(s);
	free(out);
	qv_comp_free(c);
}

TEST(comp_check_refuses_ops_outside_the_block)
{
	struct qv_comp *c = qv_comp_new(1, 4 * 6 * 2, 1);

	c->ops[0] = (struct qv_xop){ .kind = QV_XOP_T16, .rows = 4, .cols = 6, .dst_stride = 4 };
	CHECK_EQ_INT(qv_comp_check(c), 0);
	c->ops[0].dst_off = 1; /* one element past the end */
	CHECK_EQ_INT(qv_comp_check(c), -EINVAL);
	c->ops[0].dst_off = 0;
	c->ops[0].dst_stride = 3; /* rows overlap */
	CHECK_EQ_INT(qv_comp_check(c), -EINVAL);
	c->ops[0] = (struct qv_xop){ .kind = QV_XOP_DQ, .rows = 4, .cols = 6, .dst_stride = 6 };
	CHECK_EQ_INT(qv_comp_check(c), -EINVAL); /* FP8 without a block size */
	qv_comp_free(c);
}

TEST(comp_ids_are_never_reused)
{
	struct qv_comp *a = qv_comp_new(1, 2, 1), *b;
	uint64_t id = a->id;

	qv_comp_free(a);
	b = qv_comp_new(1, 2, 1); /* may sit where a was: its blocks must not be a's */
	CHECK(b->id != id);
	qv_comp_free(b);
}

/* The cache's counters are hits, made and ahead (the caller's line is in the message). */
static void counts_are(struct qv_xcache *xc, uint64_t hits, uint64_t made, uint64_t ahead,
		       int line)
{
	uint64_t h, m, a;

	qv_xcache_counts(xc, &h, &m, &a);
	CHECK_MSG(h == hits && m == made && a == ahead,
		  "line %d: hits %llu made %llu ahead %llu, want %llu %llu %llu", line,
		  (unsigned long long)h, (unsigned long long)m, (unsigned long long)a,
		  (unsigned long long)hits, (unsigned long long)made, (unsigned long long)ahead);
}

TEST(xcache_hit_after_make_and_retry_after_failure)
{
	struct qv_xcache *xc;
	struct qv_comp *c = qv_comp_new(4, 64, 1);
	struct qv_xslot *s;

	CHECK_EQ_INT(qv_xcache_new(1 << 20, &xc), 0);
	CHECK_EQ_INT(qv_xcache_get(xc, c, 2, &s), 0);
	memset(qv_xslot_data(s), 0xab, 64);
	qv_xcache_made(xc, s, 0);
	qv_xcache_put(xc, s);
	CHECK_EQ_INT(qv_xcache_get(xc, c, 2, &s), 1);
	CHECK_EQ_U64((uint8_t)qv_xslot_data(s)[63], 0xab);
	qv_xcache_put(xc, s);
	CHECK_EQ_INT(qv_xcache_get(xc, c, 3, &s), 0); /* another block: made */
	qv_xcache_made(xc, s, -EIO);		       /* and failed: not kept */
	qv_xcache_put(xc, s);
	CHECK_EQ_INT(qv_xcache_get(xc, c, 3, &s), 0);
	qv_xcache_made(xc, s, 0);
	qv_xcache_put(xc, s);
	counts_are(xc, 1, 3, 0, __LINE__);
	qv_xcache_free(xc);
	qv_comp_free(c);
}

/* A block claimed ahead is made once: a claim of a block there or being made gives nothing to
 * do and never waits, and a get of a block being made ahead waits for it. */
TEST(xcache_claim_ahead)
{
	struct qv_comp *c = qv_comp_new(4, 64, 1);
	struct qv_xcache *xc;
	struct qv_xslot *s, *t;

	CHECK_EQ_INT(qv_xcache_new(1 << 20, &xc), 0);
	CHECK_EQ_INT(qv_xcache_claim(NULL, c, 0, &s), 1); /* no cache: nothing made ahead */
	CHECK_EQ_INT(qv_xcache_claim(xc, c, 1, &s), 0);
	CHECK_EQ_INT(qv_xcache_claim(xc, c, 1, &t), 1); /* being made */
	memset(qv_xslot_data(s), 0x5a, 64);
	qv_xcache_made(xc, s, 0);
	qv_xcache_put(xc, s);
	CHECK_EQ_INT(qv_xcache_claim(xc, c, 1, &t), 1); /* made */
	CHECK_EQ_INT(qv_xcache_get(xc, c, 1, &t), 1);
	CHECK_EQ_U64((uint8_t)qv_xslot_data(t)[63], 0x5a);
	qv_xcache_put(xc, t);
	CHECK_EQ_INT(qv_xcache_claim(xc, c, 2, &s), 0); /* failed: dropped, claimed again */
	qv_xcache_made(xc, s, -EIO);
	qv_xcache_put(xc, s);
	CHECK_EQ_INT(qv_xcache_claim(xc, c, 2, &s), 0);
	qv_xcache_made(xc, s, 0);
	qv_xcache_put(xc, s);
	counts_are(xc, 1, 3, 3, __LINE__);
	qv_xcache_free(xc);
	qv_comp_free(c);
}

TEST(xcache_budget_and_every_slot_held)
{
	struct qv_xcache *xc;
	struct qv_comp *c = qv_comp_new(64, 1000, 1);
	struct qv_xslot *held[40];
	struct qv_xslot *s;
	int n = 0;

	/* room for 3 blocks: a fourth drops the least recently used */
	CHECK_EQ_INT(qv_xcache_new(3000, &xc), 0);
	for (uint64_t b = 0; b < 4; b++) {
		CHECK_EQ_INT(qv_xcache_get(xc, c, b, &s), 0);
		qv_xcache_made(xc, s, 0);
		qv_xcache_put(xc, s);
	}
	CHECK_EQ_INT(qv_xcache_get(xc, c, 0, &s), 0); /* dropped: made again */
	qv_xcache_made(xc, s, 0);
	qv_xcache_put(xc, s);
	CHECK_EQ_INT(qv_xcache_get(xc, c, 3, &s), 1); /* the newest stayed */
	qv_xcache_put(xc, s);
	/* every slot held: the caller gets a block of its own, never a held one */
	for (uint64_t b = 10; b < 50; b++) {
		int rc = qv_xcache_get(xc, c, b, &held[n]);

		CHECK_EQ_INT(rc, 0);
		memset(qv_xslot_data(held[n]), (int)b, 1000);
		n++;
	}
	for (int i = 0; i < n; i++) {
		CHECK_EQ_U64((uint8_t)qv_xslot_data(held[i])[999], 10 + (unsigned)i);
		qv_xcache_made(xc, held[i], 0);
		qv_xcache_put(xc, held[i]);
	}
	qv_xcache_free(xc);
	qv_comp_free(c);
}

/* Which block a new one takes the place of, when no slot is free: the least recently used of
 * those a request has used, before one made ahead and not yet read (its reader is still on
 * the blocks before it); a used block's buffer too small for the new block is replaced. */
TEST(xcache_reuse_order)
{
	struct qv_comp *small = qv_comp_new(64, 64, 1), *big = qv_comp_new(4, 256, 1);
	struct qv_xcache *xc;
	struct qv_xslot *s;

	CHECK_EQ_INT(qv_xcache_new(1 << 20, &xc), 0);
	CHECK_EQ_INT(qv_xcache_claim(xc, small, 0, &s), 0); /* made ahead: the oldest */
	qv_xcache_made(xc, s, 0);
	qv_xcache_put(xc, s);
	for (uint64_t b = 1; b < 32; b++) { /* every other slot: used blocks */
		CHECK_EQ_INT(qv_xcache_get(xc, small, b, &s), 0);
		qv_xcache_made(xc, s, 0);
		qv_xcache_put(xc, s);
	}
	CHECK_EQ_INT(qv_xcache_get(xc, big, 0, &s), 0); /* takes block 1's slot, a bigger buffer */
	memset(qv_xslot_data(s), 0x77, 256);
	qv_xcache_made(xc, s, 0);
	qv_xcache_put(xc, s);
	CHECK_EQ_INT(qv_xcache_get(xc, small, 0, &s), 1); /* the unread one stayed */
	qv_xcache_put(xc, s);
	CHECK_EQ_INT(qv_xcache_get(xc, big, 0, &s), 1);
	CHECK_EQ_U64((uint8_t)qv_xslot_data(s)[255], 0x77);
	qv_xcache_put(xc, s);
	CHECK_EQ_INT(qv_xcache_get(xc, small, 2, &s), 1); /* the next oldest used one stayed too */
	qv_xcache_put(xc, s);
	CHECK_EQ_INT(qv_xcache_get(xc, small, 1, &s), 0); /* the oldest used one went */
	qv_xcache_made(xc, s, 0);
	qv_xcache_put(xc, s);
	qv_xcache_free(xc);
	qv_comp_free(small);
	qv_comp_free(big);
}

/* Threads asking for one block at once: one makes it (slowly), the others wait and share it. */
struct racer {
	struct qv_xcache *xc;
	const struct qv_comp *c;
	atomic_int *makers;
	unsigned char seen;
};

static void *race(void *arg)
{
	struct racer *r = arg;
	struct qv_xslot *s;
	int rc = qv_xcache_get(r->xc, r->c, 7, &s);

	if (rc == 0) {
		atomic_fetch_add(r->makers, 1);
		usleep(20000);
		memset(qv_xslot_data(s), 0x5a, r->c->blen);
		qv_xcache_made(r->xc, s, 0);
	}
	if (rc >= 0) {
		r->seen = (unsigned char)qv_xslot_data(s)[r->c->blen - 1];
		qv_xcache_put(r->xc, s);
	}
	return NULL;
}

TEST(xcache_concurrent_requests_make_a_block_once)
{
	struct qv_xcache *xc;
	struct qv_comp *c = qv_comp_new(8, 4096, 1);
	atomic_int makers = 0;
	struct racer r[6];
	pthread_t th[6];

	CHECK_EQ_INT(qv_xcache_new(1 << 20, &xc), 0);
	for (int i = 0; i < 6; i++) {
		r[i] = (struct racer){ .xc = xc, .c = c, .makers = &makers };
		pthread_create(&th[i], NULL, race, &r[i]);
	}
	for (int i = 0; i < 6; i++) {
		pthread_join(th[i], NULL);
		CHECK_EQ_U64(r[i].seen, 0x5a);
	}
	CHECK_EQ_INT(atomic_load(&makers), 1);
	qv_xcache_free(xc);
	qv_comp_free(c);
}
