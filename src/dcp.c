/* dcp.c - consolidate an Automodel sharded save: read each rank file's DCP_SHARDING_INFO, group
 * chunks by tensor, check that they tile the global tensor exactly (a gap names the region and
 * so a missing rank), and assign consolidated file numbers. Only metadata; no tensor bytes. */
#include "qv_dcp.h"
#include "qv_util.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define INFO_KEY "DCP_SHARDING_INFO"
#define MAP_REL ".hf_metadata/fqn_to_file_index_mapping.json"
#define MAX_MAP_BYTES (256u << 20)

bool qv_dcp_is_rank_file(const char *name)
{
	unsigned a, b, c;
	int n = 0;

	return sscanf(name, "shard-%5u-model-%5u-of-%5u.safetensors%n", &a, &b, &c, &n) == 3 &&
	       n > 0 && name[n] == '\0';
}

static const char *meta_get(const struct qv_st *st, const char *key)
{
	for (size_t i = 0; st && i < st->nmeta; i++)
		if (strcmp(st->meta[i].key, key) == 0)
			return st->meta[i].val;
	return NULL;
}

bool qv_dcp_detect(const struct qv_scan *sc, struct qv_st *const *st_of)
{
	const struct qv_snode *root = &sc->n[0];

	for (size_t k = 0; k < root->nkids; k++)
		if (qv_dcp_is_rank_file(sc->n[root->kids[k]].name) &&
		    meta_get(st_of[root->kids[k]], INFO_KEY))
			return true;
	return false;
}

static int cmp_dt(const void *a, const void *b)
{
	return strcmp(((const struct qv_dtensor *)a)->name, ((const struct qv_dtensor *)b)->name);
}

/* The "-model-MMMMM-of-NNNNN.safetensors" part of the root's first rank file, into tail. */
static void rank_tail(const struct qv_scan *sc, char *tail, size_t len)
{
	const struct qv_snode *root = &sc->n[0];

	snprintf(tail, len, "-model-00001-of-00001.safetensors");
	for (size_t k = 0; k < root->nkids; k++)
		if (qv_dcp_is_rank_file(sc->n[root->kids[k]].name)) {
			snprintf(tail, len, "%s", sc->n[root->kids[k]].name + strlen("shard-00000"));
			return;
		}
}

unsigned qv_dcp_rank_files(const struct qv_scan *sc, char *next, size_t len)
{
	const struct qv_snode *root = &sc->n[0];
	unsigned max = 0, r, m, n;
	char tail[64];

	for (size_t k = 0; k < root->nkids; k++)
		if (qv_dcp_is_rank_file(sc->n[root->kids[k]].name) &&
		    sscanf(sc->n[root->kids[k]].name, "shard-%5u-model-%5u-of-%5u", &r, &m, &n) == 3)
			max = r > max ? r : max;
	rank_tail(sc, tail, sizeof(tail));
	if (next)
		snprintf(next, len, "shard-%05u%s (rank %u)", max + 1, tail, max);
	return max;
}

/* Rank files must be numbered 1..n without holes: a hole is a missing rank's file. */
static int check_ranks(const struct qv_scan *sc, char *err, size_t errlen)
{
	const struct qv_snode *root = &sc->n[0];
	unsigned max = qv_dcp_rank_files(sc, NULL, 0), m;
	char tail[64];

	rank_tail(sc, tail, sizeof(tail));
	for (unsigned r = 1; r <= max; r++) {
		bool found = false;

		for (size_t k = 0; k < root->nkids && !found; k++)
			found = sscanf(sc->n[root->kids[k]].name, "shard-%5u-", &m) == 1 && m == r &&
				qv_dcp_is_rank_file(sc->n[root->kids[k]].name);
		if (!found)
			return qv_err(err, errlen, -EINVAL,
				      "shard-%05u%s is missing: rank %u's chunks are not in the save",
				      r, tail, r - 1);
	}
	return 0;
}

