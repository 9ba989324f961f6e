"""Issue 12: bad inputs that used to pass validation or loading and then crash (or mislead) later.

Config values (item 5), missing-label spellings (3), max_length above the model's positions (4),
awkward files (8) and one macro-F1 definition for validation and test (11).
"""

from __future__ import annotations

import math
import typing

import pytest

from workbench.cli import main
from workbench.config import RunConfig
from workbench.errors import ConfigError


def _cli(capsys, *args):
    code = main(list(map(str, args)))
    out = capsys.readouterr()
    return code, out.out, out.err


def _problems(raw: dict) -> list[str]:
    """The problems `config --validate` reports for `raw` (empty: it would pass)."""
    try:
        return RunConfig.from_dict(raw).validate()
    except ConfigError as e:
        return e.problems


def _validate_yaml(capsys, tmp_path, text: str, *sets: str):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return _cli(capsys, "config", "--validate", p, *[a for s in sets for a in ("--set", s)])


# --- item 5: values that passed `config --validate` and crashed later ---------------------------
def test_i12_5_nan_warmup_refused(capsys, tmp_path):
    code, out, err = _validate_yaml(capsys, tmp_path, "training:\n  warmup_steps: .nan\n")
    assert code == 2 and "training.warmup_steps=nan" in err and "finite" in err and "Traceback" not in err


def test_i12_5_inf_epochs_refused(capsys, tmp_path):
    code, out, err = _validate_yaml(capsys, tmp_path, "training:\n  num_train_epochs: .inf\n")
    assert code == 2 and "training.num_train_epochs=inf" in err and "finite" in err


def test_i12_5_optim_must_be_known(capsys, tmp_path):
    from transformers.training_args import OptimizerNames

    from workbench.config import OPTIMIZERS
    code, out, err = _validate_yaml(capsys, tmp_path, 'training:\n  optim: "rm -rf /"\n')
    assert code == 2 and "training.optim='rm -rf /'" in err
    assert all(o in err for o in OPTIMIZERS)  # the message lists the choices
    # every choice we offer is one TrainingArguments accepts
    assert set(OPTIMIZERS) <= {o.value for o in OptimizerNames}
    for o in OPTIMIZERS:
        assert _problems({"training": {"optim": o}}) == []


def test_i12_5_seed_range():
    assert any("training.seed=" in p and "4294967295" in p for p in _problems({"training": {"seed": 10**20}}))
    assert any("training.seed=-1" in p for p in _problems({"training": {"seed": -1}}))
    assert _problems({"training": {"seed": 2**32 - 1}}) == [] and _problems({"training": {"seed": 0}}) == []


def test_i12_5_long_name():
    assert any("300 characters" in p for p in _problems({"name": "x" * 300}))
    assert _problems({"name": "x" * 100}) == []
    for bad in ("a/b", "a\\b", "tab\there", "line\nbreak", "what?", "a:b", "..", " padded "):
        assert _problems({"name": bad}), bad
    # shell metacharacters are legal in a folder name: the CLI quotes paths instead (issue 12 item 9)
    assert _problems({"name": "run $(touch x) ; echo"}) == []
    assert _problems({"name": "中文 run-1.2"}) == []


def test_i12_5_malformed_set_exit_2(capsys, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"training:\n  seed: 1\noutput_dir: {tmp_path / 'runs'}\n")
    code, out, err = _cli(capsys, "train", cfg, "--set", "training.learning_rate=[1,", "--set", "name={a: 1",
                          "--set", "training.seed=3")
    assert code == 2 and "Traceback" not in err and "2 problems" in err
    lines = [ln for ln in err.splitlines() if ln.strip().startswith("- ")]
    assert len(lines) == 2 and "training.learning_rate=[1," in lines[0] and "name={a: 1" in lines[1]
    assert "not a valid YAML value" in lines[0]
    assert not (tmp_path / "runs").exists()  # refused before a run directory was made
    # `config --validate` takes the same overrides
    code, out, err = _validate_yaml(capsys, tmp_path, "training:\n  seed: 1\n", "training.optim={")
    assert code == 2 and "not a valid YAML value" in err and "Traceback" not in err


def test_i12_5_nan_weight_decay():
    assert any("training.weight_decay=nan" in p for p in _problems({"training": {"weight_decay": float("nan")}}))
    assert any("peft.lora.lora_dropout=nan" in p
               for p in _problems({"peft": {"method": "lora", "lora": {"lora_dropout": "nan"}}}))
    # checked whatever the method, like every other field
    assert any("peft.lora.lora_dropout" in p for p in _problems({"peft": {"lora_dropout": float("nan")}}))


