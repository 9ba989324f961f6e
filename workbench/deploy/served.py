"""The model a server serves: a completed run directory or an exported model folder, loaded once.

A run is loaded as `workbench predict` / `workbench generate` load it (`Predictor.from_run`, `load_generator`);
its reference for drift is its test-split predictions. An export (`workbench export`) is a plain transformers
folder plus `workbench_export.json` ({source_run, task, max_length, labels, reference}); it is loaded with the
task's transformers Auto class, safetensors only, no remote code, whatever the folder's files say (anyone may have
written them). Both become one `Served`: `predict(texts)` for classifiers and taggers, `model`/`tokenizer` for
generators.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ModelError, RunError
from .monitor import Reference, entity_labels, parse_reference, reference_from_predictions

EXPORT_FILE = "workbench_export.json"
# The endpoint each servable task gets; every other task is refused with this list.
ENDPOINTS = {"text-classification": "/v1/classify", "token-classification": "/v1/tag",
             "causal-lm-sft": "/v1/generate", "seq2seq": "/v1/generate"}
# A model's architecture names its head: what an export without a task in its json most likely holds.
_HEADS = {"ForSequenceClassification": "text-classification", "ForTokenClassification": "token-classification",
          "ForCausalLM": "causal-lm-sft", "ForConditionalGeneration": "seq2seq"}


@dataclass
class Served:
    name: str
    kind: str  # "run" | "export"
    task: str
    labels: list[str]
    max_length: int
    predictor: Any = None  # a workbench Predictor (classification, tagging)
    model: Any = None  # a generator's model and tokenizer
    tokenizer: Any = None
    reference: Reference | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        return ENDPOINTS[self.task]

    @property
    def generates(self) -> bool:
        return self.endpoint == "/v1/generate"

    def predict(self, texts: list[str]) -> list[dict[str, Any]]:
        """One result per text: {label, confidence, probabilities} for a classifier, {entities} for a tagger."""
        frame = self.predictor.predict(texts, batch_size=max(len(texts), 1))
        if self.task == "token-classification":
            return [{"entities": [{k: e[k] for k in ("type", "text", "start", "end", "score")} for e in ents]}
                    for ents in frame["entities"]]
        cols = [f"p_{lab}" for lab in self.labels]
        return [{"label": str(row["predicted"]), "confidence": float(row["confidence"]),
                 "probabilities": {lab: float(row[c]) for lab, c in zip(self.labels, cols)}}
                for _, row in frame.iterrows()]

    @staticmethod
    def monitored(result: dict[str, Any]) -> tuple[list[str] | None, float | None]:
        """What the drift monitor records of one result: its labels and confidence."""
        if "entities" in result:
            return entity_labels(result["entities"]), None
        if "label" in result:
            return [result["label"]], result["confidence"]
        return None, None


def _refuse_task(task: str, where: str) -> None:
    if task not in ENDPOINTS:
        raise ModelError(f"{where} holds a {task} model; `workbench serve` serves "
                         f"{', '.join(ENDPOINTS)} models. Use `workbench predict` or the dashboard for it.")


def load_served(source: str | Path) -> Served:
    """A run directory (completed) or an exported folder, loaded and ready to predict; a `RunError` or
    `ModelError` saying what is wrong otherwise (a run still training, a folder that is neither)."""
    from ..rundir import ACTIVE, RunDir, pid_alive

    path = Path(source).expanduser()
    run = RunDir(path)
    if run.exists():
        st = run.status()
        if st.get("state") in ACTIVE and pid_alive(st.get("pid")):
            raise RunError(f"run {run.name} is still {st['state']} (step {st.get('step')} of "
                           f"{st.get('total_steps')}): it has no final model to serve yet. Wait for it to complete "
                           f"(`workbench status {path}`), then serve it.")
        if not run.model_dir.exists():
            why = f": {st['error']}" if st.get("error") else ""
            raise RunError(f"run {run.name} has no final model to serve (state: {st.get('state')}{why}). Serve a "
                           f"completed run; `workbench resume {path}` finishes a stopped or failed one.")
        return _load_run(run)
    if (path / EXPORT_FILE).exists() or (path / "config.json").exists():
        return _load_export(path)
    if not path.exists():
        raise RunError(f"{source}: no such run directory or model folder. Fix: give a run (list them with "
                       f"`workbench runs`) or a folder written by `workbench export`.")
    raise RunError(f"{source} is neither a run directory (no config.yaml) nor an exported model folder (no "
                   f"{EXPORT_FILE}, no config.json). Fix: give a run, or export one with `workbench export RUN`.")


def _load_run(run: Any) -> Served:
    cfg = run.config()
    _refuse_task(cfg.task, f"run {run.name}")
    try:
        ref = parse_reference(reference_from_predictions(run.predictions("after"), cfg.task),
                              "the run's test-split predictions")
    except (RunError, ValueError, KeyError) as e:
        ref = Reference(source="run", notes=[f"no reference: {str(e).splitlines()[0]}"])
    if ENDPOINTS[cfg.task] == "/v1/generate":
        from ..generate import load_generator

        model, tok, max_length = load_generator(run.path)
        return Served(run.name, "run", cfg.task, [], max_length, model=model, tokenizer=tok, reference=ref)
    from ..predict import Predictor

    p = Predictor.from_run(run)
    return Served(run.name, "run", cfg.task, list(p.labels), p.max_length, predictor=p, reference=ref)


def read_export_record(folder: Path) -> dict[str, Any]:
    """`workbench_export.json` as a dict (untrusted: only plain values of it are used)."""
    f = folder / EXPORT_FILE
    if not f.exists():
        raise ModelError(f"{folder} has a config.json but no {EXPORT_FILE}: it is a transformers model folder, not "
                         f"a workbench export, so its task, labels and test-split reference are unknown. Fix: export a "
                         f"run with `workbench export RUN` and serve that folder, or serve the run directory itself.")
    try:
        rec = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:  # ValueError: bad JSON, bad UTF-8, a 5000-digit number
        raise ModelError(f"{f} cannot be read ({type(e).__name__}: {str(e)[:120]}). Fix: export the run again.") \
            from None
    if not isinstance(rec, dict):
        raise ModelError(f"{f} holds a JSON {type(rec).__name__}, not an object. Fix: export the run again.")
    return rec


def _load_export(folder: Path) -> Served:
    import transformers
    from transformers import AutoConfig, AutoTokenizer

    from ..models import check_model_dir, with_pad_token
    from ..tasks import get_task

    rec, notes = read_export_record(folder), []
    try:
        mcfg = AutoConfig.from_pretrained(folder, trust_remote_code=False)
    except Exception as e:  # noqa: BLE001 - a damaged config.json is the user's to fix
        raise ModelError(f"{folder}/config.json cannot be read ({type(e).__name__}: {str(e)[:160]}).") from None
    task = rec.get("task")
    if not isinstance(task, str):
        arch = " ".join(getattr(mcfg, "architectures", None) or [])
        task = next((t for head, t in _HEADS.items() if head in arch), "")
        notes.append(f"{EXPORT_FILE} names no task; {task or 'none'} guessed from the architecture {arch!r}.")
    _refuse_task(task, str(folder))
    labels = rec.get("labels")
    if not (isinstance(labels, list) and all(isinstance(x, str) for x in labels)):
        id2label = getattr(mcfg, "id2label", None) or {}
        labels = [str(id2label[i]) for i in sorted(id2label)] if not ENDPOINTS[task].endswith("generate") else []
        notes.append(f"{EXPORT_FILE} has no labels list; taken from config.json's id2label.")
    max_length = rec.get("max_length")
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        max_length = 256
        notes.append(f"{EXPORT_FILE} has no max_length; texts are cut at {max_length} tokens.")
    ref = parse_reference(rec["reference"], f"{EXPORT_FILE} reference") if "reference" in rec else None
    if ref is None:
        notes.append(f"{EXPORT_FILE} has no reference: drift cannot be measured.")
    from .folder import KINDS

    if rec.get("kind") in KINDS and rec.get("kind") != "export":  # quantised / pruned / ONNX: the deploy loader
        from .compress import load_compressed

        model, tok, _ = load_compressed(folder)
        notes.append(f"serving the {rec['kind']} model of {rec.get('source_run_name') or 'its run'}.")
        if rec["kind"] in ("onnx", "onnx-int8"):
            notes.append("an ONNX Runtime session: no attention maps, CPU only.")
    else:
        check_model_dir(folder, allow_pickle=False)  # here only: the deploy loader checks its own kinds' files
        auto = getattr(transformers, get_task(task).auto_model)
        try:
            tok = with_pad_token(AutoTokenizer.from_pretrained(folder, trust_remote_code=False))
            model = auto.from_pretrained(folder, use_safetensors=True, trust_remote_code=False)
        except Exception as e:  # noqa: BLE001 - reported with the folder, not as a traceback
            raise ModelError(f"{folder} cannot be loaded as a {task} model ({type(e).__name__}: {str(e)[:200]}). "
                             f"Fix: export the run again with `workbench export RUN`.") from None
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tok.pad_token_id
    model.eval()
    n = getattr(model.config, "num_labels", len(labels))
    if labels and len(labels) != n:
        raise ModelError(f"{folder / EXPORT_FILE} lists {len(labels)} labels but the model has {n} outputs: the "
                         f"record does not belong to this model. Fix: export the run again.")
    name = folder.name
    if ENDPOINTS[task] == "/v1/generate":
        return Served(name, "export", task, [], max_length, model=model, tokenizer=tok, reference=ref, notes=notes)
    from ..predict import Predictor

    p = Predictor(model, tok, labels, max_length=max_length, bf16=False, task=task)
    return Served(name, "export", task, labels, max_length, predictor=p, reference=ref, notes=notes)
