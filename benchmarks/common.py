"""What the seeded benchmark scripts share: their command line and how they print a table."""
from __future__ import annotations

import argparse
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


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


def emit(lines: list[str]) -> str:
    """Print a markdown table (after a blank line) and return its text."""
    text = "\n".join(lines)
    print("\n" + text)
    return text
