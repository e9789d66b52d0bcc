"""Renders ``dynamiccl report``'s HTML in headless Chromium, driven by Playwright, and checks what a
reader sees there: the headline's speedup, cost model and NCCL version as rendered text, the
per-agent numbers, the plots on screen (far more coloured pixels than the same page without its
images) and the decision maps at their natural size.

Needs the ``playwright`` package (the dev extra) and a Chromium binary: Debian's ``chromium``, which
``./run test`` installs (as root, ``apt-get install chromium``; Playwright's own browser download is
not used: it fetches from a CDN that a machine reaching only package registries cannot reach).
Without either, the tests are skipped with the reason, which pytest's summary prints (``-ra``, as the
suite's configuration asks), so a run without the browser test says so."""

from __future__ import annotations

import io
import math
import os
import shutil

import numpy as np
import pytest
from matplotlib.image import imread

from dynamiccl.tuning.evaluate import Results
from test_report import report_dir, results_file  # noqa: F401  (fixtures: a real evaluation and its report)

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
# As root on a closed network: no sandbox, and none of Chromium's background connections.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync"]
WIDTH, HEIGHT = 1400, 1000


def find_browser() -> str | None:
    """``DYNAMICCL_CHROMIUM``, else the first Chromium on PATH."""
    return os.environ.get("DYNAMICCL_CHROMIUM") or next((path for path in map(shutil.which, BROWSERS) if path), None)


def unavailable(reason: str) -> None:
    """Skip with ``reason`` (printed in pytest's summary)."""
    pytest.skip(reason)


@pytest.fixture(scope="module")
def page(request):
    """A Chromium page showing the fixture's report.html (the report is made once the browser is known
    to be there)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("the playwright package is not installed: pip install -e '.[dev]'")
    browser_path = find_browser()
    if browser_path is None:
        unavailable("headless Chromium not installed: apt-get install chromium (`./run test` does, as root)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=browser_path, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
        page.goto((request.getfixturevalue("report_dir") / "report.html").resolve().as_uri())
        yield page
        browser.close()


def test_the_headline_reads_the_results_numbers(page, results_file):  # noqa: F811
    """The rendered headline (what a reader sees, not the HTML source) says the results are simulated,
    by which cost model and NCCL version, and gives the table agent's geomean speedup and worst episode
    as the results file has them; the per-agent table shows every agent's geomean."""
    results = Results.read(results_file)
    summary = results.summary().set_index("agent")
    steps = results.steps[results.steps["agent"] == "table"]
    geomean = math.exp(np.log(steps["speedup"]).mean())
    headline = page.inner_text(".headline")
    assert headline.startswith("Simulated, not measured: every step time is predicted by the 'world' cost model, "
                               "world simulator (calibrated"), headline
    assert f"the baseline is NCCL {results.steps['nccl_version'].iloc[0]}'s own choice" in headline
    assert f"table: geomean step-time speedup {geomean:.4f}x over NCCL's default" in headline
    assert f"worst episode {steps['speedup'].min():.4f}x" in headline
    assert "table saves per step" in headline and "min per day" in headline
    rows = page.eval_on_selector_all("#overview table tbody tr",
                                     "rows => rows.map(r => Array.from(r.cells, c => c.innerText))")
    shown = {row[0]: row[2] for row in rows}
    assert shown == {agent: f"{summary.loc[agent, 'geomean_speedup']:.4f}" for agent in summary.index}


def coloured_share(image: np.ndarray) -> float:
    """Share of the pixels that are clearly coloured (saturated): plot marks, not black/grey text."""
    rgb = image[..., :3]
    saturation = rgb.max(axis=-1) - rgb.min(axis=-1)
    return float((saturation > 0.25).mean())


def test_plots_render_in_the_browser(page):
    loaded = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.complete && i.naturalWidth > 0)")
    assert len(loaded) >= 7 and all(loaded), loaded
    shot = imread(io.BytesIO(page.screenshot(full_page=True)), format="png")
    assert shot.shape[1] >= WIDTH * 0.9 and shot.shape[0] >= HEIGHT
    grey = shot[..., :3].mean(axis=-1)
    assert (grey < 0.95).mean() > 0.05, "the page is (nearly) blank"
    assert grey.std() > 0.1, "the page has almost no contrast"
    # The same page without its images: the difference is what the plots put on screen.
    page.evaluate("document.querySelectorAll('img').forEach(img => img.style.display = 'none')")
    try:
        without = imread(io.BytesIO(page.screenshot(full_page=True)), format="png")
    finally:
        page.evaluate("document.querySelectorAll('img').forEach(img => img.style.display = '')")
    with_plots, text_only = coloured_share(shot), coloured_share(without)
    print(f"coloured pixels: {with_plots:.4f} with plots, {text_only:.4f} without")
    assert with_plots > 0.01, f"only {100 * with_plots:.2f}% coloured pixels: the plots did not render"
    assert with_plots > 5 * text_only + 0.005, (with_plots, text_only)


def test_decision_maps_are_shown_unscaled(page):
    """Each decision map fits the page, so the browser shows its text at the size it was drawn."""
    sizes = page.eval_on_selector_all("#decision-maps img", "imgs => imgs.map(i => [i.naturalWidth, i.clientWidth])")
    assert sizes
    for natural, shown in sizes:
        assert shown >= natural, f"a decision map {natural} px wide is shown {shown} px wide"
