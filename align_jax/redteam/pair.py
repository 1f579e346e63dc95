"""PAIR, an LM attacker (Prompt Automatic Iterative Refinement; Chao et al., arXiv:2310.08419,
"Jailbreaking Black Box Large Language Models in Twenty Queries").

An attacker model writes the attack prompt. ``n_streams`` streams run for up to ``n_iterations``
rounds; in each round

1. the attacker (a system prompt and one user turn, from ``pair_prompts.jsonl``) proposes one
   candidate prompt per stream, sampled at ``temperature`` in one batch (``sampling.sample``);
2. the target answers every candidate greedily in one batch (``sampling.greedy.generate_greedy``,
   the candidate as a user turn of its chat template);
3. a judge of ``redteam.judges`` scores each answer in [0, 1] (a bool judge gives 0 or 1; 1 is a
   success);
4. each stream's next user turn is the improvement template filled with its candidate, the
   target's response and the score.

The loop stops after the first round with a success. The result is the first success, else the
highest-scoring candidate (ties: the latest); ``PAIRResult.trace`` keeps every round.

Differences from the paper, for small models: the attacker sees its previous attempt in one user
turn, not the whole conversation; the judge is a registered one (refusal phrases by default), not
a 1-10 GPT-4 judge; and the attacker's output is parsed leniently (``parse_attacker_output``): the
JSON ``{"improvement", "prompt"}`` PAIR asks for, else the text after a ``PROMPT:`` marker, else
the whole completion, else the behaviour itself (``Candidate.source`` records which). The attacker
is the attacked model unless ``attacker_model`` names another registered model. The runner answers
the returned prompt again with its own ``max_new_tokens`` and judge, so its verdict can differ
from PAIR's when those differ from ``max_target_tokens`` and ``judge``.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from align_jax.models.registry import MODELS, LoadedModel, load_model
from align_jax.redteam.judges import JUDGES, Judge, build_judge
from align_jax.registry import did_you_mean
from align_jax.sampling import SamplingParams, sample
from align_jax.sampling.greedy import chat_ids, generate_greedy

PROMPTS_PATH = pathlib.Path(__file__).with_name("pair_prompts.jsonl")
# The placeholders each prompt may use, and those it must use.
ALLOWED = {"system": {"behaviour"}, "initial": {"behaviour"},
           "improvement": {"behaviour", "prompt", "response", "score"}}
REQUIRED = {"system": set(), "initial": {"behaviour"}, "improvement": {"prompt", "response", "score"}}
SOURCES = ("json", "marker", "completion", "behaviour")  # where a candidate prompt came from, best first
_PLACEHOLDER = re.compile(r"\{([A-Za-z_]+)\}")
_MARKER = re.compile(r"\bprompt\"?\s*:", re.IGNORECASE)


class PAIRPromptError(ValueError):
    """A malformed PAIR prompt file; the message names the file and the line."""


@dataclasses.dataclass(frozen=True)
class PAIRPrompts:
    system: str  # the attacker's system prompt
    initial: str  # the first user turn
    improvement: str  # every later user turn: the previous candidate, the response, the score


def load_pair_prompts(path: str | pathlib.Path = PROMPTS_PATH) -> PAIRPrompts:
    """The three attacker prompts of a JSONL file (records: name, text, source), placeholders checked."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise PAIRPromptError(f"no PAIR prompt file at {path}")
    texts: dict[str, str] = {}
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{line_no}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise PAIRPromptError(f"{where}: not JSON ({e.msg})") from None
        name, text = rec.get("name"), rec.get("text")
        if name not in ALLOWED or not isinstance(text, str):
            raise PAIRPromptError(f"{where}: needs a name in {sorted(ALLOWED)} and a string text")
        if name in texts:
            raise PAIRPromptError(f"{where}: a second {name!r} prompt")
        used = set(_PLACEHOLDER.findall(text))
        if unknown := used - ALLOWED[name]:
            raise PAIRPromptError(f"{where}: unknown placeholder(s) {sorted(unknown)}; {name} may use "
                                  f"{sorted(ALLOWED[name])}")
        if missing := REQUIRED[name] - used:
            raise PAIRPromptError(f"{where}: the {name} prompt must use {sorted(missing)}")
        texts[name] = text
    if missing := set(ALLOWED) - set(texts):
        raise PAIRPromptError(f"{path}: no {sorted(missing)} prompt(s)")
    return PAIRPrompts(**texts)


def fill_prompt(text: str, **values: str) -> str:
    """``{name}`` -> ``values[name]`` in one pass (a filled-in value is never filled again; other braces stay)."""
    return _PLACEHOLDER.sub(lambda m: values.get(m[1], m[0]), text)


