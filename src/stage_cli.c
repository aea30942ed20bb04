/* stage_cli.c - `qvlmoefs stage`: stage a view onto a GPU without mounting, check the staged
 * bytes against the view, and compare the rate with a plain pinned copy measured in the same
 * run. The benchmark and the check for machines without /dev/fuse. */
#include "qv_stage_cli.h"
#include "qv_opts.h"
#include "qv_stage.h"
#include "qv_util.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct stage_args {
	const char *source;
	struct fuse_args fargs; /* -o options, for the shared parser */
	int device;
	bool all;
	unsigned samples;
	struct qv_stage_cfg cfg;
};

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void stage_usage(void)
{
	printf("usage: qvlmoefs stage SOURCE [-o OPTIONS] [--device N] [--all] [--samples N]\n"
	       "                      [--slots N] [--slot-mib N]\n\n"
	       "Reads the view of SOURCE that -o OPTIONS describe (view=, ep_size=, ep_rank=, ...)\n"
	       "into pinned buffers with io_uring and copies it to CUDA device N (default 0): the\n"
	       "expert tensors, or every tensor with --all. Then checks N sampled ranges (default\n"
	       "64; 0 = every byte) against the view and prints GB/s against a pinned cudaMemcpy.\n");
}

static int parse(int argc, char **argv, struct stage_args *a)
{
	a->samples = 64;
	if (fuse_opt_add_arg(&a->fargs, "qvlmoefs"))
		return -ENOMEM;
	for (int i = 1; i < argc; i++) {
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
		uint64_t n;

		if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help"))
			return stage_usage(), 1;
		if (!strcmp(argv[i], "--all"))
			a->all = true;
		else if (!strcmp(argv[i], "-o") && v)
			fuse_opt_add_arg(&a->fargs, "-o"), fuse_opt_add_arg(&a->fargs, v), i++;
		else if (!strcmp(argv[i], "--device") && v) {
			if (qv_opts_number("--device", v, 0, QV_OPTS_MAX_GPU, &n))
				return -EINVAL;
			a->device = (int)n, i++;
		} else if (!strcmp(argv[i], "--samples") && v) {
			if (qv_opts_number("--samples", v, 0, 1000000000, &n))
				return -EINVAL;
			a->samples = (unsigned)n, i++;
		} else if (!strcmp(argv[i], "--slots") && v) {
			if (qv_opts_number("--slots", v, 1, 256, &n))
				return -EINVAL;
			a->cfg.slots = (unsigned)n, i++;
		} else if (!strcmp(argv[i], "--slot-mib") && v) {
			if (qv_opts_number("--slot-mib", v, 1, 4096, &n)) /* pinned host memory */
				return -EINVAL;
			a->cfg.slot_bytes = (size_t)n << 20, i++;
		} else if (argv[i][0] != '-' && !a->source) {
			a->source = argv[i];
		} else {
			return qv_log("stage: unexpected argument %s (see qvlmoefs stage --help)", argv[i]),
			       -EINVAL;
		}
	}
	if (!a->source)
		return qv_log("stage: no SOURCE (see qvlmoefs stage --help)"), -EINVAL;
	return fuse_opt_add_arg(&a->fargs, a->source);
}

struct progress {
	struct qv_stage *st;
	atomic_bool stop;
};

/* One progress line a second while the stage runs. */
static void *progress_thread(void *arg)
{
	struct progress *p = arg;
	double t0 = now();

	while (!atomic_load(&p->stop)) {
		usleep(100000);
		if (now() - t0 >= 1.0 && !atomic_load(&p->stop)) {
			uint64_t d = atomic_load(&p->st->done);

			printf("  %llu / %llu MiB\n", (unsigned long long)(d >> 20),
			       (unsigned long long)(p->st->bytes >> 20));
			fflush(stdout);
			t0 = now();
		}
	}
	return NULL;
}

/* GB/s of plain synchronous pinned copies of the same total size, the yardstick. */
static double pinned_peak(const struct qv_gpu_ops *ops, const struct qv_stage *st, size_t chunk)
{
	uint64_t left = st->bytes, off = 0;
	void *host;
	double t0;

	if (ops->host_alloc(ops->ctx, chunk, &host))
		return 0;
	memset(host, 0x5a, chunk);
	t0 = now();
	while (left) {
		size_t n = left < chunk ? (size_t)left : chunk;

		if (ops->copy_to_dev(ops->ctx, (char *)st->dev + off, host, n))
			break;
		off += n;
		left -= n;
	}
	t0 = now() - t0;
	ops->host_free(ops->ctx, host);
	return left ? 0 : (double)st->bytes / t0 / 1e9;
}

