/* qv_opts.h - the -o options of qvlmoefs (DESIGN §4), shared by the mount and `stage`. */
#ifndef QV_OPTS_H
#define QV_OPTS_H

#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>
#include <fuse_opt.h>
#include <stdint.h>

#include "qv_io.h"
#include "qv_gen.h"

struct qv_options {
	char *source;
	char *view, *exclude, *io, *gpu, *log;
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

/* Bounds of the numeric options: readahead_kb= (1 GiB), gpu= (a CUDA device number). */
#define QV_OPTS_MAX_READAHEAD_KB 1048576u
#define QV_OPTS_MAX_GPU 1024u

/* The command line of the mount, `inspect` and `stage`, one parser for all three: exclude=
 * taken out of every -o with its backslashes as written (a comma in it is "\,"), the other
 * options into o (the first non-option becomes o->source) and libfuse's flags into copts (the
 * second non-option, copts->mountpoint, which the caller frees); the rest stays in args for
 * the FUSE session. 0 or -1, logged. */
int qv_opts_parse(struct fuse_args *args, struct qv_options *o, struct fuse_cmdline_opts *copts);

/* Whether libfuse's session parser takes every option left in args (checked on a copy): an
 * unknown option fails with libfuse's own message, as the mount would; 0 or -1. */
int qv_opts_known(const struct fuse_args *args);

/* s as a whole number from lo to hi (digits only: no sign, no suffix) into *out; 0 or -EINVAL,
 * logged as "name=s: expected a whole number from lo to hi". */
int qv_opts_number(const char *name, const char *s, uint64_t lo, uint64_t hi, uint64_t *out);

/* Check the parsed options into mo (and *gpu, -1 when none); 0 or -EINVAL, logged. */
int qv_opts_check(const struct qv_options *o, struct qv_mount_opts *mo, int *gpu);

/* Free what qv_opts_parse allocated. */
void qv_opts_free(struct qv_options *o);

/* Print the qvlmoefs options block of --help. */
void qv_opts_help(void);

/* Apply test-only fault injection from QVLMOEFS_TEST_FAULTS to io. */
void qv_opts_faults(struct qv_mount_opts *mo);

#endif
