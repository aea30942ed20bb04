/* opts.c - the command line of the mount, `inspect` and `stage`, parsed with libfuse's option
 * parsers and checked into each layer's options with one-line messages. */
#include "qv_opts.h"
#include "qv_excl.h"
#include "qv_gpu.h"
#include "qv_io.h"
#include "qv_util.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { KEY_ALLOW_OTHER, KEY_DROP, KEY_FSNAME, KEY_MAX_READ, KEY_READAHEAD, KEY_SHARD_SIZE };

#define OPT(t, p) { t, offsetof(struct qv_options, p), 1 }
static const struct fuse_opt opt_spec[] = {
	OPT("view=%s", view),
	OPT("expert_layout=%s", expert_layout),
	OPT("source_layout=%s", source_layout),
	OPT("dequant=%s", dequant),
	/* no exclude=: take_excludes() has it out of every -o before libfuse could unescape it */
	OPT("io=%s", io),
	OPT("log=%s", log),
	OPT("gpu=%s", gpu),
	/* as text, checked below: %u would read "-1" as 4294967295 and "2x" as 2 */
	OPT("ep_size=%s", ep_size),
	OPT("ep_rank=%s", ep_rank),
	OPT("ep_shard_size=%s", shard_size),
	OPT("ep_shard_rank=%s", shard_rank),
	FUSE_OPT_KEY("readahead_kb=", KEY_READAHEAD),
	FUSE_OPT_KEY("shard_size=", KEY_SHARD_SIZE),
	OPT("direct_io", direct_io),
	OPT("splice", splice),
	OPT("nosplice", nosplice),
	OPT("inspect_dir=%s", inspect_dir),
	OPT("allow_empty", allow_empty),
	OPT("overmount", overmount),
	OPT("ep_shared", ep_shared),
	FUSE_OPT_KEY("allow_other", KEY_ALLOW_OTHER),
	FUSE_OPT_KEY("fsname=", KEY_FSNAME), /* kept for libfuse; noted so none is added */
	FUSE_OPT_KEY("max_read=", KEY_MAX_READ), /* kept for libfuse; init must repeat it */
	FUSE_OPT_KEY("rw", KEY_DROP),	     /* mount(8) may pass it; the view is read-only anyway */
	FUSE_OPT_KEY("nofail", KEY_DROP),    /* fstab-only */
	FUSE_OPT_KEY("_netdev", KEY_DROP),   /* fstab-only */
	FUSE_OPT_KEY("defaults", KEY_DROP),  /* fstab-only */
	FUSE_OPT_END
};

int qv_opts_number(const char *name, const char *s, uint64_t lo, uint64_t hi, uint64_t *out)
{
	uint64_t v = 0;
	bool big = false;
	const char *p;

	/* digits only, so a sign or trailing junk is refused rather than wrapped or ignored */
	for (p = s; *p >= '0' && *p <= '9'; p++) {
		uint64_t d = (uint64_t)(*p - '0');

		if (v > (UINT64_MAX - d) / 10)
			big = true; /* past 2^64: out of any range, never wrapped */
		else
			v = v * 10 + d;
	}
	if (p == s || *p || big || v < lo || v > hi)
		return qv_log("%s=%s: expected a whole number from %llu to %llu", name, s,
			      (unsigned long long)lo, (unsigned long long)hi),
		       -EINVAL;
	*out = v;
	return 0;
}

static int opt_proc(void *data, const char *arg, int key, struct fuse_args *outargs)
{
	struct qv_options *o = data;
	const char *v = strchr(arg, '=');
	uint64_t n;

	(void)outargs;
	if (key == FUSE_OPT_KEY_NONOPT && !o->source) {
		o->source = strdup(arg);
		return o->source ? 0 : -1;
	}
	if (key == KEY_READAHEAD) {
		if (qv_opts_number("readahead_kb", v + 1, 0, QV_OPTS_MAX_READAHEAD_KB, &n))
			return -1;
		o->readahead_kb = (unsigned)n;
		o->readahead_set = 1;
		return 0;
	}
	if (key == KEY_SHARD_SIZE) {
		if (qv_opts_number("shard_size", v + 1, 1, UINT64_MAX, &n))
			return -1;
		o->max_file = n;
		return 0;
	}
	if (key == KEY_MAX_READ) {
		if (qv_opts_number("max_read", v + 1, 4096, UINT32_MAX, &n))
			return -1;
		o->max_read = (unsigned)n;
		return 1;
	}
	if (key == KEY_ALLOW_OTHER)
		o->allow_other = 1;
	if (key == KEY_FSNAME)
		o->fsname_set = 1;
	return key == KEY_DROP ? 0 : 1;
}

