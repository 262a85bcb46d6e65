"""Compiling the reference pipeline: deterministic bytes, images pinned by digest, GPU settings on train."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from branchops.config import GpuSection, load_config
from branchops.engine.base import spec_parameters
from branchops.engine.compile import compile_pipeline, is_pinned, spec_images
from branchops.errors import ConfigError, StageFailed

REPO_ROOT = Path(__file__).resolve().parents[2]
MODULE = "pipelines/djia_pipeline.py"
NAMES = ("consolidate", "validate", "features", "train", "evaluate", "export")


def pinned_images(seed: str = "ab", registry: str = "127.0.0.1:5000/djia") -> dict[str, str]:
    return {n: f"{registry}/{n}@sha256:{(seed * 32)[:64]}" for n in NAMES}


def executors(spec: bytes) -> dict[str, dict]:
    document = next(iter(yaml.safe_load_all(spec)))
    return document["deploymentSpec"]["executors"]


def platform(spec: bytes) -> dict:
    documents = list(yaml.safe_load_all(spec))
    return (
        documents[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"] if len(documents) > 1 else {}
    )


def test_same_sources_compile_to_the_same_bytes_in_two_processes():
    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from branchops.engine.compile import compile_pipeline
        images = {pinned_images()!r}
        compiled = compile_pipeline(Path({str(REPO_ROOT)!r}), {MODULE!r}, images, None)
        sys.stdout.buffer.write(compiled.spec)
    """)
    runs = [
        subprocess.run([sys.executable, "-c", script], capture_output=True, check=True).stdout
        for _ in range(2)
    ]
    assert runs[0] == runs[1]
    in_process = compile_pipeline(REPO_ROOT, MODULE, pinned_images(), None)
    assert in_process.spec == runs[0]
    assert len(in_process.spec_hash) == 64 and in_process.version_name == in_process.spec_hash


def test_a_different_image_digest_is_a_different_version():
    first = compile_pipeline(REPO_ROOT, MODULE, pinned_images("ab"), None)
    second = compile_pipeline(
        REPO_ROOT, MODULE, {**pinned_images("ab"), "train": pinned_images("cd")["train"]}, None
    )
    assert first.spec_hash != second.spec_hash


def test_with_a_registry_every_image_in_the_spec_is_pinned_by_digest():
    images = pinned_images()
    compiled = compile_pipeline(REPO_ROOT, MODULE, images, None)
    found = spec_images(compiled.spec)
    assert found == sorted(images.values())
    assert all(is_pinned(image) for image in found)
    assert not any(":latest" in image for image in found)


def test_a_tag_only_image_is_refused():
    images = {**pinned_images(), "train": "127.0.0.1:5000/djia/train:3f2a9c"}
    with pytest.raises(ConfigError, match="pinned by digest.*train=127.0.0.1:5000/djia/train:3f2a9c"):
        compile_pipeline(REPO_ROOT, MODULE, images, None)


