"""Authentication and retries of the Kubeflow engine with the real ``kfp.Client`` over HTTP.

The server is a few lines of http.server on 127.0.0.1 that records request headers and answers the
v2beta1 list calls with empty lists (or with scripted 503s): it checks what kfp.Client really sends,
not Kubeflow's behaviour.
"""

from __future__ import annotations

import functools
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from branchops.config import KubeflowRemote, SecretRef
from branchops.engine.kubeflow import KubeflowEngine, client_kwargs, in_cluster_token_path, make_client
from branchops.errors import ConfigError, ExternalError


class Recorder:
    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.statuses: list[int] = []  # answered in order before the default 200


@pytest.fixture
def server():
    recorder = Recorder()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            recorder.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
            status = recorder.statuses.pop(0) if recorder.statuses else 200
            body = json.dumps(
                {"pipelines": [], "total_size": 0}
                if status == 200
                else {"error": "upstream connect error", "code": 14, "message": "unavailable"}
            ).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    recorder.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield recorder
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def remote(url: str, **kw) -> KubeflowRemote:
    return KubeflowRemote(host=url, namespace="team-a", retries=2, timeout_s=5, **kw)


def look_up(
    settings: KubeflowRemote, token_paths=None, engine: KubeflowEngine | None = None
) -> KubeflowEngine:
    engine = engine or KubeflowEngine(
        settings, client_factory=functools.partial(make_client, token_paths=token_paths), backoff_s=0
    )
    assert engine.find_version("djia-sentiment", "a" * 64) is None
    return engine


def test_bearer_token_from_the_environment_is_sent_as_authorization(server, monkeypatch):
    monkeypatch.setenv("KFP_BEARER", "tok-123456")
    look_up(remote(server.url, auth="bearer", token=SecretRef(env="KFP_BEARER")))
    path, headers = server.requests[-1]
    assert path.startswith("/apis/v2beta1/pipelines?") and "namespace=team-a" in path
    assert headers["authorization"] == "Bearer tok-123456"
    assert "cookie" not in headers


def test_a_session_cookie_for_dex_is_sent_as_a_cookie(server, monkeypatch):
    monkeypatch.setenv("BRANCHOPS_CRED_KUBEFLOW_SESSION", "MTcwMDAwMDAwMHxEdi1CQkFFQ180SUFBUkF")
    look_up(remote(server.url, auth="cookie", token=SecretRef(credential="kubeflow-session")))
    headers = server.requests[-1][1]
    assert headers["cookie"] == "authservice_session=MTcwMDAwMDAwMHxEdi1CQkFFQ180SUFBUkF"
    assert "authorization" not in headers


def test_a_full_cookie_pair_is_sent_as_given(server, monkeypatch):
    monkeypatch.setenv("KFP_COOKIE", "oauth2_proxy_kubeflow=abcdef")
    look_up(remote(server.url, auth="cookie", token=SecretRef(env="KFP_COOKIE")))
    assert server.requests[-1][1]["cookie"] == "oauth2_proxy_kubeflow=abcdef"


def test_in_cluster_reads_the_service_account_token_file_at_each_request(server, tmp_path: Path, monkeypatch):
    monkeypatch.delenv("KF_PIPELINES_SA_TOKEN_PATH", raising=False)
    projected = tmp_path / "kubeflow" / "token"  # kfp's audience-bound token: absent here
    service_account = tmp_path / "serviceaccount" / "token"
    service_account.parent.mkdir()
    service_account.write_text("sa-token-1\n")
    engine = look_up(
        remote(server.url, auth="in-cluster"), token_paths=(str(projected), str(service_account))
    )
    assert server.requests[-1][1]["authorization"] == "Bearer sa-token-1"
    service_account.write_text("sa-token-2\n")  # the kubelet rotated it
    look_up(remote(server.url, auth="in-cluster"), engine=engine)
    assert server.requests[-1][1]["authorization"] == "Bearer sa-token-2"


def test_in_cluster_prefers_kfps_projected_token(tmp_path: Path, monkeypatch):
    projected = tmp_path / "projected"
    projected.write_text("p")
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(projected))
    assert in_cluster_token_path((str(tmp_path / "absent"),)) == str(projected)


def test_in_cluster_without_a_token_says_what_to_do(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("KF_PIPELINES_SA_TOKEN_PATH", raising=False)
    settings = remote("http://127.0.0.1:9", auth="in-cluster")
    with pytest.raises(
        ConfigError, match="no service-account token was found.*use auth 'bearer' or 'cookie'"
    ):
        client_kwargs(settings, token_paths=(str(tmp_path / "none"),))


def test_no_auth_sends_no_credentials(server):
    look_up(remote(server.url, auth="none"))
    headers = server.requests[-1][1]
    assert "authorization" not in headers and "cookie" not in headers


def test_real_client_errors_are_retried_then_reported(server):
    server.statuses = [503, 503]
    look_up(remote(server.url, auth="none"))  # two 503s, then an answer: retries=2 is enough
    assert len(server.requests) == 3

    server.statuses = [503, 503, 503]
    with pytest.raises(
        ExternalError, match=r"looking up pipeline djia-sentiment failed after 3 attempts: unavailable"
    ):
        look_up(remote(server.url, auth="none"))


def test_an_unreachable_server_is_an_external_error():
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = KubeflowRemote(
        host=f"http://127.0.0.1:{port}", namespace="team-a", retries=1, timeout_s=2, auth="none"
    )
    with pytest.raises(
        ExternalError, match=f"Kubeflow Pipelines at http://127.0.0.1:{port}: looking up pipeline"
    ):
        KubeflowEngine(settings, backoff_s=0).find_version("djia-sentiment", "a" * 64)
