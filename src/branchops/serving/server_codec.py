"""TensorFlow Serving's REST formats: signatures as its metadata, JSON tensors to arrays and back.

Row (``instances``) and columnar (``inputs``) requests become numpy feeds checked against the signature
(dtype, rank, fixed dimensions); results become ``predictions`` / ``outputs``. A request the server
cannot use is a :class:`RequestError` (a 4xx), never a crash. TensorFlow and numpy are imported only when
a request is decoded or a signature is run.
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from branchops.serving.server_model import ModelVersion

MAX_NESTING = 32


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


def read_signature(key: str, function: Any) -> Signature:
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
        number = float(value)  # NaN and ±Infinity are values (parse_json lets them through)
    except OverflowError:
        raise RequestError(400, f"{where}: {str(value)[:40]} is out of range for {dtype}") from None
    if not math.isfinite(number) and not isinstance(value, JsonConstant):
        raise RequestError(400, f"{where}: JSON Parse error: Number too big to be stored in double")
    limit = {"float16": 65504.0, "float32": 3.4028234e38}.get(dtype, math.inf)
    if math.isfinite(number) and abs(number) > limit:
        raise RequestError(400, f"{where}: {str(value)[:40]} is out of range for {dtype}")
    return number


def _to_array(value: Any, info: TensorInfo, where: str) -> Any:
    import numpy as np

    shape, leaves = _shape_and_leaves(value, where)
    converted = _plain_floats(leaves, info.dtype)
    if converted is None:
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


_FLOAT_LIMITS = {"float16": 65504.0, "float32": 3.4028234e38, "float64": 1.7976931348623157e308}


def _plain_floats(leaves: list[Any], dtype: str) -> Any:
    """The common case at C speed: finite, in-range numbers for a float tensor, as an array; None for
    anything else (strings, booleans, NaN/Infinity, out of range), which :func:`_leaf` judges one by one
    and explains."""
    import numpy as np

    limit = _FLOAT_LIMITS.get(dtype)
    if limit is None or not all(type(v) is float or type(v) is int for v in leaves):
        return None
    try:
        numbers = np.array(leaves, dtype=np.float64)
    except OverflowError:
        return None
    return numbers if bool(np.all(np.abs(numbers) <= limit)) else None  # NaN compares False


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
    # Non-finite floats stay NaN/Infinity/-Infinity: TF Serving writes them so (json_tensor.cc,
    # WriteDecimal), and json.dumps does the same.
    return array.tolist()


def run_signature(signature: Signature, feeds: dict[str, Any]) -> dict[str, Any]:
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
        result = run_signature(signature, feeds)
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


# -- JSON bodies ------------------------------------------------------------------------------------


class JsonConstant(float):
    """``NaN``, ``Infinity`` or ``-Infinity`` as the request wrote it. Python reads a literal too big for a
    double (1e400) as inf as well, which rapidjson refuses: a plain float that is not finite is one."""


def parse_json(raw: bytes) -> Any:
    """The request body. ``NaN``, ``Infinity`` and ``-Infinity`` are numbers here, as TF Serving parses
    requests with rapidjson's kParseNanAndInfFlag (json_tensor.cc)."""
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=JsonConstant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise RequestError(400, f"JSON Parse error: {str(exc)[:200]}") from None
