"""Trust boundaries and failure behaviour: what a listening port, a bad count, a bad recipe or Ctrl-C can do.

Commands whose process is what is checked (Ctrl-C, locks, progress bars, untrusted payloads) run as a user
runs them (``python -m geoclf`` in a process of its own, Ctrl-C as the terminal sends it: SIGINT to the whole
process group), on real LocalClusters and a real model artifact; what the client refuses before any output is
checked through the CLI's ``main`` in this process, with what reached its stdout and stderr.
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import urlopen

import numpy as np
import psutil
import pytest
import yaml

import tiling
from geoclf.cli import main
from tiling.errors import InputError
from tiling.parallel import DASHBOARD_ENV, dashboard_link, dask_client

# -- fixtures ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chips(small_scene, tmp_path_factory):
    """The small scene's chip index (58 chips)."""
    out = tmp_path_factory.mktemp("security-chips")
    tiling.tile([small_scene.naip], small_scene.nlcd, out, scheduler="sync", progress=False)
    return out


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    """A real ``features`` artifact: EfficientNet-Lite0 (offline weights) + a logistic regression.

    The classifier is fitted on random vectors: what it predicts does not matter here, only that scoring
    runs the real backbone and classifier on real chips.
    """
    from sklearn.linear_model import LogisticRegression

    from geoclf.artifact import save_features_model
    from geoclf.backbones import load_backbone

    backbone = load_backbone("efficientnet_lite0", "default")
    scheme = tiling.ClassScheme.default()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6 * len(scheme.names), backbone.feature_dim)).astype(np.float32)
    y = np.repeat(scheme.names, 6)
    return save_features_model(
        tmp_path_factory.mktemp("security-model") / "model", classifier=LogisticRegression(max_iter=50).fit(x, y),
        classes=scheme.names, backbone="efficientnet_lite0", weights="default", weights_ref=backbone.weights_ref,
        feature_layer=backbone.feature_layer, feature_dim=backbone.feature_dim, mean=backbone.mean,
        std=backbone.std, input_size=backbone.input_size, bands=[1, 2, 3], chip_size=224, name="random-lr",
        class_groups=scheme.to_dict())


def geoclf(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """``geoclf ARGS`` in a process of its own, as a user runs it (stderr not a terminal).

    Output is decoded without newline translation (``text=True`` would turn a progress bar's carriage
    returns into line ends, hiding the very problem some tests look for).
    """
    done = subprocess.run([sys.executable, "-m", "geoclf", *args], capture_output=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(), done.stderr.decode())


def geoclf_here(capfd: pytest.CaptureFixture[str], *args: str) -> subprocess.CompletedProcess:
    """``geoclf ARGS`` in this process (the CLI's ``main``, as the console script calls it), with what reached the
    file descriptors of stdout and stderr: for what the client refuses before any output, which needs no process
    of its own (Ctrl-C, locks, progress bars and untrusted payloads keep :func:`geoclf`'s)."""
    capfd.readouterr()
    try:
        main(list(args))
        status = 0
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else 1
    out, err = capfd.readouterr()
    return subprocess.CompletedProcess(["geoclf", *args], status, out, err)


def error_line(stderr: str) -> str:
    """The last line of stderr (lines end with a newline only: a progress bar's carriage returns do not)."""
    return stderr.rstrip("\n").split("\n")[-1]


# -- item 3: the Dask dashboard ---------------------------------------------------------------------------


def _listening(port: int) -> set[str]:
    return {c.laddr.ip for c in psutil.Process().net_connections("inet")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == port}


def _external_addresses() -> list[str]:
    """This machine's IPv4 addresses other than loopback (others on the network would connect to these)."""
    return [a.address for addresses in psutil.net_if_addrs().values() for a in addresses
            if a.family == socket.AF_INET and not a.address.startswith("127.")]


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=3):
            return True
    except OSError:
        return False


def test_the_dashboard_of_a_local_cluster_listens_on_loopback_only(monkeypatch):
    monkeypatch.delenv(DASHBOARD_ENV, raising=False)
    with dask_client("local", n_workers=1) as client:
        link = dashboard_link(client)
        host, port = urlsplit(link).hostname, urlsplit(link).port
        assert _listening(port) == {"127.0.0.1"}
        assert host == "127.0.0.1"
        with urlopen(link, timeout=30) as page:  # the link printed is the one that answers
            assert page.status == 200
            body = page.read().decode()
        # the dashboard itself, not distributed's stand-in page ("Dask needs bokeh>=3.1.0 for the dashboard")
        assert "<title>Dask Diagnostic UI</title>" in body and "Bokeh" in body, body[:300]
        for address in _external_addresses():
            assert not _reachable(address, port), f"the dashboard answers on {address}"


