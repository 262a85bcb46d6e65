"""``branchops ui``: a local, read-only web dashboard over the records (issue 17).

Everything it shows is read from git (``branchops.records``, ``branchops.lineage``): the runs of each
stage branch, each model version's lineage drawn as a graph, the metrics and plots of training runs side
by side, and what is serving now. It writes nothing, and it listens on loopback unless told otherwise.
"""
