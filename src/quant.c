/* quant.c - the checkpoint's FP8 weights, their scales, the forms no view computes, and the
 * per-expert weights of each layer, found from names, dtypes and shapes (DESIGN §14). */
#include "qv_quant.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_EXPERTS 65536
#define SCALE_SUFFIX "_scale_inv"

static int cmp_key(const void *a, const void *b)
{
	const struct qv_qkey *x = a, *y = b;
	int c = strcmp(x->name, y->name);

	return c ? c : (x->node > y->node) - (x->node < y->node);
}

const struct qv_qkey *qv_quant_find(const struct qv_quant *q, const char *name, uint32_t node)
{
	size_t lo = 0, hi = q->nk;

	while (lo < hi) { /* the first entry of that name */
		size_t mid = lo + (hi - lo) / 2;

		if (strcmp(q->k[mid].name, name) < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo == q->nk || strcmp(q->k[lo].name, name))
		return NULL;
	for (size_t i = lo; i < q->nk && !strcmp(q->k[i].name, name); i++)
		if (q->k[i].node == node)
			return &q->k[i];
	return &q->k[lo];
}

static bool is_fp8(enum qv_dtype d)
{
	return d == QV_DT_F8_E4M3 || d == QV_DT_F8_E5M2 || d == QV_DT_F8_E8M0 ||
	       d == QV_DT_F8_E4M3FNUZ || d == QV_DT_F8_E5M2FNUZ;
}

/* Say the first problem only (into buf, QV_ERRLEN bytes): it is what the refusal names. */
static void say(char *buf, const struct qv_scan *sc, const struct qv_qkey *e, const char *fmt,
		const char *a, const char *b)
{
	if (buf[0])
		return;
	snprintf(buf, QV_ERRLEN, "%s: \"%s\": ", sc->n[e->node].rel, e->name);
	snprintf(buf + strlen(buf), QV_ERRLEN - strlen(buf), fmt, a, b);
}

static void problem(struct qv_quant *q, const struct qv_scan *sc, const struct qv_qkey *e,
		    const char *fmt, const char *a, const char *b)
{
	say(q->problem, sc, e, fmt, a, b);
}

static void shape_str(const struct qv_tensor *t, char *buf, size_t len)
{
	size_t n = (size_t)snprintf(buf, len, "[");

	for (uint32_t d = 0; d < t->ndim && n < len; d++)
		n += (size_t)snprintf(buf + n, len - n, d ? ", %llu" : "%llu",
				      (unsigned long long)t->shape[d]);
	if (n < len)
		snprintf(buf + n, len - n, "]");
}

/* FP8 weight e: its scale entry, checked to be one F32 per block of each matrix; the role
 * FP8, or a problem naming what was found. */
static void fp8_weight(struct qv_quant *q, const struct qv_scan *sc, size_t i)
{
	struct qv_qkey *e = &q->k[i];
	const struct qv_tensor *w = e->t, *s;
	const struct qv_qkey *se;
	char name[1024], ws[96], ss[96];
	bool grid;
	uint32_t m;

	if (w->dtype != QV_DT_F8_E4M3)
		return problem(q, sc, e, "%s weights are not dequantized (only F8_E4M3 with %s "
			       "block scales)", qv_dtype_name(w->dtype), "128x128");
	snprintf(name, sizeof(name), "%s%s", e->name, SCALE_SUFFIX);
	se = qv_quant_find(q, name, e->node);
	if (!se) {
		size_t n = strlen(e->name);

		/* compressed-tensors writes weight_scale (per tensor or per channel), no _inv */
		snprintf(name, sizeof(name), "%.*s_scale", (int)n, e->name);
		return problem(q, sc, e, "F8_E4M3 weight without %s%s: only block-scaled FP8 "
			       "(quant_method fp8, weight_block_size [128, 128]) is dequantized",
			       qv_quant_find(q, name, e->node) ? "weight_scale_inv (it has "
								 "weight_scale: compressed-tensors)" :
								 "weight_scale_inv",
			       "");
	}
	s = se->t;
	shape_str(w, ws, sizeof(ws));
	shape_str(s, ss, sizeof(ss));
	if (s->dtype != QV_DT_F32)
		return problem(q, sc, e, "its scales are %s, F32 expected (weight %s)",
			       qv_dtype_name(s->dtype), ws);
	m = w->ndim;
	grid = (m == 2 || m == 3) && s->ndim == m && (m == 2 || s->shape[0] == w->shape[0]) &&
	       s->shape[m - 2] == (w->shape[m - 2] + q->block - 1) / q->block &&
	       s->shape[m - 1] == (w->shape[m - 1] + q->block - 1) / q->block;
	if (!grid) {
		bool per_tensor = s->ndim == 0 || (s->ndim == 1 && s->shape[0] == 1);

		snprintf(name, sizeof(name), "%s scales %s for weight %s: %s", per_tensor ?
			 "per-tensor" : "per-channel or other", ss, ws, "only one F32 scale per "
			 "block of the config's weight_block_size is dequantized");
		return problem(q, sc, e, "%s%s", name, "");
	}
	e->role = QV_Q_FP8;
	e->scale = se - q->k;
	q->k[e->scale].role = QV_Q_SCALE;
	q->fp8 = true;
}

/* "...language_model.layers.L.mlp.experts.J.{gate,up,down}_proj.weight": the length of the
 * part up to "experts." (the group's prefix), J, and which weight; false for other names. */
static bool per_expert(const char *k, size_t *plen, uint64_t *j, int *which)
{
	static const char *const w[] = { "gate_proj.weight", "up_proj.weight", "down_proj.weight" };
	const char *p = strstr(k, ".mlp.experts."), *d;
	uint64_t v = 0;

	if (!p || !strstr(k, "language_model.layers."))
		return false;
	p += strlen(".mlp.experts.");
	for (d = p; isdigit((unsigned char)*d) && v <= MAX_EXPERTS; d++)
		v = v * 10 + (uint64_t)(*d - '0');
	if (d == p || *d != '.' || v >= MAX_EXPERTS)
		return false;
	for (int i = 0; i < 3; i++)
		if (!strcmp(d + 1, w[i])) {
			*plen = (size_t)(p - k);
			*j = v;
			*which = i;
			return true;
		}
	return false;
}

static struct qv_qgroup *group_of(struct qv_quant *q, const char *k, size_t plen)
{
	struct qv_qgroup *g;

	for (size_t i = 0; i < q->ng; i++)
		if (!strncmp(q->g[i].fused_gate_up, k, plen) && q->g[i].fused_gate_up[plen] == 'g')
			return &q->g[i];
	g = realloc(q->g, (q->ng + 1) * sizeof(*g));
	if (!g)
		return NULL;
	q->g = g;
	g = &q->g[q->ng++];
	memset(g, 0, sizeof(*g));
	if (asprintf(&g->fused_gate_up, "%.*sgate_up_proj", (int)plen, k) < 0)
		g->fused_gate_up = NULL;
	if (asprintf(&g->fused_down, "%.*sdown_proj", (int)plen, k) < 0)
		g->fused_down = NULL;
	return g->fused_gate_up && g->fused_down ? g : NULL;
}

/* Grow the group's three arrays to hold expert j (new slots: SIZE_MAX, none yet). */
static int group_room(struct qv_qgroup *g, uint64_t j)
{
	size_t **a[3] = { &g->gate, &g->up, &g->down };

	if (j < g->E)
		return 0;
	for (int i = 0; i < 3; i++) {
		size_t *p = realloc(*a[i], (j + 1) * sizeof(*p));

		if (!p)
			return -ENOMEM;
		for (uint64_t k = g->E; k <= j; k++)
			p[k] = SIZE_MAX;
		*a[i] = p;
	}
	g->E = j + 1;
	return 0;
}

/* Every group: each expert's three weights present, [I, H] / [I, H] / [H, I] alike, one kind
 * (all FP8 with block scales, or all one 16-bit dtype); roles set, or a problem named. */
static void check_groups(struct qv_quant *q, const struct qv_scan *sc)
{
	for (size_t gi = 0; gi < q->ng; gi++) {
		struct qv_qgroup *g = &q->g[gi];
		const struct qv_qkey *first = NULL;
		char what[160];

		for (uint64_t j = 0; j < g->E && !first; j++)
			first = g->gate[j] != SIZE_MAX ? &q->k[g->gate[j]] : NULL;
		if (!first) /* no gate_proj at all: name one of its down_proj weights */
			for (uint64_t j = 0; j < g->E && !first; j++)
				first = g->down[j] != SIZE_MAX ? &q->k[g->down[j]] : NULL;
		if (!first) /* up_proj weights only */
			first = &q->k[g->up[g->E - 1]];
		g->fp8 = first->role == QV_Q_FP8;
		for (uint64_t j = 0; j < g->E; j++) {
			size_t x[3] = { g->gate[j], g->up[j], g->down[j] };

			for (int w = 0; w < 3; w++) {
				const struct qv_qkey *e = x[w] == SIZE_MAX ? NULL : &q->k[x[w]];
				const struct qv_tensor *f = first->t;

				if (!e) {
					snprintf(what, sizeof(what), "expert %llu of %llu has no %s "
						 "weight", (unsigned long long)j,
						 (unsigned long long)g->E,
						 w == 0 ? "gate_proj" : w == 1 ? "up_proj" : "down_proj");
					return say(q->stack_problem, sc, first, "%s%s", what, "");
				}
				if (e->t->ndim != 2 || e->t->dtype != f->dtype ||
				    (e->role == QV_Q_FP8) != g->fp8 ||
				    e->t->shape[w == 2] != f->shape[first->down] ||
				    e->t->shape[w != 2] != f->shape[!first->down])
					return say(q->stack_problem, sc, e, "its dtype or shape differs "
						   "from %s's: the layer's experts cannot be stacked",
						   first->name, "");
				if (!g->fp8 && qv_dtype_size(e->t->dtype) != 2)
					return say(q->stack_problem, sc, e, "%s experts are not stacked "
						   "(16-bit or FP8 only)", qv_dtype_name(e->t->dtype),
						   "");
			}
		}
		g->I = first->t->shape[first->down];
		g->H = first->t->shape[!first->down];
		for (uint64_t j = 0; j < g->E; j++) {
			q->k[g->gate[j]].role = j ? QV_Q_STACKED : QV_Q_STACK;
			q->k[g->up[j]].role = QV_Q_STACKED;
			q->k[g->down[j]].role = j ? QV_Q_STACKED : QV_Q_STACK;
		}
	}
}

int qv_quant_load(struct qv_quant *q, const struct qv_scan *sc, struct qv_st *const *st_of,
		  const struct qv_cfg *c)
{
	size_t n = 0;

	memset(q, 0, sizeof(*q));
	q->block = c->qblock[0] ? (unsigned)c->qblock[0] : 128;
	for (size_t i = 0; i < sc->nn; i++)
		n += st_of[i] ? st_of[i]->nt : 0;
	q->k = calloc(n ? n : 1, sizeof(*q->k));
	if (!q->k)
		return -ENOMEM;
	for (uint32_t i = 0; i < sc->nn; i++)
		for (size_t k = 0; st_of[i] && k < st_of[i]->nt; k++)
			q->k[q->nk++] = (struct qv_qkey){ .name = st_of[i]->t[k].name, .node = i,
							  .t = &st_of[i]->t[k], .scale = -1,
							  .group = -1 };
	qsort(q->k, q->nk, sizeof(*q->k), cmp_key);
	if (c->quant[0] && strcmp(c->quant, "fp8"))
		snprintf(q->problem, sizeof(q->problem), "%s: quantization_config.quant_method is "
			 "\"%s\": only fp8 with 128x128 block scales is dequantized", c->rel,
			 c->quant);
	else if (c->qblock[0] != c->qblock[1])
		snprintf(q->problem, sizeof(q->problem), "%s: weight_block_size [%llu, %llu]: only "
			 "square blocks are dequantized", c->rel, (unsigned long long)c->qblock[0],
			 (unsigned long long)c->qblock[1]);
	for (size_t i = 0; i < q->nk; i++)
		if (is_fp8(q->k[i].t->dtype))
			fp8_weight(q, sc, i);
	for (size_t i = 0; i < q->nk; i++) {
		struct qv_qkey *e = &q->k[i];
		struct qv_qgroup *g;
		size_t plen, *slot;
		uint64_t j;
		int which;

		if (!per_expert(e->name, &plen, &j, &which))
			continue;
		g = group_of(q, e->name, plen);
		if (!g || group_room(g, j))
			return -ENOMEM;
		slot = which == 0 ? &g->gate[j] : which == 1 ? &g->up[j] : &g->down[j];
		e->group = g - q->g;
		e->down = which == 2;
		if (*slot == SIZE_MAX)
			*slot = i; /* a key in two files: the first (the index picks one) */
	}
	check_groups(q, sc);
	return 0;
}

void qv_quant_free(struct qv_quant *q)
{
	for (size_t i = 0; i < q->ng; i++) {
		free(q->g[i].fused_gate_up);
		free(q->g[i].fused_down);
		free(q->g[i].gate);
		free(q->g[i].up);
		free(q->g[i].down);
	}
	free(q->g);
	free(q->k);
	memset(q, 0, sizeof(*q));
}
