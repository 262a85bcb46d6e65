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
    # 3,020 trading days -> 3,019 returns -> 3,014 labelled days with a 5-day window, less the purge gaps
    assert meta["rows"] == 3014 and meta["purge_gap"] == meta["label_horizon"] == 1
    total = sum(len(arrays[f"y_{s}"]) for s in features.SPLITS)
    assert total == 3014 - 2 and arrays["X_train"].shape[1] == n_features
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
    assert (arrays["persistence_test"] == (log_return.loc[previous_days] > 0).astype(int).to_numpy()).all()
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
        features.run(
            data_dir=str(real_data_dir), work_dir=str(tmp_path / "w"), **{**PARAMS, "target": "TSLA"}
        )
    assert not (tmp_path / "w" / "features.npz").exists()


@pytest.mark.parametrize(
    "override, message",
    [
        ({"window": 0}, "window must be a whole number of days >= 1, got 0"),
        ({"window": "5"}, "window must be a whole number of days >= 1, got '5'"),
        ({"test_fraction": 0.7}, "test_fraction must be a number between 0 and 0.5 (exclusive), got 0.7"),
    ],
)
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
        holey / "validated.parquet", index=False
    )
    with pytest.raises(DataError, match="MRK has no Close on 2009-08-11 .* run the validate component first"):
        features.run(data_dir=str(holey), work_dir=str(tmp_path / "w"), **PARAMS)


def test_missing_input_says_which_component_to_run(tmp_path):
    with pytest.raises(DataError, match="validated.parquet; run the validate component first"):
        features.run(data_dir=str(tmp_path), work_dir=str(tmp_path / "w"), **PARAMS)
    shutil.rmtree(tmp_path / "w", ignore_errors=True)


TURBULENCE = {**PARAMS, "target_kind": "turbulence"}


