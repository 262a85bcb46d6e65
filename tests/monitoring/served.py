"""A served model for the monitoring tests, on the real DJIA prices: its features, its reference statistics
as components/export writes them, and a project whose local serving backend serves it (a version folder
with the export's metadata, and the routing the local backend keeps when its server is stopped), with a
training record giving the value validated at training. Traffic is written in the prediction log's
format (docs/monitoring.md), outcomes in the outcome files' format.

The model is a fixed logistic function of the features (no training: the statistics under test only see
its probabilities), and its label is the real one: whether AAPL closes above the previous day's close.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from branchops.serving.prediction_log import log_file_name
from components.export import reference_statistics
from tests.foundation import record_history as history
from tests.foundation import training_records
from tests.foundation.conftest import make_project

TICKERS = ("AAPL", "MSFT", "IBM", "JPM", "XOM")
WINDOW = 4
INPUT, OUTPUT, LABEL_OUTPUT = "lagged_returns", "probability_up", "direction"
VERSION = history.FIRST_VERSION  # the version training run 0 of training_records produces
# the reference: every other day of calm years (in-distribution traffic: the days between them); the
# shifted traffic: the 2008 crash, real days the model never saw
TRAIN_DAYS = ("2012-01-01", "2014-12-31")
CRASH_DAYS = ("2008-09-01", "2009-06-30")

CONFIG = """\
approvers:
  build-components: [lead]
  kf-pipeline: [lead]
  training: [lead, head-of-ds]
  deploy-model: [head-of-ds]
data:
  source: script
  script: data/make.py
  until: 2014-12-31
serving:
  model_name: djia
notifications:
  - kind: log_file
"""


@dataclass
class Days:
    days: list[str]
    features: np.ndarray  # [days, len(TICKERS) * WINDOW], float32
    labels: np.ndarray  # AAPL up on that day

    def between(self, first: str, last: str) -> Days:
        return self._where(np.array([first <= d <= last for d in self.days]))

    def alternate(self, offset: int) -> Days:
        """Every other day from ``offset``: the reference is built from one half of a period and
        in-distribution traffic drawn from the other, rows the reference has never seen (as traffic is)."""
        return self._where(np.arange(len(self.days)) % 2 == offset)

    def _where(self, pick: np.ndarray) -> Days:
        return Days([d for d, p in zip(self.days, pick) if p], self.features[pick], self.labels[pick])


def feature_names() -> list[str]:
    return [f"{t}_ret_lag{lag}" for t in TICKERS for lag in range(1, WINDOW + 1)]


def load_days(djia_dir: Path) -> Days:
    """Lagged log returns of TICKERS over the days all of them traded, and AAPL's direction that day."""
    closes: dict[str, dict[str, float]] = {}
    for ticker in TICKERS:
        with open(djia_dir / f"{ticker}_2006-01-01_to_2018-01-01.csv", newline="") as handle:
            closes[ticker] = {
                row["Date"]: float(row["Close"]) for row in csv.DictReader(handle) if row["Close"]
            }
    days = sorted(set.intersection(*(set(c) for c in closes.values())))
    returns = np.array(
        [[math.log(closes[t][b] / closes[t][a]) for t in TICKERS] for a, b in zip(days, days[1:])]
    )
    days = days[1:]
    rows, labels, kept = [], [], []
    for i in range(WINDOW, len(days)):
        rows.append([returns[i - lag, j] for j in range(len(TICKERS)) for lag in range(1, WINDOW + 1)])
        labels.append(int(returns[i, 0] > 0))
        kept.append(days[i])
    return Days(kept, np.asarray(rows, dtype="float32"), np.asarray(labels, dtype=int))


# a fixed model: momentum of AAPL and of the market, squashed
WEIGHTS = np.array([8.0 if lag == 1 else 2.0 for _ in TICKERS for lag in range(1, WINDOW + 1)])


def predict(features: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-(features.astype("float64") @ WEIGHTS)))).astype("float32")


def metadata(train: Days) -> dict:
    """The export metadata of the served version, as components/export writes it (what serving reads)."""
    sample = train.features[:3]
    return {
        "input": INPUT,
        "outputs": [OUTPUT, LABEL_OUTPUT],
        "signature": "serving_default",
        "n_features": len(feature_names()),
        "feature_names": feature_names(),
        "threshold": 0.5,
        "version": VERSION,
        "sample": {
            "instances": sample.tolist(),
            "predictions": {OUTPUT: predict(sample).tolist(), LABEL_OUTPUT: [1, 0, 1]},
        },
        "reference": reference_statistics(train.features, feature_names(), predict(train.features), OUTPUT),
    }


class Served:
    """The project, its serving state and the traffic written to its prediction log."""

    def __init__(self, project, train: Days, validated_roc_auc: float):
        self.project = project
        self.path: Path = project.path
        self.state = self.path / ".branchops"
        version_dir = self.state / "serving" / "djia" / str(VERSION)
        (version_dir / "assets.extra").mkdir(parents=True)
        (version_dir / "saved_model.pb").write_bytes(b"")  # the local backend looks for it
        (version_dir / "assets.extra" / "branchops_model.json").write_text(json.dumps(metadata(train)))
        (self.state / "serving" / "routing.json").write_text(json.dumps({"stable": VERSION}))
        self.log_dir = self.state / "prediction-log"
        self.outcomes_dir = self.state / "outcomes"
        self.clock = datetime(2026, 11, 29, 12, 0, tzinfo=timezone.utc)
        run = training_records.training_run(
            0,
            [
                training_records.experiment(
                    "baseline", 0, {}, training_records.metrics(validated_roc_auc, 0.55)
                )
            ],
            best="baseline",
            passed=True,
        )
        training_records.write(self.path, "training", [run])

    def log_lines(self, days: Days, indices, *, file: str | None = None) -> str:
        """One logged request per row (request id "AAPL/<day>"), appended to ``file`` (default: a new one)."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        lines = []
        for i in indices:
            self.clock += timedelta(seconds=1)
            row = days.features[i : i + 1]
            probability = predict(row)
            lines.append(
                json.dumps(
                    {
                        "time": self.clock.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                        "request_id": f"AAPL/{days.days[i]}",
                        "model": "djia",
                        "version": VERSION,
                        "label": "stable",
                        "inputs": {INPUT: row.tolist()},
                        "outputs": {OUTPUT: probability.tolist(), LABEL_OUTPUT: [int(probability[0] >= 0.5)]},
                    }
                )
            )
        name = file or log_file_name(self.clock, 4242)
        with open(self.log_dir / name, "a") as handle:
            handle.write("".join(line + "\n" for line in lines))
        return name

    def outcomes(self, days: Days, indices, name: str = "outcomes.csv") -> None:
        self.outcomes_dir.mkdir(parents=True, exist_ok=True)
        with open(self.outcomes_dir / name, "a") as handle:
            if handle.tell() == 0:
                handle.write("request_id,label\n")
            handle.write("".join(f"AAPL/{days.days[i]},{days.labels[i]}\n" for i in indices))

    def deploy_tip(self) -> str:
        return self.project.tip("deploy-model")

    def monitor_json(self) -> Path:
        return self.log_dir / "monitor.json"


def served_project(tmp_path: Path, train: Days, validated_roc_auc: float = 0.55) -> Served:
    return Served(make_project(tmp_path, CONFIG), train, validated_roc_auc)
