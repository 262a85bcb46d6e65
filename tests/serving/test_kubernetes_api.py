"""``KubeApi`` (the serving backend's kubernetes-client calls) against an emulated API server.

A logic test, not an integration test: no Kubernetes, TF Serving or Istio runs here. The emulator
(k8s_emulator.py, built on the storage port's) serves the REST endpoints the official kubernetes client
calls, with the API's documented semantics (201/404/409, strategic-merge and merge patches by content
type, resourceVersion, generation, propagationPolicy, pods and Jobs advanced by emulated controllers, the
API server proxy). Every object it receives is judged by the API server's own rules (tests/k8s/api_rules.py).
"""

from __future__ import annotations

import json
import time

import pytest

from branchops.config import STAGES, BranchopsConfig
from branchops.errors import ExternalError
from branchops.k8s.client import KubeApi
from branchops.k8s.validate import InvalidObject
from branchops.serving.client import ServingError
from branchops.serving.kubernetes_manifests import STATE_ANNOTATION, ObjectBuilder
from tests.serving.k8s_emulator import (
    MERGE,
    STRATEGIC,
    RunningEmulator,
    ServingKubeEmulator,
    merge_patch,
    strategic_merge,
)

NS = "serving"
TOKEN = "emulator-accepts-any-token"  # what RunningEmulator.kubeconfig writes


@pytest.fixture
def kube():
    """A running emulator; afterwards the API server refused nothing and dropped no unknown field (the
    kubernetes client does not show the Warning headers, so a dropped field would go unnoticed)."""
    emulator = ServingKubeEmulator()
    with RunningEmulator(emulator) as running:
        yield running
    assert emulator.rejected == [], f"the API server refused invalid objects: {emulator.rejected}"
    assert emulator.warnings == [], f"the API server dropped unknown fields: {emulator.warnings}"


