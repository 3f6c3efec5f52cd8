"""The review app in a real browser: Debian's Chromium driven by Playwright (no browser download).

Opens the app on a generated inspection folder, filters the list, labels three parts from the
keyboard, restarts the server and reloads: the labels are still there. Screenshots of the
overview and of a part view go to out/review-overview.png and out/review-part.png.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from anomaflow.review.sample import make_inspection_folder
from tests.conftest import free_port

CHROMIUM = os.environ.get("ANOMAFLOW_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium binary: apt-get install chromium (or set ANOMAFLOW_CHROMIUM)"
)
OUT = Path(__file__).resolve().parents[1] / "out"


def _serve(folder: Path, port: int, db: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "anomaflow.flows.cli",
            "review",
            "--results",
            str(folder),
            "--port",
            str(port),
            "--db",
            db,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"review server exited: {proc.stdout.read() if proc.stdout else ''}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1)
            return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise TimeoutError("review server did not answer within 60 s")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_label_three_parts_from_the_keyboard_and_find_them_after_a_restart(tmp_path):
    folder = make_inspection_folder(tmp_path / "inspect", n=80, seed=3)
    db = f"sqlite:///{tmp_path / 'labels.sqlite'}"
    port = free_port()
    OUT.mkdir(exist_ok=True)
    server = _serve(folder, port, db)
    base = f"http://127.0.0.1:{port}"
    try:
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.goto(base + "/")
            defects = int(page.locator('td[data-decision="DEFECT"]').inner_text())
            assert defects > 3
            page.screenshot(path=str(OUT / "review-overview.png"), full_page=True)

            page.goto(base + "/parts")
            page.select_option("#decision", "DEFECT")
            page.select_option("#state", "unreviewed")
            page.click("#filters button[type=submit]")
            assert page.locator("#total").inner_text().startswith(f"{defects} parts")
            page.locator("#parts a").first.click()
            page.fill("#reviewer", "ann")
            labelled = []
            for key in ("d", "g", "u"):
                labelled.append(page.locator("#sha").inner_text())
                page.locator("body").click(position={"x": 5, "y": 5})  # focus off the inputs: keys label
                with page.expect_navigation():
                    page.keyboard.press(key)
            assert len(set(labelled)) == 3
            page.goto(f"{base}/parts/{labelled[0]}")
            page.screenshot(path=str(OUT / "review-part.png"), full_page=True)
            browser.close()
        _stop(server)

        server = _serve(folder, port, db)  # a restart: labels come from the database
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page()
            for sha, label in zip(labelled, ("defect confirmed", "good part", "unsure")):
                page.goto(f"{base}/parts/{sha}")
                assert page.locator("#history").inner_text().count("ann") == 1
                assert label in page.locator("#history").inner_text()
            page.goto(base + "/parts?state=reviewed")
            assert page.locator("#total").inner_text().startswith("3 parts")
            browser.close()
    finally:
        _stop(server)
