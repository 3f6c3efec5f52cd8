"""Tests for anomaflow.model.data.datasets: scanning, the image mode policy, masks, the cache, splitting and validation.

All images are tiny and generated in tmp_path; one test reads the real MVTec Bottle category
(headers only plus a couple of decodes) when the shared data is present.
"""

from __future__ import annotations

import builtins
import io
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from anomaflow.model.data import datasets as D
from anomaflow.model.data.datasets import (
    DataError,
    Dataset,
    ImageCache,
    Sample,
    load_image,
    load_images,
    load_mask,
    load_masks,
    open_image,
    open_mask,
    scan_folder,
    scan_mvtec,
    split_train,
    validate_dataset,
)

MVTEC_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mvtec_ad"


# ---------------------------------------------------------------------------------------------
# helpers


def save(path: Path, img: Image.Image, **kwargs: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kwargs)
    return path


def rgb(path: Path, size: tuple[int, int] = (8, 8), color: tuple[int, int, int] = (10, 20, 30)) -> Path:
    return save(path, Image.new("RGB", size, color))


def mask(path: Path, size: tuple[int, int] = (8, 8), value: int = 255, mode: str = "L") -> Path:
    img = Image.new(mode, size, 0)
    img.paste(value, (0, 0, size[0] // 2, size[1] // 2))
    return save(path, img)


def noise_png(path: Path, size: tuple[int, int] = (64, 64), seed: int = 0) -> Path:
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return save(path, Image.fromarray(arr))


def make_mvtec(root: Path, category: str = "widget") -> Path:
    """A small valid MVTec category: 3 train, test good 1 + crack 2 with masks."""
    cat = root / category
    for name in ("001.png", "000.png", "002.JPG"):
        rgb(cat / "train" / "good" / name)
    rgb(cat / "test" / "good" / "000.png")
    for name in ("001.png", "000.png"):
        rgb(cat / "test" / "crack" / name)
        mask(cat / "ground_truth" / "crack" / name.replace(".png", "_mask.png"))
    return cat


def header_mode(path: Path) -> str:
    with Image.open(path) as img:
        return img.mode


def rel(samples: list[Sample], base: Path) -> list[str]:
    return [s.path.relative_to(base).as_posix() for s in samples]


# ---------------------------------------------------------------------------------------------
# scanning


def test_scan_mvtec_layout_and_order(tmp_path: Path) -> None:
    cat = make_mvtec(tmp_path)
    # Things that must be ignored: hidden files/folders and non-image files.
    rgb(cat / "train" / "good" / ".hidden.png")
    (cat / "train" / "good" / "notes.txt").write_text("x")
    (cat / "test" / ".DS_Store").write_bytes(b"junk")
    rgb(cat / "test" / ".cache" / "000.png")
    rgb(cat / "test" / "good" / "._000.png")

    ds = scan_mvtec(tmp_path, "widget")
    assert ds.category == "widget" and ds.root == cat
    assert rel(ds.train, cat) == ["train/good/000.png", "train/good/001.png", "train/good/002.JPG"]
    assert rel(ds.test, cat) == ["test/crack/000.png", "test/crack/001.png", "test/good/000.png"]
    assert ds.defect_types == ["crack"]
    assert [s.label for s in ds.test] == [1, 1, 0]
    assert ds.test[0].mask_path == cat / "ground_truth" / "crack" / "000_mask.png"
    assert ds.test[2].mask_path is None
    assert all(s.split == "train" and s.defect == "good" and s.label == 0 for s in ds.train)
    # Deterministic: scanning twice gives equal results.
    assert scan_mvtec(tmp_path, "widget") == ds


def test_scan_mvtec_missing_folders_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        scan_mvtec(tmp_path, "nope")
    assert err.value.path == tmp_path / "nope"
    assert str(tmp_path / "nope") in str(err.value)

    (tmp_path / "cat" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="train/good") as err:
        scan_mvtec(tmp_path, "cat")
    assert err.value.path == tmp_path / "cat" / "train" / "good"


def test_scan_folder_recursive_and_empty(tmp_path: Path) -> None:
    folder = tmp_path / "mine"
    rgb(folder / "b.png")
    rgb(folder / "sub" / "a.jpeg")
    rgb(folder / ".git" / "x.png")
    (folder / "readme.md").parent.mkdir(parents=True, exist_ok=True)
    (folder / "readme.md").write_text("x")
    ds = scan_folder(folder)
    assert ds.category == "mine" and ds.test == [] and ds.layout == "folder"
    assert rel(ds.train, folder) == ["b.png", "sub/a.jpeg"]
    assert validate_dataset(ds).ok  # no test split is fine for a plain folder

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="no images found") as err:
        scan_folder(empty)
    assert err.value.path == empty
    with pytest.raises(DataError, match="folder not found"):
        scan_folder(tmp_path / "missing")


# ---------------------------------------------------------------------------------------------
# open_image mode policy


def test_rgb_and_grey_modes(tmp_path: Path) -> None:
    img = open_image(rgb(tmp_path / "c.png", (5, 3), (1, 2, 3)))
    assert img.mode == "RGB" and img.size == (5, 3) and img.getpixel((0, 0)) == (1, 2, 3)

    g = open_image(save(tmp_path / "g.png", Image.new("L", (4, 4), 77)))
    assert g.mode == "RGB" and g.getpixel((1, 1)) == (77, 77, 77)

    one = Image.new("1", (4, 4), 0)
    one.putpixel((0, 0), 1)
    arr = np.asarray(open_image(save(tmp_path / "one.png", one)))
    assert arr.dtype == np.uint8 and arr.shape == (4, 4, 3)
    assert arr[0, 0].tolist() == [255, 255, 255] and arr[1, 1].tolist() == [0, 0, 0]


def test_palette_without_and_with_transparency(tmp_path: Path) -> None:
    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 200, 100, 50] + [0] * (256 * 3 - 6))
    assert open_image(save(tmp_path / "p.png", pal)).getpixel((0, 0)) == (200, 100, 50)

    # Transparent index 0 is not used by any pixel: the image is fully opaque, so it is accepted.
    assert open_image(save(tmp_path / "p_unused.png", pal, transparency=0)).getpixel((2, 2)) == (200, 100, 50)

    pal.putpixel((0, 0), 0)  # now a pixel uses the transparent index
    path = save(tmp_path / "p_t.png", pal, transparency=0)
    with pytest.raises(DataError, match="has transparent pixels") as err:
        open_image(path)
    assert err.value.path == path


