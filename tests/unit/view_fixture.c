/* view_fixture.c - the tiny checkpoint of the view tests and helpers to mount and check it. */
#include "unit.h"
#include "view_fixture.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* File 1: data order embed [0,60), gate_up [60,188), down [188,252); JSON order differs. */
static const char F1_JSON[] =
	"{\"" LAYER "mlp.experts.down_proj\":{\"dtype\":\"BF16\",\"shape\":[4,2,4],"
	"\"data_offsets\":[188,252]},"
	"\"__metadata__\":{\"format\":\"pt\",\"origin\":\"unit\"},"
	"\"" LAYER "mlp.experts.gate_up_proj\":{\"dtype\":\"BF16\",\"shape\":[4,4,4],"
	"\"data_offsets\":[60,188]},"
	"\"model.language_model.embed_tokens.weight\":{\"dtype\":\"F32\",\"shape\":[5,3],"
	"\"data_offsets\":[0,60]}}";
/* File 2: no metadata, an unpadded header, and a key from_hf drops. */
static const char F2_JSON[] =
	"{\"model.visual.patch_embed.proj.weight\":{\"dtype\":\"F16\",\"shape\":[2,2],"
	"\"data_offsets\":[60,68]},"
	"\"lm_head.weight\":{\"dtype\":\"F32\",\"shape\":[5,3],\"data_offsets\":[0,60]},"
	"\"" LAYER "self_attn.q_proj.weight_scale_inv\":{\"dtype\":\"F32\",\"shape\":[1],"
	"\"data_offsets\":[68,72]}}";
static const char IDX_JSON[] =
	"{\"metadata\":{\"total_size\":324,\"origin\":\"unit\"},\"weight_map\":{"
	"\"lm_head.weight\":\"" F2 "\","
	"\"" LAYER "mlp.experts.gate_up_proj\":\"" F1 "\","
	"\"" LAYER "mlp.experts.down_proj\":\"" F1 "\","
	"\"model.language_model.embed_tokens.weight\":\"" F1 "\","
	"\"model.visual.patch_embed.proj.weight\":\"" F2 "\","
	"\"" LAYER "self_attn.q_proj.weight_scale_inv\":\"" F2 "\"}}";

void vt_put(const char *dir, const char *name, const char *text)
{
	char *p = ut_path(dir, name);

	CHECK_MSG(ut_write_file(p, text, strlen(text)) == 0, "write %s", p);
	free(p);
}

void vt_put_st(const char *dir, const char *name, const char *json, uint64_t data, uint64_t seed)
{
	char *p = ut_path(dir, name);

	CHECK_MSG(ut_write_st(p, json, data, seed) == 0, "write %s", p);
	free(p);
}

void vt_put_qwen(const char *dir)
{
	vt_put_st(dir, "qwen.safetensors",
		  "{\"model.language_model.layers.0.mlp.experts.down_proj\":{\"dtype\":\"U8\","
		  "\"shape\":[2,1,1],\"data_offsets\":[0,2]}}",
		  2, 7);
}

/* The standard checkpoint: two shards, index, config, and a nested README. */
char *vt_make_ckpt(void)
{
	char *dir = ut_tmpdir(), *sub;

	if (!dir)
		return NULL;
	vt_put_st(dir, F1, F1_JSON, 252, 1);
	vt_put_st(dir, F2, F2_JSON, 72, 2);
	vt_put(dir, IDX, IDX_JSON);
	vt_put(dir, "config.json", CKPT_CONFIG);
	sub = ut_path(dir, "docs");
	mkdir(sub, 0755);
	vt_put(sub, "README.md", CKPT_README);
	free(sub);
	return dir;
}

