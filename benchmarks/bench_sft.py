"""LoRA SFT of SmolLM2: the workbench against TRL's `SFTTrainer`, its generation against `model.generate`, in one run.

    python benchmarks/bench_sft.py              # default sizes (est. 10-12 min on 2 idle CPU cores)
    python benchmarks/bench_sft.py --quick      # a small smoke version (tests/test_bench_sft.py runs it; no targets)
    python benchmarks/bench_sft.py --repeats 3  # each training row the fastest of 3, alternating (3x the time)
    python benchmarks/bench_sft.py --fp32       # also (b=) and (c-) in fp32 (two more, slower, trainings)
    python benchmarks/bench_sft.py --json out.json

Each measurement runs in its own process (a fresh model, no patches left over from another trainer), the trainings
of one round one after another, so they share the machine's load; ratios, not seconds, are what carry over.

  data        built-in `hsk_zh_en` (Chinese -> English sentence pairs; the user turn `Translate to English:` + the
              Chinese, the answer the English), split by the workbench's own `prepare` with seed 42: 320 train / 64
              test rows by default. Both trainers get exactly those rows, rendered by the same chat template
              (SmolLM2's, with its default system turn). TRL gets them in its conversational prompt/completion
              format (`prompt`: the user turn, `completion`: the assistant turn), which gives completion-only loss.
  model       built-in `smollm2-135m` (SmolLM2-135M-Instruct, Llama), fp32 weights, LoRA r 16, alpha 32, dropout
              0.05 on q/k/v/o_proj (the workbench's choice for Llama, `workbench.models.LORA_TARGETS`, given to
              TRL as `peft_config`); both start from the same adapter weights (seed 42; checked every run).
  training    1 epoch, batch 16, max_length 96, AdamW (adamw_torch_fused), lr 2e-4, warmup 0.1, linear decay,
              weight decay 0.01, gradient clipping 1.0, seed 42, the precision the workbench picks on this machine
              (`workbench.training.precision`: bf16 autocast where the CPU has it; TRL's own default is bf16 too),
              no evaluation or checkpoints during training, for every row.
              (b)  TRL `SFTTrainer` with those settings and TRL's defaults otherwise, except gradient checkpointing
                   (TRL turns it on by default; the workbench never does, and it only trades time for memory);
              (b+) (b) plus length-grouped batches, the workbench's batch order (like-for-like for that choice);
              (b=) (b+) given the workbench's token ids and labels (a tokenised data set, which TRL takes as it
                   is): like-for-like for the labels, which differ by the newline after <|im_end|> (below);
              (c)  the workbench: `run_training` from a RunConfig (task causal-lm-sft, peft lora);
              (c-) (c) with `training.cpu_speedups: false` (PyTorch's dropout, transformers' SDPA attention).
  labels      checked every run, token for token on all training rows and on one collated batch: TRL's input
              ids are the workbench's, TRL labels no prompt token, and every token the workbench labels (the answer
              and its <|im_end|>) TRL labels too; TRL also labels the newline the template writes after <|im_end|>.
  measured    train wall time (the trainer's `train_runtime`), trained (non-padding) tokens per second, and the
              held-out loss per answer token on the same test rows, computed after training by ONE function
              (`heldout_loss` below: the workbench's labels and `token_nll`, fp32, no autocast) for every model.
  generation  greedy answers to test prompts (64 by default, max_new_tokens 32, batch 16, fp32, left padding, KV
              cache), `workbench.generate.generate_answers` vs `model.generate` on the same prompts in input order,
              the base model for both; answer tokens per second (the answers re-tokenised, the same count for both),
              fastest of 2 alternating after a one-batch warm-up, and whether the answers are identical.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TARGETS = {"tokens_per_s_ratio": 1.25, "loss_diff_pct": 2.0}
GEN_REPEATS = 2  # timed generation rounds, after a one-batch warm-up of each (the slowest part per token on a CPU)
MODEL, DATA = "smollm2-135m", "hsk_zh_en"
LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05}
LEARNING_RATE, WARMUP, WEIGHT_DECAY, MAX_GRAD_NORM, OPTIM, SEED = 2e-4, 0.1, 0.01, 1.0, "adamw_torch_fused", 42
# What the workbench does differently from (b), each named in the output; those that change the training problem
# (the order of examples) have their own like-for-like row.
DIFFERENCES = [
    "length-grouped batches (train_sampling_strategy=group_by_length, always on in the workbench): less padding, "
    "another order of examples -> row (b+) is TRL with the same",
    "training.cpu_speedups (workbench/speed.py, CPU only): FastDropout on the LoRA dropout (same keep probability, "
    "another random stream) and attention written out instead of SDPA (same maths) -> row (c-) is the workbench "
    "without them",
    "labels: the workbench labels each answer and its <|im_end|>; TRL's completion also holds the newline the "
    "template writes after <|im_end|> (see the label check): one more, easy, token per answer in the mean loss "
    "-> row (b=) is (b+) trained on the workbench's ids and labels",
    "truncation beyond max_length: the workbench drops the prompt's oldest tokens (the answer stays whole), TRL "
    "cuts the end (keep_start); counted above",
    "TRL's own: its loss goes through a fused, chunked LM head (`trl.trainer.utils.add_fused_lm_head`: log-"
    "probabilities tile by tile, bf16 tiles under autocast, recomputed in the backward pass; on a CPU it still "
    "scores every position), the workbench's through transformers' loss (logits upcast to fp32); TRL also "
    "computes entropy and token accuracy every step. Gradient checkpointing, on by default in TRL, is off in (b) "
    "as in the workbench. `--fp32` adds (b=) and (c-) in fp32: the same problem without bf16's rounding",
]


def _sizes(quick: bool) -> dict[str, int]:
    if quick:
        return {"train": 32, "test": 8, "epochs": 1, "batch": 8, "max_length": 96, "gen_prompts": 8,
                "max_new_tokens": 8, "gen_batch": 4}
    return {"train": 320, "test": 64, "epochs": 1, "batch": 16, "max_length": 96, "gen_prompts": 64,
            "max_new_tokens": 32, "gen_batch": 16}


def _config(quick: bool, workdir: str, speedups: bool = True, fp32: bool = False) -> Any:
    """(c)'s RunConfig; its data section and seed also define the rows every row trains and is scored on."""
    from workbench.config import RunConfig
    s = _sizes(quick)
    return RunConfig.from_dict({
        "task": "causal-lm-sft", "output_dir": workdir, "evaluate_before": False,
        "model": {"name_or_path": MODEL},
        "data": {"source": DATA, "max_train_samples": s["train"], "max_eval_samples": s["test"],
                 "max_length": s["max_length"]},
        "training": {"num_train_epochs": s["epochs"], "per_device_train_batch_size": s["batch"],
                     "per_device_eval_batch_size": s["batch"], "learning_rate": LEARNING_RATE,
                     "warmup_steps": WARMUP, "weight_decay": WEIGHT_DECAY, "max_grad_norm": MAX_GRAD_NORM,
                     "optim": OPTIM, "lr_scheduler_type": "linear", "seed": SEED, "eval_strategy": "no",
                     "save_strategy": "no", "use_cpu": True, "cpu_speedups": speedups,
                     "bf16": False if fp32 else "auto"},
        "peft": {"method": "lora", "lora": LORA}})