def test_a_cluster_recipe_keeps_the_dashboard_on_loopback(tmp_path, monkeypatch):
    from distributed import Client

    from geoclf.cluster import cluster_from_recipe

    monkeypatch.delenv(DASHBOARD_ENV, raising=False)
    recipe = tmp_path / "local.yaml"
    recipe.write_text("provider: local\nworkers: 1\n")
    with cluster_from_recipe(recipe, quiet=True) as cluster, Client(cluster) as client:
        port = urlsplit(dashboard_link(client)).port
        assert _listening(port) == {"127.0.0.1"}


def test_the_dashboard_opens_to_the_network_only_when_asked(monkeypatch):
    addresses = _external_addresses()
    if not addresses:
        pytest.skip("this machine has no network address besides loopback")
    monkeypatch.setenv(DASHBOARD_ENV, f"{addresses[0]}:0")
    with dask_client("local", n_workers=1) as client:
        link = dashboard_link(client)
        assert urlsplit(link).hostname == addresses[0]  # Dask alone would print the scheduler's 127.0.0.1
        assert _listening(urlsplit(link).port) == {addresses[0]}
        with urlopen(link, timeout=30) as page:
            assert page.status == 200


def test_a_bad_dashboard_address_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--dashboard", "everywhere", "tile", "--help"])
    err = capsys.readouterr().err
    assert exited.value.code == 2
    assert "Invalid value for --dashboard: 'everywhere' is not a dashboard address" in err


# -- item 5: counts, recipes, progress bars, Ctrl-C, GEOCLF_DEBUG ------------------------------------------


@pytest.mark.parametrize("args", [
    ["featurize", "--batch-size", "0"],
    ["featurize", "--chips-per-partition", "0"],
    ["featurize", "--workers", "-2"],
    ["score", "--batch-size", "-1", "--model", "MODEL"],
], ids=["featurize-batch-0", "featurize-partition-0", "featurize-workers-neg", "score-batch-neg"])
def test_counts_below_one_are_usage_errors(args, chips, artifact, tmp_path, capsys):
    out = tmp_path / "out"
    args = [str(artifact) if a == "MODEL" else a for a in args]
    source = ["--chips", str(chips)]
    with pytest.raises(SystemExit) as exited:
        main([*args, *source, "--out", str(out)])
    err = capsys.readouterr().err
    assert exited.value.code == 2
    assert f"Invalid value for '{args[1]}'" in err and "Traceback" not in err
    assert not out.exists()


def test_library_counts_below_one_fail_before_any_output(chips, artifact, tmp_path):
    from geoclf.features import featurize
    from geoclf.score import score

    with pytest.raises(InputError, match="batch size must be a whole number of at least 1, not 0"):
        featurize(chips, tmp_path / "feats", batch_size=0, scheduler="sync")
    with pytest.raises(InputError, match="batch size must be a whole number of at least 1, not -1"):
        score(str(artifact), tmp_path / "map", chips=chips, batch_size=-1, scheduler="sync")
    with pytest.raises(InputError, match="chips per partition"):
        score(str(artifact), tmp_path / "map", chips=chips, chips_per_partition=0, scheduler="sync")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("stage", "needle"), [
    ({"tile": ["scene/naip.tif", "scene/nlcd.tif"]}, "stage 1 (tile): its parameters must be a mapping"),
    ({"tile": "scene/naip.tif"}, "stage 1 (tile): its parameters must be a mapping"),
    ({"synth": {"out": "scene", "size_m": "big"}}, "size_m must be a number or a list of 2 numbers, not \"big\""),
    ({"synth": {"out": "scene", "seed": True}}, "seed must be a whole number, not true"),
    ({"tile": {"naip": ["a.tif"], "nlcd": "n.tif", "out": "c", "min_purity": "high"}}, "min_purity must be a number"),
    ({"trend": {"maps": "map-2016", "out": "trend"}}, "maps must be a list of strings or paths"),
    ({"train": {"features": "f", "params": [1, 2]}}, "params must be a mapping or null"),
    ({"featurize": {"chips": "c", "out": "f", "batch_size": "32"}}, "batch_size must be a whole number"),
    ({"score": {"model": "m", "out": "o", "naip": ["a.tif"], "smooth": "yes please"}}, "smooth must be true or false"),
    ({"synth": {1: 2}}, "parameter names are words"),
], ids=["list", "string", "size_m-big", "seed-bool", "tile-extra", "maps-string", "params-list", "batch-string",
        "score-extra", "int-key"])
