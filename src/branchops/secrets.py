"""Secrets are referenced in config, resolved at use, and masked in every output.

A secret is only ever named in config (an environment variable, or a CI credential id that the CI binds
to an environment variable). When code resolves one, its value is registered here, and the logging
filter installed by :func:`install_log_masking` replaces it with ``***`` in every log line.
"""

from __future__ import annotations

import logging
import os
import re
import threading

_lock = threading.Lock()
_known_values: set[str] = set()

MASK = "***"


def credential_env_name(credential_id: str) -> str:
    """The environment variable a CI binds a credential id to (``github-token`` →
    ``BRANCHOPS_CRED_GITHUB_TOKEN``)."""
    return "BRANCHOPS_CRED_" + re.sub(r"[^A-Za-z0-9]", "_", credential_id).upper()


def register(value: str | None) -> None:
    """Remember a secret value so that it is masked wherever it would be printed."""
    if value and len(value) >= 4:
        with _lock:
            _known_values.add(value)


def mask(text: str) -> str:
    with _lock:
        values = sorted(_known_values, key=len, reverse=True)
    for value in values:
        text = text.replace(value, MASK)
    return text


class MaskingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if _known_values:
            record.msg = mask(record.getMessage())
            record.args = ()
        return True


def install_log_masking(logger: logging.Logger | None = None) -> None:
    target = logger or logging.getLogger()
    if not any(isinstance(f, MaskingFilter) for f in target.filters):
        target.addFilter(MaskingFilter())
    for handler in target.handlers:
        if not any(isinstance(f, MaskingFilter) for f in handler.filters):
            handler.addFilter(MaskingFilter())


def read_env(name: str) -> str | None:
    value = os.environ.get(name)
    register(value)
    return value