static int cmp_item(const void *a, const void *b)
{
	return strcmp((*(cJSON *const *)a)->string, (*(cJSON *const *)b)->string);
}

/* The entries of info sorted by name, so each tensor finds its own in log time (a linear
 * lookup per tensor is quadratic in a file's tensors). */
static cJSON **sorted_items(cJSON *info, size_t *n)
{
	cJSON **v;

	*n = (size_t)cJSON_GetArraySize(info);
	v = malloc((*n ? *n : 1) * sizeof(*v));
	if (!v)
		return NULL;
	*n = 0;
	for (cJSON *c = info->child; c; c = c->next)
		v[(*n)++] = c;
	qsort(v, *n, sizeof(*v), cmp_item);
	return v;
}

/* One rank file: every tensor's chunk, with its offsets from DCP_SHARDING_INFO. */
static int add_file(struct qv_dcp *d, size_t *cap, const struct qv_snode *f, const struct qv_st *st,
		    uint32_t src, char *err, size_t errlen)
{
	const char *info = meta_get(st, INFO_KEY);
	cJSON *j = info ? cJSON_Parse(info) : NULL;
	int rc = 0;

	cJSON **items = NULL;
	size_t nitems = 0;

	if (!cJSON_IsObject(j)) {
		cJSON_Delete(j);
		return qv_err(err, errlen, -EINVAL, "%s: no valid %s in __metadata__", f->rel, INFO_KEY);
	}
	items = sorted_items(j, &nitems);
	if (!items)
		rc = -ENOMEM;
	for (size_t i = 0; i < st->nt && !rc; i++) {
		const struct qv_tensor *t = &st->t[i];
		cJSON key = { .string = t->name }, *kp = &key;
		cJSON **e = bsearch(&kp, items, nitems, sizeof(*items), cmp_item);
		cJSON *offs = e ? cJSON_GetObjectItemCaseSensitive(*e, "saved_offsets") : NULL;
		struct qv_dtensor *x;
		struct qv_chunk *c;
		uint32_t k = 0;

		if (!cJSON_IsArray(offs) || (uint32_t)cJSON_GetArraySize(offs) != t->ndim) {
			rc = qv_err(err, errlen, -EINVAL, "%s: tensor \"%s\": no saved_offsets of %u "
				    "dimensions in %s", f->rel, t->name, t->ndim, INFO_KEY);
			break;
		}
		if (d->nt == *cap) {
			*cap = *cap ? *cap * 2 : 256;
			x = realloc(d->t, *cap * sizeof(*x));
			if (!x) {
				rc = -ENOMEM;
				break;
			}
			d->t = x;
		}
		x = &d->t[d->nt++];
		memset(x, 0, sizeof(*x));
		x->name = strdup(t->name);
		x->c = c = calloc(1, sizeof(*c));
		if (!x->name || !c) {
			rc = -ENOMEM;
			break;
		}
		x->nc = 1;
		x->dtype = t->dtype;
		x->ndim = t->ndim;
		c->src = src;
		c->soff = 8 + st->hdr_len + t->begin;
		for (cJSON *o = offs->child; o; o = o->next, k++) {
			double v = o->valuedouble;

			if (!cJSON_IsNumber(o) || v < 0 || v > 9007199254740992.0 || v != (double)(uint64_t)v)
				rc = qv_err(err, errlen, -EINVAL, "%s: tensor \"%s\": bad saved_offsets",
					    f->rel, t->name);
			c->off[k] = (uint64_t)v;
			c->shape[k] = t->shape[k];
		}
	}
	free(items);
	cJSON_Delete(j);
	return rc;
}

static int cmp_entry(const void *a, const void *b)
{
	int c = cmp_dt(a, b);
	const struct qv_dtensor *x = a, *y = b;

	if (c)
		return c;
	for (uint32_t k = 0; k < x->ndim; k++) /* deterministic chunk order */
		if (x->c->off[k] != y->c->off[k])
			return x->c->off[k] < y->c->off[k] ? -1 : 1;
	return 0;
}

