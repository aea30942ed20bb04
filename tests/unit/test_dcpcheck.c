/* test_dcpcheck.c - a sharded save is mounted only when complete: the tensors the mapping
 * names, the dimensions config.json fixes and the per-expert keys' count; the gap and overlap
 * messages name the dimensions, offsets and files; the generic stacked-expert name rule. */
#include "unit.h"
#include "view_fixture.h"

#include "qv_plan.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* Rank file r (0-based) holding one BF16 2-D tensor `name` of shape [a, b] at offsets [o0, o1]. */
static void put_chunk(const char *dir, int r, const char *name, int a, int b, int o0, int o1)
{
	char file[64], json[768];

	snprintf(file, sizeof(file), "shard-%05d-model-00001-of-00001.safetensors", r + 1);
	snprintf(json, sizeof(json),
		 "{\"__metadata__\":{\"format\":\"pt\",\"DCP_SHARDING_INFO\":"
		 "\"{\\\"%s\\\": {\\\"saved_offsets\\\": [%d, %d]}}\"},"
		 "\"%s\":{\"dtype\":\"BF16\",\"shape\":[%d,%d],\"data_offsets\":[0,%d]}}",
		 name, o0, o1, name, a, b, 2 * a * b);
	vt_put_st(dir, file, json, (uint64_t)(2 * a * b), (uint64_t)r + 1);
}

static void put_meta(const char *dir, const char *config, const char *mapping)
{
	char *m = ut_path(dir, ".hf_metadata");

	CHECK(mkdir(m, 0755) == 0);
	if (config)
		vt_put(m, "config.json", config);
	if (mapping)
		vt_put(m, "fqn_to_file_index_mapping.json", mapping);
	free(m);
}

/* Mount dir; with want NULL expect success, else -EINVAL with every piece of want in order. */
static void expect(char *dir, const char *want1, const char *want2)
{
	struct qv_mount_opts o = { 0 };
	struct vt v;
	int rc = vt_mount(&v, dir, &o);

	if (!want1)
		CHECK_MSG(rc == 0, "mount rc %d (%s)", rc, v.err);
	else {
		CHECK_MSG(rc == -EINVAL, "mount rc %d (%s)", rc, v.err);
		CHECK_HAS(v.err, want1);
		if (want2)
			CHECK_HAS(v.err, want2);
		CHECK_MSG(!strchr(v.err, '\n'), "more than one line: %s", v.err);
	}
	vt_fini(&v);
}

static char *embed_save(const char *config)
{
	char *dir = ut_tmpdir();

	put_chunk(dir, 0, "model.embed_tokens.weight", 2, 4, 0, 0);
	put_chunk(dir, 1, "model.embed_tokens.weight", 2, 4, 2, 0);
	put_meta(dir, config, NULL);
	return dir;
}

/* Two ranks' chunks tile [4, 4] perfectly; only config.json says the third rank is missing. */
TEST(dcpcheck_short_tensor_names_config_and_rank)
{
	expect(embed_save("{\"vocab_size\": 6, \"hidden_size\": 4}"),
	       "tensor \"model.embed_tokens.weight\": dim 0 is 4, expected 6 "
	       "(.hf_metadata/config.json's vocab_size)",
	       "shard-00003-model-00001-of-00001.safetensors (rank 2) is likely missing");
	expect(embed_save("{\"text_config\": {\"vocab_size\": 6}, \"vocab_size\": 4}"),
	       "text_config.vocab_size", NULL);
	expect(embed_save("{\"vocab_size\": 4, \"hidden_size\": 4}"), NULL, NULL);
	expect(embed_save("{\"intermediate_size\": [4, 8]}"), NULL, NULL); /* not a dimension */
	expect(embed_save(NULL), NULL, NULL);				      /* no signal */
}

TEST(dcpcheck_mapping_names_absent_tensor)
{
	char *dir = embed_save("{}");

	vt_put(dir, ".hf_metadata/fqn_to_file_index_mapping.json",
	       "{\"model.embed_tokens.weight\": 1, \"model.norm.weight\": 1}");
	expect(dir, "tensor \"model.norm.weight\": .hf_metadata/fqn_to_file_index_mapping.json "
		    "names it, but no rank file holds any of it", "(rank 2) is likely missing");
	/* a tied lm_head is not saved: Automodel's consolidation lets it pass, and so does this */
	dir = embed_save("{\"tie_word_embeddings\": true}");
	vt_put(dir, ".hf_metadata/fqn_to_file_index_mapping.json",
	       "{\"model.embed_tokens.weight\": 1, \"lm_head.weight\": 1}");
	expect(dir, NULL, NULL);
}

