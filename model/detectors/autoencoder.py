"""Convolutional autoencoder detector: reconstruct good parts, flag what it cannot rebuild.

CPU-first: a small strided encoder down to an 8x8 bottleneck (narrow enough that it cannot
simply copy its input), a mirrored upsampling decoder, seeded training with per-epoch
progress. The weights of the last epoch are kept: the held-out normal loss is logged per epoch to
watch training but chooses nothing, so the same held-out images can calibrate the thresholds
without having selected the model first (a selected epoch looks best on exactly those images).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from anomaflow.model.config import AutoencoderConfig
from anomaflow.model.detectors.base import Detector, ProgressFn, save_torch_atomic, to_tensor
from anomaflow.model.detectors.scoring import gaussian_blur, residual_map, ssim_map

WEIGHTS_FILE = "weights.pt"
BOTTLENECK = 8  # spatial size of the latent map


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.LeakyReLU(0.2, inplace=True),
    )


class ConvAutoencoder(nn.Module):
    """Encoder: log2(size/8) stride-2 stages; 1x1 bottleneck; decoder mirrors with upsampling."""

    def __init__(self, image_size: int = 128, base_channels: int = 32, latent_channels: int = 32) -> None:
        super().__init__()
        n_stages = int(round(math.log2(image_size / BOTTLENECK)))
        if BOTTLENECK * 2**n_stages != image_size:
            raise ValueError(f"image_size {image_size} must be 8 x a power of two (e.g. 64, 128, 256)")
        widths = [min(base_channels * 2**i, base_channels * 8) for i in range(n_stages)]
        enc: list[nn.Module] = []
        cin = 3
        for w in widths:
            enc.append(_block(cin, w, stride=2))
            cin = w
        self.encoder = nn.Sequential(*enc)
        self.to_latent = nn.Conv2d(cin, latent_channels, 1)
        self.from_latent = nn.Sequential(nn.Conv2d(latent_channels, cin, 1), nn.LeakyReLU(0.2, inplace=True))
        dec: list[nn.Module] = []
        for w_out in list(reversed(widths[:-1])) + [widths[0]]:
            dec += [nn.Upsample(scale_factor=2, mode="nearest"), _block(cin, w_out, stride=1)]
            cin = w_out
        self.decoder = nn.Sequential(*dec)
        self.head = nn.Conv2d(cin, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.to_latent(self.encoder(x))
        return torch.sigmoid(self.head(self.decoder(self.from_latent(z))))


def reconstruction_loss(x: torch.Tensor, recon: torch.Tensor, loss: str) -> torch.Tensor:
    if loss == "mse":
        return ((x - recon) ** 2).mean()
    if loss == "l1":
        return (x - recon).abs().mean()
    if loss == "ssim_l1":
        return (1.0 - ssim_map(x, recon).mean()) + (x - recon).abs().mean()
    raise ValueError(f"unknown loss {loss!r}; expected mse, l1 or ssim_l1")


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random flips and 90° rotations per batch: they keep a top-view good part good. A
    non-square frame turns 90° into 180° so the batch keeps its frame."""
    k = int(torch.randint(0, 4, (1,), generator=gen))
    if k % 2 and x.shape[2] != x.shape[3]:
        k = 2
    if k:
        x = torch.rot90(x, k, dims=(2, 3))
    if bool(torch.randint(0, 2, (1,), generator=gen)):
        x = torch.flip(x, dims=(3,))
    return x


def _print_progress(rec: dict[str, Any]) -> None:
    val = f" val_loss={rec['val_loss']:.5f}" if rec.get("val_loss") is not None else ""
    print(
        f"epoch {rec['epoch']:>3}/{rec['epochs']} loss={rec['train_loss']:.5f}{val} ({rec['seconds']:.1f}s)", flush=True
    )


