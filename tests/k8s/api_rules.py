"""What a Kubernetes 1.30 API server refuses: the emulated API servers' own idea of a valid object.

The emulators (tests/storage/storage_k8s_emulator.py, tests/serving/k8s_emulator.py) must say no where a
real API server says no, so their judgement comes from Kubernetes' own descriptions and never from
branchops' validator (``branchops.k8s.validate``), which is the thing under test:

* built-in kinds: the OpenAPI schemas of Kubernetes :data:`KUBERNETES_VERSION` as the kubernetes-validate
  package ships them, in their strict variant (every object lists its fields, so an unknown one shows);
* ``snapshot.storage.k8s.io`` kinds: the upstream CRDs' ``openAPIV3Schema`` (the files under
  src/branchops/schemas/crds/ are those schemas, read here as data), with the structural-schema semantics
  of a CRD: undeclared fields are unknown, ``x-kubernetes-int-or-string``, and the CEL rules of
  ``x-kubernetes-validations``;
* ObjectMeta (of every kind, custom resources included): names, label and annotation keys and values, as
  documented in "Object Names and IDs" and "Labels and Selectors";
* the few field rules of the kinds the code sends that the schemas cannot state (a Deployment's
  selector must select its template, a Job's pods restart OnFailure or Never, a PVC asks for an access
  mode and a storage size, the enumerations of containers and Services), as documented for those kinds;
* what the server answers, by the API reference: the body is decoded first, and a field of the wrong
  type fails decoding (400 BadRequest on create and update; 422 on a patch, whose result is decoded
  after merging); unknown fields follow the request's ``fieldValidation`` directive (Strict: refused;
  Warn, the default since 1.23: dropped with a ``Warning`` header; Ignore: dropped silently); then
  validation, whose failures are ``422 Invalid`` with one ``details.causes`` entry per field.

Not the real thing: only the semantic checks listed here are made (no defaulting, no admission, no
cross-object checks), and CEL rules are understood only in the forms the shipped CRDs use (any other
form raises, so a new rule cannot be silently skipped).
"""

from __future__ import annotations

import copy
import functools
import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
from referencing import Registry, Resource

# The Kubernetes minor version the kubernetes Python client used here (30.x) speaks.
KUBERNETES_VERSION = "1.30"

CRD_DIR = Path(__file__).resolve().parents[2] / "src" / "branchops" / "schemas" / "crds"
_OBJECT_META = (
    "https://kubernetes.io/api/_definitions.json#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
)

# "Object Names and IDs" and "Labels and Selectors"
# (kubernetes.io/docs/concepts/overview/working-with-objects/)
_DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN = re.compile(rf"{_DNS1123_LABEL}(\.{_DNS1123_LABEL})*")
_DNS1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
# Kinds whose names must be DNS-1035 labels rather than DNS-1123 subdomains.
_LABEL_NAMED_KINDS = {"Service"}
_ACCESS_MODES = ["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"]
_PROTOCOLS = ["SCTP", "TCP", "UDP"]
_JSON_TYPES = {
    dict: "object",
    list: "array",
    str: "string",
    bool: "boolean",
    int: "integer",
    float: "number",
    type(None): "null",
}


@dataclass
class Cause:
    """One entry of a Status' ``details.causes``: reason (FieldValueRequired ...), message, field path."""

    reason: str
    message: str
    field: str

    def as_dict(self) -> dict[str, str]:
        return {"reason": self.reason, "message": self.message, "field": self.field}

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


@dataclass
class Review:
    """The server's verdict on one object: what it would store, the warnings it sends, or its refusal."""

    obj: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    status: dict[str, Any] | None = None  # the Status body of a refusal
    schema: str = ""  # what the object was checked against

    @property
    def refused(self) -> bool:
        return self.status is not None

    @property
    def code(self) -> int:
        return self.status["code"] if self.status else 200


def status(code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    """A ``Status`` body as the API server sends it with an error."""
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": details or {},
        "code": code,
    }


