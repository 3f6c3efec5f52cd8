"""The review grid, bulk labels and the per-product overview, through FastAPI's TestClient."""

from __future__ import annotations

import re

import pytest

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from anomaflow.review.app import GRID_PER_PAGE, MAX_BULK, create_app  # noqa: E402
from anomaflow.review.sample import make_inspection_folder  # noqa: E402

BASE = "http://127.0.0.1:8050"
PRODUCTS = ("bottle-line", "cable-line")


@pytest.fixture()
def client(tmp_path) -> TestClient:
    folder = make_inspection_folder(tmp_path / "inspect", n=120, seed=0, products=PRODUCTS)
    return TestClient(create_app([folder], f"sqlite:///{tmp_path / 'labels.sqlite'}"), base_url=BASE)


def _rows(client: TestClient, **filters) -> list[dict]:
    return client.app.state.results.page({}, per_page=1000, **filters).rows


def _bulk(client: TestClient, items: list[dict], label: str = "good", **kw) -> dict:
    body = {"items": items, "label": label, "reviewer": "ann", "note": "", **kw}
    return client.post("/api/labels/bulk", json=body, headers={"X-CSRF-Token": client.app.state.csrf})


def _item(row: dict, seen: int | None = None) -> dict:
    return {"sha256": row["sha256"], "model_version": row["model_version"], "seen": seen}


def _cells(html: str) -> list[str]:
    return re.findall(r'<div class="cell"[^>]*data-sha="([0-9a-f]{64})"', html)


def test_the_grid_pages_and_filters_like_the_list(client):
    page = client.get("/grid")
    assert page.status_code == 200 and 'href="/grid"' in page.text  # in the nav
    assert len(_cells(page.text)) + page.text.count('class="cell error"') == GRID_PER_PAGE
    assert 'loading="lazy"' in page.text and "/overlay" in page.text
    assert f"120 parts · page 1 of {-(-120 // GRID_PER_PAGE)}" in page.text
    top = _rows(client, decision="DEFECT")
    grid = client.get("/grid", params={"decision": "DEFECT", "sort": "score", "order": "desc"})
    assert _cells(grid.text) == [r["sha256"] for r in top][:GRID_PER_PAGE]
    deep = client.get("/grid", params={"page": 2, "sort": "path", "order": "asc"})
    assert 'id="prev" href="?sort=path&amp;order=asc&amp;page=1"' in deep.text
    errors = client.get("/grid", params={"decision": "ERROR"}).text
    assert errors.count('class="cell error"') == 120 // 25 and not _cells(errors) and "cannot decode image" in errors
    for query, allowed in (({"sort": "size"}, "score, path"), ({"state": "done"}, "unreviewed"), ({"page": "x"}, "")):
        r = client.get("/grid", params=query)
        assert r.status_code == 400 and allowed in r.text


def test_the_product_filter_on_the_grid_and_the_list(client):
    cable = _rows(client, product="cable-line")
    assert len(cable) == 60 and {r["model_name"] for r in cable} == {"cable-line"}
    listed = client.get("/parts", params={"product": "cable-line"})
    assert listed.status_code == 200 and 'id="total">60 parts' in listed.text and "bottle-line v1" not in listed.text
    grid = client.get("/grid", params={"product": "cable-line", "decision": "DEFECT"})
    assert set(_cells(grid.text)) == {r["sha256"] for r in cable if r["decision"] == "DEFECT"}
    assert "<option selected>cable-line</option>" in grid.text
    r = client.get("/parts", params={"product": "nope"})
    assert r.status_code == 400 and "bottle-line, cable-line" in r.text


def test_bulk_labels_write_one_row_per_part_and_the_grid_shows_them(client):
    rows = _rows(client, decision="DEFECT")[:4]
    items = [_item(r) for r in rows] + [_item(rows[0])]  # listed twice: one label
    r = _bulk(client, items, "defect", note="scratches")
    assert r.status_code == 200 and r.json()["refused"] == []
    saved = r.json()["saved"]
    assert sorted(s["sha256"] for s in saved) == sorted(x["sha256"] for x in rows)
    store = client.app.state.store
    assert all(len(store.history(x["sha256"])) == 1 for x in rows)
    assert {s["note"] for s in saved} == {"scratches"}
    grid = client.get("/grid", params={"state": "defect"}).text
    assert sorted(_cells(grid)) == sorted(x["sha256"] for x in rows) and grid.count("defect confirmed") >= 4
    ids = {s["sha256"]: s["id"] for s in saved}
    assert all(f'data-sha="{sha}" data-version="1" data-seen="{i}"' in grid for sha, i in ids.items())