/* name=s as a number from lo to hi into a uint32_t; 0 or -EINVAL, logged with the range. */
static int parse_count(const char *name, const char *s, uint32_t lo, uint32_t hi, uint32_t *out)
{
	uint64_t v;
	int rc = qv_opts_number(name, s, lo, hi, &v);

	if (!rc)
		*out = (uint32_t)v;
	return rc;
}

/* The slicing options, each bounded here; plan and gen bound them further by the checkpoint
 * (ep_size by its expert count, the folder count by QV_PLAN_MAX_FOLDERS). */
static int check_slicing(const struct qv_options *o, struct qv_gen_opts *go)
{
	if (o->ep_rank && !o->ep_size)
		return qv_log("ep_rank needs ep_size"), -EINVAL;
	if (o->shard_rank && !o->shard_size)
		return qv_log("ep_shard_rank needs ep_shard_size"), -EINVAL;
	if (o->shard_size && !o->ep_size)
		return qv_log("ep_shard_size needs ep_size"), -EINVAL;
	if ((o->ep_size && parse_count("ep_size", o->ep_size, 1, QV_PLAN_MAX_EP, &go->ep_size)) ||
	    (o->ep_rank && parse_count("ep_rank", o->ep_rank, 0, QV_PLAN_MAX_EP - 1, &go->ep_rank)) ||
	    (o->shard_size &&
	     parse_count("ep_shard_size", o->shard_size, 1, QV_PLAN_MAX_EP, &go->shard_size)) ||
	    (o->shard_rank &&
	     parse_count("ep_shard_rank", o->shard_rank, 0, QV_PLAN_MAX_EP - 1, &go->shard_rank)))
		return -EINVAL;
	go->ep_rank_set = o->ep_rank != NULL;
	go->shard_rank_set = o->shard_rank != NULL;
	return 0;
}

/* name=s as a layout (hub or linear) into *out; 0 or -EINVAL, logged. */
static int parse_layout(const char *name, const char *s, enum qv_layout *out)
{
	if (!s)
		return 0;
	if (!strcmp(s, "hub"))
		*out = QV_LAYOUT_HUB;
	else if (!strcmp(s, "linear"))
		*out = QV_LAYOUT_LINEAR;
	else
		return qv_log("%s=%s: expected hub ([E, H, 2I] / [E, I, H]) or linear ([E, 2I, H] / "
			      "[E, H, I])", name, s), -EINVAL;
	return 0;
}

/* Turn option strings into the core's options; one-line message and -EINVAL when invalid. */
int qv_opts_check(const struct qv_options *o, struct qv_mount_opts *mo, int *gpu)
{
	int rc;

	memset(mo, 0, sizeof(*mo));
	*gpu = -1;
	mo->gen.exclude = o->exclude;
	if (o->view) {
		mo->gen.view_set = true;
		if (!strcmp(o->view, "native"))
			mo->gen.view = QV_NAMING_NATIVE;
		else if (!strcmp(o->view, "hf"))
			mo->gen.view = QV_NAMING_HF;
		else
			return qv_log("view=%s: expected native or hf", o->view), -EINVAL;
	}
	if (parse_layout("expert_layout", o->expert_layout, &mo->gen.expert_layout) ||
	    parse_layout("source_layout", o->source_layout, &mo->gen.source_layout))
		return -EINVAL;
	if (o->dequant && strcmp(o->dequant, "bf16"))
		return qv_log("dequant=%s: expected bf16", o->dequant), -EINVAL;
	mo->gen.dequant = o->dequant != NULL;
	if (o->io && strcmp(o->io, "uring") && strcmp(o->io, "pread"))
		return qv_log("io=%s: expected uring or pread", o->io), -EINVAL;
	mo->io.backend = o->io && !strcmp(o->io, "pread") ? QV_IO_PREAD : QV_IO_URING;
	if (o->gpu) {
		uint32_t dev;

		if (parse_count("gpu", o->gpu, 0, QV_OPTS_MAX_GPU, &dev))
			return -EINVAL;
		*gpu = (int)dev;
	}
	/* like ZFS's snapdir=hidden: reachable by path, but du, cp -r and rsync, which walk
	 * listings, do not count the raw tensors twice */
	if (o->inspect_dir && strcmp(o->inspect_dir, "hidden") && strcmp(o->inspect_dir, "visible"))
		return qv_log("inspect_dir=%s: expected hidden or visible", o->inspect_dir), -EINVAL;
	mo->inspect_visible = o->inspect_dir && !strcmp(o->inspect_dir, "visible");
	mo->gen.allow_empty = o->allow_empty;
	mo->gen.max_file = o->max_file;
	mo->ep_shared = o->ep_shared;
	rc = check_slicing(o, &mo->gen);
	if (!rc && mo->ep_shared && !qv_gen_multi(&mo->gen))
		return qv_log("ep_shared needs ep_size without ep_rank: it is a layout of the rank "
			      "folders"), -EINVAL;
	return rc;
}

