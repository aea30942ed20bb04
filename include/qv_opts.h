/* qv_opts.h - the -o options of qvlmoefs (DESIGN §4), shared by the mount and `stage`. */
#ifndef QV_OPTS_H
#define QV_OPTS_H

#define FUSE_USE_VERSION 312
#include <fuse_opt.h>

#include "qv_io.h"
#include "qv_gen.h"

struct qv_options {
	char *source;
	char *view, *exclude, *io, *gpu;
	char *ep_size, *ep_rank, *shard_size, *shard_rank; /* NULL when not given */
	unsigned readahead_kb;
	unsigned long long max_file;
	int direct_io;
	int allow_other;
	char *inspect_dir; /* hidden (default) or visible: .qvlmoefs/ in folder listings */
	int allow_empty;   /* mount a source without *.safetensors files */
	int overmount;	   /* mount on a folder that is already a mount point */
};

/* Parse our -o options out of args (libfuse's parser; the first non-option argument becomes
 * o->source, the rest stay in args); 0 or -1. */
int qv_opts_parse(struct fuse_args *args, struct qv_options *o);

/* Check the parsed options into mo (and *gpu, -1 when none); 0 or -EINVAL, logged. */
int qv_opts_check(const struct qv_options *o, struct qv_mount_opts *mo, int *gpu);

/* Free what qv_opts_parse allocated. */
void qv_opts_free(struct qv_options *o);

/* Print the qvlmoefs options block of --help. */
void qv_opts_help(void);

/* Apply test-only fault injection from QVLMOEFS_TEST_FAULTS to io. */
void qv_opts_faults(struct qv_mount_opts *mo);

#endif