TEST(dcpcheck_dtype_mapping_names_absent_tensor)
{
	char *dir = embed_save("{}");

	vt_put(dir, ".hf_metadata/fqn_to_dtype_mapping.json",
	       "{\"model.embed_tokens.weight\": \"BF16\", \"model.norm.weight\": \"F32\"}");
	expect(dir, "tensor \"model.norm.weight\": .hf_metadata/fqn_to_dtype_mapping.json names it",
	       "(rank 2) is likely missing");
	dir = embed_save("{}");
	vt_put(dir, ".hf_metadata/fqn_to_dtype_mapping.json", "{\"model.embed_tokens.weight\": \"BF16\"}");
	expect(dir, NULL, NULL);
}

/* A dtype mapping that is there but is no JSON object (cut short, an array, empty) or is a
 * folder refuses the mount, naming it and why: it was skipped, so the save mounted without
 * the check it stands for. */
TEST(dcpcheck_bad_dtype_mapping_refused)
{
	static const char *const bad[] = { "{\"model.embed_tokens.weight\": \"BF16\"",
					   "[\"model.embed_tokens.weight\"]", "" };
	char *dir, *m;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		dir = embed_save("{}");
		vt_put(dir, ".hf_metadata/fqn_to_dtype_mapping.json", bad[i]);
		expect(dir, ".hf_metadata/fqn_to_dtype_mapping.json: not a JSON object", NULL);
	}
	dir = embed_save("{}");
	m = ut_path(dir, ".hf_metadata/fqn_to_dtype_mapping.json");
	CHECK(mkdir(m, 0755) == 0);
	free(m);
	expect(dir, ".hf_metadata/fqn_to_dtype_mapping.json: a folder, not a JSON file", NULL);
}

TEST(dcpcheck_per_expert_count)
{
	char *dir = ut_tmpdir();

	put_chunk(dir, 0, "model.layers.0.mlp.experts.0.gate_proj.weight", 2, 4, 0, 0);
	put_chunk(dir, 1, "model.layers.0.mlp.experts.1.gate_proj.weight", 2, 4, 0, 0);
	put_meta(dir, "{\"num_experts\": 3}", NULL);
	expect(dir, "tensors \"model.layers.0.mlp.experts.{}.gate_proj.weight\": "
		    ".hf_metadata/config.json's num_experts says 3 experts, the rank files hold 2 "
		    "(expert 2 is not there)", "shard-00003");
}

/* A [4, 4] tensor cut in four 2x2 chunks, one missing: the message names the 2-D region. */
TEST(dcpcheck_gap_names_region_in_every_dim)
{
	char *dir = ut_tmpdir();

	put_chunk(dir, 0, "w", 2, 2, 0, 0);
	put_chunk(dir, 1, "w", 2, 2, 0, 2);
	put_chunk(dir, 2, "w", 2, 2, 2, 0);
	put_chunk(dir, 3, "w", 0, 2, 4, 2);
	expect(dir, "tensor \"w\": no chunk covers dim 0 [2, 4) x dim 1 [2, 4) of its [4, 4]",
	       "shard-00005");
}

/* Chunks overlapping only in dim 1: the dimension, both offsets and both files. */
TEST(dcpcheck_overlap_names_dim_offsets_files)
{
	char *dir = ut_tmpdir();

	put_chunk(dir, 0, "w", 4, 3, 0, 0);
	put_chunk(dir, 1, "w", 4, 3, 0, 2);
	expect(dir, "tensor \"w\": chunks overlap in dim 1 [2, 3): the chunk at offsets [0, 0] in "
		    "shard-00001-model-00001-of-00001.safetensors and the chunk at offsets [0, 2] in "
		    "shard-00002-model-00001-of-00001.safetensors", NULL);
}

TEST(plan_generic_expert_names)
{
	CHECK(qv_plan_generic_name("model.layers.0.mlp.experts.gate_up_proj"));
	CHECK(qv_plan_generic_name("model.layers.0.mlp.experts.down_proj_bias"));
	CHECK(!qv_plan_generic_name("model.layers.0.mlp.experts.3.gate_proj.weight"));
	CHECK(!qv_plan_generic_name("model.layers.0.mlp.gate.weight"));
	CHECK(!qv_plan_generic_name("model.layers.0.mlp.experts."));
}
