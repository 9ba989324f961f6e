"""Tiny runs of every task for tests/test_peft_methods.py: data and a config per task, on the tiny models."""

from __future__ import annotations

from pathlib import Path

from conftest import build_tiny_model, make_sentiment_frame

TASK_DATA = ("text-classification", "token-classification", "question-answering", "relation-extraction",
             "causal-lm-sft", "seq2seq", "masked-lm", "causal-lm")
METHODS = ("lora", "adalora", "ia3", "prefix", "prompt")


def data_for(task: str, folder: Path) -> tuple[Path, dict]:
    """(data file, extra data settings) for a tiny run of `task`."""
    folder.mkdir(parents=True, exist_ok=True)
    if task == "text-classification":
        p = folder / "sentiment.csv"
        make_sentiment_frame(80).to_csv(p, index=False)
        return p, {}
    if task == "token-classification":
        from test_ner import _toy_conll
        return _toy_conll(folder / "toy.conll", 60), {}
    if task == "question-answering":
        from test_qa import _jsonl, _toy_rows
        return _jsonl(folder / "qa.jsonl", _toy_rows(60, words=(6, 20))), {"doc_stride": 8}
    if task == "relation-extraction":
        from test_relation_extraction import _toy_relations
        return _toy_relations(folder / "re.csv", 60), {}
    if task == "causal-lm-sft":
        from test_sft import _chat_file
        return _chat_file(folder / "chat.jsonl", 60), {}
    if task == "seq2seq":
        from test_seq2seq import _pairs
        p = folder / "pairs.csv"
        _pairs(60).to_csv(p, index=False)
        return p, {"prompt_template": "review : {review}", "label_column": "verdict"}
    from test_pretraining import write_corpus
    return write_corpus(folder / "corpus.txt", 60), {}


def model_for(task: str, kind: str, folder: Path) -> Path:
    """A tiny model for `task`; for the language-model tasks with its LM head saved (the conftest models are bare
    bodies whose head would be drawn afresh at each load, so a reloaded adapter could not predict the same)."""
    if task == "seq2seq":
        from test_seq2seq import build_tiny_seq2seq
        return build_tiny_seq2seq(kind, folder)
    build_tiny_model(kind, folder)
    if task in ("causal-lm-sft", "causal-lm", "masked-lm"):
        import torch
        import transformers

        torch.manual_seed(0)
        auto = transformers.AutoModelForMaskedLM if kind == "bert" else transformers.AutoModelForCausalLM
        auto.from_pretrained(folder).save_pretrained(folder, safe_serialization=True)
    return folder


def config_for(task: str, model: Path, data: tuple[Path, dict], out: Path, method: str, **peft):
    from workbench.config import RunConfig

    src, extra = data
    return RunConfig.from_dict({
        "task": task, "output_dir": str(out), "model": {"name_or_path": str(model)},
        "data": {"source": str(src), "max_length": 32, **extra},
        "training": {"max_steps": 6, "learning_rate": 1e-2, "per_device_train_batch_size": 8, "logging_steps": 1,
                     "save_strategy": "no", "eval_strategy": "no", "metric_for_best_model": None, "bf16": False,
                     "report_to": []},
        "evaluate_before": False,
        "peft": {"method": method, "freeze_embeddings": False, **peft}})
