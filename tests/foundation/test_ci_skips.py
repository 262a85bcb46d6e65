"""Under CI=true a skipped test fails the run and the summary names what was missing; elsewhere a skip
stays a skip with its reason."""

from __future__ import annotations

from pathlib import Path

pytest_plugins = ["pytester"]

ROOT_CONFTEST = (Path(__file__).parents[2] / "conftest.py").read_text()

TESTS = """
import pytest

def test_needs_a_tool():
    pytest.skip("groovy is not installed")

def test_runs():
    assert True

@pytest.mark.xfail(reason="a known bug", strict=False)
def test_known_bug():
    assert False
"""

MODULE_SKIP = """
import pytest
pytest.importorskip("a_module_that_is_not_installed")

def test_never_collected():
    pass
"""


def test_a_skip_fails_under_ci_and_names_what_was_missing(pytester, monkeypatch):
    monkeypatch.setenv("CI", "true")
    pytester.makeconftest(ROOT_CONFTEST)
    pytester.makepyfile(test_tools=TESTS, test_module_skip=MODULE_SKIP)
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=1, failed=1, skipped=1, xfailed=1)
    assert result.ret == 1
    summary = result.stdout.str().split("what was missing", 1)[1]
    assert "groovy is not installed" in summary and "a_module_that_is_not_installed" in summary


def test_a_skip_stays_a_skip_on_a_developer_machine(pytester, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    pytester.makeconftest(ROOT_CONFTEST)
    pytester.makepyfile(test_tools=TESTS, test_module_skip=MODULE_SKIP)
    result = pytester.runpytest_subprocess("-rs")
    result.assert_outcomes(passed=1, skipped=2, xfailed=1)
    assert result.ret == 0
    result.stdout.fnmatch_lines(["*SKIPPED*groovy is not installed*"])
