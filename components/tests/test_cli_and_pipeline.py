"""Cross-component tests: the `python -m components` entry point and the whole chain on the real data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def _component(name: str, **params) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run(
        [sys.executable, "-m", "components", name, "--params", json.dumps(params)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=600,
        check=False,
    )


def _result(done: subprocess.CompletedProcess) -> dict:
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_data_error_exits_7_with_the_message_on_stderr(small_source, tmp_path):
    (small_source / "IBM_2006-01-01_to_2018-01-01.csv").write_bytes(b"")
    done = _component("consolidate", source_dir=str(small_source), data_dir=str(tmp_path / "data"))
    assert done.returncode == 7
    assert done.stdout == ""
    assert "data error: IBM_2006-01-01_to_2018-01-01.csv: the file is empty (0 bytes)" in done.stderr


def test_usage_errors_exit_2(tmp_path):
    bad_json = subprocess.run(
        [sys.executable, "-m", "components", "validate", "--params", "{data_dir:"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        check=False,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert bad_json.returncode == 2 and "--params is not valid JSON" in bad_json.stderr
    wrong_argument = _component("validate", data_folder=str(tmp_path))
    assert (
        wrong_argument.returncode == 2
        and "unexpected keyword argument 'data_folder'" in wrong_argument.stderr
    )


@pytest.mark.slow
def test_real_data_end_to_end_through_the_entry_point(djia_dir, tmp_path):
    """consolidate -> validate -> features -> train -> evaluate -> export, each in its own process as in a
    pipeline; then the exported SavedModel is loaded and answers the recorded sample."""
    import tensorflow as tf

    data, work, models = tmp_path / "data", tmp_path / "work", tmp_path / "models"
    consolidated = _result(_component("consolidate", source_dir=str(djia_dir), data_dir=str(data)))
    assert consolidated["rows"] == 93_612
    validated = _result(_component("validate", data_dir=str(data)))
    assert validated["counts"]["high_low_not_bracketing"] == 151 and validated["rows_out"] == 93_620
    built = _result(
        _component(
            "features",
            data_dir=str(data),
            work_dir=str(work),
            target="MSFT",
            window=3,
            val_fraction=0.15,
            test_fraction=0.15,
        )
    )
    assert built["n_features"] == 93
    trained = _component(
        "train",
        work_dir=str(work),
        hidden_units=[16],
        dropout=0.1,
        learning_rate=0.003,
        batch_size=128,
        epochs=3,
        patience=2,
        seed=1,
    )
    assert "epoch 1/3" in trained.stderr and "ETA" in trained.stderr
    assert _result(trained)["epochs_run"] >= 1
    evaluated = _result(_component("evaluate", work_dir=str(work)))
    assert set(evaluated["beats_baselines"]) == {"majority_class", "persistence", "constant", "all"}
    assert [c["baseline"] for c in evaluated["comparisons"]] == ["majority_class", "persistence"]
    exported = _result(
        _component("export", work_dir=str(work), export_base=str(models), version=1, commit="e2e0000")
    )
    assert exported["export_path"] == str(models / "1")

    meta = json.loads((models / "1" / "assets.extra" / "branchops_model.json").read_text())
    assert meta["target"] == "MSFT" and meta["window"] == 3 and meta["commit"] == "e2e0000"
    serving = tf.saved_model.load(str(models / "1")).signatures["serving_default"]
    answer = serving(lagged_returns=tf.constant(meta["sample"]["instances"], dtype=tf.float32))
    np.testing.assert_allclose(
        answer["probability_up"].numpy(), meta["sample"]["predictions"]["probability_up"], atol=1e-6
    )
    assert answer["direction"].numpy().tolist() == meta["sample"]["predictions"]["direction"]
    metrics = json.loads((work / "metrics.json").read_text())
    assert metrics["rows"] == json.loads((work / "features.json").read_text())["splits"]["test"]["rows"]
