"""An FP8 release made from a Hub-layout BF16 checkpoint, and what NeMo Automodel alone makes of
one: the fixtures of test_computed.py and test_vllm.py.

The release is laid out as Qwen's FP8 releases of its MoE models are: experts one weight each,
[out, in] (`...mlp.experts.J.{gate,up,down}_proj.weight`); every linear weight of the language
model F8_E4M3 with one F32 scale per 128x128 block in `NAME_scale_inv`; `quantization_config`
fp8 with `weight_block_size` [128, 128]. Automodel's side is its own functions only:
`dequantize_from_fp8` (deepseek_v3's adapter), the Qwen3-MoE adapter's `from_hf` (which stacks
per-expert weights), the Qwen3-VL-MoE adapter's `to_hf`.
"""
import json
import shutil

import torch
from safetensors import safe_open
from safetensors.torch import save_file

import tf_model
from am_common import load_folder, make_adapter, moe_config, read_config

B = 128
FP8_MAX = 448.0


def quantize(w):
    """[R, C] BF16 to (F8_E4M3 [R, C], F32 scales [ceil(R/B), ceil(C/B)]): each block scaled
    so its largest magnitude is FP8's largest."""
    R, C = w.shape
    s = torch.empty((-(-R // B), -(-C // B)), dtype=torch.float32)
    q = torch.empty((R, C), dtype=torch.float8_e4m3fn)
    for i in range(s.shape[0]):
        for j in range(s.shape[1]):
            blk = w[i * B:(i + 1) * B, j * B:(j + 1) * B].float()
            s[i, j] = max(float(blk.abs().max()) / FP8_MAX, 1e-12)
            q[i * B:(i + 1) * B, j * B:(j + 1) * B] = (blk / s[i, j]).to(torch.float8_e4m3fn)
    return q, s


def is_quantized(k):
    """The linear weights an FP8 release keeps in FP8: the language model's projections."""
    return ".language_model." in k and k.endswith(("_proj.weight"))


def fp8_release(hub, dst):
    """The FP8 release of Hub-layout folder hub, into dst (see the module's text)."""
    dst.mkdir()
    wm = {}
    for f in sorted(hub.glob("*.safetensors")):
        out = {}
        with safe_open(str(f), "pt") as g:
            meta = g.metadata()
            for k in g.keys():
                t = g.get_tensor(k)
                if tf_model.is_hf_expert(k):  # [E, H, 2I] / [E, I, H] -> per expert [out, in]
                    base = k.rsplit(".", 1)[0]
                    for e in range(t.shape[0]):
                        mats = {"gate_proj": t[e][:, :t.shape[2] // 2].T,
                                "up_proj": t[e][:, t.shape[2] // 2:].T} \
                            if k.endswith("gate_up_proj") else {"down_proj": t[e].T}
                        for name, m in mats.items():
                            out[f"{base}.{e}.{name}.weight"] = m.contiguous()
                else:
                    out[k] = t
        for k in [k for k in out if is_quantized(k)]:
            out[k], out[k + "_scale_inv"] = quantize(out[k])
        save_file(out, str(dst / f.name), metadata=meta)
        wm.update({k: f.name for k in out})
    index = json.loads((hub / "model.safetensors.index.json").read_text())
    index["weight_map"] = wm
    (dst / "model.safetensors.index.json").write_text(json.dumps(index))
    cfg = read_config(hub)
    cfg["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3",
                                  "activation_scheme": "dynamic", "weight_block_size": [B, B]}
    (dst / "config.json").write_text(json.dumps(cfg))
    for f in hub.iterdir():
        if not f.name.endswith((".safetensors", ".index.json")) and f.name != "config.json":
            shutil.copy(f, dst / f.name)
    return dst


def automodel_dequantized(src):
    """The release's state dict with every FP8 weight dequantized by Automodel's
    dequantize_from_fp8 and its scale dropped, keys as they are (one per expert)."""
    from nemo_automodel.components.models.deepseek_v3.state_dict_adapter import dequantize_from_fp8
    sd, _ = load_folder(src)
    return {k: dequantize_from_fp8(t, sd[k + "_scale_inv"], dtype=torch.bfloat16)
            if k + "_scale_inv" in sd else t for k, t in sd.items() if not k.endswith("_scale_inv")}


def automodel_hub_dict(src):
    """The Hub-layout BF16 state dict of FP8 release src, made by Automodel alone:
    automodel_dequantized, then Qwen3-MoE's from_hf to stack each layer's per-expert weights,
    Qwen3-VL-MoE's to_hf for the Hub's names."""
    from nemo_automodel.components.models.common import BackendConfig
    from nemo_automodel.components.models.qwen3_moe.state_dict_adapter import Qwen3MoeStateDictAdapter
    text = read_config(src)["text_config"]
    stacker = Qwen3MoeStateDictAdapter(None, moe_config(text), BackendConfig(), dtype=torch.bfloat16)
    native = stacker.from_hf(automodel_dequantized(src))
    return make_adapter(src).to_hf(native, exclude_key_regex=r".*_extra_state.*")


def offline_copy(src, dst, tensors):
    """A folder holding tensors (one model.safetensors) and src's other files, its config.json
    without quantization_config: what an offline conversion of the release writes."""
    dst.mkdir()
    save_file({k: t.contiguous() for k, t in tensors.items()}, str(dst / "model.safetensors"),
              metadata={"format": "pt"})
    for f in src.iterdir():
        if f.is_file() and not f.name.endswith((".safetensors", ".index.json")):
            shutil.copy(f, dst / f.name)
    cfg = read_config(src)
    cfg.pop("quantization_config", None)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst
