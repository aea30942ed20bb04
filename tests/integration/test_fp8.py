"""FP8 releases (DESIGN §14): F8_E4M3 weights with one F32 scale per 128x128 block
(weight_scale_inv), experts one weight each (Qwen's FP8 releases of its MoE models) or fused,
shown dequantized to BF16, per-expert weights stacked into the Hub's fused tensors.

The oracle is written here in numpy, independently of the C kernels: E4M3 decoded from its
definition, the product with the block's scale in F32, rounded to BF16 to nearest even (as NeMo
Automodel's dequantize_from_fp8; tests/real compares with Automodel's own function). From the
FP8 fixture it writes the BF16 Hub checkpoint the release stands for (every FP8 weight
dequantized, its scale dropped, each layer's experts stacked: gate_up[j] = [gateᵀ | upᵀ],
down[j] = downᵀ, each fused tensor where expert 0's weight was, config without
quantization_config). Every view of the FP8 source, with any slicing, must equal the same view
of that BF16 checkpoint. Edge blocks are partial: H 160 and I 136 are no multiples of 128."""
import json
import os
import shutil

import numpy as np
import pytest

from checkview.reader import read_header, read_tensors
from helpers import assert_same_views, one_line_naming, stats, write_st

INDEX = "model.safetensors.index.json"
B = 128
DIMS = ["--hidden", "160", "--moe-inter", "136"]


def e4m3_table():
    """The F32 value of every E4M3 (e4m3fn) byte, by definition."""
    out = np.empty(256, dtype=np.float32)
    for b in range(256):
        e, m = (b >> 3) & 15, b & 7
        if e == 15 and m == 7:
            v = np.nan
        else:
            v = np.ldexp(1 + m / 8, e - 7) if e else np.ldexp(m / 8, -6)
        out[b] = -v if b & 0x80 else v
    return out


E4M3 = e4m3_table()


def bf16(f):
    """F32 array to BF16 bits, rounded to nearest even; NaN to 0x7FC0."""
    u = f.astype(np.float32).view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    r[np.isnan(f)] = 0x7FC0
    return r


def dequant(w, s):
    """[.., R, C] FP8 bytes with [.., ceil(R/B), ceil(C/B)] F32 scales, to BF16 bits."""
    R, C = w.shape[-2:]
    full = np.repeat(np.repeat(s, B, axis=-2), B, axis=-1)[..., :R, :C]
    return bf16(E4M3[w] * full)


def as_array(dt, shape, data):
    """A tensor's bytes as numpy."""
    kind = {"F8_E4M3": np.uint8, "F32": np.float32, "BF16": np.uint16}[dt]
    return np.frombuffer(data, dtype=kind).reshape(shape)


def bf16_checkpoint(src, dst, stack=True):
    """The BF16 checkpoint FP8 source src stands for, into dst (see the module's text); with
    stack False, per-expert weights stay one per expert."""
    dst.mkdir()
    files = {f.name: read_tensors(f) for f in sorted(src.glob("*.safetensors"))}
    every = {k: v for _, ts in files.values() for k, v in ts.items()}
    weight_map = {}

    def bf(k):
        dt, shape, data = every[k]
        if dt != "F8_E4M3":
            return dt, shape, data
        s = every[k + "_scale_inv"]
        return "BF16", shape, dequant(as_array(dt, shape, data), as_array(*s)).tobytes()

    for name, (meta, ts) in files.items():
        out = {}
        for k in ts:
            if k.endswith("_scale_inv"):
                continue
            head, sep, tail = k.partition(".mlp.experts.")
            if stack and sep and tail[0].isdigit():
                j, _, w = tail.partition(".")
                if j != "0" or w == "up_proj.weight":
                    continue
                E = sum(1 for x in every if x.startswith(head + sep) and x.endswith(".down_proj.weight"))
                mats = lambda p: [as_array(*bf(f"{head}{sep}{e}.{p}.weight")) for e in range(E)]  # noqa
                if w == "gate_proj.weight":
                    t = np.stack([np.concatenate([g.T, u.T], axis=-1)
                                  for g, u in zip(mats("gate_proj"), mats("up_proj"))])
                    key = head + sep + "gate_up_proj"
                else:
                    t = np.stack([d.T for d in mats("down_proj")])
                    key = head + sep + "down_proj"
                out[key] = ("BF16", list(t.shape), np.ascontiguousarray(t).tobytes())
            else:
                key = k
                out[key] = bf(k)
            weight_map[key] = name
        write_st(dst / name, meta, out)
    index = json.loads((src / INDEX).read_text())
    index["weight_map"] = weight_map
    (dst / INDEX).write_text(json.dumps(index))
    cfg = json.loads((src / "config.json").read_text())
    cfg.pop("quantization_config")
    (dst / "config.json").write_text(json.dumps(cfg))
    for f in src.iterdir():
        if not f.name.endswith((".safetensors", INDEX)) and f.name != "config.json":
            shutil.copy(f, dst / f.name)
    return dst


