"""Greedy (and sampled) generation from chat conversations: the helper every layer that generates
shares (the eval suites, the red-team runner, the Constitutional AI pipeline of ``align_jax.safety.cai``,
the experiments that rank several samples per prompt).

``chat_ids(lm, messages)`` renders a conversation (any number of turns) with the model's chat
template and the generation prompt; ``generate_greedy(lm, prompts, ...)`` runs the KV-cache
sampler at temperature 0 over token-id prompts, ``batch_size`` at a time with one fixed shape;
``generate_sampled`` draws ``n`` samples per prompt at a temperature the same way.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np
from tqdm.auto import tqdm

from align_jax.models.chat import encode_chat
from align_jax.models.interventions import Intervention
from align_jax.models.registry import LoadedModel
from align_jax.sampling.decoding import SamplingParams
from align_jax.sampling.sampler import sample

PROMPT_BUCKET = 32  # prompt widths are rounded up to a multiple of this (one compile per width)


def chat_ids(lm: LoadedModel, messages: Sequence[Mapping[str, str]]) -> list[int]:
    """The conversation rendered with the model's chat template, generation prompt added."""
    if lm.chat_template is None:
        raise ValueError(f"model {lm.source!r} has no chat template; chat prompts need one")
    return encode_chat(lm.tokenizer, messages, template=lm.chat_template, add_generation_prompt=True).ids


@dataclasses.dataclass(frozen=True)
class Generation:
    text: str  # decoded completion, special tokens skipped
    token_ids: tuple[int, ...]  # the completion, stop token included
    logprobs: np.ndarray  # [len(token_ids)] model log-probs (log_softmax of raw logits)
    stopped: bool  # ended with an end-of-text token (False: hit max_new_tokens)

    @property
    def answer_logprobs(self) -> np.ndarray:
        """Log-probs of the completion without its stop token."""
        return self.logprobs[:-1] if self.stopped else self.logprobs


def generate_greedy(
    lm: LoadedModel,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    batch_size: int,
    progress: bool = False,
    desc: str = "generating",
    intervention: Intervention | None = None,
) -> list[Generation]:
    """Greedy completions of token-id prompts; every batch has the same shape (one compile);
    ``intervention`` (no per-row ``patch``) edits the prefill and every decode step (steering)."""
    params = SamplingParams(temperature=0.0, max_new_tokens=int(max_new_tokens))
    return [g[0] for g in _generate(lm, prompts, params, batch_size, progress, desc, intervention)]


def generate_sampled(
    lm: LoadedModel,
    prompts: Sequence[Sequence[int]],
    *,
    n: int,
    max_new_tokens: int,
    batch_size: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    progress: bool = False,
    desc: str = "sampling",
) -> list[list[Generation]]:
    """``n`` samples of each token-id prompt (``[len(prompts)][n]``), ``batch_size`` prompts
    (``batch_size * n`` rows) at a time with one fixed shape. Batch ``b`` uses PRNG seed
    ``seed + b``: the same call gives the same samples."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    params = SamplingParams(temperature=float(temperature), top_p=float(top_p), n=int(n),
                            max_new_tokens=int(max_new_tokens), seed=int(seed))
    return _generate(lm, prompts, params, batch_size, progress, desc, None)


def _generate(
    lm: LoadedModel,
    prompts: Sequence[Sequence[int]],
    params: SamplingParams,
    batch_size: int,
    progress: bool,
    desc: str,
    intervention: Intervention | None,
) -> list[list[Generation]]:  # [len(prompts)][params.n]
    if not prompts:
        raise ValueError("no prompts to generate for")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    tok = lm.tokenizer
    eos = sorted(tok.eos_ids)
    width = -(-max(len(p) for p in prompts) // PROMPT_BUCKET) * PROMPT_BUCKET
    out: list[list[Generation]] = []
    for b, start in enumerate(tqdm(range(0, len(prompts), batch_size), desc=desc, disable=not progress)):
        batch = [list(p) for p in prompts[start:start + batch_size]]
        real = len(batch)
        batch += [batch[-1]] * (batch_size - real)
        res = sample(lm.model, batch, dataclasses.replace(params, seed=params.seed + b), eos_ids=eos,
                     pad_id=tok.pad_id or 0, prompt_bucket=width, intervention=intervention)
        tokens, mask = np.asarray(res.tokens), np.asarray(res.completion_mask)
        logps = np.asarray(res.model_logprobs, np.float64)
        for i in range(real):
            gens = []
            for row in range(i * params.n, (i + 1) * params.n):
                m = int(mask[row].sum())
                ids = tuple(int(t) for t in tokens[row, :m])
                gens.append(Generation(
                    text=tok.decode(list(ids), skip_special_tokens=True),
                    token_ids=ids,
                    logprobs=logps[row, :m],
                    stopped=bool(m) and ids[-1] in tok.eos_ids,
                ))
            out.append(gens)
    return out
