"""Offline validation of Kubernetes objects: built-ins with kubernetes-validate (strict), the CSI
snapshot kinds with the shipped CRD schemas, refusal of kinds with no schema (Istio)."""

from __future__ import annotations

import json
from importlib import resources

import pytest

from branchops.errors import ConfigError
from branchops.k8s import KUBERNETES_VERSION, InvalidObject, validate_manifest_file, validate_object
from branchops.k8s.validate import crd_kinds

SNAP = "snapshot.storage.k8s.io/v1"


def pvc(**spec_extra):
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "djia-data", "namespace": "kubeflow-user", "labels": {"a": "b"}},
        "spec": {
            "accessModes": ["ReadWriteMany"],
            "storageClassName": "ontap-nas",
            "resources": {"requests": {"storage": "20Gi"}},
            **spec_extra,
        },
    }


def volume_snapshot(**spec):
    return {
        "apiVersion": SNAP,
        "kind": "VolumeSnapshot",
        "metadata": {
            "name": "snap",
            "namespace": "kubeflow-user",
            "labels": {"branchops.io/commit": "3f9a1c0d5e7b2a4c6d8e0f1a2b3c4d5e6f7a8b9c"},
        },
        "spec": spec
        or {"volumeSnapshotClassName": "csi-snapclass", "source": {"persistentVolumeClaimName": "djia-data"}},
    }


def test_invalid_object_is_a_config_error():
    assert issubclass(InvalidObject, ConfigError)


def test_builtin_kinds_validate_strictly():
    result = validate_object(pvc())
    assert result.checked and result.kind == "PersistentVolumeClaim" and result.name == "djia-data"
    assert result.against == f"kubernetes {KUBERNETES_VERSION} (strict)"
    with pytest.raises(
        InvalidObject,
        match=r"PersistentVolumeClaim djia-data \(v1\).*strict.*spec: "
        r"Additional properties are not allowed \('storageClass' was",
    ):
        validate_object(pvc(storageClass="typo"))


@pytest.mark.parametrize(
    "obj",
    [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "tfserve"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "tfserve"}},
                "template": {
                    "metadata": {"labels": {"app": "tfserve"}},
                    "spec": {
                        "containers": [
                            {
                                "name": "tfserve",
                                "image": "tensorflow/serving:2.19.0",
                                "ports": [{"containerPort": 8501}],
                            }
                        ]
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "tfserve"},
            "spec": {"selector": {"app": "tfserve"}, "ports": [{"port": 8501, "targetPort": 8501}]},
        },
        {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "tfserve"},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "tfserve"},
                "minReplicas": 2,
                "maxReplicas": 6,
                "metrics": [
                    {
                        "type": "Resource",
                        "resource": {
                            "name": "cpu",
                            "target": {"type": "Utilization", "averageUtilization": 70},
                        },
                    }
                ],
            },
        },
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": {"name": "tfserve"},
            "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "tfserve"}}},
        },
    ],
    ids=["deployment", "service", "hpa", "pdb"],
)
def test_serving_kinds_other_agents_validate(obj):
    assert validate_object(obj).checked


def test_type_errors_name_the_field_path():
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "tfserve"},
        "spec": {"replicas": "2", "selector": {}, "template": {}},
    }
    with pytest.raises(InvalidObject, match=r"spec\.replicas: '2' is not of type 'integer'"):
        validate_object(deployment)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": "http"}]}]},
    }
    with pytest.raises(InvalidObject, match=r"spec\.containers\[0\]\.ports\[0\]\.containerPort: 'http'"):
        validate_object(pod)


def test_volume_snapshot_validates_against_the_shipped_crd():
    result = validate_object(volume_snapshot())
    assert result.checked and "volumesnapshots.snapshot.storage.k8s.io/v1" in result.against
    assert "kubernetes-csi/external-snapshotter@" in result.against


@pytest.mark.parametrize(
    "spec, message",
    [
        (
            {"volumeSnapshotClassName": "c", "source": {"persistentVolumeClaimName": "p"}, "extra": 1},
            r"spec: Additional properties are not allowed \('extra' was unexpected\)",
        ),
        (
            {"source": {"persistentVolumeClaimName": "p", "volumeSnapshotContentName": "q"}},
            r"spec\.source: set exactly one of persistentVolumeClaimName or volumeSnapshotContentName",
        ),
        ({"source": {}}, r"spec\.source: set exactly one of"),
        (
            {"volumeSnapshotClassName": "", "source": {"persistentVolumeClaimName": "p"}},
            r"spec\.volumeSnapshotClassName: '' should be non-empty",
        ),
        ({"volumeSnapshotClassName": "c"}, r"'source' is a required property"),
        (
            {"source": {"persistentVolumeClaimName": 5}},
            r"persistentVolumeClaimName: 5 is not of type 'string'",
        ),
    ],
)
def test_volume_snapshot_errors(spec, message):
    with pytest.raises(InvalidObject, match=message):
        validate_object(volume_snapshot(**spec))


def test_custom_resource_metadata_is_checked_as_object_meta():
    obj = volume_snapshot()
    obj["metadata"]["labels"] = {"branchops.io/run": 7}
    with pytest.raises(
        InvalidObject, match=r"metadata\.labels\.branchops\.io/run: 7 is not of type 'string'"
    ):
        validate_object(obj)
    obj["metadata"] = {"name": "snap", "lables": {}}
    with pytest.raises(InvalidObject, match=r"'lables' was unexpected"):
        validate_object(obj)


