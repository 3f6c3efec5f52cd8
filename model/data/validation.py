"""Dataset validation: every problem of a dataset collected in one pass, with counts of sizes and modes."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anomaflow.model.data.decoding import (
    _check_mask_size,
    _check_mode,
    _decode,
    _describe,
    _display_size,
    _mask_header,
    _open_header,
    _read_bytes,
    _to_rgb,
    open_mask,
)
from anomaflow.model.data.samples import (
    _MASK_MODES,
    _MASK_SUFFIX,
    DataError,
    Dataset,
    ProgressFn,
    _image_files,
    _name_problem,
    _subdirs,
    display_path,
)


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
            lines.append(
                f"image-level labels only (no ground_truth folder, so no pixel "
                f"metrics): {', '.join(self.unmasked_types)}"
            )
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
