"""Inference runtimes: ONNX export with its hash, OpenVINO runs, and the accuracy guard against torch fp32.

The accuracy guard runs the real networks (EfficientNet-Lite0 and MobileNetV2 with their offline ImageNet
weights, ResNet-18 with random init) on the chips of a real synthetic scene, through torch fp32 (the reference)
and through OpenVINO in fp32 and bf16, and states the tolerances geoclf promises:

- fp32: relative error (``||x - ref|| / ||ref||`` over all the chips' vectors) at most :data:`FP32_RTOL`;
- bf16: at most :data:`BF16_RTOL` (bf16 keeps 8 bits of mantissa: EfficientNet-Lite0's 16 depthwise blocks
  accumulate ~6%, MobileNetV2 ~3%, ResNet-18 ~0.3%);
- and what users see: the land-use classes a classifier trained on torch fp32 features predicts from the
  runtime's features agree on at least :data:`MIN_AGREEMENT` of the scene's chips (ResNet-18: the argmax of
  its logits).
"""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from geoclf.runtime import (
    ONNX_OPSET,
    OpenVINORunner,
    cpu_has_bf16,
    export_onnx,
    open_runner,
    relative_error,
    resolve_precision,
    verified_onnx,
)
from tiling.errors import InputError

pytest.importorskip("openvino")

FP32_RTOL = 1e-4
BF16_RTOL = 0.10
MIN_AGREEMENT = 0.98

needs_bf16 = pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no BF16 instructions")


def _tiny_network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 5)).eval()


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    """A small conv network exported once: (network, directory, record)."""
    directory = tmp_path_factory.mktemp("tiny-export")
    network = _tiny_network()
    record = export_onnx(network, directory / "network.onnx", input_shape=(3, 32, 32))
    return network, directory, record


@pytest.fixture(scope="module")
def scene_chips(small_scene, tmp_path_factory):
    """RGB chips of the small synthetic scene and their NLCD land-use labels."""
    import tiling
    from geoclf.chips import read_batch
    from tiling.io import ChipReader

    index = tiling.tile([small_scene.naip], small_scene.nlcd, tmp_path_factory.mktemp("rt-chips"), progress=False)
    with ChipReader(bands=(1, 2, 3), size=224) as reader:
        chips = read_batch(pd.DataFrame(index.drop(columns="geometry")), reader)
    return chips, index["label"].astype(str).to_numpy()


def test_export_records_file_hash_and_dynamic_batch(tiny_export):
    network, directory, record = tiny_export
    path = verified_onnx(directory, record)
    assert record["file"] == "network.onnx" and record["opset"] == ONNX_OPSET
    assert record["input_shape"] == [None, 3, 32, 32] and record["output_dim"] == 5
    assert len(record["sha256"]) == 64
    assert not list(directory.glob(".*tmp"))  # written atomically, nothing left beside it
    runner = open_runner("openvino", onnx=path, precision="fp32", threads=1)
    for n in (1, 3, 32):  # any batch size, including 1 (torch.export would have fixed a sample batch of 1)
        x = torch.rand(n, 3, 32, 32)
        with torch.inference_mode():
            expected = network(x).numpy()
        assert relative_error(runner(x), expected) < FP32_RTOL
        # a numpy NCHW array and a channels_last tensor give the same outputs
        assert relative_error(runner(x.numpy()), expected) < FP32_RTOL
        assert relative_error(runner(x.contiguous(memory_format=torch.channels_last)), expected) < FP32_RTOL


def test_a_changed_export_is_refused(tiny_export, tmp_path):
    _, directory, record = tiny_export
    copy = tmp_path / "artifact"
    copy.mkdir()
    data = bytearray((directory / "network.onnx").read_bytes())
    data[-1] ^= 0xFF  # one flipped byte in the weights
    (copy / "network.onnx").write_bytes(bytes(data))
    with pytest.raises(InputError, match="does not match the checksum"):
        verified_onnx(copy, record)
    (copy / "network.onnx").unlink()
    with pytest.raises(InputError, match="lacks its exported network file"):
        verified_onnx(copy, record)
    with pytest.raises(InputError, match="no exported network .ONNX. recorded"):
        verified_onnx(copy, None)
    with pytest.raises(InputError, match="outside its directory"):
        verified_onnx(copy, {**record, "file": "../network.onnx"})


