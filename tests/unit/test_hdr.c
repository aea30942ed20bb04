/* test_hdr.c - synthesized bytes: virtual safetensors headers (checked by parsing them back with
 * the strict parser) and regenerated index files. */
#include "unit.h"
#include "util_test.h"

#include "qv_hdr.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

static uint64_t le64(const char *p)
{
	uint64_t v = 0;

	for (int i = 7; i >= 0; i--)
		v = v << 8 | (unsigned char)p[i];
	return v;
}

/* Check the framing of a built header and parse it back (exactly sized copy, data bytes of
 * tensor data after it). 0 when it parses. */
static int parse_back(const struct qv_buf *b, uint64_t data, struct qv_st *st, char *err,
		      size_t errlen)
{
	uint64_t n;

	memset(st, 0, sizeof(*st));
	if (!CHECK(b->len >= 8))
		return -1;
	n = le64(b->p);
	if (!CHECK_EQ_U64(n, b->len - 8) || !CHECK_EQ_U64(b->len % 8, 0))
		return -1;
	return ut_parse_n(b->p + 8, (size_t)n, data, st, err, errlen);
}

TEST(hdr_build_roundtrip)
{
	struct qv_meta meta[] = { { (char *)"zeta", (char *)"1" }, { (char *)"alpha", (char *)"2" } };
	struct qv_meta extra[] = { { (char *)"qvlmoefs.ep_size", (char *)"8" },
				   { (char *)"qvlmoefs.ep_rank", (char *)"3" } };
	struct qv_vtensor t[] = {
		{ .name = "w", .dtype = QV_DT_BF16, .ndim = 3, .shape = { 2, 3, 4 }, .size = 48 },
		{ .name = "a", .dtype = QV_DT_F32, .ndim = 1, .shape = { 5 }, .size = 20 },
		{ .name = "s", .dtype = QV_DT_I64, .ndim = 0, .size = 8 },
		{ .name = "e", .dtype = QV_DT_U8, .ndim = 2, .shape = { 0, 7 }, .size = 0 },
	};
	struct qv_buf b = { 0 };
	char err[QV_ERRLEN];
	struct qv_st st;

	if (!CHECK_EQ_INT(qv_hdr_build(meta, 2, extra, 2, t, 4, &b, err, sizeof(err)), 0))
		return;
	CHECK(memcmp(b.p + 8, "{\"__metadata__\":{", 17) == 0);
	if (CHECK_MSG(parse_back(&b, 76, &st, err, sizeof(err)) == 0, "%s", err)) {
		static const char *const keys[] = { "zeta", "alpha", "format", "qvlmoefs.ep_size",
						    "qvlmoefs.ep_rank" };
		static const char *const vals[] = { "1", "2", "pt", "8", "3" };

		if (CHECK_EQ_U64(st.nmeta, 5))
			for (size_t i = 0; i < 5; i++) {
				CHECK_STR(st.meta[i].key, keys[i]);
				CHECK_STR(st.meta[i].val, vals[i]);
			}
		if (CHECK_EQ_U64(st.nt, 4)) {
			uint64_t off = 0;

			for (size_t i = 0; i < 4; i++) {
				CHECK_STR(st.t[i].name, t[i].name); /* given order = data order */
				CHECK_EQ_INT(st.t[i].dtype, t[i].dtype);
				CHECK_EQ_U64(st.t[i].ndim, t[i].ndim);
				CHECK_MEM(st.t[i].shape, t[i].shape, t[i].ndim * sizeof(uint64_t));
				CHECK_EQ_U64(st.t[i].begin, off);
				off += t[i].size;
				CHECK_EQ_U64(st.t[i].end, off);
			}
		}
		qv_st_free(&st);
	}
	qv_buf_free(&b);
}

TEST(hdr_build_compact_and_space_padded)
{
	char err[QV_ERRLEN] = "";
	struct qv_vtensor t = { .name = "x", .dtype = QV_DT_F16, .ndim = 2, .shape = { 2, 2 },
				.size = 8 };
	struct qv_buf b = { 0 };
	const char *want = "{\"__metadata__\":{\"format\":\"pt\"},\"x\":{\"dtype\":\"F16\","
			   "\"shape\":[2,2],\"data_offsets\":[0,8]}}";
	size_t wl = strlen(want);

	if (!CHECK_EQ_INT(qv_hdr_build(NULL, 0, NULL, 0, &t, 1, &b, err, sizeof(err)), 0))
		return;
	if (CHECK(b.len >= 8 + wl)) {
		CHECK_MEM(b.p + 8, want, wl);
		for (size_t i = 8 + wl; i < b.len; i++)
			CHECK_MSG(b.p[i] == ' ', "byte %zu is 0x%02x, not a space", i,
				  (unsigned char)b.p[i]);
		CHECK(b.len - 8 - wl < 8); /* no more padding than needed */
	}
	qv_buf_free(&b);
}

TEST(hdr_build_padding_every_length)
{
	/* names of length 1..24 walk the JSON length through every residue mod 8 */
	for (size_t len = 1; len <= 24; len++) {
		char name[32];
		struct qv_vtensor t = { .name = name, .dtype = QV_DT_U8, .ndim = 1, .shape = { 3 },
					.size = 3 };
		struct qv_buf b = { 0 };
		char err[QV_ERRLEN];
		struct qv_st st;

		memset(name, 'n', len);
		name[len] = '\0';
		if (!CHECK_EQ_INT(qv_hdr_build(NULL, 0, NULL, 0, &t, 1, &b, err, sizeof(err)), 0))
			return;
		if (CHECK_MSG(parse_back(&b, 3, &st, err, sizeof(err)) == 0, "len %zu: %s", len, err)) {
			CHECK_STR(st.t[0].name, name);
			qv_st_free(&st);
		}
		qv_buf_free(&b);
	}
}

TEST(hdr_build_format_kept_when_present)
{
	struct qv_meta meta[] = { { (char *)"z", (char *)"1" }, { (char *)"format", (char *)"np" },
				  { (char *)"a", (char *)"2" } };
	struct qv_buf b = { 0 };
	char err[QV_ERRLEN];
	struct qv_st st;

	if (!CHECK_EQ_INT(qv_hdr_build(meta, 3, NULL, 0, NULL, 0, &b, err, sizeof(err)), 0))
		return;
	if (CHECK_MSG(parse_back(&b, 0, &st, err, sizeof(err)) == 0, "%s", err)) {
		if (CHECK_EQ_U64(st.nmeta, 3)) {
			CHECK_STR(st.meta[0].key, "z");
			CHECK_STR(st.meta[1].key, "format");
			CHECK_STR(st.meta[1].val, "np");
			CHECK_STR(st.meta[2].key, "a");
		}
		qv_st_free(&st);
	}
	qv_buf_free(&b);
}

TEST(hdr_build_empty)
{
	struct qv_buf b = { 0 };
	char err[QV_ERRLEN];
	struct qv_st st;

	if (!CHECK_EQ_INT(qv_hdr_build(NULL, 0, NULL, 0, NULL, 0, &b, err, sizeof(err)), 0))
		return;
	CHECK(b.len >= 8 + 32 && memcmp(b.p + 8, "{\"__metadata__\":{\"format\":\"pt\"}}", 32) == 0);
	if (CHECK_MSG(parse_back(&b, 0, &st, err, sizeof(err)) == 0, "%s", err)) {
		CHECK_EQ_U64(st.nt, 0);
		CHECK_EQ_U64(st.nmeta, 1);
		qv_st_free(&st);
	}
	qv_buf_free(&b);
}

TEST(hdr_build_reuses_buffer)
{
	struct qv_buf b = { 0 };
	char err[QV_ERRLEN];
	struct qv_st st;

	qv_buf_adds(&b, "stale bytes that must not survive");
	if (!CHECK_EQ_INT(qv_hdr_build(NULL, 0, NULL, 0, NULL, 0, &b, err, sizeof(err)), 0))
		return;
	if (CHECK_MSG(parse_back(&b, 0, &st, err, sizeof(err)) == 0, "%s", err))
		qv_st_free(&st);
	qv_buf_free(&b);
}

