"""`anomaflow` command line: train on MVTec-layout data (or the built-in demo set), write demo data."""

from __future__ import annotations

import argparse
import os
import sys
import time
import types
import typing
from pathlib import Path
from typing import Any, Iterator, Sequence

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from anomaflow.model.config import FAMILIES, FLEET, Flag, TrainConfig


def config_flags(model: type[BaseModel] = TrainConfig, section: str | None = None) -> Iterator[tuple]:
    """(section or None, field name, Flag, FieldInfo) of every TrainConfig field that has a flag,
    family sections included, in declaration order."""
    for name, info in model.model_fields.items():
        flag = next((m for m in info.metadata if isinstance(m, Flag)), None)
        if flag is not None:
            yield section, name, flag, info
        elif section is None and name in FAMILIES:
            yield from config_flags(info.annotation, name)


def _argument(name: str, flag: Flag, info: FieldInfo) -> dict[str, Any]:
    """argparse keywords from the field: type, choices, list, default, help; the value lands in
    args.<field name>."""
    tp, nargs = info.annotation, None
    if typing.get_origin(tp) in (typing.Union, types.UnionType):  # X | None
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    if typing.get_origin(tp) is list:
        tp, nargs = typing.get_args(tp)[0], "+"
    help_ = flag.help if flag.help is not None else (info.description or "").replace("%", "%%") or None
    kw: dict[str, Any] = {"dest": name, "help": help_}
    kw["default"] = None if flag.unset else info.get_default(call_default_factory=True)
    if tp is bool:
        kw["action"] = "store_true" if flag.switch else argparse.BooleanOptionalAction
        return kw
    kw["metavar"] = flag.metavar or flag.name.removeprefix("--").replace("-", "_").upper()
    if typing.get_origin(tp) is typing.Literal:
        kw.pop("metavar")  # argparse shows the choices
        kw["choices"] = list(typing.get_args(tp))
        tp = type(kw["choices"][0])
    return {**kw, "type": tp, **({"nargs": nargs} if nargs else {})}


def _train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train, calibrate and evaluate a detector; writes OUTPUT/metrics.json and figures")
    p.add_argument("--output", required=True, type=Path, help="output folder for metrics.json, figures and the model")
    seen = set()
    for _section, name, flag, info in config_flags():
        if flag.name not in seen:  # one flag may set the same field of several families (--image-size)
            seen.add(flag.name)
            p.add_argument(flag.name, **_argument(name, flag, info))
    p.add_argument("--no-register", action="store_true", help="log the MLflow run but register no model version")
    p.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="with --category all: products trained at once (default: as many as the cores hold at --threads each)",
    )
    p.add_argument(
        "--dask",
        metavar="ADDRESS",
        default=None,
        help="with --category all: train the products on this Dask scheduler (default $ANOMAFLOW_DASK_ADDRESS)",
    )


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of `anomaflow train`'s flags: each flag sets its field (family-scope flags
    only in the sections the run uses); a flag left unset leaves the field's default."""
    if args.layers is not None and args.detector not in ("patchcore", "padim"):
        raise ValueError(
            f"--layers sets the stages of one family: give --detector patchcore or padim with it (not {args.detector})"
        )
    used = TrainConfig.model_construct(detector=args.detector).families_used()
    top: dict[str, Any] = {}
    sections: dict[str, dict[str, Any]] = {}
    for section, name, flag, _info in config_flags():
        value = getattr(args, name)
        if flag.unset and value is None:
            continue
        if section is None:
            top[name] = value
        elif flag.scope == "always" or section in used:
            sections.setdefault(section, {})[name] = value
    top.setdefault("category", "demo" if args.data_root is None else TrainConfig().category)
    if args.threshold_method is None and args.target_recall is not None:
        top["threshold_method"] = "recall"
    families = {f: TrainConfig.model_fields[f].annotation(**values) for f, values in sections.items()}
    return TrainConfig(**top, **families)


