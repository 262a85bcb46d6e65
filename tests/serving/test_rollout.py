"""Local rollouts against a real server process: no dropped request, automatic rollback, canary.

Every test has a server of its own (a fresh process, state and model directory) and deploys what it
starts from itself; only the read-only SavedModels are shared (built once per session)."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import pytest

from branchops.serving import make_serving
from branchops.serving.base import PROBE_REQUEST_ID, SMOKE_REQUEST_ID
from branchops.serving.client import metric_sum
from branchops.serving.local_backend import LocalServing
from branchops.serving.release import Release
from tests.serving.conftest import make_config
from tests.serving.helpers import RequestLoop
from tests.serving.model_factory import SAMPLE

TOOLKIT_IDS = {PROBE_REQUEST_ID, SMOKE_REQUEST_ID}


def release(version: int, strategy: str | None = None) -> Release:
    data = {
        "model": "djia",
        "version": version,
        "source": {"volume": "djia-models", "path": f"djia/{version}"},
    }
    if strategy:
        data["strategy"] = strategy
    return Release.model_validate(data)


def sample_predictions(model_dir: Path) -> dict:
    return json.loads((model_dir / "assets.extra" / "branchops_model.json").read_text())["sample"][
        "predictions"
    ]


@pytest.fixture
def env(tmp_path):
    """A running server of this test's own, with nothing deployed yet."""
    root = tmp_path / "rollout"
    config = make_config(root / "models", canary_steps=[10, 50, 100])
    serving = make_serving(config, root / "state")
    assert isinstance(serving, LocalServing)
    serving.start(port=0)
    try:
        yield {"root": root, "config": config, "serving": serving}
    finally:
        serving.stop()


@pytest.fixture
def serving_v1(env, models):
    """The test's own server with version 1 deployed and answering as stable."""
    serving = env["serving"]
    result = serving.deploy(release(1), models["v1"])
    assert (result.outcome, result.after) == ("deployed", 1), result.reason
    return env


def test_first_deploy_then_rolling_update_drops_no_request(env, models):
    serving = env["serving"]
    first = serving.deploy(release(1), models["v1"])
    assert (first.outcome, first.before, first.after) == ("deployed", None, 1)
    client = serving.client()
    before = client.metrics()
    with RequestLoop(client.model_url() + ":predict") as loop:
        answered_before = loop.answered
        result = serving.deploy(release(2), models["v2"])
        answered_during_rollout = loop.answered - answered_before
    assert result.outcome == "deployed", result.reason
    assert (result.before, result.after, result.strategy) == (1, 2, "rolling")
    assert loop.failures == []
    assert answered_during_rollout >= 5
    status = serving.status()
    assert status.stable == 2 and status.versions[1] == "END" and status.versions[2] == "AVAILABLE"
    assert {c.name for c in result.checks} >= {"load", "signature", "smoke", "live"}
    after = client.metrics()
    # The loop's requests were answered by the old version, then by the new one.
    for version in ("1", "2"):
        served = metric_sum(
            after, "branchops_serving_requests_total", version=version, code="200"
        ) - metric_sum(before, "branchops_serving_requests_total", version=version, code="200")
        assert served > 0, version
    assert (
        client.predict(instances=SAMPLE)["predictions"][0]["direction"]
        == sample_predictions(models["v2"])["direction"][0]
    )


@pytest.mark.parametrize(
    "broken, version, check",
    [
        ("corrupt", 6, "load failed"),
        # Its inputs are not what the serving version's clients send: refused before it is loaded.
        ("wrong_signature", 7, "contract failed"),
        ("mismatch", 8, "smoke failed"),
    ],
)
def test_broken_version_is_rolled_back_while_the_old_one_keeps_answering(
    serving_v1, models, broken, version, check
):
    serving = serving_v1["serving"]
    live = serving.live_version()
    assert live == 1
    client = serving.client()
    with RequestLoop(client.model_url() + ":predict") as loop:
        result = serving.deploy(release(version), models[broken])
    assert result.outcome == "rolled_back" and not result.ok
    assert result.reason.startswith(check), result.reason
    assert (result.before, result.after) == (live, live)
    assert loop.failures == []
    status = serving.status()
    assert status.stable == live and status.canary is None
    assert status.versions.get(version) != "AVAILABLE"
    assert not (serving.base_path / str(version)).exists()  # a restart will not load it
    assert client.status(label="stable")[0]["state"] == "AVAILABLE"
    assert client.predict(instances=SAMPLE)["predictions"]