/* Entries come one per chunk; merge each name's run into one tensor with all its chunks.
 * Everything that can fail happens before the array is compacted, so a failure leaves it
 * consistent for qv_dcp_free. */
static int merge(struct qv_dcp *d, const struct qv_scan *sc, const uint32_t *node_of_src,
		 char *err, size_t errlen)
{
	size_t out = 0, i, j;

	if (d->nt)
		qsort(d->t, d->nt, sizeof(*d->t), cmp_entry);
	for (i = 0; i < d->nt; i = j) {
		struct qv_dtensor *x = &d->t[i];
		struct qv_chunk *c;

		for (j = i + 1; j < d->nt && strcmp(d->t[j].name, x->name) == 0; j++)
			if (d->t[j].dtype != x->dtype || d->t[j].ndim != x->ndim)
				return qv_err(err, errlen, -EINVAL,
					      "tensor \"%s\": chunks disagree on dtype or rank (%s %u-D "
					      "in %s, %s %u-D in %s)",
					      x->name, qv_dtype_name(x->dtype), x->ndim,
					      sc->n[node_of_src[x->c[0].src]].rel,
					      qv_dtype_name(d->t[j].dtype), d->t[j].ndim,
					      sc->n[node_of_src[d->t[j].c[0].src]].rel);
		c = realloc(x->c, (j - i) * sizeof(*c));
		if (!c)
			return -ENOMEM;
		x->c = c;
	}
	for (i = 0; i < d->nt; i = j) {
		struct qv_dtensor x = d->t[i];

		for (j = i + 1; j < d->nt && strcmp(d->t[j].name, x.name) == 0; j++) {
			x.c[x.nc++] = d->t[j].c[0];
			free(d->t[j].c);
			free(d->t[j].name);
		}
		d->t[out++] = x;
	}
	d->nt = out;
	return 0;
}

/* After global_shape: offset + shape cannot overflow. */
static bool overlap(const struct qv_chunk *a, const struct qv_chunk *b, uint32_t n)
{
	for (uint32_t k = 0; k < n; k++)
		if (a->off[k] + a->shape[k] <= b->off[k] || b->off[k] + b->shape[k] <= a->off[k])
			return false;
	return n > 0;
}

/* "[a, b, ...]" of n values into out. */
static void fmt_dims(char *out, size_t len, const uint64_t *v, uint32_t n)
{
	size_t at = 0;

	at += (size_t)snprintf(out, len, "[");
	for (uint32_t k = 0; k < n && at < len; k++)
		at += (size_t)snprintf(out + at, len - at, "%s%llu", k ? ", " : "",
				       (unsigned long long)v[k]);
	if (at < len)
		snprintf(out + at, len - at, "]");
}

/* "dim 0 [a, b) x dim 1 [c, d)" for the box lo..hi, naming only the dimensions it does not
 * span whole (all of them when it spans every one). */
static void fmt_box(char *out, size_t len, const uint64_t *lo, const uint64_t *hi,
		    const uint64_t *shape, uint32_t n)
{
	size_t at = 0;
	bool any = false;

	out[0] = '\0';
	for (uint32_t pass = 0; pass < 2 && !any; pass++)
		for (uint32_t k = 0; k < n && at < len; k++)
			if (pass || lo[k] || hi[k] != shape[k]) {
				at += (size_t)snprintf(out + at, len - at, "%sdim %u [%llu, %llu)",
						       any ? " x " : "", k, (unsigned long long)lo[k],
						       (unsigned long long)hi[k]);
				any = true;
			}
}

static bool covers(const struct qv_chunk *c, const uint64_t *p, uint32_t n)
{
	for (uint32_t k = 0; k < n; k++)
		if (p[k] < c->off[k] || p[k] >= c->off[k] + c->shape[k])
			return false;
	return true;
}

