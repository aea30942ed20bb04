/* hdr.c - synthesized bytes: virtual safetensors headers (valid for the strictest reader) and
 * model.safetensors.index.json regenerated from them, never copied. */
#include "qv_hdr.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

static bool meta_has(const struct qv_meta *m, size_t n, const char *key)
{
	for (size_t i = 0; i < n; i++)
		if (strcmp(m[i].key, key) == 0)
			return true;
	return false;
}

/* Entries m[0..n) but those whose key skip[0..nskip) holds. */
static int add_meta(struct qv_buf *b, const struct qv_meta *m, size_t n, const struct qv_meta *skip,
		    size_t nskip, bool *first)
{
	int rc = 0;

	for (size_t i = 0; i < n && !rc; i++) {
		if (meta_has(skip, nskip, m[i].key))
			continue;
		if (!*first)
			rc = qv_buf_add(b, ",", 1);
		*first = false;
		if (!rc)
			rc = qv_buf_json_str(b, m[i].key, strlen(m[i].key));
		if (!rc)
			rc = qv_buf_add(b, ":", 1);
		if (!rc)
			rc = qv_buf_json_str(b, m[i].val, strlen(m[i].val));
	}
	return rc;
}

static int add_tensor(struct qv_buf *b, const struct qv_vtensor *t, uint64_t begin)
{
	int rc = qv_buf_add(b, ",", 1);

	if (!rc)
		rc = qv_buf_json_str(b, t->name, strlen(t->name));
	if (!rc)
		rc = qv_buf_printf(b, ":{\"dtype\":\"%s\",\"shape\":[", qv_dtype_name(t->dtype));
	for (uint32_t d = 0; d < t->ndim && !rc; d++)
		rc = qv_buf_printf(b, d ? ",%llu" : "%llu", (unsigned long long)t->shape[d]);
	if (!rc) /* begin + size: checked for overflow by the caller */
		rc = qv_buf_printf(b, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)begin,
				   (unsigned long long)(begin + t->size));
	return rc;
}

/* Parse what was built with the project's own strict parser: a header it would reject (a
 * shape past 2^53, a shape that disagrees with its bytes, whatever a hostile source made the
 * view compute) is never served. Costs one parse of the header at mount. */
static int self_check(const struct qv_buf *out, uint64_t data, char *err, size_t errlen)
{
	struct qv_st st = { 0 };
	char why[QV_ERRLEN];
	int rc = qv_st_parse(out->p + 8, out->len - 8, out->len + data, &st, why, sizeof(why));

	qv_st_free(&st);
	if (rc == -ENOMEM)
		return qv_err(err, errlen, rc, "out of memory");
	return rc ? qv_err(err, errlen, rc, "its virtual header fails the strict parser: %s", why) : 0;
}

int qv_hdr_build(const struct qv_meta *meta, size_t nmeta, const struct qv_meta *extra,
		 size_t nextra, const struct qv_vtensor *t, size_t nt, struct qv_buf *out,
		 char *err, size_t errlen)
{
	static const struct qv_meta fmt = { "format", "pt" };
	bool first = true, has_format = false;
	uint64_t off = 0, n;
	int rc;

	out->len = 0;
	rc = qv_buf_add(out, "\0\0\0\0\0\0\0\0{\"__metadata__\":{", 25);
	for (size_t i = 0; i < nmeta; i++)
		has_format |= strcmp(meta[i].key, "format") == 0;
	/* the view's own keys replace the source's of the same name (a rank folder copied out
	 * of a mount and sliced again says what the new view holds, once) */
	if (!rc)
		rc = add_meta(out, meta, nmeta, extra, nextra, &first);
	if (!rc && !has_format)
		rc = add_meta(out, &fmt, 1, NULL, 0, &first);
	if (!rc)
		rc = add_meta(out, extra, nextra, NULL, 0, &first);
	if (!rc)
		rc = qv_buf_add(out, "}", 1);
	for (size_t i = 0; i < nt && !rc; i++) {
		uint64_t end;

		if (__builtin_add_overflow(off, t[i].size, &end))
			return qv_err(err, errlen, -EINVAL, "tensor \"%s\": data offsets overflow 64 bits",
				      t[i].name);
		rc = add_tensor(out, &t[i], off);
		off = end;
	}
	if (!rc)
		rc = qv_buf_add(out, "}", 1);
	while (!rc && out->len % 8)
		rc = qv_buf_add(out, " ", 1);
	if (rc)
		return qv_err(err, errlen, rc, "out of memory");
	n = out->len - 8;
	for (int i = 0; i < 8; i++)
		out->p[i] = (char)(n >> (8 * i));
	return self_check(out, off, err, errlen);
}

int qv_hdr_pad(struct qv_buf *hdr, size_t add)
{
	uint64_t n;
	int rc = 0;

	/* trailing spaces are part of the header by the format (as the 8-byte padding is) */
	for (size_t i = 0; i < add && !rc; i++)
		rc = qv_buf_add(hdr, " ", 1);
	if (rc)
		return rc;
	n = hdr->len - 8;
	for (int i = 0; i < 8; i++)
		hdr->p[i] = (char)(n >> (8 * i));
	return 0;
}

static int cmp_wentry(const void *a, const void *b)
{
	return strcmp(((const struct qv_wentry *)a)->key, ((const struct qv_wentry *)b)->key);
}

