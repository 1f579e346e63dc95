"""Name -> function registries for interchangeable pieces (losses, estimators, transforms).

Configs pick a piece by name (``loss.name = "ipo"``) and pass keyword options
(``loss.beta = 0.1``). The options a piece accepts are *derived from its signature*: every
keyword-only parameter with a default is an option, so the documented options and the
dispatch table cannot disagree. A piece may also declare a ``validate(**options)`` hook for
constraints on values (e.g. robust DPO needs ``label_smoothing < 0.5``).

Example::

    PREFERENCE_LOSSES = Registry("preference loss")

    @PREFERENCE_LOSSES.register("ipo", paper="2310.12036")
    def ipo_loss(inputs, *, beta: float = 0.1): ...

    loss_fn = PREFERENCE_LOSSES.build("ipo", beta=0.05)   # functools.partial, validated
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
from typing import Any, Callable, Mapping, Sequence


def did_you_mean(name: str, valid: Sequence[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest valid name, or an empty string."""
    close = difflib.get_close_matches(name, list(valid), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


@dataclasses.dataclass(frozen=True)
class Entry:
    """One registered piece: the function, its paper and its options (from the signature)."""

    name: str
    fn: Callable[..., Any]
    paper: str | None
    options: Mapping[str, Any]  # option name -> default value
    validate: Callable[..., None] | None

    @property
    def summary(self) -> str:
        doc = inspect.getdoc(self.fn) or ""
        return doc.splitlines()[0] if doc else ""


def _options_of(fn: Callable[..., Any]) -> dict[str, Any]:
    options = {}
    for param in inspect.signature(fn).parameters.values():
        if param.kind is inspect.Parameter.KEYWORD_ONLY:
            if param.default is inspect.Parameter.empty:
                raise TypeError(f"{fn.__name__}: keyword-only option {param.name!r} needs a default")
            options[param.name] = param.default
    return options


class Registry:
    """A named table of functions whose keyword-only parameters are their options."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(
        self,
        name: str,
        *,
        paper: str | None = None,
        validate: Callable[..., None] | None = None,
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = Entry(name, fn, paper, _options_of(fn), validate)
            return fn

        return decorator

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __iter__(self):
        return iter(self.names())

    def entry(self, name: str) -> Entry:
        if name not in self._entries:
            raise KeyError(f"unknown {self.kind} {name!r}; valid choices: {', '.join(self.names())}"
                           f"{did_you_mean(name, self.names())}")
        return self._entries[name]

    def build(self, name: str, **options: Any) -> Callable[..., Any]:
        """Returns ``fn`` with ``options`` bound, after checking names and values."""
        entry = self.entry(name)
        unknown = sorted(set(options) - set(entry.options))
        if unknown:
            valid = ", ".join(f"{k}={v!r}" for k, v in entry.options.items()) or "(none)"
            raise ValueError(f"{self.kind} {name!r} got unknown option(s) {unknown}; valid options: {valid}"
                             f"{did_you_mean(unknown[0], list(entry.options))}")
        if entry.validate is not None:
            entry.validate(**{**entry.options, **options})
        return functools.partial(entry.fn, **options)

    def describe(self) -> str:
        """A Markdown table of every entry: name, paper, options, one-line summary."""
        rows = ["| name | paper | options | what it is |", "|---|---|---|---|"]
        for name in self.names():
            e = self._entries[name]
            opts = ", ".join(f"`{k}={v!r}`" for k, v in e.options.items())
            paper = f"arXiv:{e.paper}" if e.paper else ""
            rows.append(f"| `{name}` | {paper} | {opts} | {e.summary} |")
        return "\n".join(rows)
