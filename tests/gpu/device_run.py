#!/usr/bin/env python3
"""device_run.py - the rows of tests/gpu/device-run.sh (which builds, finds the CUDA runtime
and the comparison wheels, then runs this): GPU check first, a checkpoint with the real
Qwen3-VL-30B-A3B key schema and dims, the FUSE check, then every row with sources in the page
cache (warm) and, where posix_fadvise DONTNEED evicts them, not (cold); medians of REPS; a
table and the ratios on stdout and in OUT (table.md, results.json). Standard library only:
what needs torch runs in device_load.py children.

usage: device_run.py --bin BUILD --work DIR --out DIR --deadline EPOCH [--reps N]
                     [--mkckpt ARGS] [--python PY]
"""
import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import device_load as dl  # noqa: E402

EP, RANK = 8, 3
DEFAULT_CKPT = "--preset 30b-a3b --layers 5"  # 8.6 GB: the real dims, 5 of the 48 layers
SMALL_CKPT = "--preset tiny --experts 16"     # when no GPU would copy 8 GB anyway


def say(*a):
    print(*a, flush=True)


class Run:
    def __init__(self, a):
        self.a = a
        self.qv = os.path.join(a.bin, "qvlmoefs")
        self.mk = os.path.join(a.bin, "qvlmoefs-mkckpt")
        self.ckpt = os.path.join(a.work, "ckpt")
        self.rows = []  # (name, {state: result})
        self.env = {**os.environ, "DEVICE_RUN_DEADLINE": str(a.deadline)}
        self.cold_ok, self.cold_why = False, ""
        self.fuse_ok, self.fuse_why = False, ""
        self.gpu_ok, self.gpu_why = False, ""

    def left(self):
        return self.a.deadline - time.time()

    def child(self, *args, timeout=None):
        """Run device_load.py; its last line's JSON, or a skip naming how it ended."""
        timeout = max(5.0, self.left() if timeout is None else timeout)
        try:
            p = subprocess.run([self.a.python, os.path.join(HERE, "device_load.py"), *args],
                               capture_output=True, text=True, timeout=timeout, env=self.env)
        except subprocess.TimeoutExpired:
            return {"skip": f"stopped at the time budget ({timeout:.0f} s)"}
        with open(os.path.join(self.a.out, "children.log"), "a") as f:  # loaders' own words
            f.write(f"== device_load.py {' '.join(args[:4])}: exit {p.returncode}\n{p.stderr}")
        try:
            return json.loads(p.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError):
            tail = (p.stderr or p.stdout).strip().splitlines()[-1:] or [f"exit {p.returncode}"]
            return {"skip": f"failed: {tail[0][:200]}"}

    # -------------------------------------------------------------- checks before the rows

    def check_gpu(self):
        smi = subprocess.run("nvidia-smi --query-gpu=name,memory.total,driver_version "
                             "--format=csv,noheader", shell=True, capture_output=True, text=True)
        name = smi.stdout.strip().splitlines()[0] if smi.returncode == 0 and smi.stdout.strip() \
            else ""
        r = self.child("peak", str(16 << 20), "1", timeout=60)
        self.gpu_ok = "skip" not in r
        if not self.gpu_ok:
            self.gpu_why = r["skip"]
            self.device = f"no GPU ({self.gpu_why}): every GPU row says so"
        elif name:
            self.device = name
        else:
            self.gpu_why = "stand-in CUDA runtime"
            self.device = ("no GPU: a CUDA runtime answers but nvidia-smi does not, a stand-in "
                           "(tests/gpu/fake_cudart.c?): its GB/s are host memcpy, not a GPU")
        say(f"GPU: {self.device}")

    def generate(self):
        spec = self.a.mkckpt or (DEFAULT_CKPT if self.gpu_ok else SMALL_CKPT)
        if not self.a.mkckpt and not self.gpu_ok:
            say(f"no GPU: a small checkpoint ({spec}) instead of 8 GB")
        stamp = os.path.join(self.ckpt, ".complete")
        if os.path.exists(stamp) and open(stamp).read() == spec:
            say(f"checkpoint: {self.ckpt} (kept from an earlier run: {spec})")
        else:
            t0 = time.time()
            subprocess.run(["rm", "-rf", self.ckpt], check=True)
            subprocess.run([self.mk, *shlex.split(spec), self.ckpt], check=True,
                           stdout=subprocess.DEVNULL)
            os.sync()  # written pages are dirty until then, and DONTNEED keeps dirty pages
            with open(stamp, "w") as f:
                f.write(spec)
            say(f"checkpoint: generated in {time.time() - t0:.1f} s ({spec})")
        self.files = sorted(os.path.join(self.ckpt, f) for f in os.listdir(self.ckpt)
                            if f.endswith(".safetensors"))
        self.total = self.rank_bytes = 0
        for f in self.files:  # what each row must move: every tensor, and rank R's experts
            with open(f, "rb") as fh:
                hdr = json.loads(fh.read(int.from_bytes(fh.read(8), "little")))
            for k, t in hdr.items():
                if k == "__metadata__":
                    continue
                size = t["data_offsets"][1] - t["data_offsets"][0]
                self.total += size
                if ".mlp.experts." in k:
                    e = t["shape"][0]
                    self.rank_bytes += size // e * (e * (RANK + 1) // EP - e * RANK // EP)
        say(f"checkpoint: {len(self.files)} files, {self.total / 1e9:.3f} GB of tensors, on "
            f"{fs_type(self.ckpt)}")

    def check_cold(self):
        big = max(self.files, key=os.path.getsize)
        dl.warm([big])
        dl.evict([big])
        r = dl.resident(big)
        self.cold_ok = r < 0.05
        self.cold_why = "" if self.cold_ok else \
            f"posix_fadvise DONTNEED left {r:.0%} of {os.path.basename(big)} cached"
        say("page cache: DONTNEED evicts: cold rows measured" if self.cold_ok else
            f"page cache: {self.cold_why}: no cold rows")

    def check_fuse(self):
        mnt = os.path.join(self.a.work, "mnt-check")
        if not os.path.exists("/dev/fuse"):
            self.fuse_why = "no /dev/fuse"
        else:
            try:
                dl.fuse_mount(self.qv, self.ckpt, "ro", mnt)
                self.fuse_ok = os.path.ismount(mnt) and any(
                    f.endswith(".safetensors") for f in os.listdir(mnt))
                self.fuse_why = "" if self.fuse_ok else "mounted but lists no safetensors"
            except dl.Skip as e:
                self.fuse_why = str(e)
            finally:
                dl.fuse_umount(mnt)
        say("FUSE: /dev/fuse mounts here: FUSE rows measured" if self.fuse_ok else
            f"FUSE: cannot mount ({self.fuse_why}): no FUSE rows")

    # -------------------------------------------------------------- rows

    def stage(self, state, reps, opts):
        """`qvlmoefs stage` REPS times; the first verifies every byte."""
        if not self.gpu_ok:
            return {"skip": f"no GPU ({self.gpu_why})"}
        secs, nbytes, notes = [], 0, set()
        for i in range(reps):
            if secs and self.left() < max(secs) * 1.5 + 10:
                break
            dl.prepare(state, self.files)
            samples = "0" if i == 0 or "--all" not in opts else "1024"
            p = subprocess.run([self.qv, "stage", self.ckpt, *opts, "--samples", samples],
                               capture_output=True, text=True, timeout=max(30, self.left()))
            got = parse_stage(p.stdout)
            if p.returncode or not got:
                tail = (p.stderr or p.stdout).strip().splitlines()[-1:] or [f"exit {p.returncode}"]
                return {"skip": f"failed: {tail[0][:200]}"}
            nbytes, s, verified = got
            want = self.total if "--all" in opts else self.rank_bytes
            if nbytes != want:
                return {"skip": f"staged {nbytes} bytes, the checkpoint's selection has {want}"}
            if samples == "0" and verified != nbytes:
                return {"skip": f"verified {verified} of {nbytes} bytes"}
            secs.append(s)
            notes.add("every byte verified" if samples == "0" else "1024 ranges verified")
        return {"secs": secs, "bytes": nbytes, "note": ", ".join(sorted(notes))}

    def gpu_mount(self, state, reps):
        """mount -o gpu=0,ep_size=8,ep_rank=3 until gpu.json has no pending tensor; the IPC
        check from a second process after the first."""
        if not self.gpu_ok or not self.fuse_ok:
            return {"skip": f"no GPU ({self.gpu_why})" if not self.gpu_ok else
                    f"no FUSE ({self.fuse_why})"}
        mnt = os.path.join(self.a.work, "mnt-gpu")
        secs, nbytes, note = [], 0, ""
        for i in range(reps):
            if secs and self.left() < max(secs) * 1.5 + 10:
                break
            dl.prepare(state, self.files)
            t0 = time.perf_counter()
            try:
                dl.fuse_mount(self.qv, self.ckpt, f"gpu=0,ep_size={EP},ep_rank={RANK}", mnt)
                st = wait_staged(mnt, self.left())
                secs.append(time.perf_counter() - t0)
                if not st or any(t["state"] != "ready" for t in st["tensors"]):
                    return {"skip": f"staging did not finish: {summary(st)}"}
                nbytes = st["bytes"]
                if nbytes != self.rank_bytes:
                    return {"skip": f"staged {nbytes} bytes, rank {RANK}'s experts are "
                                    f"{self.rank_bytes}"}
                if i == 0:
                    r = self.child("ipc", mnt, timeout=120)
                    if "skip" in r:
                        return {"skip": f"IPC check: {r['skip']}"}
                    if not r["equal"]:
                        return {"skip": f"IPC check: DIFFERENT bytes in {r['different']}"}
                    note = f"IPC: {r['bytes'] / 1e9:.3f} GB equal to the files; {r['note']}"
            except dl.Skip as e:
                return {"skip": str(e)}
            finally:
                dl.fuse_umount(mnt)
        return {"secs": secs, "bytes": nbytes, "note": "mount to all ready; " + note}

    def loader(self, name, state, reps, *extra):
        r = self.child("load", name, state, str(reps), *extra, *self.files)
        want = {"safetensors-rank": self.rank_bytes, "fuse-rank": None}.get(name, self.total)
        if "skip" not in r and want is not None and r["bytes"] != want:
            return {"skip": f"loaded {r['bytes']} bytes, the checkpoint's selection has {want}"}
        return r

    def measure(self, name, states, fn):
        res = {}
        for state in states:
            if state == "cold" and not self.cold_ok:
                res[state] = {"skip": self.cold_why}
            elif self.left() < 10:
                res[state] = {"skip": "time budget spent"}
            else:
                res[state] = fn(state)
            r = res[state]
            say(f"  {name} [{state}]: " + (f"skipped: {r['skip']}" if "skip" in r else
                f"{fmt_gbs(r)} GB/s, {r['bytes'] / 1e9:.3f} GB {r.get('note', '')}"))
        self.rows.append((name, res))

    def rows_all(self, states):
        n, R = self.a.reps, f"{RANK}/{EP}"
        rank_opts = ["-o", f"ep_size={EP},ep_rank={RANK}"]

        def peak(nbytes):
            return lambda s: self.child("peak", str(nbytes), str(n), timeout=120)

        rows = [
            ("qvlmoefs stage --all", lambda s: self.stage(s, n, ["--all"])),
            ("safetensors safe_open + .to(cuda), all", lambda s: self.loader("safetensors", s, n)),
            ("fastsafetensors (no GDS), all", lambda s: self.loader("fastsafetensors", s, n)),
            ("InstantTensor, all", lambda s: self.loader("instanttensor", s, n)),
            (f"qvlmoefs stage, rank {R} experts", lambda s: self.stage(s, n, rank_opts)),
            (f"safetensors get_slice + .to(cuda), rank {R} experts",
             lambda s: self.loader("safetensors-rank", s, n, "--rank", R)),
            (f"FUSE: safe_open + .to(cuda) of ep-rank-{RANK} (ep_size={EP})",
             lambda s: self.loader("fuse-rank", s, n, "--mount", self.qv, self.ckpt, R)
             if self.fuse_ok else {"skip": f"no FUSE ({self.fuse_why})"}),
            (f"FUSE: -o gpu=0,ep_size={EP},ep_rank={RANK}, IPC map from a 2nd process",
             lambda s: self.gpu_mount(s, n)),
        ]
        if "warm" in states:  # the yardstick: no source, no cache state
            self.measure("pinned cudaMemcpy (peak), all-tensor size", ["peak"],
                         lambda s: peak(self.total)(s))
        for name, fn in rows:
            self.measure(name, states, fn)
        if "warm" in states:
            rank = self.result(f"qvlmoefs stage, rank {R} experts", "warm")
            size = rank.get("bytes") if rank else None
            self.measure("pinned cudaMemcpy (peak), rank size", ["peak"],
                         lambda s: peak(size)(s) if size else {"skip": "no rank size"})

    def result(self, name, state):
        for n, res in self.rows:
            if n == name and state in res and "skip" not in res[state]:
                return res[state]
        return None


