/* qv_cfg.h - the dimensions a Hugging Face config.json fixes (vocabulary, hidden and
 * intermediate sizes, expert count), at its top level or in text_config, under the names
 * writers use. FUSE-free. */
#ifndef QV_CFG_H
#define QV_CFG_H

#include <stdbool.h>
#include <stdint.h>

#include "qv_scan.h"
#include "qv_util.h"

/* One dimension and where it was stated ("text_config.vocab_size"); v 0: not stated. */
struct qv_cfg_dim {
	uint64_t v;
	char at[48];
};

struct qv_cfg {
	bool present;	 /* the file was there and parsed as a JSON object */
	char rel[64];	 /* its path in the source, for messages */
	bool tied;	 /* tie_word_embeddings true at either level */
	struct qv_cfg_dim vocab, hidden, inter, moe_inter, experts;
	char quant[32];	    /* quantization_config.quant_method ("" when none; "?" unreadable) */
	uint64_t qblock[2]; /* its weight_block_size (0: not stated) */
};

/* The config at scan path rel into c; a missing or unreadable file leaves c->present false
 * (a config passes through the view; nothing here may refuse a mount). Always 0. */
int qv_cfg_load(const struct qv_scan *sc, const char *rel, struct qv_cfg *c);

/* The config text json (len bytes) without quantization_config (top level and text_config):
 * what a view of dequantized weights shows. 0, -ENOMEM, or -EINVAL when it is no JSON object. */
int qv_cfg_unquantized(const char *json, size_t len, struct qv_buf *out);

#endif
