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

branchops' extras, per version (TF Serving has no version label), stay under ``branchops_serving_``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

if TYPE_CHECKING:
    from branchops.serving.server_model import ModelVersion

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
