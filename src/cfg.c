/* cfg.c - read the dimensions a config.json fixes. text_config wins over the top level: the
 * tensors these dimensions are checked against are the language model's, and a vision-language
 * config keeps the language model's sizes there. */
#include "qv_cfg.h"
#include "qv_util.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define MAX_CONFIG_BYTES (16u << 20)

/* The first of names (NULL-terminated) that is a positive integer in text_config, else at the
 * top level, into d. */
static void dim(const cJSON *top, const char *const *names, struct qv_cfg_dim *d)
{
	const cJSON *where[2] = { cJSON_GetObjectItemCaseSensitive(top, "text_config"), top };

	for (size_t w = 0; w < 2; w++)
		for (size_t k = 0; cJSON_IsObject(where[w]) && names[k]; k++) {
			const cJSON *e = cJSON_GetObjectItemCaseSensitive(where[w], names[k]);

			if (cJSON_IsNumber(e) && e->valuedouble >= 1 &&
			    e->valuedouble <= 9007199254740992.0 &&
			    e->valuedouble == (double)(uint64_t)e->valuedouble) {
				d->v = (uint64_t)e->valuedouble;
				snprintf(d->at, sizeof(d->at), "%s%s", w ? "" : "text_config.", names[k]);
				return;
			}
		}
}

/* quantization_config (top level, else text_config): its method and block size. */
static void quant(const cJSON *top, struct qv_cfg *c)
{
	const cJSON *q = cJSON_GetObjectItemCaseSensitive(top, "quantization_config"), *m, *b;

	if (!q)
		q = cJSON_GetObjectItemCaseSensitive(
			cJSON_GetObjectItemCaseSensitive(top, "text_config"), "quantization_config");
	if (!q)
		return;
	m = cJSON_GetObjectItemCaseSensitive(q, "quant_method");
	snprintf(c->quant, sizeof(c->quant), "%s",
		 cJSON_IsString(m) && m->valuestring[0] ? m->valuestring : "?");
	b = cJSON_GetObjectItemCaseSensitive(q, "weight_block_size");
	for (int k = 0; k < 2 && cJSON_GetArraySize(b) == 2; k++) {
		const cJSON *e = cJSON_GetArrayItem(b, k);

		if (cJSON_IsNumber(e) && e->valuedouble >= 1 && e->valuedouble <= 65536 &&
		    e->valuedouble == (double)(uint64_t)e->valuedouble)
			c->qblock[k] = (uint64_t)e->valuedouble;
	}
}

int qv_cfg_load(const struct qv_scan *sc, const char *rel, struct qv_cfg *c)
{
	static const char *const vocab[] = { "vocab_size", NULL }, *const hidden[] = { "hidden_size", NULL };
	static const char *const inter[] = { "intermediate_size", NULL };
	static const char *const moe[] = { "moe_intermediate_size", NULL };
	static const char *const experts[] = { "num_experts", "num_local_experts", "n_routed_experts",
					       NULL };
	uint32_t node = qv_scan_find(sc, rel);
	struct qv_buf b = { 0 };
	cJSON *j = NULL;

	memset(c, 0, sizeof(*c));
	snprintf(c->rel, sizeof(c->rel), "%s", rel);
	if (node && !S_ISDIR(sc->n[node].st.st_mode) &&
	    qv_scan_read(&sc->n[node], MAX_CONFIG_BYTES, &b, NULL, 0) == 0 && b.p)
		j = cJSON_ParseWithLength(b.p, b.len);
	c->present = cJSON_IsObject(j);
	if (c->present) {
		const cJSON *t = cJSON_GetObjectItemCaseSensitive(j, "text_config");

		c->tied = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "tie_word_embeddings")) ||
			  cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(t, "tie_word_embeddings"));
		dim(j, vocab, &c->vocab);
		dim(j, hidden, &c->hidden);
		dim(j, inter, &c->inter);
		dim(j, moe, &c->moe_inter);
		dim(j, experts, &c->experts);
	}
	if (c->present)
		quant(j, c);
	cJSON_Delete(j);
	qv_buf_free(&b);
	return 0;
}

int qv_cfg_unquantized(const char *json, size_t len, struct qv_buf *out)
{
	cJSON *j = cJSON_ParseWithLength(json, len);
	char *text;
	int rc;

	if (!cJSON_IsObject(j)) {
		cJSON_Delete(j);
		return -EINVAL;
	}
	cJSON_DeleteItemFromObjectCaseSensitive(j, "quantization_config");
	cJSON_DeleteItemFromObjectCaseSensitive(cJSON_GetObjectItemCaseSensitive(j, "text_config"),
						"quantization_config");
	text = cJSON_Print(j);
	cJSON_Delete(j);
	if (!text)
		return -ENOMEM;
	rc = qv_buf_adds(out, text);
	if (!rc)
		rc = qv_buf_adds(out, "\n");
	free(text);
	return rc;
}
