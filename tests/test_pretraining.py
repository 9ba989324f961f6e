"""Continued pre-training (`masked-lm`, `causal-lm`) on tiny models: the objectives' mechanics measured on many
tokens, blocks that lose nothing, perplexity by hand, and a fine-tune that starts from a pre-training run."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import FILLER, NEG, POS

WORDS = FILLER + POS + NEG


def write_corpus(path: Path, n: int = 240, seed: int = 0) -> Path:
    rng = random.Random(seed)
    paras = [" ".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 10))) for _ in range(rng.randint(1, 4)))
             for _ in range(n)]
    path.write_text("\n\n".join(paras) + "\n", encoding="utf-8")
    return path


def cfg_for(task: str, model: Path, source: Path, **over):
    from workbench.config import RunConfig

    raw = {"task": task, "model": {"name_or_path": str(model)}, "data": {"source": str(source), "max_length": 32},
           "training": {"num_train_epochs": 1, "per_device_train_batch_size": 8, "learning_rate": 1e-3, "bf16": False,
                        "eval_strategy": "no", "save_strategy": "no"}}
    return RunConfig.from_dict(raw).override(over)


def train(cfg):
    from workbench.rundir import new_run_dir
    from workbench.training import run_training

    return run_training(cfg, new_run_dir(cfg), progress=False)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "corpus.txt")


def bert_tokenizer(tiny_bert):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(tiny_bert)


# --- the masked-LM objective ---------------------------------------------------------------------
def test_masking_rate_and_80_10_10_on_many_tokens(tiny_bert):
    from workbench.tasks.pretraining import MLMCollator

    tok = bert_tokenizer(tiny_bert)
    rng = random.Random(0)
    ids = [tok.convert_tokens_to_ids(w) for w in WORDS]
    rows = [{"input_ids": [tok.cls_token_id, *(rng.choice(ids) for _ in range(62)), tok.sep_token_id],
             "special_tokens_mask": [1, *([0] * 62), 1], "mlm_probability": 0.15} for _ in range(400)]
    torch.manual_seed(0)
    batch = MLMCollator(tok)(rows)
    original = torch.tensor([r["input_ids"] for r in rows])
    chosen = batch["labels"] != -100
    n = int(chosen.sum())
    assert abs(n / (400 * 62) - 0.15) < 0.01  # 24,800 maskable tokens: 0.15 +- 0.01 is > 6 sigma
    assert not chosen[:, 0].any() and not chosen[:, -1].any()  # [CLS] and [SEP] are never chosen
    # labels hold the original token exactly where chosen, -100 everywhere else
    assert torch.equal(batch["labels"][chosen], original[chosen])
    assert (batch["labels"][~chosen] == -100).all()
    got = batch["input_ids"][chosen]
    is_mask = (got == tok.mask_token_id).float().mean().item()
    kept = (got == original[chosen]).float().mean().item()
    assert abs(is_mask - 0.8) < 0.03
    # 10% random tokens (which may hit the original token by chance: 1/|vocab| of them), 10% left unchanged
    assert abs(kept - 0.1) < 0.03
    assert abs(1 - is_mask - kept - 0.1) < 0.03
    # positions not chosen are left exactly as they were
    assert torch.equal(batch["input_ids"][~chosen], original[~chosen])


def test_validation_masks_are_the_same_every_pass_training_masks_are_not(tiny_bert):
    from workbench.tasks.pretraining import MASKED_LM

    tok = bert_tokenizer(tiny_bert)
    ids = [tok.convert_tokens_to_ids(w) for w in WORDS]
    rows = [{"input_ids": [tok.cls_token_id, *ids, tok.sep_token_id], "special_tokens_mask": [1, *([0] * len(ids)), 1],
             "mlm_probability": 0.3} for _ in range(8)]
    a, b = MASKED_LM.eval_collator(tok, 7)(rows), MASKED_LM.eval_collator(tok, 7)(rows)
    assert torch.equal(a["labels"], b["labels"]) and torch.equal(a["input_ids"], b["input_ids"])
    train = MASKED_LM.collator(tok)
    assert not torch.equal(train(rows)["labels"], train(rows)["labels"])


def test_whole_word_masking_masks_every_piece_of_a_word():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from workbench.tasks.pretraining import MLMCollator
    from workbench.tasks.pretraining.blocks import mlm_blocks, token_stream

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "un", "##believ", "##able",
                                         "good", "film"])}
    tk = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                  sep_token="[SEP]", mask_token="[MASK]")
    text = " ".join(["unbelievable good film"] * 12)  # 60 pieces: one row of 62 with [CLS] and [SEP]
    rows = [{**r, "mlm_probability": 0.3} for r in mlm_blocks(token_stream(tok, [text], offsets=True), 62,
                                                                tok.cls_token_id, tok.sep_token_id, offsets=True)]
    assert len(rows) == 1
    torch.manual_seed(1)
    batch = MLMCollator(tok)(rows * 20)
    chosen = (batch["labels"] != -100).numpy()
    width = chosen.shape[1]
    ids = np.array([r["input_ids"] + [0] * (width - len(r["input_ids"])) for r in rows * 20])
    word = ids == vocab["un"]
    for k in (1, 2):  # "un ##believ ##able": all three pieces chosen together, or none
        shifted = np.zeros_like(word)
        shifted[:, k:] = word[:, :-k]
        assert (chosen[shifted] == chosen[word]).all()
    assert chosen[word].any() and not chosen[word].all()


def test_nsp_pairs_are_half_random_and_follow_their_documents():
    from workbench.tasks.pretraining.blocks import nsp_pairs

    rng = random.Random(0)
    # document d's sentences are made of token (100 + d): a pair's B tells where it came from
    docs = [[[100 + d] * rng.randint(3, 8) for _ in range(rng.randint(2, 9))] for d in range(1500)]
    pairs = list(nsp_pairs(docs, 48, cls=1, sep=2, seed=0))
    labels = np.array([p["next_sentence_label"] for p in pairs])
    assert len(pairs) > 700 and abs(labels.mean() - 0.5) < 0.06  # > 3 sigma
    for p in pairs:
        ids, types = p["input_ids"], p["token_type_ids"]
        assert ids[0] == 1 and ids[-1] == 2 and len(ids) <= 48 and len(types) == len(ids)
        a = {t for t, ty in zip(ids, types) if ty == 0 and t > 2}
        b = {t for t, ty in zip(ids, types) if ty == 1 and t > 2}
        assert len(a) == 1 and len(b) == 1
        assert (a == b) == (p["next_sentence_label"] == 0)  # "is next" stays in its document, "random" leaves it


# --- blocks ---------------------------------------------------------------------------------------
def test_causal_blocks_lose_no_token():
    from workbench.tasks.pretraining.blocks import causal_blocks

    rng = random.Random(0)
    docs = [[rng.randrange(10, 1000) for _ in range(rng.randint(0, 300))] for _ in range(200)]
    blocks = list(causal_blocks(docs, 64, eot=3))
    assert all(len(b) == 64 for b in blocks[:-1]) and 0 < len(blocks[-1]) <= 64
    assert [t for b in blocks for t in b] == [t for d in docs for t in (*d, 3)]


def test_mlm_blocks_lose_no_token():
    from workbench.tasks.pretraining.blocks import mlm_blocks

    rng = random.Random(1)
    docs = [[rng.randrange(10, 1000) for _ in range(rng.randint(1, 150))] for _ in range(100)]
    rows = list(mlm_blocks(docs, 32, cls=1, sep=2))
    assert all(r["input_ids"][0] == 1 and r["input_ids"][-1] == 2 and len(r["input_ids"]) <= 32 for r in rows)
    inner = [t for r in rows for t in r["input_ids"][1:-1]]
    assert [t for t in inner if t != 2] == [t for d in docs for t in d]  # [SEP] between documents only


def test_a_corpus_file_becomes_blocks_with_every_token(tiny_llama, corpus):
    from workbench.models import load_tokenizer
    from workbench.tasks import get_task

    cfg = cfg_for("causal-lm", tiny_llama, corpus)
    task = get_task("causal-lm")
    tok = load_tokenizer(str(tiny_llama), cfg.model)
    prep = task.prepare(cfg.data, 42, tokenizer=tok)
    ds = task.encode(prep.train, tok, 32)
    eot = tok.eos_token_id
    assert sum(ds["length"]) == prep.report.details["tokens"]["train"] + len(prep.train)  # + one end-of-text each
    assert ds.num_rows == prep.report.details["train_blocks"]
    # documents with the same text share a split; the three splits hold every document once
    assert sum(prep.report.split_sizes.values()) == prep.report.rows_read
    assert eot in ds[0]["input_ids"]


def test_document_split_modes(tmp_path):
    from workbench.config import DataConfig
    from workbench.tasks.pretraining.corpus import doc_texts, read_corpus

    f = tmp_path / "c.txt"
    f.write_text("a b\nc d\n\n\ne f\n  \ng h\n", encoding="utf-8")
    para = read_corpus(str(f), DataConfig(source=str(f), document_split="paragraph"))
    assert list(doc_texts(para.frame)) == ["a b\nc d", "e f", "g h"]
    line = read_corpus(str(f), DataConfig(source=str(f), document_split="line"))
    assert list(doc_texts(line.frame)) == ["a b", "c d", "e f", "g h"]
    whole = read_corpus(str(f), DataConfig(source=str(f), document_split="file"))
    assert len(whole.frame) == 1


# --- perplexity -----------------------------------------------------------------------------------
def test_causal_perplexity_is_exp_of_the_mean_token_loss_by_hand(tiny_llama):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from workbench.tasks.pretraining.scoring import causal_document_losses, perplexity

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    rng = random.Random(2)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 40))) for _ in range(7)]
    loss, count, _ = causal_document_losses(model, tok, texts, max_length=16, batch_size=3)
    nll, n = 0.0, 0
    with torch.no_grad():
        for t in texts:  # by hand: the whole document at once, no windows, after an end-of-text token
            ids = [tok.eos_token_id, *tok(t, add_special_tokens=False)["input_ids"], tok.eos_token_id]
            out = model(input_ids=torch.tensor([ids]), labels=torch.tensor([ids]))
            nll += out.loss.item() * (len(ids) - 1)
            n += len(ids) - 1
    assert int(count.sum()) == n
    # windows of 16 tokens see less context than the whole document, so only the count is exact; with a
    # window longer than every document the losses agree too
    loss2, count2, _ = causal_document_losses(model, tok, texts, max_length=64, batch_size=3)
    ppl = perplexity(float((loss2 * count2).sum() / count2.sum()))
    assert ppl == pytest.approx(math.exp(nll / n), rel=1e-4)


def test_run_perplexity_equals_exp_of_the_mean_loss_over_its_predictions(tiny_llama, corpus, tmp_path,
                                                                         monkeypatch):
    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path / "runs"))
    run = train(cfg_for("causal-lm", tiny_llama, corpus))
    ev = json.loads(run.eval_file.read_text())
    pred = run.predictions("after")
    by_hand = math.exp((pred["loss"] * pred["tokens"]).sum() / pred["tokens"].sum())
    assert ev["after"]["perplexity"] == pytest.approx(by_hand, rel=1e-6)
    assert ev["after"]["perplexity"] < ev["before"]["perplexity"]  # it learned the corpus's word list
    assert ev["after"]["documents"] == len(pred) == run.data_report()["split_sizes"]["test"]


# --- runs end to end ------------------------------------------------------------------------------
@pytest.mark.parametrize("extra", [{}, {"data.next_sentence_prediction": True}, {"data.whole_word_mask": True},
                                   {"peft.method": "lora"}, {"data.mlm_probability": 0.4}])
def test_masked_lm_runs(tiny_bert, corpus, tmp_path, monkeypatch, extra):
    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path / "runs"))
    run = train(cfg_for("masked-lm", tiny_bert, corpus, **{"training.num_train_epochs": 3, **extra}))
    ev = json.loads(run.eval_file.read_text())
    assert ev["after"]["perplexity"] < ev["before"]["perplexity"]
    labels = json.loads(run.labels_file.read_text())
    assert labels == (["is next", "random"] if extra.get("data.next_sentence_prediction") else [])
    from workbench.models import run_model_folder
    assert (run_model_folder(run.path) / "model.safetensors").exists()  # whole weights, merged for LoRA
    # what was saved is what was scored: re-scoring the stored test split from the run directory (the run's
    # own masking, read from its predictions) and from its whole-weights folder gives eval.json's perplexity
    from workbench.evaluate import evaluate_run
    from workbench.playground import load_lm
    from workbench.tasks.pretraining.scoring import mlm_document_losses
    again = evaluate_run(run.path)["metrics"]
    assert again["perplexity"] == pytest.approx(ev["after"]["perplexity"], rel=1e-3)
    assert again["tokens"] == ev["after"]["tokens"]
    lm = load_lm(str(run.path), "masked")
    assert not lm.note  # every head weight is in the saved folder
    pred = run.predictions("after")
    loss, count, _ = mlm_document_losses(lm.model, lm.tokenizer, pred["text"].tolist(), max_length=32,
                                         rate=float(pred["mlm_probability"].iloc[0]))
    assert math.exp((loss[count > 0] * count[count > 0]).sum() / count.sum()) == pytest.approx(
        ev["after"]["perplexity"], rel=1e-3)


def test_fine_tune_from_a_run_directory_loads_the_runs_weights(tiny_bert, corpus, tmp_path, monkeypatch,
                                                               sentiment_csv):
    from safetensors import safe_open

    from workbench.config import ModelConfig
    from workbench.models import load_classifier, resolve_model_path

    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path / "runs"))
    run = train(cfg_for("masked-lm", tiny_bert, corpus, **{"training.num_train_epochs": 2}))
    folder = Path(resolve_model_path(str(run.path)))
    assert folder == run.path / "model"
    adapted = load_classifier(ModelConfig(name_or_path=str(run.path)), ["neg", "pos"])
    base = load_classifier(ModelConfig(name_or_path=str(tiny_bert)), ["neg", "pos"])
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        saved = f.get_tensor("bert.encoder.layer.0.attention.self.query.weight")
        pooler = f.get_tensor("bert.pooler.dense.weight")  # carried over from the base: MLM has no pooler
    q = "bert.encoder.layer.0.attention.self.query.weight"
    assert torch.equal(adapted.state_dict()[q], saved)
    assert not torch.equal(base.state_dict()[q], saved)
    assert torch.equal(adapted.state_dict()["bert.pooler.dense.weight"], pooler)
    assert torch.equal(base.state_dict()["bert.pooler.dense.weight"], pooler)
    # and a whole classification run starts from it
    from workbench.config import RunConfig
    cls = RunConfig.from_dict({"model": {"name_or_path": str(run.path)}, "data": {"source": str(sentiment_csv)},
                               "training": {"num_train_epochs": 1, "bf16": False, "eval_strategy": "no",
                                            "save_strategy": "no"}})
    done = train(cls)
    assert done.status()["state"] == "completed"


def test_a_run_without_a_model_is_refused_as_a_start(tmp_path):
    from workbench.errors import ModelError
    from workbench.models import resolve_model_path

    run = tmp_path / "r"
    run.mkdir()
    (run / "config.yaml").write_text("task: masked-lm\n")
    (run / "status.json").write_text('{"state": "running"}')
    with pytest.raises(ModelError, match="no finished model.*state: running"):
        resolve_model_path(str(run))


def test_wrong_model_for_the_objective_says_so(tiny_bert, tiny_llama, tmp_path):
    from transformers import DistilBertConfig, DistilBertModel

    from workbench.config import ModelConfig
    from workbench.errors import ModelError
    from workbench.tasks import get_task

    with pytest.raises(ModelError, match="causal-lm"):
        get_task("masked-lm").load_model(ModelConfig(name_or_path=str(tiny_llama)), [])
    with pytest.raises(ModelError, match="masked-lm"):
        get_task("causal-lm").load_model(ModelConfig(name_or_path=str(tiny_bert)), [])
    d = tmp_path / "distil"
    DistilBertModel(DistilBertConfig(vocab_size=50, dim=16, n_layers=1, n_heads=2, hidden_dim=32)).save_pretrained(d)
    with pytest.raises(ModelError, match="no next-sentence-prediction head.*RoBERTa"):
        get_task("masked-lm").load_model(ModelConfig(name_or_path=str(d)), ["is next", "random"])


# --- playground and CLI ---------------------------------------------------------------------------
def test_playground_and_cli(tiny_bert, tiny_llama, corpus, tmp_path, monkeypatch, capsys):
    from workbench.cli import main
    from workbench.playground import continue_text, fill_mask, load_lm

    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path / "runs"))
    mlm = train(cfg_for("masked-lm", tiny_bert, corpus, **{"training.num_train_epochs": 3}))
    lm = load_lm(str(mlm.path))
    top = fill_mask(lm, "the movie was [MASK] and the plot was [MASK]", k=4)
    assert len(top) == 2 and all(len(t) == 4 for t in top)
    assert top[0][0]["probability"] >= top[0][1]["probability"] > 0
    assert main(["fill-mask", str(mlm.path), "the film was [MASK]", "--compare-base", "--top-k", "3"]) == 0
    out = capsys.readouterr().out
    assert "base (" in out and "adapted (" in out
    clm = train(cfg_for("causal-lm", tiny_llama, corpus))
    text = continue_text(load_lm(str(clm.path)), "the movie was", max_new_tokens=5)
    assert isinstance(text, str) and text.strip()
    assert main(["generate", str(clm.path), "the movie was", "--max-new-tokens", "4", "--compare-base"]) == 0
    out = capsys.readouterr().out
    assert out.count("the movie was|") == 2
    from workbench.errors import WorkbenchError
    with pytest.raises(WorkbenchError, match="no mask in the text"):
        fill_mask(lm, "no mask here")


def test_block_files_are_keyed_by_every_setting_that_changes_the_rows(tiny_bert, corpus):
    from workbench.config import DataConfig
    from workbench.models import load_tokenizer
    from workbench.config import ModelConfig
    from workbench.tasks import get_task

    task = get_task("masked-lm")
    tok = load_tokenizer(str(tiny_bert), ModelConfig(name_or_path=str(tiny_bert)))
    seen = {}
    for over in ({}, {"mlm_probability": 0.5}, {"whole_word_mask": True}, {"encoding": "latin-1"}):
        prep = task.prepare(DataConfig(source=str(corpus), max_length=32, **over), 42, tokenizer=tok)
        ds = task.encode(prep.train, tok, 32)
        seen[str(over)] = ds.cache_files[0]["filename"]
        assert ds[0]["mlm_probability"] == pytest.approx(over.get("mlm_probability", 0.15))
    assert len(set(seen.values())) == len(seen), seen  # four settings, four block files
