/*
 * mkckpt_sharded.c - qvlmoefs-mkckpt --sharded-save W: the checkpoint as NeMo Automodel's
 * per-rank sharded save. Rank r (0-based) writes shard-{r+1:05}-model-00001-of-00001.safetensors
 * holding its chunk of each tensor it owns (header shape = the chunk's, data = the chunk's
 * row-major bytes, the same bytes as the normal mode's whole tensor at those indexes), with
 * __metadata__.DCP_SHARDING_INFO = json.dumps({fqn: {"saved_offsets": [...]}}).
 * Stacked expert tensors are cut on dim 0 by the EP formula over W/K expert-parallel groups
 * and, with --save-shard-size K > 1, on dim 1 into K parts (rank r: EP rank r/K, shard r%K);
 * per-expert tensors (--arch moe) lie whole on their expert's group, their rows cut over its K
 * ranks. Dense tensors are whole on rank 0, or with --dense-split cut on dim --dense-dim over
 * all W ranks when that dim >= W; with --empty-chunks as FSDP2 cuts (torch.chunk: ceil(n/W)
 * rows per rank, the last ranks' chunks empty), and the empty chunks written. Chunks with no
 * elements are not written otherwise. Config and tokenizer files go to
 * .hf_metadata/ with fqn_to_file_index_mapping.json (each key's normal-mode shard, 1-based).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <ctype.h>
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
		if (o->empty_chunks || o->dense_dim)
			usage_error("--empty-chunks/--dense-dim", "need --sharded-save --dense-split");
		return;
	}
	if (o->save_ranks % k)
		usage_error("--save-shard-size", "must divide --sharded-save");
	if (m->hidden % k || m->moe_inter % k)
		usage_error("--save-shard-size", "must divide --hidden and --moe-inter");
	if (o->drop_rank != NO_RANK && o->drop_rank >= o->save_ranks)
		usage_error("--sharded-drop-rank", "must be below --sharded-save");
	if ((o->empty_chunks || o->dense_dim) && !o->dense_split)
		usage_error("--empty-chunks/--dense-dim", "need --dense-split");
	if (o->dense_dim > 1)
		usage_error("--dense-dim", "must be 0 or 1");
	if (o->no_metadata)
		usage_error("--no-metadata", "a sharded save keeps its chunk offsets in __metadata__");
}

static int ends_with(const char *s, const char *suffix)
{
	size_t n = strlen(s), k = strlen(suffix);

	return n >= k && !strcmp(s + n - k, suffix);
}

/* Stacked expert tensors, cut by EP: Qwen3-VL-MoE's two per layer in either naming, and any
 * other model's ".mlp.experts.NAME" whose dim 0 is the expert count (GPT-OSS). */
static int is_stacked(const struct tensor *t, const struct opts *o)
{
	static const char *const names[] = { ".mlp.experts.gate_up_proj", ".mlp.experts.down_proj",
					     ".mlp.experts.gate_and_up_projs",
					     ".mlp.experts.down_projs" };
	const char *s = strstr(t->name, ".mlp.experts.");

	if (o->arch != ARCH_QWEN)
		return s && !isdigit((unsigned char)s[13]) && t->ndim >= 2 &&
		       t->shape[0] == o->m.experts;
	for (size_t i = 0; i < ARRAY_SIZE(names); i++)
		if (ends_with(t->name, names[i]))
			return 1;
	return 0;
}

/* A per-expert key's expert index (".mlp.experts.J."), or -1. */
static long long expert_index(const struct tensor *t)
{
	const char *s = strstr(t->name, ".mlp.experts.");

	return s && isdigit((unsigned char)s[13]) ? strtoll(s + 13, NULL, 10) : -1;
}

/* The EP formula: rank r's [start, start + count) of n items over w ranks. */
static void ep_range(uint64_t n, uint64_t w, uint64_t r, uint64_t *start, uint64_t *count)
{
	uint64_t q = n / w, m = n % w;

	*count = q + (r < m);
	*start = r * q + (r < m ? r : m);
}

/* torch.chunk, as FSDP2 cuts: ceil(n / w) per rank while there is any left, then empty
 * chunks, placed at the end. */
static void fsdp_range(uint64_t n, uint64_t w, uint64_t r, uint64_t *start, uint64_t *count)
{
	uint64_t c = (n + w - 1) / w;

	*start = r * c < n ? r * c : n;
	*count = *start + c < n ? c : n - *start;
}

/* Rank r's chunk of the whole tensor t into c: 1 if it is written (it has elements, or
 * --empty-chunks writes it empty), else 0. */
static int rank_chunk(const struct tensor *t, uint64_t r, const struct opts *o, struct tensor *c)
{
	uint64_t w = o->save_ranks, k = o->save_shard, d = o->dense_dim, j0, n;
	long long j = expert_index(t);

	*c = *t;
	if (is_stacked(t, o)) {
		ep_range(t->shape[0], w / k, r / k, &c->start[0], &c->shape[0]);
		c->shape[1] = t->shape[1] / k;
		c->start[1] = r % k * c->shape[1];
	} else if (j >= 0) { /* a whole expert on its EP group, its rows over the group's K */
		ep_range(o->m.experts, w / k, r / k, &j0, &n);
		if ((uint64_t)j < j0 || (uint64_t)j >= j0 + n)
			return 0;
		ep_range(t->shape[0], k, r % k, &c->start[0], &c->shape[0]);
	} else if (o->dense_split && o->empty_chunks && t->ndim > d) {
		fsdp_range(t->shape[d], w, r, &c->start[d], &c->shape[d]);
	} else if (o->dense_split && t->ndim > d && t->shape[d] >= w) {
		ep_range(t->shape[d], w, r, &c->start[d], &c->shape[d]);
	} else if (r) {
		return 0;
	}
	c->nbytes = dt_size[t->dtype];
	for (unsigned i = 0; i < t->ndim; i++)
		c->nbytes *= c->shape[i];
	return c->nbytes != 0 || (o->empty_chunks && !is_stacked(t, o) && j < 0);
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
	err = write_config(mfd, o);
	err = err ? err : write_static_files(mfd);
	err = err ? err : write_mapping(mfd, tl);
	close(mfd);
	return err;
}
