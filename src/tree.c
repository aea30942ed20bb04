/* tree.c - the node table of a view: inode numbers are slots in chunks that never move, folders
 * hold sorted arrays of their entries' inode numbers. */
#include "qv_tree.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define SLOT_MASK ((1u << QV_CHUNK_SHIFT) - 1)

static struct qv_node *slot(struct qv_tree *t, size_t i)
{
	return &t->chunk[i >> QV_CHUNK_SHIFT][i & SLOT_MASK];
}

int qv_tree_init(struct qv_tree *t)
{
	memset(t, 0, sizeof(*t));
	t->chunk = calloc(QV_MAX_CHUNKS, sizeof(*t->chunk));
	return t->chunk ? 0 : -ENOMEM;
}

void qv_tree_fini(struct qv_tree *t)
{
	size_t nn = atomic_load(&t->nnodes);

	for (size_t i = 0; i < nn; i++) {
		struct qv_node *n = slot(t, i);

		free(n->name);
		free(n->kids);
		qv_vfile_fini(&n->vf);
		free(n->ti);
	}
	for (size_t c = 0; t->chunk && c < QV_MAX_CHUNKS && t->chunk[c]; c++)
		free(t->chunk[c]);
	free(t->chunk);
	memset(t, 0, sizeof(*t));
}

struct qv_node *qv_tree_node(struct qv_tree *t, uint64_t ino)
{
	if (ino == 1)
		return atomic_load(&t->top);
	if (ino == 0 || ino - 1 >= atomic_load(&t->nnodes))
		return NULL;
	return slot(t, ino - 1);
}

struct qv_node *qv_tree_new(struct qv_tree *t, const char *name, uint64_t parent, bool dir,
			    const struct timespec *mtime)
{
	size_t i = atomic_load(&t->nnodes), c = i >> QV_CHUNK_SHIFT;
	struct qv_node *n;

	if (c >= QV_MAX_CHUNKS)
		return NULL;
	if (!t->chunk[c]) {
		t->chunk[c] = calloc(1u << QV_CHUNK_SHIFT, sizeof(struct qv_node));
		if (!t->chunk[c])
			return NULL;
	}
	n = slot(t, i);
	n->name = strdup(name);
	if (!n->name)
		return NULL;
	n->ino = i + 1;
	n->parent = parent ? parent : n->ino;
	n->dir = dir;
	n->mtime = *mtime;
	n->lazy = -1;
	atomic_store(&t->nnodes, i + 1); /* publish only once filled in */
	return n;
}

int qv_tree_add_kid(struct qv_node *dir, uint64_t ino)
{
	uint64_t *k = realloc(dir->kids, (dir->nkids + 1) * sizeof(*k));

	if (!k)
		return -ENOMEM;
	dir->kids = k;
	k[dir->nkids++] = ino;
	return 0;
}

struct qv_node *qv_tree_add(struct qv_tree *t, struct qv_node *dir, const char *name, bool isdir,
			    const struct timespec *mtime)
{
	struct qv_node *n = qv_tree_new(t, name, dir->ino, isdir, mtime);

	return n && qv_tree_add_kid(dir, n->ino) == 0 ? n : NULL;
}

static int cmp_node_name(const void *a, const void *b, void *tp)
{
	struct qv_tree *t = tp;
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	int c = strcmp(qv_tree_node(t, x)->name, qv_tree_node(t, y)->name);

	return c ? c : (x > y) - (x < y); /* equal names: the earlier node first */
}

void qv_tree_sort(struct qv_tree *t, struct qv_node *dir)
{
	if (dir->nkids > 1) /* an empty folder has no array at all */
		qsort_r(dir->kids, dir->nkids, sizeof(*dir->kids), cmp_node_name, t);
}

struct qv_node *qv_tree_lookup(struct qv_tree *t, const struct qv_node *dir, const char *name)
{
	size_t lo = 0, hi = dir->nkids;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		struct qv_node *n = qv_tree_node(t, dir->kids[mid]);
		int c = strcmp(name, n->name);

		if (c == 0)
			return n;
		if (c < 0)
			hi = mid;
		else
			lo = mid + 1;
	}
	return NULL;
}

struct qv_node *qv_tree_lookup_unsorted(struct qv_tree *t, const struct qv_node *dir,
					const char *name)
{
	for (size_t i = 0; i < dir->nkids; i++) {
		struct qv_node *n = qv_tree_node(t, dir->kids[i]);

		if (strcmp(n->name, name) == 0)
			return n;
	}
	return NULL;
}

uint64_t qv_tree_bytes(struct qv_tree *t)
{
	size_t nn = atomic_load(&t->nnodes);
	uint64_t sum = 0;

	for (size_t i = 0; i < nn; i++)
		sum += slot(t, i)->vf.size;
	return sum;
}