#define GAP_SEARCH_MAX 50000000ull /* candidate points x chunks: bounded work on a bad save */

/* An element no chunk covers, and the box around it that no chunk touches: the cell of the
 * grid that every chunk's boundaries draw (a chunk holds a cell whole or not at all). An
 * uncovered region's lowest corner has each coordinate 0 or some chunk's end, so only those
 * points are tried. false when none is found within GAP_SEARCH_MAX steps. */
static bool find_gap(const struct qv_dtensor *x, uint64_t *lo, uint64_t *hi)
{
	uint64_t *cand[QV_ST_MAX_DIMS] = { 0 }, work = x->nc ? x->nc : 1;
	size_t nc[QV_ST_MAX_DIMS] = { 0 }, at[QV_ST_MAX_DIMS] = { 0 };
	bool found = false, ok = true;

	for (uint32_t k = 0; k < x->ndim && ok; k++) {
		cand[k] = malloc((x->nc + 1) * sizeof(**cand));
		ok = cand[k] != NULL;
		for (size_t i = 0; ok && i <= x->nc; i++) {
			uint64_t v = i < x->nc ? x->c[i].off[k] + x->c[i].shape[k] : 0;

			if (v < x->shape[k])
				cand[k][nc[k]++] = v;
		}
		ok = ok && nc[k] && !__builtin_mul_overflow(work, nc[k], &work) && work <= GAP_SEARCH_MAX;
	}
	while (ok && !found) {
		size_t i;

		for (uint32_t k = 0; k < x->ndim; k++)
			lo[k] = cand[k][at[k]];
		for (i = 0; i < x->nc && !covers(&x->c[i], lo, x->ndim); i++)
			;
		found = i == x->nc;
		for (uint32_t k = 0; !found && k <= x->ndim; k++) { /* next point, odometer-wise */
			if (k == x->ndim) {
				ok = false;
				break;
			}
			if (++at[k] < nc[k])
				break;
			at[k] = 0;
		}
	}
	for (uint32_t k = 0; found && k < x->ndim; k++) {
		hi[k] = x->shape[k];
		for (size_t i = 0; i < x->nc; i++) {
			uint64_t b = x->c[i].off[k], e = b + x->c[i].shape[k];

			hi[k] = b > lo[k] && b < hi[k] ? b : hi[k];
			hi[k] = e > lo[k] && e < hi[k] ? e : hi[k];
		}
	}
	for (uint32_t k = 0; k < x->ndim; k++)
		free(cand[k]);
	return found;
}

/* The global shape (max of offset + chunk shape per dimension) and its size in bytes, every
 * step overflow-checked: a zero-size chunk far out makes a shape whose volume wraps even in
 * 128 bits, and a wrapped volume can match the chunks' sum. */
static int global_shape(struct qv_dtensor *x, uint64_t *elems, char *err, size_t errlen)
{
	uint64_t bytes = qv_dtype_size(x->dtype), end;

	*elems = 1;
	for (uint32_t k = 0; k < x->ndim; k++) {
		for (size_t i = 0; i < x->nc; i++) {
			if (__builtin_add_overflow(x->c[i].off[k], x->c[i].shape[k], &end))
				goto overflow;
			x->shape[k] = end > x->shape[k] ? end : x->shape[k];
		}
		if (__builtin_mul_overflow(*elems, x->shape[k], elems))
			goto overflow;
	}
	if (!__builtin_mul_overflow(*elems, bytes, &bytes))
		return 0;
overflow:
	return qv_err(err, errlen, -EINVAL,
		      "tensor \"%s\": its chunks make a shape whose size overflows 64 bits", x->name);
}

