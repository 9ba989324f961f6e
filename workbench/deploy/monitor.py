"""What a server has been predicting, next to what its model predicted on the run's test split: a drift flag.

The server keeps a rolling window of its last N predictions (label, confidence, input length in characters).
The reference is the run's test-split predictions (`predictions.jsonl`), or the `reference` an export wrote
into `workbench_export.json` (`reference_from_predictions` writes that form). Three statistics compare them:

- label shares: total variation distance, TVD = ½ Σ |p_window − p_reference| (0: same shares, 1: disjoint).
  Over `TVD_THRESHOLD` = 0.15 (15 points of share moved between labels) flags drift.
- confidence: the population stability index over 10 equal bins of [0, 1],
  PSI = Σ (a − e) ln(a / e) with a, e the window's and the reference's bin shares (+0.5 per bin, so an empty
  bin is not infinite). Over `PSI_THRESHOLD` = 0.25, the usual "significant shift" line, flags drift.
- input length: the same PSI over 5 bins cut at the reference's length quintiles.

No flag (`null`) until the window holds `min_count` predictions (default 100): with fewer, sampling noise
alone moves these statistics past their thresholds. PSI is noisy with a small reference too (~(bins − 1) ×
(1/n_ref + 1/n_window) for the same distribution), hence few bins. A tagger's "labels" are the entity types it
found (a sentence without any counts as `(no entities)`); a generator has no labels: only length is compared.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

TVD_THRESHOLD = 0.15
PSI_THRESHOLD = 0.25
MIN_COUNT = 100
CONFIDENCE_EDGES = [round(i / 10, 1) for i in range(11)]
LENGTH_BINS = 5
NO_ENTITIES = "(no entities)"


# --- the statistics -----------------------------------------------------------------------------------
def histogram(values: Iterable[float], edges: Sequence[float]) -> list[int]:
    """Counts in the bins between `edges` (len(edges) − 1 bins, each [lo, hi), the last one closed); values
    outside the edges count in the first or last bin."""
    inner = np.asarray(edges[1:-1], dtype=float)
    idx = np.searchsorted(inner, np.asarray(list(values), dtype=float), side="right")
    return np.bincount(idx, minlength=len(edges) - 1).astype(int).tolist()


def psi(expected: Sequence[int], actual: Sequence[int]) -> float:
    """Population stability index of two histograms over the same bins (0.5 added to each bin's count)."""
    e = np.asarray(expected, dtype=float) + 0.5
    a = np.asarray(actual, dtype=float) + 0.5
    e, a = e / e.sum(), a / a.sum()
    return float(np.sum((a - e) * np.log(a / e)))


def tvd(p: dict[str, float], q: dict[str, float]) -> float:
    """Total variation distance of two distributions over labels (a label missing from one has share 0)."""
    return 0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in set(p) | set(q))


def shares(labels: Iterable[str]) -> dict[str, float]:
    counts: dict[str, int] = {}
    for x in labels:
        counts[x] = counts.get(x, 0) + 1
    n = sum(counts.values())
    return {k: v / n for k, v in sorted(counts.items())} if n else {}


def quantiles(values: Sequence[float]) -> dict[str, float]:
    if not len(values):
        return {}
    q = np.quantile(np.asarray(values, dtype=float), [0.1, 0.5, 0.9])
    return {"p10": float(q[0]), "p50": float(q[1]), "p90": float(q[2])}


def length_edges(lengths: Sequence[float]) -> list[float]:
    """Bin edges at the quintiles of `lengths` (repeated values merged: at least 2 bins when lengths vary)."""
    qs = np.quantile(np.asarray(lengths, dtype=float), np.linspace(0, 1, LENGTH_BINS + 1))
    return sorted({float(x) for x in qs})


# --- the reference --------------------------------------------------------------------------------------
def entity_labels(entities: Any) -> list[str]:
    """A tagger's labels for one text: its entities' types, or `(no entities)`."""
    types = [str(e.get("type")) for e in entities or [] if isinstance(e, dict) and e.get("type")]
    return types or [NO_ENTITIES]


