/* test_tree.c - the node table: batches published whole or freed whole, totals kept as nodes
 * are published, an owner's nodes freed into tombstones and their slots reused with a new FUSE
 * generation, unique names, the permission rule; and through the mount context: generations
 * freed after rescans and released files, failed lazy fills that leave nothing behind. */
#include "unit.h"
#include "view_fixture.h"

#include "qv_inspect.h"
#include "qv_tree.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static const struct timespec T0;

/* An owner; the tree only compares the pointers. */
static struct qv_gen *const OWNER_A = (struct qv_gen *)0x1000;

/* Another one. */
static struct qv_gen *const OWNER_B = (struct qv_gen *)0x2000;

/* A root (owner) with files a (3 bytes) and b (5 bytes), published. */
static struct qv_node *small_tree(struct qv_tree *t, struct qv_gen *owner)
{
	struct qv_node *top = qv_tree_new(t, "", 0, true, &T0), *a, *b;

	if (!top)
		return NULL;
	top->gen = owner;
	a = qv_tree_add(t, top, "a", false, &T0);
	b = qv_tree_add(t, top, "b", false, &T0);
	if (!a || !b)
		return NULL;
	a->vf.size = 3;
	b->vf.size = 5;
	qv_tree_sort(t, top);
	qv_tree_commit(t);
	return top;
}

TEST(tree_batch_published_only_at_commit)
{
	struct qv_tree t;
	struct qv_node *top, *a;

	if (!CHECK_EQ_INT(qv_tree_init(&t), 0))
		return;
	top = qv_tree_new(&t, "", 0, true, &T0);
	a = top ? qv_tree_add(&t, top, "a", false, &T0) : NULL;
	if (!CHECK(top && a))
		goto out;
	a->vf.size = 7;
	/* being built: the builder finds it, readers (by inode number) and the totals do not */
	CHECK(qv_tree_slot(&t, a->ino) == a);
	CHECK(qv_tree_node(&t, a->ino) == NULL);
	CHECK_EQ_U64(qv_tree_bytes(&t), 0);
	CHECK_EQ_U64(qv_tree_count(&t), 0);
	qv_tree_commit(&t);
	CHECK(qv_tree_node(&t, a->ino) == a);
	CHECK_EQ_U64(qv_tree_bytes(&t), 7);
	CHECK_EQ_U64(qv_tree_count(&t), 2);
	CHECK(a->gen == top->gen && a->up == top);
out:
	qv_tree_fini(&t);
}

TEST(tree_uncounted_folder_keeps_its_files_out_of_the_totals)
{
	struct qv_tree t;
	struct qv_node *top, *h, *sub, *f, *g;

	if (!CHECK_EQ_INT(qv_tree_init(&t), 0) || !CHECK(top = small_tree(&t, OWNER_A)))
		goto out;
	/* an inspection folder: its files repeat the view's bytes, and so do its subfolders' */
	h = qv_tree_add(&t, top, ".h", true, &T0);
	if (!CHECK(h))
		goto out;
	h->uncounted = true;
	sub = qv_tree_add(&t, h, "tensors", true, &T0);
	f = sub ? qv_tree_add(&t, sub, "x", false, &T0) : NULL;
	g = qv_tree_add(&t, h, "stats", false, &T0);
	if (!CHECK(sub && f && g))
		goto out;
	CHECK(sub->uncounted && f->uncounted && g->uncounted && !top->uncounted);
	f->vf.size = 1000;
	g->vf.size = 10;
	qv_tree_commit(&t);
	CHECK_EQ_U64(qv_tree_bytes(&t), 8); /* small_tree's 3 + 5 only */
	CHECK_EQ_U64(qv_tree_count(&t), 7);
	/* freeing takes back only what was counted: no wrap below zero */
	qv_tree_free_owned(&t, OWNER_A);
	CHECK_EQ_U64(qv_tree_bytes(&t), 0);
	CHECK_EQ_U64(qv_tree_count(&t), 0);
out:
	qv_tree_fini(&t);
}

TEST(tree_abort_frees_the_batch)
{
	struct qv_tree t;
	struct qv_node *top, *c;
	uint64_t ino, fgen;

	if (!CHECK_EQ_INT(qv_tree_init(&t), 0) || !CHECK(top = small_tree(&t, OWNER_A)))
		goto out;
	c = qv_tree_add(&t, top, "c", false, &T0);
	if (!CHECK(c))
		goto out;
	c->vf.size = 100;
	ino = c->ino;
	fgen = c->fgen;
	qv_tree_abort(&t);
	top->nkids--; /* the caller drops the entry it added to a published folder */
	CHECK(qv_tree_slot(&t, ino) == NULL);
	CHECK_EQ_U64(qv_tree_bytes(&t), 8);
	CHECK_EQ_U64(qv_tree_count(&t), 3);
	/* the slot comes back with a new FUSE generation: (ino, fgen) never names two nodes */
	c = qv_tree_add(&t, top, "d", false, &T0);
	if (CHECK(c)) {
		CHECK_EQ_U64(c->ino, ino);
		CHECK(c->fgen > fgen);
	}
	qv_tree_commit(&t);
out:
	qv_tree_fini(&t);
}

