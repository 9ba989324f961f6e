"""The tutorial notebooks in notebooks/: committed clean, shaped like lessons, and executable.

Fast checks (every run): no outputs or execution counts are committed; the first cell is the
parameters cell (tagged `parameters`, holds QUICK); prose comes before the first code after it;
the only imports are workbench and display libraries; each notebook has an ipywidgets control and an
exercise whose solution is a collapsed cell under a "Solution" heading, which "Run All" skips (its code
runs only under `if SHOW_SOLUTIONS:`, False in the parameters cell) so a student tries first.

Slow check (`-m slow`): each notebook executed top to bottom with nbclient in a temp folder, with
`QUICK = True` and `SHOW_SOLUTIONS = True` (the solutions are tested too) injected after the parameters
cell (papermill's convention, done by hand with nbformat) and WORKBENCH_RUNS in a temp dir. Times go to
artifacts/notebook_times.json.
"""

from __future__ import annotations

import ast
import asyncio
import json
import os
import re
import time
import warnings
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NB_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NB_DIR.glob("[0-9][0-9]-*.ipynb"))
LESSONS = [p for p in NOTEBOOKS if not p.stem.endswith("-solutions")]
CELL_TIMEOUT = 600  # seconds; a QUICK notebook takes 1-3 minutes in all on 2 CPU cores
# Display libraries a notebook may import besides workbench (the brief for the course notebooks).
ALLOWED_IMPORTS = {"workbench", "plotly", "ipywidgets", "IPython", "pandas", "numpy",
                   "time", "math", "os", "pathlib", "tempfile", "json"}
# Notebooks that show the library's own pieces next to the formulas may also use torch/transformers.
EXTRA_IMPORTS = {"02": {"torch", "transformers"}, "04": {"torch", "transformers"}, "07": {"torch", "transformers"},
                 "09": {"torch", "transformers"}, "11": {"torch", "transformers"},
                 "12": {"torch"},
                 # 13 shows the exported folder loaded by plain transformers and the server called over HTTP
                 "13": {"transformers", "httpx"}}


NUDGE_EVERY = 10  # seconds; see NudgingClient
STALL_WARNING = 240  # seconds; a QUICK cell that takes longer is reported as a warning (see the test)


def _ids(paths: list[Path]) -> list[str]:
    return [p.stem for p in paths]


