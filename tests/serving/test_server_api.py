"""The local server speaks TensorFlow Serving's REST API: formats, errors, metrics, fuzzed input.

The tests that only send requests share one server (requests change no version or routing; metrics are
compared before and after); a test that loads versions or routes gets a server of its own."""

from __future__ import annotations

import json
import math
from pathlib import Path
from urllib.parse import quote

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from branchops.serving import make_serving
from branchops.serving.client import ServingError, metric_sum
from branchops.serving.release import Release
from tests.serving.conftest import make_config
from tests.serving.model_factory import N_FEATURES, SAMPLE


def serve_v1(models, root: Path):
    """Start a local server under ``root`` with version 1 stable; yield (client, v1's model metadata)."""
    serving = make_serving(make_config(root / "models"), root / "state")
    serving.start(port=0)
    try:
        release = Release.model_validate(
            {"model": "djia", "version": 1, "source": {"volume": "m", "path": "1"}}
        )
        assert serving.deploy(release, models["v1"]).outcome == "deployed"
        client = serving.client()
        yield client, json.loads((models["v1"] / "assets.extra" / "branchops_model.json").read_text())
    finally:
        serving.stop()


@pytest.fixture(scope="module")
def served(models, tmp_path_factory):
    """A running local server with version 1 stable, shared by the tests that only send requests."""
    yield from serve_v1(models, tmp_path_factory.mktemp("api"))


@pytest.fixture
def own_server(models, tmp_path):
    """A running local server with version 1 stable, for one test that changes versions or routing."""
    yield from serve_v1(models, tmp_path)