def test_runner_choices_are_checked(tiny_export):
    network, directory, record = tiny_export
    path = verified_onnx(directory, record)
    with pytest.raises(InputError, match="unknown inference runtime 'onnx'"):
        open_runner("onnx", onnx=path)
    with pytest.raises(InputError, match="unknown precision 'fp16'"):
        open_runner("openvino", onnx=path, precision="fp16")
    with pytest.raises(InputError, match="needs the exported network"):
        open_runner("openvino", network=network)
    with pytest.raises(InputError, match="at least one thread"):
        open_runner("openvino", onnx=path, threads=0)
    assert resolve_precision("torch", "auto") == "fp32"
    assert resolve_precision("openvino", "auto") == ("bf16" if cpu_has_bf16() else "fp32")
    runner = open_runner("openvino", onnx=path, precision="fp32", threads=2)
    assert runner.describe() == {"runtime": "openvino", "precision": "fp32", "threads": 2}
    assert runner.compiled.get_property("INFERENCE_NUM_THREADS") == 2
    with pytest.raises(InputError, match="without the network's normalization"):
        runner.chips(np.zeros((1, 3, 32, 32), np.uint8))
    with pytest.raises(InputError, match="as many means as positive stds"):
        open_runner("openvino", onnx=path, normalization=((0.5, 0.5), (0.2,)))
        pickle.dumps(runner)


def test_an_unreadable_export_is_one_line(tmp_path):
    bad = tmp_path / "network.onnx"
    bad.write_bytes(b"not an onnx file")
    with pytest.raises(InputError, match="OpenVINO cannot load the exported network"):
        OpenVINORunner(bad, precision="fp32", threads=1)


@pytest.mark.parametrize("name, weights, part", [
    ("efficientnet_lite0", "default", "features"),
    ("mobilenet_v2", "default", "features"),
    ("resnet18", "none", "logits"),
])
def test_accuracy_guard(name, weights, part, scene_chips, tmp_path):
    """OpenVINO's outputs match torch fp32 within the stated tolerance, and the predicted classes agree: fed
    normalized input, and fed the uint8 chips themselves (the normalization in OpenVINO's graph, as scoring
    runs it)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from geoclf.backbones import load_backbone

    chips, labels = scene_chips
    backbone = load_backbone(name, weights)
    network = backbone.feature_extractor() if part == "features" else backbone.model
    record = export_onnx(network, tmp_path / "network.onnx", input_shape=(3, 224, 224))
    path = verified_onnx(tmp_path, record)
    batches = [backbone.preprocess(chips[i:i + 32]) for i in range(0, len(chips), 32)]

    def run(runner):
        return np.concatenate([runner(batch) for batch in batches])

    reference = run(open_runner("torch", network=network, precision="fp32", threads=2))
    if part == "features":  # a land-use classifier trained on torch's features, as geoclf train makes one
        classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(reference, labels)
        predict = classifier.predict
    else:
        def predict(outputs):
            return outputs.argmax(axis=1)
    expected = predict(reference)
    precisions = {"fp32": FP32_RTOL, **({"bf16": BF16_RTOL} if cpu_has_bf16() else {})}
    for precision, tolerance in precisions.items():
        runner = open_runner("openvino", onnx=path, precision=precision, threads=2,
                             normalization=(backbone.mean, backbone.std))
        from_chips = np.concatenate([runner.chips(chips[i:i + 32]) for i in range(0, len(chips), 32)])
        for how, outputs in (("normalized input", run(runner)), ("uint8 chips", from_chips)):
            assert outputs.shape == reference.shape
            error = relative_error(outputs, reference)
            assert error <= tolerance, f"{name} {precision} {how}: relative error {error:.2g} > {tolerance}"
            agreement = float(np.mean(predict(outputs) == expected))
            assert agreement >= MIN_AGREEMENT, f"{name} {precision} {how}: classes agree on {agreement:.1%}"


@needs_bf16
def test_bf16_is_what_runs(tiny_export):
    """The precision hint reaches OpenVINO (bf16 outputs differ from fp32's; fp32 stays exact)."""
    _, directory, record = tiny_export
    path = verified_onnx(directory, record)
    x = torch.rand(4, 3, 32, 32)
    fp32 = open_runner("openvino", onnx=path, precision="fp32", threads=1)
    bf16 = open_runner("openvino", onnx=path, precision="bf16", threads=1)
    import openvino as ov

    assert bf16.compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.bf16
    assert fp32.compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32
    assert 0 < relative_error(bf16(x), fp32(x)) < BF16_RTOL


@pytest.mark.parametrize("runtime", ["openvino", "torch"])
def test_threads_sharing_a_runner_get_each_their_own_outputs(runtime, tiny_export):
    """Two blocks scored side by side in one process share the model's runner: their forward passes take turns
    (one OpenVINO infer request, torch's intra-op threads), each gets the outputs of its own batches."""
    from concurrent.futures import ThreadPoolExecutor

    network, directory, record = tiny_export
    runner = (open_runner("openvino", onnx=verified_onnx(directory, record), precision="fp32", threads=1)
              if runtime == "openvino" else open_runner("torch", network=network, precision="fp32", threads=1))
    batches = [torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(k)) for k in range(2)]
    expected = [runner(x) for x in batches]

    def run(k: int) -> list[np.ndarray]:
        return [runner(batches[k]) for _ in range(40)]

    with ThreadPoolExecutor(2) as pool:
        outputs = list(pool.map(run, [0, 1]))
    for k in range(2):
        assert all(np.array_equal(out, expected[k]) for out in outputs[k])