def test_recipe_parameters_of_the_wrong_shape_or_type_fail_the_check(stage, needle, tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"name": "bad", "stages": [stage]}))
    with pytest.raises(SystemExit) as exited:
        main(["run", str(path), "--check"])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith(f"geoclf: error: {path}: ") and needle in err


def test_a_recipe_that_is_not_text_is_one_line(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_bytes(b"name: x\nstages:\n  - synth: {out: \xff\xfe}\n")
    with pytest.raises(SystemExit) as exited:
        main(["run", str(path), "--check"])
    assert exited.value.code == 2 and "is not a text file" in capsys.readouterr().err


def test_a_recipe_built_in_code_is_checked_before_any_stage_runs(tmp_path):
    from geoclf.recipes import Recipe, run_recipe

    workdir = tmp_path / "work"
    recipe = Recipe("code", workdir, [("synth", {"out": "scene", "size_m": 448}),
                                      ("tile", {"naip": ["scene/naip.tif"], "nlcd": "scene/nlcd.tif", "out": "c",
                                                "chip_size": "224"})])
    with pytest.raises(InputError, match=r"stage 2 \(tile\): chip_size must be a whole number"):
        run_recipe(recipe, echo=lambda _: None)
    assert not workdir.exists()  # the first stage did not run either


@pytest.fixture(scope="module")
def bad_nlcd(small_scene, tmp_path_factory):
    """The small scene's NLCD with a patch of a code NLCD does not have: found only while labeling."""
    import rasterio

    with rasterio.open(small_scene.nlcd) as source:
        profile, codes = source.profile, source.read()
    codes[:, 20:40, 20:40] = 200
    path = tmp_path_factory.mktemp("bad-nlcd") / "nlcd.tif"
    with rasterio.open(path, "w", **profile) as target:
        target.write(codes)
    return path


def test_an_error_ends_the_progress_bar_line_first(small_scene, bad_nlcd, tmp_path):
    done = geoclf("tile", "--naip", str(small_scene.naip), "--nlcd", str(bad_nlcd), "--out", str(tmp_path / "c"),
                  "--scheduler", "sync")
    assert done.returncode == 2
    assert "labeling chips" in done.stderr and "\r" in done.stderr  # a bar was drawn, then cleared with "\r"
    assert error_line(done.stderr).startswith(f"geoclf: error: {bad_nlcd}: holds values that are not NLCD codes")
    assert "Traceback" not in done.stderr


def test_geoclf_debug_shows_the_traceback_of_bad_input(small_scene, bad_nlcd, tmp_path):
    done = geoclf("tile", "--naip", str(small_scene.naip), "--nlcd", str(bad_nlcd), "--out", str(tmp_path / "c"),
                  "--scheduler", "sync", env={"GEOCLF_DEBUG": "1"})
    assert done.returncode == 2
    assert "Traceback (most recent call last)" in done.stderr and "tiling.errors.InputError" in done.stderr
    assert error_line(done.stderr).startswith(f"geoclf: error: {bad_nlcd}: holds values that are not NLCD codes")


#: A progress bar that has counted its first chips: the workers are busy with the rest of the partitions.
_WORKING = re.compile(rb"(?:featurizing|scoring)[^\r\n]*\| *[1-9][0-9]*/[0-9]+")


def _interrupt(args: list[str]) -> tuple[int, str]:
    """Run ``geoclf ARGS`` and press Ctrl-C as soon as its progress bar counts the first finished partition
    (so the workers are mid-task whatever the machine's load); returns (status, stderr)."""
    # SIGINT as a terminal's foreground job has it, even when the suite runs as a background job (nohup, &),
    # whose children inherit SIGINT ignored
    process = subprocess.Popen([sys.executable, "-m", "geoclf", *args], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, start_new_session=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    stderr = b""
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(process.stderr, selectors.EVENT_READ)
            deadline = time.monotonic() + 300
            while not _WORKING.search(stderr) and time.monotonic() < deadline and process.poll() is None:
                if selector.select(timeout=1):
                    stderr += os.read(process.stderr.fileno(), 1 << 16)
        assert _WORKING.search(stderr), f"no partition finished before the command ended: {stderr.decode()}"
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: every process of the group gets it
        _, rest = process.communicate(timeout=180)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return process.returncode, (stderr + rest).decode()


@pytest.mark.parametrize("command", ["featurize", "score"])  # score over rasters: scene blocks (run_plan)
def test_ctrl_c_is_one_line_and_status_130_after_one_dashboard_line(command, chips, small_scene, artifact, tmp_path):
    # one real cluster run per command checks both what a user sees of it: the dashboard link, printed once on a
    # line of its own before any bar, and Ctrl-C mid-run, one line and status 130
    out = tmp_path / "out"
    if command == "featurize":
        args = ["featurize", "--chips", str(chips), "--out", str(out)]
    else:
        args = ["score", "--model", str(artifact), "--naip", str(small_scene.naip), "--out", str(out)]
    # one chip per partition: 58 partitions, so that most are still to do when the first one is counted
    status, stderr = _interrupt([*args, "--workers", "2", "--chips-per-partition", "1"])
    assert status == 130, stderr
    assert error_line(stderr) == "geoclf: interrupted"
    for noise in ("Traceback", "KeyboardInterrupt", "distributed.", "CancelledError"):
        assert noise not in stderr, stderr
    lines = stderr.replace("\r", "\n").split("\n")  # a bar drawn before it would share its line
    links = [line for line in lines if "Dask dashboard" in line]
    assert len(links) == 1, stderr
    assert links[0].startswith("Dask dashboard: http://127.0.0.1:") and links[0].endswith("/status"), links
    assert "%|" not in stderr[:stderr.index("Dask dashboard")]  # before any bar, not in one


# -- item 4: names taken from data files never leave their folder ---------------------------------------------


@pytest.mark.parametrize("name", ["../../escaped", "a/b", "..", "tab\there"])
def test_a_class_name_that_is_no_directory_name_is_refused_before_tiling(name, small_scene, tmp_path, capsys):
    classes = tmp_path / "classes.yaml"
    classes.write_text(yaml.safe_dump({name: [21, 22, 23, 24], "Forest": [41, 42, 43]}))
    out = tmp_path / "work" / "chips"
    with pytest.raises(SystemExit) as exited:
        main(["tile", "--naip", str(small_scene.naip), "--nlcd", str(small_scene.nlcd), "--classes", str(classes),
              "--out", str(out), "--materialize", "png", "--scheduler", "sync"])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "cannot be a directory name" in err and "Traceback" not in err
    assert not out.exists() and sorted(p.name for p in tmp_path.rglob("*")) == ["classes.yaml"]


def test_labels_of_an_edited_index_never_write_outside_the_chip_folder(chips, tmp_path):
    from tiling.materialize import materialize_chips

    index = tiling.read_index(chips)
    index.loc[index.index[-1], "label"] = "../../../escaped"
    out = tmp_path / "deep" / "er" / "png"
    with pytest.raises(InputError, match="cannot be a file or directory name"):
        materialize_chips(index, out, "png")
    assert list(tmp_path.rglob("*.png")) == [] and not (tmp_path / "escaped").exists()


def _with_spec(source, directory, change):
    """A copy of the artifact ``source`` in ``directory`` with its model.json changed by ``change(spec, directory)``."""
    import json
    import shutil

    shutil.copytree(source, directory)
    spec = json.loads((directory / "model.json").read_text())
    change(spec, directory)
    (directory / "model.json").write_text(json.dumps(spec))
    return directory


def _classifier_elsewhere(how):
    """A change of model.json that moves the classifier outside the artifact, named ``how``."""
    def change(spec, directory):
        outside = directory.parent / "outside.skops"
        (directory / "classifier.skops").rename(outside)  # the same file, checksum and all
        if how == "symlink":
            (directory / "classifier.skops").symlink_to(outside)
        else:
            spec["classifier"]["file"] = {"dotdot": "../outside.skops", "absolute": str(outside)}[how]
    return change


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_a_classifier_file_outside_the_artifact_is_refused_in_one_line(how, artifact, chips, tmp_path, capsys):
    model = _with_spec(artifact, tmp_path / "model", _classifier_elsewhere(how))
    out = tmp_path / "map"
    with pytest.raises(SystemExit) as exited:
        main(["score", "--model", str(model), "--chips", str(chips), "--out", str(out), "--scheduler", "sync"])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "names its classifier file" in err and "which is not a file of the artifact directory" in err
    assert not out.exists()


@pytest.fixture(scope="module")
def file_weights(tmp_path_factory):
    """A features artifact trained on a small network's weights of a user's file (MobileNetV3-small, seeded)."""
    import torch
    from sklearn.linear_model import LogisticRegression

    from geoclf.backbones import load_backbone
    from geoclf.features_model import save_features_model

    root = tmp_path_factory.mktemp("file-weights")
    weights = root / "user" / "net.pth"
    weights.parent.mkdir()
    torch.save(load_backbone("mobilenet_v3_small", "none").model.state_dict(), weights)
    backbone = load_backbone("mobilenet_v3_small", str(weights))
    scheme = tiling.ClassScheme.default()
    x = np.random.default_rng(0).normal(size=(3 * len(scheme.names), backbone.feature_dim)).astype(np.float32)
    model = save_features_model(
        root / "model", classifier=LogisticRegression(max_iter=20).fit(x, np.repeat(scheme.names, 3)),
        classes=scheme.names, backbone="mobilenet_v3_small", weights=str(weights), weights_ref=backbone.weights_ref,
        feature_layer=backbone.feature_layer, feature_dim=backbone.feature_dim, mean=backbone.mean,
        std=backbone.std, input_size=64, bands=[1, 2, 3], chip_size=224, name="file-weights",
        class_groups=scheme.to_dict())
    return model, weights


def test_an_artifact_carries_the_weights_file_it_loads(file_weights):
    import json

    from geoclf.models import load_model

    model, weights = file_weights
    spec = json.loads((model / "model.json").read_text())
    assert spec["weights"] == spec["weights_ref"]["weights"] == "backbone-weights.pth"
    assert (model / "backbone-weights.pth").read_bytes() == weights.read_bytes()
    loaded = load_model(model).prepare()
    assert loaded.featurizer.weights == str(model / "backbone-weights.pth")  # its own copy, not the user's file


@pytest.mark.parametrize("where", ["absolute", "dotdot", "weights_ref-only"])
def test_backbone_weights_outside_the_artifact_are_refused(where, file_weights, tmp_path):
    from geoclf.models import load_model

    model, weights = file_weights  # the very weights recorded (same sha256): only where they lie is wrong

    def change(spec, directory):
        name = str(weights) if where != "dotdot" else "../net.pth"
        spec["weights_ref"]["weights"] = name
        if where != "weights_ref-only":
            spec["weights"] = name
        (directory / "backbone-weights.pth").unlink(missing_ok=True)  # no copy inside: only the file outside

    tampered = _with_spec(model, tmp_path / "user" / "model", change)
    (tmp_path / "user" / "net.pth").write_bytes(weights.read_bytes())
    with pytest.raises(InputError, match="names its backbone weights file .* which is not a file of the artifact"):
        load_model(tampered)


def test_a_features_model_is_not_saved_with_weights_other_than_the_features(file_weights, tmp_path):
    import torch

    from geoclf.backbones import load_backbone
    from geoclf.features_model import save_features_model
    from geoclf.featurizers.cnn import CNNFeaturizer
    from geoclf.models import load_model

    model, _ = file_weights
    loaded = load_model(model)
    featurizer = CNNFeaturizer.from_meta({**loaded.featurizer.to_meta(), "weights": str(tmp_path / "net.pth"),
                                          "weights_ref": {**loaded.featurizer.weights_ref,
                                                          "weights": str(tmp_path / "net.pth")}})
    state = load_backbone("mobilenet_v3_small", "none").model.state_dict()
    state[next(iter(state))] += 1.0  # not the file the features came from
    torch.save(state, tmp_path / "net.pth")
    with pytest.raises(InputError, match="is not the weights file the features were computed with"):
        save_features_model(tmp_path / "copy", classifier=loaded.classifier, classes=loaded.classes,
                            chip_size=224, featurizer=featurizer)
    assert not (tmp_path / "copy").exists()


# -- fuzz finds: cell indices a map cannot hold --------------------------------------------------------------------


def test_predictions_too_far_apart_for_one_map_are_refused_before_allocating():
    import pandas as pd

    from geoclf.landuse import predictions_to_grid

    cells = [(1201, 20949), (1201 + 2**40, 20949 + 2**30)]  # what a damaged index held: ~116 PiB of map
    predictions = pd.DataFrame({"cell": [f"EPSG:26919:224:224:{ix}:{iy}" for ix, iy in cells],
                                "ix": [c[0] for c in cells], "iy": [c[1] for c in cells], "crs": "EPSG:26919",
                                "pred": "Forest"})
    with pytest.raises(InputError, match=r"span 1,099,511,627,777 x 1,073,741,825 grid cells"):
        predictions_to_grid(predictions, tiling.ClassScheme.default())


def test_score_refuses_chips_too_far_apart_for_one_map_before_scoring(chips, artifact, tmp_path, capsys):
    index = tiling.read_index(chips)
    index.loc[index.index[-1], "ix"] = int(index["ix"].max()) + 10**6  # one chip a million cells away
    index.loc[index.index[-1], "iy"] = int(index["iy"].max()) + 10**6
    tiling.write_index(index, tmp_path / "far" / "chips.parquet")
    out = tmp_path / "map"
    with pytest.raises(SystemExit) as exited:
        main(["score", "--model", str(artifact), "--chips", str(tmp_path / "far"), "--out", str(out),
              "--scheduler", "sync"])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and err.count("\n") == 1 and "grid cells, a map of" in err
    assert not out.exists()  # refused before scoring: no predictions without their map


# -- item 7: one run per output directory ---------------------------------------------------------------------


@pytest.fixture
def holder(tmp_path):
    """Another process holding the lock of ``tmp_path / "out"`` (as a run in progress would), until killed."""
    script = ("import sys, time\nfrom tiling.locks import output_lock\n"
              "with output_lock(sys.argv[1], 'featurize'):\n    print('held', flush=True)\n    time.sleep(600)\n")
    process = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "out")], stdout=subprocess.PIPE,
                               text=True)
    assert process.stdout.readline().strip() == "held"
    yield process
    process.kill()
    process.wait()


