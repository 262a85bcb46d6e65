"""Compile a pipeline module of the workspace into a deterministic KFP spec.

Same sources, same images, same GPU settings → the same bytes, hence the same spec hash, which names
the pipeline version. The training stage relies on that: it compiles its own commit again and looks
the version up by hash instead of reading ids copied by hand.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import logging
import re
import sys
import tempfile
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from branchops.engine.base import CompiledPipeline
from branchops.errors import ConfigError, StageFailed

log = logging.getLogger(__name__)

# registry[:port]/path/name@sha256:<64 hex>
_PINNED = re.compile(r"^[a-z0-9.-]+(:[0-9]+)?(/[a-z0-9._-]+)+@sha256:[0-9a-f]{64}$")
_IMAGE_LINE = re.compile(rb"^\s*image:\s*(\S+)\s*$", re.MULTILINE)


def is_pinned(image: str) -> bool:
    """True for an image reference pinned by digest in a registry (``host/name@sha256:...``)."""
    return bool(_PINNED.match(image))


def spec_images(spec: bytes) -> list[str]:
    """Every container image a compiled spec refers to, sorted, without duplicates."""
    return sorted({m.group(1).decode().strip("'\"") for m in _IMAGE_LINE.finditer(spec)})


def load_pipeline_module(workspace: Path, module: str):
    """Import ``module`` (a path relative to the workspace, e.g. ``pipelines/pipeline.py``)
    under a private name, so two workspaces never share a cached module."""
    path = (workspace / module).resolve()
    if not path.is_file():
        raise ConfigError(f"kubeflow.pipeline_module: {module} not found in {workspace}")
    name = f"_branchops_pipeline_{uuid.uuid4().hex}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"kubeflow.pipeline_module: {module} is not a Python module")
    mod = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(mod)
    except Exception as exc:  # the user's pipeline code: report it as theirs, with its own message
        raise StageFailed(
            f"{module}: importing the pipeline module failed: {type(exc).__name__}: {exc}"
        ) from exc
    if not callable(getattr(mod, "build_pipeline", None)):
        raise ConfigError(f"{module}: defines no build_pipeline(images, gpu, mounts) function")
    return mod


def _accepts(function: Any, name: str) -> bool:
    parameters = inspect.signature(function).parameters.values()
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def compile_pipeline(
    workspace: Path,
    module: str,
    images: Mapping[str, str] | None = None,
    gpu: Any | None = None,
    mounts: Mapping[str, str] | None = None,
    secrets: Mapping[str, Mapping[str, Any]] | None = None,
) -> CompiledPipeline:
    """Compile ``build_pipeline(images, gpu, mounts[, secrets])`` of ``module`` with the kfp compiler.

    ``mounts`` ({"data": path, "models": path}) says where the storage port mounts the run's volumes
    in a step on Kubernetes. ``secrets`` ({"kaggle": {"name": secret, "env": {key: variable}}}) are the
    Kubernetes Secrets to bind to the steps that need them; a pipeline written before it existed takes no
    ``secrets`` and still compiles as long as none is configured.

    With ``images`` (a registry is configured) every image must be pinned by digest, and every image
    in the compiled spec must be one of them: a step left on a tag would run whatever the tag points
    to on the day, and the version name would no longer say what runs.
    """
    from kfp import compiler

    if images:
        loose = {name: ref for name, ref in images.items() if not is_pinned(ref)}
        if loose:
            raise ConfigError(
                "component images must be pinned by digest (registry/name@sha256:...); not "
                "pinned: " + ", ".join(f"{n}={r}" for n, r in sorted(loose.items()))
            )
    mod = load_pipeline_module(Path(workspace), module)
    extra: dict[str, Any] = {}
    if secrets:
        if not _accepts(mod.build_pipeline, "secrets"):
            raise ConfigError(
                f"{module}: build_pipeline takes no 'secrets' argument, so the Kubernetes Secrets configured "
                f"for its steps ({', '.join(sorted(secrets))}, e.g. data.kaggle.secret) would never reach "
                "them: add secrets=None to build_pipeline and bind them (kfp.kubernetes.use_secret_as_env)"
            )
        extra["secrets"] = {purpose: dict(binding) for purpose, binding in secrets.items()}
    try:
        pipeline_func = mod.build_pipeline(
            images=dict(images) if images else None, gpu=gpu, mounts=dict(mounts or {}), **extra
        )
        with tempfile.TemporaryDirectory(prefix="branchops-compile-") as tmp:
            out = Path(tmp) / "pipeline.yaml"
            compiler.Compiler().compile(pipeline_func=pipeline_func, package_path=str(out))
            spec = out.read_bytes()
    except (ConfigError, StageFailed):
        raise
    except Exception as exc:
        raise StageFailed(f"{module}: compiling the pipeline failed: {type(exc).__name__}: {exc}") from exc
    finally:
        sys.modules.pop(mod.__name__, None)

    if images:
        unpinned = [ref for ref in spec_images(spec) if not is_pinned(ref)]
        if unpinned:
            raise StageFailed(
                f"{module}: the compiled spec uses images not pinned by digest: "
                f"{', '.join(unpinned)} (does every component take its image from build_pipeline's "
                "images argument?)"
            )
    compiled = CompiledPipeline(spec=spec, spec_hash=hashlib.sha256(spec).hexdigest())
    log.info("compiled %s: %d bytes, spec hash %s", module, len(spec), compiled.spec_hash)
    return compiled
