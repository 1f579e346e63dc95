"""Peak resident memory (RSS) of the demo's pieces: align_jax vs TRL / transformers, each row in its own process.

    nice python -m benchmarks.memory [--rows=all] [--steps=3] [--output_json=benchmarks/results/memory_cpu.json]
    (TRL rows need requirements-bench.txt: pip install -r requirements-bench.txt, or make bench-dpo)

What ``make demo`` (configs/dpo_demo.py: DPO, full fine-tuning of SmolLM2-135M-Instruct in fp32 on CPU,
batch 8, max_length 96, precomputed reference log-probs, then greedy answers for the report) does, piece
by piece, on both sides:

* step rows: load the model, build the train state, run ``--steps`` optimizer steps on the demo's
  first batches (the same 8 pairs per step on both sides: the demo's checkable pairs tokenized once
  by align_jax's pipeline with SmolLM2's chat template; TRL gets those ``(prompt, chosen, rejected)``
  ids through its own collator, padded to the longest sequence of each batch).
  ``jax_step``: the engine's path (``loop.load`` / ``build_state`` / ``compile_train_step``, eval step
  compiled and run once first, as the loop does) with ``configs/dpo_demo.py`` as shipped;
  ``jax_step_before``: the demo's earlier settings (``pair_layout="separate"``, ``remat="none"``).
  Reference log-probs are zeros in these rows (their values do not change the memory).
  ``trl_step*``: ``DPOTrainer`` in fp32 (``bf16=False``; TRL 1.16 defaults to bf16 autocast, on CPU
  too), AdamW, gradient clipping at 1.0, stepped by hand as ``Trainer``'s loop does (``training_step``,
  clipping, ``optimizer.step``, ``lr_scheduler.step``, ``zero_grad``; gradient checkpointing
  enabled on the model as ``Trainer.train`` does when the config asks). ``trl_step``: TRL's defaults
  (a frozen reference copy of the model run in every step, gradient checkpointing on);
  ``trl_step_precomputed``: ``precompute_ref_log_probs=True`` (no reference model in memory; the
  demo's setting; reference log-probs of the step's batches computed first, in the same process);
  ``trl_step_precomputed_no_checkpointing``: and gradient checkpointing off.
* reference rows: log-probs of ``--reference_examples`` demo pairs under the loaded model, 16 pairs
  per batch. ``jax_reference``: ``reference_cache.compute_reference_logps`` (each side padded to 96);
  ``trl_reference``: ``DPOTrainer.compute_ref_log_probs`` on collated batches (padded to the longest).
* sampler rows: ``--sampler_prompts`` prompts of the report (held-out checkable pairs, rendered with
  the chat template), greedy, exactly ``--new_tokens`` new tokens each (EOS ignored on both sides).
  ``jax_sampler``: ``align_jax.sampling.sample`` (KV cache pre-allocated, per-layer weights hoisted out
  of the decode loop on CPU, its default); ``jax_sampler_no_hoist``: ``hoist_weights=False``;
  ``hf_generate``: ``transformers`` ``generate`` (``min_new_tokens`` =
  ``max_new_tokens``), left-padded.

Reported per row: ``peak_rss_mib``, the whole subprocess's high-water mark (``wait4``; what
``/usr/bin/time -v`` calls maximum resident set size; it includes loading the model), ``setup_rss_mib``
and ``setup_peak_mib`` (current and peak RSS once the model, state and data are ready, before the
measured work), the seconds of each step (the first one compiles; the table shows the median) or of
the reference pass (compile included) or of a second identical ``generate`` call (the first one,
``first_call_s``, compiles), and the load average before and after the row.
Rows run one after another (never two at once). The TRL side reads a plain fp32 ``transformers`` folder
written from the same GGUF by a preparatory subprocess (``benchmarks.dpo_step.trl_model_folder``).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from absl import app, flags

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO_ROOT / "configs" / "dpo_demo.py"
PAIRS_PER_REFERENCE_BATCH = 16  # compute_reference_logps' default batch

# name -> (framework, kind, options)
ROWS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "jax_step": ("align_jax", "step", {}),
    "jax_step_before": ("align_jax", "step", {"data.pair_layout": "separate", "model.remat": "none"}),
    "trl_step": ("trl", "step", {"precompute": False, "checkpointing": True}),
    "trl_step_precomputed": ("trl", "step", {"precompute": True, "checkpointing": True}),
    "trl_step_precomputed_no_checkpointing": ("trl", "step", {"precompute": True, "checkpointing": False}),
    "jax_reference": ("align_jax", "reference", {}),
    "trl_reference": ("trl", "reference", {}),
    "jax_sampler": ("align_jax", "sampler", {}),
    "jax_sampler_no_hoist": ("align_jax", "sampler", {"hoist_weights": False}),
    "hf_generate": ("trl", "sampler", {}),
}

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_list("rows", ["all"], f"rows to run (or 'all'): {', '.join(ROWS)}")
    flags.DEFINE_integer("steps", 3, "optimizer steps per step row")
    flags.DEFINE_integer("reference_examples", 32, "pairs scored by the reference rows")
    flags.DEFINE_integer("sampler_prompts", 16, "prompts of the sampler rows (one batch)")
    flags.DEFINE_integer("new_tokens", 64, "tokens generated per prompt by the sampler rows")
    flags.DEFINE_string("output_json", "benchmarks/results/memory_cpu.json", "where to write the results")
    flags.DEFINE_string("worker", None, "internal: run one row (or 'prepare') in this process")
    flags.DEFINE_string("plan", None, "internal: the plan file a worker reads")
    flags.DEFINE_string("worker_out", None, "internal: where a worker writes its result")


# -- measurements inside a worker ---------------------------------------------------------------------
def status_mib(field: str) -> float:
    """VmRSS (current) or VmHWM (peak) of this process, MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _setup_done(out: dict) -> None:
    out["setup_rss_mib"], out["setup_peak_mib"] = status_mib("VmRSS"), status_mib("VmHWM")


