"""The training stage as production runs it: the Kubeflow engine (the v2beta1 fake at kfp.Client,
tests/engine/fake_kfp.py) and Trident storage (the emulated API server, tests/storage/
storage_k8s_emulator.py), on the reference pipeline with its images pinned in a registry stand-in.

No directory here holds the run's files, and the Kubeflow API returns the steps' states, never what they
returned: the stage must read the metrics off the model volume through the storage port (a reader pod),
take its snapshots and open the release merge request. The fake "runs" the pipeline by writing what its
steps would write into the emulated volumes (``on_run_succeeded``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import git as gitpython
import pytest
import yaml

from branchops import runplan
from branchops.config import parse_config
from branchops.engine import make_engine
from branchops.errors import ConfigError
from branchops.forge.base import MergeRequest
from branchops.forge.local import LocalForge
from branchops.images import discover_components
from branchops.stages import training
from branchops.stages.base import StageContext
from tests.conftest import git
from tests.engine.fake_kfp import FakeKfpClient, FakeKfpClientView
from tests.engine.fake_registry import FakeRegistry, oci_manifest
from tests.storage.storage_k8s_emulator import KubeEmulator, RunningEmulator

REPO_ROOT = Path(__file__).resolve().parents[2]
NS = "team-a"
KF_HOST = "https://kubeflow.example.test/pipeline"
METRICS = {"roc_auc": 0.64, "accuracy": 0.61, "log_loss": 0.66, "precision": 0.5, "recall": 0.4, "f1": 0.44}
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256))  # binary, as a plot is
SETTINGS = f"""
approvers: {{build-components: [lead], kf-pipeline: [lead], training: [lead], deploy-model: [lead]}}
kubeflow:
  backend: kubeflow
  kubeflow: {{host: '{KF_HOST}', auth: none, namespace: {NS}, poll_interval_s: 0.01, heartbeat_s: 0.02}}
storage:
  backend: trident
  trident: {{namespace: {NS}}}
  data_volume: {{policy: existing, name: djia-data}}
training:
  experiments:
    - name: aapl-turbulence
      params: {{target: AAPL, target_kind: turbulence, epochs: 2}}
  kpis: {{thresholds: {{accuracy: 0.5}}, require_significant: false}}
