"""The compiled reference pipeline, run in the component images that build-components builds.

build-components' image builder (branchops.images.build_components, what the stage runs) builds with
buildah and pushes the component images of a copy of this repository to a real docker-registry, FROM the
Python 3.11 base image made on this machine (conftest.py). It skips the component tests the stage runs
first: this suite runs them already (components/*/tests), and on two cores they would double its cost.
The pipeline is compiled as kf-pipeline compiles it, every step's image pinned by digest.
kfp.local.DockerRunner then runs each step in its image through podman's Docker-compatible API, on the
real DJIA data, with the run's directories bind-mounted as the volumes would be, and the metrics must be
those of the same spec run by the local engine (Kubeflow's subprocess runner, in this environment).

The copy leaves docker/train-gpu out: its image adds gigabytes of CUDA wheels to the same code as train
(test_component_requirements.py checks what it installs).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from branchops.config import RegistrySection, load_config
from branchops.engine.local import LocalEngine
from branchops.images import build_components
from branchops.runplan import compile_workspace

from .conftest import REPO_ROOT, TIMINGS, timed

pytestmark = [pytest.mark.containers, pytest.mark.slow]

STEPS = ("consolidate", "validate", "features", "train", "evaluate", "export")
# the deployable experiment of config/branchops.yaml, made small: fewer epochs and walk-forward folds
EXPERIMENT = "aapl-turbulence"
SMALLER = {"epochs": 3, "walk_forward_folds": 2}
LEFT_OUT = ("train-gpu",)
TIMEOUT_S = 2400


def copy_project(workspace: Path) -> Path:
    """The reference project's sources as a build-components checkout holds them, without the GPU image."""
    caches = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    for folder in ("components", "pipelines", "config"):
        shutil.copytree(REPO_ROOT / folder, workspace / folder, ignore=caches)
    for dockerfile in sorted((REPO_ROOT / "docker").glob("*/Dockerfile")):
        if dockerfile.parent.name not in LEFT_OUT:
            shutil.copytree(dockerfile.parent, workspace / "docker" / dockerfile.parent.name, ignore=caches)
    return workspace


def run_params(config, source: Path, volumes: Path) -> dict:
    (experiment,) = [e for e in config.training.experiments if e.name == EXPERIMENT]
    return {
        "source_dir": str(source),
        "data_dir": str(volumes / "data"),
        "work_dir": str(volumes / "models" / "run"),
        "export_base": str(volumes / "models" / "run" / "export"),
        "version": 1,
        "commit": "0123456789ab",
        **experiment.params,
        **SMALLER,
    }


def run_in_images(spec: Path, params: dict, source: Path, volumes: Path, root: Path, label: str) -> dict:
    """Run ``spec`` with kfp.local.DockerRunner (DOCKER_HOST is set); return the pipeline's outputs."""
    from docker.types import Mount
    from kfp import components, local

    mounts = [
        Mount(target=str(source), source=str(source), type="bind", read_only=True),
        Mount(target=str(volumes), source=str(volumes), type="bind"),
    ]
    local.init(
        runner=local.DockerRunner(mounts=mounts, labels={"io.branchops.test-run": label}),
        pipeline_root=str(root),
        raise_on_error=True,
    )
    try:
        task = components.load_component_from_file(str(spec))(**params)
    finally:
        local.config.LocalExecutionConfig.instance = None  # kfp.local's process-wide settings
    return dict(task.outputs)


