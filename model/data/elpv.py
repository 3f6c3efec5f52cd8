"""Importer for the ELPV solar-cell dataset (PyPI `elpv-dataset`, CC BY-NC-SA 4.0) into the MVTec layout.

The package ships 2,624 electroluminescence images of solar cells (300x300, 8-bit grayscale) from
mono- and polycrystalline modules, each with a defect probability (0, 1/3, 2/3 or 1) given by
experts. It is an optional extra (`pip install 'anomaflow[elpv]'`), never a runtime dependency,
and its images are never committed: the importer copies them from the installed package.

Layout written, one category per module type (`elpv_mono`, `elpv_poly`)::

    <dest>/elpv_<type>/train/good/       probability-0 cells, a seeded 80 %
    <dest>/elpv_<type>/test/good/        the other 20 % of the probability-0 cells
    <dest>/elpv_<type>/test/defective/   probability-1 cells

Cells rated 1/3 or 2/3 are left out (uncertain labels would blur both classes); the importer
says how many, and `elpv_import.json` in each category lists them. There are no masks, so
training reports image metrics only.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from anomaflow.model.data.datasets import DataError

TYPES = ("mono", "poly")
TRAIN_FRACTION = 0.8
PACKAGE = "elpv_dataset"


@dataclass
class ElpvCategory:
    """What one imported category holds (also written as its elpv_import.json)."""

    category: str
    seed: int
    train_good: int
    test_good: int
    test_defective: int
    left_out_uncertain: int
    left_out_cells: list[str] = field(default_factory=list)


def package_data_dir() -> Path:
    """The installed package's data folder (labels.csv and images/)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            None, "the ELPV dataset package is not installed: pip install 'anomaflow[elpv]' (or elpv-dataset)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def read_labels(source: Path) -> list[tuple[str, float, str]]:
    """(relative image path, defect probability, module type) rows of labels.csv."""
    path = source / "labels.csv"
    if not path.is_file():
        raise DataError(path, "labels.csv not found in the ELPV data folder")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 3 or parts[2] not in TYPES:
            raise DataError(path, f"line {n}: expected '<image> <probability> mono|poly', got {line!r}")
        rows.append((parts[0], float(parts[1]), parts[2]))
    return rows


def import_elpv(dest: str | Path, seed: int = 0, source: str | Path | None = None) -> list[ElpvCategory]:
    """Write elpv_mono and elpv_poly under dest (see the module docstring); returns what each holds.

    Each category is built in a hidden temporary folder and renamed into place, so an interrupted
    import never leaves half a dataset. A category imported before with the same seed is kept as
    it is (importing twice changes nothing); any other existing folder there is refused.
    """
    src = Path(source) if source is not None else package_data_dir()
    rows = read_labels(src)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    done = []
    for kind in TYPES:
        category = f"elpv_{kind}"
        final = dest / category
        if final.exists():
            earlier = _earlier_import(final)
            if earlier is None or earlier.seed != seed:
                raise FileExistsError(
                    f"{final} already exists and is not an ELPV import with seed {seed}: remove it to import again"
                )
            done.append(earlier)  # already there: importing twice changes nothing
            continue
        cells = sorted((p, prob) for p, prob, t in rows if t == kind)
        good = [p for p, prob in cells if prob == 0.0]
        defective = [p for p, prob in cells if prob == 1.0]
        uncertain = [p for p, prob in cells if 0.0 < prob < 1.0]
        order = np.random.default_rng(seed).permutation(len(good))
        n_train = int(round(len(good) * TRAIN_FRACTION))
        train = sorted(good[i] for i in order[:n_train])
        test_good = sorted(good[i] for i in order[n_train:])
        tmp = dest / f".{category}.importing"
        shutil.rmtree(tmp, ignore_errors=True)
        for folder, names in (("train/good", train), ("test/good", test_good), ("test/defective", defective)):
            out = tmp / folder
            out.mkdir(parents=True)
            for name in names:
                image = src / name
                if not image.is_file():
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise DataError(image, "listed in labels.csv but not found")
                shutil.copyfile(image, out / Path(name).name)
        info = ElpvCategory(category, seed, len(train), len(test_good), len(defective), len(uncertain), uncertain)
        (tmp / "elpv_import.json").write_text(json.dumps(asdict(info), indent=2))
        os.replace(tmp, final)
        done.append(info)
    return done


def _earlier_import(folder: Path) -> ElpvCategory | None:
    try:
        return ElpvCategory(**json.loads((folder / "elpv_import.json").read_text()))
    except (OSError, ValueError, TypeError):
        return None
