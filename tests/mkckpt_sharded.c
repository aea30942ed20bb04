/*
 * mkckpt_sharded.c - qvlmoefs-mkckpt --sharded-save W: the checkpoint as NeMo Automodel's
 * per-rank sharded save. Rank r (0-based) writes shard-{r+1:05}-model-00001-of-00001.safetensors
 * holding its chunk of each tensor it owns (header shape = the chunk's, data = the chunk's
 * row-major bytes, the same bytes as the normal mode's whole tensor at those indexes), with
 * __metadata__.DCP_SHARDING_INFO = json.dumps({fqn: {"saved_offsets": [...]}}).
 * Expert tensors are cut on dim 0 by the EP formula over W/K expert-parallel groups and, with
 * --save-shard-size K > 1, on dim 1 into K parts (rank r: EP rank r/K, shard r%K). Dense
 * tensors are whole on rank 0, or with --dense-split cut on dim 0 over all W ranks when
 * dim 0 >= W. Chunks with no elements are not written. Config and tokenizer files go to
 * .hf_metadata/ with fqn_to_file_index_mapping.json (each key's normal-mode shard, 1-based).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mkckpt.h"

#define META_DIR ".hf_metadata"

/* Reject sharded-save options that cannot describe a save, before anything is written. */
void check_sharded(const struct opts *o)
{
	const struct model *m = &o->m;
	uint64_t k = o->save_shard;

	if (!o->save_ranks) {
		if (k != 1)
			usage_error("--save-shard-size", "needs --sharded-save");
		if (o->dense_split)
			usage_error("--dense-split", "needs --sharded-save");
		if (o->drop_rank != NO_RANK)
			usage_error("--sharded-drop-rank", "needs --sharded-save");
		return;
	}
	if (o->save_ranks % k)
		usage_error("--save-shard-size", "must divide --sharded-save");
	if (m->hidden % k || m->moe_inter % k)
		usage_error("--save-shard-size", "must divide --hidden and --moe-inter");
	if (o->drop_rank != NO_RANK && o->drop_rank >= o->save_ranks)
		usage_error("--sharded-drop-rank", "must be below --sharded-save");
	if (o->no_metadata)
		usage_error("--no-metadata", "a sharded save keeps its chunk offsets in __metadata__");
}

static int ends_with(const char *s, const char *suffix)
{
	size_t n = strlen(s), k = strlen(suffix);

	return n >= k && !strcmp(s + n - k, suffix);
}

/* The two expert tensors of a layer, in either naming: the only ones EP cuts. */
static int is_expert(const struct tensor *t)
{
	static const char *const names[] = { ".mlp.experts.gate_up_proj", ".mlp.experts.down_proj",
					     ".mlp.experts.gate_and_up_projs",
					     ".mlp.experts.down_projs" };

	for (size_t i = 0; i < ARRAY_SIZE(names); i++)
		if (ends_with(t->name, names[i]))
			return 1;
	return 0;
}

/* The EP formula: rank r's [start, start + count) of n items over w ranks. */
static void ep_range(uint64_t n, uint64_t w, uint64_t r, uint64_t *start, uint64_t *count)
{
	uint64_t q = n / w, m = n % w;

	*count = q + (r < m);
	*start = r * q + (r < m ? r : m);
}

/* Rank r's chunk of the whole tensor t into c: 1 if it has elements, else 0 (not written). */
static int rank_chunk(const struct tensor *t, uint64_t r, const struct opts *o, struct tensor *c)
{
	uint64_t w = o->save_ranks, k = o->save_shard, row = t->nbytes / t->shape[0];

	*c = *t;
	if (is_expert(t)) {
		ep_range(t->shape[0], w / k, r / k, &c->start[0], &c->shape[0]);
		c->shape[1] = t->shape[1] / k;
		c->start[1] = r % k * c->shape[1];
		row /= k;
	} else if (o->dense_split && t->shape[0] >= w) {
		ep_range(t->shape[0], w, r, &c->start[0], &c->shape[0]);
	} else if (r) {
		return 0;
	}
	c->nbytes = row * c->shape[0];
	return c->nbytes != 0;
}