def test_i12_5_negative_grad_norm_and_eval_steps():
    probs = _problems({"training": {"max_grad_norm": -1, "eval_strategy": "steps", "eval_steps": -5}})
    assert any("training.max_grad_norm=-1" in p for p in probs)
    assert any("training.eval_steps=-5" in p for p in probs)
    assert _problems({"training": {"max_grad_norm": 0}}) == []  # 0: no clipping, as in TrainingArguments


def _numeric_fields() -> list[tuple[str, str, type]]:
    out = []
    hints = typing.get_type_hints(RunConfig)
    for sec in ("model", "data", "training", "peft"):
        sub = hints[sec]
        for f, h in typing.get_type_hints(sub).items():
            base = {a for a in (typing.get_args(h) or (h,)) if a is not type(None)}
            if base & {int, float} and bool not in base:
                out.append((sec, f, float if float in base else int))
    return out


@pytest.mark.parametrize("sec,name,kind", _numeric_fields(), ids=[f"{s}.{n}" for s, n, _ in _numeric_fields()])
def test_i12_5_every_numeric_field_is_range_checked(sec, name, kind):
    """No numeric field accepts NaN, infinity or an absurd magnitude (item 5: 'every numeric field')."""
    bad = [10**20, -10**20] + ([math.nan, math.inf, -math.inf] if kind is float else [])
    for v in bad:
        assert _problems({sec: {name: v}}), f"{sec}.{name}={v} accepted"


# --- item 3: missing-value spellings are not classes ----------------------------------------------
def test_i12_3_missing_label_spellings():
    from workbench.config import DataConfig
    from workbench.data import format_report, prepare_data, read_table

    spellings = ["NaN", "nan", "NA", "N/A", "null", "None", ""]
    rows = ["text,label"] + [f"good film {i},pos" if i % 2 else f"bad film {i},neg" for i in range(40)]
    rows += [f"unlabelled {j},{s}" for j, s in enumerate(spellings)]
    t = read_table("\n".join(rows).encode(), name="labels.csv")
    prep = prepare_data(DataConfig(source="labels.csv"), table=t, seed=0)
    assert prep.labels == ["neg", "pos"]
    assert not prep.train["text"].str.startswith("unlabelled").any()
    # file lines: header is line 1, so the 7 unlabelled rows are lines 42..48
    assert prep.report.dropped == {"missing label": list(range(42, 49))}
    assert prep.report.rows_used == 40
    text = format_report(prep.report)
    assert "dropped 7 row(s), missing label (lines 42, 43" in text
    warn = next(w for w in prep.report.warnings if "written as a missing value" in w)
    assert warn.startswith("6 label(s)") and "'N/A'" in warn and "lines 42, 43, 44" in warn


# --- item 8: awkward files ------------------------------------------------------------------------
def _table(raw: bytes, name: str = "d.csv"):
    from workbench.data import read_table
    return read_table(raw, name=name)


def test_i12_8_big_cell():
    import csv
    big = "word " * 60_000  # 300 KB in one cell, over the csv module's 128 KB default
    t = _table(f'text,label\n"{big}",pos\nshort one,neg\n'.encode())
    assert t.df.shape == (2, 2) and t.df["text"].iloc[0] == big and t.df["label"].tolist() == ["pos", "neg"]
    assert csv.field_size_limit() == 131072  # the process-wide limit is left as it was


def test_i12_8_utf16_bom():
    import pandas as pd
    df = pd.DataFrame({"text": ["caf\u00e9 cr\u00e8me", "\u65e5\u672c\u8a9e\u306e\u6587", "plain"],
                       "label": ["a", "b", "a"]})
    csv_text = df.to_csv(index=False)
    for raw in (csv_text.encode("utf-16"), b"\xfe\xff" + csv_text.encode("utf-16-be"), csv_text.encode("utf-32")):
        t = _table(raw)
        assert list(t.df.columns) == ["text", "label"] and t.df["text"].tolist() == df["text"].tolist()
        assert not t.warnings  # decoded as what it is, not guessed as cp1252


def test_i12_8_binary_csv():
    import random
    import zipfile
    from io import BytesIO

    from workbench.errors import DataError
    rng = random.Random(0)
    noise = bytes(rng.randrange(256) for _ in range(4096))
    buf = BytesIO()
    with zipfile.ZipFile(buf, "w") as z:  # what an .xlsx renamed to .csv starts with
        z.writestr("xl/workbook.xml", "<workbook/>")
    for raw, needle in ((noise, "not a text table"), (buf.getvalue(), "Excel")):
        with pytest.raises(DataError) as e:
            _table(raw)
        msg = str(e.value)
        assert "not a text table" in msg and needle in msg and "export" in msg and len(msg) < 400


