"""The tiny random Qwen3-VL-MoE of test_transformers.py, and what its tests compare.

Built in code (never downloaded): 2 text layers, hidden 64, 8 experts of moe_intermediate_size
16 (so gate_up is 2I = 32 wide, not square against hidden 64: a transpose cannot go unseen),
a 2-block vision tower, BF16 like the real checkpoints. The same seed gives the same weights in
every process (CPU init is deterministic), which tf_save.py relies on.
"""
import json
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from transformers import Qwen3VLMoeConfig, Qwen3VLMoeForConditionalGeneration  # noqa: E402

if str(Path(__file__).resolve().parents[1]) not in sys.path:  # tests/: the checkview package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from checkview.contract import HF_EXPERT  # noqa: E402

SEED = 1234
DTYPE = torch.bfloat16
EXPERTS, HIDDEN, MOE_INTER, LAYERS, VOCAB = 8, 64, 16, 2, 256


def is_hf_expert(name):
    """One of a layer's two expert tensors, in HF naming (the test suites' one pattern,
    tests/checkview/contract.py's HF_EXPERT)."""
    return bool(HF_EXPERT.fullmatch(name))


def config():
    """The tiny config (text-only forward needs no image tokens; vision is there for the keys)."""
    return Qwen3VLMoeConfig(
        text_config=dict(
            vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=LAYERS,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            moe_intermediate_size=MOE_INTER, num_experts=EXPERTS, num_experts_per_tok=2,
            max_position_embeddings=256,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                             "mrope_section": [2, 3, 3], "mrope_interleaved": True}),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2,
                           out_hidden_size=HIDDEN, patch_size=8, num_position_embeddings=16,
                           deepstack_visual_indexes=[0]),
    )


def build():
    """The seeded random model, BF16, in eval mode.

    _from_config(dtype=) as from_pretrained builds it: the rotary inv_freq buffers stay F32
    (a plain .to(bfloat16) would round them and change the logits of an equal state dict).
    """
    torch.manual_seed(SEED)
    return Qwen3VLMoeForConditionalGeneration._from_config(config(), dtype=DTYPE).eval()


def inputs():
    """A fixed text-only batch: 2 rows of 12 tokens, the second left-padded by 3."""
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(0, VOCAB, (2, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    return {"input_ids": ids, "attention_mask": mask}


@torch.no_grad()
def logits(model):
    """The logits of one forward pass over inputs()."""
    return model(**inputs()).logits


def save(model, folder, max_shard_size="100KB"):
    """save_pretrained into folder with several shards; return the shard names."""
    model.save_pretrained(folder, max_shard_size=max_shard_size)
    return sorted(p.name for p in Path(folder).glob("*.safetensors"))


def to_hub_layout(src, dst):
    """Copy a save_pretrained folder, expert tensors transposed to the layout of the Hub's
    Qwen3-VL-MoE checkpoints (gate_up_proj [E, H, 2I], down_proj [E, I, H]).

    transformers 5.18 writes its in-memory layout ([E, 2I, H], [E, H, I]): its qwen3_vl_moe
    conversion is Transpose(1, 2, check_dims=True), whose reverse on save compares the tensor with
    the model's own parameter shape and so never transposes. Loading accepts both.
    """
    from safetensors import safe_open
    from safetensors.torch import save_file
    shutil.copytree(src, dst)
    for f in sorted(Path(dst).glob("*.safetensors")):
        with safe_open(str(f), "pt") as g:
            meta = g.metadata()
            tensors = {k: g.get_tensor(k) for k in g.keys()}
        for k, t in tensors.items():
            if is_hf_expert(k):
                tensors[k] = t.transpose(1, 2).contiguous()
        save_file(tensors, str(f), metadata=meta)


def index_weight_map(folder):
    """weight_map of folder's model.safetensors.index.json."""
    return json.loads((Path(folder) / "model.safetensors.index.json").read_text())["weight_map"]