TEST(hdr_build_escapes_roundtrip)
{
	static const char *const names[] = {
		"q\"uote", "back\\slash", "new\nline", "tab\tctl\x01\x1f", "caf\xc3\xa9\xe2\x82\xac",
		"slash/and\\u0000text", "\x7f" "del",
	};
	enum { N = sizeof(names) / sizeof(names[0]) };
	struct qv_vtensor t[N];
	struct qv_meta meta[] = { { (char *)"k\"ey\\", (char *)"v\nal\x02" } };
	struct qv_buf b = { 0 };
	char err[QV_ERRLEN];
	struct qv_st st;

	for (size_t i = 0; i < N; i++)
		t[i] = (struct qv_vtensor){ .name = names[i], .dtype = QV_DT_U8, .ndim = 1,
					    .shape = { i + 1 }, .size = i + 1 };
	if (!CHECK_EQ_INT(qv_hdr_build(meta, 1, NULL, 0, t, N, &b, err, sizeof(err)), 0))
		return;
	for (size_t i = 8; i < b.len; i++)
		CHECK_MSG((unsigned char)b.p[i] >= 0x20, "raw control byte 0x%02x at %zu",
			  (unsigned char)b.p[i], i);
	if (CHECK_MSG(parse_back(&b, N * (N + 1) / 2, &st, err, sizeof(err)) == 0, "%s", err)) {
		if (CHECK_EQ_U64(st.nt, N))
			for (size_t i = 0; i < N; i++)
				CHECK_STR(st.t[i].name, names[i]);
		if (CHECK_EQ_U64(st.nmeta, 2)) {
			CHECK_STR(st.meta[0].key, "k\"ey\\");
			CHECK_STR(st.meta[0].val, "v\nal\x02");
		}
		qv_st_free(&st);
	}
	qv_buf_free(&b);
}

TEST(hdr_build_large_values)
{
	struct qv_vtensor t[] = {
		{ .name = "big", .dtype = QV_DT_U8, .ndim = 1, .shape = { 1ULL << 40 },
		  .size = 1ULL << 40 },
		{ .name = "next", .dtype = QV_DT_F64, .ndim = 2, .shape = { 1ULL << 20, 3 },
		  .size = 24ULL << 20 },
	};
	struct qv_buf b = { 0 };
	char err[QV_ERRLEN];
	struct qv_st st;

	if (!CHECK_EQ_INT(qv_hdr_build(NULL, 0, NULL, 0, t, 2, &b, err, sizeof(err)), 0))
		return;
	if (CHECK_MSG(parse_back(&b, (1ULL << 40) + (24ULL << 20), &st, err, sizeof(err)) == 0,
		      "%s", err)) {
		CHECK_EQ_U64(st.t[1].begin, 1ULL << 40);
		CHECK_EQ_U64(st.t[1].end, (1ULL << 40) + (24ULL << 20));
		qv_st_free(&st);
	}
	qv_buf_free(&b);
}

/* A header the strict parser would reject is never built: offsets that wrap, a shape past
 * 2^53, a shape whose bytes disagree with the size the view computed. */
TEST(hdr_build_refuses_what_the_parser_rejects)
{
	struct qv_vtensor wrap[] = {
		{ .name = "a", .dtype = QV_DT_U8, .ndim = 1, .shape = { 1 }, .size = UINT64_MAX },
		{ .name = "b", .dtype = QV_DT_U8, .ndim = 1, .shape = { 2 }, .size = 2 },
	};
	struct qv_vtensor past53 = { .name = "z", .dtype = QV_DT_BF16, .ndim = 2,
				     .shape = { 0, 1ULL << 54 }, .size = 0 };
	/* [2^43]^3 BF16 whose byte count wrapped to 0: what a hostile sharded save once made */
	struct qv_vtensor cube = { .name = "w", .dtype = QV_DT_BF16, .ndim = 3,
				   .shape = { 1ULL << 43, 1ULL << 43, 1ULL << 43 }, .size = 0 };
	struct qv_vtensor liar = { .name = "l", .dtype = QV_DT_F32, .ndim = 1, .shape = { 3 },
				   .size = 8 };
	struct qv_buf b = { 0 };
	char err[QV_ERRLEN] = "";

	CHECK_EQ_INT(qv_hdr_build(NULL, 0, NULL, 0, wrap, 2, &b, err, sizeof(err)), -EINVAL);
	CHECK_HAS(err, "tensor \"b\": data offsets overflow 64 bits");
	CHECK_EQ_INT(qv_hdr_build(NULL, 0, NULL, 0, &past53, 1, &b, err, sizeof(err)), -EINVAL);
	CHECK_HAS(err, "fails the strict parser");
	CHECK_HAS(err, "2^53");
	CHECK_EQ_INT(qv_hdr_build(NULL, 0, NULL, 0, &cube, 1, &b, err, sizeof(err)), -EINVAL);
	CHECK_HAS(err, "fails the strict parser");
	CHECK_EQ_INT(qv_hdr_build(NULL, 0, NULL, 0, &liar, 1, &b, err, sizeof(err)), -EINVAL);
	CHECK_HAS(err, "shape x dtype");
	qv_buf_free(&b);
}

