"""Renders ``dynamiccl report``'s HTML in headless Chromium and checks that the plots really show: the
page's screenshot has far more coloured pixels than the same page with its images removed.
Skipped where no Chromium is installed."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from test_report import report_dir, results_file  # noqa: F401  (fixtures: a real evaluation and its report)

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
WIDTH, HEIGHT = 1400, 4000


def find_browser() -> str | None:
    return next((path for path in map(shutil.which, BROWSERS) if path), None)


def screenshot(browser: str, page: Path, png: Path) -> np.ndarray:
    """Chromium's screenshot of ``page`` as an RGB(A) float array in [0, 1]."""
    command = [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               f"--window-size={WIDTH},{HEIGHT}", f"--screenshot={png}", page.resolve().as_uri()]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=90)
    except subprocess.TimeoutExpired:
        pytest.fail(f"headless Chromium did not finish within 90 s: {' '.join(command)}")
    assert png.is_file(), f"no screenshot from {' '.join(command)} (status {done.returncode}): {done.stderr[-2000:]}"
    return imread(png)


def coloured_share(image: np.ndarray) -> float:
    """Share of the pixels that are clearly coloured (saturated): plot marks, not black/grey text."""
    rgb = image[..., :3]
    saturation = rgb.max(axis=-1) - rgb.min(axis=-1)
    return float((saturation > 0.25).mean())


@pytest.fixture(scope="module")
def browser() -> str:
    found = find_browser()
    if found is None:
        pytest.skip("headless Chromium not installed: apt install chromium")
    return found


def test_plots_render_in_the_browser(browser, report_dir, tmp_path):  # noqa: F811
    page = report_dir / "report.html"
    shot = screenshot(browser, page, tmp_path / "report.png")
    assert shot.shape[0] >= HEIGHT * 0.9 and shot.shape[1] >= WIDTH * 0.9
    grey = shot[..., :3].mean(axis=-1)
    assert (grey < 0.95).mean() > 0.05, "the page is (nearly) blank"
    assert grey.std() > 0.1, "the page has almost no contrast"

    # The same page without its images: the difference is what the plots put on screen.
    bare = tmp_path / "bare.html"
    bare.write_text(re.sub(r'<img [^>]*>', "", page.read_text(encoding="utf-8")), encoding="utf-8")
    without = screenshot(browser, bare, tmp_path / "bare.png")
    with_plots, text_only = coloured_share(shot), coloured_share(without)
    print(f"coloured pixels: {with_plots:.4f} with plots, {text_only:.4f} without")
    assert with_plots > 0.01, f"only {100 * with_plots:.2f}% coloured pixels: the plots did not render"
    assert with_plots > 5 * text_only + 0.005, (with_plots, text_only)
