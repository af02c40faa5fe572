"""Training: the one loop (loop.py) and what it needs (optim.py, checkpoint.py), the stage recipes (stage1.py,
stage2.py, posthoc.py) with their shared start and end (stage.py), evaluation and model selection
(select.py), and the parent run's cached features (features.py)."""
