"""The serving port: what the deploy-model stage asks of a serving backend, and the checks every
backend runs the same way through the TF Serving REST API (signature, smoke test, canary probes)."""

from __future__ import annotations

import abc
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from branchops.errors import BadArgument, BranchopsError, ExternalError

if TYPE_CHECKING:
    from branchops.serving.client import ServingClient
    from branchops.serving.release import Release

METADATA_FILE = Path("assets.extra") / "branchops_model.json"
# Predictions recorded at export time and recomputed by the server may differ in the last bits
# (different kernels, thread counts); anything beyond this is a different model.
SMOKE_ATOL = 1e-4
SMOKE_RTOL = 1e-3
# The X-Request-ID prefix of branchops' own requests (smoke tests, rollout probes, sample predictions): a
# prediction log tells them from client traffic, and branchops monitor leaves them out of the drift.
TOOLKIT_REQUEST_PREFIX = "branchops/"
SMOKE_REQUEST_ID = TOOLKIT_REQUEST_PREFIX + "smoke-test"
PROBE_REQUEST_ID = TOOLKIT_REQUEST_PREFIX + "rollout-probe"
SAMPLE_REQUEST_ID = TOOLKIT_REQUEST_PREFIX + "sample"

Outcome = Literal["deployed", "unchanged", "rolled_back"]


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    seconds: float = 0.0


@dataclass
class DeployResult:
    model: str
    version: int
    strategy: str
    outcome: Outcome = "deployed"
    before: int | None = None  # stable version before the rollout
    after: int | None = None  # stable version after it (== before when rolled back)
    reason: str | None = None  # why it was rolled back
    checks: list[Check] = field(default_factory=list)
    canary_steps: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.outcome != "rolled_back"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        return data


@dataclass
class ServingStatus:
    backend: str
    model: str
    running: bool
    url: str | None = None
    pid: int | None = None
    stable: int | None = None
    canary: int | None = None
    canary_weight: int = 0
    versions: dict[int, str] = field(default_factory=dict)  # version -> state

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class DeployFailed(Exception):
    """A rollout check failed; the backend rolls back and reports ``reason``."""

    def __init__(self, check: str, reason: str) -> None:
        super().__init__(f"{check}: {reason}")
        self.check = check
        self.reason = reason


class Serving(abc.ABC):
    backend: str

    @abc.abstractmethod
    def status(self) -> ServingStatus: ...

    @abc.abstractmethod
    def live_version(self) -> int | None:
        """The stable version serving now (or that will serve after a restart); None if none."""

    @abc.abstractmethod
    def deploy(self, release: Release, model_source_dir: Path) -> DeployResult:
        """Make serving match ``release``; on any failed check, roll back and say why (never raise for
        that)."""

    @abc.abstractmethod
    def rollback_to(self, version: int) -> DeployResult: ...

    @abc.abstractmethod
    def client(self) -> ServingClient: ...

    @abc.abstractmethod
    def export_metadata(self, version: int) -> dict[str, Any]:
        """The export metadata of a served ``version`` (its sample and the predictions recorded for it)."""

    # -- monitoring (docs/monitoring.md) ---------------------------------------------------------------
    def read_prediction_log(self) -> dict[str, bytes]:
        """Every prediction log file (``predictions-*.jsonl``) the serving side wrote: name -> content."""
        raise self._unsupported("reading the prediction log")

    def read_outcomes(self) -> dict[str, bytes]:
        """Every outcome file (``*.csv``, ``*.jsonl``) in the outcomes folder: name -> content."""
        raise self._unsupported("reading outcomes")

    def publish_monitoring(self, payload: dict[str, Any]) -> None:
        """Write the last monitor check (``monitor.json``) where the serving side exposes it as gauges."""
        raise self._unsupported("publishing monitoring results")

    def _unsupported(self, what: str) -> BranchopsError:
        return BranchopsError(f"{what} is not supported by serving backend '{self.backend}'")

    def start(self, port: int | None = None) -> ServingStatus:
        """Start the model server (the local backend's own process)."""
        raise BadArgument(
            f"'serve start' starts the local model server; with serving.backend '{self.backend}' TF Serving "
            "runs in the cluster and the deploy-model stage rolls it out: there is nothing to start here"
        )

    def stop(self) -> bool:
        """Stop the model server (the local backend's own process)."""
        raise BadArgument(
            f"'serve stop' stops the local model server; with serving.backend '{self.backend}' TF Serving "
            "runs in the cluster: scale or delete its Deployment with kubectl if you mean to stop it"
        )


# -- checks shared by the backends ---------------------------------------------------------------------


def find_version_dir(source: Path, version: int) -> Path:
    """The SavedModel directory: ``source`` itself or ``source/<version>`` (TF Serving's base layout)."""
    for candidate in (source, source / str(version)):
        if (candidate / "saved_model.pb").is_file():
            return candidate
    raise DeployFailed("source", f"no SavedModel (saved_model.pb) at {source} or {source / str(version)}")


