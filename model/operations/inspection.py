"""Batch inspection bookkeeping: the inbox, the results ledger and the defect figures.

Guarantees (the factory's, not the model's): every file gets exactly one row per model
version under its own path, keyed by (path, content hash), so reruns skip finished work and a
run killed at any point resumes without loss or duplicates. Content is scored once per model
version: a file whose bytes equal an already-scored file's gets that verdict copied, with
`duplicate_of` naming the scored file. Rows are appended whole with one write on an O_APPEND
descriptor and fsynced per batch; a torn last line left by a crash is cut off before the
next append. One run at a time holds the output folder's lock, so two runs on the same
inbox never inspect the same image twice.

Sharded runs (scoring spread over Dask workers) keep these guarantees by keeping one writer:
the run holding the lock plans the pending files once (`plan_pending`), workers score shards
into a `RowBuffer` with the same `inspect_files`, and the writer appends each shard's rows
through `append_new`, which drops any key already written; copies of duplicate content are
written by the writer once their original's verdict is in.
"""

from __future__ import annotations

import csv
import errno
import fcntl
import hashlib
import io
import json
import os
import stat
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import numpy as np

from anomaflow.model.data.datasets import IMAGE_EXTENSIONS, display_path
from anomaflow.model.data.frame import Box, display_size, to_image_frame
from anomaflow.model.files import atomic_write, write_bytes_atomic, write_json_atomic
from anomaflow.model.operations.drift import image_stats
from anomaflow.model.operations.heatmaps import blend, heatmap_image, overlay_image

RESULTS_FILE = "results.csv"
LOCK_FILE = ".inspection.lock"
FIGURES_DIR = "defects"
VIEWS_DIR = "views"  # every scored image at model resolution with its overlay: what the review app shows
FIELDS = (
    "path",
    "sha256",
    "score",
    "decision",
    "threshold",
    "model_name",
    "model_version",
    "inspected_at",
    "error",
    "duplicate_of",
)
# results.csv written before duplicate_of existed: upgraded in place (under the lock) on first use.
_LEGACY_FIELDS = FIELDS[:-1]
ERROR = "ERROR"


