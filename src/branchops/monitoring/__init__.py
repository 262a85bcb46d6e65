"""Serving monitoring: prediction drift, the live metric, and the retraining merge request it proposes."""
