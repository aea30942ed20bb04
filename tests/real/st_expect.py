"""What a view must hold, computed from its SOURCE with the official tools only.

The source's tensors are read with `safetensors.safe_open(framework="pt")`; the view's key
names come from NeMo Automodel's own `Qwen3VLMoeStateDictAdapter` (`from_hf` for a native view
of an HF source, `to_hf` with `exclude_key_regex` for an HF view of a native one); each rank's
expert range is Automodel's own `get_expert_range_for_rank_from_mesh` (`ep_range`). From the
project's checker (tests/checkview) only the name pattern of the expert tensors, the dtype
sizes and the header reader are shared, never how a view is derived (test_safetensors checks
the checker's range formula against Automodel's).

A view is described per folder (the root, or one `ep-rank-R[-shard-S]` folder) by `Expected`:
for every virtual `*.safetensors` file its `__metadata__` and its tensors, plus the index.
`compare_dicts()` and `differ()` turn disagreements into one readable line each.
"""
import functools
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

if str(Path(__file__).resolve().parents[1]) not in sys.path:  # tests/: the checkview package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from checkview.contract import HF_EXPERT, NATIVE_SUFFIXES  # noqa: E402

DEFAULT_EXCLUDE = r".*_extra_state.*"
INDEX = "model.safetensors.index.json"


class EpMesh:
    """A one-dimensional EP mesh of w ranks seen from rank r: what
    get_expert_range_for_rank_from_mesh asks of its device mesh (mesh_dim_names, the "ep"
    submesh, size(), get_local_rank()), without a process group."""
    mesh_dim_names = ("ep",)

    def __init__(self, w, r):
        """Rank r of w."""
        self.w, self.r = w, r

    def __getitem__(self, dims):
        """The "ep" submesh: this mesh itself."""
        return self

    def size(self):
        """The EP world size."""
        return self.w

    def get_local_rank(self):
        """This rank's place in the mesh."""
        return self.r


@functools.lru_cache(maxsize=None)
def ep_range(n, w, r):
    """(start, count) of EP rank r of w's experts out of n, as NeMo Automodel computes them
    (get_expert_range_for_rank_from_mesh, which its adapter's from_hf slices with)."""
    from nemo_automodel.components.moe.state_dict_utils import get_expert_range_for_rank_from_mesh
    start, end = get_expert_range_for_rank_from_mesh(EpMesh(w, r), n)
    return start, end - start


def naming(keys):
    """'native' when any key ends in a native expert suffix, else 'hf' (DESIGN.md §1)."""
    return "native" if any(k.endswith(NATIVE_SUFFIXES) for k in keys) else "hf"


def is_expert(key, src_naming):
    """One of the two expert tensors of a layer, the only tensors slicing cuts."""
    return bool(HF_EXPERT.fullmatch(key)) if src_naming == "hf" else key.endswith(NATIVE_SUFFIXES)


def view_expert(key):
    """An expert tensor of a view, whichever naming the view has."""
    return bool(HF_EXPERT.fullmatch(key)) or key.endswith(NATIVE_SUFFIXES)


# ---------------------------------------------------------------- Automodel's adapter, for names

@functools.lru_cache(maxsize=None)
def adapter(n_experts):
    """Automodel's adapter for a model of n_experts; dtype bf16 so from_hf's .to() copies nothing."""
    from nemo_automodel.components.models.common import BackendConfig
    from nemo_automodel.components.models.qwen3_vl_moe.state_dict_adapter import Qwen3VLMoeStateDictAdapter
    from nemo_automodel.components.moe.config import MoEConfig
    moe = MoEConfig(n_routed_experts=n_experts, n_shared_experts=0, n_activated_experts=1,
                    n_expert_groups=1, n_limited_groups=1, train_gate=False,
                    gate_bias_update_factor=0.0, aux_loss_coeff=0.0, score_func="softmax",
                    route_scale=1.0, dim=1, inter_dim=1, moe_inter_dim=1, norm_topk_prob=True)
    return Qwen3VLMoeStateDictAdapter(None, moe, BackendConfig(), dtype=torch.bfloat16)


