"""The review app's label store, pages and safety rules, through FastAPI's TestClient (no browser)."""

from __future__ import annotations

import pytest

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from anomaflow.review.app import create_app  # noqa: E402
from anomaflow.review.sample import make_inspection_folder  # noqa: E402
from anomaflow.tasks.labels import Conflict, LabelError, LabelStore  # noqa: E402


@pytest.fixture()
def folder(tmp_path):
    return make_inspection_folder(tmp_path / "inspect", n=120, seed=0)


BASE = "http://127.0.0.1:8050"  # what a browser on the default binding sends as Host and Origin


def _client(folder, tmp_path, **kw) -> TestClient:
    return TestClient(create_app([folder], f"sqlite:///{tmp_path / 'labels.sqlite'}", **kw), base_url=BASE)


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
    assert page.status_code == 200 and f"{counts['DEFECT']} parts" in page.text
    row = _first(client)
    part = client.get(f"/parts/{row['sha256']}")
    assert part.status_code == 200 and row["path"] in part.text and row["sha256"] in part.text
    assert client.get(f"/image/{row['sha256']}/view").headers["content-type"] == "image/jpeg"
    assert client.get(f"/image/{row['sha256']}/overlay").status_code == 200


def test_label_round_trip_with_conflict_and_a_refused_value(folder, tmp_path):
    client = _client(folder, tmp_path)
    row = _first(client)
    h = {"X-CSRF-Token": _csrf(client)}
    body = {
        "sha256": row["sha256"],
        "model_version": "1",
        "label": "defect",
        "reviewer": "ann",
        "note": "",
        "seen": None,
    }
    r = client.post("/api/labels", json=body, headers=h)
    assert r.status_code == 200 and r.json()["label"]["label"] == "defect" and r.json()["next"] != row["sha256"]
    stale = client.post("/api/labels", json={**body, "label": "good", "reviewer": "bob"}, headers=h)
    assert stale.status_code == 409 and "ann labelled this part" in stale.json()["error"]
    bad = client.post("/api/labels", json={**body, "label": "ok", "seen": r.json()["label"]["id"]}, headers=h)
    assert (
        bad.status_code == 422
        and "unknown label 'ok'; expected one of defect, good, missed, unsure" in bad.json()["error"]
    )
    reviewed = client.get("/parts", params={"state": "reviewed"})
    assert "1 parts" in reviewed.text and "defect confirmed" in reviewed.text


def test_posts_need_the_csrf_token_and_a_same_origin(folder, tmp_path):
    client = _client(folder, tmp_path)
    row = _first(client)
    body = {"sha256": row["sha256"], "model_version": "1", "label": "defect", "reviewer": "ann"}
    assert client.post("/api/labels", json=body).status_code == 403
    assert client.post("/api/labels", json=body, headers={"X-CSRF-Token": "forged"}).status_code == 403
    cross = client.post(
        "/api/labels", json=body, headers={"X-CSRF-Token": _csrf(client), "Origin": "http://evil.example"}
    )
    assert cross.status_code == 403 and "cross-origin" in cross.json()["error"]
    assert client.app.state.store.latest() == {}


@pytest.mark.parametrize(
    "attempt", ["../results.csv", "..%2F..%2Fetc%2Fpasswd", "%2e%2e/labels.sqlite", "0" * 63 + "/view"]
)
def test_images_are_served_by_sha256_only(folder, tmp_path, attempt):
    client = _client(folder, tmp_path)
    assert client.get(f"/image/{attempt}/view").status_code == 404
    assert client.get(f"/image/{_first(client)['sha256']}/../../results.csv").status_code == 404


def test_a_token_is_required_when_set_and_kept_in_a_cookie(folder, tmp_path):
    client = _client(folder, tmp_path, token="s3cret-token-0123")
    assert client.get("/").status_code == 401
    assert client.get("/", params={"token": "wrong"}).status_code == 401
    assert client.get("/", params={"token": "s3cret-token-0123"}).status_code == 200
    assert client.get("/parts").status_code == 200  # the cookie carries it from here


