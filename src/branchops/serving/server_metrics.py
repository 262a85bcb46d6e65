"""The local server's Prometheus metrics, rendered by prometheus_client.

TensorFlow Serving's own series come first, under its names and labels, so that dashboards and alerts
built for TF Serving work on the local server too (tensorflow_serving/servables/tensorflow/util.cc and
util/prometheus_exporter.cc, which turns ``/tensorflow/serving/request_count`` into
``:tensorflow:serving:request_count``):

* ``:tensorflow:serving:request_count{model_name, status}``: every REST request, by canonical status
  code name (``OK``, ``INVALID_ARGUMENT``, ``NOT_FOUND`` ...);
* ``:tensorflow:serving:request_latency{model_name, API, entrypoint="REST"}``: a histogram in
  microseconds of the requests that succeeded, with TF Serving's buckets (10 us growing by 1.8, 33
  of them); ``API`` is ``predict``/``classify``/``regress``, empty for GETs, as TF Serving sets it.

branchops' extras, per version (TF Serving has no version label), stay under ``branchops_serving_``;
the prediction log's line counts under ``branchops_prediction_log_``; and the results of the last
``branchops monitor`` check, read from ``monitor.json`` in the prediction log's folder when scraped,
under ``branchops_monitor_`` (:class:`MonitorGauges`).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

if TYPE_CHECKING:
    from branchops.serving.server_model import ModelVersion

log = logging.getLogger("branchops.serving.server")

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# TF Serving's request_latency: monitoring::Buckets::Exponential(10, 1.8, 33), in microseconds.
TF_SERVING_LATENCY_BUCKETS_US = tuple(10 * 1.8**i for i in range(33))
TF_SERVING_REQUEST_COUNT = ":tensorflow:serving:request_count"
TF_SERVING_REQUEST_LATENCY = ":tensorflow:serving:request_latency"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# HTTP status -> the canonical status code TF Serving's REST layer answers it for (the inverse of
# ToHTTPStatusCode in model_servers/http_server.cc; 400 is also FAILED_PRECONDITION/OUT_OF_RANGE there).
STATUS_NAMES = {
    200: "OK",
    400: "INVALID_ARGUMENT",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "INVALID_ARGUMENT",  # TF Serving answers a malformed method/path with InvalidArgument
    409: "ALREADY_EXISTS",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


class _TfServingRequestCount:
    """``:tensorflow:serving:request_count`` exactly as TF Serving names its samples.

    prometheus_client's text writer names every counter family ``NAME_total``; TF Serving's counter has
    no suffix and dashboards select its samples by that name, so the family is collected untyped and
    :meth:`Metrics.render` declares it a counter, as TF Serving's exporter does."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str], int] = {}

    def inc(self, model_name: str, status: str) -> None:
        with self._lock:
            self._counts[(model_name, status)] = self._counts.get((model_name, status), 0) + 1

    def collect(self) -> Iterator[Metric]:
        family = Metric(TF_SERVING_REQUEST_COUNT, "The total number of requests.", "unknown")
        with self._lock:
            counts = sorted(self._counts.items())
        for (model_name, status), n in counts:
            family.add_sample(TF_SERVING_REQUEST_COUNT, {"model_name": model_name, "status": status}, n)
        yield family


class _VersionsAvailable:
    def __init__(self, model: str, versions: Callable[[], dict[int, ModelVersion]]) -> None:
        self.model, self.versions = model, versions

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "branchops_serving_version_available",
            "1 if the version takes traffic.",
            labels=["model", "version"],
        )
        for v, mv in sorted(self.versions().items()):
            family.add_metric([self.model, str(v)], 1 if mv.state == "AVAILABLE" else 0)
        yield family


