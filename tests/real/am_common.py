"""What the NeMo Automodel tests share: building Automodel's Qwen3-VL-MoE state-dict adapter
for a generated checkpoint, loading a folder the way a loader does, comparing state dicts byte
for byte with messages that name the key (and the expert) that differs, and running a worker
on W gloo ranks (am_launch.py).

Imported both by the test modules (test_automodel_*.py) and by the workers
(am_*_worker.py), so it imports nothing from the integration helpers.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors import safe_open

HERE = Path(__file__).resolve().parent

# The adapter's to_hf drops nothing unless told to (its exclude_key_regex defaults to None);
# the mount's default exclude, and the regex Automodel's own checkpointer passes
# (_maybe_adapt_state_dict_to_hf in nemo_automodel.components.checkpoint.checkpointing), is this.
MOUNT_EXCLUDE = r".*_extra_state.*"


def read_config(src):
    """config.json of a checkpoint folder, as a dict."""
    return json.loads((Path(src) / "config.json").read_text())


def moe_config(text):
    """The MoEConfig Automodel's Qwen3-VL-MoE text backend builds from its text config dict.

    These are the defaults of Qwen3VLMoeTextModelBackend.__init__
    (nemo_automodel.components.models.qwen3_vl_moe.model), field for field; the adapter itself
    reads only n_routed_experts from it.
    """
    from nemo_automodel.components.moe.config import MoEConfig

    return MoEConfig(
        dim=text["hidden_size"],
        inter_dim=text["intermediate_size"],
        moe_inter_dim=text.get("moe_intermediate_size", text["intermediate_size"]),
        n_routed_experts=text.get("num_experts", text.get("num_local_experts")),  # tf 5 writes the latter
        n_shared_experts=0,
        n_activated_experts=text.get("num_experts_per_tok", 1),
        n_expert_groups=1,
        n_limited_groups=1,
        train_gate=True,
        gate_bias_update_factor=0.0,
        score_func="softmax",
        route_scale=1.0,
        aux_loss_coeff=text.get("router_aux_loss_coef", 0.0),
        norm_topk_prob=text.get("norm_topk_prob", False),
        expert_bias=False,
        router_bias=False,
        expert_activation="swiglu",
        softmax_before_topk=True,
        dtype=torch.bfloat16,
    )


def make_adapter(src):
    """Automodel's Qwen3VLMoeStateDictAdapter for the checkpoint folder src (its config.json).

    dtype=torch.bfloat16, the checkpoint's dtype: from_hf casts the expert tensors it slices
    with `.to(self.dtype)`, and the adapter's default dtype (float32) would turn the BF16
    experts into F32 tensors, whose bytes no view could match. With BF16 the cast is a no-op
    and the adapter's output is the checkpoint's own bytes.
    """
    from transformers.models.qwen3_vl_moe.configuration_qwen3_vl_moe import Qwen3VLMoeTextConfig

    from nemo_automodel.components.models.common import BackendConfig
    from nemo_automodel.components.models.qwen3_vl_moe.state_dict_adapter import Qwen3VLMoeStateDictAdapter

    text = read_config(src)["text_config"]
    return Qwen3VLMoeStateDictAdapter(Qwen3VLMoeTextConfig(**text), moe_config(text), BackendConfig(),
                                      dtype=torch.bfloat16)


def load_folder(folder):
    """Every tensor of the *.safetensors files directly in folder, read with safetensors' safe_open.

    Returns (tensors, file_of): key -> tensor, key -> file name. A key in two files is an error.
    """
    tensors, file_of = {}, {}
    files = sorted(p for p in Path(folder).glob("*.safetensors") if p.is_file())
    assert files, f"no *.safetensors files in {folder}"
    for p in files:
        with safe_open(str(p), framework="pt") as f:
            for k in f.keys():
                assert k not in tensors, f"{k} is in both {file_of[k]} and {p.name} ({folder})"
                tensors[k], file_of[k] = f.get_tensor(k), p.name
    return tensors, file_of


def file_metadata(folder):
    """File name -> __metadata__ of each *.safetensors file directly in folder."""
    out = {}
    for p in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(p), framework="pt") as f:
            out[p.name] = f.metadata() or {}
    return out


def local(t):
    """A DTensor's local shard, or the tensor itself."""
    from torch.distributed.tensor import DTensor

    return t.to_local() if isinstance(t, DTensor) else t


def _bytes(t):
    """The tensor's bytes as a flat uint8 tensor (contiguous copy when needed)."""
    t = t.detach().contiguous()
    return t.reshape(-1).view(torch.uint8) if t.numel() else torch.empty(0, dtype=torch.uint8)


def _where(key, got, want):
    """Where two same-shape tensors first differ: element index, and expert for expert tensors."""
    g, w = _bytes(got), _bytes(want)
    i = int((g != w).nonzero()[0]) // max(want.element_size(), 1)
    n = int((g != w).sum())
    idx = list(torch.unravel_index(torch.tensor(i), tuple(want.shape))) if want.dim() else []
    at = "[" + ", ".join(str(int(x)) for x in idx) + "]"
    what = f" (expert {int(idx[0])} of this tensor)" if ".experts." in key and idx else ""
    return f"{n} bytes differ, first at element {at}{what}"


def diff(got, want, got_name="view", want_name="Automodel"):
    """Every difference between two state dicts, as lines (empty when they are identical).

    Keys must be the same set; each tensor must have the same dtype, shape and bytes.
    """
    out = []
    for k in sorted(set(want) - set(got)):
        out.append(f"missing from the {got_name}: {k} (the {want_name} has {tuple(want[k].shape)} "
                   f"{want[k].dtype})")
    for k in sorted(set(got) - set(want)):
        out.append(f"not in the {want_name}: {k} (the {got_name} has {tuple(got[k].shape)} {got[k].dtype})")
    for k in sorted(set(got) & set(want)):
        g, w = local(got[k]), local(want[k])
        if g.dtype != w.dtype or tuple(g.shape) != tuple(w.shape):
            out.append(f"{k}: the {got_name} has {tuple(g.shape)} {g.dtype}, the {want_name} "
                       f"{tuple(w.shape)} {w.dtype}")
        elif not torch.equal(_bytes(g), _bytes(w)):
            out.append(f"{k}: bytes differ from the {want_name}'s: {_where(k, g, w)}")
    return out


def assert_same(got, want, what, got_name="view", want_name="Automodel"):
    """Assert diff(got, want) is empty; the message says what was compared and lists the lines."""
    __tracebackhide__ = True
    lines = diff(got, want, got_name, want_name)
    if lines:
        shown = "\n  ".join(lines[:25]) + (f"\n  ... and {len(lines) - 25} more" if len(lines) > 25 else "")
        raise AssertionError(f"{what}: {len(lines)} differences ({len(got)} tensors in the {got_name}, "
                             f"{len(want)} in the {want_name}):\n  {shown}")


def launch(worker, *args, nproc=4, timeout=300):
    """Run tests/real/WORKER.py's main(ARGS) on nproc forked gloo ranks (am_launch.py).

    Assert every rank exited 0; on failure the message holds the command and the output's tail,
    where the failing rank's traceback is.
    """
    __tracebackhide__ = True
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, str(HERE / "am_launch.py"), str(nproc), worker] + [str(a) for a in args]
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=timeout, env=env)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        raise AssertionError(f"timed out after {timeout}s: {' '.join(cmd)}\n{out[-6000:]}") from None
    if p.returncode != 0:
        raise AssertionError(f"exit status {p.returncode}: {' '.join(cmd)}\n--- output (tail) ---\n"
                             f"{p.stdout[-8000:]}")
    return p
