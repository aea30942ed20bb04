/* plan.c - NeMo Automodel's Qwen3VLMoeStateDictAdapter rules (from_hf / to_hf), in C. */
#include "qv_plan.h"
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

/* Python's re and POSIX ERE (glibc, C locale: bytes) differ in what follows; the translation
 * below keeps re.match's decision for every name, or refuses the pattern by name: a construct
 * taken literally would exclude something else than the user meant, silently. */
struct rx {
	struct qv_buf b; /* the ERE so far */
	const char *pat; /* as the user wrote it, for messages */
	char *err;
	size_t errlen;
	int depth; /* groups open */
	/* what came last, for a repeat after it: sre_parse refuses to repeat nothing (the start,
	 * "(", "|", an anchor) or a repeat; "?" after a repeat makes it lazy, which re.match
	 * cannot tell from greedy; "+" makes it possessive, which it can */
	enum { RX_NOTHING, RX_ATOM, RX_REPEAT, RX_LAZY } last;
};

/* A Python escape: a literal byte, a class (\d \D \w \W \s \S) or an anchor (\A \Z). */
struct esc {
	enum { ESC_LIT, ESC_CLASS, ESC_START, ESC_END, ESC_BAD } k;
	unsigned char c; /* ESC_LIT: the byte; ESC_CLASS: the letter */
	size_t len;	 /* bytes of the pattern it takes */
	const char *why; /* ESC_BAD: why it is refused */
};

static int rx_refuse(struct rx *x, const char *what)
{
	return qv_err(x->err, x->errlen, -EINVAL, "exclude=%s: %s", x->pat, what);
}

