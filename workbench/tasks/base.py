"""The Task protocol: the one place that says what differs between tasks.

A task is a handful of plain functions and facts, the way torchtune's recipe interface and litgpt's
`DataModule`/`SFTDataset` draw the line: the task owns its data (which columns or file format it reads,
their checks, how examples become token ids and labels, -100 where a position must not count), its
batching, its model head and PEFT task type, its metrics with their directions, and how model outputs
become a per-example table. Everything else (the config tree, the run directory, launch/stop/resume,
NaN halting, out-of-memory halving, estimates, training curves) is shared and calls *through* a task
found by name in the registry (`workbench.tasks.get_task`).

No implementation inheritance: a task is any object with these members (a module-level instance of a
small class, as `workbench/tasks/classification.py` does).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import datasets
    import pandas as pd
    import torch

    from ..config import DataConfig, ModelConfig
    from ..data.prepare import PreparedData

# The per-example table every task's `predict` returns (and predictions.jsonl stores). Shared code
# (error analysis, compare, the dashboard's tables) reads only these columns; a task adds its own
# (probabilities, spans, ...) and the user's extra columns are kept for slicing.
ROW = "row"              # the example's row/line number in its source
REFERENCE = "gold"        # the reference answer (a label, a span list, a text); absent when there is none
PREDICTION = "predicted"  # what the model answered, in the same form as the reference
LOSS = "loss"             # per-example loss (lower is better), or another per-example score
CORRECT = "correct"       # bool, where "right or wrong" means something for the task
CONTRACT = (ROW, REFERENCE, PREDICTION, LOSS, CORRECT)


@dataclass(frozen=True)
class DataRole:
    """One thing a task reads from the data: a column (text, label, ...) or a file format."""

    name: str                     # "text", "label", "tokens", ...
    config_field: str | None      # the DataConfig field that names it ("text_column"), if any
    required: bool
    help: str


@runtime_checkable
class Task(Protocol):
    """What a task supplies. Attributes are facts; methods take and return plain data.

    Optional, for attention and saliency (`workbench.attention`): `readout`, where the model's prediction is
    read: "sequence" (one per text, at [CLS] or the last token; the default) or "word" (one per word, at its
    first sub-word); a "word" task also has `tokenize_words(tokenizer, text) -> (words, encoding)`, the
    encoding's `word_ids()` mapping sub-words to words as the task's own prediction tokenises them.

    Optional, for tasks whose outputs are too big to gather over a validation split (a causal LM's logits):
    `preprocess_logits_for_metrics(logits, labels)`, passed to the Trainer, reduces each batch before
    `compute_metrics` sees it. A task without classes sets `needs_labels = False` (its labels list is empty).

    Optional, for `data.augment` (`workbench.augment`): `augment`, what its training rows are to augmentation:
    "text" (a `text` column mapped to labels) or "words" (`tokens`/`tags` lists); a task without it refuses
    augmentation.
    """

    name: str                     # the value of `RunConfig.task`, e.g. "text-classification"
    description: str              # one line for help texts and the dashboard
    roles: tuple[DataRole, ...]   # the data it needs (shown by the dashboard's Train page)
    model_inputs: tuple[str, ...]  # dataset fields the collator passes to the model (others are dropped)
    auto_model: str               # transformers Auto class of the model, e.g. "AutoModelForSequenceClassification"
    peft_task_type: str           # peft.TaskType name, e.g. "SEQ_CLS"
    directions: dict[str, bool]   # metric name -> greater is better (validation metrics and "loss")
    headline: str                 # the metric a run is summarised by
    freeze_embeddings_ok: bool    # may `peft.freeze_embeddings` (a default) freeze the input embeddings?

    def prepare(self, cfg: DataConfig, seed: int, tokenizer: Any = None, *,
                raise_on_problems: bool = True, max_positions: int | None = None) -> PreparedData:
        """Read, check and split the data; task-specific findings go into the data report. With
        `raise_on_problems`, problems that stop a run raise one `DataError` listing them all.
        `max_positions` (the model's limit) caps `cfg.max_length` with a warning in the report; the value
        used is `PreparedData.max_length`."""
        ...

    def encode(self, frame: pd.DataFrame, tokenizer: Any, max_length: int) -> datasets.Dataset:
        """Token ids and labels (-100 where a position must not count), plus a `length` column. A task whose
        encoding depends on the model (a tagger labels a decoder's words at their last sub-word) takes an
        optional keyword `model`; call through `encode_split`, which passes it where accepted."""
        ...

    def collator(self, tokenizer: Any) -> Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]]:
        """Batches of encoded examples, padded per batch; keeps `model_inputs`."""
        ...

    def load_model(self, cfg: ModelConfig, labels: list[str], *, tokenizer: Any = None,
                   attn_implementation: str | None = None, dtype: Any = None) -> Any:
        """The pretrained model with this task's head for `labels`."""
        ...

    def compute_metrics(self, eval_pred: Any, labels: Sequence[str]) -> dict[str, float]:
        """The Trainer's `compute_metrics` for validation passes (names are keys of `directions`); `labels`
        are the label names in id order."""
        ...

    def predict(self, model: Any, tokenizer: Any, frame: pd.DataFrame, labels: list[str], *,
                max_length: int, batch_size: int = 64, bf16: bool = False) -> pd.DataFrame:
        """The per-example table (see CONTRACT) for `frame` as `prepare` made it."""
        ...

    def score(self, pred: pd.DataFrame, labels: Sequence[str]) -> dict[str, Any]:
        """Test-split metrics (eval.json's before/after) from a per-example table."""
        ...

    def frame_from_predictions(self, pred: pd.DataFrame, labels: list[str]) -> pd.DataFrame:
        """Inputs and references back from a stored per-example table (re-scoring a run)."""
        ...

    def align_labels(self, frame: pd.DataFrame, labels: list[str], source: str) -> pd.DataFrame:
        """A prepared frame of new data, its references mapped to a trained model's labels (or a DataError)."""
        ...


def encode_split(task: Task, frame: pd.DataFrame, tokenizer: Any, max_length: int, model: Any = None) -> Any:
    """`task.encode`, with the loaded `model` for tasks whose `encode` takes a `model` keyword."""
    if model is not None and "model" in inspect.signature(task.encode).parameters:
        return task.encode(frame, tokenizer, max_length, model=model)
    return task.encode(frame, tokenizer, max_length)


def greater_is_better(task: Task, metric: str) -> bool:
    """The direction of `metric` (with or without the Trainer's `eval_` prefix) for `task`."""
    name = metric.removeprefix("eval_")
    if name in task.directions:
        return bool(task.directions[name])
    if name.endswith("loss"):
        return False
    raise KeyError(name)
