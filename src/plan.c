/* plan.c - NeMo Automodel's Qwen3VLMoeStateDictAdapter rules (from_hf / to_hf), in C. */
#include "qv_plan.h"
#include "qv_rx.h"
#include "qv_util.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NATIVE_GATE_UP ".mlp.experts.gate_and_up_projs"
#define NATIVE_DOWN ".mlp.experts.down_projs"
#define HF_GATE_UP ".mlp.experts.gate_up_proj"
#define HF_DOWN ".mlp.experts.down_proj"

bool qv_plan_key_is_native(const char *key)
{
	return qv_ends_with(key, NATIVE_GATE_UP) || qv_ends_with(key, NATIVE_DOWN);
}

/* The anchored HF expert pattern (model\.)?language_model\.layers\.(\d+)\.mlp\.experts\.
 * (gate_up_proj|down_proj); on a match, layer and layer_len give the digits, gate_up the kind. */
static bool match_hf_expert(const char *k, const char **layer, size_t *layer_len, bool *gate_up)
{
	static const char lead[] = "language_model.layers.";
	static const char mid[] = ".mlp.experts.";
	const char *d;

	if (qv_starts_with(k, "model."))
		k += 6;
	if (!qv_starts_with(k, lead))
		return false;
	k += sizeof(lead) - 1;
	for (d = k; isdigit((unsigned char)*d); d++)
		;
	if (d == k || !qv_starts_with(d, mid))
		return false;
	*layer = k;
	*layer_len = (size_t)(d - k);
	d += sizeof(mid) - 1;
	if (strcmp(d, "gate_up_proj") == 0)
		*gate_up = true;
	else if (strcmp(d, "down_proj") == 0)
		*gate_up = false;
	else
		return false;
	return true;
}

/* Python's str.replace(from, to): every occurrence, left to right. */
static char *replace_all(const char *s, const char *from, const char *to)
{
	size_t fl = strlen(from);
	struct qv_buf b = { 0 };
	const char *hit;

	while ((hit = strstr(s, from))) {
		if (qv_buf_add(&b, s, (size_t)(hit - s)) || qv_buf_adds(&b, to))
			goto oom;
		s = hit + fl;
	}
	if (qv_buf_adds(&b, s))
		goto oom;
	return b.p;
oom:
	qv_buf_free(&b);
	return NULL;
}

static int compile_exclude(struct qv_plan *p, const char *pat, char *err, size_t errlen)
{
	struct qv_buf ere = { 0 };
	int rc = qv_rx_ere(pat, &ere, err, errlen);

	if (!rc)
		rc = regcomp(&p->exclude, ere.p, REG_EXTENDED | REG_NOSUB);
	qv_buf_free(&ere);
	if (rc == -ENOMEM)
		return qv_err(err, errlen, rc, "exclude=%s: out of memory", pat);
	if (rc < 0)
		return rc;
	if (rc) {
		char why[128];

		regerror(rc, &p->exclude, why, sizeof(why));
		return qv_err(err, errlen, -EINVAL, "exclude=%s: %s", pat, why);
	}
	p->has_exclude = true;
	return 0;
}

int qv_plan_init(struct qv_plan *p, const struct qv_plan_opts *o, char *err, size_t errlen)
{
	memset(p, 0, sizeof(*p));
	p->o = *o;
	if (o->ep_size && o->ep_rank >= o->ep_size)
		return qv_err(err, errlen, -EINVAL, "ep_rank=%u must be below ep_size=%u", o->ep_rank,
			      o->ep_size);
	if (o->shard_size > 1 && o->shard_rank >= o->shard_size)
		return qv_err(err, errlen, -EINVAL, "ep_shard_rank=%u must be below ep_shard_size=%u",
			      o->shard_rank, o->shard_size);
	/* a bad pattern is an error even where it would not apply: the user meant something */
	if (o->exclude || (o->src == QV_NAMING_NATIVE && o->view == QV_NAMING_HF))
		return compile_exclude(p, o->exclude ? o->exclude : QV_DEFAULT_EXCLUDE, err, errlen);
	return 0;
}

void qv_plan_free(struct qv_plan *p)
{
	if (p->has_exclude)
		regfree(&p->exclude);
	p->has_exclude = false;
}

