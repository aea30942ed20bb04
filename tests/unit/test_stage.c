/* test_stage.c - the GPU staging engine on a stand-in device: "device" memory is host memory,
 * and a copy is only queued on its stream until an event on that stream is waited for, as a
 * real asynchronous copy would be. A pinned buffer reused too early therefore shows up as
 * wrong bytes on the device. Also the piece iterator, selection, failures and the status JSON. */
#include "unit.h"
#include "view_fixture.h"

#include "qv_stage.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define QMAX 4096

struct mock {
	struct { void *dst; const void *src; size_t n; } q[QMAX]; /* queued copies */
	size_t nq;
	size_t pinned, pinned_max;
	int fail_dev_alloc, fail_copy_after; /* fail_copy_after: nth copy fails (0 = never) */
	int copies;
	/* for the background stager: the thread that opened the device, calls from any other */
	pthread_t owner;
	bool owned;
	atomic_int foreign, closed;
	unsigned wait_ms; /* a slow device: each event wait takes this long */
};

/* Device calls must all come from the thread that opened the device (CUDA's current device
 * is per thread); count those that do not. */
static void note(struct mock *m)
{
	if (m->owned && !pthread_equal(m->owner, pthread_self()))
		atomic_fetch_add(&m->foreign, 1);
}

struct mock_event {
	size_t upto; /* copies queued before it was recorded */
};

static void run_queue(struct mock *m, size_t upto)
{
	for (size_t i = 0; i < upto && i < m->nq; i++) {
		if (m->q[i].dst)
			memcpy(m->q[i].dst, m->q[i].src, m->q[i].n);
		m->q[i].dst = NULL; /* done */
	}
}

static int m_host_alloc(void *x, size_t n, void **p)
{
	struct mock *m = x;

	note(m);
	*p = malloc(n + sizeof(size_t));
	if (!*p)
		return -ENOMEM;
	*(size_t *)*p = n;
	*p = (size_t *)*p + 1;
	m->pinned += n;
	if (m->pinned > m->pinned_max)
		m->pinned_max = m->pinned;
	return 0;
}

static void m_host_free(void *x, void *p)
{
	struct mock *m = x;

	note(m);
	m->pinned -= ((size_t *)p)[-1];
	free((size_t *)p - 1);
}

static int m_dev_alloc(void *x, size_t n, void **d)
{
	struct mock *m = x;

	note(m);
	if (m->fail_dev_alloc)
		return -ENOMEM;
	*d = calloc(1, n);
	return *d ? 0 : -ENOMEM;
}

static void m_dev_free(void *x, void *d)
{
	note(x);
	free(d);
}

static int m_new(void *x, void **s)
{
	(void)x;
	*s = calloc(1, sizeof(struct mock_event));
	return *s ? 0 : -ENOMEM;
}

static void m_free(void *x, void *s)
{
	(void)x;
	free(s);
}

/* One queue for all streams keeps the model simple and still catches early reuse. */
static int m_copy_async(void *x, void *dst, const void *src, size_t n, void *s)
{
	struct mock *m = x;

	note(m);
	(void)s;
	if (m->fail_copy_after && ++m->copies >= m->fail_copy_after)
		return -EIO;
	if (m->nq == QMAX)
		return -ENOSPC;
	m->q[m->nq].dst = dst, m->q[m->nq].src = src, m->q[m->nq].n = n;
	m->nq++;
	return 0;
}

static int m_event_record(void *x, void *e, void *s)
{
	(void)s;
	((struct mock_event *)e)->upto = ((struct mock *)x)->nq;
	return 0;
}

static int m_event_wait(void *x, void *e)
{
	note(x);
	if (((struct mock *)x)->wait_ms)
		usleep(((struct mock *)x)->wait_ms * 1000);
	run_queue(x, ((struct mock_event *)e)->upto);
	return 0;
}

static int m_copy_to_host(void *x, void *dst, const void *src, size_t n)
{
	run_queue(x, ((struct mock *)x)->nq);
	memcpy(dst, src, n);
	return 0;
}

