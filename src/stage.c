/* stage.c - the staging engine: pieces of at most one pinned buffer are read through the
 * view's own read path (io_uring) into a ring of pinned buffers and copied to the device with
 * asynchronous copies on several streams; a buffer is reused only once its copy has finished,
 * so host memory stays slots x slot_bytes whatever the checkpoint size. */
#include "qv_stage.h"
#include "qv_inspect.h"
#include "qv_plan.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define DEV_ALIGN 256
#define MAX_SLOTS 64

static int add_tensor(struct qv_stage *st, const char *file, const struct qv_node *n,
		      const struct qv_st *h, const struct qv_tensor *t)
{
	struct qv_stage_tensor *x;

	if ((st->nt & (st->nt + 1)) == 0 || st->nt == 0) { /* grow at 2^k - 1 */
		x = realloc(st->t, (st->nt * 2 + 2) * sizeof(*x));
		if (!x)
			return -ENOMEM;
		st->t = x;
	}
	x = &st->t[st->nt];
	memset(x, 0, sizeof(*x));
	x->name = strdup(t->name);
	x->file = strdup(file);
	if (!x->name || !x->file) {
		free(x->name), free(x->file);
		return -ENOMEM;
	}
	x->dtype = t->dtype;
	x->ndim = t->ndim;
	memcpy(x->shape, t->shape, sizeof(x->shape));
	x->size = t->end - t->begin;
	x->vf = &n->vf;
	x->voff = 8 + h->hdr_len + t->begin;
	st->dev_bytes = (st->dev_bytes + DEV_ALIGN - 1) / DEV_ALIGN * DEV_ALIGN;
	x->dev_off = st->dev_bytes;
	st->dev_bytes += x->size;
	st->bytes += x->size;
	st->nt++;
	return 0;
}

/* The tensors of one virtual safetensors file, from its own synthesized header. */
static int select_file(struct qv_stage *st, const char *file, const struct qv_node *n, bool all,
		       char *err, size_t errlen)
{
	const struct qv_vfile *vf = &n->vf;
	struct qv_st h;
	char why[QV_ERRLEN];
	uint64_t len = 0;
	int rc;

	if (vf->nseg == 0 || vf->seg[0].src != QV_SEG_MEM || vf->seg[0].len < 8)
		return qv_err(err, errlen, -EINVAL, "%s: no synthesized header", file);
	for (int i = 7; i >= 0; i--)
		len = len << 8 | (unsigned char)vf->seg[0].mem[i];
	rc = qv_st_parse(vf->seg[0].mem + 8, len, vf->size, &h, why, sizeof(why));
	if (rc)
		return qv_err(err, errlen, rc, "%s: %s", file, why);
	for (size_t i = 0; i < h.nt && !rc; i++)
		if (all || qv_plan_key_is_expert(h.t[i].name))
			rc = add_tensor(st, file, n, &h, &h.t[i]);
	qv_st_free(&h);
	return rc == -ENOMEM ? qv_err(err, errlen, rc, "out of memory") : rc;
}

static int select_dir(struct qv_mount *m, struct qv_node *dir, const char *prefix, bool all,
		      struct qv_stage *st, char *err, size_t errlen)
{
	int rc = qv_mount_ready(m, dir);

	for (size_t i = 0; !rc && i < dir->nkids; i++) {
		struct qv_node *n = qv_tree_node(&m->tree, dir->kids[i]);
		char *path = prefix[0] ? qv_path_join(prefix, n->name) : strdup(n->name);

		if (!path)
			return qv_err(err, errlen, -ENOMEM, "out of memory");
		if (n->dir && !strcmp(n->name, QV_HIDDEN))
			; /* the inspection folder's tensor files are the same tensors again */
		else if (n->dir)
			rc = select_dir(m, n, path, all, st, err, errlen);
		else if (qv_ends_with(n->name, ".safetensors"))
			rc = select_file(st, path, n, all, err, errlen);
		free(path);
	}
	return rc;
}

int qv_stage_select(struct qv_mount *m, struct qv_node *dir, bool all, struct qv_stage *st,
		    char *err, size_t errlen)
{
	memset(st, 0, sizeof(*st));
	st->device = -1;
	return select_dir(m, dir, "", all, st, err, errlen);
}

