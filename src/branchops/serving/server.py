"""The local model server: TensorFlow Serving's REST API over numbered SavedModel versions.

Run as ``python -m branchops.serving.server --model-name NAME --base-path DIR ...`` (the local
backend starts it detached). HTTP is Flask served by waitress (multi-threaded); this module only
maps TF Serving's URL scheme and JSON formats onto loaded SavedModels.

Slow and broken clients: waitress reads each request whole before a worker thread sees it, so a client
that never finishes its request holds a connection, not a thread. Connections are bounded
(:data:`CONNECTION_LIMIT`, far above what a few hundred hanging clients take) and dropped after
:data:`CHANNEL_TIMEOUT_S` without a byte, so they neither starve normal requests nor pile up.

Public REST surface (the same as TensorFlow Serving's, https://www.tensorflow.org/tfx/serving/api_rest):

* ``GET  /v1/models/NAME[/versions/N|/labels/L]``            model status
* ``GET  /v1/models/NAME[/versions/N|/labels/L]/metadata``   signature metadata
* ``POST /v1/models/NAME[/versions/N|/labels/L]:predict``    row (``instances``) or columnar (``inputs``)
* ``GET  /monitoring/prometheus/metrics``                    requests, errors, latency per version
* errors as ``{"error": "..."}``, those waitress answers itself (413, 400, 431, 501) included; a request
  the server cannot use gets a 4xx, never a crash.

Admin surface (answered to loopback clients only; the local backend drives rollouts with it):
``GET /branchops/admin/health``, ``POST /branchops/admin/versions/N:load``,
``POST /branchops/admin/versions/N:retire``, ``GET|POST /branchops/admin/routing``.

Versions load in a background thread and take traffic only once loaded and warmed up. Routing
(``stable``/``canary`` labels, canary weight) is one immutable object swapped atomically, and a
retired version's object stays alive for the requests already holding it, so a switch drops nothing.
TensorFlow is imported only in this process.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import math
import os
import random
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("branchops.serving.server")

MAX_BODY_BYTES = 16 * 1024 * 1024
# waitress' connection handling (its "adjustments"). The default limit of 100 connections let about a
# hundred half-open connections stop the server accepting for minutes (the default channel timeout is
# 120 s, checked every 30 s).
CONNECTION_LIMIT = 1000
CHANNEL_TIMEOUT_S = 15  # without a byte either way; a finished request being computed is not idle
CLEANUP_INTERVAL_S = 5  # how often idle connections are looked for
FILES_BESIDES_CONNECTIONS = 256  # SavedModel files, log, listener, TensorFlow's own
MAX_NESTING = 32
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}
MODEL_PATH_RE = re.compile(
    r"^(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
    r"(?P<tail>/metadata|:predict|:classify|:regress)?$"
)


class RequestError(Exception):
    """A request the server cannot serve; becomes ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# -- signatures ------------------------------------------------------------------------------------

_TF_DTYPE_ENUM = {
    "float16": "DT_HALF",
    "float32": "DT_FLOAT",
    "float64": "DT_DOUBLE",
    "int8": "DT_INT8",
    "int16": "DT_INT16",
    "int32": "DT_INT32",
    "int64": "DT_INT64",
    "uint8": "DT_UINT8",
    "uint16": "DT_UINT16",
    "uint32": "DT_UINT32",
    "uint64": "DT_UINT64",
    "bool": "DT_BOOL",
    "string": "DT_STRING",
}


@dataclass(frozen=True)
class TensorInfo:
    name: str  # the signature key (what clients use), not the graph tensor name
    dtype: str  # numpy-style name: float32, int64, bool, string, ...
    shape: tuple[int | None, ...] | None  # None: unknown rank

    def to_metadata(self) -> dict[str, Any]:
        shape: dict[str, Any] = {"unknown_rank": self.shape is None}
        if self.shape is not None:
            shape["dim"] = [{"size": str(-1 if d is None else d), "name": ""} for d in self.shape]
        return {
            "dtype": _TF_DTYPE_ENUM.get(self.dtype, "DT_INVALID"),
            "tensor_shape": shape,
            "name": f"serving_default_{self.name}:0",
        }


