"""The Trident backend's logic, through the official kubernetes client, against an emulated API server.

This is not an integration test: no Kubernetes, Trident or snapshot controller runs here. The emulator
(storage_k8s_emulator.py) follows the API's documented semantics (201/404/409, resourceVersion,
asynchronous readyToUse) and refuses any object that fails the official schemas.
"""

from __future__ import annotations

import logging

import pytest

from branchops.config import BranchopsConfig, StorageTrident
from branchops.errors import ConfigError, ExternalError
from branchops.k8s.validate import InvalidObject
from branchops.storage import LABEL_COMMIT, LABEL_RUN, lineage_labels, make_storage
from branchops.storage.trident import TridentStorage, quantity_bytes

COMMIT = "3f9a1c0d5e7b2a4c6d8e0f1a2b3c4d5e6f7a8b9c"
RUN = "20260101T000000Z-3f9a1c0"
NS = "kubeflow-user"
PVC = "persistentvolumeclaims"
VS = "volumesnapshots"


def no_sleep(_: float) -> None:
    """The emulator advances a snapshot per read, so the poll loop needs no real wait."""


@pytest.fixture
def trident(kubeconfig) -> TridentStorage:
    section = StorageTrident(
        namespace=NS,
        storage_class="ontap-nas",
        snapshot_class="trident-snapclass",
        size="5Gi",
        access_mode="ReadWriteMany",
        ready_timeout_s=60,
    )
    return TridentStorage.from_config(section, poll_interval_s=0.01, sleep=no_sleep)


def test_make_storage_builds_the_trident_backend_from_kubeconfig(kubeconfig, kube, tmp_path):
    config = BranchopsConfig.model_validate(
        {
            "approvers": {
                s: ["lead"] for s in ("build-components", "kf-pipeline", "training", "deploy-model")
            },
            "storage": {"backend": "trident", "trident": {"namespace": NS}},
        }
    )
    storage = make_storage(config, tmp_path)
    assert isinstance(storage, TridentStorage)
    storage.ensure_volume("djia-data")
    assert kube.emulator.get(PVC, NS, "djia-data") is not None  # the client reached our server


def test_ensure_volume_creates_the_configured_pvc_once(trident, kube):
    volume = trident.ensure_volume("djia-data", {"app": "djia"})
    assert volume.name == "djia-data" and volume.path is None and volume.size == "5Gi"
    pvc = kube.emulator.get(PVC, NS, "djia-data")
    assert pvc["spec"] == {
        "accessModes": ["ReadWriteMany"],
        "storageClassName": "ontap-nas",
        "resources": {"requests": {"storage": "5Gi"}},
    }
    assert pvc["metadata"]["labels"] == {"app": "djia", "app.kubernetes.io/managed-by": "branchops"}

    again = trident.ensure_volume("djia-data", {"app": "other"})
    assert again.labels["app"] == "djia"
    assert kube.emulator.count("create", PVC) == 1
    assert trident.get_volume("absent") is None


def test_a_concurrent_create_409_reads_the_existing_pvc(trident, kube):
    trident.ensure_volume("djia-data")
    # Someone else created it between our read and our create: the read says 404, the create 409.
    kube.emulator.fail_next("GET", PVC, 404, "NotFound")
    volume = trident.ensure_volume("djia-data")
    assert volume.name == "djia-data"
    assert kube.emulator.count("create", PVC) == 2  # the second create got 409 AlreadyExists
    assert len([o for o in kube.emulator.objects if o[0] == PVC]) == 1


def test_snapshot_is_labelled_and_waits_for_ready_to_use(trident, kube, caplog):
    trident.ensure_volume("djia-data")
    kube.emulator.ready_after_polls = 4
    with caplog.at_level(logging.INFO, logger="branchops.storage.trident"):
        snap = trident.snapshot("djia-data", "djia-data-run1", lineage_labels(COMMIT, RUN))
    assert snap.ready and snap.volume == "djia-data" and snap.path is None
    assert snap.labels[LABEL_COMMIT] == COMMIT and snap.labels[LABEL_RUN] == RUN
    obj = kube.emulator.get(VS, NS, "djia-data-run1")
    assert obj["spec"] == {
        "volumeSnapshotClassName": "trident-snapclass",
        "source": {"persistentVolumeClaimName": "djia-data"},
    }
    assert obj["status"]["readyToUse"] is True
    assert kube.emulator.polls[(NS, "djia-data-run1")] == 4
    assert "waiting for VolumeSnapshot kubeflow-user/djia-data-run1" in caplog.text
    assert "is ready to use" in caplog.text


