/* test_plan.c - the conversion contract (DESIGN §1): from_hf, to_hf, exclusion, identity views,
 * expert-parallel ranges and cuts. */
#include "unit.h"
#include "util_test.h"

#include "qv_plan.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define L "language_model.layers."
#define EXP ".mlp.experts."

static int plan_new(struct qv_plan *p, enum qv_naming src, enum qv_naming view, bool prefix,
		    const char *exclude)
{
	struct qv_plan_opts o = { .src = src, .view = view, .model_prefix = prefix,
				  .exclude = exclude };
	char err[QV_ERRLEN];

	return qv_plan_init(p, &o, err, sizeof(err));
}

/* Map key under p: expect (want == NULL) a drop, or want as the view key; and expert_want. */
#define EXPECT_MAP(p, key, want, expert_want)                                              \
	do {                                                                               \
		char *out_ = (char *)1;                                                    \
		bool ex_ = !(expert_want);                                                 \
		int rc_ = qv_plan_map_key((p), (key), &out_, &ex_);                        \
		if ((want) == NULL) {                                                      \
			CHECK_MSG(rc_ == 0, "%s: expected dropped, got rc %d \"%s\"", (key), \
				  rc_, rc_ == 1 && out_ ? out_ : "");                      \
			CHECK(rc_ != 0 || out_ == NULL);                                   \
		} else if (CHECK_MSG(rc_ == 1, "%s: expected kept, got rc %d", (key), rc_)) { \
			CHECK_STR(out_, (want));                                           \
			CHECK_MSG(ex_ == (expert_want), "%s: expert flag %d", (key), ex_);  \
		}                                                                          \
		if (rc_ == 1)                                                              \
			free(out_);                                                        \
	} while (0)

TEST(plan_from_hf_experts_model_prefix)
{
	struct qv_plan p;

	if (!CHECK_EQ_INT(plan_new(&p, QV_NAMING_HF, QV_NAMING_NATIVE, true, NULL), 0))
		return;
	EXPECT_MAP(&p, "model." L "0" EXP "gate_up_proj", "model." L "0" EXP "gate_and_up_projs",
		   true);
	EXPECT_MAP(&p, "model." L "47" EXP "down_proj", "model." L "47" EXP "down_projs", true);
	EXPECT_MAP(&p, "model." L "123" EXP "gate_up_proj",
		   "model." L "123" EXP "gate_and_up_projs", true);
	qv_plan_free(&p);
}

TEST(plan_from_hf_unprefixed_expert_gets_prefix)
{
	struct qv_plan p;

	if (!CHECK_EQ_INT(plan_new(&p, QV_NAMING_HF, QV_NAMING_NATIVE, true, NULL), 0))
		return;
	EXPECT_MAP(&p, L "3" EXP "gate_up_proj", "model." L "3" EXP "gate_and_up_projs", true);
	EXPECT_MAP(&p, L "3" EXP "down_proj", "model." L "3" EXP "down_projs", true);
	qv_plan_free(&p);
}

TEST(plan_from_hf_experts_no_prefix)
{
	struct qv_plan p;

	if (!CHECK_EQ_INT(plan_new(&p, QV_NAMING_HF, QV_NAMING_NATIVE, false, NULL), 0))
		return;
	EXPECT_MAP(&p, L "3" EXP "down_proj", L "3" EXP "down_projs", true);
	EXPECT_MAP(&p, L "3" EXP "gate_up_proj", L "3" EXP "gate_and_up_projs", true);
	/* (model.)? is part of the match and {P} is empty: the result has no prefix */
	EXPECT_MAP(&p, "model." L "3" EXP "gate_up_proj", L "3" EXP "gate_and_up_projs", true);
	qv_plan_free(&p);
}

