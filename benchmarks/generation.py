"""Generation throughput: our jitted KV-cache sampler vs ``transformers.generate``, same weights.

    nice python -m benchmarks.generation [--batch_sizes=1,16,64] [--output_json=...]
    python -m benchmarks.generation --nohf --new_tokens=32 --repeats=1   # ours only, quick
    python -m benchmarks.generation_race     # each side of each row alone in its process (the fair race)

Greedy, 64-token prompts, 128 new tokens, EOS ignored by both (ours: ``ignore_eos``; HF:
``min_new_tokens = max_new_tokens``). Runs alternate (ours, HF, ours, HF, ...) so that machine
load hits both alike; the figure is the median over repeats. Before its timed runs each side makes
an untimed call (ours compiles; HF generates 4 tokens, so torch's first-call costs are not timed).
``--noours`` / ``--nohf`` run one side only (``generation_race.py`` uses them). Also reported: the fraction of the
compute ceiling, i.e. (new tokens/s x 2 x params FLOPs) / the fp32 matmul peak measured here with
a large ``jnp.dot``. Prints a Markdown table and writes JSON.

The rollout row (``--rollout``, on by default) is what an RL step asks of the sampler: 8 chat
prompts of mixed length (benign questions from the packaged contrast benchmark), 8 samples each at
temperature 1 (no top-k / top-p), EOS on, up to ``--rollout_new_tokens``; both sides sample, so
each side's tokens/s counts its own generated tokens up to and including each row's EOS. Every
row records the machine's load and the CPU other processes used while it ran (``quiet.py``).
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

from absl import app, flags

from benchmarks.quiet import Contention

flags.DEFINE_list("batch_sizes", ["1", "16", "64"], "batch sizes to run")
flags.DEFINE_integer("prompt_len", 64, "prompt tokens")
flags.DEFINE_integer("new_tokens", 128, "new tokens per sequence")
flags.DEFINE_integer("repeats", 2, "timed runs per implementation and batch size")
flags.DEFINE_string("model", "smollm2-135m-instruct", "registered model name")
flags.DEFINE_bool("hf", True, "also run transformers.generate (--nohf: ours only)")
flags.DEFINE_bool("ours", True, "run our sampler (--noours: transformers only; benchmarks.generation_race runs "
                  "each side alone in its process)")
flags.DEFINE_enum("hoist_weights", "auto", ["auto", "true", "false"], "sample(hoist_weights=...)")
flags.DEFINE_bool("rollout", True, "also the rollout-shaped row: 8 chat prompts of mixed length x 8 samples at "
                  "temperature 1, EOS on (tokens/s counts tokens up to and including each row's stop)")
flags.DEFINE_integer("rollout_new_tokens", 128, "rollout row: max new tokens per sample")
flags.DEFINE_string("output_json", "benchmarks/results/generation.json", "where to write the results")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    import jax
    import numpy as np

    from align_jax.models.registry import load_model
    from align_jax.training.flops import measure_matmul_peak
    from align_jax.sampling import SamplingParams, sample

    if not (FLAGS.ours or FLAGS.hf):
        raise app.UsageError("--noours --nohf leaves nothing to run")
    loaded = load_model(FLAGS.model) if FLAGS.ours else tokenizer_only(FLAGS.model)
    model = loaded.model
    path = Path(loaded.source)
    if FLAGS.hf:
        import torch
        import transformers

        hf = transformers.AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=torch.float32
        ).eval()
    threads = torch.get_num_threads() if FLAGS.hf else None
    hoist = {"auto": None, "true": True, "false": False}[FLAGS.hoist_weights]
    # Tied embeddings count once on both sides (torch's parameters() yields a shared tensor once).
    n_params = model.cfg.num_params() if FLAGS.ours else sum(p.numel() for p in hf.parameters())
    vocab = model.cfg.vocab_size if FLAGS.ours else hf.config.vocab_size
    peak = measure_matmul_peak("float32", size=2048)
    print(f"params {n_params / 1e6:.1f}M; fp32 matmul peak {peak / 1e9:.1f} GFLOP/s; "
          f"torch threads {threads}; jax devices {jax.devices()}")

    rng = np.random.default_rng(0)
    params = SamplingParams(temperature=0.0, max_new_tokens=FLAGS.new_tokens, ignore_eos=True)
    rows = []
    for batch in map(int, FLAGS.batch_sizes):
        prompts = rng.integers(100, vocab, (batch, FLAGS.prompt_len)).tolist()

        def ours():
            out = sample(model, prompts, params, pad_id=loaded.tokenizer.pad_id or 0, hoist_weights=hoist)
            return jax.block_until_ready(out)

        def theirs(new_tokens=FLAGS.new_tokens):
            with torch.no_grad():
                ids = torch.tensor(prompts)
                return hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                   max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0)

        first = None
        if FLAGS.ours:
            t = time.perf_counter()
            ours()  # compile + first run
            first = time.perf_counter() - t
        if FLAGS.hf:
            theirs(new_tokens=4)  # torch's first-call costs (thread pool, allocator) out of the timed runs
        times = {"ours": [], "hf": []}
        impls = (("ours", ours),) * FLAGS.ours + (("hf", theirs),) * FLAGS.hf
        with Contention() as machine:
            for _ in range(FLAGS.repeats):
                for name, fn in impls:
                    t = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - t)
        ours_s = statistics.median(times["ours"]) if FLAGS.ours else float("nan")
        hf_s = statistics.median(times["hf"]) if FLAGS.hf else float("nan")
        new = batch * FLAGS.new_tokens
        row = dict(
            batch=batch, ours_tok_s=new / ours_s, hf_tok_s=new / hf_s, speedup=hf_s / ours_s,
            ours_compute_fraction=new / ours_s * 2 * n_params / peak,
            hf_compute_fraction=new / hf_s * 2 * n_params / peak,
            ours_first_call_s=first, ours_runs_s=times["ours"], hf_runs_s=times["hf"], **machine.record(),
        )
        rows.append(row)
        print(json.dumps(row), flush=True)

    if FLAGS.rollout:
        rows.append(rollout_row(loaded, hf if FLAGS.hf else None, hoist, n_params, peak, ours_too=FLAGS.ours))
        print(json.dumps(rows[-1]), flush=True)

    print("\n| batch | ours tok/s | HF tok/s | ratio | ours % of peak | HF % of peak | ours 1st call s | other cores |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r["batch"] == "rollout":
            print(f"| rollout 8x8 | {r['ours_tok_s']:.1f} | {r['hf_tok_s']:.1f} | {r['speedup']:.2f}x | "
                  f"{100 * r['ours_compute_fraction']:.1f}% | {100 * r['hf_compute_fraction']:.1f}% | "
                  f"{first_call(r)} | {r['other_cores']}{' BUSY' if r['busy_machine'] else ''} |")
            continue
        print(f"| {r['batch']} | {r['ours_tok_s']:.1f} | {r['hf_tok_s']:.1f} | {r['speedup']:.2f}x | "
              f"{100 * r['ours_compute_fraction']:.1f}% | {100 * r['hf_compute_fraction']:.1f}% | "
              f"{first_call(r)} | {r['other_cores']}{' BUSY' if r['busy_machine'] else ''} |")
    out = Path(FLAGS.output_json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(
        model=FLAGS.model, params=n_params, matmul_peak_flops=peak, sides=["ours"] * FLAGS.ours + ["hf"] * FLAGS.hf, prompt_len=FLAGS.prompt_len,
        new_tokens=FLAGS.new_tokens, cpu_count=os.cpu_count(), torch_threads=threads,
        hoist_weights=FLAGS.hoist_weights,
        rows=rows), indent=2))
    print(f"wrote {out}")


def tokenizer_only(name: str):
    """``load_model``'s result without our weights (``model=None``), for a transformers-only process, so
    that its peak RSS is transformers' own."""
    from align_jax.models.registry import MODELS, LoadedModel, load_tokenizer

    path = MODELS[name].path()
    return LoadedModel(None, *load_tokenizer(path), str(path))


