"""NeMo Automodel's Qwen3-VL-MoE state-dict adapter, and safetensors headers, for the DCP and
transformers tests: the native names these tests expect come from Automodel itself, never from
this project's own rules (the headers are read by the suites' one header reader,
tests/checkview/reader.py).
"""
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import _getdtype

if str(Path(__file__).resolve().parents[1]) not in sys.path:  # tests/: the checkview package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from checkview.reader import read_header  # noqa: E402

EXPERT_SUFFIXES = (".mlp.experts.gate_and_up_projs", ".mlp.experts.down_projs")


def adapter(n_experts, dtype):
    """Qwen3VLMoeStateDictAdapter for n_experts routed experts.

    dtype must be the checkpoint's own: from_hf casts expert tensors `.to(dtype)` (a silent
    conversion otherwise). Only n_routed_experts matters to the renaming and slicing; the other
    MoEConfig fields are required by its constructor and set to plain values.
    """
    from nemo_automodel.components.models.common import BackendConfig
    from nemo_automodel.components.models.qwen3_vl_moe.state_dict_adapter import \
        Qwen3VLMoeStateDictAdapter
    from nemo_automodel.components.moe.config import MoEConfig
    moe = MoEConfig(n_routed_experts=n_experts, n_shared_experts=0, n_activated_experts=2,
                    n_expert_groups=1, n_limited_groups=1, train_gate=False,
                    gate_bias_update_factor=0.0, aux_loss_coeff=0.0, score_func="softmax",
                    route_scale=1.0, dim=1, inter_dim=1, moe_inter_dim=1, norm_topk_prob=True,
                    dtype=dtype)
    return Qwen3VLMoeStateDictAdapter(config=None, moe_config=moe, backend=BackendConfig(),
                                      dtype=dtype)


def to_hf_name(ad, native_key):
    """The HF name Automodel's convert_single_tensor_to_hf gives a native key (None: dropped)."""
    out = ad.convert_single_tensor_to_hf(native_key, None, exclude_key_regex=r".*_extra_state.*")
    return out[0][0] if out else None


def is_expert(native_key):
    """True for the two expert tensors of a layer, in the native naming."""
    return native_key.endswith(EXPERT_SUFFIXES)


def header(path):
    """(header dict without __metadata__, data start offset) of one safetensors file."""
    h, n = read_header(path)
    h.pop("__metadata__", None)
    return h, 8 + n


def tensor_infos(folder):
    """{key: (file name, shape, torch dtype, nbytes)} over folder's *.safetensors."""
    out = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        h, _ = header(f)
        for k, t in h.items():
            out[k] = (f.name, t["shape"], _getdtype(t["dtype"]),
                      t["data_offsets"][1] - t["data_offsets"][0])
    return out


def n_experts(folder):
    """The global expert count of folder's config.json (text_config.num_experts)."""
    cfg = json.loads((Path(folder) / "config.json").read_text())
    tc = cfg.get("text_config", cfg)
    return int(tc.get("num_experts", tc.get("num_local_experts")))


def native_template(src, ad, device_mesh=None, fill=-7.0):
    """The native-named state dict to load into, made by Automodel's adapter.from_hf from the HF
    source's shapes and dtypes: with device_mesh, expert tensors are the rank's Shard(0) DTensors
    (Automodel's init path), everything else plain whole tensors. Filled with `fill` so a tensor
    the load never wrote cannot pass for a loaded one."""
    hf = {k: torch.full(shape, fill, dtype=dt) for k, (_, shape, dt, _) in tensor_infos(src).items()}
    return ad.from_hf(hf, device_mesh=device_mesh)
