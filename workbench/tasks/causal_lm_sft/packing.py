"""Packing (`data.packing`): several encoded conversations per training row, none seeing another.

Short conversations padded to a batch's longest one waste most of each row on padding; packing fills rows
of up to `data.max_length` tokens with whole conversations instead (best-fit decreasing, TRL's `bfd`
strategy: the longest conversation first, each into the fullest row it still fits), so an epoch takes fewer,
fuller rows. It is for training only: validation, test scoring and predictions see one conversation per row.

No contamination across conversations, by transformers' own machinery rather than a mask of ours: each row
carries `position_ids` that restart at 0 for every conversation, the batch carries no `attention_mask`, and
transformers' mask builder (`masking_utils.find_packed_sequence_indices`) reads the restarts as sequence
boundaries and makes the causal mask block-diagonal: the same convention as `DataCollatorWithFlattening`.
That detection is skipped when the forward pass holds a KV cache, and Llama's config has `use_cache: true`,
so a packed batch also passes `use_cache=False` (without it attention leaks across conversations; the test
in tests/test_sft_packing.py checks both). The first label of every conversation is -100, so the last token
of one never predicts the first token of the next (`DataCollatorWithFlattening`'s `separator_id`).
"""

from __future__ import annotations

import bisect
from typing import Any, Sequence

from .encode import IGNORE


def bins(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Indices of `lengths` grouped into rows of at most `capacity` tokens, best-fit decreasing: each
    item (longest first, ties by index) goes into the row with the least room that still holds it, else a new
    row. Deterministic; an item longer than `capacity` gets a row of its own."""
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, row number), sorted
    for i in sorted(range(len(lengths)), key=lambda k: (-lengths[k], k)):
        n = lengths[i]
        at = bisect.bisect_left(free, (n, -1))
        if at < len(free):
            room, r = free.pop(at)
        else:
            room, r = capacity, len(rows)
            rows.append([])
        rows[r].append(i)
        if room - n > 0:
            bisect.insort(free, (room - n, r))
    return rows


def pack(dataset: Any, max_length: int) -> tuple[Any, dict[str, Any]]:
    """Encoded conversations (`CausalLMSFT.encode`'s dataset) packed into rows of up to `max_length` tokens,
    with `position_ids` restarting per conversation and -100 on each conversation's first label; and what
    packing did: `{"rows": before, "packed_rows": after, "tokens": ..., "fill": tokens / (rows x max_length)}`."""
    import datasets

    ids, labels = dataset["input_ids"], dataset["labels"]
    lengths = [len(x) for x in ids]
    cols: dict[str, list[Any]] = {"input_ids": [], "labels": [], "position_ids": [], "length": []}
    for row in bins(lengths, max_length):
        row.sort()  # the data's own order within a row (any order gives the same loss)
        cols["input_ids"].append([t for i in row for t in ids[i]])
        cols["labels"].append([t for i in row for t in [IGNORE, *labels[i][1:]]])
        cols["position_ids"].append([p for i in row for p in range(lengths[i])])
        cols["length"].append(sum(lengths[i] for i in row))
    tokens = sum(lengths)
    n = len(cols["input_ids"])
    stats = {"rows": len(lengths), "packed_rows": n, "tokens": tokens, "max_length": max_length,
             "fill": round(tokens / max(n * max_length, 1), 4)}
    return datasets.Dataset.from_dict(cols), stats

