/* qvnull.c - the ceiling of `make bench`: a null FUSE filesystem with the file names and sizes
 * of a given view whose reads are zeros from one static buffer, with no source I/O at all. It
 * is tuned and run exactly as qvlmoefs (src/fs.c, src/main.c): low-level API, day-long entry
 * and attribute timeouts, keep_cache, max_background 64, congestion threshold 48, readdirplus,
 * splice writes offered, a 4 MiB readahead window, the multi-threaded loop with 16 idle
 * workers kept. A read through it costs only what FUSE itself costs, so qvlmoefs / qvnull is
 * the fraction of the reachable speed qvlmoefs attains.
 *
 *   qvnull MANIFEST MOUNTPOINT [-f] [-o direct_io] [FUSE options]
 *
 * MANIFEST has one line per file, "SIZE PATH" (PATH relative, '/'-separated: folders are made
 * as needed), as `find VIEW -type f -printf '%s %P\n'` prints it. */
#define FUSE_USE_VERSION 312
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "qv_bdi.h"
#include "qv_loop.h"

#include <errno.h>
#include <fuse_lowlevel.h>
#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <signal.h>
#include <time.h>

#define CACHE_TIMEOUT 86400.0
#define ZEROS (1u << 20) /* the largest request libfuse 3.14 lets the kernel send (256 pages) */
#define MAX_IOV 64

/* written once at start, so its pages are real memory like a daemon's read buffer, not the
 * shared zero page */
static char zeros[ZEROS];

struct node {
	char *name;
	uint64_t parent; /* inode number: index + 1 */
	bool dir;
	uint64_t size;
	uint64_t *kids;
	size_t nkids, cap;
};

static struct node *nodes;
static size_t nn, ncap;
static int direct_io;
static struct timespec t0;

static struct node *node_of(fuse_ino_t ino)
{
	return ino >= 1 && ino <= nn ? &nodes[ino - 1] : NULL;
}

static uint64_t add_node(uint64_t parent, const char *name, size_t len, bool dir, uint64_t size)
{
	struct node *p;

	if (nn == ncap) {
		ncap = ncap ? 2 * ncap : 64;
		nodes = realloc(nodes, ncap * sizeof(*nodes));
		if (!nodes)
			abort();
	}
	nodes[nn] = (struct node){ .name = strndup(name, len), .parent = parent, .dir = dir,
				   .size = size };
	nn++;
	p = node_of(parent);
	if (p && parent != nn) {
		if (p->nkids == p->cap) {
			p->cap = p->cap ? 2 * p->cap : 16;
			p->kids = realloc(p->kids, p->cap * sizeof(*p->kids));
			if (!p->kids)
				abort();
		}
		p->kids[p->nkids++] = nn;
	}
	return nn;
}

/* The entry of folder dir named name[0..len), or 0. */
static uint64_t find(uint64_t dir, const char *name, size_t len)
{
	struct node *d = node_of(dir);

	for (size_t i = 0; d && i < d->nkids; i++) {
		struct node *k = node_of(d->kids[i]);

		if (strlen(k->name) == len && !memcmp(k->name, name, len))
			return d->kids[i];
	}
	return 0;
}

static int load(const char *manifest)
{
	FILE *f = fopen(manifest, "r");
	char line[PATH_MAX + 32];
	unsigned long long size;
	int pos;

	if (!f)
		return fprintf(stderr, "qvnull: %s: %s\n", manifest, strerror(errno)), -1;
	add_node(1, "", 0, true, 0); /* the root, its own parent */
	while (fgets(line, sizeof(line), f)) {
		char *path, *slash;
		uint64_t dir = 1;

		line[strcspn(line, "\n")] = '\0';
		if (sscanf(line, "%llu %n", &size, &pos) != 1 || !line[pos]) {
			fprintf(stderr, "qvnull: %s: not a \"SIZE PATH\" line: %s\n", manifest, line);
			fclose(f);
			return -1;
		}
		for (path = line + pos; (slash = strchr(path, '/')); path = slash + 1) {
			uint64_t d = find(dir, path, (size_t)(slash - path));

			dir = d ? d : add_node(dir, path, (size_t)(slash - path), true, 0);
		}
		add_node(dir, path, strlen(path), false, size);
	}
	fclose(f);
	return 0;
}

