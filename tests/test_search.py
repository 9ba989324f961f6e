"""Hyper-parameter search with Optuna (issue 17, part 5): the space's messages, a 3-trial search that
writes best.yaml, a search killed mid-way and resumed without losing or repeating a trial, pruning that
stops a run, and the dashboard's Search page. Every trial is a real run of a tiny BERT in its own process
(a few steps each: most of a trial's time is the process starting)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

optuna = pytest.importorskip("optuna")

from conftest import make_sentiment_frame  # noqa: E402
from workbench.config import RunConfig  # noqa: E402
from workbench.rundir import RunDir  # noqa: E402
from workbench.search import SearchError, eval_scores, load_study, run_search  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TS = optuna.trial.TrialState


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("search-data") / "d.csv"
    make_sentiment_frame(120).to_csv(p, index=False)
    return p


def _raw(model, data, out, study, max_steps=6, **search) -> dict:
    return {"evaluate_before": False, "output_dir": str(out),
            "model": {"name_or_path": str(model)}, "data": {"source": str(data)},
            "training": {"max_steps": max_steps, "per_device_train_batch_size": 8, "logging_steps": 2,
                         "eval_strategy": "steps", "eval_steps": 2, "save_strategy": "no", "bf16": False,
                         "report_to": []},
            "search": {"study_name": study, "n_trials": 3, "pruner": "none",
                       "space": {"training.learning_rate": {"low": "1e-4", "high": "1e-2", "log": True},
                                 "training.per_device_train_batch_size": [4, 8]}, **search}}


def _problems(space: dict, **training) -> list[str]:
    cfg = RunConfig.from_dict({"search": {"space": space}, "training": training})
    return cfg.validate()


def test_space_problems_name_the_key_and_the_fix():
    empty = _problems({"training.learning_rate": {"low": 1e-3, "high": 1e-3}})
    assert any("search.space.training.learning_rate: the range is empty (low=0.001 = high=0.001)" in p
               and "make low < high" in p for p in empty), empty
    backwards = _problems({"peft.lora.r": {"low": 16, "high": 4}})
    assert any("search.space.peft.lora.r: the range is empty (low=16 > high=4)" in p for p in backwards), backwards
    unknown = _problems({"training.learnig_rate": [1e-4]})
    assert any("`training.learnig_rate` is not a config field; did you mean `training.learning_rate`?" in p
               for p in unknown), unknown
    wrong = _problems({"peft.method": ["lora", "fancy"], "training.per_device_train_batch_size": {"low": 4.5,
                                                                                                  "high": 32},
                       "peft.lora.r": [], "training.weight_decay": {"low": 0, "high": 0.1, "log": True},
                       "training.optim": {"low": 1, "high": 2}, "model.dropout": [0.1, 1.5]})
    text = "\n".join(wrong)
    assert "search.space.peft.method: 'fancy' is not a value of `peft.method`: expected one of 'full'" in text
    assert "search.space.training.per_device_train_batch_size: `training.per_device_train_batch_size` is a " \
           "whole number" in text
    assert "search.space.peft.lora.r is an empty list of choices" in text
    assert "search.space.training.weight_decay: log=true needs low > 0" in text
    assert "search.space.training.optim: `training.optim` is str, not a number" in text
    assert "search.space.model.dropout: 1.5 is not a value of `model.dropout`" in text and "< 1" in text
    assert len(wrong) == 6, wrong
    metric = RunConfig.from_dict({"search": {"space": {"peft.lora.r": [4, 8]}, "metric": "bleu"}}).validate()
    assert any("search.metric='bleu' is not a metric of text-classification" in p for p in metric), metric
    no_eval = _problems({"peft.lora.r": [4, 8]}, eval_strategy="no")
    assert any("training.eval_strategy is 'no'" in p for p in no_eval), no_eval
    # a good space, and a config without one, have no problems
    assert _problems({"training.learning_rate": {"low": "1e-5", "high": "1e-3", "log": True},
                      "peft.method": ["lora", "full"], "peft.lora.target_modules": ["query,value", "query"],
                      "training.num_train_epochs": {"low": 1, "high": 4}}) == []
    assert RunConfig().validate() == []


def test_the_command_prints_the_message_not_a_traceback(tmp_path, capsys):
    from workbench.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"search": {"space": {"training.learning_rate": {"low": 1e-3, "high": 1e-5}}}}))
    assert main(["search", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "search.space.training.learning_rate: the range is empty" in err and "Traceback" not in err


def test_without_optuna_the_message_says_how_to_install(monkeypatch, tiny_bert, data, tmp_path):
    monkeypatch.setitem(sys.modules, "optuna", None)  # `import optuna` raises ImportError
    with pytest.raises(SearchError, match="pip install optuna"):
        run_search(RunConfig.from_dict(_raw(tiny_bert, data, tmp_path, "x")), say=lambda s: None)


def test_three_trials_complete_and_the_best_config_is_written(tiny_bert, data, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    lines: list[str] = []
    cfg = RunConfig.from_dict(_raw(tiny_bert, data, tmp_path / "runs", "three"))
    res = run_search(cfg, poll=0.2, say=lines.append)
    trials = res.best and load_study(tmp_path / "runs" / "searches" / "three").trials
    assert [t.state for t in trials] == [TS.COMPLETE] * 3, lines
    for t in trials:  # each trial is a normal, completed run whose value is its best validation accuracy
        run = RunDir(t.user_attrs["run"])
        assert run.name == f"three-trial-{t.number}" and run.status()["state"] == "completed"
        assert t.value == max(eval_scores(run, "accuracy"))
        assert run.config().training.learning_rate == pytest.approx(t.params["training.learning_rate"])
        assert run.config().search.space == {}  # a trial is a plain run
    best_text = res.best_config.read_text()
    assert res.best_config == tmp_path / "runs" / "searches" / "three" / "best.yaml"
    assert "search:" not in best_text
    best = RunConfig.from_yaml(res.best_config).check()
    assert best.training.learning_rate == pytest.approx(res.best.params["training.learning_rate"])
    assert best.training.per_device_train_batch_size == res.best.params["training.per_device_train_batch_size"]
    assert any(line.startswith("train it fully: workbench train ") and "best.yaml --name three-best" in line
               for line in lines), lines
    # the same command again finds the study done: no trial more
    again = run_search(cfg, poll=0.2, say=lines.append)
    assert again.counts["complete"] == 3 and len(load_study(again.folder).trials) == 3


def test_a_killed_search_resumes_without_losing_or_repeating_a_trial(tiny_bert, data, tmp_path):
    runs = tmp_path / "runs"
    raw = _raw(tiny_bert, data, runs, "killed", max_steps=20)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen([sys.executable, "-m", "workbench", "search", str(tmp_path / "c.yaml")], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    db = runs / "searches" / "killed"
    try:
        end = time.monotonic() + 240
        while time.monotonic() < end:  # kill the search once trial 0 is complete and trial 1's run has started
            try:
                trials = load_study(db).trials
            except SearchError:  # not made yet
                trials = []
            if len(trials) >= 2 and trials[0].state == TS.COMPLETE and "run" in trials[1].user_attrs:
                break
            assert proc.poll() is None, proc.stdout.read().decode()
            time.sleep(0.3)
        else:
            pytest.fail("the search did not reach its second trial")
        os.killpg(proc.pid, signal.SIGKILL)  # the search and its process group; trial runs have their own
        proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert load_study(db).trials[1].state == TS.RUNNING  # left behind by the killed search

    lines: list[str] = []
    run_search(RunConfig.from_dict(raw), poll=0.2, say=lines.append)
    trials = load_study(db).trials
    assert [t.state for t in trials] == [TS.COMPLETE] * 3, lines  # exactly n_trials, none failed or lost
    assert trials[1].user_attrs["pid"] == os.getpid()  # the resumed search followed the run it found running
    assert any("trial 1: left running by a search that was stopped" in line for line in lines), lines
    made = sorted(p.name for p in runs.iterdir() if (p / "config.yaml").exists())
    assert made == ["killed-trial-0", "killed-trial-1", "killed-trial-2"]  # one run per trial, none repeated
    assert all(RunDir(runs / m).status()["state"] == "completed" for m in made)


def test_a_resumed_search_draws_new_parameters_not_the_first_trials_again(tiny_bert, data, tmp_path, monkeypatch):
    """Each `workbench search` process makes its own sampler: seeded only by training.seed, the resumed one drew
    trial 0's values again (a killed 12-trial search re-ran trial 0's parameters as trial 6)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    raw = _raw(tiny_bert, data, tmp_path / "runs", "again", max_steps=2, n_trials=1)
    run_search(RunConfig.from_dict(raw), poll=0.1, say=lambda s: None)
    raw["search"]["n_trials"] = 2  # the same command again, asked for one trial more
    res = run_search(RunConfig.from_dict(raw), poll=0.1, say=lambda s: None)
    first, second = load_study(res.folder).trials
    assert first.state == second.state == TS.COMPLETE
    assert first.params != second.params


