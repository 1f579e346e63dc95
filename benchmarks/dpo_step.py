"""DPO training-step throughput: align_jax vs TRL's ``DPOTrainer``, same weights, same batches.

    nice python -m benchmarks.dpo_step [--workload=fixed,realistic] [--steps=5] [--warmup=1]
        [--variants=all] [--frameworks=align_jax,trl] [--output_json=benchmarks/results/dpo_step_cpu.json]
    make bench-dpo        # installs requirements-bench.txt (TRL) into .venv, then runs this

Both frameworks train SmolLM2-135M-Instruct in fp32 from the same GGUF (transformers opens it with
``gguf_file=``; the model is saved to a temporary folder without its ``quantization_config`` so
that TRL treats it as a plain model) on the same token ids: every pair is tokenized once with our
tokenizer and chat template, and the same ``(prompt, chosen, rejected)`` ids are fed to both.
Sigmoid DPO, beta 0.1, AdamW at TRL's default learning rate (1e-6, linear decay, gradient clipping
at norm 1.0), no gradient accumulation, one batch of pairs per step. A step is timed from the
batch in memory to the optimizer update done: forward, backward, clipping, AdamW (JAX:
``block_until_ready`` on the new state; PyTorch: synchronous, ``torch.set_num_threads(cpu_count)``).

Workloads: ``fixed`` (``--pairs`` pairs, every prompt ``--prompt_len`` and every completion
``--completion_len`` random token ids) and ``realistic`` (pairs sampled with a fixed seed from
``--hh_rlhf``, truncated by ``align_jax.data.tokenization.Tokenize`` to ``--max_length`` per side,
``--num_batches`` different batches cycled, so padded layouts pay for their padding and packed
ones only for their real tokens). The realistic workload is skipped, with a message, when the
data file is absent.

Rows (``--variants``; each optimisation can be seen on and off):

* ``trl``: ``DPOTrainer`` defaults (reference = a frozen copy run every step);
  ``trl_precomputed``: ``precompute_ref_log_probs=True`` (reference log-probs computed before
  training, not timed). TRL is driven through ``trainer.training_step`` on pre-collated batches
  (its ``DataCollatorForPreference`` output), then clipping, ``optimizer.step``,
  ``lr_scheduler.step`` and ``zero_grad`` as in ``Trainer``'s loop: TRL 1.16 tokenizes text
  itself and accepts no pre-tokenized dataset.
* align_jax, built from the training engine (``training/step.py`` ``StepSpec`` /
  ``compile_train_step``, ``training/tasks.py`` losses, ``training/reference_cache.py``):
  ``padded_frozen`` (a: chosen and rejected as separate right-padded rows, frozen reference in
  the step, like TRL), ``padded_precomputed`` (b: + precomputed reference),
  ``padded_precomputed_unchunked`` (b without the vocabulary-chunked log-softmax: one full
  ``log_softmax``), ``shared_prefix`` (c: + one row per pair, the prompt computed once and both
  completions attending to it), ``shared_prefix_scored_only`` (c with the unembedding and
  log-softmax only on the completion positions: ``packed_pairs.scored_token_logps``), ``packed`` (d: + several pairs per row, no padding between
  them), ``packed_remat_full`` / ``packed_remat_dots`` (d with the decoder's ``remat`` policy),
  ``shared_prefix_remat_attention`` / ``shared_prefix_remat_dots`` (c with ``remat="attention"``, or
  with only matmul outputs saved; since 2026-12-07 every policy recomputes the attention
  probabilities in the backward pass, so ``remat="attention"`` rows equal their plain ones),
  ``shared_prefix_grouped`` (e: c with length groups, ``pair_packing.pack_length_groups``: each
  pair's row padded to a multiple of ``--group_multiple`` only, rows of equal length batched
  together, all groups accumulated into one update), ``shared_prefix_grouped_remat_attention`` and
  ``shared_prefix_grouped_scored_only`` (the latter with the scored-only unembedding).
  Padded rows are padded to a multiple of ``--pad_multiple`` (one compile per shape; all shapes
  are compiled during warm-up).

Schedule: per workload the TRL trainers stay built; the align_jax variants are built one at a
time, and TRL steps are interleaved with the align_jax steps (spread evenly), so machine load
hits both alike. Each row runs ``--warmup`` untimed steps (align_jax: at least one per batch, to
compile every shape), then ``--steps`` timed ones; step ``k`` of every row uses batch ``k mod
num_batches``.

Reported: tokens/s, where tokens are the non-padding tokens of both sides, the prompt counted
twice (``len(prompt) + len(chosen) + len(prompt) + len(rejected)`` per pair, the same definition
for every row); the ratio to TRL's default row; MFU = model training FLOPs of those counted
sequences (``align_jax.training.flops``: 6N + attention per token, each side its own sequence) /
time / peak; and hardware utilisation = FLOPs of what the step actually computes (every padded
or packed row position, plus the reference forward when it runs in the step; remat recomputation
not counted) / time / peak. The peak is the larger of the fp32 matmul rates of ``jnp.dot`` and
``torch.mm`` measured in the same run, before and after the rows. Prints a Markdown table and writes JSON.

``--precision=bf16`` races both sides in bf16 (issue #28): ours keeps float32 weights and
activations and runs every weight matmul on bfloat16 operands accumulating in float32
(``model.matmul_dtype="bfloat16"``; norms, softmax and the log-softmax stay float32), TRL runs its
step and reference pass under ``torch.autocast("cpu", bfloat16)`` (fp32 master weights). The peak is
then the bf16 matmul rate (``jnp.dot`` with float32 accumulation, bf16 ``torch.mm``), and the JSON's
``logp_gap_vs_fp32`` gives each side's distance from its own fp32 sequence log-probs on the
workload's pairs (initial policy).

``--model=llama-1b-random`` (for a GPU later) builds a randomly initialised Llama-3.2-1B-shaped
model in bf16 and runs the align_jax rows only (``--model_override_layers`` shrinks it for a CPU
smoke test).
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import gzip
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from absl import app, flags

from benchmarks.quiet import Contention

Pair = tuple[list[int], list[int], list[int]]  # (prompt ids, chosen ids, rejected ids)
Batch = list[Pair]

JAX_VARIANTS = (
    "padded_frozen",
    "padded_precomputed",
    "padded_precomputed_unchunked",
    "shared_prefix",
    "shared_prefix_scored_only",
    "shared_prefix_remat_attention",
    "shared_prefix_remat_dots",
    "packed",
    "packed_remat_full",
    "packed_remat_dots",
    "shared_prefix_grouped",
    "shared_prefix_grouped_remat_attention",
    "shared_prefix_grouped_scored_only",
)
TRL_VARIANTS = ("trl", "trl_precomputed")
MODELS = ("smollm2-135m-instruct", "llama-1b-random")

flags.DEFINE_list("workload", ["fixed", "realistic"], "workloads to run: fixed, realistic")
flags.DEFINE_integer("steps", 5, "timed steps per row and workload")
flags.DEFINE_integer("warmup", 1, "untimed steps per row first (align_jax: at least one per batch)")
flags.DEFINE_list("variants", ["all"], f"rows to run (or 'all'): {', '.join(JAX_VARIANTS + TRL_VARIANTS)}")
flags.DEFINE_list("frameworks", ["align_jax", "trl"], "frameworks to run: align_jax, trl")
flags.DEFINE_string("output_json", "benchmarks/results/dpo_step_cpu.json", "where to write the results")
flags.DEFINE_enum("model", MODELS[0], MODELS, "model: real SmolLM2 weights, or a random ~1B Llama (align_jax only)")
flags.DEFINE_integer("model_override_layers", 0, "llama-1b-random only: use this many layers (smoke tests)")
flags.DEFINE_integer("pairs", 4, "preference pairs per step")
flags.DEFINE_integer("prompt_len", 128, "fixed workload: prompt tokens")
flags.DEFINE_integer("completion_len", 128, "fixed workload: tokens of each completion")
flags.DEFINE_string("hh_rlhf", "../shared/data/hh_rlhf/harmless-base-test.jsonl.gz", "realistic workload data")
flags.DEFINE_integer("max_length", 512, "realistic workload: max tokens per side (prompt + completion)")
flags.DEFINE_integer("num_batches", 4, "realistic workload: distinct batches, cycled")
flags.DEFINE_integer("pad_multiple", 64, "align_jax padded/shared-prefix rows: pad lengths to a multiple of this")
flags.DEFINE_integer("group_multiple", 32, "shared_prefix_grouped rows: each pair's row padded to a multiple of this")
flags.DEFINE_integer("pack_row_length", 0, "packed rows' length (0: the longest pair or half the largest batch, rounded up to 128)")
flags.DEFINE_float("learning_rate", 1e-6, "AdamW learning rate (TRL's DPOConfig default)")
flags.DEFINE_integer("peak_size", 2048, "side of the square matmuls that measure the peak")
flags.DEFINE_integer("seed", 0, "data seed")
flags.DEFINE_enum("precision", "fp32", ["fp32", "bf16"],
                  "fp32; or bf16 on both sides: ours float32 weights and activations with bfloat16 matmul operands "
                  "(model.matmul_dtype), TRL torch.autocast(bfloat16) around its step and reference pass")
FLAGS = flags.FLAGS


# -- workloads ----------------------------------------------------------------------------
def fixed_batches(vocab: int, pairs: int, prompt_len: int, completion_len: int, seed: int) -> list[Batch]:
    """One batch of random valid token ids (ids below 100 avoided: special tokens)."""
    rng = np.random.default_rng(seed)
    draw = lambda n: rng.integers(100, vocab, n).tolist()  # noqa: E731
    return [[(draw(prompt_len), draw(completion_len), draw(completion_len)) for _ in range(pairs)]]


def realistic_batches(
    path: Path, tokenizer, template: str | None, pairs: int, num_batches: int, max_length: int, seed: int
) -> tuple[list[Batch], dict]:
    """HH-RLHF pairs (seeded sample) tokenized and truncated by the training pipeline's ``Tokenize``."""
    from align_jax.data.hh_rlhf import parse_row
    from align_jax.data.records import RecordError
    from align_jax.data.tokenization import Tokenize

    with gzip.open(path, "rt") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    records = []
    for row in rows:
        try:
            records.append(parse_row(row))
        except RecordError:
            pass
    order = np.random.default_rng(seed).permutation(len(records))
    tokenize = Tokenize(tokenizer, template=template, max_length=max_length)
    out: list[Pair] = []
    for i in order[: pairs * num_batches]:
        ex = tokenize(records[i])
        p, c, r = (int(ex[f"{k}_length"]) for k in ("prompt", "chosen", "rejected"))
        out.append((ex["prompt_ids"][:p].tolist(), ex["chosen_ids"][:c].tolist(), ex["rejected_ids"][:r].tolist()))
    info = dict(source=str(path), records=len(records), skipped=len(rows) - len(records), **tokenize.stats.as_dict())
    return [out[b * pairs : (b + 1) * pairs] for b in range(num_batches)], info


