"""Build and push the component images whose content tag is not in the registry yet.

For each component: look its content tag up in the registry (a registry that does not answer stops
everything before any work); a tag already there is skipped; otherwise run the component's tests (a
failure means no image) and build and push it with the configured builder, a bounded number at once,
each with its own log. With no registry configured, the tests still run and the report says which tags
would be built and that no image was built.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

from branchops.errors import ExternalError, StageFailed
from branchops.images.discover import Component, discover_components
from branchops.secrets import mask

if TYPE_CHECKING:
    from branchops.config import RegistrySection
    from branchops.images.builders import Builder
    from branchops.images.registry import RegistryClient
    from branchops.progress import Progress

log = logging.getLogger(__name__)

Status = Literal["built", "skipped", "failed", "not-built", "would-build", "would-test"]
TestResult = Literal["passed", "failed", "no tests", "not run"]

NO_REGISTRY_NOTE = (
    "no registry configured (registry.url is not set): the component tests ran and the tags "
    "below are what would be built; no image was built or pushed"
)
NO_BUILDER_NOTE = "registry.builder is 'none': the component tests ran; no image was built or pushed"
DRY_RUN_NOTES = {
    NO_REGISTRY_NOTE: "no registry configured (registry.url is not set): the component tests would run; "
    "no image would be built or pushed",
    NO_BUILDER_NOTE: "registry.builder is 'none': the component tests would run; "
    "no image would be built or pushed",
}


@dataclass
class ComponentBuild:
    name: str
    tag: str
    status: Status
    reason: str
    image: str | None = None  # host[:port]/namespace/name:tag (None without a registry)
    digest: str | None = None  # sha256:... of the manifest in the registry
    tests: TestResult = "not run"
    durations: dict[str, float] = field(default_factory=dict)  # tests_s, build_s (build and push)
    log: str | None = None  # path of this component's log (tests, build and push output)

    @property
    def pinned(self) -> str | None:
        """``host/namespace/name@sha256:...`` — how a pipeline refers to this image."""
        if self.image and self.digest:
            return f"{self.image.rsplit(':', 1)[0]}@{self.digest}"
        return None


@dataclass
class BuildReport:
    registry: str | None
    builder: str | None
    components: list[ComponentBuild]
    note: str = ""
    dry_run: bool = False

    @property
    def ok(self) -> bool:
        return not self.failed

    def _with(self, status: str) -> list[ComponentBuild]:
        return [c for c in self.components if c.status == status]

    @property
    def built(self) -> list[ComponentBuild]:
        return self._with("built")

    @property
    def skipped(self) -> list[ComponentBuild]:
        return self._with("skipped")

    @property
    def failed(self) -> list[ComponentBuild]:
        return self._with("failed")

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for c in self.components:
            counts[c.status] = counts.get(c.status, 0) + 1
        parts = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no components found"
        where = f"registry {self.registry}" if self.registry else "no registry"
        text = f"{parts} ({where}{f', builder {self.builder}' if self.builder else ''})"
        if self.failed:
            text += "; failed: " + ", ".join(f"{c.name} ({c.reason})" for c in self.failed)
        return text

    def lines(self) -> list[str]:
        """One human line per component: what happened (or would happen) and why."""
        out = [self.note] if self.note else []
        for c in self.components:
            digest = f" {c.digest}" if c.digest else ""
            out.append(f"{c.name}: {c.status} :{c.tag}{digest} - {c.reason}")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "registry": self.registry,
            "builder": self.builder,
            "note": self.note,
            "dry_run": self.dry_run,
            "components": [asdict(c) for c in self.components],
        }


# -- registry lookups -------------------------------------------------------------------------------


def _client(registry_cfg: RegistrySection) -> RegistryClient:
    from branchops.images.registry import RegistryClient

    return RegistryClient(registry_cfg)


def image_digests(workspace: Path, registry_cfg: RegistrySection) -> dict[str, str]:
    """``{component: "<registry>/<namespace>/<component>@sha256:..."}`` for this workspace's content tags.

    Empty when no registry is configured (the local engine runs components as processes). A tag that is
    not in the registry raises StageFailed: its image was never built for these sources.
    """
    if not registry_cfg.url:
        return {}
    client = _client(registry_cfg)
    pinned: dict[str, str] = {}
    missing: list[str] = []
    for component in discover_components(Path(workspace), registry_cfg.build_args):
        digest = client.manifest_digest(component.name, component.content_tag)
        if digest is None:
            missing.append(f"{client.location.reference(component.name)}:{component.content_tag}")
        else:
            pinned[component.name] = f"{client.location.reference(component.name)}@{digest}"
    if missing:
        raise StageFailed(
            "component images for these sources are not in the registry: "
            + ", ".join(missing)
            + ". Merge these changes into build-components first; its stage builds and pushes them."
        )
    return pinned


# -- tests --------------------------------------------------------------------------------------------


@dataclass
class _TestRun:
    result: TestResult
    seconds: float


class _Tee:
    """Writes to several logs at once: train and train-gpu share components/train and its one test run."""

    def __init__(self, handles: list[IO[str]]):
        self.handles = handles

    def write(self, text: str) -> None:
        for handle in self.handles:
            handle.write(text)

    def flush(self) -> None:
        for handle in self.handles:
            handle.flush()


def _run_component_tests(
    workspace: Path, component: Component, timeout_s: float, log_file: IO[str]
) -> _TestRun:
    """Run the component's tests with their output streamed into ``log_file`` as they go (and to the
    console at ``-v``)."""
    from branchops.progress import run_streaming

    tests_dir = workspace / component.tests_dir
    if not tests_dir.is_dir():
        log_file.write(f"[no tests: {component.tests_dir} does not exist]\n")
        return _TestRun("no tests", 0.0)
    # No bytecode and no pytest cache: the checkout stays exactly as the sources that were hashed.
    # -v ends a line as each test ends (-q's dots would fill one line until the last test); unbuffered,
    # so that line reaches the log when it is printed, not when pytest exits.
    argv = [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", component.tests_dir]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"}
    log_file.write(f"$ {' '.join(argv)}\n")
    log_file.flush()
    done = run_streaming(
        argv,
        log_file,
        cwd=workspace,
        env=env,
        timeout_s=timeout_s,
        label=component.name,
        transform=mask,
    )
    if done.timed_out:
        log_file.write(f"[tests timed out after {timeout_s:g}s]\n")
        return _TestRun("failed", done.seconds)
    log_file.write(f"[exit {done.returncode}]\n")
    # pytest exit code 5: no tests were collected.
    result: TestResult = (
        "passed" if done.returncode == 0 else "no tests" if done.returncode == 5 else "failed"
    )
    return _TestRun(result, done.seconds)


# -- building -------------------------------------------------------------------------------------------


def _auth_dir(registry_cfg: RegistrySection, host: str) -> Path | None:
    """A private directory with a docker-style config.json, so no password appears on a command line."""
    if not (registry_cfg.username and registry_cfg.password):
        return None
    password = registry_cfg.password.resolve() or ""
    directory = Path(tempfile.mkdtemp(prefix="branchops-auth-"))
    auth = base64.b64encode(f"{registry_cfg.username}:{password}".encode()).decode()
    path = directory / "config.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump({"auths": {host: {"auth": auth}}}, handle)
    return directory


def _build_one(
    workspace: Path,
    component: Component,
    entry: ComponentBuild,
    builder: Builder,
    registry_cfg: RegistrySection,
    auth_dir: Path | None,
    log_path: Path,
) -> None:
    from branchops.images.builders import BuildRequest, CommandFailed

    assert entry.image is not None
    digest_file = log_path.with_suffix(".digest")
    digest_file.unlink(missing_ok=True)
    request = BuildRequest(
        workspace=workspace,
        dockerfile=component.dockerfile,
        image=entry.image,
        build_args=component.build_args,
        labels={"io.branchops.component": component.name, "io.branchops.content-tag": component.content_tag},
        insecure=registry_cfg.insecure,
        auth_dir=auth_dir,
        digest_file=digest_file,
    )
    started = time.monotonic()
    with log_path.open("a", encoding="utf-8") as handle:
        handle.write(f"\n== build and push {entry.image} with {builder.name}\n")
        try:
            reported = builder.build_and_push(request, handle)
        except CommandFailed as exc:
            entry.status, entry.reason = "failed", f"build or push failed: {exc} (see {log_path.name})"
            return
        finally:
            entry.durations["build_s"] = round(time.monotonic() - started, 3)
            digest_file.unlink(missing_ok=True)
        # The registry is the judge of what was pushed (docker's push writes no digest file).
        try:
            in_registry = _client(registry_cfg).manifest_digest(component.name, component.content_tag)
        except ExternalError as exc:
            entry.status, entry.reason = "failed", f"pushed, but the registry check failed: {exc}"
            return
        if in_registry is None:
            entry.status, entry.reason = (
                "failed",
                "the push reported success but the tag is not in the registry",
            )
            return
        if reported and reported != in_registry:
            handle.write(f"[note: {builder.name} reported {reported}, the registry serves {in_registry}]\n")
        entry.digest, entry.status = in_registry, "built"
        entry.reason = f"tag was not in the registry; tests {entry.tests}, built and pushed"
        handle.write(f"[pushed {entry.image} {in_registry}]\n")


def _look_up(components: list[Component], client: RegistryClient | None) -> list[ComponentBuild]:
    """One entry per component: skipped when its tag is in the registry, else still to build."""
    entries = []
    for component in components:
        entry = ComponentBuild(name=component.name, tag=component.content_tag, status="not-built", reason="")
        entries.append(entry)
        if client is None:
            entry.reason = "no registry configured: no image is built"
            continue
        entry.image = f"{client.location.reference(component.name)}:{component.content_tag}"
        digest = client.manifest_digest(component.name, component.content_tag)  # ExternalError if down
        if digest:
            entry.status, entry.digest, entry.reason = "skipped", digest, "tag already in the registry"
        else:
            entry.reason = f"tag {component.content_tag} is not in the registry"
    return entries


class _Running:
    """Which components are running now, for the heartbeat's "running: train, features"."""

    def __init__(self, progress: Progress):
        self.progress = progress
        self.names: list[str] = []
        self.lock = threading.Lock()

    @contextmanager
    def one(self, name: str) -> Iterator[None]:
        with self.lock:
            self.names.append(name)
            self.progress.describe("running: " + ", ".join(self.names))
        try:
            yield
        finally:
            with self.lock:
                self.names.remove(name)
                self.progress.advance()
                self.progress.describe("running: " + ", ".join(self.names) if self.names else "")


