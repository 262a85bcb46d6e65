"""What each component image installs provides what its pipeline step runs, read without building it.

The reference pipeline builds its components with ``install_kfp_package=False``: nothing is installed
when a step starts, and the step's command runs ``python3 -m kfp.dsl.executor_main`` in the component's
image. So the files that image's Dockerfile pip-installs must name kfp, at the version the pipeline is
compiled with (the tested environment's), and, where the Dockerfile installs with ``--no-deps``, every
package kfp requires. What kfp requires is read from kfp's own package metadata.
test_reference_pipeline_in_images.py runs the steps in the real images.
"""

from __future__ import annotations

import hashlib
import re
import shlex
from importlib import metadata
from pathlib import Path

import yaml
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from branchops.config import GpuSection
from branchops.engine.compile import compile_pipeline
from branchops.images import discover_components

REPO_ROOT = Path(__file__).resolve().parents[2]
PIPELINE_MODULE = "pipelines/djia_pipeline.py"
_PYTHON_MODULE = re.compile(r"\bpython3? -m ([\w.]+)")


def _fake_pinned(name: str) -> str:
    return f"registry.invalid/branchops/{name}@sha256:{hashlib.sha256(name.encode()).hexdigest()}"


def steps_and_images() -> set[tuple[str, str, str]]:
    """(executor, module it runs, component whose image it runs in) of the compiled pipeline, compiled
    without and with a GPU (the training step then runs in the train-gpu image)."""
    images = {c.name: _fake_pinned(c.name) for c in discover_components(REPO_ROOT)}
    component_of = {ref: name for name, ref in images.items()}
    found: set[tuple[str, str, str]] = set()
    for gpu in (None, GpuSection(count=1)):
        spec = compile_pipeline(REPO_ROOT, PIPELINE_MODULE, images=images, gpu=gpu).spec
        pipeline = next(yaml.safe_load_all(spec))
        for executor, body in pipeline["deploymentSpec"]["executors"].items():
            container = body["container"]
            modules = _PYTHON_MODULE.findall(" ".join(container.get("command", [])))
            assert modules, f"{executor}: runs no `python3 -m <module>`: {container.get('command')}"
            for module in modules:
                found.add((executor, module, component_of[container["image"]]))
    return found


def pip_installs(dockerfile: Path) -> list[tuple[list[Path], list[Path], bool]]:
    """(requirement files, constraint files, --no-deps) of each `pip install` of a Dockerfile, the files
    as sources in the repository (followed back through the COPY instructions)."""
    copied: dict[str, Path] = {}
    installs = []
    text = re.sub(r"\\\n", " ", dockerfile.read_text(encoding="utf-8"))
    for line in text.splitlines():
        words = shlex.split(line, comments=True)
        if not words:
            continue
        if words[0].upper() == "COPY" and len(words) == 3 and not words[1].startswith("--"):
            copied[words[2]] = REPO_ROOT / words[1]
        elif words[0].upper() == "RUN" and "pip" in words and "install" in words:

            def files(flag: str) -> list[Path]:
                return [copied[words[i + 1]] for i, word in enumerate(words) if word == flag]

            installs.append((files("-r"), files("-c"), "--no-deps" in words))
    return installs


def pins(path: Path) -> dict[str, Requirement]:
    requirements = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            requirement = Requirement(line)
            requirements[canonicalize_name(requirement.name)] = requirement
    return requirements


def required_by(distribution: str) -> set[str]:
    """Every distribution ``distribution`` needs (itself included), from the installed packages'
    metadata, for this platform and Python (the images' are the same: Linux, CPython 3.11)."""
    environment = default_environment()
    needed: set[tuple[str, frozenset[str]]] = set()
    todo = [(canonicalize_name(distribution), frozenset())]
    while todo:
        name, extras = todo.pop()
        if (name, extras) in needed:
            continue
        needed.add((name, extras))
        for line in metadata.distribution(name).requires or []:
            requirement = Requirement(line)
            marker = requirement.marker
            if marker is None or any(marker.evaluate({**environment, "extra": e}) for e in extras | {""}):
                todo.append((canonicalize_name(requirement.name), frozenset(requirement.extras)))
    return {name for name, _ in needed}


def module_files(module: str) -> set[str]:
    path = module.replace(".", "/")
    return {f"{path}.py", f"{path}/__init__.py", f"{path}/__main__.py"}


def test_every_image_of_the_compiled_pipeline_installs_the_module_its_step_runs():
    distributions_of = metadata.packages_distributions()
    problems = []
    for executor, module, component in sorted(steps_and_images()):
        # the distribution whose files hold the module, and the version the spec was compiled with
        (distribution,) = [
            name
            for name in distributions_of[module.split(".")[0]]
            if any(str(file) in module_files(module) for file in metadata.files(name) or [])
        ]
        wanted = canonicalize_name(distribution)
        version = metadata.version(distribution)
        dockerfile = REPO_ROOT / "docker" / component / "Dockerfile"
        where = (
            f"{executor} runs `python3 -m {module}` in the {component} image "
            f"({dockerfile.relative_to(REPO_ROOT)})"
        )
        installs = pip_installs(dockerfile)
        assert installs, f"{where}: its Dockerfile pip-installs nothing"
        named = [
            (install, pinned)
            for install in installs
            for pinned in [{k: v for path in install[0] for k, v in pins(path).items()}]
            if wanted in pinned
        ]
        if not named:
            files = ", ".join(str(p.relative_to(REPO_ROOT)) for install in installs for p in install[0])
            problems.append(f"{where}, which installs no {distribution}: {files}")
            continue
        (requirement_files, constraint_files, no_deps), pinned = named[0]
        constraints = {k: v for path in constraint_files for k, v in pins(path).items()}
        specifier = constraints.get(wanted, pinned[wanted]).specifier
        if not (str(specifier).startswith("==") and specifier.contains(version)):
            problems.append(f"{where}: {distribution} is not pinned to the tested {version} ({specifier})")
        if no_deps:
            missing = sorted(required_by(distribution) - set(pinned))
            if missing:
                problems.append(
                    f"{where}: installed with --no-deps, without what {distribution} needs: {missing}"
                )
    assert not problems, "\n".join(problems)