@pytest.mark.parametrize("command", ["tile", "featurize", "score"])
def test_a_second_run_into_the_same_output_is_refused_in_one_line(command, holder, small_scene, chips, artifact,
                                                                  tmp_path):
    out = tmp_path / "out"
    args = {"tile": ["tile", "--naip", str(small_scene.naip), "--nlcd", str(small_scene.nlcd)],
            "featurize": ["featurize", "--chips", str(chips)],
            "score": ["score", "--model", str(artifact), "--chips", str(chips)]}[command]
    done = geoclf(*args, "--out", str(out), "--scheduler", "sync")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert error_line(done.stderr) == done.stderr.strip()  # one line
    assert f"is being written by another run (featurize, pid {holder.pid}" in done.stderr
    assert not out.exists()  # the second run wrote nothing


def test_a_lock_left_by_a_killed_run_is_taken_over(holder, tmp_path):
    from tiling.locks import lock_path, output_lock

    out = tmp_path / "out"
    holder.kill()  # SIGKILL: no cleanup, the lock file stays behind
    holder.wait()
    assert str(holder.pid) in lock_path(out).read_text()
    with output_lock(out, "score") as path:
        assert f'"pid": {os.getpid()}' in path.read_text()
    assert not lock_path(out).exists()


def test_a_lock_whose_pid_was_reused_is_stale(tmp_path):
    import json
    import socket

    from tiling.locks import lock_path, output_lock

    out = tmp_path / "out"
    # this process is alive, but started after the run that wrote the lock: that run is gone
    lock_path(out).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                          "started": psutil.Process().create_time() - 3600, "command": "score"}))
    with output_lock(out):
        pass
    # a lock of a live run is not
    lock_path(out).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                          "started": psutil.Process().create_time(), "command": "score"}))
    with pytest.raises(InputError, match=f"pid {os.getpid()}"), output_lock(out):
        pass


