"""The safetensors format as st_agree.py models it, shared by the seeds, the mutations and the
allow-list (st_agree_seeds, st_agree_mutate, st_agree_rules).

A header is held as JSON that Python's dict cannot say: duplicate keys and key order (Obj,
pairs in a list) and verbatim number spellings and broken tokens (Raw), written out again in
one of many whitespace and escape styles (Style, dump). Around it: the official parser's dtypes
and limits, and the file framing (8-byte length prefix, header, data). Both the generator and
the predicates of the deliberate rules read headers through this one model, so what an input
was built as and what a rule sees in it cannot drift apart.
"""
import json
import struct
import sys

MAX_HEADER = 100_000_000
sys.setrecursionlimit(20000)  # st_agree_mutate's nested() builds up to 1100 levels
P53 = 1 << 53
# dtypes of the official parser (0.8.0) and their bits per element; the project knows all but
# the sub-byte ones
OFFICIAL_BITS = {"BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8,
                 "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8,
                 "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32,
                 "C64": 64, "F64": 64, "I64": 64, "U64": 64}
SUB_BYTE = ("F4", "F6_E2M3", "F6_E3M2")
BYTE_DTYPES = [d for d in OFFICIAL_BITS if d not in SUB_BYTE]
ODD_DTYPES = ["F8_E4M3FN", "C128", "C32", "U4", "I4", "F128", "f32", "bf16", "F32 ", " F32",
              "", "float32", "BF16\u0000", "Bool", "F8_e4m3", "U128", "F8_E5M2FNUZ ", "F64\n"]


# ---------------------------------------------------------------------------------------------
# A JSON model that can say what Python's dict cannot: duplicate keys, key order, and number
# spellings (Raw), serialized in one of many styles.

class Obj(list):
    """A JSON object as a list of [key, value] pairs: order kept, duplicates possible."""

    def get(self, key, default=None):
        for k, v in self:
            if k == key:
                return v
        return default

    def keys(self):
        return [k for k, _ in self]

    def set(self, key, value):
        for p in self:
            if p[0] == key:
                p[1] = value
                return
        self.append([key, value])

    def remove(self, key):
        self[:] = [p for p in self if p[0] != key]


class Raw:
    """JSON text written verbatim (odd number spellings, broken tokens)."""

    def __init__(self, text):
        self.text = text

    def __repr__(self):
        return f"Raw({self.text!r})"


def load_pairs(text):
    """Python's reading of a header, duplicate keys and order kept (Obj for every object)."""
    return json.loads(text, object_pairs_hook=lambda kv: Obj([list(p) for p in kv]))


def is_array(v):
    """A JSON array (an Obj is a list too, of pairs)."""
    return isinstance(v, list) and not isinstance(v, Obj)


def tensors(doc):
    """The [key, value] pairs of doc that are tensor entries (not __metadata__)."""
    return [p for p in doc if p[0] != "__metadata__"] if isinstance(doc, Obj) else []


def clone(v):
    """A deep copy of a JSON value: new Obj and lists, the same leaves."""
    if isinstance(v, Obj):
        return Obj([[k, clone(x)] for k, x in v])
    if isinstance(v, list):
        return [clone(x) for x in v]
    return v


class Style:
    """How one input is written out: whitespace between tokens, string escapes."""

    def __init__(self, rng):
        self.mode = rng.choices(["compact", "spaced", "pretty", "random"], [50, 20, 15, 15])[0]
        self.ascii = rng.random() < 0.15
        self.escape_p = 0.0 if rng.random() < 0.85 else rng.choice([0.05, 0.3, 1.0])
        self.slash = rng.random() < 0.1
        self.rng = rng
        self.sep, self.colon = (", ", ": ") if self.mode == "spaced" else \
            (",", ": " if self.mode == "pretty" else ":")
        if not self.escape_p and not self.slash:  # plain escapes: the json module's
            self.str = json.encoder.encode_basestring_ascii if self.ascii else \
                json.encoder.encode_basestring
        else:
            self.str = lambda x: dump_str(x, self)

    GAPS = ["", "", "", "", "", "", " ", " ", "\t", "\n", "\r", "  ", " \n", "\r\n", "\t\t", "\n "]

    def gap(self):
        """Whitespace around a token ("random" mode)."""
        return self.GAPS[self.rng.getrandbits(4)]


_ESC = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def dump_str(s, st):
    """A JSON string in style st: some characters escaped as \\uXXXX, '/' as '\\/'."""
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch in _ESC:
            out.append(_ESC[ch])
        elif o < 0x20:
            out.append(f"\\u{o:04x}")
        elif ch == "/" and st.slash:
            out.append("\\/")
        elif o > 0x7f and st.ascii:
            if o > 0xffff:
                o -= 0x10000
                out.append(f"\\u{0xd800 + (o >> 10):04x}\\u{0xdc00 + (o & 0x3ff):04x}")
            else:
                out.append(f"\\u{o:04x}" if st.rng.random() < 0.5 else f"\\u{o:04X}")
        elif st.escape_p and o < 0x80 and st.rng.random() < st.escape_p:
            out.append(f"\\u{o:04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def dump(v, st, depth=0):
    """JSON text of v in style st."""
    t = type(v)
    if t is str:
        return st.str(v)
    if t is int:
        return str(v)
    if t is Raw:
        return v.text
    if v is None:
        return "null"
    if t is bool:
        return "true" if v else "false"
    if t is float:
        return repr(v)
    if st.mode == "random":
        g = st.gap
        if t is Obj:
            return "{" + g() + ",".join(
                g() + (k.text if type(k) is Raw else st.str(k)) + g() + ":" + g() +
                dump(x, st, depth + 1) + g() for k, x in v) + g() + "}"
        return "[" + g() + ",".join(g() + dump(x, st, depth + 1) + g() for x in v) + g() + "]"
    if t is Obj:
        items = [(k.text if type(k) is Raw else st.str(k)) + st.colon + dump(x, st, depth + 1)
                 for k, x in v]
        if st.mode == "pretty" and items:
            ind = "\n" + "  " * (depth + 1)
            return "{" + ind + ("," + ind).join(items) + "\n" + "  " * depth + "}"
        return "{" + st.sep.join(items) + "}"
    if t is list or t is tuple:
        if all(type(x) is int for x in v):  # shapes and offsets
            return "[" + st.sep.join(map(str, v)) + "]"
        return "[" + st.sep.join([dump(x, st, depth + 1) for x in v]) + "]"
    raise TypeError(t)

# ---------------------------------------------------------------------------------------------
# The file around the header: 8-byte little-endian length prefix, header, data.

def prefix(n):
    return struct.pack("<Q", n)


def assemble(hdr, data, pad=None):
    """A file: the length prefix, the header (padded with pad up to a multiple of 8), data."""
    if pad is not None:
        hdr = hdr + pad * ((-(8 + len(hdr))) % 8)
    return prefix(len(hdr)) + hdr + data


def split(b):
    """(header bytes, data bytes) of a well-formed file."""
    n = struct.unpack("<Q", b[:8])[0]
    return b[8:8 + n], b[8 + n:]
