"""Training stage: one function runs a whole run into its run directory.

`run_training(cfg, run)` is what the CLI (`workbench train`), `launch()` (a separate process) and
`torchrun`/`accelerate launch` (several processes) all execute, so every front end produces the
same run directory. Training itself is `transformers.Trainer`; what we add is what it lacks:
the run directory's status and metrics files, a graceful stop that checkpoints first, halting on
a NaN/inf loss at the step it happens (the trainer's `logging_nan_inf_filter` would hide it), and
before/after scoring of the test split.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import functools
import math
import os
import pickle
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from collections.abc import Iterator
from typing import Any, Literal

import torch
from transformers import TrainingArguments, set_seed

from .adversarial import EmbeddingAdversary
from .checkpoints import intact_checkpoint, pickled_files, set_aside
from .config import RunConfig
from .data.report import packing_line
from .errors import RunError, TrainingHalted, WorkbenchError
from .evaluate import score_frame
from .models import (apply_peft, count_parameters, freeze_input_embeddings, load_model_config, load_tokenizer,
                     resolve_model_path)
from .peft_methods import adalora_callback, adalora_resume_problem, merge, mergeable
from .rundir import RunDir, write_json_atomic
from .speed import apply_cpu_speedups, restore_attention
from .tasks import get_task, greater_is_better
from .tasks.base import encode_split
from .tasks.classification import model_max_tokens
from .trainer import RunDirCallback, WorkbenchTrainer, is_oom

from .trainer import SIGNALLED as _SIGNALLED


def training_device(cfg: RunConfig) -> tuple[str, str | None]:
    """Where training runs (`cuda`, `mps` on Apple silicon, or `cpu`) and, when an Apple GPU is present but
    cannot be used, a note saying why the run falls back to the CPU."""
    if cfg.training.use_cpu:
        return "cpu", None
    if torch.cuda.is_available():
        return "cuda", None
    mps = getattr(torch.backends, "mps", None)
    if mps is None or not mps.is_built():  # a build without Apple's Metal backend (Linux, Windows)
        return "cpu", None
    if not mps.is_available():
        return "cpu", ("this PyTorch has Apple's MPS backend but this Mac cannot use it (MPS needs macOS 12.3 or "
                       "later on Apple silicon or an AMD GPU): training on the CPU, which is slower.")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return "cpu", "MPS runs a single process; this multi-process (torchrun) job trains on the CPU instead."
    return "mps", None


def precision(cfg: RunConfig) -> dict[str, bool]:
    """Resolve `bf16: auto`: bf16 where the hardware runs it natively, else fp32 (or fp16 if asked)."""
    t = cfg.training
    device, _ = training_device(cfg)
    if t.bf16 == "auto":
        if device == "cuda":
            bf16 = torch.cuda.is_bf16_supported()
        elif device == "mps":
            # M1/M2 emulate bf16 in fp32 (slower, no memory saved), and we cannot tell those chips apart
            # from here: fp32 unless the user asks for bf16.
            bf16 = False
        else:
            try:  # CPUs with avx512_bf16/AMX: autocast is ~1.4x faster here at the same accuracy
                bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
            except (AttributeError, RuntimeError):
                bf16 = False
        bf16 = bf16 and not t.fp16
    else:
        bf16 = bool(t.bf16)
        if bf16 and device == "mps":  # bf16 on MPS needs macOS 14 (transformers refuses it before)
            bf16 = bool(getattr(torch.backends.mps, "is_macos_or_newer", lambda *v: False)(14, 0))
    return {"bf16": bf16, "fp16": bool(t.fp16) and device == "cuda", "use_cpu": device == "cpu"}


def process_state(cfg: RunConfig) -> Any:
    """accelerate's process state; under torchrun this joins the process group (gloo on CPUs).

    It is a singleton: created here first with the right `cpu` flag, or a CPU-only torchrun job
    would silently run as independent single processes.
    """
    import datetime

    from accelerate import PartialState

    # Rank 0 alone scores the test split before training while the others wait at a barrier: the collectives'
    # timeout (NCCL's default is 10 minutes) must outlast that on a big test split.
    timeout = {"timeout": datetime.timedelta(hours=2)} if int(os.environ.get("WORLD_SIZE", "1")) > 1 else {}
    return PartialState(cpu=precision(cfg)["use_cpu"], **timeout)


def training_arguments(cfg: RunConfig, run: RunDir, has_validation: bool, progress: bool,
                       report_to: list[str] | None = None, engine: dict[str, Any] | None = None) -> TrainingArguments:
    """`report_to`: the trackers this process reports to (`tracking.prepare`); none when not given. `engine`: the
    distributed strategy's fields (`distributed.engine_arguments`)."""
    t = cfg.training
    prec = precision(cfg)
    eval_strategy = t.eval_strategy if has_validation else "no"
    return TrainingArguments(
        output_dir=str(run.checkpoints_dir),
        learning_rate=t.learning_rate, num_train_epochs=t.num_train_epochs, max_steps=t.max_steps,
        per_device_train_batch_size=t.per_device_train_batch_size,
        per_device_eval_batch_size=t.per_device_eval_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps, warmup_steps=t.warmup_steps,
        lr_scheduler_type=t.lr_scheduler_type, weight_decay=t.weight_decay, max_grad_norm=t.max_grad_norm,
        optim=t.optim, seed=t.seed, data_seed=t.seed, **prec,
        eval_strategy=eval_strategy, eval_steps=t.eval_steps, save_strategy=t.save_strategy, save_steps=t.save_steps,
        save_total_limit=t.save_total_limit, logging_strategy="steps", logging_steps=t.logging_steps,
        logging_nan_inf_filter=False,  # a NaN must show, not be replaced by the previous loss
        load_best_model_at_end=t.load_best_model_at_end and eval_strategy != "no",
        metric_for_best_model=best_metric(cfg) if eval_strategy != "no" else None,
        greater_is_better=_direction(cfg) if eval_strategy != "no" else None,
        train_sampling_strategy="group_by_length",  # batches of similar length: little padding
        remove_unused_columns=False,  # keep `length` for the sampler; the collator drops it
        dataloader_pin_memory=not prec["use_cpu"], torch_compile=t.torch_compile,
        report_to=report_to or "none", run_name=run.name,  # the trackers' name for the run
        disable_tqdm=not progress, save_only_model=False, **(engine or {}),
    )


