from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from components import features
from components.common.errors import DataError

PARAMS = {"target": "AAPL", "window": 5, "val_fraction": 0.15, "test_fraction": 0.15}


def _load(work: Path) -> dict:
    with np.load(work / "features.npz") as data:
        return {k: data[k] for k in data.files}


def test_real_data_shapes_names_and_chronological_split(real_work_dir):
    arrays = _load(real_work_dir)
    meta = json.loads((real_work_dir / "features.json").read_text())
    n_features = 31 * 5
    assert meta["n_features"] == n_features and len(meta["feature_names"]) == n_features
    assert meta["feature_names"][:2] == ["AABA_ret_lag1", "AAPL_ret_lag1"]
    assert meta["feature_names"][-1] == "XOM_ret_lag5"
    # 3,020 trading days -> 3,019 returns -> 3,014 labelled days with a 5-day window
    assert meta["rows"] == 3014
    total = sum(len(arrays[f"y_{s}"]) for s in features.SPLITS)
    assert total == 3014 and arrays["X_train"].shape[1] == n_features
    assert len(arrays["y_test"]) == round(3014 * 0.15) == len(arrays["y_val"])
    train, val, test = (arrays[f"dates_{s}"] for s in features.SPLITS)
    assert train[-1] < val[0] and val[-1] < test[0]
    assert list(np.sort(test)) == list(test)
    assert meta["splits"]["test"]["last_date"] == "2017-12-29"
    assert arrays["X_train"].dtype == np.float32 and np.isfinite(arrays["X_train"]).all()


def test_label_and_baseline_input_follow_the_target_closes(real_data_dir, real_work_dir):
    import pandas as pd

    arrays = _load(real_work_dir)
    meta = json.loads((real_work_dir / "features.json").read_text())
    prices = pd.read_parquet(real_data_dir / "validated.parquet")
    close = prices[prices["Name"] == "AAPL"].set_index("Date")["Close"].sort_index()
    log_return = np.log(close).diff()
    days = pd.to_datetime(arrays["dates_test"])
    expected_up = (log_return.loc[days] > 0).astype(int).to_numpy()
    assert (arrays["y_test"] == expected_up).all()
    previous_days = [close.index[close.index.get_loc(d) - 1] for d in days]
    assert (arrays["yesterday_up_test"] == (log_return.loc[previous_days] > 0).astype(int).to_numpy()).all()
    lag1 = meta["feature_names"].index("AAPL_ret_lag1")
    np.testing.assert_allclose(arrays["X_test"][:, lag1], log_return.loc[previous_days].to_numpy(), rtol=1e-5)


def test_features_do_not_change_when_the_label_day_or_later_changes(real_data_dir, tmp_path):
    """Perturb every price from a cut-off day on: features of labels up to that day must not move."""
    import pandas as pd

    prices = pd.read_parquet(real_data_dir / "validated.parquet")
    days = np.sort(prices["Date"].unique())
    cut = pd.Timestamp(days[2000])
    perturbed_dir = tmp_path / "perturbed-data"
    perturbed_dir.mkdir()
    rng = np.random.default_rng(0)
    later = prices["Date"] >= cut
    changed = prices.copy()
    changed.loc[later, "Close"] = changed.loc[later, "Close"] * rng.uniform(0.5, 1.5, int(later.sum()))
    changed.to_parquet(perturbed_dir / "validated.parquet", index=False)

    original, perturbed = tmp_path / "original", tmp_path / "perturbed"
    features.run(data_dir=str(real_data_dir), work_dir=str(original), **PARAMS)
    features.run(data_dir=str(perturbed_dir), work_dir=str(perturbed), **PARAMS)
    a, b = _load(original), _load(perturbed)
    X_a = np.concatenate([a[f"X_{s}"] for s in features.SPLITS])
    X_b = np.concatenate([b[f"X_{s}"] for s in features.SPLITS])
    label_days = pd.to_datetime(np.concatenate([a[f"dates_{s}"] for s in features.SPLITS]))
    up_to_cut = label_days <= cut
    assert up_to_cut.sum() > 1500
    np.testing.assert_array_equal(X_a[up_to_cut], X_b[up_to_cut])
    # and the perturbation did reach the later rows: the test would catch a feature that peeks ahead
    assert not np.array_equal(X_a[~up_to_cut], X_b[~up_to_cut])
    y_a = np.concatenate([a[f"y_{s}"] for s in features.SPLITS])
    y_b = np.concatenate([b[f"y_{s}"] for s in features.SPLITS])
    assert (y_a[label_days < cut] == y_b[label_days < cut]).all()


def test_unknown_target_lists_the_tickers(real_data_dir, tmp_path):
    with pytest.raises(DataError, match=r"target ticker 'TSLA' is not in the data; tickers: AABA, AAPL"):
        features.run(data_dir=str(real_data_dir), work_dir=str(tmp_path / "w"), **{**PARAMS, "target": "TSLA"})
    assert not (tmp_path / "w" / "features.npz").exists()


@pytest.mark.parametrize("override, message", [
    ({"window": 0}, "window must be a whole number of days >= 1, got 0"),
    ({"window": "5"}, "window must be a whole number of days >= 1, got '5'"),
    ({"test_fraction": 0.7}, "test_fraction must be a number between 0 and 0.5 (exclusive), got 0.7"),
])
def test_bad_parameters_are_named(tmp_path, override, message):
    with pytest.raises(DataError) as err:
        features.run(data_dir=str(tmp_path), work_dir=str(tmp_path / "w"), **{**PARAMS, **override})
    assert message in str(err.value)


def test_too_little_data_for_the_splits_is_rejected(real_data_dir, tmp_path):
    import pandas as pd

    prices = pd.read_parquet(real_data_dir / "validated.parquet")
    short = tmp_path / "short"
    short.mkdir()
    prices[prices["Date"] < "2006-03-01"].to_parquet(short / "validated.parquet", index=False)
    with pytest.raises(DataError, match=r"the val split would have \d+ rows \(fewer than 20\)"):
        features.run(data_dir=str(short), work_dir=str(tmp_path / "w"), **PARAMS)


def test_unvalidated_gaps_point_at_validate(real_data_dir, tmp_path):
    import pandas as pd

    prices = pd.read_parquet(real_data_dir / "validated.parquet")
    holey = tmp_path / "holey"
    holey.mkdir()
    prices[~((prices["Name"] == "MRK") & (prices["Date"] == "2009-08-11"))].to_parquet(
        holey / "validated.parquet", index=False)
    with pytest.raises(DataError, match="MRK has no Close on 2009-08-11 .* run the validate component first"):
        features.run(data_dir=str(holey), work_dir=str(tmp_path / "w"), **PARAMS)


def test_missing_input_says_which_component_to_run(tmp_path):
    with pytest.raises(DataError, match="validated.parquet; run the validate component first"):
        features.run(data_dir=str(tmp_path), work_dir=str(tmp_path / "w"), **PARAMS)
    shutil.rmtree(tmp_path / "w", ignore_errors=True)