/* ---- index ---- */

static cJSON *parse_json(const struct qv_buf *b)
{
	return cJSON_ParseWithLength(b->p, b->len);
}

TEST(hdr_index_basic)
{
	const char *src = "{\"metadata\":{\"total_size\":12345,\"foo\":\"bar\",\"n\":[1,{\"x\":2}]},"
			  "\"weight_map\":{\"a\":\"m-1.safetensors\",\"b\":\"m-2.safetensors\"}}";
	struct qv_wentry w[] = { { "z.key", "m-2.safetensors" }, { "a.key", "m-1.safetensors" },
				 { "m.key", "m-1.safetensors" } };
	char *copy = ut_exact(src, strlen(src));
	struct qv_buf b = { 0 };
	char err[QV_ERRLEN] = "";
	cJSON *root, *md, *wm, *c;

	if (!CHECK_MSG(qv_hdr_index(copy, strlen(src), w, 3, 999, &b, err, sizeof(err)) == 0, "%s",
		       err))
		goto out;
	root = parse_json(&b);
	if (!CHECK_MSG(root != NULL, "output is not JSON: %s", b.p))
		goto out;
	md = cJSON_GetObjectItemCaseSensitive(root, "metadata");
	c = cJSON_GetObjectItemCaseSensitive(md, "total_size");
	CHECK(cJSON_IsNumber(c) && c->valuedouble == 999);
	c = cJSON_GetObjectItemCaseSensitive(md, "foo");
	CHECK(cJSON_IsString(c) && strcmp(c->valuestring, "bar") == 0);
	c = cJSON_GetObjectItemCaseSensitive(md, "n");
	CHECK(cJSON_IsArray(c) && cJSON_GetArraySize(c) == 2);
	/* metadata order kept */
	CHECK(md && md->child && strcmp(md->child->string, "total_size") == 0);
	wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
	if (CHECK(cJSON_IsObject(wm)) && CHECK_EQ_INT(cJSON_GetArraySize(wm), 3)) {
		static const char *const keys[] = { "a.key", "m.key", "z.key" };
		static const char *const files[] = { "m-1.safetensors", "m-1.safetensors",
						     "m-2.safetensors" };
		size_t i = 0;

		for (c = wm->child; c; c = c->next, i++) {
			CHECK_STR(c->string, keys[i]);
			CHECK_STR(c->valuestring, files[i]);
		}
	}
	/* source entries never leak into the regenerated map */
	CHECK(!cJSON_GetObjectItemCaseSensitive(wm, "a"));
	CHECK(strstr(b.p, ": ") == NULL); /* compact */
	cJSON_Delete(root);
out:
	qv_buf_free(&b);
	free(copy);
}

TEST(hdr_index_total_size_added_when_absent)
{
	static const char *const srcs[] = {
		"{\"metadata\":{\"foo\":\"bar\"},\"weight_map\":{}}",
		"{\"weight_map\":{}}",
		"{\"metadata\":{},\"weight_map\":{}}",
	};

	for (size_t i = 0; i < 3; i++) {
		char *copy = ut_exact(srcs[i], strlen(srcs[i]));
		struct qv_buf b = { 0 };
		char err[QV_ERRLEN] = "";
		cJSON *root, *c;

		struct qv_wentry none[1];

		if (CHECK_MSG(qv_hdr_index(copy, strlen(srcs[i]), none, 0, 42, &b, err,
					   sizeof(err)) == 0,
			      "%s", err)) {
			root = parse_json(&b);
			if (CHECK_MSG(root != NULL, "not JSON: %s", b.p)) {
				c = cJSON_GetObjectItemCaseSensitive(
					cJSON_GetObjectItemCaseSensitive(root, "metadata"),
					"total_size");
				CHECK(cJSON_IsNumber(c) && c->valuedouble == 42);
				CHECK(cJSON_IsObject(
					cJSON_GetObjectItemCaseSensitive(root, "weight_map")));
				cJSON_Delete(root);
			}
		}
		qv_buf_free(&b);
		free(copy);
	}
}

/* No entries may come as (NULL, 0). Passing NULL to qsort is undefined behaviour even for 0
 * elements: under SAN=1, UBSan reports src/hdr.c's qsort here; the result itself is right. */
