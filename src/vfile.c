/* vfile.c - segment lists and the read path: find the overlapping segments, copy memory ones,
 * turn extents into one batch of reads. */
#include "qv_vfile.h"
#include "qv_dcp.h"
#include "qv_util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* a reply buffer is never smaller: the usual read requests fit at once */
#define READER_BUF_MIN (1u << 20)

int qv_vfile_add(struct qv_vfile *vf, const struct qv_seg *s)
{
	struct qv_seg *last = vf->nseg ? &vf->seg[vf->nseg - 1] : NULL;
	struct qv_seg *p;

	if (s->len == 0)
		return 0;
	/* whole tensors packed back to back read as one extent: fewer, larger reads */
	if (last && s->src < QV_SEG_COMPUTED && last->src == s->src &&
	    last->run == last->len &&
	    s->run == s->len && last->soff + last->len == s->soff &&
	    last->voff + last->len == s->voff) {
		last->len += s->len;
		last->run = last->stride = last->len;
		vf->size = s->voff + s->len;
		return 0;
	}
	if ((vf->nseg & (vf->nseg - 1)) == 0) { /* grow at powers of two */
		p = realloc(vf->seg, (vf->nseg ? vf->nseg * 2 : 4) * sizeof(*p));
		if (!p)
			return -ENOMEM;
		vf->seg = p;
	}
	vf->seg[vf->nseg++] = *s;
	vf->size = s->voff + s->len;
	return 0;
}

int qv_vfile_add_mem(struct qv_vfile *vf, struct qv_buf *b)
{
	struct qv_seg s = { .voff = vf->size, .len = b->len, .src = QV_SEG_MEM, .mem = b->p };

	/* one owned block per file: freeing an earlier one would leave its segment dangling */
	if (vf->mem)
		return -EEXIST;
	vf->mem = b->p;
	b->p = NULL;
	b->len = b->cap = 0;
	return qv_vfile_add(vf, &s);
}

int qv_vfile_add_comp(struct qv_vfile *vf, struct qv_comp *c)
{
	struct qv_comp **p = realloc(vf->comps, (vf->ncomps + 1) * sizeof(*p));
	struct qv_seg s = { .voff = vf->size, .len = c->len, .src = QV_SEG_COMPUTED,
			    .comp = c };

	if (!p) {
		qv_comp_free(c);
		return -ENOMEM;
	}
	vf->comps = p;
	vf->comps[vf->ncomps++] = c;
	return qv_vfile_add(vf, &s);
}

int qv_vfile_slice(struct qv_vfile *dst, const struct qv_vfile *src, uint64_t off, uint64_t len)
{
	int rc = 0;

	dst->base = src->base;
	for (size_t i = 0; i < src->nsrcs && !rc; i++)
		rc = qv_vfile_use_src(dst, src->srcs[i]);
	for (size_t i = 0; i < src->nseg && !rc; i++) {
		struct qv_seg s = src->seg[i];
		uint64_t a = off > s.voff ? off - s.voff : 0;
		uint64_t e = off + len < s.voff + s.len ? off + len - s.voff : s.len;

		if (s.voff + s.len <= off || s.voff >= off + len)
			continue;
		if (a || e != s.len) {
			if (s.src >= QV_SEG_COMPUTED || (s.src != QV_SEG_MEM && s.run != s.len))
				return -EINVAL;
			if (s.src == QV_SEG_MEM)
				s.mem += a;
			else
				s.soff += a, s.run = s.stride = e - a;
		}
		s.len = e - a;
		s.voff = s.voff + a - off;
		rc = qv_vfile_add(dst, &s);
	}
	return rc;
}

int qv_vfile_use_src(struct qv_vfile *vf, uint32_t i)
{
	uint32_t *p;

	for (size_t k = 0; k < vf->nsrcs; k++)
		if (vf->srcs[k] == i)
			return 0;
	p = realloc(vf->srcs, (vf->nsrcs + 1) * sizeof(*p));
	if (!p)
		return -ENOMEM;
	vf->srcs = p;
	vf->srcs[vf->nsrcs++] = i;
	return 0;
}

