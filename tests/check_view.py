#!/usr/bin/python3
"""check_view.py: check a mounted qvlmoefs view against its source checkpoint.

An independent re-implementation of the contract in DESIGN.md §1-§2 (renaming, dropping,
expert-parallel slicing, strict virtual safetensors files, generated index, passthrough
files, read-only tree, symlink policy). Every mismatch prints one line
`check_view: <path>: <what differs>` to stderr; exit 1 on any mismatch, 2 on a bad source
or bad arguments, 0 otherwise. `--selftest` checks the checker on hand-built views.
"""
import argparse, hashlib, json, math, mmap, os, re, stat, struct, sys, tempfile

CHUNK = 1 << 20
MAX_HEADER = 100_000_000
MMAP_LIMIT = 64 << 20
HIDDEN = ".qvlmoefs"
INDEX_NAME = "model.safetensors.index.json"
DTYPE_SIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
              "I16": 2, "U16": 2, "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4,
              "I64": 8, "U64": 8, "F64": 8, "C64": 8}
HF_EXPERT = re.compile(r"(model\.)?language_model\.layers\.(\d+)\.mlp\.experts\.(gate_up_proj|down_proj)")
NATIVE_SUFFIXES = (".mlp.experts.gate_and_up_projs", ".mlp.experts.down_projs")
SNAPSHOT = re.compile(r".*/models--[^/]+/snapshots/[^/]+")
JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)

class Fatal(Exception):
    """A problem with the source or the arguments, not with the view."""

class Report:
    """Collects mismatches and counters; prints each mismatch at once unless quiet."""

    def __init__(self, quiet=False):
        """Start with no mismatches and zero counters."""
        self.quiet, self.errors = quiet, []
        self.files = self.tensors = self.bytes = 0

    def bad(self, path, what):
        """Record one mismatch line."""
        line = f"check_view: {path or '.'}: {what}"
        self.errors.append(line)
        if not self.quiet:
            print(line, file=sys.stderr)

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

# ---------------------------------------------------------------- JSON helpers

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

def capped(rep, path, lines, cap=20):
    """Report at most cap lines, then a count of the rest."""
    for line in lines[:cap]:
        rep.bad(path, line)
    if len(lines) > cap:
        rep.bad(path, f"... and {len(lines) - cap} more such differences")

# ---------------------------------------------------------------- the contract

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

def is_expert(key, naming):
    """True for the expert tensors that slicing cuts, in the source's naming."""
    return bool(HF_EXPERT.fullmatch(key)) if naming == "hf" else key.endswith(NATIVE_SUFFIXES)

def rename(key, src_naming, view_naming, prefix, exclude):
    """Virtual name of a source key, or None when the view leaves it out."""
    if src_naming == view_naming:
        return key
    if view_naming == "native":  # from_hf
        m = HF_EXPERT.fullmatch(key)
        if m:
            part = "gate_and_up_projs" if m.group(3) == "gate_up_proj" else "down_projs"
            return f"{prefix}language_model.layers.{m.group(2)}.mlp.experts.{part}"
        if key.endswith("_scale_inv"):
            return None
        return key if key.startswith(("model.", "lm_head.")) else prefix + key
    if ".mlp.experts.gate_and_up_projs" in key:  # to_hf
        key = key.replace(".mlp.experts.gate_and_up_projs", ".mlp.experts.gate_up_proj")
    elif ".mlp.experts.down_projs" in key:
        key = key.replace(".mlp.experts.down_projs", ".mlp.experts.down_proj")
    return None if exclude.match(key) else key

def ep_range(n, w, r):
    """(start, count) of EP rank r's experts out of n."""
    q, m = divmod(n, w)
    return r * q + min(r, m), q + (1 if r < m else 0)

def slice_extents(shape, esize, base, sl, where):
    """Sliced shape and source extents [(offset, length)] of an expert tensor at base."""
    w, r, k, s = sl
    if len(shape) < (2 if k > 1 else 1):
        raise Fatal(f"{where}: expert tensor of shape {shape} cannot be sliced")
    row = math.prod(shape[1:]) * esize
    start, count = ep_range(shape[0], w, r)
    if k <= 1:
        return [count] + shape[1:], [(base + start * row, count * row)]
    if shape[1] % k:
        raise Fatal(f"{where}: dim 1 ({shape[1]}) is not a multiple of ep_shard_size {k}")
    part, inner = shape[1] // k, math.prod(shape[2:]) * esize
    exts = [(base + e * row + s * part * inner, part * inner) for e in range(start, start + count)]
    return [count, part] + shape[2:], exts