def load(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def parameters_cell(nb: nbformat.NotebookNode) -> int:
    for i, cell in enumerate(nb.cells):
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            return i
    raise AssertionError("no cell tagged `parameters`")


def inject_parameters(nb: nbformat.NotebookNode, values: dict) -> nbformat.NotebookNode:
    """Insert a cell tagged `injected-parameters` right after the parameters cell (as papermill does)."""
    i = parameters_cell(nb)
    src = "# Parameters injected by the test\n" + "\n".join(f"{k} = {v!r}" for k, v in values.items())
    cell = nbformat.v4.new_code_cell(src, metadata={"tags": ["injected-parameters"]})
    cell["id"] = "injected-parameters"
    nb.cells.insert(i + 1, cell)
    return nb


def _imports(source: str) -> set[str]:
    # IPython magics and shell lines are not Python; notebooks here should not need them anyway.
    lines = [ln for ln in source.splitlines() if not ln.lstrip().startswith(("%", "!"))]
    tree = ast.parse("\n".join(lines))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


# --- fast ------------------------------------------------------------------------------------------
def test_the_course_is_there():
    numbers = [p.name[:2] for p in LESSONS]
    assert numbers == [f"{i:02d}" for i in range(1, 15)], f"expected notebooks 01..14, found {numbers}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_committed_without_outputs(path):
    nb = load(path)
    nbformat.validate(nb)
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not dirty, f"{path.name}: cells {dirty} have outputs or execution counts; clear them before committing"
    assert "widgets" not in nb.metadata, f"{path.name}: saved widget state in the metadata; clear it"


@pytest.mark.parametrize("path", LESSONS, ids=_ids(LESSONS))
def test_parameters_first_then_prose(path):
    nb = load(path)
    assert parameters_cell(nb) == 0, f"{path.name}: the first cell must be the parameters cell"
    first = nb.cells[0]
    assert first.cell_type == "code" and re.search(r"^QUICK\s*=\s*(True|False)", first.source, re.M), \
        f"{path.name}: the parameters cell must set QUICK = True/False"
    assert nb.cells[1].cell_type == "markdown" and nb.cells[1].source.lstrip().startswith("# "), \
        f"{path.name}: a title and an introduction in prose must follow the parameters"


@pytest.mark.parametrize("path", LESSONS, ids=_ids(LESSONS))
def test_imports_only_workbench_and_display_libraries(path):
    nb = load(path)
    allowed = ALLOWED_IMPORTS | EXTRA_IMPORTS.get(path.name[:2], set())
    used = set().union(*(_imports(c.source) for c in nb.cells if c.cell_type == "code"))
    assert "workbench" in used
    assert used <= allowed, f"{path.name} imports {sorted(used - allowed)}: put that logic in the package"


@pytest.mark.parametrize("path", LESSONS, ids=_ids(LESSONS))
def test_has_a_widget_and_an_exercise_with_a_collapsed_solution(path):
    nb = load(path)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert re.search(r"^\s*(import ipywidgets|from ipywidgets)", code, re.M), f"{path.name}: no ipywidgets control"
    assert re.search(r"\.observe\(|\.on_click\(|interactive\(", code), f"{path.name}: widgets are never wired up"
    headings = [(i, c.source) for i, c in enumerate(nb.cells) if c.cell_type == "markdown"]
    exercise = [i for i, s in headings if re.search(r"^#+\s*Exercise", s, re.M)]
    assert exercise, f"{path.name}: no '## Exercise' heading"
    solutions_nb = path.with_name(path.stem + "-solutions.ipynb")
    if solutions_nb.exists():
        return
    solution = [i for i, s in headings if re.search(r"^#+\s*Solution", s, re.M) and i >= exercise[0]]
    assert solution, f"{path.name}: no 'Solution' heading after the exercise (or a {solutions_nb.name})"
    hidden = [c for c in nb.cells[solution[0] + 1:]
              if c.cell_type == "code" and c.metadata.get("jupyter", {}).get("source_hidden")]
    assert hidden, f"{path.name}: the solution code must be collapsed (metadata jupyter.source_hidden: true)"


def solution_cells(nb: nbformat.NotebookNode) -> list[int]:
    """Code cells that hold a solution: collapsed ones, and all under a "Solution" heading up to the next heading."""
    found, inside = [], False
    for i, c in enumerate(nb.cells):
        if c.cell_type == "markdown" and re.search(r"^#+\s", c.source, re.M):
            inside = bool(re.search(r"^#+\s*Solution", c.source, re.M))
        elif c.cell_type == "code" and (inside or c.metadata.get("jupyter", {}).get("source_hidden")):
            found.append(i)
    return found


def _guarded(source: str) -> bool:
    """True when every statement of `source` is inside `if SHOW_SOLUTIONS:` (comments aside)."""
    body = ast.parse(source).body
    return len(body) == 1 and isinstance(body[0], ast.If) and isinstance(body[0].test, ast.Name) \
        and body[0].test.id == "SHOW_SOLUTIONS"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_solutions_do_not_run_under_run_all(path):
    # A solution that runs under "Run All" prints its answer below the exercise before the student has tried.
    nb = load(path)
    cells = solution_cells(nb)
    if path.stem.endswith("-solutions"):
        return
    assert cells or path not in LESSONS, f"{path.name}: no solution cell found"
    assert re.search(r"^SHOW_SOLUTIONS\s*=\s*False\b", nb.cells[parameters_cell(nb)].source, re.M), \
        f"{path.name}: the parameters cell must set SHOW_SOLUTIONS = False"
    running = [i for i in cells if not _guarded(nb.cells[i].source)]
    assert not running, f"{path.name}: solution cells {running} run under Run All; put their code under " \
                        f"`if SHOW_SOLUTIONS:`"


def test_injection_overrides_quick():
    nb = inject_parameters(load(LESSONS[0]), {"QUICK": True})
    assert nb.cells[1].metadata["tags"] == ["injected-parameters"] and "QUICK = True" in nb.cells[1].source


# --- slow: execute them ----------------------------------------------------------------------------
def notebook_client(nb: nbformat.NotebookNode, cwd: Path, timeout: int = CELL_TIMEOUT):
    """An nbclient NotebookClient that survives ipykernel 7's stranded shell requests.

    With ipykernel 7.x (pyproject now pins < 7 for this) an `execute_request` that reaches the kernel while it
    is sending a reply on the
    same shell socket can stay unread: the kernel sits idle, nbclient waits for a reply until the cell
    timeout (ipython/ipykernel#1554, microsoft/vscode-jupyter#17228; seen here about once in ten
    notebooks). Any later message on the shell socket wakes the kernel's reader, and a browser front end
    sends such messages all the time; nbclient sends none while it waits. So this client sends a
    harmless `kernel_info_request` every NUDGE_EVERY seconds while a cell runs (its replies carry
    another parent id, which nbclient skips).
    """
    from nbclient import NotebookClient

    class NudgingClient(NotebookClient):
        async def async_execute_cell(self, cell, cell_index, execution_count=None, store_history=True):
            nudge = asyncio.ensure_future(self._nudge())
            start = time.monotonic()
            try:
                return await super().async_execute_cell(cell, cell_index, execution_count, store_history)
            finally:
                nudge.cancel()
                # wall time from sending the request to its reply (a stranded request shows here, not in the
                # kernel's own timestamps, which start when the kernel reads it)
                cell.setdefault("metadata", {})["wall_seconds"] = round(time.monotonic() - start, 2)

        async def _nudge(self) -> None:
            while True:
                await asyncio.sleep(NUDGE_EVERY)
                if self.kc is not None:
                    self.kc.kernel_info()

    return NudgingClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(cwd)}})


