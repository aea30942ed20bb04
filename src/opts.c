/* opts.c - the -o options shared by the mount and `qvlmoefs stage`, parsed with libfuse's
 * option parser and checked into the core's options with one-line messages. */
#include "qv_opts.h"
#include "qv_util.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { KEY_ALLOW_OTHER, KEY_DROP };

#define OPT(t, p) { t, offsetof(struct qv_options, p), 1 }
static const struct fuse_opt opt_spec[] = {
	OPT("view=%s", view),
	OPT("exclude=%s", exclude),
	OPT("io=%s", io),
	OPT("gpu=%s", gpu),
	/* as text, checked below: %u would read "-1" as 4294967295 and "2x" as 2 */
	OPT("ep_size=%s", ep_size),
	OPT("ep_rank=%s", ep_rank),
	OPT("ep_shard_size=%s", shard_size),
	OPT("ep_shard_rank=%s", shard_rank),
	OPT("readahead_kb=%u", readahead_kb),
	OPT("shard_size=%llu", max_file),
	OPT("direct_io", direct_io),
	OPT("inspect_dir=%s", inspect_dir),
	OPT("allow_empty", allow_empty),
	OPT("overmount", overmount),
	FUSE_OPT_KEY("allow_other", KEY_ALLOW_OTHER),
	FUSE_OPT_KEY("rw", KEY_DROP),	     /* mount(8) may pass it; the view is read-only anyway */
	FUSE_OPT_KEY("nofail", KEY_DROP),    /* fstab-only */
	FUSE_OPT_KEY("_netdev", KEY_DROP),   /* fstab-only */
	FUSE_OPT_KEY("defaults", KEY_DROP),  /* fstab-only */
	FUSE_OPT_END
};

static int opt_proc(void *data, const char *arg, int key, struct fuse_args *outargs)
{
	struct qv_options *o = data;

	(void)outargs;
	if (key == FUSE_OPT_KEY_NONOPT && !o->source) {
		o->source = strdup(arg);
		return o->source ? 0 : -1;
	}
	if (key == KEY_ALLOW_OTHER)
		o->allow_other = 1;
	return key == KEY_DROP ? 0 : 1;
}

/* name=s as a whole number from lo to hi: digits only, so a sign or trailing junk is refused
 * rather than wrapped or ignored; 0 or -EINVAL, logged with the accepted range. */
static int parse_count(const char *name, const char *s, uint32_t lo, uint32_t hi, uint32_t *out)
{
	uint64_t v = 0;
	const char *p;

	for (p = s; *p >= '0' && *p <= '9' && v <= hi; p++) /* stops before v can overflow */
		v = v * 10 + (uint64_t)(*p - '0');
	if (p == s || *p || v < lo || v > hi)
		return qv_log("%s=%s: expected a whole number from %u to %u", name, s, lo, hi), -EINVAL;
	*out = (uint32_t)v;
	return 0;
}

/* The slicing options, each bounded here; plan and gen bound them further by the checkpoint
 * (ep_size by its expert count, the folder count by QV_PLAN_MAX_FOLDERS). */
static int check_slicing(const struct qv_options *o, struct qv_mount_opts *mo)
{
	if (o->ep_rank && !o->ep_size)
		return qv_log("ep_rank needs ep_size"), -EINVAL;
	if (o->shard_rank && !o->shard_size)
		return qv_log("ep_shard_rank needs ep_shard_size"), -EINVAL;
	if (o->shard_size && !o->ep_size)
		return qv_log("ep_shard_size needs ep_size"), -EINVAL;
	if ((o->ep_size && parse_count("ep_size", o->ep_size, 1, QV_PLAN_MAX_EP, &mo->ep_size)) ||
	    (o->ep_rank && parse_count("ep_rank", o->ep_rank, 0, QV_PLAN_MAX_EP - 1, &mo->ep_rank)) ||
	    (o->shard_size &&
	     parse_count("ep_shard_size", o->shard_size, 1, QV_PLAN_MAX_EP, &mo->shard_size)) ||
	    (o->shard_rank &&
	     parse_count("ep_shard_rank", o->shard_rank, 0, QV_PLAN_MAX_EP - 1, &mo->shard_rank)))
		return -EINVAL;
	mo->ep_rank_set = o->ep_rank != NULL;
	mo->shard_rank_set = o->shard_rank != NULL;
	return 0;
}

