"""Errors a user can act on, each with the exit code the CLI returns for it.

Exit codes (documented in the README):
  0  success, or nothing to do (already done, a bot commit)
  1  the stage ran and failed
  2  usage error (unknown command, bad option)
  3  invalid configuration
  4  refused by the approval gate: nothing ran, nothing changed
  5  a merge request could not be merged (conflict, not open, not approved)
  6  an external system (registry, Kubeflow, Kubernetes, GitHub, Jenkins) failed or timed out
  7  bad input data
  8  a library or program the stage needs is not installed (nothing ran)
  9  not found: no such template, run, merge request or component
 10  another run of the same stage is in progress here (nothing was done)
"""

from __future__ import annotations


class BranchopsError(Exception):
    """Base for errors that end a command with a clear message and no traceback."""

    exit_code = 1


class StageFailed(BranchopsError):
    exit_code = 1


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
    """What the user named does not exist (a template, a run, a merge request, a component)."""

    exit_code = 9


class StageBusy(BranchopsError):
    """Another run of the same stage holds its lock on this machine."""

    exit_code = 10
