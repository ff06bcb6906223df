"""Training: the epoch loop and records (Training), stage 1 (Teacher), stages 2-3 (Distill) and the
ranking metrics (Metrics)."""
