import json
import shutil

import pytest

from anomaflow.flows.cli import main
from tests.helpers import DEMO_DEFECT_IOU, EVAL_METRICS, train_args

pytestmark = pytest.mark.usefixtures("prefect_api", "mlflow_sqlite")

FAST = [
    "--detector",
    "autoencoder",
    "--image-size",
    "64",
    "--epochs",
    "2",
    "--batch-size",
    "8",
    "--threads",
    "2",
    "--no-register",
]


def test_train_end_to_end_writes_metrics_and_figures(demo_root, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["train", "--data", str(demo_root), "--category", "demo", "--output", str(out), *FAST])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    also = ("pixel_iou_oracle", "threshold", "pixel_threshold", "train_seconds", "f1")
    for key in (*EVAL_METRICS, *DEMO_DEFECT_IOU, *also):
        assert key in m, key
    for key in EVAL_METRICS:
        assert 0.0 <= m[key] <= 1.0
    assert m["pixel_iou_oracle"] >= m["pixel_iou"] - 1e-9
    for fig in ("roc.png", "score_histogram.png", "heatmaps.png"):
        assert (out / fig).stat().st_size > 1000
    assert (out / "model" / "detector.json").is_file()
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert m["mlflow_run_id"] and "model_version" not in m  # --no-register
    for d in ("blob", "crack", "scratch"):  # image AUROC per defect type: good images against that type
        assert 0.0 <= m[f"image_auroc_type_{d}"] <= 1.0
    assert m["heldout_fpr_low"] <= m["heldout_fpr"] <= m["heldout_fpr_high"] and m["heldout_normals"] > 0
    closing = [line for line in capsys.readouterr().out.splitlines() if line.startswith("done in")][0]
    # The decision score's AUROC leads; the threshold's recall and test FPR and its operating point follow.
    assert closing.split(": ", 1)[1].startswith(f"image_auroc={m['image_auroc']:.4f} (smoothed_max), pixel_auroc=")
    assert (
        f"recall {m['recall']:.3f} at test FPR {m['false_positive_rate']:.3f}" in closing and "held-out FPR" in closing
    )
    assert str(out) in closing


def test_train_without_data_uses_demo(anomaflow_home, tmp_path, monkeypatch):
    import anomaflow.model.pipeline as pipeline

    real = pipeline.make_demo_dataset
    # The built-in demo set at its default size is what `make demo` uses; keep this test quick with a smaller one.
    monkeypatch.setattr(
        pipeline,
        "make_demo_dataset",
        lambda root, cat, seed=0: real(
            root, cat, seed=seed, image_size=64, n_train=12, n_test_good=3, n_test_per_defect=2
        ),
    )
    out = tmp_path / "out"
    assert main(["train", "--output", str(out), *FAST]) == 0
    assert (anomaflow_home / "demo-data" / "demo" / ".demo.json").is_file()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["category"] == "demo" and cfg["data_root"] is None


def test_train_refuses_broken_dataset_before_training(demo_root, tmp_path, capsys):
    root = tmp_path / "broken"
    shutil.copytree(demo_root, root)
    victim = root / "demo" / "train" / "good" / "003.png"
    victim.write_bytes(victim.read_bytes()[:200])  # truncated PNG
    (root / "demo" / "ground_truth" / "blob" / "001_mask.png").unlink()
    out = tmp_path / "out"
    rc = main(["train", "--data", str(root), "--category", "demo", "--output", str(out), *FAST])
    err = capsys.readouterr()
    assert rc == 2
    assert "003.png" in err.err and "001_mask.png" in err.err
    assert "epoch" not in err.out  # no compute spent
    assert not (out / "metrics.json").exists()


def test_missing_category_is_a_clear_error(tmp_path, capsys):
    rc = main(["train", "--data", str(tmp_path), "--category", "bottle", "--output", str(tmp_path / "o"), *FAST])
    assert rc == 2
    assert "bottle" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["missing", "empty", "no images"])
