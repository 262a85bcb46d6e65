"""Local pipeline engine: a registry of compiled pipelines on disk, runs with Kubeflow's local runner.

Layout under the root (``kubeflow.local.root``, relative to the state directory)::

    pipelines/<pipeline>/pipeline.json                     id, name, created_at
    pipelines/<pipeline>/versions/<version>/version.json   id, name, description, created_at
    pipelines/<pipeline>/versions/<version>/pipeline.yaml  the compiled spec, byte for byte
    experiments/<experiment>/runs/<run>/run.json           state, parameters, outputs, error, timings
    experiments/<experiment>/runs/<run>/log.txt            everything the steps printed
    experiments/<experiment>/runs/<run>/pipeline_root/     the runner's outputs (executor files, metrics)

Every record is written to a temporary name and renamed, so a crash never leaves half a version, and
two stages upserting the same spec at once end with one version.

A run executes in a child Python process (``python -m branchops.engine.local RUN_DIR``) that calls
``kfp.local`` with the ``SubprocessRunner`` in the current environment: kfp.local's configuration is a
process-wide singleton and its runner prints to stdout, so one process per run keeps runs independent
(several may run at once), keeps the CLI's output clean, and lets a timeout stop the whole run.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from branchops import interrupt
from branchops.engine.base import (
    CompiledPipeline,
    PipelineEngine,
    ProgressCallback,
    RunResult,
    Upload,
    check_name,
    validate_params,
)
from branchops.errors import ExternalError
from branchops.processes import ProcessId

log = logging.getLogger(__name__)

SPEC_FILE = "pipeline.yaml"
_FINAL_STATES = ("SUCCEEDED", "FAILED", "TIMEOUT")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # kfp.local colours its log lines


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def _create_json_exclusive(path: Path, data: dict[str, Any]) -> bool:
    """Publish ``path`` complete or not at all, unless it exists: True if this call created it.

    The record is written to a temporary name in the same folder and hard-linked into place: the link
    fails when the name exists, so of several creators (threads or processes, on local disks and NFS
    alike) exactly one wins, and no reader ever sees the file half written, as one created empty with
    O_EXCL and then filled could be seen.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        os.unlink(tmp)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None


