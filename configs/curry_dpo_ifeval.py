"""DPO on verifier-ranked samples of instruction-constraint prompts (Curry-DPO, arXiv:2403.07230; issue #26 rows 3 and 5).

SmolLM2-135M-Instruct's own samples of the project's constraint prompts, scored by the IFEval
verifiers and turned into pairs by ``experiments/curry_dpo_ifeval.py`` (chosen = the sample that
follows more of the prompt's instructions). ``data.shuffle=False``: the file order is the training
order, easy-to-hard for the curriculum arm, a random permutation of the same pairs for the other;
one pass (the script sets ``train.steps`` and ``data.max_train_examples`` from the pair count).

    python experiments/curry_dpo_ifeval.py --workdir=runs/curry_dpo_ifeval
"""

import pathlib
import runpy

base_config = runpy.run_path(str(pathlib.Path(__file__).with_name("common.py")))["base_config"]

RUN = pathlib.Path(__file__).absolute().parents[1] / "runs" / "curry_dpo_ifeval"


def get_config():
    c = base_config()
    c.model.remat = "full"
    c.data.source = "preference"
    c.data.train_path = str(RUN / "pairs_curriculum.jsonl")
    c.data.eval_path = str(RUN / "pairs_eval.jsonl")
    c.data.eval_fraction = 0.0
    c.data.shuffle = False
    c.data.pair_layout = "shared_prefix"
    c.data.max_prompt_length = 160
    c.data.max_length = 352  # prompt + the 192 sampled tokens
    c.data.max_eval_examples = 64
    c.train.steps = 80
    c.train.eval_every = 40
    c.train.checkpoint_every = 40
    c.optimizer.learning_rate = 2e-5
    c.optimizer.warmup_steps = 5
    c.loss.beta = 0.1
    return c
