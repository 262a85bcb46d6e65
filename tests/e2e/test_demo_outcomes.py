"""The demo's outcomes (design §2: CSV ``request_id,label``) as ``branchops monitor`` reads them: a day's
label is written only once the days its window covers have come, each once, and they join the logged
requests by the demo's X-Request-ID."""

from __future__ import annotations

from pathlib import Path

from branchops.demo import Demo
from branchops.monitoring import traffic

DAYS = {
    "dates": ["2017-01-03", "2017-01-04", "2017-01-05", "2017-01-06", "2017-01-09", "2017-01-10"],
    "y": [1, 0, 0, 1, 1, 0],
    "label_horizon": 5,
}


def read(folder: Path) -> dict[tuple[str, int], int]:
    return traffic.read_outcomes(
        {p.name: p.read_bytes() for p in folder.iterdir() if p.suffix in (".csv", ".jsonl")}
    )


def test_outcomes_are_written_once_known_and_read_by_monitor(tmp_path):
    folder = tmp_path / "outcomes"
    # four days replayed: with a 5-day label window none of their labels is known yet
    assert Demo.write_outcomes(folder, "AAPL", DAYS, replayed=4) == 0
    assert read(folder) == {}
    # five replayed: the first day's window (its day and the 4 after it) has come, its label is known
    assert Demo.write_outcomes(folder, "AAPL", DAYS, replayed=5) == 1
    assert read(folder) == {("AAPL/2017-01-03", 0): 1}
    # a later check adds only the new ones; nothing is written twice, no temporary file is left
    assert Demo.write_outcomes(folder, "AAPL", DAYS, replayed=5) == 0
    assert Demo.write_outcomes(folder, "AAPL", DAYS, replayed=6) == 1
    assert read(folder) == {("AAPL/2017-01-03", 0): 1, ("AAPL/2017-01-04", 0): 0}
    assert sorted(p.name for p in folder.iterdir()) == ["demo-2017-01-03.csv", "demo-2017-01-04.csv"]
    assert (folder / "demo-2017-01-04.csv").read_text().splitlines() == [
        "request_id,label",
        "AAPL/2017-01-04,0",
    ]
    # the day the window proposes (monitor's default: the latest day the outcomes' request ids end with)
    assert str(traffic.latest_day([key[0] for key in read(folder)])) == "2017-01-04"
