"""The image builder / registry port: content-tagged component images, built only when missing.

* :func:`discover_components` finds the components and their content tags;
* :func:`build_components` tests, builds and pushes those whose tag is not in the registry;
* :func:`image_digests` pins each component's image by digest for the pipeline compiler.
"""

from __future__ import annotations

from branchops.images.build import BuildReport, ComponentBuild, build_components, image_digests
from branchops.images.discover import Component, discover_components

__all__ = [
    "BuildReport",
    "Component",
    "ComponentBuild",
    "build_components",
    "discover_components",
    "image_digests",
]