TEST(plan_from_hf_near_misses_stay_dense)
{
	struct qv_plan p;

	if (!CHECK_EQ_INT(plan_new(&p, QV_NAMING_HF, QV_NAMING_NATIVE, true, NULL), 0))
		return;
	EXPECT_MAP(&p, "model." L "0" EXP "gate_up_proj.weight",
		   "model." L "0" EXP "gate_up_proj.weight", false);
	EXPECT_MAP(&p, "x" L "0" EXP "down_proj", "model.x" L "0" EXP "down_proj", false);
	EXPECT_MAP(&p, "model." L "x" EXP "down_proj", "model." L "x" EXP "down_proj", false);
	EXPECT_MAP(&p, "model." L EXP "down_proj", "model." L EXP "down_proj", false);
	EXPECT_MAP(&p, "model." L "1a" EXP "down_proj", "model." L "1a" EXP "down_proj", false);
	EXPECT_MAP(&p, "model." L "0" EXP "down_proj_x", "model." L "0" EXP "down_proj_x", false);
	EXPECT_MAP(&p, "model." L "0" EXP "up_proj", "model." L "0" EXP "up_proj", false);
	EXPECT_MAP(&p, "model." L "0.mlp.experts.0.down_proj.weight",
		   "model." L "0.mlp.experts.0.down_proj.weight", false);
	EXPECT_MAP(&p, "model.model." L "0" EXP "down_proj", "model.model." L "0" EXP "down_proj",
		   false);
	EXPECT_MAP(&p, "model.visual.blocks.0" EXP "down_proj", "model.visual.blocks.0" EXP "down_proj",
		   false);
	EXPECT_MAP(&p, "prefix.model." L "0" EXP "down_proj",
		   "model.prefix.model." L "0" EXP "down_proj", false);
	qv_plan_free(&p);
}

TEST(plan_from_hf_scale_inv_dropped)
{
	struct qv_plan p;

	if (!CHECK_EQ_INT(plan_new(&p, QV_NAMING_HF, QV_NAMING_NATIVE, true, NULL), 0))
		return;
	EXPECT_MAP(&p, "model." L "0.self_attn.q_proj.weight_scale_inv", NULL, false);
	EXPECT_MAP(&p, "model." L "0" EXP "gate_up_proj_scale_inv", NULL, false);
	EXPECT_MAP(&p, "lm_head.weight_scale_inv", NULL, false);
	EXPECT_MAP(&p, "visual.x_scale_inv", NULL, false);
	/* only as a suffix */
	EXPECT_MAP(&p, "model._scale_inv.weight", "model._scale_inv.weight", false);
	qv_plan_free(&p);
}

TEST(plan_from_hf_lm_head_and_model_kept)
{
	struct qv_plan p;

	if (!CHECK_EQ_INT(plan_new(&p, QV_NAMING_HF, QV_NAMING_NATIVE, true, NULL), 0))
		return;
	EXPECT_MAP(&p, "lm_head.weight", "lm_head.weight", false);
	EXPECT_MAP(&p, "model.visual.patch_embed.proj.weight", "model.visual.patch_embed.proj.weight",
		   false);
	EXPECT_MAP(&p, "model." L "0.self_attn.q_proj.weight", "model." L "0.self_attn.q_proj.weight",
		   false);
	/* "lm_head" without the dot is a stray key */
	EXPECT_MAP(&p, "lm_headx.weight", "model.lm_headx.weight", false);
	qv_plan_free(&p);
}

TEST(plan_from_hf_stray_key_prefix)
{
	struct qv_plan p;

	if (!CHECK_EQ_INT(plan_new(&p, QV_NAMING_HF, QV_NAMING_NATIVE, true, NULL), 0))
		return;
	EXPECT_MAP(&p, "visual.foo", "model.visual.foo", false);
	EXPECT_MAP(&p, L "0.self_attn.q_proj.weight", "model." L "0.self_attn.q_proj.weight", false);
	qv_plan_free(&p);
	if (!CHECK_EQ_INT(plan_new(&p, QV_NAMING_HF, QV_NAMING_NATIVE, false, NULL), 0))
		return;
	EXPECT_MAP(&p, "visual.foo", "visual.foo", false);
	EXPECT_MAP(&p, "lm_head.weight", "lm_head.weight", false);
	qv_plan_free(&p);
}