/* Global shape, then exact tiling: no two chunks overlap and their volumes add up. */
static int coverage(struct qv_dtensor *x, const struct qv_scan *sc, const uint32_t *node_of_src,
		    const char *next, char *err, size_t errlen)
{
	uint64_t vol, sum = 0, lo[QV_ST_MAX_DIMS], hi[QV_ST_MAX_DIMS];
	char where[256], oa[96], ob[96];
	int rc = global_shape(x, &vol, err, errlen);

	for (size_t i = 0; i < x->nc && !rc; i++) {
		uint64_t v = 1;

		/* a chunk's volume is its bytes in a parsed file, but check rather than assume */
		for (uint32_t k = 0; k < x->ndim && !rc; k++)
			if (__builtin_mul_overflow(v, x->c[i].shape[k], &v))
				rc = -EOVERFLOW;
		if (rc || __builtin_add_overflow(sum, v, &sum))
			return qv_err(err, errlen, -EINVAL, "tensor \"%s\": its chunks' sizes overflow "
				      "64 bits", x->name);
		for (size_t j = i + 1; j < x->nc; j++) {
			const struct qv_chunk *a = &x->c[i], *b = &x->c[j];

			if (!overlap(a, b, x->ndim))
				continue;
			for (uint32_t k = 0; k < x->ndim; k++) {
				lo[k] = a->off[k] > b->off[k] ? a->off[k] : b->off[k];
				hi[k] = a->off[k] + a->shape[k] < b->off[k] + b->shape[k] ?
						a->off[k] + a->shape[k] : b->off[k] + b->shape[k];
			}
			fmt_box(where, sizeof(where), lo, hi, x->shape, x->ndim);
			fmt_dims(oa, sizeof(oa), a->off, x->ndim);
			fmt_dims(ob, sizeof(ob), b->off, x->ndim);
			return qv_err(err, errlen, -EINVAL,
				      "tensor \"%s\": chunks overlap in %s: the chunk at offsets %s in "
				      "%s and the chunk at offsets %s in %s",
				      x->name, where, oa, sc->n[node_of_src[a->src]].rel, ob,
				      sc->n[node_of_src[b->src]].rel);
		}
	}
	if (!rc && sum != vol) {
		char shape[96];

		fmt_dims(shape, sizeof(shape), x->shape, x->ndim);
		if (find_gap(x, lo, hi))
			fmt_box(where, sizeof(where), lo, hi, x->shape, x->ndim);
		else
			snprintf(where, sizeof(where), "some elements");
		return qv_err(err, errlen, -EINVAL,
			      "tensor \"%s\": no chunk covers %s of its %s: %s is likely "
			      "missing", x->name, where, shape, next);
	}
	return rc;
}

