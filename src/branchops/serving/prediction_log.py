"""The local server's prediction log: a sample of its :predict traffic, as JSON Lines, for monitoring.

The format is the contract between the writers (this module in the local server, the logging proxy on
Kubernetes) and monitor's reader (docs/monitoring.md): in the log folder, files
``predictions-<UTC yyyymmddTHHMMSSffffff>-<pid>.jsonl``, one JSON object per sampled request that was
answered 200::

    {"time": "2026-11-29T22:59:01.123456Z", "request_id": "AAPL/2016-03-14", "model": "djia",
     "version": 3, "label": "stable", "inputs": {"<input>": [row, ...]}, "outputs": {"<output>": [row, ...]}}

``inputs`` and ``outputs`` are columnar whatever format the client used (a single unnamed input or output
is keyed by its signature name). ``request_id`` is the request's ``X-Request-ID`` header; nothing else of
the request is kept (no headers, no credentials). Non-finite numbers stay ``NaN``/``Infinity``, as in TF
Serving's own JSON.

Logging must not slow :predict: a request thread only draws the sample and hands the parsed request and
its answer to a bounded queue; if the queue is full the line is dropped and counted, never waited for.
One background thread turns them into lines and appends each with a single ``write`` to a file opened
``O_APPEND``, so a reader sees whole lines (at worst the newest file ends in a line still being written).
A file is closed and a new one started when the next line would take it past ``max_file_bytes``; the
oldest files of the folder beyond ``max_files`` are deleted. :meth:`PredictionLog.close` (the server calls
it on SIGTERM) writes what is queued before the process exits.

``time`` is when the line is written, strictly increasing in one writer: monitor's cursor is the time of
the last line it read, so a line can never appear later with an earlier time than one already read.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import queue
import random
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from branchops.serving.server_model import ModelVersion

log = logging.getLogger("branchops.serving.prediction_log")

FILE_PREFIX = "predictions-"
FILE_SUFFIX = ".jsonl"
MONITOR_FILE = "monitor.json"
# Lines waiting for the writer. Each holds a parsed request (up to the server's 16 MiB body limit), so
# the bound is on memory as much as on latency.
DEFAULT_QUEUE_SIZE = 1024
CLOSE_TIMEOUT_S = 10.0
DEFAULT_SIGNATURE = "serving_default"


class _Entry(NamedTuple):
    request_id: str | None
    version: int
    label: str | None
    input_names: list[str]
    output_names: list[str]
    body: dict[str, Any]
    answer: dict[str, Any]


def log_file_name(when: datetime, pid: int) -> str:
    return f"{FILE_PREFIX}{when.strftime('%Y%m%dT%H%M%S%f')}-{pid}{FILE_SUFFIX}"


def log_files(folder: Path) -> list[Path]:
    """The folder's prediction log files, oldest first (the name starts with the file's UTC start time)."""
    try:
        paths = list(folder.iterdir())
    except FileNotFoundError:
        return []
    names = [p for p in paths if p.name.startswith(FILE_PREFIX) and p.name.endswith(FILE_SUFFIX)]
    return sorted(names, key=lambda p: p.name)


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"b64"}


def columnar_inputs(body: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """The request's inputs by name, each a list of rows, from a row (``instances``) or columnar
    (``inputs``) request the server accepted for a signature with inputs ``names``."""
    if "instances" in body:
        instances = body["instances"]
        if instances and all(isinstance(i, dict) and not _is_b64(i) for i in instances):
            return {n: [instance[n] for instance in instances] for n in names}
        return {names[0]: instances}
    inputs = body["inputs"]
    if isinstance(inputs, dict) and not _is_b64(inputs):
        return {n: inputs[n] for n in names}
    return {names[0]: inputs}


def columnar_outputs(answer: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """The answer's outputs by name, each a list of rows, from ``predictions`` (row format: one value or,
    with several outputs, one object per row) or ``outputs`` (columnar: one value or an object by name)."""
    if "predictions" in answer:
        predictions = answer["predictions"]
        if len(names) == 1:
            return {names[0]: predictions}
        return {n: [row[n] for row in predictions] for n in names}
    outputs = answer["outputs"]
    return {names[0]: outputs} if len(names) == 1 else {n: outputs[n] for n in names}


def _total(counter: Any) -> int:
    """A counter's count over all its labels."""
    return int(sum(s.value for m in counter.collect() for s in m.samples if s.name.endswith("_total")))