/* args with exclude= out of every -o (as "-o X" or "-oX") into o->exclude; the rest unchanged.
 * 0 or -1, logged. */
static int take_excludes(struct fuse_args *args, struct qv_options *o)
{
	struct fuse_args out = FUSE_ARGS_INIT(0, NULL);
	bool opts = true;
	int rc = 0;

	for (int i = 0; i < args->argc && !rc; i++) {
		const char *a = args->argv[i], *g = NULL;
		char *rest = NULL, *pat = NULL;
		bool oom = false;

		if (opts && !strcmp(a, "--"))
			opts = false; /* libfuse takes no options after it either */
		else if (opts && i > 0 && !strcmp(a, "-o") && i + 1 < args->argc)
			g = args->argv[++i];
		else if (opts && i > 0 && !strncmp(a, "-o", 2) && a[2])
			g = a + 2;
		if (!g)
			oom = fuse_opt_add_arg(&out, a);
		else if (!strstr(g, "exclude="))
			oom = fuse_opt_add_arg(&out, "-o") || fuse_opt_add_arg(&out, g);
		else if (!(rc = qv_excl_take(g, &rest, &pat)) && *rest)
			oom = fuse_opt_add_arg(&out, "-o") || fuse_opt_add_arg(&out, rest);
		if (pat) { /* the last exclude= wins, as for every option */
			free(o->exclude);
			o->exclude = pat;
		}
		free(rest);
		if (oom)
			rc = -ENOMEM, qv_log("out of memory parsing options");
	}
	if (rc)
		return fuse_opt_free_args(&out), -1;
	fuse_opt_free_args(args);
	*args = out;
	return 0;
}

int qv_opts_parse(struct fuse_args *args, struct qv_options *o, struct fuse_cmdline_opts *copts)
{
	if (take_excludes(args, o) || fuse_opt_parse(args, o, opt_spec, opt_proc) == -1)
		return -1;
	return fuse_parse_cmdline(args, copts) == 0 ? 0 : -1;
}

/* libfuse's log during qv_opts_known: its errors as usual, not the debug lines a session
 * made with -d prints (the real session prints them once). */
static void errors_only(enum fuse_log_level level, const char *fmt, va_list ap)
{
	if (level <= FUSE_LOG_WARNING)
		vfprintf(stderr, fmt, ap);
}

int qv_opts_known(const struct fuse_args *args)
{
	struct fuse_args copy = FUSE_ARGS_INIT(0, NULL);
	struct fuse_lowlevel_ops none = { 0 };
	struct fuse_session *se = NULL;
	int i;

	for (i = 0; i < args->argc && !fuse_opt_add_arg(&copy, args->argv[i]); i++)
		;
	/* the session's parser is what rejects an unknown option at mount: a session is made
	 * (and nothing opened) only to ask it */
	fuse_set_log_func(errors_only);
	if (i == args->argc)
		se = fuse_session_new(&copy, &none, sizeof(none), NULL);
	fuse_set_log_func(NULL); /* libfuse's default again */
	if (se)
		fuse_session_destroy(se);
	fuse_opt_free_args(&copy);
	return se ? 0 : -1;
}

/* Free the strings qv_opts_parse put in o. */
static void options_free(struct qv_options *o)
{
	free(o->source);
	free(o->view);
	free(o->expert_layout);
	free(o->source_layout);
	free(o->dequant);
	free(o->exclude);
	free(o->io);
	free(o->gpu);
	free(o->log);
	free(o->ep_size);
	free(o->ep_rank);
	free(o->shard_size);
	free(o->shard_rank);
	free(o->inspect_dir);
	memset(o, 0, sizeof(*o));
}

void qv_opts_free(struct qv_cmdline *cl)
{
	free(cl->fuse.mountpoint);
	cl->fuse.mountpoint = NULL;
	options_free(&cl->o);
	fuse_opt_free_args(&cl->args);
}

