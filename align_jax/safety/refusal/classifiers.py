"""Trained refusal classifiers bundled with what they need to run on new text.

``PromptClassifier``: a binary head (policy violation or not) with its decision threshold and a
category head over the hazard taxonomy. The binary head reads ``select_features(feats, layers,
pooling)`` (one or several layers concatenated, content mean / last token / both; ``layers=()``
means ``(layer,)``); the category head reads layer ``layer`` (mean ++ last).
``ResponseClassifier``: a 3-way head over RESPONSE_CLASSES on (prompt, response) features.
``featurize`` runs a decoder over texts; ``make_response_judge`` turns a response classifier and
a model into the ``judge(prompts, responses) -> labels`` that ``metrics.generation_rates`` takes.
``save_response_judge`` / ``load_response_judge``: a trained response classifier as one ``.npz``
(head arrays, standardisation, and JSON naming the layer, the model whose features it reads and its
held-out report), so an evaluation loads a judge instead of training one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any, Callable, Mapping, Sequence

import jax.numpy as jnp
import numpy as np

from align_jax.safety.refusal.features import encode_for_features, extract_features, select_features, truncated_decoder
from align_jax.safety.refusal.probe import Head, positive_score, predict_logits
from align_jax.safety.refusal.taxonomy import HAZARD_CODES


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


@dataclasses.dataclass(frozen=True)
class SavedJudge:
    classifier: ResponseClassifier
    model_id: str  # the registered name or path its features were computed with
    source: str  # that model's LoadedModel.source (the weights file or folder)
    report: Mapping[str, Any]  # fit_response_classifier's held-out report


JUDGE_FORMAT = 1


def save_response_judge(path: str | os.PathLike, clf: ResponseClassifier, *, model_id: str, source: str,
                        report: Mapping[str, Any]) -> pathlib.Path:
    """Writes ``clf`` (and what it reads: model, layer) to ``path`` (an ``.npz``); returns the path."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": JUDGE_FORMAT, "layer": int(clf.layer), "model_id": model_id, "source": source, "report": report}
    arrays = {f"params/{k}": np.asarray(v) for k, v in clf.head.params.items()}
    with open(path, "wb") as f:  # a file object: np.savez would append ".npz" to a path without it
        np.savez(f, meta=np.array(json.dumps(meta)), mean=np.asarray(clf.head.mean), scale=np.asarray(clf.head.scale),
                 **arrays)
    return path


def load_response_judge(path: str | os.PathLike) -> SavedJudge:
    """The judge ``save_response_judge`` wrote (FileNotFoundError naming the path if there is none)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no saved response judge at {path}")
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        if meta.get("format") != JUDGE_FORMAT:
            raise ValueError(f"{path}: response judge format {meta.get('format')!r}, expected {JUDGE_FORMAT}")
        params = {k.removeprefix("params/"): jnp.asarray(z[k]) for k in z.files if k.startswith("params/")}
        head = Head(params, jnp.asarray(z["mean"]), jnp.asarray(z["scale"]))
    return SavedJudge(ResponseClassifier(meta["layer"], head), meta["model_id"], meta["source"], meta["report"])


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