static int m_ipc(void *x, void *d, unsigned char out[QV_GPU_IPC_BYTES])
{
	(void)x, (void)d;
	memset(out, 0xab, QV_GPU_IPC_BYTES);
	return 0;
}

static const char *m_err(void *x)
{
	(void)x;
	return "mock failure";
}

static struct qv_gpu_ops mock_ops(struct mock *m)
{
	return (struct qv_gpu_ops){ m,		  m_host_alloc,	  m_host_free,	  m_dev_alloc,
				    m_dev_free,	  m_new,	  m_free,	  m_new,
				    m_free,	  m_copy_async,	  m_event_record, m_event_wait,
				    m_copy_to_host, m_copy_to_host, m_ipc,	  m_err,
				    NULL };
}

TEST(stage_pieces_split_and_skip_empty)
{
	struct qv_stage_tensor t[4] = { { .size = 0 }, { .size = 5 }, { .size = 16 }, { .size = 3 } };
	struct qv_stage st = { .t = t, .nt = 4 };
	const uint64_t want[][3] = { { 1, 0, 5 }, { 2, 0, 8 }, { 2, 8, 8 }, { 3, 0, 3 } };
	struct qv_piece p;
	size_t n = 0;

	for (int more = qv_stage_next(&st, 8, &p, true); more; more = qv_stage_next(&st, 8, &p, false)) {
		if (!CHECK(n < 4))
			break;
		CHECK_EQ_U64(p.tensor, want[n][0]);
		CHECK_EQ_U64(p.off, want[n][1]);
		CHECK_EQ_U64(p.len, want[n][2]);
		n++;
	}
	CHECK_EQ_U64(n, 4);
}

/* Stage a mounted view on the mock device with tiny buffers (many pieces) and check it all. */
static void stage_and_verify(const struct qv_mount_opts *o, bool all, unsigned slots,
			     size_t slot_bytes, size_t want_tensors)
{
	struct mock *mk = calloc(1, sizeof(*mk));
	struct qv_gpu_ops ops = mock_ops(mk);
	struct qv_stage_cfg cfg = { slots, slot_bytes, 2, NULL };
	struct qv_stage st;
	struct vt v;
	char err[QV_ERRLEN] = "";
	uint64_t checked = 0;

	if (!CHECK_MSG(vt_mount(&v, vt_make_ckpt(), o) == 0, "%s", v.err))
		goto out;
	if (!CHECK_MSG(qv_stage_select(&v.m, qv_tree_node(&v.m.tree, 1), all, &st, err, sizeof(err)) == 0,
		       "%s", err))
		goto out;
	CHECK_EQ_U64(st.nt, want_tensors);
	for (size_t i = 0; i < st.nt && !all; i++)
		CHECK_MSG(qv_plan_key_is_expert(st.t[i].name), "%s is not an expert tensor",
			  st.t[i].name);
	CHECK_MSG(qv_stage_run(&st, &ops, &cfg, v.io, err, sizeof(err)) == 0, "%s", err);
	CHECK_EQ_U64(atomic_load(&st.done), st.bytes);
	CHECK_MSG(mk->pinned_max <= slots * slot_bytes, "pinned %zu > %u x %zu", mk->pinned_max,
		  slots, slot_bytes);
	CHECK_EQ_U64(mk->pinned, 0); /* buffers given back */
	for (size_t i = 0; i < st.nt; i++) {
		CHECK_EQ_INT(atomic_load(&st.t[i].state), QV_STAGE_READY);
		CHECK_EQ_U64(st.t[i].dev_off % 256, 0);
	}
	CHECK_MSG(qv_stage_verify(&st, &ops, v.io, 0, &checked, err, sizeof(err)) == 0, "%s", err);
	CHECK_EQ_U64(checked, st.bytes);
	CHECK_MSG(qv_stage_verify(&st, &ops, v.io, 16, &checked, err, sizeof(err)) == 0, "%s", err);
	qv_stage_free(&st, &ops);
out:
	vt_fini(&v);
	free(mk);
}

