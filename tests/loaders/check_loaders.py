#!/usr/bin/python3
"""check_loaders.py: load every tensor of a mounted view the way real loaders do, and compare
it with the source tensor cut by numpy (an independent path to the expected bytes).

    check_loaders.py SRC VIEW [--view native|hf] [--ep-size W --ep-rank R
                              [--ep-shard-size K --ep-shard-rank S]]

Loaders, each over every virtual safetensors file:
  torch    torch.UntypedStorage.from_file(path, shared=False, nbytes=size) (PyTorch maps the
           file MAP_PRIVATE, as safetensors' torch path does), tensors at the header's offsets,
           materialized from 4 threads at once as transformers v5 does
  numpy    numpy.memmap of the file, tensors from 4 threads
  shared   an mmap MAP_SHARED (older safetensors)
  read     plain read() of the whole file
Needs Debian's python3-torch and python3-numpy (/usr/bin/python3). Prints one summary line;
exit 1 on any difference.
"""
import argparse, concurrent.futures, json, mmap, os, re, struct, sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import check_view  # noqa: E402  the contract's key renaming, written independently of the C code
import numpy as np  # noqa: E402
import torch  # noqa: E402

TORCH = {"BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16,
         "F16": torch.float16, "BF16": torch.bfloat16, "I32": torch.int32, "F32": torch.float32,
         "F64": torch.float64, "I64": torch.int64}


def header(path):
    """(tensors dict, data start, metadata) of a safetensors file."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        h = json.loads(f.read(n))
    return {k: v for k, v in h.items() if k != "__metadata__"}, 8 + n, h.get("__metadata__", {})


def sources(src, view_naming):
    """view key -> (source path, data start, tensor entry), through check_view's renaming."""
    shards = []
    for d, _, files in os.walk(src, followlinks=True):
        shards += [os.path.join(d, f) for f in files if f.endswith(".safetensors")]
    keys = [k for p in shards for k in header(p)[0]]
    native = any(k.endswith(check_view.NATIVE_SUFFIXES) for k in keys)
    src_naming = "native" if native else "hf"
    view_naming = view_naming or ("hf" if native else "native")
    prefix = "model." if any(k.startswith("model.") for k in keys) else ""
    exclude = re.compile(r".*_extra_state.*")
    out = {}
    for p in shards:
        h, base, _ = header(p)
        for k, t in h.items():
            v = check_view.rename(k, src_naming, view_naming, prefix, exclude)
            if v is not None:
                out[v] = (p, base, t, check_view.is_expert(k, src_naming))
    return out


def expected(entry, args):
    """The bytes the view tensor must hold: the source tensor, cut by numpy."""
    path, base, t, expert = entry
    b, e = t["data_offsets"]
    raw = np.memmap(path, dtype=np.uint8, mode="r", offset=base + b, shape=(e - b,)) if e > b \
        else np.zeros(0, np.uint8)
    if not (expert and args.ep_size):
        return raw.tobytes()
    shape = t["shape"]
    cube = raw.reshape(shape[0], shape[1], -1)
    start, count = check_view.ep_range(shape[0], args.ep_size, args.ep_rank)
    cube = cube[start:start + count]
    if args.ep_shard_size > 1:
        part = shape[1] // args.ep_shard_size
        cube = cube[:, args.ep_shard_rank * part:(args.ep_shard_rank + 1) * part]
    return np.ascontiguousarray(cube).tobytes()


def torch_loader(path, size, tensors, base):
    """safetensors' torch path: one MAP_PRIVATE storage, tensors at the header's offsets."""
    storage = torch.UntypedStorage.from_file(path, shared=False, nbytes=size)
    whole = torch.tensor([], dtype=torch.uint8).set_(storage)

    def one(item):
        k, t = item
        b, e = t["data_offsets"]
        x = whole[base + b:base + e].clone()  # materialize, as loaders copy into parameters
        if t["dtype"] in TORCH and e > b:
            x = x.view(TORCH[t["dtype"]]).reshape(t["shape"])  # the typed tensor works too
            x = x.contiguous().view(torch.uint8).reshape(-1)
        return k, x.numpy().tobytes()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        return dict(pool.map(one, tensors.items()))


def numpy_loader(path, size, tensors, base):
    """numpy.memmap of the file, tensors sliced from 4 threads."""
    mm = np.memmap(path, dtype=np.uint8, mode="r", shape=(size,))

    def one(item):
        k, t = item
        b, e = t["data_offsets"]
        return k, mm[base + b:base + e].tobytes()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        return dict(pool.map(one, tensors.items()))


def shared_loader(path, size, tensors, base):
    """An mmap MAP_SHARED, as older safetensors versions map."""
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        out = {k: mm[base + t["data_offsets"][0]:base + t["data_offsets"][1]] for k, t in tensors.items()}
        mm.close()
    return out


def read_loader(path, size, tensors, base):
    """Plain read() of the whole file."""
    with open(path, "rb") as f:
        raw = f.read()
    assert len(raw) == size, f"{path}: read {len(raw)} of {size} bytes"
    return {k: raw[base + t["data_offsets"][0]:base + t["data_offsets"][1]] for k, t in tensors.items()}


LOADERS = {"torch": torch_loader, "numpy": numpy_loader, "shared": shared_loader, "read": read_loader}


def main(argv):
    p = argparse.ArgumentParser()
    p.add_argument("src"), p.add_argument("view")
    p.add_argument("--view", dest="naming", choices=("native", "hf"))
    p.add_argument("--ep-size", type=int, default=0), p.add_argument("--ep-rank", type=int, default=0)
    p.add_argument("--ep-shard-size", type=int, default=1), p.add_argument("--ep-shard-rank", type=int, default=0)
    args = p.parse_args(argv)
    want = sources(args.src, args.naming)
    bad = files = tensors = nbytes = 0
    for d, dirs, fs in os.walk(args.view):
        dirs[:] = [x for x in dirs if x != ".qvlmoefs"]
        for f in sorted(fs):
            if not f.endswith(".safetensors"):
                continue
            path = os.path.join(d, f)
            size = os.path.getsize(path)
            h, base, _ = header(path)
            files += 1
            for name, loader in LOADERS.items():
                got = loader(path, size, h, base)
                for k in h:
                    if k not in want:
                        print(f"check_loaders: {path}: {k}: no source tensor", file=sys.stderr)
                        bad += 1
                    elif got[k] != expected(want[k], args):
                        print(f"check_loaders: {path}: {k}: {name} loader got other bytes",
                              file=sys.stderr)
                        bad += 1
                    else:
                        tensors += name == "torch"
                        nbytes += len(got[k])
    print(f"check_loaders: {files} files, {tensors} tensors, {nbytes} bytes through "
          f"{len(LOADERS)} loaders (torch {torch.__version__}, numpy {np.__version__}): "
          + ("OK" if not bad and files else f"{bad} differences"))
    return 0 if not bad and files else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
