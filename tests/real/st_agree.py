#!/usr/bin/env python3
"""Parser agreement: this project's safetensors header parser against the official one.

Seeded mutations of a few valid seed files (written by the official safetensors.torch and
safetensors.numpy save_file and by qvlmoefs-mkckpt) go to both parsers:

- the official safetensors (in-process, `safetensors.deserialize(bytes)`: the same
  `SafeTensors::read_metadata` that `safe_open` runs on a loader's file: 8-byte length
  prefix, header size limit, UTF-8, JSON into its typed header, offsets tiling from 0, shape x
  dtype = byte length, and the data ending exactly at the end of the file); every
  --cross-check'th input also goes through `safe_open` on a real file, which must agree;
- this project's parser through tests/fuzz/st_agree.c (one subprocess for the whole run),
  which checks each file the way the mount checks a source: fstat, then qv_st_read_fd.

Every input where one accepts and the other rejects is a disagreement; so is a file both
accept but read differently (names, dtypes, shapes, tensor bytes, metadata). A disagreement
where the project rejects is allowed only when the input has one of the properties of ALLOW,
the project's deliberate stricter rules (README, Limits), each a named predicate with its
reason; nothing the project accepts and the official parser rejects is ever allowed.

Input number i of seed S is built from random.Random(f"{S}:{i}") alone, so
`st_agree.py --seed S --only I --save DIR` rebuilds one input (and `build/st_agree DIR/*`
replays the project's side). A fixed list of directed inputs (DIRECTED) runs first in every
run: one per deliberate rule and one per fixed disagreement, so the short run always covers
them.

    st_agree.py [-n N] [--seed S] [--save DIR] [--show K] [--big] [--cross-check K]

Exit status 0 when every disagreement is allowed, 1 otherwise.

This file is the driver: the two parsers, the comparison of their verdicts, the report and the
command line. Its siblings hold the rest: st_agree_format (the JSON model of a header and the
file framing), st_agree_seeds (the seed files), st_agree_mutate (the generated and directed
inputs) and st_agree_rules (ALLOW, the deliberate stricter rules).
"""
import argparse
import os
import re
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from st_agree_format import prefix
from st_agree_mutate import DIRECTED, big_inputs, generate
from st_agree_rules import ALLOW, explain
from st_agree_seeds import BUILD, MKCKPT, ROOT, Seed, make_seeds

DRIVER = ROOT / BUILD / "st_agree"


# ---------------------------------------------------------------------------------------------
# The two parsers.

def official(b):
    """("A", {name: (dtype, shape, bytes)}) or ("R", message) from safetensors.deserialize."""
    import safetensors
    try:
        out = safetensors.deserialize(b)
    except safetensors.SafetensorError as e:
        return "R", str(e)
    except Exception as e:  # anything else is a finding of its own
        return "R", f"{type(e).__name__}: {e}"
    except BaseException as e:  # pyo3's PanicException
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        return "R", f"PANIC {type(e).__name__}: {e}"
    return "A", {name: (v["dtype"], list(v["shape"]), bytes(v["data"])) for name, v in out}


def official_file(b, tmpdir):
    """safe_open's verdict on b as a real file: ("A", metadata) or ("R", message)."""
    import safetensors
    p = os.path.join(tmpdir, "x.safetensors")
    with open(p, "wb") as f:
        f.write(b)
    try:
        with safetensors.safe_open(p, framework="numpy") as f:
            f.keys()
            return "A", f.metadata()
    except Exception as e:
        return "R", str(e)