# -- the demo's data, shared by both sides ------------------------------------------------------------
def demo_config(overrides: dict[str, str] | None = None):
    """``configs/dpo_demo.py`` parsed into a ``RunConfig``, with ``section.key`` overrides."""
    import runpy

    from align_jax.training.config import parse_config

    c = runpy.run_path(str(DEMO_CONFIG))["get_config"]()
    for path, value in (overrides or {}).items():
        section, key = path.split(".")
        c[section][key] = value
    return parse_config(c)


def demo_examples(cfg, lm):
    """The demo's tokenized train examples (as ``loop.run`` builds them) and the tokenizer's pad id."""
    from align_jax.data import pipeline
    from align_jax.data.tokenization import Tokenize
    from align_jax.training import data_setup as D

    splits = D.load_splits(cfg.data, cfg.task)
    tokenize = Tokenize(lm.tokenizer, template=lm.chat_template, max_length=cfg.data.max_length,
                        max_prompt_length=cfg.data.max_prompt_length or None, policy=cfg.data.truncation)
    return pipeline.tokenize_all(tokenize, splits.train), pipeline.tokenize_all(tokenize, splits.eval), tokenize.pad_id


def _pair_ids(example: dict) -> list[list[int]]:
    """(prompt, chosen, rejected) ids of a tokenized pair, padding removed."""
    return [example[f"{k}_ids"][: int(example[f"{k}_length"])].tolist() for k in ("prompt", "chosen", "rejected")]