int qv_stage_next(const struct qv_stage *st, size_t slot_bytes, struct qv_piece *p, bool first)
{
	if (first)
		*p = (struct qv_piece){ 0 };
	else
		p->off += p->len;
	while (p->tensor < st->nt && p->off >= st->t[p->tensor].size) { /* done, or empty */
		p->tensor++;
		p->off = 0;
	}
	if (p->tensor >= st->nt)
		return 0;
	p->len = st->t[p->tensor].size - p->off;
	if (p->len > slot_bytes)
		p->len = slot_bytes;
	return 1;
}

struct ring {
	void *buf[MAX_SLOTS], *ev[MAX_SLOTS], *stream[MAX_SLOTS];
	long last_of[MAX_SLOTS]; /* tensor whose final piece a slot's copy carries, or -1 */
	bool busy[MAX_SLOTS];
};

/* Wait for slot k's copy; the tensor whose last piece it carried is then on the device. */
static int slot_wait(struct qv_stage *st, const struct qv_gpu_ops *ops, struct ring *r, unsigned k)
{
	int rc = 0;

	if (r->busy[k])
		rc = ops->event_wait(ops->ctx, r->ev[k]);
	if (!rc && r->busy[k] && r->last_of[k] >= 0)
		atomic_store(&st->t[r->last_of[k]].state, QV_STAGE_READY);
	r->busy[k] = false;
	return rc;
}

static void ring_free(const struct qv_gpu_ops *ops, struct ring *r, const struct qv_stage_cfg *c)
{
	for (unsigned k = 0; k < c->slots; k++) {
		if (r->buf[k])
			ops->host_free(ops->ctx, r->buf[k]);
		if (r->ev[k])
			ops->event_free(ops->ctx, r->ev[k]);
	}
	for (unsigned k = 0; k < c->streams; k++)
		if (r->stream[k])
			ops->stream_free(ops->ctx, r->stream[k]);
}

static int ring_new(const struct qv_gpu_ops *ops, struct ring *r, const struct qv_stage_cfg *c)
{
	int rc = 0;

	memset(r, 0, sizeof(*r));
	for (unsigned k = 0; k < c->slots && !rc; k++) {
		rc = ops->host_alloc(ops->ctx, c->slot_bytes, &r->buf[k]);
		if (!rc)
			rc = ops->event_new(ops->ctx, &r->ev[k]);
	}
	for (unsigned k = 0; k < c->streams && !rc; k++)
		rc = ops->stream_new(ops->ctx, &r->stream[k]);
	return rc;
}

/* The pipeline: read piece i into slot i % slots while earlier slots are still copying. */
static int pump(struct qv_stage *st, const struct qv_gpu_ops *ops, const struct qv_stage_cfg *c,
		struct ring *r, struct qv_io *io, char *err, size_t errlen)
{
	struct qv_rdscratch sc = { 0 };
	struct qv_piece p;
	unsigned k = 0;
	int rc = 0, more;

	for (more = qv_stage_next(st, c->slot_bytes, &p, true); more && !rc;
	     more = qv_stage_next(st, c->slot_bytes, &p, false), k = (k + 1) % c->slots) {
		struct qv_stage_tensor *t = &st->t[p.tensor];
		size_t got = 0;
		uint64_t srcb;

		if (c->cancel && atomic_load(c->cancel)) {
			rc = qv_err(err, errlen, -ECANCELED, "stopped after %llu of %llu bytes",
				    (unsigned long long)atomic_load(&st->done),
				    (unsigned long long)st->bytes);
			break;
		}
		rc = slot_wait(st, ops, r, k);
		if (!rc)
			rc = qv_vfile_read(t->vf, t->vf->base, t->voff + p.off, p.len, r->buf[k], io,
					   &sc, &got, &srcb);
		if (!rc && got != p.len)
			rc = -EIO;
		if (rc) {
			qv_err(err, errlen, rc, "%s: %s: reading the view: %s", t->file, t->name,
			       strerror(-rc));
			break;
		}
		rc = ops->copy_async(ops->ctx, (char *)st->dev + t->dev_off + p.off, r->buf[k], p.len,
				     r->stream[k % c->streams]);
		if (!rc)
			rc = ops->event_record(ops->ctx, r->ev[k], r->stream[k % c->streams]);
		if (rc) {
			qv_err(err, errlen, rc, "%s", ops->err(ops->ctx));
			break;
		}
		r->busy[k] = true;
		r->last_of[k] = p.off + p.len == t->size ? (long)p.tensor : -1;
		atomic_fetch_add(&st->done, p.len);
	}
	for (unsigned j = 0; j < c->slots; j++) { /* drain, even after a failure */
		int w = slot_wait(st, ops, r, j);

		if (w && !rc)
			rc = qv_err(err, errlen, w, "%s", ops->err(ops->ctx));
	}
	free(sc.ops);
	return rc;
}