def _prepared(quick: bool) -> tuple[str, Any, Any]:
    """The model folder, the workbench's tokenizer and the workbench's split (frames with `messages`)."""
    from workbench.models import load_tokenizer, resolve_model_path
    from workbench.tasks import get_task
    cfg = _config(quick, tempfile.gettempdir())
    path = resolve_model_path(MODEL)
    tok = load_tokenizer(path, cfg.model)
    prep = get_task(cfg.task).prepare(cfg.data, cfg.training.seed, tokenizer=tok)
    return path, tok, prep


def heldout_loss(model: Any, tokenizer: Any, conversations: list[list[dict[str, str]]], max_length: int,
                 batch_size: int = 16) -> dict[str, float]:
    """THE held-out score of every row: mean next-token NLL per answer token (the workbench's labels, its
    `token_nll`), fp32 without autocast, summed over all test answers, then divided by their token count."""
    import torch

    from workbench.tasks.causal_lm_sft import token_nll
    from workbench.tasks.causal_lm_sft.encode import SFTCollator, encode_conversation, end_of_turn

    eot = end_of_turn(tokenizer)
    enc = [encode_conversation(tokenizer, c, max_length, eot) for c in conversations]
    collate = SFTCollator(tokenizer)
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with torch.inference_mode():
        for i in range(0, len(enc), batch_size):
            batch = collate([{"input_ids": e.input_ids, "labels": e.labels} for e in enc[i:i + batch_size]])
            logits = model(input_ids=batch["input_ids"].to(device),
                           attention_mask=batch["attention_mask"].to(device)).logits
            s, n = token_nll(logits, batch["labels"].to(device))
            total += float(s.sum())
            count += int(n.sum())
    return {"loss": total / max(count, 1), "answer_tokens": count}


