"""Preference pairs -> prefix-shared rows: [prompt | chosen | rejected] once, several pairs per row.

The separate layout (:mod:`align_jax.data.tokenization`) holds each pair as two padded rows that
both contain the prompt. Here a pair is laid out once as a prefix tree and several pairs are
packed, padding-free, into fixed-length rows:

* ``packed_tokens``: the pair's prompt, then its chosen, then its rejected completion.
* ``packed_positions``: ``0..p-1`` on the prompt; the chosen AND the rejected completion both
  continue at ``p, p+1, ...`` (RoPE sees each completion exactly as in a row of its own).
* ``packed_segment_ids``: ``1, 2, ...`` per pair within a row, 0 on padding.
* ``packed_branch_ids``: 0 on the prompt (shared), 1 on chosen, 2 on rejected, 0 on padding.
  The decoder's ``branch_ids`` argument lets a completion attend to the prompt and to itself only.
* ``packed_target_side``: 1 on scored chosen tokens, 2 on scored rejected tokens, 0 elsewhere.
  Every completion token is scored (the prompt is never empty, so each has a predecessor).
* ``packed_parent``: index in the same row of the token whose logits predict this one: ``i - 1``,
  except the FIRST rejected token, predicted by the last prompt token. 0 on unscored tokens.
* ``packed_pair_index``: the pair (``0..max_pairs-1``, in input order) of every token; -1 on padding.
* ``packed_completion_offset``: index of a completion token within its completion; -1 on prompt
  and padding. With ``packed_pair_index`` it scatters per-token values back to ``[P, T]``.
* ``pair_mask`` ``[max_pairs]`` float32: 1 for real pairs, 0 for padding pairs.

Policies. A pair longer than a row (``p + c + r > row_length``) or with an empty prompt raises a
ValueError naming the pair and its lengths; truncate before packing (the tokenizer's truncation
keeps ``p + max(c, r) <= max_length``, so rows of ``2 * max_length`` always hold any pair). More
pairs than ``max_pairs``, or pairs that do not fit ``num_rows`` rows, raise a ValueError too: the
shapes are static and a silently dropped pair would change the loss. Use :func:`rows_needed` to
size ``num_rows``.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

PackedPairs = dict[str, np.ndarray]  # the keys listed above
ROW_KEYS = (
    "packed_tokens",
    "packed_positions",
    "packed_segment_ids",
    "packed_branch_ids",
    "packed_target_side",
    "packed_parent",
    "packed_pair_index",
    "packed_completion_offset",
)
PAIR_SIDES = ("chosen", "rejected")


def _check_pair(i: int, prompt, chosen, rejected, row_length: int) -> int:
    p, c, r = len(prompt), len(chosen), len(rejected)
    if p == 0:
        raise ValueError(f"pair {i} has an empty prompt: its first completion token would have no predecessor")
    if p + c + r > row_length:
        raise ValueError(
            f"pair {i} does not fit a row: prompt {p} + chosen {c} + rejected {r} = {p + c + r} tokens "
            f"> row_length {row_length}; truncate it first (e.g. tokenization.Tokenize's policy)"
        )
    return p + c + r


def _first_fit(lengths: Sequence[int], row_length: int, pack: bool) -> list[int]:
    """Row of each pair: first row (in order) with room, or one pair per row when not packing."""
    if not pack:
        return list(range(len(lengths)))
    fill: list[int] = []
    rows = []
    for n in lengths:
        for r, used in enumerate(fill):
            if used + n <= row_length:
                fill[r] += n
                rows.append(r)
                break
        else:
            fill.append(n)
            rows.append(len(fill) - 1)
    return rows


def rows_needed(lengths: Sequence[int], row_length: int, *, pack: bool = True) -> int:
    """Rows :func:`pack_preference_pairs` uses for pairs of these total lengths (``p + c + r``)."""
    rows = _first_fit(lengths, row_length, pack)
    return max(rows) + 1 if rows else 0


def pack_preference_pairs(
    pairs: Sequence[tuple[Sequence[int], Sequence[int], Sequence[int]]],
    *,
    row_length: int,
    num_rows: int,
    max_pairs: int,
    pack: bool = True,
    pad_id: int = 0,
    pair_offset: int = 0,
) -> PackedPairs:
    """``(prompt_ids, chosen_ids, rejected_ids)`` pairs -> ``[num_rows, row_length]`` arrays.

    ``pack=True`` fills rows first-fit in input order; ``pack=False`` puts pair k in row k (prefix
    sharing without packing). ``pair_offset`` is added to ``packed_pair_index`` (a host's pairs
    inside a global batch); ``pair_mask`` covers this call's ``max_pairs`` only. See the module
    docstring for the arrays and the error policy.
    """
    if len(pairs) > max_pairs:
        raise ValueError(f"{len(pairs)} pairs > max_pairs {max_pairs}")
    lengths = [_check_pair(i, *pair, row_length) for i, pair in enumerate(pairs)]
    rows = _first_fit(lengths, row_length, pack)
    if rows and max(rows) >= num_rows:
        first = rows.index(num_rows)
        raise ValueError(
            f"pairs need {max(rows) + 1} rows of {row_length} tokens but num_rows is {num_rows} "
            f"(pair {first} is the first that does not fit; lengths {lengths}); see rows_needed"
        )
    shape = (num_rows, row_length)
    out = {k: np.zeros(shape, np.int32) for k in ROW_KEYS}
    out["packed_tokens"][:] = pad_id
    out["packed_pair_index"][:] = -1
    out["packed_completion_offset"][:] = -1
    fill = [0] * num_rows
    segments = [0] * num_rows
    for k, ((prompt, chosen, rejected), row) in enumerate(zip(pairs, rows)):
        p, c, r = len(prompt), len(chosen), len(rejected)
        o = fill[row]
        segments[row] += 1
        span = slice(o, o + p + c + r)
        out["packed_tokens"][row, span] = np.concatenate(
            [np.asarray(x, np.int64).reshape(-1) for x in (prompt, chosen, rejected)]
        )
        out["packed_positions"][row, span] = np.concatenate([np.arange(p + c), p + np.arange(r)])
        out["packed_segment_ids"][row, span] = segments[row]
        out["packed_branch_ids"][row, span] = np.repeat([0, 1, 2], [p, c, r])
        out["packed_target_side"][row, span] = np.repeat([0, 1, 2], [p, c, r])
        index = o + np.arange(p + c + r)
        parent = index - 1
        if r:
            parent[p + c] = o + p - 1  # the first rejected token follows the prompt
        out["packed_parent"][row, span] = np.where(np.arange(p + c + r) >= p, parent, 0)
        out["packed_pair_index"][row, span] = pair_offset + k
        out["packed_completion_offset"][row, span] = np.concatenate([np.full(p, -1), np.arange(c), np.arange(r)])
        fill[row] += p + c + r
    pair_mask = np.zeros((max_pairs,), np.float32)
    pair_mask[: len(pairs)] = 1.0
    out["pair_mask"] = pair_mask
    return out


def count_real_tokens(batch: Mapping[str, Any]) -> int:
    """Non-padding tokens a batch makes the model run, in any layout (every ``*segment_ids`` > 0)."""
    return int(sum(np.sum(np.asarray(v) > 0) for k, v in batch.items() if k.endswith("segment_ids")))


def pairs_of(examples: Mapping[str, np.ndarray]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The ``(prompt, chosen, rejected)`` ids of a batch of tokenized preference examples ``[b, ...]``
    (``prompt_ids``/``prompt_length`` and ``{side}_ids``/``{side}_length``, as Tokenize writes them)."""
    n = len(examples["prompt_length"])
    return [
        tuple(np.asarray(examples[f"{s}_ids"][i])[: int(examples[f"{s}_length"][i])] for s in ("prompt",) + PAIR_SIDES)
        for i in range(n)
    ]


