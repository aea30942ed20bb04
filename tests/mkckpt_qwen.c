/*
 * mkckpt_qwen.c - qvlmoefs-mkckpt's Qwen3-VL-MoE schema: the --preset dimensions, the tensor
 * list with the real key names, shapes and module order (vision tower, then the language
 * model), config.json, and the tokenizer and generation files that ride along.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mkckpt.h"

#define POS_EMBED_ROWS 2304	/* 48 x 48 learned grid, as in the real vision tower */
#define MERGE 4			/* spatial_merge_size 2, squared */

/* --preset values, in the same order as presets[]. */
const char *const preset_names[] = { "tiny", "30b-a3b", "235b-a22b", NULL };
const struct model presets[] = {
	{ .hidden = 48, .layers = 2, .heads = 4, .kv_heads = 2, .head_dim = 16, .experts = 8,
	  .moe_inter = 40, .vocab = 256, .vdepth = 2, .vhidden = 32, .vinter = 64, .vheads = 2,
	  .patch = 16, .shards = 2, .deepstack = { 0, 1 }, .n_deepstack = 2 },
	{ .hidden = 2048, .layers = 48, .heads = 32, .kv_heads = 4, .head_dim = 128, .experts = 128,
	  .moe_inter = 768, .vocab = 151936, .vdepth = 27, .vhidden = 1152, .vinter = 4304,
	  .vheads = 16, .patch = 16, .shards = 13, .deepstack = { 8, 16, 24 }, .n_deepstack = 3 },
	{ .hidden = 4096, .layers = 94, .heads = 64, .kv_heads = 4, .head_dim = 128, .experts = 128,
	  .moe_inter = 1536, .vocab = 151936, .vdepth = 27, .vhidden = 1152, .vinter = 4304,
	  .vheads = 16, .patch = 16, .shards = 96, .deepstack = { 8, 16, 24 }, .n_deepstack = 3 },
};

/* Append a tensor with a printf-built name; shape x dtype size must fit in 64 bits. */
void __attribute__((format(printf, 5, 6)))
tl_add(struct tlist *tl, enum dtype dt, unsigned ndim, const uint64_t *shape, const char *fmt, ...)
{
	struct tensor *t;
	va_list ap;
	int n;

	if (!tl->err && tl->n == tl->cap) {
		size_t cap = tl->cap ? tl->cap * 2 : 256;
		struct tensor *v = realloc(tl->v, cap * sizeof(*v));

		tl->err = v ? 0 : -ENOMEM;
		tl->v = v ? v : tl->v;
		tl->cap = v ? cap : tl->cap;
	}
	if (tl->err)
		return;
	t = &tl->v[tl->n];
	memset(t, 0, sizeof(*t));
	va_start(ap, fmt);
	n = vsnprintf(t->name, sizeof(t->name), fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof(t->name))
		tl->err = -ENAMETOOLONG;
	t->dtype = dt;
	t->ndim = ndim;
	t->nbytes = dt_size[dt];
	for (unsigned i = 0; i < ndim; i++) {
		t->shape[i] = t->whole[i] = shape[i];
		if (__builtin_mul_overflow(t->nbytes, shape[i], &t->nbytes))
			tl->err = -EOVERFLOW;
	}
	tl->n++;
}

/* A vision module "<base>.{weight,bias}": weight [out, in], or [out] for a norm (in == 0). */
static void add_wb(struct tlist *tl, const char *base, uint64_t out, uint64_t in)
{
	if (in)
		tl_add(tl, DT_BF16, SHAPE(out, in), "%s.weight", base);
	else
		tl_add(tl, DT_BF16, SHAPE(out), "%s.weight", base);
	tl_add(tl, DT_BF16, SHAPE(out), "%s.bias", base);
}

/* One patch merger: norm, then two linears over 2x2-merged patches. */
static void add_merger(struct tlist *tl, const char *base, uint64_t norm, uint64_t vh,
		       uint64_t out)
{
	char name[NAME_MAX_LEN];

	snprintf(name, sizeof(name), "%s.norm", base);
	add_wb(tl, name, norm, 0);
	snprintf(name, sizeof(name), "%s.linear_fc1", base);
	add_wb(tl, name, MERGE * vh, MERGE * vh);
	snprintf(name, sizeof(name), "%s.linear_fc2", base);
	add_wb(tl, name, out, MERGE * vh);
}

