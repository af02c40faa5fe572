"""Evaluation: a split's per-class correct / total counts with flip TTA (counts.py), the many / medium / few
groups and their accuracies (metrics.py), and the HS analysis measures of a trained model (analysis.py)."""