def test_gpu_request_node_selector_and_tolerations_go_on_the_training_step_only():
    gpu = GpuSection(
        count=2,
        resource="nvidia.com/gpu",
        node_selector={"accelerator": "a100"},
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    )
    spec = compile_pipeline(REPO_ROOT, MODULE, pinned_images(), gpu).spec
    execs = executors(spec)
    train = execs["exec-train"]["container"]["resources"]["accelerator"]
    assert train["resourceType"] == "nvidia.com/gpu" and str(train["resourceCount"]) == "2"
    assert not any("resources" in e["container"] for name, e in execs.items() if name != "exec-train")
    k8s = platform(spec)
    assert k8s["exec-train"]["nodeSelector"]["labels"] == {"accelerator": "a100"}
    assert k8s["exec-train"]["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert "nodeSelector" not in k8s["exec-evaluate"]


def test_gpu_variant_image_is_used_for_training_when_a_gpu_is_requested():
    images = {**pinned_images(), "train-gpu": pinned_images("ef")["train"].replace("/train@", "/train-gpu@")}
    spec = compile_pipeline(REPO_ROOT, MODULE, images, GpuSection(count=1)).spec
    assert executors(spec)["exec-train"]["container"]["image"] == images["train-gpu"]
    cpu_spec = compile_pipeline(REPO_ROOT, MODULE, images, GpuSection(count=0)).spec
    assert executors(cpu_spec)["exec-train"]["container"]["image"] == images["train"]


def test_every_step_mounts_both_volumes_and_nothing_is_cached_or_pip_installed():
    spec = compile_pipeline(REPO_ROOT, MODULE, pinned_images(), None).spec
    k8s = platform(spec)
    for name in NAMES:
        mounts = {
            m["mountPath"]: m["pvcNameParameter"]["componentInputParameter"]
            for m in k8s[f"exec-{name}"]["pvcMount"]
        }
        assert mounts == {"/mnt/data": "data_pvc", "/mnt/models": "model_pvc"}
    document = next(iter(yaml.safe_load_all(spec)))
    tasks = document["root"]["dag"]["tasks"]
    assert all(task["cachingOptions"].get("enableCache", False) is False for task in tasks.values())
    assert b"pip install" not in spec


def test_pipeline_parameters_cover_every_training_parameter_of_the_config():
    params = spec_parameters(compile_pipeline(REPO_ROOT, MODULE, None, None).spec)
    config = load_config(REPO_ROOT)
    for experiment in config.training.experiments:
        assert set(experiment.params) <= set(params), experiment.name
    assert {
        "source_dir",
        "data_dir",
        "work_dir",
        "export_base",
        "version",
        "commit",
        "data_pvc",
        "model_pvc",
    } <= set(params)
    assert params["hidden_units"]["type"] == "LIST" and params["epochs"]["type"] == "NUMBER_INTEGER"


def test_a_missing_module_or_builder_is_a_clear_error(tmp_path: Path):
    with pytest.raises(ConfigError, match="pipelines/nope.py not found"):
        compile_pipeline(tmp_path, "pipelines/nope.py")
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines" / "p.py").write_text("PIPELINE = 1\n")
    with pytest.raises(ConfigError, match="no build_pipeline"):
        compile_pipeline(tmp_path, "pipelines/p.py")
    (tmp_path / "pipelines" / "broken.py").write_text("import not_a_module_anywhere\n")
    with pytest.raises(
        StageFailed, match="broken.py: importing the pipeline module failed: ModuleNotFoundError"
    ):
        compile_pipeline(tmp_path, "pipelines/broken.py")


def kaggle_config(secret: str | None = "kaggle-api"):
    from branchops.config import parse_config

    text = (REPO_ROOT / "config" / "branchops.yaml").read_text()
    config = yaml.safe_load(text)
    if secret:
        config["data"]["kaggle"]["secret"] = secret
    return parse_config(yaml.safe_dump(config))


def test_the_kaggle_secret_named_in_config_is_bound_to_the_download_step_only():
    from branchops.runplan import compile_workspace

    compiled, _ = compile_workspace(kaggle_config("kaggle-api"), REPO_ROOT)
    k8s = platform(compiled.spec)
    [binding] = k8s["exec-consolidate"]["secretAsEnv"]
    assert binding["secretName"] == "kaggle-api"
    assert {(k["secretKey"], k["envVar"]) for k in binding["keyToEnv"]} == {
        ("username", "KAGGLE_USERNAME"),
        ("key", "KAGGLE_KEY"),
    }
    # optional: a missing Secret must not hold the pod in CreateContainerConfigError when nothing is
    # downloaded; the download step then says it has no credentials
    assert binding["optional"] is True
    assert [name for name, spec in k8s.items() if "secretAsEnv" in spec] == ["exec-consolidate"]
    # no secret configured: nothing bound, and the spec is the one compiled before this existed
    unbound, _ = compile_workspace(kaggle_config(None), REPO_ROOT)
    assert "secretAsEnv" not in unbound.spec.decode()


def test_a_pipeline_without_a_secrets_argument_compiles_until_a_secret_is_configured(tmp_path: Path):
    from tests.engine.conftest import write_tiny_workspace

    workspace = write_tiny_workspace(tmp_path / "ws")  # build_pipeline(images, gpu, mounts): an older project
    assert compile_pipeline(workspace, "pipelines/tiny.py", None, None, {}, {}).spec
    secrets = {"kaggle": {"name": "kaggle-api", "env": {"username": "KAGGLE_USERNAME"}}}
    with pytest.raises(ConfigError, match="takes no 'secrets' argument.*kaggle"):
        compile_pipeline(workspace, "pipelines/tiny.py", None, None, {}, secrets)


def test_the_minimal_template_takes_secrets_and_refuses_them_as_it_downloads_nothing():
    template = REPO_ROOT / "src" / "branchops" / "templates" / "minimal"
    assert compile_pipeline(template, "pipelines/pipeline.py", None, None, {}, {}).spec
    secrets = {"kaggle": {"name": "kaggle-api", "env": {"username": "KAGGLE_USERNAME"}}}
    with pytest.raises(StageFailed, match="none of its steps downloads anything"):
        compile_pipeline(template, "pipelines/pipeline.py", None, None, {}, secrets)


def test_the_evaluate_step_logs_its_metrics_as_kfp_metrics_artifacts_for_the_ui():
    document = next(iter(yaml.safe_load_all(compile_pipeline(REPO_ROOT, MODULE, pinned_images(), None).spec)))
    artifacts = document["components"]["comp-evaluate"]["outputDefinitions"]["artifacts"]
    assert {name: a["artifactType"]["schemaTitle"] for name, a in artifacts.items()} == {
        "metrics": "system.Metrics",
        "confusion": "system.ClassificationMetrics",
    }
    # no other step has artifacts, and the pipeline still returns the evaluation's parameters as "metrics"
    others = [c for name, c in document["components"].items() if name.startswith("comp-") and c is not None]
    assert sum("artifacts" in c.get("outputDefinitions", {}) for c in others) == 1
    outputs = document["root"]["dag"]["outputs"]["parameters"]
    assert outputs["metrics"]["valueFromParameter"] == {
        "outputParameterKey": "Output",
        "producerSubtask": "evaluate",
    }