/* One vision block, in module order. */
static void add_vision_block(struct tlist *tl, const struct model *m, const char *p, uint64_t i)
{
	static const char *const mods[] = { "norm1", "norm2", "attn.qkv", "attn.proj",
					    "mlp.linear_fc1", "mlp.linear_fc2" };
	uint64_t vh = m->vhidden, vi = m->vinter;
	const uint64_t out[] = { vh, vh, 3 * vh, vh, vi, vh }, in[] = { 0, 0, vh, vh, vh, vi };
	char base[NAME_MAX_LEN];

	for (size_t k = 0; k < ARRAY_SIZE(mods); k++) {
		snprintf(base, sizeof(base), "%svisual.blocks.%" PRIu64 ".%s", p, i, mods[k]);
		add_wb(tl, base, out[k], in[k]);
	}
}

/* The vision tower, in module order; p is the "model." prefix or "". */
static void add_vision(struct tlist *tl, const struct model *m, const char *p)
{
	uint64_t vh = m->vhidden;
	char base[NAME_MAX_LEN];

	tl_add(tl, DT_BF16, SHAPE(vh, 3, 2, m->patch, m->patch),
	       "%svisual.patch_embed.proj.weight", p);
	tl_add(tl, DT_BF16, SHAPE(vh), "%svisual.patch_embed.proj.bias", p);
	tl_add(tl, DT_BF16, SHAPE(POS_EMBED_ROWS, vh), "%svisual.pos_embed.weight", p);
	for (uint64_t i = 0; i < m->vdepth; i++)
		add_vision_block(tl, m, p, i);
	/* The final merger normalises before the 2x2 merge, the deepstack ones after it. */
	snprintf(base, sizeof(base), "%svisual.merger", p);
	add_merger(tl, base, vh, vh, m->hidden);
	for (unsigned k = 0; k < m->n_deepstack; k++) {
		snprintf(base, sizeof(base), "%svisual.deepstack_merger_list.%u", p, k);
		add_merger(tl, base, MERGE * vh, vh, m->hidden);
	}
}

/* Attention and norms of one decoder layer b ("model.layers.N"), in module order; every
 * architecture starts its layers with them. */
void add_attention(struct tlist *tl, const struct model *m, const char *b)
{
	uint64_t h = m->hidden, q = m->heads * m->head_dim, kv = m->kv_heads * m->head_dim;

	tl_add(tl, DT_BF16, SHAPE(h), "%s.input_layernorm.weight", b);
	tl_add(tl, DT_BF16, SHAPE(h), "%s.post_attention_layernorm.weight", b);
	tl_add(tl, DT_BF16, SHAPE(q, h), "%s.self_attn.q_proj.weight", b);
	tl_add(tl, DT_BF16, SHAPE(kv, h), "%s.self_attn.k_proj.weight", b);
	tl_add(tl, DT_BF16, SHAPE(kv, h), "%s.self_attn.v_proj.weight", b);
	tl_add(tl, DT_BF16, SHAPE(h, q), "%s.self_attn.o_proj.weight", b);
}

#define FP8_BLOCK 128

static uint64_t blocks(uint64_t n)
{
	return (n + FP8_BLOCK - 1) / FP8_BLOCK;
}

/* A weight of an FP8 release: F8_E4M3 [n?, r, c] (n 0: 2-dimensional) and its F32 scales, one
 * per 128 x 128 block, named NAME and NAME_scale_inv. */
static void add_fp8(struct tlist *tl, uint64_t n, uint64_t r, uint64_t c, const char *name)
{
	if (n) {
		tl_add(tl, DT_F8_E4M3, SHAPE(n, r, c), "%s", name);
		tl_add(tl, DT_F32, SHAPE(n, blocks(r), blocks(c)), "%s_scale_inv", name);
	} else {
		tl_add(tl, DT_F8_E4M3, SHAPE(r, c), "%s", name);
		tl_add(tl, DT_F32, SHAPE(blocks(r), blocks(c)), "%s_scale_inv", name);
	}
}

