"""NeMo Automodel's own Qwen3VLMoeStateDictAdapter as the oracle of the views.

The adapter is imported from the installed nemo_automodel and built the way Automodel's
Qwen3-VL-MoE model builds it: the checkpoint's text config, the MoEConfig of its text backend,
a default BackendConfig, and dtype=torch.bfloat16 (the checkpoint's dtype; from_hf casts the
expert tensors `.to(self.dtype)`, and the default float32 would change their bytes).

- from_hf of a source state dict (read with safetensors) is the native view, key for key and
  byte for byte;
- to_hf of a native state dict is the reverse view, with the mount's exclude passed explicitly
  (the adapter's exclude_key_regex defaults to None, which keeps `_extra_state` tensors; the
  mount's default, like Automodel's checkpointer, drops `.*_extra_state.*`);
- on a real DeviceMesh (W = 4 gloo processes on CPU, meshes built by Automodel's
  MeshContext.build, dims ("ep_shard", "ep")), each rank's from_hf local tensors are that rank's
  folder of an ep_size mount, uneven splits (E = 10 over 4) included, and
  get_expert_range_for_rank_from_mesh gives the ranges the mount's metadata names.
"""
import json

import pytest
from safetensors.torch import load_file

import am_common
from am_common import MOUNT_EXCLUDE, assert_same, file_metadata, load_folder, make_adapter

W = 4  # processes of the mesh runs
# id: (checkpoint, ep size); the ep_shard size is W / ep, as Automodel derives it
MESH_JOBS = {"hf-ep4": ("hf", 4), "hf-ep2x2": ("hf", 2), "e10-ep4": ("e10", 4), "e10-ep2x2": ("e10", 2)}


def mesh_options(ep):
    """The -o argument whose rank folders match a mesh of ep ranks over W processes."""
    k = W // ep
    return f"ep_size={ep}" + (f",ep_shard_size={k}" if k > 1 else "")


def rank_folder(meta):
    """The rank folder of an ep_size mount that holds what this mesh rank holds."""
    if meta["ep_shard_size"] > 1:
        return f"ep-rank-{meta['ep_rank']}-shard-{meta['ep_shard_rank']}"
    return f"ep-rank-{meta['ep_rank']}"


@pytest.fixture(scope="module")
def mesh_oracle(ckpt, work):
    """Run from_hf on every rank of every MESH_JOBS mesh (one am_launch run of W processes).

    Returns a function job -> [(rank metadata, local tensors) for global ranks 0..W-1].
    """
    out = work / "am-adapter-oracle"
    out.mkdir(exist_ok=True)
    jobs = [{"name": name, "source": str(ckpt[src]), "ep": ep} for name, (src, ep) in MESH_JOBS.items()]
    (out / "jobs.json").write_text(json.dumps(jobs))
    am_common.launch("am_adapter_worker", out, out / "jobs.json", nproc=W)

    def ranks(job):
        """What each global rank of the job's mesh got from from_hf."""
        d = out / job
        return [(json.loads((d / f"rank-{g}.json").read_text()), load_file(str(d / f"rank-{g}.safetensors")))
                for g in range(W)]
    return ranks


# ---------------------------------------------------------------- whole tensors (no mesh)


@pytest.mark.parametrize("src", ["hf", "odd", "noprefix", "e10"])
def test_from_hf_equals_native_view(ckpt, mount, src):
    """The native view of an HF checkpoint is from_hf of its state dict, with no device mesh
    (whole tensors): same keys, dtypes, shapes and bytes (odd: shuffled headers, 3 shards,
    *_scale_inv tensors that from_hf drops; noprefix: no `model.` prefix)."""
    m = mount(ckpt[src])
    view, _ = load_folder(m)
    hf, _ = load_folder(ckpt[src])
    want = make_adapter(ckpt[src]).from_hf(hf)
    assert_same(view, want, f"native view of {src} against Automodel's from_hf of the source",
                want_name="from_hf")


TO_HF = {  # id: (checkpoint, -o exclude=..., or None for the mount's default)
    "native": ("native", None),
    "e10n": ("e10n", None),
    "native-exclude-down": ("native", r".*experts\.down_proj$"),  # matched after renaming
}


@pytest.mark.parametrize("src,exclude", TO_HF.values(), ids=TO_HF.keys())
def test_to_hf_equals_reverse_view(ckpt, mount, src, exclude):
    """The reverse (HF) view of a native checkpoint is to_hf of its state dict, with the same
    exclude regex: the mount's default `.*_extra_state.*` passed explicitly, or -o exclude."""
    m = mount(ckpt[src], None, *(() if exclude is None else ("-o", f"exclude={exclude}")))
    view, _ = load_folder(m)
    native, _ = load_folder(ckpt[src])
    adapter = make_adapter(ckpt[src])
    want = adapter.to_hf(native, exclude_key_regex=exclude or MOUNT_EXCLUDE)
    assert_same(view, want, f"HF view of {src} against Automodel's to_hf(exclude_key_regex="
                f"{exclude or MOUNT_EXCLUDE!r}) of the source", want_name="to_hf")
    if exclude is None:
        # why the regex is passed: with the adapter's own default (None) to_hf keeps exactly the
        # Transformer Engine extra state that the mount (and Automodel's checkpointer) drops
        kept = set(adapter.to_hf(native)) - set(want)
        assert kept == {k for k in native if "_extra_state" in k}, kept


