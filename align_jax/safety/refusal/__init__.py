"""Refusal classifiers: hazard taxonomy, benign-but-sensitive prompts, hidden-state prompt and
response classifiers, their metrics, and the saved response judge that ``evals`` loads
(see ``run.py`` for the experiment's data flow, ``classifiers.save_response_judge`` for the judge)."""
