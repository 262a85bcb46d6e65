"""The local server under slow and broken clients: connections that never finish their request neither use
up the server nor stay open for long, and every error it answers, its HTTP layer's included, is TensorFlow
Serving's JSON error ({"error": "..."}).

Each test has a hard time bound (pytest-timeout; it counts the shared server's start and first deploy too),
and every socket and request a client timeout, so a server that stops answering fails the test instead of
hanging it."""

from __future__ import annotations

import http.client
import json
import socket
import time
from urllib.parse import urlsplit

import pytest
import requests

from branchops.serving import make_serving
from branchops.serving.release import Release
from branchops.serving.server import MAX_BODY_BYTES
from tests.serving.conftest import make_config
from tests.serving.model_factory import SAMPLE

HALF_OPEN = 200
CLIENT_TIMEOUT_S = 10.0  # generous for one small :predict on a busy 2-core machine
# A dead connection must be dropped well within this; a server that keeps one for minutes fails.
DROPPED_WITHIN_S = 45.0


@pytest.fixture(scope="module")
def served(models, tmp_path_factory):
    """A running local server with version 1 stable: (host, port, the :predict URL)."""
    root = tmp_path_factory.mktemp("slow-clients")
    serving = make_serving(make_config(root / "models"), root / "state")
    serving.start(port=0)
    try:
        release = Release.model_validate(
            {"model": "djia", "version": 1, "source": {"volume": "m", "path": "1"}}
        )
        assert serving.deploy(release, models["v1"]).outcome == "deployed"
        client = serving.client()
        address = urlsplit(client.base_url)
        yield address.hostname, address.port, client.model_url() + ":predict"
    finally:
        serving.stop()


def half_open(host: str, port: int, kind: int) -> socket.socket:
    """A connection that starts a request and never finishes it (or never even starts one)."""
    sock = socket.create_connection((host, port), timeout=CLIENT_TIMEOUT_S)
    head = f"POST /v1/models/djia:predict HTTP/1.1\r\nHost: {host}:{port}\r\n"
    partial = [
        b"",  # connected, silent
        b"POST /v1/models/djia:pre",  # part of the request line
        (head + "Content-Type: application/js").encode(),  # part of the headers
        (head + "Content-Type: application/json\r\nContent-Length: 400\r\n\r\n").encode()
        + b'{"instances": [[',
    ][kind % 4]
    if partial:
        sock.sendall(partial)
    return sock


def predict_promptly(url: str) -> None:
    """One normal request on a new connection, answered within the client timeout."""
    try:
        response = requests.post(url, json={"instances": SAMPLE[:2]}, timeout=CLIENT_TIMEOUT_S)
    except requests.RequestException as exc:
        pytest.fail(
            f"a normal :predict was not answered within {CLIENT_TIMEOUT_S:.0f} s "
            f"while {HALF_OPEN} half-open connections were open: {exc!r}"
        )
    assert response.status_code == 200, response.text
    assert len(response.json()["predictions"]) == 2


@pytest.mark.timeout(300)
def test_normal_requests_are_answered_while_200_connections_hang_half_open(served):
    host, port, url = served
    predict_promptly(url)
    hanging: list[socket.socket] = []
    try:
        for i in range(HALF_OPEN):
            hanging.append(half_open(host, port, i))
        time.sleep(0.5)  # let the server accept them all before the normal requests queue behind them
        for _ in range(5):
            predict_promptly(url)
        with requests.Session() as session:  # and on a kept-alive connection
            for _ in range(5):
                response = session.post(url, json={"instances": SAMPLE[:1]}, timeout=CLIENT_TIMEOUT_S)
                assert response.status_code == 200
    finally:
        for sock in hanging:
            sock.close()
    predict_promptly(url)


def closed_by_server(sock: socket.socket, deadline: float) -> bool:
    """Whether the server closes ``sock`` before ``deadline`` (nothing is expected to arrive before that)."""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        sock.settimeout(remaining)
        try:
            data = sock.recv(65536)
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True
        if not data:
            return True


