"""ONNX: export a model's forward pass, check it against torch, run it in onnxruntime, quantise it to int8.

Why `torch.onnx.export` and not optimum: optimum-onnx (0.1.0) requires transformers<4.58 and the workbench pins
transformers 5.24. In torch 2.13 the exporter's default path is `dynamo=True` (torch.export, then onnxscript
translates the graph; it needs the `onnxscript` package); the older TorchScript path (`dynamo=False`) still works
and is the fallback when torch.export cannot trace a model. Both export BERT and Llama models here once the model
is wrapped so that its forward takes tensors and returns tensors (a decoder's DynamicCache output is what makes the
unwrapped TorchScript export fail; `use_cache=False` removes it). Batch and sequence axes are dynamic.

What is exported is one forward pass: logits (start/end logits for question answering). A causal LM's graph has no
KV cache, so it scores text but generates slowly (each token re-reads the whole prefix); encoder-decoder (seq2seq)
models need two graphs and are refused.

The onnx, onnxruntime and onnxscript packages come with `pip install 'workbench[deploy]'` and are imported only here.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import ModelError, WorkbenchError

INSTALL = "pip install 'workbench[deploy]'"
ATOL = 1e-3  # |onnxruntime logits - torch logits| allowed, fp32 (reordered sums differ by ~1e-6 on real models)
DEFAULT_TEXTS = ["a short text", "a somewhat longer text, so that the example batch needs padding to its end"]


def require_onnx() -> None:
    """A `WorkbenchError` naming the install command when the [deploy] extra is missing."""
    missing = []
    for name in ("onnx", "onnxruntime", "onnxscript"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise WorkbenchError(f"ONNX export needs {', '.join(missing)}, which are not installed. Fix: {INSTALL}")


def onnx_problem(task: str) -> str | None:
    """Why a task's model is not exported to ONNX here, or None."""
    if task == "seq2seq":
        return ("an encoder-decoder (seq2seq) model needs two ONNX graphs (encoder, and decoder with its cache); the "
                "workbench exports one forward pass only.")
    return None


def output_names(task: str) -> list[str]:
    return ["start_logits", "end_logits"] if task == "question-answering" else ["logits"]


class _Forward(torch.nn.Module):
    """The model's forward with tensors in and tensors out (no cache, no output dataclass): what both exporters
    trace."""

    def __init__(self, model: Any, inputs: list[str], outputs: list[str]):
        super().__init__()
        self.model, self.inputs, self.outputs = model, inputs, outputs
        self.takes_cache = "use_cache" in inspect.signature(model.forward).parameters

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> Any:
        kw = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kw["token_type_ids"] = token_type_ids
        if self.takes_cache:
            kw["use_cache"] = False
        out = self.model(**kw)
        values = tuple(getattr(out, n) for n in self.outputs)
        return values[0] if len(values) == 1 else values


def input_names(tokenizer: Any) -> list[str]:
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in getattr(tokenizer, "model_input_names", []):
        names.append("token_type_ids")
    return names


def _encode(tokenizer: Any, texts: Sequence[str], names: list[str], max_length: int) -> dict[str, np.ndarray]:
    enc = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="np")
    return {n: np.asarray(enc[n], dtype=np.int64) for n in names}


def _export(model: Any, names: list[str], outs: list[str], example: dict[str, np.ndarray], path: Path,
            dynamo: bool) -> None:
    wrapped = _Forward(model, names, outs).eval()
    args = tuple(torch.from_numpy(example[n]) for n in names)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")
        if dynamo:
            batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
            torch.onnx.export(wrapped, args, str(path), input_names=names, output_names=outs, dynamo=True,
                              dynamic_shapes={n: {0: batch, 1: seq} for n in names}, external_data=False,
                              verbose=False)
        else:
            axes = {n: {0: "batch", 1: "sequence"} for n in names}
            axes.update({o: {0: "batch"} if o == "logits" and not _per_token(model, outs) else
                         {0: "batch", 1: "sequence"} for o in outs})
            torch.onnx.export(wrapped, args, str(path), input_names=names, output_names=outs, dynamo=False,
                              dynamic_axes=axes, opset_version=17)


def _per_token(model: Any, outs: list[str]) -> bool:
    """Whether the exported outputs have a sequence axis (taggers, LMs, QA) rather than one row per text."""
    name = type(model).__name__
    return outs != ["logits"] or not name.endswith("ForSequenceClassification")


