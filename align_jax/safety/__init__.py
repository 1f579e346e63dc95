"""Safety classifiers and the data they learn from; evals load what is trained here, never train.

Layer: above ``training`` (the fine-tuned classifier uses the engine's step), below ``evals``
(``evals/suites/refusal_generation`` loads a saved response judge). :mod:`refusal`: the hazard
taxonomy, prompt and response sets, hidden-state features, heads, thresholds, the saved judge, and
the classifier experiment (``experiments/refusal_classifier.py``, ``experiments/refusal_judge.py``).
"""
