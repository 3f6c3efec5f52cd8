"""What the seeded benchmark scripts share: their command line and how they print a table."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from statistics import mean

REPO = Path(__file__).resolve().parents[1]
DATASETS = {  # development datasets by name: (root, category)
    "bottle": (REPO.parent / "shared" / "data" / "mvtec_ad", "bottle"),
    "elpv_mono": (REPO / "data" / "elpv", "elpv_mono"),
    "elpv_poly": (REPO / "data" / "elpv", "elpv_poly"),
    "bottle_tall": (REPO / "data" / "variants", "bottle_tall"),
    "bottle_wide": (REPO / "data" / "variants", "bottle_wide"),
    "bottle_mixed": (REPO / "data" / "variants", "bottle_mixed"),
}


def present(names: list[str]) -> list[tuple[str, Path, str]]:
    """(name, root, category) of each named development dataset that is on disk; the others are
    skipped with the reason on stderr."""
    found = []
    for name in names:
        root, category = DATASETS[name]
        if (root / category).is_dir():
            found.append((name, root, category))
        else:
            print(f"skipping {name}: {root / category} not found", file=sys.stderr)
    return found


def seeded_parser(doc: str | None) -> argparse.ArgumentParser:
    """--data/--category (default: MVTec AD Bottle in ../shared), --seeds 0 1 2, --threads,
    --cache-dir, --json (write every run) and --from-json (train nothing, print the stored table)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "mvtec_ad"))
    ap.add_argument("--category", default="bottle")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--cache-dir", default=str(REPO / ".anomaflow" / "cache"))
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument(
        "--from-json", type=Path, default=None, help="train nothing: print the table of an earlier --json output"
    )
    return ap


def category_parser(doc: str | None) -> argparse.ArgumentParser:
    """--data/--category (default: MVTec AD Bottle in ../shared), --threads 2, --json (write the
    rows) and --from-json (run nothing, print the stored table): one category, one seed."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "mvtec_ad")
    ap.add_argument("--category", default="bottle")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--from-json", type=Path, default=None, help="print the table of an earlier --json output")
    return ap


def inbox_parser(doc: str | None, copies: int) -> argparse.ArgumentParser:
    """--data/--category (default: MVTec AD Bottle in ../shared), --copies and --batch-size 16: the
    inbox of the inspection benchmarks, made from that category's test images."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "mvtec_ad"))
    ap.add_argument("--category", default="bottle")
    ap.add_argument("--copies", type=int, default=copies)
    ap.add_argument("--batch-size", type=int, default=16)
    return ap


def printed_stored(args: argparse.Namespace, table, data: bool = True) -> bool:
    """With --from-json: print that file's table and say so (True). Else exit with a message when
    --data/--category is not on disk (unless not `data`: the benchmark reads other datasets), and
    return False: the benchmark runs."""
    if args.from_json:
        emit(table(json.loads(args.from_json.read_text())["rows"]))
        return True
    if data and not (args.data / args.category).is_dir():
        sys.exit(f"no dataset at {args.data / args.category}")
    return False


def save_rows(path: Path | None, rows: list[dict]) -> None:
    """Store the rows with the command that made them, for `--from-json` to print the same table."""
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows}, indent=1))


def rows_main(ap: argparse.ArgumentParser, argv: list[str] | None, table, measure, data: bool = True) -> int:
    """The main of a benchmark that stores rows: parse argv; with --from-json print the stored table
    (see printed_stored for `data`), else print table(measure(args)) and store the rows (--json)."""
    args = ap.parse_args(argv)
    if printed_stored(args, table, data):
        return 0
    rows = measure(args)
    emit(table(rows))
    save_rows(args.json, rows)
    return 0


def table_lines(heads: list[str], rows, rule: str = "---") -> list[str]:
    """Markdown table lines: the heads, a `rule` under each, then one line per row of cells."""
    return [
        "| " + " | ".join(heads) + " |",
        f"|{rule}" * len(heads) + "|",
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


def row_table(heads: str, cells):
    """table(rows) for rows_main and printed_stored: the markdown lines of heads ("a | b | c"), then
    one line of cells(row) per row."""
    return lambda rows: table_lines(heads.split(" | "), map(cells, rows))


def emit(lines: list[str]) -> str:
    """Print a markdown table (after a blank line) and return its text."""
    text = "\n".join(lines)
    print("\n" + text)
    return text


def train_config(root, category: str, seed: int, threads: int | None, cache_dir: str | None, **fields):
    """The TrainConfig a benchmark fits: root/category with this seed, torch threads and decoded-image
    cache; `fields` sets the rest (detector: PatchCore unless given)."""
    from anomaflow.model.config import TrainConfig

    fields.setdefault("detector", "patchcore")
    return TrainConfig(
        data_root=str(root), category=category, seed=seed, cache_dir=cache_dir, num_threads=threads, **fields
    )


def patchcore_seed_configs(args: argparse.Namespace, threads: int | None) -> list:
    """One PatchCore TrainConfig per --seeds entry, on --data/--category, with --cache-dir."""
    return [train_config(args.data, args.category, seed, threads, args.cache_dir) for seed in args.seeds]


def fit_patches(cfg, ds, train_limit: int | None, log=lambda m: None) -> tuple:
    """PatchCore's training patches, split as the training flow does: (arrays, the fit images used: at
    most train_limit, a seeded pick in their order; the unfitted detector; their patch features
    (n, dim); the seconds those took)."""
    import time

    import numpy as np

    from anomaflow.model import pipeline

    arrays = pipeline.load_arrays(ds, cfg, log=log)
    fit = arrays.fit
    if train_limit is not None and train_limit < len(fit):
        fit = fit[np.sort(np.random.default_rng(cfg.seed).permutation(len(fit))[:train_limit])]
    det = pipeline.builder(arrays)(cfg)
    t0 = time.perf_counter()
    patches = det.features(fit)
    patches = patches.reshape(-1, patches.shape[-1]).contiguous()
    return arrays, fit, det, patches, time.perf_counter() - t0


def log_row(row: dict) -> None:
    """A result row on stderr as it is made: key=value, floats to 4 decimals."""
    print(
        " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
        file=sys.stderr,
        flush=True,
    )


def mean_table(runs: list[dict], keys: list[str], cols: list[str], fmt) -> list[str]:
    """Markdown table lines: one row per distinct `keys` value (first seen first), each column the
    mean over those runs formatted with fmt(column) (e.g. ".4f"), "–" where the runs lack it."""
    cells = []
    for key in dict.fromkeys(tuple(r[k] for k in keys) for r in runs):
        rs = [r for r in runs if tuple(r[k] for k in keys) == key]
        means = ["–" if c not in rs[0] else format(mean(float(r[c]) for r in rs), fmt(c)) for c in cols]
        cells.append([*map(str, key), *means])
    return table_lines(keys + cols, cells, rule=" --- ")


def store_runs(path: Path | None, title: str, runs: list[dict]) -> None:
    """Write {"title", "runs"} as --json asked (what --from-json reads back)."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"title": title, "runs": runs}, indent=2, default=float))


def replay(args: argparse.Namespace, report) -> bool:
    """--from-json: print the stored table with `report(runs, title)` and say so (train nothing)."""
    if not getattr(args, "from_json", None):
        return False
    stored = json.loads(args.from_json.read_text())
    report(stored["runs"], stored["title"])
    return True
