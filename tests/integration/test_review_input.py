"""Input the daemon takes from users and files, read as the user meant it (issue 21): an
exclude= regex decides as Python's re.match does (escapes inside brackets included), a log=
path that is a symbolic link or a FIFO is refused, names from files cannot forge log lines,
and a sharded save's fqn_to_dtype_mapping.json that cannot be read is not skipped silently.
"""
import json
import os
import re
import shutil
import struct
import subprocess

import pytest

from checkview.contract import rename
from helpers import QV, check_view, run

# \d inside brackets: POSIX read [\d] as "a backslash or d", so this excluded nothing
BRACKET_PATTERN = r".*layers\.[\d]+\.self_attn\..*"
STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ qvlmoefs\[\d+\]: "


def header_keys(path):
    """The tensor names of a safetensors file's header."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return set(json.loads(f.read(n))) - {"__metadata__"}


def shard_keys(folder):
    """The tensor names of every *.safetensors file directly in folder."""
    keys = set()
    for name in os.listdir(folder):
        if name.endswith(".safetensors"):
            keys |= header_keys(os.path.join(folder, name))
    return keys


def one_line(p):
    """The output of a failed command: one line (asserted), without its newline."""
    __tracebackhide__ = True
    out = (p.stdout + (p.stderr or "")).rstrip("\n")
    assert out and "\n" not in out, f"not one line: {out!r}"
    return out


# ---------------------------------------------------------------- (7) exclude= brackets

def test_exclude_class_escape_in_brackets_as_re_match(ckpt, mount):
    """exclude= with [\\d] leaves out exactly the HF names Python's re.match matches: the
    attention tensors of every layer, nothing else (the expected set is Python's decision
    over the source's real names)."""
    src = ckpt["native"]
    m = mount(src, None, "-o", f"exclude={BRACKET_PATTERN}")
    rx = re.compile(BRACKET_PATTERN)
    hf = {k: rename(k, "native", "hf", "", rx) for k in shard_keys(src)}
    want = {v for v in hf.values() if v is not None}
    left_out = {k for k, v in hf.items() if v is None}
    assert left_out and all(".self_attn." in k for k in left_out), sorted(left_out)
    assert shard_keys(m) == want
    index = json.loads((m / "model.safetensors.index.json").read_text())["weight_map"]
    assert set(index) == want
    check_view(src, m, "--view", "hf", "--exclude", BRACKET_PATTERN)


@pytest.mark.parametrize("pattern, why", [
    (r".*\bself_attn.*", "word boundaries"),
    (r"(?!model\.visual).*", "(?...) groups"),
    (r"(a)\1", "backreferences"),
    (r".*layers\.[\d\W]+", r"\D, \W or \S inside [...]"),
])
def test_exclude_without_ere_equivalent_refused(ckpt, mount, tmp, pattern, why):
    """What POSIX ERE cannot say is refused before mounting, in one line naming the pattern and
    the construct, instead of being taken literally."""
    out = one_line(mount.fail(ckpt["native"], tmp / "m", "-o", f"exclude={pattern}",
                              stderr=subprocess.STDOUT))
    assert f"exclude={pattern}: " in out and why in out, out


# ---------------------------------------------------------------- (S1) log= no links, no FIFOs

@pytest.mark.parametrize("target_exists", [True, False], ids=["link", "dangling_link"])
def test_log_symlink_refused(ckpt, mount, tmp, target_exists):
    """log= naming a symbolic link (planted where the log goes) is refused before mounting,
    naming the file; the file it points to is neither written nor created."""
    target, link = tmp / "target", tmp / "daemon.log"
    if target_exists:
        target.write_text("keep\n")
    link.symlink_to(target)
    out = one_line(mount.fail(ckpt["hf"], tmp / "m", "-o", f"log={link}",
                              stderr=subprocess.STDOUT))
    assert f"log={link}: " in out and "symbolic link" in out, out
    if target_exists:
        assert target.read_text() == "keep\n"
    else:
        assert not target.exists()


def test_log_fifo_refused_without_blocking(ckpt, mount, tmp):
    """log= naming a FIFO nobody reads is refused at once (the open blocked for good)."""
    fifo = tmp / "daemon.log"
    os.mkfifo(fifo)
    out = one_line(mount.fail(ckpt["hf"], tmp / "m", "-o", f"log={fifo}",
                              stderr=subprocess.STDOUT, timeout=20))
    assert f"log={fifo}: not a regular file" in out, out


# ---------------------------------------------------------------- (S2) names cannot forge lines

FORGED = "2030-01-01T00:00:00Z qvlmoefs[1]: forged line"


def write_st(path, header, data=b"\0\0"):
    """A safetensors file of header (a dict) and data."""
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


@pytest.mark.parametrize("where", ["tensor", "file"])
def test_newline_in_a_name_cannot_forge_a_log_line(mount, tmp, where):
    """A tensor name (an unknown dtype refuses the mount, naming it) or a file name (a FIFO in
    the source is left out, naming it) holding a newline is logged as one line, the newline
    written as \\n, in the log file and on stderr alike."""
    src, log, m = tmp / "src", tmp / "daemon.log", tmp / "m"
    src.mkdir()
    m.mkdir()
    name = "w\n" + FORGED
    entry = {"shape": [1], "data_offsets": [0, 2]}
    if where == "tensor":
        write_st(src / "model.safetensors", {name: {"dtype": "XX", **entry}})
        p = mount.fail(src, m, "-o", f"log={log}")
    else:
        write_st(src / "model.safetensors", {"w": {"dtype": "BF16", **entry}})
        os.mkfifo(src / name)
        p = run(QV, src, m, "-o", f"log={log}")
    for lines in (log.read_text().splitlines(), p.stderr.splitlines()):
        assert any("w\\n" + FORGED in x for x in lines), lines
        assert not any(x.startswith(FORGED) for x in lines), lines
    assert all(re.match(STAMP, x) for x in log.read_text().splitlines())
    assert all(x.startswith("qvlmoefs: ") for x in p.stderr.splitlines()), p.stderr


# ---------------------------------------------------------------- (S3) a bad dtype mapping

@pytest.mark.parametrize("text", ['{"lm_head.weight": "BF16"', '["lm_head.weight"]', ""],
                         ids=["cut_short", "array", "empty"])
def test_bad_dtype_mapping_refused(ckpt, mount, tmp, text):
    """A sharded save whose .hf_metadata/fqn_to_dtype_mapping.json is there but no JSON
    object is refused in one line naming the file and why (the check it stands for was
    skipped, and the save mounted)."""
    d = tmp / "save"
    shutil.copytree(ckpt.make("dcp-w4", "--sharded-save", "4"), d)
    (d / ".hf_metadata" / "fqn_to_dtype_mapping.json").write_text(text)
    out = one_line(mount.fail(d, tmp / "m", stderr=subprocess.STDOUT))
    assert ".hf_metadata/fqn_to_dtype_mapping.json: not a JSON object" in out, out
