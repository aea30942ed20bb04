"""Checking a view tree against its source: tree shape, virtual shards, indexes, passthrough.

Each mismatch goes to a Report as one line `check_view: <path>: <what differs>`.
"""
import hashlib
import json
import math
import mmap
import os
import stat
import struct
import sys

from .contract import build_plan
from .reader import (CHUNK, DTYPE_SIZE, HIDDEN, INDEX_NAME, MAX_HEADER, MMAP_LIMIT, Fatal, Stream,
                     first_diff, inside, is_uint, load_json, outside_ws, scan_source, tensor_info)

class Report:
    """Collects mismatches and counters; prints each mismatch at once unless quiet."""

    def __init__(self, quiet=False):
        """Start with no mismatches and zero counters."""
        self.quiet, self.errors, self.notes = quiet, [], []
        self.files = self.tensors = self.bytes = 0

    def note(self, what):
        """Say something once that is no mismatch (how the check had to be made)."""
        if what not in self.notes:
            self.notes.append(what)
            if not self.quiet:
                print(f"check_view: note: {what}", file=sys.stderr)

    def bad(self, path, what):
        """Record one mismatch line."""
        line = f"check_view: {path or '.'}: {what}"
        self.errors.append(line)
        if not self.quiet:
            print(line, file=sys.stderr)


def capped(rep, path, lines, cap=20):
    """Report at most cap lines, then a count of the rest."""
    for line in lines[:cap]:
        rep.bad(path, line)
    if len(lines) > cap:
        rep.bad(path, f"... and {len(lines) - cap} more such differences")


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


MAPS = {"shared": {"access": mmap.ACCESS_READ},
        "private": {"flags": mmap.MAP_PRIVATE, "prot": mmap.PROT_READ}}


def compare_mmap(rep, rel, fd, digest, kind):
    """Compare a mapping of fd with the read() bytes' digest. kind "auto" maps MAP_SHARED and,
    where the mount refuses that (ENODEV: -o direct_io), MAP_PRIVATE, and where that fails too
    keeps the read() check alone; each fallback is noted once. An explicit kind that fails to
    map is a mismatch (the caller asked for that mapping)."""
    for k in (["shared", "private"] if kind == "auto" else [kind]):
        try:
            with mmap.mmap(fd, 0, **MAPS[k]) as mm:
                if hashlib.sha256(mm).digest() != digest:
                    rep.bad(rel, f"mmap ({k}) contents differ from read() contents")
                return
        except OSError as e:
            if kind != "auto":
                return rep.bad(rel, f"mmap ({k}) failed: {e.strerror}")
            rep.note(f"MAP_{k.upper()} mmap refused ({e.strerror}; a direct_io mount?)")
    rep.note("compared read() only")


def check_shard(rep, rel, vpath, spath, sh, mmap_kind="auto"):
    """Check one virtual safetensors file: header rules, metadata, tensor list, bytes, size.

    mmap_kind says how the file is mapped to compare the mapping with read(): "auto" (the
    default: MAP_SHARED, else MAP_PRIVATE, else read() only, see compare_mmap), "shared",
    "private" (MAP_PRIVATE: what works under -o direct_io) or "none".
    """
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
        if 0 < size < MMAP_LIMIT and mmap_kind != "none":
            compare_mmap(rep, rel, fd, stream.hash.digest(), mmap_kind)
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
                check_shard(rep, rel, vpath, path, shards[rel], getattr(args, "mmap", "auto"))
            elif os.path.basename(rel) == INDEX_NAME:
                folder = os.path.dirname(rel)
                check_index(rep, rel, vpath, path,
                            {r: sh for r, sh in shards.items() if os.path.dirname(r) == folder})
            else:
                compare_file(rep, rel, path, vpath)
        except OSError as e:
            rep.bad(rel, f"I/O error: {e}")
        rep.files += 1
