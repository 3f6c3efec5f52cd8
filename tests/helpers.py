"""Setup several test files repeat: quick CLI arguments, tiny autoencoder configs and detectors, inspection runs."""

from __future__ import annotations

from pathlib import Path

# Metric keys every evaluated run on the demo set reports.
EVAL_METRICS = ("image_auroc_mean", "image_auroc_max", "pixel_auroc", "pixel_aupro", "pixel_iou")
DEMO_DEFECT_IOU = ("pixel_iou_blob", "pixel_iou_crack", "pixel_iou_scratch")


def train_args(
    data: Path, out: Path, *flags: str, category: str = "demo", detector: str = "patchcore", image_size: int = 64
) -> list[str]:
    """`anomaflow train` arguments for a quick run on 2 threads; flags go last."""
    return [
        "train",
        "--data",
        str(data),
        "--category",
        category,
        "--output",
        str(out),
        "--detector",
        detector,
        "--image-size",
        str(image_size),
        "--threads",
        "2",
        *flags,
    ]


def tiny_autoencoder(image_size: int = 64, epochs: int = 2):
    """An 8-channel autoencoder config: trains in seconds on 2 cores."""
    from anomaflow.model.config import AutoencoderConfig

    return AutoencoderConfig(image_size=image_size, base_channels=8, latent_channels=8, epochs=epochs, batch_size=8)


def tiny_config(root, *, image_size: int = 64, epochs: int = 2, **kw):
    """A TrainConfig for the tiny autoencoder on root's demo category."""
    from anomaflow.model.config import TrainConfig

    return TrainConfig(
        data_root=str(root),
        category="demo",
        detector="autoencoder",
        autoencoder=tiny_autoencoder(image_size, epochs),
        num_threads=2,
        **kw,
    )


def fit_tiny_autoencoder(demo_root: Path, image_size: int):
    """The tiny autoencoder fitted for one epoch on the demo train split (thresholds left to the caller)."""
    from anomaflow.model.data.datasets import load_images, scan_mvtec
    from anomaflow.model.detectors.autoencoder import AutoencoderDetector

    det = AutoencoderDetector(tiny_autoencoder(image_size, epochs=1))
    det.fit(load_images(scan_mvtec(demo_root, "demo").train, image_size), progress=None)
    return det


def spy_torch_load(monkeypatch) -> list:
    """Record the weights_only argument of every torch.load call: loading a model must not unpickle."""
    import torch

    calls: list = []
    real_load = torch.load

    def spy(*a, **kw):
        calls.append(kw.get("weights_only"))
        return real_load(*a, **kw)

    monkeypatch.setattr(torch, "load", spy)
    return calls


def inspect_inbox(det, inbox: Path, out: Path, *, threshold: float, version: str = "1", **kw):
    """Inspect every file in inbox into the ledger at out, as version `version` of model "m"."""
    from anomaflow.model.operations import inspection

    with inspection.Ledger(out) as ledger:
        return inspection.inspect_files(
            det,
            inspection.list_inbox(inbox),
            inbox,
            ledger,
            model_name="m",
            model_version=version,
            threshold=threshold,
            **kw,
        )


def inspect_args(inbox: Path, out: Path, model: str, *flags: str) -> list[str]:
    """`anomaflow inspect` arguments for inbox into out with a registered model; flags go last."""
    return ["inspect", "--input", str(inbox), "--output", str(out), "--model", model, *flags]
