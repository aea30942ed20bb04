"""The inputs of st_agree.py: seeded mutations of the seed files, and the directed inputs.

generate(seed, i, seeds) builds input number i from random.Random(f"{seed}:{i}") alone, in
one of five families: structural edits of the seed's header (the mutations m_*, in two phases
around retiling the data), fresh valid files, byte-level edits of the header text or of the
whole file, and edge cases of the length prefix, padding and file size. DIRECTED is a fixed
list with one input per deliberate rule (st_agree_rules.ALLOW) and one per disagreement found
and fixed, so that even the shortest run covers each class; big_inputs() are the two headers
at the 100 MB limit. Nothing here knows what either parser answers: the inputs only aim at the
places where the two may differ.
"""
import random
import re

from st_agree_format import (BYTE_DTYPES, MAX_HEADER, ODD_DTYPES, OFFICIAL_BITS, P53, SUB_BYTE,
                             Obj, Raw, Style, assemble, clone, dump, is_array, prefix, split,
                             tensors)


# ---------------------------------------------------------------------------------------------
# Mutations. Each takes (rng, doc, ctx) and edits doc in place; ctx carries what the file
# around the header should become.

def pick_tensor(rng, doc):
    ts = [p for p in tensors(doc) if isinstance(p[1], Obj)]
    return rng.choice(ts) if ts else None


HUGE = [P53 - 1, P53, P53 + 1, P53 + 2, 1 << 60, (1 << 63) - 1, 1 << 63, (1 << 64) - 1, 1 << 64,
        10 ** 30, 1 << 32, (1 << 32) - 1, 1 << 31]
ODD_NUMBERS = ["-1", "-0", "0.0", "1.0", "1e0", "1E2", "0e0", "1.5", "-1.5", "+1", "01", "00",
               "007", "1e400", "-1e400", "NaN", "Infinity", "-Infinity", "0x10", ".5", "5.",
               "1_0", "١", "true", "null", '"1"', "[]", "{}", "9007199254740993.0", "1e-1",
               "18446744073709551615", "18446744073709551616", "-9223372036854775808",
               "123456789012345678901234567890"]


def odd_number(rng, v):
    """A spelling of v (or of something near it) that JSON or a strict reader may refuse."""
    r = rng.random()
    if r < 0.2:
        return Raw("0" + str(v))
    if r < 0.3:
        return Raw(f"{v}.0")
    if r < 0.4:
        return Raw(f"{v}e0" if rng.random() < 0.5 else f"{v}E+0")
    if r < 0.45:
        return Raw(f"-{v}")
    if r < 0.5:
        return Raw(f"{v * 10}e-1")
    return Raw(rng.choice(ODD_NUMBERS))


def num_near(rng, v, data_len):
    r = rng.random()
    if r < 0.3:
        return max(0, v + rng.choice([-1, 1, -2, 2, 4, -4, 8, -8]))
    if r < 0.45:
        return rng.choice([0, 1, data_len, data_len + 1, max(0, data_len - 1)])
    if r < 0.65:
        return rng.choice(HUGE)
    if r < 0.8:
        return odd_number(rng, v)
    return rng.randrange(0, max(2, 2 * data_len + 2))


def m_offset(rng, doc, ctx):
    p = pick_tensor(rng, doc)
    if not p:
        return
    t = p[1]
    off = t.get("data_offsets")
    r = rng.random()
    if is_array(off) and len(off) == 2 and r < 0.6:
        i = rng.randrange(2)
        off[i] = num_near(rng, off[i] if isinstance(off[i], int) else 0, ctx.data_len)
    elif is_array(off) and len(off) == 2 and r < 0.7:
        off.reverse()
    elif r < 0.8:
        t.set("data_offsets", rng.choice([[], [0], [0, 0, 0], None, "0,4", Obj([["0", 0], ["1", 4]]),
                                          [[0], [4]], [0, None], [True, 4], [0.0, 4.0]]))
    elif is_array(off) and len(off) == 2 and all(isinstance(x, int) for x in off):
        d = rng.choice([-1, 1, 2, 8, -8]) if rng.random() < 0.7 else rng.randrange(1, 64)
        t.set("data_offsets", [max(0, off[0] + d), max(0, off[1] + d)])


