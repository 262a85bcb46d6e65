"""branchops: machine-learning delivery as git branches."""

from typing import Literal

__version__ = "0.1.0"

# The four stages in workflow order: the one list every module uses (here, so that the CLI can name them
# without importing the configuration's schema).
STAGES = ("build-components", "kf-pipeline", "training", "deploy-model")
Stage = Literal["build-components", "kf-pipeline", "training", "deploy-model"]
