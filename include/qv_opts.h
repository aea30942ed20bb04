/* qv_opts.h - the command line of qvlmoefs (DESIGN §4), one parser for the mount, `inspect`
 * and `stage`: argv in, each layer's options out (the core's, the FUSE glue's, the FUSE
 * session's arguments). libfuse's option parsers do the parsing, so this module calls libfuse;
 * exclude= is taken out first (qv_excl.h). */
#ifndef QV_OPTS_H
#define QV_OPTS_H

#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>
#include <fuse_opt.h>
#include <stdbool.h>
#include <stdint.h>

#include "qv_gen.h"
#include "qv_mount.h"

/* The -o options as given (strings: checked by qv_opts_check, not when parsed). */
struct qv_options {
	char *source;
	char *view, *exclude, *io, *gpu, *log;
	char *expert_layout, *source_layout; /* hub or linear, NULL when not given */
	char *dequant;			     /* bf16, NULL when not given */
	char *ep_size, *ep_rank, *shard_size, *shard_rank; /* NULL when not given */
	unsigned readahead_kb;	      /* checked when parsed: from 0 to QV_OPTS_MAX_READAHEAD_KB */
	unsigned max_read;	      /* libfuse's max_read=, 0 when not given */
	unsigned long long max_file;  /* shard_size=, checked when parsed; 0 when not given */
	int direct_io;
	int splice, nosplice; /* -o splice (the default) / -o nosplice given */
	int ep_shared;
	int allow_other;
	char *inspect_dir; /* hidden (default) or visible: .qvlmoefs/ in folder listings */
	int allow_empty;   /* mount a source without *.safetensors files */
	int overmount;	   /* mount on a folder that is already a mount point */
	int fsname_set, readahead_set; /* the user gave fsname=, readahead_kb= */
};

/* What the FUSE glue (src/fs.c) is told: how it answers, beside what the core serves. */
struct qv_glue_opts {
	bool direct_io;	   /* -o direct_io: read() bypasses the page cache */
	bool splice;	   /* single-run reads reply with the source's pages (off: -o nosplice) */
	unsigned max_read; /* the session's max_read= (given, or the splice pipe's cap; 0: none),
			    * which FUSE's INIT must repeat */
	/* tests only (QVLMOEFS_TEST_FAULTS open=N,entry=N,slow_lookup=MS): refuse the first N
	 * open and lookup replies, as a kernel that did not take them; wait MS before each
	 * lookup's reply (a rescan then comes while lookups are in flight) */
	int fail_open, fail_entry, slow_lookup_ms;
};

/* A command line worked out for every layer. */
struct qv_cmdline {
	struct qv_options o;	       /* as given: source, log=, overmount, ... */
	struct fuse_cmdline_opts fuse; /* libfuse's: mountpoint, foreground, threads, ... */
	struct fuse_args args;	       /* for the FUSE session: the options libfuse takes */
	struct qv_mount_opts mount;    /* the core's (mount.gen.exclude points into o) */
	struct qv_glue_opts glue;      /* the FUSE glue's */
	int gpu;		       /* -o gpu=N, -1 when none */
	unsigned readahead_kb;	       /* the mount's readahead to set, when run as root */
};

/* Bounds of the numeric options: readahead_kb= (1 GiB), gpu= (a CUDA device number). */
#define QV_OPTS_MAX_READAHEAD_KB 1048576u
#define QV_OPTS_MAX_GPU 1024u

/* The mount's command line (`qvlmoefs [options] SOURCE MOUNTPOINT`) into cl, every option
 * checked before anything is scanned, with cl->args ready for the session (read-only,
 * fsname=SOURCE's absolute path unless given, default_permissions with allow_other, max_read
 * capped to the splice pipe) and test faults from QVLMOEFS_TEST_FAULTS. 0 to mount; 1 when
 * --help or --version was printed (exit 0); -1 on a mistake, logged. qv_opts_free(cl) after,
 * whatever the result. */
int qv_opts_mount(int argc, char **argv, struct qv_cmdline *cl);

/* The view that a mount of source with -o values optv[0..optc) would show, built into m by
 * the mount's parser and checks (what the mount refuses is refused alike, with the same line)
 * for `inspect` and `stage`. checked (may be NULL) runs once the options are checked, before
 * the source is scanned, to refuse early: non-zero stops there. 0 with m built (qv_mount_fini
 * it, then qv_opts_free(cl)); -1, logged, with m already undone (qv_opts_free(cl) still). */
int qv_opts_view(const char *source, char *const *optv, int optc, struct qv_cmdline *cl,
		 struct qv_mount *m, int (*checked)(void *arg, const struct qv_mount_opts *mo),
		 void *arg);

/* Free what qv_opts_mount or qv_opts_view allocated in cl. */
void qv_opts_free(struct qv_cmdline *cl);

/* s as a whole number from lo to hi (digits only: no sign, no suffix) into *out; 0 or -EINVAL,
 * logged as "name=s: expected a whole number from lo to hi". */
int qv_opts_number(const char *name, const char *s, uint64_t lo, uint64_t hi, uint64_t *out);

/* The steps of qv_opts_mount and qv_opts_view, public for the unit tests. */

/* Parse args: exclude= taken out of every -o with its backslashes as written (qv_excl.h), the
 * other options into o (the first non-option becomes o->source) and libfuse's flags into
 * copts (the second non-option, copts->mountpoint, which the caller frees); the rest stays in
 * args for the FUSE session. 0 or -1, logged. */
int qv_opts_parse(struct fuse_args *args, struct qv_options *o, struct fuse_cmdline_opts *copts);

/* Whether libfuse's session parser takes every option left in args (checked on a copy): an
 * unknown option fails with libfuse's own message, as the mount would; 0 or -1. */
int qv_opts_known(const struct fuse_args *args);

/* Check the parsed options into mo (and *gpu, -1 when none); 0 or -EINVAL, logged. */
int qv_opts_check(const struct qv_options *o, struct qv_mount_opts *mo, int *gpu);

/* Test-only fault injection from spec (QVLMOEFS_TEST_FAULTS's value; NULL: none), comma
 * separated: setup=EPERM (the ring refused, as a sandbox would), chunk=N (every read clamped
 * to N bytes), eagain=N (every Nth completion -EAGAIN), submit_fail=N (each reader's Nth
 * submission fails with reads in flight) and scan_pause_ms=N (a pause after each scan, so a
 * file can be swapped before it is opened) into mo; open=N, entry=N (the first N such replies
 * refused) and slow_lookup=MS (each lookup's reply that late) into g.
 * Tests drive the recovery paths through a real mount with it. Logged when on. */
void qv_opts_faults(const char *spec, struct qv_mount_opts *mo, struct qv_glue_opts *g);

#endif
