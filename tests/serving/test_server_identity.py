"""Which server is this repository's: the local server's record names the repository and the process (pid and
start time), so a copied repository, or a pid the system gave to another process, never stops someone else's
server. Driven through the CLI, as a user copying a repository with `cp -a` would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml

from branchops.demo import free_port
from branchops.processes import start_time
from tests.conftest import git

STAGES = ("build-components", "kf-pipeline", "training", "deploy-model")


def branchops(repo: Path, *args: str, expect: int = 0) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "branchops.cli", "-C", str(repo), *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == expect, (
        f"branchops -C {repo} {' '.join(args)} -> {proc.returncode} (expected "
        f"{expect})\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    return proc


def make_repo(path: Path) -> Path:
    """A git repository with a configuration that serves locally on a port of its own (no model yet: the
    server starts without loading TensorFlow)."""
    (path / "config").mkdir(parents=True)
    config = {
        "approvers": {s: ["lead"] for s in STAGES},
        "serving": {"model_name": "djia", "local": {"base_path": "models", "port": free_port()}},
    }
    (path / "config" / "branchops.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    git(path, "init", "-q", "-b", "main")
    git(path, "add", "config")
    git(path, "commit", "-q", "-m", "Configuration")
    return path


def health(url: str) -> dict | None:
    """The server's admin health document, or None if nothing answers at ``url``."""
    try:
        response = requests.get(url + "/branchops/admin/health", timeout=10)
    except requests.ConnectionError:
        return None
    return response.json()


def wait_gone(pid: int, seconds: float = 30) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if start_time(pid) is None:
            return True
        time.sleep(0.1)
    return False


@pytest.fixture
def started_pids():
    """Pids of the servers and stand-in processes a test started; whatever still runs is ended afterwards."""
    pids: dict[int, int | None] = {}
    yield pids
    for pid, started in pids.items():
        if started is not None and start_time(pid) == started:
            os.kill(pid, signal.SIGTERM)
            if not wait_gone(pid, 20):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.timeout(300)
def test_stop_in_a_copied_repository_leaves_the_original_server_running(tmp_path, started_pids):
    original = make_repo(tmp_path / "a")
    served = json.loads(branchops(original, "serve", "start", "--json").stdout)
    pid, url = served["pid"], served["url"]
    started_pids[pid] = start_time(pid)
    assert health(url)["pid"] == pid

    copy = tmp_path / "b"
    subprocess.run(["cp", "-a", str(original), str(copy)], check=True)
    assert (copy / ".branchops" / "serving" / "server.json").exists()

    refused = branchops(copy, "serve", "stop")
    said = refused.stdout + refused.stderr
    assert "not running" in refused.stdout
    assert str(original.resolve()) in said and str(pid) in said, said
    assert health(url)["pid"] == pid, "stop in the copy stopped the original repository's server"
    status = json.loads(branchops(copy, "serve", "status", "--json").stdout)
    assert status["running"] is False and status["pid"] is None
    assert health(url)["pid"] == pid

    # The copy's own server replaces the copied record; stopping it stops that one only.
    own = json.loads(branchops(copy, "serve", "start", "--port", str(free_port()), "--json").stdout)
    started_pids[own["pid"]] = start_time(own["pid"])
    assert own["pid"] != pid and own["url"] != url and health(own["url"])["pid"] == own["pid"]
    assert branchops(copy, "serve", "stop").stdout.strip() == "stopped"
    assert wait_gone(own["pid"]) and health(own["url"]) is None
    assert health(url)["pid"] == pid

    assert json.loads(branchops(original, "serve", "status", "--json").stdout)["pid"] == pid
    assert branchops(original, "serve", "stop").stdout.strip() == "stopped"
    assert wait_gone(pid), "stop in the original repository did not stop its server"
    assert health(url) is None
    assert branchops(original, "serve", "stop").stdout.strip() == "the server was not running"