def slice_meta(sl, n):
    """The qvlmoefs.* metadata entries a sliced virtual shard must hold."""
    w, r, k, s = sl
    meta = {"qvlmoefs.ep_size": str(w), "qvlmoefs.ep_rank": str(r)}
    if n is not None:
        start, count = ep_range(n, w, r)
        meta.update({"qvlmoefs.expert_start": str(start), "qvlmoefs.expert_end": str(start + count)})
    if k > 1:
        meta.update({"qvlmoefs.ep_shard_size": str(k), "qvlmoefs.ep_shard_rank": str(s)})
    return meta

def build_plan(entries, args):
    """Parse every source shard; compute each virtual file's metadata and tensor list."""
    shards = {rel: {"src": read_source_header(path, rel)}
              for rel, kind, path, _ in entries if kind == "file" and rel.endswith(".safetensors")}
    for rel, sh in shards.items():
        if "DCP_SHARDING_INFO" in sh["src"][0]:
            raise Fatal(f"{rel}: Automodel sharded saves (DCP_SHARDING_INFO) are not supported")
    keys = [t[0] for sh in shards.values() for t in sh["src"][1]]
    src_naming = "native" if any(k.endswith(NATIVE_SUFFIXES) for k in keys) else "hf"
    view_naming = args.naming or ("hf" if src_naming == "native" else "native")
    prefix = "model." if any(k.startswith("model.") for k in keys) else ""
    exclude = re.compile(args.exclude)
    sl = (args.ep_size, args.ep_rank, args.ep_shard_size or 1, args.ep_shard_rank or 0) \
        if args.ep_size else None
    first_n = next((t[2][0] for rel in sorted(shards) for t in shards[rel]["src"][1]
                    if is_expert(t[0], src_naming) and t[2]), None)
    for rel, sh in shards.items():
        meta, tensors, data_start = sh["src"]
        vmeta = dict(meta)
        vmeta.setdefault("format", "pt")
        if sl:
            vmeta.update(slice_meta(sl, first_n))
        expected = []
        for name, dtype, shape, b, e in tensors:
            vname = rename(name, src_naming, view_naming, prefix, exclude)
            if vname is None:
                continue
            if sl and is_expert(name, src_naming):
                vshape, exts = slice_extents(shape, DTYPE_SIZE[dtype], data_start + b, sl,
                                             f"{rel}: {name}")
            else:
                vshape, exts = shape, [(data_start + b, e - b)]
            expected.append((vname, dtype, vshape, exts))
        sh["vmeta"], sh["expected"] = vmeta, expected
    return shards

# ---------------------------------------------------------------- the tree

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

def check_tree(rep, view, entries):
    """Compare the view's entries with the source's; return the relative paths fit to compare."""
    vroot = os.path.realpath(view)
    good = {""}
    st = os.stat(view)
    if st.st_mode & 0o222:
        rep.bad(".", f"has write bits (mode {oct(st.st_mode & 0o7777)})")
    bydir = {}
    for rel, kind, _, why in entries:
        bydir.setdefault(os.path.dirname(rel), {})[os.path.basename(rel)] = (kind, why)
    for d in [""] + [rel for rel, kind, _, _ in entries if kind == "dir"]:
        if d not in good:
            continue
        names = set(os.listdir(os.path.join(view, d)))
        want = bydir.get(d, {})
        for name in sorted(names - ({HIDDEN} if not d else set())):
            if name not in want:
                rep.bad(os.path.join(d, name), "extra entry in the view")
            elif want[name][0] == "absent":
                rep.bad(os.path.join(d, name), f"must be absent from the view ({want[name][1]})")
        for name, (kind, _) in sorted(want.items()):
            rel, vp = os.path.join(d, name), os.path.join(view, d, name)
            if kind == "absent":
                continue
            if name not in names:
                rep.bad(rel, f"missing from the view (source has a {kind})")
                continue
            if os.path.islink(vp) and not inside(os.path.realpath(vp), vroot):
                rep.bad(rel, f"is a symlink leaving the view (-> {os.readlink(vp)})")
                continue
            st = os.stat(vp)
            want_dir = kind == "dir"
            if want_dir != stat.S_ISDIR(st.st_mode) or (not want_dir and not stat.S_ISREG(st.st_mode)):
                rep.bad(rel, f"should be a {'folder' if want_dir else 'regular file'}")
                continue
            if st.st_mode & 0o222:
                rep.bad(rel, f"has write bits (mode {oct(st.st_mode & 0o7777)})")
            good.add(rel)
    return good

