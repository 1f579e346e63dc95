"""Judging refusals in real generations: the substring judge (a cross-check of the learned response
judge, which ``align_jax.safety.refusal`` trains and saves and ``suites.refusal_generation`` loads)."""
