/* inspect_cli.c - `qvlmoefs inspect`: the view a mount would show, without mounting. It builds
 * the same mount context (the same planning code, the same errors) and prints its tree, and
 * with --keys how every source key maps to a view key, dtype, shapes and byte ranges. */
#include "qv_inspect_cli.h"
#include "qv_inspect.h"
#include "qv_mount.h"
#include "qv_opts.h"
#include "qv_plan.h"
#include "qv_util.h"
#include "qv_vcomp.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct inspect_args {
	const char *source;
	char **optv; /* the values of -o, in order (room for argc) */
	int optc;
	bool keys, json;
};

/* Where a view key came from: the source key and shape, for --keys. */
struct origin {
	const char *view, *src;
	const uint64_t *shape;
	uint32_t ndim;
};

static int cmp_origin(const void *a, const void *b)
{
	return strcmp(((const struct origin *)a)->view, ((const struct origin *)b)->view);
}

/* Every source tensor's view key under plan p (sharded saves: the consolidated tensors). */
static struct origin *origins(struct qv_gen *g, const struct qv_plan *p, size_t *n)
{
	struct origin *o = NULL;
	size_t cap = 0;

	*n = 0;
	for (size_t i = 0; i <= g->scan.nn; i++) {
		bool dcp = i == g->scan.nn;
		size_t nt = dcp ? (g->sharded ? g->dcp.nt : 0) : g->st_of[i] ? g->st_of[i]->nt : 0;

		for (size_t k = 0; k < nt; k++) {
			const char *name = dcp ? g->dcp.t[k].name : g->st_of[i]->t[k].name;
			struct qv_tensor dt;
			struct qv_vcsrc vs;
			char *key;
			bool expert;

			if (dcp) {
				dt = (struct qv_tensor){ .name = g->dcp.t[k].name,
							 .dtype = g->dcp.t[k].dtype,
							 .ndim = g->dcp.t[k].ndim };
				memcpy(dt.shape, g->dcp.t[k].shape, sizeof(dt.shape));
			}
			/* a computed tensor is named by the source tensor it stands in for (a stack:
			 * expert 0's weight); those inside another's computation have no key */
			if (qv_vcomp_key(g, p, dcp ? 0 : (uint32_t)i, dcp ? &dt : &g->st_of[i]->t[k],
					 &vs, &key, &expert) != 1)
				continue;
			if (*n == cap) {
				struct origin *x = realloc(o, (cap = cap * 2 + 64) * sizeof(*o));

				if (!x)
					return free(key), o;
				o = x;
			}
			o[(*n)++] = (struct origin){ key, name,
						     dcp ? g->dcp.t[k].shape : g->st_of[i]->t[k].shape,
						     dcp ? g->dcp.t[k].ndim : g->st_of[i]->t[k].ndim };
		}
	}
	if (o)
		qsort(o, *n, sizeof(*o), cmp_origin);
	return o;
}

static void print_shape(FILE *f, const uint64_t *s, uint32_t n)
{
	fputc('[', f);
	for (uint32_t d = 0; d < n; d++)
		fprintf(f, d ? ",%llu" : "%llu", (unsigned long long)s[d]);
	fputc(']', f);
}

static void json_str(FILE *f, const char *s)
{
	struct qv_buf b = { 0 };

	if (!qv_buf_json_str(&b, s, strlen(s)))
		fputs(b.p, f);
	qv_buf_free(&b);
}

/* The files below dir: path, size, and tensors for safetensors files. */
static void print_tree(struct qv_mount *m, struct qv_node *dir, const char *prefix, bool json,
		       bool *first)
{
	if (qv_mount_ready(m, dir))
		return;
	for (size_t i = 0; i < dir->nkids; i++) {
		struct qv_node *n = qv_tree_node(&m->tree, dir->kids[i]);
		char *rel = prefix[0] ? qv_path_join(prefix, n->name) : strdup(n->name);
		struct qv_node *h;
		size_t nt = 0;

		if (!rel || !strcmp(n->name, QV_HIDDEN)) {
			free(rel);
			continue;
		}
		if (n->dir) {
			print_tree(m, n, rel, json, first);
			free(rel);
			continue;
		}
		h = qv_ends_with(n->name, ".safetensors") ? qv_tree_lookup(&m->tree, dir, QV_HIDDEN) : NULL;
		if (h && qv_mount_ready(m, h))
			h = NULL;
		/* tensors of this file: count the hidden folder's tensor files that name it */
		if (h && (h = qv_tree_lookup(&m->tree, h, "tensors")))
			for (size_t k = 0; k < h->nkids; k++)
				nt += !strcmp(qv_tree_node(&m->tree, h->kids[k])->ti->file, n->name);
		if (json) {
			fputs(*first ? "\n    {\"path\": " : ",\n    {\"path\": ", stdout);
			json_str(stdout, rel);
			printf(", \"size\": %llu, \"tensors\": %zu}", (unsigned long long)n->vf.size, nt);
		} else {
			printf("%14llu  %6zu  %s\n", (unsigned long long)n->vf.size, nt, rel);
		}
		*first = false;
		free(rel);
	}
}