# ---------------------------------------------------------------- the files

def parse_view_header(rep, rel, raw):
    """Strictly parse a virtual header; return (metadata, tensors in JSON order) or None."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        rep.bad(rel, f"header is not UTF-8 ({e})")
        return None
    body = text.rstrip(" ")
    try:
        obj, dups = load_json(body)
    except ValueError as e:
        rep.bad(rel, f"header is not valid JSON followed by spaces ({e})")
        return None
    if json.dumps(obj, separators=(",", ":"), ensure_ascii=False) != body and outside_ws(body):
        rep.bad(rel, "header JSON is not compact (whitespace outside strings)")
    for k in dups:
        rep.bad(rel, f"duplicate key {k!r} in header")
    if not isinstance(obj, dict):
        rep.bad(rel, "header is not a JSON object")
        return None
    if next(iter(obj), None) != "__metadata__":
        rep.bad(rel, "__metadata__ is not the first key" if "__metadata__" in obj else "no __metadata__")
    meta = obj.get("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        rep.bad(rel, "__metadata__ is not a string-to-string map")
        meta = meta if isinstance(meta, dict) else {}
    tensors = []
    for name, t in obj.items():
        if name != "__metadata__":
            info, problem = tensor_info(t)
            if problem:
                rep.bad(rel, f"tensor {name}: {problem}")
            if info:
                tensors.append((name,) + info)
    return meta, tensors

def check_layout(rep, rel, tensors):
    """Check tensors are listed in data order and tile the data from 0; return the data length."""
    for a, b in zip(tensors, tensors[1:]):
        if b[3] < a[3]:
            rep.bad(rel, f"tensor {b[0]} follows {a[0]} in the header but precedes it in the data")
            break
    pos = 0
    for t in sorted(tensors, key=lambda t: (t[3], t[4])):
        if t[3] != pos:
            gap = "hole" if t[3] > pos else "overlap"
            rep.bad(rel, f"tensor {t[0]} starts at data offset {t[3]}, expected {pos} ({gap})")
        pos = max(pos, t[4])
    return pos

def compare_lists(rep, rel, got, exp):
    """Report differences between the view's (name, dtype, shape) list and the expected one."""
    g = [(t[0], t[1], list(t[2])) for t in got]
    e = [(t[0], t[1], list(t[2])) for t in exp]
    if g == e:
        return
    gd, ed = {t[0]: t for t in g}, {t[0]: t for t in e}
    lines = [f"missing tensor {n}" for n in ed if n not in gd]
    lines += [f"unexpected tensor {n}" for n in gd if n not in ed]
    lines += [f"tensor {n}: {gd[n][1]} {gd[n][2]}, expected {ed[n][1]} {ed[n][2]}"
              for n in ed if n in gd and gd[n] != ed[n]]
    go, eo = [t[0] for t in g if t[0] in ed], [t[0] for t in e if t[0] in gd]
    if go != eo:
        i = first_diff(go, eo)
        lines.append(f"tensor order differs from the source's data order: position {i} "
                     f"holds {go[i]}, expected {eo[i]}")
    capped(rep, rel, lines)

def compare_tensor(stream, fd, pos, extents, src_fd):
    """Compare view bytes at pos with source extents; return (bytes compared, first diff or None)."""
    seq = pos >= stream.off
    if seq:
        stream.skip_to(pos)
    done = 0
    for off, length in extents:
        k = 0
        while k < length:
            m = min(CHUNK, length - k)
            want = os.pread(src_fd, m, off + k)
            if len(want) != m:
                raise Fatal(f"source file shrank (short read at {off + k})")
            got = stream.take(m) if seq else os.pread(fd, m, pos + done)
            if got != want:
                return done + len(got), done + first_diff(got, want)
            k, done = k + m, done + m
    return done, None

