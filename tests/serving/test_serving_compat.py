"""A release is refused when the configured TF Serving is older than the TensorFlow that exported it."""

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


def test_an_image_older_than_the_exporting_tensorflow_is_refused_with_the_reason():
    verdict = check_serving_image("docker.io/tensorflow/serving:2.18.0", {"tensorflow_version": "2.21.0"})
    assert not verdict.ok
    assert "TF Serving 2.18, older than the TensorFlow 2.21.0 that exported the model" in verdict.reason
    assert "2.21 or newer" in verdict.reason
    warned = check_serving_image(
        "tensorflow/serving:2.18.0", {"tensorflow_version": "2.21.0"}, allow_older=True
    )
    assert warned.ok and "older than" in warned.reason


def test_a_serving_image_as_new_or_newer_passes_quietly():
    for image in ("tensorflow/serving:2.21.0", "tensorflow/serving:2.21.0-gpu", "tensorflow/serving:3.0.0"):
        assert check_serving_image(image, {"tensorflow_version": "2.21.3"}).ok
        assert check_serving_image(image, {"tensorflow_version": "2.21.3"}).reason == ""


def test_what_cannot_be_compared_is_allowed_and_said():
    no_version = check_serving_image("tensorflow/serving:2.18.0", {"model": "djia"})
    assert no_version.ok and "records no tensorflow_version" in no_version.reason
    untagged = check_serving_image("tensorflow/serving@sha256:" + "b" * 64, {"tensorflow_version": "2.21.0"})
    assert untagged.ok and "names no version" in untagged.reason