def prepare(plan: dict) -> dict:
    """The step batches, reference pairs and sampler prompts as token ids (and the TRL model folder)."""
    import numpy as np

    from align_jax.data.checkable_pairs import build_checkable_pairs
    from align_jax.models.chat import encode_chat
    from align_jax.models.registry import load_model
    from align_jax.training import data_setup as D

    cfg = demo_config()
    lm = load_model(cfg.model.name)
    train_ex, _, pad_id = demo_examples(cfg, lm)
    it = D.iterator(train_ex, cfg.data, train=True)  # the loop's batch order (seeded shuffle)
    steps = []
    for _ in range(plan["steps"]):
        batch = {k: np.asarray(v) for k, v in next(it).items()}
        steps.append([_pair_ids({k: v[i] for k, v in batch.items()}) for i in range(len(batch["prompt_ids"]))])
    reference = [_pair_ids(ex) for ex in train_ex[: plan["reference_examples"]]]
    prompts = [p.example.prompt for p in build_checkable_pairs("test")][: plan["sampler_prompts"]]
    prompt_ids = [encode_chat(lm.tokenizer, [{"role": "user", "content": p}], template=lm.chat_template,
                              add_generation_prompt=True).ids for p in prompts]
    out = dict(step_batches=steps, reference_pairs=reference, prompt_ids=prompt_ids, pad_id=int(pad_id),
               eos_ids=sorted(int(i) for i in lm.tokenizer.eos_ids), gguf=lm.source,
               learning_rate=cfg.optimizer.learning_rate, beta=dict(cfg.loss_options).get("beta", 0.1),
               batch_size=cfg.data.batch_size, max_length=cfg.data.max_length)
    if plan["hf_folder"]:
        from benchmarks.rl_step import trl_model_folder  # dpo_step's, in a child process (its flags clash)

        trl_model_folder(Path(lm.source), Path(plan["hf_folder"]))
    return out


