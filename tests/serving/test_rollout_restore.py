"""What a rollout reports when putting back the previous state fails too (no server needed)."""

from __future__ import annotations

from branchops.config import RolloutSection
from branchops.errors import ExternalError
from branchops.serving.base import DeployFailed
from branchops.serving.release import Release
from branchops.serving.rollout import Rollout, RolloutBackend


class _FailingRestore(RolloutBackend):
    """Version 1 serves; installing version 2 fails, and so does restoring version 1."""

    def stable_version(self):
        return 1

    def install(self, release, source):
        raise DeployFailed("copy", "the volume is full")

    def restore(self, previous, failed):
        raise ExternalError("the API server is unreachable")

    def _unused(self, *args, **kwargs):
        raise AssertionError("not reached")

    stable_client = export_metadata = serving_metadata = start_canary = _unused
    set_canary_weight = traffic = switch_stable = label_version = stop_canary = retire = _unused


def test_a_failed_restore_is_in_the_reason_not_only_in_the_checks():
    rollout = RolloutSection()
    release = Release.model_validate(
        {"model": "djia", "version": 2, "source": {"volume": "djia-models", "path": "djia/2"}}
    )
    result = Rollout(_FailingRestore(), "djia", rollout).deploy(release, None, "rolling")
    assert result.outcome == "rolled_back" and not result.ok
    assert result.reason.startswith("copy failed: the volume is full"), result.reason
    assert "restoring version 1 failed too" in result.reason
    assert "the API server is unreachable" in result.reason
    assert [c.name for c in result.checks if not c.ok] == ["copy", "restore"]
