/* test_hardening.c - hostile inputs at mount: sharded saves whose sizes would overflow, and
 * consolidated headers the strict parser would reject, refuse the mount with one line. */
#include "unit.h"
#include "view_fixture.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Rank file r of a save holding one BF16 tensor "w" of shape shape at offsets off (3 dims). */
static void put_rank(const char *dir, int r, const char *shape, const char *off)
{
	char name[64], json[512];

	snprintf(name, sizeof(name), "shard-%05d-model-00001-of-00001.safetensors", r + 1);
	snprintf(json, sizeof(json),
		 "{\"__metadata__\":{\"format\":\"pt\",\"DCP_SHARDING_INFO\":"
		 "\"{\\\"w\\\": {\\\"saved_offsets\\\": [%s]}}\"},"
		 "\"w\":{\"dtype\":\"BF16\",\"shape\":[%s],\"data_offsets\":[0,0]}}",
		 off, shape);
	vt_put_st(dir, name, json, 0, 1);
}

static void expect_fail(const char *dir_in, const char *want1, const char *want2)
{
	struct qv_mount_opts o = { 0 };
	struct vt v;
	int rc = vt_mount(&v, (char *)dir_in, &o);

	CHECK_MSG(rc == -EINVAL, "mount rc %d (%s)", rc, v.err);
	CHECK_HAS(v.err, want1);
	CHECK_HAS(v.err, want2);
	CHECK_MSG(!strchr(v.err, '\n'), "more than one line: %s", v.err);
	vt_fini(&v);
}

/* Zero-size chunks at 2^43 in three dims: the volume 2^129 wrapped to 0 in 128 bits, equal to
 * the chunks' sum, and the view served a [2^43, 2^43, 2^43] tensor over no data. */
TEST(dcp_volume_overflow_refused)
{
	char *dir = ut_tmpdir();

	put_rank(dir, 0, "0,0,0", "0,0,0");
	put_rank(dir, 1, "0,0,0", "8796093022208,8796093022208,8796093022208");
	expect_fail(dir, "tensor \"w\"", "overflows 64 bits");
}

/* Nothing overflows, but a dimension of 2^54 is more than a header can say: the consolidated
 * header would be one the strict parser rejects, so it is not served. */
TEST(dcp_header_past_2_53_refused)
{
	char *dir = ut_tmpdir();

	put_rank(dir, 0, "0,0,9007199254740992", "0,0,9007199254740992");
	put_rank(dir, 1, "0,0,0", "0,0,0");
	expect_fail(dir, "model-00001-of-00001.safetensors", "fails the strict parser");
}
