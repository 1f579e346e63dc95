"""Safety classifiers and the data they learn from; evals load what is trained here, never train.

Layer: above ``training`` (the fine-tuned classifier uses the engine's step), below ``evals``
(``evals/suites/refusal_generation`` loads a saved response judge). :mod:`refusal`: the hazard
taxonomy, prompt and response sets, hidden-state features, heads, thresholds, the saved judge, and
the classifier experiment (``experiments/refusal_classifier.py``, ``experiments/refusal_judge.py``).
:mod:`cai`: Constitutional AI critique -> revision data (preference pairs and SFT conversations) by
the packaged constitution. :mod:`prompt_records`: the refusal prompt splits as prompt records with
``info["harmful"]`` for the ``refusal_precision`` RL reward (``configs/grpo_safety.py``).
"""