def closing_line(config: TrainConfig, m: dict) -> str:
    """The decision score and its AUROC first, then the pixel metrics, then what the threshold
    does: recall and test FPR at it, and the operating point it was set for."""
    parts = [f"image_auroc={m['image_auroc']:.4f} ({config.score_method})"] if "image_auroc" in m else []
    parts += [f"{k}={m[k]:.4f}" for k in ("pixel_auroc", "pixel_aupro", "pixel_iou") if k in m]
    method = m.get("threshold_method_used", config.threshold_method)
    ((key, value),) = config.operating_point(method).items()
    point = {"target_fpr": "target FPR {:g}", "target_recall": "target recall {:g} on synthetic defects"}.get(
        key, "percentile {:g}"
    ).format(value)
    line = ", ".join(parts) + f"; threshold {m['threshold']:.6g} ({method}, {point}"
    if "heldout_fpr" in m:
        line += (
            f"; held-out FPR {m['heldout_fpr']:.3f} [{m['heldout_fpr_low']:.3f}-{m['heldout_fpr_high']:.3f}] "
            f"on {int(m['heldout_normals'])} normals"
        )
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
    from anomaflow.flows.training import train_pipeline

    config = config_from_args(args)
    if config.category == FLEET:
        return train_fleet(config, args)
    t0 = time.perf_counter()
    metrics = train_pipeline(config, output_dir=str(args.output), register_model=not args.no_register)
    print(f"done in {time.perf_counter() - t0:.1f}s: " + closing_line(config, metrics) + f"; output {args.output}")
    print(
        f"wrote {args.output / 'metrics.json'}; MLflow run {metrics.get('mlflow_run_id')}"
        + (f", model version {metrics['model_version']}" if "model_version" in metrics else "")
    )
    return 0


