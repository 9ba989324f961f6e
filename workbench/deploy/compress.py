"""Quantisation and pruning as run-to-run operations, and what they cost and buy (`measure`).

Each operation reads a finished run (or a folder `export_run`/an earlier operation wrote), writes a NEW model folder
(default `<run>/compressed/<what>/`, or `<folder>-<what>` beside a folder), re-scores it on the run's test split with
the task's own predict/score functions (the run's stored test predictions give the inputs and references), and
measures it: `compression.json` in the new folder, returned as a `Measurement`.

- `quantize(source, out, method)`:
  "int8-dynamic": torch dynamic int8 of every nn.Linear (`int8`: saved as int8 tensors + scales in safetensors,
  rebuilt on load, never pickle); "bf16": a bfloat16 safetensors copy (half the size; plain transformers loads it);
  "onnx-int8": onnxruntime's dynamic int8 of the ONNX graph (the [deploy] extra).
- `prune(source, out, sparsity, kind)`: "magnitude" zeroes the smallest |w| of the Linear weights inside the
  encoder/decoder layers (not embeddings, pooler or task head), per matrix (`scope="layer"`) or over all of them
  (`scope="global"`); "heads" zeroes whole attention heads of a BERT-family encoder. Both save plain safetensors
  with zeros: dense storage does not shrink, and latency does not drop without sparse kernels; `measure` reports the
  numbers anyway, so the table shows it.
- `load_compressed(folder)`: any folder written by the deploy stage as (model, tokenizer, manifest).
"""

from __future__ import annotations

import re
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import torch

from ..errors import ModelError, RunError, WorkbenchError
from ..rundir import RunDir, write_json_atomic
from .folder import MANIFEST, QUANTISED, Source, open_source, read_manifest, size_mb, write_manifest, writing

METHODS = ("int8-dynamic", "bf16", "onnx-int8")
PRUNE_KINDS = ("magnitude", "heads")
RESULT = "compression.json"


@dataclass
class Measurement:
    """One row of a size / speed / score table (`measure`)."""

    folder: str
    kind: str                       # run, export, bf16, int8-dynamic, onnx, onnx-int8, pruned
    size_mb: float                  # weights on disk, MB (10^6 bytes)
    latency_ms_p50: float | None    # one text: tokenise + forward, median over `runs` after warm-up
    throughput: float | None        # texts per second for one batch of `batch_size` texts (median batch time)
    batch_size: int
    metric: str | None              # the task's headline metric
    score: float | None             # on the run's test split
    source_score: float | None      # the run's own (eval.json "after")
    agreement: float | None         # share of test examples whose prediction equals the run's stored one
    threads: int
    runs: int
    compression: dict[str, Any] = field(default_factory=dict)  # what was done (method, sparsity, heads, ...)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- loading -----------------------------------------------------------------------------------------------------