# -- the runtime in scoring ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported_quickstart_model(quickstart, tmp_path_factory):
    """A copy of the quickstart's lr-lite0 model artifact (EfficientNet-Lite0 features), exported to ONNX."""
    import shutil

    from geoclf.export import export_model
    from geoclf.models import resolve_model_dir

    workdir, _, _ = quickstart
    copy = tmp_path_factory.mktemp("exported") / "lr-lite0"
    shutil.copytree(resolve_model_dir("lr-lite0", workdir / "runs"), copy)
    record = export_model(copy)
    return workdir, copy, record


def test_export_is_recorded_in_model_json(exported_quickstart_model):
    import json

    from geoclf.export import export_model

    _, artifact, record = exported_quickstart_model
    spec = json.loads((artifact / "model.json").read_text())
    assert spec["featurizer"] == "combined"  # geoclf's default: the network is its CNN block, over RGB
    assert spec["export"] == record and record["input_shape"] == [None, 3, 224, 224]
    # the featurizer's network (not the ImageNet classifier), without the spectral block, which is no network
    assert record["output_dim"] == spec["cnn"]["feature_dim"] == spec["blocks"]["cnn"][1] < spec["feature_dim"]
    assert export_model(artifact) == record  # a valid export is kept, not made again


def test_the_combined_default_on_openvino_computes_what_training_computed(exported_quickstart_model):
    """The quickstart's model (the combined default): its CNN block on OpenVINO within the stated tolerance, its
    spectral block the very numbers torch's path computes, the classes torch's."""
    import tiling
    from geoclf.chips import read_batch
    from geoclf.models import load_model
    from tiling.io import ChipReader

    workdir, artifact, _ = exported_quickstart_model
    reference_model = load_model(artifact)
    cnn, spectral = (slice(*span) for span in reference_model.spec["blocks"].values())
    index = tiling.read_index(workdir / "chips").sort_values("chip_id").head(96)
    with ChipReader(bands=tuple(reference_model.bands), size=reference_model.chip_size) as reader:
        chips = read_batch(pd.DataFrame(index.drop(columns="geometry")), reader)
    assert chips.shape[1] == 4  # RGBN: the spectral block reads NIR
    reference = reference_model.featurize(chips)
    expected = reference_model.predict_features(reference)
    for precision, tolerance in {"fp32": FP32_RTOL, **({"bf16": BF16_RTOL} if cpu_has_bf16() else {})}.items():
        model = load_model(artifact).use_runtime("openvino", precision, threads=2)
        assert type(model.featurizer).__name__ == "CombinedFeaturizer"
        assert type(model.featurizer.cnn).__name__ == "ExportedCNNFeaturizer"
        ours = model.featurize(chips)
        assert ours.shape == reference.shape
        error = relative_error(ours[:, cnn], reference[:, cnn])
        assert error <= tolerance, f"{precision}: CNN block's relative error {error:.2g} > {tolerance}"
        np.testing.assert_array_equal(ours[:, spectral], reference[:, spectral])
        agreement = float(np.mean(model.predict_features(ours) == expected))
        assert agreement >= MIN_AGREEMENT, f"{precision}: classes agree on {agreement:.1%} of chips"


