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
	char **optv; /* the values of -o, in order (room for argc) */
	int optc;
	int device;
	bool all;
	unsigned samples;
	struct qv_stage_cfg cfg;
	struct qv_gpu_ops ops; /* the device, once opened */
	bool opened;
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

/* argv into a; 0, 1 when --help was printed, or -EINVAL (logged). */
static int parse(int argc, char **argv, struct stage_args *a)
{
	a->samples = 64;
	for (int i = 1; i < argc; i++) {
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
		uint64_t n;

		if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help"))
			return stage_usage(), 1;
		if (!strcmp(argv[i], "--all"))
			a->all = true;
		else if (!strcmp(argv[i], "-o") && v)
			a->optv[a->optc++] = argv[++i];
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
	return 0;
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

/* Once the options are checked and before the source is scanned, which may take long: one
 * rank's view only, and the device opened; 0 or -errno, logged. */
static int before_scan(void *arg, const struct qv_mount_opts *mo)
{
	struct stage_args *a = arg;
	char err[QV_ERRLEN];
	int rc;

	if (qv_gen_multi(&mo->gen))
		return qv_log("stage: give ep_rank (and ep_shard_rank) with ep_size: one rank's "
			      "view"), -EINVAL;
	rc = qv_gpu_open(a->device, &a->ops, err, sizeof(err));
	if (rc)
		return qv_log("stage: %s", err), rc;
	a->opened = true;
	return 0;
}

int qv_stage_main(int argc, char **argv)
{
	struct stage_args a = { .optv = calloc((size_t)argc, sizeof(char *)) };
	struct qv_cmdline cl;
	static struct qv_mount m;
	struct qv_io *io = NULL;
	int ret = 1, rc = a.optv ? parse(argc, argv, &a) : -ENOMEM;

	if (rc) {
		free(a.optv);
		return rc == 1 ? 0 : 1;
	}
	if (!qv_opts_view(a.source, a.optv, a.optc, &cl, &m, before_scan, &a)) {
		if (!qv_io_new(&m.o.io, &io)) {
			ret = stage_view(&a, &m, &a.ops, io) ? 1 : 0;
			qv_io_free(io);
		}
		qv_mount_fini(&m);
	}
	if (a.opened)
		a.ops.close(a.ops.ctx);
	qv_opts_free(&cl);
	free(a.optv);
	return ret;
}
