/* dcpcheck.c - the completeness of a sharded save beyond its tiling. Automodel records no
 * global shape (DCP_SHARDING_INFO holds offsets only, and its own consolidation takes the
 * largest offset + chunk shape, as qv_dcp_build does): a save without its last rank file is a
 * smaller, well-tiled save. What does say the full size: the mapping names every tensor the
 * model saved, and config.json fixes the language model's dimensions. Each rule below names a
 * tensor layout that transformers and Automodel use for every model of that kind; a tensor no
 * rule names is checked by tiling alone. */
#include "qv_dcpcheck.h"
#include "qv_util.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* The language model's prefixes, longest first: Qwen3-VL, text models, LLaVA-style, bare. */
static const char *const lm_prefixes[] = { "model.language_model.", "model.text_model.",
					   "language_model.model.", "language_model.", "model.", "" };

enum dim_of { NONE, VOCAB, HIDDEN, INTER, MOE_INTER, EXPERTS };

/* A rule: the tensor's expected dimensions, by config field. */
struct expect {
	uint32_t ndim;
	enum dim_of d[2];
};

static const struct qv_cfg_dim *cfg_dim(const struct qv_cfg *c, enum dim_of w)
{
	switch (w) {
	case VOCAB: return &c->vocab;
	case HIDDEN: return &c->hidden;
	case INTER: return &c->inter;
	case MOE_INTER: return &c->moe_inter;
	case EXPERTS: return &c->experts;
	default: return NULL;
	}
}

/* "layers.N." at s: the rest after it, or NULL. */
static const char *after_layer(const char *s)
{
	const char *d;

	if (strncmp(s, "layers.", 7))
		return NULL;
	for (d = s + 7; isdigit((unsigned char)*d); d++)
		;
	return d > s + 7 && *d == '.' ? d + 1 : NULL;
}

/* "experts.J." at s (J digits): J, and the rest after it in *rest; else -1. */
static long long expert_index(const char *s, const char **rest)
{
	char *end;
	long long j;

	if (strncmp(s, "experts.", 8) || !isdigit((unsigned char)s[8]))
		return -1;
	j = strtoll(s + 8, &end, 10);
	if (*end != '.')
		return -1;
	*rest = end + 1;
	return j;
}

/* The language model's tensor layouts that fix dimensions (e->ndim 0: no rule for key). */
static void rule(const char *key, struct expect *e)
{
	const char *r = key, *t, *x;

	*e = (struct expect){ 0 };
	for (size_t i = 0; i < sizeof(lm_prefixes) / sizeof(*lm_prefixes); i++)
		if (qv_starts_with(key, lm_prefixes[i])) {
			r = key + strlen(lm_prefixes[i]);
			break;
		}
	if (!strcmp(r, "embed_tokens.weight") || !strcmp(key, "lm_head.weight"))
		*e = (struct expect){ 2, { VOCAB, HIDDEN } };
	else if (!strcmp(r, "norm.weight"))
		*e = (struct expect){ 1, { HIDDEN } };
	else if (!(t = after_layer(r)))
		return;
	else if (!strcmp(t, "input_layernorm.weight") || !strcmp(t, "post_attention_layernorm.weight"))
		*e = (struct expect){ 1, { HIDDEN } };
	else if (!strcmp(t, "mlp.gate_proj.weight") || !strcmp(t, "mlp.up_proj.weight"))
		*e = (struct expect){ 2, { INTER, HIDDEN } };
	else if (!strcmp(t, "mlp.down_proj.weight"))
		*e = (struct expect){ 2, { HIDDEN, INTER } };
	else if (!strcmp(t, "mlp.gate.weight") || !strcmp(t, "mlp.router.weight"))
		*e = (struct expect){ 2, { EXPERTS, HIDDEN } };
	else if (strncmp(t, "mlp.", 4))
		return;
	else if (expert_index(t + 4, &x) >= 0 &&
		 (!strcmp(x, "gate_proj.weight") || !strcmp(x, "up_proj.weight")))
		*e = (struct expect){ 2, { MOE_INTER, HIDDEN } };
	else if (expert_index(t + 4, &x) >= 0 && !strcmp(x, "down_proj.weight"))
		*e = (struct expect){ 2, { HIDDEN, MOE_INTER } };
	else if (!strncmp(t + 4, "experts.", 8) && !isdigit((unsigned char)t[12]))
		*e = (struct expect){ 1, { EXPERTS } }; /* stacked experts: [E, ...] */
}

