"""End to end in a real headless Chromium: `streamlit run app.py` as a subprocess, driven with Selenium.

Upload a CSV, train a tiny local model from the Train page, reload the page mid-run (the training
process is frozen with SIGSTOP meanwhile, so "mid-run" holds on any machine) and find the run still
going, watch the loss chart grow, then open Runs, the confusion matrix and the Attention
page. Screenshots of every page go to artifacts/screenshots/ (gitignored).

Needs Debian's `chromium` and `chromium-driver` (apt-get install chromium chromium-driver) and the
`selenium` package; skipped with that reason when they are missing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import build_tiny_model, chromium_missing, free_port, make_sentiment_frame

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "artifacts" / "screenshots"
WAIT = 90
WINDOW_SIZE = "1500,1100"  # the `browser` fixture's window (tests/conftest.py)

if chromium_missing():
    pytest.skip(chromium_missing(), allow_module_level=True)

from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The dashboard in its own process, with runs and caches in a temp dir."""
    tmp = tmp_path_factory.mktemp("browser")
    env = {**os.environ, "WORKBENCH_RUNS": str(tmp / "runs"), "WORKBENCH_HOME": str(tmp / "home"),
           "TOKENIZERS_PARALLELISM": "false"}
    port = free_port()
    log = open(tmp / "streamlit.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                             "--server.address", "127.0.0.1", "--server.headless", "true",
                             "--browser.gatherUsageStats", "false"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                break
        except OSError:
            time.sleep(0.3)
    else:
        proc.kill()
        pytest.fail(f"streamlit did not start: {(tmp / 'streamlit.log').read_text()[-2000:]}")
    yield {"url": url, "tmp": tmp, "runs": tmp / "runs"}
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)
    for status in (tmp / "runs").glob("*/status.json"):  # runs outlive the server by design: end ours
        import json
        pid = json.loads(status.read_text()).get("pid")
        if pid:
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


# --- helpers -----------------------------------------------------------------------------------------
def body(d) -> str:
    return d.find_element(By.TAG_NAME, "body").text


def wait_for(d, cond, timeout: float = WAIT, what: str = ""):
    # Streamlit replaces elements while it re-renders: a stale or vanished element just means "not yet".
    return WebDriverWait(d, timeout, poll_frequency=0.25, ignored_exceptions=(
        StaleElementReferenceException, NoSuchElementException)).until(lambda drv: cond(drv), message=what)


def wait_text(d, text: str, timeout: float = WAIT) -> None:
    wait_for(d, lambda drv: text in body(drv), timeout, f"text {text!r} never appeared")


def idle(d, timeout: float = WAIT) -> None:
    """Wait until the script run finished (Streamlit shows a 'Running...' status widget meanwhile)."""
    time.sleep(0.4)
    wait_for(d, lambda drv: not drv.find_elements(By.CSS_SELECTOR, "[data-testid='stStatusWidget']"), timeout,
             "the app kept running")


def click(d, xpath: str) -> None:
    el = wait_for(d, lambda drv: next((e for e in drv.find_elements(By.XPATH, xpath) if e.is_enabled()), None),
                  what=f"no enabled element {xpath}")
    d.execute_script("arguments[0].scrollIntoView({block: 'center'});", el)
    el.click()


def button(label: str) -> str:
    return f"//button[.//p[normalize-space()='{label}']]"


def tab(label: str) -> str:
    return f"//*[@role='tab' and contains(normalize-space(.), '{label}')]"


def type_into(d, label: str, value: str) -> None:
    el = wait_for(d, lambda drv: next(iter(drv.find_elements(By.XPATH, f"//input[@aria-label='{label}']")), None),
                  what=f"no input {label!r}")
    d.execute_script("arguments[0].scrollIntoView({block: 'center'});", el)
    el.send_keys(Keys.CONTROL, "a")
    el.send_keys(value, Keys.ENTER)
    idle(d)


def nav(d, page: str, title: str) -> None:
    click(d, f"//a[@data-testid='stSidebarNavLink' and contains(@href, '/{page}')]")
    wait_for(d, lambda drv: any(h.text == title for h in drv.find_elements(By.TAG_NAME, "h1")), what=title)
    idle(d)