static int from_hf(const struct qv_plan *p, const char *key, char **out, bool *expert)
{
	const char *prefix = p->o.model_prefix ? "model." : "";
	const char *layer;
	size_t llen;
	bool gate_up;
	int n;

	if (match_hf_expert(key, &layer, &llen, &gate_up)) {
		*expert = true;
		n = asprintf(out, "%slanguage_model.layers.%.*s%s", prefix, (int)llen, layer,
			     gate_up ? NATIVE_GATE_UP : NATIVE_DOWN);
		goto done;
	}
	if (qv_ends_with(key, "_scale_inv"))
		return 0;
	if (qv_starts_with(key, "model.") || qv_starts_with(key, "lm_head."))
		prefix = "";
	n = asprintf(out, "%s%s", prefix, key);
done:
	if (n < 0)
		*out = NULL; /* asprintf leaves it undefined on failure */
	return n < 0 ? -ENOMEM : 1;
}

static int to_hf(const struct qv_plan *p, const char *key, char **out, bool *expert)
{
	if (strstr(key, NATIVE_GATE_UP))
		*out = replace_all(key, NATIVE_GATE_UP, HF_GATE_UP);
	else if (strstr(key, NATIVE_DOWN))
		*out = replace_all(key, NATIVE_DOWN, HF_DOWN);
	else
		*out = strdup(key);
	if (!*out)
		return -ENOMEM;
	*expert = qv_plan_key_is_native(key);
	if (p->has_exclude && regexec(&p->exclude, *out, 0, NULL, 0) == 0) {
		free(*out);
		*out = NULL;
		return 0;
	}
	return 1;
}

int qv_plan_map_key(const struct qv_plan *p, const char *key, char **out, bool *expert)
{
	*out = NULL;
	*expert = false;
	if (p->o.src == QV_NAMING_HF && p->o.view == QV_NAMING_NATIVE)
		return from_hf(p, key, out, expert);
	if (p->o.src == QV_NAMING_NATIVE && p->o.view == QV_NAMING_HF)
		return to_hf(p, key, out, expert);
	/* identity view: names stay, only slicing applies */
	*expert = qv_plan_expert_in(p->o.src, key);
	*out = strdup(key);
	return *out ? 1 : -ENOMEM;
}

bool qv_plan_generic_name(const char *key)
{
	const char *s = strstr(key, ".mlp.experts.");

	return s && s[13] && !isdigit((unsigned char)s[13]);
}

int qv_plan_map_tensor(const struct qv_plan *p, const struct qv_tensor *t, char **out,
		       bool *expert)
{
	int rc = qv_plan_map_key(p, t->name, out, expert);

	if (rc == 1 && !*expert && p->o.generic_experts && t->ndim >= 2 &&
	    t->shape[0] == p->o.generic_experts)
		*expert = qv_plan_generic_name(t->name);
	return rc;
}

bool qv_plan_expert_in(enum qv_naming naming, const char *key)
{
	const char *layer;
	size_t llen;
	bool gate_up;

	return naming == QV_NAMING_NATIVE ? qv_plan_key_is_native(key) :
					    match_hf_expert(key, &layer, &llen, &gate_up);
}

bool qv_plan_key_is_expert(const char *key)
{
	const char *layer;
	size_t llen;
	bool gate_up;

	return qv_plan_key_is_native(key) || match_hf_expert(key, &layer, &llen, &gate_up);
}

/* Whether expert key k (either naming) is a layer's gate_up tensor (else its down tensor). */
static bool is_gate_up(const char *k)
{
	return qv_ends_with(k, NATIVE_GATE_UP) || qv_ends_with(k, HF_GATE_UP);
}

void qv_plan_layout_fits(const struct qv_plan_opts *o, const struct qv_tensor *t, bool *hub,
			 bool *lin)
{
	uint64_t h = o->hidden, i = o->inter, a = t->shape[1], b = t->shape[2];

	*hub = *lin = false;
	if (t->ndim != 3 || !h || !i || !qv_plan_key_is_expert(t->name))
		return;
	if (is_gate_up(t->name)) {
		*hub = a == h && b == 2 * i;
		*lin = a == 2 * i && b == h;
	} else {
		*hub = a == i && b == h;
		*lin = a == h && b == i;
	}
}

