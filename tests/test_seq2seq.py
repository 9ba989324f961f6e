"""Text-to-text with encoder-decoders (`seq2seq`) on a tiny T5 and a tiny BART built from config and saved to a
folder (no such model can be downloaded here), loaded back through the workbench's own model loading."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import FILLER, NEG, POS
from workbench.config import DataConfig, ModelConfig
from workbench.errors import DataError, ModelError
from workbench.tasks.seq2seq import TASK, example_losses, flatten, source_text
from workbench.tasks.seq2seq.encode import IGNORE, Seq2SeqCollator

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)
WORDS = sorted(set(POS + NEG + FILLER + ["review", ":", "user", "assistant"]))


def _tokenizer():
    """A word-level tokenizer with T5's special-token layout (pad 0, EOS 1, unk 2) that appends EOS to every
    text, as T5's, BART's and Marian's tokenizers do."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "</s>", "<unk>", "<s>"]
    vocab = {t: i for i, t in enumerate(specials + WORDS)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                      special_tokens=[("</s>", vocab["</s>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   bos_token="<s>")


def build_tiny_seq2seq(kind: str, folder: Path) -> Path:
    """A tiny randomly initialised T5 or BART (+ tokenizer) saved as a safetensors folder."""
    from transformers import AutoModelForSeq2SeqLM, BartConfig, T5Config

    torch.manual_seed(0)
    tok = _tokenizer()
    if kind == "t5":
        cfg = T5Config(vocab_size=len(tok), d_model=32, num_layers=2, num_heads=2, d_ff=64, d_kv=16,
                       pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
                       decoder_start_token_id=tok.pad_token_id)
    else:
        cfg = BartConfig(vocab_size=len(tok), d_model=32, encoder_layers=2, decoder_layers=2,
                         encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                         max_position_embeddings=128, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                         bos_token_id=tok.bos_token_id, decoder_start_token_id=tok.eos_token_id)
    model = AutoModelForSeq2SeqLM.from_config(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory) -> Path:
    return build_tiny_seq2seq("t5", tmp_path_factory.mktemp("tiny-t5"))


@pytest.fixture(scope="module")
def tiny_bart(tmp_path_factory) -> Path:
    return build_tiny_seq2seq("bart", tmp_path_factory.mktemp("tiny-bart"))


def _load(folder: Path):
    """Tokenizer and model through the workbench's loading path (as a run loads a folder or hub id)."""
    from workbench.models import load_tokenizer, resolve_model_path

    mcfg = ModelConfig(name_or_path=str(folder))
    tok = load_tokenizer(resolve_model_path(mcfg.name_or_path), mcfg)
    return tok, TASK.load_model(mcfg, [], tokenizer=tok)


def _pairs(n: int, seed: int = 0) -> pd.DataFrame:
    """Filler words with one sentiment word; the target is `great film` or `awful film` (memorisable)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = rng.sample(FILLER, rng.randint(3, 8))
        s = rng.choice(POS + NEG)
        words.insert(rng.randint(0, len(words)), s)
        rows.append({"review": " ".join(words), "verdict": "great film" if s in POS else "awful film"})
    return pd.DataFrame(rows)


def _messages_file(path: Path, n: int) -> Path:
    lines = [json.dumps({"messages": [{"role": "user", "content": r.review},
                                      {"role": "assistant", "content": r.verdict}]})
             for r in _pairs(n).itertuples()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# --- encoding --------------------------------------------------------------------------------------
def test_source_is_the_prompt_as_plain_text_and_target_the_last_answer():
    chat = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "the plot"},
            {"role": "assistant", "content": "dull"}, {"role": "user", "content": "and the cast"},
            {"role": "assistant", "content": "superb cast"}]
    assert source_text(chat[1:3]) == "the plot"  # one user turn: as it is, no role names, no template
    assert source_text(chat) == "be brief\n\nuser: the plot\nassistant: dull\nuser: and the cast"
    assert flatten([{"role": "user", "content": "hi"}]) == "hi"


def test_labels_are_the_target_ids_with_minus_100_on_padding_only():
    tok = _tokenizer()
    frame = pd.DataFrame({"messages": [
        [{"role": "user", "content": "the movie was good"}, {"role": "assistant", "content": "great film"}],
        [{"role": "user", "content": "bad"}, {"role": "assistant", "content": "the plot was really awful and dull"}]]})
    ds = TASK.encode(frame, tok, 64)
    batch = Seq2SeqCollator(tok)([ds[i] for i in range(len(ds))])
    assert set(batch) == {"input_ids", "attention_mask", "labels"}  # `length` is not passed to the model
    targets = [tok(text_target=t)["input_ids"] for t in ("great film", "the plot was really awful and dull")]
    assert targets[0][-1] == tok.eos_token_id  # the target ends with EOS: the model learns to stop
    for row, want in zip(batch["labels"].tolist(), targets):
        assert row[:len(want)] == want and all(x == IGNORE for x in row[len(want):])
    assert (batch["labels"] == IGNORE).sum() == len(targets[1]) - len(targets[0])  # only padding is -100
    sources = [tok(s)["input_ids"] for s in ("the movie was good", "bad")]
    ids, mask = batch["input_ids"].tolist(), batch["attention_mask"].tolist()
    assert ids[1][:len(sources[1])] == sources[1] and set(ids[1][len(sources[1]):]) == {tok.pad_token_id}
    assert mask[1] == [1] * len(sources[1]) + [0] * (len(sources[0]) - len(sources[1]))


def test_truncation_of_sources_and_targets_is_in_the_data_report(tmp_path):
    tok = _tokenizer()
    df = _pairs(30)
    df.loc[3, "review"] = " ".join(FILLER)  # 20 words: longer than max_length 10
    df.loc[5, "verdict"] = " ".join(FILLER[:12])  # a 12-word target
    df.to_csv(tmp_path / "p.csv", index=False)
    prep = TASK.prepare(DataConfig(source=str(tmp_path / "p.csv"), text_column="review", label_column="verdict",
                                   max_length=10, test_size=0.2, validation_size=0.1), 0, tokenizer=tok)
    d = prep.report.details
    assert d["sources_truncated"] == 1 and d["targets_truncated"] == 1 and d["target_max_length"] == 10
    warnings = " ".join(prep.report.warnings)
    # rows are named by their line in the file (the header is line 1)
    assert "1 source text(s) are longer than data.max_length=10 tokens (line 5 (" in warnings
    assert "1 target(s) are longer than 10 tokens (data.max_length) (line 7 (" in warnings
    where = next(s for s in ("train", "validation", "test") if 7 in getattr(prep, s).index)
    enc = TASK.encode(getattr(prep, where).loc[[7]], tok, 10)
    assert len(enc[0]["labels"]) == 10 and enc[0]["labels"][-1] == tok.eos_token_id  # cut, EOS kept


def test_a_csv_without_its_prompt_column_says_which(tmp_path):
    (tmp_path / "p.csv").write_text("review,completion\nthe plot,dull\nthe cast,superb\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"no prompt column 'source' \(found: review, completion\)"):
        TASK.prepare(DataConfig(source=str(tmp_path / "p.csv"), text_column="source"), 0)
    (tmp_path / "q.csv").write_text("words,completion\nthe plot,dull\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"no prompt column \(found: words, completion\)"):
        TASK.prepare(DataConfig(source=str(tmp_path / "q.csv")), 0)


# --- the model -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["t5", "bart"])
def test_per_example_loss_is_the_models_own_loss(kind, tiny_t5, tiny_bart):
    tok, model = _load(tiny_t5 if kind == "t5" else tiny_bart)
    assert type(model).__name__ == ("T5ForConditionalGeneration" if kind == "t5" else "BartForConditionalGeneration")
    sources = ["the movie was good", "bad", "a plot and the acting was really quite dull"]
    targets = ["great film", "the plot was awful and boring", "dull"]
    loss, count = example_losses(model, tok, sources, targets, 64, batch_size=3)  # one padded batch
    for s, t, got, n in zip(sources, targets, loss, count):
        enc = tok(s, text_target=t, return_tensors="pt")
        with torch.no_grad():
            want = model(**enc).loss.item()
        assert got == pytest.approx(want, abs=1e-5) and n == enc["labels"].shape[1]


def test_generation_stops_at_eos(tiny_bart):
    """A model made to write `great film` then EOS: the answer ends there, 7 tokens before the cap."""
    from workbench.generate import Sampling, seq2seq_answers

    tok, model = _load(tiny_bart)
    script = [tok.convert_tokens_to_ids(w) for w in ("great", "film")] + [tok.eos_token_id]
    step = {"n": 0}

    def write(module, args, out):  # one call per new token (the KV cache feeds one position at a time)
        out = out.clone()
        out[:, -1, script[min(step["n"], 2)]] += 1e4
        step["n"] += 1
        return out

    seen = []
    real = model.generate
    model.generate = lambda **kw: seen.append(real(**kw)) or seen[-1]
    hook = model.lm_head.register_forward_hook(write)
    try:
        assert seq2seq_answers(model, tok, ["the movie was good"], sampling=Sampling(max_new_tokens=10)) == \
            ["great film"]
    finally:
        hook.remove()
    assert seen[-1].tolist() == [[model.config.decoder_start_token_id, *script]]  # stopped at EOS, not at 10
    assert step["n"] == 3
    script[2] = script[0]  # a model that never writes EOS runs to the cap
    hook = model.lm_head.register_forward_hook(write)
    try:
        seq2seq_answers(model, tok, ["the movie was good"], sampling=Sampling(max_new_tokens=10))
    finally:
        hook.remove()
    assert seen[-1].shape[1] == 11 and tok.eos_token_id not in seen[-1][0, 1:].tolist()  # (BART starts with EOS)


def test_lora_targets_the_attention_projections(tiny_t5, tiny_bart):
    from transformers import MarianConfig, MarianMTModel

    from workbench.config import PeftConfig
    from workbench.models import apply_lora, lora_targets

    tok, t5 = _load(tiny_t5)
    _, bart = _load(tiny_bart)
    marian = MarianMTModel(MarianConfig(vocab_size=40, d_model=16, encoder_layers=1, decoder_layers=1,
                                        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                                        decoder_ffn_dim=32, pad_token_id=0, decoder_start_token_id=0))
    lora = PeftConfig(method="lora")
    assert lora_targets(t5, lora) == ["q", "v"] and lora_targets(bart, lora) == ["q_proj", "v_proj"]
    assert lora_targets(marian, lora) == ["q_proj", "v_proj"]
    wrapped = apply_lora(t5, lora, task_type=TASK.peft_task_type)
    assert type(wrapped).__name__ == "PeftModelForSeq2SeqLM"
    trained = {n.split(".")[-4] for n, p in wrapped.named_parameters() if p.requires_grad}
    assert trained == {"q", "v"}


def test_a_decoder_only_model_is_refused_with_the_task_it_needs(tiny_llama):
    with pytest.raises(ModelError, match="task seq2seq needs one .* use task causal-lm-sft"):
        TASK.load_model(ModelConfig(name_or_path=str(tiny_llama)), [])


def test_prompt_template_is_accepted_for_seq2seq_only_where_it_is_read():
    from workbench.config import RunConfig

    def problems(task):
        return RunConfig.from_dict({"task": task, "data": {"prompt_template": "review : {review}"}}).validate()

    assert problems("seq2seq") == [] and problems("causal-lm-sft") == []
    assert any("data.prompt_template makes prompts for causal-lm-sft, seq2seq" in p
               for p in problems("text-classification"))


# --- end to end ------------------------------------------------------------------------------------
def _train_losses(run) -> list[float]:
    m = run.metrics()
    return m[(m["kind"] == "train") & m["loss"].notna()]["loss"].tolist()


def test_tiny_bart_lora_run_from_a_config_trains_and_scores(tiny_bart, tmp_path):
    from workbench.config import RunConfig
    from workbench.rundir import new_run_dir
    from workbench.tasks.base import CONTRACT
    from workbench.training import run_training

    _pairs(160).to_csv(tmp_path / "pairs.csv", index=False)
    cfg = RunConfig.from_dict({
        "task": "seq2seq", "output_dir": str(tmp_path / "runs"), "name": "bart-lora",
        "model": {"name_or_path": str(tiny_bart)},
        "data": {"source": str(tmp_path / "pairs.csv"), "prompt_template": "review : {review}",
                 "label_column": "verdict", "max_length": 32},
        "training": {"num_train_epochs": 6, "learning_rate": 3e-2, "per_device_train_batch_size": 16,
                     "logging_steps": 5, "save_strategy": "no"},
        "peft": {"method": "lora", "lora": {"r": 8, "lora_alpha": 16}}})
    run = run_training(cfg, new_run_dir(cfg), progress=False)
    losses = _train_losses(run)
    # LoRA on q/v only of a random tiny model (its output layer frozen) learns slowly, but it learns
    assert losses[-1] < losses[0] - 0.2, losses
    ev = run.evaluation()
    assert ev["after"]["loss"] < ev["before"]["loss"] - 0.2, ev
    assert (run.path / "model" / "adapter_config.json").exists()
    pred = run.predictions("after")
    assert all(c in pred for c in CONTRACT) and {"chrf", "answer_tokens"} <= set(pred)
    assert pred["text"].str.startswith("review : ").all()  # the source is the filled-in template
    assert (pred["answer_tokens"] == 3).all()  # `great film` / `awful film` + EOS
    rep = json.loads(run.report_file.read_text())
    assert rep["details"]["sources_truncated"] == 0 and rep["details"]["target_tokens"]["max"] == 3
    from workbench.generate import load_generator  # the adapter on its base, back from the run folder

    model, tok, max_length = load_generator(str(run.path))
    assert type(model).__name__ == "PeftModelForSeq2SeqLM" and max_length == 32
    out = TASK.predict_texts(model, tok, ["review : the acting was superb"], [], max_length=max_length)
    assert list(out.columns) == ["text", "predicted"] and len(out) == 1


def test_tiny_t5_full_run_memorises_and_generates(tiny_t5, tmp_path, capsys, monkeypatch):
    from workbench.cli import main
    from workbench.config import RunConfig
    from workbench.rundir import new_run_dir
    from workbench.training import run_training

    cfg = RunConfig.from_dict({
        "task": "seq2seq", "output_dir": str(tmp_path / "runs"), "name": "t5-full",
        "model": {"name_or_path": str(tiny_t5)},
        "data": {"source": str(_messages_file(tmp_path / "chat.jsonl", 200)), "max_length": 32},
        "training": {"num_train_epochs": 10, "learning_rate": 1e-2, "per_device_train_batch_size": 16,
                     "logging_steps": 5, "save_strategy": "no"},
        "peft": {"method": "full"}})
    run = run_training(cfg, new_run_dir(cfg), progress=False)
    losses = _train_losses(run)
    assert losses[-1] < losses[0] / 2, losses
    ev = run.evaluation()
    assert ev["after"]["loss"] < ev["before"]["loss"] - 1, ev
    assert ev["after"]["exact_match"] > 0.8 and ev["before"]["exact_match"] == 0
    assert run.metrics()["eval_perplexity"].notna().any()  # validation passes reduce logits to losses
    d = ev["before_vs_after"]
    assert d["difference"] == pytest.approx(ev["after"]["chrf"] - ev["before"]["chrf"]) and d["excludes_zero"]
    after = run.predictions("after")
    assert set(after["gold"]) <= {"great film", "awful film"} and (after["loss"] >= 0).all()

    assert main(["eval", str(run.path)]) == 0
    assert "95% paired bootstrap interval" in capsys.readouterr().out
    assert main(["errors", str(run.path)]) == 0
    assert "answers with the highest loss" in capsys.readouterr().out
    assert main(["compare", str(run.path), str(run.path)]) == 0
    assert "net: +0" in capsys.readouterr().out
    assert main(["generate", str(run.path), "the acting was superb"]) == 0
    assert capsys.readouterr().out.strip() == "great film"  # greedy, stops at EOS
    assert main(["predict", str(run.path), "a dull script"]) == 0
    assert "awful film" in capsys.readouterr().out

    # the dashboard's Chat page lists the run and streams its answer
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path / "runs"))
    at = AppTest.from_string("from dashboard import chat\nchat.page()", default_timeout=120).run()
    at.selectbox(key="chat_run").set_value("t5-full")
    at.run()
    at.chat_input(key="chat_prompt").set_value("the acting was superb")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert [(m.name, [e.value for e in (*m.text, *m.markdown)]) for m in at.chat_message] == \
        [("user", ["the acting was superb"]), ("assistant", ["great film"])]


def test_generate_and_chat_on_a_base_seq2seq_folder(tiny_t5, capsys, monkeypatch):
    import io

    from workbench.cli import main
    from workbench.generate import load_generator

    model, tok, max_length = load_generator(str(tiny_t5))
    assert type(model).__name__ == "T5ForConditionalGeneration" and max_length == 512
    assert main(["generate", str(tiny_t5), "the movie was good", "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.strip() != ""
    monkeypatch.setattr("sys.stdin", io.StringIO("the movie was good\nbad\n"))
    assert main(["chat", str(tiny_t5), "--max-new-tokens", "3"]) == 0
    assert "each message is answered alone" in capsys.readouterr().out


# --- dashboard -------------------------------------------------------------------------------------
def test_train_page_offers_seq2seq_with_the_column_mapping(tiny_t5, tmp_path, monkeypatch):
    """The Train page lists seq2seq (its sections: causal-lm-sft's data choice and column mapping), and a
    prompt/answer table whose columns have no known name is mapped, then launched as a valid seq2seq config."""
    import sys

    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    import dashboard.train
    from dashboard import sections
    from dashboard.sections import causal_lm_sft
    from workbench.tasks import TASKS

    root = str(Path(__file__).resolve().parent.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    assert "seq2seq" in sections.trainable_tasks(TASKS)[0]
    assert sections.hook("seq2seq", "evaluate") is causal_lm_sft.evaluate
    launched = []

    class Handle:
        def __init__(self, cfg):
            self.run = type("R", (), {"name": cfg.name})()

    monkeypatch.setattr(dashboard.train, "launch", lambda cfg: launched.append(cfg) or Handle(cfg))
    table = tmp_path / "zh_en.csv"
    table.write_text("zh,en\n" + "".join(f"句子{i},sentence {i}\n" for i in range(20)), encoding="utf-8")
    at = AppTest.from_string("from dashboard import train\ntrain.page()", default_timeout=120)
    at.session_state["data_choice"] = {"source": str(table), "task": "causal-lm-sft", "text_column": None,
                                       "label_column": None, "text_pair_column": None}
    at.run()
    at.selectbox(key="train_task").set_value("seq2seq")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("encoder-decoder" in c.value for c in at.caption)  # the task's description and data roles
    assert at.selectbox(key="train_source").value == str(table)
    assert any("no prompt column (found: zh, en)" in w.value for w in at.warning)
    at.selectbox(key=f"train_prompt_{table}").set_value("zh")
    at.selectbox(key=f"train_answer_{table}").set_value("en")
    at.radio(key="train_model_kind").set_value("Local folder")
    at.run()
    at.text_input(key="train_folder").input(str(tiny_t5))
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.radio(key="t.peft.method").value == "full"  # small encoder-decoders: full fine-tuning by default
    [b for b in at.button if b.label == "Launch"][0].click()
    at.run()
    cfg = launched[-1]
    assert cfg.task == "seq2seq" and cfg.validate() == [] and cfg.training.metric_for_best_model == "loss"
    assert (cfg.data.source, cfg.data.text_column, cfg.data.label_column) == (str(table), "zh", "en")


def test_workbench_report_on_a_seq2seq_config(tiny_t5, tmp_path, capsys):
    from workbench.cli import main
    from workbench.config import RunConfig

    _pairs(40).to_csv(tmp_path / "pairs.csv", index=False)
    cfg = RunConfig.from_dict({"task": "seq2seq", "model": {"name_or_path": str(tiny_t5)},
                               "data": {"source": str(tmp_path / "pairs.csv"), "text_column": "review",
                                        "label_column": "verdict", "max_length": 6}})
    cfg.to_yaml(tmp_path / "c.yaml")
    main(["report", str(tmp_path / "c.yaml")])
    out = capsys.readouterr().out
    assert "target tokens median 3" in out and "targets truncated (at 6 tokens)" in out, out
    assert "sources and 0 targets" in out and "source text(s) are longer than data.max_length=6" in out


def test_train_page_says_when_the_model_cannot_do_seq2seq(tiny_bert, tmp_path):
    """An encoder (MiniLM, BERT) chosen for seq2seq: the estimate cannot build it, so the page says why and
    what to do, never a traceback (CI hit this once MiniLM was in the asset cache)."""
    from streamlit.testing.v1 import AppTest

    table = tmp_path / "zh_en.csv"
    table.write_text("prompt,completion\n" + "".join(f"句子{i},sentence {i}\n" for i in range(20)), encoding="utf-8")
    at = AppTest.from_string("from dashboard import train\ntrain.page()", default_timeout=120)
    at.session_state["data_choice"] = {"source": str(table), "task": "causal-lm-sft", "text_column": None,
                                       "label_column": None, "text_pair_column": None}
    at.run()
    at.selectbox(key="train_task").set_value("seq2seq")
    at.run()
    assert at.selectbox(key="train_source").value == str(table)
    at.radio(key="train_model_kind").set_value("Local folder")
    at.run()
    at.text_input(key="train_folder").input(str(tiny_bert))
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("a bert model cannot be used for seq2seq" in e.value and "Fix: choose a model made for seq2seq" in
               e.value for e in at.error), [e.value for e in at.error]
