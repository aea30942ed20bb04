"""The seed files of st_agree.py: valid safetensors files that every mutation starts from.

They come from the writers a loader meets: the official safetensors.torch and
safetensors.numpy save_file (every byte-sized dtype, scalars, empty tensors, non-ASCII and
empty metadata) and this project's qvlmoefs-mkckpt (both namings, sharded and not, padded and
not, shuffled keys). Their bytes are the same in every run, so an input number and a seed
name the input alone. They live apart from the mutations because building them needs torch,
numpy and the built tree (ROOT, BUILD), which nothing else of the generator does.
"""
import json
import os
import random
import subprocess
import tempfile
from pathlib import Path

from st_agree_format import Obj, Style, assemble, dump, load_pairs, split

ROOT = Path(__file__).resolve().parents[2]
BUILD = os.environ.get("BUILD", "build")
MKCKPT = ROOT / BUILD / "qvlmoefs-mkckpt"


def make_seeds(mkckpt=MKCKPT):
    """[(name, bytes)] of the seed files, the same bytes in every run."""
    import numpy as np
    import safetensors.numpy
    import safetensors.torch
    import torch

    seeds = []
    with tempfile.TemporaryDirectory(prefix="st_agree.") as tmp:
        tmp = Path(tmp)
        mixed = {"w.f32": torch.arange(6, dtype=torch.float32).reshape(2, 3),
                 "w.bf16": torch.arange(4, dtype=torch.bfloat16),
                 "w.f16": torch.arange(3, dtype=torch.float16),
                 "i64.scalar": torch.tensor(7, dtype=torch.int64),
                 "mask": torch.tensor([True, False, True]),
                 "u8": torch.arange(5, dtype=torch.uint8),
                 "i8": torch.arange(-2, 2, dtype=torch.int8),
                 "i16": torch.arange(2, dtype=torch.int16), "i32": torch.arange(3, dtype=torch.int32),
                 "u16": torch.ones(2, dtype=torch.uint16), "u32": torch.ones(2, dtype=torch.uint32),
                 "u64": torch.ones(2, dtype=torch.uint64), "f64": torch.arange(2, dtype=torch.float64),
                 "c64": torch.ones(2, dtype=torch.complex64),
                 "fp8.e4m3": torch.zeros(4, dtype=torch.float8_e4m3fn),
                 "fp8.e5m2": torch.zeros(2, 2, dtype=torch.float8_e5m2),
                 "fp8.e8m0": torch.ones(3, dtype=torch.float8_e8m0fnu),
                 "fp8.e4m3fnuz": torch.zeros(2, dtype=torch.float8_e4m3fnuz),
                 "fp8.e5m2fnuz": torch.zeros(3, dtype=torch.float8_e5m2fnuz),
                 "empty": torch.zeros(0, 3), "model.layers.0.mlp.experts.0.up_proj.weight":
                 torch.arange(8, dtype=torch.bfloat16).reshape(2, 4)}
        safetensors.torch.save_file(mixed, tmp / "pt-mixed.safetensors",
                                    metadata={"format": "pt", "note": "v\u00e9rsion \u4e2d \U0001f600",
                                              "": "empty key"})
        safetensors.torch.save_file({"a": torch.ones(2, 2), "b": torch.zeros(3, dtype=torch.int64)},
                                    tmp / "pt-small.safetensors")
        safetensors.torch.save_file({}, tmp / "pt-empty.safetensors")
        safetensors.numpy.save_file({"f64": np.arange(4, dtype=np.float64),
                                     "i8": np.arange(-3, 3, dtype=np.int8).reshape(2, 3),
                                     "c64": np.ones(2, dtype=np.complex64),
                                     "flags": np.array([True, False]),
                                     "zero": np.zeros((0, 2), dtype=np.float32),
                                     "s": np.array(3.5, dtype=np.float32)},
                                    tmp / "np.safetensors", metadata={"format": "np"})
        for name in ("pt-mixed", "pt-small", "pt-empty", "np"):
            seeds.append((name, sorted_metadata((tmp / f"{name}.safetensors").read_bytes())))
        small = ["--layers", "1", "--hidden", "8", "--experts", "2", "--moe-inter", "4",
                 "--vocab", "16", "--heads", "2", "--kv-heads", "1", "--head-dim", "4",
                 "--vision-depth", "1", "--vision-hidden", "2", "--vision-inter", "4"]
        for tag, extra in (("mk-hf", ["--shards", "2", "--scale-inv", "--extra-state"]),
                           ("mk-native", ["--shards", "1", "--naming", "native", "--unpadded",
                                          "--shuffle-keys", "--data-order", "reverse"])):
            out = tmp / tag
            subprocess.run([str(mkckpt), *small, *extra, str(out)], check=True,
                           stdout=subprocess.DEVNULL)
            for f in sorted(out.glob("*.safetensors")):
                seeds.append((f"{tag}/{f.name}", f.read_bytes()))
    return seeds


def sorted_metadata(b):
    """b with its __metadata__ keys sorted: the official writer puts them in hash order, which
    changes from run to run. The rest is written back as that writer does: compact, raw UTF-8,
    padded with spaces to a multiple of 8."""
    hdr, data = split(b)
    doc = load_pairs(hdr.decode())
    m = doc.get("__metadata__")
    if isinstance(m, Obj):
        m.sort(key=lambda p: p[0])
    st = Style(random.Random(0))
    st.mode, st.sep, st.colon, st.str = "compact", ",", ":", json.encoder.encode_basestring
    return assemble(dump(doc, st).encode(), data, b" ")


class Seed:
    def __init__(self, name, b):
        self.name, self.bytes = name, b
        self.hdr, self.data = split(b)
        self.doc = load_pairs(self.hdr.decode())