@pytest.mark.timeout(300)
def test_a_copied_record_of_a_server_that_has_stopped_is_stale_in_the_copy(tmp_path, started_pids):
    original = make_repo(tmp_path / "a")
    served = json.loads(branchops(original, "serve", "start", "--json").stdout)
    started_pids[served["pid"]] = start_time(served["pid"])
    copy = tmp_path / "b"
    subprocess.run(["cp", "-a", str(original), str(copy)], check=True)
    assert branchops(original, "serve", "stop").stdout.strip() == "stopped"
    assert wait_gone(served["pid"])

    record = copy / ".branchops" / "serving" / "server.json"
    assert record.exists()
    assert json.loads(branchops(copy, "serve", "status", "--json").stdout)["running"] is False
    assert not record.exists(), "the stale record was left behind"


@pytest.mark.timeout(300)
def test_a_record_whose_pid_now_belongs_to_another_process_is_stale(tmp_path, started_pids):
    repo = make_repo(tmp_path / "a")
    served = json.loads(branchops(repo, "serve", "start", "--json").stdout)
    started_pids[served["pid"]] = start_time(served["pid"])
    record_file = repo / ".branchops" / "serving" / "server.json"
    saved = json.loads(record_file.read_text())
    assert branchops(repo, "serve", "stop").stdout.strip() == "stopped"
    assert wait_gone(served["pid"]) and not record_file.exists()

    # The pid went to another process since: one that even looks like a model server on its command line.
    impostor = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(300)", "branchops.serving.server"]
    )
    try:
        started_pids[impostor.pid] = start_time(impostor.pid)
        record = {**saved, "pid": impostor.pid, "started": start_time(impostor.pid) - 1}
        record_file.write_text(json.dumps(record))

        status = branchops(repo, "serve", "status", "--json")
        assert json.loads(status.stdout)["running"] is False
        assert not record_file.exists(), "the stale record was left behind"
        record_file.write_text(json.dumps(record))
        assert branchops(repo, "serve", "stop").stdout.strip() == "the server was not running"
        assert impostor.poll() is None, "serve stop killed a process that is not the server it started"
        assert not record_file.exists()
    finally:
        impostor.kill()
        impostor.wait(10)


@pytest.mark.timeout(300)
def test_a_record_from_before_records_named_their_repository_is_matched_by_the_servers_command_line(
    tmp_path, started_pids
):
    original = make_repo(tmp_path / "a")
    served = json.loads(branchops(original, "serve", "start", "--json").stdout)
    pid, url = served["pid"], served["url"]
    started_pids[pid] = start_time(pid)
    record_file = original / ".branchops" / "serving" / "server.json"
    record = json.loads(record_file.read_text())
    legacy = {k: record[k] for k in ("pid", "host", "port", "model", "base_path", "log", "started_at")}
    record_file.write_text(json.dumps(legacy))
    copy = tmp_path / "b"
    subprocess.run(["cp", "-a", str(original), str(copy)], check=True)

    assert branchops(copy, "serve", "stop").stdout.strip() == "the server was not running"
    assert health(url)["pid"] == pid, "stop in the copy stopped the original repository's server"
    assert json.loads(branchops(original, "serve", "status", "--json").stdout)["pid"] == pid
    assert branchops(original, "serve", "stop").stdout.strip() == "stopped"
    assert wait_gone(pid)


@pytest.mark.timeout(300)
def test_an_interrupted_start_leaves_no_server_behind(tmp_path, monkeypatch, started_pids):
    from branchops.serving import make_serving
    from branchops.serving.client import ServingClient
    from tests.serving.conftest import make_config

    serving = make_serving(make_config(tmp_path / "models"), tmp_path / "state")

    def interrupted(self):  # Ctrl-C while waiting for the new server to answer healthy
        raise KeyboardInterrupt

    monkeypatch.setattr(ServingClient, "health", interrupted)
    with pytest.raises(KeyboardInterrupt):
        serving.start(port=0)
    pid = json.loads(serving.ready_file.read_text())["pid"]
    started_pids[pid] = start_time(pid)
    assert wait_gone(pid, 5), "the server of an interrupted start kept running"
    assert not serving.info_file.exists()
