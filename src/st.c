/* st.c - strict safetensors header parser: the rules of DESIGN §6, with reasons a user can act on. */
#include "qv_st.h"
#include "qv_util.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const struct {
	const char *name;
	unsigned size;
} dtypes[QV_DT_COUNT] = {
	[QV_DT_BOOL] = { "BOOL", 1 },	 [QV_DT_U8] = { "U8", 1 },
	[QV_DT_I8] = { "I8", 1 },	 [QV_DT_F8_E5M2] = { "F8_E5M2", 1 },
	[QV_DT_F8_E4M3] = { "F8_E4M3", 1 }, [QV_DT_F8_E8M0] = { "F8_E8M0", 1 },
	[QV_DT_I16] = { "I16", 2 },	 [QV_DT_U16] = { "U16", 2 },
	[QV_DT_F16] = { "F16", 2 },	 [QV_DT_BF16] = { "BF16", 2 },
	[QV_DT_I32] = { "I32", 4 },	 [QV_DT_U32] = { "U32", 4 },
	[QV_DT_F32] = { "F32", 4 },	 [QV_DT_F64] = { "F64", 8 },
	[QV_DT_I64] = { "I64", 8 },	 [QV_DT_U64] = { "U64", 8 },
	[QV_DT_C64] = { "C64", 8 },	 [QV_DT_F8_E4M3FNUZ] = { "F8_E4M3FNUZ", 1 },
	[QV_DT_F8_E5M2FNUZ] = { "F8_E5M2FNUZ", 1 },
};

const char *qv_dtype_name(enum qv_dtype dt)
{
	return dtypes[dt].name;
}

unsigned qv_dtype_size(enum qv_dtype dt)
{
	return dtypes[dt].size;
}

static int dtype_lookup(const char *s)
{
	for (int i = 0; i < QV_DT_COUNT; i++)
		if (strcmp(s, dtypes[i].name) == 0)
			return i;
	return -1;
}

/* JSON numbers arrive as doubles: accept only exact non-negative integers up to 2^53. */
static int json_u64(const cJSON *n, uint64_t *out)
{
	double v;

	if (!cJSON_IsNumber(n))
		return -EINVAL;
	v = n->valuedouble;
	if (!isfinite(v) || v < 0 || v > 9007199254740992.0 || floor(v) != v)
		return -EINVAL;
	*out = (uint64_t)v;
	return 0;
}

static int cmp_str_ptr(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Duplicate keys are legal JSON but ambiguous: reject them (sort names, compare neighbours). */
static const char *find_duplicate(const cJSON *obj)
{
	size_t n = 0, i;
	const cJSON *c;
	const char **names;
	const char *dup = NULL;

	for (c = obj->child; c; c = c->next)
		n++;
	if (n < 2)
		return NULL;
	names = malloc(n * sizeof(*names));
	if (!names)
		return "(out of memory)";
	i = 0;
	for (c = obj->child; c; c = c->next)
		names[i++] = c->string;
	qsort(names, n, sizeof(*names), cmp_str_ptr);
	for (i = 1; i < n && !dup; i++)
		if (strcmp(names[i - 1], names[i]) == 0)
			dup = names[i];
	free(names);
	return dup;
}

static bool is_hex(char c)
{
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* What cJSON lets through but a strict reader must not: raw control characters, \u0000 and
 * \u escapes with a non-hex digit (which cJSON turns into a terminator, silently truncating a
 * name), and numbers that are not plain integers up to 2^53 (cJSON keeps only a double, which
 * can neither tell 24.0 from 24 nor hold 2^53 + 1; its strtod reads 01 as 1). Numbers only
 * occur in shapes and offsets, so all of them must be integers. */
static int lex_check(const char *s, size_t n, char *err, size_t errlen)
{
	const char *key = "", *str = NULL;
	int keylen = 0;
	bool in_str = false;

	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];

		if (in_str) {
			if (c < 0x20)
				return qv_err(err, errlen, -EINVAL,
					      "raw control character in a string at byte %zu", i);
			if (c == '\\') {
				char e = i + 1 < n ? s[i + 1] : '\0';

				if (e == 'u' && (i + 5 >= n || !is_hex(s[i + 2]) || !is_hex(s[i + 3]) ||
						 !is_hex(s[i + 4]) || !is_hex(s[i + 5])))
					return qv_err(err, errlen, -EINVAL,
						      "\\u escape without 4 hex digits at byte %zu", i);
				if (e == 'u' && memcmp(s + i + 2, "0000", 4) == 0)
					return qv_err(err, errlen, -EINVAL,
						      "\\u0000 escape in a string at byte %zu", i);
				if (e != 'u' && (!e || !strchr("\"\\/bfnrt", e)))
					return qv_err(err, errlen, -EINVAL,
						      "invalid escape in a string at byte %zu", i);
				i += e == 'u' ? 5 : 1; /* an escaped character cannot end the string */
			} else if (c == '"') {
				in_str = false;
			}
		} else if (c == '"') {
			in_str = true;
			str = s + i + 1;
		} else if (c == ':' && str) {
			key = str; /* remember the field a number belongs to, for the message */
			keylen = (int)(s + i - str - 1);
			while (keylen > 0 && key[keylen] != '"')
				keylen--;
		} else if (c == '-' || c == '+' || c == '.' || (c >= '0' && c <= '9')) {
			size_t j = i, digits = 0;
			uint64_t v = 0;

			for (; j < n && s[j] >= '0' && s[j] <= '9'; j++, digits++)
				v = digits < 17 ? v * 10 + (uint64_t)(s[j] - '0') : v;
			if (digits == 0 || digits > 16 || v > (1ULL << 53) ||
			    (j < n && s[j] && strchr(".eE+-", s[j])))
				return qv_err(err, errlen, -EINVAL,
					      "%.*s: value at byte %zu is not an integer from 0 to 2^53",
					      keylen, key, i);
			if (digits > 1 && s[i] == '0')
				return qv_err(err, errlen, -EINVAL,
					      "%.*s: value at byte %zu has a leading zero (not JSON)",
					      keylen, key, i);
			i = j - 1;
		} else if (c < 0x20 && c != '\t' && c != '\n' && c != '\r') {
			return qv_err(err, errlen, -EINVAL, "garbage (control byte) at byte %zu", i);
		}
	}
	return 0;
}

