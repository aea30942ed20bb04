/*
 * mkckpt_models.c - qvlmoefs-mkckpt --arch: checkpoints of models other than Qwen3-VL-MoE, for
 * the sharded-save tests that must hold for any model Automodel saves: a dense Llama-style
 * model (llama), a per-expert MoE (moe: Qwen3-MoE / DeepSeek keys model.layers.N.mlp.experts.J.
 * {gate,up,down}_proj.weight) and GPT-OSS's stacked experts (gptoss: model.layers.N.mlp.experts.
 * gate_up_proj [E, H, 2I], no language_model.). Their config.json states the dimensions at
 * the top level, as transformers writes them for these models.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include "mkckpt.h"

/* One layer's feed-forward part for arch a. */
static void add_mlp(struct tlist *tl, const struct model *m, enum arch a, const char *b)
{
	uint64_t h = m->hidden, e = m->experts, mi = m->moe_inter, in = 3 * m->hidden;

	if (a == ARCH_LLAMA) {
		tl_add(tl, DT_BF16, SHAPE(in, h), "%s.mlp.gate_proj.weight", b);
		tl_add(tl, DT_BF16, SHAPE(in, h), "%s.mlp.up_proj.weight", b);
		tl_add(tl, DT_BF16, SHAPE(h, in), "%s.mlp.down_proj.weight", b);
	} else if (a == ARCH_MOE) {
		tl_add(tl, DT_BF16, SHAPE(e, h), "%s.mlp.gate.weight", b);
		for (uint64_t j = 0; j < e; j++) {
			tl_add(tl, DT_BF16, SHAPE(mi, h), "%s.mlp.experts.%" PRIu64 ".gate_proj.weight", b, j);
			tl_add(tl, DT_BF16, SHAPE(mi, h), "%s.mlp.experts.%" PRIu64 ".up_proj.weight", b, j);
			tl_add(tl, DT_BF16, SHAPE(h, mi), "%s.mlp.experts.%" PRIu64 ".down_proj.weight", b, j);
		}
	} else {
		tl_add(tl, DT_BF16, SHAPE(e, h), "%s.mlp.router.weight", b);
		tl_add(tl, DT_BF16, SHAPE(e), "%s.mlp.router.bias", b);
		tl_add(tl, DT_BF16, SHAPE(e, h, 2 * mi), "%s.mlp.experts.gate_up_proj", b);
		tl_add(tl, DT_BF16, SHAPE(e, 2 * mi), "%s.mlp.experts.gate_up_proj_bias", b);
		tl_add(tl, DT_BF16, SHAPE(e, mi, h), "%s.mlp.experts.down_proj", b);
		tl_add(tl, DT_BF16, SHAPE(e, h), "%s.mlp.experts.down_proj_bias", b);
	}
}

int build_other(struct tlist *tl, const struct opts *o)
{
	const struct model *m = &o->m;
	char b[NAME_MAX_LEN];

	tl_add(tl, DT_BF16, SHAPE(m->vocab, m->hidden), "model.embed_tokens.weight");
	for (uint64_t l = 0; l < m->layers; l++) {
		snprintf(b, sizeof(b), "model.layers.%" PRIu64, l);
		add_attention(tl, m, b);
		add_mlp(tl, m, o->arch, b);
	}
	tl_add(tl, DT_BF16, SHAPE(m->hidden), "model.norm.weight");
	tl_add(tl, DT_BF16, SHAPE(m->vocab, m->hidden), "lm_head.weight");
	return tl->err;
}

int write_config_other(int dirfd, const struct model *m, enum arch a)
{
	static const char *const archs[] = { "", "LlamaForCausalLM", "Qwen3MoeForCausalLM",
					     "GptOssForCausalLM" };
	static const char *const types[] = { "", "llama", "qwen3_moe", "gpt_oss" };
	struct sbuf sb = { 0 };
	int err;

	sb_printf(&sb, "{\n  \"architectures\": [\"%s\"],\n  \"model_type\": \"%s\",\n"
		  "  \"hidden_size\": %" PRIu64 ",\n  \"num_hidden_layers\": %" PRIu64 ",\n"
		  "  \"num_attention_heads\": %" PRIu64 ",\n  \"num_key_value_heads\": %" PRIu64 ",\n"
		  "  \"head_dim\": %" PRIu64 ",\n  \"vocab_size\": %" PRIu64 ",\n"
		  "  \"tie_word_embeddings\": false,\n  \"torch_dtype\": \"bfloat16\",\n",
		  archs[a], types[a], m->hidden, m->layers, m->heads, m->kv_heads, m->head_dim,
		  m->vocab);
	if (a == ARCH_LLAMA)
		sb_printf(&sb, "  \"intermediate_size\": %" PRIu64 "\n}\n", 3 * m->hidden);
	else if (a == ARCH_MOE)
		sb_printf(&sb, "  \"intermediate_size\": %" PRIu64 ",\n  \"num_experts\": %" PRIu64
			  ",\n  \"num_experts_per_tok\": 2,\n  \"moe_intermediate_size\": %" PRIu64
			  "\n}\n", 3 * m->hidden, m->experts, m->moe_inter);
	else /* GPT-OSS: the experts' width is intermediate_size */
		sb_printf(&sb, "  \"intermediate_size\": %" PRIu64 ",\n  \"num_local_experts\": %"
			  PRIu64 ",\n  \"num_experts_per_tok\": 2\n}\n", m->moe_inter, m->experts);
	err = write_text(dirfd, "config.json", &sb);
	free(sb.p);
	return err;
}
