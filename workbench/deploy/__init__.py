"""Deploy stage: from a finished run to a model folder someone else can serve.

- `export.export_run(run)`: a self-contained transformers folder (adapters merged, safetensors, tokenizer,
  id2label, a model card, `workbench_export.json` with a reference profile for drift checks), and
  optionally ONNX (`onnx_io`).
- `compress.quantize(source, method)` / `compress.prune(source, sparsity, kind)`: run-to-run operations that write
  a new folder and re-score it on the run's test split; `compress.measure(folder)`: size, latency, throughput,
  score; `compress.load_compressed(folder)`: load any folder this package wrote (int8 included, without pickle).
- `serve.create_app(source, settings)` / `workbench serve`: an HTTP API (FastAPI + uvicorn) with an API key off
  loopback, limits, micro-batching, Prometheus metrics and a drift monitor (`monitor`); `loadtest.load_test`.
  `background.serve_in_thread(source, settings)`: the same app in a thread of this process (notebooks, tests);
  `servers.start_server(...)`: `workbench serve` as its own process, recorded so the Deploy page finds it again.

Every folder written here carries `workbench_export.json` (`folder.read_manifest`): what it is (`kind`), the run it
came from, the task, labels, max_length and the reference profile. ONNX needs the optional extra
(`pip install 'workbench[deploy]'`); nothing here imports onnx or onnxruntime until it is used.
"""

from __future__ import annotations

from .compress import Measurement, load_compressed, measure, prune, quantize
from .export import ExportResult, export_run, reference_profile
from .folder import MANIFEST, read_manifest

__all__ = ["MANIFEST", "ExportResult", "Measurement", "export_run", "load_compressed", "measure", "prune",
           "quantize", "read_manifest", "reference_profile"]