def test_snapshot_is_idempotent_and_refuses_another_source(trident, kube):
    trident.ensure_volume("djia-data")
    trident.ensure_volume("djia-models")
    first = trident.snapshot("djia-data", "snap-a", {})
    again = trident.snapshot("djia-data", "snap-a", {})
    assert again.name == first.name and again.ready
    assert kube.emulator.count("create", VS) == 1
    with pytest.raises(ConfigError, match="already exists and was taken from volume 'djia-data'"):
        trident.snapshot("djia-models", "snap-a", {})


def test_snapshot_of_a_missing_pvc_is_refused_before_anything_is_created(trident, kube):
    with pytest.raises(ConfigError, match="no PersistentVolumeClaim kubeflow-user/absent"):
        trident.snapshot("absent", "s1", {})
    assert kube.emulator.count("create", VS) == 0


def test_waiting_times_out_with_a_clear_message(trident, kube):
    trident.ensure_volume("djia-data")
    kube.emulator.never_ready = True
    slow = TridentStorage(
        namespace=NS,
        storage_class="ontap-nas",
        snapshot_class="trident-snapclass",
        ready_timeout_s=0.3,
        poll_interval_s=0.02,
        api_client=trident.api_client,
    )
    with pytest.raises(ExternalError, match="stuck not ready to use after 0s.*check the snapshot controller"):
        slow.snapshot("djia-data", "stuck", {})


def test_waiting_reports_the_snapshot_controller_error(trident, kube):
    # A VolumeSnapshot of a PVC that does not exist (made by someone else): the controller reports why.
    kube.emulator.objects[(VS, NS, "orphan")] = {
        "apiVersion": "snapshot.storage.k8s.io/v1",
        "kind": "VolumeSnapshot",
        "metadata": {"name": "orphan", "namespace": NS, "uid": "u1", "resourceVersion": "1"},
        "spec": {"source": {"persistentVolumeClaimName": "gone"}},
    }
    slow = TridentStorage(
        namespace=NS,
        storage_class="ontap-nas",
        snapshot_class="trident-snapclass",
        ready_timeout_s=0.2,
        poll_interval_s=0.02,
        api_client=trident.api_client,
    )
    with pytest.raises(
        ExternalError, match=r'controller reports: .*persistentvolumeclaim \\"gone\\" not found'
    ):
        slow.snapshot("gone", "orphan", {})


def test_clone_is_a_pvc_from_the_snapshot_at_least_restore_size(trident, kube):
    trident.ensure_volume("djia-data")
    trident.snapshot("djia-data", "golden", {})
    kube.emulator.get(VS, NS, "golden")["status"]["restoreSize"] = "8Gi"  # bigger than the configured 5Gi
    volume = trident.clone("golden", "djia-data-repro", {"purpose": "reproduce"})
    pvc = kube.emulator.get(PVC, NS, "djia-data-repro")
    assert pvc["spec"]["dataSource"] == {
        "apiGroup": "snapshot.storage.k8s.io",
        "kind": "VolumeSnapshot",
        "name": "golden",
    }
    assert pvc["spec"]["resources"]["requests"]["storage"] == "8Gi" and volume.size == "8Gi"
    assert volume.labels["branchops.io/cloned-from"] == "golden"

    assert trident.clone("golden", "djia-data-repro").name == "djia-data-repro"
    assert kube.emulator.count("create", PVC) == 2
    with pytest.raises(ConfigError, match="was not cloned from snapshot 'golden'"):
        trident.clone("golden", "djia-data")
    with pytest.raises(ConfigError, match="no VolumeSnapshot kubeflow-user/missing"):
        trident.clone("missing", "whatever")