def pack_example_batch(
    examples: Mapping[str, np.ndarray],
    *,
    micro_batches: int,
    row_length: int,
    rows_per_micro: int,
    pack: bool,
    pad_id: int = 0,
    pair_offset: int = 0,
) -> PackedPairs:
    """A host batch of ``b`` tokenized pairs -> packed arrays, each micro-batch packed on its own.

    Micro-batch ``a`` holds pairs ``a*m .. a*m+m-1`` (``m = b / micro_batches``) in rows
    ``a*R .. a*R+R-1``; its pair indices run from ``pair_offset`` (so splitting the leading axis
    into ``[micro_batches, ...]`` gives self-contained micro-batches). Per-pair ``[b]`` fields
    (``reference_*_logps``, ``example_weight``) pass through unchanged; ``pair_mask`` is all ones.
    """
    pairs = pairs_of(examples)
    b = len(pairs)
    if b % micro_batches:
        raise ValueError(f"{b} pairs do not split into {micro_batches} micro-batches")
    m = b // micro_batches
    parts = [
        pack_preference_pairs(
            pairs[a * m : (a + 1) * m],
            row_length=row_length,
            num_rows=rows_per_micro,
            max_pairs=m,
            pack=pack,
            pad_id=pad_id,
            pair_offset=pair_offset,
        )
        for a in range(micro_batches)
    ]
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    out.update(_per_pair_fields(examples, b))
    return out


