"""Strict reading of the source side: safetensors headers, JSON, the source tree, read streams.

Everything here refuses what the strict parsing rules (DESIGN.md §6) call a bad source by raising Fatal;
it never looks at the view. header_of, read_header and read_tensors are the one unchecked
safetensors reader of the test suites (ep.py, tests/integration, tests/real): for views and
hand-made files, whose strictness is checked elsewhere.
"""
import hashlib
import json
import math
import os
import re
import stat
import struct

CHUNK = 1 << 20
MAX_HEADER = 100_000_000
MMAP_LIMIT = 64 << 20
HIDDEN = ".qvlmoefs"
INDEX_NAME = "model.safetensors.index.json"
# bytes per element of every dtype the C parser accepts (src/st.c); ep.py uses this table too
DTYPE_SIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
              "F8_E4M3FNUZ": 1, "F8_E5M2FNUZ": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
              "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8, "C64": 8}
SNAPSHOT = re.compile(r".*/models--[^/]+/snapshots/[^/]+")
JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)


class Fatal(Exception):
    """A problem with the source or the arguments, not with the view."""


class Stream:
    """Sequential read() calls of CHUNK bytes over a whole file, hashing and counting them."""

    def __init__(self, fd):
        """Wrap an open descriptor positioned at offset 0."""
        self.fd, self.buf, self.off, self.total, self.eof = fd, bytearray(), 0, 0, False
        self.hash = hashlib.sha256()

    def take(self, n):
        """Return the next n bytes of the file (fewer at end of file)."""
        while len(self.buf) < n and not self.eof:
            chunk = os.read(self.fd, CHUNK)
            self.eof, self.total = not chunk, self.total + len(chunk)
            self.hash.update(chunk)
            self.buf += chunk
        out = bytes(self.buf[:n])
        del self.buf[:n]
        self.off += len(out)
        return out

    def skip_to(self, pos):
        """Consume bytes up to file offset pos."""
        while self.off < pos and self.take(min(CHUNK, pos - self.off)):
            pass


def load_json(text):
    """Parse JSON strictly; return (object, duplicate keys found at any depth)."""
    dups = []

    def hook(pairs):
        """Build an ordered dict, noting repeated keys."""
        obj = {}
        for k, v in pairs:
            if k in obj:
                dups.append(k)
            obj[k] = v
        return obj

    def no_constant(name):
        """Reject NaN and Infinity."""
        raise ValueError(f"non-JSON constant {name}")
    return json.loads(text, object_pairs_hook=hook, parse_constant=no_constant), dups


def outside_ws(text):
    """True when JSON text has whitespace outside string literals."""
    return re.search(r"[ \t\n\r]", JSON_STRING.sub('""', text)) is not None


def is_uint(x):
    """True for a non-negative JSON integer (not a bool or float)."""
    return type(x) is int and x >= 0


def first_diff(a, b):
    """Index of the first differing byte of a and b (or the shorter length)."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def header_of(raw):
    """(header dict, __metadata__ included, and its length n) of the bytes of a safetensors
    file, parsed without any of the source checks: the data starts at 8 + n. For views and
    hand-made files, whose strictness other code checks (read_source_header, verify)."""
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), n


def read_header(path):
    """header_of of a file, reading only the 8 length bytes and the header."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n)), n


def read_tensors(path):
    """(__metadata__ or None, {name: (dtype, shape, bytes)} in data order) of a safetensors
    file, read as header_of does (unchecked)."""
    with open(path, "rb") as f:
        raw = f.read()
    hdr, n = header_of(raw)
    meta, data = hdr.pop("__metadata__", None), raw[8 + n:]
    order = sorted(hdr, key=lambda k: hdr[k]["data_offsets"][0])
    return meta, {k: (hdr[k]["dtype"], hdr[k]["shape"],
                      data[hdr[k]["data_offsets"][0]:hdr[k]["data_offsets"][1]]) for k in order}


def read_source_header(path, rel):
    """Parse a source safetensors header; return (metadata, tensors in data order, data start)."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise Fatal(f"{rel}: source file is shorter than 8 bytes")
        n = struct.unpack("<Q", head)[0]
        if n > MAX_HEADER:
            raise Fatal(f"{rel}: source header length {n} is over {MAX_HEADER}")
        raw = f.read(n)
        size = os.fstat(f.fileno()).st_size
    try:
        obj, _ = load_json(raw.decode("utf-8"))
    except ValueError as e:
        raise Fatal(f"{rel}: source header is not valid JSON ({e})")
    meta = obj.get("__metadata__", {}) if isinstance(obj, dict) else None
    if not isinstance(meta, dict):
        raise Fatal(f"{rel}: source header is not an object with an object __metadata__")
    tensors = []
    for name, t in obj.items():
        if name == "__metadata__":
            continue
        info, problem = tensor_info(t)
        if problem or 8 + n + info[3] > size:
            raise Fatal(f"{rel}: source tensor {name}: {problem or 'data past end of file'}")
        tensors.append((name,) + info)
    tensors.sort(key=lambda t: t[3])  # stable: ties keep the source's JSON order
    return meta, tensors, 8 + n


def tensor_info(t):
    """Validate one header entry; return ((dtype, shape, begin, end) or None, problem or None)."""
    if not isinstance(t, dict) or set(t) != {"dtype", "shape", "data_offsets"}:
        return None, "entry must have exactly dtype, shape, data_offsets"
    dtype, shape, offs = t["dtype"], t["shape"], t["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPE_SIZE:
        return None, f"unknown dtype {dtype!r}"
    if not isinstance(shape, list) or not all(is_uint(x) for x in shape):
        return None, f"bad shape {shape!r}"
    if not (isinstance(offs, list) and len(offs) == 2 and all(is_uint(x) for x in offs)
            and offs[0] <= offs[1]):
        return None, f"bad data_offsets {offs!r}"
    info = (dtype, shape, offs[0], offs[1])
    size = math.prod(shape) * DTYPE_SIZE[dtype]
    if size != offs[1] - offs[0]:
        return info, f"shape {shape} x {dtype} is {size} bytes, data_offsets span {offs[1] - offs[0]}"
    return info, None


def inside(path, root):
    """True when path is root or lies below it."""
    return path == root or path.startswith(root.rstrip("/") + "/")


def scan_source(src):
    """Walk SRC under the symlink policy; return [(rel, kind, path, why)], kind file/dir/absent."""
    real = os.path.realpath(src)
    roots = [real] + ([os.path.dirname(os.path.dirname(real))] if SNAPSHOT.fullmatch(real) else [])
    out = []

    def visit(path, rel, ancestors):
        """Classify the entries of one folder, recursing into folders not yet on the path."""
        for name in sorted(os.listdir(path)):
            if not rel and name == HIDDEN:
                continue
            p, r = os.path.join(path, name), os.path.join(rel, name)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                target = os.path.realpath(p)
                if not any(inside(target, root) for root in roots):
                    out.append((r, "absent", p, "symlink escapes the source"))
                    continue
                if not os.path.exists(p):
                    out.append((r, "absent", p, "dangling symlink"))
                    continue
                st = os.stat(p)
            if stat.S_ISDIR(st.st_mode):
                out.append((r, "dir", p, None))
                rp = os.path.realpath(p)
                if rp not in ancestors:
                    visit(p, r, ancestors | {rp})
            elif stat.S_ISREG(st.st_mode):
                out.append((r, "file", p, None))
            else:
                out.append((r, "absent", p, "not a regular file or folder"))
    visit(src, "", {real})
    return out