def test_alpha_modes(tmp_path: Path) -> None:
    opaque = open_image(save(tmp_path / "rgba.png", Image.new("RGBA", (4, 4), (9, 8, 7, 255))))
    assert opaque.mode == "RGB" and opaque.getpixel((3, 3)) == (9, 8, 7)

    see_through = Image.new("RGBA", (4, 4), (9, 8, 7, 255))
    see_through.putpixel((2, 1), (9, 8, 7, 254))
    with pytest.raises(DataError, match="has transparent pixels"):
        open_image(save(tmp_path / "rgba_t.png", see_through))

    la = open_image(save(tmp_path / "la.png", Image.new("LA", (4, 4), (120, 255))))
    assert la.getpixel((0, 0)) == (120, 120, 120)
    with pytest.raises(DataError, match="has transparent pixels"):
        open_image(save(tmp_path / "la_t.png", Image.new("LA", (4, 4), (120, 0))))


def test_16_bit_and_32_bit_grey(tmp_path: Path) -> None:
    values = np.array([[0, 255, 256, 0x1234], [0x80FF, 0xFF00, 0xFFFF, 1]], dtype=np.uint16)
    path = save(tmp_path / "g16.png", Image.fromarray(values))
    assert header_mode(path).startswith("I;16")  # the case under test really is 16-bit
    arr = np.asarray(open_image(path))
    assert arr.shape == (2, 4, 3)
    assert arr[..., 0].tolist() == [[0, 0, 1, 0x12], [0x80, 0xFF, 0xFF, 0]]
    assert (arr[..., 0] == arr[..., 2]).all()

    ints = np.array([[-5, 100, 300]], dtype=np.int32)
    path32 = save(tmp_path / "g32.tif", Image.fromarray(ints, mode="I"))
    assert header_mode(path32) == "I"
    assert np.asarray(open_image(path32))[0, :, 1].tolist() == [0, 100, 255]


def test_cmyk_jpeg_converted(tmp_path: Path) -> None:
    img = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red in CMYK
    path = save(tmp_path / "cmyk.jpg", img, quality=95)
    assert header_mode(path) == "CMYK"
    out = open_image(path)
    assert out.mode == "RGB"
    r, g, b = out.getpixel((4, 4))
    assert r > 230 and g < 25 and b < 25