int qv_stage_run(struct qv_stage *st, const struct qv_gpu_ops *ops, const struct qv_stage_cfg *cfg,
		 struct qv_io *io, char *err, size_t errlen)
{
	struct qv_stage_cfg c = *cfg;
	struct ring r;
	int rc;

	c.slots = c.slots ? c.slots : 4;
	c.slot_bytes = c.slot_bytes ? c.slot_bytes : 16u << 20;
	c.streams = c.streams ? c.streams : 2;
	if (c.slots > MAX_SLOTS || c.streams > c.slots)
		return qv_err(err, errlen, -EINVAL, "at most %d buffers, and no more streams than buffers",
			      MAX_SLOTS);
	rc = ops->dev_alloc(ops->ctx, st->dev_bytes ? st->dev_bytes : 1, &st->dev);
	if (rc) {
		st->dev = NULL;
		return qv_err(err, errlen, rc, "%llu bytes of device memory: %s",
			      (unsigned long long)st->dev_bytes, ops->err(ops->ctx));
	}
	st->has_ipc = ops->ipc_handle(ops->ctx, st->dev, st->ipc) == 0;
	rc = ring_new(ops, &r, &c);
	if (rc)
		qv_err(err, errlen, rc, "pinned buffers: %s", ops->err(ops->ctx));
	else
		rc = pump(st, ops, &c, &r, io, err, errlen);
	ring_free(ops, &r, &c);
	for (size_t i = 0; i < st->nt; i++)
		if (atomic_load(&st->t[i].state) != QV_STAGE_READY)
			atomic_store(&st->t[i].state, rc ? QV_STAGE_FAILED : QV_STAGE_READY);
	return rc;
}

/* The k-th sample: a tensor and a range of at most 1 MiB, spread over the selection. */
static void sample(const struct qv_stage *st, unsigned k, size_t *ti, uint64_t *off, uint64_t *len)
{
	uint64_t x = (uint64_t)k * 0x9e3779b97f4a7c15ULL + 1;

	*ti = (size_t)(x % st->nt);
	x ^= x >> 29;
	*off = st->t[*ti].size ? x % st->t[*ti].size : 0;
	*len = st->t[*ti].size - *off < (1u << 20) ? st->t[*ti].size - *off : 1u << 20;
}

int qv_stage_verify(const struct qv_stage *st, const struct qv_gpu_ops *ops, struct qv_io *io,
		    unsigned samples, uint64_t *bytes, char *err, size_t errlen)
{
	char *dev = malloc(1u << 20), *view = malloc(1u << 20);
	struct qv_rdscratch sc = { 0 };
	struct qv_piece p;
	int rc = dev && view ? 0 : -ENOMEM, more = samples ? 1 : qv_stage_next(st, 1u << 20, &p, true);

	*bytes = 0;
	for (unsigned k = 0; !rc && more && st->nt; k++) {
		size_t ti, got;
		uint64_t off, len, srcb;

		if (samples)
			sample(st, k, &ti, &off, &len);
		else
			ti = p.tensor, off = p.off, len = p.len;
		rc = ops->copy_to_host(ops->ctx, dev, (char *)st->dev + st->t[ti].dev_off + off, len);
		if (!rc)
			rc = qv_vfile_read(st->t[ti].vf, st->t[ti].vf->base, st->t[ti].voff + off, len,
					   view, io, &sc, &got, &srcb);
		if (!rc && memcmp(dev, view, len))
			rc = qv_err(err, errlen, -EIO, "%s: device bytes differ from the view at %llu",
				    st->t[ti].name, (unsigned long long)off);
		else if (rc)
			qv_err(err, errlen, rc, "%s: %s", st->t[ti].name, strerror(-rc));
		*bytes += rc ? 0 : len;
		more = samples ? k + 1 < samples : qv_stage_next(st, 1u << 20, &p, false);
	}
	free(sc.ops);
	free(dev);
	free(view);
	return rc;
}