/* Mount dir with o; 0 or the qv_mount_init error (v->err holds the reason). */
int vt_mount(struct vt *v, char *dir, const struct qv_mount_opts *o)
{
	struct qv_io_cfg cfg = { .backend = QV_IO_URING, .entries = 8 };
	struct ut_capture cap;
	int rc;

	memset(&v->sc, 0, sizeof(v->sc));
	v->dir = dir;
	v->io = NULL;
	v->err[0] = '\0';
	/* mount-time notices (uneven expert split, ...) are not the test's output */
	ut_stderr_begin(&cap);
	rc = qv_mount_init(&v->m, dir, o, v->err, sizeof(v->err));
	free(ut_stderr_end(&cap));
	v->up = true; /* fini is safe (and needed) after a failed init */
	if (!rc && !CHECK_EQ_INT(qv_io_new(&cfg, &v->io), 0))
		return -1;
	return rc;
}

void vt_fini(struct vt *v)
{
	if (v->up)
		qv_mount_fini(&v->m);
	qv_io_free(v->io);
	free(v->sc.ops);
	ut_rmtree(v->dir);
	free(v->dir);
}

struct qv_node *vt_get(struct vt *v, const char *path)
{
	struct qv_node *n = qv_tree_node(&v->m.tree, 1);
	char buf[256], *save = NULL, *tok;

	snprintf(buf, sizeof(buf), "%s", path);
	for (tok = strtok_r(buf, "/", &save); n && tok; tok = strtok_r(NULL, "/", &save)) {
		if (!CHECK_MSG(qv_mount_ready(&v->m, n) == 0, "%s: folder not ready", path))
			return NULL;
		n = qv_tree_lookup(&v->m.tree, n, tok);
	}
	return n;
}

/* The whole file read through qv_mount_reply: in one request, then again in chunks of 13 bytes
 * (the two must agree). malloc'd; *len = file size. */
int vt_pread(struct vt *v, struct qv_node *n, uint64_t off, size_t len, char *buf, size_t *got)
{
	struct qv_reply r;
	int rc = qv_mount_reply(&v->m, n->ino, NULL, off, len, false, &r);

	*got = rc ? 0 : r.len;
	if (!rc && r.len)
		memcpy(buf, r.p, r.len);
	return rc;
}

char *vt_read_all(struct vt *v, struct qv_node *n, size_t *len)
{
	size_t size = (size_t)n->vf.size, got = 0;
	char *a = malloc(size + 1), *b = malloc(size + 1);

	if (!a || !b)
		abort();
	*len = size;
	if (!CHECK_EQ_INT(vt_pread(v, n, 0, size + 100, a, &got), 0) ||
	    !CHECK_EQ_U64(got, size))
		goto fail;
	for (size_t off = 0; off < size; off += 13) {
		size_t want = size - off < 13 ? size - off : 13;

		if (!CHECK_EQ_INT(vt_pread(v, n, off, 13, b + off, &got),
				  0) ||
		    !CHECK_EQ_U64(got, want))
			goto fail;
	}
	if (!CHECK_MEM(a, b, size))
		goto fail;
	free(b);
	return a;
fail:
	free(a);
	free(b);
	return NULL;
}

/* Expected bytes of w cut to experts [e0, e0+ec) and dim-1 rows [r0, r0+rc). */
static char *want_bytes(const struct want *w, uint64_t e0, uint64_t ec, uint64_t r0, uint64_t rc,
			uint64_t *len)
{
	uint64_t row = w->dsize, d1 = w->ndim > 1 ? w->shape[1] : 1, all = w->dsize, pos = 0;
	char *out;

	for (uint32_t d = 0; d < w->ndim; d++)
		all *= w->shape[d];
	if (!w->expert) {
		out = malloc(all ? all : 1);
		ut_fill(out, w->seed, w->src_begin, all);
		*len = all;
		return out;
	}
	for (uint32_t d = 2; d < w->ndim; d++)
		row *= w->shape[d];
	*len = ec * rc * row;
	out = malloc(*len ? *len : 1);
	for (uint64_t e = e0; e < e0 + ec; e++)
		for (uint64_t r = r0; r < r0 + rc; r++, pos += row)
			ut_fill(out + pos, w->seed, w->src_begin + (e * d1 + r) * row, row);
	return out;
}