TEST(plan_to_hf_renames)
{
	struct qv_plan p;

	if (!CHECK_EQ_INT(plan_new(&p, QV_NAMING_NATIVE, QV_NAMING_HF, true, NULL), 0))
		return;
	EXPECT_MAP(&p, "model." L "5" EXP "gate_and_up_projs", "model." L "5" EXP "gate_up_proj",
		   true);
	EXPECT_MAP(&p, "model." L "5" EXP "down_projs", "model." L "5" EXP "down_proj", true);
	/* prefixes never change */
	EXPECT_MAP(&p, L "5" EXP "down_projs", L "5" EXP "down_proj", true);
	EXPECT_MAP(&p, "lm_head.weight", "lm_head.weight", false);
	EXPECT_MAP(&p, "visual.foo", "visual.foo", false);
	/* "containing": the part is replaced anywhere, but only suffixes are expert tensors */
	EXPECT_MAP(&p, "a" EXP "gate_and_up_projs.bias", "a" EXP "gate_up_proj.bias", false);
	/* _scale_inv only matters from HF */
	EXPECT_MAP(&p, "model.x_scale_inv", "model.x_scale_inv", false);
	qv_plan_free(&p);
}

TEST(plan_to_hf_default_exclude)
{
	struct qv_plan p;

	if (!CHECK_EQ_INT(plan_new(&p, QV_NAMING_NATIVE, QV_NAMING_HF, true, NULL), 0))
		return;
	EXPECT_MAP(&p, "model." L "0.self_attn._extra_state", NULL, false);
	EXPECT_MAP(&p, "model." L "0.mlp._extra_state.x", NULL, false);
	EXPECT_MAP(&p, "_extra_state", NULL, false);
	EXPECT_MAP(&p, "foo_extra_stat", "foo_extra_stat", false);
	EXPECT_MAP(&p, "model.extra_state", "model.extra_state", false);
	qv_plan_free(&p);
}

TEST(plan_to_hf_exclude_re_match_semantics)
{
	struct qv_plan p;

	if (CHECK_EQ_INT(plan_new(&p, QV_NAMING_NATIVE, QV_NAMING_HF, false, "lm_head"), 0)) {
		EXPECT_MAP(&p, "lm_head.weight", NULL, false);
		EXPECT_MAP(&p, "model.lm_head.weight", "model.lm_head.weight", false);
		/* a custom pattern replaces the default */
		EXPECT_MAP(&p, "a._extra_state", "a._extra_state", false);
		qv_plan_free(&p);
	}
	if (CHECK_EQ_INT(plan_new(&p, QV_NAMING_NATIVE, QV_NAMING_HF, false, "head"), 0)) {
		EXPECT_MAP(&p, "lm_head.weight", "lm_head.weight", false); /* anchored at start */
		EXPECT_MAP(&p, "head.weight", NULL, false);
		qv_plan_free(&p);
	}
	if (CHECK_EQ_INT(plan_new(&p, QV_NAMING_NATIVE, QV_NAMING_HF, false, ".*head"), 0)) {
		EXPECT_MAP(&p, "lm_head.weight", NULL, false);
		EXPECT_MAP(&p, "model.embed.weight", "model.embed.weight", false);
		qv_plan_free(&p);
	}
	/* every alternative is anchored, as with re.match */
	if (CHECK_EQ_INT(plan_new(&p, QV_NAMING_NATIVE, QV_NAMING_HF, false, "foo|lm_head"), 0)) {
		EXPECT_MAP(&p, "lm_head.weight", NULL, false);
		EXPECT_MAP(&p, "xfoo", "xfoo", false);
		EXPECT_MAP(&p, "foo.bar", NULL, false);
		qv_plan_free(&p);
	}
}

TEST(plan_to_hf_exclude_backslash_d)
{
	struct qv_plan p;

	if (!CHECK_EQ_INT(plan_new(&p, QV_NAMING_NATIVE, QV_NAMING_HF, true,
				   "model\\.language_model\\.layers\\.\\d+\\.self_attn"),
			  0))
		return;
	EXPECT_MAP(&p, "model." L "12.self_attn.q_proj.weight", NULL, false);
	EXPECT_MAP(&p, "model." L "x.self_attn.q_proj.weight", "model." L "x.self_attn.q_proj.weight",
		   false);
	EXPECT_MAP(&p, "model." L "12.mlp.gate.weight", "model." L "12.mlp.gate.weight", false);
	qv_plan_free(&p);
	if (!CHECK_EQ_INT(plan_new(&p, QV_NAMING_NATIVE, QV_NAMING_HF, true, "a\\Db"), 0))
		return;
	EXPECT_MAP(&p, "axb", NULL, false);
	EXPECT_MAP(&p, "a1b", "a1b", false);
	qv_plan_free(&p);
}

