"""Evaluation of checkpoints: lm-evaluation-harness over local tasks (harness.py, tasks/), the
items those tasks ask (items.py) and how answers are scored (metrics.py), the pipeline's eval
stage (stage.py), and the fixed probe questions every run answers (probe.py)."""
