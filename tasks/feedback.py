"""Reviewer labels back into the model: reviewed scores, field metrics, a recalibrated version."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from anomaflow.model.config import TrainConfig
from anomaflow.model.evaluation import feedback
from anomaflow.tasks import tracking
from anomaflow.tasks.registration import TRACKING_RETRIES
from anomaflow.tasks.reporting import artifact_key


def default_db(results_dirs: list[str]) -> str:
    """The review app's default label database (model.operations.results.default_label_db)."""
    from anomaflow.model.operations.results import default_label_db

    return default_label_db(results_dirs)


@task(name="load_reviewed", cache_policy=NO_CACHE)
def load_reviewed(
    results_dirs: list[str], db_url: str, model_name: str, version: str | None
) -> tuple[str, float, feedback.Reviewed]:
    """(model version, its threshold, the reviewed parts) from inspection folders and the label
    database. version None: the version most rows in the folders were inspected with."""
    from anomaflow.model.operations.results import Results
    from anomaflow.tasks.labels import LabelStore

    results = Results(results_dirs)
    df = results.frame[(results.frame["model_name"] == model_name) & (results.frame["decision"] != "ERROR")]
    if df.empty:
        raise LookupError(f"no rows of model {model_name!r} in {', '.join(results_dirs)}")
    version = version or str(df["model_version"].value_counts().idxmax())
    df = df[df["model_version"] == version].drop_duplicates("sha256")
    if df.empty:
        raise LookupError(f"no rows of {model_name} version {version} in {', '.join(results_dirs)}")
    latest = LabelStore(db_url).latest()
    labels = [latest[(s, version)].label if (s, version) in latest else "" for s in df["sha256"]]
    reviewed = feedback.reviewed(df["score"].tolist(), labels)
    get_run_logger().info(
        "%s v%s: %d reviewed parts (%d defects, %d good) of %d inspected",
        model_name,
        version,
        len(reviewed.scores),
        reviewed.defects,
        reviewed.goods,
        len(df),
    )
    return version, float(df["threshold"].iloc[-1]), reviewed


@task(name="log_field_metrics", cache_policy=NO_CACHE, **TRACKING_RETRIES)
def log_field_metrics(
    model_name: str,
    version: str,
    current: dict[str, float],
    proposal: dict[str, float] | None,
    table: list[dict[str, float]],
    reviewed: feedback.Reviewed,
) -> str:
    """Field precision and recall of the version from reviewed labels, and the proposal, as an
    MLflow run of the `<model>-review` experiment (also tagged on the model version)."""
    metrics = {f"field_{k}": v for k, v in current.items() if k != "threshold"}
    metrics.update(
        reviewed_defects=float(reviewed.defects), reviewed_good=float(reviewed.goods), threshold=current["threshold"]
    )
    if proposal:
        metrics.update({f"proposed_{k}": v for k, v in proposal.items()})
    record = tracking.RunRecord(
        experiment=f"{model_name}-review",
        run_name=f"review v{version}",
        params={"model_name": model_name, "model_version": version},
        metrics=metrics,
        history=[],
        tags={"anomaflow.model_version": version},
        tables={"threshold_table": table},
    )
    run_id = tracking.log_run(record, finish=True)
    tracking.tag_version(
        model_name,
        version,
        {
            "anomaflow.field_precision": f"{current['precision']:.4f}",
            "anomaflow.field_recall": f"{current['recall']:.4f}",
            "anomaflow.field_reviewed": f"{reviewed.defects} defects, {reviewed.goods} good",
        },
    )
    create_table_artifact(
        [{k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()} for row in table[:200]],
        key=artifact_key("review-thresholds", model_name),
        description=f"{model_name} v{version}: reviewed parts by threshold",
    )
    return run_id


