"""Evaluation of land-use predictions: accuracy, kappa, per-class scores, confusion matrix, 3-class regrouping.

Every score comes from scikit-learn with the class list passed explicitly, so a class that is missing from
one side still gets its row and column, and per-class numbers never depend on which labels happen to occur.
Recall is the share of a class's *true* chips that were found (row-wise in the confusion matrix, true
classes in rows); the seed notebook divided by the column sums instead, which is precision.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tiling.errors import InputError

#: The seed study's coarse grouping: the two classes it reports on, everything else is "Undeveloped".
SEED_REGROUPING: dict[str, str] = {"Developed": "Developed", "Cultivated": "Cultivated"}

#: Name of the class that gathers every class the regrouping does not name.
OTHER_GROUP = "Undeveloped"


def evaluate(y_true: Sequence[str] | np.ndarray, y_pred: Sequence[str] | np.ndarray, classes: Sequence[str],
             regrouping: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Score predicted class names against true ones.

    Args:
        y_true: true class name of each chip.
        y_pred: predicted class name of each chip.
        classes: every class the model can output, in display order; rows and columns of the confusion
            matrix and the per-class table follow it.
        regrouping: class name -> coarse group for the regrouped accuracy; classes not named go to
            ``"Undeveloped"``. Defaults to the seed study's Developed / Cultivated / Undeveloped.

    Returns:
        A dict with ``n`` (number of chips), ``accuracy``, ``balanced_accuracy`` (mean recall over the
        classes present in ``y_true``), ``kappa`` (Cohen's; NaN if undefined), ``accuracy_3class``
        (accuracy after regrouping; ``None`` when no class of ``classes`` is named by the regrouping, where
        it would be trivially 1),
        ``per_class`` (DataFrame indexed by class with ``precision``, ``recall``, ``f1``, ``support``) and
        ``confusion_matrix`` (DataFrame of counts, true classes in rows, predicted in columns).

    Raises:
        InputError: lengths differ, there is nothing to score, or a label is not one of ``classes``.
    """
    from sklearn import metrics as skm  # here: the run history imports this module, and lists runs without it

    truth = np.asarray(y_true, dtype=object)
    pred = np.asarray(y_pred, dtype=object)
    labels = [str(c) for c in classes]
    if truth.shape != pred.shape or truth.ndim != 1:
        raise InputError(f"y_true and y_pred must be 1-D of the same length, got {truth.shape} and {pred.shape}")
    if truth.size == 0:
        raise InputError("nothing to evaluate: no chips")
    if len(set(labels)) != len(labels):
        raise InputError(f"classes are not unique: {labels}")
    for side, values in (("true", truth), ("predicted", pred)):
        unknown = sorted(set(values.tolist()) - set(labels), key=str)
        if unknown:
            raise InputError(f"{side} labels {unknown} are not among the classes {labels}")

    cm = skm.confusion_matrix(truth, pred, labels=labels)
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        truth, pred, labels=labels, average=None, zero_division=0)
    with warnings.catch_warnings():
        # sklearn warns when a predicted class never occurs in y_true (those classes are simply left out
        # of the mean recall, the definition we want) and when kappa is undefined (NaN, documented)
        warnings.simplefilter("ignore", UserWarning)
        balanced = float(skm.balanced_accuracy_score(truth, pred))
        kappa = float(skm.cohen_kappa_score(truth, pred, labels=labels))

    groups = dict(SEED_REGROUPING if regrouping is None else regrouping)
    accuracy_3class: float | None = None
    if any(c in groups for c in labels):
        coarse = np.vectorize(lambda c: groups.get(c, OTHER_GROUP), otypes=[object])
        accuracy_3class = float(np.mean(coarse(truth) == coarse(pred)))

    per_class = pd.DataFrame({"precision": precision, "recall": recall, "f1": f1, "support": support},
                             index=pd.Index(labels, name="class"))
    return {
        "n": int(truth.size),
        "accuracy": float(np.mean(truth == pred)),
        "balanced_accuracy": balanced,
        "kappa": kappa,  # NaN when undefined: both sides hold one and the same class
        "accuracy_3class": accuracy_3class,
        "per_class": per_class,
        "confusion_matrix": pd.DataFrame(cm, index=pd.Index(labels, name="true"),
                                         columns=pd.Index(labels, name="predicted")),
    }


