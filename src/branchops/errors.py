"""Errors a user can act on, each with the exit code the CLI returns for it.

``EXIT_CODES`` is the one list of exit codes: ``branchops --help`` prints it and the README's table
says the same (a test compares the three).
"""

from __future__ import annotations

# code -> what it means; codes 2 and 130/143 come from click and the signal handlers, not from a class below
EXIT_CODES: dict[str, str] = {
    "0": "success, or nothing to do (already done, a bot commit)",
    "1": "the stage ran and failed",
    "2": "usage error (unknown option, value out of range, init into a non-empty folder)",
    "3": "invalid configuration",
    "4": "refused by the approval gate, or an approval it would not count (nothing done)",
    "5": "a merge request could not be merged (conflict, not open, not approved)",
    "6": "an external system (registry, Kubeflow, Kubernetes, GitHub, Jenkins) failed",
    "7": "bad input data",
    "8": "a library or program the stage needs is not installed (nothing ran)",
    "9": "not found: repository, template, run, merge request, component, stage branch",
    "10": "another run of the same stage is in progress here (nothing was done)",
    "130/143": "interrupted by SIGINT/SIGTERM (an 'interrupted' record; a rerun starts again)",
}


class BranchopsError(Exception):
    """Base for errors that end a command with a clear message and no traceback."""

    exit_code = 1


class StageFailed(BranchopsError):
    exit_code = 1


class BadArgument(BranchopsError):
    """A command line the user can correct, found only once the command looked (e.g. ``init`` into a
    directory that is not empty): the same code as click's own usage errors."""

    exit_code = 2


class ConfigError(BranchopsError):
    exit_code = 3


class GateRefused(BranchopsError):
    exit_code = 4


class MergeError(BranchopsError):
    exit_code = 5


class ExternalError(BranchopsError):
    exit_code = 6


class DataError(BranchopsError):
    exit_code = 7


class MissingRequirement(BranchopsError):
    """The machine lacks what a stage needs: said before the stage starts, with no record written."""

    exit_code = 8


class NotFound(BranchopsError):
    """What the user named does not exist (a repository, a template, a run, a merge request, a component)."""

    exit_code = 9


class StageBusy(BranchopsError):
    """Another run of the same stage holds its lock on this machine."""

    exit_code = 10