@dataclass(frozen=True)
class Signature:
    key: str
    inputs: dict[str, TensorInfo]
    outputs: dict[str, TensorInfo]
    function: Any  # a tf ConcreteFunction; never mutated after load

    def to_metadata(self) -> dict[str, Any]:
        return {
            "inputs": {k: v.to_metadata() for k, v in self.inputs.items()},
            "outputs": {k: v.to_metadata() for k, v in self.outputs.items()},
            "method_name": "tensorflow/serving/predict",
        }


def _tensor_info(name: str, spec: Any) -> TensorInfo:
    dtype = spec.dtype.name
    rank = spec.shape.rank
    shape = None if rank is None else tuple(spec.shape.as_list())
    return TensorInfo(name=name, dtype=dtype, shape=shape)


def _signature(key: str, function: Any) -> Signature:
    _, kwargs = function.structured_input_signature
    inputs = {name: _tensor_info(name, spec) for name, spec in sorted(kwargs.items())}
    outputs_struct = function.structured_outputs
    if not isinstance(outputs_struct, dict):
        raise TypeError(f"signature {key!r} does not return a dict of named outputs")
    outputs = {name: _tensor_info(name, spec) for name, spec in sorted(outputs_struct.items())}
    if not inputs or not outputs:
        raise ValueError(f"signature {key!r} has no named inputs or outputs")
    return Signature(key=key, inputs=inputs, outputs=outputs, function=function)


# -- JSON <-> arrays -----------------------------------------------------------------------------------


def _shape_and_leaves(value: Any, where: str) -> tuple[list[int], list[Any]]:
    """The shape of a nested JSON list and its leaves in row-major order; rejects ragged lists."""
    shape: list[int] = []
    level = [value]
    while True:
        lists = [isinstance(v, list) for v in level]
        if level and all(lists):
            length = len(level[0])
            if any(len(v) != length for v in level):
                raise RequestError(
                    400,
                    f"{where}: nested lists at depth {len(shape)} have different lengths "
                    "(a tensor must be rectangular)",
                )
            shape.append(length)
            if len(shape) > MAX_NESTING:
                raise RequestError(400, f"{where}: nested deeper than {MAX_NESTING} levels")
            level = [item for v in level for item in v]
            if length == 0:
                return shape, []
        elif any(lists):
            raise RequestError(400, f"{where}: mixes lists and scalars at depth {len(shape)}")
        else:
            return shape, level


def _leaf(value: Any, dtype: str, where: str) -> Any:
    if dtype == "string":
        if isinstance(value, str):
            return value.encode("utf-8")
        if isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str):
            try:
                return base64.b64decode(value["b64"], validate=True)
            except ValueError:
                raise RequestError(400, f"{where}: 'b64' value is not valid base64") from None
        raise RequestError(400, f"{where}: expected a string or {{\"b64\": ...}}, got {type(value).__name__}")
    if dtype == "bool":
        if isinstance(value, bool):
            return value
        raise RequestError(400, f"{where}: expected a boolean, got {json.dumps(value)[:40]}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(
            400, f"{where}: expected a number for a {dtype} tensor, got {json.dumps(value)[:40]}"
        )
    if dtype.startswith(("int", "uint")):
        if isinstance(value, float):
            if not value.is_integer():
                raise RequestError(400, f"{where}: expected an integer for a {dtype} tensor, got {value}")
            value = int(value)
        import numpy as np

        info = np.iinfo(dtype)
        if not info.min <= value <= info.max:
            raise RequestError(400, f"{where}: {value} is out of range for {dtype}")
        return value
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    limit = {"float16": 65504.0, "float32": 3.4028234e38}.get(dtype, math.inf)
    if not math.isfinite(number) or abs(number) > limit:
        raise RequestError(400, f"{where}: {str(value)[:40]} is not a finite {dtype} value")
    return number