/* Turn option strings into the core's options; one-line message and -EINVAL when invalid. */
int qv_opts_check(const struct qv_options *o, struct qv_mount_opts *mo, int *gpu)
{
	memset(mo, 0, sizeof(*mo));
	*gpu = -1;
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
	if (o->gpu) {
		char *end;
		long dev = strtol(o->gpu, &end, 10);

		if (end == o->gpu || *end || dev < 0 || dev > 1024)
			return qv_log("gpu=%s: expected a CUDA device number", o->gpu), -EINVAL;
		*gpu = (int)dev;
	}
	/* like ZFS's snapdir=hidden: reachable by path, but du, cp -r and rsync, which walk
	 * listings, do not count the raw tensors twice */
	if (o->inspect_dir && strcmp(o->inspect_dir, "hidden") && strcmp(o->inspect_dir, "visible"))
		return qv_log("inspect_dir=%s: expected hidden or visible", o->inspect_dir), -EINVAL;
	mo->inspect_visible = o->inspect_dir && !strcmp(o->inspect_dir, "visible");
	mo->allow_empty = o->allow_empty;
	mo->max_file = o->max_file;
	return check_slicing(o, mo);
}

int qv_opts_parse(struct fuse_args *args, struct qv_options *o)
{
	return fuse_opt_parse(args, o, opt_spec, opt_proc);
}

void qv_opts_free(struct qv_options *o)
{
	free(o->source);
	free(o->view);
	free(o->exclude);
	free(o->io);
	free(o->gpu);
	free(o->ep_size);
	free(o->ep_rank);
	free(o->shard_size);
	free(o->shard_rank);
	free(o->inspect_dir);
	memset(o, 0, sizeof(*o));
}

void qv_opts_help(void)
{
	printf("Shows a Qwen3-VL-MoE safetensors checkpoint folder with converted key names.\n\n"
	       "qvlmoefs options:\n"
	       "    -o view=native|hf      naming of the view (default: the other one than SOURCE's)\n"
	       "    -o exclude=REGEX       keys left out of an HF view (default .*_extra_state.*)\n"
	       "    -o io=uring|pread      how sources are read (default uring)\n"
	       "    -o ep_size=W           expert-parallel size; alone: one folder per rank\n"
	       "    -o ep_rank=R           expert-parallel rank shown (0 <= R < W)\n"
	       "    -o ep_shard_size=K     cut expert tensors on dim 1 into K parts\n"
	       "    -o ep_shard_rank=S     the part shown (0 <= S < K)\n"
	       "    -o shard_size=BYTES    files of a consolidated sharded save (default 5 GB)\n"
	       "    -o direct_io           bypass the page cache for read() (mmap still works)\n"
	       "    -o inspect_dir=visible list .qvlmoefs/ in folder listings (default hidden:\n"
	       "                           reachable by path only, so du and cp -r skip it)\n"
	       "    -o allow_empty         mount a source that has no *.safetensors file\n"
	       "    -o overmount           mount on a folder that is already a mount point\n"
	       "    -o readahead_kb=N      the mount's readahead when run as root (default 4096)\n"
	       "    -o gpu=N               stage expert tensors on CUDA device N in the background\n\n");
}

/* Test-only fault injection, QVLMOEFS_TEST_FAULTS="setup=EPERM,chunk=N,eagain=N,submit_fail=N,
 * scan_pause_ms=N": refuse the ring as a sandbox would, clamp every read to N bytes (short
 * reads), turn every Nth completion into -EAGAIN, fail each reader's Nth submission with its
 * reads in flight, pause after each scan so a file can be swapped before it is opened. Tests
 * use it to drive the recovery paths through a real mount. */
void qv_opts_faults(struct qv_mount_opts *mo)
{
	struct qv_io_cfg *io = &mo->io;
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
		else if (!strncmp(tok, "submit_fail=", 12))
			io->fail_submit_nth = (unsigned)strtoul(tok + 12, NULL, 0);
		else if (!strncmp(tok, "scan_pause_ms=", 14))
			mo->scan_pause_ms = (unsigned)strtoul(tok + 14, NULL, 10);
	}
	free(copy);
	qv_log("test fault injection on: %s", f);
}

