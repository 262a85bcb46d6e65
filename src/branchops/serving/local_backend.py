"""Local serving backend: the branchops model server as a detached process on this machine.

State lives in ``<state_dir>/serving/``: ``server.json`` (pid, port), ``server.log``, and
``routing.json`` (which versions and labels the server restores after a restart). Model versions
live under ``<serving.local.base_path>/<model>/<version>/``, TF Serving's layout.

Monitoring (docs/monitoring.md): with ``monitoring.log.enabled`` the server logs a sample of its :predict
traffic in ``<state_dir>/<monitoring.log.folder>/``, where ``publish_monitoring`` also writes the last
check's ``monitor.json`` (the server exposes it as gauges); outcomes arrive in
``<state_dir>/<monitoring.live_metric.outcomes_folder>/``. Only the stable server logs: the canary track
answers the rollout's own probes, not traffic.

``server.json`` names the server by process (pid and start time) and by the repository it serves (the
real paths of the repository and its state directory). A record whose process is gone, or whose pid now
belongs to another process, is stale and removed; a record another repository wrote (a repository copied
with its ``.branchops``) is not this repository's server, so nothing here stops or queries that server.

The rollout (serving/rollout.py) never loads an unchecked version where an unlabelled request could get
it. This server answers such a request with the highest version it has loaded, as TF Serving does, so a new
version is copied in (temp + rename), loaded and checked on a canary server of its own
(``serving/canary/``, a free port no client is given), and only then loaded here and labelled ``stable``;
a failed check stops the canary and removes the new version, so the previous version answers throughout.
A rollback to a version below the one serving is checked here, where it gets only the requests that name
it (no second server to start).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from branchops.errors import BranchopsError, ConfigError, ExternalError
from branchops.processes import ProcessId
from branchops.progress import heartbeat
from branchops.serving.base import (
    DeployFailed,
    DeployResult,
    Serving,
    ServingStatus,
    find_version_dir,
    read_model_metadata,
)
from branchops.serving.client import ServingClient, ServingError
from branchops.serving.prediction_log import MONITOR_FILE, log_files
from branchops.serving.rollout import Counts, Rollout, RolloutBackend, counts_from_metrics

if TYPE_CHECKING:
    from branchops.config import BranchopsConfig
    from branchops.serving.release import Release

log = logging.getLogger(__name__)

START_TIMEOUT_S = 180.0  # TensorFlow's import alone takes ~10 s on a busy 2-core machine
LOAD_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 20.0
# Child processes this Python process started, kept so they can be reaped (no zombies).
_CHILDREN: dict[int, subprocess.Popen] = {}


def _pid_is_server(pid: int) -> bool:
    """True if ``pid`` runs a branchops model server that has not exited (a zombie has)."""
    try:
        os.kill(pid, 0)
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (ProcessLookupError, PermissionError, FileNotFoundError, IndexError):
        return False
    return state != "Z" and b"branchops.serving.server" in cmdline


def _is_running_server(process: ProcessId) -> bool:
    """True if this very process (pid and start time) still runs a branchops model server."""
    return process.alive() and _pid_is_server(process.pid)


def _served_state_dir(info: dict[str, Any], pid: int) -> str | None:
    """The real path of the state directory of the repository whose server ``pid`` is."""
    if isinstance(info.get("state_dir"), str):
        return info["state_dir"]
    # A record written before records named their repository: the server's command line names its routing
    # state file, <state_dir>/serving/routing.json (relative to the server's working directory, then).
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None
    if b"--state-file" not in args[:-1]:
        return None
    state_file = cwd / os.fsdecode(args[args.index(b"--state-file") + 1])
    return str(state_file.resolve().parent.parent)


class LocalServing(Serving):
    backend = "local"

    def __init__(
        self,
        config: BranchopsConfig,
        state_dir: str | Path,
        start_timeout_s: float = START_TIMEOUT_S,
        track: str = "stable",
    ) -> None:
        serving = config.serving
        self.config = config
        self.track = track
        self.model_name = serving.model_name
        self.rollout = serving.rollout
        self.default_strategy = serving.rollout.strategy
        self.host = serving.local.host
        # The canary track is a server of its own on a free port; clients know only the stable one's.
        self.port = serving.local.port if track == "stable" else 0
        state_dir = Path(state_dir)
        base = Path(serving.local.base_path)
        # Relative paths are relative to the repository root, the parent of the state directory.
        self.base_path = (base if base.is_absolute() else state_dir.parent / base) / self.model_name
        self.state_dir = state_dir
        self.dir = state_dir / "serving" if track == "stable" else state_dir / "serving" / track
        self.info_file = self.dir / "server.json"
        self.log_file = self.dir / "server.log"
        self.routing_file = self.dir / "routing.json"
        self.ready_file = self.dir / "ready.json"
        self.start_timeout_s = start_timeout_s
        monitoring = config.monitoring
        self.prediction_log_dir = state_dir / monitoring.log.folder
        self.outcomes_dir = state_dir / monitoring.live_metric.outcomes_folder

    # -- process ----------------------------------------------------------------------------------
    def _info(self) -> dict[str, Any] | None:
        """The server record; None without one, {} for one that cannot be read."""
        try:
            info = json.loads(self.info_file.read_text())
        except FileNotFoundError:
            return None
        except ValueError:
            return {}
        return info if isinstance(info, dict) else {}

    def _running_info(self) -> dict[str, Any] | None:
        """The record of this repository's running server, or None (removing a stale record)."""
        info = self._info()
        if info is None:
            return None
        process = ProcessId.from_dict(info)
        if process is None or not _is_running_server(process):
            log.warning(
                "removing stale server record %s (pid %s is not the model server it names)",
                self.info_file,
                info.get("pid"),
            )
            self.info_file.unlink(missing_ok=True)
            return None
        owner = _served_state_dir(info, process.pid)
        if owner != str(self.state_dir.resolve()):
            repository = info.get("repository") or (owner and str(Path(owner).parent))
            log.warning(
                "%s names the model server of another repository (%s, pid %s), not of this one (%s); "
                "leaving that server alone: this repository's server is not running (the record was "
                "probably copied along with the repository; remove it, or start this repository's own "
                "server, which replaces it)",
                self.info_file,
                repository or "unknown",
                process.pid,
                self.state_dir.resolve().parent,
            )
            return None
        return info

    def _url(self, info: dict[str, Any]) -> str:
        host = info["host"]
        host = "127.0.0.1" if host in ("0.0.0.0", "") else host
        return f"http://[{host}]:{info['port']}" if ":" in host else f"http://{host}:{info['port']}"

    def client(self, timeout_s: float = 10.0) -> ServingClient:
        info = self._running_info()
        if info is None:
            raise ExternalError(
                f"the local model server is not running (start it with 'branchops serve start'); "
                f"state in {self.dir}"
            )
        return ServingClient(self._url(info), self.model_name, timeout_s=timeout_s)

    def start(self, port: int | None = None) -> ServingStatus:
        """Start the server detached (or return the running one) and wait until it is healthy."""
        if self._running_info():
            return self.status()
        self.dir.mkdir(parents=True, exist_ok=True)
        # Two starts at once (a stage and `branchops serve start`) must not race for the port.
        with open(self.dir / "start.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self._running_info():
                return self.status()
            return self._spawn(port)

    def _spawn(self, port: int | None) -> ServingStatus:
        self.base_path.mkdir(parents=True, exist_ok=True)
        self.ready_file.unlink(missing_ok=True)
        if self.track != "stable":
            # Nothing to restore: the rollout loads the one version this track is for (the newest on disk,
            # what a server loads without saved state, is not necessarily that one).
            self.routing_file.write_text(json.dumps({"model": self.model_name, "versions": []}))
        command = self.server_command(self.port if port is None else port)
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
        with open(self.log_file, "ab") as log_handle:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log_handle,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        _CHILDREN[process.pid] = process
        # Read before anything can reap the child, so the pid cannot have passed to another process yet.
        identity = ProcessId.of(process.pid)
        try:
            return self._await_healthy(process, identity)
        except BaseException:
            # Failed or interrupted (Ctrl-C, a timeout) while starting: the server, in a session of its own,
            # would otherwise keep running and hold the port, without a record if it never got ready.
            self._terminate(identity)
            if ProcessId.from_dict(self._info() or {}) == identity:
                self.info_file.unlink(missing_ok=True)
            raise

    def server_command(self, port: int) -> list[str]:
        # Absolute paths: the server's command line says which repository it serves, whatever its cwd.
        command = [
            sys.executable,
            "-m",
            "branchops.serving.server",
            "--model-name",
            self.model_name,
            "--base-path",
            str(self.base_path.resolve()),
            "--host",
            self.host,
            "--port",
            str(port),
            "--state-file",
            str(self.routing_file.resolve()),
            "--ready-file",
            str(self.ready_file.resolve()),
        ]
        settings = self.config.monitoring.log
        if settings.enabled and self.track == "stable":
            command += [
                "--prediction-log",
                str(self.prediction_log_dir.resolve()),
                "--log-sample-rate",
                repr(settings.sample_rate),
                "--log-max-file-bytes",
                str(settings.max_file_bytes),
                "--log-max-files",
                str(settings.max_files),
            ]
        return command

    def _await_healthy(self, process: subprocess.Popen, identity: ProcessId) -> ServingStatus:
        """Record the server once its port is bound, and return once it answers healthy."""
        # TensorFlow's import and the first load take seconds: say the start is alive meanwhile.
        with heartbeat("starting model server", interval_s=3):
            return self._poll_healthy(process, identity)

    def _poll_healthy(self, process: subprocess.Popen, identity: ProcessId) -> ServingStatus:
        state_dir = self.state_dir.resolve()
        deadline = time.monotonic() + self.start_timeout_s
        info: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise ExternalError(
                    f"the model server exited with code {process.returncode} while starting; "
                    f"last lines of {self.log_file}:\n{self._log_tail()}"
                )
            if info is None and self.ready_file.exists():
                ready = json.loads(self.ready_file.read_text())
                if ProcessId.from_dict(ready) == identity:
                    info = {
                        **identity.to_dict(),
                        "repository": str(state_dir.parent),
                        "state_dir": str(state_dir),
                        "host": self.host,
                        "port": ready["port"],
                        "model": self.model_name,
                        "base_path": str(self.base_path),
                        "log": str(self.log_file),
                        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    }
                    tmp = self.info_file.with_name("server.json.tmp")
                    tmp.write_text(json.dumps(info, indent=2))
                    tmp.replace(self.info_file)
            if info is not None:
                try:
                    if ServingClient(self._url(info), self.model_name, timeout_s=5).health()["ready"]:
                        log.info("model server pid %s listening on %s", process.pid, self._url(info))
                        return self.status()
                except ExternalError:
                    pass
            time.sleep(0.2)
        raise ExternalError(
            f"the model server did not become healthy within {self.start_timeout_s:.0f}s; "
            f"last lines of {self.log_file}:\n{self._log_tail()}"
        )

    def stop(self) -> bool:
        """Stop this repository's server; False if it was not running (another repository's is left alone)."""
        if self.track == "stable":
            self._canary_track().stop()  # left behind by an interrupted rollout
        info = self._running_info()
        if info is None:
            return False
        process = ProcessId.from_dict(info)
        assert process is not None  # _running_info() checked it
        self._terminate(process)
        self.info_file.unlink(missing_ok=True)
        return True

    def _terminate(self, process: ProcessId) -> None:
        pid = process.pid
        child = _CHILDREN.pop(pid, None)
        if child is None and not _is_running_server(process):
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while time.monotonic() < deadline:
            if child is not None and child.poll() is not None:
                return
            if child is None and not _is_running_server(process):
                return
            time.sleep(0.1)
        if child is None and not process.alive():
            return
        log.warning("model server pid %s ignored SIGTERM for %.0fs; killing it", pid, STOP_TIMEOUT_S)
        os.kill(pid, signal.SIGKILL)
        if child is not None:
            child.wait(5)

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def status(self) -> ServingStatus:
        info = self._running_info()
        if info is None:
            routing = self._saved_routing()
            return ServingStatus(
                self.backend,
                self.model_name,
                running=False,
                stable=routing.get("stable"),
                canary=routing.get("canary"),
            )
        health = ServingClient(self._url(info), self.model_name).health()
        routing = health["routing"]
        return ServingStatus(
            self.backend,
            self.model_name,
            running=True,
            url=self._url(info),
            pid=int(info["pid"]),
            stable=routing.get("stable"),
            canary=routing.get("canary"),
            versions={int(v): s["state"] for v, s in health["versions"].items()},
        )

    def _saved_routing(self) -> dict[str, Any]:
        try:
            return json.loads(self.routing_file.read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def live_version(self) -> int | None:
        return self.status().stable

    def export_metadata(self, version: int) -> dict[str, Any]:
        return read_model_metadata(find_version_dir(self.base_path / str(version), version))

    # -- monitoring -------------------------------------------------------------------------------
    def read_prediction_log(self) -> dict[str, bytes]:
        return _read_files(log_files(self.prediction_log_dir))

    def read_outcomes(self) -> dict[str, bytes]:
        try:
            paths = sorted(self.outcomes_dir.iterdir())
        except FileNotFoundError:
            return {}
        return _read_files([p for p in paths if p.suffix in (".csv", ".jsonl") and p.is_file()])

    def publish_monitoring(self, payload: dict[str, Any]) -> None:
        from branchops.serving.server_metrics import monitor_samples

        try:
            monitor_samples(payload)  # the server would expose nothing of a document it cannot read
            text = json.dumps(payload, indent=1)
        except (ValueError, TypeError) as exc:
            raise BranchopsError(f"not a monitoring result the server can expose: {exc}") from None
        self.prediction_log_dir.mkdir(parents=True, exist_ok=True)
        # temp + rename: a scrape reads the previous result or this one, never half of it
        tmp = self.prediction_log_dir / f".{MONITOR_FILE}.{os.getpid()}.tmp"
        tmp.write_text(text + "\n", encoding="utf-8")
        tmp.replace(self.prediction_log_dir / MONITOR_FILE)

    # -- rollout ----------------------------------------------------------------------------------
    def deploy(self, release: Release, model_source_dir: Path | None) -> DeployResult:
        if release.model != self.model_name:
            raise ConfigError(
                f"the release serves model '{release.model}' but serving.model_name is '{self.model_name}'"
            )
        self.start()
        source = Path(model_source_dir) if model_source_dir is not None else None
        return Rollout(_LocalTracks(self), self.model_name, self.rollout).deploy(
            release, source, release.strategy_or(self.default_strategy)
        )

    def rollback_to(self, version: int) -> DeployResult:
        """Serve ``version`` again (it must still be in the base path) after the usual checks."""
        from branchops.serving.release import Release

        release = Release.model_validate(
            {
                "model": self.model_name,
                "version": version,
                "source": {"volume": "local-serving", "path": str(version)},
            }
        )
        self.start()
        return Rollout(_LocalTracks(self), self.model_name, self.rollout).deploy(
            release, self.base_path / str(version), "rollback"
        )

    def _canary_track(self) -> LocalServing:
        return LocalServing(self.config, self.state_dir, self.start_timeout_s, track="canary")


class _LocalTracks(RolloutBackend):
    """The local primitives: the stable track is the repository's server; the canary track a second
    server process of its own, which ordinary clients never call.

    A version below the highest one the stable server has AVAILABLE (a rollback) is checked on the
    stable server itself: TF Serving answers an unlabelled request with the highest version it has
    loaded, so only requests naming the older version reach it, as they would reach a canary server. That
    saves starting a second server (TensorFlow's import, seconds). A newer version would take the
    unlabelled traffic the moment it loaded there, so it is checked on the canary server."""

    label_timeout_s = 30.0

    def __init__(self, serving: LocalServing) -> None:
        self.serving = serving
        self.canary = serving._canary_track()
        self._copied: set[int] = set()  # versions this rollout copied in (a reused directory is not one)
        self._checked_in_place = False  # the version under test is loaded on the stable server

    def stable_version(self) -> int | None:
        return self.serving.status().stable

    def stable_client(self) -> ServingClient:
        return self.serving.client()

    def install(self, release: Release, source: Path | None) -> str:
        """Copy the version directory in with temp + rename, so a server never sees half a model."""
        if source is None:
            raise DeployFailed("source", "the local backend needs the model's directory")
        version = release.version
        source = find_version_dir(source, version)
        base = self.serving.base_path
        target = base / str(version)
        base.mkdir(parents=True, exist_ok=True)
        if target.exists():
            if source.resolve() == target.resolve() or _tree_digest(source) == _tree_digest(target):
                return f"reused {target}"
            client = self.stable_client()
            state = client.health()["versions"].get(str(version), {}).get("state")
            if state in ("LOADING", "AVAILABLE"):
                # Not labelled: the rollout returned early for the live version.
                client.retire_version(version)
        incoming = base / f".incoming-{version}-{uuid.uuid4().hex[:8]}"
        shutil.copytree(source, incoming)
        if target.exists():
            replaced = base / f".replaced-{version}-{uuid.uuid4().hex[:8]}"
            target.rename(replaced)
            shutil.rmtree(replaced, ignore_errors=True)
        incoming.rename(target)
        self._copied.add(version)
        return f"copied to {target}"

    def export_metadata(self, release: Release, source: Path | None) -> dict[str, Any]:
        return read_model_metadata(self.serving.base_path / str(release.version))

    def serving_metadata(self, version: int) -> dict[str, Any] | None:
        try:
            return read_model_metadata(self.serving.base_path / str(version))
        except DeployFailed:
            return None

    def start_canary(self, version: int) -> ServingClient:
        self.canary.stop()  # a canary left by an interrupted rollout
        stable = self.stable_client()
        available = [
            int(v) for v, status in stable.health()["versions"].items() if status["state"] == "AVAILABLE"
        ]
        if available and version < max(available):
            self._checked_in_place = True
            self.canary_place = f"the serving server, below version {max(available)} (named requests only)"
            stable.load_version(version)
            _await_available(stable, version)
            return stable
        self.canary.start()
        client = self.canary.client()
        client.load_version(version)
        _await_available(client, version)
        return client

    def set_canary_weight(self, weight: int) -> str:
        return "probes only: locally no ordinary traffic reaches the canary (TF Serving has no weights)"

    def traffic(self, track: str) -> Counts | None:
        if self._checked_in_place:
            return None  # one server's counts mix both tracks: the rollout's probes tell them apart
        serving = self.canary if track == "canary" else self.serving
        try:
            return counts_from_metrics(serving.client().metrics(), self.serving.model_name)
        except ExternalError:
            return None

    def switch_stable(self, version: int, previous: int | None) -> None:
        client = self.stable_client()
        client.load_version(version)
        _await_available(client, version)
        client.set_routing(stable=version)

    def label_version(self, label: str) -> int | None:
        try:
            return int(self.stable_client().status(label=label)[0]["version"])
        except ServingError as exc:
            if exc.status == 404:
                return None
            raise

    def stop_canary(self) -> None:
        self.canary.stop()

    def retire(self, keep: int) -> None:
        # Older version directories stay on disk, so rollback_to() can bring them back quickly.
        client = self.stable_client()
        for version, status in client.health()["versions"].items():
            if int(version) != keep and status["state"] in ("LOADING", "AVAILABLE"):
                client.retire_version(int(version))

    def restore(self, previous: int | None, failed: int) -> None:
        """Labels back to the previous version first, then unload and remove the failed one."""
        self.canary.stop()
        client = self.stable_client()
        try:
            client.set_routing(stable=previous)
        except ServingError as exc:
            log.error("could not restore stable=%s: %s", previous, exc)
        try:
            if client.health()["versions"].get(str(failed), {}).get("state") in ("LOADING", "AVAILABLE"):
                client.retire_version(failed)
        except ServingError as exc:
            log.warning("could not unload failed version %s: %s", failed, exc)
        target = self.serving.base_path / str(failed)
        if failed != previous and failed in self._copied and target.exists():
            # Out of the base path so a restart does not load it; kept for a post-mortem. A directory the
            # rollout only reused (a rollback to an older version) stays where rollback_to() finds it.
            graveyard = self.serving.dir / "failed"
            graveyard.mkdir(parents=True, exist_ok=True)
            target.rename(graveyard / f"{failed}-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}")


def _await_available(client: ServingClient, version: int) -> None:
    status = client.wait_version(version, LOAD_TIMEOUT_S)
    if status["state"] != "AVAILABLE":
        error = status["status"]
        raise DeployFailed(
            "load",
            f"version {version} failed to load ({error.get('error_code')}): {error.get('error_message')}",
        )


def _read_files(paths: list[Path]) -> dict[str, bytes]:
    """name -> content; a file deleted since it was listed (the log rotated it away) is left out."""
    contents = {}
    for path in paths:
        try:
            contents[path.name] = path.read_bytes()
        except FileNotFoundError:
            continue
    return contents


def _tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()