/* A layer of an FP8 release (--fp8): norms and the router in BF16, every other linear weight
 * FP8 with block scales; experts one weight each (per-expert, as Qwen's FP8 releases of its
 * MoE models) or fused ([E, H, 2I], or [E, 2I, H] with --linear-experts). */
static void add_fp8_layer(struct tlist *tl, const struct opts *o, const char *b)
{
	static const char *const proj[] = { "q_proj", "k_proj", "v_proj", "o_proj" };
	const struct model *m = &o->m;
	uint64_t h = m->hidden, e = m->experts, in = m->moe_inter, hd = m->head_dim;
	uint64_t q = m->heads * hd, kv = m->kv_heads * hd;
	char w[NAME_MAX_LEN + 64]; /* b plus the longest suffix */

	tl_add(tl, DT_BF16, SHAPE(h), "%s.input_layernorm.weight", b);
	tl_add(tl, DT_BF16, SHAPE(h), "%s.post_attention_layernorm.weight", b);
	for (int k = 0; k < 4; k++) {
		snprintf(w, sizeof(w), "%s.self_attn.%s.weight", b, proj[k]);
		add_fp8(tl, 0, k == 0 ? q : k == 3 ? h : kv, k == 3 ? q : h, w);
	}
	tl_add(tl, DT_BF16, SHAPE(hd), "%s.self_attn.q_norm.weight", b);
	tl_add(tl, DT_BF16, SHAPE(hd), "%s.self_attn.k_norm.weight", b);
	tl_add(tl, DT_BF16, SHAPE(e, h), "%s.mlp.gate.weight", b);
	if (o->fp8 == FP8_FUSED) {
		snprintf(w, sizeof(w), "%s.mlp.experts.gate_up_proj", b);
		add_fp8(tl, e, o->linear ? 2 * in : h, o->linear ? h : 2 * in, w);
		snprintf(w, sizeof(w), "%s.mlp.experts.down_proj", b);
		add_fp8(tl, e, o->linear ? h : in, o->linear ? in : h, w);
		return;
	}
	for (uint64_t j = 0; j < e; j++) {
		snprintf(w, sizeof(w), "%s.mlp.experts.%" PRIu64 ".gate_proj.weight", b, j);
		add_fp8(tl, 0, in, h, w);
		snprintf(w, sizeof(w), "%s.mlp.experts.%" PRIu64 ".up_proj.weight", b, j);
		add_fp8(tl, 0, in, h, w);
		snprintf(w, sizeof(w), "%s.mlp.experts.%" PRIu64 ".down_proj.weight", b, j);
		add_fp8(tl, 0, h, in, w);
	}
}

/* One decoder layer, in module order, plus the optional quirk tensors. */
static void add_layer(struct tlist *tl, const struct opts *o, const char *p, uint64_t l)
{
	const struct model *m = &o->m;
	uint64_t h = m->hidden, e = m->experts, in = m->moe_inter, hd = m->head_dim;
	char b[NAME_MAX_LEN];

	snprintf(b, sizeof(b), "%slanguage_model.layers.%" PRIu64, p, l);
	if (o->fp8)
		return add_fp8_layer(tl, o, b);
	add_attention(tl, m, b);
	tl_add(tl, DT_BF16, SHAPE(hd), "%s.self_attn.q_norm.weight", b);
	tl_add(tl, DT_BF16, SHAPE(hd), "%s.self_attn.k_norm.weight", b);
	tl_add(tl, DT_BF16, SHAPE(e, h), "%s.mlp.gate.weight", b);
	/* Same shapes in both namings (the Hub's layout); --linear-experts: transformers 5's */
	tl_add(tl, DT_BF16, SHAPE(e, o->linear ? 2 * in : h, o->linear ? h : 2 * in),
	       "%s.mlp.experts.%s", b, o->native ? "gate_and_up_projs" : "gate_up_proj");
	tl_add(tl, DT_BF16, SHAPE(e, o->linear ? h : in, o->linear ? in : h), "%s.mlp.experts.%s",
	       b, o->native ? "down_projs" : "down_proj");
	if (o->scale_inv)
		tl_add(tl, DT_F32, SHAPE(e), "%s.mlp.experts.gate_up_proj_scale_inv", b);
	if (o->extra_state)
		tl_add(tl, DT_U8, SHAPE(16), "%s.self_attn._extra_state", b);
}

