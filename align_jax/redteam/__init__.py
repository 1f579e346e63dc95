"""Automated red-teaming: attacks on a model's refusals (GCG so far)."""