def read_model_metadata(version_dir: Path) -> dict[str, Any]:
    """The export's metadata (signature names and the sample with its predictions)."""
    path = version_dir / METADATA_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DeployFailed(
            "metadata", f"{path} is missing: the export must ship the sample it is smoke-tested with"
        ) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise DeployFailed("metadata", f"{path} is not valid JSON: {exc}") from None
    problems = []
    if not isinstance(meta, dict):
        raise DeployFailed("metadata", f"{path}: expected a JSON object")
    sample = meta.get("sample")
    if not isinstance(meta.get("input"), (str, dict)):
        problems.append("'input' (the input tensor's name)")
    if not isinstance(meta.get("outputs"), (list, dict)) or not meta.get("outputs"):
        problems.append("'outputs' (the output tensors' names)")
    if not (
        isinstance(sample, dict)
        and isinstance(sample.get("instances"), list)
        and sample["instances"]
        and isinstance(sample.get("predictions"), dict)
        and sample["predictions"]
    ):
        problems.append("'sample' with non-empty 'instances' and 'predictions'")
    if problems:
        raise DeployFailed("metadata", f"{path}: missing or wrong: {', '.join(problems)}")
    return meta


def _names(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [value["name"]] if isinstance(value.get("name"), str) else [str(k) for k in value]
    return [v if isinstance(v, str) else str(v.get("name")) for v in value]


def check_signature(client: ServingClient, version: int, meta: dict[str, Any]) -> Check:
    started = time.monotonic()
    document = client.metadata(version=version)
    signatures = document.get("metadata", {}).get("signature_def", {}).get("signature_def", {})
    signature = signatures.get("serving_default")
    if signature is None:
        raise DeployFailed(
            "signature",
            f"version {version} has no 'serving_default' signature (it has: {sorted(signatures) or 'none'})",
        )
    want_inputs, want_outputs = _names(meta["input"]), _names(meta["outputs"])
    have_inputs, have_outputs = sorted(signature.get("inputs", {})), sorted(signature.get("outputs", {}))
    if sorted(want_inputs) != have_inputs or not set(want_outputs) <= set(have_outputs):
        raise DeployFailed(
            "signature",
            f"version {version} serves inputs {have_inputs} and outputs {have_outputs}; "
            f"the export says inputs {sorted(want_inputs)} and outputs {sorted(want_outputs)}",
        )
    features = meta.get("feature_names")
    if isinstance(features, list) and len(want_inputs) == 1:
        dims = signature["inputs"][want_inputs[0]].get("tensor_shape", {}).get("dim", [])
        if len(dims) == 2 and int(dims[1]["size"]) not in (-1, len(features)):
            raise DeployFailed(
                "signature",
                f"input '{want_inputs[0]}' takes {dims[1]['size']} features, "
                f"the export lists {len(features)}",
            )
    return Check(
        "signature",
        True,
        f"serving_default: inputs {have_inputs}, outputs {have_outputs}",
        round(time.monotonic() - started, 4),
    )


def _columns(predictions: Any, outputs: list[str]) -> dict[str, list[Any]]:
    if isinstance(predictions, list) and predictions and all(isinstance(p, dict) for p in predictions):
        return {k: [p.get(k) for p in predictions] for k in predictions[0]}
    return {outputs[0]: predictions} if len(outputs) == 1 else {}


def _close(got: Any, want: Any) -> bool:
    if isinstance(want, list):
        return (
            isinstance(got, list) and len(got) == len(want) and all(_close(g, w) for g, w in zip(got, want))
        )
    if isinstance(want, bool) or isinstance(want, int) and isinstance(got, int):
        return got == want
    if isinstance(want, (int, float)) and isinstance(got, (int, float)) and not isinstance(got, bool):
        return math.isclose(got, want, rel_tol=SMOKE_RTOL, abs_tol=SMOKE_ATOL)
    return got == want


def smoke_test(
    client: ServingClient,
    meta: dict[str, Any],
    *,
    version: int | None = None,
    label: str | None = None,
    name: str = "smoke",
) -> Check:
    """Predict the export's sample and compare with the predictions recorded at export time."""
    started = time.monotonic()
    sample = meta["sample"]
    where = f"version {version}" if version is not None else f"label '{label}'"
    try:
        answer = client.predict(
            instances=sample["instances"], version=version, label=label, request_id=SMOKE_REQUEST_ID
        )
    except ExternalError as exc:
        raise DeployFailed(name, f"{where} could not predict the export's sample: {exc}") from None
    got = _columns(answer.get("predictions"), list(sample["predictions"]))
    for output, expected in sample["predictions"].items():
        if output not in got:
            raise DeployFailed(name, f"{where} returned no output '{output}'")
        if not _close(got[output], expected):
            raise DeployFailed(
                name,
                f"{where}: output '{output}' on the export's sample is {str(got[output])[:200]}, "
                f"the export recorded {str(expected)[:200]} (tolerance {SMOKE_ATOL})",
            )
    return Check(
        name,
        True,
        f"{where}: {len(sample['instances'])} sample predictions match the export",
        round(time.monotonic() - started, 4),
    )


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (what a p99 SLO means), 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]
