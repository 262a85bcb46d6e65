"""Under CI a skipped test is a failure.

A test skips when a tool or data folder it needs is missing (groovy, Prism, buildah, the DJIA files).
On a developer's machine that is allowed and the reason is shown; in CI (``CI=true``) it would turn a
missing install step into a quiet green, so every skip is reported as a failure with its reason, and the
summary lists what was missing.
"""

from __future__ import annotations

import os

import pytest

STRICT = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")
_missing: list[tuple[str, str]] = []


def _skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # (file, line, "Skipped: reason")
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def _fail_skip(report: pytest.TestReport | pytest.CollectReport) -> None:
    if not (STRICT and report.skipped and not hasattr(report, "wasxfail")):
        return
    reason = _skip_reason(report)
    _missing.append((report.nodeid, reason))
    report.outcome = "failed"
    report.longrepr = f"skipped under CI=true, which counts as a failure: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    # A whole module that skips (importorskip, a module-level skip) stays a skip here, since a collection
    # failure would stop the session before the rest ran; the session's exit status fails it instead.
    outcome = yield
    report = outcome.get_result()
    if STRICT and report.skipped:
        _missing.append((report.nodeid, _skip_reason(report)))


def pytest_sessionfinish(session, exitstatus):
    if _missing and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter):
    if not _missing:
        return
    terminalreporter.section("skipped under CI=true (each counted as a failure): what was missing")
    for reason in sorted({reason for _, reason in _missing}):
        tests = [nodeid for nodeid, why in _missing if why == reason]
        terminalreporter.write_line(f"{reason}  [{len(tests)} test(s), e.g. {tests[0]}]")
