"""The GPU scripts on a machine without a GPU: tests/gpu/device-run.sh end to end against the
stand-in runtime (tests/gpu/fake_cudart.c) with torch hidden, so every step that needs no GPU
runs and every row that does says why not; the IPC helper's one-line errors and its IPC
handle, opened from a second process; device-check.sh and device-loaders.sh refusing at once,
in one line, where they cannot run."""
import json
import os
import subprocess
import time

import pytest

from helpers import MK, PY, QV, ROOT, mountpoint, run, wait_for

DEVICE_RUN = ROOT / "tests" / "gpu" / "device-run.sh"
GPU_HELPER = ROOT / "mount-scripts" / "qvlmoefs_gpu.py"
DEVICE_LOAD = ROOT / "tests" / "gpu" / "device_load.py"


@pytest.fixture
def fake_lib(tmp):
    """A folder holding tests/gpu/fake_cudart.c built as libcudart.so."""
    lib = tmp / "fakecuda"
    lib.mkdir()
    run("cc", "-O1", "-shared", "-fPIC", "-o", lib / "libcudart.so",
        ROOT / "tests" / "gpu" / "fake_cudart.c", "-lpthread")
    return lib


@pytest.fixture
def no_torch(tmp):
    """A PYTHONPATH folder whose torch package fails to import, as on a machine without it."""
    shim = tmp / "notorch" / "torch"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('No module named torch (hidden by the test)')\n")
    return shim.parent


def _env(**kw):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LD_LIBRARY_PATH")}
    env.update({k: str(v) for k, v in kw.items()})
    return env


def test_device_run_on_cpu_states_the_no_gpu_rows(tmp, fake_lib, no_torch):
    """device-run.sh with a small checkpoint, the stand-in runtime and no torch: it builds,
    generates, checks FUSE and DONTNEED, measures the stage rows (every byte verified) and the
    gpu=0 mount with its IPC check from a second process, says "no GPU" and "torch missing"
    where it must, prints the table and ratios, and ends with exit 0 in under 20 s."""
    out, work, wheels = tmp / "out", tmp / "work", tmp / "nowheels"
    wheels.mkdir()
    t0 = time.time()
    p = subprocess.run(["bash", str(DEVICE_RUN)], capture_output=True, text=True, timeout=120,
                       env=_env(OUT=out, DEVICE_RUN_DIR=work, DEVICE_RUN_WHEELS=wheels,
                                DEVICE_RUN_MKCKPT="--preset tiny --experts 16",
                                LD_LIBRARY_PATH=fake_lib, PYTHONPATH=no_torch, PYTHON=PY))
    took = time.time() - t0
    log = p.stdout + p.stderr
    assert p.returncode == 0, log
    assert "device-run.sh: exit 0" in log and "Traceback" not in log, log
    assert took < 20, f"took {took:.1f} s\n{log}"
    table = (out / "table.md").read_text()
    assert (out / "device-run.log").read_text().strip() == p.stdout.strip()
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines()
            if line.startswith("| ") and not line.startswith("| row")}
    assert table.startswith("device: no GPU: a CUDA runtime answers but nvidia-smi does not"), table
    for name in ("qvlmoefs stage --all", "qvlmoefs stage, rank 3/8 experts"):
        assert "every byte verified" in rows[name] and "skipped" not in rows[name], table
    gpu = rows["FUSE: -o gpu=0,ep_size=8,ep_rank=3, IPC map from a 2nd process"]
    assert "equal to the files" in gpu and "skipped" not in gpu, table
    for name in ("safetensors safe_open + .to(cuda), all", "fastsafetensors (no GDS), all",
                 "InstantTensor, all", "FUSE: safe_open + .to(cuda) of ep-rank-3 (ep_size=8)"):
        assert "torch missing" in rows[name], table
    assert "skipped" not in rows["pinned cudaMemcpy (peak), all-tensor size"], table
    assert "warm: stage --all / pinned peak" in table, table
    assert "FUSE: /dev/fuse mounts here" in log, log
    assert not [m for m in (work / "mnt-gpu", work / "mnt-check", work / "mnt-fuse-rank")
                if mountpoint(m)], "a mount was left behind"
    res = json.loads((out / "results.json").read_text())
    assert res["gpu"] == "stand-in CUDA runtime", res