def first_call(row: dict) -> str:
    return "-" if row["ours_first_call_s"] is None else f"{row['ours_first_call_s']:.1f}"


def rollout_prompts(loaded, n_prompts: int = 8) -> list[list[int]]:
    """``n_prompts`` chat-formatted benign questions (the contrast benchmark's benign twins), of
    mixed lengths: the shortest, the longest and evenly spaced lengths between."""
    from align_jax.models.chat import encode_chat
    from align_jax.safety.refusal.contrast import load_pairs

    texts = sorted({p.benign for p in load_pairs()}, key=lambda t: (len(t), t))
    picks = [texts[round(i * (len(texts) - 1) / (n_prompts - 1))] for i in range(n_prompts)]
    return [encode_chat(loaded.tokenizer, [{"role": "user", "content": t}], template=loaded.chat_template,
                        add_generation_prompt=True).ids for t in picks]


def rollout_row(loaded, hf, hoist, n_params, peak, n: int = 8, repeats: int | None = None,
                ours_too: bool = True) -> dict:
    """8 prompts x ``n`` samples, temperature 1, EOS on: what an RL rollout asks of the sampler.
    Both sides sample (different draws), so each side's tokens/s counts its own generated tokens.
    ``hf=None`` runs ours only, ``ours_too=False`` transformers only."""
    import jax
    import numpy as np

    from align_jax.sampling import SamplingParams, sample

    prompts = rollout_prompts(loaded)
    tok = loaded.tokenizer
    eos = list(tok.eos_ids)
    pad = tok.pad_id if tok.pad_id is not None else 0
    new = FLAGS.rollout_new_tokens

    def ours(seed):
        p = SamplingParams(temperature=1.0, n=n, max_new_tokens=new, seed=seed)
        out = sample(loaded.model, prompts, p, eos_ids=eos, pad_id=pad, hoist_weights=hoist)
        return int(np.asarray(jax.block_until_ready(out.completion_mask)).sum())

    def theirs(seed, new=new):
        import torch

        width = max(map(len, prompts))
        ids = torch.tensor([[pad] * (width - len(q)) + q for q in prompts])
        mask = torch.tensor([[0] * (width - len(q)) + [1] * len(q) for q in prompts])
        torch.manual_seed(seed)
        with torch.no_grad():
            out = hf.generate(ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                              num_return_sequences=n, max_new_tokens=new, eos_token_id=eos, pad_token_id=pad)
        gen = out[:, width:].numpy()
        stopped = np.isin(gen, eos)
        first = np.where(stopped.any(1), stopped.argmax(1) + 1, gen.shape[1])
        return int(first.sum())

    first = None
    if ours_too:
        t = time.perf_counter()
        ours(0)
        first = time.perf_counter() - t
    if hf is not None:
        theirs(0, new=4)  # torch's first-call costs out of the timed runs
    impls = (("ours", ours),) * ours_too + (("hf", theirs),) * (hf is not None)
    times = {"ours": [], "hf": []}
    toks = {"ours": [], "hf": []}
    with Contention() as machine:
        for r in range(repeats or FLAGS.repeats):
            for name, fn in impls:
                t = time.perf_counter()
                toks[name].append(fn(r + 1))
                times[name].append(time.perf_counter() - t)
    rate = {k: statistics.median([a / b for a, b in zip(toks[k], times[k])]) if times[k] else float("nan")
            for k in times}
    return dict(
        batch="rollout", prompts=len(prompts), samples_per_prompt=n, prompt_lens=sorted(map(len, prompts)),
        max_new_tokens=new, ours_tok_s=rate["ours"], hf_tok_s=rate["hf"], speedup=rate["ours"] / rate["hf"],
        ours_compute_fraction=rate["ours"] * 2 * n_params / peak, hf_compute_fraction=rate["hf"] * 2 * n_params / peak,
        ours_first_call_s=first, ours_runs_s=times["ours"], hf_runs_s=times["hf"],
        ours_tokens=toks["ours"], hf_tokens=toks["hf"], **machine.record(),
    )


if __name__ == "__main__":
    app.run(main)