def test_list_and_delete(trident, kube):
    trident.ensure_volume("djia-data")
    trident.ensure_volume("djia-models")
    trident.snapshot("djia-data", "d1", {})
    trident.snapshot("djia-models", "m1", {})
    # A VolumeSnapshot someone else made in the namespace is not ours to list.
    kube.emulator.objects[(VS, NS, "foreign")] = {
        "apiVersion": "snapshot.storage.k8s.io/v1",
        "kind": "VolumeSnapshot",
        "metadata": {"name": "foreign", "namespace": NS, "labels": {}},
        "spec": {"source": {"persistentVolumeClaimName": "djia-data"}},
    }
    assert sorted(s.name for s in trident.list_snapshots()) == ["d1", "m1"]
    assert [s.name for s in trident.list_snapshots("djia-data")] == ["d1"]
    assert trident.delete_snapshot("d1") is True
    assert trident.delete_snapshot("d1") is False
    assert trident.get_snapshot("d1") is None
    assert trident.delete_volume("djia-data") is True
    assert trident.delete_volume("djia-data") is False


def test_api_errors_become_clear_external_errors(trident, kube):
    kube.emulator.fail_next(
        "POST",
        PVC,
        403,
        "Forbidden",
        'persistentvolumeclaims is forbidden: User "system:serviceaccount:jenkins:'
        'branchops-ci" cannot create resource "persistentvolumeclaims"',
    )
    with pytest.raises(
        ExternalError,
        match=r"create PersistentVolumeClaim kubeflow-user/djia-data failed: "
        r"403 Forbidden: .*cannot create resource",
    ):
        trident.ensure_volume("djia-data")


def test_an_unreachable_api_server_is_a_clear_error(tmp_path, monkeypatch):
    from tests.storage.storage_k8s_emulator import KubeEmulator, RunningEmulator

    with RunningEmulator(KubeEmulator()) as stopped:
        path = stopped.kubeconfig(tmp_path / "kubeconfig")
    monkeypatch.setenv("KUBECONFIG", str(path))  # the server is gone: nothing listens on its port
    storage = TridentStorage(namespace=NS, storage_class="x", snapshot_class="y")
    with pytest.raises(ExternalError, match="unreachable"):
        storage.get_volume("djia-data")


def test_no_kubeconfig_and_no_cluster_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing-kubeconfig"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    storage = TridentStorage(namespace=NS, storage_class="x", snapshot_class="y")
    with pytest.raises(ExternalError, match="cannot configure the Kubernetes client"):
        storage.get_volume("djia-data")


def test_an_invalid_object_is_refused_before_it_is_sent(trident, kube):
    trident.ensure_volume("djia-data")
    # The CRD forbids an empty class name; the API server would answer 422. We must not even send it.
    bad = TridentStorage(
        namespace=NS, storage_class="ontap-nas", snapshot_class="", api_client=trident.api_client
    )
    with pytest.raises(InvalidObject, match="volumeSnapshotClassName: '' should be non-empty"):
        bad.snapshot("djia-data", "s1", {})
    assert kube.emulator.count("create", VS) == 0


