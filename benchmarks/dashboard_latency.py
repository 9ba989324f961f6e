"""Dashboard latency in a real headless Chromium: first paint, and redraw after a layer/head change.

    WORKBENCH_HOME=/tmp/wbhome python benchmarks/dashboard_latency.py [--repeats 5] [--download]

Starts `streamlit run app.py` on a free localhost port (runs in a temp dir), then measures:

- first paint: from navigation until the Data page's title is drawn and the script run has finished,
  for the first session after the server started (cold: the page modules' imports included) and a
  second one (warm);
- attention redraw: on the Attention page with the built-in MiniLM (a pretrained model, no run
  needed), the time from moving the layer slider / choosing a head until the heatmap shows the new
  layer/head. The first draw (model load + one forward pass) is reported separately.

Targets: first paint <= 3 s, layer/head redraw <= 1 s. Exit status 1 when a target is missed.
MiniLM must be in $WORKBENCH_HOME (e.g. after `workbench demo --quick`); `--download` fetches it.
Needs Debian's chromium + chromium-driver and `pip install selenium`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIRST_PAINT_TARGET = 3.0
REDRAW_TARGET = 1.0
HEATMAP_TITLE = """
for (const p of document.querySelectorAll('.js-plotly-plot')) {
  const t = p.layout && p.layout.title && (p.layout.title.text || p.layout.title);
  if (typeof t === 'string' && t.includes('Attention · layer')) return t.replace(/<[^>]*>/g, '');
}
return null;"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(runs: Path) -> tuple[subprocess.Popen, str, float]:
    port = free_port()
    env = {**os.environ, "WORKBENCH_RUNS": str(runs), "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                             "--server.address", "127.0.0.1", "--server.headless", "true",
                             "--browser.gatherUsageStats", "false"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    while time.perf_counter() - t0 < 60:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                return proc, url, time.perf_counter() - t0
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("streamlit did not start within 60 s")


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or shutil.which("chromium-browser")
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
              "--disable-dev-shm-usage", "--window-size=1500,1100"):
        opts.add_argument(a)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)


def poll(cond, timeout: float, what: str, step: float = 0.01):
    end = time.perf_counter() + timeout
    while time.perf_counter() < end:
        try:
            value = cond()
        except Exception:  # an element replaced mid-read: try again
            value = None
        if value:
            return value
        time.sleep(step)
    raise SystemExit(f"timed out waiting for {what}")


def running(d) -> bool:
    from selenium.webdriver.common.by import By
    return bool(d.find_elements(By.CSS_SELECTOR, "[data-testid='stStatusWidget']"))


def first_paint(d, url: str) -> float:
    from selenium.webdriver.common.by import By

    t0 = time.perf_counter()
    d.get(url)
    poll(lambda: any(h.text == "Data" for h in d.find_elements(By.TAG_NAME, "h1")), 60, "the Data page")
    poll(lambda: not running(d), 60, "the first script run to finish")
    return time.perf_counter() - t0


def attention_redraws(d, url: str, repeats: int, download: bool) -> tuple[float, list[float], list[float]]:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    d.get(f"{url}/attention")
    poll(lambda: not running(d) and "Model" in d.find_element(By.TAG_NAME, "body").text, 60, "the Attention page")
    t0 = time.perf_counter()
    d.find_element(By.XPATH, "//button[.//p[normalize-space()='A pretrained model']]").click()
    time.sleep(0.5)
    poll(lambda: not running(d), 60, "the model choice")
    dl = d.find_elements(By.XPATH, "//button[.//p[starts-with(normalize-space(), 'Download')]]")
    if dl:
        if not download:
            raise SystemExit("MiniLM is not in $WORKBENCH_HOME: set WORKBENCH_HOME to a cache that has it "
                             "(e.g. /tmp/wbhome) or pass --download")
        dl[0].click()
    first = poll(lambda: d.execute_script(HEATMAP_TITLE), 600, "the first heatmap")
    first_draw = time.perf_counter() - t0
    poll(lambda: not running(d), 60, "the first draw to finish")

    layer_times, title = [], first
    for i in range(repeats):
        # The slider is a visually hidden <input type=range>: focus it and press an arrow key, as a person would.
        slider = d.find_element(By.CSS_SELECTOR, "input[type='range'][aria-label='Layer']")
        d.execute_script("arguments[0].focus();", slider)
        t0 = time.perf_counter()
        ActionChains(d).send_keys(Keys.ARROW_LEFT if i % 2 == 0 else Keys.ARROW_RIGHT).perform()
        title = poll(lambda old=title: (t := d.execute_script(HEATMAP_TITLE)) and t != old and t, 30,
                     "a new layer drawn")
        layer_times.append(time.perf_counter() - t0)
        poll(lambda: not running(d), 30, "the fragment run to finish")
        time.sleep(0.3)

    head_times = []
    for i in range(repeats):
        head = str(i % 3)
        box = d.find_element(By.XPATH, "//div[@data-testid='stSelectbox'][.//p[normalize-space()='Head']]//input")
        box.click()
        box.send_keys(head)
        t0 = time.perf_counter()
        box.send_keys(Keys.ENTER)
        poll(lambda h=head: f"head {h}" in (d.execute_script(HEATMAP_TITLE) or ""), 30, f"head {head} drawn")
        head_times.append(time.perf_counter() - t0)
        poll(lambda: not running(d), 30, "the fragment run to finish")
        time.sleep(0.3)
    return first_draw, layer_times, head_times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--download", action="store_true", help="fetch MiniLM if it is not cached")
    a = ap.parse_args()
    if not (shutil.which("chromium") or shutil.which("chromium-browser")) or not shutil.which("chromedriver"):
        print("needs chromium and chromedriver: apt-get install chromium chromium-driver", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        proc, url, started = start_server(Path(tmp) / "runs")
        d = browser()
        try:
            cold = first_paint(d, url)
            warm = first_paint(d, url)
            first_draw, layers, heads = attention_redraws(d, url, a.repeats, a.download)
        finally:
            d.quit()
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
    ok = cold <= FIRST_PAINT_TARGET and max(layers) <= REDRAW_TARGET and max(heads) <= REDRAW_TARGET
    print(f"server start (process to health check): {started:.2f} s")
    print(f"first paint, cold (first session):       {cold:.2f} s   target <= {FIRST_PAINT_TARGET:.0f} s")
    print(f"first paint, warm (second session):      {warm:.2f} s")
    print(f"attention first draw (MiniLM load + forward pass): {first_draw:.2f} s")
    for name, times in (("layer change", layers), ("head change", heads)):
        print(f"attention {name} redraw: median {statistics.median(times):.2f} s, max {max(times):.2f} s "
              f"({' '.join(f'{t:.2f}' for t in times)}) "
              f"over {len(times)}   target <= {REDRAW_TARGET:.0f} s")
    print("PASS" if ok else "FAIL: a target was missed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
