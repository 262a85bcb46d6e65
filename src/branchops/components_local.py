"""Run one of the repository's pipeline components locally, as a data scientist iterating on a folder."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

from branchops import gitops
from branchops.errors import DataError, NotFound, StageFailed
from branchops.progress import heartbeat, kill_group, print_line

log = logging.getLogger("branchops.component")


def _pass_through(stream) -> None:
    for line in stream:
        print_line(line)


def run_component(repo_path: str | Path, name: str, params: dict) -> dict:
    repo = gitops.open_repo(repo_path)
    root = Path(repo.working_tree_dir or gitops.main_worktree(repo))
    if not (root / "components" / name).is_dir():
        folder = root / "components"
        available = (
            sorted(
                p.name
                for p in folder.iterdir()
                if p.is_dir() and (p / "__init__.py").exists() and p.name not in ("common", "tests")
            )
            if folder.is_dir()
            else []
        )
        raise NotFound(
            f"no component '{name}' in {root / 'components'}; available: {', '.join(available) or 'none'}"
        )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])),
    }
    # The component's log (its stderr) is passed through line by line as it runs, under a heartbeat with
    # the elapsed time; its stdout is its result, read at the end.
    proc = subprocess.Popen(
        [sys.executable, "-m", "components", name, "--params", json.dumps(params)],
        cwd=root,
        env={**env, "PYTHONUNBUFFERED": "1"},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # so an interruption can stop what the component started, too
    )
    assert proc.stdout is not None and proc.stderr is not None
    passer = threading.Thread(target=_pass_through, args=(proc.stderr,), daemon=True)
    try:
        with heartbeat(f"component {name}", logger=log):
            passer.start()
            stdout = proc.stdout.read()
            proc.wait()
            passer.join()
    finally:
        if proc.poll() is None:  # interrupted: the component must not run on without us
            kill_group(proc)
            proc.wait()
    if proc.returncode == 7:
        raise DataError(f"component {name} rejected its input (see the message above)")
    if proc.returncode != 0:
        raise StageFailed(f"component {name} failed with exit code {proc.returncode}")
    lines = [line for line in stdout.splitlines() if line.strip()]
    return json.loads(lines[-1]) if lines else {}
