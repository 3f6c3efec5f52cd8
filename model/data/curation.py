"""A curated training set: the original dataset plus parts reviewers called good, with provenance.

Retraining on reviewed false alarms must not edit the user's dataset in place and must say what
it added: the curated copy lives in its own folder (files hard-linked where the file system
allows, else copied), each added image is named by its content hash under train/good, and
curation.json lists every addition (source, sha256, model version, reviewer, time). Built in a
temporary sibling and renamed into place, so a failure never leaves half a dataset.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

CURATION_FILE = "curation.json"


@dataclass(frozen=True)
class Addition:
    source: str  # the inspected file the reviewer saw
    sha256: str
    model_name: str
    model_version: str
    reviewer: str
    labelled_at: str
    note: str = ""


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def content_hashes(category_dir: str | Path, *splits: str) -> dict[str, str]:
    """sha256 -> path (relative to category_dir) of every file under the named split folders
    (train, test) that exist: what a reviewed part is checked against before it is trained or
    calibrated on."""
    root = Path(category_dir)
    return {
        hashlib.sha256(p.read_bytes()).hexdigest(): p.relative_to(root).as_posix()
        for split in splits
        if (root / split).is_dir()
        for p in sorted((root / split).rglob("*"))
        if p.is_file()
    }


def curate(root: str | Path, category: str, additions: list[Addition], dest_root: str | Path) -> Path:
    """dest_root/category = root/category + the additions under train/good; returns the category folder.
    An addition whose file no longer has its sha256 is an error (the reviewer saw other content);
    one whose content is already in the dataset's test split is left out and listed as refused in
    curation.json: training on it would leak test data into training."""
    src_cat = Path(root) / category
    if not (src_cat / "train" / "good").is_dir():
        raise FileNotFoundError(f"{src_cat}: not an MVTec-layout category (no train/good)")
    dest_root = Path(dest_root)
    dest_root.mkdir(parents=True, exist_ok=True)
    final = dest_root / category
    if final.resolve() == src_cat.resolve():
        raise ValueError(f"{final}: the curated folder must differ from the dataset it copies")
    in_test = content_hashes(src_cat, "test")
    tmp = Path(tempfile.mkdtemp(prefix=f".{category}-", dir=dest_root))
    try:
        for path in sorted(src_cat.rglob("*")):
            if path.is_file() and path.name != CURATION_FILE and not path.name.startswith("review_"):
                _link_or_copy(path, tmp / path.relative_to(src_cat))
        added, refused = [], []
        for a in sorted(set(additions), key=lambda a: a.sha256):
            data = Path(a.source).read_bytes()
            if hashlib.sha256(data).hexdigest() != a.sha256:
                raise ValueError(f"{a.source}: content changed since it was reviewed (sha256 differs); not added")
            if a.sha256 in in_test:
                refused.append(
                    {
                        "reason": f"same content as the test image {in_test[a.sha256]}: would "
                        f"leak test data into training",
                        **asdict(a),
                    }
                )
                continue
            name = f"review_{a.sha256[:16]}{Path(a.source).suffix.lower()}"
            (tmp / "train" / "good" / name).write_bytes(data)
            added.append({"file": f"train/good/{name}", **asdict(a)})
        (tmp / CURATION_FILE).write_text(
            json.dumps({"copied_from": str(src_cat.resolve()), "added": added, "refused": refused}, indent=2)
        )
        if final.exists():
            old = final.with_name(f".{category}-old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def curation_summary(category_dir: str | Path) -> str | None:
    """One line for the training run's tags: what was added and from where (None: not curated)."""
    path = Path(category_dir) / CURATION_FILE
    if not path.is_file():
        return None
    info = json.loads(path.read_text())
    versions = sorted({f"{a['model_name']} v{a['model_version']}" for a in [*info["added"], *info.get("refused", [])]})
    refused = f"; {len(info['refused'])} refused (already in the test split)" if info.get("refused") else ""
    return (
        f"{len(info['added'])} part(s) reviewed as good (false alarms of "
        f"{', '.join(versions)}) added to train/good{refused}; "
        f"copy of {info['copied_from']}"
    )