def _test_and_log(
    workspace: Path,
    to_build: list[ComponentBuild],
    by_name: dict[str, Component],
    log_dir: Path,
    run_tests: bool,
    parallel: int,
    timeout_s: float,
    say: logging.Logger,
) -> None:
    """Run the tests (once per source folder: train and train-gpu share components/train), each streamed
    into the logs of the components it tests while it runs."""
    from branchops.progress import heartbeat

    log_dir.mkdir(parents=True, exist_ok=True)
    by_source: dict[str, list[ComponentBuild]] = {}
    handles: dict[str, IO[str]] = {}
    try:
        for entry in to_build:
            component = by_name[entry.name]
            log_path = log_dir / f"{entry.name}.log"
            entry.log = str(log_path)
            handle = handles[entry.name] = log_path.open("w", encoding="utf-8")
            handle.write(f"== {entry.name} :{entry.tag} ({len(component.files)} source files)\n")
            if not run_tests:
                handle.write("== tests not run (run_tests=False)\n")
                continue
            handle.write(f"== tests: python -m pytest {component.tests_dir}\n")
            handle.flush()
            by_source.setdefault(component.source_dir, []).append(entry)
        if not by_source:
            return
        with heartbeat("component tests", total=len(by_source), logger=say) as progress:
            running = _Running(progress)

            def test(entries: list[ComponentBuild]) -> None:
                component = by_name[entries[0].name]
                names = ", ".join(e.name for e in entries)
                say.info("%s: testing %s", names, component.tests_dir)
                with running.one(names):
                    run = _run_component_tests(
                        workspace, component, timeout_s, _Tee([handles[e.name] for e in entries])
                    )
                say.info("%s: tests %s in %.1fs", names, run.result, run.seconds)
                for entry in entries:
                    entry.tests = run.result
                    entry.durations["tests_s"] = round(run.seconds, 3)

            with ThreadPoolExecutor(max_workers=min(parallel, len(by_source))) as pool:
                list(pool.map(test, by_source.values()))
    finally:
        for handle in handles.values():
            handle.close()
    for entry in to_build:
        if entry.tests == "failed":
            tests_dir, log_name = by_name[entry.name].tests_dir, Path(entry.log or "").name
            entry.status = "failed"
            entry.reason = f"its tests failed ({tests_dir}); no image was built (see {log_name})"