/* Floating-point tensors only for the [., hidden] rules: a packed integer weight (4-bit,
 * blocks) has other shapes. */
static bool is_float(enum qv_dtype t)
{
	return t == QV_DT_F16 || t == QV_DT_BF16 || t == QV_DT_F32 || t == QV_DT_F64 ||
	       t == QV_DT_F8_E4M3 || t == QV_DT_F8_E5M2 || t == QV_DT_F8_E4M3FNUZ ||
	       t == QV_DT_F8_E5M2FNUZ;
}

static int check_dims(const struct qv_dtensor *x, const struct qv_cfg *c, const char *next,
		      char *err, size_t errlen)
{
	struct expect e;

	rule(x->name, &e);
	if (!e.ndim || x->ndim < e.ndim || (e.d[0] != EXPERTS && (x->ndim != e.ndim ||
								    !is_float(x->dtype))))
		return 0;
	for (uint32_t k = 0; k < e.ndim; k++) {
		const struct qv_cfg_dim *d = cfg_dim(c, e.d[k]);

		if (d && d->v && x->shape[k] != d->v)
			return qv_err(err, errlen, -EINVAL,
				      "tensor \"%s\": dim %u is %llu, expected %llu (%s's %s)%s%s%s",
				      x->name, k, (unsigned long long)x->shape[k],
				      (unsigned long long)d->v, c->rel, d->at,
				      x->shape[k] < d->v ? ": " : "",
				      x->shape[k] < d->v ? next : "",
				      x->shape[k] < d->v ? " is likely missing" : "");
	}
	return 0;
}

/* One per-expert key: its layer's name with the index taken out, and the index. */
struct pe {
	char *group;
	long long j;
};

static int cmp_pe(const void *a, const void *b)
{
	const struct pe *x = a, *y = b;
	int c = strcmp(x->group, y->group);

	return c ? c : (x->j > y->j) - (x->j < y->j);
}

/* Per-expert keys (...mlp.experts.J.REST): every layer's REST must exist for J in [0, E). A
 * missing rank takes its experts' keys with it, and without the mapping nothing else says so. */
static int check_experts(const struct qv_dcp *d, const struct qv_cfg *c, const char *next,
			 char *err, size_t errlen)
{
	struct pe *v = calloc(d->nt ? d->nt : 1, sizeof(*v));
	uint64_t want = c->experts.v;
	size_t n = 0, i, k;
	int rc = v ? 0 : -ENOMEM;

	for (i = 0; i < d->nt && !rc && want; i++) {
		const char *s = strstr(d->t[i].name, ".mlp.experts."), *rest;
		long long j = s ? expert_index(s + 5, &rest) : -1;

		if (j < 0)
			continue;
		if (asprintf(&v[n].group, "%.*s.mlp.experts.{}.%s", (int)(s - d->t[i].name),
			     d->t[i].name, rest) < 0) {
			rc = -ENOMEM;
			break;
		}
		v[n++].j = j;
	}
	if (!rc)
		qsort(v, n, sizeof(*v), cmp_pe);
	for (i = 0; i < n && !rc; i = k) {
		long long have = 0;

		for (k = i; k < n && !strcmp(v[k].group, v[i].group); k++)
			have += v[k].j == have;
		if ((uint64_t)have == want && k - i == want)
			continue;
		if ((uint64_t)have < want)
			rc = qv_err(err, errlen, -EINVAL,
				    "tensors \"%s\": %s's %s says %llu experts, the rank files hold "
				    "%zu (expert %lld is not there): %s is likely missing",
				    v[i].group, c->rel, c->experts.at, (unsigned long long)want, k - i,
				    have, next);
		else
			rc = qv_err(err, errlen, -EINVAL,
				    "tensors \"%s\": %s's %s says %llu experts, the rank files hold %zu",
				    v[i].group, c->rel, c->experts.at, (unsigned long long)want, k - i);
	}
	for (i = 0; i < n; i++)
		free(v[i].group);
	free(v);
	if (rc == -ENOMEM)
		qv_err(err, errlen, rc, "out of memory");
	return rc;
}

