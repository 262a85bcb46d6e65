"""The local storage backend: directories, hard-linked read-only snapshots, clones."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from branchops.config import BranchopsConfig, DataVolumePolicy, StorageSection
from branchops.errors import ConfigError, DataError
from branchops.storage import LABEL_COMMIT, LABEL_RUN, lineage_labels, make_storage
from branchops.storage.local import LocalStorage, open_for_write, replace_file

COMMIT = "3f9a1c0d5e7b2a4c6d8e0f1a2b3c4d5e6f7a8b9c"


def tree_digest(root: str | Path) -> dict[str, str]:
    """relative path -> sha256 of content (or 'link:<target>' / 'dir'), for byte-identity checks."""
    root = Path(root)
    out: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            out[rel] = f"link:{os.readlink(path)}"
        elif path.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "volumes")


@pytest.fixture
def data_volume(storage: LocalStorage):
    volume = storage.ensure_volume("djia-data", {"app": "djia"})
    root = Path(volume.path)
    (root / "raw").mkdir()
    (root / "raw" / "AAPL.csv").write_text("Date,Close\n2006-01-03,10.68\n")
    (root / "raw" / "MSFT.csv").write_text("Date,Close\n2006-01-03,26.84\n")
    (root / "features.bin").write_bytes(os.urandom(4096))
    (root / "latest").symlink_to("raw/AAPL.csv")
    return volume


def test_ensure_volume_is_idempotent_and_keeps_labels(storage: LocalStorage):
    first = storage.ensure_volume("models", {"team": "ds"})
    Path(first.path, "keep.txt").write_text("x")
    again = storage.ensure_volume("models", {"team": "other"})
    assert again.path == first.path
    assert again.labels["team"] == "ds"
    assert Path(again.path, "keep.txt").read_text() == "x"
    assert storage.get_volume("models") == again
    assert storage.get_volume("absent") is None


@pytest.mark.parametrize(
    "bad", ["Upper", "-lead", "trail-", "has_underscore", "a" * 64, "", "../escape", ".hidden"]
)
def test_bad_names_are_refused_with_the_reason(storage: LocalStorage, bad: str):
    with pytest.raises(ConfigError, match="name"):
        storage.ensure_volume(bad)


def test_bad_labels_are_refused(storage: LocalStorage):
    storage.ensure_volume("v")
    with pytest.raises(ConfigError, match="label"):
        storage.snapshot("v", "s", {"branchops.io/commit": "not a valid value!"})
    assert storage.get_snapshot("s") is None


def test_snapshot_records_lineage_and_is_a_read_only_hard_linked_copy(storage, data_volume):
    before = tree_digest(data_volume.path)
    snap = storage.snapshot("djia-data", "djia-data-run1", lineage_labels(COMMIT, "20260101T000000Z-3f9a1c0"))

    assert snap.volume == "djia-data" and snap.ready
    assert snap.labels[LABEL_COMMIT] == COMMIT and snap.labels[LABEL_RUN] == "20260101T000000Z-3f9a1c0"
    assert snap.created_at.endswith("Z")
    assert tree_digest(snap.path) == before
    # Cost independent of the data: the snapshot's files are the volume's inodes, not copies.
    for rel in ("raw/AAPL.csv", "features.bin"):
        assert os.stat(Path(snap.path, rel)).st_ino == os.stat(Path(data_volume.path, rel)).st_ino
        assert stat.S_IMODE(os.stat(Path(snap.path, rel)).st_mode) & 0o222 == 0
    assert Path(snap.path, "latest").is_symlink()
    assert storage.get_snapshot("djia-data-run1") == snap


def test_later_writes_to_the_volume_never_change_the_snapshot(storage, data_volume):
    snap = storage.snapshot("djia-data", "before-writes", {})
    frozen = tree_digest(snap.path)
    vol = Path(data_volume.path)

    with storage.open_for_write("djia-data", "raw/AAPL.csv", "w") as handle:  # a new version
        handle.write("Date,Close\nrewritten\n")
    with storage.open_for_write("djia-data", "raw/MSFT.csv", "a") as handle:  # append
        handle.write("2006-01-04,26.97\n")
    with storage.open_for_write("djia-data", "features.bin", "r+b") as handle:  # patch in the middle
        handle.seek(100)
        handle.write(b"\x00" * 16)
    replace_file(vol / "raw" / "IBM.csv", "Date,Close\n")  # a new file
    (vol / "latest").unlink()

    assert (vol / "raw" / "AAPL.csv").read_text() == "Date,Close\nrewritten\n"
    assert (vol / "raw" / "MSFT.csv").read_text().endswith("2006-01-03,26.84\n2006-01-04,26.97\n")
    assert tree_digest(snap.path) == frozen
    assert storage.verify_snapshot("before-writes") == []
    # The new versions are ordinary writable files again.
    assert os.stat(vol / "raw" / "MSFT.csv").st_mode & stat.S_IWUSR


def test_open_for_write_leaves_the_file_unchanged_when_the_writer_fails(storage, data_volume):
    target = Path(data_volume.path, "raw", "AAPL.csv")
    original = target.read_text()
    with pytest.raises(RuntimeError), open_for_write(target, "a") as handle:
        handle.write("half a row")
        raise RuntimeError("writer crashed")
    assert target.read_text() == original
    assert sorted(p.name for p in target.parent.iterdir()) == ["AAPL.csv", "MSFT.csv"]


def test_open_for_write_refuses_paths_outside_the_volume(storage, data_volume):
    with pytest.raises(ConfigError, match="outside volume"):
        storage.open_for_write("djia-data", "../escape.txt")


def test_an_in_place_write_that_bypasses_the_rule_is_detected(storage, data_volume):
    storage.snapshot("djia-data", "victim", {})
    # Root ignores the read-only bit: an in-place write changes the shared inode. It must not go unseen.
    with open(Path(data_volume.path, "raw", "AAPL.csv"), "a") as handle:
        handle.write("tampered\n")
    assert storage.verify_snapshot("victim") == ["raw/AAPL.csv"]
    with pytest.raises(DataError, match="modified after it was taken.*raw/AAPL.csv"):
        storage.clone("victim", "victim-clone")
    assert storage.get_volume("victim-clone") is None


def test_snapshot_is_idempotent_by_name(storage, data_volume):
    first = storage.snapshot("djia-data", "snap-a", {"x": "1"})
    Path(data_volume.path, "new.txt").write_text("later")
    again = storage.snapshot("djia-data", "snap-a", {"x": "2"})
    assert again == first
    assert "new.txt" not in tree_digest(again.path)
    storage.ensure_volume("other")
    with pytest.raises(ConfigError, match="already exists and was taken from volume 'djia-data'"):
        storage.snapshot("other", "snap-a", {})


def test_snapshot_of_a_missing_volume_is_refused(storage):
    with pytest.raises(ConfigError, match="does not exist"):
        storage.snapshot("nope", "s1", {})
    assert storage.list_snapshots() == []


def test_failure_midway_leaves_no_snapshot_and_the_volume_as_it_was(storage, data_volume):
    vol = Path(data_volume.path)
    os.mkfifo(vol / "zz-pipe")  # sorted after the regular files: the copy fails part-way
    modes = {p: stat.S_IMODE(p.lstat().st_mode) for p in vol.rglob("*") if p.is_file()}
    with pytest.raises(DataError, match="zz-pipe.*not a regular file"):
        storage.snapshot("djia-data", "broken", {})
    assert storage.get_snapshot("broken") is None
    assert storage.list_snapshots() == []
    assert not (storage.root / ".snapshots" / "broken").exists()
    assert list((storage.root / ".tmp").iterdir()) == []
    assert {p: stat.S_IMODE(p.lstat().st_mode) for p in modes} == modes


def test_clone_is_independent_of_snapshot_and_source(storage, data_volume):
    snap = storage.snapshot("djia-data", "base", {})
    frozen = tree_digest(snap.path)
    clone = storage.clone("base", "djia-data-copy", {"purpose": "reproduce"})
    assert clone.labels["branchops.io/cloned-from"] == "base" and clone.labels["purpose"] == "reproduce"
    assert tree_digest(clone.path) == frozen

    with storage.open_for_write("djia-data-copy", "raw/AAPL.csv", "a") as handle:
        handle.write("clone-only\n")
    Path(clone.path, "extra").mkdir()  # the clone's directories are writable
    with storage.open_for_write("djia-data", "raw/MSFT.csv", "w") as handle:
        handle.write("source-only\n")

    assert tree_digest(snap.path) == frozen
    assert "clone-only" not in Path(data_volume.path, "raw", "AAPL.csv").read_text()
    assert Path(clone.path, "raw", "MSFT.csv").read_text() == "Date,Close\n2006-01-03,26.84\n"
    # idempotent: the same clone again is the existing one, with its changes
    again = storage.clone("base", "djia-data-copy")
    assert again.path == clone.path
    assert "clone-only" in Path(again.path, "raw", "AAPL.csv").read_text()


def test_clone_refuses_missing_snapshot_and_foreign_volume(storage, data_volume):
    storage.snapshot("djia-data", "base", {})
    with pytest.raises(ConfigError, match="does not exist"):
        storage.clone("no-such-snapshot", "copy")
    with pytest.raises(ConfigError, match="was not cloned from snapshot 'base'"):
        storage.clone("base", "djia-data")


def test_list_and_delete(storage, data_volume):
    storage.ensure_volume("models")
    storage.snapshot("djia-data", "d1", {})
    storage.snapshot("models", "m1", {})
    storage.snapshot("djia-data", "d2", {})
    assert [s.name for s in storage.list_snapshots()] == ["d1", "m1", "d2"]
    assert [s.name for s in storage.list_snapshots("djia-data")] == ["d1", "d2"]

    assert storage.delete_snapshot("d1") is True
    assert storage.delete_snapshot("d1") is False
    assert [s.name for s in storage.list_snapshots("djia-data")] == ["d2"]
    assert Path(data_volume.path, "raw", "AAPL.csv").exists()  # the volume keeps its files

    d2 = storage.get_snapshot("d2")
    content = tree_digest(d2.path)
    assert storage.delete_volume("djia-data") is True
    assert storage.delete_volume("djia-data") is False
    assert storage.get_volume("djia-data") is None
    assert tree_digest(d2.path) == content  # snapshots outlive their volume
    assert storage.clone("d2", "djia-data-restored").name == "djia-data-restored"


def test_make_storage_resolves_the_root_against_the_repository(tmp_path: Path):
    # like every path in config, a relative root is relative to the repository (the state dir's parent)
    state_dir = tmp_path / ".branchops"
    local = make_storage(StorageSection(), state_dir)
    assert isinstance(local, LocalStorage) and local.root == tmp_path / ".branchops" / "volumes"
    config = BranchopsConfig.model_validate(
        {
            "approvers": {
                s: ["lead"] for s in ("build-components", "kf-pipeline", "training", "deploy-model")
            },
            "storage": {"local": {"root": "vols"}},
        }
    )
    assert make_storage(config, state_dir).root == tmp_path / "vols"


def test_data_volume_policies(storage):
    volume, needs_data = storage.provide_data_volume(DataVolumePolicy(policy="new", name="djia-data"))
    assert needs_data
    Path(volume.path, "AAPL.csv").write_text("x")
    assert storage.provide_data_volume(DataVolumePolicy(policy="new", name="djia-data"))[1] is False
    assert storage.provide_data_volume(DataVolumePolicy(policy="existing", name="djia-data"))[1] is False
    with pytest.raises(ConfigError, match="policy 'existing' but volume 'absent' does not exist"):
        storage.provide_data_volume(DataVolumePolicy(policy="existing", name="absent"))
    storage.snapshot("djia-data", "golden", {})
    cloned, needs_data = storage.provide_data_volume(
        DataVolumePolicy(policy="clone", name="djia-data-2", snapshot="golden")
    )
    assert not needs_data and Path(cloned.path, "AAPL.csv").read_text() == "x"


def test_files_of_a_volume_are_read_through_the_port(tmp_path):
    storage = LocalStorage(tmp_path / "volumes")
    volume = storage.ensure_volume("djia-models")
    with storage.open_for_write("djia-models", "runs/r1/metrics.json") as f:
        f.write('{"roc_auc": 0.61}')
    assert storage.read_file(volume, "runs/r1/metrics.json") == b'{"roc_auc": 0.61}'
    assert storage.list_folder(volume, "runs/r1") == ["metrics.json"]
    assert storage.read_file(volume, "runs/r2/metrics.json") is None
    assert storage.list_folder(volume, "runs/r2") is None
    assert storage.read_folder(volume, "runs/r1") == {"metrics.json": b'{"roc_auc": 0.61}'}
    assert storage.read_folder(volume, "runs/r2") is None
    with pytest.raises(ConfigError):
        storage.read_file(volume, "../escape")
