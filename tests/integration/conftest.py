"""The integration suite's conftest: its fixtures and hooks live in qvfixtures.py, which
tests/real/conftest.py imports too, so both suites mount and make checkpoints the same way."""
from qvfixtures import *  # noqa: F401,F403