static int hex_digit(char c)
{
	return c >= '0' && c <= '9' ? c - '0' :
	       c >= 'a' && c <= 'f' ? c - 'a' + 10 :
	       c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* The escape at s (s[0] is the backslash), read as Python's sre_parse reads it inside a
 * character class (in_class) or outside one. */
static struct esc read_escape(const char *s, bool in_class)
{
	static const char ctl_from[] = "afnrtv", ctl_to[] = "\a\f\n\r\t\v";
	unsigned char c = (unsigned char)s[1];
	const char *ctl = c ? strchr(ctl_from, c) : NULL;
	int hi = c == 'x' ? hex_digit(s[2]) : -1, lo = hi >= 0 ? hex_digit(s[3]) : -1;

	if (c && strchr("dDwWsS", c))
		return (struct esc){ ESC_CLASS, c, 2, NULL };
	if (ctl || (c == 'b' && in_class)) /* \b is a backspace in a class, a boundary outside */
		return (struct esc){ ESC_LIT, ctl ? (unsigned char)ctl_to[ctl - ctl_from] : '\b', 2,
				     NULL };
	if ((c == 'A' || c == 'Z') && !in_class) /* ERE's ^ and $ (no REG_NEWLINE) */
		return (struct esc){ c == 'A' ? ESC_START : ESC_END, c, 2, NULL };
	if (lo >= 0 && hi < 8 && (hi || lo)) /* \x00 would end the ERE's string */
		return (struct esc){ ESC_LIT, (unsigned char)(hi << 4 | lo), 4, NULL };
	if (!c)
		return (struct esc){ ESC_BAD, c, 1, "a trailing backslash escapes nothing" };
	if (c == 'b' || c == 'B')
		return (struct esc){ ESC_BAD, c, 2, "word boundaries (\\b, \\B) are not supported" };
	if (c == 'x')
		return (struct esc){ ESC_BAD, c, 2, "\\x takes two hex digits, from \\x01 to \\x7f" };
	if (c >= '0' && c <= '9')
		return (struct esc){ ESC_BAD, c, 2,
				     "backreferences and octal escapes (\\1, \\0) are not supported" };
	if (isalpha(c)) /* Python refuses the other letters too (bad escape) */
		return (struct esc){ ESC_BAD, c, 2,
				     in_class ? "inside [...] only the escapes \\d \\w \\s \\D \\W "
						"\\S \\a \\b \\f \\n \\r \\t \\v \\xHH are supported" :
						"only the escapes \\d \\w \\s \\D \\W \\S \\A \\Z \\a "
						"\\f \\n \\r \\t \\v \\xHH are supported" };
	return (struct esc){ ESC_LIT, c, 2, NULL }; /* \. \] \\ \- ...: the character itself */
}

/* What a class escape's letter (lower case) holds, as bracket members. */
static const char *class_members(unsigned char c)
{
	return c == 'd' ? "0-9" : c == 'w' ? "[:alnum:]_" : "[:space:]";
}

/* Class escape c (\d or \D, ...) as a whole bracket expression, negated once more by neg. */
static int add_class(struct rx *x, unsigned char c, bool neg)
{
	return qv_buf_printf(&x->b, "[%s%s]", (isupper(c) != 0) != neg ? "^" : "",
			     class_members((unsigned char)tolower(c)));
}

/* A literal byte outside brackets: ERE's special characters escaped (glibc reads "\c" as c
 * for each of them), every other byte as itself. */
static int add_lit(struct rx *x, unsigned char c)
{
	char two[2] = { '\\', (char)c };

	return strchr(".[]()*+?{}|^$\\", c) ? qv_buf_add(&x->b, two, 2) :
					       qv_buf_add(&x->b, &c, 1);
}

/* A literal byte as a bracket member: the four bytes whose meaning depends on where they stand
 * in a POSIX bracket go in as collating symbols ([.-.]), which mean just the byte anywhere. */
static int add_member(struct rx *x, unsigned char c)
{
	char sym[5] = { '[', '.', (char)c, '.', ']' };

	return strchr("]-^[", c) ? qv_buf_add(&x->b, sym, 5) : qv_buf_add(&x->b, &c, 1);
}

/* One item of a character class at *s: a literal byte (*lit, else -1) or a class escape's
 * letter (*cls, else 0); *s moves past it. */
static int class_item(struct rx *x, const char **s, int *lit, unsigned char *cls)
{
	struct esc e = { ESC_LIT, (unsigned char)**s, 1, NULL };

	if (**s == '\\')
		e = read_escape(*s, true);
	if (e.k == ESC_BAD)
		return rx_refuse(x, e.why);
	if (e.c >= 0x80) /* a byte of a UTF-8 character: Python's class holds the character */
		return rx_refuse(x, "non-ASCII characters inside [...] are not supported");
	*s += e.len;
	*lit = e.k == ESC_LIT ? e.c : -1;
	*cls = e.k == ESC_CLASS ? e.c : 0;
	return 0;
}

/* Append one parsed item (lit or cls) of a bracket at *s, or the range it starts; a negated
 * class escape is only noted in *negated: it is added when it turns out to stand alone. */
static int class_member(struct rx *x, const char **s, int lit, unsigned char cls,
			unsigned char *negated)
{
	unsigned char cls2;
	int hi, rc;

	if (**s == '-' && (*s)[1] && (*s)[1] != ']') { /* a range, as sre_parse reads one */
		++*s;
		if ((rc = class_item(x, s, &hi, &cls2)))
			return rc;
		if (lit < 0 || hi < lit)
			return rx_refuse(x, "a bad character range inside [...]");
		return add_member(x, (unsigned char)lit) || qv_buf_add(&x->b, "-", 1) ||
		       add_member(x, (unsigned char)hi) ? -ENOMEM : 0;
	}
	if (cls && isupper(cls)) {
		*negated = cls;
		return 0;
	}
	return cls ? qv_buf_adds(&x->b, class_members(cls)) : add_member(x, (unsigned char)lit);
}

/* The character class at *s ("[" ... "]") as a POSIX bracket; *s moves past it. Members are
 * read as sre_parse reads them: "]" first is a member, "-" first or last is one, an escaped
 * character is that character, and \d \w \s are their POSIX classes. */
static int rx_class(struct rx *x, const char **s)
{
	const char *p = *s + 1;
	bool neg = *p == '^';
	unsigned char negated = 0;
	size_t items = 0, start = x->b.len;
	int rc = qv_buf_adds(&x->b, neg ? "[^" : "[");

	for (p += neg; !rc; items++) {
		unsigned char cls;
		int lit;

		if (!*p)
			return rx_refuse(x, "a [ without its ]");
		if (*p == ']' && items)
			break;
		rc = class_item(x, &p, &lit, &cls);
		if (!rc)
			rc = class_member(x, &p, lit, cls, &negated);
	}
	if (rc)
		return rc;
	*s = p + 1;
	if (negated && items > 1)
		return rx_refuse(x, "\\D, \\W or \\S inside [...] with other members is not "
				    "supported (a POSIX bracket cannot say it)");
	if (!negated)
		return qv_buf_add(&x->b, "]", 1);
	x->b.len = start; /* [\D] is \D, [^\D] is \d */
	return add_class(x, negated, neg);
}

/* The escape at *s outside brackets; *s moves past it. */
static int rx_escape(struct rx *x, const char **s)
{
	struct esc e = read_escape(*s, false);

	*s += e.len;
	x->last = e.k == ESC_START || e.k == ESC_END ? RX_NOTHING : RX_ATOM;
	switch (e.k) {
	case ESC_CLASS: return add_class(x, e.c, false);
	case ESC_LIT: return add_lit(x, e.c);
	case ESC_START: return qv_buf_add(&x->b, "^", 1);
	case ESC_END: return qv_buf_add(&x->b, "$", 1);
	default: return rx_refuse(x, e.why);
	}
}

/* The length of Python's repeat {m}, {m,}, {,n}, {,} or {m,n} at s, 0 where its "{" is a
 * literal; *lo and *hi point at the bounds' digits (hi at lo's without a comma). */
static size_t interval(const char *s, const char **lo, const char **hi)
{
	const char *p = s + 1;

	*lo = *hi = p;
	while (isdigit((unsigned char)*p))
		p++;
	if (*p == ',')
		for (*hi = ++p; isdigit((unsigned char)*p);)
			p++;
	return *p == '}' && s[1] != '}' ? (size_t)(p + 1 - s) : 0;
}

/* The repeat (* + ? or an interval) at *s; *s moves past it. */
static int rx_repeat(struct rx *x, const char **s)
{
	const char *lo, *hi;
	size_t n = **s == '{' ? interval(*s, &lo, &hi) : 1;
	bool lazy = **s == '?' && x->last == RX_REPEAT;
	int rc;

	if (!n) { /* "{" not starting a repeat is a literal in Python */
		x->last = RX_ATOM;
		(*s)++;
		return add_lit(x, '{');
	}
	if (**s == '+' && x->last == RX_REPEAT)
		return rx_refuse(x, "possessive repeats (*+, ++, ?+, {m,n}+) are not supported");
	if (!lazy && x->last != RX_ATOM)
		return rx_refuse(x, x->last == RX_NOTHING ? "a repeat of nothing" :
							    "a repeat of a repeat");
	if (n > 1 && hi != lo && isdigit((unsigned char)*hi) &&
	    strtoull(hi, NULL, 10) < strtoull(lo, NULL, 10))
		return rx_refuse(x, "a repeat {m,n} with n below m");
	x->last = lazy ? RX_LAZY : RX_REPEAT;
	if (lazy) /* dropped: ERE would read "a{2}?" as an optional "aa" */
		rc = 0;
	else if (n == 1)
		rc = qv_buf_add(&x->b, *s, 1);
	else /* {,n} is {0,n}; the digits as written */
		rc = qv_buf_printf(&x->b, "{%s%.*s}", isdigit((unsigned char)*lo) ? "" : "0",
				   (int)(n - 2), *s + 1);
	*s += n;
	return rc;
}

/* One piece of the pattern at *s (a bracket, an escape, a group's edge, a repeat, an anchor,
 * an alternation or a literal) appended as ERE; *s moves past it. */
static int rx_piece(struct rx *x, const char **s)
{
	char c = **s;

	if (c == '[') {
		x->last = RX_ATOM;
		return rx_class(x, s);
	}
	if (c == '\\')
		return rx_escape(x, s);
	if (c == '*' || c == '+' || c == '?' || c == '{')
		return rx_repeat(x, s);
	if (c == '(' && (*s)[1] == '?')
		return rx_refuse(x, "(?...) groups (look-arounds, flags, non-capturing and named "
				    "groups) are not supported");
	if (c == ')' && x->depth == 0) /* it would close the ^( that anchors the pattern */
		return rx_refuse(x, "a ) without its (");
	(*s)++;
	x->depth += (c == '(') - (c == ')');
	x->last = c == '(' || c == '|' || c == '^' || c == '$' ? RX_NOTHING : RX_ATOM;
	if (c == '.') /* Python's . stops at a newline, ERE's does not */
		return qv_buf_adds(&x->b, "[^\n]");
	if (strchr("()|^$", c))
		return qv_buf_add(&x->b, &c, 1);
	return add_lit(x, (unsigned char)c);
}

/* pat as an ERE in x->b, wrapped as ^(...): re.match anchors at the start only. */
static int rx_translate(struct rx *x)
{
	int rc = qv_buf_adds(&x->b, "^(");

	for (const char *s = x->pat; *s && !rc;)
		rc = rx_piece(x, &s);
	if (!rc && x->depth)
		rc = rx_refuse(x, "a ( without its )");
	return rc ? rc : qv_buf_adds(&x->b, ")");
}

static int compile_exclude(struct qv_plan *p, const char *pat, char *err, size_t errlen)
{
	struct rx x = { .pat = pat, .err = err, .errlen = errlen };
	int rc = rx_translate(&x);

	if (!rc)
		rc = regcomp(&p->exclude, x.b.p, REG_EXTENDED | REG_NOSUB);
	qv_buf_free(&x.b);
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
