"""Without data the demo says how to get some; --synthetic data is DJIA-shaped, passes the reference
project's own validation, and is marked as synthetic so that every report can say so."""

from __future__ import annotations

import json

from click.testing import CliRunner

from branchops import synthetic
from branchops.cli import main


def test_demo_without_data_explains_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    monkeypatch.delenv("KAGGLE_KEY", raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "no-kaggle"))
    result = CliRunner().invoke(main, ["demo", "--workdir", str(tmp_path / "demo")])
    assert result.exit_code == 1
    assert "--data DIR" in result.output and "KAGGLE_USERNAME" in result.output and "--synthetic" in result.output
    assert not (tmp_path / "demo").exists()


def test_synthetic_prices_pass_the_reference_validation_and_are_marked(tmp_path):
    from components import consolidate, validate

    folder = synthetic.generate(tmp_path / "raw")
    assert synthetic.is_synthetic(folder)
    assert len(list(folder.glob("*_2006-01-01_to_2018-01-01.csv"))) == 31
    consolidate.run(source_dir=str(folder), data_dir=str(tmp_path / "data"))
    report = validate.run(data_dir=str(tmp_path / "data"))
    assert json.loads(json.dumps(report))  # a JSON summary, as every component returns
    assert (tmp_path / "data" / "validated.parquet").exists()
    # the same seed gives the same prices
    again = synthetic.generate(tmp_path / "again")
    assert (again / "AAPL_2006-01-01_to_2018-01-01.csv").read_bytes() == \
        (folder / "AAPL_2006-01-01_to_2018-01-01.csv").read_bytes()
