/* main.c - command line, mount-time checks, and the FUSE session, as a fixed sequence whose
 * cleanup labels name what they undo. */
#include "qv_bdi.h"
#include "qv_fs.h"
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

#ifndef QV_VERSION
#define QV_VERSION "0.1.0"
#endif

struct options {
	char *source;
	char *view, *exclude, *io, *gpu;
	unsigned ep_size, ep_rank, shard_size, shard_rank;
	unsigned readahead_kb;
	int direct_io;
	int ep_size_set, ep_rank_set, shard_size_set, shard_rank_set;
	int allow_other;
};

enum { KEY_ALLOW_OTHER, KEY_DROP };

#define OPT(t, p) { t, offsetof(struct options, p), 1 }
static const struct fuse_opt opt_spec[] = {
	OPT("view=%s", view),
	OPT("exclude=%s", exclude),
	OPT("io=%s", io),
	OPT("gpu=%s", gpu),
	OPT("ep_size=%u", ep_size),
	OPT("ep_size=", ep_size_set),
	OPT("ep_rank=%u", ep_rank),
	OPT("ep_rank=", ep_rank_set),
	OPT("ep_shard_size=%u", shard_size),
	OPT("ep_shard_size=", shard_size_set),
	OPT("ep_shard_rank=%u", shard_rank),
	OPT("ep_shard_rank=", shard_rank_set),
	OPT("readahead_kb=%u", readahead_kb),
	OPT("direct_io", direct_io),
	FUSE_OPT_KEY("allow_other", KEY_ALLOW_OTHER),
	FUSE_OPT_KEY("rw", KEY_DROP),	     /* mount(8) may pass it; the view is read-only anyway */
	FUSE_OPT_KEY("nofail", KEY_DROP),    /* fstab-only */
	FUSE_OPT_KEY("_netdev", KEY_DROP),   /* fstab-only */
	FUSE_OPT_KEY("defaults", KEY_DROP),  /* fstab-only */
	FUSE_OPT_END
};

static int opt_proc(void *data, const char *arg, int key, struct fuse_args *outargs)
{
	struct options *o = data;

	(void)outargs;
	if (key == FUSE_OPT_KEY_NONOPT && !o->source) {
		o->source = strdup(arg);
		return o->source ? 0 : -1;
	}
	if (key == KEY_ALLOW_OTHER)
		o->allow_other = 1;
	return key == KEY_DROP ? 0 : 1;
}

static void usage(const char *prog)
{
	printf("usage: %s [options] SOURCE MOUNTPOINT\n\n", prog);
	printf("Shows a Qwen3-VL-MoE safetensors checkpoint folder with converted key names.\n\n"
	       "qvlmoefs options:\n"
	       "    -o view=native|hf      naming of the view (default: the other one than SOURCE's)\n"
	       "    -o exclude=REGEX       keys left out of an HF view (default .*_extra_state.*)\n"
	       "    -o io=uring|pread      how sources are read (default uring)\n"
	       "    -o ep_size=W           expert-parallel size; alone: one folder per rank\n"
	       "    -o ep_rank=R           expert-parallel rank shown (0 <= R < W)\n"
	       "    -o ep_shard_size=K     cut expert tensors on dim 1 into K parts\n"
	       "    -o ep_shard_rank=S     the part shown (0 <= S < K)\n"
	       "    -o direct_io           bypass the page cache for read() (mmap still works)\n"
	       "    -o readahead_kb=N      the mount's readahead when run as root (default 4096)\n"
	       "    -o gpu=N               stage expert tensors on CUDA device N (not built yet)\n\n");
	fuse_cmdline_help();
	fuse_lowlevel_help();
}

/* Turn option strings into the core's options; one-line message and -EINVAL when invalid. */
static int check_options(const struct options *o, struct qv_mount_opts *mo)
{
	memset(mo, 0, sizeof(*mo));
	mo->exclude = o->exclude;
	if (o->view) {
		mo->view_set = true;
		if (!strcmp(o->view, "native"))
			mo->view = QV_NAMING_NATIVE;
		else if (!strcmp(o->view, "hf"))
			mo->view = QV_NAMING_HF;
		else
			return qv_log("view=%s: expected native or hf", o->view), -EINVAL;
	}
	if (o->io && strcmp(o->io, "uring") && strcmp(o->io, "pread"))
		return qv_log("io=%s: expected uring or pread", o->io), -EINVAL;
	mo->io.backend = o->io && !strcmp(o->io, "pread") ? QV_IO_PREAD : QV_IO_URING;
	if (o->gpu)
		return qv_log("gpu=%s: GPU staging is not implemented in this build", o->gpu), -EINVAL;
	if (o->ep_rank_set && !o->ep_size_set)
		return qv_log("ep_rank needs ep_size"), -EINVAL;
	if (o->shard_rank_set && !o->shard_size_set)
		return qv_log("ep_shard_rank needs ep_shard_size"), -EINVAL;
	if (o->shard_size_set && !o->ep_size_set)
		return qv_log("ep_shard_size needs ep_size"), -EINVAL;
	if (o->ep_size_set && o->ep_size == 0)
		return qv_log("ep_size must be at least 1"), -EINVAL;
	if (o->shard_size_set && o->shard_size == 0)
		return qv_log("ep_shard_size must be at least 1"), -EINVAL;
	mo->ep_size = o->ep_size_set ? o->ep_size : 0;
	mo->ep_rank = o->ep_rank;
	mo->ep_rank_set = o->ep_rank_set;
	mo->shard_size = o->shard_size_set ? o->shard_size : 0;
	mo->shard_rank = o->shard_rank;
	mo->shard_rank_set = o->shard_rank_set;
	return 0;
}

