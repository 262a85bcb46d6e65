"""A release whose TF Serving is older than the TensorFlow that exported it: a warning with the reason, or
refused when serving.kubernetes.refuse_older_image asks for it."""

from __future__ import annotations

import pytest

from branchops.serving.compat import check_serving_image, image_version


@pytest.mark.parametrize(
    ("image", "version"),
    [
        ("docker.io/tensorflow/serving:2.18.0", (2, 18, 0)),
        ("registry.local:5000/mirror/tensorflow/serving:2.21.1-gpu", (2, 21, 1)),
        ("tensorflow/serving:2.20", (2, 20, 0)),
        ("tensorflow/serving:2.19.0@sha256:" + "a" * 64, (2, 19, 0)),
        ("registry.local:5000/tensorflow/serving@sha256:" + "a" * 64, None),  # the port is no tag
        ("tensorflow/serving:nightly", None),
    ],
)
def test_the_tf_serving_release_is_read_from_the_image_tag(image, version):
    assert image_version(image) == version


def test_an_image_older_than_the_exporting_tensorflow_is_a_warning_with_the_reason():
    # No TF Serving newer than 2.18 is published while training exports with TensorFlow 2.21: refusing by
    # default would refuse every production release.
    verdict = check_serving_image("docker.io/tensorflow/serving:2.18.0", {"tensorflow_version": "2.21.0"})
    assert verdict.ok
    assert verdict.reason.startswith("warning: ")
    assert "TF Serving 2.18, older than the TensorFlow 2.21.0 that exported the model" in verdict.reason
    assert "2.21 or newer" in verdict.reason and "refuse_older_image" in verdict.reason


def test_an_older_image_is_refused_when_the_configuration_asks():
    refused = check_serving_image(
        "tensorflow/serving:2.18.0", {"tensorflow_version": "2.21.0"}, refuse_older=True
    )
    assert not refused.ok
    assert "older than the TensorFlow 2.21.0" in refused.reason and "refuse_older_image" in refused.reason
    assert check_serving_image("tensorflow/serving:2.21.0", {"tensorflow_version": "2.21.0"}, True).ok


def release_checks(**kubernetes):
    """The serving-image check of a Kubernetes release exported by TensorFlow 2.21 (no cluster needed)."""
    from pathlib import Path

    from branchops.config import STAGES, BranchopsConfig
    from branchops.serving.kubernetes_backend import KubernetesServing, _KubernetesTracks

    config = BranchopsConfig.model_validate(
        {
            "approvers": {s: ["lead"] for s in STAGES},
            "serving": {"backend": "kubernetes", "model_name": "djia", "kubernetes": kubernetes},
        }
    )
    tracks = _KubernetesTracks(KubernetesServing(config, Path("."), api=object()))
    return tracks.check_runtime({"tensorflow_version": "2.21.0"})


def test_the_default_configuration_deploys_with_the_warning_in_the_release_checks():
    from branchops.serving.base import DeployFailed

    check = release_checks()  # the default image, tensorflow/serving:2.18.0
    assert (check.name, check.ok) == ("serving image", True)
    assert check.detail.startswith("warning: ") and "older than the TensorFlow 2.21.0" in check.detail
    with pytest.raises(DeployFailed, match="older than the TensorFlow 2.21.0"):
        release_checks(refuse_older_image=True)


def test_a_serving_image_as_new_or_newer_passes_quietly():
    for image in ("tensorflow/serving:2.21.0", "tensorflow/serving:2.21.0-gpu", "tensorflow/serving:3.0.0"):
        assert check_serving_image(image, {"tensorflow_version": "2.21.3"}).ok
        assert check_serving_image(image, {"tensorflow_version": "2.21.3"}).reason == ""


def test_what_cannot_be_compared_is_allowed_and_said():
    no_version = check_serving_image("tensorflow/serving:2.18.0", {"model": "djia"})
    assert no_version.ok and "records no tensorflow_version" in no_version.reason
    untagged = check_serving_image("tensorflow/serving@sha256:" + "b" * 64, {"tensorflow_version": "2.21.0"})
    assert untagged.ok and "names no version" in untagged.reason