def test_bulk_labels_refuse_per_part_conflicts_unknown_parts_and_error_rows(client):
    a, b, c = _rows(client, decision="DEFECT")[:3]
    first = _bulk(client, [_item(a)], "defect").json()["saved"][0]
    error_row = _rows(client, decision="ERROR")[0]
    items = [
        _item(a),  # seen nothing, but ann labelled it since: a conflict
        _item(b),
        _item(c, seen=None),
        {"sha256": "f" * 64, "model_version": "1"},
        {**_item(b), "model_version": "9"},
        _item(error_row),
    ]
    r = _bulk(client, items, "good", reviewer="bob")
    assert r.status_code == 200
    refused = {(x["sha256"], x["model_version"]): x for x in r.json()["refused"]}
    conflict = refused[(a["sha256"], "1")]
    assert conflict["status"] == 409 and "ann labelled this part" in conflict["error"]
    assert conflict["latest"]["id"] == first["id"]
    assert refused[("f" * 64, "1")] == {
        "sha256": "f" * 64,
        "model_version": "1",
        "status": 404,
        "error": "no inspected part with this sha256",
    }
    assert "not inspected by model version '9'" in refused[(b["sha256"], "9")]["error"]
    assert "ERROR" in refused[(error_row["sha256"], "1")]["error"]
    assert sorted(s["sha256"] for s in r.json()["saved"]) == sorted([b["sha256"], c["sha256"]])
    again = _bulk(client, [_item(a, seen=first["id"])], "good", reviewer="bob")  # having seen ann's label
    assert again.json()["saved"][0]["label"] == "good" and not again.json()["refused"]
    latest = client.app.state.store.latest()
    assert latest[(a["sha256"], "1")].reviewer == "bob" and len(latest) == 3


def test_bulk_labels_refuse_a_bad_label_too_many_parts_and_a_missing_csrf_token(client):
    rows = _rows(client, decision="NORMAL")
    for body, message in (
        ({"label": "ok"}, "unknown label 'ok'"),
        ({"reviewer": " "}, "needs a reviewer"),
        ({"note": "x" * 2001}, "at most 2000"),
    ):
        r = _bulk(client, [_item(rows[0])], **{"label": "good", **body})
        assert r.status_code == 422 and message in r.json()["error"]
    many = [{"sha256": f"{i:064x}", "model_version": "1"} for i in range(MAX_BULK + 1)]
    r = _bulk(client, many)
    assert r.status_code == 422 and f"at most {MAX_BULK}" in r.json()["error"]
    assert _bulk(client, []).status_code == 422
    plain = {"items": [_item(rows[0])], "label": "good", "reviewer": "ann"}
    assert client.post("/api/labels/bulk", json=plain).status_code == 403
    cross = client.post(
        "/api/labels/bulk", json=plain, headers={"X-CSRF-Token": client.app.state.csrf, "Origin": "http://evil.example"}
    )
    assert cross.status_code == 403 and client.app.state.store.latest() == {}


def test_the_overview_has_a_table_per_product_when_several_are_served(client, tmp_path):
    rows = _rows(client, product="cable-line", decision="DEFECT")[:2]
    _bulk(client, [_item(r) for r in rows], "defect")
    page = client.get("/").text
    table = page[page.index('id="products"') : page.index("</table>", page.index('id="products"'))]
    results = client.app.state.results
    for product in PRODUCTS:
        mine = results.frame[results.frame["model_name"] == product]
        row = table[table.index(f'data-product="{product}"') :].split("</tr>")[0]
        assert f'data-count="rows">{len(mine)}<' in row and f"/grid?product={product}" in row
        defects = int((mine["decision"] == "DEFECT").sum())
        assert f'/parts?product={product}&amp;decision=DEFECT">{defects}<' in row
        reviewed = 2 if product == "cable-line" else 0
        assert f'data-count="reviewed">{reviewed}<' in row
    single = make_inspection_folder(tmp_path / "one", n=20)
    alone = TestClient(create_app([single], f"sqlite:///{tmp_path / 'one.sqlite'}"), base_url=BASE)
    assert 'id="products"' not in alone.get("/").text and 'id="counts"' in alone.get("/").text
    assert 'id="product"' not in alone.get("/grid").text and 'id="product"' in client.get("/grid").text