def test_float_mode_rejected(tmp_path: Path) -> None:
    path = save(tmp_path / "f.tif", Image.new("F", (4, 4), 0.5))
    with pytest.raises(DataError, match="unsupported image mode F") as err:
        open_image(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("orientation", [6, 8])
def test_exif_orientation_applied(tmp_path: Path, orientation: int) -> None:
    img = Image.new("RGB", (20, 10), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 10, 10))  # left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = save(tmp_path / "rot.jpg", img, exif=exif.tobytes(), quality=95)
    out = np.asarray(open_image(path)).astype(int)
    assert out.shape == (20, 10, 3)  # width and height swapped
    top, bottom = out[2, 5], out[17, 5]
    # 6 = rotate 90 clockwise for display (left half ends on top); 8 = counter-clockwise.
    red_on_top = orientation == 6
    assert (top[0] > 200) == red_on_top and (bottom[0] > 200) != red_on_top
    # Mask sizes are checked against the displayed size, from the header only.
    mask(tmp_path / "m.png", (10, 20))
    sample = Sample(path, "test", "crack", tmp_path / "m.png")
    assert load_masks([sample], 4).shape == (1, 4, 4)


# ---------------------------------------------------------------------------------------------
# broken files


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(DataError, match="empty file") as err:
        open_image(path)
    assert err.value.path == path and err.value.reason == "empty file"
    assert str(err.value) == f"{path}: empty file"


def test_random_bytes_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "noise.png"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
    with pytest.raises(DataError, match="not a readable image") as err:
        load_image(path, 8)
    assert err.value.path == path


