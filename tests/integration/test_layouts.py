"""Fused expert layouts (DESIGN §14): a source whose experts are in nn.Linear's layout, as
transformers 5 saves them (gate_up_proj [E, 2I, H], down_proj [E, H, I]), shown in the Hub's
layout ([E, H, 2I], [E, I, H]) that NeMo Automodel's adapter expects.

The oracle is the Hub-layout checkpoint itself: the linear source here is made from it by numpy
(each expert's matrix transposed, every other byte kept), so every view of the linear source,
with any slicing, must hold exactly the tensors the same view of the Hub source holds (those
views are checked against the contract by test_views/test_ep, and against Automodel itself by
tests/real). Also: the layout told per tensor (H == 2I for gate_up is told by down), what is
refused (contradicting or missing statements), expert_layout= in the native view, the
block cache (each expert made once for sequential reads), and .qvlmoefs/ naming the operation."""
import json
import os
import shutil
import time

import numpy as np
import pytest

from checkview.reader import read_tensors
from helpers import assert_same_views, one_line_naming, stats, tensors_below, write_st

INDEX = "model.safetensors.index.json"
EXPERT_SUFFIXES = ("mlp.experts.gate_up_proj", "mlp.experts.down_proj",
                   "mlp.experts.gate_and_up_projs", "mlp.experts.down_projs")


def is_fused_expert(key, shape):
    """A layer's fused expert tensor: [E, A, B]."""
    return key.endswith(EXPERT_SUFFIXES) and len(shape) == 3


def transposed(shape, data):
    """Bytes of a 16-bit [E, A, B] tensor with each expert's matrix transposed: [E, B, A]."""
    a = np.frombuffer(data, dtype=np.uint16).reshape(shape)
    return [shape[0], shape[2], shape[1]], a.transpose(0, 2, 1).tobytes()


def relayout(src, dst, keep=lambda key: True, transpose=True):
    """Copy checkpoint src to dst with every fused expert tensor transposed per expert (the
    Hub's layout to nn.Linear's, or back; not without transpose), keys that keep() refuses
    left out (index too)."""
    dst.mkdir()
    for f in sorted(src.iterdir()):
        if f.name.endswith(".safetensors"):
            meta, ts = read_tensors(f)
            out = {}
            for k, (dt, shape, data) in ts.items():
                if keep(k):
                    out[k] = (dt, *transposed(shape, data)) if transpose and \
                        is_fused_expert(k, shape) else (dt, shape, data)
            write_st(dst / f.name, meta, out)
        elif f.name == INDEX:
            index = json.loads(f.read_text())
            index["weight_map"] = {k: v for k, v in index["weight_map"].items() if keep(k)}
            (dst / INDEX).write_text(json.dumps(index))
        else:
            shutil.copy(f, dst / f.name)
    return dst


@pytest.fixture(scope="module")
def sources(ckpt, work):
    """{"hub": the Hub-layout checkpoint, "linear": it in nn.Linear's layout}."""
    hub = ckpt["hf"]
    lin = work / "layouts-linear"
    if not lin.exists():
        relayout(hub, lin)
    return {"hub": hub, "linear": lin}


VIEWS = {  # id: -o options, the same for both mounts
    "native": [],
    "rank": ["-o", "ep_size=2,ep_rank=1"],
    "rank_shard": ["-o", "ep_size=4,ep_rank=3,ep_shard_size=2,ep_shard_rank=1"],
    "rank_folders": ["-o", "ep_size=4"],
    "rank_folders_shared": ["-o", "ep_size=2,ep_shared"],
    "hf_hub": ["-o", "view=hf,expert_layout=hub"],
    "hf_hub_rank": ["-o", "view=hf,expert_layout=hub,ep_size=2,ep_rank=0"],
}


@pytest.mark.parametrize("opts", VIEWS.values(), ids=VIEWS.keys())
def test_linear_source_shows_the_hub_views(sources, mount, opts):
    """Every view of the linear source equals the same view of the Hub source."""
    want = mount(sources["hub"], None, *opts)
    got = mount(sources["linear"], None, *opts)
    assert_same_views(got, want)
    s = stats(got)
    assert s["bytes_spliced"] == 0 or s["blocks_computed"] > 0
    assert s["blocks_computed"] > 0, s


def test_hf_view_keeps_the_source_layout(sources, mount):
    """view=hf without expert_layout shows the linear source as it is."""
    got = mount(sources["linear"], None, "-o", "view=hf")
    files, _ = tensors_below(got)
    for rel, (_, ts) in files.items():
        assert ts == read_tensors(sources["linear"] / rel)[1], rel
    assert stats(got)["blocks_computed"] == 0


def test_reverse_view_to_linear(ckpt, mount):
    """A native source shown with HF names in nn.Linear's layout: the transposition of its
    Hub-layout HF view, expert by expert."""
    hub = mount(ckpt["native"], None, "-o", "view=hf")
    lin = mount(ckpt["native"], None, "-o", "view=hf,expert_layout=linear")
    (hf, _), (lf, _) = tensors_below(hub), tensors_below(lin)
    n = 0
    for rel, (_, ts) in hf.items():
        for k, (dt, shape, data) in ts.items():
            want = (dt, *transposed(shape, data)) if is_fused_expert(k, shape) else (dt, shape, data)
            n += is_fused_expert(k, shape)
            assert lf[rel][1][k] == want, f"{rel}: {k}"
    assert n >= 4


