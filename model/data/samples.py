"""Shared vocabulary of the data modules: file-type and size limits, the per-file DataError, Sample and Dataset."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
IMAGE_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "BMP", "TIFF")
"""PIL decoders allowed to open a file (by content); JPEG includes multi-picture MPO files."""
MAX_PIXELS: int = 50_000_000
"""Decompression-bomb guard: width*height above this is rejected from the header, before decoding."""

ProgressFn = Callable[[int, int], None]

_MASK_SUFFIX = "_mask"
_MASK_MODES = frozenset({"L", "1"})
_GREY_MODES = frozenset({"L", "1"})
_PIL_CONVERTIBLE = frozenset({"CMYK", "YCbCr"})
_UINT16_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA"})
_SUPPORTED_MODES = frozenset({"RGB", "P", "I"}) | _GREY_MODES | _PIL_CONVERTIBLE | _UINT16_MODES | _ALPHA_MODES
_ORIENTATION_TAG = 0x0112
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})
# Bump when decoding/resizing policy changes so old disk-cache entries are never reused.
_CACHE_VERSION = (
    3  # 2: JPEGs decoded with draft scaling when shrunk (open_image at_least); 3: frames that keep the aspect ratio
)
Size = int | tuple[int, int] | None  # an int is a square frame, (height, width) a frame, None the native size


def display_path(path: str | Path) -> str:
    """The path as printable text: bytes that are not UTF-8 are shown as \\xNN escapes, so an odd
    file name cannot break a log line, a JSON report or an MLflow request that mentions it."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _name_problem(path: Path) -> DataError | None:
    """A file name that is not valid UTF-8 passes the file system but breaks text downstream
    (plots, MLflow tables, JSON): refuse it at the gate instead of after training."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return DataError(path, "file name is not valid UTF-8 (rename the file)")
    return None


class DataError(ValueError):
    """One bad file or layout problem, carrying the file so callers can report or collect it."""

    def __init__(self, path: str | Path | None, reason: str) -> None:
        self.path: Path | None = Path(path) if path is not None else None
        self.reason: str = reason
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{display_path(self.path)}: {self.reason}" if self.path is not None else self.reason

    def __reduce__(self) -> tuple[Any, ...]:
        # Custom __init__ signature: keep the error picklable across worker processes.
        return (type(self), (self.path, self.reason))


@dataclass(frozen=True)
class Sample:
    """One image of a dataset; the mask path is where the mask *should* be (validation checks it exists).
    None for good images and for defect types labelled at image level only (no ground_truth folder)."""

    path: Path
    split: str
    defect: str
    mask_path: Path | None = None

    @property
    def label(self) -> int:
        """0 for good, 1 for any defect: the image-level target for evaluation."""
        return 0 if self.defect == "good" else 1


@dataclass
class Dataset:
    """A scanned category. `layout` ("mvtec" or "folder") tells validation which checks apply."""

    root: Path
    category: str
    train: list[Sample]
    test: list[Sample]
    layout: str = "mvtec"
    skipped: list[DataError] = field(default_factory=list)  # files/folders left out on purpose, with why

    @property
    def defect_types(self) -> list[str]:
        """Sorted defect names in the test split, excluding "good"."""
        return sorted({s.defect for s in self.test if s.defect != "good"})

    @property
    def unmasked_types(self) -> list[str]:
        """Defect types labelled at image level only (no ground_truth/<defect> folder)."""
        return sorted({s.defect for s in self.test if s.label == 1 and s.mask_path is None})


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _is_image_name(name: str) -> bool:
    return not _is_hidden(name) and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _is_listed(p: Path) -> bool:
    """A file, or any symbolic link: a broken link must reach validation, not vanish from the list."""
    return p.is_symlink() or p.is_file()


def _image_files(folder: Path) -> list[Path]:
    """Visible image files directly in `folder`, sorted by name for a deterministic order."""
    return sorted(p for p in folder.iterdir() if _is_image_name(p.name) and _is_listed(p))


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not _is_hidden(p.name) and p.is_dir())