@pytest.fixture(scope="module")
def fp8(ckpt, work):
    """{name: (FP8 source, its BF16 checkpoint stacked, unstacked)}."""
    out = {}
    for name, args in {"per_expert": ["--fp8", "per-expert"], "fused": ["--fp8", "fused"],
                       "fused_linear": ["--fp8", "fused", "--linear-experts"],
                       # shards holding only experts 1..E-1 of a layer: nothing of them shown
                       "per_expert_8_shards": ["--fp8", "per-expert", "--shards", "8"]}.items():
        src = ckpt.make("fp8-" + name, *args, *DIMS)
        hub, flat = work / f"fp8-{name}-bf16", work / f"fp8-{name}-bf16-flat"
        if not hub.exists():
            bf16_checkpoint(src, hub)
            bf16_checkpoint(src, flat, stack=False)
        out[name] = (src, hub, flat)
    return out


NATIVE_VIEWS = {  # id: -o options, the same for both mounts
    "native": [],
    "rank": ["-o", "ep_size=2,ep_rank=1"],
    "rank_folders": ["-o", "ep_size=4"],
    "rank_folders_shared": ["-o", "ep_size=2,ep_shared"],
}


def same_config(got, want):
    """Every config.json of both views (one per rank folder): the same JSON, and no
    quantization_config."""
    __tracebackhide__ = True
    rels = sorted(str(p.relative_to(want)) for p in want.rglob("config.json"))
    assert rels and rels == sorted(str(p.relative_to(got)) for p in got.rglob("config.json"))
    for rel in rels:
        a, b = (json.loads((v / rel).read_text()) for v in (got, want))
        assert "quantization_config" not in a, f"{rel} keeps quantization_config"
        assert a == b, f"{rel} differs"


@pytest.mark.parametrize("name", ["per_expert", "fused", "fused_linear", "per_expert_8_shards"])
@pytest.mark.parametrize("opts", NATIVE_VIEWS.values(), ids=NATIVE_VIEWS.keys())
def test_native_view_is_the_bf16_checkpoints(fp8, mount, name, opts):
    """The native view of an FP8 release, with any slicing, is that of its BF16 checkpoint."""
    src, hub, _ = fp8[name]
    want = mount(hub, None, *opts)
    got = mount(src, None, *opts)
    assert_same_views(got, want)
    same_config(got, want)


def test_shard_cut_on_scale_blocks(ckpt, work, mount):
    """ep_shard_size cuts dim 1 of the stacked experts (H 256 and I 512: halves of whole
    scale blocks) and still equals the BF16 checkpoint's cut."""
    src = ckpt.make("fp8-h256", "--fp8", "per-expert", "--hidden", "256", "--moe-inter", "512")
    hub = work / "fp8-h256-bf16"
    if not hub.exists():
        bf16_checkpoint(src, hub)
    opts = ["-o", "ep_size=2,ep_rank=1,ep_shard_size=2,ep_shard_rank=1"]
    assert_same_views(mount(src, None, *opts), mount(hub, None, *opts))


def test_shard_cut_off_scale_blocks_refused(fp8, mount):
    """H 160 and I 136 cut in halves inside a scale block: refused at mount, naming why."""
    p = mount.fail(fp8["per_expert"][0], None, "-o", "ep_size=2,ep_shard_size=2")
    one_line_naming(p.stderr, "mlp.experts.", "_projs", "128-element boundary")