/* All tensors in the order HF walks the module tree, which is also the sharding order. */
int build_tensors(struct tlist *tl, const struct opts *o)
{
	const struct model *m = &o->m;
	const char *p = o->no_prefix ? "" : "model.";

	if (o->arch != ARCH_QWEN)
		return build_other(tl, o);
	add_vision(tl, m, p);
	tl_add(tl, DT_BF16, SHAPE(m->vocab, m->hidden), "%slanguage_model.embed_tokens.weight", p);
	for (uint64_t l = 0; l < m->layers; l++)
		add_layer(tl, o, p, l);
	tl_add(tl, DT_BF16, SHAPE(m->hidden), "%slanguage_model.norm.weight", p);
	tl_add(tl, DT_BF16, SHAPE(m->vocab, m->hidden), "lm_head.weight");
	return tl->err;
}

/* Reject or fix up dimensions no loader could make sense of, before writing anything. */
void check_model(struct model *m)
{
	unsigned n = 0;

	if (m->heads % m->kv_heads)
		usage_error("--kv-heads", "must divide --heads");
	if (m->vhidden % m->vheads)
		m->vheads = 1;	/* vision heads are not a tensor dimension; keep the config sane */
	/* Deepstack taps must name existing blocks: keep the preset's that still do. */
	for (unsigned k = 0; k < m->n_deepstack; k++)
		if (m->deepstack[k] < m->vdepth)
			m->deepstack[n++] = m->deepstack[k];
	m->n_deepstack = n;
}

/* config.json: the fields loaders read to rebuild shapes, mirroring the real checkpoints. */
int write_config(int dirfd, const struct opts *o)
{
	const struct model *m = &o->m;
	uint64_t half = m->head_dim / 2, hw = half * 5 / 16;	/* mrope [24,20,20] at 128 */
	struct sbuf sb = { 0 };
	int err;

	if (o->arch != ARCH_QWEN)
		return write_config_other(dirfd, m, o->arch);
	sb_printf(&sb, "{\n  \"architectures\": [\"Qwen3VLMoeForConditionalGeneration\"],\n"
		  "  \"model_type\": \"qwen3_vl_moe\",\n  \"image_token_id\": 151655,\n"
		  "  \"video_token_id\": 151656,\n  \"vision_start_token_id\": 151652,\n"
		  "  \"vision_end_token_id\": 151653,\n  \"tie_word_embeddings\": false,\n"
		  "  \"torch_dtype\": \"bfloat16\",\n%s  \"text_config\": {\n"
		  "    \"model_type\": \"qwen3_vl_moe_text\",\n    \"hidden_act\": \"silu\",\n",
		  o->fp8 ? "  \"quantization_config\": {\"quant_method\": \"fp8\", \"fmt\": "
			   "\"e4m3\", \"activation_scheme\": \"dynamic\", "
			   "\"weight_block_size\": [128, 128]},\n" : "");
	sb_printf(&sb, "    \"hidden_size\": %" PRIu64 ",\n    \"num_hidden_layers\": %" PRIu64 ",\n"
		  "    \"num_attention_heads\": %" PRIu64 ",\n    \"num_key_value_heads\": %" PRIu64 ",\n"
		  "    \"head_dim\": %" PRIu64 ",\n    \"num_experts\": %" PRIu64 ",\n"
		  "    \"num_experts_per_tok\": %" PRIu64 ",\n    \"moe_intermediate_size\": %" PRIu64 ",\n"
		  "    \"vocab_size\": %" PRIu64 ",\n    \"intermediate_size\": %" PRIu64 ",\n",
		  m->hidden, m->layers, m->heads, m->kv_heads, m->head_dim, m->experts,
		  m->experts < 8 ? m->experts : 8, m->moe_inter, m->vocab, 3 * m->hidden);
	sb_printf(&sb, "    \"decoder_sparse_step\": 1,\n    \"mlp_only_layers\": [],\n"
		  "    \"attention_bias\": false,\n    \"rms_norm_eps\": 1e-06,\n"
		  "    \"rope_theta\": 5000000,\n    \"max_position_embeddings\": 262144,\n"
		  "    \"rope_scaling\": {\"rope_type\": \"default\", \"mrope_interleaved\": true, "
		  "\"mrope_section\": [%" PRIu64 ", %" PRIu64 ", %" PRIu64 "]},\n"
		  "    \"torch_dtype\": \"bfloat16\"\n  },\n", half - 2 * hw, hw, hw);
	sb_printf(&sb, "  \"vision_config\": {\n    \"model_type\": \"qwen3_vl_moe\",\n"
		  "    \"hidden_act\": \"gelu_pytorch_tanh\",\n    \"depth\": %" PRIu64 ",\n"
		  "    \"hidden_size\": %" PRIu64 ",\n    \"intermediate_size\": %" PRIu64 ",\n"
		  "    \"num_heads\": %" PRIu64 ",\n    \"patch_size\": %" PRIu64 ",\n"
		  "    \"temporal_patch_size\": 2,\n    \"in_channels\": 3,\n"
		  "    \"spatial_merge_size\": 2,\n    \"num_position_embeddings\": %d,\n"
		  "    \"out_hidden_size\": %" PRIu64 ",\n    \"deepstack_visual_indexes\": [",
		  m->vdepth, m->vhidden, m->vinter, m->vheads, m->patch, POS_EMBED_ROWS, m->hidden);
	for (unsigned k = 0; k < m->n_deepstack; k++)
		sb_printf(&sb, "%s%" PRIu64, k ? ", " : "", m->deepstack[k]);
	sb_printf(&sb, "]\n  }\n}\n");
	err = write_text(dirfd, "config.json", &sb);
	free(sb.p);
	return err;
}