/* DESIGN §1: "then the key is left out if the exclude pattern matches it": the pattern sees the
 * converted HF key, as in NeMo's convert_single_tensor_to_hf (re.match on the renamed key). */
TEST(plan_to_hf_exclude_matches_converted_key)
{
	struct qv_plan p;

	if (!CHECK_EQ_INT(plan_new(&p, QV_NAMING_NATIVE, QV_NAMING_HF, true,
				   ".*\\.mlp\\.experts\\.gate_up_proj$"),
			  0))
		return;
	EXPECT_MAP(&p, "model." L "0" EXP "gate_and_up_projs", NULL, false);
	EXPECT_MAP(&p, "model." L "0" EXP "down_projs", "model." L "0" EXP "down_proj", true);
	qv_plan_free(&p);
	if (!CHECK_EQ_INT(plan_new(&p, QV_NAMING_NATIVE, QV_NAMING_HF, true, ".*gate_and_up"), 0))
		return;
	/* the HF key has no "gate_and_up" in it: kept */
	EXPECT_MAP(&p, "model." L "0" EXP "gate_and_up_projs", "model." L "0" EXP "gate_up_proj",
		   true);
	qv_plan_free(&p);
}

TEST(plan_exclude_invalid_regex)
{
	static const char *const bad[] = { "(abc", "[a", "a{2,1}", "(?i)abc" };

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct qv_plan_opts o = { .src = QV_NAMING_NATIVE, .view = QV_NAMING_HF,
					  .exclude = bad[i] };
		struct qv_plan p;
		char err[QV_ERRLEN] = "";

		CHECK_MSG(qv_plan_init(&p, &o, err, sizeof(err)) == -EINVAL, "exclude=%s accepted",
			  bad[i]);
		CHECK_HAS(err, "exclude");
		qv_plan_free(&p);
	}
}

/* 1 when exclude=pat leaves the HF name out (re.match matched it), 0 when kept, -1 when
 * the pattern is refused (its message in err). */
static int excluded(const char *pat, const char *name, char *err, size_t errlen)
{
	struct qv_plan_opts o = { .src = QV_NAMING_NATIVE, .view = QV_NAMING_HF, .exclude = pat };
	struct qv_plan p;
	char *out = NULL;
	bool ex;
	int rc;

	if (qv_plan_init(&p, &o, err, errlen))
		return -1;
	rc = qv_plan_map_key(&p, name, &out, &ex);
	free(out);
	qv_plan_free(&p);
	return rc == 0;
}

/* A pattern, a name and whether Python 3.11's re.match(pattern, name) matches it. */
struct rx_case {
	const char *pat, *name;
	int out;
};

static void check_as_re_match(const struct rx_case *c, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		char err[QV_ERRLEN] = "";
		int got = excluded(c[i].pat, c[i].name, err, sizeof(err));

		CHECK_MSG(got == c[i].out, "exclude=%s on \"%s\": %s, re.match: %s (%s)", c[i].pat,
			  c[i].name, got < 0 ? "refused" : got ? "left out" : "kept",
			  c[i].out ? "left out" : "kept", err);
	}
}

/* Inside [...] an escape means what Python says: \d \w \s their classes ([\d] was [[0-9]],
 * a bracket of "[0-9" and a "]" after it), an escaped character the character (POSIX takes
 * the backslash literally). */