def best_metric(cfg: RunConfig) -> str:
    """`training.metric_for_best_model`, or the task's headline metric when it is empty (the metric validation
    passes compute in its stead, `validation_headline`, for a task whose headline needs the test split's
    post-processing: question answering's answer-level F1)."""
    task = get_task(cfg.task)
    return cfg.training.metric_for_best_model or getattr(task, "validation_headline", task.headline)


def _direction(cfg: RunConfig) -> bool:
    """Whether a higher `metric_for_best_model` is better, as the task declares (`RunConfig.validate`
    has already refused a metric the task does not know)."""
    try:
        return greater_is_better(get_task(cfg.task), best_metric(cfg))
    except KeyError:
        return False


def _make_trainer(cfg: RunConfig, run: RunDir, model: Any, tok: Any, train_ds: Any, val_ds: Any, progress: bool,
                  main: bool, labels: list[str], class_weights: list[float] | None = None,
                  resume_from: Path | None = None) -> tuple[WorkbenchTrainer, RunDirCallback]:
    from . import tracking

    from .distributed import engine_arguments

    world = int(os.environ.get("WORLD_SIZE", "1"))
    args = training_arguments(cfg, run, val_ds is not None, progress,
                              report_to=tracking.prepare(cfg.training.report_to, run.path, main),
                              engine=engine_arguments(cfg, model, run, world, precision(cfg)["bf16"]))
    ref: dict[str, Any] = {}
    cb = RunDirCallback(run, ref, main)
    callbacks: list[Any] = [cb]
    if cfg.training.early_stopping_patience and val_ds is not None:
        from transformers import EarlyStoppingCallback
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.training.early_stopping_patience))
    task = get_task(cfg.task)
    if cfg.peft.method == "adalora":  # peft leaves its rank-budget update to the training loop
        callbacks.append(adalora_callback(resume_from))  # and puts back the budget's state a checkpoint holds
    trainer = WorkbenchTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds,
                               processing_class=tok, data_collator=task.collator(tok),
                               compute_metrics=functools.partial(task.compute_metrics, labels=labels),
                               # optional: a task whose logits are too big to gather (a causal LM's vocabulary)
                               preprocess_logits_for_metrics=getattr(task, "preprocess_logits_for_metrics", None),
                               callbacks=callbacks, class_weights=class_weights,
                               eval_collator=functools.partial(task.eval_collator, tok, cfg.training.seed)
                               if hasattr(task, "eval_collator") else None,
                               head_learning_rate=cfg.training.head_learning_rate,
                               adversary=_adversary(cfg, model))
    tracking.place_tensorboard(trainer, run.path)
    ref["trainer"] = trainer
    if not progress:  # the run directory is the progress report; no dict lines on stdout
        from transformers.trainer_callback import PrinterCallback, ProgressCallback
        trainer.remove_callback(PrinterCallback)
        trainer.remove_callback(ProgressCallback)
    return trainer, cb