/* Files that pass through the filesystem untouched; tiny but valid JSON. */
static const struct {
	const char *name;
	const char *text;
} static_files[] = {
	{ "generation_config.json",
	  "{\n  \"bos_token_id\": 151643,\n  \"pad_token_id\": 151643,\n  \"do_sample\": true,\n"
	  "  \"eos_token_id\": [151645, 151643],\n  \"top_k\": 20,\n  \"top_p\": 0.8,\n"
	  "  \"temperature\": 0.7\n}\n" },
	{ "tokenizer_config.json",
	  "{\n  \"tokenizer_class\": \"Qwen2Tokenizer\",\n  \"model_max_length\": 262144,\n"
	  "  \"bos_token\": null,\n  \"eos_token\": \"<|im_end|>\",\n"
	  "  \"pad_token\": \"<|endoftext|>\",\n  \"unk_token\": null\n}\n" },
	{ "tokenizer.json",
	  "{\"version\":\"1.0\",\"truncation\":null,\"padding\":null,\"added_tokens\":[],"
	  "\"normalizer\":null,\"pre_tokenizer\":{\"type\":\"Whitespace\"},"
	  "\"post_processor\":null,\"decoder\":null,\"model\":{\"type\":\"WordLevel\","
	  "\"vocab\":{\"<unk>\":0,\"<|endoftext|>\":1,\"<|im_end|>\":2},\"unk_token\":\"<unk>\"}}\n" },
	{ "chat_template.json",
	  "{\n  \"chat_template\": \"{% for message in messages %}<|im_start|>{{ message['role'] }}"
	  "\\n{{ message['content'] }}<|im_end|>\\n{% endfor %}"
	  "{% if add_generation_prompt %}<|im_start|>assistant\\n{% endif %}\"\n}\n" },
};

/* The pass-through files, into the directory dirfd. */
int write_static_files(int dirfd)
{
	for (size_t i = 0; i < ARRAY_SIZE(static_files); i++) {
		struct sbuf sb = { .p = (char *)static_files[i].text,
				   .len = strlen(static_files[i].text) };
		int err = write_text(dirfd, static_files[i].name, &sb);

		if (err)
			return err;
	}
	return 0;
}