void qv_vfile_fini(struct qv_vfile *vf)
{
	free(vf->seg);
	free(vf->mem);
	free(vf->tiles);
	for (size_t i = 0; i < vf->ncomps; i++)
		qv_comp_free(vf->comps[i]);
	free(vf->comps);
	free(vf->srcs);
	memset(vf, 0, sizeof(*vf));
}

static bool same_file(const struct qv_source *s, const struct stat *st)
{
	return st->st_dev == s->dev && st->st_ino == s->ino && st->st_size == s->size &&
	       st->st_mtim.tv_sec == s->mtime.tv_sec && st->st_mtim.tv_nsec == s->mtime.tv_nsec;
}

static int stale(struct qv_source *s)
{
	if (!atomic_exchange(&s->stale_logged, 1))
		qv_log("%s: source changed since mount (size, mtime or inode): reads fail with EIO",
		       s->rel);
	return -EIO;
}

/* Caller holds s->mu, so fd cannot be closed (and its number reused) under the fstat. */
static int check_locked(struct qv_source *s)
{
	struct stat a, b;
	int fd = atomic_load(&s->fd);

	/* the path must still name the scanned file, and that file must be unchanged */
	if (stat(s->path, &a) == 0 && same_file(s, &a) &&
	    (fd < 0 || (fstat(fd, &b) == 0 && same_file(s, &b))))
		return 0;
	return stale(s);
}

/* Open s's fd if it is not open; caller holds s->mu. */
static int source_open_locked(struct qv_source *s)
{
	struct stat st;
	int fd;

	if (atomic_load(&s->fd) >= 0)
		return 0;
	/* O_NONBLOCK: a FIFO swapped in after the check must not block this worker */
	fd = open(s->path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
	if (fd < 0)
		return -errno;
	/* what we opened must be what was scanned: a path swapped for a link since then (to a
	 * file outside the source, say) is refused, not served; and blocking again, since
	 * io_uring answers -EAGAIN for uncached reads of an O_NONBLOCK file */
	if (fstat(fd, &st) || !same_file(s, &st) ||
	    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK)) {
		close(fd);
		return stale(s);
	}
	atomic_store(&s->fd, fd);
	return 0;
}

int qv_source_open(struct qv_source *s)
{
	int rc;

	if (atomic_load(&s->fd) >= 0)
		return 0;
	pthread_mutex_lock(&s->mu);
	rc = source_open_locked(s);
	pthread_mutex_unlock(&s->mu);
	return rc;
}

int qv_source_get(struct qv_source *s)
{
	int rc;

	pthread_mutex_lock(&s->mu);
	rc = check_locked(s);
	if (!rc)
		rc = source_open_locked(s);
	if (!rc)
		s->users++;
	pthread_mutex_unlock(&s->mu);
	return rc;
}

void qv_source_put(struct qv_source *s)
{
	pthread_mutex_lock(&s->mu);
	/* no read is in flight here: the kernel releases a file only after its reads end */
	if (--s->users == 0 && !s->pinned && atomic_load(&s->fd) >= 0) {
		close(atomic_load(&s->fd));
		atomic_store(&s->fd, -1);
	}
	pthread_mutex_unlock(&s->mu);
}

int qv_source_check(struct qv_source *s)
{
	int rc;

	pthread_mutex_lock(&s->mu);
	rc = check_locked(s);
	pthread_mutex_unlock(&s->mu);
	return rc;
}

int qv_source_unchanged(struct qv_source *s)
{
	struct stat st;
	int fd = atomic_load(&s->fd);

	/* a write in progress has already moved mtime, so a check after the read catches it */
	if (fd >= 0 && (fstat(fd, &st) || !same_file(s, &st)))
		return stale(s);
	return 0;
}

/* The end of a request for len bytes at off (< size): at most the file's end. */
static uint64_t req_end(const struct qv_vfile *vf, uint64_t off, size_t len)
{
	return len < vf->size - off ? off + len : vf->size;
}

