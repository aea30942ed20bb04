"""NeMo Automodel's own checkpointer writes per-rank sharded saves; the mount shows them
consolidated.

One run of am_checkpoint_worker.py (W = 4 forked gloo ranks on the CPU) saves three tiny models
with nemo_automodel.components.checkpoint: CheckpointingConfig(model_save_format="safetensors",
save_consolidated="final").build(...).save_model(model, path, is_final_checkpoint=True), which
writes `shard-0000R-model-00001-of-00001.safetensors` (DCP_SHARDING_INFO) + `.hf_metadata/`,
then Automodel's consolidation into `consolidated/`:
- qwen-ep4: Automodel's Qwen3-VL-MoE model (nemo_automodel.components.models.qwen3_vl_moe.model,
  the mkckpt tiny preset's config), FSDP2 over 4 ranks, experts over EP = 4;
- qwen-ep2x2: the same with EP = 2, so the experts are also cut on dim 1 over ep_shard = 2;
- llama-fsdp4: a tiny transformers LlamaForCausalLM (random weights), FSDP2 over 4 ranks, with
  uneven dim-0 chunks (vocab 250).
Every comparison is byte for byte and key for key, against Automodel's own consolidation and
against to_hf of the state dict gathered from the ranks.
"""
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from safetensors.torch import load_file

import am_common
from am_common import assert_same, load_folder

W = 4
SAVES = {"qwen-ep4": 4, "qwen-ep2x2": 2, "llama-fsdp4": None}  # name: EP size (None: no MoE)
INDEX = "model.safetensors.index.json"


@pytest.fixture(scope="module")
def saves(ckpt, work):
    """Run the checkpointer once for every save; return name -> the save's folder (step/model)."""
    out = work / "am-checkpoint-saves"
    out.mkdir(exist_ok=True)
    am_common.launch("am_checkpoint_worker", out, ckpt["hf"] / "config.json", *SAVES, nproc=W,
                     timeout=400)
    return {name: out / name / "step" / "model" for name in SAVES}


def oracle(saves, name, what):
    """What the worker wrote beside a save: full.safetensors, rank-G.safetensors/.json."""
    return saves[name].parent.parent / what


@pytest.mark.parametrize("name", SAVES)
def test_consolidated_view_equals_automodel_consolidation(saves, mount, name):
    """The mount of the save is Automodel's consolidated/ export: the same tensors in the same
    files, the same index, the same config files; and it is to_hf of the state dict gathered
    from the ranks (DTensor.full_tensor())."""
    m = mount(saves[name])
    view, view_file = load_folder(m)
    consolidated = saves[name] / "consolidated"
    want, want_file = load_folder(consolidated)
    assert_same(view, want, f"mount of {name} against Automodel's consolidated/",
                want_name="consolidated export")
    moved = {k: (view_file[k], want_file[k]) for k in view if k in want_file and view_file[k] != want_file[k]}
    assert not moved, f"{name}: keys in other files than Automodel's consolidated/ puts them: {moved}"
    got_index, want_index = json.loads((m / INDEX).read_text()), json.loads((consolidated / INDEX).read_text())
    assert got_index["weight_map"] == want_index["weight_map"], f"{name}: {INDEX} weight_map differs"
    assert got_index["metadata"]["total_size"] == want_index["metadata"]["total_size"], \
        f"{name}: total_size {got_index['metadata']['total_size']} != {want_index['metadata']['total_size']}"
    for p in sorted(consolidated.iterdir()):
        if p.is_file() and not p.name.endswith(".safetensors") and p.name != INDEX:
            assert (m / p.name).read_bytes() == p.read_bytes(), f"{name}: {p.name} differs from consolidated/"
    full = load_file(str(oracle(saves, name, "full.safetensors")))
    assert_same(view, full, f"mount of {name} against to_hf of the gathered state dict",
                want_name="gathered state dict")


@pytest.mark.parametrize("name", [n for n, ep in SAVES.items() if ep])
def test_resharded_view_equals_saving_ranks(saves, mount, name):
    """Re-sliced for the EP layout the save was made with (-o ep_size=EP, plus ep_shard_size
    when EP < W), each rank folder holds exactly the expert shards that rank had in memory
    (its DTensors' to_local()), and every other tensor whole, as gathered."""
    ep = SAVES[name]
    k = W // ep
    opts = f"ep_size={ep}" + (f",ep_shard_size={k}" if k > 1 else "")
    m = mount(saves[name], None, "-o", opts)
    full = load_file(str(oracle(saves, name, "full.safetensors")))
    failures = []
    for g in range(W):
        meta = json.loads(oracle(saves, name, f"rank-{g}.json").read_text())
        mine = load_file(str(oracle(saves, name, f"rank-{g}.safetensors")))
        folder = f"ep-rank-{meta['ep_rank']}" + (f"-shard-{meta['ep_shard_rank']}" if k > 1 else "")
        view, _ = load_folder(m / folder)
        want = {**{key: t for key, t in full.items() if key not in mine}, **mine}
        try:
            assert_same(view, want, f"{name} -o {opts}: {folder} against what global rank {g} "
                        f"(ep rank {meta['ep_rank']}, ep_shard rank {meta['ep_shard_rank']}) saved",
                        want_name=f"rank {g}")
        except AssertionError as e:
            failures.append(str(e))
    assert not failures, "\n".join(failures)


# Every save, dense ones too: DCP_SHARDING_INFO holds chunk offsets, not global shapes, so a
# dense save without its last rank file is refused by what .hf_metadata/config.json fixes
# (vocab_size, hidden_size, ...), a MoE save also by the expert count or the dim-1 tiling.
MISSING = list(SAVES)


@pytest.mark.parametrize("name", MISSING)
def test_missing_last_rank_refused(saves, mount, tmp, name):
    """A copy of the save without the last rank's shard file refuses to mount (nothing gets
    mounted) with one line naming the tensor or file."""
    src = tmp / "save"
    last = f"shard-{W:05}-model-00001-of-00001.safetensors"
    assert (saves[name] / last).is_file(), f"{name}: {last} is not in {sorted(p.name for p in saves[name].iterdir())}"
    shutil.copytree(saves[name], src, ignore=lambda d, names: [last] if Path(d) == saves[name] else [])
    try:
        p = mount.fail(src, tmp / "m", stderr=subprocess.STDOUT)
    except AssertionError as e:  # say what the view shows, and what config.json says
        vj = tmp / "m" / ".qvlmoefs" / "view.json"
        text = json.loads((src / ".hf_metadata" / "config.json").read_text()).get("text_config", {})
        named = {k: text[k] for k in ("num_experts", "num_local_experts") if k in text}
        shown = json.loads(vj.read_text()).get("experts") if vj.is_file() else None
        raise AssertionError(f"{name} without {last}: {e}\nthe view shows {shown} experts; "
                             f".hf_metadata/config.json's text_config names {named}") from None
    out = p.stdout.strip()
    assert len(out.splitlines()) == 1, f"{name} without {last}: not one line: {out!r}"
    assert f"{last} (rank {W - 1}) is likely missing" in out, f"{name} without {last}: {out!r}"
