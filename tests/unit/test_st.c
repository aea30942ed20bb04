/* test_st.c - the strict safetensors header parser (DESIGN §6). Every parse goes through an
 * exactly sized heap copy without a terminator, so ASan flags any read past the header. */
#include "unit.h"
#include "util_test.h"

#include "qv_st.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Parse json in a file with data bytes of data; expect -EINVAL, a reason mentioning word, and
 * nothing half-built left in the result. */
#define EXPECT_BAD(json, data, word)                                                   \
	do {                                                                           \
		struct qv_st st_;                                                      \
		char e_[QV_ERRLEN];                                                    \
		CHECK_EQ_INT(ut_parse((json), (data), &st_, e_, sizeof(e_)), -EINVAL); \
		CHECK_HAS(e_, (word));                                                 \
		CHECK(st_.t == NULL && st_.nt == 0 && st_.meta == NULL);               \
		qv_st_free(&st_);                                                      \
	} while (0)

#define T_F32_2x3(off) "{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[" off "]}"

TEST(st_valid_header)
{
	const char *j = "{\"__metadata__\":{\"format\":\"pt\",\"note\":\"hi\"},"
			"\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
			"\"b\":{\"dtype\":\"BF16\",\"shape\":[4],\"data_offsets\":[24,32]},"
			"\"s\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[32,40]}}";
	char err[QV_ERRLEN];
	struct qv_st st;

	if (!CHECK_EQ_INT(ut_parse(j, 40, &st, err, sizeof(err)), 0))
		return;
	CHECK_EQ_U64(st.hdr_len, strlen(j));
	CHECK_EQ_U64(st.data_size, 40);
	if (CHECK_EQ_U64(st.nt, 3)) {
		CHECK_STR(st.t[0].name, "w");
		CHECK_EQ_INT(st.t[0].dtype, QV_DT_F32);
		CHECK_EQ_U64(st.t[0].ndim, 2);
		CHECK_EQ_U64(st.t[0].shape[0], 2);
		CHECK_EQ_U64(st.t[0].shape[1], 3);
		CHECK_EQ_U64(st.t[0].begin, 0);
		CHECK_EQ_U64(st.t[0].end, 24);
		CHECK_STR(st.t[1].name, "b");
		CHECK_EQ_INT(st.t[1].dtype, QV_DT_BF16);
		CHECK_EQ_U64(st.t[1].ndim, 1);
		CHECK_EQ_U64(st.t[1].begin, 24);
		CHECK_STR(st.t[2].name, "s");
		CHECK_EQ_U64(st.t[2].ndim, 0); /* a scalar is one element */
		CHECK_EQ_U64(st.t[2].end, 40);
	}
	if (CHECK_EQ_U64(st.nmeta, 2)) {
		CHECK_STR(st.meta[0].key, "format");
		CHECK_STR(st.meta[0].val, "pt");
		CHECK_STR(st.meta[1].key, "note");
		CHECK_STR(st.meta[1].val, "hi");
	}
	qv_st_free(&st);
	CHECK(st.t == NULL && st.nt == 0 && st.meta == NULL); /* free resets */
	qv_st_free(&st);				      /* and is safe twice */
}

TEST(st_dtype_table)
{
	static const char *const names[QV_DT_COUNT] = {
		"BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0", "I16", "U16", "F16",
		"BF16", "I32", "U32", "F32", "F64", "I64", "U64", "C64", "F8_E4M3FNUZ",
		"F8_E5M2FNUZ"
	};
	static const unsigned sizes[QV_DT_COUNT] = { 1, 1, 1, 1, 1, 1, 2, 2, 2, 2,
						     4, 4, 4, 8, 8, 8, 8, 1, 1 };

	for (int d = 0; d < QV_DT_COUNT; d++) {
		char j[160], err[QV_ERRLEN];
		struct qv_st st;

		CHECK_STR(qv_dtype_name((enum qv_dtype)d), names[d]);
		CHECK_EQ_U64(qv_dtype_size((enum qv_dtype)d), sizes[d]);
		snprintf(j, sizeof(j), "{\"t\":{\"dtype\":\"%s\",\"shape\":[3],\"data_offsets\":[0,%u]}}",
			 names[d], 3 * sizes[d]);
		if (CHECK_MSG(ut_parse(j, 3 * sizes[d], &st, err, sizeof(err)) == 0, "%s: %s",
			      names[d], err))
			CHECK_EQ_INT(st.t[0].dtype, d);
		qv_st_free(&st);
	}
}

