"""Data validation gate: the flow stops here, with every problem named, before any compute."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from anomaflow.model import pipeline
from anomaflow.model.config import TrainConfig
from anomaflow.model.data import datasets as data
from anomaflow.model.data.curation import curation_summary
from anomaflow.model.evaluation import plots


class DatasetInvalid(data.DataError):
    """The dataset failed validation; the message lists each file and its fault."""


@dataclass
class ValidatedData:
    dataset: data.Dataset
    report: data.ValidationReport
    sample_grid: Path | None
    curation: str | None = None  # a curated copy (model.curation): what was added and from where


@task(name="validate_dataset", cache_policy=NO_CACHE)
def validate_dataset(config: TrainConfig, workdir: Path) -> ValidatedData:
    log = get_run_logger()
    root, category = pipeline.resolve_data_root(config)
    ds = pipeline.load_dataset(root, category)
    report = data.validate_dataset(ds)
    log.info("%s", report.summary())
    if not report.ok:
        try:
            report.raise_for_problems()
        except data.DataError as exc:
            raise DatasetInvalid(None, str(exc)) from None
    grid = plots.save_figure(
        plots.plot_sample_grid(pipeline.sample_groups(ds, config.image_size)), workdir / "dataset_samples.png"
    )
    curation = curation_summary(root / category)
    if curation:
        log.info("curated dataset: %s", curation)
    return ValidatedData(ds, report, grid, curation)
