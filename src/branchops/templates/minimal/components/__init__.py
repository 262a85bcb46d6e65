"""Pipeline components of the minimal project: ``prepare`` (check the raw CSV, split it) and ``train``
(fit, evaluate, export).

Each sub-package is one Kubeflow pipeline component with a ``run(...) -> dict`` function taking only
JSON-serialisable arguments. They never import ``branchops``: each runs in a plain image holding only
``components/common``, its own folder and the entry point (docker/<name>/Dockerfile).
"""

COMPONENTS = ("prepare", "train")
