"""The trainer and its callback: what `transformers.Trainer` does not promise and a run needs.

- a NaN/inf loss halts the run at the step it happens (the trainer would log and carry on);
- checkpoints are written atomically: into a staging folder, fsynced, then renamed, and old ones
  rotated only after the new one is complete (the trainer writes in place); an AdaLoRA adapter is
  written at init_r with its rank mask and importance scores beside it, so a resumed run fits it
  (`peft_methods.adalora_unpruned`);
- an out-of-memory error during evaluation halves the evaluation batch and retries, leaving the
  training batch alone (training OOM is handled one level up, in `training.run_training`);
- status.json and metrics.jsonl are kept current; a stop request becomes checkpoint-then-stop;
- `training.adversarial`: FGM/PGD on the input embeddings as part of each training step
  (workbench/adversarial.py), its loss and seconds logged beside the clean loss.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import rotate_checkpoints

from .adversarial import EmbeddingAdversary
from .errors import TrainingHalted
from .peft_methods import adalora_mask_from_weights, adalora_unpruned, save_adalora_state
from .rundir import RunDir

SIGNALLED = {"stop": False}
_SIGNALLED = SIGNALLED


def is_oom(e: BaseException) -> bool:
    """CUDA/MPS out-of-memory, or the CPU allocator failing."""
    if isinstance(e, torch.OutOfMemoryError):
        return True
    msg = str(e).lower()
    return isinstance(e, RuntimeError) and ("out of memory" in msg or "can't allocate memory" in msg)


def _fsync_tree(folder: Path) -> None:
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


HEAD_MODULES = ("score", "classifier", "qa_outputs")  # the task heads transformers puts on a model (and PEFT copies)


def is_head_parameter(name: str) -> bool:
    """Whether a parameter (by its dotted name) belongs to the task head, not the pretrained body."""
    return any(part in HEAD_MODULES for part in name.split("."))


ITEM_COUNT_HEADS = ("ForCausalLM",)  # heads whose loss is a sum over tokens divided by `num_items_in_batch`


def _loss_uses_item_count(model: Any) -> bool:
    """Whether `model` (through a PEFT wrapper) is a head whose loss divides by `num_items_in_batch` (a causal LM's
    token-averaged loss); the others (classification, QA, token classification, masked LM, T5/BART) return a plain
    batch mean whatever the trainer passes."""
    inner = model
    for _ in range(4):
        if type(inner).__name__.endswith(ITEM_COUNT_HEADS):
            return True
        nxt = getattr(inner, "base_model", None)
        nxt = getattr(nxt, "model", nxt) if nxt is not None and nxt is not inner else None
        if nxt is None or nxt is inner:
            return False
        inner = nxt
    return False


class WorkbenchTrainer(Trainer):
    """`Trainer` plus a per-step finite-loss check and a count of real (non-padding) tokens."""

    real_tokens = 0

    def __init__(self, *args: Any, class_weights: list[float] | None = None, head_learning_rate: float | None = None,
                 eval_collator: Any = None, adversary: EmbeddingAdversary | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.adversary = adversary
        self._adv_losses: list[float] = []
        self._adv_logged_seconds = 0.0
        # A task whose training batches are random (masked LM) gives a factory of seeded collators: each
        # validation pass then sees the same batches, so its scores compare from pass to pass.
        self.eval_collator = eval_collator
        self.head_learning_rate = head_learning_rate
        self.eval_batch_changes: list[int] = []
        # `training.class_weights`: a weighted cross-entropy replaces the model's own loss only when set.
        self.class_weights = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        if self.class_weights is not None:
            self.loss_is_scaled_for_ga = False  # a per-batch mean: the trainer divides it for accumulation
        if not _loss_uses_item_count(self.model):
            # A head that returns the mean over its batch and ignores `num_items_in_batch`: the trainer would
            # otherwise multiply that mean by the process count (scaling DDP's gradients and logged loss by N) and
            # skip dividing it over gradient-accumulation steps.
            self.model_accepts_loss_kwargs = False

    def create_accelerator_and_postprocess(self) -> None:
        """The stock accelerator; on CPUs with `fsdp`, the FSDP plugin accelerate leaves out there put back
        (`distributed.cpu_fsdp`), so a CPU run shards instead of silently training as DDP."""
        super().create_accelerator_and_postprocess()
        if self.args.fsdp and (self.args.use_cpu or not torch.cuda.is_available()):
            from .distributed import cpu_fsdp
            cpu_fsdp(self)

    def create_optimizer(self, model: Any = None) -> Any:
        """The stock optimizer, but with `training.head_learning_rate` the task head's parameters (`score`,
        `classifier`: a fresh layer) get that peak rate; the scheduler scales every group alike."""
        if self.head_learning_rate is None or self.optimizer is not None:
            return super().create_optimizer(*([model] if model is not None else []))
        model = model if model is not None else self.model
        opt_cls, opt_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
        decay = set(self.get_decay_parameter_names(model))
        groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
        for name, p in model.named_parameters():
            if p.requires_grad:
                groups.setdefault((is_head_parameter(name), name in decay), []).append(p)
        self.optimizer = opt_cls([{"params": ps, "weight_decay": self.args.weight_decay if d else 0.0,
                                   "lr": self.head_learning_rate if head else self.args.learning_rate}
                                  for (head, d), ps in groups.items()], **opt_kwargs)
        return self.optimizer

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        """The model's loss, or with `class_weights` a weighted cross-entropy over its logits (the mean
        weighted by each example's class weight, as `torch.nn.CrossEntropyLoss(weight=...)` defines it)."""
        if self.class_weights is None or "labels" not in inputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        loss = torch.nn.functional.cross_entropy(logits.float().view(-1, logits.shape[-1]), labels.view(-1),
                                                 weight=self.class_weights.to(logits.device))
        return (loss, outputs) if return_outputs else loss

    def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> torch.Tensor:
        # Packed rows (causal-lm-sft's data.packing) carry no attention mask, so their collator counts the
        # non-padding tokens instead; the count is not a model input.
        real = inputs.pop("real_tokens", None)
        self.real_tokens += int(real) if real is not None else int(inputs["attention_mask"].sum())
        if self.adversary is None:
            loss = super().training_step(model, inputs, num_items_in_batch)
            finite = torch.isfinite(loss).all().float()
        else:
            loss = self._adversarial_step(model, inputs, num_items_in_batch)
            adv = self.adversary.last_loss
            finite = torch.isfinite(loss).all().float() * float(adv is None or math.isfinite(adv))
        if self.args.world_size > 1:  # every rank must halt together or the others hang
            torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
        if finite.item() < 1:
            step = self.state.global_step + 1
            # the clean loss is finite: the adversarial pass's was not (or, across ranks, another rank's loss)
            clean = self.adversary is not None and bool(torch.isfinite(loss).all())
            what = "adversarial loss (training.adversarial)" if clean else "training loss"
            value = self.adversary.last_loss if clean else loss.item()
            raise TrainingHalted.at_step(step, f"the {what} became {value} at step {step}; training "
                                 f"halted. The last good checkpoint is kept. Fix: lower training.learning_rate"
                                 f"{', lower training.adversarial_epsilon' if clean else ''}, or "
                                 f"turn off fp16 (try bf16 or fp32).")
        return loss

    def _adversarial_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any) -> torch.Tensor:
        """The clean pass and the adversarial pass(es) each go through the stock `training_step`, so loss
        scaling for gradient accumulation, mixed precision and the backward stay the trainer's own; PGD's
        inner passes are forward-only, their gradient taken with respect to the push alone."""
        def train_pass() -> torch.Tensor:
            return super(WorkbenchTrainer, self).training_step(model, dict(inputs), num_items_in_batch)

        def loss_pass() -> torch.Tensor:
            with self.compute_loss_context_manager():
                return self.compute_loss(model, self._prepare_inputs(dict(inputs)),
                                         num_items_in_batch=num_items_in_batch)

        scaler = getattr(self.accelerator, "scaler", None)  # fp16: keep small gradients from underflowing
        loss = self.adversary.step(train_pass, loss_pass, loss_scale=float(scaler.get_scale()) if scaler else 1.0)
        if self.adversary.last_loss is not None:
            self._adv_losses.append(self.adversary.last_loss)
        return loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """With `training.adversarial`, a train log row also gets the mean adversarial loss and the seconds the
        adversarial passes took since the previous row (their cost, beside the step time)."""
        if self.adversary is not None and "loss" in logs:
            if self._adv_losses:
                logs["adversarial_loss"] = round(sum(self._adv_losses) / len(self._adv_losses), 4)
            logs["adversarial_seconds"] = round(self.adversary.seconds - self._adv_logged_seconds, 3)
            self._adv_losses, self._adv_logged_seconds = [], self.adversary.seconds
        super().log(logs, start_time)

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        """Write the checkpoint into `.staging/`, fsync it, rename it into place, then rotate.

        A private method on purpose: there is no public hook *before* a checkpoint is written
        (`TrainerCallback.on_save` runs after the trainer has written it in place, too late to make the
        write atomic). pyproject pins transformers to the tested minor release, and
        tests/test_untrusted.py::test_i12_12_private_apis_present checks this signature and its caller.
        """
        root = Path(self.args.output_dir)
        staging = root / ".staging"
        name = f"checkpoint-{self.state.global_step}"
        if self.args.should_save:
            shutil.rmtree(staging / name, ignore_errors=True)  # a partial one left by a crash
        self.accelerator.wait_for_everyone()
        self.args.output_dir = str(staging)
        try:
            # AdaLoRA: saved at init_r with its rank mask and scores beside it (`peft_methods.adalora_unpruned`)
            with adalora_unpruned(self.model):
                super()._save_checkpoint(model, trial)  # rotates inside staging only: nothing to delete there
        finally:
            self.args.output_dir = str(root)
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            src, dst = staging / name, root / name
            save_adalora_state(self.model, src)
            if self.state.best_model_checkpoint and str(staging) in self.state.best_model_checkpoint:
                self.state.best_model_checkpoint = self.state.best_model_checkpoint.replace(str(staging), str(root))
            state_file = src / "trainer_state.json"
            if state_file.exists():  # it records where the best checkpoint lives: the final path
                st = json.loads(state_file.read_text())
                st["best_model_checkpoint"] = self.state.best_model_checkpoint
                state_file.write_text(json.dumps(st, indent=2))
            _fsync_tree(src)
            if dst.exists():  # the same step saved again (after a resume): replace it whole
                old = root / f".old-{name}"
                os.replace(dst, old)
                os.replace(src, dst)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(src, dst)
            _fsync_dir(root)
            rotate_checkpoints(output_dir=str(root), save_total_limit=self.args.save_total_limit,
                               best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=False)
        self.accelerator.wait_for_everyone()

    def _load_best_model(self) -> None:
        """`training.load_best_model_at_end` for AdaLoRA too: the best checkpoint is at init_r (see
        `_save_checkpoint`), so the mask in memory is set aside while it loads (peft would cut the model down to it
        first), then set to the loaded weights' own. Private like `_save_checkpoint` (tests/test_untrusted.py)."""
        with adalora_unpruned(self.model):
            super()._load_best_model()
        adalora_mask_from_weights(self.model)

    def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        """Evaluation OOM halves the evaluation batch only, and retries."""
        while True:
            train_collator = self.data_collator
            if self.eval_collator is not None:
                self.data_collator = self.eval_collator()
            try:
                return super().evaluate(*args, **kwargs)
            except Exception as e:
                if not is_oom(e) or self.args.per_device_eval_batch_size <= 1:
                    raise
                # get_eval_dataloader() builds a new loader with this size: the trainer caches eval loaders
                # only with dataloader_persistent_workers, which the workbench never turns on.
                self.args.per_device_eval_batch_size //= 2
                self.eval_batch_changes.append(self.args.per_device_eval_batch_size)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            finally:
                self.data_collator = train_collator


