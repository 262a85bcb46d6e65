"""The Kubernetes rollout through the real ``KubeApi`` client against the emulated API server.

No API server or TF Serving binary runs here. The emulator (k8s_emulator.py) judges every object by the
API server's own rules, runs the Deployments' pods and the copy Jobs, and plays TF Serving in each pod as
server_core.cc behaves: a pod reads ``models.config`` only after the kubelet has synced the ConfigMap
into its volume and at its poll interval, labels before loads, and answers model status and labels from
what it read. This test answers the rest of TF Serving's REST API for a pod (metadata, ``:predict``)
with a real branchops model server over the same SavedModels, on the version that pod would use: the one
asked for, the label's, or, for a request naming neither, the highest version the pod has loaded.
A logic test, not an integration test: it checks our rollout decisions, not Kubernetes."""

from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path

import pytest

from branchops.config import STAGES, BranchopsConfig
from branchops.k8s.client import KubeApi
from branchops.serving.kubernetes_backend import KubernetesServing
from branchops.serving.kubernetes_manifests import METADATA_MARKER
from branchops.serving.release import Release
from branchops.serving.server import ModelServer, create_app
from tests.serving.k8s_emulator import RunningEmulator, ServingKubeEmulator
from tests.serving.model_factory import SAMPLE

NS = "serving"
MODEL = "djia"
TF_SERVING_CALL = re.compile(
    rf"^/v1/models/{MODEL}(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?(?P<call>/metadata|:predict)$"
)


class TfServingApi:
    """metadata and :predict for the emulator's pods, answered on the version the pod would use."""

    def __init__(self, emulator: ServingKubeEmulator, models) -> None:
        self.emulator = emulator
        self.server = ModelServer(MODEL, models)
        self.app = create_app(self.server).test_client()
        self.unlabelled: list[tuple[str, int]] = []  # (pod's track, version) of requests naming none

    def __call__(self, pod: dict, method: str, path: str, body: bytes):
        match = TF_SERVING_CALL.match(path)
        replica = self.emulator.replicas.get(pod["metadata"]["uid"])
        if not match or replica is None:
            return None
        if match["label"] is not None:
            if match["label"] not in replica.labels:
                return 404, {"error": f"Unrecognized servable version label: {match['label']}"}
            version = replica.labels[match["label"]]
        elif match["version"] is not None:
            version = int(match["version"])
        else:  # TF Serving: the highest version it has loaded
            version = max(replica.available, default=0)
            self.unlabelled.append((pod["metadata"]["labels"]["branchops.io/track"], version))
        if version not in replica.available:
            return 404, {"error": f"Servable not found for request: Specific({MODEL}, {version})"}
        self.server.load(version)
        for thread in self.server._loaders:
            thread.join(120)
        answer = self.app.open(
            f"/v1/models/{MODEL}/versions/{version}{match['call']}",
            method=method,
            data=body,
            headers={"Content-Type": "application/json"},
            environ_base={"REMOTE_ADDR": "10.0.0.9"},
        )
        return answer.status_code, answer.get_json()


@pytest.fixture
def cluster(models, tmp_path, monkeypatch):
    """The emulated cluster (kubelet sync and TF Serving's poll take real, short time), the serving volume's
    SavedModels, and the copy Jobs' outcomes: each prints its version's metadata after the marker."""
    volume = tmp_path / "serving-volume" / MODEL
    outcomes = {}
    for key, version in (("v1", 1), ("v2", 2), ("v3", 3), ("mismatch", 8), ("wide", 4)):
        shutil.copytree(models[key], volume / str(version))
        meta = (volume / str(version) / "assets.extra" / "branchops_model.json").read_text()
        outcomes[f"tfserve-copy-v{version}"] = (True, f"copied\n{METADATA_MARKER}\n{meta}")
    outcomes["tfserve-copy-v9"] = (False, "cp: can't stat '/source/djia/missing/.': No such file")
    emulator = ServingKubeEmulator(kubelet_sync_s=0.4, config_poll_s=0.1, job_outcomes=outcomes)
    emulator.proxy_handler = TfServingApi(emulator, volume)
    with RunningEmulator(emulator) as running:
        monkeypatch.setenv("KUBECONFIG", str(running.kubeconfig(tmp_path / "kubeconfig", namespace=NS)))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        yield emulator
    assert emulator.rejected == [], f"the API server refused invalid objects: {emulator.rejected}"
    assert emulator.warnings == [], f"the API server dropped unknown fields: {emulator.warnings}"


