"""From a run to a service, measured: export, bf16, int8, ONNX (+int8), pruning, and the server under load.

    python benchmarks/bench_deploy.py                # both models + the load test (est. 15-25 min on 2 idle CPU cores)
    python benchmarks/bench_deploy.py --only minilm  # one model's table (and the load test, on MiniLM)
    python benchmarks/bench_deploy.py --quick        # a small smoke version (tests/test_bench_deploy.py runs it)
    python benchmarks/bench_deploy.py --json out.json

  runs      one fine-tuned classifier per model, trained here by the workbench's `run_training` (each in its own
            process): built-in `minilm` on `rotten_tomatoes` (2,000 training reviews, 1,000 test; --quick 64/32;
            max_length 64, 1 epoch, full fine-tuning at 5e-5) and built-in `smollm2-135m` (a Llama decoder) on
            `sms_spam` (320 training messages, 200 test; --quick 32/16; LoRA r 8 merged on export, head at 5e-3,
            last-token pooling: the exported folder must answer like the run with plain transformers, which reads
            the last token).
  variants  `workbench.deploy`: the export (fp32 safetensors, the reference), bf16, int8 dynamic (torch, Linear
            layers), ONNX (torch.onnx.export), ONNX + int8 (onnxruntime quantize_dynamic), magnitude pruning at 30% and
            50% of the layers' Linear weights (dense storage: zeros still take their bytes).
  measured  `workbench.deploy.measure` on each folder, one after the other in ONE process per model (same threads):
            size on disk, p50 latency of one text (tokenise + forward, median of 30 after 3 warm-ups), throughput of a
            batch of 32 test texts, and the test score re-computed on the run's test split (accuracy; agreement: the
            share of test predictions equal to the run's own).
  target    int8 dynamic >= 1.5x the fp32 export's throughput at <= 1 point lower accuracy (printed PASS/FAIL, for
            each model; whatever comes out is reported).
  load test `workbench serve` on the MiniLM export in its own process on 127.0.0.1, once with micro-batching
            (--max-batch 16) and once without (--max-batch 1), each driven by `workbench.deploy.loadtest.load_test`:
            16 concurrent clients x 12 requests of one review each (--quick: 4 x 3). Clients and server share this
            machine's cores; throughput (requests/s), p50/p99 latency, errors.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ["fp32", "bf16", "int8-dynamic", "onnx", "onnx-int8", "pruned-30", "pruned-50"]
LABELS = {"fp32": "fp32 (export)", "bf16": "bf16", "int8-dynamic": "int8 dynamic (torch)", "onnx": "ONNX fp32",
          "onnx-int8": "ONNX + int8", "pruned-30": "magnitude-pruned 30%", "pruned-50": "magnitude-pruned 50%"}


def settings(model: str, quick: bool) -> dict[str, Any]:
    if model == "minilm":
        return {"model": "minilm", "source": "rotten_tomatoes", "train": 64 if quick else 2000,
                "test": 32 if quick else 1000, "max_length": 64, "epochs": 1, "batch": 16, "method": "full",
                "lr": 5e-5}
    return {"model": "smollm2-135m", "source": "sms_spam", "train": 32 if quick else 320, "test": 16 if quick else 200,
            "max_length": 64, "epochs": 1, "batch": 8, "method": "lora", "lr": 5e-4}


def _train(s: dict[str, Any], out_dir: str) -> str:
    from workbench.config import RunConfig
    from workbench.rundir import new_run_dir
    from workbench.training import run_training

    training = {"num_train_epochs": s["epochs"], "per_device_train_batch_size": s["batch"], "learning_rate": s["lr"],
                "eval_strategy": "no", "save_strategy": "no", "use_cpu": True, "seed": 42, "report_to": []}
    peft: dict[str, Any] = {"method": s["method"]}
    if s["method"] == "lora":
        training["head_learning_rate"] = 5e-3
        peft["merge_adapter"] = True
    cfg = RunConfig.from_dict({
        "output_dir": out_dir, "evaluate_before": False, "model": {"name_or_path": s["model"]},
        "data": {"source": s["source"], "max_train_samples": s["train"], "max_eval_samples": s["test"],
                 "max_length": s["max_length"]},
        "training": training, "peft": peft}).check()
    run = new_run_dir(cfg)
    run_training(cfg, run, progress=False)
    st = run.status()
    if st.get("state") != "completed":
        raise SystemExit(f"run {run.path} ended {st.get('state')}: {st.get('error')}")
    return str(run.path)


def _variants(run: str, quick: bool) -> dict[str, Any]:
    """Write every variant of `run`, then measure each in this one process."""
    from workbench.deploy import export_run, measure, prune, quantize

    work = Path(run) / "deploy-bench"
    t0 = time.perf_counter()
    exp = export_run(run, work / "export", onnx=True)
    export_s = time.perf_counter() - t0
    folders = {"fp32": exp.path, "onnx": exp.path / "onnx"}
    seconds = {"fp32": export_s, "onnx": export_s}  # one export writes both
    for method in ("bf16", "int8-dynamic", "onnx-int8"):
        t0 = time.perf_counter()
        m = quantize(exp.path, work / method, method, evaluate=False)
        folders[method], seconds[method] = Path(m.folder), time.perf_counter() - t0
    for pct in (30, 50):
        t0 = time.perf_counter()
        m = prune(exp.path, work / f"pruned-{pct}", pct / 100, "magnitude", evaluate=False)
        folders[f"pruned-{pct}"], seconds[f"pruned-{pct}"] = Path(m.folder), time.perf_counter() - t0
    rows = {}
    for name in VARIANTS:
        m = measure(folders[name], runs=5 if quick else 30, warmup=1 if quick else 3, batch_size=32)
        rows[name] = {**m.to_dict(), "write_s": round(seconds[name], 1)}
        print(f"  {name}: {m.size_mb:.1f} MB, p50 {m.latency_ms_p50:.1f} ms, {m.throughput:.1f} texts/s, "
              f"{m.metric} {m.score}", file=sys.stderr, flush=True)
    return {"rows": rows, "export_notes": exp.notes}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _load_test(folder: str, quick: bool) -> dict[str, Any]:
    """`workbench serve` in its own process with and without batching, each under the same load."""
    import httpx

    from workbench.deploy.loadtest import load_test
    from workbench.rundir import RunDir

    meta = json.loads((Path(folder) / "workbench_export.json").read_text())
    texts = RunDir(meta["source_run"]).predictions("after")["text"].astype(str).tolist()
    clients, requests = (4, 3) if quick else (16, 12)
    key = secrets.token_urlsafe(24)
    out = {"clients": clients, "requests_per_client": requests}
    for label, max_batch in (("batched", 16), ("unbatched", 1)):
        port = _free_port()
        env = {**os.environ, "WORKBENCH_API_KEY": key}
        proc = subprocess.Popen([sys.executable, "-m", "workbench", "serve", folder, "--port", str(port),
                                 "--max-batch", str(max_batch)], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(600):  # the model loads and warms up: up to 2 minutes
                if proc.poll() is not None:
                    raise SystemExit(f"the server stopped: {proc.stderr.read()[-2000:]}")
                try:
                    if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
            load_test(url, 2, 2, texts[:8], api_key=key, endpoint="/v1/classify")  # warm the connection paths
            res = load_test(url, clients, requests, texts, api_key=key, endpoint="/v1/classify")
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        out[label] = {k: res[k] for k in ("ok", "errors", "seconds", "throughput_rps", "p50_ms", "p99_ms")}
        print(f"  serve {label}: {res['throughput_rps']:.1f} req/s, p50 {res['p50_ms']:.0f} ms, "
              f"p99 {res['p99_ms']:.0f} ms, errors {res['errors']}", file=sys.stderr, flush=True)
    return out


def _child(part: str, arg: str, quick: bool) -> Any:
    import torch
    torch.manual_seed(0)
    if part == "train":
        return _train(settings(arg, quick), tempfile.mkdtemp(prefix="bench-deploy-"))
    if part == "variants":
        return _variants(arg, quick)
    return _load_test(arg, quick)


def run_part(part: str, arg: str, quick: bool) -> Any:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--part", part, "--arg", arg] + (["--quick"] if quick else [])
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    sys.stderr.write(p.stderr[-3000:] if p.returncode else "".join(
        ln + "\n" for ln in p.stderr.splitlines() if ln.startswith("  ")))
    if p.returncode:
        raise SystemExit(f"part {part} {arg} failed (exit {p.returncode})")
    line = next(ln for ln in reversed(p.stdout.splitlines()) if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def _table(model: str, s: dict[str, Any], rows: dict[str, Any]) -> list[str]:
    base = rows["fp32"]
    out = [f"\n{model} on {s['source']}: {s['test']} test texts, max_length {s['max_length']}, batch 32 for "
           f"throughput, {rows['fp32']['threads']} torch threads",
           f"{'variant':<22} {'MB':>7} {'x size':>7} {'p50 ms':>7} {'texts/s':>8} {'x thr':>6} {'acc':>6} {'agree':>6}"]
    for name in VARIANTS:
        r = rows[name]
        out.append(f"{LABELS[name]:<22} {r['size_mb']:7.1f} {r['size_mb'] / base['size_mb']:7.2f} "
                   f"{r['latency_ms_p50']:7.1f} {r['throughput']:8.1f} {r['throughput'] / base['throughput']:6.2f} "
                   f"{r['score'] if r['score'] is not None else float('nan'):6.3f} "
                   f"{r['agreement'] if r['agreement'] is not None else float('nan'):6.3f}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a small smoke version (no targets)")
    ap.add_argument("--only", choices=["minilm", "smollm2"], help="one model (the load test runs with minilm)")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--part", help=argparse.SUPPRESS)
    ap.add_argument("--arg", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.part:
        print("RESULT " + json.dumps(_child(a.part, a.arg, a.quick), default=float))
        return 0
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; "
          f"{'--quick: a smoke run, numbers mean little' if a.quick else 'full run'}")
    models = {"minilm": "minilm", "smollm2": "smollm2-135m"}
    chosen = [a.only] if a.only else ["minilm", "smollm2"]
    results: dict[str, Any] = {"quick": a.quick, "models": {}, "checks": []}
    lines: list[str] = []
    for key in chosen:
        s = settings(models[key], a.quick)
        print(f"training {models[key]} on {s['source']} ...", flush=True)
        run = run_part("train", models[key], a.quick)
        print(f"measuring the variants of {run} ...", flush=True)
        v = run_part("variants", run, a.quick)
        results["models"][key] = {"settings": s, "run": run, **v}
        lines += _table(models[key], s, v["rows"])
        fp32, int8 = v["rows"]["fp32"], v["rows"]["int8-dynamic"]
        ratio = int8["throughput"] / fp32["throughput"]
        drop = (fp32["score"] - int8["score"]) * 100 if None not in (fp32["score"], int8["score"]) else float("nan")
        ok = ratio >= 1.5 and drop <= 1.0
        results["checks"].append({"name": f"{key}: int8 throughput x fp32 >= 1.5 at <= 1 point lower accuracy",
                                  "ratio": ratio, "points_lower": drop, "pass": ok})
        if key == "minilm":
            print("load test: workbench serve on the MiniLM export ...", flush=True)
            results["load_test"] = run_part("serve", str(Path(run) / "deploy-bench" / "export"), a.quick)
    print("\n".join(lines))
    lt = results.get("load_test")
    if lt:
        print(f"\nload test, MiniLM export served on 127.0.0.1, {lt['clients']} clients x "
              f"{lt['requests_per_client']} requests of one review")
        print(f"{'server':<28} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6}")
        for label, name in (("batched", "--max-batch 16 (batching)"), ("unbatched", "--max-batch 1 (none)")):
            r = lt[label]
            print(f"{name:<28} {r['throughput_rps']:7.1f} {r['p50_ms']:7.0f} {r['p99_ms']:7.0f} {r['errors']:6d}")
        gain = lt["batched"]["throughput_rps"] / lt["unbatched"]["throughput_rps"]
        results["checks"].append({"name": f"batching raises throughput at {lt['clients']} clients", "ratio": gain,
                                  "pass": gain > 1.0})
    print()
    for c in results["checks"]:
        extra = f" (x{c['ratio']:.2f}" + (f", {c['points_lower']:+.1f} points" if "points_lower" in c else "") + ")"
        print(f"{'PASS' if c['pass'] else 'FAIL'}: {c['name']}{extra}")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
