"""Steering and interpretability on the decoder's interventions (``models/interventions.py``):
activations at chosen sites, difference-in-means and refusal directions, CAA, integrated-gradients
attribution and GrAInS, the logit lens and activation patching. Pure functions over a model and
token ids; nothing here hooks Python into the forward."""