def test_i12_8_float_labels_regression():
    import numpy as np
    import pandas as pd

    from workbench.config import DataConfig
    from workbench.data import prepare_data
    from workbench.errors import DataError
    scores = np.random.default_rng(0).permutation([round(0.0137 * i + 0.01, 4) for i in range(200)])
    assert len(set(scores)) == 200
    df = pd.DataFrame({"text": [f"review number {i}" for i in range(200)], "label": scores})
    t = _table(df.to_csv(index=False).encode())
    with pytest.raises(DataError) as e:
        prepare_data(DataConfig(source="d.csv"), table=t, seed=0)
    msg = str(e.value)
    assert "regression target" in msg and "200 distinct numeric values" in msg and "bin" in msg
    assert len(msg) < 1500  # a few examples, not the 200 "classes"
    # a few integer classes (star ratings) are still classes
    stars = pd.DataFrame({"text": [f"review number {i}" for i in range(200)], "label": [i % 5 + 1 for i in range(200)]})
    assert prepare_data(DataConfig(source="x"), table=stars, seed=0).labels == ["1", "2", "3", "4", "5"]


# --- item 11: one macro-F1 for validation and test ------------------------------------------------
def test_i12_11_one_macro_f1():
    import numpy as np
    from transformers import EvalPrediction

    from workbench.evaluate import classification_metrics, trainer_metrics
    names = ["a", "b", "c", "d", "e"]
    gold = [0, 0, 1, 1, 2, 2]  # c (2) is gold but never predicted
    pred = [0, 1, 1, 1, 3, 0]  # d (3) is predicted but never gold; e (4) is in neither
    logits = np.full((len(pred), len(names)), -5.0, dtype=np.float32)
    logits[np.arange(len(pred)), pred] = 5.0
    val = trainer_metrics(EvalPrediction(predictions=logits, label_ids=np.array(gold)))
    test = classification_metrics([names[i] for i in gold], [names[i] for i in pred], names)
    for k in ("f1_macro", "precision_macro", "recall_macro"):
        assert val[k] == pytest.approx(test[k]), k
    # by hand, over the classes with any evidence (a, b, c, d): F1 a 0.5, b 0.8, c 0, d 0
    assert test["f1_macro"] == pytest.approx((0.5 + 0.8 + 0 + 0) / 4)
    assert test["recall_macro"] == pytest.approx((0.5 + 1 + 0 + 0) / 4)


# --- item 4: data.max_length above the model's positions ------------------------------------------
def test_i12_4_max_length_capped(tiny_bert, tmp_path, capsys):
    """tiny_bert has 128 positions; texts of ~200 tokens with data.max_length 512 used to crash the first step."""
    import pandas as pd

    from conftest import FILLER, NEG, POS
    from workbench.predict import Predictor
    from workbench.rundir import new_run_dir
    from workbench.training import run_training
    long = " ".join(FILLER * 10)  # 200 words, 202 tokens with [CLS]/[SEP]
    rows = [{"text": f"{long} {(POS if i % 2 else NEG)[i % 8]}", "label": "pos" if i % 2 else "neg"}
            for i in range(40)]
    data = tmp_path / "long.csv"
    pd.DataFrame(rows).to_csv(data, index=False)
    cfg = RunConfig.from_dict({"output_dir": str(tmp_path / "runs"), "evaluate_before": False,
                               "model": {"name_or_path": str(tiny_bert)},
                               "data": {"source": str(data), "max_length": 512},
                               "training": {"max_steps": 1, "per_device_train_batch_size": 4, "eval_strategy": "no",
                                            "save_strategy": "no", "logging_steps": 1}})
    run = run_training(cfg, new_run_dir(cfg), progress=False)
    assert run.status()["state"] == "completed"
    rep = run.data_report()
    warn = next(w for w in rep["warnings"] if "data.max_length=512" in w)
    assert "128 tokens" in warn
    assert rep["token_lengths"]["max_length"] == 128 and rep["token_lengths"]["truncated"] > 0
    # the run's config.yaml still says 512: prediction caps it the same way
    out = Predictor.from_run(run).predict([long + " good"])
    assert len(out) == 1
    # `workbench report` says it too, without training
    code, text, _ = _cli(capsys, "report", data, "--model", tiny_bert)
    assert code == 0 and "data.max_length=256 is more than this model takes (128 tokens)" in text  # the default
