"""Threshold-move latency in a real browser: key press on the threshold slider to the last change on the page.

Starts `streamlit run app.py` (from --root, default this checkout) on a free localhost port, opens each
page in headless Chromium (Debian's /usr/bin/chromium, driven by Playwright; no browser is downloaded),
focuses the page's threshold slider (Streamlit's, or a chart's own bound slider) and presses an arrow key
N times. For each press it records the time from the keydown event to the last DOM mutation, where the
page counts as settled after a quiet period with no DOM mutation, no canvas drawing call and no script
running. Background training
is paused while measuring (/work/bin/pause-training, resumed on exit).

    python benchmarks/app_latency.py                                   # this checkout
    python benchmarks/app_latency.py --root /tmp/routed-old --root .   # two checkouts side by side, one pause
    python benchmarks/app_latency.py --pages token_routing,lens --text-file story.txt   # a longer text
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
PAGES = {"home": "", "token_routing": "token_routing", "lens": "lens", "ppl_vs_compute": "ppl_vs_compute"}
PAUSE, RESUME = "/work/bin/pause-training", "/work/bin/resume-training"

# Records the time of every DOM mutation, every canvas drawing call (charts drawn on a canvas change no
# DOM node when they redraw) and every keydown, in the page's own clock.
OBSERVER = """() => {
  window.__lastMutation = performance.now();
  window.__keydown = null;
  const proto = CanvasRenderingContext2D.prototype;
  for (const name of ['clearRect', 'fillRect', 'strokeRect', 'fillText', 'strokeText', 'fill', 'stroke', 'drawImage']) {
    const original = proto[name];
    proto[name] = function (...args) { window.__lastMutation = performance.now(); return original.apply(this, args); };
  }
  new MutationObserver(() => { window.__lastMutation = performance.now(); })
    .observe(document.body, {subtree: true, childList: true, attributes: true, characterData: true});
  document.addEventListener('keydown', e => { window.__keydown = performance.now(); }, true);
}"""
SETTLED = """(quiet) => new Promise(resolve => {
  const check = () => {
    const app = document.querySelector('[data-testid="stApp"]');
    const idle = !app || app.getAttribute('data-test-script-state') !== 'running';
    if (idle && performance.now() - window.__lastMutation > quiet) resolve(window.__lastMutation - window.__keydown);
    else setTimeout(check, 10);
  };
  setTimeout(check, 10);
})"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(root: Path, port: int, cache: str) -> subprocess.Popen:
    env = {**os.environ, "ROUTED_CACHE_DIR": cache, "ROUTED_CHECKPOINTS_DIR": str(root / "checkpoints"),
           "ROUTED_REPORTS_DIR": str(root / "reports" / "reproduction"), "PYTHONPATH": str(root)}
    command = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true", "--server.port",
               str(port), "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"]
    server = subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 90
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2)
            return server
        except OSError as err:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                raise SystemExit("streamlit did not start") from err
            time.sleep(0.5)


def threshold_input(page):
    """The page's threshold control: Streamlit's slider thumb, else a chart's bound range input."""
    slider = page.locator('[data-testid="stSlider"]').filter(has_text="Threshold").locator('input[type="range"]')
    if slider.count():
        return slider.first
    bound = page.locator('.vega-bindings input[type="range"]')
    return bound.first if bound.count() else None


def measure_page(browser, url: str, presses: int, quiet_ms: int, text: str | None = None) -> list[float] | None:
    page = browser.new_page(viewport={"width": 1400, "height": 1800})
    page.goto(url)
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"] h1', timeout=120_000)
    area = page.locator('[data-testid="stTextArea"] textarea')
    if text is not None and area.count():  # route this text instead of the default one
        area.first.fill(text)
        area.first.press("Control+Enter")
        page.wait_for_timeout(500)
        page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"] h1', timeout=300_000)
    page.wait_for_timeout(3000)  # charts draw after the script ends
    control = threshold_input(page)
    if control is None:
        page.close()
        return None
    control.focus()
    page.evaluate(OBSERVER)
    times = []
    for i in range(presses):
        page.evaluate("() => { window.__keydown = null; }")
        page.keyboard.press("ArrowLeft" if i % 2 else "ArrowRight")  # back and forth: the same two values
        times.append(page.evaluate(SETTLED, quiet_ms))
    page.close()
    return times


def measure_checkout(root: Path, args) -> None:
    """One markdown table of latencies per page for the app in `root`, served on a fresh port with a fresh cache."""
    from playwright.sync_api import sync_playwright

    port = free_port()
    with tempfile.TemporaryDirectory() as cache:
        server = start_app(root, port, cache)
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                print(f"\nroot {root}; {args.presses} arrow-key presses per page; settled = {args.quiet_ms} ms "
                      "without a DOM mutation; times from keydown to the last mutation")
                print("| page | median ms | max ms | presses |\n|---|---|---|---|")
                for name in args.pages.split(","):
                    if PAGES[name] and not (root / "pages" / f"{name}.py").exists():
                        print(f"| {name} | (no such page in this checkout) | | |")
                        continue
                    text = args.text_file.read_text(encoding="utf-8") if args.text_file else None
                    times = measure_page(browser, f"http://127.0.0.1:{port}/{PAGES[name]}", args.presses, args.quiet_ms, text)
                    if times is None:
                        print(f"| {name} | (no threshold slider) | | |")
                        continue
                    print(f"| {name} | {statistics.median(times):.0f} | {max(times):.0f} | {len(times)} |", flush=True)
                browser.close()
        finally:
            server.terminate()
            server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, action="append",
                        help="checkout to run (repeat to compare checkouts in one run); default this one")
    parser.add_argument("--presses", type=int, default=12)
    parser.add_argument("--quiet-ms", type=int, default=800, help="no mutation for this long: the page has settled")
    parser.add_argument("--pages", default=",".join(PAGES))
    parser.add_argument("--no-pause", action="store_true", help="leave background training running")
    parser.add_argument("--text-file", type=Path, help="route this text on the pages with a text box (default: theirs)")
    args = parser.parse_args()

    paused = not args.no_pause and os.access(PAUSE, os.X_OK)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a kill still resumes training (finally below)
    if paused:
        subprocess.run([PAUSE], check=False, stdout=subprocess.DEVNULL)
    try:
        for root in args.root or [Path(__file__).resolve().parent.parent]:
            measure_checkout(root.resolve(), args)
    finally:
        if paused:
            subprocess.run([RESUME], check=False, stdout=subprocess.DEVNULL)


if __name__ == "__main__":
    main()
