"""Decode each file once per target size: an in-memory LRU plus an optional disk cache keyed by content."""

from __future__ import annotations

import hashlib
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np

from anomaflow.model.data.decoding import (
    _check_mask_size,
    _check_size,
    _mask_header,
    _read_bytes,
    _read_mask_bytes,
    _size_key,
    load_image,
    load_mask,
)
from anomaflow.model.data.samples import _CACHE_VERSION, Size
from anomaflow.model.files import atomic_write


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
                with atomic_write(disk) as fh:
                    np.save(fh, arr, allow_pickle=False)
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

    def mask(
        self, path: str | Path, size: Size, expected_size: tuple[int, int] | None = None, keep_aspect: bool = True
    ) -> np.ndarray:
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