def _to_array(value: Any, info: TensorInfo, where: str) -> Any:
    import numpy as np

    shape, leaves = _shape_and_leaves(value, where)
    converted = [_leaf(v, info.dtype, where) for v in leaves]
    if info.shape is not None:
        if len(shape) != len(info.shape):
            raise RequestError(
                400,
                f"{where}: expected a tensor of rank {len(info.shape)} "
                f"(shape {_fmt_shape(info.shape)}), got rank {len(shape)} (shape {shape})",
            )
        for i, (got, want) in enumerate(zip(shape, info.shape)):
            if want is not None and got != want:
                raise RequestError(
                    400,
                    f"{where}: dimension {i} must be {want} "
                    f"(shape {_fmt_shape(info.shape)}), got {got} (shape {shape})",
                )
    if shape and shape[0] == 0:
        raise RequestError(400, f"{where}: the batch is empty")
    np_dtype = object if info.dtype == "string" else info.dtype
    return np.array(converted, dtype=np_dtype).reshape(shape)


def _fmt_shape(shape: tuple[int | None, ...]) -> str:
    return "[" + ", ".join("None" if d is None else str(d) for d in shape) + "]"


def _jsonable(array: Any) -> Any:
    import numpy as np

    if array.dtype == object or array.dtype.kind == "S":

        def enc(b: Any) -> Any:
            b = bytes(b)
            try:
                return b.decode("utf-8")
            except UnicodeDecodeError:
                return {"b64": base64.b64encode(b).decode()}

        return np.vectorize(enc, otypes=[object])(array).tolist() if array.ndim else enc(array.item())
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        # JSON has no NaN/Infinity; TF Serving's output would not parse either way.
        return np.where(np.isfinite(array), array, None).tolist()
    return array.tolist()


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
    canary_weight: int = 0  # percent of unlabelled requests sent to the canary

    def labels(self) -> dict[str, int]:
        return {k: v for k, v in (("stable", self.stable), ("canary", self.canary)) if v is not None}