@pytest.fixture
def tiny(tmp):
    ck = tmp / "ck"
    run(MK, "--experts", "16", ck)
    return ck


def _mount(src, m, opts, env=None):
    m.mkdir(exist_ok=True)
    run(QV, src, m, *(["-o", opts] if opts else []), env=env)
    assert mountpoint(m)


def test_gpu_helper_without_gpu_option_says_one_line(tmp, tiny):
    """qvlmoefs_gpu.py on a mount without gpu= (and on a folder that is no mount): one line
    naming the mount and the reason, exit status 1; it printed a FileNotFoundError traceback."""
    m = tmp / "m"
    _mount(tiny, m, "")
    try:
        for path, why in ((m, "mounted without -o gpu=N"), (tmp, "not a qvlmoefs mount")):
            p = run(PY, GPU_HELPER, path, check=False)
            err = p.stderr.strip()
            assert p.returncode == 1 and "Traceback" not in err, err
            assert len(err.splitlines()) == 1 and str(path) in err and why in err, err
    finally:
        run("fusermount3", "-u", m)


def test_gpu_helper_opens_the_ipc_handle_from_another_process(tmp, tiny, fake_lib):
    """The staged tensors of -o gpu=0, mapped in a second process through the IPC handle in
    gpu.json (the stand-in runtime takes the handle by value, as CUDA does), equal the bytes
    of their files. The helper passed a char array, i.e. a pointer: cudaIpcOpenMemHandle read
    garbage and failed."""
    m = tmp / "m"
    env = _env(LD_LIBRARY_PATH=fake_lib)
    _mount(tiny, m, "gpu=0,ep_size=4,ep_rank=1", env=env)
    try:
        def staged():
            p = run(PY, GPU_HELPER, m, env=env, check=False)
            return p.returncode == 0 and p.stdout and "pending" not in p.stdout
        assert wait_for(staged, timeout=30), run(PY, GPU_HELPER, m, env=env, check=False)
        r = json.loads(run(PY, DEVICE_LOAD, "ipc", m, env=env).stdout.splitlines()[-1])
        assert "skip" not in r and r["equal"] and r["bytes"] > 0, r
    finally:
        run("fusermount3", "-u", m)


def test_device_check_without_gpu_writes_nothing(tmp):
    """device-check.sh with no CUDA runtime on the loader path: one line, exit 1, and its work
    folder never made (it generated 2.4 GB before finding out)."""
    w = tmp / "device"
    p = subprocess.run(["bash", str(ROOT / "tests" / "gpu" / "device-check.sh")], timeout=60,
                       capture_output=True, text=True,
                       env=_env(DEVICE_DIR=w, LD_LIBRARY_PATH=tmp / "nolib"))
    err = p.stderr.strip()
    assert p.returncode == 1 and "no GPU" in err and len(err.splitlines()) == 1, p.stdout + err
    assert not w.exists(), sorted(w.rglob("*"))


def test_device_loaders_without_torch_says_one_line(tmp, no_torch):
    """device-loaders.sh where torch does not import: one line naming it, exit 1, nothing
    built or written (it printed a ModuleNotFoundError traceback)."""
    w = tmp / "loaders"
    p = subprocess.run(["bash", str(ROOT / "tests" / "loaders" / "device-loaders.sh")],
                       timeout=60, capture_output=True, text=True,
                       env=_env(LOADERS_DIR=w, PYTHONPATH=no_torch, PYTHON=PY))
    err = p.stderr.strip()
    assert p.returncode == 1 and "Traceback" not in err, p.stdout + err
    assert len(err.splitlines()) == 1 and "missing: torch (ImportError" in err, err
    assert not w.exists()