/* o must be an object without duplicate keys (what names it in messages); *n = its size. */
static int object_members(const cJSON *o, const char *what, size_t *n, char *err, size_t errlen)
{
	const char *dup;

	if (!cJSON_IsObject(o))
		return qv_err(err, errlen, -EINVAL, "%s is not a JSON object", what);
	dup = find_duplicate(o);
	if (dup)
		return qv_err(err, errlen, -EINVAL, "duplicate %s key \"%s\"", what, dup);
	*n = 0;
	for (const cJSON *c = o->child; c; c = c->next)
		(*n)++;
	return 0;
}

static int parse_metadata(const cJSON *m, struct qv_st *st, char *err, size_t errlen)
{
	const cJSON *c;
	size_t n;

	if (object_members(m, "__metadata__", &n, err, errlen))
		return -EINVAL;
	st->meta = calloc(n ? n : 1, sizeof(*st->meta));
	if (!st->meta)
		return -ENOMEM;
	for (c = m->child; c; c = c->next) {
		if (!cJSON_IsString(c))
			return qv_err(err, errlen, -EINVAL, "__metadata__ value of \"%s\" is not a string",
				      c->string);
		st->meta[st->nmeta].key = strdup(c->string);
		st->meta[st->nmeta].val = strdup(c->valuestring);
		st->nmeta++;
		if (!st->meta[st->nmeta - 1].key || !st->meta[st->nmeta - 1].val)
			return -ENOMEM;
	}
	return 0;
}

static int parse_shape(const cJSON *a, struct qv_tensor *t, char *err, size_t errlen)
{
	const cJSON *c;

	if (!cJSON_IsArray(a))
		return qv_err(err, errlen, -EINVAL, "tensor \"%s\": shape is not an array", t->name);
	t->ndim = 0;
	for (c = a->child; c; c = c->next) {
		if (t->ndim == QV_ST_MAX_DIMS)
			return qv_err(err, errlen, -EINVAL, "tensor \"%s\": more than %d dimensions",
				      t->name, QV_ST_MAX_DIMS);
		if (json_u64(c, &t->shape[t->ndim]))
			return qv_err(err, errlen, -EINVAL,
				      "tensor \"%s\": shape entry is not a non-negative integer <= 2^53",
				      t->name);
		t->ndim++;
	}
	return 0;
}

static int parse_offsets(const cJSON *a, struct qv_tensor *t, char *err, size_t errlen)
{
	if (!cJSON_IsArray(a) || cJSON_GetArraySize(a) != 2 || json_u64(a->child, &t->begin) ||
	    json_u64(a->child->next, &t->end))
		return qv_err(err, errlen, -EINVAL,
			      "tensor \"%s\": data_offsets is not two non-negative integers <= 2^53",
			      t->name);
	if (t->begin > t->end)
		return qv_err(err, errlen, -EINVAL, "tensor \"%s\": data_offsets end before begin",
			      t->name);
	return 0;
}