def counted_tokens(batch: Batch) -> int:
    """Non-padding tokens of both sides, the prompt counted twice (the throughput definition)."""
    return sum(2 * len(p) + len(c) + len(r) for p, c, r in batch)


def counted_flops(cfg, batch: Batch) -> float:
    """Model training FLOPs of the counted tokens: each side is its own sequence of its length."""
    from align_jax.training.flops import model_flops_per_token

    lengths = [len(p) + len(c) for p, c, _ in batch] + [len(p) + len(r) for p, _, r in batch]
    return float(sum(n * model_flops_per_token(cfg, n, training=True) for n in lengths))


def rows_flops(cfg, rows: int, length: int, *, reference_in_step: bool) -> float:
    """FLOPs of a step over ``rows`` x ``length`` computed positions (+ a reference forward)."""
    from align_jax.training.flops import model_flops_per_token

    per_token = model_flops_per_token(cfg, length, training=True)
    if reference_in_step:
        per_token += model_flops_per_token(cfg, length, training=False)
    return float(rows * length * per_token)


def round_up(n: int, multiple: int) -> int:
    return max(multiple, -(-n // multiple) * multiple)


# -- matmul peaks ---------------------------------------------------------------------------
def torch_matmul_peak(size: int, repeats: int = 5, chain: int = 8) -> float:
    """``torch.mm`` FLOP/s (fp32, or bf16 under ``--precision=bf16``), measured like
    ``align_jax.training.flops.measure_matmul_peak``."""
    import torch

    dtype = torch.bfloat16 if FLAGS.precision == "bf16" else torch.float32
    a = torch.randn(size, size).to(dtype)
    b = (torch.randn(size, size) / size**0.5).to(dtype)

    def run():
        y = a
        for _ in range(chain):
            y = y @ b
        return y

    for _ in range(2):
        run()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return 2.0 * size**3 * chain / statistics.median(times)


# -- align_jax rows ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class JaxVariant:
    name: str
    layout: str  # "padded" | "shared_prefix" | "packed" | "grouped" (shared prefix, length groups)
    reference: str  # "frozen" | "precomputed"
    remat: str = "none"
    vocab_chunked: bool = True
    scored_only: bool = False  # shared_prefix / packed: unembed only the scored positions


VARIANTS = {
    v.name: v
    for v in (
        JaxVariant("padded_frozen", "padded", "frozen"),
        JaxVariant("padded_precomputed", "padded", "precomputed"),
        JaxVariant("padded_precomputed_unchunked", "padded", "precomputed", vocab_chunked=False),
        JaxVariant("shared_prefix", "shared_prefix", "precomputed"),
        JaxVariant("shared_prefix_scored_only", "shared_prefix", "precomputed", scored_only=True),
        JaxVariant("shared_prefix_remat_attention", "shared_prefix", "precomputed", remat="attention"),
        JaxVariant("shared_prefix_remat_dots", "shared_prefix", "precomputed", remat="dots"),
        JaxVariant("packed", "packed", "precomputed"),
        JaxVariant("packed_remat_full", "packed", "precomputed", remat="full"),
        JaxVariant("packed_remat_dots", "packed", "precomputed", remat="dots"),
        JaxVariant("shared_prefix_grouped", "grouped", "precomputed"),
        JaxVariant("shared_prefix_grouped_remat_attention", "grouped", "precomputed", remat="attention"),
        JaxVariant("shared_prefix_grouped_scored_only", "grouped", "precomputed", remat="attention", scored_only=True),
    )
}
assert tuple(VARIANTS) == JAX_VARIANTS


def pair_packing_api():
    """(pack_preference_pairs, packed_preference_loss), or None while they do not exist."""
    try:
        from align_jax.data.pair_packing import pack_preference_pairs
        from align_jax.training.tasks import packed_preference_loss
    except ImportError:
        return None
    return pack_preference_pairs, packed_preference_loss


def padded_examples(batch: Batch, length: int, pad_id: int) -> list[dict[str, np.ndarray]]:
    """Per-pair arrays in the layout of ``align_jax.data.tokenization`` (right-padded to ``length``)."""
    out = []
    for p, c, r in batch:
        ex = {}
        for side, comp in (("chosen", c), ("rejected", r)):
            n = len(p) + len(comp)
            ex[f"{side}_tokens"] = np.full(length, pad_id, np.int32)
            ex[f"{side}_tokens"][:n] = p + comp
            ex[f"{side}_loss_mask"] = np.zeros(length, np.int32)
            ex[f"{side}_loss_mask"][len(p) : n] = 1
            ex[f"{side}_positions"] = np.zeros(length, np.int32)
            ex[f"{side}_positions"][:n] = np.arange(n)
            ex[f"{side}_segment_ids"] = np.zeros(length, np.int32)
            ex[f"{side}_segment_ids"][:n] = 1
        out.append(ex)
    return out


def _full_vocab_preference_loss(model, batch, loss_fn):
    """``tasks.preference_loss`` with one un-chunked float32 ``log_softmax`` over the vocabulary."""
    import jax
    import jax.numpy as jnp

    from align_jax.objectives.types import PreferenceInputs, SequenceLogps

    sides = ("chosen", "rejected")
    fields = ("tokens", "loss_mask", "positions", "segment_ids")
    tokens, loss_mask, positions, segment_ids = (
        jnp.concatenate([batch[f"{s}_{f}"] for s in sides], axis=0) for f in fields
    )
    logits = model(tokens, positions, segment_ids).logits[:, :-1]
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    label_logp = jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
    valid = loss_mask[:, 1:] > 0
    logps = SequenceLogps(jnp.where(valid, label_logp, 0.0), valid.astype(jnp.float32))
    n = batch["chosen_tokens"].shape[0]
    chosen, rejected = (jax.tree.map(lambda x, i=i: x[i * n : (i + 1) * n], logps) for i in range(2))
    inputs = PreferenceInputs(
        policy_chosen=chosen,
        policy_rejected=rejected,
        reference_chosen_logps=batch.get("reference_chosen_logps"),
        reference_rejected_logps=batch.get("reference_rejected_logps"),
    )
    loss, metrics = loss_fn(inputs)
    return loss, {"loss": loss, **metrics}, metrics["num_examples"]


@dataclasses.dataclass
class Prepared:
    """One batch ready for a variant: device arrays [1, ...] and what the step computes."""

    arrays: dict | tuple  # one batch, or a tuple of length groups
    shapes: list  # [(rows, length)] of every group the step computes


class JaxRunner:
    """One align_jax variant: a fresh train state (policy = the loaded weights) and its jitted step."""

    def __init__(self, variant: JaxVariant, model, batches: list[Batch], reference: list[dict], *, pad_id: int,
                 pad_multiple: int, pack_row_length: int, learning_rate: float):
        import jax
        import jax.numpy as jnp
        from flax import nnx

        from align_jax.models.decoder import abstract_decoder
        from align_jax.objectives import REGISTRIES
        from align_jax.parallel.mesh import make_mesh
        from align_jax.training import step as S
        from align_jax.training.optimizer import OptimizerConfig, make_optimizer
        from align_jax.training.tasks import preference_loss, reference_logps

        self.variant, self.name = variant, variant.name
        cfg = model.cfg.replace(remat=variant.remat)
        self.cfg = cfg
        graphdef = nnx.graphdef(abstract_decoder(cfg))
        model_state = nnx.state(model)
        loss_fn = REGISTRIES["preference"].build("dpo", beta=0.1)
        if variant.layout == "padded":
            task = preference_loss if variant.vocab_chunked else _full_vocab_preference_loss
        else:
            api = pair_packing_api()
            if api is None:
                raise RuntimeError("needs align_jax.data.pair_packing and tasks.packed_preference_loss")
            self.pack_pairs, task = api
            if variant.scored_only:
                from align_jax.training.packed_pairs import SCORED_TOKEN_CHUNK

                task = functools.partial(task, token_chunk_size=SCORED_TOKEN_CHUNK)
        spec = S.StepSpec(
            graphdef=graphdef,
            task_loss=functools.partial(task, loss_fn=loss_fn),
            optimizer=make_optimizer(OptimizerConfig(
                learning_rate=learning_rate, schedule="linear", total_steps=10_000, max_grad_norm=1.0,
            )),
            reference_mode=variant.reference,
            reference_fn=functools.partial(reference_logps, kind="preference") if variant.reference == "frozen" else None,
        )
        state = S.init_state(spec, jax.tree.map(jnp.copy, model_state))
        self.mesh = make_mesh(1, 1, 1)
        self.state_sh = S.train_state_shardings(state, self.mesh)
        self.state = S.shard_state(state, self.state_sh)
        self.spec = spec
        self.steps: dict = {}  # compiled step per batch structure
        self.batches = [
            self._prepare(b, ref, pad_id=pad_id, pad_multiple=pad_multiple, pack_row_length=pack_row_length)
            for b, ref in zip(batches, reference)
        ]

    def _prepare(self, batch: Batch, reference: dict, *, pad_id, pad_multiple, pack_row_length) -> Prepared:
        import jax

        from align_jax.training import step as S

        v = self.variant
        if v.layout == "grouped":
            from align_jax.data.pair_packing import pack_length_groups

            per_pair = {k: np.asarray(x, np.float32) for k, x in reference.items()}
            groups = pack_length_groups(batch, multiple=FLAGS.group_multiple, pad_id=pad_id, per_pair=per_pair)
            shardings = S.batch_shardings(groups, self.mesh)
            arrays = jax.tree.map(S.place, groups, shardings)
            return Prepared(arrays, [g["packed_tokens"].shape[1:] for g in groups])
        if v.layout == "padded":
            length = round_up(max(len(p) + max(len(c), len(r)) for p, c, r in batch), pad_multiple)
            exs = padded_examples(batch, length, pad_id)
            arrays = {k: np.stack([ex[k] for ex in exs]) for k in exs[0]}
            rows = 2 * len(batch)
        else:
            from align_jax.data.pair_packing import rows_needed

            lengths = [len(p) + len(c) + len(r) for p, c, r in batch]
            pack = v.layout == "packed"
            length = pack_row_length if pack else round_up(max(lengths), pad_multiple)
            rows = rows_needed(lengths, length, pack=pack)
            arrays = self.pack_pairs(batch, row_length=length, num_rows=rows, max_pairs=len(batch), pack=pack,
                                     pad_id=pad_id)
        if v.reference == "precomputed":
            arrays.update({k: np.asarray(x, np.float32) for k, x in reference.items()})
        arrays = {k: x[None] for k, x in arrays.items()}  # one micro-batch
        shardings = S.batch_shardings(arrays, self.mesh)
        arrays = {k: S.place(x, shardings[k]) for k, x in arrays.items()}
        return Prepared(arrays, [(rows, length)])

    def _step_fn(self, arrays):
        from align_jax.training import step as S

        groups = arrays if isinstance(arrays, tuple) else (arrays,)
        key = tuple(tuple((k, x.shape) for k, x in sorted(g.items())) for g in groups)
        if key not in self.steps:
            batch_sh = S.batch_shardings(arrays, self.mesh)
            self.steps[key] = S.compile_train_step(self.spec, self.state_sh, batch_sh, self.mesh)
        return self.steps[key]

    def step(self, k: int) -> float:
        import jax

        arrays = self.batches[k % len(self.batches)].arrays
        fn = self._step_fn(arrays)
        t = time.perf_counter()
        self.state, metrics = fn(self.state, arrays)
        jax.block_until_ready((self.state, metrics))
        return time.perf_counter() - t

    def computed_flops(self, k: int) -> tuple[int, float]:
        b = self.batches[k % len(self.batches)]
        frozen = self.variant.reference == "frozen"
        return (sum(r * n for r, n in b.shapes),
                sum(rows_flops(self.cfg, r, n, reference_in_step=frozen) for r, n in b.shapes))


def precompute_reference(model, batches: list[Batch], pad_id: int, pad_multiple: int) -> list[dict]:
    """Reference log-probs of every pair (initial policy), by the engine's ``compute_reference_logps``."""
    from align_jax.training.reference_cache import compute_reference_logps

    out = []
    for batch in batches:
        length = round_up(max(len(p) + max(len(c), len(r)) for p, c, r in batch), pad_multiple)
        out.append(compute_reference_logps(model, padded_examples(batch, length, pad_id), "preference",
                                           batch_size=len(batch)))
    return out


# -- TRL rows -------------------------------------------------------------------------------
def autocast(bf16: bool | None = None):
    """``torch.autocast`` to bfloat16 when ``bf16`` (default: ``--precision=bf16``); else a no-op context."""
    import contextlib

    import torch

    if FLAGS.precision == "bf16" if bf16 is None else bf16:
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def logp_gap(model_fp32, model_bf16, batches: list[Batch], pad_id: int, trl_folder: Path | None,
             workdir: Path) -> dict:
    """How far each side's bf16 sequence log-probs (the initial policy's, every chosen and rejected
    completion of the workload) lie from its own fp32 ones: max and mean |difference| in nats per
    sequence, and the mean per completion token. TRL's are its ``compute_ref_log_probs`` on its own
    collated batches, plain and under bf16 autocast."""
    def summary(a: np.ndarray, b: np.ndarray, tokens: np.ndarray) -> dict:
        d = np.abs(a.astype(np.float64) - b.astype(np.float64))
        return dict(max_abs_nats=float(d.max()), mean_abs_nats=float(d.mean()),
                    mean_abs_nats_per_token=float((d / tokens).mean()))

    tokens = np.array([[len(c), len(r)] for b in batches for _, c, r in b], np.float64)
    ours = [precompute_reference(m, batches, pad_id, FLAGS.pad_multiple) for m in (model_fp32, model_bf16)]
    stack = lambda refs: np.concatenate([np.stack([r["reference_chosen_logps"], r["reference_rejected_logps"]], 1)  # noqa: E731
                                         for r in refs])
    gap = {"align_jax": summary(stack(ours[0]), stack(ours[1]), tokens)}
    if trl_folder is not None:
        runner = TrlRunner("trl", trl_folder, batches, learning_rate=FLAGS.learning_rate, workdir=workdir,
                           cfg=model_bf16.cfg)
        trainer = runner.trainer

        def trl_logps(bf16: bool) -> np.ndarray:
            out = []
            for collated in runner.batches:
                with autocast(bf16):
                    chosen, rejected = trainer.compute_ref_log_probs(trainer.model, collated)
                out.append(np.stack([chosen.float().numpy(), rejected.float().numpy()], axis=1))
            return np.concatenate(out)

        gap["trl"] = summary(trl_logps(False), trl_logps(True), tokens)
    return gap


def trl_model_folder(gguf: Path, folder: Path) -> Path:
    """The GGUF as a plain fp32 transformers folder (no quantization_config), for TRL."""
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model.config.quantization_config = None
    model.hf_quantizer = None  # transformers 5 refuses to save a model it still counts as GGUF-quantized
    model.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config.pop("quantization_config", None)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(folder)
    return folder


class TrlRunner:
    """TRL's DPOTrainer, stepped by hand on pre-collated batches of our token ids."""

    def __init__(self, name: str, folder: Path, batches: list[Batch], *, learning_rate: float, workdir: Path, cfg):
        import datasets
        import torch
        import transformers
        from trl import DPOConfig, DPOTrainer

        self.name, self.cfg = name, cfg
        self.precompute = name == "trl_precomputed"
        model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
        args = DPOConfig(
            output_dir=str(workdir / name),
            per_device_train_batch_size=len(batches[0]),
            learning_rate=learning_rate,
            max_length=None,  # our ids are already truncated identically for both frameworks
            precompute_ref_log_probs=self.precompute,
            max_steps=10_000,
            report_to="none",
            use_cpu=True,
            logging_strategy="no",
            save_strategy="no",
            dataloader_num_workers=0,
            seed=0,
            # Explicit: TRL's default bf16=True makes compute_ref_log_probs autocast to bf16 (its
            # accelerator.autocast()), while training_step outside train() runs fp32. Precision is
            # set by autocast() around both instead (checked with a forward hook, 2026-12-08).
            bf16=False,
        )
        # TRL tokenizes text datasets itself; a one-row placeholder satisfies the constructor and
        # the timed batches are collated below from our ids.
        placeholder = datasets.Dataset.from_dict({"prompt": ["Hi"], "chosen": [" a"], "rejected": [" b"]})
        self.trainer = trainer = DPOTrainer(model=model, args=args, train_dataset=placeholder,
                                            processing_class=tokenizer)
        trainer.create_optimizer_and_scheduler(num_training_steps=args.max_steps)
        trainer.current_gradient_accumulation_steps = 1  # what Trainer's loop sets: one micro-batch per update
        self.optimizer_name = type(trainer.optimizer).__name__ + f" ({args.optim})"
        self.batches = []
        for batch in batches:
            collated = trainer.data_collator(
                [{"prompt_ids": p, "chosen_ids": c, "rejected_ids": r} for p, c, r in batch]
            )
            if self.precompute:
                with autocast():
                    ref_c, ref_r = trainer.compute_ref_log_probs(trainer.model, collated)
                collated["ref_chosen_logps"], collated["ref_rejected_logps"] = ref_c, ref_r
            self.batches.append(collated)

    def step(self, k: int) -> float:
        import torch

        trainer, model = self.trainer, self.trainer.model
        batch = dict(self.batches[k % len(self.batches)])
        t = time.perf_counter()
        with autocast():
            trainer.training_step(model, batch)
        if trainer.args.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), trainer.args.max_grad_norm)
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
        model.zero_grad()
        return time.perf_counter() - t

    def computed_flops(self, k: int) -> tuple[int, float]:
        rows, length = self.batches[k % len(self.batches)]["input_ids"].shape
        return rows * length, rows_flops(self.cfg, rows, length, reference_in_step=not self.precompute)