def test_canary_steps_through_weights_then_promotes(serving_v1, models):
    serving = serving_v1["serving"]
    live = serving.live_version()
    client = serving.client()
    with RequestLoop(client.model_url() + ":predict") as loop:
        result = serving.deploy(release(3, "canary"), models["v3"])
    assert result.outcome == "deployed", result.reason
    assert [s["weight"] for s in result.canary_steps] == [10, 50]
    assert all(s["ok"] and s["errors"] == 0 and s["requests"] >= 10 for s in result.canary_steps)
    # Each step lasts its configured minimum (conftest: 0.5 s), however fast the probes are answered.
    assert all(s["seconds"] >= 0.5 for s in result.canary_steps)
    assert all(s["stable_client_error_rate"] == 0 for s in result.canary_steps)
    assert (result.before, result.after) == (live, 3)
    assert loop.failures == []
    status = serving.status()
    assert (status.stable, status.canary, status.canary_weight) == (3, None, 0)
    # the probes the stable server answered are logged under the rollout's own id, which monitor leaves
    # out of the traffic (the request loop's requests carry none)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        ids = [
            json.loads(line).get("request_id")
            for content in serving.read_prediction_log().values()
            for line in content.decode().splitlines()
        ]
        if ids.count(PROBE_REQUEST_ID) >= sum(s["requests"] for s in result.canary_steps):
            break
        time.sleep(0.2)
    assert ids.count(PROBE_REQUEST_ID) >= sum(s["requests"] for s in result.canary_steps)
    assert None in ids and not [i for i in ids if i and i.startswith("branchops/") and i not in TOOLKIT_IDS]


class StableWatcher:
    """Records every version the stable server was asked to load while a rollout runs (in any state: one
    that failed to load stays listed, as END). TF Serving answers a request without version or label
    with the highest version it has loaded, so any version loaded there is one ordinary clients can get."""

    def __init__(self, serving: LocalServing) -> None:
        self.client = serving.client()
        self.seen: set[int] = set()
        self._stop = threading.Event()

    def __enter__(self) -> StableWatcher:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            versions = self.client.health()["versions"]
            self.seen |= {int(v) for v in versions}
            time.sleep(0.02)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)


@pytest.mark.parametrize("broken, version", [("mismatch", 8), ("corrupt", 6)])
def test_an_unchecked_version_is_never_loaded_where_ordinary_clients_are_served(
    serving_v1, models, broken, version
):
    serving = serving_v1["serving"]
    with StableWatcher(serving) as watcher:
        result = serving.deploy(release(version, "canary"), models[broken])
    assert result.outcome == "rolled_back", result.reason
    assert watcher.seen == {1}, f"the stable server held {watcher.seen} during the rollout"
    assert not serving._canary_track().status().running  # the canary track is gone with it


@pytest.mark.parametrize("wide", ["wide", "wide_unrecorded"])
def test_a_release_that_breaks_the_serving_versions_clients_is_refused_before_it_loads(
    serving_v1, models, wide
):
    serving = serving_v1["serving"]
    with StableWatcher(serving) as watcher:
        result = serving.deploy(release(4, "canary"), models[wide])
    assert result.outcome == "rolled_back"
    assert result.reason.startswith("contract failed"), result.reason
    assert "'lagged_returns' has shape [-1, 8], clients send [-1, 4]" in result.reason
    assert "breaking_change" in result.reason  # says how to release it on purpose
    assert watcher.seen == {1} and serving.live_version() == 1
    if wide == "wide":  # its recorded contract refuses it before any server loads it
        assert [c.name for c in result.checks] == ["copy", "contract"]
    assert result.canary_steps == []


