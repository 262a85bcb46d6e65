"""The local server's Prometheus metrics."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from branchops.serving.server_model import ModelVersion, Routing

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


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
