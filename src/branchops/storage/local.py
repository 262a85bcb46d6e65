"""Local storage: a volume is a directory; a snapshot is a read-only, hard-linked copy of its tree.

Layout under the root (``storage.local.root``)::

    <root>/<volume>/                    the volume's files (what pipeline steps read and write)
    <root>/.volumes/<volume>.json       volume metadata: labels, creation time
    <root>/.snapshots/<name>/data/      the snapshot's tree: hard links to the volume's files, read-only
    <root>/.snapshots/<name>/snapshot.json   source volume, labels (commit, run), time, counts
    <root>/.snapshots/<name>/files.json      size and mtime of every file (to verify it later)
    <root>/.tmp/                        staging; a snapshot or clone appears only by an atomic rename

Why hard links: a snapshot then costs one directory entry per file, whatever the files' sizes (the
issue's "cost does not grow with the data"); a byte copy would grow with it. The price is that a
snapshot and its volume share each file's inode, so **writing a volume's file in place would change
the snapshot**. The guarantee "a later write to the volume never changes a snapshot" therefore rests on
a rule, enforced where it can be and checked where it cannot:

* writers replace files, never rewrite them in place: write a new file and rename it over the old one,
  or use :func:`open_for_write` (modes ``w``, ``a``, ``r+``), which does exactly that — for ``a`` and
  ``r+`` it first copies the one file being changed, breaking its link to the snapshot;
* taking a snapshot makes the shared files read-only, so a non-root process that writes in place gets
  ``PermissionError`` instead of silently changing history;
* root ignores permission bits, so each snapshot records every file's size and mtime;
  :meth:`LocalStorage.verify_snapshot` reports files changed behind the rule's back, and
  :meth:`LocalStorage.clone` refuses a snapshot that fails it.

A clone is built the same way (hard links from the snapshot), with the same rule for its writers.
Volumes and the snapshot store must be on one filesystem (hard links cannot cross filesystems).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from branchops.errors import ConfigError, DataError, ExternalError
from branchops.storage.base import (
    LABEL_CLONED_FROM,
    LABEL_MANAGED_BY,
    LABEL_VOLUME,
    MANAGED_BY,
    Snapshot,
    Storage,
    Volume,
    check_labels,
    check_name,
    check_volume_path,
)

log = logging.getLogger(__name__)

_FORMAT = 1
_WRITE_MODES = {"w", "wb", "wt", "a", "ab", "at", "r+", "r+b", "rb+", "r+t", "rt+"}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _write_json_atomically(path: Path, data: dict[str, Any], *, compact: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            if compact:  # machine-read only; indenting thousands of entries costs more than the links
                handle.write(json.dumps(data, separators=(",", ":")))
            else:
                json.dump(data, handle, indent=2, sort_keys=True)
            handle.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable storage metadata ({exc})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: storage metadata must be a JSON object")
    return data


def _make_tree_writable(root: Path) -> None:
    """Give directories back their owner-write bit so the tree can be deleted by a non-root user."""
    if root.is_symlink() or not root.is_dir():
        return
    for dirpath, dirnames, _ in os.walk(root):
        os.chmod(dirpath, stat.S_IMODE(os.lstat(dirpath).st_mode) | stat.S_IRWXU)
        dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]


def _remove_tree(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        _make_tree_writable(path)
        shutil.rmtree(path)


def _make_dirs_read_only(root: Path) -> None:
    for dirpath, _, _ in os.walk(root, topdown=False):
        mode = stat.S_IMODE(os.lstat(dirpath).st_mode)
        os.chmod(dirpath, mode & ~0o222)


@contextmanager
def open_for_write(path: str | Path, mode: str = "w", encoding: str | None = None) -> Iterator[IO[Any]]:
    """Open a file of a volume for writing without ever changing a snapshot that shares it.

    The handle writes to a new file beside ``path``; on a clean exit it replaces ``path`` atomically
    (readers see the old or the new content, never half of it); on an exception ``path`` is unchanged.
    ``a`` and ``r+`` start from a copy of the current content (the copy breaks the hard link to any
    snapshot, and costs only this one file).
    """
    if mode not in _WRITE_MODES:
        raise ValueError(f"open_for_write: mode {mode!r} is not one of {sorted(_WRITE_MODES)}")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".writing", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        existing = target.exists()
        if existing and not mode.startswith("w"):
            shutil.copyfile(target, tmp)
        # The new version is writable again (the old one may have been frozen by a snapshot).
        if existing:
            new_mode = stat.S_IMODE(target.stat().st_mode) | stat.S_IWUSR
        else:
            umask = os.umask(0)
            os.umask(umask)
            new_mode = 0o666 & ~umask
        os.chmod(tmp, new_mode)
        binary = "b" in mode
        with open(tmp, mode, encoding=None if binary else (encoding or "utf-8")) as handle:
            yield handle
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def replace_file(path: str | Path, data: bytes | str) -> None:
    """Write a whole file by replacement (see :func:`open_for_write`)."""
    with open_for_write(path, "wb") as handle:
        handle.write(data.encode() if isinstance(data, str) else data)


class LocalStorage(Storage):
    backend = "local"

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).absolute()

    # -- paths ---------------------------------------------------------------------------------------
    def _volume_dir(self, name: str) -> Path:
        return self.root / check_name(name, "volume name")

    def _volume_meta(self, name: str) -> Path:
        return self.root / ".volumes" / f"{name}.json"

    def _snapshot_dir(self, name: str) -> Path:
        return self.root / ".snapshots" / check_name(name, "snapshot name")

    def _staging(self, prefix: str) -> Path:
        tmp_root = self.root / ".tmp"
        tmp_root.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=prefix, dir=tmp_root))

    # -- volumes -------------------------------------------------------------------------------------
    def _volume(self, name: str) -> Volume:
        meta_path = self._volume_meta(name)
        labels = _read_json(meta_path).get("labels", {}) if meta_path.exists() else {}
        return Volume(name=name, path=str(self._volume_dir(name)), size=None, labels=dict(labels))

    def ensure_volume(self, name: str, labels: dict[str, str] | None = None) -> Volume:
        directory = self._volume_dir(name)
        labels = check_labels(labels)
        if directory.is_dir():
            return self._volume(name)
        if directory.exists() or directory.is_symlink():
            raise ConfigError(f"volume {name!r}: {directory} exists and is not a directory")
        meta = {
            "format": _FORMAT,
            "name": name,
            "created_at": _now(),
            "labels": {**labels, LABEL_MANAGED_BY: MANAGED_BY},
        }
        _write_json_atomically(self._volume_meta(name), meta)
        try:
            directory.mkdir(parents=True)
        except FileExistsError:  # made concurrently: theirs stands
            pass
        log.info("created local volume %s at %s", name, directory)
        return self._volume(name)

    def get_volume(self, name: str) -> Volume | None:
        return self._volume(name) if self._volume_dir(name).is_dir() else None

    def step_dir(self, volume: Volume, role: str) -> str:
        # the local pipeline runner's steps are processes on this machine: they use the directory itself
        return str(volume.path)

    def is_empty(self, volume: Volume) -> bool:
        directory = self._volume_dir(volume.name)
        return not directory.is_dir() or next(directory.iterdir(), None) is None

    def read_file(self, volume: Volume, path: str) -> bytes | None:
        file = self._volume_dir(volume.name) / check_volume_path(path)
        return file.read_bytes() if file.is_file() else None

    def list_folder(self, volume: Volume, path: str) -> list[str] | None:
        folder = self._volume_dir(volume.name) / check_volume_path(path)
        return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else None

    def read_folder(self, volume: Volume, path: str) -> dict[str, bytes] | None:
        folder = self._volume_dir(volume.name) / check_volume_path(path)
        if not folder.is_dir():
            return None
        return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}

    def delete_volume(self, name: str) -> bool:
        directory = self._volume_dir(name)
        if not directory.is_dir():
            self._volume_meta(name).unlink(missing_ok=True)
            return False
        # Rename first so the volume disappears at once, even if removing its files takes a while.
        trash = self._staging(f"deleting-volume-{name}-")
        os.rename(directory, trash / "data")
        self._volume_meta(name).unlink(missing_ok=True)
        _remove_tree(trash)
        log.info("deleted local volume %s", name)
        return True

    def open_for_write(self, volume: str, relpath: str, mode: str = "w", encoding: str | None = None) -> Any:
        """:func:`open_for_write` on ``relpath`` inside ``volume`` (which must exist)."""
        directory = self._volume_dir(volume)
        if not directory.is_dir():
            raise ConfigError(f"volume {volume!r} does not exist under {self.root}")
        target = (directory / relpath).resolve()
        if not target.is_relative_to(directory.resolve()):
            raise ConfigError(f"{relpath!r} is outside volume {volume!r}")
        return open_for_write(target, mode, encoding)

    # -- snapshots -----------------------------------------------------------------------------------
    def _snapshot_from_meta(self, meta: dict[str, Any], directory: Path) -> Snapshot:
        return Snapshot(
            name=meta["name"],
            volume=meta["volume"],
            created_at=meta["created_at"],
            labels=dict(meta.get("labels", {})),
            ready=True,
            path=str(directory / "data"),
        )

    def get_snapshot(self, name: str) -> Snapshot | None:
        directory = self._snapshot_dir(name)
        meta_path = directory / "snapshot.json"
        if not meta_path.exists():
            return None
        return self._snapshot_from_meta(_read_json(meta_path), directory)

    def list_snapshots(self, volume: str | None = None) -> list[Snapshot]:
        if volume is not None:
            check_name(volume, "volume name")
        store = self.root / ".snapshots"
        found = []
        for meta_path in sorted(store.glob("*/snapshot.json")) if store.is_dir() else []:
            snap = self._snapshot_from_meta(_read_json(meta_path), meta_path.parent)
            if volume is None or snap.volume == volume:
                found.append(snap)
        return sorted(found, key=lambda s: (s.created_at, s.name))

    def snapshot(self, volume: str, name: str, labels: dict[str, str] | None = None) -> Snapshot:
        source = self._volume_dir(volume)
        target = self._snapshot_dir(name)
        labels = check_labels(labels)
        existing = self.get_snapshot(name)
        if existing is not None:
            return self._same_source(existing, volume)
        if not source.is_dir():
            raise ConfigError(f"cannot snapshot volume {volume!r}: it does not exist under {self.root}")

        staging = self._staging(f"snapshot-{name}-")
        frozen: list[tuple[str, int]] = []  # (file, mode before) — restored if the snapshot fails
        try:
            files: dict[str, list[int]] = {}
            self._link_tree(source, staging / "data", files, freeze=frozen)
            meta = {
                "format": _FORMAT,
                "name": name,
                "volume": volume,
                "created_at": _now(),
                "labels": {**labels, LABEL_VOLUME: volume, LABEL_MANAGED_BY: MANAGED_BY},
                "file_count": len(files),
                "bytes": sum(size for size, _ in files.values()),
            }
            # Size and mtime of every file, to detect an in-place write that bypassed the rule.
            _write_json_atomically(staging / "files.json", {"files": files}, compact=True)
            _write_json_atomically(staging / "snapshot.json", meta)
            _make_dirs_read_only(staging / "data")
            os.chmod(staging, 0o755)  # mkdtemp made it private; a snapshot is as readable as its volume
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(staging, target)
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                # Taken concurrently under the same name: the first one stands, and its files share
                # our inodes, so they stay read-only.
                frozen.clear()
                _remove_tree(staging)
                return self._same_source(self.get_snapshot(name), volume)  # type: ignore[arg-type]
        except BaseException:
            for path, mode in reversed(frozen):
                try:
                    os.chmod(path, mode)
                except OSError:
                    pass
            _remove_tree(staging)
            raise
        log.info(
            "snapshot %s of volume %s: %d files, %d bytes (hard links, read-only)",
            name,
            volume,
            meta["file_count"],
            meta["bytes"],
        )
        return self._snapshot_from_meta(meta, target)

    @staticmethod
    def _same_source(existing: Snapshot, volume: str) -> Snapshot:
        if existing.volume != volume:
            raise ConfigError(
                f"snapshot {existing.name!r} already exists and was taken from volume "
                f"{existing.volume!r}, not {volume!r}; choose another snapshot name"
            )
        return existing

    def _link_tree(
        self,
        source: str | Path,
        target: str | Path,
        files: dict[str, list[int]],
        *,
        freeze: list[tuple[str, int]] | None,
        prefix: str = "",
    ) -> None:
        """Recreate ``source``'s tree at ``target`` with hard links; with ``freeze``, make files read-only.

        Three system calls per file (stat, chmod, link) and plain strings: this loop is the whole cost
        of a snapshot, and it does not depend on the files' sizes.
        """
        os.mkdir(target, 0o755)
        with os.scandir(source) as entries:
            ordered = sorted(entries, key=lambda e: e.name)
        for entry in ordered:
            src, dst, rel = entry.path, os.path.join(target, entry.name), prefix + entry.name
            if entry.is_symlink():
                os.symlink(os.readlink(src), dst)
            elif entry.is_dir(follow_symlinks=False):
                self._link_tree(src, dst, files, freeze=freeze, prefix=rel + "/")
            elif entry.is_file(follow_symlinks=False):
                info = entry.stat(follow_symlinks=False)
                mode = stat.S_IMODE(info.st_mode)
                if freeze is not None and mode & 0o222:
                    freeze.append((src, mode))
                    os.chmod(src, mode & ~0o222)  # chmod changes ctime only: size and mtime stay as recorded
                self._link_file(src, dst)
                files[rel] = [info.st_size, info.st_mtime_ns]
            else:
                raise DataError(
                    f"{src}: not a regular file, directory or symlink; a volume can hold only those"
                )

    @staticmethod
    def _link_file(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError as exc:
            if exc.errno == errno.EMLINK:  # the inode has as many links as the filesystem allows
                shutil.copy2(src, dst)  # keeps mode and mtime, so verification still holds
            elif exc.errno == errno.EXDEV:
                raise ConfigError(
                    f"{src} is on another filesystem than the snapshot store; local snapshots "
                    "use hard links, so the volume must not be a separate mount"
                ) from None
            elif exc.errno in (errno.EPERM, errno.ENOTSUP):
                raise ExternalError(
                    f"{src}: the filesystem refuses hard links ({exc.strerror}); "
                    "local snapshots need a filesystem that supports them"
                ) from None
            else:
                raise

    def verify_snapshot(self, name: str) -> list[str]:
        """Files of the snapshot whose size or mtime changed since it was taken (empty: intact)."""
        directory = self._snapshot_dir(name)
        meta_path = directory / "snapshot.json"
        if not meta_path.exists():
            raise ConfigError(f"snapshot {name!r} does not exist under {self.root}")
        changed = []
        for rel, (size, mtime_ns) in _read_json(directory / "files.json").get("files", {}).items():
            try:
                info = (directory / "data" / rel).lstat()
            except FileNotFoundError:
                changed.append(rel)
                continue
            if info.st_size != size or info.st_mtime_ns != mtime_ns:
                changed.append(rel)
        return sorted(changed)

    def delete_snapshot(self, name: str) -> bool:
        directory = self._snapshot_dir(name)
        if not directory.exists():
            return False
        os.chmod(directory, stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
        trash = self._staging(f"deleting-snapshot-{name}-")
        os.rename(directory, trash / "snapshot")
        _remove_tree(trash)
        log.info("deleted local snapshot %s", name)
        return True

    # -- clones --------------------------------------------------------------------------------------
    def clone(self, snapshot: str, new_volume: str, labels: dict[str, str] | None = None) -> Volume:
        target = self._volume_dir(new_volume)
        labels = check_labels(labels)
        snap = self.get_snapshot(snapshot)
        if snap is None:
            raise ConfigError(f"cannot clone snapshot {snapshot!r}: it does not exist under {self.root}")
        existing = self.get_volume(new_volume)
        if existing is not None:
            if existing.labels.get(LABEL_CLONED_FROM) != snapshot:
                raise ConfigError(
                    f"volume {new_volume!r} already exists and was not cloned from snapshot "
                    f"{snapshot!r}; choose another volume name"
                )
            return existing
        changed = self.verify_snapshot(snapshot)
        if changed:
            raise DataError(
                f"snapshot {snapshot!r} was modified after it was taken (a file of its volume was "
                f"written in place instead of replaced): {', '.join(changed[:10])}"
            )

        staging = self._staging(f"clone-{new_volume}-")
        meta_path = self._volume_meta(new_volume)
        try:
            self._link_tree(Path(snap.path or ""), staging / "data", {}, freeze=None)
            meta = {
                "format": _FORMAT,
                "name": new_volume,
                "created_at": _now(),
                "labels": {**labels, LABEL_CLONED_FROM: snapshot, LABEL_MANAGED_BY: MANAGED_BY},
            }
            _write_json_atomically(meta_path, meta)
            try:
                os.rename(staging / "data", target)
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                _remove_tree(staging)
                existing = self.get_volume(new_volume)
                if existing is None or existing.labels.get(LABEL_CLONED_FROM) != snapshot:
                    raise ConfigError(f"volume {new_volume!r} was created concurrently from another source")
                return existing
        except BaseException:
            if not target.exists():
                meta_path.unlink(missing_ok=True)
            _remove_tree(staging)
            raise
        _remove_tree(staging)
        log.info("cloned snapshot %s into volume %s", snapshot, new_volume)
        return self._volume(new_volume)
