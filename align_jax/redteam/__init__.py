"""Automated red-teaming: attacks on a model's refusals (templates, GCG, PAIR), judges, the runner."""
