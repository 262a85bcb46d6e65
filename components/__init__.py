"""Pipeline components of the reference project (DJIA 30 "sentiment" model).

Each sub-package is one Kubeflow pipeline component with a ``run(...) -> dict`` function taking only
JSON-serialisable arguments.  They depend on nothing from ``branchops`` so that each one runs inside a
plain image with only its own pinned requirements; see components/README.md.
"""

COMPONENTS = ("consolidate", "validate", "features", "train", "evaluate", "export")
