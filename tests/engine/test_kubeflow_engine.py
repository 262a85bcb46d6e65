"""The Kubeflow engine's logic against a fake of kfp.Client's v2beta1 APIs (tests/engine/fake_kfp.py).

No Kubeflow Pipelines server can run here: these are not integration tests. The fake follows the API's
documented behaviour (UUID ids, list filters, version names unique per pipeline with 409, run states).
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import urllib3
from kfp_server_api import V2beta1Pipeline, V2beta1PipelineVersionReference, V2beta1Run

from branchops.config import KubeflowRemote, SecretRef
from branchops.engine.compile import compile_pipeline
from branchops.engine.kubeflow import KubeflowEngine
from branchops.errors import ConfigError, ExternalError

from .conftest import TINY_PIPELINE, write_tiny_workspace
from .fake_kfp import FakeKfpClient, FakeKfpClientView


def settings(**overrides) -> KubeflowRemote:
    values = {"host": "https://kubeflow.example.test/pipeline", "auth": "none", "retries": 3, "timeout_s": 5}
    values.update(overrides)
    return KubeflowRemote(**values)


def engine_with(fake: FakeKfpClient, **overrides) -> KubeflowEngine:
    return KubeflowEngine(
        settings(**overrides),
        client_factory=lambda _s: FakeKfpClientView(fake),
        poll_interval_s=0,
        backoff_s=0,
    )


@pytest.fixture
def compiled(tiny_workspace: Path):
    return compile_pipeline(tiny_workspace, "pipelines/tiny.py")


def is_uuid(value: str) -> bool:
    return str(uuid.UUID(value)) == value


def test_a_new_pipeline_gets_its_first_version_named_by_the_spec_hash(compiled):
    fake = FakeKfpClient()
    upload = engine_with(fake).upsert("djia-sentiment", compiled, "source commit abc")
    assert upload.created and is_uuid(upload.pipeline_id) and is_uuid(upload.version_id)
    versions = [v for v in fake.versions.values() if v.pipeline_id == upload.pipeline_id]
    assert [v.name for v in versions] == [compiled.spec_hash]  # no version named after the pipeline
    assert versions[0].description == "source commit abc"
    assert fake.uploaded_specs == [compiled.spec]


def test_the_same_spec_twice_is_not_uploaded_again(compiled):
    fake = FakeKfpClient()
    engine = engine_with(fake)
    first = engine.upsert("djia-sentiment", compiled, "c1")
    second = engine.upsert("djia-sentiment", compiled, "c2")
    assert not second.created and (second.pipeline_id, second.version_id) == (
        first.pipeline_id,
        first.version_id,
    )
    assert fake.count("upload_pipeline_version") == 1 and fake.count("create_pipeline") == 1
    assert engine.find_version("djia-sentiment", compiled.spec_hash) == second
    assert engine.find_version("djia-sentiment", "f" * 64) is None
    assert engine.find_version("other", compiled.spec_hash) is None


def test_a_changed_spec_is_a_new_version_of_the_existing_pipeline(tiny_workspace: Path, compiled):
    fake = FakeKfpClient()
    engine = engine_with(fake)
    first = engine.upsert("djia-sentiment", compiled)
    write_tiny_workspace(tiny_workspace, TINY_PIPELINE.replace("count: int = 4", "count: int = 5"))
    changed = compile_pipeline(tiny_workspace, "pipelines/tiny.py")
    second = engine.upsert("djia-sentiment", changed)
    assert (
        second.created and second.pipeline_id == first.pipeline_id and second.version_id != first.version_id
    )
    assert len(fake.pipelines) == 1 and len(fake.versions) == 2


def test_a_version_uploaded_concurrently_is_found_after_the_409(compiled, tmp_path: Path):
    fake = FakeKfpClient()
    engine = engine_with(fake)
    pipeline = fake.pipelines_api.pipeline_service_create_pipeline(
        V2beta1Pipeline(name="djia-sentiment", display_name="djia-sentiment")
    )

    def someone_else_uploads_first():
        path = tmp_path / "p.yaml"
        path.write_bytes(compiled.spec)
        fake.pipeline_uploads.upload_pipeline_version(
            str(path), name=compiled.spec_hash, pipelineid=pipeline.pipeline_id
        )

    # Between our lookup and our upload, another stage uploads the same spec: the server answers 409.
    fake.fail_next("upload_pipeline_version", someone_else_uploads_first)
    upload = engine.upsert("djia-sentiment", compiled)
    assert not upload.created and len(fake.versions) == 1
    assert upload.version_id == next(iter(fake.versions.values())).pipeline_version_id


def test_transient_errors_are_retried(compiled):
    fake = FakeKfpClient()
    fake.fail_next(
        "list_pipelines", 503, urllib3.exceptions.ReadTimeoutError(None, None, "Read timed out."), 502
    )
    upload = engine_with(fake).upsert("djia-sentiment", compiled)
    assert upload.created and fake.count("list_pipelines") == 4
    assert all(kwargs["_request_timeout"] == 5 for name, kwargs in fake.calls if name == "list_pipelines")


def test_a_server_that_keeps_failing_gives_a_clear_error_after_the_configured_retries(compiled):
    fake = FakeKfpClient()
    fake.fail_next("upload_pipeline_version", *[503] * 10)
    with pytest.raises(ExternalError) as info:
        engine_with(fake, retries=2).upsert("djia-sentiment", compiled)
    message = str(info.value)
    assert "https://kubeflow.example.test/pipeline" in message and "uploading version" in message
    assert "after 3 attempts" in message and "injected HTTP 503" in message
    assert fake.count("upload_pipeline_version") == 3


def test_an_auth_failure_is_not_retried_and_says_what_to_check(compiled):
    fake = FakeKfpClient()
    fake.fail_next("list_pipelines", 401)
    with pytest.raises(
        ExternalError, match=r"refused looking up pipeline djia-sentiment: HTTP 401.*auth \('none'\)"
    ):
        engine_with(fake).upsert("djia-sentiment", compiled)
    assert fake.count("list_pipelines") == 1


def test_a_connection_failure_when_connecting_is_an_external_error():
    def unreachable(_settings):
        raise urllib3.exceptions.MaxRetryError(None, "/apis/v2beta1/healthz", "Connection refused")

    engine = KubeflowEngine(settings(retries=1), client_factory=unreachable, backoff_s=0)
    with pytest.raises(ExternalError, match="connecting failed after 2 attempts"):
        engine.find_version("djia-sentiment", "a" * 64)


def test_a_run_creates_the_branch_experiment_and_waits_for_success(compiled):
    fake = FakeKfpClient()
    engine = engine_with(fake, namespace="team-a")
    upload = engine.upsert("djia-sentiment", compiled)
    messages: list[str] = []
    result = engine.run(
        "training", upload, "abc1234-baseline", {"out_dir": "/mnt/models/x"}, 60, messages.append
    )
    assert (
        result.state == "SUCCEEDED" and result.error is None and not result.reused and is_uuid(result.run_id)
    )
    [experiment] = fake.experiments.values()
    assert experiment.display_name == "training" and experiment.namespace == "team-a"
    run = fake.runs[result.run_id]
    assert run.pipeline_version_reference.pipeline_version_id == upload.version_id
    assert run.runtime_config.parameters == {"out_dir": "/mnt/models/x"}
    assert any("RUNNING" in m for m in messages) and any("SUCCEEDED" in m for m in messages)


def test_a_run_runs_as_the_pipeline_service_account_and_returns_its_tasks_states(compiled):
    fake = FakeKfpClient()
    upload = engine_with(fake).upsert("djia-sentiment", compiled)
    result = engine_with(fake).run("training", upload, "r-default", {"out_dir": "/o"}, 60)
    # the account jenkins/rbac/pipeline.yaml creates, unless config names another
    assert fake.runs[result.run_id].service_account == "branchops-pipeline"
    other = engine_with(fake, service_account="ml-runner").run(
        "training", upload, "r-other", {"out_dir": "/o"}, 60
    )
    assert fake.runs[other.run_id].service_account == "ml-runner"
    # the API's run details say which task ended how, and nothing of what the tasks returned
    assert result.outputs == {"tasks": {"consume": "SUCCEEDED", "produce": "SUCCEEDED"}}


class FakeClock:
    """Time that passes only when the engine sleeps between polls."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_a_run_waited_on_says_every_heartbeat_how_long_and_where_to_see_it(compiled):
    fake = FakeKfpClient()
    fake.next_run_script = ["RUNNING"] * 9 + ["SUCCEEDED"]  # ten polls, 10 s apart
    clock = FakeClock()
    engine = KubeflowEngine(
        settings(heartbeat_s=30),
        client_factory=lambda _s: FakeKfpClientView(fake),
        poll_interval_s=10,
        backoff_s=0,
        clock=clock,
        sleep=clock.sleep,
    )
    upload = engine.upsert("djia-sentiment", compiled)
    messages: list[str] = []
    result = engine.run("training", upload, "r-long", {"out_dir": "/o"}, 3600, messages.append)
    link = f"https://kubeflow.example.test/pipeline/#/runs/details/{result.run_id}"
    assert messages[0].endswith(link)  # the link as soon as the run exists
    beats = [m for m in messages if "elapsed" in m]
    assert beats == [f"run r-long: RUNNING, {t} elapsed; {link}" for t in ("30s", "1m00s", "1m30s")]
    assert all("\r" not in m and "\n" not in m for m in messages)  # plain lines, never a redrawn bar

    # behind the central dashboard the UI is elsewhere than the API
    fake.next_run_script = ["RUNNING"] * 4 + ["SUCCEEDED"]
    engine.settings = settings(heartbeat_s=30, ui_url="https://kubeflow.example.test/_/pipeline/")
    messages.clear()
    other = engine.run("training", upload, "r-dash", {"out_dir": "/o"}, 3600, messages.append)
    assert f"https://kubeflow.example.test/_/pipeline/#/runs/details/{other.run_id}" in messages[-2]