def containers_of_run(label: str, env: dict[str, str]) -> list[dict]:
    """The containers the run started, as podman lists them (the runner leaves them behind)."""
    listed = subprocess.run(
        ["podman", "ps", "--all", "--filter", f"label=io.branchops.test-run={label}", "--format", "json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(listed.stdout or "[]")


def failed_steps(label: str, env: dict[str, str]) -> str:
    """The end of each failed step's output, as its container logged it."""
    failed = [c for c in containers_of_run(label, env) if c["ExitCode"] != 0]
    logs = []
    for container in failed:
        done = subprocess.run(["podman", "logs", container["Id"]], env=env, capture_output=True, text=True)
        tail = (done.stdout + done.stderr).strip().splitlines()[-15:]
        logs.append(f"-- {container['Image']} exited with {container['ExitCode']}:\n" + "\n".join(tail))
    return "\n".join(logs)


@pytest.fixture
def run_label(container_store: dict[str, str]) -> Iterator[str]:
    """A label for the containers of one run; they are removed after the test (the store may be kept)."""
    label = uuid.uuid4().hex
    yield label
    subprocess.run(
        ["podman", "rm", "--force", "--filter", f"label=io.branchops.test-run={label}"],
        env=container_store,
        capture_output=True,
        check=False,
    )


# six image builds on two shared cores take minutes, more than the suite's default per-test timeout
@pytest.mark.timeout(TIMEOUT_S)
def test_reference_pipeline_runs_in_the_built_images_with_the_subprocess_runners_metrics(
    python_base_image, registry, docker_host, container_store, run_label, djia_dir, monkeypatch, tmp_path
):
    workspace = copy_project(tmp_path / "workspace")
    registry_cfg = RegistrySection(
        url=f"{registry.url}/branchops",
        insecure=True,
        builder="buildah",
        max_parallel_builds=2,
        build_args={"BASE_IMAGE": python_base_image},
        timeout_s=TIMEOUT_S,
    )
    config = load_config(workspace).model_copy(update={"registry": registry_cfg})

    with timed("build-components: build and push of 6 images"):
        built = build_components(workspace, registry_cfg, tmp_path / "build-logs", run_tests=False)
    assert built.ok, built.summary() + "".join(f"\n{c.name}: see {c.log}" for c in built.failed)
    assert sorted(c.name for c in built.built) == sorted(STEPS)
    for component in built.built:
        TIMINGS[f"  of which {component.name} (build and push, 2 at a time)"] = component.durations["build_s"]

    compiled, images = compile_workspace(config, workspace)
    assert sorted(images) == sorted(STEPS)
    spec = tmp_path / "pipeline.yaml"
    spec.write_bytes(compiled.spec)

    monkeypatch.setenv("DOCKER_HOST", docker_host)
    in_images = tmp_path / "in-images"
    with timed("pipeline run in the images (DockerRunner via podman)"):
        try:
            outputs = run_in_images(
                spec,
                run_params(config, djia_dir, in_images),
                djia_dir,
                in_images,
                tmp_path / "root",
                run_label,
            )
        except RuntimeError as exc:  # kfp.local: "Task '<name>' finished with status FAILURE"
            pytest.fail(f"{exc}\n{failed_steps(run_label, container_store)}")

    # every step ran in a container of its own component's image, pinned by digest, and succeeded
    ran = {}
    for container in containers_of_run(run_label, container_store):
        command = container["Command"]
        step = command[command.index("--function_to_execute") + 1]
        ran[step] = (container["Image"], container["ExitCode"])
    assert ran == {step: (images[step], 0) for step in STEPS}

    engine = LocalEngine(tmp_path / "kfp", workspace=workspace)
    upload = engine.upsert(config.kubeflow.pipeline_name, compiled)
    in_process = tmp_path / "subprocess"
    with timed("pipeline run by the subprocess runner (engine local)"):
        result = engine.run(
            "containers", upload, "subprocess", run_params(config, djia_dir, in_process), TIMEOUT_S
        )
    assert result.state == "SUCCEEDED", result.error

    # The same metrics, to the last digit: the images hold the tested environment's libraries.
    metrics_in_images = json.loads((in_images / "models" / "run" / "metrics.json").read_text())
    metrics_in_process = json.loads((in_process / "models" / "run" / "metrics.json").read_text())
    assert metrics_in_images["roc_auc"] is not None and metrics_in_images["training"]["device"] == "CPU"
    assert metrics_in_images == metrics_in_process
    paths = ("metrics", "plots")  # where each run wrote them: its own directories
    assert {k: v for k, v in outputs["metrics"].items() if k not in paths} == {
        k: v for k, v in result.outputs["metrics"].items() if k not in paths
    }
    assert Path(outputs["model"]["export_path"]) == in_images / "models" / "run" / "export" / "1"
    assert (in_images / "models" / "run" / "export" / "1" / "saved_model.pb").is_file()
