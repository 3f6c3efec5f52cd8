"""Reading images and masks: headers, the mode policy (see model.data.datasets), EXIF orientation,
framing into the model input."""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from anomaflow.model.data import samples
from anomaflow.model.data.frame import Box, Frame, as_frame, frame_box, place
from anomaflow.model.data.samples import (
    _ALPHA_MODES,
    _GREY_MODES,
    _MASK_MODES,
    _ORIENTATION_TAG,
    _PIL_CONVERTIBLE,
    _SUPPORTED_MODES,
    _SWAPPING_ORIENTATIONS,
    _UINT16_MODES,
    IMAGE_FORMATS,
    DataError,
    Size,
)


def _file_error(path: Path, exc: OSError) -> DataError:
    """The DataError for an OS error opening or reading `path`: what a user can act on."""
    if isinstance(exc, FileNotFoundError):
        return DataError(path, _not_found_reason(path))
    if isinstance(exc, IsADirectoryError):
        return DataError(path, "is a folder, expected an image file")
    return DataError(path, f"cannot read file ({exc.strerror or exc})")


def _read_bytes(path: Path) -> bytes:
    """Read a whole file, turning OS errors into a DataError that names the file."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise _file_error(path, exc) from None


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
    limit = samples.MAX_PIXELS if max_pixels is None else max_pixels  # read at call time: settable
    fh: Any
    if data is not None:
        if len(data) == 0:
            raise DataError(path, "empty file")
        fh = io.BytesIO(data)
    else:
        try:
            if path.stat().st_size == 0:
                raise DataError(path, "empty file")
            fh = open(path, "rb")
        except OSError as exc:
            raise _file_error(path, exc) from None
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


def open_image(
    path: str | Path,
    data: bytes | None = None,
    max_pixels: int | None = None,
    at_least: int | tuple[int, int] | None = None,
) -> Image.Image:
    """Return a fully loaded RGB image, or a DataError naming the file and the fault.

    `data` lets a caller that already holds the bytes (e.g. `ImageCache`) avoid a second read.
    `max_pixels` defaults to `model.data.samples.MAX_PIXELS` at call time (so it can be set).
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
        if (
            target is not None
            and img.format == "JPEG"
            and img.size[0] >= 2 * target[0]
            and img.size[1] >= 2 * target[1]
        ):
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
    (bilinear; see model.data.frame). keep_aspect=False squashes to the frame, as models saved before
    frames existed were trained."""
    if _check_size(size) is None:
        return np.array(open_image(Path(path), data=data), dtype=np.uint8)
    return load_framed(path, size, data=data, keep_aspect=keep_aspect)[0]  # type: ignore[arg-type]


def load_framed(
    path: str | Path, size: int | tuple[int, int], data: bytes | None = None, keep_aspect: bool = True
) -> tuple[np.ndarray, Box, tuple[int, int]]:
    """(array in the frame, the image's box in it, its displayed (width, height)): what inspection
    needs to score an image and map its heat map back onto it. The header is read once."""
    arr, box, shown, _ = load_framed_decoded(path, size, data, keep_aspect)
    return arr, box, shown


def load_framed_decoded(
    path: str | Path, size: int | tuple[int, int], data: bytes | None = None, keep_aspect: bool = True
) -> tuple[np.ndarray, Box, tuple[int, int], Image.Image]:
    """load_framed and the decoded RGB image it was framed from (a JPEG possibly at a DCT-reduced
    scale, never below the box): inspection draws a DEFECT's overlay on it instead of decoding twice."""
    frame = _check_size(size)
    if frame is None:
        raise ValueError("load_framed needs a frame size")
    path = Path(path)
    if data is None:
        data = _read_bytes(path)
    with _open_header(path, data) as img:
        shown = _display_size(img)
    box = frame_box(shown, frame, keep_aspect)
    img = open_image(path, data=data, at_least=(box.width, box.height))
    return place(img, frame, Image.Resampling.BILINEAR, box=box).astype(np.uint8, copy=False), box, shown, img


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
        box = frame_box(img.size, frame, keep_aspect)
        mask = place(img, frame, Image.Resampling.NEAREST, box=box, pad_edge=False) > 127
    return np.ascontiguousarray(mask, dtype=bool)


def _image_display_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image as `open_image` will return it, reading only the header."""
    with _open_header(path) as img:
        return _display_size(img)
