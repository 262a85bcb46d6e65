"""Kubernetes helpers shared by the backends: offline validation of objects and manifests (``validate``)
and the API client layer (``client``)."""

from branchops.k8s.validate import (
    KUBERNETES_VERSION,
    InvalidObject,
    Validated,
    validate_manifest_file,
    validate_object,
)

__all__ = ["KUBERNETES_VERSION", "InvalidObject", "Validated", "validate_manifest_file", "validate_object"]
