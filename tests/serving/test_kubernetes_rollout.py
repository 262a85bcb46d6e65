"""The Kubernetes rollout logic against a fake cluster at the backend's KubeApi boundary.

No API server or TF Serving binary runs here. The fake stores what the backend applies (each object
first judged by the API server's own rules, tests/k8s/api_rules.py: whatever a real server would refuse
or silently trim fails the test), runs the copy Job as a file copy, and plays
every TF Serving pod with a real branchops model server whose version policy and labels follow the
ConfigMap's models.config, as TF Serving's config polling does. This is a fake, not an integration
test: it checks our rollout decisions, not Kubernetes."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from urllib.parse import urlparse

import pytest
import requests
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict

from branchops.config import STAGES, BranchopsConfig
from branchops.serving.client import ServingClient
from branchops.serving.kubernetes_backend import METADATA_MARKER, KubernetesServing
from branchops.serving.release import Release
from branchops.serving.server import ModelServer, create_app
from tests.k8s.api_rules import review

PROXY = re.compile(
    r"^/api/v1/namespaces/(?P<ns>[^/]+)/(?P<kind>services|pods)/(?P<name>[^/:]+):[^/]+/proxy(?P<path>/.*)$"
)


class Pod:
    def __init__(self, name: str, track: str, models: Path, model: str) -> None:
        self.name, self.track = name, track
        self.server = ModelServer(model, models)
        self.app = create_app(self.server).test_client()

    def sync(self, models_config: str) -> None:
        """What TF Serving does when it re-reads models.config: load, label, unload."""
        versions = [int(v) for v in re.findall(r"versions: (\d+)", models_config)]
        labels = {k: int(v) for k, v in re.findall(r'key: "(\w+)"\s+value: (\d+)', models_config)}
        loaded = self.server.versions()
        for v in versions:
            if v not in loaded or loaded[v].state == "END" and loaded[v].error_code == "OK":
                self.server.load(v)
        available = {v for v, mv in self.server.versions().items() if mv.state == "AVAILABLE"}
        routing = {k: v for k, v in labels.items() if v in available}
        self.server.set_routing(routing.get("stable"), routing.get("canary"), 0)
        for v, mv in self.server.versions().items():
            if v not in versions and mv.state == "AVAILABLE":
                self.server.retire(v)


class FakeCluster:
    def __init__(self, root: Path, model: str) -> None:
        self.root, self.model = root, model
        self.objects: dict[tuple[str, str], dict] = {}
        self.history: list[tuple[str, str, str]] = []  # (verb, kind, name)
        self.volumes: dict[str, Path] = {}
        self.snapshots: dict[str, Path] = {}
        self.pods: dict[str, Pod] = {}
        self.job_logs: dict[str, str] = {}
        self.jobs_failed: set[str] = set()
        self.refused: list[str] = []  # what an API server would have refused or trimmed

    # -- the KubeApi surface --------------------------------------------------------------------
    def apply(self, obj: dict) -> None:
        verdict = review(obj)
        if verdict.refused or verdict.warnings:
            # Kept as well as raised: the rollout may turn the error into a rollback, the fixture will not.
            self.refused.append(verdict.status["message"] if verdict.status else "; ".join(verdict.warnings))
            raise AssertionError(f"the API server would refuse or trim {obj['kind']}: {self.refused[-1]}")
        kind, name = obj["kind"], obj["metadata"]["name"]
        self.history.append(
            (
                "apply",
                kind,
                name
                if kind != "VirtualService"
                else f"{name}:{obj['spec']['http'][0]['route'][1]['weight']}",
            )
        )
        self.objects[(kind, name)] = json.loads(json.dumps(obj))
        if kind == "PersistentVolumeClaim":
            source = obj["spec"].get("dataSource")
            path = self.volumes.setdefault(name, self.root / "volumes" / name)
            if source:
                shutil.copytree(self.snapshots[source["name"]], path, dirs_exist_ok=True)
            path.mkdir(parents=True, exist_ok=True)
        elif kind == "Job":
            self._run_copy(obj)
        elif kind == "Deployment":
            track = obj["metadata"]["labels"]["branchops.io/track"]
            replicas = obj["spec"].get("replicas", 1)
            for i in range(replicas):
                pod = f"{name}-{i}"
                self.pods.setdefault(
                    pod, Pod(pod, track, self.volumes["tfserve-models"] / self.model, self.model)
                )
            for pod in [
                p for p in self.pods if p.startswith(f"{name}-") and int(p.rsplit("-", 1)[1]) >= replicas
            ]:
                del self.pods[pod]

    def _run_copy(self, job: dict) -> None:
        spec = job["spec"]["template"]["spec"]
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"]}
        env = {e["name"]: e["value"] for e in spec["containers"][0]["env"]}
        version = job["metadata"]["name"].rsplit("-v", 1)[1]
        source = self.volumes[claims["source"]] / env["SOURCE_PATH"]
        target = self.volumes[claims["models"]] / self.model / version
        if not (source / "saved_model.pb").is_file():
            self.jobs_failed.add(job["metadata"]["name"])
            return
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source, target)
        meta = (target / "assets.extra" / "branchops_model.json").read_text()
        self.job_logs[job["metadata"]["name"]] = f"{METADATA_MARKER}\n{meta}"

    def delete(self, kind: str, name: str, namespace: str) -> None:
        self.history.append(("delete", kind, name))
        self.objects.pop((kind, name), None)
        if kind == "Deployment":
            for pod in [
                p
                for p in self.pods
                if p.startswith(f"{name}-") and p.rsplit("-", 1)[1].isdigit() and p.rsplit("-", 1)[0] == name
            ]:
                del self.pods[pod]

    def config_state(self, name: str, namespace: str) -> dict | None:
        cm = self.objects.get(("ConfigMap", name))
        return json.loads(cm["metadata"]["annotations"]["branchops.io/serving-state"]) if cm else None

    def job_finished(self, name: str, namespace: str) -> bool | None:
        return name not in self.jobs_failed

    def job_log(self, job: str, namespace: str) -> str:
        return self.job_logs.get(job, "")

    def ready_pods(self, namespace: str, selector: dict[str, str]) -> list[str]:
        track = selector.get("branchops.io/track")
        return [p.name for p in self.pods.values() if track in (None, p.track)]

    def proxy_client(self, namespace: str, target: str, model: str, timeout_s: float = 10.0) -> ServingClient:
        session = requests.Session()
        session.mount("http://apiserver/", _ProxyAdapter(self))
        return ServingClient(
            f"http://apiserver/api/v1/namespaces/{namespace}/{target}/proxy", model, session=session
        )

    # -- TF Serving's config polling ----------------------------------------------------------------
    def sync(self) -> None:
        for pod in self.pods.values():
            cm = self.objects.get(
                ("ConfigMap", "tfserve-config" if pod.track == "stable" else f"tfserve-{pod.track}-config")
            )
            if cm:
                pod.sync(cm["data"]["models.config"])

    def wait_loaded(self) -> None:
        for pod in self.pods.values():
            for thread in pod.server._loaders:
                thread.join(120)


class _ProxyAdapter(BaseAdapter):
    """Routes the API server's proxy URLs to the fake pods (a Service picks its stable pods in turn)."""

    def __init__(self, cluster: FakeCluster) -> None:
        super().__init__()
        self.cluster = cluster
        self.turn = 0

    def send(self, request, **kwargs):
        self.cluster.sync()
        self.cluster.wait_loaded()
        self.cluster.sync()
        match = PROXY.match(urlparse(request.url).path)
        if match["kind"] == "pods":
            pod = self.cluster.pods[match["name"]]
        else:
            stable = [p for p in self.cluster.pods.values() if p.track == "stable"]
            self.turn += 1
            pod = stable[self.turn % len(stable)]
        answer = pod.app.open(
            match["path"],
            method=request.method,
            data=request.body,
            headers={"Content-Type": "application/json"},
            environ_base={"REMOTE_ADDR": "10.0.0.9"},
        )
        response = requests.Response()
        response.status_code, response._content = answer.status_code, answer.data
        response.headers = CaseInsensitiveDict(dict(answer.headers))
        response.url, response.request = request.url, request
        return response

    def close(self) -> None:
        pass


