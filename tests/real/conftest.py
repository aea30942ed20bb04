"""The real-stack suite's conftest: the integration suite's fixtures (work folder, generated
checkpoints, mounts that always unmount, sanitizer reports, the closing tally line), shared
rather than copied, plus the `torch`-level helpers every real-tool test needs."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from qvfixtures import *  # noqa: E402,F401,F403