/* First segment whose end lies past off (segments are sorted and contiguous). */
static size_t seg_find(const struct qv_vfile *vf, uint64_t off)
{
	size_t lo = 0, hi = vf->nseg;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (vf->seg[mid].voff + vf->seg[mid].len <= off)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

int qv_vfile_run(const struct qv_vfile *vf, uint64_t off, size_t len, uint32_t *src,
		 uint64_t *soff, size_t *n)
{
	const struct qv_seg *s;
	uint64_t end, a, in;

	if (off >= vf->size || len == 0)
		return -EINVAL;
	end = req_end(vf, off, len);
	s = &vf->seg[seg_find(vf, off)]; /* off < size: some segment holds it */
	/* computed bytes are made in the reader's memory: they never splice */
	if (s->voff > off || s->src >= QV_SEG_COMPUTED || end > s->voff + s->len)
		return -EINVAL;
	a = off - s->voff;
	in = a % s->run;
	if (end - off > s->run - in) /* crosses into the next strided run */
		return -EINVAL;
	*src = s->src;
	*soff = s->soff + a / s->run * s->stride + in;
	*n = (size_t)(end - off);
	return 0;
}

/* Append one read to the array *ops of *cap (grown at need) holding *n. */
static int push_iop(struct qv_iop **ops, size_t *cap, size_t *n, uint32_t src, int fd,
		    uint64_t off, uint64_t len, char *dst)
{
	if (*n == *cap) {
		size_t c = *cap ? *cap * 2 : 64;
		struct qv_iop *p = realloc(*ops, c * sizeof(*p));

		if (!p)
			return -ENOMEM;
		*ops = p;
		*cap = c;
	}
	(*ops)[(*n)++] = (struct qv_iop){ .fd = fd, .off = off, .len = len, .dst = dst, .tag = src };
	return 0;
}

static int push_op(struct qv_rdscratch *sc, size_t *n, uint32_t src, int fd, uint64_t off,
		   uint64_t len, char *dst)
{
	return push_iop(&sc->ops, &sc->cap, n, src, fd, off, len, dst);
}

/* Bytes [a, b) of extent segment s, as runs, into dst. */
static int plan_extent(const struct qv_seg *s, int fd, uint64_t a, uint64_t b, char *dst,
		       struct qv_rdscratch *sc, size_t *n)
{
	while (a < b) {
		uint64_t k = a / s->run, in = a % s->run;
		uint64_t take = s->run - in < b - a ? s->run - in : b - a;
		int rc = push_op(sc, n, s->src, fd, s->soff + k * s->stride + in, take, dst);

		if (rc)
			return rc;
		dst += take;
		a += take;
	}
	return 0;
}

/* Offsets and sizes in the read path go unchecked on purpose (it runs per request): each is
 * bounded by a tensor's or a file's byte count, which the mount checked with overflow-checked
 * arithmetic (st.c for sources, dcp.c's global_shape for consolidated tensors) and which the
 * strict re-parse of every virtual header keeps at most 2^53. */

/* Units: elements in every dimension but the innermost, which counts bytes. */
static uint64_t unit(const struct qv_tile *t, const uint64_t *v, uint32_t k)
{
	return k + 1 == t->ndim ? v[k] * t->es : v[k];
}

/* The chunk holding global position g (in units), or NULL. */
static const struct qv_chunk *chunk_at(const struct qv_tile *t, const uint64_t *g)
{
	for (size_t i = 0; i < t->nc; i++) {
		uint32_t k;

		for (k = 0; k < t->ndim; k++)
			if (g[k] < unit(t, t->c[i].off, k) ||
			    g[k] >= unit(t, t->c[i].off, k) + unit(t, t->c[i].shape, k))
				break;
		if (k == t->ndim)
			return &t->c[i];
	}
	return NULL;
}

/* From global position g, how many units stay contiguous in global order inside the box
 * (off, shape): up to the end of the last dimension where the box is narrower than the
 * tensor, the dimensions after it being whole. */
static uint64_t box_run(const struct qv_tile *t, const uint64_t *off, const uint64_t *shape,
			const uint64_t *g)
{
	uint64_t inner = 1, r = 0;
	int k;

	for (k = (int)t->ndim - 1; k >= 0; k--) {
		if (unit(t, shape, (uint32_t)k) != unit(t, t->gshape, (uint32_t)k))
			break;
		r += g[k] * inner;
		inner *= unit(t, t->gshape, (uint32_t)k);
	}
	if (k < 0) /* the box is the whole tensor */
		return inner - r;
	return (unit(t, off, (uint32_t)k) + unit(t, shape, (uint32_t)k) - g[k]) * inner - r;
}

/* Bytes [a, b) of a tiled segment: walk the window, one run per stretch that is contiguous
 * both in the window and in one chunk. */
static int plan_tiled(const struct qv_seg *s, struct qv_source *srcs, uint64_t a, uint64_t b,
		      char *dst, struct qv_rdscratch *sc, size_t *n)
{
	const struct qv_tile *t = s->tile;

	while (a < b) {
		uint64_t g[QV_TILE_DIMS], rem = a, local = 0, stride = 1, take;
		const struct qv_chunk *c;
		int rc;

		for (int k = (int)t->ndim - 1; k >= 0; k--) {
			uint64_t w = unit(t, t->wshape, (uint32_t)k);

			g[k] = rem % w + unit(t, t->woff, (uint32_t)k);
			rem /= w;
		}
		c = chunk_at(t, g);
		if (!c)
			return -EIO; /* coverage was checked at mount: a bug, never stray bytes */
		for (int k = (int)t->ndim - 1; k >= 0; k--) {
			local += (g[k] - unit(t, c->off, (uint32_t)k)) * stride;
			stride *= unit(t, c->shape, (uint32_t)k);
		}
		take = box_run(t, c->off, c->shape, g);
		if (box_run(t, t->woff, t->wshape, g) < take)
			take = box_run(t, t->woff, t->wshape, g);
		if (take > b - a)
			take = b - a;
		rc = qv_source_open(&srcs[c->src]);
		if (!rc)
			rc = push_op(sc, n, c->src, atomic_load(&srcs[c->src].fd), c->soff + local, take,
				     dst);
		if (rc)
			return rc;
		dst += take;
		a += take;
	}
	return 0;
}

/* After the reads: the sources this request touched (not every source of the file: a
 * consolidated file may have one per rank) must still be unchanged. */
static int check_touched(struct qv_source *srcs, const struct qv_iop *ops, size_t n)
{
	uint32_t seen[16];
	size_t nseen = 0;

	for (size_t i = 0; i < n; i++) {
		size_t k;
		int rc;

		for (k = 0; k < nseen && seen[k] != ops[i].tag; k++)
			;
		if (k < nseen)
			continue;
		if (nseen < 16) /* past that, a repeated check is merely redundant */
			seen[nseen++] = ops[i].tag;
		rc = qv_source_unchanged(&srcs[ops[i].tag]);
		if (rc)
			return rc;
	}
	return 0;
}

/* Where qv_comp_runs hands a computed block's runs: reads into the reader's input buffer. */
struct xrun {
	struct qv_source *srcs;
	struct qv_rdscratch *sc;
	size_t n;
	uint64_t bytes;
};

static int xrun_push(void *arg, uint32_t src, uint64_t soff, uint64_t len, uint64_t in_off)
{
	struct xrun *x = arg;
	int rc = qv_source_open(&x->srcs[src]);

	x->bytes += len;
	return rc ? rc : push_iop(&x->sc->xops, &x->sc->xcap, &x->n, src,
				  atomic_load(&x->srcs[src].fd), soff, len, x->sc->xin.p + in_off);
}

/* Make block b of c into out: its input read in one batch, then computed; *src_bytes grows
 * by the bytes read. */
static int make_block(const struct qv_comp *c, uint64_t b, struct qv_source *srcs,
		      struct qv_io *io, struct qv_rdscratch *sc, char *out, uint64_t *src_bytes)
{
	struct xrun x = { .srcs = srcs, .sc = sc };
	int rc;

	sc->xin.len = 0;
	rc = qv_buf_reserve(&sc->xin, qv_comp_in_len(c, b));
	if (!rc)
		rc = qv_comp_runs(c, b, xrun_push, &x);
	if (!rc)
		rc = qv_io_run(io, sc->xops, x.n);
	if (!rc)
		rc = check_touched(srcs, sc->xops, x.n);
	if (rc)
		return rc;
	if (!sc->skip_compute)
		qv_comp_run(c, b, sc->xin.p, out);
	*src_bytes += x.bytes;
	return 0;
}

/* A block made earlier is served only while its sources are unchanged, as a read would find
 * (a fstat of each: a block reads one or two files); 0 or -EIO. */
static int block_unchanged(const struct qv_comp *c, uint64_t b, struct qv_source *srcs)
{
	int rc = 0;

	for (uint32_t k = 0; k < c->nops && !rc; k++) {
		const struct qv_xop *op = &c->ops[b * c->nops + k];

		if (qv_xop_empty(op))
			continue;
		rc = qv_source_unchanged(&srcs[op->src]);
		if (!rc && op->kind != QV_XOP_T16 && op->scale_src != op->src)
			rc = qv_source_unchanged(&srcs[op->scale_src]);
	}
	return rc;
}

/* Block b of c in a slot of r's cache: made now (its inputs read, *src_bytes grows), or made
 * earlier and its sources still unchanged; 0 with *slot held, or -errno. */
static int block_of(const struct qv_comp *c, uint64_t b, struct qv_source *srcs,
		    struct qv_io *io, struct qv_rdscratch *sc, struct qv_xslot **slot,
		    uint64_t *src_bytes)
{
	int rc = qv_xcache_get(sc->xc, c, b, slot);

	if (rc < 0)
		return rc;
	if (rc == 0) {
		rc = make_block(c, b, srcs, io, sc, qv_xslot_data(*slot), src_bytes);
		qv_xcache_made(sc->xc, *slot, rc);
	} else {
		rc = block_unchanged(c, b, srcs);
	}
	if (rc)
		qv_xcache_put(sc->xc, *slot);
	return rc;
}

/* Bytes [a, b) of computed segment s into dst, a block at a time through the mount's cache:
 * sequential requests inside one block make it once. */
static int read_computed(const struct qv_seg *s, struct qv_source *srcs, uint64_t a, uint64_t b,
			 char *dst, struct qv_io *io, struct qv_rdscratch *sc, uint64_t *src_bytes)
{
	const struct qv_comp *c = s->comp;

	while (a < b) {
		uint64_t blk = a / c->blen, in = a % c->blen;
		uint64_t take = c->blen - in < b - a ? c->blen - in : b - a;
		struct qv_xslot *slot;
		int rc = block_of(c, blk, srcs, io, sc, &slot, src_bytes);

		if (rc)
			return rc;
		memcpy(dst, qv_xslot_data(slot) + in, take);
		qv_xcache_put(sc->xc, slot);
		dst += take;
		a += take;
	}
	return 0;
}

int qv_vfile_read(const struct qv_vfile *vf, struct qv_source *srcs, uint64_t off, size_t len,
		  char *buf, struct qv_io *io, struct qv_rdscratch *sc, size_t *got,
		  uint64_t *src_bytes)
{
	uint64_t end, pos = off;
	size_t n = 0;
	int rc;

	*got = 0;
	*src_bytes = 0;
	if (off >= vf->size)
		return 0;
	end = req_end(vf, off, len);
	for (size_t i = seg_find(vf, off); i < vf->nseg && pos < end; i++) {
		const struct qv_seg *s = &vf->seg[i];
		uint64_t a = pos - s->voff;
		uint64_t b = (end < s->voff + s->len ? end : s->voff + s->len) - s->voff;
		char *dst = buf + (pos - off);

		if (s->voff > pos)
			break; /* a hole: reported below, never filled with stray bytes */
		if (s->src == QV_SEG_MEM) {
			memcpy(dst, s->mem + a, b - a);
		} else if (s->src == QV_SEG_COMPUTED) {
			rc = read_computed(s, srcs, a, b, dst, io, sc, src_bytes);
			if (rc)
				return rc;
		} else if (s->src == QV_SEG_TILED) {
			rc = plan_tiled(s, srcs, a, b, dst, sc, &n);
			if (rc)
				return rc;
			*src_bytes += b - a;
		} else {
			rc = qv_source_open(&srcs[s->src]);
			if (!rc)
				rc = plan_extent(s, atomic_load(&srcs[s->src].fd), a, b, dst, sc, &n);
			if (rc)
				return rc;
			*src_bytes += b - a;
		}
		pos = s->voff + b;
	}
	if (pos != end)
		return -EIO; /* segments must tile the file; anything else is a bug, not data */
	rc = qv_io_run(io, sc->ops, n);
	if (!rc)
		rc = check_touched(srcs, sc->ops, n);
	if (rc)
		return rc;
	*got = (size_t)(end - off);
	return 0;
}

int qv_reader_new(const struct qv_io_cfg *cfg, struct qv_reader **out)
{
	struct qv_reader *r = calloc(1, sizeof(*r));
	int rc = r ? qv_io_new(cfg, &r->io) : -ENOMEM;

	if (rc) {
		free(r);
		return rc;
	}
	*out = r;
	return 0;
}

void qv_reader_free(struct qv_reader *r)
{
	if (!r)
		return;
	qv_reader_done(r);
	qv_io_free(r->io);
	free(r->sc.ops);
	free(r->sc.xops);
	qv_buf_free(&r->sc.xin);
	qv_buf_free(&r->out);
	free(r);
}

int qv_reader_reserve(struct qv_reader *r, size_t len)
{
	return qv_buf_reserve(&r->out, len < READER_BUF_MIN ? READER_BUF_MIN : len);
}

void qv_reader_unsent(struct qv_reader *r)
{
	qv_io_splice_reset(r->io);
}

int qv_vfile_splice(const struct qv_vfile *vf, struct qv_source *srcs, uint64_t off, size_t len,
		    struct qv_reader *r, struct qv_reply *rep)
{
	struct qv_source *s;
	uint64_t soff;
	uint32_t src;
	size_t n;
	int rd, rc = qv_vfile_run(vf, off, len, &src, &soff, &n);

	if (rc)
		return -EAGAIN;
	s = &srcs[src];
	rc = qv_source_open(s);
	/* the pipe holds the whole run or nothing (EIO on a source that ends early, which a
	 * short reply would have the kernel take for the end of the file) */
	if (!rc)
		rc = qv_io_splice(r->io, atomic_load(&s->fd), soff, n, &rd);
	if (rc)
		return rc;
	/* after the splice, as qv_vfile_read checks after its reads: a write that began before
	 * this has moved mtime already. The pipe refers to the source's pages rather than holding
	 * a copy, so a write landing between here and the reply's copy could still reach it:
	 * sources must not be written while mounted, and the copy path (-o nosplice) closes even
	 * that window. */
	rc = qv_source_unchanged(s);
	if (rc) {
		qv_io_splice_reset(r->io);
		return rc;
	}
	*rep = (struct qv_reply){ .fd = rd, .len = n, .from_src = n, .backend = QV_REPLY_SPLICED };
	return 0;
}

/* [off, off+len) of vf straight from its computed block, when it lies inside one block of
 * one computed segment (a copy fewer: the block is what the kernel copies from): 0 with *rep,
 * the block held by r until qv_reader_done; -EAGAIN when it does not lie so; -errno. */
static int reply_block(const struct qv_vfile *vf, struct qv_source *srcs, uint64_t off,
		       size_t len, struct qv_reader *r, struct qv_reply *rep)
{
	const struct qv_seg *s;
	const struct qv_comp *c;
	uint64_t end, a, blk, from = 0;
	struct qv_xslot *slot;
	int rc;

	if (off >= vf->size || !len)
		return -EAGAIN;
	end = req_end(vf, off, len);
	s = &vf->seg[seg_find(vf, off)];
	c = s->comp;
	if (s->src != QV_SEG_COMPUTED || s->voff > off || end > s->voff + s->len)
		return -EAGAIN;
	a = off - s->voff;
	blk = a / c->blen;
	if ((end - 1 - s->voff) / c->blen != blk)
		return -EAGAIN; /* across blocks: copied */
	rc = block_of(c, blk, srcs, r->io, &r->sc, &slot, &from);
	if (rc)
		return rc;
	r->held = slot;
	*rep = (struct qv_reply){ .p = qv_xslot_data(slot) + a % c->blen, .fd = -1,
				  .len = (size_t)(end - off), .from_src = from,
				  .backend = (int)qv_io_backend_of(r->io) };
	return 0;
}

/* The block after the last one whose first byte [off, end) holds, in *c and *b; false when
 * none does, or what follows is not computed. */
static bool block_after(const struct qv_vfile *vf, uint64_t off, uint64_t end,
			const struct qv_comp **c, uint64_t *b)
{
	size_t i = seg_find(vf, end - 1);
	const struct qv_seg *s = &vf->seg[i];
	uint64_t a, blk;

	if (s->src != QV_SEG_COMPUTED || s->voff >= end)
		return false;
	a = off > s->voff ? off - s->voff : 0;
	blk = (end - 1 - s->voff) / s->comp->blen;
	if (blk * s->comp->blen < a)
		return false; /* inside one block, past its start: asked for when it began */
	if ((blk + 1) * s->comp->blen < s->len) {
		*c = s->comp;
		*b = blk + 1;
		return true;
	}
	if (i + 1 == vf->nseg || vf->seg[i + 1].src != QV_SEG_COMPUTED)
		return false;
	*c = vf->seg[i + 1].comp;
	*b = 0;
	return true;
}

int qv_vfile_ahead(const struct qv_vfile *vf, struct qv_source *srcs, uint64_t off, size_t len,
		   struct qv_reader *r, void (*count)(void *arg, uint64_t src_bytes), void *arg)
{
	const struct qv_comp *c;
	struct qv_xslot *slot;
	uint64_t b, from = 0;
	int rc;

	if (!len || off >= vf->size)
		return 0;
	if (!block_after(vf, off, req_end(vf, off, len), &c, &b))
		return 0;
	rc = qv_xcache_claim(r->sc.xc, c, b, &slot);
	if (rc)
		return rc > 0 ? 0 : rc;
	rc = make_block(c, b, srcs, r->io, &r->sc, qv_xslot_data(slot), &from);
	if (!rc)
		count(arg, from); /* before the block is shared: a reader that waited for it, and
				   * then looks at the counters, finds its bytes counted */
	qv_xcache_made(r->sc.xc, slot, rc);
	qv_xcache_put(r->sc.xc, slot);
	return rc;
}

void qv_reader_done(struct qv_reader *r)
{
	if (r->held)
		qv_xcache_put(r->sc.xc, r->held);
	r->held = NULL;
}

int qv_vfile_reply(const struct qv_vfile *vf, struct qv_source *srcs, uint64_t off, size_t len,
		   bool splice, struct qv_reader *r, struct qv_reply *rep)
{
	int rc;

	qv_reader_done(r); /* a reply not marked done (a caller's slip) holds its block no longer */
	rc = splice ? qv_vfile_splice(vf, srcs, off, len, r, rep) : -EAGAIN;
	if (rc == -EAGAIN)
		rc = reply_block(vf, srcs, off, len, r, rep);
	if (rc != -EAGAIN)
		return rc;
	*rep = (struct qv_reply){ .fd = -1, .backend = (int)qv_io_backend_of(r->io) };
	rc = qv_reader_reserve(r, len);
	if (!rc)
		rc = qv_vfile_read(vf, srcs, off, len, r->out.p, r->io, &r->sc, &rep->len,
				   &rep->from_src);
	rep->p = r->out.p;
	return rc;
}