def build_components(
    workspace: Path,
    registry_cfg: RegistrySection,
    log_dir: Path,
    run_tests: bool = True,
    dry_run: bool = False,
    progress_log: logging.Logger | None = None,
) -> BuildReport:
    """Test, build and push every component whose content tag is missing from the registry.

    Raises ExternalError when the registry does not answer (before anything runs) and ConfigError when
    the configured builder is not installed. A failing test or build marks that component failed in the
    report (``report.ok`` is False) and pushes nothing for it. ``dry_run`` only looks tags up.

    Each component's tests and build stream into its log as they run; ``progress_log`` (the stage's
    logger, which the console shows) gets a line when each starts and ends and a heartbeat meanwhile.
    The result lines are the caller's to print (``report.lines()``).
    """
    say = progress_log or log
    workspace = Path(workspace).resolve()
    components = discover_components(workspace, registry_cfg.build_args)
    by_name = {c.name: c for c in components}
    if not components:
        return BuildReport(
            registry=registry_cfg.url,
            builder=None,
            components=[],
            dry_run=dry_run,
            note="no components found (docker/<name>/Dockerfile with components/<name>/)",
        )
    client = _client(registry_cfg) if registry_cfg.url else None
    entries = _look_up(components, client)
    to_build = [e for e in entries if e.status == "not-built"]

    builder: Builder | None = None
    note = NO_REGISTRY_NOTE if client is None else ""
    if client is not None and to_build:
        from branchops.images.builders import select_builder

        builder = select_builder(registry_cfg.builder, registry_cfg.timeout_s)
        note = "" if builder else NO_BUILDER_NOTE
    report = BuildReport(
        registry=registry_cfg.url,
        builder=builder.name if builder else None,
        components=entries,
        note=note,
        dry_run=dry_run,
    )

    if dry_run:
        report.note = DRY_RUN_NOTES.get(note, note)
        for entry in to_build:
            entry.status = "would-build" if builder else "would-test"
            entry.reason += (
                f"; would run its tests, then build and push with {builder.name}"
                if builder
                else "; would run its tests only"
            )
        return report
    if not to_build:
        return report

    parallel = min(registry_cfg.max_parallel_builds, (builder.max_parallel if builder else None) or 32)
    _test_and_log(
        workspace, to_build, by_name, Path(log_dir), run_tests, parallel, registry_cfg.timeout_s, say
    )
    ready = [e for e in to_build if e.status != "failed"]
    if builder is None:
        for entry in ready:
            entry.reason += f"; tests {entry.tests}"
    elif ready and client is not None:
        auth_dir = _auth_dir(registry_cfg, client.location.host)
        from branchops.progress import heartbeat

        try:
            with (
                heartbeat("image builds", total=len(ready), logger=say) as progress,
                ThreadPoolExecutor(max_workers=min(parallel, len(ready))) as pool,
            ):
                running = _Running(progress)

                def build(entry: ComponentBuild) -> None:
                    say.info("%s: building and pushing %s with %s", entry.name, entry.image, builder.name)
                    with running.one(entry.name):
                        _build_one(
                            workspace,
                            by_name[entry.name],
                            entry,
                            builder,
                            registry_cfg,
                            auth_dir,
                            Path(entry.log or ""),
                        )
                    seconds = entry.durations.get("build_s", 0.0)
                    say.info("%s: %s in %.1fs (build and push)", entry.name, entry.status, seconds)

                list(pool.map(build, ready))
        finally:
            if auth_dir:
                shutil.rmtree(auth_dir, ignore_errors=True)

    return report