def check_shard(rep, rel, vpath, spath, sh):
    """Check one virtual safetensors file: header rules, metadata, tensor list, bytes, size."""
    fd, src_fd = os.open(vpath, os.O_RDONLY), os.open(spath, os.O_RDONLY)
    try:
        stream = Stream(fd)
        head = stream.take(8)
        if len(head) < 8:
            return rep.bad(rel, "file is shorter than 8 bytes")
        n = struct.unpack("<Q", head)[0]
        if n > MAX_HEADER:
            return rep.bad(rel, f"header length {n} is over {MAX_HEADER}")
        if (8 + n) % 8:
            rep.bad(rel, f"8 + header length ({8 + n}) is not a multiple of 8")
        raw = stream.take(n)
        if len(raw) < n:
            return rep.bad(rel, f"file ends inside the header ({8 + len(raw)} of {8 + n} bytes)")
        parsed = parse_view_header(rep, rel, raw)
        if parsed is None:
            return
        meta, tensors = parsed
        for k, v in sh["vmeta"].items():
            if k not in meta:
                rep.bad(rel, f"__metadata__ lacks {k!r} (expected {v!r})")
            elif meta[k] != v:
                rep.bad(rel, f"__metadata__[{k!r}] is {meta[k]!r}, expected {v!r}")
        data_len = check_layout(rep, rel, tensors)
        compare_lists(rep, rel, tensors, sh["expected"])
        expd = {t[0]: t for t in sh["expected"]}
        for name, dtype, shape, b, _ in sorted(tensors, key=lambda t: (t[3], t[4])):
            x = expd.get(name)
            if x is None or x[1] != dtype or list(x[2]) != shape:
                continue
            done, diff = compare_tensor(stream, fd, 8 + n + b, x[3], src_fd)
            rep.tensors, rep.bytes = rep.tensors + 1, rep.bytes + done
            if diff is not None:
                rep.bad(rel, f"tensor {name}: bytes differ from the source at tensor offset {diff}")
        stream.skip_to(math.inf)  # read to end of file
        size = os.fstat(fd).st_size
        if size != 8 + n + data_len:
            rep.bad(rel, f"file size {size} != 8 + {n} + {data_len} (header + data)")
        if stream.total != size:
            rep.bad(rel, f"read() returned {stream.total} bytes but stat says {size}")
        if 0 < size < MMAP_LIMIT:
            with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as mm:
                if hashlib.sha256(mm).digest() != stream.hash.digest():
                    rep.bad(rel, "mmap contents differ from read() contents")
    finally:
        os.close(fd)
        os.close(src_fd)

def check_index(rep, rel, vpath, spath, shards):
    """Check a generated index against the virtual shards of its folder."""
    try:
        with open(vpath, "rb") as f:
            idx, dups = load_json(f.read().decode("utf-8"))
    except ValueError as e:
        return rep.bad(rel, f"index is not valid JSON ({e})")
    for k in dups:
        rep.bad(rel, f"duplicate key {k!r} in index")
    try:
        with open(spath, "rb") as f:
            src_meta = load_json(f.read().decode("utf-8"))[0].get("metadata") or {}
    except (ValueError, AttributeError):
        src_meta = {}
    want, total = {}, 0
    for srel in sorted(shards):
        for vname, dtype, shape, _ in shards[srel]["expected"]:
            want[vname] = os.path.basename(srel)
            total += math.prod(shape) * DTYPE_SIZE[dtype]
    idx = idx if isinstance(idx, dict) else {}
    wm, meta = idx.get("weight_map"), idx.get("metadata")
    if not isinstance(wm, dict):
        rep.bad(rel, "index has no weight_map object")
        wm = {}
    if not isinstance(meta, dict):
        rep.bad(rel, "index has no metadata object")
        meta = {}
    lines = [f"weight_map lacks {k}" for k in want if k not in wm]
    lines += [f"weight_map has unexpected key {k}" for k in wm if k not in want]
    lines += [f"weight_map[{k}] is {wm[k]!r}, expected {v!r}"
              for k, v in want.items() if k in wm and wm[k] != v]
    capped(rep, rel, lines)
    if not is_uint(meta.get("total_size")) or meta["total_size"] != total:
        rep.bad(rel, f"metadata.total_size is {meta.get('total_size')!r}, expected {total}")
    for k, v in src_meta.items() if isinstance(src_meta, dict) else ():
        if k != "total_size" and meta.get(k) != v:
            rep.bad(rel, f"metadata[{k!r}] is {meta.get(k)!r}, source had {v!r}")
    if HIDDEN in json.dumps(idx, ensure_ascii=False):
        rep.bad(rel, f"index names a {HIDDEN} path")

def compare_file(rep, rel, spath, vpath):
    """Byte-for-byte comparison of a passthrough file."""
    ss, vs = os.stat(spath).st_size, os.stat(vpath).st_size
    if ss != vs:
        rep.bad(rel, f"size {vs}, source has {ss}")
    with open(spath, "rb") as a, open(vpath, "rb") as b:
        off = 0
        while True:
            x, y = a.read(CHUNK), b.read(CHUNK)
            if x != y:
                return rep.bad(rel, f"content differs from the source at offset {off + first_diff(x, y)}")
            if not x:
                break
            off += len(x)
    rep.bytes += off