def _read_pipeline_record(path: Path) -> dict[str, Any] | None:
    try:
        return _read_json(path)
    except json.JSONDecodeError:
        # Records are published whole, so this one was damaged by something else (an edit, a full disk).
        raise ExternalError(
            f"{path}: unreadable local pipeline record (delete it to recreate the pipeline)"
        ) from None


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class LocalEngine(PipelineEngine):
    name = "local"

    def __init__(self, root: Path, workspace: Path | None = None, poll_interval_s: float = 0.5) -> None:
        self.root = Path(root)
        # Where ``components`` is importable from: the checkout of the commit being run.
        self.workspace = Path(workspace) if workspace else None
        self.poll_interval_s = poll_interval_s

    # -- registry --------------------------------------------------------------------------------
    def _pipeline_dir(self, pipeline_name: str) -> Path:
        return self.root / "pipelines" / check_name("pipeline", pipeline_name)

    def _ensure_pipeline(self, pipeline_name: str, description: str) -> dict[str, Any]:
        path = self._pipeline_dir(pipeline_name) / "pipeline.json"
        meta = _read_pipeline_record(path)
        if meta:
            return meta
        meta = {
            "pipeline_id": str(uuid.uuid4()),
            "name": pipeline_name,
            "description": description,
            "created_at": _now(),
        }
        if _create_json_exclusive(path, meta):
            return meta
        # Another upsert (a thread or another process) created the pipeline first: its id is the one.
        winner = _read_pipeline_record(path)
        if winner is None:
            raise ExternalError(f"{path}: the local pipeline record vanished while it was being created")
        return winner

    def upsert(self, pipeline_name: str, compiled: CompiledPipeline, description: str = "") -> Upload:
        existing = self.find_version(pipeline_name, compiled.version_name)
        if existing:
            log.info(
                "pipeline %s version %s already registered locally", pipeline_name, compiled.version_name
            )
            return existing
        pipeline = self._ensure_pipeline(pipeline_name, description)
        versions = self._pipeline_dir(pipeline_name) / "versions"
        versions.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=versions, prefix=".staging-"))
        meta = {
            "version_id": str(uuid.uuid4()),
            "name": compiled.version_name,
            "spec_hash": compiled.spec_hash,
            "pipeline_id": pipeline["pipeline_id"],
            "description": description,
            "created_at": _now(),
        }
        (staging / SPEC_FILE).write_bytes(compiled.spec)
        _write_json_atomic(staging / "version.json", meta)
        try:
            os.rename(staging, versions / compiled.version_name)
        except OSError:
            # Another upsert of the same spec won the race: theirs is the version.
            _rmtree(staging)
            found = self.find_version(pipeline_name, compiled.version_name)
            if found is None:
                raise
            return found
        log.info("registered pipeline %s version %s locally", pipeline_name, compiled.version_name)
        return Upload(pipeline["pipeline_id"], meta["version_id"], compiled.version_name, created=True)

    def find_version(self, pipeline_name: str, version_name: str) -> Upload | None:
        pdir = self._pipeline_dir(pipeline_name)
        meta = _read_json(pdir / "versions" / check_name("version", version_name) / "version.json")
        if meta is None:
            return None
        return Upload(meta["pipeline_id"], meta["version_id"], meta["name"], created=False)

    def version_spec(self, pipeline_name: str, version_name: str) -> bytes:
        path = self._pipeline_dir(pipeline_name) / "versions" / version_name / SPEC_FILE
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise ExternalError(
                f"pipeline {pipeline_name} has no version {version_name} in the local registry "
                f"({self.root}); run the kf-pipeline stage first"
            ) from None

    def _pipeline_name_of(self, upload: Upload) -> str:
        for meta_file in sorted((self.root / "pipelines").glob("*/pipeline.json")):
            meta = _read_json(meta_file)
            if meta and meta["pipeline_id"] == upload.pipeline_id:
                return meta["name"]
        raise ExternalError(f"no pipeline with id {upload.pipeline_id} in the local registry ({self.root})")

    # -- runs ------------------------------------------------------------------------------------
    def run_dir(self, experiment: str, run_name: str) -> Path:
        return (
            self.root
            / "experiments"
            / check_name("experiment", experiment)
            / "runs"
            / check_name("run", run_name)
        )

    def run(
        self,
        experiment: str,
        upload: Upload,
        run_name: str,
        params: dict[str, Any],
        timeout_s: float,
        on_progress: ProgressCallback | None = None,
    ) -> RunResult:
        progress = on_progress or (lambda message: log.info("%s", message))
        rdir = self.run_dir(experiment, run_name)
        record = _read_json(rdir / "run.json")
        if record and record["state"] in _FINAL_STATES:
            progress(f"run {run_name}: already {record['state']} (not started again)")
            return _result(record, reused=True)
        if record and record["state"] == "RUNNING" and _pid_alive(record.get("pid")):
            owner = ProcessId.from_dict(record.get("owner"))
            if owner is None or owner.alive():
                raise ExternalError(
                    f"run {run_name} of experiment {experiment} is already running "
                    f"(process {record['pid']}); wait for it to finish"
                )
            # the stage that started it died without stopping it (SIGKILL, a lost machine): nobody waits
            # for its result, so stop it and start the run again
            _kill_group_of(record["pid"])
            progress(
                f"run {run_name}: its earlier attempt was abandoned by process {owner.pid}; stopped it, "
                "starting again"
            )

        spec = self.version_spec(self._pipeline_name_of(upload), upload.version_name)
        validate_params(spec, params)
        rdir.mkdir(parents=True, exist_ok=True)
        (rdir / SPEC_FILE).write_bytes(spec)
        run_id = (record or {}).get("run_id") or str(uuid.uuid4())
        request = {
            "spec": str(rdir / SPEC_FILE),
            "params": params,
            "pipeline_root": str(rdir / "pipeline_root"),
            "result": str(rdir / "result.json"),
        }
        _write_json_atomic(rdir / "request.json", request)
        (rdir / "result.json").unlink(missing_ok=True)

        env = dict(os.environ)
        paths = [str(self.workspace)] if self.workspace else []
        env["PYTHONPATH"] = os.pathsep.join(
            paths + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        )
        env["PYTHONUNBUFFERED"] = "1"
        started, t0 = _now(), time.monotonic()
        record = {
            "run_id": run_id,
            "name": run_name,
            "experiment": experiment,
            "pipeline_id": upload.pipeline_id,
            "version_id": upload.version_id,
            "version_name": upload.version_name,
            "params": params,
            "state": "RUNNING",
            "started_at": started,
            "outputs": {},
            "error": None,
            "owner": ProcessId.current().to_dict(),
        }
        with open(rdir / "log.txt", "w", encoding="utf-8") as log_file:
            proc = subprocess.Popen(
                [sys.executable, "-m", "branchops.engine.local", str(rdir)],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=str(self.workspace or rdir),
                start_new_session=True,
            )
            record["pid"] = proc.pid
            _write_json_atomic(rdir / "run.json", record)
            progress(f"run {run_name}: started locally (log: {rdir / 'log.txt'})")
            try:
                timed_out = self._wait(proc, rdir / "log.txt", t0, timeout_s, run_name, progress)
            except BaseException:  # interrupted: never leave the pipeline running behind us
                _kill_group(proc)
                record.update(
                    state="INTERRUPTED",
                    error="stopped before it finished",
                    finished_at=_now(),
                    duration_s=round(time.monotonic() - t0, 3),
                    pid=None,
                    log=str(rdir / "log.txt"),
                )
                _write_json_atomic(rdir / "run.json", record)
                progress(f"run {run_name}: stopped (interrupted); a rerun starts it again")
                raise

        result = _read_json(rdir / "result.json") or {}
        if timed_out:
            state, error = "TIMEOUT", f"run {run_name} did not finish within {timeout_s:g} s and was stopped"
        elif proc.returncode == 0 and result.get("state") == "SUCCEEDED":
            state, error = "SUCCEEDED", None
        else:
            state = "FAILED"
            error = _strip_ansi(result.get("error") or f"the local runner exited with code {proc.returncode}")
            cause = _step_error(rdir / "log.txt")
            if cause and cause not in error:
                error = f"{error} Cause: {cause}"
            error += f" (log: {rdir / 'log.txt'})"
        record.update(
            state=state,
            error=error,
            outputs=result.get("outputs", {}),
            finished_at=_now(),
            duration_s=round(time.monotonic() - t0, 3),
            pid=None,
            log=str(rdir / "log.txt"),
        )
        _write_json_atomic(rdir / "run.json", record)
        progress(f"run {run_name}: {state}" + (f" ({error})" if error else ""))
        return _result(record)

    def _wait(
        self,
        proc: subprocess.Popen,
        log_path: Path,
        t0: float,
        timeout_s: float,
        run_name: str,
        progress: ProgressCallback,
    ) -> bool:
        """Wait for the run, forwarding task starts and ends; stop its whole process group on timeout."""
        offset = 0
        while True:
            try:
                proc.wait(timeout=self.poll_interval_s)
                finished = True
            except subprocess.TimeoutExpired:
                finished = False
            offset = _forward_task_lines(log_path, offset, run_name, progress)
            if finished:
                return False
            interrupt.check()
            if time.monotonic() - t0 > timeout_s:
                _kill_group(proc)
                return True


