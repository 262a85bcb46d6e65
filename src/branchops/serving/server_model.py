"""One model's versions in the local server: loading, retiring, label routing.

Versions load in a background thread and take traffic only once loaded and warmed up. The labels
(``stable``/``canary``) are one immutable object swapped atomically, and a retired version's object
stays alive for the requests already holding it, so a switch drops nothing. As in TF Serving, a request
naming neither a version nor a label gets the highest AVAILABLE version: there are no traffic weights.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from branchops.serving.server_codec import RequestError, Signature, read_signature, run_signature
from branchops.serving.server_metrics import Metrics

log = logging.getLogger("branchops.serving.server")


# -- versions and routing ----------------------------------------------------------------------------


@dataclass
class ModelVersion:
    version: int
    path: Path
    state: str = "START"  # TF Serving's ManagerState names: START, LOADING, AVAILABLE, UNLOADING, END
    error_code: str = "OK"
    error_message: str = ""
    signatures: dict[str, Signature] = field(default_factory=dict)
    model: Any = None  # keeps the loaded SavedModel alive while this object is referenced

    def status(self) -> dict[str, Any]:
        return {
            "version": str(self.version),
            "state": self.state,
            "status": {"error_code": self.error_code, "error_message": self.error_message},
        }


@dataclass(frozen=True)
class Routing:
    stable: int | None = None
    canary: int | None = None

    def labels(self) -> dict[str, int]:
        return {k: v for k, v in (("stable", self.stable), ("canary", self.canary)) if v is not None}


class ModelServer:
    """One model, many versions, label routing. Thread-safe; HTTP lives in :func:`create_app`."""

    def __init__(self, model_name: str, base_path: Path, state_file: Path | None = None) -> None:
        self.model_name = model_name
        self.base_path = Path(base_path)
        self.state_file = state_file
        self.metrics = Metrics(model_name, self.versions)
        self._lock = threading.Lock()
        self._versions: dict[int, ModelVersion] = {}
        self._routing = Routing()
        self._pending_routing: Routing | None = None  # restored labels, applied once their versions load
        self._loaders: list[threading.Thread] = []

    # -- lifecycle --------------------------------------------------------------------------------
    def restore(self) -> None:
        """Serve what was live before a restart; with no saved state, the newest version (TF Serving's
        default)."""
        saved = None
        if self.state_file and self.state_file.exists():
            try:
                saved = json.loads(self.state_file.read_text())
            except (OSError, ValueError) as exc:
                log.warning("ignoring unreadable routing state %s: %s", self.state_file, exc)
        if saved and saved.get("model") == self.model_name:
            versions = [int(v) for v in saved.get("versions", [])]
            routing = Routing(saved.get("stable"), saved.get("canary"))
        else:
            on_disk = sorted(int(p.name) for p in self.base_path.glob("*") if p.name.isdigit() and p.is_dir())
            versions = on_disk[-1:]
            routing = Routing(stable=versions[-1]) if versions else Routing()
        self._pending_routing = routing if routing.labels() else None
        for v in versions:
            self.load(v)

    def ready(self) -> bool:
        """True once every load started by :meth:`restore` has finished (either way)."""
        return not any(t.is_alive() for t in self._loaders)

    def load(self, version: int) -> ModelVersion:
        with self._lock:
            current = self._versions.get(version)
            if current is not None and current.state in ("LOADING", "AVAILABLE"):
                return current
            mv = ModelVersion(version=version, path=self.base_path / str(version), state="LOADING")
            self._versions[version] = mv
        thread = threading.Thread(target=self._load, args=(mv,), name=f"load-v{version}", daemon=True)
        self._loaders.append(thread)
        thread.start()
        return mv

    def _load(self, mv: ModelVersion) -> None:
        started = time.monotonic()
        try:
            if not (mv.path / "saved_model.pb").is_file():
                raise FileNotFoundError(f"no saved_model.pb in {mv.path}")
            import tensorflow as tf

            model = tf.saved_model.load(str(mv.path))
            signatures = {key: read_signature(key, fn) for key, fn in model.signatures.items()}
            if not signatures:
                raise ValueError("the SavedModel has no signatures to serve")
            for signature in signatures.values():
                _warm_up(signature)
        except Exception as exc:  # noqa: BLE001 - any load failure is a state of the version, not of the server
            code = "NOT_FOUND" if isinstance(exc, FileNotFoundError) else "UNKNOWN"
            failed = ModelVersion(
                version=mv.version,
                path=mv.path,
                state="END",
                error_code=code,
                error_message=f"{type(exc).__name__}: {str(exc)[:1000]}",
            )
            with self._lock:
                if self._versions.get(mv.version) is mv:
                    self._versions[mv.version] = failed
            log.error("version %s failed to load: %s", mv.version, failed.error_message)
            return
        loaded = ModelVersion(
            version=mv.version, path=mv.path, state="AVAILABLE", signatures=signatures, model=model
        )
        with self._lock:
            if self._versions.get(mv.version) is mv:
                self._versions[mv.version] = loaded
            self._apply_pending_routing()
        log.info("version %s available after %.2fs", mv.version, time.monotonic() - started)

    def _apply_pending_routing(self) -> None:
        pending = self._pending_routing
        if pending is None:
            return
        wanted = [v for v in (pending.stable, pending.canary) if v is not None]
        if all(self._versions.get(v) and self._versions[v].state == "AVAILABLE" for v in wanted):
            self._routing = pending
            self._pending_routing = None

    def retire(self, version: int) -> None:
        with self._lock:
            if version in self._routing.labels().values():
                raise RequestError(
                    409,
                    f"version {version} is labelled {self._routing.labels()}; move the "
                    "labels before retiring it",
                )
            current = self._versions.get(version)
            if current is None:
                raise RequestError(404, f"version {version} of model {self.model_name} is not loaded")
            # A new object: requests already holding the old one finish on it.
            self._versions[version] = ModelVersion(version=version, path=current.path, state="END")
            self._persist()

    def set_routing(self, stable: int | None, canary: int | None = None) -> Routing:
        with self._lock:
            for label, v in (("stable", stable), ("canary", canary)):
                if v is None:
                    continue
                mv = self._versions.get(v)
                if mv is None or mv.state != "AVAILABLE":
                    state = mv.state if mv else "not loaded"
                    raise RequestError(
                        409, f"cannot label version {v} '{label}': it is {state}, not AVAILABLE"
                    )
            if canary is not None and canary == stable:
                raise RequestError(400, "the canary and stable labels must name different versions")
            self._routing = Routing(stable, canary)
            self._pending_routing = None
            self._persist()
            return self._routing

    def _persist(self) -> None:
        if not self.state_file:
            return
        loaded = sorted(v for v, mv in self._versions.items() if mv.state in ("LOADING", "AVAILABLE"))
        data = {
            "model": self.model_name,
            "versions": loaded,
            **self._routing.labels(),
        }
        tmp = self.state_file.with_name(self.state_file.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(self.state_file)

    # -- queries ----------------------------------------------------------------------------------
    @property
    def routing(self) -> Routing:
        return self._routing

    def versions(self) -> dict[int, ModelVersion]:
        with self._lock:
            return dict(self._versions)

    def check_name(self, name: str) -> None:
        if name != self.model_name:
            raise RequestError(404, f"Servable not found for request: Latest({name})")

    def status_of(self, version: int | None, label: str | None) -> list[dict[str, Any]]:
        versions = self.versions()
        if label is not None:
            version = self._label_version(label)
        if version is not None:
            if version not in versions:
                raise RequestError(404, f"Could not find version {version} of model {self.model_name}")
            return [versions[version].status()]
        if not versions:
            raise RequestError(404, f"Could not find any versions of model {self.model_name}")
        return [mv.status() for _, mv in sorted(versions.items(), reverse=True)]

    def _label_version(self, label: str) -> int:
        version = self._routing.labels().get(label)
        if version is None:
            raise RequestError(404, f"Unrecognized servable version label: {label}")
        return version

    def resolve(self, version: int | None, label: str | None) -> ModelVersion:
        """The version object that serves this request (held by the request until it ends)."""
        if label is not None:
            version = self._label_version(label)
        elif version is None:
            # TF Serving answers a request naming neither with the highest AVAILABLE version
            # (ServableRequest::Latest), whatever the labels say: there are no traffic weights.
            available = [v for v, mv in list(self._versions.items()) if mv.state == "AVAILABLE"]
            if not available:
                raise RequestError(404, f"Servable not found for request: Latest({self.model_name})")
            version = max(available)
        mv = self._versions.get(version)
        if mv is None or mv.state != "AVAILABLE":
            raise RequestError(404, f"Servable not found for request: Specific({self.model_name}, {version})")
        return mv


def _warm_up(signature: Signature) -> None:
    """Run the signature once on zeros so the first real request pays no tracing cost, and a model
    that cannot compute fails its load instead of failing traffic."""
    import numpy as np

    feeds = {}
    for name, info in signature.inputs.items():
        if info.shape is None or any(d is None for d in info.shape[1:]):
            return  # no shape to invent a sample for
        shape = [1, *info.shape[1:]] if info.shape else []
        dtype = object if info.dtype == "string" else info.dtype
        feeds[name] = (
            np.zeros(shape, dtype=dtype) if dtype is not object else np.full(shape, b"", dtype=object)
        )
    run_signature(signature, feeds)
