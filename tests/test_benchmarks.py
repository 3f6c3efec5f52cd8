"""Benchmark scripts on tiny generated data: what they save and store must be usable as is."""

import importlib.util
import json
from pathlib import Path

import pytest

from anomaflow.model.detectors.registry import load_detector

REPO = Path(__file__).resolve().parents[1]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def stored_run(tmp_path: Path, json_name: str) -> list[str]:
    """One seed on 2 threads, cached and stored under tmp_path: the flags most benchmark tests pass."""
    stored = ["--cache-dir", str(tmp_path / "cache"), "--json", str(tmp_path / json_name)]
    return ["--seeds", "0", "--threads", "2", *stored]


def test_quality_benchmark_saves_calibrated_models(demo_root, tmp_path):
    quality = load_script("quality")
    out = tmp_path / "models"
    rc = quality.main(
        [
            "--data",
            str(demo_root),
            "--category",
            "demo",
            "--configs",
            "default",
            "--epochs",
            "1",
            "--map-sigmas",
            "4",
            *stored_run(tmp_path, "q.json"),
            "--save-models",
            str(out),
        ]
    )
    assert rc == 0
    meta = json.loads((out / "default-seed0" / "detector.json").read_text())
    run = json.loads((tmp_path / "q.json").read_text())["default"][0]
    assert meta["threshold"] is not None and meta["pixel_threshold"] is not None
    # The saved model is the configuration as defined (own map sigma), with the thresholds its row reports.
    assert meta["threshold"] == pytest.approx(run["threshold"]) and meta["pixel_threshold"] == pytest.approx(
        run["pixel_threshold"]
    )
    det = load_detector(out / "default-seed0")
    assert det.config.map_sigma == 2.0 and det.threshold == pytest.approx(run["threshold"])


def test_pixel_threshold_benchmark_reads_no_test_image_and_stores_what_it_prints(
    demo_root, tmp_path, capsys, monkeypatch
):
    from anomaflow.model.data import datasets as data

    bench = load_script("pixel_threshold")
    loaded: list = []
    real = data.load_images
    monkeypatch.setattr(
        data, "load_images", lambda samples, *a, **kw: loaded.extend(samples) or real(samples, *a, **kw)
    )
    rc = bench.main(
        [
            "--data",
            str(demo_root),
            "--category",
            "demo",
            "--detector",
            "autoencoder",
            "--epochs",
            "1",
            *stored_run(tmp_path, "p.json"),
        ]
    )
    assert rc == 0
    assert loaded and {s.split for s in loaded} == {"train"}  # no test image is decoded for the choice
    printed = capsys.readouterr().out
    stored = json.loads((tmp_path / "p.json").read_text())
    assert len(stored["runs"]) == 1 and set(stored["runs"][0]["percentiles"]) == {str(p) for p in bench.PERCENTILES}
    assert bench.main(["--from-json", str(tmp_path / "p.json")]) == 0
    assert capsys.readouterr().out == printed  # the stored result reproduces the printed table