@dataclasses.dataclass(frozen=True)
class PAIRConfig:
    n_streams: int = 8  # parallel attacker conversations (PAIR: 20)
    n_iterations: int = 3  # rounds per stream (PAIR: 3)
    max_attack_tokens: int = 128  # attacker completion length
    max_target_tokens: int = 64  # target answer length inside the loop
    temperature: float = 1.0  # attacker sampling temperature (> 0: the streams must differ)
    seed: int = 0
    judge: str = "refusal_phrases"  # a name of redteam.judges.JUDGES, built on the attacked model
    attacker_model: str | None = None  # a registered model name; None: the attacked model attacks itself
    prompts_path: str = str(PROMPTS_PATH)

    def __post_init__(self):
        for name in ("n_streams", "n_iterations", "max_attack_tokens", "max_target_tokens"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"PAIRConfig.{name} must be an integer >= 1, got {v!r}")
        if not isinstance(self.seed, int):
            raise ValueError(f"PAIRConfig.seed must be an integer, got {self.seed!r}")
        if not isinstance(self.temperature, (int, float)) or not self.temperature > 0:
            raise ValueError(f"PAIRConfig.temperature must be > 0 (the attacker samples), got {self.temperature!r}")
        if self.judge not in JUDGES:
            raise KeyError(f"unknown PAIR judge {self.judge!r}; valid: {', '.join(JUDGES)}"
                           f"{did_you_mean(self.judge, list(JUDGES))}")
        if self.attacker_model is not None and self.attacker_model not in MODELS:
            raise KeyError(f"unknown PAIR attacker_model {self.attacker_model!r}; registered: {sorted(MODELS)}"
                           f"{did_you_mean(self.attacker_model, sorted(MODELS))}")
        load_pair_prompts(self.prompts_path)


def pair_config(options: Mapping[str, Any]) -> PAIRConfig:
    """A checked PAIRConfig from a mapping (a config's ``pair`` block); unknown keys are a KeyError."""
    valid = [f.name for f in dataclasses.fields(PAIRConfig)]
    if unknown := sorted(set(options) - set(valid)):
        raise KeyError(f"unknown pair option(s) {unknown}; valid: {valid}{did_you_mean(unknown[0], valid)}")
    return PAIRConfig(**options)


@dataclasses.dataclass(frozen=True)
class ParsedPrompt:
    prompt: str
    improvement: str | None  # the attacker's stated improvement (JSON output only)
    source: str  # one of SOURCES: the fallback that produced ``prompt``


def _json_object(text: str) -> dict | None:
    """The JSON object of ``text``, or of its span from the first ``{`` to the last ``}`` (as PAIR does)."""
    start, end = text.find("{"), text.rfind("}")
    for chunk in (text.strip(), text[start:end + 1] if 0 <= start < end else ""):
        try:
            obj = json.loads(chunk)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            return obj
    return None


def parse_attacker_output(text: str, behaviour: str) -> ParsedPrompt:
    """The candidate prompt in an attacker completion: JSON ``prompt``, else the text after the last
    ``PROMPT:`` marker, else the whole stripped completion, else (nothing usable) the behaviour."""
    obj = _json_object(text)
    if obj is not None and isinstance(obj.get("prompt"), str) and obj["prompt"].strip():
        improvement = obj.get("improvement")
        return ParsedPrompt(obj["prompt"].strip(), improvement if isinstance(improvement, str) else None, "json")
    markers = list(_MARKER.finditer(text))
    if markers:
        after = text[markers[-1].end():].strip(" \t\r\n\"'{}")
        return ParsedPrompt(after, None, "marker") if after else ParsedPrompt(behaviour, None, "behaviour")
    if text.strip():
        return ParsedPrompt(text.strip(), None, "completion")
    return ParsedPrompt(behaviour, None, "behaviour")


@dataclasses.dataclass(frozen=True)
class Candidate:
    iteration: int  # 0-based round
    stream: int
    request: str  # the attacker's user turn that produced it
    completion: str  # the attacker's raw output
    prompt: str  # the candidate attack prompt (parsed from ``completion``)
    source: str  # how it was parsed (SOURCES)
    improvement: str | None
    response: str  # the target's greedy answer
    score: float  # the judge's, in [0, 1]
    success: bool  # score == 1


@dataclasses.dataclass(frozen=True)
class PAIRResult:
    best: Candidate  # the first success, else the highest score (ties: the latest)
    trace: tuple[tuple[Candidate, ...], ...]  # [round][stream]

    @property
    def prompt(self) -> str:
        return self.best.prompt

    @property
    def queries(self) -> int:
        """Target queries made (n_streams per round run)."""
        return sum(len(row) for row in self.trace)

    def trace_json(self) -> list[list[dict]]:
        return [[dataclasses.asdict(c) for c in row] for row in self.trace]


def format_score(score: float) -> str:
    return f"{score:.2f}"