# -- align_jax rows -----------------------------------------------------------------------------------
def jax_step(plan: dict, data: dict, options: dict, out: dict) -> None:
    """The engine's train step as ``loop.run`` builds it (load, state, compiled steps, the loaded
    weights dropped), on the demo's batches."""
    import functools

    import jax
    import numpy as np

    from align_jax.data import pipeline
    from align_jax.training import data_setup as D
    from align_jax.training import loop as L
    from align_jax.training import step as S

    cfg = demo_config(options)
    mesh, lm = L.load(cfg)
    task_loss, _ = L.build_task_loss(cfg, lm.tokenizer)
    train_ex, eval_ex, pad_id = demo_examples(cfg, lm)
    zeros = lambda exs: pipeline.attach(exs, {f"reference_{s}_logps": np.zeros(len(exs), np.float32)  # noqa: E731
                                       for s in ("chosen", "rejected")})
    train_ex, eval_ex = zeros(train_ex), zeros(eval_ex)
    spec, state, state_sh = L.build_state(cfg, lm, mesh, task_loss, reference_fn=L.frozen_reference_fn(cfg))
    del lm  # as the loop does: the state holds its own copy
    L.release_free_memory()
    packer = D.pair_packer(cfg.data, train_ex + eval_ex, pad_id)
    sample = {k: np.asarray(v) for k, v in next(D.iterator(train_ex, cfg.data, train=False, transform=packer)).items()}
    a = cfg.data.micro_batches
    batch_sh = S.batch_shardings({k: np.zeros((a, v.shape[0] // a) + v.shape[1:], v.dtype) for k, v in sample.items()},
                                 mesh)
    train_step = S.compile_train_step(spec, state_sh, batch_sh, mesh)
    eval_step = S.compile_eval_step(spec, state_sh, batch_sh, mesh)
    to_device = functools.partial(D.to_global, data=cfg.data, shardings=batch_sh)
    it = D.iterator(train_ex, cfg.data, train=True, transform=packer)
    batches = [next(it) for _ in range(plan["steps"])]
    jax.device_get(eval_step(state, to_device(batches[0])))  # the loop evaluates before training
    _setup_done(out)
    shapes = [v.shape for k, v in sample.items() if k.endswith("tokens")]  # separate: chosen and rejected rows
    out["rows_x_length"] = [sum(s[0] for s in shapes), shapes[0][1]]
    out["step_s"] = []
    for batch in batches:
        t = time.perf_counter()
        state, metrics = train_step(state, to_device(batch))
        jax.block_until_ready((state, metrics))
        out["step_s"].append(time.perf_counter() - t)
    out["loss"] = float(metrics["loss"])


def jax_reference(plan: dict, data: dict, options: dict, out: dict) -> None:
    from align_jax.training import loop as L
    from align_jax.training.reference_cache import compute_reference_logps

    cfg = demo_config()
    _, lm = L.load(cfg)
    train_ex, _, _ = demo_examples(cfg, lm)
    examples = train_ex[: plan["reference_examples"]]  # the pairs of data["reference_pairs"], padded to 96
    _setup_done(out)
    t = time.perf_counter()
    values = compute_reference_logps(lm.model, examples, cfg.task.record_kind, batch_size=PAIRS_PER_REFERENCE_BATCH)
    out["pass_s"] = time.perf_counter() - t
    out["examples"] = len(values["reference_chosen_logps"])


def jax_sampler(plan: dict, data: dict, options: dict, out: dict) -> None:
    import numpy as np

    from align_jax.sampling import SamplingParams, sample
    from align_jax.training import loop as L

    _, lm = L.load(demo_config())  # as the report's models are loaded
    params = SamplingParams(temperature=0.0, max_new_tokens=plan["new_tokens"], ignore_eos=True)
    _setup_done(out)
    for key in ("first_call_s", "generate_s"):  # the first call compiles
        t = time.perf_counter()
        result = sample(lm.model, data["prompt_ids"], params, eos_ids=data["eos_ids"], pad_id=data["pad_id"],
                        hoist_weights=options.get("hoist_weights"))
        out["generated_tokens"] = int(np.asarray(result.completion_mask).sum())
        out[key] = time.perf_counter() - t


# -- TRL / transformers rows --------------------------------------------------------------------------
def _trl_trainer(data: dict, folder: str, workdir: str, *, precompute: bool, checkpointing: bool):
    import datasets
    import torch
    import transformers
    from trl import DPOConfig, DPOTrainer

    torch.set_num_threads(os.cpu_count())
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    args = DPOConfig(output_dir=workdir, per_device_train_batch_size=data["batch_size"],
                     learning_rate=data["learning_rate"], beta=data["beta"], max_length=None, bf16=False,
                     gradient_checkpointing=checkpointing, precompute_ref_log_probs=precompute, max_steps=10_000,
                     report_to="none", use_cpu=True, logging_strategy="no", save_strategy="no",
                     dataloader_num_workers=0, seed=0)
    # TRL tokenizes text datasets itself: a one-row placeholder satisfies the constructor, and the
    # batches are collated from our ids (as benchmarks/dpo_step.py does).
    placeholder = datasets.Dataset.from_dict({"prompt": ["Hi"], "chosen": [" a"], "rejected": [" b"]})
    trainer = DPOTrainer(model=model, args=args, train_dataset=placeholder, processing_class=tokenizer)
    return trainer


def _collate(trainer, pairs: list) -> dict:
    return trainer.data_collator([{"prompt_ids": p, "chosen_ids": c, "rejected_ids": r} for p, c, r in pairs])


def trl_step(plan: dict, data: dict, options: dict, out: dict) -> None:
    import torch

    with tempfile.TemporaryDirectory(prefix="memory_trl_") as tmp:
        trainer = _trl_trainer(data, plan["hf_folder"], tmp, **options)
        trainer.create_optimizer_and_scheduler(num_training_steps=trainer.args.max_steps)
        trainer.current_gradient_accumulation_steps = 1
        model = trainer.model
        if trainer.args.activation_checkpointing:  # what Trainer.train() does before its loop
            model.activation_checkpointing_enable(
                activation_checkpointing_kwargs=dict(trainer.args.activation_checkpointing_kwargs or {}) or None)
        batches = [_collate(trainer, pairs) for pairs in data["step_batches"]]
        if options["precompute"]:
            for b in batches:
                b["ref_chosen_logps"], b["ref_rejected_logps"] = trainer.compute_ref_log_probs(model, b)
        _setup_done(out)
        out["rows_x_length"] = list(batches[0]["input_ids"].shape)
        out["reference_model_in_memory"] = trainer.ref_model is not None
        out["step_s"] = []
        for batch in batches:
            t = time.perf_counter()
            loss = trainer.training_step(model, dict(batch))
            torch.nn.utils.clip_grad_norm_(model.parameters(), trainer.args.max_grad_norm)
            trainer.optimizer.step()
            trainer.lr_scheduler.step()
            model.zero_grad()
            out["step_s"].append(time.perf_counter() - t)
        out["loss"] = float(loss)


def trl_reference(plan: dict, data: dict, options: dict, out: dict) -> None:
    import torch

    with tempfile.TemporaryDirectory(prefix="memory_trl_") as tmp:
        trainer = _trl_trainer(data, plan["hf_folder"], tmp, precompute=True, checkpointing=False)
        pairs = data["reference_pairs"]
        _setup_done(out)
        t = time.perf_counter()
        n = 0
        with torch.no_grad():
            for start in range(0, len(pairs), PAIRS_PER_REFERENCE_BATCH):
                batch = _collate(trainer, pairs[start:start + PAIRS_PER_REFERENCE_BATCH])
                chosen, _ = trainer.compute_ref_log_probs(trainer.model, batch)
                n += len(chosen)
        out["pass_s"] = time.perf_counter() - t
        out["examples"] = n


def hf_generate(plan: dict, data: dict, options: dict, out: dict) -> None:
    import torch
    import transformers

    torch.set_num_threads(os.cpu_count())
    model = transformers.AutoModelForCausalLM.from_pretrained(plan["hf_folder"], dtype=torch.float32)
    ids = data["prompt_ids"]
    width = max(len(p) for p in ids)
    input_ids = torch.tensor([[data["pad_id"]] * (width - len(p)) + p for p in ids])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in ids])
    _setup_done(out)
    for key in ("first_call_s", "generate_s"):
        t = time.perf_counter()
        with torch.no_grad():
            result = model.generate(input_ids=input_ids, attention_mask=mask, do_sample=False,
                                    pad_token_id=data["pad_id"], max_new_tokens=plan["new_tokens"],
                                    min_new_tokens=plan["new_tokens"])
        out[key] = time.perf_counter() - t
    out["generated_tokens"] = int((result.shape[1] - width) * result.shape[0])


WORKERS = {("align_jax", "step"): jax_step, ("align_jax", "reference"): jax_reference,
           ("align_jax", "sampler"): jax_sampler, ("trl", "step"): trl_step, ("trl", "reference"): trl_reference,
           ("trl", "sampler"): hf_generate}


def worker(name: str, plan_path: str, out_path: str) -> None:
    plan = json.loads(Path(plan_path).read_text())
    if name == "prepare":
        Path(out_path).write_text(json.dumps(prepare(plan)))
        return
    data = json.loads(Path(plan["data"]).read_text())
    framework, kind, options = ROWS[name]
    out: dict[str, Any] = {}
    WORKERS[framework, kind](plan, data, options, out)
    out["peak_self_mib"] = status_mib("VmHWM")
    Path(out_path).write_text(json.dumps(out))


# -- parent ----------------------------------------------------------------------------------------------
def run_worker(name: str, plan_path: Path, out_path: Path) -> dict:
    """One row in a fresh subprocess: its result, wall time, peak RSS (``wait4``) and load average."""
    cmd = [sys.executable, "-m", "benchmarks.memory", f"--worker={name}", f"--plan={plan_path}",
           f"--worker_out={out_path}"]
    load_before = os.getloadavg()
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"worker {name} failed (exit {os.waitstatus_to_exitcode(status)}): {' '.join(cmd)}")
    result = json.loads(out_path.read_text())
    result.update(process_s=wall, peak_rss_mib=usage.ru_maxrss / 1024, load_before=list(load_before),
                  load_after=list(os.getloadavg()))
    return result


