"""The rollout, written once for every serving backend (docs/architecture.md §1, step 5).

TensorFlow Serving answers a request that names no version or label with the highest version it has
loaded, and it has no traffic weights. So a version nobody has checked must never be loaded where
ordinary clients are served: every rollout first brings the new version up on a **canary track** (a
second local server process, or canary pods on Kubernetes) that ordinary traffic does not reach, checks
it there, and only then moves the **stable track** to it:

1. copy the version onto the serving storage;
2. compare its serving contract (signature name, input names, dtypes, shapes; output names) with the
   serving version's, before anything is loaded: an incompatible release is refused unless it declares
   a breaking change (``breaking_change`` in the release file, seen by the approver in the merge request);
3. load it on the canary track, check its signature, smoke-test the export's sample and the serving
   version's sample (what clients send today);
4. canary strategy: step the canary's share of traffic (Istio weights where the backend has them), each
   step lasting at least ``serving.rollout.min_step_seconds`` and ``requests_per_step`` requests; the
   canary's server errors and the excess of its 4xx rate over the stable track's count as errors;
5. switch: the stable track loads the version, labels it ``stable`` and waits until TF Serving reports
   the label on that version;
6. remove the canary track, predict the export's sample through ``/labels/stable`` (the live check),
   retire the old version; on any failure, restore the previous state.

A backend supplies the primitives (:class:`RolloutBackend`); the steps, checks and messages are here.
"""

from __future__ import annotations

import abc
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from branchops.errors import ExternalError
from branchops.serving.base import (
    PROBE_REQUEST_ID,
    SMOKE_REQUEST_ID,
    Check,
    DeployFailed,
    DeployResult,
    check_signature,
    percentile,
    smoke_test,
)

if TYPE_CHECKING:
    from branchops.config import RolloutSection
    from branchops.serving.client import Sample, ServingClient
    from branchops.serving.release import Release

log = logging.getLogger(__name__)

SIGNATURE = "serving_default"
# TF Serving's REST API names dtypes as the DataType enum does; exports may write numpy's names.
_DTYPE_NAMES = {
    "float32": "DT_FLOAT",
    "float64": "DT_DOUBLE",
    "float16": "DT_HALF",
    "int64": "DT_INT64",
    "int32": "DT_INT32",
    "int8": "DT_INT8",
    "uint8": "DT_UINT8",
    "bool": "DT_BOOL",
    "string": "DT_STRING",
}


@dataclass
class Counts:
    """Requests a track answered, and how many of them with a client (4xx) or server (5xx) error."""

    requests: int = 0
    client_errors: int = 0
    server_errors: int = 0

    def __add__(self, other: Counts) -> Counts:
        return Counts(
            self.requests + other.requests,
            self.client_errors + other.client_errors,
            self.server_errors + other.server_errors,
        )

    def __sub__(self, other: Counts) -> Counts:
        return Counts(
            self.requests - other.requests,
            self.client_errors - other.client_errors,
            self.server_errors - other.server_errors,
        )

    def add(self, status: int) -> None:
        self.requests += 1
        self.client_errors += 400 <= status < 500
        self.server_errors += status >= 500


# The canonical status codes TF Serving counts that are the server's fault (5xx to a REST client).
SERVER_SIDE_STATUS = {
    "INTERNAL",
    "UNAVAILABLE",
    "UNKNOWN",
    "DATA_LOSS",
    "DEADLINE_EXCEEDED",
    "UNIMPLEMENTED",
    "RESOURCE_EXHAUSTED",
}
REQUEST_COUNT = ":tensorflow:serving:request_count"


def counts_from_metrics(samples: list[Sample], model: str) -> Counts | None:
    """A server's requests by outcome, from TF Serving's ``:tensorflow:serving:request_count{model_name,
    status}`` (the local server exposes it too); None if the server does not expose it."""
    counts, found = Counts(), False
    for sample in samples:
        if sample.name != REQUEST_COUNT or sample.labels.get("model_name", model) != model:
            continue
        found = True
        n, status = int(sample.value), sample.labels.get("status", "OK")
        counts.requests += n
        if status in SERVER_SIDE_STATUS:
            counts.server_errors += n
        elif status != "OK":
            counts.client_errors += n
    return counts if found else None


