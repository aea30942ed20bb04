/* test_view.c - the mount context built from a tiny hand-written checkpoint (view_fixture.c):
 * the virtual tree, file sizes, virtual safetensors files read back through qv_mount_reply and
 * parsed with the strict parser, the regenerated index, expert slicing, rank folders. */
#include "unit.h"
#include "view_fixture.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const struct want W_F1_NATIVE[] = {
	{ "model.language_model.embed_tokens.weight", QV_DT_F32, 4, 2, { 5, 3 }, 1, 0, false },
	{ LAYER "mlp.experts.gate_and_up_projs", QV_DT_BF16, 2, 3, { 4, 4, 4 }, 1, 60, true },
	{ LAYER "mlp.experts.down_projs", QV_DT_BF16, 2, 3, { 4, 2, 4 }, 1, 188, true },
};
static const struct want W_F2_NATIVE[] = {
	{ "lm_head.weight", QV_DT_F32, 4, 2, { 5, 3 }, 2, 0, false },
	{ "model.visual.patch_embed.proj.weight", QV_DT_F16, 2, 2, { 2, 2 }, 2, 60, false },
};

TEST(view_tree_and_sizes)
{
	struct qv_mount_opts o = { 0 };
	struct vt v;
	struct qv_node *root, *n, *docs;
	uint64_t sum = 0;
	char names[512] = "";
	size_t pos = 0;

	if (!CHECK_MSG(vt_mount(&v, vt_make_ckpt(), &o) == 0, "%s", v.err))
		goto out;
	CHECK_EQ_INT(v.m.gen->src_naming, QV_NAMING_HF);
	CHECK(v.m.gen->model_prefix);
	CHECK_EQ_U64(v.m.gen->n_experts, E);
	root = qv_tree_node(&v.m.tree, 1);
	if (!CHECK(root && root->dir))
		goto out;
	CHECK_EQ_U64(root->ino, 1);
	CHECK_EQ_U64(root->parent, 1);
	for (size_t k = 0; k < root->nkids; k++) {
		const char *name = qv_tree_node(&v.m.tree, root->kids[k])->name;

		if (strcmp(name, ".qvlmoefs") != 0) /* the inspection folder is not the source's */
			pos += (size_t)snprintf(names + pos, sizeof(names) - pos, "%s%s",
						pos ? "," : "", name);
	}
	CHECK_STR(names, "config.json,docs," F1 "," F2 "," IDX);
	n = vt_get(&v, "config.json");
	if (CHECK(n)) {
		CHECK(!n->dir);
		CHECK_EQ_U64(n->vf.size, strlen(CKPT_CONFIG));
		CHECK_EQ_U64(n->parent, 1);
	}
	docs = vt_get(&v, "docs");
	CHECK(docs && docs->dir && docs->nkids == 1);
	n = vt_get(&v, "docs/README.md");
	if (CHECK(n)) {
		CHECK_EQ_U64(n->vf.size, strlen(CKPT_README));
		CHECK(docs && n->parent == docs->ino);
	}
	CHECK(vt_get(&v, "docs/nothing") == NULL);
	CHECK(vt_get(&v, "zzz") == NULL);
	CHECK(qv_tree_lookup(&v.m.tree, root, "") == NULL);
	CHECK(qv_tree_node(&v.m.tree, 0) == NULL);
	CHECK(qv_tree_node(&v.m.tree, atomic_load(&v.m.tree.nnodes) + 1) == NULL);
	/* inode numbers are the node's own, but for the root (inode 1, whatever its slot); slot 0
	 * (inode 1) is never used */
	CHECK(qv_tree_node(&v.m.tree, 1) == root && root->ino == 1);
	for (uint64_t i = 2; i <= atomic_load(&v.m.tree.nnodes); i++) {
		n = qv_tree_node(&v.m.tree, i);
		CHECK(n && (n->ino == i || n == root));
		if (n && !n->dir)
			sum += n->vf.size;
	}
	CHECK_EQ_U64(qv_tree_bytes(&v.m.tree), sum);
	/* the safetensors sizes: 8 + N + kept data (scale_inv dropped from file 2) */
	n = vt_get(&v, F2);
	if (CHECK(n)) {
		char pre[8];
		size_t got;
		uint64_t hl = 0;

		CHECK_EQ_INT(vt_pread(&v, n, 0, 8, pre, &got), 0);
		for (int i = 7; i >= 0; i--)
			hl = hl << 8 | (unsigned char)pre[i];
		CHECK_EQ_U64(n->vf.size, 8 + hl + 68);
	}
out:
	vt_fini(&v);
}