TEST(tree_free_owned_leaves_tombstones_then_reuses)
{
	struct qv_tree t;
	struct qv_node *ta, *tb, *n;
	uint64_t a_ino, b_ino;

	if (!CHECK_EQ_INT(qv_tree_init(&t), 0))
		return;
	ta = small_tree(&t, OWNER_A);
	a_ino = ta ? qv_tree_lookup(&t, ta, "a")->ino : 0;
	tb = small_tree(&t, OWNER_B);
	b_ino = tb ? qv_tree_lookup(&t, tb, "a")->ino : 0;
	if (!CHECK(ta && tb))
		goto out;
	CHECK_EQ_U64(qv_tree_count(&t), 6);
	CHECK_EQ_U64(qv_tree_bytes(&t), 16);
	qv_tree_free_owned(&t, OWNER_A);
	/* a freed node's inode number answers as absent, never as memory of something else */
	CHECK(qv_tree_node(&t, a_ino) == NULL);
	CHECK(qv_tree_node(&t, b_ino) != NULL);
	CHECK_EQ_U64(qv_tree_count(&t), 3);
	CHECK_EQ_U64(qv_tree_bytes(&t), 8);
	/* new nodes take freed slots (oldest first) before growing the table */
	n = qv_tree_new(&t, "x", 0, false, &T0);
	CHECK(n && n->ino <= 3);
	CHECK(n && n->fgen == 2);
	CHECK_EQ_U64(atomic_load(&t.nnodes), 7); /* six nodes and slot 0, which is never used */
	qv_tree_commit(&t);
out:
	qv_tree_fini(&t);
}

/* A root answers as inode 1 whatever its slot: once the first generation is freed, no node
 * built later may take inode 1 too (the kernel would take it for the root). */
TEST(tree_no_node_takes_the_roots_inode_after_a_rescan)
{
	struct qv_tree t;
	struct qv_node *ta, *tb, *n;
	bool clash = false;

	if (!CHECK_EQ_INT(qv_tree_init(&t), 0))
		return;
	ta = small_tree(&t, OWNER_A);
	if (!CHECK(ta))
		goto out;
	atomic_store(&t.top, ta);
	tb = small_tree(&t, OWNER_B); /* a rescan: the new root replaces the old */
	if (!CHECK(tb))
		goto out;
	atomic_store(&t.top, tb);
	qv_tree_free_owned(&t, OWNER_A);
	for (int i = 0; i < 8; i++) { /* more than the freed slots: each one is reused */
		n = qv_tree_add(&t, tb, "late", false, &T0);
		if (!CHECK(n))
			break;
		clash |= n->ino == 1;
	}
	qv_tree_commit(&t);
	CHECK(!clash);
	CHECK(qv_tree_node(&t, 1) == tb);
out:
	qv_tree_fini(&t);
}

TEST(tree_sort_names_a_duplicate)
{
	struct qv_tree t;
	struct qv_node *top, *dup;

	if (!CHECK_EQ_INT(qv_tree_init(&t), 0) || !CHECK(top = small_tree(&t, OWNER_A)))
		goto out;
	CHECK(qv_tree_sort(&t, top) == NULL);
	dup = qv_tree_add(&t, top, "a", false, &T0);
	if (CHECK(dup)) {
		CHECK(qv_tree_sort(&t, top) == dup); /* the later of the two */
		qv_tree_commit(&t);
	}
out:
	qv_tree_fini(&t);
}

TEST(tree_fault_injection_fails_the_nth_node)
{
	struct qv_tree t;
	struct qv_node *top;

	if (!CHECK_EQ_INT(qv_tree_init(&t), 0) || !CHECK(top = small_tree(&t, OWNER_A)))
		goto out;
	t.fail_in = 2;
	CHECK(qv_tree_add(&t, top, "c", false, &T0) != NULL);
	CHECK(qv_tree_add(&t, top, "d", false, &T0) == NULL);
	CHECK(qv_tree_add(&t, top, "e", false, &T0) != NULL);
	qv_tree_abort(&t);
	top->nkids = 2;
out:
	qv_tree_fini(&t);
}