def test_model_status_lists_versions_with_tf_serving_fields(served):
    client, _ = served
    response = requests.get(client.model_url(), timeout=10)
    assert response.status_code == 200
    assert response.json() == {
        "model_version_status": [
            {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        ]
    }
    assert client.status(version=1)[0]["state"] == "AVAILABLE"
    assert client.status(label="stable")[0]["version"] == "1"


@pytest.mark.parametrize(
    "path, status",
    [
        ("/v1/models/djia/versions/9", 404),
        ("/v1/models/djia/labels/canary", 404),
        ("/v1/models/nosuchmodel", 404),
        ("/v1/models/djia/versions/one", 400),
        ("/v1/models/djia/versions/1/frobnicate", 404),
    ],
)
def test_status_errors_use_tf_serving_error_format(served, path, status):
    client, _ = served
    response = requests.get(client.base_url + path, timeout=10)
    assert response.status_code == status
    assert set(response.json()) == {"error"} and response.json()["error"]


def test_metadata_describes_the_signature(served):
    client, _ = served
    document = client.metadata(label="stable")
    assert document["model_spec"] == {"name": "djia", "signature_name": "", "version": "1"}
    signature = document["metadata"]["signature_def"]["signature_def"]["serving_default"]
    lagged = signature["inputs"]["lagged_returns"]
    assert lagged["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in lagged["tensor_shape"]["dim"]] == ["-1", str(N_FEATURES)]
    assert signature["outputs"]["direction"]["dtype"] == "DT_INT64"


def test_row_format_predicts_like_the_export(served):
    client, meta = served
    predictions = client.predict(instances=SAMPLE)["predictions"]
    expected = meta["sample"]["predictions"]
    assert [p["direction"] for p in predictions] == expected["direction"]
    assert all(
        math.isclose(p["probability_up"], e, abs_tol=1e-5)
        for p, e in zip(predictions, expected["probability_up"])
    )
    named = client.predict(instances=[{"lagged_returns": row} for row in SAMPLE], version=1)["predictions"]
    assert named == predictions


def test_nan_and_infinity_in_request_json_are_numbers_as_in_tf_serving(served):
    """TF Serving parses request JSON with rapidjson's kParseNanAndInfFlag (json_tensor.cc): NaN and
    ±Infinity are float values, not a 400; its answers carry them as NaN/Infinity, as json.dumps does."""
    client, _ = served
    url = client.model_url() + ":predict"
    raw = '{"instances": [[NaN, Infinity, -Infinity, 0.0], [0.01, -0.02, 0.003, 0.0]]}'
    response = requests.post(url, data=raw, timeout=30)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]  # Python's JSON reads NaN/Infinity back
    assert len(predictions) == 2 and set(predictions[1]) == {"direction", "probability_up"}
    columnar = requests.post(url, data='{"inputs": [[1.0, NaN, 2.0, 3.0]]}', timeout=30)
    assert columnar.status_code == 200, columnar.text
    # A finite literal no double holds is still refused, as rapidjson refuses it.
    too_big = requests.post(url, data='{"instances": [[1e400, 0.0, 0.0, 0.0]]}', timeout=30)
    assert too_big.status_code == 400 and "JSON" in too_big.json()["error"]


def test_columnar_format_returns_outputs_by_name(served):
    client, meta = served
    outputs = client.predict(inputs=SAMPLE)["outputs"]
    assert set(outputs) == {"probability_up", "direction"}
    assert outputs["direction"] == meta["sample"]["predictions"]["direction"]
    assert client.predict(inputs={"lagged_returns": SAMPLE}, label="stable")["outputs"] == outputs


@pytest.mark.parametrize(
    "body, message",
    [
        ({"instances": [[1.0, 2.0]]}, "dimension 1 must be 4"),
        ({"instances": [1.0, 2.0, 3.0, 4.0]}, "expected a tensor of rank 2"),
        ({"instances": [[1, 2, 3, "x"]]}, "expected a number"),
        ({"instances": [[1, 2, 3, True]]}, "expected a number"),
        ({"instances": [[1, 2, 3], [1, 2, 3, 4]]}, "different lengths"),
        ({"instances": []}, "'instances' is empty"),
        ({"inputs": {"wrong_name": SAMPLE}}, "expected the inputs ['lagged_returns']"),
        ({"instances": SAMPLE, "inputs": SAMPLE}, "not both"),
        ({"signature_name": "nope", "instances": SAMPLE}, "not found in signature def"),
        ({"instances": [[1e39, 0, 0, 0]]}, "out of range for float32"),
        ({}, "Missing 'inputs' or 'instances' key"),
    ],
)
def test_malformed_predict_gets_400_with_a_reason(served, body, message):
    client, _ = served
    response = requests.post(client.model_url() + ":predict", json=body, timeout=10)
    assert response.status_code == 400
    assert message in response.json()["error"]


def test_not_json_and_wrong_method(served):
    client, _ = served
    response = requests.post(client.model_url() + ":predict", data=b"{instances: nope", timeout=10)
    assert response.status_code == 400 and "JSON" in response.json()["error"]
    assert requests.get(client.model_url() + ":predict", timeout=10).status_code == 405
    assert requests.post(client.model_url(), json={}, timeout=10).status_code == 405
    with pytest.raises(ServingError) as caught:
        client.predict(instances=[[1.0]])
    assert caught.value.status == 400


def test_prometheus_metrics_count_requests_errors_and_latency_per_version(served):
    client, _ = served
    before = client.metrics()
    client.predict(instances=SAMPLE)
    with pytest.raises(ServingError):
        client.predict(instances=[[0.0]])
    after = client.metrics()

    def delta(name, **labels):
        return metric_sum(after, name, **labels) - metric_sum(before, name, **labels)

    assert delta("branchops_serving_requests_total", version="1", api="predict", code="200") == 1
    assert delta("branchops_serving_requests_total", version="1", api="predict", code="400") == 1
    assert delta("branchops_serving_request_latency_seconds_count", version="1") == 2
    assert metric_sum(after, "branchops_serving_version_available", version="1") == 1
    assert delta("branchops_serving_request_errors_total", version="1") == 0
    # TF Serving's own series, as its Prometheus exporter names them (dashboards built for it work here)
    count = ":tensorflow:serving:request_count"
    assert delta(count, model_name="djia", status="OK") == 1
    assert delta(count, model_name="djia", status="INVALID_ARGUMENT") == 1
    # latency in microseconds, for the requests that succeeded only, as TF Serving records it
    latency = ":tensorflow:serving:request_latency"
    assert delta(f"{latency}_count", model_name="djia", API="predict", entrypoint="REST") == 1
    assert 0 < delta(f"{latency}_sum", model_name="djia", API="predict") < 60e6
    assert delta(f"{latency}_bucket", model_name="djia", API="predict", le="+Inf") == 1
    assert not [s for s in after if s.name.endswith("_created")]  # TF Serving writes none
    text = client.session.get(client.base_url + "/monitoring/prometheus/metrics", timeout=10).text
    assert "# TYPE :tensorflow:serving:request_count counter\n" in text
    assert ':tensorflow:serving:request_count{model_name="djia",status="OK"} ' in text


# -- fuzzing -------------------------------------------------------------------------------------------


def _is_float32(value) -> bool:
    # NaN and ±Infinity are float32 values TF Serving accepts in request JSON (json_tensor.cc).
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and (not math.isfinite(float(value)) or abs(float(value)) <= 3.4e38)
    )