# -- measurement ------------------------------------------------------------------------------
@dataclasses.dataclass
class RowTimes:
    name: str
    framework: str
    times: list = dataclasses.field(default_factory=list)
    batch_index: list = dataclasses.field(default_factory=list)
    first_call_s: float | None = None
    setup_s: float = 0.0
    notes: str = ""
    runner: Any = None  # for the FLOP accounting of the steps it ran


def run_timed(runner, row: RowTimes, k: int):
    row.times.append(runner.step(k))
    row.batch_index.append(k)


def warm(runner, row: RowTimes, steps: int):
    for k in range(steps):
        dt = runner.step(k)
        if row.first_call_s is None:
            row.first_call_s = dt


def measure_workload(batches, jax_names, trl_names, *, model, pad_id, trl_folder, workdir, log) -> list[RowTimes]:
    steps, warmup = FLAGS.steps, FLAGS.warmup
    rows: list[RowTimes] = []
    trl_runners = []
    for name in trl_names:
        t = time.perf_counter()
        runner = TrlRunner(name, trl_folder, batches, learning_rate=FLAGS.learning_rate, workdir=workdir,
                           cfg=model.cfg)
        row = RowTimes(name, "trl", notes=runner.optimizer_name)
        warm(runner, row, warmup)
        row.setup_s = time.perf_counter() - t
        log(f"  built {name} ({row.setup_s:.1f}s incl. {warmup} warm-up steps)")
        trl_runners.append((runner, row))
        rows.append(row)
    trl_jobs = [(r, k) for k in range(steps) for r in trl_runners]
    jax_total = len(jax_names) * steps
    done = [0, 0]  # align_jax steps, TRL jobs

    def catch_up():  # TRL jobs spread evenly over the align_jax steps
        while done[1] < len(trl_jobs) and done[1] * max(jax_total, 1) < done[0] * len(trl_jobs):
            (runner, row), k = trl_jobs[done[1]]
            run_timed(runner, row, k)
            done[1] += 1

    reference = None
    for name in jax_names:
        variant = VARIANTS[name]
        row = RowTimes(name, "align_jax")
        rows.append(row)
        if variant.layout != "padded" and pair_packing_api() is None:
            row.notes = "skipped: align_jax.data.pair_packing / tasks.packed_preference_loss not available yet"
            log(f"  {name}: {row.notes}")
            done[0] += steps
            catch_up()
            continue
        t = time.perf_counter()
        if reference is None and variant.reference == "precomputed":
            reference = precompute_reference(model, batches, pad_id, FLAGS.pad_multiple)
        runner = JaxRunner(variant, model, batches, reference or [{}] * len(batches), pad_id=pad_id,
                           pad_multiple=FLAGS.pad_multiple,
                           pack_row_length=FLAGS.pack_row_length or pack_length(batches),
                           learning_rate=FLAGS.learning_rate)
        warm(runner, row, max(warmup, len(batches)))
        row.setup_s = time.perf_counter() - t
        log(f"  built {name} ({row.setup_s:.1f}s incl. compile and warm-up; first call {row.first_call_s:.1f}s)")
        for k in range(steps):
            run_timed(runner, row, k)
            done[0] += 1
            catch_up()
        row.runner = runner
        runner.state = None  # frees this variant's parameters and optimizer state
    while done[1] < len(trl_jobs):
        (runner, row), k = trl_jobs[done[1]]
        run_timed(runner, row, k)
        done[1] += 1
    for runner, row in trl_runners:
        row.runner = runner
    return rows


