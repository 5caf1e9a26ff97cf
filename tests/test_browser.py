"""The running app in headless Chromium: every page loads cleanly; token tooltips appear on hover.

Screenshots of each page are written to tests/artifacts/ (git-ignored) for a look by eye.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "tests" / "artifacts"
# A page's own URL first: a fresh server's first visitor must still get app.py's navigation.
PAGES = {
    "token_routing": "token_routing",
    "home": "",
    "train": "train",
    "lens": "lens",
    "calibration": "calibration",
    "generate": "generate",
    "ppl_vs_compute": "ppl_vs_compute",
    "research": "research",
}
NAV = ["Home", "Train", "Token routing", "Lens", "Calibration", "Generate", "PPL vs compute", "Research tables"]
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def streamlit_server(env: dict):
    """A fresh `streamlit run app.py` on a free port; yields its URL once it answers."""
    port = free_port()
    command = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
               "--server.port", str(port), "--browser.gatherUsageStats", "false"]
    server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/_stcore/health", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"streamlit did not start:\n{server.stdout.read().decode(errors='replace')}")
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=20)


@pytest.fixture(scope="module")
def server_env(tiny_world, tmp_path_factory) -> dict:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: install it with `apt-get install -y chromium` to run browser tests")
    pytest.importorskip("playwright.sync_api", reason="playwright (the Python package) is not installed")
    return {
        **os.environ,
        "ROUTED_CHECKPOINTS_DIR": str(tiny_world.checkpoints),
        "ROUTED_CACHE_DIR": str(tmp_path_factory.mktemp("cache")),
        "ROUTED_REPORTS_DIR": str(tiny_world.reports),
    }


@pytest.fixture(scope="module")
def app_url(server_env):
    with streamlit_server(server_env) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


def load(browser, url: str):
    page = browser.new_page(viewport={"width": 1400, "height": 1800})
    page.goto(url)
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"] h1', timeout=60_000)
    page.wait_for_timeout(1500)  # charts draw after the script ends
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]', timeout=60_000)
    return page


@pytest.mark.parametrize("name", PAGES)
def test_page_loads_without_errors(app_url, browser, name):
    page = load(browser, f"{app_url}/{PAGES[name]}")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
    assert page.locator('[data-testid="stException"]').count() == 0
    assert page.locator('[data-testid="stAlertContentError"]').all_inner_texts() == []
    links = page.locator('[data-testid="stSidebarNav"] a').all_inner_texts()
    assert [link.split("\n")[-1] for link in links] == NAV
    page.close()


def test_hovering_a_token_shows_its_tooltip(app_url, browser):
    page = load(browser, f"{app_url}/token_routing")
    token = page.locator(".vega-embed g.mark-rect path").nth(3)  # the text's boxes come first in the chart
    token.wait_for(state="visible", timeout=30_000)
    token.hover(force=True)  # its text, drawn over the box, shows the same tooltip
    tip = page.locator("#vg-tooltip-element")
    tip.wait_for(state="visible", timeout=5_000)
    text = tip.inner_text()
    assert "path" in text and "NLL" in text and "exit 1 (shallow)" in text and "exit 3 (deep)" in text
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "token_routing_tooltip.png"))
    page.close()


def test_the_routing_slider_recolours_tokens_in_the_browser(app_url, browser):
    """The chart's own slider: pressed to 0, every token is shallow; to 1, fewer are; no page rerun."""
    page = load(browser, f"{app_url}/token_routing")
    slider = page.locator('.vega-bindings input[type="range"]').first
    colours = "() => Array.from(document.querySelectorAll('.vega-embed g.mark-rect')[0].querySelectorAll('path')).map(p => p.getAttribute('fill'))"
    slider.focus()
    page.keyboard.press("Home")
    page.wait_for_timeout(300)
    at_zero = page.evaluate(colours)
    page.keyboard.press("End")
    page.wait_for_timeout(300)
    at_one = page.evaluate(colours)
    assert page.locator('[data-testid="stApp"]').get_attribute("data-test-script-state") != "running"
    assert len(set(at_zero[1:])) == 1 and at_zero != at_one  # all shallow at 0 (the first token is context)
    page.close()


def test_simultaneous_first_visits_to_a_page_url_on_a_fresh_server(server_env, browser):
    """Eight visitors open one page's URL at once on a fresh server: each gets the page, no error.

    A race: when the first run restarted inside `import appkit`, the others, waiting on that import, got the
    half-built module (AttributeError) in most runs of this test.
    """
    with streamlit_server(server_env) as url:
        pages = [browser.new_page(viewport={"width": 1200, "height": 900}) for _ in range(8)]
        for page in pages:
            page.goto(f"{url}/token_routing", wait_until="commit")  # all five before any page has loaded
        for page in pages:
            page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"] h1', timeout=90_000)
            page.wait_for_timeout(1000)
            assert page.locator("h1").first.inner_text() == "Token routing"
            assert page.locator('[data-testid="stException"]').count() == 0
            assert page.locator('[data-testid="stAlertContentError"]').all_inner_texts() == []
        pages[-1].reload()  # from now on every run goes through app.py's navigation
        pages[-1].wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"] h1', timeout=60_000)
        links = pages[-1].locator('[data-testid="stSidebarNav"] a').all_inner_texts()
        assert [link.split("\n")[-1] for link in links] == NAV
        for page in pages:
            page.close()


def test_lens_heatmap_shows_each_layers_top5_on_hover(app_url, browser):
    page = load(browser, f"{app_url}/lens")
    heatmap = page.locator(".js-plotly-plot").first
    heatmap.wait_for(state="visible", timeout=30_000)
    cells = heatmap.locator(".nsewdrag").first  # the plot area that receives the mouse
    box = cells.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.1)  # a cell of layer 1
    tip = page.locator(".hoverlayer .hovertext").first
    tip.wait_for(state="visible", timeout=5_000)
    text = tip.text_content()  # SVG text: its lines are tspans
    assert "layer 1 top-5" in text and "rank" in text and "NLL" in text and "settles at layer" in text
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "lens_hover.png"))
    page.close()