def check(src, view, args, rep):
    """Run every check of VIEW against SRC; mismatches go to rep."""
    if not os.path.isdir(src) or not os.path.isdir(view):
        raise Fatal(f"{src if not os.path.isdir(src) else view}: not a folder")
    entries = scan_source(src)
    shards = build_plan(entries, args)
    try:
        good = check_tree(rep, view, entries)
    except OSError as e:
        return rep.bad(".", f"I/O error walking the view: {e}")
    for rel, kind, path, _ in entries:
        if kind != "file" or rel not in good:
            continue
        vpath = os.path.join(view, rel)
        try:
            if rel in shards:
                check_shard(rep, rel, vpath, path, shards[rel])
            elif os.path.basename(rel) == INDEX_NAME:
                folder = os.path.dirname(rel)
                check_index(rep, rel, vpath, path,
                            {r: sh for r, sh in shards.items() if os.path.dirname(r) == folder})
            else:
                compare_file(rep, rel, path, vpath)
        except OSError as e:
            rep.bad(rel, f"I/O error: {e}")
        rep.files += 1

# ---------------------------------------------------------------- self-test

E, H, I = 10, 6, 4
SHARD1, SHARD2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
L0, L1 = "model.language_model.layers.0.", "language_model.layers.1."
# id: (HF name, native name, dtype, shape)
T = {"emb": ("model.language_model.embed_tokens.weight", None, "BF16", [12, H]),
     "gu0": (L0 + "mlp.experts.gate_up_proj", L0 + "mlp.experts.gate_and_up_projs", "BF16", [E, H, 2 * I]),
     "si": (L0 + "self_attn.q_proj.weight_scale_inv", None, "F32", [2, 2]),
     "dn0": (L0 + "mlp.experts.down_proj", L0 + "mlp.experts.down_projs", "BF16", [E, I, H]),
     "gate": (L0 + "mlp.gate.weight", None, "BF16", [E, H]),
     "lm": ("lm_head.weight", None, "BF16", [12, H]),
     "gu1": (L1 + "mlp.experts.gate_up_proj", "model." + L1 + "mlp.experts.gate_and_up_projs", "BF16", [E, H, 2 * I]),
     "dn1": (L1 + "mlp.experts.down_proj", "model." + L1 + "mlp.experts.down_projs", "BF16", [E, I, H]),
     "vb": ("visual.patch_embed.proj.bias", "model.visual.patch_embed.proj.bias", "F32", [5]),
     "xs": (None, L0 + "self_attn.core_attention._extra_state", "U8", [5])}
HF = {k: v[0] for k, v in T.items()}
NATIVE = {k: v[1] or v[0] for k, v in T.items()}
HF_BACK = dict(HF, gu1="model." + L1 + "mlp.experts.gate_up_proj",
               dn1="model." + L1 + "mlp.experts.down_proj", vb="model.visual.patch_embed.proj.bias")
EXPERTS = {"gu0", "dn0", "gu1", "dn1"}
FILES = {"config.json": b'{"model_type": "qwen3_vl_moe"}\n', "tokenizer/vocab.txt": b"a\nb\n"}

def pattern(n, seed):
    """Deterministic pseudo-random bytes for fixtures."""
    out, i = bytearray(), 0
    while len(out) < n:
        out += hashlib.sha256(f"{seed}:{i}".encode()).digest()
        i += 1
    return bytes(out[:n])

def st_bytes(meta, tensors, meta_first=True, sep=(",", ":"), sort_json=False, misalign=False, dup=False):
    """Serialize a safetensors file; tensors are (name, dtype, shape, data) in data order."""
    items, off = [], 0
    for name, dtype, shape, data in tensors:
        items.append((name, {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(data)]}))
        off += len(data)
    if sort_json:
        items.sort()
    if meta is not None:
        items.insert(0 if meta_first else len(items), ("__metadata__", meta))
    text = json.dumps(dict(items), separators=sep, ensure_ascii=False)
    if dup:
        text = text[:-1] + "," + json.dumps(dict(items[-1:]), separators=sep)[1:]
    enc = text.encode()
    pad = (-(8 + len(enc))) % 8
    enc += b" " * ((pad + 4) % 8 if misalign else pad)
    return struct.pack("<Q", len(enc)) + enc + b"".join(t[3] for t in tensors)

