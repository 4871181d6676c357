"""The hard synthetic world ranks methods (issue 13): pretrained beats random-init CNN features, the default
pipeline (CNN + spectral, blocks scaled) beats the spectral baseline, and the default world is easier than it.
Orderings, not absolute numbers.

One small scene (1,792 m at 1 m, chips of 64 px: ~600 labelled chips, a spatial split), the features computed
once, geoclf train's logistic regression on each set. The networks see the chips at their own 64 px: 1 m
texture, at a twelfth of a 224 px forward pass (the default featurizer resizes to 224: benchmarks/accuracy.py
measures that pipeline on a larger hard scene). docs/synth.md states the figures.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import tiling
from geoclf.chips import read_batch
from geoclf.classifiers import make_classifier
from geoclf.featurizers.cnn import CNNFeaturizer
from geoclf.featurizers.combined import CombinedFeaturizer
from geoclf.featurizers.spectral import SpectralFeaturizer
from tiling.io import ChipReader
from tiling.synth import make_scene

CHIP = 64


def _chips(root, preset: str) -> dict:
    scene = make_scene(root / "scene", size_m=1792, seed=0, preset=preset)
    tiling.tile([scene.naip], scene.nlcd, root / "chips", params=tiling.TileParams(chip_size=CHIP), progress=False)
    index = tiling.read_index(root / "chips")
    index = index[index["label"].notna()].reset_index(drop=True)
    with ChipReader((1, 2, 3, 4), CHIP) as reader:
        chips = read_batch(index, reader)
    return {"chips": chips, "label": index["label"].to_numpy(), "train": (index["split"] == "train").to_numpy()}


@pytest.fixture(scope="module")
def hard(tmp_path_factory):
    return _chips(tmp_path_factory.mktemp("hard-world"), "hard")


def _accuracy(features: np.ndarray, data: dict, blocks: dict | None = None) -> float:
    train, label = data["train"], data["label"]
    model = make_classifier("logistic_regression", blocks=blocks).fit(features[train], label[train])
    return float(model.score(features[~train], label[~train]))


def _lite0(weights: str) -> CNNFeaturizer:
    return dataclasses.replace(CNNFeaturizer.create("efficientnet_lite0", weights), input_size=None)


def _batched(featurizer, chips: np.ndarray) -> np.ndarray:
    return np.concatenate([featurizer.featurize(chips[i:i + 64]) for i in range(0, len(chips), 64)])


def _cnn(data: dict, weights: str) -> np.ndarray:
    return _batched(_lite0(weights), data["chips"][:, :3])


def _spectral(data: dict) -> np.ndarray:
    return SpectralFeaturizer(bands=(1, 2, 3, 4)).featurize(data["chips"])


@pytest.fixture(scope="module")
def hard_features(hard):
    # the default featurizer (geoclf featurize's CombinedFeaturizer: Lite0 of RGB, then RGBN statistics), run once
    combined = CombinedFeaturizer(_lite0("default"), SpectralFeaturizer())
    vectors = _batched(combined, hard["chips"])
    cnn, spectral = (slice(*span) for span in combined.blocks.values())
    return {"default": vectors, "blocks": combined.blocks, "pretrained": vectors[:, cnn],
            "spectral": vectors[:, spectral], "random": _cnn(hard, "none")}


def test_pretrained_features_beat_random_init_ones(hard, hard_features):
    pretrained, random = _accuracy(hard_features["pretrained"], hard), _accuracy(hard_features["random"], hard)
    assert pretrained > random + 0.15, (pretrained, random)  # 86% vs 64% (default world: 99% vs 89%)


def test_the_default_pipeline_beats_the_spectral_baseline(hard, hard_features):
    """geoclf train's two fits on one split: the default (combined vectors, each block standardized and weighed
    on its own) against the baseline it reports beside it (the spectral statistics, standardized)."""
    np.testing.assert_array_equal(hard_features["spectral"], _spectral(hard))  # the baseline's very numbers
    spectral = _accuracy(hard_features["spectral"], hard)
    default = _accuracy(hard_features["default"], hard, blocks=hard_features["blocks"])
    assert default > spectral + 0.04, (default, spectral)  # 86% vs 78% (default world: 99% vs 95%)


def test_the_hard_world_is_hard_and_the_default_one_easy(hard, hard_features, tmp_path):
    easy = _chips(tmp_path, "default")
    hard_spectral, easy_spectral = _accuracy(hard_features["spectral"], hard), _accuracy(_spectral(easy), easy)
    assert hard_spectral < easy_spectral - 0.1, (hard_spectral, easy_spectral)
    assert _accuracy(hard_features["pretrained"], hard) < 0.95
