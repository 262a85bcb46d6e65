"""The templates are package data: a branchops installed from its wheel (no source tree beside it)
scaffolds the same projects as the repository does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def project_files(root: Path) -> set[str]:
    return {
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and ".git" not in p.parts and "__pycache__" not in p.parts
    }


@pytest.mark.slow
@pytest.mark.parametrize("template", ["djia", "minimal"])
def test_a_wheel_install_scaffolds_every_file_of_the_template(tmp_path, template):
    if not (REPO_ROOT / "src" / "branchops" / "templates" / template / "template.yaml").exists():
        pytest.fail(f"template {template} is missing from the source tree")
    wheels, target = tmp_path / "wheels", tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(REPO_ROOT),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheels),
        ],
        check=True,
        capture_output=True,
    )
    [wheel] = wheels.glob("branchops-*.whl")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    scaffold = (
        "import sys; from branchops.scaffold import init_project; import branchops; "
        "assert branchops.__file__.startswith(sys.argv[2]), branchops.__file__; "
        f"init_project(sys.argv[1], template={template!r}, approvers=['lead'])"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    subprocess.run(
        [sys.executable, "-c", scaffold, str(tmp_path / "project"), str(target)],
        check=True,
        env=env,
        cwd=tmp_path,
        capture_output=True,
    )
    from branchops.scaffold import init_project

    init_project(tmp_path / "from-source", template=template, approvers=["lead"])
    assert project_files(tmp_path / "project") == project_files(tmp_path / "from-source")