@pytest.fixture(scope="module")
def turbulence_work_dir(real_data_dir, tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("turbulence")
    features.run(data_dir=str(real_data_dir), work_dir=str(work), **TURBULENCE)
    return work


def test_turbulence_label_features_and_persistence_follow_the_target_closes(
    real_data_dir, turbulence_work_dir
):
    """Recomputed here with pandas rolling windows, independently of the component's cumulative sums."""
    import pandas as pd

    arrays = _load(turbulence_work_dir)
    meta = json.loads((turbulence_work_dir / "features.json").read_text())
    assert meta["target_kind"] == "turbulence" and meta["label_horizon"] == 5 and meta["purge_gap"] == 5
    assert meta["feature_names"] == [
        "AAPL_mean_abs_ret_1d",
        "AAPL_mean_abs_ret_5d",
        "AAPL_mean_abs_ret_22d",
        "AAPL_mean_abs_ret_250d",
        "market_mean_abs_ret_1d",
        "market_mean_abs_ret_5d",
        "market_mean_abs_ret_22d",
        "market_mean_abs_ret_250d",
    ]
    assert "more turbulent" in meta["predicts"]
    prices = pd.read_parquet(real_data_dir / "validated.parquet")
    closes = prices.pivot(index="Date", columns="Name", values="Close").sort_index()
    returns = np.log(closes).diff().iloc[1:]
    stock = returns["AAPL"].abs()
    market = returns.mean(axis=1).abs()
    # value on day d: the mean over the k days before d (shift(1): day d itself is excluded)
    past = {k: (stock.rolling(k).mean().shift(1), market.rolling(k).mean().shift(1)) for k in (1, 5, 22, 250)}
    ahead = stock[::-1].rolling(5).mean()[::-1]  # days d .. d+4
    days = pd.to_datetime(arrays["dates_test"])
    expected_y = (ahead.loc[days] > past[22][0].loc[days]).astype(int).to_numpy()
    np.testing.assert_array_equal(arrays["y_test"], expected_y)
    expected_X = np.stack([past[k][i].loc[days].to_numpy() for i in (0, 1) for k in (1, 5, 22, 250)], axis=1)
    np.testing.assert_allclose(arrays["X_test"], expected_X, rtol=1e-5)
    # persistence: the last label known on day d (days d-5 .. d-1 against the 22 before them)
    known = (past[5][0] > past[22][0].shift(5)).astype(int)
    np.testing.assert_array_equal(arrays["persistence_test"], known.loc[days].to_numpy())
    # the last label's window ends on the last day of the data
    assert arrays["dates_test"][-1] == f"{returns.index[-5]:%Y-%m-%d}"


def test_turbulence_features_do_not_change_when_the_label_day_or_later_changes(real_data_dir, tmp_path):
    import pandas as pd

    prices = pd.read_parquet(real_data_dir / "validated.parquet")
    cut = pd.Timestamp(np.sort(prices["Date"].unique())[2000])
    changed = prices.copy()
    later = changed["Date"] >= cut
    changed.loc[later, "Close"] *= np.random.default_rng(1).uniform(0.5, 1.5, int(later.sum()))
    (tmp_path / "p").mkdir()
    changed.to_parquet(tmp_path / "p" / "validated.parquet", index=False)
    features.run(data_dir=str(real_data_dir), work_dir=str(tmp_path / "a"), **TURBULENCE)
    features.run(data_dir=str(tmp_path / "p"), work_dir=str(tmp_path / "b"), **TURBULENCE)
    a, b = _load(tmp_path / "a"), _load(tmp_path / "b")
    X_a, X_b = (np.concatenate([d[f"X_{s}"] for s in features.SPLITS]) for d in (a, b))
    label_days = pd.to_datetime(np.concatenate([a[f"dates_{s}"] for s in features.SPLITS]))
    np.testing.assert_array_equal(X_a[label_days <= cut], X_b[label_days <= cut])
    assert not np.array_equal(X_a[label_days > cut], X_b[label_days > cut])


def test_splits_are_purged_by_the_label_horizon(turbulence_work_dir):
    """Between the splits lie at least purge_gap unlabelled trading days: the last training label's
    5-day window ends before the first validation label day."""
    import pandas as pd

    arrays = _load(turbulence_work_dir)
    calendar = pd.bdate_range("2006-01-01", "2018-01-01")  # a superset of the trading days
    for earlier, later in (("train", "val"), ("val", "test")):
        last, first = pd.Timestamp(arrays[f"dates_{earlier}"][-1]), pd.Timestamp(arrays[f"dates_{later}"][0])
        days_between = ((calendar > last) & (calendar < first)).sum()
        assert days_between >= 5, (earlier, later, last, first)


def test_a_purge_gap_below_the_label_horizon_is_refused(real_data_dir, tmp_path):
    with pytest.raises(
        DataError,
        match=r"purge_gap must be a whole number of days >= the label horizon of "
        r"turbulence \(5\), got 4",
    ):
        features.run(data_dir=str(real_data_dir), work_dir=str(tmp_path / "w"), **TURBULENCE, purge_gap=4)
    assert not (tmp_path / "w" / "features.npz").exists()


def test_a_leak_of_one_days_label_into_training_is_caught():
    days = np.array([f"d{i}" for i in range(100)])
    horizon = 5
    # the last training label (row 59) looks at rows 59..63; validation starting at row 63 shares one day
    leaking = {"train": (0, 60), "val": (63, 80), "test": (85, 100)}
    with pytest.raises(DataError, match="labels leak across the splits"):
        features.check_no_leak(days, leaking, horizon)
    # one more row of gap and the windows no longer touch
    features.check_no_leak(days, {"train": (0, 60), "val": (64, 80), "test": (85, 100)}, horizon)
    bounds = features.split_bounds(100, 0.15, 0.15, purge_gap=horizon)
    features.check_no_leak(days, bounds, horizon)
    assert bounds["val"][0] - bounds["train"][1] == horizon == bounds["test"][0] - bounds["val"][1]


def test_unknown_target_kind_is_refused(tmp_path):
    with pytest.raises(DataError, match="target_kind must be one of direction, turbulence, got 'volume'"):
        features.run(
            data_dir=str(tmp_path), work_dir=str(tmp_path / "w"), **{**PARAMS, "target_kind": "volume"}
        )


UNTIL = "2015-12-31"


def _all_rows(work: Path) -> dict:
    arrays = _load(work)
    return {
        kind: np.concatenate([arrays[f"{kind}_{s}"] for s in features.SPLITS]) for kind in ("X", "y", "dates")
    }


@pytest.mark.parametrize("params", [PARAMS, TURBULENCE], ids=["direction", "turbulence"])
def test_data_until_ends_the_data_no_later_day_is_used(real_data_dir, tmp_path, params):
    """Every price after the window's last day is replaced by noise: a run with data_until must not
    notice (no feature, no label, no row from those days), while a run on all the data does."""
    import pandas as pd

    prices = pd.read_parquet(real_data_dir / "validated.parquet")
    later = prices["Date"] > pd.Timestamp(UNTIL)
    assert later.sum() > 0
    changed = prices.copy()
    changed.loc[later, "Close"] *= np.random.default_rng(2).uniform(0.5, 1.5, int(later.sum()))
    (tmp_path / "changed").mkdir()
    changed.to_parquet(tmp_path / "changed" / "validated.parquet", index=False)

    windowed = {}
    for name, folder in (("original", real_data_dir), ("changed", tmp_path / "changed")):
        work = tmp_path / name
        features.run(data_dir=str(folder), work_dir=str(work), **params, data_until=UNTIL)
        windowed[name] = _all_rows(work)
        meta = json.loads((work / "features.json").read_text())
        assert meta["data_until"] == UNTIL and meta["last_price_day"] == "2015-12-31"
        assert meta["splits"]["test"]["last_date"] <= UNTIL
    for kind in ("X", "y", "dates"):
        np.testing.assert_array_equal(windowed["original"][kind], windowed["changed"][kind])
    assert windowed["original"]["dates"][-1] <= UNTIL

    # without the window the same change reaches the rows: the comparison above could have failed
    features.run(data_dir=str(tmp_path / "changed"), work_dir=str(tmp_path / "all"), **params)
    everything = _all_rows(tmp_path / "all")
    assert everything["dates"][-1] > UNTIL


def test_a_label_whose_window_reaches_past_data_until_is_dropped(real_data_dir, tmp_path):
    """Turbulence labels look 5 trading days ahead (the label day and the 4 after it): with the window
    ending on 2015-12-31 the last label day is 2015-12-24, four trading days before, whose window
    2015-12-24 .. 2015-12-31 ends on the last day; the days after it, labelled on all the data, are gone."""
    import pandas as pd

    features.run(data_dir=str(real_data_dir), work_dir=str(tmp_path / "w"), **TURBULENCE, data_until=UNTIL)
    windowed = _all_rows(tmp_path / "w")
    prices = pd.read_parquet(real_data_dir / "validated.parquet")
    trading_days = [f"{d:%Y-%m-%d}" for d in sorted(prices["Date"].unique())]
    last_label_day = trading_days[trading_days.index(UNTIL) - 4]
    assert last_label_day == "2015-12-24"
    assert windowed["dates"][-1] == last_label_day

    rows = features.rows_by_day(str(real_data_dir), "AAPL", "turbulence", first_day="2015-12-01")
    needing_later_days = [d for d in rows["dates"] if last_label_day < d <= UNTIL]
    assert needing_later_days == ["2015-12-28", "2015-12-29", "2015-12-30", "2015-12-31"]
    assert not set(needing_later_days) & set(windowed["dates"])
    # a kept row is the same as on all the data: the window removes rows, it does not change them
    index = rows["dates"].index(last_label_day)
    np.testing.assert_array_equal(rows["X"][index], windowed["X"][-1])
    assert rows["y"][index] == windowed["y"][-1]


@pytest.mark.parametrize(
    "until, message",
    [
        ("2015-13-01", "data_until must be a day as YYYY-MM-DD (or empty for all data), got '2015-13-01'"),
        ("31/12/2015", "data_until must be a day as YYYY-MM-DD"),
        ("2005-06-30", "data_until 2005-06-30 is before the first trading day of the data (2006-01-03)"),
    ],
)
def test_a_data_until_that_is_not_a_day_of_the_data_is_refused(real_data_dir, tmp_path, until, message):
    with pytest.raises(DataError) as err:
        features.run(
            data_dir=str(real_data_dir), work_dir=str(tmp_path / "w"), **TURBULENCE, data_until=until
        )
    assert message in str(err.value)
    assert not (tmp_path / "w" / "features.npz").exists()


def test_rows_by_day_are_the_training_rows_of_those_days(real_data_dir, turbulence_work_dir):
    """What the demo sends the served model for a day is what training computed for that day."""
    arrays = _load(turbulence_work_dir)
    first, last = arrays["dates_test"][0], arrays["dates_test"][-1]
    rows = features.rows_by_day(str(real_data_dir), "AAPL", "turbulence", first_day=first, last_day=last)
    assert rows["dates"] == arrays["dates_test"].tolist() and rows["label_horizon"] == 5
    np.testing.assert_array_equal(rows["X"], arrays["X_test"])
    np.testing.assert_array_equal(rows["y"], arrays["y_test"])
    assert rows["feature_names"] == features.turbulence_feature_names("AAPL")
