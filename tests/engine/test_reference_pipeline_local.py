"""The reference pipeline, compiled as the kf-pipeline stage compiles it, run by the local engine
(Kubeflow's local runner) on the real DJIA files with a small model and two epochs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from branchops.engine.compile import compile_pipeline
from branchops.engine.local import LocalEngine

REPO_ROOT = Path(__file__).resolve().parents[2]
DJIA = Path(os.environ.get("BRANCHOPS_DJIA_DATA") or REPO_ROOT.parent / "shared" / "data" / "djia")
COMPONENTS = ("consolidate", "validate", "features", "train", "evaluate", "export")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not DJIA.is_dir(), reason=f"DJIA data not found at {DJIA} (set BRANCHOPS_DJIA_DATA)"),
    pytest.mark.skipif(
        not all((REPO_ROOT / "components" / c / "__init__.py").is_file() for c in COMPONENTS),
        reason="the reference components are not all present under components/",
    ),
]


def test_reference_pipeline_runs_end_to_end_on_djia_with_the_local_engine(tmp_path: Path):
    engine = LocalEngine(tmp_path / "kfp", workspace=REPO_ROOT)
    upload = engine.upsert("djia-sentiment", compile_pipeline(REPO_ROOT, "pipelines/djia_pipeline.py"))
    params = {
        "source_dir": str(DJIA),
        "data_dir": str(tmp_path / "data"),
        "work_dir": str(tmp_path / "models" / "r1"),
        "export_base": str(tmp_path / "models" / "export"),
        "version": 1,
        "commit": "0123456789ab",
        "hidden_units": [16, 8],
        "epochs": 2,
        "batch_size": 128,
    }
    messages: list[str] = []
    result = engine.run("training", upload, "r1-small", params, 1800, messages.append)
    assert result.state == "SUCCEEDED", result.error
    assert [m.split("'")[1] for m in messages if "finished with status SUCCESS" in m] == list(COMPONENTS)

    metrics = result.outputs["metrics"]
    for name in ("accuracy", "roc_auc", "precision", "recall", "f1"):
        assert 0.0 <= metrics[name] <= 1.0
    assert (tmp_path / "models" / "r1" / "metrics.json").is_file()
    assert (tmp_path / "data" / "prices.parquet").is_file()
    model = result.outputs["model"]
    assert Path(model["export_path"]) == tmp_path / "models" / "export" / "1"
    assert (tmp_path / "models" / "export" / "1" / "saved_model.pb").is_file()

    # the evaluation's KFP metrics artifacts (what the Kubeflow UI shows) say what metrics.json says
    written = json.loads((tmp_path / "models" / "r1" / "metrics.json").read_text())
    [evaluate] = (engine.run_dir("training", "r1-small") / "pipeline_root").glob(
        "*/evaluate/executor_output.json"
    )
    artifacts = json.loads(evaluate.read_text())["artifacts"]
    [scalars] = artifacts["metrics"]["artifacts"]
    assert {k: scalars["metadata"][k] for k in ("roc_auc", "accuracy", "log_loss")} == {
        k: written[k] for k in ("roc_auc", "accuracy", "log_loss")
    }
    [confusion] = artifacts["confusion"]["artifacts"]
    matrix = confusion["metadata"]["confusionMatrix"]
    assert [r["row"] for r in matrix["rows"]] == written["model"]["confusion_matrix"]
    assert len(matrix["annotationSpecs"]) == 2

    again = engine.run("training", upload, "r1-small", params, 1800)
    assert again.reused and again.run_id == result.run_id
