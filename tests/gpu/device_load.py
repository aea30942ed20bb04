#!/usr/bin/env python3
"""device_load.py - the measuring half of tests/gpu/device-run.sh, run as a child process so a
loader that crashes or hangs costs one row, not the run. Standard library only at import;
torch and the loaders are imported by the subcommands that need them.

    device_load.py probe                       is there a CUDA runtime with a device?
    device_load.py peak BYTES REPS             pinned cudaMemcpy of BYTES (ctypes, no torch)
    device_load.py load LOADER STATE REPS FILE...   one loader, REPS times, STATE warm|cold
    device_load.py ipc MOUNT                   map every staged tensor of a gpu= mount here

Each prints one JSON object on its last line: {"secs": [...], "bytes": N, "note": ...} or
{"skip": "why"}. LOADER: safetensors, safetensors-rank (--rank R/W), fastsafetensors,
instanttensor, fuse-rank (--mount QVLMOEFS SOURCE R/W: safe_open of a fresh ep_size=W mount's
ep-rank-R folder). DEVICE_RUN_TORCH_DEVICE (default cuda:0) is for dry runs on a CPU.
"""
import ctypes
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "mount-scripts"))
import qvlmoefs_gpu  # noqa: E402  (standard library only)

CHUNK = 16 << 20


class Skip(Exception):
    """A row this machine cannot measure; the message says why."""


# ------------------------------------------------------------------ page cache

def resident(path):
    """Fraction of path's pages in the page cache (mincore on a shared mapping)."""
    size = os.path.getsize(path)
    if size == 0:
        return 1.0
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, 1, 1, fd, 0)  # PROT_READ, MAP_SHARED
        if addr in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), f"mmap {path}")
        pages = (size + 4095) // 4096
        vec = (ctypes.c_ubyte * pages)()
        rc = libc.mincore(ctypes.c_void_p(addr), size, vec)
        libc.munmap(ctypes.c_void_p(addr), size)
        if rc:
            raise OSError(ctypes.get_errno(), f"mincore {path}")
        return (pages - bytes(vec).count(0)) / pages
    finally:
        os.close(fd)


def evict(files):
    """Drop files from the page cache (clean pages only: the generator's were synced)."""
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def warm(files):
    """Bring files into the page cache, reading only those not already there."""
    buf = bytearray(CHUNK)
    for f in files:
        if resident(f) >= 0.99:
            continue
        with open(f, "rb", buffering=0) as fh:
            while fh.readinto(buf):
                pass


def prepare(state, files):
    (warm if state == "warm" else evict)(files)


# ------------------------------------------------------------------ the CUDA runtime, by ctypes

def cudart():
    """libcudart through ctypes, device 0 selected; Skip when there is none."""
    try:
        rt = qvlmoefs_gpu._cudart()
    except OSError as e:
        raise Skip(f"no GPU: {e}")
    n = ctypes.c_int(0)
    if rt.cudaGetDeviceCount(ctypes.byref(n)) != 0 or n.value < 1:
        raise Skip("no GPU: the CUDA runtime sees no device")
    if rt.cudaSetDevice(0) != 0:
        raise Skip("no GPU: cudaSetDevice(0) failed")
    return rt


def cmd_probe():
    """The number of CUDA devices; Skip (with why) when there is no runtime or device."""
    rt = cudart()
    n = ctypes.c_int(0)
    rt.cudaGetDeviceCount(ctypes.byref(n))
    return n.value


def cmd_peak(nbytes, reps):
    """Pinned host buffer of 256 MiB (or less) copied with cudaMemcpy until nbytes are done."""
    rt = cudart()
    chunk = min(nbytes, 256 << 20)
    host, dev = ctypes.c_void_p(), ctypes.c_void_p()
    if rt.cudaHostAlloc(ctypes.byref(host), ctypes.c_size_t(chunk), 0) != 0:
        raise Skip(f"cudaHostAlloc of {chunk} bytes failed")
    if rt.cudaMalloc(ctypes.byref(dev), ctypes.c_size_t(nbytes)) != 0:
        raise Skip(f"cudaMalloc of {nbytes} bytes failed")
    ctypes.memset(host, 0x5A, chunk)
    sync = getattr(rt, "cudaDeviceSynchronize", None)
    secs = []
    for _ in range(reps + 1):  # the first pass warms the copy engines and is not counted
        t0, off = time.perf_counter(), 0
        while off < nbytes:
            n = min(chunk, nbytes - off)
            if rt.cudaMemcpy(ctypes.c_void_p(dev.value + off), host, ctypes.c_size_t(n), 1):
                raise Skip("cudaMemcpy failed")
            off += n
        if sync:
            sync()
        secs.append(time.perf_counter() - t0)
    rt.cudaFree(dev)
    rt.cudaFreeHost(host)
    return {"secs": secs[1:], "bytes": nbytes, "note": f"{chunk / 2**20:g} MiB pinned chunks"}