def _forward_task_lines(log_path: Path, offset: int, run_name: str, progress: ProgressCallback) -> int:
    try:
        with open(log_path, "rb") as f:
            f.seek(offset)
            chunk = f.read()
    except FileNotFoundError:
        return offset
    end = chunk.rfind(b"\n") + 1
    for raw in chunk[:end].decode("utf-8", "replace").splitlines():
        line = _strip_ansi(raw)
        if " - INFO - Executing task " in line or (
            " - INFO - Task " in line and "finished with status" in line
        ):
            progress(f"run {run_name}: {line.split(' - INFO - ', 1)[1].strip()}")
        elif _TRAINING_PROGRESS.search(line):
            # the training step's per-epoch line (metrics, time per epoch, ETA): a data scientist watches
            # these
            progress(f"run {run_name}: {_TRAINING_PROGRESS.search(line).group(1)}")
    return offset + end


_TRAINING_PROGRESS = re.compile(r"INFO\]: ((?:epoch \d+/\d+:|training on ).*)$")
_EXCEPTION_LINE = re.compile(
    r"^\s*((?:[A-Za-z_][\w]*\.)*[A-Za-z_]\w*(?:Error|Exception|Failed|Refused)): (.+)$"
)


def _step_error(log_path: Path) -> str | None:
    """The first exception a step raised, from the run's log: the user's own message (a DataError
    naming a file and row, say) rather than the runner's "inner task failed"."""
    try:
        text = _strip_ansi(log_path.read_text(encoding="utf-8", errors="replace"))
    except FileNotFoundError:
        return None
    for line in text.splitlines():
        match = _EXCEPTION_LINE.match(line)
        if match and not line.lstrip().startswith("raise "):
            return f"{match.group(1)}: {match.group(2).strip()}"
    return None


