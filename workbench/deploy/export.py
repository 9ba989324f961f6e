"""Export a finished run as a model folder that plain `transformers` loads, with a model card and a reference profile.

    <run>/export/
      config.json              id2label / label2id, the architecture
      model.safetensors        full weights: a LoRA / AdaLoRA / IA3 adapter merged into them (never pickle)
      tokenizer files          the run's tokenizer (tokens a task added included)
      README.md                model card: YAML front matter, data, test metrics, training config, how to load
      workbench_export.json    source run, task, max_length, labels, date, reference (what `serve` checks drift against)
      onnx/                    with --onnx: model.onnx + tokenizer + config.json (see `onnx_io`)

Which runs export: any task, since the folder is merged weights and `AutoModelFor<Task>` (the task's `auto_model`)
reads it: text-classification and relation-extraction (AutoModelForSequenceClassification), token-classification,
question-answering, masked-lm, causal-lm and causal-lm-sft (AutoModelForCausalLM: TGI and vLLM serve such a folder
as it is), seq2seq. Two kinds of run cannot: prefix- and prompt-tuned runs (their trained part is extra virtual
tokens fed to every layer, not a change of weights, so there is nothing to merge; plain transformers would load the
base model), and decoder classifiers trained with `model.pooling: mean` (plain transformers reads the last token,
so the exported folder would answer differently from the run).
"""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from ..errors import ModelError, RunError
from ..rundir import RunDir
from .folder import MANIFEST, file_sizes, open_source, write_manifest, writing

PIPELINE_TAGS = {"text-classification": "text-classification", "relation-extraction": "text-classification",
                 "token-classification": "token-classification", "question-answering": "question-answering",
                 "masked-lm": "fill-mask", "causal-lm": "text-generation", "causal-lm-sft": "text-generation",
                 "seq2seq": "text2text-generation"}
# scheme://user:password@host: the password part (a study's storage may be a database URL with its password)
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][\w+.-]*://[^:/@\s]*):[^@\s]*@")
HUB_IDS = {"minilm": "sentence-transformers/all-MiniLM-L6-v2", "smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct"}


@dataclass
class ExportResult:
    """What `export_run` wrote: the folder, its files (relative paths), their sizes in bytes, notes to show."""

    path: Path
    files: list[str]
    sizes: dict[str, int]
    notes: list[str] = field(default_factory=list)

    @property
    def size_mb(self) -> float:
        """The weights' size in MB (safetensors at the top level; the onnx/ folder is counted apart)."""
        return sum(v for k, v in self.sizes.items() if k.endswith(".safetensors") and "/" not in k) / 1e6


def export_problem(cfg: Any) -> str | None:
    """Why a run with this `RunConfig` cannot be exported as plain transformers weights, or None."""
    method = cfg.peft.method
    if method in ("prefix", "prompt"):
        what = "prefix tuning" if method == "prefix" else "prompt tuning"
        return (f"it was trained with {what}: what it learned is a set of virtual tokens fed to the model at every "
                f"call, not a change of its weights, so there is nothing to merge, and plain transformers would "
                f"load the untouched base model. Fix: serve the run itself (`workbench serve RUN`) or load it with "
                f"peft (`PeftModel.from_pretrained(base, RUN/model)`); to get an exportable model, train with "
                f"peft.method lora, adalora, ia3 or full.")
    if getattr(cfg.model, "pooling", "auto") != "auto":
        return (f"its classifier reads the mean of the hidden states (model.pooling: {cfg.model.pooling}), a "
                f"workbench head: plain transformers loads the same weights with the last-token head and would answer "
                f"differently. Fix: serve the run itself (`workbench serve RUN`), or train with model.pooling: auto.")
    return None


def load_run_model(run: RunDir) -> tuple[Any, Any]:
    """A finished run's model as full weights (an adapter merged into them) and its tokenizer, in eval mode.

    The run's merged copy is used when it saved one; an adapter-only run is loaded through the workbench's own
    loader (`load_trained`: the base from the run's record, the adapter checked) and merged here."""
    from ..models import load_trained
    from ..peft_methods import merge

    folder = run.model_dir / "merged" if (run.model_dir / "merged" / "config.json").is_file() else run.model_dir
    model, tok = load_trained(folder)
    if hasattr(model, "peft_config"):
        model = merge(model)
    return model.eval(), tok


