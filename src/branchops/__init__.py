"""branchops: machine-learning delivery as git branches."""

__version__ = "0.1.0"