def view_names(keys, src_naming, view_naming, exclude, n_experts):
    """{source key: view key, or None when the view leaves it out}, as Automodel names them.

    The adapter renames whole state dicts (its `{P}` prefix depends on every key), so each key
    is given a one-element token tensor of its own and the renamed dict is mapped back to the
    source keys by the tokens' storage (from_hf slices experts to [0, n) and casts to bf16,
    which keeps a one-element bf16 token's storage).
    """
    if src_naming == view_naming:
        return {k: k for k in keys}
    tokens = {k: torch.zeros(1, dtype=torch.bfloat16) for k in keys}
    ad = adapter(max(n_experts, 1))
    out = ad.from_hf(dict(tokens)) if view_naming == "native" else \
        ad.to_hf(dict(tokens), exclude_key_regex=exclude)
    owner = {t.data_ptr(): k for k, t in tokens.items()}
    names = dict.fromkeys(keys)
    for vkey, t in out.items():
        names[owner[t.data_ptr()]] = vkey
    return names


# ---------------------------------------------------------------- the source, read once

@dataclass
class SourceFile:
    """One source safetensors file as the official reader sees it."""
    meta: dict
    tensors: dict  # key -> torch tensor


@functools.lru_cache(maxsize=None)
def read_source(folder):
    """{relative path: SourceFile} of every *.safetensors below folder (hidden folders skipped)."""
    files = {}
    for d, dirs, names in os.walk(folder):
        dirs[:] = sorted(x for x in dirs if not x.startswith("."))
        for name in sorted(names):
            if name.endswith(".safetensors"):
                p = os.path.join(d, name)
                with safe_open(p, framework="pt") as f:
                    files[os.path.relpath(p, folder)] = SourceFile(
                        dict(f.metadata() or {}), {k: f.get_tensor(k) for k in f.keys()})
    return files


def n_experts_of(folder):
    """config.json's text_config.num_experts (0 when the folder has no such config)."""
    for cfg in (Path(folder) / "config.json", Path(folder) / ".hf_metadata" / "config.json"):
        if cfg.is_file():
            c = json.loads(cfg.read_text())
            return int(c.get("text_config", c).get("num_experts", 0))
    return 0


# ---------------------------------------------------------------- the expected view

@dataclass
class Expected:
    """One folder of a view: files {rel: (metadata, {view key: tensor})} and its index."""
    where: str
    files: dict = field(default_factory=dict)
    has_index: bool = False
    index_meta: dict = field(default_factory=dict)  # the index's metadata except total_size

    def weight_map(self):
        """{view key: file} the generated index must hold."""
        return {k: rel for rel, (_, ts) in self.files.items() for k in ts}

    def total_size(self):
        """Sum of the view's tensor bytes."""
        return sum(t.numel() * t.element_size() for _, ts in self.files.values() for t in ts.values())


class Tensors(dict):
    """{view key: expected tensor}; .origin maps each sliced expert key to (the uncut source
    tensor, (W, R, K, S)), so that a mismatch can say which source experts the view holds."""

    def __init__(self):
        super().__init__()
        self.origin = {}


def cut(t, sl):
    """The EP slice sl = (W, R, K, S) of expert tensor t: dim 0, then dim 1 when K > 1."""
    w, r, k, s = sl
    start, count = ep_range(t.shape[0], w, r)
    t = t[start:start + count]
    if k > 1:
        assert t.shape[1] % k == 0, f"dim 1 ({t.shape[1]}) does not divide by ep_shard_size {k}"
        part = t.shape[1] // k
        t = t[:, s * part:(s + 1) * part]
    return t.contiguous()


def expect(src, view=None, exclude=DEFAULT_EXCLUDE, sl=None, where="", same_default=False):
    """The Expected of one folder of a view of src (a plain checkpoint folder).

    view: the view's naming (None: the other naming than the source's, or the source's own
    with same_default, as for a consolidated sharded save); sl: (W, R, K, S) or None.
    """
    src = Path(src)
    files = read_source(str(src))
    keys = [k for sf in files.values() for k in sf.tensors]
    src_naming = naming(keys)
    view = view or (src_naming if same_default else ("hf" if src_naming == "native" else "native"))
    names = view_names(keys, src_naming, view, exclude, n_experts_of(src))
    seen = {}
    for k, v in names.items():
        assert v is None or v not in seen, f"{src}: {k} and {seen.get(v)} both become {v}"
        seen[v] = k
    first_n = next((t.shape[0] for rel in sorted(files) for k, t in files[rel].tensors.items()
                    if is_expert(k, src_naming)), None)
    exp = Expected(where)
    for rel, sf in files.items():
        meta = dict(sf.meta)
        meta.setdefault("format", "pt")
        if sl:
            w, r, k, s = sl
            meta.update({"qvlmoefs.ep_size": str(w), "qvlmoefs.ep_rank": str(r)})
            if first_n is not None:
                start, count = ep_range(first_n, w, r)
                meta.update({"qvlmoefs.expert_start": str(start),
                             "qvlmoefs.expert_end": str(start + count)})
            if k > 1:
                meta.update({"qvlmoefs.ep_shard_size": str(k), "qvlmoefs.ep_shard_rank": str(s)})
        tensors = Tensors()
        for key, t in sf.tensors.items():
            vkey = names[key]
            if vkey is None:
                continue
            if sl and is_expert(key, src_naming):
                tensors[vkey], tensors.origin[vkey] = cut(t, sl), (t, sl)
            else:
                tensors[vkey] = t
        exp.files[rel] = (meta, tensors)
    idx = src / INDEX
    exp.has_index = idx.is_file()
    if exp.has_index:
        exp.index_meta = {k: v for k, v in json.loads(idx.read_text()).get("metadata", {}).items()
                          if k != "total_size"}
    return exp


