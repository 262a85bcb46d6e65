"""The CI port. Its contract is a command, not a Python interface: on every push to a stage branch the CI
runs ``branchops run --for-branch BRANCH``. The production backend is Jenkins (:mod:`branchops.ci.jenkins`,
configured by ``ci.jenkins``); without one, ``branchops mr merge`` runs the stages itself
(:mod:`branchops.merging`).
"""