# -- item 8: outputs honour the umask -------------------------------------------------------------------------


def test_every_output_file_honours_the_umask(small_scene, artifact, tmp_path):
    """Under umask 027 every file is 0640 and every directory 0750, as any other tool would write them (files
    written through mkstemp were 0600, unreadable by the group a team shares outputs with): a chip index with
    PNG chips, features, and a whole score output."""
    from geoclf.features import featurize
    from geoclf.score import score

    previous = os.umask(0o027)
    try:
        index = tiling.tile([small_scene.naip], small_scene.nlcd, tmp_path / "chips", scheduler="sync",
                            progress=False)
        from tiling.materialize import materialize_chips

        materialize_chips(index.head(4), tmp_path / "chips" / "png", "png", progress=False)
        featurize(tmp_path / "chips", tmp_path / "feats", backbone="resnet18", weights="none", scheduler="sync",
                  progress=False, record_run=False)
        score(str(artifact), tmp_path / "map", chips=tmp_path / "chips", scheduler="sync", probabilities=True,
              progress=False)
    finally:
        os.umask(previous)
    modes = {str(p.relative_to(tmp_path)): p.stat().st_mode & 0o777 for p in tmp_path.rglob("*")}
    assert {"chips/chips.parquet", "feats/features.json", "feats/part-00000.parquet", "map/predictions.parquet",
            "map/landuse.tif", "map/map.html", "map/map.png", "map/partitions/part-00000.parquet"} <= set(modes)
    assert any(name.endswith(".png") and name.startswith("chips/png/") for name in modes)
    assert not any(name.endswith(".lock") for name in modes)  # the runs' locks are gone
    wrong = {name: oct(mode) for name, mode in modes.items()
             if mode != (0o750 if (tmp_path / name).is_dir() else 0o640)}
    assert not wrong, wrong