def m_shape(rng, doc, ctx):
    p = pick_tensor(rng, doc)
    if not p:
        return
    t = p[1]
    shape = t.get("shape")
    if not is_array(shape):
        shape = []
        t.set("shape", shape)
    r = rng.random()
    if r < 0.25 and shape:
        i = rng.randrange(len(shape))
        v = shape[i] if isinstance(shape[i], int) else 1
        shape[i] = num_near(rng, v, ctx.data_len) if rng.random() < 0.7 else rng.choice([0, 1, 2, 3])
    elif r < 0.35:
        shape.insert(rng.randrange(len(shape) + 1), rng.choice([0, 1, 1, 2, 3]))
    elif r < 0.45 and shape:
        shape.pop(rng.randrange(len(shape)))
    elif r < 0.55:
        n = rng.choice([15, 16, 16, 17, 18, 32, 65])
        t.set("shape", [1] * n)
    elif r < 0.75:
        # zero-element tensors with huge other dimensions: the official reader multiplies the
        # element count first (checked), then the bits per element
        t.set("shape", rng.choice([[0, 1 << 60], [1 << 60, 0], [0, (1 << 64) - 1], [0, 1 << 64],
                                   [0, P53 + 1], [0, P53], [1 << 32, 1 << 31, 0],
                                   [1 << 32, 1 << 32, 0], [1 << 40, 1 << 40, 0], [1 << 40, 0, 1 << 40],
                                   [1 << 31, 1 << 31, 4, 0], [1 << 62, 2, 0], [1 << 61, 0],
                                   [P53, 1 << 11, 0], [P53, 0], [1 << 52, 1 << 11, 0],
                                   [3, 1 << 21, 1 << 21, 1 << 20, 0]]))
        t.set("data_offsets", [0, 0])
        ctx.zero_tensor = True
    elif r < 0.85:
        t.set("shape", rng.choice([Obj(), "2", 2, None, [[1]], [True], ["1"], [1.5], [None], Obj()]))
    else:
        reshape(rng, t)


def nbytes(dtype, shape):
    """The official reader's byte count of a tensor, or None when it would refuse it."""
    if not isinstance(dtype, str) or dtype not in OFFICIAL_BITS or not is_array(shape):
        return None
    n = 1
    for d in shape:
        if not isinstance(d, int) or isinstance(d, bool) or d < 0 or d >= 1 << 64:
            return None
        n *= d
        if n >= 1 << 64:
            return None
    bits = n * OFFICIAL_BITS[dtype]
    if bits >= 1 << 64 or bits % 8:
        return None
    return bits // 8


def reshape(rng, t):
    """Another shape of the same element count."""
    shape = t.get("shape")
    if not is_array(shape) or not all(isinstance(d, int) for d in shape):
        return
    n = 1
    for d in shape:
        n *= d
    if n == 0 or n > 1 << 20:
        t.set("shape", [0] + [rng.randrange(4) for _ in range(rng.randrange(3))])
        return
    dims = []
    while n > 1 and len(dims) < 6:
        f = next((k for k in (2, 3, 5, 7) if n % k == 0), n)
        k = f
        while n % (k * f) == 0 and rng.random() < 0.5:
            k *= f
        dims.append(k)
        n //= k
    if n > 1:
        dims.append(n)
    while rng.random() < 0.2:
        dims.insert(rng.randrange(len(dims) + 1), 1)
    rng.shuffle(dims)
    t.set("shape", dims)