/* Check one tensor entry: exactly dtype, shape and data_offsets, consistent with each other. */
static int parse_tensor(const cJSON *o, struct qv_tensor *t, char *err, size_t errlen)
{
	const cJSON *c, *dt = NULL, *shape = NULL, *offs = NULL;
	uint64_t bytes;
	int rc, d;

	if (!cJSON_IsObject(o))
		return qv_err(err, errlen, -EINVAL, "tensor \"%s\": entry is not an object", t->name);
	for (c = o->child; c; c = c->next) {
		const cJSON **slot = strcmp(c->string, "dtype") == 0	   ? &dt :
				     strcmp(c->string, "shape") == 0	   ? &shape :
				     strcmp(c->string, "data_offsets") == 0 ? &offs :
									      NULL;
		if (!slot)
			return qv_err(err, errlen, -EINVAL, "tensor \"%s\": unknown field \"%s\"",
				      t->name, c->string);
		if (*slot)
			return qv_err(err, errlen, -EINVAL, "tensor \"%s\": duplicate field \"%s\"",
				      t->name, c->string);
		*slot = c;
	}
	if (!dt || !shape || !offs)
		return qv_err(err, errlen, -EINVAL, "tensor \"%s\": missing %s", t->name,
			      !dt ? "dtype" : !shape ? "shape" : "data_offsets");
	d = cJSON_IsString(dt) ? dtype_lookup(dt->valuestring) : -1;
	if (d < 0)
		return qv_err(err, errlen, -EINVAL, "tensor \"%s\": unknown dtype %s", t->name,
			      cJSON_IsString(dt) ? dt->valuestring : "(not a string)");
	t->dtype = (enum qv_dtype)d;
	rc = parse_shape(shape, t, err, errlen);
	if (!rc)
		rc = parse_offsets(offs, t, err, errlen);
	if (rc)
		return rc;
	/* the element count first, as the official reader does: a zero dimension makes any
	 * others harmless */
	bytes = 1;
	for (uint32_t i = 0; i < t->ndim; i++)
		if (__builtin_mul_overflow(bytes, t->shape[i], &bytes))
			return qv_err(err, errlen, -EINVAL, "tensor \"%s\": size overflows 64 bits",
				      t->name);
	if (__builtin_mul_overflow(bytes, (uint64_t)qv_dtype_size(t->dtype), &bytes))
		return qv_err(err, errlen, -EINVAL, "tensor \"%s\": size overflows 64 bits", t->name);
	if (bytes != t->end - t->begin)
		return qv_err(err, errlen, -EINVAL,
			      "tensor \"%s\": shape x dtype is %llu bytes but data_offsets span %llu",
			      t->name, (unsigned long long)bytes,
			      (unsigned long long)(t->end - t->begin));
	return 0;
}

static int cmp_data_order(const void *a, const void *b)
{
	const struct qv_tensor *x = a, *y = b;

	if (x->begin != y->begin)
		return x->begin < y->begin ? -1 : 1;
	if (x->end != y->end)
		return x->end < y->end ? -1 : 1;
	return strcmp(x->name, y->name);
}

/* Offsets must tile [0, data_size) exactly: no gap, no overlap, nothing past the end. */
static int check_tiling(const struct qv_st *st, char *err, size_t errlen)
{
	uint64_t pos = 0;

	for (size_t i = 0; i < st->nt; i++) {
		const struct qv_tensor *t = &st->t[i];

		if (t->begin != pos)
			return qv_err(err, errlen, -EINVAL, "tensor \"%s\": data at %llu %s at %llu",
				      t->name, (unsigned long long)t->begin,
				      t->begin > pos ? "leaves a hole, expected data" :
						       "overlaps the previous tensor, which ends",
				      (unsigned long long)pos);
		pos = t->end;
	}
	if (pos != st->data_size)
		return qv_err(err, errlen, -EINVAL,
			      "tensors cover %llu data bytes but the file holds %llu %s",
			      (unsigned long long)pos, (unsigned long long)st->data_size,
			      pos > st->data_size ? "(offsets past end of file)" : "(trailing bytes)");
	return 0;
}

