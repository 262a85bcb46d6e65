"""Can the configured TensorFlow Serving load what training exported?

TensorFlow Serving X.Y is built on TensorFlow X.Y and knows that release's ops and SavedModel features: a
model exported by a newer TensorFlow may use an op the server has not registered and fail to load ("Op
type not registered"), on every replica, in the middle of a rollout. The export component records the
exporting TensorFlow's version in the model's metadata (``tensorflow_version``); :func:`check_serving_image`
compares it with the version in the configured image's tag before anything is loaded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_IMAGE_VERSION = re.compile(
    r":(?P<major>\d+)\.(?P<minor>\d+)(?:\.(?P<patch>\d+))?(?:-[A-Za-z0-9._-]+)?(?:@|$)"
)
_TF_VERSION = re.compile(r"^(?P<major>\d+)\.(?P<minor>\d+)(?:\.(?P<patch>\d+))?")


@dataclass(frozen=True)
class ServingCompatibility:
    ok: bool  # False: refuse the release
    reason: str  # why, for the release's result and the log; empty when nothing needs saying


def image_version(image: str) -> tuple[int, int, int] | None:
    """The TF Serving release in an image reference's tag (``tensorflow/serving:2.18.0``,
    ``...:2.18.0-gpu``, ``...:2.18.0@sha256:...``), or None when the tag names no version."""
    match = _IMAGE_VERSION.search(image.rsplit("/", 1)[-1])
    if not match:
        return None
    return int(match["major"]), int(match["minor"]), int(match["patch"] or 0)


def tensorflow_version(text: str) -> tuple[int, int, int] | None:
    match = _TF_VERSION.match(text or "")
    if not match:
        return None
    return int(match["major"]), int(match["minor"]), int(match["patch"] or 0)


def check_serving_image(
    image: str, metadata: dict[str, Any], refuse_older: bool = False
) -> ServingCompatibility:
    """Whether TF Serving from ``image`` can be trusted to load a model with this export ``metadata``.

    An image whose release (major.minor) is older than the exporting TensorFlow's is a warning in
    ``reason`` (allowed), and refused with ``refuse_older`` (``serving.kubernetes.refuse_older_image``):
    TF Serving's releases trail TensorFlow's (none newer than 2.18 is published while training exports
    with 2.21), so refusing by default would refuse every release; the rollout's load and smoke checks
    still catch a model the server cannot load before any client sees it. A model without
    ``tensorflow_version`` (exported before it was recorded) or an image whose tag names no version cannot
    be compared: allowed, and ``reason`` says so."""
    exported = tensorflow_version(str(metadata.get("tensorflow_version") or ""))
    if exported is None:
        return ServingCompatibility(
            True, "the model's metadata records no tensorflow_version: TF Serving's version was not checked"
        )
    serving = image_version(image)
    if serving is None:
        return ServingCompatibility(
            True,
            f"the serving image {image} names no version in its tag: cannot check that it loads a "
            f"model exported by TensorFlow {metadata['tensorflow_version']}",
        )
    if serving[:2] >= exported[:2]:
        return ServingCompatibility(True, "")
    reason = (
        f"the serving image {image} is TF Serving {serving[0]}.{serving[1]}, older than the TensorFlow "
        f"{metadata['tensorflow_version']} that exported the model: it may not load it (ops or SavedModel "
        f"features it does not know); use a TF Serving image of {exported[0]}.{exported[1]} or newer"
    )
    if refuse_older:
        return ServingCompatibility(False, f"{reason} (serving.kubernetes.refuse_older_image is true)")
    return ServingCompatibility(
        True,
        f"warning: {reason}, or set serving.kubernetes.refuse_older_image: true to refuse such releases; "
        "allowed, as the load and smoke checks run before any client is served",
    )