def test_spectral_statistics_have_no_network_to_run_on_openvino():
    from geoclf.featurizers.exported import network_block
    from geoclf.featurizers.spectral import SpectralFeaturizer

    with pytest.raises(InputError, match="spectral featurizer has no network to run on openvino"):
        network_block(SpectralFeaturizer())


def test_scoring_on_openvino_matches_torch_on_the_quickstart_scene(exported_quickstart_model, tmp_path):
    """Workers (a LocalCluster: several partitions) run the exported network; the classes are torch's."""
    from geoclf.landuse import read_predictions
    from geoclf.score import score

    workdir, artifact, _ = exported_quickstart_model
    torch_predictions = read_predictions(workdir / "map-2016")  # the quickstart scored it with torch
    score(str(artifact), tmp_path / "map", naip=[workdir / "scene" / "naip_2016.tif"], runtime="openvino",
          precision="auto", chips_per_partition=128, n_workers=2, html_map=False, progress=False)
    ours = read_predictions(tmp_path / "map")
    merged = torch_predictions[["chip_id", "pred"]].merge(ours[["chip_id", "pred"]], on="chip_id")
    assert len(merged) == len(torch_predictions) == len(ours) > 300
    agreement = float((merged["pred_x"] == merged["pred_y"]).mean())
    assert agreement >= MIN_AGREEMENT, f"classes agree on {agreement:.1%} of the chips"


def _middle_aoi(naip, path):
    """An AOI of 900 m x 900 m in the middle of the scene: about 16 chips, all with imagery."""
    import geopandas as gpd
    import rasterio
    from shapely.geometry import box

    with rasterio.open(naip) as ds:
        x, y = (ds.bounds.left + ds.bounds.right) / 2, (ds.bounds.bottom + ds.bounds.top) / 2
        gpd.GeoDataFrame(geometry=[box(x - 450, y - 450, x + 450, y + 450)], crs=ds.crs).to_file(path)
    return path


def test_scoring_runs_an_exported_model_on_openvino_by_default(exported_quickstart_model, quickstart, tmp_path,
                                                              capfd):
    """``runtime="auto"`` (the default of score and ``geoclf score``): OpenVINO for a model holding an export,
    torch for one without; what ran is said, and recorded with the output so a rerun on torch is not mixed in."""
    from geoclf.partitions import recorded_settings
    from geoclf.runtime import choose_runtime
    from geoclf.score import score

    workdir, artifact, record = exported_quickstart_model
    assert choose_runtime("auto", record) == "openvino" and choose_runtime("auto", None) == "torch"
    assert choose_runtime("torch", record) == "torch"
    with pytest.raises(InputError, match="unknown inference runtime"):
        choose_runtime("onnx", record)
    naip = [workdir / "scene" / "naip_2016.tif"]
    aoi = _middle_aoi(naip[0], tmp_path / "aoi.geojson")  # what ran and what was recorded: a few chips tell
    score(str(artifact), tmp_path / "map", naip=naip, aoi=aoi, scheduler="sync", html_map=False)
    said = capfd.readouterr().err
    assert "network ran on openvino" in said and "no exported network" not in said
    found = [recorded_settings(p.parent) for p in (tmp_path / "map").rglob("_inputs.json")]
    assert found and all(s["runtime"]["runtime"] == "openvino" for s in found)
    with pytest.raises(InputError, match="other chips or settings"):
        score(str(artifact), tmp_path / "map", naip=naip, aoi=aoi, scheduler="sync", html_map=False,
              runtime="torch", progress=False)  # the same chips: refused for the other runtime
    score("lr-lite0", tmp_path / "torch-map", naip=naip, aoi=aoi, scheduler="sync", html_map=False,
          runs_dir=workdir / "runs")  # the quickstart's own artifact has no export
    # why it ran on torch, and what to do about it, in the one line that says what ran
    said = [line for line in capfd.readouterr().err.splitlines() if "network ran on" in line]
    assert said == ["network ran on torch (fp32): model 'lr-lite0' has no exported network; `geoclf models export "
                    "lr-lite0` makes one, and then it runs on OpenVINO"]