/* --help: the usages, the qvlmoefs options, then libfuse's. */
static void help(const char *argv0)
{
	printf("usage: %s [options] SOURCE MOUNTPOINT\n"
	       "       %s inspect SOURCE [-o options] [--keys] [--json]\n"
	       "       %s stage SOURCE [-o options] [--device N] [--all] (see stage --help)\n\n",
	       argv0, argv0, argv0);
	printf("Shows a Qwen3-VL-MoE safetensors checkpoint folder with converted key names.\n\n"
	       "qvlmoefs options:\n"
	       "    -o view=native|hf      naming of the view (default: the other one than SOURCE's)\n"
	       "    -o expert_layout=hub|linear  fused experts of an HF view as the Hub's [E, H, 2I]\n"
	       "                           or transformers 5's [E, 2I, H] (default: the source's;\n"
	       "                           the native view is always hub, Automodel's, and\n"
	       "                           there it states the source's)\n"
	       "    -o source_layout=hub|linear  the source's, where its shapes cannot tell\n"
	       "    -o dequant=bf16        an HF view of FP8 block-scaled weights in BF16, scales\n"
	       "                           dropped (the native view always dequantizes)\n"
	       "    -o exclude=REGEX       keys left out of an HF view (default .*_extra_state.*);\n"
	       "                           backslashes are the regex's (\\d), a comma is \\,\n"
	       "    -o io=uring|pread      how sources are read (default uring)\n"
	       "    -o ep_size=W           expert-parallel size; alone: one folder per rank\n"
	       "    -o ep_rank=R           expert-parallel rank shown (0 <= R < W)\n"
	       "    -o ep_shard_size=K     cut expert tensors on dim 1 into K parts\n"
	       "    -o ep_shard_rank=S     the part shown (0 <= S < K)\n"
	       "    -o shard_size=BYTES    files of a consolidated sharded save (default 5 GB)\n"
	       "    -o ep_shared           rank folders share one inode per file of bytes every rank\n"
	       "                           sees: shards split into dense and -experts files\n"
	       "    -o direct_io           bypass the page cache for read() (mmap still works)\n"
	       "    -o nosplice            copy every read through the daemon (default: a read\n"
	       "                           of one run of one source replies with its pages)\n"
	       "    -o inspect_dir=visible list .qvlmoefs/ in folder listings (default hidden:\n"
	       "                           reachable by path only, so du and cp -r skip it)\n"
	       "    -o allow_empty         mount a source that has no *.safetensors file\n"
	       "    -o overmount           mount on a folder that is already a mount point\n"
	       "    -o readahead_kb=N      the mount's readahead when run as root, 0 to %u\n"
	       "                           (default 4096; 0: none)\n"
	       "    -o gpu=N               stage expert tensors on CUDA device N in the background\n"
	       "    -o log=FILE            append the daemon's messages to FILE\n\n"
	       "Logs: stderr until the daemon detaches (all along with -f); detached, FILE of\n"
	       "-o log=, else syslog, else (no /dev/log) stderr when it is a file, else nowhere\n"
	       "(the mount says so). SIGUSR1 writes the counters there; SIGHUP rescans SOURCE.\n"
	       "The fsname mount(8) shows is SOURCE's absolute path unless -o fsname= is given.\n\n",
	       QV_OPTS_MAX_READAHEAD_KB);
	fuse_cmdline_help();
	fuse_lowlevel_help();
}

void qv_opts_faults(const char *spec, struct qv_mount_opts *mo, struct qv_glue_opts *g)
{
	struct qv_io_cfg *io = &mo->io;
	char *copy, *tok, *save = NULL;

	if (!spec || !(copy = strdup(spec)))
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
			mo->gen.scan_pause_ms = (unsigned)strtoul(tok + 14, NULL, 10);
		else if (!strncmp(tok, "open=", 5))
			g->fail_open = atoi(tok + 5);
		else if (!strncmp(tok, "entry=", 6))
			g->fail_entry = atoi(tok + 6);
		else if (!strncmp(tok, "slow_lookup=", 12))
			g->slow_lookup_ms = atoi(tok + 12);
		else if (!strcmp(tok, "skip_compute"))
			mo->skip_compute = true;
	}
	free(copy);
	qv_log("test fault injection on: %s", spec);
}

/* subtype=qvlmoefs, and fsname=source for mount(8) and /proc/mounts (source NULL: none, the
 * user gave one), escaped for libfuse's -o parser; 0 or -1. */
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
	return rc ? -1 : 0;
}

/* Requests a splice reply can carry whole: 1 MiB ones need a 2 MiB pipe, which takes
 * CAP_SYS_RESOURCE (or a raised fs.pipe-max-size); short of that, the kernel's requests are
 * capped (max_read) to what the pipe holds rather than copied. 0 when uncapped. */
