"""The results report (geoclf.analysis, ``geoclf report``) on the quickstart's runs and score output."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from conftest import CHROMIUM, chromium
from test_maps import hostile, hostile_predictions

#: A forest of three stumps on the quickstart's features: the gallery tests need a model that makes mistakes,
#: and the quickstart's own models (Lite0 + spectral statistics) classify its validation chips all but perfectly.
WEAK = "rf-weak"


@pytest.fixture(scope="module")
def weak(quickstart, tmp_path_factory):
    """The run history holding :data:`WEAK` (apart from the quickstart's, whose models the golden test reads)."""
    from geoclf.classifiers import train_classifier

    runs_dir = tmp_path_factory.mktemp("weak-runs")
    train_classifier(quickstart[0] / "features", "random_forest", params={"n_estimators": 3, "max_depth": 1},
                     name=WEAK, runs_dir=runs_dir)
    return runs_dir


@pytest.fixture(scope="module")
def report(quickstart, weak, tmp_path_factory):
    """The weak forest's report with the 2016 map and a gallery large enough for every mistake."""
    from geoclf.analysis import results_report

    workdir = quickstart[0]
    out = tmp_path_factory.mktemp("report-rf")
    written = results_report(WEAK, out, runs_dir=weak, predictions=workdir / "map-2016", gallery=10_000)
    return workdir, out, written


def test_report_metrics_are_the_recorded_ones(report, weak):
    from geoclf import runs

    _, out, _ = report
    record = runs.get_run(WEAK, runs_dir=weak)
    overall = pd.read_csv(out / "metrics.csv", index_col="metric")["value"]
    for key in ("accuracy", "balanced_accuracy", "kappa", "accuracy_3class"):
        assert overall[key] == pytest.approx(record.metrics[key], abs=1e-12), key
    assert overall["n"] == record.params["n_val"]
    per_class = pd.read_csv(out / "per_class.csv", index_col="class")
    for name, row in per_class.iterrows():
        for score in ("precision", "recall", "f1"):
            assert row[score] == pytest.approx(record.metrics[f"{score}.{name}"], abs=1e-12)


def test_recall_is_divided_by_true_class_totals(report, weak):
    from geoclf import runs

    _, out, _ = report
    record = runs.get_run(WEAK, runs_dir=weak)
    # the run's own confusion matrix artifact, not the report's copy: true classes in rows
    cm = pd.read_csv(runs.artifact_path(record, "confusion_matrix.csv"), index_col=0)
    counts = cm.to_numpy()
    recall = np.diag(counts) / counts.sum(axis=1)  # TP / (TP + FN)
    precision = np.diag(counts) / np.maximum(counts.sum(axis=0), 1)
    per_class = pd.read_csv(out / "per_class.csv", index_col="class").loc[list(cm.index)]
    np.testing.assert_allclose(per_class["recall"].to_numpy(), recall, atol=1e-12)
    np.testing.assert_array_equal(per_class["support"].to_numpy(), counts.sum(axis=1))
    # the seed notebook's column-wise "recall" is precision; make sure the two differ here, so the check bites
    assert not np.allclose(recall, precision)


def test_gallery_holds_exactly_the_misclassified_validation_chips(report, weak):
    from geoclf.artifact import load_model
    from geoclf.features import read_features

    workdir, out, written = report
    _, table = read_features(workdir / "features")
    val = table[(table["split"] == "val") & table["label"].notna()]
    model = load_model(WEAK, runs_dir=weak)
    predicted = model.predict_features(np.stack(val["features"].to_numpy()))
    wrong = set(val["chip_id"][predicted != val["label"].to_numpy()])
    assert wrong, "the weak forest should make some mistakes for this test to mean anything"

    listed = pd.read_csv(out / "misclassified.csv")
    assert set(listed["chip_id"]) == wrong
    assert (listed["label"] != listed["pred"]).all()
    assert listed["prob"].is_monotonic_decreasing  # most confident mistakes first
    files = sorted(p.name for p in (out / "gallery").glob("*.png"))
    assert len(files) == len(wrong)
    assert sorted(listed["gallery_file"]) == files
    assert written["gallery"].stat().st_size > 0
    info = pd.read_json(out / "report.json", typ="series")
    assert info["predicted_from"] == "features" and info["agrees_with_recorded"]
    # the recorded confusion matrix counts the same number of mistakes
    cm = pd.read_csv(out / "confusion_matrix.csv", index_col=0).to_numpy()
    assert cm.sum() - np.trace(cm) == len(wrong)


def test_report_html_embeds_every_image(report):
    _, out, written = report
    page = written["report"].read_text(encoding="utf-8")
    images = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,', page)
    assert images == ["confusion matrix", "misclassified chips", "land-use map"]
    assert not re.search(r'(src|href)="(?!data:)', page)  # self-contained: nothing loaded from elsewhere
    assert (out / "map.png").is_file() and (out / "confusion_matrix.png").is_file()


def test_predicting_from_the_imagery_matches_the_features(report):
    """The route fine-tuned models take (chips read through the index, model.predict_proba)."""
    from geoclf.analysis import predict_validation
    from geoclf.artifact import load_model

    workdir, _, _ = report
    model = load_model("lr-lite0", runs_dir=workdir / "runs")
    from_features = predict_validation(model, features=workdir / "features")
    from_chips = predict_validation(model, chips=workdir / "chips")
    assert from_chips.attrs["route"] == "chips" and from_features.attrs["route"] == "features"
    merged = from_features.merge(from_chips, on="chip_id", suffixes=("_f", "_c"))
    assert len(merged) == len(from_features) == len(from_chips)
    assert (merged["label_f"] == merged["label_c"]).all()
    np.testing.assert_allclose(merged["prob_f"], merged["prob_c"], atol=1e-3)


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    """A one-epoch MobileNetV2 fine-tune on 32 px chips of a small 4 m scene (as tests/test_finetune.py)."""
    import torch

    import tiling
    from geoclf.finetune import finetune
    from tiling.synth import make_scene

    root = tmp_path_factory.mktemp("report-finetune")
    scene = make_scene(root / "scene", size_m=2560, resolution=4.0, seed=0)
    tiling.tile([scene.naip], scene.nlcd, root / "chips", params=tiling.TileParams(chip_size=32), progress=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors on a busy machine: more threads only wait for each other
    try:
        finetune(root / "chips", backbone="mobilenet_v2", retrain="last_only", epochs=1, name="mnv2-report",
                 out=root / "work", runs_dir=root / "runs", batch_size=16, num_workers=0, progress=False,
                 min_chips_per_class=2, trainer_options={"limit_train_batches": 2})
        yield root
    finally:
        torch.set_num_threads(threads)


def test_finetune_run_gallery_from_the_imagery(finetuned, tmp_path):
    from geoclf.analysis import results_report
    from geoclf.artifact import load_model
    from geoclf.chips import read_batch
    from tiling.index import read_index
    from tiling.io import ChipReader

    written = results_report("mnv2-report", tmp_path, runs_dir=finetuned / "runs", gallery=10_000)
    info = pd.read_json(written["json"], typ="series")
    assert info["predicted_from"] == "chips" and info["agrees_with_recorded"], info["notes"]

    index = read_index(finetuned / "chips")
    val = index[(index["split"] == "val") & index["label"].notna()]
    model = load_model("mnv2-report", runs_dir=finetuned / "runs")
    with ChipReader(model.bands, model.chip_size) as reader:
        predicted = model.predict(read_batch(val, reader))
    wrong = set(val["chip_id"][predicted != val["label"].to_numpy()])
    assert wrong, "a one-epoch fine-tune should still make mistakes"
    assert set(pd.read_csv(written["misclassified"])["chip_id"]) == wrong
    assert len(list(written["gallery_dir"].glob("*.png"))) == len(wrong)


def test_cli_report_gallery_size(weak, tmp_path, capsys):
    from geoclf.cli import main

    out = tmp_path / "report"
    args = ["report", "--run", WEAK, "--out", str(out), "--runs-dir", str(weak)]
    main([*args, "--gallery", "1"])
    assert "accuracy" in capsys.readouterr().out
    assert len(list((out / "gallery").glob("*.png"))) == 1
    assert pd.read_csv(out / "misclassified.csv")["gallery_file"].notna().sum() == 1
    assert not (out / "map.png").exists()
    # a rerun without a gallery leaves none of the earlier one behind
    main([*args, "--gallery", "0"])
    assert not list((out / "gallery").glob("*.png")) and not (out / "gallery.png").exists()
    assert "misclassified chips" not in (out / "report.html").read_text(encoding="utf-8")


@pytest.mark.parametrize("args", [["--run", "no-such-run"], ["--run", "featurize-efficientnet_lite0"],
                                  ["--run", "rf-lite0", "--chips", "moved/chips.parquet"]])
def test_cli_bad_input_is_one_line(quickstart, tmp_path, capsys, args):
    from geoclf.cli import main

    workdir = quickstart[0]
    with pytest.raises(SystemExit) as exited:
        main(["report", *args, "--out", str(tmp_path / "r"), "--runs-dir", str(workdir / "runs")])
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("geoclf: error:") and "\n" not in err
    assert not (tmp_path / "r").exists()


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install -y chromium)")
def test_hostile_names_do_not_run_in_the_report(tmp_path):
    """A run, classes, chips, a score output directory and its accuracy.json all named like scripts."""
    from geoclf import maps
    from geoclf.analysis import area_map, misclassified, overall_table, write_report
    from geoclf.metrics import evaluate, plot_confusion_matrix

    predictions, scheme = hostile_predictions()
    predictions.loc[predictions.index[:2], "label"] = "Developed"
    score_out = tmp_path / hostile("dir")
    written = maps.write_maps(predictions, scheme, score_out, html_map=False)
    predictions.to_parquet(score_out / "predictions.parquet")
    tampered = json.loads(written["accuracy"].read_text()) | {"n": hostile("accuracy")}
    written["accuracy"].write_text(json.dumps(tampered))
    map_png, about = area_map(score_out, tmp_path / "map.png")
    evaluation = evaluate(predictions["label"].to_numpy(), predictions["pred"].to_numpy(), scheme.names)
    chips = predictions.assign(prob=0.9)[["chip_id", "label", "pred", "prob"]]
    info = {"run": hostile("run"), "run_id": hostile("run-id"), "kind": "train", "backbone": hostile("backbone"),
            "classifier": "logistic_regression", "n_val": len(chips), "n_train": hostile("n-train"),
            "chip_index": hostile("chips"), "predicted_from": "features", "agrees_with_recorded": False,
            "notes": [hostile("note")], "predictions": str(score_out), "map_models": about["models"],
            "map_accuracy": about["accuracy"]}
    page = write_report(tmp_path / "report.html", info=info, overall=overall_table(evaluation),
                        per_class=evaluation["per_class"],
                        confusion_png=plot_confusion_matrix(evaluation["confusion_matrix"], tmp_path / "cm.png"),
                        wrong=misclassified(chips), gallery_png=None, map_png=map_png)
    dom = chromium(tmp_path, page, "--dump-dom").stdout
    assert "<pwned-" not in dom and not re.search(r"<title>PWNED", dom), "a planted name ran as script"
    for tag in ("run", "n-train", "chips", "note", "dir", "model", "accuracy", "class", "scene"):
        assert f"PWNED-{tag}'" in dom, f"the {tag} name is missing from the page"  # shown, as text


_READ_FRAME = """
<script>
setTimeout(function () {
  var inner = document.getElementById('geoclf-map').contentDocument;
  document.body.setAttribute('data-frame', JSON.stringify({
    title: (inner.querySelector('.geoclf-title') || {}).textContent || '',
    imagery: inner.querySelectorAll('img.geoclf-imagery').length,
    classes: inner.querySelectorAll('img.geoclf-classes').length,
    legend: (inner.querySelector('.geoclf-legend') || {}).textContent || ''}));
}, 1500);
</script>
"""


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install -y chromium)")
def test_report_shows_the_interactive_map_and_no_machine_paths(report, quickstart, tmp_path):
    """The results report embeds the score output's land-use page (imagery, classes, title, legend) beside the
    static map, and names files relative to itself; the quickstart's report (run after its maps) has the map."""
    import html

    workdir, out, written = report
    text = written["report"].read_text(encoding="utf-8")
    outside = re.sub(r'srcdoc="[^"]*"', "", text)  # the report's own text, not the embedded page's
    for root in (str(workdir), str(out), str(workdir.parent)):
        assert root not in outside, f"the report names {root}"
    assert "<code>../" in outside and "map-2016</code>" in outside
    probe = tmp_path / "probe.html"
    probe.write_text(text.replace("</body>", _READ_FRAME + "</body>"), encoding="utf-8")
    dom = chromium(tmp_path, probe, "--dump-dom", "--window-size=1200,900").stdout
    assert 'alt="land-use map"' in dom
    frame = json.loads(html.unescape(re.search(r'data-frame="([^"]*)"', dom).group(1)))
    assert "Land use, 2016-" in frame["title"] and WEAK not in frame["title"]  # the scoring model's map
    assert frame["imagery"] >= 1 and frame["classes"] == 1
    assert "Developed" in frame["legend"] and "not scored" in frame["legend"]
    quick = (workdir / "report-lr-lite0" / "report.html").read_text(encoding="utf-8")
    assert 'id="geoclf-map"' in quick and 'alt="land-use map"' in quick and str(workdir) not in quick