TEST(stage_all_tensors_tiny_buffers)
{
	struct qv_mount_opts o = { 0 };

	stage_and_verify(&o, true, 2, 16, 5); /* 2 x 16 bytes: every tensor in many pieces */
	stage_and_verify(&o, true, 3, 7, 5);
}

TEST(stage_expert_slices_of_a_rank)
{
	struct qv_mount_opts o = { .gen.ep_size = 2, .gen.ep_rank = 1, .gen.ep_rank_set = true };
	struct qv_mount_opts k = { .gen.ep_size = 2, .gen.ep_rank = 0, .gen.ep_rank_set = true,
				   .gen.shard_size = 2, .gen.shard_rank = 1,
				   .gen.shard_rank_set = true };

	stage_and_verify(&o, false, 4, 32, 2);
	stage_and_verify(&k, false, 2, 8, 2);
}

/* Without waiting for an event before reusing a buffer, the queued copies read overwritten
 * bytes: the mock must be able to tell (else the tests above prove nothing). */
TEST(stage_mock_detects_early_reuse)
{
	struct mock *mk = calloc(1, sizeof(*mk));
	struct qv_gpu_ops ops = mock_ops(mk);
	char dev[8] = "", slot[4] = "abc";
	void *ev;

	ops.event_new(mk, &ev);
	ops.copy_async(mk, dev, slot, 4, NULL);
	memcpy(slot, "xyz", 4); /* reused before the copy ran */
	ops.event_record(mk, ev, NULL);
	ops.event_wait(mk, ev);
	CHECK_STR(dev, "xyz");
	ops.event_free(mk, ev);
	free(mk);
}

TEST(stage_failures_are_reported_and_marked)
{
	struct qv_mount_opts o = { 0 };
	struct mock *mk = calloc(1, sizeof(*mk));
	struct qv_gpu_ops ops = mock_ops(mk);
	struct qv_stage_cfg cfg = { 2, 16, 1, NULL };
	struct qv_stage st;
	struct vt v;
	char err[QV_ERRLEN] = "";
	size_t failed = 0;

	if (!CHECK_MSG(vt_mount(&v, vt_make_ckpt(), &o) == 0, "%s", v.err))
		goto out;
	CHECK(qv_stage_select(&v.m, qv_tree_node(&v.m.tree, 1), true, &st, err, sizeof(err)) == 0);
	mk->fail_dev_alloc = 1;
	CHECK(qv_stage_run(&st, &ops, &cfg, v.io, err, sizeof(err)) < 0);
	CHECK_HAS(err, "device memory");
	mk->fail_dev_alloc = 0;
	mk->fail_copy_after = 5;
	CHECK(qv_stage_run(&st, &ops, &cfg, v.io, err, sizeof(err)) < 0);
	CHECK_HAS(err, "mock failure");
	CHECK_EQ_U64(mk->pinned, 0);
	for (size_t i = 0; i < st.nt; i++)
		failed += atomic_load(&st.t[i].state) == QV_STAGE_FAILED;
	CHECK(failed > 0);
	qv_stage_free(&st, &ops);
	cfg = (struct qv_stage_cfg){ 2, 16, 3, NULL }; /* more streams than buffers */
	CHECK(qv_stage_select(&v.m, qv_tree_node(&v.m.tree, 1), true, &st, err, sizeof(err)) == 0);
	CHECK_EQ_INT(qv_stage_run(&st, &ops, &cfg, v.io, err, sizeof(err)), -EINVAL);
	qv_stage_free(&st, &ops);
out:
	vt_fini(&v);
	free(mk);
}