def reference_from_predictions(frame: Any, task: str) -> dict[str, Any]:
    """The reference a server compares with, from a run's test-split predictions (`RunDir.predictions("after")`):
    the JSON form an export writes as `reference` in `workbench_export.json`."""
    texts = [str(t) for t in frame["text"]] if "text" in frame else []
    out: dict[str, Any] = {"n": int(len(frame))}
    if task == "token-classification" and "pred_entities" in frame:
        out["label_distribution"] = shares(x for ents in frame["pred_entities"] for x in entity_labels(ents))
    elif "predicted" in frame and task != "causal-lm-sft" and task != "seq2seq":
        out["label_distribution"] = shares(str(x) for x in frame["predicted"])
        if "confidence" in frame:
            conf = [float(c) for c in frame["confidence"] if c is not None and math.isfinite(float(c))]
            if conf:
                out["confidence"] = {"mean": float(np.mean(conf)),
                                     "histogram": {"edges": CONFIDENCE_EDGES,
                                                   "counts": histogram(conf, CONFIDENCE_EDGES)}}
    if texts:
        lengths = [len(t) for t in texts]
        edges = length_edges(lengths)
        out["input_length"] = {**quantiles(lengths), "mean": float(np.mean(lengths))}
        if len(edges) > 1:
            out["input_length"]["histogram"] = {"edges": edges, "counts": histogram(lengths, edges)}
    return out


@dataclass
class Reference:
    """A reference read tolerantly: each part that is missing or malformed is left out, with a note."""

    n: int | None = None
    label_shares: dict[str, float] | None = None
    confidence_mean: float | None = None
    confidence_hist: tuple[list[float], list[int]] | None = None
    length_quantiles: dict[str, float] = field(default_factory=dict)
    length_hist: tuple[list[float], list[int]] | None = None
    source: str = ""
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {"source": self.source, "n": self.n, "label_distribution": self.label_shares,
                "confidence_mean": self.confidence_mean, "input_length": self.length_quantiles or None,
                "notes": self.notes}