def _timestamp(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _append(fd: int, data: bytes) -> None:
    """One line, in one ``write`` (a regular file takes it whole; the loop only guards against a short
    write on a full disk, which then fails on the next call)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class PredictionLog:
    """The writer of one server process. Thread-safe :meth:`submit`; one background writer thread."""

    def __init__(
        self,
        folder: Path,
        model: str,
        *,
        sample_rate: float = 1.0,
        max_file_bytes: int = 16 * 1024 * 1024,
        max_files: int = 8,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        registry: CollectorRegistry | None = None,
        seed: int | None = None,
    ) -> None:
        if not 0 <= sample_rate <= 1:
            raise ValueError(f"sample_rate must be within [0, 1], got {sample_rate}")
        if max_file_bytes < 1 or max_files < 1 or queue_size < 1:
            raise ValueError("max_file_bytes, max_files and queue_size must be at least 1")
        from prometheus_client import Counter

        self.folder = Path(folder)
        self.model = model
        self.sample_rate = sample_rate
        self.max_file_bytes = max_file_bytes
        self.max_files = max_files
        # Each process draws its own sample: replicas (or a restarted server) do not all keep the same
        # requests. A seed is for tests that need the draw repeated.
        self._random = random.Random(seed if seed is not None else int.from_bytes(os.urandom(8), "big"))
        self._queue: queue.Queue[_Entry | None] = queue.Queue(maxsize=queue_size)
        self._closed = threading.Event()
        self._fd: int | None = None
        self._file: Path | None = None
        self._file_bytes = 0
        self._last_time: datetime | None = None
        self._failing = False  # the last write failed (warned once until a write succeeds again)
        self._lines = Counter(
            "branchops_prediction_log_lines",
            "Sampled :predict requests written to the prediction log.",
            ["model"],
            registry=registry,
        )
        self._dropped = Counter(
            "branchops_prediction_log_dropped_lines",
            "Sampled :predict requests not logged: queue_full (the writer fell behind), too_large (one "
            "line over max_file_bytes), write_error, closed (answered while the server stopped).",
            ["model", "reason"],
            registry=registry,
        )
        self._lines.labels(model)
        for reason in ("queue_full", "too_large", "write_error", "closed"):
            self._dropped.labels(model, reason)
        self._thread = threading.Thread(target=self._run, name="prediction-log-writer", daemon=True)
        self._thread.start()

    # -- request threads ----------------------------------------------------------------------------
    def submit(
        self,
        mv: ModelVersion,
        label: str | None,
        body: dict[str, Any],
        answer: dict[str, Any],
        request_id: str | None,
    ) -> None:
        """A request answered 200 with ``answer``: maybe logged; never blocks. ``body`` and ``answer`` must
        not change afterwards (the writer thread reads them later)."""
        if self.sample_rate < 1 and self._random.random() >= self.sample_rate:
            return
        if self._closed.is_set():
            self._dropped.labels(self.model, "closed").inc()
            return
        signature = mv.signatures[body.get("signature_name", DEFAULT_SIGNATURE)]
        entry = _Entry(
            request_id, mv.version, label, list(signature.inputs), list(signature.outputs), body, answer
        )
        try:
            self._queue.put_nowait(entry)
        except queue.Full:
            self._dropped.labels(self.model, "queue_full").inc()

    def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Write what is queued, then stop the writer (later submissions are dropped as ``closed``)."""
        if self._closed.is_set():
            return
        self._closed.set()
        deadline = time.monotonic() + timeout_s
        while True:  # the sentinel must not be dropped: wait for room (only the writer takes from the queue)
            try:
                self._queue.put(None, timeout=0.1)
                break
            except queue.Full:
                if time.monotonic() > deadline or not self._thread.is_alive():
                    break
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            log.warning(
                "the prediction log writer did not finish within %.0fs; %d queued lines are lost",
                timeout_s,
                self._queue.qsize(),
            )
        log.info(
            "prediction log closed: %d lines written, %d dropped",
            _total(self._lines),
            _total(self._dropped),
        )

    # -- writer thread ------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while True:
                entry = self._queue.get()
                if entry is None:
                    return
                try:
                    self._write(entry)
                except Exception:  # noqa: BLE001 - one bad entry must not stop the log
                    log.exception("could not log a prediction")
                    self._dropped.labels(self.model, "write_error").inc()
        finally:
            self._close_file()

    def _now(self) -> datetime:
        now = datetime.now(timezone.utc)
        if self._last_time is not None and now <= self._last_time:
            # The clock stood still or stepped back: this writer's times still only grow.
            now = self._last_time + timedelta(microseconds=1)
        self._last_time = now
        return now

    def _write(self, entry: _Entry) -> None:
        now = self._now()
        line = {
            "time": _timestamp(now),
            "request_id": entry.request_id,
            "model": self.model,
            "version": entry.version,
            "label": entry.label,
            "inputs": columnar_inputs(entry.body, entry.input_names),
            "outputs": columnar_outputs(entry.answer, entry.output_names),
        }
        data = (json.dumps(line, separators=(",", ":")) + "\n").encode("utf-8")
        if len(data) > self.max_file_bytes:
            self._dropped.labels(self.model, "too_large").inc()
            log.warning(
                "not logging request %s: its line of %d bytes is over max_file_bytes (%d)",
                entry.request_id,
                len(data),
                self.max_file_bytes,
            )
            return
        try:
            if self._fd is None or self._file_bytes + len(data) > self.max_file_bytes:
                self._rotate(now)
            assert self._fd is not None
            _append(self._fd, data)
        except OSError as exc:
            self._dropped.labels(self.model, "write_error").inc()
            if not self._failing:
                log.warning("cannot write the prediction log in %s: %s", self.folder, exc)
            self._failing = True
            if self._fd is not None:
                # a write cut short (a full disk) leaves part of a line, which every later read would
                # refuse as corrupt: the file goes back to its last whole line
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, self._file_bytes)
            self._close_file()  # the next line starts a new file (the folder may have been removed)
            return
        if self._failing:
            log.info("the prediction log in %s is written again", self.folder)
            self._failing = False
        self._file_bytes += len(data)
        self._lines.labels(self.model).inc()

    def _rotate(self, now: datetime) -> None:
        self._close_file()
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / log_file_name(now, os.getpid())
        # O_EXCL: a name is never shared (the times in names only grow, so this fails only if another
        # process reused this pid at the same microsecond).
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        self._file, self._file_bytes = path, 0
        self._prune()

    def _prune(self) -> None:
        """Delete the folder's oldest log files beyond ``max_files`` (the current file is the newest)."""
        files = [p for p in log_files(self.folder) if p != self._file]
        for old in files[: max(0, len(files) - (self.max_files - 1))]:
            try:
                old.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("cannot delete the old prediction log file %s: %s", old, exc)

    def _close_file(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
        self._fd, self._file, self._file_bytes = None, None, 0


# -- the processes that write it (the local model server, the logging proxy) --------------------------


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {text}")
    return value


def at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """The prediction log's command-line options, the same for every process that writes one; ``what``
    ends the help of ``--prediction-log`` (what the process does without it)."""
    parser.add_argument(
        "--prediction-log",
        type=Path,
        metavar="DIR",
        help="log a sample of the :predict requests and their answers in DIR (JSON Lines); its "
        f"monitor.json is exposed as gauges. {what}",
    )
    parser.add_argument(
        "--log-sample-rate", type=_fraction, default=1.0, help="share of requests logged (0 to 1)"
    )
    parser.add_argument(
        "--log-max-file-bytes", type=at_least_one, default=16 * 1024 * 1024, help="rotate at this size"
    )
    parser.add_argument(
        "--log-max-files", type=at_least_one, default=8, help="keep this many log files in DIR"
    )
    parser.add_argument(
        "--log-queue-size",
        type=at_least_one,
        default=DEFAULT_QUEUE_SIZE,
        help="answered requests waiting to be logged; more are dropped (and counted), never waited for",
    )


def from_arguments(
    args: argparse.Namespace, model: str, registry: CollectorRegistry, sample_rate: float | None = None
) -> PredictionLog | None:
    """The log the options of :func:`add_arguments` ask for (None without ``--prediction-log``);
    ``sample_rate`` overrides theirs (the proxy draws the sample itself, before it looks anything up)."""
    if args.prediction_log is None:
        return None
    return PredictionLog(
        args.prediction_log,
        model,
        sample_rate=args.log_sample_rate if sample_rate is None else sample_rate,
        max_file_bytes=args.log_max_file_bytes,
        max_files=args.log_max_files,
        queue_size=args.log_queue_size,
        registry=registry,
    )


def serve_until_terminated(
    http: Any, ready_file: Path | None, ready: dict[str, Any], log_: PredictionLog | None
) -> int:
    """Run a waitress server that writes the log (the model server, the proxy) until SIGTERM; ``ready`` is
    written to ``ready_file`` first (atomically: its reader polls for it), and what the log has queued is
    written before the process ends."""
    if ready_file:
        tmp = ready_file.with_name(ready_file.name + ".tmp")
        tmp.write_text(json.dumps(ready))
        tmp.replace(ready_file)
    try:
        http.run()
    except SystemExit:
        log.info("stopping on SIGTERM")
    finally:
        http.close()
        if log_ is not None:
            log_.close()
    return 0
