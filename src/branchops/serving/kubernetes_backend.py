"""Kubernetes serving backend: TensorFlow Serving as a Deployment, rolled forward by its model config.

The objects come from :mod:`branchops.serving.kubernetes_manifests`, the cluster calls from
:mod:`branchops.k8s.client`.

Rollout (the same checks as the local backend, through the API server's proxy to TF Serving's REST API):
put the version on the serving volume with a Job (from the model volume, or a PVC cloned from the
model snapshot), move the version policy forward to ``[old, new]``, wait until the new version is
AVAILABLE on every replica, check signature and smoke test, move the ``stable`` label, retire the old
version. Any failure puts the previous model config back.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from branchops.errors import ConfigError, ExternalError
from branchops.k8s.client import KubeApi
from branchops.serving.base import (
    Check,
    DeployFailed,
    DeployResult,
    Serving,
    ServingStatus,
    check_signature,
    percentile,
    smoke_test,
)
from branchops.serving.client import ServingClient
from branchops.serving.kubernetes_manifests import (  # noqa: F401  (some re-exported for callers)
    METADATA_MARKER,
    REST_PORT,
    STATE_ANNOTATION,
    ObjectBuilder,
    canary_replicas,
    render_manifests,
    render_models_config,
)

if TYPE_CHECKING:
    from branchops.config import BranchopsConfig
    from branchops.serving.release import Release

log = logging.getLogger(__name__)


class KubernetesServing(Serving):
    backend = "kubernetes"

    def __init__(self, config: BranchopsConfig, state_dir: Path, api: KubeApi | None = None) -> None:
        self.config = config
        self.objects = ObjectBuilder(config)
        self.k8s = config.serving.kubernetes
        self.rollout = config.serving.rollout
        self.model_name = config.serving.model_name
        self.namespace = self.k8s.namespace
        self._api = api
        self.poll_s = 3.0  # TF Serving re-reads its model config every 15 s; polling faster buys nothing

    @property
    def api(self) -> KubeApi:
        if self._api is None:
            self._api = KubeApi()
        return self._api

    def client(self) -> ServingClient:
        return self.api.proxy_client(self.namespace, f"services/{self.objects.name}:http", self.model_name)

    def _state(self) -> dict[str, Any]:
        return self.api.config_state(self.objects.config_map_name(), self.namespace) or {"versions": []}

    def status(self) -> ServingStatus:
        state = self._state()
        return ServingStatus(
            self.backend,
            self.model_name,
            running=bool(state.get("versions")),
            url=f"http://{self.objects.name}.{self.namespace}.svc:{REST_PORT}",
            stable=state.get("stable"),
            canary=state.get("canary"),
            canary_weight=state.get("canary_weight", 0),
            versions={int(v): "SERVED" for v in state.get("versions", [])},
        )

    def live_version(self) -> int | None:
        return self._state().get("stable")

    # -- rollout ----------------------------------------------------------------------------------
    def _set_policy(
        self, versions: list[int], stable: int | None, canary: int | None = None, weight: int = 0
    ) -> None:
        labels = {k: v for k, v in (("stable", stable), ("canary", canary)) if v is not None}
        state = {
            "versions": sorted(set(versions)),
            "stable": stable,
            "canary": canary,
            "canary_weight": weight,
        }
        self.api.apply(self.objects.config_map(state["versions"], labels, state=state))

    def _ensure_workload(self) -> None:
        """Deployment, Service, autoscaler, disruption budget (and Istio routing): created once, kept."""
        objects = [
            self.objects.deployment(replicas=self.k8s.replicas),
            self.objects.service(),
            self.objects.autoscaler(),
            self.objects.disruption_budget(),
        ]
        if self.objects.istio:
            objects += [self.objects.destination_rule(), self.objects.virtual_service(0)]
        for obj in objects:
            self.api.apply(obj)

    def _wait(self, what: str, predicate: Any) -> None:
        deadline = time.monotonic() + self.k8s.rollout_timeout_s
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(self.poll_s)
        raise DeployFailed("timeout", f"{what} not reached within {self.k8s.rollout_timeout_s:.0f}s")

    def _copy_in(self, release: Release) -> None:
        source = release.source
        claim = source.volume or ""
        if source.snapshot:
            clone = self.objects.source_clone(source.snapshot, release.version)
            self.api.apply(clone)
            claim = clone["metadata"]["name"]
        job = self.objects.copy_job(claim, source.path, release.version)
        self.api.delete("Job", job["metadata"]["name"], self.namespace)  # a rerun copies again
        self.api.apply(job)
        outcome: dict[str, bool | None] = {"done": None}

        def finished() -> bool:
            outcome["done"] = self.api.job_finished(job["metadata"]["name"], self.namespace)
            return outcome["done"] is not None

        self._wait(f"copy Job {job['metadata']['name']}", finished)
        if outcome["done"] is False:
            raise DeployFailed(
                "copy",
                f"Job {job['metadata']['name']} could not copy {source.describe()} "
                "onto the serving volume (see its pod's log)",
            )

    def _wait_available_everywhere(self, version: int, track: str = "stable") -> None:
        from branchops.serving.client import ServingError

        def on_every_replica() -> bool:
            pods = self.api.ready_pods(self.namespace, self.objects.selector(track))
            if not pods:
                return False
            for pod in pods:
                replica = self.api.proxy_client(self.namespace, f"pods/{pod}:{REST_PORT}", self.model_name)
                try:
                    status = replica.status(version=version)[0]
                except ServingError as exc:
                    if exc.status == 404:  # the replica has not read the new model config yet
                        return False
                    raise
                error = status.get("status", {})
                if status["state"] == "END" and error.get("error_code", "OK") != "OK":
                    raise DeployFailed(
                        "load", f"version {version} failed to load on pod {pod}: {error.get('error_message')}"
                    )
                if status["state"] != "AVAILABLE":
                    return False
            return True

        self._wait(f"version {version} AVAILABLE on every {track} replica", on_every_replica)

    def deploy(self, release: Release, model_source_dir: Path | None = None) -> DeployResult:
        if release.model != self.model_name:
            raise ConfigError(
                f"the release serves model '{release.model}' but serving.model_name is '{self.model_name}'"
            )
        strategy = release.strategy_or(self.rollout.strategy)
        state = self._state()
        before = state.get("stable")
        result = DeployResult(self.model_name, release.version, strategy, before=before, after=before)
        started = time.monotonic()
        version = release.version
        if before == version and state.get("canary") is None:
            result.outcome = "unchanged"
            return result
        try:
            phase = time.monotonic()
            self.api.apply(self.objects.serving_volume())
            self._copy_in(release)
            result.timings["copy"] = round(time.monotonic() - phase, 3)
            phase = time.monotonic()
            old = [v for v in [before] if v is not None]
            self._set_policy(old + [version], stable=before)  # move the policy forward: load beside the old
            self._ensure_workload()
            self._wait_available_everywhere(version)
            result.timings["load"] = round(time.monotonic() - phase, 3)
            client = self.client()
            meta = self._metadata(version)
            result.checks.append(Check("load", True, f"version {version} AVAILABLE on every replica"))
            result.checks.append(check_signature(client, version, meta))
            result.checks.append(smoke_test(client, meta, version=version))
            if strategy == "canary" and before is not None:
                self._canary(before, version, meta, result)
            self._set_policy(old + [version], stable=version)
            result.after = version
            self._set_policy([version], stable=version)  # retire the old version
            result.checks.append(smoke_test(client, meta, label="stable", name="live"))
        except (DeployFailed, ExternalError) as exc:
            check, reason = (
                (exc.check, exc.reason) if isinstance(exc, DeployFailed) else ("kubernetes", str(exc))
            )
            result.checks.append(Check(check, False, reason))
            result.outcome, result.reason, result.after = "rolled_back", f"{check} failed: {reason}", before
            self._roll_back(before)
        result.timings["total"] = round(time.monotonic() - started, 3)
        return result

    def _metadata(self, version: int) -> dict[str, Any]:
        """The export's metadata (with its sample), as the copy Job printed it after the marker."""
        from branchops.serving.base import METADATA_FILE

        log_text = self.api.job_log(
            self.objects.copy_job("x", "x", version)["metadata"]["name"], self.namespace
        )
        _, marker, tail = log_text.partition(METADATA_MARKER)
        try:
            meta = json.loads(tail) if marker else None
        except ValueError:
            meta = None
        if not isinstance(meta, dict):
            raise DeployFailed(
                "metadata", f"the copy Job printed no valid {METADATA_FILE} for version {version}"
            )
        sample = meta.get("sample")
        if not (
            isinstance(sample, dict)
            and sample.get("instances")
            and isinstance(sample.get("predictions"), dict)
        ):
            raise DeployFailed(
                "metadata", f"{METADATA_FILE} of version {version} has no sample to smoke-test"
            )
        return meta

    def _canary(self, stable: int, canary: int, meta: dict[str, Any], result: DeployResult) -> None:
        self.api.apply(self.objects.config_map([canary], {"stable": canary}, track="canary"))
        for weight in self.rollout.canary_steps:
            if weight >= 100:
                break
            phase = time.monotonic()
            replicas = canary_replicas(self.k8s.replicas, weight)
            self.api.apply(self.objects.deployment("canary", replicas=replicas))
            if self.objects.istio:
                self.api.apply(self.objects.virtual_service(weight))
            self._wait_available_everywhere(canary, track="canary")
            pods = self.api.ready_pods(self.namespace, self.objects.selector("canary"))
            latencies, failures = [], 0
            rows = meta["sample"]["instances"]
            for i in range(self.rollout.requests_per_step):
                client = self.api.proxy_client(
                    self.namespace, f"pods/{pods[i % len(pods)]}:{REST_PORT}", self.model_name
                )
                sent = time.perf_counter()
                try:
                    client.predict(instances=[rows[i % len(rows)]], version=canary)
                except ExternalError:
                    failures += 1
                latencies.append((time.perf_counter() - sent) * 1000)
            error_rate, p99 = failures / self.rollout.requests_per_step, percentile(latencies, 99)
            ok = error_rate <= self.rollout.max_error_rate and p99 <= self.rollout.max_p99_latency_ms
            result.canary_steps.append(
                {
                    "weight": weight,
                    "replicas": replicas,
                    "requests": self.rollout.requests_per_step,
                    "errors": failures,
                    "error_rate": round(error_rate, 4),
                    "p99_ms": round(p99, 2),
                    "seconds": round(time.monotonic() - phase, 3),
                    "ok": ok,
                }
            )
            if not ok:
                raise DeployFailed(
                    "canary",
                    f"at {weight}% the canary's error rate was {error_rate:.2%} "
                    f"(max {self.rollout.max_error_rate:.2%}) and p99 latency {p99:.1f} ms "
                    f"(max {self.rollout.max_p99_latency_ms:.1f} ms)",
                )
        self._remove_canary()

    def _remove_canary(self) -> None:
        if self.objects.istio:
            self.api.apply(self.objects.virtual_service(0))
        self.api.delete("Deployment", self.objects.deployment_name("canary"), self.namespace)
        self.api.delete("ConfigMap", self.objects.config_map_name("canary"), self.namespace)

    def _roll_back(self, before: int | None) -> None:
        try:
            self._remove_canary()
            if before is not None:
                self._set_policy([before], stable=before)
            else:  # nothing served before this failed first rollout: serve nothing rather than a bad model
                self.api.delete("Deployment", self.objects.deployment_name(), self.namespace)
                self.api.delete("ConfigMap", self.objects.config_map_name(), self.namespace)
        except ExternalError as exc:
            log.error("rollback to version %s incomplete: %s", before, exc)

    def rollback_to(self, version: int) -> DeployResult:
        from branchops.serving.release import Release

        # Old versions stay on the serving volume; the copy Job re-installs one from there.
        release = Release.model_validate(
            {
                "model": self.model_name,
                "version": version,
                "strategy": "rolling",
                "source": {"volume": self.objects.volume_claim, "path": f"{self.model_name}/{version}"},
            }
        )
        return self.deploy(release)