static void fill_attr(fuse_ino_t ino, struct stat *st)
{
	const struct node *n = node_of(ino);

	memset(st, 0, sizeof(*st));
	st->st_ino = ino;
	st->st_mode = n->dir ? S_IFDIR | 0555 : S_IFREG | 0444;
	st->st_nlink = n->dir ? 2 : 1;
	st->st_size = (off_t)n->size;
	st->st_blksize = 1 << 20;
	st->st_blocks = (blkcnt_t)((n->size + 511) / 512);
	st->st_atim = st->st_mtim = st->st_ctim = t0;
}

static void fill_entry(fuse_ino_t ino, struct fuse_entry_param *e)
{
	memset(e, 0, sizeof(*e));
	e->ino = ino;
	e->generation = 1;
	e->attr_timeout = e->entry_timeout = CACHE_TIMEOUT;
	fill_attr(ino, &e->attr);
}

static void op_init(void *userdata, struct fuse_conn_info *conn)
{
	(void)userdata;
	conn->max_readahead = 1u << 30;
	if (conn->max_background < 64)
		conn->max_background = 64;
	if (conn->congestion_threshold < 48)
		conn->congestion_threshold = 48;
	conn->want &= ~(unsigned)FUSE_CAP_AUTO_INVAL_DATA;
	if (conn->capable & FUSE_CAP_READDIRPLUS)
		conn->want |= FUSE_CAP_READDIRPLUS;
	if (conn->capable & FUSE_CAP_SPLICE_WRITE)
		conn->want |= FUSE_CAP_SPLICE_WRITE;
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fuse_entry_param e;
	uint64_t ino = node_of(parent) ? find(parent, name, strlen(name)) : 0;

	if (!ino) {
		memset(&e, 0, sizeof(e));
		e.entry_timeout = CACHE_TIMEOUT;
	} else {
		fill_entry(ino, &e);
	}
	fuse_reply_entry(req, &e);
}

static void op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
	(void)ino, (void)nlookup;
	fuse_reply_none(req);
}

static void op_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *f)
{
	(void)count, (void)f;
	fuse_reply_none(req);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct stat st;

	(void)fi;
	if (!node_of(ino))
		return (void)fuse_reply_err(req, ENOENT);
	fill_attr(ino, &st);
	fuse_reply_attr(req, &st, CACHE_TIMEOUT);
}

static void op_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	if (!node_of(ino) || !node_of(ino)->dir)
		return (void)fuse_reply_err(req, ENOTDIR);
	fi->cache_readdir = 1;
	fi->keep_cache = 1;
	fuse_reply_open(req, fi);
}

static void do_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, bool plus)
{
	struct node *d = node_of(ino);
	char *buf = malloc(size);
	size_t used = 0;

	if (!buf)
		return (void)fuse_reply_err(req, ENOMEM);
	for (size_t i = (size_t)off; i < d->nkids + 2; i++) {
		uint64_t k = i == 0 ? ino : i == 1 ? d->parent : d->kids[i - 2];
		const char *name = i == 0 ? "." : i == 1 ? ".." : node_of(k)->name;
		struct fuse_entry_param e;
		size_t len;

		fill_entry(k, &e);
		if (plus && i < 2)
			e = (struct fuse_entry_param){ .attr = e.attr };
		len = plus ? fuse_add_direntry_plus(req, buf + used, size - used, name, &e,
						    (off_t)i + 1) :
			     fuse_add_direntry(req, buf + used, size - used, name, &e.attr,
					       (off_t)i + 1);
		if (len > size - used)
			break;
		used += len;
	}
	fuse_reply_buf(req, buf, used);
	free(buf);
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		       struct fuse_file_info *fi)
{
	(void)fi;
	do_readdir(req, ino, size, off, false);
}

