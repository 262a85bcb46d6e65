"""``branchops init``: scaffold the layout and the reference project into a new git repository.

The reference project is copied from the branchops source tree it was installed from (the repository
is both the toolkit and its reference project), so a scaffolded repository is what the demo trains.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import git
import yaml

from branchops import gitops
from branchops.config import CONFIG_PATH, STAGES, parse_config
from branchops.errors import BranchopsError

# What a project adopting branchops gets; everything else in the source tree is the toolkit itself.
PROJECT_PATHS = ("components", "pipelines", "docker", "serving", "jenkins", "config", "Jenkinsfile", "docs")
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", "*.egg-info")
DEV_BRANCH = "ds1"

GITIGNORE = """\
# branchops' local state: merge requests, volumes, registries, run logs (never committed)
.branchops/
__pycache__/
*.pyc
"""


def reference_source() -> Path:
    root = Path(__file__).resolve().parents[2]
    if not (root / CONFIG_PATH).exists() or not (root / "components").is_dir():
        raise BranchopsError(
            f"the reference project is not next to this installation ({root}); install branchops from its "
            "repository (pip install -e .) to scaffold projects"
        )
    return root


def deep_merge(base: dict, overrides: dict) -> dict:
    merged = dict(base)
    for key, value in overrides.items():
        merged[key] = deep_merge(merged[key], value) if isinstance(value, dict) and isinstance(
            merged.get(key), dict) else value
    return merged


def project_config(source: Path, approvers: list[str] | dict[str, list[str]], data_dir: str | None,
                   synthetic: bool, overrides: dict | None = None) -> str:
    """The reference config with this project's approvers and data source filled in (comments kept)."""
    text = (source / CONFIG_PATH).read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    data["approvers"] = ({stage: list(approvers[stage]) for stage in STAGES} if isinstance(approvers, dict)
                         else {stage: list(approvers) for stage in STAGES})
    if data_dir:
        data["data"] = {"source": "folder", "folder": str(Path(data_dir).resolve())}
    elif synthetic:
        data["data"] = {"source": "synthetic"}
    data = deep_merge(data, overrides or {})
    header = "".join(line + "\n" for line in text.splitlines() if line.startswith("#"))
    rendered = header + yaml.safe_dump(data, sort_keys=False, width=110)
    parse_config(rendered, CONFIG_PATH)  # never scaffold an invalid project
    return rendered


def init_project(directory: str | Path, *, approvers: list[str] | dict[str, list[str]], data_dir: str | None = None,
                 synthetic: bool = False, user: str = "branchops-init", overrides: dict | None = None) -> Path:
    target = Path(directory).resolve()
    if target.exists() and any(target.iterdir()):
        raise BranchopsError(f"{target} exists and is not empty; choose a new directory")
    source = reference_source()
    target.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_PATHS:
        src = source / name
        if src.is_dir():
            shutil.copytree(src, target / name, ignore=IGNORED)
        elif src.is_file():
            shutil.copy2(src, target / name)
    (target / CONFIG_PATH).write_text(project_config(source, approvers, data_dir, synthetic, overrides), encoding="utf-8")
    (target / ".gitignore").write_text(GITIGNORE, encoding="utf-8")
    (target / "README.md").write_text(
        "# DJIA sentiment — a branchops project\n\nStage branches: "
        + ", ".join(STAGES) + ". Work on `ds1`, open merge requests into a stage branch, get them approved, "
        "merge. `branchops status` shows what ran.\n", encoding="utf-8")

    repo = git.Repo.init(target, initial_branch="main")
    identity = gitops.Identity(user, f"{user}@users.local")
    with repo.config_writer() as cw:  # the local demo's users act through --as; commits need a name
        cw.set_value("user", "name", identity.name)
        cw.set_value("user", "email", identity.email)
    repo.git.add("--all")
    repo.git.commit("--quiet", "-m", "Scaffold the reference project (branchops init)", env=identity.env())
    for branch in (*STAGES, DEV_BRANCH):
        repo.git.branch(branch)
    repo.git.checkout("--quiet", DEV_BRANCH)
    return target