def reference_profile(pred: pd.DataFrame, tokenizer: Any, task: str) -> dict[str, Any]:
    """What the model answered on the run's test split, for `workbench serve` to compare live traffic with (drift).

    The monitor's own form (`monitor.reference_from_predictions`: n, label_distribution — classes, or entity types
    for a tagger —, confidence mean and histogram, input_length in characters with quantiles and histogram), plus
    `input_tokens` (quantiles and mean of the tokenised, untruncated test inputs) for a reader of the card.
    """
    from .monitor import quantiles, reference_from_predictions

    if pred is None or len(pred) == 0:
        return {"n": 0, "split": "test"}
    out = {**reference_from_predictions(pred, task), "split": "test"}
    col = next((c for c in ("text", "prompt", "question") if c in pred), None)
    if col is not None:
        lengths = [len(x) for x in tokenizer(pred[col].astype(str).tolist(), add_special_tokens=True)["input_ids"]]
        out["input_tokens"] = {**quantiles(lengths), "mean": float(np.mean(lengths))}
    return out


def _scalars(m: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            and k != "n"}


def _redacted(x: Any) -> Any:
    """`x` with the password of every URL in its strings shown as *** (a card is made to be shared)."""
    if isinstance(x, str):
        return _URL_PASSWORD.sub(r"\g<head>:***@", x)
    if isinstance(x, dict):
        return {k: _redacted(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_redacted(v) for v in x]
    return x


def _redacted_yaml(config: dict[str, Any]) -> str:
    return yaml.safe_dump(_redacted(config), sort_keys=False, allow_unicode=True).strip()


def model_card(run: RunDir, cfg: Any, auto_model: str, labels: list[str]) -> str:
    """README.md of an export: YAML front matter (library_name, pipeline_tag, base_model, datasets), then the run's
    data, test metrics before/after, training config and how to load the folder."""
    from ..tasks import get_task

    task = get_task(cfg.task)
    base = cfg.model.name_or_path
    hub = HUB_IDS.get(base) or (base if "/" in base and not Path(base).expanduser().exists()
                                and not base.startswith((".", "/", "~")) else None)
    source = cfg.data.source
    dataset = None if Path(source).expanduser().exists() or "/" in source or "." in Path(source).name else source
    front = {"library_name": "transformers", "pipeline_tag": PIPELINE_TAGS.get(cfg.task, cfg.task),
             **({"base_model": hub} if hub else {}), **({"datasets": [dataset]} if dataset else {}),
             "tags": ["workbench", cfg.task] + ([f"{cfg.peft.method}-merged"] if cfg.peft.method != "full" else [])}
    lines = ["---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True).strip(), "---", "",
             f"# {run.name}", "",
             f"A `{cfg.task}` model fine-tuned with the workbench from `{Path(base).name if hub is None else hub}` "
             f"({cfg.peft.method}{', merged into the weights' if cfg.peft.method != 'full' else ''}).", ""]
    report = run.data_report()
    lines += ["## Data", "", f"- source: `{Path(source).name if dataset is None else source}`"]
    if report.get("split_sizes"):
        lines.append("- " + ", ".join(f"{k}: {v} {report.get('row_kind', 'row')}s"
                                      for k, v in report["split_sizes"].items()))
    if labels:
        lines.append(f"- labels ({len(labels)}): " + ", ".join(f"`{x}`" for x in labels[:40])
                     + (" ..." if len(labels) > 40 else ""))
    ev = run.evaluation()
    before, after = _scalars(ev.get("before", {})), _scalars(ev.get("after", {}))
    if after:
        keys = [task.headline] + [k for k in ("accuracy", "f1", "f1_macro", "precision_macro", "recall_macro",
                                              "exact_match", "chrf", "perplexity", "loss") if k != task.headline]
        keys = [k for k in keys if k in after][:6] or list(after)[:6]
        lines += ["", f"## Test metrics (n = {ev['after'].get('n', '?')})", "", "| metric | before | after |",
                  "|---|---|---|"]
        lines += [f"| {k} | {before[k]:.4f} | {after[k]:.4f} |" if k in before else f"| {k} | - | {after[k]:.4f} |"
                  for k in keys]
    pipe = PIPELINE_TAGS.get(cfg.task)
    lines += ["", "## Training config", "", "```yaml", _redacted_yaml(cfg.to_dict()), "```", "",
              "## How to load it", "", "```python",
              f"from transformers import {auto_model}, AutoTokenizer" + (", pipeline" if pipe else ""),
              f'model = {auto_model}.from_pretrained("path/to/this/folder")',
              'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")']
    if pipe:
        lines += [f'pipe = pipeline("{pipe}", model=model, tokenizer=tokenizer)', 'print(pipe("your text here"))']
    lines += ["```", "", f"Inputs longer than {cfg.data.max_length} tokens were truncated in training and testing.",
              "", "Serving elsewhere: Text Generation Inference and vLLM read this folder's safetensors as they are "
              "(text generation; vLLM also serves sequence classifiers); llama.cpp needs a GGUF file "
              "(`convert_hf_to_gguf.py` from llama.cpp); ONNX Runtime reads `onnx/model.onnx` when the folder was "
              "exported with `--onnx`.", ""]
    return "\n".join(lines)


def run_manifest(run: RunDir, cfg: Any, tokenizer: Any, pred: pd.DataFrame | None = None) -> dict[str, Any]:
    """The `workbench_export.json` of a folder made from `run`: where it came from, what it does, its profile."""
    from ..tasks import get_task

    if pred is None:
        try:
            pred = run.predictions("after")
        except RunError:
            pred = pd.DataFrame()
    labels = run.labels()
    return {"format": 1, "kind": "export", "source_run": str(run.path.resolve()), "source_run_name": run.name,
            "task": cfg.task, "auto_model": get_task(cfg.task).auto_model, "max_length": int(cfg.data.max_length),
            "labels": labels, "method": cfg.peft.method, "base_model": cfg.model.name_or_path,
            "exported": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "reference": reference_profile(pred, tokenizer, cfg.task)}


def export_run(run: str | Path | RunDir, out: str | Path | None = None, *, onnx: bool = False,
               overwrite: bool = False) -> ExportResult:
    """Write a finished run as a self-contained folder (default `<run>/export/`) that
    `AutoModelFor<Task>.from_pretrained(folder)` and `AutoTokenizer.from_pretrained(folder)` load alone.

    With `onnx`, also `<folder>/onnx/model.onnx` (`onnx_io.export_onnx`: torch.onnx.export, checked against torch
    with onnxruntime). Refused with a `RunError`/`ModelError` saying why and what to do: a run still queued or
    training, a stopped or failed run without a final model, a prefix- or prompt-tuned run, a mean-pooled
    classifier, an existing `out` (unless `overwrite`), a path that is not a run directory.
    """
    from ..tasks import get_task

    src = open_source(run, "export")
    if src.run is None or src.kind != "run":
        raise RunError(f"{src.path} is already a model folder written by the workbench ({src.kind}); export takes a "
                       f"run directory. Fix: give the run it came from"
                       + (f" ({src.manifest.get('source_run')})" if src.manifest.get("source_run") else "") + ".")
    r = src.run
    cfg = r.config()
    problem = export_problem(cfg)
    if problem:
        raise ModelError(f"run {r.name} cannot be exported as a plain transformers model: {problem}")
    if onnx:
        from .onnx_io import onnx_problem, require_onnx
        require_onnx()  # before any long work: a missing extra is said at once
        if onnx_problem(cfg.task):
            raise ModelError(f"run {r.name}: {onnx_problem(cfg.task)} Fix: export without --onnx.")
    task = get_task(cfg.task)
    out = Path(out).expanduser() if out is not None else r.path / "export"
    model, tok = load_run_model(r)
    labels = src.labels
    if labels and getattr(model.config, "num_labels", None) == len(labels) and cfg.task != "question-answering":
        model.config.id2label = dict(enumerate(labels))
        model.config.label2id = {name: i for i, name in enumerate(labels)}
    try:
        pred = r.predictions("after")
    except RunError:
        pred = pd.DataFrame()
    notes: list[str] = []
    if pred.empty:
        notes.append("the run has no test predictions: the reference profile is empty (no drift reference)")
    with writing(out, overwrite) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        meta = run_manifest(r, cfg, tok, pred)
        write_manifest(tmp, meta)
        (tmp / "README.md").write_text(model_card(r, cfg, task.auto_model, labels), encoding="utf-8")
        if onnx:
            from .onnx_io import export_onnx
            texts = pred["text"].astype(str).tolist()[:8] if "text" in pred else []
            notes += export_onnx(model, tok, tmp / "onnx", cfg.task, texts, cfg.data.max_length)
            write_manifest(tmp / "onnx", {**meta, "kind": "onnx"})
    sizes = file_sizes(out)
    if cfg.peft.method not in ("full",):
        notes.insert(0, f"{cfg.peft.method} adapter merged into the weights")
    assert (out / MANIFEST).is_file()
    return ExportResult(out, list(sizes), sizes, notes)