@task(name="register_recalibrated", cache_policy=NO_CACHE, **TRACKING_RETRIES)
def register_recalibrated(model_name: str, version: str, threshold: float, run_id: str, why: str) -> str:
    """The same weights with a new threshold as a new model version (not champion: a gate decides)."""
    det = tracking.load_registered_detector(model_name, version)
    old = det.threshold
    det.calibrate(threshold=threshold)
    uri = tracking.log_model(run_id, det)
    new_version, _ = tracking.register(uri, model_name, run_id, first_champion=False)
    tracking.finish_run(run_id)
    tracking.tag_version(
        model_name,
        new_version,
        {
            "anomaflow.recalibrated_from": version,
            "anomaflow.threshold_before": f"{old:.8g}",
            "anomaflow.threshold_source": why,
        },
    )
    get_run_logger().info(
        "registered %s v%s: v%s's weights with threshold %.6g (was %.6g)",
        model_name,
        new_version,
        version,
        threshold,
        old,
    )
    return new_version


@task(name="publish_recalibration", cache_policy=NO_CACHE)
def publish_recalibration(
    model_name: str, version: str, current: dict[str, Any], proposal: dict[str, Any] | None, outcome: str
) -> None:
    def fmt(d: dict[str, Any]) -> str:
        return (
            f"threshold {d['threshold']:.6g}: precision {d['precision']:.3f}, recall {d['recall']:.3f}, "
            f"FPR {d['fpr']:.3f} (tp {d['tp']}, fp {d['fp']}, fn {d['fn']}, tn {d['tn']})"
        )

    lines = [f"# Recalibration of {model_name} v{version} from reviewed labels", "", f"- now: {fmt(current)}"]
    if proposal:
        lines.append(f"- proposed: {fmt(proposal)}")
    lines.append(f"- {outcome}")
    create_markdown_artifact(
        "\n".join(lines), key=artifact_key("recalibration", model_name), description="threshold from reviewed labels"
    )


class Originals:
    """The original images of inspected parts, found through each results folder's inputs.json
    (the folders the inspection read): an original that is gone, or whose content is no longer
    the sha256 that was reviewed, is not found, with why."""

    def __init__(self, results) -> None:  # model.operations.results.Results
        self.results = results
        self._inputs: dict[int, list[str]] = {}

    def inputs(self, folder: int) -> list[str]:
        import json

        from anomaflow.model.operations.inspection import INPUTS_FILE

        if folder not in self._inputs:
            path = self.results.folders[folder] / INPUTS_FILE
            self._inputs[folder] = json.loads(path.read_text()) if path.is_file() else []
        return self._inputs[folder]

    def find(self, row: Any) -> tuple[Path | None, str]:
        """(the original of a results row, '') or (None, why it is not used)."""
        from anomaflow.model.operations.inspection import read_hashed

        inputs = self.inputs(int(row.folder))
        source = next((Path(d) / row.path for d in inputs if (Path(d) / row.path).is_file()), None)
        if source is None:
            return None, f"its original is no longer under {inputs or 'an unknown input folder'}"
        try:
            sha, _ = read_hashed(source)
        except OSError as exc:
            return None, f"cannot read {source} ({exc.strerror or exc})"
        if sha != row.sha256:
            return None, f"{source}: content changed since it was reviewed"
        return source, ""


@task(name="curate_reviewed_normals", cache_policy=NO_CACHE)
def curate_reviewed_normals(
    results_dirs: list[str], db_url: str, model_name: str, data_root: str, category: str, curated_root: str
) -> tuple[str, int]:
    """(curated data root, parts added): the dataset plus every DEFECT verdict reviewers called
    good (a false alarm), copied with provenance (model.curation). Originals are found through
    the folder's inputs.json and must still have the content that was reviewed; others are
    skipped with a warning."""
    import json

    from anomaflow.model.data.curation import Addition, curate
    from anomaflow.model.operations.results import Results
    from anomaflow.tasks.labels import LabelStore

    log = get_run_logger()
    results = Results(results_dirs)
    originals = Originals(results)
    latest = LabelStore(db_url).latest()
    additions, missing = [], 0
    df = results.frame[
        (results.frame["model_name"] == model_name) & (results.frame["decision"] == "DEFECT")
    ].drop_duplicates("sha256")
    for row in df.itertuples():
        lab = latest.get((row.sha256, row.model_version))
        if lab is None or lab.label != "good":
            continue
        source, why = originals.find(row)
        if source is None:
            missing += 1
            log.warning("false alarm %s (%s) not added: %s", row.path, row.sha256[:12], why)
            continue
        additions.append(
            Addition(
                str(source),
                row.sha256,
                model_name,
                str(row.model_version),
                lab.reviewer,
                lab.created_at.isoformat(timespec="seconds"),
                lab.note,
            )
        )
    dest = curate(data_root, category, additions, curated_root)
    info = json.loads((dest / "curation.json").read_text())
    for r in info["refused"]:
        log.warning("false alarm %s not added: %s", r["source"], r["reason"])
    log.info(
        "curated %s: %d reviewed false alarm(s) added to train/good (%d refused, %d not found)",
        dest,
        len(info["added"]),
        len(info["refused"]),
        missing,
    )
    return str(Path(curated_root)), len(info["added"])