/* The permissions of a node made with (u1, g1, m1) narrowed by a source (u2, g2, m2). */
static mode_t combine(uid_t u1, gid_t g1, mode_t m1, uid_t u2, gid_t g2, mode_t m2, uid_t *uid,
		      gid_t *gid)
{
	struct qv_node n = { 0 };

	qv_tree_perm_set(&n, u1, g1, m1);
	qv_tree_perm_and(&n, u2, g2, m2);
	*uid = n.uid;
	*gid = n.gid;
	return n.mode;
}

TEST(tree_permission_rule)
{
	struct qv_node n = { 0 };
	uid_t u;
	gid_t g;

	/* write, set-id and sticky bits never show */
	qv_tree_perm_set(&n, 5, 6, 07777);
	CHECK_EQ_INT(n.mode, 0555);
	/* one owner, one group: a plain AND */
	CHECK_EQ_INT(combine(5, 6, 0644, 5, 6, 0640, &u, &g), 0440);
	CHECK(u == 5 && g == 6);
	CHECK_EQ_INT(combine(5, 6, 0755, 5, 6, 0600, &u, &g), 0400);
	/* other owner, same group: the owner of n may be anyone to the source (group or others);
	 * n's group may be the source's owner or in its group */
	CHECK_EQ_INT(combine(5, 6, 0644, 7, 6, 0640, &u, &g), 0040);
	CHECK(u == 5 && g == 6);
	CHECK_EQ_INT(combine(5, 6, 0644, 7, 6, 0644, &u, &g), 0444);
	/* same owner, other group: n's group and others may or may not be in the source's group */
	CHECK_EQ_INT(combine(5, 6, 0644, 5, 8, 0640, &u, &g), 0400);
	CHECK_EQ_INT(combine(5, 6, 0644, 5, 8, 0604, &u, &g), 0400);
	CHECK_EQ_INT(combine(5, 6, 0644, 5, 8, 0644, &u, &g), 0444);
	/* nobody but the source's owner may read it: nobody of n may */
	CHECK_EQ_INT(combine(5, 6, 0644, 7, 8, 0600, &u, &g), 0000);
	/* a world-readable source never narrows */
	CHECK_EQ_INT(combine(5, 6, 0555, 7, 8, 0555, &u, &g), 0555);
}

/* ---------------------------------------------------------------- through the mount */

static size_t open_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	size_t n = 0;

	while (d && readdir(d))
		n++;
	if (d)
		closedir(d);
	return n;
}

TEST(tree_rescans_free_replaced_generations)
{
	struct qv_mount_opts o = { 0 };
	struct vt v;
	size_t fds, slots;

	if (!CHECK_MSG(vt_mount(&v, vt_make_ckpt(), &o) == 0, "%s", v.err))
		goto out;
	CHECK(qv_mount_rescan(&v.m, v.err, sizeof(v.err)) == 0);
	fds = open_fds();
	slots = atomic_load(&v.m.tree.nnodes);
	for (int i = 0; i < 200; i++)
		if (!CHECK_MSG(qv_mount_rescan(&v.m, v.err, sizeof(v.err)) == 0, "%s", v.err))
			break;
	/* nothing held the old ones: each was freed as the next replaced it */
	CHECK_EQ_U64(atomic_load(&v.m.ngens), 1);
	CHECK_EQ_U64(open_fds(), fds);
	CHECK_EQ_U64(atomic_load(&v.m.tree.nnodes), slots);
out:
	vt_fini(&v);
}

TEST(tree_open_file_keeps_its_generation)
{
	struct qv_mount_opts o = { 0 };
	struct vt v;
	struct qv_node *n;
	uint64_t ino;
	char *before = NULL, *after = NULL;
	size_t lb, la;

	if (!CHECK_MSG(vt_mount(&v, vt_make_ckpt(), &o) == 0, "%s", v.err))
		goto out;
	n = qv_mount_get(&v.m, qv_tree_lookup(&v.m.tree, qv_tree_node(&v.m.tree, 1), F2)->ino);
	if (!CHECK(n) || !CHECK_EQ_INT(qv_mount_open_file(&v.m, n), 0))
		goto out;
	ino = n->ino;
	before = vt_read_all(&v, n, &lb);
	CHECK(qv_mount_rescan(&v.m, v.err, sizeof(v.err)) == 0);
	CHECK_EQ_U64(atomic_load(&v.m.ngens), 2);
	after = vt_read_all(&v, n, &la); /* the open file still reads its generation */
	CHECK(before && after && la == lb && !memcmp(before, after, la));
	qv_mount_release_file(&v.m, n);
	CHECK_EQ_U64(atomic_load(&v.m.ngens), 2); /* the request's own hold is still there */
	qv_mount_drop(&v.m, n, 1);
	CHECK_EQ_U64(atomic_load(&v.m.ngens), 1);
	CHECK(qv_tree_node(&v.m.tree, ino) == NULL || qv_tree_node(&v.m.tree, ino)->gen == v.m.gen);
out:
	free(before);
	free(after);
	vt_fini(&v);
}

