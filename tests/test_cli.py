"""The CLI as a new user meets it: every bad file gives one message naming the problem and the fix
(exit code 2, no traceback); the read-only commands work on a finished run."""

from pathlib import Path

import pytest

from conftest import make_sentiment_frame
from workbench.cli import main


def _run(capsys, *args):
    code = main(list(map(str, args)))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def files(tmp_path):
    df = make_sentiment_frame(80)
    f = {}
    f["semicolon"] = tmp_path / "semi.csv"; df.to_csv(f["semicolon"], index=False, sep=";")
    f["nolabel"] = tmp_path / "nolabel.csv"
    df.rename(columns={"label": "stars"}).assign(stars=1.5).to_csv(f["nolabel"], index=False)
    f["oneclass"] = tmp_path / "one.csv"; df.assign(label="pos").to_csv(f["oneclass"], index=False)
    f["cp1252"] = tmp_path / "win.csv"
    f["cp1252"].write_bytes(df.assign(text=df["text"] + " caf\u00e9").to_csv(index=False).encode("cp1252"))
    f["empty"] = tmp_path / "empty.csv"; f["empty"].write_text("")
    return f


def test_semicolon_csv_is_detected(capsys, files, tiny_bert):
    code, out, err = _run(capsys, "report", files["semicolon"], "--model", tiny_bert)
    assert code == 0 and "semicolon-separated" in out and "train classes" in out


def test_cp1252_file_warns_and_works(capsys, files, tiny_bert):
    code, out, err = _run(capsys, "report", files["cp1252"], "--model", tiny_bert)
    assert code == 0 and "cp1252" in out and "not valid UTF-8" in out


@pytest.mark.parametrize("case,needles", [
    ("nolabel", ["no label column found", "['text', 'stars', 'source']", "data.label_column"]),
    ("oneclass", ["only one class", "at least two"]),
])
def test_bad_files_give_a_problem_and_its_fix(capsys, files, tiny_bert, case, needles):
    code, out, err = _run(capsys, "report", files[case], "--model", tiny_bert)
    assert code == 2
    for n in needles:
        assert n in out, (n, out)
    assert "Traceback" not in out + err


@pytest.mark.parametrize("case,needle", [("empty", "is empty"), ("nolabel", "no label column found"),
                                         ("oneclass", "only one class")])
def test_train_refuses_bad_data_before_training(capsys, files, tiny_bert, tmp_path, case, needle):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {{name_or_path: {tiny_bert}}}\ndata: {{source: {files[case]}}}\n"
                   f"output_dir: {tmp_path / 'runs'}\n")
    code, out, err = _run(capsys, "train", cfg)
    assert code == 2 and needle in err and "Traceback" not in err
    st = next((tmp_path / "runs").iterdir()) / "status.json"
    assert '"failed"' in st.read_text() and needle in st.read_text()


def test_bad_config_lists_every_problem(capsys, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("training:\n  learning_rate: 0\n  per_device_train_batch_size: 0\n  epochs: 3\n")
    code, out, err = _run(capsys, "train", cfg)
    assert code == 2 and "3 problems" in err and "num_train_epochs" in err


def test_read_only_commands_on_a_finished_run(capsys, tiny_bert, tmp_path):
    data = tmp_path / "d.csv"
    make_sentiment_frame(200).to_csv(data, index=False)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"name: r1\noutput_dir: {tmp_path / 'runs'}\nmodel: {{name_or_path: {tiny_bert}}}\n"
                   f"data: {{source: {data}}}\ntraining: {{num_train_epochs: 8, learning_rate: 3.0e-3}}\n"
                   f"peft: {{freeze_embeddings: false}}\n")  # a tiny random model must train its embeddings
    code, out, _ = _run(capsys, "train", cfg)
    run = tmp_path / "runs" / "r1"
    assert code == 0 and "test accuracy after fine-tuning" in out and str(run) in out
    code, out, _ = _run(capsys, "eval", run)
    assert code == 0 and "before fine-tuning" in out and "gold pos" in out
    code, out, _ = _run(capsys, "predict", run, "a truly excellent film", "awful and boring")
    lines = out.strip().splitlines()
    assert code == 0 and lines[0].startswith("pos") and lines[1].startswith("neg")
    code, out, _ = _run(capsys, "runs", "--dir", tmp_path / "runs")
    assert code == 0 and "r1" in out and "completed" in out
    code, out, _ = _run(capsys, "status", run)
    assert "completed" in out
    code, out, _ = _run(capsys, "eval", run, "--data", data)
    assert code == 0 and "accuracy" in out
    code, out, err = _run(capsys, "eval", tmp_path)
    assert code == 2 and "not a run directory" in err


def test_listing_commands(capsys):
    assert _run(capsys, "datasets")[1].count("\n") >= 3
    out = _run(capsys, "models")[1]
    assert "minilm" in out and "smollm2-135m" in out
    out = _run(capsys, "config", "--explain")[1]
    assert "training.learning_rate" in out


def test_dashboard_defaults_are_local_and_xsrf_protected(monkeypatch):
    import subprocess
    import tomllib
    seen = {}

    class Exited:  # the Streamlit child, already done
        def wait(self, timeout=None):
            return 0

        poll = wait

    monkeypatch.setattr(subprocess, "Popen", lambda cmd, cwd=None, env=None: seen.update(cmd=cmd, cwd=cwd) or Exited())
    assert main(["app"]) == 0
    cmd = seen["cmd"]
    assert cmd[cmd.index("--server.address") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--server.enableXsrfProtection") + 1] == "true"
    conf = tomllib.loads((Path(__file__).parent.parent / ".streamlit" / "config.toml").read_text())
    assert conf["server"]["address"] == "127.0.0.1" and conf["server"]["enableXsrfProtection"] is True
    assert 0 < conf["server"]["maxUploadSize"] <= 1024
