"""A tutorial notebook in a real JupyterLab, driven by headless Chromium through Selenium.

JupyterLab runs headless on a free localhost port with a token and a temp root folder holding a copy
of notebooks/04-fine-tuning.ipynb with QUICK = True injected. The browser opens it, runs all cells
from the Run menu, checks that no cell failed, then moves the learning-rate widget's "warmup" slider
with the keyboard and checks that the plotly figure below it was redrawn with other data. Screenshots
before and after go to artifacts/screenshots/ (gitignored).

Needs Debian's `chromium` and `chromium-driver`, the `selenium` package and JupyterLab with
ipywidgets; skipped with that reason when they are missing.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

from conftest import chromium_missing, free_port
from test_notebooks import inject_parameters, load

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "artifacts" / "screenshots"
NOTEBOOK = ROOT / "notebooks" / "04-fine-tuning.ipynb"
WINDOW_SIZE = "1400,1000"  # the `browser` fixture's window (tests/conftest.py)
RUN_ALL_TIMEOUT = 900  # the QUICK notebook trains three small runs: 2-4 minutes on 2 busy CPU cores


def _skip_reason() -> str | None:
    if chromium_missing():
        return chromium_missing()
    for module, install in (("selenium", "selenium"), ("jupyterlab", "jupyterlab"), ("ipywidgets", "ipywidgets")):
        try:
            __import__(module)
        except ImportError:
            return f"{module} not installed: pip install {install}"
    return None


if _skip_reason():
    pytest.skip(_skip_reason(), allow_module_level=True)

from selenium.common.exceptions import (JavascriptException, NoSuchElementException,  # noqa: E402
                                        StaleElementReferenceException)
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


def _settings(folder: Path) -> None:
    """User settings for the test's JupyterLab: no news/update pop-ups (no network here) and every cell
    kept in the DOM (JupyterLab 4 otherwise virtualises cells that are off screen)."""
    for plugin, values in (("@jupyterlab/apputils-extension/notification", {"fetchNews": "false",
                                                                            "checkForUpdates": False}),
                           ("@jupyterlab/notebook-extension/tracker", {"windowingMode": "none"})):
        path = folder / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("lab-root")
    home = tmp_path_factory.mktemp("lab-home")
    nb = inject_parameters(load(NOTEBOOK), {"QUICK": True, "RUNS_DIR": str(home / "runs")})
    nbformat.write(nb, root / NOTEBOOK.name)
    _settings(home / "settings")
    token, port = secrets.token_hex(16), free_port()
    # PYTHONPATH: the kernel imports this checkout's workbench, wherever the package was installed from.
    pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    # JUPYTER_PATH: the widgets' lab extension lives under the prefix that installed ipywidgets, which in a
    # venv with --system-site-packages is the base interpreter's, not the venv's.
    jupyter_path = os.pathsep.join(dict.fromkeys(filter(None, [
        os.environ.get("JUPYTER_PATH"), os.path.join(sys.prefix, "share", "jupyter"),
        os.path.join(sys.base_prefix, "share", "jupyter")])))
    env = {**os.environ, "PYTHONPATH": pythonpath, "JUPYTER_PATH": jupyter_path, "WORKBENCH_RUNS": str(home / "runs"),
           "TOKENIZERS_PARALLELISM": "false",
           "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"), "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"),
           "JUPYTER_RUNTIME_DIR": str(home / "runtime")}
    log = open(home / "lab.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
         "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
         "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
         "--LabApp.extension_manager=readonly"] + (["--allow-root"] if os.geteuid() == 0 else []),
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2).status == 200:
                break
        except OSError:
            time.sleep(0.5)
        if proc.poll() is not None:
            break
    else:
        proc.kill()
        pytest.fail(f"JupyterLab did not start: {(home / 'lab.log').read_text()[-3000:]}")
    if proc.poll() is not None:
        pytest.fail(f"JupyterLab exited: {(home / 'lab.log').read_text()[-3000:]}")
    yield {"url": url, "token": token, "root": root, "home": home}
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    for status in (home / "runs").glob("*/status.json"):  # runs outlive the kernel by design: end ours
        pid = json.loads(status.read_text()).get("pid")
        if pid and json.loads(status.read_text()).get("state") in ("queued", "running", "stopping"):
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def wait_for(d, cond, timeout: float = 120, what: str = ""):
    return WebDriverWait(d, timeout, poll_frequency=0.5, ignored_exceptions=(
        StaleElementReferenceException, NoSuchElementException, JavascriptException)).until(
        lambda drv: cond(drv), message=what)


def shot(d, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    d.save_screenshot(str(path))
    return path


# The code cells' prompts: "[ ]:" not run, "[*]:" queued or running, "[7]:" done. A cell whose input is
# collapsed (the exercise solutions) shows a placeholder instead, without a prompt: the kernel's status
# tells when it has run.
PROMPTS = ("return Array.from(document.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt'))"
           ".map(e => e.textContent.trim());")
KERNEL_IDLE = "return document.querySelector('#jp-main-statusbar').textContent.includes('| Idle');"
# Errors render as ANSI text with a Python traceback header.
ERRORS = """return Array.from(document.querySelectorAll('.jp-OutputArea-output'))
  .map(e => e.textContent).filter(t => t.includes('Traceback (most recent call last)'));"""
# The schedule figure is the plotly chart inside the widget box that holds the "warmup" slider.
FIGURE = """
const label = Array.from(document.querySelectorAll('.widget-slider .widget-label'))
  .find(l => l.textContent.trim() === 'warmup');