int qv_stage_json(const struct qv_stage *st, struct qv_buf *out)
{
	static const char *const states[] = { "pending", "ready", "failed" };
	int rc = qv_buf_printf(out, "{\"device\":%d,\"bytes\":%llu,\"done\":%llu,\"ipc_handle\":\"",
			       st->device, (unsigned long long)st->bytes,
			       (unsigned long long)atomic_load(&st->done));

	for (int i = 0; i < QV_GPU_IPC_BYTES && st->has_ipc && !rc; i++)
		rc = qv_buf_printf(out, "%02x", st->ipc[i]);
	if (!rc)
		rc = qv_buf_adds(out, "\",\"tensors\":[");
	for (size_t i = 0; i < st->nt && !rc; i++) {
		const struct qv_stage_tensor *t = &st->t[i];

		rc = qv_buf_adds(out, i ? ",{\"name\":" : "{\"name\":");
		if (!rc)
			rc = qv_buf_json_str(out, t->name, strlen(t->name));
		if (!rc)
			rc = qv_buf_adds(out, ",\"file\":");
		if (!rc)
			rc = qv_buf_json_str(out, t->file, strlen(t->file));
		if (!rc)
			rc = qv_buf_printf(out, ",\"dtype\":\"%s\",\"shape\":[", qv_dtype_name(t->dtype));
		for (uint32_t d = 0; d < t->ndim && !rc; d++)
			rc = qv_buf_printf(out, d ? ",%llu" : "%llu", (unsigned long long)t->shape[d]);
		if (!rc)
			rc = qv_buf_printf(out, "],\"state\":\"%s\",\"device\":%d,\"offset\":%llu,"
					   "\"size\":%llu}",
					   states[atomic_load(&t->state)], st->device,
					   (unsigned long long)t->dev_off, (unsigned long long)t->size);
	}
	return rc ? rc : qv_buf_adds(out, "]}\n");
}

void qv_stage_free(struct qv_stage *st, const struct qv_gpu_ops *ops)
{
	if (st->dev && ops)
		ops->dev_free(ops->ctx, st->dev);
	for (size_t i = 0; i < st->nt; i++) {
		free(st->t[i].name);
		free(st->t[i].file);
	}
	free(st->t);
	memset(st, 0, sizeof(*st));
}

struct probe_reply {
	int rc;
	char why[QV_ERRLEN];
};

int qv_stage_probe(int device, qv_gpu_open_fn *open, char *err, size_t errlen)
{
	struct probe_reply r = { -EIO, "the device check ended without an answer" };
	struct pollfd pfd;
	int fds[2];
	pid_t pid;

	if (pipe2(fds, O_CLOEXEC))
		return qv_err(err, errlen, -errno, "pipe: %s", strerror(errno));
	pid = fork();
	if (pid == 0) { /* the child: initialise, answer, and go without running exit handlers */
		struct qv_gpu_ops ops;

		close(fds[0]);
		r.rc = open(device, &ops, r.why, sizeof(r.why));
		_exit(write(fds[1], &r, sizeof(r)) == (ssize_t)sizeof(r) ? 0 : 1);
	}
	close(fds[1]);
	if (pid < 0) {
		close(fds[0]);
		return qv_err(err, errlen, -errno, "fork: %s", strerror(errno));
	}
	pfd = (struct pollfd){ .fd = fds[0], .events = POLLIN };
	if (poll(&pfd, 1, 30000) != 1) { /* a runtime that hangs must not hang the mount */
		kill(pid, SIGKILL);
		r.rc = qv_err(r.why, sizeof(r.why), -ETIMEDOUT, "the CUDA runtime did not answer in 30 s");
	} else if (read(fds[0], &r, sizeof(r)) != (ssize_t)sizeof(r)) {
		r.rc = -EIO;
	}
	close(fds[0]);
	while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
		;
	r.why[sizeof(r.why) - 1] = '\0';
	return r.rc ? qv_err(err, errlen, r.rc, "%s", r.why) : 0;
}

