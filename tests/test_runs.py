"""Tests of geoclf.runs and ``geoclf runs``: recording, lookup, best-first listing, JSON output, run show."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from geoclf import runs
from geoclf.cli import main
from tiling.errors import InputError


def record(name: str, kind: str = "train", params: dict | None = None, **metrics: float) -> str:
    with runs.start_run(name, kind, params=params or {"backbone": "resnet18", "classifier": "random_forest"}) as run:
        run.log_metrics(metrics)
        return run.run_id


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    main(list(args))
    return capsys.readouterr().out


def test_a_run_keeps_its_parameters_metrics_and_kind(runs_dir: Path) -> None:
    params = {"backbone": "resnet18", "C": 0.5, "n_estimators": 200, "bands": [1, 2, 3], "class_weight": None,
              "weights": "default", "fit_intercept": True}
    run_id = record("lr-lite0", params=params, accuracy=0.81, kappa=0.7)

    found = runs.get_run("lr-lite0")
    assert found.run_id == run_id
    assert (found.name, found.kind, found.status) == ("lr-lite0", "train", "FINISHED")
    assert found.params == params  # types come back as they went in
    assert found.metrics == {"accuracy": 0.81, "kappa": 0.7}
    assert runs.get_run(run_id).name == "lr-lite0"
    assert runs.get_run(run_id[:8]).name == "lr-lite0"
    assert (runs_dir / runs.DB_NAME).is_file()


def test_the_latest_run_of_a_name_wins_and_unknown_names_list_the_known(runs_dir: Path) -> None:
    record("lr-lite0", accuracy=0.5)
    latest = record("lr-lite0", accuracy=0.6)
    record("rf-lite0", accuracy=0.7)
    assert runs.get_run("lr-lite0").run_id == latest
    with pytest.raises(InputError, match=r"no run named 'nope'.*rf-lite0, lr-lite0"):
        runs.get_run("nope")


def test_runs_are_listed_best_first(runs_dir: Path) -> None:
    record("featurize-lite0", kind="featurize")  # no accuracy: last
    record("mid", accuracy=0.75, loss=0.3)
    record("best", accuracy=0.9, loss=0.5)
    record("worst", accuracy=0.6, loss=0.2)

    assert runs.list_runs()["name"].tolist() == ["best", "mid", "worst", "featurize-lite0"]
    assert runs.list_runs(sort="loss")["name"].tolist()[:3] == ["worst", "mid", "best"]  # losses: lowest first
    assert runs.list_runs(kind="featurize")["name"].tolist() == ["featurize-lite0"]
    assert runs.best_run().name == "best"
    with pytest.raises(InputError, match="no listed run has a metric 'f2'.*accuracy"):
        runs.list_runs(sort="f2")


def test_cli_lists_runs_as_a_table_and_as_json(runs_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    record("lr-lite0", params={"backbone": "efficientnet_lite0", "classifier": "logistic_regression"},
           accuracy=0.8)
    record("rf-lite0", params={"backbone": "efficientnet_lite0", "classifier": "random_forest"}, accuracy=0.85)

    listed = json.loads(cli(capsys, "runs", "list", "--json"))
    assert [r["name"] for r in listed] == ["rf-lite0", "lr-lite0"]
    assert listed[0]["kind"] == "train"
    assert listed[0]["parameters"] == {"backbone": "efficientnet_lite0", "classifier": "random_forest"}
    assert listed[0]["metrics"]["accuracy"] == pytest.approx(0.85)

    table = cli(capsys, "runs", "list").splitlines()
    assert table[0].split()[:5] == ["name", "kind", "backbone", "classifier", "accuracy"]
    assert table[1].split()[:5] == ["rf-lite0", "train", "efficientnet_lite0", "random_forest", "0.850"]
    assert table[2].split()[0] == "lr-lite0"


def test_run_show_prints_parameters_metrics_and_curves(runs_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with runs.start_run("ft-lite0", "finetune", params={"backbone": "efficientnet_lite0", "lr": 0.001}) as run:
        for epoch, loss in enumerate([0.9, 0.5, 0.4]):
            run.log_metrics({"train_loss": loss}, step=epoch)
        run.log_metrics({"accuracy": 0.88})

    shown = cli(capsys, "runs", "show", "ft-lite0")
    assert "ft-lite0" in shown and "finetune" in shown
    assert "lr" in shown and "0.001" in shown
    assert "accuracy" in shown and "0.8800" in shown
    assert "train_loss" in shown and "3 steps" in shown

    data = json.loads(cli(capsys, "runs", "show", "ft-lite0", "--json"))
    assert data["curves"]["train_loss"] == [[0, 0.9], [1, 0.5], [2, 0.4]]
    assert data["model_artifact"] is None  # nothing saved under model/
    assert runs.metric_history(runs.get_run("ft-lite0"), "train_loss") == [(0, 0.9), (1, 0.5), (2, 0.4)]


def test_unknown_run_is_exit_2_with_one_line(runs_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    record("lr-lite0", accuracy=0.8)
    with pytest.raises(SystemExit) as exit_info:
        main(["runs", "show", "rf-lite0"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "no run named 'rf-lite0'" in err and "lr-lite0" in err


def test_bad_input_inside_a_run_leaves_no_trace(runs_dir: Path) -> None:
    with pytest.raises(InputError), runs.start_run("bad", "train") as run:
        run.log_metrics({"accuracy": 0.1})
        partial = run.artifact_dir / "partial.txt"
        partial.parent.mkdir(parents=True)
        partial.write_text("half")
        raise InputError("a class is missing")
    assert runs.list_runs(include_unfinished=True).empty
    assert not partial.exists()
    assert not partial.parent.parent.exists()  # the run's whole folder


def test_crashed_runs_are_kept_as_failed_but_not_listed(runs_dir: Path) -> None:
    with pytest.raises(RuntimeError), runs.start_run("crash", "finetune"):
        raise RuntimeError("CUDA out of memory")
    assert runs.list_runs().empty
    failed = runs.list_runs(include_unfinished=True)
    assert failed[["name", "status"]].values.tolist() == [["crash", "FAILED"]]


def test_model_artifact_is_copied_whole_under_model(runs_dir: Path, tmp_path: Path) -> None:
    source = tmp_path / "staged"
    source.mkdir()
    (source / "model.json").write_text("{}")
    with runs.start_run("lr-lite0", "train") as run:
        run.log_artifact_dir(source)
        with pytest.raises(InputError, match="already has an artifact"):
            run.log_artifact_dir(source)
        run.log_metrics({"accuracy": 1.0})
    path = runs.artifact_path("lr-lite0")
    assert path.name == runs.MODEL_ARTIFACT and (path / "model.json").read_text() == "{}"
    assert path.is_relative_to(runs_dir / runs.ARTIFACTS_DIRNAME)
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no staging leftovers


def test_a_featurize_run_has_no_model(runs_dir: Path) -> None:
    record("featurize-lite0", kind="featurize")
    with pytest.raises(InputError, match="has no artifact 'model'"):
        runs.artifact_path("featurize-lite0")


def test_child_runs_point_to_their_parent(runs_dir: Path) -> None:
    parent = record("sweep", kind="train")
    with runs.start_run("sweep-C0.1", "train", parent="sweep") as run:
        run.log_metrics({"accuracy": 0.5})
    assert runs.get_run("sweep-C0.1").parent_id == parent


def test_reading_an_empty_place_creates_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(runs.RUNS_ENV, str(tmp_path / "nowhere"))
    assert runs.list_runs().empty
    assert json.loads(cli(capsys, "runs", "list", "--json")) == []
    with pytest.raises(InputError, match="no runs recorded yet"):
        runs.get_run("lr-lite0")
    assert not (tmp_path / "nowhere").exists()


def test_runs_dir_argument_wins_over_environment(runs_dir: Path, tmp_path: Path) -> None:
    store = runs.run_store(tmp_path / "elsewhere")
    assert store.tracking_uri == f"sqlite:///{(tmp_path / 'elsewhere').resolve()}/mlflow.db"
    assert runs.run_store().directory == runs_dir.resolve()
    assert runs.run_store("http://mlflow.example:5000").directory is None
    with pytest.raises(InputError, match="unknown run kind"):
        runs.start_run("x", "sweep").__enter__()