@dataclass(frozen=True)
class AccuracyInterval:
    """An accuracy and its confidence interval (:func:`accuracy_interval`).

    Attributes:
        accuracy: share of correct chips.
        low, high: the interval's bounds.
        n: chips scored.
        n_effective: chips' worth of independent evidence (``n`` over the design effect of the spatial blocks).
        blocks: spatial blocks the chips came from (``None``: not known, chips taken as independent).
        confidence: the level of the interval.
        method: how it was made, in words.
    """

    accuracy: float
    low: float
    high: float
    n: int
    n_effective: float
    blocks: int | None
    confidence: float
    method: str

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready mapping of the fields."""
        return asdict(self)

    def text(self) -> str:
        """``0.945 (95% CI 0.87-0.98)``."""
        return f"{self.accuracy:.3f} ({self.confidence:.0%} CI {self.low:.3f}-{self.high:.3f})"


#: How :func:`accuracy_interval` makes its intervals, as reports say it.
INTERVAL_METHOD = "Wilson score interval, n reduced by the design effect of the spatial blocks"


def accuracy_interval(correct: Sequence[bool] | np.ndarray, blocks: Sequence[Any] | np.ndarray | None = None,
                      confidence: float = 0.95) -> AccuracyInterval:
    """The confidence interval of an accuracy (or any proportion) measured on chips grouped in spatial blocks.

    A Wilson score interval (it stays inside [0, 1] and has width at 0% and 100%, where the normal
    approximation collapses to a point), with the sample size replaced by the effective one: ``n / deff``,
    where the design effect ``deff`` is the variance of the accuracy estimated over whole blocks (the usual
    linearized variance of a ratio estimator under cluster sampling) over its variance if the chips were
    independent, never below 1. Neighbouring chips share fields, roofs and light, so their errors come in
    clusters and ``n`` chips carry less evidence than ``n`` independent ones; a plain interval on chips is too
    narrow. A bootstrap over blocks would also respect the clusters, but validation splits hold few blocks
    (the quickstart's: 7), and a bootstrap of 7 units has few distinct outcomes, under-covers and gives
    ``[1, 1]`` when every chip is right.

    Args:
        correct: whether each chip was classified correctly (or is in the class, for a proportion).
        blocks: the spatial block of each chip; ``None`` takes the chips as independent (plain Wilson).
        confidence: level of the interval.

    Raises:
        InputError: no chips, or blocks not one per chip.
    """
    from geoclf.area import z_value  # the one source of z for every interval of geoclf

    hits = np.asarray(correct, dtype=bool).ravel()
    n = int(hits.size)
    if n == 0:
        raise InputError("an accuracy interval needs at least one chip")
    z = z_value(confidence)
    p = float(hits.mean())
    deff, count = 1.0, None
    if blocks is not None:
        keys = pd.Series(np.asarray(blocks, dtype=object).ravel())
        if len(keys) != n:
            raise InputError(f"{len(keys)} blocks given for {n} chips")
        per_block = pd.DataFrame({"block": keys, "hit": hits}).groupby("block")["hit"].agg(["sum", "size"])
        count = len(per_block)
        if count >= 2 and 0 < p < 1:
            residual = per_block["sum"].to_numpy(float) - p * per_block["size"].to_numpy(float)
            clustered = count / (count - 1) * float((residual**2).sum()) / n**2
            deff = max(1.0, clustered / (p * (1 - p) / n))
    n_eff = n / deff
    centre = (p + z**2 / (2 * n_eff)) / (1 + z**2 / n_eff)
    half = z / (1 + z**2 / n_eff) * math.sqrt(p * (1 - p) / n_eff + z**2 / (4 * n_eff**2))
    method = INTERVAL_METHOD if count is not None else "Wilson score interval (chips taken as independent)"
    # the bounds hold the estimate (rounding may put 1 - 1e-16 below an accuracy of 1)
    low, high = min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half))
    return AccuracyInterval(p, low, high, n, n_eff, count, confidence, method)


def scalar_metrics(evaluation: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of an :func:`evaluate` result as flat ``name -> float`` pairs, as run histories store them.

    Per-class scores become ``precision.<Class>``, ``recall.<Class>``, ``f1.<Class>``.
    """
    flat = {key: float(evaluation[key]) for key in ("accuracy", "balanced_accuracy", "kappa", "accuracy_3class")
            if evaluation.get(key) is not None and not math.isnan(evaluation[key])}
    for name, row in evaluation["per_class"].iterrows():
        for score in ("precision", "recall", "f1"):
            flat[f"{score}.{name}"] = float(row[score])
    return flat


def evaluation_to_json(evaluation: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON-ready form of an :func:`evaluate` result (the inverse of :func:`evaluation_from_json`)."""
    cm: pd.DataFrame = evaluation["confusion_matrix"]
    per_class: pd.DataFrame = evaluation["per_class"]
    return {
        "n": int(evaluation["n"]),
        # NaN is not JSON: an undefined score becomes null
        **{key: None if evaluation[key] is None or math.isnan(evaluation[key]) else float(evaluation[key])
           for key in ("accuracy", "balanced_accuracy", "kappa", "accuracy_3class")},
        "per_class": {str(name): {"precision": float(row["precision"]), "recall": float(row["recall"]),
                                  "f1": float(row["f1"]), "support": int(row["support"])}
                      for name, row in per_class.iterrows()},
        "confusion_matrix": {"classes": [str(c) for c in cm.index], "counts": cm.to_numpy().tolist()},
    }


def evaluation_from_json(data: Mapping[str, Any]) -> dict[str, Any]:
    """Rebuild an :func:`evaluate` result (with DataFrames) from :func:`evaluation_to_json` output."""
    classes = list(data["confusion_matrix"]["classes"])
    per_class = pd.DataFrame.from_dict(data["per_class"], orient="index")[["precision", "recall", "f1", "support"]]
    per_class.index.name = "class"
    cm = pd.DataFrame(np.asarray(data["confusion_matrix"]["counts"], dtype=np.int64),
                      index=pd.Index(classes, name="true"), columns=pd.Index(classes, name="predicted"))
    return {**{k: v for k, v in data.items() if k not in ("per_class", "confusion_matrix")},
            "per_class": per_class, "confusion_matrix": cm}


def plot_confusion_matrix(cm: pd.DataFrame, path: str | Path, title: str | None = None) -> Path:
    """Draw a confusion matrix as a PNG: cells coloured by row share (recall), annotated with counts.

    Colouring by row share keeps rare classes readable next to abundant ones.

    Args:
        cm: counts with true classes in rows and predicted classes in columns (as :func:`evaluate` returns).
        path: output PNG path.
        title: optional figure title.

    Returns:
        The written path.
    """
    # Figure + Agg canvas directly (not pyplot): no global state, no display needed, safe in threads.
    # matplotlib costs a second to import, and only figures need it
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    counts = cm.to_numpy()
    totals = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, totals, out=np.zeros(counts.shape, dtype=float), where=totals > 0)
    n = len(cm.index)
    side = 1.5 + 0.7 * max(n, 2)
    fig = Figure(figsize=(side + 1.2, side))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
    ax.set_xticks(range(len(cm.columns)), [str(c) for c in cm.columns], rotation=45, ha="right")
    ax.set_yticks(range(n), [str(c) for c in cm.index])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(n):
        for j in range(len(cm.columns)):
            ax.text(j, i, str(int(counts[i, j])), ha="center", va="center",
                    color="white" if share[i, j] > 0.5 else "black", fontsize=9)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=120)
    return out