def invalid(obj: dict[str, Any], causes: list[Cause]) -> dict[str, Any]:
    """``422 Invalid``: ``<Kind>[.<group>] "<name>" is invalid: <cause>`` or ``[<cause>, <cause>]``."""
    kind, group, name = obj.get("kind", ""), _group(obj), _name(obj)
    listed = str(causes[0]) if len(causes) == 1 else "[" + ", ".join(str(c) for c in causes) + "]"
    qualified = f"{kind}.{group}" if group else kind
    return status(
        422,
        "Invalid",
        f'{qualified} "{name}" is invalid: {listed}',
        {"name": name, "group": group, "kind": kind, "causes": [c.as_dict() for c in causes]},
    )


def _group(obj: dict[str, Any]) -> str:
    api_version = str(obj.get("apiVersion", ""))
    return api_version.split("/")[0] if "/" in api_version else ""


def _name(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata")
    return str(meta.get("name") or "") if isinstance(meta, dict) else ""


def _path(parts: Any) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _json_type(value: Any) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


# -- schemas -------------------------------------------------------------------------------------------


@functools.cache
def _builtin_registry() -> tuple[Any, Registry]:
    folder = resources.files("kubernetes_validate").joinpath(
        "kubernetes-json-schema", f"v{KUBERNETES_VERSION}.0-local-strict"
    )
    definitions = json.loads(folder.joinpath("_definitions.json").read_text(encoding="utf-8"))
    return folder, Resource.from_contents(definitions) @ Registry()


@functools.cache
def _builtin_schema(api_version: str, kind: str) -> dict[str, Any] | None:
    """The strict schema of a built-in kind (files named as kubernetes-validate names them), or None."""
    folder, _ = _builtin_registry()
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    entry = folder.joinpath(f"{kind.lower()}-{group_version}.json")
    if not entry.is_file():
        return None
    return json.loads(entry.read_text(encoding="utf-8"))


def _structural(schema: Any) -> Any:
    """A CRD's schema as JSON Schema with a CRD's meaning: undeclared fields are unknown (the server
    prunes them) unless ``x-kubernetes-preserve-unknown-fields``; int-or-string takes either type."""
    if isinstance(schema, list):
        return [_structural(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _structural(value) for key, value in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    if out.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    return out


@functools.cache
def _crds() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> {"group", "kind", "schema" (as shipped), "structural"}, from CRD_DIR."""
    found = {}
    for path in sorted(CRD_DIR.glob("*.json")):
        doc = json.loads(path.read_text(encoding="utf-8"))
        found[(f"{doc['group']}/{doc['version']}", doc["kind"])] = {
            "group": doc["group"],
            "kind": doc["kind"],
            "schema": doc["openAPIV3Schema"],
            "structural": _structural(doc["openAPIV3Schema"]),
        }
    return found


# -- decoding: types and unknown fields ----------------------------------------------------------------


@dataclass
class _Findings:
    unknown: list[tuple[tuple[Any, ...], str]] = field(default_factory=list)  # (parent path, field name)
    wrong_type: list[tuple[str, str, str]] = field(default_factory=list)  # (path, expected type, JSON type)
    causes: list[Cause] = field(default_factory=list)  # everything else the schema says


def _examine(validator: Any, instance: Any, prefix: tuple[Any, ...], custom: bool) -> _Findings:
    findings = _Findings()
    for error in validator.iter_errors(instance):
        _classify(error, prefix, custom, findings)
    return findings


def _classify(error: Any, prefix: tuple[Any, ...], custom: bool, findings: _Findings) -> None:
    where = prefix + tuple(error.absolute_path)
    if error.validator == "additionalProperties" and error.validator_value is False:
        declared = set(error.schema.get("properties", {}))
        patterns = [re.compile(p) for p in error.schema.get("patternProperties", {})]
        for key in error.instance:
            if key not in declared and not any(p.search(key) for p in patterns):
                findings.unknown.append((where, key))
        return
    if error.validator == "type" or (
        error.validator in ("oneOf", "anyOf")
        and error.context
        and all(sub.validator == "type" for sub in error.context)
    ):
        expected = (
            [error.validator_value]
            if error.validator == "type"
            else [sub.validator_value for sub in error.context]
        )
        names = [t for item in expected for t in (item if isinstance(item, list) else [item]) if t != "null"]
        findings.wrong_type.append(
            (_path(where), " or ".join(dict.fromkeys(names)), _json_type(error.instance))
        )
        return
    if error.validator == "required":
        for missing in error.validator_value:
            if isinstance(error.instance, dict) and missing not in error.instance:
                findings.causes.append(
                    Cause("FieldValueRequired", "Required value", _path(where + (missing,)))
                )
        return
    if error.validator == "enum":
        allowed = ", ".join(json.dumps(v) for v in error.validator_value)
        findings.causes.append(
            Cause(
                "FieldValueNotSupported",
                f"Unsupported value: {json.dumps(error.instance)}: supported values: {allowed}",
                _path(where),
            )
        )
        return
    detail = f"{_path(where) or '<root>'} in body {error.message}" if custom else error.message
    findings.causes.append(
        Cause("FieldValueInvalid", f"Invalid value: {json.dumps(error.instance)}: {detail}", _path(where))
    )


def _drop(obj: Any, parent: tuple[Any, ...], key: str) -> None:
    for part in parent:
        obj = obj[part]
    obj.pop(key, None)


# -- CEL rules of CRDs -------------------------------------------------------------------------------

_TRANSITION_EQUAL = re.compile(r"^self == oldSelf$")
_TRANSITION_KEPT = re.compile(r"^!has\(oldSelf\.(\w+)\) \|\| has\(self\.(\w+)\)$")
_NON_EMPTY = re.compile(r"^size\(self\) > 0$")
_MISSING = object()


def _rule_holds(rule: str, value: Any, old: Any) -> bool:
    """One ``x-kubernetes-validations`` rule. Transition rules (about ``oldSelf``) hold on create, as
    the API server evaluates them only on update."""
    if _NON_EMPTY.match(rule):
        return len(value) > 0
    if _TRANSITION_EQUAL.match(rule):
        return old is _MISSING or value == old
    kept = _TRANSITION_KEPT.match(rule)
    if kept and kept.group(1) == kept.group(2):
        return (
            old is _MISSING or not isinstance(old, dict) or kept.group(1) not in old or kept.group(1) in value
        )
    raise NotImplementedError(
        f"the emulated API server cannot evaluate the CRD rule {rule!r}: teach it this "
        "form (tests/k8s/api_rules.py) rather than skipping it"
    )


def _cel_causes(schema: dict[str, Any], value: Any, old: Any, where: tuple[Any, ...]) -> list[Cause]:
    causes = []
    for rule in schema.get("x-kubernetes-validations", []):
        if not _rule_holds(rule["rule"], value, old):
            causes.append(
                Cause(
                    "FieldValueInvalid",
                    f'Invalid value: "{_json_type(value)}": '
                    f'{rule.get("message") or "failed rule: " + rule["rule"]}',
                    _path(where),
                )
            )
    if isinstance(value, dict):
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                old_sub = old.get(key, _MISSING) if isinstance(old, dict) else _MISSING
                causes += _cel_causes(sub, value[key], old_sub, where + (key,))
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            causes += _cel_causes(schema["items"], item, _MISSING, where + (index,))
    return causes


# -- field rules the schemas cannot state --------------------------------------------------------------


def _key_causes(key: Any, where: str) -> list[Cause]:
    """A label or annotation key: an optional DNS-subdomain prefix and '/', then a qualified name."""
    if not isinstance(key, str):
        return [
            Cause("FieldValueInvalid", f"Invalid value: {json.dumps(key)}: a key must be a string", where)
        ]
    prefix, _, name = key.rpartition("/")
    problems = []
    if prefix and (len(prefix) > 253 or not _DNS1123_SUBDOMAIN.fullmatch(prefix)):
        problems.append("prefix part must be a lowercase RFC 1123 subdomain")
    if not name or len(name) > 63 or not _QUALIFIED_NAME.fullmatch(name):
        problems.append(
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must start "
            "and end with an alphanumeric character (at most 63)"
        )
    return [Cause("FieldValueInvalid", f"Invalid value: {json.dumps(key)}: {p}", where) for p in problems]


def _label_causes(labels: Any, where: str) -> list[Cause]:
    causes: list[Cause] = []
    if not isinstance(labels, dict):
        return causes
    for key, value in labels.items():
        causes += _key_causes(key, where)
        if not isinstance(value, str) or len(value) > 63 or (value and not _QUALIFIED_NAME.fullmatch(value)):
            causes.append(
                Cause(
                    "FieldValueInvalid",
                    f"Invalid value: {json.dumps(value)}: a valid label must be "
                    "an empty string or consist of alphanumeric characters, '-', '_' or '.', and must "
                    "start and end with an alphanumeric character (at most 63)",
                    f"{where}",
                )
            )
    return causes


def _meta_causes(obj: dict[str, Any]) -> list[Cause]:
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    causes = []
    name = meta.get("name")
    if not name and not meta.get("generateName"):
        causes.append(
            Cause("FieldValueRequired", "Required value: name or generateName is required", "metadata.name")
        )
    elif name:
        if obj.get("kind") in _LABEL_NAMED_KINDS:
            if len(name) > 63 or not _DNS1035_LABEL.fullmatch(name):
                causes.append(
                    Cause(
                        "FieldValueInvalid",
                        f"Invalid value: {json.dumps(name)}: a DNS-1035 label must "
                        "consist of lower case alphanumeric characters or '-', start with an alphabetic "
                        "character, and end with an alphanumeric character",
                        "metadata.name",
                    )
                )
        elif len(name) > 253 or not _DNS1123_SUBDOMAIN.fullmatch(name):
            causes.append(
                Cause(
                    "FieldValueInvalid",
                    f"Invalid value: {json.dumps(name)}: a lowercase RFC 1123 "
                    "subdomain must consist of lower case alphanumeric characters, '-' or '.', and must "
                    "start and end with an alphanumeric character",
                    "metadata.name",
                )
            )
    causes += _label_causes(meta.get("labels"), "metadata.labels")
    for key in (meta.get("annotations") or {}) if isinstance(meta.get("annotations"), dict) else {}:
        causes += _key_causes(key, "metadata.annotations")
    return causes


def _dig(obj: Any, *path: str) -> Any:
    for key in path:
        obj = obj.get(key) if isinstance(obj, dict) else None
    return obj


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A LabelSelector (matchLabels and matchExpressions) against a label set."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = (
            expression.get("key"),
            expression.get("operator"),
            expression.get("values") or [],
        )
        if (
            (operator == "In" and labels.get(key) not in values)
            or (operator == "NotIn" and labels.get(key) in values)
            or (operator == "Exists" and key not in labels)
            or (operator == "DoesNotExist" and key in labels)
        ):
            return False
    return True


def _one_of(value: Any, allowed: list[str], where: str) -> list[Cause]:
    if value is None or value in allowed:
        return []
    return [
        Cause(
            "FieldValueNotSupported",
            f"Unsupported value: {json.dumps(value)}: supported values: "
            f"{', '.join(json.dumps(a) for a in allowed)}",
            where,
        )
    ]


def _pod_spec_causes(pod_spec: Any, where: str) -> list[Cause]:
    """The enumerations of a pod's containers (the API reference lists their values)."""
    causes: list[Cause] = []
    if not isinstance(pod_spec, dict):
        return causes
    for group in ("initContainers", "containers"):
        for index, container in enumerate(pod_spec.get(group) or []):
            if not isinstance(container, dict):
                continue
            at = f"{where}.{group}[{index}]"
            causes += _one_of(
                container.get("imagePullPolicy"), ["Always", "IfNotPresent", "Never"], f"{at}.imagePullPolicy"
            )
            for number, port in enumerate(container.get("ports") or []):
                if isinstance(port, dict):
                    causes += _one_of(port.get("protocol"), _PROTOCOLS, f"{at}.ports[{number}].protocol")
    return causes


def _kind_causes(obj: dict[str, Any]) -> list[Cause]:
    kind, spec = obj.get("kind"), obj.get("spec") if isinstance(obj.get("spec"), dict) else {}
    causes: list[Cause] = []
    if kind == "Pod":
        causes += _pod_spec_causes(spec, "spec")
    causes += _pod_spec_causes(_dig(spec, "template", "spec"), "spec.template.spec")
    if kind == "Service":
        causes += _one_of(
            spec.get("type"), ["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"], "spec.type"
        )
        for number, port in enumerate(spec.get("ports") or []):
            if isinstance(port, dict):
                causes += _one_of(port.get("protocol"), _PROTOCOLS, f"spec.ports[{number}].protocol")
    template_labels = _dig(spec, "template", "metadata", "labels")
    if isinstance(template_labels, dict):
        causes += _label_causes(template_labels, "spec.template.metadata.labels")
    if kind == "Deployment":
        selector = spec.get("selector")
        if isinstance(selector, dict):
            causes += _label_causes(selector.get("matchLabels"), "spec.selector.matchLabels")
            if not selector.get("matchLabels") and not selector.get("matchExpressions"):
                causes.append(
                    Cause(
                        "FieldValueInvalid",
                        "Invalid value: {}: empty selector is invalid for deployment",
                        "spec.selector",
                    )
                )
            elif not _selects(selector, template_labels or {}):
                causes.append(
                    Cause(
                        "FieldValueInvalid",
                        f"Invalid value: {json.dumps(template_labels or {})}: "
                        "`selector` does not match template `labels`",
                        "spec.template.metadata.labels",
                    )
                )
        policy = _dig(spec, "template", "spec", "restartPolicy")
        if policy not in (None, "Always"):
            causes.append(
                Cause(
                    "FieldValueNotSupported",
                    f'Unsupported value: {json.dumps(policy)}: supported values: "Always"',
                    "spec.template.spec.restartPolicy",
                )
            )
    elif kind == "Job":
        policy = _dig(spec, "template", "spec", "restartPolicy")
        if policy not in ("OnFailure", "Never"):
            causes.append(
                Cause(
                    "FieldValueRequired" if policy is None else "FieldValueNotSupported",
                    'Required value: valid values: "OnFailure", "Never"'
                    if policy is None
                    else f'Unsupported value: {json.dumps(policy)}: supported values: "OnFailure", "Never"',
                    "spec.template.spec.restartPolicy",
                )
            )
    elif kind == "PersistentVolumeClaim":
        modes = spec.get("accessModes")
        if not modes:
            causes.append(
                Cause(
                    "FieldValueRequired",
                    "Required value: at least 1 access mode is required",
                    "spec.accessModes",
                )
            )
        for mode in modes or []:
            if mode not in _ACCESS_MODES:
                causes.append(
                    Cause(
                        "FieldValueNotSupported",
                        f"Unsupported value: {json.dumps(mode)}: supported "
                        f"values: {', '.join(json.dumps(m) for m in _ACCESS_MODES)}",
                        "spec.accessModes",
                    )
                )
        if (
            not _dig(spec, "resources", "requests", "storage")
            and not spec.get("dataSourceRef")
            and not spec.get("volumeName")
        ):
            causes.append(Cause("FieldValueRequired", "Required value", "spec.resources[storage]"))
    return causes


# -- the verdict -------------------------------------------------------------------------------------


def review(
    obj: dict[str, Any],
    *,
    patch: bool = False,
    field_validation: str | None = None,
    old: dict[str, Any] | None = None,
) -> Review:
    """What the API server does with ``obj`` sent to be stored (the body of a create or update, or the
    result of merging a patch when ``patch``); ``old`` is the stored object on an update or patch."""
    obj = copy.deepcopy(obj)
    directive = field_validation or "Warn"
    if directive not in ("Strict", "Warn", "Ignore"):
        return Review(
            obj,
            status=status(
                400, "BadRequest", f'fieldValidation "{directive}" is not one of "Strict", "Warn", "Ignore"'
            ),
        )
    api_version, kind = obj.get("apiVersion", ""), obj.get("kind", "")
    crd = _crds().get((api_version, kind))
    builtin = None if crd else _builtin_schema(api_version, kind)
    _, registry = _builtin_registry()
    if crd:
        findings = _examine(jsonschema.Draft202012Validator(crd["structural"]), obj, (), custom=True)
        against = f"CRD {crd['kind']} ({api_version})"
    elif builtin:
        findings = _examine(
            jsonschema.Draft202012Validator(builtin, registry=registry), obj, (), custom=False
        )
        against = f"Kubernetes {KUBERNETES_VERSION} schema"
    else:
        findings = _Findings()
        against = "metadata only: no schema for this kind"
    if not builtin and isinstance(obj.get("metadata"), dict):  # ObjectMeta of a custom resource
        meta_validator = jsonschema.Draft202012Validator({"$ref": _OBJECT_META}, registry=registry)
        meta = _examine(meta_validator, obj["metadata"], ("metadata",), custom=False)
        findings.unknown += meta.unknown
        findings.wrong_type += meta.wrong_type
        findings.causes += meta.causes

    cannot_decode = f'{kind} in version "{api_version.rpartition("/")[2]}" cannot be handled as a {kind}'
    if findings.wrong_type and (builtin or not crd):
        problems = "; ".join(
            f"json: cannot unmarshal {got} into Go struct field {path} of type {expected}"
            for path, expected, got in findings.wrong_type
        )
        if patch:
            return Review(
                obj,
                status=invalid(
                    obj, [Cause("FieldValueInvalid", f'Invalid value: "{kind}": {problems}', "patch")]
                ),
                schema=against,
            )
        return Review(obj, status=status(400, "BadRequest", f"{cannot_decode}: {problems}"), schema=against)
    unknown = [f'unknown field "{_path(parent + (key,))}"' for parent, key in findings.unknown]
    warnings = []
    if unknown and directive == "Strict":
        message = f"strict decoding error: {', '.join(unknown)}"
        if patch:
            return Review(
                obj,
                status=invalid(
                    obj, [Cause("FieldValueInvalid", f'Invalid value: "{kind}": {message}', "patch")]
                ),
                schema=against,
            )
        return Review(obj, status=status(400, "BadRequest", f"{cannot_decode}: {message}"), schema=against)
    for parent, key in sorted(findings.unknown, key=lambda item: len(item[0]), reverse=True):
        _drop(obj, parent, key)
    if directive == "Warn":
        warnings = unknown

    causes = list(findings.causes)
    if crd:
        causes += [
            Cause(
                "FieldValueTypeInvalid",
                f'Invalid value: "{got}": {path} in body must be of type {expected}: "{got}"',
                path,
            )
            for path, expected, got in findings.wrong_type
        ]
        causes += _cel_causes(crd["schema"], obj, old if old is not None else _MISSING, ())
    causes += _meta_causes(obj) + _kind_causes(obj)
    if causes:
        return Review(obj, warnings, invalid(obj, causes), against)
    return Review(obj, warnings, None, against)


def warning_header(message: str) -> str:
    """A ``Warning`` response header value (RFC 7234 form, code 299, as the API server sends them)."""
    return '299 - "' + message.replace("\\", "\\\\").replace('"', '\\"') + '"'