def backend(**kubernetes) -> KubernetesServing:
    config = BranchopsConfig.model_validate(
        {
            "approvers": {s: ["lead"] for s in STAGES},
            "serving": {
                "backend": "kubernetes",
                "model_name": MODEL,
                "kubernetes": {"replicas": 2, "rollout_timeout_s": 60, **kubernetes},
                "rollout": {
                    "canary_steps": [10, 50, 100],
                    "requests_per_step": 6,
                    "min_step_seconds": 0.3,
                    "max_p99_latency_ms": 60000,
                },
            },
        }
    )
    api = KubeApi()  # from KUBECONFIG, as in production
    api.poll_s = 0.05
    serving = KubernetesServing(config, Path("."), api=api)
    serving.poll_s = 0.05
    serving.label_timeout_s = 20  # the emulator's kubelet sync and poll, with room for a busy machine
    return serving


def release(version: int, path: str | None = None, strategy: str = "rolling", **extra) -> Release:
    return Release.model_validate(
        {
            "model": MODEL,
            "version": version,
            "strategy": strategy,
            "source": {"volume": "djia-models", "path": path or f"{MODEL}/{version}"},
            **extra,
        }
    )


def spy(serving: KubernetesServing) -> list[dict]:
    """Every object the backend sends from now on, as sent."""
    applied: list[dict] = []
    send = serving.api.apply
    serving.api.apply = lambda obj: (applied.append(copy.deepcopy(obj)), send(obj))[1]
    return applied


def stable_policies(cluster: ServingKubeEmulator) -> list[str]:
    """Every models.config the stable pods were given, in order."""
    return [text for _, text in cluster.config_history.get((NS, "tfserve-config"), [])]


def versions_in(text: str) -> set[int]:
    return {int(v) for v in re.findall(r"versions: (\d+)", text)}


def test_rolling_rollout_waits_for_tf_serving_to_report_the_moved_label(cluster):
    serving = backend()
    first = serving.deploy(release(1))
    assert first.outcome == "deployed", first.reason
    second = serving.deploy(release(2))
    # The ConfigMap reaches the pods only after the kubelet's sync: predicting through /labels/stable at
    # once would find version 1 there (or no label) and roll back a good release.
    assert (second.outcome, second.before, second.after) == ("deployed", 1, 2), second.reason
    assert {c.name for c in second.checks} >= {"copy", "contract", "load", "signature", "smoke", "live"}
    status = serving.status()  # what TF Serving reports on the pods, not what the ConfigMap asks for
    assert (status.stable, status.versions[2]) == (2, "AVAILABLE")
    assert serving.live_version() == 2
    assert versions_in(stable_policies(cluster)[-1]) == {2}  # the old version retired
    assert serving.deploy(release(2)).outcome == "unchanged"


def test_a_failed_release_never_reaches_the_stable_pods_and_is_rolled_back(cluster):
    serving = backend()
    assert serving.deploy(release(1)).ok
    for version, path, check in ((8, None, "smoke failed"), (9, "djia/missing", "copy failed")):
        failed = serving.deploy(release(version, path))
        assert failed.outcome == "rolled_back" and failed.reason.startswith(check), failed.reason
        # TF Serving answers requests naming no version with the highest it loaded: the stable pods'
        # version policy never named the unchecked version.
        assert all(version not in versions_in(text) for text in stable_policies(cluster))
        assert serving.status().stable == 1
        assert ("deployments", NS, "tfserve-canary") not in cluster.objects
    # A rerun of the same release copies again: the old Job is gone before the new one is created.
    again = serving.deploy(release(8))
    assert again.reason.startswith("smoke failed")
    assert not [r for r in cluster.requests if r[0] == "patch" and r[2] == "jobs"]