/* SIGHUP rescans the source. The signal is blocked in every thread and taken here with
 * sigwait, so the rescan runs outside signal context and outside request handlers. */
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
	while (sigwait(&set, &sig) == 0 && !atomic_load(&r->stop))
		qv_fs_rescan(r->fs, r->se);
	return NULL;
}

/* Test-only fault injection, QVLMOEFS_TEST_FAULTS="setup=EPERM,chunk=N,eagain=N": refuse the
 * ring as a sandbox would, clamp every read to N bytes (short reads), turn every Nth
 * completion into -EAGAIN. Tests use it to drive the recovery paths through a real mount. */
static void test_faults(struct qv_io_cfg *io)
{
	const char *f = getenv("QVLMOEFS_TEST_FAULTS");
	char *copy, *tok, *save = NULL;

	if (!f || !(copy = strdup(f)))
		return;
	for (tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		if (!strcmp(tok, "setup=EPERM"))
			io->fail_setup_errno = EPERM;
		else if (!strncmp(tok, "chunk=", 6))
			io->max_chunk = strtoull(tok + 6, NULL, 0);
		else if (!strncmp(tok, "eagain=", 7))
			io->eagain_every = (unsigned)strtoul(tok + 7, NULL, 0);
	}
	free(copy);
	qv_log("test fault injection on: %s", f);
}

/* fsname=SOURCE for mount(8) and /proc/mounts; commas and backslashes must be escaped. */
static int add_fsname(struct fuse_args *args, const char *source)
{
	struct qv_buf b = { 0 };
	int rc = qv_buf_adds(&b, "-osubtype=qvlmoefs,fsname=");

	for (const char *s = source; *s && !rc; s++) {
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

int main(int argc, char *argv[])
{
	struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
	struct fuse_cmdline_opts copts = { 0 };
	struct fuse_loop_config *lcfg = NULL;
	struct options o = { 0 };
	struct qv_mount_opts mo;
	struct fuse_session *se;
	static struct qv_mount m;
	struct qv_fs fs;
	struct rescanner rs = { 0 };
	sigset_t hup;
	char err[QV_ERRLEN];
	int ret = 1;

	if (fuse_opt_parse(&args, &o, opt_spec, opt_proc) == -1)
		goto out_args;
	if (fuse_parse_cmdline(&args, &copts) != 0)
		goto out_args;
	if (copts.show_help) {
		usage(argv[0]);
		ret = 0;
		goto out_opts;
	}
	if (copts.show_version) {
		printf("qvlmoefs version %s\nFUSE library version %s\ngpu: not built\n", QV_VERSION,
		       fuse_pkgversion());
		ret = 0;
		goto out_opts;
	}
	if (!o.source || !copts.mountpoint) {
		fprintf(stderr, "usage: %s [options] SOURCE MOUNTPOINT (see --help)\n", argv[0]);
		goto out_opts;
	}
	if (check_options(&o, &mo))
		goto out_opts;
	test_faults(&mo.io);
	if (qv_mount_init(&m, o.source, &mo, err, sizeof(err))) {
		qv_log("%s", err);
		goto out_mount_ctx;
	}
	m.o.io.fallback_logged = &m.fallback_logged;
	if (fuse_opt_add_arg(&args, "-oro") || add_fsname(&args, o.source) ||
	    (o.allow_other && fuse_opt_add_arg(&args, "-odefault_permissions")))
		goto out_mount_ctx;
	if (qv_fs_init(&fs, &m))
		goto out_mount_ctx;
	fs.direct_io = o.direct_io;
	se = fuse_session_new(&args, qv_fs_ops(), sizeof(*qv_fs_ops()), &fs);
	if (!se)
		goto out_fs;
	if (fuse_set_signal_handlers(se))
		goto out_session;
	if (fuse_session_mount(se, copts.mountpoint))
		goto out_signals;
	/* best effort: without root the kernel's 128 KiB window stays, and reads are smaller */
	qv_bdi_set_readahead(copts.mountpoint, o.readahead_kb ? o.readahead_kb : 4096);
	if (fuse_daemonize(copts.foreground))
		goto out_unmount;
	if (!copts.foreground)
		qv_log_use_syslog();
	/* after daemonizing: threads do not survive the fork */
	sigemptyset(&hup);
	sigaddset(&hup, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &hup, NULL);
	rs.fs = &fs;
	rs.se = se;
	if (pthread_create(&rs.thread, NULL, rescan_thread, &rs))
		goto out_unmount;
	if (copts.singlethread) {
		ret = fuse_session_loop(se);
	} else {
		lcfg = fuse_loop_cfg_create();
		if (!lcfg)
			goto out_unmount;
		fuse_loop_cfg_set_clone_fd(lcfg, copts.clone_fd);
		/* keep idle workers (and their rings) alive instead of recreating them;
		 * UINT_MAX means the user gave no max_idle_threads */
		fuse_loop_cfg_set_idle_threads(lcfg, copts.max_idle_threads == UINT_MAX ?
							     16 : copts.max_idle_threads);
		fuse_loop_cfg_set_max_threads(lcfg, copts.max_threads);
		ret = fuse_session_loop_mt(se, lcfg);
		fuse_loop_cfg_destroy(lcfg);
	}
	/* the loop returns the signal that ended it: SIGTERM/SIGINT are a clean shutdown */
	ret = ret == 0 || ret == SIGTERM || ret == SIGINT ? 0 : 1;
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
	qv_mount_fini(&m);
out_opts:
	free(copts.mountpoint);
	free(o.source);
	free(o.view);
	free(o.exclude);
	free(o.io);
	free(o.gpu);
out_args:
	fuse_opt_free_args(&args);
	return ret;
}