TEST(view_passthrough_bytes)
{
	struct qv_mount_opts o = { 0 };
	struct vt v;
	struct qv_node *n;
	char *buf;
	size_t len;

	if (!CHECK_MSG(vt_mount(&v, vt_make_ckpt(), &o) == 0, "%s", v.err))
		goto out;
	n = vt_get(&v, "docs/README.md");
	if (CHECK(n) && (buf = vt_read_all(&v, n, &len))) {
		CHECK_EQ_U64(len, strlen(CKPT_README));
		CHECK_MEM(buf, CKPT_README, len);
		free(buf);
	}
	n = vt_get(&v, "config.json");
	if (CHECK(n) && (buf = vt_read_all(&v, n, &len))) {
		CHECK_MEM(buf, CKPT_CONFIG, strlen(CKPT_CONFIG));
		free(buf);
	}
	CHECK_EQ_INT(qv_mount_open_file(&v.m, n), 0);
out:
	vt_fini(&v);
}

TEST(view_header_read_and_parsed)
{
	struct qv_mount_opts o = { 0 };
	struct vt v;
	struct qv_node *n;
	char pre[8], *hdr;
	size_t got;
	uint64_t hl = 0;
	struct qv_st st;
	char err[QV_ERRLEN];

	if (!CHECK_MSG(vt_mount(&v, vt_make_ckpt(), &o) == 0, "%s", v.err))
		goto out;
	n = vt_get(&v, F1);
	if (!CHECK(n))
		goto out;
	/* just the prefix, then just the header, the way a loader reads */
	if (!CHECK_EQ_INT(vt_pread(&v, n, 0, 8, pre, &got), 0) ||
	    !CHECK_EQ_U64(got, 8))
		goto out;
	for (int i = 7; i >= 0; i--)
		hl = hl << 8 | (unsigned char)pre[i];
	CHECK_EQ_U64((8 + hl) % 8, 0);
	CHECK_EQ_U64(n->vf.size, 8 + hl + 252);
	hdr = malloc(hl);
	if (CHECK_EQ_INT(vt_pread(&v, n, 8, hl, hdr, &got), 0) &&
	    CHECK_EQ_U64(got, hl)) {
		CHECK(memcmp(hdr, "{\"__metadata__\":{", 17) == 0);
		if (CHECK_MSG(qv_st_parse(hdr, hl, n->vf.size, &st, err, sizeof(err)) == 0, "%s",
			      err)) {
			if (CHECK_EQ_U64(st.nmeta, 2)) {
				CHECK_STR(st.meta[0].key, "format");
				CHECK_STR(st.meta[1].key, "origin");
				CHECK_STR(st.meta[1].val, "unit");
			}
			if (CHECK_EQ_U64(st.nt, 3)) {
				CHECK_STR(st.t[0].name, "model.language_model.embed_tokens.weight");
				CHECK_STR(st.t[1].name, LAYER "mlp.experts.gate_and_up_projs");
				CHECK_STR(st.t[2].name, LAYER "mlp.experts.down_projs");
			}
			qv_st_free(&st);
		}
	}
	free(hdr);
	/* the stats counted the reads */
	CHECK(atomic_load(&v.m.stats.reads) >= 2);
	CHECK(atomic_load(&v.m.stats.bytes_served) >= 8 + hl);
out:
	vt_fini(&v);
}