def test_sequential_reads_make_each_expert_once(ckpt, mount, tmp):
    """Reading a file of big experts front to back in the kernel's requests (128 KiB) makes
    every expert block exactly once, and reads each source byte of it once."""
    hub = ckpt.make("layouts-big", "--hidden", "512", "--moe-inter", "1024", "--experts", "4",
                    "--layers", "1", "--shards", "1", "--vocab", "64")
    lin = relayout(hub, tmp / "lin")
    m = mount(lin, None, "-o", "ep_size=2,ep_rank=1")
    f = next(m.glob("*.safetensors"))
    before = stats(m)
    with open(f, "rb") as fh:
        while fh.read(1 << 20):
            pass
    s = stats(m)
    experts = 2 * 2  # two tensors, this rank's two experts each
    assert s["blocks_computed"] - before["blocks_computed"] == experts, s
    assert s["blocks_from_cache"] > 0, s  # 2 MiB blocks, smaller requests
    src_bytes = s["bytes_from_sources"] - before["bytes_from_sources"]
    assert src_bytes <= f.stat().st_size, (src_bytes, f.stat().st_size)


def test_extents_name_the_operation(sources, mount):
    """.qvlmoefs/tensors/KEY's extents say the bytes are computed, and from which slab."""
    m = mount(sources["linear"], None, "-o", "ep_size=2,ep_rank=1")
    key = "model.language_model.layers.0.mlp.experts.gate_and_up_projs"
    ext = os.getxattr(m / ".qvlmoefs" / "tensors" / key, "user.qvlmoefs.extents").decode()
    lines = ext.splitlines()
    assert len(lines) == 4 and all(" transpose block " in x for x in lines), ext  # experts 4..7


# ----------------------------------------------------------------------- told, stated, refused


def square_gate_up(ckpt, tmp, keep_down):
    """A Hub checkpoint with H == 2I (gate_up [E, 48, 48] fits both layouts) and its linear
    copy, the down tensors left out of both unless keep_down."""
    hub = ckpt.make("layouts-square", "--hidden", "48", "--moe-inter", "24")
    if keep_down:
        return hub, relayout(hub, tmp / "lin")
    keep = lambda k: not k.endswith("down_proj")  # noqa: E731
    return relayout(hub, tmp / "hub", keep, transpose=False), relayout(hub, tmp / "lin", keep)


def test_square_gate_up_told_by_down(ckpt, mount, tmp):
    """gate_up [E, 48, 48] cannot tell its layout; down [E, 48, 24] says linear for both."""
    hub, lin = square_gate_up(ckpt, tmp, keep_down=True)
    assert_same_views(mount(lin, None), mount(hub, None))


def test_square_gate_up_alone_needs_a_statement(ckpt, mount, tmp):
    """Without down tensors nothing tells: refused, naming the option that states the source's
    layout: expert_layout= in the native view (whose own layout is fixed), source_layout= in an
    HF view (where expert_layout= is the view's); stated, it mounts."""
    hub, lin = square_gate_up(ckpt, tmp, keep_down=False)
    p = mount.fail(lin, None)
    one_line_naming(p.stderr, "gate_up_proj", "-o expert_layout=hub|linear")
    assert "source_layout" not in p.stderr
    p = mount.fail(lin, None, "-o", "view=hf,expert_layout=hub")
    one_line_naming(p.stderr, "gate_up_proj", "-o source_layout=hub|linear")
    want = mount(hub, None, "-o", "expert_layout=hub")
    assert_same_views(mount(lin, None, "-o", "expert_layout=linear"), want)
    assert_same_views(mount(lin, None, "-o", "source_layout=linear"), want)
    assert_same_views(mount(lin, None, "-o", "view=hf,expert_layout=hub,source_layout=linear"),
                      mount(hub, None, "-o", "view=hf,source_layout=hub"))


def test_statement_contradicting_a_shape_refused(sources, mount):
    """A stated layout the shapes contradict: refused, naming a tensor and the option."""
    p = mount.fail(sources["linear"], None, "-o", "source_layout=hub")
    one_line_naming(p.stderr, "linear layout", "source_layout=hub")
    p = mount.fail(sources["linear"], None, "-o", "expert_layout=hub")  # native: the source's
    one_line_naming(p.stderr, "linear layout", "expert_layout=hub")


def test_native_view_takes_expert_layout_as_the_sources(sources, mount):
    """In the native view expert_layout= states the source's layout (the view's is the Hub's):
    a true statement mounts the same view; one source_layout= contradicts is refused."""
    assert_same_views(mount(sources["linear"], None, "-o", "expert_layout=linear"),
                      mount(sources["hub"], None))
    p = mount.fail(sources["linear"], None, "-o", "expert_layout=hub,source_layout=linear")
    one_line_naming(p.stderr, "expert_layout=hub", "source_layout=linear", "disagree")