def hand_cut(data, shape, start, count, k=1, s=0):
    """Slice BF16 expert bytes with plain loops: experts [start, start+count), dim-1 part s of k."""
    rowlen, part = math.prod(shape[2:]) * 2, shape[1] // k
    out = bytearray()
    for e in range(start, start + count):
        for j in range(s * part, (s + 1) * part):
            o = (e * shape[1] + j) * rowlen
            out += data[o:o + rowlen]
    return bytes(out), [count, part] + shape[2:]

def build(layout, names, files, cut=None, meta_extra=None, index_edit=None):
    """Files of a checkpoint or view as {rel: bytes}; layout is [(rel, ids, meta, opts)]."""
    out, wm, total = dict(files), {}, 0
    for rel, ids, meta, opts in layout:
        tensors = []
        for i in ids:
            dtype, shape = T[i][2], T[i][3]
            data = pattern(math.prod(shape) * DTYPE_SIZE[dtype], i)
            if cut and i in EXPERTS:
                data, shape = hand_cut(data, shape, *cut)
            tensors.append((names[i], dtype, shape, data))
            wm[names[i]], total = rel, total + len(data)
        if meta is not None and meta_extra:
            meta = dict(meta, **meta_extra)
        out[rel] = st_bytes(meta, tensors, **opts)
    idx = {"metadata": {"total_size": total, "extra": "keep-me"}, "weight_map": wm}
    if index_edit:
        index_edit(idx)
    out[INDEX_NAME] = json.dumps(idx, indent=2).encode()
    return out

def write_tree(root, files, links=(), readonly=True, writable=()):
    """Write {rel: bytes} and symlinks under root; then drop write bits except on writable."""
    os.makedirs(root, exist_ok=True)
    for rel, data in files.items():
        os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
        with open(os.path.join(root, rel), "wb") as f:
            f.write(data)
    for rel, target in links:
        os.symlink(target, os.path.join(root, rel))
    for d, _, names in os.walk(root, topdown=False) if readonly else ():
        for name in names:
            p = os.path.join(d, name)
            if not os.path.islink(p):
                os.chmod(p, 0o644 if os.path.relpath(p, root) in writable else 0o444)
        os.chmod(d, 0o555)

def make_hf_source(tmp):
    """An HF cache snapshot: blob links, an inside link, an escaping link, a dangling link, a FIFO."""
    repo = os.path.join(tmp, "models--org--tiny")
    snap = os.path.join(repo, "snapshots", "rev1")
    layout = [(SHARD1, ["emb", "gu0", "si", "dn0", "gate"], {"format": "pt", "note": "src"},
               {"sort_json": True}),
              (SHARD2, ["lm", "gu1", "dn1", "vb"], None, {"misalign": True})]
    files, links = build(layout, HF, FILES), []
    for rel in ("config.json", SHARD2):
        data = files.pop(rel)
        blob = hashlib.sha256(data).hexdigest()
        write_tree(os.path.join(repo, "blobs"), {blob: data}, readonly=False)
        links.append((rel, "../../blobs/" + blob))
    write_tree(tmp, {"outside.txt": b"outside\n"}, readonly=False)
    links += [("link_inside.json", "config.json"), ("escape.txt", os.path.join(tmp, "outside.txt")),
              ("broken", "missing-target")]
    write_tree(snap, files, links, readonly=False)
    os.mkfifo(os.path.join(snap, "pipe"))
    return snap

def native_view(s1=None, s2=None, o1=None, o2=None, m2=None, names=NATIVE, **kw):
    """The hand-written native view of the HF source, with optional deviations."""
    layout = [(SHARD1, s1 or ["emb", "gu0", "dn0", "gate"], {"format": "pt", "note": "src"}, o1 or {}),
              (SHARD2, s2 or ["lm", "gu1", "dn1", "vb"], {"format": "pt"} if m2 is None else m2, o2 or {})]
    return build(layout, names, dict(FILES, **{"link_inside.json": FILES["config.json"]}), **kw)

def edited(files, **changes):
    """A copy of files with some entries replaced (None deletes)."""
    out = dict(files)
    for rel, data in changes.items():
        if data is None:
            out.pop(rel)
        else:
            out[rel] = data
    return out

def flip(data, pos):
    """data with one byte inverted."""
    b = bytearray(data)
    b[pos] ^= 0xFF
    return bytes(b)