def m_dtype(rng, doc, ctx):
    p = pick_tensor(rng, doc)
    if not p:
        return
    r = rng.random()
    if r < 0.55:
        p[1].set("dtype", rng.choice(BYTE_DTYPES))
    elif r < 0.7:
        p[1].set("dtype", rng.choice(SUB_BYTE))
    elif r < 0.9:
        p[1].set("dtype", rng.choice(ODD_DTYPES))
    else:
        p[1].set("dtype", rng.choice([4, None, ["F32"], Obj([["F32", None]]), Obj([["BF16", None]]),
                                      Obj([["F32", []]]), Obj(), Obj([["F32", None], ["U8", None]]),
                                      Obj([["XX", None]])]))


NAME_PARTS = ["model", "layers", "0", "17", "mlp", "experts", "gate_up_proj", "weight", "bias",
              "lm_head", "visual", "blocks", "attn", "qkv", "_extra_state", "weight_scale_inv"]
ODD_NAMES = ["", " ", "__metadata__", "__METADATA__", "__metadata_", "_metadata__", "a\u0000b",
             "\u0000", "caf\u00e9", "\u4e2d\u6587", "\U0001f600", "\u2028", "\ufeff", "x\ny",
             "tab\there", "quote\"d", "back\\slash", "/", "../x", "a/b", "\u007f", "\u0001",
             "a" * 300, "\u00e9" * 100, "\\u0000", ".", "weight", "dtype", "shape", "data_offsets"]


def new_name(rng):
    if rng.random() < 0.3:
        return rng.choice(ODD_NAMES)
    return ".".join(rng.choice(NAME_PARTS) for _ in range(rng.randrange(1, 6)))


def new_tensor(rng):
    dt = rng.choice(BYTE_DTYPES) if rng.random() < 0.9 else rng.choice(SUB_BYTE + ("F32",))
    shape = [rng.choice([0, 1, 2, 3, 4, 5]) if rng.random() < 0.9 else 0
             for _ in range(rng.choice([0, 1, 1, 2, 2, 3, 4]))]
    return Obj([["dtype", dt], ["shape", shape], ["data_offsets", [0, 0]]])


def m_add(rng, doc, ctx):
    if not isinstance(doc, Obj):
        return
    doc.insert(rng.randrange(len(doc) + 1), [new_name(rng), new_tensor(rng)])


def m_remove(rng, doc, ctx):
    ts = tensors(doc)
    if ts:
        doc.remove(rng.choice(ts)[0])


def m_rename(rng, doc, ctx):
    ts = tensors(doc)
    if not ts:
        return
    p = rng.choice(ts)
    p[0] = rng.choice(ts)[0] if rng.random() < 0.15 else new_name(rng)


def m_order(rng, doc, ctx):
    if isinstance(doc, Obj):
        if rng.random() < 0.5:
            rng.shuffle(doc)
        else:
            doc.sort(key=lambda p: str(p[0]), reverse=rng.random() < 0.5)


def meta_value(rng, depth=0):
    r = rng.random()
    if r < 0.5 or depth > 3:
        return rng.choice(["pt", "", "\u00e9\u00e8", "\U0001f600", "a\u0000b", "x" * 1000,
                           "line\nbreak", "{\"json\": [1, 2]}", "\\", "\ud7ff", "0"])
    if r < 0.6:
        return rng.choice([1, 0, -1, 1.5, True, False, None, 1 << 64, Raw("1e5"), Raw("-0")])
    if r < 0.7:
        return [meta_value(rng, depth + 1) for _ in range(rng.randrange(3))]
    if r < 0.8:
        return Obj([["k", meta_value(rng, depth + 1)]])
    return nested(rng, rng.choice([1, 2, 127, 128, 129, 200, 1000, 1001, 1100]))


def nested(rng, depth):
    """depth levels of arrays or objects around a small value."""
    v = rng.choice([1, "s", None, [], Obj()])
    for _ in range(depth):
        v = [v] if rng.random() < 0.7 else Obj([["n", v]])
    return v


