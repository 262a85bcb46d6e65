"""Production capture on Kubernetes: the logging proxy in the serving pods' manifests, and the backend's
read_prediction_log / read_outcomes / publish_monitoring through short-lived pods on the log volume.

The pods run in the emulated API server (k8s_emulator.py): it judges every object by the API server's
rules (tests/k8s/api_rules.py) and runs a pod of its own with its command against the emulated volume's
directory, as a kubelet would (neither a read-only mount nor the security context is enforced there).
"""

from __future__ import annotations

import json
import math

import pytest

from branchops.config import STAGES, BranchopsConfig
from branchops.errors import BranchopsError, ExternalError
from branchops.k8s.client import KubeApi
from branchops.k8s.validate import validate_object
from branchops.serving.kubernetes_backend import KubernetesServing
from branchops.serving.kubernetes_manifests import (
    PREDICTION_LOG_MOUNT,
    PROXY_PORT,
    REST_PORT,
    ObjectBuilder,
    canary_replicas,
)
from tests.k8s.api_rules import review
from tests.serving.k8s_emulator import RunningEmulator, ServingKubeEmulator

NS = "serving"
VOLUME = "prediction-log"


def config(log: dict | None = None, **kubernetes) -> BranchopsConfig:
    return BranchopsConfig.model_validate(
        {
            "approvers": {s: ["lead"] for s in STAGES},
            "serving": {"backend": "kubernetes", "model_name": "djia", "kubernetes": kubernetes},
            "monitoring": {"log": log or {}},
        }
    )


# -- the manifests ---------------------------------------------------------------------------------------


def pod_spec(deployment: dict) -> dict:
    return deployment["spec"]["template"]["spec"]


@pytest.mark.parametrize("istio", [False, True])
def test_stable_and_canary_pods_run_the_proxy_and_the_service_reaches_it(istio):
    builder = ObjectBuilder(config(istio=istio))
    stable = builder.deployment(replicas=2)
    canary = builder.deployment("canary", replicas=canary_replicas(2, 10))
    for deployment in (stable, canary):
        spec = pod_spec(deployment)
        assert [c["name"] for c in spec["containers"]] == ["tfserving", "log-proxy"]
        proxy = spec["containers"][1]
        assert proxy["image"] == builder.k8s.proxy_image
        assert f"--upstream=http://127.0.0.1:{REST_PORT}" in proxy["args"]
        assert f"--port={PROXY_PORT}" in proxy["args"]
        assert f"--prediction-log={PREDICTION_LOG_MOUNT}" in proxy["args"]
        assert "--model-name=djia" in proxy["args"]
        # the log volume is mounted in the proxy alone
        claims = {
            v["name"]: v["persistentVolumeClaim"]["claimName"]
            for v in spec["volumes"]
            if "persistentVolumeClaim" in v
        }
        assert claims["prediction-log"] == VOLUME
        assert [m["name"] for m in proxy["volumeMounts"]] == ["prediction-log"]
        assert "prediction-log" not in [m["name"] for m in spec["containers"][0]["volumeMounts"]]
        # Prometheus scrapes the proxy, which answers TF Serving's metrics and the monitoring gauges
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(PROXY_PORT)
    service = builder.service()
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    proxy_ports = {p["name"]: p["containerPort"] for p in pod_spec(stable)["containers"][1]["ports"]}
    tf_ports = {p["name"]: p["containerPort"] for p in pod_spec(stable)["containers"][0]["ports"]}
    # REST to the proxy's port (by its name), gRPC still to TF Serving
    assert proxy_ports[ports["http"]["targetPort"]] == PROXY_PORT
    assert ports["http"]["port"] == REST_PORT
    assert tf_ports[ports["grpc"]["targetPort"]] == 8500
    # a port name is unique in a pod (ContainerPort.name: "unique within the pod")
    names = [p["name"] for c in pod_spec(stable)["containers"] for p in c.get("ports", [])]
    assert len(names) == len(set(names))


