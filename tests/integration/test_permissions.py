"""Permissions through the view: a second user reaches through the mount exactly what it can
reach in the source, however the view lays the files out (flat inspection folders, rank
folders, consolidated saves, `.hf_metadata/` files shown at the root) and wherever a link
points. Every case compares the same question asked of the source and of the view.

The second user needs root (to create it and to mount with allow_other).
"""
import os
import shutil

import pytest

from test_hardening_a import TEST_USER, need_test_user, user_lists, user_reads

EMBED = "model.language_model.embed_tokens.weight"  # in the second shard


def _same(pairs):
    """pairs: name -> (source path, view path); assert the test user reads each in both or in
    neither, and return what it could read."""
    got = {k: (user_reads(s), user_reads(v)) for k, (s, v) in pairs.items()}
    print(got)
    assert all(a == b for a, b in got.values()), \
        f"(source, view) readable by {TEST_USER} differ: {got}"
    return {k: a for k, (a, _) in got.items()}


@pytest.mark.parametrize("opts", [(), ("-o", "ep_size=2")], ids=["view", "rank_folders"])
def test_flat_folders_stop_at_closed_source_folders(mount, ckpt, tmp, opts):
    """A checkpoint below a 0700 folder (shards 0644): the other user can list neither the
    folder nor its view, and the flat `.qvlmoefs/tensors/` and `.qvlmoefs/headers/` files of
    its shards (which name no folder) are closed to it as well."""
    need_test_user()
    src = tmp / "src"
    src.mkdir()
    shutil.copytree(ckpt["e10"], src / "priv")
    (src / "README").write_text("open to all\n")
    (src / "priv").chmod(0o700)
    m = mount(src, None, "-o", "allow_other", *opts)
    assert not user_lists(src / "priv")
    top = m / "ep-rank-1" if opts else m
    assert not user_lists(top / "priv")
    assert user_reads(top / "README")
    h = top / ".qvlmoefs"
    assert os.path.exists(h / "tensors" / EMBED)  # root sees it: it is the right name
    got = _same({
        "tensor": (src / "priv/model-00002-of-00002.safetensors", h / "tensors" / EMBED),
        "header": (src / "priv/model-00001-of-00002.safetensors",
                   h / "headers/priv/model-00001-of-00002.safetensors.json"),
        "readme": (src / "README", top / "README"),
    })
    assert got == {"tensor": False, "header": False, "readme": True}
    assert not user_lists(h / "tensors"), "tensors/ lists the closed folder's keys"


def test_metadata_shown_at_root_stops_at_its_folder(mount, ckpt, tmp):
    """A sharded save whose `.hf_metadata/` is 0700: the files shown from it at the root are
    closed to the other user as the folder closes them in the source; the consolidated
    files (from shards the user can read) stay open."""
    need_test_user()
    src = tmp / "dcp"
    shutil.copytree(ckpt.make("dcp-w4", "--sharded-save", "4"), src)
    (src / ".hf_metadata").chmod(0o700)
    m = mount(src, None, "-o", "allow_other")
    got = _same({"config": (src / ".hf_metadata/config.json", m / "config.json"),
                 "tokenizer": (src / ".hf_metadata/tokenizer.json", m / "tokenizer.json")})
    assert got == {"config": False, "tokenizer": False}
    shards = sorted(p.name for p in m.iterdir() if p.name.endswith(".safetensors"))
    assert shards and all(user_reads(m / s) for s in shards), shards


def test_symlink_into_closed_folder_stays_closed(mount, ckpt, tmp):
    """`secret.txt -> priv/secret.txt` and a shard linked the same way, with priv 0700 and
    the files 0644: the other user reads neither through the link in the source, nor through
    the view, nor through the shard's inspection files."""
    need_test_user()
    src = tmp / "src"
    shutil.copytree(ckpt["e10"], src)
    priv = src / "priv"
    priv.mkdir()
    (priv / "secret.txt").write_text("top secret\n")
    (priv / "secret.txt").chmod(0o644)
    first = "model-00002-of-00002.safetensors"  # EMBED's
    os.rename(src / first, priv / first)
    (src / first).symlink_to(f"priv/{first}")
    (src / "secret.txt").symlink_to("priv/secret.txt")
    priv.chmod(0o700)
    m = mount(src, None, "-o", "allow_other")
    got = _same({"secret": (src / "secret.txt", m / "secret.txt"),
                 "shard": (src / first, m / first),
                 "tensor": (src / first, m / ".qvlmoefs/tensors" / EMBED),
                 "config": (src / "config.json", m / "config.json")})
    assert got == {"secret": False, "shard": False, "tensor": False, "config": True}