TEST(view_tensor_bytes_native)
{
	struct qv_mount_opts o = { 0 };
	struct vt v;
	struct qv_st st = { 0 };

	if (!CHECK_MSG(vt_mount(&v, vt_make_ckpt(), &o) == 0, "%s", v.err))
		goto out;
	vt_check_vst(&v, F1, W_F1_NATIVE, 3, 0, 0, 0, 0, NULL);
	vt_check_vst(&v, F2, W_F2_NATIVE, 2, 0, 0, 0, 0, &st);
	/* format added when the source had no metadata */
	CHECK_STR(vt_meta_get(&st, "format"), "pt");
	CHECK(vt_meta_get(&st, "qvlmoefs.ep_size") == NULL);
	qv_st_free(&st);
out:
	vt_fini(&v);
}

TEST(view_read_edges)
{
	struct qv_mount_opts o = { 0 };
	struct vt v;
	struct qv_node *n;
	char buf[32];
	size_t got = 99;

	if (!CHECK_MSG(vt_mount(&v, vt_make_ckpt(), &o) == 0, "%s", v.err))
		goto out;
	n = vt_get(&v, F1);
	if (!CHECK(n))
		goto out;
	CHECK_EQ_INT(vt_pread(&v, n, n->vf.size, 10, buf, &got), 0);
	CHECK_EQ_U64(got, 0);
	CHECK_EQ_INT(vt_pread(&v, n, n->vf.size + 1000, 10, buf, &got), 0);
	CHECK_EQ_U64(got, 0);
	CHECK_EQ_INT(vt_pread(&v, n, n->vf.size - 3, 10, buf, &got), 0);
	CHECK_EQ_U64(got, 3);
	CHECK_EQ_INT(vt_pread(&v, n, 5, 0, buf, &got), 0);
	CHECK_EQ_U64(got, 0);
out:
	vt_fini(&v);
}

TEST(view_index_regenerated)
{
	struct qv_mount_opts o = { 0 };
	struct vt v;
	struct qv_node *n;
	char *buf = NULL;
	size_t len;
	cJSON *root = NULL, *wm, *md, *c;
	static const char *const keys[] = {
		"lm_head.weight", "model.language_model.embed_tokens.weight",
		LAYER "mlp.experts.down_projs", LAYER "mlp.experts.gate_and_up_projs",
		"model.visual.patch_embed.proj.weight",
	};
	static const char *const files[] = { F2, F1, F1, F1, F2 };

	if (!CHECK_MSG(vt_mount(&v, vt_make_ckpt(), &o) == 0, "%s", v.err))
		goto out;
	n = vt_get(&v, IDX);
	if (!CHECK(n) || !(buf = vt_read_all(&v, n, &len)))
		goto out;
	root = cJSON_ParseWithLength(buf, len);
	if (!CHECK_MSG(root, "index is not JSON: %.*s", (int)len, buf))
		goto out;
	md = cJSON_GetObjectItemCaseSensitive(root, "metadata");
	c = cJSON_GetObjectItemCaseSensitive(md, "total_size");
	CHECK_MSG(cJSON_IsNumber(c) && c->valuedouble == 252 + 68, "total_size %g",
		  c ? c->valuedouble : -1);
	c = cJSON_GetObjectItemCaseSensitive(md, "origin");
	CHECK(cJSON_IsString(c) && strcmp(c->valuestring, "unit") == 0);
	wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
	if (CHECK(cJSON_IsObject(wm)) && CHECK_EQ_INT(cJSON_GetArraySize(wm), 5)) {
		size_t i = 0;

		for (c = wm->child; c; c = c->next, i++) {
			CHECK_STR(c->string, keys[i]);
			CHECK_STR(c->valuestring, files[i]);
		}
	}
out:
	cJSON_Delete(root);
	free(buf);
	vt_fini(&v);
}