def load_compressed(folder: str | Path) -> tuple[Any, Any, dict[str, Any]]:
    """(model, tokenizer, manifest) of any folder written by `export_run`, `quantize` or `prune`, in eval mode.

    export / pruned: `AutoModelFor<Task>.from_pretrained` (safetensors only); bf16: the same in bfloat16; int8-dynamic:
    rebuilt from int8 safetensors (`int8.load_int8`, no pickle); onnx / onnx-int8: an onnxruntime session behind the
    model interface the workbench's predict functions use (`onnx_io.OnnxModel`). The manifest is untrusted input:
    it names a kind and a registered task, nothing else decides how the folder loads."""
    import transformers
    from transformers import AutoConfig, AutoTokenizer

    from ..models import check_model_dir, with_pad_token
    from ..tasks import get_task

    folder = Path(folder).expanduser()
    meta = read_manifest(folder)
    kind, task = meta["kind"], get_task(meta["task"])
    try:
        tok = with_pad_token(AutoTokenizer.from_pretrained(folder, trust_remote_code=False))
    except Exception as e:  # noqa: BLE001 - a damaged or missing tokenizer file is the folder's, not a bug
        raise ModelError(f"{folder}: its tokenizer files (tokenizer.json, tokenizer_config.json) cannot be loaded "
                         f"({type(e).__name__}: {str(e)[:160]}). Fix: export or quantise the run again.") from None
    if kind in ("onnx", "onnx-int8"):
        from .onnx_io import OnnxModel, require_onnx

        require_onnx()
        if not (folder / "model.onnx").is_file():
            raise ModelError(f"{folder} is an {kind} folder without model.onnx. Fix: export or quantise again.")
        try:
            config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
        except Exception as e:  # noqa: BLE001 - a damaged or foreign config.json
            raise ModelError(f"{folder / 'config.json'} cannot be read ({type(e).__name__}: {str(e)[:160]}). "
                             f"Fix: export or quantise the run again.") from None
        model = OnnxModel(folder / "model.onnx", config, meta["task"])
    elif kind == "int8-dynamic":
        from .int8 import load_int8

        model = load_int8(folder, task.auto_model)
    else:
        check_model_dir(folder, allow_pickle=False)
        dtype = torch.bfloat16 if kind == "bf16" else torch.float32
        try:
            model = getattr(transformers, task.auto_model).from_pretrained(folder, use_safetensors=True, dtype=dtype,
                                                                          trust_remote_code=False)
        except Exception as e:  # noqa: BLE001 - shown as a message, not a traceback
            raise ModelError(f"{folder} could not be loaded as {task.auto_model}: {type(e).__name__}: "
                             f"{str(e)[:300]}") from None
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tok.pad_token_id
    return model.eval(), tok, meta


def _fp32(src: Source, doing: str) -> tuple[Any, Any]:
    """The source's full-precision torch model and tokenizer."""
    from .export import export_problem, load_run_model

    if src.kind == "run":
        cfg = src.run.config()
        problem = export_problem(cfg)
        if problem:
            raise ModelError(f"run {src.name} cannot be {doing}d as a plain transformers model: {problem}")
        return load_run_model(src.run)
    model, tok, _ = load_compressed(src.path)
    return model, tok


def _base_manifest(src: Source, tok: Any) -> dict[str, Any]:
    """The manifest a derived folder starts from: the source folder's, or a run's as `export_run` writes it."""
    if src.kind != "run":
        return {k: v for k, v in src.manifest.items() if k not in ("compression", "format_note")}
    from .export import run_manifest

    return run_manifest(src.run, src.run.config(), tok)


def _default_out(src: Source, tag: str) -> Path:
    return src.path / "compressed" / tag if src.kind == "run" else src.path.with_name(f"{src.path.name}-{tag}")


def _refuse_quantised(src: Source, doing: str) -> None:
    if src.kind in QUANTISED:
        origin = src.manifest.get("source_run") or "the run it came from"
        then = ("prune the fp32 model first, then quantise the pruned folder" if doing == "prune" else
                "quantise the fp32 run or its export instead")
        again = "quantising it again" if doing == "quantise" else "pruning it"
        raise WorkbenchError(f"{src.path} is already quantised ({src.kind}); {again} would work on rounded weights and "
                             f"compound the error. Fix: {then} ({origin}).")