HF_VIEWS = {  # id: (options of the FP8 mount, which BF16 checkpoint, its mount's options)
    "dequant": ("view=hf,dequant=bf16", 2, "view=hf"),
    "dequant_stacked": ("view=hf,dequant=bf16,expert_layout=hub", 1, "view=hf"),
    "dequant_stacked_rank": ("view=hf,dequant=bf16,expert_layout=hub,ep_size=2,ep_rank=0", 1,
                             "view=hf,ep_size=2,ep_rank=0"),
}


@pytest.mark.parametrize("opts,which,want_opts", HF_VIEWS.values(), ids=HF_VIEWS.keys())
def test_hf_dequant_views(fp8, mount, opts, which, want_opts):
    """view=hf,dequant=bf16 keeps the release's key structure in BF16 (what an offline
    fp8_cast_bf16 writes); with expert_layout=hub it is the BF16 Hub checkpoint itself."""
    src, want_src = fp8["per_expert"][0], fp8["per_expert"][which]
    got = mount(src, None, "-o", opts)
    want = mount(want_src, None, "-o", want_opts)
    assert_same_views(got, want)
    same_config(got, want)


def test_hf_view_keeps_fp8_and_scales(fp8, mount):
    """Without dequant=bf16 an HF view shows the release as it is: FP8 bytes under F8_E4M3,
    every scale beside its weight."""
    src = fp8["per_expert"][0]
    got = mount(src, None, "-o", "view=hf")
    for f in src.glob("*.safetensors"):
        assert read_tensors(got / f.name)[1] == read_tensors(f)[1], f.name
    assert "quantization_config" in json.loads((got / "config.json").read_text())


def rank_need(src, experts):
    """Source bytes a rank needs: its experts' (in experts) FP8 weights and scales, and every
    other tensor once."""
    need = 0
    for f in src.glob("*.safetensors"):
        hdr, _ = read_header(f)
        for k, v in hdr.items():
            if k == "__metadata__":
                continue
            head, sep, tail = k.partition(".mlp.experts.")
            if sep and tail[0].isdigit() and int(tail.split(".")[0]) not in experts:
                continue
            need += v["data_offsets"][1] - v["data_offsets"][0]
    return need


def read_rank(m):
    """Source bytes read to read every file of mount m front to back."""
    before = stats(m)["bytes_from_sources"]
    for f in sorted(m.glob("*.safetensors")):
        with open(f, "rb") as fh:
            while fh.read(1 << 20):
                pass
    return stats(m)["bytes_from_sources"] - before


def test_rank_reads_its_fp8_bytes_once(fp8, mount):
    """Reading a rank's whole view reads from the sources at most 1.02x what that rank needs."""
    src = fp8["per_expert"][0]
    need = rank_need(src, (2, 3))  # rank 1 of 4 holds experts 2 and 3 of 8
    got = read_rank(mount(src, None, "-o", "ep_size=4,ep_rank=1"))
    assert need <= got <= 1.02 * need, (got, need)


def test_many_blocks_of_two_sizes_are_made_once(ckpt, mount):
    """A rank of more blocks than the cache keeps buffers for, in two sizes (gate_up's 2 MiB,
    down's 1 MiB), read by the kernel's concurrent readahead with blocks made ahead: each block
    is made once, so the sources are read once (a block still being read, evicted for one of
    the other size, was made again: 1.1x here)."""
    src = ckpt.make("fp8-many", "--hidden", "512", "--moe-inter", "1024", "--experts", "32",
                    "--layers", "1", "--shards", "1", "--vocab", "64", "--fp8", "per-expert")
    need = rank_need(src, range(16))
    for _ in range(3):
        got = read_rank(mount(src, None, "-o", "ep_size=2,ep_rank=0"))
        assert got == need, (got, need)


# ----------------------------------------------------------------------- what is refused


def edited(src, dst, edit):
    """A copy of src whose tensors went through edit(name, (dtype, shape, bytes)) -> list of
    (name, tensor) (empty: left out); the index follows."""
    dst.mkdir()
    wm = {}
    for f in src.iterdir():
        if f.name.endswith(".safetensors"):
            meta, ts = read_tensors(f)
            out = dict(x for k, v in ts.items() for x in edit(k, v))
            write_st(dst / f.name, meta, out)
            wm.update({k: f.name for k in out})
        elif f.name != INDEX:
            shutil.copy(f, dst / f.name)
    index = json.loads((src / INDEX).read_text())
    index["weight_map"] = wm
    (dst / INDEX).write_text(json.dumps(index))
    return dst