TEST(plan_exclude_brackets_as_re_match)
{
	static const struct rx_case c[] = {
		{ ".*layers\\.[\\d]+\\.self_attn\\..*", "model." L "12.self_attn.q_proj.weight", 1 },
		{ ".*layers\\.[\\d]+\\.self_attn\\..*", "model." L "12.mlp.gate.weight", 0 },
		{ ".*layers\\.[\\d]+\\.self_attn\\..*", "model." L "x.self_attn.q_proj.weight", 0 },
		{ "[a\\w]+\\.", "a_1.b", 1 },	 { "[a\\w]+\\.", "-.b", 0 },
		{ "a[\\s]b", "a b", 1 },	 { "a[\\s]b", "asb", 0 },
		{ "a[\\D]b", "axb", 1 },	 { "a[\\D]b", "a1b", 0 },
		{ "a[^\\D]b", "a1b", 1 },	 { "a[^\\D]b", "axb", 0 },
		{ "a[^\\d]b", "axb", 1 },	 { "a[\\.]b", "a.b", 1 },
		{ "a[\\.]b", "a\\b", 0 },	 { "a[\\]]b", "a]b", 1 },
		{ "a[\\]]b", "a\\]b", 0 },	 { "a[\\\\]b", "a\\b", 1 },
		{ "a[\\\\]b", "a]b", 0 },	 { "a[\\-]b", "a-b", 1 },
		{ "a[\\-]b", "a\\b", 0 },	 { "a[\\^x]b", "a^b", 1 },
		{ "a[[:x]]b", "a:]b", 1 },	 { "a[[:x]]b", "axb", 0 }, /* no POSIX class */
		{ "a[\\.-0]b", "a/b", 1 },	 { "a[]x]b", "a]b", 1 },
	};

	check_as_re_match(c, sizeof(c) / sizeof(c[0]));
}

/* Outside brackets too: \A \Z anchor, a lazy {m} is still exactly m (ERE read "a{2}?" as an
 * optional "aa"), a "{" that starts no repeat is a literal, . stops at a newline. */
TEST(plan_exclude_escapes_and_repeats_as_re_match)
{
	static const struct rx_case c[] = {
		{ "a\\Ab", "ab", 0 },	       { "\\Aab", "abc", 1 },
		{ "ab\\Z", "abc", 0 },	       { "ab\\Z", "ab", 1 },
		{ "a{2}?b", "b", 0 },	       { "a{2}?b", "aab", 1 },
		{ "a{,2}b", "b", 1 },	       { "a{b", "a{b", 1 },
		{ "a{}", "a{}", 1 },	       { "a}", "a}", 1 },
		{ "a.b", "a\nb", 0 },	       { ".*_extra_state", "x\ny._extra_state", 0 },
		{ "a\\nb", "a\nb", 1 },	       { "a\\nb", "anb", 0 },
		{ "\\x41", "A", 1 },	       { "a*?b", "aab", 1 },
		{ "(a|b)\\.c", "b.c", 1 },
	};

	check_as_re_match(c, sizeof(c) / sizeof(c[0]));
}

/* What POSIX ERE cannot say is refused with one line naming the pattern and the construct,
 * rather than taken literally (glibc read \b as a word boundary, \1 as a backreference, a
 * stray ")" closed the group that anchors the pattern). */
TEST(plan_exclude_refuses_what_ere_cannot_say)
{
	static const char *const c[][2] = {
		{ "a\\bc", "word boundaries" },	      { "a\\B", "word boundaries" },
		{ "(?=x)", "(?...) groups" },	      { "(?!x)", "(?...) groups" },
		{ "(?<=x)a", "(?...) groups" },	      { "(?<!x)a", "(?...) groups" },
		{ "(?P<n>x)", "(?...) groups" },      { "(a)\\1", "backreferences" },
		{ "[a\\D]", "\\D, \\W or \\S inside [...]" }, { "[\\W\\d]", "\\D, \\W or \\S" },
		{ "a)|(.*", "a ) without its (" },    { "x++", "possessive" },
		{ "\\q", "only the escapes" },	      { "[\\A]", "inside [...] only the escapes" },
		{ "[\xc3\xa9]", "non-ASCII" },	      { "\\x80", "\\x takes two hex digits" },
		{ "*a", "a repeat of nothing" },      { "a**", "a repeat of a repeat" },
		{ "a{3,2}", "n below m" },	      { "[a", "a [ without its ]" },
		{ "[z-a]", "bad character range" },   { "a\\", "trailing backslash" },
	};

	for (size_t i = 0; i < sizeof(c) / sizeof(c[0]); i++) {
		char err[QV_ERRLEN] = "", want[64];

		CHECK_MSG(excluded(c[i][0], "abc", err, sizeof(err)) == -1, "exclude=%s accepted",
			  c[i][0]);
		snprintf(want, sizeof(want), "exclude=%s: ", c[i][0]);
		CHECK_HAS(err, want);
		CHECK_HAS(err, c[i][1]);
	}
}

