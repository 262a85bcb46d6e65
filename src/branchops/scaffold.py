"""``branchops init``: scaffold a project from a template into a new git repository.

A template is a folder under ``branchops/templates/`` (package data): the project's components,
pipeline, Dockerfiles, configuration, data scripts and Jenkins files, plus ``template.yaml`` saying what it
is (and what ``branchops demo`` does with it). The reference project is the repository's own (its entries
link to the repository's files; its ``template.yaml`` says ``default: true``); ``minimal`` is the smallest
project that goes through all four stages. A template's files are copied (links followed), its
configuration gets the project's approvers and data source, and the result is committed on ``main``
with every stage branch and ``ds1`` made from it.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import git
import yaml

from branchops import gitops
from branchops.config import CONFIG_PATH, STAGES, parse_config
from branchops.errors import BadArgument, BranchopsError, NotFound

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
TEMPLATE_FILE = "template.yaml"
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", "*.egg-info", TEMPLATE_FILE)
DEV_BRANCH = "ds1"

GITIGNORE = """\
# branchops' local state: merge requests, volumes, registries, run logs (never committed)
.branchops/
__pycache__/
*.pyc
"""


@dataclass(frozen=True)
class Template:
    name: str
    path: Path
    description: str = ""
    title: str = ""
    synthetic_data: str | None = None  # a data script that generates data (marked synthetic)
    data_files: str = "*"  # which files of a --data folder are the raw data
    demo: dict[str, Any] = field(default_factory=dict)

    def config_text(self) -> str:
        return (self.path / CONFIG_PATH).read_text(encoding="utf-8")


def available_templates() -> list[str]:
    return sorted(p.name for p in TEMPLATES_DIR.iterdir() if (p / TEMPLATE_FILE).is_file())


def default_template() -> str:
    """The template whose ``template.yaml`` says ``default: true`` (the reference project)."""
    for name in available_templates():
        if (yaml.safe_load((TEMPLATES_DIR / name / TEMPLATE_FILE).read_text(encoding="utf-8")) or {}).get(
            "default"
        ):
            return name
    raise BranchopsError(f"no template in {TEMPLATES_DIR} is marked default: true")


def load_template(name: str | None = None) -> Template:
    name = name or default_template()
    path = TEMPLATES_DIR / name
    if not (path / TEMPLATE_FILE).is_file():
        raise NotFound(f"no template '{name}'; templates: {', '.join(available_templates())}")
    meta = yaml.safe_load((path / TEMPLATE_FILE).read_text(encoding="utf-8")) or {}
    if not (path / CONFIG_PATH).is_file():
        raise BranchopsError(f"template '{name}' has no {CONFIG_PATH} (is the installation complete? {path})")
    return Template(
        name=name,
        path=path,
        description=meta.get("description", ""),
        title=meta.get("title", name),
        synthetic_data=meta.get("synthetic_data"),
        data_files=meta.get("data_files", "*"),
        demo=meta.get("demo") or {},
    )


def data_section(template: Template, data_dir: str | None, synthetic: bool) -> dict[str, Any] | None:
    """The config's data section for ``--data DIR`` or ``--synthetic``; None keeps the template's own."""
    if data_dir:
        return {"source": "folder", "folder": str(Path(data_dir).resolve()), "files": template.data_files}
    if synthetic:
        if not template.synthetic_data:
            raise BranchopsError(
                f"template '{template.name}' ships no synthetic data script; pass --data DIR"
            )
        return {"source": "script", "script": template.synthetic_data}
    return None


def deep_merge(base: dict, overrides: dict) -> dict:
    merged = dict(base)
    for key, value in overrides.items():
        merged[key] = (
            deep_merge(merged[key], value)
            if isinstance(value, dict) and isinstance(merged.get(key), dict)
            else value
        )
    return merged


def project_config(
    template: Template,
    approvers: list[str] | dict[str, list[str]],
    data_dir: str | None,
    synthetic: bool,
    overrides: dict | None = None,
) -> str:
    """The template's config with this project's approvers and data source filled in (comments kept)."""
    text = template.config_text()
    data = yaml.safe_load(text)
    data["approvers"] = (
        {stage: list(approvers[stage]) for stage in STAGES}
        if isinstance(approvers, dict)
        else {stage: list(approvers) for stage in STAGES}
    )
    section = data_section(template, data_dir, synthetic)
    if section:
        data["data"] = section
    data = deep_merge(data, overrides or {})
    header = "".join(line + "\n" for line in text.splitlines() if line.startswith("#"))
    rendered = header + yaml.safe_dump(data, sort_keys=False, width=110)
    parse_config(rendered, CONFIG_PATH)  # never scaffold an invalid project
    return rendered


def init_project(
    directory: str | Path,
    *,
    approvers: list[str] | dict[str, list[str]],
    template: str | None = None,
    data_dir: str | None = None,
    synthetic: bool = False,
    user: str = "branchops-init",
    overrides: dict | None = None,
) -> Path:
    target = Path(directory).resolve()
    if target.exists() and any(target.iterdir()):
        raise BadArgument(f"{target} exists and is not empty; choose a new directory")
    chosen = load_template(template)
    config = project_config(
        chosen, approvers, data_dir, synthetic, overrides
    )  # checked before anything is written
    target.mkdir(parents=True, exist_ok=True)
    for entry in sorted(chosen.path.iterdir()):
        if entry.name == TEMPLATE_FILE or IGNORED(str(chosen.path), [entry.name]):
            continue
        if entry.is_dir():  # follows a link to the repository's own folder
            shutil.copytree(entry, target / entry.name, ignore=IGNORED)
        else:
            shutil.copy2(entry, target / entry.name)
    (target / CONFIG_PATH).write_text(config, encoding="utf-8")
    (target / ".gitignore").write_text(GITIGNORE, encoding="utf-8")
    if not (target / "README.md").exists():
        (target / "README.md").write_text(
            f"# {chosen.title}\n\n{chosen.description}\n\nStage branches: "
            + ", ".join(STAGES)
            + ". Work on `ds1`, open merge requests into a stage branch, get them approved, merge. "
            "`branchops status` shows what ran.\n",
            encoding="utf-8",
        )

    repo = git.Repo.init(target, initial_branch="main")
    identity = gitops.Identity(user, f"{user}@users.local")
    with repo.config_writer() as cw:  # the local demo's users act through --as; commits need a name
        cw.set_value("user", "name", identity.name)
        cw.set_value("user", "email", identity.email)
    repo.git.add("--all")
    repo.git.commit(
        "--quiet", "-m", f"Scaffold the {chosen.name} template (branchops init)", env=identity.env()
    )
    for branch in (*STAGES, DEV_BRANCH):
        repo.git.branch(branch)
    repo.git.checkout("--quiet", DEV_BRANCH)
    return target
