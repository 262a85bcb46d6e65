"""The readers of the prediction log and the outcomes (docs/monitoring.md's formats), and the PSI's bins, on
small inputs where the right answer is known by hand."""

from __future__ import annotations

import json
import math
from datetime import date

import numpy as np
import pytest

from branchops.errors import DataError
from branchops.monitoring import drift, traffic


def line(second: int, request_id: str = "AAPL/2016-03-14") -> bytes:
    return (
        json.dumps(
            {
                "time": f"2026-11-29T12:00:{second:02d}.000000Z",
                "request_id": request_id,
                "model": "djia",
                "version": 3,
                "label": "stable",
                "inputs": {"x": [[0.1, 0.2]]},
                "outputs": {"p": [0.7]},
            }
        ).encode()
        + b"\n"
    )


def test_each_writer_may_be_writing_its_newest_file_but_an_older_file_cut_short_is_an_error():
    files = {
        "predictions-20261129T120000000000-11.jsonl": line(1) + line(2),
        "predictions-20261129T120001000000-11.jsonl": line(5) + b'{"time": "2026-11-29T12:00:09',
        "predictions-20261129T120000500000-22.jsonl": line(3) + line(6) + b'{"time"',
    }
    log = traffic.read_prediction_log(files)
    assert [r.time.second for r in log.requests] == [1, 2, 3, 5, 6]  # by time, across the writers' files
    assert [r.time.second for r in log.since("2026-11-29T12:00:03.000000Z")] == [5, 6]

    files["predictions-20261129T120000000000-11.jsonl"] = line(1) + b'{"time": "2026-11-29T12:00:02'
    with pytest.raises(
        DataError, match=r"^predictions-20261129T120000000000-11.jsonl:2: the line is cut short"
    ):
        traffic.read_prediction_log(files)


@pytest.mark.parametrize(
    "bad, message",
    [
        (b'{"time": "yesterday", "inputs": {}, "outputs": {}}\n', "'time' is not an ISO 8601 time"),
        (b'{"time": "2026-11-29T12:00:09", "inputs": {}, "outputs": {}}\n', "'time' has no time zone"),
        (b'{"time": "2026-11-29T12:00:09Z", "inputs": [], "outputs": {}}\n', "'inputs' must be an object"),
        (b"[1, 2]\n", "a prediction log line must be a JSON object"),
    ],
)
def test_a_line_that_is_not_a_log_entry_is_named_by_file_and_line(bad, message):
    files = {"predictions-20261129T120000000000-1.jsonl": line(1) + bad + line(3)}
    with pytest.raises(DataError, match=rf"^predictions-20261129T120000000000-1.jsonl:2: {message}"):
        traffic.read_prediction_log(files)


def test_branchops_own_requests_are_not_traffic():
    # the smoke test, the rollout's probes and sample predictions carry a branchops/ request id: counting
    # them would mix the export's test rows into the live distribution
    from branchops.serving.base import PROBE_REQUEST_ID, SAMPLE_REQUEST_ID, SMOKE_REQUEST_ID

    files = {
        "predictions-20261129T120000000000-11.jsonl": line(1)
        + line(2, SMOKE_REQUEST_ID)
        + line(3, PROBE_REQUEST_ID)
        + line(4, SAMPLE_REQUEST_ID)
        + line(5, None)
    }
    log = traffic.read_prediction_log(files)
    rows = traffic.rows_of(log.requests, version=3, input_name="x", output_name="p", n_features=2)
    assert rows.keys == [("AAPL/2016-03-14", 0), (None, 0)]


def test_outcomes_from_csv_and_json_lines_join_on_request_and_row():
    outcomes = traffic.read_outcomes(
        {
            "a.csv": b"request_id,label,row\nAAPL/2016-03-14,1,0\nAAPL/2016-03-15,0,\n",
            "b.jsonl": b'{"request_id": "AAPL/2016-03-16", "label": 1}\n\n'
            b'{"request_id": "r", "row": 2, "label": 0}\n',
        }
    )
    assert outcomes == {
        ("AAPL/2016-03-14", 0): 1,
        ("AAPL/2016-03-15", 0): 0,
        ("AAPL/2016-03-16", 0): 1,
        ("r", 2): 0,
    }
    rows = traffic.Rows(
        features=[[0.0]] * 5,
        prediction=[0.9, 0.2, 0.6, 0.4, 0.8],
        # the second row of a request whose first row has an outcome has none of its own
        keys=[
            ("AAPL/2016-03-14", 0),
            ("AAPL/2016-03-15", 0),
            ("no-outcome", 0),
            ("r", 2),
            ("AAPL/2016-03-14", 1),
        ],
    )
    assert traffic.joined(rows, outcomes) == ([1, 0, 0], [0.9, 0.2, 0.4])
    assert traffic.latest_day([key for key, _ in outcomes]) == date(2016, 3, 16)
    assert traffic.latest_day(["r", None, "AAPL/2016-13-40"]) is None


@pytest.mark.parametrize(
    "files, message",
    [
        ({"o.csv": b"request_id,label\nx,1\ny,2\n"}, r"^o.csv:3: 'label' must be 0 or 1"),
        ({"o.csv": b"id,label\nx,1\n"}, r"^o.csv:1: the header must name 'request_id' and 'label'"),
        (
            {"o.jsonl": b'{"request_id": "x", "label": 1}\n{"request_id": "x"\n'},
            r"^o.jsonl:2: not a JSON line",
        ),
        ({"o.csv": b"request_id,label,row\nx,1,-1\n"}, r"^o.csv:2: 'row' must be a whole number"),
        (
            {"a.csv": b"request_id,label\nx,1\n", "b.jsonl": b'{"request_id": "x", "label": 0}\n'},
            r"^b.jsonl:1: outcome of 'x' row 0 contradicts a.csv:2",
        ),
    ],
)
def test_a_bad_outcome_is_named_by_file_and_line(files, message):
    with pytest.raises(DataError, match=message):
        traffic.read_outcomes(files)


def test_psi_against_the_reference_deciles_by_hand():
    uniform = [i / 100 for i in range(101)]  # quantiles of a uniform distribution on [0, 1]
    assert drift.psi(uniform, (np.arange(1000) + 0.5) / 1000) == pytest.approx(0.0, abs=1e-12)  # 100 a bin
    # everything in the first decile: one bin holds all, nine are empty (floored at EPSILON)
    eps = drift.EPSILON
    by_hand = (1 - 0.1) * math.log(1 / 0.1) + 9 * (eps - 0.1) * math.log(eps / 0.1)
    assert drift.psi(uniform, [0.05] * 300) == pytest.approx(by_hand, rel=1e-9)


def test_a_value_many_training_rows_share_merges_the_bins_it_spans():
    """30 % of the training rows are exactly 0 (a day without a trade, say): the deciles q10, q20, q30 are
    all 0, so the first bin (x <= 0) expects 30 % of the rows, not 10 %."""
    quantiles = [0.0] * 31 + [i / 70 for i in range(1, 71)]
    edges, shares = drift.expected_shares(quantiles)
    assert edges[0] == 0.0 and shares[0] == pytest.approx(0.3) and sum(shares) == pytest.approx(1.0)
    like_training = [0.0] * 300 + list(np.linspace(0.0005, 0.9995, 700))
    assert drift.psi(quantiles, like_training) < 0.01
