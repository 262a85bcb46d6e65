"""monitoring.schedule: a schedule Jenkins' TimerTrigger would refuse is refused when the configuration
is loaded, naming the file, the line, the key and what Jenkins expects.

What Jenkins accepts is taken from Jenkins core, not from branchops: the grammar of
core/src/main/antlr4/hudson/scheduler/CrontabParser.g4 and CrontabLexer.g4, the bounds and step checks
of hudson/scheduler/BaseParser.java, CronTabList.create (TZ= first line, comments) and the examples of
the TimerTrigger help (hudson/triggers/TimerTrigger/help-spec.jelly). Jenkins cannot read such a trigger
from the job's config.xml (Trigger.readResolve throws): the sync fails, after the review, or, where
XStream's robust converters skip what they cannot read, the job is kept without its trigger and never
runs. Hence the refusal when the configuration is loaded.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from branchops.config import load_config
from branchops.errors import ConfigError

from .conftest import REPO_ROOT

# The TimerTrigger help's own examples, its aliases, and the edges of BaseParser's checks.
ACCEPTED = [
    "H */6 * * *",
    "H/15 * * * *",
    "H(0-29)/10 * * * *",
    "45 9-16/2 * * 1-5",
    "H H(8-15)/2 * * 1-5",
    "H H 1,15 1-11 *",
    "TZ=Europe/London\n# This job needs to be run in the morning, London time\nH 8 * * *\nH(0-30) 17 * * *",
    "@yearly",
    "@annually",
    "@monthly",
    "@weekly",
    "@daily",
    "@midnight",
    "@hourly",
    "0 0 * * 7",  # 0 and 7 are both Sunday
    "H/60 * * * *",  # a hash step may be as long as the field (0-59)
    "H H H/28 * *",  # H in the day of month hashes within 1-28
    "H H * * H/7",  # and in the day of week within 0-6
    "*/90 * * * *",  # a step past the field's end is accepted (it runs at minute 0)
    "  H\t*/6 * * *  ",  # fields separated by spaces or tabs, the line trimmed
]

# (spec, what the message must say)
REFUSED = [
    ("H */6 * * * *", "has 6 fields; Jenkins expects 5, MINUTE HOUR DOM MONTH DOW"),  # Quartz-style seconds
    ("H */6 * *", "has 4 fields"),
    ("@DAILY", "'@DAILY' is not an alias Jenkins knows (@yearly"),  # the lexer's aliases are lower case
    ("@reboot", "not an alias Jenkins knows"),  # Vixie cron has it, Jenkins does not
    ("60 * * * *", "MINUTE: 60 is out of range 0-59"),
    ("H 24 * * *", "HOUR: 24 is out of range 0-23"),
    ("H H 0 * *", "DOM: 0 is out of range 1-31"),
    ("H H * 13 *", "MONTH: 13 is out of range 1-12"),
    ("H H * * 8", "DOW: 8 is out of range 0-7"),
    ("30-10 * * * *", "MINUTE: the range 30-10 ends before it starts"),
    ("*/0 * * * *", "MINUTE: the step must be positive, got 0"),
    ("H/61 * * * *", "MINUTE: H/61: the step must be within 1-60"),
    ("H H H/29 * *", "DOM: H/29: the step must be within 1-28"),
    ("H H * * H/8", "DOW: H/8: the step must be within 1-7"),
    ("H(0-7)/9 * * * *", "MINUTE: H(0-7)/9: the step must be within 1-8"),
    ("h * * * *", "MINUTE: 'h' is not a term Jenkins knows"),
    ("H H ? * *", "DOM: '?' is not a term"),  # Quartz
    ("H H L * *", "DOM: 'L' is not a term"),  # Quartz
    ("H H * JAN *", "MONTH: 'JAN' is not a term"),  # names: Vixie cron, not Jenkins
    ("H H * * MON-FRI", "DOW: 'MON-FRI' is not a term"),
    ("1,,2 * * * *", "MINUTE: '' is not a term"),
    ("H (0-7) * * *", "HOUR: '(0-7)' is not a term"),  # no space inside a field
    ("*/99999999999 * * * *", "MINUTE: 99999999999 is too large a number"),  # Integer.parseInt
    ("TZ=Mars/Olympus_Mons\nH * * * *", "'Mars/Olympus_Mons' is not a time zone"),
    ("# every six hours", "no schedule line: the monitor job would never run"),
    ("", "no schedule line"),
]


def write_config(root: Path, schedule: str) -> Path:
    data = yaml.safe_load((REPO_ROOT / "config" / "branchops.yaml").read_text(encoding="utf-8"))
    data["monitoring"] = {"drift": {"psi_threshold": 0.2}, "schedule": schedule}
    path = root / "config" / "branchops.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


@pytest.mark.parametrize("schedule", ACCEPTED)
def test_a_schedule_jenkins_accepts_is_accepted(tmp_path: Path, schedule: str) -> None:
    write_config(tmp_path, schedule)
    assert load_config(tmp_path).monitoring.schedule == schedule


@pytest.mark.parametrize(("schedule", "reason"), REFUSED)
def test_a_schedule_jenkins_refuses_is_refused_at_load_naming_file_line_and_key(
    tmp_path: Path, schedule: str, reason: str
) -> None:
    path = write_config(tmp_path, schedule)
    line = next(
        number
        for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if text.strip().startswith("schedule:")
    )
    with pytest.raises(ConfigError) as refused:
        load_config(tmp_path)
    message = str(refused.value)
    assert f"{path}:{line}: monitoring.schedule: not a schedule Jenkins accepts" in message
    assert reason in message


def test_the_default_schedule_is_accepted_and_every_six_hours() -> None:
    config = load_config(REPO_ROOT)
    assert config.monitoring.schedule == "H */6 * * *"