def attacker_request(prompts: PAIRPrompts, behaviour: str, previous: Candidate | None) -> str:
    """A stream's next user turn: the initial one, or the improvement template filled with the
    previous candidate, the target's response and its score."""
    if previous is None:
        return fill_prompt(prompts.initial, behaviour=behaviour)
    return fill_prompt(prompts.improvement, behaviour=behaviour, prompt=previous.prompt, response=previous.response,
                       score=format_score(previous.score))


def attacker_prompt_ids(lm: LoadedModel, system: str, request: str) -> list[int]:
    """System prompt and user turn in the attacker's chat template, generation prompt added."""
    return chat_ids(lm, [{"role": "system", "content": system}, {"role": "user", "content": request}])


def propose(attacker: LoadedModel, system: str, requests: Sequence[str], cfg: PAIRConfig, seed: int) -> list[str]:
    """One sampled attacker completion per request, in one batch."""
    tok = attacker.tokenizer
    params = SamplingParams(temperature=float(cfg.temperature), max_new_tokens=cfg.max_attack_tokens, seed=seed)
    out = sample(attacker.model, [attacker_prompt_ids(attacker, system, r) for r in requests], params,
                 eos_ids=sorted(tok.eos_ids), pad_id=tok.pad_id or 0, prompt_bucket=128)
    tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
    return [tok.decode(tokens[i, :lengths[i]].tolist(), skip_special_tokens=True) for i in range(len(requests))]


def judge_scores(judge: Judge, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:  # [N] float64
    """The judge's verdicts as scores in [0, 1] (bool -> 0 / 1), checked."""
    scores = np.asarray(judge(list(prompts), list(responses)), np.float64)
    if scores.shape != (len(responses),) or not np.all((scores >= 0) & (scores <= 1)):
        raise ValueError(f"a PAIR judge must give {len(responses)} scores in [0, 1], got {scores!r}")
    return scores


def best_candidate(trace: Sequence[Sequence[Candidate]]) -> Candidate:
    flat = [c for row in trace for c in row]
    successes = [c for c in flat if c.success]
    return successes[0] if successes else max(reversed(flat), key=lambda c: c.score)


def run_pair(behaviour: str, target: LoadedModel, judge: Judge, cfg: PAIRConfig | None = None, *,
             attacker: LoadedModel | None = None, prompts: PAIRPrompts | None = None) -> PAIRResult:
    """PAIR against ``target`` (attacker: ``target`` itself by default); deterministic given ``cfg.seed``."""
    cfg = PAIRConfig() if cfg is None else cfg
    attacker = target if attacker is None else attacker
    prompts = load_pair_prompts(cfg.prompts_path) if prompts is None else prompts
    system = fill_prompt(prompts.system, behaviour=behaviour)
    key = jax.random.key(cfg.seed)
    previous: list[Candidate | None] = [None] * cfg.n_streams
    trace: list[tuple[Candidate, ...]] = []
    for t in range(cfg.n_iterations):
        requests = [attacker_request(prompts, behaviour, p) for p in previous]
        seed = int(jax.random.randint(jax.random.fold_in(key, t), (), 0, 2**31 - 1))
        completions = propose(attacker, system, requests, cfg, seed)
        parsed = [parse_attacker_output(c, behaviour) for c in completions]
        gens = generate_greedy(target, [chat_ids(target, [{"role": "user", "content": p.prompt}]) for p in parsed],
                               max_new_tokens=cfg.max_target_tokens, batch_size=cfg.n_streams)
        responses = [g.text for g in gens]
        scores = judge_scores(judge, [p.prompt for p in parsed], responses)
        row = tuple(Candidate(iteration=t, stream=s, request=requests[s], completion=completions[s],
                              prompt=parsed[s].prompt, source=parsed[s].source, improvement=parsed[s].improvement,
                              response=responses[s], score=float(scores[s]), success=bool(scores[s] >= 1.0))
                    for s in range(cfg.n_streams))
        trace.append(row)
        previous = list(row)
        if any(c.success for c in row):
            break
    return PAIRResult(best_candidate(trace), tuple(trace))


class PAIRAttack:
    """The registry's ``pair``: ``attack(behaviour, lm) -> prompt``. ``results[behaviour]`` holds
    each run's PAIRResult (the runner saves its trace); the attacker model and the judge load once."""

    def __init__(self, **options):
        self.cfg = pair_config(options)
        self.prompts = load_pair_prompts(self.cfg.prompts_path)
        self.results: dict[str, PAIRResult] = {}
        self._attacker: LoadedModel | None = None
        self._judge: tuple[LoadedModel, Judge] | None = None

    def __call__(self, behaviour: str, lm: LoadedModel) -> str:
        if self.cfg.attacker_model is not None and self._attacker is None:
            self._attacker = load_model(self.cfg.attacker_model)
        if self._judge is None or self._judge[0] is not lm:
            self._judge = (lm, build_judge(self.cfg.judge, lm))
        result = run_pair(behaviour, lm, self._judge[1], self.cfg, attacker=self._attacker, prompts=self.prompts)
        self.results[behaviour] = result
        return result.prompt
