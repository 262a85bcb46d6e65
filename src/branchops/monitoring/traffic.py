"""What ``branchops monitor`` reads: the prediction log and the outcomes, as the serving port returns them
(file name -> bytes), in the formats of docs/monitoring.md.

The prediction log is JSON Lines, one line per logged :predict request, each ``{"time", "request_id",
"model", "version", "label", "inputs": {name: [row, ...]}, "outputs": {name: [row, ...]}}``. Files are
read oldest first (their names begin with the UTC time they were started); the last line of the newest
file may still be being written, so an unterminated last line there is left for the next check. Any
other line that is not such an object is an error naming the file and line: a check never measures
drift on a log it only partly understood.

Outcomes are ``*.csv`` (header ``request_id,label``, an optional ``row`` column, default 0) or ``*.jsonl``
(``{"request_id", "row", "label"}``) and join the logged rows on (request_id, row): the row is the
position of an instance in its request.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from branchops.errors import DataError

LOG_PREFIX = "predictions-"
LOG_SUFFIX = ".jsonl"
# a request id that ends with a day, as the demo's "<TICKER>/<YYYY-MM-DD>": the day its outcome is about
_TRAILING_DAY = re.compile(r"(\d{4}-\d{2}-\d{2})$")


class NoTraffic(DataError):
    """The prediction log holds no request at all: nothing to measure (logging off, or the wrong folder)."""


@dataclass
class LoggedRequest:
    time: datetime
    time_text: str  # as logged: the cursor a monitor record keeps
    request_id: str | None
    model: str | None
    version: int | None
    inputs: dict[str, list[Any]]
    outputs: dict[str, list[Any]]
    where: str  # "<file>:<line>", for messages


@dataclass
class PredictionLog:
    requests: list[LoggedRequest] = field(default_factory=list)  # oldest first
    files: int = 0

    def since(self, cursor: str | None) -> list[LoggedRequest]:
        """The requests logged after ``cursor`` (the ``time`` of the last line a check read; None: all)."""
        if cursor is None:
            return list(self.requests)
        after = parse_time(cursor, "the cursor of the last monitor record")
        return [r for r in self.requests if r.time > after]


def parse_time(text: Any, where: str) -> datetime:
    if not isinstance(text, str):
        raise DataError(f"{where}: 'time' must be an ISO 8601 UTC time, got {text!r}")
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise DataError(f"{where}: 'time' is not an ISO 8601 time: {text[:40]!r}") from None
    if value.tzinfo is None:
        raise DataError(f"{where}: 'time' has no time zone: {text[:40]!r}")
    return value


def _columns(value: Any, key: str, where: str) -> dict[str, list[Any]]:
    if not isinstance(value, dict) or not all(isinstance(v, list) for v in value.values()):
        raise DataError(f"{where}: '{key}' must be an object of named columns (lists of rows)")
    return value


def _request(line: bytes, where: str) -> LoggedRequest:
    try:
        doc = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{where}: not a JSON line of the prediction log: {exc}") from None
    if not isinstance(doc, dict):
        raise DataError(f"{where}: a prediction log line must be a JSON object")
    request_id = doc.get("request_id")
    version = doc.get("version")
    if request_id is not None and not isinstance(request_id, str):
        raise DataError(f"{where}: 'request_id' must be a string or null")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
        raise DataError(f"{where}: 'version' must be the served version's number")
    return LoggedRequest(
        time=parse_time(doc.get("time"), where),
        time_text=doc["time"],
        request_id=request_id,
        model=doc.get("model") if isinstance(doc.get("model"), str) else None,
        version=version,
        inputs=_columns(doc.get("inputs"), "inputs", where),
        outputs=_columns(doc.get("outputs"), "outputs", where),
        where=where,
    )


def read_prediction_log(files: dict[str, bytes], where: str = "the prediction log") -> PredictionLog:
    """Every logged request of ``files`` (name -> content, as ``Serving.read_prediction_log`` returns
    them), oldest first. Raises :class:`NoTraffic` when there is none, and DataError naming the file and
    line of a line that is not a prediction log entry."""
    names = sorted(n for n in files if n.startswith(LOG_PREFIX) and n.endswith(LOG_SUFFIX))
    # each writer (the pid at the end of the name) appends to its newest file only: several servers or
    # proxy replicas may each be writing a line right now
    newest = {_writer(name): name for name in names}
    requests: list[LoggedRequest] = []
    for name in names:
        content = files[name]
        lines = content.split(b"\n")
        # content ending in "\n" leaves an empty last piece; anything else there is an unterminated line
        unterminated = lines.pop()
        if unterminated.strip() and newest[_writer(name)] != name:
            raise DataError(
                f"{name}:{len(lines) + 1}: the line is cut short (no newline) in a file that is no "
                "longer written to"
            )
        for number, line in enumerate(lines, start=1):
            if line.strip():
                requests.append(_request(line, f"{name}:{number}"))
    if not requests:
        raise NoTraffic(
            f"no traffic: {where} holds no logged request "
            f"({len(names)} log file{'s' if len(names) != 1 else ''}); is monitoring.log.enabled on, and "
            "has the served model had :predict requests since?"
        )
    # one writer's times increase; several writers' files interleave, so order by time, not by file
    requests.sort(key=lambda r: r.time)
    return PredictionLog(requests, len(names))


def _writer(name: str) -> str:
    return name[: -len(LOG_SUFFIX)].rpartition("-")[2]


@dataclass
class Rows:
    """The logged rows of one model version: the features (one list per row), the predicted probability,
    and each row's (request_id, row) key for the join with outcomes."""

    features: list[list[float]] = field(default_factory=list)
    prediction: list[float] = field(default_factory=list)
    keys: list[tuple[str | None, int]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.prediction)