@task(name="reviewed_parts", cache_policy=NO_CACHE)
def reviewed_parts(
    results_dirs: list[str], db_url: str, model_name: str, dataset_dir: str | None = None
) -> list[feedback.ReviewedPart]:
    """Every part of model_name's rows in the folders with a definite latest label (defect and
    missed: defect, good: good; unsure left out), once per content: the newest label wins when the
    part was reviewed under several versions. Originals are found as for curation (gone or changed:
    skipped with a warning). dataset_dir: the challenger's category folder; a part whose content is
    in its train or test split is left out: a model is not calibrated on its own training images,
    and a threshold set on test images would flatter the metrics the run reports on them."""
    from anomaflow.model.data.curation import content_hashes
    from anomaflow.model.operations.results import Results
    from anomaflow.tasks.labels import LabelStore

    log = get_run_logger()
    results = Results(results_dirs)
    originals = Originals(results)
    latest = LabelStore(db_url).latest()
    skip = set(content_hashes(dataset_dir, "train", "test")) if dataset_dir else set()
    df = results.frame[(results.frame["model_name"] == model_name) & (results.frame["decision"] != "ERROR")]
    newest: dict[str, tuple[Any, Any]] = {}
    for row in df.itertuples():
        lab = latest.get((row.sha256, str(row.model_version)))
        if lab is None or lab.label not in feedback.TRUTH or row.sha256 in skip:
            continue
        if row.sha256 not in newest or lab.id > newest[row.sha256][1].id:  # ids grow with every label
            newest[row.sha256] = (row, lab)
    parts, missing = [], 0
    for sha, (row, lab) in newest.items():
        source, why = originals.find(row)
        if source is None:
            missing += 1
            log.warning("reviewed part %s (%s) left out: %s", row.path, sha[:12], why)
            continue
        parts.append(feedback.ReviewedPart(str(source), sha, feedback.TRUTH[lab.label]))
    log.info(
        "%s: %d reviewed parts for calibration (%d defects, %d good; %d not found, %d in the dataset)",
        model_name,
        len(parts),
        sum(p.truth for p in parts),
        sum(1 - p.truth for p in parts),
        missing,
        len(skip & {s for s in df["sha256"]}),
    )
    return parts


def score_parts(detector: Any, parts: list[feedback.ReviewedPart], batch_size: int = 16) -> feedback.Reviewed:
    """The reviewed parts as this detector scores them: decoded and framed by its own preprocessing
    through the inspection's scoring step (train = inspect = serve). A part whose file no longer has
    the reviewed content, or that fails to decode, is left out with a warning."""
    import tempfile

    from anomaflow.model.operations.inspection import batches, read_item, score_items

    log = get_run_logger()
    scores: list[float | None] = []
    truth: list[int] = []
    with tempfile.TemporaryDirectory(prefix="anomaflow-reviewed-") as tmp:
        for chunk in batches(parts, batch_size):
            items = [read_item(Path(p.path), Path(p.path).parent) for p in chunk]
            rows = score_items(
                detector,
                items,
                Path(tmp),
                threshold=float(detector.threshold or 0.0),
                model_name="",
                model_version="",
                write_figures=False,
            )
            by_sha = {r.sha256: r for r in rows}
            for p, item in zip(chunk, items):
                row = by_sha.get(item.sha256)
                if item.sha256 != p.sha256 or row is None or row.score is None:
                    why = row.error if row is not None and row.error else "content changed since it was reviewed"
                    log.warning("reviewed part %s left out: %s", p.path, why)
                    continue
                scores.append(row.score)
                truth.append(p.truth)
    return feedback.reviewed_truth(scores, truth)


