"""Hostile input: the dataset reader, the training gate and batch inspection.

Complements tests/test_data.py (one test per image mode, zero-byte, noise and truncated PNG,
masks, orphan masks) and tests/test_inspection.py (zero-byte, noise, truncated PNG and float
TIFF get ERROR rows, links leaving the inbox are skipped, a space in a name). Here: the cases
those miss (truncated JPEG, decompression-bomb headers, non-image formats behind an image
extension, 1x1, hostile and non-UTF-8 names, links, unreadable files, a folder that changes
while it is read), property tests over arbitrary and mutated bytes, and every case end to end
through the training gate and the inspection loop. Every case ends in a named error (file and
reason), a documented conversion, or one ERROR row.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

from anomaflow.model.data import datasets as D
from anomaflow.model.data.datasets import DataError, load_images, open_image, scan_folder, scan_mvtec, validate_dataset
from anomaflow.model.detectors.autoencoder import AutoencoderDetector
from anomaflow.model.operations import inspection
from tests.helpers import fit_tiny_autoencoder, inspect_inbox, tiny_config

SIZE = 64
PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# Names a shell would expand, split or run; quotes and commas a CSV writer must escape; unicode.
HOSTILE_NAMES = [
    "with space.png",
    "ünïcødé ✓ 部品.png",
    "$(touch PWNED).png",
    "a;b|c&d`id`.png",
    "quote'dq\"comma,.png",
    "-rf --help.png",
    "star*?[x].png",
    "new\nline.png",
    "tab\there.png",
]


# ---------------------------------------------------------------------------------------------
# builders: every file is small and made here


def encode(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def part(seed: int = 0, size: int = SIZE) -> Image.Image:
    """A demo part (what the detector was trained on), so converted files get a real verdict."""
    from anomaflow.model.data.demo import render_part

    return Image.fromarray(render_part(np.random.default_rng(seed), size))


def png_chunk(tag: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", zlib.crc32(tag + payload) & 0xFFFFFFFF)


def bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header claiming width x height RGB with almost no data: 60 bytes on disk."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + png_chunk(b"IEND", b"")
    )


def bomb_jpeg(width: int, height: int) -> bytes:
    """An 8x8 JPEG whose frame header (SOF0) is patched to claim width x height."""
    raw = bytearray(encode(Image.new("RGB", (8, 8), (90, 90, 90)), "JPEG"))
    sof = raw.find(b"\xff\xc0")
    assert sof > 0
    struct.pack_into(">HH", raw, sof + 5, height, width)
    return bytes(raw)


def exif_rotated_jpeg() -> bytes:
    img = part(3).resize((SIZE, SIZE // 2))  # landscape on disk, portrait when displayed
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(img, "JPEG", exif=exif.tobytes(), quality=95)


def sixteen_bit_png() -> bytes:
    grey = np.asarray(part(4).convert("L"), dtype=np.uint16) * 257
    return encode(Image.fromarray(grey), "PNG")


def palette_png() -> bytes:
    return encode(part(5).convert("P", palette=Image.Palette.ADAPTIVE), "PNG")


def cmyk_jpeg() -> bytes:
    return encode(part(6).convert("CMYK"), "JPEG", quality=95)


def eps_bytes() -> bytes:
    """PostScript: PIL would identify it as EPS and hand it to Ghostscript on load."""
    return b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nnewpath 0 0 moveto showpage\n%%EOF\n"


def truncated_jpeg() -> bytes:
    full = encode(Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)), "JPEG", quality=95)
    return full[: len(full) * 6 // 10]


# Files that must convert (name -> bytes): each mode the reader documents, plus a 1x1 image.
def convertible_files() -> dict[str, bytes]:
    rgba = part(7).convert("RGBA")
    return {
        "grey.png": encode(part(8).convert("L"), "PNG"),
        "palette.png": palette_png(),
        "sixteen_bit.png": sixteen_bit_png(),
        "rgba_opaque.png": encode(rgba, "PNG"),
        "cmyk.jpg": cmyk_jpeg(),
        "exif_rotated.jpg": exif_rotated_jpeg(),
        "one_pixel.png": encode(Image.new("RGB", (1, 1), (120, 130, 140)), "PNG"),
        "bitmap.bmp": encode(part(9), "BMP"),
        "tiff.tif": encode(part(10), "TIFF"),
    }


# Files that must be refused (name -> (bytes, reason fragment)).
def broken_files() -> dict[str, tuple[bytes, str]]:
    transparent = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    return {
        "zero.png": (b"", "empty file"),
        "truncated.jpg": (truncated_jpeg(), "truncated or corrupt image data"),
        "random.png": (np.random.default_rng(1).integers(0, 256, 700, np.uint8).tobytes(), "not a readable image"),
        "bomb_20000.png": (bomb_png(20000, 20000), "image too large"),
        "bomb_20000.jpg": (bomb_jpeg(20000, 20000), "image too large"),
        "bomb_8000.png": (bomb_png(8000, 8000), "image too large: 8000x8000 exceeds 50000000 pixels"),
        "postscript.png": (eps_bytes(), "not a readable image (not PNG, JPEG, BMP or TIFF data)"),
        "gif_named.png": (encode(Image.new("P", (4, 4)), "GIF"), "not a readable image"),
        "transparent.png": (encode(transparent, "PNG"), "has transparent pixels"),
    }


def write_all(folder: Path, files: dict[str, bytes]) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, payload in files.items():
        (folder / name).write_bytes(payload)
        out[name] = folder / name
    return out


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------------------------
# reader: properties


@PROPERTY
@given(payload=st.binary(max_size=4096), ext=st.sampled_from(sorted(D.IMAGE_EXTENSIONS)))
def test_arbitrary_bytes_decode_or_raise_data_error(tmp_path: Path, payload: bytes, ext: str) -> None:
    """Any bytes with an image extension: an RGB image or a DataError naming the file, nothing else."""
    path = tmp_path / f"x{ext}"
    for load in (lambda: open_image(path, data=payload), lambda: D.open_mask(path, data=payload)):
        try:
            out = load()
        except DataError as exc:
            assert exc.path == path and exc.reason
            continue
        assert isinstance(out, (Image.Image, np.ndarray))


_SEEDS = {
    "PNG": encode(part(11, 16), "PNG"),
    "JPEG": encode(part(12, 16), "JPEG", quality=90),
    "BMP": encode(part(13, 16), "BMP"),
    "TIFF": encode(part(14, 16), "TIFF"),
    "PNG16": encode(Image.fromarray(np.arange(256, dtype=np.uint16).reshape(16, 16) * 200), "PNG"),
}


@PROPERTY
@given(
    fmt=st.sampled_from(sorted(_SEEDS)),
    cut=st.one_of(st.none(), st.integers(min_value=0, max_value=2000)),
    flips=st.lists(
        st.tuples(st.integers(min_value=0, max_value=2000), st.integers(min_value=1, max_value=255)), max_size=6
    ),
)
def test_mutated_images_decode_or_raise_data_error(fmt: str, cut: int | None, flips: list[tuple[int, int]]) -> None:
    """Valid files with bytes flipped and/or cut short (what disks and networks do): the reader
    returns an RGB image of positive size or a DataError; it never crashes or hangs."""
    raw = bytearray(_SEEDS[fmt])
    for pos, xor in flips:
        raw[pos % len(raw)] ^= xor
    payload = bytes(raw if cut is None else raw[:cut])
    try:
        img = open_image(Path("mutated.png"), data=payload)
    except DataError as exc:
        assert exc.path == Path("mutated.png") and exc.reason
        return
    assert img.mode == "RGB" and img.width > 0 and img.height > 0
    arr = load_image_from(payload)
    assert arr.shape == (8, 8, 3) and arr.dtype == np.uint8


def load_image_from(payload: bytes) -> np.ndarray:
    return D.load_image(Path("mutated.png"), 8, data=payload)


# ---------------------------------------------------------------------------------------------
# reader: cases test_data.py does not cover


@pytest.mark.parametrize("load_truncated", [False, True])
def test_truncated_jpeg_named_even_if_pil_would_pad(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, load_truncated: bool
) -> None:
    # Some library may flip PIL's global to grey-fill truncated images: the reader must still refuse.
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", load_truncated)
    path = tmp_path / "cut.jpg"
    path.write_bytes(truncated_jpeg())
    with pytest.raises(DataError, match="truncated or corrupt image data") as err:
        open_image(path)
    assert err.value.path == path


@pytest.mark.parametrize("name", ["bomb_20000.png", "bomb_20000.jpg", "bomb_8000.png"])
@pytest.mark.parametrize("pil_limit_off", [False, True])
def test_decompression_bomb_rejected_from_the_header(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, pil_limit_off: bool
) -> None:
    """A 60-byte file claiming 20000x20000 (1.2 GB decoded) is refused before any pixel buffer
    exists, also when another library switched PIL's own guard off (MAX_IMAGE_PIXELS = None)."""
    if pil_limit_off:
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    payload, reason = broken_files()[name]
    assert len(payload) < 1000
    path = tmp_path / name
    path.write_bytes(payload)
    before = peak_rss_mb()
    for check in (lambda: open_image(path), lambda: D.load_image(path, SIZE), lambda: D.ImageCache().image(path, SIZE)):
        with pytest.raises(DataError, match="image too large") as err:
            check()
        assert err.value.path == path
    if pil_limit_off or "8000" in name:  # our own guard answered, not PIL's
        assert f"exceeds {D.MAX_PIXELS} pixels" in str(err.value)
    assert peak_rss_mb() - before < 150, "the claimed image was allocated"
    for decode in (True, False):
        report = validate_dataset(scan_folder(tmp_path), decode=decode)
        assert [(p.path, "image too large" in p.reason) for p in report.problems] == [(path, True)]