def _label_check(tok: Any, trl_rows: Any, wb_rows: Any, trl_collator: Any, batch: int) -> dict[str, Any]:
    """TRL's prepared training rows against the workbench's encoding of the same rows, token for token; and one
    batch as each trainer's collator builds it."""
    from workbench.tasks.causal_lm_sft.encode import IGNORE, SFTCollator

    n = len(wb_rows)
    out: dict[str, Any] = {"rows": n, "trl_rows": len(trl_rows)}
    same_ids = same_labels = same_ids_prefix = 0
    only_trl: collections.Counter = collections.Counter()
    only_wb: collections.Counter = collections.Counter()
    both = trl_n = wb_n = prompt_labelled = 0
    for t, w in zip(trl_rows, wb_rows):
        ti, tl, wi, wl = t["input_ids"], t["labels"], w["input_ids"], w["labels"]
        first = next((k for k, x in enumerate(wl) if x != IGNORE), len(wl))  # the workbench's prompt ends here
        prompt_labelled += sum(x != IGNORE for x in tl[:first])
        same_ids += ti == wi
        same_labels += tl == wl
        same_ids_prefix += ti[:len(wi)] == wi
        for k in range(max(len(ti), len(wi))):
            a = tl[k] if k < len(tl) else IGNORE
            b = wl[k] if k < len(wl) else IGNORE
            trl_n += a != IGNORE
            wb_n += b != IGNORE
            if a != IGNORE and b != IGNORE and a == b:
                both += 1
            elif a != IGNORE:
                only_trl[tok.decode([a])] += 1
            elif b != IGNORE:
                only_wb[tok.decode([b])] += 1
    out.update(same_input_ids=same_ids, prompt_tokens_labelled_by_trl=prompt_labelled,
               workbench_ids_are_prefix_of_trl=same_ids_prefix, same_labels=same_labels,
               labelled_trl=trl_n, labelled_workbench=wb_n, labelled_both=both,
               only_trl={repr(k): v for k, v in only_trl.most_common(5)},
               only_workbench={repr(k): v for k, v in only_wb.most_common(5)})
    # One batch as each collator builds it: the first `batch` rows, positions where both label the same token.
    k = min(batch, n)
    tb = trl_collator([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in trl_rows.select(range(k))])
    wb = SFTCollator(tok)([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in wb_rows.select(range(k))])
    width = min(tb["labels"].shape[1], wb["labels"].shape[1])
    tl, wl = tb["labels"][:, :width], wb["labels"][:, :width]
    out["batch"] = {"rows": k, "trl_shape": list(tb["labels"].shape), "workbench_shape": list(wb["labels"].shape),
                    "labelled_trl": int((tb["labels"] != IGNORE).sum()),
                    "labelled_workbench": int((wb["labels"] != IGNORE).sum()),
                    "labelled_same_token": int(((tl == wl) & (wl != IGNORE)).sum())}
    return out


def _same_lora_init(start: dict[str, Any], path: str) -> bool:
    """Whether adapters that started at `start` (name -> tensor) start where the workbench's do: `run_training`
    seeds, loads the model (which draws nothing) and then calls `apply_lora`, so its adapters are those of
    `set_seed` + `apply_lora` here."""
    import torch
    from transformers import AutoModelForCausalLM, set_seed

    from workbench.config import LoraSettings, PeftConfig
    from workbench.models import apply_lora
    set_seed(SEED)
    ref = apply_lora(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32),
                     PeftConfig(method="lora", lora=LoraSettings(**LORA)),
                     task_type="CAUSAL_LM")
    theirs = {n: p for n, p in ref.named_parameters() if "lora_" in n}
    return start.keys() == theirs.keys() and all(torch.equal(start[n], theirs[n]) for n in start)