def test_a_dead_trial_fails_and_its_parameters_run_again(tiny_bert, data, tmp_path):
    """A trial left RUNNING whose run died with the search: failed with the run's error, parameters queued."""
    from workbench.search import _Context, study_folder
    from workbench.rundir import new_run_dir

    cfg = RunConfig.from_dict(_raw(tiny_bert, data, tmp_path / "runs", "dead"))
    folder = study_folder(cfg)
    folder.mkdir(parents=True)
    study = optuna.create_study(study_name="dead", storage=f"sqlite:///{folder / 'study.db'}", direction="maximize")
    trial = study.ask({"training.learning_rate": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)})
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    trial.set_user_attr("host", __import__("socket").gethostname())
    trial.set_user_attr("pid", int(gone.stdout))  # a search process that no longer exists
    run = new_run_dir(RunConfig.from_dict({**_raw(tiny_bert, data, tmp_path / "runs", "dead"), "search": {},
                                           "name": "dead-trial-0"}))
    run.update_status(state="running", pid=int(gone.stdout))  # its run died too
    ctx = _Context(optuna, study, cfg, "accuracy", True, [], 0.1, lambda s: None)
    ctx.recover()
    old, queued = study.get_trials()
    assert old.state == TS.FAIL and "ended without finishing" in old.user_attrs["error"]
    assert queued.state == TS.WAITING and queued.user_attrs["retry_of"] == 0
    again = study.ask({"training.learning_rate": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)})
    assert again.number == 1 and again.params == old.params  # the next trial runs the same parameters


