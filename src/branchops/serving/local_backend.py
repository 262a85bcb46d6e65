"""Local serving backend: the branchops model server as a detached process on this machine.

State lives in ``<state_dir>/serving/``: ``server.json`` (pid, port), ``server.log``, and
``routing.json`` (which versions and labels the server restores after a restart). Model versions
live under ``<serving.local.base_path>/<model>/<version>/``, TF Serving's layout.

``server.json`` names the server by process (pid and start time) and by the repository it serves (the
real paths of the repository and its state directory). A record whose process is gone, or whose pid now
belongs to another process, is stale and removed; a record another repository wrote (a repository copied
with its ``.branchops``) is not this repository's server, so nothing here stops or queries that server.

A rollout never touches the version that is serving: the new version is copied in (temp + rename),
loaded in the background, checked (signature, smoke test on the export's sample), and only then
labelled ``stable`` (rolling) or ``canary`` with stepped weights; any failed check moves the labels
back and unloads the new version, so the previous version answers throughout.
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

from branchops.errors import ConfigError, ExternalError
from branchops.processes import ProcessId
from branchops.serving.base import (
    Check,
    DeployFailed,
    DeployResult,
    Serving,
    ServingStatus,
    check_signature,
    find_version_dir,
    percentile,
    read_model_metadata,
    smoke_test,
)
from branchops.serving.client import ServingClient, ServingError, metric_sum

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
        self, config: BranchopsConfig, state_dir: str | Path, start_timeout_s: float = START_TIMEOUT_S
    ) -> None:
        serving = config.serving
        self.model_name = serving.model_name
        self.rollout = serving.rollout
        self.default_strategy = serving.rollout.strategy
        self.host = serving.local.host
        self.port = serving.local.port
        state_dir = Path(state_dir)
        base = Path(serving.local.base_path)
        # Relative paths are relative to the repository root, the parent of the state directory.
        self.base_path = (base if base.is_absolute() else state_dir.parent / base) / self.model_name
        self.state_dir = state_dir
        self.dir = state_dir / "serving"
        self.info_file = self.dir / "server.json"
        self.log_file = self.dir / "server.log"
        self.routing_file = self.dir / "routing.json"
        self.ready_file = self.dir / "ready.json"
        self.start_timeout_s = start_timeout_s

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
        port = self.port if port is None else port
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

    def _await_healthy(self, process: subprocess.Popen, identity: ProcessId) -> ServingStatus:
        """Record the server once its port is bound, and return once it answers healthy."""
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
            canary_weight=routing.get("canary_weight", 0),
            versions={int(v): s["state"] for v, s in health["versions"].items()},
        )

    def _saved_routing(self) -> dict[str, Any]:
        try:
            return json.loads(self.routing_file.read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def live_version(self) -> int | None:
        return self.status().stable

    # -- rollout ----------------------------------------------------------------------------------
    def deploy(self, release: Release, model_source_dir: Path) -> DeployResult:
        if release.model != self.model_name:
            raise ConfigError(
                f"the release serves model '{release.model}' but serving.model_name is '{self.model_name}'"
            )
        strategy = release.strategy_or(self.default_strategy)
        result = DeployResult(model=self.model_name, version=release.version, strategy=strategy)
        started = time.monotonic()
        self.start()
        client = self.client()
        health = client.health()
        before = health["routing"].get("stable")
        result.before = result.after = before
        if (
            before == release.version
            and health["routing"].get("canary") is None
            and health["versions"].get(str(before), {}).get("state") == "AVAILABLE"
        ):
            result.outcome = "unchanged"
            try:
                result.checks.append(
                    smoke_test(
                        client, read_model_metadata(self.base_path / str(before)), label="stable", name="live"
                    )
                )
            except DeployFailed as exc:  # reported, but nothing to roll back to: this is the desired state
                result.checks.append(Check(exc.check, False, exc.reason))
            result.timings["total"] = round(time.monotonic() - started, 3)
            return result
        phase = time.monotonic()
        version = release.version
        try:
            source = find_version_dir(Path(model_source_dir), version)
            meta = read_model_metadata(source)
            installed = self._install(client, source, version)
            result.timings["copy"] = round(time.monotonic() - phase, 3)
            result.checks.append(Check("copy", True, f"{installed} {self.base_path / str(version)}"))
            self._load_and_check(client, version, meta, result)
            if strategy == "canary" and before is not None:
                self._canary(client, before, version, meta, result)
            else:
                phase = time.monotonic()
                client.set_routing(stable=version)
                result.timings["switch"] = round(time.monotonic() - phase, 3)
            result.after = version
            result.checks.append(smoke_test(client, meta, label="stable", name="live"))
            self._retire_others(client, keep=version)
        except (DeployFailed, ExternalError) as exc:
            check, reason = (
                (exc.check, exc.reason) if isinstance(exc, DeployFailed) else ("serving", str(exc))
            )
            result.checks.append(Check(check, False, reason))
            result.reason = f"{check} failed: {reason}"
            result.outcome = "rolled_back"
            phase = time.monotonic()
            self._roll_back(client, before, version)
            result.after = before
            result.timings["rollback"] = round(time.monotonic() - phase, 3)
            log.error("rollout of version %s rolled back: %s", version, result.reason)
        result.timings["total"] = round(time.monotonic() - started, 3)
        return result

    def rollback_to(self, version: int) -> DeployResult:
        """Serve ``version`` again (it must still be in the base path) after the usual checks."""
        self.start()
        client = self.client()
        before = client.health()["routing"].get("stable")
        result = DeployResult(
            model=self.model_name, version=version, strategy="rollback", before=before, after=before
        )
        started = time.monotonic()
        try:
            meta = read_model_metadata(find_version_dir(self.base_path / str(version), version))
            self._load_and_check(client, version, meta, result)
            client.set_routing(stable=version)
            result.after = version
            self._retire_others(client, keep=version)
        except (DeployFailed, ExternalError) as exc:
            reason = exc.reason if isinstance(exc, DeployFailed) else str(exc)
            result.outcome, result.reason = "rolled_back", f"rollback to {version} failed: {reason}"
            if before is not None and before != version:
                client.set_routing(stable=before)
        result.timings["total"] = round(time.monotonic() - started, 3)
        return result

    def _install(self, client: ServingClient, source: Path, version: int) -> str:
        """Copy the version directory in with temp + rename, so the server never sees half a model."""
        target = self.base_path / str(version)
        self.base_path.mkdir(parents=True, exist_ok=True)
        if target.exists():
            if source.resolve() == target.resolve() or _tree_digest(source) == _tree_digest(target):
                return "reused"
            state = client.health()["versions"].get(str(version), {}).get("state")
            if state in ("LOADING", "AVAILABLE"):
                client.retire_version(version)  # not labelled: deploy() returned early for the live version
        incoming = self.base_path / f".incoming-{version}-{uuid.uuid4().hex[:8]}"
        shutil.copytree(source, incoming)
        if target.exists():
            replaced = self.base_path / f".replaced-{version}-{uuid.uuid4().hex[:8]}"
            target.rename(replaced)
            shutil.rmtree(replaced, ignore_errors=True)
        incoming.rename(target)
        return "copied to"

    def _load_and_check(
        self, client: ServingClient, version: int, meta: dict[str, Any], result: DeployResult
    ) -> None:
        phase = time.monotonic()
        client.load_version(version)
        status = client.wait_version(version, LOAD_TIMEOUT_S)
        result.timings["load"] = round(time.monotonic() - phase, 3)
        if status["state"] != "AVAILABLE":
            error = status["status"]
            raise DeployFailed(
                "load",
                f"version {version} failed to load ({error.get('error_code')}): {error.get('error_message')}",
            )
        result.checks.append(Check("load", True, f"version {version} AVAILABLE", result.timings["load"]))
        result.checks.append(check_signature(client, version, meta))
        result.checks.append(smoke_test(client, meta, version=version))

    def _canary(
        self, client: ServingClient, stable: int, canary: int, meta: dict[str, Any], result: DeployResult
    ) -> None:
        rollout = self.rollout
        rows = meta["sample"]["instances"]
        for weight in rollout.canary_steps:
            if weight >= 100:
                break
            phase = time.monotonic()
            client.set_routing(stable=stable, canary=canary, canary_weight=weight)
            counted_before = client.metrics()
            latencies, failures = [], 0
            for i in range(rollout.requests_per_step):
                sent = time.perf_counter()
                try:
                    client.predict(instances=[rows[i % len(rows)]], label="canary")
                except ExternalError:
                    failures += 1
                latencies.append((time.perf_counter() - sent) * 1000)
            counted_after = client.metrics()
            # Server-side counts include the live traffic the canary took at this weight, not only our probes.
            served = _delta(
                counted_before, counted_after, "branchops_serving_requests_total", str(canary), api="predict"
            )
            errors = _delta(
                counted_before, counted_after, "branchops_serving_request_errors_total", str(canary)
            )
            total = max(served, rollout.requests_per_step)
            error_rate = max(errors, failures) / total
            p99 = percentile(latencies, 99)
            step = {
                "weight": weight,
                "requests": int(total),
                "errors": int(max(errors, failures)),
                "error_rate": round(error_rate, 4),
                "p99_ms": round(p99, 2),
                "seconds": round(time.monotonic() - phase, 3),
            }
            step["ok"] = error_rate <= rollout.max_error_rate and p99 <= rollout.max_p99_latency_ms
            result.canary_steps.append(step)
            if not step["ok"]:
                raise DeployFailed(
                    "canary",
                    f"at {weight}% the canary's error rate was {error_rate:.2%} "
                    f"(max {rollout.max_error_rate:.2%}) and p99 latency {p99:.1f} ms "
                    f"(max {rollout.max_p99_latency_ms:.1f} ms)",
                )
            result.checks.append(
                Check(
                    f"canary {weight}%",
                    True,
                    f"error rate {error_rate:.2%}, p99 {p99:.1f} ms",
                    step["seconds"],
                )
            )
        phase = time.monotonic()
        client.set_routing(stable=canary)
        result.timings["promote"] = round(time.monotonic() - phase, 3)

    def _roll_back(self, client: ServingClient, before: int | None, failed: int) -> None:
        """Labels back to the previous version first, then unload and remove the failed one."""
        try:
            client.set_routing(stable=before)
        except ServingError as exc:
            log.error("could not restore stable=%s: %s", before, exc)
        try:
            if client.health()["versions"].get(str(failed), {}).get("state") in ("LOADING", "AVAILABLE"):
                client.retire_version(failed)
        except ServingError as exc:
            log.warning("could not unload failed version %s: %s", failed, exc)
        target = self.base_path / str(failed)
        if failed != before and target.exists():
            # Out of the base path so a restart does not load it; kept for a post-mortem.
            graveyard = self.dir / "failed"
            graveyard.mkdir(parents=True, exist_ok=True)
            target.rename(graveyard / f"{failed}-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}")

    def _retire_others(self, client: ServingClient, keep: int) -> None:
        # Older version directories stay on disk, so rollback_to() can bring them back quickly.
        for version, status in client.health()["versions"].items():
            if int(version) != keep and status["state"] in ("LOADING", "AVAILABLE"):
                client.retire_version(int(version))


def _delta(before: list, after: list, name: str, version: str, **labels: str) -> float:
    return metric_sum(after, name, version=version, **labels) - metric_sum(
        before, name, version=version, **labels
    )


def _tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()