def m_metadata(rng, doc, ctx):
    if not isinstance(doc, Obj):
        return
    m = doc.get("__metadata__")
    r = rng.random()
    if r < 0.15:
        doc.remove("__metadata__")
    elif r < 0.3:
        doc.set("__metadata__", rng.choice([None, Obj(), [], "format", 1, True, [["a", "b"]],
                                            Obj([["format", "pt"]])]))
    elif r < 0.45:
        doc.set("__metadata__", nested(rng, rng.choice([1, 2, 50, 128, 129, 1000, 1001])))
    elif r < 0.85:
        if not isinstance(m, Obj):
            m = Obj()
            doc.set("__metadata__", m)
        key = rng.choice(["format", "", "k\u0000", "caf\u00e9", "__metadata__", "total_size",
                          "x" * 200, "format"]) if rng.random() < 0.5 else new_name(rng)
        m.insert(rng.randrange(len(m) + 1), [key, meta_value(rng)])
    else:
        # move it: first, last or in the middle
        if m is not None:
            doc.remove("__metadata__")
            doc.insert(rng.randrange(len(doc) + 1), ["__metadata__", m])


def m_dup(rng, doc, ctx):
    """Duplicate keys at each level: tensor, field, __metadata__, metadata key."""
    if not isinstance(doc, Obj) or not doc:
        return
    r = rng.random()
    if r < 0.4:
        p = rng.choice(doc)
        q = [p[0], clone(p[1]) if rng.random() < 0.5 else new_tensor(rng)]
        doc.insert(rng.randrange(len(doc) + 1), q)
    elif r < 0.7:
        p = pick_tensor(rng, doc)
        if p and p[1]:
            f = rng.choice(p[1])
            p[1].insert(rng.randrange(len(p[1]) + 1), [f[0], clone(f[1])])
    elif r < 0.85:
        doc.insert(rng.randrange(len(doc) + 1), ["__metadata__", Obj([["format", "pt"]])])
    else:
        m = doc.get("__metadata__")
        if isinstance(m, Obj) and m:
            k = rng.choice(m)
            m.insert(rng.randrange(len(m) + 1), [k[0], rng.choice(["pt", "other", ""])])


def m_field(rng, doc, ctx):
    """Extra, missing and renamed fields of a tensor entry."""
    p = pick_tensor(rng, doc)
    if not p:
        return
    t = p[1]
    r = rng.random()
    if r < 0.45:
        key = rng.choice(["extra", "offsets", "strides", "Dtype", "DTYPE", "dtype ", "shape\u0000",
                          "", "__metadata__", "data_offset", "quant", "d\u0074ype"])
        val = rng.choice([1, 1.5, -1, "x", None, True, [], Obj(), [1, 2], Raw("1e400"),
                          Raw("01"), "\u0000"]) if rng.random() < 0.7 else \
            nested(rng, rng.choice([3, 127, 128, 129, 300, 1000, 1001]))
        t.insert(rng.randrange(len(t) + 1), [key, val])
    elif r < 0.75 and t:
        t.pop(rng.randrange(len(t)))
    elif t:
        i = rng.randrange(len(t))
        t[i][0] = rng.choice(["Dtype", "SHAPE", "data-offsets", "dataoffsets", "shape ", "dtypes"])


def m_form(rng, doc, ctx):
    """The tensor entry in other JSON forms: serde also reads a struct from an array."""
    ts = tensors(doc)
    if not ts:
        return
    p = rng.choice(ts)
    t = p[1]
    r = rng.random()
    if isinstance(t, Obj) and r < 0.5:
        arr = [t.get("dtype"), t.get("shape"), t.get("data_offsets")]
        if rng.random() < 0.2:
            arr = arr[:rng.randrange(3)] if rng.random() < 0.5 else arr + [1]
        p[1] = arr
    elif isinstance(t, Obj) and r < 0.6:
        d = t.get("dtype")
        t.set("dtype", Obj([[d if isinstance(d, str) else "F32", None]]))
    else:
        p[1] = rng.choice([None, "F32", 1, [], Obj(), True, [[]], nested(rng, 5)])


