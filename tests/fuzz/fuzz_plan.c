/* libFuzzer target: planning a view from a parsed header, slicing, expert layouts, FP8
 * dequantization and per-expert stacking included. Input: 8 option bytes (view, part, layouts
 * and dequant; ep_size; ep_rank; shard size; shard rank; 3 data-size bytes, whose first two
 * are also H and I), then the header. Oracles: the synthesized header parses back and
 * describes the file exactly, and every extent, and every computed block's input, stays inside
 * the source's data section. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "qv_gen.h"
#include "qv_plan.h"
#include "qv_quant.h"
#include "qv_st.h"
#include "qv_util.h"
#include "qv_view.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* rows runs of len bytes from off, stride apart, inside [lo, hi). */
static void inside(uint64_t off, uint64_t rows, uint64_t len, uint64_t stride, uint64_t lo,
		   uint64_t hi)
{
	if (!rows || off < lo || off + (rows - 1) * stride + len > hi)
		abort();
}

static void check_comp(const struct qv_comp *c, uint64_t lo, uint64_t hi)
{
	if (qv_comp_check(c))
		abort();
	for (uint64_t i = 0; i < c->nblk * c->nops; i++) {
		const struct qv_xop *o = &c->ops[i];

		if (qv_xop_empty(o))
			continue;
		inside(o->soff, o->rows, o->cols * (o->kind == QV_XOP_T16 ? 2 : 1), o->sstride, lo, hi);
		if (o->kind != QV_XOP_T16)
			inside(o->scale_off, (o->rows + o->block - 1) / o->block,
			       (o->cols + o->block - 1) / o->block * 4, o->scale_stride, lo, hi);
	}
}

static void check_view_file(const struct qv_st *src, const struct qv_vfile *vf)
{
	uint64_t n = 0, lo = 8 + src->hdr_len, hi = lo + src->data_size, pos = 0;
	struct qv_st back;
	char err[QV_ERRLEN];

	for (int i = 7; i >= 0; i--)
		n = n << 8 | (unsigned char)vf->mem[i];
	if (vf->nseg == 0 || vf->seg[0].len != 8 + n || (8 + n) % 8)
		abort();
	if (qv_st_parse(vf->mem + 8, n, vf->size, &back, err, sizeof(err)))
		abort();
	qv_st_free(&back);
	for (size_t i = 0; i < vf->nseg; i++) {
		const struct qv_seg *s = &vf->seg[i];

		if (s->voff != pos || s->len == 0)
			abort();
		pos += s->len;
		if (s->src == QV_SEG_MEM)
			continue;
		if (s->src == QV_SEG_COMPUTED) {
			check_comp(s->comp, lo, hi);
			continue;
		}
		/* the last run must end inside the source data section */
		if (s->run == 0 || s->len % s->run || s->soff < lo ||
		    s->soff + (s->len / s->run - 1) * s->stride + s->run > hi)
			abort();
	}
	if (pos != vf->size)
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct qv_plan_opts o = { 0 };
	struct qv_plan p;
	struct qv_st st, *st_of[1] = { &st };
	struct qv_snode node = { .name = "fuzz", .rel = "fuzz" };
	struct qv_cfg cfg = { .rel = "config.json" };
	struct qv_gen g = { .scan = { .n = &node, .nn = 1 }, .st_of = st_of,
			    .src_of = (uint32_t[]){ 0 } };
	struct qv_vfile vf = { 0 };
	struct qv_fkeys fk = { 0 };
	char err[QV_ERRLEN], *hdr;
	uint32_t dsize;

	if (size < 8)
		return 0;
	dsize = (uint32_t)data[5] | (uint32_t)data[6] << 8 | (uint32_t)data[7] << 16;
	hdr = malloc(size - 8 ? size - 8 : 1);
	memcpy(hdr, data + 8, size - 8);
	if (qv_st_parse(hdr, size - 8, 8 + (uint64_t)(size - 8) + dsize, &st, err, sizeof(err))) {
		free(hdr);
		return 0;
	}
	for (size_t i = 0; i < st.nt; i++) {
		o.src |= qv_plan_key_is_native(st.t[i].name);
		o.model_prefix |= qv_starts_with(st.t[i].name, "model.");
	}
	if (qv_quant_load(&g.quant, &g.scan, st_of, &cfg)) {
		qv_st_free(&st);
		free(hdr);
		return 0;
	}
	g.n_experts = data[2];
	o.view = data[0] & 1 ? !o.src : o.src;
	o.ep_size = data[1] % 17;
	o.ep_rank = data[2] % 17;
	o.shard_size = data[3] % 5;
	o.shard_rank = data[4] % 5;
	o.hidden = data[5] % 64;
	o.inter = data[6] % 64;
	o.src_layout = (enum qv_layout)((data[0] >> 3) % 3);
	o.view_layout = (enum qv_layout)((data[0] >> 5) % 3);
	o.dequant = g.quant.fp8 && (data[0] & 0x80);
	o.stack = g.quant.ng && !g.quant.stack_problem[0] && (data[0] & 0x80);
	if (qv_plan_init(&p, &o, err, sizeof(err)) == 0) {
		if (qv_view_file(&g, &p, 0, (enum qv_part)((data[0] >> 1) % 3), &vf, &fk, err,
				 sizeof(err)) == 0)
			check_view_file(&st, &vf);
		qv_vfile_fini(&vf);
		qv_fkeys_fini(&fk);
	}
	qv_plan_free(&p);
	qv_quant_free(&g.quant);
	qv_st_free(&st);
	free(hdr);
	return 0;
}