def test_a_worker_refuses_an_export_that_is_not_the_recorded_one(exported_quickstart_model, tmp_path):
    import shutil

    from geoclf.score import ScoreTask, score

    _, artifact, _ = exported_quickstart_model
    changed = tmp_path / "model"
    shutil.copytree(artifact, changed)
    data = bytearray((changed / "network.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (changed / "network.onnx").write_bytes(bytes(data))
    part = pd.DataFrame({"chip_id": ["a"], "source": ["x"], "col_off": [0], "row_off": [0], "width": [224],
                         "height": [224]})
    with pytest.raises(InputError, match="does not match the checksum"):
        ScoreTask(model_dir=str(changed), runtime="openvino")(part)  # what a worker runs
    with pytest.raises(InputError, match="does not match the checksum"):
        score(str(changed), tmp_path / "out", naip=["unused.tif"], runtime="openvino", progress=False)


def test_openvino_needs_an_export(quickstart, tmp_path):
    from geoclf.score import score

    workdir, _, _ = quickstart
    with pytest.raises(InputError, match="no exported network"):
        score("lr-lite0", tmp_path / "out", naip=[workdir / "scene" / "naip_2016.tif"], runtime="openvino",
              runs_dir=workdir / "runs", progress=False)
    with pytest.raises(InputError, match="bf16 needs --runtime openvino"):
        score("lr-lite0", tmp_path / "out", naip=[workdir / "scene" / "naip_2016.tif"], precision="bf16",
              runs_dir=workdir / "runs", progress=False)


@pytest.fixture(scope="module")
def finetuned_export(small_scene, tmp_path_factory):
    """A model of the fine-tuned kind, exported: MobileNetV2 (offline weights) on 4 bands, its land-use head fitted
    to the small scene's labels (a logistic regression on the network's penultimate features, what ``last_only``
    fine-tuning converges towards), so its classes are a trained model's, not a random head's near-ties.

    Returns:
        (artifact directory, export record, the scene's chips (4 bands), classes).
    """
    from sklearn.linear_model import LogisticRegression

    import tiling
    from geoclf.chips import read_batch
    from geoclf.export import export_model
    from geoclf.finetune.model import save_finetune_model
    from geoclf.finetune.module import LandUseModule
    from geoclf.models import load_model
    from tiling.io import ChipReader

    tmp_path = tmp_path_factory.mktemp("finetuned-export")
    index = tiling.tile([small_scene.naip], small_scene.nlcd, tmp_path / "chips", progress=False)
    with ChipReader(bands=(1, 2, 3, 4), size=224) as reader:
        chips = read_batch(pd.DataFrame(index.drop(columns="geometry")), reader)
    classes = sorted(set(index["label"].astype(str)))
    module = LandUseModule("mobilenet_v2", classes=classes, bands=(1, 2, 3, 4))
    artifact = save_finetune_model(tmp_path / "untrained", module, chip_size=224)
    untrained = load_model(artifact)
    seen = []
    hook = untrained.network.get_submodule("classifier.1").register_forward_hook(
        lambda _m, inputs, _out: seen.append(inputs[0].detach().numpy()))
    untrained.predict_proba(chips)
    hook.remove()
    fitted = LogisticRegression(max_iter=3000).fit(np.concatenate(seen), index["label"].astype(str))
    order = [list(fitted.classes_).index(c) for c in classes]
    with torch.no_grad():
        module.network.get_submodule("classifier.1").weight.copy_(torch.from_numpy(fitted.coef_[order]))
        module.network.get_submodule("classifier.1").bias.copy_(torch.from_numpy(fitted.intercept_[order]))
    artifact = save_finetune_model(tmp_path / "mnv2", module, chip_size=224)
    return artifact, export_model(artifact), chips, classes


def test_a_finetuned_model_on_openvino_predicts_torchs_classes(finetuned_export):
    """The fine-tuned kind: its whole network (4-band input, land-use head) exported and run by OpenVINO."""
    from geoclf.models import load_model

    artifact, record, chips, classes = finetuned_export
    assert record["input_shape"] == [None, 4, 224, 224] and record["output_dim"] == len(classes)
    reference = load_model(artifact).predict_proba(chips)
    for precision, tolerance in {"fp32": FP32_RTOL, **({"bf16": BF16_RTOL} if cpu_has_bf16() else {})}.items():
        probs = load_model(artifact).use_runtime("openvino", precision, threads=2).predict_proba(chips)
        assert relative_error(probs, reference) <= tolerance
        agreement = float(np.mean(probs.argmax(1) == reference.argmax(1)))
        assert agreement >= MIN_AGREEMENT, f"{precision}: classes agree on {agreement:.1%} of chips"


def test_featurize_on_openvino_records_its_export_and_matches_torch(small_scene, tmp_path):
    import json

    import tiling
    from geoclf.features import featurize, read_features

    tiling.tile([small_scene.naip], small_scene.nlcd, tmp_path / "chips", progress=False)
    common = {"backbone": "mobilenet_v2", "scheduler": "sync", "record_run": False, "progress": False}
    featurize(tmp_path / "chips", tmp_path / "torch", **common)
    featurize(tmp_path / "chips", tmp_path / "openvino", runtime="openvino", precision="fp32", **common)
    meta = json.loads((tmp_path / "openvino" / "features.json").read_text())
    assert meta["runtime"] == {"runtime": "openvino", "precision": "fp32"}
    verified_onnx(tmp_path / "openvino", meta["export"])
    (_, reference), (_, ours) = read_features(tmp_path / "torch"), read_features(tmp_path / "openvino")
    assert list(ours["chip_id"]) == list(reference["chip_id"])
    error = relative_error(np.stack(ours["features"]), np.stack(reference["features"]))
    assert error <= FP32_RTOL
    before = sorted(p.name for p in (tmp_path / "torch").iterdir())
    with pytest.raises(InputError, match="other chips or settings"):  # never mixed with torch's partitions
        featurize(tmp_path / "chips", tmp_path / "torch", runtime="openvino", precision="fp32", **common)
    assert sorted(p.name for p in (tmp_path / "torch").iterdir()) == before  # refused before exporting into it


# -- a slim worker: no torch ----------------------------------------------------------------------------------

#: Installed in every Python process started with its directory on PYTHONPATH (a Dask worker too): torch and
#: what needs it cannot be imported, as on a worker installed with the ``geoclf[score]`` extra only.
NO_TORCH = '''
import importlib.abc
import sys


class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {"torch", "torchvision", "lightning", "pytorch_lightning", "timm"}:
            raise ImportError(f"{name} is not installed on this slim worker")
        return None


sys.meta_path.insert(0, NoTorch())
'''


def test_a_worker_without_torch_scores_and_featurizes_an_exported_model(exported_quickstart_model, tmp_path,
                                                                        monkeypatch):
    import os

    import tiling
    from geoclf.features import featurize, read_features
    from geoclf.landuse import read_predictions
    from geoclf.models import load_model
    from geoclf.partitions import read_partitions, run_partitions
    from geoclf.score import ScoreTask
    from tiling.parallel import dask_client

    def torch_on_worker() -> str:  # nested: sent by value, so the worker never imports this test module (torch)
        import sys

        try:
            import torch  # noqa: F401
        except ImportError as exc:
            return f"{'torch' in sys.modules}: {exc}"
        return "imported"

    workdir, artifact, _ = exported_quickstart_model
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(NO_TORCH)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")]))
    index = tiling.read_index(workdir / "chips")
    subset = index.sort_values("chip_id").head(8)
    tiling.write_index(subset, tmp_path / "chips" / "chips.parquet")
    with dask_client("local", n_workers=1) as client:
        assert list(client.run(torch_on_worker).values()) == [
            "False: torch is not installed on this slim worker"]
        task = ScoreTask(str(artifact), runtime="openvino", precision="fp32", loaded=load_model(artifact))
        run_partitions(pd.DataFrame(subset.drop(columns="geometry")), tmp_path / "parts", task, settings={},
                       chips_per_partition=4, scheduler=client, progress=False)
        featurize(tmp_path / "chips", tmp_path / "features", runtime="openvino", precision="fp32", scheduler=client,
                  chips_per_partition=4, record_run=False, progress=False)
        assert next(iter(client.run(torch_on_worker).values())).startswith("False")  # still none there
    scored = read_partitions(tmp_path / "parts")
    reference = read_predictions(workdir / "map-2010").set_index("chip_id")  # the scene the chips are of
    assert list(scored["pred"]) == list(reference.loc[scored["chip_id"], "pred"])  # torch's classes
    (_, ours), (_, torchs) = read_features(tmp_path / "features"), read_features(workdir / "features")
    torchs = torchs.set_index("chip_id").loc[list(ours["chip_id"])]
    assert relative_error(np.stack(ours["features"]), np.stack(torchs["features"])) <= FP32_RTOL


def test_a_client_without_torch_scores_a_finetuned_exported_model(finetuned_export, small_scene, tmp_path):
    """``geoclf score --runtime openvino`` of a fine-tuned model in a process where torch cannot be imported:
    the client loads only the export (no torch network built), and the model runs without torch (slim worker)."""
    import os
    import subprocess
    import sys

    import geopandas as gpd

    import tiling
    from geoclf.chips import read_batch
    from geoclf.models import load_model
    from tiling.io import ChipReader

    artifact, _, _, classes = finetuned_export
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(NO_TORCH)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")])}
    script = ("import sys\nfrom geoclf.cli import main\n"
              "try:\n    main(sys.argv[1:])\nfinally:\n    print('torch imported:', 'torch' in sys.modules)\n")
    out = tmp_path / "map"
    done = subprocess.run([sys.executable, "-c", script, "score", "--model", str(artifact), "--naip",
                           str(small_scene.naip), "--out", str(out), "--runtime", "openvino", "--precision", "fp32",
                           "--scheduler", "sync"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "torch imported: False" in done.stdout, done.stdout
    predictions = gpd.read_parquet(out / "predictions.parquet")
    chips = tiling.read_index(out / "chips.parquet").set_index("chip_id").loc[predictions["chip_id"]]
    with ChipReader(bands=(1, 2, 3, 4), size=224) as reader:
        batch = read_batch(chips.reset_index().drop(columns="geometry"), reader)
    reference = load_model(artifact).predict_proba(batch)  # torch fp32, in this process
    ours = predictions[[f"prob_{c}" for c in classes]].to_numpy()
    assert len(predictions) == len(tiling.read_index(out / "chips.parquet")) >= 50
    assert relative_error(ours, reference) <= FP32_RTOL


# Two OpenVINO runners whose lives overlap, dropped in the order they were made (a model's cached runner and
# another model's, or the export check's and a scoring run's), then Ctrl-C. With one OpenVINO Core per runner
# this process died of SIGSEGV without a word (exit -11): the CPU plugin had left the main thread's alternate
# signal stack pointing at the first runner's freed one (the cause of a whole-suite pytest process dying).
_OVERLAPPING_RUNNERS = """
import faulthandler, gc, os, signal, sys
import numpy as np
from torch import nn
from geoclf.runtime import OpenVINORunner, export_onnx

faulthandler.enable()
signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started with SIGINT ignored (nohup, &)
path = sys.argv[1]
export_onnx(nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()), path, input_shape=(3, 16, 16))
batch = np.zeros((2, 3, 16, 16), np.float32)
first = OpenVINORunner(path, precision="fp32", threads=1)
second = OpenVINORunner(path, precision="fp32", threads=1)
assert first(batch).shape == second(batch).shape == (2, 4)
del first
gc.collect()
del second
gc.collect()
try:
    os.kill(os.getpid(), signal.SIGINT)
except KeyboardInterrupt:
    print("Ctrl-C reached Python")
"""


def test_ctrl_c_after_openvino_runners_end_in_the_order_they_began(tmp_path):
    import subprocess
    import sys

    pytest.importorskip("openvino")
    done = subprocess.run([sys.executable, "-c", _OVERLAPPING_RUNNERS, str(tmp_path / "tiny.onnx")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-2000:]}"
    assert "Ctrl-C reached Python" in done.stdout