def m_top(rng, doc, ctx):
    """Something other than one object at the top."""
    ctx.top = rng.choice([[doc], None, "header", 1, [], Obj(), True, Raw(""), Raw("{}{}"),
                          Raw("{} {}"), Raw('{"a":1'), Raw("[{}]")])


def m_numbers(rng, doc, ctx):
    """Respell one integer of a shape or data_offsets (same value, or a nearby one)."""
    p = pick_tensor(rng, doc)
    if not p:
        return
    arrs = [a for a in (p[1].get("shape"), p[1].get("data_offsets")) if is_array(a) and a]
    if arrs:
        a = rng.choice(arrs)
        i = rng.randrange(len(a))
        a[i] = odd_number(rng, a[i] if isinstance(a[i], int) else 0)


PHASE_A = [(m_shape, 3), (m_dtype, 3), (m_add, 2), (m_remove, 1), (m_rename, 2), (m_order, 1),
           (m_metadata, 3)]
PHASE_B = [(m_offset, 3), (m_dup, 3), (m_field, 3), (m_form, 2), (m_numbers, 2), (m_top, 1),
           (m_metadata, 1)]


def weighted(rng, table):
    total = sum(w for _, w in table)
    r = rng.random() * total
    for f, w in table:
        r -= w
        if r < 0:
            return f
    return table[-1][0]


class Ctx:
    def __init__(self, data_len):
        self.data_len = data_len
        self.top = None
        self.zero_tensor = False


