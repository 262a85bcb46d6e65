from __future__ import annotations

import threading
from dataclasses import dataclass, field

import requests

from tests.serving.model_factory import SAMPLE


@dataclass
class RequestLoop:
    """Sends unlabelled :predict requests until stopped; every answer other than 200 is a failure.

    Entering waits until five requests were answered (the loop is running against a live server)."""

    url: str
    sent: int = 0
    answered: int = 0  # requests answered 200 with predictions
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _started: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> RequestLoop:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._started.wait(60):
            self.__exit__()
            raise AssertionError(
                f"no 5 answers in 60 s from {self.url} ({self.sent} sent): {self.failures[:3]}"
            )
        return self

    def _run(self) -> None:
        session = requests.Session()
        i = 0
        while not self._stop.is_set():
            try:
                r = session.post(self.url, json={"instances": [SAMPLE[i % len(SAMPLE)]]}, timeout=30)
                if r.status_code != 200 or "predictions" not in r.json():
                    self.failures.append(f"HTTP {r.status_code}: {r.text[:200]}")
                else:
                    self.answered += 1
            except Exception as exc:  # noqa: BLE001 - a dropped connection is a failed request too
                self.failures.append(repr(exc))
            self.sent += 1
            i += 1
            if self.answered >= 5:
                self._started.set()

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(60)
