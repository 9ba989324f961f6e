"""The dashboard and a task without page sections of its own (causal-lm-sft): the Train page says where it
is trained, and the Evaluate page shows its scores before -> after and base vs tuned answers side by side."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from test_sft import _chat_file  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="module")
def sft_runs(tmp_path_factory, tiny_llama):
    from workbench.config import RunConfig
    from workbench.rundir import new_run_dir
    from workbench.training import run_training

    root = tmp_path_factory.mktemp("sft-dash")
    mp = pytest.MonkeyPatch()
    mp.setenv("WORKBENCH_RUNS", str(root / "runs"))
    cfg = RunConfig.from_dict({
        "task": "causal-lm-sft", "output_dir": str(root / "runs"), "name": "sft-tiny",
        "model": {"name_or_path": str(tiny_llama)},
        "data": {"source": str(_chat_file(root / "chat.jsonl", 120)), "max_length": 64},
        "training": {"num_train_epochs": 4, "learning_rate": 5e-3, "per_device_train_batch_size": 16,
                     "save_strategy": "no"},
        "peft": {"method": "full"}})
    run_training(cfg, new_run_dir(cfg), progress=False)
    yield root
    mp.undo()


def _page(name: str) -> AppTest:
    return AppTest.from_string(f"from dashboard import {name}\n{name}.page()", default_timeout=120)


def no_crash(at: AppTest) -> AppTest:
    assert not at.exception, [e.value for e in at.exception]
    return at


def texts(elements) -> list[str]:
    return [e.value for e in elements]


def test_sections_are_registered_and_claim_conversation_files(tmp_path):
    from dashboard import sections
    from dashboard.sections import causal_lm_sft

    assert sections.hook("causal-lm-sft", "evaluate") is causal_lm_sft.evaluate
    from workbench.tasks import TASKS
    from workbench.tasks.base import DataRole

    class Columns:  # a task reading table columns: the Train page's column pickers serve it
        roles = (DataRole("text", "text_column", True, ""),)

    class OwnFormat:  # a task reading its own file format, without page sections: left to the CLI
        roles = (DataRole("graph", None, True, ""),)

    offered = {n: TASKS[n] for n in ("text-classification", "causal-lm-sft")} | {"cols": Columns(), "own": OwnFormat()}
    assert sections.trainable_tasks(offered) == (["text-classification", "causal-lm-sft", "cols"], ["own"])
    files = {"m.jsonl": '{"messages": [{"role": "user", "content": "hi"}]}\n',
             "a.json": '[{"instruction": "say hi", "input": "", "output": "hi"}]',
             "p.csv": "prompt,completion\nhi,hello\n", "t.csv": "text,label\na fine film,pos\n",
             "n.jsonl": '{"tokens": ["Ann"], "tags": ["B-PER"]}\n'}
    for name, body in files.items():
        (tmp_path / name).write_text(body, encoding="utf-8")
    found = {name: sections.task_for_source(str(tmp_path / name)) for name in files}
    assert found == {"m.jsonl": "causal-lm-sft", "a.json": "causal-lm-sft", "p.csv": "causal-lm-sft",
                     "t.csv": "text-classification", "n.jsonl": "token-classification"}
    import pandas as pd
    pd.DataFrame({"messages": [[{"role": "user", "content": "hi"}]]}).to_parquet(tmp_path / "m.parquet")
    assert causal_lm_sft.claims(str(tmp_path / "m.parquet")) and not causal_lm_sft.claims(str(tmp_path / "none.csv"))


def test_data_page_shows_a_messages_upload_as_conversations(tiny_llama):
    import json

    rows = [{"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": f"question {i}"},
                          {"role": "assistant", "content": f"answer {i}"}]} for i in range(12)]
    at = _page("data")
    at.session_state["train_model"] = str(tiny_llama)  # token lengths with this tokenizer (fallback template)
    at.run()
    at.file_uploader(key="data_upload").upload("chat.jsonl", "\n".join(map(json.dumps, rows)).encode())
    no_crash(at.run())
    assert not at.error, texts(at.error)
    assert not [s for s in at.selectbox if s.label in ("Text column", "Label column")], "no table mapping"
    assert any("Recognised format: `messages`" in c for c in texts(at.caption))
    bubbles = [(m.name, " ".join(t.value for t in m.text)) for m in at.chat_message]
    assert ("user", "question 0") in bubbles and ("assistant", "answer 0") in bubbles
    assert len([b for b in bubbles if b[0] == "assistant"]) == 3  # three conversations previewed
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Conversations read"] == "12" and metrics["Turns (mean)"] == "2.0" and metrics["Truncated"] == "0"
    assert any("answer median" in c and "fallback chat template" in c for c in texts(at.caption))
    assert any("Ready: 12 conversations" in s for s in texts(at.success))
    assert at.session_state["data_choice"]["task"] == "causal-lm-sft"


def test_train_page_offers_sft_maps_columns_and_builds_a_lora_config(sft_runs, tiny_llama, monkeypatch, tmp_path):
    import dashboard.train

    launched = []

    class Handle:
        def __init__(self, cfg):
            self.run = type("R", (), {"name": cfg.name})()

    monkeypatch.setattr(dashboard.train, "launch", lambda cfg: launched.append(cfg) or Handle(cfg))
    chat = str(sft_runs / "chat.jsonl")
    at = _page("train")
    at.session_state["data_choice"] = {"source": chat, "task": "causal-lm-sft", "text_column": None,
                                       "label_column": None, "text_pair_column": None}
    no_crash(at.run())
    assert "causal-lm-sft" in at.selectbox(key="train_task").options
    assert at.selectbox(key="train_task").value == "causal-lm-sft"  # follows the Data page's choice
    assert at.selectbox(key="train_source").value == chat
    assert any("Recognised format: `messages`" in c for c in texts(at.caption))
    assert at.radio(key="t.peft.method").value == "lora"  # SFT of a decoder: LoRA by default
    at.radio(key="train_model_kind").set_value("Local folder")
    at.run()
    at.text_input(key="train_folder").input(str(tiny_llama))
    at.text_input(key="train_name").input("ui-sft")
    no_crash(at.run())
    assert not at.error, texts(at.error)
    data = next(c for c in texts(at.caption) if c.startswith("Data: "))
    assert "training rows" in data and "labels" not in data, data  # conversations have no label set
    [b for b in at.button if b.label == "Launch"][0].click()
    no_crash(at.run())
    cfg = launched[0]
    assert cfg.task == "causal-lm-sft" and cfg.validate() == [] and cfg.peft.method == "lora"
    assert cfg.data.source == chat and cfg.data.text_column is None and cfg.model.name_or_path == str(tiny_llama)
    assert cfg.training.metric_for_best_model == "loss" and cfg.training.learning_rate == 2e-4  # the LoRA rate
    assert cfg.name == "ui-sft" and cfg.data.packing is False
    at.checkbox(key="t.data.packing").check()  # packing: an option of this task's data section
    no_crash(at.run())
    [b for b in at.button if b.label == "Launch"][0].click()
    no_crash(at.run())
    assert launched[-1].data.packing is True and launched[-1].validate() == []

    # a prompt/answer table whose columns have no known name: say so, then map them
    table = tmp_path / "qa.csv"
    table.write_text("ask,reply,topic\n" + "".join(f"question {i},answer {i},t\n" for i in range(20)),
                     encoding="utf-8")
    at.session_state["data_choice"] = {"source": str(table), "task": "causal-lm-sft", "text_column": None,
                                       "label_column": None, "text_pair_column": None}
    no_crash(at.run())
    at.selectbox(key="train_source").set_value(str(table))
    no_crash(at.run())
    assert any("Recognised format: prompt and answer columns" in c for c in texts(at.caption))
    # no column with a known name: the reader's message (with the columns found), and the mapping below
    assert any("no prompt column (found: ask, reply, topic)" in w for w in texts(at.warning)), texts(at.warning)
    at.selectbox(key=f"train_prompt_{table}").set_value("ask")
    at.selectbox(key=f"train_answer_{table}").set_value("reply")
    no_crash(at.run())
    assert not at.error, texts(at.error)
    [b for b in at.button if b.label == "Launch"][0].click()
    no_crash(at.run())
    cfg = launched[-1]
    assert cfg.data.source == str(table) and (cfg.data.text_column, cfg.data.label_column) == ("ask", "reply")
    assert cfg.validate() == []


def test_evaluate_page_shows_generation_scores_and_base_vs_tuned_answers(sft_runs):
    from workbench.rundir import RunDir

    ev = RunDir(sft_runs / "runs" / "sft-tiny").evaluation()
    at = _page("evaluate").run()
    at.selectbox(key="eval_run").set_value("sft-tiny")
    no_crash(at.run())
    metrics = {m.label: m for m in at.metric}
    assert {"Held-out loss", "Perplexity", "chrF", "BLEU"} <= set(metrics)
    assert float(metrics["Held-out loss"].value) == pytest.approx(ev["after"]["loss"], abs=1e-3)
    change = ev["after"]["loss"] - ev["before"]["loss"]
    assert metrics["Held-out loss"].delta == f"{change:+.3f} vs base" and change < 0
    assert float(metrics["chrF"].value) == pytest.approx(ev["after"]["chrf"], abs=1e-3)
    answers = next(d.value for d in at.dataframe if "tuned answer" in d.value.columns)
    assert {"prompt", "reference", "base answer", "tuned answer", "chrF base", "chrF tuned"} <= set(answers.columns)
    assert set(answers["reference"]) <= {"great film", "awful film"} and len(answers) == ev["after"]["n"]
    assert list(answers["chrF tuned"]) == sorted(answers["chrF tuned"])  # worst tuned answer first
    assert any("slice" in d.value.columns for d in at.dataframe)
    # one example as a chat: its prompt as a user turn, then the three answers
    assert any(m.name == "user" for m in at.chat_message)


def _bubbles(at: AppTest) -> list[tuple[str, list[str]]]:
    """(who, the texts in the bubble: typed text, answers, captions naming each side) for each chat message."""
    return [(m.name, [e.value for e in (*m.text, *m.markdown, *m.caption)]) for m in at.chat_message]


def test_chat_page_answers_from_a_run_and_from_the_base_model_and_compares(sft_runs, tiny_llama):
    from workbench.generate import as_conversation, generate_answers, load_generator

    run = str(sft_runs / "runs" / "sft-tiny")
    model, tok, max_length = load_generator(run)
    prompt = "the acting was superb"
    want = generate_answers(model, tok, [as_conversation(prompt)], max_length=max_length)[0]
    at = _page("chat").run()
    assert at.radio(key="chat_kind").value == "Fine-tuned run"
    at.selectbox(key="chat_run").set_value("sft-tiny")
    no_crash(at.run())
    assert any("started from" in c and str(tiny_llama) in c for c in texts(at.caption))
    assert [s.help for s in at.sidebar.slider if s.label == "temperature"][0].startswith("0: greedy decoding")
    at.chat_input(key="chat_prompt").set_value(prompt)
    no_crash(at.run())
    assert _bubbles(at) == [("user", [prompt]), ("assistant", [want])]  # greedy: what `generate` writes

    # a second turn: the model sees the first exchange too (its own answer included)
    follow = "and the plot"
    want2 = generate_answers(model, tok, [as_conversation([{"role": "user", "content": prompt},
                                                           {"role": "assistant", "content": want},
                                                           {"role": "user", "content": follow}])],
                             max_length=max_length)[0]
    at.chat_input(key="chat_prompt").set_value(follow)
    no_crash(at.run())
    assert _bubbles(at)[2:] == [("user", [follow]), ("assistant", [want2])]

    # compare: the same prompt answered by the model the run started from and by the run, side by side
    [b for b in at.button if b.label == "Clear the conversation"][0].click()
    no_crash(at.run())
    assert not at.chat_message
    at.toggle(key="chat_compare").set_value(True)
    at.chat_input(key="chat_prompt").set_value(prompt)
    no_crash(at.run())
    (who, said), (who2, answers) = _bubbles(at)
    assert (who, said, who2) == ("user", [prompt], "assistant")
    assert f"Base model: {tiny_llama}" in answers and "Fine-tuned: sft-tiny" in answers and want in answers
    assert len(at.chat_message[1].columns) == 2

    # a base model on its own: a folder
    at.radio(key="chat_kind").set_value("Base model")
    no_crash(at.run())
    at.radio(key="chat_model_kind").set_value("Folder")
    no_crash(at.run())
    assert not at.chat_message  # its own conversation, empty
    at.text_input(key="chat_folder").input(str(tiny_llama))
    no_crash(at.run())
    at.chat_input(key="chat_prompt").set_value(prompt)
    no_crash(at.run())
    (who, said), (who2, answer) = _bubbles(at)
    assert (who, said, who2) == ("user", [prompt], "assistant") and len(answer) == 1 and answer[0].strip()
    at.text_input(key="chat_folder").input(str(tiny_llama / "nowhere"))
    no_crash(at.run())
    assert any("does not exist" in e for e in texts(at.error))
