/* tree.c - the node table of a view: inode numbers are slots in chunks that never move, folders
 * hold sorted arrays of their entries' inode numbers. Nodes are built in private batches and
 * published whole; an owner's nodes are freed together and leave tombstones that answer as
 * absent until the slot is reused. */
#include "qv_tree.h"
#include "qv_perm.h"

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
	if (!t->chunk)
		return -ENOMEM;
	/* Slot 0 (inode 1) is never handed out: every generation's root answers as inode 1
	 * whatever its slot, so a node in slot 0 would share the root's number once the first
	 * root's slot were reused. */
	t->chunk[0] = calloc(1u << QV_CHUNK_SHIFT, sizeof(struct qv_node));
	if (!t->chunk[0]) {
		free(t->chunk);
		t->chunk = NULL;
		return -ENOMEM;
	}
	atomic_store(&t->nnodes, 1);
	return 0;
}

/* Free what node n owns; the slot keeps only its FUSE generation for the next use. */
static void node_clear(struct qv_node *n)
{
	uint64_t fgen = n->fgen;

	free(n->name);
	free(n->kids);
	qv_vfile_fini(&n->vf);
	free(n->ti);
	memset(n, 0, sizeof(*n));
	n->fgen = fgen;
}

void qv_tree_fini(struct qv_tree *t)
{
	size_t nn = atomic_load(&t->nnodes);

	for (size_t i = 0; i < nn; i++)
		node_clear(slot(t, i));
	for (size_t c = 0; t->chunk && c < QV_MAX_CHUNKS && t->chunk[c]; c++)
		free(t->chunk[c]);
	free(t->chunk);
	memset(t, 0, sizeof(*t));
}

/* The slot of inode ino (1: the current root), whatever its state, or NULL. */
static struct qv_node *slot_of(struct qv_tree *t, uint64_t ino)
{
	if (ino == 1)
		return atomic_load(&t->top);
	if (ino == 0 || ino - 1 >= atomic_load(&t->nnodes))
		return NULL;
	return slot(t, ino - 1);
}

/* acquire pairs with the commit's release: a node seen live is seen complete */
static int state_of(const struct qv_node *n)
{
	return atomic_load_explicit(&n->state, memory_order_acquire);
}

struct qv_node *qv_tree_slot(struct qv_tree *t, uint64_t ino)
{
	struct qv_node *n = slot_of(t, ino);

	return n && (ino == 1 || state_of(n) != QV_NODE_FREE) ? n : NULL;
}

struct qv_node *qv_tree_node(struct qv_tree *t, uint64_t ino)
{
	struct qv_node *n = slot_of(t, ino);

	return n && (ino == 1 || state_of(n) == QV_NODE_LIVE) ? n : NULL;
}

/* A slot for a new node: the oldest freed one, else the next never used; NULL when full. */
static struct qv_node *slot_take(struct qv_tree *t, size_t *idx)
{
	size_t i = atomic_load(&t->nnodes), c = i >> QV_CHUNK_SHIFT;

	if (t->free_head) {
		*idx = t->free_head - 1;
		t->free_head = slot(t, *idx)->link;
		if (!t->free_head)
			t->free_tail = 0;
		return slot(t, *idx);
	}
	if (c >= QV_MAX_CHUNKS)
		return NULL;
	if (!t->chunk[c]) {
		t->chunk[c] = calloc(1u << QV_CHUNK_SHIFT, sizeof(struct qv_node));
		if (!t->chunk[c])
			return NULL;
	}
	*idx = i;
	atomic_store(&t->nnodes, i + 1); /* the slot is still FREE: nobody finds it yet */
	return slot(t, i);
}

/* Put slot idx (cleared) at the end of the free list, so reuse comes as late as possible. */
static void slot_give(struct qv_tree *t, size_t idx)
{
	slot(t, idx)->link = 0;
	if (t->free_tail)
		slot(t, t->free_tail - 1)->link = idx + 1;
	else
		t->free_head = idx + 1;
	t->free_tail = idx + 1;
}

struct qv_node *qv_tree_new(struct qv_tree *t, const char *name, uint64_t parent, bool dir,
			    const struct timespec *mtime)
{
	struct qv_node *n;
	size_t i;

	if (t->fail_in && --t->fail_in == 0)
		return NULL;
	n = slot_take(t, &i);
	if (!n)
		return NULL;
	n->name = strdup(name);
	if (!n->name) {
		slot_give(t, i);
		return NULL;
	}
	n->fgen++;
	n->ino = i + 1;
	n->parent = parent ? parent : n->ino;
	n->dir = dir;
	n->mtime = *mtime;
	n->lazy = -1;
	n->folder = -1;
	n->nlink = 0;
	n->mode = dir ? QV_PERM_BITS : QV_PERM_BITS & 0444;
	n->link = t->pending;
	t->pending = i + 1;
	atomic_store_explicit(&n->state, QV_NODE_PENDING, memory_order_release);
	return n;
}