class Metrics:
    """Counters and a latency histogram per version, rendered in Prometheus' text format."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str, str], int] = {}
        self._latency: dict[str, list[float]] = {}  # version -> bucket counts + [sum, count]

    def observe(self, version: str, api: str, code: int, seconds: float) -> None:
        with self._lock:
            key = (version, api, str(code))
            self._requests[key] = self._requests.get(key, 0) + 1
            if api == "predict":
                hist = self._latency.setdefault(version, [0.0] * (len(LATENCY_BUCKETS_S) + 2))
                for i, bound in enumerate(LATENCY_BUCKETS_S):
                    if seconds <= bound:
                        hist[i] += 1
                hist[-2] += seconds
                hist[-1] += 1

    def render(self, model: str, versions: dict[int, ModelVersion], routing: Routing) -> str:
        out = [
            "# HELP branchops_serving_requests_total Requests answered, by version, API and HTTP status.",
            "# TYPE branchops_serving_requests_total counter",
        ]
        with self._lock:
            requests = dict(self._requests)
            latency = {k: list(v) for k, v in self._latency.items()}
        for (version, api, code), n in sorted(requests.items()):
            out.append(
                f'branchops_serving_requests_total{{model="{model}",version="{version}",api="{api}",'
                f'code="{code}"}} {n}'
            )
        out += [
            "# HELP branchops_serving_request_errors_total Requests that failed on the server side (5xx).",
            "# TYPE branchops_serving_request_errors_total counter",
        ]
        errors: dict[str, int] = {}
        for (version, _api, code), n in requests.items():
            errors[version] = errors.get(version, 0) + (n if code.startswith("5") else 0)
        for version, n in sorted(errors.items()):
            out.append(f'branchops_serving_request_errors_total{{model="{model}",version="{version}"}} {n}')
        out += [
            "# HELP branchops_serving_request_latency_seconds Predict latency inside the server.",
            "# TYPE branchops_serving_request_latency_seconds histogram",
        ]
        for version, hist in sorted(latency.items()):
            labels = f'model="{model}",version="{version}"'
            for bound, count in zip(LATENCY_BUCKETS_S, hist):
                out.append(
                    f'branchops_serving_request_latency_seconds_bucket{{{labels},le="{bound}"}} {int(count)}'
                )
            out.append(
                f'branchops_serving_request_latency_seconds_bucket{{{labels},le="+Inf"}} {int(hist[-1])}'
            )
            out.append(f"branchops_serving_request_latency_seconds_sum{{{labels}}} {hist[-2]:.6f}")
            out.append(f"branchops_serving_request_latency_seconds_count{{{labels}}} {int(hist[-1])}")
        out += [
            "# HELP branchops_serving_version_available 1 if the version takes traffic.",
            "# TYPE branchops_serving_version_available gauge",
        ]
        for v, mv in sorted(versions.items()):
            out.append(
                f'branchops_serving_version_available{{model="{model}",version="{v}"}} '
                f"{1 if mv.state == 'AVAILABLE' else 0}"
            )
        out += [
            "# HELP branchops_serving_canary_weight_percent Share of unlabelled requests sent to the canary.",
            "# TYPE branchops_serving_canary_weight_percent gauge",
            f'branchops_serving_canary_weight_percent{{model="{model}"}} {routing.canary_weight}',
        ]
        return "\n".join(out) + "\n"


class ModelServer:
    """One model, many versions, label routing. Thread-safe; HTTP lives in :func:`create_app`."""

    def __init__(self, model_name: str, base_path: Path, state_file: Path | None = None) -> None:
        self.model_name = model_name
        self.base_path = Path(base_path)
        self.state_file = state_file
        self.metrics = Metrics()
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
            routing = Routing(saved.get("stable"), saved.get("canary"), int(saved.get("canary_weight", 0)))
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
            signatures = {key: _signature(key, fn) for key, fn in model.signatures.items()}
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

    def set_routing(self, stable: int | None, canary: int | None, canary_weight: int) -> Routing:
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
            if canary is None and canary_weight:
                raise RequestError(400, "canary_weight needs a canary version")
            if canary is not None and canary == stable:
                raise RequestError(400, "the canary and stable labels must name different versions")
            self._routing = Routing(stable, canary, canary_weight)
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
            "canary_weight": self._routing.canary_weight,
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
        routing = self._routing
        if label is not None:
            version = self._label_version(label)
        elif version is None:
            if (
                routing.canary is not None
                and routing.canary_weight
                and random.uniform(0, 100) < routing.canary_weight
            ):
                version = routing.canary
            elif routing.stable is not None:
                version = routing.stable
            else:
                available = [v for v, mv in self.versions().items() if mv.state == "AVAILABLE"]
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
    _call(signature, feeds)


def _call(signature: Signature, feeds: dict[str, Any]) -> dict[str, Any]:
    import tensorflow as tf

    tensors = {
        name: tf.constant(array, dtype=tf.as_dtype(signature.inputs[name].dtype))
        for name, array in feeds.items()
    }
    result = signature.function(**tensors)
    return {name: value.numpy() for name, value in result.items()}


# -- predict --------------------------------------------------------------------------------------


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"b64"}


def _row_feeds(instances: Any, signature: Signature) -> dict[str, Any]:
    if not isinstance(instances, list):
        raise RequestError(400, "'instances' must be a list (one element per example)")
    if not instances:
        raise RequestError(400, "'instances' is empty")
    names = list(signature.inputs)
    named = all(isinstance(i, dict) and not _is_b64(i) for i in instances)
    if any(isinstance(i, dict) and not _is_b64(i) for i in instances) and not named:
        raise RequestError(400, "'instances' mixes named (objects) and unnamed elements")
    if named:
        columns: dict[str, list[Any]] = {n: [] for n in names}
        for index, instance in enumerate(instances):
            if set(instance) != set(names):
                raise RequestError(
                    400,
                    f"instances[{index}]: expected the inputs {sorted(names)}, "
                    f"got {sorted(map(str, instance))}",
                )
            for n in names:
                columns[n].append(instance[n])
    elif len(names) == 1:
        columns = {names[0]: instances}
    else:
        raise RequestError(
            400, f"this signature has several inputs {names}: each instance must be an object naming them"
        )
    return {n: _to_array(columns[n], signature.inputs[n], f"instances (input '{n}')") for n in names}


def _columnar_feeds(inputs: Any, signature: Signature) -> dict[str, Any]:
    names = list(signature.inputs)
    if isinstance(inputs, dict) and not _is_b64(inputs):
        if set(inputs) != set(names):
            raise RequestError(
                400, f"'inputs': expected the inputs {sorted(names)}, got {sorted(map(str, inputs))}"
            )
        values = inputs
    elif len(names) == 1:
        values = {names[0]: inputs}
    else:
        raise RequestError(
            400, f"this signature has several inputs {names}: 'inputs' must be an object naming them"
        )
    return {n: _to_array(values[n], signature.inputs[n], f"inputs['{n}']") for n in names}


def predict(mv: ModelVersion, body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise RequestError(400, "the request body must be a JSON object with 'instances' or 'inputs'")
    unknown = set(body) - {"signature_name", "instances", "inputs"}
    if unknown:
        raise RequestError(
            400,
            f"unknown keys in the request: {sorted(map(str, unknown))}; "
            "expected 'instances' or 'inputs' (and optionally 'signature_name')",
        )
    key = body.get("signature_name", "serving_default")
    if not isinstance(key, str):
        raise RequestError(400, "'signature_name' must be a string")
    signature = mv.signatures.get(key)
    if signature is None:
        raise RequestError(400, f"Serving signature name: \"{key}\" not found in signature def")
    if ("instances" in body) == ("inputs" in body):
        raise RequestError(
            400,
            "Missing 'inputs' or 'instances' key"
            if "instances" not in body
            else "use either 'instances' (row format) or 'inputs' (columnar format), not both",
        )
    row = "instances" in body
    feeds = _row_feeds(body["instances"], signature) if row else _columnar_feeds(body["inputs"], signature)
    if row:
        batch = {len(a) for a in feeds.values()}
        if len(batch) != 1:
            raise RequestError(400, "all inputs of a row-format request need the same batch size")
    try:
        result = _call(signature, feeds)
    except Exception as exc:
        if type(exc).__name__ == "InvalidArgumentError":
            raise RequestError(400, str(exc).splitlines()[0][:500]) from None
        raise
    if row:
        outs = {k: _jsonable(v) for k, v in result.items()}
        if len(outs) == 1:
            return {"predictions": next(iter(outs.values()))}
        sizes = {len(v) if isinstance(v, list) else -1 for v in outs.values()}
        if len(sizes) != 1:
            raise RequestError(400, "outputs have different batch sizes; use the columnar format ('inputs')")
        return {"predictions": [{k: outs[k][i] for k in sorted(outs)} for i in range(sizes.pop())]}
    outs = {k: _jsonable(v) for k, v in result.items()}
    return {"outputs": next(iter(outs.values())) if len(outs) == 1 else outs}


# -- HTTP -----------------------------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise RequestError(400, f"JSON Parse error: {str(exc)[:200]}") from None


def create_app(server: ModelServer) -> Any:
    from flask import Flask, Response, request
    from werkzeug.exceptions import HTTPException

    app = Flask("branchops.serving")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES

    def error(status: int, message: str) -> Response:
        return Response(json.dumps({"error": message}), status=status, mimetype="application/json")

    def ok(payload: Any, status: int = 200) -> Response:
        return Response(json.dumps(payload, indent=1), status=status, mimetype="application/json")

    @app.errorhandler(RequestError)
    def _request_error(exc: RequestError) -> Response:
        return error(exc.status, exc.message)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        return error(exc.code or 500, exc.description or exc.name)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("internal error")
        return error(500, f"internal error: {type(exc).__name__}: {str(exc)[:300]}")

    @app.route("/v1/models/<path:rest>", methods=["GET", "POST"])
    def models(rest: str) -> Response:
        started = time.perf_counter()
        match = MODEL_PATH_RE.match(rest)
        version_label = "none"
        api = "predict" if request.method == "POST" else "status"
        try:
            if not match:
                raise RequestError(404, f"Malformed request: {request.method} /v1/models/{rest}")
            tail = match["tail"]
            api = {None: "status", "/metadata": "metadata"}.get(tail, (tail or ":")[1:])
            wants_post = tail in (":predict", ":classify", ":regress")
            if (request.method == "POST") != wants_post:
                raise RequestError(405, f"Malformed request: {request.method} /v1/models/{rest}")
            server.check_name(match["name"])
            version = None
            if match["version"] is not None:
                if not match["version"].isdigit():
                    raise RequestError(400, f"Failed to convert version: {match['version']} to numeric.")
                version = int(match["version"])
            label = match["label"]
            if api == "status":
                response = ok({"model_version_status": server.status_of(version, label)})
            elif api == "metadata":
                mv = server.resolve(version, label)
                version_label = str(mv.version)
                response = ok(
                    {
                        "model_spec": {
                            "name": server.model_name,
                            "signature_name": "",
                            "version": str(mv.version),
                        },
                        "metadata": {
                            "signature_def": {
                                "signature_def": {k: s.to_metadata() for k, s in mv.signatures.items()}
                            }
                        },
                    }
                )
            elif api == "predict":
                body = parse_json(request.get_data(cache=False))
                mv = server.resolve(version, label)
                version_label = str(mv.version)
                response = ok(predict(mv, body))
            else:
                raise RequestError(
                    400, f"{api} needs tf.Example signatures, which this server does not serve; use :predict"
                )
        except RequestError as exc:
            response = error(exc.status, exc.message)
        except HTTPException as exc:  # e.g. a body over MAX_CONTENT_LENGTH
            response = error(exc.code or 400, exc.description or exc.name)
        except Exception as exc:
            log.exception("internal error in %s", api)
            response = error(500, f"internal error: {type(exc).__name__}: {str(exc)[:300]}")
        server.metrics.observe(version_label, api, response.status_code, time.perf_counter() - started)
        return response

    @app.get("/monitoring/prometheus/metrics")
    def metrics() -> Response:
        text = server.metrics.render(server.model_name, server.versions(), server.routing)
        return Response(text, mimetype="text/plain; version=0.0.4")

    # -- admin (loopback only) ----------------------------------------------------------------
    def admin_only() -> None:
        if request.remote_addr not in LOOPBACK:
            raise RequestError(403, "the admin API answers loopback clients only")

    def admin_state() -> dict[str, Any]:
        return {
            "model": server.model_name,
            "base_path": str(server.base_path),
            "pid": os.getpid(),
            "ready": server.ready(),
            "routing": {**server.routing.labels(), "canary_weight": server.routing.canary_weight},
            "versions": {str(v): mv.status() for v, mv in sorted(server.versions().items())},
        }

    @app.get("/branchops/admin/health")
    def health() -> Response:
        admin_only()
        return ok(admin_state())

    @app.post("/branchops/admin/versions/<version>:<action>")
    def version_action(version: str, action: str) -> Response:
        admin_only()
        if not version.isdigit():
            raise RequestError(400, f"version must be a positive integer, got {version!r}")
        if action == "load":
            server.load(int(version))
            return ok(admin_state(), 202)
        if action == "retire":
            server.retire(int(version))
            return ok(admin_state())
        raise RequestError(404, f"unknown admin action {action!r} (load, retire)")

    @app.route("/branchops/admin/routing", methods=["GET", "POST"])
    def routing() -> Response:
        admin_only()
        if request.method == "POST":
            body = parse_json(request.get_data())
            if not isinstance(body, dict) or set(body) - {"stable", "canary", "canary_weight"}:
                raise RequestError(
                    400, "expected {\"stable\": int|null, \"canary\": int|null, \"canary_weight\": 0-100}"
                )
            stable, canary, weight = body.get("stable"), body.get("canary"), body.get("canary_weight", 0)
            for key, v in (("stable", stable), ("canary", canary)):
                if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                    raise RequestError(400, f"'{key}' must be a version number or null")
            if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 100:
                raise RequestError(400, "'canary_weight' must be an integer from 0 to 100")
            server.set_routing(stable, canary, weight)
        return ok(admin_state())

    return app


def _json_error_channel(max_body_bytes: int) -> type:
    """waitress' connection class, answering the errors waitress raises itself (413 body too large, 400
    bad request syntax, 431 headers too large, 501 unknown transfer coding) as TF Serving's JSON errors
    instead of waitress' plain text."""
    from waitress.channel import HTTPChannel
    from waitress.task import ErrorTask
    from waitress.utilities import RequestEntityTooLarge

    class JsonErrorTask(ErrorTask):
        def execute(self) -> None:
            error = self.request.error
            message = (
                f"the request body is larger than {max_body_bytes} bytes"
                if isinstance(error, RequestEntityTooLarge)
                else f"{error.reason}: {error.body}"
            )
            body = json.dumps({"error": message}).encode()
            self.status = f"{error.code} {error.reason}"
            self.response_headers.append(("Content-Type", "application/json"))
            self.set_close_on_finish()
            self.content_length = len(body)
            self.write(body)

    class JsonErrorChannel(HTTPChannel):
        error_task_class = JsonErrorTask

    return JsonErrorChannel


