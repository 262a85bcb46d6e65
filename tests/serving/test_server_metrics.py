"""The client reads Prometheus' text format with prometheus_client's own parser (no server runs here)."""

from __future__ import annotations

import pytest

from branchops.errors import ExternalError
from branchops.serving.client import metric_sum, parse_prometheus

# What TF Serving's exporter and a Prometheus client library may write: a sample with a timestamp (in
# milliseconds, allowed by the text format 0.0.4), escaped label values, TF Serving's colon names.
EXPOSITION = r"""# HELP :tensorflow:serving:request_count The total number of requests.
# TYPE :tensorflow:serving:request_count counter
:tensorflow:serving:request_count{model_name="djia",status="OK"} 7 1764442800000
:tensorflow:serving:request_count{model_name="djia",status="INVALID_ARGUMENT"} 2
# TYPE branchops_serving_requests_total counter
branchops_serving_requests_total{api="predict",code="200",model="djia",version="2"} 5 1764442800123
branchops_serving_requests_total{api="predict",code="200",model="quote\"d",version="2"} 1
# TYPE :tensorflow:serving:request_latency histogram
:tensorflow:serving:request_latency_bucket{model_name="djia",API="predict",entrypoint="REST",le="10"} 0
:tensorflow:serving:request_latency_bucket{model_name="djia",API="predict",entrypoint="REST",le="+Inf"} 7
:tensorflow:serving:request_latency_sum{model_name="djia",API="predict",entrypoint="REST"} 4200
:tensorflow:serving:request_latency_count{model_name="djia",API="predict",entrypoint="REST"} 7
"""


def test_samples_with_a_timestamp_are_kept():
    samples = parse_prometheus(EXPOSITION)
    assert metric_sum(samples, "branchops_serving_requests_total", model="djia", version="2") == 5
    # a counter declared without the _total suffix keeps its samples' names (the parser's would add it)
    assert metric_sum(samples, ":tensorflow:serving:request_count", status="OK") == 7
    assert metric_sum(samples, ":tensorflow:serving:request_count", model_name="djia") == 9
    assert not [s for s in samples if s.name == ":tensorflow:serving:request_count_total"]


def test_escaped_label_values_and_histograms_are_read():
    samples = parse_prometheus(EXPOSITION)
    assert metric_sum(samples, "branchops_serving_requests_total", model='quote"d') == 1
    assert metric_sum(samples, ":tensorflow:serving:request_latency_count", API="predict") == 7
    assert metric_sum(samples, ":tensorflow:serving:request_latency_bucket", le="+Inf") == 7


def test_text_that_is_not_the_exposition_format_is_a_clear_error():
    with pytest.raises(ExternalError, match="Prometheus"):
        parse_prometheus("<html>502 Bad Gateway</html>\n")