def test_inspect_on_a_missing_or_empty_folder_fails_before_prefect_mlflow_or_torch_load(tmp_path, case):
    import subprocess
    import sys

    inbox = tmp_path / "inbox"
    if case != "missing":
        inbox.mkdir()
    if case == "no images":
        (inbox / "notes.txt").write_text("not an image")
    probe = (
        "import sys; from anomaflow.flows.cli import main; rc = main(sys.argv[1:]); "
        "print(rc, *(m in sys.modules for m in ('prefect', 'mlflow', 'torch')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, "inspect", "--input", str(inbox), "--output", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.stdout.split() == ["2", "False", "False", "False"], out.stdout + out.stderr
    assert str(inbox) in out.stderr and ("does not exist" if case == "missing" else "no images") in out.stderr
    assert not (tmp_path / "out").exists()


def test_demo_data_command(tmp_path, capsys):
    assert main(["demo-data", str(tmp_path / "d"), "--size", "64"]) == 0
    assert (tmp_path / "d" / "demo" / "train" / "good" / "000.png").is_file()


def test_train_on_plain_folder_of_good_images(demo_root, tmp_path):
    folder = tmp_path / "my_parts"
    shutil.copytree(demo_root / "demo" / "train" / "good", folder)
    out = tmp_path / "out"
    assert main(["train", "--data", str(folder), "--output", str(out), *FAST]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["threshold"] > 0 and "image_auroc_max" not in m  # no labelled test split to evaluate
    assert (out / "model" / "detector.json").is_file()


def test_patchcore_detector_flag_uses_family_defaults():
    from anomaflow.flows.cli import build_parser, config_from_args

    cfg = config_from_args(build_parser().parse_args(["train", "--output", "o", "--detector", "patchcore"]))
    assert cfg.detector == "patchcore" and cfg.image_size == 256
    assert cfg.score_method == "max" and cfg.pixel_threshold_percentile == 99.99
    cfg = config_from_args(
        build_parser().parse_args(
            ["train", "--output", "o", "--detector", "patchcore", "--image-size", "128", "--score-method", "mean"]
        )
    )
    assert cfg.image_size == 128 and cfg.score_method == "mean"
    ae = config_from_args(build_parser().parse_args(["train", "--output", "o", "--detector", "autoencoder"]))
    assert ae.detector == "autoencoder" and ae.image_size == 128 and ae.score_method == "smoothed_max"
    auto = config_from_args(build_parser().parse_args(["train", "--output", "o"]))  # the default: chosen per dataset
    assert auto.detector == "auto" and auto.image_size == 256 and auto.padim.image_size == 256
    assert (
        config_from_args(build_parser().parse_args(["train", "--output", "o", "--image-size", "128"])).padim.image_size
        == 128
    )


def test_autoencoder_flags_default_to_the_config_and_can_be_turned_off():
    from anomaflow.flows.cli import build_parser, config_from_args
    from anomaflow.model.config import AutoencoderConfig

    parse = build_parser().parse_args
    assert config_from_args(parse(["train", "--output", "o"])).autoencoder == AutoencoderConfig()
    ae = config_from_args(parse(["train", "--output", "o", "--no-augment", "--map-sigma", "5"])).autoencoder
    assert ae.augment is False and ae.map_sigma == 5.0
    assert config_from_args(parse(["train", "--output", "o", "--augment"])).autoencoder.augment is True


def test_train_patchcore_end_to_end(demo_root, tmp_path):
    out = tmp_path / "pc"
    rc = main(train_args(demo_root, out, "--no-register"))
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= m["image_auroc_max"] <= 1.0 and "pixel_aupro" in m
    assert json.loads((out / "model" / "detector.json").read_text())["family"] == "patchcore"


def test_train_on_a_dataset_without_masks_reports_image_metrics_and_says_why_no_pixel_metrics(
    demo_root, tmp_path, capsys
):
    root = tmp_path / "labels_only"
    shutil.copytree(demo_root, root)
    shutil.rmtree(root / "demo" / "ground_truth")
    out = tmp_path / "out"
    assert main(["train", "--data", str(root), "--category", "demo", "--output", str(out), *FAST]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= m["image_auroc"] <= 1.0 and "recall" in m
    assert not any(k.startswith("pixel_") and k != "pixel_threshold" and k != "pixel_metrics_note" for k in m)
    assert m["pixel_metrics_note"].startswith("absent: defect types blob, crack, scratch have image-level labels only")
    validation = json.loads((out / "validation.json").read_text())
    assert validation["ok"] and validation["unmasked_types"] == ["blob", "crack", "scratch"]


def test_ten_grayscale_jpegs_of_mixed_sizes_train_and_evaluate(tmp_path):
    """A small product as it comes: 10 good grayscale JPEGs of three sizes and aspect ratios, a
    test split with masks of each image's own size. Each image keeps its aspect ratio in the
    model frame, and inspection returns heat maps and overlays in each image's own frame."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    cat = tmp_path / "root" / "plates"
    sizes = [(96, 240), (160, 160), (240, 96)]  # (width, height): tall, square, wide

    def plate(w, h, defect=False):
        img = (120 + 10 * np.sin(np.arange(w)[None, :] / 6) + rng.normal(0, 3, (h, w))).clip(0, 255).astype(np.uint8)
        mask = np.zeros((h, w), np.uint8)
        if defect:
            y, x = h // 3, w // 3
            img[y : y + h // 5, x : x + 3] = 20  # a thin dark crack
            mask[y : y + h // 5, x : x + 3] = 255
        return img, mask

    for i in range(10):
        w, h = sizes[i % 3]
        (cat / "train" / "good").mkdir(parents=True, exist_ok=True)
        Image.fromarray(plate(w, h)[0], "L").save(cat / "train" / "good" / f"{i:03d}.jpg", quality=95)
    for i in range(3):
        w, h = sizes[i]
        for split, defect in (("good", False), ("crack", True)):
            img, mask = plate(w, h, defect)
            (cat / "test" / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray(img, "L").save(cat / "test" / split / f"{i:03d}.jpg", quality=95)
            if defect:
                (cat / "ground_truth" / "crack").mkdir(parents=True, exist_ok=True)
                Image.fromarray(mask, "L").save(cat / "ground_truth" / "crack" / f"{i:03d}_mask.png")
    out = tmp_path / "out"
    rc = main(train_args(tmp_path / "root", out, "--no-register", "--seed", "0", category="plates"))
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    validation = json.loads((out / "validation.json").read_text())
    assert validation["image_modes"] == {"L": 16} and len(validation["image_sizes"]) == 3
    assert "pixel_auroc" in m and 0.0 <= m["image_auroc"] <= 1.0 and m["threshold"] > 0
    assert json.loads((out / "history.json").read_text())[0]["images"] == 8  # 10 minus 2 held out

    import hashlib

    from anomaflow.model.detectors.registry import load_detector
    from anomaflow.model.operations.inspection import RowBuffer, defect_figure_paths, inspect_files

    det = load_detector(out / "model")
    assert det.keep_aspect and min(det.frame) == 64  # short side = --image-size, long side from the median ratio
    inbox = cat / "test" / "crack"
    files = sorted(inbox.glob("*.jpg"))
    buf = RowBuffer(tmp_path / "inspected")
    inspect_files(
        det, files, inbox, buf, model_name="m", model_version="1", threshold=-1e9
    )  # every part a DEFECT: figures for all
    for f in files:
        heat, over = defect_figure_paths(buf.dir, hashlib.sha256(f.read_bytes()).hexdigest())
        with Image.open(f) as src, Image.open(heat) as h, Image.open(over) as o:
            assert h.size == o.size == src.size  # the image's own frame, not the model's


def test_auto_chooses_on_held_out_normals_only_and_permuted_test_labels_change_nothing(demo_root, tmp_path, capsys):
    """--detector auto scores its candidates on synthetic defects in held-out normals: shuffling
    which test image sits under which label (good, blob, ...) leaves the choice and every
    candidate's score unchanged, while the test metrics do change."""
    import random

    from anomaflow.model.evaluation.selection import AUTO

    permuted = tmp_path / "permuted"
    shutil.copytree(demo_root, permuted)
    files = sorted((permuted / "demo" / "test").rglob("*.png"))
    contents = [f.read_bytes() for f in files]
    random.Random(0).shuffle(contents)
    for f, c in zip(files, contents):
        f.write_bytes(c)
    results = []
    for root in (demo_root, permuted):
        out = tmp_path / f"auto-{root.name}"
        assert main(train_args(root, out, "--no-register", detector="auto")) == 0
        results.append(
            (json.loads((out / "metrics.json").read_text()), json.loads((out / "selection.json").read_text()))
        )
    (m1, s1), (m2, s2) = results
    strip = lambda s: [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in s["candidates"]]  # noqa: E731
    assert strip(s1) == strip(s2) and s1["chosen"] == s2["chosen"] == m1["auto_choice"]
    assert len(s1["candidates"]) == len(AUTO) and sum(r["chosen"] for r in s1["candidates"]) == 1
    assert all(0.0 <= r["syn_image_auroc"] <= 1.0 for r in s1["candidates"] if r["status"] == "scored")
    assert m1["image_auroc"] != m2["image_auroc"]  # the labels did move
    assert "auto chose" in capsys.readouterr().out


def test_a_few_defective_parts_in_train_good_do_not_set_the_threshold(tmp_path):
    """Calibration with odd images in train/good: three defective parts filed as good (as happens
    on a line), named so that the seeded split holds all three out for calibration. The tail
    threshold follows the bulk of the held-out scores, so the three sit above it (held-out FPR 3/n)
    and the real defects are still caught; the 99th percentile of the same scores is dragged up
    to the odd parts and misses more."""
    import itertools

    from anomaflow.model.data import datasets as data
    from anomaflow.model.data.demo import make_demo_dataset

    root = tmp_path / "odd"
    make_demo_dataset(root, "demo", seed=1, image_size=64, n_train=80, n_test_good=8, n_test_per_defect=4)
    slipped = make_demo_dataset(
        tmp_path / "other", "demo", seed=2, image_size=64, n_train=1, n_test_good=0, n_test_per_defect=1
    )
    good = root / "demo" / "train" / "good"
    odd = sorted(p for p in (slipped / "test").rglob("*.png") if p.parent.name != "good")
    assert len(odd) == 3
    train = data.scan_mvtec(root, "demo").train
    for stems in itertools.combinations(
        [s.path.stem for s in train], 3
    ):  # deterministic: the first the split holds out
        names = [f"{stem}_odd.png" for stem in stems]
        _, held = data.split_train([*train, *(data.Sample(good / n, "train", "good") for n in names)], 0.2, 0)
        if sum("odd" in s.path.name for s in held) == 3:
            break
    else:
        pytest.fail("no naming puts the odd parts in the held-out split")
    for p, n in zip(odd, names):
        shutil.copy(p, good / n)

    runs = {}
    for method in ("tail", "percentile"):
        out = tmp_path / method
        assert main(train_args(root, out, "--no-register", "--threshold-method", method)) == 0
        runs[method] = json.loads((out / "metrics.json").read_text())
    tail, pct = runs["tail"], runs["percentile"]
    assert tail["threshold_method_used"] == "tail" and tail["heldout_normals"] == len(held)
    assert round(tail["heldout_fpr"] * tail["heldout_normals"]) >= 2  # the clearly odd parts are above it, not under it
    assert tail["recall"] >= 0.7 and tail["false_positive_rate"] <= 0.25, tail
    assert 0 < tail["tail_fpr_estimate"] < 0.05
    assert pct["threshold"] > tail["threshold"] and pct["recall"] <= 0.3, pct  # an order statistic follows them up


def test_target_recall_sets_the_threshold_on_synthetic_defects_and_says_it_is_an_estimate(demo_root, tmp_path, capsys):
    out = tmp_path / "recall"
    assert main(train_args(demo_root, out, "--no-register", "--target-recall", "0.95")) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["threshold_method_used"] == "recall" and m["target_recall"] == 0.95
    assert m["syn_recall_estimate"] >= 0.95
    assert json.loads((out / "config.json").read_text())["threshold_method"] == "recall"
    assert "target recall 0.95 on synthetic defects" in capsys.readouterr().out


def test_backbone_and_layers_flags_reach_the_patchcore_config():
    from anomaflow.flows.cli import build_parser, config_from_args

    cfg = config_from_args(
        build_parser().parse_args(
            [
                "train",
                "--output",
                "o",
                "--detector",
                "patchcore",
                "--backbone",
                "efficientnet_lite2",
                "--layers",
                "stage2",
                "stage3",
            ]
        )
    )
    assert cfg.patchcore.backbone == "efficientnet_lite2" and cfg.patchcore.layers == ["stage2", "stage3"]
    assert (
        config_from_args(build_parser().parse_args(["train", "--output", "o"])).patchcore.backbone
        == "efficientnet_lite0"
    )


def test_train_category_all_trains_every_category_of_the_root_and_prints_one_table(demo_root, tmp_path, capsys):
    root = tmp_path / "plant"
    shutil.copytree(demo_root / "demo", root / "capsule")
    (root / "notes").mkdir()  # no train/good: not a product
    out = tmp_path / "out"
    rc = main(["train", "--data", str(root), "--category", "all", "--output", str(out), *FAST])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    header = next(line for line in printed.splitlines() if line.startswith("product"))
    assert header.split() == [
        "product",
        "status",
        "detector",
        "image_auroc",
        "pixel_auroc",
        "recall",
        "fpr",
        "version",
        "promoted",
    ]
    assert "1 product(s) ok, 0 failed" in printed
    (row,) = json.loads((out / "fleet.json").read_text())["products"]
    assert row["product"] == "capsule" and row["status"] == "ok" and row["version"] == ""  # --no-register
    assert (out / "capsule" / "metrics.json").is_file() and not (out / "notes").exists()


def test_fleet_commands_refuse_what_does_not_apply_before_any_work(tmp_path, capsys):
    rc = main(["train", "--category", "all", "--output", str(tmp_path / "o"), *FAST])
    assert rc == 2 and "--data ROOT" in capsys.readouterr().err
    rc = main(["train", "--data", str(tmp_path), "--category", "all", "--output", str(tmp_path / "o"), *FAST])
    assert rc == 2 and "no MVTec-layout categories" in capsys.readouterr().err
    inbox = tmp_path / "inbox"
    (inbox / "capsule").mkdir(parents=True)
    rc = main(["inspect", "--input", str(inbox), "--output", str(tmp_path / "i"), "--model", "all"])
    assert rc == 2 and "no product folders with images" in capsys.readouterr().err
    (inbox / "capsule" / "a.png").write_bytes(b"\x89PNG")
    rc = main(["inspect", "--input", str(inbox), "--output", str(tmp_path / "i"), "--model", "all", "--threshold", "1"])
    assert rc == 2 and "--threshold and --runtime do not apply" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() and not (tmp_path / "i").exists()
