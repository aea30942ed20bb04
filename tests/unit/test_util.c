/* test_util.c - shared helpers: UTF-8 validation, JSON string escaping, buffers, paths. */
#include "unit.h"
#include "util_test.h"

#include "qv_util.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define UTF8(s, ok) CHECK_MSG(qv_utf8_valid((s), sizeof(s) - 1) == (ok), "utf8 %s: %s", #s, \
			      (ok) ? "rejected" : "accepted")

TEST(util_utf8_valid)
{
	UTF8("", true);
	UTF8("plain ascii", true);
	UTF8("\xc3\xa9", true);		/* U+00E9 */
	UTF8("\xe2\x82\xac", true);	/* U+20AC */
	UTF8("\xf0\x9f\x98\x80", true); /* U+1F600 */
	UTF8("\xf4\x8f\xbf\xbf", true); /* U+10FFFF */
	UTF8("\xed\x9f\xbf", true);	/* U+D7FF */
	UTF8("\xee\x80\x80", true);	/* U+E000 */
	UTF8("\x00", true);		/* NUL is valid UTF-8 */
}

TEST(util_utf8_invalid)
{
	UTF8("\x80", false);		    /* lone continuation */
	UTF8("\xc3", false);		    /* truncated at end */
	UTF8("\xc3x", false);		    /* bad continuation */
	UTF8("\xc0\x80", false);	    /* overlong NUL */
	UTF8("\xc1\xbf", false);	    /* overlong */
	UTF8("\xe0\x80\xaf", false);	    /* overlong 3-byte */
	UTF8("\xf0\x80\x80\xaf", false);    /* overlong 4-byte */
	UTF8("\xed\xa0\x80", false);	    /* surrogate U+D800 */
	UTF8("\xed\xbf\xbf", false);	    /* surrogate U+DFFF */
	UTF8("\xf4\x90\x80\x80", false);    /* above U+10FFFF */
	UTF8("\xf8\x88\x80\x80\x80", false); /* 5-byte form */
	UTF8("\xff", false);
	UTF8("ok\xe2\x82", false); /* truncated 3-byte at the end */
}

TEST(util_utf8_no_overread)
{
	/* an exactly sized buffer ending in a lead byte: ASan catches a look past the end */
	char *p = ut_exact("ab\xf0", 3);

	CHECK(!qv_utf8_valid(p, 3));
	CHECK(qv_utf8_valid(p, 2));
	free(p);
}

TEST(util_json_str_escapes)
{
	struct qv_buf b = { 0 };
	static const char in[] = "a\"b\\c\n\x01\x1f\x7f\xc3\xa9/";

	if (CHECK_EQ_INT(qv_buf_json_str(&b, in, sizeof(in) - 1), 0))
		CHECK_STR(b.p, "\"a\\\"b\\\\c\\u000a\\u0001\\u001f\x7f\xc3\xa9/\"");
	qv_buf_free(&b);
	/* an embedded NUL (length-delimited input) is escaped, not a terminator */
	if (CHECK_EQ_INT(qv_buf_json_str(&b, "x\0y", 3), 0))
		CHECK_STR(b.p, "\"x\\u0000y\"");
	qv_buf_free(&b);
}

TEST(util_buf_grows)
{
	struct qv_buf b = { 0 };
	char chunk[1000];

	memset(chunk, 'x', sizeof(chunk));
	for (int i = 0; i < 100; i++)
		if (!CHECK_EQ_INT(qv_buf_add(&b, chunk, sizeof(chunk)), 0))
			break;
	CHECK_EQ_U64(b.len, 100000);
	CHECK(b.cap > b.len);
	CHECK_EQ_U64(b.p[b.len], 0);
	CHECK_EQ_INT(qv_buf_printf(&b, "%d-%s", 42, "end"), 0);
	CHECK_EQ_U64(b.len, 100006);
	CHECK_STR(b.p + 100000, "42-end");
	CHECK_EQ_INT(qv_buf_adds(&b, ""), 0);
	CHECK_EQ_U64(b.len, 100006);
	CHECK_EQ_INT(qv_buf_reserve(&b, SIZE_MAX), -ENOMEM);
	qv_buf_free(&b);
	CHECK(b.p == NULL && b.len == 0 && b.cap == 0);
}

TEST(util_paths_and_suffixes)
{
	char *p = qv_path_join("/a/b", "c.txt");

	CHECK_STR(p, "/a/b/c.txt");
	free(p);
	CHECK(qv_ends_with("x.safetensors", ".safetensors"));
	CHECK(qv_ends_with(".safetensors", ".safetensors"));
	CHECK(!qv_ends_with("safetensors", ".safetensors"));
	CHECK(!qv_ends_with("x.safetensors.index.json", ".safetensors"));
	CHECK(qv_ends_with("abc", ""));
	CHECK(qv_starts_with("model.x", "model."));
	CHECK(!qv_starts_with("model", "model."));
	CHECK(qv_starts_with("", ""));
}

TEST(util_err_formats_and_returns_code)
{
	char err[8];

	CHECK_EQ_INT(qv_err(err, sizeof(err), -EINVAL, "%s", "a long message"), -EINVAL);
	CHECK_STR(err, "a long ");
	CHECK_EQ_INT(qv_err(NULL, 0, -EIO, "ignored"), -EIO);
}

/* A name from a file goes into log lines as it is: its control bytes are written out, so a
 * newline in it cannot forge a line of its own, and a line cut at the buffer's end is still
 * one line. */
TEST(util_log_escapes_control_bytes)
{
	static const char want[] = "qvlmoefs: tensor \"a\\nqvlmoefs: forged\\r\\t\\x1b[2J\\x7f\\x01z\": "
				   "unknown dtype X\n";
	struct ut_capture cap;
	char big[3000], *out;

	memset(big, '\n', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	ut_stderr_begin(&cap);
	qv_log("tensor \"%s\": unknown dtype X", "a\nqvlmoefs: forged\r\t\x1b[2J\x7f\x01z");
	qv_log("%s", big);
	out = ut_stderr_end(&cap);
	CHECK_MSG(!strncmp(out, want, sizeof(want) - 1), "logged: %s", out);
	CHECK_EQ_U64(ut_count(out, "\n"), 2);
	CHECK_EQ_U64(strlen(out), sizeof(want) - 1 + strlen("qvlmoefs: \n") + 2 * 1023);
	free(out);
}