# ------------------------------------------------------------------ helpers

def fs_type(path):
    p = subprocess.run(["stat", "-f", "-c", "%T", path], capture_output=True, text=True)
    return p.stdout.strip() or "?"


def parse_stage(out):
    """(bytes, seconds, verified bytes) from `qvlmoefs stage`'s two summary lines."""
    staged = verified = None
    for line in out.splitlines():
        w = line.split()
        if line.startswith("staged ") and len(w) > 6:  # staged X GB (N bytes) in S s: ...
            staged = (int(w[3].lstrip("(")), float(w[6]))
        elif line.startswith("verified "):
            verified = int(w[1]) if "MISMATCH" not in line else -1
    if not staged or verified is None:
        return None
    return staged[0], staged[1], verified


def wait_staged(mnt, timeout):
    end = time.time() + timeout
    st = None
    while time.time() < end:
        try:
            with open(os.path.join(mnt, ".qvlmoefs", "gpu.json")) as f:
                st = json.load(f)
        except (OSError, ValueError):
            st = None
        if st and st["tensors"] and all(t["state"] != "pending" for t in st["tensors"]):
            return st
        time.sleep(0.02)
    return st


def summary(st):
    if not st:
        return "no gpu.json"
    states = [t["state"] for t in st["tensors"]]
    return ", ".join(f"{states.count(s)} {s}" for s in sorted(set(states))) or "no tensors"


