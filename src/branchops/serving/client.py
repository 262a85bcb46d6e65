"""REST client for TensorFlow Serving's API (and the local server's admin API).

The same client checks the local server and a TensorFlow Serving Deployment on Kubernetes: status,
metadata, ``:predict`` (row or columnar), Prometheus metrics. Every call has a timeout; failures raise
:class:`ServingError` (the server answered with an error) or ``ExternalError`` (it could not be reached).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

import requests

from branchops.errors import ExternalError

_UNSUFFIXED_COUNTER = re.compile(r"^#\s*TYPE\s+(\S+?)(?<!_total)\s+counter\s*$", re.MULTILINE)


class ServingError(ExternalError):
    """The server answered with an HTTP error; ``status`` and TF Serving's ``error`` message are kept."""

    def __init__(self, status: int, message: str, url: str) -> None:
        super().__init__(f"{url}: HTTP {status}: {message}")
        self.status = status
        self.message = message
        self.url = url


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


def parse_prometheus(text: str) -> list[Sample]:
    """Every sample of a Prometheus text exposition, read by prometheus_client's own parser (timestamps,
    escaped label values and all), under the names the exposition gave them; text it cannot parse is an
    ExternalError.

    The parser renames the samples of a counter declared without the ``_total`` suffix (TF Serving's
    ``# TYPE :tensorflow:serving:request_count counter``) to ``NAME_total``; they are given back their
    own name, the one Prometheus stores and dashboards query."""
    from prometheus_client.parser import text_string_to_metric_families

    unsuffixed_counters = set(_UNSUFFIXED_COUNTER.findall(text))
    try:
        samples = []
        for family in text_string_to_metric_families(text):
            renamed = family.type == "counter" and family.name in unsuffixed_counters
            for s in family.samples:
                name = family.name if renamed and s.name == family.name + "_total" else s.name
                samples.append(Sample(name, dict(s.labels), float(s.value)))
        return samples
    except ValueError as exc:
        raise ExternalError(f"the metrics are not Prometheus' text format: {str(exc)[:300]}") from None


def metric_sum(samples: list[Sample], name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(
        s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


class ServingClient:
    def __init__(
        self, base_url: str, model_name: str, timeout_s: float = 10.0, session: requests.Session | None = None
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model_name = model_name
        self.timeout_s = timeout_s
        self.session = session or requests.Session()

    # -- TF Serving REST API ------------------------------------------------------------------
    def model_url(self, version: int | None = None, label: str | None = None) -> str:
        if version is not None and label is not None:
            raise ValueError("give a version or a label, not both")
        url = f"{self.base_url}/v1/models/{self.model_name}"
        if version is not None:
            url += f"/versions/{int(version)}"
        elif label is not None:
            url += f"/labels/{label}"
        return url

    def status(self, version: int | None = None, label: str | None = None) -> list[dict[str, Any]]:
        return self._json("GET", self.model_url(version, label))["model_version_status"]

    def metadata(self, version: int | None = None, label: str | None = None) -> dict[str, Any]:
        return self._json("GET", self.model_url(version, label) + "/metadata")

    def predict(
        self,
        instances: Any = None,
        *,
        inputs: Any = None,
        version: int | None = None,
        label: str | None = None,
        signature_name: str | None = None,
        request_id: str | None = None,
    ) -> dict[str, Any]:
        """``request_id`` is sent as ``X-Request-ID``, the key the prediction log keeps the request under
        (and outcomes are later joined on)."""
        if (instances is None) == (inputs is None):
            raise ValueError("give 'instances' (row format) or 'inputs' (columnar format)")
        body: dict[str, Any] = {"instances": instances} if instances is not None else {"inputs": inputs}
        if signature_name:
            body["signature_name"] = signature_name
        headers = {"X-Request-ID": request_id} if request_id is not None else None
        return self._json("POST", self.model_url(version, label) + ":predict", body, headers)

    def metrics(self) -> list[Sample]:
        url = f"{self.base_url}/monitoring/prometheus/metrics"
        return parse_prometheus(self._request("GET", url).text)

    def wait_version(self, version: int, timeout_s: float, poll_s: float = 0.2) -> dict[str, Any]:
        """Wait until ``version`` is AVAILABLE or has failed (state END); return its status entry."""
        deadline = time.monotonic() + timeout_s
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            try:
                last = self.status(version=version)[0]
            except ServingError as exc:
                if exc.status != 404:
                    raise
            else:
                if last["state"] in ("AVAILABLE", "END"):
                    return last
            time.sleep(poll_s)
        raise ExternalError(
            f"version {version} of model {self.model_name} did not finish loading within "
            f"{timeout_s:.0f}s (last state: {last.get('state', 'unknown')})"
        )

    # -- local server admin API (loopback only) -------------------------------------------------
    def health(self) -> dict[str, Any]:
        return self._json("GET", f"{self.base_url}/branchops/admin/health")

    def load_version(self, version: int) -> dict[str, Any]:
        return self._json("POST", f"{self.base_url}/branchops/admin/versions/{int(version)}:load")

    def retire_version(self, version: int) -> dict[str, Any]:
        return self._json("POST", f"{self.base_url}/branchops/admin/versions/{int(version)}:retire")

    def set_routing(self, stable: int | None, canary: int | None = None) -> dict[str, Any]:
        """Move the labels (the local server, like TF Serving, has no traffic weights)."""
        body = {"stable": stable, "canary": canary}
        return self._json("POST", f"{self.base_url}/branchops/admin/routing", body)

    # -- plumbing -------------------------------------------------------------------------------
    def _request(
        self, method: str, url: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> requests.Response:
        try:
            response = self.session.request(method, url, json=body, headers=headers, timeout=self.timeout_s)
        except requests.Timeout:
            raise ExternalError(f"{url}: no answer within {self.timeout_s:.0f}s") from None
        except requests.ConnectionError as exc:
            raise ExternalError(
                f"cannot reach the model server at {self.base_url}: {exc.__class__.__name__}"
            ) from None
        if response.status_code >= 400:
            try:
                message = response.json().get("error", response.text)
            except ValueError:
                message = response.text[:300]
            raise ServingError(response.status_code, str(message), url)
        return response

    def _json(self, method: str, url: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
        response = self._request(method, url, body, headers)
        try:
            return response.json()
        except ValueError:
            raise ExternalError(f"{url}: the answer is not JSON: {response.text[:200]!r}") from None