static cJSON *parse_index(const char *src_json, size_t len, char *err, size_t errlen)
{
	const char *end = NULL;
	cJSON *root = cJSON_ParseWithLengthOpts(src_json, len, &end, 0);
	cJSON *wm;

	while (root && end < src_json + len && strchr(" \t\r\n", *end) && *end)
		end++;
	if (!root || !cJSON_IsObject(root) || end != src_json + len) {
		cJSON_Delete(root);
		qv_err(err, errlen, -EINVAL, "index is not a JSON object");
		return NULL;
	}
	wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
	if (!cJSON_IsObject(wm)) {
		cJSON_Delete(root);
		qv_err(err, errlen, -EINVAL, "index has no weight_map object");
		return NULL;
	}
	for (cJSON *c = wm->child; c; c = c->next) {
		if (!cJSON_IsString(c) || strchr(c->valuestring, '/') || !c->valuestring[0]) {
			qv_err(err, errlen, -EINVAL, "index weight_map entry \"%s\" is not a file name",
			       c->string);
			cJSON_Delete(root);
			return NULL;
		}
	}
	return root;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

int qv_hdr_index_files(const char *src_json, size_t len, char ***files, size_t *nfiles, char *err,
		       size_t errlen)
{
	cJSON *root = parse_index(src_json, len, err, errlen), *c;
	size_t n = 0, k = 0;
	char **v;

	*files = NULL;
	*nfiles = 0;
	if (!root)
		return -EINVAL;
	for (c = cJSON_GetObjectItemCaseSensitive(root, "weight_map")->child; c; c = c->next)
		n++;
	v = calloc(n ? n : 1, sizeof(*v));
	for (c = cJSON_GetObjectItemCaseSensitive(root, "weight_map")->child; v && c; c = c->next)
		if (!(v[k++] = strdup(c->valuestring)))
			break;
	cJSON_Delete(root);
	if (!v || k != n || (n && !v[n - 1])) {
		for (size_t i = 0; v && i < k; i++)
			free(v[i]);
		free(v);
		return qv_err(err, errlen, -ENOMEM, "out of memory");
	}
	qsort(v, n, sizeof(*v), cmp_str);
	for (size_t i = 0; i < n; i++) { /* unique, in place */
		if (*nfiles && strcmp(v[*nfiles - 1], v[i]) == 0)
			free(v[i]);
		else
			v[(*nfiles)++] = v[i];
	}
	*files = v;
	return 0;
}

int qv_hdr_index_each(const char *src_json, size_t len,
		      int (*fn)(void *arg, const char *key, const char *file), void *arg, char *err,
		      size_t errlen)
{
	cJSON *root = parse_index(src_json, len, err, errlen);
	int rc = 0;

	if (!root)
		return -EINVAL;
	for (cJSON *c = cJSON_GetObjectItemCaseSensitive(root, "weight_map")->child; c && !rc;
	     c = c->next)
		rc = fn(arg, c->string, c->valuestring);
	cJSON_Delete(root);
	return rc;
}

/* Other metadata values pass through as they were (re-serialized compactly). */
static int add_index_metadata(struct qv_buf *b, const cJSON *md, uint64_t total_size)
{
	bool have_total = false;
	int rc = qv_buf_adds(b, "{\"metadata\":{");

	for (const cJSON *c = cJSON_IsObject(md) ? md->child : NULL; c && !rc; c = c->next) {
		char *v;

		if (c != md->child)
			rc = qv_buf_add(b, ",", 1);
		if (!rc)
			rc = qv_buf_json_str(b, c->string, strlen(c->string));
		if (!rc)
			rc = qv_buf_add(b, ":", 1);
		if (rc)
			break;
		if (strcmp(c->string, "total_size") == 0) {
			have_total = true;
			rc = qv_buf_printf(b, "%llu", (unsigned long long)total_size);
			continue;
		}
		v = cJSON_PrintUnformatted(c);
		rc = v ? qv_buf_adds(b, v) : -ENOMEM;
		cJSON_free(v);
	}
	if (!rc && !have_total)
		rc = qv_buf_printf(b, "%s\"total_size\":%llu",
				   cJSON_IsObject(md) && md->child ? "," : "",
				   (unsigned long long)total_size);
	return rc ? rc : qv_buf_add(b, "}", 1);
}

int qv_hdr_index(const char *src_json, size_t len, struct qv_wentry *w, size_t nw,
		 uint64_t total_size, struct qv_buf *out, char *err, size_t errlen)
{
	cJSON *root = parse_index(src_json, len, err, errlen);
	int rc;

	if (!root)
		return -EINVAL;
	out->len = 0;
	rc = add_index_metadata(out, cJSON_GetObjectItemCaseSensitive(root, "metadata"), total_size);
	cJSON_Delete(root);
	if (nw)
		qsort(w, nw, sizeof(*w), cmp_wentry);
	if (!rc)
		rc = qv_buf_adds(out, ",\"weight_map\":{");
	for (size_t i = 0; i < nw && !rc; i++) {
		if (i)
			rc = qv_buf_add(out, ",", 1);
		if (!rc)
			rc = qv_buf_json_str(out, w[i].key, strlen(w[i].key));
		if (!rc)
			rc = qv_buf_add(out, ":", 1);
		if (!rc)
			rc = qv_buf_json_str(out, w[i].file, strlen(w[i].file));
	}
	if (!rc)
		rc = qv_buf_adds(out, "}}\n");
	return rc ? qv_err(err, errlen, rc, "out of memory") : 0;
}