def shot(d, name: str) -> None:
    """A full-height screenshot: the window is stretched to the page first."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    height = d.execute_script("const m = document.querySelector('[data-testid=stMain]');"
                              "return m ? m.scrollHeight : document.body.scrollHeight;")
    d.set_window_size(1500, max(1100, min(int(height) + 120, 6000)))
    time.sleep(0.6)
    d.save_screenshot(str(SHOTS / f"{name}.png"))
    d.set_window_size(1500, 1100)


# Points drawn on the Loss chart. `_fullData` holds decoded arrays (plotly sends numpy data base64-packed).
LOSS_POINTS = """
for (const p of document.querySelectorAll('.js-plotly-plot')) {
  const t = p.layout && p.layout.title && (p.layout.title.text || p.layout.title);
  if (typeof t === 'string' && t.replace(/<[^>]*>/g, '').startsWith('Loss'))
    return (p._fullData || []).reduce((n, tr) => n + (tr._length || (tr.x ? tr.x.length : 0) || 0), 0);
}
return -1;"""


# Runs drawn on the Loss chart (each run is one legend group).
LOSS_RUNS = LOSS_POINTS.replace("reduce((n, tr) => n + (tr._length || (tr.x ? tr.x.length : 0) || 0), 0)",
                                "map(tr => tr.legendgroup)")
assert LOSS_RUNS != LOSS_POINTS


# --- the walk-through ------------------------------------------------------------------------------
def test_upload_train_reload_evaluate_attention(server, browser, tmp_path):
    from workbench.rundir import RunDir

    d, url = browser, server["url"]
    csv = tmp_path / "reviews.csv"
    make_sentiment_frame(200).to_csv(csv, index=False)
    model = build_tiny_model("bert", tmp_path / "tiny-bert")

    d.get(url)
    wait_text(d, "Upload a file")
    idle(d)
    shot(d, "01-data-empty")
    d.find_element(By.CSS_SELECTOR, "[data-testid='stFileUploader'] input[type='file']").send_keys(str(csv))
    wait_text(d, "Ready: 200 rows")
    idle(d)
    shot(d, "02-data-report")

    nav(d, "train", "Train")
    click(d, "//div[@data-testid='stRadio']//label[.//p[normalize-space()='Local folder']]")
    idle(d)
    type_into(d, "Model folder", str(model))
    wait_text(d, "Estimated, not measured")
    click(d, button("quick look"))
    idle(d)
    # a tiny random model must train its embeddings too
    click(d, "//div[@data-testid='stCheckbox']//label[.//p[normalize-space()='keep input embeddings fixed']]")
    idle(d)
    type_into(d, "num train epochs", "10")
    type_into(d, "learning rate", "0.003")
    type_into(d, "Run name (optional)", "browser-run")
    shot(d, "03-train-form")
    click(d, button("Launch"))
    run = RunDir(server["runs"] / "browser-run")
    wait_for(d, lambda drv: run.exists(), what="Launch did not create the run directory")
    # Freeze the training process as soon as it has logged a loss, so "mid-run" holds however fast this
    # machine is (the process stays alive, just paused), then let it go after the reload.
    deadline = time.time() + WAIT
    while not (run.metrics_file.exists() and '"kind": "train"' in run.metrics_file.read_text()):
        assert time.time() < deadline, f"no loss logged: {run.status()}"
        time.sleep(0.02)
    pid = run.status()["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        assert run.status()["state"] == "running", run.status()
        wait_for(d, lambda drv: drv.execute_script(LOSS_POINTS) > 0, what="the loss chart never got a point")
        frozen = d.execute_script(LOSS_POINTS)
        d.refresh()  # a new browser session: the run must not notice
        wait_text(d, "Live run")
        wait_text(d, "running · step")
        wait_for(d, lambda drv: "browser-run" in (drv.execute_script(LOSS_RUNS) or []), what="live view lost the run")
        assert run.status()["state"] == "running", run.status()
        shot(d, "04-train-after-reload")
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for(d, lambda drv: drv.execute_script(LOSS_POINTS) > frozen + 1, what="the loss chart did not update")
    shot(d, "05-train-running")
    wait_text(d, "Completed: test accuracy", timeout=240)
    idle(d)
    shot(d, "06-train-completed")
    assert run.evaluation()["after"]["accuracy"] > 0.8

    nav(d, "runs", "Runs")
    wait_text(d, "browser-run")
    shot(d, "07-runs")

    nav(d, "evaluate", "Evaluate")
    wait_text(d, "vs before")
    shot(d, "08-evaluate-scores")
    click(d, tab("Confusion matrix"))
    wait_text(d, "with gold neg predicted as neg")  # no mistakes: the first diagonal cell
    idle(d)
    # Click the top-right cell (gold neg, predicted pos): its examples are listed below.
    area = d.find_element(By.XPATH, "//*[contains(@class, 'js-plotly-plot')][.//*[contains(., 'Confusion')]]"
                                    "//*[contains(@class, 'nsewdrag')]")
    w, h = area.size["width"], area.size["height"]
    ActionChains(d).move_to_element_with_offset(area, int(w / 4), -int(h / 4)).click().perform()
    wait_text(d, "with gold neg predicted as pos")
    idle(d)
    shot(d, "09-confusion-matrix")
    click(d, tab("Errors"))
    idle(d)
    shot(d, "10-errors")

    nav(d, "attention", "Attention")
    wait_for(d, lambda drv: len(drv.find_elements(By.CSS_SELECTOR, ".js-plotly-plot")) >= 2,
             what="no attention heatmap")
    idle(d)
    shot(d, "11-attention")
    for name_of_tab, name in (("Rollout", "12-attention-rollout"), ("Base vs fine-tuned", "13-attention-difference"),
                      ("Saliency", "14-attention-saliency")):
        click(d, tab(name_of_tab))
        idle(d)
        shot(d, name)
    nav(d, "deploy", "Deploy")
    wait_text(d, "Export and compress")
    shot(d, "15-deploy")
    log = (server["tmp"] / "streamlit.log").read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]