ATTN = "model.language_model.layers.0.self_attn.q_proj.weight"
UP3 = "model.language_model.layers.1.mlp.experts.3.up_proj.weight"
REFUSED = {  # id: (edit, words the one-line refusal must hold)
    "per_tensor_scale": (lambda k, v: [(k, ("F32", [1], v[2][:4]) if k == ATTN + "_scale_inv"
                                        else v)], ["per-tensor", ATTN]),
    "e5m2": (lambda k, v: [(k, ("F8_E5M2", *v[1:]) if k == ATTN else v)], ["F8_E5M2", ATTN]),
    "no_scale": (lambda k, v: [] if k == ATTN + "_scale_inv" else [(k, v)],
                 ["without weight_scale_inv", ATTN]),
    "compressed_tensors": (lambda k, v: [(k.replace(ATTN + "_scale_inv", ATTN + "_scale"), v)],
                           ["weight_scale", "compressed-tensors"]),
    "missing_expert": (lambda k, v: [] if k.startswith(UP3) else [(k, v)],
                       ["expert 3 of 8", "up_proj"]),
}


@pytest.mark.parametrize("edit,words", REFUSED.values(), ids=REFUSED.keys())
def test_native_view_refuses_what_it_cannot_compute(fp8, mount, tmp, edit, words):
    """FP8 forms the mount does not compute, or experts it cannot stack: the native view is
    refused with one line naming what was found; the HF view still shows the source as is."""
    src = edited(fp8["per_expert"][0], tmp / "src", edit)
    p = mount.fail(src, None)
    one_line_naming(p.stderr, *words)
    mount(src, None, "-o", "view=hf")


def test_other_quant_methods_refused(fp8, mount, tmp):
    """A quantization_config this mount does not compute (MXFP4 here) refuses the native view."""
    src = tmp / "src"
    shutil.copytree(fp8["per_expert"][0], src)
    cfg = json.loads((src / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "mxfp4"}
    (src / "config.json").write_text(json.dumps(cfg))
    p = mount.fail(src, None)
    one_line_naming(p.stderr, "mxfp4", "config.json")


def test_stacking_fp8_needs_dequant(fp8, mount):
    """expert_layout=hub on the per-expert FP8 release without dequant=bf16: refused."""
    p = mount.fail(fp8["per_expert"][0], None, "-o", "view=hf,expert_layout=hub")
    one_line_naming(p.stderr, "dequant=bf16")


def test_dequant_option_checked(fp8, mount):
    """dequant= takes bf16 only."""
    p = mount.fail(fp8["per_expert"][0], None, "-o", "view=hf,dequant=fp16")
    one_line_naming(p.stderr, "dequant=fp16", "bf16")


def test_every_fp8_byte_value(fp8, mount, tmp):
    """A weight holding all 256 E4M3 bytes (subnormals, both zeros, both NaNs: the kernel's
    slow path) and an expert holding them too: the native view still equals the oracle's."""
    def every_byte(k, v):
        if k in (ATTN, UP3):
            return [(k, (v[0], v[1], bytes(i % 256 for i in range(len(v[2])))))]
        return [(k, v)]
    src = edited(fp8["per_expert"][0], tmp / "src", every_byte)
    want = bf16_checkpoint(src, tmp / "bf16")
    assert_same_views(mount(src, None), mount(want, None))


def test_inspect_names_what_a_stack_stands_for(fp8):
    """qvlmoefs inspect --keys: a stacked tensor's source is expert 0's weight, its extents
    list each expert's dequantize+transpose (gate and up) with its scales."""
    from helpers import QV, run
    p = run(QV, "inspect", fp8["per_expert"][0], "-o", "ep_size=4,ep_rank=1", "--keys", "--json")
    keys = {k["view_key"]: k for k in json.loads(p.stdout)["keys"]}
    k = keys["model.language_model.layers.0.mlp.experts.gate_and_up_projs"]
    assert k["source_key"] == "model.language_model.layers.0.mlp.experts.0.gate_proj.weight", k
    assert k["dtype"] == "BF16" and k["view_shape"] == [2, 160, 272], k
    lines = k["extents"].splitlines()
    assert sum("dequantize+transpose block" in x for x in lines) == 4, lines  # 2 experts x 2
    assert sum("scales of block" in x for x in lines) == 4, lines