def test_a_release_that_breaks_the_clients_is_refused_before_anything_loads(cluster):
    serving = backend()
    assert serving.deploy(release(1)).ok
    applied = spy(serving)
    refused = serving.deploy(release(4))
    assert refused.outcome == "rolled_back"
    assert refused.reason.startswith("contract failed"), refused.reason
    assert "clients send [-1, 4]" in refused.reason
    assert ("deployments", NS, "tfserve-canary") not in cluster.objects
    assert not [o for o in applied if o["kind"] == "Deployment"]  # no pod was started for it
    declared = serving.deploy(release(4, breaking_change="10-day window: 8 inputs"))
    assert declared.outcome == "deployed", declared.reason


def test_canary_with_istio_steps_weights_then_promotes(cluster):
    serving = backend(istio=True)
    assert serving.deploy(release(1)).ok
    applied = spy(serving)
    result = serving.deploy(release(3, strategy="canary"))
    assert result.outcome == "deployed", result.reason
    assert [s["weight"] for s in result.canary_steps] == [10, 50]
    assert all(s["ok"] and s["seconds"] >= 0.3 and s["requests"] >= 6 for s in result.canary_steps)
    assert all("Istio" in s["routing"] for s in result.canary_steps)
    weights = [o["spec"]["http"][0]["route"][1]["weight"] for o in applied if o["kind"] == "VirtualService"]
    # None while it is checked, stepped, then all back to the (now promoted) stable.
    assert (weights[0], [w for w in weights if w], weights[-1]) == (0, [10, 50], 0)
    assert ("deployments", NS, "tfserve-canary") not in cluster.objects
    assert serving.status().stable == 3
    # Requests naming no version that stable pods answered, during the steps: all by the serving version.
    assert {v for track, v in cluster.proxy_handler.unlabelled if track == "stable"} == {1}


def test_canary_breach_removes_the_canary_and_keeps_stable(cluster):
    serving = backend()
    assert serving.deploy(release(1)).ok
    strict = backend()
    strict.rollout = strict.rollout.model_copy(update={"max_p99_latency_ms": 0.001})
    result = strict.deploy(release(2, strategy="canary"))
    assert result.outcome == "rolled_back" and result.reason.startswith("canary failed: at 10%"), (
        result.reason
    )
    assert result.canary_steps[0]["routing"].startswith("probes only")  # no Istio: no ordinary traffic
    assert ("deployments", NS, "tfserve-canary") not in cluster.objects
    assert all(2 not in versions_in(text) for text in stable_policies(cluster))
    assert serving.status().stable == 1


def test_an_interrupted_canary_leaves_no_canary_deployment_and_keeps_stable(cluster, monkeypatch):
    serving = backend(istio=True)
    assert serving.deploy(release(1)).ok
    applied = spy(serving)
    steps = 0

    def interrupt_at_the_second_step(original):
        def step(self, weight):
            nonlocal steps
            steps += 1
            if steps == 2:  # Ctrl-C while 10% of ordinary traffic goes to the canary
                raise KeyboardInterrupt
            return original(self, weight)

        return step

    from branchops.serving.kubernetes_backend import _KubernetesTracks

    monkeypatch.setattr(
        _KubernetesTracks,
        "set_canary_weight",
        interrupt_at_the_second_step(_KubernetesTracks.set_canary_weight),
    )
    with pytest.raises(KeyboardInterrupt):
        serving.deploy(release(3, strategy="canary"))
    assert ("deployments", NS, "tfserve-canary") not in cluster.objects
    weights = [o["spec"]["http"][0]["route"][1]["weight"] for o in applied if o["kind"] == "VirtualService"]
    assert 10 in weights and weights[-1] == 0  # no share of ordinary traffic left on the canary
    assert all(3 not in versions_in(text) for text in stable_policies(cluster))
    assert serving.status().stable == 1


