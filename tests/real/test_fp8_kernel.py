"""The FP8 kernel (src/xf.c, issue 23's first piece) against NeMo Automodel's own
`dequantize_from_fp8`: the same BF16 bits for every element, plain and transposed, on the vector
and the scalar path, on shapes whose edges cut 128x128 blocks short, with every one of the 256
FP8 byte values and a different scale per block. The two NaN bytes are compared as NaN only:
torch makes 0xFFFF of a NaN inside its vectorized loop and 0x7FC0 in its scalar tail (both
seen here), where the kernel always makes 0x7FC0. The kernel runs as `build/xfcheck`; no view
uses it yet.
"""
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from nemo_automodel.components.models.deepseek_v3.state_dict_adapter import dequantize_from_fp8

ROOT = Path(__file__).resolve().parents[2]
BUILD = os.environ.get("BUILD", "build")
XF = ROOT / BUILD / "xfcheck"


def is_nan(bf16):
    """Which BF16 bit patterns are NaN: all exponent bits set, a mantissa."""
    return ((bf16 & 0x7F80) == 0x7F80) & ((bf16 & 0x7F) != 0)


@pytest.fixture(scope="module")
def xfcheck():
    """build/xfcheck, built against the current kernel."""
    p = subprocess.run(["make", "-s", f"BUILD={BUILD}", f"{BUILD}/xfcheck"], cwd=ROOT,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert p.returncode == 0, f"building xfcheck failed:\n{p.stdout}"
    return XF


@pytest.mark.parametrize("rows,cols", [(300, 257), (128, 384), (7, 9), (1, 200)])
@pytest.mark.parametrize("path", ["vector", "scalar"])
def test_dequant_equals_automodel(xfcheck, tmp_path, rows, cols, path):
    rng = np.random.default_rng(rows * 1000 + cols)
    raw = rng.integers(0, 256, size=(rows, cols), dtype=np.uint8)
    raw.flat[:256] = np.arange(256, dtype=np.uint8)[: raw.size]  # every byte value
    br, bc = -(-rows // 128), -(-cols // 128)
    scales = (rng.uniform(0.5, 2.0, size=(br, bc)) * 2.0 ** rng.integers(-12, 3, size=(br, bc)))
    scales = scales.astype(np.float32)
    (tmp_path / "w").write_bytes(raw.tobytes())
    (tmp_path / "s").write_bytes(scales.tobytes())

    weight = torch.from_numpy(raw.copy()).view(torch.float8_e4m3fn)
    want = dequantize_from_fp8(weight, torch.from_numpy(scales), dtype=torch.bfloat16)
    want = want.view(torch.int16).numpy().view(np.uint16)
    for t, expect in (("N", want), ("T", np.ascontiguousarray(want.T))):
        out = tmp_path / f"out{t}"
        p = subprocess.run([str(xfcheck), str(rows), str(cols), "128", t, path,
                            str(tmp_path / "w"), str(tmp_path / "s"), str(out)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert p.returncode == 0, p.stdout
        got = np.frombuffer(out.read_bytes(), dtype=np.uint16).reshape(expect.shape)
        bad = np.argwhere((got != expect) & ~(is_nan(got) & is_nan(expect)))
        assert bad.size == 0, (
            f"{t} {path}: {len(bad)} of {got.size} elements differ from Automodel's; first at "
            f"{tuple(bad[0])}: {got[tuple(bad[0])]:04x}, want {expect[tuple(bad[0])]:04x}")