def test_train_records_the_spectral_baseline_on_the_same_split(quickstart):
    """Every train run fits the spectral baseline on its own train chips and scores it on its validation chips."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from geoclf import runs
    from geoclf.features import read_features

    workdir = quickstart[0]
    record = runs.get_run("lr-lite0", runs_dir=workdir / "runs")
    compared = runs.read_json_artifact(record, "comparison.json")
    _, table = read_features(workdir / "features")
    train, val = table[table["split"] == "train"], table[table["split"] == "val"]
    baseline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=0))
    baseline.fit(np.stack(train["baseline"]), train["label"])
    accuracy = float((baseline.predict(np.stack(val["baseline"])) == val["label"]).mean())
    assert compared["baseline"]["interval"]["accuracy"] == pytest.approx(accuracy, abs=1e-12)
    assert record.metrics["baseline.accuracy"] == pytest.approx(accuracy, abs=1e-12)
    model = compared["model"]
    assert model["accuracy"] == pytest.approx(record.metrics["accuracy"], abs=1e-12)
    assert model["low"] < model["accuracy"] < model["high"] or model["accuracy"] == 1.0
    assert model["n"] == record.params["n_val"] and model["blocks"] >= 2  # intervals over the spatial blocks
    assert record.metrics["accuracy.ci_low"] == pytest.approx(model["low"])


def test_quickstart_report_shows_model_and_baseline_with_intervals(quickstart):
    import html as htmllib

    page = (quickstart[0] / "report-lr-lite0" / "report.html").read_text(encoding="utf-8")
    section = page[page.index("<h2>Model and spectral baseline</h2>"):page.index("<h2>Overall</h2>")]
    text = htmllib.unescape(re.sub(r"<[^>]+>", " ", section))
    assert "95% CI low" in text and "95% CI high" in text
    for row in ("model", "spectral baseline"):
        numbers = re.search(rf"{row}\s+([0-9.]+)\s+([0-9.]+)\s+([0-9.]+)\s+(\d+)", text)
        assert numbers, (row, text)
        accuracy, low, high, chips = (float(v) for v in numbers.groups())
        assert 0 <= low <= accuracy <= high <= 1 and chips > 0
    assert "nan" not in text.lower()
    assert re.search(r"points (above|below) the spectral baseline", text)
    comparison = pd.read_csv(quickstart[0] / "report-lr-lite0" / "comparison.csv", index_col=0)
    assert list(comparison.index) == ["model", "spectral baseline"] and comparison.notna().all().all()