TEST(st_data_order_sorted)
{
	/* JSON order c, a, b; data order a, b, c */
	const char *j = "{\"c\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[10,14]},"
			"\"a\":{\"dtype\":\"U8\",\"shape\":[6],\"data_offsets\":[0,6]},"
			"\"b\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[6,10]}}";
	char err[QV_ERRLEN];
	struct qv_st st;

	if (!CHECK_EQ_INT(ut_parse(j, 14, &st, err, sizeof(err)), 0))
		return;
	if (CHECK_EQ_U64(st.nt, 3)) {
		CHECK_STR(st.t[0].name, "a");
		CHECK_STR(st.t[1].name, "b");
		CHECK_STR(st.t[2].name, "c");
		CHECK_EQ_U64(st.t[2].begin, 10);
	}
	qv_st_free(&st);
}

TEST(st_no_metadata)
{
	char err[QV_ERRLEN];
	struct qv_st st;

	if (!CHECK_EQ_INT(ut_parse("{\"x\":" T_F32_2x3("0,24") "}", 24, &st, err, sizeof(err)), 0))
		return;
	CHECK(st.meta == NULL);
	CHECK_EQ_U64(st.nmeta, 0);
	CHECK_EQ_U64(st.nt, 1);
	qv_st_free(&st);
}

TEST(st_empty_metadata_and_no_tensors)
{
	char err[QV_ERRLEN];
	struct qv_st st;

	if (!CHECK_EQ_INT(ut_parse("{\"__metadata__\":{}}", 0, &st, err, sizeof(err)), 0))
		return;
	CHECK_EQ_U64(st.nt, 0);
	CHECK_EQ_U64(st.nmeta, 0);
	qv_st_free(&st);
	CHECK_EQ_INT(ut_parse("{}", 0, &st, err, sizeof(err)), 0);
	qv_st_free(&st);
}

TEST(st_unpadded_header)
{
	const char *j = "{\"ab\":{\"dtype\":\"U8\",\"shape\":[3],\"data_offsets\":[0,3]}}";
	char err[QV_ERRLEN];
	struct qv_st st;

	CHECK((8 + strlen(j)) % 8 != 0); /* the point of the test */
	if (!CHECK_EQ_INT(ut_parse(j, 3, &st, err, sizeof(err)), 0))
		return;
	CHECK_EQ_U64(st.hdr_len, strlen(j));
	CHECK_EQ_U64(st.data_size, 3);
	qv_st_free(&st);
}

TEST(st_trailing_spaces_allowed)
{
	char err[QV_ERRLEN];
	struct qv_st st;

	if (!CHECK_EQ_INT(ut_parse("{\"x\":" T_F32_2x3("0,24") "}       ", 24, &st, err,
				   sizeof(err)),
			  0))
		return;
	CHECK_EQ_U64(st.nt, 1);
	CHECK_EQ_U64(st.data_size, 24);
	qv_st_free(&st);
}

TEST(st_zero_size_tensors_allowed)
{
	const char *j = "{\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]},"
			"\"z\":{\"dtype\":\"F32\",\"shape\":[0,5],\"data_offsets\":[4,4]},"
			"\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
			"\"e\":{\"dtype\":\"BF16\",\"shape\":[3,0],\"data_offsets\":[8,8]}}";
	char err[QV_ERRLEN];
	struct qv_st st;

	if (!CHECK_EQ_INT(ut_parse(j, 8, &st, err, sizeof(err)), 0))
		return;
	if (CHECK_EQ_U64(st.nt, 4)) {
		CHECK_STR(st.t[0].name, "a");
		CHECK_STR(st.t[1].name, "z");
		CHECK_STR(st.t[2].name, "b");
		CHECK_STR(st.t[3].name, "e");
	}
	qv_st_free(&st);
	/* a file of only empty tensors has no data at all */
	CHECK_EQ_INT(ut_parse("{\"z\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[0,0]}}", 0,
			      &st, err, sizeof(err)),
		     0);
	qv_st_free(&st);
}