def test_a_run_with_the_same_name_is_not_started_twice(compiled):
    fake = FakeKfpClient()
    engine = engine_with(fake)
    upload = engine.upsert("djia-sentiment", compiled)
    first = engine.run("training", upload, "abc1234-baseline", {"out_dir": "/o"}, 60)
    again = engine.run("training", upload, "abc1234-baseline", {"out_dir": "/o"}, 60)
    assert again.reused and again.run_id == first.run_id and again.state == "SUCCEEDED"
    assert fake.count("create_run") == 1 and fake.count("create_experiment") == 1


def test_a_create_whose_answer_was_lost_does_not_start_a_second_run(compiled):
    fake = FakeKfpClient()
    engine = engine_with(fake)
    upload = engine.upsert("djia-sentiment", compiled)

    def created_but_timed_out():
        # The server starts the run, but its answer never arrives.
        fake.runs_api.run_service_create_run(
            V2beta1Run(
                display_name="abc1234-baseline",
                experiment_id=next(iter(fake.experiments)),
                pipeline_version_reference=V2beta1PipelineVersionReference(
                    pipeline_id=upload.pipeline_id, pipeline_version_id=upload.version_id
                ),
            )
        )
        raise urllib3.exceptions.ReadTimeoutError(None, None, "Read timed out.")

    fake.fail_next("create_run", created_but_timed_out)
    result = engine.run("training", upload, "abc1234-baseline", {"out_dir": "/o"}, 60)
    assert result.state == "SUCCEEDED" and len(fake.runs) == 1


