#!/usr/bin/env python3
"""check_layers.py: hold the C modules to the layer order written in doc/DESIGN.md, §8.

Each module (src/NAME.c with include/qv_NAME.h) may include only the headers of modules below
it in that order, so data flows one way and no module calls one that calls it. The order is
read from the design, not repeated here: the line of the form `util → io → ... → main` in the
section whose "## " heading names the layer line ("## 8. Modules and the layer line"). Prints
one line per violation and closes with `N passed, N failed` (one check per source or header
file, plus a check that a planted upward include is caught).
Usage: check_layers.py [ROOT]
"""
import re
import sys
from pathlib import Path

INCLUDE = re.compile(r'^\s*#\s*include\s+"qv_(\w+)\.h"', re.M)
LAYERS = re.compile(r"^\s*`?(\w+(?: → \w+)+)`?\s*$")
# files that are one module with another file's header
ALIASES = {"gpu_cuda": "gpu", "gpu_stub": "gpu"}


def layer_order(design):
    """The module names of the design's layer line, bottom first."""
    try:
        lines = design.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise SystemExit(f"check_layers: {design}: {e.strerror}")
    at = next((i for i, line in enumerate(lines)
               if line.startswith("## ") and "layer line" in line.lower()), None)
    if at is None:
        raise SystemExit(f"check_layers: {design}: no '## ...layer line' section")
    for line in lines[at + 1:]:
        if line.startswith("## "):
            break
        m = LAYERS.match(line)
        if m:
            return m.group(1).split(" → ")
    raise SystemExit(f"check_layers: {design}: no 'a → b → ...' line under '{lines[at]}'")


def module_of(path):
    """The module a source or header file belongs to."""
    stem = path.stem
    if path.suffix == ".h":
        stem = stem[3:] if stem.startswith("qv_") else stem
    return ALIASES.get(stem, stem)


def violations(name, text, rank):
    """One message per include of text (file name, in module of rank) that is not below it."""
    mod = module_of(Path(name))
    if mod not in rank:
        return [f"{name}: module '{mod}' is not in the design's layer line"]
    out = []
    for inc in INCLUDE.findall(text):
        dep = ALIASES.get(inc, inc)
        if dep == mod:
            continue
        if dep not in rank:
            out.append(f"{name}: includes qv_{inc}.h, whose module is not in the layer line")
        elif rank[dep] > rank[mod]:
            out.append(f"{name}: includes qv_{inc}.h, but '{dep}' is above '{mod}'")
    return out


def main(argv):
    root = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent.parent
    order = layer_order(root / "doc" / "DESIGN.md")
    rank = {m: i for i, m in enumerate(order)}
    passed = failed = 0
    files = sorted((root / "src").glob("*.c")) + sorted((root / "include").glob("*.h"))
    for f in files:
        bad = violations(str(f.relative_to(root)), f.read_text(encoding="utf-8"), rank)
        for b in bad:
            print(f"check_layers: {b}")
        passed, failed = (passed + 1, failed) if not bad else (passed, failed + 1)
    # the check itself must be able to fail: the lowest module including the highest one
    planted = violations(f"src/{order[0]}.c", f'#include "qv_{order[-1]}.h"\n', rank)
    if planted:
        passed += 1
    else:
        print("check_layers: a planted upward include was not caught")
        failed += 1
    print(f"layers ({' → '.join(order)}): {len(files)} files checked")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
