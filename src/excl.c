/* excl.c - exclude= out of an -o option group, with its backslashes as written. */
#include "qv_excl.h"
#include "qv_util.h"

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

/* Whether the regex text t (n bytes) leaves a bracket, group or brace open, skipping "\x"
 * pairs: then the comma that ended exclude= was most likely meant as part of it. */
static bool regex_open(const char *t, size_t n)
{
	int paren = 0, brace = 0;
	bool cls = false;

	for (size_t i = 0; i < n; i++) {
		if (t[i] == '\\' && i + 1 < n)
			i++;
		else if (cls)
			cls = t[i] != ']' || (i > 0 && t[i - 1] == '[');
		else if (t[i] == '[')
			cls = true;
		else
			paren += (t[i] == '(') - (t[i] == ')'), brace += (t[i] == '{') - (t[i] == '}');
	}
	return cls || paren > 0 || brace > 0;
}

/* The end of the option starting at p: the next comma not preceded by a backslash, or the
 * end of the group. */
static const char *option_end(const char *p)
{
	while (*p && *p != ',')
		p += p[0] == '\\' && p[1] ? 2 : 1;
	return p;
}

/* The value v..end of an exclude= as the regex reads it, into pat; 0, -EINVAL or -ENOMEM,
 * logged. */
static int unescape(const char *v, const char *end, struct qv_buf *pat)
{
	pat->len = 0;
	if (qv_buf_adds(pat, ""))
		return -ENOMEM;
	for (const char *c = v; c < end; c++) {
		if (c[0] == '\\' && c[1] == '\\')
			return qv_log("exclude=%.*s: \"\\\\\" would match a backslash, which no tensor "
				      "name holds; backslashes here are the regex's own (write \\d, "
				      "not \\\\d)", (int)(end - v), v),
			       -EINVAL;
		if (c[0] == '\\' && c[1] == ',')
			c++; /* "\," is the comma; the backslash goes */
		else if (c[0] == '\\' && c + 1 < end && qv_buf_add(pat, c++, 1))
			return -ENOMEM; /* "\x": both stay, x is never an option's end */
		if (qv_buf_add(pat, c, 1))
			return -ENOMEM;
	}
	return 0;
}

int qv_excl_take(const char *g, char **rest, char **pattern)
{
	struct qv_buf out = { 0 }, pat = { 0 };
	bool first = true;
	int rc = qv_buf_adds(&out, "") ? -ENOMEM : 0;

	*rest = *pattern = NULL;
	for (const char *p = g, *opt = g; !rc; opt = ++p) {
		p = option_end(opt);
		if (strncmp(opt, "exclude=", 8)) { /* another option: libfuse's, unchanged */
			if ((!first && qv_buf_add(&out, ",", 1)) ||
			    qv_buf_add(&out, opt, (size_t)(p - opt)))
				rc = -ENOMEM;
			first = false;
		} else if (*p && regex_open(opt + 8, (size_t)(p - opt - 8))) {
			const char *v = opt + 8, *next = p + 1, *e = option_end(next);

			qv_log("exclude=%.*s: the comma after it ends the option; write a comma that "
			       "belongs to the pattern as \\, (exclude=%.*s\\,%.*s)",
			       (int)(p - v), v, (int)(p - v), v, (int)(e - next), next);
			rc = -EINVAL;
		} else if (!(rc = unescape(opt + 8, p, &pat))) {
			free(*pattern);
			*pattern = pat.p; /* the last exclude= wins, as for every option */
			pat = (struct qv_buf){ 0 };
		}
		if (!*p)
			break;
	}
	qv_buf_free(&pat);
	if (!rc) {
		*rest = out.p;
		return 0;
	}
	if (rc == -ENOMEM)
		qv_log("out of memory parsing options");
	qv_buf_free(&out);
	free(*pattern);
	*pattern = NULL;
	return rc;
}
