"""The release file: strict schema, errors that name the line and the key, atomic write."""

from __future__ import annotations

import pytest

from branchops.errors import ConfigError
from branchops.serving.release import Release, parse_release, read_release, render_release, write_release

GOOD = """\
model: djia
version: 3
source:
  snapshot: djia-models-abc1234
  path: djia/3
strategy: canary
training:
  run_id: 20261123T170000Z-abc1234
  commit: abc1234
"""


def test_good_release_round_trips(tmp_path):
    release = parse_release(GOOD)
    assert release.version == 3 and release.source.snapshot == "djia-models-abc1234"
    assert release.strategy_or("rolling") == "canary"
    write_release(tmp_path / "serving" / "release.yaml", release)
    assert read_release(tmp_path / "serving" / "release.yaml") == release
    assert render_release(release).startswith("# Desired state")


def test_strategy_defaults_to_config():
    release = parse_release("model: djia\nversion: 1\nsource: {volume: djia-models, path: djia/1}\n")
    assert release.strategy is None and release.strategy_or("rolling") == "rolling"


@pytest.mark.parametrize(
    "text, expected",
    [
        (GOOD.replace("version: 3", "version: '3'"), ":2: version: expected an integer"),
        (GOOD.replace("version: 3", "version: 0"), ":2: version: Input should be greater than or equal to 1"),
        (
            GOOD.replace("strategy: canary", "strategy: blue-green"),
            ":6: strategy: Input should be 'rolling' or 'canary'",
        ),
        (GOOD.replace("strategy: canary", "stratgy: canary"), ":6: stratgy: unknown key"),
        (GOOD.replace("  path: djia/3", "  path: ../../etc"), "source.path: must be a relative POSIX path"),
        (GOOD.replace("  path: djia/3", "  path: /abs/3"), "source.path: must be a relative POSIX path"),
        (
            GOOD.replace("  snapshot: djia-models-abc1234\n", "  snapshot: s1\n  volume: v1\n"),
            "exactly one of 'volume' or 'snapshot'",
        ),
        (GOOD.replace("  snapshot: djia-models-abc1234\n", ""), "exactly one of 'volume' or 'snapshot'"),
        (GOOD.replace("model: djia\n", ""), "model: required key is missing"),
        (
            GOOD.replace("commit: abc1234", "commit: not-a-sha"),
            "training.commit: String should match pattern",
        ),
        ("- just\n- a list\n", "a release must be a mapping"),
        ("model: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_release_names_line_and_key(text, expected):
    with pytest.raises(ConfigError) as caught:
        parse_release(text, "serving/tfserve/release.yaml")
    assert expected in str(caught.value)
    assert "serving/tfserve/release.yaml" in str(caught.value)


def test_missing_release_file_says_what_makes_it(tmp_path):
    with pytest.raises(ConfigError, match="release file not found"):
        read_release(tmp_path / "release.yaml")


def test_shipped_release_example_is_valid():
    from pathlib import Path

    shipped = Path(__file__).resolve().parents[2] / "serving" / "tfserve" / "release.example.yaml"
    if not shipped.exists():
        pytest.fail("serving/tfserve/release.example.yaml is missing")
    assert isinstance(read_release(shipped), Release)