def test_a_declared_breaking_change_goes_through(serving_v1, models):
    serving = serving_v1["serving"]
    declared = release(4).model_copy(update={"breaking_change": "10-day window: 310 inputs"})
    result = serving.deploy(declared, models["wide"])
    assert result.outcome == "deployed", result.reason
    contract = next(c for c in result.checks if c.name == "contract")
    assert "breaking change declared" in contract.detail and "10-day window" in contract.detail
    assert serving.live_version() == 4


def test_the_new_version_must_answer_what_clients_send_now(serving_v1, models):
    # Its contract admits 4-feature rows and its own sample passes; the serving version's sample does not.
    serving = serving_v1["serving"]
    with StableWatcher(serving) as watcher:
        result = serving.deploy(release(5), models["any_width"])
    assert result.outcome == "rolled_back"
    assert result.reason.startswith("smoke (serving sample) failed"), result.reason
    assert "sample of version 1" in result.reason
    assert watcher.seen == {1} and serving.live_version() == 1


def test_canary_that_breaches_latency_is_rolled_back(serving_v1, models):
    # The same server, driven with a latency budget no request can meet.
    root = serving_v1["root"]
    strict = LocalServing(
        make_config(root / "models", canary_steps=[20, 100], max_p99_latency_ms=0.001), root / "state"
    )
    live = strict.live_version()
    assert live == 1
    result = strict.deploy(release(2, "canary"), models["v2"])
    assert result.outcome == "rolled_back"
    assert result.reason.startswith("canary failed: at 20%")
    assert [s["ok"] for s in result.canary_steps] == [False]
    status = strict.status()
    assert (status.stable, status.canary, status.canary_weight) == (live, None, 0)


def test_same_release_again_is_a_no_op(serving_v1, models):
    serving = serving_v1["serving"]
    live = serving.live_version()
    # Another model directory: the live version is not even looked at again.
    result = serving.deploy(release(live), models["v3"])
    assert result.outcome == "unchanged" and result.after == live
    assert [c.ok for c in result.checks] == [True]


def test_rollback_to_a_previous_version(serving_v1, models):
    serving = serving_v1["serving"]
    assert serving.deploy(release(2), models["v2"]).after == 2
    result = serving.rollback_to(1)
    assert result.outcome == "deployed" and result.after == 1
    assert serving.status().stable == 1
    missing = serving.rollback_to(99)
    assert missing.outcome == "rolled_back" and "99" in missing.reason
    assert serving.status().stable == 1


def test_restart_restores_the_live_version_and_stale_pid_is_cleaned(serving_v1):
    serving = serving_v1["serving"]
    live = serving.live_version()
    assert serving.stop() is True
    assert serving.status().running is False and serving.live_version() == live
    serving.info_file.write_text(json.dumps({"pid": 2**22 + 12345, "host": "127.0.0.1", "port": 1}))
    assert serving.status().running is False
    assert not serving.info_file.exists()
    status = serving.start(port=0)
    assert status.running and status.stable == live and status.versions[live] == "AVAILABLE"
    assert serving.client().predict(instances=SAMPLE)["predictions"]
    assert serving.stop() is True and serving.stop() is False


