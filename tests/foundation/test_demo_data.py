"""Where the demo's data comes from: --data, --synthetic, or the template's own source; a Kaggle source
only with credentials to download it."""

from __future__ import annotations

import pytest

from branchops.demo import data_source
from branchops.errors import BranchopsError
from branchops.scaffold import load_template


def test_a_template_that_brings_its_data_needs_no_flag():
    assert data_source(load_template("minimal"), None, False) == {
        "source": "script",
        "script": "data/make_points.py",
    }


def test_the_reference_project_needs_data_credentials_or_a_flag(monkeypatch, tmp_path):
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    monkeypatch.delenv("KAGGLE_KEY", raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path))
    reference = load_template()
    with pytest.raises(BranchopsError, match="--data DIR"):
        data_source(reference, None, False)
    assert data_source(reference, None, True)["source"] == "script"
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "not-a-real-key")
    assert data_source(reference, None, False)["source"] == "kaggle"