# ---------------------------------------------------------------- comparing

def raw(t):
    """A tensor's bytes as a flat uint8 tensor (BF16 NaN patterns compare as bytes, not values)."""
    t = t.contiguous()
    return t.reshape(-1).view(torch.uint8) if t.dim() else t.reshape(1).view(torch.uint8)


def differ(got, want, where):
    """None when got and want have one dtype, shape and the same bytes; else one line saying how."""
    if got.dtype != want.dtype:
        return f"{where}: dtype {got.dtype}, expected {want.dtype}"
    if list(got.shape) != list(want.shape):
        return f"{where}: shape {list(got.shape)}, expected {list(want.shape)}"
    a, b = raw(got), raw(want)
    if torch.equal(a, b):
        return None
    bad = (a != b).nonzero().flatten()
    flat = int(bad[0]) // max(got.element_size(), 1)
    at = [int(i) for i in torch.unravel_index(torch.tensor(flat), tuple(want.shape))] if want.dim() else []
    return (f"{where}: {bad.numel()} of {a.numel()} bytes differ, the first in element {at} "
            f"of shape {list(want.shape)}")


def dict_diff(got, want):
    """The entries of two flat dicts that differ, as 'key: got, expected want' (for metadata)."""
    return "; ".join(f"{k}: {got.get(k, '(absent)')!r}, expected {want.get(k, '(absent)')!r}"
                     for k in sorted(set(got) | set(want)) if got.get(k) != want.get(k))


def which_experts(got, src, sl):
    """What the rows of a view's expert tensor are: 'e' (source expert e) or 'e/s' (its dim-1
    part s of K), '?' for none; and what they should be. For messages only."""
    w, r, k, _ = sl
    part = src.shape[1] // k if k > 1 else src.shape[1]
    cands = [(f"{j}" if k == 1 else f"{j}/{s}", raw(src[j, s * part:(s + 1) * part]))
             for j in range(src.shape[0]) for s in range(k)]
    rows = []
    for i in range(got.shape[0] if got.dim() else 0):
        gi = raw(got[i])
        rows.append(next((name for name, c in cands if c.numel() == gi.numel() and torch.equal(c, gi)), "?"))
    start, count = ep_range(src.shape[0], w, r)
    want = [f"{j}" if k == 1 else f"{j}/{sl[3]}" for j in range(start, start + count)]
    return rows, want


def compare_dicts(got, want, where):
    """Lines for keys missing or extra, then for each common key that differs (for a sliced
    expert tensor, with the source experts the view's rows turn out to be)."""
    errs = []
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    if missing:
        errs.append(f"{where}: {len(missing)} keys missing: {missing[:8]}")
    if extra:
        errs.append(f"{where}: {len(extra)} keys not expected: {extra[:8]}")
    origin = getattr(want, "origin", {})
    for k in sorted(set(got) & set(want)):
        e = differ(got[k], want[k], f"{where}: {k}")
        if e and k in origin and got[k].dtype == origin[k][0].dtype:
            rows, should = which_experts(got[k], *origin[k])
            e += f"; the view's rows are source experts {rows}, expected {should}"
        if e:
            errs.append(e)
    return errs


def report(errs, what):
    """Assertion text: how many problems, then the first 40 lines."""
    more = f"\n... and {len(errs) - 40} more" if len(errs) > 40 else ""
    return f"{what}: {len(errs)} problems\n" + "\n".join(errs[:40]) + more
