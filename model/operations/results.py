"""Inspection output folders as one table the review pages page through.

Reads each folder's results.csv (model.operations.inspection.read_results: a torn last record is ignored)
into one pandas frame, reloaded when a file changes, so a running inspection's new rows appear.
Sorting, filtering and paging happen on the frame: 10,000 rows sort in milliseconds.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from anomaflow.model.operations.inspection import (
    ERROR,
    FIELDS,
    RESULTS_FILE,
    _open_no_follow,
    defect_figure_paths,
    read_results,
    real_dir,
    view_paths,
)

FLEET_SUMMARY = "fleet.json"  # a fleet's output root holds it beside the product folders
LABEL_DB = "review.sqlite"


def default_label_db(folders: list[str] | list[Path]) -> str:
    """The label database the review app, recalibration and retraining share by default: a
    fleet's (FLEET_SUMMARY beside the folders) when every folder is a product folder of one fleet
    inspection, so its products' labels are in one place however many folders are opened; else
    the first folder's."""
    parents = {Path(f).resolve().parent for f in folders}
    (only,) = parents if len(parents) == 1 else (None,)
    where = only if only is not None and (only / FLEET_SUMMARY).is_file() else Path(folders[0]).resolve()
    return f"sqlite:///{where / LABEL_DB}"


SHA = re.compile(r"^[0-9a-f]{64}$")
SORTS = ("score", "path", "inspected_at", "decision")
STATES = ("unreviewed", "reviewed", "defect", "good", "missed", "unsure")
DECISIONS = ("NORMAL", "DEFECT", ERROR)
log = logging.getLogger(__name__)


def plain_file(path: Path) -> bool:
    """A regular file in a real folder. The results folder is written by others: a link planted
    in views/ or defects/ could point anywhere (/etc/passwd), so it is never followed, the same
    rule the inspector keeps when it writes there."""
    try:
        real_dir(path.parent, create=False)
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return False
    except OSError as exc:
        log.warning("not serving %s: %s", path, exc.strerror)
        return False
    if stat.S_ISLNK(mode):
        log.warning("not serving %s: is a symbolic link; refusing to follow it out of the results folder", path)
    return stat.S_ISREG(mode)


