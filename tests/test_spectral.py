"""The spectral featurizer: exact band statistics, no torch, and a model that trains, registers and scores on it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tiling
from geoclf.features import featurize, read_features
from geoclf.featurizers.spectral import SpectralFeaturizer
from tiling.errors import InputError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def chips(quickstart):
    return quickstart[0] / "chips"


@pytest.fixture(scope="module")
def spectral(chips, tmp_path_factory):
    """Spectral features of the quickstart's chips (seconds: no network)."""
    return featurize(chips, tmp_path_factory.mktemp("spectral") / "features", backbone="spectral",
                     scheduler="sync", progress=False, record_run=False)


def test_statistics_are_those_of_the_pixels_with_data():
    rng = np.random.default_rng(0)
    chips = rng.integers(0, 256, size=(4, 4, 40, 40), dtype=np.uint8)
    chips[0, :, :10] = 0  # a nodata strip: every band 0
    chips[1, 0, :5] = 0  # red 0 where the other bands have data: pixels with data, of value 0
    chips[3] = 0  # no data at all: no statistics
    featurizer = SpectralFeaturizer()
    vectors = featurizer.featurize(chips)
    names = featurizer.feature_names
    assert vectors.shape == (4, 22) and featurizer.feature_dim == 22
    assert not vectors[3].any()
    valid = chips.any(axis=1)
    for i in range(3):
        for b, band in enumerate(("red", "green", "blue", "nir")):
            pixels = chips[i, b][valid[i]] / 255.0
            expected = {"mean": pixels.mean(), "std": pixels.std(),
                        **{f"p{q}": np.percentile(pixels, q, method="inverted_cdf") for q in (10, 50, 90)}}
            for stat, value in expected.items():
                assert vectors[i, names.index(f"{band}_{stat}")] == pytest.approx(value, abs=1e-5), (i, band, stat)
        red, nir = chips[i, 0][valid[i]].astype(float), chips[i, 3][valid[i]].astype(float)
        ndvi = (nir - red) / np.maximum(nir + red, 1)
        assert vectors[i, names.index("ndvi_mean")] == pytest.approx(ndvi.mean(), abs=1e-5)
        assert vectors[i, names.index("ndvi_std")] == pytest.approx(ndvi.std(), abs=1e-4)
    # RGB imagery: the same statistics of three bands, no NDVI
    rgb = SpectralFeaturizer().for_band_count(3)
    assert rgb.bands == (1, 2, 3) and rgb.feature_dim == 15 and not rgb.has_ndvi
    np.testing.assert_array_equal(rgb.featurize(chips[:, :3]), vectors[:, :15])