def test_a_failed_run_reports_the_servers_error_and_the_step_that_failed(compiled):
    fake = FakeKfpClient()
    fake.next_run_script = ["RUNNING", ("FAILED", "1 task failed")]
    fake.failing_task, fake.failing_task_error = "produce", "ValueError: asked to fail (count=4)"
    engine = engine_with(fake)
    upload = engine.upsert("djia-sentiment", compiled)
    result = engine.run("training", upload, "r1", {"out_dir": "/o"}, 60)
    assert result.state == "FAILED"
    assert result.error == (
        "run r1 ended FAILED at step produce (ValueError: asked to fail (count=4)): 1 task failed"
    )
    assert result.outputs["tasks"] == {"produce": "FAILED"}  # consume never started


def test_a_run_past_its_timeout_is_terminated_and_reported(compiled):
    fake = FakeKfpClient()
    fake.next_run_script = ["RUNNING"] * 100_000
    engine = engine_with(fake)
    upload = engine.upsert("djia-sentiment", compiled)
    result = engine.run("training", upload, "r-slow", {"out_dir": "/o"}, 0)
    assert result.state == "TIMEOUT" and "did not finish within 0 s" in result.error
    assert fake.count("terminate_run") == 1 and fake.runs[result.run_id].state == "CANCELING"


def test_polling_survives_transient_errors(compiled):
    fake = FakeKfpClient()
    engine = engine_with(fake)
    upload = engine.upsert("djia-sentiment", compiled)
    fake.fail_next("get_run", 503, urllib3.exceptions.ProtocolError("Connection aborted."))
    assert engine.run("training", upload, "r2", {"out_dir": "/o"}, 60).state == "SUCCEEDED"


def test_parameters_are_validated_against_the_uploaded_spec_before_a_run(compiled):
    fake = FakeKfpClient()
    engine = engine_with(fake)
    upload = engine.upsert("djia-sentiment", compiled)
    with pytest.raises(ConfigError, match="learning_rat: not a parameter"):
        engine.run("training", upload, "r3", {"out_dir": "/o", "learning_rat": 0.1}, 60)
    assert fake.count("create_run") == 0


def test_multi_user_experiments_live_in_the_configured_namespace(compiled):
    fake = FakeKfpClient(multi_user=True)
    engine = engine_with(fake, namespace="team-a")
    upload = engine.upsert("djia-sentiment", compiled)
    assert engine.run("training", upload, "r4", {"out_dir": "/o"}, 60).succeeded
    assert {e.namespace for e in fake.experiments.values()} == {"team-a"}
    assert all(kw.get("namespace") == "team-a" for name, kw in fake.calls if name == "list_experiments")
    # Without a namespace, the multi-user server refuses to create the experiment: a clear error.
    with pytest.raises(ExternalError, match="HTTP 400.*namespace must be specified"):
        engine_with(fake).run("other-branch", upload, "r5", {"out_dir": "/o"}, 60)


def test_a_missing_token_is_a_config_error_naming_the_variable(monkeypatch):
    monkeypatch.delenv("KFP_TOKEN_FOR_TEST", raising=False)
    engine = KubeflowEngine(settings(auth="bearer", token=SecretRef(env="KFP_TOKEN_FOR_TEST")))
    with pytest.raises(ConfigError, match="env KFP_TOKEN_FOR_TEST: not set"):
        engine.find_version("djia-sentiment", "a" * 64)
