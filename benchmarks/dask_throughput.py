"""Sharded batch inspection on a Dask LocalCluster: throughput with 1 and 2 workers against the
default in-process runner, same inbox, same registered model.

    .venv/bin/python benchmarks/dask_throughput.py [--data ROOT --category bottle] [--copies 2]

Builds an inbox from a category's test images (real MVTec Bottle from ../shared when present,
else the generated demo data), trains a 1-epoch autoencoder (speed does not depend on quality),
registers it in a temporary SQLite MLflow store, then runs `batch-inspection` into a fresh
output folder per runner under a temporary Prefect API. Prints a markdown table:
- inspect images/s: the inspection phase (plan, hash, decode, score, write rows and heat maps;
  on Dask also each worker's model download and load), as the flow reports it;
- flow images/s: the whole flow call, including starting the LocalCluster's processes;
- CPU ms/image: CPU time of the flow process and its Dask worker processes (not the Prefect
  API server) per image: what each runner costs, less sensitive than wall time to other load.
Every Dask worker is one process with one torch thread; the in-process runner uses --threads.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from benchmarks.common import inbox_parser


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (LocalCluster workers end with the flow)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def main(argv=None) -> int:
    ap = inbox_parser(__doc__, copies=2)
    ap.add_argument("--shard-size", type=int, default=16)
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument(
        "--threads", type=int, default=None, help="torch threads of the in-process runner (default: all cores)"
    )
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument(
        "--repeat", type=int, default=1, help="rounds (order reversed every other round); medians are printed"
    )
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="anomaflow-dask-bench-"))
    from inspection_throughput import prepare
    from prefect.testing.utilities import prefect_test_harness

    from anomaflow.flows.inspection import batch_inspection

    name = "anomaflow-dask-bench"
    _, files, threads = prepare(args, work, name)
    inbox, n = work / "inbox", len(files)
    print(
        f"{n} images ({args.category} test x{args.copies}), model at {args.image_size}px; {os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.1f} before the runs",
        file=sys.stderr,
    )

    runners = [("in-process", 0)] + [
        (f"Dask LocalCluster, {w} worker{'s' if w > 1 else ''} x 1 thread", w) for w in args.workers
    ]
    runs: dict[int, list[dict]] = {w: [] for _, w in runners}
    with prefect_test_harness(server_startup_timeout=120):
        batch_inspection(
            input_dir=str(inbox), output_dir=str(work / "warm"), model_name=name, batch_size=args.batch_size
        )  # warm-up
        for rnd in range(args.repeat):
            for _label, workers in runners if rnd % 2 == 0 else runners[::-1]:
                out = work / f"out-{rnd}-{workers}"
                t0, c0 = time.perf_counter(), cpu_seconds()
                res = batch_inspection(
                    input_dir=str(inbox),
                    output_dir=str(out),
                    model_name=name,
                    batch_size=args.batch_size,
                    dask_workers=workers,
                    shard_size=args.shard_size,
                )
                wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
                assert res["inspected"] == n, res
                runs[workers].append(
                    {
                        "inspect_ips": res["images_per_second"],
                        "flow_ips": n / wall,
                        "flow_seconds": wall,
                        "cpu_ms_per_image": 1000 * cpu / n,
                        "counts": {k: res[k] for k in ("NORMAL", "DEFECT", "ERROR")},
                    }
                )

    results = [
        {
            "runner": label,
            "workers": w,
            **{
                k: statistics.median(r[k] for r in runs[w])
                for k in ("inspect_ips", "flow_ips", "flow_seconds", "cpu_ms_per_image")
            },
            "rounds": runs[w],
        }
        for label, w in runners
    ]
    base = results[0]["inspect_ips"]
    print(
        "\n| runner | inspect images/s | inspect vs in-process "
        "| flow images/s (incl. cluster start) | flow s | CPU ms/image |\n"
        "| --- | --- | --- | --- | --- | --- |"
    )
    for r in results:
        print(
            f"| {r['runner']} | {r['inspect_ips']:.1f} | {r['inspect_ips'] / base:.2f} "
            f"| {r['flow_ips']:.1f} | {r['flow_seconds']:.1f} "
            f"| {r['cpu_ms_per_image']:.0f} |"
        )
    counts = {json.dumps(r["counts"], sort_keys=True) for w in runs for r in runs[w]}
    print(
        f"\n{n} images, batch {args.batch_size}, shards of {args.shard_size}, {args.image_size}px; "
        f"in-process torch threads: {threads}; "
        f"median of {args.repeat} round(s); load average {os.getloadavg()[0]:.1f} after; "
        f"decisions (all runs): {' / '.join(counts)}"
    )
    if args.json:
        args.json.write_text(json.dumps({"images": n, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