static unsigned splice_max_read(void)
{
	size_t max = qv_io_splice_max();

	if (max >= (1u << 20) || max < 2 * 4096)
		return 0; /* room enough, or no splice at all: reads are copied */
	return (unsigned)max;
}

/* What the parsed options mean for the FUSE session and the glue: cl->args read-only, with
 * subtype and fsname (SOURCE's absolute path unless given), default_permissions with
 * allow_other (other users then meet the modes, the sources'), max_read for splice; the glue's options
 * and the readahead. 0 or -1, logged. */
static int session_args(struct qv_cmdline *cl)
{
	const struct qv_options *o = &cl->o;
	struct qv_glue_opts *g = &cl->glue;
	/* absolute, as the mount holds it: the daemon's working folder changes when it detaches */
	char *abs = o->fsname_set ? NULL : realpath(o->source, NULL), cap[64] = "";
	int rc;

	g->direct_io = o->direct_io;
	g->splice = !o->nosplice; /* -o splice: the default, said out loud */
	g->max_read = o->max_read;
	if (g->splice && !g->max_read && (g->max_read = splice_max_read()))
		snprintf(cap, sizeof(cap), "-omax_read=%u", g->max_read);
	rc = fuse_opt_add_arg(&cl->args, "-oro") ||
	     add_fsname(&cl->args, o->fsname_set ? NULL : abs ? abs : o->source) ||
	     (o->allow_other && fuse_opt_add_arg(&cl->args, "-odefault_permissions")) ||
	     (cap[0] && fuse_opt_add_arg(&cl->args, cap));
	free(abs);
	/* a whole number of requests when splice caps their size: 4 of 1008 KiB, not 4 and a
	 * 64 KiB one */
	cl->readahead_kb = o->readahead_set ? o->readahead_kb
			   : g->max_read    ? 4 * (g->max_read / 1024)
					    : 4096;
	return rc ? qv_log("out of memory parsing options"), -1 : 0;
}

/* An empty command line: nothing to free yet, no GPU. */
static void cmdline_init(struct qv_cmdline *cl, int argc, char **argv)
{
	memset(cl, 0, sizeof(*cl));
	cl->args = (struct fuse_args)FUSE_ARGS_INIT(argc, argv);
	cl->gpu = -1;
}

int qv_opts_mount(int argc, char **argv, struct qv_cmdline *cl)
{
	cmdline_init(cl, argc, argv);
	if (qv_opts_parse(&cl->args, &cl->o, &cl->fuse))
		return -1;
	if (cl->fuse.show_help)
		return help(argv[0]), 1;
	if (cl->fuse.show_version)
		return printf("qvlmoefs version %s\nFUSE library version %s\ngpu: %s\n", QV_VERSION,
			      fuse_pkgversion(), qv_gpu_build()),
		       1;
	if (!cl->o.source || !cl->fuse.mountpoint)
		return fprintf(stderr, "usage: %s [options] SOURCE MOUNTPOINT (see --help)\n",
			       argv[0]),
		       -1;
	/* every option checked before the source is scanned, which may take a while */
	if (qv_opts_known(&cl->args) || qv_opts_check(&cl->o, &cl->mount, &cl->gpu))
		return -1;
	qv_opts_faults(getenv("QVLMOEFS_TEST_FAULTS"), &cl->mount, &cl->glue);
	return session_args(cl);
}

int qv_opts_view(const char *source, char *const *optv, int optc, struct qv_cmdline *cl,
		 struct qv_mount *m, int (*checked)(void *arg, const struct qv_mount_opts *mo),
		 void *arg)
{
	char err[QV_ERRLEN];
	bool oom;

	cmdline_init(cl, 0, NULL);
	oom = fuse_opt_add_arg(&cl->args, "qvlmoefs");
	for (int i = 0; i < optc && !oom; i++)
		oom = fuse_opt_add_arg(&cl->args, "-o") || fuse_opt_add_arg(&cl->args, optv[i]);
	if (oom || fuse_opt_add_arg(&cl->args, source))
		return qv_log("out of memory parsing options"), -1;
	/* the mount's parser and checks: an option the mount refuses is refused here too */
	if (qv_opts_parse(&cl->args, &cl->o, &cl->fuse) || qv_opts_known(&cl->args) ||
	    qv_opts_check(&cl->o, &cl->mount, &cl->gpu) || (checked && checked(arg, &cl->mount)))
		return -1;
	if (qv_mount_init(m, cl->o.source, &cl->mount, err, sizeof(err))) {
		qv_log("%s", err);
		qv_mount_fini(m);
		return -1;
	}
	return 0;
}