TEST(stage_status_json)
{
	struct qv_mount_opts o = { 0 };
	struct mock *mk = calloc(1, sizeof(*mk));
	struct qv_gpu_ops ops = mock_ops(mk);
	struct qv_stage_cfg cfg = { 2, 64, 2, NULL };
	struct qv_stage st;
	struct qv_buf b = { 0 };
	struct vt v;
	char err[QV_ERRLEN] = "";

	if (!CHECK_MSG(vt_mount(&v, vt_make_ckpt(), &o) == 0, "%s", v.err))
		goto out;
	CHECK(qv_stage_select(&v.m, qv_tree_node(&v.m.tree, 1), false, &st, err, sizeof(err)) == 0);
	st.device = 3;
	CHECK(qv_stage_json(&st, &b) == 0);
	CHECK_HAS(b.p, "\"state\":\"pending\"");
	b.len = 0;
	CHECK(qv_stage_run(&st, &ops, &cfg, v.io, err, sizeof(err)) == 0);
	CHECK(qv_stage_json(&st, &b) == 0);
	CHECK_HAS(b.p, "\"device\":3");
	CHECK_HAS(b.p, "\"ipc_handle\":\"abababab");
	CHECK_HAS(b.p, "\"name\":\"model.language_model.layers.0.mlp.experts.gate_and_up_projs\"");
	CHECK_HAS(b.p, "\"state\":\"ready\"");
	CHECK_HAS(b.p, "\"shape\":[4,4,4]");
	qv_buf_free(&b);
	qv_stage_free(&st, &ops);
out:
	vt_fini(&v);
	free(mk);
}

TEST(stage_without_cuda_fails_fast)
{
	struct qv_gpu_ops ops;
	char err[QV_ERRLEN] = "";

	/* the unit binary links the stub: what a build without CUDA headers does */
	CHECK_EQ_INT(qv_gpu_open(0, &ops, err, sizeof(err)), -ENOSYS);
	CHECK_HAS(err, "not built");
	CHECK_STR(qv_gpu_build(), "not built");
}

/* ---- the background stager of -o gpu=N ---- */

static struct mock *open_mock; /* what the stand-in qv_gpu_open hands out */
static atomic_int open_calls;
static int open_rc;

static void m_close(void *x)
{
	note(x);
	atomic_fetch_add(&((struct mock *)x)->closed, 1);
}

/* The stand-in qv_gpu_open: records the thread that opened (and so selected) the device. */
static int mock_open(int device, struct qv_gpu_ops *ops, char *err, size_t errlen)
{
	atomic_fetch_add(&open_calls, 1);
	if (open_rc)
		return qv_err(err, errlen, open_rc, "no CUDA device %d (stand-in)", device);
	open_mock->owner = pthread_self();
	open_mock->owned = true;
	*ops = mock_ops(open_mock);
	ops->close = m_close;
	return 0;
}