# -- item 1: the trust decision travels with the scoring task -------------------------------------------------

PAYLOAD = '''
"""A scikit-learn step that runs code when it is rebuilt from a file (what a hostile artifact would hold)."""
from pathlib import Path

from sklearn.base import BaseEstimator, TransformerMixin


class Marker(BaseEstimator, TransformerMixin):
    def __init__(self, marker=""):
        self.marker = marker

    def fit(self, x, y=None):
        return self

    def transform(self, x):
        return x

    def __setstate__(self, state):
        Path(state["marker"]).write_text("the payload ran")
        self.__dict__.update(state)
'''


@pytest.fixture(scope="module")
def payload_module(tmp_path_factory):
    """A directory holding ``hostile_payload.py``, importable here and by worker processes started later."""
    import sys

    directory = tmp_path_factory.mktemp("payload")
    (directory / "hostile_payload.py").write_text(PAYLOAD)
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(directory), *([saved] if saved else [])])
    sys.path.insert(0, str(directory))
    yield directory
    sys.path.remove(str(directory))
    if saved is None:
        os.environ.pop("PYTHONPATH")
    else:
        os.environ["PYTHONPATH"] = saved


@pytest.fixture
def hostile(artifact, payload_module, tmp_path):
    """A copy of the artifact whose classifier holds a type outside the allowlist that writes a marker file
    when it is loaded (its checksum in model.json updated, as an attacker would)."""
    import json
    import shutil

    import skops.io as sio
    from hostile_payload import Marker
    from sklearn.pipeline import make_pipeline

    from geoclf.artifact import file_checksum

    directory = tmp_path / "hostile-model"
    shutil.copytree(artifact, directory)
    marker = tmp_path / "payload-ran"
    source = artifact / "classifier.skops"
    classifier = sio.load(source, trusted=sio.get_untrusted_types(file=source))
    sio.dump(make_pipeline(Marker(str(marker)), classifier), directory / "classifier.skops")
    spec = json.loads((directory / "model.json").read_text())
    spec["classifier"]["sha256"] = file_checksum(directory / "classifier.skops")
    (directory / "model.json").write_text(json.dumps(spec))
    return directory, marker