TEST(hdr_index_null_entries)
{
	const char *src = "{\"weight_map\":{\"a\":\"x.safetensors\"}}";
	struct qv_buf b = { 0 };
	char err[QV_ERRLEN] = "";

	if (CHECK_EQ_INT(qv_hdr_index(src, strlen(src), NULL, 0, 0, &b, err, sizeof(err)), 0))
		CHECK_HAS(b.p, "\"weight_map\":{}");
	qv_buf_free(&b);
}

TEST(hdr_index_escapes_keys)
{
	const char *src = "{\"weight_map\":{}}";
	struct qv_wentry w[] = { { "we\"ird\\key\n", "f.safetensors" } };
	struct qv_buf b = { 0 };
	char err[QV_ERRLEN];
	cJSON *root;

	if (!CHECK_EQ_INT(qv_hdr_index(src, strlen(src), w, 1, 1, &b, err, sizeof(err)), 0))
		return;
	root = parse_json(&b);
	if (CHECK(root)) {
		cJSON *wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");

		CHECK(wm && wm->child && strcmp(wm->child->string, "we\"ird\\key\n") == 0);
		cJSON_Delete(root);
	}
	qv_buf_free(&b);
}

TEST(hdr_index_files_unique_sorted)
{
	const char *src = "{\"metadata\":{},\"weight_map\":{\"a\":\"m-3.safetensors\","
			  "\"b\":\"m-1.safetensors\",\"c\":\"m-3.safetensors\","
			  "\"d\":\"m-2.safetensors\",\"e\":\"m-1.safetensors\"}}";
	char *copy = ut_exact(src, strlen(src));
	char **files = NULL, err[QV_ERRLEN] = "";
	size_t n = 0;

	if (CHECK_MSG(qv_hdr_index_files(copy, strlen(src), &files, &n, err, sizeof(err)) == 0,
		      "%s", err) &&
	    CHECK_EQ_U64(n, 3)) {
		CHECK_STR(files[0], "m-1.safetensors");
		CHECK_STR(files[1], "m-2.safetensors");
		CHECK_STR(files[2], "m-3.safetensors");
	}
	for (size_t i = 0; i < n; i++)
		free(files[i]);
	free(files);
	free(copy);
}

TEST(hdr_index_files_empty_map)
{
	const char *src = "{\"weight_map\":{}}";
	char **files = NULL, err[QV_ERRLEN] = "";
	size_t n = 9;

	CHECK_EQ_INT(qv_hdr_index_files(src, strlen(src), &files, &n, err, sizeof(err)), 0);
	CHECK_EQ_U64(n, 0);
	free(files);
}

TEST(hdr_index_malformed)
{
	static const struct {
		const char *json, *word;
	} bad[] = {
		{ "{\"weight_map\":{\"a\":\"x\"", "JSON" }, /* truncated */
		{ "[1,2]", "object" },
		{ "", "object" },
		{ "{\"metadata\":{}}", "weight_map" },
		{ "{\"weight_map\":[\"a\"]}", "weight_map" },
		{ "{\"Weight_map\":{}}", "weight_map" }, /* lookups are case-sensitive */
		{ "{\"weight_map\":{\"k1\":3}}", "k1" },
		{ "{\"weight_map\":{\"k2\":\"sub/x.safetensors\"}}", "k2" },
		{ "{\"weight_map\":{\"k3\":\"\"}}", "k3" },
		{ "{\"weight_map\":{\"k4\":null}}", "k4" },
	};

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		size_t len = strlen(bad[i].json);
		char *copy = ut_exact(bad[i].json, len);
		char **files = NULL, err[QV_ERRLEN] = "";
		struct qv_buf b = { 0 };
		size_t n = 0;

		CHECK_MSG(qv_hdr_index_files(copy, len, &files, &n, err, sizeof(err)) == -EINVAL,
			  "index_files accepted %s", bad[i].json);
		CHECK_MSG(strcasestr(err, bad[i].word) || strcasestr(err, "index"),
			  "%s: reason \"%s\"", bad[i].json, err);
		CHECK(files == NULL && n == 0);
		err[0] = '\0';
		CHECK_MSG(qv_hdr_index(copy, len, NULL, 0, 0, &b, err, sizeof(err)) == -EINVAL,
			  "index accepted %s", bad[i].json);
		CHECK_MSG(err[0] != '\0', "%s: no reason", bad[i].json);
		qv_buf_free(&b);
		free(copy);
	}
}