TEST(plan_identity_hf)
{
	struct qv_plan p;

	if (!CHECK_EQ_INT(plan_new(&p, QV_NAMING_HF, QV_NAMING_HF, true, NULL), 0))
		return;
	EXPECT_MAP(&p, "model." L "0" EXP "gate_up_proj", "model." L "0" EXP "gate_up_proj", true);
	EXPECT_MAP(&p, L "2" EXP "down_proj", L "2" EXP "down_proj", true);
	EXPECT_MAP(&p, "visual.foo", "visual.foo", false);
	EXPECT_MAP(&p, "model.x.weight_scale_inv", "model.x.weight_scale_inv", false);
	EXPECT_MAP(&p, "model." L "0" EXP "gate_up_proj.weight", "model." L "0" EXP "gate_up_proj.weight",
		   false);
	qv_plan_free(&p);
}

TEST(plan_identity_native)
{
	struct qv_plan p;

	if (!CHECK_EQ_INT(plan_new(&p, QV_NAMING_NATIVE, QV_NAMING_NATIVE, true, NULL), 0))
		return;
	EXPECT_MAP(&p, "model." L "0" EXP "gate_and_up_projs", "model." L "0" EXP "gate_and_up_projs",
		   true);
	EXPECT_MAP(&p, "model." L "0" EXP "down_projs", "model." L "0" EXP "down_projs", true);
	EXPECT_MAP(&p, "model." L "0" EXP "gate_up_proj", "model." L "0" EXP "gate_up_proj", false);
	EXPECT_MAP(&p, "lm_head.weight", "lm_head.weight", false);
	qv_plan_free(&p);
}

TEST(plan_key_is_native)
{
	CHECK(qv_plan_key_is_native("model." L "0" EXP "gate_and_up_projs"));
	CHECK(qv_plan_key_is_native(L "0" EXP "down_projs"));
	CHECK(qv_plan_key_is_native("anything" EXP "down_projs"));
	CHECK(!qv_plan_key_is_native("model." L "0" EXP "gate_and_up_projs.weight"));
	CHECK(!qv_plan_key_is_native("model." L "0" EXP "gate_up_proj"));
	CHECK(!qv_plan_key_is_native("model." L "0" EXP "down_proj"));
	CHECK(!qv_plan_key_is_native("down_projs"));
	CHECK(!qv_plan_key_is_native(""));
}

TEST(plan_ep_range_10_over_4)
{
	static const uint64_t want[4][2] = { { 0, 3 }, { 3, 3 }, { 6, 2 }, { 8, 2 } };

	for (uint32_t r = 0; r < 4; r++) {
		uint64_t s = 99, c = 99;

		qv_plan_ep_range(10, 4, r, &s, &c);
		CHECK_MSG(s == want[r][0] && c == want[r][1], "rank %u: (%llu,%llu) want (%llu,%llu)",
			  r, (unsigned long long)s, (unsigned long long)c,
			  (unsigned long long)want[r][0], (unsigned long long)want[r][1]);
	}
}

TEST(plan_ep_range_128_over_8)
{
	for (uint32_t r = 0; r < 8; r++) {
		uint64_t s, c;

		qv_plan_ep_range(128, 8, r, &s, &c);
		CHECK_EQ_U64(s, 16 * r);
		CHECK_EQ_U64(c, 16);
	}
}

TEST(plan_ep_range_tiles)
{
	for (uint64_t n = 1; n <= 40; n++) {
		for (uint32_t w = 1; w <= n; w++) {
			uint64_t next = 0, s, c;

			for (uint32_t r = 0; r < w; r++) {
				qv_plan_ep_range(n, w, r, &s, &c);
				if (!CHECK_MSG(s == next && c >= n / w && c <= n / w + 1,
					       "n=%llu w=%u r=%u: (%llu,%llu)", (unsigned long long)n, w,
					       r, (unsigned long long)s, (unsigned long long)c))
					return;
				next = s + c;
			}
			CHECK_EQ_U64(next, n);
		}
	}
}