def _per_pair_fields(examples: Mapping[str, np.ndarray], b: int) -> dict[str, np.ndarray]:
    """The ``[b]`` fields of a batch of ``b`` pairs that are not token ids or lengths
    (``reference_*_logps``, ``example_weight``): they travel with their pairs."""
    tokenized = {"prompt", *PAIR_SIDES}
    return {k: np.asarray(v) for k, v in examples.items()
            if k.split("_")[0] not in tokenized and np.ndim(v) == 1 and len(v) == b}


def length_groups(lengths: Sequence[int], multiple: int) -> list[tuple[int, list[int]]]:
    """Pairs grouped by row length: ``[(row_length, [pair index, ...]), ...]``, shortest first.

    A pair of ``p + c + r`` tokens goes to the group of ``ceil((p + c + r) / multiple) * multiple``
    tokens, so a pair pays for at most ``multiple - 1`` padding tokens instead of padding up to the
    batch's longest pair. Each distinct group structure is one compiled step shape: coarser
    ``multiple`` values mean fewer shapes."""
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1, got {multiple}")
    groups: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        groups.setdefault(max(multiple, -(-int(n) // multiple) * multiple), []).append(i)
    return sorted(groups.items())


def pack_length_groups(
    pairs: Sequence[tuple[Sequence[int], Sequence[int], Sequence[int]]],
    *,
    multiple: int,
    pad_id: int = 0,
    per_pair: Mapping[str, Any] | None = None,
) -> tuple[PackedPairs, ...]:
    """Pairs -> one prefix-shared batch per :func:`length_groups` group (one pair per row, rows of
    the group's length, leading micro-batch axis of 1): the tuple form of a batch that
    :func:`align_jax.training.step.train_step` accumulates into one update. ``per_pair`` ``[P]``
    fields (``reference_*_logps``, ``example_weight``) are split to follow their pairs."""
    lengths = [_check_pair(i, *pair, 1 << 62) for i, pair in enumerate(pairs)]
    out = []
    for row_length, index in length_groups(lengths, multiple):
        group = pack_preference_pairs(
            [pairs[i] for i in index], row_length=row_length, num_rows=len(index), max_pairs=len(index),
            pack=False, pad_id=pad_id,
        )
        for k, v in (per_pair or {}).items():
            group[k] = np.asarray(v)[index]
        out.append({k: v[None] for k, v in group.items()})
    return tuple(out)


def group_example_batch(
    examples: Mapping[str, np.ndarray], *, micro_batches: int, multiple: int, pad_id: int = 0
) -> tuple[PackedPairs, ...]:
    """A host batch of ``b`` tokenized pairs -> length groups (:func:`pack_length_groups`) of each
    micro-batch's ``b / micro_batches`` pairs, concatenated. Per-pair ``[b]`` fields follow their pairs."""
    pairs = pairs_of(examples)
    b = len(pairs)
    if b % micro_batches:
        raise ValueError(f"{b} pairs do not split into {micro_batches} micro-batches")
    per_pair = _per_pair_fields(examples, b)
    m = b // micro_batches
    out: list[PackedPairs] = []
    for a in range(micro_batches):
        part = slice(a * m, (a + 1) * m)
        out += pack_length_groups(pairs[part], multiple=multiple, pad_id=pad_id,
                                  per_pair={k: v[part] for k, v in per_pair.items()})
    return tuple(out)