def test_generalisation_benchmark_runs_the_flow_steps_per_dataset_and_prints_one_table(demo_root, tmp_path, capsys):
    bench = load_script("generalisation")
    rc = bench.main(
        [
            "--datasets",
            f"tiny={demo_root}:demo",
            f"absent={tmp_path}:nothing",
            "--families",
            "patchcore",
            "--frames",
            "keep",
            "square",
            *stored_run(tmp_path, "g.json"),
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    stored = json.loads((tmp_path / "g.json").read_text())
    rec, squashed = stored["results"]
    assert (
        rec["dataset"] == "tiny"
        and 0.0 <= rec["metrics"]["recall_at_test_fpr_5pct"] <= 1.0
        and rec["images_per_second"] > 0
    )
    assert rec["keep_aspect"] and not squashed["keep_aspect"] and rec["frame"] == [256, 256]
    assert stored["skipped"] and "absent" in stored["skipped"][0]
    assert (
        "| tiny | patchcore | 256x256 | 0 |" in out
        and "| tiny | patchcore | 256x256 squashed | 0 |" in out
        and "skipped absent" in out
    )
    assert bench.main(["--from-json", str(tmp_path / "g.json")]) == 0
    assert "| tiny | patchcore | 256x256 | 0 |" in capsys.readouterr().out


def test_calibration_benchmark_table_reads_back_from_its_stored_result(capsys):
    bench = load_script("calibration")
    assert bench.main(["--from-json", str(REPO / "benchmarks" / "results" / "calibration-patchcore.json")]) == 0
    out = capsys.readouterr().out
    assert "| tail 0.01 |" in out and "| percentile 99 (default before) |" in out


def test_screen_benchmark_moves_planted_defects_out_of_the_test_split(demo_root, tmp_path, capsys):
    import hashlib

    bench = load_script("screen")
    work, names = bench.contaminated_copy(demo_root, "demo", 4, 0, tmp_path / "copy")
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    train = {digest(p) for p in (work / "demo" / "train" / "good").iterdir()}
    test = [p for p in (work / "demo" / "test").glob("*/*")]
    original = [p for p in (demo_root / "demo" / "test").glob("*/*")]
    assert len(names) == 4 and len(test) == len(original) - 4
    assert not train & {digest(p) for p in test}  # a planted defect is never also a test image
    for p in test:  # every remaining defect keeps its mask
        assert (
            p.parent.name == "good" or (work / "demo" / "ground_truth" / p.parent.name / f"{p.stem}_mask.png").is_file()
        )
    out = tmp_path / "screen.json"
    assert bench.main(["--data", str(demo_root), "--category", "demo", "--planted", "0", "3", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["planted"] for r in rows] == [0, 3] and rows[1]["good_images"] == rows[0]["good_images"] + 3
    assert all(0 <= r["flagged_planted"] <= r["planted"] for r in rows)
    printed = capsys.readouterr().out
    assert bench.main(["--from-json", str(out)]) == 0
    assert capsys.readouterr().out.strip() in printed  # the stored table is the printed one


def test_stored_fleet_result_prints_and_every_plan_gives_each_product_the_same_numbers(capsys):
    """The docs' fleet table comes from the stored JSON: every product ok in every plan, and how many
    products run at once changes no product's result."""
    bench = load_script("fleet")
    stored = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "fleet.json"
    assert bench.main(["--from-json", str(stored)]) == 0
    assert "| 2x1 |" in capsys.readouterr().out
    rows = json.loads(stored.read_text())["rows"]
    by_product: dict[str, set] = {}
    for r in rows:
        assert r["ok"] == len({x["product"] for x in rows if x["plan"] == r["plan"]})
        by_product.setdefault(r["product"], set()).add((r["detector"], r["image_auroc"], r["pixel_auroc"]))
    assert "bottle" in by_product and all(len(v) == 1 for v in by_product.values())


def test_stored_frame_policy_result_prints_and_never_falls_below_squashing(capsys):
    """The docs' frame table comes from the stored JSON; the policy's target holds on every row of it."""
    bench = load_script("frames")
    stored = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "frames-seed0.json"
    assert bench.main(["--from-json", str(stored)]) == 0
    assert "| bottle_mixed |" in capsys.readouterr().out
    for row in json.loads(stored.read_text())["rows"]:
        assert row["auto_frame"] in ("keep", "square")
        assert row[row["auto_frame"]]["test_image_auroc"] >= row["square"]["test_image_auroc"] - 0.005, row["dataset"]


@pytest.mark.slow
def test_inspection_speed_benchmark_runs_every_rate_and_runtime_on_the_demo_data(demo_root, tmp_path, capsys):
    bench = load_script("inspection_speed")
    out = tmp_path / "speed.json"
    assert (
        bench.main(
            [
                "--data",
                str(demo_root),
                "--category",
                "demo",
                "--shapes",
                "native",
                "--runtimes",
                "torch",
                "onnxruntime",
                "--rates",
                "0",
                "0.5",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    rows = json.loads(out.read_text())["rows"]
    assert [(r["runtime"], r["rate"]) for r in rows] == [
        ("torch", 0.0),
        ("torch", 0.5),
        ("onnxruntime", 0.0),
        ("onnxruntime", 0.5),
    ]
    assert [r["defects"] for r in rows if r["rate"] == 0.0] == [0, 0] and all(
        r["defects"] > 0 for r in rows if r["rate"] == 0.5
    )
    exported = rows[2]
    assert exported["same_decisions"] and exported["score_diff"] < 1e-5  # the export scores as torch does
    printed = capsys.readouterr().out
    assert bench.main(["--from-json", str(out)]) == 0
    assert capsys.readouterr().out.strip() in printed
