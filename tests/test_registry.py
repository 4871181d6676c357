"""The model registry: versions, aliases, provenance, references, and one-line errors for bad names."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from geoclf import registry, runs
from geoclf.artifact import load_model, resolve_model_dir
from geoclf.classifiers import train_classifier
from tiling.errors import InputError

CLASSES = ["Developed", "Forest"]


def write_features(out: Path, n: int = 80, dim: int = 6, seed: int = 0) -> Path:
    """A features directory in the documented format: two noisy class clusters, 30% validation."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 2, n)
    x = (rng.normal(0, 2, (2, dim))[codes] + rng.normal(0, 1, (n, dim))).astype(np.float32)
    out.mkdir(parents=True)
    pq.write_table(pa.table({
        "chip_id": pa.array([f"s:{i}_0" for i in range(n)], pa.string()),
        "label": pa.array(np.asarray(CLASSES, dtype=object)[codes].tolist(), pa.string()),
        "split": pa.array(np.where(rng.random(n) < 0.3, "val", "train").tolist(), pa.string()),
        "features": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), dim),
    }), out / "part-00000.parquet")
    (out / "features.json").write_text(json.dumps({
        "backbone": "efficientnet_lite0", "weights": "default", "feature_layer": "pool", "feature_dim": dim,
        "bands": [1, 2, 3], "mean": [0.5] * 3, "std": [0.5] * 3, "chip_size": 224, "chips": n,
        "source": {"kind": "index", "path": str(out / "gone.parquet"), "sha256": "feedbeef"}}))
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run history with two train runs (``lr-a`` and ``lr-b``) and a featurize-like run without a model."""
    directory = tmp_path_factory.mktemp("history")
    feats = write_features(directory.parent / f"{directory.name}-feats")
    train_classifier(feats, "logistic_regression", {"C": 0.1}, name="lr-a", runs_dir=directory)
    train_classifier(feats, "logistic_regression", {"C": 10.0}, name="lr-b", runs_dir=directory)
    with runs.start_run("feats-only", "featurize", runs_dir=directory):
        pass
    return directory


@pytest.fixture
def runs_dir(trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the trained history (the registry is written to)."""
    directory = tmp_path / "history"
    shutil.copytree(trained, directory)
    # the artifact root is recorded as an absolute path in the database: keep reading the module's copy
    monkeypatch.setenv(runs.RUNS_ENV, str(directory))
    return directory


def test_register_versions_aliases_and_references(runs_dir: Path) -> None:
    first = registry.register_model("lr-a", "landuse-naip", description="first")
    second = registry.register_model("lr-b", "landuse-naip")
    assert (first.version, second.version) == (1, 2)

    # each version records its source run, the data (chip index hash), metrics and library version
    run_a = runs.get_run("lr-a")
    assert first.run_id == run_a.run_id
    assert first.tags[registry.CHIP_INDEX_TAG] == "feedbeef"
    assert first.metrics["accuracy"] == pytest.approx(run_a.metrics["accuracy"])
    assert first.tags[registry.KIND_TAG] == "features"
    from geoclf import __version__

    assert first.tags[registry.VERSION_TAG] == __version__
    assert first.description == "first"

    promoted = registry.promote("landuse-naip", 1, "production")
    assert promoted.aliases == ["production"]
    assert registry.resolve_version("landuse-naip@production").version == 1
    # the alias moves
    registry.promote("landuse-naip", 2, "production")
    assert registry.resolve_version("landuse-naip@production").version == 2
    assert registry.get_version("landuse-naip", 1).aliases == []
    assert registry.resolve_version("landuse-naip@latest").version == 2

    # references resolve to the source run's artifact wherever a model is accepted
    assert resolve_model_dir("landuse-naip/1") == runs.artifact_path(run_a)
    model = load_model("landuse-naip@production")
    assert model.spec["provenance"]["run_id"] == runs.get_run("lr-b").run_id
    assert model.classes == CLASSES

    table = registry.list_models()
    assert table.to_dict("records")[0] | {"updated": None} == {
        "name": "landuse-naip", "versions": 2, "latest": 2, "aliases": "production:2",
        "accuracy": pytest.approx(second.metrics["accuracy"]), "source_run": "lr-b", "updated": None}
    assert [v.version for v in registry.show_model("landuse-naip")] == [1, 2]