TEST(view_ep_slice_dim0)
{
	struct qv_mount_opts o = { .gen.ep_size = 2, .gen.ep_rank = 1, .gen.ep_rank_set = true };
	struct vt v;
	struct qv_st st = { 0 };
	struct qv_node *n;
	char *buf = NULL;
	size_t len;
	cJSON *root;

	if (!CHECK_MSG(vt_mount(&v, vt_make_ckpt(), &o) == 0, "%s", v.err))
		goto out;
	vt_check_vst(&v, F1, W_F1_NATIVE, 3, 2, 1, 0, 0, &st);
	CHECK_STR(vt_meta_get(&st, "qvlmoefs.ep_size"), "2");
	CHECK_STR(vt_meta_get(&st, "qvlmoefs.ep_rank"), "1");
	CHECK_STR(vt_meta_get(&st, "qvlmoefs.expert_start"), "2");
	CHECK_STR(vt_meta_get(&st, "qvlmoefs.expert_end"), "4");
	CHECK(vt_meta_get(&st, "qvlmoefs.ep_shard_size") == NULL);
	CHECK_STR(vt_meta_get(&st, "origin"), "unit");
	qv_st_free(&st);
	vt_check_vst(&v, F2, W_F2_NATIVE, 2, 2, 1, 0, 0, NULL);
	/* total_size follows the sliced tensors: 60 + 64 + 32 + 68 */
	n = vt_get(&v, IDX);
	if (CHECK(n) && (buf = vt_read_all(&v, n, &len))) {
		root = cJSON_ParseWithLength(buf, len);
		cJSON *c = cJSON_GetObjectItemCaseSensitive(
			cJSON_GetObjectItemCaseSensitive(root, "metadata"), "total_size");
		CHECK_MSG(cJSON_IsNumber(c) && c->valuedouble == 60 + 64 + 32 + 68,
			  "total_size %g", c ? c->valuedouble : -1);
		cJSON_Delete(root);
	}
out:
	free(buf);
	vt_fini(&v);
}

TEST(view_ep_slice_uneven)
{
	for (uint32_t r = 0; r < 3; r++) {
		struct qv_mount_opts o = { .gen.ep_size = 3, .gen.ep_rank = r,
					   .gen.ep_rank_set = true };
		struct vt v;

		if (CHECK_MSG(vt_mount(&v, vt_make_ckpt(), &o) == 0, "rank %u: %s", r, v.err))
			vt_check_vst(&v, F1, W_F1_NATIVE, 3, 3, r, 0, 0, NULL);
		vt_fini(&v);
	}
}

TEST(view_ep_slice_dim1)
{
	for (uint32_t r = 0; r < 2; r++) {
		for (uint32_t s = 0; s < 2; s++) {
			struct qv_mount_opts o = { .gen.ep_size = 2, .gen.ep_rank = r,
						   .gen.ep_rank_set = true, .gen.shard_size = 2,
						   .gen.shard_rank = s, .gen.shard_rank_set = true };
			struct qv_st st = { 0 };
			struct vt v;
			char want[8];

			if (CHECK_MSG(vt_mount(&v, vt_make_ckpt(), &o) == 0, "%s", v.err)) {
				vt_check_vst(&v, F1, W_F1_NATIVE, 3, 2, r, 2, s, &st);
				snprintf(want, sizeof(want), "%u", s);
				CHECK_STR(vt_meta_get(&st, "qvlmoefs.ep_shard_size"), "2");
				CHECK_STR(vt_meta_get(&st, "qvlmoefs.ep_shard_rank"), want);
				qv_st_free(&st);
			}
			vt_fini(&v);
		}
	}
}