"""


@pytest.fixture
def kube(tmp_path, monkeypatch):
    emulator = KubeEmulator(ready_after_polls=1, volumes_root=tmp_path / "volumes")
    with RunningEmulator(emulator) as running:
        monkeypatch.setenv("KUBECONFIG", str(running.kubeconfig(tmp_path / "kubeconfig", NS)))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        yield emulator
    assert emulator.rejected == [], f"the API server refused invalid objects: {emulator.rejected}"


@pytest.fixture
def kfp(monkeypatch):
    fake = FakeKfpClient(multi_user=True)
    monkeypatch.setattr("branchops.engine.kubeflow.make_client", lambda settings: FakeKfpClientView(fake))
    return fake


@pytest.fixture
def registry():
    with FakeRegistry() as running:
        # what build-components pushed for these sources, each image under its content tag
        for component in discover_components(REPO_ROOT, {}):
            running.push(
                f"djia/{component.name}", component.content_tag, oci_manifest(f"{component.name} image")
            )
        yield running


@pytest.fixture
def repo(tmp_path):
    path = tmp_path / "repo"
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    (path / "README.md").write_text("project\n")
    git(path, "add", "README.md")
    git(path, "commit", "-q", "-m", "start")
    for branch in ("training", "deploy-model"):
        git(path, "branch", branch)
    return gitpython.Repo(path)


def context(repo, tmp_path: Path, registry, extra: str = "") -> StageContext:
    from branchops.scaffold import deep_merge

    reference = yaml.safe_load((REPO_ROOT / "config" / "branchops.yaml").read_text())
    overrides = yaml.safe_load(SETTINGS + f"registry: {{url: '{registry.host}/djia', insecure: true}}\n")
    config = parse_config(
        yaml.safe_dump(deep_merge(deep_merge(reference, overrides), yaml.safe_load(extra) or {}))
    )
    commit = repo.head.commit.hexsha
    merge_request = MergeRequest(
        number=7,
        title="Turbulence model",
        source="ds1",
        target="training",
        author="ds1",
        state="merged",
        head_sha=commit,
        merged_by="lead",
    )
    return StageContext(
        stage="training",
        branch="training",
        workspace=REPO_ROOT,
        git_dir=Path(repo.working_dir),
        state_dir=tmp_path / "state",
        config=config,
        source_commit=commit,
        run_id="20261129T190000Z-" + commit[:7],
        record_dir="records/training/x",
        merge_request=merge_request,
        forge=LocalForge(repo),
        notifier=None,
        approved_by=["lead"],
        log=logging.getLogger("test.training"),
    )


def upload_pipeline(ctx: StageContext) -> None:
    """What the kf-pipeline stage did for this commit: the compiled pipeline uploaded, named by its hash."""
    compiled, _ = runplan.compile_workspace(ctx.config, ctx.workspace)
    make_engine(ctx.config, ctx.state_dir, ctx.workspace).upsert(ctx.config.kubeflow.pipeline_name, compiled)


def steps_write_their_files(kube: KubeEmulator, kfp: FakeKfpClient) -> None:
    """The pipeline's steps, as far as branchops can see them: metrics.json and a plot in the run's work
    dir on the model volume (the PVC the run was given, at the mount path branchops chose)."""

    def write(run) -> None:
        params = run.runtime_config.parameters
        work = Path(params["work_dir"]).relative_to("/mnt/models")
        folder = kube.volume_dir(NS, params["model_pvc"]) / work
        (folder / "plots").mkdir(parents=True)
        (folder / "metrics.json").write_text(json.dumps({**METRICS, "predicts": "turbulence"}))
        (folder / "plots" / "roc.png").write_bytes(PNG)

    kfp.on_run_succeeded = write


def put_raw_data(kube: KubeEmulator, ctx: StageContext) -> None:
    from branchops.storage import make_storage

    make_storage(ctx.config, ctx.state_dir).ensure_volume("djia-data")
    raw = kube.volume_dir(NS, "djia-data") / "raw"
    raw.mkdir(parents=True)
    (raw / "AAPL_2006-01-01_to_2018-01-01.csv").write_text("Date,Open,High,Low,Close,Volume,Name\n")


def test_a_kubeflow_run_on_trident_volumes_reaches_snapshots_and_the_release_merge_request(
    tmp_path, repo, kube, kfp, registry, caplog
):
    ctx = context(repo, tmp_path, registry)
    upload_pipeline(ctx)
    put_raw_data(kube, ctx)
    steps_write_their_files(kube, kfp)
    caplog.set_level(logging.INFO, logger="test.training")

    result = training.run(ctx)

    assert result.outcome == "success", result.summary
    [experiment] = result.outputs["experiments"]
    assert {k: experiment["metrics"][k] for k in METRICS} == METRICS  # read off the model volume
    # the run's details, as the API returns them, hold the tasks' states and no metric values
    [run] = kfp.runs.values()
    assert {t.display_name: t.state for t in run.run_details.task_details} == {
        name: "SUCCEEDED" for name in ("consolidate", "validate", "features", "train", "evaluate", "export")
    }
    assert "0.64" not in json.dumps(run.to_dict(), default=str)
    assert run.service_account == "branchops-pipeline"
    snapshots = {name for (resource, _, name) in kube.objects if resource == "volumesnapshots"}
    assert {experiment["data"]["snapshot"], experiment["model"]["snapshot"]} == snapshots
    assert result.outputs["deploy_merge_request"]["created"] is True
    [release] = ctx.forge.list(target="deploy-model")
    assert "0.64" in release.body
    assert ctx.artifacts["aapl-turbulence/plots/roc.png"] == PNG
    assert json.loads(ctx.artifacts["aapl-turbulence/metrics.json"])["roc_auc"] == 0.64
    assert not [key for key in kube.objects if key[0] == "pods"]  # the reader pods were cleaned up
    # one reader pod each: raw/ listed, metrics.json read, the plots read
    assert len([body for body in kube.received if body["kind"] == "Pod"]) == 3
    # while the run was waited on, plain heartbeat lines said how long and where to look
    link = f"{KF_HOST}/#/runs/details/{run.run_id}"
    beats = [r.getMessage() for r in caplog.records if "elapsed" in r.getMessage()]
    assert beats and all(b.endswith(link) and "RUNNING" in b for b in beats), beats


KAGGLE = "szrlee/stock-time-series-20050101-to-20171231"
WITH_SECRET = "data: {source: kaggle, kaggle: {dataset: " + KAGGLE + ", secret: kaggle-api}}\n"
NEW_DATA_VOLUME = "storage: {data_volume: {policy: new, name: djia-data}}\n"


def test_a_data_volume_left_without_raw_data_is_downloaded_again_with_the_secret_bound(
    tmp_path, repo, kube, kfp, registry
):
    """A first download that failed (no credentials reached the pod) leaves the PVC behind: the next
    run must download again, because the raw data is missing, not because the volume is new."""
    ctx = context(repo, tmp_path, registry, WITH_SECRET + NEW_DATA_VOLUME)
    upload_pipeline(ctx)
    from branchops.storage import make_storage

    make_storage(ctx.config, ctx.state_dir).ensure_volume("djia-data")  # what the failed run left
    steps_write_their_files(kube, kfp)
    write_outputs = kfp.on_run_succeeded

    def download_then_write(run) -> None:  # the consolidate step downloads when asked to
        if run.runtime_config.parameters["kaggle_dataset"]:
            (kube.volume_dir(NS, "djia-data") / "raw").mkdir(exist_ok=True)
            (kube.volume_dir(NS, "djia-data") / "raw" / "AAPL.csv").write_text("Date,Close\n")
        write_outputs(run)

    kfp.on_run_succeeded = download_then_write
    assert training.run(ctx).outcome == "success"
    [first] = kfp.runs.values()
    assert first.runtime_config.parameters["kaggle_dataset"] == KAGGLE
    # the spec the run used binds the Secret named in config to the download step
    [version] = kfp.versions.values()
    bound = version.pipeline_spec["platform_spec"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert bound["exec-consolidate"]["secretAsEnv"][0]["secretName"] == "kaggle-api"

    # the raw data is there now: the next commit's run downloads nothing
    git(Path(repo.working_dir), "commit", "-q", "--allow-empty", "-m", "next")
    again = context(repo, tmp_path, registry, WITH_SECRET + NEW_DATA_VOLUME)
    assert training.run(again).outcome == "success"
    [second] = [r for r in kfp.runs.values() if r.run_id != first.run_id]
    assert second.runtime_config.parameters["kaggle_dataset"] == ""


def test_kaggle_data_on_kubeflow_without_a_secret_fails_before_any_run(tmp_path, repo, kube, kfp, registry):
    no_secret = "data: {source: kaggle, kaggle: {dataset: " + KAGGLE + "}}\n"
    ctx = context(repo, tmp_path, registry, no_secret + NEW_DATA_VOLUME)
    upload_pipeline(ctx)
    with pytest.raises(ConfigError, match=r"Kubernetes Secret.*data\.kaggle\.secret"):
        training.run(ctx)
    assert kfp.runs == {}


def test_kaggle_data_without_local_credentials_fails_before_any_run(tmp_path, repo, registry, monkeypatch):
    from branchops.storage.local import LocalStorage

    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "no-kaggle-json"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    ctx = context(repo, tmp_path, registry, "kubeflow: {backend: local}\n" + NEW_DATA_VOLUME)
    assert ctx.config.data.source == "kaggle"  # the reference project's, with {env: KAGGLE_USERNAME/KEY}
    with pytest.raises(ConfigError, match="no Kaggle credentials.*env KAGGLE_USERNAME: not set"):
        training.provide_data(ctx, LocalStorage(tmp_path / "volumes"))


def test_a_kaggle_json_where_the_download_step_looks_is_enough(tmp_path, repo, registry, monkeypatch):
    """~/.config/kaggle/kaggle.json is one of the places the consolidate step reads credentials from: the
    check before the run accepts it too."""
    from branchops.storage.local import LocalStorage

    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "no-kaggle-json"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home" / ".config" / "kaggle").mkdir(parents=True)
    (tmp_path / "home" / ".config" / "kaggle" / "kaggle.json").write_text('{"username": "u", "key": "k"}')
    ctx = context(repo, tmp_path, registry, "kubeflow: {backend: local}\n" + NEW_DATA_VOLUME)
    _, dataset, synthetic = training.provide_data(ctx, LocalStorage(tmp_path / "volumes"))
    assert (dataset, synthetic) == (ctx.config.data.kaggle.dataset, False)


def test_generated_data_on_a_pvc_is_reported_as_synthetic(tmp_path, repo, kube, kfp, registry):
    ctx = context(repo, tmp_path, registry)
    upload_pipeline(ctx)
    put_raw_data(kube, ctx)
    (kube.volume_dir(NS, "djia-data") / "raw" / training.SYNTHETIC_MARKER).write_text("generated\n")
    steps_write_their_files(kube, kfp)
    result = training.run(ctx)
    assert result.outcome == "success" and result.outputs["synthetic_data"] is True
    assert result.summary.startswith("SYNTHETIC DATA")
    assert "**SYNTHETIC DATA.**" in ctx.artifacts["report.md"].decode()


def test_credentials_kaggle_refuses_fail_the_download_step_before_any_training(
    tmp_path, repo, kube, kfp, registry
):
    """The Secret exists but Kaggle answers 401: the first step fails, no step after it runs, and the
    stage says which step failed and why; nothing is snapshotted and no release is proposed."""
    ctx = context(repo, tmp_path, registry, WITH_SECRET + NEW_DATA_VOLUME)
    upload_pipeline(ctx)
    refused = "ComponentError: Kaggle refused the credentials: 401 - Unauthorized"
    kfp.next_run_script = ["RUNNING", ("FAILED", "1 task failed")]
    kfp.failing_task, kfp.failing_task_error = "consolidate", refused

    result = training.run(ctx)

    assert result.outcome == "failed"
    assert f"at step consolidate ({refused})" in result.error
    [run] = kfp.runs.values()
    assert [t.display_name for t in run.run_details.task_details] == ["consolidate"]  # nothing trained
    assert not [key for key in kube.objects if key[0] == "volumesnapshots"]
    assert ctx.forge.list(target="deploy-model") == []
