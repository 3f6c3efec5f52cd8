"""How fast the review app's list, grid, overview and part pages answer on a large inspection folder.

    .venv/bin/python benchmarks/review_list.py [--rows 10000] [--repeats 5]

Generates an inspection folder of two products (anomaflow.review.sample; images for the first 50 rows
only), labels 500 parts, then times GET requests in-process (FastAPI TestClient: the server's own
work, no network): the list's first page by score, a deep page, a filter on decision and review
state, one product, a sort by path; the grid's first page, a deep page, a filter, one product; the
overview and a part view, each once untimed first; then a bulk label of a grid page (48 unlabelled
parts a request). Prints the median and the worst of --repeats per request. Targets: list pages
100 ms, grid pages 200 ms.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import emit

PRODUCTS = ("anomaflow-demo", "anomaflow-demo-b")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    from fastapi.testclient import TestClient

    from anomaflow.review.app import GRID_PER_PAGE, create_app
    from anomaflow.review.sample import make_inspection_folder

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        folder = make_inspection_folder(Path(tmp) / "inspect", n=args.rows, images=50, products=PRODUCTS)
        client = TestClient(create_app([folder], f"sqlite:///{tmp}/labels.sqlite"), base_url="http://127.0.0.1:8050")
        print(f"{args.rows} rows generated and loaded in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        rows = client.app.state.results.frame
        store = client.app.state.store
        for sha, version in list(zip(rows["sha256"], rows["model_version"]))[:500]:
            store.add(sha, version, "good", "bench")
        pages = client.app.state.results.page({}).pages
        grid_pages = client.app.state.results.page({}, per_page=GRID_PER_PAGE).pages
        requests = {
            "list, page 1 by score": "/parts",
            f"list, page {pages // 2} by score": f"/parts?page={pages // 2}",
            "list, DEFECT and unreviewed": "/parts?decision=DEFECT&state=unreviewed",
            "list, sorted by path": "/parts?sort=path&order=asc",
            f"list, one product ({PRODUCTS[1]})": f"/parts?product={PRODUCTS[1]}",
            "grid, page 1 by score": "/grid",
            f"grid, page {grid_pages // 2} by score": f"/grid?page={grid_pages // 2}",
            "grid, DEFECT and unreviewed": "/grid?decision=DEFECT&state=unreviewed",
            f"grid, one product ({PRODUCTS[1]}), by path": f"/grid?product={PRODUCTS[1]}&sort=path&order=asc",
            "overview (counts, histogram)": "/",
            "part view": f"/parts/{rows['sha256'].iloc[0]}",
        }
        lines = [
            f"## Review app on {args.rows} rows, {len(PRODUCTS)} products (500 labelled), {args.repeats} requests each",
            "",
            "| request | median ms | worst ms |",
            "|---|---|---|",
        ]
        for name, url in requests.items():
            assert client.get(url).status_code == 200, url  # untimed: templates compiled, caches warm
            times = []
            for _ in range(args.repeats):
                t = time.perf_counter()
                r = client.get(url)
                times.append((time.perf_counter() - t) * 1000)
                assert r.status_code == 200, (url, r.status_code)
            lines.append(f"| {name} | {statistics.median(times):.0f} | {max(times):.0f} |")
        # A bulk label of a full grid page, each repeat on parts nobody labelled yet.
        scored = rows[rows["decision"] != "ERROR"].iloc[500:]
        headers = {"X-CSRF-Token": client.app.state.csrf}
        times = []
        for i in range(args.repeats):
            chunk = scored.iloc[i * GRID_PER_PAGE : (i + 1) * GRID_PER_PAGE]
            items = [{"sha256": sha, "model_version": v} for sha, v in zip(chunk["sha256"], chunk["model_version"])]
            body = {"items": items, "label": "good", "reviewer": "bench"}
            t = time.perf_counter()
            r = client.post("/api/labels/bulk", json=body, headers=headers)
            times.append((time.perf_counter() - t) * 1000)
            assert r.status_code == 200 and len(r.json()["saved"]) == len(items), r.text
        name = f"bulk label of a grid page ({GRID_PER_PAGE} parts, POST)"
        lines.append(f"| {name} | {statistics.median(times):.0f} | {max(times):.0f} |")
        emit(lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