@task(name="field_of_version", cache_policy=NO_CACHE, **TRACKING_RETRIES)
def field_of_version(model_name: str, version: str, parts: list[feedback.ReviewedPart]) -> dict[str, float]:
    """Field precision / recall / FPR of a registered version on the reviewed parts, scored by it at
    its own threshold (and the counts they rest on)."""
    tracking.configure()
    det = tracking.load_registered_detector(model_name, version)
    r = score_parts(det, parts)
    field = feedback.at_threshold(r, float(det.threshold))
    field.update(defects=r.defects, goods=r.goods)
    get_run_logger().info(
        "%s v%s on %d reviewed parts at threshold %.6g: precision %.3f, recall %.3f",
        model_name,
        version,
        len(r.scores),
        field["threshold"],
        field["precision"],
        field["recall"],
    )
    return field


@task(name="reviewed_operating_point", cache_policy=NO_CACHE, **TRACKING_RETRIES)
def reviewed_operating_point(model_name: str, version: str, field: dict[str, float]) -> tuple[float | None, str]:
    """(target recall, where it came from) a challenger keeps: the higher of the target recall the
    version's threshold was set for (its `anomaflow.threshold_source` tag: a recalibration or an
    earlier retraining with reviews) and its field recall on the reviewed parts now. The tag keeps
    the operating point reviewers chose; the field recall keeps the gate reachable, which asks the
    challenger for at least the champion's field recall on the same parts."""
    tracking.configure()
    source = tracking.version_tags(model_name, version).get("anomaflow.threshold_source", "")
    return feedback.operating_point(feedback.target_recall_of(source), field["recall"], version)


def review_calibration(
    results_dirs: list[str], db_url: str, config: TrainConfig, champion_version: str | None, min_reviewed: int
) -> tuple[feedback.ReviewCalibration, dict[str, float] | None]:
    """What a retraining with reviews calibrates its challenger on (the reviewed parts outside its
    dataset, the champion's operating point) and the champion's field metrics the gate compares
    with: None when there is no champion, or too few reviewed parts of a kind to compare on."""
    dataset_dir = str(Path(config.data_root or "") / config.category)
    parts = reviewed_parts(results_dirs, db_url, config.model_name, dataset_dir)
    target, why, champion_field = None, "no champion", None
    if champion_version is not None and parts:
        champion_field = field_of_version(config.model_name, champion_version, parts)
        target, why = reviewed_operating_point(config.model_name, champion_version, champion_field)
        short = feedback.too_few_to_compare(champion_field, min_reviewed)
        if short:
            get_run_logger().info("field comparison left out of the gate: %s", short)
            champion_field = None
    return feedback.ReviewCalibration(parts, target, min_reviewed, why), champion_field


@task(name="tag_threshold_source", cache_policy=NO_CACHE, **TRACKING_RETRIES)
def tag_threshold_source(model_name: str, version: str, challenger: dict[str, Any]) -> None:
    """Say on the challenger's version where its threshold came from (as a recalibrated version does)."""
    tags = {"anomaflow.threshold_source": str(challenger.get("threshold_source", ""))}
    if "threshold_heldout" in challenger:
        tags["anomaflow.threshold_heldout"] = f"{float(challenger['threshold_heldout']):.8g}"
    tracking.tag_version(model_name, version, tags)


def curated_config(
    config: TrainConfig, review_results: list[str], review_db: str | None, curated_root: str | None
) -> TrainConfig:
    """The config of a challenger trained on the dataset plus the reviewed false alarms (a curated
    copy under curated_root, default <data_root>-curated)."""
    if config.data_root is None:
        raise ValueError("review_results needs config.data_root: the dataset the reviewed parts are added to")
    curated, _added = curate_reviewed_normals(
        review_results,
        review_db or default_db(review_results),
        config.model_name,
        config.data_root,
        config.category,
        curated_root or f"{config.data_root.rstrip('/')}-curated",
    )
    return config.model_copy(update={"data_root": curated})
