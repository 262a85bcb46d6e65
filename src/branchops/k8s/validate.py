"""Check Kubernetes objects against the official schemas before anything is sent or committed.

No API server runs where branchops is developed, so every manifest and every object the code sends is
validated offline (docs/architecture.md §7):

* built-in kinds (PersistentVolumeClaim, Deployment, Service, HorizontalPodAutoscaler,
  PodDisruptionBudget, Role, ...) with ``kubernetes-validate`` in strict mode (unknown fields are
  errors) against the Kubernetes version :data:`KUBERNETES_VERSION`;
* the CSI snapshot kinds (``snapshot.storage.k8s.io/v1`` VolumeSnapshot, VolumeSnapshotClass,
  VolumeSnapshotContent) with ``jsonschema`` against the CRD schemas shipped in
  ``branchops/schemas/crds/`` (taken from kubernetes-csi/external-snapshotter, source in each file),
  made strict the way an API server with ``fieldValidation=Strict`` is: an unknown field is an error;
  their ``metadata`` is checked as a strict ObjectMeta.

Istio kinds (``networking.istio.io``, ``security.istio.io``, ...) have no schema shipped here: Istio's
CRDs are not in kubernetes-validate and are not vendored. ``validate_object`` refuses them with a
message saying so, unless the caller passes ``allow_unchecked=True``; then only apiVersion, kind and a
strict ObjectMeta are checked and the result says "unchecked".

``jsonschema`` and ``kubernetes_validate`` are imported inside the functions (start-up stays light).
"""

from __future__ import annotations

import copy
import functools
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from branchops.errors import ConfigError

# The Kubernetes minor version the kubernetes Python client pinned by kfp (30.x) speaks; the schemas
# for it ship in kubernetes-validate.
KUBERNETES_VERSION = "1.30"

_CRD_DIR = "crds"


class InvalidObject(ConfigError):
    """A Kubernetes object (or manifest document) does not match its schema."""


@dataclass(frozen=True)
class Validated:
    """What an object was checked against: ``"kubernetes 1.30 (strict)"``, a CRD schema, or unchecked."""

    kind: str
    name: str
    against: str
    checked: bool = True


def _describe(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    name = meta.get("name") or meta.get("generateName") or "<no name>"
    return f"{obj.get('kind', '<no kind>')} {name!s} ({obj.get('apiVersion', '<no apiVersion>')})"


def _path(error: Any) -> str:
    parts: list[str] = []
    for item in error.absolute_path:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "(top level)"


def _best_message(error: Any) -> str:
    """The most specific message: for oneOf/anyOf failures, the sub-error that got furthest."""
    from jsonschema.exceptions import best_match

    alternatives = error.schema.get("oneOf") if error.validator == "oneOf" else None
    if alternatives and all(set(alt) == {"required"} and len(alt["required"]) == 1 for alt in alternatives):
        names = " or ".join(alt["required"][0] for alt in alternatives)
        return f"{_path(error)}: set exactly one of {names}"
    if error.context:
        deepest = best_match(error.context)
        if deepest is not None:
            return f"{_path(deepest)}: {deepest.message}"
    return f"{_path(error)}: {error.message}"


# -- CRD schemas -----------------------------------------------------------------------------------


def _strict(schema: Any) -> Any:
    """Forbid unknown fields wherever a CRD schema lists properties and does not say otherwise.

    An API server prunes (or, with fieldValidation=Strict, rejects) fields a structural schema does not
    declare; JSON Schema allows them by default, so add ``additionalProperties: false`` to match.
    """
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _strict(value) for key, value in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@functools.cache
def _crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> shipped CRD document (with its strict schema under 'strict')."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    folder = resources.files("branchops").joinpath("schemas", _CRD_DIR)
    for entry in folder.iterdir():
        if not entry.name.endswith(".json"):
            continue
        doc = json.loads(entry.read_text(encoding="utf-8"))
        schema = copy.deepcopy(doc["openAPIV3Schema"])
        props = schema.setdefault("properties", {})
        api_version = f"{doc['group']}/{doc['version']}"
        # apiVersion and kind are free strings in a CRD schema (the server routes by URL); pin them so
        # a typo is caught here rather than as a 404 at the server.
        props["apiVersion"] = {"type": "string", "enum": [api_version]}
        props["kind"] = {"type": "string", "enum": [doc["kind"]]}
        # The kind-specific rules the CRD states in CEL (x-kubernetes-validations) that apply to a
        # create, written as JSON Schema so they are enforced offline too.
        if doc["kind"] == "VolumeSnapshot":
            spec = props["spec"]["properties"]
            # "Empty string is not allowed for this field" (rule: size(self) > 0).
            spec["volumeSnapshotClassName"]["minLength"] = 1
            # Exactly one source: the v1 CRD said so with oneOf before it moved the rule to the webhook
            # and CEL (external-snapshotter commit 03682631, same file).
            spec["source"]["oneOf"] = [
                {"required": ["persistentVolumeClaimName"]},
                {"required": ["volumeSnapshotContentName"]},
            ]
        doc = dict(doc, strict=_strict(schema))
        found[(api_version, doc["kind"])] = doc
    return found


def crd_kinds() -> list[tuple[str, str]]:
    """The (apiVersion, kind) pairs with a shipped CRD schema."""
    return sorted(_crd_schemas())


def _kubernetes_validate(obj: dict[str, Any], version: str) -> str:
    """kubernetes_validate.validate(strict), with an unsupported version reported as a ConfigError."""
    import kubernetes_validate
    from kubernetes_validate.utils import VersionNotSupportedError

    try:
        return kubernetes_validate.validate(obj, version, strict=True)
    except VersionNotSupportedError:
        raise ConfigError(
            f"kubernetes-validate {kubernetes_validate.__version__} has no schemas for Kubernetes "
            f"{version} (it ships 1.25 to {kubernetes_validate.latest_version()})"
        ) from None


def _validate_metadata(obj: dict[str, Any], where: str, version: str) -> None:
    """A custom resource's metadata is a Kubernetes ObjectMeta: check it strictly like a built-in's."""
    import kubernetes_validate

    carrier = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj.get("metadata", {})}
    try:
        _kubernetes_validate(carrier, version)
    except kubernetes_validate.ValidationError as exc:
        raise InvalidObject(f"{where}: {_best_message(exc)}") from None