def test_the_emulator_judges_objects_by_the_crd_and_the_api_servers_rules_not_by_branchops(kube, kubeconfig):
    """Through the real client, with nothing of branchops in the way: the VolumeSnapshot CRD's schema and
    CEL rules, and a PersistentVolumeClaim's, as the API server applies them."""
    import json

    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException

    api_client = config.new_client_from_config(config_file=str(kubeconfig))
    custom, core = client.CustomObjectsApi(api_client), client.CoreV1Api(api_client)

    def refusal(call) -> tuple[int, dict]:
        with pytest.raises(ApiException) as caught:
            call()
        return caught.value.status, json.loads(caught.value.body)

    def snapshot(spec: dict) -> dict:
        return {
            "apiVersion": "snapshot.storage.k8s.io/v1",
            "kind": "VolumeSnapshot",
            "metadata": {"name": "s1", "namespace": NS},
            "spec": spec,
        }

    def create_snapshot(body: dict, **kwargs):
        return custom.create_namespaced_custom_object("snapshot.storage.k8s.io", "v1", NS, VS, body, **kwargs)

    status, body = refusal(
        lambda: create_snapshot(
            snapshot({"volumeSnapshotClassName": "", "source": {"persistentVolumeClaimName": 7}})
        )
    )
    assert (status, body["kind"], body["reason"]) == (422, "Status", "Invalid")
    assert body["details"]["causes"] == [
        {
            "reason": "FieldValueTypeInvalid",
            "field": "spec.source.persistentVolumeClaimName",
            "message": 'Invalid value: "integer": spec.source.persistentVolumeClaimName in body '
            'must be of type string: "integer"',
        },
        {
            "reason": "FieldValueInvalid",
            "field": "spec.volumeSnapshotClassName",
            "message": 'Invalid value: "string": volumeSnapshotClassName must not be the empty string '
            'when set',
        },
    ]
    status, body = refusal(lambda: create_snapshot(snapshot({"volumeSnapshotClassName": "c"})))
    assert (status, body["details"]["causes"][0]["field"]) == (422, "spec.source")
    typo = snapshot({"source": {"persistentVolumeClaimName": "djia-data"}, "volumeSnapshotClass": "c"})
    status, body = refusal(lambda: create_snapshot(typo, field_validation="Strict"))
    assert (status, body["reason"]) == (
        400,
        "BadRequest",
    ) and 'unknown field "spec.volumeSnapshotClass"' in body["message"]
    assert kube.emulator.count("create", VS) == 3 and kube.emulator.objects == {}

    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "djia-data", "namespace": NS},
        "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": ["5Gi"]}}},
    }
    status, body = refusal(lambda: core.create_namespaced_persistent_volume_claim(NS, claim))
    assert (status, body["reason"]) == (400, "BadRequest") and "spec.resources.requests.storage" in body[
        "message"
    ]
    del claim["spec"]["accessModes"]
    claim["spec"]["resources"]["requests"]["storage"] = "5Gi"
    status, body = refusal(lambda: core.create_namespaced_persistent_volume_claim(NS, claim))
    assert status == 422
    assert body["message"] == (
        'PersistentVolumeClaim "djia-data" is invalid: spec.accessModes: '
        "Required value: at least 1 access mode is required"
    )
    assert kube.emulator.objects == {}
    kube.emulator.rejected.clear()  # refused on purpose: not what the fixture's teardown is looking for


def test_quantities():
    assert quantity_bytes("5Gi") == 5 * 2**30
    assert quantity_bytes("500M") == 500 * 10**6
    assert quantity_bytes(1024) == 1024
    with pytest.raises(ConfigError, match="not a storage quantity"):
        quantity_bytes("5 gigs")


def test_a_file_on_a_volume_is_read_by_a_reader_pod_that_is_deleted_afterwards(trident, kube):
    """No local directory holds a PVC's files: what a run left on a volume is read by a pod mounting it."""
    volume = trident.ensure_volume("djia-models")
    files = kube.emulator.volume_dir(NS, "djia-models")
    (files / "runs" / "r1" / "plots").mkdir(parents=True)
    (files / "runs" / "r1" / "metrics.json").write_bytes(b'{"roc_auc": 0.61}\n')
    (files / "runs" / "r1" / "plots" / "roc.png").write_bytes(bytes(range(256)))  # binary survives the log

    assert trident.read_file(volume, "runs/r1/metrics.json") == b'{"roc_auc": 0.61}\n'
    assert trident.read_file(volume, "runs/r1/plots/roc.png") == bytes(range(256))
    assert trident.list_folder(volume, "runs/r1") == ["metrics.json", "plots"]
    # absent is told from broken: no file, no folder, a folder asked for as a file
    assert trident.read_file(volume, "runs/r2/metrics.json") is None
    assert trident.list_folder(volume, "raw") is None
    assert trident.read_file(volume, "runs/r1") is None

    pods = [body for body in kube.emulator.received if body["kind"] == "Pod"]
    assert len(pods) == 6
    [mount] = pods[0]["spec"]["containers"][0]["volumeMounts"]
    assert mount["readOnly"] is True
    # a sidecar (Istio injection in Kubeflow namespaces) would keep the pod from ever ending
    assert pods[0]["metadata"]["annotations"] == {"sidecar.istio.io/inject": "false"}
    # what the "restricted" Pod Security Standard asks of a pod (kubernetes.io/docs/concepts/security/
    # pod-security-standards): non-root, RuntimeDefault seccomp, no privilege escalation, no capabilities
    security = pods[0]["spec"]["securityContext"]
    assert security["runAsNonRoot"] is True and security["seccompProfile"] == {"type": "RuntimeDefault"}
    container = pods[0]["spec"]["containers"][0]["securityContext"]
    assert container == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    assert pods[0]["spec"]["volumes"][0]["persistentVolumeClaim"] == {
        "claimName": "djia-models",
        "readOnly": True,
    }
    assert not [key for key in kube.emulator.objects if key[0] == "pods"]  # every reader pod was deleted
    with pytest.raises(ConfigError, match="not a path inside a volume"):
        trident.read_file(volume, "../other/metrics.json")


