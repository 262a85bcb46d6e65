"""Run one of the repository's pipeline components locally, as a data scientist iterating on a folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from branchops import gitops
from branchops.errors import DataError, NotFound, StageFailed


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
    proc = subprocess.run(
        [sys.executable, "-m", "components", name, "--params", json.dumps(params)],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    if proc.returncode == 7:
        raise DataError(f"component {name} rejected its input (see the message above)")
    if proc.returncode != 0:
        raise StageFailed(f"component {name} failed with exit code {proc.returncode}")
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    return json.loads(lines[-1]) if lines else {}