/* Tensors the mapping names and no rank file holds. A tied lm_head is the one such name
 * Automodel's own consolidation lets pass (a tied-weight alias is not saved). */
static int check_mapping(const struct qv_dcp *d, const struct qv_scan *sc, const struct qv_cfg *c,
			 const char *next, char *err, size_t errlen)
{
	for (size_t i = 0; i < d->nabsent; i++) {
		if (c->tied && !strcmp(d->absent[i], "lm_head.weight")) {
			qv_log("%s names lm_head.weight, which no rank file holds: it is tied to the "
			       "embeddings (tie_word_embeddings), so it is left out",
			       sc->n[d->map_node].rel);
			continue;
		}
		return qv_err(err, errlen, -EINVAL,
			      "tensor \"%s\": %s names it, but no rank file holds any of it "
			      "(expected its chunks, found none; %zu such tensors): %s is likely missing",
			      d->absent[i], sc->n[d->map_node].rel, d->nabsent, next);
	}
	return 0;
}

static int cmp_dt(const void *a, const void *b)
{
	return strcmp(((const struct qv_dtensor *)a)->name, ((const struct qv_dtensor *)b)->name);
}

#define DTYPE_MAP_REL ".hf_metadata/fqn_to_dtype_mapping.json"
#define MAX_MAP_BYTES (256u << 20)

/* fqn_to_dtype_mapping.json as a JSON object in *j, NULL when the save has none. One that is
 * there but cannot be read or is no JSON object refuses the mount, as a bad
 * fqn_to_file_index_mapping.json does: skipping it would mount a save it says is incomplete. */
static int read_dtype_mapping(const struct qv_scan *sc, cJSON **j, char *err, size_t errlen)
{
	uint32_t node = qv_scan_find(sc, DTYPE_MAP_REL);
	struct qv_buf b = { 0 };
	char why[QV_ERRLEN];
	int rc;

	*j = NULL;
	if (!node)
		return 0;
	if (S_ISDIR(sc->n[node].st.st_mode))
		return qv_err(err, errlen, -EINVAL, "%s: a folder, not a JSON file", DTYPE_MAP_REL);
	rc = qv_scan_read(&sc->n[node], MAX_MAP_BYTES, &b, why, sizeof(why));
	if (rc)
		qv_err(err, errlen, rc, "%s: %s", DTYPE_MAP_REL, why);
	else if (!cJSON_IsObject(*j = b.p ? cJSON_ParseWithLength(b.p, b.len) : NULL))
		rc = qv_err(err, errlen, -EINVAL, "%s: not a JSON object", DTYPE_MAP_REL);
	qv_buf_free(&b);
	if (rc) {
		cJSON_Delete(*j);
		*j = NULL;
	}
	return rc;
}

/* fqn_to_dtype_mapping.json, when Automodel wrote one, holds only keys of the state dict it
 * saved (it is aligned to them before it is written): each must be in some rank file too. */
static int check_dtype_mapping(const struct qv_dcp *d, const struct qv_scan *sc,
			       const char *next, char *err, size_t errlen)
{
	cJSON *j;
	int rc = read_dtype_mapping(sc, &j, err, errlen);

	for (cJSON *k = j ? j->child : NULL; k && !rc; k = k->next) {
		struct qv_dtensor key = { .name = k->string };

		if (!bsearch(&key, d->t, d->nt, sizeof(*d->t), cmp_dt))
			rc = qv_err(err, errlen, -EINVAL,
				    "tensor \"%s\": %s names it, but no rank file holds any of it "
				    "(expected its chunks, found none): %s is likely missing",
				    k->string, DTYPE_MAP_REL, next);
	}
	cJSON_Delete(j);
	return rc;
}

int qv_dcpcheck(const struct qv_dcp *d, const struct qv_scan *sc, const struct qv_cfg *c,
		char *err, size_t errlen)
{
	char next[128];
	int rc;

	qv_dcp_rank_files(sc, next, sizeof(next));
	rc = check_mapping(d, sc, c, next, err, errlen);
	if (!rc)
		rc = check_dtype_mapping(d, sc, next, err, errlen);
	for (size_t i = 0; !rc && c->present && i < d->nt; i++)
		rc = check_dims(&d->t[i], c, next, err, errlen);
	if (!rc && c->present)
		rc = check_experts(d, c, next, err, errlen);
	return rc;
}