def test_review_refuses_another_address_without_a_token(folder, capsys):
    from anomaflow.flows.cli import main

    assert main(["review", "--results", str(folder), "--host", "0.0.0.0"]) == 2
    assert "give --token" in capsys.readouterr().err


def test_a_missing_folder_is_a_clear_error_and_an_empty_one_waits_for_results(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        create_app([tmp_path / "typo"], f"sqlite:///{tmp_path / 'l.sqlite'}")
    empty = tmp_path / "not-yet"
    empty.mkdir()
    client = TestClient(create_app([empty], f"sqlite:///{tmp_path / 'l.sqlite'}"), base_url=BASE)
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

    (folder / "drift.json").write_text(
        json.dumps(
            [
                {
                    "at": "2026-11-30T10:00:00",
                    "model_name": "m",
                    "model_version": "1",
                    "flagged": False,
                    "summary": "no drift past the limits (old)",
                },
                {
                    "at": "2026-12-01T10:00:00",
                    "model_name": "m",
                    "model_version": "2",
                    "flagged": True,
                    "summary": "DRIFT: brightness moved +3.10",
                },
            ]
        )
    )
    page = _client(folder, tmp_path).get("/").text
    assert "DRIFT: brightness moved +3.10" in page and "(old)" not in page and 'class="warn"' in page


def _label(client: TestClient, row: dict, **kw) -> dict:
    return {"sha256": row["sha256"], "model_version": row["model_version"], "label": "defect", "reviewer": "ann", **kw}


def test_another_host_name_is_refused_so_dns_rebinding_reads_and_writes_nothing(folder, tmp_path):
    client = _client(folder, tmp_path)
    evil = "rebind.evil.example:8050"
    page = client.get("/", headers={"Host": evil})
    assert page.status_code == 400 and _csrf(client) not in page.text and "--allowed-host" in page.text
    post = client.post(
        "/api/labels",
        json=_label(client, _first(client)),
        headers={"Host": evil, "Origin": f"http://{evil}", "X-CSRF-Token": _csrf(client)},
    )
    assert post.status_code == 400 and client.app.state.store.latest() == {}
    for name in ("localhost:8050", "127.0.0.1:8050", "[::1]:8050", "LOCALHOST"):
        assert client.get("/", headers={"Host": name}).status_code == 200, name
    assert client.get("/", headers={"Host": "127.0.0.1@evil.example"}).status_code == 400


@pytest.mark.parametrize(
    "origin",
    [
        "https://127.0.0.1:8050",
        "http://127.0.0.1:9999",
        "http://rebind.evil.example:8050",
        "null",
        "http://127.0.0.1:8050@evil.example",
    ],
)
def test_origin_is_compared_with_scheme_port_and_the_allowed_names(folder, tmp_path, origin):
    client = _client(folder, tmp_path)
    r = client.post(
        "/api/labels", json=_label(client, _first(client)), headers={"X-CSRF-Token": _csrf(client), "Origin": origin}
    )
    assert r.status_code == 403 and "cross-origin" in r.json()["error"] and client.app.state.store.latest() == {}
    # another allowed name of this server on the same scheme and port is this server
    ok = client.post(
        "/api/labels",
        json=_label(client, _first(client)),
        headers={"X-CSRF-Token": _csrf(client), "Origin": "http://localhost:8050"},
    )
    assert ok.status_code == 200


def test_allowed_host_adds_names_from_the_command_line(folder, monkeypatch):
    import uvicorn

    from anomaflow.flows.cli import main

    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.update(app=app, **kw))
    assert (
        main(["review", "--results", str(folder), "--allowed-host", "review.lan", "--allowed-host", "qa.example"]) == 0
    )
    client = TestClient(served["app"], base_url="http://review.lan:8050")
    assert client.get("/").status_code == 200 and client.get("/", headers={"Host": "qa.example"}).status_code == 200
    assert client.get("/", headers={"Host": "127.0.0.1:8050"}).status_code == 200
    assert client.get("/", headers={"Host": "other.example"}).status_code == 400
    h = {"X-CSRF-Token": served["app"].state.csrf, "Origin": "http://review.lan:8050"}
    assert (
        client.post(
            "/api/labels",
            json=_label(client, served["app"].state.results.page({}, decision="DEFECT").rows[0]),
            headers=h,
        ).status_code
        == 200
    )


