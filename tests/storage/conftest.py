"""Fixtures for the storage tests: an emulated Kubernetes API server (a fake at the client boundary)."""

from __future__ import annotations

import pytest

from tests.storage.storage_k8s_emulator import KubeEmulator, RunningEmulator


@pytest.fixture
def kube(tmp_path):
    """A running emulator; afterwards the API server refused nothing and dropped no unknown field (the
    kubernetes client does not show the Warning headers, so a dropped field would go unnoticed)."""
    emulator = KubeEmulator(volumes_root=tmp_path / "volumes")  # what the emulated pods mount
    with RunningEmulator(emulator) as running:
        yield running
    assert emulator.rejected == [], f"the API server refused invalid objects: {emulator.rejected}"
    assert emulator.warnings == [], f"the API server dropped unknown fields: {emulator.warnings}"


@pytest.fixture
def kubeconfig(kube, tmp_path, monkeypatch):
    path = kube.kubeconfig(tmp_path / "kubeconfig")
    monkeypatch.setenv("KUBECONFIG", str(path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    return path
