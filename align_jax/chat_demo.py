"""Chat with the embedded default model (`make chat`): batched greedy answers and their speed.

    python -m align_jax.chat_demo [--model=smollm2-135m-instruct] [--max_new_tokens=48]

Loads SmolLM2-135M-Instruct from its pip package, formats a few questions with its chat template,
answers them in one batched, jit-compiled KV-cache sampling call (greedy), and prints the answers
with the generation speed.
"""

from __future__ import annotations

import time

import numpy as np
from absl import app, flags

from align_jax.models import DEFAULT_MODEL, load_model
from align_jax.models.chat import encode_chat
from align_jax.sampling import SamplingParams, sample

_MODEL = flags.DEFINE_string("model", DEFAULT_MODEL, "Registered model name.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 48, "Tokens to generate per answer.")

QUESTIONS = (
    "What is the capital of France?",
    "Give me three tips for staying focused while studying.",
    "In one sentence, what is a large language model?",
    "Is it safe to mix bleach and ammonia for cleaning?",
)


def main(argv):
    del argv
    t0 = time.perf_counter()
    lm = load_model(_MODEL.value)
    print(f"loaded {_MODEL.value} from {lm.source} in {time.perf_counter() - t0:.1f}s "
          f"({lm.model.cfg.num_params() / 1e6:.0f}M parameters, chat format {lm.chat_template})")
    prompts = [
        encode_chat(lm.tokenizer, [{"role": "user", "content": q}], template=lm.chat_template,
                    add_generation_prompt=True).ids
        for q in QUESTIONS
    ]
    params = SamplingParams(temperature=0.0, max_new_tokens=_MAX_NEW.value)
    for label in ("compile + generate", "generate"):
        t0 = time.perf_counter()
        out = sample(lm.model, prompts, params, eos_ids=sorted(lm.tokenizer.eos_ids), pad_id=lm.tokenizer.pad_id or 0)
        tokens = np.asarray(out.tokens)
        elapsed = time.perf_counter() - t0
        new_tokens = int(np.asarray(out.completion_mask).sum())
        print(f"{label}: {new_tokens} new tokens in {elapsed:.2f}s ({new_tokens / elapsed:.1f} tokens/s)")
    mask = np.asarray(out.completion_mask).astype(bool)
    logps = np.asarray(out.model_logprobs)
    for q, row, m, lp in zip(QUESTIONS, tokens, mask, logps):
        answer = lm.tokenizer.decode(row[m].tolist(), skip_special_tokens=True).strip()
        print(f"\nuser: {q}\nassistant: {answer}\n  (mean token log-prob {lp[m].mean():.3f})")


if __name__ == "__main__":
    app.run(main)
