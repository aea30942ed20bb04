"""Permissions through the view: a second user reaches through the mount exactly what it can
reach in the source, however the view lays the files out (flat inspection folders, rank
folders, consolidated saves, `.hf_metadata/` files shown at the root) and wherever a link
points. Every case compares the same question asked of the source and of the view; access()
answers as the modes do, on a mount with allow_other and on a user's own mount.

The second user needs root (to create it and to mount with allow_other).
"""
import os
import shlex
import shutil
import stat
import subprocess

import pytest

from helpers import QV, TEST_USER, as_user, need_test_user, run, user_lists, user_reads

EMBED = "model.language_model.embed_tokens.weight"  # in the second shard
SECOND = "model-00002-of-00002.safetensors"
INDEX = "model.safetensors.index.json"


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


# ---------------------------------------------------------- files, folders and generated files


def test_other_user_reads_what_the_source_allows(mount, ckpt, tmp):
    """With allow_other, a second user reads through the mount exactly the files it can read
    in the source: owners, groups and modes of the sources carry over (less write bits), and
    the index and the inspection files of an unreadable shard are unreadable too."""
    gid = need_test_user()
    src = tmp / "perm"
    shutil.copytree(ckpt["e10"], src)
    (src / "secret.txt").write_text("top secret\n")
    (src / "secret.txt").chmod(0o600)
    (src / "group.txt").write_text("for the group\n")
    os.chown(src / "group.txt", 0, gid)
    (src / "group.txt").chmod(0o640)
    (src / "private").mkdir()
    (src / "private/inner.txt").write_text("inside a 0700 folder\n")
    (src / "private").chmod(0o700)
    (src / SECOND).chmod(0o600)
    m = mount(src, None, "-o", "allow_other")
    files = ["config.json", "secret.txt", "group.txt", "private/inner.txt",
             "model-00001-of-00002.safetensors", SECOND]
    got = {f: (user_reads(src / f), user_reads(m / f)) for f in files}
    print(got)
    assert {f: s for f, (s, _) in got.items()} == {f: v for f, (_, v) in got.items()}, \
        f"(source, view) readable by {TEST_USER} differ: {got}"
    assert got["secret.txt"] == (False, False) and got["group.txt"] == (True, True)
    assert user_lists(m) and not user_lists(m / "private")
    st = os.stat(m / "group.txt")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, gid, 0o440), st
    # generated files show no more than the sources they come from
    assert user_reads(src / INDEX) and not user_reads(m / INDEX), "index names the 0600 shard's keys"
    assert user_reads(m / ".qvlmoefs/view.json")
    h = m / ".qvlmoefs"
    assert not user_reads(h / "headers" / f"{SECOND}.json")
    assert user_reads(h / "headers" / "model-00001-of-00002.safetensors.json")
    assert not user_lists(h / "tensors"), "tensors/ lists the 0600 shard's keys"
    assert user_reads(h / "tensors/model.visual.pos_embed.weight")  # in shard 1
    assert not user_reads(h / "tensors/lm_head.weight")  # in the 0600 shard 2


def test_other_user_stopped_by_folders_above_the_source(mount, ckpt, tmp):
    """A source below a folder the user cannot search stays out of reach through the mount."""
    need_test_user()
    outer = tmp / "closed"
    outer.mkdir()
    shutil.copytree(ckpt["e10"], outer / "src")
    outer.chmod(0o700)
    m = mount(outer / "src", None, "-o", "allow_other")
    assert not user_reads(outer / "src/config.json")
    assert not user_reads(m / "config.json"), "the mount lets in what the folder above denies"
    assert not user_lists(m)


# ------------------------------------------------------------------------------------ access()


def test_access_checks_execute_bits(mount, ckpt):
    """access() answers as the modes do: no X_OK on a 0444 file (even for root, which may only
    execute what someone may), X_OK on folders, R_OK on files, W_OK never."""
    m = mount(ckpt["e10"])
    f = m / "config.json"
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o444
    assert os.access(f, os.R_OK)
    assert not os.access(f, os.X_OK), "access(X_OK) succeeds on a 0444 file"
    assert not os.access(f, os.W_OK)
    assert os.access(m, os.R_OK | os.X_OK) and os.access(m / ".qvlmoefs", os.R_OK | os.X_OK)
    assert subprocess.run(["test", "-x", str(f)]).returncode != 0


def test_access_of_another_users_own_mount(ckpt, tmp):
    """Without default_permissions (a user's own mount) access() follows the classes: the
    user may read what its class may, and not what only the owner may."""
    need_test_user()
    d = tmp / "own"
    (d / "m").mkdir(parents=True)
    shutil.copytree(ckpt["e10"], d / "src")
    (d / "src/mine.txt").write_text("x\n")
    (d / "src/rootonly.txt").write_text("y\n")
    run("chown", "-R", TEST_USER, d)
    os.chown(d / "src/rootonly.txt", 0, 0)
    (d / "src/rootonly.txt").chmod(0o600)
    (d / "src/mine.txt").chmod(0o755)
    mode = stat.S_IMODE(os.stat("/dev/fuse").st_mode)
    os.chmod("/dev/fuse", 0o666)
    q = {k: shlex.quote(str(d / v)) for k, v in {"src": "src", "m": "m"}.items()}
    try:
        rc, out = as_user(f"{shlex.quote(str(QV))} {q['src']} {q['m']}")
        assert rc == 0, out
        try:
            rc, out = as_user(f"test -r {q['m']}/mine.txt && test -x {q['m']}/mine.txt && "
                              f"! test -x {q['m']}/config.json && ! test -r {q['m']}/rootonly.txt")
            assert rc == 0, f"access() as {TEST_USER} disagrees with the modes: {out}"
        finally:
            as_user(f"fusermount3 -u {q['m']}")
    finally:
        os.chmod("/dev/fuse", mode)
