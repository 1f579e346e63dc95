"""One GRPO iteration (rollout + score + update): align_jax's online RL engine vs TRL's ``GRPOTrainer``.

    nice python -m benchmarks.rl_step [--prompts=8] [--group_size=4] [--max_new_tokens=64] [--steps=3]
        [--warmup=1] [--repeats=3] [--frameworks=align_jax,trl] [--output_json=benchmarks/results/rl_step_cpu.json]

Both sides train SmolLM2-135M-Instruct in fp32 from the same GGUF (as in ``benchmarks/dpo_step.py``:
transformers opens it with ``gguf_file=`` and the model is saved to a temporary plain fp32 folder for
TRL) on the same prompts: the first ``--prompts`` records of ``ifeval_constraints(--seed)``'s train
split, rendered once with our chat template (ChatML with SmolLM's default system prompt); TRL gets
that text as plain (non-conversational) prompts and its tokenizer's ids are checked to equal ours
(``prompt_ids_equal`` in the JSON). One iteration = one rollout batch of ``prompts x group_size``
completions sampled at temperature 1.0 (no top-k / top-p) up to ``--max_new_tokens``, stopped at
``<|endoftext|>`` / ``<|im_end|>`` on both sides; scored by our ``ifeval`` reward
(``align_jax.rewards.instruction_following``, wrapped for TRL's ``reward_funcs``: an exception
becomes ``None``, an unscorable completion, as our engine excludes a failed reward); group-normalised
advantages (``(r - mean) / std``); one optimizer update on the whole batch (TRL:
``per_device_train_batch_size = prompts x group_size``, ``steps_per_generation=1``, no gradient
accumulation, ``num_iterations=1``, so old log-probs = the detached current ones; ours: old log-probs
from the sampler); PPO-clipped loss at 0.2 / 0.2, token-mean over the batch (TRL ``loss_type="dapo"``,
ours ``ppo`` with ``aggregation="token-mean"``); no KL term (TRL ``beta=0.0``: no reference model;
ours ``reference.mode="none"``, ``rl.kl_coef=0``); AdamW, learning rate 1e-6 decaying linearly,
gradient clipping at 1.0 (TRL's defaults); fp32 without activation checkpointing on both sides (TRL
1.16's ``GRPOConfig`` defaults to bf16 autocast, on CPU too, and to gradient checkpointing: both are
turned off here, and the JSON records ``mixed_precision`` / ``gradient_checkpointing``). No vLLM: TRL
generates with ``transformers`` ``generate`` (the model's ``generation_config.eos_token_id`` set to
our stop ids).

Each side runs in its own subprocess (so each has its own peak RSS), ``--warmup + --steps`` iterations
per process, sides alternating ``--repeats`` times (ours, trl, ours, trl, ...) so machine load hits
both alike. The first ``--warmup`` iterations of each process are not counted (compilation, first
allocations). Both use the same seed in every repeat (so every repeat draws the same samples; the
repeats measure timing noise).

* align_jax: ``align_jax.training.loop.run`` on a ``RunConfig`` built here (``train.task="grpo"``),
  per-iteration figures read from its ``metrics.jsonl``: ``perf/rollout_seconds`` (the jitted KV-cache
  sampler, prompts padded to a multiple of 32, copied to the host), ``perf/score_seconds`` (decode,
  rewards, advantages), ``perf/update_seconds`` (the donated train step), ``perf/tokens_per_sec``
  (its tokens = every real prompt and completion token of the batch), ``rl/response_length``.
* TRL: ``GRPOTrainer.train()``; an iteration is timed from ``on_step_begin`` to ``on_step_end``
  (generation, scoring, forward / backward, clipping, AdamW); rollout = the time inside the model's
  ``generate`` (wrapped with a timer), score = the rest of ``_generate_and_score_completions``
  (prompt tokenization, decode, rewards, advantages), update = the iteration minus both.

Reported per side: median seconds per iteration (and the per-repeat medians: their spread),
tokens/s of the whole iteration (tokens = real prompt tokens + generated completion tokens up to and
including the stop token, the same definition on both sides), the rollout / score / update split,
mean generated tokens per completion (they differ by sampling: compare per token), generated
tokens/s during the rollout, peak RSS (``peak_rss_train_mib``: the process's high-water mark read
right after its last iteration; ``peak_rss_process_mib``: the whole subprocess by ``wait4``, which
for align_jax also covers the engine's final evaluation and checkpoint), the load average before and
after every run (``busy_machine`` when the 1-minute load at the start is above 1.0), and every raw
per-iteration number.
"""

