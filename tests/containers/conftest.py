"""Fixtures for the container tests: the reference pipeline run in the images build-components builds.

Everything is real and local, since nothing can be pulled from a public registry here: mmdebstrap makes a
Debian bookworm root file system with python3 (3.11) and pip (.ci/setup.d/python-base-image.sh, cached in
$BRANCHOPS_CI_CACHE, default /opt/branchops-ci), podman imports it as the components' base image, buildah
builds the component images into the tests' container store and pushes them to a real docker-registry, and
`podman system service` serves the Docker Engine API through which kfp.local.DockerRunner (the docker
SDK) starts each step in its image.

The tests have their own container store and configuration (through CONTAINERS_STORAGE_CONF,
CONTAINERS_CONF and CONTAINERS_REGISTRIES_CONF), so they neither see nor change the machine's images. The
store is kept in $BRANCHOPS_CI_CACHE/containers when that is writable: a layer built once (the imported
base, a component's pip install) is reused by the next session while its inputs stay the same (delete
the folder to reclaim the space). It uses the overlay driver where the kernel allows it: the component
images hold TensorFlow (over a gigabyte), and vfs would copy all of it for every layer of every image.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.images.local_registry import LocalRegistry, registry_binary

REPO_ROOT = Path(__file__).resolve().parents[2]
BASE_IMAGE_SCRIPT = REPO_ROOT / ".ci" / "setup.d" / "python-base-image.sh"
BASE_IMAGE = "localhost/branchops-python:3.11-bookworm"
CACHE_DIR = Path(os.environ.get("BRANCHOPS_CI_CACHE") or "/opt/branchops-ci")
STORE_ENV = ("CONTAINERS_STORAGE_CONF", "CONTAINERS_CONF", "CONTAINERS_REGISTRIES_CONF")

# Seconds per phase (base image, builds, runs), printed at the end of the session: what this costs CI.
TIMINGS: dict[str, float] = {}


def pytest_terminal_summary(terminalreporter):
    if TIMINGS:
        terminalreporter.section("tests/containers: time per phase")
        for phase, seconds in TIMINGS.items():
            terminalreporter.write_line(f"{phase}: {seconds:.1f} s")


class timed:
    """``with timed("phase"):`` adds the block's wall time to TIMINGS."""

    def __init__(self, phase: str):
        self.phase = phase

    def __enter__(self) -> None:
        self.started = time.monotonic()

    def __exit__(self, *exc: object) -> None:
        TIMINGS[self.phase] = TIMINGS.get(self.phase, 0.0) + time.monotonic() - self.started


def _missing_tools() -> list[str]:
    missing = [tool for tool in ("buildah", "podman", "runc") if shutil.which(tool) is None]
    if registry_binary() is None:
        missing.append("docker-registry")
    return missing


def _run(argv: list[str], env: dict[str, str] | None = None, timeout_s: float = 600) -> str:
    done = subprocess.run(
        argv,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"{' '.join(argv)} exited with {done.returncode}: {done.stderr.strip()[-2000:]}")
    return done.stdout.strip()


def _write(path: Path, text: str) -> Path:
    """Write ``path`` whole (another session may read it at the same moment)."""
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(text)
    os.replace(partial, path)
    return path


def _storage_conf(root: Path, driver: str) -> Path:
    graph = root / driver
    return _write(
        root / f"storage-{driver}.conf",
        f'[storage]\ndriver = "{driver}"\ngraphroot = "{graph / "graph"}"\nrunroot = "{graph / "run"}"\n',
    )


def _store_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bool]:
    """(where the store lives, whether it outlives the session). In the CI cache when it is writable, so
    that a layer built once (the base image, a component's pip install) is reused while its inputs stay
    the same; buildah's --layers cache decides, by the parent layer and the instruction's inputs."""
    cache = CACHE_DIR / "containers"
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError:
        return tmp_path_factory.mktemp("containers"), False
    return (cache, True) if os.access(cache, os.W_OK) else (tmp_path_factory.mktemp("containers"), False)


