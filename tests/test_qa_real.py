"""Extractive QA end to end on the real built-in MiniLM: a tiny SQuAD-format English file made here, trained for a
short CPU budget (about a minute on 2 cores). Slow; still run in CI."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from workbench.config import RunConfig
from workbench.rundir import RunDir, new_run_dir
from workbench.training import run_training

FIRST = ["Anna", "Boris", "Clara", "David", "Elena", "Felix", "Greta", "Hugo", "Irene", "Jonas", "Karla", "Leon",
         "Mira", "Nils", "Olga", "Paul", "Rosa", "Simon", "Tara", "Viktor"]
LAST = ["Keller", "Novak", "Berg", "Lindqvist", "Moreau", "Costa", "Fischer", "Horvat", "Janssen", "Kowalski",
        "Larsen", "Meyer", "Petrov", "Rossi", "Schmidt", "Varga"]
CITIES = ["Lisbon", "Vienna", "Prague", "Oslo", "Dublin", "Krakow", "Lyon", "Porto", "Bergen", "Ghent", "Turin",
          "Leipzig", "Utrecht", "Tallinn", "Seville", "Zagreb"]
SUBJECTS = ["chemistry", "history", "linguistics", "geology", "mathematics", "architecture", "economics",
            "astronomy", "philosophy", "biology"]
JOBS = ["journalist", "pharmacist", "carpenter", "translator", "librarian", "surgeon", "pilot", "photographer",
        "engineer", "teacher"]
SCHOOLS = ["Northfield College", "the Royal Academy", "Westbrook University", "the Polytechnic Institute",
           "Saint Mary's College", "Lakeside University"]


def _paragraph(rng: random.Random) -> dict:
    """A short biography and three questions about it; the birth and work cities differ, so "where" questions
    must be read, not guessed from the answer's kind."""
    name = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
    born, worked = rng.sample(CITIES, 2)
    year, subject, job, school = str(rng.randint(1900, 1999)), rng.choice(SUBJECTS), rng.choice(JOBS), \
        rng.choice(SCHOOLS)
    facts = [f"{name} was born in {born} in {year}.", f"{name.split()[0]} studied {subject} at {school}.",
             f"Later {name.split()[0]} worked as a {job} in {worked}."]
    if rng.random() < 0.5:  # the order of the facts varies, so position does not give the answer away
        facts = [facts[1], facts[0], facts[2]]
    context = " ".join(facts)
    qas = [(f"Where was {name} born?", born), (f"In which year was {name} born?", year),
           (f"What did {name} study?", subject), (f"Which school did {name} attend?", school),
           (f"What did {name} work as?", job), (f"In which city did {name} work?", worked)]
    picked = rng.sample(qas, 3)
    return {"context": context, "qas": [
        {"id": f"{name}-{i}-{rng.random():.6f}", "question": q,
         "answers": [{"text": a, "answer_start": context.index(a)}]} for i, (q, a) in enumerate(picked)]}


def _squad_file(path: Path, n_paragraphs: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    paragraphs = [_paragraph(rng) for _ in range(n_paragraphs)]
    for p in paragraphs:  # the offsets are right (the reader checks them too, but this file is the test's own)
        for qa in p["qas"]:
            a = qa["answers"][0]
            assert p["context"][a["answer_start"]:a["answer_start"] + len(a["text"])] == a["text"]
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": "people", "paragraphs": paragraphs}]}),
                    encoding="utf-8")
    return path


@pytest.mark.slow
def test_minilm_learns_squad_format_questions_end_to_end(tmp_path):
    f = _squad_file(tmp_path / "people.json", 100)  # 300 questions
    cfg = RunConfig.from_dict({
        "task": "question-answering", "output_dir": str(tmp_path / "runs"), "name": "qa-minilm",
        "model": {"name_or_path": "minilm"},
        "data": {"source": str(f), "max_length": 64, "doc_stride": 16, "validation_size": 0.1, "test_size": 0.2},
        "training": {"num_train_epochs": 4, "learning_rate": 2e-4, "per_device_train_batch_size": 16,
                     "logging_steps": 5, "save_strategy": "no", "eval_strategy": "epoch"},
        "peft": {"method": "full"}})
    run = RunDir(run_training(cfg, new_run_dir(cfg), progress=False).path)
    assert run.status()["state"] == "completed"
    ev = run.evaluation()
    before, after = ev["before"], ev["after"]
    print(f"test F1 {before['f1']:.3f} -> {after['f1']:.3f}, EM {before['exact_match']:.3f} -> "
          f"{after['exact_match']:.3f} (n {after['n']})")
    assert after["n"] == before["n"] >= 45
    assert after["f1"] > before["f1"] + 0.4 and after["f1"] > 0.6, (before, after)
    assert after["exact_match"] > before["exact_match"] + 0.3, (before, after)
    pred = run.predictions("after")
    for col in ("row", "id", "question", "context", "gold", "predicted", "exact_match", "f1", "error_type",
                "pred_start", "pred_end", "score", "windows", "question_type", "context_length"):
        assert col in pred, col
    assert len(pred) == after["n"]
    assert set(pred["error_type"]) <= {"correct", "no answer given", "wrong place", "too long", "too short",
                                       "overlapping"}
    ok = pred[pred["exact_match"] == 1.0]
    assert len(ok) and all(r["context"][r["pred_start"]:r["pred_end"]] == r["predicted"] for _, r in ok.iterrows())
    assert "eval_span_f1" in run.metrics()  # validation scored each epoch