TEST(st_offset_2p53_accepted)
{
	/* 2^53 is the largest integer a double holds exactly: allowed (file_size is only a number) */
	const char *j = "{\"x\":{\"dtype\":\"U8\",\"shape\":[9007199254740992],"
			"\"data_offsets\":[0,9007199254740992]}}";
	char err[QV_ERRLEN];
	struct qv_st st;

	if (!CHECK_MSG(ut_parse(j, 9007199254740992ULL, &st, err, sizeof(err)) == 0, "%s", err))
		return;
	CHECK_EQ_U64(st.t[0].end, 9007199254740992ULL);
	qv_st_free(&st);
}

TEST(st_bad_json)
{
	EXPECT_BAD("{\"x\":", 0, "JSON");
	EXPECT_BAD("{\"x\":{\"dtype\":\"U8\",}}", 0, "JSON");
	EXPECT_BAD("{'x':1}", 0, "JSON");
}

TEST(st_not_an_object)
{
	EXPECT_BAD("[1,2,3]", 0, "{");
	EXPECT_BAD("\"str\"", 0, "{");
	EXPECT_BAD("", 0, "{");
}

TEST(st_bom_rejected)
{
	EXPECT_BAD("\xEF\xBB\xBF{\"x\":" T_F32_2x3("0,24") "}", 24, "{");
}

TEST(st_leading_space_rejected)
{
	EXPECT_BAD(" {\"x\":" T_F32_2x3("0,24") "}", 24, "{");
}

TEST(st_duplicate_tensor_key)
{
	EXPECT_BAD("{\"x\":" T_F32_2x3("0,24") ",\"y\":" T_F32_2x3("24,48") ",\"x\":" T_F32_2x3(
			   "48,72") "}",
		   72, "duplicate");
	EXPECT_BAD("{\"dupname\":" T_F32_2x3("0,24") ",\"dupname\":" T_F32_2x3("24,48") "}", 48,
		   "dupname");
}

TEST(st_duplicate_metadata_key)
{
	EXPECT_BAD("{\"__metadata__\":{\"k\":\"1\",\"k\":\"2\"},\"x\":" T_F32_2x3("0,24") "}", 24,
		   "duplicate __metadata__ key");
	/* two __metadata__ objects are a duplicate tensor-level key */
	EXPECT_BAD("{\"__metadata__\":{},\"x\":" T_F32_2x3("0,24") ",\"__metadata__\":{}}", 24,
		   "__metadata__");
}

TEST(st_duplicate_field_in_tensor)
{
	EXPECT_BAD("{\"x\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[2,3],"
		   "\"data_offsets\":[0,24]}}",
		   24, "duplicate field \"dtype\"");
	EXPECT_BAD("{\"x\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24],"
		   "\"shape\":[6]}}",
		   24, "shape");
}