@pytest.fixture(scope="module")
def cluster(payload_module):
    """A real LocalCluster (one worker process, able to import the payload) for the tasks below."""
    with dask_client("local", n_workers=1) as client:
        yield client


def _score_parts(task, chips, out, client):
    from geoclf.partitions import run_partitions

    table = tiling.read_index(chips).head(4).drop(columns="geometry")
    return run_partitions(table, out, task, settings={"model": task.model_dir}, scheduler=client, progress=False)


def test_a_worker_refuses_an_untrusted_artifact_as_the_client_would(hostile, chips, cluster, tmp_path):
    from geoclf.score import ScoreTask

    directory, marker = hostile
    with pytest.raises(InputError, match="holds types geoclf does not trust: hostile_payload.Marker"):
        _score_parts(ScoreTask(str(directory), trusted=False), chips, tmp_path / "parts", cluster)
    assert not marker.exists()  # nothing of the file ran on the worker
    # the payload is real: trusting it runs it there
    _score_parts(ScoreTask(str(directory), trusted=True), chips, tmp_path / "trusted-parts", cluster)
    assert marker.read_text() == "the payload ran"


def test_a_worker_refuses_an_artifact_replaced_after_the_client_checked_it(artifact, hostile, chips, cluster,
                                                                             tmp_path):
    import shutil

    from geoclf.artifact import artifact_digest
    from geoclf.score import ScoreTask

    directory, marker = hostile
    shared = tmp_path / "shared-model"
    shutil.copytree(artifact, shared)
    task = ScoreTask(str(shared), trusted=True, digest=artifact_digest(shared))  # the user trusted *this* one
    shutil.rmtree(shared)
    shutil.copytree(directory, shared)  # replaced on shared storage before the workers load it
    with pytest.raises(InputError, match="changed since scoring started"):
        _score_parts(task, chips, tmp_path / "parts", cluster)
    assert not marker.exists()
    assert not list((tmp_path / "parts").glob("part-*.parquet"))


def test_score_refuses_an_untrusted_artifact_before_any_output(hostile, chips, tmp_path):
    directory, marker = hostile
    done = geoclf("score", "--model", str(directory), "--chips", str(chips), "--out", str(tmp_path / "map"))
    assert done.returncode == 2 and "holds types geoclf does not trust" in error_line(done.stderr)
    assert not marker.exists() and not (tmp_path / "map").exists()


# -- item 6: what the client can check, it checks before any output ------------------------------------------


def _tampered(artifact, tmp_path, change) -> Path:
    import json
    import shutil

    directory = tmp_path / "tampered"
    shutil.copytree(artifact, directory)
    spec = json.loads((directory / "model.json").read_text())
    change(spec)
    (directory / "model.json").write_text(json.dumps(spec))
    return directory


def _swap_backbone(spec):
    spec["backbone"] = "mobilenet_v2"  # 1280 features too: nothing else would notice
    del spec["weights_ref"]


