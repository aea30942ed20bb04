"""transformers' own from_pretrained through the mounts, against the model that was saved.

A tiny random Qwen3VLMoeForConditionalGeneration (tf_model.py: BF16, 2 layers, 8 experts) is
saved by transformers 5.18 itself (save_pretrained, 5 shards). Loaded back through each view, the
model must hold the original's every tensor, bit for bit, and one forward pass over a fixed text
batch must give logits torch.equal to the original's:

- baseline: the saved folder itself (what every view is measured against);
- the HF view (-o view=hf) of that folder;
- the reverse view (default: HF names) of a native-named copy, renamed by NeMo Automodel's
  Qwen3VLMoeStateDictAdapter.from_hf and written with safetensors.torch.save_file;
- the consolidated view of the same model saved by NeMo Automodel's Checkpointer in its
  per-rank safetensors format by 2 gloo ranks whose experts are Shard(0) DTensors (tf_save.py).

Each folder comes in two expert layouts: as transformers 5.18 writes it ("tf5": gate_up_proj
[E, 2I, H], down_proj [E, H, I], its in-memory layout) and as the Hub's Qwen3-VL-MoE checkpoints
hold it ("hub": [E, H, 2I], [E, I, H]); from_pretrained accepts both (its qwen3_vl_moe conversion
transposes when the shape says so), and these views keep the layout they read (an HF view
transposes only when asked, -o expert_layout=: test_computed.py, DESIGN §14). The Automodel
save is tf5 only: the checkpointer writes the model's state dict as it is.
"""
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dcp_adapter  # noqa: E402
import tf_model  # noqa: E402
from helpers import run  # noqa: E402

from transformers import Qwen3VLMoeForConditionalGeneration  # noqa: E402

HERE = Path(__file__).resolve().parent
LAYOUTS = ["tf5", "hub"]
SAVE_WORLD = 2


# --------------------------------------------------------------------------- folders and model


@pytest.fixture(scope="module")
def original():
    """(model, state dict, logits) of the seeded tiny model."""
    m = tf_model.build()
    return m, m.state_dict(), tf_model.logits(m)


@pytest.fixture(scope="module")
def saved(work, original):
    """{layout: folder} of save_pretrained's output ("tf5") and its Hub-layout copy ("hub")."""
    base = work / "tf"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir()
    shards = tf_model.save(original[0], base / "tf5")
    assert len(shards) >= 3, f"save_pretrained wrote {shards}: want several shards"
    tf_model.to_hub_layout(base / "tf5", base / "hub")
    return {"tf5": base / "tf5", "hub": base / "hub"}