# ------------------------------------------------------------------ loaders (torch)

def torch_device():
    """(torch, device string); Skip without torch or without a CUDA device for it."""
    try:
        import torch
    except ImportError as e:
        raise Skip(f"torch missing: {e}")
    dev = os.environ.get("DEVICE_RUN_TORCH_DEVICE", "cuda:0")
    if dev.startswith("cuda") and not torch.cuda.is_available():
        raise Skip(f"no GPU: torch {torch.__version__} says torch.cuda.is_available() is False")
    torch.zeros(1, device=dev)  # context creation, outside the timed part
    return torch, dev


def _sync(torch, dev):
    if dev.startswith("cuda"):
        torch.cuda.synchronize()


def nbytes_of(ts):
    return sum(t.numel() * t.element_size() for t in ts)


def load_safetensors(files, dev, rank=None):
    """safe_open + .to(dev) of every tensor, or of rank r of w's expert slices (get_slice)."""
    from safetensors import safe_open
    out = []
    for f in files:
        with safe_open(f, "pt") as s:
            for k in s.keys():
                if rank is None:
                    out.append(s.get_tensor(k).to(dev))
                elif ".mlp.experts." in k:
                    sl = s.get_slice(k)
                    e = sl.get_shape()[0]
                    r, w = rank
                    out.append(sl[e * r // w:e * (r + 1) // w].to(dev))
    return out


def load_fastsafetensors(files, dev):
    """fastsafetensors without GDS: pread into bounce buffers, then to the device."""
    from fastsafetensors import SafeTensorsFileLoader
    loader = SafeTensorsFileLoader(None, dev, nogds=True)
    try:
        loader.add_filenames({0: list(files)})
        fb = loader.copy_files_to_device()
        out = [fb.get_tensor(k) for k in loader.get_keys()]
        fb.close()  # the tensors keep their storage
    finally:
        loader.close()
    return out


def load_instanttensor(files, dev, state):
    """InstantTensor over all files at once; buffered I/O when the files are cached (its
    default Direct I/O would ignore the page cache), its default backend otherwise."""
    from instanttensor import BackendPolicy, safe_open
    kw = {"backend": BackendPolicy.BUFFERED} if state == "warm" else {}
    device = int(dev.split(":")[1]) if dev.startswith("cuda:") else dev
    with safe_open(list(files), framework="pt", device=device, **kw) as f:
        return [t for _, t in f.tensors()]


def fuse_mount(qv, src, opts, mnt):
    os.makedirs(mnt, exist_ok=True)
    p = subprocess.run([qv, src, mnt, "-o", opts], capture_output=True, text=True, timeout=120)
    if p.returncode:
        lines = (p.stderr or p.stdout).strip().splitlines()
        raise Skip(f"mount failed: {lines[-1] if lines else f'exit {p.returncode}'}")


def fuse_umount(mnt):
    for cmd in (["fusermount3", "-u", mnt], ["umount", mnt], ["umount", "-l", mnt]):
        try:
            if subprocess.run(cmd, capture_output=True).returncode == 0:
                return
        except FileNotFoundError:
            pass


def cmd_load(loader, state, reps, files, rank=None, mount=None):
    torch, dev = torch_device()
    _import_loader(loader)
    secs, total, note = [], 0, ""
    deadline = float(os.environ.get("DEVICE_RUN_DEADLINE", "inf"))
    for _ in range(reps):
        if secs and time.time() + max(secs) * 1.5 + 5 > deadline:
            break  # the run's time budget: fewer repetitions, said by n in the table
        prepare(state, files)
        mnt = None
        if mount:  # a fresh mount each time: the kernel keeps no pages of the last one
            qv, src, (r, w) = mount
            mnt = os.path.join(os.path.dirname(src.rstrip("/")), "mnt-fuse-rank")
            fuse_mount(qv, src, f"ep_size={w}", mnt)
        try:
            t0 = time.perf_counter()
            if loader in ("safetensors", "safetensors-rank"):
                ts = load_safetensors(files, dev, rank)
            elif loader == "fastsafetensors":
                ts = load_fastsafetensors(files, dev)
            elif loader == "instanttensor":
                ts = load_instanttensor(files, dev, state)
                note = "buffered I/O" if state == "warm" else "default backend (Direct I/O)"
            elif loader == "fuse-rank":
                d = os.path.join(mnt, f"ep-rank-{r}")
                ts = load_safetensors(sorted(os.path.join(d, f) for f in os.listdir(d)
                                             if f.endswith(".safetensors")), dev)
            else:
                raise Skip(f"unknown loader {loader}")
            _sync(torch, dev)
            secs.append(time.perf_counter() - t0)
        finally:
            if mnt:
                fuse_umount(mnt)
        total = nbytes_of(ts)
        del ts
        if dev.startswith("cuda"):
            torch.cuda.empty_cache()
    return {"secs": secs, "bytes": total, "note": note}


def _import_loader(loader):
    """Skip with the import error when the loader's package is missing."""
    mod = {"fastsafetensors": "fastsafetensors", "instanttensor": "instanttensor"}.get(
        loader, "safetensors")
    try:
        __import__(mod)
    except Exception as e:  # a wheel for another CUDA or torch fails here, not only ImportError
        raise Skip(f"{mod} missing: {type(e).__name__}: {e}")


# ------------------------------------------------------------------ IPC, from a second process

def _file_bytes(path, name, size):
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        h = json.loads(f.read(n))
        f.seek(8 + n + h[name]["data_offsets"][0])
        return f.read(size)


def cmd_ipc(mnt):
    """Every staged tensor, opened through the IPC handle in this process and copied back,
    compared with the bytes of its file in the mount; one through torch when it has CUDA."""
    st = qvlmoefs_gpu.status(mnt)
    if not st["tensors"] or any(t["state"] != "ready" for t in st["tensors"]):
        raise Skip(f"not all staged: {sorted({t['state'] for t in st['tensors']})}")
    rt = cudart()
    t0 = time.perf_counter()
    base = qvlmoefs_gpu.device_pointer(st)
    opened = time.perf_counter() - t0
    rt.cudaMemcpy.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    bad, total = [], 0
    for t in st["tensors"]:
        host = ctypes.create_string_buffer(t["size"])
        if rt.cudaMemcpy(host, base + t["offset"], t["size"], 2):
            raise Skip("cudaMemcpy from the mapped allocation failed")
        if host.raw != _file_bytes(os.path.join(mnt, t["file"]), t["name"], t["size"]):
            bad.append(t["name"])
        total += t["size"]
    note = f"{len(st['tensors'])} tensors mapped in {opened * 1e3:.1f} ms"
    try:
        torch, dev = torch_device()
        if not dev.startswith("cuda"):
            raise Skip(f"torch on {dev}")
        t = st["tensors"][0]
        x = qvlmoefs_gpu.tensor(mnt, t["name"])
        ok = x.contiguous().cpu().view(torch.uint8).numpy().tobytes() == _file_bytes(
            os.path.join(mnt, t["file"]), t["name"], t["size"])
        note += f"; torch view of {t['name']}: {'equal' if ok else 'DIFFERENT'}"
        bad += [] if ok else [t["name"] + " (torch)"]
    except Skip as e:
        note += f"; torch view not checked ({e})"
    return {"secs": [], "bytes": total, "equal": not bad, "different": bad[:5], "note": note}


def main(argv):
    try:
        if argv[1] == "probe":
            r = {"devices": cmd_probe()}
        elif argv[1] == "peak":
            r = cmd_peak(int(argv[2]), int(argv[3]))
        elif argv[1] == "ipc":
            r = cmd_ipc(argv[2])
        elif argv[1] == "load":
            loader, state, reps, rest = argv[2], argv[3], int(argv[4]), argv[5:]
            rank = mount = None
            if rest[:1] == ["--rank"]:
                rank, rest = tuple(map(int, rest[1].split("/"))), rest[2:]
            if rest[:1] == ["--mount"]:
                mount = (rest[1], rest[2], tuple(map(int, rest[3].split("/"))))
                rest = rest[4:]
            r = cmd_load(loader, state, reps, rest, rank, mount)
        else:
            raise Skip(f"unknown subcommand {argv[1]}")
    except Skip as e:
        r = {"skip": str(e)}
    print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
