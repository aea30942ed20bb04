/* test_view_err.c - errors at mount: the return code, and one line naming the file or tensor
 * and the reason (DESIGN §4). */
#include "unit.h"
#include "view_fixture.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- errors at mount: rc, and one line naming the file or tensor ---- */

#define EXPECT_MOUNT_FAIL(dir, opts, rcwant, ...)                                            \
	do {                                                                                 \
		struct vt v_;                                                                \
		const char *words_[] = { __VA_ARGS__ };                                      \
		int rc_ = vt_mount(&v_, (dir), (opts));                                      \
		CHECK_MSG(rc_ == (rcwant), "mount rc %d, want %d (%s)", rc_, (rcwant), v_.err); \
		for (size_t i_ = 0; i_ < sizeof(words_) / sizeof(words_[0]); i_++)           \
			CHECK_HAS(v_.err, words_[i_]);                                       \
		CHECK_MSG(!strchr(v_.err, '\n'), "more than one line: %s", v_.err);          \
		vt_fini(&v_);                                                                \
	} while (0)

TEST(view_err_malformed_safetensors)
{
	struct qv_mount_opts o = { 0 };
	char *dir = vt_make_ckpt();

	vt_put_st(dir, F2, "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
			"\"b\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[6,10]}}",
	       10, 2);
	EXPECT_MOUNT_FAIL(dir, &o, -EINVAL, F2, "hole");
}

TEST(view_err_truncated_safetensors)
{
	struct qv_mount_opts o = { 0 };
	char *dir = vt_make_ckpt(), *p = ut_path(dir, F1);

	CHECK_EQ_INT(truncate(p, 100), 0);
	free(p);
	EXPECT_MOUNT_FAIL(dir, &o, -EINVAL, F1);
}

TEST(view_err_index_names_missing_file)
{
	struct qv_mount_opts o = { 0 };
	char *dir = vt_make_ckpt();

	vt_put(dir, IDX, "{\"metadata\":{},\"weight_map\":{\"lm_head.weight\":\"" F2 "\","
		      "\"x\":\"model-00003-of-00002.safetensors\"}}");
	EXPECT_MOUNT_FAIL(dir, &o, -EINVAL, IDX, "model-00003-of-00002.safetensors");
}

TEST(view_err_malformed_index)
{
	struct qv_mount_opts o = { 0 };
	char *dir = vt_make_ckpt();

	vt_put(dir, IDX, "{\"metadata\":{},\"weight_map\":");
	EXPECT_MOUNT_FAIL(dir, &o, -EINVAL, IDX);
}

TEST(view_err_rename_collision_in_file)
{
	struct qv_mount_opts o = { 0 };
	char *dir = ut_tmpdir();

	vt_put_qwen(dir); /* renames happen to a Qwen3-VL-MoE checkpoint only */
	vt_put_st(dir, "one.safetensors",
	       "{\"language_model.x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
	       "\"model.language_model.x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}",
	       2, 3);
	EXPECT_MOUNT_FAIL(dir, &o, -EINVAL, "one.safetensors", "model.language_model.x");
}

