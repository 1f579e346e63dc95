"""Scoring answers to the factual QA set (:mod:`align_jax.data.factual_qa`): the matcher lives
with the rewards (:mod:`align_jax.rewards.answers`), where online RL uses it too."""

from align_jax.rewards.answers import answer_matches, normalize_answer

__all__ = ["answer_matches", "normalize_answer"]
