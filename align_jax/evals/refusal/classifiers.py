"""Trained refusal classifiers bundled with what they need to run on new text.

``PromptClassifier``: a binary head (policy violation or not) with its decision threshold and a
category head over the hazard taxonomy. The binary head reads ``select_features(feats, layers,
pooling)`` (one or several layers concatenated, content mean / last token / both; ``layers=()``
means ``(layer,)``); the category head reads layer ``layer`` (mean ++ last).
``ResponseClassifier``: a 3-way head over RESPONSE_CLASSES on (prompt, response) features.
``featurize`` runs a decoder over texts; ``make_response_judge`` turns a response classifier and
a model into the ``judge(prompts, responses) -> labels`` that ``metrics.generation_rates`` takes.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

from align_jax.evals.refusal.features import encode_for_features, extract_features, select_features, truncated_decoder
from align_jax.evals.refusal.probe import Head, positive_score, predict_logits
from align_jax.evals.refusal.taxonomy import HAZARD_CODES


@dataclasses.dataclass(frozen=True)
class PromptClassifier:
    layer: int
    head: Head  # 2 classes: 0 benign, 1 violation
    threshold: float  # flag when positive_score > threshold
    category_head: Head | None = None  # len(HAZARD_CODES) classes
    layers: tuple[int, ...] = ()  # layers the binary head reads; () = (layer,)
    pooling: str = "mean_last"

    @property
    def feature_layers(self) -> tuple[int, ...]:
        return self.layers or (self.layer,)

    def view(self, feats: dict[int, np.ndarray]) -> np.ndarray:
        """layer -> [N, 2D] features (from ``featurize``) -> what the binary head reads."""
        return select_features(feats, self.feature_layers, self.pooling)

    def scores(self, features: np.ndarray) -> np.ndarray:  # view(...) [N, F] -> [N]
        return positive_score(self.head, features)

    def flags(self, features: np.ndarray) -> np.ndarray:  # [N] bool
        return self.scores(features) > self.threshold

    def categories(self, features: np.ndarray) -> list[str]:
        if self.category_head is None:
            raise ValueError("this PromptClassifier has no category head")
        logits = np.asarray(predict_logits(self.category_head, features))
        return [HAZARD_CODES[i] for i in logits.argmax(-1)]


@dataclasses.dataclass(frozen=True)
class ResponseClassifier:
    layer: int
    head: Head  # len(RESPONSE_CLASSES) classes

    def predict(self, features: np.ndarray) -> np.ndarray:  # [N, 2D] -> [N] labels
        return np.asarray(predict_logits(self.head, features)).argmax(-1)


def featurize(
    model, tokenizer, template: str, prompts: Sequence[str], responses: Sequence[str] | None = None,
    *, layers: Sequence[int], batch_size: int = 32, bucket: int = 16,
) -> dict[int, np.ndarray]:
    """layer -> [N, 2D] features of prompts (or of prompt/response chats when responses given)."""
    if responses is not None and len(responses) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    enc = [
        encode_for_features(tokenizer, template, p, None if responses is None else responses[i])
        for i, p in enumerate(prompts)
    ]
    model = truncated_decoder(model, max(layers))
    return extract_features(model, enc, layers, batch_size=batch_size, bucket=bucket)


def make_response_judge(
    clf: ResponseClassifier, model, tokenizer, template: str, **kw
) -> Callable[[Sequence[str], Sequence[str]], np.ndarray]:
    """``judge(prompts, responses) -> [N]`` labels (RESPONSE_CLASSES order)."""

    def judge(prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        feats = featurize(model, tokenizer, template, prompts, responses, layers=[clf.layer], **kw)
        return clf.predict(feats[clf.layer])

    return judge