TEST(view_identity_hf)
{
	static const struct want f1[] = {
		{ "model.language_model.embed_tokens.weight", QV_DT_F32, 4, 2, { 5, 3 }, 1, 0, false },
		{ LAYER "mlp.experts.gate_up_proj", QV_DT_BF16, 2, 3, { 4, 4, 4 }, 1, 60, true },
		{ LAYER "mlp.experts.down_proj", QV_DT_BF16, 2, 3, { 4, 2, 4 }, 1, 188, true },
	};
	static const struct want f2[] = {
		{ "lm_head.weight", QV_DT_F32, 4, 2, { 5, 3 }, 2, 0, false },
		{ "model.visual.patch_embed.proj.weight", QV_DT_F16, 2, 2, { 2, 2 }, 2, 60, false },
		{ LAYER "self_attn.q_proj.weight_scale_inv", QV_DT_F32, 4, 1, { 1 }, 2, 68, false },
	};
	struct qv_mount_opts o = { .gen.view_set = true, .gen.view = QV_NAMING_HF, .gen.ep_size = 4,
				   .gen.ep_rank = 3, .gen.ep_rank_set = true };
	struct vt v;

	if (CHECK_MSG(vt_mount(&v, vt_make_ckpt(), &o) == 0, "%s", v.err)) {
		vt_check_vst(&v, F1, f1, 3, 4, 3, 0, 0, NULL);
		vt_check_vst(&v, F2, f2, 3, 4, 3, 0, 0, NULL);
	}
	vt_fini(&v);
}

/* A native checkpoint viewed as HF: renamed experts, extra state dropped, no index. */
static char *make_native(void)
{
	char *dir = ut_tmpdir();

	if (!dir)
		return NULL;
	vt_put_st(dir, "model.safetensors",
	       "{\"" LAYER "mlp.experts.gate_and_up_projs\":{\"dtype\":\"BF16\",\"shape\":[4,4,4],"
	       "\"data_offsets\":[0,128]},"
	       "\"" LAYER "mlp.experts.down_projs\":{\"dtype\":\"BF16\",\"shape\":[4,2,4],"
	       "\"data_offsets\":[128,192]},"
	       "\"" LAYER "self_attn._extra_state\":{\"dtype\":\"U8\",\"shape\":[3],"
	       "\"data_offsets\":[192,195]},"
	       "\"lm_head.weight\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[195,199]}}",
	       199, 5);
	return dir;
}

TEST(view_reverse_native_to_hf)
{
	static const struct want w[] = {
		{ LAYER "mlp.experts.gate_up_proj", QV_DT_BF16, 2, 3, { 4, 4, 4 }, 5, 0, true },
		{ LAYER "mlp.experts.down_proj", QV_DT_BF16, 2, 3, { 4, 2, 4 }, 5, 128, true },
		{ "lm_head.weight", QV_DT_F32, 4, 1, { 1 }, 5, 195, false },
	};
	struct qv_mount_opts o = { .gen.ep_size = 2, .gen.ep_rank = 0, .gen.ep_rank_set = true };
	struct vt v;

	if (CHECK_MSG(vt_mount(&v, make_native(), &o) == 0, "%s", v.err)) {
		CHECK_EQ_INT(v.m.gen->src_naming, QV_NAMING_NATIVE);
		CHECK(vt_get(&v, IDX) == NULL);
		vt_check_vst(&v, "model.safetensors", w, 3, 2, 0, 0, 0, NULL);
	}
	vt_fini(&v);
}

TEST(view_reverse_custom_exclude)
{
	static const struct want w[] = {
		{ LAYER "mlp.experts.gate_up_proj", QV_DT_BF16, 2, 3, { 4, 4, 4 }, 5, 0, true },
		{ LAYER "mlp.experts.down_proj", QV_DT_BF16, 2, 3, { 4, 2, 4 }, 5, 128, true },
		{ LAYER "self_attn._extra_state", QV_DT_U8, 1, 1, { 3 }, 5, 192, false },
	};
	struct qv_mount_opts o = { .gen.exclude = "lm_head" };
	struct vt v;

	if (CHECK_MSG(vt_mount(&v, make_native(), &o) == 0, "%s", v.err))
		vt_check_vst(&v, "model.safetensors", w, 3, 0, 0, 0, 0, NULL);
	vt_fini(&v);
}