def _strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def _kill_group_of(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def _result(record: dict[str, Any], reused: bool = False) -> RunResult:
    return RunResult(
        run_id=record["run_id"],
        state=record["state"],
        outputs=record.get("outputs") or {},
        error=record.get("error"),
        reused=reused,
        started_at=record.get("started_at"),
        finished_at=record.get("finished_at"),
        duration_s=record.get("duration_s"),
    )


# -- the child process -------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    """Pipeline outputs as JSON: parameters as they are, artifacts as their URI and metadata."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "uri") and hasattr(value, "metadata"):
        return {"uri": value.uri, "metadata": _jsonable(dict(value.metadata))}
    return value


def _run_in_this_process(run_dir: Path) -> int:
    """Run the compiled spec named in RUN_DIR/request.json with kfp.local; write RUN_DIR/result.json."""
    import warnings

    request = json.loads((run_dir / "request.json").read_text(encoding="utf-8"))
    result_path = Path(request["result"])
    try:
        from kfp import components, local

        # The runner warns about non-"python" images; locally the image is never used.
        warnings.filterwarnings("ignore", message=".*non-Python base image.*")
        local.init(
            runner=local.SubprocessRunner(use_venv=False),
            pipeline_root=request["pipeline_root"],
            raise_on_error=True,
        )
        pipeline = components.load_component_from_file(request["spec"])
        task = pipeline(**request["params"])
        outputs = task.outputs if isinstance(task.outputs, dict) else {"output": task.output}
        _write_json_atomic(result_path, {"state": "SUCCEEDED", "outputs": _jsonable(outputs)})
        return 0
    except Exception as exc:  # noqa: BLE001 - any failure is the run's error; the traceback goes to the log
        import traceback

        traceback.print_exc()
        _write_json_atomic(result_path, {"state": "FAILED", "error": f"{type(exc).__name__}: {exc}"})
        return 1


if __name__ == "__main__":  # pragma: no cover - exercised through LocalEngine.run in a child process
    logging.basicConfig(level=logging.INFO)
    sys.exit(_run_in_this_process(Path(sys.argv[1])))