def selftest():
    """Check that hand-built correct views pass and that each corruption is detected."""
    passed = failed = 0
    if [ep_range(10, 4, r) for r in range(4)] != [(0, 3), (3, 3), (6, 2), (8, 2)]:
        print("selftest: FAIL ep_range(10, 4, r) != 3,3,2,2 split")
        failed += 1
    with tempfile.TemporaryDirectory(prefix="check_view_selftest.") as tmp:
        src = make_hf_source(tmp)
        nsrc = os.path.join(tmp, "native_src")
        write_tree(nsrc, build([(SHARD1, ["emb", "gu0", "xs", "dn0", "gate"], {"format": "pt"}, {}),
                                (SHARD2, ["lm", "gu1", "dn1", "vb"], {"format": "pt"}, {})],
                               NATIVE, FILES), readonly=False)
        r3 = {"qvlmoefs.ep_size": "4", "qvlmoefs.ep_rank": "3",
              "qvlmoefs.expert_start": "8", "qvlmoefs.expert_end": "10"}
        k2 = dict(r3, **{"qvlmoefs.ep_shard_size": "2", "qvlmoefs.ep_shard_rank": "1"})
        W4, K2 = ["--ep-size", "4", "--ep-rank", "3"], ["--ep-shard-size", "2", "--ep-shard-rank", "1"]
        good = native_view()

        def bad_index(fn):
            """The good native view with its index edited by fn."""
            return native_view(index_edit=fn)
        hf_back = [(SHARD1, ["emb", "gu0", "dn0", "gate"], {"format": "pt"}, {}),
                   (SHARD2, ["lm", "gu1", "dn1", "vb"], {"format": "pt"}, {})]
        cases = [  # (name, source, view files, extra args, None or a text the failure must show, opts)
            ("native view", src, good, [], None, {}),
            ("native view ep 4/3", src, native_view(cut=(8, 2), meta_extra=r3), W4, None, {}),
            ("native view ep 4/3 shard 2/1", src, native_view(cut=(8, 2, 2, 1), meta_extra=k2), W4 + K2, None, {}),
            ("hf view of native source", nsrc, build(hf_back, HF_BACK, FILES), [], None, {}),
            ("tensor byte flipped", src, edited(good, **{SHARD1: flip(good[SHARD1], -5)}), [],
             "gate.weight: bytes differ from the source at tensor offset 115", {}),
            ("__metadata__ not first", src, native_view(o1={"meta_first": False}), [], "not the first key", {}),
            ("header not compact", src, native_view(o1={"sep": (", ", ": ")}), [], "not compact", {}),
            ("8+N not a multiple of 8", src, native_view(o2={"misalign": True}), [], "not a multiple of 8", {}),
            ("format missing", src, native_view(m2={}), [], "lacks 'format'", {}),
            ("duplicate header key", src, native_view(o2={"dup": True}), [], "duplicate key", {}),
            ("tensors out of data order", src, native_view(s2=["lm", "dn1", "gu1", "vb"]), [],
             "tensor order differs", {}),
            ("_scale_inv kept", src, native_view(s1=["emb", "gu0", "si", "dn0", "gate"],
                                                 names=dict(NATIVE, si=HF["si"])), [], "unexpected tensor", {}),
            ("trailing byte", src, edited(good, **{SHARD2: good[SHARD2] + b"\0"}), [], "file size", {}),
            ("index entry names the wrong file", src,
             bad_index(lambda x: x["weight_map"].update({NATIVE["emb"]: SHARD2})), [], "weight_map[", {}),
            ("index total_size off by one", src,
             bad_index(lambda x: x["metadata"].update(total_size=x["metadata"]["total_size"] + 1)), [],
             "total_size", {}),
            ("index metadata entry lost", src, bad_index(lambda x: x["metadata"].pop("extra")), [],
             "metadata['extra']", {}),
            ("index names .qvlmoefs", src,
             bad_index(lambda x: x["metadata"].update(raw=".qvlmoefs/raw")), [], "names a .qvlmoefs", {}),
            ("config.json changed", src, edited(good, **{"config.json": b"{}\n"}), [], "config.json: size", {}),
            ("extra file", src, edited(good, **{"extra.txt": b"x"}), [], "extra entry", {}),
            ("missing nested file", src, edited(good, **{"tokenizer/vocab.txt": None}), [],
             "vocab.txt: missing", {}),
            ("write bit", src, good, [], "has write bits", {"writable": ["config.json"]}),
            ("escaping symlink shown", src, edited(good, **{"escape.txt": b"outside\n"}), [],
             "must be absent", {}),
            ("symlink leaving the view", src, edited(good, **{"config.json": None}), [], "leaving the view",
             {"links": [("config.json", os.path.join(src, "config.json"))]}),
            ("ep 4/3 wrong experts", src, native_view(cut=(7, 2), meta_extra=r3), W4, "bytes differ", {}),
            ("ep 4/3 wrong expert_start", src,
             native_view(cut=(8, 2), meta_extra=dict(r3, **{"qvlmoefs.expert_start": "7"})), W4,
             "expert_start'] is '7'", {}),
            ("shard 2/1 given shard 0 bytes", src, native_view(cut=(8, 2, 2, 0), meta_extra=k2), W4 + K2,
             "gate_and_up_projs: bytes differ", {}),
            ("unsliced view checked as ep 4/3", src, good, W4, "expected BF16 [2, 6, 8]", {}),
            ("hf view keeps _extra_state", nsrc,
             build([(SHARD1, ["emb", "gu0", "xs", "dn0", "gate"], {"format": "pt"}, {})] + hf_back[1:],
                   dict(HF_BACK, xs=NATIVE["xs"]), FILES), [], "unexpected tensor " + NATIVE["xs"], {}),
        ]
        for n, (name, source, files, extra, expect, opt) in enumerate(cases):
            view = os.path.join(tmp, f"view{n}")
            if "tokenizer/vocab.txt" not in files:
                os.makedirs(os.path.join(view, "tokenizer"))
            write_tree(view, files, opt.get("links", ()), writable=opt.get("writable", ()))
            rep = Report(quiet=True)
            try:
                check(source, view, parse_args([source, view] + extra), rep)
            except Fatal as e:
                rep.errors.append(f"error: {e}")
            hit = [e for e in rep.errors if expect and expect in e]
            ok = not rep.errors if expect is None else bool(hit)
            passed, failed = passed + ok, failed + (not ok)
            shown = (hit or rep.errors or ["no mismatch"])[0]
            print(f"selftest: {'PASS' if ok else 'FAIL'} {name} (should {'fail' if expect else 'pass'}): {shown}")
    print(f"selftest: {passed} passed, {failed} failed")
    return 1 if failed else 0

