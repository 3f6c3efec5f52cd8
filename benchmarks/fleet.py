"""How long `anomaflow train --category all` takes for a small plant, and whether running products
side by side pays on this machine.

    .venv/bin/python benchmarks/fleet.py [--data ../shared/data/mvtec_ad] [--generated 2] \\
        [--plans 1x2 2x1] [--detector auto] [--json benchmarks/results/fleet.json]

The plant is every category of --data (MVTec AD Bottle in ../shared, linked, never copied) plus
--generated demo categories (seeded, 256 px). Each plan CxT runs the whole command once as a user
would (its own temporary Prefect server, a fresh MLflow SQLite store and no image cache): C
products at a time, T torch threads each. Prints the wall time of each plan and each product's
row of the fleet table; --from-json prints a stored table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import REPO, row_table, rows_main

TABLE = row_table(
    "plan | wall s | products ok | product | detector | image AUROC | pixel AUROC",
    lambda r: [
        r["plan"],
        f"{r['wall_s']:.0f}",
        str(r["ok"]),
        r["product"],
        r["detector"] or "-",
        "-" if r["image_auroc"] is None else f"{r['image_auroc']:.3f}",
        "-" if r["pixel_auroc"] is None else f"{r['pixel_auroc']:.3f}",
    ],
)


def plant(root: Path, data: Path, generated: int) -> list[str]:
    """root/<category> for every category of `data` (a link) and `generated` demo categories."""
    from anomaflow.model.data.datasets import mvtec_categories
    from anomaflow.model.data.demo import make_demo_dataset

    root.mkdir(parents=True)
    for c in mvtec_categories(data):
        (root / c).symlink_to((data / c).resolve(), target_is_directory=True)
    for i in range(generated):
        make_demo_dataset(root, f"generated_{i}", seed=i)
    return mvtec_categories(root)


def measure(args: argparse.Namespace) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="anomaflow-fleet-") as tmp:
        products = plant(Path(tmp) / "plant", args.data, args.generated)
        print(f"plant: {', '.join(products)}", file=sys.stderr)
        for plan in args.plans:
            at_once, threads = (int(x) for x in plan.split("x"))
            work = Path(tmp) / plan
            work.mkdir()
            env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}"}
            command = [
                str(Path(sys.executable).with_name("anomaflow")),
                "train",
                "--data",
                str(Path(tmp) / "plant"),
                "--category",
                "all",
                "--detector",
                args.detector,
                "--concurrency",
                str(at_once),
                "--threads",
                str(threads),
                "--output",
                str(work / "out"),
            ]
            t0 = time.perf_counter()
            done = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            summary = work / "out" / "fleet.json"
            if not summary.is_file():
                sys.exit(f"plan {plan} wrote no fleet.json (exit {done.returncode}):\n{done.stderr[-3000:]}")
            table = json.loads(summary.read_text())["products"]
            ok = sum(r["status"] == "ok" for r in table)
            print(f"plan {plan}: {wall:.0f} s, {ok} of {len(table)} ok", file=sys.stderr)
            for r in table:
                rows.append({"plan": plan, "wall_s": wall, "ok": ok, **{k: r[k] for k in ("product", "detector")}})
                rows[-1].update(image_auroc=r["image_auroc"], pixel_auroc=r["pixel_auroc"])
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "mvtec_ad")
    ap.add_argument("--generated", type=int, default=2, help="demo categories added to the plant")
    ap.add_argument("--plans", nargs="+", default=["1x2", "2x1"], help="CxT: C products at a time, T threads each")
    ap.add_argument("--detector", default="auto")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--from-json", type=Path, default=None, help="print the table of an earlier --json output")
    return rows_main(ap, argv, TABLE, measure, data=False)


if __name__ == "__main__":
    sys.exit(main())