void qv_tree_commit(struct qv_tree *t)
{
	while (t->pending) {
		struct qv_node *n = slot(t, t->pending - 1);

		t->pending = n->link;
		n->link = 0;
		if (!n->uncounted)
			atomic_fetch_add(&t->bytes, n->vf.size);
		atomic_fetch_add(&t->nlive, 1);
		atomic_store_explicit(&n->state, QV_NODE_LIVE, memory_order_release);
	}
}

void qv_tree_abort(struct qv_tree *t)
{
	while (t->pending) {
		size_t i = t->pending - 1;

		t->pending = slot(t, i)->link;
		node_clear(slot(t, i));
		slot_give(t, i);
	}
}

void qv_tree_free_owned(struct qv_tree *t, const struct qv_gen *owner)
{
	size_t nn = atomic_load(&t->nnodes);

	for (size_t i = 0; i < nn; i++) {
		struct qv_node *n = slot(t, i);

		if (atomic_load(&n->state) != QV_NODE_LIVE || n->gen != owner)
			continue;
		if (!n->uncounted)
			atomic_fetch_sub(&t->bytes, n->vf.size);
		atomic_fetch_sub(&t->nlive, 1);
		node_clear(n); /* state FREE: its inode number now answers as absent */
		slot_give(t, i);
	}
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

/* A new entry starts with its folder's owner and permissions (a file: read bits only), so
 * generated files and folders derive from the folder they are in unless a builder says more. */
struct qv_node *qv_tree_add(struct qv_tree *t, struct qv_node *dir, const char *name, bool isdir,
			    const struct timespec *mtime)
{
	struct qv_node *n = qv_tree_new(t, name, dir->ino, isdir, mtime);

	if (!n || qv_tree_add_kid(dir, n->ino))
		return NULL;
	n->up = dir;
	n->folder = dir->lazy >= 0 ? dir->lazy : dir->folder;
	n->gen = dir->gen;
	n->uncounted = dir->uncounted;
	n->uid = dir->uid;
	n->gid = dir->gid;
	n->mode = isdir ? dir->mode : dir->mode & 0444;
	return n;
}

static int cmp_node_name(const void *a, const void *b, void *tp)
{
	struct qv_tree *t = tp;
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	int c = strcmp(qv_tree_slot(t, x)->name, qv_tree_slot(t, y)->name);

	return c ? c : (x > y) - (x < y); /* equal names: the earlier node first */
}

struct qv_node *qv_tree_sort(struct qv_tree *t, struct qv_node *dir)
{
	if (dir->nkids > 1) /* an empty folder has no array at all */
		qsort_r(dir->kids, dir->nkids, sizeof(*dir->kids), cmp_node_name, t);
	for (size_t i = 1; i < dir->nkids; i++) {
		struct qv_node *n = qv_tree_slot(t, dir->kids[i]);

		if (!strcmp(qv_tree_slot(t, dir->kids[i - 1])->name, n->name))
			return n;
	}
	return NULL;
}

struct qv_node *qv_tree_lookup(struct qv_tree *t, const struct qv_node *dir, const char *name)
{
	size_t lo = 0, hi = dir->nkids;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		struct qv_node *n = qv_tree_slot(t, dir->kids[mid]);
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
		struct qv_node *n = qv_tree_slot(t, dir->kids[i]);

		if (strcmp(n->name, name) == 0)
			return n;
	}
	return NULL;
}

void qv_tree_perm_set(struct qv_node *n, uid_t uid, gid_t gid, mode_t mode)
{
	n->uid = uid;
	n->gid = gid;
	n->mode = mode & QV_PERM_BITS;
}

void qv_tree_perm_and(struct qv_node *n, uid_t uid, gid_t gid, mode_t mode)
{
	n->mode = qv_perm_and(n->uid, n->gid, n->mode, uid, gid, mode);
}

uint64_t qv_tree_bytes(struct qv_tree *t)
{
	return atomic_load(&t->bytes);
}

size_t qv_tree_count(struct qv_tree *t)
{
	return atomic_load(&t->nlive);
}