/* The expert range of rank r of w ranks (NeMo's formula, written out independently). */
static void range(uint64_t n, uint32_t w, uint32_t r, uint64_t *start, uint64_t *count)
{
	uint64_t base = n / w, extra = n % w;

	*count = base + (r < extra);
	*start = r * base + (r < extra ? r : extra);
}

/* Check virtual file path against want[] under slicing (W ranks, rank r; K shards, shard s;
 * W == 0: none). *meta_out receives the parse for further checks when non-NULL. */
void vt_check_vst(struct vt *v, const char *path, const struct want *want, size_t nwant,
		  uint32_t W, uint32_t r, uint32_t K, uint32_t s, struct qv_st *meta_out)
{
	struct qv_node *n = vt_get(v, path);
	char *buf = NULL, err[QV_ERRLEN];
	size_t len;
	uint64_t hl = 0;
	struct qv_st st = { 0 };

	if (!CHECK_MSG(n && !n->dir, "%s: no such file in the view", path))
		return;
	buf = vt_read_all(v, n, &len);
	if (!buf)
		return;
	for (int i = 7; i >= 0; i--)
		hl = hl << 8 | (unsigned char)buf[i];
	if (!CHECK_MSG(len >= 8 && hl <= len - 8, "%s: header length %llu", path,
		       (unsigned long long)hl))
		goto out;
	CHECK_MSG((8 + hl) % 8 == 0, "%s: 8 + N = %llu", path, (unsigned long long)(8 + hl));
	if (!CHECK_MSG(ut_parse_n(buf + 8, (size_t)hl, len - 8 - hl, &st, err, sizeof(err)) == 0,
		       "%s: virtual header does not parse: %s", path, err))
		goto out;
	if (!CHECK_MSG(st.nt == nwant, "%s: %zu tensors, want %zu", path, st.nt, nwant))
		goto out;
	for (size_t i = 0; i < nwant; i++) {
		const struct want *w = &want[i];
		const struct qv_tensor *t = &st.t[i];
		uint64_t e0 = 0, ec = w->shape[0], r0 = 0, rc = w->ndim > 1 ? w->shape[1] : 1, blen;
		char *exp;

		if (w->expert && W) {
			range(w->shape[0], W, r, &e0, &ec);
			if (K > 1) {
				rc = w->shape[1] / K;
				r0 = rc * s;
			}
		}
		CHECK_STR(t->name, w->name);
		CHECK_MSG(t->dtype == w->dtype, "%s: dtype", w->name);
		if (!CHECK_EQ_U64(t->ndim, w->ndim))
			continue;
		for (uint32_t d = 0; d < w->ndim; d++) {
			uint64_t sd = w->expert && d == 0 ? ec :
				      w->expert && d == 1 ? rc : w->shape[d];

			CHECK_MSG(t->shape[d] == sd, "%s: dim %u is %llu, want %llu", w->name, d,
				  (unsigned long long)t->shape[d], (unsigned long long)sd);
		}
		exp = want_bytes(w, e0, ec, r0, rc, &blen);
		if (CHECK_MSG(t->end - t->begin == blen, "%s: %llu bytes, want %llu", w->name,
			      (unsigned long long)(t->end - t->begin), (unsigned long long)blen))
			CHECK_MSG(memcmp(buf + 8 + hl + t->begin, exp, blen) == 0,
				  "%s: wrong tensor bytes", w->name);
		free(exp);
	}
out:
	if (meta_out)
		*meta_out = st;
	else
		qv_st_free(&st);
	free(buf);
}

const char *vt_meta_get(const struct qv_st *st, const char *key)
{
	for (size_t i = 0; i < st->nmeta; i++)
		if (strcmp(st->meta[i].key, key) == 0)
			return st->meta[i].val;
	return NULL;
}

void vt_root_names(struct vt *v, char *out, size_t len)
{
	struct qv_node *root = qv_tree_node(&v->m.tree, 1);
	size_t pos = 0;

	out[0] = '\0';
	for (size_t k = 0; root && k < root->nkids && pos < len; k++)
		pos += (size_t)snprintf(out + pos, len - pos, "%s%s", k ? "," : "",
					qv_tree_node(&v->m.tree, root->kids[k])->name);
}
