"""Run directories under races and damage (issue 12, items 1, 2, 6, 7): two launches with one name,
a stop racing completion, damaged eval.json / labels.json, damaged checkpoints on resume."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest

from conftest import make_sentiment_frame
from workbench.config import RunConfig
from workbench.errors import RunError
from workbench.rundir import RunDir, new_run_dir


@pytest.fixture(scope="module")
def data_csv(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("data") / "d.csv"
    make_sentiment_frame(120).to_csv(p, index=False)
    return p


def cfg_for(model, data, out, name=None, **training) -> RunConfig:
    t = {"max_steps": 8, "learning_rate": 3e-3, "per_device_train_batch_size": 8, "logging_steps": 1,
         "save_strategy": "steps", "save_steps": 4, "save_total_limit": 3, "eval_strategy": "no", "bf16": False,
         **training}
    return RunConfig.from_dict({"name": name, "output_dir": str(out), "model": {"name_or_path": str(model)},
                                "data": {"source": str(data)}, "training": t, "evaluate_before": False})


def _race(n: int, fn) -> list:
    """Call `fn(i)` from `n` threads released at once; return each result or the exception it raised."""
    barrier = threading.Barrier(n)
    out: list = [None] * n

    def go(i: int) -> None:
        barrier.wait()
        try:
            out[i] = fn(i)
        except Exception as e:  # noqa: BLE001 - the race's losers are part of the result
            out[i] = e
    threads = [threading.Thread(target=go, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


# --- 1: two launches with the same name ---------------------------------------------------------
def test_i12_1_launch_race_one_winner(tmp_path, monkeypatch):
    import workbench.launch as launch_mod
    # Only the claim of the run directory races here; no training process is started.
    monkeypatch.setattr(launch_mod, "_spawn", lambda run, resume, **grants: launch_mod.RunHandle(run))
    for round_ in range(15):
        cfg = RunConfig.from_dict({"name": f"same-{round_}", "output_dir": str(tmp_path),
                                   "model": {"name_or_path": "minilm"}, "data": {"source": "rotten_tomatoes"}})
        out = _race(8, lambda i, cfg=cfg: launch_mod.launch(cfg))
        won = [h for h in out if isinstance(h, launch_mod.RunHandle)]
        lost = [e for e in out if not isinstance(e, launch_mod.RunHandle)]
        assert len(won) == 1, f"round {round_}: {len(won)} launches claimed one run directory"
        assert all(isinstance(e, RunError) and "already exists" in str(e) and f"same-{round_}" in str(e)
                   for e in lost), lost
        assert won[0].path == tmp_path / f"same-{round_}" and won[0].run.config().name == f"same-{round_}"
    # An existing empty folder with the run's name is still taken over by one launch, the others refused.
    (tmp_path / "empty").mkdir()
    cfg = RunConfig.from_dict({"name": "empty", "output_dir": str(tmp_path), "model": {"name_or_path": "minilm"},
                               "data": {"source": "rotten_tomatoes"}})
    out = _race(8, lambda i: launch_mod.launch(cfg))
    assert sum(isinstance(h, launch_mod.RunHandle) for h in out) == 1
    # Auto-generated names never collide: each launch gets its own folder (a -2, -3 ... suffix).
    auto = RunConfig.from_dict({"output_dir": str(tmp_path / "auto"), "model": {"name_or_path": "minilm"},
                                "data": {"source": "rotten_tomatoes"}})
    out = _race(8, lambda i: launch_mod.launch(auto))
    assert all(isinstance(h, launch_mod.RunHandle) for h in out), out
    paths = {h.path for h in out}
    assert len(paths) == 8
    assert {RunDir(p).config().name for p in paths} == {p.name for p in paths}


# --- 2: status.json writers racing ---------------------------------------------------------------
def _fresh_run(tmp_path: Path, name: str) -> RunDir:
    cfg = RunConfig.from_dict({"name": name, "output_dir": str(tmp_path), "model": {"name_or_path": "minilm"},
                               "data": {"source": "rotten_tomatoes"}})
    return new_run_dir(cfg)


def test_i12_2_status_race_stop_vs_complete(tmp_path):
    import os
    import subprocess
    import sys
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # the worker's pid once it has exited: a "stopping" run with it reads as failed
    for i in range(40):
        run = _fresh_run(tmp_path, f"r{i}")
        run.update_status(state="running", pid=os.getpid(), step=7, total_steps=8)
        # One thread is the worker finishing, the other a `workbench stop` arriving at that moment.
        out = _race(2, lambda k, run=run: run.update_status(state="completed", phase=None, step=8, pid=dead.pid)
                    if k == 0 else run.request_stop())
        assert not [e for e in out if isinstance(e, Exception)], out
        raw = json.loads(run.status_file.read_text())
        assert raw["state"] == "completed", f"round {i}: a stop overwrote the completed state with {raw['state']!r}"
        assert run.status()["state"] == "completed" and raw["step"] == 8
    # A stop after the end never turns a finished run back into "stopping".
    for final in ("completed", "failed", "stopped"):
        run.update_status(state=final)
        run.request_stop()
        run.update_status(state="stopping")
        assert json.loads(run.status_file.read_text())["state"] == final
    # Many writers of different fields at once (the worker's progress, launch's pid, a stop): none is lost.
    run = _fresh_run(tmp_path, "many")
    _race(8, lambda k: [run.update_status(**{f"k{k}_{j}": j}) for j in range(15)])
    st = json.loads(run.status_file.read_text())
    assert sum(key.startswith("k") for key in st) == 8 * 15, "concurrent status updates were lost"
    assert not list(run.path.glob(".*.tmp"))


# --- 6: damaged eval.json / labels.json ----------------------------------------------------------
GOOD_EVAL = {"before": {"accuracy": 0.5, "f1_macro": 0.4}, "after": {"accuracy": 0.9, "f1_macro": 0.88}}
DAMAGED_EVAL = {"empty": "", "cut-short": '{"after": {"accuracy": 0.9', "a-list": "[]",
                "after-a-number": '{"after": 3}',
                "accuracy-a-word": '{"after": {"accuracy": "high"}}'}


def _runs_with_damage(root: Path) -> None:
    """A good run and one run per kind of damaged eval.json, under `root`."""
    for name in ["good", *DAMAGED_EVAL]:
        run = _fresh_run(root, name)
        run.update_status(state="completed", step=8, total_steps=8)
        run.eval_file.write_text(json.dumps(GOOD_EVAL) if name == "good" else DAMAGED_EVAL[name])
    junk = _fresh_run(root, "status-junk")
    junk.status_file.write_text("\0\0\0")


def test_i12_6_empty_eval_json_hides_one_run(tmp_path, capsys):
    from workbench.cli import main
    _runs_with_damage(tmp_path)
    assert main(["runs", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    table = {ln.split()[0]: ln for ln in out.splitlines() if ln and not ln.startswith(("run ", "problem"))}
    assert set(table) >= {"good", "status-junk", *DAMAGED_EVAL}, out
    assert "0.500" in table["good"] and "0.900" in table["good"]
    problems = [ln for ln in out.splitlines() if ln.startswith("problem in ")]
    assert not [p for p in problems if p.startswith("problem in good:")]
    for name in DAMAGED_EVAL:
        assert "0.900" not in table[name]
        mine = [p for p in problems if p.startswith(f"problem in {name}:")]
        assert len(mine) == 1 and "eval.json is damaged" in mine[0], (name, problems)
    assert any(p.startswith("problem in empty:") and "empty" in p for p in problems)
    assert any(p.startswith("problem in status-junk:") and "status.json" in p for p in problems)
    # `workbench eval` on the damaged run: a clear message naming the file, exit code 2, no traceback
    assert main(["eval", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "eval.json is damaged: it is empty" in err and "Traceback" not in err


def test_i12_6_dashboard_runs_page_damaged_run(tmp_path, monkeypatch):
    import sys
    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest
    root = Path(__file__).resolve().parent.parent
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    _runs_with_damage(tmp_path / "runs")
    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path / "runs"))
    at = AppTest.from_string("from dashboard import runs\nruns.page()", default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    table = at.dataframe[0].value
    assert set(table["run"]) == {"good", "status-junk", *DAMAGED_EVAL}
    acc = table.set_index("run")["accuracy"]
    assert acc["good"] == pytest.approx(0.9) and acc[list(DAMAGED_EVAL)].isna().all()
    warnings = [w.value for w in at.warning]
    for name in DAMAGED_EVAL:
        assert any(w.startswith(f"{name}: eval.json is damaged") for w in warnings), (name, warnings)
    assert not any(w.startswith("good:") for w in warnings)
    # The other pages that read eval.json show the problem too, not a traceback.
    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path / "runs"))
    at = AppTest.from_string("from dashboard import evaluate\nevaluate.page()", default_timeout=60)
    at.query_params["eval_run"] = "empty"
    at.run()
    assert not at.exception, [e.value for e in at.exception]


@pytest.fixture(scope="module")
def trained(tiny_bert, data_csv, tmp_path_factory) -> RunDir:
    """A tiny run trained for 8 steps, checkpoints at 4 and 8: copied by each test that damages it."""
    from workbench.training import run_training
    cfg = cfg_for(tiny_bert, data_csv, tmp_path_factory.mktemp("trained"), name="base")
    run = new_run_dir(cfg)
    run_training(cfg, run, progress=False)
    return run


def _copy(run: RunDir, dest: Path) -> RunDir:
    shutil.copytree(run.path, dest)
    return RunDir(dest)


BAD_LABELS = {"": "it is empty", "[\"neg\", ": "not valid JSON", '{"0": "neg"}': "holds a JSON dict",
              '["neg", 1]': "1 is not a class name", '["neg", "neg"]': "appear more than once",
              '["neg", "pos", "other"]': "lists 3 classes but the model"}


@pytest.mark.parametrize("text", list(BAD_LABELS), ids=["empty", "cut", "dict", "number", "duplicate", "three"])
def test_i12_6_bad_labels_json_predict_eval(trained, tmp_path, data_csv, capsys, text):
    from workbench.cli import main
    run = _copy(trained, tmp_path / "run")
    assert main(["predict", str(run.path), "good film"]) == 0  # intact: works
    capsys.readouterr()
    run.labels_file.write_text(text)
    for argv in (["predict", str(run.path), "good film"], ["eval", str(run.path), "--data", str(data_csv)]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "labels.json" in err and BAD_LABELS[text] in err and "Traceback" not in err, (argv, err)


# --- 7: damaged checkpoints on resume ------------------------------------------------------------
def _resumable(trained: RunDir, dest: Path, max_steps: int = 12) -> tuple[RunConfig, RunDir]:
    run = _copy(trained, dest)
    run.update_status(state="stopped")
    cfg = run.config().override({"training.max_steps": max_steps})
    run.config_file.write_text(cfg.to_yaml())
    return cfg, run


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


DAMAGE = {
    "weights-missing": lambda c: (c / "model.safetensors").unlink(),
    "weights-half-written": lambda c: _truncate(c / "model.safetensors"),
    "rng-truncated": lambda c: _truncate(c / "rng_state.pth"),
    "trainer-state-cut": lambda c: _truncate(c / "trainer_state.json"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_i12_7_damaged_checkpoint_falls_back(trained, tmp_path, damage, capsys):
    from workbench.training import run_training
    cfg, run = _resumable(trained, tmp_path / "run")
    assert [c.name for c in run.checkpoints()] == ["checkpoint-4", "checkpoint-8"]
    DAMAGE[damage](run.checkpoints_dir / "checkpoint-8")
    run_training(cfg, run, resume=True, progress=False)
    st = run.status()
    assert st["state"] == "completed" and st["step"] == 12
    assert "checkpoint-8" in st["note"] and "resumed from checkpoint-4" in st["note"], st["note"]
    assert "checkpoint-8" in capsys.readouterr().err  # said where the user looks, too
    train = run.metrics().query("kind == 'train'")
    resumed = train[train["time"] > json.loads((trained.status_file).read_text())["finished"]]
    assert resumed["step"].min() == 5  # training went on from step 4's state
    assert (run.checkpoints_dir / "damaged-checkpoint-8").is_dir()  # kept for inspection, out of the rotation
    # a damaged checkpoint that is the only one left: refused with what is wrong, not a traceback
    cfg2, only = _resumable(trained, tmp_path / "only")
    shutil.rmtree(only.checkpoints_dir / "checkpoint-4")
    DAMAGE[damage](only.checkpoints_dir / "checkpoint-8")
    from workbench.cli import main
    assert main(["resume", str(only.path)]) == 2
    err = capsys.readouterr().err
    assert "no intact checkpoint" in err and "checkpoint-8" in err and "Traceback" not in err, err
    assert only.status()["state"] == "failed"


def test_i12_7_missing_optimizer_not_silent(trained, tmp_path):
    from workbench.errors import RunError
    from workbench.training import run_training
    cfg, run = _resumable(trained, tmp_path / "run")
    (run.checkpoints_dir / "checkpoint-8" / "optimizer.pt").unlink()
    run_training(cfg, run, resume=True, progress=False)
    st = run.status()
    assert st["state"] == "completed" and "optimizer.pt is missing" in st["note"]
    assert "resumed from checkpoint-4" in st["note"]
    # with no earlier checkpoint to fall back on, resuming is refused rather than silently re-initialised
    cfg2, only = _resumable(trained, tmp_path / "only")
    shutil.rmtree(only.checkpoints_dir / "checkpoint-4")
    (only.checkpoints_dir / "checkpoint-8" / "optimizer.pt").unlink()
    with pytest.raises(RunError, match="optimizer.pt is missing"):
        run_training(cfg2, only, resume=True, progress=False)
    assert not only.model_dir.exists() or only.status()["state"] == "failed"


def test_i12_7_resume_no_duplicate_metric_steps(trained, tmp_path):
    from workbench.training import run_training
    # A run that logged steps 1-8 and then died before checkpoint-8 was written (mid-way through a line).
    cfg, run = _resumable(trained, tmp_path / "run", max_steps=10)
    shutil.rmtree(run.checkpoints_dir / "checkpoint-8")
    with run.metrics_file.open("a") as f:
        f.write('{"step": 9, "kind": "tr')
    before = run.metrics().query("kind == 'train'")
    assert before["step"].tolist() == list(range(1, 9))
    run_training(cfg, run, resume=True, progress=False)
    train = run.metrics().query("kind == 'train'")
    assert train["step"].tolist() == list(range(1, 11)), train["step"].tolist()  # 5-8 once each: the rerun's
    old, new = before.set_index("step")["time"], train.set_index("step")["time"]
    assert (new.loc[1:4] == old.loc[1:4]).all()  # the rows up to the checkpoint are the original ones
    assert (new.loc[5:8] > old.max()).all()  # the rows after it are the resumed run's, not the dead one's
    assert run.metrics().query("kind == 'summary'")["step"].tolist() == [10]
