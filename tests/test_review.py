"""The review app's label store, pages and safety rules, through FastAPI's TestClient (no browser)."""
from __future__ import annotations

import pytest

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from review.app import create_app  # noqa: E402
from review.sample import make_inspection_folder  # noqa: E402
from review.store import Conflict, LabelError, LabelStore  # noqa: E402


@pytest.fixture()
def folder(tmp_path):
    return make_inspection_folder(tmp_path / "inspect", n=120, seed=0)


def _client(folder, tmp_path, **kw) -> TestClient:
    return TestClient(create_app([folder], f"sqlite:///{tmp_path / 'labels.sqlite'}", **kw))


def _csrf(client: TestClient) -> str:
    return client.app.state.csrf


def _first(client: TestClient, decision: str = "DEFECT") -> dict:
    return client.app.state.results.page({}, decision=decision).rows[0]


def test_labels_are_append_only_the_latest_wins_and_survive_a_restart(tmp_path):
    url = f"sqlite:///{tmp_path / 'l.sqlite'}"
    store = LabelStore(url)
    a = store.add("a" * 64, "3", "defect", "ann", note="crack at the neck")
    b = store.add("a" * 64, "3", "good", "bob", seen=a.id)
    store.add("a" * 64, "4", "missed", "ann")  # another model version: its own verdict to review
    again = LabelStore(url)  # a restarted server
    assert [h.label for h in again.history("a" * 64)] == ["defect", "good", "missed"]
    assert again.latest()[("a" * 64, "3")].id == b.id and again.latest()[("a" * 64, "3")].reviewer == "bob"
    assert again.history("a" * 64)[0].note == "crack at the neck"


def test_a_second_reviewer_does_not_silently_overwrite_the_first(tmp_path):
    store = LabelStore(f"sqlite:///{tmp_path / 'l.sqlite'}")
    seen = None  # both opened the part before anyone labelled it
    store.add("b" * 64, "1", "defect", "ann", seen=seen)
    with pytest.raises(Conflict, match="ann labelled this part 'defect'"):
        store.add("b" * 64, "1", "good", "bob", seen=seen)
    assert [h.label for h in store.history("b" * 64)] == ["defect"]
    with pytest.raises(LabelError, match="unknown label 'maybe'"):
        store.add("b" * 64, "1", "maybe", "bob")


def test_overview_list_and_part_pages_render(folder, tmp_path):
    client = _client(folder, tmp_path)
    home = client.get("/")
    assert home.status_code == 200 and "score histogram" in home.text and "anomaflow-demo v1" in home.text
    counts = client.app.state.results.counts()
    assert f'data-decision="DEFECT">{counts["DEFECT"]}<' in home.text
    page = client.get("/parts", params={"decision": "DEFECT", "sort": "score", "order": "desc"})
    assert page.status_code == 200 and f'{counts["DEFECT"]} parts' in page.text
    row = _first(client)
    part = client.get(f"/parts/{row['sha256']}")
    assert part.status_code == 200 and row["path"] in part.text and row["sha256"] in part.text
    assert client.get(f"/image/{row['sha256']}/view").headers["content-type"] == "image/jpeg"
    assert client.get(f"/image/{row['sha256']}/overlay").status_code == 200


def test_label_round_trip_with_conflict_and_a_refused_value(folder, tmp_path):
    client = _client(folder, tmp_path)
    row = _first(client)
    h = {"X-CSRF-Token": _csrf(client)}
    body = {"sha256": row["sha256"], "model_version": "1", "label": "defect", "reviewer": "ann", "note": "", "seen": None}
    r = client.post("/api/labels", json=body, headers=h)
    assert r.status_code == 200 and r.json()["label"]["label"] == "defect" and r.json()["next"] != row["sha256"]
    stale = client.post("/api/labels", json={**body, "label": "good", "reviewer": "bob"}, headers=h)
    assert stale.status_code == 409 and "ann labelled this part" in stale.json()["error"]
    bad = client.post("/api/labels", json={**body, "label": "ok", "seen": r.json()["label"]["id"]}, headers=h)
    assert bad.status_code == 422 and "unknown label 'ok'; expected one of defect, good, missed, unsure" in bad.json()["error"]
    reviewed = client.get("/parts", params={"state": "reviewed"})
    assert "1 parts" in reviewed.text and "defect confirmed" in reviewed.text


