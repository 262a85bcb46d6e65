"""The pipeline-engine port: where compiled pipelines are registered and where they run.

Backends (one file each): ``local`` (a registry of compiled pipelines under the state directory, runs
with Kubeflow's own local runner) and ``kubeflow`` (the Kubeflow Pipelines API through ``kfp.Client``).
Both name a pipeline version by the hash of its compiled spec, so stages find each other's outputs by
content: kf-pipeline uploads, training looks the version up by the hash of the spec it compiles.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from branchops.errors import ConfigError

RunState = Literal["SUCCEEDED", "FAILED", "TIMEOUT"]
ProgressCallback = Callable[[str], None]

# KFP resource names: what Kubeflow's UI and API accept, and safe as a directory name locally.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class CompiledPipeline:
    """A compiled pipeline spec (IR YAML) and the sha256 of its bytes, which names its version."""

    spec: bytes
    spec_hash: str

    @property
    def version_name(self) -> str:
        return self.spec_hash


@dataclass(frozen=True)
class Upload:
    pipeline_id: str
    version_id: str
    version_name: str
    created: bool  # False when this exact spec was already registered

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RunResult:
    run_id: str
    state: RunState
    outputs: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    reused: bool = False  # True when a run of that name already existed and was returned as is
    started_at: str | None = None
    finished_at: str | None = None
    duration_s: float | None = None

    @property
    def succeeded(self) -> bool:
        return self.state == "SUCCEEDED"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_name(kind: str, name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(
            f"{kind} name {name!r} is not valid: use letters, digits, '.', '_' or '-' "
            "(at most 128 characters, starting with a letter or digit)"
        )
    return name


class PipelineEngine(abc.ABC):
    """Register compiled pipelines (upsert by spec hash) and run them, idempotently by run name."""

    name: str

    @abc.abstractmethod
    def upsert(self, pipeline_name: str, compiled: CompiledPipeline, description: str = "") -> Upload:
        """Register ``compiled`` as the version named by its spec hash.

        A new pipeline gets that version as its first one; an existing pipeline gets a new version;
        a spec registered before is not uploaded again (``created`` is False).
        """

    @abc.abstractmethod
    def find_version(self, pipeline_name: str, version_name: str) -> Upload | None:
        """The registered version of that name, or None."""

    @abc.abstractmethod
    def run(
        self,
        experiment: str,
        upload: Upload,
        run_name: str,
        params: dict[str, Any],
        timeout_s: float,
        on_progress: ProgressCallback | None = None,
    ) -> RunResult:
        """Run a registered version and wait for it (at most ``timeout_s``).

        Idempotent by ``run_name`` within the experiment: if a run of that name exists, it is waited
        for (if still running) and returned, never started twice.
        """


def spec_parameters(spec: bytes | dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The pipeline's input parameters from a compiled spec (the YAML bytes, or the object the KFP API
    returns for a version): name -> {type, optional, default}."""
    if isinstance(spec, (bytes, str)):
        import yaml

        document = next(iter(yaml.safe_load_all(spec)))
    else:
        document = spec or {}
    if "root" not in document and isinstance(document.get("pipeline_spec"), dict):
        document = document["pipeline_spec"]  # KFP stores {pipeline_spec, platform_spec} when both exist
    declared = (document.get("root", {}).get("inputDefinitions", {}) or {}).get("parameters", {}) or {}
    return {
        name: {
            "type": p.get("parameterType"),
            "optional": bool(p.get("isOptional")),
            "default": p.get("defaultValue"),
        }
        for name, p in declared.items()
    }


_PARAMETER_CHECKS: dict[str, tuple[type | tuple[type, ...], str]] = {
    "STRING": (str, "a string"),
    "NUMBER_INTEGER": (int, "an integer"),
    "NUMBER_DOUBLE": ((int, float), "a number"),
    "BOOLEAN": (bool, "a boolean"),
    "LIST": (list, "a list"),
    "STRUCT": (dict, "a mapping"),
}


def validate_params(spec: bytes | dict[str, Any], params: dict[str, Any]) -> None:
    """Refuse parameters the pipeline does not declare, missing required ones and wrong types,
    before anything starts (a run that fails at its fifth step on a typo wastes an hour)."""
    declared = spec_parameters(spec)
    problems = []
    for name in sorted(set(params) - set(declared)):
        problems.append(f"{name}: not a parameter of this pipeline (it has: {', '.join(sorted(declared))})")
    for name, decl in sorted(declared.items()):
        if name not in params:
            if not decl["optional"]:
                problems.append(f"{name}: required parameter is missing")
            continue
        value = params[name]
        expected, label = _PARAMETER_CHECKS.get(decl["type"], (object, "any value"))
        wrong = not isinstance(value, expected) or (decl["type"] != "BOOLEAN" and isinstance(value, bool))
        if wrong:
            problems.append(f"{name}: expected {label} ({decl['type']}), got {value!r}")
    if problems:
        raise ConfigError("pipeline parameters are not valid:\n  " + "\n  ".join(problems))