def test_serve_and_predict_on_kubernetes_say_what_they_can_do(cluster, tmp_path):
    from tests.foundation.conftest import MINIMAL_CONFIG, make_project

    assert backend().deploy(release(1)).ok
    project = make_project(
        tmp_path,
        MINIMAL_CONFIG
        + f"serving:\n  backend: kubernetes\n  model_name: {MODEL}\n  kubernetes: {{replicas: 2}}\n",
    )
    for command in ("start", "stop"):
        refused = project.run("serve", command, expect=2)
        assert f"'serve {command}'" in refused.output and "serving.backend 'kubernetes'" in refused.output
    # The live version's export sample, read from the cluster, predicted through the Service.
    answered = project.run("predict", "--sample", "--json")
    document = json.loads(answered.output)
    assert len(document["response"]["predictions"]) == len(SAMPLE)
    assert document["expected_at_export"]["direction"] == [
        p["direction"] for p in document["response"]["predictions"]
    ]


def test_the_shipped_service_is_the_one_the_backend_applies(cluster):
    import yaml

    from branchops.serving.kubernetes_manifests import render_manifests

    serving = backend()
    applied = spy(serving)
    assert serving.deploy(release(1)).ok
    sent = [o for o in applied if o["kind"] == "Service"]
    shipped = [
        o
        for o in yaml.safe_load_all(render_manifests(serving.config)["tfserve.yaml"])
        if o["kind"] == "Service"
    ]
    # Without Istio the canary pods must not be the Service's endpoints: the manifests say the same.
    assert sent and shipped == sent[-1:]
    assert shipped[0]["spec"]["selector"]["branchops.io/track"] == "stable"


def ready_snapshot_for(cluster: ServingKubeEmulator, name: str) -> None:
    """A model snapshot in the serving namespace as Trident leaves it: ready, restoreSize 20Gi."""
    from tests.serving.test_kubernetes_api import ready_snapshot

    ready_snapshot(cluster, NS, name, "20Gi")


def snapshot_release(version: int, snapshot: str) -> Release:
    return Release.model_validate(
        {
            "model": MODEL,
            "version": version,
            "strategy": "rolling",
            "source": {"snapshot": snapshot, "path": f"{MODEL}/{version}"},
        }
    )


def test_a_release_from_a_snapshot_larger_than_the_serving_volume_gets_a_clone_that_binds(cluster):
    serving = backend()  # serving_volume_size: 10Gi
    assert serving.k8s.serving_volume_size == "10Gi"
    ready_snapshot_for(cluster, "djia-models-run1")  # restoreSize 20Gi
    result = serving.deploy(snapshot_release(1, "djia-models-run1"))
    assert result.outcome == "deployed", result.reason
    # A claim requesting less than the snapshot's restoreSize would stay Pending and the copy never run.
    claim = cluster.get("persistentvolumeclaims", NS, "tfserve-src-1")
    assert claim["spec"]["resources"]["requests"]["storage"] == "20Gi"
    assert claim["spec"]["dataSource"]["name"] == "djia-models-run1"
    assert (claim["status"]["phase"], claim["status"]["capacity"]["storage"]) == ("Bound", "20Gi")


def test_the_serving_role_grants_every_call_the_rollout_makes(cluster):
    """jenkins/rbac/serving.yaml against what KubeApi really sends: a release from a snapshot (its
    restoreSize read), a canary with Istio, a failed release rolled back, the status."""
    from tests.storage.test_rbac_manifests import allowed, find

    serving = backend(istio=True)
    ready_snapshot_for(cluster, "djia-models-run1")
    assert serving.deploy(snapshot_release(1, "djia-models-run1")).ok
    assert serving.deploy(release(2, strategy="canary")).ok
    assert serving.deploy(release(8)).outcome == "rolled_back"
    serving.status()

    role = find("Role", "branchops-serving", NS)
    # The emulator records a proxied call as "proxy" (GET for status, POST for :predict) and a
    # subresource read as "status" / "log": in RBAC's terms these are get and create, and get.
    rbac_verbs = {"proxy": ("get", "create"), "status": ("get",), "log": ("get",)}
    used = set(cluster.requests)
    missing = [
        (verb, group, resource)
        for call_verb, group, resource in sorted(used)
        for verb in rbac_verbs.get(call_verb, (call_verb,))
        if not allowed(role, verb, group, resource)
    ]
    assert ("get", "snapshot.storage.k8s.io", "volumesnapshots") in used
    assert missing == [], f"jenkins/rbac/serving.yaml does not grant: {missing}"