@pytest.mark.timeout(300)
def test_idle_and_half_open_connections_are_dropped_by_the_server(served):
    host, port, url = served
    hanging = [half_open(host, port, kind) for kind in range(4)]
    try:
        deadline = time.monotonic() + DROPPED_WITHIN_S
        still_open = [kind for kind, sock in enumerate(hanging) if not closed_by_server(sock, deadline)]
        assert still_open == [], (
            f"connections of kinds {still_open} (see half_open) were still open after "
            f"{DROPPED_WITHIN_S:.0f} s"
        )
    finally:
        for sock in hanging:
            sock.close()
    predict_promptly(url)


def exchange(host: str, port: int, raw: bytes) -> tuple[int, str, bytes]:
    """Send ``raw`` as is and read one HTTP response: (status, content type, body)."""
    with socket.create_connection((host, port), timeout=CLIENT_TIMEOUT_S) as sock:
        sock.sendall(raw)
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, response.getheader("Content-Type", ""), response.read()


def request(method: str, path: str, *headers: str, body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "raw, status",
    [
        # The HTTP layer answers these itself, before the request reaches the application.
        (
            request(
                "POST",
                "/v1/models/djia:predict",
                "Content-Type: application/json",
                f"Content-Length: {MAX_BODY_BYTES + 1}",
            ),
            413,
        ),
        (
            request(
                "POST",
                "/v1/models/djia:predict",
                "Content-Type: application/json",
                "Transfer-Encoding: chunked",
                body=b"zz\r\n{}\r\n0\r\n\r\n",
            ),
            400,
        ),
        (request("GET", "/v1/models/djia", "Not a header line"), 400),
        (
            request("GET", "/v1/models/djia", "X-Padding: " + "a" * 300_000),
            431,
        ),  # waitress' default limit: 256 KiB
        (request("POST", "/v1/models/djia:predict", "Transfer-Encoding: gzip"), 501),
        # The application's own errors.
        (request("GET", "/no/such/path"), 404),
        (request("PUT", "/v1/models/djia"), 405),
        (request("DELETE", "/monitoring/prometheus/metrics"), 405),
        (
            request(
                "POST",
                "/v1/models/djia:predict",
                "Content-Type: application/json",
                "Content-Length: 5",
                body=b"nope!",
            ),
            400,
        ),
    ],
    ids=[
        "body-too-large",
        "bad-chunk",
        "bad-header",
        "headers-too-large",
        "unknown-transfer-encoding",
        "no-route",
        "put-model",
        "delete-metrics",
        "not-json",
    ],
)
def test_every_error_is_json_in_tf_servings_error_shape(served, raw, status):
    host, port, url = served
    got, content_type, body = exchange(host, port, raw)
    assert got == status, body[:300]
    assert content_type.split(";")[0].strip() == "application/json", (content_type, body[:300])
    document = json.loads(body)
    assert set(document) == {"error"} and isinstance(document["error"], str) and document["error"], document
    predict_promptly(url)


@pytest.mark.timeout(300)
def test_a_body_of_exactly_the_limit_reaches_the_application_and_one_byte_more_does_not(served):
    host, port, _ = served
    document = b'{"instances": []}'
    at_limit = document + b" " * (MAX_BODY_BYTES - len(document))
    head = (
        "POST /v1/models/djia:predict HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n"
    )
    try:
        status, _, body = exchange(host, port, head.format(len(at_limit)).encode() + at_limit)
    except OSError as exc:  # the server answered and closed while the body was still being sent
        pytest.fail(f"a body of exactly {MAX_BODY_BYTES} bytes was cut off: {exc!r}")
    assert (status, json.loads(body)) == (400, {"error": "'instances' is empty"})  # the application's answer
    # Refused on the announced length alone: the HTTP layer answers before the body is sent.
    status, _, body = exchange(host, port, head.format(len(at_limit) + 1).encode())
    assert status == 413 and str(MAX_BODY_BYTES) in json.loads(body)["error"]