def _trl(quick: bool, grouped: bool, workbench_labels: bool = False, fp32: bool = False) -> dict:
    """(b)/(b+): TRL's SFTTrainer on the workbench's rows, in TRL's conversational prompt/completion format;
    (b=): (b+) given the workbench's token ids and labels instead (TRL takes a tokenised data set as it is)."""
    import datasets
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from workbench.config import RunConfig
    from workbench.models import LORA_TARGETS
    from workbench.tasks import get_task
    from workbench.training import precision
    s = _sizes(quick)
    path, wb_tok, prep = _prepared(quick)
    tok = AutoTokenizer.from_pretrained(path)

    def to_trl(frame: Any) -> Any:
        msgs = [list(m) for m in frame["messages"]]
        return datasets.Dataset.from_dict({"prompt": [m[:-1] for m in msgs], "completion": [m[-1:] for m in msgs]})

    prec = precision(RunConfig.from_dict({"training": {"use_cpu": True, "bf16": False if fp32 else "auto"}}))
    work = tempfile.mkdtemp(prefix="bench_sft_trl_")
    args = SFTConfig(output_dir=work, num_train_epochs=s["epochs"], per_device_train_batch_size=s["batch"],
                     learning_rate=LEARNING_RATE, warmup_steps=WARMUP, lr_scheduler_type="linear",
                     weight_decay=WEIGHT_DECAY, max_grad_norm=MAX_GRAD_NORM, optim=OPTIM, seed=SEED, data_seed=SEED,
                     bf16=prec["bf16"], use_cpu=True, gradient_checkpointing=False, max_length=s["max_length"],
                     eval_strategy="no", save_strategy="no", report_to="none", disable_tqdm=True, logging_steps=1000,
                     train_sampling_strategy="group_by_length" if grouped else "random")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    lora = LoraConfig(task_type="CAUSAL_LM", target_modules=LORA_TARGETS["llama"], **LORA)
    wb_rows = get_task("causal-lm-sft").encode(prep.train, wb_tok, s["max_length"])
    train = wb_rows.select_columns(["input_ids", "labels"]) if workbench_labels else to_trl(prep.train)
    trainer = SFTTrainer(model=model, args=args, train_dataset=train, processing_class=tok, peft_config=lora)
    lengths = [len(x) for x in trainer.train_dataset["input_ids"]]
    res: dict[str, Any] = {"precision": "bf16" if prec["bf16"] else "fp32",
                           "completion_only_loss": bool(trainer.completion_only_loss),
                           "at_max_length": int(sum(n >= s["max_length"] for n in lengths))}
    if not grouped:  # the label check and the adapters' starting point, once
        res["label_check"] = _label_check(wb_tok, trainer.train_dataset, wb_rows, trainer.data_collator, s["batch"])
    start = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n}
    wall = float(trainer.train().metrics["train_runtime"])
    if not grouped:  # compared after training: the reference's set_seed must not move training's random state
        res["lora_init_identical"] = _same_lora_init(start, path)
    real = int(trainer._total_train_tokens)  # TRL's count of attention-mask tokens it trained on
    res.update(wall_s=wall, real_tokens=real, tokens_per_s=real / wall, steps=int(trainer.state.global_step),
               **heldout_loss(trainer.model, wb_tok, [list(m) for m in prep.test["messages"]], s["max_length"]))
    shutil.rmtree(work, ignore_errors=True)
    return res


