/* main.c - command line, mount-time checks, and the FUSE session, as a fixed sequence whose
 * cleanup labels name what they undo. */
#include "qv_bdi.h"
#include "qv_loop.h"
#include "qv_fs.h"
#include "qv_gpu.h"
#include "qv_inspect_cli.h"
#include "qv_mntpt.h"
#include "qv_opts.h"
#include "qv_stage.h"
#include "qv_stage_cli.h"
#include "qv_util.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
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
			qv_fs_rescan(r->fs, r->se);
		} else if (qv_mount_stats_json(r->fs->m, &b) == 0) {
			b.p[b.len - 1] = '\0'; /* one line: drop the newline */
			qv_log("stats %s", b.p);
		}
		qv_buf_free(&b);
	}
	return NULL;
}

/* subtype=qvlmoefs, and fsname=source (the source's absolute path) for mount(8) and
 * /proc/mounts unless the user gave one (source NULL); escaped for libfuse's -o parser. */
static int add_fsname(struct fuse_args *args, const char *source)
{
	struct qv_buf b = { 0 };
	int rc = qv_buf_adds(&b, source ? "-osubtype=qvlmoefs,fsname=" : "-osubtype=qvlmoefs");

	for (const char *s = source; s && *s && !rc; s++) {
		if (*s == ',' || *s == '\\')
			rc = qv_buf_add(&b, "\\", 1);
		if (!rc)
			rc = qv_buf_add(&b, s, 1);
	}
	if (!rc)
		rc = fuse_opt_add_arg(args, b.p);
	qv_buf_free(&b);
	return rc;
}

/* Requests a splice reply can carry whole: 1 MiB ones need a 2 MiB pipe, which takes
 * CAP_SYS_RESOURCE (or a raised fs.pipe-max-size); short of that, cap the kernel's requests
 * (max_read) to what the pipe holds rather than copy them all. *max_read: 0 when uncapped. */
static int splice_max_read(struct fuse_args *args, unsigned *max_read)
{
	size_t max = qv_io_splice_max();
	char opt[64];

	if (max >= (1u << 20) || max < 2 * 4096)
		return 0; /* room enough, or no splice at all: reads are copied */
	*max_read = (unsigned)max;
	snprintf(opt, sizeof(opt), "-omax_read=%u", *max_read);
	return fuse_opt_add_arg(args, opt);
}

