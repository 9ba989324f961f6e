"""Data loading, column/label mapping, splits and the data report, file format by file format."""

import json

import pandas as pd
import pytest

from conftest import make_sentiment_frame
from workbench.config import DataConfig
from workbench.data import guess_columns, normalize_label, prepare_data, read_table
from workbench.errors import DataError


def _prep(source, **kw):
    return prepare_data(DataConfig(source=str(source), **kw), seed=0, raise_on_problems=False)


@pytest.fixture
def frame():
    return make_sentiment_frame(60)


@pytest.mark.parametrize("fmt", ["csv", "tsv", "json", "jsonl", "parquet", "semicolon", "json_columns"])
def test_every_format_loads_the_same_rows(tmp_path, frame, fmt):
    if fmt == "csv":
        p = tmp_path / "d.csv"; frame.to_csv(p, index=False)
    elif fmt == "semicolon":
        p = tmp_path / "d.csv"; frame.to_csv(p, index=False, sep=";")
    elif fmt == "tsv":
        p = tmp_path / "d.tsv"; frame.to_csv(p, index=False, sep="\t")
    elif fmt == "json":
        p = tmp_path / "d.json"; frame.to_json(p, orient="records")
    elif fmt == "json_columns":
        p = tmp_path / "d.json"; p.write_text(json.dumps(frame.to_dict(orient="list")))
    elif fmt == "jsonl":
        p = tmp_path / "d.jsonl"; frame.to_json(p, orient="records", lines=True)
    else:
        p = tmp_path / "d.parquet"; frame.to_parquet(p)
    t = read_table(p)
    assert list(t.df.columns) == ["text", "label", "source"]
    assert t.df["text"].tolist() == frame["text"].tolist()
    if fmt == "semicolon":
        assert any("semicolon" in w for w in t.warnings)


def test_dataframe_and_upload_bytes(frame):
    assert len(read_table(frame).df) == 60
    t = read_table(frame.to_csv(index=False).encode(), name="upload.csv")
    assert t.df.shape == (60, 3)


def test_utf8_bom_is_stripped(tmp_path, frame):
    p = tmp_path / "bom.csv"
    p.write_bytes(b"\xef\xbb\xbf" + frame.to_csv(index=False).encode())
    t = read_table(p)
    assert t.df.columns[0] == "text" and not any("\ufeff" in c for c in t.df.columns)


def test_cp1252_file_decodes_with_a_warning_naming_the_line(tmp_path):
    p = tmp_path / "win.csv"
    p.write_bytes("text,label\ncafe ok,pos\ncaf\u00e9 cr\u00e8me \u2013 bad,neg\n".encode("cp1252"))
    t = read_table(p)
    assert t.df["text"].iloc[1] == "caf\u00e9 cr\u00e8me \u2013 bad"
    assert any("cp1252" in w and "line 3" in w for w in t.warnings)


def test_ragged_rows_are_skipped_with_line_numbers(tmp_path):
    p = tmp_path / "r.csv"
    p.write_text("text,label\na good film,pos\nbad, really bad,neg\nfine,pos\n")
    t = read_table(p)
    assert len(t.df) == 2
    assert any("line 3" in w and "skipped 1" in w for w in t.warnings)


def test_empty_file_and_header_only(tmp_path):
    p = tmp_path / "e.csv"
    p.write_text("")
    with pytest.raises(DataError, match="empty"):
        read_table(p)
    p.write_text("text,label\n")
    rep = _prep(p).report
    assert any("no data rows" in x for x in rep.problems)


def test_bad_jsonl_line_is_named(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"text": "a", "label": 1}\n{"text": "b", label: 0}\n')
    with pytest.raises(DataError, match="line 2"):
        read_table(p)


def test_wrong_parquet_schema_names_the_field(tmp_path):
    p = tmp_path / "d.parquet"
    pd.DataFrame({"text": [["a", "b"], ["c"]] * 10, "label": [0, 1] * 10}).to_parquet(p)
    rep = _prep(p).report
    assert any("'text'" in x and "lists" in x for x in rep.problems)


def test_unknown_extension_and_missing_source(tmp_path):
    p = tmp_path / "d.xlsx"
    p.write_bytes(b"PK\x03\x04junk")
    with pytest.raises(DataError, match="unknown file type"):
        read_table(p)
    with pytest.raises(DataError, match="neither a file nor a built-in"):
        read_table(tmp_path / "nothing.csv")


def test_missing_label_column_lists_columns_found(tmp_path, frame):
    p = tmp_path / "d.csv"
    frame.to_csv(p, index=False)
    rep = _prep(p, label_column="sentiment").report
    assert not rep.ok
    assert "'sentiment' not found" in rep.problems[0] and "['text', 'label', 'source']" in rep.problems[0]
    with pytest.raises(DataError, match="data.label_column"):
        prepare_data(DataConfig(source=str(p), label_column="sentiment"))