def _workbench(quick: bool, speedups: bool, fp32: bool = False) -> dict:
    """(c)/(c-): `run_training`, then the run's model loaded back as a user would (`load_trained`)."""
    from workbench.models import load_trained
    from workbench.rundir import new_run_dir
    from workbench.training import run_training
    s = _sizes(quick)
    work = tempfile.mkdtemp(prefix="bench_sft_wb_")
    cfg = _config(quick, work, speedups, fp32)
    run = new_run_dir(cfg)
    run_training(cfg, run, progress=False)
    summary = run.metrics().query("kind == 'summary'").iloc[-1]
    wall = float(summary["train_runtime"])
    status = run.status()
    _, tok, prep = _prepared(quick)
    model, _ = load_trained(run.model_dir)
    res = {"wall_s": wall, "real_tokens": int(summary["real_tokens"]),
           "tokens_per_s": float(summary["real_tokens"]) / wall, "steps": int(status.get("step") or 0),
           "precision": status.get("precision"), "run_eval_loss": run.evaluation().get("after", {}).get("loss"),
           "truncated": int(json.loads(run.report_file.read_text()).get("details", {}).get("truncated", 0)),
           **heldout_loss(model, tok, [list(m) for m in prep.test["messages"]], s["max_length"])}
    shutil.rmtree(work, ignore_errors=True)
    return res


def _generation(quick: bool, repeats: int) -> dict:
    """`generate_answers` vs `model.generate` on the same prompts and settings; plus the base model's held-out loss."""
    import torch
    from transformers import AutoModelForCausalLM

    from workbench.generate import Sampling, generate_answers
    s = _sizes(quick)
    path, tok, prep = _prepared(quick)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    convs = [list(m)[:-1] for m in prep.test["messages"]][:s["gen_prompts"]]
    gen_eos = model.generation_config.eos_token_id
    stops = sorted({tok.eos_token_id, *(gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None
                                        else [])})
    texts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in convs]

    @torch.inference_mode()
    def plain(n: int = len(texts)) -> list[str]:  # as the transformers docs write it: left padding, input order
        answers = []
        for i in range(0, n, s["gen_batch"]):
            enc = tok(texts[i:min(i + s["gen_batch"], n)], return_tensors="pt", padding=True, padding_side="left",
                      add_special_tokens=False)
            out = model.generate(**enc, max_new_tokens=s["max_new_tokens"], do_sample=False, use_cache=True,
                                 eos_token_id=stops, pad_token_id=tok.pad_token_id, temperature=None, top_p=None,
                                 top_k=None)
            answers += [a.strip() for a in tok.batch_decode(out[:, enc["input_ids"].shape[1]:],
                                                            skip_special_tokens=True)]
        return answers

    def workbench(n: int = len(convs)) -> list[str]:
        return generate_answers(model, tok, convs[:n], sampling=Sampling(max_new_tokens=s["max_new_tokens"]),
                                batch_size=s["gen_batch"], bf16=False)

    runs = {"plain": plain, "workbench": workbench}
    for fn in runs.values():  # warm-up: one batch each
        fn(s["gen_batch"])
    best = {name: float("inf") for name in runs}
    answers: dict[str, list[str]] = {}
    for _ in range(repeats):  # alternate; the fastest of each counts
        for name, fn in runs.items():
            t0 = time.perf_counter()
            answers[name] = fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    n_tok = {name: sum(len(tok(a, add_special_tokens=False)["input_ids"]) for a in ans)
             for name, ans in answers.items()}
    same = sum(a == b for a, b in zip(answers["plain"], answers["workbench"]))
    diff = [{"prompt": c[-1]["content"], "plain": a, "workbench": b}
            for c, a, b in zip(convs, answers["plain"], answers["workbench"]) if a != b][:3]
    base = heldout_loss(model, tok, [list(m) for m in prep.test["messages"]], s["max_length"])
    return {"prompts": len(convs), "identical": same, "differing_examples": diff, "stop_ids": stops,
            **{f"{name}_s": best[name] for name in runs}, **{f"{name}_tokens": n_tok[name] for name in runs},
            **{f"{name}_tokens_per_s": n_tok[name] / best[name] for name in runs},
            "base_loss": base["loss"], "base_answer_tokens": base["answer_tokens"]}


def _child(part: str, quick: bool, repeats: int) -> dict:
    fn = {"b": lambda: _trl(quick, grouped=False), "b+": lambda: _trl(quick, grouped=True),
          "b=": lambda: _trl(quick, grouped=True, workbench_labels=True),
          "c": lambda: _workbench(quick, speedups=True), "c-": lambda: _workbench(quick, speedups=False),
          "b=32": lambda: _trl(quick, grouped=True, workbench_labels=True, fp32=True),
          "c-32": lambda: _workbench(quick, speedups=False, fp32=True),
          "generate": lambda: _generation(quick, repeats)}
    res = fn[part]()
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return res