enum qv_layout qv_plan_layout_told(const struct qv_plan_opts *o, const struct qv_tensor *t)
{
	bool hub, lin;

	qv_plan_layout_fits(o, t, &hub, &lin);
	return hub == lin ? QV_LAYOUT_ASIS : hub ? QV_LAYOUT_HUB : QV_LAYOUT_LINEAR;
}

enum qv_layout qv_plan_layout(const struct qv_plan_opts *o, const struct qv_tensor *t)
{
	bool hub, lin;

	qv_plan_layout_fits(o, t, &hub, &lin);
	if (hub != lin)
		return hub ? QV_LAYOUT_HUB : QV_LAYOUT_LINEAR;
	return hub ? o->src_layout : QV_LAYOUT_ASIS; /* fits both: the shape cannot tell */
}

void qv_plan_view_tensor(const struct qv_plan_opts *o, const struct qv_tensor *t,
			 struct qv_tensor *vt, bool *transpose)
{
	enum qv_layout l = qv_plan_layout(o, t);

	*vt = *t;
	*transpose = o->view_layout != QV_LAYOUT_ASIS && l != QV_LAYOUT_ASIS &&
		     l != o->view_layout;
	if (*transpose) {
		vt->shape[1] = t->shape[2];
		vt->shape[2] = t->shape[1];
	}
}

void qv_plan_ep_range(uint64_t n, uint32_t w, uint32_t r, uint64_t *start, uint64_t *count)
{
	uint64_t q = n / w, m = n % w;

	*count = q + (r < m ? 1 : 0);
	*start = (uint64_t)r * q + (r < m ? r : m);
}

int qv_plan_count(uint32_t ep_size, bool all_ranks, uint32_t shard_size, bool all_shards,
		  size_t *n, char *err, size_t errlen)
{
	uint64_t ranks = all_ranks ? ep_size : 1, shards = all_shards && shard_size > 1 ? shard_size : 1;
	uint64_t folders;

	*n = 1;
	if (ep_size == 0)
		return 0;
	if (__builtin_mul_overflow(ranks, shards, &folders) || folders > QV_PLAN_MAX_FOLDERS)
		return qv_err(err, errlen, -EINVAL,
			      "ep_size=%u with ep_shard_size=%u makes %llu folders, at most %u "
			      "(give ep_rank or ep_shard_rank)",
			      ep_size, shard_size, (unsigned long long)ranks * shards,
			      QV_PLAN_MAX_FOLDERS);
	*n = (size_t)folders;
	return 0;
}

int qv_plan_cut(const struct qv_plan *p, const struct qv_tensor *t, struct qv_cut *c, char *err,
		size_t errlen)
{
	uint32_t k = p->o.shard_size;

	memset(c, 0, sizeof(*c));
	c->count = t->ndim ? t->shape[0] : 0;
	c->d1_count = t->ndim > 1 ? t->shape[1] : 0;
	if (p->o.ep_size == 0)
		return 0;
	if (t->ndim < 2)
		return qv_err(err, errlen, -EINVAL, "tensor \"%s\": expert tensor has %u dimensions",
			      t->name, t->ndim);
	if (p->o.ep_size > t->shape[0])
		return qv_err(err, errlen, -EINVAL,
			      "tensor \"%s\": ep_size=%u exceeds its %llu experts: give ep_size from 1 "
			      "to %llu", t->name, p->o.ep_size, (unsigned long long)t->shape[0],
			      (unsigned long long)t->shape[0]);
	qv_plan_ep_range(t->shape[0], p->o.ep_size, p->o.ep_rank, &c->start, &c->count);
	if (k > 1) {
		if (t->shape[1] % k)
			return qv_err(err, errlen, -EINVAL,
				      "tensor \"%s\": dim 1 (%llu) is not divisible by ep_shard_size=%u",
				      t->name, (unsigned long long)t->shape[1], k);
		c->d1_count = t->shape[1] / k;
		c->d1_start = c->d1_count * p->o.shard_rank;
	}
	c->sliced = true;
	return 0;
}