@pytest.mark.parametrize(("change", "needle"), [
    (_swap_backbone, "records no checksum of its backbone weights"),
    (lambda spec: spec["weights_ref"].update(weights="none"), "now resolve to no file"),
    (lambda spec: spec.update(feature_dim=512), "says feature_dim 512, but its classifier takes 1280"),
    (lambda spec: (spec.update(backbone="resnet18"), spec["weights_ref"].update(weights="none")),
     "gives 512 features where 1280 were recorded"),
], ids=["backbone-swapped-weights_ref-removed", "random-weights", "feature-dim", "backbone-other-dim"])
def test_a_tampered_model_description_fails_before_tiling(change, needle, artifact, small_scene, tmp_path, capfd):
    model = _tampered(artifact, tmp_path, change)
    out = tmp_path / "map"
    done = geoclf_here(capfd, "score", "--model", str(model), "--naip", str(small_scene.naip), "--out", str(out),
                  "--scheduler", "sync")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert needle in error_line(done.stderr)
    assert not out.exists()  # not even the chip grid of the area


@pytest.fixture(scope="module")
def trained(chips, tmp_path_factory):
    """A logistic regression trained on the default features of the chips, in a run history of its own.

    Regularized to near-uniform probabilities (C=1e-6), so that it misclassifies validation chips and a report
    has a gallery to read: the default features classify this scene without an error.
    """
    from geoclf.classifiers import train_classifier
    from geoclf.features import featurize

    root = tmp_path_factory.mktemp("trained")
    featurize(chips, root / "feats", scheduler="sync", progress=False, record_run=False)
    result = train_classifier(root / "feats", "logistic_regression", params={"C": 1e-6}, name="lr-security",
                              runs_dir=root / "runs")
    assert result.evaluation["accuracy"] < 1, "the report tests need misclassified validation chips"
    return root


def test_a_report_refuses_features_of_another_backbone_before_writing(trained, chips, tmp_path, capfd):
    from geoclf.features import featurize

    # the validation chips featurized with another network of the same feature length
    index = tiling.read_index(chips)
    tiling.write_index(index[index["split"] == "val"], tmp_path / "val" / "chips.parquet")
    featurize(tmp_path / "val", tmp_path / "mnv2", backbone="mobilenet_v2", scheduler="sync", progress=False,
              record_run=False)
    out = tmp_path / "report"
    done = geoclf_here(capfd, "report", "--run", "lr-security", "--runs-dir", str(trained / "runs"), "--features",
                       str(tmp_path / "mnv2"), "--out", str(out), "--gallery", "0")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "holds features of mobilenet_v2" in error_line(done.stderr)
    assert not out.exists()


def test_a_report_refused_halfway_writes_nothing(trained, chips, tmp_path, capfd):
    """The gallery's chips are read last: a chip index whose rasters are gone fails there, after the tables and
    figures are computed; none of them is left in the output directory."""
    index = tiling.read_index(chips)
    index["source"] = str(tmp_path / "moved" / "naip.tif")
    tiling.write_index(index, tmp_path / "moved-chips" / "chips.parquet")
    out = tmp_path / "report"
    done = geoclf_here(capfd, "report", "--run", "lr-security", "--runs-dir", str(trained / "runs"),
                       "--features", str(trained / "feats"), "--chips", str(tmp_path / "moved-chips"), "--out",
                       str(out), "--gallery", "4")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "naip.tif" in error_line(done.stderr)
    assert not out.exists() and not list(tmp_path.glob(".report.*"))


def test_staged_outputs_replace_their_own_names_only(tmp_path):
    from tiling.io import relocated, staged_directory

    out = tmp_path / "out"
    (out / "gallery").mkdir(parents=True)
    (out / "gallery" / "old.png").write_text("old")
    (out / "notes.txt").write_text("mine")
    with staged_directory(out) as staging:
        (staging / "gallery").mkdir()
        (staging / "gallery" / "new.png").write_text("new")
        (staging / "report.json").write_text("{}")
        assert not (out / "report.json").exists()  # nothing is in place before the block ends
        written = {"json": staging / "report.json", "gallery": staging / "gallery"}
    assert relocated(written, staging, out) == {"json": out / "report.json", "gallery": out / "gallery"}
    assert sorted(p.name for p in (out / "gallery").iterdir()) == ["new.png"]  # a folder is replaced whole
    assert (out / "notes.txt").read_text() == "mine"
    with pytest.raises(InputError), staged_directory(out) as staging:
        (staging / "report.json").write_text("half")
        raise InputError("found halfway")
    assert (out / "report.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with staged_directory(out, stale=["report.json", "notes.txt"]) as staging:
        (staging / "notes.txt").write_text("again")
    assert not (out / "report.json").exists() and (out / "notes.txt").read_text() == "again"

