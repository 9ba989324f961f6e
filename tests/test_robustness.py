"""Beyond the fault list: a fuzzed data loader, shell metacharacters in names, and a run killed
20 times at random moments that still ends where an uninterrupted run ends."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conftest import make_sentiment_frame
from workbench.config import DataConfig, RunConfig
from workbench.data import prepare_data, read_table
from workbench.errors import WorkbenchError
from workbench.launch import launch
from workbench.rundir import RunDir, new_run_dir
from workbench.training import run_training

NAMES = ["d.csv", "d.tsv", "d.json", "d.jsonl", "d.parquet", "d.txt"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=st.binary(max_size=400), name=st.sampled_from(NAMES))
def test_random_bytes_raise_only_our_error(raw, name):
    try:
        t = read_table(raw, name=name)
        prepare_data(DataConfig(source=name), table=t, raise_on_problems=False)
    except WorkbenchError as e:
        assert str(e)


cells = st.one_of(st.text(max_size=12), st.integers(-5, 5), st.none(), st.floats(allow_nan=True, allow_infinity=False))


MISSING = {"", "nan", "NaN", "NA", "N/A", "null", "None"}  # never a class (issue 12 item 3)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(st.lists(cells, min_size=1, max_size=4), min_size=0, max_size=30),
       sep=st.sampled_from([",", ";", "\t", "|"]), enc=st.sampled_from(["utf-8", "utf-8-sig", "cp1252", "latin-1"]),
       header=st.sampled_from([["text", "label"], ["review", "class", "x"], ["a"], ["text", "label", "text"]]))
@example(rows=[[f"t{i}", lab] for i, lab in enumerate(["pos", "neg", "NaN", "None", float("nan")] * 4)], sep=",",
         enc="utf-8", header=["text", "label"])
def test_i12_10_random_tables_load_or_fail_with_a_message(rows, sep, enc, header):
    """Either a `WorkbenchError` with a message, or a report whose problems leave no data, or a usable
    split in which every row read is accounted for (used or dropped with its reason) and no missing-value
    spelling became a class."""
    lines = [sep.join(header)] + [sep.join("" if c is None else str(c) for c in r) for r in rows]
    raw = "\n".join(lines).encode(enc, errors="replace")
    try:
        t = read_table(raw, name="fuzz.csv")
        prep = prepare_data(DataConfig(source="fuzz.csv"), table=t, raise_on_problems=False)
    except WorkbenchError as e:
        assert str(e)
        return
    rep = prep.report
    assert all(isinstance(p, str) and p for p in rep.problems)
    assert not any(f"{m!r}" in p for m in MISSING - {""} for p in rep.problems), rep.problems
    splits = (prep.train, prep.validation, prep.test)
    if rep.problems:
        assert prep.labels == [] and all(len(f) == 0 for f in splits)
        return
    assert len(prep.labels) >= 2 and len(prep.train) > 0 and not set(prep.labels) & MISSING, prep.labels
    assert sum(map(len, splits)) == rep.rows_used
    assert rep.rows_used + sum(len(v) for v in rep.dropped.values()) == rep.rows_read == len(t.df)
    for f in splits:
        assert (f["label"].map(dict(enumerate(prep.labels))) == f["label_name"]).all()


def test_shell_metacharacters_in_paths_and_names_run_no_shell(tiny_bert, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a shell would run `touch PWNED` here
    marker = tmp_path / "PWNED"
    weird = tmp_path / "dir $(touch PWNED); `touch PWNED` & |"
    weird.mkdir()
    data = weird / "my data;$(id).csv"
    make_sentiment_frame(60).to_csv(data, index=False)
    cfg = RunConfig.from_dict({"name": "run $(touch x) ; echo", "output_dir": str(weird / "runs"),
                               "model": {"name_or_path": str(tiny_bert)}, "data": {"source": str(data)},
                               "training": {"max_steps": 3, "save_strategy": "no", "eval_strategy": "no"}})
    h = launch(cfg)
    assert h.wait(timeout=180)["state"] == "completed", h.run.log_file.read_text()[-2000:]
    assert h.run.path.name == "run $(touch x) ; echo"
    assert not marker.exists() and not (tmp_path / "x").exists()


def _kill_cfg(model, data, out, name):
    return RunConfig.from_dict({
        "name": name, "output_dir": str(out), "evaluate_before": False,
        "model": {"name_or_path": str(model)}, "data": {"source": str(data)},
        "training": {"max_steps": 1500, "learning_rate": 1e-3, "per_device_train_batch_size": 8, "logging_steps": 1,
                     "save_strategy": "steps", "save_steps": 7, "save_total_limit": 2, "eval_strategy": "no",
                     "bf16": False},
        "peft": {"freeze_embeddings": False}})  # a tiny random model must train its embeddings


def _final_loss(run: RunDir) -> float:
    m = run.metrics().query("kind == 'train'").drop_duplicates("step", keep="last")
    return float(m.set_index("step")["loss"].loc[1500])


@pytest.mark.slow
def test_sigkill_twenty_times_then_resume_matches_uninterrupted(tiny_bert, tmp_path):
    data = tmp_path / "d.csv"
    make_sentiment_frame(120).to_csv(data, index=False)
    ref_cfg = _kill_cfg(tiny_bert, data, tmp_path, "straight")
    ref = new_run_dir(ref_cfg)
    run_training(ref_cfg, ref, progress=False)

    run = new_run_dir(_kill_cfg(tiny_bert, data, tmp_path, "killed"))
    rng = random.Random(1234)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    resumed_from = []
    for i in range(20):
        cmd = [sys.executable, "-m", "workbench.worker", str(run.path)] + (["--resume"] if i else [])
        before = run.latest_checkpoint()
        resumed_from.append(before.name if before else None)
        if before is not None:  # what a resume will load must be complete
            assert {"model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json"} <= \
                {p.name for p in before.iterdir()}
        with open(run.log_file, "ab") as log:
            p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        # Kill at a random moment once training is under way (imports take a few seconds).
        deadline = time.time() + 60
        while time.time() < deadline and p.poll() is None:
            st = run.status()
            if st.get("pid") == p.pid and st.get("phase") == "training":
                break
            time.sleep(0.05)
        time.sleep(rng.uniform(0.2, 1.2))
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
        p.wait()
        if run.status().get("state") == "completed":
            break
    st = run.status()
    if st.get("state") != "completed":
        subprocess.run([sys.executable, "-m", "workbench.worker", str(run.path), "--resume"], env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert run.status()["state"] == "completed", run.log_file.read_text()[-3000:]
    assert len({r for r in resumed_from if r}) >= 5  # the kills really interrupted at many points
    assert not list(run.checkpoints_dir.glob("checkpoint-*/.tmp*"))
    assert abs(_final_loss(run) - _final_loss(ref)) < 1e-3