def list_inbox(input_dir: str | Path) -> list[Path]:
    """Image files under input_dir (recursive, sorted); links that leave the folder are skipped."""
    root = Path(input_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: input folder does not exist")
    real_root = root.resolve()
    found = []
    for p in sorted(root.rglob("*")):
        if p.name.startswith(".") or p.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        try:
            if not p.resolve().is_relative_to(real_root) or not p.is_file():
                continue
        except OSError:
            continue
        found.append(p)
    return found


def read_hashed(path: Path) -> tuple[str, bytes]:
    """Content hash and the bytes (read once: hashed and decoded from the same buffer)."""
    data = path.read_bytes()
    return hashlib.sha256(data).hexdigest(), data


@dataclass
class Item:
    """One inbox file read for inspection: its key and bytes, or why it could not be read."""

    path: Path
    rel: str
    sha256: str
    raw: bytes | None
    read_error: str = ""


def read_item(path: Path, input_dir: Path) -> Item:
    # A name that is not UTF-8 is recorded with \xNN escapes: it still gets its row.
    rel = display_path(path.relative_to(input_dir).as_posix())
    try:
        sha, raw = read_hashed(path)
        return Item(path, rel, sha, raw)
    except OSError as exc:
        # No content to hash: key the row by path so a rerun does not repeat it.
        sha = "unreadable-" + hashlib.sha256(os.fsencode(path.relative_to(input_dir))).hexdigest()[:32]
        return Item(path, rel, sha, None, f"cannot read file ({exc.strerror or exc})")


@dataclass
class Row:
    path: str
    sha256: str
    score: float | None
    decision: str
    threshold: float
    model_name: str
    model_version: str
    inspected_at: str
    error: str = ""
    duplicate_of: str = ""  # path of the file whose verdict this row copies (same content)
    # (brightness, width, height, mode) of a scored image: for the drift report, not written to results.csv
    stats: tuple[float, int, int, str] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_record(cls, r: dict[str, str]) -> "Row":
        """A row read back from results.csv."""
        return cls(
            r["path"],
            r["sha256"],
            float(r["score"]) if r["score"] else None,
            r["decision"],
            float(r["threshold"]),
            r["model_name"],
            r["model_version"],
            r["inspected_at"],
            r["error"],
            r.get("duplicate_of") or "",
        )

    def copy_for(self, item: "Item") -> "Row":
        """This verdict under another file with the same content."""
        return Row(
            item.rel,
            item.sha256,
            self.score,
            self.decision,
            self.threshold,
            self.model_name,
            self.model_version,
            now_iso(),
            self.error,
            self.duplicate_of or self.path,
        )

    def line(self) -> bytes:
        buf = io.StringIO()
        score = "" if self.score is None else f"{self.score:.8g}"
        # QUOTE_ALL: a name holding \r or \n stays one quoted field, never a second row.
        csv.writer(buf, lineterminator="\n", quoting=csv.QUOTE_ALL).writerow(
            [
                self.path,
                self.sha256,
                score,
                self.decision,
                f"{self.threshold:.8g}",
                self.model_name,
                self.model_version,
                self.inspected_at,
                self.error.replace("\n", " "),
                self.duplicate_of,
            ]
        )
        return buf.getvalue().encode("utf-8")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class Ledger:
    """results.csv in output_dir, owned by one run at a time (flock on a lock file)."""

    def __init__(self, output_dir: str | Path, wait_seconds: float = 3600.0) -> None:
        self.dir = Path(output_dir)
        self.path = self.dir / RESULTS_FILE
        self.wait_seconds = wait_seconds
        self._lock_fd: int | None = None
        self._fd: int | None = None

    def __enter__(self) -> "Ledger":
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock_fd = _open_no_follow(self.dir / LOCK_FILE, os.O_RDWR | os.O_CREAT)
        deadline = time.monotonic() + self.wait_seconds
        while True:
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                    os.close(self._lock_fd)
                    raise TimeoutError(f"{self.dir}: another inspection run holds the lock") from exc
                time.sleep(0.2)
        try:
            real_dir(self.dir / FIGURES_DIR, create=False)
            self._repair()
            self._upgrade_legacy()
            self._fd = _open_no_follow(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            if os.fstat(self._fd).st_size == 0:
                self._append_bytes(_header_line(), "cannot write the header")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def _repair(self) -> None:
        """Cut a torn last record (a crash mid-write) so the next row starts on a fresh line."""
        try:
            fd = _open_no_follow(self.path, os.O_RDWR)
        except FileNotFoundError:
            return
        with os.fdopen(fd, "rb+") as fh:
            data = fh.read()
            end = complete_prefix(data)
            if end < len(data):
                fh.truncate(end)

    def _upgrade_legacy(self) -> None:
        """Rewrite a results.csv from before `duplicate_of` with the current header (atomic
        replace, every row kept); refuse a file whose header is not ours."""
        try:
            fd = _open_no_follow(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return
        with os.fdopen(fd, "rb") as fh:
            header = fh.readline().rstrip(b"\r\n").decode("utf-8", "replace").split(",")
        if header == [""] or tuple(header) == FIELDS:
            return
        if tuple(header) != _LEGACY_FIELDS:
            raise ValueError(f"{self.path}: not an anomaflow results file (header {','.join(header)!r}); move it aside")
        rows = [Row.from_record(r) for r in read_results(self.path)]
        try:
            write_bytes_atomic(_header_line() + b"".join(r.line() for r in rows), self.path, fsync=True)
        except OSError as exc:
            raise OSError(exc.errno, f"{exc.strerror or exc}: cannot upgrade the header", str(self.path)) from exc

    def _append_bytes(self, payload: bytes, what: str) -> None:
        """One write loop plus fsync; a failure (ENOSPC, EIO...) names the file it hit."""
        assert self._fd is not None
        try:
            view = memoryview(payload)
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
            os.fsync(self._fd)
        except OSError as exc:
            raise OSError(exc.errno, f"{exc.strerror or exc}: {what}", str(self.path)) from exc

    def written_rows(self) -> list[Row]:
        """Every complete row written so far."""
        return [Row.from_record(r) for r in read_results(self.path)]

    def append(self, rows: list[Row]) -> None:
        if rows:
            self._append_bytes(b"".join(r.line() for r in rows), f"cannot append {len(rows)} rows")


class RowBuffer:
    """A ledger stand-in for a shard worker: keeps rows in memory for the single writer and
    writes heat maps under output_dir (content-hash names: idempotent when a shard reruns)."""

    def __init__(self, output_dir: str | Path) -> None:
        self.dir = Path(output_dir)
        self.rows: list[Row] = []

    def written_rows(self) -> list[Row]:
        return []  # the writer filtered done keys before sharding

    def append(self, rows: list[Row]) -> None:
        self.rows.extend(rows)


def _header_line() -> bytes:
    return b",".join(f.encode() for f in FIELDS) + b"\n"


RowKey = tuple[str, str, str, str]


def row_key(row: Row) -> RowKey:
    return row.path, row.sha256, row.model_name, row.model_version


def append_new(ledger: Ledger, rows: list[Row], written: set[RowKey]) -> list[Row]:
    """Append the rows whose key is not in `written` (and add them to it); returns those rows.
    The writer's last guard: one row per image per model version whatever shards return."""
    new = []
    for r in rows:
        if row_key(r) not in written:
            written.add(row_key(r))
            new.append(r)
    ledger.append(new)
    return new


def complete_prefix(data: bytes) -> int:
    """Length of the complete records in CSV bytes: up to the last newline outside quotes. A
    newline inside a quoted field (a file name may hold one) has an odd number of quotes before it."""
    end = data.rfind(b"\n") + 1
    quotes = data.count(b'"', 0, end)
    while end and quotes % 2:
        prev = data.rfind(b"\n", 0, end - 1) + 1
        quotes -= data.count(b'"', prev, end)
        end = prev
    return end


def read_results(path: str | Path) -> list[dict[str, str]]:
    """Complete rows of a results.csv (a torn last record is ignored)."""
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    text = data[: complete_prefix(data)].decode("utf-8")
    # newline="": \r inside a quoted name is data, not a line break.
    rows = csv.DictReader(io.StringIO(text, newline=""))
    return [r for r in rows if None not in r and None not in r.values()]


def batches(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def defect_figure_paths(output_dir: Path, sha256: str) -> tuple[Path, Path]:
    """Heat map (palette PNG) and overlay (JPEG: a 900x900 one encodes in ~3 ms, ~75 ms as an RGB
    PNG) paths, both in the image's own frame, named by content hash, so they never leave
    output_dir. Older results folders hold `<hash>_overlay.png` (review reads both)."""
    d = output_dir / FIGURES_DIR
    return d / f"{sha256[:16]}_heatmap.png", d / f"{sha256[:16]}_overlay.jpg"


INPUTS_FILE = "inputs.json"


def record_input(output_dir: Path, input_dir: Path) -> None:
    """Remember which folder the rows' relative paths are under (curation finds the originals)."""
    path = output_dir / INPUTS_FILE
    known = json.loads(path.read_text()) if path.is_file() else []
    here = str(Path(input_dir).resolve())
    if here not in known:
        write_json_atomic([*known, here], path)


def view_paths(output_dir: Path, sha256: str) -> tuple[Path, Path]:
    """Review copies (the image as the model saw it, and with its heat map), named by content hash."""
    d = output_dir / VIEWS_DIR
    return d / f"{sha256[:16]}.jpg", d / f"{sha256[:16]}_overlay.jpg"


FIGURE_LONG_SIDE = 1024  # heat maps and overlays: the image's own aspect ratio, long side at most this


def in_image_frame(
    item: Item, framed: np.ndarray, anomaly_map: np.ndarray, box: Box, shown: tuple[int, int], decoded=None
):
    """(picture, map) over the image itself: the map cropped to the image's box in the model
    frame and resized to the image's own aspect ratio (long side <= FIGURE_LONG_SIDE); the picture
    (a Pillow image) at that size, from `decoded` (the image as scoring decoded it) when that is
    large enough, else decoded again, so the overlay shows the part, not the model's small input."""
    from PIL import Image

    from anomaflow.model.data.datasets import open_image

    size = display_size(shown, FIGURE_LONG_SIDE)
    heat = to_image_frame(anomaly_map, box, size)
    if decoded is not None and decoded.size[0] >= size[0] and decoded.size[1] >= size[1]:
        return (decoded if decoded.size == size else decoded.resize(size, Image.Resampling.BILINEAR)), heat
    try:
        picture = open_image(item.path, data=item.raw, at_least=size).resize(size, Image.Resampling.BILINEAR)
    except Exception:
        crop = framed[box.top : box.top + box.height, box.left : box.left + box.width]
        picture = Image.fromarray(np.ascontiguousarray(crop)).resize(size, Image.Resampling.BILINEAR)
    return picture, heat


def _open_no_follow(path: Path, flags: int) -> int:
    """os.open that refuses a symlink planted in the output folder (it could redirect our writes)."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OSError(
                exc.errno, "is a symbolic link; refusing to follow it out of the output folder", str(path)
            ) from exc
        raise


def real_dir(path: Path, create: bool = True) -> None:
    """Make sure path is a real directory, not a link to somewhere else (created when missing)."""
    if create:
        path.mkdir(parents=True, exist_ok=True)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(mode):
        raise OSError(
            errno.ENOTDIR, "is a link or a file, not a folder; refusing to write figures through it", str(path)
        )


def save_png_atomic(picture, path: Path) -> None:
    """Write an array or Pillow image via a temporary name and rename: a reader never sees half a
    PNG (or JPEG, by the suffix). PNGs at zlib level 1: a 900x900 figure encodes several times
    faster than at Pillow's default 6 for a file about a fifth larger. On failure the temporary
    file is removed and the error names the figure it was writing."""
    from PIL import Image

    real_dir(path.parent)
    jpeg = path.suffix.lower() in (".jpg", ".jpeg")
    image = picture if isinstance(picture, Image.Image) else Image.fromarray(picture)
    try:
        with atomic_write(path) as fh:
            if jpeg:
                image.save(fh, format="JPEG", quality=88)
            else:
                image.save(fh, format="PNG", compress_level=1)
    except OSError as exc:
        raise OSError(exc.errno, f"{exc.strerror or exc}: cannot write figure", str(path)) from exc


@dataclass
class InspectionSummary:
    total: int = 0
    inspected: int = 0  # scored in this run
    skipped: int = 0  # already in results.csv under the same path for this model version
    duplicates: int = 0  # rows written with the verdict of a file of the same content
    normal: int = 0  # NORMAL/DEFECT/ERROR count every row written, duplicates included
    defect: int = 0
    error: int = 0
    seconds: float = 0.0
    scores: list[float] = field(default_factory=list)  # of images scored in this run (drift report)
    brightness: list[float] = field(default_factory=list)
    sizes: list[tuple[int, int]] = field(default_factory=list)
    modes: list[str] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return self.inspected / self.seconds if self.seconds > 0 else float("nan")

    def counts(self) -> dict[str, int]:
        return {"NORMAL": self.normal, "DEFECT": self.defect, "ERROR": self.error}

    def add(self, rows: list[Row]) -> None:
        from anomaflow.model.evaluation.calibration import DEFECT

        for r in rows:
            if r.duplicate_of:
                self.duplicates += 1
            else:
                self.inspected += 1
            if r.stats is not None and r.score is not None and not r.duplicate_of:
                self.scores.append(r.score)
                self.brightness.append(r.stats[0])
                self.sizes.append((r.stats[1], r.stats[2]))
                self.modes.append(r.stats[3])
            if r.decision == ERROR:
                self.error += 1
            elif r.decision == DEFECT:
                self.defect += 1
            else:
                self.normal += 1


@dataclass
class Known:
    """What results.csv already holds for one model version, and what this run has scheduled."""

    done: set[tuple[str, str]]  # (path, sha256) with a row
    verdicts: dict[str, Row]  # sha256 -> the row that scored that content
    pending: set[str] = field(default_factory=set)  # sha256 scheduled for scoring in this run

    def record(self, rows: list[Row]) -> None:
        for r in rows:
            self.done.add((r.path, r.sha256))
            if not r.duplicate_of:
                self.verdicts.setdefault(r.sha256, r)


def known_for(ledger: Ledger | RowBuffer, model_name: str, model_version: str) -> Known:
    known = Known(set(), {})
    known.record([r for r in ledger.written_rows() if (r.model_name, r.model_version) == (model_name, model_version)])
    return known


def triage(
    files: list[Path], input_dir: Path, known: Known, summary: InspectionSummary
) -> tuple[list[Item], list[Item]]:
    """Read and hash files: (to score, copies). A file whose (path, content) has a row is skipped;
    one whose content is scored or scheduled already becomes a copy of that verdict."""
    to_score: list[Item] = []
    copies: list[Item] = []
    for path in files:
        item = read_item(path, input_dir)
        if (item.rel, item.sha256) in known.done:
            summary.skipped += 1
        elif item.sha256 in known.verdicts or item.sha256 in known.pending:
            copies.append(item)
        else:
            known.pending.add(item.sha256)
            to_score.append(item)
    return to_score, copies


def copy_rows(copies: list[Item], known: Known) -> tuple[list[Row], list[Item]]:
    """(rows for the copies whose content has a verdict now, the copies still waiting)."""
    rows = [known.verdicts[c.sha256].copy_for(c) for c in copies if c.sha256 in known.verdicts]
    return rows, [c for c in copies if c.sha256 not in known.verdicts]


@dataclass
class Plan:
    """What a sharded run still has to inspect: one file per distinct pending content, and the
    files that only copy a verdict (written by the writer once it is in)."""

    pending: list[Path]
    copies: list[Item]
    known: Known
    summary: InspectionSummary  # total and skipped filled in

    def shards(self, size: int) -> list[list[Path]]:
        return list(batches(self.pending, max(1, size)))


def plan_pending(files: list[Path], input_dir: Path, ledger: Ledger, *, model_name: str, model_version: str) -> Plan:
    """Hash every file once and keep the ones still to inspect (same rules as inspect_files)."""
    summary = InspectionSummary(total=len(files))
    known = known_for(ledger, model_name, model_version)
    to_score, copies = triage(files, input_dir, known, summary)
    return Plan([item.path for item in to_score], copies, known, summary)


@dataclass
class Decoded:
    """One batch of read items after decoding: the ones that failed (with why) and the framed rest."""

    errors: list[tuple[Item, str]]
    framed: list  # model.data.preprocessing.Framed, one per item of `keep`
    keep: list[Item]


def decode_items(items: list[Item], prep, keep_picture: bool) -> Decoded:
    """Decode and frame every read item; a bad file becomes an error entry and the batch goes on.
    Runs on inspect_files' decode thread, one batch ahead of scoring (Pillow releases the GIL)."""
    out = Decoded([], [], [])
    for item in items:
        if item.raw is None:
            out.errors.append((item, item.read_error))
            continue
        try:
            out.framed.append(prep.image(item.path, item.raw, keep_picture=keep_picture))
            out.keep.append(item)
        except Exception as exc:  # every bad file becomes an ERROR row
            out.errors.append((item, getattr(exc, "reason", None) or f"{type(exc).__name__}: {exc}"))
    return out


def score_items(
    detector,
    items: list[Item],
    figures_dir: Path,
    *,
    threshold: float,
    model_name: str,
    model_version: str,
    write_figures: bool = True,
    decoded: Decoded | None = None,
) -> list[Row]:
    """Decode (unless `decoded` holds it already), score and decide one batch of read items (bad
    files become ERROR rows); heat maps of DEFECTs go to figures_dir. The one scoring step of both
    the local and sharded runs."""
    from anomaflow.model.evaluation.calibration import DEFECT, decide

    def make_row(item: Item, score: float | None, decision: str, error: str = "") -> Row:
        return Row(item.rel, item.sha256, score, decision, threshold, model_name, model_version, now_iso(), error)

    vmax = 2 * detector.pixel_threshold if detector.pixel_threshold else None
    prep = detector.preprocessing
    decoded = decoded if decoded is not None else decode_items(items, prep, write_figures)
    rows: list[Row] = [make_row(item, None, ERROR, why) for item, why in decoded.errors]
    framed, keep = decoded.framed, decoded.keep
    if framed:
        prepared = prep.stack(framed)
        batch, boxes, sizes = prepared.images, prepared.boxes, prepared.sizes
        result = detector.score_batch(prepared)
        scores = result.scores[detector.score_method]
        for i, (item, s, d) in enumerate(zip(keep, scores, decide(scores, threshold))):
            b = boxes[i]
            crop = np.ascontiguousarray(
                batch[i][b.top : b.top + b.height, b.left : b.left + b.width]
            )  # the image's own pixels
            if write_figures:  # review copies of every part: a missed defect is reviewed on a NORMAL row
                heat = result.maps[i][b.top : b.top + b.height, b.left : b.left + b.width]
                view, view_overlay = view_paths(figures_dir, item.sha256)
                save_png_atomic(crop, view)
                save_png_atomic(overlay_image(crop, heat, vmax or float(heat.max()) or 1.0), view_overlay)
                if d == DEFECT:
                    heat_path, over_path = defect_figure_paths(figures_dir, item.sha256)
                    picture, m = in_image_frame(item, batch[i], result.maps[i], b, sizes[i], framed[i].picture)
                    coloured = heatmap_image(m, vmax or float(m.max()) or 1.0)  # coloured once, for both files
                    save_png_atomic(coloured, heat_path)
                    save_png_atomic(blend(picture, coloured), over_path)
            row = make_row(item, float(s), str(d))
            row.stats = (image_stats(crop), int(sizes[i][0]), int(sizes[i][1]), image_mode(item))
            rows.append(row)
    return rows


def image_mode(item: Item) -> str:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(item.raw or b"")) as img:
            return img.mode
    except Exception:
        return "?"


def inspect_files(
    detector,  # model.detectors.base.Detector
    files: list[Path],
    input_dir: Path,
    ledger: Ledger | RowBuffer,
    *,
    model_name: str,
    model_version: str,
    threshold: float,
    batch_size: int = 16,
    write_figures: bool = True,
    progress=None,  # callable(done, total)
) -> InspectionSummary:
    """Give every file not yet in the ledger for this model version its row: scored once per
    distinct content, a copy of that verdict (naming its file) for each duplicate."""
    from concurrent.futures import ThreadPoolExecutor

    t0 = time.perf_counter()
    summary = InspectionSummary(total=len(files))
    known = known_for(ledger, model_name, model_version)
    chunks = list(batches(files, batch_size))
    # Read, hash and triage stay on this thread, in order (they decide what is a duplicate);
    # decoding batch k+1 overlaps scoring batch k.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="anomaflow-decode") as pool:

        def start(chunk: list[Path]):
            items, copies = triage(chunk, input_dir, known, summary)
            return items, copies, pool.submit(decode_items, items, detector.preprocessing, write_figures)

        ahead = start(chunks[0]) if chunks else None
        for k in range(len(chunks)):
            assert ahead is not None
            items, copies, decoding = ahead
            ahead = start(chunks[k + 1]) if k + 1 < len(chunks) else None
            rows = score_items(
                detector,
                items,
                ledger.dir,
                threshold=threshold,
                model_name=model_name,
                model_version=model_version,
                write_figures=write_figures,
                decoded=decoding.result(),
            )
            known.record(rows)
            copied, _ = copy_rows(copies, known)  # originals are in this chunk or an earlier one
            rows += copied
            ledger.append(rows)
            summary.add(rows)
            if progress:
                progress(summary.inspected + summary.skipped + summary.duplicates, summary.total)
    summary.seconds = time.perf_counter() - t0
    return summary