# ---------------------------------------------------------------- a real expert-parallel mesh


@pytest.mark.parametrize("job", MESH_JOBS)
def test_from_hf_on_mesh_equals_rank_folders(ckpt, mount, mesh_oracle, job):
    """Each rank's from_hf local tensors (the experts it holds, cut on dim 1 over ep_shard,
    everything else whole) are its rank folder of an ep_size mount, byte for byte."""
    src, ep = MESH_JOBS[job]
    opts = mesh_options(ep)
    m = mount(ckpt[src], None, "-o", opts)
    failures = []
    for meta, want in mesh_oracle(job):
        folder = m / rank_folder(meta)
        view, _ = load_folder(folder)
        experts = {k for k in want if k.endswith((".experts.gate_and_up_projs", ".experts.down_projs"))}
        assert experts and set(meta["placements"]) == experts, \
            f"from_hf on rank {meta['rank']} made DTensors of {sorted(meta['placements'])}, not of the experts"
        try:
            assert_same(view, want, f"{src} -o {opts}: {folder.name} against from_hf on global rank "
                        f"{meta['rank']} of the moe_mesh (ep rank {meta['ep_rank']} of {meta['ep_size']}, "
                        f"ep_shard rank {meta['ep_shard_rank']} of {meta['ep_shard_size']})",
                        want_name="from_hf")
        except AssertionError as e:
            failures.append(str(e))
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("job", MESH_JOBS)
def test_expert_range_agrees_with_mesh(ckpt, mount, mesh_oracle, job):
    """get_expert_range_for_rank_from_mesh on each mesh rank is the range its rank folder
    declares: .qvlmoefs/view.json, the qvlmoefs.* __metadata__ of the shard holding experts,
    and dim 0 of its expert tensors (3, 3, 2, 2 for E = 10 over 4)."""
    src, ep = MESH_JOBS[job]
    opts = mesh_options(ep)
    m = mount(ckpt[src], None, "-o", opts)
    bad = []
    for meta, _ in mesh_oracle(job):
        folder = m / rank_folder(meta)
        want = (meta["expert_start"], meta["expert_end"])
        vj = json.loads((folder / ".qvlmoefs" / "view.json").read_text())
        got = {"view.json": (vj.get("expert_start"), vj.get("expert_end"))}
        for name, md in file_metadata(folder).items():
            if "qvlmoefs.expert_start" in md:
                got[name] = (int(md["qvlmoefs.expert_start"]), int(md.get("qvlmoefs.expert_end", -1)))
        counts = {k: t.shape[0] for k, t in load_folder(folder)[0].items()
                  if k.endswith((".mlp.experts.gate_and_up_projs", ".mlp.experts.down_projs"))}
        if len(got) < 2 or not counts:
            bad.append(f"{folder.name}: no qvlmoefs.expert_start metadata or no expert tensors: {got}")
        oracle = (f"Automodel's get_expert_range_for_rank_from_mesh on global rank {meta['rank']} (ep rank "
                  f"{meta['ep_rank']} of {meta['ep_size']}) says [{want[0]}, {want[1]})")
        bad += [f"{folder.name}: {where} says experts [{g[0]}, {g[1]}), {oracle}"
                for where, g in got.items() if tuple(g) != want]
        bad += [f"{folder.name}: {k} holds {n} experts, {oracle}"
                for k, n in counts.items() if n != want[1] - want[0]]
        if (vj.get("ep_rank"), vj.get("ep_size")) != (meta["ep_rank"], meta["ep_size"]):
            bad.append(f"{folder.name}: view.json ep_rank/ep_size {vj.get('ep_rank')}/{vj.get('ep_size')}, "
                       f"mesh {meta['ep_rank']}/{meta['ep_size']}")
    assert not bad, f"{src} -o {opts}:\n" + "\n".join(bad)


SINGLE = {  # id: (mesh job, global rank): the -o options name that one rank (and shard)
    "e10-ep4-rank3": ("e10-ep4", 3),
    "e10-ep2x2-rank3": ("e10-ep2x2", 3),
}


@pytest.mark.parametrize("job,g", SINGLE.values(), ids=SINGLE.keys())
def test_from_hf_on_mesh_equals_single_rank_mount(ckpt, mount, mesh_oracle, job, g):
    """-o ep_size=W,ep_rank=R (and ep_shard_size/ep_shard_rank) shows that rank's from_hf
    tensors at the mount's root."""
    src, _ = MESH_JOBS[job]
    meta, want = mesh_oracle(job)[g]
    opts = f"ep_size={meta['ep_size']},ep_rank={meta['ep_rank']}"
    if meta["ep_shard_size"] > 1:
        opts += f",ep_shard_size={meta['ep_shard_size']},ep_shard_rank={meta['ep_shard_rank']}"
    m = mount(ckpt[src], None, "-o", opts)
    view, _ = load_folder(m)
    assert_same(view, want, f"{src} -o {opts} against from_hf on global rank {g} of the moe_mesh",
                want_name="from_hf")