def gbs(r):
    return [r["bytes"] / s / 1e9 for s in r["secs"] if s > 0]


def fmt_gbs(r):
    if not r or "skip" in r or not gbs(r):
        return "-"
    v = gbs(r)
    return f"{statistics.median(v):.2f}" + (f" (n={len(v)})" if len(v) != 3 else "")


def median(r):
    return statistics.median(gbs(r)) if r and "skip" not in r and gbs(r) else None


def report(run, out):
    lines = [f"device: {run.device}", "",
             "| row | GB | warm GB/s | cold GB/s | notes |", "|---|---|---|---|---|"]
    for name, res in run.rows:
        cells = []
        for st in ("warm", "cold"):
            r = res.get(st) or res.get("peak") if st == "warm" else res.get(st)
            cells.append(fmt_gbs(r) if r and "skip" not in r else
                         ("-" if r is None else "skipped"))
        r0 = next((r for r in res.values() if "skip" not in r), None)
        skips = {st: r["skip"] for st, r in res.items() if "skip" in r}
        notes = "; ".join(f"{st}: {why}" for st, why in skips.items())
        if len(skips) > 1 and len(set(skips.values())) == 1:
            notes = next(iter(skips.values()))
        notes = "; ".join(x for x in (r0.get("note", "") if r0 else "", notes) if x)
        size = f"{r0['bytes'] / 1e9:.3f}" if r0 else "-"
        lines.append(f"| {name} | {size} | {cells[0]} | {cells[1]} | {notes} |")
    ratios = []
    peak_all = median(run.result("pinned cudaMemcpy (peak), all-tensor size", "peak"))
    peak_rank = median(run.result("pinned cudaMemcpy (peak), rank size", "peak"))
    third = ["safetensors safe_open + .to(cuda), all", "fastsafetensors (no GDS), all",
             "InstantTensor, all"]
    for st in ("warm", "cold"):
        sa = median(run.result("qvlmoefs stage --all", st))
        sr = median(run.result(f"qvlmoefs stage, rank {RANK}/{EP} experts", st))
        if sa and peak_all:
            ratios.append(f"{st}: stage --all / pinned peak = {sa / peak_all:.2f} "
                          f"(target 0.8: {'met' if sa / peak_all >= 0.8 else 'NOT met'})")
        if sr and peak_rank:
            ratios.append(f"{st}: stage rank / pinned peak = {sr / peak_rank:.2f}")
        best = max(((median(run.result(n, st)) or 0, n) for n in third), default=(0, ""))
        if sa and best[0]:
            ratios.append(f"{st}: stage --all / fastest third-party ({best[1]}) = "
                          f"{sa / best[0]:.2f} (target 1.0: {'met' if sa >= best[0] else 'NOT met'})")
    if not ratios:
        ratios.append("no ratios: the rows they need were not measured (see the table)")
    text = "\n".join(lines) + "\n\nratios:\n" + "\n".join("  " + r for r in ratios) + "\n"
    say("\n" + text)
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(text)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"rows": run.rows, "ratios": ratios, "gpu": run.gpu_why or "yes",
                   "fuse": run.fuse_why or "yes", "cold": run.cold_why or "yes"}, f, indent=1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--deadline", type=float, required=True)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--mkckpt", default="")
    ap.add_argument("--python", default=sys.executable)
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    os.makedirs(a.out, exist_ok=True)
    run = Run(a)
    say(f"host: {platform.node()}, {os.cpu_count()} CPUs, kernel {platform.release()}, "
        f"python {platform.python_version()}; {run.left():.0f} s left")
    run.check_gpu()
    run.generate()
    run.check_cold()
    run.check_fuse()
    dl.warm(run.files)
    say("== rows, sources in the page cache (warm)")
    run.rows_all(["warm"])
    if run.cold_ok:
        say("== rows, sources evicted (cold)")
        cold = run.rows[:]
        run.rows = []
        run.rows_all(["cold"])
        merged = {n: dict(r) for n, r in cold}
        for n, r in run.rows:
            merged.setdefault(n, {}).update(r)
        run.rows = list(merged.items())
    else:
        for _, res in run.rows:
            res.setdefault("cold", {"skip": run.cold_why}) if "peak" not in res else None
    report(run, a.out)
    say(f"device run done, {run.left():.0f} s of the budget left")
    return 0


if __name__ == "__main__":
    sys.exit(main())
