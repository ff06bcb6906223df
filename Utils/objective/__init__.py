"""The training objective: every loss term as a pure function (Losses), the adaptive all-node
estimator (Estimators) and the pruning step (Pruning)."""
