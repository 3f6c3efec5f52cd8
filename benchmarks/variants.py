"""Bottle variants that stress the input frame: a tall grayscale JPEG crop and a wide RGB crop,
with small synthetic defects (thin lines, small spots) and exact masks.

    .venv/bin/python benchmarks/variants.py data/variants [--source ../shared/data/mvtec_ad/bottle] [--seed 0]

Writes `bottle_tall` (360x900 grayscale JPEG, like tall crack images), `bottle_wide` (900x360
RGB PNG) and `bottle_mixed` (grayscale JPEG crops of five shapes from 1:2.5 to 2.5:1 in one
product, like tile crops) in the MVTec layout under DEST. Only good Bottle images are used (train/good and
test/good), never a real defect: 150 train/good images train; the other good images are split
seeded into test/good and the bases of the synthetic defects. Derived from MVTec AD (CC BY-NC-SA
4.0): keep DEST out of the repository (data/ is ignored). A second run with the same seed writes
the same files.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
N_TRAIN = 150
CROPS = {  # name -> (crop boxes as fractions of the 900x900 image: left, top, right, bottom;
    # image i takes box i % n), grayscale
    "bottle_tall": ([(0.3, 0.0, 0.7, 1.0)], True),
    "bottle_wide": ([(0.0, 0.3, 1.0, 0.7)], False),
    # mixed shapes in one product, like tile crops: 1:1, 1:1.67, 1:2.5, 1.67:1, 2.5:1
    "bottle_mixed": (
        [(0.0, 0.0, 1.0, 1.0), (0.2, 0.0, 0.8, 1.0), (0.3, 0.0, 0.7, 1.0), (0.0, 0.2, 1.0, 0.8), (0.0, 0.3, 1.0, 0.7)],
        True,
    ),
}


def small_defect(img: Image.Image, kind: str, rng: np.random.Generator) -> tuple[Image.Image, np.ndarray]:
    """A thin line (2-3 px, 60-150 px long) or a small spot (radius 5-9 px), +-40..70 grey levels,
    in the middle 60 % of the crop; returns (image, bool mask)."""
    w, h = img.size
    mask = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(mask)
    cx, cy = rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h
    if kind == "thin_line":
        length, angle = rng.uniform(60, 150), rng.uniform(0, np.pi)
        dx, dy = np.cos(angle) * length / 2, np.sin(angle) * length / 2
        draw.line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=255, width=int(rng.integers(2, 4)))
    else:
        r = rng.uniform(5, 9)
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    m = np.asarray(mask) > 127
    arr = np.asarray(img).astype(np.int16)
    delta = int(rng.integers(40, 71)) * (1 if arr[m].mean() < 128 else -1)
    arr[m] = np.clip(arr[m] + delta, 0, 255)
    return Image.fromarray(arr.astype(np.uint8), img.mode), m


def write_variant(source: Path, dest: Path, name: str, seed: int) -> dict[str, int]:
    boxes, grey = CROPS[name]
    goods = sorted((source / "train" / "good").glob("*.png")) + sorted((source / "test" / "good").glob("*.png"))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(goods))
    train, rest = [goods[i] for i in order[:N_TRAIN]], [goods[i] for i in order[N_TRAIN:]]
    n_good = len(rest) // 3
    parts = {"good": rest[:n_good], "thin_line": rest[n_good : 2 * n_good], "small_spot": rest[2 * n_good :]}
    ext = ".jpg" if grey else ".png"
    root = dest / name
    counts: dict[str, int] = {}

    def load(p: Path, i: int) -> Image.Image:
        left, top, right, bottom = boxes[i % len(boxes)]
        with Image.open(p) as im:
            im = im.convert("L" if grey else "RGB")
            w, h = im.size
            return im.crop((int(left * w), int(top * h), int(right * w), int(bottom * h)))

    def save(im: Image.Image, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if grey:
            im.save(path, quality=92)
        else:
            im.save(path)

    for i, p in enumerate(train):
        save(load(p, i), root / "train" / "good" / f"{i:03d}{ext}")
    counts["train/good"] = len(train)
    for kind, files in parts.items():
        for i, p in enumerate(files):
            im = load(p, i)
            if kind != "good":
                im, m = small_defect(im, kind, rng)
                mpath = root / "ground_truth" / kind / f"{i:03d}_mask.png"
                mpath.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(m.astype(np.uint8) * 255, "L").save(mpath)
            save(im, root / "test" / kind / f"{i:03d}{ext}")
        counts[f"test/{kind}"] = len(files)
    return counts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dest", type=Path)
    ap.add_argument("--source", type=Path, default=REPO.parent / "shared" / "data" / "mvtec_ad" / "bottle")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if not (args.source / "train" / "good").is_dir():
        print(f"{args.source}: no train/good folder (MVTec AD Bottle expected)", file=sys.stderr)
        return 2
    for name in CROPS:
        counts = write_variant(args.source, args.dest, name, args.seed)
        print(f"{args.dest / name}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
