/* main.c - the daemon's session: its options, the mount-time checks, the mount, the FUSE
 * session, the signals thread, the request loop and the teardown, as a fixed sequence whose
 * cleanup labels name what they undo. */
#include "qv_bdi.h"
#include "qv_loop.h"
#include "qv_fs.h"
#include "qv_notify.h"
#include "qv_gpu.h"
#include "qv_inspect_cli.h"
#include "qv_mntpt.h"
#include "qv_opts.h"
#include "qv_stage.h"
#include "qv_stage_cli.h"
#include "qv_util.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>

/* SIGHUP rescans the source, SIGUSR1 logs the counters. Both are blocked in every thread and
 * taken here with sigwait, so the work runs outside signal context and request handlers. */
struct rescanner {
	pthread_t thread;
	struct qv_fs *fs;
	struct fuse_session *se;
	atomic_bool stop;
};

static void *rescan_thread(void *arg)
{
	struct rescanner *r = arg;
	sigset_t set;
	int sig;

	sigemptyset(&set);
	sigaddset(&set, SIGHUP);
	sigaddset(&set, SIGUSR1);
	while (sigwait(&set, &sig) == 0 && !atomic_load(&r->stop)) {
		struct qv_buf b = { 0 };

		if (sig == SIGHUP) {
			qv_notify_rescan(r->fs->m, r->se);
		} else if (qv_mount_stats_json(r->fs->m, &b) == 0) {
			b.p[b.len - 1] = '\0'; /* one line: drop the newline */
			qv_log("stats %s", b.p);
		}
		qv_buf_free(&b);
	}
	return NULL;
}

/* Before the source is scanned, each mistake refused with one line: the log file, the mount
 * point, the GPU (whose staging then reports in .qvlmoefs/gpu.json); 0 or -1. */
static int prepare(struct qv_cmdline *cl, struct qv_stage_bg *gs)
{
	char err[QV_ERRLEN];

	if (cl->o.log && qv_log_open(cl->o.log, err, sizeof(err)))
		return qv_log("log=%s: %s", cl->o.log, err), -1;
	if (qv_mntpt_check(cl->o.source, cl->fuse.mountpoint, cl->o.overmount, err, sizeof(err)))
		return qv_log("%s", err), -1;
	if (cl->gpu < 0)
		return 0;
	/* fail fast, before mounting, when there is no such device; asked in a child so that
	 * CUDA is not initialised here: this process forks when it daemonizes */
	if (qv_stage_probe(cl->gpu, qv_gpu_open, err, sizeof(err)))
		return qv_log("gpu=%d: %s", cl->gpu, err), -1;
	qv_stage_bg_init(gs, cl->gpu, qv_gpu_open);
	cl->mount.gpu_json = qv_stage_bg_json;
	cl->mount.gpu_arg = gs;
	return 0;
}

/* Serve the mounted session se until it is unmounted or signalled: the readahead, detaching
 * (unless -f), the signals thread, GPU staging, the request loop; the exit status. */
static int serve(const struct qv_cmdline *cl, struct fuse_session *se, struct qv_fs *fs,
		 struct qv_stage_bg *gs)
{
	struct rescanner rs = { .fs = fs, .se = se };
	sigset_t sigs;
	int ret;

	/* best effort: without root the kernel's 128 KiB window stays, and reads are smaller */
	qv_bdi_set_readahead(cl->fuse.mountpoint, cl->readahead_kb);
	if (!cl->fuse.foreground && !qv_log_before_detach())
		qv_log("no syslog (/dev/log) and no -o log=FILE: the detached daemon's messages "
		       "(and SIGUSR1's counters) go nowhere");
	if (fuse_daemonize(cl->fuse.foreground))
		return 1;
	if (!cl->fuse.foreground)
		qv_log_detached();
	/* after daemonizing: threads do not survive the fork */
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGHUP);
	sigaddset(&sigs, SIGUSR1);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	if (pthread_create(&rs.thread, NULL, rescan_thread, &rs))
		return 1;
	/* after daemonizing: the staging thread opens the device itself */
	if (cl->gpu >= 0 && qv_stage_bg_start(gs, fs->m))
		qv_log("gpu=%d: cannot start the staging thread", cl->gpu);
	ret = qv_loop_run(se, &cl->fuse) ? 1 : 0;
	qv_stage_bg_stop(gs); /* between two pieces: shutdown does not wait for staging */
	atomic_store(&rs.stop, true);
	pthread_kill(rs.thread, SIGHUP);
	pthread_join(rs.thread, NULL);
	return ret;
}

int main(int argc, char *argv[])
{
	static struct qv_mount m; /* zeroed: undoing a mount that never started is a no-op */
	static struct qv_stage_bg gs;
	struct qv_cmdline cl;
	struct fuse_session *se;
	struct qv_fs fs;
	char err[QV_ERRLEN];
	int ret = 1, rc;

	if (argc > 1 && !strcmp(argv[1], "stage"))
		return qv_stage_main(argc - 1, argv + 1);
	if (argc > 1 && !strcmp(argv[1], "inspect"))
		return qv_inspect_main(argc - 1, argv + 1);
	rc = qv_opts_mount(argc, argv, &cl);
	if (rc || prepare(&cl, &gs)) {
		ret = rc == 1 ? 0 : 1; /* 1: --help or --version, printed */
		goto out_opts;
	}
	if (qv_mount_init(&m, cl.o.source, &cl.mount, err, sizeof(err))) {
		qv_log("%s", err);
		goto out_mount;
	}
	m.o.io.fallback_logged = &m.fallback_logged;
	if (qv_fs_init(&fs, &m, &cl.glue))
		goto out_mount;
	se = fuse_session_new(&cl.args, qv_fs_ops(), sizeof(*qv_fs_ops()), &fs);
	if (!se)
		goto out_mount;
	fs.se = se;
	if (fuse_set_signal_handlers(se))
		goto out_session;
	if (fuse_session_mount(se, cl.fuse.mountpoint))
		goto out_signals;
	ret = serve(&cl, se, &fs, &gs);
	fuse_session_unmount(se);
out_signals:
	fuse_remove_signal_handlers(se);
out_session:
	fuse_session_destroy(se);
out_mount:
	qv_stage_bg_stop(&gs); /* staging reads the mount's files: stop it first */
	qv_mount_fini(&m);
out_opts:
	qv_opts_free(&cl);
	return ret;
}
