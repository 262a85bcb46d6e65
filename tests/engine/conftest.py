"""A tiny two-step workspace (its own ``components`` package and pipeline module) for engine tests,
so the engine is tested end to end without the reference project's heavy components."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

TINY_COMPONENT = '''
import json
import os
import time


def produce(out_dir: str, count: int, sleep_s: float = 0.0, fail: bool = False) -> dict:
    if fail:
        raise ValueError(f"asked to fail (count={count})")
    time.sleep(sleep_s)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "numbers.json"), "w") as f:
        json.dump(list(range(count)), f)
    return {"count": count, "pid": os.getpid()}


def consume(out_dir: str) -> dict:
    with open(os.path.join(out_dir, "numbers.json")) as f:
        numbers = json.load(f)
    return {"total": sum(numbers)}
'''

TINY_PIPELINE = '''
# A two-step pipeline in the shape of the reference one: bodies call the workspace's components.
from typing import NamedTuple


def build_pipeline(images=None, gpu=None, mounts=None):
    from kfp import dsl

    images = images or {}

    @dsl.component(base_image=images.get("produce", "python:3.11-slim"), install_kfp_package=False)
    def produce(out_dir: str, count: int, sleep_s: float, fail: bool) -> dict:
        from components.tiny import produce as run
        return run(out_dir=out_dir, count=count, sleep_s=sleep_s, fail=fail)

    @dsl.component(base_image=images.get("consume", "python:3.11-slim"), install_kfp_package=False)
    def consume(out_dir: str) -> dict:
        from components.tiny import consume as run
        return run(out_dir=out_dir)

    @dsl.pipeline(name="tiny")
    def tiny(out_dir: str, count: int = 4, sleep_s: float = 0.0, fail: bool = False
             ) -> NamedTuple("Outputs", produced=dict, summary=dict):
        p = produce(out_dir=out_dir, count=count, sleep_s=sleep_s, fail=fail)
        p.set_caching_options(False)
        c = consume(out_dir=out_dir).after(p)
        c.set_caching_options(False)
        outputs = NamedTuple("Outputs", produced=dict, summary=dict)
        return outputs(produced=p.output, summary=c.output)

    return tiny
'''


def write_tiny_workspace(root: Path, pipeline_source: str = TINY_PIPELINE) -> Path:
    (root / "components").mkdir(parents=True, exist_ok=True)
    (root / "components" / "__init__.py").write_text("")
    (root / "components" / "tiny.py").write_text(textwrap.dedent(TINY_COMPONENT))
    (root / "pipelines").mkdir(exist_ok=True)
    (root / "pipelines" / "tiny.py").write_text(textwrap.dedent(pipeline_source))
    return root


@pytest.fixture
def tiny_workspace(tmp_path: Path) -> Path:
    return write_tiny_workspace(tmp_path / "ws")


REPO_ROOT = Path(__file__).resolve().parents[2]