@pytest.mark.parametrize(("call", "message"), [
    (lambda: registry.show_model("nope"), r"no registered model named 'nope'; registered models: landuse-naip"),
    (lambda: registry.promote("landuse-naip", 7, "production"), r"model 'landuse-naip' has no version 7; versions: 1"),
    (lambda: registry.promote("nope", 1, "production"), r"no registered model named 'nope'"),
    (lambda: registry.promote("landuse-naip", 1, "prod stage"), r"stage 'prod stage' must start with a letter"),
    (lambda: registry.resolve_version("landuse-naip@staging"),
     r"model 'landuse-naip' has no version with alias 'staging'; aliases: none"),
    (lambda: load_model("landuse-naip/3"), r"model 'landuse-naip' has no version 3; versions: 1"),
    (lambda: load_model("other@production"), r"no registered model named 'other'"),
    (lambda: registry.register_model("no-such-run", "landuse-naip"), r"no run named 'no-such-run'"),
    (lambda: registry.register_model("feats-only", "landuse-naip"), r"has no artifact 'model'"),
    (lambda: registry.register_model("lr-a", "bad/name"), r"model name 'bad/name' must start"),
])
def test_bad_registry_input_is_one_line(runs_dir: Path, call: object, message: str) -> None:
    registry.register_model("lr-a", "landuse-naip")
    with pytest.raises(InputError, match=message) as info:
        call()  # type: ignore[operator]
    assert "\n" not in str(info.value)


def test_reference_syntax() -> None:
    assert registry.parse_model_ref("landuse-naip@production") == ("landuse-naip", "production", None)
    assert registry.parse_model_ref("landuse-naip/12") == ("landuse-naip", None, 12)
    assert registry.is_model_ref("a.b_c-d@prod")
    for text in ("landuse-naip", "runs/model", "/abs/path", "./model", "x@", "x/1/2", "@prod"):
        assert not registry.is_model_ref(text), text
    with pytest.raises(InputError, match="is not a model reference"):
        registry.parse_model_ref("landuse-naip")


def test_cli_models_list_show(runs_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from geoclf.cli import main

    main(["models", "register", "--run", "lr-a", "--name", "landuse-naip"])
    assert "as landuse-naip version 1" in capsys.readouterr().out
    main(["models", "list"])
    assert "landuse-naip" in capsys.readouterr().out
    main(["models", "show", "landuse-naip", "--json"])
    shown = json.loads(capsys.readouterr().out)
    assert shown[0]["version"] == 1 and shown[0]["chip_index_sha256"] == "feedbeef"
    with pytest.raises(SystemExit) as info:
        main(["models", "promote", "landuse-naip", "--version", "5"])
    assert info.value.code == 2
    assert capsys.readouterr().err.strip() == "geoclf: error: model 'landuse-naip' has no version 5; versions: 1"


def test_fine_tuned_models_register_the_same_way(runs_dir: Path, tmp_path: Path) -> None:
    """Any run with a model artifact registers: here a fine-tune run's (kind ``finetune``)."""
    from geoclf.artifact import write_model_dir

    def weights(directory: Path) -> None:
        (directory / "weights.pt").write_bytes(b"state dict")

    artifact = write_model_dir(tmp_path / "model", "finetune",
                               {"classes": CLASSES, "bands": [1, 2, 3], "chip_size": 224, "name": "ft"}, weights)
    with runs.start_run("ft-lite0", "finetune", params={"chip_index_sha256": "abc123"}) as run:
        run.log_metrics({"accuracy": 0.91, "val_loss": 0.3})
        run.log_artifact_dir(artifact)
    version = registry.register_model("ft-lite0", "landuse-naip-cnn")
    assert version.tags[registry.KIND_TAG] == "finetune"
    assert version.tags[registry.CHIP_INDEX_TAG] == "abc123"
    assert version.metrics == {"accuracy": 0.91, "val_loss": 0.3}
    assert (resolve_model_dir("landuse-naip-cnn/1") / "weights.pt").read_bytes() == b"state dict"