static double mono(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static bool all_settled(const struct qv_stage_bg *b)
{
	if (!atomic_load(&b->selected))
		return false;
	for (size_t i = 0; i < b->st.nt; i++)
		if (atomic_load(&b->st.t[i].state) == QV_STAGE_PENDING)
			return false;
	return true;
}

/* The device is opened by the staging thread, not by the caller (which may fork next), and
 * every device call, freeing and closing included, comes from that one thread. */
TEST(stage_bg_opens_and_uses_the_device_in_its_thread)
{
	struct qv_mount_opts o = { .gen.ep_size = 2, .gen.ep_rank = 1, .gen.ep_rank_set = true };
	struct mock *mk = calloc(1, sizeof(*mk));
	struct qv_stage_bg *b = calloc(1, sizeof(*b));
	struct qv_buf js = { 0 };
	struct ut_capture cap;
	struct vt v;

	open_mock = mk, open_rc = 0;
	atomic_store(&open_calls, 0);
	if (!CHECK_MSG(vt_mount(&v, vt_make_ckpt(), &o) == 0, "%s", v.err))
		goto out;
	qv_stage_bg_init(b, 1, mock_open);
	CHECK(qv_stage_bg_json(b, &js) == 0 && strstr(js.p, "\"device\":1"));
	CHECK_EQ_INT(atomic_load(&open_calls), 0); /* nothing opened before the start */
	ut_stderr_begin(&cap);
	if (!CHECK_EQ_INT(qv_stage_bg_start(b, &v.m), 0)) {
		free(ut_stderr_end(&cap));
		goto out;
	}
	for (int i = 0; i < 500 && !all_settled(b); i++)
		usleep(10000);
	free(ut_stderr_end(&cap));
	CHECK(all_settled(b));
	CHECK_EQ_INT(atomic_load(&open_calls), 1);
	CHECK(mk->owned && !pthread_equal(mk->owner, pthread_self()));
	for (size_t i = 0; i < b->st.nt; i++)
		CHECK_EQ_INT(atomic_load(&b->st.t[i].state), QV_STAGE_READY);
	CHECK_EQ_INT(atomic_load(&mk->closed), 0); /* kept while mounted */
	qv_stage_bg_stop(b);
	CHECK_EQ_INT(atomic_load(&mk->closed), 1);
	CHECK_EQ_INT(atomic_load(&mk->foreign), 0);
	CHECK_EQ_U64(mk->pinned, 0);
out:
	qv_buf_free(&js);
	vt_fini(&v);
	free(b);
	free(mk);
}

/* Stop while a slow device stages: it returns between two pieces, not at the end. */
TEST(stage_bg_stop_is_prompt_on_a_slow_device)
{
	struct qv_mount_opts o = { 0 };
	struct mock *mk = calloc(1, sizeof(*mk));
	struct qv_stage_bg *b = calloc(1, sizeof(*b));
	struct ut_capture cap;
	char *log = NULL;
	struct vt v;
	double t0;

	mk->wait_ms = 50; /* 2 x 8-byte slots: ~24 pieces, over a second in all */
	open_mock = mk, open_rc = 0;
	if (!CHECK_MSG(vt_mount(&v, vt_make_ckpt(), &o) == 0, "%s", v.err))
		goto out;
	qv_stage_bg_init(b, 0, mock_open);
	b->cfg.slots = 2, b->cfg.slot_bytes = 8, b->cfg.streams = 1;
	ut_stderr_begin(&cap);
	if (CHECK_EQ_INT(qv_stage_bg_start(b, &v.m), 0)) {
		for (int i = 0; i < 500 && atomic_load(&b->st.done) == 0; i++)
			usleep(2000);
		t0 = mono();
		qv_stage_bg_stop(b);
		CHECK_MSG(mono() - t0 < 0.4, "stop took %.2f s", mono() - t0);
	}
	log = ut_stderr_end(&cap);
	CHECK_HAS(log, "stopped at unmount");
	CHECK_EQ_INT(atomic_load(&mk->closed), 1);
	CHECK_EQ_INT(atomic_load(&mk->foreign), 0);
	CHECK_EQ_U64(mk->pinned, 0);
out:
	free(log);
	vt_fini(&v);
	free(b);
	free(mk);
}

/* The early check runs the open in a child process: its verdict and reason come back, and
 * this process never opened anything (so it may fork and use the device afterwards). */
TEST(stage_probe_opens_only_in_a_child)
{
	struct mock *mk = calloc(1, sizeof(*mk));
	char err[QV_ERRLEN] = "";

	open_mock = mk;
	atomic_store(&open_calls, 0);
	open_rc = -ENODEV;
	CHECK_EQ_INT(qv_stage_probe(7, mock_open, err, sizeof(err)), -ENODEV);
	CHECK_HAS(err, "no CUDA device 7 (stand-in)");
	open_rc = 0;
	CHECK_EQ_INT(qv_stage_probe(0, mock_open, err, sizeof(err)), 0);
	CHECK_EQ_INT(atomic_load(&open_calls), 0);
	CHECK(!mk->owned);
	/* the stub (a build without CUDA) answers the same way through the child */
	CHECK_EQ_INT(qv_stage_probe(0, qv_gpu_open, err, sizeof(err)), -ENOSYS);
	CHECK_HAS(err, "not built");
	free(mk);
}