/* ,"DCP_SHARDING_INFO":"..." : json.dumps({fqn: {"saved_offsets": [...]}}) as a JSON string. */
static void dcp_info(struct sbuf *sb, struct tensor **ts, size_t n)
{
	sb_printf(sb, ",\"DCP_SHARDING_INFO\":\"{");
	for (size_t i = 0; i < n; i++) {
		sb_printf(sb, "%s\\\"%s\\\": {\\\"saved_offsets\\\": [", i ? ", " : "", ts[i]->name);
		for (unsigned d = 0; d < ts[i]->ndim; d++)
			sb_printf(sb, "%s%" PRIu64, d ? ", " : "", ts[i]->start[d]);
		sb_printf(sb, "]}");
	}
	sb_printf(sb, "}\"");
}

/* Rank r's file, its chunks built in cs[] (room for every tensor) and listed in ts[]. */
static int write_rank(int dirfd, const struct tlist *tl, uint64_t r, struct tensor *cs,
		      struct tensor **ts, const struct opts *o)
{
	struct sbuf meta = { 0 };
	char fname[64];
	uint64_t len;
	size_t n = 0;
	int err;

	for (size_t i = 0; i < tl->n; i++) {
		if (rank_chunk(&tl->v[i], r, o, &cs[n])) {
			ts[n] = &cs[n];
			n++;
		}
	}
	len = order_shard(ts, n, o->order);
	dcp_info(&meta, ts, n);
	snprintf(fname, sizeof(fname), "shard-%05" PRIu64 "-model-00001-of-00001.safetensors",
		 r + 1);
	err = meta.err ? meta.err : write_tensor_file(dirfd, fname, ts, n, len, meta.p, o);
	free(meta.p);
	return err ? fail(fname, err) : 0;
}

/* fqn_to_file_index_mapping.json as json.dump(indent=2, sort_keys=True) writes it. */
static int write_mapping(int dirfd, const struct tlist *tl)
{
	static const char fname[] = "fqn_to_file_index_mapping.json";
	const struct tensor **ts = calloc(tl->n, sizeof(*ts));
	struct sbuf sb = { 0 };
	int err;

	if (!ts)
		return fail(fname, -ENOMEM);
	for (size_t i = 0; i < tl->n; i++)
		ts[i] = &tl->v[i];
	qsort(ts, tl->n, sizeof(*ts), cmp_name);
	sb_printf(&sb, "{");
	for (size_t i = 0; i < tl->n; i++)
		sb_printf(&sb, "%s\n  \"%s\": %" PRIu64, i ? "," : "", ts[i]->name, ts[i]->shard + 1);
	sb_printf(&sb, "%s}", tl->n ? "\n" : "");
	err = write_text(dirfd, fname, &sb);
	free(sb.p);
	free(ts);
	return err;
}

/* Create OUTDIR/.hf_metadata if missing and open it for the *at() calls. */
static int open_metadir(int dirfd)
{
	int fd;

	if (mkdirat(dirfd, META_DIR, 0755) && errno != EEXIST)
		return -errno;
	fd = openat(dirfd, META_DIR, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	return fd < 0 ? -errno : fd;
}

/* The rank files (but --sharded-drop-rank's), then .hf_metadata; failures are reported. */
int write_sharded_save(int dirfd, const struct tlist *tl, const struct opts *o)
{
	struct tensor *cs = calloc(tl->n, sizeof(*cs)), **ts = calloc(tl->n, sizeof(*ts));
	int mfd, err = cs && ts ? 0 : fail(o->outdir, -ENOMEM);

	for (uint64_t r = 0; !err && r < o->save_ranks; r++)
		if (r != o->drop_rank)
			err = write_rank(dirfd, tl, r, cs, ts, o);
	free(ts);
	free(cs);
	if (err)
		return err;
	mfd = open_metadir(dirfd);
	if (mfd < 0)
		return fail(META_DIR, mfd);
	err = write_config(mfd, &o->m);
	err = err ? err : write_static_files(mfd);
	err = err ? err : write_mapping(mfd, tl);
	close(mfd);
	return err;
}