def test_non_image_formats_behind_an_image_extension_are_not_decoded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EPS (PIL runs Ghostscript on it) and GIF named .png: refused without reaching their decoder."""
    from PIL import EpsImagePlugin

    called: list[object] = []
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *a, **k: called.append(a) or Image.new("RGB", (8, 8)))
    monkeypatch.setattr(EpsImagePlugin, "has_ghostscript", lambda: True)
    with Image.open(io.BytesIO(eps_bytes())) as probe:
        assert probe.format == "EPS"  # the case under test: PIL alone would take it
    for name in ("postscript.png", "gif_named.png"):
        payload, reason = broken_files()[name]
        path = tmp_path / name
        path.write_bytes(payload)
        with pytest.raises(DataError) as err:
            open_image(path)
        assert err.value.path == path and err.value.reason.startswith(reason)
    assert called == []


def test_one_pixel_image_is_upscaled(tmp_path: Path) -> None:
    path = tmp_path / "one.png"
    path.write_bytes(convertible_files()["one_pixel.png"])
    arr = D.load_image(path, SIZE)
    assert arr.shape == (SIZE, SIZE, 3) and (arr == np.array([120, 130, 140], np.uint8)).all()


def test_gate_accepts_every_documented_conversion(tmp_path: Path) -> None:
    """The mode zoo plus 1x1, a soft-edged mask and hostile names passes validation and loads as
    (N, s, s, 3) uint8; the modes are counted so an odd capture is visible in the report."""
    cat = tmp_path / "zoo"
    write_all(cat / "train" / "good", convertible_files())
    write_all(cat / "train" / "good", {name: encode(part(20 + i), "PNG") for i, name in enumerate(HOSTILE_NAMES)})
    image = cat / "test" / "crack" / "soft edge $(x).png"
    write_all(image.parent, {image.name: encode(part(40), "PNG")})
    soft = np.zeros((SIZE, SIZE), np.uint8)
    soft[20:40, 20:40] = 255
    soft[19, 20:40] = soft[40, 20:40] = 100  # anti-aliased rim: not foreground
    soft[20:40, 19] = 200  # brighter rim: foreground
    mask_path = cat / "ground_truth" / "crack" / "soft edge $(x)_mask.png"
    write_all(mask_path.parent, {mask_path.name: encode(Image.fromarray(soft, "L"), "PNG")})

    ds = scan_mvtec(tmp_path, "zoo")
    report = validate_dataset(ds)
    assert report.ok, report.summary()
    assert {"L", "P", "RGBA", "CMYK"} <= set(report.image_modes) and any(
        m.startswith("I;16") for m in report.image_modes
    )
    assert "1x1" in report.image_sizes and f"{SIZE // 2}x{SIZE}" in report.image_sizes  # EXIF: displayed size
    images = load_images(ds.train, 32)
    assert images.shape == (len(ds.train), 32, 32, 3) and images.dtype == np.uint8
    masks = D.load_masks(ds.test, SIZE)
    assert set(np.unique(masks)) == {False, True} and masks[0, 20:40, 19].all() and not masks[0, 19].any()
    assert not (tmp_path / "PWNED").exists() and not Path("PWNED").exists()
    assert json.loads(json.dumps(report.to_dict()))["counts"]["train/good"] == len(ds.train)


def test_hostile_and_non_utf8_names(tmp_path: Path) -> None:
    """Valid UTF-8 names of any kind are read; a name that is not UTF-8 is refused by the gate
    (it would break plots, MLflow tables and JSON after training), printed with \\x escapes."""
    from anomaflow.tasks.provenance import data_fingerprint

    folder = tmp_path / "mine"
    files = write_all(folder, {name: encode(part(i), "PNG") for i, name in enumerate(HOSTILE_NAMES)})
    bad = os.fsencode(folder) + b"/bad\xff\xfe.png"
    with open(bad, "wb") as fh:
        fh.write(encode(part(99), "PNG"))
    ds = scan_folder(folder)
    assert sorted(s.path.name for s in ds.train if s.path.name in files) == sorted(files)
    report = validate_dataset(ds)
    assert [p.reason for p in report.problems] == ["file name is not valid UTF-8 (rename the file)"]
    assert str(report.problems[0]).endswith("bad\\xff\\xfe.png: file name is not valid UTF-8 (rename the file)")
    json.dumps(report.to_dict(), ensure_ascii=False).encode("utf-8")  # printable everywhere
    report.summary().encode("utf-8")
    assert len(data_fingerprint(ds.train, folder)) == 64  # the tag is computed, not a crash
    assert load_images(ds.train, 16).shape == (len(HOSTILE_NAMES) + 1, 16, 16, 3)  # readable as such


def test_links_in_a_dataset(tmp_path: Path) -> None:
    """A link leaving the dataset is followed (documented: datasets built from links, e.g. DVC);
    a broken link and a link loop are listed and named by validation, never silently dropped."""
    outside = tmp_path / "store" / "real.png"
    write_all(outside.parent, {outside.name: encode(part(1), "PNG")})
    folder = tmp_path / "ds"
    write_all(folder, {"own.png": encode(part(2), "PNG")})
    (folder / "leaves.png").symlink_to(outside)
    (folder / "dangling.png").symlink_to(tmp_path / "gone.png")
    (folder / "loop.png").symlink_to(folder / "loop.png")
    ds = scan_folder(folder)
    assert sorted(s.path.name for s in ds.train) == ["dangling.png", "leaves.png", "loop.png", "own.png"]
    by_name = {p.path.name: p.reason for p in validate_dataset(ds).problems}
    assert by_name.pop("dangling.png") == "broken symbolic link (its target does not exist)"
    assert by_name.pop("loop.png").startswith("cannot read file (Too many levels of symbolic links")
    assert by_name == {}
    assert D.load_image(folder / "leaves.png", 8).shape == (8, 8, 3)


def test_folder_changes_between_scan_and_read(tmp_path: Path) -> None:
    """The dataset is the scan's snapshot: files added later are not in it; a file deleted or
    replaced by garbage after the scan is a named problem at validation, and one removed after
    validation stops loading with its name (no silently shorter training set)."""
    folder = tmp_path / "ds"
    paths = write_all(folder, {f"{i}.png": encode(part(i), "PNG") for i in range(5)})
    ds = scan_folder(folder)
    paths["1.png"].unlink()
    paths["2.png"].write_bytes(b"garbage")
    write_all(folder, {"late.png": encode(part(9), "PNG")})
    by_path = {p.path: p.reason for p in validate_dataset(ds).problems}
    assert by_path == {paths["1.png"]: "file not found", paths["2.png"]: by_path[paths["2.png"]]}
    assert by_path[paths["2.png"]].startswith("not a readable image")
    assert folder / "late.png" not in {s.path for s in ds.train}

    ds = scan_folder(folder)
    assert validate_dataset(ds).ok is False  # 2.png is still garbage
    paths["2.png"].unlink()
    ds = scan_folder(folder)
    assert validate_dataset(ds).ok
    paths["3.png"].unlink()  # between the gate and loading
    with pytest.raises(DataError, match="file not found") as err:
        load_images(ds.train, 16)
    assert err.value.path == paths["3.png"]


# ---------------------------------------------------------------------------------------------
# unreadable files: root reads chmod 000 files (CAP_DAC_OVERRIDE), so under root the check
# runs in a child without the two capabilities that bypass file permissions.

DROP_DAC = ["setpriv", "--inh-caps=-dac_override,-dac_read_search", "--bounding-set=-dac_override,-dac_read_search"]


def run_unprivileged(code: str, cwd: Path) -> dict:
    """Run `code` in a fresh interpreter for which mode-000 files are unreadable; it prints JSON."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: cannot make a mode-000 file unreadable")
        prefix = DROP_DAC
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [*prefix, sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if proc.returncode != 0 and "setpriv" in proc.stderr:
        pytest.skip(f"setpriv could not drop capabilities here: {proc.stderr.strip()[-300:]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_unreadable_file_is_named(tmp_path: Path) -> None:
    folder = tmp_path / "ds"
    paths = write_all(folder, {"ok.png": encode(part(1), "PNG"), "locked.png": encode(part(2), "PNG")})
    paths["locked.png"].chmod(0o000)
    result = run_unprivileged(
        f"""
        import json
        from pathlib import Path
        from anomaflow.model.data.datasets import DataError, open_image, scan_folder, validate_dataset
        folder = Path({str(folder)!r})
        ok = open_image(folder / "ok.png").size  # proves the folder itself is readable
        try:
            open_image(folder / "locked.png")
            err = None
        except DataError as exc:
            err = [str(exc.path), exc.reason]
        report = validate_dataset(scan_folder(folder))
        print(json.dumps({{"ok": ok, "err": err, "problems": [[str(p.path), p.reason] for p in report.problems]}}))
    """,
        tmp_path,
    )
    locked = str(paths["locked.png"])
    assert result["ok"] == [SIZE, SIZE]
    assert result["err"] == [locked, "cannot read file (Permission denied)"]
    assert result["problems"] == [[locked, "cannot read file (Permission denied)"]]


def test_unreadable_file_gets_an_error_row(tmp_path: Path, detector: AutoencoderDetector) -> None:
    """The real inspection loop as an unprivileged user: the locked file gets one ERROR row, the
    others their verdicts; a rerun while it is still locked adds no second row."""
    model_dir = detector.save(tmp_path / "model")
    inbox = tmp_path / "inbox"
    paths = write_all(inbox, {f"{i}.png": encode(part(i), "PNG") for i in range(3)})
    out = tmp_path / "out"
    paths["1.png"].chmod(0o000)
    code = f"""
        import json
        from pathlib import Path
        from anomaflow.model.operations import inspection
        from anomaflow.model.detectors.registry import load_detector
        det = load_detector({str(model_dir)!r})
        inbox, out = Path({str(inbox)!r}), Path({str(out)!r})
        runs = []
        for _ in range(2):  # the second run: the file is still locked
            with inspection.Ledger(out) as ledger:
                s = inspection.inspect_files(det, inspection.list_inbox(inbox), inbox, ledger, model_name="m",
                                             model_version="1", threshold=det.threshold, write_figures=False)
            runs.append([s.inspected, s.error, s.skipped])
        print(json.dumps({{"runs": runs}}))
    """
    result = run_unprivileged(code, tmp_path)
    assert result == {"runs": [[3, 1, 0], [0, 0, 3]]}
    rows = {r["path"]: r for r in inspection.read_results(out / "results.csv")}
    assert len(rows) == 3
    assert rows["1.png"]["decision"] == "ERROR" and rows["1.png"]["error"] == "cannot read file (Permission denied)"
    assert {rows["0.png"]["decision"], rows["2.png"]["decision"]} <= {"NORMAL", "DEFECT"}


# ---------------------------------------------------------------------------------------------
# the training gate, end to end


@pytest.mark.usefixtures("prefect_api")
def test_training_gate_refuses_every_broken_case_before_compute(
    demo_root: Path, mlflow_sqlite: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One dataset with every broken case: the flow fails in validate_dataset with each file and
    its reason; loading and training never start; nothing reaches MLflow."""
    from mlflow.tracking import MlflowClient

    import anomaflow.flows.training
    from anomaflow.tasks.validation import DatasetInvalid

    root = tmp_path / "broken"
    shutil.copytree(demo_root, root)
    cat = root / "demo"
    expected: dict[Path, str] = {}
    for name, (payload, reason) in broken_files().items():
        (cat / "train" / "good" / name).write_bytes(payload)
        expected[cat / "train" / "good" / name] = reason
    (cat / "train" / "good" / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    expected[cat / "train" / "good" / "dangling.png"] = "broken symbolic link"
    gt = cat / "ground_truth"
    Image.new("L", (SIZE // 2, SIZE // 2), 255).save(gt / "blob" / "000_mask.png")  # wrong size
    expected[gt / "blob" / "000_mask.png"] = (
        f"mask size {SIZE // 2}x{SIZE // 2} does not match image size {SIZE}x{SIZE}"
    )
    Image.new("L", (SIZE, SIZE), 255).save(gt / "scratch" / "099_mask.png")  # mask without image
    expected[gt / "scratch" / "099_mask.png"] = "mask without image"
    (gt / "crack" / "001_mask.png").unlink()  # image without mask
    expected[gt / "crack" / "001_mask.png"] = "mask missing (for image"

    def must_not_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("compute started on a dataset that failed validation")

    monkeypatch.setattr(anomaflow.flows.training, "load_images", must_not_run)
    monkeypatch.setattr(anomaflow.flows.training, "fit_detector", must_not_run)
    with pytest.raises(DatasetInvalid) as err:
        anomaflow.flows.training.train_pipeline(_gate_config(root))
    message = str(err.value)
    assert f"has {len(expected)} problem(s)" in message, message
    for path, reason in expected.items():
        assert f"{path}: {reason}" in message, (path, message)
    assert MlflowClient().get_experiment_by_name("hostile-gate") is None


def _gate_config(root: Path):
    return tiny_config(root, image_size=SIZE, epochs=1, experiment_name="hostile-gate")


# ---------------------------------------------------------------------------------------------
# batch inspection


@pytest.fixture(scope="module")
def detector(demo_root: Path) -> AutoencoderDetector:
    det = fit_tiny_autoencoder(demo_root, SIZE)
    scores = det.score(load_images(scan_mvtec(demo_root, "demo").train, SIZE)).scores[det.score_method]
    det.threshold, det.pixel_threshold = float(np.median(scores)), 0.05  # both verdicts occur
    return det


def inspect(
    det: AutoencoderDetector, inbox: Path, out: Path, batch_size: int = 4, progress=None, version: str = "1"
) -> inspection.InspectionSummary:
    return inspect_inbox(
        det, inbox, out, threshold=det.threshold, version=version, batch_size=batch_size, progress=progress
    )


def test_inspection_every_hostile_file_gets_one_row(detector: AutoencoderDetector, tmp_path: Path) -> None:
    """Conversions get a verdict, broken files an ERROR row with the reason, hostile names
    round-trip exactly through results.csv, and a rerun adds nothing."""
    inbox = tmp_path / "inbox"
    write_all(inbox, convertible_files())
    write_all(inbox, {name: payload for name, (payload, _) in broken_files().items()})
    write_all(inbox, {name: encode(part(50 + i), "PNG") for i, name in enumerate(HOSTILE_NAMES)})
    # EXIF: the verdict is on the displayed image, so it scores like its upright copy.
    upright = open_image(inbox / "exif_rotated.jpg")
    assert upright.size == (SIZE // 2, SIZE)
    upright.save(inbox / "exif_upright_copy.png")
    out = tmp_path / "out"
    summary = inspect(detector, inbox, out)
    rows = {r["path"]: r for r in inspection.read_results(out / "results.csv")}
    names = {p.name for p in inbox.iterdir()}
    assert set(rows) == names and summary.inspected == len(names)
    for name, (_, reason) in broken_files().items():
        assert rows[name]["decision"] == "ERROR" and rows[name]["error"].startswith(reason.split(" (")[0]), (
            name,
            rows[name],
        )
        assert rows[name]["score"] == ""
    for name in [*convertible_files(), *HOSTILE_NAMES]:
        assert rows[name]["decision"] in {"NORMAL", "DEFECT"} and rows[name]["error"] == "", (name, rows[name])
    assert float(rows["exif_rotated.jpg"]["score"]) == pytest.approx(
        float(rows["exif_upright_copy.png"]["score"]), rel=1e-6
    )
    assert summary.error == len(broken_files())
    assert not (tmp_path / "PWNED").exists() and not Path("PWNED").exists()
    again = inspect(detector, inbox, out)
    assert again.inspected == 0 and again.skipped == len(names)
    assert len(inspection.read_results(out / "results.csv")) == len(names)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blobs=st.lists(st.binary(max_size=600), min_size=1, max_size=6))
def test_inspection_arbitrary_bytes_never_stop_the_batch(detector: AutoencoderDetector, blobs: list[bytes]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        inbox, out = Path(tmp) / "inbox", Path(tmp) / "out"
        write_all(inbox, {f"{i}.png": b for i, b in enumerate(blobs)})
        write_all(inbox, {"good.png": encode(part(1), "PNG")})
        summary = inspect(detector, inbox, out, batch_size=3)
        rows = inspection.read_results(out / "results.csv")
        distinct = len({*blobs, encode(part(1), "PNG")})
        assert (
            len(rows) == len(blobs) + 1 and summary.inspected == distinct
        )  # a row per file; identical blobs scored once
        assert summary.duplicates == len(blobs) + 1 - distinct
        for r in rows:  # random bytes could in principle be a valid tiny image: then a verdict
            assert (r["decision"] == "ERROR") == bool(r["error"]) and r["decision"] in {"ERROR", "NORMAL", "DEFECT"}
        assert (
            next(r for r in rows if r["sha256"] == hashlib.sha256(encode(part(1), "PNG")).hexdigest())["decision"]
            != "ERROR"
        )


def test_inspection_folder_changes_while_it_is_read(detector: AutoencoderDetector, tmp_path: Path) -> None:
    """Between batches a pending file is deleted, another replaced by garbage, a new one added:
    the deleted one gets an ERROR row (it was listed), the replaced one is judged on the bytes
    read, the new one waits for the next run; the rerun then completes with one row each.
    Files are read one batch ahead of scoring, so the changed files sit two batches ahead."""
    inbox = tmp_path / "inbox"
    paths = write_all(inbox, {f"{i:02d}.png": encode(part(i), "PNG") for i in range(12)})
    changed: list[int] = []

    def mutate(done: int, total: int) -> None:
        if not changed:
            changed.append(done)
            paths["09.png"].unlink()
            paths["10.png"].write_bytes(b"not an image any more")
            write_all(inbox, {"late.png": encode(part(30), "PNG")})

    out = tmp_path / "out"
    first = inspect(detector, inbox, out, batch_size=4, progress=mutate)
    assert changed == [4] and first.total == 12
    rows = {r["path"]: r for r in inspection.read_results(out / "results.csv")}
    assert set(rows) == {f"{i:02d}.png" for i in range(12)}
    assert (
        rows["09.png"]["decision"] == "ERROR"
        and rows["09.png"]["error"] == "cannot read file (No such file or directory)"
    )
    assert rows["10.png"]["decision"] == "ERROR" and rows["10.png"]["error"].startswith("not a readable image")
    second = inspect(detector, inbox, out)
    assert second.inspected == 1  # late.png; the rest were done
    rows = inspection.read_results(out / "results.csv")
    assert sorted(r["path"] for r in rows) == sorted([*(f"{i:02d}.png" for i in range(12)), "late.png"])


def test_inspection_non_utf8_name_gets_a_row(detector: AutoencoderDetector, tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    write_all(inbox, {"good.png": encode(part(1), "PNG")})
    with open(os.fsencode(inbox) + b"/bad\xff.png", "wb") as fh:
        fh.write(encode(part(2), "PNG"))
    out = tmp_path / "out"
    summary = inspect(detector, inbox, out)
    rows = {r["path"]: r for r in inspection.read_results(out / "results.csv")}
    assert summary.inspected == 2 and set(rows) == {"good.png", "bad\\xff.png"}


_NAME_CHARS = st.characters(blacklist_characters="/\x00", blacklist_categories=("Cs",))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stem=st.text(_NAME_CHARS, min_size=1, max_size=40).filter(lambda s: not s.startswith(".")))
def test_inspection_records_any_file_name_verbatim(detector: AutoencoderDetector, stem: str) -> None:
    """Any UTF-8 name (quotes, commas, \\r and \\n, tabs, RTL marks, emoji...) is listed and written
    to results.csv so that it reads back exactly."""
    with tempfile.TemporaryDirectory() as tmp:
        inbox, out = Path(tmp) / "inbox", Path(tmp) / "out"
        write_all(inbox, {stem + ".png": b"not an image"})
        inspect(detector, inbox, out)
        assert [r["path"] for r in inspection.read_results(out / "results.csv")] == [stem + ".png"]


def test_carriage_return_in_a_name_cannot_claim_another_files_row(
    detector: AutoencoderDetector, tmp_path: Path
) -> None:
    inbox = tmp_path / "inbox"
    write_all(inbox, {"victim.png": encode(part(1), "PNG"), "x\rvictim.png": b"not an image"})
    out = tmp_path / "out"
    inspect(detector, inbox, out)
    rows = inspection.read_results(out / "results.csv")
    assert sorted(r["path"] for r in rows) == ["victim.png", "x\rvictim.png"]