@pytest.mark.parametrize("opts,words", [
    ("view=hf,expert_layout=sideways", ["expert_layout=sideways", "hub", "linear"]),
    ("source_layout=", ["source_layout=", "hub", "linear"]),
])
def test_bad_layout_options_refused(sources, mount, opts, words):
    """Layout options that cannot hold: one line naming the option."""
    p = mount.fail(sources["linear"], None, "-o", opts)
    one_line_naming(p.stderr, *words)


def test_the_next_block_is_made_ahead_once(ckpt, mount, tmp):
    """A request that touches a computed block's first byte has the block after it made once
    its reply is sent (the tensor's next expert here): a 4 KiB direct_io read at expert 0 of
    a tensor of 4 makes expert 1 ahead, which a read at expert 1 then finds made (and has
    expert 2 made ahead). Read on to the end, the file's blocks are made once each, and the
    bytes are those of the same view of the Hub-layout source."""
    hub = ckpt.make("layouts-big", "--hidden", "512", "--moe-inter", "1024", "--experts", "4",
                    "--layers", "1", "--shards", "1", "--vocab", "64")
    lin = tmp / "lin"
    if not lin.exists():
        relayout(hub, lin)
    m = mount(lin, None, "-o", "direct_io")
    f = next(m.glob("*.safetensors"))

    def settled(before, ahead):
        deadline = time.monotonic() + 10  # made after the reply: wait for it
        while stats(m)["blocks_ahead"] - before["blocks_ahead"] < ahead and \
                time.monotonic() < deadline:
            time.sleep(0.01)
        s = stats(m)
        return {k: s[k] - before[k] for k in ("blocks_ahead", "blocks_computed",
                                              "blocks_from_cache")}

    with open(f, "rb", buffering=0) as fh:
        header = 8 + int.from_bytes(fh.read(8), "little")
        first = min(v["data_offsets"][0] for k, v in json.loads(fh.read(header - 8)).items()
                    if k.endswith("gate_and_up_projs"))
        expert = 512 * 2 * 1024 * 2  # one expert's [H, 2I] BF16: a block
        before = stats(m)
        fh.seek(header + first)
        fh.read(4096)
        assert settled(before, 1) == {"blocks_ahead": 1, "blocks_computed": 2,
                                      "blocks_from_cache": 0}
        fh.seek(header + first + expert)
        fh.read(4096)
        assert settled(before, 2) == {"blocks_ahead": 2, "blocks_computed": 3,
                                      "blocks_from_cache": 1}
        fh.seek(0)
        whole = fh.read()
    blocks = stats(m)["blocks_computed"] - before["blocks_computed"]
    assert blocks == 2 * 4, blocks  # 2 tensors x 4 experts, each made once
    assert whole == (mount(hub, None) / f.name).read_bytes()


def test_cached_block_of_a_changed_source_is_eio(sources, mount, tmp):
    """A computed block already made is not served once its source changed (touched here):
    the read fails with EIO, as every read of a changed source does."""
    src = tmp / "src"
    shutil.copytree(sources["linear"], src)
    m = mount(src, None, "-o", "direct_io")
    key = "model.language_model.layers.0.mlp.experts.gate_and_up_projs"
    f = m / ".qvlmoefs" / "tensors" / key
    src_file = src / json.loads((src / INDEX).read_text())["weight_map"][
        key.replace("gate_and_up_projs", "gate_up_proj")]
    with open(f, "rb") as fh:  # open across the change: an open checks its sources itself
        first = fh.read()  # made and cached
        fh.seek(0)
        assert fh.read() == first and stats(m)["blocks_from_cache"] > 0
        st = src_file.stat()
        os.utime(src_file, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
        fh.seek(0)
        with pytest.raises(OSError) as e:
            fh.read()
    assert e.value.errno == 5, e.value  # EIO


@pytest.mark.parametrize("opts", [["-o", "view=native"], ["-o", "view=native,ep_size=2,ep_rank=1"],
                                  ["-o", "view=native,ep_size=4,ep_rank=3,ep_shard_size=2,"
                                   "ep_shard_rank=1"]], ids=["whole", "rank", "rank_shard"])
def test_sharded_save_in_linear_layout(ckpt, mount, tmp, opts):
    """An Automodel per-rank save of a model in nn.Linear's layout (4 ranks, experts cut on dim 1
    too, so an expert lies in two chunks): its native view, transposed from the chunks, equals
    the native view of its consolidated HF view (as saved: proven in test_sharded) turned into
    the Hub's layout by numpy."""
    save = ckpt.make("layouts-sharded-linear", "--linear-experts", "--sharded-save", "4",
                     "--save-shard-size", "2")
    hub = relayout(mount(save, None, "-o", "view=hf"), tmp / "hub")
    got = mount(save, None, *opts)
    assert_same_views(got, mount(hub, None, *opts))
    assert stats(got)["blocks_computed"] > 0