def _validate_crd(obj: dict[str, Any], doc: dict[str, Any], where: str, version: str) -> str:
    import jsonschema

    validator = jsonschema.Draft202012Validator(doc["strict"])
    errors = sorted(validator.iter_errors(obj), key=lambda e: (list(e.absolute_path), e.message))
    if errors:
        details = "\n  ".join(_best_message(e) for e in errors[:10])
        raise InvalidObject(
            f"{where} does not match the {doc['plural']}.{doc['group']} CRD schema "
            f"({doc['version']}, strict):\n  {details}"
        )
    if "metadata" in obj:
        _validate_metadata(obj, where, version)
    src = doc["source"]
    return f"CRD {doc['plural']}.{doc['group']}/{doc['version']} ({src['repository']}@{src['commit'][:12]})"


# -- the public API --------------------------------------------------------------------------------


def validate_object(
    obj: Any,
    *,
    allow_unchecked: bool = False,
    where: str | None = None,
    kubernetes_version: str = KUBERNETES_VERSION,
) -> Validated:
    """Validate one Kubernetes object (a dict as sent to the API); raise :class:`InvalidObject`.

    ``where`` prefixes error messages (e.g. ``"serving/tfserve/deployment.yaml: document 2"``).
    Kinds with no schema here (Istio's, any other CRD) raise unless ``allow_unchecked``.
    ``kubernetes_version``: any minor version kubernetes-validate ships schemas for (1.25 ... 1.37).
    """
    import kubernetes_validate

    prefix = f"{where}: " if where else ""
    if not isinstance(obj, dict):
        raise InvalidObject(f"{prefix}a Kubernetes object must be a mapping, got {type(obj).__name__}")
    for key in ("apiVersion", "kind"):
        if not isinstance(obj.get(key), str) or not obj[key]:
            raise InvalidObject(f"{prefix}{_describe(obj)}: '{key}' is missing or not a string")
    if "metadata" in obj and not isinstance(obj["metadata"], dict):
        raise InvalidObject(f"{prefix}{_describe(obj)}: 'metadata' must be a mapping")
    described = f"{prefix}{_describe(obj)}"
    meta = obj.get("metadata") or {}
    name = str(meta.get("name") or meta.get("generateName") or "")

    crd = _crd_schemas().get((obj["apiVersion"], obj["kind"]))
    if crd is not None:
        return Validated(obj["kind"], name, _validate_crd(obj, crd, described, kubernetes_version))

    try:
        version = _kubernetes_validate(obj, kubernetes_version)
    except kubernetes_validate.ValidationError as exc:
        raise InvalidObject(
            f"{described} does not match the Kubernetes {exc.version} schema (strict): {_best_message(exc)}"
        ) from None
    except kubernetes_validate.SchemaNotFoundError:
        group = obj["apiVersion"].split("/")[0] if "/" in obj["apiVersion"] else "core"
        hint = " Istio's CRD schemas are not shipped with branchops." if group.endswith("istio.io") else ""
        if not allow_unchecked:
            raise InvalidObject(
                f"{described}: no schema for this kind — not a built-in kind of Kubernetes "
                f"{kubernetes_version} nor a shipped CRD ({', '.join(k for _, k in crd_kinds())}).{hint} "
                "Check apiVersion and kind, or validate with allow_unchecked=True."
            ) from None
        _validate_metadata(obj, described, kubernetes_version)
        return Validated(
            obj["kind"], name, f"unchecked: no schema for {obj['apiVersion']} {obj['kind']}", checked=False
        )
    return Validated(obj["kind"], name, f"kubernetes {version} (strict)")


def validate_manifest_file(
    path: str | Path, *, allow_unchecked: bool = False, kubernetes_version: str = KUBERNETES_VERSION
) -> list[Validated]:
    """Validate every document of a (multi-document) YAML manifest; errors name file, document, line."""
    import yaml

    from branchops.files import read_text

    file = Path(path)
    text = read_text(file, missing="manifest not found", error=InvalidObject)
    try:
        nodes = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
        documents = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{file}:{mark.line + 1}" if mark else str(file)
        raise InvalidObject(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    results: list[Validated] = []
    for index, (node, document) in enumerate(zip(nodes, documents), start=1):
        if document is None:  # an empty document (e.g. a trailing '---') is allowed
            continue
        line = node.start_mark.line + 1 if node is not None else "?"
        results.append(
            validate_object(
                document,
                allow_unchecked=allow_unchecked,
                where=f"{file}:{line} (document {index})",
                kubernetes_version=kubernetes_version,
            )
        )
    if not results:
        raise InvalidObject(f"{file}: no Kubernetes objects in the manifest")
    return results