def native_copy(src, dst):
    """Copy src with native names: Automodel's adapter.from_hf renames the whole state dict;
    each native tensor goes back to the file its HF tensor was in (found through the adapter's
    own convert_single_tensor_to_hf), with that file's __metadata__; the index is renamed the
    same way; every other file is copied."""
    dst.mkdir()
    infos = dcp_adapter.tensor_infos(src)
    dt = {d for _, _, d, _ in infos.values()}
    assert dt == {tf_model.DTYPE}, f"{src}: dtypes {dt}"
    ad = dcp_adapter.adapter(tf_model.EXPERTS, tf_model.DTYPE)  # from_hf casts experts to this
    hf, meta = {}, {}
    for f in sorted(src.glob("*.safetensors")):
        with safe_open(str(f), "pt") as g:
            meta[f.name] = g.metadata()
            hf.update({k: g.get_tensor(k) for k in g.keys()})
    native = ad.from_hf(hf)
    files = {}
    for k, t in native.items():
        files.setdefault(infos[dcp_adapter.to_hf_name(ad, k)][0], {})[k] = t.contiguous()
    for name, tensors in files.items():
        save_file(tensors, str(dst / name), metadata=meta[name])
    index = json.loads((src / "model.safetensors.index.json").read_text())
    index["weight_map"] = {k: infos[dcp_adapter.to_hf_name(ad, k)][0] for k in native}
    (dst / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    for f in src.iterdir():
        if f.is_file() and not f.name.endswith((".safetensors", ".safetensors.index.json")):
            shutil.copy(f, dst / f.name)
    return native


@pytest.fixture(scope="module")
def natives(saved):
    """{layout: native-named copy of saved[layout]}."""
    out = {}
    for lay, src in saved.items():
        out[lay] = src.parent / f"{lay}-native"
        native = native_copy(src, out[lay])
        assert any(k.endswith(".mlp.experts.gate_and_up_projs") for k in native), list(native)
        assert not any(tf_model.is_hf_expert(k) for k in native), list(native)
    return out


@pytest.fixture(scope="module")
def automodel_save(work):
    """The model saved by Automodel's Checkpointer by SAVE_WORLD gloo ranks (its model/ folder)."""
    out = work / "tf" / "automodel"
    shutil.rmtree(out, ignore_errors=True)
    p = run(sys.executable, HERE / "tf_save.py", out, SAVE_WORLD, check=False, timeout=300)
    if p.returncode != 0:
        causes = [x for x in p.stderr.splitlines() if x.startswith("tf_save rank ") and " failed: " in x]
        pytest.fail(f"tf_save.py (Automodel Checkpointer.save_model, W={SAVE_WORLD}) failed:\n" +
                    "\n".join(causes) + f"\n--- stderr (end) ---\n{p.stderr[-4000:]}", pytrace=False)
    return out / "model"


# --------------------------------------------------------------------------- the comparison


def load(folder):
    """from_pretrained(folder) in BF16 (eval); fail when transformers reports any key missing,
    unexpected or of the wrong shape (it would have initialised those at random)."""
    __tracebackhide__ = True
    err = None
    try:
        model, info = Qwen3VLMoeForConditionalGeneration.from_pretrained(
            str(folder), dtype=tf_model.DTYPE, output_loading_info=True)
    except Exception as e:  # e.g. sizes that do not match the config: transformers refuses
        err = f"from_pretrained({folder}) raised {type(e).__name__}: {e}"
    if err:  # outside the except clause, so that no traceback keeps the half-loaded model
        pytest.fail(err, pytrace=False)
    problems = {k: v for k, v in info.items() if v}
    if problems:
        # the failure's traceback must not keep the model, whose tensors may map the view's
        # files: a mapped file keeps the mount busy, and teardown would wait for it
        del model
        pytest.fail(f"from_pretrained({folder}) reports {json.dumps(problems, default=list)[:3000]}",
                    pytrace=False)
    return model.eval()


def assert_same_model(model, original, folder):
    """Every tensor of the state dict bit-equal to the original's, and equal logits."""
    __tracebackhide__ = True
    _, want, want_logits = original
    got = model.state_dict()
    errors = [f"missing {k}" for k in sorted(set(want) - set(got))]
    errors += [f"unexpected {k}" for k in sorted(set(got) - set(want))]
    for k in sorted(set(want) & set(got)):
        a, b = got[k], want[k]
        if a.dtype != b.dtype or a.shape != b.shape:
            errors.append(f"{k}: loaded {a.dtype} {tuple(a.shape)}, original {b.dtype} {tuple(b.shape)}")
        elif not torch.equal(a, b):
            errors.append(f"{k}: {int((a != b).sum())} of {a.numel()} elements differ "
                          f"(max |diff| {float((a.float() - b.float()).abs().max()):.3g})")
    if errors:
        pytest.fail(f"model loaded from {folder}: {len(errors)} state-dict mismatches:\n" +
                    "\n".join(errors[:30]), pytrace=False)
    logits = tf_model.logits(model)
    assert torch.equal(logits, want_logits), \
        f"model loaded from {folder}: logits differ from the original's (max |diff| " \
        f"{float((logits.float() - want_logits.float()).abs().max()):.3g})"


def assert_naming(view, want):
    """The naming the mount says its view has (.qvlmoefs/view.json) is want."""
    __tracebackhide__ = True
    got = json.loads((Path(view) / ".qvlmoefs" / "view.json").read_text())["view_naming"]
    assert got == want, f"{view}: .qvlmoefs/view.json says view_naming {got!r}, expected {want!r}"


def read_from_sources(view):
    """bytes_from_sources of the view's daemon."""
    return json.loads((Path(view) / ".qvlmoefs" / "stats").read_text())["bytes_from_sources"]


def tensor_bytes(folder):
    """Sum of the tensor bytes of folder's *.safetensors."""
    return sum(n for _, _, _, n in dcp_adapter.tensor_infos(folder).values())


# --------------------------------------------------------------------------- the tests


def test_save_pretrained_writes_experts_as_documented(saved):
    """What transformers 5.18's save_pretrained writes: several shards, the HF expert names
    model.language_model.layers.N.mlp.experts.gate_up_proj / down_proj, in its in-memory layout
    [E, 2I, H] / [E, H, I] (not the Hub's [E, H, 2I] / [E, I, H]), one dtype; so that a change in
    transformers' writer shows up here rather than as a puzzling failure below."""
    E, H, I = tf_model.EXPERTS, tf_model.HIDDEN, tf_model.MOE_INTER
    want = {"tf5": ([E, 2 * I, H], [E, H, I]), "hub": ([E, H, 2 * I], [E, I, H])}
    for lay, folder in saved.items():
        infos = dcp_adapter.tensor_infos(folder)
        for L in range(tf_model.LAYERS):
            p = f"model.language_model.layers.{L}.mlp.experts."
            got = (infos[p + "gate_up_proj"][1], infos[p + "down_proj"][1])
            assert got == want[lay], \
                f"{lay}: layer {L} experts (gate_up, down) are {got}, expected {want[lay]}"
        assert not [k for k in infos if "gate_and_up_projs" in k or "down_projs" in k]
        dtypes = {dt for _, _, dt, _ in infos.values()}
        assert dtypes == {tf_model.DTYPE}, f"{lay}: dtypes {dtypes}"


@pytest.mark.parametrize("layout", LAYOUTS)
def test_baseline_direct_load(saved, original, layout):
    """from_pretrained of the saved folder itself equals the original (the yardstick)."""
    assert_same_model(load(saved[layout]), original, saved[layout])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_hf_view_of_save(saved, original, mount, layout):
    """-o view=hf of save_pretrained's folder: the same model, read through the daemon."""
    view = mount(saved[layout], None, "-o", "view=hf")
    assert_same_model(load(view), original, view)
    assert_naming(view, "hf")
    assert tf_model.index_weight_map(view) == tf_model.index_weight_map(saved[layout])
    assert read_from_sources(view) >= tensor_bytes(saved[layout]), \
        "the load did not read through the mount"


@pytest.mark.parametrize("layout", LAYOUTS)
def test_reverse_view_of_automodel_native_copy(saved, natives, original, mount, layout):
    """The reverse view (default for a native source: HF names) of the copy Automodel's from_hf
    renamed gives back the saved model, and the index it generates names each tensor's file as
    the saved index did."""
    view = mount(natives[layout])
    assert_same_model(load(view), original, view)
    assert_naming(view, "hf")
    assert tf_model.index_weight_map(view) == tf_model.index_weight_map(saved[layout])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_ep_shared_rank_folder(saved, original, mount, layout):
    """-o ep_shared (ep_size=1: one rank folder holds every expert, so the config fits): the
    index names each shard's dense part and its -experts file, and from_pretrained of the rank
    folder gives the original model."""
    view = mount(saved[layout], None, "-o", "view=hf,ep_size=1,ep_shared") / "ep-rank-0"
    files = set(tf_model.index_weight_map(view).values())
    assert any(f.endswith("-experts.safetensors") for f in files), files
    assert any(not f.endswith("-experts.safetensors") for f in files), files
    assert_same_model(load(view), original, view)


def test_consolidated_view_of_automodel_sharded_save(automodel_save, original, mount):
    """The consolidated view of Automodel's per-rank save (SAVE_WORLD ranks, experts cut on dim 0
    between the rank files) loads as the saved model."""
    ranks = sorted(p.name for p in automodel_save.glob("shard-*-model-*.safetensors"))
    assert len(ranks) == SAVE_WORLD, f"{automodel_save}: rank files {ranks}"
    for r in ranks:  # each rank file holds half of every expert tensor
        with safe_open(str(automodel_save / r), "pt") as g:
            info = json.loads(g.metadata()["DCP_SHARDING_INFO"])
            cut = [g.get_slice(k).get_shape()[0] for k in g.keys() if tf_model.is_hf_expert(k)]
            assert cut == [tf_model.EXPERTS // SAVE_WORLD] * (2 * tf_model.LAYERS), (r, cut)
            assert set(info) == set(g.keys())
    view = mount(automodel_save)
    assert_same_model(load(view), original, view)
    assert_naming(view, "hf")
    shown = sorted(p.name for p in view.glob("*.safetensors"))
    assert not set(shown) & set(ranks), f"{view} shows the rank files {shown}, not a consolidated view"


def test_wrong_view_is_caught(saved, original, mount):
    """The check is not vacuous: the native view (the default for this HF folder) is not what
    from_pretrained reads, and load() says which keys it found missing and unexpected."""
    view = mount(saved["tf5"])
    assert_naming(view, "native")
    with pytest.raises(pytest.fail.Exception) as e:
        load(view)
    msg = str(e.value)
    del e  # its traceback holds load()'s frame
    print(msg[:600])
    assert "missing_keys" in msg and "gate_up_proj" in msg and "gate_and_up_projs" in msg, msg