@pytest.fixture
def kubeconfig(kube, tmp_path, monkeypatch):
    path = kube.kubeconfig(tmp_path / "kubeconfig", namespace=NS)
    monkeypatch.setenv("KUBECONFIG", str(path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    return path


@pytest.fixture
def api(kubeconfig) -> KubeApi:
    return KubeApi()  # configured from KUBECONFIG, as the backend does


@pytest.fixture
def objects() -> ObjectBuilder:
    config = BranchopsConfig.model_validate(
        {
            "approvers": {s: ["lead"] for s in STAGES},
            "serving": {
                "backend": "kubernetes",
                "model_name": "djia",
                "kubernetes": {"replicas": 2, "istio": True},
            },
        }
    )
    return ObjectBuilder(config)


def state(versions: list[int], stable: int | None) -> dict:
    return {"versions": versions, "stable": stable, "canary": None, "canary_weight": 0}


def model_configs(api: KubeApi, objects: ObjectBuilder) -> None:
    """The ConfigMaps TF Serving's pods mount (version 1 labelled stable): without them no pod starts."""
    api.apply(objects.config_map([1], {"stable": 1}, state=state([1], 1)))
    api.apply(objects.config_map([1], {"stable": 1}, track="canary"))


def test_apply_creates_every_kind_then_patches_it_with_the_patch_type_the_client_sends(api, kube, objects):
    everything = objects.base_objects([1], {"stable": 1}, state([1], 1)) + [
        objects.source_clone("djia-models-run3", 3),
        objects.copy_job("djia-models", "djia/3", 3),
    ]
    for obj in everything:
        api.apply(obj)
    em = kube.emulator
    kinds = {(r, n) for (r, ns, n) in em.objects if ns == NS and r != "pods"}
    assert kinds == {
        ("persistentvolumeclaims", "tfserve-models"),
        ("persistentvolumeclaims", "tfserve-src-3"),
        ("persistentvolumeclaims", "prediction-log"),
        ("configmaps", "tfserve-config"),
        ("deployments", "tfserve"),
        ("services", "tfserve"),
        ("horizontalpodautoscalers", "tfserve"),
        ("poddisruptionbudgets", "tfserve"),
        ("destinationrules", "tfserve"),
        ("virtualservices", "tfserve"),
        ("jobs", "tfserve-copy-v3"),
    }
    assert all(verb == "create" for verb, _, _ in em.requests if verb != "list")

    again = [o for o in everything if o["kind"] != "Job"]
    for obj in again:
        api.apply(obj)
    patches = [(resource, ctype) for verb, resource, ctype in em.content_types if verb == "patch"]
    assert len(patches) == len(again)  # each create answered 409 AlreadyExists, then a patch
    for resource, ctype in patches:
        assert ctype == (MERGE if resource in ("virtualservices", "destinationrules") else STRATEGIC), (
            resource
        )
    assert (
        em.get("deployments", NS, "tfserve")["metadata"]["generation"] == 1
    )  # nothing changed: no new generation


def test_a_patch_changes_what_changed_and_keeps_what_the_server_set(api, kube, objects):
    em = kube.emulator
    api.apply(objects.config_map([1], {"stable": 1}, state=state([1], 1)))
    api.apply(objects.service())
    api.apply(objects.virtual_service(0))
    before_cm = json.loads(json.dumps(em.get("configmaps", NS, "tfserve-config")))
    cluster_ip = em.get("services", NS, "tfserve")["spec"]["clusterIP"]

    api.apply(objects.config_map([1, 2], {"stable": 1}, state=state([1, 2], 1)))
    api.apply(objects.service())
    api.apply(objects.virtual_service(10))

    cm = em.get("configmaps", NS, "tfserve-config")
    assert "versions: 2" in cm["data"]["models.config"]
    assert json.loads(cm["metadata"]["annotations"][STATE_ANNOTATION])["versions"] == [1, 2]
    assert cm["metadata"]["uid"] == before_cm["metadata"]["uid"]
    assert int(cm["metadata"]["resourceVersion"]) > int(before_cm["metadata"]["resourceVersion"])
    assert (
        em.get("services", NS, "tfserve")["spec"]["clusterIP"] == cluster_ip
    )  # allocated by the server, kept
    route = em.get("virtualservices", NS, "tfserve")["spec"]["http"][0]["route"]
    assert [r["weight"] for r in route] == [90, 10]  # merge patch: the list replaced whole
    assert api.config_state("tfserve-config", NS) == state([1, 2], 1)


def test_a_changed_deployment_template_rolls_its_pods(api, kube, objects):
    em = kube.emulator
    model_configs(api, objects)
    deployment = objects.deployment(replicas=2)
    api.apply(deployment)
    em.settle()
    first = {p["metadata"]["name"] for p in em.pods_of("deployments", NS, "tfserve")}
    assert len(first) == 2
    changed = json.loads(json.dumps(deployment))
    changed["spec"]["template"]["spec"]["containers"][0]["image"] = "docker.io/tensorflow/serving:2.19.0"
    api.apply(changed)
    obj = em.get("deployments", NS, "tfserve")
    assert obj["metadata"]["generation"] == 2
    # merged by name: still TF Serving and the logging proxy, not a second TF Serving
    assert [c["name"] for c in obj["spec"]["template"]["spec"]["containers"]] == ["tfserving", "log-proxy"]
    em.settle(20)
    status = em.get("deployments", NS, "tfserve")["status"]
    assert (status["observedGeneration"], status["updatedReplicas"], status["availableReplicas"]) == (2, 2, 2)
    pods = em.pods_of("deployments", NS, "tfserve")
    assert {p["metadata"]["name"] for p in pods}.isdisjoint(first)
    assert {p["spec"]["containers"][0]["image"] for p in pods} == {"docker.io/tensorflow/serving:2.19.0"}


def test_the_stable_replicas_stay_the_autoscalers_while_the_canary_is_scaled(api, kube, objects):
    em = kube.emulator
    api.apply(objects.autoscaler())
    api.apply(objects.deployment(replicas=2))
    em.get("deployments", NS, "tfserve")["spec"]["replicas"] = 5  # the autoscaler scaled it up
    api.apply(objects.deployment(replicas=2))
    assert em.get("deployments", NS, "tfserve")["spec"]["replicas"] == 5

    api.apply(objects.deployment("canary", replicas=1))
    api.apply(objects.deployment("canary", replicas=2))  # the next canary step: no autoscaler owns it
    assert em.get("deployments", NS, "tfserve-canary")["spec"]["replicas"] == 2


def test_delete_cascades_to_pods_and_ignores_what_is_gone(api, kube, objects):
    em = kube.emulator
    model_configs(api, objects)
    api.apply(objects.copy_job("djia-models", "djia/3", 3))
    api.apply(objects.deployment("canary", replicas=1))
    api.apply(objects.virtual_service(0))
    em.settle(1)
    assert em.pods_of("jobs", NS, "tfserve-copy-v3") and em.pods_of("deployments", NS, "tfserve-canary")

    api.delete("Job", "tfserve-copy-v3", NS)  # returns once the Job and its pod are gone
    assert not [p for p in em.of("pods", NS).values() if p["metadata"]["labels"].get("job-name")]
    api.delete("Deployment", "tfserve-canary", NS)
    api.delete("VirtualService", "tfserve", NS)
    em.settle(em.pod_termination_ticks)  # the canary's pod ends its grace period
    assert [p for p in em.of("pods", NS).values()] == []
    assert em.of("jobs", NS) == {} and em.of("virtualservices", NS) == {}
    api.delete("Job", "tfserve-copy-v3", NS)  # 404: already gone, quietly
    api.delete("ConfigMap", "absent", NS)
    assert em.count("delete", "jobs") == 2


def test_a_job_is_deleted_in_the_foreground_and_waited_for_before_its_name_is_reused(api, kube, objects):
    """A rerun re-creates the copy Job under the same name. Deleted in the background, the old Job's pod
    keeps copying into the serving volume while the new one starts; and while the old Job terminates a
    create is refused (409) and the patch that follows would change its immutable template (422)."""
    em = kube.emulator
    api.poll_s = 0.01
    job = objects.copy_job("djia-models", "djia/3", 3)
    api.apply(job)
    em.settle(1)
    (old_pod,) = em.pods_of("jobs", NS, "tfserve-copy-v3")

    api.delete("Job", "tfserve-copy-v3", NS)
    deletes = [q for q in em.queries if q[0] == "delete" and q[1] == "jobs"]
    assert deletes[-1][2].get("propagationPolicy") == "Foreground"
    assert em.get("pods", NS, old_pod["metadata"]["name"]) is None  # no copy left running
    assert em.get("jobs", NS, "tfserve-copy-v3") is None
    api.apply(job)  # the name is free: created anew, not patched
    assert em.get("jobs", NS, "tfserve-copy-v3")["metadata"]["uid"] != old_pod["metadata"]["uid"]
    assert [q[0] for q in em.queries if q[1] == "jobs"][-1] == "create"


def test_the_emulated_api_server_refuses_a_name_still_terminating_and_a_changed_job_template(
    kube, kubeconfig
):
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    em = kube.emulator
    batch = client.BatchV1Api(KubeApi().api_client)
    builder = ObjectBuilder(
        BranchopsConfig.model_validate(
            {"approvers": {s: ["lead"] for s in STAGES}, "serving": {"model_name": "djia"}}
        )
    )
    job = builder.copy_job("djia-models", "djia/3", 3)
    batch.create_namespaced_job(NS, job)
    em.settle(1)
    batch.delete_namespaced_job("tfserve-copy-v3", NS, propagation_policy="Foreground")
    terminating = em.get("jobs", NS, "tfserve-copy-v3")
    assert (
        terminating["metadata"]["deletionTimestamp"]
        and "foregroundDeletion" in terminating["metadata"]["finalizers"]
    )
    with pytest.raises(ApiException) as conflict:
        batch.create_namespaced_job(NS, job)
    assert conflict.value.status == 409 and "object is being deleted" in conflict.value.body
    changed = json.loads(json.dumps(job))
    changed["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"] = "djia/4"
    with pytest.raises(ApiException) as immutable:
        batch.patch_namespaced_job("tfserve-copy-v3", NS, changed)
    assert immutable.value.status == 422 and "field is immutable" in immutable.value.body
    em.settle(em.pod_termination_ticks + 1)
    assert em.get("jobs", NS, "tfserve-copy-v3") is None  # gone with its pod
    kube.emulator.rejected.clear()  # refused on purpose


def test_every_write_asks_for_strict_field_validation(api, kube, objects):
    """An unknown field would otherwise be dropped with a Warning header the kubernetes client never
    shows (Istio kinds, which are not checked offline, most of all)."""
    for obj in objects.base_objects([1], {"stable": 1}, state([1], 1)) + [objects.copy_job("m", "djia/1", 1)]:
        api.apply(obj)
    for obj in objects.base_objects([1], {"stable": 1}, state([1], 1)):
        api.apply(obj)  # 409, then a patch
    writes = [q for q in kube.emulator.queries if q[0] in ("create", "patch")]
    assert {q[0] for q in writes} == {"create", "patch"}
    assert all(q[2].get("fieldValidation") == "Strict" for q in writes), writes


def test_config_state_reads_the_annotation(api, kube, objects):
    assert api.config_state("tfserve-config", NS) is None  # 404: nothing deployed yet
    api.apply(objects.config_map([1], {"stable": 1}))  # no state annotation
    assert api.config_state("tfserve-config", NS) is None
    api.apply(objects.config_map([1], {"stable": 1}, state=state([1], 1)))
    assert api.config_state("tfserve-config", NS) == state([1], 1)
    kube.emulator.get("configmaps", NS, "tfserve-config")["metadata"]["annotations"][STATE_ANNOTATION] = (
        "{oops"
    )
    with pytest.raises(
        ExternalError,
        match=f"ConfigMap serving/tfserve-config: annotation {STATE_ANNOTATION} is not valid JSON",
    ):
        api.config_state("tfserve-config", NS)


def test_a_copy_job_is_followed_until_it_succeeds_and_its_log_is_read(api, kube, objects):
    log = 'copying\nBRANCHOPS-MODEL-METADATA\n{"version": 3}\n'
    kube.emulator.job_outcomes["tfserve-copy-v3"] = (True, log)
    api.apply(objects.copy_job("djia-models", "djia/3", 3))
    seen = [api.job_finished("tfserve-copy-v3", NS) for _ in range(6)]
    assert seen[0] is None and seen[-1] is True and set(seen) == {None, True}
    assert api.job_log("tfserve-copy-v3", NS) == log
    assert api.job_log("tfserve-copy-v9", NS) == ""  # no pods for that job


def test_a_failing_copy_job_is_reported_failed_after_its_retries(api, kube, objects):
    kube.emulator.job_outcomes["tfserve-copy-v9"] = (
        False,
        "cp: can't stat '/source/djia/9/.': No such file\n",
    )
    job = objects.copy_job("djia-models", "djia/9", 9)
    api.apply(job)
    outcomes = [api.job_finished("tfserve-copy-v9", NS) for _ in range(20)]
    assert outcomes[-1] is False and True not in outcomes
    pods = kube.emulator.pods_of("jobs", NS, "tfserve-copy-v9")
    assert len(pods) == job["spec"]["backoffLimit"] + 1
    assert "No such file" in api.job_log("tfserve-copy-v9", NS)


def test_ready_pods_lists_only_running_ready_pods_of_the_track(api, kube, objects):
    em = kube.emulator
    model_configs(api, objects)
    api.apply(objects.deployment(replicas=2))
    api.apply(objects.deployment("canary", replicas=1))
    stable = objects.selector("stable")
    seen = [api.ready_pods(NS, stable) for _ in range(5)]
    # Pending, then Running but not yet Ready (TF Serving still loading): neither may be proxied to.
    assert seen[0] == [] and seen[1] == []
    assert len(seen[-1]) == 2
    assert set(seen[-1]) == {p["metadata"]["name"] for p in em.pods_of("deployments", NS, "tfserve")}
    assert len(api.ready_pods(NS, objects.selector("canary"))) == 1
    terminating = em.get("pods", NS, seen[-1][0])
    terminating["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert api.ready_pods(NS, stable) == [seen[-1][1]]


def test_the_proxy_client_reaches_tf_serving_through_the_api_server_with_the_credentials(api, kube, objects):
    em = kube.emulator

    def tf_serving(pod, method, path, body):
        if path == "/v1/models/djia/versions/1":
            return 200, {
                "model_version_status": [
                    {
                        "version": "1",
                        "state": "AVAILABLE",
                        "status": {"error_code": "OK", "error_message": ""},
                    }
                ]
            }
        return 404, {"error": f"Servable not found for request: {path}"}

    model_configs(api, objects)
    api.apply(objects.deployment(replicas=1))
    api.apply(objects.service())
    em.settle(1)
    (pod,) = em.pods_of("deployments", NS, "tfserve")
    replica = api.proxy_client(NS, f"pods/{pod['metadata']['name']}:8501", "djia")
    with pytest.raises(ServingError) as refused:  # not Ready: TF Serving does not listen yet
        replica.status(version=1)
    assert refused.value.status == 503
    em.settle()
    assert api.ready_pods(NS, objects.selector("stable")) == [pod["metadata"]["name"]]

    em.proxy_handler = tf_serving
    assert replica.status(version=1)[0]["state"] == "AVAILABLE"
    service = api.proxy_client(NS, "services/tfserve:http", "djia")
    assert service.status(version=1)[0]["state"] == "AVAILABLE"
    with pytest.raises(ServingError) as missing:
        service.status(version=2)
    assert missing.value.status == 404
    assert [p[1:] for p in em.proxied[-3:]] == [("GET", "/v1/models/djia/versions/1")] * 2 + [
        ("GET", "/v1/models/djia/versions/2")
    ]
    assert set(em.authorizations) == {f"Bearer {TOKEN}"}  # every call, the proxy included, carried the token


FORBIDDEN = (
    '{resource} is forbidden: User "system:serviceaccount:jenkins:branchops-ci" cannot {verb} resource '
    '"{resource}" in API group "" in the namespace "serving"'
)


@pytest.mark.parametrize(
    ("method", "resource", "call", "expected"),
    [
        (
            "POST",
            "configmaps",
            lambda api, o: api.apply(o.config_map([1], {"stable": 1})),
            "Kubernetes refused ConfigMap serving/tfserve-config: HTTP 403 Forbidden: "
            "configmaps is forbidden",
        ),
        (
            "DELETE",
            "jobs",
            lambda api, o: api.delete("Job", "tfserve-copy-v1", NS),
            "could not delete Job serving/tfserve-copy-v1: HTTP 403 Forbidden: jobs is forbidden",
        ),
        (
            "GET",
            "configmaps",
            lambda api, o: api.config_state("tfserve-config", NS),
            "could not read ConfigMap serving/tfserve-config: HTTP 403 Forbidden: configmaps is forbidden",
        ),
        (
            "GET",
            "jobs/status",
            lambda api, o: api.job_finished("tfserve-copy-v1", NS),
            "could not read Job serving/tfserve-copy-v1: HTTP 403 Forbidden: jobs/status is forbidden",
        ),
        (
            "GET",
            "pods",
            lambda api, o: api.job_log("tfserve-copy-v1", NS),
            "could not list pods of Job serving/tfserve-copy-v1 or read their log: "
            "HTTP 403 Forbidden: pods is forbidden",
        ),
        (
            "GET",
            "pods",
            lambda api, o: api.ready_pods(NS, o.selector("stable")),
            "could not list pods in serving: HTTP 403 Forbidden: pods is forbidden",
        ),
    ],
)
def test_refusals_are_clear_external_errors(api, kube, objects, method, resource, call, expected):
    verb = {"POST": "create", "DELETE": "delete", "GET": "get"}[method]
    kube.emulator.fail_next(
        method, resource, 403, "Forbidden", FORBIDDEN.format(resource=resource, verb=verb)
    )
    with pytest.raises(ExternalError) as failed:
        call(api, objects)
    assert str(failed.value).startswith(expected)


def test_a_patch_refusal_is_a_clear_external_error(api, kube, objects):
    api.apply(objects.config_map([1], {"stable": 1}))
    kube.emulator.fail_next(
        "PATCH", "configmaps", 403, "Forbidden", FORBIDDEN.format(resource="configmaps", verb="patch")
    )
    with pytest.raises(
        ExternalError,
        match="Kubernetes refused ConfigMap serving/tfserve-config: HTTP 403 "
        "Forbidden: configmaps is forbidden: .* cannot patch",
    ):
        api.apply(objects.config_map([2], {"stable": 2}))
    assert "versions: 1" in kube.emulator.get("configmaps", NS, "tfserve-config")["data"]["models.config"]


def test_an_unreachable_api_server_is_a_clear_error(tmp_path, monkeypatch, objects):
    with RunningEmulator(ServingKubeEmulator()) as stopped:
        path = stopped.kubeconfig(tmp_path / "kubeconfig", namespace=NS)
    monkeypatch.setenv("KUBECONFIG", str(path))  # nothing listens on its port any more
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    api = KubeApi()
    calls = [
        lambda: api.apply(objects.config_map([1], {"stable": 1})),
        lambda: api.delete("Job", "x", NS),
        lambda: api.config_state("x", NS),
        lambda: api.job_finished("x", NS),
        lambda: api.job_log("x", NS),
        lambda: api.ready_pods(NS, objects.selector()),
    ]
    for call in calls:
        with pytest.raises(ExternalError, match=f"Kubernetes API at {stopped.url} unreachable"):
            call()


def test_no_kubeconfig_and_no_cluster_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing-kubeconfig"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ExternalError, match="cannot configure the Kubernetes client"):
        KubeApi()


def test_an_invalid_object_is_refused_before_anything_is_sent(api, kube, objects):
    bad = objects.deployment(replicas=1)
    bad["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = "Sometimes"
    bad["spec"]["replica"] = 1
    with pytest.raises(InvalidObject, match="Deployment tfserve"):
        api.apply(bad)
    assert kube.emulator.requests == []


def test_the_emulator_follows_the_documented_patch_and_conflict_semantics(kube, kubeconfig):
    """The emulator itself: the rules the tests above rely on (checked through the real client)."""
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException

    core = client.CoreV1Api(config.new_client_from_config(config_file=str(kubeconfig)))
    cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "c", "namespace": NS},
        "data": {"a": "1"},
    }
    created = core.create_namespaced_config_map(NS, cm)
    with pytest.raises(ApiException) as exists:
        core.create_namespaced_config_map(NS, cm)
    assert (exists.value.status, json.loads(exists.value.body)["reason"]) == (409, "AlreadyExists")
    stale = {
        "metadata": {"resourceVersion": str(int(created.metadata.resource_version) - 1)},
        "data": {"b": "2"},
    }
    with pytest.raises(ApiException) as conflict:
        core.patch_namespaced_config_map("c", NS, stale)
    assert (conflict.value.status, json.loads(conflict.value.body)["reason"]) == (409, "Conflict")
    patched = core.patch_namespaced_config_map("c", NS, {"data": {"b": "2", "a": None}})
    assert patched.data == {"b": "2"}
    with pytest.raises(ApiException) as missing:
        core.read_namespaced_config_map("nope", NS)
    assert missing.value.status == 404

    containers = [{"name": "a", "image": "x", "ports": [{"containerPort": 1}]}, {"name": "b", "image": "y"}]
    patch = [{"name": "a", "ports": [{"containerPort": 2}]}, {"name": "b", "$patch": "delete"}]
    assert strategic_merge({"containers": containers}, {"containers": patch}, ("spec",)) == {
        "containers": [{"name": "a", "image": "x", "ports": [{"containerPort": 1}, {"containerPort": 2}]}]
    }
    assert merge_patch({"l": [1, 2], "m": {"k": 1, "j": 2}}, {"l": [3], "m": {"k": None}}) == {
        "l": [3],
        "m": {"j": 2},
    }


def refusal(call) -> tuple[int, dict]:
    """The HTTP status and Status body the API server answered ``call()`` with."""
    from kubernetes.client.exceptions import ApiException

    with pytest.raises(ApiException) as caught:
        call()
    return caught.value.status, json.loads(caught.value.body)


def test_the_emulator_judges_objects_by_the_api_servers_rules_not_by_branchops(kube, kubeconfig, objects):
    """Through the real client, with nothing of branchops in the way: a body the API server cannot decode
    is a 400, unknown fields follow fieldValidation, a failed validation is a 422 naming its causes."""
    from kubernetes import client, config

    api_client = config.new_client_from_config(config_file=str(kubeconfig))
    apps, core = client.AppsV1Api(api_client), client.CoreV1Api(api_client)

    no_selector = objects.deployment(replicas=1)
    del no_selector["spec"]["selector"]
    status, body = refusal(lambda: apps.create_namespaced_deployment(NS, no_selector))
    assert (status, body["kind"], body["reason"]) == (422, "Status", "Invalid")
    assert body["details"]["causes"] == [
        {"reason": "FieldValueRequired", "message": "Required value", "field": "spec.selector"}
    ]
    assert body["message"] == 'Deployment.apps "tfserve" is invalid: spec.selector: Required value'

    mistyped = objects.deployment(replicas=1)
    mistyped["spec"]["replicas"] = "two"
    status, body = refusal(lambda: apps.create_namespaced_deployment(NS, mistyped))
    assert (status, body["reason"]) == (400, "BadRequest")
    assert "cannot be handled as a Deployment" in body["message"] and "spec.replicas" in body["message"]

    typo = objects.deployment(replicas=1)
    typo["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"periodSeconds": 5}
    status, body = refusal(lambda: apps.create_namespaced_deployment(NS, typo, field_validation="Strict"))
    assert (status, body["reason"]) == (400, "BadRequest")
    assert 'unknown field "spec.template.spec.containers[0].readinesProbe"' in body["message"]
    assert kube.emulator.of("deployments", NS) == {}

    # Without Strict (the client's default) the server keeps the object and drops the field, saying so
    # only in a Warning header: the reason the kube fixture fails a test on any warning.
    apps.create_namespaced_deployment(NS, typo)
    stored = kube.emulator.get("deployments", NS, "tfserve")
    assert "readinesProbe" not in stored["spec"]["template"]["spec"]["containers"][0]
    assert kube.emulator.warnings == ['unknown field "spec.template.spec.containers[0].readinesProbe"']

    status, body = refusal(
        lambda: apps.patch_namespaced_deployment("tfserve", NS, {"spec": {"replicas": "three"}})
    )
    assert (status, body["reason"]) == (422, "Invalid")
    assert [c["field"] for c in body["details"]["causes"]] == ["patch"]

    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "Models_1", "namespace": NS},
        "spec": {"accessModes": ["ReadWriteSometimes"]},
    }
    status, body = refusal(lambda: core.create_namespaced_persistent_volume_claim(NS, claim))
    assert (status, body["reason"]) == (422, "Invalid")
    assert {(c["field"], c["reason"]) for c in body["details"]["causes"]} == {
        ("metadata.name", "FieldValueInvalid"),
        ("spec.accessModes", "FieldValueNotSupported"),
        ("spec.resources[storage]", "FieldValueRequired"),
    }
    assert kube.emulator.of("persistentvolumeclaims", NS) == {}
    # Refused and warned on purpose: not what the fixture's teardown is looking for.
    kube.emulator.rejected.clear()
    kube.emulator.warnings.clear()


def test_an_object_the_api_server_refuses_fails_the_apply_with_its_reason(api, kube, objects):
    """A schema cannot say that a Deployment's selector must select its own pods; the API server does,
    and KubeApi reports its 422 with the server's reason rather than the generic failure."""
    stray = objects.deployment(replicas=1)
    stray["spec"]["selector"]["matchLabels"]["branchops.io/track"] = "elsewhere"
    with pytest.raises(
        ExternalError,
        match=r"Kubernetes refused Deployment serving/tfserve: HTTP 422 "
        r"Unprocessable Entity: .*`selector` does not match template `labels`",
    ):
        api.apply(stray)
    assert kube.emulator.of("deployments", NS) == {}
    kube.emulator.rejected.clear()  # refused on purpose


def test_a_rollout_through_kube_api_loads_the_version_then_rolls_back_on_a_bad_export(api, kube):
    """The backend's own calls in their real order: the export's log has no sample, so the first rollout
    stops before any pod loads the version and leaves no Deployment or model config behind."""
    from pathlib import Path

    from branchops.serving.kubernetes_backend import KubernetesServing
    from branchops.serving.release import Release

    em = kube.emulator

    def tf_serving(pod, method, path, body):  # a replica serves what its ConfigMap's models.config lists
        config_map = next(v["configMap"]["name"] for v in pod["spec"]["volumes"] if "configMap" in v)
        served = em.get("configmaps", NS, config_map)["data"]["models.config"]
        version = path.rsplit("/", 1)[-1]
        if f"versions: {version}\n" in served:
            return 200, {
                "model_version_status": [
                    {
                        "version": version,
                        "state": "AVAILABLE",
                        "status": {"error_code": "OK", "error_message": ""},
                    }
                ]
            }
        return 404, {"error": f"Servable not found for request: Specific(djia, {version})"}

    em.proxy_handler = tf_serving
    em.job_outcomes["tfserve-copy-v1"] = (True, 'BRANCHOPS-MODEL-METADATA\n{"model": "djia", "version": 1}\n')
    config = BranchopsConfig.model_validate(
        {
            "approvers": {s: ["lead"] for s in STAGES},
            "serving": {
                "backend": "kubernetes",
                "model_name": "djia",
                "kubernetes": {"replicas": 2, "istio": True, "rollout_timeout_s": 60},
            },
        }
    )
    serving = KubernetesServing(config, Path("."), api=api)
    serving.poll_s = 0.01
    release = Release.model_validate(
        {
            "model": "djia",
            "version": 1,
            "strategy": "rolling",
            "source": {"volume": "djia-models", "path": "djia/1"},
        }
    )
    result = serving.deploy(release)

    assert result.outcome == "rolled_back", result.reason
    assert result.reason.startswith("metadata failed: ") and "has no sample to smoke-test" in result.reason
    assert [(c.name, c.ok) for c in result.checks] == [("copy", True), ("metadata", False)]
    assert em.proxied == []  # the export is read from the copy Job's log before any pod loads it
    # Nothing was served before: the failed first rollout leaves no Deployment or model config behind.
    assert em.of("deployments", NS) == {} and em.of("configmaps", NS) == {}
    assert serving.live_version() is None
    assert em.get("virtualservices", NS, "tfserve")["spec"]["http"][0]["route"][1]["weight"] == 0


def test_an_api_refusal_mid_rollout_rolls_back_instead_of_crashing(api, kube):
    from pathlib import Path

    from branchops.serving.kubernetes_backend import KubernetesServing
    from branchops.serving.release import Release

    config = BranchopsConfig.model_validate(
        {
            "approvers": {s: ["lead"] for s in STAGES},
            "serving": {
                "backend": "kubernetes",
                "model_name": "djia",
                "kubernetes": {"rollout_timeout_s": 60},
            },
        }
    )
    serving = KubernetesServing(config, Path("."), api=api)
    serving.poll_s = 0.01
    kube.emulator.fail_next(
        "GET",
        "jobs/status",
        403,
        "Forbidden",
        FORBIDDEN.format(resource="jobs/status", verb="get").replace('""', '"batch"'),
    )
    release = Release.model_validate(
        {
            "model": "djia",
            "version": 1,
            "strategy": "rolling",
            "source": {"volume": "djia-models", "path": "djia/1"},
        }
    )
    result = serving.deploy(release)
    assert result.outcome == "rolled_back"
    assert result.reason.startswith(
        "kubernetes failed: could not read Job serving/tfserve-copy-v1: HTTP 403 "
        "Forbidden: jobs/status is forbidden"
    )


# -- TF Serving in the pods: labels before loads, and a config that arrives late -------------------------


def crash_looping(pod: dict) -> bool:
    statuses = pod["status"].get("containerStatuses") or [{}]
    return (statuses[0].get("state") or {}).get("waiting", {}).get("reason") == "CrashLoopBackOff"


def test_new_pods_start_although_their_label_names_a_version_not_loaded_yet(api, kube, objects):
    """TF Serving applies version labels before it loads anything (server_core.cc): a canary pod starts
    with {"stable": canary} and a new stable pod (scale-out, eviction) with the stable label, both
    naming a version nothing has loaded yet. The Deployment's flag lets them start."""
    em = kube.emulator
    model_configs(api, objects)
    api.apply(objects.config_map([2], {"stable": 2}, track="canary"))
    api.apply(objects.deployment(replicas=2))
    api.apply(objects.deployment("canary", replicas=1))
    em.settle()
    pods = em.of("pods", NS).values()
    assert not [p["metadata"]["name"] for p in pods if crash_looping(p)]
    assert len(api.ready_pods(NS, objects.selector("stable"))) == 2
    (canary,) = api.ready_pods(NS, objects.selector("canary"))
    client = api.proxy_client(NS, f"pods/{canary}:8501", "djia")
    assert client.status(label="stable")[0]["version"] == "2"


def test_without_the_flag_a_labelled_config_makes_tf_serving_pods_crash_loop(api, kube, objects):
    """The emulator says no where TF Serving does: the first config is reloaded with nothing loaded,
    so any label fails it and the container exits, again at every restart."""
    em = kube.emulator
    model_configs(api, objects)
    deployment = objects.deployment(replicas=1)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["args"] = [a for a in container["args"] if "allow_version_labels" not in a]
    api.apply(deployment)
    em.settle(8)
    (pod,) = em.pods_of("deployments", NS, "tfserve")
    status = pod["status"]["containerStatuses"][0]
    assert crash_looping(pod) and status["restartCount"] >= 3
    assert (
        "version 1 of model djia, which is not currently available"
        in status["lastState"]["terminated"]["message"]
    )
    assert api.ready_pods(NS, objects.selector("stable")) == []
    # Without labels the same pod starts.
    api.apply(objects.config_map([1], {}, state=state([1], 1)))
    em.settle(4)
    assert len(api.ready_pods(NS, objects.selector("stable"))) == 1


def test_moving_a_label_to_a_version_not_loaded_is_refused_even_with_the_flag(api, kube, objects):
    """The flag admits new labels only: moving ``stable`` onto a version that is not AVAILABLE yet is
    refused at the poll, and the replica keeps serving what it had."""
    em = kube.emulator
    em.config_poll_s = 0.01
    model_configs(api, objects)
    api.apply(objects.deployment(replicas=1))
    em.settle()
    (pod,) = api.ready_pods(NS, objects.selector("stable"))
    api.apply(objects.config_map([1, 2], {"stable": 2}, state=state([1, 2], 2)))  # both at once
    time.sleep(0.05)
    em.settle(2)
    replica = em.replica(NS, pod)
    assert replica.labels == {"stable": 1} and replica.available == {1}
    assert "version 2 of model djia" in replica.error
    api.apply(objects.config_map([1, 2], {"stable": 1}, state=state([1, 2], 1)))  # load first
    time.sleep(0.05)
    em.settle(2)
    assert replica.available == {1, 2} and replica.labels == {"stable": 1}
    api.apply(objects.config_map([1, 2], {"stable": 2}, state=state([1, 2], 2)))  # then move the label
    time.sleep(0.05)
    em.settle(2)
    assert replica.labels == {"stable": 2} and not replica.error


def test_a_config_map_change_reaches_tf_serving_after_the_kubelet_sync_and_its_poll(api, kube, objects):
    """ConfigMap volumes change only after the kubelet syncs them, and TF Serving reads the file once per
    poll interval: right after the update, the label still answers with the old version."""
    em = kube.emulator
    em.kubelet_sync_s, em.config_poll_s = 0.4, 0.2
    model_configs(api, objects)
    api.apply(objects.config_map([1, 2], {"stable": 1}, state=state([1, 2], 1)))
    api.apply(objects.deployment(replicas=1))
    api.apply(objects.service())
    em.settle()
    service = api.proxy_client(NS, "services/tfserve:http", "djia")
    assert service.status(label="stable")[0]["version"] == "1"

    updated = time.monotonic()
    api.apply(objects.config_map([1, 2], {"stable": 2}, state=state([1, 2], 2)))
    seen = []
    while time.monotonic() - updated < 2.0:
        seen.append((time.monotonic() - updated, service.status(label="stable")[0]["version"]))
        time.sleep(0.02)
    first_new = next(elapsed for elapsed, version in seen if version == "2")
    assert seen[0][1] == "1"  # the live check right after the update sees the old label
    assert em.kubelet_sync_s <= first_new <= em.kubelet_sync_s + em.config_poll_s + 0.3
    assert all(version == "2" for elapsed, version in seen if elapsed > first_new)
    # What a rollout may wait for at most, with the manifests' interval:
    from branchops.serving.kubernetes_manifests import MODEL_CONFIG_POLL_S, model_config_visible_within_s

    assert model_config_visible_within_s() >= 60 + MODEL_CONFIG_POLL_S


# -- the model snapshot's clone ---------------------------------------------------------------------------


def ready_snapshot(em, namespace: str, name: str, restore_size: str) -> None:
    """A VolumeSnapshot as the storage backend leaves it: ready, with the size a restore needs."""
    em.objects[("volumesnapshots", namespace, name)] = {
        "apiVersion": "snapshot.storage.k8s.io/v1",
        "kind": "VolumeSnapshot",
        "metadata": {"name": name, "namespace": namespace, "uid": "snap-uid", "resourceVersion": "1"},
        "spec": {
            "source": {"persistentVolumeClaimName": "djia-models"},
            "volumeSnapshotClassName": "trident",
        },
        "status": {"readyToUse": True, "restoreSize": restore_size},
    }


def test_a_clone_sized_from_the_snapshots_restore_size_binds(api, kube, objects):
    em = kube.emulator
    ready_snapshot(em, NS, "djia-models-run3", "20Gi")
    size = api.snapshot_restore_size("djia-models-run3", NS)
    assert size == "20Gi"
    api.apply(objects.source_clone("djia-models-run3", 3, restore_size=size))
    em.settle(2)
    claim = em.get("persistentvolumeclaims", NS, "tfserve-src-3")
    assert claim["status"]["phase"] == "Bound" and claim["status"]["capacity"]["storage"] == "20Gi"
    with pytest.raises(ExternalError, match="could not read VolumeSnapshot serving/absent: HTTP 404"):
        api.snapshot_restore_size("absent", NS)


def test_a_clone_smaller_than_the_restore_size_or_from_another_namespace_never_binds(api, kube, objects):
    """What the CSI provisioner refuses: a claim below the snapshot's restoreSize (the serving volume's
    10Gi against a 20Gi snapshot), and a dataSource naming a snapshot that is in another namespace."""
    em = kube.emulator
    ready_snapshot(em, NS, "djia-models-run3", "20Gi")
    ready_snapshot(em, "kubeflow-user", "djia-models-run4", "20Gi")
    api.apply(objects.source_clone("djia-models-run3", 3))  # requests serving_volume_size, 10Gi
    api.apply(objects.source_clone("djia-models-run4", 4, restore_size="20Gi"))
    em.settle(5)
    assert em.get("persistentvolumeclaims", NS, "tfserve-src-3")["status"]["phase"] == "Pending"
    assert em.get("persistentvolumeclaims", NS, "tfserve-src-4")["status"]["phase"] == "Pending"
    reasons = {name: message for _, name, _, message in em.events}
    assert "requested volume size 10737418240 is less than the size 21474836480" in reasons["tfserve-src-3"]
    assert 'volumesnapshots.snapshot.storage.k8s.io "djia-models-run4" not found' in reasons["tfserve-src-4"]


def test_a_pod_whose_readiness_probe_fails_takes_no_traffic(api, kube, objects):
    em = kube.emulator
    model_configs(api, objects)
    em.fails_readiness = lambda pod: pod["metadata"]["name"].startswith("tfserve-canary")
    api.apply(objects.deployment(replicas=1))
    api.apply(objects.deployment("canary", replicas=1))
    api.apply(objects.service())
    em.settle()
    assert api.ready_pods(NS, objects.selector("canary")) == []
    assert len(api.ready_pods(NS, objects.selector("stable"))) == 1
    service = api.proxy_client(NS, "services/tfserve:http", "djia")
    for _ in range(4):  # the Service selects both tracks, but only the ready pod has endpoints
        service.status(label="stable")
    assert {pod for pod, _, _ in em.proxied} == set(api.ready_pods(NS, objects.selector("stable")))
    em.fails_readiness = None
    em.settle(1)
    assert len(api.ready_pods(NS, objects.selector("canary"))) == 1
