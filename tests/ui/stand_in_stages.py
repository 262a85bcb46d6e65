"""Stage bodies for the dashboard's tests: the real runner runs them on approved merges and writes their
records to git, so the dashboard reads records made the way every stage's are. What they return has the
shape the training and deploy-model stages write (tests/foundation/record_history.py), and training adds
real PNG plots as artifacts, as the training stage copies its experiments' plots into the record."""

from __future__ import annotations

import json
import struct
import zlib

from branchops.stages.base import StageContext, StageResult
from tests.foundation import record_history

# What a run does is read from the merged commit: src/run.json on the branch, e.g.
# {"version": 2, "units": 128, "roc_auc": 0.61} for training, {"version": 2, "before": 1} for deploy-model.
RUN_FILE = "src/run.json"
# A parameter named like a credential: the dashboard must never show its value.
SECRET_VALUE = "s3cr3t-token-value"


def inputs(config) -> tuple[str, ...]:
    return ("src/",)


def plan(ctx: StageContext) -> list[str]:
    return [f"would record a {ctx.stage} run"]


def _wanted(ctx: StageContext) -> dict:
    return json.loads((ctx.workspace / RUN_FILE).read_text())


def png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A PNG image of one colour (PNG specification: signature, IHDR, IDAT of zlib'd scanlines, IEND)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    scanlines = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(scanlines))
        + chunk(b"IEND", b"")
    )


def training(ctx: StageContext) -> StageResult:
    wanted = _wanted(ctx)
    i = wanted["version"]
    outputs = record_history.training(i)["outputs"]
    best = outputs["best"]
    best["params"] = {"units": wanted["units"], "epochs": 5, "kaggle_token": SECRET_VALUE}
    best["metrics"]["roc_auc"] = wanted["roc_auc"]
    best["metrics"]["accuracy"] = wanted["roc_auc"] - 0.05
    # the curves the evaluate component records in metrics.json: training history per epoch, test ROC
    loss = [0.70 - 0.01 * epoch * wanted["units"] / 64 for epoch in range(5)]
    best["metrics"]["curves"] = {
        "learning": {"loss": loss, "val_loss": [x + 0.02 for x in loss], "accuracy": [1 - x for x in loss]},
        "roc": {"fpr": [0.0, 0.3, 1.0], "tpr": [0.0, wanted["roc_auc"], 1.0]},
    }
    # the paired bootstrap's 95 % interval, as the evaluate component reports it in metrics.json
    best["metrics"]["intervals"] = {
        "roc_auc": {"low": wanted["roc_auc"] - 0.03, "high": wanted["roc_auc"] + 0.03, "confidence": 0.95}
    }
    outputs["experiments"] = [best]
    for name, colour in (("roc.png", (40, 90, 200)), ("learning_curve.png", (200, 90, 40))):
        ctx.add_artifact(f"{best['experiment']}/plots/{name}", png(64, 48, colour))
    ctx.add_artifact(f"{best['experiment']}/metrics.json", json.dumps(best["metrics"]))
    return StageResult(outcome="success", summary=f"best {best['experiment']}: model {i}", outputs=outputs)


def deploy(ctx: StageContext) -> StageResult:
    wanted = _wanted(ctx)
    version = record_history.FIRST_VERSION + wanted["version"]
    before = record_history.FIRST_VERSION + wanted["before"] if wanted.get("before") is not None else None
    outputs = record_history.deployment(wanted["version"], before=before)["outputs"]
    deployment = outputs["deployment"]
    deployment["before"] = before
    if wanted.get("outcome") == "rolled_back":  # the rollout failed its checks: the version before stays
        deployment.update(outcome="rolled_back", after=before, ok=False, reason="smoke test failed")
    # the release names the training run that made the version, as release files do
    outputs["release"]["training"] = {"run_id": wanted["training_run_id"], "commit": None}
    deployment["canary_steps"] = wanted.get("canary_steps", [])
    deployment["strategy"] = "canary" if deployment["canary_steps"] else "rolling"
    return StageResult(
        outcome="success",
        summary=f"model djia: version {before} -> version {deployment['after']} ({deployment['outcome']})",
        outputs=outputs | {"release": outputs["release"] | {"version": version}},
    )


class TrainingStage:
    inputs = staticmethod(inputs)
    plan = staticmethod(plan)
    run = staticmethod(training)


class DeployStage:
    inputs = staticmethod(inputs)
    plan = staticmethod(plan)
    run = staticmethod(deploy)