def release(
    version: int,
    path: str,
    *,
    volume: str | None = "djia-models",
    snapshot: str | None = None,
    strategy: str = "rolling",
) -> Release:
    source = {"snapshot": snapshot} if snapshot else {"volume": volume}
    return Release.model_validate(
        {"model": "djia", "version": version, "strategy": strategy, "source": {**source, "path": path}}
    )


@pytest.fixture()
def cluster(models, tmp_path):
    fake = FakeCluster(tmp_path, "djia")
    volume = fake.volumes["djia-models"] = tmp_path / "volumes" / "djia-models"
    for key, version in (("v1", 1), ("v2", 2), ("mismatch", 8), ("corrupt", 6)):
        shutil.copytree(models[key], volume / "djia" / str(version))
    fake.snapshots["djia-models-run3"] = tmp_path / "snapshots" / "run3"
    shutil.copytree(models["v3"], fake.snapshots["djia-models-run3"] / "djia" / "3")
    yield fake
    assert fake.refused == [], f"the API server would have refused or trimmed: {fake.refused}"


def backend(cluster: FakeCluster, **kubernetes) -> KubernetesServing:
    config = BranchopsConfig.model_validate(
        {
            "approvers": {s: ["lead"] for s in STAGES},
            "serving": {
                "backend": "kubernetes",
                "model_name": "djia",
                "kubernetes": {"replicas": 2, "rollout_timeout_s": 60, **kubernetes},
                "rollout": {
                    "canary_steps": [10, 50, 100],
                    "requests_per_step": 6,
                    "max_p99_latency_ms": 60000,
                },
            },
        }
    )
    serving = KubernetesServing(config, Path("."), api=cluster)  # type: ignore[arg-type]
    serving.poll_s = 0.05
    return serving