TEST(st_unknown_dtype)
{
	EXPECT_BAD("{\"x\":{\"dtype\":\"F33\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "F33");
	EXPECT_BAD("{\"x\":{\"dtype\":\"f32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "dtype");
	EXPECT_BAD("{\"x\":{\"dtype\":4,\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "dtype");
}

TEST(st_missing_dtype)
{
	EXPECT_BAD("{\"x\":{\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "missing dtype");
}

TEST(st_missing_shape)
{
	EXPECT_BAD("{\"x\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}", 8, "missing shape");
}

TEST(st_missing_data_offsets)
{
	EXPECT_BAD("{\"x\":{\"dtype\":\"F32\",\"shape\":[2]}}", 8, "missing data_offsets");
}

TEST(st_unknown_field)
{
	EXPECT_BAD("{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8],\"foo\":1}}", 8,
		   "unknown field \"foo\"");
}

TEST(st_case_variant_field)
{
	EXPECT_BAD("{\"x\":{\"Dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "Dtype");
	EXPECT_BAD("{\"x\":{\"dtype\":\"F32\",\"Shape\":[2],\"shape\":[2],\"data_offsets\":[0,8]}}",
		   8, "Shape");
}

TEST(st_tensor_not_an_object)
{
	EXPECT_BAD("{\"x\":[1,2]}", 0, "not an object");
	EXPECT_BAD("{\"__metadata__\":[],\"x\":" T_F32_2x3("0,24") "}", 24, "__metadata__");
}

TEST(st_shape_not_integers)
{
	EXPECT_BAD("{\"x\":{\"dtype\":\"U8\",\"shape\":[2.5],\"data_offsets\":[0,2]}}", 2, "shape");
	EXPECT_BAD("{\"x\":{\"dtype\":\"U8\",\"shape\":[-2],\"data_offsets\":[0,2]}}", 2, "shape");
	EXPECT_BAD("{\"x\":{\"dtype\":\"U8\",\"shape\":2,\"data_offsets\":[0,2]}}", 2, "shape");
	EXPECT_BAD("{\"x\":{\"dtype\":\"U8\",\"shape\":[\"2\"],\"data_offsets\":[0,2]}}", 2,
		   "shape");
}

TEST(st_too_many_dims)
{
	EXPECT_BAD("{\"x\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1],"
		   "\"data_offsets\":[0,1]}}",
		   1, "dimensions");
}

TEST(st_offset_not_integer)
{
	EXPECT_BAD("{\"x\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,1.5]}}", 2,
		   "data_offsets");
	EXPECT_BAD("{\"x\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0.5,2]}}", 2,
		   "data_offsets");
	EXPECT_BAD("{\"x\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[\"0\",2]}}", 2,
		   "data_offsets");
}

/* "integer offsets" (DESIGN §6): the official reader deserializes offsets and shapes as u64 and
 * refuses float literals such as 24.0 or 2.4e1, even when their value is whole. */
TEST(st_float_literal_rejected)
{
	EXPECT_BAD("{\"x\":{\"dtype\":\"U8\",\"shape\":[24],\"data_offsets\":[0,24.0]}}", 24,
		   "data_offsets");
	EXPECT_BAD("{\"x\":{\"dtype\":\"U8\",\"shape\":[24],\"data_offsets\":[0,2.4e1]}}", 24,
		   "data_offsets");
	EXPECT_BAD("{\"x\":{\"dtype\":\"U8\",\"shape\":[2.4e1],\"data_offsets\":[0,24]}}", 24,
		   "shape");
}

TEST(st_offset_negative)
{
	EXPECT_BAD("{\"x\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[-1,1]}}", 2,
		   "data_offsets");
}

TEST(st_offsets_wrong_arity_or_reversed)
{
	EXPECT_BAD("{\"x\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0]}}", 2,
		   "data_offsets");
	EXPECT_BAD("{\"x\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2,4]}}", 2,
		   "data_offsets");
	EXPECT_BAD("{\"x\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[2,0]}}", 2,
		   "data_offsets");
}

TEST(st_offset_above_2p53)
{
	EXPECT_BAD("{\"x\":{\"dtype\":\"U8\",\"shape\":[2],"
		   "\"data_offsets\":[9007199254740994,9007199254740996]}}",
		   9007199254740996ULL, "data_offsets");
	EXPECT_BAD("{\"x\":{\"dtype\":\"U8\",\"shape\":[9007199254740994],"
		   "\"data_offsets\":[0,9007199254740994]}}",
		   9007199254740994ULL, "2^53");
	EXPECT_BAD("{\"x\":{\"dtype\":\"U8\",\"shape\":[1],"
		   "\"data_offsets\":[18446744073709551616,18446744073709551617]}}",
		   1, "data_offsets");
}

/* 2^53 + 1 has no double: strtod rounds it to 2^53. The header below claims 2^53 + 1 data
 * bytes but the file holds 2^53; a parser that keeps its "<= 2^53" promise refuses it, one
 * that rounds silently accepts offsets past the end of the file. */
TEST(st_offset_2p53_plus_1_rejected)
{
	EXPECT_BAD("{\"x\":{\"dtype\":\"U8\",\"shape\":[9007199254740993],"
		   "\"data_offsets\":[0,9007199254740993]}}",
		   9007199254740992ULL, "");
}

TEST(st_shape_bytes_mismatch)
{
	EXPECT_BAD("{\"x\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,23]}}", 23,
		   "shape x dtype");
	EXPECT_BAD("{\"x\":{\"dtype\":\"BF16\",\"shape\":[4],\"data_offsets\":[0,4]}}", 4, "bytes");
}

TEST(st_size_overflow)
{
	EXPECT_BAD("{\"x\":{\"dtype\":\"F32\",\"shape\":[1099511627776,1099511627776,"
		   "1099511627776],\"data_offsets\":[0,0]}}",
		   0, "overflow");
	/* 2^62 elements of 4 bytes overflow too, even though the element count does not */
	EXPECT_BAD("{\"x\":{\"dtype\":\"F32\",\"shape\":[4194304,1099511627776],"
		   "\"data_offsets\":[0,0]}}",
		   0, "overflow");
}

TEST(st_hole_between_tensors)
{
	EXPECT_BAD("{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
		   "\"b\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[6,10]}}",
		   10, "hole");
	/* a hole at the very start */
	EXPECT_BAD("{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[2,6]}}", 6, "hole");
}

TEST(st_overlap)
{
	EXPECT_BAD("{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
		   "\"b\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[2,6]}}",
		   6, "overlap");
	/* two tensors sharing one range */
	EXPECT_BAD("{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
		   "\"b\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]}}",
		   4, "overlap");
}

TEST(st_offsets_past_eof)
{
	EXPECT_BAD("{\"a\":{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[0,8]}}", 5, "past end");
}

TEST(st_trailing_data_bytes)
{
	EXPECT_BAD("{\"a\":{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[0,8]}}", 9, "trailing");
	EXPECT_BAD("{}", 1, "trailing");
}

TEST(st_invalid_utf8)
{
	static const char *const bad[] = {
		"{\"a\xff\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[0,0]}}",
		"{\"a\xc0\xaf\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[0,0]}}",	/* overlong */
		"{\"a\xed\xa0\x80\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[0,0]}}", /* surrogate */
		"{\"a\xe2\x82\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[0,0]}}",	/* cut short */
		"{\"__metadata__\":{\"k\":\"\x80\"}}",
	};

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		EXPECT_BAD(bad[i], 0, "UTF-8");
	/* a truncated sequence at the very end of the buffer must not be read past */
	EXPECT_BAD("{}\xe2", 0, "UTF-8");
}

TEST(st_valid_utf8_names)
{
	const char *j = "{\"caf\xc3\xa9.\xe2\x82\xac.\xf0\x9f\x98\x80\":{\"dtype\":\"U8\","
			"\"shape\":[1],\"data_offsets\":[0,1]}}";
	char err[QV_ERRLEN];
	struct qv_st st;

	if (!CHECK_MSG(ut_parse(j, 1, &st, err, sizeof(err)) == 0, "%s", err))
		return;
	CHECK_STR(st.t[0].name, "caf\xc3\xa9.\xe2\x82\xac.\xf0\x9f\x98\x80");
	qv_st_free(&st);
}

TEST(st_escaped_nul_in_name)
{
	EXPECT_BAD("{\"a\\u0000b\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[0,0]}}", 0,
		   "u0000");
	EXPECT_BAD("{\"__metadata__\":{\"k\":\"v\\u0000\"}}", 0, "u0000");
}

TEST(st_escaped_backslash_then_u0000_text_allowed)
{
	/* "a\\u0000" is the 7 characters a \ u 0 0 0 0: legal */
	const char *j = "{\"a\\\\u0000\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[0,0]}}";
	char err[QV_ERRLEN];
	struct qv_st st;

	if (!CHECK_MSG(ut_parse(j, 0, &st, err, sizeof(err)) == 0, "%s", err))
		return;
	CHECK_STR(st.t[0].name, "a\\u0000");
	qv_st_free(&st);
}

/* A raw NUL inside a JSON string is invalid JSON (control characters must be escaped) and, like
 * \u0000, would silently truncate the name ("a\0b" -> "a"). */
TEST(st_raw_nul_byte_rejected)
{
	static const char j[] = "{\"a\0b\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[0,0]}}";
	char err[QV_ERRLEN];
	struct qv_st st;

	CHECK_EQ_INT(ut_parse_n(j, sizeof(j) - 1, 0, &st, err, sizeof(err)), -EINVAL);
	CHECK(st.nt == 0);
	qv_st_free(&st);
}

/* Raw control characters (U+0000..U+001F) inside strings are not JSON. */
TEST(st_raw_control_char_rejected)
{
	EXPECT_BAD("{\"a\nb\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[0,0]}}", 0, "");
	EXPECT_BAD("{\"__metadata__\":{\"k\":\"v\x01\"}}", 0, "");
}

TEST(st_empty_name_rejected)
{
	EXPECT_BAD("{\"\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[0,0]}}", 0, "empty");
}

TEST(st_metadata_value_not_string)
{
	EXPECT_BAD("{\"__metadata__\":{\"n\":3},\"x\":" T_F32_2x3("0,24") "}", 24, "not a string");
	EXPECT_BAD("{\"__metadata__\":{\"n\":null}}", 0, "\"n\"");
	EXPECT_BAD("{\"__metadata__\":{\"n\":{\"a\":\"b\"}}}", 0, "not a string");
}

TEST(st_garbage_after_json)
{
	EXPECT_BAD("{\"x\":" T_F32_2x3("0,24") "}x", 24, "garbage");
	EXPECT_BAD("{\"x\":" T_F32_2x3("0,24") "}  {}", 24, "garbage");
}

TEST(st_nul_padding_after_json_rejected)
{
	static const char j[] = "{}\0\0\0\0\0\0";
	char err[QV_ERRLEN];
	struct qv_st st;

	CHECK_EQ_INT(ut_parse_n(j, sizeof(j) - 1, 0, &st, err, sizeof(err)), -EINVAL);
	CHECK_HAS(err, "garbage");
	qv_st_free(&st);
}

TEST(st_header_len_over_limit)
{
	char err[QV_ERRLEN] = "";
	char small[2] = { '{', '}' };
	struct qv_st st;

	/* the length is refused before a byte of the header is looked at */
	CHECK_EQ_INT(qv_st_parse(small, QV_ST_MAX_HEADER + 1, QV_ST_MAX_HEADER + 100, &st, err,
				 sizeof(err)),
		     -EINVAL);
	CHECK_HAS(err, "100000000");
	qv_st_free(&st);
}

TEST(st_header_len_past_eof)
{
	char err[QV_ERRLEN] = "";
	char *h = ut_exact("{}", 2);
	struct qv_st st;

	CHECK_EQ_INT(qv_st_parse(h, 2, 9, &st, err, sizeof(err)), -EINVAL);
	CHECK_HAS(err, "past end");
	CHECK_EQ_INT(qv_st_parse(h, 2, 4, &st, err, sizeof(err)), -EINVAL);
	CHECK_EQ_INT(qv_st_parse(h, 2, 10, &st, err, sizeof(err)), 0);
	qv_st_free(&st);
	free(h);
}

/* Open path read-only, read its header with qv_st_read_fd against the real size. */
static int read_st_file(const char *path, struct qv_st *st, char *err, size_t errlen)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	off_t size;
	int rc;

	if (fd < 0)
		return -errno;
	size = lseek(fd, 0, SEEK_END);
	rc = qv_st_read_fd(fd, (uint64_t)size, st, err, errlen);
	close(fd);
	return rc;
}

TEST(st_read_fd_valid)
{
	char *dir = ut_tmpdir(), *p;
	const char *j = "{\"__metadata__\":{\"format\":\"pt\"},"
			"\"b\":{\"dtype\":\"U8\",\"shape\":[5],\"data_offsets\":[3,8]},"
			"\"a\":{\"dtype\":\"U8\",\"shape\":[3],\"data_offsets\":[0,3]}}";
	char err[QV_ERRLEN];
	struct qv_st st;

	if (!CHECK(dir))
		return;
	p = ut_path(dir, "x.safetensors");
	if (CHECK_EQ_INT(ut_write_st(p, j, 8, 1), 0) &&
	    CHECK_MSG(read_st_file(p, &st, err, sizeof(err)) == 0, "%s", err)) {
		CHECK_EQ_U64(st.hdr_len, strlen(j));
		CHECK_EQ_U64(st.data_size, 8);
		CHECK_EQ_U64(st.nt, 2);
		CHECK_STR(st.t[0].name, "a");
		qv_st_free(&st);
	}
	free(p);
	ut_rmtree(dir);
	free(dir);
}

TEST(st_read_fd_header_past_eof)
{
	char *dir = ut_tmpdir(), *p;
	unsigned char buf[8 + 50] = { 100 }; /* claims 100 header bytes, holds 50 */
	char err[QV_ERRLEN] = "";
	struct qv_st st;

	if (!CHECK(dir))
		return;
	memset(buf + 8, ' ', 50);
	buf[8] = '{';
	p = ut_path(dir, "short.safetensors");
	if (CHECK_EQ_INT(ut_write_file(p, buf, sizeof(buf)), 0)) {
		CHECK_EQ_INT(read_st_file(p, &st, err, sizeof(err)), -EINVAL);
		CHECK_HAS(err, "past end");
		qv_st_free(&st);
		/* shorter than the length prefix itself */
		CHECK_EQ_INT(ut_write_file(p, buf, 5), 0);
		err[0] = '\0';
		CHECK_EQ_INT(read_st_file(p, &st, err, sizeof(err)), -EINVAL);
		CHECK_HAS(err, "short");
		qv_st_free(&st);
	}
	free(p);
	ut_rmtree(dir);
	free(dir);
}

TEST(st_read_fd_header_over_limit)
{
	char *dir = ut_tmpdir(), *p;
	uint64_t n = QV_ST_MAX_HEADER + 1;
	unsigned char pre[8];
	char err[QV_ERRLEN] = "";
	struct qv_st st;

	if (!CHECK(dir))
		return;
	for (int i = 0; i < 8; i++)
		pre[i] = (unsigned char)(n >> (8 * i));
	p = ut_path(dir, "huge.safetensors");
	if (CHECK_EQ_INT(ut_write_file(p, pre, 8), 0) &&
	    CHECK_EQ_INT(truncate(p, (off_t)(8 + n + 16)), 0)) { /* sparse: nothing written */
		CHECK_EQ_INT(read_st_file(p, &st, err, sizeof(err)), -EINVAL);
		CHECK_HAS(err, "100000000");
		qv_st_free(&st);
	}
	free(p);
	ut_rmtree(dir);
	free(dir);
}

TEST(st_read_fd_bad_content_reason)
{
	char *dir = ut_tmpdir(), *p;
	char err[QV_ERRLEN] = "";
	struct qv_st st;

	if (!CHECK(dir))
		return;
	p = ut_path(dir, "bad.safetensors");
	if (CHECK_EQ_INT(ut_write_st(p, "{\"a\":{\"dtype\":\"Q9\",\"shape\":[1],"
					"\"data_offsets\":[0,1]}}",
				     1, 0),
			 0)) {
		CHECK_EQ_INT(read_st_file(p, &st, err, sizeof(err)), -EINVAL);
		CHECK_HAS(err, "Q9");
		qv_st_free(&st);
	}
	free(p);
	ut_rmtree(dir);
	free(dir);
}

/* Found by tests/real/st_agree.py (`make fuzz-diff`): where this parser and the official one
 * disagreed on a file, and the official reader (and torch's loader) was right. */

/* torch's float8_e4m3fnuz and float8_e5m2fnuz, written by safetensors.torch.save_file */
TEST(st_agree_fnuz_dtypes)
{
	static const char *const names[] = { "F8_E4M3FNUZ", "F8_E5M2FNUZ" };

	for (size_t i = 0; i < 2; i++) {
		char j[160], err[QV_ERRLEN];
		struct qv_st st;

		snprintf(j, sizeof(j), "{\"t\":{\"dtype\":\"%s\",\"shape\":[2,3],\"data_offsets\":[0,6]}}",
			 names[i]);
		if (!CHECK_MSG(ut_parse(j, 6, &st, err, sizeof(err)) == 0, "%s: %s", names[i], err))
			continue;
		CHECK_STR(qv_dtype_name(st.t[0].dtype), names[i]);
		CHECK_EQ_U64(qv_dtype_size(st.t[0].dtype), 1);
		qv_st_free(&st);
	}
}

/* "__metadata__": null is a header without metadata (the official reader's Option) */
TEST(st_agree_metadata_null)
{
	char err[QV_ERRLEN];
	struct qv_st st;

	if (!CHECK_MSG(ut_parse("{\"__metadata__\":null,\"x\":" T_F32_2x3("0,24") "}", 24, &st, err,
				sizeof(err)) == 0,
		       "%s", err))
		return;
	CHECK(st.meta == NULL);
	CHECK_EQ_U64(st.nmeta, 0);
	CHECK_EQ_U64(st.nt, 1);
	qv_st_free(&st);
	if (CHECK_MSG(ut_parse("{\"__metadata__\" : null }", 0, &st, err, sizeof(err)) == 0, "%s",
			  err))
		qv_st_free(&st);
	/* still one __metadata__ at most, and nothing but an object or null */
	EXPECT_BAD("{\"__metadata__\":null,\"__metadata__\":{}}", 0, "duplicate");
	EXPECT_BAD("{\"__metadata__\":false}", 0, "__metadata__");
}

/* The element count is what must fit in 64 bits, not dtype size x leading dimensions: a tensor
 * with a zero dimension has no bytes, whatever its other dimensions (torch loads these). */
TEST(st_agree_zero_elements_with_huge_dims)
{
	static const char *const ok[] = {
		"{\"x\":{\"dtype\":\"F32\",\"shape\":[4294967296,2147483648,0],\"data_offsets\":[0,0]}}",
		"{\"x\":{\"dtype\":\"F64\",\"shape\":[4503599627370496,2048,0],\"data_offsets\":[0,0]}}",
		"{\"x\":{\"dtype\":\"C64\",\"shape\":[9007199254740992,0,9007199254740992],"
		"\"data_offsets\":[0,0]}}",
	};
	char err[QV_ERRLEN];
	struct qv_st st;

	for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++)
		if (CHECK_MSG(ut_parse(ok[i], 0, &st, err, sizeof(err)) == 0, "%s: %s", ok[i], err))
			qv_st_free(&st);
	/* an element count past 2^64 before the zero still overflows, as in the official reader */
	EXPECT_BAD("{\"x\":{\"dtype\":\"U8\",\"shape\":[4294967296,4294967296,0],"
		   "\"data_offsets\":[0,0]}}",
		   0, "overflow");
}

/* JSON numbers have no leading zeros; cJSON's strtod read 01 as 1 */
TEST(st_agree_leading_zero_rejected)
{
	EXPECT_BAD("{\"x\":{\"dtype\":\"U8\",\"shape\":[01],\"data_offsets\":[0,1]}}", 1, "shape");
	EXPECT_BAD("{\"x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[00,1]}}", 1,
		   "data_offsets");
	EXPECT_BAD("{\"x\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,004]}}", 4,
		   "data_offsets");
	/* zero itself is fine */
	{
		char err[QV_ERRLEN];
		struct qv_st st;

		if (CHECK_MSG(ut_parse("{\"x\":{\"dtype\":\"U8\",\"shape\":[0,10],\"data_offsets\":[0,0]}}",
				       0, &st, err, sizeof(err)) == 0,
			      "%s", err))
			qv_st_free(&st);
	}
}

/* cJSON decodes a \u escape with a non-hex digit as U+0000, silently cutting the name short
 * ("model.vis\ual.x" became "model.vis"); JSON knows only \" \\ \/ \b \f \n \r \t \uXXXX. */
TEST(st_agree_bad_escape_rejected)
{
	static const char *const bad[] = {
		"{\"a\\ual.b\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[0,0]}}",
		"{\"a\\u00g1\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[0,0]}}",
		"{\"a\\uu0070\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[0,0]}}",
		"{\"a\\x41\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[0,0]}}",
		"{\"a\\U0041\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[0,0]}}",
		"{\"a\\'\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[0,0]}}",
		"{\"__metadata__\":{\"k\":\"v\\u12\"}}",
		"{\"__metadata__\":{\"k\":\"v\\u12",
	};
	const char *j = "{\"\\u0061\\u00E9\\/\\b\\f\\n\\r\\t\\\"\\\\\\ud83d\\ude00\":{\"dtype\":\"U8\","
			"\"shape\":[0],\"data_offsets\":[0,0]}}";
	char err[QV_ERRLEN];
	struct qv_st st;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		EXPECT_BAD(bad[i], 0, "");
	if (CHECK_MSG(ut_parse(j, 0, &st, err, sizeof(err)) == 0, "%s", err)) {
		CHECK_STR(st.t[0].name, "a\xc3\xa9/\b\f\n\r\t\"\\\xf0\x9f\x98\x80");
		qv_st_free(&st);
	}
}
