"""Continued pre-training (masked LM) of MiniLM: the workbench against the recipe a user would otherwise copy,
transformers' `examples/pytorch/language-modeling/run_mlm.py`, in one run.

    python benchmarks/bench_pretrain.py            # default sizes (est. 5-7 min on 2 idle CPU cores)
    python benchmarks/bench_pretrain.py --quick    # a small smoke version (tests/test_bench_pretrain.py runs it)
    python benchmarks/bench_pretrain.py --json out.json

Each training runs in its own process, one after the other, so they share the machine's load; the ratio, not
the seconds, is what carries over.

  data      built-in `aclsum_papers` (paragraphs of ACL papers), split by the workbench's own `prepare` (by paper:
            train papers for training, test papers held out): the first 1,200 training paragraphs (--quick: 120)
            and 200 test paragraphs (--quick: 20). Both recipes get exactly those training paragraphs.
  model     built-in `minilm` (all-MiniLM-L6-v2; it ships without MLM-head weights, so the head starts untrained
            in both, from the same seed), full fine-tuning.
  training  120 steps (--quick: 6), batch 16, blocks of 128 tokens, AdamW lr 2e-4, warmup 0.06, linear decay, seed
            42, 15% masking with 80/10/10, the precision the workbench picks on this machine (bf16 autocast where
            the CPU has it) for both, no evaluation or checkpoints during training.
            (a) run_mlm.py's recipe: each paragraph tokenised with [CLS]/[SEP], all concatenated and cut into
                128-token blocks, the remainder dropped (`group_texts`), DataCollatorForLanguageModeling,
                `Trainer` with those arguments;
            (b) the workbench: `run_training` from a RunConfig (task masked-lm).
  measured  train wall time (`train_runtime`), training tokens per second (non-padding tokens of the steps
            taken), and held-out masked-token perplexity on the same test paragraphs with the same hidden
            positions, computed after training by ONE function for both (`workbench.tasks.pretraining.scoring.
            mlm_document_losses`, fp32), plus the base model's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def settings(quick: bool) -> dict[str, Any]:
    return {"model": "minilm", "source": "aclsum_papers", "train_docs": 120 if quick else 1200,
            "test_docs": 20 if quick else 200, "steps": 6 if quick else 120, "batch": 16, "block": 128, "lr": 2e-4,
            "warmup": 0.06, "seed": 42}


def prepared(s: dict[str, Any]) -> Any:
    from workbench.config import DataConfig
    from workbench.models import load_tokenizer, resolve_model_path
    from workbench.config import ModelConfig
    from workbench.tasks import get_task

    tok = load_tokenizer(resolve_model_path(s["model"]), ModelConfig(name_or_path=s["model"]))
    cfg = DataConfig(source=s["source"], max_length=s["block"], max_train_samples=s["train_docs"],
                     max_eval_samples=s["test_docs"])
    return get_task("masked-lm").prepare(cfg, s["seed"], tokenizer=tok), tok


def run_hf(s: dict[str, Any], out: Path) -> dict[str, Any]:
    """(a) the run_mlm.py recipe, as its script does it, on the same paragraphs."""
    import datasets
    import torch
    from transformers import (AutoModelForMaskedLM, DataCollatorForLanguageModeling, Trainer, TrainingArguments,
                              set_seed)

    from workbench.config import RunConfig
    from workbench.models import resolve_model_path
    from workbench.tasks.pretraining.corpus import doc_texts
    from workbench.training import precision

    prep, tok = prepared(s)
    ds = datasets.Dataset.from_dict({"text": list(doc_texts(prep.train))})
    ds = ds.map(lambda b: tok(b["text"], return_special_tokens_mask=True), batched=True, remove_columns=["text"])

    def group_texts(examples: dict[str, list]) -> dict[str, list]:  # run_mlm.py's, verbatim in effect
        concatenated = {k: sum(examples[k], []) for k in examples}
        total = (len(concatenated["input_ids"]) // s["block"]) * s["block"]
        return {k: [t[i:i + s["block"]] for i in range(0, total, s["block"])] for k, t in concatenated.items()}

    ds = ds.map(group_texts, batched=True, batch_size=1000)
    set_seed(s["seed"])
    model = AutoModelForMaskedLM.from_pretrained(resolve_model_path(s["model"]), dtype=torch.float32)
    prec = precision(RunConfig())
    args = TrainingArguments(output_dir=str(out / "hf"), max_steps=s["steps"], per_device_train_batch_size=s["batch"],
                             learning_rate=s["lr"], warmup_steps=s["warmup"], lr_scheduler_type="linear",
                             weight_decay=0.01, seed=s["seed"], data_seed=s["seed"], save_strategy="no",
                             eval_strategy="no", logging_steps=10, report_to="none", disable_tqdm=True,
                             optim="adamw_torch_fused", **prec)
    trainer = Trainer(model=model, args=args, train_dataset=ds,
                      data_collator=DataCollatorForLanguageModeling(tok, mlm_probability=0.15))
    t0 = time.perf_counter()
    res = trainer.train()
    wall = time.perf_counter() - t0
    tokens = s["steps"] * s["batch"] * s["block"]
    folder = out / "hf-model"
    trainer.save_model(str(folder))
    tok.save_pretrained(folder)
    return {"train_runtime": res.metrics["train_runtime"], "wall": wall, "tokens": tokens, "blocks": ds.num_rows,
            "model": str(folder), "precision": "bf16" if prec["bf16"] else "fp32"}


def run_workbench(s: dict[str, Any], out: Path) -> dict[str, Any]:
    from workbench.config import RunConfig
    from workbench.rundir import new_run_dir
    from workbench.training import run_training

    cfg = RunConfig.from_dict({
        "task": "masked-lm", "model": {"name_or_path": s["model"]},
        "data": {"source": s["source"], "max_length": s["block"], "max_train_samples": s["train_docs"],
                 "max_eval_samples": s["test_docs"]},
        "training": {"max_steps": s["steps"], "per_device_train_batch_size": s["batch"], "learning_rate": s["lr"],
                     "warmup_steps": s["warmup"], "seed": s["seed"], "eval_strategy": "no", "save_strategy": "no",
                     "logging_steps": 10, "optim": "adamw_torch_fused"},
        "evaluate_before": False, "output_dir": str(out / "runs")})
    run = run_training(cfg, new_run_dir(cfg), progress=False)
    summary = run.metrics()
    summary = summary[summary["kind"] == "summary"].iloc[-1]
    return {"train_runtime": float(summary["train_runtime"]), "tokens": int(summary["real_tokens"]),
            "model": str(run.path), "precision": run.status().get("precision")}


def heldout(s: dict[str, Any], model_ref: str) -> dict[str, Any]:
    """Masked-token perplexity on the test paragraphs, the same hidden positions for every model (fp32)."""
    from workbench.playground import load_lm
    from workbench.tasks.pretraining.corpus import doc_texts
    from workbench.tasks.pretraining.scoring import mlm_document_losses, perplexity

    prep, _ = prepared(s)
    lm = load_lm(model_ref, "masked")
    loss, count, hits = mlm_document_losses(lm.model, lm.tokenizer, list(doc_texts(prep.test)),
                                            max_length=s["block"], batch_size=32)
    ok = count > 0
    mean = float((loss[ok] * count[ok]).sum() / count[ok].sum())
    return {"perplexity": perplexity(mean), "loss": mean, "tokens": int(count.sum()),
            "accuracy": float(hits.sum() / max(count.sum(), 1))}


def child(kind: str, quick: bool, out: Path) -> None:
    s = settings(quick)
    res = run_hf(s, out) if kind == "hf" else run_workbench(s, out)
    res["heldout"] = heldout(s, res["model"])
    print("RESULT " + json.dumps(res))


def spawn(kind: str, quick: bool, out: Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, __file__, "--child", kind, "--out", str(out)] + (["--quick"] if quick else [])
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if p.returncode != 0 or line is None:
        sys.exit(f"{kind} failed:\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}")
    return json.loads(line[len("RESULT "):])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json")
    ap.add_argument("--child")
    ap.add_argument("--out")
    a = ap.parse_args()
    if a.child:
        child(a.child, a.quick, Path(a.out))
        return
    s = settings(a.quick)
    print(f"settings: {s['model']} masked LM (full), {s['source']} {s['train_docs']} train / {s['test_docs']} test "
          f"paragraphs, {s['steps']} steps x batch {s['batch']} x {s['block']} tokens, lr {s['lr']:g}, "
          f"seed {s['seed']}")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        rows = {"a": spawn("hf", a.quick, out), "b": spawn("workbench", a.quick, out)}
        base = heldout(s, s["model"])
    names = {"a": "(a) transformers run_mlm.py recipe", "b": "(b) workbench masked-lm"}
    print(f"\n{'':40s} {'train s':>8s} {'tokens/s':>9s} {'held-out ppl':>13s} {'masked acc':>11s}")
    print(f"{'base model (no training)':40s} {'':>8s} {'':>9s} {base['perplexity']:13.1f} {base['accuracy']:11.3f}")
    for k, r in rows.items():
        r["tokens_per_s"] = r["tokens"] / r["train_runtime"]
        h = r["heldout"]
        print(f"{names[k]:40s} {r['train_runtime']:8.1f} {r['tokens_per_s']:9.0f} {h['perplexity']:13.2f} "
              f"{h['accuracy']:11.3f}")
    ratio = rows["b"]["tokens_per_s"] / rows["a"]["tokens_per_s"]
    diff = 100 * (rows["b"]["heldout"]["perplexity"] / rows["a"]["heldout"]["perplexity"] - 1)
    print(f"\n(b) / (a) tokens/s: {ratio:.2f}x   held-out perplexity (b) vs (a): {diff:+.1f}%   precision: "
          f"{rows['a']['precision']} / {rows['b']['precision']}")
    print("(a) drops each group's remainder (run_mlm.py's group_texts, per 1,000 paragraphs); (b) keeps every token. "
          "Tokens/s counts the tokens of the steps taken (no padding in (a); (b) pads only its last, shorter block).")
    if a.json:
        Path(a.json).write_text(json.dumps({"quick": a.quick, "settings": s, "base": base, "training": rows,
                                            "tokens_per_s_ratio": ratio, "perplexity_diff_pct": diff}, indent=2))


if __name__ == "__main__":
    main()
