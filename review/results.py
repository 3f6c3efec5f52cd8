"""Inspection output folders as one table the review pages page through.

Reads each folder's results.csv (model.inspection.read_results: a torn last record is ignored)
into one pandas frame, reloaded when a file changes, so a running inspection's new rows appear.
Sorting, filtering and paging happen on the frame: 10,000 rows sort in milliseconds.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from model.inspection import RESULTS_FILE, read_results, view_paths, defect_figure_paths

SHA = re.compile(r"^[0-9a-f]{64}$")
SORTS = ("score", "path", "inspected_at", "decision")
STATES = ("unreviewed", "reviewed", "defect", "good", "missed", "unsure")


@dataclass
class Page:
    rows: list[dict]
    total: int
    page: int
    pages: int


class Results:
    def __init__(self, folders: list[str | Path]) -> None:
        self.folders = [Path(f).resolve() for f in folders]
        for f in self.folders:  # an existing folder without results yet is shown empty (inspection may not have run)
            if not f.is_dir():
                raise FileNotFoundError(f"{f}: no such folder; point --results at an `anomaflow inspect` output folder")
        self._stamp: tuple = ()
        self.frame = pd.DataFrame()
        self.refresh()

    def _stamps(self) -> tuple:
        return tuple((f / RESULTS_FILE).stat().st_mtime_ns if (f / RESULTS_FILE).is_file() else None for f in self.folders)

    def waiting(self) -> list[Path]:
        """Folders with no results.csv yet."""
        return [f for f in self.folders if not (f / RESULTS_FILE).is_file()]

    def refresh(self) -> None:
        """Reload when any results.csv changed since the last load."""
        stamp = self._stamps()
        if stamp == self._stamp:
            return
        frames = []
        for i, f in enumerate(self.folders):
            df = pd.DataFrame(read_results(f / RESULTS_FILE))
            if df.empty:
                continue
            df["folder"] = i
            frames.append(df)
        df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["path", "sha256", "score", "decision", "threshold", "model_name", "model_version", "inspected_at", "error", "duplicate_of", "folder"])
        df["score"] = pd.to_numeric(df["score"], errors="coerce")
        df["threshold"] = pd.to_numeric(df["threshold"], errors="coerce")
        self.frame = df.reset_index(drop=True)
        self._stamp = stamp

    # -- summaries ----------------------------------------------------------------------------
    def models(self) -> list[tuple[str, str]]:
        return sorted({(r.model_name, r.model_version) for r in self.frame[["model_name", "model_version"]].itertuples()})

    def counts(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.frame["decision"].value_counts().items()}

    def histogram(self, bins: int = 40) -> dict:
        scores = self.frame["score"].dropna().to_numpy()
        if scores.size == 0:
            return {"edges": [], "normal": [], "defect": [], "threshold": None}
        thr = float(self.frame["threshold"].dropna().iloc[-1])
        lo, hi = float(min(scores.min(), thr)), float(max(scores.max(), thr))
        edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
        dec = self.frame.loc[self.frame["score"].notna(), "decision"].to_numpy()
        return {"edges": edges.tolist(), "threshold": thr,
                "normal": np.histogram(scores[dec != "DEFECT"], edges)[0].tolist(),
                "defect": np.histogram(scores[dec == "DEFECT"], edges)[0].tolist()}

    def drift(self) -> dict | None:
        """The latest drift report (drift.json, written by batch inspection) across the folders."""
        import json

        latest = None
        for f in self.folders:
            path = f / "drift.json"
            try:
                entries = json.loads(path.read_text()) if path.is_file() else []
            except (OSError, ValueError):
                continue
            for e in entries:
                if latest is None or e.get("at", "") > latest.get("at", ""):
                    latest = e
        return latest

    # -- lookup and paging --------------------------------------------------------------------
    def rows_for(self, sha256: str) -> pd.DataFrame:
        return self.frame[self.frame["sha256"] == sha256]

    def image_file(self, sha256: str, kind: str) -> Path | None:
        """The review copy of a part, by content hash only: the request never names a path.
        kind: view | overlay (model resolution) | defect_overlay (full size, DEFECT rows only)."""
        if not SHA.match(sha256):
            return None
        rows = self.rows_for(sha256)
        for folder in dict.fromkeys(rows["folder"].tolist()):
            base = self.folders[int(folder)]
            view, overlay = view_paths(base, sha256)
            path = {"view": view, "overlay": overlay, "defect_overlay": defect_figure_paths(base, sha256)[1]}.get(kind)
            if path is not None and path.is_file():
                return path
        return None

    def page(self, latest: dict[tuple[str, str], str], *, decision: str = "", state: str = "", sort: str = "score",
             descending: bool = True, page: int = 1, per_page: int = 50) -> Page:
        """One page of rows with their review state (`latest`: (sha256, version) -> label)."""
        df = self.frame
        if decision:
            df = df[df["decision"] == decision]
        keys = list(zip(df["sha256"], df["model_version"]))
        review = pd.Series([latest.get(k, "") for k in keys], index=df.index, dtype=object)
        if state == "unreviewed":
            df = df[review == ""]
        elif state == "reviewed":
            df = df[review != ""]
        elif state:
            df = df[review == state]
        if sort not in SORTS:
            sort = "score"
        df = df.sort_values(sort, ascending=not descending, na_position="last", kind="stable")
        total = len(df)
        pages = max(1, -(-total // per_page))
        page = min(max(1, page), pages)
        part = df.iloc[(page - 1) * per_page : page * per_page]
        rows = [{**r, "review": review.get(i, "")} for i, r in zip(part.index, part.to_dict("records"))]
        return Page(rows, total, page, pages)

    def neighbours(self, sha256: str, latest: dict[tuple[str, str], str]) -> str | None:
        """The next unreviewed part in the default order (score, highest first) after this one."""
        df = self.frame.sort_values("score", ascending=False, na_position="last", kind="stable")
        shas = df["sha256"].tolist()
        versions = df["model_version"].tolist()
        start = shas.index(sha256) + 1 if sha256 in shas else 0
        for s, v in zip(shas[start:] + shas[:start], versions[start:] + versions[:start]):
            if s != sha256 and (s, v) not in latest and SHA.match(s):
                return s
        return None
