"""The monitor job runs as the CI agents' service account (jenkins/agent-pod.yaml): the serving Role in
jenkins/rbac/serving.yaml must let it read the prediction-log volume in the serving namespace the way the
Kubernetes backends read a volume, with a short-lived pod mounting the PVC whose log carries the files
(src/branchops/storage/trident.py's reader pod), against the emulated API server."""

from __future__ import annotations

from branchops.storage.trident import TridentStorage
from tests.storage.conftest import kube, kubeconfig  # noqa: F401 (fixtures)
from tests.storage.test_rbac_manifests import allowed, find

SERVING_NS = "serving"


def test_the_serving_role_lets_the_monitor_read_the_prediction_log_volume(kube, kubeconfig) -> None:  # noqa: F811
    storage = TridentStorage(
        namespace=SERVING_NS,
        storage_class="ontap-nas",
        snapshot_class="csi-snapclass",
        poll_interval_s=0.0,
        sleep=lambda _: None,
    )
    volume = storage.ensure_volume("prediction-log")
    before = set(kube.emulator.requests)
    storage.read_folder(volume, "outcomes")  # a reader pod: create, get, its log, delete

    role = find("Role", "branchops-serving", SERVING_NS)
    reader_calls = set(kube.emulator.requests) - before
    assert {("create", "", "pods"), ("delete", "", "pods")} <= reader_calls
    missing = [call for call in sorted(reader_calls) if not allowed(role, *call)]
    assert missing == [], f"jenkins/rbac/serving.yaml does not grant: {missing}"
    binding = find("RoleBinding", "branchops-ci-serving", SERVING_NS)
    assert {"kind": "ServiceAccount", "name": "branchops-ci", "namespace": "jenkins"} in binding["subjects"]
