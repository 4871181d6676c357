"""Tests of geoclf.metrics: scores agree with scikit-learn, recall is recall, the seed's 3-class regrouping."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from sklearn import metrics as skm

from geoclf.metrics import (
    evaluate,
    evaluation_from_json,
    evaluation_to_json,
    plot_confusion_matrix,
    scalar_metrics,
)
from tiling.errors import InputError

CLASSES = ["Developed", "Forest", "Cultivated"]


def hand_made() -> tuple[list[str], list[str]]:
    """10 chips whose confusion matrix (true in rows) is [[3, 1, 0], [2, 0, 0], [1, 0, 3]]."""
    y_true = ["Developed"] * 4 + ["Forest"] * 2 + ["Cultivated"] * 4
    y_pred = (["Developed"] * 3 + ["Forest"]          # Developed: 3 found, 1 taken for Forest
              + ["Developed"] * 2                     # Forest: both taken for Developed
              + ["Developed"] + ["Cultivated"] * 3)   # Cultivated: 3 found, 1 taken for Developed
    return y_true, y_pred


def test_recall_is_the_share_of_true_chips_found() -> None:
    y_true, y_pred = hand_made()
    result = evaluate(y_true, y_pred, CLASSES)

    assert result["confusion_matrix"].loc["Developed"].tolist() == [3, 1, 0]  # rows are true classes
    assert result["confusion_matrix"].loc["Forest"].tolist() == [2, 0, 0]
    per_class = result["per_class"]
    # recall = found / truly in the class (row sums); the seed's notebook divided by column sums
    assert per_class.loc["Developed", "recall"] == pytest.approx(3 / 4)
    assert per_class.loc["Forest", "recall"] == pytest.approx(0.0)
    assert per_class.loc["Cultivated", "recall"] == pytest.approx(3 / 4)
    # precision = right / predicted as the class (column sums): Developed was predicted 6 times
    assert per_class.loc["Developed", "precision"] == pytest.approx(3 / 6)
    assert per_class.loc["Cultivated", "precision"] == pytest.approx(1.0)
    assert per_class.loc["Developed", "f1"] == pytest.approx(2 * 0.5 * 0.75 / 1.25)
    assert per_class["support"].tolist() == [4, 2, 4]
    assert result["accuracy"] == pytest.approx(0.6)
    assert result["balanced_accuracy"] == pytest.approx((0.75 + 0 + 0.75) / 3)
    assert result["n"] == 10


def test_scores_agree_with_scikit_learn_on_random_labels() -> None:
    rng = np.random.default_rng(7)
    classes = ["Developed", "Barren", "Forest", "Shrub", "Herbaceous", "Cultivated"]
    y_true = rng.choice(classes, 300, p=[0.3, 0.05, 0.3, 0.1, 0.1, 0.15])
    y_pred = np.where(rng.random(300) < 0.7, y_true, rng.choice(classes, 300))
    result = evaluate(y_true, y_pred, classes)

    assert result["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    assert result["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y_true, y_pred))
    assert result["kappa"] == pytest.approx(skm.cohen_kappa_score(y_true, y_pred))
    precision, recall, f1, support = skm.precision_recall_fscore_support(y_true, y_pred, labels=classes,
                                                                         zero_division=0)
    np.testing.assert_allclose(result["per_class"]["precision"], precision)
    np.testing.assert_allclose(result["per_class"]["recall"], recall)
    np.testing.assert_allclose(result["per_class"]["f1"], f1)
    np.testing.assert_array_equal(result["per_class"]["support"], support)
    np.testing.assert_array_equal(result["confusion_matrix"].to_numpy(),
                                  skm.confusion_matrix(y_true, y_pred, labels=classes))
    assert list(result["confusion_matrix"].columns) == classes


def test_three_class_regrouping_forgives_confusions_within_undeveloped() -> None:
    classes = ["Developed", "Forest", "Herbaceous", "Cultivated"]
    y_true = ["Forest", "Herbaceous", "Forest", "Developed", "Cultivated", "Developed"]
    y_pred = ["Herbaceous", "Forest", "Forest", "Forest", "Herbaceous", "Developed"]
    result = evaluate(y_true, y_pred, classes)

    # right: Forest<->Herbaceous twice (both Undeveloped), Forest, Developed; wrong: Developed->Forest,
    # Cultivated->Herbaceous
    assert result["accuracy_3class"] == pytest.approx(4 / 6)
    assert result["accuracy"] == pytest.approx(2 / 6)


def test_regrouping_is_left_out_when_no_class_is_regrouped() -> None:
    result = evaluate(["a", "b"], ["a", "a"], ["a", "b"])
    assert result["accuracy_3class"] is None
    assert "accuracy_3class" not in scalar_metrics(result)


def test_classes_absent_from_both_sides_keep_their_row_and_column() -> None:
    result = evaluate(["Developed", "Forest"], ["Developed", "Forest"], CLASSES)
    assert result["confusion_matrix"].loc["Cultivated"].tolist() == [0, 0, 0]
    assert result["per_class"].loc["Cultivated", "support"] == 0
    assert result["accuracy"] == 1.0


@pytest.mark.parametrize(("y_true", "y_pred", "message"), [
    (["Developed"], ["Developed", "Forest"], "same length"),
    ([], [], "no chips"),
    (["Developed", "Water"], ["Developed", "Forest"], "Water"),
    (["Developed"], ["Urban"], "Urban"),
])
def test_bad_labels_are_one_line_errors(y_true: list[str], y_pred: list[str], message: str) -> None:
    with pytest.raises(InputError, match=message):
        evaluate(y_true, y_pred, CLASSES)


def test_flat_metrics_and_json_round_trip() -> None:
    result = evaluate(*hand_made(), CLASSES)
    flat = scalar_metrics(result)
    assert flat["recall.Developed"] == pytest.approx(0.75)
    assert flat["accuracy"] == pytest.approx(0.6)

    back = evaluation_from_json(evaluation_to_json(result))
    assert back["confusion_matrix"].equals(result["confusion_matrix"])
    np.testing.assert_allclose(back["per_class"].to_numpy(dtype=float), result["per_class"].to_numpy(dtype=float))
    assert back["kappa"] == pytest.approx(result["kappa"])


def test_confusion_matrix_plot_is_a_png(tmp_path) -> None:
    result = evaluate(*hand_made(), CLASSES)
    path = plot_confusion_matrix(result["confusion_matrix"], tmp_path / "cm.png", title="lr-lite0")
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width > 200 and image.height > 200


def test_undefined_kappa_is_nan_and_null_in_json() -> None:
    result = evaluate(["Forest", "Forest"], ["Forest", "Forest"], CLASSES)
    assert np.isnan(result["kappa"])  # no chance-corrected agreement with a single class on both sides
    assert "kappa" not in scalar_metrics(result)
    assert evaluation_to_json(result)["kappa"] is None


def test_accuracy_interval_is_wilson_for_independent_chips() -> None:
    from scipy.stats import binomtest

    from geoclf.metrics import accuracy_interval

    for hits, n in ((66, 75), (55, 55), (0, 12), (1, 2)):
        interval = accuracy_interval(np.arange(n) < hits)
        expected = binomtest(hits, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert (interval.low, interval.high) == pytest.approx((expected.low, expected.high), abs=1e-12)
        assert 0 <= interval.low <= interval.accuracy <= interval.high <= 1
    # every chip right still leaves room below 1 (a normal interval would be [1, 1])
    assert accuracy_interval(np.ones(55, bool)).low < 0.95


def test_accuracy_interval_covers_when_errors_cluster_in_blocks() -> None:
    """Chips of a block err together: the design effect keeps the interval's coverage near 95%, where an
    interval that takes the chips as independent covers far less often."""
    from geoclf.metrics import accuracy_interval

    rng = np.random.default_rng(0)
    covered = {"blocks": 0, "chips": 0}
    trials = 400
    for _ in range(trials):
        accuracy = rng.beta(8, 2, size=12)  # each block its own accuracy, 0.8 on average
        blocks = np.repeat(np.arange(12), 10)
        hits = rng.random(blocks.size) < accuracy[blocks]
        for key, groups in (("blocks", blocks), ("chips", None)):
            interval = accuracy_interval(hits, groups)
            covered[key] += interval.low <= 0.8 <= interval.high
    assert covered["blocks"] / trials >= 0.92, covered
    assert covered["chips"] / trials <= 0.9, covered
    clustered = accuracy_interval(hits, blocks)
    assert clustered.n_effective < clustered.n and clustered.blocks == 12