class RolloutBackend(abc.ABC):
    """The primitives a serving backend supplies to :class:`Rollout`."""

    @abc.abstractmethod
    def stable_version(self) -> int | None:
        """The version TF Serving serves on the stable track now (None if nothing serves)."""

    @abc.abstractmethod
    def stable_client(self) -> ServingClient:
        """Ordinary clients' way in (the server, or the Service / VirtualService)."""

    @abc.abstractmethod
    def install(self, release: Release, source: Path | None) -> str:
        """Put the version onto the serving storage (never where a server could see half of it); say how."""

    @abc.abstractmethod
    def export_metadata(self, release: Release, source: Path | None) -> dict[str, Any]:
        """The new version's export metadata (``assets.extra/branchops_model.json``), checked."""

    @abc.abstractmethod
    def serving_metadata(self, version: int) -> dict[str, Any] | None:
        """The export metadata of the version serving now, if it can still be read."""

    @abc.abstractmethod
    def start_canary(self, version: int) -> ServingClient:
        """Serve only ``version`` on the canary track, which ordinary traffic does not reach yet; return
        once it is AVAILABLE there (DeployFailed('load', ...) if it fails to load), with a client to it.
        A backend may load a version below the highest one its stable servers have loaded on those
        servers instead (TF Serving gives it only the requests naming it) and say so in ``canary_place``."""

    @abc.abstractmethod
    def set_canary_weight(self, weight: int) -> str:
        """Send ``weight`` percent of ordinary traffic to the canary track; say how (or that it cannot)."""

    @abc.abstractmethod
    def traffic(self, track: str) -> Counts | None:
        """Requests the track has answered so far (its servers' metrics), or None if not measurable."""

    @abc.abstractmethod
    def switch_stable(self, version: int, previous: int | None) -> None:
        """Have the stable track serve ``version`` (checked) and label it ``stable``."""

    @abc.abstractmethod
    def label_version(self, label: str) -> int | None:
        """The version TF Serving reports for ``label`` on every stable server (None while they differ or
        while the label is unknown)."""

    @abc.abstractmethod
    def stop_canary(self) -> None:
        """The canary track goes away (and with it any share of ordinary traffic it had)."""

    @abc.abstractmethod
    def retire(self, keep: int) -> None:
        """The stable track serves ``keep`` alone."""

    @abc.abstractmethod
    def restore(self, previous: int | None, failed: int) -> None:
        """Put back what served before the rollout (nothing, if nothing did) and drop ``failed``."""

    def check_runtime(self, meta: dict[str, Any]) -> Check | None:
        """Whether the servers can load what the export's TensorFlow wrote (None: nothing to check)."""
        return None

    label_timeout_s: float = 30.0  # how long TF Serving may take to report a new label
    canary_place: str = "the canary track"  # where start_canary() loaded the version, for the load check
    poll_s: float = 0.2
    external: str = "serving"  # the check named when the backend's own system fails


# -- the serving contract -----------------------------------------------------------------------------


def _dims(spec: dict[str, Any]) -> list[int] | None:
    if "shape" in spec:  # the export's form: a list, or None for an unknown rank
        return None if spec["shape"] is None else [int(d) for d in spec["shape"]]
    shape = spec.get("tensor_shape") or {}
    if shape.get("unknown_rank"):
        return None
    return [int(d.get("size", -1)) for d in shape.get("dim", [])]


def _dtype(spec: dict[str, Any]) -> str:
    dtype = str(spec.get("dtype", "DT_INVALID"))
    return _DTYPE_NAMES.get(dtype, dtype)


def contract_from_metadata(meta: dict[str, Any]) -> dict[str, Any] | None:
    """The ``serving_contract`` the export recorded, normalised; None if it recorded none."""
    contract = meta.get("serving_contract")
    if not isinstance(contract, dict) or not isinstance(contract.get("inputs"), dict):
        return None
    return _normalise(contract.get("signature", SIGNATURE), contract["inputs"], contract.get("outputs"))


def contract_from_signature_def(document: dict[str, Any]) -> dict[str, Any] | None:
    """The contract TF Serving serves (GET /v1/models/M/versions/N/metadata), normalised."""
    signatures = document.get("metadata", {}).get("signature_def", {}).get("signature_def", {})
    signature = signatures.get(SIGNATURE)
    if signature is None:
        return None
    return _normalise(SIGNATURE, signature.get("inputs", {}), signature.get("outputs", {}))