/* {fqn: k} from .hf_metadata/fqn_to_file_index_mapping.json, when present. */
static int assign_files(struct qv_dcp *d, const struct qv_scan *sc, uint64_t max_file, char *err,
			size_t errlen)
{
	char *text = NULL;
	cJSON *j = NULL;
	int rc = 0;

	if (d->map_node) {
		struct qv_buf b = { 0 };
		char why[QV_ERRLEN];

		rc = qv_scan_read(&sc->n[d->map_node], MAX_MAP_BYTES, &b, why, sizeof(why));
		text = b.p;
		j = !rc && text ? cJSON_ParseWithLength(text, b.len) : NULL;
		if (rc)
			qv_err(err, errlen, rc, "%s: %s", sc->n[d->map_node].rel, why);
		else if (!cJSON_IsObject(j))
			rc = qv_err(err, errlen, -EINVAL, "%s: not a JSON object", sc->n[d->map_node].rel);
	}
	for (cJSON *k = j ? j->child : NULL; k && !rc; k = k->next) { /* named, never saved */
		struct qv_dtensor key = { .name = k->string };
		char **v;

		if (bsearch(&key, d->t, d->nt, sizeof(*d->t), cmp_dt))
			continue;
		v = realloc(d->absent, (d->nabsent + 1) * sizeof(*v));
		rc = v ? 0 : -ENOMEM;
		if (v)
			d->absent = v;
		if (v && !(v[d->nabsent] = strdup(k->string)))
			rc = -ENOMEM;
		d->nabsent += v && v[d->nabsent];
	}
	for (size_t i = 0; i < d->nt && !rc; i++) {
		cJSON *k = j ? cJSON_GetObjectItemCaseSensitive(j, d->t[i].name) : NULL;

		if (j && (!cJSON_IsNumber(k) || k->valuedouble < 1 || k->valuedouble > 99999))
			rc = qv_err(err, errlen, -EINVAL, "%s: no file index for tensor \"%s\"",
				    sc->n[d->map_node].rel, d->t[i].name);
		else if (j)
			d->t[i].file = (uint32_t)k->valuedouble;
	}
	if (!j && !rc) { /* pack in name order */
		uint64_t used = 0;
		uint32_t file = 1;

		for (size_t i = 0; i < d->nt; i++) {
			uint64_t bytes = qv_dtype_size(d->t[i].dtype);

			/* no overflow: coverage() checked each tensor's bytes, and used stays at
			 * most max(max_file, one tensor) before the add */
			for (uint32_t k = 0; k < d->t[i].ndim; k++)
				bytes *= d->t[i].shape[k];
			if (used && (bytes > max_file || used > max_file - bytes))
				file++, used = 0;
			used += bytes;
			d->t[i].file = file;
		}
	}
	for (size_t i = 0; i < d->nt; i++)
		d->nfiles = d->t[i].file > d->nfiles ? d->t[i].file : d->nfiles;
	cJSON_Delete(j);
	free(text);
	return rc;
}

int qv_dcp_build(const struct qv_scan *sc, struct qv_st *const *st_of, const uint32_t *src_of,
		 uint64_t max_file, struct qv_dcp *out, char *err, size_t errlen)
{
	const struct qv_snode *root = &sc->n[0];
	uint32_t *node_of_src = NULL;
	size_t cap = 0, nsrc = 0;
	char next[128];
	int rc;

	memset(out, 0, sizeof(*out));
	rc = check_ranks(sc, err, errlen);
	out->map_node = qv_scan_find(sc, MAP_REL);
	for (size_t i = 0; i < sc->nn; i++)
		nsrc = src_of[i] != UINT32_MAX && src_of[i] + 1 > nsrc ? src_of[i] + 1 : nsrc;
	node_of_src = calloc(nsrc ? nsrc : 1, sizeof(*node_of_src));
	if (!rc && !node_of_src)
		rc = -ENOMEM;
	for (size_t i = 0; !rc && i < sc->nn; i++)
		if (src_of[i] != UINT32_MAX)
			node_of_src[src_of[i]] = (uint32_t)i;
	for (size_t k = 0; !rc && k < root->nkids; k++) {
		uint32_t si = root->kids[k];

		if (qv_dcp_is_rank_file(sc->n[si].name) && st_of[si])
			rc = add_file(out, &cap, &sc->n[si], st_of[si], src_of[si], err, errlen);
	}
	if (!rc)
		rc = merge(out, sc, node_of_src, err, errlen);
	qv_dcp_rank_files(sc, next, sizeof(next));
	for (size_t i = 0; !rc && i < out->nt; i++)
		rc = coverage(&out->t[i], sc, node_of_src, next, err, errlen);
	if (!rc)
		rc = assign_files(out, sc, max_file, err, errlen);
	if (rc == -ENOMEM)
		qv_err(err, errlen, rc, "out of memory");
	free(node_of_src);
	if (rc)
		qv_dcp_free(out);
	return rc;
}

void qv_dcp_free(struct qv_dcp *d)
{
	for (size_t i = 0; i < d->nt; i++) {
		free(d->t[i].name);
		free(d->t[i].c);
	}
	free(d->t);
	for (size_t i = 0; i < d->nabsent; i++)
		free(d->absent[i]);
	free(d->absent);
	memset(d, 0, sizeof(*d));
}
