"""Dataset discovery, validation and image/mask loading for MVTec-AD-style data.

Layout (MVTec AD)::

    <root>/<category>/train/good/*.png            good images only (unsupervised training)
    <root>/<category>/test/<defect>/*.png         "good" plus one folder per defect type
    <root>/<category>/ground_truth/<defect>/<stem>_mask.png   optional per defect type

A defect type without a ``ground_truth/<defect>`` folder is labelled at image level only: its
images count for image metrics and are left out of pixel metrics (much real data has no masks).
A type that has the folder must have a mask for every image.

Scanning never decodes pixels, so it is cheap even for large datasets; decoding
happens in `load_images` / `load_masks` (optionally through `ImageCache`) and in
`validate_dataset`, which collects *every* problem so a user can fix a dataset
in one pass instead of one crash at a time.

Image mode policy (`open_image`), chosen so every model input is 8-bit RGB and
nothing is silently invented or thrown away:

* ``RGB`` is kept; ``L`` and ``1`` become RGB with the grey value replicated.
* ``CMYK`` and ``YCbCr`` are converted to RGB by PIL.
* 16-bit grey (``I;16``, ``I;16B``, ``I;16L``, ``I;16N``) is scaled to 8 bit
  with ``value >> 8``; 32-bit integer ``I`` is clipped to 0..255 (its range is
  not known, so no scaling is guessed).
* ``RGBA``, ``LA``, ``PA`` and ``P`` with a ``transparency`` entry are accepted
  only when every pixel is fully opaque (alpha is then dropped); otherwise the
  file is rejected with "has transparent pixels", because the colour hidden
  behind transparency is arbitrary and would look like an anomaly.
  ``P`` without transparency goes straight to RGB.
* ``F`` and every other mode are rejected ("unsupported image mode X").
* The EXIF orientation is applied (``ImageOps.exif_transpose``), so sizes are
  the displayed sizes; masks are compared against those.

Only PNG, JPEG, BMP and TIFF content is decoded, whatever the file is called: PIL
would otherwise pick any of its ~40 plugins by content (EPS hands the file to
Ghostscript, an external interpreter), so a hostile file with an image extension
meets only the four decoders we use. Anything else is "not a readable image".

Symbolic links are followed: a dataset is curated by the people who train on it
(DVC and shared stores build datasets from links), so a link leaving the dataset
folder is read like any file. A link whose target is missing, or a link loop, is
listed and reported by validation (it is never silently skipped).

Masks must be ``L`` or ``1``; values > 127 are foreground, which binarises the
soft (anti-aliased) edges some mask editors write.

Every per-file fault raises `DataError` naming the file and the fault.

The code is split by what it does: model.data.samples (types, limits, what counts as an image
file), model.data.decoding (headers, mode policy, framing), model.data.image_cache, model.data.validation;
this module holds discovery (scan_mvtec, scan_folder) and batch loading/splitting, and
re-exports the rest, so `from model import data` keeps working.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from anomaflow.model.data.decoding import (
    _check_size,
    _image_display_size,
    _open_header,
    load_framed,
    load_framed_decoded,
    load_image,
    load_mask,
    open_image,
    open_mask,
)
from anomaflow.model.data.frame import frame_box, valid_mask
from anomaflow.model.data.image_cache import ImageCache
from anomaflow.model.data.samples import (  # noqa: F401 - re-exported
    _MASK_SUFFIX,
    IMAGE_EXTENSIONS,
    IMAGE_FORMATS,
    MAX_PIXELS,
    DataError,
    Dataset,
    ProgressFn,
    Sample,
    Size,
    _image_files,
    _is_hidden,
    _is_image_name,
    _is_listed,
    _subdirs,
    display_path,
)
from anomaflow.model.data.validation import ValidationReport, validate_dataset

__all__ = [
    "IMAGE_EXTENSIONS",
    "IMAGE_FORMATS",
    "MAX_PIXELS",
    "DataError",
    "display_path",
    "Dataset",
    "ImageCache",
    "Sample",
    "ValidationReport",
    "load_image",
    "load_images",
    "load_mask",
    "load_masks",
    "load_framed",
    "load_framed_decoded",
    "image_sizes",
    "valid_masks",
    "mvtec_categories",
    "open_image",
    "open_mask",
    "partition_test",
    "pixel_truth",
    "scan_folder",
    "scan_mvtec",
    "split_train",
    "validate_dataset",
]

# ----------------------------------------------------------------------------------------------
# scanning


def scan_mvtec(root: str | Path, category: str) -> Dataset:
    """List the files of one MVTec-layout category without decoding anything (fast, deterministic)."""
    if not category or category in {".", ".."} or "/" in category or "\\" in category:
        raise DataError(root, f"invalid category name {category!r}")
    cat_dir = Path(root) / category
    if not cat_dir.is_dir():
        raise DataError(cat_dir, "category folder not found")
    train_dir = cat_dir / "train" / "good"
    if not train_dir.is_dir():
        raise DataError(train_dir, "train/good folder not found (MVTec layout needs train/good)")

    train = [Sample(p, "train", "good", None) for p in _image_files(train_dir)]
    test: list[Sample] = []
    test_dir = cat_dir / "test"
    if test_dir.is_dir():
        gt_dir = cat_dir / "ground_truth"
        for defect_dir in _subdirs(test_dir):
            defect = defect_dir.name
            masked = defect != "good" and (gt_dir / defect).is_dir()  # else: image-level labels only
            for p in _image_files(defect_dir):
                mask = gt_dir / defect / f"{p.stem}{_MASK_SUFFIX}.png" if masked else None
                test.append(Sample(p, "test", defect, mask))
    return Dataset(root=cat_dir, category=category, train=train, test=test, layout="mvtec")


def mvtec_categories(root: str | Path) -> list[str]:
    """Names of the MVTec-layout categories directly under `root` (folders holding train/good)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return [d.name for d in _subdirs(root) if (d / "train" / "good").is_dir()]