def session(path: str | Path) -> Any:
    """An onnxruntime CPU session for `path`."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = torch.get_num_threads()  # the same threads as torch, for a fair comparison
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def compare(model: Any, tokenizer: Any, path: Path, task: str, texts: Sequence[str], max_length: int) -> float:
    """Largest |onnxruntime - torch| over the outputs on `texts` (batched, padded)."""
    names = input_names(tokenizer)
    sess = session(path)
    feed_names = [i.name for i in sess.get_inputs()]
    enc = _encode(tokenizer, texts, names, max_length)
    got = sess.run(None, {n: enc[n] for n in feed_names})
    with torch.no_grad():
        want = _Forward(model, names, output_names(task)).eval()(*(torch.from_numpy(enc[n]) for n in names))
    want = want if isinstance(want, tuple) else (want,)
    return max(float(np.abs(g - w.float().numpy()).max()) for g, w in zip(got, want))


def export_onnx(model: Any, tokenizer: Any, folder: Path, task: str, texts: Sequence[str] = (),
                max_length: int = 512) -> list[str]:
    """Write `folder/model.onnx` (+ tokenizer and config.json) for `model`, check its outputs against torch on
    `texts` with onnxruntime, and return notes (exporter used, largest difference). An architecture that neither
    exporter can trace, or a graph whose outputs differ, is a `ModelError` saying so."""
    require_onnx()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    names, outs = input_names(tokenizer), output_names(task)
    sample = [t for t in texts if t.strip()][:8]
    example = _encode(tokenizer, DEFAULT_TEXTS, names, max_length)
    errors = []
    model = model.float().eval()
    for dynamo in (True, False):
        try:
            _export(model, names, outs, example, path, dynamo)
            diff = compare(model, tokenizer, path, task, (sample + DEFAULT_TEXTS + ["x"])[:10], max_length)
        except Exception as e:  # noqa: BLE001 - each exporter's failure is reported, then the next one tried
            errors.append(f"{'dynamo' if dynamo else 'TorchScript'} exporter: {type(e).__name__}: "
                          f"{str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}")
            path.unlink(missing_ok=True)
            continue
        if diff > ATOL:
            errors.append(f"{'dynamo' if dynamo else 'TorchScript'} exporter: the ONNX outputs differ from torch's "
                          f"by up to {diff:.2e} (allowed {ATOL:g})")
            path.unlink(missing_ok=True)
            continue
        model.config.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        how = "torch.onnx.export(dynamo=True)" if dynamo else "torch.onnx.export(dynamo=False, TorchScript)"
        return [f"ONNX: {path.name} written with {how}; outputs match torch within {diff:.1e} "
                f"(onnxruntime, {min(10, len(sample) + 3)} texts, batch and sequence axes dynamic)"]
    raise ModelError(f"{type(model).__name__} could not be exported to ONNX: " + "; ".join(errors) +
                     ". Fix: export without --onnx (the safetensors folder is complete without it).")


class OnnxModel(torch.nn.Module):
    """An ONNX graph run by onnxruntime behind the interface the workbench's predict functions use: `config`,
    `parameters()` (one CPU tensor, for the device), `model(**batch)` returning `.logits` (or start/end logits)."""

    def __init__(self, path: str | Path, config: Any, task: str):
        super().__init__()
        self.sess = session(path)
        self.config = config
        self.inputs = [i.name for i in self.sess.get_inputs()]
        self.outputs = [o.name for o in self.sess.get_outputs()]
        self._device = torch.nn.Parameter(torch.zeros(1), requires_grad=False)
        self.task = task

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kw: Any) -> Any:
        from transformers.utils import ModelOutput

        feed = {"input_ids": input_ids, "attention_mask": attention_mask if attention_mask is not None else
                torch.ones_like(input_ids), **kw}
        if "token_type_ids" in self.inputs and feed.get("token_type_ids") is None:
            feed["token_type_ids"] = torch.zeros_like(input_ids)
        got = self.sess.run(None, {n: feed[n].cpu().numpy().astype(np.int64) for n in self.inputs})
        return ModelOutput(**{n: torch.from_numpy(g) for n, g in zip(self.outputs, got)})


def quantize_onnx(src: Path, dst: Path) -> None:
    """onnxruntime's dynamic int8 quantisation of `src`'s MatMul/Gemm weights into `dst` (activations quantised on
    the fly per batch, as torch's dynamic quantisation does)."""
    require_onnx()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    import logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its advice to pre-process the graph goes to the root logger as a warning
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)
