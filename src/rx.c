/* rx.c - a Python regular expression (re.match) as a POSIX ERE for regcomp, or a refusal:
 * the exclude= option's patterns. */
#include "qv_rx.h"

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

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

int qv_rx_ere(const char *pat, struct qv_buf *ere, char *err, size_t errlen)
{
	struct rx x = { .pat = pat, .err = err, .errlen = errlen };
	int rc = rx_translate(&x);

	if (rc)
		qv_buf_free(&x.b);
	else
		*ere = x.b;
	return rc;
}
