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
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import warnings
import zlib
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from model.frame import Box, Frame, as_frame, fit_box, place, valid_mask

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
_CACHE_VERSION = 3  # 2: JPEGs decoded with draft scaling when shrunk (open_image at_least); 3: frames that keep the aspect ratio
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


# ----------------------------------------------------------------------------------------------
# scanning


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
        raise DataError(folder, f"this is an MVTec-layout category folder (it holds train/good): pass its parent as the data root and {folder.name!r} as the category")
    files: list[Path] = []
    skipped: list[DataError] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        here = Path(dirpath)
        kept = []
        for d in sorted(dirnames):
            if _is_hidden(d):
                continue  # prune hidden folders (.git, .cache)
            if d.lower() in _EVALUATION_DIRS:
                skipped.append(DataError(here / d, f"skipped: a folder named {d!r} holds evaluation data, not good training images"))
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
        root=folder, category=name, train=[Sample(f, "train", "good", None) for f in files], test=[], layout="folder",
        skipped=sorted(skipped, key=lambda e: str(e.path)),
    )


# ----------------------------------------------------------------------------------------------
# decoding


def _read_bytes(path: Path) -> bytes:
    """Read a whole file, turning OS errors into a DataError that names the file."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise DataError(path, _not_found_reason(path)) from None
    except IsADirectoryError:
        raise DataError(path, "is a folder, expected an image file") from None
    except OSError as exc:
        raise DataError(path, f"cannot read file ({exc.strerror or exc})") from None


def _not_found_reason(path: Path) -> str:
    return "broken symbolic link (its target does not exist)" if path.is_symlink() else "file not found"


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


@contextmanager
def _open_header(path: Path, data: bytes | None = None, max_pixels: int | None = None) -> Iterator[Image.Image]:
    """Open an image reading only its header, enforcing the pixel limit before any decode.

    With `data` the bytes are used (no file access); otherwise the file is opened lazily, so
    header-only checks do not read whole files.
    """
    limit = MAX_PIXELS if max_pixels is None else max_pixels
    fh: Any
    if data is not None:
        if len(data) == 0:
            raise DataError(path, "empty file")
        fh = io.BytesIO(data)
    else:
        try:
            if path.stat().st_size == 0:
                raise DataError(path, "empty file")
            fh = open(path, "rb")  # noqa: SIM115 - closed in finally
        except FileNotFoundError:
            raise DataError(path, _not_found_reason(path)) from None
        except IsADirectoryError:
            raise DataError(path, "is a folder, expected an image file") from None
        except OSError as exc:
            raise DataError(path, f"cannot read file ({exc.strerror or exc})") from None
    img: Image.Image | None = None
    try:
        try:
            with warnings.catch_warnings():
                # We enforce our own (lower) limit below; PIL's warning would only be noise.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                img = Image.open(fh, formats=IMAGE_FORMATS)
        except Image.DecompressionBombError as exc:
            raise DataError(path, f"image too large: {exc}") from None
        except UnidentifiedImageError:
            raise DataError(path, "not a readable image (not PNG, JPEG, BMP or TIFF data)") from None
        except Exception as exc:  # PIL plugins raise many exception types on garbage input
            raise DataError(path, f"not a readable image ({_describe(exc)})") from None
        w, h = img.size
        if w * h > limit:
            raise DataError(path, f"image too large: {w}x{h} exceeds {limit} pixels")
        if w <= 0 or h <= 0:
            raise DataError(path, f"image has no pixels ({w}x{h})")
        yield img
    finally:
        if img is not None:
            img.close()
        fh.close()


def _display_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) after EXIF orientation, from the header only."""
    w, h = img.size
    if img.format == "PNG" and "exif" not in img.info:
        return w, h  # PngImageFile.getexif() would decode the whole image to look for a late eXIf chunk
    try:
        orientation = img.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # broken EXIF is reported when the image is decoded
        orientation = 1
    return (h, w) if orientation in _SWAPPING_ORIENTATIONS else (w, h)