def _normalise(signature: str, inputs: dict[str, Any], outputs: Any) -> dict[str, Any]:
    return {
        "signature": signature,
        "inputs": {name: {"dtype": _dtype(spec), "shape": _dims(spec)} for name, spec in inputs.items()},
        "outputs": sorted(outputs) if isinstance(outputs, (dict, list)) else None,
    }


def _shape_fits(new: list[int] | None, old: list[int] | None) -> bool:
    if new is None or old is None:
        return True  # an unknown rank takes anything
    return len(new) == len(old) and all(n == o or -1 in (n, o) for n, o in zip(new, old))


def contract_problems(new: dict[str, Any], serving: dict[str, Any]) -> list[str]:
    """Why clients of ``serving`` would fail against ``new`` (empty if they would not)."""
    problems = []
    if new["signature"] != serving["signature"]:
        problems.append(f"signature '{new['signature']}' instead of '{serving['signature']}'")
    for name, old in sorted(serving["inputs"].items()):
        spec = new["inputs"].get(name)
        if spec is None:
            problems.append(f"input '{name}' is gone")
        elif spec["dtype"] != old["dtype"]:
            problems.append(f"input '{name}' is {spec['dtype']}, clients send {old['dtype']}")
        elif not _shape_fits(spec["shape"], old["shape"]):
            problems.append(f"input '{name}' has shape {spec['shape']}, clients send {old['shape']}")
    for name in sorted(set(new["inputs"]) - set(serving["inputs"])):
        problems.append(f"input '{name}' is new (clients do not send it)")
    if new["outputs"] is not None and serving["outputs"] is not None:
        gone = sorted(set(serving["outputs"]) - set(new["outputs"]))
        if gone:
            problems.append(f"outputs {gone} are gone")
    return problems


# -- the rollout ----------------------------------------------------------------------------------------