def test_deploy_model_stage_makes_serving_match_the_release(serving_v1, models, tmp_path):
    from branchops.serving.release import write_release
    from branchops.stages import deploy_model
    from branchops.stages.base import StageContext
    from branchops.storage import make_storage

    env = serving_v1
    config = env["config"]
    state_dir = env["root"] / "state"
    volume = make_storage(config, state_dir).ensure_volume("djia-models")
    for key, version in (("v2", 2), ("v3", 3), ("mismatch", 8)):
        target = Path(volume.path) / "djia" / str(version)
        if not target.exists():
            shutil.copytree(models[key], target)
    workspace = tmp_path / "checkout"

    def context() -> StageContext:
        return StageContext(
            stage="deploy-model",
            branch="deploy-model",
            workspace=workspace,
            git_dir=workspace,
            state_dir=state_dir,
            config=config,
            source_commit="a" * 40,
            run_id="r1",
            record_dir="records/r1",
            merge_request=None,
            forge=None,
            notifier=None,
        )

    assert deploy_model.plan(context()) == [
        "no release file at serving/tfserve/release.yaml yet: nothing to deploy"
    ]
    write_release(workspace / config.serving.release_file, release(2))
    live = env["serving"].live_version()
    assert live == 1
    assert any(f"live version {live} -> desired 2" in line for line in deploy_model.plan(context()))

    result = deploy_model.run(context())
    assert result.outcome == "success", result.error
    deployment = result.outputs["deployment"]
    assert (deployment["before"], deployment["after"], deployment["outcome"]) == (live, 2, "deployed")
    assert result.outputs["release"]["version"] == 2 and "load" in deployment["timings"]
    assert deploy_model.plan(context()) == [
        "local serving of model 'djia': version 2 is already live; nothing to do"
    ]
    assert deploy_model.run(context()).outputs["deployment"]["outcome"] == "unchanged"

    write_release(workspace / config.serving.release_file, release(8))
    failed = deploy_model.run(context())
    assert failed.outcome == "failed" and "smoke failed" in failed.error
    assert failed.outputs["deployment"]["after"] == 2 and env["serving"].live_version() == 2

    # Roll forward to 3, then "revert the merge": the release names 2 again and the stage goes back.
    write_release(workspace / config.serving.release_file, release(3))
    assert deploy_model.run(context()).outputs["deployment"]["after"] == 3
    write_release(workspace / config.serving.release_file, release(2))
    reverted = deploy_model.run(context())
    assert reverted.outcome == "success"
    assert (reverted.outputs["deployment"]["before"], reverted.outputs["deployment"]["after"]) == (3, 2)
    assert (
        env["serving"].client().predict(instances=SAMPLE)["predictions"][0]["direction"]
        == sample_predictions(models["v2"])["direction"][0]
    )


def test_an_interrupted_rollout_leaves_no_canary_and_restores_the_stable_track(
    serving_v1, models, monkeypatch
):
    # Ctrl-C while the new version is loaded on the canary track, before the stable track moves.
    from branchops.serving.rollout import Rollout

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Rollout, "_smoke_serving_sample", interrupted)
    serving = serving_v1["serving"]
    with pytest.raises(KeyboardInterrupt):
        serving.deploy(release(2), models["v2"])
    assert serving._canary_track()._running_info() is None  # no canary server process left behind
    status = serving.status()
    assert (status.stable, status.canary) == (1, None)
    assert status.versions.get(2) != "AVAILABLE"
    assert not (serving.base_path / "2").exists()  # a restart will not load it
    assert serving.client().predict(instances=SAMPLE)["predictions"]


def test_a_failed_rollback_keeps_the_older_versions_directory(serving_v1, models, monkeypatch):
    # A rollback reuses the directory already in the base path: a failed check must not take it away.
    from branchops.serving.base import DeployFailed
    from branchops.serving.rollout import Rollout

    serving = serving_v1["serving"]
    assert serving.deploy(release(2), models["v2"]).ok

    def refused(*args, **kwargs):
        raise DeployFailed("smoke (serving sample)", "refused by the test")

    monkeypatch.setattr(Rollout, "_smoke_serving_sample", refused)
    result = serving.rollback_to(1)
    assert result.outcome == "rolled_back" and serving.live_version() == 2
    assert (serving.base_path / "1").is_dir()
    monkeypatch.undo()
    assert serving.rollback_to(1).ok and serving.live_version() == 1
