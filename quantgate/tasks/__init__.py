"""How a task runs a model over a dataset and keeps per-example outputs."""
