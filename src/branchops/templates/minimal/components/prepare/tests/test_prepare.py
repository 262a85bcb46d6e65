"""prepare on real CSV files written here: the split it writes, and the files it refuses."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from components.common.dataset import SPLIT_FILE, load_split
from components.common.errors import DataError
from components.prepare import run

PROJECT_ROOT = Path(__file__).resolve().parents[3]
HEADER = "x1,x2,x3,x4,label\n"


def points_csv(folder: Path, rows: int = 100, seed: int = 5) -> Path:
    rng = random.Random(seed)
    lines = [HEADER]
    for i in range(rows):
        x = [round(rng.uniform(-2, 2), 6) for _ in range(4)]
        lines.append(",".join(str(v) for v in x) + f",{i % 2}\n")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "points.csv"
    path.write_text("".join(lines))
    return path


def replace_line(path: Path, line: int, text: str) -> None:
    lines = path.read_text().splitlines(keepends=True)
    lines[line - 1] = text + "\n"
    path.write_text("".join(lines))


def test_every_row_lands_in_exactly_one_split(tmp_path):
    source = points_csv(tmp_path / "raw", rows=100)
    result = run(source_dir=str(source.parent), work_dir=str(tmp_path / "work"), test_fraction=0.25)

    split = load_split(tmp_path / "work")
    assert (result["rows"], result["train_rows"], result["val_rows"], result["test_rows"]) == (
        100,
        55,
        20,
        25,
    )
    assert [split[f"X_{part}"].shape for part in ("train", "val", "test")] == [(55, 4), (20, 4), (25, 4)]
    assert split["X_train"].dtype == np.float32 and split["y_train"].dtype == np.int64
    file_rows = np.loadtxt(source, delimiter=",", skiprows=1, dtype="float32")
    split_rows = np.vstack(
        [np.column_stack([split[f"X_{part}"], split[f"y_{part}"]]) for part in ("train", "val", "test")]
    )
    assert sorted(map(tuple, split_rows.tolist())) == sorted(map(tuple, file_rows.tolist()))
    assert result["positive_fraction"] == 0.5


def test_the_split_is_the_same_on_every_run(tmp_path):
    source = points_csv(tmp_path / "raw")
    run(source_dir=str(source.parent), work_dir=str(tmp_path / "a"))
    run(source_dir=str(source.parent), work_dir=str(tmp_path / "b"))
    a, b = load_split(tmp_path / "a"), load_split(tmp_path / "b")
    for name in a:
        assert np.array_equal(a[name], b[name]), name


@pytest.mark.parametrize(
    ("line", "text", "expected"),
    [
        (5, "0.1,0.2,abc,0.4,1", "line 5, column x3: 'abc' is not a number"),
        (7, "0.1,0.2,0.3,nan,0", "line 7, column x4: 'nan' is not a finite number"),
        (9, "0.1,0.2,0.3,0.4,2", "line 9, column label: '2' is not a class: the label is 0 or 1"),
        (11, "0.1,0.2,0.3,0.4", "line 11: 4 fields, expected 5"),
        (1, "x1,x2,x3,x5,label", "line 1: the header is x1,x2,x3,x5,label; expected x1,x2,x3,x4,label"),
    ],
)
def test_a_bad_row_is_refused_naming_its_line_and_column(tmp_path, line, text, expected):
    source = points_csv(tmp_path / "raw")
    replace_line(source, line, text)
    with pytest.raises(DataError) as caught:
        run(source_dir=str(source.parent), work_dir=str(tmp_path / "work"))
    assert str(caught.value) == f"{source}, {expected}"
    assert not (tmp_path / "work" / SPLIT_FILE).exists()


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "the file is empty"),
        (HEADER.encode() + b"0.1,0.2,0.3,\xff,1\n", "not UTF-8 text"),
        ((HEADER + "0.1,0.2,0.3,0.4,1\n" * 5).encode(), "5 rows; at least 20 are needed"),
    ],
)
def test_an_unusable_file_is_refused(tmp_path, content, expected):
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "points.csv").write_bytes(content)
    with pytest.raises(DataError, match=expected):
        run(source_dir=str(tmp_path / "raw"), work_dir=str(tmp_path / "work"))


@pytest.mark.parametrize(
    ("fractions", "expected"),
    [
        ({"test_fraction": 0.0}, "test_fraction must lie between 0 and 1"),
        ({"val_fraction": 1.5}, "val_fraction must lie between 0 and 1"),
        ({"test_fraction": 0.5, "val_fraction": 0.5}, "no rows left to train on"),
    ],
)
def test_fractions_that_leave_no_split_are_refused(tmp_path, fractions, expected):
    source = points_csv(tmp_path / "raw")
    with pytest.raises(DataError, match=expected):
        run(source_dir=str(source.parent), work_dir=str(tmp_path / "work"), **fractions)


def test_a_missing_file_or_a_single_class_is_refused(tmp_path):
    with pytest.raises(DataError, match="points.csv not found"):
        run(source_dir=str(tmp_path / "nowhere"), work_dir=str(tmp_path / "work"))
    source = points_csv(tmp_path / "raw")
    source.write_text(HEADER + "0.1,0.2,0.3,0.4,1\n" * 40)
    with pytest.raises(DataError, match="holds only one class"):
        run(source_dir=str(source.parent), work_dir=str(tmp_path / "work"))


def test_the_command_line_exits_7_on_bad_data_and_prints_the_result_otherwise(tmp_path):
    source = points_csv(tmp_path / "raw")
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    ok = subprocess.run(
        [
            sys.executable,
            "-m",
            "components",
            "prepare",
            "--params",
            json.dumps({"source_dir": str(source.parent), "work_dir": str(tmp_path / "work")}),
        ],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout.splitlines()[-1])["test_rows"] == 20

    replace_line(source, 3, "0.1,,0.3,0.4,1")
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "components",
            "prepare",
            "--params",
            json.dumps({"source_dir": str(source.parent), "work_dir": str(tmp_path / "work2")}),
        ],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert bad.returncode == 7
    assert "line 3, column x2: '' is not a number" in bad.stderr
