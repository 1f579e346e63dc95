"""IFEval-style verifiable instruction following (Zhou et al. 2023, arXiv:2311.07911).

Modules, one job each:
- ``text``: offline word / sentence / token counting (regex stand-ins for nltk)
- ``language``: offline language detection (Unicode scripts + stop words)
- ``verifiers``: the 25 IFEval checks, ``VERIFIERS`` registry (the one list of ids)
- ``data``: ``InstructionExample`` and ``load_ifeval`` for ``input_data.jsonl``
- ``evaluation``: strict / loose scoring and ``IFEvalReport``
- ``tasks``, ``constraints``, ``generator``: generated multi-constraint prompts with splits
- ``rewards``: per-response reward and preference pairs for training

Example::

    examples = load_ifeval("../shared/data/ifeval/input_data.jsonl")
    report = evaluate_responses(examples, responses)
    report.summary()  # prompt/instruction-level, strict/loose
"""

from align_jax.instructions.data import InstructionExample, load_ifeval, save_ifeval
from align_jax.instructions.evaluation import (
    ExampleResult,
    IFEvalReport,
    TypeAccuracy,
    evaluate_example,
    evaluate_responses,
    loose_variants,
)
from align_jax.instructions.generator import SPLITS, generate
from align_jax.instructions.language import detect_language
from align_jax.instructions.rewards import PreferencePair, preference_pairs, reward
from align_jax.instructions.verifiers import (
    INSTRUCTION_IDS,
    VERIFIERS,
    build_verifier,
    check,
)

__all__ = [
    "INSTRUCTION_IDS", "SPLITS", "VERIFIERS", "ExampleResult", "IFEvalReport",
    "InstructionExample", "PreferencePair", "TypeAccuracy", "build_verifier", "check",
    "detect_language", "evaluate_example", "evaluate_responses", "generate", "load_ifeval",
    "loose_variants", "preference_pairs", "reward", "save_ifeval",
]