if (!label) return null;
let box = label.closest('.widget-vbox');
while (box && !box.querySelector('.js-plotly-plot')) box = box.parentElement.closest('.widget-vbox');
const gd = box && box.querySelector('.js-plotly-plot');
if (!gd || !gd._fullData || !gd._fullData.length) return null;
const t = gd._fullLayout.title && gd._fullLayout.title.text;
return {title: t, y: Array.from(gd._fullData[0].y).map(v => +v.toPrecision(6)), readout:
        label.parentElement.querySelector('.widget-readout').textContent.trim()};"""


def test_run_all_then_move_a_slider_redraws_the_figure(lab, browser):
    d = browser
    d.get(f"{lab['url']}/lab/tree/{NOTEBOOK.name}?token={lab['token']}")
    wait_for(d, lambda drv: drv.find_elements(By.CSS_SELECTOR, ".jp-NotebookPanel .jp-CodeCell"), 120,
             "the notebook never opened")
    # Wait for the kernel before running: the status bar reads "Python 3 (ipykernel) | Idle" once it is up.
    wait_for(d, lambda drv: drv.execute_script(KERNEL_IDLE), 120, "the kernel never became idle")
    time.sleep(2)

    def run_all() -> None:
        """Run > Run All Cells, through the real menu bar."""
        menu = wait_for(d, lambda drv: next(e for e in drv.find_elements(By.CSS_SELECTOR, ".lm-MenuBar-itemLabel")
                                            if e.text.strip() == "Run"), 30, "no Run menu")
        menu.click()
        wait_for(d, lambda drv: drv.find_element(By.XPATH, "//li[contains(@class, 'lm-Menu-item')]"
                                                           "[.//*[contains(@class, 'lm-Menu-itemLabel')]"
                                                           "[normalize-space()='Run All Cells']]"),
                 30, "no 'Run All Cells' item in the Run menu").click()

    def execution_started(drv) -> bool:
        return any(p != "[ ]:" for p in drv.execute_script(PROMPTS))

    # A click that lands while the session is still connecting is dropped: check it took, and retry once.
    run_all()
    try:
        wait_for(d, execution_started, 30)
    except Exception:
        shot(d, "jupyterlab-04-run-all-not-started")
        run_all()
        wait_for(d, execution_started, 30, "Run All Cells did not start any cell (see the screenshot)")

    started = time.time()

    def settled(drv) -> bool:
        errors = drv.execute_script(ERRORS)
        if errors:
            raise AssertionError("a cell failed in JupyterLab:\n" + errors[0][-3000:])
        prompts = drv.execute_script(PROMPTS)
        return bool(prompts) and all(p[1:-2].strip().isdigit() for p in prompts) and drv.execute_script(KERNEL_IDLE)

    def finished(drv) -> bool:
        # Idle with every visible cell numbered, and still so a moment later: the kernel can be idle for an
        # instant between two queued cells, and the last (collapsed) cell shows no prompt.
        if not settled(drv):
            return False
        time.sleep(3)
        return settled(drv)

    try:
        wait_for(d, finished, RUN_ALL_TIMEOUT, "Run All did not finish")
    finally:
        shot(d, "jupyterlab-04-run-all")
    ran_for = time.time() - started

    before = wait_for(d, lambda drv: drv.execute_script(FIGURE), 60, "the learning-rate figure was not drawn")
    slider = d.execute_script("""
        const label = Array.from(document.querySelectorAll('.widget-slider .widget-label'))
          .find(l => l.textContent.trim() === 'warmup');
        return label.parentElement.querySelector('.noUi-handle');""")
    # The widgets and the chart below them in view (the output area that holds the slider, from its top).
    d.execute_script("arguments[0].closest('.jp-OutputArea').scrollIntoView({block: 'start'});", slider)
    time.sleep(1)
    shot(d, "jupyterlab-04-before")

    slider.click()
    for _ in range(2):  # two steps of 5 %: 10 % -> 20 %
        slider.send_keys(Keys.ARROW_RIGHT)
        time.sleep(0.3)
    after = wait_for(d, lambda drv: (lambda f: f if f and f["title"] != before["title"] else None)(
        drv.execute_script(FIGURE)), 60, "the figure was not redrawn after moving the slider")
    time.sleep(1)
    path = shot(d, "jupyterlab-04-after")

    assert before["readout"] != after["readout"], (before["readout"], after["readout"])
    assert "warmup 10%" in before["title"] and "warmup 20%" in after["title"], (before["title"], after["title"])
    assert before["y"] != after["y"], "the trace data did not change"
    # More warmup: the schedule reaches its peak later, so the early learning rates are lower.
    assert sum(after["y"][:30]) < sum(before["y"][:30])
    assert path.exists() and path.stat().st_size > 10_000
    print(f"Run All took {ran_for:.0f} s in JupyterLab")