static struct qv_tensor tensor3(const char *name, uint64_t a, uint64_t b, uint64_t c)
{
	struct qv_tensor t = { .name = (char *)name, .dtype = QV_DT_BF16, .ndim = 3,
			       .shape = { a, b, c } };

	t.end = a * b * c * 2;
	return t;
}

static int plan_ep(struct qv_plan *p, uint32_t w, uint32_t r, uint32_t k, uint32_t s, char *err,
		   size_t errlen)
{
	struct qv_plan_opts o = { .src = QV_NAMING_HF, .view = QV_NAMING_NATIVE, .ep_size = w,
				  .ep_rank = r, .shard_size = k, .shard_rank = s };

	return qv_plan_init(p, &o, err, errlen);
}

TEST(plan_cut_dim0)
{
	struct qv_tensor t = tensor3("g", 10, 6, 8);
	char err[QV_ERRLEN];
	struct qv_plan p;
	struct qv_cut c;

	if (!CHECK_EQ_INT(plan_ep(&p, 4, 1, 0, 0, err, sizeof(err)), 0))
		return;
	if (CHECK_EQ_INT(qv_plan_cut(&p, &t, &c, err, sizeof(err)), 0)) {
		CHECK(c.sliced);
		CHECK_EQ_U64(c.start, 3);
		CHECK_EQ_U64(c.count, 3);
		CHECK_EQ_U64(c.d1_start, 0);
		CHECK_EQ_U64(c.d1_count, 6);
	}
	qv_plan_free(&p);
}

TEST(plan_cut_dim1)
{
	struct qv_tensor t = tensor3("g", 10, 6, 8);
	char err[QV_ERRLEN];
	struct qv_plan p;
	struct qv_cut c;

	if (!CHECK_EQ_INT(plan_ep(&p, 4, 3, 3, 2, err, sizeof(err)), 0))
		return;
	if (CHECK_EQ_INT(qv_plan_cut(&p, &t, &c, err, sizeof(err)), 0)) {
		CHECK(c.sliced);
		CHECK_EQ_U64(c.start, 8);
		CHECK_EQ_U64(c.count, 2);
		CHECK_EQ_U64(c.d1_start, 4);
		CHECK_EQ_U64(c.d1_count, 2);
	}
	qv_plan_free(&p);
}

TEST(plan_cut_no_slicing)
{
	struct qv_tensor t = tensor3("g", 10, 6, 8);
	char err[QV_ERRLEN];
	struct qv_plan p;
	struct qv_cut c;

	if (!CHECK_EQ_INT(plan_ep(&p, 0, 0, 0, 0, err, sizeof(err)), 0))
		return;
	if (CHECK_EQ_INT(qv_plan_cut(&p, &t, &c, err, sizeof(err)), 0)) {
		CHECK(!c.sliced);
		CHECK_EQ_U64(c.start, 0);
		CHECK_EQ_U64(c.count, 10);
		CHECK_EQ_U64(c.d1_count, 6);
	}
	qv_plan_free(&p);
}

TEST(plan_cut_ep_size_exceeds_experts)
{
	struct qv_tensor t = tensor3("model.language_model.layers.1.mlp.experts.down_proj", 4, 2, 2);
	char err[QV_ERRLEN] = "";
	struct qv_plan p;
	struct qv_cut c;

	if (!CHECK_EQ_INT(plan_ep(&p, 8, 0, 0, 0, err, sizeof(err)), 0))
		return;
	CHECK_EQ_INT(qv_plan_cut(&p, &t, &c, err, sizeof(err)), -EINVAL);
	CHECK_HAS(err, "model.language_model.layers.1.mlp.experts.down_proj");
	CHECK_HAS(err, "ep_size");
	qv_plan_free(&p);
}