def rows_of(
    requests: list[LoggedRequest], *, version: int, input_name: str, output_name: str, n_features: int
) -> Rows:
    """The rows that ``version`` answered (other versions' traffic, a canary's, is not this reference's),
    checked against the model's signature: a row of another width is an error naming its line."""
    from branchops.serving.base import TOOLKIT_REQUEST_PREFIX

    found = Rows()
    for request in requests:
        if request.version != version:
            continue
        if (request.request_id or "").startswith(TOOLKIT_REQUEST_PREFIX):
            continue  # branchops' own smoke tests, rollout probes and sample predictions are not traffic
        inputs = request.inputs.get(input_name)
        outputs = request.outputs.get(output_name)
        if inputs is None or outputs is None:
            raise DataError(
                f"{request.where}: version {version} logged no input '{input_name}' or output "
                f"'{output_name}' (it has {sorted(request.inputs)} and {sorted(request.outputs)})"
            )
        if len(inputs) != len(outputs):
            raise DataError(f"{request.where}: {len(inputs)} input rows but {len(outputs)} output rows")
        for row_index, (row, answer) in enumerate(zip(inputs, outputs)):
            if not isinstance(row, list) or len(row) != n_features:
                raise DataError(
                    f"{request.where}: row {row_index} of '{input_name}' is not a list of "
                    f"{n_features} features"
                )
            if isinstance(answer, list) and len(answer) == 1:  # a [-1, 1] output
                answer = answer[0]
            if not isinstance(answer, (int, float)) or isinstance(answer, bool):
                raise DataError(f"{request.where}: row {row_index} of '{output_name}' is not a number")
            found.features.append(row)
            found.prediction.append(float(answer))
            found.keys.append((request.request_id, row_index))
    return found


# -- outcomes ------------------------------------------------------------------------------------------


def _label(value: Any, where: str) -> int:
    if isinstance(value, str) and value.strip() in ("0", "1"):
        return int(value.strip())
    if value in (0, 1) and not isinstance(value, bool):
        return int(value)
    raise DataError(f"{where}: 'label' must be 0 or 1, got {value!r}")


def _row(value: Any, where: str) -> int:
    if value is None or value == "":
        return 0
    try:
        row = int(value)
    except (TypeError, ValueError):
        row = -1
    if row < 0 or isinstance(value, (bool, float)):
        raise DataError(f"{where}: 'row' must be a whole number >= 0, got {value!r}")
    return row


def read_outcomes(files: dict[str, bytes]) -> dict[tuple[str, int], int]:
    """(request_id, row) -> label from the outcome files (name -> content); a file's bad line is an error
    naming it. An outcome given twice with different labels is refused: which one would be the truth?"""
    outcomes: dict[tuple[str, int], int] = {}
    origin: dict[tuple[str, int], str] = {}

    def add(key: tuple[str, int], label: int, where: str) -> None:
        if key in outcomes and outcomes[key] != label:
            raise DataError(f"{where}: outcome of {key[0]!r} row {key[1]} contradicts {origin[key]}")
        outcomes[key], origin[key] = label, where

    for name in sorted(files):
        text = _text(files[name], name)
        if name.endswith(".csv"):
            reader = csv.DictReader(io.StringIO(text))
            header = reader.fieldnames or []
            if "request_id" not in header or "label" not in header:
                raise DataError(f"{name}:1: the header must name 'request_id' and 'label' (it is {header})")
            for number, record in enumerate(reader, start=2):
                where = f"{name}:{number}"
                if not record.get("request_id"):
                    raise DataError(f"{where}: no request_id")
                add(
                    (record["request_id"], _row(record.get("row"), where)),
                    _label(record["label"], where),
                    where,
                )
        elif name.endswith(".jsonl"):
            for number, line in enumerate(text.splitlines(), start=1):
                where = f"{name}:{number}"
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError as exc:
                    raise DataError(f"{where}: not a JSON line: {exc}") from None
                if not isinstance(record, dict) or not isinstance(record.get("request_id"), str):
                    raise DataError(
                        f"{where}: an outcome is {{\"request_id\": ..., \"row\": 0, \"label\": 0|1}}"
                    )
                add(
                    (record["request_id"], _row(record.get("row"), where)),
                    _label(record.get("label"), where),
                    where,
                )
    return outcomes


def _text(content: bytes, name: str) -> str:
    try:
        return content.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{name}: not UTF-8 text: {exc}") from None


def joined(rows: Rows, outcomes: dict[tuple[str, int], int]) -> tuple[list[int], list[float]]:
    """The labels that arrived for logged rows, and the predicted probabilities of those rows."""
    labels, scores = [], []
    for key, score in zip(rows.keys, rows.prediction):
        if key[0] is not None and key in outcomes and math.isfinite(score):
            labels.append(outcomes[key])
            scores.append(score)
    return labels, scores


def latest_day(request_ids: list[str | None]) -> date | None:
    """The latest day named at the end of these request ids ("AAPL/2016-03-14"), None if none ends in one:
    the day up to which the truth is known, i.e. how far a retrain's data window can reach."""
    days = []
    for request_id in request_ids:
        match = _TRAILING_DAY.search(request_id or "")
        if match:
            try:
                days.append(date.fromisoformat(match.group(1)))
            except ValueError:
                continue
    return max(days) if days else None
