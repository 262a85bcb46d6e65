"""Fixtures shared by the components' tests: the real DJIA files and the stages run on them once."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
TINY_MODEL = {
    "hidden_units": [16],
    "dropout": 0.1,
    "learning_rate": 0.003,
    "batch_size": 128,
    "epochs": 3,
    "patience": 2,
    "seed": 7,
}


def djia_folder() -> Path:
    override = os.environ.get("BRANCHOPS_DJIA_DATA")
    return Path(override) if override else REPO_ROOT.parent / "shared" / "data" / "djia"


@pytest.fixture(scope="session")
def djia_dir() -> Path:
    folder = djia_folder()
    if not (folder / "AAPL_2006-01-01_to_2018-01-01.csv").is_file():
        pytest.skip(f"the real DJIA files are not in {folder} (set BRANCHOPS_DJIA_DATA to their folder)")
    return folder


@pytest.fixture
def small_source(djia_dir: Path, tmp_path: Path) -> Path:
    """Three tickers' first 80 trading days (real rows), as per-ticker files, for malformed-input tests."""
    folder = tmp_path / "source"
    folder.mkdir()
    for ticker in ("AAPL", "MSFT", "IBM"):
        name = f"{ticker}_2006-01-01_to_2018-01-01.csv"
        lines = (djia_dir / name).read_text().splitlines(keepends=True)
        (folder / name).write_text("".join(lines[:81]))
    return folder


@pytest.fixture(scope="session")
def real_data_dir(djia_dir: Path, tmp_path_factory) -> Path:
    """consolidate + validate on all real files, once per session (read-only for tests)."""
    from components import consolidate, validate

    data = tmp_path_factory.mktemp("djia-data")
    consolidate.run(source_dir=str(djia_dir), data_dir=str(data))
    validate.run(data_dir=str(data))
    return data


@pytest.fixture(scope="session")
def real_work_dir(real_data_dir: Path, tmp_path_factory) -> Path:
    from components import features

    work = tmp_path_factory.mktemp("djia-work")
    features.run(
        data_dir=str(real_data_dir),
        work_dir=str(work),
        target="AAPL",
        window=5,
        val_fraction=0.15,
        test_fraction=0.15,
    )
    return work


@pytest.fixture(scope="session")
def trained_work_dir(real_work_dir: Path, tmp_path_factory) -> Path:
    """A tiny model trained for a few epochs on the real features, then evaluated."""
    from components import evaluate, train

    work = tmp_path_factory.mktemp("djia-trained")
    for name in ("features.npz", "features.json"):
        shutil.copy(real_work_dir / name, work / name)
    train.run(work_dir=str(work), **TINY_MODEL)
    evaluate.run(work_dir=str(work))
    return work