TEST(plan_cut_dim1_not_divisible)
{
	struct qv_tensor t = tensor3("model.language_model.layers.1.mlp.experts.gate_up_proj", 8, 6,
				     2);
	char err[QV_ERRLEN] = "";
	struct qv_plan p;
	struct qv_cut c;

	if (!CHECK_EQ_INT(plan_ep(&p, 2, 0, 4, 0, err, sizeof(err)), 0))
		return;
	CHECK_EQ_INT(qv_plan_cut(&p, &t, &c, err, sizeof(err)), -EINVAL);
	CHECK_HAS(err, "model.language_model.layers.1.mlp.experts.gate_up_proj");
	CHECK_HAS(err, "divisible");
	qv_plan_free(&p);
}

TEST(plan_cut_needs_two_dims)
{
	struct qv_tensor t = { .name = (char *)"v", .dtype = QV_DT_F32, .ndim = 1, .shape = { 8 },
			       .end = 32 };
	char err[QV_ERRLEN] = "";
	struct qv_plan p;
	struct qv_cut c;

	if (!CHECK_EQ_INT(plan_ep(&p, 2, 0, 0, 0, err, sizeof(err)), 0))
		return;
	CHECK_EQ_INT(qv_plan_cut(&p, &t, &c, err, sizeof(err)), -EINVAL);
	CHECK_HAS(err, "\"v\"");
	qv_plan_free(&p);
}

TEST(plan_init_rank_errors)
{
	char err[QV_ERRLEN] = "";
	struct qv_plan p;

	CHECK_EQ_INT(plan_ep(&p, 4, 4, 0, 0, err, sizeof(err)), -EINVAL);
	CHECK_HAS(err, "ep_rank");
	qv_plan_free(&p);
	err[0] = '\0';
	CHECK_EQ_INT(plan_ep(&p, 4, 3, 2, 2, err, sizeof(err)), -EINVAL);
	CHECK_HAS(err, "ep_shard_rank");
	qv_plan_free(&p);
	CHECK_EQ_INT(plan_ep(&p, 4, 3, 2, 1, err, sizeof(err)), 0);
	qv_plan_free(&p);
}

/* Folder counts are 64-bit and bounded: 65536 x 65536 once wrapped to 0 in 32 bits. */
TEST(plan_count_bounded_in_64_bits)
{
	char err[QV_ERRLEN] = "";
	size_t n = 99;

	CHECK_EQ_INT(qv_plan_count(0, true, 0, true, &n, err, sizeof(err)), 0);
	CHECK_EQ_U64(n, 1);
	CHECK_EQ_INT(qv_plan_count(8, false, 2, false, &n, err, sizeof(err)), 0);
	CHECK_EQ_U64(n, 1); /* rank and shard fixed: one view */
	CHECK_EQ_INT(qv_plan_count(8, false, 2, true, &n, err, sizeof(err)), 0);
	CHECK_EQ_U64(n, 2);
	CHECK_EQ_INT(qv_plan_count(8, true, 1, true, &n, err, sizeof(err)), 0);
	CHECK_EQ_U64(n, 8);
	CHECK_EQ_INT(qv_plan_count(256, true, 256, true, &n, err, sizeof(err)), 0);
	CHECK_EQ_U64(n, QV_PLAN_MAX_FOLDERS);
	n = 99;
	CHECK_EQ_INT(qv_plan_count(65536, true, 65536, true, &n, err, sizeof(err)), -EINVAL);
	CHECK_HAS(err, "4294967296 folders");
	CHECK_HAS(err, "at most 65536");
	CHECK_EQ_INT(qv_plan_count(UINT32_MAX, true, UINT32_MAX, true, &n, err, sizeof(err)),
		     -EINVAL);
	CHECK_EQ_INT(qv_plan_count(257, true, 256, true, &n, err, sizeof(err)), -EINVAL);
}

TEST(plan_cut_gives_the_ep_size_range)
{
	struct qv_tensor t = tensor3("model.language_model.layers.1.mlp.experts.down_proj", 4, 2, 2);
	char err[QV_ERRLEN] = "";
	struct qv_plan p;
	struct qv_cut c;

	if (!CHECK_EQ_INT(plan_ep(&p, 65536, 0, 0, 0, err, sizeof(err)), 0))
		return;
	CHECK_EQ_INT(qv_plan_cut(&p, &t, &c, err, sizeof(err)), -EINVAL);
	CHECK_HAS(err, "from 1 to 4");
	qv_plan_free(&p);
}
