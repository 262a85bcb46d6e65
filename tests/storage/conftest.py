"""Fixtures for the storage tests: an emulated Kubernetes API server (a fake at the client boundary)."""

from __future__ import annotations


import pytest


from tests.storage.storage_k8s_emulator import KubeEmulator, RunningEmulator

from branchops.k8s.validate import validate_object


@pytest.fixture
def kube():
    """A running emulator; on teardown, every object the code sent must pass the strict schemas."""
    emulator = KubeEmulator()
    with RunningEmulator(emulator) as running:
        yield running
    assert emulator.rejected == [], f"the API server refused invalid objects: {emulator.rejected}"
    for obj in emulator.received:
        validate_object(obj)


@pytest.fixture
def kubeconfig(kube, tmp_path, monkeypatch):
    path = kube.kubeconfig(tmp_path / "kubeconfig")
    monkeypatch.setenv("KUBECONFIG", str(path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    return path