def read_plain(path: Path) -> bytes | None:
    """The bytes of a file opened without following a link (one swapped in after `plain_file`)."""
    try:
        with os.fdopen(_open_no_follow(path, os.O_RDONLY), "rb") as fh:
            return fh.read()
    except OSError as exc:
        log.warning("not serving %s: %s", path, exc.strerror or exc)
        return None


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
        # (frame, rows by sha256) swapped in as one value: a request on another thread never
        # pairs a new frame with an old index (the app serves sync routes from a thread pool)
        self._loaded: tuple[pd.DataFrame, dict[str, np.ndarray]] = (pd.DataFrame(), {})
        self.refresh()

    def _stamps(self) -> tuple:
        return tuple(
            (f / RESULTS_FILE).stat().st_mtime_ns if (f / RESULTS_FILE).is_file() else None for f in self.folders
        )

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
        df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=[*FIELDS, "folder"])
        df["score"] = pd.to_numeric(df["score"], errors="coerce")
        df["threshold"] = pd.to_numeric(df["threshold"], errors="coerce")
        df = df.reset_index(drop=True)
        # rows by sha256: every image request and every item of a bulk label looks one up
        self._loaded = (df, df.groupby("sha256", sort=False).indices if len(df) else {})
        self._stamp = stamp

    @property
    def frame(self) -> pd.DataFrame:
        """Every row of the folders as last loaded (a new object on each reload, never edited)."""
        return self._loaded[0]

    # -- summaries ----------------------------------------------------------------------------
    def models(self) -> list[tuple[str, str]]:
        pairs = self.frame[["model_name", "model_version"]].drop_duplicates()
        return sorted(zip(pairs["model_name"], pairs["model_version"]))

    def counts(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.frame["decision"].value_counts().items()}

    def products(self) -> list[str]:
        """The model names in the results: one per product when several products are served."""
        return sorted(self.frame["model_name"].dropna().unique().tolist())

    def product_summary(self, latest: dict[tuple[str, str], str]) -> list[dict]:
        """Per product (model name): rows, rows per decision and per latest label, counted like
        `counts` and `reviewed_counts` so the per-product tables add up to the overview's."""
        df = self.frame
        states = self.review_states(latest)
        out = []
        for name in self.products():
            mine = df["model_name"] == name
            reviewed = states[mine & (states != "")]
            out.append(
                {
                    "name": name,
                    "rows": int(mine.sum()),
                    "counts": {k: int(v) for k, v in df.loc[mine, "decision"].value_counts().items()},
                    "reviewed": int(len(reviewed)),
                    "labels": {k: int(v) for k, v in reviewed.value_counts().items()},
                }
            )
        return out

    def histogram(self, bins: int = 40) -> dict:
        scores = self.frame["score"].dropna().to_numpy()
        if scores.size == 0:
            return {"edges": [], "normal": [], "defect": [], "threshold": None}
        thr = float(self.frame["threshold"].dropna().iloc[-1])
        lo, hi = float(min(scores.min(), thr)), float(max(scores.max(), thr))
        edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
        dec = self.frame.loc[self.frame["score"].notna(), "decision"].to_numpy()
        return {
            "edges": edges.tolist(),
            "threshold": thr,
            "normal": np.histogram(scores[dec != "DEFECT"], edges)[0].tolist(),
            "defect": np.histogram(scores[dec == "DEFECT"], edges)[0].tolist(),
        }

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
        frame, by_sha = self._loaded
        return frame.iloc[by_sha.get(sha256, [])]

    def image_file(self, sha256: str, kind: str) -> Path | None:
        """The review copy of a part, by content hash only: the request never names a path.
        kind: view | overlay (model resolution) | defect_overlay (full size, DEFECT rows only)."""
        if not SHA.match(sha256):
            return None
        rows = self.rows_for(sha256)
        for folder in dict.fromkeys(rows["folder"].tolist()):
            base = self.folders[int(folder)]
            view, overlay = view_paths(base, sha256)
            defect_overlay = defect_figure_paths(base, sha256)[1]
            paths = {
                "view": [view],
                "overlay": [overlay],
                "defect_overlay": [defect_overlay, defect_overlay.with_suffix(".png")],
            }
            for path in paths.get(kind, []):  # older results folders hold a PNG overlay
                if plain_file(path):
                    return path
        return None

    def label_refusal(self, sha256: str, model_version: str) -> str | None:
        """Why (sha256, model_version) cannot be labelled, or None: a label is a verdict on a
        verdict, so it needs a scored row of that model version in the loaded results."""
        rows = self.rows_for(sha256)
        if rows.empty:
            return "no inspected part with this sha256"
        rows = rows[rows["model_version"] == model_version]
        if rows.empty:
            versions = ", ".join(sorted(set(self.rows_for(sha256)["model_version"])))
            return f"this part was not inspected by model version {model_version!r}; it was by {versions}"
        if (rows["decision"] == ERROR).all():
            return "this part's row is an ERROR (the image could not be scored): there is no verdict to label"
        return None

    def review_states(self, latest: dict[tuple[str, str], str], df: pd.DataFrame | None = None) -> pd.Series:
        """Each row's latest label ('' when unreviewed), by (sha256, model_version): one rule for
        the overview's counts and the list's filters, so they agree."""
        df = self.frame if df is None else df
        if not latest or df.empty:
            return pd.Series("", index=df.index, dtype=object)
        flat = {f"{sha}/{version}": label for (sha, version), label in latest.items()}  # a sha256 has no "/"
        keys = df["sha256"].astype(str) + "/" + df["model_version"].astype(str)
        return keys.map(flat).fillna("").astype(object)

    def reviewed_counts(self, latest: dict[tuple[str, str], str]) -> dict[str, int]:
        """Rows per latest label, counted like `page(state=...)` counts them."""
        states = self.review_states(latest)
        return {k: int(v) for k, v in states[states != ""].value_counts().items()}

    def page(
        self,
        latest: dict[tuple[str, str], str],
        *,
        decision: str = "",
        state: str = "",
        product: str = "",
        sort: str = "score",
        descending: bool = True,
        page: int = 1,
        per_page: int = 50,
    ) -> Page:
        """One page of rows with their review state (`latest`: (sha256, version) -> label);
        `product`: only rows of that model name."""
        df = self.frame
        if product:
            df = df[df["model_name"] == product]
        if decision:
            df = df[df["decision"] == decision]
        review = self.review_states(latest, df)
        if state == "unreviewed":
            df = df[review == ""]
        elif state == "reviewed":
            df = df[review != ""]
        elif state:
            df = df[review == state]
        if sort not in SORTS:
            raise ValueError(f"unknown sort {sort!r}; expected one of {', '.join(SORTS)}")
        df = df.sort_values(sort, ascending=not descending, na_position="last", kind="stable")
        total = len(df)
        pages = max(1, -(-total // per_page))
        page = min(max(1, page), pages)
        part = df.iloc[(page - 1) * per_page : page * per_page]
        rows = [{**r, "review": review.get(i, "")} for i, r in zip(part.index, part.to_dict("records"))]
        return Page(rows, total, page, pages)

    def neighbours(self, sha256: str, latest: dict[tuple[str, str], str]) -> str | None:
        """The next unreviewed part in the default order (score, highest first) after this one;
        ERROR rows have no verdict to label, so they are never next."""
        df = self.frame[self.frame["decision"] != ERROR].sort_values(
            "score", ascending=False, na_position="last", kind="stable"
        )
        shas = df["sha256"].tolist()
        versions = df["model_version"].tolist()
        start = shas.index(sha256) + 1 if sha256 in shas else 0
        for s, v in zip(shas[start:] + shas[:start], versions[start:] + versions[:start]):
            if s != sha256 and (s, v) not in latest and SHA.match(s):
                return s
        return None