def test_a_reader_pod_that_cannot_start_fails_after_the_timeout_naming_the_image(kubeconfig, kube):
    storage = TridentStorage(
        namespace=NS,
        storage_class="ontap-nas",
        snapshot_class="trident-snapclass",
        ready_timeout_s=0.2,
        reader_image="registry.example.test/busybox:1.36",
        poll_interval_s=0.01,
    )
    from branchops.storage.base import Volume

    gone = Volume(name="no-such-claim", path=None, size="5Gi")  # its pod stays unschedulable
    with pytest.raises(ExternalError, match="did not finish within.*registry.example.test/busybox:1.36"):
        storage.read_file(gone, "metrics.json")
    assert not [key for key in kube.emulator.objects if key[0] == "pods"]


def test_a_reader_pod_whose_create_answer_was_lost_is_still_deleted(trident, kube, monkeypatch):
    """The API server stored the pod but its answer never arrived (a timeout): the pod has a name chosen
    before the create, so it is deleted all the same instead of being left behind."""
    from kubernetes.client import CoreV1Api
    from urllib3.exceptions import ReadTimeoutError

    volume = trident.ensure_volume("djia-models")
    create = CoreV1Api.create_namespaced_pod

    def answer_lost(self, *args, **kwargs):
        create(self, *args, **kwargs)
        raise ReadTimeoutError(None, "/api/v1/namespaces/team-a/pods", "read timed out")

    monkeypatch.setattr(CoreV1Api, "create_namespaced_pod", answer_lost)
    with pytest.raises(ExternalError, match="unreachable while trying to create a reader Pod"):
        trident.read_file(volume, "runs/r1/metrics.json")
    assert kube.emulator.count("create", "pods") == 1
    assert not [key for key in kube.emulator.objects if key[0] == "pods"]


def test_a_reader_pod_that_cannot_be_deleted_is_a_warning_naming_it(trident, kube, caplog):
    volume = trident.ensure_volume("djia-models")
    (kube.emulator.volume_dir(NS, "djia-models") / "metrics.json").write_bytes(b"{}")
    kube.emulator.fail_next("DELETE", "pods", 403, "Forbidden", "pods is forbidden: cannot delete")
    with caplog.at_level(logging.WARNING, logger="branchops.storage.trident"):
        assert trident.read_file(volume, "metrics.json") == b"{}"  # the read itself succeeded
    [pod] = [name for (resource, _, name) in kube.emulator.objects if resource == "pods"]
    assert f"reader Pod {NS}/{pod} may be left behind" in caplog.text and "cannot delete" in caplog.text


def test_the_files_of_a_folder_are_read_by_one_reader_pod(trident, kube):
    volume = trident.ensure_volume("djia-models")
    plots = kube.emulator.volume_dir(NS, "djia-models") / "runs" / "r1" / "plots"
    (plots / "old").mkdir(parents=True)  # a subfolder is left out
    (plots / "roc.png").write_bytes(bytes(range(256)) * 40)  # binary, several base64 lines
    (plots / "empty.png").write_bytes(b"")
    (plots / ".hidden").write_bytes(b"h")

    assert trident.read_folder(volume, "runs/r1/plots") == {
        ".hidden": b"h",
        "empty.png": b"",
        "roc.png": bytes(range(256)) * 40,
    }
    assert trident.read_folder(volume, "runs/r2/plots") is None
    assert len([body for body in kube.emulator.received if body["kind"] == "Pod"]) == 2
    assert not [key for key in kube.emulator.objects if key[0] == "pods"]