def select_rows(names: list[str], log) -> list[str]:
    wanted = list(ROWS) if names == ["all"] else names
    unknown = sorted(set(wanted) - set(ROWS))
    if unknown:
        raise app.UsageError(f"unknown rows {unknown}; valid: {', '.join(ROWS)}")
    import importlib.util

    if any(ROWS[n][0] == "trl" for n in wanted) and importlib.util.find_spec("trl") is None:
        log("TRL / transformers rows skipped: trl is not installed (pip install -r requirements-bench.txt)")
        wanted = [n for n in wanted if ROWS[n][0] != "trl"]
    return wanted


def summary_table(results: dict[str, dict]) -> str:
    lines = ["| row | peak RSS MiB | after setup MiB | work | seconds (median) |", "|---|---:|---:|---|---:|"]
    for name, r in results.items():
        framework, kind, _ = ROWS[name]
        if kind == "step":
            work = f"{len(r['step_s'])} steps of {r['rows_x_length'][0]} x {r['rows_x_length'][1]}"
            seconds = statistics.median(r["step_s"])
        elif kind == "reference":
            work, seconds = f"{r['examples']} pairs", r["pass_s"]
        else:
            work, seconds = f"{r['generated_tokens']} tokens (2nd call)", r["generate_s"]
        lines.append(f"| {name} | {r['peak_rss_mib']:.0f} | {r['setup_rss_mib']:.0f} | {work} | {seconds:.1f} |")
    return "\n".join(lines)


