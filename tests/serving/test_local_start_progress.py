"""The local model server's start (TensorFlow's import and the first load, seconds) shows it is alive."""

from __future__ import annotations

import logging

import pytest

from branchops.config import STAGES, BranchopsConfig
from branchops.errors import ExternalError
from branchops.serving.local_backend import LocalServing


class StartingProcess:
    """A server process that is still starting: running, port not bound yet."""

    pid = 4242
    returncode = None

    def poll(self) -> None:
        return None


def test_waiting_for_the_model_server_logs_a_heartbeat(tmp_path, caplog, monkeypatch):
    monkeypatch.setenv("CI", "true")  # a log, not a terminal: plain "still running" lines
    config = BranchopsConfig.model_validate({"approvers": {s: ["lead"] for s in STAGES}})
    serving = LocalServing(config, tmp_path / ".branchops", start_timeout_s=3.6)
    caplog.set_level(logging.INFO)
    with pytest.raises(ExternalError, match="did not become healthy within 4s"):
        serving._await_healthy(StartingProcess(), identity=None)
    beats = [r.getMessage() for r in caplog.records if "starting model server" in r.getMessage()]
    assert beats and beats[0].startswith("starting model server … still running (3s)"), beats
