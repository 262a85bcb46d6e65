"""A local rollback to a version below the serving one is checked on the stable server itself.

TF Serving answers a request naming no version or label with the highest version it has loaded, so an
older version loaded beside the serving one gets only the requests that name it: the rollback needs no
canary server (and no second TensorFlow import). A newer version still goes to the canary server, which
test_rollout.py's StableWatcher tests hold."""

from __future__ import annotations

import pytest

from branchops.serving import make_serving
from branchops.serving.client import metric_sum
from branchops.serving.local_backend import LocalServing
from branchops.serving.release import Release
from branchops.serving.rollout import Rollout
from tests.serving.conftest import make_config
from tests.serving.model_factory import SAMPLE


def release(version: int) -> Release:
    return Release.model_validate(
        {"model": "djia", "version": version, "source": {"volume": "m", "path": f"djia/{version}"}}
    )


@pytest.fixture
def serving_v2(models, tmp_path):
    """The test's own server: version 1 deployed, then version 2 (1 retired, its directory kept)."""
    serving = make_serving(make_config(tmp_path / "models"), tmp_path / "state")
    assert isinstance(serving, LocalServing)
    serving.start(port=0)
    try:
        assert serving.deploy(release(1), models["v1"]).ok
        assert serving.deploy(release(2), models["v2"]).ok
        yield serving
    finally:
        serving.stop()


def answered_by(client, requests_sent: int) -> dict[str, float]:
    """Which version answered ``requests_sent`` unlabelled :predict requests (the server's own counts)."""
    before = client.metrics()
    for _ in range(requests_sent):
        client.predict(instances=[SAMPLE[0]])
    after = client.metrics()
    return {
        v: metric_sum(after, "branchops_serving_requests_total", version=v, api="predict")
        - metric_sum(before, "branchops_serving_requests_total", version=v, api="predict")
        for v in ("1", "2")
    }


@pytest.mark.parametrize("passes", [True, False])
def test_a_rollback_is_checked_on_the_stable_server_where_unlabelled_requests_do_not_reach_it(
    serving_v2, monkeypatch, passes
):
    serving = serving_v2
    client = serving.client()
    seen: dict[str, object] = {}
    check_serving_sample = Rollout._smoke_serving_sample

    def while_version_1_is_under_check(rollout, canary, version, before, serving_meta):
        # The version under check, loaded and not yet labelled: where is it, and who gets unlabelled traffic?
        seen["stable_versions"] = {v: s["state"] for v, s in client.health()["versions"].items()}
        seen["canary_running"] = serving._canary_track()._running_info() is not None
        seen["unlabelled"] = answered_by(client, 10)
        if not passes:
            from branchops.serving.base import DeployFailed

            raise DeployFailed("smoke (serving sample)", "refused by the test")
        return check_serving_sample(rollout, canary, version, before, serving_meta)

    monkeypatch.setattr(Rollout, "_smoke_serving_sample", while_version_1_is_under_check)
    result = serving.rollback_to(1)

    assert seen["stable_versions"].get("1") == "AVAILABLE"  # checked in place
    assert seen["canary_running"] is False  # no second server started
    assert seen["unlabelled"] == {"1": 0, "2": 10}  # the serving version kept the unlabelled traffic
    if passes:
        assert result.ok and serving.live_version() == 1, result.reason
        load = next(c for c in result.checks if c.name == "load")
        assert load.detail.startswith("version 1 AVAILABLE on the serving server, below version 2")
        assert answered_by(client, 5) == {"1": 5, "2": 0}  # 2 retired once 1 took over
    else:
        assert result.outcome == "rolled_back" and serving.live_version() == 2
        versions = client.health()["versions"]
        assert versions["1"]["state"] == "END" and versions["2"]["state"] == "AVAILABLE"
        assert answered_by(client, 5) == {"1": 0, "2": 5}
        assert (serving.base_path / "1").is_dir()  # still there for the next rollback