/* Stage, verify and measure; the device was opened by the caller. */
static int stage_view(struct stage_args *a, struct qv_mount *m, const struct qv_gpu_ops *ops,
		      struct qv_io *io)
{
	struct progress pr = { 0 };
	struct qv_stage st;
	pthread_t th;
	char err[QV_ERRLEN];
	uint64_t checked;
	double t0, secs, peak;
	int rc = qv_stage_select(m, qv_tree_node(&m->tree, 1), a->all, &st, err, sizeof(err));

	if (rc)
		return qv_log("stage: %s", err), rc;
	st.device = a->device;
	printf("staging %zu tensors, %.3f GB, onto cuda:%d\n", st.nt, (double)st.bytes / 1e9,
	       a->device);
	pr.st = &st;
	pthread_create(&th, NULL, progress_thread, &pr);
	t0 = now();
	rc = qv_stage_run(&st, ops, &a->cfg, io, err, sizeof(err));
	secs = now() - t0;
	atomic_store(&pr.stop, true);
	pthread_join(th, NULL);
	if (rc) {
		qv_log("stage: %s", err);
		qv_stage_free(&st, ops);
		return rc;
	}
	rc = qv_stage_verify(&st, ops, io, a->samples, &checked, err, sizeof(err));
	if (rc)
		qv_log("stage: verify: %s", err);
	peak = pinned_peak(ops, &st, a->cfg.slot_bytes ? a->cfg.slot_bytes : 16u << 20);
	printf("staged %.3f GB (%llu bytes) in %.6f s: %.2f GB/s; pinned cudaMemcpy %.2f GB/s; "
	       "ratio %.2f\n", (double)st.bytes / 1e9, (unsigned long long)st.bytes, secs,
	       (double)st.bytes / secs / 1e9, peak,
	       peak > 0 ? (double)st.bytes / secs / 1e9 / peak : 0);
	printf("verified %llu bytes in %s: %s\n", (unsigned long long)checked,
	       a->samples ? "sampled ranges" : "full", rc ? "MISMATCH" : "equal to the view");
	qv_stage_free(&st, ops);
	return rc;
}

int qv_stage_main(int argc, char **argv)
{
	struct stage_args a = { .fargs = FUSE_ARGS_INIT(0, NULL) };
	struct qv_options o = { 0 };
	struct fuse_cmdline_opts copts = { 0 };
	struct qv_mount_opts mo;
	struct qv_gpu_ops ops;
	static struct qv_mount m;
	struct qv_io *io = NULL;
	char err[QV_ERRLEN];
	int rc, gpu, ret = 1;

	rc = parse(argc, argv, &a);
	if (rc)
		goto out_args;
	/* the mount's parser and checks: an option the mount refuses is refused here too */
	if (qv_opts_parse(&a.fargs, &o, &copts) || qv_opts_known(&a.fargs) ||
	    qv_opts_check(&o, &mo, &gpu))
		goto out_opts;
	if (qv_gen_multi(&mo)) {
		qv_log("stage: give ep_rank (and ep_shard_rank) with ep_size: one rank's view");
		goto out_opts;
	}
	rc = qv_gpu_open(a.device, &ops, err, sizeof(err)); /* fail fast, before any scan */
	if (rc) {
		qv_log("stage: %s", err);
		goto out_opts;
	}
	if (qv_mount_init(&m, o.source, &mo, err, sizeof(err))) {
		qv_log("%s", err);
		goto out_mount;
	}
	if (qv_io_new(&mo.io, &io))
		goto out_mount;
	ret = stage_view(&a, &m, &ops, io) ? 1 : 0;
	qv_io_free(io);
out_mount:
	qv_mount_fini(&m);
	ops.close(ops.ctx);
out_opts:
	qv_opts_free(&o);
out_args:
	fuse_opt_free_args(&a.fargs);
	return rc == 1 ? 0 : ret;
}
