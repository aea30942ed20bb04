"""The closing tally line every suite ends with, `N passed, N failed[, N skipped]`, after
pytest's own summary: pytest hooks that a suite's conftest imports (the integration and real
suites through qvfixtures, the cluster suite directly)."""
import pytest

_outcomes = {}


def pytest_runtest_logreport(report):
    """Per test: failed if any phase failed, else skipped if skipped, else passed."""
    old = _outcomes.get(report.nodeid)
    if report.failed:
        _outcomes[report.nodeid] = "failed"
    elif report.skipped and old != "failed":
        _outcomes[report.nodeid] = "skipped"
    elif report.passed and report.when == "call" and old is None:
        _outcomes[report.nodeid] = "passed"


def pytest_collectreport(report):
    """A module that fails to import counts as one failure."""
    if report.failed:
        _outcomes[report.nodeid or "collection"] = "failed"


def _summary_line():
    """The plain `N passed, N failed[, N skipped]` line over the session."""
    n = {k: sum(1 for v in _outcomes.values() if v == k) for k in ("passed", "failed", "skipped")}
    line = f"{n['passed']} passed, {n['failed']} failed"
    return line + (f", {n['skipped']} skipped" if n["skipped"] else "")


def pytest_terminal_summary(terminalreporter):
    """Remember the terminal reporter; the line itself is printed after pytest's own summary."""
    terminalreporter.config._qvlmoefs_tr = terminalreporter


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_sessionfinish(session):
    """Print the tally line last, after pytest's own `=== ... in Ns ===` line."""
    yield
    tr = getattr(session.config, "_qvlmoefs_tr", None) or \
        session.config.pluginmanager.get_plugin("terminalreporter")
    if tr is not None:
        tr.write_line(_summary_line())