class AutoencoderDetector(Detector):
    family = "autoencoder"

    def __init__(
        self, config: AutoencoderConfig | None = None, score_method: str = "smoothed_max", seed: int = 0
    ) -> None:
        self.config = config or AutoencoderConfig()
        super().__init__(self.config.image_size, score_method, self.config.score_sigma)
        self.seed = seed
        torch.manual_seed(seed)
        self.net = ConvAutoencoder(self.config.image_size, self.config.base_channels, self.config.latent_channels)
        self.history: list[dict[str, Any]] = []

    # -- training ------------------------------------------------------------------------
    def _loss_on(self, x: torch.Tensor) -> float:
        self.net.eval()
        total, n = 0.0, 0
        with torch.inference_mode():
            for i in range(0, len(x), 32):
                xb = x[i : i + 32]
                total += float(reconstruction_loss(xb, self.net(xb), self.config.loss)) * len(xb)
                n += len(xb)
        return total / max(n, 1)

    def fit(
        self, images: np.ndarray, holdout: np.ndarray | None = None, progress: ProgressFn | None = _print_progress
    ) -> list[dict[str, Any]]:
        cfg = self.config
        if len(images) == 0:
            raise ValueError("cannot train on zero images")
        x = to_tensor(self.set_frame(images))
        xv = to_tensor(self.check_images(holdout)) if holdout is not None and len(holdout) else None
        torch.manual_seed(self.seed)
        gen = torch.Generator().manual_seed(self.seed)
        opt = torch.optim.Adam(self.net.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs, eta_min=cfg.learning_rate * 0.05)
        self.history = []
        for epoch in range(1, cfg.epochs + 1):
            t0 = time.perf_counter()
            self.net.train()
            order = torch.randperm(len(x), generator=gen)
            total = 0.0
            for i in range(0, len(x), cfg.batch_size):
                xb = x[order[i : i + cfg.batch_size]]
                if len(xb) < 2 and len(x) >= 2:
                    continue  # BatchNorm needs > 1 sample; the leftover is seen next epoch
                if cfg.augment:
                    xb = _augment(xb, gen)
                loss = reconstruction_loss(xb, self.net(xb), cfg.loss)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(xb)
            sched.step()
            rec: dict[str, Any] = {"epoch": epoch, "epochs": cfg.epochs, "train_loss": total / len(x), "val_loss": None}
            if xv is not None:
                rec["val_loss"] = self._loss_on(xv)
            rec["seconds"] = time.perf_counter() - t0
            self.history.append(rec)
            if progress:
                progress(rec)
        self.net.eval()
        return self.history

    # -- inference -----------------------------------------------------------------------
    def reconstruct(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        x = to_tensor(self.check_images(images))
        self.net.eval()
        with torch.inference_mode():
            out = [self.net(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
        return (torch.cat(out).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)

    def map_tensor(self, x: torch.Tensor, exportable: bool = False) -> torch.Tensor:
        """[0,1] images (N,3,H,W) -> smoothed residual maps (N,H,W); model.operations.export traces this."""
        m = residual_map(x, self.net(x), self.config.map_kind).unsqueeze(1)
        return gaussian_blur(m, self.config.map_sigma).squeeze(1)

    def anomaly_maps(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        x = to_tensor(self.check_images(images))
        self.net.eval()
        maps = []
        with torch.inference_mode():
            for i in range(0, len(x), batch_size):
                maps.append(self.map_tensor(x[i : i + batch_size]))
        if not maps:
            return np.zeros((0, *self.frame), np.float32)
        return torch.cat(maps).numpy().astype(np.float32, copy=False)

    # -- persistence ---------------------------------------------------------------------
    def config_dict(self) -> dict[str, Any]:
        return {"autoencoder": self.config.model_dump(), "seed": self.seed}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "AutoencoderDetector":
        return cls(AutoencoderConfig.model_validate(config["autoencoder"]), seed=config.get("seed", 0))

    def _save_weights(self, directory: Path) -> None:
        save_torch_atomic(self.net.state_dict(), directory / WEIGHTS_FILE)

    def _load_weights(self, directory: Path) -> None:
        state = torch.load(directory / WEIGHTS_FILE, map_location="cpu", weights_only=True)
        self.net.load_state_dict(state)
        self.net.eval()