@pytest.fixture(scope="session")
def container_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The tests' own container store; yields the environment that points podman and buildah at it (it
    is also set in os.environ for the session, for the builder commands build-components runs)."""
    missing = _missing_tools()
    if missing:
        pytest.skip(f"container tools not installed: {', '.join(missing)} (run .ci/setup.d/containers.sh)")
    root, persistent = _store_root(tmp_path_factory)
    session = tmp_path_factory.mktemp("containers-session")
    conf = _write(
        root / "containers.conf",
        textwrap.dedent("""\
        [containers]
        default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
        [engine]
        runtime = "runc"
        """),
    )
    # An unqualified name is never looked up on Docker Hub; the registry fixture adds its own entry (a
    # session's registry has its own port, so this file is the session's).
    registries = _write(session / "registries.conf", "unqualified-search-registries = []\n")
    env = {
        "CONTAINERS_CONF": str(conf),
        "CONTAINERS_REGISTRIES_CONF": str(registries),
        "CONTAINERS_STORAGE_CONF": str(_storage_conf(root, "overlay")),
    }
    probe = subprocess.run(
        ["podman", "info", "--format", "{{.Store.GraphDriverName}}"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0 or probe.stdout.strip() != "overlay":
        # a sandbox without overlay mounts: vfs works anywhere, at the cost of a copy per layer
        env["CONTAINERS_STORAGE_CONF"] = str(_storage_conf(root, "vfs"))
    saved = {key: os.environ.get(key) for key in STORE_ENV}
    os.environ.update(env)
    try:
        yield {**os.environ, **env}
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if not persistent:
            # containers and images first (that unmounts their layers), then the directory
            cleanup = {**os.environ, **env}
            for argv in (["podman", "rm", "--all", "--force"], ["podman", "rmi", "--all", "--force"]):
                subprocess.run(argv, env=cleanup, capture_output=True, check=False)
            shutil.rmtree(root, ignore_errors=True)


def base_image_tarball(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The base image's root file system, built by the CI set-up script (or now, if mmdebstrap is here)."""
    cached = CACHE_DIR / "python-base" / "bookworm-python3.tar"
    target = cached if os.access(CACHE_DIR if CACHE_DIR.is_dir() else CACHE_DIR.parent, os.W_OK) else None
    if target is None:
        target = tmp_path_factory.mktemp("python-base") / "bookworm-python3.tar"
    if shutil.which("mmdebstrap") is None:
        # the script says whether the cached tarball is current; without mmdebstrap it could not rebuild it
        if cached.is_file() and (cached.parent / f"{cached.name}.recipe").is_file():
            return cached
        pytest.skip("mmdebstrap is not installed (run .ci/setup.d/python-base-image.sh as root)")
    with timed("base image: mmdebstrap (0 when cached)"):
        _run(["bash", str(BASE_IMAGE_SCRIPT), str(target)], timeout_s=1800)
    return target


@pytest.fixture(scope="session")
def python_base_image(container_store: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> str:
    """``BASE_IMAGE`` in the tests' store: Debian bookworm's python3 (3.11) and pip, with python:3.11-slim's
    CMD and LANG. Imported again only when its tarball's recipe changed: an import makes a new image id,
    and every layer built on the old one would be built again."""
    tarball = base_image_tarball(tmp_path_factory)
    recipe = Path(f"{tarball}.recipe").read_text().strip()
    present = subprocess.run(
        ["podman", "image", "inspect", "--format", '{{index .Labels "io.branchops.recipe"}}', BASE_IMAGE],
        env=container_store,
        capture_output=True,
        text=True,
        check=False,
    )
    if present.returncode != 0 or present.stdout.strip() != recipe:
        with timed("base image: podman import"):
            _run(
                [
                    "podman",
                    "import",
                    "--change",
                    'CMD ["python3"]',
                    "--change",
                    "ENV LANG=C.UTF-8",
                    "--change",
                    f"LABEL io.branchops.recipe={recipe}",
                    str(tarball),
                    BASE_IMAGE,
                ],
                env=container_store,
            )
    version = _run(["podman", "run", "--rm", BASE_IMAGE, "python3", "--version"], env=container_store)
    assert version.startswith("Python 3.11."), version
    return BASE_IMAGE


@pytest.fixture(scope="session")
def registry(
    container_store: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalRegistry]:
    """A real docker-registry on 127.0.0.1 that buildah, podman and the podman service reach over HTTP."""
    with LocalRegistry(tmp_path_factory.mktemp("registry")) as running:
        with open(container_store["CONTAINERS_REGISTRIES_CONF"], "a") as conf:
            conf.write(f'[[registry]]\nlocation = "{running.url}"\ninsecure = true\n')
        try:
            yield running
        finally:
            # The store may outlive the session: its names for this registry go (nothing else can
            # reach it), the images stay as the layer cache.
            listed = subprocess.run(
                ["podman", "images", "--format", "{{.Repository}}:{{.Tag}}"],
                env=container_store,
                capture_output=True,
                text=True,
                check=False,
            )
            for name in listed.stdout.split():
                if name.startswith(f"{running.url}/"):
                    subprocess.run(
                        ["podman", "untag", name, name], env=container_store, capture_output=True, check=False
                    )


@pytest.fixture(scope="session")
def docker_host(
    container_store: dict[str, str], registry: LocalRegistry, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """``unix://...`` of podman's Docker-compatible API on the tests' store (started after the registry is
    in registries.conf: the service reads it once)."""
    root = tmp_path_factory.mktemp("podman-service")
    sock = root / "podman.sock"
    log_path = root / "service.log"
    with log_path.open("ab") as log:
        service = subprocess.Popen(
            ["podman", "system", "service", "--time=0", f"unix://{sock}"],
            env=container_store,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            if service.poll() is not None:
                pytest.fail(f"podman system service exited with {service.returncode}: {log_path.read_text()}")
            try:
                with socket.socket(socket.AF_UNIX) as client:
                    client.connect(str(sock))
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"podman system service did not listen on {sock}: {log_path.read_text()}")
                time.sleep(0.1)
        yield f"unix://{sock}"
    finally:
        service.terminate()
        try:
            service.wait(timeout=30)
        except subprocess.TimeoutExpired:
            service.kill()
            service.wait(timeout=10)
