"""Every Kubernetes object the serving backend sends or ships is valid against the official schemas
(strict: an unknown field is an error)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from branchops.config import STAGES, BranchopsConfig
from branchops.k8s.validate import InvalidObject, validate_manifest_file, validate_object
from branchops.serving.kubernetes_manifests import (
    ObjectBuilder,
    canary_replicas,
    render_manifests,
    render_models_config,
)
from tests.k8s.api_rules import review

TFSERVE = Path(__file__).resolve().parents[2] / "serving" / "tfserve"


def config(**kubernetes) -> BranchopsConfig:
    # the reference project's model (the shipped manifests under serving/tfserve are its)
    return BranchopsConfig.model_validate(
        {
            "approvers": {s: ["lead"] for s in STAGES},
            "serving": {"model_name": "djia", "kubernetes": kubernetes},
        }
    )


def all_objects(builder: ObjectBuilder) -> list[dict]:
    state = {"versions": [1, 2], "stable": 1, "canary": 2, "canary_weight": 10}
    return [
        *builder.base_objects([1, 2], {"stable": 1, "canary": 2}, state),
        builder.config_map([2], {"stable": 2}, track="canary"),
        builder.deployment("canary", replicas=canary_replicas(2, 10)),
        builder.source_clone("djia-models-abc1234", 2),
        builder.copy_job("djia-models", "djia/2", 2),
    ]


@pytest.mark.parametrize("istio", [False, True])
def test_every_generated_object_is_strictly_valid(istio):
    builder = ObjectBuilder(config(istio=istio, replicas=3))
    kinds = set()
    for obj in all_objects(builder):
        istio_kind = obj["apiVersion"].startswith("networking.istio.io")
        checked = validate_object(obj, allow_unchecked=istio_kind)
        assert checked.checked != istio_kind, (
            checked
        )  # Istio's CRD schemas are not shipped: checked by hand below
        # And the API server's own rules agree (names, labels, selectors: what no schema states).
        verdict = review(obj)
        assert (verdict.status, verdict.warnings) == (None, []), obj["kind"]
        kinds.add(obj["kind"])
    assert {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ConfigMap",
        "PersistentVolumeClaim",
        "Job",
    } <= kinds
    assert ("VirtualService" in kinds) == istio


def test_deployment_probes_tf_serving_model_status_and_polls_its_config():
    deployment = ObjectBuilder(config()).deployment(replicas=2)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"] == {"path": "/v1/models/djia", "port": "http"}
    assert "--model_config_file=/etc/tfserve/models.config" in container["args"]
    assert any(a.startswith("--model_config_file_poll_wait_seconds=") for a in container["args"])
    assert any(a.startswith("--file_system_poll_wait_seconds=") for a in container["args"])
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert ":latest" not in container["image"]
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_istio_objects_route_by_track_with_weights_summing_to_100():
    builder = ObjectBuilder(config(istio=True))
    rule = builder.destination_rule()
    assert {s["name"]: s["labels"]["branchops.io/track"] for s in rule["spec"]["subsets"]} == {
        "stable": "stable",
        "canary": "canary",
    }
    for weight in (0, 10, 50, 100):
        route = builder.virtual_service(weight)["spec"]["http"][0]["route"]
        assert [r["weight"] for r in route] == [100 - weight, weight]
        assert {r["destination"]["subset"] for r in route} == {"stable", "canary"}
        assert all(r["destination"]["host"] == rule["spec"]["host"] for r in route)


def test_strict_validation_catches_a_typo():
    deployment = copy.deepcopy(ObjectBuilder(config()).deployment(replicas=2))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(InvalidObject, match="readinesProbe"):
        validate_object(deployment)


def test_models_config_serves_specific_versions_with_labels():
    text = render_models_config("djia", [2, 1], {"stable": 1, "canary": 2})
    assert "specific {\n        versions: 1\n        versions: 2\n      }" in text
    assert 'key: "canary"\n      value: 2' in text and 'base_path: "/models/djia"' in text
    with pytest.raises(ValueError, match="does not serve"):
        render_models_config("djia", [1], {"stable": 3})


def test_canary_replica_ratio():
    assert canary_replicas(2, 10) == 1
    assert canary_replicas(3, 50) == 3
    assert canary_replicas(4, 75) == 12


def test_shipped_manifests_match_the_generator_and_are_valid():
    from branchops.config import load_config

    project = load_config(TFSERVE.parents[1])  # the manifests are the reference project's
    for name, text in render_manifests(project).items():
        shipped = TFSERVE / name
        assert shipped.read_text() == text, (
            f"{shipped} is stale: run python -m branchops.serving.kubernetes_manifests serving/tfserve"
        )
    checked = validate_manifest_file(TFSERVE / "tfserve.yaml")
    assert [c.kind for c in checked] == [
        "PersistentVolumeClaim",
        "PersistentVolumeClaim",  # the prediction log's
        "ConfigMap",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    ]
    assert all(c.checked for c in checked)
    istio = validate_manifest_file(TFSERVE / "istio.yaml", allow_unchecked=True)
    assert [c.kind for c in istio] == ["DestinationRule", "VirtualService"]