def test_a_wildcard_bind_answers_any_name_behind_the_token(folder, tmp_path):
    token = "a-long-random-review-token"
    client = _client(folder, tmp_path, token=token, host="0.0.0.0")
    assert client.get("/", headers={"Host": "review-box:8050"}).status_code == 401
    assert client.get("/", headers={"Host": "review-box:8050", "Authorization": f"Bearer {token}"}).status_code == 200
    named = _client(folder, tmp_path, token=token, host="0.0.0.0", allowed_hosts=["review-box"])
    assert named.get("/", headers={"Host": "other-box:8050", "Authorization": f"Bearer {token}"}).status_code == 400
    assert named.get("/", headers={"Host": "review-box:8050", "Authorization": f"Bearer {token}"}).status_code == 200


def test_a_token_needs_the_bearer_scheme_and_16_characters(folder, tmp_path, capsys):
    from anomaflow.flows.cli import main

    token = "s3cret-token-0123"
    client = _client(folder, tmp_path, token=token)
    assert client.get("/", headers={"Authorization": token}).status_code == 401
    assert client.get("/", headers={"Authorization": f"Basic {token}"}).status_code == 401
    assert client.get("/", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    with pytest.raises(ValueError, match="at least 16"):
        create_app([folder], f"sqlite:///{tmp_path / 'l.sqlite'}", token="short-token")
    assert main(["review", "--results", str(folder), "--host", "0.0.0.0", "--token", "short-token"]) == 2
    assert "at least 16" in capsys.readouterr().err


def test_a_link_planted_in_the_results_folder_is_never_followed(folder, tmp_path, caplog):
    from anomaflow.model.operations.inspection import FIGURES_DIR, defect_figure_paths, view_paths

    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0:root:/root:/bin/bash\n")
    client = _client(folder, tmp_path)
    sha = _first(client)["sha256"]
    view, overlay = view_paths(folder, sha)
    view.unlink()
    view.symlink_to(secret)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / defect_figure_paths(folder, sha)[1].name).write_text("a file outside the results folder")
    (folder / FIGURES_DIR).symlink_to(elsewhere, target_is_directory=True)
    with caplog.at_level("WARNING", logger="anomaflow.model.operations.results"):
        r = client.get(f"/image/{sha}/view")
        assert r.status_code == 404 and "root:" not in r.text
        assert client.get(f"/image/{sha}/defect_overlay").status_code == 404
    assert "symbolic link" in caplog.text and str(view) in caplog.text
    assert (
        client.get(f"/image/{sha}/overlay").status_code == 200 and overlay.is_file()
    )  # the real file next to it is served


@pytest.mark.parametrize(
    "body",
    [
        '{"sha256": "%s", "model_version": "1", "label": "defect", "reviewer": "ann", "seen": NaN}',
        '{"sha256": "%s", "model_version": "1", "label": "defect", "reviewer": "ann", "seen": Infinity}',
        '{"sha256": "%s", "model_version": "1", "label": "defect", "reviewer": "ann", "seen": -1e999}',
        '{"sha256": NaN, "model_version": "1", "label": "defect", "reviewer": "ann"}',
        '{"sha256": "%s", "model_version": "1", "label": "defect", "reviewer": "\\ud800"}',
        '{"sha256": "%s", "model_version": 1',
        "[1, 2]",
        '"%s"',
        "",
    ],
)
def test_nan_infinity_and_malformed_bodies_get_a_json_error(folder, tmp_path, body):
    client = _client(folder, tmp_path)
    content = body.replace("%s", _first(client)["sha256"])
    r = client.post(
        "/api/labels", content=content, headers={"X-CSRF-Token": _csrf(client), "Content-Type": "application/json"}
    )
    assert r.status_code == 422 and r.json()["error"] and client.app.state.store.latest() == {}