TEST(view_err_rename_collision_across_files)
{
	struct qv_mount_opts o = { 0 };
	char *dir = ut_tmpdir();

	vt_put_qwen(dir);
	vt_put_st(dir, "a.safetensors",
	       "{\"visual.x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1, 3);
	vt_put_st(dir, "b.safetensors",
	       "{\"model.visual.x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1, 4);
	vt_put(dir, IDX, "{\"weight_map\":{\"visual.x\":\"a.safetensors\","
		      "\"model.visual.x\":\"b.safetensors\","
		      "\"model.language_model.layers.0.mlp.experts.down_proj\":\"qwen.safetensors\"}}");
	EXPECT_MOUNT_FAIL(dir, &o, -EINVAL, IDX, "model.visual.x");
}

TEST(view_err_impossible_slicing)
{
	struct qv_mount_opts o = { .gen.ep_size = 8, .gen.ep_rank = 0, .gen.ep_rank_set = true };
	struct qv_mount_opts k = { .gen.ep_size = 2, .gen.ep_rank = 0, .gen.ep_rank_set = true,
				   .gen.shard_size = 3, .gen.shard_rank = 0,
				   .gen.shard_rank_set = true };

	EXPECT_MOUNT_FAIL(vt_make_ckpt(), &o, -EINVAL, "mlp.experts.gate_up_proj", "ep_size");
	EXPECT_MOUNT_FAIL(vt_make_ckpt(), &k, -EINVAL, "mlp.experts.gate_up_proj", "divisible");
}

TEST(view_err_impossible_slicing_rank_folders)
{
	struct qv_mount_opts o = { .gen.ep_size = 8 };

	EXPECT_MOUNT_FAIL(vt_make_ckpt(), &o, -EINVAL, "mlp.experts.gate_up_proj", "ep_size");
}

TEST(view_err_ep_without_experts)
{
	struct qv_mount_opts o = { .gen.ep_size = 2, .gen.ep_rank = 0, .gen.ep_rank_set = true };
	char *dir = ut_tmpdir();

	vt_put_st(dir, "d.safetensors",
	       "{\"model.x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1, 1);
	EXPECT_MOUNT_FAIL(dir, &o, -EINVAL, "expert");
}

TEST(view_err_bad_ranks)
{
	struct qv_mount_opts o = { .gen.ep_size = 2, .gen.ep_rank = 2, .gen.ep_rank_set = true };

	EXPECT_MOUNT_FAIL(vt_make_ckpt(), &o, -EINVAL, "ep_rank");
}

TEST(view_err_missing_source)
{
	struct qv_mount_opts o = { 0 };
	char *base = ut_tmpdir(), *missing = ut_path(base, "gone");
	struct qv_mount m;
	char err[QV_ERRLEN];

	CHECK_EQ_INT(qv_mount_init(&m, missing, &o, err, sizeof(err)), -ENOENT);
	CHECK_HAS(err, "gone");
	qv_mount_fini(&m);
	free(missing);
	ut_rmtree(base);
	free(base);
}

/* An index that names a key its file does not hold: the regenerated index dropped the key
 * silently (loaders never saw the gap). Refused as a missing file is, in every view: rank
 * folders at mount too, not on first use. */
TEST(view_err_index_names_key_its_file_lacks)
{
	static const char idx[] = "{\"metadata\":{},\"weight_map\":{"
				  "\"lm_head.weight\":\"" F2 "\","
				  "\"model.missing.weight\":\"" F2 "\","
				  "\"model.language_model.embed_tokens.weight\":\"" F1 "\"}}";
	struct qv_mount_opts plain = { 0 }, hf = { .gen.view_set = true, .gen.view = QV_NAMING_HF };
	struct qv_mount_opts folders = { .gen.ep_size = 2 };
	struct qv_mount_opts shared = { .gen.ep_size = 2, .ep_shared = true };
	const struct qv_mount_opts *opts[] = { &plain, &hf, &folders, &shared };

	for (size_t i = 0; i < sizeof(opts) / sizeof(opts[0]); i++) {
		char *dir = vt_make_ckpt();

		vt_put(dir, IDX, idx);
		EXPECT_MOUNT_FAIL(dir, opts[i], -EINVAL, IDX, "\"model.missing.weight\"", F2);
	}
}

/* A key in another file than the index says is refused the same way. */
TEST(view_err_index_names_key_in_wrong_file)
{
	struct qv_mount_opts o = { 0 };
	char *dir = vt_make_ckpt();

	vt_put(dir, IDX, "{\"weight_map\":{\"lm_head.weight\":\"" F1 "\"}}");
	EXPECT_MOUNT_FAIL(dir, &o, -EINVAL, IDX, "\"lm_head.weight\"", F1);
}

/* Rank folders are built on first use: whatever would fail that build (here two tensors of
 * one file that map to one view key) fails the mount instead of every folder answering EIO. */
TEST(view_err_rank_folders_refused_at_mount)
{
	struct qv_mount_opts o = { .gen.ep_size = 2 };
	char *dir = ut_tmpdir();

	vt_put_qwen(dir);
	vt_put_st(dir, "one.safetensors",
		  "{\"language_model.x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
		  "\"model.language_model.x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}",
		  2, 3);
	EXPECT_MOUNT_FAIL(dir, &o, -EINVAL, "one.safetensors", "model.language_model.x");
}

/* A missing shard file is refused at mount for rank folders too. */
TEST(view_err_rank_folders_index_names_missing_file)
{
	struct qv_mount_opts o = { .gen.ep_size = 2 };
	char *dir = vt_make_ckpt();

	vt_put(dir, IDX, "{\"weight_map\":{\"x\":\"model-00003-of-00002.safetensors\"}}");
	EXPECT_MOUNT_FAIL(dir, &o, -EINVAL, IDX, "model-00003-of-00002.safetensors");
}

/* An index that names a file of the folder which is no safetensors file. */
TEST(view_err_index_names_no_safetensors_file)
{
	struct qv_mount_opts o = { 0 };
	char *dir = vt_make_ckpt();

	vt_put(dir, IDX, "{\"weight_map\":{\"lm_head.weight\":\"config.json\"}}");
	EXPECT_MOUNT_FAIL(dir, &o, -EINVAL, IDX, "\"lm_head.weight\"", "config.json", "safetensors");
}