# --- quantisation ------------------------------------------------------------------------------------------------
def quantize(source: str | Path | RunDir, out: str | Path | None = None,
             method: Literal["int8-dynamic", "bf16", "onnx-int8"] = "int8-dynamic", *, overwrite: bool = False,
             evaluate: bool = True, **measure_kw: Any) -> Measurement:
    """Write a quantised copy of `source` (a finished run, or a folder written by the deploy stage) and measure it.

    Refused with a message: an unknown method, a source that is already quantised, torch methods on an ONNX
    folder, onnx-int8 without the [deploy] extra, plus everything `export_run` refuses."""
    if method not in METHODS:
        raise WorkbenchError(f"quantisation method {method!r} is not one of {', '.join(METHODS)}.")
    src = open_source(source, "quantise")
    _refuse_quantised(src, "quantise")
    if src.kind == "onnx" and method != "onnx-int8":
        raise WorkbenchError(f"{src.path} is an ONNX graph; {method} works on torch weights. Fix: quantise the run or "
                             f"its export folder, or use --method onnx-int8.")
    if method == "onnx-int8":
        from .onnx_io import onnx_problem, require_onnx

        require_onnx()
        if onnx_problem(src.task):
            raise WorkbenchError(f"{src.name}: {onnx_problem(src.task)} Fix: use --method int8-dynamic or bf16.")
    out = Path(out).expanduser() if out is not None else _default_out(src, method)
    with writing(out, overwrite) as tmp:
        if method == "onnx-int8":
            info = _onnx_int8(src, tmp)
            model = tok = None
        else:
            model, tok = _fp32(src, "quantise")
            model.config.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            if method == "bf16":
                model.to(torch.bfloat16).save_pretrained(tmp, safe_serialization=True)
                info = {"dtype": "bfloat16"}
            else:
                from .int8 import save_int8

                names = save_int8(model, tmp)
                info = {"modules": len(names), "engine": torch.backends.quantized.engine,
                        "scheme": "per-tensor symmetric int8 weights, activations quantised per batch"}
        if tok is None:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(tmp)
        meta = _base_manifest(src, tok)
        write_manifest(tmp, {**meta, "kind": method, "derived_from": str(src.path.resolve()),
                             "compression": {"method": method, **info}})
    return measure(out, **measure_kw) if evaluate else _unmeasured(out, method)


def _onnx_int8(src: Source, tmp: Path) -> dict[str, Any]:
    """The source's ONNX graph (its own, an export's onnx/, or exported now) quantised into `tmp/model.onnx`."""
    from transformers import AutoConfig, AutoTokenizer

    from .onnx_io import export_onnx, quantize_onnx

    graph = src.path / "model.onnx" if src.kind == "onnx" else src.path / "onnx" / "model.onnx"
    notes = []
    if graph.is_file():
        AutoConfig.from_pretrained(graph.parent).save_pretrained(tmp)
        AutoTokenizer.from_pretrained(graph.parent).save_pretrained(tmp)
    else:
        model, tok = _fp32(src, "quantise")
        texts = _test_texts(src)[:8]
        notes = export_onnx(model, tok, tmp / "fp32", src.task, texts, src.max_length)
        graph = tmp / "fp32" / "model.onnx"
        model.config.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    quantize_onnx(graph, tmp / "model.onnx")
    if graph.parent == tmp / "fp32":
        import shutil

        shutil.rmtree(tmp / "fp32")
    return {"from": "exported now" if notes else str(graph), "notes": notes,
            "scheme": "onnxruntime quantize_dynamic, int8 weights (QInt8), activations quantised per batch"}


# --- pruning -----------------------------------------------------------------------------------------------------
def prunable_linears(model: Any) -> dict[str, torch.nn.Linear]:
    """The Linear layers inside the model's stack of encoder/decoder layers (a numbered module path), by name:
    not the embeddings, the pooler, or the task head (which sit outside the base model or outside the stack)."""
    base = getattr(model, getattr(model, "base_model_prefix", ""), model)
    prefix = getattr(model, "base_model_prefix", "")
    return {f"{prefix}.{n}" if prefix and base is not model else n: m for n, m in base.named_modules()
            if isinstance(m, torch.nn.Linear) and re.search(r"(^|\.)\d+\.", n)}