class RunDirCallback(TrainerCallback):
    """Writes metrics.jsonl and status.json; turns a stop request into checkpoint-then-stop."""

    def __init__(self, run: RunDir, trainer_ref: dict[str, Any], main: bool):
        self.run, self.ref, self.main = run, trainer_ref, main
        self.stopped = False
        self._t0 = self._last_status = self._last_log_t = time.time()
        self._first_step: int | None = None
        self._last_tokens = 0

    def _stop_requested(self, args: TrainingArguments) -> bool:
        flag = self.run.stop_requested or _SIGNALLED["stop"]
        if args.world_size > 1:
            t = torch.tensor([float(flag)])
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
            flag = bool(t.item())
        return flag

    def on_train_begin(self, args, state, control, **kw):
        self._first_step = state.global_step
        self._t0 = self._last_log_t = time.time()
        if self.main:
            self.run.update_status(state="running", step=state.global_step, total_steps=state.max_steps,
                                   epoch=state.epoch)

    def on_step_end(self, args, state, control, **kw):
        if self._stop_requested(args):
            self.stopped = True
            control.should_save = True
            control.should_training_stop = True
        now = time.time()
        if self.main and (now - self._last_status > 1.0 or state.global_step == state.max_steps or self.stopped):
            done = state.global_step - (self._first_step or 0)
            rate = done / max(now - self._t0, 1e-9)
            eta = (state.max_steps - state.global_step) / rate if rate > 0 else None
            trainer = self.ref.get("trainer")
            extra = {"state": "stopping"} if self.stopped else {}
            if trainer is not None and trainer.adversary is not None:  # its cost so far, in this process
                extra["adversarial"] = {**trainer.adversary.describe(), "seconds": round(trainer.adversary.seconds, 2),
                                        "train_seconds": round(now - self._t0, 2)}
            self.run.update_status(step=state.global_step, total_steps=state.max_steps, epoch=state.epoch,
                                   eta_seconds=eta, steps_per_second=rate, **extra)
            self._last_status = now

    def on_log(self, args, state, control, logs=None, **kw):
        if not self.main or not logs:
            return
        row: dict[str, Any] = {"step": state.global_step, "epoch": state.epoch, "time": time.time()}
        trainer = self.ref.get("trainer")
        if "loss" in logs:
            row["kind"] = "train"
            now = time.time()
            tokens = trainer.real_tokens if trainer else 0
            elapsed = max(now - self._last_log_t, 1e-9)
            row["tokens_per_second"] = (tokens - self._last_tokens) * args.world_size / elapsed
            self._last_tokens, self._last_log_t = tokens, now
        elif any(k.startswith("eval_") for k in logs):
            row["kind"] = "eval"
        elif "train_runtime" in logs:
            row["kind"] = "summary"
            if trainer:
                row["real_tokens"] = trainer.real_tokens * args.world_size
                row["tokens_per_second"] = row["real_tokens"] / max(logs["train_runtime"], 1e-9)
        else:
            row["kind"] = "other"
        row.update({k: v for k, v in logs.items() if isinstance(v, (int, float))})
        self.run.append_metrics(row)