class Rollout:
    def __init__(self, backend: RolloutBackend, model: str, rollout: RolloutSection) -> None:
        self.backend = backend
        self.model = model
        self.rollout = rollout

    def deploy(self, release: Release, source: Path | None, strategy: str) -> DeployResult:
        backend = self.backend
        version = release.version
        before = backend.stable_version()
        result = DeployResult(self.model, version, strategy, before=before, after=before)
        started = time.monotonic()
        if before == version:
            result.outcome = "unchanged"
            try:
                meta = backend.serving_metadata(version)
                if meta is not None:
                    result.checks.append(
                        smoke_test(backend.stable_client(), meta, label="stable", name="live")
                    )
            except (DeployFailed, ExternalError) as exc:  # reported; this is the desired state all the same
                check, reason = _why(exc, backend.external)
                result.checks.append(Check(check, False, reason))
            result.timings["total"] = round(time.monotonic() - started, 3)
            return result
        try:
            self._roll_forward(release, source, strategy, before, result)
        except (DeployFailed, ExternalError) as exc:
            check, reason = _why(exc, backend.external)
            result.checks.append(Check(check, False, reason))
            result.outcome, result.reason, result.after = "rolled_back", f"{check} failed: {reason}", before
            phase = time.monotonic()
            try:
                backend.restore(before, version)
            except (DeployFailed, ExternalError) as restore_error:
                log.error("restoring version %s after the failed rollout: %s", before, restore_error)
                result.checks.append(Check("restore", False, str(restore_error)))
                # The stage reports the reason: it must not read as if the previous state were back.
                result.reason += (
                    f"; restoring {f'version {before}' if before is not None else 'the empty state'} "
                    f"failed too, serving may be half-changed: {restore_error}"
                )
            result.timings["rollback"] = round(time.monotonic() - phase, 3)
            log.error("rollout of version %s rolled back: %s", version, result.reason)
        except BaseException:
            # Interrupted (Ctrl-C, a stage's timeout) or an unexpected error: no canary track left behind
            # (a server process, a Deployment), the stable track put back, then the interrupt goes on.
            log.error("rollout of version %s interrupted; restoring version %s", version, before)
            try:
                backend.restore(before, version)
            except Exception as restore_error:
                log.error("restoring version %s after the interrupted rollout: %s", before, restore_error)
            raise
        result.timings["total"] = round(time.monotonic() - started, 3)
        return result

    def _roll_forward(
        self, release: Release, source: Path | None, strategy: str, before: int | None, result: DeployResult
    ) -> None:
        backend, version = self.backend, release.version
        phase = time.monotonic()
        how = backend.install(release, source)
        result.timings["copy"] = round(time.monotonic() - phase, 3)
        result.checks.append(Check("copy", True, f"version {version}: {how}", result.timings["copy"]))
        meta = backend.export_metadata(release, source)
        serving_meta = backend.serving_metadata(before) if before is not None else None
        serving_contract = self._serving_contract(before, serving_meta)
        runtime = backend.check_runtime(meta)
        if runtime is not None:
            result.checks.append(runtime)
        new_contract = contract_from_metadata(meta)
        if new_contract is not None:  # refused before anything is loaded
            result.checks.append(self._check_contract(release, new_contract, serving_contract))

        phase = time.monotonic()
        canary = backend.start_canary(version)
        result.timings["load"] = round(time.monotonic() - phase, 3)
        result.checks.append(
            Check(
                "load", True, f"version {version} AVAILABLE on {backend.canary_place}", result.timings["load"]
            )
        )
        if new_contract is None:  # the export recorded none: what TF Serving serves, still before traffic
            served = contract_from_signature_def(canary.metadata(version=version))
            if served is not None:
                result.checks.append(self._check_contract(release, served, serving_contract))
        result.checks.append(check_signature(canary, version, meta))
        result.checks.append(smoke_test(canary, meta, version=version))
        probe_rows = list(meta["sample"]["instances"])
        if serving_meta is not None and not release.breaking_change:
            result.checks.append(self._smoke_serving_sample(canary, version, before, serving_meta))
            probe_rows += serving_meta["sample"]["instances"]

        if strategy == "canary" and before is not None:
            self._canary_steps(canary, version, probe_rows, result)

        phase = time.monotonic()
        backend.switch_stable(version, before)
        self._await_label("stable", version)
        result.timings["switch"] = round(time.monotonic() - phase, 3)
        result.after = version
        backend.stop_canary()  # before the live check: ordinary clients' way in reaches stable pods only
        result.checks.append(smoke_test(backend.stable_client(), meta, label="stable", name="live"))
        phase = time.monotonic()
        backend.retire(keep=version)
        result.timings["retire"] = round(time.monotonic() - phase, 3)

    def _serving_contract(self, before: int | None, serving_meta: dict[str, Any] | None) -> dict | None:
        if before is None:
            return None
        contract = contract_from_metadata(serving_meta) if serving_meta else None
        if contract is None:  # recorded before exports wrote one: what TF Serving serves
            contract = contract_from_signature_def(self.backend.stable_client().metadata(version=before))
        return contract

    def _check_contract(self, release: Release, new: dict[str, Any], serving: dict[str, Any] | None) -> Check:
        if serving is None:
            return Check("contract", True, f"nothing serves yet; version {release.version} sets the contract")
        problems = contract_problems(new, serving)
        if not problems:
            return Check("contract", True, "compatible with what clients send to the serving version")
        if release.breaking_change:
            return Check(
                "contract",
                True,
                f"breaking change declared in the release ({release.breaking_change}): {'; '.join(problems)}",
            )
        raise DeployFailed(
            "contract",
            f"version {release.version} would break the serving version's clients: {'; '.join(problems)} "
            "(declare it with 'breaking_change: <why>' in the release file, or serve it under a new "
            "model name)",
        )

    def _smoke_serving_sample(
        self, canary: ServingClient, version: int, before: int | None, serving_meta: dict[str, Any]
    ) -> Check:
        started = time.monotonic()
        rows = serving_meta["sample"]["instances"]
        try:
            answer = canary.predict(instances=rows, version=version, request_id=SMOKE_REQUEST_ID)
        except ExternalError as exc:
            raise DeployFailed(
                "smoke (serving sample)",
                f"version {version} cannot answer the sample of version {before} (what clients send now): "
                f"{exc}",
            ) from None
        predictions = answer.get("predictions")
        if not isinstance(predictions, list) or len(predictions) != len(rows):
            raise DeployFailed(
                "smoke (serving sample)",
                f"version {version} answered {len(rows)} rows of version {before}'s sample with "
                f"{str(predictions)[:200]}",
            )
        return Check(
            "smoke (serving sample)",
            True,
            f"version {version} answers the {len(rows)} sample rows of version {before}",
            round(time.monotonic() - started, 4),
        )

    def _canary_steps(
        self, canary: ServingClient, version: int, rows: list[Any], result: DeployResult
    ) -> None:
        backend, rollout = self.backend, self.rollout
        stable = backend.stable_client()
        for weight in rollout.canary_steps:
            if weight >= 100:
                break
            phase = time.monotonic()
            routed = backend.set_canary_weight(weight)
            live_before = {t: backend.traffic(t) for t in ("canary", "stable")}
            probes = {"canary": Counts(), "stable": Counts()}
            latencies: list[float] = []
            # Spread the probes over the step so slow degradation shows, not only a burst's.
            spacing = rollout.min_step_seconds / rollout.requests_per_step
            sent = 0
            while sent < rollout.requests_per_step or time.monotonic() - phase < rollout.min_step_seconds:
                row = [rows[sent % len(rows)]]
                began = time.perf_counter()
                probes["canary"].add(
                    _status(
                        lambda: canary.predict(instances=row, version=version, request_id=PROBE_REQUEST_ID)
                    )
                )
                latencies.append((time.perf_counter() - began) * 1000)
                # probes, not traffic: the prediction log says so, and monitor leaves them out
                probes["stable"].add(
                    _status(lambda: stable.predict(instances=row, request_id=PROBE_REQUEST_ID))
                )
                sent += 1
                time.sleep(max(0.0, phase + sent * spacing - time.monotonic()))
            seen = {}
            for track in ("canary", "stable"):
                live_after = backend.traffic(track)
                before_counts = live_before[track]
                # A track's metrics count the probes too; without metrics, the probes are all there is.
                seen[track] = (
                    live_after - before_counts
                    if live_after is not None and before_counts is not None
                    else probes[track]
                )
            c, s = seen["canary"], seen["stable"]
            canary_4xx = c.client_errors / max(c.requests, 1)
            stable_4xx = s.client_errors / max(s.requests, 1)
            error_rate = c.server_errors / max(c.requests, 1) + max(0.0, canary_4xx - stable_4xx)
            p99 = percentile(latencies, 99)
            step = {
                "weight": weight,
                "routing": routed,
                "requests": c.requests,
                "errors": c.server_errors + c.client_errors,
                "server_errors": c.server_errors,
                "client_error_rate": round(canary_4xx, 4),
                "stable_client_error_rate": round(stable_4xx, 4),
                "error_rate": round(error_rate, 4),
                "p99_ms": round(p99, 2),
                "seconds": round(time.monotonic() - phase, 3),
            }
            step["ok"] = error_rate <= rollout.max_error_rate and p99 <= rollout.max_p99_latency_ms
            result.canary_steps.append(step)
            if not step["ok"]:
                raise DeployFailed(
                    "canary",
                    f"at {weight}% the canary's error rate was {error_rate:.2%} "
                    f"(5xx {c.server_errors}/{c.requests}, 4xx {canary_4xx:.2%} against the stable track's "
                    f"{stable_4xx:.2%}; max {rollout.max_error_rate:.2%}) and p99 latency {p99:.1f} ms "
                    f"(max {rollout.max_p99_latency_ms:.1f} ms)",
                )
            result.checks.append(
                Check(
                    f"canary {weight}%",
                    True,
                    f"error rate {error_rate:.2%} over {c.requests} requests, p99 {p99:.1f} ms",
                    step["seconds"],
                )
            )

    def _await_label(self, label: str, version: int) -> None:
        """Until TF Serving itself reports ``label`` on ``version`` (config files are re-read on a poll)."""
        backend = self.backend
        deadline = time.monotonic() + backend.label_timeout_s
        seen = None
        while True:
            seen = backend.label_version(label)
            if seen == version:
                return
            if time.monotonic() >= deadline:
                raise DeployFailed(
                    "switch",
                    f"TF Serving did not report label '{label}' on version {version} within "
                    f"{backend.label_timeout_s:.0f}s (last seen: {seen if seen is not None else 'none'})",
                )
            time.sleep(backend.poll_s)


def _status(call: Any) -> int:
    """The HTTP status a request got (599 when there was no answer)."""
    from branchops.serving.client import ServingError

    try:
        call()
    except ServingError as exc:
        return exc.status
    except ExternalError:
        return 599
    return 200


def _why(exc: Exception, external: str) -> tuple[str, str]:
    if isinstance(exc, DeployFailed):
        return exc.check, exc.reason
    return external, str(exc)