ROWS = [("b", "(b) TRL SFTTrainer"), ("b+", "(b+) TRL + length-grouped batches"),
        ("b=", "(b=) (b+) on the workbench's labels"), ("c", "(c) workbench default"),
        ("c-", "(c-) workbench, cpu_speedups off")]
FP32_ROWS = [("b=32", "(b=) in fp32"), ("c-32", "(c-) in fp32")]  # --fp32


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a few steps on a handful of rows (a smoke test)")
    ap.add_argument("--repeats", type=int, default=1, help="rounds of the five trainings, alternating; the fastest "
                    "of each counts (default 1: about 10-12 minutes on 2 idle cores)")
    ap.add_argument("--fp32", action="store_true", help="also run (b=) and (c-) in fp32: the same training "
                    "problem in both trainers, without bf16's rounding (two more, slower, trainings)")
    ap.add_argument("--json", default="bench_sft.json", help="where to write the results (default: ./bench_sft.json)")
    ap.add_argument("--part", help=argparse.SUPPRESS)
    a = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    reps = 1 if a.quick else max(1, a.repeats)
    if a.part:
        import warnings

        import transformers
        transformers.logging.set_verbosity_error()
        warnings.filterwarnings("ignore")
        gen_reps = 1 if a.quick else GEN_REPEATS
        print("RESULT " + json.dumps(_child(a.part, a.quick, gen_reps), default=float))
        return 0

    import torch

    from workbench.models import LORA_TARGETS
    s = _sizes(a.quick)
    results: dict[str, dict] = {}
    t_start = time.time()

    def run_part(part: str) -> dict:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--part", part] + (["--quick"] if a.quick else [])
        p = subprocess.run(cmd, capture_output=True, text=True)
        line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
        if p.returncode or not line:
            sys.stderr.write(p.stdout[-2000:] + p.stderr[-4000:])
            raise SystemExit(f"benchmark part {part} failed")
        res = json.loads(line[0][7:])
        if part not in results or res.get("wall_s", 0) < results[part].get("wall_s", 0):
            results[part] = res  # the fastest of the repeats (they train the same, so the loss is the same)
        got = (f"{res['wall_s']:.1f} s, {res['tokens_per_s']:.0f} tok/s, held-out loss {res['loss']:.4f}"
               if "wall_s" in res else f"{res['plain_tokens_per_s']:.1f} vs {res['workbench_tokens_per_s']:.1f} tok/s")
        print(f"  {part}: done ({got}, load {os.getloadavg()[0]:.1f})", flush=True)
        return res

    print(f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cores, torch threads "
          f"{torch.get_num_threads()}, load {os.getloadavg()[0]:.1f}", flush=True)
    print(f"settings: {MODEL} + LoRA r {LORA['r']}, alpha {LORA['lora_alpha']}, dropout {LORA['lora_dropout']} on "
          f"q/k/v/o_proj; {DATA} {s['train']} train / {s['test']} test rows (workbench split, seed {SEED}); "
          f"{s['epochs']} epoch(s), batch {s['batch']}, max_length {s['max_length']}, {OPTIM} lr {LEARNING_RATE:g}, "
          f"warmup {WARMUP}, linear, weight decay {WEIGHT_DECAY}, clip {MAX_GRAD_NORM}, seed {SEED}; generation "
          f"{s['gen_prompts']} prompts, max_new_tokens {s['max_new_tokens']}, batch {s['gen_batch']}", flush=True)
    for _ in range(reps):  # round robin: each round's runs are close in time, so they share the machine's mood
        for part, _label in ROWS + (FP32_ROWS if a.fp32 else []):
            run_part(part)
    run_part("generate")
    load_end = os.getloadavg()

    B, C, G = results["b"], results["c"], results["generate"]
    lc = B["label_check"]
    print(f"\nLoRA SFT: {MODEL}, {DATA} {s['train']} train / {s['test']} test rows, {s['epochs']} epoch(s), batch "
          f"{s['batch']}, lr {LEARNING_RATE:g}, max_length {s['max_length']}, seed {SEED}"
          f"{'' if reps == 1 else f'; each row fastest of {reps}'}")
    print(f"{'recipe':36s} {'prec':>5s} {'steps':>5s} {'wall s':>7s} {'real tok/s':>10s} {'x (b)':>6s} "
          f"{'held-out loss':>13s} {'vs (b) %':>8s} {'peak RSS MB':>11s}")
    for key, label in ROWS + (FP32_ROWS if a.fp32 else []):
        r = results[key]
        print(f"{label:36s} {r['precision']:>5s} {r['steps']:5d} {r['wall_s']:7.1f} {r['tokens_per_s']:10.0f} "
              f"{r['tokens_per_s'] / B['tokens_per_s']:6.2f} {r['loss']:13.4f} "
              f"{100 * (r['loss'] - B['loss']) / B['loss']:+8.2f} {r['peak_rss_mb']:11.0f}")
    print(f"{'base model (no training)':36s} {'fp32':>5s} {'':>5s} {'':>7s} {'':>10s} {'':>6s} {G['base_loss']:13.4f}")
    print(f"held-out loss: one function for every row (fp32, per answer token, {B['answer_tokens']} answer tokens); "
          f"the workbench run's own eval.json says {C['run_eval_loss']:.4f} (its {C['precision']} scoring)")
    if a.fp32:
        d32 = 100 * (results["c-32"]["loss"] - results["b=32"]["loss"]) / results["b=32"]["loss"]
        d16 = 100 * (results["c-"]["loss"] - results["b="]["loss"]) / results["b="]["loss"]
        print(f"(b=) and (c-): the same ids, labels, batch order and starting adapters; held-out loss (c-) vs (b=) "
              f"{d16:+.3f}% in {B['precision']}, {d32:+.3f}% in fp32")
    if len({results[k]["real_tokens"] for k, _ in ROWS}) > 1:
        print(f"note: the rows trained on different numbers of real tokens "
              f"({', '.join(str(results[k]['real_tokens']) for k, _ in ROWS)}): the encodings differ")
    print(f"truncation: workbench {C['truncated']} conversation(s) cut at max_length, TRL {B['at_max_length']} "
          f"row(s) at max_length")
    print(f"\nLabels, the {lc['rows']} training rows (TRL prepared {lc['trl_rows']}): input ids identical in "
          f"{lc['same_input_ids']}, the workbench's a prefix of TRL's in {lc['workbench_ids_are_prefix_of_trl']}; "
          f"labels identical in {lc['same_labels']}; prompt tokens TRL labels: {lc['prompt_tokens_labelled_by_trl']}")
    print(f"  labelled tokens: TRL {lc['labelled_trl']}, workbench {lc['labelled_workbench']}, the same token at the "
          f"same position in both {lc['labelled_both']}; only TRL labels {lc['only_trl'] or 'nothing else'}, only "
          f"the workbench {lc['only_workbench'] or 'nothing else'}")
    bt = lc["batch"]
    print(f"  one batch of {bt['rows']} rows from each collator: labels {bt['trl_shape']} (TRL) / "
          f"{bt['workbench_shape']} (workbench); {bt['labelled_same_token']} of TRL's {bt['labelled_trl']} and the "
          f"workbench's {bt['labelled_workbench']} labelled positions match token for token; TRL "
          f"completion_only_loss={B['completion_only_loss']}")
    print("\nWhat the workbench does differently from (b):")
    for d in DIFFERENCES:
        print(f"  - {d}")
    same = "the same" if B["lora_init_identical"] else "NOT the same (another random draw)"
    print(f"  - LoRA adapters: {same} starting weights in (b) and (c) (checked: `lora_init_identical`)")
    print(f"  - precision: the same for every row ({B['precision']}; `workbench.training.precision` on this machine)")

    print(f"\nGeneration, {G['prompts']} test prompts, greedy, max_new_tokens {s['max_new_tokens']}, batch "
          f"{s['gen_batch']}, fp32, base model (fastest of {1 if a.quick else GEN_REPEATS}):")
    print(f"  model.generate (input order, left padding)   {G['plain_s']:6.2f} s  {G['plain_tokens']:5d} answer "
          f"tokens  {G['plain_tokens_per_s']:7.1f} tok/s")
    print(f"  workbench generate_answers                   {G['workbench_s']:6.2f} s  {G['workbench_tokens']:5d} "
          f"answer tokens  {G['workbench_tokens_per_s']:7.1f} tok/s")
    print(f"  answers identical: {G['identical']} of {G['prompts']}")
    for d in G["differing_examples"]:
        print(f"    differs: {d['prompt'][:40]!r}: plain {d['plain'][:60]!r} / workbench {d['workbench'][:60]!r}")
    print(f"load average at the end: {load_end[0]:.1f} (1 min), {load_end[1]:.1f} (5 min); total "
          f"{time.time() - t_start:.0f} s")

    ratio = C["tokens_per_s"] / B["tokens_per_s"]
    diff = 100 * (C["loss"] - B["loss"]) / B["loss"]
    gen_ratio = G["workbench_tokens_per_s"] / G["plain_tokens_per_s"]
    checks = [{"name": "(c) / (b) tokens/s", "value": ratio, "target": f">= {TARGETS['tokens_per_s_ratio']:g}",
               "pass": ratio >= TARGETS["tokens_per_s_ratio"]},
              {"name": "held-out loss (c) vs (b), %", "value": diff, "target": f"within +-{TARGETS['loss_diff_pct']:g}",
               "pass": abs(diff) <= TARGETS["loss_diff_pct"]},
              {"name": "(c) / (b+) tokens/s", "value": C["tokens_per_s"] / results["b+"]["tokens_per_s"],
               "target": "-", "pass": None},
              {"name": "(c) / (b=) tokens/s", "value": C["tokens_per_s"] / results["b="]["tokens_per_s"],
               "target": "-", "pass": None},
              {"name": "held-out loss (c) vs (b=), %", "target": "-", "pass": None,
               "value": 100 * (C["loss"] - results["b="]["loss"]) / results["b="]["loss"]},
              {"name": "generation workbench / plain", "value": gen_ratio, "target": "-", "pass": None}]
    print(f"\n{'check':30s} {'value':>8s} {'target':>12s}")
    for c in checks:
        print(f"{c['name']:30s} {c['value']:8.2f} {c['target']:>12s}  "
              f"{'' if c['pass'] is None else 'PASS' if c['pass'] else 'FAIL'}")
    ok = checks[0]["pass"] and checks[1]["pass"]
    print(f"{'PASS' if ok else 'FAIL'}: tokens/s {ratio:.2f}x TRL's (target >= {TARGETS['tokens_per_s_ratio']:g}) at a "
          f"held-out loss {diff:+.2f}% from TRL's (target within +-{TARGETS['loss_diff_pct']:g}%; negative: the "
          f"workbench's is lower)")
    print(f"{'PASS' if G['identical'] == G['prompts'] else 'FAIL'}: generation answers identical "
          f"({G['identical']}/{G['prompts']}); generate_answers {gen_ratio:.2f}x model.generate's tokens/s")
    if a.quick:
        print("(--quick: sizes too small for the targets to mean anything; this only keeps the script working)")

    out = {"quick": a.quick, "repeats": reps, "settings": {
        "model": MODEL, "data": DATA, **s, "lora": LORA, "target_modules": LORA_TARGETS["llama"],
        "learning_rate": LEARNING_RATE, "warmup": WARMUP, "weight_decay": WEIGHT_DECAY, "max_grad_norm": MAX_GRAD_NORM,
        "optim": OPTIM, "seed": SEED, "precision": B["precision"], "torch_threads": torch.get_num_threads()},
        "workbench_differences": DIFFERENCES, "label_check": lc, "generation": G,
        "training": {k: v for k, v in results.items() if k != "generate"},
        "lora_init_identical": B["lora_init_identical"], "checks": checks, "pass": ok, "load_end": load_end[:2],
        "machine": platform.machine(),
        "cores": os.cpu_count()}
    for key in results:
        results[key].pop("label_check", None)
    Path(a.json).write_text(json.dumps(out, indent=2, default=float))
    print(f"results written to {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