static void op_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
			   struct fuse_file_info *fi)
{
	(void)fi;
	do_readdir(req, ino, size, off, true);
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	if (!node_of(ino) || node_of(ino)->dir)
		return (void)fuse_reply_err(req, EISDIR);
	fi->keep_cache = 1;
	fi->direct_io = direct_io;
	fuse_reply_open(req, fi);
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		    struct fuse_file_info *fi)
{
	uint64_t fsize = node_of(ino)->size;
	size_t n = (uint64_t)off >= fsize ? 0 : fsize - (uint64_t)off < size ? fsize - (uint64_t)off : size;

	struct iovec iov[MAX_IOV];
	int k = 0;

	(void)fi;
	/* larger requests (a newer libfuse's max_pages) get the buffer more than once */
	for (; n && k < MAX_IOV; k++) {
		iov[k] = (struct iovec){ zeros, n < ZEROS ? n : ZEROS };
		n -= iov[k].iov_len;
	}
	fuse_reply_iov(req, iov, k);
}

static void op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)ino, (void)fi;
	fuse_reply_err(req, 0);
}

static const struct fuse_lowlevel_ops ops = {
	.init = op_init,
	.lookup = op_lookup,
	.forget = op_forget,
	.forget_multi = op_forget_multi,
	.getattr = op_getattr,
	.open = op_open,
	.read = op_read,
	.release = op_release,
	.opendir = op_opendir,
	.readdir = op_readdir,
	.readdirplus = op_readdirplus,
};

static const struct fuse_opt nopts[] = { FUSE_OPT_KEY("direct_io", 1), FUSE_OPT_END };

static int keep_opt(void *data, const char *arg, int key, struct fuse_args *outargs)
{
	(void)data, (void)arg, (void)outargs;
	if (key == 1) {
		direct_io = 1;
		return 0;
	}
	return 1;
}

int main(int argc, char *argv[])
{
	struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
	struct fuse_cmdline_opts copts = { 0 };
	struct fuse_session *se;
	const char *manifest = NULL;
	int ret = 1;

	clock_gettime(CLOCK_REALTIME, &t0);
	memset(zeros, 0, sizeof(zeros));
	/* the manifest is the first non-option argument; fuse_parse_cmdline takes the next one */
	for (int i = 1; i < args.argc; i++) {
		if (args.argv[i][0] == '-') {
			i += !strcmp(args.argv[i], "-o");
			continue;
		}
		manifest = args.argv[i];
		memmove(&args.argv[i], &args.argv[i + 1], (size_t)(args.argc - i) * sizeof(char *));
		args.argc--;
		break;
	}
	if (!manifest || fuse_opt_parse(&args, NULL, nopts, keep_opt) ||
	    fuse_parse_cmdline(&args, &copts) || !copts.mountpoint) {
		fprintf(stderr, "usage: qvnull MANIFEST MOUNTPOINT [-f] [-o direct_io]\n");
		return 2;
	}
	if (load(manifest) || fuse_opt_add_arg(&args, "-oro,subtype=qvnull,fsname=qvnull"))
		return 1;
	se = fuse_session_new(&args, &ops, sizeof(ops), NULL);
	if (!se || fuse_set_signal_handlers(se) || fuse_session_mount(se, copts.mountpoint))
		return 1;
	qv_bdi_set_readahead(copts.mountpoint, 4096);
	if (fuse_daemonize(copts.foreground))
		goto out;
	ret = qv_loop_run(se, &copts) ? 1 : 0;
out:
	fuse_session_unmount(se);
	fuse_remove_signal_handlers(se);
	fuse_session_destroy(se);
	free(copts.mountpoint);
	fuse_opt_free_args(&args);
	return ret;
}
