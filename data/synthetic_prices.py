"""Synthetic DJIA-shaped prices, for trying the project without the Kaggle data.

``python data/synthetic_prices.py FOLDER`` writes files in the Kaggle dataset's per-ticker layout
(``<TICKER>_2006-01-01_to_2018-01-01.csv`` with Date,Open,High,Low,Close,Volume,Name), generated from a
seeded one-factor market model so that runs are repeatable, and a file named ``SYNTHETIC``: branchops
announces everything trained on a folder holding it as synthetic (``data.source: script``).
"""

from __future__ import annotations

import csv
import math
import random
import sys
from datetime import date
from pathlib import Path

TICKERS = (
    "AABA AAPL AMZN AXP BA CAT CSCO CVX DIS GE GOOGL GS HD IBM INTC JNJ JPM KO MCD MMM MRK MSFT NKE PFE "
    "PG TRV UNH UTX VZ WMT XOM"
).split()
MARKER = "SYNTHETIC"


def business_days(start: date, end: date) -> list[date]:
    """The New York Stock Exchange's trading days: the only days the reference validation accepts."""
    import exchange_calendars

    sessions = exchange_calendars.get_calendar("XNYS", start=start.isoformat(), end=end.isoformat()).sessions
    return [day.date() for day in sessions]


def generate(
    folder: str | Path, seed: int = 2006, start: date = date(2006, 1, 3), end: date = date(2017, 12, 29)
) -> Path:
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    days = business_days(start, end)
    market = [rng.gauss(0.0003, 0.011) for _ in days]
    for ticker in TICKERS:
        beta, idio, price = rng.uniform(0.6, 1.4), rng.uniform(0.008, 0.02), rng.uniform(20, 200)
        with open(out / f"{ticker}_2006-01-01_to_2018-01-01.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["Date", "Open", "High", "Low", "Close", "Volume", "Name"])
            for day, m in zip(days, market):
                open_ = price * math.exp(rng.gauss(0, 0.003))
                close = price * math.exp(beta * m + rng.gauss(0, idio))
                high = max(open_, close) * math.exp(abs(rng.gauss(0, 0.006)))
                low = min(open_, close) * math.exp(-abs(rng.gauss(0, 0.006)))
                writer.writerow(
                    [
                        day.isoformat(),
                        f"{open_:.2f}",
                        f"{high:.2f}",
                        f"{low:.2f}",
                        f"{close:.2f}",
                        int(rng.lognormvariate(15, 0.5)),
                        ticker,
                    ]
                )
                price = close
    (out / MARKER).write_text("These prices are SYNTHETIC (data/synthetic_prices.py), not market data.\n")
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python data/synthetic_prices.py FOLDER")
    print(generate(sys.argv[1]))