@pytest.mark.slow
@pytest.mark.parametrize("path", LESSONS, ids=_ids(LESSONS))
def test_notebook_runs_top_to_bottom(path, tmp_path):
    from nbclient.exceptions import CellExecutionError

    runs = tmp_path / "runs"
    nb = inject_parameters(load(path), {"QUICK": True, "SHOW_SOLUTIONS": True, "RUNS_DIR": str(runs)})
    env_before = os.environ.get("WORKBENCH_RUNS")
    os.environ["WORKBENCH_RUNS"] = str(runs)  # the kernel inherits it: nothing lands in the repo's runs/
    start = time.time()
    try:
        client = notebook_client(nb, tmp_path)
        try:
            client.execute()
        except CellExecutionError as e:
            pytest.fail(f"{path.name} failed:\n{str(e)[-4000:]}")
    finally:
        if env_before is None:
            os.environ.pop("WORKBENCH_RUNS", None)
        else:
            os.environ["WORKBENCH_RUNS"] = env_before
    elapsed = time.time() - start
    slowest = _slowest_cell(nb)
    in_cells = sum(float(c.get("metadata", {}).get("wall_seconds", 0)) for c in nb.cells)
    _record_time(path.name, elapsed, slowest, in_cells)
    if slowest and slowest[1] > STALL_WARNING:
        warnings.warn(f"{path.name}: cell {slowest[0]} took {slowest[1]:.0f} s (the whole notebook {elapsed:.0f} s); "
                      f"a kernel that stopped reading its shell socket looks like this", stacklevel=1)
    if elapsed - in_cells > STALL_WARNING:
        warnings.warn(f"{path.name}: {elapsed - in_cells:.0f} s of {elapsed:.0f} s went outside the cells (kernel "
                      f"start-up or shutdown)", stacklevel=1)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    # Runs end with the notebook: nothing is left running in the background.
    for status in runs.glob("*/status.json"):
        assert json.loads(status.read_text())["state"] in ("completed", "stopped"), status


def _slowest_cell(nb: nbformat.NotebookNode) -> tuple[int, float] | None:
    """(index, seconds) of the cell that took longest: the client's wall time per cell, else nbclient's timestamps."""
    from datetime import datetime

    spans = []
    for i, c in enumerate(nb.cells):
        if "wall_seconds" in c.get("metadata", {}):
            spans.append((i, float(c.metadata["wall_seconds"])))
            continue
        t = c.get("metadata", {}).get("execution", {})
        start, end = t.get("iopub.execute_input") or t.get("shell.execute_reply.started"), t.get("shell.execute_reply")
        if start and end:
            spans.append((i, (datetime.fromisoformat(end.rstrip("Z")) -
                              datetime.fromisoformat(start.rstrip("Z"))).total_seconds()))
    return max(spans, key=lambda s: s[1]) if spans else None


def _record_time(name: str, seconds: float, slowest: tuple[int, float] | None, in_cells: float) -> None:
    """Times go to artifacts/notebook_times.json, under a lock: pytest -n 2 runs two notebooks at once."""
    import fcntl

    out = ROOT / "artifacts" / "notebook_times.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            times = json.loads(out.read_text())
        except (OSError, ValueError):
            times = {}
        times[name] = {"seconds": round(seconds, 1), "in_cells": round(in_cells, 1),
                       "slowest_cell": None if slowest is None else [slowest[0], round(slowest[1], 1)]}
        out.write_text(json.dumps(times, indent=2, sort_keys=True))