class Metrics:
    """One registry per server (several servers may live in one test process)."""

    def __init__(self, model: str, versions: Callable[[], dict[int, ModelVersion]]) -> None:
        # TF Serving writes no *_created series; prometheus_client would, for every counter and histogram.
        disable_created_metrics()
        self.model = model
        self.registry = CollectorRegistry(auto_describe=False)
        self._tf_requests = _TfServingRequestCount()
        self.registry.register(self._tf_requests)  # type: ignore[arg-type]
        self._tf_latency = Histogram(
            TF_SERVING_REQUEST_LATENCY,
            "Distribution of wall time (in microseconds) for Tensorflow Serving request.",
            ["model_name", "API", "entrypoint"],
            buckets=TF_SERVING_LATENCY_BUCKETS_US,
            registry=self.registry,
        )
        self._requests = Counter(
            "branchops_serving_requests",
            "Requests answered, by version, API and HTTP status.",
            ["model", "version", "api", "code"],
            registry=self.registry,
        )
        self._errors = Counter(
            "branchops_serving_request_errors",
            "Requests that failed on the server side (5xx).",
            ["model", "version"],
            registry=self.registry,
        )
        self._latency = Histogram(
            "branchops_serving_request_latency_seconds",
            "Predict latency inside the server.",
            ["model", "version"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.registry.register(_VersionsAvailable(model, versions))  # type: ignore[arg-type]

    def watch_monitor_file(self, path: Path) -> None:
        """Expose the monitor results in ``path`` (``monitor.json``) as gauges, read at each scrape."""
        self.registry.register(MonitorGauges(path))  # type: ignore[arg-type]

    def observe(self, model_name: str, version: str, api: str, code: int, seconds: float) -> None:
        """One REST request: ``model_name`` as the URL named it, ``version`` the one that answered (or
        ``none``), ``api`` predict/classify/regress/status/metadata."""
        self._tf_requests.inc(model_name, STATUS_NAMES.get(code, "UNKNOWN"))
        if code == 200:  # TF Serving records latency only for requests that succeeded
            tf_api = api if api in ("predict", "classify", "regress") else ""
            self._tf_latency.labels(model_name, tf_api, "REST").observe(seconds * 1e6)
        self._requests.labels(self.model, version, api, str(code)).inc()
        if code >= 500:
            self._errors.labels(self.model, version).inc()
        if api == "predict":
            self._latency.labels(self.model, version).observe(seconds)

    def render(self) -> bytes:
        text = generate_latest(self.registry)
        return text.replace(
            f"# TYPE {TF_SERVING_REQUEST_COUNT} untyped\n".encode(),
            f"# TYPE {TF_SERVING_REQUEST_COUNT} counter\n".encode(),
            1,
        )


# -- the last monitor check, as gauges ---------------------------------------------------------------

MONITOR_GAUGES = {
    "branchops_monitor_psi": "Population Stability Index of a feature against the served version's "
    "training reference, at the last monitor check.",
    "branchops_monitor_ks_pvalue": "Two-sample Kolmogorov-Smirnov p-value of a feature against the "
    "reference, at the last monitor check.",
    "branchops_monitor_prediction_psi": "Population Stability Index of the predictions, at the last check.",
    "branchops_monitor_prediction_ks_pvalue": "Kolmogorov-Smirnov p-value of the predictions, at the last "
    "check.",
    "branchops_monitor_drift": "1 if the last monitor check found drift, else 0.",
    "branchops_monitor_live_metric": "The live metric on the requests whose outcomes arrived.",
    "branchops_monitor_live_metric_low": "Lower bound of the live metric's interval.",
    "branchops_monitor_live_metric_high": "Upper bound of the live metric's interval.",
    "branchops_monitor_rows": "Logged rows the last monitor check read.",
    "branchops_monitor_last_check_timestamp_seconds": "When the last monitor check ran (Unix time).",
}


def _number(value: Any, where: str) -> float | None:
    """A gauge value: a JSON number, or None for one the check could not compute (null)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where} must be a number or null, got {json.dumps(value)[:40]}")
    return float(value)


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be an object")
    return value


def monitor_samples(payload: Any) -> list[tuple[str, dict[str, str], float]]:
    """The gauges of a monitor.json document (docs/monitoring.md) as (name, labels, value); a document of
    another shape is a ValueError naming what is wrong (then nothing of it is exposed)."""
    doc = _object(payload, "monitor.json")
    if not isinstance(doc.get("model"), str) or not doc["model"]:
        raise ValueError("'model' must be the model's name")
    version = doc.get("version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise ValueError("'version' must be the served version's number")
    if not isinstance(doc.get("drifted"), bool):
        raise ValueError("'drifted' must be true or false")
    if not isinstance(doc.get("time"), str):
        raise ValueError("'time' must be an ISO 8601 time")
    try:
        checked = datetime.fromisoformat(doc["time"])
    except ValueError:
        raise ValueError(f"'time' is not an ISO 8601 time: {doc['time'][:40]!r}") from None
    if checked.tzinfo is None:
        raise ValueError(f"'time' has no time zone: {doc['time'][:40]!r}")
    base = {"model": doc["model"], "version": str(version)}
    samples: list[tuple[str, dict[str, str], float | None]] = [
        ("branchops_monitor_drift", base, 1.0 if doc["drifted"] else 0.0),
        ("branchops_monitor_rows", base, _number(doc.get("rows"), "'rows'")),
        ("branchops_monitor_last_check_timestamp_seconds", base, checked.timestamp()),
    ]
    for feature, stats in sorted(_object(doc.get("features", {}), "'features'").items()):
        where = f"features[{feature!r}]"
        stats = _object(stats, where)
        labels = {**base, "feature": feature}
        samples.append(("branchops_monitor_psi", labels, _number(stats.get("psi"), f"{where}.psi")))
        samples.append(
            ("branchops_monitor_ks_pvalue", labels, _number(stats.get("ks_pvalue"), f"{where}.ks_pvalue"))
        )
    if doc.get("prediction") is not None:
        prediction = _object(doc["prediction"], "'prediction'")
        samples.append(
            ("branchops_monitor_prediction_psi", base, _number(prediction.get("psi"), "prediction.psi"))
        )
        samples.append(
            (
                "branchops_monitor_prediction_ks_pvalue",
                base,
                _number(prediction.get("ks_pvalue"), "prediction.ks_pvalue"),
            )
        )
    if doc.get("live_metric") is not None:
        live = _object(doc["live_metric"], "'live_metric'")
        if not isinstance(live.get("name"), str) or not live["name"]:
            raise ValueError("live_metric.name must be the metric's name")
        labels = {**base, "metric": live["name"]}
        for suffix, key in (("", "value"), ("_low", "low"), ("_high", "high")):
            value = _number(live.get(key), f"live_metric.{key}")
            samples.append((f"branchops_monitor_live_metric{suffix}", labels, value))
    return [(name, labels, value) for name, labels, value in samples if value is not None]


class MonitorGauges:
    """``monitor.json`` (written by the serving backend's ``publish_monitoring``) as gauges, read when
    scraped: a stat per scrape, parsed again only when the file changed. A missing or unreadable file
    exposes no gauge and logs one warning until it changes."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._cached: tuple[tuple[int, int, int], list[tuple[str, dict[str, str], float]]] | None = None
        self._warned: object = None  # the problem last warned about

    def _samples(self) -> list[tuple[str, dict[str, str], float]]:
        try:
            stat = os.stat(self.path)
            key = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
            if self._cached is not None and self._cached[0] == key:
                return self._cached[1]
            samples = monitor_samples(json.loads(self.path.read_bytes()))
        except FileNotFoundError:
            self._warn_once(
                "missing", "no monitoring results to expose: %s does not exist (branchops monitor writes it)"
            )
            return []
        except (OSError, ValueError, RecursionError) as exc:
            self._warn_once(("broken", str(exc)), "not exposing the monitoring results of %s: %s", exc)
            return []
        self._cached, self._warned = (key, samples), None
        return samples

    def _warn_once(self, problem: object, message: str, *args: Any) -> None:
        if self._warned != problem:
            self._warned = problem
            log.warning(message, self.path, *args)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            samples = self._samples()
        by_name: dict[str, list[tuple[dict[str, str], float]]] = {}
        for name, labels, value in samples:
            by_name.setdefault(name, []).append((labels, value))
        for name, entries in by_name.items():
            family = GaugeMetricFamily(name, MONITOR_GAUGES[name], labels=list(entries[0][0]))
            for labels, value in entries:
                family.add_metric(list(labels.values()), value)
            yield family