def test_featurize_spectral_imports_no_torch(chips, tmp_path):
    """``geoclf featurize --backbone spectral`` runs where torch is not even importable."""
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "torch.py").write_text("raise ImportError('torch is blocked in this test')\n")
    out = tmp_path / "f"
    code = ("import sys; from geoclf.cli import main\n"
            "try:\n"
            f"    main(['featurize', '--chips', {str(chips)!r}, '--out', {str(out)!r}, '--backbone', 'spectral',"
            " '--scheduler', 'sync'])\n"
            "except SystemExit as e:\n"
            "    assert not e.code, e.code\n"
            "assert 'torch' not in sys.modules and 'torchvision' not in sys.modules\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    meta, table = read_features(out)
    assert meta["featurizer"] == "spectral" and meta["bands"] == [1, 2, 3, 4] and meta["feature_dim"] == 22
    assert len(table) == len(tiling.read_index(chips))


def test_a_spectral_model_trains_registers_and_scores(spectral, chips, runs_dir, tmp_path):
    from geoclf.classifiers import train_classifier
    from geoclf.models import load_model
    from geoclf.registry import register_model
    from geoclf.score import score

    with pytest.raises(InputError, match="a model on spectral features has no network to export"):
        train_classifier(spectral, name="lr-spectral", runs_dir=runs_dir, export=True)  # refused before fitting
    result = train_classifier(spectral, name="lr-spectral", runs_dir=runs_dir, export=None)  # geoclf train's auto
    assert not result.warnings and not (result.artifact_dir / "network.onnx").exists()  # nothing to export
    assert result.evaluation["accuracy"] > 0.8  # band statistics separate the synthetic classes well
    with pytest.raises(InputError, match="has no network to export"):  # --export that cannot: nothing registered
        register_model("lr-spectral", "landuse-spectral", runs_dir=runs_dir, export=True)
    version = register_model("lr-spectral", "landuse-spectral", runs_dir=runs_dir)
    assert version.version == 1 and "geoclf.export_sha256" not in version.tags
    model = load_model(version.ref, runs_dir=runs_dir)
    spec = json.loads((model.path / "model.json").read_text())
    assert spec["featurizer"] == "spectral" and spec["bands"] == [1, 2, 3, 4]

    # scoring rebuilds the featurizer model.json describes and computes exactly the training vectors
    meta, table = read_features(spectral)
    assert model.featurizer == SpectralFeaturizer.from_meta(meta)
    rows = tiling.read_index(chips).set_index("chip_id").loc[table["chip_id"]]
    with tiling.ChipReader(bands=model.bands, size=model.chip_size) as reader:
        batch = np.stack([reader.read(r.source, (r.col_off, r.row_off, r.width, r.height))
                          for r in rows.itertuples()])
    stored = np.stack(table["features"])
    np.testing.assert_array_equal(model.featurize(batch), stored)

    written = score(version.ref, tmp_path / "map", chips=chips, scheduler="sync", runs_dir=runs_dir,
                    progress=False, html_map=False)
    import pandas as pd

    predictions = pd.read_parquet(written["predictions"]).set_index("chip_id")
    expected = model.predict_features(stored)
    assert (predictions.loc[table["chip_id"], "pred"].to_numpy() == expected).all()


def test_the_default_pipeline_beats_the_spectral_baseline_on_the_quickstart(quickstart):
    """Issue 13's bar: Lite0 + spectral statistics (block-scaled) above standardized statistics + LR, same split."""
    from geoclf import runs

    record = runs.get_run("lr-lite0", runs_dir=quickstart[0] / "runs")
    assert record.params["feature_dim"] == 1280 + 22
    assert record.metrics["accuracy"] > record.metrics["baseline.accuracy"], record.metrics


def test_combined_featurizer_is_the_cnn_block_then_the_spectral_block(quickstart):
    from geoclf.featurizers import featurizer_from_meta, featurizer_from_model, make_featurizer
    from geoclf.featurizers.combined import CombinedFeaturizer
    from geoclf.models import load_model

    combined = make_featurizer("efficientnet_lite0", spectral=True)
    assert isinstance(combined, CombinedFeaturizer) and combined.bands == (1, 2, 3, 4)
    assert combined.blocks == {"cnn": [0, 1280], "spectral": [1280, 1302]}
    rng = np.random.default_rng(1)
    chips = rng.integers(1, 256, size=(2, 4, 64, 64), dtype=np.uint8)
    vectors = combined.featurize(chips)
    np.testing.assert_array_equal(vectors[:, :1280], combined.cnn.featurize(chips[:, :3]))
    np.testing.assert_array_equal(vectors[:, 1280:], SpectralFeaturizer().featurize(chips))
    # one description in features.json and model.json, rebuilt equal
    assert featurizer_from_meta(combined.describe()) == combined
    assert featurizer_from_model(combined.describe_model()) == combined
    rgb = combined.for_band_count(3)
    assert rgb.bands == (1, 2, 3) and rgb.feature_dim == 1280 + 15
    # the quickstart's model scores with the combined featurizer its features were made with
    model = load_model("lr-lite0", runs_dir=quickstart[0] / "runs")
    assert model.featurizer == featurizer_from_meta(read_features(quickstart[0] / "features")[0])
    assert model.bands == [1, 2, 3, 4]
