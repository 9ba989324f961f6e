"""The PEFT methods (lora, adalora, ia3, prefix, prompt) on tiny models, for every task each applies to: a few
training steps, a standard PEFT folder, reloaded predictions equal to the run's own, merged equal to the adapter;
AdaLoRA's budget really moves; rsLoRA/DoRA/layers reach the adapter; the refusals; an untrusted adapter_config."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from peft_cases import config_for, data_for, model_for

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

# (task, tiny model, method): every pair that applies (see test_refusals for the ones that do not)
MODEL = {"text-classification": "bert", "token-classification": "bert", "question-answering": "bert",
         "relation-extraction": "bert", "causal-lm-sft": "llama", "seq2seq": "bart", "masked-lm": "bert",
         "causal-lm": "llama"}
APPLIES = {"text-classification": ("lora", "adalora", "ia3", "prefix", "prompt"),
           "token-classification": ("lora", "adalora", "ia3", "prefix"),
           "question-answering": ("lora", "adalora", "ia3", "prefix"),
           "relation-extraction": ("lora", "adalora", "ia3", "prefix", "prompt"),
           "causal-lm-sft": ("lora", "adalora", "ia3", "prefix", "prompt"),
           "seq2seq": ("lora", "adalora", "ia3", "prefix", "prompt"),
           "masked-lm": ("lora", "adalora", "ia3"), "causal-lm": ("lora", "adalora", "ia3")}
CASES = [(t, m) for t, ms in APPLIES.items() for m in ms]
PEFT_TYPE = {"lora": "LORA", "adalora": "ADALORA", "ia3": "IA3", "prefix": "PREFIX_TUNING", "prompt": "PROMPT_TUNING"}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("peft")


_MODELS: dict[tuple[str, str], Path] = {}


def _model(task: str, work: Path) -> Path:
    kind = MODEL[task]
    key = (task if task in ("seq2seq", "causal-lm-sft", "causal-lm", "masked-lm") else "", kind)
    if key not in _MODELS:
        _MODELS[key] = model_for(task, kind, work / f"model-{key[0]}-{kind}")
    return _MODELS[key]


def _train(cfg, monkeypatch):
    """Run `cfg`; returns (run, the test frame the run scored, the model it scored)."""
    import workbench.training as training
    from workbench.rundir import new_run_dir

    seen = {}
    score = training._score_test_split

    def spy(run, stage, model, tok, prep, *a, **k):
        seen.update(test=prep.test, model=model)
        return score(run, stage, model, tok, prep, *a, **k)

    monkeypatch.setattr(training, "_score_test_split", spy)
    run = training.run_training(cfg, new_run_dir(cfg), progress=False)
    return run, seen["test"], seen["model"]


def _scores(model_dir: Path, task: str, frame, labels, batch: int):
    from workbench.evaluate import score_frame
    from workbench.models import load_trained
    from workbench.tasks import get_task

    model, tok = load_trained(model_dir)
    return score_frame(get_task(task), model, tok, frame, labels, max_length=32, batch_size=batch, bf16=False)


def _same_losses(a, b, atol):
    x, y = a["loss"].to_numpy(float), b["loss"].to_numpy(float)
    assert (np.isnan(x) == np.isnan(y)).all()
    assert np.nanmax(np.abs(x - y)) < atol, np.nanmax(np.abs(x - y))


@pytest.mark.parametrize("task,method", CASES)
def test_method_trains_saves_a_peft_folder_and_reloads_to_the_same_predictions(task, method, work, monkeypatch):
    from workbench.peft_methods import mergeable

    cfg = config_for(task, _model(task, work), data_for(task, work / f"data-{task}"), work / "runs", method,
                     merge_adapter=mergeable(method))
    run, test, _ = _train(cfg, monkeypatch)
    st = run.status()
    assert st["state"] == "completed" and st["method"] == method
    assert 0 < st["parameters"]["trainable"] < st["parameters"]["total"] / 2
    losses = run.metrics().query("kind == 'train'")["loss"]
    assert len(losses) == 6 and np.isfinite(losses).all()
    files = {p.name for p in run.model_dir.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= files and "model.safetensors" not in files
    assert json.loads((run.model_dir / "adapter_config.json").read_text())["peft_type"] == PEFT_TYPE[method]
    assert json.loads((run.model_dir / "workbench_model.json").read_text())["method"] == method
    labels = json.loads(run.labels_file.read_text())
    stored = run.predictions("after")  # from the merged model where there is one, else the trained adapter
    again = _scores(run.model_dir, task, test, labels, cfg.training.per_device_eval_batch_size)
    _same_losses(again, stored, 1e-5)
    if "predicted" in stored:
        assert again["predicted"].astype(str).tolist() == stored["predicted"].astype(str).tolist()
    assert ("merged" in files) == mergeable(method)
    if mergeable(method):  # the merged full model predicts as the adapter on its base does
        merged = _scores(run.model_dir / "merged", task, test, labels, cfg.training.per_device_eval_batch_size)
        _same_losses(merged, again, 1e-4)


def test_adalora_moves_its_rank_budget_during_training(work, monkeypatch):
    from safetensors import safe_open

    from workbench.peft_methods import adalora_ranks

    task = "text-classification"
    cfg = config_for(task, _model(task, work), data_for(task, work / f"data-{task}"), work / "runs", "adalora",
                     adalora={"init_r": 6, "target_r": 2, "tinit": 2, "tfinal": 2, "deltaT": 1}
                     ).override({"training.max_steps": 10})
    run, _, model = _train(cfg, monkeypatch)
    before = {n: p.shape[0] for n, p in model.named_parameters() if "lora_A" in n}  # init_r rows each
    assert set(before.values()) == {6}
    after = adalora_ranks(model)  # singular values the allocator kept (the rest were zeroed)
    assert len(after) == len(before) and sum(after.values()) == 2 * len(after) < sum(before.values())
    saved = json.loads((run.model_dir / "adapter_config.json").read_text())
    assert saved["total_step"] == 10 and (saved["tinit"], saved["tfinal"]) == (2, 2)
    pattern = saved["rank_pattern"]
    assert sum(sum(v) for v in pattern.values()) == 2 * len(pattern)
    with safe_open(run.model_dir / "adapter_model.safetensors", "pt") as f:  # saved at the ranks kept
        kept = sorted(f.get_slice(k).get_shape()[0] for k in f.keys() if "lora_A" in k)
    assert sum(kept) == 2 * len(kept) and len(set(kept)) > 1  # the budget went to some modules more than others


def _adalora_run(work, name: str, **training):
    task = "text-classification"
    return config_for(task, _model(task, work), data_for(task, work / f"data-{task}"), work / "runs", "adalora",
                      adalora={"init_r": 6, "target_r": 2, "tinit": 2, "tfinal": 4, "deltaT": 1}).override({
        "name": name, "training.max_steps": 12, "training.save_strategy": "steps", "training.save_steps": 10_000,
        # 56 training rows: 12 steps of 4 stay in the first epoch (the Trainer resumes bit-exact within it)
        "training.per_device_train_batch_size": 4,
        **{f"training.{k}": v for k, v in training.items()}})


@pytest.fixture(scope="module")
def adalora_straight(work):
    """The AdaLoRA run of `_adalora_run` without a stop: the reference a stopped-and-resumed one must match."""
    from workbench.rundir import new_run_dir
    from workbench.training import run_training

    cfg = _adalora_run(work, "ada-straight")
    return run_training(cfg, new_run_dir(cfg), progress=False)


# 12 steps, tinit 2, tfinal 4 (peft counts the steps done before the current one): scores only in steps 1-3, the
# budget pruned in steps 4-8, fixed in step 9 by the scores, masked in steps 10-12 by the mask fixed then.
@pytest.mark.parametrize("stop_at", [1, 5, 8, 9],
                         ids=["before-tinit", "during-pruning", "budget-fixed-next", "after-tfinal"])
def test_a_stopped_adalora_run_resumes_and_ends_like_an_uninterrupted_one(stop_at, work, adalora_straight,
                                                                          monkeypatch):
    from safetensors import safe_open
    from safetensors.torch import load_file

    import workbench.training as training
    from workbench.rundir import new_run_dir
    from workbench.trainer import RunDirCallback

    real = RunDirCallback.on_step_end

    def stop(self, args, state, control, **kw):  # `workbench stop` after step stop_at: checkpoint, then exit
        if state.global_step == stop_at:
            self.run.request_stop()
        return real(self, args, state, control, **kw)

    monkeypatch.setattr(RunDirCallback, "on_step_end", stop)
    cfg = _adalora_run(work, f"ada-stop-{stop_at}")
    run = training.run_training(cfg, new_run_dir(cfg), progress=False)
    assert run.status()["state"] == "stopped"
    ckpt = run.latest_checkpoint()
    assert ckpt.name == f"checkpoint-{stop_at}"
    # saved at init_r (the model is rebuilt at init_r on resume); the zeroed singular values carry the mask
    assert json.loads((ckpt / "adapter_config.json").read_text())["rank_pattern"] is None
    with safe_open(ckpt / "adapter_model.safetensors", "pt") as f:
        assert {f.get_slice(k).get_shape()[0] for k in f.keys() if "lora_A" in k} == {6}

    monkeypatch.setattr(RunDirCallback, "on_step_end", real)
    seen, score = {}, training._score_test_split
    monkeypatch.setattr(training, "_score_test_split", lambda run, stage, model, tok, prep, *a, **k: (
        seen.update(test=prep.test), score(run, stage, model, tok, prep, *a, **k))[1])
    training.run_training(cfg, run, resume=True, progress=False)
    st = run.status()
    assert st["state"] == "completed" and st["step"] == 12, st.get("error")
    assert run.metrics().query("kind == 'train'")["step"].tolist() == list(range(1, 13))
    # the importance scores and the rank mask travel with the checkpoint: the same budget, losses and adapter
    ref = adalora_straight
    a = run.metrics().query("kind == 'train'").set_index("step")["loss"]
    b = ref.metrics().query("kind == 'train'").set_index("step")["loss"]
    assert a.tolist() == pytest.approx(b.tolist(), rel=1e-4)
    saved = json.loads((run.model_dir / "adapter_config.json").read_text())
    assert saved["rank_pattern"] == json.loads((ref.model_dir / "adapter_config.json").read_text())["rank_pattern"]
    assert sum(sum(v) for v in saved["rank_pattern"].values()) == 2 * len(saved["rank_pattern"])
    mine, theirs = (load_file(r.model_dir / "adapter_model.safetensors") for r in (run, ref))
    assert mine.keys() == theirs.keys()
    assert all(torch.allclose(mine[k], theirs[k], atol=1e-5) for k in mine)
    # the final adapter is pruned (as peft saves it) and reloads to the run's own predictions
    assert sum(v.shape[0] for k, v in mine.items() if "lora_A" in k) == 2 * len(saved["rank_pattern"])
    labels = json.loads(run.labels_file.read_text())
    stored = run.predictions("after")
    again = _scores(run.model_dir, cfg.task, seen["test"], labels, 64)
    _same_losses(again, stored, 1e-5)
    assert again["predicted"].astype(str).tolist() == stored["predicted"].astype(str).tolist()


def test_adalora_loads_its_best_checkpoint_at_end_and_saves_the_ranks_it_uses(work, monkeypatch):
    """load_best_model_at_end with the best checkpoint mid-pruning (its mask is not the final one in memory): the
    checkpoint loads, and the final adapter keeps the ranks its weights use, so it reloads to the same predictions."""
    from safetensors.torch import load_file

    from workbench.trainer import WorkbenchTrainer

    real = WorkbenchTrainer.evaluate

    def best_at_6(self, *a, **k):  # the validation loss made lowest at step 6, whatever training does
        return {**real(self, *a, **k), "eval_loss": float(abs(self.state.global_step - 6))}

    monkeypatch.setattr(WorkbenchTrainer, "evaluate", best_at_6)
    cfg = _adalora_run(work, "ada-best", eval_strategy="steps", eval_steps=2, save_steps=2,
                       load_best_model_at_end=True, metric_for_best_model="loss")
    run, test, model = _train(cfg, monkeypatch)
    assert run.status()["state"] == "completed", run.status().get("error")
    best = load_file(run.checkpoints_dir / "checkpoint-6" / "adapter_model.safetensors")
    loaded = {k.replace(".default", ""): p for k, p in model.named_parameters() if "lora_" in k}
    assert all(torch.equal(loaded[k], v) for k, v in best.items() if "lora_" in k)
    kept = {k: (v != 0).view(-1).tolist() for k, v in best.items() if "lora_E" in k}
    assert 2 * len(kept) < sum(map(sum, kept.values())) < 6 * len(kept)  # mid-pruning: above the final budget
    saved = json.loads((run.model_dir / "adapter_config.json").read_text())["rank_pattern"]
    assert {f"base_model.model.{k}": v for k, v in saved.items()} == kept
    labels = json.loads(run.labels_file.read_text())
    again = _scores(run.model_dir, cfg.task, test, labels, 64)
    stored = run.predictions("after")
    _same_losses(again, stored, 1e-5)
    assert again["predicted"].astype(str).tolist() == stored["predicted"].astype(str).tolist()


def test_adalora_checkpoints_that_cannot_resume_are_refused_with_the_fix(work, monkeypatch):
    """A checkpoint saved pruned (as before checkpoints were written at init_r), one without its AdaLoRA state just
    before the step that fixes the budget by it, and a state file that does not fit: each a clear refusal."""
    import shutil

    from safetensors.torch import load_file, save_file

    import workbench.training as training
    from workbench.errors import ModelError, RunError
    from workbench.peft_methods import ADALORA_STATE
    from workbench.rundir import new_run_dir
    from workbench.trainer import RunDirCallback

    real = RunDirCallback.on_step_end

    def stop(self, args, state, control, **kw):
        if state.global_step == 8:
            self.run.request_stop()
        return real(self, args, state, control, **kw)

    monkeypatch.setattr(RunDirCallback, "on_step_end", stop)
    cfg = _adalora_run(work, "ada-refused")
    run = training.run_training(cfg, new_run_dir(cfg), progress=False)
    monkeypatch.setattr(RunDirCallback, "on_step_end", real)
    ckpt = run.latest_checkpoint()
    keep = ckpt.parent / "kept"
    shutil.copytree(ckpt, keep)

    f = ckpt / "adapter_config.json"
    f.write_text(json.dumps({**json.loads(f.read_text()), "rank_pattern": {"x.lora_E": [True, False]}}))
    with pytest.raises(RunError, match="saved at its pruned ranks.*Fix: start the run again"):
        training.run_training(cfg, run, resume=True, progress=False)
    assert run.status()["state"] == "failed" and "pruned ranks" in run.status()["error"]

    shutil.copyfile(keep / "adapter_config.json", f)
    (ckpt / ADALORA_STATE).unlink()  # step 9 fixes the budget by the scores, which peft does not build first
    with pytest.raises(ModelError, match="no AdaLoRA importance scores.*Fix: delete that checkpoint folder"):
        training.run_training(cfg, run, resume=True, progress=False)

    state = load_file(keep / ADALORA_STATE)
    name = next(k for k in state if k.startswith("exp_avg_ipt."))
    save_file({**state, name: torch.zeros(3, 3)}, str(ckpt / ADALORA_STATE))
    with pytest.raises(ModelError, match="does not fit this run's AdaLoRA adapter"):
        training.run_training(cfg, run, resume=True, progress=False)
    assert "does not fit" in run.status()["error"]


def test_adalora_shares_become_step_counts_and_unknown_counts_are_refused(tiny_bert):
    from workbench.config import ModelConfig, PeftConfig, RunConfig
    from workbench.errors import ModelError
    from workbench.peft_methods import adalora_schedule, apply_peft
    from workbench.tasks import get_task

    pe = RunConfig.from_dict({"peft": {"method": "adalora", "adalora": {"tinit": 0.1, "tfinal": 0.25}}}).peft
    assert adalora_schedule(pe, 200) == (200, 20, 50)
    task = get_task("text-classification")
    model = task.load_model(ModelConfig(name_or_path=str(tiny_bert)), ["a", "b"])
    with pytest.raises(ModelError, match="total number of optimizer steps.*training.max_steps"):
        apply_peft(model, PeftConfig(method="adalora"), task.peft_task_type, total_steps=None)
    counts = RunConfig.from_dict({"peft": {"method": "adalora", "adalora": {"tinit": 2, "tfinal": 2}}}).peft
    with pytest.raises(ModelError, match="leave no steps to re-allocate"):
        apply_peft(model, counts, task.peft_task_type, total_steps=4)
    problems = RunConfig.from_dict({"peft": {"method": "adalora", "adalora": {"tinit": 2, "tfinal": 2}},
                                    "training": {"max_steps": 4}}).validate()
    assert any("leave no steps" in p and "4 optimizer steps" in p for p in problems)


def test_rslora_dora_and_layers_reach_the_saved_adapter(work, monkeypatch):
    from safetensors import safe_open

    task = "text-classification"
    cfg = config_for(task, _model(task, work), data_for(task, work / f"data-{task}"), work / "runs", "lora",
                     lora={"r": 4, "use_rslora": True, "use_dora": True, "layers": [1]})
    run, test, _ = _train(cfg, monkeypatch)
    saved = json.loads((run.model_dir / "adapter_config.json").read_text())
    assert saved["use_rslora"] is True and saved["use_dora"] is True and saved["layers_to_transform"] == [1]
    with safe_open(run.model_dir / "adapter_model.safetensors", "pt") as f:
        keys = list(f.keys())
    adapted = [k for k in keys if "lora_" in k]
    assert adapted and all(".layer.1." in k for k in adapted)  # layer 0 got none
    assert any("lora_magnitude_vector" in k for k in keys)  # DoRA's trained magnitudes
    again = _scores(run.model_dir, task, test, json.loads(run.labels_file.read_text()), 64)
    _same_losses(again, run.predictions("after"), 1e-5)


def test_all_linear_targets_and_out_of_range_layers(tiny_bert):
    from workbench.config import ModelConfig, RunConfig
    from workbench.errors import ModelError
    from workbench.peft_methods import apply_peft
    from workbench.tasks import get_task

    task = get_task("text-classification")
    model = task.load_model(ModelConfig(name_or_path=str(tiny_bert)), ["a", "b"])
    pe = RunConfig.from_dict({"peft": {"method": "lora", "lora": {"target_modules": ["all-linear"]}}}).peft
    wrapped = apply_peft(model, pe, task.peft_task_type)
    adapted = {n.split(".lora_A")[0].rsplit(".", 2)[-1] for n, _ in wrapped.named_parameters() if "lora_A" in n}
    assert {"query", "key", "value", "dense"} <= adapted  # feed-forward and output layers too, not the head
    bad = RunConfig.from_dict({"peft": {"method": "lora", "lora": {"layers": [0, 7]}}}).peft
    with pytest.raises(ModelError, match=r"layers \[0, 7\]: this model has layers 0 to 1"):
        apply_peft(task.load_model(ModelConfig(name_or_path=str(tiny_bert)), ["a", "b"]), bad, task.peft_task_type)


def test_refusals_say_why_and_what_to_use(work, monkeypatch):
    from workbench.config import RunConfig

    def problems(task, method, **peft):
        return " ".join(RunConfig.from_dict({"task": task, "peft": {"method": method, **peft}}).validate())

    assert "outputs gain num_virtual_tokens positions" in problems("token-classification", "prompt")
    assert "answer start/end positions" in problems("question-answering", "prompt")
    for task in ("masked-lm", "causal-lm"):
        for method in ("prefix", "prompt"):
            assert "saves whole weights for later fine-tunes" in problems(task, method)
    assert "nothing to fold" in problems("text-classification", "prefix", merge_adapter=True)
    assert problems("seq2seq", "prefix") == "" and problems("text-classification", "prompt") == ""
    # a model whose forward takes neither `past_key_values` nor (through its body) `cache` cannot hold a prefix
    from workbench.peft_methods import model_problem

    class Plain(torch.nn.Module):
        def forward(self, input_ids=None, attention_mask=None):
            return input_ids
    assert "neither this model nor its transformer body takes one" in model_problem(Plain(), "prefix")


def test_prompt_tuning_a_decoder_classifier_needs_mean_pooling(tiny_llama, work, monkeypatch):
    from workbench.errors import ModelError

    task = "text-classification"
    data = data_for(task, work / f"data-{task}")
    cfg = config_for(task, tiny_llama, data, work / "runs", "prompt")
    with pytest.raises(ModelError, match="model.pooling: mean"):
        _train(cfg, monkeypatch)
    run, test, _ = _train(cfg.override({"model.pooling": "mean"}), monkeypatch)
    again = _scores(run.model_dir, task, test, json.loads(run.labels_file.read_text()), 64)
    _same_losses(again, run.predictions("after"), 1e-5)
    # prefix tuning with mean pooling: peft's mask covers the prefix's keys too, the hidden states only the text
    run, test, _ = _train(config_for(task, tiny_llama, data, work / "runs", "prefix").override(
        {"model.pooling": "mean"}), monkeypatch)
    again = _scores(run.model_dir, task, test, json.loads(run.labels_file.read_text()), 64)
    _same_losses(again, run.predictions("after"), 1e-5)


def test_an_old_flat_lora_config_still_trains_with_its_note(work, monkeypatch):
    from workbench.config import RunConfig

    task = "text-classification"
    new = config_for(task, _model(task, work), data_for(task, work / f"data-{task}"), work / "runs", "lora")
    raw = new.to_dict()
    raw["peft"] = {"method": "lora", "r": 4, "lora_alpha": 8, "freeze_embeddings": False}
    cfg = RunConfig.from_dict(raw)
    assert cfg.peft.lora.r == 4 and any("old flat LoRA fields" in n for n in cfg.load_notes)
    run, _, _ = _train(cfg, monkeypatch)
    saved = json.loads((run.model_dir / "adapter_config.json").read_text())
    assert (saved["r"], saved["lora_alpha"]) == (4, 8)


def test_a_shared_adapter_config_only_describes_the_adapter(work, monkeypatch):
    """A run directory is untrusted: its adapter_config.json may not pick an init that rewrites the base weights at
    load (PiSSA), a tokenizer to fetch with remote code, or another base model."""
    import transformers

    from workbench.errors import ModelError

    task = "text-classification"
    data = data_for(task, work / f"data-{task}")
    run, test, _ = _train(config_for(task, _model(task, work), data, work / "runs", "lora"), monkeypatch)
    f = run.model_dir / "adapter_config.json"
    raw = json.loads(f.read_text())
    raw.update(init_lora_weights="pissa", base_model_name_or_path="someone/else", layer_replication=[[0, 2], [0, 2]])
    f.write_text(json.dumps(raw))
    labels = json.loads(run.labels_file.read_text())
    again = _scores(run.model_dir, task, test, labels, 64)  # PiSSA would have re-factored the base weights
    _same_losses(again, run.predictions("after"), 1e-5)

    prompt, ptest, _ = _train(config_for(task, _model(task, work), data, work / "runs", "prompt",
                                         prompt={"init_text": "classify the movie"}), monkeypatch)
    f = prompt.model_dir / "adapter_config.json"
    raw = json.loads(f.read_text())
    assert raw["prompt_tuning_init"] == "TEXT"
    raw.update(tokenizer_name_or_path="someone/remote-code-tokenizer", tokenizer_kwargs={"trust_remote_code": True},
               inference_mode=False)
    f.write_text(json.dumps(raw))
    asked = []
    real = transformers.AutoTokenizer.from_pretrained.__func__

    def record(cls, name, *a, **k):
        asked.append(str(name))
        return real(cls, name, *a, **k)

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", classmethod(record))
    again = _scores(prompt.model_dir, task, ptest, labels, 64)
    assert asked == [str(prompt.model_dir)]  # the run's own tokenizer, nothing the file names
    _same_losses(again, prompt.predictions("after"), 1e-5)

    raw["peft_type"] = "XLORA"
    f.write_text(json.dumps(raw))
    with pytest.raises(ModelError, match="not an adapter the workbench trains"):
        _scores(prompt.model_dir, task, ptest, labels, 64)