TEST(hdr_index_bad_entry_names_key)
{
	const char *src = "{\"weight_map\":{\"good\":\"a.safetensors\",\"the.bad.key\":7}}";
	char **files = NULL, err[QV_ERRLEN] = "";
	size_t n = 0;

	CHECK_EQ_INT(qv_hdr_index_files(src, strlen(src), &files, &n, err, sizeof(err)), -EINVAL);
	CHECK_HAS(err, "the.bad.key");
}

/* json.load (transformers) refuses text after the object: a malformed index. */
TEST(hdr_index_garbage_after_json)
{
	const char *src = "{\"weight_map\":{\"a\":\"x.safetensors\"}} trailing";
	char **files = NULL, err[QV_ERRLEN] = "";
	size_t n = 0;
	int rc = qv_hdr_index_files(src, strlen(src), &files, &n, err, sizeof(err));

	CHECK_EQ_INT(rc, -EINVAL);
	for (size_t i = 0; i < n; i++)
		free(files[i]);
	free(files);
}

/* A rank folder copied out of a mount holds the qvlmoefs.ep_* keys already: slicing it again
 * must say what the new view holds, once, not two values for one key (which the strict parser
 * refuses: every rank folder answered EIO). */
TEST(hdr_build_view_keys_replace_source_keys)
{
	struct qv_meta meta[] = { { (char *)"qvlmoefs.ep_rank", (char *)"1" },
				  { (char *)"origin", (char *)"copy" },
				  { (char *)"qvlmoefs.expert_start", (char *)"4" } };
	struct qv_meta extra[] = { { (char *)"qvlmoefs.ep_rank", (char *)"0" },
				   { (char *)"qvlmoefs.expert_start", (char *)"0" } };
	static const char *const keys[] = { "origin", "format", "qvlmoefs.ep_rank",
					    "qvlmoefs.expert_start" };
	static const char *const vals[] = { "copy", "pt", "0", "0" };
	struct qv_buf b = { 0 };
	char err[QV_ERRLEN] = "";
	struct qv_st st;

	if (!CHECK_MSG(qv_hdr_build(meta, 3, extra, 2, NULL, 0, &b, err, sizeof(err)) == 0, "%s",
		       err))
		goto out;
	if (CHECK_MSG(parse_back(&b, 0, &st, err, sizeof(err)) == 0, "%s", err)) {
		if (CHECK_EQ_U64(st.nmeta, 4))
			for (size_t i = 0; i < 4; i++) {
				CHECK_STR(st.meta[i].key, keys[i]);
				CHECK_STR(st.meta[i].val, vals[i]);
			}
		qv_st_free(&st);
	}
out:
	qv_buf_free(&b);
}

struct each_seen {
	char keys[128], files[256];
	int stop_at, calls;
};

static int each_record(void *arg, const char *key, const char *file)
{
	struct each_seen *s = arg;

	strcat(s->keys, key);
	strcat(s->files, file);
	strcat(s->files, ",");
	return ++s->calls == s->stop_at ? -EEXIST : 0;
}

/* Every weight_map entry, in the index's order, until the callback says stop. */
TEST(hdr_index_each_entries_in_order)
{
	const char *src = "{\"metadata\":{},\"weight_map\":{\"c\":\"m-2.safetensors\","
			  "\"a\":\"m-1.safetensors\",\"b\":\"m-2.safetensors\"}}";
	struct each_seen all = { .stop_at = -1 }, two = { .stop_at = 2 };
	char err[QV_ERRLEN] = "";

	CHECK_EQ_INT(qv_hdr_index_each(src, strlen(src), each_record, &all, err, sizeof(err)), 0);
	CHECK_STR(all.keys, "cab");
	CHECK_STR(all.files, "m-2.safetensors,m-1.safetensors,m-2.safetensors,");
	CHECK_EQ_INT(qv_hdr_index_each(src, strlen(src), each_record, &two, err, sizeof(err)),
		     -EEXIST);
	CHECK_STR(two.keys, "ca");
}

TEST(hdr_index_each_malformed)
{
	const char *src = "{\"weight_map\":{\"k\":\"sub/x.safetensors\"}}";
	struct each_seen s = { .stop_at = -1 };
	char err[QV_ERRLEN] = "";

	CHECK_EQ_INT(qv_hdr_index_each(src, strlen(src), each_record, &s, err, sizeof(err)),
		     -EINVAL);
	CHECK_HAS(err, "\"k\"");
	CHECK_EQ_INT(s.calls, 0);
}
