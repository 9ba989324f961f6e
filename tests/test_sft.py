"""Supervised fine-tuning of causal LMs (`causal-lm-sft`) on a tiny Llama built from config."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import FILLER, NEG, POS
from workbench.config import DataConfig
from workbench.errors import DataError
from workbench.tasks.causal_lm_sft import TASK
from workbench.tasks.causal_lm_sft.encode import (IGNORE, SFTCollator, encode_conversation, end_of_turn, render,
                                                  stop_token_ids)

# A ChatML-like template (the shape of SmolLM2's) whose end-of-turn marker is the tiny tokenizer's EOS `</s>`.
CHATML = ("{% for m in messages %}{% if m['role'] == 'tool' %}{{ raise_exception('Unknown role: tool') }}{% endif %}"
          "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
CHAT = [{"role": "system", "content": "be kind"},
        {"role": "user", "content": "the movie was good"}, {"role": "assistant", "content": "great film"},
        {"role": "user", "content": "and the plot"}, {"role": "assistant", "content": "awful plot"}]


@pytest.fixture
def tok(tiny_llama):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(tiny_llama)


def _labelled(e) -> list[int]:
    return [i for i in e.labels if i != IGNORE]


def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


# --- masking and templates -------------------------------------------------------------------------
@pytest.mark.parametrize("template", ["fallback", "chatml"])
def test_only_assistant_tokens_carry_labels_in_every_turn(tok, template):
    if template == "chatml":
        tok.chat_template = CHATML
    e = encode_conversation(tok, CHAT, 256)
    eos = [tok.eos_token_id]
    # exactly the two answers and the end-of-turn token after each, in order; nothing from system or user turns
    assert _labelled(e) == _ids(tok, "great film") + eos + _ids(tok, "awful plot") + eos
    assert len(e.labels) == len(e.input_ids) and e.answer_tokens == 6
    labelled_at = [k for k, lab in enumerate(e.labels) if lab != IGNORE]
    assert all(e.labels[k] == e.input_ids[k] for k in labelled_at)
    # every position up to the first answer (system, user, role headers) is masked
    first_answer = e.input_ids.index(_ids(tok, "great")[0])
    assert labelled_at[0] == first_answer and all(lab == IGNORE for lab in e.labels[:first_answer])
    # a word of a user turn that also occurs in an answer is not labelled there ("good" is in no answer, "the"/
    # "plot" in the user turn "and the plot" precede "awful plot")
    plot = _ids(tok, "plot")[0]
    plots = [k for k, i in enumerate(e.input_ids) if i == plot]
    assert len(plots) == 2 and e.labels[plots[0]] == IGNORE and e.labels[plots[1]] == plot


def test_the_models_own_chat_template_is_applied(tok, tmp_path):
    assert render(tok, CHAT[:2]).startswith("<s>system:\nbe kind")  # the documented fallback
    tok.chat_template = CHATML
    text = render(tok, CHAT[:2], add_generation_prompt=True)
    assert text == ("<|im_start|>system\nbe kind</s>\n<|im_start|>user\nthe movie was good</s>\n"
                    "<|im_start|>assistant\n")
    assert end_of_turn(tok) == "</s>" and stop_token_ids(tok) == [tok.eos_token_id]
    rep = TASK.prepare(DataConfig(source=str(_chat_file(tmp_path / "c.jsonl", 20)), max_length=64), 0,
                       tokenizer=tok).report
    assert rep.details["template"] == "model" and rep.details["end_of_turn"] == "</s>"


def test_token_nll_is_the_models_causal_lm_loss(tiny_llama, tok):
    """The per-example loss of predictions and validation is the shifted cross-entropy `model(labels=)` computes."""
    from workbench.config import ModelConfig
    from workbench.tasks.causal_lm_sft import token_nll

    model = TASK.load_model(ModelConfig(name_or_path=str(tiny_llama)), [], tokenizer=tok)
    batch = SFTCollator(tok)([{"input_ids": e.input_ids, "labels": e.labels} for e in
                              (encode_conversation(tok, CHAT, 64), encode_conversation(tok, CHAT[1:3], 64))])
    assert batch["labels"][1, -1] == IGNORE and batch["attention_mask"][1, -1] == 0  # padding never counts
    out = model(**batch)
    total, n = token_nll(out.logits, batch["labels"])
    assert n.tolist() == [6, 3]
    assert torch.allclose(total.sum() / n.sum(), out.loss, atol=1e-5)


# --- truncation ------------------------------------------------------------------------------------
def test_truncation_cuts_the_prompt_from_the_left_and_keeps_the_last_answer(tok):
    long = [{"role": "user", "content": " ".join(FILLER)}, {"role": "assistant", "content": "fine"},
            {"role": "user", "content": " ".join(FILLER)}, {"role": "assistant", "content": "great film"}]
    full = encode_conversation(tok, long, 1024)
    e = encode_conversation(tok, long, 16)
    assert len(e.input_ids) == 16 and e.cut > 0 and not e.too_long
    assert e.input_ids[0] == tok.bos_token_id  # BOS stays
    assert e.input_ids[1:] == full.input_ids[-15:]  # the oldest tokens went; the newest 15 stay
    assert e.input_ids[-3:] == _ids(tok, "great film") + [tok.eos_token_id]
    assert _labelled(e) == _ids(tok, "great film") + [tok.eos_token_id]
    # an answer that does not fit on its own is refused, never cut
    assert encode_conversation(tok, long[:1] + [{"role": "assistant", "content": " ".join(POS)}], 6).too_long


def test_an_answer_longer_than_max_length_names_its_row(tok, tmp_path):
    f = _chat_file(tmp_path / "c.jsonl", 30)
    lines = f.read_text().splitlines()
    lines[6] = json.dumps({"messages": [{"role": "user", "content": "hi"},
                                        {"role": "assistant", "content": " ".join(FILLER * 2)}]})
    lines[10] = json.dumps({"messages": [{"role": "user", "content": " ".join(FILLER * 3)},
                                         {"role": "assistant", "content": "fine"}]})
    f.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"last answer alone is longer than data.max_length=24 tokens \(line 7 "):
        TASK.prepare(DataConfig(source=str(f), max_length=24), 0, tokenizer=tok)
    rep = TASK.prepare(DataConfig(source=str(f), max_length=48), 0, tokenizer=tok).report
    assert rep.details["answer_tokens"]["max"] == 41 and rep.details["turns"]["max"] == 2
    # a long prompt is cut, and the report says which row and how
    assert rep.details["truncated"] == 1 and rep.details["truncated_rows"][0].endswith(":11")
    assert any("(line 11 (" in w and "oldest tokens (the left side of the prompt) are dropped" in w
               for w in rep.warnings), rep.warnings
    from workbench.data.report import format_report
    assert "answer tokens median 3, p95 3, max 41; fallback chat template" in format_report(rep)


# --- formats and bad input -------------------------------------------------------------------------
def test_messages_alpaca_and_prompt_completion_read_to_one_representation(tmp_path):
    want = [{"role": "user", "content": "the plot"}, {"role": "assistant", "content": "dull"}]
    (tmp_path / "m.jsonl").write_text(json.dumps({"messages": want}) + "\n" + json.dumps({"messages": want}) + "\n")
    pd.DataFrame({"instruction": ["the plot"] * 2, "input": ["", ""], "output": ["dull"] * 2}).to_json(
        tmp_path / "a.jsonl", orient="records", lines=True)
    pd.DataFrame({"prompt": ["the plot"] * 2, "completion": ["dull"] * 2, "source": ["x", "y"]}).to_csv(
        tmp_path / "p.csv", index=False)
    pd.DataFrame({"messages": [want, want]}).to_parquet(tmp_path / "m.parquet")
    for name, fmt in (("m.jsonl", "messages"), ("a.jsonl", "alpaca"), ("p.csv", "prompt/completion"),
                      ("m.parquet", "messages")):
        prep = TASK.prepare(DataConfig(source=str(tmp_path / name), test_size=0.5, validation_size=0), 0)
        assert prep.report.format == fmt
        assert list(prep.train["messages"].iloc[0]) == want, name
        assert ("source" in prep.train) == (name == "p.csv")  # the user's other columns stay, for slices
    # Alpaca: instruction, blank line, input; a system column becomes a system turn
    pd.DataFrame({"instruction": ["translate"], "input": ["bonjour"], "output": ["hello"], "system": ["be brief"]}
                 ).to_json(tmp_path / "a2.jsonl", orient="records", lines=True)
    from workbench.tasks.causal_lm_sft import load_conversations
    conv = load_conversations(str(tmp_path / "a2.jsonl"), DataConfig())
    assert conv.frame["messages"].iloc[0] == [{"role": "system", "content": "be brief"},
                                              {"role": "user", "content": "translate\n\nbonjour"},
                                              {"role": "assistant", "content": "hello"}]


def test_bad_conversations_are_messages_naming_the_row(tmp_path):
    def ask(*msgs):
        return {"messages": list(msgs)}

    u, a = {"role": "user", "content": "the plot"}, {"role": "assistant", "content": "dull"}
    rows = [ask(u, a), ask(a, u, a), ask({"role": "human", "content": "hi"}, a), ask(u, {"role": "assistant",
            "content": "  "}), ask(u), ask(u, a, u), ask(u, a)]
    f = tmp_path / "bad.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(DataError) as err:
        TASK.prepare(DataConfig(source=str(f)), 0)
    msg = str(err.value)
    assert "line 2: the assistant speaks first" in msg
    assert "line 3: a role other than system, user, assistant" in msg and "'human' (write 'user')" in msg
    assert "line 4: an empty assistant answer" in msg
    assert "line 5: no assistant turn" in msg
    assert "line 6: the last turn is the user's" in msg
    assert "Traceback" not in msg

    pd.DataFrame({"question_text": ["a", "b"], "completion": ["x", "y"]}).to_csv(tmp_path / "p.csv", index=False)
    with pytest.raises(DataError, match=r"no prompt column \(found: question_text, completion\)"):
        TASK.prepare(DataConfig(source=str(tmp_path / "p.csv")), 0)
    with pytest.raises(DataError, match="no prompt column 'ask'"):
        TASK.prepare(DataConfig(source=str(tmp_path / "p.csv"), text_column="ask"), 0)


def test_a_conversation_the_template_refuses_names_its_row(tok, tmp_path):
    tok.chat_template = CHATML.replace("'tool'", "'system'")  # a template that takes no system message
    f = _chat_file(tmp_path / "c.jsonl", 20)
    lines = f.read_text().splitlines()
    lines[3] = json.dumps({"messages": [{"role": "system", "content": "be kind"}, *json.loads(lines[3])["messages"]]})
    f.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"the chat template refused 1 conversation\(s\): line 4 .*Unknown role"):
        TASK.prepare(DataConfig(source=str(f), max_length=64), 0, tokenizer=tok)


# --- scores ----------------------------------------------------------------------------------------
def test_chrf_and_bleu_against_values_computed_by_hand():
    from workbench.tasks.causal_lm_sft.scoring import bleu_tokenizer, generation_scores, sentence_chrf

    # chrF, hypothesis "ab", reference "abc": 1-grams P 2/2 R 2/3, 2-grams P 1/1 R 1/2, no 3-6-grams in the
    # hypothesis (left out); mean P 1, mean R 7/12; F-beta with beta 2: 5 * P * R / (4 P + R) = 7/11.
    s = generation_scores(["ab"], ["abc"])
    assert s["chrf"] == pytest.approx(100 * 7 / 11)
    assert sentence_chrf(["ab", "abc"], ["abc", "abc"]) == [pytest.approx(100 * 7 / 11), pytest.approx(100)]
    # BLEU, "the cat sat on the mat" vs "the cat sat on a mat": clipped n-gram precisions 5/6, 3/5, 2/4, 1/3,
    # equal lengths (no brevity penalty): the geometric mean (1/12) ** (1/4).
    s = generation_scores(["the cat sat on the mat"], ["the cat sat on a mat"])
    assert s["bleu"] == pytest.approx(100 * (1 / 12) ** 0.25)
    assert bleu_tokenizer(["我喜欢猫。"]) == "zh" and bleu_tokenizer(["I like cats."]) == "13a"


def test_a_metric_only_the_test_split_has_is_refused_for_best_model():
    from workbench.config import RunConfig

    def problems(metric: str) -> list[str]:
        return RunConfig.from_dict({"task": "causal-lm-sft", "training": {"metric_for_best_model": metric}}).validate()

    assert any("'chrf' is scored on the test split only" in p for p in problems("chrf"))
    assert problems("perplexity") == [] and problems("eval_loss") == []


# --- end to end ------------------------------------------------------------------------------------
def _chat_file(path: Path, n: int, seed: int = 0) -> Path:
    """Prompts of filler words with one sentiment word; the answer is `great film` or `awful film`."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for _ in range(n):
        words = rng.sample(FILLER, rng.randint(3, 8))
        s = rng.choice(POS + NEG)
        words.insert(rng.randint(0, len(words)), s)
        lines.append(json.dumps({"messages": [{"role": "user", "content": " ".join(words)},
                                              {"role": "assistant", "content": "great film" if s in POS
                                               else "awful film"}]}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_tiny_llama_sft_trains_evaluates_and_generates(tiny_llama, tmp_path, capsys):
    from workbench.cli import main
    from workbench.config import RunConfig
    from workbench.rundir import new_run_dir
    from workbench.tasks.base import CONTRACT
    from workbench.training import run_training

    cfg = RunConfig.from_dict({
        "task": "causal-lm-sft", "output_dir": str(tmp_path / "runs"), "name": "sft",
        "model": {"name_or_path": str(tiny_llama)},
        "data": {"source": str(_chat_file(tmp_path / "chat.jsonl", 200)), "max_length": 64},
        "training": {"num_train_epochs": 8, "learning_rate": 5e-3, "per_device_train_batch_size": 16,
                     "logging_steps": 5, "save_strategy": "no"},
        "peft": {"method": "full"}})
    run = run_training(cfg, new_run_dir(cfg), progress=False)
    ev = run.evaluation()
    assert ev["after"]["loss"] < ev["before"]["loss"] - 1.5, ev
    assert ev["after"]["perplexity"] == pytest.approx(2.718281828 ** ev["after"]["loss"])
    assert ev["after"]["exact_match"] > 0.8 and ev["before"]["exact_match"] == 0
    assert json.loads(run.labels_file.read_text()) == []
    rep = json.loads(run.report_file.read_text())
    assert rep["details"]["template"] == "fallback" and rep["details"]["answer_tokens"]["max"] == 3
    assert "eval_perplexity" in run.metrics()  # validation passes reduce logits to losses, then score

    after, before = run.predictions("after"), run.predictions("before")
    for col in (c for c in CONTRACT):
        assert col in after
    assert (after["row"] == before["row"]).all()  # the same prompts, base and tuned side by side
    assert set(after["gold"]) <= {"great film", "awful film"}
    assert set(after["predicted"]) & {"great film", "awful film"}
    assert run.summary()["loss"] == ev["after"]["loss"] and run.summary()["loss_before"] == ev["before"]["loss"]

    assert 0 <= ev["before"]["chrf"] < ev["after"]["chrf"] <= 100 and ev["after"]["bleu_tokenize"] == "13a"
    assert ev["after"]["rouge1"] > ev["before"]["rouge1"] and ev["after"]["rouge_tokens"] == "word"
    # the tuned-minus-base chrF on the same test prompts, with its paired bootstrap interval
    d = ev["before_vs_after"]
    assert d["difference"] == pytest.approx(ev["after"]["chrf"] - ev["before"]["chrf"])
    assert d["n"] == len(after) and d["low"] > 0 and d["excludes_zero"]
    assert main(["eval", str(run.path)]) == 0
    out = capsys.readouterr().out
    assert "perplexity" in out and "rougeL" in out
    assert f"95% paired bootstrap interval [{d['low']:+.2f}, {d['high']:+.2f}]" in out and "excludes 0" in out
    assert main(["errors", str(run.path)]) == 0
    out = capsys.readouterr().out
    assert "answers with the highest loss" in out and "reference words" in out
    assert main(["compare", str(run.path), str(run.path)]) == 0  # same test set: nothing fixed or broken
    assert "net: +0" in capsys.readouterr().out
    assert main(["generate", str(run.path), "the acting was superb"]) == 0
    assert capsys.readouterr().out.strip() == "great film"  # greedy, and it stops at the end of its turn
    assert main(["generate", str(run.path), "a dull script", "--temperature", "0.7", "--top-k", "5",
                 "--seed", "1"]) == 0
    assert capsys.readouterr().out.strip()
    assert main(["predict", str(run.path), "the acting was awful"]) == 0
    assert "awful film" in capsys.readouterr().out
    assert main(["generate", str(run.path), "x", "--top-p", "0"]) == 2
    assert "top_p=0.0" in capsys.readouterr().err