def pack_length(batches: list[Batch]) -> int:
    """Default packed row length: the longest pair or half the largest batch (about two rows per
    batch), whichever is larger, rounded up to 128."""
    longest = max(len(p) + len(c) + len(r) for b in batches for p, c, r in b)
    largest = max(sum(len(p) + len(c) + len(r) for p, c, r in b) for b in batches)
    return round_up(max(longest, -(-largest // 2)), 128)


def summarise(rows: list[RowTimes], batches: list[Batch], cfg) -> list[dict]:
    """Per-row figures; ``model_flops_per_s`` / ``computed_flops_per_s`` become MFU and hardware
    utilisation in :func:`apply_peak` once the run's last peak measurement is in."""
    out = []
    for row in rows:
        r = dict(row=row.name, framework=row.framework, notes=row.notes)
        if not row.times:
            out.append(r)
            continue
        runner = row.runner
        total = sum(row.times)
        counted = [counted_tokens(batches[k % len(batches)]) for k in row.batch_index]
        model_flops = [counted_flops(cfg, batches[k % len(batches)]) for k in row.batch_index]
        computed = [runner.computed_flops(k) for k in row.batch_index]
        r.update(
            tokens_per_s=sum(counted) / total,
            step_s_median=statistics.median(row.times),
            model_flops_per_s=sum(model_flops) / total,
            computed_flops_per_s=sum(f for _, f in computed) / total,
            counted_tokens_per_step=sum(counted) / len(counted),
            computed_tokens_per_step=sum(n for n, _ in computed) / len(computed),
            first_call_s=row.first_call_s,
            setup_s=row.setup_s,
            step_s=row.times,
            batch_index=row.batch_index,
        )
        out.append(r)
    base = next((r for r in out if r["row"] == "trl" and "tokens_per_s" in r), None)
    for r in out:
        if base is not None and "tokens_per_s" in r:
            r["vs_trl"] = r["tokens_per_s"] / base["tokens_per_s"]
    return out


# -- models ---------------------------------------------------------------------------------
def llama_1b_config(layers: int = 0):
    """Llama-3.2-1B's shape (about 1.24B parameters), bf16, for a random-weights step benchmark."""
    from align_jax.models.config import ModelConfig

    return ModelConfig(
        family="llama", vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_layers=layers or 16,
        num_heads=32, num_kv_heads=8, head_dim=64, rope_theta=500_000.0, tie_embeddings=True,
        param_dtype="bfloat16", dtype="bfloat16",
    )


def load(model_name: str):
    """(decoder, tokenizer, chat template, GGUF path of the real weights)."""
    from align_jax.models import gguf_file
    from align_jax.models.chat import detect_template
    from align_jax.models.registry import load_model
    from align_jax.models.tokenizer import Tokenizer

    if model_name == "smollm2-135m-instruct":
        if FLAGS.model_override_layers:
            raise app.UsageError("--model_override_layers applies to llama-1b-random only")
        lm = load_model(model_name, matmul_dtype="bfloat16" if FLAGS.precision == "bf16" else "")
        return lm.model, lm.tokenizer, lm.chat_template, Path(lm.source)
    from align_jax.models.decoder import init_decoder

    gguf = gguf_file.smollm2_gguf_path()  # only its tokenizer, for the realistic workload
    tokenizer = Tokenizer.from_gguf(gguf)
    return init_decoder(llama_1b_config(FLAGS.model_override_layers)), tokenizer, detect_template(tokenizer), None


# -- main ----------------------------------------------------------------------------------------
def select(names: Sequence[str], frameworks: Sequence[str], model_name: str, log) -> tuple[list, list]:
    wanted = list(JAX_VARIANTS + TRL_VARIANTS) if list(names) == ["all"] else list(names)
    unknown = sorted(set(wanted) - set(JAX_VARIANTS + TRL_VARIANTS))
    if unknown:
        raise app.UsageError(f"unknown variants {unknown}; valid: {JAX_VARIANTS + TRL_VARIANTS}")
    bad = sorted(set(frameworks) - {"align_jax", "trl"})
    if bad:
        raise app.UsageError(f"unknown frameworks {bad}; valid: align_jax, trl")
    jax_names = [n for n in wanted if n in JAX_VARIANTS] if "align_jax" in frameworks else []
    trl_names = [n for n in wanted if n in TRL_VARIANTS] if "trl" in frameworks else []
    if trl_names and model_name != "smollm2-135m-instruct":
        log(f"TRL rows skipped: {model_name} has random weights and runs on the align_jax side only")
        trl_names = []
    if trl_names:
        try:
            import trl  # noqa: F401
        except ImportError:
            log("TRL rows skipped: trl is not installed (pip install -r requirements-bench.txt, or make bench-dpo)")
            trl_names = []
    return jax_names, trl_names


def main(argv):
    del argv
    import jax

    from align_jax.training.flops import matmul_params

    def log(msg):
        print(msg, flush=True)

    jax_names, trl_names = select(FLAGS.variants, FLAGS.frameworks, FLAGS.model, log)
    model, tokenizer, template, gguf = load(FLAGS.model)
    cfg = model.cfg
    pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else (tokenizer.eos_id or 0)

    versions = {"jax": jax.__version__}
    if trl_names:
        import torch
        import transformers
        import trl

        torch.set_num_threads(os.cpu_count())
        versions.update(torch=torch.__version__, transformers=transformers.__version__, trl=trl.__version__)
    peak_dtype = "bfloat16" if FLAGS.precision == "bf16" else cfg.dtype
    peaks = measure_peaks(peak_dtype, bool(trl_names), "start")
    peak = max(peaks.values())
    log(f"{FLAGS.model}: {cfg.num_params() / 1e6:.1f}M params ({matmul_params(cfg) / 1e6:.1f}M in matmuls), "
        f"{cfg.dtype} (matmul operands {cfg.matmul_dtype or cfg.dtype}); {peak_dtype} matmul peak "
        + ", ".join(f"{k} {v / 1e9:.1f}" for k, v in peaks.items())
        + f" GFLOP/s (using {peak / 1e9:.1f}); jax devices {jax.devices()}; cpu_count {os.cpu_count()}")

    results, data_info, gaps = {}, {}, {}
    with tempfile.TemporaryDirectory(prefix="dpo_step_") as tmp:
        tmp = Path(tmp)
        trl_folder = trl_model_folder(gguf, tmp / "model") if trl_names else None
        fp32_model = None  # the fp32 twin of a bf16 run, for the log-prob gap
        if FLAGS.precision == "bf16" and FLAGS.model == "smollm2-135m-instruct":
            from align_jax.models.registry import load_model

            fp32_model = load_model(FLAGS.model).model
        for workload in FLAGS.workload:
            if workload == "fixed":
                batches = fixed_batches(cfg.vocab_size, FLAGS.pairs, FLAGS.prompt_len, FLAGS.completion_len, FLAGS.seed)
                data_info[workload] = dict(prompt_len=FLAGS.prompt_len, completion_len=FLAGS.completion_len)
            elif workload == "realistic":
                path = Path(FLAGS.hh_rlhf)
                if not path.is_file():
                    log(f"realistic workload skipped: {path} not found (the HH-RLHF test split, see ../shared/data)")
                    continue
                batches, data_info[workload] = realistic_batches(
                    path, tokenizer, template, FLAGS.pairs, FLAGS.num_batches, FLAGS.max_length, FLAGS.seed
                )
            else:
                raise app.UsageError(f"unknown workload {workload!r}; valid: fixed, realistic")
            data_info[workload]["counted_tokens_per_batch"] = [counted_tokens(b) for b in batches]
            if fp32_model is not None:
                gaps[workload] = logp_gap(fp32_model, model, batches, pad_id, trl_folder, tmp)
                log(f"log-prob gap bf16 vs fp32 ({workload}): {json.dumps(gaps[workload])}")
            log(f"workload {workload}: {len(batches)} batch(es) of {FLAGS.pairs} pairs, counted tokens "
                f"{data_info[workload]['counted_tokens_per_batch']}")
            with Contention() as machine:  # load and other processes' CPU while the rows ran
                rows = measure_workload(batches, jax_names, trl_names, model=model, pad_id=pad_id,
                                        trl_folder=trl_folder, workdir=tmp, log=log)
            results[workload] = summarise(rows, batches, cfg)
            for r in results[workload]:
                r.update(machine.record())
            del rows  # frees this workload's TRL trainers before the next one builds its own
            gc.collect()
            for r in results[workload]:
                log(json.dumps({k: v for k, v in r.items() if k not in ("step_s", "batch_index")}))

    del fp32_model
    # The peak again after the rows: a busy moment of the VM at the start must not inflate MFU.
    peaks.update(measure_peaks(peak_dtype, bool(trl_names), "end"))
    peak = max(peaks.values())
    log("matmul peaks " + ", ".join(f"{k} {v / 1e9:.1f}" for k, v in peaks.items())
        + f" GFLOP/s; MFU uses the largest, {peak / 1e9:.1f}")
    apply_peak(results, peak)
    table = markdown(results, peak, peak_dtype)
    print("\n" + table)
    out = Path(FLAGS.output_json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(
        model=FLAGS.model, params=cfg.num_params(), matmul_params=matmul_params(cfg), dtype=cfg.dtype,
        precision=FLAGS.precision, matmul_dtype=cfg.matmul_dtype or cfg.dtype, logp_gap_vs_fp32=gaps,
        layers=cfg.num_layers, matmul_peak_flops=peaks, peak_used=peak, cpu_count=os.cpu_count(),
        versions=versions, flags={k: FLAGS[k].value for k in (
            "workload", "steps", "warmup", "variants", "frameworks", "pairs", "prompt_len", "completion_len",
            "max_length", "num_batches", "pad_multiple", "group_multiple", "pack_row_length", "learning_rate",
            "seed", "precision")},
        data=data_info, token_definition="non-padding len(prompt)+len(chosen)+len(prompt)+len(rejected) per pair",
        mfu_definition="model training FLOPs (6N + attention, flops.py) of the counted tokens, each side its own "
                       "sequence / step time / peak",
        hardware_utilisation_definition="training FLOPs of every computed (padded or packed) row position, plus "
                                        "the reference forward when it runs in the step, remat not counted / "
                                        "step time / peak",
        results=results, table=table, command=" ".join(sys.argv)), indent=2))
    print(f"wrote {out}")


def apply_peak(results: dict, peak: float) -> None:
    for rows in results.values():
        for r in rows:
            if "model_flops_per_s" in r:
                r["mfu"] = r["model_flops_per_s"] / peak
                r["hardware_utilisation"] = r["computed_flops_per_s"] / peak


def measure_peaks(dtype: str, torch_too: bool, when: str) -> dict[str, float]:
    """Matmul FLOP/s of ``jnp.dot`` in ``dtype`` (and fp32 ``torch.mm``), keyed ``jax_<when>`` / ``torch_<when>``."""
    from align_jax.training.flops import measure_matmul_peak

    peaks = {f"jax_{when}": measure_matmul_peak(dtype, size=FLAGS.peak_size, repeats=5)}
    if torch_too and dtype in ("float32", "bfloat16"):
        peaks[f"torch_{when}"] = torch_matmul_peak(FLAGS.peak_size)
    return peaks


def markdown(results: dict, peak: float, dtype: str) -> str:
    lines = [
        f"Peak ({dtype} matmul, max of jnp/torch at the start and at the end) {peak / 1e9:.1f} GFLOP/s. Tokens: len(prompt)+len(chosen)+"
        "len(prompt)+len(rejected) per pair. MFU: model FLOPs of those tokens; HW: FLOPs of the positions "
        "actually computed (padding / packing rows, + reference forward when in the step).",
        "",
        "| workload | row | tokens/s | vs TRL | step s (median) | MFU | HW util | counted tok/step | "
        "computed tok/step | 1st call s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for workload, rows in results.items():
        if rows and "other_cores" in rows[0]:
            busy = " BUSY: other processes used the CPU, do not quote" if rows[0]["busy_machine"] else ""
            lines.insert(1, f"{workload}: load {rows[0]['load_before']} -> {rows[0]['load_after']}, "
                            f"other processes {rows[0]['other_cores']} cores{busy}.")
        for r in rows:
            if "tokens_per_s" not in r:
                lines.append(f"| {workload} | {r['row']} | {r['notes'] or 'not run'} | | | | | | | |")
                continue
            vs = f"{r['vs_trl']:.2f}x" if "vs_trl" in r else "-"
            lines.append(
                f"| {workload} | {r['row']} | {r['tokens_per_s']:.1f} | {vs} | {r['step_s_median']:.2f} | "
                f"{100 * r['mfu']:.1f}% | {100 * r['hardware_utilisation']:.1f}% | "
                f"{r['counted_tokens_per_step']:.0f} | {r['computed_tokens_per_step']:.0f} | "
                f"{r['first_call_s']:.1f} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    app.run(main)