def _valid_rows(value) -> bool:
    return (
        isinstance(value, list)
        and len(value) > 0
        and all(
            isinstance(row, list) and len(row) == N_FEATURES and all(_is_float32(x) for x in row)
            for row in value
        )
    )


def _valid_body(body) -> bool:
    """The oracle: does this request body deserve a 200? (The fuzzer keeps only bodies that do not.)"""
    if not isinstance(body, dict) or set(body) - {"instances", "inputs", "signature_name"}:
        return False
    if body.get("signature_name", "serving_default") != "serving_default":
        return False
    if ("instances" in body) == ("inputs" in body):
        return False
    if "instances" in body:
        value = body["instances"]
        if (
            isinstance(value, list)
            and value
            and all(isinstance(i, dict) and set(i) == {"lagged_returns"} for i in value)
        ):
            return _valid_rows([i["lagged_returns"] for i in value])
        return _valid_rows(value)
    value = body["inputs"]
    if isinstance(value, dict) and set(value) == {"lagged_returns"}:
        value = value["lagged_returns"]
    return _valid_rows(value)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=30,
)
numbers = st.floats(allow_nan=False, allow_infinity=False, width=32) | st.integers(-1000, 1000)
near_valid_rows = st.lists(
    st.lists(numbers | st.booleans() | st.text(max_size=2) | st.none(), min_size=0, max_size=7), max_size=4
)
bodies = st.one_of(
    st.fixed_dictionaries({"instances": json_values}),
    st.fixed_dictionaries({"inputs": json_values}),
    st.fixed_dictionaries({"instances": near_valid_rows}),
    st.fixed_dictionaries(
        {"inputs": st.dictionaries(st.sampled_from(["lagged_returns", "x"]), near_valid_rows)}
    ),
    st.fixed_dictionaries(
        {
            "instances": st.lists(
                st.dictionaries(
                    st.sampled_from(["lagged_returns", "b64", "y"]), near_valid_rows | json_values
                ),
                max_size=3,
            )
        }
    ),
    st.fixed_dictionaries({"signature_name": json_values, "instances": st.just(SAMPLE)}),
    st.dictionaries(st.text(max_size=12), json_values, max_size=4),
    json_values,
)


@st.composite
def malformed_requests(draw):
    kind = draw(st.sampled_from(["body", "body", "body", "bytes", "path"]))
    if kind == "body":
        body = draw(bodies)
        if _valid_body(body):
            body = {"instances": body, "inputs": body}  # both keys: always malformed
        return "POST", "/v1/models/djia:predict", json.dumps(body).encode()
    if kind == "bytes":
        raw = draw(st.binary(max_size=200) | st.text(max_size=60).map(str.encode))
        try:
            if _valid_body(json.loads(raw)):
                raw = b"[" + raw
        except (ValueError, UnicodeDecodeError, RecursionError):
            pass
        return (
            "POST",
            draw(
                st.sampled_from(
                    [
                        "/v1/models/djia:predict",
                        "/v1/models/djia/versions/1:predict",
                        "/v1/models/djia/labels/stable:predict",
                    ]
                )
            ),
            raw,
        )
    # paths: unknown models, versions, labels, verbs, and the wrong method for a known route
    segment = draw(st.text(st.characters(codec="utf-8", exclude_characters="/?#%"), min_size=1, max_size=10))
    path = draw(
        st.sampled_from(
            [
                f"/v1/models/x{segment}",
                f"/v1/models/djia/versions/{segment}x",
                f"/v1/models/djia/labels/{segment}x",
                f"/v1/models/djia:{segment}x",
                f"/v1/models/djia/versions/1/{segment}",
                f"/v1/{segment}",
            ]
        )
    )
    method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE"]))
    return method, quote(path, safe="/:"), draw(st.binary(max_size=40))