/* --keys for the view rooted at dir (plan p). */
static void print_keys(struct qv_mount *m, struct qv_gen *g, const struct qv_plan *p,
		       struct qv_node *dir, const char *prefix, bool json, bool *first)
{
	struct qv_node *h = qv_tree_lookup(&m->tree, dir, QV_HIDDEN);
	struct qv_node *tens = h && !qv_mount_ready(m, h) ? qv_tree_lookup(&m->tree, h, "tensors") : NULL;
	size_t no;
	struct origin *o = origins(g, p, &no);

	for (size_t i = 0; tens && i < tens->nkids; i++) {
		struct qv_node *t = qv_tree_node(&m->tree, tens->kids[i]);
		struct origin key = { .view = t->name }, *src = bsearch(&key, o, no, sizeof(*o), cmp_origin);
		struct qv_buf ext = { 0 };

		qv_inspect_xattr(t, "user.qvlmoefs.extents", &ext);
		if (json) {
			fputs(*first ? "\n    {\"view_key\": " : ",\n    {\"view_key\": ", stdout);
			json_str(stdout, t->name);
			fputs(", \"source_key\": ", stdout);
			json_str(stdout, src ? src->src : "");
			printf(", \"folder\": \"%s\", \"file\": ", prefix);
			json_str(stdout, t->ti->file);
			printf(", \"dtype\": \"%s\", \"source_shape\": ", t->ti->dtype);
			if (src)
				print_shape(stdout, src->shape, src->ndim);
			else
				fputs("null", stdout);
			printf(", \"view_shape\": %s, \"bytes\": %llu, \"extents\": ", t->ti->shape,
			       (unsigned long long)t->vf.size);
			json_str(stdout, ext.p ? ext.p : "");
			fputc('}', stdout);
		} else {
			printf("%s -> %s%s%s  %s ", src ? src->src : "?", prefix, prefix[0] ? "/" : "",
			       t->name, t->ti->dtype);
			if (src)
				print_shape(stdout, src->shape, src->ndim);
			printf(" -> %s  %s  %llu bytes\n", t->ti->shape, t->ti->file,
			       (unsigned long long)t->vf.size);
			for (char *l = ext.p, *e; l && *l; l = e + 1) {
				e = strchr(l, '\n');
				printf("    %.*s\n", (int)(e ? e - l : (long)strlen(l)), l);
				if (!e)
					break;
			}
		}
		*first = false;
		qv_buf_free(&ext);
	}
	for (size_t i = 0; i < no; i++)
		free((char *)o[i].view);
	free(o);
}

/* argv into a; 0, 1 when --help was printed, or -EINVAL (logged). */
static int parse(int argc, char **argv, struct inspect_args *a)
{
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
			printf("usage: qvlmoefs inspect SOURCE [-o OPTIONS] [--keys] [--json]\n\n"
			       "Prints the view a mount of SOURCE with OPTIONS would show, without\n"
			       "mounting: each file with its size and tensor count; with --keys the\n"
			       "mapping of every key (source key -> view key, dtype, source shape ->\n"
			       "view shape, source byte ranges); --json for scripts. Fails with the\n"
			       "same one-line errors as the mount.\n");
			return 1;
		}
		if (!strcmp(argv[i], "--keys"))
			a->keys = true;
		else if (!strcmp(argv[i], "--json"))
			a->json = true;
		else if (!strcmp(argv[i], "-o") && i + 1 < argc)
			a->optv[a->optc++] = argv[++i];
		else if (argv[i][0] != '-' && !a->source)
			a->source = argv[i];
		else
			return qv_log("inspect: unexpected argument %s", argv[i]), -EINVAL;
	}
	if (!a->source)
		return qv_log("inspect: no SOURCE (see qvlmoefs inspect --help)"), -EINVAL;
	return 0;
}

/* The view roots: the root, or each rank folder. */
static void report(struct qv_mount *m, const struct inspect_args *a)
{
	struct qv_node *top = qv_tree_node(&m->tree, 1);
	bool multi = qv_gen_multi(&m->o.gen), first = true;

	printf(a->json ? "{\n  \"files\": [" : "%14s  %6s  %s\n", "bytes", "tensors", "file");
	print_tree(m, top, "", a->json, &first);
	if (a->keys) {
		first = true;
		printf(a->json ? "\n  ],\n  \"keys\": [" : "\n");
		for (size_t i = 0; i < top->nkids; i++) {
			struct qv_node *d = qv_tree_node(&m->tree, top->kids[i]);

			if (multi && d->dir && d->lazy >= 0 && !qv_mount_ready(m, d))
				print_keys(m, d->gen, &d->gen->plans[d->lazy], d, d->name, a->json,
					   &first);
		}
		if (!multi)
			print_keys(m, m->gen, &m->gen->plans[0], top, "", a->json, &first);
	}
	printf(a->json ? "\n  ]\n}\n" : "");
}

int qv_inspect_main(int argc, char **argv)
{
	struct inspect_args a = { .optv = calloc((size_t)argc, sizeof(char *)) };
	struct qv_cmdline cl;
	static struct qv_mount m;
	int rc = a.optv ? parse(argc, argv, &a) : -ENOMEM;

	if (rc) {
		free(a.optv);
		return rc == 1 ? 0 : 1;
	}
	/* built as a mount with these options would build it: the same checks and errors */
	rc = qv_opts_view(a.source, a.optv, a.optc, &cl, &m, NULL, NULL);
	if (!rc) {
		report(&m, &a);
		qv_mount_fini(&m);
	}
	qv_opts_free(&cl);
	free(a.optv);
	return rc ? 1 : 0;
}