# ---------------------------------------------------------------- command line

def parse_args(argv):
    """Parse and validate the command line."""
    p = argparse.ArgumentParser(prog="check_view.py",
                                description="Check a mounted qvlmoefs view against its source checkpoint.")
    p.add_argument("src", nargs="?", metavar="SRC", help="source checkpoint folder")
    p.add_argument("view", nargs="?", metavar="VIEW", help="mounted view folder")
    p.add_argument("--view", dest="naming", choices=["native", "hf"],
                   help="naming of the view (default: the other naming than the source's)")
    p.add_argument("--exclude", default=".*_extra_state.*", help="keys left out of an HF view (re.match)")
    p.add_argument("--ep-size", type=int, metavar="W")
    p.add_argument("--ep-rank", type=int, metavar="R")
    p.add_argument("--ep-shard-size", type=int, metavar="K")
    p.add_argument("--ep-shard-rank", type=int, metavar="S")
    p.add_argument("--selftest", action="store_true", help="check the checker on hand-built views")
    a = p.parse_args(argv)
    if a.selftest:
        return a
    k = a.ep_shard_size or 1
    for bad, why in ((a.src is None or a.view is None, "SRC and VIEW are required"),
                     ((a.ep_size is None) != (a.ep_rank is None), "--ep-size and --ep-rank go together"),
                     (None not in (a.ep_size, a.ep_rank) and not 0 <= a.ep_rank < a.ep_size, "need 0 <= R < W"),
                     (k > 1 and a.ep_size is None, "--ep-shard-size needs --ep-size and --ep-rank"),
                     (k > 1 and not 0 <= (a.ep_shard_rank if a.ep_shard_rank is not None else -1) < k,
                      "--ep-shard-size K > 1 needs --ep-shard-rank S with 0 <= S < K"),
                     (k < 1, "--ep-shard-size must be >= 1")):
        if bad:
            p.error(why)
    try:
        re.compile(a.exclude)
    except re.error as e:
        p.error(f"bad --exclude: {e}")
    return a

def main(argv=None):
    """Command-line entry point."""
    args = parse_args(argv)
    if args.selftest:
        return selftest()
    rep = Report()
    try:
        check(args.src, args.view, args, rep)
    except (Fatal, OSError) as e:  # view I/O errors are caught per file; these concern the source
        print(f"check_view: error: {e}", file=sys.stderr)
        return 2
    counts = f"{rep.files} files, {rep.tensors} tensors, {rep.bytes} bytes compared"
    if rep.errors:
        print(f"check_view: FAIL {len(rep.errors)} mismatches; {counts}")
        return 1
    print(f"check_view: OK {counts}")
    return 0

if __name__ == "__main__":
    sys.exit(main())