def attention_heads(model: Any) -> list[tuple[int, Any, Any, int]]:
    """(layer index, self-attention module with query/key/value, its output projection, head size) for each layer of
    a BERT-family encoder (BERT, RoBERTa, MiniLM, ELECTRA); [] for other architectures."""
    found = []
    for _, m in model.named_modules():
        att = getattr(m, "self", None)
        outp = getattr(getattr(m, "output", None), "dense", None)
        if all(isinstance(getattr(att, k, None), torch.nn.Linear) for k in ("query", "key", "value")) and \
                isinstance(outp, torch.nn.Linear):
            found.append((len(found), att, outp, int(getattr(att, "attention_head_size", 0)
                                                     or att.query.out_features // model.config.num_attention_heads)))
    return found


def head_importance(model: Any) -> list[dict[str, Any]]:
    """Each head's importance: the L2 norm of its weights (its query, key and value rows and its columns of the output
    projection). A simple, data-free criterion: a head whose weights are small moves the output little. (Michel et
    al. 2019's gradient-based score is better; it needs training batches.)"""
    rows = []
    with torch.no_grad():
        for layer, att, outp, d in attention_heads(model):
            for h in range(att.query.out_features // d):
                s = slice(h * d, (h + 1) * d)
                sq = sum(float(getattr(att, k).weight[s].float().pow(2).sum()) for k in ("query", "key", "value"))
                sq += float(outp.weight[:, s].float().pow(2).sum())
                rows.append({"layer": layer, "head": h, "score": sq ** 0.5})
    return rows


def zero_heads(model: Any, heads: Sequence[tuple[int, int]]) -> None:
    """Zero the query/key/value rows (weights and biases) and output-projection columns of the given (layer, head)s:
    the head then adds nothing to the layer's output. transformers 5 has no `prune_heads`, and zeroing keeps the
    architecture (config.json) unchanged, so plain transformers loads the folder."""
    layers = {layer: (att, outp, d) for layer, att, outp, d in attention_heads(model)}
    with torch.no_grad():
        for layer, h in heads:
            att, outp, d = layers[layer]
            s = slice(h * d, (h + 1) * d)
            for k in ("query", "key", "value"):
                lin = getattr(att, k)
                lin.weight[s] = 0
                if lin.bias is not None:
                    lin.bias[s] = 0
            outp.weight[:, s] = 0


def _check_sparsity(sparsity: Any) -> float:
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0 < float(sparsity) < 1:
        raise WorkbenchError(f"sparsity {sparsity!r} must be a fraction strictly between 0 and 1, e.g. 0.3 to zero "
                             f"30% of the weights.")
    return float(sparsity)


def prune(source: str | Path | RunDir, out: str | Path | None = None, sparsity: float = 0.3,
          kind: Literal["magnitude", "heads"] = "magnitude", *, scope: Literal["layer", "global"] = "layer",
          overwrite: bool = False, evaluate: bool = True, **measure_kw: Any) -> Measurement:
    """Write a pruned copy of `source` (plain safetensors with zeros) and measure it.

    magnitude: exactly round(sparsity x n) weights zeroed per targeted matrix (`scope="layer"`) or over all targeted
    matrices together (`scope="global"`), smallest |w| first (`torch.nn.utils.prune`'s L1 criterion).
    heads: round(sparsity x heads) attention heads of lowest `head_importance`, at least one head kept per layer;
    BERT-family encoders only. Refused with a message: sparsity outside (0, 1), an unknown kind or scope, a quantised
    or ONNX source, head pruning on a decoder or another architecture."""
    sparsity = _check_sparsity(sparsity)
    if kind not in PRUNE_KINDS:
        raise WorkbenchError(f"pruning kind {kind!r} is not one of {', '.join(PRUNE_KINDS)}.")
    if scope not in ("layer", "global"):
        raise WorkbenchError(f"pruning scope {scope!r} is not 'layer' or 'global'.")
    src = open_source(source, "prune")
    _refuse_quantised(src, "prune")
    if src.kind == "onnx":
        raise WorkbenchError(f"{src.path} is an ONNX graph; pruning works on torch weights. Fix: prune the run or its "
                             f"export folder, then export the pruned folder's run again with --onnx if needed.")
    model, tok = _fp32(src, "prune")
    if kind == "heads":
        from ..models import is_decoder

        if is_decoder(model) or not attention_heads(model):
            raise WorkbenchError(f"head pruning supports BERT-family encoders (query/key/value attention, e.g. "
                                 f"MiniLM); {src.name} is a {model.config.model_type} "
                                 f"{'decoder' if is_decoder(model) else 'model'}, whose heads (grouped key/value heads "
                                 f"in Llama-style decoders) are not handled. Fix: use --kind magnitude.")
        info = _prune_heads(model, sparsity)
    else:
        info = _prune_magnitude(model, sparsity, scope)
    tag = f"pruned-{kind}-{round(sparsity * 100)}"
    out = Path(out).expanduser() if out is not None else _default_out(src, tag)
    with writing(out, overwrite) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        write_manifest(tmp, {**_base_manifest(src, tok), "kind": "pruned", "derived_from": str(src.path.resolve()),
                             "compression": {"method": f"pruned-{kind}", "sparsity": sparsity, **info}})
    return measure(out, **measure_kw) if evaluate else _unmeasured(out, "pruned")


def _prune_magnitude(model: Any, sparsity: float, scope: str) -> dict[str, Any]:
    from torch.nn.utils import prune as tprune

    targets = prunable_linears(model)
    if not targets:
        raise WorkbenchError(f"no Linear layers found inside {type(model).__name__}'s layer stack to prune.")
    params = [(m, "weight") for m in targets.values()]
    if scope == "global":
        tprune.global_unstructured(params, pruning_method=tprune.L1Unstructured, amount=sparsity)
    else:
        for m, name in params:
            tprune.l1_unstructured(m, name, amount=sparsity)
    for m, name in params:
        tprune.remove(m, name)  # the mask folded into the weight: a plain tensor with zeros
    n = sum(m.weight.numel() for m in targets.values())
    zeros = sum(int((m.weight == 0).sum()) for m in targets.values())
    total = sum(p.numel() for p in model.parameters())
    return {"scope": scope, "targets": sorted(targets), "target_weights": n, "zeroed": zeros,
            "target_sparsity": zeros / n, "model_sparsity": zeros / total,
            "note": "dense safetensors with zeros: the file does not shrink and latency does not drop without "
                    "sparse kernels"}


def _prune_heads(model: Any, sparsity: float) -> dict[str, Any]:
    scores = head_importance(model)
    per_layer: dict[int, int] = {}
    for r in scores:
        per_layer[r["layer"]] = per_layer.get(r["layer"], 0) + 1
    want = round(sparsity * len(scores))
    chosen, left = [], dict(per_layer)
    for r in sorted(scores, key=lambda r: r["score"]):
        if len(chosen) == want:
            break
        if left[r["layer"]] > 1:  # a layer keeps at least one head
            chosen.append(r)
            left[r["layer"]] -= 1
    zero_heads(model, [(r["layer"], r["head"]) for r in chosen])
    notes = [] if len(chosen) == want else [f"{want} heads asked, {len(chosen)} pruned: each layer keeps one"]
    return {"criterion": "L2 norm of the head's query/key/value rows and output-projection columns",
            "heads_total": len(scores), "heads_pruned": len(chosen),
            "heads": [{"layer": r["layer"], "head": r["head"], "score": round(r["score"], 6)} for r in
                      sorted(chosen, key=lambda r: (r["layer"], r["head"]))],
            "notes": notes, "note": "heads zeroed, not removed: the file does not shrink and latency does not drop"}


# --- measuring ---------------------------------------------------------------------------------------------------
def _test_texts(src: Source) -> list[str]:
    if src.run is None:
        return []
    try:
        pred = src.run.predictions("after")
    except RunError:
        return []
    return pred["text"].astype(str).tolist() if "text" in pred else []


def _unmeasured(folder: Path, kind: str) -> Measurement:
    meta = read_manifest(folder)
    return Measurement(str(folder), kind, size_mb(folder), None, None, 0, None, None, None, None,
                       torch.get_num_threads(), 0, meta.get("compression", {}))


def _forward(model: Any, tok: Any, texts: Sequence[str], max_length: int) -> None:
    enc = tok(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    keep = ("input_ids", "attention_mask", "token_type_ids")
    with torch.inference_mode():
        model(**{k: v for k, v in enc.items() if k in keep})


def _timed(fn: Any, runs: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _score(src: Source, model: Any, tok: Any, batch_size: int) -> tuple[str | None, float | None, float | None,
                                                                       float | None]:
    """(headline metric, score on the run's test split, the run's own score, agreement with its predictions)."""
    from ..evaluate import score_frame
    from ..tasks import get_task

    if src.run is None:
        return None, None, None, None
    task = get_task(src.task)
    try:
        stored = src.run.predictions("after")
    except RunError:
        return task.headline, None, None, None
    frame = task.frame_from_predictions(stored, src.labels)
    pred = score_frame(task, model, tok, frame, src.labels, max_length=src.max_length, batch_size=batch_size)
    metrics = task.score(pred, src.labels)
    own = (src.run.evaluation().get("after") or {}).get(task.headline)
    agree = None
    if "predicted" in pred and "predicted" in stored and len(pred) == len(stored):
        a, b = pred["predicted"].astype(str).to_numpy(), stored["predicted"].astype(str).to_numpy()
        agree = float((a == b).mean())
    val = metrics.get(task.headline)
    return task.headline, (float(val) if isinstance(val, (int, float)) else None), \
        (float(own) if isinstance(own, (int, float)) else None), agree


def measure(target: str | Path | RunDir, texts: Sequence[str] | None = None, *, runs: int = 20, warmup: int = 3,
            batch_size: int = 32, score: bool = True, write: bool = True) -> Measurement:
    """Size on disk, p50 latency for one text, throughput for a batch, and the test score of `target` (a folder the
    deploy stage wrote, or a finished run: its full-precision model).

    `texts` default to the run's test texts; the one-text latency uses the text of median length among them, the
    batch their first `batch_size` (repeated when there are fewer). Timings are tokenise + forward (one pass; a
    causal LM's generation is not timed), in this process's torch thread count (onnxruntime uses the same).
    With `write`, the result is `compression.json` in the folder (never in a run directory)."""
    src = open_source(target, "measure")
    if src.kind == "run":
        model, tok = _fp32(src, "measure")
        folder = src.run.model_dir / "merged" if (src.run.model_dir / "merged" / "config.json").is_file() \
            else src.run.model_dir
        compression: dict[str, Any] = {"method": "fp32"}
    else:
        model, tok, meta = load_compressed(src.path)
        folder, compression = src.path, meta.get("compression", {"method": src.kind})
    texts = list(texts) if texts is not None else _test_texts(src)
    notes: list[str] = []
    if not texts:
        texts = ["a short example text for timing"]
        notes.append("no test texts found: timed on a placeholder text")
    one = sorted(texts, key=len)[len(texts) // 2]
    batch = (texts * (batch_size // len(texts) + 1))[:batch_size]
    latency = _timed(lambda: _forward(model, tok, [one], src.max_length), runs, warmup)
    batch_time = _timed(lambda: _forward(model, tok, batch, src.max_length), max(3, runs // 4), 1)
    metric = value = own = agree = None
    if score:
        metric, value, own, agree = _score(src, model, tok, batch_size)
        if src.run is None:
            notes.append("the source run was not found: no test score")
    m = Measurement(str(folder), src.kind, round(size_mb(folder), 3), round(latency * 1000, 3),
                    round(batch_size / batch_time, 2), batch_size, metric, value, own, agree,
                    torch.get_num_threads(), runs, compression, notes)
    if write and src.kind != "run" and (folder / MANIFEST).is_file():
        write_json_atomic(folder / RESULT, m.to_dict())
    return m


def comparison_line(new: Measurement, base: Measurement | None) -> str:
    """One line: size, p50 latency, throughput, score of `new`, each against `base` (the original) when given."""
    def vs(a: float | None, b: float | None, fmt: str, unit: str) -> str:
        if a is None:
            return "-"
        return f"{a:{fmt}} {unit}" + (f" (was {b:{fmt}}, x{a / b:.2f})" if b else "")
    parts = [f"size {vs(new.size_mb, base.size_mb if base else None, '.2f', 'MB')}",
             f"p50 {vs(new.latency_ms_p50, base.latency_ms_p50 if base else None, '.2f', 'ms')}",
             f"{vs(new.throughput, base.throughput if base else None, '.1f', 'texts/s')} in batches of "
             f"{new.batch_size}"]
    if new.metric:
        old = base.score if base and base.score is not None else new.source_score
        parts.append(f"{new.metric} {new.score:.4f}" + (f" (was {old:.4f})" if old is not None else "")
                     if new.score is not None else f"{new.metric} -")
    if new.agreement is not None:
        parts.append(f"agrees with the run on {new.agreement:.1%}")
    return ", ".join(parts)


__all__ = ["METHODS", "PRUNE_KINDS", "Measurement", "attention_heads", "comparison_line", "head_importance",
           "load_compressed", "measure", "prunable_linears", "prune", "quantize", "zero_heads"]