@pytest.mark.parametrize("load_truncated", [False, True])
def test_truncated_png(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, load_truncated: bool) -> None:
    full = noise_png(tmp_path / "full.png").read_bytes()
    path = tmp_path / "half.png"
    path.write_bytes(full[: len(full) // 2])
    # Even if some other library enabled PIL's "load truncated images", we must still refuse.
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", load_truncated)
    with pytest.raises(DataError, match="truncated or corrupt image data") as err:
        open_image(path)
    assert err.value.path == path


def test_missing_and_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DataError, match="file not found"):
        open_image(tmp_path / "nope.png")
    path = rgb(tmp_path / "locked.png")

    def denied(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", denied)  # tests often run as root, where chmod 000 is no help
    with pytest.raises(DataError, match=r"cannot read file \(Permission denied\)") as err:
        open_image(path)
    assert err.value.path == path


def test_pixel_limit_checked_before_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = rgb(tmp_path / "big.png", (20, 10))
    with pytest.raises(DataError, match="image too large: 20x10 exceeds 199 pixels"):
        open_image(path, max_pixels=199)
    assert open_image(path, max_pixels=200).size == (20, 10)

    # A truncated file reports "too large", proving the check happens before pixel data is read.
    full = noise_png(tmp_path / "n.png").read_bytes()
    cut = tmp_path / "cut.png"
    cut.write_bytes(full[: len(full) // 2])
    with pytest.raises(DataError, match="image too large: 64x64"):
        open_image(cut, max_pixels=100)

    # The default (anomaflow.model.data.samples.MAX_PIXELS) is read at call time, so it governs load_image and
    # the cache too.
    import anomaflow.model.data.samples

    monkeypatch.setattr(anomaflow.model.data.samples, "MAX_PIXELS", 100)
    with pytest.raises(DataError, match="exceeds 100 pixels"):
        load_image(path)
    with pytest.raises(DataError, match="exceeds 100 pixels"):
        ImageCache().image(path, 4)


def test_data_error_pickles() -> None:
    err = pickle.loads(pickle.dumps(DataError(Path("/x/a.png"), "empty file")))
    assert err.path == Path("/x/a.png") and err.reason == "empty file" and str(err) == "/x/a.png: empty file"
    assert isinstance(err, ValueError)


# ---------------------------------------------------------------------------------------------
# load_image / masks


def test_load_image_resizes(tmp_path: Path) -> None:
    path = noise_png(tmp_path / "a.png", (30, 20))
    native = load_image(path)
    assert native.shape == (20, 30, 3) and native.dtype == np.uint8
    small = load_image(path, 16)
    assert small.shape == (16, 16, 3) and small.dtype == np.uint8
    with Image.open(path) as src:
        squashed = np.asarray(src.convert("RGB").resize((16, 16), Image.Resampling.BILINEAR))
        kept = np.asarray(src.convert("RGB").resize((16, 11), Image.Resampling.BILINEAR))
    # The aspect ratio is kept: 30x20 fills 16x11 rows 2..12 of the square frame, edge rows repeat.
    np.testing.assert_array_equal(small[2:13], kept)
    np.testing.assert_array_equal(small[:2], np.repeat(kept[:1], 2, axis=0))
    np.testing.assert_array_equal(small[13:], np.repeat(kept[-1:], 3, axis=0))
    np.testing.assert_array_equal(load_image(path, 16, keep_aspect=False), squashed)
    assert load_image(path, (16, 24)).shape == (16, 24, 3)
    with pytest.raises(ValueError, match="size"):
        load_image(path, 0)


def test_mask_missing(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="mask missing") as err:
        open_mask(tmp_path / "000_mask.png")
    assert err.value.path == tmp_path / "000_mask.png"
    with pytest.raises(DataError, match="mask missing"):
        ImageCache().mask(tmp_path / "000_mask.png", 8)


def test_mask_size_mismatch(tmp_path: Path) -> None:
    path = mask(tmp_path / "m.png", (10, 6))
    with pytest.raises(DataError, match="mask size 10x6 does not match image size 12x6") as err:
        load_mask(path, 8, expected_size=(12, 6))
    assert err.value.path == path
    assert load_mask(path, 8, expected_size=(10, 6)).shape == (8, 8)


def test_soft_mask_binarised_and_resized_nearest(tmp_path: Path) -> None:
    soft = np.array([[0, 100, 127, 128], [200, 255, 0, 0], [0, 0, 0, 0], [0, 0, 0, 255]], dtype=np.uint8)
    path = save(tmp_path / "soft.png", Image.fromarray(soft, mode="L"))
    m = open_mask(path)
    assert m.dtype == bool
    assert m.tolist()[0] == [False, False, False, True] and m[1, 0] and m[1, 1]
    big = load_mask(path, 8)
    assert big.dtype == bool and big.shape == (8, 8)
    np.testing.assert_array_equal(big, np.kron(m, np.ones((2, 2), dtype=bool)))

    rgb_mask = rgb(tmp_path / "rgbmask.png")
    with pytest.raises(DataError, match="mask mode RGB, expected L"):
        open_mask(rgb_mask)


def test_load_images_and_masks(tmp_path: Path) -> None:
    ds = scan_mvtec(tmp_path, make_mvtec(tmp_path).name)
    calls: list[tuple[int, int]] = []
    imgs = load_images(ds.test, 6, progress=lambda done, total: calls.append((done, total)))
    assert imgs.shape == (3, 6, 6, 3) and imgs.dtype == np.uint8
    assert calls == [(1, 3), (2, 3), (3, 3)]
    masks = load_masks(ds.test, 8)
    assert masks.shape == (3, 8, 8) and masks.dtype == bool
    assert masks[0, :4, :4].all() and not masks[0, 4:, 4:].any()
    assert not masks[2].any()  # good sample
    cache = ImageCache()
    np.testing.assert_array_equal(load_masks(ds.test, 8, cache=cache), masks)
    np.testing.assert_array_equal(load_images(ds.test, 6, cache=cache), imgs)

    rgb(ds.test[0].path, (9, 9))  # image no longer matches its 8x8 mask
    with pytest.raises(DataError, match="mask size 8x8 does not match image size 9x9"):
        load_masks(ds.test, 8)
    with pytest.raises(DataError, match="does not match"):
        load_masks(ds.test, 8, cache=cache)  # checked on cache hits too


# ---------------------------------------------------------------------------------------------
# ImageCache


def test_cache_hits_and_changed_content(tmp_path: Path) -> None:
    path = noise_png(tmp_path / "a.png")
    cache = ImageCache()
    first = cache.image(path, 16)
    assert (cache.hits, cache.misses) == (0, 1)
    second = cache.image(path, 16)
    assert (cache.hits, cache.misses) == (1, 1)
    np.testing.assert_array_equal(first, second)
    assert not second.flags.writeable  # shared with the cache, must not be mutated in place

    cache.image(path, 8)  # another size is another entry
    assert (cache.hits, cache.misses) == (1, 2)

    noise_png(path, seed=1)  # same name, new content
    third = cache.image(path, 16)
    assert (cache.hits, cache.misses) == (1, 3)
    assert not np.array_equal(first, third)
    np.testing.assert_array_equal(third, load_image(path, 16))


def test_cache_on_disk_survives_new_instance(tmp_path: Path) -> None:
    img = noise_png(tmp_path / "a.png")
    m = mask(tmp_path / "a_mask.png", (64, 64))
    cache_dir = tmp_path / "cache"
    c1 = ImageCache(cache_dir)
    a = c1.image(img, 16)
    b = c1.mask(m, 16, expected_size=(64, 64))
    assert c1.misses == 2
    files = sorted(p.name for p in cache_dir.iterdir())
    assert len(files) == 2 and all(f.endswith(".npy") for f in files)  # no temp files left behind

    c2 = ImageCache(cache_dir)
    np.testing.assert_array_equal(c2.image(img, 16), a)
    np.testing.assert_array_equal(c2.mask(m, 16), b)
    assert (c2.hits, c2.misses) == (2, 0)
    assert c2.mask(m, 16).dtype == bool

    # A corrupt entry is a miss, not a crash, and gets rewritten.
    for f in cache_dir.iterdir():
        f.write_bytes(b"garbage")
    c3 = ImageCache(cache_dir)
    np.testing.assert_array_equal(c3.image(img, 16), a)
    assert (c3.hits, c3.misses) == (0, 1)
    c4 = ImageCache(cache_dir)
    np.testing.assert_array_equal(c4.image(img, 16), a)
    assert (c4.hits, c4.misses) == (1, 0)


def test_cache_reads_file_once_per_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = noise_png(tmp_path / "a.png")
    opened: list[str] = []
    real_open = builtins.open

    def counting_open(file, *args, **kwargs):  # type: ignore[no-untyped-def]
        if str(file) == str(path):
            opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting_open)
    monkeypatch.setattr(io, "open", counting_open)  # Path.read_bytes goes through io.open
    cache = ImageCache()
    cache.image(path, 8)
    assert (cache.misses, len(opened)) == (1, 1)  # miss: read once, decoded from the same bytes
    cache.image(path, 8)
    assert (cache.hits, len(opened)) == (1, 2)  # hit: one read to hash


def test_cache_memory_bound(tmp_path: Path) -> None:
    a, b = noise_png(tmp_path / "a.png", seed=0), noise_png(tmp_path / "b.png", seed=1)
    cache = ImageCache(max_memory_items=1)
    cache.image(a, 8)
    cache.image(b, 8)
    cache.image(a, 8)  # evicted by b
    assert (cache.hits, cache.misses) == (0, 3)
    cache.image(a, 8)
    assert cache.hits == 1


# ---------------------------------------------------------------------------------------------
# split_train


def _train(n: int) -> list[Sample]:
    return [Sample(Path(f"/d/train/good/{i:03d}.png"), "train", "good", None) for i in range(n)]


def test_split_train_deterministic_disjoint_complete() -> None:
    samples = _train(20)
    fit, hold = split_train(samples, 0.25, seed=3)
    assert len(hold) == 5 and len(fit) == 15
    assert not set(fit) & set(hold)
    assert set(fit) | set(hold) == set(samples)
    assert fit == sorted(fit, key=lambda s: str(s.path)) and hold == sorted(hold, key=lambda s: str(s.path))
    assert split_train(list(reversed(samples)), 0.25, seed=3) == (fit, hold)  # order-independent
    assert split_train(samples, 0.25, seed=4)[1] != hold
    assert hold != samples[-5:]  # actually shuffled, not a tail cut


def test_split_train_edges() -> None:
    fit, hold = split_train(_train(2), 0.01)
    assert len(fit) == 1 and len(hold) == 1
    fit, hold = split_train(_train(3), 0.99)
    assert len(fit) == 1 and len(hold) == 2
    with pytest.raises(ValueError, match="at least 2"):
        split_train(_train(1))
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="holdout_fraction"):
            split_train(_train(5), bad)
    with pytest.raises(ValueError, match="train/good"):
        split_train([*_train(3), Sample(Path("/d/test/crack/000.png"), "test", "crack", None)])


# ---------------------------------------------------------------------------------------------
# validate_dataset


def test_validate_clean_dataset(tmp_path: Path) -> None:
    ds = scan_mvtec(tmp_path, make_mvtec(tmp_path).name)
    calls: list[tuple[int, int]] = []
    for decode in (True, False):
        report = validate_dataset(ds, decode=decode, progress=lambda d, t: calls.append((d, t)))
        assert report.ok, report.summary()
        assert report.counts == {"train/good": 3, "test/crack": 2, "test/good": 1}
        assert report.image_sizes == {"8x8": 6} and report.image_modes == {"RGB": 6}
        assert report.n_masks == 2
        report.raise_for_problems()  # no-op
    assert calls[-1] == (6, 6)
    d = report.to_dict()
    assert json.loads(json.dumps(d)) == d and d["ok"] is True
    assert "OK" in report.summary() and "test/crack" in report.summary()


def test_validate_collects_all_problems(tmp_path: Path) -> None:
    cat = make_mvtec(tmp_path)
    truncated = cat / "train" / "good" / "000.png"
    full = noise_png(tmp_path / "n.png").read_bytes()
    truncated.write_bytes(full[: len(full) // 2])
    transparent = save(cat / "train" / "good" / "003.png", Image.new("RGBA", (8, 8), (0, 0, 0, 0)))
    missing_mask = rgb(cat / "test" / "crack" / "002.png")
    mask(cat / "ground_truth" / "crack" / "000_mask.png", (5, 5))  # wrong size
    rgb(cat / "ground_truth" / "crack" / "001_mask.png")  # wrong mode
    orphan = mask(cat / "ground_truth" / "crack" / "099_mask.png")
    orphan_defect = mask(cat / "ground_truth" / "scratch" / "000_mask.png")

    report = validate_dataset(scan_mvtec(tmp_path, "widget"), decode=True)
    assert not report.ok
    by_path = {p.path: p.reason for p in report.problems}
    assert "truncated or corrupt image data" in by_path[truncated]
    assert "has transparent pixels" in by_path[transparent]
    assert by_path[cat / "ground_truth" / "crack" / "002_mask.png"].startswith("mask missing")
    assert str(missing_mask) in by_path[cat / "ground_truth" / "crack" / "002_mask.png"]
    assert by_path[cat / "ground_truth" / "crack" / "000_mask.png"] == "mask size 5x5 does not match image size 8x8"
    assert by_path[cat / "ground_truth" / "crack" / "001_mask.png"] == "mask mode RGB, expected L"
    assert by_path[orphan].startswith("mask without image")
    assert by_path[orphan_defect].startswith("mask without image")
    assert len(report.problems) == 7
    assert report.counts["train/good"] == 4 and report.image_modes == {"RGB": 7, "RGBA": 1}

    with pytest.raises(DataError) as err:
        report.raise_for_problems()
    message = str(err.value)
    assert message.startswith("dataset widget has 7 problem(s)")
    for p in report.problems:
        assert f"{p.path}: {p.reason}" in message
    assert "7 problem(s)" in report.summary()
    assert json.loads(json.dumps(report.to_dict()))["problems"][0]["path"] == str(report.problems[0].path)

    # decode=False cannot see transparency but still catches the truncated PNG (CRC/verify).
    quick = validate_dataset(scan_mvtec(tmp_path, "widget"), decode=False)
    quick_paths = {p.path for p in quick.problems}
    assert truncated in quick_paths and transparent not in quick_paths
    assert len(quick.problems) == 6


def test_validate_empty_splits_and_summary_truncation(tmp_path: Path) -> None:
    cat = tmp_path / "widget"
    (cat / "train" / "good").mkdir(parents=True)
    (cat / "test" / "good").mkdir(parents=True)
    report = validate_dataset(scan_mvtec(tmp_path, "widget"))
    reasons = sorted(p.reason for p in report.problems)
    assert reasons[0] == "empty test split (test folder has no images)" and reasons[1] == "empty train split"

    # A train-only MVTec category (no test folder) is allowed.
    (cat / "test" / "good").rmdir()
    (cat / "test").rmdir()
    rgb(cat / "train" / "good" / "000.png")
    assert validate_dataset(scan_mvtec(tmp_path, "widget")).ok

    for i in range(25):
        (cat / "train" / "good" / f"bad{i:02d}.png").write_bytes(b"")
    report = validate_dataset(scan_mvtec(tmp_path, "widget"), decode=False)
    assert len(report.problems) == 25
    text = report.summary()
    assert "... and 5 more" in text and text.count("empty file") == 20


def test_validate_dataset_built_by_hand(tmp_path: Path) -> None:
    # A defect sample without a mask path is labelled at image level only: valid, and said so.
    img = rgb(tmp_path / "x.png")
    ds = Dataset(tmp_path, "hand", [Sample(img, "train", "good")], [Sample(img, "test", "crack", None)], "folder")
    report = validate_dataset(ds)
    assert report.ok and report.unmasked_types == ["crack"] and "image-level labels only" in report.summary()


def test_defect_types_without_ground_truth_are_image_level_only(tmp_path: Path) -> None:
    cat = tmp_path / "cells"
    rgb(cat / "train" / "good" / "000.png")
    rgb(cat / "test" / "good" / "000.png")
    rgb(cat / "test" / "crack" / "000.png")
    rgb(cat / "test" / "crack" / "001.png")
    rgb(cat / "test" / "dark" / "000.png")  # no ground_truth/dark: image-level label only
    mask(cat / "ground_truth" / "crack" / "000_mask.png")
    mask(cat / "ground_truth" / "crack" / "001_mask.png", size=(9, 8))  # exists but does not match
    ds = scan_mvtec(tmp_path, "cells")
    assert ds.unmasked_types == ["dark"]
    assert list(D.pixel_truth(ds.test)) == [True, True, False, True]  # crack, crack, dark, good (sorted folders)
    report = validate_dataset(ds)
    assert [p.path.name for p in report.problems] == ["001_mask.png"]  # the gate still names a mask that does not match
    assert report.unmasked_types == ["dark"] and report.n_masks == 2
    mask(cat / "ground_truth" / "crack" / "001_mask.png")
    masks = load_masks(ds.test, 8)
    assert masks[0].any() and not masks[2].any()  # the unmasked defect image loads as "no pixel truth", not a crash
    (cat / "ground_truth" / "crack" / "000_mask.png").unlink()  # a masked type must have every mask
    assert [p.reason.split(" (")[0] for p in validate_dataset(ds).problems] == ["mask missing"]


def test_pixel_metrics_cover_masked_types_only_and_are_absent_without_masks() -> None:
    from anomaflow.model.evaluation.evaluate import evaluate

    rng = np.random.default_rng(0)
    labels = np.array([0, 0, 1, 1, 1, 1])
    defects = ["good", "good", "crack", "crack", "dark", "dark"]
    masks = np.zeros((6, 8, 8), bool)
    masks[2:4, 2:5, 2:5] = True
    maps = rng.random((6, 8, 8)).astype(np.float32)
    maps[masks] += 1.0
    maps[4:] += 5.0  # would wreck pixel AUROC if "dark" (no masks) counted as all-normal pixels
    scores = {"max": maps.reshape(6, -1).max(axis=1)}
    common = dict(
        labels=labels, scores=scores, score_method="max", threshold=0.5, maps=maps, defects=defects, pixel_threshold=0.9
    )
    partial = evaluate(masks=masks, pixel_truth=np.array([1, 1, 1, 1, 0, 0], bool), **common)
    assert partial.metrics["pixel_auroc"] == pytest.approx(1.0) and "pixel_iou_dark" not in partial.metrics
    assert "dark have image-level labels only" in partial.pixel_note and partial.metrics[
        "image_auroc"
    ] == pytest.approx(1.0)
    naive = evaluate(masks=masks, **common)  # had the unmasked images counted as all-normal pixels
    assert naive.metrics["pixel_auroc"] < 0.9
    none = evaluate(masks=np.zeros_like(masks), pixel_truth=np.array([1, 1, 0, 0, 0, 0], bool), **common)
    assert not any(k.startswith("pixel_") for k in none.metrics) and none.pixel_note.startswith(
        "absent: defect types crack, dark"
    )
    assert "image_auroc" in none.metrics and "recall" in none.metrics


# ---------------------------------------------------------------------------------------------
# real data


@pytest.mark.realdata
def test_real_mvtec_bottle() -> None:
    if not (MVTEC_ROOT / "bottle").is_dir():
        pytest.skip(f"MVTec AD bottle not found at {MVTEC_ROOT / 'bottle'} (shared data not present)")
    ds = scan_mvtec(MVTEC_ROOT, "bottle")
    assert len(ds.train) == 209 and len(ds.test) == 83
    assert ds.defect_types == ["broken_large", "broken_small", "contamination"]
    defects = [s for s in ds.test if s.label == 1]
    assert len(defects) == 63 and all(s.mask_path is not None and s.mask_path.is_file() for s in defects)

    report = validate_dataset(ds, decode=False)  # headers + verify only: fast on 2 cores
    assert report.ok, report.summary()
    assert report.n_masks == 63
    assert report.counts == {
        "train/good": 209,
        "test/broken_large": 20,
        "test/broken_small": 22,
        "test/contamination": 21,
        "test/good": 20,
    }
    assert report.image_sizes == {"900x900": 292} and report.image_modes == {"RGB": 292}

    # Decode only a couple of files.
    sample = defects[0]
    img = load_image(sample.path, 64)
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8 and img.std() > 0
    m = load_mask(sample.mask_path, 64, expected_size=(900, 900))
    assert m.shape == (64, 64) and m.any() and not m.all()


def test_plain_folder_skips_test_ground_truth_and_masks_and_says_so(tmp_path: Path) -> None:
    folder = tmp_path / "capture"
    rgb(folder / "a.png")
    rgb(folder / "day2" / "b.png")
    rgb(folder / "test" / "broken" / "000.png")
    rgb(folder / "day2" / "Ground_Truth" / "broken" / "000_mask.png")
    mask(folder / "c_mask.png")
    ds = scan_folder(folder)
    assert rel(ds.train, folder) == ["a.png", "day2/b.png"]
    skipped = sorted(str(e.path.relative_to(folder)) for e in ds.skipped)
    assert skipped == ["c_mask.png", "day2/Ground_Truth", "test"]
    report = validate_dataset(ds)
    assert report.ok
    assert "skipped 3" in report.summary() and "c_mask.png" in report.summary()
    assert {d["path"].rsplit("/", 1)[-1] for d in report.to_dict()["skipped"]} == {"c_mask.png", "Ground_Truth", "test"}


def test_plain_folder_refuses_an_mvtec_category_folder(tmp_path: Path) -> None:
    rgb(tmp_path / "bottle" / "train" / "good" / "000.png")
    rgb(tmp_path / "bottle" / "test" / "good" / "000.png")
    with pytest.raises(DataError, match="category folder .* pass its parent"):
        scan_folder(tmp_path / "bottle")


def test_mistyped_category_in_an_mvtec_root_is_an_error_never_a_plain_folder(tmp_path: Path) -> None:
    from anomaflow.model.pipeline import load_dataset

    for cat in ("bottle", "cable"):
        rgb(tmp_path / cat / "train" / "good" / "000.png")
        rgb(tmp_path / cat / "test" / "broken" / "000.png")
        mask(tmp_path / cat / "ground_truth" / "broken" / "000_mask.png")
    assert D.mvtec_categories(tmp_path) == ["bottle", "cable"]
    with pytest.raises(DataError, match=r"categories bottle, cable; did you mean 'bottle'\?") as err:
        load_dataset(tmp_path, "Bottle")
    assert err.value.path == tmp_path / "Bottle"
    with pytest.raises(DataError, match="categories bottle, cable$"):
        load_dataset(tmp_path, "screw")
    assert load_dataset(tmp_path, "bottle").layout == "mvtec"


def test_gate_partition_is_stratified_fixed_and_independent_of_order_and_run_seed(tmp_path: Path) -> None:
    samples = [
        Sample(tmp_path / d / f"{i:03d}.png", "test", d, None)
        for d, n in (("good", 20), ("broken", 22), ("scratch", 1))
        for i in range(n)
    ]
    gate = D.partition_test(samples, 0.3)
    by_type = {d: int(sum(g for s, g in zip(samples, gate) if s.defect == d)) for d in ("good", "broken", "scratch")}
    assert by_type == {"good": 6, "broken": 7, "scratch": 0}  # round(n * 0.3); a lone image stays reported
    shuffled = samples[::-1]
    assert {s.path for s, g in zip(shuffled, D.partition_test(shuffled, 0.3)) if g} == {
        s.path for s, g in zip(samples, gate) if g
    }
    grown = samples + [Sample(tmp_path / "crack" / f"{i:03d}.png", "test", "crack", None) for i in range(10)]
    assert list(D.partition_test(grown, 0.3)[: len(samples)]) == list(gate)  # a new defect type moves nothing
    assert not D.partition_test(samples, 0.0).any()
    with pytest.raises(ValueError, match="gate_fraction"):
        D.partition_test(samples, 1.0)


def test_reported_metrics_and_gate_metrics_come_from_disjoint_parts(tmp_path: Path) -> None:
    from anomaflow.model.config import TrainConfig
    from anomaflow.model.data.demo import make_demo_dataset
    from anomaflow.model.pipeline import Arrays, evaluation_split, load_arrays, load_dataset

    make_demo_dataset(tmp_path, "demo", seed=0, image_size=32, n_train=6, n_test_good=10, n_test_per_defect=10)
    ds = load_dataset(tmp_path, "demo")
    arrays = load_arrays(ds, TrainConfig(data_root=str(tmp_path), category="demo"), log=lambda _: None)
    report, r_idx = arrays.test_part(gate=False)
    gate, g_idx = arrays.test_part(gate=True)
    assert set(r_idx).isdisjoint(g_idx) and len(r_idx) + len(g_idx) == len(ds.test) and len(g_idx) == 12
    assert isinstance(report, Arrays) and report.test.shape[0] == len(r_idx) and gate.test_masks.shape[0] == len(g_idx)
    split = evaluation_split(arrays, 0.3)
    assert len(split["gate"]) == 12 and set(split["gate"]).isdisjoint(split["report"])


def test_large_jpeg_is_decoded_at_reduced_scale_with_the_same_result_size(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:1200, 0:1600]
    grey = (128 + 60 * np.sin(xx / 40) * np.cos(yy / 55) + rng.normal(0, 4, xx.shape)).clip(0, 255).astype(np.uint8)
    path = save(tmp_path / "big.jpg", Image.fromarray(grey, "L"), quality=92)
    small = load_image(path, (96, 128))  # the frame of a 4:3 dataset: the image fills it
    with Image.open(path) as src:
        full = np.asarray(src.convert("RGB").resize((128, 96), Image.Resampling.BILINEAR)).astype(int)
    assert small.shape == (96, 128, 3) and np.abs(small.astype(int) - full).mean() < 1.5
    drafted = open_image(path, at_least=128)
    assert drafted.size == (200, 150)  # 1/8 scale: the smallest DCT scale with both sides >= 128
    assert open_image(path).size == (1600, 1200)
    truncated = save(tmp_path / "cut.jpg", Image.fromarray(grey, "L"), quality=92)
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    with pytest.raises(DataError, match="truncated"):
        load_image(truncated, 128)
