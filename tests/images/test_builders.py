"""Which builder is chosen, the command lines each builder runs (their documented flags), and that a
build's and a component test's output reaches its log while it runs.

buildah and podman also run for real in test_build_real.py, docker in test_docker_real.py; kaniko only
here, as a command line (see its test).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from branchops import console, progress
from branchops.config import RegistrySection
from branchops.errors import ConfigError
from branchops.images import build_components
from branchops.images.builders import BUILDERS, Builder, BuildRequest, CommandFailed, select_builder
from branchops.images.builders.docker import DockerBuilder
from branchops.images.builders.kaniko import KanikoBuilder
from branchops.images.builders.podman import PodmanBuilder
from branchops.stages import build_components as build_components_stage

from .conftest import make_context, write_component


def request(tmp_path: Path, insecure: bool = True, auth: bool = True) -> BuildRequest:
    return BuildRequest(
        workspace=tmp_path,
        dockerfile="docker/train/Dockerfile",
        image="reg:5000/ns/train:abc",
        build_args={"BASE_IMAGE": "python:3.11-slim"},
        labels={"io.branchops.component": "train"},
        insecure=insecure,
        auth_dir=tmp_path / "auth" if auth else None,
        digest_file=tmp_path / "train.digest",
    )


def test_podman_builds_with_layers_and_pushes_with_a_digest_file(tmp_path):
    build, push = PodmanBuilder(60).commands(request(tmp_path))
    assert build[:3] == ["podman", "build", "--layers"] and build[-1] == "."
    assert ["--build-arg", "BASE_IMAGE=python:3.11-slim"] == build[build.index("--build-arg") :][:2]
    assert push[:4] == ["podman", "push", "--digestfile", str(tmp_path / "train.digest")]
    assert "--tls-verify=false" in push and push[-1] == "docker://reg:5000/ns/train:abc"
    assert "--authfile" in build and "--authfile" in push
    assert "--tls-verify=false" not in PodmanBuilder(60).commands(request(tmp_path, insecure=False))[1]


def test_docker_reads_credentials_from_docker_config(tmp_path):
    builder = DockerBuilder(60)
    build, push = builder.commands(request(tmp_path))
    assert build[:2] == ["docker", "build"] and push == ["docker", "push", "reg:5000/ns/train:abc"]
    assert builder.environment(request(tmp_path)) == {"DOCKER_CONFIG": str(tmp_path / "auth")}


def test_kaniko_builds_and_pushes_in_one_call_one_at_a_time(tmp_path):
    # Checked as a command line only: the executor ships only inside the gcr.io/kaniko-project/executor
    # image, which cannot be pulled here, and it rewrites the root filesystem of the container it runs in.
    (argv,) = KanikoBuilder(60).commands(request(tmp_path))
    assert argv[argv.index("--context") + 1] == f"dir://{tmp_path}"
    assert argv[argv.index("--dockerfile") + 1] == str(tmp_path / "docker/train/Dockerfile")
    assert argv[argv.index("--destination") + 1] == "reg:5000/ns/train:abc"
    assert argv[argv.index("--digest-file") + 1] == str(tmp_path / "train.digest")
    assert "--insecure" in argv and "--cleanup" in argv
    assert KanikoBuilder.max_parallel == 1


def test_none_builds_nothing_and_unknown_or_missing_builders_are_config_errors(monkeypatch):
    assert select_builder("none", 60) is None
    with pytest.raises(ConfigError, match="unknown builder 'make'"):
        select_builder("make", 60)
    monkeypatch.setattr(KanikoBuilder, "available", classmethod(lambda cls: False))
    with pytest.raises(ConfigError, match="registry.builder is 'kaniko' but it is not installed"):
        select_builder("kaniko", 60)
    for builder in BUILDERS.values():
        monkeypatch.setattr(builder, "available", classmethod(lambda cls: False))
    with pytest.raises(ConfigError, match="none of buildah, podman, docker or kaniko"):
        select_builder("auto", 60)


# -- output streamed while it runs ---------------------------------------------------------------------


class ScriptBuilder(Builder):
    """A builder whose one command is a shell script: stands in for buildah's output, step by step."""

    name = "script"

    def __init__(self, timeout_s: float, script: str):
        super().__init__(timeout_s)
        self.script = script

    @classmethod
    def available(cls) -> bool:
        return True

    def commands(self, request: BuildRequest) -> list[list[str]]:
        return [["sh", "-c", self.script]]


