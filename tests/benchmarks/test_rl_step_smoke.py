"""benchmarks/rl_step.py without running either side: the engine config it builds parses and says
what the benchmark claims, the TRL reward wrapper equals our reward, and the summary skips the
warm-up iterations and adds up the raw numbers. (The end-to-end run loads two frameworks and
takes minutes: it is smoke-run by hand, see benchmarks/README.md.)"""

import pytest

from align_jax.data.records import PromptRecord
from align_jax.rewards import instruction_following
from align_jax.training.config import parse_config
from bench_scripts import load_script


@pytest.fixture(scope="module")
def rl_step():
    return load_script("rl_step")


PLAN = dict(prompts=2, group_size=2, max_new_tokens=8, steps=2, warmup=1, learning_rate=1e-6, seed=0)


def test_engine_config_matches_the_benchmark(rl_step):
    cfg = parse_config(rl_step.align_jax_config(PLAN, steps=3))
    assert cfg.task.name == "grpo" and cfg.task.online
    assert (cfg.data.source, cfg.data.max_train_examples, cfg.data.seed) == ("ifeval_constraints", 2, 0)
    assert cfg.reference.mode == "none" and cfg.lora.rank == 0
    assert (cfg.model.param_dtype, cfg.model.dtype, cfg.model.remat) == ("float32", "float32", "none")
    rl = cfg.rl
    assert (rl.rewards, rl.prompts_per_step, rl.group_size, rl.max_new_tokens) == ("ifeval", 2, 2, 8)
    assert (rl.temperature, rl.top_p, rl.top_k, rl.kl_coef, rl.epochs, rl.minibatches) == (1.0, 1.0, 0, 0.0, 1, 1)
    assert not rl.recompute_old_logps  # old log-probs from the sampler, like TRL's detached current ones
    assert cfg.loss_name == "ppo"
    assert dict(cfg.loss_options) == dict(clip_eps_low=0.2, clip_eps_high=0.2, aggregation="token-mean")
    opt = cfg.optimizer
    assert (opt.learning_rate, opt.schedule, opt.total_steps, opt.max_grad_norm) == (1e-6, "linear", 3, 1.0)
    assert cfg.train.steps == 3 and not cfg.train.export_hf


def test_trl_reward_wrapper_equals_our_reward(rl_step):
    title = PromptRecord("Give your answer a title in <<double angular brackets>>.",
                         {"key": 0, "instruction_id_list": ["detectable_format:title"], "kwargs": [{}]})
    broken = PromptRecord("No instructions recorded.", {})
    reward = rl_step.make_trl_reward([title, broken])
    completions = ["<<A title>>\nSome text.", "no title here", "anything"]
    got = reward(prompts=["p"] * 3, completions=completions, idx=[0, 0, 1], trainer_state=None)
    assert got[:2] == [instruction_following(title, c) for c in completions[:2]] == [1.0, 0.0]
    assert got[2] is None  # our reward raises on it: TRL's "unscorable", the engine's excluded completion
    assert reward.__name__ == "ifeval"  # TRL logs each reward under its function's name


def _step(step, seconds, rollout, tokens, completion, rows=4):
    return dict(step=step, iteration_s=seconds, rollout_s=rollout, score_s=0.0, update_s=seconds - rollout,
                tokens=tokens, completion_tokens=completion, rows=rows, reward=0.5)


def test_summary_skips_warmup_and_adds_up(rl_step):
    runs = [dict(steps=[_step(1, 100.0, 50.0, 10, 4), _step(2, 2.0, 1.0, 200, 40), _step(3, 4.0, 2.0, 200, 40)],
                 peak_rss_train_mib=100.0, peak_rss_process_mib=120.0, process_s=130.0),
            dict(steps=[_step(1, 90.0, 45.0, 10, 4), _step(2, 3.0, 1.0, 200, 20), _step(3, 3.0, 1.0, 200, 20)],
                 peak_rss_train_mib=110.0, peak_rss_process_mib=115.0, process_s=125.0)]
    s = rl_step.summarise(runs, warmup=1)
    assert s["timed_iterations"] == 4
    assert s["iteration_s_median"] == 3.0 and s["run_medians_s"] == [3.0, 3.0] and s["run_spread"] == 0.0
    assert s["tokens_per_s"] == pytest.approx(800 / 12.0)
    assert s["run_tokens_per_s"] == pytest.approx([400 / 6.0, 400 / 6.0])
    assert s["rollout_fraction"] == pytest.approx(5.0 / 12.0)
    assert s["mean_completion_tokens"] == pytest.approx(120 / 16)
    assert s["rollout_generated_tokens_per_s"] == pytest.approx(120 / 5.0)
    assert s["warmup_iteration_s"] == [100.0, 90.0]
    assert (s["peak_rss_train_mib"], s["peak_rss_process_mib"]) == (110.0, 120.0)
    assert "| align_jax | 3.00 |" in rl_step.markdown({"align_jax": s})
