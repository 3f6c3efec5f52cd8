"""The reviews as a CSV meant for a spreadsheet: one row per labelled part, latest label.

A cell that starts with `=`, `+`, `-`, `@` (or a tab or carriage return) is a formula to
Excel, LibreOffice and Google Sheets; a file name like `=HYPERLINK(...)` would run when the
export is opened. Such cells get a leading apostrophe, which spreadsheets show as text.
`results.csv` stays exact (it is the inspector's ledger, read back by code); this file is for
people.
"""

from __future__ import annotations

import csv
import io

from anomaflow.tasks.labels import LabelRecord

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
COLUMNS = (
    "path",
    "sha256",
    "model_name",
    "model_version",
    "score",
    "decision",
    "threshold",
    "label",
    "reviewer",
    "note",
    "labelled_at",
)


def spreadsheet_cell(value: object) -> str:
    """The value as text a spreadsheet shows verbatim (numbers stay numbers: -0.5 is data, not a formula)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return repr(value) if isinstance(value, float) else str(value)
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_START) else text


def reviews_csv(rows: list[dict], latest: dict[tuple[str, str], LabelRecord]) -> str:
    """One line per result row that has a label for its (sha256, model_version)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(COLUMNS)
    for row in rows:
        rec = latest.get((row["sha256"], str(row["model_version"])))
        if rec is None:
            continue
        score = row.get("score")
        values = {
            **row,
            "score": None if score is None or score != score else float(score),
            "label": rec.label,
            "reviewer": rec.reviewer,
            "note": rec.note,
            "labelled_at": rec.created_at.isoformat(),
        }
        writer.writerow([spreadsheet_cell(values.get(c)) for c in COLUMNS])
    return out.getvalue()