def test_pruning_stops_the_run(tiny_bert, data, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")

    class Always(optuna.pruners.BasePruner):
        def prune(self, study, trial):
            return True

    raw = _raw(tiny_bert, data, tmp_path / "runs", "pruned", max_steps=2000, n_trials=1)
    lines: list[str] = []
    res = run_search(RunConfig.from_dict(raw), pruner=Always(), poll=0.1, say=lines.append)
    (trial,) = load_study(res.folder).trials
    assert trial.state == TS.PRUNED and trial.user_attrs["pruned_at"] == 0, lines
    st = RunDir(trial.user_attrs["run"]).status()
    assert st["state"] == "stopped" and st["step"] < 2000
    assert res.best is None and not (res.folder / "best.yaml").exists()


def test_the_search_page_shows_the_study_and_trains_the_best_config(tmp_path, tiny_bert, data, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from workbench.search import _Context, study_folder

    runs = tmp_path / "runs"
    cfg = RunConfig.from_dict(_raw(tiny_bert, data, runs, "shown"))
    folder = study_folder(cfg)
    folder.mkdir(parents=True)
    study = optuna.create_study(study_name="shown", storage=f"sqlite:///{folder / 'study.db'}", direction="maximize")
    study.set_user_attr("metric", "accuracy")
    dist = {"training.learning_rate": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True),
            "training.per_device_train_batch_size": optuna.distributions.CategoricalDistribution([4, 8])}
    for lr, bs, acc in [(1e-3, 4, 0.6), (3e-3, 8, 0.8), (2e-4, 4, 0.55)]:
        study.enqueue_trial({"training.learning_rate": lr, "training.per_device_train_batch_size": bs})
        t = study.ask(dist)
        t.set_user_attr("run", str(runs / f"shown-trial-{t.number}"))
        study.tell(t, acc)
    failed = study.ask(dist)
    failed.set_user_attr("error", "the training loss became nan")
    study.tell(failed, state=TS.FAIL)
    _Context(optuna, study, cfg, "accuracy", True, [], 0.1, lambda s: None).write_best()

    started = []
    monkeypatch.setenv("WORKBENCH_RUNS", str(runs))
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import dashboard.search
    monkeypatch.setattr(dashboard.search, "launch", lambda c: started.append(c) or _Handle(c))
    at = AppTest.from_string("from dashboard import search\nsearch.page()", default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.selectbox(key="study").value == "shown"
    charts = [c for c in at.get("plotly_chart")]
    assert len(charts) == 3  # history, importances, parallel coordinates
    table = next(d.value for d in at.dataframe if "trial" in d.value.columns)
    assert list(table["state"]) == ["complete"] * 3 + ["fail"]
    assert table.loc[1, "open"] == "train?run=shown-trial-1"
    assert any("trial 3 failed: the training loss became nan" in e.value for e in at.error)
    assert any("Trial **1**" in m.value for m in at.markdown)
    at.number_input(key="best_steps").set_value(50)
    at.button(key="best_train").click().run()
    assert not at.exception, [e.value for e in at.exception]
    (launched,) = started
    assert launched.training.learning_rate == pytest.approx(3e-3) and launched.training.max_steps == 50
    assert launched.training.per_device_train_batch_size == 8 and launched.name == "shown-best"


def test_the_search_page_without_studies_says_how_to_start(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("WORKBENCH_RUNS", str(tmp_path))
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    at = AppTest.from_string("from dashboard import search\nsearch.page()", default_timeout=60).run()
    assert not at.exception
    assert any("No searches" in i.value for i in at.info)
    assert any("workbench search CONFIG.yaml" in c.value for c in at.code)


class _Handle:
    def __init__(self, cfg):
        self.run = RunDir(Path(cfg.output_dir) / (cfg.name or "x"))


def test_a_step_that_does_not_divide_the_range_is_a_problem():
    def problems(spec):
        return " ".join(RunConfig.from_dict({"search": {"space": {"training.per_device_train_batch_size": spec}}})
                        .validate())
    assert "step=5 is larger than the range 4 to 6" in problems({"low": 4, "high": 6, "step": 5})
    assert "not a whole number of steps of 4" in problems({"low": 4, "high": 13, "step": 4})
    assert problems({"low": 4, "high": 12, "step": 4}) == ""


def test_a_shared_study_cannot_point_the_search_at_another_folder(tmp_path):
    from types import SimpleNamespace

    from workbench.search import _Context
    base = RunConfig.from_dict({"output_dir": str(tmp_path / "runs")})
    s = _Context.__new__(_Context)
    s.base, s.study = base, SimpleNamespace(study_name="st")
    own = (tmp_path / "runs" / "st-trial-3").resolve()
    for recorded in ("/", str(tmp_path / "elsewhere" / "st-trial-3"), str(tmp_path / "runs" / "other"), 7):
        assert s.run_path(SimpleNamespace(number=3, user_attrs={"run": recorded})) == own
    assert s.run_path(SimpleNamespace(number=3, user_attrs={"run": str(own) + "-2"})) == Path(str(own) + "-2")


def test_opening_a_study_file_another_process_is_creating_is_not_a_traceback(tmp_path):
    # A search starting up creates study.db's tables while the dashboard (or a second machine's search) opens
    # the same file: the loser of that race got sqlite's "table alembic_version already exists".
    folder = tmp_path / "searches" / "x"
    folder.mkdir(parents=True)
    (folder / "study.db").touch()
    code = ("from workbench.search import load_study, SearchError\n"
            f"try:\n    load_study({str(folder)!r})\nexcept SearchError as e:\n    print('SearchError:', e)\n")
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
             for _ in range(4)]
    outs = [p.communicate(timeout=120)[0].decode() for p in procs]
    assert all("Traceback" not in o and "holds no study named 'x'" in o for o in outs), outs