def test_a_label_needs_a_scored_row_of_that_model_version_and_counts_agree(folder, tmp_path):
    client = _client(folder, tmp_path)
    h = {"X-CSRF-Token": _csrf(client)}
    row = _first(client)
    for version in ("999", ""):
        r = client.post("/api/labels", json=_label(client, row, model_version=version), headers=h)
        assert r.status_code == 422 and f"not inspected by model version {version!r}" in r.json()["error"]
    error_row = _first(client, "ERROR")
    r = client.post("/api/labels", json=_label(client, error_row), headers=h)
    assert r.status_code == 422 and "ERROR" in r.json()["error"]
    assert client.app.state.store.latest() == {}
    client.app.state.store.add(row["sha256"], "999", "defect", "old-tool")  # a stray label already in the database
    assert client.post("/api/labels", json=_label(client, row), headers=h).status_code == 200
    assert "defect confirmed: 1<" in client.get("/").text
    assert 'id="total">1 parts' in client.get("/parts", params={"state": "reviewed"}).text
    results = client.app.state.results
    errors = set(results.frame.loc[results.frame["decision"] == "ERROR", "sha256"])
    assert (
        errors and not {results.neighbours(s, {}) for s in results.frame["sha256"]} & errors
    )  # never sent to an ERROR row


@pytest.mark.parametrize(
    "query, allowed",
    [
        ({"sort": "size"}, "score, path, inspected_at, decision"),
        ({"order": "up"}, "desc, asc"),
        ({"decision": "maybe"}, "NORMAL, DEFECT, ERROR"),
        ({"state": "done"}, "unreviewed, reviewed"),
        ({"page": "two"}, "valid integer"),
    ],
)
def test_every_invalid_query_value_is_a_400_naming_the_allowed_values(folder, tmp_path, query, allowed):
    r = _client(folder, tmp_path).get("/parts", params=query)
    assert r.status_code == 400 and allowed in r.text


def test_the_reviews_export_neutralises_formulas_and_results_csv_stays_exact(folder, tmp_path):
    import csv
    import io

    results_csv = folder / "results.csv"
    first = next(r for r in csv.DictReader(io.StringIO(results_csv.read_text())) if r["decision"] == "DEFECT")
    results_csv.write_text(results_csv.read_text().replace(first["path"], "=1+2.png"))
    client = _client(folder, tmp_path)
    row = client.app.state.results.rows_for(first["sha256"]).iloc[-1].to_dict()
    r = client.post(
        "/api/labels",
        json=_label(client, row, reviewer="-ann", note="@SUM(A1) cracked"),
        headers={"X-CSRF-Token": _csrf(client)},
    )
    assert r.status_code == 200
    export = client.get("/export/reviews.csv")
    assert export.status_code == 200 and export.headers["content-type"].startswith("text/csv")
    lines = list(csv.DictReader(io.StringIO(export.text)))
    assert len(lines) == 1  # only labelled parts
    got = lines[0]
    assert (got["path"], got["reviewer"], got["note"]) == ("'=1+2.png", "'-ann", "'@SUM(A1) cracked")
    assert (got["sha256"], got["label"], float(got["score"])) == (first["sha256"], "defect", float(first["score"]))
    assert '\n"=1+2.png",' in results_csv.read_text() or "\n=1+2.png," in results_csv.read_text()  # the ledger is exact


def test_the_default_label_database_is_a_fleets_own_else_the_first_folders(tmp_path):
    from anomaflow.model.operations.results import FLEET_SUMMARY, default_label_db

    fleet = tmp_path / "inspected"
    for product in ("bottle", "cable"):
        (fleet / product).mkdir(parents=True)
    first = f"sqlite:///{(fleet / 'bottle').resolve() / 'review.sqlite'}"
    assert default_label_db([fleet / "bottle", fleet / "cable"]) == first  # no fleet.json: not a fleet's
    (fleet / FLEET_SUMMARY).write_text("{}")
    shared = f"sqlite:///{fleet.resolve() / 'review.sqlite'}"
    assert default_label_db([fleet / "bottle", fleet / "cable"]) == shared
    assert default_label_db([fleet / "cable"]) == shared  # one product of the fleet opened alone: the same labels
    other = tmp_path / "elsewhere"
    other.mkdir()
    assert default_label_db([fleet / "bottle", other]) == first  # folders of different roots
