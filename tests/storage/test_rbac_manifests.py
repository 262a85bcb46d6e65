"""The RBAC manifests in jenkins/rbac/: valid against the Kubernetes schemas (strict), consistent with
each other and with the agent pod, and granting every call the Trident backend makes (the serving role
against every call a Kubernetes rollout makes: tests/serving/test_kubernetes_rollout.py, where the emulated
cluster with TF Serving lives)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from branchops.k8s import validate_manifest_file
from branchops.storage.trident import TridentStorage

REPO = Path(__file__).resolve().parents[2]
RBAC = REPO / "jenkins" / "rbac"
NS = "kubeflow-user"


def documents() -> list[dict]:
    return [
        doc for path in sorted(RBAC.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc
    ]


def find(kind: str, name: str, namespace: str) -> dict:
    matches = [
        d
        for d in documents()
        if d["kind"] == kind and d["metadata"]["name"] == name and d["metadata"].get("namespace") == namespace
    ]
    assert len(matches) == 1, f"expected one {kind} {namespace}/{name} in jenkins/rbac/, found {len(matches)}"
    return matches[0]


@pytest.mark.parametrize("manifest", sorted(p.name for p in RBAC.glob("*.yaml")))
def test_every_manifest_is_valid_strictly(manifest: str):
    results = validate_manifest_file(RBAC / manifest)
    assert results and all(r.checked and r.against.startswith("kubernetes 1.30") for r in results)


def test_bindings_point_at_roles_and_service_accounts_that_exist():
    for binding in (d for d in documents() if d["kind"] == "RoleBinding"):
        ns = binding["metadata"]["namespace"]
        find("Role", binding["roleRef"]["name"], ns)
        for subject in binding["subjects"]:
            find("ServiceAccount", subject["name"], subject["namespace"])


def test_the_agent_pod_runs_as_the_service_account_granted_here():
    agent_pod = REPO / "jenkins" / "agent-pod.yaml"
    if not agent_pod.exists():
        pytest.skip("jenkins/agent-pod.yaml is not in this checkout")
    account = yaml.safe_load(agent_pod.read_text())["spec"]["serviceAccountName"]
    binding = find("RoleBinding", "branchops-ci-storage", NS)
    assert {"kind": "ServiceAccount", "name": account, "namespace": "jenkins"} in binding["subjects"]


def allowed(role: dict, verb: str, group: str, resource: str) -> bool:
    return any(
        group in rule["apiGroups"] and resource in rule["resources"] and verb in rule["verbs"]
        for rule in role["rules"]
    )


def test_the_storage_role_grants_every_call_the_trident_backend_makes(kube, kubeconfig):
    storage = TridentStorage(
        namespace=NS,
        storage_class="ontap-nas",
        snapshot_class="csi-snapclass",
        poll_interval_s=0.0,
        sleep=lambda _: None,
    )
    data = storage.ensure_volume("djia-data")
    storage.read_file(data, "raw/prices.csv")  # a reader pod: create, get, its log, delete
    storage.snapshot("djia-data", "snap", {})
    storage.list_snapshots("djia-data")
    storage.clone("snap", "djia-data-2")
    storage.delete_snapshot("snap")
    storage.delete_volume("djia-data-2")

    role = find("Role", "branchops-storage", NS)
    used = set(kube.emulator.requests)
    assert {verb for verb, _, _ in used} == {"get", "list", "create", "delete"}
    missing = [call for call in sorted(used) if not allowed(role, *call)]
    assert missing == [], f"jenkins/rbac/storage.yaml does not grant: {missing}"
