"""The README's command examples, run as written on the sample `make demo` makes.

Every ```sh block of README.md is preceded by a marker line: `<!-- readme-test: run in the
checkout -->`, `<!-- readme-test: run in the demo folder -->` or `<!-- readme-test: not run
(REASON) -->`. The blocks to run go, in README order, into one script that runs in a private
mount namespace whose /usr/local and /sbin are overlays (helpers.in_private_ns): `make install`
and `mount -t` work as on a machine where it was installed, and the machine is never changed.
The demo folder is made by tests/demo.sh (what `make demo` runs) with DEMO_DIR in the test's
own folder, so paths like hf-checkpoint/ mean what they mean in /tmp/qvlmoefs-demo.
"""
import os
import re
import shlex

import pytest

import helpers
from helpers import BUILD, ROOT, run

README = ROOT / "README.md"
MARK = re.compile(r"^<!-- readme-test: (run in the checkout|run in the demo folder|not run \(.+\)) -->$")


def blocks(text):
    """[(line number, marker or None, code)] of every ```sh block of text."""
    out, lines = [], text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() == "```sh":
            j = i + 1
            while lines[j].strip() != "```":
                j += 1
            prev = next((lines[k] for k in range(i - 1, -1, -1) if lines[k].strip()), "")
            m = MARK.match(prev.strip())
            out.append((i + 1, m.group(1) if m else None, "\n".join(lines[i + 1:j])))
            i = j
        i += 1
    return out


def test_every_sh_block_is_marked():
    """No command example escapes the test silently: each says whether it runs, and where."""
    unmarked = [n for n, mark, _ in blocks(README.read_text()) if mark is None]
    assert not unmarked, f"README.md: ```sh blocks at lines {unmarked} have no readme-test marker"
    assert sum(mark.startswith("run") for _, mark, _ in blocks(README.read_text())) >= 5


def test_readme_examples_run_on_the_demo_sample(fuse, tmp):
    """Every README block marked to run exits 0 in order, as written, on make demo's sample."""
    why = helpers.private_ns_missing()
    if why:
        pytest.skip(why)
    demo = tmp / "demo"
    run(ROOT / "tests" / "demo.sh", env={**os.environ, "DEMO_DIR": str(demo), "BUILD": BUILD},
        timeout=300)
    parts = [f"export BUILD={shlex.quote(BUILD)}", "set -x"]
    for n, mark, code in blocks(README.read_text()):
        if not mark or not mark.startswith("run"):  # unmarked: test_every_sh_block_is_marked
            continue
        where = ROOT if mark == "run in the checkout" else demo
        parts += [f": README.md line {n}", f"cd {shlex.quote(str(where))}", code]
    script = "\n".join(parts)
    p = helpers.in_private_ns(tmp, script, timeout=600)
    assert p.returncode == 0, "a README example failed (the last README.md line marker in the " \
        "trace says which block)\n" + helpers._show(["in_private_ns", "README blocks"],
                                                    p.returncode, p.stdout, p.stderr[-6000:])
    assert not helpers.mounts_below(tmp), "a README example's mount outlived the namespace"


CLUSTER_MARK = re.compile(r"^<!-- cluster-test: (\S+) -->$")


def cluster_blocks(text):
    """{NAME: the fenced block after `<!-- cluster-test: NAME -->`} of text."""
    out, lines = {}, text.splitlines()
    for i, line in enumerate(lines):
        m = CLUSTER_MARK.match(line.strip())
        if m:
            j = lines.index("```", i + 2)
            out[m.group(1)] = "\n".join(lines[i + 1:j + 1])
    return out


def test_readme_slurm_blocks_are_the_tested_ones():
    """The Slurm forms the README shows are doc/cluster.md's, which make check-cluster runs as
    written: every README block marked `cluster-test: NAME` is that block, character for
    character."""
    mine, tested = cluster_blocks(README.read_text()), cluster_blocks((ROOT / "doc" / "cluster.md").read_text())
    assert {"batch-script", "prolog-submit"} <= set(mine), sorted(mine)
    for name, text in mine.items():
        assert text == tested.get(name), f"README.md's block {name} differs from doc/cluster.md's"
