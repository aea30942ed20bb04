"""The build and the code's structure, as a new user meets them before anything mounts.

`make` on a machine without the -dev packages must say in one line what to install and which
target installs it, instead of stopping at a compiler error about a missing header; the
layer check must hold the modules to the order of doc/DESIGN.md's layer line and catch an
upward include.
"""
import os
import re
import shutil

import pytest

from helpers import PY, ROOT, run


def test_make_without_dev_packages_says_what_to_do(tmp):
    """pkg-config that finds nothing stands in for a machine without the -dev packages."""
    env = dict(os.environ, PKG_CONFIG_LIBDIR=str(tmp / "no-pc-files"))
    env.pop("MAKEFLAGS", None)
    p = run("make", "-s", "-C", ROOT, f"BUILD={tmp / 'b'}", "all", check=False, env=env)
    assert p.returncode != 0, "make built without the packages it needs"
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one line, got:\n{p.stderr}"
    for deb in ("libfuse3-dev", "liburing-dev", "libcjson-dev", "make deps"):
        assert deb in lines[0], f"{deb!r} not named in: {lines[0]}"
    assert not (tmp / "b").exists() or not any((tmp / "b").glob("*.o")), "it compiled anyway"


def test_make_without_pkg_config_names_it(tmp):
    """With no pkg-config at all, the line names that package too."""
    env = dict(os.environ)
    env.pop("MAKEFLAGS", None)
    p = run("make", "-s", "-C", ROOT, f"BUILD={tmp / 'b'}", f"PKG_CONFIG={tmp / 'none'}",
            "all", check=False, env=env)
    assert p.returncode != 0
    assert "pkg-config" in p.stderr and "make deps" in p.stderr, p.stderr


def test_layers_hold(tmp):
    """The tree as committed keeps every include pointing down the design's layer line."""
    p = run(PY, ROOT / "tests" / "check_layers.py", ROOT)
    assert p.stdout.splitlines()[-1].endswith(" 0 failed"), p.stdout


def test_layer_check_catches_an_upward_include(tmp):
    """A copy of src/, include/ and doc/DESIGN.md where tree.c includes the mount's header
    must fail."""
    for d in ("src", "include"):
        shutil.copytree(ROOT / d, tmp / d)
    (tmp / "doc").mkdir()
    shutil.copy(ROOT / "doc" / "DESIGN.md", tmp / "doc" / "DESIGN.md")
    with open(tmp / "src" / "tree.c", "a") as f:
        f.write('#include "qv_mount.h"\n')
    p = run(PY, ROOT / "tests" / "check_layers.py", tmp, check=False)
    assert p.returncode != 0, p.stdout
    assert "src/tree.c: includes qv_mount.h, but 'mount' is above 'tree'" in p.stdout, p.stdout


def test_no_build_output_tracked():
    """Nothing built is tracked by git (build-san/ and build-tsan/ once were, so the tree was
    dirty after a sanitizer run): no tracked file matches .gitignore or lies in a build folder,
    and every build folder the README and CI use is ignored."""
    if run("git", "-C", ROOT, "rev-parse", "--git-dir", check=False).returncode != 0:
        pytest.skip("not a git checkout")
    ignored = run("git", "-C", ROOT, "ls-files", "-ci", "--exclude-standard").stdout.split()
    built = [f for f in run("git", "-C", ROOT, "ls-files").stdout.split()
             if re.match(r"build[^/]*/", f) or f.endswith(".o")]
    assert not ignored and not built, f"tracked build outputs: {(ignored + built)[:20]}"
    for d in ("build", "build-san", "build-tsan", "build-valgrind"):
        assert run("git", "-C", ROOT, "check-ignore", "-q", f"{d}/qvlmoefs",
                   check=False).returncode == 0, f"{d}/ is not ignored by .gitignore"


@pytest.mark.parametrize("harness", sorted(p.name for p in (ROOT / "tests" / "fuzz").glob("*.c")))
def test_fuzz_harness_compiles(harness):
    """Each fuzz harness still compiles against today's headers (make fuzz builds them with
    clang's libFuzzer, which make check does not run), with the project's warnings as errors."""
    flags = run("pkg-config", "--cflags", "fuse3", "libcjson").stdout.split()
    p = run("cc", "-std=gnu11", "-D_GNU_SOURCE", f"-I{ROOT / 'include'}", "-Wall", "-Wextra",
            "-Werror", *flags, "-fsyntax-only", str(ROOT / "tests" / "fuzz" / harness), check=False)
    assert p.returncode == 0, f"tests/fuzz/{harness} does not compile:\n{p.stderr}"