void qv_stage_bg_init(struct qv_stage_bg *b, int device, qv_gpu_open_fn *open)
{
	memset(b, 0, sizeof(*b));
	b->device = b->st.device = device;
	b->open = open;
	b->cfg.cancel = &b->cancel;
	pthread_mutex_init(&b->mu, NULL);
	pthread_cond_init(&b->cv, NULL);
}

int qv_stage_bg_json(void *arg, struct qv_buf *out)
{
	struct qv_stage_bg *b = arg;

	if (!atomic_load(&b->selected))
		return qv_buf_printf(out, "{\"device\":%d,\"tensors\":[]}\n", b->device);
	return qv_stage_json(&b->st, out);
}

/* Open the device, select the view's expert tensors and stage them; logged either way. */
static void bg_stage(struct qv_stage_bg *b)
{
	struct qv_io *io = NULL;
	struct qv_node *root;
	char err[QV_ERRLEN];
	int rc = b->open(b->device, &b->ops, err, sizeof(err));

	if (rc) {
		qv_log("gpu=%d: %s", b->device, err);
		return;
	}
	b->opened = true;
	/* the selection points into the root's files: hold their generation against a rescan
	 * until the copies are done (names and sizes are copied, gpu.json needs no hold) */
	root = qv_mount_get(b->m, 1);
	rc = root ? qv_stage_select(b->m, root, false, &b->st, err, sizeof(err)) : -ENOENT;
	if (rc) {
		qv_log("gpu: %s", root ? err : "no root folder");
		if (root)
			qv_mount_drop(b->m, root, 1);
		return;
	}
	b->st.device = b->device;
	atomic_store(&b->selected, true);
	rc = qv_io_new(&b->m->o.io, &io);
	if (rc)
		qv_err(err, sizeof(err), rc, "no reader: %s", strerror(-rc));
	else
		rc = qv_stage_run(&b->st, &b->ops, &b->cfg, io, err, sizeof(err));
	qv_io_free(io);
	qv_mount_drop(b->m, root, 1);
	if (rc)
		qv_log("gpu: staging on cuda:%d %s: %s", b->device,
		       rc == -ECANCELED ? "stopped at unmount" : "failed", err);
	else
		qv_log("gpu: %zu tensors (%llu bytes) staged on cuda:%d", b->st.nt,
		       (unsigned long long)b->st.bytes, b->device);
}

/* All device calls happen here, in one thread: CUDA's current device is per thread. */
static void *bg_thread(void *arg)
{
	struct qv_stage_bg *b = arg;

	bg_stage(b);
	pthread_mutex_lock(&b->mu); /* the allocation stays while mounted */
	while (!b->stop)
		pthread_cond_wait(&b->cv, &b->mu);
	pthread_mutex_unlock(&b->mu);
	atomic_store(&b->selected, false);
	qv_stage_free(&b->st, b->opened ? &b->ops : NULL);
	if (b->opened && b->ops.close)
		b->ops.close(b->ops.ctx);
	b->opened = false;
	return NULL;
}

int qv_stage_bg_start(struct qv_stage_bg *b, struct qv_mount *m)
{
	int rc;

	b->m = m;
	rc = pthread_create(&b->thread, NULL, bg_thread, b);
	b->started = rc == 0;
	return -rc;
}

void qv_stage_bg_stop(struct qv_stage_bg *b)
{
	if (!b->started)
		return;
	pthread_mutex_lock(&b->mu);
	b->stop = true;
	atomic_store(&b->cancel, true);
	pthread_cond_signal(&b->cv);
	pthread_mutex_unlock(&b->mu);
	pthread_join(b->thread, NULL);
	b->started = false;
}