def test_every_object_with_the_proxy_is_strictly_valid_and_the_api_server_takes_it():
    builder = ObjectBuilder(config(istio=True))
    objects = builder.base_objects([1], {"stable": 1}, {"versions": [1], "stable": 1})
    objects += [builder.deployment("canary", replicas=1)]
    kinds = [o["kind"] for o in objects]
    assert kinds.count("PersistentVolumeClaim") == 2
    for obj in objects:
        istio = obj["apiVersion"].startswith("networking.istio.io")
        validate_object(obj, allow_unchecked=istio)
        verdict = review(obj)
        assert (verdict.status, verdict.warnings) == (None, []), obj["kind"]
    volume = builder.prediction_log_volume()
    assert volume["metadata"]["name"] == VOLUME
    assert volume["spec"]["accessModes"] == ["ReadWriteMany"]  # every serving pod writes to it
    assert volume["spec"]["resources"]["requests"]["storage"] == "5Gi"


def test_the_proxy_container_meets_the_restricted_pod_security_standard():
    """The container controls of the restricted profile, as Kubernetes' "Pod Security Standards" page
    lists them: no privilege escalation, every capability dropped, non-root, a RuntimeDefault or
    Localhost seccomp profile."""
    spec = pod_spec(ObjectBuilder(config()).deployment(replicas=1))
    proxy = spec["containers"][1]
    context = proxy["securityContext"]
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"] and not context["capabilities"].get("add")
    assert context["runAsNonRoot"] is True and context.get("runAsUser", 1) != 0
    assert context["seccompProfile"]["type"] in ("RuntimeDefault", "Localhost")
    assert not context.get("privileged") and "hostPort" not in proxy["ports"][0]


def test_without_logging_no_proxy_no_volume_and_the_service_reaches_tf_serving():
    builder = ObjectBuilder(config(log={"enabled": False}))
    assert [c["name"] for c in pod_spec(builder.deployment(replicas=1))["containers"]] == ["tfserving"]
    assert {p["name"]: p["targetPort"] for p in builder.service()["spec"]["ports"]}["http"] == "http"
    kinds = [o["kind"] for o in builder.base_objects([1], {"stable": 1})]
    assert kinds.count("PersistentVolumeClaim") == 1


def test_the_log_settings_reach_the_proxy():
    log = {
        "sample_rate": 0.25,
        "max_file_bytes": 65536,
        "max_files": 3,
        "volume": "djia-log",
        "volume_size": "2Gi",
    }
    builder = ObjectBuilder(config(log=log))
    spec = pod_spec(builder.deployment(replicas=1))
    args = spec["containers"][1]["args"]
    assert {"--log-sample-rate=0.25", "--log-max-file-bytes=65536", "--log-max-files=3"} <= set(args)
    assert {"name": "prediction-log", "persistentVolumeClaim": {"claimName": "djia-log"}} in spec["volumes"]
    assert builder.prediction_log_volume()["spec"]["resources"]["requests"]["storage"] == "2Gi"


# -- the backend, through pods ---------------------------------------------------------------------------


@pytest.fixture
def kube():
    emulator = ServingKubeEmulator()
    with RunningEmulator(emulator) as running:
        yield running
    assert emulator.rejected == [], f"the API server refused invalid objects: {emulator.rejected}"
    assert emulator.warnings == [], f"the API server dropped unknown fields: {emulator.warnings}"


@pytest.fixture
def make_serving(kube, tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(kube.kubeconfig(tmp_path / "kubeconfig", namespace=NS)))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)

    def make(log: dict | None = None, create_volume: bool = True, **kubernetes) -> KubernetesServing:
        serving = KubernetesServing(config(log, **kubernetes), tmp_path / "state", api=KubeApi())
        serving.poll_s = 0.01
        if create_volume:
            serving.api.apply(serving.objects.prediction_log_volume())
        return serving

    return make


