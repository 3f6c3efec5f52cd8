"""The review app in a real browser: Debian's Chromium driven by Playwright (no browser download).

Opens the app on a generated inspection folder, filters the list, labels three parts from the
keyboard, restarts the server and reloads: the labels are still there. The same for the grid:
move with the arrow keys, select three cells, bulk label them, restart, reload. Screenshots go to
out/review-overview.png, out/review-part.png, out/review-grid.png and out/review-part-side-by-side.png.
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


def _open(pw):
    """Debian's Chromium (never a downloaded one) and a page the size of a laptop screen."""
    browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
    return browser, browser.new_page(viewport={"width": 1100, "height": 900})


def test_label_three_parts_from_the_keyboard_and_find_them_after_a_restart(tmp_path):
    folder = make_inspection_folder(tmp_path / "inspect", n=80, seed=3)
    db = f"sqlite:///{tmp_path / 'labels.sqlite'}"
    port = free_port()
    OUT.mkdir(exist_ok=True)
    server = _serve(folder, port, db)
    base = f"http://127.0.0.1:{port}"
    try:
        with sync_api.sync_playwright() as pw:
            browser, page = _open(pw)
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
            browser, page = _open(pw)
            for sha, label in zip(labelled, ("defect confirmed", "good part", "unsure")):
                page.goto(f"{base}/parts/{sha}")
                assert page.locator("#history").inner_text().count("ann") == 1
                assert label in page.locator("#history").inner_text()
            page.goto(base + "/parts?state=reviewed")
            assert page.locator("#total").inner_text().startswith("3 parts")
            browser.close()
    finally:
        _stop(server)


def _focused(page) -> str | None:
    return page.evaluate("document.activeElement.dataset.sha || null")


def test_bulk_label_grid_cells_from_the_keyboard_and_find_them_after_a_restart(tmp_path):
    folder = make_inspection_folder(tmp_path / "inspect", n=60, seed=4, products=("bottle-line", "cable-line"))
    db = f"sqlite:///{tmp_path / 'labels.sqlite'}"
    port = free_port()
    OUT.mkdir(exist_ok=True)
    server = _serve(folder, port, db)
    base = f"http://127.0.0.1:{port}"
    try:
        with sync_api.sync_playwright() as pw:
            browser, page = _open(pw)
            page.goto(base + "/")
            assert page.locator('#products tr[data-product="bottle-line"] td[data-count="rows"]').inner_text() == "30"
            page.locator('#products tr[data-product="bottle-line"] a', has_text="grid").click()
            page.select_option("#decision", "NORMAL")
            page.click("#filters button[type=submit]")
            assert "product=bottle-line" in page.url and "decision=NORMAL" in page.url
            cells = page.locator("#grid .cell[data-sha]")
            shas = [cells.nth(i).get_attribute("data-sha") for i in range(cells.count())]
            columns = page.evaluate(
                "getComputedStyle(document.getElementById('grid')).gridTemplateColumns.split(' ').length"
            )
            assert columns > 2 and len(shas) > 2 * columns
            page.fill("#reviewer", "ann")

            page.locator("#grid .cell .path").first.click()  # focus the first cell
            assert _focused(page) == shas[0]
            page.keyboard.press("a")
            assert page.locator("#selected-count").inner_text() == f"{len(shas)} selected"
            page.keyboard.press("Escape")
            assert page.locator("#selected-count").inner_text() == "0 selected"
            page.keyboard.press("ArrowRight")
            page.keyboard.press(" ")
            page.keyboard.press("ArrowDown")
            assert _focused(page) == shas[1 + columns]
            page.keyboard.press(" ")
            page.keyboard.press("Shift+ArrowRight")  # extends the selection
            chosen = [shas[1], shas[1 + columns], shas[2 + columns]]
            assert page.locator("#selected-count").inner_text() == "3 selected"
            assert page.locator("#grid .cell.selected").evaluate_all("cs => cs.map(c => c.dataset.sha)") == chosen
            with page.expect_navigation():  # saved, the grid reloads with the same filters
                page.keyboard.press("g")
            assert "saved good on 3 part(s)" in page.locator("#status").inner_text()
            assert "product=bottle-line" in page.url
            for sha in chosen:
                assert page.locator(f'.cell[data-sha="{sha}"] .review').inner_text() == "good part"
            page.screenshot(path=str(OUT / "review-grid.png"), full_page=True)

            page.locator(f'.cell[data-sha="{shas[0]}"] .path').click()
            with page.expect_navigation():
                page.keyboard.press("Enter")
            assert page.locator("#sha").inner_text() == shas[0]
            sizes = page.evaluate(
                "['part-image', 'heat-image'].map(i => { const e = document.getElementById(i),"
                " box = e.getBoundingClientRect(); return [e.complete && e.naturalWidth > 0, box.width, box.top]; })"
            )
            assert sizes[0] == sizes[1] and sizes[0][0] and sizes[0][1] > 200  # side by side, same size
            page.screenshot(path=str(OUT / "review-part-side-by-side.png"), full_page=True)
            page.keyboard.press("o")
            assert not page.locator("#heat-image").is_visible() and page.locator("#part-image").is_visible()
            page.keyboard.press("o")
            assert page.locator("#heat-image").is_visible()
            browser.close()
        _stop(server)

        server = _serve(folder, port, db)  # a restart: labels come from the database
        with sync_api.sync_playwright() as pw:
            browser, page = _open(pw)
            page.goto(base + "/grid?product=bottle-line&state=good")
            found = page.locator("#grid .cell[data-sha]").evaluate_all("cs => cs.map(c => c.dataset.sha)")
            assert sorted(found) == sorted(chosen)
            assert page.locator("#grid .cell .review").all_inner_texts() == ["good part"] * 3
            page.locator("#grid .cell .pick").first.click()
            page.locator("#grid .cell .path").nth(2).click(modifiers=["Shift"])  # shift+click: the cells between
            assert page.locator("#selected-count").inner_text() == "3 selected"
            browser.close()
    finally:
        _stop(server)