from __future__ import annotations

import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from absl import app, flags

FRAMEWORKS = ("align_jax", "trl")
MODEL = "smollm2-135m-instruct"
REPO_ROOT = Path(__file__).resolve().parents[1]

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command line (defined when run as a script only, so that importing this module, as
    the tests do, adds no absl flags that could clash with another module's)."""
    flags.DEFINE_integer("prompts", 8, "prompts per rollout batch (the first N of ifeval_constraints' train split)")
    flags.DEFINE_integer("group_size", 4, "completions sampled per prompt")
    flags.DEFINE_integer("max_new_tokens", 64, "most tokens generated per completion")
    flags.DEFINE_integer("steps", 3, "timed iterations per process")
    flags.DEFINE_integer("warmup", 1, "untimed iterations first in every process (compilation)")
    flags.DEFINE_integer("repeats", 3, "processes per side, sides alternating")
    flags.DEFINE_list("frameworks", list(FRAMEWORKS), "sides to run: align_jax, trl")
    flags.DEFINE_string("output_json", "benchmarks/results/rl_step_cpu.json", "where to write the results")
    flags.DEFINE_float("learning_rate", 1e-6, "AdamW learning rate (TRL's GRPOConfig default), linear decay")
    flags.DEFINE_integer("seed", 0, "prompt set and sampling seed")
    flags.DEFINE_string("worker", "", "internal: run one side (align_jax or trl) in this process, per --plan")
    flags.DEFINE_string("plan", "", "internal: the JSON plan written by the parent process")
    flags.DEFINE_string("worker_out", "", "internal: where a worker writes its result")


# -- shared --------------------------------------------------------------------------------------
def prompt_records(n: int, seed: int) -> tuple[list, list]:
    """(the first ``n`` train records, the first eval record) of ``ifeval_constraints(seed)``: what
    the engine reads with ``data.max_train_examples=n``, ``data.max_eval_examples=1``."""
    from align_jax.data.prompt_sets import ifeval_constraints

    train, evals = ifeval_constraints(seed)
    return train[:n], evals[:1]


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def peak_rss_mib() -> float:
    """This process's resident-set high-water mark so far (``VmHWM``), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def trl_model_folder(gguf: Path, folder: Path) -> Path:
    """The GGUF as a plain fp32 transformers folder for TRL, by ``benchmarks/dpo_step.py``'s
    ``trl_model_folder``, run in a child process: importing that module here would define its absl
    flags, whose names clash with ours."""
    code = ("import sys; from pathlib import Path; from benchmarks.dpo_step import trl_model_folder; "
            "trl_model_folder(Path(sys.argv[1]), Path(sys.argv[2]))")
    subprocess.run([sys.executable, "-c", code, str(gguf), str(folder)], cwd=REPO_ROOT, check=True)
    return folder


# -- align_jax side ------------------------------------------------------------------------------------
def align_jax_config(plan: dict, steps: int) -> dict:
    """The engine's run configuration for this benchmark (every key it depends on set explicitly)."""
    far = 10**9  # no evaluation or checkpoint inside the timed range (the engine still does both at the last step)
    return dict(
        model=dict(name=MODEL, path=None, param_dtype="float32", dtype="float32", remat="none", scan_layers=True),
        mesh=dict(data=1, fsdp=1, tensor=1),
        data=dict(source="ifeval_constraints", max_train_examples=plan["prompts"], max_eval_examples=1,
                  batch_size=plan["prompts"], micro_batches=1, seed=plan["seed"]),
        reference=dict(mode="none"),
        lora=dict(rank=0),
        train=dict(task="grpo", steps=steps, eval_every=far, log_every=1, checkpoint_every=far, keep_checkpoints=1,
                   export_hf=False, report=False),
        optimizer=dict(learning_rate=plan["learning_rate"], schedule="linear", warmup_steps=0, total_steps=0,
                       weight_decay=0.0, b1=0.9, b2=0.999, eps=1e-8, max_grad_norm=1.0),
        rl=dict(rewards="ifeval", prompts_per_step=plan["prompts"], group_size=plan["group_size"],
                max_new_tokens=plan["max_new_tokens"], temperature=1.0, top_p=1.0, top_k=0, advantage="grpo",
                epochs=1, minibatches=1, kl_coef=0.0, dynamic_sampling=False, overlong_buffer=0,
                recompute_old_logps=False, eval_prompts=1),
        loss=dict(name="ppo", clip_eps_low=0.2, clip_eps_high=0.2, aggregation="token-mean"),
    )


def watch_peak_rss(path: Path, last_step: int, out: dict, stop: threading.Event) -> None:
    """Records ``VmHWM`` as soon as ``metrics.jsonl`` holds the train line of ``last_step`` (the
    engine writes it right after that iteration, before its final evaluation and checkpoint)."""
    needle = f'"step": {last_step},'
    while not stop.is_set():
        try:
            lines = path.read_text().splitlines()
        except OSError:
            lines = []
        if any(needle in line and '"split": "train"' in line for line in lines):
            out["peak_rss_train_mib"] = peak_rss_mib()
            return
        time.sleep(0.02)


def run_align_jax(plan: dict, workdir: Path) -> dict:
    import jax

    from align_jax.training.config import parse_config
    from align_jax.training.loop import run
    from align_jax.training.metrics_logging import read_metrics

    steps = plan["warmup"] + plan["steps"]
    cfg = parse_config(align_jax_config(plan, steps))
    rows = plan["prompts"] * plan["group_size"]
    rss: dict = {}
    stop = threading.Event()
    watcher = threading.Thread(target=watch_peak_rss, args=(workdir / "metrics.jsonl", steps, rss, stop), daemon=True)
    watcher.start()
    t = time.perf_counter()
    run(cfg, workdir)
    wall = time.perf_counter() - t
    stop.set()
    watcher.join()
    records = [r for r in read_metrics(workdir, split="train") if r["step"] >= 1]
    out_steps = []
    for r in records:
        rollout, score, update = r["perf/rollout_seconds"], r["perf/score_seconds"], r["perf/update_seconds"]
        iteration = rollout + score + update  # the engine's own t3 - t0
        completion = r["rl/response_length"] * rows
        tokens = r["perf/tokens_per_sec"] * iteration  # segment_ids.sum(): real prompt + completion tokens
        out_steps.append(dict(step=r["step"], iteration_s=iteration, rollout_s=rollout, score_s=score, update_s=update,
                              tokens=round(tokens), completion_tokens=round(completion), rows=rows,
                              mean_completion_tokens=r["rl/response_length"], reward=r.get("reward"),
                              truncated_fraction=r.get("rl/truncated_fraction")))
    return dict(steps=out_steps, run_s=wall, peak_rss_train_mib=rss.get("peak_rss_train_mib"),
                metrics=records, versions={"jax": jax.__version__})


# -- TRL side -----------------------------------------------------------------------------------------
def make_trl_reward(records: list):
    """Our ``ifeval`` reward in TRL's ``reward_funcs`` signature (the dataset's ``idx`` column names
    the record); a reward that raises gives ``None`` (TRL: unscorable), as our engine excludes it."""
    from align_jax.rewards import instruction_following

    def ifeval(prompts, completions, idx, **kwargs):
        out = []
        for i, text in zip(idx, completions):
            try:
                out.append(float(instruction_following(records[i], text)))
            except Exception:  # noqa: BLE001 - recorded as unscorable, like the engine's failed rewards
                out.append(None)
        return out

    return ifeval


def run_trl(plan: dict, workdir: Path) -> dict:
    import datasets
    import torch
    import transformers
    import trl
    from trl import GRPOConfig, GRPOTrainer

    torch.set_num_threads(os.cpu_count())
    records, _ = prompt_records(plan["prompts"], plan["seed"])
    folder = Path(plan["trl_model"])
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model.generation_config.eos_token_id = plan["eos_ids"]  # TRL stops and masks at every one of them
    texts = plan["prompt_texts"]
    ids_equal = [list(ids) for ids in tokenizer(text=texts)["input_ids"]] == plan["prompt_ids"]
    rows = plan["prompts"] * plan["group_size"]
    steps = plan["warmup"] + plan["steps"]
    args = GRPOConfig(
        output_dir=str(workdir / "trl"),
        per_device_train_batch_size=rows,
        gradient_accumulation_steps=1,
        steps_per_generation=1,
        num_generations=plan["group_size"],
        num_iterations=1,
        max_completion_length=plan["max_new_tokens"],
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        beta=0.0,
        epsilon=0.2,
        loss_type="dapo",
        scale_rewards="group",
        learning_rate=plan["learning_rate"],
        lr_scheduler_type="linear",
        weight_decay=0.0,
        max_grad_norm=1.0,
        max_steps=steps,
        bf16=False,  # TRL 1.16's configs default to bf16 autocast (even on CPU) and gradient checkpointing:
        fp16=False,  # both off, so that TRL runs fp32 and computes what the engine computes (remat="none")
        gradient_checkpointing=False,
        use_vllm=False,
        use_cpu=True,
        report_to="none",
        logging_strategy="no",
        save_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=plan["seed"],
    )
    dataset = datasets.Dataset.from_dict({"prompt": texts, "idx": list(range(len(texts)))})

    phases = dict(generate_s=0.0, generate_calls=0)
    out_steps: list[dict] = []
    rss: dict = {}

    class StepTimer(transformers.TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            phases.update(generate_s=0.0, gen_score_s=0.0, tokens=0, completion_tokens=0, rows=0)
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            iteration = time.perf_counter() - self.t0
            rewards = trainer._metrics["train"].get("reward") or [float("nan")]
            out_steps.append(dict(
                step=state.global_step, iteration_s=iteration, rollout_s=phases["generate_s"],
                score_s=phases["gen_score_s"] - phases["generate_s"], update_s=iteration - phases["gen_score_s"],
                tokens=phases["tokens"], completion_tokens=phases["completion_tokens"], rows=phases["rows"],
                mean_completion_tokens=phases["completion_tokens"] / max(phases["rows"], 1), reward=rewards[-1],
                truncated_fraction=phases["truncated_fraction"],
            ))
            if state.global_step == steps:
                rss["peak_rss_train_mib"] = peak_rss_mib()

    trainer = GRPOTrainer(model=model, reward_funcs=[make_trl_reward(records)], args=args, train_dataset=dataset,
                          processing_class=tokenizer, callbacks=[StepTimer()])

    generate = trainer.model.generate  # the unwrapped model generates (one CPU process: no wrapper)

    def timed_generate(*a, **k):
        t = time.perf_counter()
        try:
            return generate(*a, **k)
        finally:
            phases["generate_s"] += time.perf_counter() - t
            phases["generate_calls"] += 1

    trainer.model.generate = timed_generate
    generate_and_score = trainer._generate_and_score_completions

    def timed_generate_and_score(inputs):
        t = time.perf_counter()
        out = generate_and_score(inputs)
        phases["gen_score_s"] += time.perf_counter() - t
        lengths = out["completion_mask"].sum(1)
        phases["tokens"] += int(out["prompt_mask"].sum() + lengths.sum())
        phases["completion_tokens"] += int(lengths.sum())
        phases["rows"] += int(lengths.numel())
        phases["truncated_fraction"] = float((lengths >= plan["max_new_tokens"]).float().mean())
        return out

    trainer._generate_and_score_completions = timed_generate_and_score
    t = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t
    if phases["generate_calls"] == 0:
        raise RuntimeError("TRL never called the wrapped generate: the rollout time would read 0")
    return dict(steps=out_steps, run_s=wall, peak_rss_train_mib=rss.get("peak_rss_train_mib"),
                prompt_ids_equal=ids_equal, optimizer=type(trainer.optimizer).__name__,
                mixed_precision=str(trainer.accelerator.mixed_precision), param_dtype=str(trainer.model.dtype),
                gradient_checkpointing=bool(args.gradient_checkpointing),
                versions={"torch": torch.__version__, "transformers": transformers.__version__,
                          "trl": trl.__version__})


def worker(name: str, plan_path: Path, out_path: Path) -> None:
    from absl import logging as absl_logging

    if not FLAGS["verbosity"].present:  # the engine's checkpointing logs a screenful per save at INFO
        absl_logging.set_verbosity(absl_logging.WARNING)
    plan = json.loads(plan_path.read_text())
    with tempfile.TemporaryDirectory(prefix=f"rl_step_{name}_") as tmp:
        result = (run_align_jax if name == "align_jax" else run_trl)(plan, Path(tmp))
    result["peak_rss_self_mib"] = peak_rss_mib()
    out_path.write_text(json.dumps(result, default=float))


# -- parent: plan, alternating subprocesses, summary ---------------------------------------------------
def make_plan(frameworks: list[str], tmp: Path, log) -> dict:
    from align_jax.models import gguf_file
    from align_jax.models.chat import detect_template, encode_chat, render_segments
    from align_jax.models.tokenizer import Tokenizer

    gguf = gguf_file.smollm2_gguf_path()
    tokenizer = Tokenizer.from_gguf(gguf)
    template = detect_template(tokenizer)
    records, evals = prompt_records(FLAGS.prompts, FLAGS.seed)
    if len(records) < FLAGS.prompts:
        raise app.UsageError(f"--prompts={FLAGS.prompts}: the prompt set has only {len(records)}")
    texts = ["".join(s.text for s in render_segments(r.prompt, template=template, add_generation_prompt=True))
             for r in records]
    ids = [list(encode_chat(tokenizer, r.prompt, template=template, add_generation_prompt=True).ids) for r in records]
    eval_ids = [encode_chat(tokenizer, r.prompt, template=template, add_generation_prompt=True).ids for r in evals]
    plan = dict(
        prompts=FLAGS.prompts, group_size=FLAGS.group_size, max_new_tokens=FLAGS.max_new_tokens, steps=FLAGS.steps,
        warmup=FLAGS.warmup, learning_rate=FLAGS.learning_rate, seed=FLAGS.seed, gguf=str(gguf), template=template,
        eos_ids=sorted(int(i) for i in tokenizer.eos_ids), prompt_texts=texts, prompt_ids=ids,
        prompt_tokens=[len(i) for i in ids],
        # the engine left-pads every prompt (train and its one eval prompt) to one width, a multiple of 32
        align_jax_prompt_width=round_up(max(len(i) for i in ids + eval_ids), 32),
        trl_model=None,
    )
    if "trl" in frameworks:
        t = time.perf_counter()
        plan["trl_model"] = str(trl_model_folder(gguf, tmp / "model"))
        log(f"fp32 transformers folder for TRL written in {time.perf_counter() - t:.1f}s")
    return plan


def run_side(name: str, plan_path: Path, out_path: Path) -> dict:
    """One side in a fresh subprocess: its result, wall time, peak RSS (``wait4``) and load average."""
    cmd = [sys.executable, "-m", "benchmarks.rl_step", f"--worker={name}", f"--plan={plan_path}",
           f"--worker_out={out_path}"]
    load_before = os.getloadavg()
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"the {name} worker failed (exit {proc.returncode}): {' '.join(cmd)}")
    result = json.loads(out_path.read_text())
    result.update(framework=name, process_s=wall, peak_rss_process_mib=usage.ru_maxrss / 1024,
                  load_before=list(load_before), load_after=list(os.getloadavg()),
                  busy_machine=load_before[0] > 1.0)
    return result


def summarise(runs: list[dict], warmup: int) -> dict:
    """Per-side figures over the timed iterations of all its runs (raw numbers stay in ``runs``)."""
    timed = [s for r in runs for s in r["steps"] if s["step"] > warmup]
    if not timed:
        return dict(runs=len(runs), timed_iterations=0)
    total = sum(s["iteration_s"] for s in timed)
    per_run = [[s for s in r["steps"] if s["step"] > warmup] for r in runs]
    run_medians = [statistics.median(s["iteration_s"] for s in steps) for steps in per_run if steps]
    run_tps = [sum(s["tokens"] for s in steps) / sum(s["iteration_s"] for s in steps) for steps in per_run if steps]
    median = statistics.median(s["iteration_s"] for s in timed)
    rows = sum(s["rows"] for s in timed)
    completion = sum(s["completion_tokens"] for s in timed)
    rollout = sum(s["rollout_s"] for s in timed)
    rss_train = [r["peak_rss_train_mib"] for r in runs if r.get("peak_rss_train_mib") is not None]
    rewards = [s["reward"] for s in timed if s.get("reward") is not None]
    return dict(
        runs=len(runs),
        timed_iterations=len(timed),
        iteration_s_median=median,
        iteration_s_min=min(s["iteration_s"] for s in timed),
        iteration_s_max=max(s["iteration_s"] for s in timed),
        run_medians_s=run_medians,
        run_spread=(max(run_medians) - min(run_medians)) / median,
        tokens_per_s=sum(s["tokens"] for s in timed) / total,
        run_tokens_per_s=run_tps,
        tokens_per_iteration=sum(s["tokens"] for s in timed) / len(timed),
        rollout_s_median=statistics.median(s["rollout_s"] for s in timed),
        score_s_median=statistics.median(s["score_s"] for s in timed),
        update_s_median=statistics.median(s["update_s"] for s in timed),
        rollout_fraction=rollout / total,
        score_fraction=sum(s["score_s"] for s in timed) / total,
        update_fraction=sum(s["update_s"] for s in timed) / total,
        mean_completion_tokens=completion / rows,
        rollout_generated_tokens_per_s=completion / rollout,
        update_tokens_per_s=sum(s["tokens"] for s in timed) / sum(s["update_s"] for s in timed),
        mean_reward=statistics.fmean(rewards) if rewards else None,
        peak_rss_train_mib=max(rss_train) if rss_train else None,
        peak_rss_process_mib=max(r["peak_rss_process_mib"] for r in runs),
        warmup_iteration_s=[s["iteration_s"] for r in runs for s in r["steps"] if s["step"] <= warmup],
        process_s=[r["process_s"] for r in runs],
    )


def markdown(summary: dict) -> str:
    lines = [
        "| side | s/iter (median) | repeat medians | tokens/s | vs TRL | rollout / score / update s (median) | "
        "rollout % | gen tok/completion | gen tok/s in rollout | peak RSS MiB (train / process) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    base = summary.get("trl", {}).get("tokens_per_s")
    for name, s in summary.items():
        if not s.get("timed_iterations"):
            lines.append(f"| {name} | not run | | | | | | | | |")
            continue
        vs = f"{s['tokens_per_s'] / base:.2f}x" if base else "-"
        rss_train = f"{s['peak_rss_train_mib']:.0f}" if s["peak_rss_train_mib"] is not None else "?"
        lines.append(
            f"| {name} | {s['iteration_s_median']:.2f} | {', '.join(f'{m:.2f}' for m in s['run_medians_s'])} | "
            f"{s['tokens_per_s']:.1f} | {vs} | {s['rollout_s_median']:.2f} / {s['score_s_median']:.3f} / "
            f"{s['update_s_median']:.2f} | {100 * s['rollout_fraction']:.0f}% | {s['mean_completion_tokens']:.1f} | "
            f"{s['rollout_generated_tokens_per_s']:.1f} | {rss_train} / {s['peak_rss_process_mib']:.0f} |"
        )
    return "\n".join(lines)


def main(argv):
    del argv
    if FLAGS.worker:
        if FLAGS.worker not in FRAMEWORKS:
            raise app.UsageError(f"unknown --worker {FLAGS.worker!r}; valid: {FRAMEWORKS}")
        worker(FLAGS.worker, Path(FLAGS.plan), Path(FLAGS.worker_out))
        return

    def log(msg):
        print(msg, flush=True)

    frameworks = list(FLAGS.frameworks)
    bad = sorted(set(frameworks) - set(FRAMEWORKS))
    if bad:
        raise app.UsageError(f"unknown frameworks {bad}; valid: {', '.join(FRAMEWORKS)}")
    if FLAGS.group_size < 2:
        raise app.UsageError("--group_size must be >= 2 (group-normalised advantages; TRL refuses 1)")
    if min(FLAGS.steps, FLAGS.repeats, FLAGS.prompts, FLAGS.max_new_tokens) < 1 or FLAGS.warmup < 0:
        raise app.UsageError("--steps, --repeats, --prompts, --max_new_tokens must be >= 1, --warmup >= 0")
    if "trl" in frameworks and importlib.util.find_spec("trl") is None:
        log("TRL side skipped: trl is not installed (pip install -r requirements-bench.txt)")
        frameworks.remove("trl")

    load_start = os.getloadavg()
    busy = load_start[0] > 1.0
    log(f"load average at start {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}"
        + (" (busy machine: the figures are not a quiet-machine measurement)" if busy else ""))
    runs: dict[str, list] = {name: [] for name in frameworks}
    with tempfile.TemporaryDirectory(prefix="rl_step_") as tmp:
        tmp = Path(tmp)
        plan = make_plan(frameworks, tmp, log)
        plan_path = tmp / "plan.json"
        plan_path.write_text(json.dumps(plan))
        log(f"{FLAGS.prompts} prompts x {FLAGS.group_size} samples, up to {FLAGS.max_new_tokens} new tokens; "
            f"prompt tokens {plan['prompt_tokens']}; {FLAGS.warmup} warm-up + {FLAGS.steps} timed iterations per "
            f"process, {FLAGS.repeats} repeat(s) of {', '.join(frameworks)}")
        for repeat in range(FLAGS.repeats):
            for name in frameworks:
                log(f"repeat {repeat + 1}/{FLAGS.repeats}: {name}")
                result = run_side(name, plan_path, tmp / f"{name}_{repeat}.json")
                result["repeat"] = repeat
                runs[name].append(result)
                timed = [s["iteration_s"] for s in result["steps"] if s["step"] > FLAGS.warmup]
                log(f"  {name}: timed iterations {', '.join(f'{x:.2f}' for x in timed)} s; process "
                    f"{result['process_s']:.0f}s, peak RSS {result['peak_rss_process_mib']:.0f} MiB; load "
                    f"{result['load_before'][0]:.2f} -> {result['load_after'][0]:.2f}")
    load_end = os.getloadavg()

    summary = {name: summarise(r, FLAGS.warmup) for name, r in runs.items()}
    if "trl" in summary and summary["trl"].get("tokens_per_s"):
        for s in summary.values():
            if s.get("tokens_per_s"):
                s["vs_trl"] = s["tokens_per_s"] / summary["trl"]["tokens_per_s"]
    table = markdown(summary)
    print("\n" + table)
    versions = {}
    for r in runs.values():
        for result in r:
            versions.update(result.get("versions", {}))
    out = Path(FLAGS.output_json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(
        model=MODEL, dtype="float32", cpu_count=os.cpu_count(), versions=versions,
        flags={k: FLAGS[k].value for k in ("prompts", "group_size", "max_new_tokens", "steps", "warmup", "repeats",
                                           "frameworks", "learning_rate", "seed")},
        plan={k: v for k, v in plan.items() if k != "trl_model"},
        prompt_ids_equal=all(r.get("prompt_ids_equal", True) for r in runs.get("trl", [])),
        load_start=list(load_start), load_end=list(load_end), busy_machine=busy,
        token_definition="real prompt tokens + generated completion tokens (up to and including the stop token) "
                         "per completion, every completion of the rollout batch",
        iteration_definition="align_jax: perf/rollout_seconds + perf/score_seconds + perf/update_seconds of "
                             "metrics.jsonl; TRL: on_step_begin -> on_step_end (rollout = inside generate, score = "
                             "rest of _generate_and_score_completions, update = the remainder)",
        summary=summary, runs=runs, table=table, command=" ".join(sys.argv)), indent=2, default=float))
    print(f"wrote {out}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