class Driver:
    """tests/fuzz/st_agree.c as one subprocess; check(list of bytes) -> list of verdicts."""

    def __init__(self, path=DRIVER):
        self.p = subprocess.Popen([str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def check(self, files):
        def feed():
            for b in files:
                self.p.stdin.write(prefix(len(b)))
                self.p.stdin.write(b)
            self.p.stdin.flush()
        t = threading.Thread(target=feed)
        t.start()
        out = []
        for _ in files:
            line = self.p.stdout.readline()
            if not line:
                raise RuntimeError(f"st_agree driver died (exit {self.p.wait()})")
            out.append(parse_verdict(line.decode()))
        t.join()
        return out

    def close(self):
        self.p.stdin.close()
        self.p.wait()


def parse_verdict(line):
    f = line.rstrip("\n").split("\t")
    if f[0] == "R":
        return "R", f[2]
    tensors = {}
    if f[2]:
        for item in f[2].split(";"):
            name, dt, shape, off = item.split(":")
            b, e = off.split("-")
            tensors[bytes.fromhex(name).decode("utf-8", "surrogateescape")] = (
                dt, [int(x) for x in shape.split(",")] if shape else [], int(b), int(e))
    meta = None
    if f[3] != "-":
        meta = {}
        for kv in filter(None, f[3][1:].split(";")):
            k, v = kv.split("=")
            meta[bytes.fromhex(k).decode()] = bytes.fromhex(v).decode()
    return "A", (tensors, meta)


def compare(b, ours, theirs):
    """None when both read b the same way, else what differs."""
    tensors, _ = ours
    if sorted(tensors) != sorted(theirs):
        return f"tensor names differ: ours {sorted(tensors)[:5]} official {sorted(theirs)[:5]}"
    n = struct.unpack("<Q", b[:8])[0]
    for name, (dt, shape, beg, end) in tensors.items():
        odt, oshape, odata = theirs[name]
        if dt != odt or shape != oshape:
            return f"{name!r}: ours {dt} {shape}, official {odt} {oshape}"
        if b[8 + n + beg:8 + n + end] != odata:
            return f"{name!r}: tensor bytes differ"
    return None


# ---------------------------------------------------------------------------------------------
# The run.

def norm(msg):
    """A message with its particulars (tensor names, quoted words, numbers) taken out."""
    if msg.startswith('tensor "') and '": ' in msg:  # names are printed raw, quotes and all
        msg = 'tensor "…": ' + msg.rpartition('": ')[2]
    msg = re.sub(r'"(?:[^"\\]|\\.)*"|`[^`]*`', '"…"', msg)
    return re.sub(r"\d+", "N", msg)[:110]


class Result:
    def __init__(self, seed):
        self.seed = seed
        self.n = 0
        self.counts = {"both accept": 0, "both reject": 0, "we reject, official accepts": 0,
                       "we accept, official rejects": 0}
        self.allowed = {}      # rule name -> [(label, desc, our reason)]
        self.failures = []     # (kind, label, desc, detail, bytes)
        self.api_checks = 0    # inputs also opened with safe_open
        self.api_disagree = 0
        self.seconds = 0.0

    def failed_classes(self):
        out = {}
        for kind, label, desc, detail, _ in self.failures:
            out.setdefault(f"{kind}: {norm(detail)}", []).append(label)
        return out

    def report(self, show=20, show_allowed=2):
        lines = [f"st_agree: seed {self.seed}, {self.n} inputs in {self.seconds:.1f} s"]
        for k, v in self.counts.items():
            lines.append(f"  {k:30s} {v}")
        lines.append(f"  safe_open cross-checks: {self.api_checks}, verdicts differing from "
                     f"deserialize: {self.api_disagree}")
        lines.append("deliberate stricter rules (allowed; README, Limits):")
        for rule in ALLOW:
            hits = self.allowed.get(rule.name, [])
            reasons = {}
            for _, _, why in hits:
                reasons[norm(why)] = reasons.get(norm(why), 0) + 1
            top = "; ".join(f"{r} ({c})" for r, c in sorted(reasons.items(), key=lambda x: -x[1])[:2])
            lines.append(f"  {rule.name:24s} {len(hits):6d}  ours: {top}" if hits else
                         f"  {rule.name:24s} {0:6d}")
            for label, desc, why in hits[:show_allowed]:
                lines.append(f"      e.g. {label} [{desc}]: {why}")
        classes = self.failed_classes()
        lines.append(f"disagreements outside the allow-list: {len(self.failures)} "
                     f"in {len(classes)} classes")
        for cls, labels in sorted(classes.items(), key=lambda x: -len(x[1])):
            lines.append(f"  {len(labels):6d}  {cls}   e.g. {', '.join(labels[:3])}")
        for kind, label, desc, detail, b in self.failures[:show]:
            lines.append(f"  - {label} [{desc}] {kind}: {detail}")
            if b is not None:
                lines.append(f"      file {len(b)} bytes: {b[:160]!r}"
                             f"{'...' if len(b) > 160 else ''}")
            lines.append(f"      again: tests/real/st_agree.py --seed {self.seed} --only "
                         f"{label.lstrip('#')} --save DIR")
        if len(self.failures) > show:
            lines.append(f"  ... and {len(self.failures) - show} more (--show)")
        return "\n".join(lines)


def run(n, seed, driver=DRIVER, mkckpt=MKCKPT, only=None, big=False, cross_check=0, save=None,
        chunk=256, directed=True, log=None, allow=ALLOW):
    """Feed n generated inputs (after the seeds and DIRECTED, and with big the two 100 MB
    headers) to both parsers; a Result. allow: the rules that excuse a rejection."""
    t0 = time.monotonic()
    seeds = [Seed(name, b) for name, b in make_seeds(mkckpt)]
    res = Result(seed)
    drv = Driver(driver)
    for s in seeds:  # valid by construction; the project's verdict on them is judged below
        if official(s.bytes)[0] != "A":
            raise RuntimeError(f"seed {s.name} is not valid: {official(s.bytes)[1]}")

    def inputs():
        if only is not None:
            yield from pick(only, seed, seeds)
            return
        if directed:
            for s in seeds:
                yield f"seed:{s.name}", "seed", s.bytes
            for name, b in DIRECTED:
                yield f"directed:{name}", "directed", b
        if big:
            for name, b in big_inputs():
                yield name, "big", b
        for i in range(n):
            yield f"#{i}", *generate(seed, i, seeds)[::-1]

    tmp = tempfile.TemporaryDirectory(prefix="st_agree.")
    if save:
        os.makedirs(save, exist_ok=True)
    batch = []

    def flush():
        verdicts = drv.check([b for _, _, b in batch])
        for (label, desc, b), ours in zip(batch, verdicts):
            judge(res, label, desc, b, ours, cross_check, tmp.name, save, allow)
        res.n += len(batch)
        if log and res.n // 10000 != (res.n - len(batch)) // 10000:
            log(f"st_agree: {res.n} inputs, {len(res.failures)} disagreements outside the "
                f"allow-list, {time.monotonic() - t0:.0f} s")
        batch.clear()

    for item in inputs():
        batch.append(item)
        if len(batch) >= chunk or len(item[2]) > 1 << 20:
            flush()
    if batch:
        flush()
    drv.close()
    tmp.cleanup()
    res.seconds = time.monotonic() - t0
    return res


def pick(only, seed, seeds):
    """(label, description, bytes) of the inputs named in only: generated input numbers,
    "seed:NAME", "directed:NAME" or "big:limit", "big:limit+1"."""
    special = {f"seed:{s.name}": ("seed", s.bytes) for s in seeds}
    special.update({f"directed:{name}": ("directed", b) for name, b in DIRECTED})
    for x in only:
        if str(x).isdigit():
            yield f"#{x}", *generate(seed, int(x), seeds)[::-1]
        elif str(x).startswith("big:"):
            yield from ((name, "big", b) for name, b in big_inputs() if name == x)
        elif x in special:
            yield x, *special[x]
        else:
            raise SystemExit(f"st_agree: no input {x!r}")


KEEP = 200       # failures whose bytes a Result keeps (for the listing)
SAVE_MAX = 1000  # disagreements --save writes at most


def judge(res, label, desc, b, ours, cross_check, tmpdir, save, allow=ALLOW):
    """Both verdicts on one input, counted and, where they differ, explained or recorded."""
    theirs = official(b)
    idx = int(label[1:]) if label.startswith("#") else 0  # seeds and directed: always
    if cross_check and (idx % cross_check == 0 or ours[0] != theirs[0]) and len(b) < 1 << 24:
        f = official_file(b, tmpdir)
        res.api_checks += 1
        if f[0] != theirs[0]:
            res.api_disagree += 1
            res.failures.append(("safe_open and deserialize disagree", label, desc,
                                 f"deserialize {theirs[0]}, safe_open {f}",
                                 b if len(res.failures) < KEEP else None))
        elif f[0] == "A" and ours[0] == "A" and f[1] != ours[1][1]:
            res.failures.append(("both accept, metadata differs", label, desc,
                                 f"ours {ours[1][1]!r}, official {f[1]!r}",
                                 b if len(res.failures) < KEEP else None))
    failure = None
    if ours[0] == "A" and theirs[0] == "A":
        res.counts["both accept"] += 1
        diff = compare(b, ours[1], theirs[1])
        if diff:
            failure = ("both accept, read differently", diff)
    elif ours[0] == "R" and theirs[0] == "R":
        res.counts["both reject"] += 1
    elif ours[0] == "R":
        res.counts["we reject, official accepts"] += 1
        rule = explain(b, ours[1], allow)
        if rule:
            res.allowed.setdefault(rule.name, []).append((label, desc, ours[1]))
        else:
            failure = ("we reject, official accepts", ours[1])
    else:
        res.counts["we accept, official rejects"] += 1
        failure = ("we accept, official rejects", theirs[1])
    if failure:
        res.failures.append((failure[0], label, desc, failure[1],
                             b if len(res.failures) < KEEP else None))
        if save and len(res.failures) <= SAVE_MAX:
            name = re.sub(r"[^A-Za-z0-9_.-]", "_", label.lstrip("#"))
            Path(save, f"seed{res.seed}-{name}.safetensors").write_bytes(b)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=100000, help="generated inputs (default 100000)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--only", nargs="+", metavar="INPUT",
                    help="just these: generated input numbers, seed:NAME, directed:NAME")
    ap.add_argument("--save", metavar="DIR",
                    help=f"write the disagreements outside the allow-list (the first {SAVE_MAX}) "
                    "here as files; with --only, those inputs, whatever the verdicts")
    ap.add_argument("--show", type=int, default=20, help="disagreements listed (default 20)")
    ap.add_argument("--show-allowed", type=int, default=2, help="examples per allowed rule")
    ap.add_argument("--big", action="store_true", help="also the two 100 MB headers at the limit")
    ap.add_argument("--cross-check", type=int, default=25, metavar="K",
                    help="every K-th input also through safe_open on a file (0: never)")
    ap.add_argument("--driver", default=str(DRIVER))
    ap.add_argument("--mkckpt", default=str(MKCKPT))
    a = ap.parse_args(argv)
    if a.only and a.save:
        seeds = [Seed(name, b) for name, b in make_seeds(a.mkckpt)]
        os.makedirs(a.save, exist_ok=True)
        for label, desc, b in pick(a.only, a.seed, seeds):
            name = re.sub(r"[^A-Za-z0-9_.+-]", "_", label.lstrip("#"))
            p = Path(a.save, f"seed{a.seed}-{name}.safetensors")
            p.write_bytes(b)
            v = official(b)
            print(f"{p}: [{desc}] official {v[0]}{': ' + v[1][:200] if v[0] == 'R' else ''}")
    res = run(a.n, a.seed, driver=a.driver, mkckpt=a.mkckpt, only=a.only, big=a.big,
              cross_check=a.cross_check, save=a.save if not a.only else None,
              log=lambda m: print(m, file=sys.stderr, flush=True))
    print(res.report(show=a.show, show_allowed=a.show_allowed))
    return 1 if res.failures else 0


if __name__ == "__main__":
    sys.exit(main())
