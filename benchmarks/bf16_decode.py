"""bf16 vs fp32 greedy decode (issue #28): tokens/s of ours and of ``transformers.generate``, each in
both precisions (bf16 weights and compute), plus ours with bf16 weights and matmul operands but
fp32 activations (``matmul_dtype="bfloat16"``, f32 accumulation: ``ours_bf16mm``), and the gap of
each of our bf16 decodes against our fp32 one: greedy tokens equal, rows identical over all new
tokens, and |log-prob difference| on the positions before a row's tokens first differ. SmolLM2-135M-Instruct, 64-token random prompts, 128 new tokens,
EOS ignored, 3 alternating runs per side (medians); prints one JSON line.

    python -m benchmarks.bf16_decode 64 > benchmarks/results/bf16_decode_b64.json
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

from benchmarks.quiet import Contention

P, NEW, REPS = 64, 128, 3  # prompt tokens, new tokens, timed runs per side


def main(B: int) -> None:  # B: prompts in the batch
    import jax
    import numpy as np
    import torch
    import transformers

    from align_jax.models.registry import load_model
    from align_jax.sampling import SamplingParams, sample

    rng = np.random.default_rng(0)
    lm32 = load_model("smollm2-135m-instruct")
    prompts = rng.integers(100, lm32.model.cfg.vocab_size, (B, P)).tolist()
    params = SamplingParams(temperature=0.0, max_new_tokens=NEW, ignore_eos=True)
    lm16 = load_model("smollm2-135m-instruct", param_dtype="bfloat16", dtype="bfloat16")
    lmmm = load_model("smollm2-135m-instruct", param_dtype="bfloat16", matmul_dtype="bfloat16")
    path = Path(lm32.source)
    hf = {d: transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=d).eval()
          for d in (torch.float32, torch.bfloat16)}

    def ours(lm):
        return jax.block_until_ready(sample(lm.model, prompts, params, hoist_weights=True))

    def theirs(m):
        with torch.no_grad():
            ids = torch.tensor(prompts)
            return m.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=NEW,
                              min_new_tokens=NEW, pad_token_id=0)

    first = {"fp32": ours(lm32), "bf16": ours(lm16), "bf16mm": ours(lmmm)}
    impls = {"ours_fp32": lambda: ours(lm32), "ours_bf16": lambda: ours(lm16), "ours_bf16mm": lambda: ours(lmmm),
             "hf_fp32": lambda: theirs(hf[torch.float32]), "hf_bf16": lambda: theirs(hf[torch.bfloat16])}
    times = {k: [] for k in impls}
    with Contention() as c:
        for _ in range(REPS):
            for k, f in impls.items():
                t = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t)
    res = {k: B * NEW / statistics.median(v) for k, v in times.items()}
    gaps = {}
    for name in ("bf16", "bf16mm"):
        t32, t16 = np.asarray(first["fp32"].tokens), np.asarray(first[name].tokens)
        l32, l16 = np.asarray(first["fp32"].model_logprobs), np.asarray(first[name].model_logprobs)
        same = (t32 == t16)
        prefix = np.cumprod(same, axis=1).astype(bool)  # positions before the first differing token
        gap = np.abs(l32 - l16)[prefix]
        gaps[name] = {"greedy_tokens_equal": float(same.mean()), "rows_identical": float(prefix.all(1).mean()),
                      "first_divergence_median": float(np.median(prefix.sum(1))),
                      "logp_gap_mean": float(gap.mean()), "logp_gap_max": float(gap.max())}
    print(json.dumps({"batch": B, "tok_s": res, "runs_s": times, **gaps["bf16"], "vs_fp32": gaps, **c.record()}))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 64)
