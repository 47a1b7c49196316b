"""Training data: the demo corpora built from PyPI packages (`demo`) and user files (`formats`)."""