def main(argv):
    del argv
    if FLAGS.worker:
        worker(FLAGS.worker, FLAGS.plan, FLAGS.worker_out)
        return

    def log(msg):
        print(msg, flush=True)

    names = select_rows(FLAGS.rows, log)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="memory_") as tmp:
        tmp = Path(tmp)
        plan = dict(steps=FLAGS.steps, reference_examples=FLAGS.reference_examples,
                    sampler_prompts=FLAGS.sampler_prompts, new_tokens=FLAGS.new_tokens, data=str(tmp / "data.json"),
                    hf_folder=str(tmp / "hf_model") if any(ROWS[n][0] == "trl" for n in names) else None)
        (tmp / "plan.json").write_text(json.dumps(plan))
        log("preparing the demo's batches, prompts" + (" and the transformers folder" if plan["hf_folder"] else ""))
        run_worker("prepare", tmp / "plan.json", tmp / "data.json")
        for name in names:
            results[name] = run_worker(name, tmp / "plan.json", tmp / f"{name}.json")
            r = results[name]
            log(f"{name}: peak {r['peak_rss_mib']:.0f} MiB (after setup {r['setup_rss_mib']:.0f} MiB), "
                f"{r['process_s']:.0f} s, load {r['load_before'][0]:.1f} -> {r['load_after'][0]:.1f}")
        data = json.loads((tmp / "data.json").read_text())
    import jax

    versions = {"jax": jax.__version__}
    try:
        import torch
        import transformers
        import trl

        versions.update(torch=torch.__version__, transformers=transformers.__version__, trl=trl.__version__)
    except ImportError:
        pass
    table = summary_table(results)
    print("\n" + table)
    out = Path(FLAGS.output_json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(
        config=str(DEMO_CONFIG.relative_to(REPO_ROOT)), cpu_count=os.cpu_count(), versions=versions,
        flags={k: FLAGS[k].value for k in ("rows", "steps", "reference_examples", "sampler_prompts", "new_tokens")},
        pairs_per_step=[len(b) for b in data["step_batches"]],
        peak_definition="ru_maxrss of the row's subprocess (wait4)",
        results=results, table=table, command=" ".join(sys.argv)), indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