def _number(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    try:
        v = float(x)  # a JSON int may have any size: 10**400 does not fit a float
    except OverflowError:
        return None
    return v if math.isfinite(v) else None


def _hist(raw: Any, default_edges: list[float] | None) -> tuple[list[float], list[int]] | None:
    """{"edges": [...], "counts": [...]} (or a bare list of counts over `default_edges`), checked."""
    if isinstance(raw, list) and default_edges is not None:
        raw = {"edges": default_edges, "counts": raw}
    if not isinstance(raw, dict):
        return None
    edges, counts = raw.get("edges"), raw.get("counts")
    if not isinstance(edges, list) or not isinstance(counts, list) or len(edges) != len(counts) + 1 or not counts:
        return None
    e = [_number(x) for x in edges]
    c = [_number(x) for x in counts]
    if any(x is None for x in e + c) or any(b < a for a, b in zip(e, e[1:])) or any(x < 0 for x in c):
        return None
    if not math.isfinite(sum(c)):  # counts summing to inf make every share 0 and the PSI inf
        return None
    return [float(x) for x in e], [int(x) for x in c]


def parse_reference(raw: Any, source: str) -> Reference:
    """A `Reference` from the JSON form (`reference_from_predictions`), whoever wrote it: label shares or counts,
    a histogram as {"edges", "counts"} or a list of counts over 10 equal confidence bins."""
    ref = Reference(source=source)
    if not isinstance(raw, dict):
        ref.notes.append(f"{source}: the reference is not a JSON object; drift cannot be measured.")
        return ref
    n = _number(raw.get("n"))
    ref.n = int(n) if n is not None else None
    dist = raw.get("label_distribution")
    if isinstance(dist, dict) and dist and all(_number(v) is not None and v >= 0 for v in dist.values()):
        total = sum(float(v) for v in dist.values())
        ref.label_shares = ({str(k): float(v) / total for k, v in dist.items()}
                            if 0 < total < math.inf else None)
        if total == math.inf:
            ref.notes.append("label_distribution's counts sum to more than a float holds: left out.")
    elif dist is not None:
        ref.notes.append("label_distribution is not a mapping of label to share or count: left out.")
    conf = raw.get("confidence")
    if isinstance(conf, dict):
        ref.confidence_mean = _number(conf.get("mean"))
        if "histogram" in conf:
            ref.confidence_hist = _hist(conf["histogram"], CONFIDENCE_EDGES)
            if ref.confidence_hist is None:
                ref.notes.append("confidence.histogram is malformed (want edges and counts): confidence PSI left out.")
    elif conf is not None:
        ref.notes.append("confidence is not an object with mean and histogram: left out.")
    length = raw.get("input_length")
    if isinstance(length, dict):
        qs = length.get("quantiles") if isinstance(length.get("quantiles"), dict) else length
        ref.length_quantiles = {k: float(qs[k]) for k in ("p10", "p50", "p90") if _number(qs.get(k)) is not None}
        if "histogram" in length:
            ref.length_hist = _hist(length["histogram"], None)
            if ref.length_hist is None:
                ref.notes.append("input_length.histogram is malformed (want edges and counts): length PSI left out.")
    elif length is not None:
        ref.notes.append("input_length is not an object: left out.")
    return ref


# --- the rolling window ---------------------------------------------------------------------------------
class Monitor:
    """The last `window` predictions and their comparison with `reference` (thread-safe)."""

    def __init__(self, reference: Reference | None, window: int = 1000, min_count: int = MIN_COUNT):
        self.reference, self.window, self.min_count = reference, window, min_count
        self._rows: deque[tuple[list[str] | None, float | None, int]] = deque(maxlen=window)
        self._lock = threading.Lock()

    def record(self, labels: list[str] | None, confidence: float | None, length: int) -> None:
        with self._lock:
            self._rows.append((labels, confidence, length))

    def __len__(self) -> int:
        return len(self._rows)

    def report(self) -> dict[str, Any]:
        """The window next to the reference, and the drift flag with its statistics (GET /v1/monitor)."""
        with self._lock:
            rows = list(self._rows)
        labels = [x for lab, _, _ in rows if lab is not None for x in lab]
        conf = [c for _, c, _ in rows if c is not None]
        lengths = [n for _, _, n in rows]
        win_shares = shares(labels)
        window = {"size": self.window, "n": len(rows), "label_distribution": win_shares or None,
                  "confidence_mean": float(np.mean(conf)) if conf else None,
                  "input_length": quantiles(lengths) or None}
        ref = self.reference
        stats: dict[str, Any] = {}
        if ref is not None:
            if ref.label_shares and labels:
                stats["label_tvd"] = _stat(tvd(win_shares, ref.label_shares), TVD_THRESHOLD)
            if ref.confidence_hist and conf:
                edges, counts = ref.confidence_hist
                stats["confidence_psi"] = _stat(psi(counts, histogram(conf, edges)), PSI_THRESHOLD)
            if ref.length_hist and lengths:
                edges, counts = ref.length_hist
                stats["length_psi"] = _stat(psi(counts, histogram(lengths, edges)), PSI_THRESHOLD)
        drift: dict[str, Any] = {"flag": None, "min_count": self.min_count, "statistics": stats}
        if ref is None:
            drift["reason"] = "no reference to compare with (the source has no test-split predictions)."
        elif not stats:
            drift["reason"] = "nothing to compare yet: no predictions, or the reference lacks these statistics."
        elif len(rows) < self.min_count:
            drift["reason"] = f"needs {self.min_count} predictions in the window before flagging; has {len(rows)}."
        else:
            over = [k for k, s in stats.items() if s["over"]]
            drift["flag"] = bool(over)
            drift["reason"] = (f"over the threshold: {', '.join(over)}" if over
                               else "every statistic is under its threshold.")
        return {"window": window, "reference": ref.summary() if ref else None, "drift": drift}


def _stat(value: float, threshold: float) -> dict[str, Any]:
    return {"value": round(value, 4), "threshold": threshold, "over": value > threshold}