def _connection_limit() -> int:
    """:data:`CONNECTION_LIMIT`, or fewer if this process may not open that many files; raises the soft
    limit on open files towards the hard one first (each connection is a file descriptor)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = CONNECTION_LIMIT + FILES_BESIDES_CONNECTIONS
    if soft != resource.RLIM_INFINITY and soft < wanted:
        raised = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open files limit from %s to %s: %s", soft, raised, exc)
    if soft == resource.RLIM_INFINITY:
        return CONNECTION_LIMIT
    return max(16, min(CONNECTION_LIMIT, soft - FILES_BESIDES_CONNECTIONS))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m branchops.serving.server", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--model-name", required=True)
    parser.add_argument(
        "--base-path", required=True, type=Path, help="holds the numbered SavedModel versions"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--port", type=int, default=8501, help="0 picks a free port (written to --ready-file)"
    )
    parser.add_argument("--state-file", type=Path, help="routing state kept across restarts")
    parser.add_argument(
        "--ready-file", type=Path, help="written with pid, start time and port once the port is bound"
    )
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    from waitress import create_server
    from waitress.server import BaseWSGIServer

    from branchops.processes import ProcessId

    model_server = ModelServer(args.model_name, args.base_path, args.state_file)
    app = create_app(model_server)
    sockets: dict[int, Any] = {}
    # waitress refuses a body of max_request_body_size bytes or more, Flask one over MAX_CONTENT_LENGTH:
    # both let a body of exactly MAX_BODY_BYTES through.
    http = create_server(
        app,
        map=sockets,
        host=args.host,
        port=args.port,
        threads=args.threads,
        max_request_body_size=MAX_BODY_BYTES + 1,
        connection_limit=_connection_limit(),
        channel_timeout=CHANNEL_TIMEOUT_S,
        cleanup_interval=CLEANUP_INTERVAL_S,
        asyncore_use_poll=True,  # select() cannot watch a descriptor numbered 1024 or more
        ident="branchops-serving",
    )
    error_channel = _json_error_channel(MAX_BODY_BYTES)
    for listener in sockets.values():  # nothing is accepted before http.run()
        if isinstance(listener, BaseWSGIServer):
            listener.channel_class = error_channel
    port = http.effective_port  # type: ignore[union-attr]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    model_server.restore()
    if args.ready_file:
        tmp = args.ready_file.with_name(args.ready_file.name + ".tmp")
        tmp.write_text(json.dumps({**ProcessId.current().to_dict(), "host": args.host, "port": port}))
        tmp.replace(args.ready_file)
    log.info("serving model %s from %s on http://%s:%s", args.model_name, args.base_path, args.host, port)
    try:
        http.run()
    except SystemExit:
        log.info("stopping on SIGTERM")
    finally:
        http.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
