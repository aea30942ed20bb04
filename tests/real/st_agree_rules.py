"""The allow-list of st_agree.py: the project's deliberate stricter rules (README, Limits).

Where the project rejects an input that the official parser accepts, the disagreement is
excused only by a Rule of ALLOW: a property of the input (a predicate over its header as Python
reads it, never a list of inputs), the project's reason for refusing it, and a pattern its
rejection message must match, so that an input is excused only for the rule it breaks. Nothing
the project accepts and the official parser rejects is ever excused. Kept apart from the
generator so the list reads as the record of those decisions; tests/real/test_parser_agreement.py
checks that each rule is still needed.
"""
import re

from st_agree_format import P53, SUB_BYTE, Obj, is_array, load_pairs, split, tensors


# ---------------------------------------------------------------------------------------------
# The deliberate stricter rules: the project rejects, the official parser accepts. Each is a
# property of the input (its header as Python reads it), never a list of inputs.

class Info:
    """What the predicates look at: the header bytes and Python's reading of them."""

    def __init__(self, b):
        self.doc = None
        self.hdr = b""
        if len(b) >= 8:
            self.hdr = split(b)[0]
            try:
                self.doc = load_pairs(self.hdr.decode("utf-8"))
            except (ValueError, RecursionError):
                pass

    def tensors(self):
        """[name, entry] of every tensor entry."""
        return tensors(self.doc)

    def fields(self):
        """(dtype, shape, data_offsets) of every tensor, from either entry form."""
        out = []
        for _, v in self.tensors():
            if isinstance(v, Obj):
                out.append((v.get("dtype"), v.get("shape"), v.get("data_offsets")))
            elif is_array(v) and len(v) == 3:
                out.append(tuple(v))
        return out


def _strings(v):
    if isinstance(v, str):
        yield v
    elif isinstance(v, Obj):
        for k, x in v:
            yield k
            yield from _strings(x)
    elif isinstance(v, list):
        for x in v:
            yield from _strings(x)


def _ints(info):
    for _, shape, off in info.fields():
        for a in (shape, off):
            if is_array(a):
                yield from (x for x in a if isinstance(x, int) and not isinstance(x, bool))


def _dtype(d):
    return d[0][0] if isinstance(d, Obj) and len(d) == 1 else d


def _dup(keys):
    return len(keys) != len(set(keys))


class Rule:
    """A deliberate stricter rule: an input property (pred, over Info) and the project's
    reasons for it (ours, a regex its rejection must match)."""

    def __init__(self, name, reason, ours, pred):
        self.name, self.reason, self.ours, self.pred = name, reason, re.compile(ours), pred


ALLOW = [
    Rule("leading_whitespace",
         "the format says the header begins with '{'; the official reader also skips JSON "
         "whitespace before it",
         r"does not start with '\{'", lambda i: i.hdr[:1] in (b" ", b"\t", b"\n", b"\r")),
    Rule("duplicate_tensor_name",
         "duplicate keys are ambiguous (the official reader silently keeps the last one)",
         r"duplicate header key", lambda i: _dup([k for k, _ in i.tensors()])),
    Rule("duplicate_metadata_key",
         "duplicate keys are ambiguous (the official reader silently keeps the last one)",
         r"duplicate __metadata__ key",
         lambda i: isinstance(i.doc.get("__metadata__"), Obj) and
         _dup(i.doc.get("__metadata__").keys())),
    Rule("tensor_entry_not_object",
         "a tensor entry is an object; the official reader's serde also takes the array "
         "[dtype, shape, data_offsets], which no writer produces",
         r"entry is not an object", lambda i: any(is_array(v) for _, v in i.tensors())),
    Rule("dtype_not_string",
         "a dtype is a string; the official reader's serde also takes the enum form "
         "{\"F32\": null}, which no writer produces",
         r"unknown dtype \(not a string\)", lambda i: any(isinstance(d, Obj) for d, _, _ in i.fields())),
    Rule("unknown_tensor_field",
         "a tensor entry has exactly dtype, shape and data_offsets; the official reader ignores "
         "any other field, which the view would drop when it rewrites the header",
         # a number the official reader skips (in such a field) is refused before that
         r"unknown field|not an integer from 0 to 2\^53",
         lambda i: any(isinstance(v, Obj) and any(k not in ("dtype", "shape", "data_offsets")
                                                  for k in v.keys()) for _, v in i.tensors())),
    Rule("sub_byte_dtype",
         "sub-byte dtypes (F4, F6_E2M3, F6_E3M2) are not supported (README, Limits)",
         r"unknown dtype F[46]", lambda i: any(_dtype(d) in SUB_BYTE for d, _, _ in i.fields())),
    Rule("empty_tensor_name",
         "a tensor name is a non-empty key: of the index, and of inspect's file names",
         r"empty tensor name", lambda i: any(k == "" for k, _ in i.tensors())),
    Rule("nul_in_string",
         "\\u0000 cannot be held in a C string: a name or metadata string would be cut short",
         r"\\u0000 escape", lambda i: any("\x00" in s for s in _strings(i.doc))),
    Rule("too_many_dims",
         "at most 16 dimensions per tensor (QV_ST_MAX_DIMS)",
         r"more than 16 dimensions",
         lambda i: any(is_array(s) and len(s) > 16 for _, s, _ in i.fields())),
    Rule("integer_above_2p53",
         "shapes and offsets above 2^53 are refused: the JSON reader holds numbers as doubles; "
         "such a dimension only occurs in a tensor without elements, such an offset only in a "
         "file of over 8 PiB",
         r"2\^53", lambda i: any(x > P53 for x in _ints(i))),
]


def explain(b, ours, allow=ALLOW):
    """The deliberate rule that explains why the project rejects b (reason ours), or None."""
    info = Info(b)
    if not isinstance(info.doc, Obj):
        return None
    for rule in allow:
        try:
            if rule.ours.search(ours) and rule.pred(info):
                return rule
        except (TypeError, AttributeError, IndexError):
            continue
    return None