def _check_mode(img: Image.Image, path: Path) -> None:
    if img.mode not in _SUPPORTED_MODES:
        raise DataError(path, f"unsupported image mode {img.mode}")


def _decode(img: Image.Image, path: Path) -> Image.Image:
    """Fully decode and apply EXIF orientation; truncated data must fail, never be zero-filled."""
    # Some other library may have flipped this global; a half-grey image would poison training.
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        img.load()
    except Exception as exc:  # OSError for truncation, assorted types for corrupt streams
        raise DataError(path, f"truncated or corrupt image data ({_describe(exc)})") from None
    try:
        return ImageOps.exif_transpose(img)
    except Exception as exc:
        raise DataError(path, f"invalid EXIF orientation data ({_describe(exc)})") from None


def _require_opaque(rgba: Image.Image, path: Path) -> Image.Image:
    lo, _ = rgba.getchannel("A").getextrema()
    if lo < 255:
        raise DataError(path, "has transparent pixels (only fully opaque images are accepted)")
    return rgba.convert("RGB")


def _to_rgb(img: Image.Image, path: Path) -> Image.Image:
    """Apply the module's mode policy to a decoded image (see module docstring)."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in _GREY_MODES or mode in _PIL_CONVERTIBLE:
        return img.convert("RGB")
    if mode == "P":
        if "transparency" in img.info:
            return _require_opaque(img.convert("RGBA"), path)
        return img.convert("RGB")
    if mode in _ALPHA_MODES:
        return _require_opaque(img.convert("RGBA"), path)
    if mode in _UINT16_MODES:
        grey = (np.asarray(img).astype(np.uint16) >> 8).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if mode == "I":
        grey = np.clip(np.asarray(img), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    raise DataError(path, f"unsupported image mode {mode}")


def open_image(path: str | Path, data: bytes | None = None, max_pixels: int | None = None, at_least: int | tuple[int, int] | None = None) -> Image.Image:
    """Return a fully loaded RGB image, or a DataError naming the file and the fault.

    `data` lets a caller that already holds the bytes (e.g. `ImageCache`) avoid a second read.
    `max_pixels` defaults to the module's `MAX_PIXELS` at call time (so it can be patched).
    `at_least`: the caller will shrink the image to this size (an int for both sides, or (width,
    height)), so a JPEG may be decoded at 1/2, 1/4 or 1/8 scale in the DCT domain (PIL's draft),
    never below that size: an 8-Mpixel photo decodes several times faster, with the same
    antialiased result size.
    """
    path = Path(path)
    if data is None:
        data = _read_bytes(path)
    with _open_header(path, data, max_pixels) as img:
        _check_mode(img, path)
        target = (at_least, at_least) if isinstance(at_least, int) else at_least
        if target is not None and img.format == "JPEG" and img.size[0] >= 2 * target[0] and img.size[1] >= 2 * target[1]:
            img.draft(img.mode, tuple(target))
        decoded = _decode(img, path)
        rgb = _to_rgb(decoded, path)
        rgb.load()
        return rgb


def _check_size(size: Size) -> Frame | None:
    """The frame a size stands for (None: native size); anything else is a clear error."""
    if size is None:
        return None
    if isinstance(size, bool) or not isinstance(size, (int, np.integer, tuple, list)):
        raise ValueError(f"size must be a positive int, a (height, width) pair or None, got {size!r}")
    try:
        return as_frame(size)
    except (TypeError, ValueError):
        raise ValueError(f"size must be a positive int, a (height, width) pair or None, got {size!r}") from None


def _size_key(frame: Frame | None, keep_aspect: bool) -> str:
    if frame is None:
        return "native"
    return f"{frame[0]}x{frame[1]}" + ("" if keep_aspect else "-squashed")


def load_image(path: str | Path, size: Size = None, data: bytes | None = None, keep_aspect: bool = True) -> np.ndarray:
    """uint8 (H, W, 3) array: native size, or placed in the frame `size` keeping its aspect ratio
    (bilinear; see model.frame). keep_aspect=False squashes to the frame, as models saved before
    frames existed were trained."""
    if _check_size(size) is None:
        return np.array(open_image(Path(path), data=data), dtype=np.uint8)
    return load_framed(path, size, data=data, keep_aspect=keep_aspect)[0]  # type: ignore[arg-type]


def load_framed(path: str | Path, size: int | tuple[int, int], data: bytes | None = None, keep_aspect: bool = True) -> tuple[np.ndarray, Box, tuple[int, int]]:
    """(array in the frame, the image's box in it, its displayed (width, height)): what inspection
    needs to score an image and map its heat map back onto it. The header is read once."""
    frame = _check_size(size)
    if frame is None:
        raise ValueError("load_framed needs a frame size")
    path = Path(path)
    if data is None:
        data = _read_bytes(path)
    with _open_header(path, data) as img:
        shown = _display_size(img)
    box = fit_box(shown, frame) if keep_aspect else Box(0, 0, *frame)
    img = open_image(path, data=data, at_least=(box.width, box.height))
    return place(img, frame, Image.Resampling.BILINEAR, box=box).astype(np.uint8, copy=False), box, shown


def _mask_header(path: Path, data: bytes | None) -> tuple[str, tuple[int, int]]:
    """(mode, displayed size) of a mask, from its header."""
    with _open_header(path, data) as img:
        return img.mode, _display_size(img)


def _check_mask_size(path: Path, mask_size: tuple[int, int], expected_size: tuple[int, int] | None) -> None:
    if expected_size is not None and tuple(mask_size) != tuple(expected_size):
        mw, mh = mask_size
        ew, eh = expected_size
        raise DataError(path, f"mask size {mw}x{mh} does not match image size {ew}x{eh}")


def _read_mask_bytes(path: Path) -> bytes:
    if not path.exists():
        raise DataError(path, "mask missing")
    return _read_bytes(path)


def open_mask(path: str | Path, data: bytes | None = None) -> np.ndarray:
    """bool mask at native (displayed) size; values > 127 are True so soft edges are binarised."""
    path = Path(path)
    if data is None:
        data = _read_mask_bytes(path)
    with _open_header(path, data) as img:
        if img.mode not in _MASK_MODES:
            raise DataError(path, f"mask mode {img.mode}, expected L")
        decoded = _decode(img, path)
        return np.asarray(decoded.convert("L")) > 127


def load_mask(
    path: str | Path,
    size: Size = None,
    expected_size: tuple[int, int] | None = None,
    data: bytes | None = None,
    keep_aspect: bool = True,
) -> np.ndarray:
    """bool (H, W) mask placed in the frame `size` exactly as its image is (zeros outside the
    image's box); `expected_size` = (width, height) of its image, checked before decoding.

    Resizing uses NEAREST after binarising so the result stays strictly two-valued.
    """
    frame = _check_size(size)
    path = Path(path)
    if data is None:
        data = _read_mask_bytes(path)
    if expected_size is not None:
        _check_mask_size(path, _mask_header(path, data)[1], expected_size)
    mask = open_mask(path, data=data)
    if frame is not None and mask.shape != frame:
        img = Image.fromarray(mask.astype(np.uint8) * 255, mode="L")
        box = fit_box(img.size, frame) if keep_aspect else Box(0, 0, *frame)
        mask = place(img, frame, Image.Resampling.NEAREST, box=box, pad_edge=False) > 127
    return np.ascontiguousarray(mask, dtype=bool)


def _image_display_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image as `open_image` will return it, reading only the header."""
    with _open_header(path) as img:
        return _display_size(img)


# ----------------------------------------------------------------------------------------------
# cache


class ImageCache:
    """Decode each file once per target size.

    Key = sha256 of the file bytes + kind (image/mask) + size (+ a policy version), so an edited
    file is never served stale. Entries live in memory (LRU-bounded by `max_memory_items`) and,
    with `cache_dir`, on disk as ``<key>.npy`` written atomically (temp file + os.replace), so a
    crashed or concurrent writer never leaves a half-written entry. Returned arrays are shared
    with the cache and therefore read-only: copy before modifying. Not thread-safe.
    """

    def __init__(self, cache_dir: str | Path | None = None, max_memory_items: int | None = None) -> None:
        if max_memory_items is not None and max_memory_items < 0:
            raise ValueError(f"max_memory_items must be >= 0 or None, got {max_memory_items}")
        self.cache_dir: Path | None = Path(cache_dir) if cache_dir is not None else None
        if self.cache_dir is not None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.max_memory_items = max_memory_items
        self._memory: OrderedDict[str, np.ndarray] = OrderedDict()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def _key(kind: str, size: Size, data: bytes, keep_aspect: bool = True) -> str:
        digest = hashlib.sha256(data).hexdigest()
        return f"v{_CACHE_VERSION}-{kind}-{_size_key(_check_size(size), keep_aspect)}-{digest}"

    def _disk_path(self, key: str) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / f"{key}.npy"

    def _lookup(self, key: str, dtype: type, shape: tuple[int, ...] | None) -> np.ndarray | None:
        arr = self._memory.get(key)
        if arr is not None:
            self._memory.move_to_end(key)
            return arr
        disk = self._disk_path(key)
        if disk is None:
            return None
        try:
            arr = np.load(disk, allow_pickle=False)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, EOFError):
            return None  # corrupt entry: treat as a miss; it is rewritten atomically
        if arr.dtype != dtype or (shape is not None and arr.shape != shape):
            return None
        arr.setflags(write=False)
        self._remember(key, arr)
        return arr

    def _remember(self, key: str, arr: np.ndarray) -> None:
        if self.max_memory_items == 0:
            return
        self._memory[key] = arr
        self._memory.move_to_end(key)
        while self.max_memory_items is not None and len(self._memory) > self.max_memory_items:
            self._memory.popitem(last=False)

    def _store(self, key: str, arr: np.ndarray) -> np.ndarray:
        arr.setflags(write=False)
        self._remember(key, arr)
        disk = self._disk_path(key)
        if disk is not None:
            try:
                fd, tmp = tempfile.mkstemp(dir=disk.parent, prefix=f".{key}.", suffix=".tmp")
                try:
                    with os.fdopen(fd, "wb") as fh:
                        np.save(fh, arr, allow_pickle=False)
                    os.replace(tmp, disk)
                except BaseException:
                    with suppress(OSError):
                        os.unlink(tmp)
                    raise
            except OSError as exc:
                # The cache is only an accelerator: a full or read-only disk must not stop training.
                warnings.warn(f"image cache: could not write {disk} ({exc})", RuntimeWarning, stacklevel=3)
        return arr

    def image(self, path: str | Path, size: Size, keep_aspect: bool = True) -> np.ndarray:
        """uint8 (H, W, 3) in the frame `size`; the file is read once and decoded from those same bytes on a miss."""
        frame = _check_size(size)
        path = Path(path)
        data = _read_bytes(path)
        key = self._key("image", frame, data, keep_aspect)
        arr = self._lookup(key, np.uint8, None if frame is None else (*frame, 3))
        if arr is not None:
            self.hits += 1
            return arr
        self.misses += 1
        return self._store(key, load_image(path, frame, data=data, keep_aspect=keep_aspect))

    def mask(self, path: str | Path, size: Size, expected_size: tuple[int, int] | None = None, keep_aspect: bool = True) -> np.ndarray:
        """bool (H, W) in the frame `size`; the size check against `expected_size` runs on hits too (header only)."""
        frame = _check_size(size)
        path = Path(path)
        data = _read_mask_bytes(path)
        if expected_size is not None:
            _check_mask_size(path, _mask_header(path, data)[1], expected_size)
        key = self._key("mask", frame, data, keep_aspect)
        arr = self._lookup(key, np.bool_, frame)
        if arr is not None:
            self.hits += 1
            return arr
        self.misses += 1
        return self._store(key, load_mask(path, frame, data=data, keep_aspect=keep_aspect))


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
        out[i] = cache.image(s.path, frame, keep_aspect) if cache is not None else load_image(s.path, frame, keep_aspect=keep_aspect)
        if progress is not None:
            progress(i + 1, total)
    return out


def load_masks(samples: Sequence[Sample], size: int | tuple[int, int], cache: ImageCache | None = None, keep_aspect: bool = True) -> np.ndarray:
    """(N, H, W) bool ground truth in the frame; good samples are all False, defect masks must match their image size."""
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
    if not keep_aspect:
        return None
    return valid_mask([fit_box(wh, frame) for wh in image_sizes(samples)], frame)


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


# ----------------------------------------------------------------------------------------------
# validation


@dataclass
class ValidationReport:
    """Everything found wrong with a dataset at once, plus statistics to spot odd files."""

    category: str
    counts: dict[str, int] = field(default_factory=dict)
    image_sizes: dict[str, int] = field(default_factory=dict)
    image_modes: dict[str, int] = field(default_factory=dict)
    n_masks: int = 0
    unmasked_types: list[str] = field(default_factory=list)  # defect types with image-level labels only
    problems: list[DataError] = field(default_factory=list)
    skipped: list[DataError] = field(default_factory=list)  # left out on purpose (not problems)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self, max_problems: int = 20) -> str:
        """Human-readable report: counts table, sizes, modes, then problems (first `max_problems`)."""
        n_images = sum(self.counts.values())
        status = "OK" if self.ok else f"{len(self.problems)} problem(s)"
        lines = [f"dataset {self.category}: {n_images} images, {self.n_masks} masks - {status}"]
        width = max((len(k) for k in self.counts), default=0)
        lines += [f"  {k:<{width}}  {v:>6}" for k, v in self.counts.items()]
        lines.append("sizes: " + (", ".join(f"{k} ({v})" for k, v in self.image_sizes.items()) or "-"))
        lines.append("modes: " + (", ".join(f"{k} ({v})" for k, v in self.image_modes.items()) or "-"))
        if self.unmasked_types:
            lines.append(f"image-level labels only (no ground_truth folder, so no pixel metrics): {', '.join(self.unmasked_types)}")
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} (not training images):")
            lines += [f"  {p}" for p in self.skipped[:max_problems]]
            if len(self.skipped) > max_problems:
                lines.append(f"  ... and {len(self.skipped) - max_problems} more")
        if self.problems:
            lines.append("problems:")
            lines += [f"  {p}" for p in self.problems[:max_problems]]
            if len(self.problems) > max_problems:
                lines.append(f"  ... and {len(self.problems) - max_problems} more")
        return "\n".join(lines)

    def raise_for_problems(self) -> None:
        """Raise one DataError listing every problem, so a pipeline stops with the full picture."""
        if self.problems:
            body = "\n".join(f"  {p}" for p in self.problems)
            raise DataError(None, f"dataset {self.category} has {len(self.problems)} problem(s):\n{body}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form for logs and run artifacts."""
        return {
            "category": self.category,
            "ok": self.ok,
            "counts": dict(self.counts),
            "image_sizes": dict(self.image_sizes),
            "image_modes": dict(self.image_modes),
            "n_masks": self.n_masks,
            "unmasked_types": list(self.unmasked_types),
            "problems": [_error_dict(p) for p in self.problems],
            "skipped": [_error_dict(p) for p in self.skipped],
        }


def _error_dict(err: DataError) -> dict[str, str | None]:
    return {"path": None if err.path is None else display_path(err.path), "reason": err.reason}


def _inspect_image(path: Path, decode: bool, modes: Counter[str], sizes: Counter[str]) -> tuple[int, int]:
    """Record header statistics, then check the image as deeply as `decode` asks; returns displayed size."""
    data = _read_bytes(path)
    with _open_header(path, data) as img:
        w, h = _display_size(img)
        modes[img.mode] += 1
        sizes[f"{w}x{h}"] += 1
        _check_mode(img, path)
        if decode:
            _to_rgb(_decode(img, path), path)
            return w, h
    with _open_header(path, data) as img:  # verify() must run on a freshly opened image
        try:
            img.verify()
        except Exception as exc:
            raise DataError(path, f"truncated or corrupt image data ({_describe(exc)})") from None
    return w, h


def _inspect_mask(path: Path, image_size: tuple[int, int] | None, decode: bool) -> None:
    data = _read_bytes(path)
    mode, size = _mask_header(path, data)
    if mode not in _MASK_MODES:
        raise DataError(path, f"mask mode {mode}, expected L")
    if image_size is not None:
        _check_mask_size(path, size, image_size)
    if decode:
        open_mask(path, data=data)
    else:
        with _open_header(path, data) as img:
            try:
                img.verify()
            except Exception as exc:
                raise DataError(path, f"truncated or corrupt image data ({_describe(exc)})") from None


def _orphan_masks(ds: Dataset) -> list[DataError]:
    """Masks in ground_truth/<defect>/ whose image test/<defect>/<stem>.* was not found."""
    gt_dir = ds.root / "ground_truth"
    if not gt_dir.is_dir():
        return []
    stems = {(s.defect, s.path.stem) for s in ds.test}
    problems = []
    for defect_dir in _subdirs(gt_dir):
        for mask in _image_files(defect_dir):
            stem = mask.stem
            if not stem.endswith(_MASK_SUFFIX):
                reason = f"mask without image (mask names must be <image stem>{_MASK_SUFFIX}.png)"
                problems.append(DataError(mask, reason))
            elif (defect_dir.name, stem[: -len(_MASK_SUFFIX)]) not in stems:
                image = f"test/{defect_dir.name}/{stem[: -len(_MASK_SUFFIX)]}.*"
                problems.append(DataError(mask, f"mask without image (no {image})"))
    return problems


def validate_dataset(ds: Dataset, decode: bool = True, progress: ProgressFn | None = None) -> ValidationReport:
    """Check every file and collect all problems instead of stopping at the first.

    decode=True fully decodes images and masks (catches truncation anywhere and transparency);
    decode=False reads headers and runs PIL's verify() (much faster; PNG CRCs are still checked).
    """
    problems: list[DataError] = []
    counts: dict[str, int] = {}
    for s in [*ds.train, *ds.test]:
        key = f"{s.split}/{s.defect}"
        counts[key] = counts.get(key, 0) + 1
    if not ds.train:
        train_dir = ds.root / "train" / "good" if ds.layout == "mvtec" else ds.root
        problems.append(DataError(train_dir, "empty train split"))
    if not ds.test and ds.layout == "mvtec" and (ds.root / "test").is_dir():
        problems.append(DataError(ds.root / "test", "empty test split (test folder has no images)"))

    modes: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    n_masks = 0
    samples = [*ds.train, *ds.test]
    for i, s in enumerate(samples):
        image_size: tuple[int, int] | None = None
        for named in (s.path, s.mask_path):
            if named is not None and (name_error := _name_problem(named)) is not None:
                problems.append(name_error)
        try:
            image_size = _inspect_image(s.path, decode, modes, sizes)
        except DataError as exc:
            problems.append(exc)
        if s.label == 1 and s.mask_path is not None:
            if not s.mask_path.exists():
                problems.append(DataError(s.mask_path, f"mask missing (for image {s.path})"))
            else:
                n_masks += 1
                try:
                    _inspect_mask(s.mask_path, image_size, decode)
                except DataError as exc:
                    problems.append(exc)
        if progress is not None:
            progress(i + 1, len(samples))
    if ds.layout == "mvtec":
        problems.extend(_orphan_masks(ds))

    return ValidationReport(
        category=ds.category,
        counts=counts,
        image_sizes=dict(sizes.most_common()),
        image_modes=dict(modes.most_common()),
        n_masks=n_masks,
        unmasked_types=ds.unmasked_types,
        problems=problems,
        skipped=list(ds.skipped),
    )