def retile(rng, doc, data):
    """Offsets that tile the data exactly (in a random order), and data of that length."""
    ts = [p for p in tensors(doc) if isinstance(p[1], Obj)]
    r = rng.random()
    if r < 0.4:
        rng.shuffle(ts)
    elif r < 0.6:
        ts.sort(key=lambda p: str(p[0]))
    pos = 0
    for p in ts:
        n = nbytes(p[1].get("dtype"), p[1].get("shape"))
        if n is None:
            n = rng.randrange(4)
        if pos + n > 1 << 20:
            continue
        p[1].set("data_offsets", [pos, pos + n])
        pos += n
    if len(data) < pos:
        data = (data or b"\x5a") * (pos // max(1, len(data)) + 1)
    return data[:pos]


# ---------------------------------------------------------------------------------------------
# Families of inputs.

def pad_choice(rng):
    r = rng.random()
    if r < 0.55:
        return b" "  # what the official writer does
    if r < 0.75:
        return None
    return rng.choice([b"\t", b"\n", b"\r", b"\r\n", b"\x00", b"\x0c", b"\x0b", b"\xa0",
                       b"\xc2\xa0", b" \x00"])


def finish(rng, doc, data, ctx, st=None):
    st = st or Style(rng)
    top = ctx.top if ctx.top is not None else doc
    text = dump(top, st)
    if rng.random() < 0.03:
        text = rng.choice([" ", "\n", "\t", "\r", "\ufeff", "\u00a0", "\x0c"]) + text
    try:
        hdr = text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate in a generated string
        hdr = text.encode("utf-8", "surrogatepass")
    pad = pad_choice(rng)
    return assemble(hdr, data, pad)


def fam_struct(rng, seed):
    doc, data = clone(seed.doc), seed.data
    ctx = Ctx(len(data))
    edits = []
    for _ in range(rng.choice([0, 1, 1, 1, 2, 2, 3])):
        f = weighted(rng, PHASE_A)
        f(rng, doc, ctx)
        edits.append(f.__name__)
    if rng.random() < 0.7:
        data = retile(rng, doc, data)
        edits.append("retile")
    for _ in range(rng.choice([0, 0, 1, 1, 2])):
        f = weighted(rng, PHASE_B)
        f(rng, doc, ctx)
        edits.append(f.__name__)
    if rng.random() < 0.08:
        data = data + bytes(rng.choice([1, 2, 7, 8, 64])) if rng.random() < 0.5 \
            else data[:max(0, len(data) - rng.choice([1, 2, 8, 64]))]
        edits.append("data-size")
    return finish(rng, doc, data, ctx), edits


def fam_fresh(rng, seeds):
    """A new valid file (random tensors, names, metadata, order), maybe with one flaw."""
    doc = Obj()
    for _ in range(rng.choice([0, 1, 2, 3, 4, 6, 10])):
        name = new_name(rng)
        if name in doc.keys() or name == "__metadata__":
            continue
        doc.append([name, new_tensor(rng)])
    if rng.random() < 0.5:
        m = Obj()
        for _ in range(rng.randrange(4)):
            k = new_name(rng) if rng.random() < 0.5 else rng.choice(["format", "", "\u00e9"])
            if k not in m.keys():
                m.append([k, rng.choice(["pt", "", "caf\u00e9", "\U0001f600", "v" * 50])])
        doc.insert(rng.randrange(len(doc) + 1), ["__metadata__", m])
    data = retile(rng, doc, rng.randbytes(64))
    ctx = Ctx(len(data))
    edits = ["fresh"]
    if rng.random() < 0.3:
        f = weighted(rng, PHASE_B + PHASE_A)
        f(rng, doc, ctx)
        edits.append(f.__name__)
    return finish(rng, doc, data, ctx), edits


TOKENS = [b"\\u0000", b"\\ud800", b"\\udc00", b"\\ud83d\\ude00", b"\\ud83d", b"\\u00e9", b"\\u00E9",
          b"\\x41", b"\\U0041", b"\\", b"\\/", b"\\'", b"\\u", b"\\u00", b"\\u00zz",
          b"\\uD800\\u0041", b"\\uDBFF\\uDFFF", b"\xed\xa0\x80", b"\xc0\xaf", b"\xc0\x80",
          b"\xf4\x90\x80\x80", b"\xf0\x9f\x98\x80", b"\xef\xbb\xbf", b"\xe2\x80\xa8", b"\xc3",
          b"\xff", b"\x80", b"\"", b",", b":", b"{", b"}", b"[", b"]", b"00", b"-0", b".0", b"e1",
          b"-", b"+", b"0", b"9", b"1e400", b",{}", b',"x":{}', b',"__metadata__":{}',
          b',"__metadata__":null', b"\x00", b"\x01", b"\x7f", b"\t", b"\n", b"\r", b"\x0c", b" ",
          b"NaN", b"Infinity", b"true", b"null", b"//c", b"/*c*/", b"'", b"\xc2\xa0"]
INTERESTING = [0x00, 0x01, 0x1f, 0x20, 0x22, 0x2c, 0x2d, 0x2e, 0x30, 0x31, 0x39, 0x3a, 0x45, 0x5b,
               0x5c, 0x5d, 0x65, 0x7b, 0x7d, 0x7f, 0x80, 0xbf, 0xc0, 0xc3, 0xed, 0xef, 0xf4, 0xf5,
               0xff]


def mutate_bytes(rng, b, lo=0, rounds=None):
    """Byte-level edits of b[lo:]: flips, interesting bytes, tokens, deletions, copies."""
    b = bytearray(b)
    for _ in range(rounds or rng.choice([1, 1, 1, 2, 3, 5])):
        if len(b) <= lo:
            b.extend(rng.choice(TOKENS))
            continue
        i = rng.randrange(lo, len(b))
        r = rng.random()
        if r < 0.25:
            b[i] ^= 1 << rng.randrange(8)
        elif r < 0.4:
            b[i] = rng.choice(INTERESTING)
        elif r < 0.65:
            b[i:i] = rng.choice(TOKENS)
        elif r < 0.75:
            del b[i:i + rng.choice([1, 1, 2, 4, 16, 100])]
        elif r < 0.85:
            j = rng.randrange(lo, len(b))
            b[i:i] = b[j:j + rng.choice([1, 4, 16, 64])]
        else:
            m = re.search(rb"\d+", bytes(b[i:]))
            if m:
                s, e = i + m.start(), i + m.end()
                b[s:e] = rng.choice([b"0", b"01", b"-1", b"1.0", b"9007199254740993",
                                     b"18446744073709551615", b"18446744073709551616",
                                     str(int(b[s:e]) + rng.choice([-1, 1])).encode()])
    return bytes(b)


def fam_text(rng, seed):
    """Byte-level edits inside the header, the length prefix then (usually) fixed up."""
    hdr, data = seed.hdr, seed.data
    if rng.random() < 0.3:
        b, _ = fam_struct(rng, seed)
        hdr, data = split(b)
    new = mutate_bytes(rng, hdr)
    if rng.random() < 0.1:
        new = new[:rng.randrange(len(new) + 1)]
    n = len(new) if rng.random() < 0.85 else len(hdr)
    return prefix(n) + new + data, ["text"]


def fam_bytes(rng, seed):
    """Byte-level edits anywhere in the file, the prefix included; truncations."""
    b = seed.bytes
    r = rng.random()
    if r < 0.3:
        return b[:rng.randrange(len(b))], ["truncate"]
    if r < 0.4:
        return b + rng.randbytes(rng.choice([1, 3, 8, 100])), ["append"]
    if r < 0.55:
        b = bytearray(b)
        i = rng.randrange(8)
        b[i] ^= 1 << rng.randrange(8)
        return bytes(b), ["prefix-flip"]
    return mutate_bytes(rng, b), ["bytes"]


def fam_special(rng, seed):
    """Length prefix and file size edge cases, padding, leading and trailing bytes."""
    hdr, data = seed.hdr, seed.data
    r = rng.randrange(12)
    if r == 0:
        return rng.randbytes(rng.randrange(9)), ["tiny-file"]
    if r == 1:
        n = rng.choice([(1 << 64) - 1, 1 << 63, MAX_HEADER + 1, MAX_HEADER, 1 << 32,
                        len(hdr) + len(data) + 1, len(hdr) + len(data), 0])
        return prefix(n) + hdr + data, ["prefix-huge"]
    if r == 2:
        return prefix(max(0, len(hdr) + rng.choice([-9, -8, -2, -1, 1, 2, 7, 8, 9]))) + hdr + data, \
            ["prefix-near"]
    if r == 3:
        pad = rng.choice([b" ", b"\t", b"\n", b"\r", b"\x00", b"\x0c", b" \n\t\r"])
        return assemble(hdr.rstrip(b" ") + pad * rng.choice([1, 7, 8, 100, 4096, 70000]), data), \
            ["padding"]
    if r == 4:
        lead = rng.choice([b" ", b"\n", b"\t", b"\r", b"\xef\xbb\xbf", b"\x00", b"  \n"])
        return assemble(lead + hdr, data), ["leading"]
    if r == 5:
        return assemble(hdr, data + rng.randbytes(rng.choice([1, 7, 8, 4096]))), ["trailing-data"]
    if r == 6:
        return assemble(hdr, data[:max(0, len(data) - rng.choice([1, 7, 8, 4096]))]), \
            ["short-data"]
    if r == 7:
        return assemble(hdr + rng.choice([b"x", b"\x00", b"}", b",", b"{}", b"\xff", b"]"]), data), \
            ["garbage-after-json"]
    if r == 8:
        return assemble(rng.choice([b"{}", b"{ }", b"{\n}", b"{}" + b" " * 6, b"[]", b"null",
                                    b'""', b"0", b"{", b"}", b"{\"\":{}}", b"{\"__metadata__\":{}}",
                                    b"{\"__metadata__\":null}"]), b""), ["tiny-header"]
    if r == 9:
        return b"", ["empty-file"]
    if r == 10:
        return prefix(0) + hdr + data, ["prefix-zero"]
    return assemble(hdr, b""), ["no-data"]


FAMILIES = [("struct", 45), ("fresh", 15), ("text", 20), ("bytes", 8), ("special", 12)]


def generate(seed, i, seeds):
    """Input number i of the run with this seed: (bytes, description)."""
    rng = random.Random(f"{seed}:{i}")
    total = sum(w for _, w in FAMILIES)
    r = rng.random() * total
    for fam, w in FAMILIES:
        r -= w
        if r < 0:
            break
    s = rng.choice(seeds)
    if fam == "struct":
        b, e = fam_struct(rng, s)
    elif fam == "fresh":
        b, e = fam_fresh(rng, seeds)
    elif fam == "text":
        b, e = fam_text(rng, s)
    elif fam == "bytes":
        b, e = fam_bytes(rng, s)
    else:
        b, e = fam_special(rng, s)
    return b, f"{fam}:{s.name}:{'+'.join(e)}"


def big_inputs():
    """Headers at the size limit: 100,000,000 bytes is allowed, one more is not."""
    h = b"{}" + b" " * (MAX_HEADER - 2)
    yield "big:limit", prefix(MAX_HEADER) + h
    yield "big:limit+1", prefix(MAX_HEADER + 1) + h + b" "


def T(dtype="F32", shape="[1]", off="[0,4]", extra=""):
    return '{"dtype":%s,"shape":%s,"data_offsets":%s%s}' % (
        dtype if dtype.startswith(("{", "[", "n")) else '"%s"' % dtype, shape, off, extra)


def _h(text, data=b""):
    return assemble(text.encode() if isinstance(text, str) else text, data)


# One input per deliberate rule and per disagreement this harness found and the parser fixed
# (src/st.c, tests/unit/test_st.c), so even the shortest run covers each class.
DIRECTED = [
    ("leading-whitespace", _h(' {"a":%s}' % T(), b"1234")),
    ("duplicate-tensor-name", _h('{"a":%s,"a":%s}' % (T(), T(off="[0,4]")), b"1234")),
    ("duplicate-metadata-key", _h('{"__metadata__":{"k":"1","k":"2"}}')),
    ("tensor-entry-array", _h('{"a":["F32",[1],[0,4]]}', b"1234")),
    ("dtype-map", _h('{"a":%s}' % T(dtype='{"F32":null}'), b"1234")),
    ("unknown-field", _h('{"a":%s}' % T(extra=',"extra":[1.5]'), b"1234")),
    ("sub-byte-dtype", _h('{"a":%s}' % T(dtype="F4", shape="[2]", off="[0,1]"), b"1")),
    ("empty-name", _h('{"":%s}' % T(), b"1234")),
    ("nul-in-name", _h('{"a\\u0000":%s}' % T(), b"1234")),
    ("nul-in-metadata", _h('{"__metadata__":{"k":"\\u0000"}}')),
    ("17-dims", _h('{"a":%s}' % T(shape="[" + ",".join(["1"] * 17) + "]"), b"1234")),
    ("dim-above-2^53", _h('{"a":%s}' % T(shape="[0,9007199254740993]", off="[0,0]"))),
    ("dim-2^64-1", _h('{"a":%s}' % T(shape="[18446744073709551615,0]", off="[0,0]"))),
    # fixed: the element count is multiplied first, as the official reader does
    ("zero-size-huge-dims", _h('{"a":%s}' % T(shape="[4294967296,2147483648,0]", off="[0,0]"))),
    ("zero-size-huge-dims-2", _h('{"a":%s}' % T(shape="[4503599627370496,2048,0]", off="[0,0]"))),
    # fixed: "__metadata__": null is no metadata
    ("metadata-null", _h('{"__metadata__":null,"a":%s}' % T(), b"1234")),
    # fixed: the two FNUZ float8 dtypes
    ("dtype-F8_E4M3FNUZ", _h('{"a":%s}' % T(dtype="F8_E4M3FNUZ"), b"1234")),
    ("dtype-F8_E5M2FNUZ", _h('{"a":%s}' % T(dtype="F8_E5M2FNUZ", shape="[2,2]"), b"1234")),
    # fixed: a leading zero is not JSON
    ("leading-zero-shape", _h('{"a":%s}' % T(shape="[01]"), b"1234")),
    ("leading-zero-offset", _h('{"a":%s}' % T(shape="[1]", off="[00,4]"), b"1234")),
]