/* {P} is decided by the whole checkpoint: one file's model. key prefixes the other's keys. */
TEST(view_model_prefix_from_any_file)
{
	static const struct want wa[] = {
		{ "model.language_model.layers.1.mlp.experts.down_projs", QV_DT_U8, 1, 2, { 2, 3 }, 6,
		  0, true },
		{ "model.visual.x", QV_DT_U8, 1, 1, { 2 }, 6, 6, false },
	};
	static const struct want wa_np[] = {
		{ "language_model.layers.1.mlp.experts.down_projs", QV_DT_U8, 1, 2, { 2, 3 }, 6, 0,
		  true },
		{ "visual.x", QV_DT_U8, 1, 1, { 2 }, 6, 6, false },
	};
	const char *a = "{\"language_model.layers.1.mlp.experts.down_proj\":{\"dtype\":\"U8\","
			"\"shape\":[2,3],\"data_offsets\":[0,6]},\"visual.x\":{\"dtype\":\"U8\","
			"\"shape\":[2],\"data_offsets\":[6,8]}}";
	struct qv_mount_opts o = { 0 };
	struct vt v;
	char *dir = ut_tmpdir();

	vt_put_st(dir, "a.safetensors", a, 8, 6);
	vt_put_st(dir, "b.safetensors",
	       "{\"model.z\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1, 7);
	if (CHECK_MSG(vt_mount(&v, dir, &o) == 0, "%s", v.err)) {
		CHECK(v.m.gen->model_prefix);
		vt_check_vst(&v, "a.safetensors", wa, 2, 0, 0, 0, 0, NULL);
	}
	vt_fini(&v);
	dir = ut_tmpdir();
	vt_put_st(dir, "a.safetensors", a, 8, 6);
	if (CHECK_MSG(vt_mount(&v, dir, &o) == 0, "%s", v.err)) {
		CHECK(!v.m.gen->model_prefix);
		vt_check_vst(&v, "a.safetensors", wa_np, 2, 0, 0, 0, 0, NULL);
	}
	vt_fini(&v);
}

/* DESIGN §2: ep_size alone makes the root hold one complete view per rank. */
TEST(view_rank_folders)
{
	struct qv_mount_opts o = { .gen.ep_size = 2 };
	struct vt v;
	char names[256], path[128];

	if (!CHECK_MSG(vt_mount(&v, vt_make_ckpt(), &o) == 0, "%s", v.err))
		goto out;
	vt_root_names(&v, names, sizeof(names));
	CHECK_STR(names, ".qvlmoefs,ep-rank-0,ep-rank-1");
	for (uint32_t r = 0; r < 2; r++) {
		struct qv_st st = { 0 };
		char want[4];

		snprintf(path, sizeof(path), "ep-rank-%u/" F1, r);
		vt_check_vst(&v, path, W_F1_NATIVE, 3, 2, r, 0, 0, &st);
		snprintf(want, sizeof(want), "%u", r);
		CHECK_STR(vt_meta_get(&st, "qvlmoefs.ep_rank"), want);
		qv_st_free(&st);
		snprintf(path, sizeof(path), "ep-rank-%u/" F2, r);
		vt_check_vst(&v, path, W_F2_NATIVE, 2, 2, r, 0, 0, NULL);
		snprintf(path, sizeof(path), "ep-rank-%u/docs/README.md", r);
		CHECK_MSG(vt_get(&v, path) != NULL, "%s missing", path);
		snprintf(path, sizeof(path), "ep-rank-%u/" IDX, r);
		CHECK_MSG(vt_get(&v, path) != NULL, "%s missing", path);
	}
out:
	vt_fini(&v);
}

TEST(view_rank_shard_folders)
{
	struct qv_mount_opts o = { .gen.ep_size = 2, .gen.shard_size = 2 };
	struct vt v;
	char names[256], path[128];

	if (!CHECK_MSG(vt_mount(&v, vt_make_ckpt(), &o) == 0, "%s", v.err))
		goto out;
	vt_root_names(&v, names, sizeof(names));
	CHECK_STR(names, ".qvlmoefs,ep-rank-0-shard-0,ep-rank-0-shard-1,ep-rank-1-shard-0,ep-rank-1-shard-1");
	for (uint32_t r = 0; r < 2; r++)
		for (uint32_t s = 0; s < 2; s++) {
			snprintf(path, sizeof(path), "ep-rank-%u-shard-%u/" F1, r, s);
			vt_check_vst(&v, path, W_F1_NATIVE, 3, 2, r, 2, s, NULL);
		}
out:
	vt_fini(&v);
}

/* The adapter's rules are Qwen3-VL-MoE's: on another model (no Qwen expert tensor) the default
 * view renames nothing and keeps *_scale_inv, which would otherwise drop an FP8 model's scales
 * without a word. Explicit view=native is the same. */
TEST(view_other_model_keeps_names_and_scales)
{
	static const struct want w[] = {
		{ "layers.0.w", QV_DT_U8, 1, 1, { 4 }, 9, 0, false },
		{ "model.w_scale_inv", QV_DT_U8, 1, 1, { 2 }, 9, 4, false },
	};
	struct qv_mount_opts dflt = { 0 },
			     native = { .gen.view = QV_NAMING_NATIVE, .gen.view_set = true };
	const struct qv_mount_opts *os[] = { &dflt, &native };

	for (size_t i = 0; i < 2; i++) {
		char *dir = ut_tmpdir();
		struct vt v;

		vt_put_st(dir, "s.safetensors",
			  "{\"layers.0.w\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
			  "\"model.w_scale_inv\":{\"dtype\":\"U8\",\"shape\":[2],"
			  "\"data_offsets\":[4,6]}}",
			  6, 9);
		if (CHECK_MSG(vt_mount(&v, dir, os[i]) == 0, "%s", v.err))
			vt_check_vst(&v, "s.safetensors", w, 2, 0, 0, 0, 0, NULL);
		vt_fini(&v); /* frees dir */
	}
}

TEST(view_zero_size_and_all_dropped)
{
	static const struct want w[] = {
		{ "model.a", QV_DT_U8, 1, 1, { 3 }, 8, 0, false },
		{ "model.empty", QV_DT_F32, 4, 2, { 0, 5 }, 8, 3, false },
		{ "model.b", QV_DT_U8, 1, 1, { 2 }, 8, 3, false },
	};
	struct qv_mount_opts o = { 0 };
	char *dir = ut_tmpdir();
	struct qv_st st = { 0 };
	struct qv_node *n;
	struct vt v;

	vt_put_st(dir, "z.safetensors",
	       "{\"model.b\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[3,5]},"
	       "\"model.empty\":{\"dtype\":\"F32\",\"shape\":[0,5],\"data_offsets\":[3,3]},"
	       "\"model.a\":{\"dtype\":\"U8\",\"shape\":[3],\"data_offsets\":[0,3]}}",
	       5, 8);
	vt_put_qwen(dir); /* the adapter's rules are Qwen3-VL-MoE's */
	vt_put_st(dir, "s.safetensors",
	       "{\"model.w_scale_inv\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]}}",
	       4, 9);
	if (!CHECK_MSG(vt_mount(&v, dir, &o) == 0, "%s", v.err))
		goto out;
	vt_check_vst(&v, "z.safetensors", w, 3, 0, 0, 0, 0, NULL);
	vt_check_vst(&v, "s.safetensors", NULL, 0, 0, 0, 0, 0, &st);
	CHECK_EQ_U64(st.data_size, 0);
	qv_st_free(&st);
	n = vt_get(&v, "s.safetensors");
	CHECK(n && n->vf.size % 8 == 0);
out:
	vt_fini(&v);
}

TEST(view_open_fails_after_source_changes)
{
	struct qv_mount_opts o = { 0 };
	struct vt v;
	struct qv_node *n, *cfg;
	struct ut_capture cap;
	char *p;
	struct timespec t[2] = { { 1234567890, 0 }, { 1234567890, 0 } };

	if (!CHECK_MSG(vt_mount(&v, vt_make_ckpt(), &o) == 0, "%s", v.err))
		goto out;
	n = vt_get(&v, F1);
	cfg = vt_get(&v, "config.json");
	if (!CHECK(n && cfg))
		goto out;
	CHECK_EQ_INT(qv_mount_open_file(&v.m, n), 0);
	p = ut_path(v.dir, F1);
	CHECK_EQ_INT(utimensat(AT_FDCWD, p, t, 0), 0);
	free(p);
	ut_stderr_begin(&cap);
	CHECK_EQ_INT(qv_mount_open_file(&v.m, n), -EIO);
	free(ut_stderr_end(&cap));
	CHECK(atomic_load(&v.m.stats.errors) >= 1);
	CHECK_EQ_INT(qv_mount_open_file(&v.m, cfg), 0);
	/* the index is generated: it depends on no source at open time */
	CHECK_EQ_INT(qv_mount_open_file(&v.m, vt_get(&v, IDX)), 0);
out:
	vt_fini(&v);
}

/* A rank folder copied out of a mount (its shards carry qvlmoefs.ep_* already) is a checkpoint
 * of the experts it holds: slicing it again cuts those, and each shard says so once, the view's
 * own keys in place of the copied ones. One rank and rank folders alike (these answered EIO,
 * the one rank refused the mount: two values for one __metadata__ key). */
TEST(view_reslice_copied_rank_folder)
{
	static const char f1_copy[] =
		"{\"__metadata__\":{\"format\":\"pt\",\"qvlmoefs.ep_size\":\"2\","
		"\"qvlmoefs.ep_rank\":\"1\",\"qvlmoefs.expert_start\":\"4\","
		"\"qvlmoefs.expert_end\":\"8\"},"
		"\"model.language_model.embed_tokens.weight\":{\"dtype\":\"F32\",\"shape\":[5,3],"
		"\"data_offsets\":[0,60]},"
		"\"" LAYER "mlp.experts.gate_up_proj\":{\"dtype\":\"BF16\",\"shape\":[4,4,4],"
		"\"data_offsets\":[60,188]},"
		"\"" LAYER "mlp.experts.down_proj\":{\"dtype\":\"BF16\",\"shape\":[4,2,4],"
		"\"data_offsets\":[188,252]}}";
	struct qv_mount_opts one = { .gen.ep_size = 2, .gen.ep_rank = 1, .gen.ep_rank_set = true };
	struct qv_mount_opts folders = { .gen.ep_size = 2 };
	const struct qv_mount_opts *opts[] = { &one, &folders };

	for (size_t i = 0; i < 2; i++) {
		char *dir = vt_make_ckpt();
		struct qv_st st = { 0 };
		struct vt v;

		vt_put_st(dir, F1, f1_copy, 252, 1);
		if (!CHECK_MSG(vt_mount(&v, dir, opts[i]) == 0, "%s", v.err)) {
			vt_fini(&v);
			continue;
		}
		vt_check_vst(&v, i ? "ep-rank-1/" F1 : F1, W_F1_NATIVE, 3, 2, 1, 0, 0, &st);
		CHECK_EQ_U64(st.nmeta, 5);
		CHECK_STR(vt_meta_get(&st, "qvlmoefs.ep_size"), "2");
		CHECK_STR(vt_meta_get(&st, "qvlmoefs.ep_rank"), "1");
		CHECK_STR(vt_meta_get(&st, "qvlmoefs.expert_start"), "2");
		CHECK_STR(vt_meta_get(&st, "qvlmoefs.expert_end"), "4");
		qv_st_free(&st);
		if (i)
			vt_check_vst(&v, "ep-rank-0/" F1, W_F1_NATIVE, 3, 2, 0, 0, 0, NULL);
		vt_fini(&v);
	}
}