def test_status_as_read_back_from_the_server_is_valid():
    obj = volume_snapshot()
    obj["status"] = {
        "readyToUse": True,
        "restoreSize": "20Gi",
        "creationTime": "2026-01-01T00:00:00Z",
        "boundVolumeSnapshotContentName": "snapcontent-1",
    }
    assert validate_object(obj).checked
    obj["status"]["restoreSize"] = "twenty gigs"
    with pytest.raises(InvalidObject, match=r"status\.restoreSize: 'twenty gigs' does not match"):
        validate_object(obj)


def test_snapshot_class_and_content():
    assert validate_object(
        {
            "apiVersion": SNAP,
            "kind": "VolumeSnapshotClass",
            "metadata": {"name": "csi-snapclass"},
            "driver": "csi.trident.netapp.io",
            "deletionPolicy": "Delete",
        }
    ).checked
    with pytest.raises(InvalidObject, match=r"deletionPolicy: 'Keep' is not one of \['Delete', 'Retain'\]"):
        validate_object(
            {
                "apiVersion": SNAP,
                "kind": "VolumeSnapshotClass",
                "metadata": {"name": "c"},
                "driver": "csi.trident.netapp.io",
                "deletionPolicy": "Keep",
            }
        )
    content = {
        "apiVersion": SNAP,
        "kind": "VolumeSnapshotContent",
        "metadata": {"name": "c1"},
        "spec": {
            "deletionPolicy": "Retain",
            "driver": "csi.trident.netapp.io",
            "source": {"snapshotHandle": "pvc-1/snapshot-1"},
            "volumeSnapshotRef": {"name": "snap", "namespace": "kubeflow-user"},
        },
    }
    assert validate_object(content).checked
    del content["spec"]["volumeSnapshotRef"]
    with pytest.raises(InvalidObject, match="'volumeSnapshotRef' is a required property"):
        validate_object(content)


def test_wrong_api_version_or_kind_has_no_schema():
    obj = volume_snapshot()
    obj["apiVersion"] = "snapshot.storage.k8s.io/v1beta1"
    with pytest.raises(InvalidObject, match="no schema for this kind"):
        validate_object(obj)
    with pytest.raises(InvalidObject, match="no schema for this kind"):
        validate_object({"apiVersion": "v1", "kind": "PersistentVolumeClame", "metadata": {"name": "x"}})


def test_istio_is_refused_unless_explicitly_unchecked():
    vs = {
        "apiVersion": "networking.istio.io/v1beta1",
        "kind": "VirtualService",
        "metadata": {"name": "tfserve"},
        "spec": {
            "hosts": ["tfserve"],
            "http": [{"route": [{"destination": {"host": "tfserve"}, "weight": 100}]}],
        },
    }
    with pytest.raises(InvalidObject, match="Istio's CRD schemas are not shipped"):
        validate_object(vs)
    result = validate_object(vs, allow_unchecked=True)
    assert not result.checked and result.against.startswith("unchecked")
    vs["metadata"]["nmae"] = "typo"
    with pytest.raises(InvalidObject, match="'nmae' was unexpected"):
        validate_object(vs, allow_unchecked=True)


@pytest.mark.parametrize(
    "obj, message",
    [
        ([], "must be a mapping"),
        ({"kind": "Pod"}, "'apiVersion' is missing"),
        ({"apiVersion": "v1", "kind": "Pod", "metadata": "x"}, "'metadata' must be a mapping"),
    ],
)
def test_malformed_objects(obj, message):
    with pytest.raises(InvalidObject, match=message):
        validate_object(obj)


def test_manifest_files(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("---\n" + json.dumps(pvc()) + "\n---\n" + json.dumps(volume_snapshot()) + "\n---\n")
    assert [r.kind for r in validate_manifest_file(good)] == ["PersistentVolumeClaim", "VolumeSnapshot"]

    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: ok\n---\n"
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: x\nspec:\n  size: 1Gi\n"
    )
    with pytest.raises(InvalidObject, match=rf"{bad}:6 \(document 2\): PersistentVolumeClaim x .*'size' was"):
        validate_manifest_file(bad)

    broken = tmp_path / "broken.yaml"
    broken.write_text("apiVersion: v1\nkind: [unclosed\n")
    with pytest.raises(InvalidObject, match=rf"{broken}:\d+: not valid YAML"):
        validate_manifest_file(broken)
    with pytest.raises(InvalidObject, match="manifest not found"):
        validate_manifest_file(tmp_path / "absent.yaml")
    empty = tmp_path / "empty.yaml"
    empty.write_text("---\n")
    with pytest.raises(InvalidObject, match="no Kubernetes objects"):
        validate_manifest_file(empty)


def test_shipped_crd_schemas_name_their_source():
    assert [kind for _, kind in crd_kinds()] == [
        "VolumeSnapshot",
        "VolumeSnapshotClass",
        "VolumeSnapshotContent",
    ]
    folder = resources.files("branchops").joinpath("schemas", "crds")
    for entry in folder.iterdir():
        doc = json.loads(entry.read_text())
        assert doc["source"]["repository"] == "kubernetes-csi/external-snapshotter"
        assert len(doc["source"]["commit"]) == 40 and doc["source"]["path"].startswith("client/config/crd/")
        assert doc["openAPIV3Schema"]["type"] == "object"


def test_kubernetes_version_is_selectable_and_checked():
    assert validate_object(pvc(), kubernetes_version="1.34").against == "kubernetes 1.34 (strict)"
    with pytest.raises(ConfigError, match="no schemas for Kubernetes 9.99"):
        validate_object(pvc(), kubernetes_version="9.99")