def own_pods(kube) -> list[dict]:
    return [o for (r, ns, _), o in kube.emulator.objects.items() if r == "pods" and ns == NS]


def test_read_prediction_log_returns_every_log_file_as_written(kube, make_serving):
    serving = make_serving()
    folder = kube.emulator.volume_dir(NS, VOLUME)
    line = json.dumps({"time": "2026-11-29T22:59:01.123456Z", "request_id": "AAPL/2016-03-14"}) + "\n"
    written = {
        "predictions-20261129T225901123456-1.jsonl": (line * 3).encode(),
        # another pod's file, its last line still being written
        "predictions-20261129T230000000001-1.jsonl": line.encode() + b'{"time": "2026-11-29T23:0',
        "predictions-20261129T230100000000-7.jsonl": b"",
    }
    for name, data in written.items():
        (folder / name).write_bytes(data)
    (folder / "monitor.json").write_text("{}")  # not the log
    (folder / "notes.txt").write_text("not the log")
    (folder / "outcomes").mkdir()
    (folder / "outcomes" / "predictions-x.jsonl").write_text("in a subfolder: not the log")

    # the line still being written is left for the next check
    expected = {**written, "predictions-20261129T230000000001-1.jsonl": line.encode()}
    assert serving.read_prediction_log() == expected
    assert own_pods(kube) == []  # the reader pods are gone
    created = [b for b in kube.emulator.received if b.get("kind") == "Pod"]
    assert len(created) == 2  # one lists, one reads
    for pod in created:  # a reader never writes
        assert pod["spec"]["volumes"][0]["persistentVolumeClaim"] == {"claimName": VOLUME, "readOnly": True}


def test_a_large_log_is_read_whole(kube, make_serving):
    serving = make_serving()
    folder = kube.emulator.volume_dir(NS, VOLUME)
    data = "".join(
        json.dumps({"time": f"2026-11-29T22:59:{i % 60:02d}.{i:06d}Z", "inputs": {"x": [[i * 0.001] * 8]}})
        + "\n"
        for i in range(20000)
    ).encode()
    (folder / "predictions-20261129T225901123456-1.jsonl").write_bytes(data)
    assert serving.read_prediction_log() == {"predictions-20261129T225901123456-1.jsonl": data}


def random_lines(count: int, seed: int) -> bytes:
    """Log lines that do not compress (the kubelet's limit is on what the reader prints)."""
    import random

    draw = random.Random(seed)
    return b"".join(json.dumps({"x": draw.getrandbits(128)}).encode() + b"\n" for _ in range(count))


def test_a_log_larger_than_the_kubelet_keeps_is_read_whole_in_several_pods(kube, make_serving, monkeypatch):
    """The kubelet keeps only the newest containerLogMaxSize of a pod's log: a cut log is noticed and read
    again in smaller pieces, never taken as a shorter log."""
    from branchops.serving import kubernetes_backend

    monkeypatch.setattr(kubernetes_backend, "READ_BATCH_BYTES", 64 * 1024)
    monkeypatch.setattr(kubernetes_backend, "MIN_READ_BYTES", 1024)
    kube.emulator.container_log_max_bytes = 20 * 1024  # a pod of 64 KB of such files prints more
    serving = make_serving()
    folder = kube.emulator.volume_dir(NS, VOLUME)
    written = {
        f"predictions-2026112{i}T000000000000-1.jsonl": random_lines(2000 + 700 * i, i) for i in range(3)
    }
    for name, data in written.items():
        (folder / name).write_bytes(data)
    assert serving.read_prediction_log() == written
    first_try = 1 + math.ceil(sum(len(d) for d in written.values()) / (64 * 1024))  # a listing, then batches
    assert len([b for b in kube.emulator.received if b.get("kind") == "Pod"]) > first_try  # some read again
    assert own_pods(kube) == []