def fleet_table(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    """The fleet summary as aligned text: one line per product, failures with their error."""
    cells = [[str(c) for c in columns]] + [["-" if r.get(c) is None else str(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
    lines += [f"{r['product']}: {r['error']}" for r in rows if r.get("error")]
    return "\n".join(lines)


def _fleet_done(state: Any, what: str, t0: float, columns: Sequence[str]) -> int:
    result = state.result(raise_on_failure=False)
    if isinstance(result, BaseException):  # the fleet itself failed (no product ran)
        raise result
    print(fleet_table(result["products"], columns))
    failed = result["failed"]
    ok = len(result["products"]) - len(failed)
    print(f"{what} in {time.perf_counter() - t0:.1f}s: {ok} product(s) ok, {len(failed)} failed")
    return 1 if failed else 0


def train_fleet(config: TrainConfig, args: argparse.Namespace) -> int:
    """`--category all`: every category of --data ROOT, OUTPUT/<category>/ each, OUTPUT/fleet.json."""
    from anomaflow.flows.fleet import fleet_training
    from anomaflow.tasks.fleet import fleet_categories

    fleet_categories(config.data_root)  # no root or no categories: fails before a server starts
    t0 = time.perf_counter()
    state = fleet_training(
        config,
        output_dir=str(args.output),
        register_model=not args.no_register,
        concurrency=args.concurrency,
        dask_address=args.dask,
        return_state=True,
    )
    columns = ("product", "status", "detector", "image_auroc", "pixel_auroc", "recall", "fpr", "version", "promoted")
    return _fleet_done(state, f"fleet trained; summary {args.output / 'fleet.json'}", t0, columns)


def cmd_inspect(args: argparse.Namespace) -> int:
    from anomaflow.model.data.datasets import IMAGE_EXTENSIONS
    from anomaflow.model.operations.inspection import list_inbox

    if args.model == FLEET:
        return inspect_fleet(args)
    if not list_inbox(args.input):  # before Prefect, MLflow or a temporary server start: a typo fails in a second
        raise FileNotFoundError(
            f"{args.input}: no images ({', '.join(sorted(e.lstrip('.') for e in IMAGE_EXTENSIONS))}) in the folder"
        )
    from anomaflow.tasks.inspection import pick_runtime

    pick_runtime(args.runtime)  # a runtime that is not installed fails here, before a server starts
    from anomaflow.flows.inspection import batch_inspection

    result = batch_inspection(
        input_dir=str(args.input),
        output_dir=str(args.output),
        model_name=args.model,
        alias=args.alias,
        threshold=args.threshold,
        batch_size=args.batch_size,
        runtime=args.runtime,
    )
    print(
        f"{args.model} v{result['model_version']}: NORMAL {result['NORMAL']}, DEFECT {result['DEFECT']}, "
        f"ERROR {result['ERROR']} ({result['duplicates']} of them duplicate content with a copied verdict; "
        f"skipped {result['skipped']} already inspected); results in {args.output / 'results.csv'}"
    )
    if "drift" in result:
        print(("WARNING: " if result["drift_flagged"] else "") + f"drift: {result['drift']}")
    print(f"review: anomaflow review --results {args.output}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from anomaflow.tasks.export import export_registered

    out = export_registered(args.model, args.format, args.output, log_to_registry=not args.no_log)
    print(
        f"exported {out['model_name']} v{out['model_version']} ({out['family']}, "
        f"threshold {out['threshold']:.6g}) as {out['format']} "
        f"to {out['output']} in {out['seconds']:.1f}s" + (f"; logged to {out['logged_to']}" if out["logged_to"] else "")
    )
    print(
        f"run it without torch: python -m anomaflow.model.operations.runtime {out['output']} INPUT_DIR [--threshold X]"
    )
    return 0


def cmd_demo_data(args: argparse.Namespace) -> int:
    from anomaflow.model.data.demo import MARKER_NAME, make_demo_dataset, summary

    existed = (args.path / args.category / MARKER_NAME).exists()
    try:
        path = make_demo_dataset(args.path, args.category, seed=args.seed, image_size=args.size)
    except (FileExistsError, ValueError) as exc:
        print(f"anomaflow demo-data: error: {exc}", file=sys.stderr)
        return 1
    print(summary(path, reused=existed))
    return 0


def cmd_import_elpv(args: argparse.Namespace) -> int:
    from anomaflow.model.data.elpv import import_elpv

    for info in import_elpv(args.dest, seed=args.seed, source=args.source):
        print(
            f"{args.dest / info.category}: train/good {info.train_good}, test/good {info.test_good}, "
            f"test/defective {info.test_defective} (seed {info.seed}); left out {info.left_out_uncertain} cells rated "
            f"1/3 or 2/3 (uncertain labels, listed in elpv_import.json); no masks: image metrics only"
        )
    print(f"next: anomaflow train --data {args.dest} --category elpv_mono --detector patchcore --output out/elpv_mono")
    return 0


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def cmd_review(args: argparse.Namespace) -> int:
    import uvicorn

    from anomaflow.model.operations.results import default_label_db
    from anomaflow.review.app import create_app

    if args.host not in LOOPBACK and not args.token:
        raise ValueError(
            f"--host {args.host} opens the review app to other machines: give --token (a long random string) too"
        )
    db = args.db or default_label_db(args.results)
    app = create_app(args.results, db, token=args.token or None, host=args.host, allowed_hosts=args.allowed_host)
    url = f"http://{args.host}:{args.port}/" + (f"?token={args.token}" if args.token else "")
    print(
        f"review: {len(app.state.results.frame)} inspected parts from {', '.join(str(r) for r in args.results)}; "
        f"labels in {db.split('@')[-1]}"
    )
    print(
        f"review: open {url if args.host in LOOPBACK else url.replace(args.token or '', '<token>')}  "
        "(Ctrl+C stops; labels are saved as they are made)"
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def cmd_recalibrate(args: argparse.Namespace) -> int:
    from anomaflow.flows.recalibration import recalibrate

    r = recalibrate(
        results_dirs=[str(p) for p in args.results],
        model_name=args.model,
        version=args.version,
        db_url=args.db,
        target_recall=args.target_recall,
        target_fpr=args.target_fpr,
        apply=args.apply,
        min_reviewed=args.min_reviewed,
    )
    f = r["field"]
    print(
        f"{args.model} v{r['model_version']} on {r['reviewed_defects']} parts reviewed as defects "
        f"and {r['reviewed_good']} as good: "
        f"field precision {f['precision']:.3f}, recall {f['recall']:.3f} at threshold {f['threshold']:.6g}"
    )
    if r["proposal"]:
        p = r["proposal"]
        print(
            f"proposed threshold {p['threshold']:.6g}: precision {p['precision']:.3f}, recall {p['recall']:.3f}, "
            f"FPR {p['fpr']:.3f} on the reviewed parts"
        )
    if "new_version" in r:
        print(
            f"registered version {r['new_version']}: "
            + ("champion now" if r["promoted"] else "not champion")
            + f" ({r['reason']})"
        )
    return 0


def inspect_fleet(args: argparse.Namespace) -> int:
    """`--model all`: INPUT/<category>/ with anomaflow-<category> into OUTPUT/<category>/."""
    from anomaflow.flows.fleet import fleet_inspection
    from anomaflow.tasks.fleet import inbox_products

    inbox_products(args.input)  # an empty or missing inbox fails before a server starts
    if args.threshold is not None or args.runtime != "auto":
        raise ValueError("--model all inspects each product with its own model: --threshold and --runtime do not apply")
    t0 = time.perf_counter()
    state = fleet_inspection(
        str(args.input), str(args.output), alias=args.alias, batch_size=args.batch_size, return_state=True
    )
    columns = ("product", "status", "version", "NORMAL", "DEFECT", "ERROR")
    code = _fleet_done(state, "fleet inspected", t0, columns)
    print(f"review: anomaflow review --results {args.output}/*")
    return code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anomaflow", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _train_parser(sub)
    p = sub.add_parser("inspect", help="inspect a folder of images with a registered model; writes OUTPUT/results.csv")
    p.add_argument(
        "--input", required=True, type=Path, help="folder of images (png, jpg, bmp, tif), searched recursively"
    )
    p.add_argument("--output", required=True, type=Path, help="folder for results.csv and defect heat maps")
    p.add_argument(
        "--model",
        default="anomaflow-bottle",
        help="registered model name; 'all': every product folder INPUT/<category>/ with anomaflow-<category>",
    )
    p.add_argument("--alias", default="champion", help="registry alias to resolve (once per run)")
    p.add_argument("--threshold", type=float, default=None, help="override the model's threshold for this run")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument(
        "--runtime",
        choices=["auto", "torch", "onnxruntime", "openvino"],
        default="auto",
        help="score with torch, or with the model's exported graph (made once per version, same scores to 1e-4); "
        "auto (default): onnxruntime where anomaflow[export] is installed, else torch",
    )
    p = sub.add_parser(
        "export", help="export a registered model as one ONNX / OpenVINO graph (threshold in its metadata)"
    )
    p.add_argument(
        "--model", default="anomaflow-bottle", help="NAME, NAME@alias or NAME/version (a bare name: its champion)"
    )
    p.add_argument("--format", choices=["onnx", "openvino"], default="onnx")
    p.add_argument(
        "--output", required=True, type=Path, help="new or empty folder for the graph and anomaflow_export.json"
    )
    p.add_argument("--no-log", action="store_true", help="do not log the export to the model version in MLflow")
    p = sub.add_parser("review", help="review inspection verdicts in the browser and label them (labels in a database)")
    p.add_argument(
        "--results", required=True, type=Path, nargs="+", help="one or more `anomaflow inspect` output folders"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; any other needs --token)")
    p.add_argument("--port", type=int, default=8050)
    p.add_argument(
        "--token",
        default=os.environ.get("ANOMAFLOW_REVIEW_TOKEN"),
        help="required on every request, at least 16 characters (open the printed link once; a cookie keeps it); "
        "default $ANOMAFLOW_REVIEW_TOKEN",
    )
    p.add_argument(
        "--db",
        default=os.environ.get("ANOMAFLOW_REVIEW_DB"),
        help="SQLAlchemy URL of the label database (default $ANOMAFLOW_REVIEW_DB, "
        "else review.sqlite in the first results folder)",
    )
    p.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="another name the app answers to in the Host header (a DNS name, a proxy's; repeatable); "
        "others are refused, so a page on another name cannot reach it (DNS rebinding)",
    )
    p = sub.add_parser(
        "recalibrate",
        help="field precision/recall from reviewed labels and a threshold for a target; --apply registers it",
    )
    p.add_argument(
        "--results", required=True, type=Path, nargs="+", help="inspection output folders that were reviewed"
    )
    p.add_argument("--model", required=True, help="registered model name")
    p.add_argument("--version", default=None, help="model version (default: the one most rows were inspected with)")
    p.add_argument("--db", default=None, help="label database URL (default: review.sqlite in the first results folder)")
    target = p.add_mutually_exclusive_group()
    target.add_argument(
        "--target-recall",
        type=float,
        default=None,
        help="highest threshold that keeps this recall on the reviewed defects",
    )
    target.add_argument(
        "--target-fpr",
        type=float,
        default=None,
        help="lowest threshold with at most this FPR on the parts reviewed as good",
    )
    p.add_argument(
        "--apply", action="store_true", help="register the proposal as a new version; champion only if the gate passes"
    )
    p.add_argument("--min-reviewed", type=int, default=5, help="reviewed defects and good parts needed, each")
    p = sub.add_parser(
        "import-elpv",
        help="write the ELPV solar-cell images (pip install 'anomaflow[elpv]') "
        "as elpv_mono and elpv_poly in the MVTec layout",
    )
    p.add_argument("dest", type=Path, help="data root to write elpv_mono/ and elpv_poly/ under")
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the 80/20 split of the defect-free cells into train/good and test/good",
    )
    p.add_argument(
        "--source",
        type=Path,
        default=None,
        help="an ELPV data folder (labels.csv + images/); default: the installed package",
    )
    p = sub.add_parser("demo-data", help="write the generated demo dataset (MVTec layout) to PATH")
    p.add_argument("path", type=Path, help="dataset root; the category folder goes inside")
    p.add_argument("--category", default="demo", help="category folder name (default: demo)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--size", type=int, default=256, help="image side in px (default: 256)")
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
    handlers = {
        "train": cmd_train,
        "inspect": cmd_inspect,
        "export": cmd_export,
        "demo-data": cmd_demo_data,
        "import-elpv": cmd_import_elpv,
        "review": cmd_review,
        "recalibrate": cmd_recalibrate,
    }
    from anomaflow.model.data.datasets import DataError

    try:
        return handlers[args.command](args)
    except (DataError, FileExistsError, FileNotFoundError, ValueError, LookupError, TimeoutError) as exc:
        print(f"anomaflow: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
