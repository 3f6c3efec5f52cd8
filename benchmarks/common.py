"""What the seeded benchmark scripts share: their command line and how they print a table."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

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
    import sys

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
    ap.add_argument("--from-json", type=Path, default=None, help="train nothing: print the table of an earlier --json output")
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


def printed_stored(args: argparse.Namespace, table) -> bool:
    """With --from-json: print that file's table and say so (True). Else exit with a message when
    --data/--category is not on disk, and return False: the benchmark runs."""
    import sys

    if args.from_json:
        emit(table(json.loads(args.from_json.read_text())["rows"]))
        return True
    if not (args.data / args.category).is_dir():
        sys.exit(f"no dataset at {args.data / args.category}")
    return False


def save_rows(path: Path | None, rows: list[dict]) -> None:
    """Store the rows with the command that made them, for `--from-json` to print the same table."""
    import sys

    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows}, indent=1))


def emit(lines: list[str]) -> str:
    """Print a markdown table (after a blank line) and return its text."""
    text = "\n".join(lines)
    print("\n" + text)
    return text


def patchcore_seed_configs(args: argparse.Namespace, threads: int | None) -> list:
    """One PatchCore TrainConfig per --seeds entry, on --data/--category, with --cache-dir."""
    from model.config import TrainConfig

    return [TrainConfig(data_root=args.data, category=args.category, detector="patchcore", seed=seed, cache_dir=args.cache_dir,
                        num_threads=threads) for seed in args.seeds]


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