def _adversary(cfg: RunConfig, model: Any) -> EmbeddingAdversary | None:
    """`training.adversarial` on the model's input embeddings (through a PEFT wrapper too), or None."""
    t = cfg.training
    if t.adversarial == "none":
        return None
    try:
        emb = model.get_input_embeddings()
    except (AttributeError, NotImplementedError):
        emb = None
    return EmbeddingAdversary(emb, t.adversarial, t.adversarial_epsilon, t.adversarial_steps, t.adversarial_alpha)


def optimizer_steps(cfg: RunConfig, train_ds: Any, world_size: int = 1) -> int | None:
    """The run's optimizer steps as the Trainer will count them (`training.max_steps`, else batches per epoch over
    gradient accumulation, times the epochs); None when the training set has no length (AdaLoRA's schedule needs
    it: `peft_methods.adalora_schedule` says so)."""
    t = cfg.training
    if t.max_steps and t.max_steps > 0:
        return int(t.max_steps)
    try:
        rows = len(train_ds)
    except TypeError:
        return None
    batches = math.ceil(rows / max(1, t.per_device_train_batch_size * world_size))
    per_epoch = max(batches // t.gradient_accumulation_steps + int(batches % t.gradient_accumulation_steps > 0), 1)
    return math.ceil(t.num_train_epochs * per_epoch)


def _write_predictions(path: Any, pred: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    pred.to_json(tmp, orient="records", lines=True, force_ascii=False)
    os.replace(tmp, path)


def _score_test_split(run: RunDir, stage: Literal["before", "after"], model: Any, tok: Any, prep: Any,
                      cfg: RunConfig, bf16: bool, evaluation: dict[str, Any]) -> None:
    """Score the test split as `stage` ("before"/"after" fine-tuning): its predictions file, then its
    metrics into eval.json."""
    task = get_task(cfg.task)
    model.eval()  # the trainer leaves it in training mode: a task's predict must not score with dropout on
    pred = score_frame(task, model, tok, prep.test, prep.labels, max_length=cfg.data.max_length,
                       batch_size=cfg.training.per_device_eval_batch_size, bf16=bf16)
    _write_predictions(run.predictions_before_file if stage == "before" else run.predictions_file, pred)
    evaluation[stage] = task.score(pred, prep.labels)
    # A task that can say whether "after" really beats "before" on the same examples (a paired interval).
    if stage == "after" and "before" in evaluation and hasattr(task, "compare_before_after") and \
            run.predictions_before_file.exists():
        evaluation["before_vs_after"] = task.compare_before_after(run.predictions("before"), pred,
                                                                  seed=cfg.training.seed)
    write_json_atomic(run.eval_file, evaluation)


def run_training(cfg: RunConfig, run: RunDir, *, resume: bool = False, progress: bool = True) -> RunDir:
    """Run `cfg` into `run` (created by `new_run_dir`); with `resume`, continue from its last checkpoint.

    Any failure is recorded in status.json (state `failed`, the message) and re-raised.
    """
    state = process_state(cfg)
    main = state.is_main_process
    try:
        return _run(cfg, run, resume, progress, state, main)
    except BaseException as e:
        if main:
            msg = str(e) if isinstance(e, WorkbenchError) else f"{type(e).__name__}: {e}"
            if isinstance(e, KeyboardInterrupt):
                msg = "interrupted"
            if isinstance(e, TrainingHalted) and e.step is not None:  # a gap in the curve, marked
                run.append_metrics({"kind": "train", "step": e.step, "loss": None, "nan": True, "time": time.time()})
            run.update_status(state="failed", error=msg, finished=time.time())
            with run.log_file.open("a") as f:
                f.write(traceback.format_exc())
        raise


def _run(cfg: RunConfig, run: RunDir, resume: bool, progress: bool, state: Any, main: bool) -> RunDir:
    from . import distributed

    cfg.check()
    rss_start = peak_memory().get("rss_mb")  # torch and the libraries, before the model: the runtime's own share
    if (why := distributed.cpu_problem(cfg)) is not None:
        raise distributed.DistributedError(why)
    strategy = distributed.effective_strategy(cfg, state.num_processes)
    if main:
        if resume and run.stop_file.exists():
            run.stop_file.unlink()
        _, device_note = training_device(cfg)
        if device_note:  # in the run's log and status, where the CLI and the dashboard show it
            print(f"note: {device_note}", file=sys.stderr, flush=True)
        run.update_status(state="running", phase="loading the model and data", pid=os.getpid(), error=None,
                          started=time.time(), world_size=state.num_processes, device=str(state.device),
                          strategy=strategy, **({"note": device_note} if device_note else {}))
    set_seed(cfg.training.seed)
    with state.main_process_first():  # the first process fetches/converts a built-in model
        path = resolve_model_path(cfg.model.name_or_path)
    tok = load_tokenizer(path, cfg.model)
    task = get_task(cfg.task)
    prep = task.prepare(cfg.data, cfg.split_seed, tokenizer=tok,
                        max_positions=model_max_tokens(load_model_config(cfg.model), tok))
    if prep.max_length != cfg.data.max_length:  # above the model's limit: the report says so
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, max_length=prep.max_length))
    if prep.report.token_lengths:
        prep.report.token_lengths["tokenizer"] = cfg.model.name_or_path
    if cfg.data.augment.operations:  # new training rows only, after the splits (workbench/augment.py)
        prep = _augment(task, prep, cfg, run, main)
    # `training.class_weights` is checked against this data's labels here, before the model is loaded.
    weights = task.class_weights(cfg.training.class_weights, prep) if hasattr(task, "class_weights") else None
    if main:
        write_json_atomic(run.labels_file, prep.labels)
        write_json_atomic(run.report_file, prep.report.to_dict())
        if weights is not None:
            run.update_status(class_weights=dict(zip(prep.labels, weights)))
    model = task.load_model(cfg.model, prep.labels, tokenizer=tok)
    prec = precision(cfg)
    evaluation = run.evaluation() if resume else {}
    baseline = getattr(task, "baseline", None)  # optional: the score of a constant answer, for comparison
    if main and baseline is not None and len(prep.test) and len(prep.train):
        evaluation["baseline"] = baseline(prep)
        write_json_atomic(run.eval_file, evaluation)
    if main and cfg.evaluate_before and "before" not in evaluation and len(prep.test):
        run.update_status(phase="scoring the test split before fine-tuning")
        _score_test_split(run, "before", model, tok, prep, cfg, prec["bf16"], evaluation)
    state.wait_for_everyone()

    train_ds = encode_split(task, prep.train, tok, cfg.data.max_length, model)
    val_ds = encode_split(task, prep.validation, tok, cfg.data.max_length, model) if len(prep.validation) else None
    if cfg.data.packing:  # training rows only; validation and test keep one example per row
        train_ds, packed = task.pack(train_ds, cfg.data.max_length)
        if main:
            prep.report.details["packing"] = packed
            write_json_atomic(run.report_file, prep.report.to_dict())
            run.update_status(packing=packed)
            print(f"note: {packing_line(packed)}", file=sys.stderr, flush=True)
    # A batch size shrunk by an earlier out-of-memory error is reused on resume.
    batch = (run.status().get("batch_override") if resume else None) or {}
    ckpt = _resume_point(run, main) if resume else None
    if resume and ckpt is None and main:
        run.update_status(note="no complete checkpoint was found; training restarted from step 0")
    retry = resume
    while True:
        if model is None:  # rebuilt after an OOM: the old one may hold half-applied updates
            model = task.load_model(cfg.model, prep.labels, tokenizer=tok)
        if cfg.peft.method != "full" and not hasattr(model, "peft_config"):
            steps = optimizer_steps(cfg, train_ds, state.num_processes)  # AdaLoRA's schedule spans the run
            model = apply_peft(model, cfg.peft, task.peft_task_type, steps, tokenizer_path=path)
        if cfg.peft.method == "full" and cfg.peft.freeze_embeddings and task.freeze_embeddings_ok:
            freeze_input_embeddings(model)
        if prec["use_cpu"]:  # same maths, less time per CPU step (workbench/speed.py, benchmarks/bench.py)
            apply_cpu_speedups(model, cfg.training.cpu_speedups)
        eff = cfg.override({f"training.{k}": v for k, v in batch.items()}) if batch else cfg
        if ckpt and cfg.peft.method == "adalora" and (problem := adalora_resume_problem(ckpt)):
            raise RunError(problem)
        trainer, cb = _make_trainer(eff, run, model, tok, train_ds, val_ds, progress, main, prep.labels, weights,
                                    resume_from=ckpt)
        if main and state.num_processes > 1:  # the launch as files its engine reads, to repeat it by hand
            distributed.write_launch_files(cfg, run, (trainer.args.fsdp_config or {}).get(
                "transformer_layer_cls_to_wrap") if strategy == "fsdp" else None)
        if main:
            run.update_status(phase="training", parameters=count_parameters(model), train_rows=len(prep.train),
                              method=cfg.peft.method,
                              precision="bf16" if prec["bf16"] else "fp16" if prec["fp16"] else "fp32",
                              adversarial=trainer.adversary.describe() if trainer.adversary else None,
                              report_to=list(eff.training.report_to))
        if main and retry:  # rows logged after the checkpoint are logged again by the rerun: one row per step
            run.drop_metrics_after(int(ckpt.name.split("-")[1]) if ckpt else 0)
        retry = True
        try:
            trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)
            break
        except pickle.UnpicklingError as e:
            raise RunError(f"checkpoint {ckpt} holds a file that is not plain tensors; loading it was refused, "
                           f"since unpickling it could run code ({str(e).splitlines()[0][:120]}). Fix: delete that "
                           f"checkpoint folder to resume from an earlier one, or start a new run.") from None
        except Exception as e:
            if not is_oom(e):
                raise
            if state.num_processes > 1:  # one rank retrying alone would leave the others waiting in a collective
                raise TrainingHalted(f"out of memory on one of the {state.num_processes} processes. Fix: resume with "
                                     f"a smaller training.per_device_train_batch_size (and more "
                                     f"gradient_accumulation_steps), distributed.strategy: fsdp, or "
                                     f"`workbench estimate CONFIG` to see what fits.") from None
            bs, acc = eff.training.per_device_train_batch_size, eff.training.gradient_accumulation_steps
            if bs <= 1:
                raise TrainingHalted("out of memory in training even at batch size 1. Fix: lower data.max_length, "
                                     "use peft.method: lora, a smaller model, or a device with more memory.") from None
            batch = {"per_device_train_batch_size": bs // 2, "gradient_accumulation_steps": acc * 2}
            if main:
                run.update_status(batch_override=batch, note=f"out of memory at batch size {bs}: continuing with "
                                  f"{bs // 2} x {acc * 2} gradient accumulation (same effective batch)")
                run.append_metrics({"kind": "event", "event": "oom", "step": trainer.state.global_step,
                                    "time": time.time(), **batch})
            del trainer
            model = None
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            ckpt = run.latest_checkpoint()
    if main and trainer.eval_batch_changes:
        run.update_status(eval_batch_size=trainer.eval_batch_changes[-1])

    if cb.stopped:
        if main:
            last = run.latest_checkpoint()
            run.update_status(state="stopped", phase=None, checkpoint=last.name if last else None,
                              finished=time.time())
        return run

    peaks = _peaks_per_rank(state, rss_start)
    if main:
        run.update_status(phase="saving the model", peak_memory=peak_memory(),
                          **({"peak_memory_per_rank": peaks} if state.num_processes > 1 else {}),
                          rss_start_mb=rss_start)
    restore_attention(trainer.model)
    sharded = strategy in ("fsdp", "deepspeed") and state.num_processes > 1
    model_folder = run.model_dir.with_name(f".{run.model_dir.name}.staging") if sharded else run.model_dir
    if sharded:  # every rank gathers its shard into one model; rank 0 writes it beside model/, renamed when whole
        if main:
            run.update_status(phase="consolidating the sharded model into model/ (a stop waits for it)")
        if strategy == "fsdp":
            distributed.consolidate(trainer, model_folder, main)
        else:
            trainer.save_model(str(model_folder))
    else:
        trainer.save_model(str(run.model_dir))
    if not main:  # the model is saved: rank 0 alone finishes the run (torchrun waits for it), nobody waits on it
        return run
    if main:
        # The trainer drops a pickled TrainingArguments here; config.yaml already records the run,
        # and a model folder we hand to others should hold no pickle files.
        (model_folder / "training_args.bin").unlink(missing_ok=True)
        tok.save_pretrained(model_folder)
        write_json_atomic(model_folder / "workbench_model.json",
                          {"labels": prep.labels, "task": cfg.task, "method": cfg.peft.method,
                           "model": cfg.model.__dict__})
        final = trainer.model
        if sharded:
            distributed.publish(model_folder, run.model_dir)
            if run.stop_requested or _SIGNALLED["stop"]:
                run.update_status(note="a stop was asked for while the sharded model was being consolidated: the "
                                       "consolidation finished first, so model/ is whole; the run then completed.")
            from .models import load_trained
            final = load_trained(run.model_dir, trust_remote_code=cfg.model.trust_remote_code,
                                 allow_pickle=cfg.model.allow_pickle)[0].to(state.device)  # the whole model, here
        # A pre-training run is a starting point for later fine-tunes: its weights are always written whole.
        if mergeable(cfg.peft.method) and (cfg.peft.merge_adapter or getattr(task, "reusable_weights", False)):
            merged = merge(final)
            merged.save_pretrained(run.model_dir / "merged", safe_serialization=True)
            tok.save_pretrained(run.model_dir / "merged")
            # its own record too, so the workbench reads it back as trained (model.pooling, the task, labels)
            write_json_atomic(run.model_dir / "merged" / "workbench_model.json",
                              {"labels": prep.labels, "task": cfg.task, "method": "full", "model": cfg.model.__dict__})
            final = merged
        if hasattr(task, "complete_weights"):  # weights the objective does not use, carried over from the base
            folder = run.model_dir / "merged" if (run.model_dir / "merged").is_dir() else run.model_dir
            carried = task.complete_weights(folder, path, getattr(final, "base_model_prefix", ""))
            if carried:
                run.update_status(carried_over=carried)
        run.update_status(phase="scoring the test split after fine-tuning")
        if len(prep.test):
            _score_test_split(run, "after", final, tok, prep, cfg, prec["bf16"], evaluation)
        run.update_status(state="completed", phase=None, finished=time.time(), step=trainer.state.global_step)
    return run


def _augment(task: Any, prep: Any, cfg: RunConfig, run: RunDir, main: bool) -> Any:
    """`data.augment` applied to the training split, its progress (paraphrasing is slow) and counts in status.json."""
    from .augment import augment_training_split, augmentation_line

    def progress(done: int, total: int) -> None:
        if main:
            run.update_status(phase=f"augmenting the training split: {done}/{total} texts paraphrased")
            print(f"paraphrased {done}/{total} training texts", file=sys.stderr, flush=True)

    if main:
        run.update_status(phase="augmenting the training split")
    prep = augment_training_split(task, prep, cfg.data.augment, cfg.training.seed, progress=progress)
    summary = prep.report.details.get("augmentation")
    if main and summary:
        run.update_status(augmentation={k: summary[k] for k in ("added", "dropped", "train_rows_before",
                                                                 "train_rows_after")})
        print(f"note: {augmentation_line(summary)}", file=sys.stderr, flush=True)
    return prep


def _peaks_per_rank(state: Any, rss_start: float | None) -> list[dict[str, float]] | None:
    """Every rank's peak memory (and its resident memory before the model), gathered to all ranks."""
    if state.num_processes <= 1:
        return None
    mine = {**peak_memory(), "rss_start_mb": rss_start}
    out: list[Any] = [None] * state.num_processes
    torch.distributed.all_gather_object(out, mine)
    return out


def peak_memory() -> dict[str, float]:
    """The training process's peak memory so far, in MB: resident memory (the whole process: model, data,
    optimizer, activations) and, on a GPU, the most the CUDA allocator held. Recorded in status.json."""
    out: dict[str, float] = {}
    try:
        import resource  # not on Windows
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out["rss_mb"] = round(rss / (1024 if sys.platform != "darwin" else 1024 * 1024), 1)
    except ImportError:
        pass
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def _resume_point(run: RunDir, main: bool) -> Path | None:
    """The newest intact checkpoint; damaged newer ones are set aside and the fallback said out loud, and a
    run whose checkpoints are all damaged is refused (a silent restart would throw its progress away)."""
    ckpt, damaged = intact_checkpoint(run.checkpoints())
    if not damaged:
        return ckpt
    for name in damaged:
        if pickles := pickled_files(run.checkpoints_dir / name):
            raise RunError(f"checkpoint {run.checkpoints_dir / name} holds a file that is not plain tensors "
                           f"({', '.join(pickles)}); loading it was refused, since unpickling it could run code. "
                           f"Fix: delete that checkpoint folder to resume from an earlier one, or start a new run.")
    what = "; ".join(f"{name}: {', '.join(p)}" for name, p in damaged.items())
    if ckpt is None:
        raise RunError(f"no intact checkpoint to resume run {run.name} from ({what}). Fix: start a new run, or "
                       f"delete {run.checkpoints_dir} and resume to train this run again from step 0.")
    if main:
        moved = [set_aside(run.checkpoints_dir / name).name for name in damaged]
        msg = (f"damaged checkpoint {what}; resumed from {ckpt.name} instead (kept for inspection as "
               f"{', '.join(f'{run.checkpoints_dir.name}/{m}' for m in moved)})")
        print(f"note: {msg}", file=sys.stderr, flush=True)
        run.update_status(note=msg)
        run.append_metrics({"kind": "event", "event": "checkpoint_fallback", "step": int(ckpt.name.split("-")[1]),
                            "time": time.time(), "skipped": list(damaged)})
    return ckpt


def new_run_dir_all_ranks(cfg: RunConfig) -> RunDir:
    """Create the run directory once, on the main process, and share its path with every rank.

    Under `torchrun`/`accelerate launch` each process runs the CLI; without this, each would make
    its own timestamped directory.
    """
    from .rundir import new_run_dir

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return new_run_dir(cfg)
    state = process_state(cfg)
    box = [str(new_run_dir(cfg).path) if state.is_main_process else None]
    torch.distributed.broadcast_object_list(box, src=0)
    return RunDir(box[0])


@contextlib.contextmanager
def stop_signals() -> Iterator[None]:
    """While inside: SIGTERM/SIGINT ask for a graceful stop (checkpoint, then exit); a second SIGINT interrupts.

    The request flag starts clear and the previous handlers come back on leaving, so a process that trains
    twice (a notebook, a test session calling the CLI in-process) never carries one run's stop into the next.
    """

    def handler(signum: int, frame: Any) -> None:
        if _SIGNALLED["stop"] and signum == signal.SIGINT:
            raise KeyboardInterrupt
        _SIGNALLED["stop"] = True

    _SIGNALLED["stop"] = False
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    for s in before:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in before.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
        _SIGNALLED["stop"] = False


def eta_text(status: dict[str, Any]) -> str:
    eta = status.get("eta_seconds")
    if eta is None or not math.isfinite(eta):
        return "-"
    return f"{int(eta // 60)}m{int(eta % 60):02d}s"

