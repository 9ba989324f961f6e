"""The fine-tuning toolbox, measured in one run: the PEFT methods, adversarial training, augmentation and an ensemble.

    python benchmarks/bench_peft.py               # both tables (est. 35-40 min on 2 idle CPU cores)
    python benchmarks/bench_peft.py --only minilm # the MiniLM table only (est. 15-20 min)
    python benchmarks/bench_peft.py --quick       # a small smoke version (tests/test_bench_peft.py runs it)
    python benchmarks/bench_peft.py --json out.json

Each training runs in its own process, one after the other (so its peak RSS is its own and they share the
machine's load); every row is the workbench's `run_training` on the same prepared data, seed and step budget,
changing only what the row names.

  MiniLM    built-in `minilm` (all-MiniLM-L6-v2) on `rotten_tomatoes`: 2,000 training reviews (--quick: 64), 1,000
            test reviews (--quick: 32), max_length 64, 2 epochs, batch 16, seed 42, linear decay, warmup 0.1.
  SmolLM2   built-in `smollm2-135m` (SmolLM2-135M-Instruct, a Llama decoder) classifying `sms_spam`: 320 training
            messages (--quick: 32), 200 test (--quick: 16), max_length 64, 1 epoch, batch 8, `model.pooling: mean`
            for every row (prompt tuning on a decoder classifier needs it: with the last token, a soft prompt
            makes transformers read padding), so all rows read a text the same way.
  rows      full (input embeddings frozen, the workbench default), LoRA r 8 (q/k/v), DoRA (the same + magnitude),
            AdaLoRA (init_r 12 -> target_r 4), IA3, prefix tuning (20 virtual tokens), prompt tuning (20 virtual
            tokens). Each method gets the learning rate its papers/peft examples use (LEARNING_RATES below: a method
            at another method's rate is not a fair comparison); the new classification head trains at
            `head_learning_rate` 5e-3 under every PEFT method (full: the one rate).
            MiniLM only: full + FGM (epsilon 1.0; same data, steps and seed), full + augmentation (swap + delete,
            one copy each: 3x the training examples, so 3x the steps — disclosed, not like for like), and an
            ensemble of the full run with two more seeds (43, 44), against its best member.
            Baseline: LoRA written by hand with `peft.get_peft_model` + `transformers.Trainer` (same data,
            settings and seed), for the seconds per epoch a user of those libraries would see (it reads a
            SmolLM2 text at its last token, transformers' way, not with mean pooling).
  measured  trainable parameters (share of all), seconds per epoch (`train_runtime` / epochs), the process's peak
            RSS (CPU; peak allocated on a GPU), test accuracy and macro-F1 after training.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

LEARNING_RATES = {"full": 5e-5, "lora": 5e-4, "dora": 5e-4, "adalora": 1e-3, "ia3": 3e-3, "prefix": 1e-2,
                  "prompt": 3e-2}
METHODS = tuple(LEARNING_RATES)
HEAD_LR = 5e-3


def settings(model: str, quick: bool) -> dict[str, Any]:
    if model == "minilm":
        return {"model": "minilm", "source": "rotten_tomatoes", "train": 64 if quick else 2000,
                "test": 32 if quick else 1000, "max_length": 64, "epochs": 1 if quick else 2, "batch": 16}
    return {"model": "smollm2-135m", "source": "sms_spam", "train": 32 if quick else 320, "test": 16 if quick else 200,
            "max_length": 64, "epochs": 1, "batch": 8, "pooling": "mean"}


def variant_config(s: dict[str, Any], method: str, device: str, extra: dict[str, Any] | None = None) -> Any:
    """The RunConfig of one row: the method's section with its defaults, the method's learning rate."""
    from workbench.config import RunConfig
    peft: dict[str, Any] = {"method": "lora" if method == "dora" else method}
    if method == "dora":
        peft["lora"] = {"use_dora": True}
    training = {"num_train_epochs": s["epochs"], "per_device_train_batch_size": s["batch"],
                "learning_rate": LEARNING_RATES[method], "eval_strategy": "no", "save_strategy": "no",
                "use_cpu": device == "cpu", "seed": 42, "report_to": []}
    if method != "full":
        training["head_learning_rate"] = HEAD_LR
    raw = {"output_dir": tempfile.mkdtemp(prefix="bench-peft-"), "evaluate_before": False,
           "model": {"name_or_path": s["model"], "pooling": s.get("pooling", "auto")},
           "data": {"source": s["source"], "max_train_samples": s["train"], "max_eval_samples": s["test"],
                    "max_length": s["max_length"]},
           "training": training, "peft": peft}
    for key, value in (extra or {}).items():
        section, leaf = key.split(".", 1)
        node = raw.setdefault(section, {})
        *parents, last = leaf.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return RunConfig.from_dict(raw).check()


def _workbench(s: dict[str, Any], method: str, device: str, extra: dict[str, Any] | None) -> dict[str, Any]:
    from workbench.rundir import new_run_dir
    from workbench.training import run_training
    cfg = variant_config(s, method, device, extra)
    run = new_run_dir(cfg)
    run_training(cfg, run, progress=False)
    status = run.status()
    if status.get("state") != "completed":
        raise SystemExit(f"run {run.path} ended {status.get('state')}: {status.get('error')}")
    summary = run.metrics().query("kind == 'summary'").iloc[-1]
    after = run.evaluation()["after"]
    return {"wall_s": float(summary["train_runtime"]), "s_per_epoch": float(summary["train_runtime"]) / s["epochs"],
            "trainable": status["parameters"]["trainable"], "total": status["parameters"]["total"],
            "accuracy": after["accuracy"], "f1_macro": after["f1_macro"], "train_rows": status.get("train_rows"),
            "steps": int(status.get("step") or 0), "run": str(run.path)}


def _hf_lora(s: dict[str, Any], device: str) -> dict[str, Any]:
    """LoRA as a user of peft + transformers writes it: get_peft_model, dynamic padding, Trainer."""
    import datasets
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from sklearn.metrics import f1_score
    from transformers import (AutoModelForSequenceClassification, DataCollatorWithPadding, Trainer,
                              TrainingArguments, set_seed)

    from workbench.models import LORA_TARGETS, architecture, load_tokenizer, resolve_model_path
    from workbench.tasks import get_task
    from workbench.training import precision

    cfg = variant_config(s, "lora", device)
    path = resolve_model_path(s["model"])
    tok = load_tokenizer(path, cfg.model)
    prep = get_task(cfg.task).prepare(cfg.data, cfg.training.seed, tokenizer=tok)
    set_seed(42)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(prep.labels))
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16, lora_dropout=0.05,
                                             target_modules=LORA_TARGETS[architecture(model)]))
    ds = datasets.Dataset.from_dict({"text": prep.train["text"].tolist(), "label": prep.train["label"].tolist()})
    ds = ds.map(lambda b: tok(b["text"], truncation=True, max_length=s["max_length"]), batched=True,
                remove_columns=["text"])
    prec = precision(cfg)
    args = TrainingArguments(output_dir=tempfile.mkdtemp(), num_train_epochs=s["epochs"],
                             per_device_train_batch_size=s["batch"], learning_rate=LEARNING_RATES["lora"],
                             warmup_steps=0.1, weight_decay=0.01, lr_scheduler_type="linear", save_strategy="no",
                             eval_strategy="no", report_to=[], seed=42, use_cpu=device == "cpu", bf16=prec["bf16"],
                             logging_steps=10, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=ds, data_collator=DataCollatorWithPadding(tok))
    out = trainer.train()
    counts = (sum(p.numel() for p in model.parameters() if p.requires_grad), sum(p.numel() for p in model.parameters()))
    model.eval()
    texts, gold, preds = prep.test["text"].tolist(), prep.test["label"].tolist(), []
    with torch.inference_mode():
        for i in range(0, len(texts), 64):
            b = tok(texts[i:i + 64], truncation=True, max_length=s["max_length"], padding=True,
                    return_tensors="pt").to(model.device)
            preds += model(**b).logits.argmax(-1).tolist()
    return {"wall_s": out.metrics["train_runtime"], "s_per_epoch": out.metrics["train_runtime"] / s["epochs"],
            "trainable": counts[0], "total": counts[1],
            "accuracy": sum(p == g for p, g in zip(preds, gold)) / len(gold),
            "f1_macro": float(f1_score(gold, preds, average="macro"))}


def _child(part: str, model: str, quick: bool, device: str, extra: str | None) -> dict[str, Any]:
    import torch
    s = settings(model, quick)
    if part == "hf-lora":
        res = _hf_lora(s, device)
    else:
        res = _workbench(s, part, device, json.loads(extra) if extra else None)
    res["peak_mb"] = (torch.cuda.max_memory_allocated() / 2**20 if device == "cuda"
                      else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return res


def _ensemble(runs: list[str]) -> dict[str, Any]:
    from workbench.ensemble import ensemble_runs
    res = ensemble_runs(runs)
    members = [res.metrics[m.name]["accuracy"] for m in res.members]
    return {"ensemble": res.metrics["ensemble"]["accuracy"], "best_member": res.metrics[res.best]["accuracy"],
            "members": members, "fixed_broken": [res.comparison.get("fixed"), res.comparison.get("broken")],
            "mcnemar_p": res.comparison.get("mcnemar_p")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--only", choices=["minilm", "smollm2"], help="one of the two tables")
    ap.add_argument("--json", help="also write the figures to this file")
    ap.add_argument("--part", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--extra", help=argparse.SUPPRESS)
    a = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if a.part:
        import transformers
        transformers.logging.set_verbosity_error()
        print("RESULT " + json.dumps(_child(a.part, a.model, a.quick, a.device, a.extra), default=float))
        return 0

    def run_part(model: str, part: str, extra: dict[str, Any] | None = None, label: str | None = None) -> dict:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--part", part, "--model", model, "--device", a.device]
        cmd += ["--quick"] if a.quick else []
        cmd += ["--extra", json.dumps(extra)] if extra else []
        p = subprocess.run(cmd, capture_output=True, text=True)
        line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
        if p.returncode or not line:
            sys.stderr.write(p.stdout[-2000:] + p.stderr[-4000:])
            raise SystemExit(f"benchmark row {label or part} ({model}) failed")
        res = json.loads(line[0][7:])
        print(f"  {model} {label or part}: {res['wall_s']:.1f} s", flush=True)
        return res

    print(f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cores, device={a.device}, "
          f"load {os.getloadavg()[0]:.1f}", flush=True)
    out: dict[str, Any] = {"device": a.device, "quick": a.quick, "tables": {}}
    for model in ("minilm", "smollm2") if not a.only else (a.only,):
        name = "minilm" if model == "minilm" else "smollm2-135m"
        rows: dict[str, dict] = {}
        for method in METHODS:
            rows[method] = run_part(name, method)
        rows["hf-lora"] = run_part(name, "hf-lora", label="peft + Trainer, LoRA")
        if model == "minilm":
            rows["full+fgm"] = run_part(name, "full", {"training.adversarial": "fgm"}, "full + FGM")
            rows["full+augment"] = run_part(name, "full", {"data.augment": {"operations": ["swap", "delete"]}},
                                            "full + augmentation")
            for seed in (43, 44):
                rows[f"full-seed{seed}"] = run_part(name, "full", {"training.seed": seed, "data.split_seed": 42},
                                                    f"full, seed {seed}")
            out["ensemble"] = _ensemble([rows[k]["run"] for k in ("full", "full-seed43", "full-seed44")])
        out["tables"][model] = rows
        _print_table(model, settings(name, a.quick), rows)
    if "ensemble" in out:
        e = out["ensemble"]
        print(f"\nEnsemble of 3 full MiniLM runs (seeds 42, 43, 44): accuracy {e['ensemble']:.3f} vs best member "
              f"{e['best_member']:.3f} (members {', '.join(f'{m:.3f}' for m in e['members'])})")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1, default=float))
    if a.quick:
        print("\n(--quick: sizes too small for the scores to mean anything; this only keeps the script working)")
    return 0


def _print_table(model: str, s: dict[str, Any], rows: dict[str, dict]) -> None:
    print(f"\n{s['model']} on {s['source']}: {s['train']} train / {s['test']} test, {s['epochs']} epoch(s), batch "
          f"{s['batch']}, max_length {s['max_length']}, seed 42")
    print(f"{'row':24s} {'lr':>7s} {'trainable':>11s} {'share':>7s} {'s/epoch':>8s} {'x full':>7s} "
          f"{'peak MB':>8s} {'acc':>6s} {'F1':>6s}")
    base = rows["full"]["s_per_epoch"]
    for key, r in rows.items():
        if key.startswith("full-seed"):
            continue
        lr = LEARNING_RATES.get(key.split("+")[0])
        acc = f"{r['accuracy']:6.3f}" if "accuracy" in r else f"{'-':>6s}"
        f1 = f"{r['f1_macro']:6.3f}" if "f1_macro" in r else f"{'-':>6s}"
        print(f"{key:24s} {lr if lr else 5e-4:7.0e} {r['trainable']:11,d} {100 * r['trainable'] / r['total']:6.2f}% "
              f"{r['s_per_epoch']:8.1f} {r['s_per_epoch'] / base:7.2f} {r['peak_mb']:8.0f} {acc} {f1}")


if __name__ == "__main__":
    sys.exit(main())
