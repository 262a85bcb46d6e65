"""A throwaway OCI registry and base image on one machine, for the image tests and bench/bench_build.py.

:class:`LocalRegistry` runs the distribution registry (Debian's ``docker-registry``, upstream's
``registry``) on 127.0.0.1 at a free port with its storage and config in a directory, and stops it on
exit. :func:`make_busybox_base_image` commits a tiny base image from scratch with busybox-static, so
nothing is pulled from Docker Hub.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Self

from branchops.errors import ExternalError

log = logging.getLogger(__name__)

REGISTRY_BINARIES = ("docker-registry", "registry")
BUSYBOX_PATHS = ("/bin/busybox", "/usr/bin/busybox")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def registry_binary() -> str | None:
    return next((path for path in map(shutil.which, REGISTRY_BINARIES) if path), None)


class LocalRegistry:
    """``with LocalRegistry(tmp_dir) as registry: registry.url  # "127.0.0.1:PORT"``"""

    def __init__(self, root: Path, htpasswd: Path | None = None, port: int | None = None):
        self.root = Path(root)
        self.htpasswd = htpasswd
        self.port = port or free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _write_config(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        auth = ""
        if self.htpasswd:
            auth = f"auth:\n  htpasswd:\n    realm: branchops-test\n    path: {self.htpasswd}\n"
        config = self.root / "config.yml"
        config.write_text(
            "version: 0.1\n"
            "log:\n  level: warn\n  accesslog:\n    disabled: true\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.root / 'data'}\n"
            "  delete:\n    enabled: true\n"
            f"http:\n  addr: 127.0.0.1:{self.port}\n" + auth,
            encoding="utf-8",
        )
        return config

    def start(self, timeout_s: float = 30) -> Self:
        binary = registry_binary()
        if binary is None:
            raise ExternalError("no registry binary found (install Debian's docker-registry)")
        config = self._write_config()
        log_file = (self.root / "registry.log").open("ab")
        self._process = subprocess.Popen(
            [binary, "serve", str(config)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log_file.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise ExternalError(f"{binary} exited at start-up; see {self.root / 'registry.log'}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise ExternalError(f"{binary} did not listen on {self.url} within {timeout_s:g}s")

    def stop(self) -> None:
        if self._process and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=10)
        self._process = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _run(argv: list[str]) -> str:
    done = subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL, check=False)
    if done.returncode != 0:
        raise ExternalError(f"{' '.join(argv)} failed: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout.decode().strip()


def make_busybox_base_image(reference: str = "localhost/branchops-base:busybox") -> str:
    """Commit ``reference`` with buildah (scratch + busybox-static, applets linked in /bin) unless it exists.

    buildah and podman share the local image store, so both builders find it.
    """
    exists = subprocess.run(
        ["buildah", "inspect", "--type", "image", reference],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if exists.returncode == 0:
        return reference
    busybox = next((p for p in BUSYBOX_PATHS if os.path.exists(p)), None)
    if busybox is None:
        raise ExternalError("busybox is not installed (apt-get install busybox-static)")
    container = _run(["buildah", "from", "scratch"])
    try:
        root = Path(_run(["buildah", "mount", container]))
        (root / "bin").mkdir(parents=True, exist_ok=True)
        (root / "tmp").mkdir(exist_ok=True)
        shutil.copy2(busybox, root / "bin" / "busybox")
        applets = _run([busybox, "--list"]).split()
        for applet in applets:
            link = root / "bin" / applet
            if applet != "busybox" and not link.exists():
                link.symlink_to("busybox")
        _run(["buildah", "umount", container])
        _run(["buildah", "config", "--cmd", "/bin/sh", "--env", "PATH=/bin", container])
        _run(["buildah", "commit", "--quiet", container, reference])
    finally:
        subprocess.run(
            ["buildah", "rm", container], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False
        )
    return reference