def test_a_kubelet_keeping_almost_nothing_is_an_error_not_a_shorter_log(kube, make_serving, monkeypatch):
    from branchops.serving import kubernetes_backend

    monkeypatch.setattr(kubernetes_backend, "MIN_READ_BYTES", 4096)
    kube.emulator.container_log_max_bytes = 600
    serving = make_serving()
    (kube.emulator.volume_dir(NS, VOLUME) / "predictions-20261120T000000000000-1.jsonl").write_bytes(
        random_lines(300, 1)
    )
    with pytest.raises(ExternalError, match="cut short.*containerLogMaxSize is too small"):
        serving.read_prediction_log()
    assert own_pods(kube) == []


def test_no_log_yet_is_an_empty_log(kube, make_serving):
    assert make_serving().read_prediction_log() == {}


def test_read_outcomes_reads_the_outcomes_folder_on_the_log_volume(kube, make_serving):
    serving = make_serving()
    assert serving.read_outcomes() == {}  # no folder yet
    folder = kube.emulator.volume_dir(NS, VOLUME) / "outcomes"
    folder.mkdir()
    (folder / "2016-03.csv").write_text("request_id,label\nAAPL/2016-03-14,1\n")
    (folder / "no-final-newline.csv").write_text("request_id,label\nAAPL/2016-03-16,1")
    (folder / "README").write_text("not an outcome file")
    (folder / "late.jsonl").write_text('{"request_id": "AAPL/2016-03-15", "row": 0, "label": 0}\n')
    assert serving.read_outcomes() == {
        "2016-03.csv": b"request_id,label\nAAPL/2016-03-14,1\n",
        "late.jsonl": b'{"request_id": "AAPL/2016-03-15", "row": 0, "label": 0}\n',
        "no-final-newline.csv": b"request_id,label\nAAPL/2016-03-16,1",  # a file someone wrote, whole
    }


def test_publish_monitoring_writes_monitor_json_where_the_proxies_read_it(kube, make_serving):
    serving = make_serving()
    payload = {"time": "2026-11-29T23:00:00Z", "model": "djia", "version": 1, "rows": 250, "drifted": True}
    serving.publish_monitoring(payload)
    target = kube.emulator.volume_dir(NS, VOLUME) / "monitor.json"
    assert json.loads(target.read_text()) == payload
    serving.publish_monitoring({**payload, "drifted": False, "rows": 300})
    assert json.loads(target.read_text())["rows"] == 300
    assert [p.name for p in target.parent.iterdir()] == ["monitor.json"]  # no temporary file left
    writers = [b for b in kube.emulator.received if b.get("kind") == "Pod"]
    assert writers[0]["spec"]["volumes"][0]["persistentVolumeClaim"] == {
        "claimName": VOLUME,
        "readOnly": False,
    }
    assert own_pods(kube) == []


def test_a_result_the_proxies_could_not_expose_is_refused_before_any_pod(kube, make_serving):
    serving = make_serving()
    with pytest.raises(BranchopsError, match="'drifted' must be true or false"):
        serving.publish_monitoring({"time": "2026-11-29T23:00:00Z", "model": "djia", "version": 1})
    assert not [b for b in kube.emulator.received if b.get("kind") == "Pod"]
    assert not (kube.emulator.volume_dir(NS, VOLUME) / "monitor.json").exists()


def test_a_missing_log_volume_is_said_after_the_timeout(kube, make_serving):
    serving = make_serving(create_volume=False, rollout_timeout_s=0.5)
    with pytest.raises(ExternalError, match=f"did not finish.*PersistentVolumeClaim {VOLUME}"):
        serving.read_prediction_log()
    assert own_pods(kube) == []


def test_without_logging_nothing_is_read_or_written(kube, make_serving):
    serving = make_serving(log={"enabled": False}, create_volume=False)
    assert serving.read_prediction_log() == {} and serving.read_outcomes() == {}
    serving.publish_monitoring({"model": "djia"})
    assert not [b for b in kube.emulator.received if b.get("kind") == "Pod"]