# Folder names and file stems a plain folder of good images must not take as training data:
# an MVTec test split or its masks would otherwise be learnt as "normal" without a word.
_EVALUATION_DIRS = frozenset({"test", "ground_truth"})


def _is_mask_name(name: str) -> bool:
    return os.path.splitext(name)[0].lower().endswith(_MASK_SUFFIX)


def scan_folder(path: str | Path) -> Dataset:
    """Treat a plain folder (searched recursively) as good training images, e.g. a user's own capture.

    Folders named test or ground_truth and mask-like files (*_mask.*) are left out and listed in
    `Dataset.skipped`: they are evaluation data, never good training images.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise DataError(folder, "folder not found")
    if (folder / "train" / "good").is_dir():
        raise DataError(
            folder,
            f"this is an MVTec-layout category folder (it holds train/good): pass its parent "
            f"as the data root and {folder.name!r} as the category",
        )
    files: list[Path] = []
    skipped: list[DataError] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        here = Path(dirpath)
        kept = []
        for d in sorted(dirnames):
            if _is_hidden(d):
                continue  # prune hidden folders (.git, .cache)
            if d.lower() in _EVALUATION_DIRS:
                skipped.append(
                    DataError(
                        here / d, f"skipped: a folder named {d!r} holds evaluation data, not good training images"
                    )
                )
            else:
                kept.append(d)
        dirnames[:] = kept
        for f in filenames:
            if not _is_image_name(f):
                continue
            if _is_mask_name(f):
                skipped.append(DataError(here / f, "skipped: a mask-like file (*_mask.*) is not a training image"))
            else:
                files.append(here / f)
    files = sorted(f for f in files if _is_listed(f))
    if not files:
        exts = ", ".join(sorted(IMAGE_EXTENSIONS))
        left_out = f"; left out {len(skipped)} test/ground_truth folder(s) or mask file(s)" if skipped else ""
        raise DataError(folder, f"no images found (looked for {exts}, hidden files ignored{left_out})")
    name = folder.name or folder.resolve().name
    return Dataset(
        root=folder,
        category=name,
        train=[Sample(f, "train", "good", None) for f in files],
        test=[],
        layout="folder",
        skipped=sorted(skipped, key=lambda e: str(e.path)),
    )


# ----------------------------------------------------------------------------------------------
# batch loading and splitting


def load_images(
    samples: Sequence[Sample],
    size: int | tuple[int, int],
    cache: ImageCache | None = None,
    progress: ProgressFn | None = None,
    keep_aspect: bool = True,
) -> np.ndarray:
    """(N, H, W, 3) uint8 stack in the frame `size` for the model; `progress(done, total)` after each image."""
    frame = _check_size(size)
    assert frame is not None, "load_images needs a frame size"
    total = len(samples)
    out = np.empty((total, *frame, 3), dtype=np.uint8)
    for i, s in enumerate(samples):
        out[i] = (
            cache.image(s.path, frame, keep_aspect)
            if cache is not None
            else load_image(s.path, frame, keep_aspect=keep_aspect)
        )
        if progress is not None:
            progress(i + 1, total)
    return out


def load_masks(
    samples: Sequence[Sample], size: int | tuple[int, int], cache: ImageCache | None = None, keep_aspect: bool = True
) -> np.ndarray:
    """(N, H, W) bool ground truth in the frame; good samples are all False, defect masks must match
    their image size."""
    frame = _check_size(size)
    assert frame is not None, "load_masks needs a frame size"
    out = np.zeros((len(samples), *frame), dtype=bool)
    for i, s in enumerate(samples):
        if s.label == 0 or s.mask_path is None:
            continue  # good, or labelled at image level only: see pixel_truth
        expected = _image_display_size(s.path)
        if cache is not None:
            out[i] = cache.mask(s.mask_path, frame, expected_size=expected, keep_aspect=keep_aspect)
        else:
            out[i] = load_mask(s.mask_path, frame, expected_size=expected, keep_aspect=keep_aspect)
    return out


def image_sizes(samples: Sequence[Sample]) -> list[tuple[int, int]]:
    """(width, height) of each sample as displayed, from headers only."""
    return [_image_display_size(s.path) for s in samples]


def image_modes(samples: Sequence[Sample]) -> list[str]:
    """PIL colour mode of each sample's file (L, RGB, I;16, ...), from headers only."""
    out = []
    for s in samples:
        with _open_header(s.path) as img:
            out.append(img.mode)
    return out


