"""The notifier port: every stage start, end, failure and refusal reaches the channels config lists.

:func:`make_notifier` turns the ``notifications`` section into channels (console, log file, webhook,
the forge) behind one :class:`~branchops.notify.base.Notifier`. It lives here rather than beside the
interface because it imports every channel, and every channel imports the interface.
"""

from __future__ import annotations

from branchops.notify.base import Channel, Notifier


def make_notifier(config, state_dir, forge=None) -> Notifier:
    channels: list[Channel] = []
    for spec in config.notifications:
        if spec.kind == "console":
            from branchops.notify.console import ConsoleChannel

            channels.append(ConsoleChannel())
        elif spec.kind == "log_file":
            from branchops.notify.log_file import LogFileChannel

            channels.append(LogFileChannel(state_dir, spec.path))
        elif spec.kind == "webhook":
            from branchops.notify.webhook import WebhookChannel

            channels.append(WebhookChannel(spec))
        elif spec.kind == "forge" and forge is not None:
            from branchops.notify.forge import ForgeChannel

            channels.append(
                ForgeChannel(
                    forge, spec, config.forge.github.status_context if config.forge.github else "branchops"
                )
            )
    return Notifier(channels)