def test_fuzzed_malformed_requests_all_get_4xx_and_the_server_still_answers(served):
    client, meta = served
    errors_before = metric_sum(client.metrics(), "branchops_serving_request_errors_total")

    @settings(
        max_examples=1000,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
    )
    @given(request=malformed_requests())
    def send(request):
        method, path, data = request
        response = client.session.request(method, client.base_url + path, data=data, timeout=30)
        assert 400 <= response.status_code < 500, (
            method,
            path,
            data[:200],
            response.status_code,
            response.text[:300],
        )
        if path.startswith("/v1/models/"):
            assert "error" in response.json()

    send()
    # A thousand malformed requests later, the model still answers and none was an internal error.
    assert (
        client.predict(instances=SAMPLE)["predictions"][0]["direction"]
        == meta["sample"]["predictions"]["direction"][0]
    )
    assert metric_sum(client.metrics(), "branchops_serving_request_errors_total") == errors_before


def test_admin_api_answers_loopback_clients_only(tmp_path):
    from branchops.serving.server import ModelServer, create_app

    app = create_app(ModelServer("djia", tmp_path))
    remote, local = {"REMOTE_ADDR": "10.1.2.3"}, {"REMOTE_ADDR": "127.0.0.1"}
    web = app.test_client()
    assert web.get("/branchops/admin/health", environ_base=remote).status_code == 403
    assert web.post("/branchops/admin/versions/1:load", environ_base=remote).status_code == 403
    assert web.post("/branchops/admin/routing", json={"stable": 1}, environ_base=remote).status_code == 403
    assert web.get("/branchops/admin/health", environ_base=local).json["routing"] == {}
    # Labels only go to versions that are loaded and checked.
    refused = web.post("/branchops/admin/routing", json={"stable": 1}, environ_base=local)
    assert refused.status_code == 409 and "not AVAILABLE" in refused.json["error"]
    # TF Serving has no traffic weights; neither has the local server.
    weighted = web.post(
        "/branchops/admin/routing", json={"stable": 1, "canary_weight": 10}, environ_base=local
    )
    assert weighted.status_code == 400


def test_unlabelled_requests_get_the_highest_loaded_version_as_in_tf_serving(own_server, models):
    """TF Serving answers a request naming no version or label with the highest AVAILABLE version
    (ServableRequest::Latest), whatever the labels say: a version loaded beside the stable one takes
    the unlabelled traffic at once. Local tests must see that, not a kinder routing."""
    import shutil

    client, _ = own_server
    base = Path(client.health()["base_path"])
    shutil.copytree(models["v2"], base / "2")
    client.load_version(2)
    assert client.wait_version(2, 120)["state"] == "AVAILABLE"

    def served_by(requests_sent: int) -> tuple[float, float]:
        before = client.metrics()
        for _ in range(requests_sent):
            client.predict(instances=[SAMPLE[0]])
        after = client.metrics()
        return tuple(
            metric_sum(after, "branchops_serving_requests_total", version=v, api="predict")
            - metric_sum(before, "branchops_serving_requests_total", version=v, api="predict")
            for v in ("1", "2")
        )

    try:
        client.set_routing(stable=1, canary=2)
        assert client.status(label="stable")[0]["version"] == "1"
        assert client.metadata()["model_spec"]["version"] == "2"
        assert served_by(20) == (0, 20)
        client.set_routing(stable=1)
        assert served_by(5) == (0, 5)  # labels never steer unlabelled requests
        before = client.metrics()
        client.predict(instances=[SAMPLE[0]], label="stable")  # a label still reaches its version
        assert (
            metric_sum(client.metrics(), "branchops_serving_requests_total", version="1")
            - metric_sum(before, "branchops_serving_requests_total", version="1")
            == 1
        )
    finally:
        client.set_routing(stable=1)
        client.retire_version(2)
    assert client.status(version=2)[0]["state"] == "END"
    assert served_by(3) == (3, 0)  # version 1 is the highest left