static int parse_root(const cJSON *root, struct qv_st *st, char *err, size_t errlen)
{
	const cJSON *c;
	size_t n;
	int rc;

	if (object_members(root, "header", &n, err, errlen))
		return -EINVAL;
	st->t = calloc(n ? n : 1, sizeof(*st->t));
	if (!st->t)
		return -ENOMEM;
	for (c = root->child; c; c = c->next) {
		struct qv_tensor *t;

		if (strcmp(c->string, "__metadata__") == 0) {
			if (cJSON_IsNull(c))
				continue; /* the official reader's "no metadata" too */
			rc = parse_metadata(c, st, err, errlen);
			if (rc)
				return rc;
			continue;
		}
		if (c->string[0] == '\0')
			return qv_err(err, errlen, -EINVAL, "empty tensor name");
		t = &st->t[st->nt++];
		t->name = strdup(c->string);
		if (!t->name)
			return -ENOMEM;
		rc = parse_tensor(c, t, err, errlen);
		if (rc)
			return rc;
	}
	qsort(st->t, st->nt, sizeof(*st->t), cmp_data_order);
	return check_tiling(st, err, errlen);
}

int qv_st_parse(const char *hdr, size_t len, uint64_t file_size, struct qv_st *out, char *err,
		size_t errlen)
{
	const char *end = NULL;
	cJSON *root;
	int rc;

	memset(out, 0, sizeof(*out));
	out->hdr_len = len;
	if (len > QV_ST_MAX_HEADER)
		return qv_err(err, errlen, -EINVAL, "header length %zu exceeds 100000000", len);
	if (file_size < 8 || len > file_size - 8)
		return qv_err(err, errlen, -EINVAL, "header length %zu runs past end of file", len);
	out->data_size = file_size - 8 - len;
	if (len == 0 || hdr[0] != '{')
		return qv_err(err, errlen, -EINVAL, "header does not start with '{'");
	if (!qv_utf8_valid(hdr, len))
		return qv_err(err, errlen, -EINVAL, "header is not valid UTF-8");
	if (lex_check(hdr, len, err, errlen))
		return -EINVAL;
	root = cJSON_ParseWithLengthOpts(hdr, len, &end, 0);
	if (!root) {
		size_t at = end && end >= hdr && end <= hdr + len ? (size_t)(end - hdr) : 0;
		return qv_err(err, errlen, -EINVAL, "header is not valid JSON (near byte %zu)", at);
	}
	for (; end < hdr + len; end++) {
		if (*end != ' ' && *end != '\t' && *end != '\n' && *end != '\r') {
			cJSON_Delete(root);
			return qv_err(err, errlen, -EINVAL, "garbage after the header JSON at byte %zu",
				      (size_t)(end - hdr));
		}
	}
	rc = parse_root(root, out, err, errlen);
	cJSON_Delete(root);
	if (rc == -ENOMEM)
		qv_err(err, errlen, rc, "out of memory");
	if (rc)
		qv_st_free(out); /* callers never see a half-built result */
	return rc;
}

int qv_st_read_fd(int fd, uint64_t file_size, struct qv_st *out, char *err, size_t errlen)
{
	unsigned char pre[8];
	uint64_t len = 0;
	char *hdr;
	ssize_t n;
	size_t got = 0;
	int rc;

	memset(out, 0, sizeof(*out));
	if (file_size < 8)
		return qv_err(err, errlen, -EINVAL, "file too short for a safetensors header");
	n = pread(fd, pre, 8, 0);
	if (n != 8)
		return qv_err(err, errlen, n < 0 ? -errno : -EIO, "cannot read header length");
	for (int i = 7; i >= 0; i--)
		len = len << 8 | pre[i];
	if (len > QV_ST_MAX_HEADER)
		return qv_err(err, errlen, -EINVAL, "header length %llu exceeds 100000000",
			      (unsigned long long)len);
	if (len > file_size - 8)
		return qv_err(err, errlen, -EINVAL, "header length %llu runs past end of file",
			      (unsigned long long)len);
	hdr = malloc(len ? len : 1);
	if (!hdr)
		return qv_err(err, errlen, -ENOMEM, "out of memory");
	while (got < len) {
		n = pread(fd, hdr + got, len - got, 8 + got);
		if (n <= 0) {
			free(hdr);
			return qv_err(err, errlen, n < 0 ? -errno : -EIO, "cannot read header");
		}
		got += (size_t)n;
	}
	rc = qv_st_parse(hdr, len, file_size, out, err, errlen);
	free(hdr);
	return rc;
}

void qv_st_free(struct qv_st *st)
{
	for (size_t i = 0; i < st->nt; i++)
		free(st->t[i].name);
	for (size_t i = 0; i < st->nmeta; i++) {
		free(st->meta[i].key);
		free(st->meta[i].val);
	}
	free(st->t);
	free(st->meta);
	memset(st, 0, sizeof(*st));
}