def served_stable(cluster: FakeCluster) -> set[str]:
    cluster.sync()
    return {
        p.server.routing.stable and str(p.server.routing.stable)
        for p in cluster.pods.values()
        if p.track == "stable"
    }


def test_rolling_rollouts_and_automatic_rollbacks(cluster):
    serving = backend(cluster)
    first = serving.deploy(release(1, "djia/1"))
    assert first.outcome == "deployed", first.reason
    assert serving.live_version() == 1 and served_stable(cluster) == {"1"}
    assert len(cluster.ready_pods("serving", {"branchops.io/track": "stable"})) == 2

    second = serving.deploy(release(2, "djia/2"))
    assert (second.outcome, second.before, second.after) == ("deployed", 1, 2), second.reason
    assert {c.name for c in second.checks} >= {"load", "signature", "smoke", "live"}
    assert cluster.config_state("tfserve-config", "serving")["versions"] == [2]  # the old one retired
    assert served_stable(cluster) == {"2"}

    for version, path, check in (
        (8, "djia/8", "smoke failed"),
        (6, "djia/6", "load failed"),
        (9, "djia/missing", "copy failed"),
    ):
        failed = serving.deploy(release(version, path))
        assert failed.outcome == "rolled_back" and failed.reason.startswith(check), failed.reason
        state = cluster.config_state("tfserve-config", "serving")
        assert (state["versions"], state["stable"]) == ([2], 2)
        assert served_stable(cluster) == {"2"}

    assert serving.deploy(release(2, "djia/2")).outcome == "unchanged"


def test_canary_with_istio_steps_weights_then_promotes(cluster):
    serving = backend(cluster, istio=True)
    assert serving.deploy(release(1, "djia/1")).ok
    result = serving.deploy(release(3, "djia/3", volume=None, snapshot="djia-models-run3", strategy="canary"))
    assert result.outcome == "deployed", result.reason
    assert [s["weight"] for s in result.canary_steps] == [10, 50]
    weights = [name.split(":")[1] for verb, kind, name in cluster.history if kind == "VirtualService"]
    assert weights[-3:] == ["10", "50", "0"]  # stepped, then all traffic back to the (now promoted) stable
    assert ("PersistentVolumeClaim", "tfserve-src-3") in cluster.objects  # cloned from the snapshot
    assert ("Deployment", "tfserve-canary") not in cluster.objects
    assert served_stable(cluster) == {"3"}


def test_canary_breach_removes_the_canary_and_keeps_stable(cluster):
    serving = backend(cluster)
    assert serving.deploy(release(1, "djia/1")).ok
    strict = backend(cluster)
    strict.rollout = strict.rollout.model_copy(update={"max_p99_latency_ms": 0.001})
    result = strict.deploy(release(2, "djia/2", strategy="canary"))
    assert result.outcome == "rolled_back" and result.reason.startswith("canary failed: at 10%")
    assert result.canary_steps[0]["replicas"] == 1  # 10% of 2 stable replicas, without Istio: one pod
    assert ("Deployment", "tfserve-canary") not in cluster.objects
    assert cluster.config_state("tfserve-config", "serving")["stable"] == 1 and served_stable(cluster) == {
        "1"
    }
