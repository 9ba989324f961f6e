"""A model that cannot read the language (issue 13 item 2): the data report measures the unknown-token share
and the characters lost, and says which built-in can read the text; built-in language tags give the same
advice before anything is tokenised."""

from __future__ import annotations

import pandas as pd
import pytest
from transformers import AutoTokenizer

from conftest import make_sentiment_frame
from workbench.cli import main
from workbench.config import DataConfig
from workbench.data import format_report, prepare_data

CHINESE = ["这个饭店比较老旧，实在不是一个好的住宿选择", "服务人员服务周到，细致，给人一种宾至如归的感觉",
           "隔音效果出奇差，隔壁的说话声都能听到", "整体性能不错，外观也还可以"]


def _chinese_frame(n: int = 80) -> pd.DataFrame:
    return pd.DataFrame({"text": [f"good {CHINESE[i % 4]}" for i in range(n)],
                         "label": ["neg" if i % 4 in (0, 2) else "pos" for i in range(n)]})


def test_unknown_tokens_are_measured_and_the_reader_is_named(tiny_bert):
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    prep = prepare_data(DataConfig(source="x"), table=_chinese_frame(), tokenizer=tok, model_name="my-bert")
    u = prep.report.unknown_tokens
    assert u["token"] == "[UNK]" and u["share"] > 0.5 and u["chars_lost_share"] > 0.5  # all but "good" is lost
    assert u["examples"] and set(u["examples"]) <= set("".join(CHINESE))
    warning = next(w for w in prep.report.warnings if "[UNK]" in w)
    assert "my-bert" in warning and "cannot read this text" in warning and "smollm2-135m" in warning
    assert "unknown tokens:" in format_report(prep.report)


def test_text_the_tokenizer_reads_gives_no_language_warning(tiny_bert):
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    prep = prepare_data(DataConfig(source="x"), table=make_sentiment_frame(80), tokenizer=tok, model_name="my-bert")
    assert prep.report.unknown_tokens["share"] == 0
    assert not [w for w in prep.report.warnings if "cannot read" in w]
    assert "unknown tokens:" not in format_report(prep.report)


@pytest.mark.parametrize("model, warned", [("minilm", True), ("smollm2-135m", False)])
def test_builtin_language_tags_warn_before_tokenising(model, warned):
    # No tokenizer: the advice comes from chinese_reviews' language tag and the built-in model's languages.
    prep = prepare_data(DataConfig(source="chinese_reviews"), table=_chinese_frame(), model_name=model)
    found = [w for w in prep.report.warnings if "cannot read this text" in w]
    assert bool(found) is warned
    if warned:
        assert "Chinese" in found[0] and "'smollm2-135m'" in found[0]


def test_config_validate_gives_the_language_advice(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model:\n  name_or_path: minilm\ndata:\n  source: chinese_reviews\n")
    assert main(["config", "--validate", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "warning:" in out and "smollm2-135m" in out and "valid" in out
