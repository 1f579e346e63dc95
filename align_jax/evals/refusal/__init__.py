"""Refusal quality: hazard taxonomy, benign-but-sensitive prompts, hidden-state prompt and
response classifiers, and refusal metrics (see ``run.py`` for the experiment's data flow)."""