def test_posts_need_the_csrf_token_and_a_same_origin(folder, tmp_path):
    client = _client(folder, tmp_path)
    row = _first(client)
    body = {"sha256": row["sha256"], "model_version": "1", "label": "defect", "reviewer": "ann"}
    assert client.post("/api/labels", json=body).status_code == 403
    assert client.post("/api/labels", json=body, headers={"X-CSRF-Token": "forged"}).status_code == 403
    cross = client.post("/api/labels", json=body, headers={"X-CSRF-Token": _csrf(client), "Origin": "http://evil.example"})
    assert cross.status_code == 403 and "cross-origin" in cross.json()["error"]
    assert client.app.state.store.latest() == {}


@pytest.mark.parametrize("attempt", ["../results.csv", "..%2F..%2Fetc%2Fpasswd", "%2e%2e/labels.sqlite", "0" * 63 + "/view"])
def test_images_are_served_by_sha256_only(folder, tmp_path, attempt):
    client = _client(folder, tmp_path)
    assert client.get(f"/image/{attempt}/view").status_code == 404
    assert client.get(f"/image/{_first(client)['sha256']}/../../results.csv").status_code == 404


def test_a_token_is_required_when_set_and_kept_in_a_cookie(folder, tmp_path):
    client = _client(folder, tmp_path, token="s3cret-token")
    assert client.get("/").status_code == 401
    assert client.get("/", params={"token": "wrong"}).status_code == 401
    assert client.get("/", params={"token": "s3cret-token"}).status_code == 200
    assert client.get("/parts").status_code == 200  # the cookie carries it from here


def test_review_refuses_another_address_without_a_token(folder, capsys):
    from flows.cli import main

    assert main(["review", "--results", str(folder), "--host", "0.0.0.0"]) == 2
    assert "give --token" in capsys.readouterr().err


def test_a_missing_folder_is_a_clear_error_and_an_empty_one_waits_for_results(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        create_app([tmp_path / "typo"], f"sqlite:///{tmp_path / 'l.sqlite'}")
    empty = tmp_path / "not-yet"
    empty.mkdir()
    client = TestClient(create_app([empty], f"sqlite:///{tmp_path / 'l.sqlite'}"))
    assert "no results.csv in" in client.get("/").text and "0 parts" in client.get("/parts").text
    make_inspection_folder(empty, n=10)  # the inspection runs: the next request shows it
    assert "10 parts" in client.get("/parts").text
    assert client.get("/health").text == "ok"


def race(store: LabelStore, sha256: str, reviewers: int = 10) -> list[str]:
    """`reviewers` threads label one unlabelled part at the same moment, each having seen no
    label; returns 'saved' or 'conflict' per thread."""
    import threading

    outcomes: list[str] = []
    start = threading.Barrier(reviewers)

    def label(i: int) -> None:
        start.wait()
        try:
            store.add(sha256, "7", "defect" if i % 2 else "good", f"reviewer{i}", seen=None)
            outcomes.append("saved")
        except Conflict:
            outcomes.append("conflict")

    threads = [threading.Thread(target=label, args=(i,)) for i in range(reviewers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sorted(outcomes)


def test_ten_reviewers_at_once_on_sqlite_one_write_lands(tmp_path):
    assert race(LabelStore(f"sqlite:///{tmp_path / 'l.sqlite'}"), "d" * 64) == ["conflict"] * 9 + ["saved"]


def test_the_overview_shows_the_latest_drift_report(folder, tmp_path):
    import json

    (folder / "drift.json").write_text(json.dumps([
        {"at": "2026-11-30T10:00:00", "model_name": "m", "model_version": "1", "flagged": False, "summary": "no drift past the limits (old)"},
        {"at": "2026-12-01T10:00:00", "model_name": "m", "model_version": "2", "flagged": True, "summary": "DRIFT: brightness moved +3.10"},
    ]))
    page = _client(folder, tmp_path).get("/").text
    assert "DRIFT: brightness moved +3.10" in page and "(old)" not in page and 'class="warn"' in page