def test_columns_are_guessed_from_names_and_content():
    df = pd.DataFrame({"id": range(6), "Review": ["long text here"] * 6, "Sentiment": ["a", "b"] * 3})
    assert guess_columns(df) == {"text": "Review", "text_pair": None, "label": "Sentiment"}
    df = pd.DataFrame({"body_of_text": ["some long sentence"] * 6, "y_value": [0, 1] * 3})
    g = guess_columns(df)
    assert g["text"] == "body_of_text" and g["label"] is None  # labels are never guessed from content


def test_one_class_is_refused(tmp_path, frame):
    p = tmp_path / "d.csv"
    frame.assign(label="pos").to_csv(p, index=False)
    rep = _prep(p).report
    assert any("only one class" in x for x in rep.problems)


def test_class_too_small_to_split(tmp_path, frame):
    p = tmp_path / "d.csv"
    pd.concat([frame, pd.DataFrame({"text": ["odd one"], "label": ["meh"], "source": ["web"]})]).to_csv(p, index=False)
    rep = _prep(p).report
    assert any("'meh' has 1 row" in x for x in rep.problems)


def test_every_row_dropped_counts_each_reason(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("text,label\n,pos\n  ,neg\nhello,\nworld,\n")
    rep = _prep(p).report
    assert any("every row was dropped" in x and "2 empty or missing text" in x and "2 missing label" in x
               for x in rep.problems)


def test_empty_cells_dropped_with_their_row_numbers(tmp_path, frame):
    frame.loc[[3, 10], "text"] = None
    frame.loc[5, "label"] = None
    p = tmp_path / "d.csv"
    frame.to_csv(p, index=False)
    rep = _prep(p).report
    assert rep.ok
    # file lines: header is line 1, frame row i is line i + 2
    assert rep.dropped == {"empty or missing text": [5, 12], "missing label": [7]}
    assert rep.rows_used == 57


def test_labels_mixing_int_and_string_are_one_class(tmp_path):
    df = pd.DataFrame({"text": [f"text {i}" for i in range(40)], "label": [1, "1", 0, " 0 "] * 10})
    prep = prepare_data(DataConfig(source="x"), table=df, seed=0)
    assert prep.labels == ["0", "1"]
    assert normalize_label(1.0) == normalize_label("1") == normalize_label(1) == "1"


def test_integer_labels_sort_numerically():
    df = pd.DataFrame({"text": [f"t{i}" for i in range(60)], "label": [2, 10, 1] * 20})
    prep = prepare_data(DataConfig(source="x"), table=df, seed=0)
    assert prep.labels == ["1", "2", "10"]
    assert (prep.train["label"] == prep.train["label_name"].map({"1": 0, "2": 1, "10": 2})).all()


def test_label_only_in_validation_is_refused(tmp_path, frame):
    tr, va = tmp_path / "tr.csv", tmp_path / "va.csv"
    frame.to_csv(tr, index=False)
    frame.assign(label="other").head(5).to_csv(va, index=False)
    rep = _prep(tr, validation_source=str(va)).report
    assert any("['other'] appear in validation but never in train" in x for x in rep.problems)


def test_duplicates_and_leakage_are_counted(tmp_path):
    df = make_sentiment_frame(100)
    df = pd.concat([df, df.head(10)], ignore_index=True)  # 10 exact repeats
    prep = prepare_data(DataConfig(source="x", test_size=0.3, validation_size=0.1), table=df, seed=0)
    rep = prep.report
    train_keys = set(prep.train["text"])
    assert rep.leakage["test"] == int(prep.test["text"].isin(train_keys).sum())
    assert rep.duplicates == int(prep.train["text"].duplicated().sum())
    assert rep.leakage["test"] + rep.leakage["validation"] + rep.duplicates > 0
    assert any("leakage" in w for w in rep.warnings)


def test_stratified_seeded_split():
    df = make_sentiment_frame(200)
    a = prepare_data(DataConfig(source="x", validation_size=0.1, test_size=0.2), table=df, seed=3)
    b = prepare_data(DataConfig(source="x", validation_size=0.1, test_size=0.2), table=df, seed=3)
    assert a.report.split_sizes == {"train": 140, "validation": 20, "test": 40}
    assert a.test.index.tolist() == b.test.index.tolist()
    assert a.report.class_balance["test"] == {"neg": 20, "pos": 20}
    assert set(a.train.index) & set(a.test.index) == set()
    assert "source" in a.extra_columns and "source" in a.test


def test_split_column_and_subsets():
    df = make_sentiment_frame(100)
    df["split"] = ["train"] * 60 + ["dev"] * 20 + ["test"] * 20
    prep = prepare_data(DataConfig(source="x", split_column="split", max_train_samples=30), table=df, seed=0)
    assert prep.report.split_sizes == {"train": 30, "validation": 20, "test": 20}


def test_token_lengths_in_report(tiny_bert):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    df = make_sentiment_frame(100)
    prep = prepare_data(DataConfig(source="x", max_length=10), table=df, seed=0, tokenizer=tok)
    t = prep.report.token_lengths
    lengths = [len(s.split()) + 2 for s in prep.train["text"]]  # word-level vocab + [CLS]/[SEP]
    assert t["max"] == max(lengths) and t["truncated"] == sum(n > 10 for n in lengths)
    assert t["p50"] <= t["p90"] <= t["p95"] <= t["p99"] <= t["max"]