int main(int argc, char *argv[])
{
	struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
	struct fuse_cmdline_opts copts = { 0 };
	struct qv_options o = { 0 };
	struct qv_mount_opts mo;
	struct fuse_session *se;
	static struct qv_mount m;
	struct qv_fs fs;
	struct rescanner rs = { 0 };
	static struct qv_stage_bg gs;
	sigset_t hup;
	char err[QV_ERRLEN];
	int ret = 1, rc, gpu;

	if (argc > 1 && !strcmp(argv[1], "stage"))
		return qv_stage_main(argc - 1, argv + 1);
	if (argc > 1 && !strcmp(argv[1], "inspect"))
		return qv_inspect_main(argc - 1, argv + 1);
	if (qv_opts_parse(&args, &o, &copts))
		goto out_opts;
	if (copts.show_help) {
		printf("usage: %s [options] SOURCE MOUNTPOINT\n"
		       "       %s inspect SOURCE [-o options] [--keys] [--json]\n"
		       "       %s stage SOURCE [-o options] [--device N] [--all] (see stage --help)\n\n",
		       argv[0], argv[0], argv[0]);
		qv_opts_help();
		fuse_cmdline_help();
		fuse_lowlevel_help();
		ret = 0;
		goto out_opts;
	}
	if (copts.show_version) {
		printf("qvlmoefs version %s\nFUSE library version %s\ngpu: %s\n", QV_VERSION,
		       fuse_pkgversion(), qv_gpu_build());
		ret = 0;
		goto out_opts;
	}
	if (!o.source || !copts.mountpoint) {
		fprintf(stderr, "usage: %s [options] SOURCE MOUNTPOINT (see --help)\n", argv[0]);
		goto out_opts;
	}
	/* every option checked before the source is scanned, which may take a while */
	if (qv_opts_known(&args) || qv_opts_check(&o, &mo, &gpu))
		goto out_opts;
	if (o.log && (rc = qv_log_open(o.log, err, sizeof(err)))) {
		qv_log("log=%s: %s", o.log, err);
		goto out_opts;
	}
	if (qv_mntpt_check(o.source, copts.mountpoint, o.overmount, err, sizeof(err))) {
		qv_log("%s", err);
		goto out_opts;
	}
	qv_opts_faults(&mo);
	if (gpu >= 0) {
		/* fail fast, before mounting, when there is no such device; asked in a child so
		 * that CUDA is not initialised here: this process forks when it daemonizes */
		if (qv_stage_probe(gpu, qv_gpu_open, err, sizeof(err))) {
			qv_log("gpu=%d: %s", gpu, err);
			goto out_opts;
		}
		qv_stage_bg_init(&gs, gpu, qv_gpu_open);
		mo.gpu_json = qv_stage_bg_json;
		mo.gpu_arg = &gs;
	}
	if (qv_mount_init(&m, o.source, &mo, err, sizeof(err))) {
		qv_log("%s", err);
		goto out_mount_ctx;
	}
	m.o.io.fallback_logged = &m.fallback_logged;
	if (fuse_opt_add_arg(&args, "-oro") || add_fsname(&args, o.fsname_set ? NULL : m.source) ||
	    (o.allow_other && fuse_opt_add_arg(&args, "-odefault_permissions")))
		goto out_mount_ctx;
	if (qv_fs_init(&fs, &m))
		goto out_mount_ctx;
	fs.direct_io = o.direct_io;
	fs.splice = !o.nosplice; /* -o splice: the default, said out loud */
	fs.max_read = o.max_read;
	if (fs.splice && !fs.max_read && splice_max_read(&args, &fs.max_read))
		goto out_fs;
	se = fuse_session_new(&args, qv_fs_ops(), sizeof(*qv_fs_ops()), &fs);
	if (!se)
		goto out_fs;
	if (fuse_set_signal_handlers(se))
		goto out_session;
	if (fuse_session_mount(se, copts.mountpoint))
		goto out_signals;
	/* best effort: without root the kernel's 128 KiB window stays, and reads are smaller */
	/* (a whole number of requests when splice caps their size: 4 of 1008 KiB, not 4 and a
	 * 64 KiB one) */
	qv_bdi_set_readahead(copts.mountpoint, o.readahead_set ? o.readahead_kb :
					       fs.max_read ? 4 * (fs.max_read / 1024) : 4096);
	if (!copts.foreground && !qv_log_before_detach())
		qv_log("no syslog (/dev/log) and no -o log=FILE: the detached daemon's messages "
		       "(and SIGUSR1's counters) go nowhere");
	if (fuse_daemonize(copts.foreground))
		goto out_unmount;
	if (!copts.foreground)
		qv_log_detached();
	/* after daemonizing: threads do not survive the fork */
	sigemptyset(&hup);
	sigaddset(&hup, SIGHUP);
	sigaddset(&hup, SIGUSR1);
	pthread_sigmask(SIG_BLOCK, &hup, NULL);
	rs.fs = &fs;
	rs.se = se;
	if (pthread_create(&rs.thread, NULL, rescan_thread, &rs))
		goto out_unmount;
	/* after daemonizing: the staging thread opens the device itself */
	if (gpu >= 0 && qv_stage_bg_start(&gs, &m))
		qv_log("gpu=%d: cannot start the staging thread", gpu);
	ret = qv_loop_run(se, &copts) ? 1 : 0;
	qv_stage_bg_stop(&gs); /* between two pieces: shutdown does not wait for staging */
	atomic_store(&rs.stop, true);
	pthread_kill(rs.thread, SIGHUP);
	pthread_join(rs.thread, NULL);
out_unmount:
	fuse_session_unmount(se);
out_signals:
	fuse_remove_signal_handlers(se);
out_session:
	fuse_session_destroy(se);
out_fs:
	qv_fs_fini(&fs);
out_mount_ctx:
	qv_stage_bg_stop(&gs); /* staging reads the mount's files: stop it first */
	qv_mount_fini(&m);
out_opts:
	free(copts.mountpoint);
	qv_opts_free(&o);
	fuse_opt_free_args(&args);
	return ret;
}
