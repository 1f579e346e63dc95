"""What a training task is, and the one table that names every task.

A :class:`Task` declares everything the engine needs to know about one kind of training: the
record kind its data becomes, where its ``loss.name`` is looked up (a :class:`Registry`, so the
valid options come from the loss's signature), which reference log-probs it needs, whether it
trains a head, which preference-pair layouts it accepts, and whether it learns offline from a
fixed dataset or online from its own samples. Adding a task is one ``TASKS.register(Task(...))``;
the config parser, the data set-up, the reference pass and the loop all read it from here.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, Sequence

from align_jax.objectives.types import LossNeeds, loss_needs
from align_jax.registry import Registry, did_you_mean

# Preference-pair batch layouts (align_jax.data.pair_packing): two padded rows per pair, or
# [prompt | chosen | rejected] once per pair, one pair per row, first-fit packed or length grouped.
PAIR_LAYOUTS = ("separate", "shared_prefix", "packed", "length_grouped")
# What a task's loss reads from the reference policy: nothing, summed log-probs per completion
# ([B]), or per-token log-probs of the completion.
REFERENCE_NEEDS = ("none", "summed", "per_token")


@dataclasses.dataclass(frozen=True)
class Task:
    """One registered training task (see the module docstring)."""

    name: str
    summary: str
    record_kind: str  # the records its loss reads, after `prepare_records`: "preference" | "unpaired" | "sft" | "prompt"
    losses: Registry  # where `loss.name` is looked up; options are the function's keyword-only parameters
    reference: str = "none"  # one of REFERENCE_NEEDS
    uses_head: bool = False  # the loss takes (model, head, batch): a reward / value head in the trainable params
    pair_layouts: tuple[str, ...] = ("separate",)
    online: bool = False  # learns from its own samples (RL): the online loop runs it
    prepare_records: Callable[[Sequence[Any]], list] | None = None  # source records -> this task's records
    pad_to_max_length: bool = False  # examples padded to data.max_length before batching (SFT)
    loss_arguments: Callable[[Any], Mapping[str, Any]] | None = None  # tokenizer -> extra loss arguments
    wrap_loss: Callable[..., Callable] | None = None  # (loss_fn, pair_layout) -> task loss(model, batch[, head])
    check_config: Callable[[Any], None] | None = None  # RunConfig -> raises on task-specific errors (before loading)

    def __post_init__(self):
        if self.reference not in REFERENCE_NEEDS:
            raise ValueError(f"task {self.name!r}: reference must be one of {REFERENCE_NEEDS}, got {self.reference!r}")
        bad = sorted(set(self.pair_layouts) - set(PAIR_LAYOUTS))
        if bad:
            raise ValueError(f"task {self.name!r}: unknown pair layouts {bad}; valid: {PAIR_LAYOUTS}")

    def check_loss(self, loss_name: str, options: Mapping[str, Any]) -> None:
        """Raises (unknown name, unknown option, bad value) without building anything expensive.

        Called by the config parser, so a wrong ``loss.*`` fails before any model loads."""
        try:
            self.losses.build(loss_name, **dict(options))
        except KeyError as e:
            raise ValueError(f"train.task={self.name!r}: {e.args[0]}") from None

    def loss_needs(self, loss_name: str, options: Mapping[str, Any]) -> LossNeeds:
        """What the named loss reads beyond the policy's log-probs and summed reference log-probs
        (declared by the loss, see :class:`align_jax.objectives.types.LossNeeds`)."""
        return loss_needs(self.losses.entry(loss_name).fn, options)

    def build_loss(self, loss_name: str, options: Mapping[str, Any], *, tokenizer=None, pair_layout: str = "separate"):
        """The task loss ``(model, batch[, head]) -> (loss, metrics, weight)`` for a config."""
        loss_fn = self.losses.build(loss_name, **dict(options))
        if self.loss_arguments is not None:
            if tokenizer is None:
                raise ValueError(f"train.task={self.name!r} needs the tokenizer to build its loss")
            loss_fn = functools.partial(loss_fn, **self.loss_arguments(tokenizer))
        return loss_fn if self.wrap_loss is None else self.wrap_loss(loss_fn, pair_layout)


class TaskRegistry:
    """Name -> :class:`Task`; the one place a task is named."""

    def __init__(self):
        self._tasks: dict[str, Task] = {}

    def register(self, task: Task) -> Task:
        if task.name in self._tasks:
            raise ValueError(f"task {task.name!r} is already registered")
        self._tasks[task.name] = task
        return task

    def names(self) -> list[str]:
        return sorted(self._tasks)

    def __contains__(self, name: str) -> bool:
        return name in self._tasks

    def __getitem__(self, name: str) -> Task:
        if name not in self._tasks:
            raise ValueError(f"unknown train.task {name!r}; valid: {', '.join(self.names())}{did_you_mean(name, self.names())}")
        return self._tasks[name]

    def describe(self) -> str:
        """A Markdown table of every task."""
        rows = ["| task | records | losses | reference | online | what it is |", "|---|---|---|---|---|---|"]
        for name in self.names():
            t = self._tasks[name]
            rows.append(f"| `{name}` | {t.record_kind} | {', '.join(t.losses.names())} | {t.reference} | "
                        f"{'yes' if t.online else ''} | {t.summary} |")
        return "\n".join(rows)


TASKS = TaskRegistry()