def wait_for(predicate, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_a_build_streams_each_line_into_its_log_while_it_runs(tmp_path):
    release = tmp_path / "release"
    # printf builds each line from its arguments, so the command line (logged first) does not hold it
    builder = ScriptBuilder(
        60, f"printf 'STEP %s\\n' 1/2; while [ ! -e {release} ]; do sleep 0.05; done; printf 'STEP %s\\n' 2/2"
    )
    log_path = tmp_path / "train.log"
    with log_path.open("w") as log, ThreadPoolExecutor(1) as pool:
        running = pool.submit(builder.build_and_push, request(tmp_path), log)
        seen_early = wait_for(lambda: "STEP 1/2" in log_path.read_text(), timeout_s=15)
        still_running = not running.done()
        release.touch()
        running.result(timeout=30)
    assert seen_early and still_running, "the first step's line was not in the log while the build ran"
    assert log_path.read_text().index("STEP 1/2") < log_path.read_text().index("STEP 2/2")


def test_a_build_past_its_timeout_is_stopped_with_what_it_started(tmp_path):
    # The shell waits on a child of its own: the timeout must not wait for that child to end.
    builder = ScriptBuilder(1, "printf '%s\\n' started; sleep 60 & wait")
    log_path = tmp_path / "train.log"
    started = time.monotonic()
    with log_path.open("w") as log, pytest.raises(CommandFailed, match="'sh' timed out after 1s"):
        builder.build_and_push(request(tmp_path), log)
    assert time.monotonic() - started < 20
    assert "\nstarted\n" in log_path.read_text() and "[timed out after 1s]" in log_path.read_text()


@pytest.fixture
def slow_workspace(tmp_path: Path) -> tuple[Path, Path]:
    """A component whose first test passes at once and whose second waits for a release file."""
    ws, release = tmp_path / "ws", tmp_path / "release"
    (ws / "components" / "common").mkdir(parents=True)
    for name in ("__init__.py", "__main__.py", "common/__init__.py"):
        (ws / "components" / name).write_text("")
    write_component(ws, "alpha")
    (ws / "components" / "alpha" / "tests" / "test_waits.py").write_text(
        "import pathlib, time\n\n\ndef test_waits_for_release():\n"
        "    deadline = time.monotonic() + 60\n"
        f"    while not pathlib.Path({str(release)!r}).exists():\n"
        "        assert time.monotonic() < deadline\n"
        "        time.sleep(0.05)\n"
    )
    return ws, release


def test_component_tests_stream_into_the_log_and_a_heartbeat_says_they_run(
    slow_workspace, tmp_path, monkeypatch, caplog
):
    ws, release = slow_workspace
    monkeypatch.setattr(progress, "HEARTBEAT_S", 0.2)
    stage_log = logging.getLogger("branchops.stage.build-components")
    log_path = tmp_path / "logs" / "alpha.log"
    with caplog.at_level(logging.INFO), ThreadPoolExecutor(1) as pool:
        running = pool.submit(
            build_components, ws, RegistrySection(), tmp_path / "logs", progress_log=stage_log
        )
        first_test_in_log = wait_for(
            lambda: log_path.exists() and "test_value PASSED" in log_path.read_text()
        )
        heartbeat_seen = wait_for(lambda: "component tests … still running" in caplog.text)
        still_running = not running.done()
        release.touch()
        report = running.result(timeout=60)
    assert first_test_in_log and still_running, "the first test's line was not in the log while the tests ran"
    assert heartbeat_seen
    assert report.components[0].tests == "passed"
    assert "test_waits_for_release PASSED" in log_path.read_text()
    said = [r.getMessage() for r in caplog.records if r.name == stage_log.name]
    assert said[0] == "alpha: testing components/alpha/tests"
    assert any(line.startswith("alpha: tests passed in ") for line in said)
    assert any(
        line.startswith("component tests … still running (") and "0/1 done, running: alpha" in line
        for line in said
    )


def test_the_stage_prints_each_result_line_once(tmp_path, caplog):
    ws = tmp_path / "ws"
    (ws / "components" / "common").mkdir(parents=True)
    for name in ("__init__.py", "__main__.py", "common/__init__.py"):
        (ws / "components" / name).write_text("")
    write_component(ws, "alpha")
    ctx = make_context(ws, tmp_path / "state", RegistrySection())
    ctx.log = logging.getLogger("branchops.stage.build-components")
    with caplog.at_level(logging.INFO):
        result = build_components_stage.run(ctx)
    assert result.outcome == "success"
    (line,) = [c for c in result.outputs["components"]]
    messages = [r.getMessage() for r in caplog.records]
    result_line = f"alpha: not-built :{line['tag']} - {line['reason']}"
    assert messages.count(result_line) == 1, messages


def test_at_v_each_line_of_the_component_tests_is_on_the_console(tmp_path, caplog):
    # The tests run on worker threads: -v (console.set_verbosity, as the CLI sets it) reaches them too.
    ws = tmp_path / "ws"
    (ws / "components" / "common").mkdir(parents=True)
    for name in ("__init__.py", "__main__.py", "common/__init__.py"):
        (ws / "components" / name).write_text("")
    write_component(ws, "alpha")
    console.set_verbosity(console.VERBOSE)
    try:
        with caplog.at_level(logging.INFO):
            build_components(ws, RegistrySection(), tmp_path / "logs")
    finally:
        console.set_verbosity(None)
    echoed = [r.getMessage() for r in caplog.records if r.name == "branchops.output"]
    assert any(line.startswith("[alpha] ") and "test_value PASSED" in line for line in echoed), echoed
