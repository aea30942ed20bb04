"""Computed views (issue 23) against the real tools: transformers 5, NeMo Automodel.

- A transformers-5 save: tf_model's tiny model written by transformers 5.18's own
  save_pretrained, its experts in nn.Linear's layout ([E, 2I, H], [E, H, I]). Its native view,
  and each rank folder of ep_size=2, is Automodel's from_hf of the Hub-layout state dict (the
  saved experts transposed by torch), and so is the native view of the same model saved by
  Automodel's Checkpointer in its per-rank format (transposed from the ranks' chunks);
  from_pretrained through view=hf,expert_layout=hub gives the saved model, tensor for tensor,
  and its logits.
- An FP8 release made here from the same model the way Qwen's FP8 releases are laid out
  (experts one weight each, [out, in]; every linear weight of the language model F8_E4M3 with
  one F32 scale per 128x128 block in weight_scale_inv; quantization_config fp8 [128, 128]).
  Its native view and rank folders are Automodel's from_hf of the Hub-layout state dict that
  Automodel's own dequantize_from_fp8 (deepseek_v3's) and MoE stacking (Qwen3-MoE's adapter,
  whose from_hf stacks per-expert weights) make from the release. from_pretrained through
  view=hf,dequant=bf16,expert_layout=hub equals from_pretrained of that state dict saved to
  disk (an offline conversion), tensors and logits. transformers' own FP8 dequantizer is not the
  oracle: the tiny model's matrices are smaller than one 128x128 block, and it needs whole
  blocks.
"""
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import tf_model
from am_common import assert_same, file_metadata, load_folder, make_adapter
from fp8_release import automodel_hub_dict, fp8_release


@pytest.fixture(scope="module")
def original():
    """(model, state dict, logits) of the seeded tiny model."""
    m = tf_model.build()
    return m, m.state_dict(), tf_model.logits(m)


@pytest.fixture(scope="module")
def saves(work, original):
    """{"tf5": save_pretrained's folder, "hub": its Hub-layout copy}."""
    base = work / "computed"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir()
    tf_model.save(original[0], base / "tf5")
    tf_model.to_hub_layout(base / "tf5", base / "hub")
    return {"tf5": base / "tf5", "hub": base / "hub"}


def rank_slice(want, folder):
    """want's expert tensors cut to the experts the rank folder's files say they hold."""
    meta = next(iter(file_metadata(folder).values()))
    a, b = int(meta["qvlmoefs.expert_start"]), int(meta["qvlmoefs.expert_end"])
    return {k: v[a:b] if k.endswith(("gate_and_up_projs", "down_projs")) else v
            for k, v in want.items()}


def assert_native_views(mount, src, want, what):
    """The native view of src, and each rank folder of ep_size=2, hold want (sliced)."""
    __tracebackhide__ = True
    view, _ = load_folder(mount(src, None, "-o", "view=native"))
    assert_same(view, want, f"native view of {what}", want_name="from_hf")
    ranks = mount(src, None, "-o", "view=native,ep_size=2")
    for r in range(2):
        got, _ = load_folder(ranks / f"ep-rank-{r}")
        assert_same(got, rank_slice(want, ranks / f"ep-rank-{r}"),
                    f"ep-rank-{r} of {what}", want_name="from_hf, sliced")


def test_tf5_save_native_view_is_from_hf_of_hub_layout(saves, mount):
    """Automodel's from_hf of the Hub-layout state dict is the native view of the tf5 save."""
    hub, _ = load_folder(saves["hub"])
    want = make_adapter(saves["hub"]).from_hf(hub)
    assert_native_views(mount, saves["tf5"], want, "the transformers-5 save")


def test_automodel_save_of_tf5_layout_native_view(saves, mount, work):
    """The same model saved by Automodel's Checkpointer in its per-rank format (2 gloo ranks,
    experts Shard(0), as the model holds them: nn.Linear's layout): its native view, transposed
    from the ranks' chunks, and both rank folders are Automodel's from_hf of the Hub-layout
    state dict."""
    import subprocess
    import sys
    out = work / "computed" / "automodel"
    shutil.rmtree(out, ignore_errors=True)
    p = subprocess.run([sys.executable, str(Path(__file__).parent / "tf_save.py"), str(out), "2"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-4000:]
    hub, _ = load_folder(saves["hub"])
    want = make_adapter(saves["hub"]).from_hf(hub)
    assert_native_views(mount, out / "model", want, "Automodel's per-rank save")


def test_tf5_save_through_expert_layout_hub(saves, original, mount):
    """from_pretrained through view=hf,expert_layout=hub of the tf5 save: the saved model,
    its logits; and the view's expert tensors are in the Hub's layout."""
    from test_transformers import assert_same_model, load
    view = mount(saves["tf5"], None, "-o", "view=hf,expert_layout=hub")
    got, _ = load_folder(view)
    hub, _ = load_folder(saves["hub"])
    assert_same(got, hub, "view=hf,expert_layout=hub of the tf5 save", want_name="Hub copy")
    assert_same_model(load(view), original, view)


# ------------------------------------------------------------------------------ FP8 release

@pytest.fixture(scope="module")
def release(saves):
    """(FP8 release folder, Automodel's Hub-layout BF16 dict of it, that dict saved to disk)."""
    src = fp8_release(saves["hub"], saves["hub"].parent / "fp8")
    hub = automodel_hub_dict(src)
    offline = saves["hub"].parent / "fp8-offline-bf16"
    shutil.copytree(saves["hub"], offline)
    for f in offline.glob("*.safetensors"):
        f.unlink()
    files = tf_model.index_weight_map(saves["hub"])
    by_file = {}
    for k, t in hub.items():
        by_file.setdefault(files[k], {})[k] = t.contiguous()
    for name, ts in by_file.items():
        save_file(ts, str(offline / name), metadata={"format": "pt"})
    return src, hub, offline


def test_release_is_as_published(release):
    """The fixture holds what the issue describes: per-expert FP8 weights with block scales."""
    src = release[0]
    sd, _ = load_folder(src)
    k = "model.language_model.layers.0.mlp.experts.3.gate_proj.weight"
    assert sd[k].dtype == torch.float8_e4m3fn and tuple(sd[k].shape) == (tf_model.MOE_INTER,
                                                                          tf_model.HIDDEN)
    assert sd[k + "_scale_inv"].dtype == torch.float32
    assert not any(x.endswith("gate_up_proj") for x in sd)


def test_fp8_native_view_is_from_hf_of_automodel_dequant(release, mount):
    """Automodel's from_hf of its own dequantized, stacked Hub dict is the native view of the
    FP8 release, and of each rank folder."""
    src, hub, _ = release
    want = make_adapter(src).from_hf(hub)
    assert_native_views(mount, src, want, "the FP8 release")
    assert "quantization_config" not in json.loads((mount(src) / "config.json").read_text())


def test_fp8_dequant_stacked_view_loads_as_offline_copy(release, mount):
    """from_pretrained through view=hf,dequant=bf16,expert_layout=hub equals from_pretrained of
    the offline BF16 conversion: every tensor, and the logits."""
    from test_transformers import load
    src, hub, offline = release
    view = mount(src, None, "-o", "view=hf,dequant=bf16,expert_layout=hub")
    got, _ = load_folder(view)
    assert_same(got, hub, "view=hf,dequant=bf16,expert_layout=hub", want_name="Automodel's dict")
    a, b = load(view), load(offline)
    assert_same(a.state_dict(), b.state_dict(), "from_pretrained", "mount", "offline copy")
    assert torch.equal(tf_model.logits(a), tf_model.logits(b)), "logits differ"