/* The .qvlmoefs/ folder of the view root, not yet filled. */
static struct qv_node *hidden(struct vt *v)
{
	return qv_tree_lookup(&v->m.tree, qv_tree_node(&v->m.tree, 1), QV_HIDDEN);
}

TEST(tree_failed_inspection_fill_retries_from_scratch)
{
	struct qv_mount_opts o = { 0 };
	struct ut_capture cap;
	struct vt v;
	struct qv_node *h, *vj;
	size_t count, len, fails = 0;
	char *text;
	cJSON *j;

	if (!CHECK_MSG(vt_mount(&v, vt_make_ckpt(), &o) == 0, "%s", v.err))
		goto out;
	h = hidden(&v);
	count = qv_tree_count(&v.m.tree);
	if (!CHECK(h))
		goto out;
	/* fail the fill at every node it makes, one try each, then let it succeed */
	ut_stderr_begin(&cap);
	for (size_t k = 1; k < 64; k++) {
		v.m.tree.fail_in = k;
		if (qv_mount_ready(&v.m, h) == 0)
			break;
		fails++;
		CHECK_EQ_U64(h->nkids, 0);
		CHECK_EQ_U64(qv_tree_count(&v.m.tree), count);
	}
	free(ut_stderr_end(&cap));
	v.m.tree.fail_in = 0;
	CHECK(fails >= 3);
	CHECK_EQ_INT(qv_mount_ready(&v.m, h), 0);
	vj = qv_tree_lookup(&v.m.tree, h, "view.json");
	text = vj ? vt_read_all(&v, vj, &len) : NULL;
	/* one copy of the file, read from memory that is still its own */
	j = text ? cJSON_ParseWithLength(text, len) : NULL;
	CHECK_MSG(j != NULL, "view.json after retries is not one JSON document: %.*s", (int)len,
		  text ? text : "");
	CHECK(vj && vj->vf.nseg == 1);
	cJSON_Delete(j);
	free(text);
	CHECK(vt_get(&v, ".qvlmoefs/tensors/lm_head.weight") != NULL);
out:
	vt_fini(&v);
}

TEST(tree_failed_rank_folder_build_retries_from_scratch)
{
	struct qv_mount_opts o = { .gen.ep_size = 2 };
	struct ut_capture cap;
	struct vt v, ref;
	struct qv_node *r1, *f, *g;
	char *a = NULL, *b = NULL;
	size_t count, la = 0, lb = 1;

	if (!CHECK_MSG(vt_mount(&ref, vt_make_ckpt(), &o) == 0, "%s", ref.err))
		goto out_ref;
	if (!CHECK_MSG(vt_mount(&v, vt_make_ckpt(), &o) == 0, "%s", v.err))
		goto out;
	r1 = qv_tree_lookup(&v.m.tree, qv_tree_node(&v.m.tree, 1), "ep-rank-1");
	count = qv_tree_count(&v.m.tree);
	if (!CHECK(r1))
		goto out;
	v.m.tree.fail_in = 4;
	ut_stderr_begin(&cap);
	CHECK_EQ_INT(qv_mount_ready(&v.m, r1), -EIO);
	free(ut_stderr_end(&cap));
	CHECK_EQ_U64(r1->nkids, 0);
	CHECK_EQ_U64(qv_tree_count(&v.m.tree), count);
	v.m.tree.fail_in = 0;
	CHECK_EQ_INT(qv_mount_ready(&v.m, r1), 0);
	/* the retry built the same folder a mount without faults builds */
	f = vt_get(&v, "ep-rank-1/" F2);
	g = vt_get(&ref, "ep-rank-1/" F2);
	a = f ? vt_read_all(&v, f, &la) : NULL;
	b = g ? vt_read_all(&ref, g, &lb) : NULL;
	CHECK(a && b && la == lb && !memcmp(a, b, la));
	CHECK_EQ_U64(r1->nkids, qv_tree_lookup(&ref.m.tree, qv_tree_node(&ref.m.tree, 1),
					       "ep-rank-1")->nkids);
	free(a);
	free(b);
out:
	vt_fini(&v);
out_ref:
	vt_fini(&ref);
}