def valid_masks(samples: Sequence[Sample], size: int | tuple[int, int], keep_aspect: bool = True) -> np.ndarray | None:
    """(N, H, W) bool: where each image lies in the frame (the rest is padding); None when every
    image fills it, the common case of one aspect ratio per dataset."""
    frame = _check_size(size)
    assert frame is not None
    return valid_mask([frame_box(wh, frame, keep_aspect) for wh in image_sizes(samples)], frame)


def pixel_truth(samples: Sequence[Sample]) -> np.ndarray:
    """Which samples have pixel ground truth: good images (all-normal) and defect images with a mask."""
    return np.array([s.label == 0 or s.mask_path is not None for s in samples], dtype=bool)


def split_train(
    samples: Sequence[Sample], holdout_fraction: float = 0.2, seed: int = 0
) -> tuple[list[Sample], list[Sample]]:
    """Seeded split of train/good into (fit, holdout), so thresholds are calibrated on unseen good images.

    Test samples are refused: calibrating on them would leak the evaluation set. The result does not
    depend on the input order (samples are sorted by path first); each part is sorted by path.
    """
    if not 0.0 < holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction must be in (0, 1), got {holdout_fraction}")
    if len(samples) < 2:
        raise ValueError(f"need at least 2 training samples to split, got {len(samples)}")
    for s in samples:
        if s.split != "train" or s.defect != "good":
            raise ValueError(f"split_train only splits train/good samples; got {s.split}/{s.defect}: {s.path}")
    ordered = sorted(samples, key=lambda s: str(s.path))
    n = len(ordered)
    n_hold = min(max(int(round(n * holdout_fraction)), 1), n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    hold_idx = set(perm[:n_hold].tolist())
    fit = [s for i, s in enumerate(ordered) if i not in hold_idx]
    holdout = [s for i, s in enumerate(ordered) if i in hold_idx]
    return fit, holdout


GATE_SEED: int = 1729
"""Seed of the test partition for the promotion gate: fixed, not the run's seed, so every
training and retraining of a dataset is gated on the same images."""


def partition_test(samples: Sequence[Sample], gate_fraction: float, seed: int = GATE_SEED) -> np.ndarray:
    """Boolean mask over `samples`: True for the gate part of the test split, False for the
    reported part. Stratified by defect type (good included) so both parts hold every type;
    round(n * fraction) per type, always leaving one for the report. Independent of input order.

    The promotion gate compares champion and challenger on the gate part only, so the numbers
    a run reports never drift upward by selecting on them.
    """
    if not 0.0 <= gate_fraction < 1.0:
        raise ValueError(f"gate_fraction must be in [0, 1), got {gate_fraction}")
    gate = np.zeros(len(samples), dtype=bool)
    if gate_fraction == 0.0:
        return gate
    by_type: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        by_type.setdefault(s.defect, []).append(i)
    for defect, members in by_type.items():
        idx = sorted(members, key=lambda i: str(samples[i].path))
        n_gate = min(int(round(len(idx) * gate_fraction)), len(idx) - 1)
        rng = np.random.default_rng([seed, zlib.crc32(defect.encode("utf-8", "surrogateescape"))])  # per type
        gate[[idx[j] for j in rng.permutation(len(idx))[:n_gate]]] = True
    return gate
