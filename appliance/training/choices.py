"""The named choices of the training objective, importable without torch (the CLI lists them)."""

AGGREGATES = ("mean", "rmse", "p95", "max")  # how the per-position KL of a sequence folds into one number
